//! What browsers and operators see on every answer: CORS for the listed origins only, security headers,
//! the request id (echoed when sane, random otherwise, in the server's log lines), `/healthz` with version
//! and uptime, and the `/docs` page.

use reqwest::Method;

use crate::both_backends;
use crate::harness::*;

both_backends!(cors_allows_listed_origins_only);

const LISTED: &str = "https://chat.example.org";

async fn cors_allows_listed_origins_only(backend: Backend) {
    let server =
        start_with(backend, |c| c.cors_allowed_origins = Some(format!("{LISTED}, http://localhost:5173"))).await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(Method::OPTIONS, format!("{}/v1/accounts", server.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, authorization")
            .send()
    };
    // A listed origin: allowed, for exactly that origin, with the asked-for headers.
    let allowed = preflight(LISTED).await.expect("preflight");
    assert_eq!(allowed.status(), 204);
    let headers = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], LISTED);
    assert!(headers["access-control-allow-methods"].to_str().expect("ascii").contains("POST"));
    assert_eq!(headers["access-control-allow-headers"], "content-type, authorization");
    assert!(headers.get("access-control-allow-credentials").is_none(), "no cookies cross origins");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    // Any other origin: refused with our error body, and nothing that would let the browser go on.
    for origin in ["https://evil.example", "https://chat.example.org.evil.example", "null"] {
        let refused = preflight(origin).await.expect("preflight");
        assert_eq!(refused.status(), 403, "{origin}");
        assert!(refused.headers().get("access-control-allow-origin").is_none(), "{origin}");
        let body: serde_json::Value = refused.json().await.expect("json");
        assert_eq!(body["code"], "cors_origin_refused", "{origin}");
    }

    // The actual request from a listed origin carries the CORS answer; from another origin it does not.
    let health =
        |origin: &'static str| server.http.get(format!("{}/healthz", server.base)).header("origin", origin).send();
    let ok = health(LISTED).await.expect("get");
    assert_eq!(ok.headers()["access-control-allow-origin"], LISTED);
    assert!(ok.headers()["access-control-expose-headers"].to_str().expect("ascii").contains("x-request-id"));
    assert!(ok.headers()["vary"].to_str().expect("ascii").contains("origin"));
    let other = health("https://evil.example").await.expect("get");
    assert_eq!(other.status(), 200, "a non-browser answer is still served");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

/// No origin configured (the default): every preflight is refused, even from the server's own host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configured_origins_no_preflight_passes() {
    let server = start(Backend::Embedded).await;
    let own = server.base.clone();
    let reply = server
        .http
        .request(Method::OPTIONS, format!("{}/v1/messages", server.base))
        .header("origin", own)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert_eq!(reply.status(), 403);
    assert!(reply.headers().get("access-control-allow-origin").is_none());
    let metrics = server.http.get(format!("{}/metrics", server.metrics_base)).send().await.expect("metrics");
    assert!(metrics.text().await.expect("text").contains("sealpost_cors_refused_total"));
    // The same request without the browser's headers is an ordinary (unknown-method) request.
    server.call(Method::OPTIONS, "/v1/messages", Auth::None, None).await.expect_error(405, "method_not_allowed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_security_headers_and_a_request_id() {
    let server = start(Backend::Embedded).await;
    for path in ["/healthz", "/v1/devices", "/no/such/route", "/openapi.json"] {
        let reply = server.http.get(format!("{}{path}", server.base)).send().await.expect("get");
        let headers = reply.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert!(headers["content-security-policy"].to_str().expect("ascii").contains("default-src 'none'"));
        assert!(headers.get("strict-transport-security").is_none(), "{path}: HSTS over plain HTTP");
        let id = headers["x-request-id"].to_str().expect("ascii");
        assert_eq!(id.len(), 32, "{path}: a generated id is 32 hex digits: {id}");
    }
    // Two requests without an id get different ones: nothing about the client goes into it.
    let ids: Vec<String> =
        futures_util::future::join_all((0..2).map(|_| server.http.get(format!("{}/healthz", server.base)).send()))
            .await
            .into_iter()
            .map(|r| r.expect("get").headers()["x-request-id"].to_str().expect("ascii").to_owned())
            .collect();
    assert_ne!(ids[0], ids[1]);

    // A sane id sent by the client comes back and tags the server's log line for the request.
    let mine = format!("trace-{}", uuid::Uuid::new_v4().simple());
    let reply = server.http.get(format!("{}/v1/devices", server.base)).header("x-request-id", &mine).send().await;
    let reply = reply.expect("get");
    assert_eq!(reply.status(), 401);
    assert_eq!(reply.headers()["x-request-id"], mine.as_str());
    let logs = logs::captured();
    let line = logs.lines().find(|l| l.contains(&mine)).unwrap_or_else(|| panic!("no log line carries {mine}"));
    assert!(line.contains("request_id") && line.contains("/v1/devices"), "{line}");
    // One that is not sane is replaced, never echoed.
    let reply = server
        .http
        .get(format!("{}/healthz", server.base))
        .header("x-request-id", "<script>alert(1)</script>")
        .send()
        .await
        .expect("get");
    assert_ne!(reply.headers()["x-request-id"], "<script>alert(1)</script>");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_version_and_uptime_and_docs_render_the_api() {
    let server = start(Backend::Embedded).await;
    let health = server.get("/healthz", Auth::None).await.expect(200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptimeSeconds"].as_u64().is_some_and(|s| s < 600), "{health}");

    let page = server.http.get(format!("{}/docs", server.base)).send().await.expect("docs");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().expect("ascii").to_owned();
    assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe") && !csp.contains("script-src"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(!html.contains("<script"), "the page runs no script");
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");
    // Every route of the API is on the page.
    for (_, path, _) in sealpost::http::openapi::routes() {
        assert!(html.contains(&format!("<code>{path}</code>")), "{path} missing from /docs");
    }
    server.stop().await;
}
