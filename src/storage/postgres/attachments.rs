//! Attachment records in Postgres.
//!
//! Owns the SQL of [`AttachmentStore`]; rows are decoded (and their parts checked to tile the received
//! bytes) in `storage::rows`. Invariants: a part is recorded only while the upload's offset is where the
//! part begins, by a conditional update in the same transaction, so two writers of one upload (on two
//! instances) can never both add bytes at the same place. Rows hold hashes of the id and the credential.

use async_trait::async_trait;
use sqlx::Row;

use crate::storage::postgres::Postgres;
use crate::storage::rows::{self, AttachmentColumns, AttachmentPartColumns};
use crate::storage::{Attachment, AttachmentPart, AttachmentStore, NewAttachment, StoreResult};

const COLUMNS: &str = "id_hash, credential_hash, length, received, created_at, upload_until, expires_at, completed_at";

#[async_trait]
impl AttachmentStore for Postgres {
    async fn create_attachment(&self, a: &NewAttachment) -> StoreResult<()> {
        sqlx::query(&format!("INSERT INTO attachments ({COLUMNS}) VALUES ($1, $2, $3, 0, $4, $5, $6, NULL)"))
            .bind(&a.id_hash[..])
            .bind(&a.credential_hash[..])
            .bind(a.length as i64)
            .bind(a.created_at)
            .bind(a.upload_until)
            .bind(a.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn attachment(&self, id_hash: [u8; 32]) -> StoreResult<Option<Attachment>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let Some(row) = sqlx::query(&format!("SELECT {COLUMNS} FROM attachments WHERE id_hash = $1"))
            .bind(&id_hash[..])
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let columns: AttachmentColumns = (
            row.try_get("id_hash")?,
            row.try_get("credential_hash")?,
            row.try_get("length")?,
            row.try_get("received")?,
            row.try_get("created_at")?,
            row.try_get("upload_until")?,
            row.try_get("expires_at")?,
            row.try_get("completed_at")?,
        );
        let parts: Vec<AttachmentPartColumns> =
            sqlx::query_as("SELECT start, length, object FROM attachment_parts WHERE id_hash = $1 ORDER BY start")
                .bind(&id_hash[..])
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        rows::attachment(columns, parts).map(Some)
    }

    async fn add_part(&self, id_hash: [u8; 32], part: &AttachmentPart, now: i64) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE attachments SET received = received + $1,
                 completed_at = CASE WHEN received + $1 = length THEN $2 ELSE NULL END
             WHERE id_hash = $3 AND received = $4 AND completed_at IS NULL AND received + $1 <= length",
        )
        .bind(part.length as i64)
        .bind(now)
        .bind(&id_hash[..])
        .bind(part.start as i64)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO attachment_parts (id_hash, start, length, object) VALUES ($1, $2, $3, $4)")
            .bind(&id_hash[..])
            .bind(part.start as i64)
            .bind(part.length as i64)
            .bind(&part.object)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn expired_attachments(&self, now: i64, limit: usize) -> StoreResult<Vec<[u8; 32]>> {
        let hashes: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT id_hash FROM attachments WHERE expires_at <= $1 OR (completed_at IS NULL AND upload_until <= $1)
             LIMIT $2",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(hashes.into_iter().filter_map(|h| h.try_into().ok()).collect())
    }

    async fn delete_attachments(&self, id_hashes: &[[u8; 32]]) -> StoreResult<u64> {
        let hashes: Vec<Vec<u8>> = id_hashes.iter().map(|h| h.to_vec()).collect();
        let done =
            sqlx::query("DELETE FROM attachments WHERE id_hash = ANY($1)").bind(&hashes).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}
