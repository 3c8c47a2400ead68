//! The install tests that change this machine: the .deb's whole life (build
//! it from the already-built binary, lintian, `dpkg -i`, run it as the unit
//! does, upgrade, remove, purge) and a real `pagodirecto service install`.
//!
//! A test binary of its own, not a module of tests/it, on purpose: while a
//! package is installed, /etc/pagodirecto/pagodirecto.toml is the default
//! config of every `pagodirecto` on the machine, and the `pagodirecto` user
//! becomes the PostgreSQL account of every daemon started as root. Cargo
//! runs test binaries one after another, so no test in tests/it runs
//! meanwhile; the tests in here take one lock. Each one refuses to start
//! on a machine that has pagodirecto installed, and puts the machine back as
//! it found it (a drop guard, so also when it fails).

#![allow(clippy::too_many_lines)]

#[allow(dead_code)]
#[path = "../it/support.rs"]
mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use support::{BIN, Daemon, ok_stdout};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const UNIT: &str = include_str!("../../systemd/pagodirecto.service");
const CONFIG: &str = include_str!("../../packaging/pagodirecto.toml");
const README: &str = include_str!("../../README.md");

const DATA: &str = "/var/lib/pagodirecto";
const LOGS: &str = "/var/log/pagodirecto";
const CONFIG_FILE: &str = "/etc/pagodirecto/pagodirecto.toml";
const PACKAGED_UNIT: &str = "/usr/lib/systemd/system/pagodirecto.service";
const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/pagodirecto.service";

static MACHINE: Mutex<()> = Mutex::new(());

/// This machine, claimed for one test: refuses an existing install, and on
/// drop purges whatever the test left and removes the user if it created it.
struct Machine {
    had_user: bool,
    _lock: MutexGuard<'static, ()>,
}

impl Machine {
    fn claim() -> Self {
        let lock = MACHINE.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(
            !is_installed(),
            "the pagodirecto package is installed on this machine; this test installs and purges it, so it will not run here"
        );
        for path in [
            DATA,
            LOGS,
            "/etc/pagodirecto",
            PACKAGED_UNIT,
            "/etc/systemd/system/pagodirecto.service",
            "/usr/bin/pagodirecto",
            "/usr/local/bin/pagodirecto",
        ] {
            assert!(
                !Path::new(path).exists(),
                "{path} exists: pagodirecto is installed here, and this test (which deletes it at the end) will not touch it"
            );
        }
        Self {
            had_user: user("pagodirecto").is_some(),
            _lock: lock,
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = quiet("dpkg", &["--purge", "pagodirecto"]);
        for file in [
            "/etc/systemd/system/pagodirecto.service",
            "/etc/sysusers.d/pagodirecto.conf",
            "/usr/local/bin/pagodirecto",
        ] {
            let _ = fs::remove_file(file);
        }
        for dir in [DATA, LOGS, "/etc/pagodirecto", "/run/pagodirecto"] {
            let _ = fs::remove_dir_all(dir);
        }
        // userdel refuses while a process of the user still exits.
        for _ in 0..40 {
            if self.had_user || user("pagodirecto").is_none() {
                break;
            }
            let _ = quiet("userdel", &["pagodirecto"]);
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn quiet(program: &str, args: &[&str]) -> std::io::Result<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// Runs a command that must succeed; panics with its output otherwise.
#[track_caller]
fn run(program: &str, args: &[&str]) -> String {
    let out = quiet(program, args).unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `name:uid:gid:home:shell` fields of a user, from NSS.
fn user(name: &str) -> Option<Vec<String>> {
    let out = quiet("getent", &["passwd", name]).ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(':')
            .map(str::to_string)
            .collect()
    })
}

/// dpkg's status of the package: "install ok installed", "deinstall ok
/// config-files", or `None` once purged.
fn package_status() -> Option<String> {
    let out = quiet(
        "dpkg-query",
        &["--show", "--showformat=${Status}", "pagodirecto"],
    )
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.ends_with("not-installed"))
}

fn is_installed() -> bool {
    package_status().is_some()
}

#[track_caller]
fn assert_owner_mode(path: &str, owner: &str, mode: u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let ids = user(owner).unwrap_or_else(|| panic!("no user {owner}"));
    assert_eq!(
        (
            meta.uid().to_string(),
            meta.gid().to_string(),
            meta.permissions().mode() & 0o7777
        ),
        (ids[2].clone(), ids[3].clone(), mode),
        "owner (uid, gid) and mode of {path}"
    );
}

/// Builds the .deb from the binary this test run built (so no second
/// compile): cargo-deb with `--no-build` on the dev profile's target dir.
fn build_deb(version: &str, out_dir: &Path) -> PathBuf {
    let target_dir = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("BIN is <target>/<profile>/pagodirecto");
    let out = Command::new(env!("CARGO"))
        .args(["deb", "--no-build", "--profile", "dev", "--strip", "--fast"])
        .args(["--deb-version", version, "--manifest-path"])
        .arg(Path::new(MANIFEST_DIR).join("Cargo.toml"))
        .arg("--output")
        .arg(out_dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo deb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo deb failed ({}); is cargo-deb installed (cargo install cargo-deb --locked, as .ci/run does)?\n{stderr}",
        out.status
    );
    let deb = out_dir.join(format!("pagodirecto_{version}_amd64.deb"));
    assert!(
        deb.exists(),
        "{} missing; cargo deb said:\n{stderr}",
        deb.display()
    );
    deb
}

/// Lintian: no error, and every warning justified in README.md's lintian
/// section (by its tag name).
fn lintian(deb: &Path) {
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .expect("run lintian (apt-get install lintian, as .ci/run does)");
    let text = String::from_utf8_lossy(&out.stdout);
    let justified = README
        .split_once("### lintian")
        .expect("README.md has a `### lintian` section")
        .1;
    let mut problems = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(kind), Some(_package), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        match kind {
            "E:" => problems.push(format!("error: {line}")),
            "W:" if !justified.contains(&format!("`{tag}`")) => {
                problems.push(format!("warning not justified in README.md: {line}"));
            }
            _ => {}
        }
    }
    assert!(
        problems.is_empty(),
        "lintian {}:\n{}\n--- full output ---\n{text}{}",
        deb.display(),
        problems.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dpkg -i`; when dependencies are missing, apt installs them and
/// finishes the configuration (the way `apt install ./file.deb` would).
fn dpkg_install(deb: &Path) {
    let deb = deb.to_str().expect("utf8");
    let out = quiet("dpkg", &["-i", deb]).expect("run dpkg");
    if !out.status.success() {
        run(
            "apt-get",
            &["install", "-f", "-y", "--no-install-recommends"],
        );
    }
    assert_eq!(
        package_status().as_deref(),
        Some("install ok installed"),
        "dpkg -i {deb}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the unit's [Service] section says about how to start the daemon.
struct Exec {
    argv: Vec<String>,
    user: String,
    group: String,
    umask: String,
    env: Vec<(String, String)>,
    runtime_dir: String,
}

impl Exec {
    fn from_unit(unit: &str) -> Self {
        let value = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("the unit has no {key}="))
                .trim()
                .to_string()
        };
        let user = value("User");
        let home = user_home(&user);
        let mut env: Vec<(String, String)> = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend([
            ("HOME".to_string(), home),
            ("USER".to_string(), user.clone()),
            ("LOGNAME".to_string(), user.clone()),
            ("SHELL".to_string(), "/usr/sbin/nologin".to_string()),
        ]);
        for (key, base) in [
            ("StateDirectory", "/var/lib"),
            ("LogsDirectory", "/var/log"),
            ("RuntimeDirectory", "/run"),
            ("ConfigurationDirectory", "/etc"),
        ] {
            let var = match key {
                "StateDirectory" => "STATE_DIRECTORY",
                "LogsDirectory" => "LOGS_DIRECTORY",
                "RuntimeDirectory" => "RUNTIME_DIRECTORY",
                _ => "CONFIGURATION_DIRECTORY",
            };
            env.push((var.to_string(), format!("{base}/{}", value(key))));
        }
        for line in unit.lines().filter_map(|l| l.strip_prefix("Environment=")) {
            let (k, v) = line.split_once('=').expect("Environment=KEY=VALUE");
            env.push((k.to_string(), v.to_string()));
        }
        Self {
            argv: value("ExecStart")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            group: value("Group"),
            umask: value("UMask"),
            runtime_dir: format!("/run/{}", value("RuntimeDirectory")),
            env,
            user,
        }
    }

    /// Starts the daemon as systemd would for this unit (minus the sandbox,
    /// which needs systemd as PID 1): as `User=`/`Group=` with no
    /// capabilities, `UMask=`, the unit's environment, cwd /, its runtime
    /// directory created. Logs go to `log`.
    fn spawn(&self, log: &Path) -> Daemon {
        fs::create_dir_all(&self.runtime_dir).expect("runtime dir");
        run(
            "chown",
            &[&format!("{}:{}", self.user, self.group), &self.runtime_dir],
        );
        fs::set_permissions(&self.runtime_dir, fs::Permissions::from_mode(0o750)).expect("chmod");
        let out = fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("clone");
        let child = Command::new("setpriv")
            .args([
                "--reuid",
                &self.user,
                "--regid",
                &self.group,
                "--init-groups",
            ])
            .args([
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ])
            .args(["sh", "-c", "umask \"$0\" && exec \"$@\"", &self.umask])
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn setpriv");
        Daemon::from_child(child, PathBuf::from(DATA), log.to_path_buf())
    }
}

fn user_home(name: &str) -> String {
    user(name).unwrap_or_else(|| panic!("no user {name}"))[5].clone()
}

/// The first owner's one-time password, from the file the first start
/// writes when there is no terminal (as under systemd).
fn first_owner_password() -> String {
    let text =
        fs::read_to_string(format!("{DATA}/secrets/initial-owner.txt")).expect("first owner file");
    text.split_whitespace()
        .skip_while(|w| *w != "password")
        .nth(1)
        .expect("password in file")
        .to_string()
}

/// Logs the first owner in over HTTP: the data (users, their hashes) is
/// what the daemon serves.
fn login(daemon: &Daemon, password: &str) -> u16 {
    let addr = daemon.addr.as_deref().expect("ready").trim();
    reqwest::blocking::Client::new()
        .post(format!("http://{addr}/api/v1/auth/login"))
        .json(&serde_json::json!({"email": "owner@pagodirecto.local", "password": password}))
        .timeout(Duration::from_secs(30))
        .send()
        .expect("login request")
        .status()
        .as_u16()
}

/// Processes owned by `uid` that run in PGDATA (postgres and its backends).
fn postgres_uids() -> Vec<u32> {
    support::processes_in(&Path::new(DATA).join("pg/data"))
        .into_iter()
        .filter_map(|pid| fs::metadata(format!("/proc/{pid}")).ok())
        .map(|m| m.uid())
        .collect()
}

#[test]
fn deb_installs_runs_upgrades_keeps_data_and_purges() {
    let work = tempfile::tempdir().expect("tempdir");
    let version = |n: u32| format!("{}~test{n}-1", env!("CARGO_PKG_VERSION"));
    let deb1 = build_deb(&version(1), &work.path().join("v1"));
    lintian(&deb1);

    let _machine = Machine::claim();
    dpkg_install(&deb1);

    // What the package put where.
    let account = user("pagodirecto").expect("postinst created the pagodirecto user");
    let uid: u32 = account[2].parse().expect("uid");
    assert!(uid < 1000, "a system user: {account:?}");
    assert_eq!(account[5..], ["/var/lib/pagodirecto", "/usr/sbin/nologin"]);
    assert_owner_mode("/usr/bin/pagodirecto", "root", 0o755);
    assert_owner_mode(DATA, "pagodirecto", 0o700);
    assert_owner_mode(LOGS, "pagodirecto", 0o750);
    assert_owner_mode(CONFIG_FILE, "root", 0o644);
    assert_eq!(fs::read_to_string(CONFIG_FILE).expect("config"), CONFIG);
    let conffiles = run(
        "dpkg-query",
        &["--show", "--showformat=${Conffiles}", "pagodirecto"],
    );
    assert!(conffiles.contains(CONFIG_FILE), "conffiles: {conffiles}");
    assert_eq!(
        fs::read_to_string(PACKAGED_UNIT).expect("unit"),
        UNIT,
        "the unit as in systemd/"
    );
    assert!(
        Path::new("/usr/lib/sysusers.d/pagodirecto.conf").exists(),
        "sysusers.d entry"
    );
    assert!(
        fs::symlink_metadata(ENABLED_LINK).is_ok(),
        "postinst enabled the unit (deb-systemd-helper works without a running systemd)"
    );

    // An operator's edit: a non-default port (0: any free one, written to
    // run/http.addr) and no scheduled backups.
    let edited = CONFIG
        .replace(
            "#listen = [\"127.0.0.1:8080\"]",
            "listen = [\"127.0.0.1:0\"]",
        )
        .replace("#schedule = \"0 2 * * *\"", "schedule = \"\"");
    assert_ne!(edited, CONFIG, "the edit applies to the packaged config");
    fs::write(CONFIG_FILE, &edited).expect("edit config");

    // Start it the way the unit does, as the pagodirecto user.
    let exec = Exec::from_unit(&fs::read_to_string(PACKAGED_UNIT).expect("unit"));
    assert_eq!(exec.user, "pagodirecto");
    let mut daemon = exec.spawn(&work.path().join("daemon-1.log"));
    daemon.wait_ready(Duration::from_secs(120));
    assert!(
        postgres_uids().iter().all(|u| *u == uid) && !postgres_uids().is_empty(),
        "postgres runs as pagodirecto: uids {:?}",
        postgres_uids()
    );
    let password = first_owner_password();
    assert_eq!(login(&daemon, &password), 200, "first owner logs in");
    // The CLI, as root, finds the service through /etc/pagodirecto.
    let status = run("/usr/bin/pagodirecto", &["status", "--json"]);
    assert!(status.contains("\"version\""), "{status}");
    // dpkg owns the binary: `update` says to use apt and touches nothing
    // (it fails before it would read any feed).
    let before = fs::read("/usr/bin/pagodirecto").expect("read the binary");
    let update = quiet("/usr/bin/pagodirecto", &["update"]).expect("run update");
    let said = String::from_utf8_lossy(&update.stderr);
    assert!(
        !update.status.success()
            && said.contains("installed by the Debian package pagodirecto; update it with apt"),
        "{update:?}"
    );
    assert_eq!(fs::read("/usr/bin/pagodirecto").expect("read"), before);
    let files: Vec<_> = fs::read_dir(LOGS).expect("log dir").collect();
    assert!(!files.is_empty(), "daily log files in {LOGS}");
    let status = daemon.stop();
    assert!(status.success(), "clean stop: {status}");
    assert!(postgres_uids().is_empty(), "no postgres left");

    // Upgrade to a rebuilt package with a higher version.
    let deb2 = build_deb(&version(2), &work.path().join("v2"));
    dpkg_install(&deb2);
    let installed = run(
        "dpkg-query",
        &["--show", "--showformat=${Version}", "pagodirecto"],
    );
    assert_eq!(installed, version(2));
    assert_eq!(
        fs::read_to_string(CONFIG_FILE).expect("config"),
        edited,
        "the edited conffile survives the upgrade"
    );
    let mut daemon = exec.spawn(&work.path().join("daemon-2.log"));
    daemon.wait_ready(Duration::from_secs(120));
    assert_eq!(
        login(&daemon, &password),
        200,
        "the same database after the upgrade: the first owner's password still works"
    );
    assert!(daemon.stop().success());

    // Remove: the program goes, data and config stay.
    run("dpkg", &["--remove", "pagodirecto"]);
    assert_eq!(
        package_status().as_deref(),
        Some("deinstall ok config-files")
    );
    assert!(!Path::new("/usr/bin/pagodirecto").exists());
    assert!(!Path::new(PACKAGED_UNIT).exists());
    assert_eq!(
        fs::read_to_string(CONFIG_FILE).expect("config kept"),
        edited
    );
    assert!(
        Path::new(DATA).join("pg/data/PG_VERSION").exists(),
        "data kept"
    );

    // Purge: everything goes.
    run("dpkg", &["--purge", "pagodirecto"]);
    assert_eq!(package_status(), None);
    for gone in [DATA, LOGS, "/etc/pagodirecto", ENABLED_LINK] {
        assert!(
            fs::symlink_metadata(gone).is_err(),
            "{gone} still there after purge"
        );
    }
}

#[test]
fn service_install_on_this_machine_then_uninstall_and_purge() {
    let _machine = Machine::claim();
    let out = ok_stdout(
        &Command::new(BIN)
            .args(["service", "install"])
            .output()
            .expect("run service install"),
    );
    assert!(out.contains("next: systemctl"), "{out}");
    let account = user("pagodirecto").expect("user created");
    assert_eq!(account[5..], ["/var/lib/pagodirecto", "/usr/sbin/nologin"]);
    assert_owner_mode(DATA, "pagodirecto", 0o700);
    assert_owner_mode(LOGS, "pagodirecto", 0o750);
    assert_owner_mode(CONFIG_FILE, "root", 0o644);
    assert_owner_mode("/usr/local/bin/pagodirecto", "root", 0o755);
    let unit = fs::read_to_string("/etc/systemd/system/pagodirecto.service").expect("unit");
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/pagodirecto run --config /etc/pagodirecto/pagodirecto.toml"
        ),
        "{unit}"
    );

    // The installed copy, as the unit runs it, reaches /ready.
    let edited = CONFIG.replace(
        "#listen = [\"127.0.0.1:8080\"]",
        "listen = [\"127.0.0.1:0\"]",
    );
    fs::write(CONFIG_FILE, &edited).expect("edit config");
    let work = tempfile::tempdir().expect("tempdir");
    let mut daemon = Exec::from_unit(&unit).spawn(&work.path().join("daemon.log"));
    daemon.wait_ready(Duration::from_secs(120));
    assert!(daemon.stop().success());

    ok_stdout(
        &Command::new(BIN)
            .args(["service", "uninstall"])
            .output()
            .expect("run service uninstall"),
    );
    assert!(!Path::new("/usr/local/bin/pagodirecto").exists());
    assert!(!Path::new("/etc/systemd/system/pagodirecto.service").exists());
    assert!(
        Path::new(DATA).join("pg/data/PG_VERSION").exists(),
        "data kept"
    );
    assert_eq!(
        fs::read_to_string(CONFIG_FILE).expect("config kept"),
        edited
    );

    ok_stdout(
        &Command::new(BIN)
            .args(["service", "uninstall", "--purge"])
            .output()
            .expect("run service uninstall --purge"),
    );
    for gone in [DATA, LOGS, "/etc/pagodirecto"] {
        assert!(!Path::new(gone).exists(), "{gone} purged");
    }
    assert!(user("pagodirecto").is_none(), "user removed by --purge");
}
