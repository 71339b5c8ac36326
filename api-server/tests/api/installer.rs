//! `scripts/release.sh` and `scripts/install.sh` against a loopback HTTP server: a signed release installs
//! and runs; a tampered tarball, another key's installer and a missing signature are refused; without
//! minisign the installer stops with the advice to install it.
//!
//! The release packs this build's `appstrate` (dev profile) and small stand-ins for the other binaries:
//! the point is signing and verification, not a release compile. Needs `minisign` (scripts/test.sh
//! installs it); without it the test says it is skipped, except under CI, where it fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

const BIN: &str = env!("CARGO_BIN_EXE_appstrate");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn minisign_available() -> bool {
    let found = Command::new("minisign").arg("-v").output().is_ok();
    if !found {
        if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
            panic!("minisign is not installed under CI: scripts/test.sh installs it (apt-get install minisign)");
        }
        println!("skipped: minisign is not installed (apt install minisign)");
    }
    found
}

/// Serves `root/<dir>/<file>` on a loopback port; returns the base URL.
async fn serve(root: PathBuf) -> String {
    let app = Router::new().route(
        "/{dir}/{file}",
        get(move |UrlPath((dir, file)): UrlPath<(String, String)>| {
            let root = root.clone();
            async move {
                if dir.contains("..") || file.contains("..") {
                    return Err(StatusCode::BAD_REQUEST);
                }
                tokio::fs::read(root.join(dir).join(file))
                    .await
                    .map_err(|_| StatusCode::NOT_FOUND)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn sh(script: &Path, env: &[(&str, &str)], home: &Path) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(script)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let (public, secret) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let key = std::fs::read_to_string(&public)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    (secret, key)
}

fn release(secret: &Path, bins: &Path, out: &Path) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/release.sh"))
        .env("MINISIGN_SECRET_KEY", secret)
        .env("RELEASE_BIN_DIR", bins)
        .env("RELEASE_DIR", out)
        .env("RELEASE_TARGETS", "x86_64-unknown-linux-gnu")
        .output()
        .unwrap()
}

#[tokio::test]
async fn installer_installs_only_what_the_release_key_signed() {
    if !minisign_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (secret, public) = keypair(root, "release");
    let (other_secret, other_public) = keypair(root, "other");

    // The binaries of the release: this build's appstrate and stand-ins for the others.
    let bins = root.join("bins");
    std::fs::create_dir(&bins).unwrap();
    std::fs::copy(BIN, bins.join("appstrate")).unwrap();
    for b in [
        "appstrate-runner",
        "appstrate-sidecar",
        "appstrate-operator",
    ] {
        let file = bins.join(b);
        std::fs::write(&file, format!("#!/bin/sh\necho {b}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let site = root.join("site");
    let good = site.join("good");
    let out = release(&secret, &bins, &good);
    assert!(out.status.success(), "release.sh failed:\n{}", text(&out));
    let tarball = "appstrate-x86_64-unknown-linux-gnu.tar.gz";
    for f in [
        tarball,
        &format!("{tarball}.minisig"),
        "SHA256SUMS",
        "SHA256SUMS.minisig",
        "install.sh",
    ] {
        assert!(good.join(f).is_file(), "release.sh did not write {f}");
    }
    let installer = good.join("install.sh");
    let script = std::fs::read_to_string(&installer).unwrap();
    assert!(
        script.contains(&format!("APPSTRATE_PUBLIC_KEY='{public}'")),
        "the published installer does not carry the release key"
    );
    // The same release signed with another key: its installer trusts that key only.
    let other = root.join("other-release");
    let out = release(&other_secret, &bins, &other);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_to_string(other.join("install.sh"))
        .unwrap()
        .contains(&other_public));

    // A tampered tarball with the genuine signature.
    let tampered = site.join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    let mut bytes = std::fs::read(good.join(tarball)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(tampered.join(tarball), bytes).unwrap();
    std::fs::copy(
        good.join(format!("{tarball}.minisig")),
        tampered.join(format!("{tarball}.minisig")),
    )
    .unwrap();
    // A tarball without a signature.
    let unsigned = site.join("unsigned");
    std::fs::create_dir_all(&unsigned).unwrap();
    std::fs::copy(good.join(tarball), unsigned.join(tarball)).unwrap();

    let base = serve(site.clone()).await;
    let home = root.join("home");
    std::fs::create_dir(&home).unwrap();
    let install = |installer: &Path, dir: &str, into: &Path, extra: &[(&str, &str)]| {
        let url = format!("{base}/{dir}");
        let dest = into.to_string_lossy().into_owned();
        let mut env = vec![
            ("APPSTRATE_BASE_URL", url.as_str()),
            ("APPSTRATE_INSTALL_DIR", dest.as_str()),
            ("APPSTRATE_TARGET", "x86_64-unknown-linux-gnu"),
        ];
        env.extend_from_slice(extra);
        let installer = installer.to_path_buf();
        let home = home.clone();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        std::thread::spawn(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            sh(&installer, &env, &home)
        })
    };

    // A good release installs appstrate and its runner, runs it and names the next step.
    let dest = root.join("bin-good");
    let out = tokio::task::spawn_blocking({
        let h = install(&installer, "good", &dest, &[]);
        move || h.join().unwrap()
    })
    .await
    .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "install failed:\n{log}");
    assert!(log.contains("Signature verified"), "{log}");
    assert!(log.contains("Next: appstrate dev"), "{log}");
    let version = Command::new(dest.join("appstrate"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    assert!(dest.join("appstrate-runner").is_file());

    // Refusals: nothing is installed, and the message says why.
    let cases: [(&str, &Path, &str, &str); 3] = [
        (
            "tampered tarball",
            &installer,
            "tampered",
            "does not verify",
        ),
        (
            "another key",
            &other.join("install.sh"),
            "good",
            "does not verify",
        ),
        (
            "missing signature",
            &installer,
            "unsigned",
            "no signature at",
        ),
    ];
    for (case, script, dir, expected) in cases {
        let dest = root.join(format!("bin-{dir}-{}", case.len()));
        let out = tokio::task::spawn_blocking({
            let h = install(script, dir, &dest, &[]);
            move || h.join().unwrap()
        })
        .await
        .unwrap();
        let log = text(&out);
        assert!(!out.status.success(), "{case}: installed anyway:\n{log}");
        assert!(log.contains("refusing to install"), "{case}:\n{log}");
        assert!(log.contains(expected), "{case}:\n{log}");
        assert!(
            !dest.join("appstrate").exists(),
            "{case}: a binary was installed"
        );
    }

    // Without minisign: the seed's advice, and nothing downloaded or installed.
    let dest = root.join("bin-no-minisign");
    let out = tokio::task::spawn_blocking({
        let h = install(
            &installer,
            "good",
            &dest,
            &[("MINISIGN", "/nonexistent/minisign")],
        );
        move || h.join().unwrap()
    })
    .await
    .unwrap();
    let log = text(&out);
    assert!(!out.status.success());
    for advice in [
        "brew install minisign",
        "apt install minisign",
        "apk add minisign",
    ] {
        assert!(log.contains(advice), "{log}");
    }
    assert!(!dest.exists());

    // The repository's copy has no key: it refuses to run rather than trust anything.
    let out = sh(&repo_root().join("scripts/install.sh"), &[], &home);
    assert!(!out.status.success());
    assert!(text(&out).contains("no public key"), "{}", text(&out));
}
