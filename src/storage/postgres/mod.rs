//! The durable half of the scale-out deployment: Postgres holds accounts, devices, invite and link codes,
//! signed and last-resort keys, contact tokens and push subscriptions.
//!
//! This module owns the connection: the schema a deployment (or a test) runs in, migrations under their
//! advisory lock, and a pool whose waits are bounded like any store call. Each capability's SQL lives in
//! its own file; what a row means is decoded in `storage::rows`. Invariants: every statement runs in the
//! configured schema (`search_path`); integer columns are read as `BIGINT` so both SQL dialects hand the
//! same Rust values to the shared decoders. It never holds anything ephemeral (queues, pools of one-time
//! keys, presence): that is Redis's.

mod accounts;
mod attachments;
mod contacts;
mod import;
mod keys;
mod push;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::Config;
use crate::domain::DeviceId;
use crate::storage::{AccountStore, Probe, StoreResult};

async fn options(config: &Config, database_url: &str) -> StoreResult<PgConnectOptions> {
    let mut options = PgConnectOptions::from_str(database_url)?;
    // TLS as the URL's `sslmode` says; the CA setting applies unless the URL names its own `sslrootcert`.
    if let Some(ca_file) = &config.store_ca_file
        && !database_url.contains("sslrootcert=")
    {
        options = options.ssl_root_cert(ca_file);
    }
    let Some(schema) = &config.database_schema else { return Ok(options) };
    // The schema name was checked to be [a-z0-9_]+ by Config::validate, so quoting it is safe.
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    let created = sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).execute(&mut conn).await;
    if let Err(err) = created {
        // Two replicas creating the schema at the same moment: the loser sees a unique violation.
        let duplicate = err.as_database_error().and_then(|e| e.code()).is_some_and(|c| c == "23505" || c == "42P06");
        if !duplicate {
            return Err(err.into());
        }
    }
    conn.close().await?;
    Ok(options.options([("search_path", schema.as_str())]))
}

async fn migrate(options: &PgConnectOptions) -> StoreResult<usize> {
    let mut conn = sqlx::PgConnection::connect_with(options).await?;
    let ran = crate::storage::migrate::postgres(&mut conn).await?;
    conn.close().await?;
    Ok(ran)
}

pub async fn migrate_only(config: &Config, database_url: &str) -> StoreResult<usize> {
    migrate(&options(config, database_url).await?).await
}

/// Applies pending migrations and opens the pool.
pub async fn connect(config: &Config, database_url: &str, timeout: Duration) -> StoreResult<Arc<Postgres>> {
    let options = options(config, database_url).await?;
    migrate(&options).await?;
    // A request waits for a pooled connection no longer than for any other store call.
    let pool = PgPoolOptions::new()
        .max_connections(config.database_max_connections.max(1))
        .acquire_timeout(timeout)
        .connect_with(options)
        .await?;
    Ok(Arc::new(Postgres { pool }))
}

/// The Postgres store of durable records.
pub struct Postgres {
    pool: PgPool,
}

/// Postgres keeps device ids in an `INTEGER` column.
fn device_param(device: DeviceId) -> i32 {
    device.0 as i32
}

#[async_trait]
impl Probe for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    async fn check(&self) -> StoreResult<()> {
        AccountStore::ping(self).await
    }
}
