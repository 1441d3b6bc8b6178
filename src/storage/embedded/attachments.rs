//! Attachment records in SQLite.
//!
//! Owns the SQL of [`AttachmentStore`]; rows are decoded (and their parts checked to tile the received
//! bytes) in `storage::rows`. Invariants: a part is recorded only while the upload's offset is where the
//! part begins, in one write transaction with moving the offset, so two writers of one upload can never
//! both add bytes at the same place. Rows hold hashes of the id and the credential, never either.

use async_trait::async_trait;
use sqlx::Row;

use crate::storage::embedded::Sqlite;
use crate::storage::rows::{self, AttachmentColumns, AttachmentPartColumns};
use crate::storage::{Attachment, AttachmentPart, AttachmentStore, NewAttachment, StoreResult};

const COLUMNS: &str = "id_hash, credential_hash, length, received, created_at, upload_until, expires_at, completed_at";

#[async_trait]
impl AttachmentStore for Sqlite {
    async fn create_attachment(&self, a: &NewAttachment) -> StoreResult<()> {
        sqlx::query(&format!("INSERT INTO attachments ({COLUMNS}) VALUES (?, ?, ?, 0, ?, ?, ?, NULL)"))
            .bind(&a.id_hash[..])
            .bind(&a.credential_hash[..])
            .bind(a.length as i64)
            .bind(a.created_at)
            .bind(a.upload_until)
            .bind(a.expires_at)
            .execute(&*self.writer())
            .await?;
        Ok(())
    }

    async fn attachment(&self, id_hash: [u8; 32]) -> StoreResult<Option<Attachment>> {
        let mut conn = self.reader.begin().await?;
        let Some(row) = sqlx::query(&format!("SELECT {COLUMNS} FROM attachments WHERE id_hash = ?"))
            .bind(&id_hash[..])
            .fetch_optional(&mut *conn)
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
            sqlx::query_as("SELECT start, length, object FROM attachment_parts WHERE id_hash = ? ORDER BY start")
                .bind(&id_hash[..])
                .fetch_all(&mut *conn)
                .await?;
        conn.commit().await?;
        rows::attachment(columns, parts).map(Some)
    }

    async fn add_part(&self, id_hash: [u8; 32], part: &AttachmentPart, now: i64) -> StoreResult<bool> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let moved = sqlx::query(
            "UPDATE attachments SET received = received + ?,
                 completed_at = CASE WHEN received + ? = length THEN ? ELSE NULL END
             WHERE id_hash = ? AND received = ? AND completed_at IS NULL AND received + ? <= length",
        )
        .bind(part.length as i64)
        .bind(part.length as i64)
        .bind(now)
        .bind(&id_hash[..])
        .bind(part.start as i64)
        .bind(part.length as i64)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO attachment_parts (id_hash, start, length, object) VALUES (?, ?, ?, ?)")
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
            "SELECT id_hash FROM attachments WHERE expires_at <= ?
             UNION SELECT id_hash FROM attachments WHERE completed_at IS NULL AND upload_until <= ?
             LIMIT ?",
        )
        .bind(now)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        Ok(hashes.into_iter().filter_map(|h| h.try_into().ok()).collect())
    }

    async fn delete_attachments(&self, id_hashes: &[[u8; 32]]) -> StoreResult<u64> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let mut deleted = 0;
        for id_hash in id_hashes {
            deleted += sqlx::query("DELETE FROM attachments WHERE id_hash = ?")
                .bind(&id_hash[..])
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}
