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
        drop(history);
        self.end();
        result
    }

    /// Restores backup `name` over the live database.
    ///
    /// Order: verify the backup (nothing touched if it is bad or too new)
    /// while decompressing it to a temporary file → maintenance mode → at the
    /// same time, a safety backup of the current data and `pg_restore -j`
    /// (one job per core) into a fresh database → migrate it forward → swap
    /// it in → leave maintenance → drop the replaced one. Without room for
    /// the decompressed copy the restore streams into one session instead.
    /// A failure at any step (the safety backup's included) leaves the
    /// previous database in place and leaves maintenance.
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
        let target = self.target();
        let store = self.store();
        // Checks the backup (nothing is touched if it is bad or too new) and
        // decompresses it for a parallel restore, before maintenance.
        let prepared = super::prepare_restore(&target, &store, name, progress).await?;
        // Maintenance first: no write can land between the safety backup's
        // snapshot and the swap (it would be in neither). The current
        // database stays untouched until the swap, so the safety backup of it
        // and the restore into a fresh database run side by side.
        if let Some(health) = &self.health {
            health.set_maintenance(Some(format!("restoring backup {name}")));
        }
        let stamp = OffsetDateTime::now_utc().unix_timestamp();
        let incoming = format!("{}_restore_{stamp}", self.database);
        let old = format!("{}_old_{stamp}", self.database);
        // The safety backup competes with the restore for the cores: zstd
        // level 1 costs about half the CPU of 3 for ~10 % more size.
        let mut safety_store = store.clone();
        safety_store.cfg.compression_level = safety_store.cfg.compression_level.min(1);
        let (safety, restored) = tokio::join!(
            super::create(
                &target,
                &safety_store,
                Some("pre-restore"),
                &self.abort,
                pipeline::Progress::none(),
            ),
            super::load(&target, &prepared, &incoming, pipeline::Progress::none()),
        );
        let parallel = prepared.parallel();
        let manifest = prepared.manifest.clone();
        drop(prepared);
        let safety = match (safety, restored) {
            (Ok(safety), Ok(())) => safety,
            (Err(err), _) | (Ok(_), Err(err)) => {
                let _ = super::drop_database(&self.access, &incoming).await;
                return Err(err);
            }
        };
        info!(
            backup = name,
            safety = safety.name,
            parallel,
            "restored into a fresh database; a safety backup of the current data was taken meanwhile"
        );
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
        // Dropping the replaced database takes seconds on a large one; the
        // API need not wait in maintenance for it. Without a daemon (no
        // health to keep), the caller stops postgres next: wait for it.
        let access = self.access.clone();
        let drop_old = async move {
            if let Err(err) = super::drop_database(&access, &old).await {
                warn!(error = %err, database = old, "could not drop the replaced database; drop it by hand");
            }
        };
        if self.health.is_some() {
            tokio::spawn(drop_old);
        } else {
            drop_old.await;
        }
        info!(backup = name, "restore complete");
        Ok(RestoreReport {
            restored: manifest,
            safety_backup: safety.name,
            migrated_from: 0,
        })
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

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub restored: Manifest,
    pub safety_backup: String,
    pub migrated_from: i64,
}
