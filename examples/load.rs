//! sealpost load tool: measures a real `sealpost serve` process against floors taken in the same run.
//!
//! ```sh
//! cargo build --release --bins --examples
//! cargo run --release --example load -- [--smoke] [--backend embedded|scale-out|both] [--json PATH] [--idle N]
//! ```
//!
//! Per backend it reports send → WebSocket delivery → ack (closed loop with 1, 16 and 64 pairs; open loop at
//! 10% and 50% of the 64-pair maximum), idle authenticated WebSockets (RSS per socket), prekey bundle fetch
//! with one-time-key claim, a group send to 100 recipients against 100 single sealed sends, and the floors: an in-process axum WebSocket relay without storage, an axum JSON
//! endpoint, and the raw storage cost per message. See docs/benchmarks.md.

#[path = "load/client.rs"]
mod client;
#[path = "load/fanout.rs"]
mod fanout;
#[path = "load/floors.rs"]
mod floors;
#[path = "load/groups.rs"]
mod groups;
#[path = "load/harness.rs"]
mod harness;
#[path = "load/server.rs"]
mod server;
#[path = "load/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::client::{Account, Framing, Ws};
use crate::floors::{FloorServer, StorageFloor};
use crate::harness::{Fleet, HttpLoadResult, HttpSpec, Inspected, LoopResult, LoopSpec, PairSetup};
use crate::server::{Backend, Server, Services};
use crate::stats::{CLK_TCK, CpuProbe, rss_kb};

#[derive(Parser)]
#[command(name = "load", about = "Load tool for sealpost: throughput, latency, CPU and memory against floors")]
struct Args {
    /// Tiny counts (a few seconds per backend); fails unless every figure is produced and nothing is lost.
    #[arg(long)]
    smoke: bool,
    /// Which storage backend(s) to measure.
    #[arg(long, value_enum, default_value_t = BackendArg::Both)]
    backend: BackendArg,
    /// Where to write the JSON report (default: target/bench/latest.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Idle authenticated WebSockets to hold open (default 10000; 50 with --smoke).
    #[arg(long)]
    idle: Option<usize>,
    /// Record a `perf record` profile (DWARF call graphs) of the server during the 64-pair closed loop, to
    /// target/bench/perf-<backend>.data. Its overhead skews that run's figures.
    #[arg(long)]
    perf: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Embedded,
    ScaleOut,
    Both,
}

/// Sizes and durations of one run.
struct Plan {
    smoke: bool,
    warmup: Duration,
    warmup_max_per_pair: u64,
    closed: [(usize, Duration); 3],
    max_per_pair: u64,
    open: Duration,
    relay_floor: Duration,
    idle: usize,
    bundle_targets: usize,
    keys_per_target: u32,
    fetches: usize,
    fetch_cap: Duration,
    json_floor: Duration,
    storage: Duration,
    storage_max: u64,
    group: groups::GroupPlan,
    fanout: fanout::FanoutPlan,
}

const PAIRS: usize = 64;
const HTTP_CONCURRENCY: usize = 32;
const SETUP_CONCURRENCY: usize = 32;
/// Idle sockets opened from one loopback address (127.0.0.1, then .2, …): below the ephemeral port range.
const SOCKETS_PER_SOURCE: usize = 20_000;

impl Plan {
    fn new(smoke: bool, idle: Option<usize>) -> Plan {
        let s = Duration::from_secs_f64;
        if smoke {
            Plan {
                smoke,
                warmup: s(0.2),
                warmup_max_per_pair: 5,
                closed: [(1, s(0.3)), (16, s(0.3)), (PAIRS, s(0.5))],
                max_per_pair: 200,
                open: s(0.5),
                relay_floor: s(0.5),
                idle: idle.unwrap_or(50),
                bundle_targets: 4,
                keys_per_target: 10,
                fetches: 32,
                fetch_cap: s(10.0),
                json_floor: s(0.3),
                storage: s(0.3),
                storage_max: 2_000,
                group: groups::GroupPlan {
                    recipients: 20,
                    duration: s(0.3),
                    group_concurrency: 2,
                    single_concurrency: 8,
                },
                fanout: fanout::FanoutPlan { recipients: 4, duration: s(0.3), concurrency: 4 },
            }
        } else {
            Plan {
                smoke,
                warmup: s(1.0),
                warmup_max_per_pair: 100_000,
                closed: [(1, s(4.0)), (16, s(4.0)), (PAIRS, s(6.0))],
                max_per_pair: 10_000_000,
                open: s(5.0),
                relay_floor: s(6.0),
                idle: idle.unwrap_or(10_000),
                bundle_targets: 100,
                keys_per_target: 100,
                fetches: 9_000,
                fetch_cap: s(60.0),
                json_floor: s(4.0),
                storage: s(3.0),
                storage_max: 100_000_000,
                group: groups::GroupPlan {
                    recipients: 100,
                    duration: s(4.0),
                    group_concurrency: 4,
                    single_concurrency: HTTP_CONCURRENCY,
                },
                fanout: fanout::FanoutPlan { recipients: 16, duration: s(4.0), concurrency: 16 },
            }
        }
    }
}

/// Phase numbers, unique in the run, so a late delivery from one measurement can never count in another.
static PHASE: AtomicU32 = AtomicU32::new(1);

fn next_phase() -> u32 {
    PHASE.fetch_add(1, Ordering::Relaxed)
}

struct Ctx {
    plan: Plan,
    http: reqwest::Client,
    bin: PathBuf,
    services: Services,
    floor: FloorServer,
    floor_fleet: Fleet,
    bench_dir: PathBuf,
    perf: bool,
}

#[derive(Serialize)]
struct IdleResult {
    sockets: usize,
    rss_before_kb: u64,
    rss_after_kb: u64,
    per_socket_kb: f64,
    /// `sealpost_websockets_open` from the metrics endpoint while they were open.
    open_gauge: Option<f64>,
    seconds_to_register: f64,
    seconds_to_open: f64,
}

#[derive(Serialize)]
struct Ratios {
    /// 64-pair closed-loop send → deliver → ack msg/s ÷ relay floor msg/s.
    send_deliver_ack_vs_relay_floor: Option<f64>,
    /// Bundle fetch req/s ÷ axum JSON floor req/s.
    bundle_fetch_vs_json_floor: Option<f64>,
    /// Scale-out: 64-pair msg/s across two instances ÷ on one.
    two_instances_vs_one: Option<f64>,
}

#[derive(Serialize)]
struct TargetCheck {
    target: String,
    measured: String,
    met: bool,
}

#[derive(Serialize, Default)]
struct BackendReport {
    backend: &'static str,
    error: Option<String>,
    server_rss_start_kb: Option<u64>,
    server_rss_end_kb: Option<u64>,
    idle: Option<IdleResult>,
    warmup: Option<LoopResult>,
    closed: Vec<LoopResult>,
    open: Vec<LoopResult>,
    relay_floor: Option<LoopResult>,
    relay_floor_one: Option<LoopResult>,
    sealed: Option<LoopResult>,
    /// Scale-out: two instances, senders on one and recipients on the other.
    cross_instance: Option<LoopResult>,
    bundle: Option<HttpLoadResult>,
    json_floor: Option<HttpLoadResult>,
    storage_floor: Option<StorageFloor>,
    group: Option<groups::GroupResult>,
    fanout: Option<fanout::FanoutResult>,
    ratios: Option<Ratios>,
    targets: Vec<TargetCheck>,
    /// Missing figures, losses and errors: any of these fails the run.
    failures: Vec<String>,
    server_log_problems: Vec<String>,
    cleanup_warnings: Vec<String>,
    perf_data: Option<String>,
    /// Messages counted lost by some measurement that had still not arrived when the pairs' sockets closed.
    lost_never_arrived: Option<u64>,
}

impl BackendReport {
    /// Every send → deliver → ack measurement, the warm-up first.
    fn loops(&self) -> Vec<&LoopResult> {
        self.warmup
            .iter()
            .chain(&self.closed)
            .chain(&self.sealed)
            .chain(&self.open)
            .chain(&self.relay_floor)
            .chain(&self.relay_floor_one)
            .chain(&self.cross_instance)
            .collect()
    }
}

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    mem_total_kb: Option<u64>,
    cpu_model: Option<String>,
    kernel: Option<String>,
    loadavg_at_start: Option<String>,
    date_utc: Option<String>,
    git_commit: Option<String>,
    open_files_limit: Option<(u64, u64)>,
}

#[derive(Serialize)]
struct Report {
    tool: &'static str,
    smoke: bool,
    ok: bool,
    server_bin: String,
    clk_tck_assumed: u64,
    content_bytes: usize,
    machine: Machine,
    backends: Vec<BackendReport>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("load: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `<target>` of the running example (`<target>/<profile>/examples/load`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn server_binary(smoke: bool) -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("SEALPOST_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(format!("SEALPOST_BIN={} does not exist", path.display())) };
    }
    let target = target_dir();
    let release = target.join("release/sealpost");
    if release.is_file() {
        return Ok(release);
    }
    let debug = target.join("debug/sealpost");
    if smoke && debug.is_file() {
        return Ok(debug);
    }
    Err(format!(
        "no server binary at {}{}; build it with `cargo build --release --bin sealpost` or set SEALPOST_BIN",
        release.display(),
        if smoke { format!(" or {}", debug.display()) } else { String::new() }
    ))
}

/// Soft and hard RLIMIT_NOFILE of this process.
fn open_files_limit() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..].split_whitespace();
    let parse = |s: Option<&str>| s.map(|s| if s == "unlimited" { u64::MAX } else { s.parse().unwrap_or(0) });
    Some((parse(numbers.next())?, parse(numbers.next())?))
}

/// Makes sure this process (and the server, which inherits the limit) may open enough files: the idle
/// sockets plus a margin. Raises the soft limit up to the hard one with `prlimit(1)` when needed.
async fn ensure_open_files(idle: usize) -> Result<(), String> {
    let needed = idle as u64 + 1024;
    let Some((soft, hard)) = open_files_limit() else { return Ok(()) };
    if soft >= needed {
        return Ok(());
    }
    // Up to the hard limit anyone may; beyond it only a privileged process (root here), which is tried too.
    let raise_to = hard.max(needed);
    let status = tokio::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={raise_to}:{raise_to}"))
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if status.is_ok_and(|s| s.success()) && open_files_limit().is_some_and(|(soft, _)| soft >= needed) {
        return Ok(());
    }
    Err(format!(
        "{idle} idle sockets need about {needed} open files in this process and in the server, but the limit is \
         {soft} (hard {hard}); raise it first (e.g. `ulimit -n {needed}` in the shell that runs cargo, as root if \
         the hard limit is lower) or pass a smaller --idle"
    ))
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

async fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = tokio::process::Command::new(program).args(args).output().await.ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

async fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_total_kb: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok()),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned()),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        loadavg_at_start: read_trim("/proc/loadavg"),
        date_utc: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).await,
        git_commit: command_output("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"]).await,
        open_files_limit: open_files_limit(),
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let plan = Plan::new(args.smoke, args.idle);
    let bin = server_binary(plan.smoke)?;
    ensure_open_files(plan.idle).await?;
    let backends = match args.backend {
        BackendArg::Embedded => vec![Backend::Embedded],
        BackendArg::ScaleOut => vec![Backend::ScaleOut],
        BackendArg::Both => vec![Backend::Embedded, Backend::ScaleOut],
    };
    let services = Services::from_env();
    if backends.contains(&Backend::ScaleOut) {
        services.check().await?;
    }
    let bench_dir = target_dir().join("bench");
    let json_path = args.json.clone().unwrap_or_else(|| bench_dir.join("latest.json"));
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let machine = machine().await;
    println!(
        "sealpost load{} — server {} — {} CPUs, load average {} — CPU ticks assumed {CLK_TCK}/s",
        if plan.smoke { " (smoke)" } else { "" },
        bin.display(),
        machine.nproc,
        machine.loadavg_at_start.as_deref().unwrap_or("?"),
    );

    let floor = FloorServer::start()?;
    let floor_fleet = floor_fleet(&floor).await?;
    let ctx = Ctx { plan, http, bin: bin.clone(), services, floor, floor_fleet, bench_dir, perf: args.perf };

    let mut reports = Vec::new();
    for backend in backends {
        eprintln!("[{}] starting", backend.name());
        let report = run_backend(&ctx, backend).await;
        print_backend(&report, &ctx);
        reports.push(report);
    }
    let Ctx { floor, floor_fleet, plan, .. } = ctx;
    floor_fleet.close().await;
    floor.shutdown();

    let ok = reports.iter().all(|r| r.failures.is_empty());
    let report = Report {
        tool: "sealpost examples/load.rs",
        smoke: plan.smoke,
        ok,
        server_bin: bin.display().to_string(),
        clk_tck_assumed: CLK_TCK,
        content_bytes: client::CONTENT_BYTES,
        machine,
        backends: reports,
    };
    if let Some(parent) = json_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    println!("JSON report: {}", json_path.display());
    if ok {
        println!("result: every figure produced, no message lost");
    } else {
        println!("result: FAILED");
        for r in &report.backends {
            for failure in &r.failures {
                println!("  [{}] {failure}", r.backend);
            }
        }
    }
    Ok(ok)
}

/// The relay floor's 64 pairs: sockets on the in-process relay, senders PUT without authentication.
async fn floor_fleet(floor: &FloorServer) -> Result<Fleet, String> {
    let ws_base = floor.base.replacen("http://", "ws://", 1);
    let mut setups = Vec::new();
    for p in 0..PAIRS {
        let socket = client::connect(&format!("{ws_base}/ws/{p}"), None).await?;
        setups.push(PairSetup {
            url: format!("{}/relay/{p}", floor.base),
            authorization: None,
            access_key: None,
            registration_id: 1,
            socket,
        });
    }
    // The relay registers a socket when its upgrade completes; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Fleet::new(setups, Framing::Floor))
}

async fn run_backend(ctx: &Ctx, backend: Backend) -> BackendReport {
    let mut report = BackendReport { backend: backend.name(), ..Default::default() };
    let server = match server::start(&ctx.bin, backend, &ctx.services).await {
        Ok(server) => server,
        Err(err) => {
            report.failures.push(format!("server: {err}"));
            report.error = Some(err);
            return report;
        }
    };
    report.server_rss_start_kb = rss_kb(server.pid);
    if let Err(err) = measure(ctx, &server, &mut report).await {
        report.failures.push(err.clone());
        report.error = Some(err);
    }
    report.server_rss_end_kb = rss_kb(server.pid);
    report.server_log_problems = server.problems();
    report.cleanup_warnings = server.stop().await;
    check(&mut report, backend);
    report
}

fn stage(backend: Backend, what: &str) {
    eprintln!("[{}] {what}", backend.name());
}

async fn measure(ctx: &Ctx, server: &Server, report: &mut BackendReport) -> Result<(), String> {
    let plan = &ctx.plan;
    let http = &ctx.http;
    let backend = server.backend;
    let probe = CpuProbe::Process(server.pid);
    let services = backend == Backend::ScaleOut;

    // c. Idle sockets first, on a fresh server, so that they are the only sockets open.
    stage(backend, &format!("idle sockets: registering {} accounts", plan.idle));
    match idle_sockets(http, server, plan.idle).await {
        Ok(idle) => report.idle = Some(idle),
        // Recorded (it fails the run) but the other figures are still worth having.
        Err(err) => report.failures.push(err),
    }

    // a. Pairs: 64 senders and 64 recipients with keys, each recipient on its socket.
    stage(backend, "registering sender/recipient pairs");
    let senders = client::register_many(http, &server.base, PAIRS, SETUP_CONCURRENCY).await?;
    let recipients = client::register_many(http, &server.base, PAIRS, SETUP_CONCURRENCY).await?;
    let mut access_keys = Vec::with_capacity(recipients.len());
    for recipient in &recipients {
        client::upload_keys(http, &server.base, recipient, 0).await?;
        access_keys.push(B64.encode(client::set_access_key(http, &server.base, recipient).await?));
    }
    let fleet = pair_fleet(&server.base, &server.base, &senders, &recipients, &access_keys).await?;

    let result = relay_measurements(ctx, server, &fleet, &probe, services, report).await;
    let problem = fleet.problem();
    report.lost_never_arrived = Some(fleet.still_missing());
    fleet.close().await;
    result?;
    if let Some(problem) = problem {
        return Err(format!("receiver: {problem}"));
    }

    // Two scale-out instances: senders on the first, recipients' sockets on the second.
    if services {
        stage(backend, "two instances, 64 pairs");
        match cross_instance(ctx, server, &senders, &recipients, &access_keys).await {
            Ok(result) => report.cross_instance = Some(result),
            Err(err) => report.failures.push(err),
        }
    }

    // Recipients with three devices each.
    stage(backend, &format!("{}-device fan-out", fanout::DEVICES));
    match fanout::measure(http, &server.base, &plan.fanout, &senders[0], &probe, services, next_phase()).await {
        Ok(result) => report.fanout = Some(result),
        Err(err) => report.failures.push(err),
    }

    // d. Bundle fetch with one-time-key claim.
    stage(backend, &format!("bundle fetch: {} targets with {} keys", plan.bundle_targets, plan.keys_per_target));
    let targets = client::register_many(http, &server.base, plan.bundle_targets, SETUP_CONCURRENCY).await?;
    upload_pools(http, &server.base, &targets, plan.keys_per_target).await?;
    let bundle = bundle_fetch(ctx, server, &targets, &senders, &probe, services).await;
    report.bundle = Some(bundle);

    // f. A group send against single sends to the same recipients.
    stage(backend, &format!("group send to {} recipients against single sends", plan.group.recipients));
    match groups::measure(http, &server.base, &plan.group, &probe, services, next_phase).await {
        Ok(group) => report.group = Some(group),
        Err(err) => report.failures.push(err),
    }

    // e(ii). axum JSON floor.
    stage(backend, "floors: JSON, storage");
    let json_url = format!("{}/json", ctx.floor.base);
    let client = http.clone();
    report.json_floor = Some(
        harness::http_load(HttpSpec {
            label: "axum JSON floor".into(),
            concurrency: HTTP_CONCURRENCY,
            max_requests: usize::MAX,
            duration: plan.json_floor,
            make: Arc::new(move |_| client.get(&json_url)),
            inspect: inspect_json,
            counts_claims: false,
            probe: &FloorServer::probe(),
            with_services: false,
        })
        .await,
    );

    // e(iii). Raw storage cost per message.
    let storage = match backend {
        Backend::ScaleOut => {
            let prefix = format!("bench_floor_{}:", uuid::Uuid::new_v4().simple());
            let result = floors::redis_floor(&ctx.services.redis_url, &prefix, plan.storage, plan.storage_max).await;
            if let Err(err) = server::delete_prefix(&ctx.services.redis_url, &prefix).await {
                report.cleanup_warnings.push(format!("could not delete Redis keys {prefix}*: {err}"));
            }
            result
        }
        Backend::Embedded => {
            let dir = std::env::temp_dir().join(format!("sealpost-bench-floor-{}", uuid::Uuid::new_v4().simple()));
            let result = floors::sqlite_floor(&dir, plan.storage, plan.storage_max).await;
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
    };
    match storage {
        Ok(floor) => report.storage_floor = Some(floor),
        Err(err) => report.failures.push(err),
    }
    Ok(())
}

/// Pairs whose senders PUT to `send_base` and whose recipients hold sockets on `socket_base`.
async fn pair_fleet(
    send_base: &str,
    socket_base: &str,
    senders: &[Account],
    recipients: &[Account],
    access_keys: &[String],
) -> Result<Fleet, String> {
    let ws_url = format!("{}/v1/websocket", socket_base.replacen("http://", "ws://", 1));
    let mut setups = Vec::new();
    for ((sender, recipient), access_key) in senders.iter().zip(recipients).zip(access_keys) {
        let mut socket = client::connect(&ws_url, Some(&recipient.token)).await?;
        client::await_queue_empty(&mut socket, Duration::from_secs(10)).await?;
        setups.push(PairSetup {
            url: format!("{send_base}/v1/messages/{}", recipient.aci),
            authorization: Some(format!("Bearer {}", sender.token)),
            access_key: Some(access_key.clone()),
            registration_id: recipient.registration_id,
            socket,
        });
    }
    Ok(Fleet::new(setups, Framing::Sealpost))
}

/// The 64-pair closed loop with a second instance holding every recipient's socket: each message crosses
/// from one instance to the other through Redis. CPU is both instances'.
async fn cross_instance(
    ctx: &Ctx,
    server: &Server,
    senders: &[Account],
    recipients: &[Account],
    access_keys: &[String],
) -> Result<LoopResult, String> {
    let peer = server::start_peer(&ctx.bin, server).await.map_err(|e| format!("second instance: {e}"))?;
    let fleet = match pair_fleet(&server.base, &peer.base, senders, recipients, access_keys).await {
        Ok(fleet) => fleet,
        Err(err) => {
            peer.stop().await;
            return Err(format!("second instance: {err}"));
        }
    };
    let probe = CpuProbe::Processes(vec![server.pid, peer.pid]);
    let spec = LoopSpec {
        label: "two instances, 64 pairs".into(),
        pairs: PAIRS,
        phase: next_phase(),
        duration: ctx.plan.closed[2].1,
        max_per_pair: ctx.plan.max_per_pair,
        rate: None,
        sealed: false,
        probe: &probe,
        with_services: true,
    };
    let result = harness::run_loop(&ctx.http, &fleet, spec).await;
    let problem = fleet.problem();
    fleet.close().await;
    peer.stop().await;
    match problem {
        Some(problem) => Err(format!("two instances: receiver: {problem}")),
        None => Ok(result),
    }
}

async fn relay_measurements(
    ctx: &Ctx,
    server: &Server,
    fleet: &Fleet,
    probe: &CpuProbe,
    services: bool,
    report: &mut BackendReport,
) -> Result<(), String> {
    let plan = &ctx.plan;
    let http = &ctx.http;
    let backend = server.backend;
    let spec = |label: String, pairs: usize, duration: Duration, max: u64, rate: Option<f64>| LoopSpec {
        label,
        pairs,
        phase: next_phase(),
        duration,
        max_per_pair: max,
        rate,
        sealed: false,
        probe,
        with_services: services,
    };

    stage(backend, "warm-up");
    let warmup =
        harness::run_loop(http, fleet, spec("warm-up".into(), PAIRS, plan.warmup, plan.warmup_max_per_pair, None))
            .await;
    report.warmup = Some(warmup);

    for &(pairs, duration) in &plan.closed {
        let label = format!("closed loop, {pairs} pair{}", if pairs == 1 { "" } else { "s" });
        stage(backend, &label);
        let perf = if ctx.perf && pairs == PAIRS { start_perf(ctx, server).await } else { None };
        let result = harness::run_loop(http, fleet, spec(label, pairs, duration, plan.max_per_pair, None)).await;
        if let Some((child, path)) = perf {
            stop_perf(child).await;
            report.perf_data = Some(path);
        }
        report.closed.push(result);
        if pairs == PAIRS {
            // e(i). The relay floor right after, with the same harness and pair count.
            stage(backend, "relay floor, 64 pairs");
            let floor_spec = LoopSpec {
                label: "relay floor, 64 pairs".into(),
                pairs: PAIRS,
                phase: next_phase(),
                duration: plan.relay_floor,
                max_per_pair: plan.max_per_pair,
                rate: None,
                sealed: false,
                probe: &FloorServer::probe(),
                with_services: false,
            };
            let floor = harness::run_loop(http, &ctx.floor_fleet, floor_spec).await;
            if let Some(problem) = ctx.floor_fleet.problem() {
                return Err(format!("relay floor receiver: {problem}"));
            }
            report.relay_floor = Some(floor);
        }
        if pairs == 1 {
            // The 1-pair relay floor, for the 1-pair latency ratio.
            stage(backend, "relay floor, 1 pair");
            let floor_spec = LoopSpec {
                label: "relay floor, 1 pair".into(),
                pairs: 1,
                phase: next_phase(),
                duration,
                max_per_pair: plan.max_per_pair,
                rate: None,
                sealed: false,
                probe: &FloorServer::probe(),
                with_services: false,
            };
            report.relay_floor_one = Some(harness::run_loop(http, &ctx.floor_fleet, floor_spec).await);
        }
    }

    // Sealed sender, the privacy default: no sender credentials, the recipient's access key instead.
    stage(backend, "sealed sender, 64 pairs");
    let label = "sealed sender, 64 pairs".to_string();
    let sealed = LoopSpec { sealed: true, ..spec(label, PAIRS, plan.closed[2].1, plan.max_per_pair, None) };
    report.sealed = Some(harness::run_loop(http, fleet, sealed).await);

    // b. Open loop at 10% and 50% of the 64-pair maximum.
    let max = report.closed.last().map(|r| r.msgs_per_sec).unwrap_or(0.0);
    if max <= 0.0 {
        return Err("the 64-pair closed loop delivered nothing; no open-loop rate to derive".into());
    }
    for share in [0.10, 0.50] {
        let rate = max * share;
        stage(backend, &format!("open loop at {:.0}% ({rate:.0} msg/s)", share * 100.0));
        let label = format!("open loop {:.0}% ({rate:.0} msg/s)", share * 100.0);
        report.open.push(harness::run_loop(http, fleet, spec(label, PAIRS, plan.open, u64::MAX, Some(rate))).await);
    }
    Ok(())
}

async fn start_perf(ctx: &Ctx, server: &Server) -> Option<(tokio::process::Child, String)> {
    let _ = std::fs::create_dir_all(&ctx.bench_dir);
    let path = ctx.bench_dir.join(format!("perf-{}.data", server.backend.name()));
    let child = tokio::process::Command::new("perf")
        .args(["record", "--call-graph", "dwarf,16384", "-F", "499", "-p", &server.pid.to_string(), "-o"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(child) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((child, path.display().to_string()))
        }
        Err(err) => {
            eprintln!("perf: {err} (install linux-perf)");
            None
        }
    }
}

async fn stop_perf(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill").arg("-INT").arg(pid.to_string()).status().await;
    }
    if tokio::time::timeout(Duration::from_secs(60), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Registers `n` accounts, then opens one authenticated socket per account and reads the server's RSS
/// before and after.
async fn idle_sockets(http: &reqwest::Client, server: &Server, n: usize) -> Result<IdleResult, String> {
    let started = tokio::time::Instant::now();
    let accounts = client::register_many_with_keys(http, &server.base, n, SETUP_CONCURRENCY).await?;
    let seconds_to_register = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kb = rss_kb(server.pid).ok_or("cannot read the server's VmRSS")?;
    stage(server.backend, &format!("idle sockets: opening {n}"));
    let started = tokio::time::Instant::now();
    let ws_url = format!("{}/v1/websocket", server.base.replacen("http://", "ws://", 1));
    let accounts = Arc::new(accounts);
    let next = Arc::new(AtomicUsize::new(0));
    let held: Arc<Mutex<Vec<Ws>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut workers = Vec::new();
    for _ in 0..SETUP_CONCURRENCY.min(n).max(1) {
        let (accounts, next, held, ws_url) = (accounts.clone(), next.clone(), held.clone(), ws_url.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(account) = accounts.get(i) else { return Ok::<(), String>(()) };
                let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (i / SOCKETS_PER_SOURCE) as u8);
                let mut socket = client::connect_from(&ws_url, Some(&account.token), Some(source.into())).await?;
                client::await_queue_empty(&mut socket, Duration::from_secs(30)).await?;
                held.lock().unwrap_or_else(|p| p.into_inner()).push(socket);
            }
        }));
    }
    let mut failure = None;
    for worker in workers {
        match worker.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failure = failure.or(Some(err)),
            Err(err) => failure = failure.or(Some(format!("socket task: {err}"))),
        }
    }
    let seconds_to_open = started.elapsed().as_secs_f64();
    let sockets = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(err) = failure {
        return Err(format!("idle sockets: {} of {n} opened, then: {err}", sockets.len()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kb = rss_kb(server.pid).ok_or("cannot read the server's VmRSS")?;
    let open_gauge = server.metric(http, "sealpost_websockets_open").await;
    let opened = sockets.len();
    drop(sockets);
    // Let the server notice the closed sockets before the next measurement.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if server.metric(http, "sealpost_websockets_open").await.is_none_or(|open| open <= 0.0) {
            break;
        }
    }
    Ok(IdleResult {
        sockets: opened,
        rss_before_kb,
        rss_after_kb,
        per_socket_kb: (rss_after_kb as f64 - rss_before_kb as f64) / opened.max(1) as f64,
        open_gauge,
        seconds_to_register,
        seconds_to_open,
    })
}

/// Uploads `keys` one-time keys of each kind for every target, a few targets at a time.
async fn upload_pools(http: &reqwest::Client, base: &str, targets: &[Account], keys: u32) -> Result<(), String> {
    let targets = Arc::new(targets.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (http, base, targets, next) = (http.clone(), base.to_owned(), targets.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(i) else { return Ok::<(), String>(()) };
                client::upload_keys(&http, &base, target, keys).await?;
            }
        }));
    }
    for worker in workers {
        worker.await.map_err(|e| format!("upload task: {e}"))??;
    }
    Ok(())
}

fn inspect_json(body: &[u8]) -> Result<Inspected, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if value["status"] != "ok" {
        return Err(format!("unexpected document {value}"));
    }
    Ok(Inspected::default())
}

fn inspect_bundle(body: &[u8]) -> Result<Inspected, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let device = &value["devices"][0];
    if !device["signedPreKey"].is_object() || !device["pqPreKey"].is_object() {
        return Err(format!("not a bundle: {value}"));
    }
    Ok(Inspected {
        ec: device["preKey"].is_object(),
        kem: device["pqPreKey"]["keyId"].as_u64().is_some_and(|id| id != client::LAST_RESORT_KEY_ID),
    })
}

async fn bundle_fetch(
    ctx: &Ctx,
    server: &Server,
    targets: &[Account],
    requesters: &[Account],
    probe: &CpuProbe,
    services: bool,
) -> HttpLoadResult {
    let urls: Vec<String> = targets.iter().map(|t| format!("{}/v1/keys/{}/1", server.base, t.aci)).collect();
    let auth: Vec<String> = requesters.iter().map(|r| format!("Bearer {}", r.token)).collect();
    let client = ctx.http.clone();
    let make: harness::MakeRequest =
        Arc::new(move |i| client.get(&urls[i % urls.len()]).header("authorization", &auth[i % auth.len()]));
    harness::http_load(HttpSpec {
        label: "bundle fetch with claim".into(),
        concurrency: HTTP_CONCURRENCY,
        max_requests: ctx.plan.fetches,
        duration: ctx.plan.fetch_cap,
        make,
        inspect: inspect_bundle,
        counts_claims: true,
        probe,
        with_services: services,
    })
    .await
}

// ---- checks and output ---------------------------------------------------------------------------------

fn loss_summary(loops: &[&LoopResult], never: Option<u64>) -> String {
    let delivered: u64 = loops.iter().map(|r| r.delivered).sum();
    let lost: u64 = loops.iter().map(|r| r.lost).sum();
    let duplicates: u64 = loops.iter().map(|r| r.duplicates).sum();
    let stray: u64 = loops.iter().map(|r| r.stray).sum();
    let late: u64 = loops.iter().map(|r| r.late_from_earlier).sum();
    let late_max = loops.iter().filter_map(|r| r.late_max_ms).fold(0.0, f64::max);
    let errors: u64 = loops.iter().map(|r| r.send_errors).sum();
    let mut text = format!("{delivered} delivered in time, {lost} lost");
    if lost > 0 {
        text.push_str(&format!(
            " (over 5 s; {late} of them arrived later, up to {:.1} s after the send; {} never did)",
            late_max / 1000.0,
            never.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
        ));
    }
    if duplicates + stray + errors > 0 {
        text.push_str(&format!(", {duplicates} duplicates, {stray} strays, {errors} send errors"));
    }
    text
}

fn target_check(target: String, measured: Option<f64>, unit: &str, met: impl Fn(f64) -> bool) -> TargetCheck {
    TargetCheck {
        target,
        measured: measured.map(|m| format!("{m:.3}{unit}")).unwrap_or_else(|| "not measured".into()),
        met: measured.is_some_and(met),
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| a / b)
}

/// Fills in ratios, targets and the failures (missing figures, losses, errors).
fn check(report: &mut BackendReport, backend: Backend) {
    let mut failures = std::mem::take(&mut report.failures);
    let loops = report.loops();
    for result in &loops {
        if !result.lossless() {
            failures.push(format!(
                "{}: sent {} delivered {} lost {} duplicates {} stray {} send errors {}{}",
                result.label,
                result.sent,
                result.delivered,
                result.lost,
                result.duplicates,
                result.stray,
                result.send_errors,
                result.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            ));
        }
        if result.latency.is_none() || result.server_cpu_us_per_msg.is_none() || result.msgs_per_sec <= 0.0 {
            failures.push(format!("{}: figures missing", result.label));
        }
    }
    if report.closed.len() != 3 {
        failures.push(format!("closed loops: {} of 3 measured", report.closed.len()));
    }
    if report.open.len() != 2 {
        failures.push(format!("open loops: {} of 2 measured", report.open.len()));
    }
    if report.relay_floor.is_none() || report.relay_floor_one.is_none() {
        failures.push("relay floor not measured".into());
    }
    if report.sealed.is_none() {
        failures.push("sealed-sender loop not measured".into());
    }
    if backend == Backend::ScaleOut && report.cross_instance.is_none() {
        failures.push("two instances not measured".into());
    }
    for (name, result) in [("bundle fetch", &report.bundle), ("JSON floor", &report.json_floor)] {
        match result {
            Some(r) if r.errors == 0 && r.ok > 0 && r.latency.is_some() && r.server_cpu_us_per_request.is_some() => {}
            Some(r) => failures.push(format!(
                "{name}: {} ok, {} errors{}",
                r.ok,
                r.errors,
                r.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            )),
            None => failures.push(format!("{name} not measured")),
        }
    }
    match &report.idle {
        Some(idle) if idle.rss_after_kb > 0 => {}
        _ => failures.push("idle sockets not measured".into()),
    }
    match &report.storage_floor {
        Some(floor) if floor.messages > 0 => {}
        _ => failures.push("storage floor not measured".into()),
    }
    match &report.group {
        Some(group) => {
            for mode in [&group.group, &group.single] {
                if !mode.lossless() {
                    failures.push(format!(
                        "{}: expected {} delivered {} lost {} duplicates {} send errors {}{}",
                        mode.label,
                        mode.expected,
                        mode.deliveries,
                        mode.lost,
                        mode.duplicates,
                        mode.send_errors,
                        mode.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
                    ));
                }
                if mode.deliveries == 0 || mode.latency.is_none() || mode.server_cpu_us_per_delivery.is_none() {
                    failures.push(format!("{}: figures missing", mode.label));
                }
            }
        }
        None => failures.push("group send not measured".into()),
    }
    match &report.fanout {
        Some(f) if f.lossless() && f.latency.is_some() && f.server_cpu_us_per_msg.is_some() => {}
        Some(f) => failures.push(format!(
            "{}: sent {} expected {} delivered {} lost {} duplicates {} send errors {}{}",
            f.label,
            f.sent,
            f.expected,
            f.deliveries,
            f.lost,
            f.duplicates,
            f.send_errors,
            f.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        )),
        None => failures.push("fan-out not measured".into()),
    }
    if let Some(error) = &report.error
        && !failures.contains(error)
    {
        failures.push(error.clone());
    }

    let send = report.closed.iter().find(|r| r.pairs == PAIRS).map(|r| r.msgs_per_sec).unwrap_or(0.0);
    let relay = report.relay_floor.as_ref().map(|r| r.msgs_per_sec).unwrap_or(0.0);
    let fetch = report.bundle.as_ref().map(|r| r.per_sec).unwrap_or(0.0);
    let json = report.json_floor.as_ref().map(|r| r.per_sec).unwrap_or(0.0);
    let ratios = Ratios {
        send_deliver_ack_vs_relay_floor: ratio(send, relay),
        bundle_fetch_vs_json_floor: ratio(fetch, json),
        two_instances_vs_one: ratio(report.cross_instance.as_ref().map(|r| r.msgs_per_sec).unwrap_or(0.0), send),
    };

    let scale_out = backend == Backend::ScaleOut;
    let want = if scale_out { 0.45 } else { 0.5 };
    let lossless = loops.iter().all(|r| r.lossless());
    let p99_10 = report.open.first().and_then(|r| r.latency).map(|l| l.p99_us / 1000.0);
    let p999_10 = report.open.first().and_then(|r| r.latency).map(|l| l.p999_us / 1000.0);
    let idle = report.idle.as_ref().map(|i| i.per_socket_kb);
    let one = report.closed.iter().find(|r| r.pairs == 1);
    let one_floor_p50 = report.relay_floor_one.as_ref().and_then(|r| r.latency).map(|l| l.p50_us);
    let p50_ratio = one.and_then(|r| r.latency).zip(one_floor_p50).map(|(l, floor)| l.p50_us / floor);
    let one_cpu = one.and_then(|r| r.server_cpu_us_per_msg);
    let cpu_want = if scale_out { 80.0 } else { 100.0 };
    let bundle_want = if scale_out { 0.35 } else { 0.4 };
    let targets = vec![
        target_check(
            format!("send→deliver→ack (64 pairs) ≥ {want} × relay floor"),
            ratios.send_deliver_ack_vs_relay_floor,
            " ×",
            |r| r >= want,
        ),
        TargetCheck {
            target: "zero loss (every message received exactly once)".into(),
            measured: format!(
                "{} sent, {} lost, {} duplicates, {} strays",
                loops.iter().map(|r| r.sent).sum::<u64>(),
                loops.iter().map(|r| r.lost).sum::<u64>(),
                loops.iter().map(|r| r.duplicates).sum::<u64>(),
                loops.iter().map(|r| r.stray).sum::<u64>()
            ),
            met: lossless && !loops.is_empty(),
        },
        target_check("1 pair: p50 ≤ 2 × the 1-pair relay floor's p50".into(), p50_ratio, " ×", |r| r <= 2.0),
        target_check(format!("1 pair: server CPU ≤ {cpu_want} µs per message"), one_cpu, " µs", |us| {
            us <= cpu_want
        }),
        target_check("p99 send→deliver at 10% load ≤ 1 ms".into(), p99_10, " ms", |ms| ms <= 1.0),
        target_check("p99.9 send→deliver at 10% load ≤ 3 ms".into(), p999_10, " ms", |ms| ms <= 3.0),
        target_check("idle WebSocket ≤ 8 kB RSS each".into(), idle, " kB", |kb| kb <= 8.0),
        target_check(
            format!("bundle fetch with claim ≥ {bundle_want} × axum JSON floor"),
            ratios.bundle_fetch_vs_json_floor,
            " ×",
            |r| r >= bundle_want,
        ),
    ];
    report.ratios = Some(ratios);
    report.targets = targets;
    report.failures = failures;
}

fn num(value: f64) -> String {
    let rounded = value.round() as u64;
    let digits = rounded.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into())
}

fn services_cost(redis: Option<f64>, postgres: Option<f64>) -> String {
    match (redis, postgres) {
        (Some(r), Some(p)) => format!("{r:.0}+{p:.0}"),
        _ => "-".into(),
    }
}

fn print_backend(report: &BackendReport, ctx: &Ctx) {
    println!();
    println!("== {} ==", report.backend);
    if let Some(error) = &report.error {
        println!("ERROR: {error}");
    }
    let relay = report.relay_floor.as_ref().map(|r| r.msgs_per_sec).unwrap_or(0.0);
    println!(
        "{:<36} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>7}",
        "send→deliver→ack, 512 B", "msg/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU µs", "rds+pg µs", "lost/dup", "×floor"
    );
    // The warm-up counts for losses but is not a figure.
    let loops = report.loops().into_iter().skip(usize::from(report.warmup.is_some()));
    for r in loops {
        let floor = if r.label.starts_with("relay floor") { "1".into() } else { opt(ratio(r.msgs_per_sec, relay), 2) };
        println!(
            "{:<36} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>7}",
            r.label,
            num(r.msgs_per_sec),
            opt(r.latency.map(|l| l.p50_us), 0),
            opt(r.latency.map(|l| l.p99_us), 0),
            opt(r.latency.map(|l| l.p999_us), 0),
            opt(r.server_cpu_us_per_msg, 1),
            services_cost(r.redis_cpu_us_per_msg, r.postgres_cpu_us_per_msg),
            format!("{}/{}", r.lost, r.duplicates),
            floor,
        );
    }
    let json = report.json_floor.as_ref().map(|r| r.per_sec).unwrap_or(0.0);
    println!(
        "{:<36} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>7}",
        "HTTP, concurrency 32", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "CPU µs", "rds+pg µs", "errors", "×floor"
    );
    for r in report.bundle.iter().chain(&report.json_floor) {
        let floor = if r.label.contains("floor") { "1".into() } else { opt(ratio(r.per_sec, json), 2) };
        println!(
            "{:<36} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>7}",
            r.label,
            num(r.per_sec),
            opt(r.latency.map(|l| l.p50_us), 0),
            opt(r.latency.map(|l| l.p99_us), 0),
            opt(r.latency.map(|l| l.p999_us), 0),
            opt(r.server_cpu_us_per_request, 1),
            services_cost(r.redis_cpu_us_per_request, r.postgres_cpu_us_per_request),
            r.errors,
            floor,
        );
    }
    if let Some(b) = &report.bundle {
        println!(
            "  one-time keys claimed: EC {} / {}, Kyber {} / {} ({} targets × {} keys)",
            b.one_time_ec.unwrap_or(0),
            b.ok,
            b.one_time_kem.unwrap_or(0),
            b.ok,
            ctx.plan.bundle_targets,
            ctx.plan.keys_per_target
        );
    }
    if let Some(s) = &report.storage_floor {
        println!(
            "storage floor: {}: {} msg/s ({} ops/msg, {} ops/s)",
            s.label,
            num(s.msgs_per_sec),
            s.ops_per_msg,
            num(s.ops_per_sec)
        );
    }
    if let Some(i) = &report.idle {
        println!(
            "idle WebSockets: {} open (gauge {}), server RSS {:.1} MB → {:.1} MB = {:.1} kB per socket",
            i.sockets,
            opt(i.open_gauge, 0),
            i.rss_before_kb as f64 / 1024.0,
            i.rss_after_kb as f64 / 1024.0,
            i.per_socket_kb
        );
    }
    if let (Some(start), Some(end)) = (report.server_rss_start_kb, report.server_rss_end_kb) {
        println!("server RSS: {:.1} MB at start, {:.1} MB at the end", start as f64 / 1024.0, end as f64 / 1024.0);
    }
    if let Some(r) = report.ratios.as_ref().and_then(|r| r.two_instances_vs_one) {
        println!("two instances (sender on one, recipient on the other) ÷ one instance, 64 pairs: {r:.2} ×");
    }
    if let Some(f) = &report.fanout {
        println!(
            "{}: {} msg/s = {} deliveries/s, p50 {} µs, p99 {} µs, server CPU {} µs per message ({} per device), \
             lost/dup {}/{}",
            f.label,
            num(f.msgs_per_sec),
            num(f.deliveries_per_sec),
            opt(f.latency.map(|l| l.p50_us), 0),
            opt(f.latency.map(|l| l.p99_us), 0),
            opt(f.server_cpu_us_per_msg, 1),
            opt(f.server_cpu_us_per_delivery, 1),
            f.lost,
            f.duplicates
        );
    }
    if let Some(g) = &report.group {
        println!(
            "{:<36} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}",
            format!("groups of {}, 561 B each", g.recipients),
            "group/s",
            "deliv/s",
            "p50 µs",
            "p99 µs",
            "CPU µs",
            "rds+pg µs",
            "lost/dup"
        );
        for m in [&g.group, &g.single] {
            println!(
                "{:<36} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}",
                m.label,
                format!("{:.1}", m.group_msgs_per_sec),
                num(m.deliveries_per_sec),
                opt(m.latency.map(|l| l.p50_us), 0),
                opt(m.latency.map(|l| l.p99_us), 0),
                opt(m.server_cpu_us_per_delivery, 1),
                opt(m.services_cpu_us_per_delivery, 1),
                format!("{}/{}", m.lost, m.duplicates),
            );
        }
        println!("  server CPU per recipient device, group ÷ single: {}", opt(g.cpu_per_delivery_ratio, 2));
    }
    let loops = report.loops();
    println!("messages: {}", loss_summary(&loops, report.lost_never_arrived));
    println!("targets:");
    for t in &report.targets {
        println!("  {:<7} {:<52} {}", if t.met { "MET" } else { "MISSED" }, t.target, t.measured);
    }
    if !report.server_log_problems.is_empty() {
        println!(
            "server logged {} warning/error line(s), first: {}",
            report.server_log_problems.len(),
            report.server_log_problems[0]
        );
    }
    for warning in &report.cleanup_warnings {
        println!("cleanup: {warning}");
    }
    for failure in &report.failures {
        println!("FAILURE: {failure}");
    }
}
