//! Fetches a theseus-rs/postgresql-binaries release archive and its
//! `.sha256` from a mirror, and installs it with [`super::archive`].
//!
//! Called by `pagodirecto postgres install --version` and by
//! [`super::locate`] when nothing is found and `[database] download` is on.
//!
//! Mirror layout, as GitHub serves the theseus releases:
//! `<mirror>/<version>/postgresql-<version>-<target>.tar.gz`, and beside it
//! the same name plus `.sha256`; `<target>` is this build's Rust target
//! triple ([`target_triple`]).
//!
//! Invariants:
//! - nothing downloaded is installed unless the mirror's `.sha256` matches
//!   it. That guards against damage, not against a hostile mirror, which
//!   controls both files;
//! - the archive streams into the staging directory, never into memory, and
//!   is deleted with it;
//! - every request is bounded: a connect timeout, a read timeout between
//!   chunks, an overall timeout and a size limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use tokio::io::AsyncWriteExt as _;
use tracing::info;

use super::archive::{self, Expected, Install, Staging, parse_sha256};
use super::{MIN_MAJOR, same_version};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence between two chunks of a response.
const READ_TIMEOUT: Duration = Duration::from_mins(1);
/// A theseus archive is 10–40 MiB; this allows for a slow line.
const TOTAL_TIMEOUT: Duration = Duration::from_mins(30);
/// Far above any real archive; stops a broken mirror from filling the disk.
const MAX_ARCHIVE_BYTES: u64 = 1 << 30;
const MAX_CHECKSUM_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid [database] mirror {mirror:?}: {problem}")]
    BadMirror { mirror: String, problem: String },
    #[error("invalid PostgreSQL version {0:?}: expected a release such as 16.4.0")]
    BadVersion(String),
    #[error("PostgreSQL {0} is older than the oldest we run ({MIN_MAJOR})")]
    TooOld(String),
    #[error(
        "no PostgreSQL binaries are published for this platform ({0}); install them another way and set [database] bin_dir"
    )]
    UnsupportedPlatform(String),
    #[error("cannot set up an HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("{step} {url} failed")]
    Http {
        step: &'static str,
        url: Url,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: Url, status: StatusCode },
    #[error(
        "no checksum at {url} (it answered {status}); downloads are installed only when their .sha256 verifies them"
    )]
    ChecksumMissing { url: Url, status: StatusCode },
    #[error("{url} is larger than {limit} bytes; refusing it")]
    TooLarge { url: Url, limit: u64 },
    #[error("cannot write the download of {url} to {path}")]
    Write {
        url: Url,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Install(#[from] archive::Error),
}

/// The theseus target triple for this build, `None` where theseus
/// publishes nothing we can run. Always the glibc build: theseus' archives
/// need glibc 2.36 or newer (Debian 12), whatever libc we were built with.
#[must_use]
pub fn target_triple() -> Option<&'static str> {
    triple_for(std::env::consts::ARCH, std::env::consts::OS)
}

fn triple_for(arch: &str, os: &str) -> Option<&'static str> {
    match (arch, os) {
        ("x86_64", "linux") => Some("x86_64-unknown-linux-gnu"),
        ("aarch64", "linux") => Some("aarch64-unknown-linux-gnu"),
        _ => None,
    }
}

/// `<mirror>/<version>/postgresql-<version>-<target>.tar.gz`.
pub fn archive_url(mirror: &str, version: &str, target: &str) -> Result<Url, Error> {
    // The version becomes a path segment and part of a file name.
    let valid_version = version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && version.split('.').all(|part| !part.is_empty());
    if !valid_version {
        return Err(Error::BadVersion(version.to_string()));
    }
    let bad = |problem: &str| Error::BadMirror {
        mirror: mirror.to_string(),
        problem: problem.to_string(),
    };
    let mut url = Url::parse(mirror).map_err(|err| bad(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https are supported"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment cannot be followed by a path"));
    }
    url.path_segments_mut()
        .map_err(|()| bad("it cannot have a path"))?
        .pop_if_empty()
        .push(version)
        .push(&format!("postgresql-{version}-{target}.tar.gz"));
    Ok(url)
}

/// The archive's URL with `.sha256` appended.
#[must_use]
pub fn checksum_url(archive: &Url) -> Url {
    let mut url = archive.clone();
    url.set_path(&format!("{}.sha256", archive.path()));
    url
}

/// Downloads PostgreSQL `version` from `mirror`, verifies it against the
/// mirror's `.sha256` and installs it into `installs`. When that version is
/// already installed, says so and touches neither the network nor the disk.
pub async fn install_version(
    installs: &Path,
    version: &str,
    mirror: &str,
) -> Result<Install, Error> {
    let target = target_triple().ok_or_else(|| {
        Error::UnsupportedPlatform(format!(
            "{}-{}",
            std::env::consts::ARCH,
            std::env::consts::OS
        ))
    })?;
    let url = archive_url(mirror, version, target)?;
    let sums = checksum_url(&url);
    if version
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major < MIN_MAJOR)
    {
        return Err(Error::TooOld(version.to_string()));
    }

    let (dir, wanted) = (installs.to_path_buf(), version.to_string());
    let existing = tokio::task::spawn_blocking(move || {
        super::installed(&dir)
            .into_iter()
            .filter_map(|(_, probed)| probed.ok())
            .find(|b| same_version(&b.version, &wanted))
    })
    .await
    .expect("probing installs does not panic");
    if let Some(binaries) = existing {
        info!(version, bin_dir = %binaries.bin_dir.display(), "PostgreSQL {version} is already installed; not downloading it");
        return Ok(Install {
            binaries,
            fresh: false,
            sha256: None,
        });
    }

    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .user_agent(concat!("pagodirecto/", env!("PAGODIRECTO_VERSION")))
        .build()
        .map_err(Error::Client)?;
    // The checksum first: without one, the archive is not worth fetching.
    let expected = fetch_checksum(&client, &sums).await?;
    let staging = Staging::new(installs)?;
    let file = staging.download_path();
    info!(%url, "downloading PostgreSQL {version}");
    let bytes = fetch_to_file(&client, &url, &file).await?;
    info!(%url, bytes, "downloaded; verifying and unpacking");
    let (label, wanted) = (url.to_string(), version.to_string());
    let install = tokio::task::spawn_blocking(move || {
        staging.install(&file, &label, Some(&expected), Some(&wanted))
    })
    .await
    .expect("installing does not panic")?;
    Ok(install)
}

async fn send(client: &reqwest::Client, url: &Url) -> Result<reqwest::Response, Error> {
    client
        .get(url.clone())
        .send()
        .await
        .map_err(|source| Error::Http {
            step: "requesting",
            url: url.clone(),
            source: source.without_url(),
        })
}

fn reading(url: &Url) -> impl FnOnce(reqwest::Error) -> Error + '_ {
    move |source| Error::Http {
        step: "reading the response from",
        url: url.clone(),
        source: source.without_url(),
    }
}

async fn fetch_checksum(client: &reqwest::Client, url: &Url) -> Result<Expected, Error> {
    let mut response = send(client, url).await?;
    let status = response.status();
    if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
        return Err(Error::ChecksumMissing {
            url: url.clone(),
            status,
        });
    }
    if !status.is_success() {
        return Err(Error::Status {
            url: url.clone(),
            status,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(reading(url))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_CHECKSUM_BYTES {
            return Err(Error::TooLarge {
                url: url.clone(),
                limit: MAX_CHECKSUM_BYTES as u64,
            });
        }
    }
    let sha256 = parse_sha256(&String::from_utf8_lossy(&body)).map_err(|problem| {
        archive::Error::BadChecksumFile {
            file: url.to_string(),
            problem,
        }
    })?;
    Ok(Expected {
        sha256,
        from: url.to_string(),
    })
}

/// Streams `url` into a new file at `path`; returns its size.
async fn fetch_to_file(client: &reqwest::Client, url: &Url, path: &Path) -> Result<u64, Error> {
    let mut response = send(client, url).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::Status {
            url: url.clone(),
            status,
        });
    }
    let too_large = || Error::TooLarge {
        url: url.clone(),
        limit: MAX_ARCHIVE_BYTES,
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ARCHIVE_BYTES)
    {
        return Err(too_large());
    }
    let write_err = |source| Error::Write {
        url: url.clone(),
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::create(path).await.map_err(write_err)?;
    let mut written: u64 = 0;
    while let Some(chunk) = response.chunk().await.map_err(reading(url))? {
        written += chunk.len() as u64;
        if written > MAX_ARCHIVE_BYTES {
            return Err(too_large());
        }
        file.write_all(&chunk).await.map_err(write_err)?;
    }
    // tokio's File writes in the background; flush before anyone reads it.
    file.flush().await.map_err(write_err)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIRROR: &str = "https://github.com/theseus-rs/postgresql-binaries/releases/download";
    const X86: &str = "x86_64-unknown-linux-gnu";

    #[track_caller]
    fn check_url(mirror: &str, version: &str, expected: &str) {
        let url = archive_url(mirror, version, X86).expect("valid");
        assert_eq!(url.as_str(), expected);
    }

    #[track_caller]
    fn check_refused(mirror: &str, version: &str, expected: &str) {
        let err = archive_url(mirror, version, X86).expect_err("refused");
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn url_on_github() {
        check_url(
            MIRROR,
            "16.4.0",
            "https://github.com/theseus-rs/postgresql-binaries/releases/download/16.4.0/postgresql-16.4.0-x86_64-unknown-linux-gnu.tar.gz",
        );
    }
    #[test]
    fn url_with_a_trailing_slash() {
        check_url(
            "http://mirror.lan/pg/",
            "15.18.0",
            "http://mirror.lan/pg/15.18.0/postgresql-15.18.0-x86_64-unknown-linux-gnu.tar.gz",
        );
    }
    #[test]
    fn url_at_the_root_with_a_port() {
        check_url(
            "http://127.0.0.1:8000",
            "15.18.0",
            "http://127.0.0.1:8000/15.18.0/postgresql-15.18.0-x86_64-unknown-linux-gnu.tar.gz",
        );
    }
    #[test]
    fn checksum_url_appends_sha256() {
        let url = archive_url("http://m/x", "16.4.0", X86).expect("valid");
        assert_eq!(
            checksum_url(&url).as_str(),
            "http://m/x/16.4.0/postgresql-16.4.0-x86_64-unknown-linux-gnu.tar.gz.sha256"
        );
    }
    #[test]
    fn version_with_a_slash() {
        check_refused(
            MIRROR,
            "16.4.0/../../x",
            "invalid PostgreSQL version \"16.4.0/../../x\": expected a release such as 16.4.0",
        );
    }
    #[test]
    fn version_dots_only() {
        check_refused(
            MIRROR,
            "..",
            "invalid PostgreSQL version \"..\": expected a release such as 16.4.0",
        );
    }
    #[test]
    fn version_empty() {
        check_refused(
            MIRROR,
            "",
            "invalid PostgreSQL version \"\": expected a release such as 16.4.0",
        );
    }
    #[test]
    fn mirror_not_a_url() {
        check_refused(
            "mirror.lan/pg",
            "16.4.0",
            "invalid [database] mirror \"mirror.lan/pg\": relative URL without a base",
        );
    }
    #[test]
    fn mirror_file_scheme() {
        check_refused(
            "file:///srv/pg",
            "16.4.0",
            "invalid [database] mirror \"file:///srv/pg\": only http and https are supported",
        );
    }
    #[test]
    fn mirror_with_a_query() {
        check_refused(
            "https://m/pg?token=1",
            "16.4.0",
            "invalid [database] mirror \"https://m/pg?token=1\": a query or fragment cannot be followed by a path",
        );
    }

    #[test]
    fn target_triples_follow_the_architecture() {
        assert_eq!(
            triple_for("x86_64", "linux"),
            Some("x86_64-unknown-linux-gnu")
        );
        assert_eq!(
            triple_for("aarch64", "linux"),
            Some("aarch64-unknown-linux-gnu")
        );
        assert_eq!(triple_for("x86_64", "macos"), None);
        assert_eq!(triple_for("riscv64", "linux"), None);
    }

    #[test]
    fn this_build_has_a_target_triple() {
        let triple = target_triple().expect("we build for x86_64 or aarch64 linux");
        assert!(triple.starts_with(std::env::consts::ARCH), "{triple}");
    }
}
