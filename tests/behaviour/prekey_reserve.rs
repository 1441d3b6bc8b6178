//! The embedded store's prekey reserves across a crash and a stop of the real binary: a one-time key is
//! never handed out twice, a crash loses at most what the reserve held, and a stop loses nothing.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::*;
use crate::processes::{RemoteUser, backend_env, cleanup, remote_get, remote_user, remote_user_with, spawn_server};

/// One-time keys of each kind the target uploads.
const KEYS: u32 = 100;
/// Bundles fetched before the server goes down: enough claims in a row for the reserve to hold keys.
const BEFORE: usize = 40;
/// What `SEALPOST_PREKEY_RESERVE_MAX` is set to here.
const RESERVE_MAX: u32 = 8;

/// The one-time key ids (EC, Kyber) a bundle fetch got, `None` for a kind the pool had no key of.
async fn fetch(base: &str, by: &RemoteUser, target: &RemoteUser) -> (Option<u64>, Option<u64>) {
    let response = reqwest::Client::new()
        .get(format!("{base}/v1/keys/{}/1", target.aci))
        .bearer_auth(&by.token)
        .send()
        .await
        .expect("bundle");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    let device = &body["devices"][0];
    // The last-resort Kyber key (id 1) is what a pool without one-time Kyber keys hands out.
    let kem = device["pqPreKey"]["keyId"].as_u64().filter(|&id| id != 1);
    (device["preKey"]["keyId"].as_u64(), kem)
}

async fn counts(base: &str, user: &RemoteUser) -> (u64, u64) {
    let body = remote_get(base, "/v1/keys/count", user).await;
    (body["count"].as_u64().expect("count"), body["pqCount"].as_u64().expect("pqCount"))
}

/// Claims until the pool is empty, adding every id to `seen` and failing on one seen before.
async fn drain(base: &str, by: &RemoteUser, target: &RemoteUser, seen: &mut [HashSet<u64>; 2]) -> usize {
    let mut claims = 0;
    loop {
        let (ec, kem) = fetch(base, by, target).await;
        if ec.is_none() && kem.is_none() {
            return claims;
        }
        claims += 1;
        for (kind, id) in [ec, kem].into_iter().enumerate() {
            let id = id.unwrap_or_else(|| panic!("one kind ran out before the other after {claims} claims"));
            assert!(seen[kind].insert(id), "one-time key {id} of kind {kind} was handed out twice");
        }
    }
}

async fn stop_and_restart(graceful: bool) {
    let dir = temp_dir();
    let (mut envs, schema) = backend_env(Backend::Embedded, &dir);
    envs.push(("SEALPOST_PREKEY_RESERVE_MAX", RESERVE_MAX.to_string()));
    envs.push(("SEALPOST_LIMIT_PREKEY_FETCH_PER_REQUESTER", "10000/1m".into()));
    envs.push(("SEALPOST_LIMIT_PREKEY_FETCH_PER_REQUESTER_TARGET", "10000/1m".into()));
    let mut first = spawn_server(&envs).await;
    let target = remote_user_with(&first.base, KEYS).await;
    let requester = remote_user(&first.base).await;
    let mut seen = [HashSet::new(), HashSet::new()];
    for _ in 0..BEFORE {
        let (ec, kem) = fetch(&first.base, &requester, &target).await;
        assert!(seen[0].insert(ec.expect("an EC key")), "EC key handed out twice");
        assert!(seen[1].insert(kem.expect("a Kyber key")), "Kyber key handed out twice");
    }
    let left = u64::from(KEYS) - BEFORE as u64;
    // Reserved keys are still the device's: its count does not drop by what the reserve holds.
    assert_eq!(counts(&first.base, &target).await, (left, left));

    if graceful {
        let pid = first.child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
        let exited = tokio::time::timeout(Duration::from_secs(15), first.child.wait()).await;
        assert!(exited.expect("stopped in time").expect("exit status").success(), "{}", first.output());
    } else {
        first.child.kill().await.expect("SIGKILL");
    }
    let second = spawn_server(&envs).await;
    let after = counts(&second.base, &target).await;
    let claimed = drain(&second.base, &requester, &target, &mut seen).await;
    assert_eq!((claimed as u64, claimed as u64), after, "the count after the restart promised other keys");
    let lost = left - after.0;
    if graceful {
        assert_eq!(lost, 0, "a stop lost reserved keys");
        assert_eq!(seen[0].len() as u32, KEYS);
    } else {
        // 40 claims in a row take batches of 1, 2, 4, 8, 8, 8, 8, 8 keys: 47 taken, 7 of them still reserved.
        assert!(lost > 0, "the crash lost nothing: the claims were not served from a reserve");
        assert!(lost < u64::from(RESERVE_MAX), "a crash lost {lost} keys, more than one reserve");
        assert_eq!(after.0, after.1, "both kinds are reserved alike");
    }
    drop(second);
    cleanup(schema, dir).await;
}

/// SIGKILL while the target's reserve holds keys: none of them is ever handed out (the restart hands out
/// only keys nobody had), and fewer than one reserve's worth is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_never_hands_a_reserved_prekey_out_twice() {
    stop_and_restart(false).await;
}

/// SIGTERM: the reserved keys go back to the table, so every uploaded key is handed out exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_puts_reserved_prekeys_back() {
    stop_and_restart(true).await;
}
