//! Web Push wakeups against a local push service that records every request: the VAPID signature verifies
//! against `GET /v1/push/vapid`, the request names no one and carries nothing, a burst wakes a device once,
//! a connected device is not woken, urgent envelopes wake with `Urgency: high`, a 410 removes the
//! subscription, a 503 is retried; and subscriptions to places the server must not reach are refused.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::*;
use crate::messages::{message, ready_user, send};
use crate::socket::Socket;

both_backends!(
    a_burst_wakes_an_offline_device_once_with_a_verified_empty_push,
    gone_subscriptions_are_removed_and_failed_wakeups_retried,
    subscriptions_to_places_the_server_must_not_reach_are_refused,
);

/// One request the push service received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A local push service (plain http on loopback, allow-listed in the server's settings): records every
/// request and answers with the statuses scripted per path (201 when none is left).
pub struct PushService {
    pub base: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<HashMap<String, VecDeque<u16>>>>,
    task: tokio::task::JoinHandle<()>,
}

type Shared = (Arc<Mutex<Vec<Recorded>>>, Arc<Mutex<HashMap<String, VecDeque<u16>>>>);

impl PushService {
    pub async fn start() -> PushService {
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let script: Arc<Mutex<HashMap<String, VecDeque<u16>>>> = Arc::default();
        let app = axum::Router::new()
            .fallback(
                |axum::extract::State((seen, script)): axum::extract::State<Shared>,
                 uri: Uri,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    let path = uri.path().to_owned();
                    seen.lock().expect("lock").push(Recorded { path: path.clone(), headers, body: body.to_vec() });
                    let status =
                        script.lock().expect("lock").get_mut(&path).and_then(VecDeque::pop_front).unwrap_or(201);
                    StatusCode::from_u16(status).expect("status")
                },
            )
            .with_state((seen.clone(), script.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind push service");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        PushService { base, seen, script, task }
    }

    /// A fresh endpoint of this service, answering `statuses` first.
    pub fn endpoint(&self, statuses: &[u16]) -> String {
        let path = format!("/push/{}", URL_SAFE_NO_PAD.encode(sealpost::crypto::random_bytes::<12>()));
        self.script.lock().expect("lock").insert(path.clone(), statuses.iter().copied().collect());
        format!("{}{path}", self.base)
    }

    /// The requests to `endpoint` so far.
    pub fn requests(&self, endpoint: &str) -> Vec<Recorded> {
        let path = endpoint.trim_start_matches(&self.base);
        self.seen.lock().expect("lock").iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits until `endpoint` has had `count` requests (at most `wait`), then a little longer, so that one
    /// too many would show; returns them.
    pub async fn settle(&self, endpoint: &str, count: usize, wait: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + wait;
        while self.requests(endpoint).len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.requests(endpoint)
    }
}

impl Drop for PushService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A subscription body as a browser makes it: a P-256 key pair's public point and 16 random bytes.
pub fn subscription(endpoint: &str) -> Value {
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
    json!({
        "endpoint": endpoint,
        "expirationTime": null,
        "keys": {
            "p256dh": URL_SAFE_NO_PAD.encode(point.as_bytes()),
            "auth": URL_SAFE_NO_PAD.encode(sealpost::crypto::random_bytes::<16>()),
        },
    })
}

pub fn push_config(service: &PushService) -> impl FnOnce(&mut sealpost::config::Config) + '_ {
    move |c| {
        c.push_allowed_origins = Some(service.base.clone());
        c.job_push_retry_schedule = "* * * * * *".into();
        c.push_retry_base_seconds = 1;
        c.push_contact = "mailto:ops@sealpost.test".into();
    }
}

/// Checks one wakeup: a VAPID token for the endpoint's origin signed by the server's key, for at most
/// 24 hours, naming the configured contact; no body; only the headers Web Push needs, none naming anyone.
pub async fn check_wakeup(server: &TestServer, request: &Recorded, origin: &str, never: &[&str]) {
    let vapid = server.get("/v1/push/vapid", Auth::None).await.expect(200);
    let public_key = vapid["publicKey"].as_str().expect("publicKey");
    let authorization = request.headers["authorization"].to_str().expect("ascii");
    let (token, key) = authorization
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(", k="))
        .unwrap_or_else(|| panic!("not a VAPID authorization: {authorization}"));
    assert_eq!(key, public_key, "the key in the header is the one the server publishes");
    let point = URL_SAFE_NO_PAD.decode(public_key).expect("base64url");
    assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed P-256 point");
    let decoding = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..]),
    )
    .expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[origin]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(token, &decoding, &validation).expect("the VAPID token verifies").claims;
    let now = sealpost::domain::now_millis() / 1000;
    let exp = claims["exp"].as_i64().expect("exp");
    assert!(exp > now && exp <= now + 24 * 3600, "exp within 24 h: {claims}");
    assert_eq!(claims["sub"], "mailto:ops@sealpost.test");
    assert_eq!(claims["aud"], origin);

    assert!(request.body.is_empty(), "a wakeup has no payload");
    let allowed = ["host", "authorization", "ttl", "urgency", "topic", "content-length", "accept"];
    for (name, value) in &request.headers {
        assert!(allowed.contains(&name.as_str()), "unexpected header {name}");
        let value = value.to_str().expect("ascii");
        for secret in never {
            assert!(!value.contains(secret), "header {name} carries an identifier");
        }
    }
    assert_eq!(request.headers["content-length"], "0");
    assert_eq!(request.headers["topic"], "wakeup", "a fixed topic: the service keeps one waiting wakeup");
    let jwt_payload = token.split('.').nth(1).expect("payload");
    let claims_text = String::from_utf8(URL_SAFE_NO_PAD.decode(jwt_payload).expect("b64")).expect("utf8");
    for secret in never {
        assert!(!claims_text.contains(secret), "the VAPID token names someone");
    }
}

async fn a_burst_wakes_an_offline_device_once_with_a_verified_empty_push(backend: Backend) {
    let service = PushService::start().await;
    let server = start_with(backend, push_config(&service)).await;
    let bob = ready_user(&server).await;
    let alice = ready_user(&server).await;
    let endpoint = service.endpoint(&[]);
    server.put("/v1/devices/me/push", bob.bearer(), subscription(&endpoint)).await.expect(204);

    let path = format!("/v1/messages/{}", bob.aci);
    let started = Instant::now();
    for i in 0..20 {
        let body = json!({"messages": [message(&bob, 1, format!("burst {i}").as_bytes())], "timestamp": 1, "ttlSeconds": 3600, "urgent": false});
        server.put(&path, alice.bearer(), body).await.expect(200);
    }
    let seen = service.settle(&endpoint, 1, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 1, "20 envelopes to an offline device make exactly one wakeup");
    eprintln!("push: 20 envelopes -> {} wakeup(s), {:?} after the first send", seen.len(), started.elapsed());
    let never = [&bob.aci[..], &alice.aci[..]];
    check_wakeup(&server, &seen[0], &service.base, &never).await;
    assert_eq!(seen[0].headers["urgency"], "normal");
    let ttl: u64 = seen[0].headers["ttl"].to_str().expect("ascii").parse().expect("number");
    assert!((3590..=3600).contains(&ttl), "the wakeup lives as long as the envelope: {ttl}");

    // A call offer (urgent, as every send is unless it says otherwise) still wakes, at high urgency, even
    // within the quiet period.
    let offer = json!({"messages": [message(&bob, 1, b"offer")], "timestamp": 2, "urgent": true, "ttlSeconds": 60});
    server.put(&path, alice.bearer(), offer).await.expect(200);
    let seen = service.settle(&endpoint, 2, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 2, "the urgent envelope woke the device");
    assert_eq!(seen[1].headers["urgency"], "high");
    let ttl: u64 = seen[1].headers["ttl"].to_str().expect("ascii").parse().expect("number");
    assert!((55..=60).contains(&ttl), "{ttl}");

    // Connected: no wakeup at all.
    let mut socket = Socket::connect(&server.base, &bob.token).await;
    for _ in 0..21 {
        let (id, _) = socket.envelope().await;
        socket.respond(id, 200).await;
    }
    socket.expect_queue_empty().await;
    for i in 0..3 {
        send(&server, &alice, &bob, format!("live {i}").as_bytes()).await.expect(200);
        let (id, _) = socket.envelope().await;
        socket.respond(id, 200).await;
    }
    let seen = service.settle(&endpoint, 3, Duration::from_millis(500)).await;
    assert_eq!(seen.len(), 2, "a connected device is not woken");
    socket.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Having connected, the device is woken by the next envelope again, quiet period or not.
    send(&server, &alice, &bob, b"after").await.expect(200);
    let seen = service.settle(&endpoint, 3, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 3, "the first envelope after a connection wakes again");
    check_wakeup(&server, &seen[2], &service.base, &never).await;

    // Unsubscribed: nothing more.
    server.delete("/v1/devices/me/push", bob.bearer()).await.expect(204);
    server.delete("/v1/devices/me/push", bob.bearer()).await.expect(204);
    send(&server, &alice, &bob, b"unsubscribed").await.expect(200);
    assert_eq!(service.settle(&endpoint, 4, Duration::from_millis(500)).await.len(), 3);
    server.stop().await;
}

async fn gone_subscriptions_are_removed_and_failed_wakeups_retried(backend: Backend) {
    let service = PushService::start().await;
    let server = start_with(backend, push_config(&service)).await;
    let alice = ready_user(&server).await;

    let gone = ready_user(&server).await;
    let endpoint = service.endpoint(&[410]);
    server.put("/v1/devices/me/push", gone.bearer(), subscription(&endpoint)).await.expect(204);
    send(&server, &alice, &gone, b"to a gone subscription").await.expect(200);
    assert_eq!(service.settle(&endpoint, 1, Duration::from_secs(5)).await.len(), 1);
    let aci = sealpost::domain::Aci::parse(&gone.aci).expect("aci");
    let device = sealpost::domain::DeviceId(gone.device_id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.app.storage.push.subscription(aci, device).await.expect("read").is_some() {
        assert!(Instant::now() < deadline, "a 410 removes the subscription");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let flaky = ready_user(&server).await;
    let endpoint = service.endpoint(&[503]);
    server.put("/v1/devices/me/push", flaky.bearer(), subscription(&endpoint)).await.expect(204);
    let started = Instant::now();
    send(&server, &alice, &flaky, b"to a struggling push service").await.expect(200);
    let seen = service.settle(&endpoint, 2, Duration::from_secs(8)).await;
    assert_eq!(seen.len(), 2, "the 503 was retried once, and the retry succeeded");
    eprintln!("push: 503, then retried and accepted {:?} after the send", started.elapsed());
    for request in &seen {
        check_wakeup(&server, request, &service.base, &[&flaky.aci, &alice.aci]).await;
    }
    let aci = sealpost::domain::Aci::parse(&flaky.aci).expect("aci");
    let kept = server.app.storage.push.subscription(aci, sealpost::domain::DeviceId(1)).await.expect("read");
    assert_eq!(kept.as_deref(), Some(endpoint.as_str()), "a 503 keeps the subscription");
    server.stop().await;
}

async fn subscriptions_to_places_the_server_must_not_reach_are_refused(backend: Backend) {
    let server = start(backend).await;
    let bob = server.register().await;
    for (endpoint, code) in [
        ("https://127.0.0.1/push/x", "push_endpoint_not_public"),
        ("https://10.0.0.1/push/x", "push_endpoint_not_public"),
        ("https://169.254.169.254/latest/meta-data", "push_endpoint_not_public"),
        ("https://[::1]/push/x", "push_endpoint_not_public"),
        ("https://100.64.0.1/push/x", "push_endpoint_not_public"),
        ("https://localhost/push/x", "push_endpoint_not_public"),
        ("http://push.example.org/push/x", "push_endpoint_not_https"),
        ("http://127.0.0.1:9/push/x", "push_endpoint_not_https"),
        ("not a url", "invalid_push_endpoint"),
    ] {
        let reply = server.put("/v1/devices/me/push", bob.bearer(), subscription(endpoint)).await;
        reply.expect_error(400, code);
        assert!(!reply.body["message"].as_str().unwrap_or_default().is_empty(), "{endpoint}: a clear message");
    }
    let long = format!("https://push.example.org/{}", "a".repeat(server.config.max_push_endpoint_bytes));
    server
        .put("/v1/devices/me/push", bob.bearer(), subscription(&long))
        .await
        .expect_error(400, "invalid_push_endpoint");

    let mut bad_key = subscription("https://push.example.org/x");
    bad_key["keys"]["p256dh"] = json!(URL_SAFE_NO_PAD.encode([4u8; 65]));
    server.put("/v1/devices/me/push", bob.bearer(), bad_key).await.expect_error(400, "invalid_push_keys");
    let mut bad_auth = subscription("https://push.example.org/x");
    bad_auth["keys"]["auth"] = json!("short");
    server.put("/v1/devices/me/push", bob.bearer(), bad_auth).await.expect_error(400, "invalid_push_keys");
    let mut extra = subscription("https://push.example.org/x");
    extra["sender"] = json!("someone");
    server.put("/v1/devices/me/push", bob.bearer(), extra).await.expect_error(400, "unknown_field");
    server
        .put("/v1/devices/me/push", Auth::None, subscription("https://x.example/"))
        .await
        .expect_error(401, "unauthorized");

    let aci = sealpost::domain::Aci::parse(&bob.aci).expect("aci");
    let stored = server.app.storage.push.subscription(aci, sealpost::domain::DeviceId(1)).await.expect("read");
    assert_eq!(stored, None, "nothing refused was stored");
    let vapid = server.get("/v1/push/vapid", Auth::None).await.expect(200);
    let key = URL_SAFE_NO_PAD.decode(vapid["publicKey"].as_str().expect("publicKey")).expect("base64url");
    assert!(p256::PublicKey::from_sec1_bytes(&key).is_ok(), "the VAPID key is a P-256 point");
    server.stop().await;
}
