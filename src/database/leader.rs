//! Leadership for jobs that must run once across instances (scheduled
//! backups and their retention, restore drills, audit pruning): the
//! instance holding a session-level advisory lock on a dedicated
//! connection leads.
//!
//! The lock is the lease: when the leader dies or loses its connection, the
//! server ends its session and the lock is free; the others try every
//! [`RETRY`] and one takes over. A leader that cannot reach the server
//! steps down at once (its next check fails), before anyone can take over.
//! The embedded server has one daemon by construction: it always leads.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Access, Connection};

/// Key of the leadership lock ("pagolead").
pub const LEADER_LOCK: i64 = 0x7061_676f_6c65_6164;
/// How often a follower tries to take the lock, and a leader checks it
/// still holds its connection.
pub const RETRY: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this instance leads, kept current until `cancel`.
#[must_use]
pub fn spawn(access: Access, database: String, cancel: CancellationToken) -> watch::Receiver<bool> {
    if matches!(access, Access::Embedded(_)) {
        let (tx, rx) = watch::channel(true);
        // The value never changes; keep the sender so the receiver stays open.
        tokio::spawn(async move {
            cancel.cancelled().await;
            drop(tx);
        });
        return rx;
    }
    let (tx, rx) = watch::channel(false);
    tokio::spawn(run(access, database, tx, cancel));
    rx
}

async fn run(
    access: Access,
    database: String,
    leading: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut conn: Option<Connection> = None;
    loop {
        let was_leading = *leading.borrow();
        let outcome = tokio::time::timeout(
            CHECK_TIMEOUT,
            step(&access, &database, &mut conn, was_leading),
        )
        .await;
        let now_leading = match outcome {
            Ok(Ok(holds)) => holds,
            Ok(Err(err)) => {
                if was_leading {
                    warn!(error = %err, "lost the connection that holds leadership; stepping down");
                }
                conn = None;
                false
            }
            Err(_) => {
                conn = None;
                false
            }
        };
        if now_leading != was_leading {
            if now_leading {
                info!(
                    "this instance now leads the scheduled jobs (backups, drills, audit pruning)"
                );
            } else {
                info!("this instance no longer leads scheduled jobs");
            }
            let _ = leading.send(now_leading);
        }
        tokio::select! {
            () = cancel.cancelled() => {
                // Dropping the connection ends the session and frees the lock.
                drop(conn);
                return;
            }
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Leader: checks the session still lives. Follower: tries the lock.
async fn step(
    access: &Access,
    database: &str,
    conn: &mut Option<Connection>,
    leading: bool,
) -> Result<bool, String> {
    if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
        if leading {
            return Err("the leadership connection closed".into());
        }
        *conn = Some(
            access
                .connect(database)
                .await
                .map_err(|e| format!("{e:#}"))?,
        );
    }
    let (client, _) = conn.as_ref().expect("connected above");
    if leading {
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("{e:#}"))?;
        return Ok(true);
    }
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(row.get(0))
}
