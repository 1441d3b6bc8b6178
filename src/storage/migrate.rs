//! Schema migrations, compiled into the binary and applied in order under a lock.
//!
//! Postgres: one transaction holding `pg_advisory_xact_lock` on a key derived from the schema, so replicas
//! that start together apply each migration exactly once and the others wait, then see it applied.
//! SQLite: one `BEGIN IMMEDIATE` transaction, which takes the database's write lock.
//! One runner serves both dialects: only the lock and the ledger's INSERT differ between them.

use sqlx::{Connection, PgConnection, SqliteConnection};

use super::{StoreError, StoreResult};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

macro_rules! migrations {
    ($dir:literal: $($version:literal => $name:literal),* $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../migrations/", $dir, "/", $name, ".sql")),
        }),*]
    };
}

const SQLITE: &[Migration] = migrations!("sqlite":
    1 => "0001_accounts", 2 => "0002_keys", 3 => "0003_messages", 4 => "0004_link_codes",
    5 => "0005_device_incarnations", 6 => "0006_contact_tokens", 7 => "0007_push_subscriptions",
    8 => "0008_attachments");
const POSTGRES: &[Migration] = migrations!("postgres":
    1 => "0001_accounts", 2 => "0002_keys", 3 => "0003_link_codes", 4 => "0004_device_incarnations",
    5 => "0005_contact_tokens", 6 => "0006_push_subscriptions", 7 => "0007_attachments");

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS sealpost_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";

/// Applies pending Postgres migrations; returns how many ran.
pub async fn postgres(conn: &mut PgConnection) -> StoreResult<usize> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sealpost-migrate:' || current_schema()))")
        .execute(&mut *tx)
        .await?;
    let record = "INSERT INTO sealpost_migrations (version, name, applied_at) VALUES ($1, $2, $3)";
    let ran = apply_pending::<sqlx::Postgres>(&mut tx, POSTGRES, record).await?;
    tx.commit().await?;
    Ok(ran)
}

/// Applies pending SQLite migrations; returns how many ran.
pub async fn sqlite(conn: &mut SqliteConnection) -> StoreResult<usize> {
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let record = "INSERT INTO sealpost_migrations (version, name, applied_at) VALUES (?, ?, ?)";
    let result = apply_pending::<sqlx::Sqlite>(conn, SQLITE, record).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    sqlx::raw_sql(end).execute(&mut *conn).await?;
    result
}

/// Runs the migrations of `known` that the ledger does not list, each recorded with `record` (the
/// dialect's INSERT into the ledger), inside the caller's transaction and lock.
async fn apply_pending<DB>(conn: &mut DB::Connection, known: &[Migration], record: &'static str) -> StoreResult<usize>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    sqlx::raw_sql(LEDGER).execute(&mut *conn).await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM sealpost_migrations").fetch_all(&mut *conn).await?;
    let mut ran = 0;
    for migration in known.iter().filter(|m| !applied.contains(&m.version)) {
        sqlx::raw_sql(migration.sql)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::Migration(format!("{}: {e}", migration.name)))?;
        sqlx::query(record)
            .bind(migration.version)
            .bind(migration.name.to_owned())
            .bind(crate::domain::now_millis())
            .execute(&mut *conn)
            .await?;
        ran += 1;
    }
    check_not_newer(&applied, known)?;
    Ok(ran)
}

/// Refuses to run against a database migrated by a newer sealpost.
fn check_not_newer(applied: &[i64], known: &[Migration]) -> StoreResult<()> {
    let newest = known.iter().map(|m| m.version).max().unwrap_or(0);
    match applied.iter().find(|v| **v > newest) {
        Some(v) => Err(StoreError::Migration(format!(
            "database has migration {v}, newer than this binary knows ({newest}); upgrade sealpost"
        ))),
        None => Ok(()),
    }
}
