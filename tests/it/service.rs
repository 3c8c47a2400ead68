//! The systemd unit (systemd-analyze verify and security) and the standalone
//! install (`pagodirecto service install|uninstall --root STAGE`), which
//! writes into a staging tree and so leaves the machine alone. The real
//! install on this machine, and the .deb, are tested in tests/package.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{BIN, ok_stdout};

const UNIT: &str = include_str!("../../systemd/pagodirecto.service");
const CONFIG: &str = include_str!("../../packaging/pagodirecto.toml");
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";
/// SPEC §2: the unit is rated at most this by `systemd-analyze security`.
const MAX_EXPOSURE: f64 = 2.0;

fn analyze(args: &[&str]) -> Output {
    Command::new(SYSTEMD_ANALYZE)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SYSTEMD_ANALYZE} (apt-get install systemd): {e}"))
}

/// The unit with ExecStart= on the test binary: `verify` checks that the
/// executable exists, and /usr/bin/pagodirecto does not here.
fn unit_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = pagodirecto::systemd::unit_for(Path::new(BIN));
    fs::write(dir.path().join("pagodirecto.service"), unit).expect("write unit");
    dir
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_warning() {
    let dir = unit_dir();
    let unit = dir.path().join("pagodirecto.service");
    let out = analyze(&["verify", unit.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn the_unit_is_rated_at_most_2_by_systemd_analyze_security() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/pagodirecto.service");
    let out = analyze(&[
        "security",
        "--offline=yes",
        "--no-pager",
        unit.to_str().expect("utf8"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure = exposure(&text).unwrap_or_else(|| {
        panic!(
            "no overall exposure in systemd-analyze security output ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        exposure <= MAX_EXPOSURE,
        "the unit's exposure is {exposure}, above {MAX_EXPOSURE}:\n{text}"
    );
}

/// The number in "→ Overall exposure level for pagodirecto.service: 1.5 OK 🙂".
fn exposure(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit_once(": ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn exposure_is_read_from_the_summary_line() {
    let text =
        "✗ PrivateNetwork= …  0.5\n\n→ Overall exposure level for pagodirecto.service: 1.5 OK 🙂\n";
    assert_eq!(exposure(text), Some(1.5));
    assert_eq!(
        exposure("→ Overall exposure level for x.service: 9.6 UNSAFE 😨"),
        Some(9.6)
    );
    assert_eq!(exposure("nothing here"), None);
}

/// A staging root, removed afterwards.
struct Stage {
    dir: tempfile::TempDir,
}

impl Stage {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    fn service(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("service")
            .args(args)
            .arg("--root")
            .arg(self.dir.path())
            .output()
            .expect("run pagodirecto service")
    }

    /// (uid, gid) of `pagodirecto` in the stage's /etc/passwd.
    fn user(&self) -> Option<(u32, u32)> {
        let passwd = fs::read_to_string(self.path("etc/passwd")).ok()?;
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == "pagodirecto")
                .then(|| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
        })
    }
}

#[track_caller]
fn assert_owner_mode(path: &Path, owner: (u32, u32), mode: u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
        (owner.0, owner.1, mode),
        "owner and mode of {}",
        path.display()
    );
}

#[test]
fn service_install_writes_the_user_directories_config_and_unit() {
    let stage = Stage::new();
    let out = ok_stdout(&stage.service(&["install"]));
    assert!(
        out.contains("next: systemctl daemon-reload && systemctl enable --now pagodirecto"),
        "{out}"
    );

    let (uid, gid) = stage
        .user()
        .expect("pagodirecto in the stage's /etc/passwd");
    assert!(uid > 0 && uid < 1000, "a system uid: {uid}");
    let passwd = fs::read_to_string(stage.path("etc/passwd")).expect("passwd");
    assert!(
        passwd.contains(":/var/lib/pagodirecto:/usr/sbin/nologin"),
        "{passwd}"
    );
    assert_owner_mode(&stage.path("var/lib/pagodirecto"), (uid, gid), 0o700);
    assert_owner_mode(&stage.path("var/log/pagodirecto"), (uid, gid), 0o750);
    assert_owner_mode(
        &stage.path("etc/pagodirecto/pagodirecto.toml"),
        (0, 0),
        0o644,
    );
    assert_eq!(
        fs::read_to_string(stage.path("etc/pagodirecto/pagodirecto.toml")).expect("config"),
        CONFIG
    );

    // The .deb's unit, running the copy in /usr/local/bin.
    let exe = stage.path("usr/local/bin/pagodirecto");
    assert_owner_mode(&exe, (0, 0), 0o755);
    assert_eq!(
        fs::read(&exe).expect("copied binary"),
        fs::read(BIN).expect("test binary")
    );
    let unit =
        fs::read_to_string(stage.path("etc/systemd/system/pagodirecto.service")).expect("unit");
    assert_eq!(
        unit,
        UNIT.replace(
            "ExecStart=/usr/bin/pagodirecto ",
            "ExecStart=/usr/local/bin/pagodirecto "
        )
    );
    let version = Command::new(&exe)
        .arg("--version")
        .output()
        .expect("run copy");
    assert!(version.status.success(), "the copy runs");
}

#[test]
fn service_install_keeps_an_existing_config_and_can_run_again() {
    let stage = Stage::new();
    ok_stdout(&stage.service(&["install"]));
    let config = stage.path("etc/pagodirecto/pagodirecto.toml");
    let edited = format!("{CONFIG}\n[server]\nlisten = [\"0.0.0.0:80\"]\n");
    fs::write(&config, &edited).expect("edit config");
    let uid = stage.user();

    let out = ok_stdout(&stage.service(&["install"]));
    assert!(out.contains("exists: kept as it is"), "{out}");
    assert_eq!(fs::read_to_string(&config).expect("config"), edited);
    assert_eq!(stage.user(), uid, "the same user, not a second one");
}

#[test]
fn service_uninstall_keeps_data_config_and_user_unless_purge() {
    let stage = Stage::new();
    ok_stdout(&stage.service(&["install"]));
    let precious = stage.path("var/lib/pagodirecto/backups/keep.pgdump.zst");
    fs::create_dir_all(precious.parent().expect("parent")).expect("backups dir");
    fs::write(&precious, "a backup").expect("write");

    let out = ok_stdout(&stage.service(&["uninstall"]));
    assert!(out.contains("--purge deletes them"), "{out}");
    assert!(
        !stage
            .path("etc/systemd/system/pagodirecto.service")
            .exists()
    );
    assert!(!stage.path("usr/local/bin/pagodirecto").exists());
    assert!(precious.exists(), "data kept");
    assert!(
        stage.path("etc/pagodirecto/pagodirecto.toml").exists(),
        "config kept"
    );
    assert!(stage.path("var/log/pagodirecto").is_dir(), "logs kept");
    assert!(stage.user().is_some(), "user kept");

    ok_stdout(&stage.service(&["uninstall", "--purge"]));
    for gone in [
        "var/lib/pagodirecto",
        "var/log/pagodirecto",
        "etc/pagodirecto",
    ] {
        assert!(!stage.path(gone).exists(), "{gone} purged");
    }
    assert_eq!(stage.user(), None, "user purged");
}

#[test]
fn service_refuses_to_fight_the_deb() {
    let stage = Stage::new();
    let unit = stage.path("usr/lib/systemd/system/pagodirecto.service");
    fs::create_dir_all(unit.parent().expect("parent")).expect("mkdir");
    fs::write(&unit, UNIT).expect("write");
    for action in ["install", "uninstall"] {
        let out = stage.service(&[action]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{action} succeeded");
        assert!(
            stderr.contains("the pagodirecto .deb is installed") && stderr.contains("apt"),
            "{stderr}"
        );
    }
    assert!(!stage.path("etc/passwd").exists(), "nothing was created");
}

#[test]
fn service_needs_root_and_says_so() {
    // As `nobody`, the way a forgotten sudo looks.
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(BIN)
        .args(["service", "install", "--root", "/nonexistent"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("must run as root") && stderr.contains("sudo"),
        "{stderr}"
    );
}
