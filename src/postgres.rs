//! Runs the private PostgreSQL: creates the cluster on first start, keeps
//! `postgres` alive under [`crate::supervisor`], and reports its state.
//!
//! Called by `daemon` and by offline CLI commands (`migrate`, `psql`). Knows
//! nothing about HTTP or the CLI.
//!
//! Invariants:
//! - postgres listens on the unix socket in `Paths::pg_socket_dir` and on TCP
//!   only when `[database] listen_addresses` says so; every tool we run
//!   connects through that socket;
//! - no PostgreSQL program runs as root (see [`account`]);
//! - before every start, processes left in our PGDATA by a killed daemon or a
//!   crashed postmaster are stopped, so a restart never fails on a stale
//!   `postmaster.pid` or shared-memory block.

pub mod account;
pub mod binaries;
pub mod command;
pub mod conf;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{DatabaseConfig, LimitsConfig};
use crate::fsutil;
use crate::paths::Paths;
use crate::secrets::{self, SecretFile};
use crate::supervisor::{self, ChildEvent, RestartPolicy, Spec};

pub use account::Account;
pub use binaries::Binaries;

/// Where the superuser's password is kept, under `Paths::secrets_dir`.
pub const SUPERUSER_SECRET: &str = "postgres-superuser.password";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Account(#[from] account::Error),
    #[error(transparent)]
    Secret(#[from] secrets::Error),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} exists but is not a PostgreSQL cluster (no PG_VERSION); move it away or point --data-dir elsewhere"
    )]
    NotACluster { path: PathBuf },
    #[error(
        "the cluster in {path} was created by PostgreSQL {data_major}, but the binaries in {bin_dir} are {bin_major}; set [database] bin_dir to PostgreSQL {data_major} binaries"
    )]
    VersionMismatch {
        path: PathBuf,
        data_major: String,
        bin_major: String,
        bin_dir: PathBuf,
    },
    #[error("initdb failed for {path} ({status}):\n{output}")]
    InitDb {
        path: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error("could not run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Supervisor(#[from] supervisor::Error),
    #[error("postgres did not accept connections within {0:?}; see the postgres lines in the log")]
    NotReady(Duration),
    #[error("postgres stopped before it became ready; see the postgres lines in the log")]
    StoppedBeforeReady,
}

/// A prepared cluster: binaries found, data dir initialised and configured.
#[derive(Debug, Clone)]
pub struct Cluster {
    binaries: Binaries,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    listen_addresses: String,
    account: Option<Account>,
    superuser_password: String,
    start_timeout: Duration,
}

impl Cluster {
    /// Creates the directories, runs `initdb` on first start and writes our
    /// settings. Safe to call on every start; never touches existing data.
    pub async fn prepare(
        cfg: &DatabaseConfig,
        limits: &LimitsConfig,
        paths: &Paths,
        binaries: Binaries,
    ) -> Result<Self, Error> {
        let account = account::resolve(cfg.os_user.as_deref())?;
        let owner = account.as_ref().map(|a| (a.uid, a.gid));
        let pgdata = paths.pgdata();
        let pg_root = pgdata.parent().expect("pgdata has a parent").to_path_buf();
        let socket_dir = paths.pg_socket_dir();
        for dir in [
            paths.data_dir(),
            pg_root.as_path(),
            paths.run_dir().as_path(),
            socket_dir.as_path(),
        ] {
            fsutil::ensure_dir(dir, 0o700).map_err(|source| io_err("create", dir, source))?;
        }
        if let Some(account) = &account {
            // The data dir belongs to PostgreSQL's account, so a later switch
            // between `sudo pagodirecto run` and the packaged `User=` service
            // finds files it can use. Root reaches everything regardless.
            for dir in [
                paths.data_dir(),
                pg_root.as_path(),
                paths.run_dir().as_path(),
                socket_dir.as_path(),
            ] {
                fsutil::chown(dir, account.uid, account.gid)
                    .map_err(|source| io_err("chown", dir, source))?;
            }
            account.check_reachable(&socket_dir)?;
        }
        let superuser = SecretFile::new(&paths.secrets_dir(), SUPERUSER_SECRET);
        let superuser_password = superuser.load_or_create(owner)?;

        let cluster = Self {
            binaries,
            pgdata,
            socket_dir,
            port: cfg.port,
            listen_addresses: cfg.listen_addresses.clone(),
            account,
            superuser_password,
            start_timeout: cfg.start_timeout,
        };
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.initdb(superuser.path()).await?;
        }
        cluster.check_version()?;
        cluster.write_settings(cfg, limits)?;
        Ok(cluster)
    }

    /// The cluster a running daemon owns, for client tools: reads what they
    /// need to connect and changes nothing on disk.
    pub fn attach(cfg: &DatabaseConfig, paths: &Paths, binaries: Binaries) -> Result<Self, Error> {
        let superuser_password = SecretFile::new(&paths.secrets_dir(), SUPERUSER_SECRET).load()?;
        Ok(Self {
            binaries,
            pgdata: paths.pgdata(),
            socket_dir: paths.pg_socket_dir(),
            port: cfg.port,
            listen_addresses: cfg.listen_addresses.clone(),
            account: account::resolve(cfg.os_user.as_deref())?,
            superuser_password,
            start_timeout: cfg.start_timeout,
        })
    }

    async fn initdb(&self, pwfile: &Path) -> Result<(), Error> {
        let pgdata = &self.pgdata;
        if pgdata.exists() {
            let empty = std::fs::read_dir(pgdata)
                .map_err(|s| io_err("read", pgdata, s))?
                .next()
                .is_none();
            if !empty {
                return Err(Error::NotACluster {
                    path: pgdata.clone(),
                });
            }
            std::fs::remove_dir(pgdata).map_err(|s| io_err("remove", pgdata, s))?;
        }
        // initdb into a side directory and rename: an interrupted initdb
        // leaves a directory we delete next time, never a half cluster.
        let staging = pgdata.with_extension("initdb");
        if staging.exists() {
            warn!(path = %staging.display(), "removing an interrupted initdb");
            std::fs::remove_dir_all(&staging).map_err(|s| io_err("remove", &staging, s))?;
        }
        info!(pgdata = %pgdata.display(), bin_dir = %self.binaries.bin_dir.display(), "initialising a new PostgreSQL cluster");
        let started = Instant::now();
        let mut cmd = command::initdb(&self.binaries.bin_dir, &staging, pwfile);
        self.as_account(&mut cmd);
        let program = self.binaries.bin_dir.join("initdb");
        let output = cmd
            .output()
            .await
            .map_err(|source| Error::Spawn { program, source })?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            return Err(Error::InitDb {
                path: pgdata.clone(),
                status: output.status,
                output: text,
            });
        }
        let conf = staging.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|s| io_err("read", &conf, s))?;
        text.push_str(conf::INCLUDE_LINE);
        std::fs::write(&conf, text).map_err(|s| io_err("write", &conf, s))?;
        std::fs::rename(&staging, pgdata).map_err(|s| io_err("rename", &staging, s))?;
        info!(elapsed = ?started.elapsed(), "cluster initialised");
        Ok(())
    }

    fn check_version(&self) -> Result<(), Error> {
        let path = self.pgdata.join("PG_VERSION");
        let data_major = std::fs::read_to_string(&path)
            .map_err(|s| io_err("read", &path, s))?
            .trim()
            .to_string();
        let bin_major = self.binaries.major();
        if data_major != bin_major {
            return Err(Error::VersionMismatch {
                path: self.pgdata.clone(),
                data_major,
                bin_major,
                bin_dir: self.binaries.bin_dir.clone(),
            });
        }
        Ok(())
    }

    fn write_settings(&self, cfg: &DatabaseConfig, limits: &LimitsConfig) -> Result<(), Error> {
        let settings = conf::derive(
            limits.postgres_memory,
            limits.max_connections,
            &cfg.settings,
        );
        let files = [
            (
                self.pgdata.join(conf::SETTINGS_FILE),
                conf::render_settings(&settings),
            ),
            (
                self.pgdata.join("pg_hba.conf"),
                conf::render_hba(!cfg.listen_addresses.is_empty()),
            ),
        ];
        for (path, text) in files {
            fsutil::write_atomic(&path, text.as_bytes(), 0o600)
                .map_err(|s| io_err("write", &path, s))?;
            if let Some(account) = &self.account {
                fsutil::chown(&path, account.uid, account.gid)
                    .map_err(|s| io_err("chown", &path, s))?;
            }
        }
        Ok(())
    }

    fn as_account(&self, cmd: &mut tokio::process::Command) {
        if let Some(account) = &self.account {
            account.apply(cmd);
        }
        // A clean environment: Debian's binaries honour PGHOST and friends, and
        // the operator's shell must not redirect our tools elsewhere.
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8");
        if let Some(dir) = self.pgdata.parent() {
            cmd.current_dir(dir);
        }
    }

    #[must_use]
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    #[must_use]
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    #[must_use]
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    #[must_use]
    pub fn account(&self) -> Option<&Account> {
        self.account.as_ref()
    }

    /// A connection config over the private socket.
    #[must_use]
    pub fn connect_config(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .application_name("pagodirecto")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// The superuser, for migrations and maintenance.
    #[must_use]
    pub fn superuser_config(&self, dbname: &str) -> tokio_postgres::Config {
        self.connect_config(command::SUPERUSER, &self.superuser_password, dbname)
    }

    /// A client tool (`psql`, `pg_dump`, …) from our binaries, connected to
    /// `dbname` over the private socket as the superuser. It runs as the
    /// invoking user: clients may run as root, and the socket is all they need.
    #[must_use]
    pub fn client_command(&self, program: &str, dbname: &str) -> tokio::process::Command {
        tokio::process::Command::from(self.client_command_std(program, dbname))
    }

    /// [`Cluster::client_command`] for blocking code (streaming pipelines).
    #[must_use]
    pub fn client_command_std(&self, program: &str, dbname: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.binaries.bin_dir.join(program));
        cmd.env("PGHOST", &self.socket_dir)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", command::SUPERUSER)
            .env("PGPASSWORD", &self.superuser_password)
            .env("PGDATABASE", dbname)
            .env_remove("PGSERVICE")
            .env_remove("PGSERVICEFILE");
        cmd
    }

    fn spec(&self, limits: supervisor::Limits) -> Spec {
        let cluster = self.clone();
        Spec {
            name: "postgres",
            make_command: Box::new(move || {
                stop_leftovers(&cluster.pgdata)?;
                let b = &cluster.binaries;
                let mut cmd = command::postgres(
                    &b.bin_dir,
                    &cluster.pgdata,
                    &cluster.socket_dir,
                    cluster.port,
                    &cluster.listen_addresses,
                );
                cluster.as_account(&mut cmd);
                // Its own process group: a Ctrl-C in the daemon's terminal goes
                // to the daemon, which then stops postgres in order.
                cmd.process_group(0);
                Ok(cmd)
            }),
            output: log_line,
            stop_ladder: vec![
                (Signal::SIGINT, Duration::from_secs(20)),
                (Signal::SIGQUIT, Duration::from_secs(5)),
            ],
            // Immediate shutdown: the postmaster takes its backends down with it.
            parent_death_signal: Signal::SIGQUIT,
            policy: RestartPolicy::default(),
            limits,
        }
    }

    /// Starts postgres under supervision, within `limits` (its cgroup,
    /// rlimits). It runs until `cancel` fires or it crash-loops; [`Server`]
    /// reports its state meanwhile.
    #[must_use]
    pub fn start(&self, cancel: CancellationToken, limits: supervisor::Limits) -> Server {
        let (status_tx, status_rx) = watch::channel(Status::new());
        let task = tokio::spawn(monitor(
            self.spec(limits),
            self.superuser_config("postgres"),
            self.start_timeout,
            status_tx,
            cancel,
        ));
        Server {
            status: status_rx,
            task,
        }
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What postgres is doing, as the rest of the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Spawned, not yet accepting connections (includes crash recovery).
    Starting,
    Ready,
    /// Exited unexpectedly; a restart is coming.
    Down,
    /// Stopped on purpose or given up on.
    Stopped,
}

impl State {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Down => "down",
            Self::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Status {
    pub state: State,
    pub pid: Option<u32>,
    /// Unexpected exits since the daemon started.
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// The last unexpected exit as a shell would show it: the exit code,
    /// or 128 + the signal that killed it.
    pub last_exit_code: Option<i32>,
    pub since: SystemTime,
}

impl Status {
    fn new() -> Self {
        Self {
            state: State::Starting,
            pid: None,
            restarts: 0,
            last_exit: None,
            last_exit_code: None,
            since: SystemTime::now(),
        }
    }
}

/// The running server: its state, and the task that ends when it stops.
pub struct Server {
    status: watch::Receiver<Status>,
    task: JoinHandle<Result<(), Error>>,
}

impl Server {
    #[must_use]
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until postgres accepts connections.
    pub async fn wait_ready(&self) -> Result<(), Error> {
        let mut status = self.status.clone();
        let result = status
            .wait_for(|s| matches!(s.state, State::Ready | State::Stopped))
            .await;
        match result.map(|s| s.state) {
            Ok(State::Ready) => Ok(()),
            _ => Err(Error::StoppedBeforeReady),
        }
    }

    /// Resolves when supervision ends: `Ok` after a requested stop, the
    /// crash-loop error otherwise. Cancel-safe.
    pub async fn finished(&mut self) -> Result<(), Error> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(Error::Io {
                action: "supervise",
                path: PathBuf::from("postgres"),
                source: io::Error::other(join),
            }),
        }
    }
}

/// Turns supervisor events into [`Status`] and probes readiness after each start.
async fn monitor(
    spec: Spec,
    probe_config: tokio_postgres::Config,
    start_timeout: Duration,
    status: watch::Sender<Status>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let supervision = supervisor::supervise(spec, events_tx, cancel.clone());
    tokio::pin!(supervision);
    let mut probe: Option<(u32, JoinHandle<bool>)> = None;
    loop {
        tokio::select! {
            result = &mut supervision => {
                while let Ok(event) = events.try_recv() {
                    apply_event(&status, &event, cancel.is_cancelled());
                }
                status.send_modify(|s| { s.state = State::Stopped; s.pid = None; s.since = SystemTime::now(); });
                return result.map_err(Error::from);
            }
            Some(event) = events.recv() => {
                if let Some((_, handle)) = probe.take() { handle.abort(); }
                if let ChildEvent::Started { pid } = event {
                    probe = Some((pid, tokio::spawn(probe_ready(probe_config.clone(), start_timeout))));
                }
                apply_event(&status, &event, cancel.is_cancelled());
            }
            ready = async { (&mut probe.as_mut().expect("guarded").1).await }, if probe.is_some() => {
                let (pid, _) = probe.take().expect("guarded");
                if ready.unwrap_or(false) {
                    info!(pid, "postgres is ready");
                    status.send_modify(|s| { s.state = State::Ready; s.since = SystemTime::now(); });
                } else {
                    error!(pid, ?start_timeout, "postgres did not accept connections in time; restarting it");
                    if let Ok(raw) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), Signal::SIGQUIT);
                    }
                }
            }
        }
    }
}

fn apply_event(status: &watch::Sender<Status>, event: &ChildEvent, stopping: bool) {
    status.send_modify(|s| {
        s.since = SystemTime::now();
        match *event {
            ChildEvent::Started { pid } => {
                s.state = State::Starting;
                s.pid = Some(pid);
            }
            ChildEvent::Exited { status: exit, .. } => {
                s.pid = None;
                if stopping {
                    s.state = State::Stopped;
                } else {
                    s.state = State::Down;
                    s.restarts += 1;
                    s.last_exit = Some(exit.to_string());
                    s.last_exit_code = exit.code().or_else(|| {
                        std::os::unix::process::ExitStatusExt::signal(&exit).map(|n| 128 + n)
                    });
                }
            }
        }
    });
}

/// Polls until a connection succeeds or `timeout` passes. A successful
/// login, not a pid file or `pg_isready`, is what "ready" means to the API.
async fn probe_ready(config: tokio_postgres::Config, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok((client, connection)) = config.connect(tokio_postgres::NoTls).await {
            drop(client);
            let _ = connection.await;
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Routes one line of postgres output into our log, at its own level.
fn log_line(line: &str) {
    // With log_line_prefix '[%p] ' a line reads "[123] LOG:  message".
    let level = line.split_once("] ").map_or(line, |(_, rest)| rest);
    if level.ends_with("the database system is starting up")
        || level.ends_with("the database system is shutting down")
    {
        // Our own readiness probe knocking before the door opens: expected.
        tracing::debug!(target: "postgres", "{line}");
    } else if level.starts_with("PANIC:")
        || level.starts_with("FATAL:")
        || level.starts_with("ERROR:")
    {
        tracing::error!(target: "postgres", "{line}");
    } else if level.starts_with("WARNING:") {
        tracing::warn!(target: "postgres", "{line}");
    } else if level.starts_with("DEBUG") {
        tracing::debug!(target: "postgres", "{line}");
    } else {
        tracing::info!(target: "postgres", "{line}");
    }
}

/// Stops every process whose working directory is `pgdata`: a postmaster or
/// backends left by a daemon that was SIGKILLed, or backends that outlived a
/// crashed postmaster and still hold its shared memory.
///
/// PostgreSQL processes `chdir` into their data directory, so the cwd finds
/// them all, including backends that called `setsid` and escaped any process
/// group. Safe because we hold the data-dir lock: no other daemon owns them.
pub fn stop_leftovers(pgdata: &Path) -> io::Result<()> {
    let Ok(target) = pgdata.canonicalize() else {
        return Ok(());
    };
    let find = || -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|&pid| pid != i32::try_from(std::process::id()).unwrap_or(0))
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == target)
            })
            .collect()
    };
    let leftovers = find();
    if leftovers.is_empty() {
        return Ok(());
    }
    warn!(pids = ?leftovers, pgdata = %target.display(), "stopping PostgreSQL processes left by an earlier run");
    for (signal, grace) in [
        (Signal::SIGQUIT, Duration::from_secs(5)),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        for &pid in &find() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if find().is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let left = find();
    if left.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "processes {left:?} in {} survived SIGKILL",
            target.display()
        )))
    }
}
