//! `sealpost export` and `sealpost import`: moving an embedded deployment to scale-out.
//!
//! An export is a consistent copy of the embedded SQLite database (taken while the server runs, like a
//! backup's), written with mode 0600. An import reads it and writes, in order, every durable table into
//! Postgres, then per device its one-time prekey pools and pending envelopes into Redis, then (when told
//! where the embedded attachments directory is) the attachment objects into the configured object store.
//! Invariants: an import run twice, or resumed after an interruption, writes nothing twice (see
//! `storage::transfer`); envelopes keep their expiry and those already expired are left behind; progress
//! is counts per table, never identifiers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::Config;
use crate::domain::{Aci, DeviceId, now_millis};
use crate::shutdown::Tasks;
use crate::storage::Storage;
use crate::storage::embedded::snapshot::{Snapshot, copy_database};
use crate::storage::transfer::{Cell, DURABLE_TABLES, Imported};
use crate::upkeep::progress::Progress;
use crate::upkeep::{UpkeepError, embedded_database, file_error};

const ROWS_PER_PAGE: u32 = 500;
const DEVICES_PER_PAGE: u32 = 200;

/// Writes a consistent copy of the embedded database to `file` (which must not exist); returns its size.
pub async fn export(config: &Config, file: &Path) -> Result<u64, UpkeepError> {
    let database_url = embedded_database(config, "export")?;
    if file.exists() {
        return Err(UpkeepError::Refused(format!("{} exists already; export to a new file", file.display())));
    }
    let work = crate::upkeep::private_work_dir(file)?;
    let copy = work.join("export.db");
    let result = async {
        copy_database(&database_url, &copy).await?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).map_err(|e| file_error(&copy, e))?;
        fs::rename(&copy, file).map_err(|e| file_error(file, e))?;
        Ok::<_, UpkeepError>(fs::metadata(file).map_err(|e| file_error(file, e))?.len())
    }
    .await;
    let _ = fs::remove_dir_all(&work);
    result
}

/// What an import did, table by table (the order of [`DURABLE_TABLES`], then pools, envelopes, objects).
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub steps: Vec<(&'static str, Imported)>,
}

/// Imports `file` into the configured scale-out stores; with `attachments`, copies the objects the
/// export's attachments name from that directory into the configured object store.
pub async fn import(config: &Config, file: &Path, attachments: Option<&Path>) -> Result<ImportSummary, UpkeepError> {
    if !matches!(config.backend(), crate::config::Backend::ScaleOut { .. }) {
        return Err(not_scale_out());
    }
    let mut snapshot = Snapshot::open(file).await?;
    let tasks = Tasks::default();
    let storage = Storage::connect(config, &tasks).await?;
    let result = import_into(&storage, &mut snapshot, attachments).await;
    tasks.stop(std::time::Duration::from_secs(5)).await;
    let _ = snapshot.close().await;
    result
}

async fn import_into(
    storage: &Storage,
    snapshot: &mut Snapshot,
    attachments: Option<&Path>,
) -> Result<ImportSummary, UpkeepError> {
    let Some(importers) = storage.import.clone() else { return Err(not_scale_out()) };
    let mut summary = ImportSummary::default();
    let mut objects = Vec::new();
    for table in DURABLE_TABLES {
        let mut progress = Progress::start(table.name, snapshot.count(table).await?);
        let (mut after, mut done) = (0, Imported::default());
        loop {
            let (rows, last) = snapshot.rows(table, after, ROWS_PER_PAGE).await?;
            if rows.is_empty() {
                break;
            }
            if table.name == "attachment_parts" {
                objects.extend(rows.iter().filter_map(|row| match row.last() {
                    Some(Cell::Text(name)) => Some(name.clone()),
                    _ => None,
                }));
            }
            let step = importers.durable.insert_rows(table, &rows).await?;
            done.new += step.new;
            done.existing += step.existing;
            progress.advance(rows.len() as u64);
            after = last;
        }
        progress.finish(done);
        summary.steps.push((table.name, done));
    }

    let devices: u64 = snapshot.count(&DURABLE_TABLES[1]).await?;
    let mut progress = Progress::start("devices' pools and queues", devices);
    let (mut pools, mut envelopes) = (Imported::default(), Imported::default());
    let now = now_millis();
    let mut after: Option<(Aci, DeviceId)> = None;
    loop {
        let page = snapshot.devices_after(after, DEVICES_PER_PAGE).await?;
        for &(aci, device) in &page {
            let ephemera = snapshot.device_ephemera(aci, device, now).await?;
            let p = importers.ephemeral.import_pools(&ephemera).await?;
            let e = importers.ephemeral.import_queue(&ephemera, now).await?;
            (pools.new, pools.existing) = (pools.new + p.new, pools.existing + p.existing);
            (envelopes.new, envelopes.existing) = (envelopes.new + e.new, envelopes.existing + e.existing);
        }
        progress.advance(page.len() as u64);
        if page.len() < DEVICES_PER_PAGE as usize {
            break;
        }
        after = page.last().copied();
    }
    progress.end();
    Progress::start("one-time prekeys", pools.new + pools.existing).finish(pools);
    Progress::start("envelopes", envelopes.new + envelopes.existing).finish(envelopes);
    summary.steps.push(("one-time prekeys", pools));
    summary.steps.push(("envelopes", envelopes));

    if let Some(dir) = attachments {
        let mut progress = Progress::start("attachment objects", objects.len() as u64);
        let (mut copied, mut missing) = (Imported::default(), 0u64);
        for name in &objects {
            let path = dir.join(name);
            let plain = Path::new(name).components().all(|c| matches!(c, std::path::Component::Normal(_)));
            // Already copied by an earlier run: the store answers for its first byte.
            if storage.blobs.get(name, 0..1).await.is_ok() {
                copied.existing += 1;
                progress.advance(1);
                continue;
            }
            let bytes = if plain { fs::read(&path).ok() } else { None };
            match bytes {
                Some(bytes) => {
                    storage.blobs.put(name, bytes.into()).await?;
                    copied.new += 1;
                }
                // Deleted since (expired), or never finished: the record's reaper cleans it up.
                None => missing += 1,
            }
            progress.advance(1);
        }
        progress.finish(copied);
        if missing > 0 {
            eprintln!("attachment objects: {missing} named by a record but not in {}", dir.display());
        }
        summary.steps.push(("attachment objects", copied));
    }
    Ok(summary)
}

fn not_scale_out() -> UpkeepError {
    UpkeepError::Refused(
        "import writes into a scale-out deployment: set SEALPOST_DATABASE_URL (postgres://) and SEALPOST_REDIS_URL"
            .into(),
    )
}
