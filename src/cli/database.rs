//! Database access for CLI commands (`migrate`, `psql`).
//!
//! When a daemon runs, its postgres is used through the private socket (the
//! data-dir files are the daemon's; the socket is for clients). When none
//! runs, the command takes the data-dir lock itself, so no daemon can start
//! underneath it, and runs a temporary postgres for as long as it needs.

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Loaded;
use crate::lock::{self, DataDirLock};
use crate::postgres::{self, Cluster, Server};

pub struct Session {
    pub cluster: Cluster,
    temporary: Option<(DataDirLock, CancellationToken, Server)>,
}

impl Session {
    pub async fn open(loaded: &Loaded) -> Result<Self> {
        let config = &loaded.config;
        let paths = config.paths();
        let binaries = postgres::binaries::locate(&config.database, &paths.pg_installs())
            .await
            .context("finding PostgreSQL binaries")?;
        crate::fsutil::ensure_dir(paths.data_dir(), 0o700)
            .with_context(|| format!("creating the data dir {}", paths.data_dir().display()))?;
        match DataDirLock::acquire(&paths.lock_file(), paths.data_dir()) {
            Ok(lock) => {
                let cluster = Cluster::prepare(&config.database, &config.limits, &paths, binaries)
                    .await
                    .context("preparing the PostgreSQL cluster")?;
                let stop = CancellationToken::new();
                // A short-lived server for one command: rlimits, no cgroup.
                let limits = crate::supervisor::Limits {
                    cgroup_procs: Vec::new(),
                    core_dumps: config.limits.core_dumps,
                };
                let mut server = cluster.start(stop.clone(), limits);
                if let Err(err) = server.wait_ready().await {
                    let finished = server.finished().await;
                    return Err(finished
                        .err()
                        .map_or_else(|| err.into(), anyhow::Error::from))
                    .context("starting a temporary postgres");
                }
                Ok(Self {
                    cluster,
                    temporary: Some((lock, stop, server)),
                })
            }
            Err(lock::Error::Busy { .. }) => {
                let cluster = Cluster::attach(&config.database, &paths, binaries)
                    .context("connecting to the running daemon's postgres")?;
                Ok(Self {
                    cluster,
                    temporary: None,
                })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Stops the temporary postgres, if this session started one.
    pub async fn close(self) -> Result<()> {
        if let Some((_lock, stop, mut server)) = self.temporary {
            stop.cancel();
            server
                .finished()
                .await
                .context("stopping the temporary postgres")?;
        }
        Ok(())
    }
}
