//! The docker-compose files, checked with Debian's `docker-compose config` (images cannot be pulled here,
//! so the files are validated and interpolated, not started).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_support::services;

const REQUIRED: [&str; 4] = [
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker-compose -f <file> config` with exactly `env` (plus PATH) and no `.env` file.
fn config(file: &str, env: &[(&str, &str)]) -> Option<Output> {
    let available = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        services::missing("docker-compose", "docker-compose on PATH");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("empty.env");
    std::fs::write(&env_file, "").unwrap();
    let mut cmd = Command::new("docker-compose");
    cmd.arg("--env-file")
        .arg(&env_file)
        .arg("-f")
        .arg(root().join(file))
        .arg("config")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Some(cmd.output().unwrap())
}

#[test]
fn tier3_refuses_to_start_without_its_four_credentials() {
    let all: Vec<(&str, &str)> = REQUIRED.iter().map(|k| (*k, "value-12345678")).collect();
    let Some(ok) = config("docker-compose.yml", &all) else {
        return;
    };
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(text.contains("RUN_ADAPTER: docker"), "{text}");
    assert!(
        text.contains("/var/run/docker.sock:/var/run/docker.sock"),
        "{text}"
    );
    assert!(text.contains("S3_ENDPOINT: http://minio:9000"), "{text}");
    assert!(text.contains("REDIS_URL: redis://redis:6379"), "{text}");
    assert!(
        text.contains(
            "DATABASE_URL: postgres://value-12345678:value-12345678@postgres:5432/appstrate"
        ),
        "{text}"
    );

    for missing in REQUIRED {
        let env: Vec<(&str, &str)> = all.iter().filter(|(k, _)| *k != missing).cloned().collect();
        let out = config("docker-compose.yml", &env).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without {missing}");
        assert!(err.contains(&format!("set {missing}")), "{missing}: {err}");
    }
}

#[test]
fn tier1_and_tier2_files_need_no_credentials() {
    let Some(t1) = config("docker-compose.tier1.yml", &[]) else {
        return;
    };
    assert!(
        t1.status.success(),
        "{}",
        String::from_utf8_lossy(&t1.stderr)
    );
    let t1 = String::from_utf8_lossy(&t1.stdout);
    assert!(t1.contains("DATABASE_URL: postgres://"), "{t1}");
    assert!(!t1.contains("REDIS_URL"), "{t1}");
    assert!(!t1.contains("RUN_ADAPTER"), "{t1}");

    let t2 = config("docker-compose.tier2.yml", &[]).unwrap();
    assert!(
        t2.status.success(),
        "{}",
        String::from_utf8_lossy(&t2.stderr)
    );
    let t2 = String::from_utf8_lossy(&t2.stdout);
    assert!(t2.contains("REDIS_URL: redis://redis:6379"), "{t2}");
    assert!(
        !t2.contains("S3_BUCKET") && !t2.contains("RUN_ADAPTER"),
        "{t2}"
    );
}
