//! Liveness of an external PostgreSQL: `SELECT 1` with a timeout every few
//! seconds (more slowly, with backoff, while it fails), feeding the same
//! `postgres_up` watch the embedded supervisor feeds, so `/ready` is 503
//! while the server is unreachable and recovers by itself.
//!
//! Uses its own connection, not the API's pool: a saturated pool must not
//! read as a dead server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Access, Connection};

/// What the last check found; read by `status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub reachable: bool,
    /// Round trip of the last successful check.
    pub latency: Option<Duration>,
    /// `server_version` of the server last reached.
    pub version: Option<String>,
    pub last_error: Option<String>,
    pub checked_at: Option<SystemTime>,
}

/// Shared view of [`Observed`].
#[derive(Clone, Default)]
pub struct Stats(Arc<Mutex<Observed>>);

impl Stats {
    #[must_use]
    pub fn get(&self) -> Observed {
        self.0.lock().expect("stats lock is never poisoned").clone()
    }

    fn set(&self, observed: Observed) {
        *self.0.lock().expect("stats lock is never poisoned") = observed;
    }
}

/// How often a healthy server is checked, and the most a failing one waits.
const EVERY: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks `access` until `cancel`. Flips `up` on every change; when the
/// server comes back, empties `pool` (its connections died with the old
/// server or session).
pub async fn run(
    access: Access,
    database: String,
    pool: deadpool_postgres::Pool,
    up: watch::Sender<bool>,
    stats: Stats,
    cancel: CancellationToken,
) {
    let mut conn: Option<Connection> = None;
    let mut backoff = EVERY;
    loop {
        let started = Instant::now();
        let result =
            tokio::time::timeout(CHECK_TIMEOUT, check(&access, &database, &mut conn)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        let was_up = *up.borrow();
        let mut observed = stats.get();
        observed.checked_at = Some(SystemTime::now());
        match result {
            Ok(version) => {
                observed.reachable = true;
                observed.latency = Some(started.elapsed());
                observed.version = Some(version);
                observed.last_error = None;
                backoff = EVERY;
                if !was_up {
                    pool.retain(|_, _| false);
                    info!("the external PostgreSQL is reachable again; ready");
                    let _ = up.send(true);
                }
            }
            Err(err) => {
                conn = None;
                observed.reachable = false;
                observed.latency = None;
                if was_up {
                    warn!(error = %err, "the external PostgreSQL is unreachable; not ready");
                    let _ = up.send(false);
                }
                observed.last_error = Some(err);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        stats.set(observed);
        let wait = if *up.borrow() {
            EVERY
        } else {
            backoff.min(EVERY * 2)
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One check on the kept connection (reconnecting when needed); returns
/// the server version.
async fn check(
    access: &Access,
    database: &str,
    conn: &mut Option<Connection>,
) -> Result<String, String> {
    if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
        *conn = Some(
            access
                .connect(database)
                .await
                .map_err(|e| format!("{e:#}"))?,
        );
    }
    let (client, _) = conn.as_ref().expect("just connected");
    let row = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(row.get(0))
}

/// Sets the external server's gauges; returns whether it is reachable.
#[must_use]
pub fn set_gauges(seen: &Observed) -> bool {
    if let Some(latency) = seen.latency {
        metrics::gauge!("pagodirecto_postgres_latency_seconds").set(latency.as_secs_f64());
    }
    if let Some(version) = &seen.version {
        metrics::gauge!("pagodirecto_postgres_info", "version" => version.clone(), "mode" => "external").set(1.0);
    }
    seen.reachable
}
