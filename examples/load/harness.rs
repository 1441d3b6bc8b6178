//! The load shapes: closed-loop and open-loop send → deliver → ack over a fleet of sender/recipient pairs,
//! and a fixed-concurrency HTTP request loop. The same code drives sealpost and the floors.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::client::{self, Delivery, Framing, Health, Stamp, Ws};
use crate::stats::{CpuProbe, CpuSpan, CpuUsed, Percentiles, now_ns, per, percentiles};

/// One sender/recipient pair: where the sender PUTs, and what the recipient's socket received.
pub struct Pair {
    pub url: String,
    /// `Authorization` header value of the sender, if the target wants one.
    pub authorization: Option<String>,
    /// The recipient's unidentified-access key (base64) for sealed-sender sends, if it has one.
    pub access_key: Option<String>,
    pub registration_id: u16,
    pub deliveries: tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>,
    pub health: Arc<Health>,
    /// (phase, seq) of messages an earlier measurement counted as lost: if one arrives later it is late,
    /// not a stray.
    pub missing: Mutex<HashSet<(u32, u64)>>,
}

/// Pairs whose recipients hold open, acknowledging sockets.
pub struct Fleet {
    pub pairs: Vec<Arc<Pair>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How to reach pair `i`: the sender's URL and header, the recipient's registration id and its open socket.
pub struct PairSetup {
    pub url: String,
    pub authorization: Option<String>,
    pub access_key: Option<String>,
    pub registration_id: u16,
    pub socket: Ws,
}

impl Fleet {
    pub fn new(setups: Vec<PairSetup>, framing: Framing) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let mut pairs = Vec::new();
        let mut tasks = Vec::new();
        for (i, setup) in setups.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            let health = Arc::new(Health::default());
            tasks.push(client::spawn_receiver(setup.socket, framing, i as u32, tx, health.clone(), stop_rx.clone()));
            pairs.push(Arc::new(Pair {
                url: setup.url,
                authorization: setup.authorization,
                access_key: setup.access_key,
                registration_id: setup.registration_id,
                deliveries: tokio::sync::Mutex::new(rx),
                health,
                missing: Mutex::default(),
            }));
        }
        Fleet { pairs, stop, tasks }
    }

    /// The first receiver problem, if any (a socket the server closed, unreadable frames).
    pub fn problem(&self) -> Option<String> {
        self.pairs.iter().find_map(|p| p.health.problem())
    }

    /// Messages counted lost that have not arrived since.
    pub fn still_missing(&self) -> u64 {
        self.pairs.iter().map(|p| p.missing.lock().map(|m| m.len() as u64).unwrap_or(0)).sum()
    }

    pub async fn close(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Figures of one send → deliver → ack measurement.
#[derive(Debug, Clone, Serialize)]
pub struct LoopResult {
    pub label: String,
    /// `closed` (next message after the previous one arrived) or `open` (fixed schedule).
    pub mode: &'static str,
    pub pairs: usize,
    /// Offered rate of an open loop, messages per second over all pairs.
    pub target_rate: Option<f64>,
    pub seconds: f64,
    /// Sends answered 200.
    pub sent: u64,
    /// Distinct messages received on the right socket.
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Deliveries that were never sent, were delivered before, or reached the wrong recipient.
    pub stray: u64,
    /// Messages an earlier measurement counted as lost that arrived during this one.
    pub late_from_earlier: u64,
    /// Send → receipt time of the latest of those.
    pub late_max_ms: Option<f64>,
    pub send_errors: u64,
    pub first_error: Option<String>,
    pub msgs_per_sec: f64,
    pub latency: Option<Percentiles>,
    pub server_cpu_us_per_msg: Option<f64>,
    pub client_cpu_us_per_msg: Option<f64>,
    pub redis_cpu_us_per_msg: Option<f64>,
    pub postgres_cpu_us_per_msg: Option<f64>,
}

impl LoopResult {
    pub fn lossless(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.stray == 0 && self.send_errors == 0 && self.sent > 0
    }
}

/// What one pair saw during a measurement.
#[derive(Default)]
struct PairOutcome {
    /// Sends accepted with 200.
    sent: u64,
    /// Sequence numbers used (accepted or not): deliveries beyond are strays.
    attempted: u64,
    /// seq → times received.
    received: HashMap<u64, u32>,
    /// Sends that failed (never accepted, so never owed).
    failed: HashSet<u64>,
    stray: u64,
    late: u64,
    late_max_ns: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
}

impl PairOutcome {
    fn take(&mut self, pair: &Pair, phase: u32, delivery: Delivery) -> bool {
        if delivery.wrong_pair {
            self.stray += 1;
            return false;
        }
        if delivery.phase != phase {
            let was_missing = pair.missing.lock().is_ok_and(|mut m| m.remove(&(delivery.phase, delivery.seq)));
            if was_missing {
                self.late += 1;
                self.late_max_ns = self.late_max_ns.max(delivery.latency_ns);
            } else {
                self.stray += 1;
            }
            return false;
        }
        let count = self.received.entry(delivery.seq).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.latencies.push(delivery.latency_ns);
            true
        } else {
            false
        }
    }

    fn error(&mut self, err: String) {
        self.errors += 1;
        self.first_error.get_or_insert(err);
    }
}

/// One send: with the sender's credentials, or sealed (type 6 with the recipient's access key, no sender).
async fn put(http: &reqwest::Client, pair: &Pair, stamp: &Stamp, sealed: bool) -> Result<(), String> {
    let kind = if sealed { 6 } else { 1 };
    let body = client::send_body(stamp, pair.registration_id, kind);
    let mut request = http.put(&pair.url).header("content-type", "application/json").body(body);
    match (sealed, &pair.authorization, &pair.access_key) {
        (true, _, Some(key)) => request = request.header("unidentified-access-key", key),
        (true, _, None) => return Err("a sealed send needs the recipient's access key".into()),
        (false, Some(value), _) => request = request.header("authorization", value),
        (false, None, _) => {}
    }
    let response = request.send().await.map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("send: {e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("send: status {status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// How long a message may take before it counts as lost.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// After a measurement, how long we keep listening for duplicates and strays.
const SETTLE: Duration = Duration::from_millis(150);

pub struct LoopSpec<'a> {
    pub label: String,
    pub pairs: usize,
    pub phase: u32,
    pub duration: Duration,
    /// Bound on messages per pair (closed loop).
    pub max_per_pair: u64,
    /// Total offered rate (open loop); `None` = closed loop.
    pub rate: Option<f64>,
    /// Sealed-sender sends (type 6, the recipient's access key) instead of authenticated ones.
    pub sealed: bool,
    pub probe: &'a CpuProbe,
    pub with_services: bool,
}

/// Runs a closed or open loop over the first `spec.pairs` pairs of the fleet.
pub async fn run_loop(http: &reqwest::Client, fleet: &Fleet, spec: LoopSpec<'_>) -> LoopResult {
    let pairs = spec.pairs.min(fleet.pairs.len());
    let start = Instant::now();
    let end = start + spec.duration;
    let cpu = CpuSpan::start(spec.probe, spec.with_services);
    let mut tasks = Vec::new();
    for (p, pair) in fleet.pairs.iter().take(pairs).enumerate() {
        let (http, pair) = (http.clone(), pair.clone());
        let (phase, sealed) = (spec.phase, spec.sealed);
        tasks.push(match spec.rate {
            None => tokio::spawn(closed_pair(http, pair, p as u32, phase, sealed, end, spec.max_per_pair)),
            Some(rate) => {
                let gap = Duration::from_secs_f64(pairs as f64 / rate);
                let first = start + Duration::from_secs_f64(p as f64 / rate);
                tokio::spawn(open_pair(http, pair, p as u32, phase, sealed, first, gap, end))
            }
        });
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap_or_else(|e| {
            let mut failed = PairOutcome::default();
            failed.error(format!("pair task: {e}"));
            failed
        }));
    }
    let elapsed = match spec.rate {
        Some(_) => spec.duration.as_secs_f64(),
        None => start.elapsed().as_secs_f64(),
    };
    let used = cpu.stop();
    // Late duplicates or strays.
    tokio::time::sleep(SETTLE).await;
    for (pair, outcome) in fleet.pairs.iter().zip(outcomes.iter_mut()) {
        let mut deliveries = pair.deliveries.lock().await;
        while let Ok(delivery) = deliveries.try_recv() {
            outcome.take(pair, spec.phase, delivery);
        }
        // What did not arrive is lost for this measurement; remember it in case it turns up later.
        if let Ok(mut missing) = pair.missing.lock() {
            for seq in 0..outcome.attempted {
                if !outcome.received.contains_key(&seq) && !outcome.failed.contains(&seq) {
                    missing.insert((spec.phase, seq));
                }
            }
        }
    }
    summarize(spec.label, spec.rate, pairs, elapsed, outcomes, used)
}

fn summarize(
    label: String,
    rate: Option<f64>,
    pairs: usize,
    seconds: f64,
    outcomes: Vec<PairOutcome>,
    used: CpuUsed,
) -> LoopResult {
    let (mut sent, mut delivered, mut duplicates, mut stray, mut errors) = (0, 0, 0, 0, 0);
    let (mut late, mut late_max_ns) = (0, 0);
    let mut first_error = None;
    let mut latencies = Vec::new();
    for outcome in outcomes {
        sent += outcome.sent;
        for (&seq, &count) in &outcome.received {
            if seq < outcome.attempted {
                delivered += 1;
                duplicates += u64::from(count - 1);
            } else {
                // Received but never (successfully) sent.
                stray += u64::from(count);
            }
        }
        stray += outcome.stray;
        late += outcome.late;
        late_max_ns = late_max_ns.max(outcome.late_max_ns);
        errors += outcome.errors;
        if first_error.is_none() {
            first_error = outcome.first_error;
        }
        latencies.extend(outcome.latencies);
    }
    LoopResult {
        label,
        mode: if rate.is_some() { "open" } else { "closed" },
        pairs,
        target_rate: rate,
        seconds,
        sent,
        delivered,
        lost: sent.saturating_sub(delivered),
        duplicates,
        stray,
        late_from_earlier: late,
        late_max_ms: (late > 0).then(|| late_max_ns as f64 / 1e6),
        send_errors: errors,
        first_error,
        msgs_per_sec: if seconds > 0.0 { delivered as f64 / seconds } else { 0.0 },
        latency: percentiles(latencies),
        server_cpu_us_per_msg: per(used.server_us, delivered),
        client_cpu_us_per_msg: per(used.client_us, delivered),
        redis_cpu_us_per_msg: used.redis_us.and_then(|us| per(us, delivered)),
        postgres_cpu_us_per_msg: used.postgres_us.and_then(|us| per(us, delivered)),
    }
}

/// Sends, waits for the delivery, sends the next; until `end` or `max` messages.
async fn closed_pair(
    http: reqwest::Client,
    pair: Arc<Pair>,
    p: u32,
    phase: u32,
    sealed: bool,
    end: Instant,
    max: u64,
) -> PairOutcome {
    let mut out = PairOutcome::default();
    let mut deliveries = pair.deliveries.lock().await;
    let mut seq = 0;
    'send: while seq < max && Instant::now() < end {
        let stamp = Stamp { pair: p, phase, seq, sent_ns: now_ns() };
        if let Err(err) = put(&http, &pair, &stamp, sealed).await {
            out.error(err);
            break;
        }
        out.sent += 1;
        out.attempted += 1;
        let wait = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(wait, deliveries.recv()).await {
                Ok(Some(delivery)) => {
                    let this = delivery.seq == seq && delivery.phase == phase;
                    out.take(&pair, phase, delivery);
                    if this {
                        break;
                    }
                }
                Ok(None) => {
                    out.error("the receiver stopped".into());
                    break 'send;
                }
                // Lost (or later than the timeout): counted as lost, and this pair stops.
                Err(_) => break 'send,
            }
        }
        seq += 1;
    }
    out
}

/// Sends on a fixed schedule (`first`, then every `gap`) until `end`, each send on its own task, while
/// collecting deliveries; then waits for the stragglers.
#[allow(clippy::too_many_arguments)]
async fn open_pair(
    http: reqwest::Client,
    pair: Arc<Pair>,
    p: u32,
    phase: u32,
    sealed: bool,
    first: Instant,
    gap: Duration,
    end: Instant,
) -> PairOutcome {
    let mut out = PairOutcome::default();
    let mut deliveries = pair.deliveries.lock().await;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let hard_stop = end + DELIVERY_TIMEOUT;
    let mut next = first;
    let mut seq = 0;
    let mut sending = true;
    let mut unique = 0u64;
    loop {
        if !sending && in_flight.load(Ordering::Acquire) == 0 && unique >= ok.load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            biased;
            delivery = deliveries.recv() => match delivery {
                Some(delivery) => {
                    if out.take(&pair, phase, delivery) {
                        unique += 1;
                    }
                }
                None => {
                    out.error("the receiver stopped".into());
                    break;
                }
            },
            _ = tokio::time::sleep_until(next), if sending => {
                if next >= end {
                    sending = false;
                    continue;
                }
                in_flight.fetch_add(1, Ordering::AcqRel);
                let (http, pair, in_flight, ok, failures) =
                    (http.clone(), pair.clone(), in_flight.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    let stamp = Stamp { pair: p, phase, seq, sent_ns: now_ns() };
                    match put(&http, &pair, &stamp, sealed).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(err) => failures.lock().unwrap_or_else(|e| e.into_inner()).push((seq, err)),
                    }
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                });
                seq += 1;
                next += gap;
            }
            _ = tokio::time::sleep(Duration::from_millis(5)), if !sending => {}
            _ = tokio::time::sleep_until(hard_stop) => break,
        }
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap_or_else(|e| e.into_inner()));
    for (seq, failure) in failures {
        out.failed.insert(seq);
        out.error(format!("seq {seq}: {failure}"));
    }
    out.attempted = seq;
    // A failed send was never accepted: it is an error of the run, not a loss.
    out.sent = ok.load(Ordering::Acquire);
    out
}

/// Figures of a fixed-concurrency HTTP request loop.
#[derive(Debug, Clone, Serialize)]
pub struct HttpLoadResult {
    pub label: String,
    pub concurrency: usize,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub per_sec: f64,
    pub latency: Option<Percentiles>,
    pub server_cpu_us_per_request: Option<f64>,
    pub client_cpu_us_per_request: Option<f64>,
    pub redis_cpu_us_per_request: Option<f64>,
    pub postgres_cpu_us_per_request: Option<f64>,
    /// Bundle fetch only: responses that carried a one-time EC prekey / a one-time Kyber prekey.
    pub one_time_ec: Option<u64>,
    pub one_time_kem: Option<u64>,
}

/// What a response said, for the counts.
#[derive(Default, Clone, Copy)]
pub struct Inspected {
    pub ec: bool,
    pub kem: bool,
}

pub type MakeRequest = Arc<dyn Fn(usize) -> reqwest::RequestBuilder + Send + Sync>;
pub type Inspect = fn(&[u8]) -> Result<Inspected, String>;

pub struct HttpSpec<'a> {
    pub label: String,
    pub concurrency: usize,
    /// At most this many requests…
    pub max_requests: usize,
    /// …and none started after this long.
    pub duration: Duration,
    pub make: MakeRequest,
    pub inspect: Inspect,
    pub counts_claims: bool,
    pub probe: &'a CpuProbe,
    pub with_services: bool,
}

pub async fn http_load(spec: HttpSpec<'_>) -> HttpLoadResult {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + spec.duration;
    let cpu = CpuSpan::start(spec.probe, spec.with_services);
    let mut workers = Vec::new();
    for _ in 0..spec.concurrency {
        let (next, make, inspect, max) = (next.clone(), spec.make.clone(), spec.inspect, spec.max_requests);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut ok, mut errors, mut ec, mut kem) = (0u64, 0u64, 0u64, 0u64);
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max || Instant::now() >= end {
                    break;
                }
                let request = make(i);
                let began = now_ns();
                let result = async {
                    let response = request.send().await.map_err(|e| e.to_string())?;
                    let status = response.status();
                    let body = response.bytes().await.map_err(|e| e.to_string())?;
                    if status != reqwest::StatusCode::OK {
                        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
                    }
                    Ok(body)
                }
                .await;
                let took = now_ns() - began;
                match result.and_then(|body| inspect(&body)) {
                    Ok(seen) => {
                        latencies.push(took);
                        ok += 1;
                        ec += u64::from(seen.ec);
                        kem += u64::from(seen.kem);
                    }
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert(err);
                    }
                }
            }
            (latencies, ok, errors, ec, kem, first_error)
        }));
    }
    let (mut latencies, mut ok, mut errors, mut ec, mut kem, mut first_error) = (Vec::new(), 0, 0, 0, 0, None);
    for worker in workers {
        match worker.await {
            Ok((l, o, e, c, k, f)) => {
                latencies.extend(l);
                ok += o;
                errors += e;
                ec += c;
                kem += k;
                if first_error.is_none() {
                    first_error = f;
                }
            }
            Err(err) => {
                errors += 1;
                first_error.get_or_insert(format!("worker: {err}"));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let used = cpu.stop();
    HttpLoadResult {
        label: spec.label,
        concurrency: spec.concurrency,
        requests: ok + errors,
        ok,
        errors,
        first_error,
        seconds,
        per_sec: ok as f64 / seconds,
        latency: percentiles(latencies),
        server_cpu_us_per_request: per(used.server_us, ok),
        client_cpu_us_per_request: per(used.client_us, ok),
        redis_cpu_us_per_request: used.redis_us.and_then(|us| per(us, ok)),
        postgres_cpu_us_per_request: used.postgres_us.and_then(|us| per(us, ok)),
        one_time_ec: spec.counts_claims.then_some(ec),
        one_time_kem: spec.counts_claims.then_some(kem),
    }
}
