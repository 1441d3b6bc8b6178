//! Prekey upload, counting and bundle fetches with one-time-key claims.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealpost::crypto::xeddsa::KeyPair;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::*;

both_backends!(
    each_one_time_key_is_claimed_exactly_once_under_concurrency,
    bad_uploads_are_rejected_and_change_nothing,
    uploading_a_list_replaces_the_pool,
    fetch_authorisation_and_existence,
    wildcard_fetch_returns_every_device_with_keys,
    fetch_is_rate_limited_per_requester_and_per_requester_target,
);

async fn counts(server: &TestServer, user: &User) -> (u64, u64) {
    let body = server.get("/v1/keys/count", user.bearer()).await.expect(200);
    (body["count"].as_u64().expect("count"), body["pqCount"].as_u64().expect("pqCount"))
}

async fn each_one_time_key_is_claimed_exactly_once_under_concurrency(backend: Backend) {
    let server = Arc::new(start(backend).await);
    let bob = server.register().await;
    let alice = server.register().await;
    server.put("/v1/keys", bob.bearer(), full_upload(&bob.identity, 100)).await.expect(204);
    assert_eq!(counts(&server, &bob).await, (100, 100));

    let path = format!("/v1/keys/{}/1", bob.aci);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let server = server.clone();
        let path = path.clone();
        let token = alice.token.clone();
        tasks.push(tokio::spawn(async move { server.get(&path, Auth::Bearer(&token)).await.expect(200) }));
    }
    let mut ec_seen: HashMap<u64, usize> = HashMap::new();
    let mut kem_seen: HashMap<u64, usize> = HashMap::new();
    let mut without_ec = 0;
    let mut last_resort = 0;
    for task in tasks {
        let body = task.await.expect("task");
        let device = &body["devices"][0];
        match device.get("preKey") {
            Some(pre_key) => *ec_seen.entry(pre_key["keyId"].as_u64().expect("id")).or_default() += 1,
            None => without_ec += 1,
        }
        let kem_id = device["pqPreKey"]["keyId"].as_u64().expect("kem id");
        if kem_id == 1 {
            last_resort += 1;
        } else {
            *kem_seen.entry(kem_id).or_default() += 1;
        }
    }
    assert_eq!(ec_seen.len(), 100, "every EC one-time key was handed out");
    assert!(ec_seen.values().all(|n| *n == 1), "an EC one-time key was handed out twice");
    assert_eq!(kem_seen.len(), 100, "every Kyber one-time key was handed out");
    assert!(kem_seen.values().all(|n| *n == 1), "a Kyber one-time key was handed out twice");
    assert_eq!(without_ec, 900);
    assert_eq!(last_resort, 900);
    assert_eq!(counts(&server, &bob).await, (0, 0));
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => panic!("server still shared"),
    }
}

async fn bad_uploads_are_rejected_and_change_nothing(backend: Backend) {
    let server = start(backend).await;
    let bob = server.register().await;
    let original = full_upload(&bob.identity, 5);
    server.put("/v1/keys", bob.bearer(), original.clone()).await.expect(204);
    let stranger = KeyPair::generate();

    let mut bad: Vec<(Value, u16, &str)> = Vec::new();
    bad.push((json!({"signedPreKey": signed_ec(&stranger, 2)}), 422, "invalid_signature"));
    bad.push((json!({"pqLastResortPreKey": signed_kem(&stranger, 2)}), 422, "invalid_signature"));
    bad.push((
        json!({"pqPreKeys": [signed_kem(&bob.identity, 7), signed_kem(&stranger, 8)]}),
        422,
        "invalid_signature",
    ));
    let mut truncated = signed_ec(&bob.identity, 2);
    let short = STANDARD.decode(truncated["publicKey"].as_str().expect("b64")).expect("b64");
    truncated["publicKey"] = json!(STANDARD.encode(&short[..32]));
    bad.push((json!({"signedPreKey": truncated}), 400, "invalid_key_length"));
    let mut wrong_type = one_time_ec(9);
    let mut bytes = STANDARD.decode(wrong_type["publicKey"].as_str().expect("b64")).expect("b64");
    bytes[0] = 0x08;
    wrong_type["publicKey"] = json!(STANDARD.encode(&bytes));
    bad.push((json!({"preKeys": [wrong_type]}), 400, "invalid_key_type"));
    let mut short_kem = signed_kem(&bob.identity, 3);
    short_kem["publicKey"] = json!(STANDARD.encode(&kem_public()[..1000]));
    bad.push((json!({"pqLastResortPreKey": short_kem}), 400, "invalid_key_length"));
    bad.push((json!({"preKeys": (1..=101).map(one_time_ec).collect::<Vec<_>>()}), 400, "too_many_keys"));
    bad.push((
        json!({"pqPreKeys": (1..=101).map(|i| signed_kem(&bob.identity, i)).collect::<Vec<_>>()}),
        400,
        "too_many_keys",
    ));
    bad.push((json!({"preKeys": [one_time_ec(4), one_time_ec(4)]}), 400, "duplicate_key_id"));
    bad.push((json!({"preKeys": [one_time_ec(0)]}), 400, "invalid_key_id"));
    bad.push((json!({"preKeys": [one_time_ec(16_777_216)]}), 400, "invalid_key_id"));
    let mut bad_sig = signed_ec(&bob.identity, 2);
    bad_sig["signature"] = json!(STANDARD.encode([0u8; 63]));
    bad.push((json!({"signedPreKey": bad_sig}), 400, "invalid_key_length"));
    bad.push((json!({"preKeys": [{"keyId": 1, "publicKey": "@@"}]}), 400, "bad_base64"));
    bad.push((json!({"preKeys": [], "extra": 1}), 400, "unknown_field"));

    for (body, status, code) in bad {
        server.put("/v1/keys", bob.bearer(), body).await.expect_error(status, code);
        assert_eq!(counts(&server, &bob).await, (5, 5), "a rejected upload ({code}) changed the pools");
    }
    let alice = server.register().await;
    let bundle = server.get(&format!("/v1/keys/{}/1", bob.aci), alice.bearer()).await.expect(200);
    let device = &bundle["devices"][0];
    assert_eq!(device["signedPreKey"], original["signedPreKey"], "signed prekey unchanged");
    assert_eq!(device["registrationId"], bob.registration_id);
    assert_eq!(bundle["identityKey"], json!(STANDARD.encode(bob.identity.public_serialized())));
    let pq_id = device["pqPreKey"]["keyId"].as_u64().expect("id");
    assert!((1001..=1005).contains(&pq_id), "a one-time Kyber key while the pool lasts");
    server.stop().await;
}

async fn uploading_a_list_replaces_the_pool(backend: Backend) {
    let server = start(backend).await;
    let bob = server.register().await;
    server.put("/v1/keys", bob.bearer(), full_upload(&bob.identity, 10)).await.expect(204);
    assert_eq!(counts(&server, &bob).await, (10, 10));
    server
        .put("/v1/keys", bob.bearer(), json!({"preKeys": (50..55).map(one_time_ec).collect::<Vec<_>>()}))
        .await
        .expect(204);
    assert_eq!(counts(&server, &bob).await, (5, 10), "only the uploaded kind is replaced");
    let alice = server.register().await;
    let bundle = server.get(&format!("/v1/keys/{}/1", bob.aci), alice.bearer()).await.expect(200);
    let id = bundle["devices"][0]["preKey"]["keyId"].as_u64().expect("id");
    assert!((50..55).contains(&id), "old pool is gone, got key {id}");
    server.stop().await;
}

async fn fetch_authorisation_and_existence(backend: Backend) {
    let server = start(backend).await;
    let bob = server.register().await;
    let alice = server.register().await;
    server.put("/v1/keys", bob.bearer(), full_upload(&bob.identity, 3)).await.expect(204);
    let path = format!("/v1/keys/{}/1", bob.aci);
    let stranger = format!("/v1/keys/{}/1", uuid::Uuid::new_v4());

    server.get(&path, Auth::None).await.expect_error(401, "unauthorized");
    server.get(&path, Auth::Bearer("garbage")).await.expect_error(401, "unauthorized");
    server.get(&stranger, alice.bearer()).await.expect_error(404, "not_found");
    server.get(&format!("/v1/keys/{}/2", bob.aci), alice.bearer()).await.expect_error(404, "not_found");
    server.get(&format!("/v1/keys/{}/1", alice.aci), bob.bearer()).await.expect_error(404, "not_found");
    server.get(&format!("/v1/keys/{}/0", bob.aci), alice.bearer()).await.expect_error(400, "invalid_path");

    // Access keys: none set yet, so any key is refused, exactly like an unknown account.
    let key = [5u8; 16];
    server.get(&path, Auth::AccessKey(&key)).await.expect_error(401, "unauthorized");
    server.get(&stranger, Auth::AccessKey(&key)).await.expect_error(401, "unauthorized");
    server
        .put("/v1/accounts/me/attributes", bob.bearer(), json!({"unidentifiedAccessKey": STANDARD.encode(key)}))
        .await
        .expect(204);
    server.get(&path, Auth::AccessKey(&[6u8; 16])).await.expect_error(401, "unauthorized");
    server.get(&path, Auth::Header("unidentified-access-key", "short")).await.expect_error(401, "unauthorized");
    let bundle = server.get(&path, Auth::AccessKey(&key)).await.expect(200);
    assert_eq!(bundle["devices"][0]["deviceId"], 1);
    assert_eq!(counts(&server, &bob).await, (2, 2), "only the authorised fetch claimed keys");

    server
        .put(
            "/v1/accounts/me/attributes",
            bob.bearer(),
            json!({"unidentifiedAccessKey": STANDARD.encode(key), "unrestrictedUnidentifiedAccess": true}),
        )
        .await
        .expect(204);
    server.get(&path, Auth::AccessKey(&[6u8; 16])).await.expect(200);
    server.stop().await;
}

async fn wildcard_fetch_returns_every_device_with_keys(backend: Backend) {
    let server = start(backend).await;
    let bob = server.register().await;
    let laptop = server.add_device(&bob, 4242).await;
    let tablet = server.add_device(&bob, 4343).await;
    let alice = server.register().await;
    let path = format!("/v1/keys/{}/*", bob.aci);
    server.get(&path, alice.bearer()).await.expect_error(404, "not_found");

    server.put("/v1/keys", bob.bearer(), full_upload(&bob.identity, 2)).await.expect(204);
    server.put("/v1/keys", laptop.bearer(), full_upload(&bob.identity, 0)).await.expect(204);
    // The tablet uploads only one-time keys: without a signed and a last-resort key it has no bundle.
    server.put("/v1/keys", tablet.bearer(), json!({"preKeys": [one_time_ec(1)]})).await.expect(204);

    let bundle = server.get(&path, alice.bearer()).await.expect(200);
    let devices = bundle["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0]["deviceId"], 1);
    assert!(devices[0].get("preKey").is_some());
    assert_eq!(devices[1]["deviceId"], laptop.device_id);
    assert_eq!(devices[1]["registrationId"], 4242);
    assert!(devices[1].get("preKey").is_none(), "laptop has no EC one-time keys");
    assert_eq!(devices[1]["pqPreKey"]["keyId"], 1, "laptop falls back to its last-resort key");
    server.stop().await;
}

async fn fetch_is_rate_limited_per_requester_and_per_requester_target(backend: Backend) {
    let server = start_with(backend, |c| {
        c.limit_prekey_fetch_per_requester = limit("5/1h");
        c.limit_prekey_fetch_per_requester_target = limit("2/1h");
    })
    .await;
    let bob = server.register().await;
    server.put("/v1/keys", bob.bearer(), full_upload(&bob.identity, 20)).await.expect(204);
    let carol = server.register().await;
    server.put("/v1/keys", carol.bearer(), full_upload(&carol.identity, 20)).await.expect(204);
    let bob_path = format!("/v1/keys/{}/1", bob.aci);
    let carol_path = format!("/v1/keys/{}/1", carol.aci);

    // One requester and one target: two fetches, then 429.
    let alice = server.register().await;
    server.get(&bob_path, alice.bearer()).await.expect(200);
    server.get(&bob_path, alice.bearer()).await.expect(200);
    let reply = server.get(&bob_path, alice.bearer()).await;
    reply.expect_error(429, "rate_limited");
    assert!(reply.headers.contains_key("retry-after"));
    // The same requester and another target: the requester's own budget (5, of which the refused fetch
    // took one too) still has room for two.
    server.get(&carol_path, alice.bearer()).await.expect(200);
    server.get(&carol_path, alice.bearer()).await.expect(200);
    server.get(&carol_path, alice.bearer()).await.expect_error(429, "rate_limited");

    // No requester can lock a target away from the others: after many requesters have fetched bob's
    // bundle, a new one still gets it.
    for _ in 0..6 {
        let mallory = server.register().await;
        server.get(&bob_path, mallory.bearer()).await.expect(200);
        server.get(&bob_path, mallory.bearer()).await.expect(200);
    }
    let dave = server.register().await;
    server.get(&bob_path, dave.bearer()).await.expect(200);
    assert_eq!(counts(&server, &bob).await, (5, 5), "15 fetches claimed 15 keys of each kind; refused ones none");
    server.stop().await;
}
