//! Moving an embedded deployment to scale-out with `sealpost export` and `sealpost import`: every account
//! keeps its devices (old secrets and tokens work), its prekeys (each one-time key handed out once) and its
//! pending envelopes (each delivered once); a second import changes nothing.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::harness::*;
use crate::messages::message;
use crate::upkeep::{cli, cli_envs, drain};

/// Sends one envelope to every device of `to` (the device set must be whole).
async fn send_to_all(server: &TestServer, from: &User, to: &[User], content: &[u8]) {
    let messages: Vec<Value> = to.iter().map(|device| message(device, 1, content)).collect();
    let path = format!("/v1/messages/{}", to[0].aci);
    server.put(&path, from.bearer(), json!({"messages": messages, "timestamp": 1})).await.expect(200);
}

/// The number in `<label>: N in the export, A new, B already there` as (N, A, B).
fn step(out: &str, label: &str) -> (u64, u64, u64) {
    let line = out.lines().find(|l| l.starts_with(&format!("{label}: "))).unwrap_or_else(|| panic!("{label}: {out}"));
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    match numbers.as_slice() {
        [total, new, existing] => (*total, *new, *existing),
        _ => panic!("{line}"),
    }
}

async fn stats(config: &sealpost::config::Config) -> Value {
    let (ok, out) = cli(&["stats", "--json"], &cli_envs(config)).await;
    assert!(ok, "{out}");
    let mut stats: Value =
        serde_json::from_str(&out[out.find('{').expect("json")..=out.rfind('}').expect("json")]).expect("json");
    stats["oldest_envelope_age_seconds"] = Value::Null;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_deployment_moves_to_scale_out_whole() {
    let embedded = test_config(Backend::Embedded);
    let server = start_config(embedded.clone()).await;
    // Three accounts of two devices, three one-time keys of each kind on every device.
    let mut accounts: Vec<Vec<User>> = Vec::new();
    for i in 0..3u16 {
        let primary = server.register().await;
        let second = server.add_device(&primary, 900 + i).await;
        for device in [&primary, &second] {
            server.put("/v1/keys", device.bearer(), full_upload(&device.identity, 3)).await.expect(204);
        }
        accounts.push(vec![primary, second]);
    }
    // Each account sends two envelopes to each other one: four waiting on every device.
    let mut expected: HashMap<String, HashSet<Vec<u8>>> = HashMap::new();
    for (a, from) in accounts.iter().enumerate() {
        for (b, to) in accounts.iter().enumerate().filter(|(b, _)| *b != a) {
            for k in 0..2 {
                let content = format!("from {a} to {b} #{k}").into_bytes();
                send_to_all(&server, &from[0], to, &content).await;
                expected.entry(to[0].aci.clone()).or_default().insert(content);
            }
        }
    }
    server.post("/v1/contact-tokens", accounts[0][0].bearer(), json!({})).await.expect(201);
    let attachment: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let attachment_id = upload(&server, &accounts[1][0], &attachment).await;
    sealpost::accounts::service::create_invite(&server.app.storage, 3600).await.expect("invite");
    let before = stats(&embedded).await;

    // Export beside the running server; the scale-out deployment gets the same key files.
    let dir = temp_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let export = dir.join("export.db");
    let (ok, out) = cli(&["export", export.to_str().expect("path")], &cli_envs(&embedded)).await;
    assert!(ok, "{out}");
    let mut scale = test_config(Backend::ScaleOut);
    scale.data_dir = dir.join("scale");
    std::fs::create_dir_all(&scale.data_dir).expect("dir");
    for name in
        ["jwt_ed25519.pem", "trust_root.key", "server_cert.key", "vapid_p256.pem", "turn_secret", "pseudonym.key"]
    {
        std::fs::copy(embedded.data_dir.join(name), scale.data_dir.join(name)).expect("copy key");
    }
    let objects = dir.join("attachments");
    copy_tree(&embedded.data_dir.join("attachments"), &objects);
    server.stop().await;

    let started = std::time::Instant::now();
    let import = ["import", export.to_str().expect("path"), "--attachments-dir", objects.to_str().expect("path")];
    let (ok, first) = cli(&import, &cli_envs(&scale)).await;
    assert!(ok, "{first}");
    eprintln!("first import in {} ms:\n{first}", started.elapsed().as_millis());
    assert_eq!(step(&first, "accounts"), (3, 3, 0));
    assert_eq!(step(&first, "devices"), (6, 6, 0));
    assert_eq!(step(&first, "signed_keys"), (12, 12, 0));
    assert_eq!(step(&first, "contact_tokens"), (1, 1, 0));
    assert_eq!(step(&first, "invites"), (1, 1, 0));
    assert_eq!(step(&first, "one-time prekeys"), (36, 36, 0));
    assert_eq!(step(&first, "envelopes"), (24, 24, 0));
    assert_eq!(step(&first, "attachments"), (1, 1, 0));
    let (parts, _, _) = step(&first, "attachment_parts");
    assert!(parts >= 1);
    assert_eq!(step(&first, "attachment objects"), (parts, parts, 0));
    let after_first = stats(&scale).await;
    assert_eq!(after_first, before, "scale-out counts what embedded held");

    let started = std::time::Instant::now();
    let (ok, second) = cli(&import, &cli_envs(&scale)).await;
    assert!(ok, "{second}");
    eprintln!("second import in {} ms:\n{second}", started.elapsed().as_millis());
    let labels = ["accounts", "devices", "signed_keys", "contact_tokens", "invites", "one-time prekeys", "envelopes"];
    for label in labels.into_iter().chain(["attachments", "attachment_parts", "attachment objects"]) {
        let (total, new, existing) = step(&second, label);
        assert_eq!((new, existing), (0, total), "{label}: nothing written twice");
    }
    assert_eq!(stats(&scale).await, after_first, "the second import changed nothing");
    assert!(second.contains("import done: 0 records written"), "{second}");

    // Refused, with a clear word and nothing written: an embedded target, a file that is no export.
    let (ok, out) = cli(&import, &cli_envs(&test_config(Backend::Embedded))).await;
    assert!(!ok && out.contains("scale-out"), "{out}");
    std::fs::write(dir.join("junk.db"), b"not a database").expect("write");
    let (ok, out) = cli(&["import", dir.join("junk.db").to_str().expect("path")], &cli_envs(&scale)).await;
    assert!(!ok && out.contains("not a sealpost export") && !out.contains("panicked"), "{out}");
    let (ok, out) = cli(&["export", export.to_str().expect("path")], &cli_envs(&embedded)).await;
    assert!(!ok && out.contains("exists already"), "{out}");

    let server = start_config(scale).await;
    let requester = server.register().await;
    let downloaded = server.http.get(format!("{}/v1/attachments/{attachment_id}", server.base)).send().await;
    let downloaded = downloaded.expect("download");
    assert_eq!(downloaded.status(), 200);
    assert_eq!(downloaded.bytes().await.expect("bytes").to_vec(), attachment, "the attachment came along");
    for devices in &accounts {
        for device in devices {
            // The old token (signed by the embedded server) and the old device secret both work.
            server.get("/v1/devices", device.bearer()).await.expect(200);
            server.token(device).await;
            // Each one-time key once, then the last-resort key.
            let path = format!("/v1/keys/{}/{}", device.aci, device.device_id);
            let (mut ec, mut kem) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                let bundle = server.get(&path, requester.bearer()).await.expect(200);
                ec.push(bundle["devices"][0]["preKey"]["keyId"].as_u64().expect("one-time ec key"));
                kem.push(bundle["devices"][0]["pqPreKey"]["keyId"].as_u64().expect("kyber key"));
            }
            ec.sort_unstable();
            kem.sort_unstable();
            assert_eq!((ec, kem), (vec![1, 2, 3], vec![1001, 1002, 1003]));
            let bundle = server.get(&path, requester.bearer()).await.expect(200);
            assert!(bundle["devices"][0].get("preKey").is_none(), "no one-time key is handed out twice");
            assert_eq!(bundle["devices"][0]["pqPreKey"]["keyId"], 1, "then the last-resort key");
            // Every pending envelope exactly once.
            let served = drain(&server.base, device).await;
            assert!(served.values().all(|&n| n == 1), "each envelope once");
            let served: HashSet<Vec<u8>> = served.into_keys().collect();
            assert_eq!(&served, &expected[&device.aci]);
            assert!(drain(&server.base, device).await.is_empty(), "nothing comes back after the acknowledgements");
        }
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Uploads `bytes` as one attachment (tus: create, then one PATCH); returns its id.
async fn upload(server: &TestServer, user: &User, bytes: &[u8]) -> String {
    let body = server.post("/v1/attachments", user.bearer(), json!({"length": bytes.len()})).await.expect(201);
    let id = body["id"].as_str().expect("id").to_owned();
    let credential = body["uploadCredential"].as_str().expect("credential").to_owned();
    let patched = server
        .http
        .patch(format!("{}/v1/attachments/{id}/upload", server.base))
        .header("tus-resumable", "1.0.0")
        .header("upload-credential", credential)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", "0")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 204);
    id
}

/// Copies every file under `from` to the same place under `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
