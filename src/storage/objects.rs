//! Where attachment bytes live: [`Blobs`] over the `object_store` crate, either a directory (the embedded
//! default, `<data_dir>/attachments`) or an S3-compatible bucket (AWS S3, MinIO, Ceph, Garage, R2, …),
//! chosen by `SEALPOST_S3_BUCKET`.
//!
//! Owns object names below the configured prefix and the mapping of the crate's errors onto ours: a
//! network failure or a 5xx is `Unavailable` (503, retry), anything else a failure. Invariants: an object
//! appears whole or not at all (S3 PUT; a temporary file renamed into place locally); calls are bounded
//! by short retries and timeouts so an unreachable bucket costs a request seconds, not minutes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::Config;
use crate::storage::{BlobStream, Blobs, Probe, StoreError, StoreResult};

/// Objects in a directory or a bucket.
pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every name (`SEALPOST_S3_PREFIX`), so one bucket can serve several deployments.
    prefix: String,
    kind: &'static str,
}

impl ObjectBlobs {
    /// The store the configuration names: the bucket if `SEALPOST_S3_BUCKET` is set, else the directory.
    pub fn open(config: &Config) -> StoreResult<Arc<ObjectBlobs>> {
        let failed = |e: object_store::Error| StoreError::Migration(format!("attachment store: {e}"));
        let prefix = match config.s3_prefix.as_deref().map(|p| p.trim_matches('/')) {
            Some(p) if !p.is_empty() => format!("{p}/"),
            _ => String::new(),
        };
        let Some(bucket) = &config.s3_bucket else {
            let dir = config.attachments_dir.clone().unwrap_or_else(|| config.data_dir.join("attachments"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError::Migration(format!("cannot create {}: {e}", dir.display())))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(failed)?;
            return Ok(Arc::new(ObjectBlobs { store: Arc::new(local), prefix, kind: "attachments-dir" }));
        };
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
        };
        let client = object_store::ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60));
        // AWS_* variables and instance credentials work as for any AWS client; our settings win.
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&config.s3_region)
            .with_retry(retry);
        if let Some(endpoint) = &config.s3_endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        builder = builder.with_client_options(
            client.with_allow_http(config.s3_endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
        );
        if let Some(id) = &config.s3_access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.s3_secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let s3 = builder.build().map_err(failed)?;
        Ok(Arc::new(ObjectBlobs { store: Arc::new(s3), prefix, kind: "s3" }))
    }

    fn path(&self, name: &str) -> StoreResult<Path> {
        Path::parse(format!("{}{name}", self.prefix)).map_err(|e| StoreError::Failed(format!("object name: {e}")))
    }
}

/// Network trouble and server errors are outages; the rest (a missing object, bad credentials) are not.
fn sorted(err: object_store::Error) -> StoreError {
    match &err {
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            StoreError::Unavailable { store: "objects", reason: err.to_string() }
        }
        _ => StoreError::Failed(format!("object store: {err}")),
    }
}

#[async_trait]
impl Blobs for ObjectBlobs {
    async fn put(&self, name: &str, bytes: Bytes) -> StoreResult<()> {
        self.store.put(&self.path(name)?, PutPayload::from_bytes(bytes)).await.map_err(sorted)?;
        Ok(())
    }

    async fn get(&self, name: &str, range: std::ops::Range<u64>) -> StoreResult<BlobStream> {
        if range.is_empty() {
            return Ok(futures_util::stream::empty().boxed());
        }
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        let got = self.store.get_opts(&self.path(name)?, options).await.map_err(sorted)?;
        Ok(got.into_stream().map_err(sorted).boxed())
    }

    async fn delete(&self, name: &str) -> StoreResult<()> {
        match self.store.delete(&self.path(name)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(sorted(err)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> StoreResult<u64> {
        let prefix = self.path(prefix)?;
        let names = self.store.list(Some(&prefix)).map_ok(|meta| meta.location).boxed();
        let deleted = self.store.delete_stream(names).try_fold(0u64, |n, _| async move { Ok(n + 1) });
        deleted.await.map_err(sorted)
    }
}

#[async_trait]
impl Probe for ObjectBlobs {
    fn name(&self) -> &'static str {
        self.kind
    }

    async fn check(&self) -> StoreResult<()> {
        // Listing a name that holds nothing proves the bucket answers and the credentials work.
        let probe = self.path("probe")?;
        self.store.list_with_delimiter(Some(&probe)).await.map_err(sorted)?;
        Ok(())
    }
}
