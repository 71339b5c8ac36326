//! The run's workspace (`WORKSPACE_DIR`, `/workspace` in Docker mode): the directory the agent's file
//! tools and `bash` work in. It holds the bundle files the agent declares and the run's input files.
//!
//! Confinement: every path a tool receives is resolved against the workspace, and the check is made on
//! the resolved path (symlinks followed), so `..`, an absolute path elsewhere, or a symlink planted by a
//! command pointing out of the workspace are all refused with an error that says why.

pub mod bash;
mod files;
pub mod tools;

use std::path::{Component, Path, PathBuf};

/// One run's workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The canonical directory (symlinks resolved); every resolved path must stay under it.
    root: PathBuf,
    /// How the agent knows it (`WORKSPACE_DIR` as configured), accepted as a prefix of absolute paths.
    shown: PathBuf,
}

impl Workspace {
    /// Opens the workspace directory, which the platform made (a tmpfs in Docker mode, a private
    /// temporary directory in process mode).
    pub fn open(dir: &str) -> Result<Workspace, String> {
        let root = std::fs::canonicalize(dir).map_err(|e| format!("workspace {dir}: {e}"))?;
        Ok(Workspace {
            root,
            shown: PathBuf::from(dir),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The workspace as the agent sees it (e.g. `/workspace`).
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// `path` relative to the workspace, for results (`.` for the root itself).
    pub fn relative(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(p) if p.as_os_str().is_empty() => ".".into(),
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(_) => path.to_string_lossy().into_owned(),
        }
    }

    /// Resolves a path given by the model: relative to the workspace, or absolute under it. The part
    /// that exists is canonicalized (symlinks followed) and must still be inside the workspace; the
    /// rest (what a write would create) is plain names. Returns the absolute resolved path.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, String> {
        if path.contains('\0') {
            return Err("the path contains a NUL byte".into());
        }
        let raw = Path::new(path.trim());
        let rel: &Path = if raw.is_absolute() {
            match raw
                .strip_prefix(&self.shown)
                .or_else(|_| raw.strip_prefix(&self.root))
            {
                Ok(r) => r,
                Err(_) => {
                    return Err(format!(
                    "`{path}` is outside the workspace; use a path relative to {} (or under it)",
                    self.shown.display()
                ))
                }
            }
        } else {
            raw
        };
        let mut names = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => names.push(n.to_os_string()),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(format!(
                        "`{path}`: `..` is not allowed; paths stay inside the workspace {}",
                        self.shown.display()
                    ))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("`{path}` is not a path inside the workspace"))
                }
            }
        }
        // The longest prefix that exists (without following its last link yet).
        let mut existing = self.root.clone();
        let mut split = 0;
        for (i, n) in names.iter().enumerate() {
            let next = existing.join(n);
            if std::fs::symlink_metadata(&next).is_err() {
                break;
            }
            existing = next;
            split = i + 1;
        }
        let real = std::fs::canonicalize(&existing).map_err(|e| {
            format!(
                "`{path}`: {} cannot be resolved ({e}); a symlink to a missing target?",
                self.relative(&existing)
            )
        })?;
        if !real.starts_with(&self.root) {
            return Err(format!(
                "`{path}` resolves outside the workspace (through a symlink to {}); refused",
                real.display()
            ));
        }
        let rest = &names[split..];
        if !rest.is_empty() && !real.is_dir() {
            return Err(format!(
                "`{path}`: {} is not a directory",
                self.relative(&real)
            ));
        }
        Ok(rest.iter().fold(real, |p, n| p.join(n)))
    }
}

/// The system prompt's `## Workspace` section: where the agent's files are and what it can do there.
pub fn prompt_section(ws: &Workspace, bundle_files: &[String], bash: bool) -> String {
    let mut s = format!(
        "\n## Workspace\n\nYour workspace is {}: use `read`, `write`, `edit`, `ls`, `find` and `grep` on it{}. \
         Paths are relative to it; nothing outside it is reachable.\n",
        ws.shown().display(),
        if bash { ", and `bash` to run commands there" } else { "" }
    );
    if !bundle_files.is_empty() {
        s.push_str("\nFiles of your package in it:\n");
        for f in bundle_files.iter().take(50) {
            s.push_str(&format!("- {f}\n"));
        }
        if bundle_files.len() > 50 {
            s.push_str(&format!("- … and {} more\n", bundle_files.len() - 50));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let w = Workspace::open(dir.path().to_str().unwrap()).unwrap();
        (dir, w)
    }

    #[test]
    fn relative_and_absolute_paths_inside_resolve() {
        let (_d, w) = ws();
        std::fs::create_dir(w.root().join("src")).unwrap();
        assert_eq!(w.resolve("src/a.rs").unwrap(), w.root().join("src/a.rs"));
        assert_eq!(w.resolve("./src").unwrap(), w.root().join("src"));
        assert_eq!(w.resolve("").unwrap(), w.root());
        let abs = format!("{}/src/x", w.shown().display());
        assert_eq!(w.resolve(&abs).unwrap(), w.root().join("src/x"));
        // New directories below a new name are fine (a write creates them).
        assert_eq!(
            w.resolve("new/deep/f").unwrap(),
            w.root().join("new/deep/f")
        );
    }

    #[test]
    fn escapes_are_refused() {
        let (_d, w) = ws();
        let e = w.resolve("../etc/passwd").unwrap_err();
        assert!(e.contains("`..` is not allowed"), "{e}");
        assert!(w.resolve("a/../../x").is_err());
        let e = w.resolve("/etc/passwd").unwrap_err();
        assert!(e.contains("outside the workspace"), "{e}");
        // A symlink to a directory outside, and one to a file outside.
        std::os::unix::fs::symlink("/etc", w.root().join("etc")).unwrap();
        let e = w.resolve("etc/passwd").unwrap_err();
        assert!(e.contains("resolves outside the workspace"), "{e}");
        std::os::unix::fs::symlink("/etc/hostname", w.root().join("h")).unwrap();
        assert!(w.resolve("h").is_err());
        // A dangling link (a write through it would create a file elsewhere).
        std::os::unix::fs::symlink("/nonexistent-dir/x", w.root().join("d")).unwrap();
        assert!(w.resolve("d").is_err());
        // A link inside the workspace is followed.
        std::fs::write(w.root().join("real.txt"), "x").unwrap();
        std::os::unix::fs::symlink(w.root().join("real.txt"), w.root().join("alias")).unwrap();
        assert_eq!(w.resolve("alias").unwrap(), w.root().join("real.txt"));
        // A file used as a directory.
        assert!(w
            .resolve("real.txt/x")
            .unwrap_err()
            .contains("not a directory"));
    }
}
