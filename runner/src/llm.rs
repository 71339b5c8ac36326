//! Model clients for the two API shapes (§15.2 step 6): OpenAI chat completions and Anthropic
//! messages, streaming or not, with the shared retry policy for 429 / 5xx / connection errors.

use crate::config::ModelApi;
use crate::sse::{SseEvent, SseParser};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: String,
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Raw JSON text of the arguments, as the model produced it.
    pub arguments: String,
}

#[derive(Debug, Clone)]
pub enum Msg {
    User(String),
    Assistant {
        text: String,
        calls: Vec<ToolCall>,
    },
    Tool {
        id: String,
        content: String,
        is_error: bool,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_creation: u64,
    pub cache_read: u64,
}

impl Usage {
    pub fn add(&mut self, o: Usage) {
        self.input += o.input;
        self.output += o.output;
        self.cache_creation += o.cache_creation;
        self.cache_read += o.cache_read;
    }

    pub fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input,
            "output_tokens": self.output,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelResponse {
    pub text: String,
    pub calls: Vec<ToolCall>,
    pub usage: Usage,
}

#[derive(Debug)]
pub enum LlmError {
    Http {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    Connect(String),
}

impl LlmError {
    pub fn retryable(&self) -> bool {
        match self {
            LlmError::Http { status, .. } => *status == 429 || *status >= 500,
            LlmError::Connect(_) => true,
        }
    }

    /// The message the run fails with.
    pub fn message(&self) -> String {
        match self {
            LlmError::Http { status, .. } => format!("LLM request failed: HTTP {status}"),
            LlmError::Connect(e) => format!("LLM request failed: {e}"),
        }
    }

    pub fn detail(&self) -> String {
        match self {
            LlmError::Http { status, body, .. } if body.is_empty() => format!("HTTP {status}"),
            LlmError::Http { status, body, .. } => format!("HTTP {status}: {body}"),
            LlmError::Connect(e) => e.clone(),
        }
    }
}

/// Retries after a failure: up to 3, waiting `Retry-After` (capped at 30 s) or 1, 2, 4 s.
pub const MAX_RETRIES: u32 = 3;
const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);

/// The delay before retry number `retry` (0-based), or `None` when the error is final.
pub fn retry_delay(err: &LlmError, retry: u32) -> Option<Duration> {
    if !err.retryable() || retry >= MAX_RETRIES {
        return None;
    }
    if let LlmError::Http {
        retry_after: Some(d),
        ..
    } = err
    {
        return Some((*d).min(RETRY_AFTER_CAP));
    }
    Some(Duration::from_secs(1 << retry))
}

/// `Retry-After` as delta-seconds (fractions tolerated); HTTP dates fall back to the default backoff.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

pub struct LlmClient {
    pub http: reqwest::Client,
    pub api: ModelApi,
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub stream: bool,
    pub max_tokens: u64,
}

impl LlmClient {
    /// One request/response exchange (no retries).
    pub async fn call(
        &self,
        system: &str,
        msgs: &[Msg],
        tools: &[ToolSpec],
    ) -> Result<ModelResponse, LlmError> {
        let (url, body) = match self.api {
            ModelApi::OpenAiCompletions => (
                format!("{}/chat/completions", self.base_url),
                openai_body(
                    &self.model,
                    self.max_tokens,
                    self.stream,
                    system,
                    msgs,
                    tools,
                ),
            ),
            ModelApi::AnthropicMessages => (
                format!("{}/v1/messages", self.base_url),
                anthropic_body(
                    &self.model,
                    self.max_tokens,
                    self.stream,
                    system,
                    msgs,
                    tools,
                ),
            ),
        };
        let mut req = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .headers(crate::trace::headers());
        req = match self.api {
            ModelApi::OpenAiCompletions => req.bearer_auth(&self.api_key),
            ModelApi::AnthropicMessages => req
                .header("x-api-key", &self.api_key)
                .header("anthropic-version", "2023-06-01"),
        };
        if self.stream {
            req = req.header("accept", "text/event-stream");
        }
        let body = serde_json::to_vec(&body).expect("serialisable");
        let mut resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| LlmError::Connect(crate::sink::error_chain(&e)))?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = resp.bytes().await.unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
            return Err(LlmError::Http {
                status,
                retry_after,
                body,
            });
        }
        let interrupted = |e: reqwest::Error| {
            LlmError::Connect(format!(
                "response interrupted: {}",
                crate::sink::error_chain(&e)
            ))
        };
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            let bytes = resp.bytes().await.map_err(interrupted)?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| LlmError::Http {
                status: 502,
                retry_after: None,
                body: format!("unparseable model response: {e}"),
            })?;
            return Ok(match self.api {
                ModelApi::OpenAiCompletions => parse_openai_response(&v),
                ModelApi::AnthropicMessages => parse_anthropic_response(&v),
            });
        }
        let mut parser = SseParser::new();
        let mut acc = StreamAcc::new(self.api);
        while let Some(chunk) = resp.chunk().await.map_err(interrupted)? {
            for ev in parser.push(&chunk) {
                acc.on_event(&ev)?;
            }
            if acc.done {
                break;
            }
        }
        for ev in parser.finish() {
            acc.on_event(&ev)?;
        }
        Ok(acc.finish())
    }
}

// ---------- request bodies ----------

pub fn openai_body(
    model: &str,
    max_tokens: u64,
    stream: bool,
    system: &str,
    msgs: &[Msg],
    tools: &[ToolSpec],
) -> Value {
    let mut messages = vec![json!({"role": "system", "content": system})];
    for m in msgs {
        messages.push(match m {
            Msg::User(t) => json!({"role": "user", "content": t}),
            Msg::Assistant { text, calls } => {
                let mut o = json!({
                    "role": "assistant",
                    "content": if text.is_empty() { Value::Null } else { json!(text) },
                });
                if !calls.is_empty() {
                    o["tool_calls"] = calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments},
                            })
                        })
                        .collect();
                }
                o
            }
            Msg::Tool { id, content, .. } => {
                json!({"role": "tool", "tool_call_id": id, "content": content})
            }
        });
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                })
            })
            .collect();
    }
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

pub fn anthropic_body(
    model: &str,
    max_tokens: u64,
    stream: bool,
    system: &str,
    msgs: &[Msg],
    tools: &[ToolSpec],
) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    for m in msgs {
        match m {
            Msg::User(t) => messages.push(json!({"role": "user", "content": t})),
            Msg::Assistant { text, calls } => {
                let mut content = Vec::new();
                if !text.is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
                for c in calls {
                    let input = serde_json::from_str::<Value>(&c.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    content.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
                if content.is_empty() {
                    content.push(json!({"type": "text", "text": "(no content)"}));
                }
                messages.push(json!({"role": "assistant", "content": content}));
            }
            Msg::Tool {
                id,
                content,
                is_error,
            } => {
                let block = json!({"type": "tool_result", "tool_use_id": id, "content": content, "is_error": is_error});
                // Consecutive tool results share one user turn.
                let merged = messages.last_mut().and_then(|last| {
                    let is_results = last["role"] == "user"
                        && last["content"]
                            .as_array()
                            .is_some_and(|a| a.iter().all(|b| b["type"] == "tool_result"));
                    is_results.then(|| last["content"].as_array_mut().unwrap())
                });
                match merged {
                    Some(arr) => arr.push(block),
                    None => messages.push(json!({"role": "user", "content": [block]})),
                }
            }
        }
    }
    let mut body = json!({
        "model": model,
        "system": system,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if !tools.is_empty() {
        body["tools"] = tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect();
    }
    body
}

// ---------- responses ----------

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return 0,
        }
    }
    cur.as_u64().unwrap_or(0)
}

fn openai_usage(v: &Value) -> Usage {
    let prompt = u(v, &["prompt_tokens"]);
    let cached = u(v, &["prompt_tokens_details", "cached_tokens"]);
    Usage {
        input: prompt.saturating_sub(cached),
        output: u(v, &["completion_tokens"]),
        cache_creation: 0,
        cache_read: cached,
    }
}

fn anthropic_usage(v: &Value) -> Usage {
    Usage {
        input: u(v, &["input_tokens"]),
        output: u(v, &["output_tokens"]),
        cache_creation: u(v, &["cache_creation_input_tokens"]),
        cache_read: u(v, &["cache_read_input_tokens"]),
    }
}

fn args_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub fn parse_openai_response(v: &Value) -> ModelResponse {
    let msg = &v["choices"][0]["message"];
    let calls = msg["tool_calls"]
        .as_array()
        .map(|a| {
            a.iter()
                .enumerate()
                .map(|(i, c)| ToolCall {
                    id: c["id"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("call_{i}")),
                    name: c["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    arguments: args_text(c["function"].get("arguments")),
                })
                .collect()
        })
        .unwrap_or_default();
    ModelResponse {
        text: msg["content"].as_str().unwrap_or_default().to_string(),
        calls,
        usage: openai_usage(&v["usage"]),
    }
}

pub fn parse_anthropic_response(v: &Value) -> ModelResponse {
    let mut r = ModelResponse {
        usage: anthropic_usage(&v["usage"]),
        ..Default::default()
    };
    for block in v["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => r.text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => r.calls.push(ToolCall {
                id: block["id"].as_str().unwrap_or_default().to_string(),
                name: block["name"].as_str().unwrap_or_default().to_string(),
                arguments: block
                    .get("input")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into()),
            }),
            _ => {}
        }
    }
    r
}

/// Accumulates streamed deltas of either API into one response.
pub struct StreamAcc {
    api: ModelApi,
    text: String,
    /// Tool calls by stream index: (id, name, arguments).
    calls: BTreeMap<u64, (String, String, String)>,
    usage: Usage,
    pub done: bool,
}

impl StreamAcc {
    pub fn new(api: ModelApi) -> Self {
        StreamAcc {
            api,
            text: String::new(),
            calls: BTreeMap::new(),
            usage: Usage::default(),
            done: false,
        }
    }

    pub fn on_event(&mut self, ev: &SseEvent) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        if ev.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return Ok(()); // tolerate keep-alives and junk lines
        };
        match self.api {
            ModelApi::OpenAiCompletions => self.openai(&v),
            ModelApi::AnthropicMessages => self.anthropic(ev.event.as_deref(), &v)?,
        }
        Ok(())
    }

    fn openai(&mut self, v: &Value) {
        if v.get("usage").is_some_and(Value::is_object) {
            self.usage = openai_usage(&v["usage"]);
        }
        let delta = &v["choices"][0]["delta"];
        if let Some(t) = delta["content"].as_str() {
            self.text.push_str(t);
        }
        for tc in delta["tool_calls"].as_array().into_iter().flatten() {
            let idx = tc["index"].as_u64().unwrap_or(0);
            let entry = self.calls.entry(idx).or_default();
            if let Some(id) = tc["id"].as_str() {
                entry.0 = id.to_string();
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                entry.1.push_str(n);
            }
            if let Some(a) = tc["function"]["arguments"].as_str() {
                entry.2.push_str(a);
            }
        }
    }

    fn anthropic(&mut self, event: Option<&str>, v: &Value) -> Result<(), LlmError> {
        let kind = v["type"].as_str().or(event).unwrap_or_default();
        match kind {
            "message_start" => self.usage = anthropic_usage(&v["message"]["usage"]),
            "content_block_start" => {
                let b = &v["content_block"];
                let idx = v["index"].as_u64().unwrap_or(0);
                match b["type"].as_str() {
                    Some("tool_use") => {
                        self.calls.insert(
                            idx,
                            (
                                b["id"].as_str().unwrap_or_default().to_string(),
                                b["name"].as_str().unwrap_or_default().to_string(),
                                String::new(),
                            ),
                        );
                    }
                    Some("text") => {
                        self.text.push_str(b["text"].as_str().unwrap_or_default());
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        self.text.push_str(d["text"].as_str().unwrap_or_default())
                    }
                    Some("input_json_delta") => {
                        let idx = v["index"].as_u64().unwrap_or(0);
                        self.calls
                            .entry(idx)
                            .or_default()
                            .2
                            .push_str(d["partial_json"].as_str().unwrap_or_default());
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                let du = &v["usage"];
                if du.get("output_tokens").is_some() {
                    self.usage.output = u(du, &["output_tokens"]);
                }
                if du.get("input_tokens").is_some() {
                    self.usage.input = u(du, &["input_tokens"]);
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                let etype = v["error"]["type"].as_str().unwrap_or_default();
                return Err(LlmError::Http {
                    status: if etype == "overloaded_error" {
                        529
                    } else {
                        500
                    },
                    retry_after: None,
                    body: v["error"]["message"].as_str().unwrap_or(etype).to_string(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    pub fn finish(self) -> ModelResponse {
        let calls = self
            .calls
            .into_iter()
            .map(|(i, (id, name, args))| ToolCall {
                id: if id.is_empty() {
                    format!("call_{i}")
                } else {
                    id
                },
                name,
                arguments: if args.trim().is_empty() {
                    "{}".into()
                } else {
                    args
                },
            })
            .collect();
        ModelResponse {
            text: self.text,
            calls,
            usage: self.usage,
        }
    }
}

/// Parses a tool call's argument text into an object.
pub fn parse_args(raw: &str) -> Result<Map<String, Value>, String> {
    let raw = if raw.trim().is_empty() { "{}" } else { raw };
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("tool arguments must be a JSON object".into()),
        Err(e) => Err(format!("tool arguments are not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(api: ModelApi, raw: &str) -> Result<ModelResponse, LlmError> {
        let mut p = SseParser::new();
        let mut acc = StreamAcc::new(api);
        // Split into 7-byte chunks to exercise reassembly.
        for chunk in raw.as_bytes().chunks(7) {
            for ev in p.push(chunk) {
                acc.on_event(&ev)?;
            }
        }
        for ev in p.finish() {
            acc.on_event(&ev)?;
        }
        Ok(acc.finish())
    }

    #[test]
    fn openai_stream_with_text_tool_calls_and_usage() {
        let raw = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"output\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"data\\\":\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"function\":{\"name\":\"log\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"x\\\":1}}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
            "data: [DONE]\n\n",
        );
        let r = feed(ModelApi::OpenAiCompletions, raw).unwrap();
        assert_eq!(r.text, "Hello");
        assert_eq!(r.calls.len(), 2);
        assert_eq!(r.calls[0].id, "call_a");
        assert_eq!(r.calls[0].name, "output");
        assert_eq!(parse_args(&r.calls[0].arguments).unwrap()["data"]["x"], 1);
        assert_eq!(r.calls[1].name, "log");
        assert_eq!(
            r.usage,
            Usage {
                input: 10,
                output: 5,
                cache_creation: 0,
                cache_read: 2
            }
        );
    }

    #[test]
    fn anthropic_stream_with_text_tool_use_and_usage() {
        let raw = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1,\"cache_read_input_tokens\":3}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"output\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"data\\\": {\\\"ok\\\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\": true}}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let r = feed(ModelApi::AnthropicMessages, raw).unwrap();
        assert_eq!(r.text, "Hi");
        assert_eq!(r.calls[0].id, "toolu_1");
        assert_eq!(
            parse_args(&r.calls[0].arguments).unwrap()["data"]["ok"],
            true
        );
        assert_eq!(
            r.usage,
            Usage {
                input: 20,
                output: 9,
                cache_creation: 0,
                cache_read: 3
            }
        );
    }

    #[test]
    fn anthropic_stream_error_event_is_retryable() {
        let raw = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n";
        let e = feed(ModelApi::AnthropicMessages, raw).unwrap_err();
        assert!(e.retryable());
        assert_eq!(e.message(), "LLM request failed: HTTP 529");
    }

    #[test]
    fn non_streaming_responses() {
        let o = parse_openai_response(&json!({
            "choices": [{"message": {"content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "log", "arguments": "{\"level\":\"info\",\"message\":\"m\"}"}}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}
        }));
        assert_eq!(o.text, "");
        assert_eq!(o.calls[0].name, "log");
        assert_eq!(o.usage.input + o.usage.output, 10);
        let a = parse_anthropic_response(&json!({
            "content": [{"type": "text", "text": "t"}, {"type": "tool_use", "id": "tu", "name": "output", "input": {"data": 1}}],
            "usage": {"input_tokens": 4, "output_tokens": 2}
        }));
        assert_eq!(a.text, "t");
        assert_eq!(parse_args(&a.calls[0].arguments).unwrap()["data"], 1);
        assert_eq!(a.usage.input, 4);
    }

    #[test]
    fn retry_policy() {
        let http = |status, ra: Option<u64>| LlmError::Http {
            status,
            retry_after: ra.map(Duration::from_secs),
            body: String::new(),
        };
        assert_eq!(
            retry_delay(&http(429, None), 0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_delay(&http(500, None), 1),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_delay(&http(503, None), 2),
            Some(Duration::from_secs(4))
        );
        assert_eq!(retry_delay(&http(503, None), 3), None);
        assert_eq!(
            retry_delay(&http(429, Some(1)), 0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_delay(&http(429, Some(120)), 0),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_delay(&http(400, None), 0), None);
        assert_eq!(retry_delay(&http(401, Some(1)), 0), None);
        assert_eq!(
            retry_delay(&LlmError::Connect("refused".into()), 0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(http(404, None).message(), "LLM request failed: HTTP 404");
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 2.5 "),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn openai_request_body_shape() {
        let tools = vec![ToolSpec {
            name: "output",
            description: "d".into(),
            parameters: json!({"type": "object"}),
        }];
        let msgs = vec![
            Msg::User("Input:\n{}".into()),
            Msg::Assistant {
                text: String::new(),
                calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "output".into(),
                    arguments: "{}".into(),
                }],
            },
            Msg::Tool {
                id: "c1".into(),
                content: "ok".into(),
                is_error: false,
            },
        ];
        let b = openai_body("m", 100, true, "sys", &msgs, &tools);
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "sys"})
        );
        assert_eq!(
            b["messages"][2]["tool_calls"][0]["function"]["name"],
            "output"
        );
        assert_eq!(b["messages"][2]["content"], Value::Null);
        assert_eq!(b["messages"][3]["role"], "tool");
        assert_eq!(b["tools"][0]["type"], "function");
        assert_eq!(b["stream_options"]["include_usage"], true);
        let nb = openai_body("m", 100, false, "sys", &msgs, &tools);
        assert!(nb.get("stream_options").is_none());
        assert_eq!(nb["stream"], false);
    }

    #[test]
    fn anthropic_request_body_merges_tool_results() {
        let msgs = vec![
            Msg::User("hi".into()),
            Msg::Assistant {
                text: "t".into(),
                calls: vec![
                    ToolCall {
                        id: "a".into(),
                        name: "log".into(),
                        arguments: "{\"level\":\"info\"}".into(),
                    },
                    ToolCall {
                        id: "b".into(),
                        name: "log".into(),
                        arguments: "oops".into(),
                    },
                ],
            },
            Msg::Tool {
                id: "a".into(),
                content: "ok".into(),
                is_error: false,
            },
            Msg::Tool {
                id: "b".into(),
                content: "bad".into(),
                is_error: true,
            },
        ];
        let b = anthropic_body("m", 10, false, "sys", &msgs, &[]);
        assert_eq!(b["system"], "sys");
        assert_eq!(b["messages"].as_array().unwrap().len(), 3);
        assert_eq!(b["messages"][1]["content"][1]["input"]["level"], "info");
        assert_eq!(b["messages"][1]["content"][2]["input"], json!({}));
        assert_eq!(b["messages"][2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(b["messages"][2]["content"][1]["is_error"], true);
        assert!(b.get("tools").is_none());
    }
}
