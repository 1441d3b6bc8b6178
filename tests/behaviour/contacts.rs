//! Contact tokens: the QR code a person shows, what a stranger can do with it, and how it stops working.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::*;
use crate::messages::{message, ready_user};
use crate::socket::Socket;

both_backends!(
    create_list_resolve_and_revoke,
    a_stranger_makes_first_contact_with_the_token_alone,
    tokens_expire_and_get_used_up,
    an_account_holds_a_limited_number_of_live_tokens,
    resolving_is_rate_limited_and_failures_more_so,
    every_failure_looks_the_same_and_takes_as_long,
    the_reaper_deletes_revoked_and_expired_tokens,
);

/// Creates a token for `owner`; returns (id, token).
async fn create(server: &TestServer, owner: &User, body: Value) -> (String, String) {
    let created = server.post("/v1/contact-tokens", owner.bearer(), body).await.expect(201);
    let token = created["token"].as_str().expect("token").to_owned();
    assert_eq!(created["uri"], json!(format!("sealpost://contact/{token}")));
    assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).expect("base64url").len(), 32);
    (created["id"].as_str().expect("id").to_owned(), token)
}

fn from(address: &str) -> Auth<'_> {
    Auth::Header("x-forwarded-for", address)
}

async fn create_list_resolve_and_revoke(backend: Backend) {
    let server = start(backend).await;
    let owner = ready_user(&server).await;
    let label = STANDARD.encode(b"encrypted by the owner for itself");
    let (id, token) = create(&server, &owner, json!({"ttlSeconds": 3600, "maxUses": 5, "label": label})).await;

    let listed = server.get("/v1/contact-tokens", owner.bearer()).await.expect(200);
    let entry = &listed["tokens"][0];
    assert_eq!(entry["id"], json!(id));
    assert_eq!(entry["label"], json!(label));
    assert_eq!(
        (entry["uses"].clone(), entry["maxUses"].clone(), entry["revoked"].clone()),
        (json!(0), json!(5), json!(false))
    );
    assert!(!listed.to_string().contains(&token), "the token is shown once, when created");

    let resolved = server.get(&format!("/v1/contact/{token}"), Auth::None).await.expect(200);
    assert_eq!(resolved["aci"], json!(owner.aci));
    assert_eq!(resolved["identityKey"], json!(STANDARD.encode(owner.identity.public_serialized())));

    // Only the owner revokes, and revocation works at once.
    let stranger = server.register().await;
    server.delete(&format!("/v1/contact-tokens/{id}"), stranger.bearer()).await.expect_error(404, "not_found");
    server.get(&format!("/v1/contact/{token}"), Auth::None).await.expect(200);
    server.delete(&format!("/v1/contact-tokens/{id}"), owner.bearer()).await.expect(204);
    server.get(&format!("/v1/contact/{token}"), Auth::None).await.expect_error(404, "not_found");
    let listed = server.get("/v1/contact-tokens", owner.bearer()).await.expect(200);
    assert_eq!(listed["tokens"][0]["revoked"], json!(true));
    server.delete("/v1/contact-tokens/not-an-id", owner.bearer()).await.expect_error(400, "invalid_path");
    server.post("/v1/contact-tokens", owner.bearer(), json!({"ttlSeconds": 0})).await.expect_error(400, "invalid_ttl");
    server.post("/v1/contact-tokens", owner.bearer(), json!({"maxUses": 0})).await.expect_error(400, "invalid_body");
    server.post("/v1/contact-tokens", owner.bearer(), json!({"phone": "x"})).await.expect_error(400, "unknown_field");
    server.stop().await;
}

async fn a_stranger_makes_first_contact_with_the_token_alone(backend: Backend) {
    let server = start(backend).await;
    let owner = ready_user(&server).await;
    let other = ready_user(&server).await;
    let (id, token) = create(&server, &owner, json!({})).await;

    // The bundle, with nothing but the token (no account, no access key).
    let bundle =
        server.get(&format!("/v1/keys/{}/*", owner.aci), Auth::Header("contact-token", &token)).await.expect(200);
    assert_eq!(bundle["identityKey"], json!(STANDARD.encode(owner.identity.public_serialized())));
    assert!(bundle["devices"][0]["preKey"].is_object(), "first contact gets a one-time key");
    // The token opens its owner only.
    server
        .get(&format!("/v1/keys/{}/*", other.aci), Auth::Header("contact-token", &token))
        .await
        .expect_error(401, "unauthorized");

    // A sealed-sender send, authorised by the token.
    let mut socket = Socket::connect(&server.base, &owner.token).await;
    socket.expect_queue_empty().await;
    let path = format!("/v1/messages/{}", owner.aci);
    let sealed = json!({"messages": [message(&owner, 6, b"a sealed call offer")], "timestamp": 7, "urgent": true, "ttlSeconds": 60});
    server.put(&path, Auth::Header("contact-token", &token), sealed.clone()).await.expect(200);
    let (request, envelope) = socket.envelope().await;
    socket.respond(request, 200).await;
    assert_eq!(envelope.content.as_deref(), Some(&b"a sealed call offer"[..]));
    assert_eq!(envelope.source_service_id, None, "the token names no sender");
    // Only sealed sends; not to anyone else; not with a bad token.
    let identified = json!({"messages": [message(&owner, 1, b"x")], "timestamp": 7});
    server
        .put(&path, Auth::Header("contact-token", &token), identified)
        .await
        .expect_error(400, "invalid_message_type");
    let other_path = format!("/v1/messages/{}", other.aci);
    let to_other = json!({"messages": [message(&other, 6, b"x")], "timestamp": 7});
    server.put(&other_path, Auth::Header("contact-token", &token), to_other).await.expect_error(401, "unauthorized");
    server.put(&path, Auth::Header("contact-token", "made-up"), sealed.clone()).await.expect_error(401, "unauthorized");

    // Revoked: nothing works any more.
    server.delete(&format!("/v1/contact-tokens/{id}"), owner.bearer()).await.expect(204);
    server.put(&path, Auth::Header("contact-token", &token), sealed).await.expect_error(401, "unauthorized");
    server
        .get(&format!("/v1/keys/{}/*", owner.aci), Auth::Header("contact-token", &token))
        .await
        .expect_error(401, "unauthorized");
    socket.close().await;
    server.stop().await;
}

async fn tokens_expire_and_get_used_up(backend: Backend) {
    let server = start_with(backend, |c| c.trusted_proxy_header = Some("x-forwarded-for".into())).await;
    let owner = ready_user(&server).await;
    let (_, brief) = create(&server, &owner, json!({"ttlSeconds": 1})).await;
    server.get(&format!("/v1/contact/{brief}"), Auth::None).await.expect(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.get(&format!("/v1/contact/{brief}"), Auth::None).await.expect_error(404, "not_found");

    // One use: the first requester's bundle fetch. The same requester may fetch again; a new one may not.
    let (_, once) = create(&server, &owner, json!({"maxUses": 1})).await;
    let bundle = |address: &'static str| {
        let path = format!("/v1/keys/{}/*", owner.aci);
        let once = once.clone();
        let server = &server;
        async move {
            let request = server.http.get(format!("{}{path}", server.base)).header("contact-token", once);
            request.header("x-forwarded-for", address).send().await.expect("request").status().as_u16()
        }
    };
    server.get(&format!("/v1/contact/{once}"), from("198.51.100.1")).await.expect(200);
    assert_eq!(bundle("198.51.100.1").await, 200);
    assert_eq!(bundle("198.51.100.1").await, 200, "the same requester again");
    assert_eq!(bundle("198.51.100.2").await, 401, "a second requester");
    server.get(&format!("/v1/contact/{once}"), from("198.51.100.3")).await.expect_error(404, "not_found");
    let listed = server.get("/v1/contact-tokens", owner.bearer()).await.expect(200);
    let used = listed["tokens"].as_array().expect("tokens").iter().find(|t| t["maxUses"] == json!(1)).cloned();
    assert_eq!(used.expect("the token")["uses"], json!(1));
    server.stop().await;
}

async fn an_account_holds_a_limited_number_of_live_tokens(backend: Backend) {
    let server = start_with(backend, |c| c.max_contact_tokens_per_account = 2).await;
    let owner = ready_user(&server).await;
    let (first, _) = create(&server, &owner, json!({})).await;
    create(&server, &owner, json!({})).await;
    server.post("/v1/contact-tokens", owner.bearer(), json!({})).await.expect_error(409, "too_many_contact_tokens");
    server.delete(&format!("/v1/contact-tokens/{first}"), owner.bearer()).await.expect(204);
    create(&server, &owner, json!({})).await;
    // Another account has its own allowance.
    let other = ready_user(&server).await;
    create(&server, &other, json!({})).await;
    server.stop().await;
}

async fn resolving_is_rate_limited_and_failures_more_so(backend: Backend) {
    let server = start_with(backend, |c| {
        c.trusted_proxy_header = Some("x-forwarded-for".into());
        c.limit_contact_resolve_per_ip = limit("4/1h");
        c.limit_contact_resolve_failures_per_ip = limit("2/1h");
    })
    .await;
    let owner = ready_user(&server).await;
    let (_, token) = create(&server, &owner, json!({})).await;
    let resolve = |token: &str, address: &'static str| {
        let path = format!("/v1/contact/{token}");
        let server = &server;
        async move { server.get(&path, from(address)).await }
    };
    // Four per address, then 429.
    for _ in 0..4 {
        resolve(&token, "192.0.2.10").await.expect(200);
    }
    let refused = resolve(&token, "192.0.2.10").await;
    refused.expect_error(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    // Two failures, then even a good token is refused from that address.
    resolve("guess-one", "192.0.2.20").await.expect_error(404, "not_found");
    resolve("guess-two", "192.0.2.20").await.expect_error(404, "not_found");
    resolve(&token, "192.0.2.20").await.expect_error(429, "rate_limited");
    resolve(&token, "192.0.2.30").await.expect(200);
    let metrics = server.http.get(format!("{}/metrics", server.metrics_base)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    assert!(metrics.contains("sealpost_contact_resolutions_total{outcome=\"not_found\"}"), "guessing is measured");
    server.stop().await;
}

/// Unknown, revoked, expired and used up: the same status, the same bytes, and no time difference to learn
/// from (the medians of 200 interleaved tries each within a few percent).
async fn every_failure_looks_the_same_and_takes_as_long(backend: Backend) {
    let server = start_with(backend, |c| {
        c.limit_contact_resolve_per_ip = limit("100000/1m");
        c.limit_contact_resolve_failures_per_ip = limit("100000/1m");
    })
    .await;
    let owner = ready_user(&server).await;
    let (revoked_id, revoked) = create(&server, &owner, json!({})).await;
    server.delete(&format!("/v1/contact-tokens/{revoked_id}"), owner.bearer()).await.expect(204);
    let (_, expired) = create(&server, &owner, json!({"ttlSeconds": 1})).await;
    let (_, used_up) = create(&server, &owner, json!({"maxUses": 1})).await;
    server.get(&format!("/v1/keys/{}/*", owner.aci), Auth::Header("contact-token", &used_up)).await.expect(200);
    let unknown = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let kinds = [("unknown", unknown), ("revoked", revoked), ("expired", expired), ("used up", used_up)];
    let mut bodies = Vec::new();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for round in 0..200 {
        for (i, (_, token)) in kinds.iter().enumerate() {
            let started = Instant::now();
            let response = server.http.request(Method::GET, format!("{}/v1/contact/{token}", server.base)).send().await;
            let response = response.expect("request");
            let status = response.status().as_u16();
            let content_type = response.headers().get("content-type").cloned();
            let body = response.bytes().await.expect("body");
            times[i].push(started.elapsed());
            assert_eq!(status, 404);
            if round == 0 {
                bodies.push((content_type, body));
            }
        }
    }
    assert!(bodies.windows(2).all(|pair| pair[0] == pair[1]), "the four answers differ: {bodies:?}");
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    let (fastest, slowest) = (medians.iter().min().expect("min"), medians.iter().max().expect("max"));
    let report: Vec<String> = kinds.iter().zip(&medians).map(|((name, _), m)| format!("{name} {m:?}")).collect();
    eprintln!("median time of a 404, 200 tries each: {}", report.join(", "));
    // The same work in every case; what varies is the machine. A wide margin keeps this about the server.
    assert!(slowest.as_secs_f64() <= fastest.as_secs_f64() * 1.25, "medians differ: {}", report.join(", "));
    server.stop().await;
}

async fn the_reaper_deletes_revoked_and_expired_tokens(backend: Backend) {
    let server = start(backend).await;
    let owner = ready_user(&server).await;
    let (revoked, _) = create(&server, &owner, json!({})).await;
    server.delete(&format!("/v1/contact-tokens/{revoked}"), owner.bearer()).await.expect(204);
    create(&server, &owner, json!({"ttlSeconds": 1})).await;
    let (lasting, _) = create(&server, &owner, json!({})).await;
    let later = sealpost::domain::now_millis() + 1500;
    assert_eq!(server.app.storage.contacts.reap(later).await.expect("reap"), 2);
    let listed = server.get("/v1/contact-tokens", owner.bearer()).await.expect(200);
    let ids: Vec<&str> = listed["tokens"].as_array().expect("tokens").iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, [lasting.as_str()]);
    server.stop().await;
}
