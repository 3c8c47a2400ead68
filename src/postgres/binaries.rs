//! Finding, and when needed obtaining, the PostgreSQL binaries to run.
//!
//! Order, each step reported in the log:
//! 1. `[database] bin_dir`, when set (and nothing else is tried);
//! 2. the highest version installed under the data dir, in
//!    `<data>/pg/binaries/<version>/bin` (`pagodirecto postgres install`);
//! 3. a system installation: Debian's `/usr/lib/postgresql/<N>/bin`, highest
//!    supported major, else `pg_config --bindir`;
//! 4. only in [`locate`], and only when `[database] download` is on: a
//!    download of `[database] version` from `[database] mirror`, installed as
//!    in 2 (see [`download`]).
//!
//! Called by `daemon` and the CLI. [`find`] never touches the network;
//! [`archive`] owns how an install lands on disk, [`download`] how one is
//! fetched.
//!
//! Invariant: a directory under `<data>/pg/binaries` whose name does not
//! start with a dot is a complete install that `postgres --version` ran
//! from; work in progress lives in hidden `.install-*` directories, which
//! [`find`] skips.

pub mod archive;
pub mod download;

use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::info;

pub use archive::{Install, install_archive};
pub use download::{archive_url, install_version, target_triple};

/// The oldest major version we run.
pub const MIN_MAJOR: u32 = 14;
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Configured,
    Installed,
    System,
    /// Downloaded from `[database] mirror` by this start; the next start
    /// finds the same directory as [`Origin::Installed`].
    Downloaded,
}

impl Origin {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "configured bin_dir",
            Self::Installed => "installed under the data dir",
            Self::System => "system installation",
            Self::Downloaded => "downloaded from [database] mirror",
        }
    }
}

/// A usable set of binaries: `bin_dir` holds `postgres`, `initdb`, `pg_dump`….
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub bin_dir: PathBuf,
    /// As `postgres --version` prints it: "15.18", "16.4".
    pub version: String,
    pub origin: Origin,
}

impl Binaries {
    /// The major version as PostgreSQL writes it into `PG_VERSION`: "15".
    #[must_use]
    pub fn major(&self) -> String {
        self.version
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("[database] bin_dir = {dir}: {problem}")]
    BadConfigured { dir: PathBuf, problem: String },
    #[error(
        "no PostgreSQL {MIN_MAJOR}+ binaries found (looked in {DEBIAN_ROOT}/*/bin, pg_config and {installs}); install Debian's postgresql package, run `pagodirecto postgres install --archive FILE` or `--version V`, or set [database] bin_dir"
    )]
    NotFound { installs: PathBuf },
    #[error(
        "no PostgreSQL binaries found, and downloading PostgreSQL {version} from {mirror} failed ([database] download = true)"
    )]
    Download {
        version: String,
        mirror: String,
        #[source]
        source: Box<download::Error>,
    },
}

/// Finds binaries for the daemon; when there are none and `[database]
/// download` is on, downloads `[database] version` into `installs`.
pub async fn locate(
    cfg: &crate::config::DatabaseConfig,
    installs: &Path,
) -> Result<Binaries, Error> {
    let bin_dir = cfg.bin_dir.clone();
    let dir = installs.to_path_buf();
    let found = tokio::task::spawn_blocking(move || find(bin_dir.as_deref(), &dir))
        .await
        .expect("binary lookup does not panic");
    match found {
        Err(Error::NotFound { .. }) if cfg.download => {
            info!(version = %cfg.version, mirror = %cfg.mirror, installs = %installs.display(), "no PostgreSQL binaries found; downloading them ([database] download = true)");
            let install = install_version(installs, &cfg.version, &cfg.mirror)
                .await
                .map_err(|source| Error::Download {
                    version: cfg.version.clone(),
                    mirror: cfg.mirror.clone(),
                    source: Box::new(source),
                })?;
            Ok(Binaries {
                origin: Origin::Downloaded,
                ..install.binaries
            })
        }
        other => other,
    }
}

/// Finds binaries without downloading anything.
pub fn find(configured: Option<&Path>, installs: &Path) -> Result<Binaries, Error> {
    if let Some(dir) = configured {
        let binaries = probe(dir, Origin::Configured).map_err(|problem| Error::BadConfigured {
            dir: dir.to_path_buf(),
            problem,
        })?;
        info!(bin_dir = %dir.display(), version = %binaries.version, "using PostgreSQL from the configured bin_dir");
        return Ok(binaries);
    }
    if let Some(binaries) = best(subdirs(installs).map(|d| d.join("bin")), Origin::Installed) {
        info!(bin_dir = %binaries.bin_dir.display(), version = %binaries.version, "using PostgreSQL installed under the data dir");
        return Ok(binaries);
    }
    info!(installs = %installs.display(), "no PostgreSQL installed under the data dir");
    let system = subdirs(Path::new(DEBIAN_ROOT))
        .map(|d| d.join("bin"))
        .chain(pg_config_bindir());
    if let Some(binaries) = best(system, Origin::System) {
        info!(bin_dir = %binaries.bin_dir.display(), version = %binaries.version, "using the system's PostgreSQL");
        return Ok(binaries);
    }
    Err(Error::NotFound {
        installs: installs.to_path_buf(),
    })
}

/// Every directory under `installs` that holds an install, with what
/// [`probe`] says about its `bin`, in version order. For `postgres status`.
#[must_use]
pub fn installed(installs: &Path) -> Vec<(PathBuf, Result<Binaries, String>)> {
    let mut found: Vec<_> = subdirs(installs)
        .map(|dir| {
            let bin = dir.join("bin");
            let probed = probe(&bin, Origin::Installed);
            (bin, probed)
        })
        .collect();
    // Working installs by version, then broken ones by path.
    found.sort_by_cached_key(|(bin, probed)| match probed {
        Ok(b) => (false, version_key(&b.version), PathBuf::new()),
        Err(_) => (true, Vec::new(), bin.clone()),
    });
    found
}

/// Directories in `dir`, except hidden ones: `.install-*` under the
/// installs dir is an install in progress (or one a crash left behind).
fn subdirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    output
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

/// The highest supported version among `dirs`.
fn best(dirs: impl Iterator<Item = PathBuf>, origin: Origin) -> Option<Binaries> {
    dirs.filter_map(|dir| probe(&dir, origin).ok())
        .filter(|b| b.major().parse::<u32>().is_ok_and(|m| m >= MIN_MAJOR))
        .max_by_key(|b| version_key(&b.version))
}

fn version_key(version: &str) -> Vec<u32> {
    version.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Whether two spellings name the same release: theseus archives are
/// "15.18.0", `postgres --version` says "15.18".
fn same_version(a: &str, b: &str) -> bool {
    let trimmed = |v: &str| {
        let mut key = version_key(v);
        while key.last() == Some(&0) {
            key.pop();
        }
        key
    };
    trimmed(a) == trimmed(b)
}

/// Checks that `dir` has what we run and asks `postgres` its version.
pub fn probe(dir: &Path, origin: Origin) -> Result<Binaries, String> {
    for program in ["postgres", "initdb", "pg_dump", "pg_restore", "psql"] {
        if !dir.join(program).is_file() {
            return Err(format!("no {program} in it"));
        }
    }
    let output = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run postgres --version: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "postgres --version failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_version(&text)
        .ok_or_else(|| format!("unexpected postgres --version output {text:?}"))?;
    Ok(Binaries {
        bin_dir: dir.to_path_buf(),
        version,
        origin,
    })
}

/// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" → "15.18".
///
/// The result names a directory under the installs dir, so it is digits
/// separated by single dots and never "", "." or "..".
fn parse_version(text: &str) -> Option<String> {
    let after = text.split("(PostgreSQL)").nth(1)?.trim();
    let version: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let version = version.trim_end_matches('.');
    version
        .split('.')
        .all(|part| !part.is_empty())
        .then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_as_postgres_prints_them() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").as_deref(),
            Some("15.18")
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 16.4\n").as_deref(),
            Some("16.4")
        );
        assert_eq!(parse_version("something else"), None);
        assert_eq!(parse_version("postgres (PostgreSQL) ..\n"), None);
        assert_eq!(parse_version("postgres (PostgreSQL) \n"), None);
    }

    #[test]
    fn archive_and_server_spellings_of_a_version_match() {
        assert!(same_version("15.18.0", "15.18"));
        assert!(same_version("16.4", "16.4.0"));
        assert!(!same_version("16.4.0", "16.40"));
        assert!(!same_version("16.4.1", "16.4"));
    }

    #[test]
    fn hidden_directories_are_not_installs() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(".install-x1")).expect("mkdir");
        std::fs::create_dir(dir.path().join("15.18")).expect("mkdir");
        let names: Vec<_> = subdirs(dir.path()).collect();
        assert_eq!(names, [dir.path().join("15.18")]);
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("15.10") > version_key("15.9"));
        assert!(version_key("16.1") > version_key("15.18"));
    }

    #[test]
    fn a_configured_dir_without_postgres_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = find(Some(dir.path()), Path::new("/nonexistent")).expect_err("refused");
        assert!(err.to_string().contains("no postgres in it"), "{err}");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
