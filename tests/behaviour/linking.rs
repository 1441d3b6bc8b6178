//! Linking a device by QR code: provisioning socket, relayed message, single-use link codes.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use prost::Message as _;
use sealpost::crypto::xeddsa::KeyPair;
use sealpost::delivery::proto::WebSocketMessage;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::both_backends;
use crate::harness::*;

both_backends!(
    link_a_device_through_the_provisioning_socket,
    link_codes_are_single_use_and_expire,
    a_failed_signature_spends_the_code,
    an_account_holds_at_most_max_devices,
    unlinking_revokes_token_socket_and_pool,
);

type Stream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A new device's provisioning socket and the address the server gave it.
struct Provisioning {
    stream: Stream,
    address: String,
}

async fn open_provisioning(server: &TestServer) -> Provisioning {
    let url = format!("{}/v1/websocket/provisioning", server.base.replacen("http://", "ws://", 1));
    let (mut stream, _) = tokio_tungstenite::connect_async(url).await.expect("provisioning socket");
    let (path, body) = next_request(&mut stream).await;
    assert_eq!(path, "/v1/address");
    let address = String::from_utf8(body).expect("address is text");
    assert!(address.len() >= 16, "address {address}");
    Provisioning { stream, address }
}

async fn next_request(stream: &mut Stream) -> (String, Vec<u8>) {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a frame in time");
        match frame.expect("open").expect("frame") {
            Message::Binary(bytes) => {
                let message = WebSocketMessage::decode(bytes.as_ref()).expect("WebSocketMessage");
                let request = message.request.expect("a request");
                assert_eq!(request.verb.as_deref(), Some("PUT"));
                return (request.path.expect("path"), request.body.unwrap_or_default());
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn link_code(server: &TestServer, primary: &User) -> String {
    let body = server.get("/v1/devices/provisioning/code", primary.bearer()).await.expect(200);
    let expires = body["expiresAt"].as_i64().expect("expiresAt");
    assert!(expires > sealpost::domain::now_millis());
    body["verificationCode"].as_str().expect("code").to_owned()
}

fn link_body(identity: &KeyPair, code: &str, secret: &[u8], registration_id: u16) -> Value {
    json!({
        "verificationCode": code,
        "deviceSecret": STANDARD.encode(secret),
        "registrationId": registration_id,
        "name": STANDARD.encode(b"encrypted name"),
        "signedPreKey": signed_ec(identity, 11),
        "pqLastResortPreKey": signed_kem(identity, 12),
    })
}

async fn link_a_device_through_the_provisioning_socket(backend: Backend) {
    let server = start(backend).await;
    let primary = server.register().await;
    let mut new_device = open_provisioning(&server).await;

    let code = link_code(&server, &primary).await;
    let opaque: Vec<u8> = (0..2048u32).map(|i| (i * 7 % 251) as u8).collect();
    server
        .put(
            &format!("/v1/provisioning/{}", new_device.address),
            primary.bearer(),
            json!({"body": STANDARD.encode(&opaque)}),
        )
        .await
        .expect(204);
    let (path, body) = next_request(&mut new_device.stream).await;
    assert_eq!(path, "/v1/message");
    assert_eq!(body, opaque, "the relayed bytes arrive unchanged");
    match tokio::time::timeout(Duration::from_secs(5), new_device.stream.next()).await.expect("close in time") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The address is gone with its socket.
    server
        .put(&format!("/v1/provisioning/{}", new_device.address), primary.bearer(), json!({"body": "AAAA"}))
        .await
        .expect_error(404, "not_found");

    let secret = [42u8; 32];
    let linked =
        server.put("/v1/devices/link", Auth::None, link_body(&primary.identity, &code, &secret, 777)).await.expect(200);
    assert_eq!(linked["aci"], json!(primary.aci));
    assert_eq!(linked["deviceId"], 2);
    let device = User {
        aci: primary.aci.clone(),
        device_id: 2,
        secret: secret.to_vec(),
        identity: primary.identity.clone(),
        registration_id: 777,
        token: String::new(),
    };
    let token = server.token(&device).await;
    server
        .put(
            "/v1/keys",
            Auth::Bearer(&token),
            json!({"preKeys": [one_time_ec(1)], "pqPreKeys": [signed_kem(&primary.identity, 5)]}),
        )
        .await
        .expect(204);
    let devices = server.get("/v1/devices", Auth::Bearer(&token)).await.expect(200);
    let devices = devices["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[1]["name"], json!(STANDARD.encode(b"encrypted name")));

    // The linked device has a bundle of its own, signed keys from the link request.
    let alice = server.register().await;
    let bundle = server.get(&format!("/v1/keys/{}/2", primary.aci), alice.bearer()).await.expect(200);
    assert_eq!(bundle["devices"][0]["registrationId"], 777);
    assert_eq!(bundle["devices"][0]["signedPreKey"]["keyId"], 11);
    assert_eq!(bundle["devices"][0]["preKey"]["keyId"], 1);

    // Only the primary hands out codes and relays.
    server
        .get("/v1/devices/provisioning/code", Auth::Bearer(&token))
        .await
        .expect_error(403, "primary_device_required");
    server
        .put("/v1/provisioning/nowhere", primary.bearer(), json!({"body": "AAAA"}))
        .await
        .expect_error(404, "not_found");
    server.stop().await;
}

async fn link_codes_are_single_use_and_expire(backend: Backend) {
    let server = start_with(backend, |c| c.link_code_ttl_seconds = 1).await;
    let primary = server.register().await;
    let code = link_code(&server, &primary).await;
    server.put("/v1/devices/link", Auth::None, link_body(&primary.identity, &code, &[1u8; 32], 5)).await.expect(200);
    server
        .put("/v1/devices/link", Auth::None, link_body(&primary.identity, &code, &[2u8; 32], 6))
        .await
        .expect_error(403, "invalid_verification_code");
    server
        .put("/v1/devices/link", Auth::None, link_body(&primary.identity, "made-up", &[2u8; 32], 6))
        .await
        .expect_error(403, "invalid_verification_code");
    let late = link_code(&server, &primary).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server
        .put("/v1/devices/link", Auth::None, link_body(&primary.identity, &late, &[3u8; 32], 7))
        .await
        .expect_error(403, "invalid_verification_code");
    server.stop().await;
}

async fn a_failed_signature_spends_the_code(backend: Backend) {
    let server = start(backend).await;
    let primary = server.register().await;
    let code = link_code(&server, &primary).await;
    let stranger = KeyPair::generate();
    server
        .put("/v1/devices/link", Auth::None, link_body(&stranger, &code, &[1u8; 32], 5))
        .await
        .expect_error(422, "invalid_signature");
    server
        .put("/v1/devices/link", Auth::None, link_body(&primary.identity, &code, &[1u8; 32], 5))
        .await
        .expect_error(403, "invalid_verification_code");
    // Malformed requests are refused before the code is looked up, so they do not spend it.
    let fresh = link_code(&server, &primary).await;
    let mut bad = link_body(&primary.identity, &fresh, &[1u8; 31], 5);
    server.put("/v1/devices/link", Auth::None, bad.clone()).await.expect_error(400, "invalid_device_secret");
    bad["deviceSecret"] = json!(STANDARD.encode([1u8; 32]));
    let good_key = bad["signedPreKey"]["publicKey"].clone();
    bad["signedPreKey"]["publicKey"] = json!(STANDARD.encode([5u8; 32]));
    server.put("/v1/devices/link", Auth::None, bad.clone()).await.expect_error(400, "invalid_key_length");
    bad["signedPreKey"]["publicKey"] = good_key;
    bad["deviceSecret"] = json!(STANDARD.encode([1u8; 32]));
    server.put("/v1/devices/link", Auth::None, bad).await.expect(200);
    let devices = server.get("/v1/devices", primary.bearer()).await.expect(200);
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(2));
    server.stop().await;
}

async fn an_account_holds_at_most_max_devices(backend: Backend) {
    let server = start(backend).await;
    let primary = server.register().await;
    for n in 0..5u16 {
        server.add_device(&primary, 100 + n).await;
    }
    let code = link_code(&server, &primary).await;
    server
        .put("/v1/devices/link", Auth::None, link_body(&primary.identity, &code, &[9u8; 32], 9))
        .await
        .expect_error(409, "too_many_devices");
    let devices = server.get("/v1/devices", primary.bearer()).await.expect(200);
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(6));
    // Removing one makes room again; its id rests while a token of it could live, so the next id is taken.
    server.delete("/v1/devices/4", primary.bearer()).await.expect(204);
    let code = link_code(&server, &primary).await;
    let linked = server
        .put("/v1/devices/link", Auth::None, link_body(&primary.identity, &code, &[9u8; 32], 9))
        .await
        .expect(200);
    assert_eq!(linked["deviceId"], 7);
    server.stop().await;
}

async fn unlinking_revokes_token_socket_and_pool(backend: Backend) {
    let server = start(backend).await;
    let primary = server.register().await;
    let laptop = server.add_device(&primary, 31).await;
    server.put("/v1/keys", laptop.bearer(), full_upload(&primary.identity, 10)).await.expect(204);
    let mut socket = crate::socket::Socket::connect(&server.base, &laptop.token).await;
    socket.expect_queue_empty().await;
    server.delete(&format!("/v1/devices/{}", laptop.device_id), primary.bearer()).await.expect(204);
    match socket.next().await {
        crate::socket::Incoming::Closed(code) => assert_eq!(code, Some(4401)),
        other => panic!("expected 4401, got {other:?}"),
    }
    server.get("/v1/keys/count", laptop.bearer()).await.expect_error(401, "unauthorized");
    let aci = sealpost::domain::Aci::parse(&primary.aci).expect("aci");
    let pools =
        server.app.storage.pre_keys.counts(aci, sealpost::domain::DeviceId(laptop.device_id)).await.expect("counts");
    assert_eq!(pools, (0, 0), "the unlinked device's one-time keys are gone");
    let alice = server.register().await;
    server
        .get(&format!("/v1/keys/{}/{}", primary.aci, laptop.device_id), alice.bearer())
        .await
        .expect_error(404, "not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_relays_provisioning_across_instances() {
    let config = test_config(Backend::ScaleOut);
    let one = start_config(config.clone()).await;
    let two = start_config(config).await;
    let primary = two.register().await;
    let mut new_device = open_provisioning(&one).await;
    two.put(
        &format!("/v1/provisioning/{}", new_device.address),
        primary.bearer(),
        json!({"body": STANDARD.encode(b"hi")}),
    )
    .await
    .expect(204);
    let (path, body) = next_request(&mut new_device.stream).await;
    assert_eq!((path.as_str(), body.as_slice()), ("/v1/message", &b"hi"[..]));
    two.stop().await;
    one.stop().await;
}
