//! Consistent copies of the embedded database, and reading one back for an import.
//!
//! Owns `VACUUM INTO` (a copy of the database as of one read transaction, taken beside a running server:
//! WAL lets it read while the writer writes, and what it sees is exactly what was committed when it
//! began) and the SQL that reads a copy table by table. Invariants: the live database is only ever read
//! here; a copy is written to a new file that nobody else opens until it is complete; reading a copy
//! never changes a row of it (only its schema is brought up to date, so an older export imports).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{Connection, Row, SqliteConnection};

use crate::domain::{Aci, DeviceId};
use crate::storage::embedded::aci_text;
use crate::storage::rows::{self, KIND_EC, KIND_KEM};
use crate::storage::transfer::{Cell, Column, DeviceEphemera, Table};
use crate::storage::{NewEnvelope, StoreError, StoreResult};

/// The file a `sqlite:` URL names; `None` for an in-memory database.
pub fn database_path(database_url: &str) -> Option<PathBuf> {
    let path = database_url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Writes a consistent copy of the live database at `database_url` to `dest`, a path that must not exist
/// yet. The running server goes on writing meanwhile; the copy holds what was committed when it began.
pub async fn copy_database(database_url: &str, dest: &Path) -> StoreResult<()> {
    let source = database_path(database_url)
        .ok_or_else(|| StoreError::Failed("the database is in memory: there is nothing to copy".into()))?;
    if !source.exists() {
        return Err(StoreError::Failed(format!("no database at {}", source.display())));
    }
    let dest = dest.to_str().ok_or_else(|| StoreError::Failed("the destination path is not UTF-8".into()))?;
    let options = SqliteConnectOptions::new().filename(&source).read_only(true).busy_timeout(Duration::from_secs(30));
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let copied = sqlx::query("VACUUM INTO ?").bind(dest).execute(&mut conn).await;
    conn.close().await?;
    copied?;
    Ok(())
}

/// A `one_time_keys` row: kind, key id, public key, signature (Kyber keys only).
type PoolRow = (i64, i64, Vec<u8>, Option<Vec<u8>>);

/// An exported copy of the embedded database, open for reading.
pub struct Snapshot {
    conn: SqliteConnection,
}

impl Snapshot {
    /// Opens a copy made by [`copy_database`] and brings its schema up to date.
    pub async fn open(path: &Path) -> StoreResult<Snapshot> {
        if !path.is_file() {
            return Err(StoreError::Failed(format!("no export at {}", path.display())));
        }
        let options = SqliteConnectOptions::new().filename(path).create_if_missing(false);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| StoreError::Failed(format!("{} is not a sealpost export: {e}", path.display())))?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sealpost_migrations'")
                .fetch_optional(&mut conn)
                .await
                .map_err(|e| StoreError::Failed(format!("{} is not a sealpost export: {e}", path.display())))?;
        if known.is_none() {
            return Err(StoreError::Failed(format!("{} is not a sealpost export (no schema ledger)", path.display())));
        }
        crate::storage::migrate::sqlite(&mut conn).await?;
        Ok(Snapshot { conn })
    }

    pub async fn count(&mut self, table: &Table) -> StoreResult<u64> {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name)).fetch_one(&mut self.conn).await?;
        Ok(n.max(0) as u64)
    }

    /// Up to `limit` rows of `table` after the row `after` (a rowid), with the rowid of the last one.
    pub async fn rows(&mut self, table: &Table, after: i64, limit: u32) -> StoreResult<(Vec<Vec<Cell>>, i64)> {
        let columns: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
        let sql =
            format!("SELECT rowid, {} FROM {} WHERE rowid > ? ORDER BY rowid LIMIT ?", columns.join(", "), table.name);
        let found = sqlx::query(&sql).bind(after).bind(i64::from(limit)).fetch_all(&mut self.conn).await?;
        let mut last = after;
        let mut out = Vec::with_capacity(found.len());
        for row in &found {
            last = row.try_get(0)?;
            let cells = table.columns.iter().enumerate().map(|(i, (_, column))| cell(row, i + 1, *column));
            out.push(cells.collect::<StoreResult<Vec<Cell>>>()?);
        }
        Ok((out, last))
    }

    /// Up to `limit` devices after `after`, in (aci, device id) order.
    pub async fn devices_after(
        &mut self,
        after: Option<(Aci, DeviceId)>,
        limit: u32,
    ) -> StoreResult<Vec<(Aci, DeviceId)>> {
        let (aci, device) = after.map(|(a, d)| (aci_text(a), i64::from(d.0))).unwrap_or_default();
        let found: Vec<(String, i64)> = sqlx::query_as(
            "SELECT aci, device_id FROM devices WHERE (aci, device_id) > (?, ?) ORDER BY aci, device_id LIMIT ?",
        )
        .bind(aci)
        .bind(device)
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn)
        .await?;
        found
            .into_iter()
            .map(|(aci, device)| Ok((Aci::parse(&aci).ok_or(StoreError::Corrupt("aci"))?, rows::device_id(device)?)))
            .collect()
    }

    /// The device's one-time prekeys and its envelopes still live at `now`, oldest first.
    pub async fn device_ephemera(&mut self, aci: Aci, device: DeviceId, now: i64) -> StoreResult<DeviceEphemera> {
        let keys: Vec<PoolRow> = sqlx::query_as(
            "SELECT kind, key_id, public_key, signature FROM one_time_keys
             WHERE aci = ? AND device_id = ? ORDER BY kind, rowid",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .fetch_all(&mut self.conn)
        .await?;
        let mut out = DeviceEphemera { aci, device, ec: Vec::new(), kem: Vec::new(), envelopes: Vec::new() };
        for (kind, key_id, public_key, signature) in keys {
            let key_id = rows::key_id(key_id);
            match (kind, signature) {
                (k, _) if k == i64::from(KIND_EC) => out.ec.push(rows::one_time_ec(key_id, &public_key)?),
                (k, Some(signature)) if k == i64::from(KIND_KEM) => {
                    out.kem.push(rows::signed_kem(key_id, public_key, &signature)?)
                }
                _ => return Err(StoreError::Corrupt("one-time key kind")),
            }
        }
        let envelopes: Vec<(Vec<u8>, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT guid, expires_at, envelope FROM messages
             WHERE aci = ? AND device_id = ? AND expires_at > ? ORDER BY seq",
        )
        .bind(aci_text(aci))
        .bind(i64::from(device.0))
        .bind(now)
        .fetch_all(&mut self.conn)
        .await?;
        for (guid, expires_at, envelope) in envelopes {
            let guid = guid.as_slice().try_into().map_err(|_| StoreError::Corrupt("guid"))?;
            out.envelopes.push(NewEnvelope { guid, expires_at, envelope });
        }
        Ok(out)
    }

    pub async fn close(self) -> StoreResult<()> {
        self.conn.close().await?;
        Ok(())
    }
}

/// Column `index` of `row` as a [`Cell`] of the kind the table says it holds.
fn cell(row: &SqliteRow, index: usize, column: Column) -> StoreResult<Cell> {
    Ok(match column {
        Column::Aci | Column::Text => row.try_get::<Option<String>, _>(index)?.map_or(Cell::Null, Cell::Text),
        Column::Int(_) | Column::Bool => row.try_get::<Option<i64>, _>(index)?.map_or(Cell::Null, Cell::Int),
        Column::Bytes => row.try_get::<Option<Vec<u8>>, _>(index)?.map_or(Cell::Null, Cell::Bytes),
    })
}
