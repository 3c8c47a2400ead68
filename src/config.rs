//! The configuration: one TOML file, overridden by `PAGODIRECTO_<SECTION>__<KEY>`
//! environment variables, overridden by command-line flags.
//!
//! Called by `cli` (which loads it) and `daemon` (which hands each subsystem
//! its own section). Imports nothing from the crate but `paths`.
//!
//! Invariant: [`Config::load`] is the only constructor of a [`Config`], and it
//! validates, so nothing downstream re-checks a value. Every error names the
//! key and where its value came from (the file, or the environment variable).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::paths::Paths;

pub mod watch;

/// Where the config is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/pagodirecto/pagodirecto.toml";
const ENV_PREFIX: &str = "PAGODIRECTO_";
/// Variables with our prefix that are not config keys: the build's version
/// (build.rs; cargo also sets it for `cargo run`/`cargo test`) and the
/// release script's signing key. A release engineer's shell has them.
const NOT_CONFIG: &[&str] = &[
    "PAGODIRECTO_VERSION",
    "PAGODIRECTO_SIGNING_KEY",
    "PAGODIRECTO_EXTRA_UPDATE_KEY",
    // Sockets passed from a previous process (`crate::handover::ENV`).
    "PAGODIRECTO_HANDOVER",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where all state lives; `/var/lib/pagodirecto` for root, else the XDG data dir.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub limits: LimitsConfig,
    pub logging: LogConfig,
    pub auth: AuthConfig,
    pub backup: BackupConfig,
    pub audit: AuditConfig,
    pub update: UpdateConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to listen on; port 0 picks a free port (see `run/http.addr`).
    pub listen: Vec<SocketAddr>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A request taking longer is answered 503 and abandoned.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests handled at once; beyond, 503 + Retry-After at once (no queue).
    pub max_concurrent_requests: usize,
    /// API requests (`/api/*`, `/openapi.json`) per minute per client
    /// address (a burst of this many is allowed); the web app's files and
    /// the probes are not counted.
    pub rate_limit_per_minute: u32,
    /// The same for `/api/v1/auth/*` (login, refresh): strict by default.
    pub auth_rate_limit_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed; none by default.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Client addresses that may read `/metrics` over HTTP (the control
    /// socket always serves it); loopback by default.
    pub metrics_allow: Vec<std::net::IpAddr>,
    /// `files`: TLS when `tls_cert` and `tls_key` are set, plain HTTP
    /// otherwise; `self-signed`: a certificate generated once into the data dir.
    pub tls: TlsMode,
    /// PEM certificate chain (leaf first); reloaded when the file changes.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`; reloaded when the file changes.
    pub tls_key: Option<PathBuf>,
    /// With TLS on: also listen here for plain HTTP that only redirects to HTTPS.
    pub redirect_http: Option<SocketAddr>,
    /// Origins (`https://crm.example.com`) whose browsers may call the API
    /// cross-origin; none by default.
    pub cors_origins: Vec<String>,
    /// The largest request body accepted (413 beyond).
    pub max_body: ByteSize,
    /// A client must send its request headers within this time (and finish
    /// the TLS handshake), or the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

/// Where the HTTPS certificate comes from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// From `tls_cert`/`tls_key` when they are set; plain HTTP otherwise.
    #[default]
    Files,
    /// Generated on first start and kept in the data dir (LAN demos).
    SelfSigned,
}

impl ServerConfig {
    /// Whether the listeners speak TLS.
    #[must_use]
    pub fn tls_enabled(&self) -> bool {
        self.tls == TlsMode::SelfSigned || self.tls_cert.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Use the PostgreSQL binaries in this directory and nowhere else.
    pub bin_dir: Option<PathBuf>,
    /// The PostgreSQL version downloaded when no binaries are found
    /// (a theseus-rs/postgresql-binaries release, e.g. "16.4.0").
    pub version: String,
    /// Base URL of the release source that downloads come from:
    /// `<mirror>/<version>/postgresql-<version>-<target>.tar.gz` (+ `.sha256`).
    pub mirror: String,
    /// Whether a missing PostgreSQL may be downloaded at start.
    pub download: bool,
    /// The account postgres runs as when the daemon is root.
    /// Default: `pagodirecto`, else `postgres`, whichever exists.
    pub os_user: Option<String>,
    /// The database the application uses.
    pub name: String,
    /// Port number; with no TCP it only names the socket file.
    pub port: u16,
    /// TCP addresses for postgres (`listen_addresses`); empty = Unix socket only.
    pub listen_addresses: String,
    /// How long postgres may take to accept connections after a (re)start.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// postgresql.conf settings that win over the ones derived from `[limits]`.
    pub settings: BTreeMap<String, String>,
    /// An external PostgreSQL (`postgres://user@host:port/db`): no embedded
    /// server is started; see README "External database".
    pub url: Option<String>,
    /// TLS to the external server: disable, prefer, require, verify-full.
    pub sslmode: SslMode,
    /// CA certificate(s) (PEM) that `verify-full` trusts; default: the system's.
    pub ca_file: Option<PathBuf>,
    /// A file holding the url user's password (wins over `password`).
    pub password_file: Option<PathBuf>,
    /// The url user's password; meant for `PAGODIRECTO_DATABASE__PASSWORD`.
    /// Never logged; `config show` redacts it.
    pub password: Option<Secret>,
}

/// TLS to an external PostgreSQL, named as libpq names it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`PGSSLMODE`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// A string that `Debug` never shows.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory for the whole appliance (daemon, PostgreSQL, backup tools):
    /// the limit on its cgroup where the host allows one.
    pub memory: ByteSize,
    /// Cores for the whole appliance (e.g. 1.5); 0 = no limit.
    pub cpu: f64,
    /// PostgreSQL's share of `memory`: its cgroup's limit, and what
    /// shared_buffers, work_mem… derive from.
    pub postgres_memory: ByteSize,
    /// PostgreSQL's share of `cpu`, in cores; 0 = as much as `cpu`.
    pub postgres_cpu: f64,
    /// Let the processes we start write core dumps (off: a postgres core
    /// holds the database's memory, customer data included).
    pub core_dumps: bool,
    /// PostgreSQL `max_connections`.
    pub max_connections: u32,
    /// Connections the daemon's pool may open (must leave room for tools).
    pub pool_size: u32,
    /// Free space below which the data dir counts as full: `/ready` fails.
    pub disk_reserve: ByteSize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `pagodirecto=debug,postgres=warn`.
    pub level: String,
    /// Directory for the rolling files; default `<data_dir>/logs`.
    pub directory: Option<PathBuf>,
    pub format: LogFormat,
    /// Daily files older than this many days are deleted.
    pub keep_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Where backups go; default `<data_dir>/backups`.
    pub directory: Option<PathBuf>,
    /// When to back up: a 5-field cron expression in local time ("" = never).
    pub schedule: String,
    /// Backups older than this many days are deleted…
    pub keep_days: u32,
    /// …except the newest `keep_last` good ones, whatever their age.
    pub keep_last: u32,
    /// age recipients (`age1…`): when set, backups are encrypted to them.
    pub recipients: Vec<String>,
    /// An age identity file that decrypts them, for verify, drill and restore.
    pub identity_file: Option<PathBuf>,
    /// When to run a restore drill of the newest backup ("" = never).
    pub drill: String,
    /// zstd level (1–19): 3 is fast; higher is smaller and slower.
    pub compression_level: i32,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            directory: None,
            schedule: "0 2 * * *".into(),
            keep_days: 30,
            keep_last: 7,
            recipients: Vec::new(),
            identity_file: None,
            drill: "30 3 * * 0".into(),
            compression_level: 3,
        }
    }
}

/// How long the audit log is kept. Pruning is a job that runs once across
/// instances (the leader's), as the tables' owner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit rows older than this many days are deleted; 0 = kept forever.
    pub keep_days: u32,
    /// When to prune: a 5-field cron expression in local time ("" = never).
    pub prune_schedule: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            keep_days: 365,
            prune_schedule: "15 4 * * *".into(),
        }
    }
}

/// Self-update of a standalone install (`pagodirecto update`, see
/// `crate::update`); a .deb install is updated by apt and ignores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// Base URL of a GitHub-style releases API: releases are listed from
    /// `<feed>/repos/<repo>/releases`. Any mirror serving that shape works.
    pub feed: String,
    /// `owner/name` of the repository whose releases are followed.
    pub repo: String,
    /// `stable` follows releases only; `beta` also takes pre-releases.
    pub channel: UpdateChannel,
    /// Check on a schedule (`check_every`, with jitter) and apply what is found.
    pub automatic: bool,
    /// How often an automatic check runs.
    #[serde(with = "humantime_serde")]
    pub check_every: Duration,
    /// How long a new version gets to become ready before it is rolled back.
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
}

/// Which releases of the feed an install follows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpdateChannel {
    /// Releases only: no semver pre-release, nothing the feed flags `prerelease`.
    #[default]
    Stable,
    /// Releases and pre-releases.
    Beta,
}

impl UpdateChannel {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Beta => "beta",
        }
    }
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            feed: "https://api.github.com".into(),
            repo: "pagodirecto/pagodirecto".into(),
            channel: UpdateChannel::Stable,
            automatic: false,
            check_every: Duration::from_secs(24 * 3600),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

impl AuditConfig {
    /// The schedule pruning actually follows: none when rows are kept forever.
    #[must_use]
    pub fn effective_schedule(&self) -> &str {
        if self.keep_days == 0 {
            ""
        } else {
            &self.prune_schedule
        }
    }
}

impl UpdateConfig {
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match reqwest::Url::parse(&self.feed) {
            Err(err) => out.push((
                "update.feed",
                format!("{:?} is not a URL: {err}", self.feed),
            )),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => out.push((
                "update.feed",
                format!("{:?} must be an http:// or https:// URL", self.feed),
            )),
            Ok(url) if url.query().is_some() || url.fragment().is_some() => out.push((
                "update.feed",
                format!(
                    "{:?} must be a base URL (no ?query or #fragment); releases are read from <feed>/repos/<repo>/releases",
                    self.feed
                ),
            )),
            Ok(_) => {}
        }
        let part_ok = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !matches!(self.repo.split_once('/'), Some((owner, name)) if part_ok(owner) && part_ok(name))
        {
            out.push((
                "update.repo",
                format!(
                    "{:?} must be owner/name, like \"pagodirecto/pagodirecto\"",
                    self.repo
                ),
            ));
        }
        if self.check_every < Duration::from_secs(10) {
            out.push(("update.check_every", "must be at least 10s".into()));
        }
        if self.ready_timeout < Duration::from_secs(1) {
            out.push(("update.ready_timeout", "must be at least 1s".into()));
        }
        out
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of an access token (JWT).
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token; each one works once.
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// Failed logins in a row that lock an account…
    pub lockout_after: u32,
    /// …for this long.
    #[serde(with = "humantime_serde")]
    pub lockout_for: Duration,
    /// Failed logins from one client address per window before it gets 429s.
    pub ip_failure_limit: u32,
    #[serde(with = "humantime_serde")]
    pub ip_failure_window: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            lockout_after: 5,
            lockout_for: Duration::from_secs(15 * 60),
            ip_failure_limit: 20,
            ip_failure_window: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            limits: LimitsConfig::default(),
            logging: LogConfig::default(),
            auth: AuthConfig::default(),
            backup: BackupConfig::default(),
            audit: AuditConfig::default(),
            update: UpdateConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            drain_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            rate_limit_per_minute: 1200,
            auth_rate_limit_per_minute: 30,
            trusted_proxies: Vec::new(),
            metrics_allow: vec![
                std::net::IpAddr::from([127, 0, 0, 1]),
                std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ],
            tls: TlsMode::Files,
            tls_cert: None,
            tls_key: None,
            redirect_http: None,
            cors_origins: Vec::new(),
            max_body: ByteSize::mib(1),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            bin_dir: None,
            version: "16.4.0".into(),
            mirror: "https://github.com/theseus-rs/postgresql-binaries/releases/download".into(),
            download: true,
            os_user: None,
            name: "pagodirecto".into(),
            port: 5432,
            listen_addresses: String::new(),
            start_timeout: Duration::from_secs(60),
            settings: BTreeMap::new(),
            url: None,
            sslmode: SslMode::default(),
            ca_file: None,
            password_file: None,
            password: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory: ByteSize::gib(1),
            cpu: 0.0,
            postgres_memory: ByteSize::mib(512),
            postgres_cpu: 0.0,
            core_dumps: false,
            max_connections: 40,
            pool_size: 16,
            disk_reserve: ByteSize::mib(512),
        }
    }
}

/// What one PostgreSQL connection costs at rest (its process, catalog
/// caches), for checking that a budget holds its `max_connections`.
pub const CONNECTION_MEMORY: ByteSize = ByteSize::mib(2);
/// What the daemon needs of `limits.memory` beside PostgreSQL's share.
pub const DAEMON_MEMORY: ByteSize = ByteSize::mib(64);

impl LimitsConfig {
    /// The budget's own consistency: shares within the whole, and
    /// PostgreSQL's share large enough for its shared_buffers (derived, or
    /// set in `[database.settings]`) and its connections.
    fn problems(&self, settings: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.postgres_memory.as_u64() + DAEMON_MEMORY.as_u64() > self.memory.as_u64() {
            out.push((
                "limits.postgres_memory",
                format!(
                    "{} does not fit in limits.memory ({}) with the {} the daemon needs; raise limits.memory or lower this share",
                    self.postgres_memory, self.memory, DAEMON_MEMORY
                ),
            ));
        }
        let connections = CONNECTION_MEMORY.as_u64() * u64::from(self.max_connections);
        let (shared_buffers, origin) = if let Some(value) = settings.get("shared_buffers") {
            let Some(bytes) = pg_memory(value, 8 * 1024) else {
                out.push((
                    "database.settings",
                    format!("shared_buffers = {value:?} is not a PostgreSQL memory size (e.g. \"128MB\")"),
                ));
                return out;
            };
            (bytes, "set in database.settings")
        } else {
            (self.postgres_memory.as_u64() / 4, "derived")
        };
        if shared_buffers + connections > self.postgres_memory.as_u64() {
            out.push((
                "limits.postgres_memory",
                format!(
                    "{} cannot hold shared_buffers ({}, {origin}) plus {} connections at ~{} each; raise it, or lower shared_buffers or limits.max_connections",
                    self.postgres_memory,
                    ByteSize(shared_buffers),
                    self.max_connections,
                    CONNECTION_MEMORY
                ),
            ));
        }
        for (key, cores) in [
            ("limits.cpu", self.cpu),
            ("limits.postgres_cpu", self.postgres_cpu),
        ] {
            if !(cores == 0.0 || (0.01..=1024.0).contains(&cores)) {
                out.push((
                    key,
                    format!("{cores} must be 0 (no limit) or between 0.01 and 1024 cores"),
                ));
            }
        }
        if self.cpu > 0.0 && self.postgres_cpu > self.cpu {
            out.push((
                "limits.postgres_cpu",
                format!(
                    "{} cores is more than limits.cpu ({})",
                    self.postgres_cpu, self.cpu
                ),
            ));
        }
        out
    }
}

/// A PostgreSQL memory setting in bytes: `128MB`, `1GB`, `512kB`, or a bare
/// number of `unit`-byte units (8 kB pages for shared_buffers).
fn pg_memory(value: &str, unit: u64) -> Option<u64> {
    let value = value.trim().trim_matches('\'');
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale = match suffix.trim() {
        "" => unit,
        "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(scale)
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            directory: None,
            format: LogFormat::Text,
            keep_days: 14,
        }
    }
}

/// `/var/lib/pagodirecto` for root (the packaged service), else the XDG data
/// dir, so a laptop user never needs write access to /var.
#[must_use]
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/pagodirecto");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("pagodirecto")
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Where the config was read from, for messages and `config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Defaults,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// A validated configuration and the file it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: ConfigSource,
    /// The command-line values, kept so a reload applies them again.
    pub overrides: Overrides,
}

impl Loaded {
    /// Loads again from the same file, environment and flags (a reload).
    pub fn reload(&self) -> Result<Loaded, ConfigError> {
        let explicit = match &self.source {
            ConfigSource::File(path) => Some(path.as_path()),
            ConfigSource::Defaults => None,
        };
        Config::load(explicit, &self.overrides)
    }

    /// The dotted keys whose values differ between `self` and `other`.
    #[must_use]
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(&self.config).unwrap_or_default(),
            serde_json::to_value(other).unwrap_or_default(),
        );
        let mut out = Vec::new();
        diff("", &a, &b, &mut out);
        out
    }
}

fn diff(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b))
            if prefix.matches('.').count() < 1 =>
        {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                diff(
                    &path,
                    a.get(key).unwrap_or(&serde_json::Value::Null),
                    b.get(key).unwrap_or(&serde_json::Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

impl Config {
    /// Reads `explicit` (or the default file when it exists), applies the
    /// environment and `overrides`, and validates.
    pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<Loaded, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(explicit, Path::new(DEFAULT_CONFIG_FILE), overrides, &env)
    }

    /// [`Config::load`] with the environment and default location passed in, for tests.
    pub fn load_with_env(
        explicit: Option<&Path>,
        default_file: &Path,
        overrides: &Overrides,
        env: &[(String, String)],
    ) -> Result<Loaded, ConfigError> {
        let file = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => default_file.exists().then(|| default_file.to_path_buf()),
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let source = match file {
            Some(path) => {
                // Read it ourselves first: figment treats a missing file as empty,
                // and an unreadable one must be an error that names it.
                std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                figment = figment.merge(Toml::file_exact(&path));
                ConfigSource::File(path)
            }
            None => ConfigSource::Defaults,
        };
        figment = figment.merge(EnvVars(env.to_vec()));
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("data_dir", dir));
        }
        if !overrides.listen.is_empty() {
            figment = figment.merge(Serialized::default("server.listen", &overrides.listen));
        }
        let config: Config = figment
            .extract()
            .map_err(|err| ConfigError::Invalid(describe(err)))?;
        let problems = config.problems();
        if !problems.is_empty() {
            let at = |key: &str| origin(&figment, key);
            return Err(ConfigError::Invalid(
                problems
                    .into_iter()
                    .map(|(key, msg)| format!("{key}: {msg} ({})", at(key)))
                    .collect(),
            ));
        }
        Ok(Loaded {
            config,
            source,
            overrides: overrides.clone(),
        })
    }

    /// Parses a TOML string on top of the defaults, with no environment: for tests.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().map_err(|source| ConfigError::Read {
            path: "tmp".into(),
            source,
        })?;
        let path = dir.path().join("pagodirecto.toml");
        std::fs::write(&path, text).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::load_with_env(
            Some(&path),
            Path::new("/nonexistent"),
            &Overrides::default(),
            &[],
        )
        .map(|loaded| loaded.config)
    }

    /// Checks that serde cannot express. Returns `(key, problem)` pairs.
    #[allow(clippy::too_many_lines)] // a flat list of independent checks
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.data_dir.is_absolute() {
            out.push((
                "data_dir",
                format!("must be an absolute path, not {}", self.data_dir.display()),
            ));
        }
        if self.server.max_concurrent_requests == 0 {
            out.push((
                "server.max_concurrent_requests",
                "must be at least 1".into(),
            ));
        }
        if self.server.rate_limit_per_minute == 0 || self.server.auth_rate_limit_per_minute == 0 {
            out.push((
                "server.rate_limit_per_minute",
                "rate limits must be at least 1 per minute".into(),
            ));
        }
        if self.server.request_timeout < Duration::from_secs(1) {
            out.push(("server.request_timeout", "must be at least 1s".into()));
        }
        if self.server.listen.is_empty() {
            out.push(("server.listen", "needs at least one address".into()));
        }
        out.extend(self.server.tls_problems());
        for origin in &self.server.cors_origins {
            if let Err(why) = check_origin(origin) {
                out.push((
                    "server.cors_origins",
                    format!("{origin:?} is not an origin: {why}"),
                ));
            }
        }
        if self.server.max_body < ByteSize::kib(1) {
            out.push(("server.max_body", "must be at least 1 KiB".into()));
        }
        if self.server.header_read_timeout < Duration::from_secs(1) {
            out.push(("server.header_read_timeout", "must be at least 1s".into()));
        }
        if self.limits.postgres_memory < ByteSize::mib(64) {
            out.push((
                "limits.postgres_memory",
                format!(
                    "{} is too small for PostgreSQL; at least 64 MiB",
                    self.limits.postgres_memory
                ),
            ));
        }
        out.extend(self.limits.problems(&self.database.settings));
        if self.limits.max_connections < 5 {
            out.push(("limits.max_connections", "must be at least 5".into()));
        }
        if self.limits.pool_size == 0 || self.limits.pool_size + 3 > self.limits.max_connections {
            out.push((
                "limits.pool_size",
                format!(
                    "must be between 1 and limits.max_connections - 3 ({}), leaving room for backups and psql",
                    self.limits.max_connections.saturating_sub(3)
                ),
            ));
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.logging.level) {
            out.push((
                "logging.level",
                format!("{:?} is not a valid filter: {err}", self.logging.level),
            ));
        }
        if self.logging.keep_days == 0 {
            out.push(("logging.keep_days", "must be at least 1".into()));
        }
        if self.auth.access_token_ttl < Duration::from_secs(60)
            || self.auth.access_token_ttl > Duration::from_secs(24 * 3600)
        {
            out.push(("auth.access_token_ttl", "must be between 1m and 24h".into()));
        }
        if self.auth.refresh_token_ttl <= self.auth.access_token_ttl {
            out.push((
                "auth.refresh_token_ttl",
                "must be longer than auth.access_token_ttl".into(),
            ));
        }
        if self.auth.lockout_after == 0 {
            out.push(("auth.lockout_after", "must be at least 1".into()));
        }
        if self.auth.ip_failure_limit == 0 {
            out.push(("auth.ip_failure_limit", "must be at least 1".into()));
        }
        for (key, cron) in [
            ("backup.schedule", &self.backup.schedule),
            ("backup.drill", &self.backup.drill),
            ("audit.prune_schedule", &self.audit.prune_schedule),
        ] {
            if !cron.trim().is_empty()
                && let Err(err) = cron.parse::<croner::Cron>()
            {
                out.push((key, format!("{cron:?} is not a cron expression: {err}")));
            }
        }
        for recipient in &self.backup.recipients {
            if recipient.parse::<age::x25519::Recipient>().is_err() {
                out.push((
                    "backup.recipients",
                    format!("{recipient:?} is not an age recipient (age1…)"),
                ));
            }
        }
        if !(1..=19).contains(&self.backup.compression_level) {
            out.push((
                "backup.compression_level",
                "must be between 1 and 19".into(),
            ));
        }
        if self.database.start_timeout < Duration::from_secs(1) {
            out.push(("database.start_timeout", "must be at least 1s".into()));
        }
        if self.database.name.is_empty()
            || !self
                .database
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push((
                "database.name",
                "must be letters, digits and underscores".into(),
            ));
        }
        if let Some(url) = &self.database.url {
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                match url.parse::<tokio_postgres::Config>() {
                    Err(err) => out.push(("database.url", format!("cannot be parsed: {err}"))),
                    Ok(pg) if pg.get_dbname().is_none() || pg.get_user().is_none() => out.push((
                        "database.url",
                        "must name the user and the database: postgres://user@host:5432/database"
                            .into(),
                    )),
                    Ok(_) => {}
                }
            } else {
                out.push((
                    "database.url",
                    "must be a URL like postgres://user@host:5432/database".into(),
                ));
            }
        }
        if self.database.password_file.is_some() && self.database.password.is_some() {
            out.push((
                "database.password_file",
                "set either password_file or password (PAGODIRECTO_DATABASE__PASSWORD), not both"
                    .into(),
            ));
        }
        if self.database.url.is_none()
            && (self.database.password_file.is_some() || self.database.password.is_some())
        {
            out.push((
                "database.password",
                "is for an external database; set database.url too".into(),
            ));
        }
        for key in self.database.settings.keys() {
            if !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                out.push((
                    "database.settings",
                    format!("{key:?} is not a PostgreSQL setting name"),
                ));
            }
        }
        out.extend(self.update.problems());
        out
    }

    #[must_use]
    pub fn paths(&self) -> Paths {
        Paths::new(
            self.data_dir.clone(),
            self.logging.directory.clone(),
            self.backup.directory.clone(),
        )
    }

    /// The config as TOML with secrets replaced, for `config show`.
    #[must_use]
    pub fn to_redacted_toml(&self) -> String {
        // Generated passwords live in the data dir, never in the config; the
        // external database's password (and one written into its url) is
        // the only secret a config can hold.
        let mut shown = self.clone();
        if shown.database.password.is_some() {
            shown.database.password = Some(Secret("<redacted>".into()));
        }
        if let Some(url) = &mut shown.database.url {
            *url = redact_url(url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

impl ServerConfig {
    fn tls_problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                out.push(("server.tls_key", "must be set with server.tls_cert".into()));
            }
            (None, Some(_)) => {
                out.push(("server.tls_cert", "must be set with server.tls_key".into()));
            }
            _ => {}
        }
        for (key, path) in [
            ("server.tls_cert", &self.tls_cert),
            ("server.tls_key", &self.tls_key),
        ] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                out.push((key, "must be an absolute path".into()));
            }
        }
        if self.tls == TlsMode::SelfSigned && self.tls_cert.is_some() {
            out.push((
                "server.tls",
                "\"self-signed\" generates its own certificate; remove server.tls_cert/tls_key or set tls = \"files\"".into(),
            ));
        }
        if self.redirect_http.is_some() && !self.tls_enabled() {
            out.push((
                "server.redirect_http",
                "redirects to HTTPS, so it needs TLS (server.tls_cert/tls_key or tls = \"self-signed\")".into(),
            ));
        }
        out
    }
}

/// Checks that `origin` is what browsers send in `Origin`: a scheme, a host
/// and maybe a port, nothing else (no path, no trailing slash, no wildcard).
fn check_origin(origin: &str) -> Result<(), &'static str> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("must start with https:// or http://")?;
    if rest.is_empty() {
        return Err("has no host");
    }
    if rest.contains(['/', '*', '?', '#', '@', ' ']) {
        return Err("must be scheme://host[:port] only (no path, wildcard or trailing slash)");
    }
    if rest.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("must be lower-case, as browsers send it");
    }
    Ok(())
}

/// `PAGODIRECTO_<SECTION>__<KEY>` variables as a figment provider.
///
/// figment's own `Env` reads the live process environment; this one reads a
/// snapshot, so tests pass their own and a loaded config never depends on
/// when it was read. Values parse like `Env`'s: `60` is a number, `true` a bool.
struct EnvVars(Vec<(String, String)>);

impl figment::Provider for EnvVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if NOT_CONFIG.contains(&name.as_str()) {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if key.split('.').any(str::is_empty) {
                continue;
            }
            let parsed: figment::value::Value =
                value.parse().expect("figment's value parse is infallible");
            if let Some(nested) = figment::util::nest(&key, parsed).into_dict() {
                dict = merge_dicts(dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_dicts(
    mut base: figment::value::Dict,
    other: figment::value::Dict,
) -> figment::value::Dict {
    use figment::value::Value;
    for (key, value) in other {
        let merged = match (base.remove(&key), value) {
            (Some(Value::Dict(_, a)), Value::Dict(tag, b)) => Value::Dict(tag, merge_dicts(a, b)),
            (_, value) => value,
        };
        base.insert(key, merged);
    }
    base
}

/// Turns figment's errors into one line each: `key: problem (where)`.
fn describe(err: figment::Error) -> Vec<String> {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let problem = match &e.kind {
                figment::error::Kind::UnknownField(_, expected) => {
                    format!("unknown key (known keys here: {})", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            let mut line = if key.is_empty() {
                problem
            } else {
                format!("{key}: {problem}")
            };
            if let Some(md) = &e.metadata {
                let _ = write!(line, " ({})", source_name(md, &key));
            }
            line
        })
        .collect()
}

fn origin(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map_or_else(|| "built-in default".to_string(), |md| source_name(md, key))
}

fn source_name(md: &figment::Metadata, key: &str) -> String {
    match &md.source {
        Some(figment::Source::File(path)) => format!("in {}", path.display()),
        _ if md.name.contains("environment") => {
            format!(
                "from environment variable {ENV_PREFIX}{}",
                key.to_ascii_uppercase().replace('.', "__")
            )
        }
        _ if md.name.contains("Serialized") => "from the command line or defaults".to_string(),
        _ => format!("from {}", md.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_invalid(toml: &str, expected: &str) {
        let err = Config::from_toml(toml).expect_err("config should be refused");
        let text = err.to_string();
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }

    #[test]
    fn external_database_keys_are_checked() {
        check_invalid(
            "[database]\nurl = \"mysql://x@h/db\"",
            "database.url: must be a URL",
        );
        check_invalid(
            "[database]\nurl = \"postgres://h:5432/db\"",
            "database.url: must name the user",
        );
        check_invalid("[database]\nsslmode = \"sometimes\"", "sslmode");
        check_invalid(
            "[database]\npassword = \"x\"",
            "database.password: is for an external database",
        );
        let config = Config::from_toml(
            "[database]\nurl = \"postgres://app@db.example:6432/crm\"\nsslmode = \"verify-full\"",
        )
        .expect("valid");
        assert_eq!(config.database.sslmode, SslMode::VerifyFull);
    }

    #[test]
    fn config_show_redacts_database_passwords() {
        let config = Config::from_toml(
            "[database]\nurl = \"postgres://app:hunter2@db.example/crm\"\npassword = \"s3cret\"",
        )
        .expect("valid");
        let shown = config.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://app:<redacted>@db.example/crm"),
            "{shown}"
        );
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_toml("").expect("defaults");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn the_packaged_config_file_is_valid_and_documents_the_defaults() {
        let config =
            Config::from_toml(include_str!("../packaging/pagodirecto.toml")).expect("valid");
        // Set, not commented: the service's locations (see the file's header).
        let expected = Config {
            data_dir: "/var/lib/pagodirecto".into(),
            logging: LogConfig {
                directory: Some("/var/log/pagodirecto".into()),
                ..LogConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn unknown_key_names_the_key_and_file() {
        check_invalid(
            "[server]\nlisten_on = []",
            "server.listen_on: unknown key (known keys here: listen, drain_timeout, request_timeout",
        );
        check_invalid("[server]\nlisten_on = []", "pagodirecto.toml");
        check_invalid("[serverz]\n", "serverz: unknown key");
    }
    #[test]
    fn bad_value_names_the_key() {
        check_invalid(
            "[limits]\nmax_connections = \"many\"",
            "limits.max_connections: invalid type",
        );
        check_invalid("[server]\nlisten = [\"localhost\"]", "server.listen");
        check_invalid("[logging]\nformat = \"xml\"", "logging.format");
    }
    #[test]
    fn backup_settings_are_checked() {
        check_invalid(
            "[backup]\nschedule = \"every day\"",
            "backup.schedule: \"every day\" is not a cron expression",
        );
        check_invalid("[backup]\nrecipients = [\"bob\"]", "backup.recipients");
        check_invalid(
            "[backup]\ncompression_level = 40",
            "backup.compression_level",
        );
        Config::from_toml("[backup]\nschedule = \"\"\ndrill = \"\"")
            .expect("empty schedules mean never");
    }

    #[test]
    fn audit_settings_are_checked() {
        check_invalid(
            "[audit]\nprune_schedule = \"daily\"",
            "audit.prune_schedule: \"daily\" is not a cron expression",
        );
        check_invalid("[audit]\nkeep_days = -1", "audit.keep_days");
        let forever = Config::from_toml("[audit]\nkeep_days = 0").expect("0 = forever");
        assert_eq!(forever.audit.effective_schedule(), "");
        assert_eq!(Config::default().audit.effective_schedule(), "15 4 * * *");
    }

    #[test]
    fn semantic_checks_name_the_key() {
        check_invalid(
            "[limits]\npostgres_memory = \"16MiB\"",
            "limits.postgres_memory: 16.0 MiB is too small",
        );
        check_invalid(
            "[limits]\npool_size = 100",
            "limits.pool_size: must be between",
        );
        check_invalid("[logging]\nlevel = \"info,[\"", "logging.level");
        check_invalid(
            "data_dir = \"relative\"",
            "data_dir: must be an absolute path",
        );
    }
    #[test]
    fn tls_cors_and_limits_are_checked() {
        check_invalid(
            "[server]\ntls_cert = \"/etc/c.pem\"",
            "server.tls_key: must be set with server.tls_cert",
        );
        check_invalid(
            "[server]\ntls_cert = \"c.pem\"\ntls_key = \"/k.pem\"",
            "server.tls_cert: must be an absolute path",
        );
        check_invalid(
            "[server]\ntls = \"self-signed\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"",
            "server.tls: \"self-signed\" generates its own",
        );
        check_invalid("[server]\ntls = \"yes\"", "server.tls");
        check_invalid(
            "[server]\nredirect_http = \"0.0.0.0:80\"",
            "server.redirect_http: redirects to HTTPS, so it needs TLS",
        );
        check_invalid(
            "[server]\ncors_origins = [\"https://crm.example.com/\"]",
            "server.cors_origins: \"https://crm.example.com/\" is not an origin",
        );
        check_invalid(
            "[server]\ncors_origins = [\"crm.example.com\"]",
            "must start with https://",
        );
        check_invalid("[server]\nmax_body = \"10B\"", "server.max_body");
        check_invalid(
            "[server]\nheader_read_timeout = \"0s\"",
            "server.header_read_timeout",
        );
        let config = Config::from_toml(
            "[server]\ntls = \"self-signed\"\nredirect_http = \"127.0.0.1:8081\"\ncors_origins = [\"https://crm.example.com:8443\"]\nmax_body = \"4MiB\"",
        )
        .expect("valid");
        assert!(config.server.tls_enabled());
        assert_eq!(config.server.max_body, ByteSize::mib(4));
    }

    #[test]
    fn the_budget_must_add_up() {
        check_invalid(
            "[limits]\nmemory = \"512MiB\"",
            "limits.postgres_memory: 512.0 MiB does not fit in limits.memory (512.0 MiB) with the 64.0 MiB the daemon needs",
        );
        check_invalid(
            "[database.settings]\nshared_buffers = \"1GB\"",
            "limits.postgres_memory: 512.0 MiB cannot hold shared_buffers (1.0 GiB, set in database.settings) plus 40 connections",
        );
        check_invalid(
            "[limits]\npostgres_memory = \"96MiB\"\nmax_connections = 100\npool_size = 10",
            "limits.postgres_memory: 96.0 MiB cannot hold shared_buffers (24.0 MiB, derived) plus 100 connections",
        );
        check_invalid(
            "[database.settings]\nshared_buffers = \"lots\"",
            "database.settings: shared_buffers = \"lots\" is not a PostgreSQL memory size",
        );
        check_invalid(
            "[limits]\ncpu = 1\npostgres_cpu = 2",
            "limits.postgres_cpu: 2 cores is more than limits.cpu (1)",
        );
        check_invalid("[limits]\ncpu = -1", "limits.cpu: -1 must be 0 (no limit)");
        let config = Config::from_toml(
            "[limits]\nmemory = \"4GiB\"\npostgres_memory = \"3GiB\"\ncpu = 2\npostgres_cpu = 1.5\n[database.settings]\nshared_buffers = \"131072\"",
        )
        .expect("a budget that adds up");
        assert!((config.limits.postgres_cpu - 1.5).abs() < f64::EPSILON);
    }

    #[test]
    fn update_settings_are_checked() {
        check_invalid(
            "[update]\nfeed = \"api.github.com\"",
            "update.feed: \"api.github.com\" is not a URL",
        );
        check_invalid(
            "[update]\nfeed = \"ftp://mirror.example/releases\"",
            "update.feed: \"ftp://mirror.example/releases\" must be an http:// or https:// URL",
        );
        check_invalid(
            "[update]\nfeed = \"https://mirror.example/?page=2\"",
            "update.feed: \"https://mirror.example/?page=2\" must be a base URL",
        );
        check_invalid(
            "[update]\nrepo = \"pagodirecto\"",
            "update.repo: \"pagodirecto\" must be owner/name",
        );
        check_invalid(
            "[update]\nrepo = \"a/b/c\"",
            "update.repo: \"a/b/c\" must be owner/name",
        );
        check_invalid("[update]\nchannel = \"nightly\"", "update.channel");
        check_invalid("[update]\ncheck_every = \"5s\"", "update.check_every");
        check_invalid("[update]\nready_timeout = \"0s\"", "update.ready_timeout");
        let config = Config::from_toml(
            "[update]\nfeed = \"http://127.0.0.1:8000/api\"\nrepo = \"acme/pago-directo.x\"\nchannel = \"beta\"\nautomatic = true\ncheck_every = \"6h\"\nready_timeout = \"2m\"",
        )
        .expect("valid");
        assert_eq!(config.update.channel, UpdateChannel::Beta);
        assert_eq!(config.update.check_every, Duration::from_secs(6 * 3600));
        assert_eq!(config.update.ready_timeout, Duration::from_secs(120));
    }

    #[test]
    fn postgres_memory_settings_parse_with_their_units() {
        assert_eq!(pg_memory("128MB", 8192), Some(128 << 20));
        assert_eq!(pg_memory("'1GB'", 8192), Some(1 << 30));
        assert_eq!(pg_memory("16384", 8192), Some(128 << 20));
        assert_eq!(pg_memory("1 GB", 8192), Some(1 << 30));
        assert_eq!(pg_memory("1gb", 8192), None);
    }

    #[test]
    fn sizes_and_durations_parse_from_human_units() {
        let config = Config::from_toml(
            "[limits]\nmemory = \"2GiB\"\npostgres_memory = \"1GiB\"\n[server]\ndrain_timeout = \"30s\"",
        )
        .expect("valid");
        assert_eq!(config.limits.postgres_memory, ByteSize::gib(1));
        assert_eq!(config.server.drain_timeout, Duration::from_secs(30));
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[limits]\nmax_connections = 50\npool_size = 10\n").expect("write");
        let env = vec![
            (
                "PAGODIRECTO_LIMITS__MAX_CONNECTIONS".to_string(),
                "60".to_string(),
            ),
            ("PAGODIRECTO_DATA_DIR".to_string(), "/srv/pd".to_string()),
        ];
        let loaded = Config::load_with_env(
            Some(&path),
            Path::new("/nonexistent"),
            &Overrides::default(),
            &env,
        )
        .expect("valid");
        assert_eq!(loaded.config.limits.max_connections, 60);
        assert_eq!(loaded.config.limits.pool_size, 10);
        assert_eq!(loaded.config.data_dir, PathBuf::from("/srv/pd"));

        let overrides = Overrides {
            data_dir: Some("/flag".into()),
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
        };
        let loaded =
            Config::load_with_env(Some(&path), Path::new("/nonexistent"), &overrides, &env)
                .expect("valid");
        assert_eq!(loaded.config.data_dir, PathBuf::from("/flag"));
        assert_eq!(loaded.config.server.listen, overrides.listen);
    }

    #[test]
    fn the_build_and_release_variables_are_not_config_keys() {
        let env = vec![
            ("PAGODIRECTO_VERSION".to_string(), "9.9.9".to_string()),
            ("PAGODIRECTO_SIGNING_KEY".to_string(), "/k".to_string()),
        ];
        let loaded =
            Config::load_with_env(None, Path::new("/nonexistent"), &Overrides::default(), &env)
                .expect("not config keys");
        assert_eq!(loaded.config, Config::default());
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let env = vec![(
            "PAGODIRECTO_LIMITS__MAX_CONNECTIONS".to_string(),
            "lots".to_string(),
        )];
        let err =
            Config::load_with_env(None, Path::new("/nonexistent"), &Overrides::default(), &env)
                .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("PAGODIRECTO_LIMITS__MAX_CONNECTIONS"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_explicit_file_is_an_error_naming_it() {
        let err = Config::load_with_env(
            Some(Path::new("/nonexistent/pd.toml")),
            Path::new("/nonexistent"),
            &Overrides::default(),
            &[],
        )
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "cannot read config file /nonexistent/pd.toml"
        );
    }

    #[test]
    fn the_default_file_is_used_only_when_it_exists() {
        let loaded = Config::load_with_env(
            None,
            Path::new("/nonexistent/x.toml"),
            &Overrides::default(),
            &[],
        )
        .expect("defaults");
        assert_eq!(loaded.source, ConfigSource::Defaults);
    }
}
