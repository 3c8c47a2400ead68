//! Database access for CLI commands (`migrate`, `psql`, `user`, `tenant`,
//! offline `backup`).
//!
//! Embedded: when a daemon runs, its postgres is used through the private
//! socket (the data-dir files are the daemon's; the socket is for clients).
//! When none runs, the command takes the data-dir lock itself, so no daemon
//! can start underneath it, and runs a temporary postgres for as long as it
//! needs.
//!
//! External (`[database] url`): the server is reached the way the daemon
//! reaches it (same url, password, TLS), whether instances run or not; no
//! lock is taken, as the database is shared with every instance anyway
//! (migrations take their advisory lock).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Loaded;
use crate::database::{Access, External};
use crate::lock::{self, DataDirLock};
use crate::postgres::{self, Cluster, Server};

pub struct Session {
    pub access: Access,
    /// The application's database (the url's, when external).
    pub database: String,
    temporary: Option<(DataDirLock, CancellationToken, Server)>,
}

impl Session {
    pub async fn open(loaded: &Loaded) -> Result<Self> {
        let config = &loaded.config;
        let paths = config.paths();
        if let Some(url) = &config.database.url {
            let (external, _) =
                External::with_client_tools(&config.database, url, &paths.pg_installs())
                    .await
                    .context("configuring the external database ([database] url)")?;
            let access = Access::External(Arc::new(external));
            return Ok(Self {
                database: access.app_database(&config.database.name),
                access,
                temporary: None,
            });
        }
        let binaries = postgres::binaries::locate(&config.database, &paths.pg_installs())
            .await
            .context("finding PostgreSQL binaries")?;
        crate::fsutil::ensure_dir(paths.data_dir(), 0o700)
            .with_context(|| format!("creating the data dir {}", paths.data_dir().display()))?;
        let (cluster, temporary) = match DataDirLock::acquire(&paths.lock_file(), paths.data_dir())
        {
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
                (cluster, Some((lock, stop, server)))
            }
            Err(lock::Error::Busy { .. }) => {
                let cluster = Cluster::attach(&config.database, &paths, binaries)
                    .context("connecting to the running daemon's postgres")?;
                (cluster, None)
            }
            Err(err) => return Err(err.into()),
        };
        Ok(Self {
            access: Access::Embedded(cluster),
            database: config.database.name.clone(),
            temporary,
        })
    }

    /// Connects to the application's database as the administrative role.
    pub async fn connect(&self) -> Result<crate::database::Connection> {
        self.access
            .connect(&self.database)
            .await
            .with_context(|| format!("connecting to database {}", self.described()))
    }

    /// The database, as messages name it: `host:port/db` when external.
    pub fn described(&self) -> String {
        match self.access.external() {
            Some(external) => external.display().to_string(),
            None => self.database.clone(),
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
