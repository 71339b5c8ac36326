//! The workspace tools offered to the model: `read`, `write`, `edit`, `ls`, `find`, `grep`, and `bash`
//! where commands are isolated. Definitions (JSON Schemas) and dispatch by name, like the platform tools.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::bash::{Bash, DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS};
use super::files::{self, GrepArgs};
use super::Workspace;
use crate::llm::ToolSpec;
use crate::tools::ToolOutcome;

/// The workspace tools of one run.
pub struct WorkspaceTools {
    pub ws: Workspace,
    /// `None` where commands are not isolated or no `bash` exists.
    pub bash: Option<Bash>,
}

const NAMES: [&str; 7] = ["read", "write", "edit", "ls", "find", "grep", "bash"];

/// Whether `name` is a workspace tool (their results are summarised in the run log).
pub fn is_workspace_tool(name: &str) -> bool {
    NAMES.contains(&name)
}

impl WorkspaceTools {
    pub fn specs(&self) -> Vec<ToolSpec> {
        let root = self.ws.shown().display().to_string();
        let path = |what: &str| json!({"type": "string", "description": format!("{what}, relative to the workspace {root}")});
        let mut specs = vec![
            ToolSpec {
                name: "read",
                description: format!(
                    "Read a text file of your workspace ({root}), with line numbers. Large files come in \
                     pages of at most {} lines / 64 KiB: pass `offset` (first line, from 1) and `limit` \
                     to read a range.",
                    files::READ_DEFAULT_LINES
                ),
                parameters: json!({"type": "object", "properties": {
                    "path": path("File path"),
                    "offset": {"type": "integer", "minimum": 1, "description": "First line to show (1-based)"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": files::READ_DEFAULT_LINES, "description": "Number of lines"},
                }, "required": ["path"], "additionalProperties": false}),
            },
            ToolSpec {
                name: "write",
                description: format!(
                    "Create or overwrite a file in your workspace ({root}) with `content`; missing \
                     directories are created. At most {} MiB.",
                    files::WRITE_MAX_BYTES / 1024 / 1024
                ),
                parameters: json!({"type": "object", "properties": {
                    "path": path("File path"),
                    "content": {"type": "string"},
                }, "required": ["path", "content"], "additionalProperties": false}),
            },
            ToolSpec {
                name: "edit",
                description: "Replace text in a file: `old_text` must match the file exactly (whitespace \
                              included) and only once, unless `replace_all` is true. Read the file first."
                    .into(),
                parameters: json!({"type": "object", "properties": {
                    "path": path("File path"),
                    "old_text": {"type": "string", "description": "Exact text to replace"},
                    "new_text": {"type": "string", "description": "Replacement text"},
                    "replace_all": {"type": "boolean", "default": false},
                }, "required": ["path", "old_text", "new_text"], "additionalProperties": false}),
            },
            ToolSpec {
                name: "ls",
                description: format!("List a directory of your workspace ({root}): directories end with `/`, files show their size."),
                parameters: json!({"type": "object", "properties": {
                    "path": path("Directory (default: the workspace)"),
                }, "additionalProperties": false}),
            },
            ToolSpec {
                name: "find",
                description: format!(
                    "Find paths by glob under a directory of your workspace: `*` matches within a path \
                     segment, `**` across segments (`src/**/*.rs`); a pattern without `/` matches file names \
                     at any depth (`*.md`). `.git` directories are skipped. At most {} results.",
                    files::FIND_MAX_RESULTS
                ),
                parameters: json!({"type": "object", "properties": {
                    "pattern": {"type": "string", "description": "Glob, e.g. **/*.py"},
                    "path": path("Directory to search (default: the workspace)"),
                }, "required": ["pattern"], "additionalProperties": false}),
            },
            ToolSpec {
                name: "grep",
                description: format!(
                    "Search file contents with a regular expression (Rust regex syntax); answers \
                     `path:line: text`. Binary files, files over 10 MiB and `.git` are skipped. At most \
                     `max_results` matches (default {}, at most {}).",
                    files::GREP_DEFAULT_RESULTS,
                    files::GREP_MAX_RESULTS
                ),
                parameters: json!({"type": "object", "properties": {
                    "pattern": {"type": "string", "description": "Regular expression"},
                    "path": path("File or directory to search (default: the workspace)"),
                    "glob": {"type": "string", "description": "Only files matching this glob, e.g. *.rs"},
                    "ignore_case": {"type": "boolean", "default": false},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": files::GREP_MAX_RESULTS},
                }, "required": ["pattern"], "additionalProperties": false}),
            },
        ];
        if self.bash.is_some() {
            specs.push(ToolSpec {
                name: "bash",
                description: format!(
                    "Run a shell command with bash in your workspace ({root}); answers the exit code and \
                     stdout/stderr (the first 8 KiB and last 24 KiB of each). Timeout {DEFAULT_TIMEOUT_SECONDS} s \
                     unless `timeout_seconds` (at most {MAX_TIMEOUT_SECONDS}); background processes are \
                     stopped when the command ends. Network access goes through the platform's proxy and \
                     only reaches the hosts of your integrations."
                ),
                parameters: json!({"type": "object", "properties": {
                    "command": {"type": "string"},
                    "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_SECONDS},
                }, "required": ["command"], "additionalProperties": false}),
            });
        }
        specs
    }

    /// Handles a workspace tool call; `None` when `name` is not one of them.
    pub async fn call(&self, name: &str, args: &Map<String, Value>) -> Option<ToolOutcome> {
        if !NAMES.contains(&name) || (name == "bash" && self.bash.is_none()) {
            return None;
        }
        let s = |k: &str| args.get(k).and_then(Value::as_str);
        let n = |k: &str| args.get(k).and_then(Value::as_u64).map(|v| v as usize);
        let b = |k: &str| args.get(k).and_then(Value::as_bool).unwrap_or(false);
        let required =
            |k: &str| s(k).ok_or_else(|| format!("`{k}` is required (a string) for `{name}`"));
        if name == "bash" {
            return Some(self.bash(args).await);
        }
        let ws = self.ws.clone();
        let result: Result<String, String> = match name {
            "read" => required("path").and_then(|p| files::read(&ws, p, n("offset"), n("limit"))),
            "write" => required("path").and_then(|p| files::write(&ws, p, required("content")?)),
            "edit" => (|| {
                files::edit(
                    &ws,
                    required("path")?,
                    required("old_text")?,
                    required("new_text")?,
                    b("replace_all"),
                )
            })(),
            "ls" => files::ls(&ws, s("path").unwrap_or(".")),
            // Walks can be long: off the runtime's only thread, so heartbeats keep going.
            "find" => match required("pattern") {
                Ok(pattern) => {
                    let (pattern, path) =
                        (pattern.to_string(), s("path").unwrap_or(".").to_string());
                    tokio::task::spawn_blocking(move || files::find(&ws, &pattern, &path))
                        .await
                        .unwrap_or_else(|e| Err(format!("find failed: {e}")))
                }
                Err(e) => Err(e),
            },
            "grep" => match required("pattern") {
                Ok(pattern) => {
                    let pattern = pattern.to_string();
                    let path = s("path").unwrap_or(".").to_string();
                    let glob = s("glob").map(str::to_string);
                    let (ignore_case, max_results) = (
                        b("ignore_case"),
                        n("max_results").unwrap_or(files::GREP_DEFAULT_RESULTS),
                    );
                    tokio::task::spawn_blocking(move || {
                        files::grep(
                            &ws,
                            &GrepArgs {
                                pattern: &pattern,
                                path: &path,
                                glob: glob.as_deref(),
                                ignore_case,
                                max_results,
                            },
                        )
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("grep failed: {e}")))
                }
                Err(e) => Err(e),
            },
            _ => return None,
        };
        Some(match result {
            Ok(content) => ToolOutcome {
                content,
                is_error: false,
                output: None,
                event: None,
            },
            Err(e) => ToolOutcome::err(e),
        })
    }

    async fn bash(&self, args: &Map<String, Value>) -> ToolOutcome {
        let bash = self.bash.as_ref().expect("offered only with bash");
        let Some(command) = args.get("command").and_then(Value::as_str) else {
            return ToolOutcome::err("`command` is required (a string) for `bash`");
        };
        let secs = match args.get("timeout_seconds") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT_SECONDS,
            Some(v) => match v.as_u64() {
                Some(s @ 1..=MAX_TIMEOUT_SECONDS) => s,
                _ => {
                    return ToolOutcome::err(format!(
                        "`timeout_seconds` must be an integer from 1 to {MAX_TIMEOUT_SECONDS}"
                    ))
                }
            },
        };
        let timeout = Duration::from_secs(secs);
        match bash.run(command, timeout).await {
            Ok(r) => ToolOutcome {
                content: r.render(timeout),
                is_error: r.timed_out || r.exit_code != Some(0),
                output: None,
                event: None,
            },
            Err(e) => ToolOutcome::err(e),
        }
    }
}
