//! `pagodirecto service install|uninstall`: the standalone install, for hosts
//! without the .deb. It writes what the package would: the `pagodirecto`
//! system user (the same sysusers.d entry), `/var/lib/pagodirecto` and
//! `/var/log/pagodirecto`, the default config, and the same hardened unit
//! with `ExecStart=` pointing at the installed binary.
//!
//! Everything goes under `--root` (default `/`), so tests install into a
//! staging tree. Invariants: an existing config is never overwritten, data
//! and logs are deleted only by `uninstall --purge`, and nothing is started:
//! the command prints the next step, and the operator runs it.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use nix::unistd::{Gid, Uid};

use crate::fsutil;
use crate::lock::DataDirLock;
use crate::paths::Paths;
use crate::systemd;

/// The account, as in `packaging/pagodirecto.sysusers`.
const USER: &str = "pagodirecto";
const SYSUSERS: &str = include_str!("../../packaging/pagodirecto.sysusers");
const DEFAULT_CONFIG: &str = include_str!("../../packaging/pagodirecto.toml");

#[derive(Debug, clap::Subcommand)]
pub enum ServiceAction {
    /// Create the pagodirecto user, its directories, the default config (an
    /// existing one is kept) and the systemd unit; copy this binary to
    /// --bin-dir. Does not start anything: it prints the next step
    Install {
        #[command(flatten)]
        target: Target,
    },
    /// Remove the unit and the installed binary; keep data, logs, config and
    /// the user unless --purge
    Uninstall {
        #[command(flatten)]
        target: Target,
        /// Also delete /var/lib/pagodirecto (database, backups, secrets),
        /// /var/log/pagodirecto, /etc/pagodirecto and the pagodirecto user
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// Install into this directory as if it were / (a staging tree)
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Where the binary goes (as seen on the target system)
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
}

/// Every location, as seen on the target system; [`Layout::at`] puts one
/// under `--root`.
struct Layout {
    root: PathBuf,
    exe: PathBuf,
}

const UNIT_FILE: &str = "/etc/systemd/system/pagodirecto.service";
const SYSUSERS_FILE: &str = "/etc/sysusers.d/pagodirecto.conf";
const CONFIG_DIR: &str = "/etc/pagodirecto";
const CONFIG_FILE: &str = "/etc/pagodirecto/pagodirecto.toml";
const DATA_DIR: &str = "/var/lib/pagodirecto";
const LOG_DIR: &str = "/var/log/pagodirecto";
/// Where the .deb puts its unit: when it is there, apt owns the service.
const PACKAGED_UNITS: &[&str] = &[
    "/usr/lib/systemd/system/pagodirecto.service",
    "/lib/systemd/system/pagodirecto.service",
];

impl Layout {
    fn new(target: &Target) -> Result<Self> {
        if !target.bin_dir.is_absolute() {
            bail!(
                "--bin-dir {} must be an absolute path",
                target.bin_dir.display()
            );
        }
        let exe = target.bin_dir.join("pagodirecto");
        // ExecStart= splits on whitespace and interprets quotes and `%`.
        if exe
            .to_str()
            .is_none_or(|s| s.contains(|c: char| c.is_whitespace() || "\"'\\%$".contains(c)))
        {
            bail!(
                "--bin-dir {} cannot go into a unit's ExecStart= (spaces, quotes, % or $); choose another directory",
                target.bin_dir.display()
            );
        }
        Ok(Self {
            root: target.root.clone(),
            exe,
        })
    }

    fn at(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }
}

pub fn run(action: &ServiceAction) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`pagodirecto service` must run as root: it creates the {USER} system user and writes /etc (try: sudo pagodirecto service …)"
        );
    }
    let (target, purge) = match action {
        ServiceAction::Install { target } => (target, None),
        ServiceAction::Uninstall { target, purge } => (target, Some(*purge)),
    };
    let layout = Layout::new(target)?;
    if let Some(unit) = PACKAGED_UNITS.iter().find(|u| layout.at(u).exists()) {
        bail!(
            "the pagodirecto .deb is installed ({unit} exists) and manages the service: upgrade or remove it with apt instead"
        );
    }
    match purge {
        None => install(&layout),
        Some(purge) => uninstall(&layout, purge),
    }
}

fn install(layout: &Layout) -> Result<ExitCode> {
    let exe = install_binary(layout)?;
    let (uid, gid) = ensure_user(layout)?;
    println!("user       {USER} (uid {uid})");

    for (dir, mode) in [(DATA_DIR, 0o700), (LOG_DIR, 0o750)] {
        let path = layout.at(dir);
        fsutil::ensure_dir(&path, mode).with_context(|| format!("creating {}", path.display()))?;
        fsutil::chown(&path, uid, gid)
            .with_context(|| format!("giving {} to {USER}", path.display()))?;
        println!("directory  {dir} ({mode:o}, {USER})");
    }

    let config_dir = layout.at(CONFIG_DIR);
    fsutil::ensure_dir(&config_dir, 0o755)
        .with_context(|| format!("creating {}", config_dir.display()))?;
    let config = layout.at(CONFIG_FILE);
    if config.exists() {
        println!("config     {CONFIG_FILE} exists: kept as it is");
    } else {
        write(&config, DEFAULT_CONFIG, 0o644)?;
        println!("config     {CONFIG_FILE} (the documented defaults)");
    }

    write(&layout.at(UNIT_FILE), &systemd::unit_for(&exe), 0o644)?;
    println!("unit       {UNIT_FILE} (ExecStart={})", exe.display());

    println!("\nnext: systemctl daemon-reload && systemctl enable --now pagodirecto");
    println!(
        "then: journalctl -u pagodirecto -f   (the first owner's password is in {DATA_DIR}/secrets/initial-owner.txt)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Copies the running binary to `--bin-dir` (atomically, so a running copy
/// is replaced, not rewritten) unless it already runs from there.
fn install_binary(layout: &Layout) -> Result<PathBuf> {
    let current = std::env::current_exe().context("finding this binary")?;
    let dest = layout.at(&layout.exe);
    let same =
        fs::canonicalize(&dest).is_ok_and(|d| fs::canonicalize(&current).is_ok_and(|c| c == d));
    if same {
        println!("binary     {} (already there)", layout.exe.display());
    } else {
        let bytes = fs::read(&current).with_context(|| format!("reading {}", current.display()))?;
        write_bytes(&dest, &bytes, 0o755)?;
        println!(
            "binary     {} (copied from {})",
            layout.exe.display(),
            current.display()
        );
    }
    Ok(layout.exe.clone())
}

/// The user from our sysusers.d entry: `systemd-sysusers` when present (as
/// the .deb does), else `useradd` with the same fields.
fn ensure_user(layout: &Layout) -> Result<(Uid, Gid)> {
    let sysusers = layout.at(SYSUSERS_FILE);
    write(&sysusers, SYSUSERS, 0o644)?;
    if let Some(ids) = lookup_user(layout)? {
        return Ok(ids);
    }
    let root = format!("--root={}", layout.root.display());
    let mut cmd = Command::new("systemd-sysusers");
    cmd.arg(&root).arg(&sysusers);
    let status = match cmd.status() {
        Err(err) if err.kind() == ErrorKind::NotFound => {
            let mut cmd = Command::new("useradd");
            cmd.args(["--system", "--user-group", "--no-create-home"])
                .args(["--home-dir", DATA_DIR, "--shell", "/usr/sbin/nologin"])
                .args(["--comment", "PagoDirecto CRM appliance"]);
            if !layout.is_host() {
                cmd.arg("--prefix").arg(&layout.root);
            }
            cmd.arg(USER)
                .status()
                .context("creating the user: neither systemd-sysusers nor useradd could run")?
        }
        other => other.context("running systemd-sysusers")?,
    };
    if !status.success() {
        bail!("creating the {USER} user failed ({status}); create it yourself and run this again");
    }
    lookup_user(layout)?
        .with_context(|| format!("the {USER} user is still missing after creating it"))
}

/// `(uid, gid)` of our user in the target's user database: NSS on the host,
/// `<root>/etc/passwd` in a staging tree.
fn lookup_user(layout: &Layout) -> Result<Option<(Uid, Gid)>> {
    if layout.is_host() {
        let user = nix::unistd::User::from_name(USER)
            .with_context(|| format!("looking up user {USER}"))?;
        return Ok(user.map(|u| (u.uid, u.gid)));
    }
    let passwd = layout.at("/etc/passwd");
    let text = match fs::read_to_string(&passwd) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", passwd.display())),
    };
    Ok(text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, uid, gid, ..] if *name == USER => Some((
                Uid::from_raw(uid.parse().ok()?),
                Gid::from_raw(gid.parse().ok()?),
            )),
            _ => None,
        }
    }))
}

fn uninstall(layout: &Layout, purge: bool) -> Result<ExitCode> {
    if layout.is_host() && Path::new("/run/systemd/system").exists() {
        let status = Command::new("systemctl")
            .args(["disable", "--now", "pagodirecto.service"])
            .status()
            .context("running systemctl disable --now pagodirecto")?;
        if !status.success() {
            eprintln!("pagodirecto: systemctl disable --now pagodirecto: {status} (continuing)");
        }
    }
    // A daemon started by hand still holds the data dir: refuse to pull the
    // unit or the data from under it.
    // (Only an existing lock file: creating one as root would lock the
    // daemon out of it.)
    let data = layout.at(DATA_DIR);
    let lock_file = Paths::new(data.clone(), None, None).lock_file();
    let lock = if lock_file.exists() {
        Some(DataDirLock::acquire(&lock_file, &data).context("checking the data dir")?)
    } else {
        None
    };

    for file in [UNIT_FILE, SYSUSERS_FILE] {
        remove_file(layout, Path::new(file))?;
    }
    remove_file(layout, &layout.exe)?;

    if purge {
        drop(lock);
        for dir in [DATA_DIR, LOG_DIR, CONFIG_DIR] {
            let path = layout.at(dir);
            match fs::remove_dir_all(&path) {
                Ok(()) => println!("removed    {dir}"),
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("removing {}", path.display()));
                }
            }
        }
        if lookup_user(layout)?.is_some() {
            let mut cmd = Command::new("userdel");
            if !layout.is_host() {
                cmd.arg("--prefix").arg(&layout.root);
            }
            let status = cmd.arg(USER).status().context("running userdel")?;
            if !status.success() {
                bail!("userdel {USER} failed ({status})");
            }
            println!("removed    user {USER}");
        }
    } else {
        println!(
            "kept       {DATA_DIR} {LOG_DIR} {CONFIG_FILE} and user {USER} (--purge deletes them)"
        );
    }
    if layout.is_host() && Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    Ok(ExitCode::SUCCESS)
}

fn remove_file(layout: &Layout, file: &Path) -> Result<()> {
    let path = layout.at(file);
    match fs::remove_file(&path) {
        Ok(()) => {
            println!("removed    {}", file.display());
            Ok(())
        }
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    write_bytes(path, text.as_bytes(), mode)
}

/// Atomically, creating the parent directories.
fn write_bytes(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fsutil::write_atomic(path, bytes, mode).with_context(|| format!("writing {}", path.display()))
}
