//! The files shipped for deployments name only what the server really has: every metric in the Grafana
//! dashboard and the Prometheus alert rules exists in a running server's `/metrics` or, for those that
//! appear only once something happens (a failed job, a TLS reload), in the source that records it.
//! (`promtool check rules` and `docker compose config` run in scripts/test.sh.)

use std::collections::BTreeSet;
use std::path::Path;

use crate::harness::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `sealpost_…` word in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("sealpost_") {
        let start = at + found;
        let word_start = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end =
            start + text[start..].find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(text.len() - start);
        if word_start {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// The string literals `"sealpost_…"` in the Rust sources under `dir`.
fn recorded_in_source(dir: &Path, into: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            recorded_in_source(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source");
            for name in metric_names(&text) {
                if text.contains(&format!("\"{name}\"")) {
                    into.insert(name);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_use_only_metrics_the_server_exports() {
    let server = start(Backend::Embedded).await;
    let user = server.register().await;
    server.get("/v1/devices", user.bearer()).await.expect(200);
    let exported = server.http.get(format!("{}/metrics", server.metrics_base)).send().await.expect("metrics");
    let exported = metric_names(&exported.text().await.expect("text"));
    server.stop().await;
    assert!(exported.contains("sealpost_http_requests_total"), "{exported:?}");

    let mut known = exported.clone();
    recorded_in_source(&Path::new(ROOT).join("src"), &mut known);
    recorded_in_source(&Path::new(ROOT).join("jobs/src"), &mut known);

    let dashboard_text =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/sealpost.json")).expect("dashboard");
    let rules_text = std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/alerts.yml")).expect("rules");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");

    // Every panel but the rows queries something, and panel ids are unique (Grafana needs both).
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "panel id used twice: {panel}");
        if panel["type"] != "row" {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty()
                    && targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| e.contains("sealpost_")))
            );
        }
    }

    for (file, text, at_least) in
        [("deploy/grafana/sealpost.json", &dashboard_text, 20), ("deploy/prometheus/alerts.yml", &rules_text, 8)]
    {
        let used = metric_names(text);
        assert!(used.len() >= at_least, "{file}: only {} metric names found: {used:?}", used.len());
        let unknown: Vec<&String> = used
            .iter()
            .filter(|name| {
                // A histogram's series carry suffixes the source does not spell out.
                let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s));
                !known.contains(*name) && !base.is_some_and(|b| known.contains(b))
            })
            .collect();
        assert!(unknown.is_empty(), "{file} uses metrics the server does not have: {unknown:?}");
        eprintln!(
            "{file}: {} metric names, all known ({} seen live in /metrics)",
            used.len(),
            used.iter().filter(|n| exported.contains(*n)).count()
        );
    }
}
