//! `_meta["dev.appstrate/workspace"]` of an agent manifest: `files`, globs of the package's own files
//! that a run copies into its workspace (docs/runner.md#workspace). Checked at import with the rest of
//! the manifest (`manifest::validate_manifest` reports these problems under that key).

use serde_json::Value;

/// Problems of `files` as `(path below the key, code, message)`: it must be an array of relative globs
/// without `..` that compile.
pub fn file_problems(ws: &Value) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    let Some(files) = ws.get("files") else {
        return out;
    };
    let Some(list) = files.as_array() else {
        out.push((
            "files".into(),
            "invalid_type",
            "must be an array of globs such as \"data/**\"".into(),
        ));
        return out;
    };
    for (i, g) in list.iter().enumerate() {
        let at = format!("files.{i}");
        let Some(g) = g.as_str() else {
            out.push((at, "invalid_type", "must be a string (a glob)".into()));
            continue;
        };
        if g.is_empty() || g.starts_with('/') || g.split('/').any(|s| s == "..") {
            out.push((
                at,
                "invalid_value",
                "must be a relative glob inside the package, without `..` (e.g. \"data/**\")"
                    .into(),
            ));
        } else if let Err(e) = globset::Glob::new(g) {
            out.push((at, "invalid_format", format!("not a valid glob: {e}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::packages::manifest::validate_manifest;
    use serde_json::{json, Value};

    fn fields(v: Value) -> Vec<(String, &'static str)> {
        validate_manifest(&v)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.code))
            .collect()
    }

    #[test]
    fn workspace_files_are_relative_globs() {
        let m = |files: Value| {
            json!({"schema_version": "0.1", "name": "@a/b", "version": "1.0.0", "type": "agent",
                   "display_name": "B", "_meta": {"dev.appstrate/workspace": {"files": files}}})
        };
        assert!(validate_manifest(&m(json!(["data/**", "run.sh"]))).is_ok());
        assert_eq!(
            fields(m(json!(["/etc/*", "../x", "[", 3]))),
            vec![
                (
                    "manifest._meta.dev.appstrate/workspace.files.0".into(),
                    "invalid_value"
                ),
                (
                    "manifest._meta.dev.appstrate/workspace.files.1".into(),
                    "invalid_value"
                ),
                (
                    "manifest._meta.dev.appstrate/workspace.files.2".into(),
                    "invalid_format"
                ),
                (
                    "manifest._meta.dev.appstrate/workspace.files.3".into(),
                    "invalid_type"
                ),
            ]
        );
        assert_eq!(
            fields(m(json!("data/**"))),
            vec![(
                "manifest._meta.dev.appstrate/workspace.files".into(),
                "invalid_type"
            )]
        );
    }
}
