//! Authorization of every route that takes a device token: no token, a malformed one, a forged signature,
//! an expired token, the token of an unlinked device and of a deleted account are all refused with 401 and
//! our JSON body, on every such route the API lists (`sealpost::http::openapi::routes`), so a new route is
//! covered as soon as it exists. Another account's valid token acts on its own account only.

use base64::Engine;
use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::harness::*;
use crate::messages::{ready_user, send};
use sealpost::http::openapi::{Auth as RouteAuth, routes};

both_backends!(every_token_route_refuses_every_bad_credential, another_accounts_token_reaches_nothing_of_mine);

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    dev: u32,
    inc: i64,
    iat: u64,
    exp: u64,
}

/// A token the server itself signed for `user`, but expired an hour ago.
async fn expired_token(server: &TestServer, user: &User) -> String {
    let aci = sealpost::domain::Aci::parse(&user.aci).expect("aci");
    let devices = server.app.storage.accounts.devices(aci).await.expect("devices");
    let incarnation = devices.iter().find(|d| d.id.0 == user.device_id).expect("device").incarnation;
    let now = (sealpost::domain::now_millis() / 1000) as u64;
    let claims =
        Claims { sub: user.aci.clone(), dev: user.device_id, inc: incarnation.0, iat: now - 7200, exp: now - 3600 };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    jsonwebtoken::encode(&header, &claims, &server.app.keys.jwt_encoding).expect("sign")
}

/// The route's path with real values in its parameters.
fn concrete(path: &str, victim: &User) -> String {
    path.replace("{aci}", &victim.aci)
        .replace("{device}", "1")
        .replace("{id}", "2")
        .replace("{guid}", &uuid::Uuid::new_v4().to_string())
        .replace("{address}", "nowhere")
}

async fn every_token_route_refuses_every_bad_credential(backend: Backend) {
    let server = start(backend).await;
    let victim = ready_user(&server).await;
    let laptop = server.add_device(&victim, 55).await;
    let doomed = server.register().await;
    server.delete(&format!("/v1/devices/{}", laptop.device_id), victim.bearer()).await.expect(204);
    server.delete("/v1/accounts/me", doomed.bearer()).await.expect(204);
    let expired = expired_token(&server, &victim).await;
    let mut forged = victim.token.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("x:y"));

    let credentials: Vec<(&str, Auth<'_>)> = vec![
        ("no credential", Auth::None),
        ("a malformed token", Auth::Bearer("not-a-jwt")),
        ("a forged signature", Auth::Bearer(&forged)),
        ("an expired token", Auth::Bearer(&expired)),
        ("an unlinked device's token", Auth::Bearer(&laptop.token)),
        ("a deleted account's token", Auth::Bearer(&doomed.token)),
        ("basic credentials", Auth::Header("authorization", &basic)),
    ];
    let mut checked = 0;
    for (method, path, auth) in routes() {
        if !matches!(auth, RouteAuth::Bearer | RouteAuth::BearerOrAccessKey) {
            continue;
        }
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
        let body = (method == Method::PUT || method == Method::POST).then(|| json!({}));
        for (what, credential) in &credentials {
            let credential = match credential {
                Auth::None => Auth::None,
                Auth::Bearer(token) => Auth::Bearer(token),
                Auth::Header(name, value) => Auth::Header(name, value),
                Auth::AccessKey(key) => Auth::AccessKey(key),
            };
            let reply = server.call(method.clone(), &concrete(path, &victim), credential, body.clone()).await;
            assert_eq!(reply.status.as_u16(), 401, "{method} {path} with {what}: {}", reply.body);
            assert_eq!(reply.code(), "unauthorized", "{method} {path} with {what}: {}", reply.body);
            checked += 1;
        }
    }
    assert!(checked >= 7 * 12, "only {checked} calls: the route table lost its token routes");
    // None of that changed the victim's account.
    let devices = server.get("/v1/devices", victim.bearer()).await.expect(200);
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(1));
    server.stop().await;
}

async fn another_accounts_token_reaches_nothing_of_mine(backend: Backend) {
    let server = start(backend).await;
    let victim = ready_user(&server).await;
    let laptop = server.add_device(&victim, 55).await;
    let other = ready_user(&server).await;
    send(&server, &other, &victim, b"for the victim").await.expect(200);
    let waiting = server.get("/v1/messages", victim.bearer()).await.expect(200);
    let guid = waiting["messages"][0]["guid"].as_str().expect("guid").to_owned();

    // Acting on "my" resources with another account's token acts on that account, never on the victim's.
    server.delete(&format!("/v1/messages/uuid/{guid}"), other.bearer()).await.expect(204);
    server.delete(&format!("/v1/devices/{}", laptop.device_id), other.bearer()).await.expect_error(404, "not_found");
    let theirs = server.get("/v1/messages", other.bearer()).await.expect(200);
    assert_eq!(theirs["messages"], json!([]));
    let their_devices = server.get("/v1/devices", other.bearer()).await.expect(200);
    assert_eq!(their_devices["devices"].as_array().map(Vec::len), Some(1));
    server.put("/v1/accounts/me/attributes", other.bearer(), json!({})).await.expect(204);

    let still = server.get("/v1/messages", victim.bearer()).await.expect(200);
    assert_eq!(still["messages"][0]["guid"], json!(guid), "the victim's envelope is still there");
    let devices = server.get("/v1/devices", victim.bearer()).await.expect(200);
    assert_eq!(devices["devices"].as_array().map(Vec::len), Some(2), "the victim's laptop is still there");
    server.get("/v1/devices", laptop.bearer()).await.expect(200);
    server.stop().await;
}
