//! The run bundle (§16.3): the agent package's entries at the root of a ZIP and each resolved skill
//! under `skills/<scope>/<name>/SKILL.md`.

use serde_json::Value;
use std::io::{Cursor, Read};

/// Per-entry cap while inflating; the platform already validated the package, this only bounds memory.
const MAX_ENTRY_BYTES: u64 = 10 * 1024 * 1024;

#[derive(Debug)]
pub struct Bundle {
    pub manifest: Value,
    pub prompt: String,
    /// `(id, SKILL.md content)`, ordered by id. The id is the path between `skills/` and `/SKILL.md`,
    /// e.g. `@acme/summarise`.
    pub skills: Vec<(String, String)>,
}

impl Bundle {
    /// The globs of `_meta["dev.appstrate/workspace"].files`: the bundle files the agent wants in its
    /// workspace.
    pub fn workspace_files(&self) -> Vec<String> {
        self.manifest["_meta"]["dev.appstrate/workspace"]["files"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn output_schema(&self) -> Option<&Value> {
        self.manifest
            .get("output")
            .and_then(|o| o.get("schema"))
            .filter(|s| s.is_object() || s.is_boolean())
    }
}

/// Offsets of every central-directory record from `start`, read straight from the bytes (the ZIP
/// reader keeps only one of several same-named entries, so this is the only way to see the others).
fn central_record_offsets(bytes: &[u8], start: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let Ok(mut pos) = usize::try_from(start) else {
        return out;
    };
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize)
    };
    while bytes.get(pos..pos + 4) == Some(&[0x50, 0x4b, 0x01, 0x02][..]) {
        let (Some(n), Some(e), Some(c)) = (u16_at(pos + 28), u16_at(pos + 30), u16_at(pos + 32))
        else {
            break;
        };
        out.push(pos as u64);
        pos += 46 + n + e + c;
    }
    out
}

/// Reads the bundle. Entries are matched on their exact stored name (no decoding or normalisation),
/// and a bundle with two entries of one name is refused, so the entry read is always the one the
/// platform validated.
pub fn read(bytes: &[u8]) -> Result<Bundle, String> {
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a ZIP: {e}"))?;
    let mut kept = std::collections::HashSet::new();
    for i in 0..zip.len() {
        kept.insert(
            zip.by_index_raw(i)
                .map_err(|e| format!("entry {i}: {e}"))?
                .central_header_start(),
        );
    }
    if central_record_offsets(bytes, zip.central_directory_start())
        .iter()
        .any(|p| !kept.contains(p))
    {
        return Err("the bundle has two entries with the same name".into());
    }
    let mut manifest = None;
    let mut prompt = None;
    let mut skills = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| format!("entry {i}: {e}"))?;
        if f.is_dir() {
            continue;
        }
        // The stored bytes, not `name()`, which the reader may have decoded from CP437.
        let Ok(name) = String::from_utf8(f.name_raw().to_vec()) else {
            continue;
        };
        let wanted = name == "manifest.json"
            || name == "prompt.md"
            || (name.starts_with("skills/") && name.ends_with("/SKILL.md"));
        if !wanted {
            continue;
        }
        let mut buf = Vec::new();
        (&mut f)
            .take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("{name}: {e}"))?;
        if buf.len() as u64 > MAX_ENTRY_BYTES {
            return Err(format!("{name} is larger than 10 MiB"));
        }
        let text = String::from_utf8(buf).map_err(|_| format!("{name} is not UTF-8"))?;
        match name.as_str() {
            "manifest.json" => {
                manifest = Some(
                    serde_json::from_str::<Value>(&text)
                        .map_err(|e| format!("manifest.json: {e}"))?,
                )
            }
            "prompt.md" => prompt = Some(text),
            _ => {
                let id = &name["skills/".len()..name.len() - "/SKILL.md".len()];
                if !id.is_empty() {
                    skills.push((id.to_string(), text));
                }
            }
        }
    }
    skills.sort();
    let manifest = manifest.ok_or("manifest.json is missing")?;
    if !manifest.is_object() {
        return Err("manifest.json must be a JSON object".into());
    }
    Ok(Bundle {
        manifest,
        prompt: prompt.ok_or("prompt.md is missing")?,
        skills,
    })
}

/// Copies the agent's entries matching `patterns` (globs on the entry path; `*` stays within a path
/// segment, `**` crosses them) into the workspace; skills are not part of the agent's files. Returns
/// the relative paths written.
pub fn extract_files(
    bytes: &[u8],
    patterns: &[String],
    ws: &crate::workspace::Workspace,
) -> Result<Vec<String>, String> {
    if patterns.is_empty() {
        return Ok(Vec::new());
    }
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        set.add(
            globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("_meta.dev.appstrate/workspace.files: `{p}`: {e}"))?,
        );
    }
    let set = set.build().map_err(|e| e.to_string())?;
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a ZIP: {e}"))?;
    let mut written = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| format!("entry {i}: {e}"))?;
        if f.is_dir() {
            continue;
        }
        let Ok(name) = String::from_utf8(f.name_raw().to_vec()) else {
            continue;
        };
        if name.starts_with("skills/") || !set.is_match(&name) {
            continue;
        }
        let dest = ws.resolve(&name).map_err(|e| format!("{name}: {e}"))?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{name}: {e}"))?;
        }
        let mut out = std::fs::File::create(&dest).map_err(|e| format!("{name}: {e}"))?;
        let n = std::io::copy(&mut (&mut f).take(MAX_ENTRY_BYTES + 1), &mut out)
            .map_err(|e| format!("{name}: {e}"))?;
        if n > MAX_ENTRY_BYTES {
            return Err(format!("{name} is larger than 10 MiB"));
        }
        written.push(name);
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, body) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(body.as_bytes()).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn reads_the_briefing_fixture() {
        let bytes =
            include_bytes!("../../../shared/fixtures/afps/agents/briefing-agent/agent.afps");
        let b = read(bytes).unwrap();
        assert_eq!(b.manifest["name"], "@examples/daily-briefing");
        assert!(b.prompt.contains("{{input.topic}}"));
        assert!(b.skills.is_empty());
        assert!(b.output_schema().is_none());
    }

    #[test]
    fn reads_nested_and_flat_skills() {
        let bytes = zip_of(&[
            (
                "manifest.json",
                r#"{"name":"@a/b","output":{"schema":{"type":"object"}}}"#,
            ),
            ("prompt.md", "hi"),
            ("skills/@acme/zeta/SKILL.md", "Z"),
            ("skills/alpha/SKILL.md", "A"),
            ("skills/@acme/zeta/notes.txt", "ignored"),
        ]);
        let b = read(&bytes).unwrap();
        assert_eq!(
            b.skills,
            vec![
                ("@acme/zeta".to_string(), "Z".to_string()),
                ("alpha".into(), "A".into())
            ]
        );
        assert_eq!(b.output_schema().unwrap()["type"], "object");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let bytes = zip_of(&[
            ("manifest.json", "{}"),
            ("prompt.md", "validated"),
            ("prompt.mX", "smuggled"),
        ]);
        // Rename the third entry (local header and central record) to `prompt.md`.
        let mut dup = bytes.clone();
        let mut renamed = 0;
        for i in 0..dup.len() - 9 {
            if &dup[i..i + 9] == b"prompt.mX" {
                dup[i..i + 9].copy_from_slice(b"prompt.md");
                renamed += 1;
            }
        }
        assert_eq!(renamed, 2);
        assert!(read(&dup).unwrap_err().contains("same name"));
        assert_eq!(read(&bytes).unwrap().prompt, "validated");
    }

    #[test]
    fn declared_files_land_in_the_workspace() {
        let bytes = zip_of(&[
            (
                "manifest.json",
                r#"{"_meta":{"dev.appstrate/workspace":{"files":["data/**","run.sh"]}}}"#,
            ),
            ("prompt.md", "hi"),
            ("data/a.csv", "1,2"),
            ("data/deep/b.txt", "b"),
            ("run.sh", "echo hi"),
            ("notes/private.md", "not declared"),
            ("skills/x/SKILL.md", "S"),
        ]);
        let b = read(&bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ws = crate::workspace::Workspace::open(dir.path().to_str().unwrap()).unwrap();
        let written = extract_files(&bytes, &b.workspace_files(), &ws).unwrap();
        assert_eq!(written, vec!["data/a.csv", "data/deep/b.txt", "run.sh"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("data/deep/b.txt")).unwrap(),
            "b"
        );
        assert!(!dir.path().join("notes").exists());
        assert!(extract_files(&bytes, &["[".into()], &ws).is_err());
    }

    #[test]
    fn missing_files_are_errors() {
        assert!(read(&zip_of(&[("prompt.md", "x")]))
            .unwrap_err()
            .contains("manifest.json"));
        assert!(read(&zip_of(&[("manifest.json", "{}")]))
            .unwrap_err()
            .contains("prompt.md"));
        assert!(read(b"not a zip").unwrap_err().contains("ZIP"));
    }
}
