//! Small file-system helpers with the modes and atomicity we rely on.
//!
//! Leaf module. Invariant: a file written here is either complete or absent
//! (write to a temp name, fsync, rename), and private files are created 0600
//! so a secret is never readable by others, not even for a moment.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use nix::unistd::{Gid, Uid};

/// Writes `contents` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and parents) if missing and sets its mode.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Changes the owner of `path` (not following symlinks).
pub fn chown(path: &Path, uid: Uid, gid: Gid) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))
}

/// Changes the owner of `path` and everything below it.
pub fn chown_recursive(path: &Path, uid: Uid, gid: Gid) -> io::Result<()> {
    chown(path, uid, gid)?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Free bytes available to unprivileged users on the file system that holds
/// `path`, or would hold it once created (a backup directory before the
/// first backup): the nearest existing ancestor is measured.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(path);
    let stat = nix::sys::statvfs::statvfs(existing).map_err(io::Error::from)?;
    Ok(stat.blocks_available() * stat.fragment_size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn free_space_of_a_directory_not_yet_created_is_its_file_systems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let later = dir.path().join("backups/not/yet");
        let (later, now) = (
            available_bytes(&later).expect("nearest existing ancestor"),
            available_bytes(dir.path()).expect("exists"),
        );
        // The same file system (other processes may write meanwhile).
        assert!(later.abs_diff(now) < 64 << 20, "{later} vs {now}");
    }

    #[test]
    fn atomic_write_creates_a_private_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        write_atomic(&path, b"s3cret", 0o600).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"s3cret");
        assert_eq!(fs::metadata(&path).expect("meta").mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
