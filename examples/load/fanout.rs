//! The fan-out line: messages to recipients with three devices each (a phone, a desktop, a tablet), every
//! device on its own acknowledging socket. One `PUT /v1/messages/{aci}` carries three envelopes, one per
//! device, as a Signal-style client sends them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::client::{self, Account, Delivery, Framing, Health, Stamp};
use crate::stats::{CpuProbe, CpuSpan, Percentiles, now_ns, per, percentiles};

pub const DEVICES: usize = 3;

/// Sizes of the fan-out line.
pub struct FanoutPlan {
    pub recipients: usize,
    pub duration: Duration,
    /// Sends in flight at once.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub label: String,
    pub recipients: usize,
    pub devices_each: usize,
    /// Sends answered 200 (each to every device of one recipient).
    pub sent: u64,
    pub send_errors: u64,
    pub first_error: Option<String>,
    pub deliveries: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub latency: Option<Percentiles>,
    pub server_cpu_us_per_msg: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
}

impl FanoutResult {
    pub fn lossless(&self) -> bool {
        self.sent > 0 && self.send_errors == 0 && self.lost == 0 && self.duplicates == 0
    }
}

/// A recipient's devices: (device id, registration id, token).
struct Recipient {
    aci: String,
    devices: Vec<(u32, u16)>,
}

pub async fn measure(
    http: &reqwest::Client,
    base: &str,
    plan: &FanoutPlan,
    sender: &Account,
    probe: &CpuProbe,
    services: bool,
    phase: u32,
) -> Result<FanoutResult, String> {
    let primaries = client::register_many(http, base, plan.recipients, 32).await?;
    let ws_url = format!("{}/v1/websocket", base.replacen("http://", "ws://", 1));
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let health = Arc::new(Health::default());
    let mut receivers = Vec::new();
    let mut recipients = Vec::new();
    for (r, primary) in primaries.iter().enumerate() {
        client::upload_keys(http, base, primary, 0).await?;
        let mut devices = vec![(1, primary.registration_id, primary.token.clone())];
        for _ in 1..DEVICES {
            let (device, id) = client::link_device(http, base, primary).await?;
            devices.push((id, device.registration_id, device.token));
        }
        for (d, (_, _, token)) in devices.iter().enumerate() {
            let mut socket = client::connect(&ws_url, Some(token)).await?;
            client::await_queue_empty(&mut socket, Duration::from_secs(10)).await?;
            let pair = (r * DEVICES + d) as u32;
            receivers.push(client::spawn_receiver(
                socket,
                Framing::Sealpost,
                pair,
                tx.clone(),
                health.clone(),
                stop_rx.clone(),
            ));
        }
        recipients.push(Recipient {
            aci: primary.aci.clone(),
            devices: devices.iter().map(|(id, rid, _)| (*id, *rid)).collect(),
        });
    }
    drop(tx);
    let recipients = Arc::new(recipients);

    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let seq = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + plan.duration;
    let cpu = CpuSpan::start(probe, services);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..plan.concurrency {
        let (http, base, recipients) = (http.clone(), base.to_owned(), recipients.clone());
        let (sent, errors, first_error, seq) = (sent.clone(), errors.clone(), first_error.clone(), seq.clone());
        let bearer = sender.token.clone();
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let seq = seq.fetch_add(1, Ordering::Relaxed);
                let r = (seq % recipients.len() as u64) as usize;
                match send(&http, &base, &bearer, &recipients[r], r, phase, seq).await {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(err);
                    }
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let sent = sent.load(Ordering::Relaxed);
    let expected = sent * DEVICES as u64;
    let mut seen = HashSet::new();
    let mut duplicates = 0u64;
    let mut latencies = Vec::with_capacity(expected as usize);
    let wait_until = tokio::time::Instant::now() + Duration::from_secs(20);
    while (seen.len() as u64) < expected {
        match tokio::time::timeout_at(wait_until, rx.recv()).await {
            Ok(Some(delivery)) => {
                if delivery.phase != phase || delivery.wrong_pair || !seen.insert((delivery.pair, delivery.seq)) {
                    duplicates += 1;
                } else {
                    latencies.push(delivery.latency_ns);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let used = cpu.stop();
    let _ = stop_tx.send(true);
    for receiver in receivers {
        let _ = receiver.await;
    }
    if let Some(problem) = health.problem() {
        return Err(format!("fan-out recipients: {problem}"));
    }
    let deliveries = seen.len() as u64;
    let first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(FanoutResult {
        label: format!("{DEVICES}-device fan-out, {} recipients", plan.recipients),
        recipients: plan.recipients,
        devices_each: DEVICES,
        sent,
        send_errors: errors.load(Ordering::Relaxed),
        first_error,
        deliveries,
        expected,
        lost: expected.saturating_sub(deliveries),
        duplicates,
        seconds,
        msgs_per_sec: sent as f64 / seconds,
        deliveries_per_sec: deliveries as f64 / seconds,
        latency: percentiles(latencies),
        server_cpu_us_per_msg: per(used.server_us, sent),
        server_cpu_us_per_delivery: per(used.server_us, deliveries),
    })
}

/// One message to every device of recipient `r`: each envelope stamped with that device's socket number.
async fn send(
    http: &reqwest::Client,
    base: &str,
    bearer: &str,
    recipient: &Recipient,
    r: usize,
    phase: u32,
    seq: u64,
) -> Result<(), String> {
    let sent_ns = now_ns();
    let messages: Vec<String> = recipient
        .devices
        .iter()
        .enumerate()
        .map(|(d, (device, registration))| {
            let stamp = Stamp { pair: (r * DEVICES + d) as u32, phase, seq, sent_ns };
            let content = B64.encode(client::encode_content(&stamp));
            format!(
                r#"{{"type":1,"destinationDeviceId":{device},"destinationRegistrationId":{registration},"content":"{content}"}}"#
            )
        })
        .collect();
    let body = format!(r#"{{"messages":[{}],"timestamp":{}}}"#, messages.join(","), seq + 1);
    let response = http
        .put(format!("{base}/v1/messages/{}", recipient.aci))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("fan-out send: {e}"))?;
    let status = response.status();
    if status != 200 {
        let text: String = response.text().await.unwrap_or_default().chars().take(300).collect();
        return Err(format!("fan-out send: status {status}: {text}"));
    }
    Ok(())
}
