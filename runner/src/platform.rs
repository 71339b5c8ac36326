//! The run's other platform calls (besides events): its context (memory and input files), the memory
//! tools `remember`, `recall_memory`, `pin` and `set_checkpoint`, and `publish_document`. Requests are
//! signed with the sink secret like events, under the run's base URL (the sink URL without `/events`).

use std::cell::RefCell;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use crate::llm::ToolSpec;
use crate::sink::{error_chain, sign};
use crate::tools::ToolOutcome;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// The signed client of the run's platform routes.
pub struct Platform {
    http: reqwest::Client,
    secret: String,
    /// `<origin>/api/runs/<id>`.
    base: String,
    /// `scheme://host[:port]` of the platform, for the signed URLs it hands out as paths.
    origin: String,
}

/// What the platform answered.
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The problem's `detail` (or the body) for an error message.
    pub fn detail(&self) -> String {
        self.body
            .get("detail")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {}: {}", self.status, self.body))
    }
}

impl Platform {
    /// From the sink URL `<origin>/api/runs/<id>/events`; `None` when it has another shape.
    pub fn new(http: reqwest::Client, secret: &str, sink_url: &str) -> Option<Platform> {
        let base = sink_url
            .trim_end_matches('/')
            .strip_suffix("/events")?
            .to_string();
        let url = reqwest::Url::parse(&base).ok()?;
        let origin = url.origin().ascii_serialization();
        Some(Platform {
            http,
            secret: secret.to_string(),
            base,
            origin,
        })
    }

    fn signed(&self, req: reqwest::RequestBuilder, body: &[u8]) -> reqwest::RequestBuilder {
        let id = uuid::Uuid::new_v4().to_string();
        let ts = chrono::Utc::now().timestamp();
        req.header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(&self.secret, &id, ts, body))
            .headers(crate::trace::headers())
    }

    async fn answer(res: reqwest::Response) -> Answer {
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        Answer { status, body }
    }

    /// Signed GET of `<base><path>`.
    pub async fn get(&self, path: &str) -> Result<Answer, String> {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(CALL_TIMEOUT);
        let res = self
            .signed(req, b"")
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(Self::answer(res).await)
    }

    /// Signed POST of a JSON body to `<base><path>`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Answer, String> {
        let bytes = serde_json::to_vec(body).expect("serialisable");
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .timeout(CALL_TIMEOUT);
        let res = self
            .signed(req, &bytes)
            .body(bytes)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(Self::answer(res).await)
    }

    /// Streams `<base><path>` into `dest` (signed GET); returns the bytes written.
    pub async fn download(&self, path: &str, dest: &Path) -> Result<u64, String> {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(TRANSFER_TIMEOUT);
        let mut res = self
            .signed(req, b"")
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status().as_u16()));
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| format!("creating {}: {e}", dest.display()))?;
        let mut n = 0u64;
        while let Some(chunk) = res.chunk().await.map_err(|e| error_chain(&e))? {
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("writing {}: {e}", dest.display()))?;
            n += chunk.len() as u64;
        }
        file.flush().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// PUT `body` to a signed path the platform handed out (`/api/…?…`).
    pub async fn put(&self, path_and_query: &str, body: reqwest::Body) -> Result<Answer, String> {
        let res = self
            .http
            .put(format!("{}{path_and_query}", self.origin))
            .header("content-type", "application/octet-stream")
            .headers(crate::trace::headers())
            .body(body)
            .timeout(TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(Self::answer(res).await)
    }
}

/// A path inside the workspace: relative, without `..`.
pub fn workspace_path(workspace: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.is_absolute() {
        return None;
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    Some(workspace.join(p))
}

/// The platform tools of one run.
pub struct PlatformTools {
    pub platform: Platform,
    /// Whether the agent has persistent memory (package runs).
    pub persistence: bool,
    pub max_checkpoint_bytes: usize,
    pub workspace: PathBuf,
    /// The checkpoint set during the run, sent at finalize.
    pub checkpoint: RefCell<Option<Value>>,
}

impl PlatformTools {
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = Vec::new();
        if self.persistence {
            specs.push(ToolSpec {
                name: "remember",
                description: "Keep a short fact for your next runs (they see the most recent ones in their \
                              prompt and can search all of them with recall_memory)."
                    .into(),
                parameters: json!({"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}),
            });
            specs.push(ToolSpec {
                name: "recall_memory",
                description: "Search the facts kept by your previous runs, by words; best matches first."
                    .into(),
                parameters: json!({"type": "object", "properties": {
                    "query": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20}}, "required": ["query"]}),
            });
            specs.push(ToolSpec {
                name: "pin",
                description:
                    "Set a named value that your next runs see in their prompt (overwrites the \
                              slot; a null value removes it)."
                        .into(),
                parameters: json!({"type": "object", "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                    "value": {}}, "required": ["name", "value"]}),
            });
            specs.push(ToolSpec {
                name: "set_checkpoint",
                description: "Set the state your next run starts from (one JSON value, saved when this \
                              run ends; the last call wins)."
                    .into(),
                parameters: json!({"type": "object", "properties": {"data": {}}, "required": ["data"]}),
            });
        }
        specs.push(ToolSpec {
            name: "publish_document",
            description: "Publish a file as a document of this run: either `content` (text) or `path` (a \
                          file in your workspace), with a file name and a media type."
                .into(),
            parameters: json!({"type": "object", "properties": {
                "name": {"type": "string"},
                "mediaType": {"type": "string", "description": "e.g. text/markdown (default application/octet-stream)"},
                "content": {"type": "string"},
                "path": {"type": "string", "description": "Relative to the workspace"}}, "required": ["name"]}),
        });
        specs
    }

    /// Handles a platform tool call; `None` when `name` is not one.
    pub async fn call(&self, name: &str, args: &Map<String, Value>) -> Option<ToolOutcome> {
        let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default();
        let memory = matches!(
            name,
            "remember" | "recall_memory" | "pin" | "set_checkpoint"
        );
        if memory && !self.persistence {
            return None;
        }
        Some(match name {
            "remember" => {
                let r = self
                    .platform
                    .post("/memories", &json!({"content": s("content")}))
                    .await;
                match r {
                    Ok(a) if a.status == 201 => ok(format!(
                        "Remembered ({}).",
                        a.body["id"].as_str().unwrap_or("")
                    )),
                    Ok(a) => ToolOutcome::err(format!("remember failed: {}", a.detail())),
                    Err(e) => ToolOutcome::err(format!("remember failed: {e}")),
                }
            }
            "recall_memory" => {
                let mut body = json!({"query": s("query")});
                if let Some(l) = args.get("limit") {
                    body["limit"] = l.clone();
                }
                match self.platform.post("/memories/search", &body).await {
                    Ok(a) if a.status == 200 => {
                        let found: Vec<Value> = a.body["data"]
                            .as_array()
                            .map(|d| {
                                d.iter()
                                    .map(|m| json!({"content": m["content"], "createdAt": m["createdAt"]}))
                                    .collect()
                            })
                            .unwrap_or_default();
                        ok(json!({"memories": found}).to_string())
                    }
                    Ok(a) => ToolOutcome::err(format!("recall_memory failed: {}", a.detail())),
                    Err(e) => ToolOutcome::err(format!("recall_memory failed: {e}")),
                }
            }
            "pin" => {
                let body = json!({"name": s("name"), "value": args.get("value").cloned().unwrap_or(Value::Null)});
                match self.platform.post("/pinned", &body).await {
                    Ok(a) if a.status == 200 => ok(format!("Pinned `{}`.", s("name"))),
                    Ok(a) => ToolOutcome::err(format!("pin failed: {}", a.detail())),
                    Err(e) => ToolOutcome::err(format!("pin failed: {e}")),
                }
            }
            "set_checkpoint" => {
                let data = args.get("data").cloned().unwrap_or(Value::Null);
                let size = data.to_string().len();
                if size > self.max_checkpoint_bytes {
                    ToolOutcome::err(format!(
                        "The checkpoint is {size} bytes; at most {} are kept. Keep only what the next run needs.",
                        self.max_checkpoint_bytes
                    ))
                } else {
                    *self.checkpoint.borrow_mut() = Some(data);
                    ok("Checkpoint set; it is saved when the run ends.".into())
                }
            }
            "publish_document" => self.publish(args).await,
            _ => return None,
        })
    }

    async fn publish(&self, args: &Map<String, Value>) -> ToolOutcome {
        let s = |k: &str| args.get(k).and_then(Value::as_str);
        let name = s("name").unwrap_or_default();
        let media_type = s("mediaType").unwrap_or("application/octet-stream");
        let (body, size) = match (s("content"), s("path")) {
            (Some(c), None) => (reqwest::Body::from(c.to_string()), c.len() as u64),
            (None, Some(p)) => {
                let Some(path) = workspace_path(&self.workspace, p) else {
                    return ToolOutcome::err(
                        "`path` must be relative to the workspace, without `..`",
                    );
                };
                let file = match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) => return ToolOutcome::err(format!("cannot open {p}: {e}")),
                };
                let size = match file.metadata().await {
                    Ok(m) if m.is_file() => m.len(),
                    _ => return ToolOutcome::err(format!("{p} is not a file")),
                };
                // Streamed from the file: never read whole into memory.
                (reqwest::Body::from(file), size)
            }
            _ => return ToolOutcome::err("Give exactly one of `content` or `path`"),
        };
        let announce = json!({"name": name, "mediaType": media_type, "size": size});
        let a = match self.platform.post("/documents", &announce).await {
            Ok(a) if a.status == 201 => a,
            Ok(a) => return ToolOutcome::err(format!("publish_document failed: {}", a.detail())),
            Err(e) => return ToolOutcome::err(format!("publish_document failed: {e}")),
        };
        let (Some(id), Some(path)) = (a.body["id"].as_str(), a.body["uploadPath"].as_str()) else {
            return ToolOutcome::err("publish_document failed: the platform gave no upload path");
        };
        match self.platform.put(path, body).await {
            Ok(r) if r.status == 200 => {
                ok(format!("Published document {id} ({name}, {size} bytes)."))
            }
            Ok(r) => ToolOutcome::err(format!("publish_document failed: {}", r.detail())),
            Err(e) => ToolOutcome::err(format!("publish_document failed: {e}")),
        }
    }
}

fn ok(content: String) -> ToolOutcome {
    ToolOutcome {
        content,
        is_error: false,
        output: None,
        event: None,
    }
}

/// The run's input files, downloaded into the workspace; returns a line per file for the model.
pub async fn fetch_files(platform: &Platform, files: &[Value], workspace: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for f in files {
        let (Some(name), Some(path)) = (f["name"].as_str(), f["path"].as_str()) else {
            continue;
        };
        let Some(dest) = workspace_path(workspace, name).filter(|_| !name.contains('/')) else {
            lines.push(format!("- {name}: skipped (not a plain file name)"));
            continue;
        };
        match platform.download(path, &dest).await {
            Ok(n) => lines.push(format!(
                "- {name} ({n} bytes, {})",
                f["mediaType"]
                    .as_str()
                    .unwrap_or("application/octet-stream")
            )),
            Err(e) => {
                eprintln!("[runner] input file {name} not downloaded: {e}");
                lines.push(format!("- {name}: could not be downloaded ({e})"));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_origin_come_from_the_sink_url() {
        let p = Platform::new(
            reqwest::Client::new(),
            "s",
            "http://host.docker.internal:3000/api/runs/run_1/events",
        )
        .unwrap();
        assert_eq!(p.base, "http://host.docker.internal:3000/api/runs/run_1");
        assert_eq!(p.origin, "http://host.docker.internal:3000");
        assert!(Platform::new(reqwest::Client::new(), "s", "http://x/elsewhere").is_none());
    }

    #[test]
    fn workspace_paths_stay_inside() {
        let ws = Path::new("/workspace");
        assert_eq!(
            workspace_path(ws, "out/report.md"),
            Some(PathBuf::from("/workspace/out/report.md"))
        );
        for bad in ["", "/etc/passwd", "../x", "a/../../x"] {
            assert!(workspace_path(ws, bad).is_none(), "{bad}");
        }
    }
}
