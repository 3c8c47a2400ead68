//! Readiness: the checks that decide whether the appliance can serve.
//!
//! Called by `http` (`/ready`) and `daemon` (`status`, the control socket).
//! The inputs are handles the daemon keeps current; computing a report is
//! cheap (a statvfs and, when postgres is up, one `SELECT 1`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::fsutil;

/// What the readiness checks look at. Shared by the daemon (which updates it)
/// and the HTTP handlers (which read it).
#[derive(Debug)]
pub struct Health {
    /// True while postgres accepts connections (fed from the supervisor).
    pub postgres_up: watch::Receiver<bool>,
    pub migrations_applied: AtomicBool,
    pub data_dir: PathBuf,
    pub disk_reserve: u64,
    pub pool: Option<deadpool_postgres::Pool>,
    /// Why the API is in maintenance (a restore), if it is.
    maintenance: std::sync::Mutex<Option<String>>,
}

/// One named check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Readiness {
    pub checks: Vec<Check>,
}

impl Readiness {
    #[must_use]
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

impl Health {
    #[must_use]
    pub fn new(
        postgres_up: watch::Receiver<bool>,
        data_dir: PathBuf,
        disk_reserve: u64,
        pool: Option<deadpool_postgres::Pool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            postgres_up,
            migrations_applied: AtomicBool::new(false),
            data_dir,
            disk_reserve,
            pool,
            maintenance: std::sync::Mutex::new(None),
        })
    }

    pub async fn check(&self) -> Readiness {
        let mut checks = vec![self.postgres().await, self.migrations(), self.disk()];
        if let Some(reason) = self.maintenance() {
            checks.push(Check {
                name: "maintenance",
                ok: false,
                detail: reason,
            });
        }
        Readiness { checks }
    }

    /// Puts the API in maintenance (`Some(reason)`: 503 with that reason) or
    /// takes it out (`None`). Liveness is unaffected: nothing restarts us.
    pub fn set_maintenance(&self, reason: Option<String>) {
        *self
            .maintenance
            .lock()
            .expect("maintenance lock is never poisoned") = reason;
    }

    #[must_use]
    pub fn maintenance(&self) -> Option<String> {
        self.maintenance
            .lock()
            .expect("maintenance lock is never poisoned")
            .clone()
    }

    async fn postgres(&self) -> Check {
        let name = "postgres";
        if !*self.postgres_up.borrow() {
            return Check {
                name,
                ok: false,
                detail: "not accepting connections (starting or restarting)".into(),
            };
        }
        let Some(pool) = &self.pool else {
            return Check {
                name,
                ok: true,
                detail: "accepting connections".into(),
            };
        };
        let probe = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(())) => Check {
                name,
                ok: true,
                detail: "accepting connections".into(),
            },
            Ok(Err(err)) => Check {
                name,
                ok: false,
                detail: err,
            },
            Err(_) => Check {
                name,
                ok: false,
                detail: "no answer within 2s".into(),
            },
        }
    }

    fn migrations(&self) -> Check {
        let ok = self.migrations_applied.load(Ordering::Acquire);
        Check {
            name: "migrations",
            ok,
            detail: if ok { "applied" } else { "not applied yet" }.into(),
        }
    }

    fn disk(&self) -> Check {
        match fsutil::available_bytes(&self.data_dir) {
            Ok(free) => Check {
                name: "disk",
                ok: free >= self.disk_reserve,
                detail: format!(
                    "{} free in {}, reserve {}",
                    bytesize::ByteSize(free),
                    self.data_dir.display(),
                    bytesize::ByteSize(self.disk_reserve)
                ),
            },
            Err(err) => Check {
                name: "disk",
                ok: false,
                detail: format!("cannot stat {}: {err}", self.data_dir.display()),
            },
        }
    }
}
