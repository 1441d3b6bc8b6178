//! Message relay: queues, WebSocket delivery with acknowledgements, device-set checks, sealed sender.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prost::Message as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::*;
use crate::socket::{Incoming, Socket};

both_backends!(
    offline_backlog_arrives_in_order_and_unacknowledged_envelopes_come_back,
    live_delivery_fields_keepalive_and_needs_sync,
    device_set_must_match_the_recipient,
    sealed_sender_carries_no_source,
    expired_and_online_envelopes_are_never_stored_or_late,
    message_limits_have_stable_codes,
    newer_socket_displaces_older_and_removed_device_is_closed,
    rest_fetch_pages_and_deletes,
    certificates_chain_to_the_trust_root,
    browsers_pass_the_token_in_the_query_and_idle_sockets_close,
    the_reaper_deletes_expired_envelopes,
    expired_envelopes_neither_fill_queues_nor_cut_pages_short,
    malformed_sends_and_plain_requests_to_sockets_get_json_errors,
    sealed_and_online_sends_are_rate_limited_too,
);

async fn sealed_and_online_sends_are_rate_limited_too(backend: Backend) {
    let server = start_with(backend, |c| c.limit_messages_per_sender_recipient = limit("2/1h")).await;
    let bob = ready_user(&server).await;
    let key = [3u8; 16];
    server
        .put("/v1/accounts/me/attributes", bob.bearer(), json!({"unidentifiedAccessKey": STANDARD.encode(key)}))
        .await
        .expect(204);
    let path = format!("/v1/messages/{}", bob.aci);
    let sealed = json!({"messages": [message(&bob, 6, b"sealed")], "timestamp": 1});
    // Wrong keys cost tokens as well, so access keys cannot be guessed at leisure.
    server.put(&path, Auth::AccessKey(&[4u8; 16]), sealed.clone()).await.expect_error(401, "unauthorized");
    server.put(&path, Auth::AccessKey(&key), sealed.clone()).await.expect(200);
    let reply = server.put(&path, Auth::AccessKey(&key), sealed).await;
    reply.expect_error(429, "rate_limited");
    assert!(reply.headers.contains_key("retry-after"));

    let alice = ready_user(&server).await;
    let online = json!({"messages": [message(&bob, 1, b"ring")], "timestamp": 1, "online": true});
    server.put(&path, alice.bearer(), online.clone()).await.expect(200);
    server.put(&path, alice.bearer(), online.clone()).await.expect(200);
    server.put(&path, alice.bearer(), online).await.expect_error(429, "rate_limited");
    server.stop().await;
}

async fn expired_envelopes_neither_fill_queues_nor_cut_pages_short(backend: Backend) {
    let server = start_with(backend, |c| {
        c.max_queue_len = 3;
        c.ws_window = 2;
    })
    .await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let path = format!("/v1/messages/{}", bob.aci);
    for _ in 0..3 {
        server
            .put(
                &path,
                alice.bearer(),
                json!({"messages": [message(&bob, 1, b"brief")], "timestamp": 1, "ttlSeconds": 1}),
            )
            .await
            .expect(200);
    }
    send(&server, &alice, &bob, b"full").await.expect_error(507, "queue_full");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The three expired envelopes no longer count: two lasting ones fit.
    send(&server, &alice, &bob, b"first").await.expect(200);
    send(&server, &alice, &bob, b"second").await.expect(200);
    // With a window of two, the first page may meet only expired envelopes; the socket must still get
    // both lasting ones before it hears that the queue is empty.
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    for expected in [&b"first"[..], &b"second"[..]] {
        let (id, envelope) = socket.envelope().await;
        assert_eq!(envelope.content.as_deref(), Some(expected));
        socket.respond(id, 200).await;
    }
    socket.expect_queue_empty().await;
    socket.close().await;
    server.stop().await;

    // Expired envelopes left in front of live ones (nothing purged them) must not end a page early.
    let server = start_with(backend, |c| c.ws_window = 2).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let path = format!("/v1/messages/{}", bob.aci);
    for _ in 0..3 {
        server
            .put(
                &path,
                alice.bearer(),
                json!({"messages": [message(&bob, 1, b"brief")], "timestamp": 1, "ttlSeconds": 1}),
            )
            .await
            .expect(200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(&server, &alice, &bob, b"first").await.expect(200);
    send(&server, &alice, &bob, b"second").await.expect(200);
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    for expected in [&b"first"[..], &b"second"[..]] {
        let (id, envelope) = socket.envelope().await;
        assert_eq!(envelope.content.as_deref(), Some(expected));
        socket.respond(id, 200).await;
    }
    socket.expect_queue_empty().await;
    let page = server.get("/v1/messages", bob.bearer()).await.expect(200);
    assert_eq!(page["more"], false);
    socket.close().await;
    server.stop().await;
}

async fn malformed_sends_and_plain_requests_to_sockets_get_json_errors(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let path = format!("/v1/messages/{}", bob.aci);
    server
        .put(&path, alice.bearer(), json!({"messages": [message(&bob, 1, b"x")], "timestamp": 1, "onlne": true}))
        .await
        .expect_error(400, "unknown_field");
    let mut bad_device = message(&bob, 1, b"x");
    bad_device["destinationDeviceId"] = json!(-1);
    server
        .put(&path, alice.bearer(), json!({"messages": [bad_device], "timestamp": 1}))
        .await
        .expect_error(400, "invalid_body");
    server.get("/v1/websocket", bob.bearer()).await.expect_error(426, "websocket_upgrade_required");
    server.get("/v1/websocket", Auth::None).await.expect_error(401, "unauthorized");
    server.get("/v1/websocket/provisioning", Auth::None).await.expect_error(426, "websocket_upgrade_required");
    server.stop().await;
}

/// A recipient ready to receive: registered with keys uploaded.
pub async fn ready_user(server: &TestServer) -> User {
    let user = server.register().await;
    server.put("/v1/keys", user.bearer(), full_upload(&user.identity, 2)).await.expect(204);
    user
}

pub fn message(to: &User, kind: i32, content: &[u8]) -> Value {
    json!({
        "type": kind,
        "destinationDeviceId": to.device_id,
        "destinationRegistrationId": to.registration_id,
        "content": STANDARD.encode(content),
    })
}

pub async fn send(server: &TestServer, from: &User, to: &User, content: &[u8]) -> Reply {
    server
        .put(
            &format!("/v1/messages/{}", to.aci),
            from.bearer(),
            json!({"messages": [message(to, 1, content)], "timestamp": 1234}),
        )
        .await
}

async fn offline_backlog_arrives_in_order_and_unacknowledged_envelopes_come_back(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    for i in 0..50u32 {
        send(&server, &alice, &bob, format!("message {i}").as_bytes()).await.expect(200);
    }
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    let mut guids = Vec::new();
    for i in 0..50u32 {
        let (id, envelope) = socket.envelope().await;
        assert_eq!(envelope.content.as_deref(), Some(format!("message {i}").as_bytes()), "order");
        guids.push(envelope.server_guid.clone().expect("guid"));
        if i < 30 {
            socket.respond(id, 200).await;
        }
    }
    socket.expect_queue_empty().await;
    // A keepalive round trip proves the 30 acknowledgements were processed before we drop the socket.
    socket.request(77, "GET", "/v1/keepalive").await;
    assert!(matches!(socket.next().await, Incoming::Response(77, 200)));
    socket.close().await;

    let mut socket = Socket::connect(&server.base, &bob.token).await;
    for i in 30..50u32 {
        let (id, envelope) = socket.envelope().await;
        assert_eq!(envelope.content.as_deref(), Some(format!("message {i}").as_bytes()));
        assert_eq!(envelope.server_guid.as_ref(), Some(&guids[i as usize]), "same guid on redelivery");
        socket.respond(id, 200).await;
    }
    socket.expect_queue_empty().await;
    assert!(socket.next_within(Duration::from_millis(300)).await.is_none(), "nothing after the backlog");
    socket.close().await;
    server.stop().await;
}

async fn live_delivery_fields_keepalive_and_needs_sync(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    socket.expect_queue_empty().await;

    let before = sealpost::domain::now_millis() as u64;
    let reply = send(&server, &alice, &bob, b"hello bob").await.expect(200);
    assert_eq!(reply["needsSync"], false);
    let (id, envelope, headers) = match socket.next().await {
        Incoming::Envelope(id, envelope, headers) => (id, envelope, headers),
        other => panic!("expected an envelope, got {other:?}"),
    };
    assert_eq!(envelope.r#type, Some(1));
    assert_eq!(envelope.content.as_deref(), Some(&b"hello bob"[..]));
    assert_eq!(envelope.client_timestamp, Some(1234));
    assert_eq!(envelope.source_device, Some(1));
    let alice_aci = uuid::Uuid::parse_str(&alice.aci).expect("aci");
    let bob_aci = uuid::Uuid::parse_str(&bob.aci).expect("aci");
    assert_eq!(envelope.source_service_id.as_deref(), Some(&alice_aci.as_bytes()[..]));
    assert_eq!(envelope.destination_service_id.as_deref(), Some(&bob_aci.as_bytes()[..]));
    assert_eq!(envelope.server_guid.as_ref().map(Vec::len), Some(16));
    assert_eq!(envelope.urgent, Some(true));
    assert!(envelope.server_timestamp.expect("server timestamp") >= before);
    assert!(headers.iter().any(|h| h.starts_with("X-Signal-Timestamp:")), "{headers:?}");
    socket.respond(id, 200).await;

    socket.request(5, "GET", "/v1/keepalive").await;
    assert!(matches!(socket.next().await, Incoming::Response(5, 200)));
    socket.request(6, "GET", "/v1/something-else").await;
    assert!(matches!(socket.next().await, Incoming::Response(6, 404)));

    // With a second device, the sender is told to sync its other devices.
    server.add_device(&alice, 999).await;
    let reply = send(&server, &alice, &bob, b"again").await.expect(200);
    assert_eq!(reply["needsSync"], true);
    socket.close().await;
    server.stop().await;
}

async fn device_set_must_match_the_recipient(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let laptop = server.add_device(&bob, 4321).await;
    server.put("/v1/keys", laptop.bearer(), full_upload(&bob.identity, 1)).await.expect(204);
    let alice = ready_user(&server).await;
    let path = format!("/v1/messages/{}", bob.aci);
    let body = |messages: Vec<Value>| json!({"messages": messages, "timestamp": 1});

    let reply = server.put(&path, alice.bearer(), body(vec![message(&bob, 1, b"x")])).await;
    reply.expect_error(409, "mismatched_devices");
    assert_eq!(reply.body["missingDevices"], json!([laptop.device_id]));
    assert_eq!(reply.body["extraDevices"], json!([]));

    let mut ghost = laptop.clone();
    ghost.device_id = 9;
    let reply = server
        .put(
            &path,
            alice.bearer(),
            body(vec![message(&bob, 1, b"x"), message(&laptop, 1, b"x"), message(&ghost, 1, b"x")]),
        )
        .await;
    reply.expect_error(409, "mismatched_devices");
    assert_eq!(reply.body["extraDevices"], json!([9]));

    // A stale registration id wins over a missing device (410 is checked first).
    let mut stale = laptop.clone();
    stale.registration_id = 1111;
    let reply = server.put(&path, alice.bearer(), body(vec![message(&stale, 1, b"x")])).await;
    reply.expect_error(410, "stale_devices");
    assert_eq!(reply.body["staleDevices"], json!([laptop.device_id]));

    // Nothing was queued by the refused sends.
    let pending = server.get("/v1/messages", bob.bearer()).await.expect(200);
    assert_eq!(pending["messages"], json!([]));

    server.put(&path, alice.bearer(), body(vec![message(&bob, 1, b"a"), message(&laptop, 1, b"b")])).await.expect(200);
    let pending = server.get("/v1/messages", laptop.bearer()).await.expect(200);
    assert_eq!(pending["messages"][0]["content"], STANDARD.encode(b"b"));

    // To one's own account the sending device is left out.
    let reply = server.put(&path, bob.bearer(), body(vec![message(&laptop, 1, b"sync")])).await.expect(200);
    assert_eq!(reply["needsSync"], true);
    let reply = server.put(&path, bob.bearer(), body(vec![message(&bob, 1, b"x"), message(&laptop, 1, b"x")])).await;
    reply.expect_error(409, "mismatched_devices");
    assert_eq!(reply.body["extraDevices"], json!([1]));
    server.stop().await;
}

async fn sealed_sender_carries_no_source(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let key = [7u8; 16];
    server
        .put("/v1/accounts/me/attributes", bob.bearer(), json!({"unidentifiedAccessKey": STANDARD.encode(key)}))
        .await
        .expect(204);
    let path = format!("/v1/messages/{}", bob.aci);
    let sealed = json!({"messages": [message(&bob, 6, b"sealed")], "timestamp": 5});
    server.put(&path, Auth::AccessKey(&key), sealed.clone()).await.expect(200);
    server.put(&path, Auth::AccessKey(&[8u8; 16]), sealed.clone()).await.expect_error(401, "unauthorized");
    server
        .put(&format!("/v1/messages/{}", uuid::Uuid::new_v4()), Auth::AccessKey(&key), sealed.clone())
        .await
        .expect_error(401, "unauthorized");
    let identified_type = json!({"messages": [message(&bob, 1, b"x")], "timestamp": 5});
    server.put(&path, Auth::AccessKey(&key), identified_type).await.expect_error(400, "invalid_message_type");
    server.put(&path, Auth::None, sealed.clone()).await.expect_error(401, "unauthorized");
    let alice = ready_user(&server).await;
    server
        .put(&format!("/v1/messages/{}", uuid::Uuid::new_v4()), alice.bearer(), sealed)
        .await
        .expect_error(404, "not_found");

    let pending = server.get("/v1/messages", bob.bearer()).await.expect(200);
    let stored = &pending["messages"][0];
    assert_eq!(stored["type"], 6);
    assert!(stored.get("sourceServiceId").is_none() && stored.get("sourceDevice").is_none(), "{stored}");
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    let (_, envelope) = socket.envelope().await;
    assert_eq!(envelope.source_service_id, None);
    assert_eq!(envelope.source_device, None);
    // The raw stored bytes carry no trace of any sender either.
    let aci = sealpost::domain::Aci::parse(&bob.aci).expect("aci");
    let raw = server.app.storage.queue.peek(aci, sealpost::domain::DeviceId(1), 0, 10, 0).await.expect("peek");
    let decoded = sealpost::delivery::proto::Envelope::decode(raw[0].envelope.as_slice()).expect("envelope");
    assert_eq!((decoded.source_service_id, decoded.source_device), (None, None));
    socket.close().await;
    server.stop().await;
}

async fn expired_and_online_envelopes_are_never_stored_or_late(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let path = format!("/v1/messages/{}", bob.aci);
    server
        .put(&path, alice.bearer(), json!({"messages": [message(&bob, 1, b"short")], "timestamp": 1, "ttlSeconds": 1}))
        .await
        .expect(200);
    server
        .put(&path, alice.bearer(), json!({"messages": [message(&bob, 1, b"live")], "timestamp": 1, "online": true}))
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(server.get("/v1/messages", bob.bearer()).await.expect(200)["messages"], json!([]));
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    socket.expect_queue_empty().await;

    // Online-only envelopes do reach a connected socket.
    server
        .put(&path, alice.bearer(), json!({"messages": [message(&bob, 1, b"ring")], "timestamp": 1, "online": true}))
        .await
        .expect(200);
    let (_, envelope) = socket.envelope().await;
    assert_eq!(envelope.content.as_deref(), Some(&b"ring"[..]));
    assert_eq!(server.get("/v1/messages", bob.bearer()).await.expect(200)["messages"], json!([]));
    socket.close().await;
    server.stop().await;
}

async fn message_limits_have_stable_codes(backend: Backend) {
    let server = start_with(backend, |c| {
        c.max_queue_len = 3;
        c.max_message_bytes = 1000;
        c.max_message_ttl_seconds = 3600;
        c.limit_messages_per_sender_recipient = limit("6/1h");
    })
    .await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let path = format!("/v1/messages/{}", bob.aci);
    send(&server, &alice, &bob, &[1u8; 1001]).await.expect_error(413, "message_too_large");
    server
        .put(&path, alice.bearer(), json!({"messages": [message(&bob, 1, b"x")], "timestamp": 1, "ttlSeconds": 3601}))
        .await
        .expect_error(400, "invalid_ttl");
    server
        .put(&path, alice.bearer(), json!({"messages": [message(&bob, 2, b"x")], "timestamp": 1}))
        .await
        .expect_error(400, "invalid_message_type");
    server
        .put(&path, alice.bearer(), json!({"messages": [{"type": 1, "content": "x"}], "timestamp": 1}))
        .await
        .expect_error(400, "invalid_body");
    server
        .raw(Method::PUT, &path, "application/json", b"{\"messages\": [".to_vec())
        .await
        .expect_error(401, "unauthorized");
    for _ in 0..3 {
        send(&server, &alice, &bob, &[1u8; 1000]).await.expect(200);
    }
    send(&server, &alice, &bob, b"one too many").await.expect_error(507, "queue_full");
    assert_eq!(
        server.get("/v1/messages", bob.bearer()).await.expect(200)["messages"].as_array().map(Vec::len),
        Some(3)
    );
    // The rate limit counts every attempt that passed validation (4 so far): two more, then 429.
    let carol = ready_user(&server).await;
    send(&server, &carol, &bob, b"other sender").await.expect_error(507, "queue_full");
    send(&server, &alice, &bob, b"x").await.expect_error(507, "queue_full");
    send(&server, &alice, &bob, b"x").await.expect_error(507, "queue_full");
    let reply = send(&server, &alice, &bob, b"x").await;
    reply.expect_error(429, "rate_limited");
    assert!(reply.headers.contains_key("retry-after"));
    server.stop().await;
}

async fn newer_socket_displaces_older_and_removed_device_is_closed(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let laptop = server.add_device(&bob, 555).await;
    server.put("/v1/keys", laptop.bearer(), full_upload(&bob.identity, 1)).await.expect(204);
    let mut first = Socket::connect(&server.base, &bob.token).await;
    first.expect_queue_empty().await;
    let mut second = Socket::connect(&server.base, &bob.token).await;
    second.expect_queue_empty().await;
    match first.next().await {
        Incoming::Closed(code) => assert_eq!(code, Some(4409)),
        other => panic!("expected 4409, got {other:?}"),
    }
    second.request(1, "GET", "/v1/keepalive").await;
    assert!(matches!(second.next().await, Incoming::Response(1, 200)));

    let mut laptop_socket = Socket::connect(&server.base, &laptop.token).await;
    laptop_socket.expect_queue_empty().await;
    let alice = ready_user(&server).await;
    server
        .put(
            &format!("/v1/messages/{}", bob.aci),
            alice.bearer(),
            json!({"messages": [message(&bob, 1, b"a"), message(&laptop, 1, b"b")], "timestamp": 1}),
        )
        .await
        .expect(200);
    let _ = laptop_socket.envelope().await;
    server.delete(&format!("/v1/devices/{}", laptop.device_id), bob.bearer()).await.expect(204);
    match laptop_socket.next().await {
        Incoming::Closed(code) => assert_eq!(code, Some(4401)),
        other => panic!("expected 4401, got {other:?}"),
    }
    assert_eq!(Socket::try_connect(&server.base, &laptop.token).await.err(), Some(401));
    let aci = sealpost::domain::Aci::parse(&bob.aci).expect("aci");
    let left = server.app.storage.queue.peek(aci, sealpost::domain::DeviceId(laptop.device_id), 0, 10, 0).await;
    assert!(left.expect("peek").is_empty(), "removed device's queue is gone");
    assert_eq!(Socket::try_connect(&server.base, "not-a-token").await.err(), Some(401));
    second.close().await;
    server.stop().await;
}

async fn rest_fetch_pages_and_deletes(backend: Backend) {
    let server = start_with(backend, |c| c.limit_messages_per_sender_recipient = limit("1000/1m")).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    for i in 0..101u32 {
        send(&server, &alice, &bob, &i.to_be_bytes()).await.expect(200);
    }
    let page = server.get("/v1/messages", bob.bearer()).await.expect(200);
    let messages = page["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 100);
    assert_eq!(page["more"], true);
    assert_eq!(messages[0]["content"], STANDARD.encode(0u32.to_be_bytes()));
    assert_eq!(messages[0]["sourceServiceId"], json!(alice.aci));
    assert_eq!(messages[0]["sourceDevice"], 1);
    assert_eq!(messages[0]["destinationServiceId"], json!(bob.aci));
    for message in messages {
        let guid = message["guid"].as_str().expect("guid");
        server.delete(&format!("/v1/messages/uuid/{guid}"), bob.bearer()).await.expect(204);
    }
    let page = server.get("/v1/messages", bob.bearer()).await.expect(200);
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["more"], false);
    assert_eq!(page["messages"][0]["content"], STANDARD.encode(100u32.to_be_bytes()));
    server.delete("/v1/messages/uuid/not-a-uuid", bob.bearer()).await.expect_error(400, "invalid_path");
    server.stop().await;
}

async fn certificates_chain_to_the_trust_root(backend: Backend) {
    use sealpost::crypto::sender_certificate::{SenderCertificateBody, ServerCertificateBody, Signed};
    let server = start(backend).await;
    let bob = server.register().await;
    server.get("/v1/certificate/delivery", Auth::None).await.expect_error(401, "unauthorized");
    let root = server.get("/v1/certificate/trust-root", Auth::None).await.expect(200);
    let root = STANDARD.decode(root["publicKey"].as_str().expect("key")).expect("b64");
    assert_eq!((root.len(), root[0]), (33, 0x05));
    let cert = server.get("/v1/certificate/delivery", bob.bearer()).await.expect(200);
    let cert = STANDARD.decode(cert["certificate"].as_str().expect("cert")).expect("b64");

    let outer = Signed::decode(cert.as_slice()).expect("outer");
    let body = SenderCertificateBody::decode(outer.certificate.as_deref().expect("body")).expect("body");
    assert_eq!(body.sender_uuid.as_deref(), Some(bob.aci.as_str()));
    assert_eq!(body.sender_device, Some(1));
    assert_eq!(body.identity_key.as_deref(), Some(&bob.identity.public_serialized()[..]));
    let expires = body.expires.expect("expiry");
    let now = sealpost::domain::now_millis() as u64;
    assert!(expires > now + 86_000_000 && expires <= now + 86_400_000 + 5_000, "valid for a day");

    let server_cert = Signed::decode(body.signer.as_deref().expect("signer")).expect("server cert");
    let server_body = ServerCertificateBody::decode(server_cert.certificate.as_deref().expect("body")).expect("body");
    let server_key: [u8; 32] = server_body.key.expect("key")[1..].try_into().expect("33 bytes");
    let root_key: [u8; 32] = root[1..].try_into().expect("33 bytes");
    let sig = |s: Option<Vec<u8>>| -> [u8; 64] { s.expect("signature").try_into().expect("64 bytes") };
    assert!(sealpost::crypto::xeddsa::verify(
        &root_key,
        server_cert.certificate.as_deref().expect("b"),
        &sig(server_cert.signature)
    ));
    assert!(sealpost::crypto::xeddsa::verify(
        &server_key,
        outer.certificate.as_deref().expect("b"),
        &sig(outer.signature)
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_delivers_across_instances() {
    let config = test_config(Backend::ScaleOut);
    let one = start_config(config.clone()).await;
    let two = start_config(config).await;
    let bob = ready_user(&one).await;
    let alice = ready_user(&two).await;
    let mut socket = Socket::connect(&one.base, &bob.token).await;
    socket.expect_queue_empty().await;

    let mut latencies = Vec::new();
    for i in 0..20u32 {
        let started = Instant::now();
        send(&two, &alice, &bob, &i.to_be_bytes()).await.expect(200);
        let (id, envelope) = socket.envelope().await;
        latencies.push(started.elapsed());
        assert_eq!(envelope.content.as_deref(), Some(&i.to_be_bytes()[..]));
        socket.respond(id, 200).await;
    }
    latencies.sort();
    println!(
        "cross-instance send→deliver latency over 20 sends: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // A socket for the same device on the other instance displaces this one.
    let mut other = Socket::connect(&two.base, &bob.token).await;
    other.expect_queue_empty().await;
    match socket.next().await {
        Incoming::Closed(code) => assert_eq!(code, Some(4409)),
        other => panic!("expected 4409, got {other:?}"),
    }
    other.close().await;
    two.stop().await;
    one.stop().await;
}

async fn browsers_pass_the_token_in_the_query_and_idle_sockets_close(backend: Backend) {
    use futures_util::StreamExt;
    let server = start_with(backend, |c| c.ws_idle_timeout_seconds = 1).await;
    let bob = ready_user(&server).await;
    let url = format!("{}/v1/websocket?token={}", server.base.replacen("http://", "ws://", 1), bob.token);
    let (mut stream, _) = tokio_tungstenite::connect_async(url).await.expect("query-token socket");
    let started = Instant::now();
    let mut close_code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        if let Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) = frame {
            close_code = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close_code, Some(1000), "an idle socket is closed normally");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before the idle timeout");
    let bad = format!("{}/v1/websocket?token=nope", server.base.replacen("http://", "ws://", 1));
    assert!(tokio_tungstenite::connect_async(bad).await.is_err(), "a bad query token is refused");
    server.stop().await;
}

async fn the_reaper_deletes_expired_envelopes(backend: Backend) {
    let server = start(backend).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let path = format!("/v1/messages/{}", bob.aci);
    server
        .put(&path, alice.bearer(), json!({"messages": [message(&bob, 1, b"brief")], "timestamp": 1, "ttlSeconds": 1}))
        .await
        .expect(200);
    send(&server, &alice, &bob, b"lasting").await.expect(200);
    let later = sealpost::domain::now_millis() + 1500;
    let reaped = server.app.storage.queue.reap(later).await.expect("reap");
    assert_eq!(reaped, 1, "the expired envelope was reaped, and only it");
    let aci = sealpost::domain::Aci::parse(&bob.aci).expect("aci");
    let left = server.app.storage.queue.peek(aci, sealpost::domain::DeviceId(1), 0, 10, later).await.expect("peek");
    assert_eq!(left.len(), 1, "only the lasting envelope is visible after the first one's expiry");
    assert_eq!(
        sealpost::delivery::proto::Envelope::decode(left[0].envelope.as_slice()).expect("envelope").content.as_deref(),
        Some(&b"lasting"[..])
    );
    server.stop().await;
}
