//! The `appstrate` command line (§5.1).

use std::io::Write;
use std::path::Path;

use base64::Engine;
use clap::{Parser, Subcommand};
use rand::RngCore;
use serde_json::json;

use crate::config::{Config, LogFormat};
use crate::crypto::{new_token, sha256_hex};
use crate::infra::database::Database;
use crate::startup::{bind, Application};

#[derive(Parser)]
#[command(
    name = "appstrate",
    version,
    about = "Appstrate: a self-hostable platform that runs AI agents packaged as AFPS archives",
    long_about = "Configuration comes from the environment and from ./.env when present. \
                  See .env.example for every variable."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default)
    Serve,
    /// First look on a laptop: write ./.env with fresh secrets if missing, then serve
    Dev,
    /// Create the organization and its default application, then print an admin token and an API key
    Bootstrap {
        #[arg(long, default_value = "Default")]
        org_name: String,
        #[arg(long, default_value = "Default")]
        app_name: String,
    },
    /// Manage admin tokens
    AdminToken {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
    /// Database maintenance
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Validate the environment and exit (0 when valid, 2 otherwise)
    CheckConfig,
}

#[derive(Subcommand)]
enum AdminTokenCommand {
    /// List admin tokens (id, prefix, created, last used)
    List,
    /// Revoke an admin token
    Revoke { id: String },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply migrations and exit
    Migrate,
    /// Delete what is past its retention now (RUN_RETENTION_DAYS, RUN_LOG_RETENTION_DAYS,
    /// WEBHOOK_DELIVERY_RETENTION_DAYS), as the server's retention job does
    #[command(
        long_about = "Delete what is past its retention now, in the same small batches as the server's \
                      retention job (RUN_RETENTION_DAYS, RUN_LOG_RETENTION_DAYS, \
                      WEBHOOK_DELIVERY_RETENTION_DAYS; 0 keeps a kind forever). Open runs and the last \
                      run of a schedule are kept. Prints one `<kind> <rows>` line per kind on stdout. \
                      On SQLite the freed space is given back to the file system; a file created before \
                      incremental auto-vacuum is converted once with VACUUM (which rewrites the file and \
                      needs as much free disk space: stop the server first for a large file)."
    )]
    Prune {
        /// Only count what would be deleted; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy every table of a stopped Tier 0 SQLite database into an empty PostgreSQL database
    #[command(
        long_about = "Copy every table of a stopped Tier 0 SQLite database into an empty PostgreSQL \
                      database, in one transaction, then verify the row counts. Stop the Tier 0 server \
                      first. Object storage (FS_STORAGE_PATH) is not copied. Progress goes to stderr; \
                      on success one `<table> <rows>` line per table is printed to stdout. Exit 2 when \
                      the inputs are refused, 1 when the copy failed (nothing is committed then)."
    )]
    MigrateData {
        /// The Tier 0 database: sqlite:PATH or a plain path (e.g. ./data/appstrate.db)
        #[arg(long, value_name = "SQLITE")]
        from: String,
        /// The PostgreSQL database: postgres://user:password@host:port/db (migrated first)
        #[arg(long, value_name = "POSTGRES_URL")]
        to: String,
        /// Delete every row of the target first (in the same transaction) instead of refusing a
        /// non-empty target
        #[arg(long)]
        replace: bool,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // migrate-data reads its two databases from its flags: it needs none of the server's configuration.
    if let Command::Db {
        command: DbCommand::MigrateData { from, to, replace },
    } = &command
    {
        return migrate_data(from, to, *replace);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let env_file_exists = match crate::config::load_dotenv(&cwd) {
        Ok(exists) => exists,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    if let Command::Dev = command {
        if let Err(e) = prepare_dev_env(&cwd, env_file_exists) {
            eprintln!("appstrate dev: {e}");
            return 1;
        }
    }
    let config = match Config::from_process_env() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return 2;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    match command {
        Command::Serve | Command::Dev => runtime.block_on(serve(config)),
        Command::CheckConfig => {
            eprintln!("configuration is valid (tier {})", config.tier());
            0
        }
        Command::Bootstrap { org_name, app_name } => {
            runtime.block_on(bootstrap(config, &org_name, &app_name))
        }
        Command::AdminToken { command } => runtime.block_on(admin_token(config, command)),
        Command::Db {
            command: DbCommand::MigrateData { .. },
        } => unreachable!("handled before the configuration is read"),
        Command::Db {
            command: DbCommand::Prune { dry_run },
        } => runtime.block_on(prune(config, dry_run)),
        Command::Db {
            command: DbCommand::Migrate,
        } => runtime.block_on(async {
            crate::telemetry::init(&config.log_level, config.log_format);
            let db = match crate::infra::open_database(&config).await {
                Ok(db) => db,
                Err(e) => {
                    eprintln!("{e}");
                    return 1;
                }
            };
            let result = crate::infra::migrate_database(&config, db.as_ref()).await;
            db.close().await;
            match result {
                Ok(0) => {
                    println!("database is up to date: no migrations to apply");
                    0
                }
                Ok(1) => {
                    println!("applied 1 migration");
                    0
                }
                Ok(n) => {
                    println!("applied {n} migrations");
                    0
                }
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }),
    }
}

/// `appstrate db migrate-data`: returns the exit code (0, 1 after a failed copy, 2 for refused inputs).
fn migrate_data(from: &str, to: &str, replace: bool) -> i32 {
    crate::telemetry::init("warn", LogFormat::Text);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let mut progress = |line: String| eprintln!("{line}");
    match runtime.block_on(crate::infra::database::migrate_data::migrate_data(
        from,
        to,
        replace,
        &mut progress,
    )) {
        Ok(report) => {
            let total: i64 = report.iter().map(|(_, n)| n).sum();
            let mut out = std::io::stdout().lock();
            for (table, rows) in &report {
                let _ = writeln!(out, "{table} {rows}");
            }
            eprintln!(
                "copied {total} rows in {} tables into {}; row counts verified",
                report.len(),
                crate::infra::database::describe_postgres_url(to)
            );
            0
        }
        Err(e) => {
            eprintln!("migrate-data: {e}");
            e.exit_code()
        }
    }
}

/// Each run holds a few descriptors (runner pipes, sidecar listeners and connections): raise the soft
/// open-files limit to the hard limit so hundreds of concurrent runs fit.
fn raise_open_files_limit() {
    #[cfg(unix)]
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn serve(config: Config) -> i32 {
    // First, so that SIGTERM/SIGINT during the boot steps below is a graceful shutdown once the steps are
    // done (or a plain exit if they fail), not an abrupt kill.
    let mut signals = Signals::install();
    crate::telemetry::init_server(&config.log_level, config.log_format);
    raise_open_files_limit();
    let host = std::env::var("HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "0.0.0.0".into());
    let listener = match bind(&host, config.port).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return e.exit_code();
        }
    };
    let app = match Application::start(config, listener).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot failed: {e}");
            tracing::error!(error = %e, "boot failed");
            return e.exit_code();
        }
    };
    let name = signals.recv().await;
    tracing::info!(signal = name, "signal received");
    let clean = app.shutdown().await;
    crate::telemetry::shutdown();
    if clean {
        0
    } else {
        1
    }
}

/// SIGTERM and SIGINT, registered once; a signal delivered before [`Signals::recv`] is awaited is kept.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Waits for the first signal; returns its name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
            tokio::select! {
                _ = next(&mut self.term) => "SIGTERM",
                _ = next(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

/// Mints a new admin token for `org_id`; returns the secret (shown once).
pub async fn mint_admin_token(db: &dyn Database, org_id: &str) -> anyhow::Result<String> {
    let secret = new_token("adm_");
    db.insert_admin_token(
        &uuid::Uuid::new_v4().to_string(),
        org_id,
        &sha256_hex(&secret),
        &secret[..8],
    )
    .await?;
    Ok(secret)
}

/// `appstrate bootstrap`: returns the JSON line it prints.
pub async fn bootstrap_json(
    db: &dyn Database,
    org_name: &str,
    app_name: &str,
) -> anyhow::Result<serde_json::Value> {
    let boot = db.ensure_org(org_name, app_name).await?;
    let admin = mint_admin_token(db, &boot.org.id).await?;
    let key = new_token("ask_");
    db.insert_api_key(&crate::infra::database::NewApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: boot.org.id.clone(),
        application_id: boot.application.id.clone(),
        name: "bootstrap".into(),
        key_hash: sha256_hex(&key),
        key_prefix: key[..8].to_string(),
        scopes: crate::domain::SCOPES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        expires_at: None,
    })
    .await?;
    Ok(json!({
        "orgId": boot.org.id,
        "applicationId": boot.application.id,
        "adminToken": admin,
        "apiKey": key,
    }))
}

async fn bootstrap(config: Config, org_name: &str, app_name: &str) -> i32 {
    crate::telemetry::init("warn", LogFormat::Text);
    let db = match crate::infra::connect_database(&config).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match bootstrap_json(db.as_ref(), org_name, app_name).await {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("bootstrap failed: {e}");
            1
        }
    }
}

/// `appstrate db prune [--dry-run]`.
async fn prune(config: Config, dry_run: bool) -> i32 {
    crate::telemetry::init("warn", LogFormat::Text);
    let db = match crate::infra::connect_database(&config).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let retention = &config.retention;
    let cutoffs = crate::retention::cutoffs(retention, crate::infra::database::now());
    for (var, days) in [
        ("RUN_RETENTION_DAYS", retention.run_days),
        ("RUN_LOG_RETENTION_DAYS", retention.run_log_days),
        (
            "WEBHOOK_DELIVERY_RETENTION_DAYS",
            retention.webhook_delivery_days,
        ),
    ] {
        match days {
            0 => eprintln!("{var}=0: kept forever"),
            d => eprintln!("{var}={d}: older than {d} days goes"),
        }
    }
    let result = async {
        let size_before = db.database_size().await?;
        let counts = if dry_run {
            db.prune_preview(&cutoffs).await?
        } else {
            // The object store, to delete the documents of the runs that go (without it, only rows).
            let storage = match crate::infra::connect_storage(&config).await {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("object storage unavailable ({e}); documents of deleted runs keep their bytes");
                    None
                }
            };
            let leftovers = crate::retention::Leftovers {
                data_dir: &config.data_dir,
                storage: storage.as_deref(),
            };
            let report = crate::retention::sweep(
                db.as_ref(),
                retention,
                leftovers,
                None,
                std::time::Duration::ZERO,
                || false,
            )
            .await?;
            if report.busy {
                eprintln!("another instance is running retention now; run again later");
            }
            if db.enable_incremental_vacuum().await? {
                eprintln!("converted the SQLite file to incremental auto-vacuum (VACUUM)");
            }
            db.reclaim_space(0).await?;
            report.deleted
        };
        let size_after = db.database_size().await?;
        Ok::<_, crate::infra::database::DbError>((counts, size_before, size_after))
    }
    .await;
    db.close().await;
    match result {
        Ok((counts, before, after)) => {
            if dry_run {
                eprintln!("dry run: nothing was deleted");
            } else {
                eprintln!("database size: {before} bytes before, {after} bytes after");
            }
            println!("runs {}", counts.runs);
            println!("run_logs {}", counts.run_logs);
            println!("webhook_deliveries {}", counts.webhook_deliveries);
            0
        }
        Err(e) => {
            eprintln!("prune failed: {e}");
            1
        }
    }
}

async fn admin_token(config: Config, command: AdminTokenCommand) -> i32 {
    crate::telemetry::init("warn", LogFormat::Text);
    let db = match crate::infra::connect_database(&config).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match command {
        AdminTokenCommand::List => match db.list_admin_tokens().await {
            Ok(tokens) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "{:<36}  {:<8}  {:<27}  {:<27}  status",
                    "id", "prefix", "created", "last used"
                );
                for t in tokens {
                    let fmt = |d: Option<crate::infra::database::Timestamp>| {
                        d.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_else(|| "-".into())
                    };
                    let _ = writeln!(
                        out,
                        "{:<36}  {:<8}  {:<27}  {:<27}  {}",
                        t.id,
                        t.token_prefix,
                        fmt(Some(t.created_at)),
                        fmt(t.last_used_at),
                        if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        AdminTokenCommand::Revoke { id } => match db.revoke_admin_token(&id).await {
            Ok(()) => {
                eprintln!("admin token {id} revoked");
                0
            }
            Err(crate::infra::database::DbError::NotFound) => {
                eprintln!("no active admin token with id {id}");
                1
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
    }
}

/// The first port from `start` on which `host` can listen.
fn free_port(host: &str, start: u16) -> Option<u16> {
    (start..=start.saturating_add(99)).find(|p| std::net::TcpListener::bind((host, *p)).is_ok())
}

/// `appstrate dev`, after `./.env` was loaded if present: write `./.env` with fresh boot secrets when there
/// is none (never overwriting one; `APP_URL` is left out so that it follows the port), then, when `PORT`
/// is unset in both the environment and `.env`, pick the first free port from 3000 (or from the hidden
/// `APPSTRATE_DEV_START_PORT`) and say which.
fn prepare_dev_env(dir: &Path, env_file_exists: bool) -> anyhow::Result<()> {
    let path = dir.join(".env");
    if !env_file_exists {
        let b64 = |n: usize| {
            let mut buf = vec![0u8; n];
            rand::thread_rng().fill_bytes(&mut buf);
            base64::engine::general_purpose::STANDARD.encode(buf)
        };
        let contents = format!(
            "# Written by `appstrate dev` with freshly generated secrets. Keep this file private.\n\
             BETTER_AUTH_SECRET={}\nUPLOAD_SIGNING_SECRET={}\nCONNECTION_ENCRYPTION_KEY={}\n",
            b64(32),
            b64(32),
            b64(32),
        );
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&path)?;
        file.write_all(contents.as_bytes())?;
        eprintln!("wrote ./.env with freshly generated boot secrets (mode 0600)");
        // Variables already set in the environment win over the generated ones.
        dotenvy::from_path(&path)?;
    }
    let set = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    if set("PORT").is_none() {
        let start: u16 = match set("APPSTRATE_DEV_START_PORT") {
            None => 3000,
            Some(raw) => raw.trim().parse().map_err(|_| {
                anyhow::anyhow!("APPSTRATE_DEV_START_PORT must be a port number, got {raw:?}")
            })?,
        };
        let host = set("HOST").unwrap_or_else(|| "0.0.0.0".into());
        let port = free_port(&host, start).ok_or_else(|| {
            anyhow::anyhow!(
                "no free port between {start} and {}; set PORT to a free port",
                start.saturating_add(99)
            )
        })?;
        if port == start {
            eprintln!("PORT is not set: using port {port}");
        } else {
            eprintln!(
                "PORT is not set: port {start} is in use, using port {port} (the next free one)"
            );
        }
        std::env::set_var("PORT", port.to_string());
    }
    Ok(())
}
