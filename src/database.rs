//! Where the application's database lives, as the rest of the daemon sees
//! it: the embedded cluster this daemon supervises, or an external server
//! named by `[database] url` (SPEC §2 case 4: several instances, one
//! database).
//!
//! [`Access`] answers the questions that differ between the two: how to
//! connect as the administrative role (migrations, backups), how to run
//! `pg_dump`/`pg_restore` against it, and how the API's pool connects.
//! Liveness differs too: the embedded server reports through its
//! supervisor, an external one through [`monitor`]; jobs that must run once
//! across instances are led through [`leader`], and their last success is
//! kept in the database by [`jobs`] (what a new leader catches up).
//!
//! Called by `daemon` (and the backup service). Knows nothing about HTTP.
//!
//! Invariants:
//! - the API's connections act as [`crate::migrate::APP_ROLE`], so RLS
//!   applies: embedded by logging in as it, external by `SET ROLE` on every
//!   new connection (no app password is shared between instances);
//! - no password reaches a command line or the log: client tools get it in
//!   their environment.

pub mod jobs;
pub mod leader;
pub mod monitor;
pub mod shared;
mod tls;

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::config::Host;

use crate::config::{DatabaseConfig, SslMode};
use crate::migrate;
use crate::postgres::Cluster;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database.url is not a PostgreSQL connection URL")]
    Url(#[source] tokio_postgres::Error),
    #[error("database.url names no {0}")]
    UrlMissing(&'static str),
    #[error("reading database.password_file {path}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database.ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("setting up TLS to PostgreSQL: {0}")]
    Tls(String),
    #[error("{step}")]
    Database {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("sharing {path} through the database: {reason}")]
    Shared { path: PathBuf, reason: String },
    #[error("building the connection pool")]
    Pool(#[source] deadpool_postgres::BuildError),
}

fn db(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Database { step, source }
}

/// How to reach the application's database as its administrative role.
/// Cheap to clone.
#[derive(Clone)]
pub enum Access {
    Embedded(Cluster),
    External(Arc<External>),
}

/// A PostgreSQL server this daemon does not run.
pub struct External {
    /// The url's parameters plus the password; `dbname` is the app's database.
    pg: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    sslmode: SslMode,
    ca_file: Option<PathBuf>,
    /// Where `pg_dump`/`pg_restore` are, when found (backups need them).
    client_bin_dir: Option<PathBuf>,
    /// `host:port/dbname`, for status and messages: never the password.
    display: String,
}

/// The API's connections: a client, and the task driving its socket.
pub type Connection = (Client, tokio::task::JoinHandle<()>);

impl External {
    /// Reads `[database] url` (and the password file or variable) and sets
    /// up TLS. `client_bin_dir` holds `pg_dump`/`pg_restore` when known.
    pub fn new(
        cfg: &DatabaseConfig,
        url: &str,
        client_bin_dir: Option<PathBuf>,
    ) -> Result<Self, Error> {
        let mut pg = tokio_postgres::Config::from_str(url).map_err(Error::Url)?;
        if pg.get_hosts().is_empty() {
            return Err(Error::UrlMissing("host"));
        }
        if pg.get_user().is_none() {
            return Err(Error::UrlMissing("user"));
        }
        if pg.get_dbname().is_none() {
            return Err(Error::UrlMissing(
                "database (postgres://user@host:port/DATABASE)",
            ));
        }
        if let Some(path) = &cfg.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::PasswordFile {
                path: path.clone(),
                source,
            })?;
            pg.password(text.trim_end_matches(['\n', '\r']));
        } else if let Some(password) = &cfg.password {
            pg.password(password.expose());
        }
        pg.application_name("pagodirecto")
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .ssl_mode(match cfg.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
            });
        let tls = match cfg.sslmode {
            SslMode::Disable => None,
            mode => Some(tls::connector(mode, cfg.ca_file.as_deref())?),
        };
        let host = match &pg.get_hosts()[0] {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let display = format!("{host}:{port}/{}", pg.get_dbname().unwrap_or_default());
        Ok(Self {
            pg,
            tls,
            sslmode: cfg.sslmode,
            ca_file: cfg.ca_file.clone(),
            client_bin_dir,
            display,
        })
    }

    /// [`External::new`] with the client tools (`pg_dump`, `pg_restore`,
    /// `psql`) found like the server's binaries but never downloaded; the
    /// second value says why none were found.
    pub async fn with_client_tools(
        cfg: &DatabaseConfig,
        url: &str,
        installs: &std::path::Path,
    ) -> Result<(Self, Option<crate::postgres::binaries::Error>), Error> {
        let mut find = cfg.clone();
        find.download = false;
        let (bin_dir, missing) = match crate::postgres::binaries::locate(&find, installs).await {
            Ok(binaries) => (Some(binaries.bin_dir), None),
            Err(err) => (None, Some(err)),
        };
        Ok((Self::new(cfg, url, bin_dir)?, missing))
    }

    /// Where the client tools are, when they were found.
    #[must_use]
    pub fn client_bin_dir(&self) -> Option<&std::path::Path> {
        self.client_bin_dir.as_deref()
    }

    /// `host:port/dbname`.
    #[must_use]
    pub fn display(&self) -> &str {
        &self.display
    }

    fn config_for(&self, dbname: &str) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        pg.dbname(dbname);
        pg
    }

    async fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Result<Connection, tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
                Ok((
                    client,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                ))
            }
            Some(tls) => {
                let (client, conn) = pg.connect(tls.clone()).await?;
                Ok((
                    client,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                ))
            }
        }
    }
}

impl Access {
    /// The application's database: the configured name when embedded, the
    /// url's when external.
    #[must_use]
    pub fn app_database(&self, configured: &str) -> String {
        match self {
            Self::Embedded(_) => configured.to_string(),
            Self::External(ext) => ext.pg.get_dbname().unwrap_or(configured).to_string(),
        }
    }

    /// The OS account generated files belong to: the embedded postgres's
    /// (it runs as its own account when the daemon is root).
    #[must_use]
    pub fn owner(&self) -> Option<(nix::unistd::Uid, nix::unistd::Gid)> {
        match self {
            Self::Embedded(cluster) => cluster.account().map(|a| (a.uid, a.gid)),
            Self::External(_) => None,
        }
    }

    #[must_use]
    pub fn external(&self) -> Option<&External> {
        match self {
            Self::Embedded(_) => None,
            Self::External(ext) => Some(ext),
        }
    }

    /// Connects to `dbname` as the administrative role: the embedded
    /// superuser, or the url's user.
    pub async fn connect(&self, dbname: &str) -> Result<Connection, tokio_postgres::Error> {
        match self {
            Self::Embedded(cluster) => {
                let (client, conn) = cluster
                    .superuser_config(dbname)
                    .connect(tokio_postgres::NoTls)
                    .await?;
                Ok((
                    client,
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                ))
            }
            Self::External(ext) => ext.connect(&ext.config_for(dbname)).await,
        }
    }

    /// A client tool (`pg_dump`, `pg_restore`, `psql`) connected to
    /// `dbname` as the administrative role through its environment (the
    /// password in `PGPASSWORD`, never on the command line).
    #[must_use]
    pub fn client_command_std(&self, program: &str, dbname: &str) -> std::process::Command {
        match self {
            Self::Embedded(cluster) => cluster.client_command_std(program, dbname),
            Self::External(ext) => {
                let bin = ext
                    .client_bin_dir
                    .as_ref()
                    .map_or_else(|| PathBuf::from(program), |dir| dir.join(program));
                let mut cmd = std::process::Command::new(bin);
                for var in [
                    "PGSERVICE",
                    "PGSERVICEFILE",
                    "PGPASSFILE",
                    "PGSSLCERT",
                    "PGSSLKEY",
                ] {
                    cmd.env_remove(var);
                }
                let pg = &ext.pg;
                match &pg.get_hosts()[0] {
                    Host::Tcp(h) => cmd.env("PGHOST", h),
                    Host::Unix(p) => cmd.env("PGHOST", p),
                };
                cmd.env(
                    "PGPORT",
                    pg.get_ports().first().copied().unwrap_or(5432).to_string(),
                )
                .env("PGUSER", pg.get_user().unwrap_or_default())
                .env("PGDATABASE", dbname)
                .env("PGCONNECT_TIMEOUT", "10")
                .env("PGAPPNAME", "pagodirecto")
                .env("PGSSLMODE", ext.sslmode.as_str());
                match (&ext.ca_file, ext.sslmode) {
                    (Some(ca), _) => {
                        cmd.env("PGSSLROOTCERT", ca);
                    }
                    (None, SslMode::VerifyFull) => {
                        cmd.env("PGSSLROOTCERT", "system");
                    }
                    _ => {}
                }
                match pg.get_password() {
                    Some(pw) => cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref()),
                    None => cmd.env_remove("PGPASSWORD"),
                };
                cmd
            }
        }
    }

    /// [`Access::client_command_std`] for async code.
    #[must_use]
    pub fn client_command(&self, program: &str, dbname: &str) -> tokio::process::Command {
        tokio::process::Command::from(self.client_command_std(program, dbname))
    }

    /// Makes the external server ready for migrations: the application
    /// role exists (NOLOGIN: nobody logs in as it) and the url's user may
    /// `SET ROLE` to it. Serialised across instances by a transaction-level
    /// advisory lock. Nothing to do for the embedded server.
    pub async fn prepare_roles(&self, client: &mut Client) -> Result<(), Error> {
        if matches!(self, Self::Embedded(_)) {
            return Ok(());
        }
        let tx = client
            .transaction()
            .await
            .map_err(db("starting the role setup"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROLE_LOCK])
            .await
            .map_err(db("taking the role setup lock"))?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM pg_roles WHERE rolname = $1",
                &[&migrate::APP_ROLE],
            )
            .await
            .map_err(db("looking for the application role"))?
            .is_some();
        if !exists {
            tx.batch_execute(&format!(
                "CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
                migrate::APP_ROLE
            ))
            .await
            .map_err(db(
                "creating the application role pagodirecto_app (the url's user needs CREATEROLE, or create the role and GRANT it to that user)",
            ))?;
        }
        let member: bool = tx
            .query_one(
                "SELECT pg_has_role(current_user, $1, 'MEMBER')",
                &[&migrate::APP_ROLE],
            )
            .await
            .map_err(db("checking membership in the application role"))?
            .get(0);
        if !member {
            tx.batch_execute(&format!("GRANT {} TO CURRENT_USER", migrate::APP_ROLE))
                .await
                .map_err(db(
                    "granting the application role pagodirecto_app to the url's user (GRANT pagodirecto_app TO <user> as an administrator)",
                ))?;
        }
        tx.commit().await.map_err(db("committing the role setup"))
    }

    /// The pool the API uses: bounded, with timeouts so no request waits
    /// past them while the server is down or failing over.
    pub fn pool(
        &self,
        database: &str,
        pool_size: u32,
        app_password: &str,
    ) -> Result<deadpool_postgres::Pool, Error> {
        let manager_config = deadpool_postgres::ManagerConfig {
            // Fast: no check query per checkout (a round trip per request).
            // Connections a restart broke are dropped when the server comes
            // back (the daemon's event loop or `monitor`), not one by one.
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let manager = match self {
            Self::Embedded(cluster) => deadpool_postgres::Manager::from_config(
                cluster.connect_config(migrate::APP_ROLE, app_password, database),
                tokio_postgres::NoTls,
                manager_config,
            ),
            Self::External(ext) => match &ext.tls {
                None => deadpool_postgres::Manager::from_config(
                    ext.config_for(database),
                    tokio_postgres::NoTls,
                    manager_config,
                ),
                Some(tls) => deadpool_postgres::Manager::from_config(
                    ext.config_for(database),
                    tls.clone(),
                    manager_config,
                ),
            },
        };
        let mut builder = deadpool_postgres::Pool::builder(manager)
            .max_size(usize::try_from(pool_size).unwrap_or(16))
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .runtime(deadpool_postgres::Runtime::Tokio1);
        if matches!(self, Self::External(_)) {
            builder = builder.post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    // Act as the application role (RLS applies to it, as it
                    // owns nothing); `ALTER ROLE … SET` does not apply to a
                    // SET ROLE, so the plan cache mode is set here too.
                    client
                        .batch_execute(&format!(
                            "SET ROLE {}; SET plan_cache_mode = force_generic_plan",
                            migrate::APP_ROLE
                        ))
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            }));
        }
        builder.build().map_err(Error::Pool)
    }
}

/// Key of the advisory lock that serialises the role setup ("pagorole").
const ROLE_LOCK: i64 = 0x7061_676f_726f_6c65;
