//! Regressions for what an outside probe found: tokens of removed devices, proxy headers, metric labels,
//! slow clients, bundle lockout, unlink races, Redis key names, non-JSON errors, array bodies, IPv6 buckets.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::harness::*;
use crate::messages::{message, ready_user, send};
use crate::socket::{Incoming, Socket};

both_backends!(
    a_removed_devices_token_never_opens_the_device_that_gets_its_id,
    a_removed_device_id_rests_while_its_tokens_could_live,
    a_deleted_and_recreated_account_is_a_new_account,
    sends_racing_an_unlink_never_fail_and_never_reach_the_next_device,
    the_proxy_appended_address_counts_over_every_header_line,
    ipv6_clients_share_a_bucket_per_prefix,
    bodies_must_be_json_objects,
    every_error_the_server_can_give_is_json,
);

/// The exact sequence of the probe: link device 2, take its token, unlink it, give id 2 to a new device.
/// The old token must open nothing of the new device: not the API, not its queue, not its socket.
async fn a_removed_devices_token_never_opens_the_device_that_gets_its_id(backend: Backend) {
    let server = start(backend).await;
    let primary = ready_user(&server).await;
    let old = server.add_device(&primary, 222).await;
    assert_eq!(old.device_id, 2);
    server.put("/v1/keys", old.bearer(), full_upload(&primary.identity, 2)).await.expect(204);
    let mut old_socket = Socket::connect(&server.base, &old.token).await;
    old_socket.expect_queue_empty().await;

    server.delete("/v1/devices/2", primary.bearer()).await.expect(204);
    server.get("/v1/devices", old.bearer()).await.expect_error(401, "unauthorized");
    match old_socket.next().await {
        Incoming::Closed(code) => assert_eq!(code, Some(4401)),
        other => panic!("expected 4401, got {other:?}"),
    }

    // Force the id back into use at once, as if the retirement period had passed.
    let new = server.add_device_reusing_ids_after(&primary, 333, sealpost::domain::now_millis()).await;
    assert_eq!(new.device_id, 2, "the id is reused, which is what makes this test meaningful");
    server.put("/v1/keys", new.bearer(), full_upload(&primary.identity, 2)).await.expect(204);
    let alice = ready_user(&server).await;
    let mut to_new = message(&new, 1, b"for the new device only");
    to_new["destinationDeviceId"] = json!(2);
    server
        .put(
            &format!("/v1/messages/{}", primary.aci),
            alice.bearer(),
            json!({"messages": [message(&primary, 1, b"primary"), to_new], "timestamp": 1}),
        )
        .await
        .expect(200);

    server.get("/v1/devices", old.bearer()).await.expect_error(401, "unauthorized");
    server.get("/v1/messages", old.bearer()).await.expect_error(401, "unauthorized");
    server.get("/v1/keys/count", old.bearer()).await.expect_error(401, "unauthorized");
    server.put("/v1/keys", old.bearer(), full_upload(&primary.identity, 1)).await.expect_error(401, "unauthorized");
    assert_eq!(Socket::try_connect(&server.base, &old.token).await.err(), Some(401), "old token opens no socket");

    // The new device is untouched: its keys are its own and its envelope waits for it.
    let bundle = server.get(&format!("/v1/keys/{}/2", primary.aci), alice.bearer()).await.expect(200);
    assert_eq!(bundle["devices"][0]["registrationId"], 333);
    let mut socket = Socket::connect(&server.base, &new.token).await;
    let (id, envelope) = socket.envelope().await;
    assert_eq!(envelope.content.as_deref(), Some(&b"for the new device only"[..]));
    socket.respond(id, 200).await;
    socket.expect_queue_empty().await;
    assert_eq!(Socket::try_connect(&server.base, &old.token).await.err(), Some(401));
    socket.request(5, "GET", "/v1/keepalive").await;
    assert!(matches!(socket.next().await, Incoming::Response(5, 200)), "the new device's socket was not displaced");
    socket.close().await;
    server.stop().await;
}

/// Without forcing, a freed id is not handed out while a token of its device could still be accepted.
async fn a_removed_device_id_rests_while_its_tokens_could_live(backend: Backend) {
    let server = start(backend).await;
    let primary = server.register().await;
    let laptop = server.add_device(&primary, 5).await;
    assert_eq!(laptop.device_id, 2);
    server.delete("/v1/devices/2", primary.bearer()).await.expect(204);
    let next = server.add_device(&primary, 6).await;
    assert_eq!(next.device_id, 3, "id 2 rests for the token lifetime");
    server.stop().await;

    // With one-second tokens, the id is free again once they and their leeway are over.
    let server = start_with(backend, |c| c.token_ttl_seconds = 1).await;
    let primary = server.register().await;
    server.add_device(&primary, 5).await;
    server.delete("/v1/devices/2", primary.bearer()).await.expect(204);
    assert_eq!(server.add_device(&primary, 6).await.device_id, 3);
    let rest = 1 + sealpost::access::tokens::TOKEN_LEEWAY_SECONDS;
    tokio::time::sleep(Duration::from_millis(rest * 1000 + 300)).await;
    let primary = User { token: server.token(&primary).await, ..primary };
    assert_eq!(server.add_device(&primary, 7).await.device_id, 2);
    server.stop().await;
}

async fn a_deleted_and_recreated_account_is_a_new_account(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    let old_token = user.token.clone();
    server.delete("/v1/accounts/me", user.bearer()).await.expect(204);
    // The same identity key and secret register again: a new account with a new aci.
    let again = server
        .post(
            "/v1/accounts",
            Auth::None,
            json!({
                "identityKey": STANDARD.encode(user.identity.public_serialized()),
                "registrationId": user.registration_id,
                "deviceSecret": STANDARD.encode(&user.secret),
            }),
        )
        .await
        .expect(201);
    let aci = again["aci"].as_str().expect("aci").to_owned();
    assert_ne!(aci, user.aci);
    server.get("/v1/devices", Auth::Bearer(&old_token)).await.expect_error(401, "unauthorized");
    assert_eq!(Socket::try_connect(&server.base, &old_token).await.err(), Some(401));
    let fresh = User { aci, ..user };
    let token = server.token(&fresh).await;
    server.get("/v1/devices", Auth::Bearer(&token)).await.expect(200);
    server.stop().await;
}

/// Sends that race an unlink answer 200, 409 or 410, never 500; nothing sent to the removed device ever
/// reaches the device that later gets its id.
async fn sends_racing_an_unlink_never_fail_and_never_reach_the_next_device(backend: Backend) {
    let server = std::sync::Arc::new(start(backend).await);
    let bob = ready_user(&server).await;
    let laptop = server.add_device(&bob, 4321).await;
    server.put("/v1/keys", laptop.bearer(), full_upload(&bob.identity, 2)).await.expect(204);
    let alice = ready_user(&server).await;
    let body =
        json!({"messages": [message(&bob, 1, b"to bob"), message(&laptop, 1, b"to the laptop")], "timestamp": 1});
    let path = format!("/v1/messages/{}", bob.aci);

    let mut senders = Vec::new();
    for _ in 0..4 {
        let (server, alice, body, path) = (server.clone(), alice.clone(), body.clone(), path.clone());
        senders.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..25 {
                let reply = server.put(&path, alice.bearer(), body.clone()).await;
                statuses.push(reply.status.as_u16());
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.delete(&format!("/v1/devices/{}", laptop.device_id), bob.bearer()).await.expect(204);
    let mut statuses = Vec::new();
    for sender in senders {
        statuses.extend(sender.await.expect("sender"));
    }
    assert!(statuses.iter().all(|s| [200, 409, 410].contains(s)), "statuses: {statuses:?}");
    assert!(statuses.contains(&409), "sends after the unlink are told the device set changed: {statuses:?}");

    // The next device gets the same id at once (forced) and must find an empty queue.
    let next = server.add_device_reusing_ids_after(&bob, 999, sealpost::domain::now_millis()).await;
    assert_eq!(next.device_id, laptop.device_id);
    let mut socket = Socket::connect(&server.base, &next.token).await;
    match socket.next().await {
        Incoming::QueueEmpty(_) => {}
        other => panic!("the new device received something meant for the removed one: {other:?}"),
    }
    socket.close().await;
    match std::sync::Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => panic!("server still shared"),
    }
}

async fn the_proxy_appended_address_counts_over_every_header_line(backend: Backend) {
    let server = start_with(backend, |c| {
        c.trusted_proxy_header = Some("x-forwarded-for".into());
        c.limit_registration_per_ip = limit("2/1h");
    })
    .await;
    let key = sealpost::crypto::xeddsa::KeyPair::generate().public_serialized();
    let body = json!({
        "identityKey": STANDARD.encode(key), "registrationId": 5, "deviceSecret": STANDARD.encode([6u8; 32]),
    })
    .to_string();
    // The client's own line comes first, the proxy's last: only the proxy's address counts.
    let request = |own: &str| {
        format!(
            "POST /v1/accounts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-forwarded-for: {own}\r\nx-forwarded-for: 203.0.113.7\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    assert_eq!(raw_exchange(&server.base, request("1.1.1.1").as_bytes()).await.status, 201);
    assert_eq!(raw_exchange(&server.base, request("2.2.2.2").as_bytes()).await.status, 201);
    let third = raw_exchange(&server.base, request("3.3.3.3").as_bytes()).await;
    assert_eq!(third.status, 429, "{third:?}");
    assert_eq!(third.body["code"], "rate_limited");
    server.stop().await;
}

async fn ipv6_clients_share_a_bucket_per_prefix(backend: Backend) {
    let server = start_with(backend, |c| {
        c.trusted_proxy_header = Some("x-forwarded-for".into());
        c.limit_registration_per_ip = limit("2/1h");
    })
    .await;
    let register = |from: &'static str| {
        let key = sealpost::crypto::xeddsa::KeyPair::generate().public_serialized();
        let body = json!({
            "identityKey": STANDARD.encode(key), "registrationId": 5, "deviceSecret": STANDARD.encode([6u8; 32]),
        });
        let server = &server;
        async move { server.call(Method::POST, "/v1/accounts", Auth::Header("x-forwarded-for", from), Some(body)).await }
    };
    register("2001:db8:1:2::1").await.expect(201);
    register("2001:db8:1:2:ffff::9").await.expect(201);
    register("2001:db8:1:2::77").await.expect_error(429, "rate_limited");
    // Another /64 is another client.
    register("2001:db8:1:3::1").await.expect(201);
    server.stop().await;
}

async fn bodies_must_be_json_objects(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    server
        .put("/v1/accounts/me/attributes", user.bearer(), json!({"unidentifiedAccessKey": STANDARD.encode([9u8; 16])}))
        .await
        .expect(204);
    let key = sealpost::crypto::xeddsa::KeyPair::generate().public_serialized();
    let array = json!([STANDARD.encode(key), 77, STANDARD.encode([1u8; 32])]);
    server.post("/v1/accounts", Auth::None, array).await.expect_error(400, "invalid_body");
    server.put("/v1/accounts/me/attributes", user.bearer(), json!([])).await.expect_error(400, "invalid_body");
    let aci = sealpost::domain::Aci::parse(&user.aci).expect("aci");
    let account = server.app.storage.accounts.account(aci).await.expect("read").expect("exists");
    assert_eq!(account.access_key.map(|k| k.0), Some([9u8; 16]), "the refused body removed nothing");
    server.stop().await;
}

async fn every_error_the_server_can_give_is_json(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("GET /v1/keys/%FF/1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n", user.token),
            400,
            "invalid_path",
        ),
        ("GET /v1/websocket?token=a&token=b HTTP/1.1\r\nhost: x\r\n\r\n".into(), 400, "invalid_query"),
        (format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000)), 414, "uri_too_long"),
        (format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "b".repeat(500_000)), 431, "headers_too_large"),
        ("NOT A REQUEST LINE\r\n\r\n".into(), 400, "malformed_request"),
        ("GET / HTTP/1.1\r\nbad header line\r\n\r\n".into(), 400, "malformed_request"),
    ];
    for (request, status, code) in cases {
        let reply = raw_exchange(&server.base, request.as_bytes()).await;
        assert_eq!(reply.status, status, "{}: {reply:?}", &request[..40.min(request.len())]);
        assert_eq!(reply.body["code"], code, "{reply:?}");
        assert!(reply.body["message"].is_string(), "{reply:?}");
        assert!(reply.head.to_ascii_lowercase().contains("content-type: application/json"), "{reply:?}");
    }
    // The server is still fine.
    server.get("/v1/devices", user.bearer()).await.expect(200);
    server.stop().await;
}

/// Arbitrary methods all count as `other`: a client cannot grow `/metrics` by inventing methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_are_bounded_whatever_the_method() {
    let server = start(Backend::Embedded).await;
    let metrics = |server: &TestServer| {
        let url = format!("{}/metrics", server.metrics_base);
        let http = server.http.clone();
        async move { http.get(url).send().await.expect("metrics").text().await.expect("text") }
    };
    let before = metrics(&server).await;
    let mut invented = Vec::new();
    for i in 0..50 {
        let method = format!("M{i}{}", "X".repeat(200));
        let reply =
            raw_exchange(&server.base, format!("{method} /v1/devices HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await;
        assert!(reply.status >= 400 && reply.body["code"].is_string(), "{reply:?}");
        invented.push(method);
    }
    let after = metrics(&server).await;
    assert!(after.contains("method=\"other\""), "{after}");
    for method in &invented {
        assert!(!after.contains(method.as_str()), "a method became a label");
    }
    assert!(after.len() < before.len() + 5_000, "metrics grew from {} to {} bytes", before.len(), after.len());
    server.stop().await;
}

/// A connection that sends nothing, or half its headers, or half its body, is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start_with(Backend::Embedded, |c| {
        c.header_read_timeout_seconds = 1;
        c.body_read_timeout_seconds = 1;
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    // Closed within a bound far below the 60-75 s such clients could hold a connection before.
    let closed_within = |mut stream: tokio::net::TcpStream| async move {
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await;
        assert!(read.is_ok(), "the server kept the connection open");
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let silent = tokio::net::TcpStream::connect(&address).await.expect("connect");
    closed_within(silent).await;
    let mut half_head = tokio::net::TcpStream::connect(&address).await.expect("connect");
    half_head.write_all(b"GET /v1/devices HTTP/1.1\r\nhost: x\r\n").await.expect("write");
    closed_within(half_head).await;
    let mut half_body = tokio::net::TcpStream::connect(&address).await.expect("connect");
    half_body
        .write_all(b"POST /v1/accounts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"")
        .await
        .expect("write");
    let answer = closed_within(half_body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    server.stop().await;
}

/// Beyond the per-address cap, a connection is answered 503 with a JSON body and closed; a freed place
/// can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let server = start_with(Backend::Embedded, |c| c.max_connections_per_ip = 3).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&address).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = raw_exchange(&server.base, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.body["code"], "too_many_connections");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admitted = raw_exchange(&server.base, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!(admitted.status, 200, "{admitted:?}");
    drop(held);
    server.stop().await;
}

/// No Redis key names an account in the clear where the docs promise it does not: rate-limit buckets,
/// including the one a send takes inside the queue script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_rate_limit_keys_name_no_account() {
    let server = start(Backend::ScaleOut).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    send(&server, &alice, &bob, b"hello").await.expect(200);
    server.get(&format!("/v1/keys/{}/1", bob.aci), alice.bearer()).await.expect(200);
    let keys = redis_keys(&format!("{}rl:*", server.config.redis_key_prefix)).await;
    assert!(keys.iter().any(|k| k.contains("messages_sender_recipient")), "the send's bucket was written: {keys:?}");
    assert!(keys.len() >= 4, "rate-limit keys were written: {keys:?}");
    for key in &keys {
        assert!(!key.contains(&bob.aci) && !key.contains(&alice.aci), "a bucket names an account: {key}");
    }
    server.stop().await;
}
