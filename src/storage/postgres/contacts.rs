//! Contact tokens in Postgres.
//!
//! Owns the SQL of [`ContactTokens`]; rows are decoded in `storage::rows`, and what makes a token live or
//! full is decided by `ContactToken` and `ContactCap` above the seam. Invariants: creating a token locks
//! the owner's account row and counting a use locks the token's row (`FOR UPDATE`), so a cap or a use
//! limit cannot be overrun by two concurrent requests. Only keyed hashes of tokens and requesters are
//! stored.

use async_trait::async_trait;
use sqlx::Row;

use crate::domain::Aci;
use crate::storage::postgres::Postgres;
use crate::storage::rows::{self, ContactTokenColumns};
use crate::storage::{ContactCap, ContactToken, ContactTokens, NewContactToken, StoreResult};

const COLUMNS: &str = "id, token_hash, label, created_at, expires_at, max_uses, uses, revoked";

fn decode(row: sqlx::postgres::PgRow) -> StoreResult<ContactToken> {
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
    rows::contact_token(Aci(row.try_get("aci")?), columns)
}

#[async_trait]
impl ContactTokens for Postgres {
    async fn create(&self, token: &NewContactToken, cap: &ContactCap) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        // Locking the owner's account row serialises concurrent creations of one owner.
        let locked: Option<i32> = sqlx::query_scalar("SELECT 1 FROM accounts WHERE aci = $1 FOR UPDATE")
            .bind(token.owner.0)
            .fetch_optional(&mut *tx)
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        let existing = sqlx::query(&format!("SELECT aci, {COLUMNS} FROM contact_tokens WHERE aci = $1"))
            .bind(token.owner.0)
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
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id[..])
        .bind(token.owner.0)
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
        sqlx::query(&format!("SELECT aci, {COLUMNS} FROM contact_tokens WHERE aci = $1 ORDER BY created_at DESC"))
            .bind(owner.0)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(decode)
            .collect()
    }

    async fn revoke(&self, owner: Aci, id: [u8; 16]) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE contact_tokens SET revoked = TRUE WHERE aci = $1 AND id = $2")
            .bind(owner.0)
            .bind(&id[..])
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn find(&self, token_hash: [u8; 32]) -> StoreResult<Option<ContactToken>> {
        sqlx::query(&format!("SELECT aci, {COLUMNS} FROM contact_tokens WHERE token_hash = $1"))
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await?
            .map(decode)
            .transpose()
    }

    async fn count_use(&self, id: [u8; 16], requester: [u8; 16]) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let token = sqlx::query(&format!("SELECT aci, {COLUMNS} FROM contact_tokens WHERE id = $1 FOR UPDATE"))
            .bind(&id[..])
            .fetch_optional(&mut *tx)
            .await?
            .map(decode)
            .transpose()?;
        let Some(token) = token else { return Ok(false) };
        let seen: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM contact_token_uses WHERE token_id = $1 AND requester = $2")
                .bind(&id[..])
                .bind(&requester[..])
                .fetch_optional(&mut *tx)
                .await?;
        if seen.is_some() {
            return Ok(true);
        }
        if !token.has_room() {
            return Ok(false);
        }
        sqlx::query("INSERT INTO contact_token_uses (token_id, requester) VALUES ($1, $2)")
            .bind(&id[..])
            .bind(&requester[..])
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE contact_tokens SET uses = uses + 1 WHERE id = $1").bind(&id[..]).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reap(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM contact_tokens WHERE revoked OR expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
