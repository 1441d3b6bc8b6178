//! Bad input of every shape gets a JSON error with a code: never a 5xx, never a panic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::*;

both_backends!(random_bodies_never_cause_a_server_error);

const FIELDS: &[&str] = &[
    "identityKey",
    "registrationId",
    "deviceSecret",
    "signedPreKey",
    "pqLastResortPreKey",
    "preKeys",
    "pqPreKeys",
    "keyId",
    "publicKey",
    "signature",
    "messages",
    "timestamp",
    "online",
    "ttlSeconds",
    "type",
    "destinationDeviceId",
    "destinationRegistrationId",
    "content",
    "unidentifiedAccessKey",
    "verificationCode",
    "body",
];

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    let leaves = [
        Value::Null,
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(1.5),
        json!(""),
        json!("AAAA"),
        json!("%%%"),
        json!("BQ=="),
        json!(true),
        json!("A".repeat(3000)),
    ];
    match rng.gen_range(0..4) {
        0 | 1 if depth < 3 => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.gen_range(0..5) {
                map.insert(FIELDS[rng.gen_range(0..FIELDS.len())].to_owned(), random_value(rng, depth + 1));
            }
            Value::Object(map)
        }
        2 if depth < 3 => Value::Array((0..rng.gen_range(0..3)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => leaves[rng.gen_range(0..leaves.len())].clone(),
    }
}

async fn random_bodies_never_cause_a_server_error(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    // Every route of the API (a new one joins as soon as it is listed), with real and junk path values.
    let mut endpoints: Vec<(Method, String)> = Vec::new();
    for (method, path, _) in sealpost::http::openapi::routes() {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
        for value in [&user.aci[..], "zz", "99999999999"] {
            let concrete = path
                .replace("{aci}", value)
                .replace("{device}", if value == "zz" { "*" } else { "1" })
                .replace("{id}", value)
                .replace("{guid}", value)
                .replace("{file}", value)
                .replace("{address}", "nowhere");
            endpoints.push((method.clone(), concrete));
        }
    }
    // Sockets need an upgrade, deleting the account would end the test early, `/docs` answers an HTML page
    // whatever the body (browser.rs looks at it), and the demo page answers HTML, also through its redirect
    // (it reads no input; its errors are covered in demo.rs); everything else gets random bodies.
    let skipped = |method: &Method, path: &str| {
        path.starts_with("/v1/websocket")
            || (method == Method::DELETE && path == "/v1/accounts/me")
            || path == "/docs"
            || path == "/demo"
            || path == "/demo/"
    };
    endpoints.retain(|(method, path)| !skipped(method, path));
    let mut rng = StdRng::seed_from_u64(0x5ea1_9057);
    for round in 0..600 {
        let (method, path) = &endpoints[rng.gen_range(0..endpoints.len())];
        let auth = match rng.gen_range(0..3) {
            0 => Auth::Bearer(&user.token),
            1 => Auth::Header("unidentified-access-key", "AAAAAAAAAAAAAAAAAAAAAA=="),
            _ => Auth::None,
        };
        let reply = if round % 10 == 0 {
            let junk: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.r#gen()).collect();
            server.raw(method.clone(), path, "application/json", junk).await
        } else {
            server.call(method.clone(), path, auth, Some(random_value(&mut rng, 0))).await
        };
        assert!(reply.status.as_u16() < 500, "{method} {path} answered {}: {}", reply.status, reply.body);
        // (An answer to HEAD has no body by definition.)
        if reply.status.as_u16() >= 400 && method != Method::HEAD {
            assert!(reply.body["code"].is_string(), "{method} {path} error without a code: {}", reply.body);
        }
    }
    // The account is still intact after all that.
    server.get("/v1/devices", user.bearer()).await.expect(200);
    server.stop().await;
}
