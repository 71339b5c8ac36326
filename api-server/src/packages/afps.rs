//! Reading and validating `.afps` archives (§16.1): a ZIP with `manifest.json` at its root.
//!
//! The reader never trusts the archive's headers: entry names are checked for zip-slip before anything
//! is inflated, decompressed bytes are counted while inflating (and inflation stops one byte past the
//! cap), and nothing is written anywhere — only the few files the platform interprets are kept in
//! memory. Every problem is reported as a [`FieldError`] with `field` = `archive` or `manifest.<path>`.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::manifest::{validate_manifest, Manifest, PackageType};
use crate::domain::FieldError;

/// Largest accepted archive (compressed), in bytes. Larger → 413.
pub const MAX_COMPRESSED_BYTES: usize = 10 * 1024 * 1024;
/// Largest total of inflated entry bytes, counted while inflating.
pub const MAX_DECOMPRESSED_BYTES: u64 = 50 * 1024 * 1024;
/// Most entries in the central directory.
pub const MAX_ENTRIES: usize = 1000;
/// Largest file the platform keeps in memory to interpret (manifest, prompt, skill text).
const MAX_INTERPRETED_FILE_BYTES: u64 = 5 * 1024 * 1024;

/// Why an archive was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfpsError {
    /// Over [`MAX_COMPRESSED_BYTES`] (413 `payload_too_large`).
    TooLarge,
    /// Every problem found (400 `invalid_package`).
    Invalid(Vec<FieldError>),
}

/// A validated archive.
#[derive(Debug, Clone)]
pub struct AfpsPackage {
    pub manifest: Manifest,
    /// `sha256-<base64 SHA-256 of the ZIP bytes>`
    pub integrity: String,
    /// Size of the ZIP in bytes.
    pub size: usize,
    /// The names of the kept entries (directories and `__MACOSX/` excluded), in archive order.
    pub entries: Vec<String>,
    /// `prompt.md` (agents).
    pub prompt: Option<String>,
    /// `SKILL.md` (skills).
    pub skill: Option<String>,
}

/// `sha256-<base64>` of `bytes`.
pub fn integrity(bytes: &[u8]) -> String {
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
    )
}

fn archive_error(code: &'static str, message: impl Into<String>) -> FieldError {
    FieldError::new("archive", code, message)
}

/// Why an entry name is unsafe to extract, if it is.
pub fn unsafe_path_reason(raw: &[u8]) -> Option<&'static str> {
    if raw.is_empty() {
        return Some("empty entry name");
    }
    if raw.contains(&0) {
        return Some("entry name contains NUL");
    }
    if raw.contains(&b'\\') {
        return Some("entry name contains a backslash");
    }
    if raw[0] == b'/' {
        return Some("absolute entry path");
    }
    if raw.len() >= 2 && raw[0].is_ascii_alphabetic() && raw[1] == b':' {
        return Some("entry path starts with a drive letter");
    }
    if raw.split(|b| *b == b'/').any(|seg| seg == b"..") {
        return Some("entry path contains ..");
    }
    None
}

/// An entry name with `.` segments and repeated or trailing `/` removed: two entries whose names
/// normalise to the same path would land on the same file when extracted.
pub fn normalised_name(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for seg in raw.split(|b| *b == b'/') {
        if seg.is_empty() || seg == b"." {
            continue;
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(seg);
    }
    out
}

/// One central-directory record as written in the archive.
struct CentralRecord {
    /// Offset of the record in the bytes.
    position: u64,
    /// The name in the record's header.
    header_name: Vec<u8>,
    /// The Info-ZIP Unicode Path extra field (0x7075), which readers may use instead.
    unicode_name: Option<Vec<u8>>,
}

impl CentralRecord {
    /// The name readers use: the Unicode Path when present, else the header name.
    fn name(&self) -> &[u8] {
        self.unicode_name.as_deref().unwrap_or(&self.header_name)
    }
}

/// Every record of the central directory starting at `start`, in order, read straight from the bytes.
///
/// The ZIP reader indexes entries by name and keeps only one of several entries with the same name,
/// so duplicates are only visible here. Stops at the first byte run that is not a central-directory
/// record, or after `limit` records.
fn central_records(bytes: &[u8], start: u64, limit: usize) -> Vec<CentralRecord> {
    const SIGNATURE: &[u8] = &[0x50, 0x4b, 0x01, 0x02];
    let u16_at = |b: &[u8], at: usize| -> Option<usize> {
        Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
    };
    let mut out = Vec::new();
    let Ok(mut pos) = usize::try_from(start) else {
        return out;
    };
    while out.len() < limit {
        let Some(rest) = bytes.get(pos..) else { break };
        if rest.len() < 46 || &rest[..4] != SIGNATURE {
            break;
        }
        let (Some(n), Some(e), Some(c)) = (u16_at(rest, 28), u16_at(rest, 30), u16_at(rest, 32))
        else {
            break;
        };
        let (Some(header_name), Some(extra)) = (rest.get(46..46 + n), rest.get(46 + n..46 + n + e))
        else {
            break;
        };
        let mut unicode_name = None;
        let mut at = 0;
        while let (Some(id), Some(len)) = (u16_at(extra, at), u16_at(extra, at + 2)) {
            let Some(data) = extra.get(at + 4..at + 4 + len) else {
                break;
            };
            // Version (1 byte), CRC-32 of the header name (4 bytes), then the UTF-8 name.
            if id == 0x7075 && data.len() >= 5 {
                unicode_name = Some(data[5..].to_vec());
            }
            at += 4 + len;
        }
        out.push(CentralRecord {
            position: pos as u64,
            header_name: header_name.to_vec(),
            unicode_name,
        });
        pos += 46 + n + e + c;
    }
    out
}

/// `duplicate_entry` errors for names that occur more than once (exactly or after
/// [`normalised_name`]), and for records the ZIP reader did not keep (`kept` = the central-directory
/// offsets of the entries it indexes), which it shadows with a same-named entry.
fn duplicate_errors(records: &[CentralRecord], kept: &HashSet<u64>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen: HashMap<Vec<u8>, &[u8]> = HashMap::new();
    for record in records {
        let name = record.name();
        let shown = String::from_utf8_lossy(name).replace('\0', "\\0");
        match seen.get(&normalised_name(name)) {
            Some(first) if *first == name => errors.push(archive_error(
                "duplicate_entry",
                format!("{shown:?} appears more than once in the archive"),
            )),
            Some(first) => errors.push(archive_error(
                "duplicate_entry",
                format!(
                    "{shown:?} and {:?} name the same path",
                    String::from_utf8_lossy(first)
                ),
            )),
            None if !kept.contains(&record.position) => errors.push(archive_error(
                "duplicate_entry",
                format!("{shown:?} appears more than once in the archive"),
            )),
            None => {
                seen.insert(normalised_name(name), name);
            }
        }
    }
    errors
}

/// Whether an entry is ignored rather than kept (macOS resource forks).
fn ignored(name: &str) -> bool {
    name == "__MACOSX" || name.starts_with("__MACOSX/")
}

/// Reads and validates an archive. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<AfpsPackage, AfpsError> {
    if bytes.len() > MAX_COMPRESSED_BYTES {
        return Err(AfpsError::TooLarge);
    }
    let invalid = |e: FieldError| AfpsError::Invalid(vec![e]);
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        invalid(archive_error(
            "invalid_format",
            format!("not a readable ZIP archive: {e}"),
        ))
    })?;
    if archive.len() > MAX_ENTRIES {
        return Err(invalid(archive_error(
            "too_many_entries",
            format!(
                "the archive has {} entries; at most {MAX_ENTRIES} are allowed",
                archive.len()
            ),
        )));
    }

    // Pass 1: names and entry kinds, without inflating anything.
    let mut errors = Vec::new();
    let mut kept = HashSet::new();
    for i in 0..archive.len() {
        if let Ok(entry) = archive.by_index_raw(i) {
            kept.insert(entry.central_header_start());
        }
    }
    let records = central_records(bytes, archive.central_directory_start(), MAX_ENTRIES + 1);
    if records.len() > MAX_ENTRIES {
        return Err(invalid(archive_error(
            "too_many_entries",
            format!("the archive has more than {MAX_ENTRIES} entries; at most {MAX_ENTRIES} are allowed"),
        )));
    }
    for record in &records {
        // A reader may use either name; both must be safe.
        for name in [Some(&record.header_name), record.unicode_name.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Some(reason) = unsafe_path_reason(name) {
                let shown = String::from_utf8_lossy(name).replace('\0', "\\0");
                errors.push(archive_error("unsafe_path", format!("{shown:?}: {reason}")));
            }
        }
    }
    if !errors.is_empty() {
        return Err(AfpsError::Invalid(errors));
    }
    errors.extend(duplicate_errors(&records, &kept));
    let mut files: Vec<(usize, String)> = Vec::new();
    for i in 0..archive.len() {
        let entry = match archive.by_index_raw(i) {
            Ok(e) => e,
            Err(e) => {
                errors.push(archive_error(
                    "invalid_format",
                    format!("entry {i} cannot be read: {e}"),
                ));
                continue;
            }
        };
        let raw = entry.name_raw().to_vec();
        let shown = String::from_utf8_lossy(&raw).replace('\0', "\\0");
        if let Some(reason) = unsafe_path_reason(&raw) {
            errors.push(archive_error("unsafe_path", format!("{shown:?}: {reason}")));
            continue;
        }
        if entry.is_symlink() {
            errors.push(archive_error(
                "unsafe_path",
                format!("{shown:?}: symbolic links are not allowed"),
            ));
            continue;
        }
        let Ok(name) = String::from_utf8(raw) else {
            errors.push(archive_error(
                "invalid_format",
                format!("{shown:?}: entry name is not UTF-8"),
            ));
            continue;
        };
        if entry.is_dir() || ignored(&name) {
            continue;
        }
        if entry.encrypted() {
            errors.push(archive_error(
                "invalid_format",
                format!("{name:?}: encrypted entries are not supported"),
            ));
            continue;
        }
        files.push((i, name));
    }
    if !errors.is_empty() {
        return Err(AfpsError::Invalid(errors));
    }

    // Pass 2: inflate every kept entry, counting bytes as they come out.
    let mut total: u64 = 0;
    let mut manifest_bytes = None;
    let mut prompt_bytes = None;
    let mut skill_bytes = None;
    for (i, name) in &files {
        let mut entry = archive.by_index(*i).map_err(|e| {
            invalid(archive_error(
                "invalid_format",
                format!("{name:?} cannot be inflated: {e}"),
            ))
        })?;
        let keep = matches!(name.as_str(), "manifest.json" | "prompt.md" | "SKILL.md");
        let budget = MAX_DECOMPRESSED_BYTES - total;
        let mut kept = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let mut limited = (&mut entry).take(budget + 1);
        let mut n_entry: u64 = 0;
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    return Err(invalid(archive_error(
                        "invalid_format",
                        format!("{name:?} cannot be inflated: {e}"),
                    )))
                }
            };
            n_entry += n as u64;
            if n_entry > budget {
                return Err(invalid(archive_error(
                    "too_large",
                    format!(
                        "the archive inflates to more than {} MiB",
                        MAX_DECOMPRESSED_BYTES / (1024 * 1024)
                    ),
                )));
            }
            if keep {
                if n_entry > MAX_INTERPRETED_FILE_BYTES {
                    return Err(invalid(archive_error(
                        "too_large",
                        format!(
                            "{name} is larger than {} MiB",
                            MAX_INTERPRETED_FILE_BYTES / (1024 * 1024)
                        ),
                    )));
                }
                kept.extend_from_slice(&buf[..n]);
            }
        }
        total += n_entry;
        match name.as_str() {
            "manifest.json" => manifest_bytes = Some(kept),
            "prompt.md" => prompt_bytes = Some(kept),
            "SKILL.md" => skill_bytes = Some(kept),
            _ => {}
        }
    }

    let Some(manifest_bytes) = manifest_bytes else {
        return Err(invalid(archive_error(
            "required",
            "manifest.json is missing at the archive root",
        )));
    };
    let value: Value = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        invalid(FieldError::new(
            "manifest",
            "invalid_format",
            format!("manifest.json is not valid JSON: {e}"),
        ))
    })?;
    let (manifest, mut errors) = match validate_manifest(&value) {
        Ok(m) => (Some(m), Vec::new()),
        Err(errors) => (None, errors),
    };
    let text = |bytes: Option<Vec<u8>>, file: &str, errors: &mut Vec<FieldError>| {
        bytes.and_then(|b| match String::from_utf8(b) {
            Ok(s) => Some(s),
            Err(_) => {
                errors.push(archive_error(
                    "invalid_format",
                    format!("{file} is not UTF-8 text"),
                ));
                None
            }
        })
    };
    let prompt = text(prompt_bytes, "prompt.md", &mut errors);
    let skill = text(skill_bytes, "SKILL.md", &mut errors);
    // Per-type files: the declared type, even when other manifest fields are bad.
    match value.get("type").and_then(Value::as_str) {
        Some("agent") => match &prompt {
            None if !errors.iter().any(|e| e.message.contains("prompt.md")) => {
                errors.push(archive_error(
                    "required",
                    "agent packages need a prompt.md at the archive root",
                ))
            }
            Some(p) if p.trim().is_empty() => {
                errors.push(archive_error("invalid_value", "prompt.md is empty"))
            }
            _ => {}
        },
        Some("skill") if skill.is_none() => errors.push(archive_error(
            "required",
            "skill packages need a SKILL.md at the archive root",
        )),
        Some("mcp-server") => {
            if let Some(e) =
                super::mcp::entry_point_missing(&value, files.iter().map(|(_, n)| n.as_str()))
            {
                errors.push(e);
            }
        }
        _ => {}
    }
    match manifest {
        Some(manifest) if errors.is_empty() => {
            debug_assert!(
                manifest.kind != PackageType::Agent || prompt.is_some(),
                "agents have a prompt"
            );
            Ok(AfpsPackage {
                manifest,
                integrity: integrity(bytes),
                size: bytes.len(),
                entries: files.into_iter().map(|(_, n)| n).collect(),
                prompt,
                skill,
            })
        }
        _ => Err(AfpsError::Invalid(errors)),
    }
}

/// Builds a ZIP (deflated) from `(name, content)` pairs. Used for bundles and tests.
pub fn build_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in files {
        // Writing to memory cannot fail except on duplicate names, which callers do not produce.
        if out.start_file(*name, options).is_ok() {
            let _ = std::io::Write::write_all(&mut out, content);
        }
    }
    out.finish()
        .map(|c| c.into_inner())
        .unwrap_or_else(|_| Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent_manifest() -> Value {
        json!({
            "schema_version": "0.1",
            "name": "@acme/hello",
            "version": "1.0.0",
            "type": "agent",
            "display_name": "Hello"
        })
    }

    fn zip_of(manifest: &Value, extra: &[(&str, &[u8])]) -> Vec<u8> {
        let m = serde_json::to_vec(manifest).unwrap();
        let mut files: Vec<(&str, &[u8])> = vec![("manifest.json", &m)];
        files.extend_from_slice(extra);
        build_zip(&files)
    }

    fn codes(r: Result<AfpsPackage, AfpsError>) -> Vec<(String, &'static str)> {
        match r {
            Err(AfpsError::Invalid(e)) => e.into_iter().map(|e| (e.field, e.code)).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_agent() {
        let z = zip_of(
            &agent_manifest(),
            &[
                ("prompt.md", b"Hi {{input.name}}"),
                ("signature.sig", b"x"),
                ("docs/readme.txt", b"y"),
                ("__MACOSX/._prompt.md", b"junk"),
            ],
        );
        let p = parse(&z).unwrap();
        assert_eq!(p.manifest.id.to_string(), "@acme/hello");
        assert_eq!(p.prompt.as_deref(), Some("Hi {{input.name}}"));
        assert_eq!(
            p.entries,
            vec![
                "manifest.json",
                "prompt.md",
                "signature.sig",
                "docs/readme.txt"
            ]
        );
        assert!(p.integrity.starts_with("sha256-"));
        assert_eq!(p.integrity, integrity(&z));
    }

    #[test]
    fn unsafe_names() {
        for bad in [
            &b"../evil"[..],
            b"a/../../evil",
            b"/etc/passwd",
            b"a\\b",
            b"C:/x",
            b"a\0b",
        ] {
            assert!(unsafe_path_reason(bad).is_some(), "{bad:?}");
        }
        for ok in [&b"prompt.md"[..], b"a/b/c.txt", b"..a", b"a..b/c"] {
            assert!(unsafe_path_reason(ok).is_none(), "{ok:?}");
        }
        let z = zip_of(&agent_manifest(), &[("prompt.md", b"x"), ("../evil", b"x")]);
        assert_eq!(codes(parse(&z)), vec![("archive".into(), "unsafe_path")]);
    }

    /// `zip` with every occurrence of `from` (local header and central directory) replaced by `to`,
    /// which has the same length: the way to get names a ZIP writer refuses to write.
    fn renamed(zip: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let (from, to) = (from.as_bytes(), to.as_bytes());
        let mut out = zip.to_vec();
        let mut i = 0;
        let mut n = 0;
        while i + from.len() <= out.len() {
            if &out[i..i + from.len()] == from {
                out[i..i + from.len()].copy_from_slice(to);
                n += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        assert_eq!(
            n, 2,
            "the name is in one local header and one central record"
        );
        out
    }

    fn messages(r: Result<AfpsPackage, AfpsError>) -> Vec<(&'static str, String)> {
        match r {
            Err(AfpsError::Invalid(e)) => e.into_iter().map(|e| (e.code, e.message)).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn duplicate_names_are_rejected() {
        // The same name twice: the second prompt would shadow the validated one.
        let z = zip_of(
            &agent_manifest(),
            &[("prompt.md", b"validated"), ("prompt.mX", b"smuggled")],
        );
        let z = renamed(&z, "prompt.mX", "prompt.md");
        let got = messages(parse(&z));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "duplicate_entry");
        assert!(got[0].1.contains("\"prompt.md\""), "{got:?}");

        // Names equal once `.` segments and repeated slashes are dropped.
        for (first, placeholder, second) in [
            ("prompt.md", "xxprompt.md", "./prompt.md"),
            ("docs/a.txt", "docsxxa.txt", "docs//a.txt"),
            ("docs/a.txt", "docsxxxa.txt", "docs/./a.txt"),
            ("docs/a.txt", "docsxa.txtx", "docs/a.txt/"),
        ] {
            let z = zip_of(&agent_manifest(), &[(first, b"1"), (placeholder, b"2")]);
            let got = messages(parse(&renamed(&z, placeholder, second)));
            assert!(
                got.iter().any(|(c, m)| *c == "duplicate_entry"
                    && m.contains(first)
                    && m.contains(second)),
                "{first} / {second}: {got:?}"
            );
        }
        assert_eq!(normalised_name(b"./a//b/./c/"), b"a/b/c");
        assert_eq!(normalised_name(b"a/b"), b"a/b");
    }

    #[test]
    fn missing_prompt_and_bad_fields_all_reported() {
        let mut m = agent_manifest();
        m["version"] = json!("1.0");
        m["type"] = json!("agent");
        let got = codes(parse(&zip_of(&m, &[])));
        assert!(got.contains(&("manifest.version".into(), "invalid_format")));
        assert!(got.contains(&("archive".into(), "required")));
        let got = codes(parse(&zip_of(&agent_manifest(), &[("prompt.md", b"  \n")])));
        assert_eq!(got, vec![("archive".into(), "invalid_value")]);
    }

    #[test]
    fn skill_needs_skill_md() {
        let m =
            json!({"schema_version": "0.1", "name": "@a/s", "version": "0.1.0", "type": "skill"});
        assert_eq!(
            codes(parse(&zip_of(&m, &[]))),
            vec![("archive".into(), "required")]
        );
        assert!(parse(&zip_of(&m, &[("SKILL.md", b"# skill")])).is_ok());
    }

    #[test]
    fn garbage_and_caps() {
        assert_eq!(
            codes(parse(b"not a zip")),
            vec![("archive".into(), "invalid_format")]
        );
        assert_eq!(
            parse(&vec![0u8; MAX_COMPRESSED_BYTES + 1]).unwrap_err(),
            AfpsError::TooLarge
        );
        let names: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        assert_eq!(
            codes(parse(&build_zip(&files))),
            vec![("archive".into(), "too_many_entries")]
        );
    }

    #[test]
    fn bomb_is_stopped_while_inflating() {
        // 60 MiB of zeros deflates to ~60 KiB.
        let zeros = vec![0u8; 60 * 1024 * 1024];
        let z = zip_of(
            &agent_manifest(),
            &[("prompt.md", b"x"), ("zeros.bin", &zeros)],
        );
        assert!(z.len() < 1024 * 1024);
        assert_eq!(codes(parse(&z)), vec![("archive".into(), "too_large")]);
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|f| json!(f)),
                ".{0,12}".prop_map(Value::String),
                Just(json!("@a/b")),
                Just(json!("1.0.0")),
                Just(json!("0.1")),
                Just(json!("agent")),
                Just(json!({"type": "object"})),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            ".{0,6}",
                            Just("schema".to_string()),
                            Just("http".to_string()),
                            Just("delivery".to_string()),
                            Just("type".to_string()),
                        ],
                        inner,
                        0..4
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        const KEYS: &[&str] = &[
            "schema_version",
            "name",
            "version",
            "type",
            "display_name",
            "description",
            "input",
            "output",
            "timeout",
            "dependencies",
            "auths",
            "_meta",
        ];

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn mutated_archives_never_panic(
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let mut z = zip_of(&agent_manifest(), &[("prompt.md", b"Hello"), ("a/b.txt", b"x")]);
                for (at, byte) in flips {
                    let i = at.index(z.len());
                    z[i] ^= byte;
                }
                if truncate {
                    let n = cut.index(z.len());
                    z.truncate(n);
                }
                let _ = parse(&z);
            }

            #[test]
            fn mutated_manifests_never_panic(
                edits in prop::collection::vec((0..KEYS.len(), json_value()), 0..6),
                whole in prop::option::of(json_value()),
            ) {
                let mut m = agent_manifest();
                for (k, v) in edits {
                    m[KEYS[k]] = v;
                }
                if let Some(w) = whole {
                    m = w;
                }
                let _ = validate_manifest(&m);
                let _ = parse(&zip_of(&m, &[("prompt.md", b"x"), ("SKILL.md", b"y")]));
            }

            #[test]
            fn entry_names_never_panic(name in "[a-zA-Z0-9./\\\\:_-]{0,24}") {
                let z = zip_of(&agent_manifest(), &[("prompt.md", b"x"), (name.as_str(), b"x")]);
                let _ = parse(&z);
            }
        }
    }

    #[test]
    fn missing_manifest() {
        let z = build_zip(&[("prompt.md", b"x")]);
        assert_eq!(codes(parse(&z)), vec![("archive".into(), "required")]);
    }
}
