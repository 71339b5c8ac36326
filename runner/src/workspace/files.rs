//! The file operations behind `read`, `write`, `edit`, `ls`, `find` and `grep`: synchronous, bounded,
//! and answering text the model can act on (an `Err` is a tool error result).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::Workspace;

/// `read` shows at most this many lines per call, and this many bytes in all.
pub const READ_DEFAULT_LINES: usize = 2000;
const READ_MAX_BYTES: usize = 64 * 1024;
/// A longer line is cut in `read` and `grep` results.
const LINE_MAX_CHARS: usize = 2000;
const GREP_LINE_MAX_CHARS: usize = 300;
/// `write` content and the files `edit` rewrites.
pub const WRITE_MAX_BYTES: usize = 10 * 1024 * 1024;
/// Files `grep` skips (and `edit` refuses) past this size.
const SEARCH_FILE_MAX_BYTES: u64 = 10 * 1024 * 1024;
const LS_MAX_ENTRIES: usize = 1000;
pub const FIND_MAX_RESULTS: usize = 1000;
pub const GREP_DEFAULT_RESULTS: usize = 100;
pub const GREP_MAX_RESULTS: usize = 1000;
/// Directory entries a `find` or `grep` walk visits at most.
const WALK_MAX_ENTRIES: usize = 200_000;

fn is_binary(head: &[u8]) -> bool {
    head.contains(&0)
}

fn cut(line: &str, max: usize) -> String {
    if line.chars().count() <= max {
        return line.to_string();
    }
    let mut s: String = line.chars().take(max).collect();
    s.push_str(" … [line truncated]");
    s
}

/// `read`: lines `offset..offset+limit` (1-based) with their numbers.
pub fn read(
    ws: &Workspace,
    path: &str,
    offset: Option<usize>,
    limit: Option<usize>,
) -> Result<String, String> {
    let p = ws.resolve(path)?;
    let rel = ws.relative(&p);
    let meta = std::fs::metadata(&p).map_err(|e| format!("cannot read {rel}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("{rel} is a directory; use `ls` to list it"));
    }
    let mut file = std::fs::File::open(&p).map_err(|e| format!("cannot read {rel}: {e}"))?;
    let mut head = vec![0u8; 8192];
    let n = file.read(&mut head).map_err(|e| e.to_string())?;
    if is_binary(&head[..n]) {
        return Err(format!(
            "{rel} is a binary file ({} bytes); `read` shows text only (try `bash` with `xxd` or `file`)",
            meta.len()
        ));
    }
    let file = std::fs::File::open(&p).map_err(|e| e.to_string())?;
    let start = offset.unwrap_or(1).max(1);
    let limit = limit
        .unwrap_or(READ_DEFAULT_LINES)
        .clamp(1, READ_DEFAULT_LINES);
    let mut out = String::new();
    let mut total = 0usize;
    let mut last_shown = 0usize;
    let mut cut_by_bytes = false;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| format!("reading {rel}: {e}"))?;
        total += 1;
        if total < start || total >= start + limit || cut_by_bytes {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let shown = format!("{total:>6}\t{}\n", cut(text, LINE_MAX_CHARS));
        if out.len() + shown.len() > READ_MAX_BYTES {
            cut_by_bytes = true;
            continue;
        }
        out.push_str(&shown);
        last_shown = total;
    }
    if total == 0 {
        return Ok(format!("{rel} is empty."));
    }
    if start > total {
        return Err(format!(
            "{rel} has {total} lines; offset {start} is past the end"
        ));
    }
    if last_shown < total {
        out.push_str(&format!(
            "[Showing lines {start}-{last_shown} of {total}{}. Call read with offset={} to continue.]\n",
            if cut_by_bytes {
                format!(" (output limited to {} KiB)", READ_MAX_BYTES / 1024)
            } else {
                String::new()
            },
            last_shown + 1
        ));
    } else if start > 1 {
        out.push_str(&format!("[Lines {start}-{total} of {total}.]\n"));
    }
    Ok(out)
}

/// `write`: creates or replaces a file (and its missing parent directories).
pub fn write(ws: &Workspace, path: &str, content: &str) -> Result<String, String> {
    if content.len() > WRITE_MAX_BYTES {
        return Err(format!(
            "content is {} bytes; `write` takes at most {} MiB",
            content.len(),
            WRITE_MAX_BYTES / 1024 / 1024
        ));
    }
    let p = ws.resolve(path)?;
    let rel = ws.relative(&p);
    if p.is_dir() {
        return Err(format!("{rel} is a directory"));
    }
    let existed = p.exists();
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {rel}: {e}"))?;
    }
    std::fs::write(&p, content).map_err(|e| format!("cannot write {rel}: {e}"))?;
    Ok(format!(
        "Wrote {} bytes to {rel} ({}).",
        content.len(),
        if existed { "replaced" } else { "new file" }
    ))
}

/// `edit`: replaces an exact match of `old` with `new`; a missing or ambiguous match is an error.
pub fn edit(
    ws: &Workspace,
    path: &str,
    old: &str,
    new: &str,
    replace_all: bool,
) -> Result<String, String> {
    if old.is_empty() {
        return Err("`old_text` is empty; give the exact text to replace".into());
    }
    let p = ws.resolve(path)?;
    let rel = ws.relative(&p);
    let meta = std::fs::metadata(&p).map_err(|e| format!("cannot edit {rel}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("{rel} is a directory"));
    }
    if meta.len() > SEARCH_FILE_MAX_BYTES {
        return Err(format!(
            "{rel} is {} bytes; `edit` handles files up to {} MiB (use `bash`)",
            meta.len(),
            SEARCH_FILE_MAX_BYTES / 1024 / 1024
        ));
    }
    let bytes = std::fs::read(&p).map_err(|e| format!("cannot edit {rel}: {e}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{rel} is not UTF-8 text; `edit` refuses it"))?;
    let at: Vec<usize> = text.match_indices(old).map(|(i, _)| i).collect();
    let line_of = |i: usize| text[..i].matches('\n').count() + 1;
    match at.len() {
        0 => {
            let hint = if text.contains(old.trim()) && !old.trim().is_empty() {
                " (it matches when leading/trailing whitespace is removed: copy the text exactly)"
            } else {
                ""
            };
            Err(format!(
                "`old_text` was not found in {rel}{hint}. It must match the file exactly, including \
                 whitespace and indentation; `read` the file and copy the text."
            ))
        }
        n if n > 1 && !replace_all => {
            let lines: Vec<String> = at
                .iter()
                .take(10)
                .map(|&i| line_of(i).to_string())
                .collect();
            Err(format!(
                "`old_text` matches {n} times in {rel} (lines {}{}); include more surrounding text so \
                 it matches once, or set replace_all to true.",
                lines.join(", "),
                if n > 10 { ", …" } else { "" }
            ))
        }
        n => {
            let first_line = line_of(at[0]);
            let updated = if replace_all {
                text.replace(old, new)
            } else {
                text.replacen(old, new, 1)
            };
            if updated.len() > WRITE_MAX_BYTES {
                return Err(format!(
                    "the edited file would be {} bytes; at most {} MiB",
                    updated.len(),
                    WRITE_MAX_BYTES / 1024 / 1024
                ));
            }
            std::fs::write(&p, &updated).map_err(|e| format!("cannot write {rel}: {e}"))?;
            Ok(if n == 1 {
                format!("Replaced 1 occurrence in {rel} (line {first_line}).")
            } else {
                format!("Replaced {n} occurrences in {rel} (first at line {first_line}).")
            })
        }
    }
}

/// `ls`: one entry a line, directories with a trailing `/`, links with their target, files with size.
pub fn ls(ws: &Workspace, path: &str) -> Result<String, String> {
    let p = ws.resolve(path)?;
    let rel = ws.relative(&p);
    let meta = std::fs::metadata(&p).map_err(|e| format!("cannot list {rel}: {e}"))?;
    if !meta.is_dir() {
        return Ok(format!("{rel} ({} bytes, a file)", meta.len()));
    }
    let mut entries: Vec<(String, String)> = Vec::new();
    for e in std::fs::read_dir(&p).map_err(|e| format!("cannot list {rel}: {e}"))? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        let lm = e.path().symlink_metadata().map_err(|e| e.to_string())?;
        let line = if lm.file_type().is_symlink() {
            let target = std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{name} -> {target}")
        } else if lm.is_dir() {
            format!("{name}/")
        } else {
            format!("{name}  ({} bytes)", lm.len())
        };
        entries.push((name, line));
    }
    entries.sort();
    let total = entries.len();
    if total == 0 {
        return Ok(format!("{rel} is empty."));
    }
    let mut out: Vec<String> = entries
        .into_iter()
        .take(LS_MAX_ENTRIES)
        .map(|(_, l)| l)
        .collect();
    if total > LS_MAX_ENTRIES {
        out.push(format!(
            "[{LS_MAX_ENTRIES} of {total} entries shown; use `find` to narrow down.]"
        ));
    }
    Ok(out.join("\n"))
}

/// Walks `base` without following links, skipping `.git` directories (unless `base` is one), in a
/// stable order; calls `f` with each entry until it returns false. Returns whether the walk was cut
/// short by [`WALK_MAX_ENTRIES`].
fn walk(base: &Path, mut f: impl FnMut(&walkdir::DirEntry) -> bool) -> bool {
    let mut seen = 0usize;
    let it = walkdir::WalkDir::new(base)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_name() != ".git");
    for e in it.flatten() {
        seen += 1;
        if seen > WALK_MAX_ENTRIES {
            return true;
        }
        if !f(&e) {
            break;
        }
    }
    false
}

/// `find`: paths under `path` matching the glob `pattern` (`*` stays within a path segment, `**` crosses
/// them); a pattern without `/` matches file names at any depth.
pub fn find(ws: &Workspace, pattern: &str, path: &str) -> Result<String, String> {
    if pattern.trim().is_empty() {
        return Err("`pattern` is empty; e.g. `**/*.rs` or `*.md`".into());
    }
    let glob = globset::GlobBuilder::new(pattern.trim_start_matches("./"))
        .literal_separator(true)
        .build()
        .map_err(|e| format!("`pattern` is not a valid glob: {e}"))?
        .compile_matcher();
    let by_name = !pattern.contains('/');
    let base = ws.resolve(path)?;
    if !base.is_dir() {
        return Err(format!("{} is not a directory", ws.relative(&base)));
    }
    let mut found = Vec::new();
    let mut more = false;
    let cut_walk = walk(&base, |e| {
        if e.depth() == 0 {
            return true;
        }
        let rel = e.path().strip_prefix(&base).unwrap_or(e.path());
        let hit = if by_name {
            glob.is_match(e.file_name())
        } else {
            glob.is_match(rel)
        };
        if hit {
            if found.len() == FIND_MAX_RESULTS {
                more = true;
                return false;
            }
            let mut shown = ws.relative(e.path());
            if e.file_type().is_dir() {
                shown.push('/');
            }
            found.push(shown);
        }
        true
    });
    if found.is_empty() {
        return Ok(format!(
            "No path under {} matches `{pattern}`.",
            ws.relative(&base)
        ));
    }
    let mut out = found.join("\n");
    if more {
        out.push_str(&format!(
            "\n[Only the first {FIND_MAX_RESULTS} matches are shown; narrow the pattern or the path.]"
        ));
    }
    if cut_walk {
        out.push_str(&format!(
            "\n[The search stopped after {WALK_MAX_ENTRIES} entries; narrow the path.]"
        ));
    }
    Ok(out)
}

/// Options of a `grep` call.
pub struct GrepArgs<'a> {
    pub pattern: &'a str,
    pub path: &'a str,
    pub glob: Option<&'a str>,
    pub ignore_case: bool,
    pub max_results: usize,
}

/// `grep`: `path:line: text` for each line matching the regex, in files under `path` (or that file).
pub fn grep(ws: &Workspace, a: &GrepArgs) -> Result<String, String> {
    let re = regex::RegexBuilder::new(a.pattern)
        .case_insensitive(a.ignore_case)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("`pattern` is not a valid regular expression: {e}"))?;
    let glob = match a.glob {
        Some(g) if !g.is_empty() => Some(
            globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("`glob` is not a valid glob: {e}"))?
                .compile_matcher(),
        ),
        _ => None,
    };
    let max = a.max_results.clamp(1, GREP_MAX_RESULTS);
    let base = ws.resolve(a.path)?;
    let mut hits = Vec::new();
    let (mut files, mut skipped) = (0usize, 0usize);
    let mut more = false;
    let mut search = |file: &Path| -> bool {
        let Ok(meta) = std::fs::metadata(file) else {
            return true;
        };
        if meta.len() > SEARCH_FILE_MAX_BYTES {
            skipped += 1;
            return true;
        }
        let Ok(bytes) = std::fs::read(file) else {
            return true;
        };
        if is_binary(&bytes[..bytes.len().min(8192)]) {
            skipped += 1;
            return true;
        }
        files += 1;
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.lines().enumerate() {
            if re.is_match(line) {
                if hits.len() == max {
                    more = true;
                    return false;
                }
                hits.push(format!(
                    "{}:{}: {}",
                    ws.relative(file),
                    i + 1,
                    cut(line, GREP_LINE_MAX_CHARS)
                ));
            }
        }
        true
    };
    let mut cut_walk = false;
    if base.is_file() {
        search(&base);
    } else if base.is_dir() {
        cut_walk = walk(&base, |e| {
            if !e.file_type().is_file() {
                return true;
            }
            if let Some(g) = &glob {
                let rel = e.path().strip_prefix(&base).unwrap_or(e.path());
                let name_only = a.glob.is_some_and(|g| !g.contains('/'));
                if !(if name_only {
                    g.is_match(e.file_name())
                } else {
                    g.is_match(rel)
                }) {
                    return true;
                }
            }
            search(e.path())
        });
    } else {
        return Err(format!("{} does not exist", ws.relative(&base)));
    }
    let mut out = if hits.is_empty() {
        format!("No match for `{}` ({files} files searched).", a.pattern)
    } else {
        hits.join("\n")
    };
    if more {
        out.push_str(&format!(
            "\n[Stopped at {max} matches; narrow the pattern, the path or `glob`, or raise max_results (at most {GREP_MAX_RESULTS}).]"
        ));
    }
    if skipped > 0 {
        out.push_str(&format!(
            "\n[{skipped} binary or larger-than-{} MiB files were skipped.]",
            SEARCH_FILE_MAX_BYTES / 1024 / 1024
        ));
    }
    if cut_walk {
        out.push_str(&format!(
            "\n[The search stopped after {WALK_MAX_ENTRIES} entries; narrow the path.]"
        ));
    }
    Ok(out)
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
    fn read_ranges_number_lines_and_say_what_is_left() {
        let (_d, w) = ws();
        let body: String = (1..=10).map(|i| format!("line {i}\n")).collect();
        write(&w, "a.txt", &body).unwrap();
        let r = read(&w, "a.txt", Some(3), Some(2)).unwrap();
        assert_eq!(
            r,
            "     3\tline 3\n     4\tline 4\n[Showing lines 3-4 of 10. Call read with offset=5 to continue.]\n"
        );
        let r = read(&w, "a.txt", None, None).unwrap();
        assert!(
            r.starts_with("     1\tline 1\n") && r.ends_with("    10\tline 10\n"),
            "{r}"
        );
        assert!(read(&w, "a.txt", Some(11), None)
            .unwrap_err()
            .contains("past the end"));
        std::fs::write(w.root().join("bin"), [0u8, 1, 2]).unwrap();
        assert!(read(&w, "bin", None, None).unwrap_err().contains("binary"));
        assert!(read(&w, ".", None, None).unwrap_err().contains("directory"));
        // A long file is cut by bytes, and says where to continue.
        let long: String = (1..=2000)
            .map(|i| format!("{i} {}\n", "x".repeat(100)))
            .collect();
        write(&w, "long.txt", &long).unwrap();
        let r = read(&w, "long.txt", None, None).unwrap();
        assert!(r.len() <= READ_MAX_BYTES + 200, "{}", r.len());
        assert!(
            r.contains("output limited to 64 KiB"),
            "{}",
            &r[r.len() - 200..]
        );
    }

    #[test]
    fn edit_needs_exactly_one_match_unless_replace_all() {
        let (_d, w) = ws();
        write(&w, "f.py", "a = 1\nb = 1\nc = 2\n").unwrap();
        let e = edit(&w, "f.py", "= 1", "= 3", false).unwrap_err();
        assert!(
            e.contains("matches 2 times") && e.contains("lines 1, 2"),
            "{e}"
        );
        let e = edit(&w, "f.py", "d = 4", "x", false).unwrap_err();
        assert!(e.contains("was not found"), "{e}");
        let e = edit(&w, "f.py", "  c = 2", "x", false).unwrap_err();
        assert!(e.contains("whitespace"), "{e}");
        assert_eq!(
            edit(&w, "f.py", "c = 2", "c = 5", false).unwrap(),
            "Replaced 1 occurrence in f.py (line 3)."
        );
        assert!(edit(&w, "f.py", "= 1", "= 0", true)
            .unwrap()
            .contains("2 occurrences"));
        assert_eq!(
            std::fs::read_to_string(w.root().join("f.py")).unwrap(),
            "a = 0\nb = 0\nc = 5\n"
        );
    }

    #[test]
    fn find_and_grep() {
        let (_d, w) = ws();
        write(&w, "src/main.rs", "fn main() {\n    todo!()\n}\n").unwrap();
        write(&w, "src/lib/util.rs", "// TODO: tidy\npub fn x() {}\n").unwrap();
        write(&w, "README.md", "# Title\ntodo list\n").unwrap();
        write(&w, ".git/config", "todo in git\n").unwrap();
        assert_eq!(
            find(&w, "*.rs", ".").unwrap(),
            "src/lib/util.rs\nsrc/main.rs"
        );
        assert_eq!(find(&w, "src/*.rs", ".").unwrap(), "src/main.rs");
        assert_eq!(
            find(&w, "**/*.rs", "src").unwrap(),
            "src/lib/util.rs\nsrc/main.rs"
        );
        assert!(find(&w, "*.go", ".").unwrap().starts_with("No path"));
        assert!(find(&w, "[", ".").unwrap_err().contains("not a valid glob"));
        let args = |pattern, glob, ignore_case| GrepArgs {
            pattern,
            path: ".",
            glob,
            ignore_case,
            max_results: 100,
        };
        assert_eq!(
            grep(&w, &args("todo", None, false)).unwrap(),
            "README.md:2: todo list\nsrc/main.rs:2:     todo!()"
        );
        assert_eq!(
            grep(&w, &args("todo", Some("*.rs"), true)).unwrap(),
            "src/lib/util.rs:1: // TODO: tidy\nsrc/main.rs:2:     todo!()"
        );
        let mut limited = args("todo", None, true);
        limited.max_results = 1;
        assert!(grep(&w, &limited)
            .unwrap()
            .contains("[Stopped at 1 matches"));
        assert!(grep(&w, &args("(", None, false))
            .unwrap_err()
            .contains("regular expression"));
    }

    #[test]
    fn ls_shows_kinds_and_links() {
        let (_d, w) = ws();
        write(&w, "d/x", "12345").unwrap();
        std::os::unix::fs::symlink("/etc", w.root().join("out")).unwrap();
        assert_eq!(ls(&w, ".").unwrap(), "d/\nout -> /etc");
        assert_eq!(ls(&w, "d").unwrap(), "x  (5 bytes)");
        // Listing through the link is refused: it resolves outside.
        assert!(ls(&w, "out").is_err());
    }
}
