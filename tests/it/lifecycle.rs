//! Start, restart, crash, kill and stop the real daemon with real PostgreSQL.

use std::time::Duration;

use crate::support::{DataDir, Signal, ok_stdout, send, sql};

#[test]
fn first_start_initialises_and_a_restart_keeps_the_data() {
    let data = DataDir::new();
    let daemon = data.start();
    let (status, body) = daemon.get("/ready");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""postgres":{"detail":"accepting connections","ok":true}"#),
        "{body}"
    );
    assert!(data.pgdata().join("PG_VERSION").exists());
    for secret in ["postgres-superuser.password", "postgres-app.password"] {
        let meta =
            std::fs::metadata(data.path().join("secrets").join(secret)).expect("secret exists");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600,
            "{secret}"
        );
    }
    sql(
        &data,
        "INSERT INTO ops.settings (key, value) VALUES ('kept', '42')",
    );
    assert!(
        daemon
            .log()
            .contains("initialising a new PostgreSQL cluster")
    );
    assert!(daemon.stop().success());

    let daemon = data.start();
    assert!(
        !daemon
            .log()
            .contains("initialising a new PostgreSQL cluster"),
        "the second start reuses the cluster"
    );
    assert_eq!(
        sql(&data, "SELECT value FROM ops.settings WHERE key = 'kept'"),
        "42"
    );
    assert!(daemon.stop().success());
}

#[test]
fn postgres_runs_unprivileged_on_a_private_socket_only() {
    let data = DataDir::new();
    let daemon = data.start();
    let settings = sql(
        &data,
        "SELECT current_setting('listen_addresses') || '|' || current_setting('data_checksums') || '|' || current_setting('server_encoding')",
    );
    assert_eq!(settings, "|on|UTF8");
    let pids = data.postgres_processes();
    assert!(!pids.is_empty());
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default()
            .to_string();
        assert!(
            !uid.split_whitespace().skip(1).any(|u| u == "0"),
            "postgres pid {pid} runs as root: {uid}"
        );
    }
    assert!(daemon.stop().success());
}

#[test]
fn a_killed_postmaster_is_restarted_and_the_data_is_still_there() {
    let data = DataDir::new();
    let daemon = data.start();
    sql(
        &data,
        "INSERT INTO ops.settings (key, value) VALUES ('before-crash', 'true')",
    );
    let status = status_json(&data);
    let postmaster = status["postgres"]["pid"].as_i64().expect("postgres pid");
    send(postmaster, Signal::SIGKILL);

    let mut daemon = daemon;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = status_json(&data);
        if status["postgres"]["restarts"] == 1 && status["ready"] == true {
            assert_eq!(status["postgres"]["last_exit"], "signal: 9 (SIGKILL)");
            assert_ne!(status["postgres"]["pid"].as_i64(), Some(postmaster));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready again: {status}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.wait_ready(Duration::from_secs(10));
    let log = daemon.log();
    assert!(
        log.contains("postgres is down; not ready"),
        "the outage was noticed:\n{log}"
    );
    assert!(log.contains("postgres is back; ready again"), "{log}");
    assert_eq!(
        sql(
            &data,
            "SELECT value FROM ops.settings WHERE key = 'before-crash'"
        ),
        "true"
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_crash_loop_ends_the_daemon_with_a_reason() {
    let data = DataDir::new();
    let mut daemon = data.start();
    // A setting postgres refuses at start: every restart now fails at once.
    std::fs::write(
        data.pgdata().join("postgresql.auto.conf"),
        "shared_buffers = 'lots'\n",
    )
    .expect("write");
    let postmaster = status_json(&data)["postgres"]["pid"].as_i64().expect("pid");
    send(postmaster, Signal::SIGKILL);
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{status}");
    let log = daemon.log();
    assert!(log.contains("postgres exited 5 times in a row"), "{log}");
    assert!(log.contains("giving up"), "{log}");
    data.assert_no_postgres(Duration::from_secs(10));
}

#[test]
fn a_sigkilled_daemon_leaves_no_postgres_and_the_next_start_works() {
    let data = DataDir::new();
    let daemon = data.start();
    sql(
        &data,
        "INSERT INTO ops.settings (key, value) VALUES ('k', '1')",
    );
    assert!(!data.postgres_processes().is_empty());
    daemon.kill();
    data.assert_no_postgres(Duration::from_secs(10));

    let daemon = data.start();
    assert_eq!(
        sql(&data, "SELECT value FROM ops.settings WHERE key = 'k'"),
        "1"
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let data = DataDir::new();
    let first = data.start();
    let mut second = data.spawn(&[]);
    let status = second.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = second.log();
    assert!(
        log.contains(&format!(
            "another pagodirecto (pid {}) is using",
            first.pid()
        )),
        "{log}"
    );
    let (code, _) = first.get("/ready");
    assert_eq!(code, 200, "the first daemon is unaffected");
    assert!(first.stop().success());
}

#[test]
fn sigterm_exits_zero_and_leaves_nothing_running() {
    let data = DataDir::new();
    let daemon = data.start();
    let status = daemon.stop();
    assert_eq!(status.code(), Some(0));
    data.assert_no_postgres(Duration::from_secs(1));
    assert!(!data.path().join("run/control.sock").exists());
    assert!(!data.path().join("run/http.addr").exists());
    let out = data.cli(&["status"]);
    assert_eq!(out.status.code(), Some(3), "status says not running");
}

#[test]
fn a_schema_newer_than_the_binary_is_refused() {
    let data = DataDir::new();
    let daemon = data.start();
    sql(
        &data,
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (999, 'future', '2030-01-01T00:00:00Z', '0')",
    );
    assert!(daemon.stop().success());
    let mut daemon = data.spawn(&[]);
    let status = daemon.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = daemon.log();
    assert!(
        log.contains("the database schema is at version 999 but this binary knows only up to"),
        "{log}"
    );
    data.assert_no_postgres(Duration::from_secs(10));
}

#[test]
fn status_and_migrate_report_the_running_system() {
    let data = DataDir::new();
    let daemon = data.start();
    let text = ok_stdout(&data.cli(&["status"]));
    assert!(text.contains("ready:     yes"), "{text}");
    assert!(text.contains("postgres 15."), "{text}");
    let migrations = ok_stdout(&data.cli(&["migrate", "--status"]));
    assert!(
        migrations.contains("V1") && migrations.contains("applied"),
        "{migrations}"
    );
    assert!(daemon.stop().success());
    // With no daemon running, the CLI starts a temporary postgres itself.
    let migrations = ok_stdout(&data.cli(&["migrate", "--status"]));
    assert!(migrations.contains("app_role_and_ops"), "{migrations}");
    data.assert_no_postgres(Duration::from_secs(5));
}

#[test]
fn logs_show_postgres_lines_tagged() {
    let data = DataDir::new();
    let daemon = data.start();
    // Access lines are written in batches: every one of them is in the file
    // once the daemon has stopped. Stderr (the journal under systemd) gets
    // the daemon's events, not a line per request.
    for _ in 0..300 {
        assert_eq!(daemon.get("/a-client-route").0, 200);
    }
    let stderr_of = daemon.output.clone();
    assert!(daemon.stop().success());
    let all = ok_stdout(&data.cli(&["logs", "-n", "100000"]));
    assert_eq!(all.matches("/a-client-route").count(), 300, "{all}");
    let stderr = std::fs::read_to_string(stderr_of).expect("daemon stderr");
    assert_eq!(stderr.matches("/a-client-route").count(), 0, "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    let pg = ok_stdout(&data.cli(&["logs", "-n", "500", "--service", "postgres"]));
    assert!(
        pg.contains("database system is ready to accept connections"),
        "{pg}"
    );
    assert!(pg.lines().all(|l| l.contains("postgres:")), "{pg}");
    let app = ok_stdout(&data.cli(&["logs", "-n", "500", "--service", "app"]));
    assert!(app.contains("ready") && !app.contains("LOG:"), "{app}");
    let last = ok_stdout(&data.cli(&["logs", "-n", "1"]));
    assert_eq!(last.lines().count(), 1);
    assert!(last.contains("stopped"), "{last}");
}

fn status_json(data: &DataDir) -> serde_json::Value {
    let out = ok_stdout(&data.cli(&["status", "--json"]));
    serde_json::from_str(&out).expect("status json")
}

#[test]
fn metrics_and_resources_are_reported_to_allowed_readers_only() {
    let data = DataDir::new();
    let daemon = data.start();
    let (status, _) = daemon.get("/api/v1/customers");
    assert_eq!(status, 401);
    // Series are per route, not per path a client makes up.
    for junk in ["not-a-uuid", "6f1c2b1e-8d0a-4c57-9d2f-0e4b3a1c9d77"] {
        assert_eq!(daemon.get(&format!("/api/v1/customers/{junk}")).0, 401);
    }
    let (code, text) = daemon.get("/metrics");
    assert_eq!(code, 200, "loopback may read /metrics");
    assert!(
        text.contains("route=\"/api/v1/customers/{id}\",method=\"GET\",status=\"401\"")
            && !text.contains("not-a-uuid")
            && !text.contains("6f1c2b1e"),
        "{text}"
    );
    for line in [
        "pagodirecto_postgres_up 1",
        "pagodirecto_postgres_restarts_total 0",
        "pagodirecto_http_requests_total{route=\"/api/v1/customers\",method=\"GET\",status=\"401\"}",
        "pagodirecto_pool_max 16",
        "pagodirecto_build_info{version=",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    assert_eq!(daemon.get("/actuator/prometheus").0, 200);
    let from_socket = ok_stdout(&data.cli(&["metrics"]));
    assert!(
        from_socket.contains("pagodirecto_postgres_up 1"),
        "{from_socket}"
    );

    // The sampler has measured the daemon and postgres within a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let resources = loop {
        let status: serde_json::Value =
            serde_json::from_str(&ok_stdout(&data.cli(&["status", "--json"]))).expect("json");
        if status["resources"].is_object() {
            break status["resources"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no resource sample: {status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        resources["daemon_rss_bytes"].as_u64().expect("rss") > 1_000_000,
        "{resources}"
    );
    assert!(
        resources["postgres_rss_bytes"].as_u64().expect("rss") > 1_000_000,
        "{resources}"
    );
    assert!(
        resources["postgres_processes"].as_u64().expect("count") >= 3,
        "{resources}"
    );
    assert!(daemon.stop().success());

    // With an empty allow list, /metrics does not exist over HTTP.
    let config = data.path().join("closed.toml");
    std::fs::write(&config, "[server]\nmetrics_allow = []\n").expect("config");
    let mut daemon = data.spawn(&["--config", config.to_str().expect("utf8")]);
    daemon.wait_ready(Duration::from_secs(60));
    assert_eq!(daemon.get("/metrics").0, 404);
    assert!(daemon.stop().success());
}

#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping() {
    let data = DataDir::new();
    let socket_path = data.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let notify = socket_path.to_str().expect("utf8").to_string();
    let mut daemon = data.spawn_env(
        &[],
        &[
            ("PAGODIRECTO_BACKUP__SCHEDULE", ""),
            ("NOTIFY_SOCKET", notify.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = String::new();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    while !seen.contains("READY=1") {
        seen.push_str(&next());
        seen.push('\n');
    }
    assert!(seen.contains("STATUS=starting postgres"), "{seen}");
    assert!(
        seen.contains("STATUS=serving on http://127.0.0.1:"),
        "{seen}"
    );
    daemon.wait_ready(Duration::from_secs(30));
    let mut pings = 0;
    while pings < 2 {
        if next().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    daemon.signal(Signal::SIGTERM);
    let mut stopping = false;
    for _ in 0..50 {
        if next().contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1");
    assert!(daemon.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn config_changes_apply_live_or_are_reported_and_bad_ones_are_refused() {
    let data = DataDir::new();
    let file = data.path().join("pagodirecto.toml");
    std::fs::write(&file, "[logging]\nlevel = \"info\"\n").expect("config");
    let file_arg = file.to_str().expect("utf8").to_string();
    let mut daemon = data.spawn(&["--config", &file_arg]);
    daemon.wait_ready(Duration::from_secs(60));
    let status = || -> serde_json::Value {
        serde_json::from_str(&ok_stdout(
            &data.cli(&["status", "--json"]), // no --config: the file may be invalid on purpose
        ))
        .expect("json")
    };
    let first = status()["config_loaded_at"]
        .as_str()
        .expect("loaded at")
        .to_string();

    // Saved the way editors save: a new file renamed over the old one.
    let save = |text: &str| {
        let tmp = data.path().join(".pagodirecto.toml.tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    };
    save(
        "[logging]\nlevel = \"debug\"\n[server]\nauth_rate_limit_per_minute = 5\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let reloaded = loop {
        let s = status();
        if s["config_loaded_at"].as_str() != Some(first.as_str()) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the change was not picked up: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // --listen on the command line still wins, so only what the file changed is pending.
    assert_eq!(
        reloaded["restart_pending"],
        serde_json::json!([]),
        "{reloaded}"
    );
    assert!(
        daemon.log().contains("configuration reloaded"),
        "{}",
        daemon.log()
    );
    // The new auth rate limit applies at once: the sixth request in a minute is refused.
    let codes: Vec<u16> = (0..6)
        .map(|_| {
            let addr = daemon.addr.clone().expect("addr");
            crate::support::http_get(&addr, "/api/v1/auth/me")
                .expect("get")
                .0
        })
        .collect();
    assert_eq!(codes[5], 429, "{codes:?}");

    // A key that needs a restart is reported as such.
    save(
        "[logging]\nlevel = \"debug\"\n[server]\nauth_rate_limit_per_minute = 5\n[limits]\npool_size = 8\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = status();
        if s["restart_pending"] == serde_json::json!(["limits.pool_size"]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restart pending reported: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // An invalid change is refused with the reason, and the daemon keeps serving.
    save("[limits]\npool_size = \"lots\"\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = status();
        if let Some(err) = s["config_error"].as_str() {
            assert!(err.contains("limits.pool_size"), "{err}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bad change was not reported: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(daemon.get("/ready").0, 200);

    // SIGHUP reloads too (after fixing the file).
    std::fs::write(&file, "[logging]\nlevel = \"info\"\n").expect("write");
    std::thread::sleep(Duration::from_millis(600));
    daemon.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !status()["config_error"].is_null() {
        assert!(
            std::time::Instant::now() < deadline,
            "the fixed config was not reloaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon.try_wait().is_none(),
        "SIGHUP does not stop the daemon"
    );
    assert!(daemon.stop().success());
}
