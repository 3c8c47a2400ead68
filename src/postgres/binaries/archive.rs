//! Installs PostgreSQL binaries from a theseus-rs/postgresql-binaries
//! release archive (`postgresql-<version>-<target>.tar.gz`) into
//! `<data>/pg/binaries/<version>`.
//!
//! Called by `pagodirecto postgres install --archive` and by
//! [`super::download`] once it has fetched an archive.
//!
//! Invariants:
//! - `<installs>/<version>` appears by one `rename` from a hidden
//!   `.install-*` staging directory in the same parent, and only after the
//!   archive matched its sha256 (when one is given) and `postgres --version`
//!   ran from the unpacked `bin`. Every failure drops the staging directory,
//!   so nothing half-unpacked is ever found, and an existing install is not
//!   touched;
//! - no archive entry lands outside the staging directory: `..`, absolute
//!   paths, links pointing out and device files are refused, not skipped;
//! - an install that works is never replaced: installing its version again
//!   is a no-op that says so. A directory of that version that does not work
//!   (someone deleted `bin/postgres`) is replaced.
//!
//! Installing only adds a directory and never changes one in use, so it
//! needs no data-dir lock: a running daemon keeps the binaries it started
//! with and finds new ones at its next start.

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest as _, Sha256};
use tar::EntryType;
use tracing::{info, warn};

use super::{Binaries, MIN_MAJOR, Origin, probe, same_version};

/// Hidden, so [`super::find`] never mistakes work in progress for an install.
const STAGING_PREFIX: &str = ".install-";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file} is not a sha256 checksum file: {problem}")]
    BadChecksumFile { file: String, problem: String },
    #[error(
        "checksum mismatch for {archive}: {checksum_file} expects sha256 {expected}, but the archive's sha256 is {actual}"
    )]
    ChecksumMismatch {
        archive: String,
        checksum_file: String,
        expected: String,
        actual: String,
    },
    #[error("cannot unpack {archive}; is it damaged or truncated?")]
    Unpack {
        archive: String,
        #[source]
        source: io::Error,
    },
    #[error("refusing {archive}: its entry {entry:?} {problem}")]
    UnsafeEntry {
        archive: String,
        entry: String,
        problem: &'static str,
    },
    #[error("{archive} is not a PostgreSQL binaries archive: {problem}")]
    NotPostgres { archive: String, problem: String },
    #[error("{archive} holds PostgreSQL {version}; the oldest we run is {MIN_MAJOR}")]
    TooOld { archive: String, version: String },
    #[error("{archive} holds PostgreSQL {found}, not the requested {requested}")]
    WrongVersion {
        archive: String,
        found: String,
        requested: String,
    },
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// The binaries in `<installs>/<version>/bin`, origin [`Origin::Installed`].
    pub binaries: Binaries,
    /// `false` when that version was already installed and was left as it was.
    pub fresh: bool,
    /// The sha256 the archive matched, when there was one to check.
    pub sha256: Option<String>,
}

/// The sha256 an archive must have, and who says so (a file or a URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Lower-case hex.
    pub sha256: String,
    pub from: String,
}

/// `FILE.sha256`: where theseus publishes each archive's checksum.
#[must_use]
pub fn checksum_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Reads a sha256 checksum file: a hex digest, optionally followed by
/// whitespace and a file name (as `sha256sum` writes it). The file name is
/// not compared, so a renamed archive still verifies. Returns lower-case hex.
pub fn parse_sha256(text: &str) -> Result<String, String> {
    let digest = text.split_whitespace().next().ok_or("it is empty")?;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        let shown: String = digest.chars().take(70).collect();
        return Err(format!("{shown:?} is not 64 hex digits"));
    }
    Ok(digest.to_ascii_lowercase())
}

/// Installs `archive` into `installs`, verifying it against `FILE.sha256`
/// when that file exists (an archive copied by hand may come without one).
/// Blocking: unpacks and runs `postgres --version`.
pub fn install_archive(installs: &Path, archive: &Path) -> Result<Install, Error> {
    // A missing archive is the news, not its missing checksum.
    File::open(archive).map_err(|source| Error::Io {
        action: "open",
        path: archive.to_path_buf(),
        source,
    })?;
    let sidecar = checksum_path(archive);
    let expected = match fs::read_to_string(&sidecar) {
        Ok(text) => Some(Expected {
            sha256: parse_sha256(&text).map_err(|problem| Error::BadChecksumFile {
                file: sidecar.display().to_string(),
                problem,
            })?,
            from: sidecar.display().to_string(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            warn!(archive = %archive.display(), checksum_file = %sidecar.display(), "no checksum file beside the archive; installing it unverified");
            None
        }
        Err(source) => {
            return Err(Error::Io {
                action: "read",
                path: sidecar,
                source,
            });
        }
    };
    Staging::new(installs)?.install(
        archive,
        &archive.display().to_string(),
        expected.as_ref(),
        None,
    )
}

/// A hidden directory under the installs dir where one install is
/// assembled; dropping it removes it and everything in it, whatever
/// happened.
///
/// It is private (0700, as `tempfile` creates it), so unpacking before the
/// checksum is known is harmless: nothing in it runs until the digest
/// matched.
pub(super) struct Staging {
    dir: tempfile::TempDir,
    installs: PathBuf,
}

impl Staging {
    pub(super) fn new(installs: &Path) -> Result<Self, Error> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io {
                action: "create",
                path,
                source,
            }
        };
        // `<data>` and `<data>/pg` are private, as `Cluster::prepare` makes
        // them (and later hands to the postgres account); the installs dir
        // itself is 0755 so that account can reach the binaries when the
        // install ran as root.
        if let Some(parent) = installs.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err(parent))?;
        }
        match fs::create_dir(installs) {
            Ok(()) => fs::set_permissions(installs, fs::Permissions::from_mode(0o755))
                .map_err(io_err(installs))?,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(io_err(installs)(err)),
        }
        let dir = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(installs)
            .map_err(io_err(installs))?;
        Ok(Self {
            dir,
            installs: installs.to_path_buf(),
        })
    }

    /// Where a download is written, so it goes away with the staging dir.
    pub(super) fn download_path(&self) -> PathBuf {
        self.dir.path().join("download.tar.gz")
    }

    /// Unpacks `archive` (named `label` in messages), checks it against
    /// `expected` and `want_version`, probes it and renames it into place.
    pub(super) fn install(
        self,
        archive: &Path,
        label: &str,
        expected: Option<&Expected>,
        want_version: Option<&str>,
    ) -> Result<Install, Error> {
        let tree = self.dir.path().join("unpacked");
        fs::create_dir(&tree).map_err(|source| Error::Io {
            action: "create",
            path: tree.clone(),
            source,
        })?;
        let sha256 = unpack_file(archive, &tree, label, expected)?;
        let root = unpacked_root(&tree).map_err(|problem| Error::NotPostgres {
            archive: label.to_string(),
            problem,
        })?;
        let unpacked =
            probe(&root.join("bin"), Origin::Installed).map_err(|problem| Error::NotPostgres {
                archive: label.to_string(),
                problem: format!("its bin/ is not usable ({problem})"),
            })?;
        // `find` would pass it over, so it is not worth a directory.
        if unpacked.major().parse::<u32>().is_ok_and(|m| m < MIN_MAJOR) {
            return Err(Error::TooOld {
                archive: label.to_string(),
                version: unpacked.version,
            });
        }
        if let Some(requested) = want_version
            && !same_version(&unpacked.version, requested)
        {
            return Err(Error::WrongVersion {
                archive: label.to_string(),
                found: unpacked.version,
                requested: requested.to_string(),
            });
        }
        let sha256 = expected.map(|_| sha256);
        self.promote(&root, &unpacked.version, sha256)
    }

    fn promote(self, root: &Path, version: &str, sha256: Option<String>) -> Result<Install, Error> {
        let target = self.installs.join(version);
        if let Ok(existing) = probe(&target.join("bin"), Origin::Installed) {
            info!(version, dir = %target.display(), "PostgreSQL {version} is already installed; leaving it as it is");
            return Ok(Install {
                binaries: existing,
                fresh: false,
                sha256,
            });
        }
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        // The staging dir is 0700; the postgres account must reach `bin`.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))
            .map_err(io_err("set permissions on", root))?;
        if fs::symlink_metadata(&target).is_ok() {
            // It does not run (probed above), so nobody uses it. Moved into
            // the staging dir, it is deleted with it.
            warn!(dir = %target.display(), "replacing a broken install of PostgreSQL {version}");
            fs::rename(&target, self.dir.path().join("replaced"))
                .map_err(io_err("move away", &target))?;
        }
        if let Err(err) = fs::rename(root, &target) {
            // Another install of the same version may have won the race.
            if let Ok(existing) = probe(&target.join("bin"), Origin::Installed) {
                return Ok(Install {
                    binaries: existing,
                    fresh: false,
                    sha256,
                });
            }
            return Err(io_err("rename into", &target)(err));
        }
        // Make the rename durable. A crash before this point leaves either no
        // directory or one that fails `probe` and is replaced next time.
        File::open(&self.installs)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err("sync", &self.installs))?;
        info!(version, dir = %target.display(), "installed PostgreSQL {version}");
        Ok(Install {
            binaries: Binaries {
                bin_dir: target.join("bin"),
                version: version.to_string(),
                origin: Origin::Installed,
            },
            fresh: true,
            sha256,
        })
    }
}

/// Unpacks the gzipped tar at `path` into `into` and returns the file's
/// sha256, refusing it when it does not match `expected`.
fn unpack_file(
    path: &Path,
    into: &Path,
    label: &str,
    expected: Option<&Expected>,
) -> Result<String, Error> {
    let file = File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })?;
    // One pass: the file is hashed as it is unpacked, so what is verified
    // is what was unpacked, even if the file changes meanwhile.
    let mut hashing = Hashing {
        inner: file,
        hasher: Sha256::new(),
    };
    let unpacked = {
        let mut archive = tar::Archive::new(GzDecoder::new(&mut hashing));
        unpack(&mut archive, into).and_then(|()| {
            // tar stops at its end-of-archive blocks; reading on to the end
            // of the gzip stream checks its CRC too.
            io::copy(&mut archive.into_inner(), &mut io::sink())
                .map(drop)
                .map_err(Unpacking::Io)
        })
    };
    // Hash the rest of the file whatever the unpacking made of it: for a
    // damaged download, "checksum mismatch" explains more than a gzip error.
    let drained = io::copy(&mut hashing, &mut io::sink());
    let actual = hex::encode(hashing.hasher.finalize());
    if let (Some(expected), Ok(_)) = (expected, &drained)
        && actual != expected.sha256
    {
        return Err(Error::ChecksumMismatch {
            archive: label.to_string(),
            checksum_file: expected.from.clone(),
            expected: expected.sha256.clone(),
            actual,
        });
    }
    unpacked.map_err(|failure| match failure {
        Unpacking::Io(source) => Error::Unpack {
            archive: label.to_string(),
            source,
        },
        Unpacking::Unsafe { entry, problem } => Error::UnsafeEntry {
            archive: label.to_string(),
            entry,
            problem,
        },
    })?;
    drained.map_err(|source| Error::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(actual)
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug)]
enum Unpacking {
    Io(io::Error),
    Unsafe {
        entry: String,
        problem: &'static str,
    },
}

/// Unpacks `archive` into `into`, refusing the whole archive at the first
/// entry [`check_entry`] rejects. The `tar` crate alone would silently skip
/// `..` entries and strip a leading `/`; an archive that tries either is
/// not one we want any part of.
fn unpack<R: Read>(archive: &mut tar::Archive<R>, into: &Path) -> Result<(), Unpacking> {
    // No group- or world-writable binaries, whatever the archive says; no
    // set-uid bits or foreign owners either (the crate's defaults, spelled out).
    archive.set_mask(0o022);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    let mut directories = Vec::new();
    for entry in archive.entries().map_err(Unpacking::Io)? {
        let entry = entry.map_err(Unpacking::Io)?;
        let path = entry.path().map_err(Unpacking::Io)?.into_owned();
        let kind = entry.header().entry_type();
        let link = entry.link_name().map_err(Unpacking::Io)?;
        check_entry(&path, kind, link.as_deref()).map_err(|problem| Unpacking::Unsafe {
            entry: path.display().to_string(),
            problem,
        })?;
        match kind {
            // As `tar::Archive::unpack` does: directories last, deepest
            // first, so a read-only directory does not block its contents.
            EntryType::Directory => directories.push(entry),
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {}
            _ => unpack_entry(entry, into, &path)?,
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for dir in directories {
        let path = dir.path().map_err(Unpacking::Io)?.into_owned();
        unpack_entry(dir, into, &path)?;
    }
    Ok(())
}

fn unpack_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    into: &Path,
    path: &Path,
) -> Result<(), Unpacking> {
    // `unpack_in` also refuses to write through a symlink that leads out
    // (it canonicalises the parent); `false` means it skipped the entry.
    if entry.unpack_in(into).map_err(Unpacking::Io)? {
        Ok(())
    } else {
        Err(Unpacking::Unsafe {
            entry: path.display().to_string(),
            problem: "would be written outside the install directory",
        })
    }
}

/// Why an entry must not be unpacked, if it must not.
fn check_entry(path: &Path, kind: EntryType, link: Option<&Path>) -> Result<(), &'static str> {
    let depth = inside_depth(0, path).ok_or("has a path that leaves the archive")?;
    match kind {
        EntryType::Regular
        | EntryType::Continuous
        | EntryType::GNUSparse
        | EntryType::Directory
        | EntryType::XGlobalHeader
        | EntryType::XHeader
        | EntryType::GNULongName
        | EntryType::GNULongLink => Ok(()),
        // A symlink's target is relative to the directory holding it.
        EntryType::Symlink => {
            let target = link.ok_or("is a symlink without a target")?;
            inside_depth(depth.saturating_sub(1), target)
                .map(drop)
                .ok_or("is a symlink that points outside the archive")
        }
        // A hard link's target is a path in the archive.
        EntryType::Link => {
            let target = link.ok_or("is a hard link without a target")?;
            inside_depth(0, target)
                .map(drop)
                .ok_or("is a hard link to a path outside the archive")
        }
        _ => Err("is a device, fifo or other special file"),
    }
}

/// Walks `path` lexically from `depth` directories below the archive's
/// root; `None` when it is absolute or climbs above the root.
fn inside_depth(mut depth: usize, path: &Path) -> Option<usize> {
    for part in path.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1)?,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(depth)
}

/// The directory holding `bin/`: the tree itself, or its one top-level
/// directory (theseus archives wrap everything in
/// `postgresql-<version>-<target>/`).
fn unpacked_root(tree: &Path) -> Result<PathBuf, String> {
    let is_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if is_dir(&tree.join("bin")) {
        return Ok(tree.to_path_buf());
    }
    let top: Vec<PathBuf> = fs::read_dir(tree)
        .map_err(|err| format!("cannot list what it unpacked to: {err}"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    match top.as_slice() {
        [only] if is_dir(only) && is_dir(&only.join("bin")) => Ok(only.clone()),
        [] => Err("it is empty".into()),
        _ => Err(format!(
            "no bin/ at its top level or inside a single top-level directory (it has {})",
            top.iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_sha256(text: &str, expected: Result<&str, &str>) {
        assert_eq!(
            parse_sha256(text).as_deref(),
            expected.map_err(str::to_string).as_deref()
        );
    }

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn sha256_file_bare_digest() {
        check_sha256(HEX, Ok(HEX));
    }
    #[test]
    fn sha256_file_digest_and_name() {
        check_sha256(
            &format!("{HEX}  postgresql-16.4.0-x86_64-unknown-linux-gnu.tar.gz\n"),
            Ok(HEX),
        );
    }
    #[test]
    fn sha256_file_binary_mode_marker_and_newline() {
        check_sha256(&format!("{HEX} *archive.tar.gz\r\n"), Ok(HEX));
    }
    #[test]
    fn sha256_file_upper_case_is_normalised() {
        check_sha256(&HEX.to_uppercase(), Ok(HEX));
    }
    #[test]
    fn sha256_file_empty() {
        check_sha256(" \n", Err("it is empty"));
    }
    #[test]
    fn sha256_file_short_digest() {
        check_sha256("abc123  f.tar.gz", Err("\"abc123\" is not 64 hex digits"));
    }
    #[test]
    fn sha256_file_html_error_page() {
        check_sha256(
            "<!DOCTYPE html><html>",
            Err("\"<!DOCTYPE\" is not 64 hex digits"),
        );
    }
    #[test]
    fn sha256_file_is_named_beside_the_archive() {
        assert_eq!(
            checksum_path(Path::new("/tmp/postgresql-16.4.0.tar.gz")),
            Path::new("/tmp/postgresql-16.4.0.tar.gz.sha256")
        );
    }

    /// A tar with one entry whose header says exactly `name` (and `link`):
    /// the `tar` builder itself refuses `..` and absolute names, so the
    /// bytes are written by hand, as a hostile archive would have them.
    fn raw_tar(kind: EntryType, name: &str, link: Option<&str>) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(0o755);
        let data: &[u8] = if kind == EntryType::Regular {
            b"#!/bin/sh\n"
        } else {
            b""
        };
        header.set_size(data.len() as u64);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, data).expect("append");
        builder.into_inner().expect("finish")
    }

    /// Unpacks `tar` into `<tmp>/tree` and returns the outcome and whether
    /// anything appeared in `<tmp>` besides `tree`.
    fn unpack_raw(tar: &[u8]) -> (Result<(), Unpacking>, Vec<String>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tree = tmp.path().join("tree");
        fs::create_dir(&tree).expect("mkdir");
        let result = unpack(&mut tar::Archive::new(tar), &tree);
        let outside = fs::read_dir(tmp.path())
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "tree")
            .collect();
        (result, outside)
    }

    #[track_caller]
    fn check_refused(kind: EntryType, name: &str, link: Option<&str>, problem: &str) {
        let (result, outside) = unpack_raw(&raw_tar(kind, name, link));
        match result {
            Err(Unpacking::Unsafe { problem: p, .. }) => assert_eq!(p, problem),
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
        assert!(outside.is_empty(), "{name} wrote {outside:?}");
    }

    #[test]
    fn refuses_parent_dir_entries() {
        check_refused(
            EntryType::Regular,
            "../evil",
            None,
            "has a path that leaves the archive",
        );
    }
    #[test]
    fn refuses_parent_dir_inside_a_path() {
        check_refused(
            EntryType::Regular,
            "postgresql-16/bin/../../../evil",
            None,
            "has a path that leaves the archive",
        );
    }
    #[test]
    fn refuses_absolute_entries() {
        check_refused(
            EntryType::Regular,
            "/tmp/evil",
            None,
            "has a path that leaves the archive",
        );
    }
    #[test]
    fn refuses_symlinks_to_absolute_paths() {
        check_refused(
            EntryType::Symlink,
            "bin/postgres",
            Some("/bin/sh"),
            "is a symlink that points outside the archive",
        );
    }
    #[test]
    fn refuses_symlinks_climbing_out() {
        check_refused(
            EntryType::Symlink,
            "pg/lib/x",
            Some("../../../etc"),
            "is a symlink that points outside the archive",
        );
    }
    #[test]
    fn refuses_hard_links_out() {
        check_refused(
            EntryType::Link,
            "bin/x",
            Some("../etc/passwd"),
            "is a hard link to a path outside the archive",
        );
    }
    #[test]
    fn refuses_device_files() {
        check_refused(
            EntryType::Char,
            "bin/tty",
            None,
            "is a device, fifo or other special file",
        );
    }

    #[test]
    fn unpacks_plain_files_and_relative_symlinks() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o777); // the mask must take group/world write away
        header.set_size(10);
        header.set_entry_type(EntryType::Regular);
        builder
            .append_data(&mut header, "./pg/bin/postgres", &b"#!/bin/sh\n"[..])
            .expect("append");
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "pg/bin/postmaster", "postgres")
            .expect("append");
        let tar = builder.into_inner().expect("finish");
        let tmp = tempfile::tempdir().expect("tempdir");
        unpack(&mut tar::Archive::new(&tar[..]), tmp.path()).expect("unpacks");
        let postgres = tmp.path().join("pg/bin/postgres");
        let mode = fs::metadata(&postgres)
            .expect("unpacked")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(tmp.path().join("pg/bin/postmaster")).expect("link"),
            Path::new("postgres")
        );
        assert_eq!(unpacked_root(tmp.path()), Ok(tmp.path().join("pg")));
    }

    #[test]
    fn the_root_is_the_tree_or_its_only_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(unpacked_root(tmp.path()), Err("it is empty".to_string()));
        fs::create_dir_all(tmp.path().join("bin")).expect("mkdir");
        assert_eq!(unpacked_root(tmp.path()), Ok(tmp.path().to_path_buf()));
        fs::remove_dir(tmp.path().join("bin")).expect("rmdir");
        fs::create_dir_all(tmp.path().join("a/bin")).expect("mkdir");
        fs::create_dir_all(tmp.path().join("b/bin")).expect("mkdir");
        let err = unpacked_root(tmp.path()).expect_err("two roots");
        assert!(err.starts_with("no bin/ at its top level"), "{err}");
    }
}
