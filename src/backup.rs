//! Backups that are provably restorable: create, verify, list, prune,
//! restore into a database, and the restore drill.
//!
//! Called by `daemon` (scheduled and on-demand backups, restore in
//! maintenance mode) and by the CLI when no daemon runs. Takes a prepared
//! [`Access`] (the embedded cluster or an external server) and a database
//! name, never the whole config.
//!
//! Format: `pg_dump --format=custom --compress=0`, compressed with zstd
//! (multi-threaded; on realistic text it is several times faster than
//! pg_dump's built-in zlib at a similar size), optionally encrypted with age,
//! written as `NAME.pgdump.zst[.age]`. `zstd -dc FILE | pg_restore` reads it
//! with stock tools. Beside it, `NAME.json`: the manifest.
//!
//! Invariants:
//! - a backup is *good* only when its manifest exists; the manifest is
//!   written after the data file was fsynced, renamed from `*.partial`, and
//!   verified (checksum and `pg_restore --list`). Anything else in the
//!   directory is a failed or interrupted backup: never listed as good,
//!   never counted by retention, deleted by [`cleanup`];
//! - the manifest's per-table row counts come from the same snapshot
//!   pg_dump dumped (`--snapshot`), so a drill can compare them exactly;
//! - retention never deletes the newest good backup;
//! - a restore reads a backup only after checking it whole (checksum,
//!   decryption, `pg_restore --list`), into a database that is not live
//!   until the caller swaps it in.

pub mod archive;
pub mod pipeline;
pub mod schedule;
pub mod service;

pub use service::{Backups, History, RestoreReport};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::BackupConfig;
use crate::database::Access;
use crate::fsutil;

pub const DATA_SUFFIX: &str = ".pgdump.zst";
pub const ENCRYPTED_SUFFIX: &str = ".age";
pub const MANIFEST_SUFFIX: &str = ".json";
pub const PARTIAL_SUFFIX: &str = ".partial";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a backup is already running; wait for it to finish")]
    Busy,
    #[error(
        "restore refused: the database is the external server {server}, which every instance shares; restoring would replace it under all of them. Stop the instances and restore the backup with pg_restore (zstd -dc FILE | pg_restore -d URL), see README \"External database\""
    )]
    ExternalRestore { server: String },
    #[error(
        "not enough disk space for a backup in {dir}: it needs about {needed} (the database's size) and would leave less than the reserve of {reserve}; {free} is free"
    )]
    NoSpace {
        dir: PathBuf,
        needed: bytesize::ByteSize,
        free: bytesize::ByteSize,
        reserve: bytesize::ByteSize,
    },
    #[error("{step}")]
    Database {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Tool {
        program: &'static str,
        status: String,
        stderr: String,
    },
    #[error("no backup named {0:?} (see `pagodirecto backup list`)")]
    NotFound(String),
    #[error("backup {name} is damaged: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("backup {name} is encrypted and no [backup] identity_file is configured to decrypt it")]
    NoIdentity { name: String },
    #[error("backup {name} cannot be decrypted with {identity}: {reason}")]
    WrongKey {
        name: String,
        identity: PathBuf,
        reason: String,
    },
    #[error(
        "backup {name} is from schema version {backup}, newer than this binary's {binary}; restore it with the pagodirecto version that made it"
    )]
    NewerSchema {
        name: String,
        backup: i64,
        binary: i64,
    },
    #[error("the restore drill of {name} found different row counts: {differences}")]
    DrillMismatch { name: String, differences: String },
    #[error("invalid backup name {0:?}: use letters, digits, '-' and '_'")]
    BadName(String),
    #[error("the backup was aborted")]
    Aborted,
    #[error(
        "backup {name} was restored and is being served, but the safety backup of the data from before the restore failed: {reason}. That data is kept in database {kept} (the daemon backs it up and drops it at its next start)"
    )]
    SafetyBackup {
        name: String,
        kept: String,
        reason: String,
    },
}

fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Database { step, source }
}

/// What we know about a good backup, stored beside it as `NAME.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    /// The data file's name in the backup directory.
    pub file: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub app_version: String,
    pub postgres_version: String,
    pub schema_version: i64,
    pub database: String,
    pub size: u64,
    pub sha256: String,
    pub encrypted: bool,
    pub compression: String,
    pub duration_ms: u64,
    /// Rows per table, from the snapshot that was dumped.
    pub tables: BTreeMap<String, i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    /// When a restore drill last restored this backup and found every row.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub restore_verified_at: Option<OffsetDateTime>,
}

/// The backup directory and how to read and write what is in it.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    pub cfg: BackupConfig,
}

impl Store {
    #[must_use]
    pub fn new(dir: &Path, cfg: &BackupConfig) -> Self {
        Self {
            dir: dir.to_path_buf(),
            cfg: cfg.clone(),
        }
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{MANIFEST_SUFFIX}"))
    }

    /// Every good backup, newest first.
    pub fn list(&self) -> Result<Vec<Manifest>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    action: "read",
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut manifests = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match serde_json::from_str::<Manifest>(&text) {
                Ok(manifest) if self.dir.join(&manifest.file).exists() => manifests.push(manifest),
                Ok(manifest) => warn!(
                    backup = manifest.name,
                    "backup manifest without its data file; ignoring it"
                ),
                Err(err) => {
                    warn!(path = %path.display(), %err, "unreadable backup manifest; ignoring it");
                }
            }
        }
        manifests.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| b.name.cmp(&a.name))
        });
        Ok(manifests)
    }

    pub fn get(&self, name: &str) -> Result<Manifest, Error> {
        check_name(name)?;
        self.list()?
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    fn write_manifest(&self, manifest: &Manifest) -> Result<(), Error> {
        let path = self.manifest_path(&manifest.name);
        let text = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
        fsutil::write_atomic(&path, &text, 0o600).map_err(|source| Error::Io {
            action: "write",
            path,
            source,
        })
    }

    /// Records a successful restore drill in the backup's manifest.
    pub fn mark_restorable(&self, name: &str, at: OffsetDateTime) -> Result<Manifest, Error> {
        let mut manifest = self.get(name)?;
        manifest.restore_verified_at = Some(at);
        self.write_manifest(&manifest)?;
        Ok(manifest)
    }

    /// Deletes what failed or interrupted backups left: `*.partial` files and
    /// data files with no manifest. Call only while no backup runs.
    pub fn cleanup(&self) -> Result<Vec<String>, Error> {
        let good: Vec<String> = self.list()?.into_iter().map(|m| m.file).collect();
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(removed);
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = name.ends_with(PARTIAL_SUFFIX)
                || ((name.ends_with(DATA_SUFFIX) || name.ends_with(ENCRYPTED_SUFFIX))
                    && !good.contains(&name));
            if leftover {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|source| Error::Io {
                    action: "remove",
                    path,
                    source,
                })?;
                warn!(file = name, "removed a failed or interrupted backup");
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Applies retention; returns the names deleted.
    pub fn prune(&self, now: OffsetDateTime) -> Result<Vec<String>, Error> {
        let manifests = self.list()?;
        let doomed = select_for_deletion(&manifests, self.cfg.keep_last, self.cfg.keep_days, now);
        for name in &doomed {
            let manifest = manifests
                .iter()
                .find(|m| &m.name == name)
                .expect("selected from the list");
            // Manifest first: a crash in between leaves an orphan data file
            // (cleaned up later), never a manifest pointing at nothing.
            let path = self.manifest_path(name);
            std::fs::remove_file(&path).map_err(|source| Error::Io {
                action: "remove",
                path,
                source,
            })?;
            let path = self.dir.join(&manifest.file);
            std::fs::remove_file(&path).map_err(|source| Error::Io {
                action: "remove",
                path,
                source,
            })?;
            info!(backup = name, "deleted by retention");
        }
        Ok(doomed)
    }
}

/// Which backups retention deletes: those older than `keep_days`, except the
/// newest `keep_last`, and never the newest one. `manifests` newest first.
#[must_use]
pub fn select_for_deletion(
    manifests: &[Manifest],
    keep_last: u32,
    keep_days: u32,
    now: OffsetDateTime,
) -> Vec<String> {
    let cutoff = now - time::Duration::days(i64::from(keep_days));
    let keep_last = usize::try_from(keep_last).unwrap_or(usize::MAX).max(1);
    manifests
        .iter()
        .skip(keep_last)
        .filter(|m| m.created_at < cutoff)
        .map(|m| m.name.clone())
        .collect()
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_string()))
    }
}

/// A backup's name: `pagodirecto-YYYYMMDD-HHMMSS[-label]` in UTC.
pub fn backup_name(at: OffsetDateTime, label: Option<&str>) -> Result<String, Error> {
    let stamp = format!(
        "pagodirecto-{:04}{:02}{:02}-{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    let name = match label {
        Some(label) => {
            check_name(label)?;
            format!("{stamp}-{label}")
        }
        None => stamp,
    };
    check_name(&name)?;
    Ok(name)
}

/// What a backup is taken from and restored into.
pub struct Target<'a> {
    pub access: &'a Access,
    pub database: &'a str,
    /// Free space the backup must leave in the backup directory.
    pub disk_reserve: u64,
    /// Memory a restore's sessions may use together for index builds
    /// (`maintenance_work_mem`, split among the jobs); `None`: the server's own.
    pub restore_memory: Option<u64>,
}

/// Refuses a backup of `client`'s database that could leave less than the
/// disk reserve free in the store (the database's size is the bound used).
pub async fn check_room(
    client: &tokio_postgres::Client,
    target: &Target<'_>,
    store: &Store,
) -> Result<(), Error> {
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(db("measuring the database"))?
        .get(0);
    let needed = u64::try_from(size).unwrap_or(0);
    fsutil::ensure_dir(&store.dir, 0o700).map_err(|source| Error::Io {
        action: "create",
        path: store.dir.clone(),
        source,
    })?;
    let free = fsutil::available_bytes(&store.dir).map_err(|source| Error::Io {
        action: "stat",
        path: store.dir.clone(),
        source,
    })?;
    if free < needed.saturating_add(target.disk_reserve) {
        return Err(Error::NoSpace {
            dir: store.dir.clone(),
            needed: bytesize::ByteSize(needed),
            free: bytesize::ByteSize(free),
            reserve: bytesize::ByteSize(target.disk_reserve),
        });
    }
    Ok(())
}

/// Set to stop a running backup (daemon shutdown); it then leaves nothing.
pub type AbortFlag = Arc<AtomicBool>;

/// Takes a backup: snapshot, dump, compress, encrypt, fsync, rename, verify,
/// manifest. Only one runs at a time per [`Store`] (the caller holds the lock).
#[allow(clippy::too_many_lines)] // one linear procedure; its steps read top to bottom
pub async fn create(
    target: &Target<'_>,
    store: &Store,
    label: Option<&str>,
    abort: &AbortFlag,
    progress: pipeline::Progress,
) -> Result<Manifest, Error> {
    let started = Instant::now();
    let created_at = OffsetDateTime::now_utc();
    let name = backup_name(created_at, label)?;
    fsutil::ensure_dir(&store.dir, 0o700).map_err(|source| Error::Io {
        action: "create",
        path: store.dir.clone(),
        source,
    })?;
    store.cleanup()?;

    let (mut client, conn) = target
        .access
        .connect(target.database)
        .await
        .map_err(db("connecting to the database to back up"))?;
    check_room(&client, target, store).await?;

    // One snapshot for the dump and the row counts, so they agree exactly.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db("starting the snapshot transaction"))?;
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(db("exporting a snapshot"))?
        .get(0);
    let tables = row_counts(&tx).await?;
    let postgres_version: String = tx
        .query_one("SHOW server_version", &[])
        .await
        .map_err(db("reading the server version"))?
        .get(0);
    let schema_version = schema_version(&tx).await?;

    let encrypted = !store.cfg.recipients.is_empty();
    let file = format!(
        "{name}{DATA_SUFFIX}{}",
        if encrypted { ENCRYPTED_SUFFIX } else { "" }
    );
    let final_path = store.dir.join(&file);
    let partial = store.dir.join(format!("{file}{PARTIAL_SUFFIX}"));
    let mut dump = target.access.client_command_std("pg_dump", target.database);
    dump.args([
        "--format=custom",
        "--compress=0",
        "--no-password",
        "--snapshot",
    ])
    .arg(&snapshot);
    let recipients = store.cfg.recipients.clone();
    let level = store.cfg.compression_level;
    let abort_flag = abort.clone();
    let partial_for_task = partial.clone();
    let written = tokio::task::spawn_blocking(move || {
        pipeline::dump_to_file(
            dump,
            &partial_for_task,
            &recipients,
            level,
            &abort_flag,
            &progress,
        )
    })
    .await
    .map_err(|e| Error::Io {
        action: "write",
        path: partial.clone(),
        source: std::io::Error::other(e),
    })?;
    // The snapshot must stay open until pg_dump has attached to it and
    // finished; only now can the transaction end.
    let _ = tx.commit().await;
    drop(client);
    let _ = conn.await;
    let written = match written {
        Ok(written) => written,
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            return Err(err);
        }
    };
    std::fs::rename(&partial, &final_path).map_err(|source| Error::Io {
        action: "rename",
        path: partial.clone(),
        source,
    })?;
    if let Ok(dir) = std::fs::File::open(&store.dir) {
        let _ = dir.sync_all();
    }

    let mut manifest = Manifest {
        name: name.clone(),
        file,
        created_at,
        app_version: crate::update::VERSION.to_string(),
        postgres_version,
        schema_version,
        database: target.database.to_string(),
        size: written.size,
        sha256: written.sha256,
        encrypted,
        compression: format!("zstd-{level}"),
        duration_ms: 0,
        tables,
        verified_at: OffsetDateTime::now_utc(),
        restore_verified_at: None,
    };
    if let Err(err) = verify_file(target.access, store, &manifest, pipeline::Progress::none()).await
    {
        let _ = std::fs::remove_file(&final_path);
        return Err(err);
    }
    manifest.verified_at = OffsetDateTime::now_utc();
    manifest.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    store.write_manifest(&manifest)?;
    info!(
        backup = name,
        size = manifest.size,
        ms = manifest.duration_ms,
        encrypted,
        "backup written and verified"
    );
    Ok(manifest)
}

async fn row_counts(tx: &tokio_postgres::Transaction<'_>) -> Result<BTreeMap<String, i64>, Error> {
    let tables = tx
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(db("listing tables"))?;
    let mut counts = BTreeMap::new();
    for row in tables {
        let (schema, table): (String, String) = (row.get(0), row.get(1));
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let count: i64 = tx
            .query_one(&sql, &[])
            .await
            .map_err(db("counting rows"))?
            .get(0);
        counts.insert(format!("{schema}.{table}"), count);
    }
    Ok(counts)
}

async fn schema_version(client: &impl tokio_postgres::GenericClient) -> Result<i64, Error> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db("looking for the migration history"))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM refinery_schema_history",
            &[],
        )
        .await
        .map_err(db("reading the schema version"))?
        .get(0))
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Checks a backup without restoring it: size, SHA-256 over the whole file,
/// and `pg_restore --list` over the decrypted, decompressed stream.
pub async fn verify(
    access: &Access,
    store: &Store,
    name: &str,
    progress: pipeline::Progress,
) -> Result<Manifest, Error> {
    let manifest = store.get(name)?;
    verify_file(access, store, &manifest, progress).await?;
    Ok(manifest)
}

async fn verify_file(
    access: &Access,
    store: &Store,
    manifest: &Manifest,
    progress: pipeline::Progress,
) -> Result<(), Error> {
    let path = store.dir.join(&manifest.file);
    let identity = identity_for(store, manifest)?;
    let mut list = access.client_command_std("pg_restore", "postgres");
    list.arg("--list");
    let name = manifest.name.clone();
    let result = tokio::task::spawn_blocking(move || {
        pipeline::feed_tool(&path, identity.as_deref(), list, &progress)
    })
    .await
    .map_err(|e| Error::Io {
        action: "verify",
        path: store.dir.clone(),
        source: std::io::Error::other(e),
    })?;
    let checked = result.map_err(|err| err.for_backup(&name))?;
    check_read(manifest, &checked)
}

fn identity_for(store: &Store, manifest: &Manifest) -> Result<Option<PathBuf>, Error> {
    if !manifest.encrypted {
        return Ok(None);
    }
    store
        .cfg
        .identity_file
        .clone()
        .map(Some)
        .ok_or_else(|| Error::NoIdentity {
            name: manifest.name.clone(),
        })
}

/// Where [`prepare_restore`] puts the decompressed copy of a backup, inside
/// the backup directory (not a backup: [`Store::list`] and [`Store::cleanup`]
/// ignore it; the next restore or drill clears what a crash left there).
pub const RESTORE_DIR: &str = ".restore";

/// How much larger than the backup file its decompressed dump is assumed to
/// be when deciding whether a decompressed copy fits (zstd reaches about
/// 3.5:1 on realistic CRM data; the copy stops at the reserve anyway).
const EXPANSION: u64 = 5;

/// A backup checked and made ready to restore: its checksum matched, it
/// decrypted, `pg_restore --list` read it; and, when the disk had room, its
/// decompressed dump is in a temporary file, which `pg_restore -j` reads in
/// parallel. The file is removed when this is dropped.
pub struct Prepared {
    pub manifest: Manifest,
    /// The backup file and the identity to decrypt it (for the streamed restore).
    path: PathBuf,
    identity: Option<PathBuf>,
    copy: Option<TempFile>,
}

impl Prepared {
    /// Whether the restore will run in parallel from a decompressed copy.
    #[must_use]
    pub fn parallel(&self) -> bool {
        self.copy.is_some()
    }
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.0)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.0.display(), %err, "could not remove the decompressed copy of a backup");
        }
    }
}

fn check_read(manifest: &Manifest, checked: &pipeline::Checked) -> Result<(), Error> {
    if checked.size != manifest.size || checked.sha256 != manifest.sha256 {
        return Err(Error::Corrupt {
            name: manifest.name.clone(),
            reason: format!(
                "the file is {} bytes with SHA-256 {}, the manifest says {} bytes with {}",
                checked.size, checked.sha256, manifest.size, manifest.sha256
            ),
        });
    }
    if !checked.output.contains("TABLE DATA") && !manifest.tables.is_empty() {
        return Err(Error::Corrupt {
            name: manifest.name.clone(),
            reason: "pg_restore --list shows no table data".into(),
        });
    }
    Ok(())
}

/// Checks backup `name` for a restore (schema not newer than this binary,
/// checksum, decryption, `pg_restore --list`) without touching any
/// database, decompressing it to a temporary file in the backup directory
/// when that leaves the disk reserve free (else the restore streams it).
pub async fn prepare_restore(
    target: &Target<'_>,
    store: &Store,
    name: &str,
    progress: pipeline::Progress,
) -> Result<Prepared, Error> {
    let manifest = store.get(name)?;
    let binary = crate::migrate::latest_known();
    if manifest.schema_version > binary {
        return Err(Error::NewerSchema {
            name: name.to_string(),
            backup: manifest.schema_version,
            binary,
        });
    }
    let identity = identity_for(store, &manifest)?;
    let path = store.dir.join(&manifest.file);
    let dir = store.dir.join(RESTORE_DIR);
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    // Only one restore or drill runs at a time: anything here is a leftover.
    match std::fs::remove_dir_all(&dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err("clear", &dir)(err));
        }
        _ => {}
    }
    let free = fsutil::available_bytes(&store.dir).map_err(io_err("stat", &store.dir))?;
    let fits = free
        >= target
            .disk_reserve
            .saturating_add(manifest.size.saturating_mul(EXPANSION));
    if fits {
        fsutil::ensure_dir(&dir, 0o700).map_err(io_err("create", &dir))?;
        let out = dir.join(format!("{name}.pgdump"));
        let list = target.access.client_command_std("pg_restore", "postgres");
        let (from, key, to, reserve) = (
            path.clone(),
            identity.clone(),
            out.clone(),
            target.disk_reserve,
        );
        let result = tokio::task::spawn_blocking(move || {
            let mut list = list;
            list.arg("--list");
            pipeline::decompress_to_file(&from, key.as_deref(), &to, reserve, list, &progress)
        })
        .await
        .map_err(|e| io_err("decompress", &path)(std::io::Error::other(e)))?;
        match result {
            Ok(checked) => {
                let copy = TempFile(out);
                check_read(&manifest, &checked)?;
                add_data_offsets(name, &copy.0).await;
                return Ok(Prepared {
                    manifest,
                    path,
                    identity,
                    copy: Some(copy),
                });
            }
            Err(pipeline::ReadError::NoSpace { written, free }) => warn!(
                backup = name,
                written,
                free,
                "the decompressed copy would cross the disk reserve; restoring from the compressed stream instead (one session)"
            ),
            Err(err) => return Err(err.for_backup(name)),
        }
        let _ = std::fs::remove_dir_all(&dir);
        verify_file(target.access, store, &manifest, pipeline::Progress::none()).await?;
    } else {
        warn!(
            backup = name,
            free,
            "too little free space for a decompressed copy; restoring from the compressed stream (one session)"
        );
        verify_file(target.access, store, &manifest, progress).await?;
    }
    Ok(Prepared {
        manifest,
        path,
        identity,
        copy: None,
    })
}

/// Writes the data blocks' positions into the decompressed copy's table
/// of contents, so that `pg_restore -j` starts the largest tables first
/// ([`archive`]). Without them the restore still works, in dump order.
async fn add_data_offsets(name: &str, copy: &Path) {
    let started = Instant::now();
    let path = copy.to_path_buf();
    match tokio::task::spawn_blocking(move || archive::add_data_offsets(&path)).await {
        Ok(Ok(offsets)) => info!(
            backup = name,
            added = offsets.added,
            present = offsets.present,
            ms = started.elapsed().as_millis(),
            "data offsets in the table of contents"
        ),
        Ok(Err(err)) => warn!(
            backup = name,
            %err,
            "could not add data offsets to the decompressed copy; pg_restore -j starts the tables in dump order"
        ),
        Err(err) => warn!(backup = name, %err, "adding data offsets failed"),
    }
}

/// How many `pg_restore` jobs a parallel restore runs: one per core.
fn restore_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// `PGOPTIONS` for the restore's sessions: index builds (the GIN trigram
/// indexes dominate) get a share of the memory budget, split among the jobs;
/// commits need not wait for the WAL flush (a crash mid-restore loses the
/// fresh database, which is dropped and redone anyway).
fn restore_options(restore_memory: Option<u64>, jobs: usize) -> String {
    let mut options = String::from("-c synchronous_commit=off");
    if let Some(memory) = restore_memory {
        let jobs = u64::try_from(jobs.max(1)).unwrap_or(1);
        let mb = (memory / jobs / (1024 * 1024)).clamp(16, 1024);
        let _ = write!(options, " -c maintenance_work_mem={mb}MB");
    }
    options
}

/// Restores a prepared backup into a new database `into` (which must not
/// exist): with `pg_restore -j` from the decompressed copy, or streamed
/// into `pg_restore --single-transaction`. On failure `into` is dropped;
/// either way it is not the live database until the caller swaps it in.
pub async fn load(
    target: &Target<'_>,
    prepared: &Prepared,
    into: &str,
    progress: pipeline::Progress,
) -> Result<(), Error> {
    let name = prepared.manifest.name.clone();
    let (client, conn) = target
        .access
        .connect("postgres")
        .await
        .map_err(db("connecting to postgres"))?;
    client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(into)))
        .await
        .map_err(db("creating the database to restore into"))?;
    let jobs = if prepared.copy.is_some() {
        restore_jobs()
    } else {
        1
    };
    let mut restore = target.access.client_command_std("pg_restore", into);
    restore
        .env("PGOPTIONS", restore_options(target.restore_memory, jobs))
        .args(["--dbname", into, "--exit-on-error", "--no-password"]);
    let result = if let Some(copy) = &prepared.copy {
        restore.arg(format!("--jobs={jobs}")).arg(&copy.0);
        let started = Instant::now();
        let output = tokio::process::Command::from(restore)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::select! {
            output = output => output,
            () = report_copy_progress(target.access, into, copy_size(copy), &progress) => {
                unreachable!("reports until the restore ends")
            }
        };
        match output {
            Ok(out) if out.status.success() => {
                info!(
                    backup = name,
                    jobs,
                    ms = started.elapsed().as_millis(),
                    "pg_restore -j done"
                );
                Ok(())
            }
            Ok(out) => Err(Error::Tool {
                program: "pg_restore",
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }),
            Err(source) => Err(Error::Io {
                action: "run pg_restore for",
                path: copy.0.clone(),
                source,
            }),
        }
    } else {
        restore.arg("--single-transaction");
        let (path, identity) = (prepared.path.clone(), prepared.identity.clone());
        let fed = tokio::task::spawn_blocking(move || {
            pipeline::feed_tool(&path, identity.as_deref(), restore, &progress)
        })
        .await;
        match fed {
            Ok(Ok(checked)) if checked.sha256 != prepared.manifest.sha256 => Err(Error::Corrupt {
                name: name.clone(),
                reason: "the file changed since it was verified".into(),
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.for_backup(&name)),
            Err(e) => Err(Error::Io {
                action: "restore",
                path: prepared.path.clone(),
                source: std::io::Error::other(e),
            }),
        }
    };
    if result.is_err() {
        let _ = client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(into)
            ))
            .await;
    }
    drop(client);
    let _ = conn.await;
    result
}

fn copy_size(copy: &TempFile) -> u64 {
    std::fs::metadata(&copy.0).map_or(0, |m| m.len())
}

/// While `pg_restore -j` loads database `into`, reports to `progress`
/// `base` (what the steps before counted: the decompressed copy) plus the
/// bytes its `COPY`s have read so far (`pg_stat_progress_copy`, polled
/// twice a second; a table's count is kept once its `COPY` ends), so the
/// count keeps rising through the restore proper. Never returns: the
/// caller drops it when the restore ends; without a connection it reports
/// nothing more.
async fn report_copy_progress(
    access: &Access,
    into: &str,
    base: u64,
    progress: &pipeline::Progress,
) {
    if progress.is_wanted()
        && let Ok((client, conn)) = access.connect("postgres").await
    {
        let _conn = tokio::spawn(conn);
        let mut copied: BTreeMap<i64, i64> = BTreeMap::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            let Ok(rows) = client
                .query(
                    "SELECT relid::int8, bytes_processed FROM pg_stat_progress_copy WHERE datname = $1",
                    &[&into],
                )
                .await
            else {
                break;
            };
            for row in rows {
                let (relid, bytes): (i64, i64) = (row.get(0), row.get(1));
                let seen = copied.entry(relid).or_default();
                *seen = (*seen).max(bytes);
            }
            let restored: u64 = copied
                .values()
                .map(|&b| u64::try_from(b).unwrap_or(0))
                .sum();
            progress.report(base + restored);
        }
    }
    std::future::pending::<()>().await;
}

/// Restores backup `name` into a new database `into` (which must not
/// exist): it either holds the whole backup or is dropped.
pub async fn restore_into(
    target: &Target<'_>,
    store: &Store,
    name: &str,
    into: &str,
    progress: pipeline::Progress,
) -> Result<Manifest, Error> {
    let prepared = prepare_restore(target, store, name, progress.clone()).await?;
    load(target, &prepared, into, progress).await?;
    Ok(prepared.manifest)
}

/// Row counts of every table in database `dbname`, for comparison with a manifest.
pub async fn count_rows(access: &Access, dbname: &str) -> Result<BTreeMap<String, i64>, Error> {
    let (mut client, conn) = access
        .connect(dbname)
        .await
        .map_err(db("connecting to the restored database"))?;
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a transaction"))?;
    let counts = row_counts(&tx).await?;
    drop(tx);
    drop(client);
    let _ = conn.await;
    Ok(counts)
}

/// Describes how two sets of row counts differ ("" when equal).
#[must_use]
pub fn differences(expected: &BTreeMap<String, i64>, actual: &BTreeMap<String, i64>) -> String {
    let mut out = Vec::new();
    for (table, want) in expected {
        match actual.get(table) {
            Some(got) if got == want => {}
            Some(got) => out.push(format!("{table}: {got} rows, expected {want}")),
            None => out.push(format!("{table}: missing")),
        }
    }
    for table in actual.keys().filter(|t| !expected.contains_key(*t)) {
        out.push(format!("{table}: unexpected"));
    }
    out.join("; ")
}

/// The restore drill: restores the newest good backup into a scratch
/// database, checks every table's row count against the manifest, drops the
/// scratch database, and records the result in the manifest.
pub async fn drill(target: &Target<'_>, store: &Store) -> Result<Manifest, Error> {
    let newest = store
        .list()?
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotFound("(none yet)".into()))?;
    let scratch = format!("{}_drill", target.database);
    drop_database(target.access, &scratch).await?;
    let result = async {
        restore_into(
            target,
            store,
            &newest.name,
            &scratch,
            pipeline::Progress::none(),
        )
        .await?;
        let actual = count_rows(target.access, &scratch).await?;
        let differences = differences(&newest.tables, &actual);
        if differences.is_empty() {
            Ok(())
        } else {
            Err(Error::DrillMismatch {
                name: newest.name.clone(),
                differences,
            })
        }
    }
    .await;
    drop_database(target.access, &scratch).await?;
    result?;
    let manifest = store.mark_restorable(&newest.name, OffsetDateTime::now_utc())?;
    info!(
        backup = manifest.name,
        "restore drill passed: every table's rows are back"
    );
    Ok(manifest)
}

pub async fn drop_database(access: &Access, name: &str) -> Result<(), Error> {
    let (client, conn) = access
        .connect("postgres")
        .await
        .map_err(db("connecting to postgres"))?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
        .map_err(db("dropping a scratch database"))?;
    drop(client);
    let _ = conn.await;
    Ok(())
}

/// Swaps database `restored` in for `live`: the old one is kept as `old`
/// until the caller drops it, so a failure afterwards can swap back.
///
/// Both renames are one transaction (`ALTER DATABASE … RENAME` may run in
/// one): a crash or a failure leaves either both done or neither, never a
/// moment without a database named `live` (at the next start the daemon
/// would create an empty one in its place).
pub async fn swap_databases(
    access: &Access,
    live: &str,
    restored: &str,
    old: &str,
) -> Result<(), Error> {
    let (mut client, conn) = access
        .connect("postgres")
        .await
        .map_err(db("connecting to postgres"))?;
    let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()";
    client
        .execute(terminate, &[&live])
        .await
        .map_err(db("disconnecting clients"))?;
    let swapped = async {
        let tx = client
            .transaction()
            .await
            .map_err(db("starting the swap"))?;
        tx.batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(live),
            quote_ident(old)
        ))
        .await
        .map_err(db("moving the current database aside"))?;
        tx.batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(restored),
            quote_ident(live)
        ))
        .await
        .map_err(db("moving the restored database in"))?;
        tx.commit().await.map_err(db("committing the swap"))
    }
    .await;
    drop(client);
    let _ = conn.await;
    swapped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, days_ago: i64, now: OffsetDateTime) -> Manifest {
        Manifest {
            name: name.into(),
            file: format!("{name}{DATA_SUFFIX}"),
            created_at: now - time::Duration::days(days_ago),
            app_version: "0".into(),
            postgres_version: "15".into(),
            schema_version: 2,
            database: "pagodirecto".into(),
            size: 1,
            sha256: String::new(),
            encrypted: false,
            compression: "zstd-3".into(),
            duration_ms: 1,
            tables: BTreeMap::new(),
            verified_at: now,
            restore_verified_at: None,
        }
    }

    #[track_caller]
    fn check(ages: &[i64], keep_last: u32, keep_days: u32, deleted: &[&str]) {
        let now = OffsetDateTime::now_utc();
        let manifests: Vec<Manifest> = ages
            .iter()
            .enumerate()
            .map(|(i, d)| manifest(&format!("b{i}"), *d, now))
            .collect();
        assert_eq!(
            select_for_deletion(&manifests, keep_last, keep_days, now),
            deleted
        );
    }

    #[test]
    fn old_backups_go_beyond_the_newest_few() {
        check(&[0, 1, 2, 40, 41], 2, 30, &["b3", "b4"]);
    }
    #[test]
    fn the_newest_few_stay_whatever_their_age() {
        check(&[50, 60, 70], 2, 30, &["b2"]);
    }
    #[test]
    fn the_newest_backup_is_never_deleted_even_with_keep_last_zero() {
        check(&[90, 91], 0, 30, &["b1"]);
    }
    #[test]
    fn young_backups_stay() {
        check(&[0, 1, 2, 3], 1, 30, &[]);
    }

    #[test]
    fn names_are_sortable_and_labels_are_checked() {
        let at = OffsetDateTime::from_unix_timestamp(1_764_000_000).expect("ts");
        assert_eq!(
            backup_name(at, None).expect("name"),
            "pagodirecto-20251124-160000"
        );
        assert_eq!(
            backup_name(at, Some("pre-restore")).expect("name"),
            "pagodirecto-20251124-160000-pre-restore"
        );
        assert!(backup_name(at, Some("../etc")).is_err());
        assert!(backup_name(at, Some("a b")).is_err());
    }

    #[test]
    fn row_count_differences_are_named() {
        let a = BTreeMap::from([("x.a".to_string(), 1), ("x.b".to_string(), 2)]);
        let b = BTreeMap::from([
            ("x.a".to_string(), 1),
            ("x.b".to_string(), 3),
            ("x.c".to_string(), 0),
        ]);
        assert_eq!(differences(&a, &a), "");
        assert_eq!(
            differences(&a, &b),
            "x.b: 3 rows, expected 2; x.c: unexpected"
        );
    }
}
