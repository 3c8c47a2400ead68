//! Restarts that refuse no connection: the listening sockets pass from one
//! process to the next (systemd socket activation, and the hand-over an
//! update does), while a client keeps connecting.
//!
//! The update itself (feed, signatures, a rebuilt binary) is in `update`;
//! these drive the daemon's side directly through the control socket, with
//! the same binary standing in for the new version.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pagodirecto::control::{self, Request, StatusReport};

use crate::support::{BIN, Daemon, DataDir, http_get, sql};

/// A client that opens a new connection for every request until stopped,
/// and keeps every failure: a refused or reset connection, or a 5xx.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, Vec<String>)>,
}

impl Prober {
    pub fn start(addr: &str, path: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = addr.trim().to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut ok = 0;
            let mut failures = Vec::new();
            while !flag.load(Ordering::Acquire) {
                match http_get(&addr, path) {
                    Ok((status, _)) if status < 500 => ok += 1,
                    Ok((status, body)) => failures.push(format!("{status}: {body}")),
                    Err(err) => failures.push(err.to_string()),
                }
            }
            (ok, failures)
        });
        Self { stop, thread }
    }

    /// Stops and returns (answered requests, failures).
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("prober thread")
    }
}

fn call(data: &DataDir, request: &Request) -> Result<serde_json::Value, control::Error> {
    let socket = data.path().join("run/control.sock");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(control::call(&socket, request))
}

/// Polls `status` until `done` says yes.
fn wait_for_status(
    data: &DataDir,
    within: Duration,
    done: impl Fn(&StatusReport) -> bool,
) -> StatusReport {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(value) = call(data, &Request::Status) {
            let report: StatusReport = serde_json::from_value(value).expect("status report");
            if done(&report) {
                return report;
            }
            last = Some(report);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("status never got there within {within:?}; last: {last:#?}");
}

#[test]
fn a_socket_from_systemd_socket_activation_is_served() {
    let data = DataDir::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let log = data.path().join("daemon.out");
    let out = std::fs::File::create(&log).expect("log");
    // As systemd would: the socket at descriptor 3, LISTEN_PID the daemon's
    // own pid (the shell's, which exec keeps).
    let child = Command::new("sh")
        .args([
            "-c",
            r#"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec "$0" "$@""#,
            BIN,
            "run",
            "--listen",
            &addr,
            "--data-dir",
        ])
        .arg(data.path())
        .env("PAGODIRECTO_BACKUP__SCHEDULE", "")
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("spawn");
    let mut daemon = Daemon::from_child(child, data.path().to_path_buf(), log);
    // Had it ignored the socket, binding the same address would have failed
    // (the socket stays open in it either way).
    daemon.wait_ready(Duration::from_secs(90));
    assert_eq!(daemon.addr.as_deref().map(str::trim), Some(addr.as_str()));
    assert_eq!(daemon.get("/health").0, 200);
    assert!(
        daemon.log().contains("listening on an inherited socket"),
        "{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
}

#[test]
fn an_upgrade_hands_the_sockets_to_a_new_process_and_refuses_no_connection() {
    let data = DataDir::new();
    let mut daemon = data.start();
    let addr = daemon.addr.clone().expect("ready");
    sql(
        &data,
        "CREATE TABLE public.kept (n int); INSERT INTO public.kept VALUES (42)",
    );
    let before = wait_for_status(&data, Duration::from_secs(10), |_| true);

    let prober = Prober::start(&addr, "/health");
    std::thread::sleep(Duration::from_millis(300));
    let version = before.version.clone();
    let answer = call(
        &data,
        &Request::Upgrade {
            version: version.clone(),
            schema: pagodirecto::migrate::latest_known(),
        },
    )
    .expect("upgrade accepted");
    let backup = answer["backup"]
        .as_str()
        .expect("a pre-update backup")
        .to_owned();
    // The old process exits once the new one serves.
    assert!(
        daemon.wait_exit(Duration::from_secs(90)).success(),
        "{}",
        daemon.log()
    );
    let after = wait_for_status(&data, Duration::from_secs(30), |s| s.ready);
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failures) = prober.finish();

    assert_ne!(after.pid, before.pid, "a new process serves");
    assert_eq!(after.listen, before.listen, "on the same socket");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        answered + failures.len()
    );
    assert!(
        answered > 10,
        "the prober ran throughout ({answered} answers)"
    );
    let record = after.last_update.expect("the update is recorded");
    assert_eq!(record.outcome, pagodirecto::handover::Outcome::Updated);
    assert_eq!(record.backup.as_deref(), Some(backup.as_str()));
    assert_eq!(sql(&data, "SELECT n FROM public.kept"), "42");
    let listed = crate::support::ok_stdout(&data.cli(&["backup", "list"]));
    assert!(listed.contains(&backup), "{listed}");
    // `daemon` is the old process; dropping it stops the new one by pid.
}

#[test]
fn a_new_process_that_is_not_the_expected_version_is_rolled_back() {
    let data = DataDir::new();
    let daemon = data.start();
    let addr = daemon.addr.clone().expect("ready");
    let before = wait_for_status(&data, Duration::from_secs(10), |_| true);

    let prober = Prober::start(&addr, "/health");
    call(
        &data,
        &Request::Upgrade {
            // The binary at the path says it is the current version.
            version: "99.0.0".into(),
            schema: pagodirecto::migrate::latest_known(),
        },
    )
    .expect("upgrade accepted");
    let after = wait_for_status(&data, Duration::from_secs(120), |s| {
        s.ready
            && s.last_update
                .as_ref()
                .is_some_and(|u| u.outcome == pagodirecto::handover::Outcome::RolledBack)
    });
    let (answered, failures) = prober.finish();

    let record = after.last_update.clone().expect("recorded");
    let reason = record.reason.unwrap_or_default();
    assert!(
        reason.contains("said it is version") && reason.contains("99.0.0"),
        "{reason}"
    );
    assert_eq!(after.version, before.version);
    // The old image came back in the same process (exec), so a service
    // manager's main pid stays right.
    assert_eq!(after.pid, before.pid);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        answered + failures.len()
    );
    let text = crate::support::ok_stdout(&data.cli(&["status"]));
    assert!(
        text.contains("ROLLED BACK") && text.contains("99.0.0"),
        "{text}"
    );
    drop(daemon);
}

/// Replaces the executable at `path` by a shell script, as `update`
/// replaces the binary (write beside, rename over).
pub fn replace_with_script(path: &std::path::Path, script: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let new = path.with_extension("new");
    std::fs::write(&new, script).expect("write script");
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&new, path).expect("rename over the binary");
}

#[test]
fn a_new_version_that_migrated_and_failed_is_rolled_back_with_the_pre_update_backup() {
    let data = DataDir::new();
    let bin_dir = tempfile::tempdir().expect("bin dir");
    let exe = bin_dir.path().join("pagodirecto");
    std::fs::copy(BIN, &exe).expect("copy the binary");
    let mut daemon = data.spawn_bin(&exe, &[], &[("PAGODIRECTO_BACKUP__SCHEDULE", "")]);
    daemon.wait_ready(Duration::from_secs(60));
    sql(
        &data,
        "CREATE TABLE public.kept (n int); INSERT INTO public.kept VALUES (42)",
    );
    let before = wait_for_status(&data, Duration::from_secs(10), |_| true);
    let latest = pagodirecto::migrate::latest_known();

    // The "new version": it migrates (a schema level this binary does not
    // know, and a changed row) and dies before it is ready.
    replace_with_script(
        &exe,
        &format!(
            "#!/bin/sh\n\
             '{BIN}' --data-dir '{data}' psql -- -X -v ON_ERROR_STOP=1 \
               -c \"INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES ({next}, 'from_the_future', now()::text, '0')\" \
               -c 'UPDATE public.kept SET n = 7' >/dev/null || exit 2\n\
             exit 1\n",
            data = data.path().display(),
            next = latest + 1,
        ),
    );
    let answer = call(
        &data,
        &Request::Upgrade {
            version: "99.0.0".into(),
            schema: latest + 1,
        },
    )
    .expect("upgrade accepted");
    assert_eq!(answer["backup_in_gap"], true, "{answer}");

    let after = wait_for_status(&data, Duration::from_secs(180), |s| {
        s.ready
            && s.last_update
                .as_ref()
                .is_some_and(|u| u.outcome == pagodirecto::handover::Outcome::RolledBack)
    });
    let record = after.last_update.clone().expect("recorded");
    let reason = record.reason.clone().unwrap_or_default();
    // Status 1: its changes were made (2 would mean they failed).
    assert!(
        reason.contains("exited before it was ready (exit status: 1)"),
        "{reason}\n{}",
        daemon.log()
    );
    assert!(
        !reason.contains("restoring"),
        "the restore worked: {reason}"
    );
    assert!(record.backup.is_some(), "the backup was taken in the gap");
    assert_eq!(
        after.pid, before.pid,
        "the old image came back in the same process"
    );
    // What the failed version changed is gone: the old binary runs on the
    // schema it knows, with the data as it was.
    assert_eq!(sql(&data, "SELECT n FROM public.kept"), "42");
    assert_eq!(
        sql(&data, "SELECT max(version) FROM refinery_schema_history"),
        latest.to_string()
    );
    assert!(daemon.try_wait().is_none(), "{}", daemon.log());
}
