//! Day-two tasks of a deployment, run from the command line beside (or instead of) the server: backups of
//! the embedded data directory and their restore, moving an embedded deployment to scale-out, and the
//! aggregate counts of `sealpost stats`.
//!
//! Owns the archive layout, the order in which an import copies tables, and progress reporting. Storage
//! dialects stay behind the seams of `storage::transfer`. Invariants: nothing here deletes or overwrites
//! stored data unless the operator asked for it (`restore --force`); every file holding secrets is created
//! readable by its owner only; nothing printed names an account, a device, a key or a token: only counts.

pub mod archive;
pub mod progress;
pub mod stats;
pub mod transfer;

use std::path::{Path, PathBuf};

use crate::config::{Backend, Config};
use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    /// The command cannot run as asked; the text says why and what to do.
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn file_error(path: &Path, reason: impl ToString) -> UpkeepError {
    UpkeepError::File { path: path.to_owned(), reason: reason.to_string() }
}

/// The embedded database's URL, or why this configuration has none.
pub(crate) fn embedded_database(config: &Config, what: &str) -> Result<String, UpkeepError> {
    match config.backend() {
        Backend::Embedded { database_url } => Ok(database_url),
        Backend::ScaleOut { .. } => Err(UpkeepError::Refused(format!(
            "{what} works on an embedded data directory, and this configuration is scale-out (Postgres + Redis); \
             back Postgres up with pg_dump (docs/operations.md, Backup and restore)"
        ))),
        Backend::Invalid(reason) => Err(UpkeepError::Refused(reason)),
    }
}

/// A new directory beside `file`, readable by its owner only, for a copy in progress: nothing in it is
/// ever visible to others, even before its mode is set.
pub(crate) fn private_work_dir(file: &Path) -> Result<PathBuf, UpkeepError> {
    use std::os::unix::fs::DirBuilderExt;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "sealpost".into());
    let dir = file.with_file_name(format!(".{name}.work"));
    if dir.exists() {
        // Left by an interrupted run of ours: only our own copy is in it.
        std::fs::remove_dir_all(&dir).map_err(|e| file_error(&dir, e))?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| file_error(&dir, e))?;
    Ok(dir)
}
