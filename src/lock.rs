//! One daemon per data directory: an exclusive `flock` on
//! `<data>/pagodirecto.lock`, held for the daemon's life and released by the
//! kernel when the process dies, however it dies (no stale lock to clean).
//!
//! Called by `daemon` and by offline CLI commands that start PostgreSQL.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another pagodirecto{} is using {data_dir}; stop it first, or use another --data-dir", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Busy { data_dir: PathBuf, pid: Option<u32> },
}

/// Held while we own the data dir. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _flock: Flock<File>,
}

impl DataDirLock {
    pub fn acquire(lock_file: &Path, data_dir: &Path) -> Result<Self, Error> {
        let open_err = |source| Error::Open {
            path: lock_file.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock_file)
            .map_err(open_err)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
                // The pid is for the message another process prints; the lock
                // itself is the flock, not this content.
                let _ = flock.set_len(0);
                let _ = flock.rewind();
                let _ = writeln!(flock, "{}", std::process::id());
                Ok(Self { _flock: flock })
            }
            Err((mut file, _)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Err(Error::Busy {
                    data_dir: data_dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let first = DataDirLock::acquire(&path, dir.path()).expect("first");
        let err = DataDirLock::acquire(&path, dir.path()).expect_err("second");
        assert!(
            err.to_string()
                .contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(&path, dir.path()).expect("free again");
    }
}
