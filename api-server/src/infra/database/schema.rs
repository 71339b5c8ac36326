//! Introspection of a live schema, normalised so that a SQLite and a PostgreSQL database can be compared
//! (SPEC §4.3): tables, columns with a portable type and nullability, primary keys, unique constraints and
//! indexes (partial or not), plain indexes and foreign keys. `appstrate db migrate-data` uses the same
//! description for its foreign-key copy order and per-column conversions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sqlx::{PgPool, Row, SqlitePool};

/// The migrator's own bookkeeping table, present on both sides but not part of the application schema.
pub const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// A column type after normalisation: PostgreSQL's storage types folded onto SQLite's declared ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ColumnType {
    /// `TEXT`, and on PostgreSQL also `timestamptz` and `jsonb` (stored as text on SQLite).
    Text,
    /// `INTEGER`, and on PostgreSQL `integer`, `bigint` (serials included) and `boolean`.
    Integer,
    /// `REAL` / `double precision`.
    Real,
    /// `BLOB` / `bytea`.
    Blob,
}

/// What a PostgreSQL column holds, which decides how `migrate-data` converts a SQLite value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgKind {
    Text,
    Timestamp,
    Json,
    Boolean,
    Int4,
    Int8,
    Float8,
    Bytes,
}

impl PgKind {
    fn from_data_type(data_type: &str) -> Option<PgKind> {
        Some(match data_type {
            "text" | "character varying" | "character" => PgKind::Text,
            "timestamp with time zone" => PgKind::Timestamp,
            "jsonb" | "json" => PgKind::Json,
            "boolean" => PgKind::Boolean,
            "integer" | "smallint" => PgKind::Int4,
            "bigint" => PgKind::Int8,
            "double precision" | "real" => PgKind::Float8,
            "bytea" => PgKind::Bytes,
            _ => return None,
        })
    }

    fn normalised(self) -> ColumnType {
        match self {
            PgKind::Text | PgKind::Timestamp | PgKind::Json => ColumnType::Text,
            PgKind::Boolean | PgKind::Int4 | PgKind::Int8 => ColumnType::Integer,
            PgKind::Float8 => ColumnType::Real,
            PgKind::Bytes => ColumnType::Blob,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub not_null: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
    /// `CASCADE`, `SET NULL`, `NO ACTION`, `RESTRICT` or `SET DEFAULT`.
    pub on_delete: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unique {
    pub columns: Vec<String>,
    /// A partial unique index (`… WHERE …`).
    pub partial: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// In declaration order.
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    /// Unique constraints and unique indexes (the primary key excluded).
    pub uniques: BTreeSet<Unique>,
    /// Non-unique indexes, by name.
    pub indexes: BTreeMap<String, Vec<String>>,
    pub foreign_keys: BTreeSet<ForeignKey>,
}

/// A whole schema, tables by name (the migrator's table excluded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    pub tables: BTreeMap<String, Table>,
}

impl Schema {
    /// Every difference between `self` (named `left`) and `other` (named `right`), one line each.
    pub fn diff(&self, other: &Schema, left: &str, right: &str) -> Vec<String> {
        let mut out = Vec::new();
        for name in self.tables.keys() {
            if !other.tables.contains_key(name) {
                out.push(format!("table {name}: only in {left}"));
            }
        }
        for name in other.tables.keys() {
            if !self.tables.contains_key(name) {
                out.push(format!("table {name}: only in {right}"));
            }
        }
        for (name, a) in &self.tables {
            let Some(b) = other.tables.get(name) else {
                continue;
            };
            let bcols: BTreeMap<&str, &Column> =
                b.columns.iter().map(|c| (c.name.as_str(), c)).collect();
            let acols: BTreeMap<&str, &Column> =
                a.columns.iter().map(|c| (c.name.as_str(), c)).collect();
            for c in &a.columns {
                match bcols.get(c.name.as_str()) {
                    None => out.push(format!("{name}.{}: column only in {left}", c.name)),
                    Some(d) if d.ty != c.ty || d.not_null != c.not_null => out.push(format!(
                        "{name}.{}: {left} has {:?}{}, {right} has {:?}{}",
                        c.name,
                        c.ty,
                        if c.not_null { " NOT NULL" } else { "" },
                        d.ty,
                        if d.not_null { " NOT NULL" } else { "" },
                    )),
                    Some(_) => {}
                }
            }
            for c in &b.columns {
                if !acols.contains_key(c.name.as_str()) {
                    out.push(format!("{name}.{}: column only in {right}", c.name));
                }
            }
            if a.primary_key != b.primary_key {
                out.push(format!(
                    "{name}: primary key {:?} in {left}, {:?} in {right}",
                    a.primary_key, b.primary_key
                ));
            }
            for u in a.uniques.difference(&b.uniques) {
                out.push(format!("{name}: unique {u:?} only in {left}"));
            }
            for u in b.uniques.difference(&a.uniques) {
                out.push(format!("{name}: unique {u:?} only in {right}"));
            }
            if a.indexes != b.indexes {
                out.push(format!(
                    "{name}: indexes {:?} in {left}, {:?} in {right}",
                    a.indexes, b.indexes
                ));
            }
            for f in a.foreign_keys.difference(&b.foreign_keys) {
                out.push(format!("{name}: foreign key {f:?} only in {left}"));
            }
            for f in b.foreign_keys.difference(&a.foreign_keys) {
                out.push(format!("{name}: foreign key {f:?} only in {right}"));
            }
        }
        out
    }

    /// Table names ordered so that every table comes after the tables its foreign keys reference
    /// (self-references ignored). Ties are broken by name, so the order is stable.
    pub fn dependency_order(&self) -> Vec<String> {
        let mut done: Vec<String> = Vec::new();
        let mut left: BTreeSet<&String> = self.tables.keys().collect();
        while !left.is_empty() {
            let ready: Vec<&String> = left
                .iter()
                .copied()
                .filter(|name| {
                    self.tables[*name].foreign_keys.iter().all(|fk| {
                        fk.ref_table == **name
                            || !left.contains(&fk.ref_table)
                            || !self.tables.contains_key(&fk.ref_table)
                    })
                })
                .collect();
            // A reference cycle (none in this schema) would stall: take the rest by name.
            let ready = if ready.is_empty() {
                left.iter().copied().collect()
            } else {
                ready
            };
            for name in ready {
                left.remove(name);
                done.push(name.clone());
            }
        }
        done
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, t) in &self.tables {
            writeln!(f, "{name} (pk {:?})", t.primary_key)?;
            for c in &t.columns {
                writeln!(
                    f,
                    "  {} {:?}{}",
                    c.name,
                    c.ty,
                    if c.not_null { " NOT NULL" } else { "" }
                )?;
            }
        }
        Ok(())
    }
}

fn sqlite_type(declared: &str) -> Result<ColumnType, sqlx::Error> {
    // SQLite's affinity rules (https://www.sqlite.org/datatype3.html §3.1), for the declared types used.
    let t = declared.to_ascii_uppercase();
    Ok(if t.contains("INT") {
        ColumnType::Integer
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        ColumnType::Text
    } else if t.contains("BLOB") || t.is_empty() {
        ColumnType::Blob
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        ColumnType::Real
    } else {
        return Err(sqlx::Error::Protocol(format!(
            "unexpected SQLite column type {declared:?}"
        )));
    })
}

/// Reads the schema of a SQLite database.
pub async fn introspect_sqlite(pool: &SqlitePool) -> Result<Schema, sqlx::Error> {
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> $1 ORDER BY name",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(pool)
    .await?;
    let mut schema = Schema::default();
    for (name,) in names {
        let cols = sqlx::query(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info($1) ORDER BY cid",
        )
        .bind(&name)
        .fetch_all(pool)
        .await?;
        let mut columns = Vec::new();
        let mut pk: Vec<(i64, String)> = Vec::new();
        for c in cols {
            let col: String = c.try_get("name")?;
            let declared: String = c.try_get("type")?;
            let pk_pos: i64 = c.try_get("pk")?;
            let not_null: bool = c.try_get::<i64, _>("notnull")? != 0;
            if pk_pos > 0 {
                pk.push((pk_pos, col.clone()));
            }
            columns.push(Column {
                name: col,
                ty: sqlite_type(&declared)?,
                // Primary-key columns are NOT NULL on PostgreSQL; SQLite only enforces it for INTEGER
                // PRIMARY KEY, but the application never writes a NULL id.
                not_null: not_null || pk_pos > 0,
            });
        }
        pk.sort();
        let primary_key: Vec<String> = pk.into_iter().map(|(_, c)| c).collect();

        let mut uniques = BTreeSet::new();
        let mut indexes = BTreeMap::new();
        let list =
            sqlx::query("SELECT name, \"unique\", origin, partial FROM pragma_index_list($1)")
                .bind(&name)
                .fetch_all(pool)
                .await?;
        for idx in list {
            let index: String = idx.try_get("name")?;
            let unique = idx.try_get::<i64, _>("unique")? != 0;
            let origin: String = idx.try_get("origin")?;
            let partial = idx.try_get::<i64, _>("partial")? != 0;
            let cols: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(pool)
                    .await?;
            let cols: Vec<String> = cols.into_iter().map(|(c,)| c).collect();
            if origin == "pk" {
                continue;
            }
            if unique {
                uniques.insert(Unique {
                    columns: cols,
                    partial,
                });
            } else {
                indexes.insert(index, cols);
            }
        }

        let fk_rows = sqlx::query(
            "SELECT id, seq, \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list($1) \
             ORDER BY id, seq",
        )
        .bind(&name)
        .fetch_all(pool)
        .await?;
        let mut fks: BTreeMap<i64, ForeignKey> = BTreeMap::new();
        for r in fk_rows {
            let id: i64 = r.try_get("id")?;
            let fk = fks.entry(id).or_insert_with(|| ForeignKey {
                columns: Vec::new(),
                ref_table: String::new(),
                ref_columns: Vec::new(),
                on_delete: String::new(),
            });
            fk.ref_table = r.try_get("table")?;
            fk.columns.push(r.try_get("from")?);
            fk.ref_columns.push(r.try_get("to")?);
            fk.on_delete = r.try_get::<String, _>("on_delete")?.to_ascii_uppercase();
        }
        schema.tables.insert(
            name,
            Table {
                columns,
                primary_key,
                uniques,
                indexes,
                foreign_keys: fks.into_values().collect(),
            },
        );
    }
    Ok(schema)
}

/// A PostgreSQL table's columns with their storage kind (for `migrate-data` conversions).
pub type PgColumns = BTreeMap<String, Vec<(String, PgKind)>>;

/// Reads the schema of the current PostgreSQL schema (`current_schema()`), plus each column's storage
/// kind.
pub async fn introspect_postgres(pool: &PgPool) -> Result<(Schema, PgColumns), sqlx::Error> {
    let cols = sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c, data_type::text AS ty, \
         is_nullable::text AS nullable FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name::text <> $1 \
         AND table_name::text IN (SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE') \
         ORDER BY table_name, ordinal_position",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(pool)
    .await?;
    let mut schema = Schema::default();
    let mut kinds: PgColumns = BTreeMap::new();
    for r in cols {
        let table: String = r.try_get("t")?;
        let column: String = r.try_get("c")?;
        let ty: String = r.try_get("ty")?;
        let nullable: String = r.try_get("nullable")?;
        let kind = PgKind::from_data_type(&ty).ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "unexpected PostgreSQL column type {ty} ({table}.{column})"
            ))
        })?;
        kinds
            .entry(table.clone())
            .or_default()
            .push((column.clone(), kind));
        schema
            .tables
            .entry(table)
            .or_insert_with(|| Table {
                columns: Vec::new(),
                primary_key: Vec::new(),
                uniques: BTreeSet::new(),
                indexes: BTreeMap::new(),
                foreign_keys: BTreeSet::new(),
            })
            .columns
            .push(Column {
                name: column,
                ty: kind.normalised(),
                not_null: nullable == "NO",
            });
    }

    let idx = sqlx::query(
        "SELECT c.relname::text AS t, ic.relname::text AS idx, i.indisprimary AS primary, \
         i.indisunique AS uniq, (i.indpred IS NOT NULL) AS partial, \
         array_agg(a.attname::text ORDER BY k.ord) AS cols \
         FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
         WHERE n.nspname = current_schema() AND c.relname::text <> $1 \
         GROUP BY c.relname, ic.relname, i.indisprimary, i.indisunique, i.indpred IS NOT NULL",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(pool)
    .await?;
    for r in idx {
        let table: String = r.try_get("t")?;
        let Some(t) = schema.tables.get_mut(&table) else {
            continue;
        };
        let cols: Vec<String> = r.try_get("cols")?;
        if r.try_get::<bool, _>("primary")? {
            t.primary_key = cols;
        } else if r.try_get::<bool, _>("uniq")? {
            t.uniques.insert(Unique {
                columns: cols,
                partial: r.try_get("partial")?,
            });
        } else {
            t.indexes.insert(r.try_get("idx")?, cols);
        }
    }

    let fks = sqlx::query(
        "SELECT cl.relname::text AS t, rcl.relname::text AS rt, c.confdeltype::text AS del, \
         array_agg(a.attname::text ORDER BY k.ord) AS cols, \
         array_agg(ra.attname::text ORDER BY k.ord) AS rcols \
         FROM pg_constraint c \
         JOIN pg_class cl ON cl.oid = c.conrelid \
         JOIN pg_class rcl ON rcl.oid = c.confrelid \
         JOIN pg_namespace n ON n.oid = cl.relnamespace \
         CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(att, ratt, ord) \
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.att \
         JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = k.ratt \
         WHERE c.contype = 'f' AND n.nspname = current_schema() \
         GROUP BY c.oid, cl.relname, rcl.relname, c.confdeltype",
    )
    .fetch_all(pool)
    .await?;
    for r in fks {
        let table: String = r.try_get("t")?;
        let Some(t) = schema.tables.get_mut(&table) else {
            continue;
        };
        let on_delete = match r.try_get::<String, _>("del")?.as_str() {
            "c" => "CASCADE",
            "n" => "SET NULL",
            "d" => "SET DEFAULT",
            "r" => "RESTRICT",
            _ => "NO ACTION",
        };
        t.foreign_keys.insert(ForeignKey {
            columns: r.try_get("cols")?,
            ref_table: r.try_get("rt")?,
            ref_columns: r.try_get("rcols")?,
            on_delete: on_delete.into(),
        });
    }
    Ok((schema, kinds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(fks: &[&str]) -> Table {
        Table {
            columns: vec![],
            primary_key: vec!["id".into()],
            uniques: BTreeSet::new(),
            indexes: BTreeMap::new(),
            foreign_keys: fks
                .iter()
                .map(|t| ForeignKey {
                    columns: vec![format!("{t}_id")],
                    ref_table: t.to_string(),
                    ref_columns: vec!["id".into()],
                    on_delete: "CASCADE".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn dependency_order_puts_referenced_tables_first() {
        let mut s = Schema::default();
        s.tables.insert("runs".into(), table(&["apps", "orgs"]));
        s.tables.insert("logs".into(), table(&["runs", "logs"]));
        s.tables.insert("apps".into(), table(&["orgs"]));
        s.tables.insert("orgs".into(), table(&[]));
        assert_eq!(s.dependency_order(), ["orgs", "apps", "runs", "logs"]);
    }

    #[test]
    fn diff_names_each_difference() {
        let mut a = Schema::default();
        let mut t = table(&[]);
        t.columns.push(Column {
            name: "x".into(),
            ty: ColumnType::Text,
            not_null: true,
        });
        a.tables.insert("t".into(), t.clone());
        let mut b = a.clone();
        assert!(a.diff(&b, "sqlite", "postgres").is_empty());
        b.tables.get_mut("t").unwrap().columns[0].not_null = false;
        b.tables.get_mut("t").unwrap().columns.push(Column {
            name: "y".into(),
            ty: ColumnType::Integer,
            not_null: false,
        });
        let d = a.diff(&b, "sqlite", "postgres");
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("t.x") && d[0].contains("NOT NULL"));
        assert!(d[1].contains("t.y: column only in postgres"));
    }
}
