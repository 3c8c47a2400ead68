//! `pagodirecto doctor`: checks the host and the configuration before (or
//! while) the appliance runs, and says how to fix what it finds.
//!
//! Read-only: it creates, chowns and starts nothing, and takes no lock, so
//! it is safe beside a running daemon (whose ports and socket it recognises).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use crate::cgroup;
use crate::config::{Config, ConfigError, Loaded};
use crate::control::{self, Request, StatusReport};
use crate::paths::Paths;
use crate::postgres::{account, binaries};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's outcome; `hint` says what to do when it is not ok.
#[derive(Debug)]
struct Finding {
    name: &'static str,
    level: Level,
    detail: String,
    hint: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        name,
        level: Level::Ok,
        detail: detail.into(),
        hint: None,
    }
}

fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        name,
        level: Level::Warn,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        name,
        level: Level::Fail,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

/// Runs every check, prints them, and exits 1 when one failed.
/// `data_dir` is the `--data-dir` flag, used when the config is invalid.
pub async fn run(
    loaded: Result<Loaded, ConfigError>,
    data_dir: Option<PathBuf>,
) -> Result<ExitCode> {
    let mut findings = Vec::new();
    let config = match loaded {
        Ok(loaded) => {
            findings.push(ok("config", format!("valid ({})", loaded.source)));
            loaded.config
        }
        Err(err) => {
            findings.push(fail(
                "config",
                format!("{err:#}"),
                "fix the keys named above (`pagodirecto config check` checks again); the other checks use the defaults",
            ));
            let mut config = Config::default();
            if let Some(dir) = data_dir {
                config.data_dir = dir;
            }
            config
        }
    };
    let paths = config.paths();
    let running = match control::call(&paths.control_socket(), &Request::Status).await {
        Ok(value) => serde_json::from_value::<StatusReport>(value).ok(),
        Err(_) => None,
    };
    findings.push(match &running {
        Some(r) => ok(
            "daemon",
            format!(
                "running (pid {}, {}), listening on {}",
                r.pid,
                if r.ready { "ready" } else { "NOT ready" },
                r.listen.join(", ")
            ),
        ),
        None => ok("daemon", "not running"),
    });
    let account = os_user(&config, &mut findings);
    findings.push(postgres_binaries(&config, &paths));
    findings.extend(data_dir_ownership(&paths, account.as_ref()));
    findings.push(socket_path(&paths, config.database.port));
    findings.extend(disk(&config, &paths));
    findings.push(cgroups());
    findings.extend(ports(&config, running.as_ref()));
    findings.push(clock());

    print!("{}", render(&findings));
    Ok(if findings.iter().any(|f| f.level == Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let level = match f.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        let _ = writeln!(out, "{level:<5} {:<10} {}", f.name, f.detail);
        if let Some(hint) = &f.hint {
            let _ = writeln!(out, "      {:<10} fix: {hint}", "");
        }
    }
    out
}

/// The account PostgreSQL will run as (`None`: as ourselves).
fn os_user(config: &Config, findings: &mut Vec<Finding>) -> Option<account::Account> {
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map_or_else(|| nix::unistd::Uid::effective().to_string(), |u| u.name);
    match account::resolve(config.database.os_user.as_deref()) {
        Ok(Some(account)) => {
            findings.push(ok(
                "os user",
                format!(
                    "the daemon runs as {me}; PostgreSQL as {} (uid {})",
                    account.name, account.uid
                ),
            ));
            Some(account)
        }
        Ok(None) => {
            findings.push(ok(
                "os user",
                format!("the daemon and PostgreSQL run as {me}"),
            ));
            None
        }
        Err(err) => {
            findings.push(fail(
                "os user",
                err.to_string(),
                "create the account (adduser --system --group pagodirecto) or set [database] os_user",
            ));
            None
        }
    }
}

fn postgres_binaries(config: &Config, paths: &Paths) -> Finding {
    let name = "postgres";
    match binaries::find(config.database.bin_dir.as_deref(), &paths.pg_installs()) {
        Ok(found) => {
            let cluster = std::fs::read_to_string(paths.pgdata().join("PG_VERSION"))
                .ok()
                .map(|v| v.trim().to_string());
            match cluster {
                Some(major) if major != found.major() => fail(
                    name,
                    format!(
                        "PostgreSQL {} in {}, but the cluster in {} is version {major}",
                        found.version,
                        found.bin_dir.display(),
                        paths.pgdata().display()
                    ),
                    format!("set [database] bin_dir to PostgreSQL {major} binaries"),
                ),
                _ => ok(
                    name,
                    format!(
                        "PostgreSQL {} ({}) in {}",
                        found.version,
                        found.origin.as_str(),
                        found.bin_dir.display()
                    ),
                ),
            }
        }
        Err(binaries::Error::NotFound { .. }) if config.database.download => warn(
            name,
            "no PostgreSQL binaries found",
            format!(
                "the first start downloads {} ([database] download = true); or install postgresql (apt install postgresql)",
                config.database.version
            ),
        ),
        Err(err) => fail(
            name,
            format!("{err:#}"),
            "install postgresql (apt install postgresql), run `pagodirecto postgres install`, or set [database] bin_dir",
        ),
    }
}

/// Who must own the data: PostgreSQL's account when we are root, else us.
fn data_dir_ownership(paths: &Paths, account: Option<&account::Account>) -> Vec<Finding> {
    let name = "data dir";
    let (uid, who) = if let Some(a) = account {
        (a.uid.as_raw(), format!("{} (uid {})", a.name, a.uid))
    } else {
        let me = nix::unistd::Uid::effective();
        (me.as_raw(), format!("uid {me}"))
    };
    let chown_hint = |dir: &Path| {
        account.map_or_else(
            || format!("chown -R $(id -un) {0} && chmod 700 {0}", dir.display()),
            |a| format!("chown -R {0}: {1} && chmod 700 {1}", a.name, dir.display()),
        )
    };
    let mut out = Vec::new();
    let data = paths.data_dir();
    let Ok(meta) = std::fs::metadata(data) else {
        out.push(ok(
            name,
            format!(
                "{} does not exist yet; the first start creates it",
                data.display()
            ),
        ));
        return out;
    };
    if !meta.is_dir() {
        out.push(fail(
            name,
            format!("{} is not a directory", data.display()),
            "point --data-dir (or data_dir) at a directory",
        ));
        return out;
    }
    if meta.uid() != uid {
        // As root the daemon chowns the data dir itself at start; as anyone
        // else it cannot.
        let level = if account.is_some() {
            Level::Warn
        } else {
            Level::Fail
        };
        out.push(Finding {
            name,
            level,
            detail: format!(
                "{} is owned by uid {}, not {who}",
                data.display(),
                meta.uid()
            ),
            hint: Some(chown_hint(data)),
        });
    } else if meta.mode() & 0o077 != 0 {
        out.push(warn(
            name,
            format!(
                "{} is mode {:o}: others can look inside",
                data.display(),
                meta.mode() & 0o7777
            ),
            format!("chmod 700 {}", data.display()),
        ));
    } else {
        out.push(ok(
            name,
            format!("{} owned by {who}, mode 700", data.display()),
        ));
    }
    let pgdata = paths.pgdata();
    if let Ok(meta) = std::fs::metadata(&pgdata) {
        // PostgreSQL itself refuses a data directory it does not own or that
        // others can read ("has wrong ownership" / "invalid permissions").
        if meta.uid() != uid {
            out.push(fail(
                "pgdata",
                format!(
                    "{} is owned by uid {}, but PostgreSQL runs as {who} and refuses it",
                    pgdata.display(),
                    meta.uid()
                ),
                chown_hint(&pgdata),
            ));
        } else if meta.mode() & 0o027 != 0 {
            out.push(fail(
                "pgdata",
                format!(
                    "{} is mode {:o}; PostgreSQL needs 700 or 750",
                    pgdata.display(),
                    meta.mode() & 0o7777
                ),
                format!("chmod 700 {}", pgdata.display()),
            ));
        } else {
            out.push(ok("pgdata", format!("{} owned by {who}", pgdata.display())));
        }
    }
    out
}

/// A Unix socket path holds at most 107 bytes; PostgreSQL's is
/// `<socket dir>/.s.PGSQL.<port>`, so a deep data dir can break it.
fn socket_path(paths: &Paths, port: u16) -> Finding {
    let socket = paths.pg_socket_dir().join(format!(".s.PGSQL.{port}"));
    let len = socket.as_os_str().len();
    if len > 107 {
        fail(
            "socket dir",
            format!(
                "{} is {len} bytes; a Unix socket path holds 107",
                socket.display()
            ),
            "choose a shorter data dir",
        )
    } else {
        ok(
            "socket dir",
            format!("{} ({len} of 107 bytes)", paths.pg_socket_dir().display()),
        )
    }
}

/// Free space against `[limits] disk_reserve` where data and backups go.
fn disk(config: &Config, paths: &Paths) -> Vec<Finding> {
    let reserve = config.limits.disk_reserve.as_u64();
    let mut dirs = vec![("disk", paths.data_dir().to_path_buf())];
    let backups = paths.backup_dir().to_path_buf();
    if !backups.starts_with(paths.data_dir()) {
        dirs.push(("backup disk", backups));
    }
    dirs.into_iter()
        .map(|(name, dir)| {
            // Before the first start the directory may not exist: measure
            // the file system it will be created on.
            let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
            match crate::fsutil::available_bytes(existing) {
                Ok(free) if free < reserve => fail(
                    name,
                    format!(
                        "{} free in {}, below the reserve of {}: /ready fails and backups are refused",
                        bytesize::ByteSize(free),
                        existing.display(),
                        bytesize::ByteSize(reserve)
                    ),
                    "free space there (old backups, logs) or lower [limits] disk_reserve",
                ),
                Ok(free) => ok(
                    name,
                    format!(
                        "{} free in {} (reserve {})",
                        bytesize::ByteSize(free),
                        existing.display(),
                        bytesize::ByteSize(reserve)
                    ),
                ),
                Err(err) => fail(
                    name,
                    format!("cannot measure free space in {}: {err}", existing.display()),
                    "check the directory exists and is readable",
                ),
            }
        })
        .collect()
}

fn cgroups() -> Finding {
    match cgroup::probe(&cgroup::Host::current()) {
        Ok((mode, dir)) => ok(
            "cgroups",
            format!(
                "{mode}: PostgreSQL's memory and CPU limits go under {}",
                dir.display()
            ),
        ),
        Err(reason) => warn(
            "cgroups",
            format!("{reason}; [limits] memory and cpu are then not enforced"),
            "run under systemd with Delegate=yes (as systemd/pagodirecto.service does), or as root on a cgroup v1 host",
        ),
    }
}

fn ports(config: &Config, running: Option<&StatusReport>) -> Vec<Finding> {
    config
        .server
        .listen
        .iter()
        .map(|addr| {
            if addr.port() == 0 {
                return ok("port", format!("{addr}: any free port"));
            }
            if running.is_some_and(|r| r.listen.contains(&addr.to_string())) {
                return ok("port", format!("{addr}: served by the running daemon"));
            }
            match TcpListener::bind(addr) {
                Ok(_) => ok("port", format!("{addr} is free")),
                Err(err) => fail(
                    "port",
                    format!("cannot listen on {addr}: {err}"),
                    "stop what listens there (ss -ltnp) or change server.listen",
                ),
            }
        })
        .collect()
}

/// Tokens, backups' names and schedules all trust the clock; a clock far in
/// the past (no RTC, no NTP yet) shows as a year before this release.
fn clock() -> Finding {
    let now = time::OffsetDateTime::now_utc();
    if now.year() < 2025 {
        warn(
            "clock",
            format!("the system clock says {now}"),
            "set the time (timedatectl set-ntp true)",
        )
    } else {
        ok(
            "clock",
            now.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_render_with_their_fix() {
        let text = render(&[
            ok("config", "valid"),
            fail("disk", "1 B free", "free space"),
        ]);
        assert_eq!(
            text,
            "ok    config     valid\nFAIL  disk       1 B free\n                 fix: free space\n"
        );
    }

    #[test]
    fn a_long_socket_path_is_refused() {
        let deep = PathBuf::from(format!("/{}", "d".repeat(100)));
        let paths = Paths::new(deep, None, None);
        assert_eq!(socket_path(&paths, 5432).level, Level::Fail);
        let paths = Paths::new("/var/lib/pagodirecto".into(), None, None);
        assert_eq!(socket_path(&paths, 5432).level, Level::Ok);
    }
}
