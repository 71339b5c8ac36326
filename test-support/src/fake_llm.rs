//! The scripted fake LLM (§15.4). It speaks OpenAI chat completions (`POST /chat/completions`,
//! `/v1/chat/completions`) and Anthropic messages (`POST /v1/messages`), streaming or not, answering
//! each request with the next turn of an ordered script, and records every request.
//!
//! Script JSON (a list of turns, or `{"turns": [...]}`), one turn per model request:
//! ```json
//! [
//!   {"text": "Looking into it", "tool_call": {"name": "log", "args": {"level": "info", "message": "hi"}}},
//!   {"error": {"status": 429, "retry_after": 1}},
//!   {"delay_ms": 200, "tool_calls": [{"name": "output", "args": {"data": {"ok": true}}}],
//!    "usage": {"input": 120, "output": 30}},
//!   {"text": "Done."}
//! ]
//! ```
//! `usage` defaults to 10 input / 5 output tokens. When the script is exhausted every further request
//! gets the text `"(fake LLM script exhausted)"`.
//!
//! Like the real providers it also lists models (`GET /models`, `/v1/models`: OpenAI's shape, or
//! Anthropic's when the request carries `anthropic-version`), and, once [`FakeLlm::require_key`] is set,
//! refuses any request without that key (`Authorization: Bearer` or `x-api-key`) with the provider's 401.

use crate::fake_upstream::RecordedRequest;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

pub const EXHAUSTED_TEXT: &str = "(fake LLM script exhausted)";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCallTurn {
    pub name: String,
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorTurn {
    pub status: u16,
    /// Seconds, sent as `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageTurn {
    pub input: u64,
    pub output: u64,
}

/// One scripted answer. Fields combine: a turn may wait, then answer text and tool calls with usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<ToolCallTurn>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallTurn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorTurn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageTurn>,
}

impl Turn {
    pub fn text(t: impl Into<String>) -> Turn {
        Turn {
            text: Some(t.into()),
            ..Turn::default()
        }
    }

    pub fn tool_call(name: &str, args: Value) -> Turn {
        Turn {
            tool_call: Some(ToolCallTurn {
                name: name.into(),
                args,
            }),
            ..Turn::default()
        }
    }

    pub fn error(status: u16) -> Turn {
        Turn {
            error: Some(ErrorTurn {
                status,
                retry_after: None,
                message: None,
            }),
            ..Turn::default()
        }
    }

    /// A turn that only waits, then answers empty text (a stalled model, for timeouts).
    pub fn delay(ms: u64) -> Turn {
        Turn {
            delay_ms: Some(ms),
            ..Turn::default()
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Turn {
        if let Some(e) = self.error.as_mut() {
            e.retry_after = Some(secs);
        }
        self
    }

    pub fn with_delay(mut self, ms: u64) -> Turn {
        self.delay_ms = Some(ms);
        self
    }

    pub fn with_text(mut self, t: impl Into<String>) -> Turn {
        self.text = Some(t.into());
        self
    }

    pub fn and_tool_call(mut self, name: &str, args: Value) -> Turn {
        self.tool_calls.push(ToolCallTurn {
            name: name.into(),
            args,
        });
        self
    }

    pub fn with_usage(mut self, input: u64, output: u64) -> Turn {
        self.usage = Some(UsageTurn { input, output });
        self
    }

    fn calls(&self) -> Vec<&ToolCallTurn> {
        self.tool_call
            .iter()
            .chain(self.tool_calls.iter())
            .collect()
    }
}

/// An ordered script of turns.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Script {
    pub turns: Vec<Turn>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScriptFile {
    List(Vec<Turn>),
    Object { turns: Vec<Turn> },
}

impl Script {
    pub fn new(turns: Vec<Turn>) -> Script {
        Script { turns }
    }

    /// Parses either a JSON list of turns or `{"turns": [...]}`.
    pub fn from_json(s: &str) -> Result<Script, serde_json::Error> {
        Ok(match serde_json::from_str::<ScriptFile>(s)? {
            ScriptFile::List(turns) | ScriptFile::Object { turns } => Script { turns },
        })
    }
}

impl From<Vec<Turn>> for Script {
    fn from(turns: Vec<Turn>) -> Script {
        Script { turns }
    }
}

struct LlmState {
    turns: Mutex<VecDeque<Turn>>,
    /// When set, the only key accepted.
    key: Mutex<Option<String>>,
    /// What `GET /models` lists.
    models: Mutex<Vec<String>>,
    requests: Mutex<Vec<RecordedRequest>>,
    served: Mutex<usize>,
}

/// The running fake. Dropping it stops the server.
pub struct FakeLlm {
    addr: SocketAddr,
    state: Arc<LlmState>,
    task: JoinHandle<()>,
}

impl FakeLlm {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(script: impl Into<Script>) -> FakeLlm {
        FakeLlm::start_on("127.0.0.1:0", script)
            .await
            .expect("bind loopback")
    }

    /// Starts on a chosen address (the `fake-llm` binary).
    pub async fn start_on(addr: &str, script: impl Into<Script>) -> std::io::Result<FakeLlm> {
        let state = Arc::new(LlmState {
            turns: Mutex::new(script.into().turns.into()),
            key: Mutex::new(None),
            models: Mutex::new(vec!["fake-model".to_string()]),
            requests: Mutex::new(Vec::new()),
            served: Mutex::new(0),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeLlm { addr, state, task })
    }

    /// `http://127.0.0.1:<port>`: use as `MODEL_BASE_URL` (OpenAI appends `/chat/completions`,
    /// Anthropic `/v1/messages`) or as the sidecar's `llm.baseUrl`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts only requests carrying `key` (as `Authorization: Bearer` or `x-api-key`); any other gets
    /// the provider's 401 (`invalid_api_key` / `authentication_error`), consuming no turn.
    pub fn require_key(&self, key: &str) {
        *self.state.key.lock().unwrap() = Some(key.to_string());
    }

    /// The model ids `GET /models` lists (default `["fake-model"]`).
    pub fn set_models(&self, ids: &[&str]) {
        *self.state.models.lock().unwrap() = ids.iter().map(|s| s.to_string()).collect();
    }

    /// Appends turns to the script.
    pub fn push(&self, turn: Turn) {
        self.state.turns.lock().unwrap().push_back(turn);
    }

    /// Turns not yet served.
    pub fn remaining(&self) -> usize {
        self.state.turns.lock().unwrap().len()
    }

    /// Every request received so far (model calls and anything else), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The `Authorization` header of every request (empty string when absent).
    pub fn authorizations(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.header("authorization").unwrap_or_default().to_string())
            .collect()
    }

    /// The `x-api-key` header of every request (Anthropic), empty when absent.
    pub fn api_keys(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.header("x-api-key").unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The system prompt of a recorded model request, for either API shape.
pub fn system_prompt(req: &RecordedRequest) -> Option<String> {
    let body = req.json();
    if let Some(s) = body.get("system") {
        return match s {
            Value::String(s) => Some(s.clone()),
            Value::Array(blocks) => Some(
                blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => None,
        };
    }
    body["messages"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "system")
        .and_then(|m| m["content"].as_str())
        .map(str::to_string)
}

/// Names of the tools offered in a recorded model request, for either API shape.
pub fn offered_tools(req: &RecordedRequest) -> Vec<String> {
    req.json()["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["function"]["name"].as_str().or(t["name"].as_str()))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

async fn handle(State(state): State<Arc<LlmState>>, req: Request) -> Response {
    let rec = RecordedRequest::capture(req).await;
    let path = rec.path.clone();
    let is_post = rec.method == "POST";
    let body = rec.json();
    let anthropic_headers = rec.header("anthropic-version").is_some();
    let key_ok = state
        .key
        .lock()
        .unwrap()
        .as_deref()
        .is_none_or(|expected| presented_key(&rec, expected));
    state.requests.lock().unwrap().push(rec);

    let anthropic = path.ends_with("/v1/messages");
    let openai = path.ends_with("/chat/completions");
    let listing = !is_post && path.ends_with("/models");
    let anthropic_shape = anthropic || (path.ends_with("/v1/models") && anthropic_headers);
    if !key_ok {
        return if anthropic_shape {
            json_response(
                401,
                json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
            )
        } else {
            json_response(
                401,
                json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}}),
            )
        };
    }
    if listing {
        let ids = state.models.lock().unwrap().clone();
        return if anthropic_shape {
            json_response(
                200,
                json!({"data": ids.iter().map(|id| json!({"type": "model", "id": id, "display_name": id})).collect::<Vec<_>>(),
                       "has_more": false}),
            )
        } else {
            json_response(
                200,
                json!({"object": "list", "data": ids.iter().map(|id| json!({"id": id, "object": "model", "owned_by": "fake"})).collect::<Vec<_>>()}),
            )
        };
    }
    if !is_post || !(anthropic || openai) {
        return json_response(
            404,
            json!({"error": {"message": format!("no route {path}")}}),
        );
    }
    let turn = state
        .turns
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Turn::text(EXHAUSTED_TEXT));
    let n = {
        let mut s = state.served.lock().unwrap();
        *s += 1;
        *s
    };
    if let Some(ms) = turn.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(err) = &turn.error {
        let message = err
            .message
            .clone()
            .unwrap_or_else(|| format!("scripted error {}", err.status));
        let mut resp = json_response(
            err.status,
            json!({"type": "error", "error": {"type": "fake_error", "message": message}}),
        );
        if let Some(s) = err.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
        }
        return resp;
    }
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let usage = turn.usage.unwrap_or(UsageTurn {
        input: 10,
        output: 5,
    });
    if anthropic {
        if stream {
            sse_response(anthropic_stream(&turn, &model, usage, n))
        } else {
            json_response(200, anthropic_message(&turn, &model, usage, n))
        }
    } else if stream {
        let include_usage = body["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        sse_response(openai_stream(&turn, &model, usage, n, include_usage))
    } else {
        json_response(200, openai_completion(&turn, &model, usage, n))
    }
}

fn presented_key(r: &RecordedRequest, expected: &str) -> bool {
    r.header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|k| k == expected)
        || r.header("x-api-key").is_some_and(|k| k == expected)
}

fn json_response(status: u16, body: Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn sse_response(frames: Vec<String>) -> Response {
    let stream = futures::stream::iter(frames.into_iter().map(Ok::<_, std::io::Error>));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Splits a string in two at a character boundary so clients must reassemble deltas.
fn halves(s: &str) -> Vec<&str> {
    if s.chars().count() < 2 {
        return vec![s];
    }
    let mid = s.char_indices().nth(s.chars().count() / 2).unwrap().0;
    vec![&s[..mid], &s[mid..]]
}

fn openai_completion(turn: &Turn, model: &str, usage: UsageTurn, n: usize) -> Value {
    let calls = turn.calls();
    let mut message = json!({"role": "assistant", "content": turn.text.clone()});
    if !calls.is_empty() {
        message["tool_calls"] = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({"id": format!("call_{n}_{i}"), "type": "function",
                       "function": {"name": c.name, "arguments": c.args.to_string()}})
            })
            .collect();
    }
    json!({
        "id": format!("chatcmpl-fake-{n}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" }}],
        "usage": {"prompt_tokens": usage.input, "completion_tokens": usage.output,
                  "total_tokens": usage.input + usage.output},
    })
}

fn openai_stream(
    turn: &Turn,
    model: &str,
    usage: UsageTurn,
    n: usize,
    include_usage: bool,
) -> Vec<String> {
    let id = format!("chatcmpl-fake-{n}");
    let chunk = |choices: Value| {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "choices": choices});
        format!("data: {v}\n\n")
    };
    let mut frames = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    )];
    if let Some(t) = &turn.text {
        for part in halves(t) {
            frames.push(chunk(
                json!([{"index": 0, "delta": {"content": part}, "finish_reason": null}]),
            ));
        }
    }
    let calls = turn.calls();
    for (i, c) in calls.iter().enumerate() {
        frames.push(chunk(json!([{"index": 0, "delta": {"tool_calls": [{
            "index": i, "id": format!("call_{n}_{i}"), "type": "function",
            "function": {"name": c.name, "arguments": ""}}]}, "finish_reason": null}])));
        let args = c.args.to_string();
        for part in halves(&args) {
            frames.push(chunk(json!([{"index": 0, "delta": {"tool_calls": [{
                "index": i, "function": {"arguments": part}}]}, "finish_reason": null}])));
        }
    }
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    frames.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
    ));
    if include_usage {
        let v = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                       "choices": [], "usage": {"prompt_tokens": usage.input,
                       "completion_tokens": usage.output, "total_tokens": usage.input + usage.output}});
        frames.push(format!("data: {v}\n\n"));
    }
    frames.push("data: [DONE]\n\n".into());
    frames
}

fn anthropic_message(turn: &Turn, model: &str, usage: UsageTurn, n: usize) -> Value {
    let mut content = Vec::new();
    if let Some(t) = &turn.text {
        content.push(json!({"type": "text", "text": t}));
    }
    let calls = turn.calls();
    for (i, c) in calls.iter().enumerate() {
        content.push(json!({"type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": c.name, "input": c.args}));
    }
    json!({
        "id": format!("msg_fake_{n}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": if calls.is_empty() { "end_turn" } else { "tool_use" },
        "stop_sequence": null,
        "usage": {"input_tokens": usage.input, "output_tokens": usage.output},
    })
}

fn anthropic_stream(turn: &Turn, model: &str, usage: UsageTurn, n: usize) -> Vec<String> {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": format!("msg_fake_{n}"), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": usage.input, "output_tokens": 1}}}),
    )];
    let mut index = 0;
    if let Some(t) = &turn.text {
        frames.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}}),
        ));
        for part in halves(t) {
            frames.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": part}}),
            ));
        }
        frames.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    let calls = turn.calls();
    for (i, c) in calls.iter().enumerate() {
        frames.push(ev("content_block_start", json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": c.name, "input": {}}})));
        let args = c.args.to_string();
        for part in halves(&args) {
            frames.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        frames.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        index += 1;
    }
    frames.push(ev("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": if calls.is_empty() { "end_turn" } else { "tool_use" }, "stop_sequence": null},
        "usage": {"output_tokens": usage.output}})));
    frames.push(ev("message_stop", json!({"type": "message_stop"})));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_forms() {
        let s = Script::from_json(
            r#"[{"text":"hi"},{"tool_call":{"name":"output","args":{"data":1}}},
                {"error":{"status":429,"retry_after":1}},{"delay_ms":5},{"usage":{"input":1,"output":2},"text":"x"}]"#,
        )
        .unwrap();
        assert_eq!(s.turns.len(), 5);
        assert_eq!(s.turns[0], Turn::text("hi"));
        assert_eq!(s.turns[1], Turn::tool_call("output", json!({"data": 1})));
        assert_eq!(s.turns[2], Turn::error(429).retry_after(1));
        assert_eq!(s.turns[3], Turn::delay(5));
        assert_eq!(s.turns[4], Turn::text("x").with_usage(1, 2));
        let o = Script::from_json(r#"{"turns":[{"text":"a"}]}"#).unwrap();
        assert_eq!(o.turns, vec![Turn::text("a")]);
        assert!(Script::from_json(r#"[{"txt":"typo"}]"#).is_err());
        // Round trip.
        let again = Script::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn openai_stream_frames_end_with_done() {
        let t = Turn::text("hello").and_tool_call("log", json!({"message": "m"}));
        let frames = openai_stream(
            &t,
            "m",
            UsageTurn {
                input: 1,
                output: 2,
            },
            1,
            true,
        );
        assert_eq!(frames.last().unwrap(), "data: [DONE]\n\n");
        assert!(frames.iter().any(|f| f.contains("\"usage\"")));
        let a = anthropic_stream(
            &t,
            "m",
            UsageTurn {
                input: 1,
                output: 2,
            },
            1,
        );
        assert!(a.last().unwrap().starts_with("event: message_stop"));
    }
}
