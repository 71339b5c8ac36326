//! One run, start to finish (§15.2): start event and heartbeats, bundle, prompt, the LLM tool loop,
//! metrics, the corrective turn, and exactly one finalize.

use crate::bundle::{self, Bundle};
use crate::config::Config;
use crate::llm::{retry_delay, LlmClient, LlmError, ModelResponse, Msg, ToolSpec, Usage};
use crate::mustache;
use crate::platform::{Platform, PlatformTools};
use crate::redact::Redactor;
use crate::sink::{BundleFetchError, Delivery, Sink};
use crate::tools::Tools;
use crate::workspace::{tools::WorkspaceTools, Workspace};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Finalize `text` is capped by the sink at 64 KiB.
const TEXT_LIMIT: usize = 64 * 1024;

pub const PREAMBLE: &str = "You are an autonomous agent running on Appstrate. Complete the task \
described below using only the tools you are given. Nobody will answer questions during the run: make \
reasonable assumptions and state them. Be concise.";

const CORRECTIVE: &str =
    "You finished without calling the `output` tool. Call `output` now, exactly \
once, with your final result under `data`, matching the output schema.";

/// The run's verdict as the runner sees it.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Success,
    Failed { message: String, code: &'static str },
    Timeout,
}

/// The event sink answered 410: the run was finalized elsewhere (e.g. cancelled); stop quietly.
#[derive(Debug)]
pub struct SinkClosed;

/// What the run accumulated; survives a timeout that drops the loop mid-flight.
#[derive(Default)]
pub struct RunState {
    pub usage: Usage,
    pub output: Option<Value>,
    pub text: String,
    /// Set by `set_checkpoint`; sent at finalize for the next run to start from.
    pub checkpoint: Option<Value>,
}

/// Runs the agent and returns the process exit code (0 or 1; 2 and 143 are decided in `main`).
pub async fn run(cfg: Config, http: reqwest::Client) -> i32 {
    let started = Instant::now();
    let sink = Sink::new(http.clone(), &cfg);
    let mut state = RunState::default();

    let work = async {
        match tokio::time::timeout(cfg.timeout, execute(&cfg, &sink, &http, &mut state)).await {
            Ok(r) => r,
            Err(_) => Ok(Verdict::Timeout),
        }
    };
    let outcome = tokio::select! {
        r = work => r,
        _ = heartbeats(&sink, cfg.heartbeat_interval) => unreachable!("heartbeats never end"),
    };
    let verdict = match outcome {
        Ok(v) => v,
        Err(SinkClosed) => {
            eprintln!("[runner] the event sink is closed (410); exiting without finalizing");
            return 0;
        }
    };
    let body = finalize_body(&verdict, &state, cfg.timeout_seconds, started.elapsed());
    match sink.finalize(&body).await {
        Delivery::Accepted(_) => 0,
        Delivery::Closed => 0,
        Delivery::Failed(e) => {
            eprintln!("[runner] finalize could not be delivered: {e}");
            1
        }
    }
}

async fn heartbeats(sink: &Sink, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if sink.heartbeat().await == Delivery::Closed {
            break;
        }
    }
    std::future::pending::<()>().await
}

async fn emit(sink: &Sink, event_type: &str, data: Value) -> Result<(), SinkClosed> {
    match sink.emit(event_type, data).await {
        Delivery::Closed => Err(SinkClosed),
        _ => Ok(()),
    }
}

async fn progress(sink: &Sink, message: &str, data: Option<Value>) -> Result<(), SinkClosed> {
    match sink.progress(message, data).await {
        Delivery::Closed => Err(SinkClosed),
        _ => Ok(()),
    }
}

fn failed(message: impl Into<String>, code: &'static str) -> Verdict {
    Verdict::Failed {
        message: message.into(),
        code,
    }
}

async fn execute(
    cfg: &Config,
    sink: &Sink,
    http: &reqwest::Client,
    state: &mut RunState,
) -> Result<Verdict, SinkClosed> {
    progress(sink, "runtime starting", None).await?;

    let bytes = match sink.fetch_bundle(&cfg.workspace_url).await {
        Ok(b) => b,
        Err(BundleFetchError::Closed) => return Err(SinkClosed),
        Err(BundleFetchError::Failed(e)) => {
            return Ok(failed(
                format!("Failed to load the run bundle: {e}"),
                "bundle_unavailable",
            ))
        }
    };
    let bundle = match bundle::read(&bytes) {
        Ok(b) => b,
        Err(e) => return Ok(failed(format!("Invalid run bundle: {e}"), "invalid_bundle")),
    };
    // The workspace, with the bundle files the agent declares.
    let workspace = match Workspace::open(&cfg.workspace_dir) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("[runner] no workspace, so no file tools: {e}");
            None
        }
    };
    let mut bundle_files = Vec::new();
    if let Some(ws) = &workspace {
        match bundle::extract_files(&bytes, &bundle.workspace_files(), ws) {
            Ok(f) => bundle_files = f,
            Err(e) => return Ok(failed(format!("Invalid run bundle: {e}"), "invalid_bundle")),
        }
    }
    drop(bytes);
    progress(
        sink,
        "bundle loaded",
        Some(json!({
            "skills": bundle.skills.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            "files": bundle_files.len(),
        })),
    )
    .await?;

    let mut tools = match Tools::new(
        bundle.output_schema().cloned(),
        cfg.integrations.clone(),
        cfg.sidecar_url.clone(),
        cfg.model_api_key.clone(),
        http.clone(),
    ) {
        Ok(t) => t,
        Err(e) => return Ok(failed(e, "invalid_output_schema")),
    };
    // The run's memory and input files. A platform without these routes (an older one, or a test sink)
    // answers 404: the run then has neither, and no memory or document tools.
    let platform = Platform::new(http.clone(), &cfg.sink_secret, &cfg.sink_url);
    let mut context = None;
    if let Some(p) = &platform {
        match p.get("/context").await {
            Ok(a) if a.status == 200 => context = Some(a.body),
            Ok(a) if a.status == 410 => return Err(SinkClosed),
            Ok(_) => {}
            Err(e) => eprintln!("[runner] run context unavailable: {e}"),
        }
    }
    let mut file_lines = Vec::new();
    if let (Some(p), Some(ctx)) = (platform, &context) {
        let workspace = std::path::PathBuf::from(&cfg.workspace_dir);
        if let Some(files) = ctx["files"].as_array().filter(|f| !f.is_empty()) {
            file_lines = crate::platform::fetch_files(&p, files, &workspace).await;
            progress(
                sink,
                "input files ready",
                Some(json!({"files": file_lines.len()})),
            )
            .await?;
        }
        tools = tools.with_platform(PlatformTools {
            platform: p,
            persistence: ctx["persistence"].as_bool().unwrap_or(false),
            max_checkpoint_bytes: ctx["limits"]["maxCheckpointBytes"]
                .as_u64()
                .unwrap_or(16_384) as usize,
            workspace,
            checkpoint: Default::default(),
        });
    }
    // The run's MCP servers, in the sidecar: their tools are listed before the first model call.
    if !cfg.mcp_servers.is_empty() {
        match crate::mcp::McpTools::connect(&cfg.mcp_servers, &cfg.sidecar_url, &cfg.model_api_key)
            .await
        {
            Ok((mcp, summary)) => {
                progress(sink, "mcp servers ready", Some(summary)).await?;
                tools = tools.with_mcp(mcp);
            }
            Err(e) => return Ok(failed(e, "mcp_unavailable")),
        }
    }
    let mut system = system_prompt(&bundle, cfg, context.as_ref());
    if let Some(ws) = workspace {
        let bash = crate::workspace::bash::for_run(cfg, &ws);
        system.push_str(&crate::workspace::prompt_section(
            &ws,
            &bundle_files,
            bash.is_some(),
        ));
        tools = tools.with_workspace(WorkspaceTools { ws, bash });
    }
    let redactor = Redactor::new([cfg.sink_secret.as_str(), cfg.model_api_key.as_str()]);
    let llm = LlmClient {
        http: http.clone(),
        api: cfg.model_api,
        base_url: cfg.model_base_url.clone(),
        api_key: cfg.model_api_key.clone(),
        model: cfg.model_id.clone(),
        stream: cfg.model_stream,
        max_tokens: cfg.model_max_tokens,
    };
    let input = serde_json::to_string_pretty(&Value::Object(cfg.input.clone())).unwrap_or_default();
    let mut first = format!("Input:\n{input}");
    if !file_lines.is_empty() {
        first.push_str(&format!(
            "\n\nInput files, in your workspace ({}):\n{}",
            cfg.workspace_dir,
            file_lines.join("\n")
        ));
    }
    let mut msgs = vec![Msg::User(first)];
    drop(bundle);

    let mut specs = tools.specs(false);
    let mut reprompted = false;
    let mut turns = 0u32;
    loop {
        if turns >= cfg.max_turns {
            return Ok(failed(
                format!("Agent reached the maximum of {} turns", cfg.max_turns),
                "max_turns",
            ));
        }
        turns += 1;
        let resp = match call_with_retries(&llm, sink, &system, &msgs, &specs).await? {
            Ok(r) => r,
            Err(e) => return Ok(failed(e.message(), "llm_error")),
        };
        state.usage.add(resp.usage);
        emit(
            sink,
            "appstrate.metric",
            json!({"usage": state.usage.to_json()}),
        )
        .await?;
        let ModelResponse { text, calls, .. } = resp;
        if !text.trim().is_empty() {
            state.text = text.clone();
        }
        msgs.push(Msg::Assistant {
            text,
            calls: calls.clone(),
        });

        if calls.is_empty() {
            if tools.output_schema.is_some() && state.output.is_none() && !reprompted {
                reprompted = true;
                specs = tools.specs(true);
                msgs.push(Msg::User(CORRECTIVE.into()));
                continue;
            }
            break;
        }
        for call in &calls {
            let args = serde_json::from_str::<Value>(&call.arguments)
                .unwrap_or_else(|_| Value::String(call.arguments.clone()));
            progress(
                sink,
                "tool_call",
                Some(json!({"tool": call.name, "args": redactor.loggable(&args)})),
            )
            .await?;
            let offered = specs.iter().any(|s| s.name == call.name);
            let mut outcome = if offered {
                tools.call(call).await
            } else {
                crate::tools::ToolOutcome {
                    content: format!("Tool `{}` is not available now", call.name),
                    is_error: true,
                    output: None,
                    event: None,
                }
            };
            if let Some((ty, data)) = outcome.event.clone() {
                emit(sink, ty, data).await?;
            }
            // A command may print what the runner holds; neither the model nor the log sees it.
            outcome.content = redactor.text(&outcome.content);
            let mut result = json!({"tool": call.name, "isError": outcome.is_error});
            if crate::workspace::tools::is_workspace_tool(&call.name) {
                result["result"] = json!(redactor.summary(&outcome.content));
            }
            progress(sink, "tool_result", Some(result)).await?;
            if let Some(out) = outcome.output {
                state.output = Some(out);
            }
            state.checkpoint = tools.checkpoint();
            msgs.push(Msg::Tool {
                id: call.id.clone(),
                content: outcome.content,
                is_error: outcome.is_error,
            });
        }
        if state.output.is_some() {
            break;
        }
    }

    if tools.output_schema.is_some() && state.output.is_none() {
        return Ok(failed(
            "Agent finished without calling the required `output` tool",
            "output_missing",
        ));
    }
    Ok(Verdict::Success)
}

/// One model exchange with the retry policy; every failed attempt is reported as `appstrate.error`.
async fn call_with_retries(
    llm: &LlmClient,
    sink: &Sink,
    system: &str,
    msgs: &[Msg],
    specs: &[ToolSpec],
) -> Result<Result<ModelResponse, LlmError>, SinkClosed> {
    let mut retry = 0;
    loop {
        let err = match llm.call(system, msgs, specs).await {
            Ok(r) => return Ok(Ok(r)),
            Err(e) => e,
        };
        let delay = retry_delay(&err, retry);
        let mut data = json!({"attempt": retry + 1, "detail": err.detail()});
        if let LlmError::Http { status, .. } = &err {
            data["status"] = json!(status);
        }
        let message = match delay {
            Some(d) => {
                data["retryInMs"] = json!(d.as_millis() as u64);
                format!("{}; retrying in {:.1}s", err.message(), d.as_secs_f64())
            }
            None => err.message(),
        };
        emit(
            sink,
            "appstrate.error",
            json!({"message": message, "data": data}),
        )
        .await?;
        match delay {
            Some(d) => tokio::time::sleep(d).await,
            None => return Ok(Err(err)),
        }
        retry += 1;
    }
}

/// Whether a prompt template uses the variable `name` (`{{name…`, `{{#name`, `{{^name`).
fn references(template: &str, name: &str) -> bool {
    ["{{", "{{#", "{{^", "{{ ", "{{# ", "{{^ "]
        .iter()
        .any(|open| template.contains(&format!("{open}{name}")))
}

/// Platform preamble + rendered prompt + memory (what the template does not place itself) + skills +
/// (with an output schema) the `output` instruction. `run` is the run's context from the platform.
pub fn system_prompt(bundle: &Bundle, cfg: &Config, run: Option<&Value>) -> String {
    let empty = json!({});
    let run = run.unwrap_or(&empty);
    let memories = run["memories"].as_array().cloned().unwrap_or_default();
    let pinned_list = run["pinned"].as_array().cloned().unwrap_or_default();
    let pinned: serde_json::Map<String, Value> = pinned_list
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["value"].clone())))
        .collect();
    let checkpoint = run.get("checkpoint").cloned().unwrap_or(Value::Null);
    let context = json!({
        "input": Value::Object(cfg.input.clone()),
        "runId": cfg.run_id,
        "memories": memories,
        "checkpoint": checkpoint,
        "pinned": pinned,
    });
    let mut s = String::with_capacity(bundle.prompt.len() + 1024);
    s.push_str(PREAMBLE);
    s.push_str("\n\n");
    s.push_str(mustache::render(&bundle.prompt, &context).trim_end());
    s.push('\n');
    let mut memory = String::new();
    if !pinned.is_empty() && !references(&bundle.prompt, "pinned") {
        memory.push_str("\nPinned (set with `pin`):\n");
        for (k, v) in &pinned {
            memory.push_str(&format!("- {k}: {v}\n"));
        }
    }
    if !checkpoint.is_null() && !references(&bundle.prompt, "checkpoint") {
        memory.push_str(&format!(
            "\nCheckpoint from your previous run:\n```json\n{}\n```\n",
            serde_json::to_string_pretty(&checkpoint).unwrap_or_default()
        ));
    }
    if !memories.is_empty() && !references(&bundle.prompt, "memories") {
        memory.push_str("\nWhat you remembered (newest first):\n");
        for m in &memories {
            memory.push_str(&format!("- {}\n", m["content"].as_str().unwrap_or("")));
        }
    }
    if run["leftOut"].as_u64().unwrap_or(0) > 0 {
        memory.push_str(&format!(
            "\n({} older memories are not shown; search them with `recall_memory`.)\n",
            run["leftOut"]
        ));
    }
    if !memory.is_empty() {
        s.push_str("\n## Memory\n");
        s.push_str(&memory);
    }
    for (id, body) in &bundle.skills {
        s.push_str(&format!("\n## Skill: {id}\n\n{}\n", body.trim_end()));
    }
    if let Some(schema) = bundle.output_schema() {
        s.push_str(&format!(
            "\n## Output\n\nWhen you are done, call the `output` tool exactly once with your result \
             under `data`. The result must match this JSON Schema:\n\n```json\n{}\n```\n\nIf `output` \
             reports a validation error, fix the data and call it again.\n",
            serde_json::to_string_pretty(schema).unwrap_or_default()
        ));
    }
    s
}

pub fn finalize_body(
    verdict: &Verdict,
    state: &RunState,
    timeout_s: u64,
    elapsed: Duration,
) -> Value {
    let (status, error) = match verdict {
        Verdict::Success => ("success", None),
        Verdict::Failed { message, code } => {
            ("failed", Some(json!({"message": message, "code": code})))
        }
        Verdict::Timeout => (
            "timeout",
            Some(
                json!({"message": format!("Run timed out after {timeout_s}s"), "code": "timeout"}),
            ),
        ),
    };
    let mut body = json!({
        "status": status,
        "usage": state.usage.to_json(),
        "durationMs": elapsed.as_millis() as u64,
    });
    if let Some(out) = &state.output {
        body["output"] = out.clone();
    }
    if let Some(c) = &state.checkpoint {
        body["checkpoint"] = c.clone();
    }
    if !state.text.is_empty() {
        body["text"] = json!(truncate(&state.text, TEXT_LIMIT));
    }
    if let Some(e) = error {
        body["error"] = e;
    }
    body
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(prompt: &str) -> Bundle {
        Bundle {
            manifest: json!({}),
            prompt: prompt.into(),
            skills: vec![],
        }
    }

    #[test]
    fn memory_the_template_does_not_place_goes_to_a_memory_section() {
        let cfg = crate::config::tests::parse(&crate::config::tests::base()).unwrap();
        let ctx = json!({
            "memories": [{"content": "prefers email"}],
            "pinned": [{"name": "city", "value": "Paris"}],
            "checkpoint": {"page": 2},
            "leftOut": 3,
        });
        let s = system_prompt(&bundle("Plain prompt."), &cfg, Some(&ctx));
        assert!(s.contains("## Memory"), "{s}");
        assert!(s.contains("- city: \"Paris\""), "{s}");
        assert!(s.contains("\"page\": 2"), "{s}");
        assert!(s.contains("- prefers email"), "{s}");
        assert!(s.contains("3 older memories"), "{s}");
        // A template that places memories and the checkpoint itself gets only the pinned slots added.
        let t =
            "{{#memories}}* {{content}}\n{{/memories}}{{#checkpoint}}cp {{page}}{{/checkpoint}}";
        let s = system_prompt(&bundle(t), &cfg, Some(&ctx));
        assert!(s.contains("* prefers email") && s.contains("cp 2"), "{s}");
        assert!(
            !s.contains("- prefers email") && s.contains("- city"),
            "{s}"
        );
        // No context: nothing added, the template sees empty memory.
        let s = system_prompt(&bundle("{{^memories}}first run{{/memories}}"), &cfg, None);
        assert!(s.contains("first run") && !s.contains("## Memory"), "{s}");
    }

    #[test]
    fn the_checkpoint_rides_on_finalize() {
        let st = RunState {
            checkpoint: Some(json!({"cursor": 7})),
            ..Default::default()
        };
        let b = finalize_body(&Verdict::Success, &st, 2, Duration::ZERO);
        assert_eq!(b["checkpoint"], json!({"cursor": 7}));
        let b = finalize_body(&Verdict::Success, &RunState::default(), 2, Duration::ZERO);
        assert!(b.get("checkpoint").is_none());
    }

    #[test]
    fn finalize_bodies() {
        let mut st = RunState::default();
        st.usage.input = 3;
        let b = finalize_body(&Verdict::Timeout, &st, 2, Duration::from_millis(2100));
        assert_eq!(b["status"], "timeout");
        assert_eq!(
            b["error"],
            json!({"message": "Run timed out after 2s", "code": "timeout"})
        );
        assert_eq!(b["usage"]["input_tokens"], 3);
        assert_eq!(b["durationMs"], 2100);
        assert!(b.get("output").is_none() && b.get("text").is_none());
        st.output = Some(json!({"a": 1}));
        st.text = "é".repeat(40_000);
        let b = finalize_body(&Verdict::Success, &st, 2, Duration::ZERO);
        assert_eq!(b["status"], "success");
        assert!(b.get("error").is_none());
        assert_eq!(b["output"]["a"], 1);
        assert!(b["text"].as_str().unwrap().len() <= TEXT_LIMIT);
        let b = finalize_body(
            &failed("LLM request failed: HTTP 400", "llm_error"),
            &st,
            2,
            Duration::ZERO,
        );
        assert_eq!(b["error"]["code"], "llm_error");
    }
}
