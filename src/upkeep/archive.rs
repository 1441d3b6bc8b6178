//! `sealpost backup` and `sealpost restore`: one tar archive holding a consistent copy of the embedded
//! database, the server's key files and the attachments directory.
//!
//! Layout: `sealpost-backup` (a version line, checked on restore), `sealpost.db`, `keys/<default name>`
//! per key file, `attachments/<path>` per object. Invariants: the archive is written under a temporary name
//! with mode 0600 and renamed into place only when complete; a restore writes only names of that layout
//! (never a path that climbs out of its directory), refuses a directory or key file that already holds
//! something unless forced, and drops the old database's WAL files so they are never replayed over the
//! restored one. Not compressed: the archive is mostly ciphertext and random keys, which do not shrink.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::config::Config;
use crate::storage::embedded::snapshot::{copy_database, database_path};
use crate::upkeep::{UpkeepError, embedded_database, file_error};

const MARKER: &str = "sealpost-backup";
const VERSION_LINE: &[u8] = b"sealpost backup 1\n";
const DATABASE: &str = "sealpost.db";

/// What a backup or restore wrote.
#[derive(Debug, Default)]
pub struct Summary {
    pub database_bytes: u64,
    pub key_files: usize,
    pub objects: usize,
    pub archive_bytes: u64,
}

/// The attachments directory of this configuration, when attachments are kept in one (not in a bucket).
fn attachments_dir(config: &Config) -> Option<PathBuf> {
    if config.s3_bucket.is_some() {
        return None;
    }
    Some(config.attachments_dir.clone().unwrap_or_else(|| config.data_dir.join("attachments")))
}

/// A name beside `file` for work in progress.
fn beside(file: &Path, suffix: &str) -> PathBuf {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "backup".into());
    file.with_file_name(format!(".{name}.{suffix}"))
}

/// Writes the archive to `file` while the server may be running.
pub async fn backup(config: &Config, file: &Path) -> Result<Summary, UpkeepError> {
    let database_url = embedded_database(config, "backup")?;
    let work = crate::upkeep::private_work_dir(file)?;
    let copy = work.join(DATABASE);
    let written = match copy_database(&database_url, &copy).await {
        Ok(()) => write_archive(config, &copy, file),
        Err(err) => Err(err.into()),
    };
    let _ = fs::remove_dir_all(&work);
    written
}

fn write_archive(config: &Config, database: &Path, file: &Path) -> Result<Summary, UpkeepError> {
    let partial = beside(file, "partial");
    let _ = fs::remove_file(&partial);
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| file_error(&partial, e))?;
    let mut summary = Summary::default();
    let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
    let result = (|| -> Result<(), UpkeepError> {
        append(&mut tar, MARKER, &mut &VERSION_LINE[..], VERSION_LINE.len() as u64, &partial)?;
        summary.database_bytes = append_file(&mut tar, DATABASE, database, &partial)?;
        for (name, path) in crate::server_keys::key_files(config) {
            if path.is_file() {
                append_file(&mut tar, &format!("keys/{name}"), &path, &partial)?;
                summary.key_files += 1;
            }
        }
        if let Some(dir) = attachments_dir(config).filter(|d| d.is_dir()) {
            for (relative, path) in walk(&dir)? {
                append_file(&mut tar, &format!("attachments/{relative}"), &path, &partial)?;
                summary.objects += 1;
            }
        }
        let writer = tar.into_inner().map_err(|e| file_error(&partial, e))?;
        let out = writer.into_inner().map_err(|e| file_error(&partial, e.error().to_string()))?;
        out.sync_all().map_err(|e| file_error(&partial, e))?;
        summary.archive_bytes = out.metadata().map_err(|e| file_error(&partial, e))?.len();
        Ok(())
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&partial);
        return Err(err);
    }
    fs::rename(&partial, file).map_err(|e| file_error(file, e))?;
    Ok(summary)
}

fn append<W: Write, R: Read>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &mut R,
    size: u64,
    archive: &Path,
) -> Result<(), UpkeepError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(crate::domain::now_millis().max(0) as u64 / 1000);
    header.set_cksum();
    tar.append_data(&mut header, name, data).map_err(|e| file_error(archive, e))
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    path: &Path,
    archive: &Path,
) -> Result<u64, UpkeepError> {
    let mut file = File::open(path).map_err(|e| file_error(path, e))?;
    let size = file.metadata().map_err(|e| file_error(path, e))?.len();
    append(tar, name, &mut file, size, archive)?;
    Ok(size)
}

/// Every regular file under `dir`, by its path relative to `dir` ('/'-separated), in a stable order.
fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>, UpkeepError> {
    let mut out = Vec::new();
    let mut pending = vec![(String::new(), dir.to_owned())];
    while let Some((prefix, folder)) = pending.pop() {
        let mut entries: Vec<_> = fs::read_dir(&folder)
            .map_err(|e| file_error(&folder, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&folder, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let kind = entry.file_type().map_err(|e| file_error(&entry.path(), e))?;
            if kind.is_dir() {
                pending.push((relative, entry.path()));
            } else if kind.is_file() {
                out.push((relative, entry.path()));
            }
        }
    }
    Ok(out)
}

/// Where a restore puts each entry of the archive; `None` for a name outside the layout.
fn target(config: &Config, database: &Path, name: &str) -> Option<PathBuf> {
    if name == DATABASE {
        return Some(database.to_owned());
    }
    if let Some(key) = name.strip_prefix("keys/") {
        return crate::server_keys::key_files(config).into_iter().find(|(n, _)| *n == key).map(|(_, path)| path);
    }
    let relative = Path::new(name.strip_prefix("attachments/")?);
    let plain = relative.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && relative.components().next().is_some())
        .then(|| attachments_dir(config))
        .flatten()
        .map(|d| d.join(relative))
}

/// Restores `file` into the configured data directory (and key file paths). Refuses when any of them
/// holds something already, unless `force`; the server must not be running.
pub fn restore(config: &Config, file: &Path, force: bool) -> Result<Summary, UpkeepError> {
    let database_url = embedded_database(config, "restore")?;
    let database = database_path(&database_url)
        .ok_or_else(|| UpkeepError::Refused("the configured database is in memory: nothing to restore into".into()))?;
    let opened = || File::open(file).map_err(|e| file_error(file, e));
    // First pass: the archive is ours and every name in it has a place.
    let mut archive = tar::Archive::new(opened()?);
    let mut names = Vec::new();
    let mut version = Vec::new();
    for entry in archive.entries().map_err(|e| file_error(file, e))? {
        let mut entry = entry.map_err(|e| file_error(file, format!("not a readable archive: {e}")))?;
        let name = entry.path().map_err(|e| file_error(file, e))?.to_string_lossy().into_owned();
        if name == MARKER {
            entry.read_to_end(&mut version).map_err(|e| file_error(file, e))?;
        } else if target(config, &database, &name).is_none() {
            return Err(file_error(file, format!("unexpected entry {name:?}: not a sealpost backup")));
        }
        names.push(name);
    }
    if version != VERSION_LINE {
        return Err(file_error(file, "not a sealpost backup (no or unknown version line)"));
    }
    if !names.iter().any(|n| n == DATABASE) {
        return Err(file_error(file, "the backup holds no database"));
    }
    if !force {
        refuse_occupied(config, &database)?;
    }
    if let Some(parent) = database.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_dir(parent)?;
    }
    // The old database's WAL would be replayed over the restored file: it goes first.
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", database.display()));
        if side.exists() {
            fs::remove_file(&side).map_err(|e| file_error(&side, e))?;
        }
    }
    let mut summary =
        Summary { archive_bytes: opened()?.metadata().map_err(|e| file_error(file, e))?.len(), ..Default::default() };
    let mut archive = tar::Archive::new(opened()?);
    for entry in archive.entries().map_err(|e| file_error(file, e))? {
        let mut entry = entry.map_err(|e| file_error(file, e))?;
        let name = entry.path().map_err(|e| file_error(file, e))?.to_string_lossy().into_owned();
        let Some(path) = target(config, &database, &name) else { continue };
        let written = write_private(&path, &mut entry)?;
        match name.split('/').next() {
            Some("keys") => summary.key_files += 1,
            Some("attachments") => summary.objects += 1,
            _ => summary.database_bytes = written,
        }
    }
    Ok(summary)
}

/// Refuses when the data directory has any entry, or a key file or the database exists elsewhere.
fn refuse_occupied(config: &Config, database: &Path) -> Result<(), UpkeepError> {
    let refuse = |what: &Path| {
        UpkeepError::Refused(format!(
            "{} already holds data; restore into an empty data directory, or pass --force to replace it \
             (stop the server first)",
            what.display()
        ))
    };
    if let Ok(mut entries) = fs::read_dir(&config.data_dir)
        && entries.next().is_some()
    {
        return Err(refuse(&config.data_dir));
    }
    if database.exists() {
        return Err(refuse(database));
    }
    for (_, path) in crate::server_keys::key_files(config) {
        if path.exists() {
            return Err(refuse(&path));
        }
    }
    Ok(())
}

fn private_dir(dir: &Path) -> Result<(), UpkeepError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| file_error(dir, e))?;
    }
    Ok(())
}

/// Writes `data` to `path` through a temporary file (mode 0600) renamed into place; returns the size.
fn write_private(path: &Path, data: &mut impl Read) -> Result<u64, UpkeepError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_dir(parent)?;
    }
    let partial = beside(path, "restoring");
    let _ = fs::remove_file(&partial);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| file_error(&partial, e))?;
    let copied = std::io::copy(data, &mut out).and_then(|n| out.sync_all().map(|()| n));
    match copied {
        Ok(n) => {
            fs::rename(&partial, path).map_err(|e| file_error(path, e))?;
            Ok(n)
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(file_error(path, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_writes_only_names_of_the_layout() {
        let config = Config { data_dir: PathBuf::from("/srv/data"), ..Config::default() };
        let database = Path::new("/srv/data/sealpost.db");
        assert_eq!(target(&config, database, "sealpost.db").as_deref(), Some(database));
        assert_eq!(target(&config, database, "keys/trust_root.key"), Some(PathBuf::from("/srv/data/trust_root.key")));
        assert_eq!(target(&config, database, "attachments/ab/cd"), Some(PathBuf::from("/srv/data/attachments/ab/cd")));
        for outside in ["keys/other.key", "attachments/../sealpost.db", "attachments/", "/etc/passwd", "x", "../x"] {
            assert_eq!(target(&config, database, outside), None, "{outside}");
        }
    }
}
