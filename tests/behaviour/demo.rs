//! The browser demo at `/demo/`: static files from the binary, under a strict Content-Security-Policy, off
//! with `SEALPOST_DEMO=false`, and every error still our JSON body. (The page itself is driven in headless
//! Chromium by tests/browser.)

use reqwest::Method;
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, X_CONTENT_TYPE_OPTIONS};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_is_served_with_a_strict_policy_and_errors_stay_json() {
    let server = start(Backend::Embedded).await;
    let page = server.http.get(format!("{}/demo/", server.base)).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers[X_CONTENT_TYPE_OPTIONS], "nosniff");
    let policy = headers[CONTENT_SECURITY_POLICY].to_str().expect("ascii");
    assert!(policy.starts_with("default-src 'self'; script-src 'self';"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    let html = page.text().await.expect("html");
    assert!(html.contains(r#"<script type="module" src="app.js"></script>"#));

    for (file, kind) in [("app.js", "text/javascript"), ("qr.js", "text/javascript"), ("demo.css", "text/css")] {
        let asset = server.http.get(format!("{}/demo/{file}", server.base)).send().await.expect("asset");
        assert_eq!(asset.status(), 200, "{file}");
        assert!(asset.headers()[CONTENT_TYPE].to_str().expect("ascii").starts_with(kind), "{file}");
        assert_eq!(asset.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff", "{file}");
    }
    let bare = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let redirect = bare.get(format!("{}/demo", server.base)).send().await.expect("redirect");
    assert_eq!(redirect.status(), 308);
    assert_eq!(redirect.headers()[LOCATION], "/demo/");

    for path in ["/demo/nothing.js", "/demo/..%2Fconfig.rs", "/demo/index.html/x"] {
        let missing = server.get(path, Auth::None).await;
        assert_eq!(missing.status, 404, "{path}");
        assert_eq!(missing.body["code"], "not_found", "{path}");
    }
    let wrong_method = server.call(Method::POST, "/demo/", Auth::None, None).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.body["code"], "method_not_allowed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_can_be_turned_off() {
    let server = start_with(Backend::Embedded, |config| config.demo_enabled = false).await;
    for path in ["/demo", "/demo/", "/demo/app.js"] {
        let reply = server.get(path, Auth::None).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.body["code"], "not_found", "{path}");
    }
    server.get("/healthz", Auth::None).await.expect(200);
    server.stop().await;
}
