//! The last success of each job that must run once across instances
//! (scheduled backups, restore drills, audit pruning), in `ops.job_runs`
//! (migration V4).
//!
//! Local files cannot say whether a run was missed when several instances
//! take turns leading: the backups of a dead leader are in its own
//! directory. The database is what every leader sees, so a new leader
//! catches up a missed run once, and not a run its predecessor did.

use time::OffsetDateTime;

use super::{Access, Error, db};

/// The `job` names recorded.
pub const BACKUP: &str = "backup";
pub const DRILL: &str = "drill";
pub const AUDIT_PRUNE: &str = "audit_prune";

/// When `job` last succeeded, if ever.
pub async fn last_success(
    access: &Access,
    database: &str,
    job: &str,
) -> Result<Option<OffsetDateTime>, Error> {
    Ok(all(access, database)
        .await?
        .into_iter()
        .find_map(|(name, at, _)| (name == job).then_some(at)))
}

/// Every job's last success and what it did (`detail`), by job name.
pub async fn all(
    access: &Access,
    database: &str,
) -> Result<Vec<(String, OffsetDateTime, String)>, Error> {
    let (client, conn) = access
        .connect(database)
        .await
        .map_err(db("connecting to read the job history"))?;
    let rows = client
        .query(
            "SELECT job, last_success, coalesce(detail, '') FROM ops.job_runs ORDER BY job",
            &[],
        )
        .await
        .map_err(db("reading the job history (ops.job_runs)"));
    drop(client);
    let _ = conn.await;
    Ok(rows?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Records a success of `job` at `at` (`detail`: what it did). A record
/// never goes back in time, so a late writer cannot hide a newer run.
pub async fn record_success(
    access: &Access,
    database: &str,
    job: &str,
    at: OffsetDateTime,
    detail: &str,
) -> Result<(), Error> {
    let (client, conn) = access
        .connect(database)
        .await
        .map_err(db("connecting to record a job run"))?;
    let result = client
        .execute(
            "INSERT INTO ops.job_runs (job, last_success, detail) VALUES ($1, $2, $3) \
             ON CONFLICT (job) DO UPDATE SET last_success = EXCLUDED.last_success, detail = EXCLUDED.detail \
             WHERE ops.job_runs.last_success < EXCLUDED.last_success",
            &[&job, &at, &detail],
        )
        .await
        .map_err(db("recording a job run (ops.job_runs)"));
    drop(client);
    let _ = conn.await;
    result.map(drop)
}
