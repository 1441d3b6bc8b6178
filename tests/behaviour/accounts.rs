//! Registration, tokens, devices and account removal.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use sealpost::config::RegistrationPolicy;
use sealpost::crypto::xeddsa::KeyPair;
use serde_json::json;

use crate::both_backends;
use crate::harness::*;

both_backends!(
    register_get_token_and_list_devices,
    registration_rejects_bad_input_with_stable_codes,
    registration_is_rate_limited_per_ip,
    token_refuses_wrong_secrets,
    removed_device_loses_access_at_once,
    deleted_account_loses_access_at_once,
    only_primary_removes_devices,
    invite_policy_takes_single_use_codes,
    approval_policy_holds_accounts_until_approved,
    attributes_validate_the_access_key,
    a_trusted_proxy_names_the_client_by_the_address_it_appended,
);

async fn a_trusted_proxy_names_the_client_by_the_address_it_appended(backend: Backend) {
    let server = start_with(backend, |c| {
        c.trusted_proxy_header = Some("x-forwarded-for".into());
        c.limit_registration_per_ip = limit("2/1h");
    })
    .await;
    let register = |forwarded: &'static str| {
        let key = KeyPair::generate().public_serialized();
        let body = registration(&key, 5, &[6u8; 32]);
        let server = &server;
        async move {
            server.call(Method::POST, "/v1/accounts", Auth::Header("x-forwarded-for", forwarded), Some(body)).await
        }
    };
    // A client cannot pick its bucket by prepending addresses: the proxy's own entry (the last) counts.
    register("1.1.1.1, 203.0.113.7").await.expect(201);
    register("2.2.2.2, 203.0.113.7").await.expect(201);
    register("3.3.3.3, 203.0.113.7").await.expect_error(429, "rate_limited");
    register("203.0.113.8").await.expect(201);
    server.stop().await;
}

fn registration(identity: &[u8], registration_id: i64, secret: &[u8]) -> serde_json::Value {
    json!({
        "identityKey": STANDARD.encode(identity),
        "registrationId": registration_id,
        "deviceSecret": STANDARD.encode(secret),
    })
}

async fn register_get_token_and_list_devices(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    assert!(uuid::Uuid::parse_str(&user.aci).is_ok());
    let devices = server.get("/v1/devices", user.bearer()).await.expect(200);
    let devices = devices["devices"].as_array().expect("list");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["id"], 1);
    let last_seen = devices[0]["lastSeen"].as_i64().expect("lastSeen");
    assert_eq!(last_seen % 86_400_000, 0, "last seen is rounded to the day");
    assert!(devices[0]["created"].as_i64().expect("created") >= last_seen);
    // A second token for the same device works too, and no token means 401.
    let again = server.token(&user).await;
    server.get("/v1/devices", Auth::Bearer(&again)).await.expect(200);
    server.get("/v1/devices", Auth::None).await.expect_error(401, "unauthorized");
    server.get("/v1/devices", Auth::Bearer("not.a.jwt")).await.expect_error(401, "unauthorized");
    server.stop().await;
}

async fn registration_rejects_bad_input_with_stable_codes(backend: Backend) {
    let server = start_with(backend, |c| c.max_request_bytes = 4096).await;
    let key = KeyPair::generate().public_serialized();
    let secret = [7u8; 32];
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            json!({"identityKey": "***", "registrationId": 5, "deviceSecret": STANDARD.encode(secret)}),
            400,
            "bad_base64",
        ),
        (registration(&key[..32], 5, &secret), 400, "invalid_key_length"),
        (registration(&[&[0x06u8][..], &key[1..]].concat(), 5, &secret), 400, "invalid_key_type"),
        (registration(&key, 0, &secret), 400, "invalid_registration_id"),
        (registration(&key, 16381, &secret), 400, "invalid_registration_id"),
        (registration(&key, 5, &[1u8; 31]), 400, "invalid_device_secret"),
        (registration(&key, 5, &[1u8; 65]), 400, "invalid_device_secret"),
        (
            json!({"identityKey": STANDARD.encode(key), "registrationId": 5, "deviceSecret": STANDARD.encode(secret),
                   "phoneNumber": "+15551234567"}),
            400,
            "unknown_field",
        ),
        (json!({"identityKey": STANDARD.encode(key), "registrationId": 5}), 400, "invalid_body"),
        (json!({"identityKey": STANDARD.encode(key), "registrationId": "5", "deviceSecret": "x"}), 400, "invalid_body"),
    ];
    for (body, status, code) in cases {
        server.post("/v1/accounts", Auth::None, body).await.expect_error(status, code);
    }
    server
        .raw(Method::POST, "/v1/accounts", "application/json", b"{\"identityKey\": ".to_vec())
        .await
        .expect_error(400, "malformed_json");
    server
        .raw(Method::POST, "/v1/accounts", "text/plain", b"{}".to_vec())
        .await
        .expect_error(415, "unsupported_media_type");
    server
        .raw(Method::POST, "/v1/accounts", "application/json", vec![b' '; 5000])
        .await
        .expect_error(413, "payload_too_large");
    server.get("/v1/nothing-here", Auth::None).await.expect_error(404, "not_found");
    server.delete("/v1/accounts", Auth::None).await.expect_error(405, "method_not_allowed");
    // None of the rejected requests created anything: the first real registration still works.
    server.register().await;
    server.stop().await;
}

async fn registration_is_rate_limited_per_ip(backend: Backend) {
    let server = start_with(backend, |c| c.limit_registration_per_ip = limit("3/1h")).await;
    for _ in 0..3 {
        server.register().await;
    }
    let key = KeyPair::generate().public_serialized();
    let reply = server.post("/v1/accounts", Auth::None, registration(&key, 9, &[3u8; 32])).await;
    reply.expect_error(429, "rate_limited");
    let retry: u64 = reply.headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=1200).contains(&retry), "retry after {retry}s");
    server.stop().await;
}

async fn token_refuses_wrong_secrets(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    server.token_reply(&user.aci, 1, &[0u8; 32]).await.expect_error(401, "unauthorized");
    server.token_reply(&user.aci, 2, &user.secret).await.expect_error(401, "unauthorized");
    let stranger = uuid::Uuid::new_v4().to_string();
    server.token_reply(&stranger, 1, &user.secret).await.expect_error(401, "unauthorized");
    for header in ["Basic !!!", "Bearer x", "Basic Zm9vOmJhcg=="] {
        server
            .call(Method::POST, "/v1/auth/token", Auth::Header("authorization", header), None)
            .await
            .expect_error(401, "unauthorized");
    }
    server.token_reply(&user.aci, 1, &user.secret).await.expect(200);
    server.stop().await;
}

async fn removed_device_loses_access_at_once(backend: Backend) {
    let server = start(backend).await;
    let primary = server.register().await;
    let laptop = server.add_device(&primary, 77).await;
    assert_eq!(laptop.device_id, 2);
    let devices = server.get("/v1/devices", laptop.bearer()).await.expect(200);
    assert_eq!(devices["devices"].as_array().expect("list").len(), 2);

    server.delete("/v1/devices/2", primary.bearer()).await.expect(204);
    // The laptop's token has not expired, but the device is gone.
    server.get("/v1/devices", laptop.bearer()).await.expect_error(401, "unauthorized");
    server.token_reply(&laptop.aci, 2, &laptop.secret).await.expect_error(401, "unauthorized");
    server.delete("/v1/devices/2", primary.bearer()).await.expect_error(404, "not_found");
    server.delete("/v1/devices/abc", primary.bearer()).await.expect_error(400, "invalid_path");
    let devices = server.get("/v1/devices", primary.bearer()).await.expect(200);
    assert_eq!(devices["devices"].as_array().expect("list").len(), 1);
    server.stop().await;
}

async fn deleted_account_loses_access_at_once(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    server.put("/v1/keys", user.bearer(), full_upload(&user.identity, 3)).await.expect(204);
    let other = server.register().await;
    server.get(&format!("/v1/keys/{}/1", user.aci), other.bearer()).await.expect(200);

    server.delete("/v1/accounts/me", user.bearer()).await.expect(204);
    server.get("/v1/devices", user.bearer()).await.expect_error(401, "unauthorized");
    server.token_reply(&user.aci, 1, &user.secret).await.expect_error(401, "unauthorized");
    server.get(&format!("/v1/keys/{}/1", user.aci), other.bearer()).await.expect_error(404, "not_found");
    let aci = sealpost::domain::Aci::parse(&user.aci).expect("aci");
    let pools = server.app.storage.pre_keys.counts(aci, sealpost::domain::DeviceId(1)).await.expect("counts");
    assert_eq!(pools, (0, 0), "one-time keys of a deleted account are gone");
    server.stop().await;
}

async fn only_primary_removes_devices(backend: Backend) {
    let server = start(backend).await;
    let primary = server.register().await;
    let laptop = server.add_device(&primary, 78).await;
    server.delete("/v1/devices/1", laptop.bearer()).await.expect_error(403, "primary_device_required");
    server.delete("/v1/accounts/me", laptop.bearer()).await.expect_error(403, "primary_device_required");
    server.delete("/v1/devices/1", primary.bearer()).await.expect_error(403, "primary_device_required");
    server.get("/v1/devices", laptop.bearer()).await.expect(200);
    server.stop().await;
}

async fn invite_policy_takes_single_use_codes(backend: Backend) {
    let server = start_with(backend, |c| c.registration_policy = RegistrationPolicy::Invite).await;
    let key = KeyPair::generate().public_serialized();
    server
        .post("/v1/accounts", Auth::None, registration(&key, 5, &[1u8; 32]))
        .await
        .expect_error(403, "invite_required");

    let code = sealpost::accounts::service::create_invite(&server.app.storage, 3600).await.expect("invite");
    let mut body = registration(&key, 5, &[1u8; 32]);
    body["inviteCode"] = json!("wrong-code");
    server.post("/v1/accounts", Auth::None, body.clone()).await.expect_error(403, "invalid_invite");
    body["inviteCode"] = json!(code);
    server.post("/v1/accounts", Auth::None, body.clone()).await.expect(201);
    server.post("/v1/accounts", Auth::None, body.clone()).await.expect_error(403, "invalid_invite");

    let expired = sealpost::accounts::service::create_invite(&server.app.storage, 0).await.expect("invite");
    body["inviteCode"] = json!(expired);
    server.post("/v1/accounts", Auth::None, body).await.expect_error(403, "invalid_invite");
    server.stop().await;
}

async fn approval_policy_holds_accounts_until_approved(backend: Backend) {
    let server = start_with(backend, |c| c.registration_policy = RegistrationPolicy::Approval).await;
    let key = KeyPair::generate().public_serialized();
    let secret = [9u8; 32];
    let body = server.post("/v1/accounts", Auth::None, registration(&key, 5, &secret)).await.expect(201);
    let aci = body["aci"].as_str().expect("aci").to_owned();
    server.token_reply(&aci, 1, &secret).await.expect_error(403, "pending_approval");
    // A wrong secret stays a plain 401: pending accounts do not reveal themselves to guessers.
    server.token_reply(&aci, 1, &[8u8; 32]).await.expect_error(401, "unauthorized");
    let parsed = sealpost::domain::Aci::parse(&aci).expect("aci");
    assert!(server.app.storage.accounts.approve(parsed).await.expect("approve"));
    server.app.directory.invalidate(parsed).await.expect("invalidate");
    let token = server.token_reply(&aci, 1, &secret).await.expect(200);
    server.get("/v1/devices", Auth::Bearer(token["token"].as_str().expect("token"))).await.expect(200);
    server.stop().await;
}

async fn attributes_validate_the_access_key(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    let put = |body| server.put("/v1/accounts/me/attributes", user.bearer(), body);
    put(json!({"unidentifiedAccessKey": STANDARD.encode([1u8; 15])})).await.expect_error(400, "invalid_key_length");
    put(json!({"unidentifiedAccessKey": "%%"})).await.expect_error(400, "bad_base64");
    put(json!({"unidentifiedAccessKey": STANDARD.encode([1u8; 16]), "name": "x"}))
        .await
        .expect_error(400, "unknown_field");
    put(json!({"unidentifiedAccessKey": STANDARD.encode([1u8; 16]), "unrestrictedUnidentifiedAccess": false}))
        .await
        .expect(204);
    let aci = sealpost::domain::Aci::parse(&user.aci).expect("aci");
    let account = server.app.storage.accounts.account(aci).await.expect("read").expect("exists");
    assert_eq!(account.access_key.map(|k| k.0), Some([1u8; 16]));
    assert!(!account.unrestricted_access);
    server.stop().await;
}
