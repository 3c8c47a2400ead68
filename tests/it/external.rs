//! Several daemons on one external PostgreSQL (`[database] url`): the test
//! starts a plain server on 127.0.0.1 (as the `postgres` account: postgres
//! refuses root), a least-privileged url user, and two instances. Also: the
//! led jobs (missed-backup catch-up, audit pruning), the CLI's own sessions
//! on the external server, and the TLS modes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Daemon, DataDir, Signal, http_get, ok_stdout, send, wait_until};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const ADMIN_PASSWORD: &str = "admin-secret";
const URL_PASSWORD: &str = "pd-secret";

/// A plain PostgreSQL 15 on a free 127.0.0.1 port, stopped by pid on drop.
struct ExternalPg {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// Extra `-c name=value` settings (TLS).
    settings: Vec<String>,
}

fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(Path::new(PG_BIN).join(program));
    cmd
}

impl ExternalPg {
    fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// `settings` gets the server's directory (owned by `postgres`) and
    /// returns extra `name=value` settings.
    fn start_with(settings: impl FnOnce(&Path) -> Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pd-ext-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let user = nix::unistd::User::from_name("postgres")
            .expect("passwd")
            .expect("a postgres account");
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, ADMIN_PASSWORD).expect("pwfile");
        nix::unistd::chown(&pwfile, Some(user.uid), Some(user.gid)).expect("chown");
        let out = as_postgres("initdb")
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "admin",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(dir.path())
            .output()
            .expect("initdb");
        ok_stdout(&out);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let settings = settings(dir.path());
        let mut pg = Self {
            dir,
            port,
            child: None,
            settings,
        };
        pg.spawn();
        pg.admin_sql(
            "postgres",
            &format!("CREATE ROLE pd LOGIN PASSWORD '{URL_PASSWORD}' CREATEROLE BYPASSRLS"),
        );
        pg.admin_sql("postgres", "CREATE DATABASE crm OWNER pd");
        pg
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("log");
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .arg("-k")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(Path::new(PG_BIN).join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .expect("pg_isready");
            if ready.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (SIGINT), then SIGKILL if it lingers.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        send(i64::from(child.id()), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().expect("wait").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("postgres://pd@127.0.0.1:{}/crm", self.port)
    }

    fn admin_sql(&self, db: &str, query: &str) -> String {
        let out = Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "admin",
                "-d",
                db,
                "-c",
                query,
            ])
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .output()
            .expect("psql");
        ok_stdout(&out).trim().to_string()
    }

    /// Runs `query` as `role` (`SET ROLE` from the admin); the output, which
    /// may be a failure.
    fn sql_as(&self, role: &str, query: &str) -> std::process::Output {
        Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", "admin", "-d", "crm"])
            .args(["-c", &format!("SET ROLE {role}"), "-c", query])
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .output()
            .expect("psql")
    }
}

impl Drop for ExternalPg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An instance on `pg`: its own data dir (lock, secrets, backups), backups
/// every 4 seconds. `password_file` picks how the password is given.
fn instance(pg: &ExternalPg, password_file: bool) -> (DataDir, Daemon) {
    let data = DataDir::new();
    let mut daemon = spawn_instance(pg, &data, password_file, &[]);
    daemon.wait_ready(Duration::from_secs(90));
    (data, daemon)
}

fn spawn_instance(
    pg: &ExternalPg,
    data: &DataDir,
    password_file: bool,
    extra: &[(&str, &str)],
) -> Daemon {
    let url = pg.url();
    let file = data.path().join("db.password");
    let mut env = vec![
        ("PAGODIRECTO_DATABASE__URL", url.as_str()),
        ("PAGODIRECTO_DATABASE__BIN_DIR", PG_BIN),
        ("PAGODIRECTO_BACKUP__SCHEDULE", "*/4 * * * * *"),
    ];
    let file_str = file.display().to_string();
    if password_file {
        std::fs::write(&file, format!("{URL_PASSWORD}\n")).expect("password file");
        env.push(("PAGODIRECTO_DATABASE__PASSWORD_FILE", file_str.as_str()));
    } else {
        env.push(("PAGODIRECTO_DATABASE__PASSWORD", URL_PASSWORD));
    }
    env.extend_from_slice(extra);
    data.spawn_env(&[], &env)
}

fn base(daemon: &Daemon) -> String {
    format!("http://{}", daemon.addr.as_deref().expect("ready").trim())
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn post(base: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = client().post(format!("{base}{path}")).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().expect("request");
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(Value::Null))
}

fn login(base: &str, email: &str, password: &str) -> (String, String) {
    let (status, body) = post(
        base,
        "/api/v1/auth/login",
        None,
        &json!({"email": email, "password": password}),
    );
    assert_eq!(status, 200, "login {email} on {base}: {body}");
    (
        body["access_token"].as_str().expect("access").to_string(),
        body["refresh_token"].as_str().expect("refresh").to_string(),
    )
}

fn status(data: &DataDir) -> Value {
    serde_json::from_str(&ok_stdout(&data.cli(&["status", "--json"]))).expect("status json")
}

fn backups(data: &DataDir) -> Vec<PathBuf> {
    std::fs::read_dir(data.path().join("backups"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default()
}

fn first_owner_password(data: &DataDir) -> String {
    let text = std::fs::read_to_string(data.path().join("secrets/initial-owner.txt"))
        .expect("first owner file");
    text.split_whitespace()
        .skip_while(|w| *w != "password")
        .nth(1)
        .expect("password in file")
        .to_string()
}

#[test]
fn two_instances_share_one_external_database() {
    let pg = ExternalPg::start();
    let (data_a, daemon_a) = instance(&pg, false);
    let (data_b, daemon_b) = instance(&pg, true);
    let (a, b) = (base(&daemon_a), base(&daemon_b));

    // No embedded server anywhere; migrations applied once.
    assert!(!data_a.pgdata().exists() && !data_b.pgdata().exists());
    let history = pg.admin_sql(
        "crm",
        "SELECT count(*) || ' ' || count(DISTINCT version) FROM refinery_schema_history",
    );
    let (rows, distinct) = history.split_once(' ').expect("two numbers");
    assert_eq!(rows, distinct, "a migration applied twice");
    assert!(rows.parse::<u32>().expect("count") >= 3, "{history}");
    // The API acts as the application role, not as the url's user.
    assert_eq!(
        pg.admin_sql(
            "crm",
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pagodirecto_app'"
        ),
        "f"
    );

    // A user created through A logs in through B.
    let owner_password = first_owner_password(&data_a);
    let (owner, _) = login(&b, "owner@pagodirecto.local", &owner_password);
    let (status_code, body) = post(
        &a,
        "/api/v1/users",
        Some(&owner),
        &json!({"email": "ana@x.org", "name": "Ana", "role": "agent", "password": "correct horse battery staple"}),
    );
    assert_eq!(status_code, 201, "{body}");
    let (ana, _) = login(&b, "ana@x.org", "correct horse battery staple");
    let res = client()
        .get(format!("{b}/api/v1/customers?limit=5"))
        .bearer_auth(&ana)
        .send()
        .expect("list");
    assert_eq!(res.status().as_u16(), 200);

    // A refresh token spent on A is refused on B (reuse detection is in the database).
    let (_, refresh) = login(&a, "ana@x.org", "correct horse battery staple");
    let (code, _) = post(
        &a,
        "/api/v1/auth/refresh",
        None,
        &json!({"refresh_token": refresh}),
    );
    assert_eq!(code, 200);
    let (code, _) = post(
        &b,
        "/api/v1/auth/refresh",
        None,
        &json!({"refresh_token": refresh}),
    );
    assert_eq!(code, 401);

    // A key rotated on A: tokens A signs with it are accepted by B within
    // seconds, without a restart (B follows the shared keys).
    ok_stdout(&data_a.cli(&["auth", "rotate-key"]));
    let (rotated, _) = login(&a, "ana@x.org", "correct horse battery staple");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = client()
            .get(format!("{b}/api/v1/customers?limit=5"))
            .bearer_auth(&rotated)
            .send()
            .expect("list");
        if res.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still refuses A's token signed with the rotated key: {}",
            res.status()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // status describes the external server; exactly one instance leads.
    let (sa, sb) = (status(&data_a), status(&data_b));
    for s in [&sa, &sb] {
        assert_eq!(s["external"]["reachable"], true, "{s}");
        assert!(
            s["external"]["version"]
                .as_str()
                .is_some_and(|v| v.starts_with("15")),
            "{s}"
        );
        assert!(
            s["external"]["server"]
                .as_str()
                .is_some_and(|v| v.ends_with("/crm")),
            "{s}"
        );
    }
    wait_until(
        "exactly one leader",
        Duration::from_secs(30),
        || status(&data_a)["leader"] != status(&data_b)["leader"],
        || format!("{}\n{}", status(&data_a), status(&data_b)),
    );
    let a_leads = status(&data_a)["leader"] == true;
    let (leader_data, leader, follower_data, follower) = if a_leads {
        (&data_a, daemon_a, &data_b, daemon_b)
    } else {
        (&data_b, daemon_b, &data_a, daemon_a)
    };
    // Only the leader runs the scheduled backups.
    wait_until(
        "the leader takes scheduled backups",
        Duration::from_secs(60),
        || backups(leader_data).len() >= 2,
        || leader.log(),
    );
    assert!(backups(follower_data).is_empty(), "{}", follower.log());
    assert!(follower.log().contains("left to the leading instance"));
    // The follower's status shows the leader's last backup (ops.job_runs).
    let recorded = status(follower_data)["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["job"] == "backup")
        .and_then(|j| j["detail"].as_str().map(|d| format!("{d}.json")))
        .expect("a backup in the follower's status");
    assert!(
        backups(leader_data)
            .iter()
            .any(|b| b.file_name().is_some_and(|f| *f == *recorded)),
        "{recorded} is not among the leader's backups"
    );
    let metrics = http_get(follower.addr.as_deref().expect("addr"), "/metrics")
        .expect("metrics")
        .1;
    assert!(metrics.contains("pagodirecto_postgres_up 1"), "{metrics}");
    assert!(
        metrics.contains("pagodirecto_postgres_latency_seconds"),
        "{metrics}"
    );

    // The leader dies without a word: the follower takes over.
    leader.kill();
    wait_until(
        "the follower takes over leadership",
        Duration::from_secs(60),
        || status(follower_data)["leader"] == true,
        || follower.log(),
    );
    wait_until(
        "the new leader takes scheduled backups",
        Duration::from_secs(60),
        || !backups(follower_data).is_empty(),
        || follower.log(),
    );

    // Restore into the shared server is refused, naming it.
    let name = backups(follower_data)[0]
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let out = follower_data.cli(&["restore", &name, "--yes"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && text.contains("external server"),
        "{text}"
    );

    assert!(follower.stop().success());
}

#[test]
fn an_external_server_restart_is_survived_without_a_restart() {
    let mut pg = ExternalPg::start();
    let (data, mut daemon) = instance(&pg, false);
    let addr = daemon.addr.clone().expect("ready");
    pg.stop();
    wait_until(
        "reported unreachable while the server is down",
        Duration::from_secs(60),
        || status(&data)["external"]["reachable"] == false,
        || daemon.log(),
    );
    let (code, body) = http_get(&addr, "/ready").expect("ready");
    assert_eq!(code, 503, "{body}");
    // A request fails within its timeout instead of hanging.
    let (code, _) = post(
        &base(&daemon),
        "/api/v1/auth/login",
        None,
        &json!({"email": "owner@pagodirecto.local", "password": "x"}),
    );
    assert!(code >= 500, "{code}");
    pg.spawn();
    daemon.wait_ready(Duration::from_secs(60));
    login(
        &base(&daemon),
        "owner@pagodirecto.local",
        &first_owner_password(&data),
    );
    assert!(
        daemon.try_wait().is_none(),
        "the daemon must not have restarted"
    );
    assert!(daemon.stop().success());
}

#[test]
fn tls_verify_full_checks_the_servers_certificate() {
    let user = nix::unistd::User::from_name("postgres")
        .expect("passwd")
        .expect("a postgres account");
    let pg = ExternalPg::start_with(|dir| {
        // A CA, and a server certificate it signs for 127.0.0.1 (webpki
        // refuses a self-signed CA certificate as the server's).
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext file");
        let p = |name: &str| dir.join(name).display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("server.ext"),
            "-out",
            &p("server.crt"),
        ]);
        for file in [&cert, &key] {
            nix::unistd::chown(file, Some(user.uid), Some(user.gid)).expect("chown");
        }
        vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", cert.display()),
            format!("ssl_key_file={}", key.display()),
        ]
    });
    let cert = pg.dir.path().join("ca.crt").display().to_string();

    // The right CA: serves, over TLS, and pg_dump (libpq) verifies too.
    let data = DataDir::new();
    let mut daemon = spawn_instance(
        &pg,
        &data,
        false,
        &[
            ("PAGODIRECTO_DATABASE__SSLMODE", "verify-full"),
            ("PAGODIRECTO_DATABASE__CA_FILE", &cert),
            // No scheduled (or caught-up) backup racing the one asked for.
            ("PAGODIRECTO_BACKUP__SCHEDULE", ""),
        ],
    );
    daemon.wait_ready(Duration::from_secs(90));
    assert_eq!(
        pg.admin_sql(
            "crm",
            "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'pd'"
        ),
        "t"
    );
    let out = data.cli(&["backup", "create", "--name", "over-tls"]);
    ok_stdout(&out);
    assert!(daemon.stop().success());

    // require and prefer: encrypted, without checking the certificate (no
    // CA given); libpq (psql) too.
    for mode in ["require", "prefer"] {
        let dir = DataDir::new();
        let mut daemon =
            spawn_instance(&pg, &dir, false, &[("PAGODIRECTO_DATABASE__SSLMODE", mode)]);
        daemon.wait_ready(Duration::from_secs(90));
        login(
            &base(&daemon),
            "owner@pagodirecto.local",
            &first_owner_password(&data),
        );
        assert_eq!(
            pg.admin_sql(
                "crm",
                "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'pd'"
            ),
            "t",
            "{mode}"
        );
        let out = cli_external_env(
            &pg,
            &dir,
            &[
                "psql",
                "--",
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ],
            "",
            &[("PAGODIRECTO_DATABASE__SSLMODE", mode)],
        );
        assert_eq!(ok_stdout(&out).trim(), "t", "{mode}");
        assert!(daemon.stop().success());
    }

    // Another CA: the start fails and says why.
    let other = DataDir::new();
    let wrong = other.path().join("other-ca.pem");
    let other_key = other.path().join("other.key").display().to_string();
    let other_pem = wrong.display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=other",
        "-keyout",
        &other_key,
        "-out",
        &other_pem,
    ]);
    let mut refused = spawn_instance(
        &pg,
        &other,
        false,
        &[
            ("PAGODIRECTO_DATABASE__SSLMODE", "verify-full"),
            (
                "PAGODIRECTO_DATABASE__CA_FILE",
                &wrong.display().to_string(),
            ),
        ],
    );
    assert!(!refused.wait_exit(Duration::from_secs(60)).success());
    let log = refused.log();
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

fn openssl(args: &[&str]) {
    ok_stdout(
        &Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl"),
    );
}

/// The environment an instance (or a CLI command) gets to reach `pg`.
fn external_env(pg: &ExternalPg) -> Vec<(&'static str, String)> {
    vec![
        ("PAGODIRECTO_DATABASE__URL", pg.url()),
        ("PAGODIRECTO_DATABASE__BIN_DIR", PG_BIN.to_string()),
        ("PAGODIRECTO_DATABASE__PASSWORD", URL_PASSWORD.to_string()),
    ]
}

/// Runs a CLI command on `data` against `pg`, with `stdin` as its input.
fn cli_external(
    pg: &ExternalPg,
    data: &DataDir,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    cli_external_env(pg, data, args, stdin, &[])
}

/// [`cli_external`] with `extra` environment variables.
fn cli_external_env(
    pg: &ExternalPg,
    data: &DataDir,
    args: &[&str],
    stdin: &str,
    extra: &[(&str, &str)],
) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(crate::support::BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .envs(external_env(pg))
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pagodirecto");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn count(pg: &ExternalPg, query: &str) -> i64 {
    pg.admin_sql("crm", query).parse().expect("a count")
}

/// The instance of `a`/`b` that leads, once exactly one does.
fn leading<'a>(a: &'a DataDir, b: &'a DataDir) -> bool {
    wait_until(
        "exactly one leader",
        Duration::from_secs(30),
        || status(a)["leader"] != status(b)["leader"],
        || format!("{}\n{}", status(a), status(b)),
    );
    status(a)["leader"] == true
}

#[test]
fn a_missed_backup_is_caught_up_once_by_whoever_leads() {
    let pg = ExternalPg::start();
    // Yearly, on January 1st: the last scheduled run has passed, no backup
    // exists, and no scheduled run comes during the test.
    let yearly = [("PAGODIRECTO_BACKUP__SCHEDULE", "0 0 1 1 *")];
    let (data_a, data_b) = (DataDir::new(), DataDir::new());
    let mut a = spawn_instance(&pg, &data_a, false, &yearly);
    a.wait_ready(Duration::from_secs(90));
    let mut b = spawn_instance(&pg, &data_b, false, &yearly);
    b.wait_ready(Duration::from_secs(90));
    let (leader_data, leader, follower_data, follower) = if leading(&data_a, &data_b) {
        (&data_a, a, &data_b, b)
    } else {
        (&data_b, b, &data_a, a)
    };

    // The leader catches up once and records it where every instance looks.
    wait_until(
        "the leader catches up the missed backup",
        Duration::from_secs(60),
        || {
            backups(leader_data).len() == 1
                && count(
                    &pg,
                    "SELECT count(*) FROM ops.job_runs WHERE job = 'backup'",
                ) == 1
        },
        || leader.log(),
    );
    assert!(leader.log().contains("catching up now"), "{}", leader.log());
    assert!(backups(follower_data).is_empty(), "{}", follower.log());

    // The leader dies; the follower takes over and finds, in the database,
    // that the missed run was done: no second backup.
    leader.kill();
    wait_until(
        "the follower takes over and checks for missed runs",
        Duration::from_secs(60),
        || follower.log().contains("no scheduled backup was missed"),
        || follower.log(),
    );
    assert_eq!(status(follower_data)["leader"], true);
    assert!(backups(follower_data).is_empty(), "{}", follower.log());
    assert_eq!(backups(leader_data).len(), 1);

    // Had the dead leader's run been before the missed time (here: the
    // record made older than last January 1st), the next leader catches up.
    let data_c = DataDir::new();
    let mut c = spawn_instance(&pg, &data_c, false, &yearly);
    c.wait_ready(Duration::from_secs(90));
    pg.admin_sql(
        "crm",
        "UPDATE ops.job_runs SET last_success = now() - interval '400 days' WHERE job = 'backup'",
    );
    assert_eq!(status(&data_c)["leader"], false);
    follower.kill();
    wait_until(
        "the third instance takes over and catches up",
        Duration::from_secs(60),
        || backups(&data_c).len() == 1,
        || c.log(),
    );
    assert!(c.log().contains("catching up now"), "{}", c.log());
    assert!(backups(follower_data).is_empty());
    assert!(c.stop().success());
}

#[test]
fn old_audit_rows_are_pruned_by_the_leader_alone() {
    let pg = ExternalPg::start();
    let env = [
        ("PAGODIRECTO_AUDIT__KEEP_DAYS", "30"),
        ("PAGODIRECTO_AUDIT__PRUNE_SCHEDULE", "*/2 * * * * *"),
        ("PAGODIRECTO_BACKUP__SCHEDULE", ""),
    ];
    let (data_a, data_b) = (DataDir::new(), DataDir::new());
    let mut a = spawn_instance(&pg, &data_a, false, &env);
    a.wait_ready(Duration::from_secs(90));
    let mut b = spawn_instance(&pg, &data_b, false, &env);
    b.wait_ready(Duration::from_secs(90));
    let (leader, follower) = if leading(&data_a, &data_b) {
        (a, b)
    } else {
        (b, a)
    };

    let real = count(&pg, "SELECT count(*) FROM audit.events");
    assert!(real > 0, "the first owner's creation is audited");
    let craft = |entity: &str, age: &str, n: u32| {
        pg.admin_sql(
            "crm",
            &format!(
                "INSERT INTO audit.events (tenant_id, action, entity, entity_id, at) \
                 SELECT (SELECT id FROM tenancy.tenants LIMIT 1), 'update', '{entity}', gen_random_uuid(), now() - interval '{age}' \
                 FROM generate_series(1, {n})"
            ),
        );
    };
    craft("test.old", "100 days", 7);
    craft("test.recent", "29 days", 3);
    wait_until(
        "rows older than keep_days are pruned",
        Duration::from_secs(60),
        || {
            count(
                &pg,
                "SELECT count(*) FROM audit.events WHERE entity = 'test.old'",
            ) == 0
        },
        || leader.log(),
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM audit.events WHERE entity = 'test.recent'"
        ),
        3
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM audit.events WHERE entity NOT LIKE 'test.%'"
        ),
        real
    );
    // One instance pruned (and said how many rows went); the other left it.
    // The line is written after the DELETE commits, so it may trail the count.
    wait_until(
        "the leader says how many rows it pruned",
        Duration::from_secs(10),
        || {
            leader
                .log()
                .contains("audit log pruned: 7 rows older than 30 days deleted")
        },
        || leader.log(),
    );
    wait_until(
        "the follower leaves pruning to the leader",
        Duration::from_secs(30),
        || {
            follower
                .log()
                .contains("scheduled audit pruning left to the leading instance")
        },
        || follower.log(),
    );
    assert!(
        !follower.log().contains("audit log pruned"),
        "{}",
        follower.log()
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM ops.job_runs WHERE job = 'audit_prune'"
        ),
        1
    );

    // The API's role still cannot change the audit log.
    for statement in [
        "DELETE FROM audit.events",
        "UPDATE audit.events SET entity = 'x'",
    ] {
        let out = pg.sql_as("pagodirecto_app", statement);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("permission denied"),
            "{statement}: {out:?}"
        );
    }
    assert!(leader.stop().success());
    assert!(follower.stop().success());
}

#[test]
fn offline_cli_commands_work_on_the_external_database() {
    let pg = ExternalPg::start();
    let data = DataDir::new();

    // migrate with no instance running: everything applied, nothing embedded.
    let out = cli_external(&pg, &data, &["migrate"], "");
    let text = ok_stdout(&out);
    assert!(text.contains("V4") && !text.contains("pending"), "{text}");
    assert!(!data.pgdata().exists());
    let versions = pg.admin_sql(
        "crm",
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM refinery_schema_history",
    );
    assert_eq!(versions, "1,2,3,4");

    // V4 is idempotent where ops.shared_files was made at run time (before
    // V4 existed): the table and its rows stay.
    pg.admin_sql(
        "crm",
        "INSERT INTO ops.shared_files (name, content) VALUES ('kept', 'x'); \
         DROP TABLE ops.job_runs; DELETE FROM refinery_schema_history WHERE version = 4",
    );
    let status_text = ok_stdout(&cli_external(&pg, &data, &["migrate", "--status"], ""));
    assert!(status_text.contains("1 pending"), "{status_text}");
    ok_stdout(&cli_external(&pg, &data, &["migrate"], ""));
    assert_eq!(
        pg.admin_sql(
            "crm",
            "SELECT content FROM ops.shared_files WHERE name = 'kept'"
        ),
        "x"
    );
    let status_text = ok_stdout(&cli_external(&pg, &data, &["migrate", "--status"], ""));
    assert!(!status_text.contains("pending"), "{status_text}");

    // A tenant and a user created offline log in through an instance.
    let out = ok_stdout(&cli_external(&pg, &data, &["tenant", "add", "acme"], ""));
    assert!(out.contains("created tenant \"acme\""), "{out}");
    let out = ok_stdout(&cli_external(
        &pg,
        &data,
        &[
            "user",
            "add",
            "--tenant",
            "acme",
            "--email",
            "bo@acme.org",
            "--role",
            "admin",
        ],
        "first password here\n",
    ));
    assert!(out.contains("bo@acme.org"), "{out}");
    // Bound, not `_`: the data dir must outlive the daemon that writes in it.
    let (_daemon_data, daemon) = instance(&pg, false);
    login(&base(&daemon), "bo@acme.org", "first password here");

    // sslmode = require against a server without TLS: refused, saying why.
    let out = cli_external_env(
        &pg,
        &data,
        &["migrate", "--status"],
        "",
        &[("PAGODIRECTO_DATABASE__SSLMODE", "require")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("TLS")
            && err.contains(&format!("127.0.0.1:{}/crm", pg.port)),
        "{err}"
    );

    // With an instance running too: reset-password and psql reach the server.
    ok_stdout(&cli_external(
        &pg,
        &data,
        &["user", "reset-password", "--email", "bo@acme.org"],
        "second password here\n",
    ));
    login(&base(&daemon), "bo@acme.org", "second password here");
    let out = ok_stdout(&cli_external(
        &pg,
        &data,
        &[
            "psql",
            "--",
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT current_user || ' ' || current_database()",
        ],
        "",
    ));
    assert_eq!(out.trim(), "pd crm");

    // auth rotate-key here (no daemon on this data dir): rotated from the
    // shared keys and published back, so the instances' tokens stay valid.
    let shared = |pg: &ExternalPg| {
        pg.admin_sql(
            "crm",
            "SELECT content FROM ops.shared_files WHERE name = 'jwt-keys.json'",
        )
    };
    let before = shared(&pg);
    ok_stdout(&cli_external(&pg, &data, &["auth", "rotate-key"], ""));
    let after = shared(&pg);
    assert_ne!(after, before);
    assert_eq!(
        std::fs::read_to_string(data.path().join("secrets/jwt-keys.json"))
            .expect("local keys")
            .trim(),
        after
    );
    let kids = |text: &str| -> Vec<String> {
        let keys: Value = serde_json::from_str(text).expect("json keys");
        keys.as_array()
            .expect("a list of keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect()
    };
    let (old_kids, new_kids) = (kids(&before), kids(&after));
    assert!(
        new_kids.len() == old_kids.len() + 1 && old_kids.iter().all(|k| new_kids.contains(k)),
        "the shared keys are kept and one added: {old_kids:?} -> {new_kids:?}"
    );
    assert!(!data.pgdata().exists());
    assert!(daemon.stop().success());
}
