//! Layering: the domain speaks no HTTP. No file outside `src/http/` may name `crate::http`, except the
//! files listed in `NOT_YET`, which still do today; the list may only shrink (a listed file that no
//! longer needs the exemption fails the test until it is removed from the list).

use std::path::{Path, PathBuf};

/// Files below `src/` (outside `http/`) that import the JSON face: `startup.rs` and `server.rs` are
/// wiring (they build and serve the router). The domain itself takes a `domain::Principal` and returns
/// `domain::DomainError`s.
const NOT_YET: &[&str] = &["server.rs", "startup.rs"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_new_http_imports_below_the_json_face() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offenders = Vec::new();
    let mut cleared = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel.starts_with("http/") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let imports = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .any(|l| l.contains("crate::http"));
        match (imports, NOT_YET.contains(&rel.as_str())) {
            (true, false) => offenders.push(rel),
            (false, true) => cleared.push(rel),
            _ => {}
        }
    }
    assert!(
        offenders.is_empty(),
        "these files import crate::http; the domain must take a principal and return domain errors \
         (see docs/people.md and the people module): {offenders:?}"
    );
    assert!(
        cleared.is_empty(),
        "these files no longer import crate::http: remove them from NOT_YET: {cleared:?}"
    );
}
