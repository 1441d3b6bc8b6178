//! Writing imported durable rows into Postgres, and counting what is there for `sealpost stats`.
//!
//! Owns the INSERT built from a neutral table description and the counting SQL. Invariants: an insert
//! never replaces a row (`ON CONFLICT DO NOTHING`: the keys of the table decide what is already there),
//! so importing twice changes nothing the second time; a page of rows goes in one transaction; counts
//! carry no identifier.

use async_trait::async_trait;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use crate::domain::{Aci, DeviceId};
use crate::storage::postgres::{Postgres, device_param};
use crate::storage::rows;
use crate::storage::transfer::{
    Cell, Column, DurableCounts, DurableCountsRow, DurableImport, DurableInventory, Imported, Table,
};
use crate::storage::{StoreError, StoreResult};

/// The placeholder for parameter `n` of a column, with the cast that turns the bound value into the
/// column's type.
fn placeholder(n: usize, column: Column) -> String {
    match column {
        Column::Aci => format!("${n}::uuid"),
        Column::Int(ty) => format!("${n}::{ty}"),
        Column::Bool => format!("(${n}::bigint <> 0)"),
        Column::Bytes => format!("${n}::bytea"),
        Column::Text => format!("${n}::text"),
    }
}

fn bind_cell<'q>(
    query: Query<'q, sqlx::Postgres, PgArguments>,
    column: Column,
    cell: &Cell,
    table: &str,
) -> StoreResult<Query<'q, sqlx::Postgres, PgArguments>> {
    let wrong = || StoreError::Failed(format!("{table}: a value does not fit its column"));
    Ok(match (column, cell) {
        (Column::Aci | Column::Text, Cell::Text(text)) => query.bind(text.clone()),
        (Column::Aci | Column::Text, Cell::Null) => query.bind(None::<String>),
        (Column::Int(_) | Column::Bool, Cell::Int(v)) => query.bind(*v),
        (Column::Int(_) | Column::Bool, Cell::Null) => query.bind(None::<i64>),
        (Column::Bytes, Cell::Bytes(bytes)) => query.bind(bytes.clone()),
        (Column::Bytes, Cell::Null) => query.bind(None::<Vec<u8>>),
        _ => return Err(wrong()),
    })
}

#[async_trait]
impl DurableImport for Postgres {
    async fn insert_rows(&self, table: &Table, rows: &[Vec<Cell>]) -> StoreResult<Imported> {
        if rows.is_empty() {
            return Ok(Imported::default());
        }
        let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
        let width = table.columns.len();
        // Postgres takes at most 65535 parameters per statement.
        let per_statement = (60_000 / width).max(1);
        let mut tx = self.pool.begin().await?;
        let mut new = 0;
        for chunk in rows.chunks(per_statement) {
            let values: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let cells =
                        table.columns.iter().enumerate().map(|(c, (_, col))| placeholder(r * width + c + 1, *col));
                    format!("({})", cells.collect::<Vec<_>>().join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {} ON CONFLICT DO NOTHING",
                table.name,
                names.join(", "),
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                if row.len() != width {
                    return Err(StoreError::Failed(format!("{}: a row has the wrong number of values", table.name)));
                }
                for ((_, column), cell) in table.columns.iter().zip(row) {
                    query = bind_cell(query, *column, cell, table.name)?;
                }
            }
            new += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(Imported { new, existing: rows.len() as u64 - new })
    }
}

#[async_trait]
impl DurableInventory for Postgres {
    async fn counts(&self) -> StoreResult<DurableCounts> {
        let row: DurableCountsRow = sqlx::query_as(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM devices),
                        (SELECT count(*) FROM push_subscriptions), (SELECT count(*) FROM contact_tokens),
                        (SELECT count(*) FROM invites), (SELECT count(*) FROM attachments),
                        (SELECT COALESCE(SUM(length), 0)::BIGINT FROM attachments WHERE completed_at IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    async fn devices_after(&self, after: Option<(Aci, DeviceId)>, limit: u32) -> StoreResult<Vec<(Aci, DeviceId)>> {
        let (aci, device) = after.map(|(a, d)| (a.0, device_param(d))).unwrap_or((uuid::Uuid::nil(), 0));
        let found: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
            "SELECT aci, device_id::BIGINT FROM devices WHERE (aci, device_id) > ($1, $2)
             ORDER BY aci, device_id LIMIT $3",
        )
        .bind(aci)
        .bind(device)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        found.into_iter().map(|(aci, device)| Ok((Aci(aci), rows::device_id(device)?))).collect()
    }
}
