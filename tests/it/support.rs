//! The test harness: starts the real daemon on a temp data dir with port 0,
//! waits for it, talks HTTP to it, and always stops it the way systemd would
//! (SIGTERM, wait, only then SIGKILL), so no postgres is ever orphaned and
//! `cargo test` never hangs on an inherited pipe.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// Sends `signal` to `pid`; panics if it cannot be delivered.
pub fn send(pid: i64, signal: Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
    nix::sys::signal::kill(pid, signal).expect("deliver signal");
}

pub const BIN: &str = env!("CARGO_BIN_EXE_pagodirecto");

/// A data dir that outlives one daemon, so a test can restart on it.
pub struct DataDir {
    pub dir: tempfile::TempDir,
}

impl DataDir {
    pub fn new() -> Self {
        // Under /tmp (1777): the postgres account must be able to reach it.
        let dir = tempfile::Builder::new()
            .prefix("pd-it-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pgdata(&self) -> PathBuf {
        self.path().join("pg").join("data")
    }

    /// Runs a CLI command against this data dir and waits for it.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir").arg(self.path()).args(args);
        cmd.output().expect("run pagodirecto")
    }

    /// Starts `pagodirecto run` on this data dir (not waiting for it).
    ///
    /// Scheduled backups and drills are off (the default schedules would
    /// catch up a backup at every first start, and a drill at a restart
    /// that finds backups, racing what tests look at); tests of the
    /// schedule use [`DataDir::spawn_with_schedule`].
    pub fn spawn(&self, extra: &[&str]) -> Daemon {
        self.spawn_env(
            extra,
            &[
                ("PAGODIRECTO_BACKUP__SCHEDULE", ""),
                ("PAGODIRECTO_BACKUP__DRILL", ""),
            ],
        )
    }

    /// [`DataDir::spawn`] with the built-in backup and drill schedules.
    pub fn spawn_with_schedule(&self, extra: &[&str]) -> Daemon {
        self.spawn_env(extra, &[])
    }

    pub fn spawn_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.spawn_bin(Path::new(BIN), extra, env)
    }

    /// [`DataDir::spawn_env`] running the executable at `bin` (a copy that
    /// a test may replace, as an update does).
    pub fn spawn_bin(&self, bin: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = self.path().join(format!("daemon-{}.out", unique()));
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("clone");
        let child = Command::new(bin)
            .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.path())
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn daemon");
        Daemon {
            child: Some(child),
            data_dir: self.path().to_path_buf(),
            output: log,
            addr: None,
        }
    }

    /// Starts the daemon and waits until `/ready` answers 200.
    pub fn start(&self) -> Daemon {
        let mut daemon = self.spawn(&[]);
        daemon.wait_ready(Duration::from_secs(60));
        daemon
    }

    /// PostgreSQL processes whose working directory is this cluster.
    pub fn postgres_processes(&self) -> Vec<i32> {
        processes_in(&self.pgdata())
    }

    /// Waits until no postgres process runs in this cluster; panics otherwise.
    pub fn assert_no_postgres(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.postgres_processes().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres processes still running in {}: {:?}",
            self.pgdata().display(),
            self.postgres_processes()
        );
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

pub fn processes_in(dir: &Path) -> Vec<i32> {
    let Ok(target) = dir.canonicalize() else {
        return Vec::new();
    };
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == target))
        .collect()
}

pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub output: PathBuf,
    pub addr: Option<String>,
}

impl Daemon {
    /// A daemon started some other way (as the systemd unit would, in
    /// tests/package), writing its output to `output`.
    #[allow(dead_code)] // used by tests/package, which includes this file
    pub fn from_child(child: Child, data_dir: PathBuf, output: PathBuf) -> Self {
        Self {
            child: Some(child),
            data_dir,
            output,
            addr: None,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("running").id()).expect("pid")
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.output).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Polls until `/ready` is 200. Fails fast, with the daemon's output, if
    /// the daemon exits first.
    pub fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                panic!(
                    "daemon exited before becoming ready: {status}\n--- output ---\n{}",
                    self.log()
                );
            }
            if let Ok(addr) = fs::read_to_string(self.data_dir.join("run/http.addr"))
                && let Ok((200, _)) = http_get(&addr, "/ready")
            {
                self.addr = Some(addr);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon not ready within {within:?}\n--- output ---\n{}",
            self.log()
        );
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr.as_deref().expect("ready"), path).expect("http get")
    }

    pub fn signal(&self, signal: Signal) {
        send(i64::from(self.pid()), signal);
    }

    /// Waits for the daemon to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon still running after {within:?}\n--- output ---\n{}",
            self.log()
        );
    }

    /// SIGTERM, like systemd, and wait for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// SIGKILL, leaving the daemon no chance to clean up.
    pub fn kill(mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(10));
    }
}

impl Daemon {
    /// The daemon that holds this data dir now: after an update handed over
    /// to a new process, no longer the child this harness started.
    pub fn current_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.data_dir.join("pagodirecto.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.data_dir.to_string_lossy());
        ours.then_some(pid)
    }

    /// Stops a successor (by pid, SIGTERM then wait) if an update left one.
    fn stop_successor(&self) {
        let Some(pid) = self.current_pid() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !alive(pid.as_raw()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
}

/// Whether `pid` runs (a zombie nobody reaped yet does not).
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            self.stop_successor();
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            self.stop_successor();
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A minimal HTTP/1.1 GET, so the harness needs no async runtime.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr.trim())?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.trim()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The stdout of a CLI command that must succeed; panics with its output otherwise.
pub fn ok_stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs SQL through `pagodirecto psql` and returns the unaligned result.
pub fn sql(data: &DataDir, query: &str) -> String {
    ok_stdout(&data.cli(&[
        "psql",
        "--",
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        query,
    ]))
    .trim()
    .to_string()
}

/// Polls `done` every 200 ms until it holds; fails with `what` and
/// `context()` (a log, a status) after `within`.
pub fn wait_until(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}
