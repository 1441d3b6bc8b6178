//! Health, readiness, metrics and start-up.

use crate::both_backends;
use crate::harness::*;

both_backends!(health_readiness_and_metrics);

async fn health_readiness_and_metrics(backend: Backend) {
    let server = start(backend).await;
    assert_eq!(server.get("/healthz", Auth::None).await.expect(200)["status"], "ok");
    let ready = server.get("/readyz", Auth::None).await.expect(200);
    let checks = ready["checks"].as_object().expect("checks");
    match backend {
        Backend::Embedded => assert_eq!(checks["sqlite"], "ok"),
        Backend::ScaleOut => {
            assert_eq!(checks["postgres"], "ok");
            assert_eq!(checks["redis"], "ok");
        }
    }
    let user = server.register().await;
    server.get("/v1/devices", user.bearer()).await.expect(200);

    // Metrics live on their own listener, labelled by route template, never by user.
    let metrics = server.http.get(format!("{}/metrics", server.metrics_base)).send().await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("text");
    assert!(text.contains("sealpost_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/v1/devices\""), "{text}");
    assert!(!text.contains(&user.aci), "metrics name an account");
    assert_eq!(server.get("/metrics", Auth::None).await.status, 404, "metrics are not on the public API");
    server.stop().await;
}
