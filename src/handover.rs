//! Listening sockets that outlive the process: taken over at start (from
//! systemd's socket activation or from a previous `pagodirecto`), and
//! handed to a successor when the binary is updated.
//!
//! The kernel keeps a listening socket open, and keeps completing TCP
//! handshakes into its backlog, for as long as any process holds it. So a
//! restart that passes the socket on (instead of closing and binding again)
//! refuses no connection: clients that arrive while no process accepts wait
//! in the backlog and see only added latency.
//!
//! Two ways in, one way out:
//! - systemd: `LISTEN_FDS` (descriptors from 3), `LISTEN_PID` (must be us),
//!   `LISTEN_FDNAMES`.
//! - a previous process: `PAGODIRECTO_HANDOVER` = `fds=7:http,8:redirect;ready=9`
//!   — the descriptors keep their numbers across the exec, and `ready` is
//!   the write end of a pipe on which the successor says it is ready
//!   ([`Inherited::announce_ready`]). A successor that dies closes the
//!   pipe, which the predecessor sees at once ([`Successor::wait_ready`]).
//!
//! The daemon matches inherited sockets to its configured addresses
//! ([`Inherited::take`]); an address with none is bound as usual, and an
//! inherited socket that no address wants is closed with a warning.
//!
//! Invariant: descriptors are close-on-exec except in the one child (or
//! exec) they are meant for; postgres and the client tools never hold a
//! listening socket.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tracing::{info, warn};

/// The environment variable a predecessor sets for its successor.
pub const ENV: &str = "PAGODIRECTO_HANDOVER";

/// Why inherited descriptors cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{var} is malformed ({value:?}): {reason}")]
    Malformed {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("descriptor {fd} from {var} is not a listening TCP socket")]
    NotAListener { var: &'static str, fd: RawFd },
}

/// A listening socket and the name it was passed under (`http`,
/// `redirect`, or whatever systemd's `FileDescriptorName=` said).
#[derive(Debug)]
pub struct Socket {
    pub name: String,
    pub listener: TcpListener,
}

/// What this process was given at start.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Socket>,
    ready: Option<OwnedFd>,
}

impl Inherited {
    /// Reads and removes the hand-over variables of the environment.
    ///
    /// Call it first thing in `main`, while the process has one thread:
    /// the descriptors are adopted (and made close-on-exec) here, and the
    /// variables must not reach the children.
    pub fn from_env() -> Result<Self, Error> {
        let ours = std::env::var(ENV).ok();
        let systemd = std::env::var("LISTEN_FDS").ok().map(|fds| {
            (
                fds,
                std::env::var("LISTEN_PID").ok(),
                std::env::var("LISTEN_FDNAMES").ok(),
            )
        });
        for var in [ENV, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            // SAFETY: called from `main` before any other thread exists, so
            // no one reads the environment concurrently.
            #[allow(unsafe_code)]
            unsafe {
                std::env::remove_var(var);
            }
        }
        let mut inherited = Self::default();
        if let Some(value) = ours {
            let (fds, ready) = parse_ours(&value)?;
            for (fd, name) in fds {
                inherited.sockets.push(adopt(fd, name, ENV)?);
            }
            inherited.ready = ready.map(|fd| adopt_fd(fd, ENV)).transpose()?;
        } else if let Some((count, pid, names)) = systemd {
            // Not for us (a parent's activation leaked into our environment).
            if pid.as_deref() != Some(std::process::id().to_string().as_str()) {
                return Ok(inherited);
            }
            for (fd, name) in parse_systemd(&count, names.as_deref())? {
                inherited.sockets.push(adopt(fd, name, "LISTEN_FDS")?);
            }
        }
        Ok(inherited)
    }

    /// The inherited socket bound to `addr` (a configured port 0 matches
    /// any port on that IP: the port was chosen when it was first bound).
    pub fn take(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let at = self.sockets.iter().position(|s| {
            s.listener.local_addr().is_ok_and(|bound| {
                bound.ip() == addr.ip() && (addr.port() == 0 || bound.port() == addr.port())
            })
        })?;
        Some(self.sockets.remove(at).listener)
    }

    /// Closes the sockets no configured address took (the config changed
    /// across the restart), saying so.
    pub fn close_unused(&mut self) {
        for socket in self.sockets.drain(..) {
            let addr = socket.listener.local_addr().ok();
            warn!(name = %socket.name, ?addr, "an inherited socket matches no configured address; closing it");
        }
    }

    /// Tells the predecessor that this process serves now (`version` is
    /// checked against what it expected). Once; later calls do nothing.
    pub fn announce_ready(&mut self, version: &str) {
        if let Some(fd) = self.ready.take() {
            let mut pipe = std::fs::File::from(fd);
            if let Err(err) = writeln!(pipe, "ready {version} {}", std::process::id()) {
                warn!(%err, "cannot tell the previous process that this one is ready");
            }
        }
    }
}

/// Named descriptors, and the ready pipe's.
type Ours = (Vec<(RawFd, String)>, Option<RawFd>);

fn parse_ours(value: &str) -> Result<Ours, Error> {
    let bad = |reason: &str| Error::Malformed {
        var: ENV,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let mut fds = Vec::new();
    let mut ready = None;
    for part in value.split(';').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("fds", list)) => {
                for item in list.split(',').filter(|i| !i.is_empty()) {
                    let (fd, name) = item.split_once(':').unwrap_or((item, "http"));
                    let fd = fd
                        .parse()
                        .map_err(|_| bad("a descriptor is not a number"))?;
                    fds.push((fd, name.to_owned()));
                }
            }
            Some(("ready", fd)) => {
                ready = Some(fd.parse().map_err(|_| bad("ready is not a number"))?);
            }
            _ => return Err(bad("expected fds=N:NAME,…;ready=N")),
        }
    }
    Ok((fds, ready))
}

fn parse_systemd(count: &str, names: Option<&str>) -> Result<Vec<(RawFd, String)>, Error> {
    /// sd_listen_fds(3): passed descriptors start here.
    const FIRST: RawFd = 3;
    let count: RawFd = count.parse().map_err(|_| Error::Malformed {
        var: "LISTEN_FDS",
        value: count.to_owned(),
        reason: "not a number".into(),
    })?;
    let mut names = names.unwrap_or_default().split(':');
    Ok((FIRST..FIRST + count)
        .map(|fd| {
            let name = names.next().filter(|n| !n.is_empty()).unwrap_or("http");
            (fd, name.to_owned())
        })
        .collect())
}

/// Owns `fd`, which the environment says was passed to us.
fn adopt_fd(fd: RawFd, var: &'static str) -> Result<OwnedFd, Error> {
    if fd < 3 {
        return Err(Error::NotAListener { var, fd });
    }
    // SAFETY: F_GETFD only reads the descriptor's flags (EBADF when it is
    // not open). An open descriptor named by the hand-over protocol was
    // opened for this process by its parent and is owned by no one else
    // here: nothing in this process has opened files yet.
    #[allow(unsafe_code)]
    let owned = unsafe {
        if libc::fcntl(fd, libc::F_GETFD) == -1 {
            return Err(Error::NotAListener { var, fd });
        }
        OwnedFd::from_raw_fd(fd)
    };
    // Ours now; not our children's.
    let _ = nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Ok(owned)
}

fn adopt(fd: RawFd, name: String, var: &'static str) -> Result<Socket, Error> {
    let owned = adopt_fd(fd, var)?;
    let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
    let tcp = getsockopt(&owned, sockopt::SockType)
        .is_ok_and(|t| t == nix::sys::socket::SockType::Stream);
    if !(listening && tcp) {
        return Err(Error::NotAListener { var, fd });
    }
    Ok(Socket {
        name,
        listener: TcpListener::from(owned),
    })
}

/// Copies of the daemon's listening sockets, kept for a successor (or for
/// the same binary again after a failed update) while the accept loop
/// owns the originals.
#[derive(Debug, Default)]
pub struct Sockets(Vec<Socket>);

impl Sockets {
    /// Keeps a duplicate of `listener` under `name`.
    pub fn keep(&mut self, name: &str, listener: &TcpListener) -> io::Result<()> {
        self.0.push(Socket {
            name: name.to_owned(),
            listener: listener.try_clone()?,
        });
        Ok(())
    }

    /// `fds=…` for [`ENV`], and the descriptors to leave open in the child.
    fn describe(&self) -> (String, Vec<RawFd>) {
        let fds: Vec<RawFd> = self.0.iter().map(|s| s.listener.as_raw_fd()).collect();
        let list = self
            .0
            .iter()
            .map(|s| format!("{}:{}", s.listener.as_raw_fd(), s.name))
            .collect::<Vec<_>>()
            .join(",");
        (format!("fds={list}"), fds)
    }

    /// A command that runs `exe args` with these sockets (and `ready`, if
    /// any) open in it under [`ENV`].
    fn command(
        &self,
        exe: &Path,
        args: &[std::ffi::OsString],
        ready: Option<RawFd>,
    ) -> std::process::Command {
        let (mut value, mut keep) = self.describe();
        if let Some(fd) = ready {
            value = format!("{value};ready={fd}");
            keep.push(fd);
        }
        let mut cmd = std::process::Command::new(exe);
        cmd.args(args).env(ENV, value);
        // SAFETY: between fork and exec the closure only calls fcntl, which
        // is async-signal-safe, on descriptors this process keeps open until
        // the child has started; it allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                for &fd in &keep {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// Starts `exe args` as this process's successor: it inherits the
    /// sockets and a pipe to say when it is ready.
    pub fn spawn_successor(
        &self,
        exe: &Path,
        args: &[std::ffi::OsString],
    ) -> io::Result<Successor> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut cmd = self.command(exe, args, Some(write.as_raw_fd()));
        cmd.stdin(std::process::Stdio::null());
        let child = tokio::process::Command::from(cmd).spawn()?;
        // Only the child holds the write end now: its exit closes the pipe.
        drop(write);
        Ok(Successor {
            child,
            ready: tokio::net::unix::pipe::Receiver::from_owned_fd(read)?,
        })
    }

    /// Replaces this process with `image args`, which inherits the sockets
    /// (the same pid, so systemd's main process stays the same), named
    /// `name` (`argv[0]`, what `ps` shows). Returns only on failure.
    #[must_use]
    pub fn exec(
        &self,
        image: &Path,
        name: &std::ffi::OsStr,
        args: &[std::ffi::OsString],
    ) -> io::Error {
        use std::os::unix::process::CommandExt as _;
        self.command(image, args, None).arg0(name).exec()
    }
}

/// A started successor, not yet known to be ready.
pub struct Successor {
    child: tokio::process::Child,
    ready: tokio::net::unix::pipe::Receiver,
}

/// What a successor said when it became ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub version: String,
    pub pid: u32,
}

impl Successor {
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the successor says it is ready, or fails: it exited
    /// (closing the pipe), or `timeout` passed.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, String> {
        let mut line = String::new();
        let mut reader = BufReader::new(&mut self.ready);
        match tokio::time::timeout(timeout, reader.read_line(&mut line)).await {
            Err(_) => Err(format!("not ready within {timeout:?}")),
            Ok(Err(err)) => Err(format!("cannot read its readiness: {err}")),
            Ok(Ok(0)) => {
                let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
                Err(match status {
                    Ok(Ok(status)) => format!("it exited before it was ready ({status})"),
                    _ => "it closed its readiness pipe before it was ready".into(),
                })
            }
            Ok(Ok(_)) => parse_ready(&line)
                .ok_or_else(|| format!("it said {:?} instead of ready", line.trim())),
        }
    }

    /// Waits until the successor exits; its exit status, as text.
    pub async fn exited(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => status.to_string(),
            Err(err) => format!("cannot wait for it: {err}"),
        }
    }

    /// Stops a successor that failed: SIGTERM (it stops its postgres in
    /// order), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
            warn!(%pid, "the new process did not stop in time; killing it");
        }
        let _ = self.child.kill().await;
    }
}

fn parse_ready(line: &str) -> Option<Ready> {
    let mut words = line.split_whitespace();
    (words.next()? == "ready").then_some(())?;
    Some(Ready {
        version: words.next()?.to_owned(),
        pid: words.next()?.parse().ok()?,
    })
}

/// The last update's outcome, kept in the data dir (`update.json`) for
/// `status` and the log: written by the process that was replaced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub from: String,
    pub to: String,
    pub outcome: Outcome,
    /// Why it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The backup taken just before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Handing over (the record of an update the machine stopped in).
    InProgress,
    Updated,
    RolledBack,
}

impl Record {
    /// The record in `file`, if there is a readable one.
    #[must_use]
    pub fn load(file: &Path) -> Option<Self> {
        let text = std::fs::read(file).ok()?;
        serde_json::from_slice(&text)
            .inspect_err(
                |err| warn!(file = %file.display(), %err, "ignoring an unreadable update record"),
            )
            .ok()
    }

    pub fn save(&self, file: &Path) {
        let saved = serde_json::to_vec_pretty(self)
            .map_err(io::Error::other)
            .and_then(|json| crate::fsutil::write_atomic(file, &json, 0o600));
        match saved {
            Ok(()) => {
                info!(from = %self.from, to = %self.to, outcome = ?self.outcome, "update recorded");
            }
            Err(err) => warn!(file = %file.display(), %err, "cannot record the update"),
        }
    }
}

/// This executable, as the kernel knows it: still the running image after
/// the file was replaced or renamed.
#[must_use]
pub fn own_image() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_variable_names_descriptors_and_the_ready_pipe() {
        let (fds, ready) = parse_ours("fds=7:http,8:redirect;ready=9").expect("test setup");
        assert_eq!(fds, [(7, "http".to_owned()), (8, "redirect".to_owned())]);
        assert_eq!(ready, Some(9));
        assert!(parse_ours("fds=x:http").is_err());
        assert!(parse_ours("sockets=7").is_err());
    }

    #[test]
    fn systemd_descriptors_start_at_three_with_their_names() {
        let fds = parse_systemd("2", Some("web:")).expect("test setup");
        assert_eq!(fds, [(3, "web".to_owned()), (4, "http".to_owned())]);
        assert!(parse_systemd("two", None).is_err());
    }

    #[test]
    fn ready_lines_carry_version_and_pid() {
        assert_eq!(
            parse_ready("ready 0.2.0 4242\n"),
            Some(Ready {
                version: "0.2.0".into(),
                pid: 4242
            })
        );
        assert_eq!(parse_ready("oops\n"), None);
    }

    #[test]
    fn an_inherited_socket_matches_its_address_or_port_zero() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("test setup");
        let addr = listener.local_addr().expect("test setup");
        let mut inherited = Inherited {
            sockets: vec![Socket {
                name: "http".into(),
                listener,
            }],
            ready: None,
        };
        assert!(
            inherited
                .take("127.0.0.2:0".parse().expect("test setup"))
                .is_none()
        );
        assert!(
            inherited
                .take(SocketAddr::new(addr.ip(), addr.port() + 1))
                .is_none()
        );
        let taken = inherited
            .take("127.0.0.1:0".parse().expect("test setup"))
            .expect("test setup");
        assert_eq!(taken.local_addr().expect("test setup"), addr);
        assert!(inherited.take(addr).is_none(), "taken once");
    }

    #[tokio::test]
    async fn a_successor_that_dies_is_noticed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("test setup");
        let mut sockets = Sockets::default();
        sockets.keep("http", &listener).expect("test setup");
        let mut successor = sockets
            .spawn_successor(Path::new("/bin/sh"), &["-c".into(), "exit 3".into()])
            .expect("test setup");
        let err = successor
            .wait_ready(Duration::from_secs(60))
            .await
            .expect_err("fails");
        assert!(err.contains("exited before it was ready"), "{err}");
    }

    #[tokio::test]
    async fn a_successor_gets_the_sockets_and_says_ready_on_the_pipe() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("test setup");
        let mut sockets = Sockets::default();
        sockets.keep("http", &listener).expect("test setup");
        // The shell stands in for the new binary: it checks the listener
        // descriptor is open in it and answers on the ready descriptor.
        let script = r#"
            fds=${PAGODIRECTO_HANDOVER#fds=}; fd=${fds%%:*}
            ready=${PAGODIRECTO_HANDOVER##*ready=}
            [ -e /proc/self/fd/$fd ] || exit 9
            echo "ready 9.9.9 $$" > /proc/self/fd/$ready
        "#;
        let mut successor = sockets
            .spawn_successor(Path::new("/bin/sh"), &["-c".into(), script.into()])
            .expect("test setup");
        let ready = successor
            .wait_ready(Duration::from_secs(60))
            .await
            .expect("test setup");
        assert_eq!(ready.version, "9.9.9");
        assert_eq!(Some(ready.pid), successor.pid());
    }
}
