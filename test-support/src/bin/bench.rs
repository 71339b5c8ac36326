//! `cargo run --release -p test-support --bin bench [all|boot|rss|http|agents|runs|tier2|docker|history|mcp]... [options]`
//!
//! Starts the release `appstrate` binary at Tier 0 and prints the figures of SPEC §23.3 with their
//! targets. A report, not a test: it exits 0 whether the targets are met or missed, 1 when the
//! harness itself could not run, 2 on a usage error. See docs/benchmarks.md.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use appstrate::infra::database::Timestamp;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::{Method, StatusCode};
use serde_json::Value;
use test_support::bench::load::{self, LoadReport, LoadSpec, RequestTemplate, Rotation};
use test_support::bench::report::{load_table, Summary, Target};
use test_support::bench::server::{self, Server};
use test_support::bench::{client, cores, fixtures, min_median_max, ms, runs};
use test_support::fake_llm::{FakeLlm, Script, Turn};

const USAGE: &str = "\
usage: bench [all|boot|rss|http|agents|runs|tier2|docker|history|mcp]... [options]

sub-benchmarks (default: all)
  boot   spawn → first GET /health 200 on a fresh ./data, repeated (target ≤ 300 ms)
  rss    idle VmRSS/VmHWM of the API after boot and 3 s idle (target ≤ 30 MB), and after the load
         test when http runs too
  http   req/s, p50/p99 for GET /health and GET /api/end-users (20 rows, API key) per concurrency
         (target at c=16 for the list: ≥ 5,000 req/s, p99 < 20 ms, no errors)
  agents req/s, p50/p99 for GET /api/agents (API key, one imported agent) per concurrency
         (target at c=16: ≥ 5,000 req/s, p99 < 20 ms, no errors); sign-in and the same list with
         a session cookie; the dashboard's render time per page (target p50 ≤ 5 ms at c=1) and the
         bytes of a first load of a run page (target ≤ 150 KB, request chain depth ≤ 2)
  runs   process mode against an in-process fake LLM, release appstrate-runner:
         POST /api/agents/@examples/hello/run → first runner event persisted, sequential (target
         p50 ≤ 30 ms); runner peak RSS (VmHWM, target ≤ 15 MB); N concurrent inline runs whose model
         answers are delayed so they overlap (target 0 errors; runs/s, runners alive at once)
  tier2  not part of all: needs PostgreSQL (TEST_DATABASE_URL) and redis-server (REDIS_SERVER_BIN or
         PATH), as scripts/services.sh provides. Two instances on PostgreSQL + Redis: GET /api/agents
         req/s at c=16 per instance and both at once; rate-limiter cost per hit, Redis vs memory;
         run-start p50 (process mode) at Tier 2 vs Tier 0
  docker Docker mode (not part of all; needs an engine): image sizes, container create+start floor,
         run start → first runner event with RUN_SLOT_POOL_SIZE=2 and 0 (target slot p50 ≤ 60 ms and
         ≥ 8× faster than fresh), load average; the API runs in-process, the images are built by
         images/build.sh
  mcp    not part of all: an in-process sidecar launching the stdio fake-mcp-stdio (built next to
         the bench), configure → tools listed over Streamable HTTP as the runner does at run start,
         --mcp-rounds rounds (default 20)
  history not part of all: --history-runs finished runs (default 1,000,000) with
         --history-logs-per-run log rows each (default 10) seeded straight into SQLite and, with
         TEST_DATABASE_URL, PostgreSQL; boot, one watchdog sweep, GET /api/runs?limit=50 at c=16, the
         deepest cursor page, one retention batch and the database size before/after retention, each
         against the same figures with 100 runs (target: within 20 %, boot ≤ 50 ms on SQLite)

options
  --duration SECS      measured seconds per load scenario (default 10)
  --warmup SECS        unmeasured warm-up before each scenario (default 1)
  --concurrency LIST   comma-separated concurrencies (default 1,16)
  --boot-runs N        boots to time (default 7)
  --idle SECS          idle time before reading the idle RSS (default 3)
  --bin PATH           the appstrate binary (default: target/release/appstrate, built if missing)
  --runner PATH        the runner binary (default: target/release/appstrate-runner, built if missing)
  --runs N             sequential runs timed for the run-start latency (default 200, after 2 warm-up runs)
  --concurrent-runs N  runs started at once for the throughput scenario (default 500; 0 skips it)
  --llm-delay MS       the fake LLM waits this long before each answer of the concurrent runs, so
                       they are alive together (default 3000)
  --runs-timeout SECS  global limit of the concurrent-runs scenario (default 300)
  --docker-runs N      sequential runs per pool setting in the docker bench (default 50)
  --mcp-rounds N       rounds of the mcp bench (default 20)
  --history-runs N     runs of the long history (default 1000000)
  --history-logs-per-run N  log rows per run (default 10)
  --history-backends LIST   sqlite,postgres (default both; postgres needs TEST_DATABASE_URL)";

/// Targets of SPEC §23.3.
const BOOT_TARGET_MS: f64 = 300.0;
const IDLE_RSS_TARGET_MB: f64 = 30.0;
const LIST_RPS_TARGET: f64 = 5_000.0;
const LIST_P99_TARGET_MS: f64 = 20.0;
const TARGET_CONCURRENCY: usize = 16;
const RUN_START_TARGET_MS: f64 = 30.0;
const RUNNER_RSS_TARGET_MB: f64 = 15.0;
const WARMUP_RUNS: usize = 2;
/// Runs started with one API key in the sequential scenario (the route allows 20 per minute).
const RUNS_PER_KEY: usize = 19;
/// The run-start scenario starts the project's example agent.
const RUN_START_PATH: &str = "/api/agents/@examples/hello/run";
/// Connections that send the concurrent runs' POSTs, and that long-poll their results.
const RUN_SENDERS: usize = 32;
const RUN_WAITERS: usize = 16;

/// `GET /api/end-users*` allows 300 requests per 60 s per API key; each key serves at most this many.
const PER_KEY_BUDGET: u64 = 250;
/// Keys are minted for this rate (far above what the loopback can do on a small machine), so that the
/// per-key budget is never the limit; the load generator stops early, and says so, if it ever is.
const KEY_RATE_CEILING: u64 = 25_000;
const END_USERS: usize = 20;

#[derive(Debug, Clone)]
struct Opts {
    boot: bool,
    rss: bool,
    http: bool,
    agents: bool,
    runs: bool,
    tier2: bool,
    docker: bool,
    docker_runs: usize,
    mcp: bool,
    mcp_rounds: usize,
    history: bool,
    history_runs: usize,
    history_logs_per_run: usize,
    history_backends: Vec<test_support::bench::history::Backend>,
    duration: Duration,
    warmup: Duration,
    concurrency: Vec<usize>,
    boot_runs: usize,
    idle: Duration,
    bin: Option<PathBuf>,
    runner: Option<PathBuf>,
    seq_runs: usize,
    concurrent_runs: usize,
    llm_delay_ms: u64,
    runs_timeout: Duration,
}

impl Opts {
    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Opts> {
        let mut o = Opts {
            boot: false,
            rss: false,
            http: false,
            agents: false,
            runs: false,
            tier2: false,
            docker: false,
            docker_runs: 50,
            mcp: false,
            mcp_rounds: 20,
            history: false,
            history_runs: 1_000_000,
            history_logs_per_run: 10,
            history_backends: vec![
                test_support::bench::history::Backend::Sqlite,
                test_support::bench::history::Backend::Postgres,
            ],
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            concurrency: vec![1, 16],
            boot_runs: 7,
            idle: Duration::from_secs(3),
            bin: None,
            runner: None,
            seq_runs: 200,
            concurrent_runs: 500,
            llm_delay_ms: 3000,
            runs_timeout: Duration::from_secs(300),
        };
        let count = |v: Option<String>, name: &str, max: usize| -> anyhow::Result<usize> {
            let v = v.with_context(|| format!("{name} needs a value"))?;
            let n: usize = v
                .parse()
                .with_context(|| format!("{name}: not a number: {v}"))?;
            if n > max {
                bail!("{name}: at most {max}");
            }
            Ok(n)
        };
        let secs = |v: Option<String>, name: &str| -> anyhow::Result<Duration> {
            let v = v.with_context(|| format!("{name} needs a value"))?;
            let s: f64 = v
                .parse()
                .with_context(|| format!("{name}: not a number: {v}"))?;
            if !(0.0..=3600.0).contains(&s) {
                bail!("{name}: out of range: {v}");
            }
            Ok(Duration::from_secs_f64(s))
        };
        let mut any = false;
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next());
            match flag.as_str() {
                "all" => {
                    (o.boot, o.rss, o.http, o.agents, o.runs, any) =
                        (true, true, true, true, true, true)
                }
                "agents" => (o.agents, any) = (true, true),
                "runs" => (o.runs, any) = (true, true),
                "tier2" => (o.tier2, any) = (true, true),
                "docker" => (o.docker, any) = (true, true),
                "history" => (o.history, any) = (true, true),
                "mcp" => (o.mcp, any) = (true, true),
                "--mcp-rounds" => o.mcp_rounds = count(value(), "--mcp-rounds", 10_000)?,
                "--history-runs" => {
                    o.history_runs = count(value(), "--history-runs", 10_000_000)?;
                    if o.history_runs <= test_support::bench::history::BASELINE_RUNS as usize {
                        bail!("--history-runs must be above the baseline's 100 runs");
                    }
                }
                "--history-logs-per-run" => {
                    o.history_logs_per_run = count(value(), "--history-logs-per-run", 1_000)?
                }
                "--history-backends" => {
                    use test_support::bench::history::Backend;
                    let v = value().context("--history-backends needs a value")?;
                    o.history_backends = v
                        .split(',')
                        .map(|b| match b.trim() {
                            "sqlite" => Ok(Backend::Sqlite),
                            "postgres" => Ok(Backend::Postgres),
                            other => Err(anyhow::anyhow!(
                                "--history-backends: sqlite or postgres, got {other:?}"
                            )),
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--docker-runs" => {
                    o.docker_runs = count(value(), "--docker-runs", 1_000)?;
                    if o.docker_runs == 0 {
                        bail!("--docker-runs must be at least 1");
                    }
                }
                "--runs" => {
                    o.seq_runs = count(value(), "--runs", 10_000)?;
                    if o.seq_runs == 0 {
                        bail!("--runs must be at least 1");
                    }
                }
                "--concurrent-runs" => {
                    o.concurrent_runs = count(value(), "--concurrent-runs", 5_000)?
                }
                "--llm-delay" => o.llm_delay_ms = count(value(), "--llm-delay", 60_000)? as u64,
                "--runs-timeout" => o.runs_timeout = secs(value(), "--runs-timeout")?,
                "--runner" => o.runner = Some(value().context("--runner needs a path")?.into()),
                "boot" => (o.boot, any) = (true, true),
                "rss" => (o.rss, any) = (true, true),
                "http" => (o.http, any) = (true, true),
                "--duration" => o.duration = secs(value(), "--duration")?,
                "--warmup" => o.warmup = secs(value(), "--warmup")?,
                "--idle" => o.idle = secs(value(), "--idle")?,
                "--boot-runs" => {
                    o.boot_runs = value()
                        .context("--boot-runs needs a value")?
                        .parse()
                        .context("--boot-runs: not a number")?;
                    if o.boot_runs == 0 {
                        bail!("--boot-runs must be at least 1");
                    }
                }
                "--concurrency" => {
                    let v = value().context("--concurrency needs a value")?;
                    o.concurrency = v
                        .split(',')
                        .map(|c| c.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .with_context(|| format!("--concurrency: {v}"))?;
                    if o.concurrency.iter().any(|&c| c == 0 || c > 4096) {
                        bail!("--concurrency: each value from 1 to 4096");
                    }
                }
                "--bin" => o.bin = Some(value().context("--bin needs a path")?.into()),
                "-h" | "--help" | "help" => bail!("help"),
                other => bail!("unknown argument: {other}"),
            }
        }
        if o.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if !any {
            (o.boot, o.rss, o.http, o.agents, o.runs) = (true, true, true, true, true);
        }
        if o.runs_timeout.is_zero() {
            bail!("--runs-timeout must be positive");
        }
        Ok(o)
    }
}

fn main() -> ExitCode {
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) if e.to_string() == "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut summary = Summary::default();
    let outcome = run(&opts, &mut summary);
    println!("\n== summary ==");
    print!("{}", summary.render());
    match outcome {
        Ok(()) => {
            println!(
                "{} target(s) missed; the bench reports, it does not fail on a miss.",
                summary.misses()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn flush() {
    let _ = std::io::stdout().flush();
}

fn run(opts: &Opts, summary: &mut Summary) -> anyhow::Result<()> {
    let cores = cores();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    if opts.docker {
        rt.block_on(test_support::bench::docker::docker_bench(
            opts.docker_runs,
            summary,
        ))?;
    }
    if opts.mcp {
        rt.block_on(test_support::bench::mcp::mcp_bench(
            opts.mcp_rounds,
            summary,
        ))?;
    }
    if opts.history {
        let binary = match &opts.bin {
            Some(b) => b.clone(),
            None => server::locate_or_build_binary()?,
        };
        let history = test_support::bench::history::HistoryOpts {
            runs: opts.history_runs as i64,
            logs_per_run: opts.history_logs_per_run as i64,
            boots: opts.boot_runs,
            duration: opts.duration,
            warmup: opts.warmup,
            deep_pages: 200,
        };
        rt.block_on(test_support::bench::history::history_bench(
            &binary,
            &server::system_packages_dir(),
            &opts.history_backends,
            &history,
            summary,
        ))?;
    }
    if !(opts.boot || opts.rss || opts.http || opts.agents || opts.runs) {
        return Ok(());
    }
    let (_, release) = server::own_target_dir()?;
    let binary = match &opts.bin {
        Some(b) => b.clone(),
        None => server::locate_or_build_binary()?,
    };
    let packages_dir = server::system_packages_dir();
    let packages = server::count_packages(&packages_dir);

    println!("== appstrate bench ==");
    println!("binary:          {}", binary.display());
    println!(
        "system packages: {packages} in {} (SPEC §23.3 boots with 12)",
        packages_dir.display()
    );
    println!(
        "machine:         {cores} core(s), shared by the server and the load generator \
         ({cores} tokio worker threads) on loopback: client and server compete for CPU"
    );
    let load_avg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok());
    if let Some(l) = load_avg {
        println!(
            "load average:    {l:.2} (1 min) before the bench{}",
            if l > cores as f64 * 0.5 {
                ": other work is running, figures will be lower and noisier"
            } else {
                ""
            }
        );
        summary.note(format!("1-min load average before the bench: {l:.2}"));
    }
    if !release {
        println!("warning:         the bench itself is a debug build; run it with --release");
    }
    summary.note(format!(
        "{cores} core(s) shared by the server and the load generator; system packages present: {packages}"
    ));

    if opts.boot {
        boot_bench(opts, &binary, &packages_dir, packages, summary)?;
    }
    if opts.rss || opts.http {
        println!("\n== server for rss/http ==");
        let server = Server::start(&binary, &packages_dir, &[])?;
        println!(
            "pid {} on {}, healthy after {:.1} ms; working dir {}",
            server.pid(),
            server.addr(),
            ms(server.boot),
            server.dir().display()
        );
        if opts.rss {
            println!("\n== rss: idle ==");
            println!("idling {:.0} s …", opts.idle.as_secs_f64());
            flush();
            std::thread::sleep(opts.idle);
            let m = server.memory().context("reading /proc/<pid>/status")?;
            println!(
                "after boot + {:.0} s idle: VmRSS {:.1} MB, VmHWM {:.1} MB",
                opts.idle.as_secs_f64(),
                m.rss_mb(),
                m.hwm_mb()
            );
            summary.add(
                "idle RSS (VmRSS, boot + idle)",
                m.rss_mb(),
                "MB",
                Target::AtMost(IDLE_RSS_TARGET_MB),
            );
            summary.add("idle peak RSS (VmHWM)", m.hwm_mb(), "MB", Target::None);
        }
        if opts.http {
            rt.block_on(http_bench(opts, &server, summary))?;
            if opts.rss {
                let m = server.memory().context("reading /proc/<pid>/status")?;
                println!("\n== rss: after the load test ==");
                println!("VmRSS {:.1} MB, VmHWM {:.1} MB", m.rss_mb(), m.hwm_mb());
                summary.add("RSS after load (VmRSS)", m.rss_mb(), "MB", Target::None);
                summary.add(
                    "peak RSS after load (VmHWM)",
                    m.hwm_mb(),
                    "MB",
                    Target::None,
                );
            }
        }
        let (status, took) = server.stop(Duration::from_secs(30))?;
        println!(
            "\nserver stopped by SIGTERM in {:.0} ms ({status}); temp dir removed",
            ms(took)
        );
    }
    if opts.agents || opts.runs {
        run_server_benches(opts, &rt, &binary, &packages_dir, summary)?;
    }
    if opts.tier2 {
        tier2_bench(opts, &rt, &binary, &packages_dir, summary)?;
    }
    Ok(())
}

fn boot_bench(
    opts: &Opts,
    binary: &std::path::Path,
    packages_dir: &std::path::Path,
    packages: usize,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    println!(
        "\n== boot: spawn → first GET /health 200, fresh ./data, polled every {} ms ==",
        server::POLL_EVERY.as_millis()
    );
    let mut times = Vec::new();
    for i in 1..=opts.boot_runs {
        let s = Server::start(binary, packages_dir, &[])?;
        let (boot, probes) = (s.boot, s.probes);
        let (status, _) = s.stop(Duration::from_secs(30))?;
        println!(
            "run {i}: {:>8.1} ms  ({probes} probes; exit on SIGTERM: {status})",
            ms(boot)
        );
        flush();
        times.push(boot);
    }
    let (min, median, max) = min_median_max(&times).context("no boot")?;
    println!(
        "boot ms: min {:.1}  median {:.1}  max {:.1}  ({} runs, {packages} system packages)",
        ms(min),
        ms(median),
        ms(max),
        times.len()
    );
    summary.add(
        format!("boot → /health 200 (median of {})", times.len()),
        ms(median),
        "ms",
        Target::AtMost(BOOT_TARGET_MS),
    );
    summary.add("boot max", ms(max), "ms", Target::None);
    Ok(())
}

fn keys_for(opts: &Opts) -> (usize, u64) {
    let total = opts.warmup + opts.duration;
    let window = total.min(Duration::from_secs(60)).as_secs_f64();
    let keys = ((KEY_RATE_CEILING as f64 * window) / PER_KEY_BUDGET as f64).ceil() as usize;
    let minutes = (total.as_secs_f64() / 60.0).ceil().max(1.0) as u64;
    let keys = keys.max(1);
    (keys, keys as u64 * PER_KEY_BUDGET * minutes)
}

async fn http_bench(opts: &Opts, server: &Server, summary: &mut Summary) -> anyhow::Result<()> {
    let addr = server.addr();
    println!("\n== http: setup ==");
    let creds = server.bootstrap()?;
    println!(
        "bootstrap: org {}, application {}",
        creds.org_id, creds.application_id
    );
    for i in 1..=END_USERS {
        let a = client::request(
            addr,
            Method::POST,
            "/api/end-users",
            Some(&creds.api_key),
            Some(&serde_json::json!({ "name": format!("Bench user {i}") })),
        )
        .await?;
        if a.status != StatusCode::CREATED && !a.status.is_success() {
            bail!(
                "POST /api/end-users: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
    }
    let list = client::request(
        addr,
        Method::GET,
        "/api/end-users",
        Some(&creds.api_key),
        None,
    )
    .await?
    .json()?;
    let rows = list["data"].as_array().map_or(0, Vec::len);
    println!("created {END_USERS} end-users; GET /api/end-users answers {rows} rows");
    if rows != END_USERS {
        bail!("expected {END_USERS} rows from GET /api/end-users, got {rows}: {list}");
    }

    let spec = |path: &str, concurrency: usize| LoadSpec {
        addr,
        request: RequestTemplate::get(path),
        rotation: None,
        concurrency,
        warmup: opts.warmup,
        duration: opts.duration,
        max_requests: None,
        server_pid: Some(server.pid()),
    };
    let announce = |what: &str, c: usize| {
        println!(
            "running {what} at c={c} for {:.0} s (+{:.0} s warm-up) …",
            opts.duration.as_secs_f64(),
            opts.warmup.as_secs_f64()
        );
        flush();
    };

    println!("\n== http: GET /health (no authentication) ==");
    let mut health = Vec::new();
    for &c in &opts.concurrency {
        announce("GET /health", c);
        health.push(load::run(spec("/health", c)).await);
    }
    print!("{}", load_table("GET /health", &health));

    println!("\n== http: GET /api/end-users ({END_USERS} rows, API key) ==");
    let (n_keys, budget) = keys_for(opts);
    println!(
        "the route allows 300 requests / 60 s per API key: each scenario gets {n_keys} fresh keys \
         (inserted into SQLite while the server runs), rotated round-robin, ≤ {PER_KEY_BUDGET} \
         requests per key"
    );
    let mut listing = Vec::new();
    for &c in &opts.concurrency {
        let t = Instant::now();
        let keys = fixtures::mint_api_keys(&server.db_path(), &creds, n_keys).await?;
        let values = keys
            .iter()
            .map(|k| HeaderValue::from_str(&format!("Bearer {k}")))
            .collect::<Result<Vec<_>, _>>()?;
        println!("minted {n_keys} API keys in {:.0} ms", ms(t.elapsed()));
        announce("GET /api/end-users", c);
        let mut s = spec("/api/end-users", c);
        s.rotation = Some(Rotation {
            header: AUTHORIZATION,
            values: Arc::new(values),
        });
        s.max_requests = Some(budget);
        let r = load::run(s).await;
        println!(
            "  {} requests sent (warm-up included): at most {} per key",
            r.sent,
            r.sent.div_ceil(n_keys as u64)
        );
        listing.push(r);
    }
    print!(
        "{}",
        load_table("GET /api/end-users (API key, 20 rows)", &listing)
    );

    for r in &health {
        add_load_figures(summary, "GET /health", r, false);
    }
    for r in &listing {
        add_load_figures(summary, "GET /api/end-users", r, true);
    }
    Ok(())
}

/// One server in process mode, its platform model pointing at an in-process fake LLM, for the agents
/// and runs sub-benchmarks.
fn run_server_benches(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    packages_dir: &std::path::Path,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let runner = match &opts.runner {
        Some(r) => r.clone(),
        // The agents bench ends with the dashboard's run page, which needs one real run.
        None if opts.runs || opts.agents => server::locate_or_build_runner()?,
        None => server::repo_root().join("target/release/appstrate-runner"),
    };
    let fake = rt.block_on(FakeLlm::start(Script::default()));
    let llm_url = fake.url();
    let runner_path = runner.to_string_lossy().into_owned();
    let env = [
        ("RUN_ADAPTER", "process"),
        ("RUNNER_BIN", runner_path.as_str()),
        ("LLM_BASE_URL", llm_url.as_str()),
        ("LLM_API_KEY", "sk-bench"),
        ("LLM_MODEL", "fake"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
        (
            "PLATFORM_RUN_LIMITS",
            r#"{"max_concurrent_per_org":1000,"per_org_global_rate_per_min":100000}"#,
        ),
        ("INLINE_RUN_LIMITS", r#"{"rate_per_min":100000}"#),
    ];
    println!("\n== server for agents/runs (process mode, fake LLM) ==");
    let server = Server::start(binary, packages_dir, &env)?;
    println!(
        "pid {} on {}, healthy after {:.1} ms; working dir {}",
        server.pid(),
        server.addr(),
        ms(server.boot),
        server.dir().display()
    );
    if opts.runs {
        println!(
            "runner: {} ({:.1} MB on disk); fake LLM on {llm_url} (OpenAI chat completions)",
            runner.display(),
            std::fs::metadata(&runner).map_or(0.0, |m| m.len() as f64 / 1_048_576.0)
        );
    }
    let mut runner_pids = Vec::new();
    let outcome = (|| -> anyhow::Result<()> {
        let creds = server.bootstrap()?;
        if opts.agents {
            rt.block_on(agents_bench(opts, &server, &creds, Some(&fake), summary))?;
        }
        if opts.runs {
            rt.block_on(runs_bench(
                opts,
                &server,
                &creds,
                &fake,
                summary,
                &mut runner_pids,
            ))?;
        }
        Ok(())
    })();
    if outcome.is_err() {
        eprintln!("server log (last 30 lines):\n{}", server.log_tail(30));
    }
    let stopped = server.stop(Duration::from_secs(30));
    let killed = runs::kill_leftover_runners(runner_pids);
    drop(fake);
    match &stopped {
        Ok((status, took)) => println!(
            "\nserver stopped by SIGTERM in {:.0} ms ({status}); temp dir removed; \
             runner processes left behind: {killed}",
            ms(*took)
        ),
        Err(e) => println!("\nserver stop: {e:#}; runner processes left behind: {killed}"),
    }
    outcome?;
    stopped?;
    Ok(())
}

/// `GET /api/agents` with one API key (the route has no rate limit) after importing an agent.
async fn agents_bench(
    opts: &Opts,
    server: &Server,
    creds: &server::Credentials,
    fake: Option<&FakeLlm>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let addr = server.addr();
    println!("\n== agents: setup ==");
    let afps = server::repo_root().join("examples/agents/hello.afps");
    let zip = std::fs::read(&afps).with_context(|| format!("reading {}", afps.display()))?;
    let mut conn = runs::Conn::new(addr);
    let a = conn
        .send(
            Method::POST,
            "/api/packages/import",
            &creds.api_key,
            Some(("application/zip", zip.into())),
            || {},
        )
        .await?;
    if !a.status.is_success() {
        bail!(
            "POST /api/packages/import {}: {} {}",
            afps.display(),
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    let imported = a.json()?;
    let list = conn
        .send(Method::GET, "/api/agents", &creds.api_key, None, || {})
        .await?;
    let list = list.json()?;
    let rows = list["data"].as_array().map_or(0, Vec::len);
    println!(
        "imported {} {}; GET /api/agents answers {rows} row(s), {} bytes",
        imported["package"]["id"].as_str().unwrap_or("?"),
        imported["version"]["version"].as_str().unwrap_or(""),
        list.to_string().len()
    );
    if rows == 0 {
        bail!("GET /api/agents is empty after the import: {list}");
    }
    let auth = HeaderValue::from_str(&format!("Bearer {}", creds.api_key))?;
    let mut reports = Vec::new();
    for &c in &opts.concurrency {
        println!(
            "running GET /api/agents at c={c} for {:.0} s (+{:.0} s warm-up) …",
            opts.duration.as_secs_f64(),
            opts.warmup.as_secs_f64()
        );
        flush();
        reports.push(
            load::run(LoadSpec {
                addr,
                request: RequestTemplate::get("/api/agents").header(AUTHORIZATION, auth.clone()),
                rotation: None,
                concurrency: c,
                warmup: opts.warmup,
                duration: opts.duration,
                max_requests: None,
                server_pid: Some(server.pid()),
            })
            .await,
        );
    }
    print!(
        "{}",
        load_table(
            &format!("GET /api/agents (one API key, {rows} agent(s))"),
            &reports
        )
    );
    for r in &reports {
        add_load_figures(summary, "GET /api/agents", r, true);
    }
    let cookie = sessions_bench(opts, server, creds, &reports, summary).await?;
    match fake {
        Some(fake) => dashboard_bench(opts, server, creds, fake, &cookie, summary).await,
        None => Ok(()),
    }
}

/// Render time of the dashboard's pages and the first load of a run page, as the member of the
/// sessions bench, after one finished run.
async fn dashboard_bench(
    opts: &Opts,
    server: &Server,
    creds: &server::Credentials,
    fake: &FakeLlm,
    cookie: &str,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let addr = server.addr();
    fake.push(Turn::tool_call(
        "output",
        serde_json::json!({"data": {"greeting": "Hello, bench!", "language": "en"}}),
    ));
    let started = client::request(
        addr,
        Method::POST,
        RUN_START_PATH,
        Some(&creds.api_key),
        Some(&serde_json::json!({"input": {"name": "bench"}})),
    )
    .await?;
    let run_id = started.json()?["id"]
        .as_str()
        .with_context(|| {
            format!(
                "starting a run for the run page: {} {}",
                started.status,
                String::from_utf8_lossy(&started.body)
            )
        })?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client::request(
            addr,
            Method::GET,
            &format!("/api/runs/{run_id}"),
            Some(&creds.api_key),
            None,
        )
        .await?
        .json()?;
        let status = r["status"].as_str().unwrap_or("");
        if !matches!(status, "pending" | "running") {
            println!("\nrun {run_id} for the run page ended {status}");
            break;
        }
        if Instant::now() > deadline {
            bail!("run {run_id} still {status} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let duration = opts.duration.min(Duration::from_secs(3));
    test_support::bench::dashboard::run(
        &test_support::bench::dashboard::DashboardBench {
            addr,
            server_pid: server.pid(),
            cookie,
            run_id: &run_id,
            agent: "@examples/hello",
            concurrency: &opts.concurrency,
            duration,
            warmup: opts.warmup.min(Duration::from_millis(500)),
        },
        summary,
    )
    .await
}

/// Sign-in p50 (argon2id dominates) and `GET /api/agents` with a session cookie, compared with the API
/// key figures of the same run.
async fn sessions_bench(
    opts: &Opts,
    server: &Server,
    creds: &server::Credentials,
    key_reports: &[LoadReport],
    summary: &mut Summary,
) -> anyhow::Result<String> {
    let addr = server.addr();
    println!("\n== sessions: sign-in and GET /api/agents with a session cookie ==");
    let email = format!("bench-{}@example.com", uuid::Uuid::new_v4());
    let password = "bench password 1234";
    let body = serde_json::json!({"email": email, "password": password});
    let up = client::request(
        addr,
        Method::POST,
        "/api/auth/sign-up/email",
        None,
        Some(&body),
    )
    .await?;
    if !up.status.is_success() {
        bail!(
            "sign-up: {} {}",
            up.status,
            String::from_utf8_lossy(&up.body)
        );
    }
    let user_id = up.json()?["user"]["id"].as_str().unwrap_or("").to_string();
    fixtures::add_member(&server.db_path(), creds, &user_id, "member").await?;
    // The sign-in route allows 10 attempts per email in 5 minutes.
    let mut times = Vec::new();
    let mut cookie = String::new();
    for _ in 0..9 {
        let started = Instant::now();
        let a = client::request(
            addr,
            Method::POST,
            "/api/auth/sign-in/email",
            None,
            Some(&body),
        )
        .await?;
        times.push(started.elapsed());
        if !a.status.is_success() {
            bail!("sign-in: {} {}", a.status, String::from_utf8_lossy(&a.body));
        }
        cookie = a
            .headers
            .get_all(hyper::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("appstrate_session="))
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .to_string();
    }
    let params = appstrate::people::password::Argon2Params::default().describe();
    if let Some((min, median, max)) = min_median_max(&times) {
        println!(
            "sign-in ({params}, server defaults): min {:.1} ms, p50 {:.1} ms, max {:.1} ms over {} sign-ins",
            ms(min),
            ms(median),
            ms(max),
            times.len()
        );
        summary.add(
            format!("POST /api/auth/sign-in/email p50 ({params})"),
            ms(median),
            "ms",
            Target::None,
        );
    }
    let cookie_text = cookie.clone();
    let cookie = HeaderValue::from_str(&cookie)?;
    let app = HeaderValue::from_str(&creds.application_id)?;
    let mut reports = Vec::new();
    for &c in &opts.concurrency {
        println!("running GET /api/agents with a session cookie at c={c} …");
        flush();
        reports.push(
            load::run(LoadSpec {
                addr,
                request: RequestTemplate::get("/api/agents")
                    .header(hyper::header::COOKIE, cookie.clone())
                    .header(
                        hyper::header::HeaderName::from_static("x-app-id"),
                        app.clone(),
                    ),
                rotation: None,
                concurrency: c,
                warmup: opts.warmup,
                duration: opts.duration,
                max_requests: None,
                server_pid: Some(server.pid()),
            })
            .await,
        );
    }
    print!(
        "{}",
        load_table("GET /api/agents (session cookie + X-App-Id)", &reports)
    );
    for r in &reports {
        add_load_figures(summary, "GET /api/agents (session)", r, false);
        if let Some(key) = key_reports.iter().find(|k| k.concurrency == r.concurrency) {
            let ratio = r.rps() / key.rps().max(1.0) * 100.0;
            summary.add(
                format!(
                    "GET /api/agents c={} session req/s as % of API key",
                    r.concurrency
                ),
                ratio.round(),
                "%",
                if r.concurrency == TARGET_CONCURRENCY {
                    Target::AtLeast(90.0)
                } else {
                    Target::None
                },
            );
        }
    }
    Ok(cookie_text)
}

/// Run start latency, runner peak RSS and N concurrent runs.
async fn runs_bench(
    opts: &Opts,
    server: &Server,
    creds: &server::Credentials,
    fake: &FakeLlm,
    summary: &mut Summary,
    runner_pids: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let addr = server.addr();
    let key = creds.api_key.as_str();
    let body = serde_json::json!({"input": {"name": "Ada"}});

    // --- sequential runs: start latency and runner RSS ---
    println!(
        "\n== runs: start latency, {} sequential runs of @examples/hello (+{WARMUP_RUNS} warm-up) ==",
        opts.seq_runs
    );
    runs::import_example_agent(addr, key).await?;
    // The agent's output schema wants a greeting and a language: one `output` call per run.
    for _ in 0..WARMUP_RUNS + opts.seq_runs {
        fake.push(Turn::tool_call(
            "output",
            serde_json::json!({"data": {"greeting": "Hello, Ada!", "language": "en"}}),
        ));
    }
    println!(
        "each run: POST {RUN_START_PATH} on a keep-alive connection; the first runner event \
         (progress \"runtime starting\") arrives on GET /api/realtime/runs?verbose=true, opened before \
         the first run; then GET /api/runs/{{id}}?wait=30 until terminal before the next run"
    );
    flush();
    // The run route allows 20 requests / 60 s per identity (SPEC §10.2): a fresh key every 19 runs.
    let run_keys = fixtures::mint_api_keys(
        &server.db_path(),
        creds,
        (WARMUP_RUNS + opts.seq_runs).div_ceil(RUNS_PER_KEY),
    )
    .await?;
    println!(
        "minted {} API keys: the run route allows 20 requests / 60 s per key, so each key starts \
         at most {RUNS_PER_KEY} runs",
        run_keys.len()
    );
    let mut events = runs::first_events(addr, key).await?;
    let sampler =
        runs::RunnerSampler::start(runs::runs_dir(server.dir()), Duration::from_millis(1));
    let mut post_conn = runs::Conn::new(addr);
    let mut wait_conn = runs::Conn::new(addr);
    let mut early: HashMap<String, runs::FirstEvent> = HashMap::new();
    let (mut persisted, mut observed, mut created) = (Vec::new(), Vec::new(), Vec::new());
    let mut seq_errors = Vec::new();
    for i in 0..WARMUP_RUNS + opts.seq_runs {
        let (mut sent_wall, mut sent) = (SystemTime::now(), Instant::now());
        let a = post_conn
            .post_json(RUN_START_PATH, &run_keys[i / RUNS_PER_KEY], &body, || {
                sent_wall = SystemTime::now();
                sent = Instant::now();
            })
            .await?;
        let answered = sent.elapsed();
        if a.status != StatusCode::CREATED {
            bail!(
                "POST {RUN_START_PATH}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        let id = a.json()?["id"]
            .as_str()
            .context("run without id")?
            .to_string();
        let first = match early.remove(&id) {
            Some(f) => Some(f),
            None => {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut found = None;
                while let Ok(Some(f)) =
                    tokio::time::timeout_at(deadline.into(), events.recv()).await
                {
                    if f.run_id == id {
                        found = Some(f);
                        break;
                    }
                    early.insert(f.run_id.clone(), f);
                }
                found
            }
        };
        let run = wait_conn
            .wait_terminal(&id, key, Instant::now() + Duration::from_secs(60))
            .await?;
        let status = run["status"].as_str().unwrap_or("?").to_string();
        if status != "success" {
            seq_errors.push(format!("{id}: {status}: {}", run["error"]));
        }
        let Some(first) = first else {
            seq_errors.push(format!("{id}: no runner event within 30 s ({status})"));
            continue;
        };
        if i < WARMUP_RUNS {
            continue;
        }
        created.push(answered);
        observed.push(first.received.saturating_duration_since(sent));
        if let Some(at) = first.persisted_at {
            let delta = at - Timestamp::from(sent_wall);
            persisted.push(Duration::from_micros(
                delta.num_microseconds().unwrap_or(0).max(0) as u64,
            ));
        }
        if i == WARMUP_RUNS {
            println!("first runner event: \"{}\"", first.message);
        }
    }
    let peaks = sampler.finish();
    runner_pids.extend(peaks.peaks_kb.keys().copied());
    for v in [&mut persisted, &mut observed, &mut created] {
        v.sort();
    }
    let row = |what: &str, v: &[Duration]| {
        println!(
            "  {what:<52} {:>5}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}",
            v.len(),
            ms(v.first().copied().unwrap_or_default()),
            ms(runs::quantile(v, 0.5)),
            ms(runs::quantile(v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        )
    };
    println!(
        "  {:<52} {:>5}  {:>8}  {:>8}  {:>8}  {:>8}",
        "from the POST being sent to …", "runs", "min ms", "p50 ms", "p99 ms", "max ms"
    );
    row(
        "… the first runner event persisted (server clock)",
        &persisted,
    );
    row("… its SSE frame read by the bench (bench clock)", &observed);
    row(
        "… the 201 answer read (run created, runner spawning)",
        &created,
    );
    println!(
        "  (\"persisted\" = createdAt of the event's log row, i.e. the run's first_event_at, minus the \
         wall-clock time taken right before the request was written; same host, same clock)"
    );
    if !seq_errors.is_empty() {
        println!("  runs not successful: {}", seq_errors.len());
        for e in seq_errors.iter().take(5) {
            println!("    {e}");
        }
    }
    match peaks.max_kb() {
        Some(max) => println!(
            "runner peak RSS (VmHWM): max {:.1} MB, median {:.1} MB over {} runner processes \
             ({} /proc samples, every 1 ms)",
            max as f64 / 1024.0,
            peaks.median_kb().unwrap_or(0) as f64 / 1024.0,
            peaks.peaks_kb.len(),
            peaks.samples
        ),
        None => println!("runner peak RSS: no runner process was sampled"),
    }
    summary.add(
        format!(
            "run start → first event persisted p50 ({} runs)",
            persisted.len()
        ),
        ms(runs::quantile(&persisted, 0.5)),
        "ms",
        Target::AtMost(RUN_START_TARGET_MS),
    );
    summary.add(
        "run start → first event persisted p99",
        ms(runs::quantile(&persisted, 0.99)),
        "ms",
        Target::None,
    );
    summary.add(
        "run start → first event on SSE p50",
        ms(runs::quantile(&observed, 0.5)),
        "ms",
        Target::None,
    );
    summary.add(
        "sequential runs not successful",
        seq_errors.len() as f64,
        "",
        Target::AtMost(0.0),
    );
    if let Some(max) = peaks.max_kb() {
        summary.add(
            "runner peak RSS (max VmHWM, sequential runs)",
            max as f64 / 1024.0,
            "MB",
            Target::AtMost(RUNNER_RSS_TARGET_MB),
        );
    }
    drop(events);

    if opts.concurrent_runs > 0 {
        concurrent_runs(opts, server, creds, fake, summary, runner_pids).await?;
    }
    Ok(())
}

/// Outcome of one of the concurrent runs.
struct RunOutcome {
    id: Option<String>,
    /// `success`, another terminal status, `pending`/`running` at the deadline, or `POST <status>`.
    status: String,
    error: String,
    completed_at: Option<Timestamp>,
}

async fn concurrent_runs(
    opts: &Opts,
    server: &Server,
    creds: &server::Credentials,
    fake: &FakeLlm,
    summary: &mut Summary,
    runner_pids: &mut Vec<u32>,
) -> anyhow::Result<()> {
    let n = opts.concurrent_runs;
    let addr = server.addr();
    println!(
        "\n== runs: {n} concurrent inline runs (fake LLM: one `output` tool call each{}) ==",
        if opts.llm_delay_ms > 0 {
            format!(", answered after {} ms", opts.llm_delay_ms)
        } else {
            String::new()
        }
    );
    for i in 0..n {
        let turn = Turn::tool_call("output", serde_json::json!({"data": {"ok": true, "n": i}}));
        fake.push(if opts.llm_delay_ms > 0 {
            turn.with_delay(opts.llm_delay_ms)
        } else {
            turn
        });
    }
    println!(
        "{RUN_SENDERS} connections send the POSTs back to back; {RUN_WAITERS} connections long-poll \
         GET /api/runs/{{id}}?wait=30; global limit {:.0} s",
        opts.runs_timeout.as_secs_f64()
    );
    flush();
    let sampler =
        runs::RunnerSampler::start(runs::runs_dir(server.dir()), Duration::from_millis(20));
    let deadline = Instant::now() + opts.runs_timeout;
    let start_wall = SystemTime::now();
    let start = Instant::now();
    let key: Arc<str> = Arc::from(creds.api_key.as_str());
    let body = Arc::new(runs::inline_run_body());
    let next = Arc::new(AtomicUsize::new(0));
    let posted = Arc::new(Mutex::new(Vec::<RunOutcome>::with_capacity(n)));
    let mut tasks = Vec::new();
    for _ in 0..RUN_SENDERS.min(n) {
        let (key, body, next, posted) = (key.clone(), body.clone(), next.clone(), posted.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = runs::Conn::new(addr);
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let out = match conn.post_json("/api/runs/inline", &key, &body, || {}).await {
                    Ok(a) if a.status == StatusCode::CREATED => RunOutcome {
                        id: a
                            .json()
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_string)),
                        status: "pending".into(),
                        error: String::new(),
                        completed_at: None,
                    },
                    Ok(a) => RunOutcome {
                        id: None,
                        status: format!("POST {}", a.status.as_u16()),
                        error: String::from_utf8_lossy(&a.body[..a.body.len().min(300)])
                            .into_owned(),
                        completed_at: None,
                    },
                    Err(e) => RunOutcome {
                        id: None,
                        status: "POST transport error".into(),
                        error: format!("{e:#}"),
                        completed_at: None,
                    },
                };
                posted.lock().unwrap_or_else(|e| e.into_inner()).push(out);
            }
        }));
    }
    let all_posted = tokio::time::timeout_at(deadline.into(), futures::future::join_all(tasks))
        .await
        .is_ok();
    let posting = start.elapsed();
    let outcomes = std::mem::take(&mut *posted.lock().unwrap_or_else(|e| e.into_inner()));
    let created = outcomes.iter().filter(|o| o.id.is_some()).count();
    println!(
        "{created} of {n} runs created (201) in {:.2} s{}",
        posting.as_secs_f64(),
        if all_posted {
            ""
        } else {
            " (global limit reached while posting)"
        }
    );
    flush();

    // Wait for every created run to be terminal.
    let queue = Arc::new(Mutex::new(outcomes));
    let done = Arc::new(Mutex::new(Vec::<RunOutcome>::with_capacity(n)));
    let dropped = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut waiters = Vec::new();
    for _ in 0..RUN_WAITERS {
        let (queue, done, key, dropped) =
            (queue.clone(), done.clone(), key.clone(), dropped.clone());
        waiters.push(tokio::spawn(async move {
            let mut conn = runs::Conn::new(addr);
            loop {
                let Some(mut o) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                    return;
                };
                if let Some(id) = o.id.clone() {
                    match conn.wait_terminal(&id, &key, deadline).await {
                        Ok(run) => {
                            o.status = run["status"].as_str().unwrap_or("?").to_string();
                            o.error = match &run["error"] {
                                Value::Null => String::new(),
                                e => e.to_string(),
                            };
                            o.completed_at = run["completed_at"]
                                .as_str()
                                .and_then(|s| s.parse::<Timestamp>().ok());
                        }
                        Err(e) => o.error = format!("waiting: {e:#}"),
                    }
                }
                done.lock().unwrap_or_else(|e| e.into_inner()).push(o);
                let lost = std::mem::take(&mut conn.dropped);
                dropped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(lost);
            }
        }));
    }
    let margin = Duration::from_secs(35); // one long-poll past the deadline at most
    let all_waited = tokio::time::timeout_at(
        (deadline + margin).into(),
        futures::future::join_all(waiters),
    )
    .await
    .is_ok();
    let observed_wall = start.elapsed();
    let peaks = sampler.finish();
    runner_pids.extend(peaks.peaks_kb.keys().copied());
    let outcomes = std::mem::take(&mut *done.lock().unwrap_or_else(|e| e.into_inner()));

    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes {
        *by_status.entry(o.status.clone()).or_default() += 1;
    }
    let missing = n.saturating_sub(outcomes.len());
    if missing > 0 {
        *by_status.entry("not awaited (limit)".into()).or_default() += missing;
    }
    let successes = by_status.get("success").copied().unwrap_or(0);
    let errors = n - successes;
    // Wall time on the server's clock: first POST sent → last completed_at.
    let last_completed = outcomes.iter().filter_map(|o| o.completed_at).max();
    let server_wall = last_completed
        .and_then(|t| (t - Timestamp::from(start_wall)).to_std().ok())
        .filter(|_| errors == 0);
    let wall = server_wall.unwrap_or(observed_wall);
    let rps = successes as f64 / wall.as_secs_f64();
    println!(
        "statuses: {}",
        by_status
            .iter()
            .map(|(s, c)| format!("{s} × {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "errors: {errors}; wall time {:.2} s (first POST sent → last run completed_at{}); \
         {rps:.1} runs/s; the bench saw the last run terminal after {:.2} s",
        wall.as_secs_f64(),
        if server_wall.is_some() {
            ""
        } else {
            ", bench clock"
        },
        observed_wall.as_secs_f64()
    );
    if let Some(max) = peaks.max_kb() {
        println!(
            "runner peak RSS during the concurrent runs: max {:.1} MB over {} processes sampled \
             (every 20 ms; short-lived runners can be missed)",
            max as f64 / 1024.0,
            peaks.peaks_kb.len(),
        );
    }
    println!(
        "runner processes alive at once: at most {} of {n} (sampled every 20 ms)",
        peaks.max_live
    );
    println!(
        "fake LLM: {} model requests served, {} scripted turns left",
        fake.requests().len(),
        fake.remaining()
    );
    let dropped = std::mem::take(&mut *dropped.lock().unwrap_or_else(|e| e.into_inner()));
    if !dropped.is_empty() {
        println!(
            "long-polls retried on a new connection after a transport error: {} (first: {})",
            dropped.len(),
            dropped[0]
        );
    }
    if !all_waited {
        println!("the global limit ended the wait: runs still open are counted as errors");
    }
    if errors > 0 {
        println!("first failures:");
        for o in outcomes.iter().filter(|o| o.status != "success").take(10) {
            println!(
                "  {}: {} {}",
                o.id.as_deref().unwrap_or("(no run)"),
                o.status,
                o.error
            );
        }
    }
    if errors > 0 || !dropped.is_empty() {
        let log = server.log_tail(1_000_000);
        let interesting: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("error")
                    || l.contains("panic")
            })
            .collect();
        println!(
            "server log, warnings, errors and panics (the last {}):",
            interesting.len().min(20)
        );
        for l in &interesting[interesting.len().saturating_sub(20)..] {
            println!("  {l}");
        }
    }
    summary.add(
        format!("{n} concurrent runs: errors (not success)"),
        errors as f64,
        "",
        Target::AtMost(0.0),
    );
    summary.add(
        format!("{n} concurrent runs: long-polls retried (transport)"),
        dropped.len() as f64,
        "",
        Target::None,
    );
    summary.add(
        format!("{n} concurrent runs: runners alive at once (max)"),
        peaks.max_live as f64,
        "",
        Target::None,
    );
    summary.add(
        format!("{n} concurrent runs: wall time"),
        wall.as_secs_f64(),
        "s",
        Target::None,
    );
    summary.add(
        format!("{n} concurrent runs: throughput"),
        (rps * 10.0).round() / 10.0,
        "runs/s",
        Target::None,
    );
    Ok(())
}

fn add_load_figures(summary: &mut Summary, what: &str, r: &LoadReport, targeted: bool) {
    let at_target = targeted && r.concurrency == TARGET_CONCURRENCY;
    let c = r.concurrency;
    summary.add(
        format!("{what} c={c} throughput"),
        r.rps().round(),
        "req/s",
        if at_target {
            Target::AtLeast(LIST_RPS_TARGET)
        } else {
            Target::None
        },
    );
    summary.add(format!("{what} c={c} p50"), ms(r.p50()), "ms", Target::None);
    summary.add(
        format!("{what} c={c} p99"),
        ms(r.p99()),
        "ms",
        if at_target {
            Target::Below(LIST_P99_TARGET_MS)
        } else {
            Target::None
        },
    );
    summary.add(
        format!("{what} c={c} non-2xx + transport errors"),
        r.errors() as f64,
        "",
        Target::AtMost(0.0),
    );
}

/// Where the figures of one server's runs_bench / agents load go.
fn figure(summary: &Summary, prefix: &str) -> Option<f64> {
    summary
        .figures
        .iter()
        .find(|f| f.name.starts_with(prefix))
        .map(|f| f.value)
}

/// `GET /api/agents` at c=`c` on `server` (after its agent import), as in the agents sub-benchmark.
fn agents_spec(opts: &Opts, server: &Server, key: &str, c: usize) -> anyhow::Result<LoadSpec> {
    Ok(LoadSpec {
        addr: server.addr(),
        request: RequestTemplate::get("/api/agents").header(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}"))?,
        ),
        rotation: None,
        concurrency: c,
        warmup: opts.warmup,
        duration: opts.duration,
        max_requests: None,
        server_pid: Some(server.pid()),
    })
}

/// Sequential hits on one key: mean and p50 cost of one `RateLimiter::hit`, in µs.
async fn limiter_cost(
    rl: &dyn appstrate::infra::ratelimit::RateLimiter,
    hits: usize,
) -> anyhow::Result<(f64, f64)> {
    let key = format!("bench:{}", uuid::Uuid::new_v4());
    let mut times = Vec::with_capacity(hits);
    for _ in 0..200 {
        rl.hit(&key, u32::MAX, Duration::from_secs(60)).await?;
    }
    for _ in 0..hits {
        let t = Instant::now();
        rl.hit(&key, u32::MAX, Duration::from_secs(60)).await?;
        times.push(t.elapsed());
    }
    let mean = times.iter().sum::<Duration>().as_secs_f64() * 1e6 / hits as f64;
    times.sort();
    Ok((mean, runs::quantile(&times, 0.5).as_secs_f64() * 1e6))
}

/// Tier 2: two instances sharing PostgreSQL and Redis, compared with Tier 0 on the same machine.
fn tier2_bench(
    opts: &Opts,
    rt: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    packages_dir: &std::path::Path,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    println!("\n== tier2: PostgreSQL + Redis, two instances ==");
    let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
        println!("skipped: TEST_DATABASE_URL is unset (source scripts/services.sh and run services_start)");
        return Ok(());
    };
    let Some(redis) = test_support::services::RedisServer::start() else {
        println!("skipped: no redis-server (REDIS_SERVER_BIN unset and none on PATH)");
        return Ok(());
    };
    let database_url = rt.block_on(test_support::services::create_database(&admin_url));
    println!(
        "PostgreSQL: a fresh database in the cluster of TEST_DATABASE_URL; Redis: a private redis-server \
         on 127.0.0.1:{} (appendonly, fsync always)",
        redis.port
    );
    let runner = match &opts.runner {
        Some(r) => r.clone(),
        None => server::locate_or_build_runner()?,
    };
    let fake = rt.block_on(FakeLlm::start(Script::default()));
    let llm_url = fake.url();
    let runner_path = runner.to_string_lossy().into_owned();
    let base = vec![
        ("RUN_ADAPTER", "process"),
        ("RUNNER_BIN", runner_path.as_str()),
        ("LLM_BASE_URL", llm_url.as_str()),
        ("LLM_API_KEY", "sk-bench"),
        ("LLM_MODEL", "fake"),
        ("EGRESS_ALLOW_INTERNAL_HOSTS", "127.0.0.1"),
        (
            "PLATFORM_RUN_LIMITS",
            r#"{"max_concurrent_per_org":1000,"per_org_global_rate_per_min":100000}"#,
        ),
        ("INLINE_RUN_LIMITS", r#"{"rate_per_min":100000}"#),
    ];
    let seq_only = Opts {
        concurrent_runs: 0,
        ..opts.clone()
    };
    let mut runner_pids = Vec::new();

    // --- Tier 0 baseline: run start on the same machine, same runner and fake LLM ---
    println!("\n-- tier2: Tier 0 baseline (SQLite, in-process adapters) --");
    let t0 = Server::start(binary, packages_dir, &base)?;
    let mut t0_summary = Summary::default();
    let t0_outcome = (|| -> anyhow::Result<()> {
        let creds = t0.bootstrap()?;
        rt.block_on(runs_bench(
            &seq_only,
            &t0,
            &creds,
            &fake,
            &mut t0_summary,
            &mut runner_pids,
        ))
    })();
    let _ = t0.stop(Duration::from_secs(30));
    t0_outcome?;

    // --- two Tier 2 instances ---
    let storage = tempfile::tempdir()?;
    let storage_path = storage.path().to_string_lossy().into_owned();
    let mut env = base.clone();
    env.extend([
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis.url.as_str()),
        ("FS_STORAGE_PATH", storage_path.as_str()),
    ]);
    let a = Server::start(binary, packages_dir, &env)?;
    let b = Server::start(binary, packages_dir, &env)?;
    println!(
        "instances: A pid {} on {}, B pid {} on {} (healthy after {:.0} / {:.0} ms), shared storage {}",
        a.pid(),
        a.addr(),
        b.pid(),
        b.addr(),
        ms(a.boot),
        ms(b.boot),
        storage_path
    );
    let outcome = (|| -> anyhow::Result<()> {
        let creds = a.bootstrap()?;
        let mut t2_summary = Summary::default();
        // Imports the agent through A; both instances list it from the shared database.
        rt.block_on(agents_bench(
            &Opts {
                concurrency: vec![],
                ..opts.clone()
            },
            &a,
            &creds,
            None,
            &mut t2_summary,
        ))?;
        let c = TARGET_CONCURRENCY;
        let mut single = Vec::new();
        for (name, s) in [("A", &a), ("B", &b)] {
            println!(
                "running GET /api/agents on {name} alone at c={c} for {:.0} s …",
                opts.duration.as_secs_f64()
            );
            flush();
            single.push(rt.block_on(load::run(agents_spec(opts, s, &creds.api_key, c)?)));
        }
        print!(
            "{}",
            load_table("GET /api/agents, one instance at a time", &single)
        );
        println!(
            "running GET /api/agents on A and B at once, c={c} each, for {:.0} s …",
            opts.duration.as_secs_f64()
        );
        flush();
        let (ra, rb) = rt.block_on(async {
            tokio::join!(
                load::run(agents_spec(opts, &a, &creds.api_key, c).expect("spec")),
                load::run(agents_spec(opts, &b, &creds.api_key, c).expect("spec"))
            )
        });
        let both = [ra, rb];
        print!(
            "{}",
            load_table("GET /api/agents, A and B at once (A, then B)", &both)
        );
        let combined: f64 = both.iter().map(|r| r.rps()).sum();
        println!("combined: {combined:.0} req/s (both instances and the load generators share the same cores)");

        println!("\n-- tier2: rate limiter cost per hit (in-process, sequential, 20000 hits) --");
        let (mem_mean, mem_p50) = rt.block_on(limiter_cost(
            &appstrate::infra::ratelimit::MemoryRateLimiter::default(),
            20_000,
        ))?;
        let redis_rl = rt.block_on(async {
            let conn = appstrate::infra::redis_client::Redis::connect(&redis.url).await?;
            anyhow::Ok(appstrate::infra::ratelimit::RedisRateLimiter::new(conn))
        })?;
        let (redis_mean, redis_p50) = rt.block_on(limiter_cost(&redis_rl, 20_000))?;
        println!(
            "memory: mean {mem_mean:.2} µs, p50 {mem_p50:.2} µs; redis (one Lua script, loopback): mean \
             {redis_mean:.1} µs, p50 {redis_p50:.1} µs; added per rate-limited request: {:.1} µs",
            redis_p50 - mem_p50
        );

        println!("\n-- tier2: run start on instance A --");
        rt.block_on(runs_bench(
            &seq_only,
            &a,
            &creds,
            &fake,
            &mut t2_summary,
            &mut runner_pids,
        ))?;

        let p50 = "run start → first event persisted p50";
        let t0_p50 = figure(&t0_summary, p50).unwrap_or(f64::NAN);
        let t2_p50 = figure(&t2_summary, p50).unwrap_or(f64::NAN);
        println!(
            "\nrun start → first event persisted p50: Tier 0 {t0_p50:.2} ms, Tier 2 {t2_p50:.2} ms"
        );
        for (i, r) in single.iter().enumerate() {
            let name = if i == 0 { "A" } else { "B" };
            summary.add(
                format!("tier2 GET /api/agents c={c} on {name} alone"),
                r.rps().round(),
                "req/s",
                Target::None,
            );
            summary.add(
                format!("tier2 GET /api/agents c={c} on {name} alone, p99"),
                ms(r.p99()),
                "ms",
                Target::None,
            );
        }
        summary.add(
            format!("tier2 GET /api/agents c={c} on A and B at once, combined"),
            combined.round(),
            "req/s",
            Target::None,
        );
        summary.add(
            "tier2 errors (non-2xx + transport), all agent scenarios",
            single
                .iter()
                .chain(both.iter())
                .map(|r| r.errors())
                .sum::<u64>() as f64,
            "",
            Target::AtMost(0.0),
        );
        summary.add(
            "rate limiter hit p50, memory",
            (mem_p50 * 100.0).round() / 100.0,
            "µs",
            Target::None,
        );
        summary.add(
            "rate limiter hit p50, redis",
            (redis_p50 * 10.0).round() / 10.0,
            "µs",
            Target::None,
        );
        summary.add(
            "run start p50, Tier 0 (same machine)",
            t0_p50,
            "ms",
            Target::None,
        );
        summary.add(
            "run start p50, Tier 2 (PostgreSQL + Redis)",
            t2_p50,
            "ms",
            Target::AtMost(RUN_START_TARGET_MS),
        );
        Ok(())
    })();
    if outcome.is_err() {
        eprintln!("instance A log (last 30 lines):\n{}", a.log_tail(30));
    }
    let _ = a.stop(Duration::from_secs(30));
    let _ = b.stop(Duration::from_secs(30));
    runs::kill_leftover_runners(runner_pids);
    drop(fake);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Opts> {
        Opts::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_to_everything() {
        let o = parse(&[]).unwrap();
        assert!(o.boot && o.rss && o.http && o.agents && o.runs);
        assert_eq!(o.duration, Duration::from_secs(10));
        assert_eq!(o.concurrency, vec![1, 16]);
        assert_eq!(o.boot_runs, 7);
    }

    #[test]
    fn selects_and_sets() {
        let o = parse(&["boot", "http", "--duration", "2", "--concurrency=1,4,16"]).unwrap();
        assert!(o.boot && !o.rss && o.http);
        assert_eq!(o.duration, Duration::from_secs(2));
        assert_eq!(o.concurrency, vec![1, 4, 16]);
        assert!(parse(&["--duration"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["fast"]).is_err());
    }

    #[test]
    fn run_options() {
        let o = parse(&[]).unwrap();
        assert!(o.agents && o.runs);
        assert_eq!(
            (o.seq_runs, o.concurrent_runs, o.llm_delay_ms),
            (200, 500, 3000)
        );
        assert_eq!(o.runs_timeout, Duration::from_secs(300));
        let o = parse(&[
            "runs",
            "--runs=20",
            "--concurrent-runs",
            "0",
            "--llm-delay",
            "100",
            "--runs-timeout",
            "60",
        ])
        .unwrap();
        assert!(o.runs && !o.agents && !o.boot && !o.http);
        assert_eq!(
            (o.seq_runs, o.concurrent_runs, o.llm_delay_ms),
            (20, 0, 100)
        );
        assert_eq!(o.runs_timeout, Duration::from_secs(60));
        assert!(parse(&["--runs", "0"]).is_err());
        assert!(parse(&["--runs-timeout", "0"]).is_err());
        assert!(parse(&["--concurrent-runs", "x"]).is_err());
        let o = parse(&["agents"]).unwrap();
        assert!(o.agents && !o.runs);
        let o = parse(&["tier2"]).unwrap();
        assert!(o.tier2 && !o.agents && !o.runs && !o.boot);
        assert!(
            !parse(&[]).unwrap().tier2,
            "tier2 needs services: never implied"
        );
    }

    #[test]
    fn keys_cover_the_ceiling_within_the_per_key_budget() {
        let o = parse(&["--duration", "10", "--warmup", "1"]).unwrap();
        let (keys, budget) = keys_for(&o);
        assert_eq!(keys, 1100);
        assert_eq!(budget, 1100 * PER_KEY_BUDGET);
        assert!(KEY_RATE_CEILING * 11 <= budget);
    }
}
