//! Generic child supervision: spawn, wait, restart with backoff, give up on a
//! crash loop, and stop with a signal ladder.
//!
//! Called by `postgres` (and anything else we ever run long-lived). Knows
//! nothing about PostgreSQL: what to run comes from [`Spec`], and what
//! happened goes out as [`ChildEvent`]s on the channel the caller handed in.
//!
//! Invariants:
//! - at most one child per [`supervise`] call is alive at any time;
//! - a child never outlives its supervisor: cancellation walks the stop
//!   ladder, a dropped future kills the child (`kill_on_drop`), and the child
//!   gets a parent-death signal, so even a SIGKILLed daemon leaves no child;
//! - every exit is reported before the restart, so watchers can mark the
//!   service down at once.

use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What to run and how to treat it.
pub struct Spec {
    /// A name for log lines and errors ("postgres").
    pub name: &'static str,
    /// Builds the command for each start. Runs before every (re)start, so it
    /// may also clean up what a previous run left behind.
    pub make_command: Box<dyn FnMut() -> io::Result<Command> + Send>,
    /// Receives every line the child writes to stdout or stderr.
    pub output: fn(&str),
    /// Signals tried in order by [`stop`], each with its grace period.
    pub stop_ladder: Vec<(Signal, Duration)>,
    /// Sent to the child by the kernel if the thread that spawned it dies.
    pub parent_death_signal: Signal,
    pub policy: RestartPolicy,
    pub limits: Limits,
}

/// Limits the child takes on between fork and exec, so they hold from its
/// first instruction and for every process it forks.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// `cgroup.procs` files the child writes itself into (see `cgroup`).
    pub cgroup_procs: Vec<PathBuf>,
    /// Keep the inherited core-dump limit; otherwise `RLIMIT_CORE` is 0.
    pub core_dumps: bool,
}

/// The open-files limit children get: PostgreSQL keeps up to
/// `max_files_per_process` (1000) open per backend, and some programs walk
/// every possible descriptor, so neither 1024 nor a million.
pub const CHILD_NOFILE: u64 = 65_536;

/// When a crash is "fast", how long to wait before restarting, and when to give up.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// A run shorter than this counts as a fast failure.
    pub stable_after: Duration,
    /// This many fast failures in a row end supervision with [`Error::CrashLoop`].
    pub max_fast_failures: u32,
    /// The delay before the first restart after a stable run.
    pub first_delay: Duration,
    /// Delays double per fast failure up to this.
    pub max_delay: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            stable_after: Duration::from_secs(30),
            max_fast_failures: 5,
            // A crash after a long healthy run restarts at once: recovery time
            // is what the API is unavailable for.
            first_delay: Duration::ZERO,
            max_delay: Duration::from_secs(5),
        }
    }
}

/// What the supervised child did; sent up to whoever started supervision.
#[derive(Debug, Clone)]
pub enum ChildEvent {
    Started {
        pid: u32,
    },
    Exited {
        pid: u32,
        status: ExitStatus,
        ran_for: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path} to put the child in its cgroup")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not start {name}")]
    Spawn {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{name} exited {count} times in a row within {stable_after:?} of starting (last: {last}); giving up"
    )]
    CrashLoop {
        name: &'static str,
        count: u32,
        stable_after: Duration,
        last: ExitStatus,
    },
}

/// Runs `spec`'s child until `cancel` fires (then stops it and returns
/// `Ok`) or it crash-loops (then returns the error for the daemon to exit on).
pub async fn supervise(
    mut spec: Spec,
    events: mpsc::UnboundedSender<ChildEvent>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let policy = spec.policy;
    let mut fast_failures = 0u32;
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let mut child = spawn(&mut spec)?;
        let pid = child.id().unwrap_or_default();
        let started = Instant::now();
        info!(service = spec.name, pid, "started");
        let _ = events.send(ChildEvent::Started { pid });
        let status = tokio::select! {
            status = child.wait() => status,
            () = cancel.cancelled() => {
                let status = stop(&mut child, &spec.stop_ladder).await;
                info!(service = spec.name, ?status, "stopped");
                if let Ok(status) = status {
                    let _ = events.send(ChildEvent::Exited { pid, status, ran_for: started.elapsed() });
                }
                return Ok(());
            }
        };
        let status = status.map_err(|source| Error::Spawn {
            name: spec.name,
            source,
        })?;
        let ran_for = started.elapsed();
        warn!(service = spec.name, pid, %status, ?ran_for, "exited unexpectedly");
        let _ = events.send(ChildEvent::Exited {
            pid,
            status,
            ran_for,
        });

        if ran_for >= policy.stable_after {
            fast_failures = 0;
        } else {
            fast_failures += 1;
            if fast_failures >= policy.max_fast_failures {
                return Err(Error::CrashLoop {
                    name: spec.name,
                    count: fast_failures,
                    stable_after: policy.stable_after,
                    last: status,
                });
            }
        }
        let delay = backoff(policy, fast_failures);
        info!(service = spec.name, ?delay, "restarting");
        tokio::select! {
            () = sleep(delay) => {}
            () = cancel.cancelled() => return Ok(()),
        }
    }
}

/// Zero (or `first_delay`) after a stable run, then 100 ms doubling per fast
/// failure, capped at `max_delay`.
fn backoff(policy: RestartPolicy, fast_failures: u32) -> Duration {
    if fast_failures == 0 {
        return policy.first_delay;
    }
    let factor = 1u32 << fast_failures.saturating_sub(1).min(16);
    (Duration::from_millis(100) * factor)
        .min(policy.max_delay)
        .max(policy.first_delay)
}

fn spawn(spec: &mut Spec) -> Result<Child, Error> {
    let name = spec.name;
    let mut cmd = (spec.make_command)().map_err(|source| Error::Spawn { name, source })?;
    let death_signal = spec.parent_death_signal;
    // Opened here, as the daemon (root may write any cgroup; the child, after
    // its uid switch, may not open them), and written by the child: the
    // kernel checks the opener's credentials, and "0" means "me".
    let cgroups = spec
        .limits
        .cgroup_procs
        .iter()
        .map(|path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|source| Error::Cgroup {
                    path: path.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let core_dumps = spec.limits.core_dumps;
    let nofile = child_nofile();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Registered after the caller's own `pre_exec` hooks and run after std has
    // switched uid/gid: the kernel clears the parent-death signal on a
    // credential change, so it must be set last.
    // SAFETY: the closure only calls async-signal-safe functions (prctl,
    // setrlimit, write on descriptors opened before the fork) and allocates
    // nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            use nix::sys::resource::{Resource, setrlimit};
            for file in &cgroups {
                io::Write::write_all(&mut &*file, b"0")?;
            }
            nix::sys::prctl::set_pdeathsig(death_signal).map_err(io::Error::from)?;
            if !core_dumps {
                // No core dumps: they would hold the database's memory on disk.
                setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(io::Error::from)?;
            }
            if let Some((soft, hard)) = nofile {
                setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|source| Error::Spawn { name, source })?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out, spec.output));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err, spec.output));
    }
    Ok(child)
}

/// [`CHILD_NOFILE`] within our hard limit (soft, hard), or `None` when the
/// limits cannot be read.
fn child_nofile() -> Option<(u64, u64)> {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    Some((CHILD_NOFILE.min(hard), hard))
}

/// Raises this process's open-files soft limit to its hard limit: every
/// connection, pooled socket and log file is a descriptor, and the 1024
/// default is a number of clients, not a limit we chose. Returns the limit.
#[must_use]
pub fn raise_own_nofile() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    }
    Some(hard)
}

/// Sets this process's core-dump soft limit to 0, so every process it
/// starts (initdb, pg_dump, psql… not only supervised children) inherits
/// it: a core of any of them may hold customer data.
pub fn forbid_own_core_dumps() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, hard);
    }
}

async fn forward_lines(stream: impl AsyncRead + Unpin, output: fn(&str)) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        output(&line);
    }
}

/// Stops `child` by walking `ladder`: each signal gets its grace period
/// before the next one is tried, and SIGKILL comes only after the ladder.
///
/// For postgres the ladder is SIGINT ("fast": aborts transactions, writes a
/// shutdown checkpoint) then SIGQUIT ("immediate": WAL replay on next start).
/// The PostgreSQL docs advise against SIGKILL on the postmaster, so it is the
/// last resort, not the second step.
pub async fn stop(child: &mut Child, ladder: &[(Signal, Duration)]) -> io::Result<ExitStatus> {
    for &(signal, grace) in ladder {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), signal); // ESRCH: already gone; wait() sees it
        }
        if let Ok(status) = timeout(grace, child.wait()).await {
            return status;
        }
        warn!(%signal, ?grace, "child still running after grace period");
    }
    child.kill().await?;
    child.wait().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &'static str, args: &'static [&'static str]) -> Spec {
        Spec {
            name: "test-child",
            make_command: Box::new(move || {
                let mut cmd = Command::new(program);
                cmd.args(args);
                Ok(cmd)
            }),
            output: |_| {},
            stop_ladder: vec![(Signal::SIGTERM, Duration::from_secs(2))],
            parent_death_signal: Signal::SIGKILL,
            policy: RestartPolicy::default(),
            limits: Limits::default(),
        }
    }

    #[tokio::test]
    async fn children_get_no_core_dumps_and_a_sane_open_files_limit() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(spec("sleep", &["60"]), tx, cancel.clone()));
        let Some(ChildEvent::Started { pid }) = rx.recv().await else {
            panic!("no start event")
        };
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let row = |name: &str| {
            limits
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .expect("row")
        };
        assert_eq!(row("Max core file size")[4..6], ["0", "0"], "{limits}");
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .expect("getrlimit");
        assert_eq!(
            row("Max open files")[3],
            CHILD_NOFILE.min(hard).to_string(),
            "{limits}"
        );
        cancel.cancel();
        task.await.expect("join").expect("clean stop");
    }

    #[tokio::test]
    async fn crash_loop_is_reported_not_hidden() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let err = supervise(spec("false", &[]), tx, CancellationToken::new())
            .await
            .expect_err("crash loop");
        assert!(matches!(err, Error::CrashLoop { count: 5, .. }), "{err}");
        let mut exits = 0;
        while let Ok(event) = rx.try_recv() {
            if let ChildEvent::Exited { status, .. } = event {
                assert_eq!(status.code(), Some(1));
                exits += 1;
            }
        }
        assert_eq!(exits, 5, "every exit is reported before giving up");
    }

    #[tokio::test]
    async fn cancel_stops_the_child_with_the_ladder() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(spec("sleep", &["60"]), tx, cancel.clone()));
        let Some(ChildEvent::Started { pid }) = rx.recv().await else {
            panic!("no start event")
        };
        cancel.cancel();
        task.await.expect("join").expect("clean stop");
        let Some(ChildEvent::Exited { status, .. }) = rx.recv().await else {
            panic!("no exit event")
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
        assert!(
            kill(Pid::from_raw(i32::try_from(pid).expect("pid")), None).is_err(),
            "child is gone"
        );
    }

    #[tokio::test]
    async fn a_killed_child_is_restarted() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(spec("sleep", &["60"]), tx, cancel.clone()));
        let Some(ChildEvent::Started { pid }) = rx.recv().await else {
            panic!("no start event")
        };
        kill(
            Pid::from_raw(i32::try_from(pid).expect("pid")),
            Signal::SIGKILL,
        )
        .expect("kill");
        assert!(matches!(rx.recv().await, Some(ChildEvent::Exited { .. })));
        let Some(ChildEvent::Started { pid: second }) = rx.recv().await else {
            panic!("not restarted")
        };
        assert_ne!(pid, second);
        cancel.cancel();
        task.await.expect("join").expect("clean stop");
    }

    #[test]
    fn backoff_starts_immediately_and_doubles_to_a_cap() {
        let policy = RestartPolicy::default();
        let delays: Vec<_> = (0..8).map(|n| backoff(policy, n).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1600, 3200, 5000]);
    }
}
