//! Self-update of a standalone install, up to "a verified new binary is
//! staged next to the current one", and the swap itself.
//!
//! [`check`] reads the release feed (`[update] feed`, a GitHub-style
//! releases API) and says what the channel offers; [`stage`] downloads the
//! release archive beside the executable, verifies its ed25519 (zipsign)
//! signature against the keys built into this binary, unpacks the binary
//! and runs it (`version --json`) to learn what it really is; [`install`]
//! swaps it in, keeping the old one as `<exe>.previous`, and
//! [`Installed::revert`] puts that back. `feed` reads and downloads,
//! `verify` holds the trusted keys, the signature check, the unpacking and
//! the probe.
//!
//! Called by `cli::update` (the offline path: no daemon runs) and by
//! `daemon` (an update asked over the control socket, or an automatic one).
//! Knows nothing of either: it gets the `[update]` section and a path.
//!
//! Invariants:
//! - An archive is refused unless a key built into the binary signed it
//!   (with its file name as the signature's context); there is always at
//!   least one such key (a compile-time assertion), so "no keys" can never
//!   mean "no verification".
//! - Nothing from the feed runs before its signature is verified.
//! - A refusal leaves nothing behind: every file [`stage`] writes is a
//!   temporary file beside the executable until every check passed.
//! - [`install`] never leaves a moment without a file at the executable's
//!   path: the old binary is hard-linked to `.previous`, and the new one is
//!   renamed over the old name.
//! - The binary's own version is [`VERSION`] everywhere (status, logs,
//!   `--version`, metrics); `pagodirecto version --json` prints it with the
//!   schema version the binary migrates to.

mod feed;
mod verify;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::UpdateConfig;

pub use verify::TRUSTED_KEYS;

/// The version this binary reports: `$PAGODIRECTO_VERSION` at build time, or
/// Cargo.toml's (see build.rs, which checks that it is semver).
pub const VERSION: &str = env!("PAGODIRECTO_VERSION");

/// This binary's version, parsed.
#[must_use]
pub fn current_version() -> semver::Version {
    semver::Version::parse(VERSION).expect("build.rs checks that PAGODIRECTO_VERSION is semver")
}

/// The running executable's path, as [`stage`] and [`install`] want it.
///
/// Linux reports `<path> (deleted)` once the file was replaced, which is
/// what an update does to a running daemon's binary: the suffix is dropped,
/// so a second update in the same process still finds the right directory.
pub fn current_exe() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        step: "finding the running executable",
        path: "/proc/self/exe".into(),
        source,
    })?;
    Ok(strip_deleted(exe))
}

fn strip_deleted(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

/// One release of the feed that carries an archive for this platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: semver::Version,
    /// The tag as the feed spells it (`v0.2.0`).
    pub tag: String,
    /// A semver pre-release, or flagged `prerelease` by the feed.
    pub prerelease: bool,
    /// `pagodirecto-<version>-x86_64-linux.tar.gz`.
    pub asset_name: String,
    pub asset_url: String,
    /// The release notes (the release's body), when it has any.
    pub notes: Option<String>,
}

/// What the channel offers, compared with this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    pub current: semver::Version,
    /// The newest release on the channel, newer than `current` or not.
    pub latest: Option<Release>,
}

impl Available {
    /// The newest release when it is newer than this binary.
    #[must_use]
    pub fn newer(&self) -> Option<&Release> {
        self.latest.as_ref().filter(|r| r.version > self.current)
    }
}

/// Choices for [`stage`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Take the newest release on the channel even when it is not newer
    /// than this binary (an older one, or the same one again).
    pub allow_downgrade: bool,
}

/// A verified new binary, beside the one it is to replace.
#[derive(Debug)]
pub struct Staged {
    /// What the binary itself reports (equal to the release's tag).
    pub version: semver::Version,
    /// The schema version it migrates to ([`crate::migrate::latest_known`]
    /// of that binary); higher than ours means it brings migrations.
    pub schema: i64,
    /// The staged file: verified, 0755, in the same directory as `exe`.
    pub binary: PathBuf,
    /// The executable it replaces.
    pub exe: PathBuf,
}

impl Staged {
    /// Deletes the staged binary (the update was abandoned).
    pub fn discard(self) -> Result<(), Error> {
        std::fs::remove_file(&self.binary).map_err(|source| Error::Io {
            step: "removing the staged binary",
            path: self.binary.clone(),
            source,
        })
    }
}

/// The outcome of [`install`]: the new binary is at `exe`, the old one at
/// `previous`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub exe: PathBuf,
    pub previous: PathBuf,
}

/// Everything that can stop an update. Each message names the URL, asset,
/// file or step; the refusals say that nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the release feed {url}")]
    Feed {
        url: String,
        #[source]
        source: self_update::Error,
    },
    #[error("the release feed {url} did not answer a GitHub-style release list")]
    FeedFormat {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "no release with a {asset_suffix} archive on the {channel} channel of {url}; nothing was changed"
    )]
    NoRelease {
        channel: &'static str,
        url: String,
        asset_suffix: String,
    },
    #[error(
        "pagodirecto {current} is already up to date (the newest release on the {channel} channel); nothing was changed"
    )]
    UpToDate {
        current: semver::Version,
        channel: &'static str,
    },
    #[error(
        "the newest release on the {channel} channel, {offered}, is older than this binary ({current}): refusing a downgrade (--allow-downgrade takes it); nothing was changed"
    )]
    Downgrade {
        current: semver::Version,
        offered: semver::Version,
        channel: &'static str,
    },
    #[error(
        "cannot write beside the binary in {dir}: the new version is downloaded and staged there. A binary installed by the .deb (in /usr/bin) is updated by apt; a standalone install should put the binary in a directory its user can write (e.g. /opt/pagodirecto)"
    )]
    DirNotWritable {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("downloading {asset} from {url} failed; nothing was changed")]
    Download {
        asset: String,
        url: String,
        #[source]
        source: self_update::Error,
    },
    #[error(
        "the archive {asset} from {url} has no valid signature from a trusted key (it carries no signature, or it is truncated); nothing was changed"
    )]
    Unsigned {
        asset: String,
        url: String,
        #[source]
        source: self_update::zipsign_api::verify::VerifyTarError,
    },
    #[error(
        "the archive {asset} from {url} has no valid signature from a trusted key (it is signed by a key this binary does not trust or for another file name, or was altered after signing); nothing was changed"
    )]
    Untrusted { asset: String, url: String },
    #[error("the archive {asset} is signed but cannot be unpacked; nothing was changed")]
    Corrupt {
        asset: String,
        #[source]
        source: io::Error,
    },
    #[error("the archive {asset} has no file {member} (the binary); nothing was changed")]
    MissingBinary { asset: String, member: String },
    #[error(
        "running the new binary ({binary} version --json) failed: {detail}; nothing was changed"
    )]
    Probe { binary: PathBuf, detail: String },
    #[error(
        "the feed says {asset} is release {tag}, but the binary inside reports version {reported}: refusing it; nothing was changed"
    )]
    VersionMismatch {
        asset: String,
        tag: String,
        reported: semver::Version,
    },
    #[error("{step} ({path})")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the update task failed: {0}")]
    Task(String),
}

/// Reads the feed and returns the newest release on the channel.
pub async fn check(cfg: &UpdateConfig) -> Result<Available, Error> {
    // self_update's download is blocking (reqwest's blocking client).
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || feed::releases(&cfg))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Check, download, verify, unpack and probe: on success a new binary is
/// staged beside `exe`, and on any error nothing is left there.
pub async fn stage(cfg: &UpdateConfig, exe: &Path, options: &Options) -> Result<Staged, Error> {
    let dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    // Before any network: a read-only /usr/bin should be a clear error, not
    // a failure after a long download.
    let download = verify::temp_in(&dir)?;
    remove_leftovers(&dir, exe);
    let available = check(cfg).await?;
    let channel = cfg.channel.as_str();
    let Some(release) = available.latest else {
        return Err(Error::NoRelease {
            channel,
            url: feed::releases_url(cfg),
            asset_suffix: feed::asset_suffix(),
        });
    };
    let current = available.current;
    if release.version <= current && !options.allow_downgrade {
        return Err(if release.version == current {
            Error::UpToDate { current, channel }
        } else {
            Error::Downgrade {
                current,
                offered: release.version,
                channel,
            }
        });
    }
    tracing::info!(version = %release.version, url = %release.asset_url, "downloading the release archive");
    let unpacked = {
        let release = release.clone();
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<tempfile::TempPath, Error> {
            let mut download = download;
            feed::download(&release, download.as_file_mut())?;
            verify::signature(&release, download.as_file_mut())?;
            verify::unpack(&release, download.as_file_mut(), &dir)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??
    };
    tracing::info!(asset = %release.asset_name, "signature verified; asking the new binary what it is");
    let (reported, schema) = verify::probe(&unpacked).await?;
    if reported != release.version {
        return Err(Error::VersionMismatch {
            asset: release.asset_name,
            tag: release.tag,
            reported,
        });
    }
    let binary = dir.join(staged_name(exe, &release.version));
    unpacked.persist(&binary).map_err(|e| Error::Io {
        step: "keeping the staged binary",
        path: binary.clone(),
        source: e.error,
    })?;
    sync_dir(&dir)?;
    tracing::info!(version = %release.version, schema, binary = %binary.display(), "new binary staged");
    Ok(Staged {
        version: release.version,
        schema,
        binary,
        exe: exe.to_path_buf(),
    })
}

/// Staged binaries an interrupted update left beside `exe` (named
/// `<exe name>-<version>.staged`: nothing else is). Temp files are not
/// touched: another update may be downloading into one now.
fn remove_leftovers(dir: &Path, exe: &Path) {
    let Some(prefix) = exe
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| format!("{n}-"))
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".staged") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed a binary an interrupted update left");
                }
                Err(err) => {
                    tracing::warn!(file = %entry.path().display(), %err, "cannot remove a binary an interrupted update left");
                }
            }
        }
    }
}

/// `<exe name>-<version>.staged`, beside the executable.
fn staged_name(exe: &Path, version: &semver::Version) -> OsString {
    let mut name = exe
        .file_name()
        .map_or_else(|| OsString::from("pagodirecto"), ToOwned::to_owned);
    name.push(format!("-{version}.staged"));
    name
}

/// `<exe>.previous`.
fn previous_path(exe: &Path) -> PathBuf {
    let mut name = exe.as_os_str().to_owned();
    name.push(".previous");
    PathBuf::from(name)
}

/// Swaps `staged` in: the current binary is hard-linked to `<exe>.previous`
/// (replacing an older one), then the staged one is renamed over `exe`, and
/// the directory is fsynced. Each step is a rename, so `exe` always exists.
pub fn install(staged: Staged) -> Result<Installed, Error> {
    let exe = staged.exe;
    let dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    let previous = previous_path(&exe);
    // A link under a temporary name first: `link` cannot replace an older
    // `.previous`, and removing that first would leave a moment without one.
    let mut link_name = previous.as_os_str().to_owned();
    link_name.push(format!(".tmp-{}", std::process::id()));
    let link = PathBuf::from(link_name);
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(&exe, &link).map_err(|source| Error::Io {
        step: "keeping the current binary (hard link)",
        path: link.clone(),
        source,
    })?;
    if let Err(source) = std::fs::rename(&link, &previous) {
        let _ = std::fs::remove_file(&link);
        return Err(Error::Io {
            step: "keeping the current binary",
            path: previous,
            source,
        });
    }
    std::fs::rename(&staged.binary, &exe).map_err(|source| Error::Io {
        step: "moving the new binary into place",
        path: exe.clone(),
        source,
    })?;
    sync_dir(&dir)?;
    Ok(Installed { exe, previous })
}

impl Installed {
    /// Puts the previous binary back at `exe` (one rename: atomic), the way
    /// a rollback does. `previous` is gone afterwards.
    pub fn revert(&self) -> Result<(), Error> {
        std::fs::rename(&self.previous, &self.exe).map_err(|source| Error::Io {
            step: "putting the previous binary back",
            path: self.exe.clone(),
            source,
        })?;
        sync_dir(self.exe.parent().unwrap_or(Path::new(".")))
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            step: "syncing the directory",
            path: dir.to_path_buf(),
            source,
        })
}

/// The label of the backup taken before updating to `version`
/// (`pagodirecto-<time>-before-update-to-0_2_0`): the same whether the
/// daemon or the offline command takes it.
#[must_use]
pub fn backup_label(version: &str) -> String {
    let version: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("before-update-to-{version}")
}

/// The Debian package that owns `exe`, when dpkg installed it: then apt,
/// not `pagodirecto update`, replaces it. Asks `dpkg-query --search`, the
/// interface dpkg supports (its database files are private); no dpkg, no
/// package.
#[must_use]
pub fn package_owner(exe: &Path) -> Option<String> {
    let wanted = exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf());
    let out = std::process::Command::new("dpkg-query")
        .arg("--search")
        .arg(&wanted)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    owner_in_search(&String::from_utf8_lossy(&out.stdout), &wanted)
}

/// The package named for exactly `path` in `dpkg-query --search` output
/// (`pkg[:arch][, pkg2]: /path` lines; diversion lines are skipped).
fn owner_in_search(output: &str, path: &Path) -> Option<String> {
    output.lines().find_map(|line| {
        if line.starts_with("diversion ") {
            return None;
        }
        let (packages, listed) = line.split_once(": ")?;
        if Path::new(listed.trim()) != path {
            return None;
        }
        let first = packages.split(", ").next()?.trim();
        // Multi-arch packages are named `name:arch`.
        Some(first.split(':').next().unwrap_or(first).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_version_is_semver_and_the_key_list_is_not_empty() {
        assert_eq!(current_version().to_string(), VERSION);
        assert!(!TRUSTED_KEYS.is_empty());
    }

    #[test]
    fn the_package_named_for_exactly_the_binary_owns_it() {
        let exe = Path::new("/usr/bin/pagodirecto");
        let found = "pagodirecto:amd64: /usr/bin/pagodirecto\n";
        assert_eq!(owner_in_search(found, exe).as_deref(), Some("pagodirecto"));
        let shared = "pagodirecto, pagodirecto-tools: /usr/bin/pagodirecto\n";
        assert_eq!(owner_in_search(shared, exe).as_deref(), Some("pagodirecto"));
        let diverted = "diversion by x from: /usr/bin/pagodirecto\nx: /usr/bin/pagodirecto.real\n";
        assert_eq!(owner_in_search(diverted, exe), None);
        assert_eq!(owner_in_search("coreutils: /usr/bin/ls\n", exe), None);
        assert_eq!(owner_in_search("", exe), None);
    }

    #[test]
    fn a_binary_no_package_installed_belongs_to_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("pagodirecto");
        std::fs::write(&exe, b"binary").expect("write");
        assert_eq!(package_owner(&exe), None);
    }

    fn staged_in(dir: &Path, new: &[u8]) -> Staged {
        let exe = dir.join("pagodirecto");
        let binary = dir.join("pagodirecto-9.9.9.staged");
        std::fs::write(&binary, new).expect("write");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Staged {
            version: semver::Version::new(9, 9, 9),
            schema: 1,
            binary,
            exe,
        }
    }

    #[test]
    fn install_keeps_the_previous_binary_and_revert_puts_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("pagodirecto");
        std::fs::write(&exe, b"old").expect("write");
        std::fs::write(previous_path(&exe), b"older").expect("write");

        let installed = install(staged_in(dir.path(), b"new")).expect("install");
        assert_eq!(installed.exe, exe);
        assert_eq!(std::fs::read(&exe).expect("read"), b"new");
        assert_eq!(std::fs::read(&installed.previous).expect("read"), b"old");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        assert_eq!(names, ["pagodirecto", "pagodirecto.previous"]);

        installed.revert().expect("revert");
        assert_eq!(std::fs::read(&exe).expect("read"), b"old");
        assert!(!installed.previous.exists());
    }

    #[test]
    fn staged_binaries_an_interrupted_update_left_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("pagodirecto");
        for name in [
            "pagodirecto",
            "pagodirecto-0.1.1.staged",
            "other-0.1.1.staged",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        remove_leftovers(dir.path(), &exe);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        assert_eq!(names, ["notes.txt", "other-0.1.1.staged", "pagodirecto"]);
    }

    #[test]
    fn a_discarded_stage_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pagodirecto"), b"old").expect("write");
        staged_in(dir.path(), b"new").discard().expect("discard");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_replaced_executable_is_still_found_at_its_path() {
        assert_eq!(
            strip_deleted("/opt/pd/pagodirecto (deleted)".into()),
            Path::new("/opt/pd/pagodirecto")
        );
        assert_eq!(
            strip_deleted("/opt/pd/pagodirecto".into()),
            Path::new("/opt/pd/pagodirecto")
        );
    }

    #[test]
    fn staged_binaries_are_named_after_the_exe_and_version() {
        let version = semver::Version::parse("1.2.3-beta.1").expect("semver");
        assert_eq!(
            staged_name(Path::new("/opt/pd/pagodirecto"), &version),
            "pagodirecto-1.2.3-beta.1.staged"
        );
        assert_eq!(
            previous_path(Path::new("/opt/pd/pagodirecto")),
            Path::new("/opt/pd/pagodirecto.previous")
        );
    }
}
