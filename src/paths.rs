//! Every on-disk location the appliance uses, derived in one place.
//!
//! Called by everyone who touches files; imports nothing from the crate.
//!
//! Invariant: no other module joins path segments onto the data dir. A new
//! file gets a method here, so `README.md`'s "where files live" table and
//! this file say the same thing.

use std::path::{Path, PathBuf};

/// Locations under one data directory. Cheap to clone; holds no handles.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::struct_field_names)] // they are all directories, and say which
pub struct Paths {
    data_dir: PathBuf,
    log_dir: PathBuf,
    backup_dir: PathBuf,
}

impl Paths {
    /// `log_dir` is `[logging] directory` when set, else `<data>/logs`;
    /// `backup_dir` is `[backup] directory` when set, else `<data>/backups`.
    #[must_use]
    pub fn new(data_dir: PathBuf, log_dir: Option<PathBuf>, backup_dir: Option<PathBuf>) -> Self {
        let log_dir = log_dir.unwrap_or_else(|| data_dir.join("logs"));
        let backup_dir = backup_dir.unwrap_or_else(|| data_dir.join("backups"));
        Self {
            data_dir,
            log_dir,
            backup_dir,
        }
    }

    /// Backups and their manifests.
    #[must_use]
    pub fn backup_dir(&self) -> &Path {
        &self.backup_dir
    }

    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The lock one daemon holds while it owns this data dir.
    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        self.data_dir.join("pagodirecto.lock")
    }

    /// Generated secrets (0700 directory, 0600 files).
    #[must_use]
    pub fn secrets_dir(&self) -> PathBuf {
        self.data_dir.join("secrets")
    }

    /// The certificate `[server] tls = "self-signed"` generates once and
    /// reuses (PEM; the directory is 0700).
    #[must_use]
    pub fn self_signed_cert(&self) -> PathBuf {
        self.data_dir.join("tls").join("self-signed.crt")
    }

    /// The private key of [`Paths::self_signed_cert`] (PEM, 0600).
    #[must_use]
    pub fn self_signed_key(&self) -> PathBuf {
        self.data_dir.join("tls").join("self-signed.key")
    }

    /// The PostgreSQL cluster (`PGDATA`).
    #[must_use]
    pub fn pgdata(&self) -> PathBuf {
        self.data_dir.join("pg").join("data")
    }

    /// PostgreSQL binaries installed from an archive or a download, one
    /// directory per version: `<data>/pg/binaries/<version>/bin/postgres`.
    #[must_use]
    pub fn pg_installs(&self) -> PathBuf {
        self.data_dir.join("pg").join("binaries")
    }

    /// Runtime files: sockets and the bound HTTP address. Recreated at start.
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// The private socket directory PostgreSQL listens in (0700, owned by the
    /// account postgres runs as).
    #[must_use]
    pub fn pg_socket_dir(&self) -> PathBuf {
        self.run_dir().join("postgres")
    }

    /// The daemon's control socket (0600): the CLI talks to the daemon here.
    #[must_use]
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir().join("control.sock")
    }

    /// How the last update went (`handover::Record`), for `status`.
    #[must_use]
    pub fn update_record(&self) -> PathBuf {
        self.data_dir.join("update.json")
    }

    /// `host:port` of the first HTTP listener, written atomically once bound.
    #[must_use]
    pub fn http_addr_file(&self) -> PathBuf {
        self.run_dir().join("http.addr")
    }

    /// Rolling log files, in a directory of their own: the appender's
    /// retention deletes anything there that matches its prefix.
    #[must_use]
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_location_is_under_the_data_dir_except_an_explicit_log_dir() {
        let paths = Paths::new("/d".into(), None, None);
        for p in [
            paths.lock_file(),
            paths.secrets_dir(),
            paths.self_signed_cert(),
            paths.self_signed_key(),
            paths.pgdata(),
            paths.pg_installs(),
            paths.pg_socket_dir(),
            paths.control_socket(),
            paths.http_addr_file(),
            paths.log_dir().to_path_buf(),
            paths.backup_dir().to_path_buf(),
        ] {
            assert!(p.starts_with("/d"), "{}", p.display());
        }
        let paths = Paths::new("/d".into(), Some("/var/log/pd".into()), None);
        assert_eq!(paths.log_dir(), Path::new("/var/log/pd"));
    }
}
