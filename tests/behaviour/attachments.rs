//! Attachments on both backends (embedded: the data directory; scale-out: an S3-compatible bucket):
//! a resumable tus upload that breaks off halfway, ranges, the one-time credential, size limits, the
//! daily allowance and expiry.

use std::time::Duration;

use rand::RngCore;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::both_backends;
use crate::harness::*;

both_backends!(
    an_upload_broken_off_halfway_resumes_and_downloads_in_ranges,
    uploads_check_credential_version_type_and_offset,
    sizes_and_the_daily_allowance_are_limited,
    expired_attachments_and_abandoned_uploads_are_deleted
);

const MIB: usize = 1 << 20;

/// The deployment's attachments really are where the backend says: a bucket for scale-out.
fn check_object_store(server: &TestServer, backend: Backend) {
    let names: Vec<_> = server.app.storage.probes.iter().map(|p| p.name()).collect();
    match backend {
        Backend::Embedded => assert!(names.contains(&"attachments-dir"), "{names:?}"),
        Backend::ScaleOut => {
            assert!(
                s3_endpoint().is_some(),
                "scale-out attachments are tested against an S3-compatible server: run scripts/test.sh, or start \
                 one (scripts/s3-test-server.sh LOG) and set SEALPOST_TEST_S3_ENDPOINT"
            );
            assert!(names.contains(&"s3"), "{names:?}");
        }
    }
}

struct Upload {
    id: String,
    url: String,
    credential: String,
}

async fn create(server: &TestServer, user: &User, length: usize) -> Upload {
    let body = server.post("/v1/attachments", user.bearer(), json!({"length": length})).await.expect(201);
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(body["uploadUrl"], json!(format!("/v1/attachments/{id}/upload")));
    assert_eq!(body["downloadUrl"], json!(format!("/v1/attachments/{id}")));
    assert!(body["expiresAt"].as_i64() > body["uploadUntil"].as_i64().map(|u| u - 1));
    Upload {
        url: format!("{}/v1/attachments/{id}/upload", server.base),
        id,
        credential: body["uploadCredential"].as_str().expect("credential").to_owned(),
    }
}

/// `HEAD` on the upload URL: status and `Upload-Offset`.
async fn head(server: &TestServer, upload: &Upload) -> (u16, Option<u64>) {
    let response = server
        .http
        .head(&upload.url)
        .header("tus-resumable", "1.0.0")
        .header("upload-credential", &upload.credential)
        .send()
        .await
        .expect("head");
    assert_eq!(response.headers()["tus-resumable"], "1.0.0");
    let offset = response.headers().get("upload-offset").map(|v| v.to_str().expect("ascii").parse().expect("number"));
    (response.status().as_u16(), offset)
}

/// `PATCH` with the tus headers (as `change` leaves them); status, error code, `Upload-Offset`.
async fn patch(
    server: &TestServer,
    upload: &Upload,
    offset: u64,
    body: impl Into<reqwest::Body>,
    change: impl FnOnce(&mut reqwest::header::HeaderMap),
) -> (u16, String, Option<u64>) {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("tus-resumable", "1.0.0".parse().expect("value"));
    headers.insert("upload-credential", upload.credential.parse().expect("value"));
    headers.insert("content-type", "application/offset+octet-stream".parse().expect("value"));
    headers.insert("upload-offset", offset.into());
    change(&mut headers);
    let response = server.http.patch(&upload.url).headers(headers).body(body).send().await.expect("patch");
    let status = response.status().as_u16();
    let offset = response.headers().get("upload-offset").map(|v| v.to_str().expect("ascii").parse().expect("number"));
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned(), offset)
}

async fn download(server: &TestServer, id: &str, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = server.http.get(format!("{}/v1/attachments/{id}", server.base));
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let response = request.send().await.expect("download");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.bytes().await.expect("bytes").to_vec())
}

fn random(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
}

async fn an_upload_broken_off_halfway_resumes_and_downloads_in_ranges(backend: Backend) {
    let server = start(backend).await;
    check_object_store(&server, backend);
    let user = server.register().await;
    let file = random(20 * MIB);
    let upload = create(&server, &user, file.len()).await;
    assert_eq!(head(&server, &upload).await, (200, Some(0)));

    // The first PATCH announces all 20 MiB, sends 10 and the connection dies.
    let half = 10 * MIB;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let head_lines = format!(
        "PATCH /v1/attachments/{}/upload HTTP/1.1\r\nhost: {address}\r\ntus-resumable: 1.0.0\r\nupload-credential: {}\r\n\
         content-type: application/offset+octet-stream\r\nupload-offset: 0\r\ncontent-length: {}\r\n\r\n",
        upload.id,
        upload.credential,
        file.len()
    );
    socket.write_all(head_lines.as_bytes()).await.expect("head");
    socket.write_all(&file[..half]).await.expect("first half");
    socket.flush().await.expect("flush");
    drop(socket);

    // Every byte that arrived is kept: the offset settles at exactly 10 MiB.
    let mut offset = None;
    for _ in 0..100 {
        offset = head(&server, &upload).await.1;
        if offset == Some(half as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(offset, Some(half as u64), "the bytes received before the break are stored");
    assert_eq!(download(&server, &upload.id, None).await.0, 404, "an unfinished attachment cannot be downloaded");

    // Resuming from a wrong offset is refused with where the upload stands.
    let (status, code, current) = patch(&server, &upload, 0, file[..1024].to_vec(), |_| {}).await;
    assert_eq!((status, code.as_str(), current), (409, "upload_offset_mismatch", Some(half as u64)));
    let (status, _, done) = patch(&server, &upload, half as u64, file[half..].to_vec(), |_| {}).await;
    assert_eq!((status, done), (204, Some(file.len() as u64)));

    // The credential is spent.
    assert_eq!(head(&server, &upload).await.0, 403);
    let (status, code, _) = patch(&server, &upload, file.len() as u64, vec![1], |_| {}).await;
    assert_eq!((status, code.as_str()), (403, "invalid_upload_credential"));

    // Anyone with the id downloads it, whole or in ranges (also across the 4 MiB parts).
    let (status, headers, whole) = download(&server, &upload.id, None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], file.len().to_string().as_str());
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(Sha256::digest(&whole), Sha256::digest(&file), "the download is the upload, byte for byte");
    for (range, slice) in [
        ("bytes=5000000-5000999", 5_000_000..5_001_000),
        ("bytes=4194000-4195000", 4_194_000..4_195_001),
        ("bytes=1000-12582912", 1000..12_582_913),
        ("bytes=-100", file.len() - 100..file.len()),
        ("bytes=20971000-", 20_971_000..file.len()),
    ] {
        let (status, headers, bytes) = download(&server, &upload.id, Some(range)).await;
        assert_eq!(status, 206, "{range}");
        let expected_range = format!("bytes {}-{}/{}", slice.start, slice.end - 1, file.len());
        assert_eq!(headers["content-range"], expected_range.as_str(), "{range}");
        assert!(bytes == file[slice.clone()], "{range}: the bytes of the range");
    }
    let (status, headers, _) = download(&server, &upload.id, Some(&format!("bytes={}-", file.len()))).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{}", file.len()).as_str());
    server.stop().await;
}

async fn uploads_check_credential_version_type_and_offset(backend: Backend) {
    let server = start(backend).await;
    let user = server.register().await;
    let upload = create(&server, &user, 1000).await;
    let other = create(&server, &user, 10).await;
    let wrong = Upload { id: upload.id.clone(), url: upload.url.clone(), credential: other.credential };

    let (status, code, _) = patch(&server, &wrong, 0, vec![1; 10], |_| {}).await;
    assert_eq!((status, code.as_str()), (403, "invalid_upload_credential"));
    assert_eq!(head(&server, &wrong).await.0, 403);
    let (status, code, _) =
        patch(&server, &upload, 0, vec![1; 10], |h| drop(h.insert("tus-resumable", "0.2.2".parse().expect("value"))))
            .await;
    assert_eq!((status, code.as_str()), (412, "unsupported_tus_version"));
    let (status, code, _) = patch(&server, &upload, 0, vec![1; 10], |h| {
        drop(h.insert("content-type", "application/octet-stream".parse().expect("value")))
    })
    .await;
    assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));
    let (status, code, _) =
        patch(&server, &upload, 0, vec![1; 10], |h| drop(h.insert("upload-offset", "ten".parse().expect("value"))))
            .await;
    assert_eq!((status, code.as_str()), (400, "invalid_header"));
    let (status, code, current) = patch(&server, &upload, 7, vec![1; 10], |_| {}).await;
    assert_eq!((status, code.as_str(), current), (409, "upload_offset_mismatch", Some(0)));
    let (status, code, _) = patch(&server, &upload, 0, vec![1; 1001], |_| {}).await;
    assert_eq!((status, code.as_str()), (413, "attachment_too_large"), "more than declared, by Content-Length");
    // The same without a Content-Length (chunked): refused once the bytes pass the declared length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![2; 600]), Ok(vec![3; 600])];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (status, code, _) = patch(&server, &upload, 0, body, |_| {}).await;
    assert_eq!((status, code.as_str()), (413, "attachment_too_large"));
    assert_eq!(head(&server, &upload).await, (200, Some(600)), "the bytes that fitted are kept");
    // Nothing of all that is an attachment yet; unknown and malformed ids look alike.
    assert_eq!(download(&server, &upload.id, None).await.0, 404);
    assert_eq!(download(&server, "AAAAAAAAAAAAAAAAAAAAAA", None).await.0, 404);
    assert_eq!(download(&server, "not-an-id", None).await.0, 404);
    // tus discovery needs no credential.
    let options = server.http.request(Method::OPTIONS, &upload.url).send().await.expect("options");
    assert_eq!(options.status().as_u16(), 204);
    assert_eq!(options.headers()["tus-version"], "1.0.0");
    assert_eq!(options.headers()["tus-max-size"], server.config.max_attachment_bytes.to_string().as_str());
    // The upload goes on from there.
    assert_eq!(patch(&server, &upload, 600, vec![5; 400], |_| {}).await.2, Some(1000));
    let (status, _, bytes) = download(&server, &upload.id, None).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, [vec![2; 600], vec![5; 400]].concat());
    server.stop().await;
}

async fn sizes_and_the_daily_allowance_are_limited(backend: Backend) {
    let server = start_with(backend, |c| {
        c.max_attachment_bytes = 3 * MIB as u64;
        c.limit_attachment_mib_per_account = limit("5/1d");
    })
    .await;
    let user = server.register().await;
    server.post("/v1/attachments", user.bearer(), json!({"length": 0})).await.expect_error(400, "invalid_body");
    server.post("/v1/attachments", user.bearer(), json!({"length": -5})).await.expect_error(400, "invalid_body");
    server
        .post("/v1/attachments", user.bearer(), json!({"length": 3 * MIB + 1}))
        .await
        .expect_error(413, "attachment_too_large");
    server.post("/v1/attachments", user.bearer(), json!({"length": 3 * MIB})).await.expect(201);
    server.post("/v1/attachments", user.bearer(), json!({"length": 1})).await.expect(201);
    // 3 MiB + 1 MiB (the least an attachment counts) of 5: another 2 MiB does not fit today.
    let refused = server.post("/v1/attachments", user.bearer(), json!({"length": 2 * MIB})).await;
    refused.expect_error(429, "rate_limited");
    let wait: u64 = refused.headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!(wait > 3600, "a day's allowance refills slowly: {wait} s");
    // Another account has its own allowance.
    let other = server.register().await;
    server.post("/v1/attachments", other.bearer(), json!({"length": 2 * MIB})).await.expect(201);
    server.stop().await;
}

async fn expired_attachments_and_abandoned_uploads_are_deleted(backend: Backend) {
    let server = start_with(backend, |c| {
        c.attachment_ttl_seconds = 2;
        c.attachment_upload_window_seconds = 1;
        c.attachment_part_bytes = 65536;
    })
    .await;
    let user = server.register().await;
    let file = random(200_000);
    let kept = create(&server, &user, file.len()).await;
    assert_eq!(patch(&server, &kept, 0, file.clone(), |_| {}).await.0, 204);
    let abandoned = create(&server, &user, file.len()).await;
    assert_eq!(patch(&server, &abandoned, 0, file[..100_000].to_vec(), |_| {}).await.0, 204);
    assert_eq!(download(&server, &kept.id, None).await.2, file);

    // Nothing is due yet.
    let storage = &server.app.storage;
    let now = sealpost::domain::now_millis();
    assert_eq!(sealpost::attachments::objects::reap(storage, now).await.expect("reap"), 0);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The window closed: the abandoned upload takes no more bytes and is reaped; the finished one stays.
    let (status, code, _) = patch(&server, &abandoned, 100_000, file[100_000..].to_vec(), |_| {}).await;
    assert_eq!((status, code.as_str()), (403, "invalid_upload_credential"));
    let now = sealpost::domain::now_millis();
    assert_eq!(sealpost::attachments::objects::reap(storage, now).await.expect("reap"), 1);
    assert_eq!(download(&server, &kept.id, None).await.0, 200);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(download(&server, &kept.id, None).await.0, 404, "an expired attachment is never served");
    let now = sealpost::domain::now_millis();
    assert_eq!(sealpost::attachments::objects::reap(storage, now).await.expect("reap"), 1);
    // Their objects are gone too (4 parts of 64 KiB, and 2 of the abandoned one).
    assert_eq!(storage.blobs.delete_prefix("attachments").await.expect("list"), 0, "no object is left behind");
    server.stop().await;
}
