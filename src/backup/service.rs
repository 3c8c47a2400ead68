//! The backup operations as one handle: one backup (or restore, or drill)
//! at a time, last results remembered for `status`, and restore with a
//! safety backup, maintenance mode and a way back.
//!
//! Used by `daemon` (schedule, control socket, API) and by the CLI when no
//! daemon runs (then without maintenance mode: nothing is serving).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tracing::{error, info, warn};

use super::{AbortFlag, Error, Manifest, Store, Target, pipeline};
use crate::database::Access;
use crate::health::Health;

/// The outcome of the last scheduled or requested runs, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub last_success: Option<Manifest>,
    pub last_failure: Option<(OffsetDateTime, String)>,
    /// The newest backup a restore drill has proven restorable.
    pub last_restorable: Option<(OffsetDateTime, String)>,
    pub last_drill_failure: Option<(OffsetDateTime, String)>,
    pub running: Option<(OffsetDateTime, &'static str)>,
}

pub struct Backups {
    access: Access,
    database: String,
    /// Replaced by a config reload (schedule, retention, recipients).
    store: std::sync::RwLock<Store>,
    disk_reserve: u64,
    /// The embedded server's memory budget (`[limits] postgres_memory`).
    postgres_memory: u64,
    /// Serialises backups, drills and restores: they all use the cluster heavily
    /// and a restore must not race a backup of the database it replaces.
    lock: Arc<tokio::sync::Mutex<()>>,
    abort: AbortFlag,
    history: Mutex<History>,
    /// Set when serving: restore puts the API in maintenance through it.
    health: Option<Arc<Health>>,
}

impl Backups {
    #[must_use]
    pub fn new(
        access: Access,
        database: &str,
        store: Store,
        disk_reserve: u64,
        postgres_memory: u64,
        health: Option<Arc<Health>>,
    ) -> Self {
        let mut history = History::default();
        if let Ok(list) = store.list() {
            history.last_success = list.first().cloned();
            history.last_restorable = list
                .iter()
                .find_map(|m| m.restore_verified_at.map(|at| (at, m.name.clone())));
        }
        Self {
            access,
            database: database.to_string(),
            store: std::sync::RwLock::new(store),
            disk_reserve,
            postgres_memory,
            lock: Arc::new(tokio::sync::Mutex::new(())),
            abort: Arc::new(AtomicBool::new(false)),
            history: Mutex::new(history),
            health,
        }
    }

    #[must_use]
    pub fn store(&self) -> Store {
        self.store
            .read()
            .expect("store lock is never poisoned")
            .clone()
    }

    /// Applies a reloaded `[backup]` section (the directory needs a restart).
    pub fn set_config(&self, cfg: &crate::config::BackupConfig) {
        self.store
            .write()
            .expect("store lock is never poisoned")
            .cfg = cfg.clone();
    }

    #[must_use]
    pub fn history(&self) -> History {
        self.history
            .lock()
            .expect("history lock is never poisoned")
            .clone()
    }

    /// Stops a running backup at the next chunk and waits (bounded) until
    /// nothing runs, so postgres can stop under no one's feet.
    pub async fn abort_and_wait(&self, within: std::time::Duration) {
        self.abort.store(true, std::sync::atomic::Ordering::Relaxed);
        if tokio::time::timeout(within, self.lock.lock())
            .await
            .is_err()
        {
            warn!(
                ?within,
                "a backup operation is still running; stopping anyway"
            );
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            access: &self.access,
            database: &self.database,
            disk_reserve: self.disk_reserve,
            // A restore runs while nothing else uses the server (maintenance
            // mode, or no daemon): half the budget goes to its index builds.
            // An external server's memory is not ours to plan.
            restore_memory: self
                .access
                .external()
                .is_none()
                .then_some(self.postgres_memory / 2),
        }
    }

    fn begin(&self, what: &'static str) -> Result<tokio::sync::MutexGuard<'_, ()>, Error> {
        let guard = self.lock.try_lock().map_err(|_| Error::Busy)?;
        self.history.lock().expect("history lock").running =
            Some((OffsetDateTime::now_utc(), what));
        Ok(guard)
    }

    fn end(&self) {
        self.history.lock().expect("history lock").running = None;
    }

    /// Starts a backup in the background, or says at once that one runs.
    pub fn start(self: &Arc<Self>, label: Option<String>) -> Result<(), Error> {
        let guard = self
            .lock
            .clone()
            .try_lock_owned()
            .map_err(|_| Error::Busy)?;
        self.history.lock().expect("history lock").running =
            Some((OffsetDateTime::now_utc(), "backup"));
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this
                .create_locked(label.as_deref(), pipeline::Progress::none())
                .await;
            this.end();
            drop(guard);
        });
        Ok(())
    }

    /// Takes a backup now, then applies retention.
    pub async fn create(
        &self,
        label: Option<&str>,
        progress: pipeline::Progress,
    ) -> Result<Manifest, Error> {
        let _guard = self.begin("backup")?;
        let result = self.create_locked(label, progress).await;
        self.end();
        result
    }

    async fn create_locked(
        &self,
        label: Option<&str>,
        progress: pipeline::Progress,
    ) -> Result<Manifest, Error> {
        let result =
            super::create(&self.target(), &self.store(), label, &self.abort, progress).await;
        {
            let mut history = self.history.lock().expect("history lock");
            match &result {
                Ok(manifest) => history.last_success = Some(manifest.clone()),
                Err(err) => {
                    error!(error = %err, "backup failed");
                    history.last_failure = Some((OffsetDateTime::now_utc(), err.to_string()));
                }
            }
        }
        if let Ok(manifest) = &result {
            if let Err(err) = self.store().prune(OffsetDateTime::now_utc()) {
                warn!(error = %err, "retention failed");
            }
            // What a new leader reads to know whether a scheduled run was
            // missed; a failure here costs at most one extra backup.
            if let Err(err) = crate::database::jobs::record_success(
                &self.access,
                &self.database,
                crate::database::jobs::BACKUP,
                manifest.created_at,
                &manifest.name,
            )
            .await
            {
                warn!(error = ?err, "could not record the backup in ops.job_runs");
            }
        }
        result
    }

    pub async fn verify(
        &self,
        name: Option<&str>,
        progress: pipeline::Progress,
    ) -> Result<Manifest, Error> {
        let name = match name {
            Some(name) => name.to_string(),
            None => {
                self.store()
                    .list()?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Error::NotFound("(none yet)".into()))?
                    .name
            }
        };
        super::verify(&self.access, &self.store(), &name, progress).await
    }

    pub fn prune(&self) -> Result<Vec<String>, Error> {
        let _guard = self.lock.try_lock().map_err(|_| Error::Busy)?;
        let mut removed = self.store().cleanup()?;
        removed.extend(self.store().prune(OffsetDateTime::now_utc())?);
        Ok(removed)
    }

    pub async fn drill(&self) -> Result<Manifest, Error> {
        let _guard = self.begin("restore drill")?;
        // A drill runs while the API serves: its index builds keep the
        // server's own maintenance_work_mem.
        let target = Target {
            restore_memory: None,
            ..self.target()
        };
        let result = super::drill(&target, &self.store()).await;
        {
            let mut history = self.history.lock().expect("history lock");
            match &result {
                Ok(manifest) => {
                    history.last_restorable = manifest
                        .restore_verified_at
                        .map(|at| (at, manifest.name.clone()));
                }
                Err(err) => {
                    error!(error = %err, "restore drill failed");
                    history.last_drill_failure = Some((OffsetDateTime::now_utc(), err.to_string()));
                }
            }
        }
        self.end();
        if let Ok(manifest) = &result {
            let at = manifest
                .restore_verified_at
                .unwrap_or_else(OffsetDateTime::now_utc);
            if let Err(err) = crate::database::jobs::record_success(
                &self.access,
                &self.database,
                crate::database::jobs::DRILL,
                at,
                &manifest.name,
            )
            .await
            {
                warn!(error = ?err, "could not record the drill in ops.job_runs");
            }
        }
        result
    }

    /// Restores backup `name` over the live database.
    ///
    /// Order: verify the backup (nothing touched if it is bad or too new)
    /// while decompressing it to a temporary file, and check there is room
    /// for the safety backup → maintenance mode → `pg_restore -j` (one job
    /// per core) into a fresh database → migrate it forward → swap it in,
    /// the current database kept aside unchanged → leave maintenance → the
    /// safety backup, taken from the database kept aside → drop that one.
    /// Without room for the decompressed copy the restore streams into one
    /// session instead.
    ///
    /// The data from before the restore is frozen first (maintenance: no
    /// write lands after it; the swap only renames) and never changed; it is
    /// written to the safety backup while the restored data is served, so
    /// the API waits for the restore only, not for a dump as well. A failure
    /// before the swap leaves the previous database in place; a failed
    /// safety backup keeps the database aside (reported, and backed up by
    /// [`Backups::recover`] at the next start).
    pub async fn restore(
        &self,
        name: &str,
        progress: pipeline::Progress,
    ) -> Result<RestoreReport, Error> {
        // Refused whatever runs: no need to wait for a backup to say so.
        if let Some(external) = self.access.external() {
            return Err(Error::ExternalRestore {
                server: external.display().to_string(),
            });
        }
        let _guard = self.begin("restore")?;
        let result = self.restore_locked(name, progress).await;
        if let Some(health) = &self.health {
            health.set_maintenance(None);
        }
        self.end();
        result
    }

    async fn restore_locked(
        &self,
        name: &str,
        progress: pipeline::Progress,
    ) -> Result<RestoreReport, Error> {
        let started = std::time::Instant::now();
        let target = self.target();
        let store = self.store();
        // Checks the backup (nothing is touched if it is bad or too new) and
        // decompresses it for a parallel restore, before maintenance.
        let prepared = super::prepare_restore(&target, &store, name, progress.clone()).await?;
        // The safety backup is written after the swap: find out now whether
        // it fits, while nothing has changed.
        {
            let (client, conn) = self
                .access
                .connect(&self.database)
                .await
                .map_err(|source| Error::Database {
                    step: "connecting to the current database",
                    source,
                })?;
            let room = super::check_room(&client, &target, &store).await;
            drop(client);
            let _ = conn.await;
            room?;
        }
        if let Some(health) = &self.health {
            health.set_maintenance(Some(format!("restoring backup {name}")));
        }
        let stamp = OffsetDateTime::now_utc().unix_timestamp();
        let incoming = format!("{}{RESTORING_INFIX}{stamp}", self.database);
        let old = format!("{}{REPLACED_INFIX}{stamp}", self.database);
        let restored = super::load(&target, &prepared, &incoming, progress).await;
        let parallel = prepared.parallel();
        let manifest = prepared.manifest.clone();
        drop(prepared);
        if let Err(err) = restored {
            let _ = super::drop_database(&self.access, &incoming).await;
            return Err(err);
        }
        info!(backup = name, parallel, "restored into a fresh database");
        let migrated = self.migrate(&incoming).await;
        if let Err(err) = migrated {
            let _ = super::drop_database(&self.access, &incoming).await;
            return Err(err);
        }
        super::swap_databases(&self.access, &self.database, &incoming, &old)
            .await
            .inspect_err(|_| {
                warn!("the swap failed; the previous database is still in place");
            })?;
        // The pool's connections were to the database that was swapped out.
        if let Some(pool) = self.health.as_ref().and_then(|h| h.pool.as_ref()) {
            pool.retain(|_, _| false);
        }
        if let Some(health) = &self.health {
            health.set_maintenance(None);
        }
        let serving_after = started.elapsed();
        info!(
            backup = name,
            ?serving_after,
            kept = old,
            "serving the restored data; writing the safety backup of the data from before the restore"
        );
        let safety = self
            .safety_backup(&target, &store, &old)
            .await
            .map_err(|err| Error::SafetyBackup {
                name: name.to_string(),
                kept: old.clone(),
                reason: format!("{:#}", anyhow::Error::from(err)),
            })?;
        info!(backup = name, safety = safety.name, "restore complete");
        Ok(RestoreReport {
            restored: manifest,
            safety_backup: safety.name,
            serving_after_ms: u64::try_from(serving_after.as_millis()).unwrap_or(u64::MAX),
            total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Backs up database `kept` (the data from before a restore) as a
    /// `pre-restore` backup, then drops it.
    async fn safety_backup(
        &self,
        target: &Target<'_>,
        store: &Store,
        kept: &str,
    ) -> Result<Manifest, Error> {
        let from = Target {
            database: kept,
            ..*target
        };
        let safety = super::create(
            &from,
            store,
            Some("pre-restore"),
            &self.abort,
            pipeline::Progress::none(),
        )
        .await?;
        // Dropping a large database takes seconds; nobody waits for it.
        // Without a daemon the caller stops postgres next: wait for it then.
        let access = self.access.clone();
        let kept = kept.to_string();
        let drop_kept = async move {
            if let Err(err) = super::drop_database(&access, &kept).await {
                warn!(error = %err, database = kept, "could not drop the replaced database; drop it by hand");
            }
        };
        if self.health.is_some() {
            tokio::spawn(drop_kept);
        } else {
            drop_kept.await;
        }
        Ok(safety)
    }

    /// Finishes what a restore interrupted by a crash or a stop left: a
    /// database set aside by the swap is backed up (`pre-restore`) and
    /// dropped; a half-restored one is dropped (the live one was never
    /// replaced). Run once at start, before anything else takes a backup.
    pub async fn recover(&self) -> Result<(), Error> {
        if self.access.external().is_some() {
            return Ok(());
        }
        // Looked for without the lock: a start with nothing to finish must
        // not make an early `backup create` wait or fail.
        let left = self.left_by_restores().await?;
        if left.is_empty() {
            return Ok(());
        }
        let _guard = self.begin("restore recovery")?;
        let result = self.recover_locked(left).await;
        self.end();
        result
    }

    /// Databases named like the ones a restore makes (`…_restore_<time>`)
    /// or sets aside (`…_old_<time>`); the flag says set aside.
    async fn left_by_restores(&self) -> Result<Vec<(String, bool)>, Error> {
        let (client, conn) =
            self.access
                .connect("postgres")
                .await
                .map_err(|source| Error::Database {
                    step: "connecting to postgres",
                    source,
                })?;
        let rows = client
            .query(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
                &[&format!("{}_", self.database)],
            )
            .await
            .map_err(|source| Error::Database {
                step: "listing databases",
                source,
            });
        drop(client);
        let _ = conn.await;
        let mut left = Vec::new();
        for row in rows? {
            let name: String = row.get(0);
            let rest = name
                .strip_prefix(self.database.as_str())
                .unwrap_or_default();
            let stamped = |infix: &str| {
                rest.strip_prefix(infix)
                    .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            };
            if stamped(RESTORING_INFIX) {
                left.push((name, false));
            } else if stamped(REPLACED_INFIX) {
                left.push((name, true));
            }
        }
        Ok(left)
    }

    async fn recover_locked(&self, left: Vec<(String, bool)>) -> Result<(), Error> {
        let target = self.target();
        let store = self.store();
        for (name, set_aside) in left {
            if set_aside {
                warn!(
                    database = name,
                    "a restore was interrupted before its safety backup was written; writing it now"
                );
                let safety = self.safety_backup(&target, &store, &name).await?;
                info!(
                    database = name,
                    safety = safety.name,
                    "safety backup written"
                );
            } else {
                warn!(
                    database = name,
                    "dropping a half-restored database left by an interrupted restore"
                );
                super::drop_database(&self.access, &name).await?;
            }
        }
        Ok(())
    }

    async fn migrate(&self, database: &str) -> Result<(), Error> {
        let (mut client, conn) =
            self.access
                .connect(database)
                .await
                .map_err(|source| Error::Database {
                    step: "connecting to the restored database",
                    source,
                })?;
        let result = crate::migrate::run(&mut client).await;
        drop(client);
        let _ = conn.await;
        result
            .map(|applied| info!(applied, "migrated the restored database forward"))
            .map_err(|err| Error::Corrupt {
                name: database.to_string(),
                reason: format!("migrating it forward failed: {err}"),
            })
    }
}

/// What `restore` did; sent to the CLI as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub restored: Manifest,
    /// The backup of the data from before the restore.
    pub safety_backup: String,
    /// From the request to the API serving the restored data.
    pub serving_after_ms: u64,
    /// Until the safety backup was written as well.
    pub total_ms: u64,
}

/// `<database><infix><unix time>`: the database a restore fills, and the one
/// the swap sets aside (kept until the safety backup of it is written).
const RESTORING_INFIX: &str = "_restore_";
const REPLACED_INFIX: &str = "_old_";
