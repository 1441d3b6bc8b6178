//! Multi-recipient sealed sender: one upload for a whole group, authorised by the combined access key,
//! checked against every recipient's devices, fanned out into one envelope per device.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::*;
use crate::messages::ready_user;
use crate::socket::{Incoming, Socket};

both_backends!(
    every_device_of_every_recipient_gets_its_share,
    the_combined_key_must_match_and_says_nothing_of_whom,
    device_sets_are_checked_for_everyone_first,
    malformed_and_oversized_uploads_are_refused,
    offline_members_are_woken_once_and_connected_ones_not,
);

const MRM: &str = "application/vnd.signal-messenger.mrm";

/// A recipient of a test upload: its aci, its devices with registration ids, its key material.
struct Addressed {
    aci: String,
    devices: Vec<(u32, u16)>,
    key: [u8; 48],
}

/// A multi-recipient upload in libsignal's layout (version 0x23) with made-up key material and ciphertext:
/// the server parses the table and copies bytes, it never decrypts.
fn upload(recipients: &[Addressed], excluded: &[String], shared: &[u8]) -> Vec<u8> {
    let mut out = vec![0x23, (recipients.len() + excluded.len()) as u8];
    for recipient in recipients {
        out.push(0x00);
        out.extend_from_slice(uuid::Uuid::parse_str(&recipient.aci).expect("aci").as_bytes());
        for (i, (device, registration)) in recipient.devices.iter().enumerate() {
            out.push(*device as u8);
            let more = if i + 1 < recipient.devices.len() { 0x8000 } else { 0 };
            out.extend_from_slice(&(registration | more).to_be_bytes());
        }
        out.extend_from_slice(&recipient.key);
    }
    for aci in excluded {
        out.push(0x00);
        out.extend_from_slice(uuid::Uuid::parse_str(aci).expect("aci").as_bytes());
        out.push(0);
    }
    out.extend_from_slice(shared);
    out
}

/// What every device of `recipient` must receive.
fn received(recipient: &Addressed, shared: &[u8]) -> Vec<u8> {
    [&[0x22][..], &recipient.key, shared].concat()
}

async fn send(server: &TestServer, key: Option<[u8; 16]>, body: Vec<u8>, query: &str) -> (StatusCode, Value) {
    let mut request = server
        .http
        .put(format!("{}/v1/messages/multi_recipient?{query}", server.base))
        .header("content-type", MRM)
        .body(body);
    if let Some(key) = key {
        request = request.header("unidentified-access-key", STANDARD.encode(key));
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A recipient account with a second device and an access key; returns it with its devices.
async fn member(server: &TestServer, key: [u8; 16]) -> (User, User) {
    let user = ready_user(server).await;
    server
        .put("/v1/accounts/me/attributes", user.bearer(), json!({"unidentifiedAccessKey": STANDARD.encode(key)}))
        .await
        .expect(204);
    let second = server.add_device(&user, 1000 + user.registration_id % 1000).await;
    server.put("/v1/keys", second.bearer(), full_upload(&user.identity, 1)).await.expect(204);
    (user, second)
}

fn addressed(primary: &User, second: Option<&User>) -> Addressed {
    let mut devices = vec![(primary.device_id, primary.registration_id)];
    if let Some(second) = second {
        devices.push((second.device_id, second.registration_id));
    }
    Addressed { aci: primary.aci.clone(), devices, key: sealpost::crypto::random_bytes() }
}

fn xor(keys: &[[u8; 16]]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for key in keys {
        out.iter_mut().zip(key).for_each(|(o, k)| *o ^= k);
    }
    out
}

async fn every_device_of_every_recipient_gets_its_share(backend: Backend) {
    let server = start(backend).await;
    let (k1, k2) = (sealpost::crypto::random_bytes::<16>(), sealpost::crypto::random_bytes::<16>());
    let (a, a2) = member(&server, k1).await;
    let (b, b2) = member(&server, k2).await;
    // A recipient that accepts anyone takes no part in the combined key.
    let open = ready_user(&server).await;
    server
        .put("/v1/accounts/me/attributes", open.bearer(), json!({"unrestrictedUnidentifiedAccess": true}))
        .await
        .expect(204);
    let recipients = [addressed(&a, Some(&a2)), addressed(&b, Some(&b2)), addressed(&open, None)];
    let shared: Vec<u8> = (0..600u32).map(|i| (i * 31 % 251) as u8).collect();
    let stranger = uuid::Uuid::new_v4().to_string();
    let body = upload(&recipients, &[stranger], &shared);
    let mut listening = Socket::connect(&server.base, &a.token).await;
    listening.expect_queue_empty().await;

    let (status, answer) = send(&server, Some(xor(&[k1, k2])), body, "ts=1234&urgent=true").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"uuids404": [], "notQueued": []}));

    // The connected device gets it pushed; every other device finds it queued.
    let (id, envelope) = listening.envelope().await;
    listening.respond(id, 200).await;
    assert_eq!(envelope.content.as_deref(), Some(&received(&recipients[0], &shared)[..]));
    for (device, recipient) in
        [(&a2, &recipients[0]), (&b, &recipients[1]), (&b2, &recipients[1]), (&open, &recipients[2])]
    {
        let waiting = server.get("/v1/messages", device.bearer()).await.expect(200);
        let messages = waiting["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 1, "device {} of {}", device.device_id, device.aci);
        let message = &messages[0];
        assert_eq!(message["type"], 6);
        assert!(message.get("sourceServiceId").is_none(), "no sender");
        assert_eq!(message["destinationServiceId"], json!(device.aci));
        assert_eq!(message["clientTimestamp"], 1234);
        assert_eq!(message["urgent"], true);
        assert_eq!(
            STANDARD.decode(message["content"].as_str().expect("content")).expect("b64"),
            received(recipient, &shared)
        );
    }
    listening.close().await;
    server.stop().await;
}

async fn the_combined_key_must_match_and_says_nothing_of_whom(backend: Backend) {
    let server = start(backend).await;
    let (k1, k2) = (sealpost::crypto::random_bytes::<16>(), sealpost::crypto::random_bytes::<16>());
    let (a, _) = member(&server, k1).await;
    let (b, _) = member(&server, k2).await;
    let shared = [9u8; 100];
    let only_primaries = |users: &[&User]| -> Vec<Addressed> { users.iter().map(|u| addressed(u, None)).collect() };
    let body = |recipients: &[Addressed]| upload(recipients, &[], &shared);

    for key in [None, Some(k1), Some(xor(&[k1, k1])), Some([0u8; 16])] {
        let (status, answer) = send(&server, key, body(&only_primaries(&[&a, &b])), "ts=1").await;
        assert_eq!((status.as_u16(), answer["code"].as_str()), (401, Some("unauthorized")), "{answer}");
    }
    // An unknown recipient makes any key wrong, with the same answer.
    let mut with_stranger = only_primaries(&[&a, &b]);
    with_stranger.push(Addressed { aci: uuid::Uuid::new_v4().to_string(), devices: vec![(1, 5)], key: [1; 48] });
    let (status, unknown) = send(&server, Some(xor(&[k1, k2])), body(&with_stranger), "ts=1").await;
    assert_eq!(status, 401);
    let (_, wrong) = send(&server, Some([7u8; 16]), body(&only_primaries(&[&a, &b])), "ts=1").await;
    assert_eq!(unknown, wrong, "the answer does not tell which recipient failed");
    // Nothing was queued by any refused send.
    for user in [&a, &b] {
        let waiting = server.get("/v1/messages", user.bearer()).await.expect(200);
        assert_eq!(waiting["messages"], json!([]));
    }
    server.stop().await;
}

async fn device_sets_are_checked_for_everyone_first(backend: Backend) {
    let server = start(backend).await;
    let (k1, k2) = (sealpost::crypto::random_bytes::<16>(), sealpost::crypto::random_bytes::<16>());
    let (a, a2) = member(&server, k1).await;
    let (b, b2) = member(&server, k2).await;
    let key = Some(xor(&[k1, k2]));
    let shared = [3u8; 64];

    // b's second device with a registration id it does not have: 410 naming b and that device.
    let mut stale = [addressed(&a, Some(&a2)), addressed(&b, Some(&b2))];
    stale[1].devices[1].1 = b2.registration_id % 16000 + 1;
    let (status, answer) = send(&server, key, upload(&stale, &[], &shared), "ts=1").await;
    assert_eq!(status, 410, "{answer}");
    assert_eq!(answer["code"], "stale_devices");
    assert_eq!(answer["recipients"], json!([{"uuid": b.aci, "devices": {"staleDevices": [b2.device_id]}}]));

    // a without its second device and b with a device it never had: 409 for both.
    let mut mismatched = [addressed(&a, None), addressed(&b, Some(&b2))];
    mismatched[1].devices.push((9, 99));
    let (status, answer) = send(&server, key, upload(&mismatched, &[], &shared), "ts=1").await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        answer["recipients"],
        json!([
            {"uuid": a.aci, "devices": {"missingDevices": [a2.device_id], "extraDevices": []}},
            {"uuid": b.aci, "devices": {"missingDevices": [], "extraDevices": [9]}},
        ])
    );
    for user in [&a, &a2, &b, &b2] {
        let waiting = server.get("/v1/messages", user.bearer()).await.expect(200);
        assert_eq!(waiting["messages"], json!([]), "nothing is queued for anyone when one recipient is off");
    }
    server.stop().await;
}

async fn malformed_and_oversized_uploads_are_refused(backend: Backend) {
    let server = start_with(backend, |c| {
        c.max_multi_recipients = 2;
        c.max_multi_recipient_bytes = 4096;
        c.limit_multi_recipient_per_ip = limit("12/1h");
    })
    .await;
    let key = sealpost::crypto::random_bytes::<16>();
    let a = ready_user(&server).await;
    server
        .put("/v1/accounts/me/attributes", a.bearer(), json!({"unidentifiedAccessKey": STANDARD.encode(key)}))
        .await
        .expect(204);
    let good = upload(&[addressed(&a, None)], &[], &[1u8; 100]);
    let invalid = |answer: &Value| answer["code"] == "invalid_multi_recipient_message";
    for cut in [1, 5, 20, good.len() - 90] {
        let (status, answer) = send(&server, Some(key), good[..cut].to_vec(), "ts=1").await;
        assert!(status == 400 && invalid(&answer), "cut at {cut}: {status} {answer}");
    }
    let mut version = good.clone();
    version[0] = 0x30;
    let (status, answer) = send(&server, Some(key), version, "ts=1").await;
    assert!(status == 400 && invalid(&answer), "{answer}");
    let many: Vec<Addressed> = (0..3)
        .map(|_| Addressed { aci: uuid::Uuid::new_v4().to_string(), devices: vec![(1, 1)], key: [0; 48] })
        .collect();
    let (status, answer) = send(&server, Some(key), upload(&many, &[], &[0u8; 40]), "ts=1").await;
    assert!(status == 400 && invalid(&answer), "{answer}");
    let (status, answer) = send(&server, Some(key), upload(&[addressed(&a, None)], &[], &[0u8; 5000]), "ts=1").await;
    assert_eq!((status.as_u16(), answer["code"].as_str()), (413, Some("payload_too_large")), "{answer}");
    let wrong_type = server
        .http
        .put(format!("{}/v1/messages/multi_recipient?ts=1", server.base))
        .header("content-type", "application/json")
        .header("unidentified-access-key", STANDARD.encode(key))
        .body(good.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(wrong_type.status(), 415);
    let (status, answer) = send(&server, Some(key), good.clone(), "nots=1").await;
    assert_eq!((status.as_u16(), answer["code"].as_str()), (400, Some("invalid_query")), "{answer}");
    // `online`: only connected devices get it, nothing is stored.
    let mut socket = Socket::connect(&server.base, &a.token).await;
    socket.expect_queue_empty().await;
    let (status, _) = send(&server, Some(key), good.clone(), "ts=1&online=true").await;
    assert_eq!(status, 200);
    assert!(matches!(socket.next().await, Incoming::Envelope(..)));
    socket.close().await;
    let waiting = server.get("/v1/messages", a.bearer()).await.expect(200);
    assert_eq!(waiting["messages"], json!([]));
    // Rate limited per address (12 an hour here, most spent above).
    let mut last = StatusCode::OK;
    for _ in 0..6 {
        last = send(&server, Some(key), good.clone(), "ts=1").await.0;
    }
    assert_eq!(last, 429);
    server.stop().await;
}

async fn offline_members_are_woken_once_and_connected_ones_not(backend: Backend) {
    let service = crate::push::PushService::start().await;
    let server = start_with(backend, crate::push::push_config(&service)).await;
    let (k1, k2) = (sealpost::crypto::random_bytes::<16>(), sealpost::crypto::random_bytes::<16>());
    let a = ready_user(&server).await;
    let b = ready_user(&server).await;
    for (user, key) in [(&a, k1), (&b, k2)] {
        let attributes = json!({"unidentifiedAccessKey": STANDARD.encode(key)});
        server.put("/v1/accounts/me/attributes", user.bearer(), attributes).await.expect(204);
    }
    let (offline, online) = (service.endpoint(&[]), service.endpoint(&[]));
    server.put("/v1/devices/me/push", a.bearer(), crate::push::subscription(&offline)).await.expect(204);
    server.put("/v1/devices/me/push", b.bearer(), crate::push::subscription(&online)).await.expect(204);
    let mut socket = Socket::connect(&server.base, &b.token).await;
    socket.expect_queue_empty().await;

    let recipients = [addressed(&a, None), addressed(&b, None)];
    for ts in 0..3 {
        let (status, answer) =
            send(&server, Some(xor(&[k1, k2])), upload(&recipients, &[], &[7u8; 64]), &format!("ts={ts}")).await;
        assert_eq!(status, 200, "{answer}");
        let (id, _) = socket.envelope().await;
        socket.respond(id, 200).await;
    }
    // A group send wakes like any other: one wakeup per burst for the offline member, none for the other.
    let woken = service.settle(&offline, 1, Duration::from_secs(5)).await;
    assert_eq!(woken.len(), 1, "one wakeup for three group messages");
    assert!(woken[0].body.is_empty());
    crate::push::check_wakeup(&server, &woken[0], &service.base, &[&a.aci]).await;
    assert!(service.requests(&online).is_empty(), "a connected member is not woken");
    socket.close().await;
    server.stop().await;
}
