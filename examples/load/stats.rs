//! Latency percentiles and the /proc readings: CPU ticks of a process, of some of our own threads, of the
//! backing services, and a process's resident set.

use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `utime`/`stime` in /proc. `getconf CLK_TCK` answers 100 on every Linux
/// architecture we know of; reading it for real needs `sysconf` (libc and unsafe code, which this crate
/// forbids), so the tool assumes 100 and says so in its output.
pub const CLK_TCK: u64 = 100;
pub const US_PER_TICK: f64 = 1_000_000.0 / CLK_TCK as f64;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on one monotonic clock shared by every task of this process (senders stamp with it, the
/// receivers subtract with it).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Nearest-rank percentiles of nanosecond samples, in microseconds; `None` without samples.
pub fn percentiles(mut samples: Vec<u64>) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    let at = |q: f64| {
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        samples[rank - 1] as f64 / 1000.0
    };
    Some(Percentiles {
        count: n,
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: samples[n - 1] as f64 / 1000.0,
    })
}

/// utime + stime of a `/proc/.../stat` file, in ticks.
fn stat_ticks(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the first field is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Whose CPU time a measurement charges.
#[derive(Debug, Clone)]
pub enum CpuProbe {
    /// A whole process (the sealpost server, or this load generator).
    Process(u32),
    /// Several whole processes together (two server instances).
    Processes(Vec<u32>),
    /// Threads of this process whose name starts with the prefix (the in-process floor servers' runtime).
    Threads(&'static str),
}

impl CpuProbe {
    pub fn ticks(&self) -> u64 {
        match self {
            CpuProbe::Process(pid) => stat_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0),
            CpuProbe::Processes(pids) => {
                pids.iter().map(|pid| stat_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0)).sum()
            }
            CpuProbe::Threads(prefix) => {
                let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0 };
                let mut total = 0;
                for entry in dir.flatten() {
                    let path = entry.path();
                    let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                    if comm.trim_end().starts_with(prefix) {
                        total += stat_ticks(&format!("{}/stat", path.display())).unwrap_or(0);
                    }
                }
                total
            }
        }
    }
}

/// CPU ticks of every `redis-server` and every `postgres` process on the machine (machine-wide: whatever
/// else uses these services in the same seconds is counted too).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceTicks {
    pub redis: u64,
    pub postgres: u64,
}

pub fn service_ticks() -> ServiceTicks {
    let mut out = ServiceTicks::default();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim_end();
        let slot = if comm == "redis-server" {
            &mut out.redis
        } else if comm == "postgres" {
            &mut out.postgres
        } else {
            continue;
        };
        *slot += stat_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0);
    }
    out
}

/// A CPU reading taken at the start of a measurement.
pub struct CpuSpan {
    probe: CpuProbe,
    start: u64,
    own_start: u64,
    services_start: Option<ServiceTicks>,
}

/// CPU spent during a measurement, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuUsed {
    pub server_us: f64,
    pub client_us: f64,
    pub redis_us: Option<f64>,
    pub postgres_us: Option<f64>,
}

impl CpuSpan {
    pub fn start(probe: &CpuProbe, with_services: bool) -> CpuSpan {
        CpuSpan {
            probe: probe.clone(),
            start: probe.ticks(),
            own_start: CpuProbe::Process(std::process::id()).ticks(),
            services_start: with_services.then(service_ticks),
        }
    }

    pub fn stop(self) -> CpuUsed {
        let server = self.probe.ticks().saturating_sub(self.start);
        let own = CpuProbe::Process(std::process::id()).ticks().saturating_sub(self.own_start);
        // When the server is in-process (a floor), the client's share is ours minus the server threads'.
        let client = match self.probe {
            CpuProbe::Threads(_) => own.saturating_sub(server),
            CpuProbe::Process(_) | CpuProbe::Processes(_) => own,
        };
        let services = self.services_start.map(|before| {
            let after = service_ticks();
            (after.redis.saturating_sub(before.redis), after.postgres.saturating_sub(before.postgres))
        });
        CpuUsed {
            server_us: server as f64 * US_PER_TICK,
            client_us: client as f64 * US_PER_TICK,
            redis_us: services.map(|s| s.0 as f64 * US_PER_TICK),
            postgres_us: services.map(|s| s.1 as f64 * US_PER_TICK),
        }
    }
}

/// Resident set size of a process in kB (`VmRSS` of /proc/PID/status).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Divides, giving `None` instead of a meaningless figure when nothing was counted.
pub fn per(total: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| total / count as f64)
}
