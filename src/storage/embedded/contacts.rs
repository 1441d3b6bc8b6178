//! Contact tokens in SQLite.
//!
//! Owns the SQL of [`ContactTokens`]; rows are decoded in `storage::rows`, and what makes a token live or
//! full is decided by `ContactToken` and `ContactCap` above the seam. Invariants: creating a token and
//! counting a use hold the write lock from their first read (`BEGIN IMMEDIATE`), so a cap or a use limit
//! cannot be overrun by two concurrent requests. Only keyed hashes of tokens and requesters are stored.

use async_trait::async_trait;
use sqlx::Row;

use crate::domain::Aci;
use crate::storage::embedded::{Sqlite, aci_text};
use crate::storage::rows::{self, ContactTokenColumns};
use crate::storage::{ContactCap, ContactToken, ContactTokens, NewContactToken, StoreError, StoreResult};

const COLUMNS: &str = "id, token_hash, label, created_at, expires_at, max_uses, uses, revoked";

fn decode(row: sqlx::sqlite::SqliteRow) -> StoreResult<ContactToken> {
    let owner = Aci::parse(&row.try_get::<String, _>("aci")?).ok_or(StoreError::Corrupt("aci"))?;
    let columns: ContactTokenColumns = (
        row.try_get("id")?,
        row.try_get("token_hash")?,
        row.try_get("label")?,
        row.try_get("created_at")?,
        row.try_get("expires_at")?,
        row.try_get("max_uses")?,
        row.try_get("uses")?,
        row.try_get("revoked")?,
    );
    rows::contact_token(owner, columns)
}

#[async_trait]
impl ContactTokens for Sqlite {
    async fn create(&self, token: &NewContactToken, cap: &ContactCap) -> StoreResult<bool> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let existing = sqlx::query(&format!("SELECT aci, {COLUMNS} FROM contact_tokens WHERE aci = ?"))
            .bind(aci_text(token.owner))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(decode)
            .collect::<StoreResult<Vec<_>>>()?;
        if !cap.allows(&existing) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO contact_tokens (id, aci, token_hash, label, created_at, expires_at, max_uses)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&token.id[..])
        .bind(aci_text(token.owner))
        .bind(&token.token_hash[..])
        .bind(token.label.as_deref())
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.max_uses.map(i64::from))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list(&self, owner: Aci) -> StoreResult<Vec<ContactToken>> {
        sqlx::query(&format!("SELECT aci, {COLUMNS} FROM contact_tokens WHERE aci = ? ORDER BY created_at DESC"))
            .bind(aci_text(owner))
            .fetch_all(&self.reader)
            .await?
            .into_iter()
            .map(decode)
            .collect()
    }

    async fn revoke(&self, owner: Aci, id: [u8; 16]) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE contact_tokens SET revoked = 1 WHERE aci = ? AND id = ?")
            .bind(aci_text(owner))
            .bind(&id[..])
            .execute(&*self.writer())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn find(&self, token_hash: [u8; 32]) -> StoreResult<Option<ContactToken>> {
        sqlx::query(&format!("SELECT aci, {COLUMNS} FROM contact_tokens WHERE token_hash = ?"))
            .bind(&token_hash[..])
            .fetch_optional(&self.reader)
            .await?
            .map(decode)
            .transpose()
    }

    async fn count_use(&self, id: [u8; 16], requester: [u8; 16]) -> StoreResult<bool> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let seen: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM contact_token_uses WHERE token_id = ? AND requester = ?")
                .bind(&id[..])
                .bind(&requester[..])
                .fetch_optional(&mut *tx)
                .await?;
        if seen.is_some() {
            return Ok(true);
        }
        let token = sqlx::query(&format!("SELECT aci, {COLUMNS} FROM contact_tokens WHERE id = ?"))
            .bind(&id[..])
            .fetch_optional(&mut *tx)
            .await?
            .map(decode)
            .transpose()?;
        if !token.is_some_and(|t| t.has_room()) {
            return Ok(false);
        }
        sqlx::query("INSERT INTO contact_token_uses (token_id, requester) VALUES (?, ?)")
            .bind(&id[..])
            .bind(&requester[..])
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE contact_tokens SET uses = uses + 1 WHERE id = ?").bind(&id[..]).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reap(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM contact_tokens WHERE revoked = 1 OR expires_at <= ?")
            .bind(now)
            .execute(&*self.writer())
            .await?;
        Ok(done.rows_affected())
    }
}
