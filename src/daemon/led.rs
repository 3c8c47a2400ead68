//! Jobs that run once across instances, on the leader only (embedded: the
//! one daemon always leads): when an instance starts leading, finishing an
//! interrupted restore and the catch-up of missed scheduled runs (backups,
//! restore drills, audit pruning); audit pruning itself.
//!
//! Whether a run was missed is decided from `ops.job_runs`
//! ([`database::jobs`]), which every leader sees, and, for backups and
//! drills, also from this instance's own backup directory (the backups'
//! manifests): a new leader after a dead one catches up what neither did,
//! and does not repeat what the dead one did.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::backup::schedule::Schedule;
use crate::backup::{Backups, pipeline};
use crate::config::Config;
use crate::crm;
use crate::database::{self, Access, jobs};

/// This instance has just become the leader: runs at once, in the
/// background, each scheduled job whose last scheduled time came after its
/// last success.
pub(super) fn catch_up(access: &Access, backups: &Arc<Backups>, config: &Config) {
    let (access, backups) = (access.clone(), backups.clone());
    let database = access.app_database(&config.database.name);
    let backup = Schedule::parse(&config.backup.schedule).ok().flatten();
    let drill = Schedule::parse(&config.backup.drill).ok().flatten();
    let audit = Schedule::parse(config.audit.effective_schedule())
        .ok()
        .flatten();
    let keep_days = config.audit.keep_days;
    tokio::spawn(async move {
        // First what a crash left halfway: the data from before an
        // interrupted restore gets its safety backup.
        if let Err(err) = backups.recover().await {
            warn!(error = %err, "cannot finish an interrupted restore");
        }
        if let Some(schedule) = backup {
            let local = backups.history().last_success.map(|m| m.created_at);
            if missed(&access, &database, jobs::BACKUP, &schedule, local).await {
                info!("a scheduled backup was missed (or none exists yet); catching up now");
                // A failure is logged (and kept for `status`) by `create`.
                let done = backups.create(None, pipeline::Progress::none()).await;
                if let Err(crate::backup::Error::Busy) = done {
                    info!("a backup is already running; it stands for the missed one");
                }
            } else {
                info!("no scheduled backup was missed");
            }
        }
        // A drill needs a backup to restore: none yet, nothing was missed.
        if let Some(schedule) = drill
            && backups.store().list().is_ok_and(|list| !list.is_empty())
        {
            let local = backups.history().last_restorable.map(|(at, _)| at);
            if missed(&access, &database, jobs::DRILL, &schedule, local).await {
                info!("a scheduled restore drill was missed (or none ran yet); catching up now");
                // A failure is logged (and kept for `status`) by `drill`.
                if let Err(crate::backup::Error::Busy) = backups.drill().await {
                    info!("a backup or drill is running; the drill waits for its next time");
                }
            }
        }
        if let Some(schedule) = audit
            && missed(&access, &database, jobs::AUDIT_PRUNE, &schedule, None).await
        {
            info!("a scheduled audit pruning was missed (or never ran); catching up now");
            prune_audit(&access, &database, keep_days).await;
        }
    });
}

/// Whether `schedule` had a run after the last success of `job` (the
/// database's record, or `local`, whichever is newer). When the record
/// cannot be read, `local` alone decides: a spare run beats a missed one.
async fn missed(
    access: &Access,
    database: &str,
    job: &str,
    schedule: &Schedule,
    local: Option<OffsetDateTime>,
) -> bool {
    let recorded = jobs::last_success(access, database, job)
        .await
        .unwrap_or_else(|err| {
            warn!(job, error = ?err, "cannot read the job history (ops.job_runs)");
            None
        });
    let last = local
        .max(recorded)
        .and_then(|t| chrono::DateTime::from_timestamp(t.unix_timestamp(), 0));
    schedule.missed(last, &chrono::Local::now())
}

/// Deletes audit rows older than `keep_days` days (0: keeps everything)
/// and records the run; says in the log how many rows went.
pub(super) async fn prune_audit(access: &Access, database: &str, keep_days: u32) {
    if keep_days == 0 {
        return;
    }
    let started = Instant::now();
    let result = async {
        let (client, conn) = access
            .connect(database)
            .await
            .with_context(|| format!("connecting to database {database}"))?;
        let deleted = crm::prune_audit(&client, keep_days).await;
        drop(client);
        let _ = conn.await;
        let deleted = deleted.context("pruning the audit log")?;
        database::jobs::record_success(
            access,
            database,
            jobs::AUDIT_PRUNE,
            OffsetDateTime::now_utc(),
            &format!("{deleted} rows deleted"),
        )
        .await?;
        anyhow::Ok(deleted)
    }
    .await;
    match result {
        Ok(deleted) => info!(
            deleted,
            keep_days,
            elapsed = ?started.elapsed(),
            "audit log pruned: {deleted} rows older than {keep_days} days deleted"
        ),
        Err(err) => warn!(
            error = %format!("{err:#}"),
            "audit pruning failed; the next scheduled run tries again"
        ),
    }
}
