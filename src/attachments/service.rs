//! Attachments, the rules: an upload is declared with its length, which must fit
//! `SEALPOST_MAX_ATTACHMENT_BYTES` and the account's daily allowance; bytes arrive in order from the
//! stored offset and are stored in parts of `SEALPOST_ATTACHMENT_PART_BYTES`; a download serves whole
//! parts or slices of them, in order; expired attachments and abandoned uploads are deleted by
//! `objects::reap`.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};

use super::objects;
use super::range::{self, Wanted};
use crate::access::AuthedDevice;
use crate::crypto::{constant_time_eq, keyed_hash, random_bytes};
use crate::domain::now_millis;
use crate::error::ApiError;
use crate::state::App;
use crate::storage::{Attachment, AttachmentPart, BlobStream, Blobs, NewAttachment};

const MIB: u64 = 1 << 20;

/// A new upload, shown to its device this once.
pub struct Created {
    pub id: String,
    pub credential: String,
    pub upload_until: i64,
    pub expires_at: i64,
}

pub async fn create(app: &App, owner: AuthedDevice, length: u64) -> Result<Created, ApiError> {
    let config = &app.config;
    if length == 0 {
        return Err(ApiError::InvalidBody("length must be at least 1".into()));
    }
    if length > config.max_attachment_bytes {
        return Err(ApiError::AttachmentTooLarge);
    }
    // The allowance counts declared bytes, in whole MiB, when the upload is created.
    let cost = u32::try_from(length.div_ceil(MIB)).unwrap_or(u32::MAX);
    app.limiter
        .check_cost("attachment_mib_account", owner.aci.0.as_bytes(), &config.limit_attachment_mib_per_account, cost)
        .await?;
    let id = URL_SAFE_NO_PAD.encode(random_bytes::<16>());
    let credential = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let now = now_millis();
    let seconds = |s: u64| (s as i64).saturating_mul(1000);
    let expires_at = now.saturating_add(seconds(config.attachment_ttl_seconds));
    let upload_until = now.saturating_add(seconds(config.attachment_upload_window_seconds)).min(expires_at);
    let new = NewAttachment {
        id_hash: id_hash(app, &id).ok_or_else(|| ApiError::Internal("fresh attachment id".into()))?,
        credential_hash: credential_hash(app, &credential),
        length,
        created_at: now,
        upload_until,
        expires_at,
    };
    app.storage.attachments.create_attachment(&new).await?;
    metrics::counter!("sealpost_attachments_created_total").increment(1);
    Ok(Created { id, credential, upload_until, expires_at })
}

/// The stored form of an id, or `None` for something that is not one of our ids.
fn id_hash(app: &App, id: &str) -> Option<[u8; 32]> {
    let bytes = URL_SAFE_NO_PAD.decode(id).ok().filter(|b| b.len() == 16)?;
    Some(keyed_hash(&app.keys.pseudonym_key, "attachment-id", &bytes))
}

fn credential_hash(app: &App, credential: &str) -> [u8; 32] {
    keyed_hash(&app.keys.pseudonym_key, "attachment-upload", credential.as_bytes())
}

/// The upload that `credential` opens: its attachment, still within its window and not complete. Every
/// failure (unknown id, wrong credential, window closed, already complete) is the same answer.
pub async fn open(app: &App, id: &str, credential: Option<&str>) -> Result<Attachment, ApiError> {
    let refused = ApiError::InvalidUploadCredential;
    let (Some(id_hash), Some(credential)) = (id_hash(app, id), credential) else { return Err(refused) };
    let attachment = app.storage.attachments.attachment(id_hash).await?.ok_or(ApiError::InvalidUploadCredential)?;
    let matches = constant_time_eq(&attachment.credential_hash, &credential_hash(app, credential));
    if !(matches && attachment.open_for_upload(now_millis())) {
        return Err(refused);
    }
    Ok(attachment)
}

/// Appends the body to the upload at `offset` (which must be where it stands); returns the new offset.
/// Bytes that arrive are stored even if the body breaks off, so the client resumes after them.
pub async fn upload(
    app: Arc<App>,
    attachment: Attachment,
    offset: u64,
    body: axum::body::Body,
) -> Result<u64, ApiError> {
    if offset != attachment.received {
        return Err(ApiError::UploadOffsetMismatch(attachment.received));
    }
    // On a task of its own: when a client goes away mid-body its request is dropped, but what arrived
    // must still be stored.
    tokio::spawn(receive(app, attachment, body)).await.map_err(|e| ApiError::Internal(format!("upload task: {e}")))?
}

async fn receive(app: Arc<App>, attachment: Attachment, body: axum::body::Body) -> Result<u64, ApiError> {
    let part_bytes = app.config.attachment_part_bytes;
    let idle = Duration::from_secs(app.config.attachment_idle_timeout_seconds.max(1));
    let room = attachment.length - attachment.received;
    let mut at = attachment.received;
    let mut buffer = BytesMut::new();
    let mut body = body.into_data_stream();
    let ended = loop {
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => {
                if at - attachment.received + (buffer.len() + chunk.len()) as u64 > room {
                    break Err(ApiError::AttachmentTooLarge);
                }
                buffer.extend_from_slice(&chunk);
                while buffer.len() >= part_bytes {
                    at = store_part(&app, &attachment, at, buffer.split_to(part_bytes).freeze()).await?;
                }
            }
            Ok(None) => break Ok(()),
            // The connection broke: nobody reads the answer, but what arrived is kept.
            Ok(Some(Err(_))) => break Err(ApiError::InvalidBody("the body broke off".into())),
            Err(_) => break Err(ApiError::RequestTimeout),
        }
    };
    if !buffer.is_empty() {
        at = store_part(&app, &attachment, at, buffer.freeze()).await?;
    }
    ended.map(|()| at)
}

/// Stores `bytes` as the part at `start` and records it; returns the offset after it.
async fn store_part(app: &App, attachment: &Attachment, start: u64, bytes: Bytes) -> Result<u64, ApiError> {
    if !attachment.open_for_upload(now_millis()) {
        return Err(ApiError::InvalidUploadCredential);
    }
    let length = bytes.len() as u64;
    let object = objects::part_name(&attachment.id_hash, start);
    app.storage.blobs.put(&object, bytes).await?;
    let part = AttachmentPart { start, length, object };
    if app.storage.attachments.add_part(attachment.id_hash, &part, now_millis()).await? {
        metrics::counter!("sealpost_attachment_bytes_received_total").increment(length);
        if start + length == attachment.length {
            metrics::counter!("sealpost_attachments_completed_total").increment(1);
        }
        return Ok(start + length);
    }
    // Another request for the same upload stored bytes here first: ours are dropped.
    app.storage.blobs.delete(&part.object).await?;
    let current = app.storage.attachments.attachment(attachment.id_hash).await?.map_or(0, |a| a.received);
    Err(ApiError::UploadOffsetMismatch(current))
}

/// What a download sends.
pub struct Download {
    pub length: u64,
    /// The slice asked for with `Range`, if any.
    pub range: Option<Range<u64>>,
    pub bytes: BlobStream,
}

pub async fn download(app: &App, ip: IpAddr, id: &str, range: Option<&str>) -> Result<Download, ApiError> {
    let limit = &app.config.limit_attachment_downloads_per_ip;
    app.limiter.check("attachment_downloads_ip", ip.to_string().as_bytes(), limit).await?;
    let id_hash = id_hash(app, id).ok_or(ApiError::NotFound)?;
    let attachment = app.storage.attachments.attachment(id_hash).await?;
    let attachment = attachment.filter(|a| a.downloadable(now_millis())).ok_or(ApiError::NotFound)?;
    let (wanted, partial) = match range::wanted(range, attachment.length) {
        Wanted::Whole => (0..attachment.length, false),
        Wanted::Part(range) => (range, true),
        Wanted::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(attachment.length)),
    };
    metrics::counter!("sealpost_attachment_downloads_total").increment(1);
    let bytes = slices(app.storage.blobs.clone(), attachment.parts, wanted.clone());
    Ok(Download { length: attachment.length, range: partial.then_some(wanted), bytes })
}

/// The bytes `range` of an attachment made of `parts`, read part after part as the client takes them.
fn slices(blobs: Arc<dyn Blobs>, parts: Vec<AttachmentPart>, range: Range<u64>) -> BlobStream {
    let pieces: Vec<(String, Range<u64>)> = parts
        .into_iter()
        .filter_map(|part| {
            let (start, end) = (range.start.max(part.start), range.end.min(part.start + part.length));
            (start < end).then(|| (part.object, start - part.start..end - part.start))
        })
        .collect();
    futures_util::stream::iter(pieces)
        .then(move |(object, slice)| {
            let blobs = blobs.clone();
            async move { blobs.get(&object, slice).await }
        })
        .try_flatten()
        .boxed()
}
