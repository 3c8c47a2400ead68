//! The composition root: the only module that knows the whole system.
//!
//! Start order: lock the data dir → find binaries → prepare the cluster →
//! start postgres and wait until it accepts connections → create the
//! database and migrate → open the pool → bind listeners → control socket →
//! serve. Then one event loop ([`Event`]) until shutdown, which runs in
//! reverse: stop accepting and drain HTTP, close the control socket, stop
//! postgres last.
//!
//! Subsystems report on channels in their own types; only this module turns
//! them into [`Event`]s, so nothing below imports `daemon`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{self, SigningKeys};
use crate::backup::schedule::Schedule;
use crate::backup::{Backups, Store, pipeline};
use crate::cgroup::{self, Cgroups};
use crate::config::{Config, Loaded};
use crate::control::{
    self, BackupReport, CgroupReport, CheckReport, ExternalReport, LimitsReport, PostgresReport,
    Request, ResourceReport, StatusReport,
};
use crate::database::{self, Access};
use crate::handover::{self, Inherited};
use crate::health::Health;
use crate::lock::DataDirLock;
use crate::paths::Paths;
use crate::postgres::{self, Cluster, State};
use crate::secrets::SecretFile;
use crate::{crm, demo, fsutil, http, logging, migrate, supervisor, systemd, telemetry};

mod led;
mod upgrade;
pub use upgrade::{Exit, Restart};

/// Where the application role's password is kept, under `Paths::secrets_dir`.
pub const APP_SECRET: &str = "postgres-app.password";

/// Every reason the daemon acts once it serves. Closed on purpose: to learn
/// what can happen at runtime, read this enum.
enum Event {
    Shutdown(&'static str),
    /// Supervision of postgres ended: a crash loop, or a stop we asked for.
    PostgresFinished(Result<(), postgres::Error>),
    PostgresChanged(postgres::Status),
    Control(
        Request,
        oneshot::Sender<Result<serde_json::Value, String>>,
        control::ProgressSink,
    ),
    /// The backup schedule says: back up now.
    BackupDue,
    DrillDue,
    /// The audit pruning schedule says: prune now.
    AuditDue,
    /// This instance became the one that runs the jobs that must run once
    /// (at start when embedded): it catches up the runs that were missed.
    Leading,
    /// Time to tell systemd's watchdog the event loop and supervision live.
    Watchdog,
    Reload,
    /// The TLS certificate or key file changed on disk.
    CertificatesChanged,
    /// An accepted update, its backup taken: hand over now.
    HandOver(upgrade::Plan),
    /// `[update] automatic`: time to look for a newer release.
    UpdateDue,
}

/// Why the event loop ended without an error.
enum Stop {
    Signal,
    Upgrade(upgrade::Plan),
}

/// How this start differs from a plain one (flags of `pagodirecto run`),
/// and handles the caller keeps (the log level, for config reloads).
#[derive(Clone, Default)]
pub struct Options {
    /// Seed the demo data set (see [`crate::demo`]) before serving.
    pub demo: bool,
    /// Serve the web app from this directory, re-read on every request,
    /// instead of the copy embedded in the binary (frontend development).
    pub dev_assets: Option<PathBuf>,
    /// Changes the log level when `[logging] level` is reloaded.
    pub log_level: Option<logging::Level>,
    /// This process's arguments (after the program name): a successor
    /// after an update is started with the same.
    pub args: Vec<std::ffi::OsString>,
    /// `--config`/`--data-dir` as given, for other subcommands run on our
    /// behalf (`restore` during a rollback).
    pub global_args: Vec<std::ffi::OsString>,
}

/// Runs the appliance until SIGTERM/SIGINT, a hand-over to a new version,
/// or an unrecoverable failure. `inherited`: listening sockets passed in
/// (systemd, or the previous version).
#[allow(clippy::too_many_lines)] // the start and stop sequence, in order
pub async fn run(loaded: Loaded, options: Options, mut inherited: Inherited) -> Result<Exit> {
    let started = Instant::now();
    // Named now: once an update replaced the file, this process's image
    // has no name any more.
    let exe = std::env::current_exe().context("finding this executable's path")?;
    let Loaded { config, source, .. } = loaded.clone();
    let paths = config.paths();
    info!(version = crate::update::VERSION, config = %source, data_dir = %paths.data_dir().display(), "starting");

    let mut signals = Signals::new()?;
    http::tls::install_provider();
    let open_files = own_rlimits(config.limits.core_dumps);
    let assets = web_assets(options.dev_assets)?;
    fsutil::ensure_dir(paths.data_dir(), 0o700)
        .with_context(|| format!("creating the data dir {}", paths.data_dir().display()))?;
    let lock = DataDirLock::acquire(&paths.lock_file(), paths.data_dir())?;
    if let Some(last) = handover::Record::load(&paths.update_record())
        && last.outcome == handover::Outcome::RolledBack
        && last.from == crate::update::VERSION
    {
        warn!(to = %last.to, reason = last.reason.as_deref().unwrap_or("?"), "the last update was rolled back");
    }
    clear_runtime_files(&paths);
    // Declared before postgres starts, so it is dropped (its groups removed)
    // only after postgres has stopped.
    let cgroups = Arc::new(setup_cgroups(&config, &paths));

    let stop_postgres = CancellationToken::new();
    let (access, mut server) = open_database(&config, &paths, &stop_postgres, &cgroups).await?;
    let pg_status = server.as_ref().map_or_else(
        || watch::channel(external_status()).1,
        postgres::Server::status,
    );
    let starting = async {
        if let Some(server) = &server {
            tokio::select! {
                ready = server.wait_ready() => ready.context("starting postgres")?,
                name = signals.next_stop() => {
                    info!(signal = name, "stopping before the daemon was ready");
                    return Ok(None);
                }
            }
        }
        start_serving(
            &config,
            &paths,
            &access,
            pg_status,
            options.demo,
            assets,
            &cgroups,
            &mut inherited,
        )
        .await
        .map(Some)
    };
    let mut serving = match starting.await {
        Ok(Some(serving)) => serving,
        // Every early return stops postgres first.
        early => {
            stop_postgres.cancel();
            let stopped = match &mut server {
                Some(server) => server.finished().await,
                None => Ok(()),
            };
            return match early {
                Err(err) => Err(match stopped {
                    // A crash loop explains more than "stopped before ready".
                    Err(crash) => anyhow::Error::from(crash).context("starting postgres"),
                    Ok(()) => err,
                }),
                _ => stopped.context("stopping postgres").map(|()| Exit::Stopped),
            };
        }
    };
    let urls = serving.urls();
    info!(elapsed = ?started.elapsed(), ?urls, "ready");
    systemd::ready(&format!("serving on {}", urls.join(", ")));
    inherited.announce_ready(crate::update::VERSION);

    let context = StatusContext {
        config: &config,
        source: source.to_string(),
        access: &access,
        leader: serving.leader.clone(),
        external: serving.external.clone(),
        health: serving.health.clone(),
        backups: serving.backups.clone(),
        samples: serving.samples.clone(),
        bound: serving.bound.clone(),
        started,
        cgroups: cgroups.clone(),
        open_files,
        exe: exe.clone(),
        update_record: paths.update_record(),
    };
    let mut reloader = Reloader::new(loaded, options.log_level.clone());
    let outcome = event_loop(
        &mut signals,
        &mut server,
        &mut serving,
        &context,
        &mut reloader,
    )
    .await;
    drop(context);
    let outcome = match outcome {
        Ok(Stop::Upgrade(plan)) => {
            let running = upgrade::Running {
                config: &config,
                paths: &paths,
                access: &access,
                signals: &mut signals,
                serving,
                server,
                stop_postgres,
                lock,
                cgroups,
                exe,
                args: options.args,
                global_args: options.global_args,
            };
            return upgrade::hand_over(plan, running).await;
        }
        Ok(Stop::Signal) => Ok(Exit::Stopped),
        Err(err) => Err(err),
    };

    // Reverse start order: nothing new comes in, in-flight requests finish,
    // and only then does the database they need go away.
    serving.stop(config.server.drain_timeout).await;
    stop_postgres.cancel();
    if outcome.is_ok()
        && let Some(server) = &mut server
    {
        server.finished().await.context("stopping postgres")?;
    }
    clear_runtime_files(&paths);
    info!(uptime = ?started.elapsed(), "stopped");
    outcome
}

/// The database to serve from: with `[database] url` an external server
/// (nothing supervised: no [`postgres::Server`]), else the embedded
/// cluster, prepared and started under supervision.
async fn open_database(
    config: &Config,
    paths: &Paths,
    stop_postgres: &CancellationToken,
    cgroups: &Cgroups,
) -> Result<(Access, Option<postgres::Server>)> {
    if let Some(url) = &config.database.url {
        return Ok((external_database(config, paths, url).await?, None));
    }
    systemd::status("finding PostgreSQL binaries");
    let binaries = postgres::binaries::locate(&config.database, &paths.pg_installs())
        .await
        .context("finding PostgreSQL binaries")?;
    let cluster = Cluster::prepare(&config.database, &config.limits, paths, binaries)
        .await
        .context("preparing the PostgreSQL cluster")?;
    systemd::status("starting postgres");
    let server = cluster.start(
        stop_postgres.clone(),
        supervisor::Limits {
            cgroup_procs: cgroups.postgres_procs(),
            core_dumps: config.limits.core_dumps,
        },
    );
    Ok((Access::Embedded(cluster), Some(server)))
}

/// What runs once postgres is up: HTTP, the control socket, backups.
struct Serving {
    health: Arc<Health>,
    api: Arc<http::ApiState>,
    secrets_dir: std::path::PathBuf,
    edge: Arc<http::edge::Edge>,
    samples: telemetry::Samples,
    metrics: Arc<http::MetricsEndpoint>,
    backups: Arc<Backups>,
    backup_due: mpsc::Receiver<()>,
    drill_due: mpsc::Receiver<()>,
    audit_due: mpsc::Receiver<()>,
    stop_schedules: CancellationToken,
    postgres_up: watch::Sender<bool>,
    /// Whether this instance runs the jobs that must run once (always, embedded).
    leader: watch::Receiver<bool>,
    /// What the liveness monitor last saw of an external server.
    external: Option<database::monitor::Stats>,
    bound: Vec<SocketAddr>,
    /// The certificate new TLS handshakes get; `None` without TLS.
    certs: Option<Arc<http::tls::Certificates>>,
    /// Says when the certificate files changed; replaced with the files.
    cert_changed: mpsc::Receiver<()>,
    cert_watcher: Option<notify::RecommendedWatcher>,
    control: mpsc::Receiver<control::Pending>,
    stop_http: CancellationToken,
    /// `None` once HTTP has stopped.
    http: Option<tokio::task::JoinHandle<()>>,
    /// Copies of the listening sockets, for a successor after an update.
    sockets: handover::Sockets,
    stop_control: CancellationToken,
    /// Ends the external liveness monitor and leadership (frees the lock).
    stop_database: CancellationToken,
}

/// Migrates, opens the pool, binds the listeners and the control socket.
#[allow(clippy::too_many_lines)] // the start sequence, in order; each step is a call
#[allow(clippy::too_many_arguments)] // what `run` has set up so far, each used once
async fn start_serving(
    config: &Config,
    paths: &Paths,
    access: &Access,
    pg_status: watch::Receiver<postgres::Status>,
    demo: bool,
    assets: http::assets::Assets,
    cgroups: &Arc<Cgroups>,
    inherited: &mut Inherited,
) -> Result<Serving> {
    let owner = owner(access);
    let app_password = SecretFile::new(&paths.secrets_dir(), APP_SECRET).load_or_create(owner)?;
    let database = access.app_database(&config.database.name);
    systemd::status("migrating the database");
    bootstrap(access, config, &app_password).await?;
    ensure_first_owner(access, &database, paths).await?;
    if demo {
        seed_demo(access, &database, paths).await?;
    }
    if access.external().is_some() {
        share_signing_keys(access, &database, paths, config.auth.access_token_ttl).await?;
    }
    let keys =
        SigningKeys::load_or_create(&paths.secrets_dir(), config.auth.access_token_ttl, owner)
            .context("loading the token signing keys")?;
    let pool = access
        .pool(&database, config.limits.pool_size, &app_password)
        .context("opening the connection pool")?;

    let (postgres_up, up_rx) = watch::channel(true);
    let stop_schedules = CancellationToken::new();
    let stop_database = CancellationToken::new();
    let external = access.external().map(|_| {
        let stats = database::monitor::Stats::default();
        tokio::spawn(database::monitor::run(
            access.clone(),
            database.clone(),
            pool.clone(),
            postgres_up.clone(),
            stats.clone(),
            stop_database.clone(),
        ));
        stats
    });
    let mut leader =
        database::leader::spawn(access.clone(), database.clone(), stop_database.clone());
    // The event loop catches up missed runs when this instance starts
    // leading; embedded, it leads from the start, which counts as a change.
    leader.mark_changed();
    let health = Health::new(
        up_rx,
        paths.data_dir().to_path_buf(),
        config.limits.disk_reserve.as_u64(),
        Some(pool),
    );
    health.migrations_applied.store(true, Ordering::Release);

    let store = Store::new(paths.backup_dir(), &config.backup);
    let backups = Arc::new(Backups::new(
        access.clone(),
        &database,
        store,
        config.limits.disk_reserve.as_u64(),
        config.limits.postgres_memory.as_u64(),
        Some(health.clone()),
    ));
    let backup_due = schedule(&config.backup.schedule, "backup.schedule", &stop_schedules)?;
    let drill_due = schedule(&config.backup.drill, "backup.drill", &stop_schedules)?;
    let audit_due = schedule(
        config.audit.effective_schedule(),
        "audit.prune_schedule",
        &stop_schedules,
    )?;

    let certs = certificates(&config.server, paths)?;
    let listeners = listen(&config.server.listen, "server.listen", inherited)?;
    let redirect = match config.server.redirect_http {
        Some(addr) => listen(&[addr], "server.redirect_http", inherited)?,
        None => Vec::new(),
    };
    inherited.close_unused();
    let mut sockets = handover::Sockets::default();
    for (name, listener) in listeners
        .iter()
        .map(|l| ("http", l))
        .chain(redirect.iter().map(|l| ("redirect", l)))
    {
        sockets
            .keep(name, listener)
            .context("keeping a copy of a listening socket")?;
    }
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    if let Some(first) = bound.first() {
        fsutil::write_atomic(&paths.http_addr_file(), first.to_string().as_bytes(), 0o644)
            .with_context(|| format!("writing {}", paths.http_addr_file().display()))?;
    }

    let (control_tx, control) = mpsc::channel(16);
    let control_listener = control::bind(&paths.control_socket())?;
    let stop_control = CancellationToken::new();
    tokio::spawn(control::serve(
        control_listener,
        control_tx.clone(),
        stop_control.clone(),
    ));

    let stop_http = CancellationToken::new();
    let samples = telemetry::Samples::default();
    let api = Arc::new(http::ApiState {
        pool: health.pool.clone().expect("the daemon's health has a pool"),
        keys: std::sync::RwLock::new(keys),
        auth: config.auth.clone(),
        backups: Some(backups.clone()),
        samples: samples.clone(),
        limits: config.limits.clone(),
        status: Some(control_tx.clone()),
    });
    if access.external().is_some() {
        tokio::spawn(follow_signing_keys(
            access.clone(),
            database.clone(),
            paths.secrets_dir(),
            config.auth.access_token_ttl,
            api.clone(),
            stop_database.clone(),
        ));
    }
    let edge = http::edge::Edge::new(&config.server);
    let metrics = metrics_endpoint(
        config,
        &health,
        &backups,
        pg_status.clone(),
        external.clone(),
        cgroups,
    );
    spawn_sampler(&samples, paths, pg_status, stop_http.clone());
    let router = http::router_with_assets(
        http::AppState {
            health: health.clone(),
            api: api.clone(),
            edge: edge.clone(),
            metrics: Some(metrics.clone()),
        },
        assets,
    );
    edge.forget_idle_clients_until(stop_http.clone());
    let acceptor = certs.clone().map(http::tls::acceptor);
    let mut served: Vec<http::server::Listener> = listeners
        .into_iter()
        .map(|socket| http::server::Listener {
            socket,
            app: router.clone(),
            tls: acceptor.clone(),
        })
        .collect();
    let https_port = bound.first().map_or(443, SocketAddr::port);
    served.extend(redirect.into_iter().map(|socket| {
        if let Ok(addr) = socket.local_addr() {
            info!(%addr, https_port, "redirecting plain HTTP to HTTPS");
        }
        http::server::Listener {
            socket,
            app: http::server::redirect_to_https(https_port),
            tls: None,
        }
    }));
    let http = Some(tokio::spawn(http::server::serve(
        served,
        config.server.header_read_timeout,
        stop_http.clone(),
        config.server.drain_timeout,
    )));
    let (cert_changed, cert_watcher) = watch_certificates(certs.as_deref());
    Ok(Serving {
        api: api.clone(),
        secrets_dir: paths.secrets_dir(),
        health,
        edge,
        samples,
        metrics,
        backups,
        backup_due,
        drill_due,
        audit_due,
        stop_schedules,
        postgres_up,
        leader,
        external,
        bound,
        certs,
        cert_changed,
        cert_watcher,
        control,
        stop_http,
        http,
        sockets,
        stop_control,
        stop_database,
    })
}

/// The TLS certificate `[server]` asks for, loaded (and generated first for
/// `tls = "self-signed"`); `None` for plain HTTP.
fn certificates(
    server: &crate::config::ServerConfig,
    paths: &Paths,
) -> Result<Option<Arc<http::tls::Certificates>>> {
    let (cert, key) = match (&server.tls, &server.tls_cert, &server.tls_key) {
        (crate::config::TlsMode::SelfSigned, _, _) => {
            let (cert, key) = (paths.self_signed_cert(), paths.self_signed_key());
            if http::tls::ensure_self_signed(&cert, &key)? {
                info!(cert = %cert.display(), "generated a self-signed TLS certificate (tls = \"self-signed\"); browsers will ask to trust it");
            }
            (cert, key)
        }
        (_, Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => return Ok(None),
    };
    let certs = http::tls::Certificates::load(&cert, &key)
        .context("loading the TLS certificate (server.tls_cert / server.tls_key)")?;
    info!(cert = %cert.display(), sha256 = %certs.fingerprint(), "TLS on: HTTP/2 and HTTP/1.1");
    Ok(Some(certs))
}

/// Watches the certificate's files (their directories: certbot and
/// editors replace files by rename); `()` arrives after each change.
fn watch_certificates(
    certs: Option<&http::tls::Certificates>,
) -> (mpsc::Receiver<()>, Option<notify::RecommendedWatcher>) {
    let (tx, rx) = mpsc::channel(1);
    let Some(certs) = certs else {
        std::mem::forget(tx); // never yields, never closes
        return (rx, None);
    };
    let (cert, key) = certs.files();
    match crate::config::watch::watch_all(&[cert.as_path(), key.as_path()], tx) {
        Ok(watcher) => (rx, Some(watcher)),
        Err(err) => {
            warn!(cert = %cert.display(), %err, "cannot watch the TLS files; a changed certificate needs a restart");
            (rx, None)
        }
    }
}

/// The web app's files: embedded, or `--dev-assets DIR`, which must hold a
/// build (an `index.html`) so a typo fails the start instead of every page.
fn web_assets(dev: Option<PathBuf>) -> Result<http::assets::Assets> {
    let Some(dir) = dev else {
        return Ok(http::assets::Assets::embedded());
    };
    let assets = http::assets::Assets::dir(dir.clone());
    anyhow::ensure!(
        assets.has_index(),
        "--dev-assets {}: no index.html there (build the app first: npm run build in assets/web)",
        dir.display()
    );
    warn!(dir = %dir.display(), "dev mode: serving the web app from disk, re-read on every request");
    Ok(assets)
}

impl Serving {
    /// Where clients reach the server, as URLs.
    fn urls(&self) -> Vec<String> {
        let scheme = if self.certs.is_some() {
            "https"
        } else {
            "http"
        };
        self.bound
            .iter()
            .map(|a| format!("{scheme}://{a}"))
            .collect()
    }

    /// Replaces the backup, drill and audit tickers after a config reload.
    fn restart_schedules(&mut self, config: &Config) {
        self.stop_schedules.cancel();
        self.stop_schedules = CancellationToken::new();
        let tickers = (
            schedule(
                &config.backup.schedule,
                "backup.schedule",
                &self.stop_schedules,
            ),
            schedule(&config.backup.drill, "backup.drill", &self.stop_schedules),
            schedule(
                config.audit.effective_schedule(),
                "audit.prune_schedule",
                &self.stop_schedules,
            ),
        );
        match tickers {
            (Ok(backup), Ok(drill), Ok(audit)) => {
                self.backup_due = backup;
                self.drill_due = drill;
                self.audit_due = audit;
            }
            // Validation parsed them already; keep the old ones if not.
            (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
                warn!(error = %err, "cannot restart the backup schedules");
            }
        }
    }

    /// Stops accepting connections and waits for the open ones to finish.
    async fn stop_accepting(&mut self) {
        self.stop_http.cancel();
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
    }

    async fn stop(mut self, drain: Duration) {
        self.stop_accepting().await;
        self.stop_control.cancel();
        self.stop_schedules.cancel();
        // A backup in progress is aborted (it leaves nothing) before the
        // database goes away; a restore is waited for, bounded.
        self.backups.abort_and_wait(drain).await;
        self.stop_database.cancel();
    }
}

/// The daemon's own rlimits, inherited by everything it starts: open files
/// up to the hard limit (returned), and no core dumps unless allowed.
fn own_rlimits(core_dumps: bool) -> Option<u64> {
    if !core_dumps {
        supervisor::forbid_own_core_dumps();
    }
    supervisor::raise_own_nofile()
}

/// The appliance's cgroups for this data dir, or none, said once in the log.
fn setup_cgroups(config: &Config, paths: &Paths) -> Cgroups {
    let limits = &config.limits;
    let cores = |c: f64| (c > 0.0).then_some(c);
    let budget = cgroup::Budget {
        memory: limits.memory.as_u64(),
        cpu: cores(limits.cpu),
        postgres_memory: limits.postgres_memory.as_u64(),
        postgres_cpu: cores(limits.postgres_cpu),
    };
    let cgroups = Cgroups::setup(
        &cgroup::Host::current(),
        &cgroup::id_for(paths.data_dir()),
        &budget,
    );
    if cgroups.mode() == cgroup::Mode::None {
        warn!(note = cgroups.note(), "no cgroup for the resource limits");
    } else {
        info!(mode = %cgroups.mode(), note = cgroups.note(), memory = %limits.memory, postgres_memory = %limits.postgres_memory, "resource limits enforced by cgroups");
    }
    cgroups
}

/// Samples the daemon and its postgres tree (found through the supervisor's
/// current postmaster pid), and keeps the metrics recorder's memory
/// bounded, until `stop`.
fn spawn_sampler(
    samples: &telemetry::Samples,
    paths: &Paths,
    pg_status: watch::Receiver<postgres::Status>,
    stop: CancellationToken,
) {
    let postmaster: Arc<dyn Fn() -> Option<u32> + Send + Sync> =
        Arc::new(move || pg_status.borrow().pid);
    let dirs = (
        paths.data_dir().to_path_buf(),
        paths.backup_dir().to_path_buf(),
    );
    tokio::spawn(telemetry::upkeep(telemetry::install(), stop.clone()));
    tokio::spawn(telemetry::sample(
        samples.clone(),
        postmaster,
        dirs.0,
        dirs.1,
        stop,
    ));
}

/// The `/metrics` renderer: sets the gauges that mirror other subsystems'
/// state (postgres, backups, pool), then renders everything recorded.
fn metrics_endpoint(
    config: &Config,
    health: &Arc<Health>,
    backups: &Arc<Backups>,
    pg_status: watch::Receiver<postgres::Status>,
    external: Option<database::monitor::Stats>,
    cgroups: &Arc<Cgroups>,
) -> Arc<http::MetricsEndpoint> {
    let handle = telemetry::install();
    let (health, backups, cgroups) = (health.clone(), backups.clone(), cgroups.clone());
    telemetry::export_limits(&telemetry::Limits {
        memory_bytes: config.limits.memory.as_u64(),
        cpu_cores: config.limits.cpu,
        postgres_memory_bytes: config.limits.postgres_memory.as_u64(),
        postgres_cpu_cores: config.limits.postgres_cpu,
        disk_reserve_bytes: config.limits.disk_reserve.as_u64(),
        max_connections: config.limits.max_connections,
        cgroup_mode: cgroups.mode().as_str(),
    });
    let render = move || {
        let pg = pg_status.borrow().clone();
        let up = match &external {
            Some(stats) => database::monitor::set_gauges(&stats.get()),
            None => pg.state == State::Ready,
        };
        metrics::gauge!("pagodirecto_postgres_up").set(if up { 1.0 } else { 0.0 });
        metrics::counter!("pagodirecto_postgres_restarts_total").absolute(u64::from(pg.restarts));
        if let Some(code) = pg.last_exit_code {
            metrics::gauge!("pagodirecto_postgres_last_exit_code").set(f64::from(code));
        }
        if let Some(usage) = cgroups.postgres_usage() {
            telemetry::export_cgroup(&usage);
        }
        let history = backups.history();
        if let Some(last) = &history.last_success {
            #[allow(clippy::cast_precision_loss)] // sizes and durations far below 2^53
            {
                metrics::gauge!("pagodirecto_backup_last_success_timestamp_seconds")
                    .set(last.created_at.unix_timestamp() as f64);
                metrics::gauge!("pagodirecto_backup_last_size_bytes").set(last.size as f64);
                metrics::gauge!("pagodirecto_backup_last_duration_seconds")
                    .set(last.duration_ms as f64 / 1000.0);
            }
        }
        if let Some((at, _)) = &history.last_restorable {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("pagodirecto_backup_last_verified_restorable_timestamp_seconds")
                .set(at.unix_timestamp() as f64);
        }
        if let Some(pool) = &health.pool {
            let status = pool.status();
            #[allow(clippy::cast_precision_loss)]
            {
                metrics::gauge!("pagodirecto_pool_connections").set(status.size as f64);
                metrics::gauge!("pagodirecto_pool_available").set(status.available as f64);
                metrics::gauge!("pagodirecto_pool_waiting").set(status.waiting as f64);
                metrics::gauge!("pagodirecto_pool_max").set(status.max_size as f64);
            }
        }
        handle.run_upkeep();
        handle.render()
    };
    Arc::new(http::MetricsEndpoint {
        render: Box::new(render),
        allow: std::sync::RwLock::new(config.server.metrics_allow.clone()),
    })
}

/// Starts the ticker for a cron `expr` ("" = never); its receiver never
/// yields when there is no schedule.
fn schedule(expr: &str, key: &str, cancel: &CancellationToken) -> Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel(1);
    if let Some(schedule) = Schedule::parse(expr).with_context(|| format!("{key} = {expr:?}"))? {
        let (due_tx, mut due_rx) = mpsc::channel(1);
        let clock: Arc<dyn Fn() -> chrono::DateTime<chrono::Local> + Send + Sync> =
            Arc::new(chrono::Local::now);
        tokio::spawn(crate::backup::schedule::ticker(
            schedule,
            clock,
            due_tx,
            cancel.clone(),
        ));
        tokio::spawn(async move {
            while due_rx.recv().await.is_some() {
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
    } else {
        // Keep the sender alive so the receiver pends instead of closing.
        std::mem::forget(tx);
    }
    Ok(rx)
}

/// Runs a backup in the background; the result goes to the log and history.
fn spawn_backup(
    backups: &Arc<Backups>,
    reply: Option<oneshot::Sender<Result<serde_json::Value, String>>>,
) {
    let backups = backups.clone();
    tokio::spawn(async move {
        let result = backups.create(None, pipeline::Progress::none()).await;
        if let Some(reply) = reply {
            let _ = reply.send(
                result
                    .map(|m| serde_json::to_value(m).unwrap_or_default())
                    .map_err(|e| e.to_string()),
            );
        }
    });
}

/// Applies config changes (SIGHUP or a save of the file) while running.
///
/// A change is validated first: an invalid one is logged with the reason and
/// the running config stays. Keys that can change live apply at once; the
/// rest are reported (log, `status`) as needing a restart.
struct Reloader {
    current: Loaded,
    /// What the process started with: non-live keys keep these values.
    started_with: Config,
    loaded_at: SystemTime,
    restart_pending: Vec<String>,
    last_error: Option<String>,
    log_level: Option<logging::Level>,
}

/// Keys whose new value takes effect without a restart. The certificate
/// files can change live only when TLS is on already (`tls_on`); turning
/// TLS on or off changes the listeners, which needs a restart.
fn is_live(key: &str, tls_on: bool) -> bool {
    matches!(
        key,
        "logging.level"
            | "server.request_timeout"
            | "server.max_concurrent_requests"
            | "server.rate_limit_per_minute"
            | "server.auth_rate_limit_per_minute"
            | "server.trusted_proxies"
            | "server.metrics_allow"
            | "server.cors_origins"
            | "server.max_body"
    ) || (tls_on && matches!(key, "server.tls_cert" | "server.tls_key"))
        || (key.starts_with("backup.") && key != "backup.directory")
        || key.starts_with("audit.")
}

impl Reloader {
    fn new(loaded: Loaded, log_level: Option<logging::Level>) -> Self {
        let started_with = loaded.config.clone();
        Self {
            current: loaded,
            started_with,
            loaded_at: SystemTime::now(),
            restart_pending: Vec::new(),
            last_error: None,
            log_level,
        }
    }

    fn file(&self) -> Option<std::path::PathBuf> {
        match &self.current.source {
            crate::config::ConfigSource::File(path) => Some(path.clone()),
            crate::config::ConfigSource::Defaults => None,
        }
    }

    fn reload(&mut self, serving: &mut Serving) {
        let new = match self.current.reload() {
            Ok(new) => new,
            Err(err) => {
                let reason = format!("{err:#}");
                warn!(error = %reason, "configuration change refused; the running configuration stays");
                self.last_error = Some(reason);
                return;
            }
        };
        self.last_error = None;
        let changed = self.current.changed_keys(&new.config);
        let tls_on = serving.certs.is_some() && new.config.server.tls_enabled();
        let live: Vec<&String> = changed.iter().filter(|k| is_live(k, tls_on)).collect();
        if live.iter().any(|k| *k == "logging.level")
            && let Some(level) = &self.log_level
        {
            level.set(&new.config.logging.level);
        }
        if live.iter().any(|k| k.starts_with("server.")) {
            serving.edge.update(&new.config.server);
            let mut allow = serving
                .metrics
                .allow
                .write()
                .expect("allow lock is never poisoned");
            allow.clone_from(&new.config.server.metrics_allow);
        }
        if live.iter().any(|k| k.starts_with("backup.")) {
            serving.backups.set_config(&new.config.backup);
        }
        if live
            .iter()
            .any(|k| k.starts_with("backup.") || k.starts_with("audit."))
        {
            serving.restart_schedules(&new.config);
        }
        if live.iter().any(|k| k.starts_with("server.tls_"))
            && let (Some(certs), Some(cert), Some(key)) = (
                &serving.certs,
                &new.config.server.tls_cert,
                &new.config.server.tls_key,
            )
        {
            match certs.replace(cert, key) {
                Ok(sha256) => {
                    info!(cert = %cert.display(), %sha256, "TLS certificate files changed; new connections use them");
                    (serving.cert_changed, serving.cert_watcher) = watch_certificates(Some(certs));
                }
                Err(err) => {
                    let reason = format!("{:#}", anyhow::Error::from(err));
                    warn!(error = %reason, "new TLS certificate refused; the one in use stays");
                    self.last_error = Some(reason);
                }
            }
        }
        let started = Loaded {
            config: self.started_with.clone(),
            source: new.source.clone(),
            overrides: new.overrides.clone(),
        };
        self.restart_pending = started
            .changed_keys(&new.config)
            .into_iter()
            .filter(|k| !is_live(k, tls_on))
            .collect();
        self.current = new;
        self.loaded_at = SystemTime::now();
        info!(applied = ?live, needs_restart = ?self.restart_pending, "configuration reloaded");
    }
}

/// Waits for events and acts on them until one ends the daemon.
#[allow(clippy::too_many_lines)] // one select and one match arm per Event
async fn event_loop(
    signals: &mut Signals,
    server: &mut Option<postgres::Server>,
    serving: &mut Serving,
    context: &StatusContext<'_>,
    reloader: &mut Reloader,
) -> Result<Stop> {
    // External: nothing is supervised; the sender lives as long as the loop
    // so `changed()` pends instead of failing at once (a busy loop).
    let (_no_supervisor, unsupervised) = watch::channel(external_status());
    let mut pg_status = server
        .as_ref()
        .map_or(unsupervised, postgres::Server::status);
    let (config_tx, mut config_changed) = mpsc::channel(1);
    // Kept alive for the loop's life; without a file there is nothing to watch.
    let _watcher = reloader.file().and_then(|file| match crate::config::watch::watch(&file, config_tx) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            warn!(file = %file.display(), %err, "cannot watch the config file; SIGHUP still reloads it");
            None
        }
    });
    // Pinged from this loop, so a wedged loop (or supervision gone) stops the
    // pings and systemd restarts us.
    let mut watchdog = systemd::watchdog_interval().map(tokio::time::interval);
    let (plans, mut planned) = mpsc::channel(1);
    let update_config = context.config.update.clone();
    let mut update_due = upgrade::checks(&update_config);
    let updating = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let event = tokio::select! {
            biased;
            name = signals.next() => if name == "SIGHUP" { Event::Reload } else { Event::Shutdown(name) },
            result = async { server.as_mut().expect("guarded").finished().await }, if server.is_some() => Event::PostgresFinished(result),
            changed = pg_status.changed() => match changed {
                Ok(()) => Event::PostgresChanged(pg_status.borrow_and_update().clone()),
                Err(_) => continue,
            },
            Some((request, reply, progress)) = serving.control.recv() => Event::Control(request, reply, progress),
            Some(()) = serving.backup_due.recv() => Event::BackupDue,
            Some(()) = serving.drill_due.recv() => Event::DrillDue,
            Some(()) = serving.audit_due.recv() => Event::AuditDue,
            Ok(()) = serving.leader.changed() => if *serving.leader.borrow_and_update() { Event::Leading } else { continue },
            Some(()) = config_changed.recv() => Event::Reload,
            Some(()) = serving.cert_changed.recv() => Event::CertificatesChanged,
            Some(plan) = planned.recv() => Event::HandOver(plan),
            Some(()) = update_due.recv() => Event::UpdateDue,
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => Event::Watchdog,
        };
        match event {
            Event::Shutdown(name) => {
                info!(signal = name, "shutting down");
                systemd::stopping();
                return Ok(Stop::Signal);
            }
            Event::HandOver(plan) => return Ok(Stop::Upgrade(plan)),
            Event::Control(Request::Upgrade { version, schema }, reply, _) => {
                if updating.swap(true, Ordering::AcqRel) {
                    let _ = reply.send(Err("an update is already in progress".into()));
                } else {
                    let request = upgrade::Request {
                        version,
                        schema,
                        external: context.access.external().is_some(),
                        busy: updating.clone(),
                    };
                    upgrade::accept(serving, request, reply, plans.clone());
                }
            }
            Event::UpdateDue => {
                if !updating.swap(true, Ordering::AcqRel) {
                    upgrade::automatic(
                        serving,
                        update_config.clone(),
                        context.exe.clone(),
                        context.access.external().is_some(),
                        updating.clone(),
                        plans.clone(),
                    );
                }
            }
            Event::PostgresFinished(result) => {
                return Err(anyhow::Error::from(
                    result.err().unwrap_or(postgres::Error::StoppedBeforeReady),
                ))
                .context("postgres cannot be kept running");
            }
            Event::PostgresChanged(status) => {
                let up = status.state == State::Ready;
                if *serving.postgres_up.borrow() != up {
                    if up {
                        if let Some(pool) = &serving.health.pool {
                            // Every pooled connection died with the old server.
                            pool.retain(|_, _| false);
                        }
                        info!(restarts = status.restarts, "postgres is back; ready again");
                        systemd::status("serving");
                    } else {
                        systemd::status(&format!(
                            "postgres is {}; restarting it",
                            status.state.as_str()
                        ));
                        warn!(state = status.state.as_str(), last_exit = ?status.last_exit, "postgres is down; not ready");
                    }
                    let _ = serving.postgres_up.send(up);
                }
            }
            Event::Control(Request::Metrics, reply, _) => {
                let _ = reply.send(Ok(
                    serde_json::json!({ "text": (serving.metrics.render)() }),
                ));
            }
            Event::Control(Request::RotateKey, reply, _) => {
                let _ = reply.send(rotate_key(context.access, serving).await);
            }
            Event::Control(Request::Status, reply, _) => {
                let pg = pg_status.borrow().clone();
                let _ = reply.send(
                    serde_json::to_value(context.report(&pg, reloader).await)
                        .map_err(|e| e.to_string()),
                );
            }
            Event::Control(request, reply, progress) => {
                backup_request(&serving.backups, request, reply, progress);
            }
            Event::BackupDue if !*serving.leader.borrow() => {
                info!("scheduled backup left to the leading instance");
            }
            Event::BackupDue => {
                info!("scheduled backup");
                spawn_backup(&serving.backups, None);
            }
            Event::Watchdog => systemd::watchdog(),
            Event::DrillDue if !*serving.leader.borrow() => {
                info!("scheduled restore drill left to the leading instance");
            }
            Event::DrillDue => {
                let backups = serving.backups.clone();
                tokio::spawn(async move {
                    let _ = backups.drill().await;
                });
            }
            Event::Leading => {
                led::catch_up(context.access, &serving.backups, &reloader.current.config);
            }
            Event::AuditDue if !*serving.leader.borrow() => {
                info!("scheduled audit pruning left to the leading instance");
            }
            Event::AuditDue => {
                let access = context.access.clone();
                let config = &reloader.current.config;
                let database = access.app_database(&config.database.name);
                let keep_days = config.audit.keep_days;
                tokio::spawn(async move { led::prune_audit(&access, &database, keep_days).await });
            }
            Event::Reload => reloader.reload(serving),
            Event::CertificatesChanged => reload_certificates(serving.certs.as_deref()),
        }
    }
}

/// `auth rotate-key`: a new signing key, shared through the database when
/// it is external.
async fn rotate_key(access: &Access, serving: &Serving) -> Result<serde_json::Value, String> {
    let rotated = SigningKeys::rotate(
        &serving.secrets_dir,
        serving.api.auth.access_token_ttl,
        owner(access),
    );
    if rotated.is_ok() && access.external().is_some() {
        publish_signing_keys(access, &serving.secrets_dir).await;
    }
    let answer = rotated.map(|keys| {
        *serving.api.keys.write().expect("keys lock is never poisoned") = keys;
        info!("rotated the token signing key; tokens signed with the old one stay valid until they expire");
        serde_json::json!({ "rotated": true })
    });
    answer.map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

/// Re-reads the certificate files after they changed on disk. A broken
/// replacement (or a key that does not match yet, halfway through a renewal)
/// is refused with the file and the reason; the certificate in use stays.
fn reload_certificates(certs: Option<&http::tls::Certificates>) {
    let Some(certs) = certs else { return };
    match certs.reload() {
        Ok(sha256) => info!(%sha256, "TLS certificate reloaded; new connections use it"),
        Err(err) => warn!(
            error = %format!("{:#}", anyhow::Error::from(err)),
            sha256 = %certs.fingerprint(),
            "changed TLS certificate refused; the one in use stays"
        ),
    }
}

/// Answers a backup request from the control socket in the background:
/// backups take minutes, and the event loop must keep serving meanwhile.
/// Progress goes to the client when it asked for it.
fn backup_request(
    backups: &Arc<Backups>,
    request: Request,
    reply: oneshot::Sender<Result<serde_json::Value, String>>,
    progress: control::ProgressSink,
) {
    let backups = backups.clone();
    tokio::spawn(async move {
        let client_progress = || {
            if progress.wanted() {
                let sink = progress.clone();
                pipeline::Progress::new(move |bytes| sink.report(bytes))
            } else {
                pipeline::Progress::none()
            }
        };
        let answer = match request {
            // Answered by the event loop.
            Request::Status | Request::Metrics | Request::RotateKey | Request::Upgrade { .. } => {
                Ok(serde_json::Value::Null)
            }
            Request::BackupCreate { label } => backups
                .create(label.as_deref(), client_progress())
                .await
                .map(json),
            Request::BackupList => backups.store().list().map(json),
            Request::BackupVerify { name } => backups
                .verify(name.as_deref(), client_progress())
                .await
                .map(json),
            Request::BackupPrune => backups.prune().map(json),
            Request::BackupDrill => backups.drill().await.map(json),
            Request::Restore { name } => backups.restore(&name, client_progress()).await.map(json),
        };
        let _ = reply.send(answer.map_err(|e| format!("{:#}", anyhow::Error::from(e))));
    });
}

fn json(value: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// Creates the application database, migrates it and sets the app role's
/// password, as the superuser over the private socket. External: the
/// database exists already (the url names it); the app role is prepared for
/// `SET ROLE` instead of given a password.
pub(crate) async fn bootstrap(access: &Access, config: &Config, app_password: &str) -> Result<()> {
    let name = &access.app_database(&config.database.name);
    if access.external().is_none() {
        let (client, conn) = access
            .connect("postgres")
            .await
            .context("connecting to postgres as the superuser")?;
        migrate::ensure_database(&client, name).await?;
        drop(client);
        let _ = conn.await;
    }

    let (mut client, conn) = access
        .connect(name)
        .await
        .with_context(|| format!("connecting to database {name}"))?;
    access
        .prepare_roles(&mut client)
        .await
        .context("preparing the application role")?;
    let applied = migrate::run(&mut client).await?;
    info!(
        applied,
        schema_version = migrate::latest_known(),
        "database schema is current"
    );
    if access.external().is_none() {
        migrate::set_app_password(&client, app_password).await?;
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}

/// Several instances on one external database must verify each other's
/// tokens: the signing keys are shared through the database (see
/// [`database::shared`]).
pub(crate) async fn share_signing_keys(
    access: &Access,
    database: &str,
    paths: &Paths,
    ttl: Duration,
) -> Result<()> {
    let dir = paths.secrets_dir();
    fsutil::ensure_dir(&dir, 0o700).with_context(|| format!("creating {}", dir.display()))?;
    let (mut client, conn) = access
        .connect(database)
        .await
        .with_context(|| format!("connecting to database {database}"))?;
    let path = dir.join(auth::keys::FILE);
    database::shared::adopt(&mut client, auth::keys::FILE, &path, || {
        SigningKeys::load_or_create(&dir, ttl, None)
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .context("sharing the token signing keys")?;
    drop(client);
    let _ = conn.await;
    Ok(())
}

/// After a key rotation on an external database: the other instances pick
/// the new keys up within [`KEY_FOLLOW_INTERVAL`] ([`follow_signing_keys`]).
async fn publish_signing_keys(access: &Access, secrets_dir: &std::path::Path) {
    let database = access.app_database("");
    let result = async {
        let (client, conn) = access.connect(&database).await.map_err(|e| e.to_string())?;
        let published = database::shared::publish(
            &client,
            auth::keys::FILE,
            &secrets_dir.join(auth::keys::FILE),
        )
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        drop(client);
        let _ = conn.await;
        published
    }
    .await;
    if let Err(err) = result {
        warn!(error = %err, "the rotated signing key could not be shared; other instances will not verify its tokens");
    }
}

/// How often an instance on an external database looks for signing keys
/// rotated by another instance.
const KEY_FOLLOW_INTERVAL: Duration = Duration::from_secs(5);

/// External database: follows the shared signing keys, so that a key rotated
/// on one instance (`auth rotate-key`) is used to verify tokens on every
/// instance within seconds, not after their next restart.
async fn follow_signing_keys(
    access: Access,
    database: String,
    secrets_dir: std::path::PathBuf,
    ttl: Duration,
    api: Arc<http::ApiState>,
    stop: CancellationToken,
) {
    let path = secrets_dir.join(auth::keys::FILE);
    // One connection kept (as the liveness monitor and the leader lease
    // do), opened again
    // only when it broke: not a new session on the shared server (TLS
    // handshake, SCRAM) every few seconds.
    let mut session: Option<database::Connection> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(KEY_FOLLOW_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
        if session
            .as_ref()
            .is_none_or(|(client, _)| client.is_closed())
        {
            // The liveness monitor reports an unreachable server; nothing to add here.
            session = access.connect(&database).await.ok();
        }
        let Some((client, _)) = &session else {
            continue;
        };
        let shared = database::shared::fetch(client, auth::keys::FILE).await;
        let Ok(Some(shared)) = shared else { continue };
        if std::fs::read_to_string(&path).is_ok_and(|local| local == shared) {
            continue;
        }
        let loaded = fsutil::write_atomic(&path, shared.as_bytes(), 0o600)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                SigningKeys::load_or_create(&secrets_dir, ttl, None).map_err(anyhow::Error::from)
            });
        match loaded {
            Ok(keys) => {
                *api.keys.write().expect("keys lock is never poisoned") = keys;
                info!("the token signing keys were rotated by another instance; using them");
            }
            Err(err) => {
                warn!(error = %format!("{err:#}"), "the shared token signing keys could not be loaded");
            }
        }
    }
}

/// The OS account generated files belong to: the embedded postgres's.
fn owner(access: &Access) -> Option<(nix::unistd::Uid, nix::unistd::Gid)> {
    access.owner()
}

/// `[database] url`: connection settings and TLS, plus the client tools
/// (`pg_dump`, `pg_restore`) for backups, found like the server's binaries
/// but never downloaded. Without them the daemon serves; backups fail and
/// say why.
async fn external_database(config: &Config, paths: &Paths, url: &str) -> Result<Access> {
    let run_dir = paths.run_dir();
    fsutil::ensure_dir(&run_dir, 0o700)
        .with_context(|| format!("creating {}", run_dir.display()))?;
    let (external, missing) =
        database::External::with_client_tools(&config.database, url, &paths.pg_installs())
            .await
            .context("configuring the external database ([database] url)")?;
    if let Some(err) = missing {
        warn!(error = %format!("{:#}", anyhow::Error::from(err)), "no PostgreSQL client tools found; backups will fail until [database] bin_dir names them");
    }
    info!(
        server = external.display(),
        sslmode = config.database.sslmode.as_str(),
        "using an external PostgreSQL; no embedded server"
    );
    Ok(Access::External(Arc::new(external)))
}

/// The supervisor's status stand-in when there is no supervised server.
fn external_status() -> postgres::Status {
    postgres::Status {
        state: State::Ready,
        pid: None,
        restarts: 0,
        last_exit: None,
        last_exit_code: None,
        since: SystemTime::now(),
    }
}

/// On the very first start there is no tenant and nobody can log in: create
/// the first tenant and its owner with a generated password, shown once.
///
/// On a terminal the password is printed there; otherwise (under systemd,
/// where stdout is the journal) it goes to a 0600 file and only the file's
/// path is logged. It is never written to the log.
async fn ensure_first_owner(access: &Access, name: &str, paths: &Paths) -> Result<()> {
    let (mut client, conn) = access
        .connect(name)
        .await
        .with_context(|| format!("connecting to database {name}"))?;
    // Several instances may start at once on an external database: one
    // creates the owner, the others wait and then find it. The lock is the
    // session's, so it goes with the connection.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&FIRST_OWNER_LOCK])
        .await
        .context("taking the first-start lock")?;
    if crm::tenant_count(&client).await? > 0 {
        drop(client);
        let _ = conn.await;
        return Ok(());
    }
    let password = crate::secrets::generate()[..24].to_string();
    let hash = auth::hash_password(password.clone()).await?;
    crm::create_tenant(&mut client, FIRST_TENANT).await?;
    crm::create_user(
        &client,
        FIRST_TENANT,
        FIRST_OWNER,
        "Owner",
        auth::Role::Owner,
        &hash,
    )
    .await?;
    drop(client);
    let _ = conn.await;
    let text = format!(
        "PagoDirecto first start: log in as {FIRST_OWNER} with password {password}\n\
         (tenant {FIRST_TENANT:?}; change it, or add users with `pagodirecto user add`)\n"
    );
    show_once(
        paths,
        INITIAL_OWNER_FILE,
        &text,
        "first start: the owner's one-time password is in this file; delete it after logging in",
    )
}

/// `--demo`: seeds the demo data set unless it is there, before the API
/// serves, so the first request already sees it. Its users' password is
/// shown like the first owner's: on a terminal, else in a 0600 file.
async fn seed_demo(access: &Access, name: &str, paths: &Paths) -> Result<()> {
    let (mut client, conn) = access
        .connect(name)
        .await
        .with_context(|| format!("connecting to database {name}"))?;
    let started = Instant::now();
    let seeded = demo::seed(&mut client)
        .await
        .context("seeding the demo data")?;
    drop(client);
    let _ = conn.await;
    let Some(seeded) = seeded else {
        info!("demo data already present; nothing added");
        return Ok(());
    };
    info!(elapsed = ?started.elapsed(), users = seeded.users.len(), "demo data seeded");
    let text = seeded.announcement();
    show_once(
        paths,
        DEMO_USERS_FILE,
        &text,
        "the demo users' one-time password is in this file",
    )
}

/// Shows a generated credential once, never through the log: on a terminal
/// it is printed there; otherwise (under systemd, where stdout is the
/// journal) it goes to a 0600 file in the secrets dir and only the file's
/// path is logged.
fn show_once(paths: &Paths, file: &str, text: &str, what: &str) -> Result<()> {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        print!("\n{text}\n");
        return Ok(());
    }
    let file = paths.secrets_dir().join(file);
    fsutil::write_atomic(&file, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", file.display()))?;
    info!(file = %file.display(), "{what}");
    Ok(())
}

/// Key of the advisory lock that serialises the first start ("pagofrst").
const FIRST_OWNER_LOCK: i64 = 0x7061_676f_6672_7374;

/// Where the demo users' password goes when there is no terminal.
pub const DEMO_USERS_FILE: &str = "demo-users.txt";

/// The tenant and owner the first start creates.
pub const FIRST_TENANT: &str = "default";
pub const FIRST_OWNER: &str = "owner@pagodirecto.local";
/// Where the first owner's password goes when there is no terminal.
pub const INITIAL_OWNER_FILE: &str = "initial-owner.txt";

/// Listens on `addrs` (from config `key`): on the socket passed in for an
/// address when there is one, else on a newly bound one.
fn listen(
    addrs: &[SocketAddr],
    key: &str,
    inherited: &mut Inherited,
) -> Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        match inherited.take(addr) {
            Some(listener) => {
                info!(addr = %listener.local_addr().map_or(addr, |a| a), "listening on an inherited socket");
                listeners.push(listener);
            }
            None => listeners.extend(bind(&[addr], key)?),
        }
    }
    Ok(listeners)
}

/// Binds `addrs` (from config `key`). `std` listeners: the accept loop takes
/// sockets bound by anyone, so handing sockets over later changes only this.
fn bind(addrs: &[SocketAddr], key: &str) -> Result<Vec<std::net::TcpListener>> {
    addrs
        .iter()
        .map(|addr| {
            std::net::TcpListener::bind(addr).with_context(|| {
                format!("cannot listen on {addr} ({key}); is another server using it?")
            })
        })
        .collect()
}

/// Removes the socket and address files a killed daemon may have left, so
/// the CLI never talks to a file that no daemon answers.
fn clear_runtime_files(paths: &Paths) {
    for file in [paths.control_socket(), paths.http_addr_file()] {
        let _ = std::fs::remove_file(file);
    }
}

struct StatusContext<'a> {
    cgroups: Arc<Cgroups>,
    exe: PathBuf,
    update_record: PathBuf,
    open_files: Option<u64>,
    config: &'a Config,
    source: String,
    access: &'a Access,
    leader: watch::Receiver<bool>,
    external: Option<database::monitor::Stats>,
    health: Arc<Health>,
    backups: Arc<Backups>,
    samples: telemetry::Samples,
    bound: Vec<SocketAddr>,
    started: Instant,
}

impl StatusContext<'_> {
    /// `ops.job_runs`, read within a second: `status` must answer when
    /// the database does not.
    async fn job_reports(&self) -> Vec<control::JobReport> {
        let database = self.access.app_database(&self.config.database.name);
        let read = database::jobs::all(self.access, &database);
        match tokio::time::timeout(Duration::from_secs(1), read).await {
            Ok(Ok(jobs)) => jobs
                .into_iter()
                .map(|(job, at, detail)| control::JobReport {
                    job,
                    last_success_at: at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    detail,
                })
                .collect(),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "status: cannot read ops.job_runs");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn report(&self, pg: &postgres::Status, reloader: &Reloader) -> StatusReport {
        // Every await before the report is built: a `watch` borrow (the
        // leader flag) held across an await would block its sender.
        let readiness = self.health.check().await;
        let jobs = self.job_reports().await;
        let leader = *self.leader.borrow();
        StatusReport {
            version: crate::update::VERSION.to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            data_dir: self.config.data_dir.clone(),
            config_source: self.source.clone(),
            listen: self.bound.iter().map(ToString::to_string).collect(),
            ready: readiness.ready(),
            checks: readiness
                .checks
                .into_iter()
                .map(|c| CheckReport {
                    name: c.name.to_string(),
                    ok: c.ok,
                    detail: c.detail,
                })
                .collect(),
            postgres: self.postgres_report(pg),
            external: self.external_report(),
            leader,
            backups: self.backup_report(&reloader.current.config),
            jobs,
            config_loaded_at: time::OffsetDateTime::from(reloader.loaded_at)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            restart_pending: reloader.restart_pending.clone(),
            config_error: reloader.last_error.clone(),
            resources: self.samples.latest().map(|s| ResourceReport {
                daemon_rss_bytes: s.daemon_rss_bytes,
                daemon_cpu_percent: s.daemon_cpu_percent,
                postgres_rss_bytes: s.postgres_rss_bytes,
                postgres_cpu_percent: s.postgres_cpu_percent,
                postgres_processes: s.postgres_processes,
                postgres_memory_budget_bytes: self.config.limits.postgres_memory.as_u64(),
                data_free_bytes: s.data_free_bytes,
                disk_reserve_bytes: self.config.limits.disk_reserve.as_u64(),
            }),
            limits: self.limits_report(),
            cgroup: self.cgroup_report(),
            exe: Some(self.exe.clone()),
            last_update: handover::Record::load(&self.update_record),
        }
    }

    fn limits_report(&self) -> LimitsReport {
        let limits = &self.config.limits;
        LimitsReport {
            memory_bytes: limits.memory.as_u64(),
            cpu_cores: limits.cpu,
            postgres_memory_bytes: limits.postgres_memory.as_u64(),
            postgres_cpu_cores: limits.postgres_cpu,
            max_connections: limits.max_connections,
            pool_size: limits.pool_size,
            max_concurrent_requests: self.config.server.max_concurrent_requests,
            disk_reserve_bytes: limits.disk_reserve.as_u64(),
            core_dumps: limits.core_dumps,
            open_files: self.open_files,
        }
    }

    fn cgroup_report(&self) -> CgroupReport {
        let usage = self.cgroups.postgres_usage();
        CgroupReport {
            mode: self.cgroups.mode().as_str().to_string(),
            note: self.cgroups.note().to_string(),
            postgres_dir: self
                .cgroups
                .postgres_dir()
                .map(std::path::Path::to_path_buf),
            postgres_memory_bytes: usage.map(|u| u.memory_bytes),
            postgres_memory_limit_bytes: usage.map(|u| u.memory_limit_bytes),
            postgres_memory_peak_bytes: usage.map(|u| u.memory_peak_bytes),
            postgres_oom_kills: usage.map(|u| u.oom_kills),
        }
    }

    fn postgres_report(&self, pg: &postgres::Status) -> PostgresReport {
        let since = SystemTime::now()
            .duration_since(pg.since)
            .unwrap_or_default()
            .as_secs();
        match self.access {
            Access::Embedded(cluster) => {
                let binaries = cluster.binaries();
                PostgresReport {
                    state: pg.state.as_str().to_string(),
                    pid: pg.pid,
                    restarts: pg.restarts,
                    last_exit: pg.last_exit.clone(),
                    state_since_secs: since,
                    version: binaries.version.clone(),
                    bin_dir: binaries.bin_dir.clone(),
                    origin: binaries.origin.as_str().to_string(),
                    os_user: cluster.account().map(|a| a.name.clone()),
                }
            }
            Access::External(_) => {
                let seen = self
                    .external
                    .as_ref()
                    .map(database::monitor::Stats::get)
                    .unwrap_or_default();
                PostgresReport {
                    state: if seen.reachable {
                        "reachable"
                    } else {
                        "unreachable"
                    }
                    .to_string(),
                    pid: None,
                    restarts: 0,
                    last_exit: seen.last_error.clone(),
                    state_since_secs: since,
                    version: seen.version.unwrap_or_default(),
                    bin_dir: PathBuf::new(),
                    origin: "external".to_string(),
                    os_user: None,
                }
            }
        }
    }

    fn external_report(&self) -> Option<ExternalReport> {
        let external = self.access.external()?;
        let seen = self
            .external
            .as_ref()
            .map(database::monitor::Stats::get)
            .unwrap_or_default();
        Some(ExternalReport {
            server: external.display().to_string(),
            reachable: seen.reachable,
            latency_ms: seen.latency.map(|d| d.as_secs_f64() * 1000.0),
            version: seen.version,
            last_error: seen.last_error,
            checked_secs_ago: seen
                .checked_at
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs()),
        })
    }

    fn backup_report(&self, current: &Config) -> BackupReport {
        let history = self.backups.history();
        let rfc = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let next = Schedule::parse(&current.backup.schedule)
            .ok()
            .flatten()
            .and_then(|s| s.next_after(&chrono::Local::now()))
            .map(|t| t.to_rfc3339());
        BackupReport {
            directory: self.backups.store().dir.clone(),
            count: self.backups.store().list().map_or(0, |l| l.len()),
            last_success: history.last_success.as_ref().map(|m| m.name.clone()),
            last_success_at: history.last_success.as_ref().map(|m| rfc(m.created_at)),
            last_size: history.last_success.as_ref().map(|m| m.size),
            last_duration_ms: history.last_success.as_ref().map(|m| m.duration_ms),
            last_failure: history
                .last_failure
                .map(|(at, e)| format!("{}: {e}", rfc(at))),
            last_verified_restorable_at: history.last_restorable.as_ref().map(|(at, _)| rfc(*at)),
            last_verified_restorable: history.last_restorable.map(|(_, name)| name),
            last_drill_failure: history
                .last_drill_failure
                .map(|(at, e)| format!("{}: {e}", rfc(at))),
            running: history
                .running
                .map(|(at, what)| format!("{what} since {}", rfc(at))),
            next_scheduled: next,
        }
    }
}

/// SIGTERM/SIGINT (stop) and SIGHUP (reload), installed before anything
/// starts so a signal during start-up is not the default "die now".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        let install = |kind| signal(kind).context("installing signal handlers");
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// The next SIGTERM or SIGINT; a SIGHUP meanwhile is logged and ignored.
    async fn next_stop(&mut self) -> &'static str {
        loop {
            match self.next().await {
                "SIGHUP" => warn!("SIGHUP during start-up ignored"),
                name => return name,
            }
        }
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
