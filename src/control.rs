//! The control socket: how the CLI talks to a running daemon.
//!
//! A Unix socket (0600) in the runtime dir; one JSON request per line, one
//! JSON response per line. The daemon answers requests in its event loop;
//! this module only carries them, so it knows nothing of the daemon.
//!
//! A request may add `"progress": true`: then, before its answer, the
//! daemon sends `{"progress":{"bytes":N}}` lines (at most five a second)
//! while a backup, verify or restore streams data. Clients that do not ask
//! get exactly one line, as before; a daemon that predates this ignores
//! the field, and the client then just gets the answer.
//!
//! Invariant: only the account that runs the daemon (and root) can connect:
//! the socket is created in a 0700 directory and set 0600 before use.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    BackupCreate {
        label: Option<String>,
    },
    BackupList,
    BackupVerify {
        name: Option<String>,
    },
    BackupPrune,
    BackupDrill,
    Restore {
        name: String,
    },
    /// The Prometheus text, as `/metrics` serves it.
    Metrics,
    /// Start signing access tokens with a new key; the old ones keep
    /// verifying until the tokens they signed expire.
    RotateKey,
    /// The binary at the daemon's path is now `version` (already verified
    /// and installed by the caller), whose migrations reach `schema`: back
    /// up, then hand the listening sockets over to it, and roll back to
    /// the running image if it is not ready in time. Answered once the
    /// backup is taken; the outcome shows in `status` (`last_update`).
    Upgrade {
        version: String,
        schema: i64,
    },
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub data_dir: PathBuf,
    pub config_source: String,
    pub listen: Vec<String>,
    pub ready: bool,
    pub checks: Vec<CheckReport>,
    pub postgres: PostgresReport,
    /// Set when the database is an external server (`[database] url`).
    #[serde(default)]
    pub external: Option<ExternalReport>,
    /// Whether this instance runs the jobs that must run once (scheduled
    /// backups, drills, retention); always true with the embedded server.
    #[serde(default)]
    pub leader: bool,
    pub backups: BackupReport,
    /// The last success of each job that runs once across instances
    /// (`ops.job_runs`: whichever instance ran it); empty when the
    /// database could not be read.
    #[serde(default)]
    pub jobs: Vec<JobReport>,
    /// The latest resource sample (absent until the first one, ~5 s after start).
    pub resources: Option<ResourceReport>,
    /// The budget from `[limits]` and what enforces it.
    pub limits: LimitsReport,
    pub cgroup: CgroupReport,
    /// When the configuration was last (re)loaded.
    pub config_loaded_at: String,
    /// Changed keys that take effect only after a restart.
    pub restart_pending: Vec<String>,
    /// Why the last change to the config file was refused, if it was.
    pub config_error: Option<String>,
    /// The executable the daemon runs (what `update` replaces).
    #[serde(default)]
    pub exe: Option<PathBuf>,
    /// How the last update went (kept across restarts).
    #[serde(default)]
    pub last_update: Option<crate::handover::Record>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceReport {
    pub daemon_rss_bytes: u64,
    pub daemon_cpu_percent: f32,
    pub postgres_rss_bytes: u64,
    pub postgres_cpu_percent: f32,
    pub postgres_processes: u32,
    pub postgres_memory_budget_bytes: u64,
    pub data_free_bytes: u64,
    pub disk_reserve_bytes: u64,
}

/// `[limits]` as the daemon applies it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsReport {
    pub memory_bytes: u64,
    /// Cores; 0 = no limit.
    pub cpu_cores: f64,
    pub postgres_memory_bytes: u64,
    pub postgres_cpu_cores: f64,
    pub max_connections: u32,
    pub pool_size: u32,
    pub max_concurrent_requests: usize,
    pub disk_reserve_bytes: u64,
    pub core_dumps: bool,
    /// The daemon's open-files limit (raised to the hard limit at start).
    pub open_files: Option<u64>,
}

/// Where PostgreSQL's cgroup is and what it has used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgroupReport {
    /// `v2`, `v1` or `none`.
    pub mode: String,
    /// Where the limits are applied, or why they are not.
    pub note: String,
    pub postgres_dir: Option<PathBuf>,
    pub postgres_memory_bytes: Option<u64>,
    pub postgres_memory_limit_bytes: Option<u64>,
    /// The highest memory use seen in PostgreSQL's group.
    pub postgres_memory_peak_bytes: Option<u64>,
    /// Postgres processes the kernel killed for crossing the memory limit.
    pub postgres_oom_kills: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    pub job: String,
    pub last_success_at: String,
    /// What it did: the backup's name, the drilled backup, the rows pruned.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BackupReport {
    pub directory: PathBuf,
    pub count: usize,
    pub last_success: Option<String>,
    pub last_success_at: Option<String>,
    pub last_size: Option<u64>,
    pub last_duration_ms: Option<u64>,
    pub last_failure: Option<String>,
    pub last_verified_restorable_at: Option<String>,
    pub last_verified_restorable: Option<String>,
    pub last_drill_failure: Option<String>,
    pub running: Option<String>,
    pub next_scheduled: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The external PostgreSQL as the liveness monitor last saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalReport {
    /// `host:port/database` (never the password).
    pub server: String,
    pub reachable: bool,
    pub latency_ms: Option<f64>,
    pub version: Option<String>,
    pub last_error: Option<String>,
    pub checked_secs_ago: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostgresReport {
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub state_since_secs: u64,
    pub version: String,
    pub bin_dir: PathBuf,
    pub origin: String,
    pub os_user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

/// A request waiting for the daemon's answer, and where the daemon may
/// report its progress.
pub type Pending = (
    Request,
    oneshot::Sender<Result<serde_json::Value, String>>,
    ProgressSink,
);

/// Where a long request reports how many bytes it has streamed so far; a
/// no-op unless the client asked for progress.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<Arc<watch::Sender<u64>>>);

impl ProgressSink {
    pub fn report(&self, bytes: u64) {
        if let Some(tx) = &self.0 {
            tx.send_replace(bytes);
        }
    }

    /// Whether the client is listening.
    #[must_use]
    pub fn wanted(&self) -> bool {
        self.0.is_some()
    }
}

/// The options a request line may carry beside the request itself.
#[derive(Deserialize)]
struct Options {
    #[serde(default)]
    progress: bool,
}

/// How often progress lines are sent at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pagodirecto is not running (no daemon answers on {path})")]
    NotRunning { path: PathBuf },
    #[error("cannot bind the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the daemon on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon answered something unexpected: {0}")]
    Protocol(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// Binds the socket, replacing a stale one (we hold the data-dir lock, so
/// no live daemon owns it).
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let bind_err = |source| Error::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(bind_err(err)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Accepts connections until `cancel`, forwarding each request to `requests`.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Pending>,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => { debug!(%err, "control accept failed"); continue; }
            },
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, requests).await {
                debug!(%err, "control connection failed");
            }
        });
    }
}

async fn answer(stream: UnixStream, requests: mpsc::Sender<Pending>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(err) => Reply::Error(format!("bad request: {err}")),
            Ok(request) => {
                let wants_progress =
                    serde_json::from_str::<Options>(&line).is_ok_and(|o| o.progress);
                let (progress_tx, mut progress_rx) = watch::channel(0u64);
                let sink = ProgressSink(wants_progress.then(|| Arc::new(progress_tx)));
                let (tx, mut rx) = oneshot::channel();
                if requests.send((request, tx, sink)).await.is_err() {
                    Reply::Error("the daemon is shutting down".into())
                } else {
                    let mut listening = wants_progress;
                    let answer = loop {
                        // Progress first: the last report made before the
                        // answer is always sent before it.
                        tokio::select! {
                            biased;
                            changed = progress_rx.changed(), if listening => {
                                if changed.is_err() {
                                    listening = false;
                                    continue;
                                }
                                let bytes = *progress_rx.borrow_and_update();
                                let mut out = serde_json::to_vec(
                                    &serde_json::json!({ "progress": { "bytes": bytes } }),
                                )
                                .map_err(io::Error::other)?;
                                out.push(b'\n');
                                write.write_all(&out).await?;
                                tokio::time::sleep(PROGRESS_EVERY).await;
                            }
                            answer = &mut rx => break answer,
                        }
                    };
                    match answer {
                        Ok(Ok(value)) => Reply::Ok(value),
                        Ok(Err(err)) => Reply::Error(err),
                        Err(_) => Reply::Error("the daemon is shutting down".into()),
                    }
                }
            }
        };
        let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

/// Sends one request to the daemon whose control socket is `path`.
pub async fn call(path: &Path, request: &Request) -> Result<serde_json::Value, Error> {
    exchange(path, request, None).await
}

/// [`call`], asking the daemon for progress: `on_progress` gets the bytes
/// streamed so far, as often as the daemon reports them, before the answer.
pub async fn call_with_progress(
    path: &Path,
    request: &Request,
    mut on_progress: impl FnMut(u64) + Send,
) -> Result<serde_json::Value, Error> {
    exchange(path, request, Some(&mut on_progress)).await
}

async fn exchange(
    path: &Path,
    request: &Request,
    mut on_progress: Option<&mut (dyn FnMut(u64) + Send)>,
) -> Result<serde_json::Value, Error> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(Error::NotRunning {
                path: path.to_path_buf(),
            });
        }
        Err(err) => return Err(io_err(err)),
    };
    let (read, mut write) = stream.into_split();
    let mut message = serde_json::to_value(request).map_err(|e| Error::Protocol(e.to_string()))?;
    if on_progress.is_some()
        && let Some(object) = message.as_object_mut()
    {
        object.insert("progress".into(), true.into());
    }
    let mut line = serde_json::to_vec(&message).map_err(|e| Error::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io_err)?;
    let mut lines = BufReader::new(read).lines();
    loop {
        let answer = lines
            .next_line()
            .await
            .map_err(io_err)?
            .ok_or_else(|| Error::Protocol("connection closed without an answer".into()))?;
        let value: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| Error::Protocol(e.to_string()))?;
        if let Some(bytes) = value
            .get("progress")
            .and_then(|p| p.get("bytes"))
            .and_then(serde_json::Value::as_u64)
        {
            if let Some(report) = on_progress.as_mut() {
                report(bytes);
            }
            continue;
        }
        return match serde_json::from_value::<Reply>(value)
            .map_err(|e| Error::Protocol(e.to_string()))?
        {
            Reply::Ok(value) => Ok(value),
            Reply::Error(err) => Err(Error::Refused(err)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[tokio::test]
    async fn a_request_reaches_the_daemon_and_its_answer_comes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let listener = bind(&path).expect("bind");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        let (tx, mut rx) = mpsc::channel::<Pending>(4);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, tx, cancel.clone()));
        tokio::spawn(async move {
            while let Some((request, reply, progress)) = rx.recv().await {
                assert_eq!(request, Request::Status);
                assert!(!progress.wanted(), "progress only when asked for");
                let _ = reply.send(Ok(serde_json::json!({"pong": true})));
            }
        });
        let value = call(&path, &Request::Status).await.expect("answer");
        assert_eq!(value["pong"], true);
        cancel.cancel();
    }

    #[tokio::test]
    async fn progress_lines_come_before_the_answer_only_when_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let listener = bind(&path).expect("bind");
        let (tx, mut rx) = mpsc::channel::<Pending>(4);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, tx, cancel.clone()));
        tokio::spawn(async move {
            while let Some((_, reply, progress)) = rx.recv().await {
                for bytes in [10, 20, 30] {
                    progress.report(bytes);
                    tokio::task::yield_now().await;
                }
                let _ = reply.send(Ok(serde_json::json!({"done": progress.wanted()})));
            }
        });
        let request = Request::BackupVerify { name: None };
        let mut seen = Vec::new();
        let value = call_with_progress(&path, &request, |bytes| seen.push(bytes))
            .await
            .expect("answer");
        assert_eq!(value["done"], true);
        assert_eq!(seen.last(), Some(&30), "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");

        // A client that reads only one line (as before progress existed)
        // gets the answer as that line.
        let stream = UnixStream::connect(&path).await.expect("connect");
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"cmd\":\"backup_verify\",\"name\":null}\n")
            .await
            .expect("send");
        let line = BufReader::new(read)
            .lines()
            .next_line()
            .await
            .expect("read")
            .expect("a line");
        assert_eq!(line, r#"{"ok":{"done":false}}"#);
        cancel.cancel();
    }

    #[tokio::test]
    async fn no_socket_means_not_running() {
        let err = call(Path::new("/nonexistent/control.sock"), &Request::Status)
            .await
            .expect_err("none");
        assert!(matches!(err, Error::NotRunning { .. }), "{err}");
    }
}
