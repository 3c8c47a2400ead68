//! Secrets the appliance generates for itself and keeps in the data dir.
//!
//! Called by `daemon` and the offline CLI commands. There are no default
//! passwords anywhere: each secret is created on first need from the OS
//! random source and stored 0600 in `<data>/secrets` (0700). When the daemon
//! runs as root the files belong to PostgreSQL's account, which reads the
//! superuser password file during initdb.

use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} secret {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "secret file {path} is empty or not valid UTF-8; delete it only if you also reset what it protects"
    )]
    Corrupt { path: PathBuf },
}

/// One named secret in the secrets directory.
#[derive(Debug, Clone)]
pub struct SecretFile {
    path: PathBuf,
}

impl SecretFile {
    #[must_use]
    pub fn new(secrets_dir: &Path, name: &str) -> Self {
        Self {
            path: secrets_dir.join(name),
        }
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the secret, generating and storing it first if it does not exist.
    pub fn load_or_create(&self, owner: Option<(Uid, Gid)>) -> Result<String, Error> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let value = text.trim().to_string();
                if value.is_empty() {
                    return Err(Error::Corrupt {
                        path: self.path.clone(),
                    });
                }
                Ok(value)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let value = generate();
                let io_err = |action, source| Error::Io {
                    action,
                    path: self.path.clone(),
                    source,
                };
                if let Some(dir) = self.path.parent() {
                    fsutil::ensure_dir(dir, 0o700)
                        .map_err(|e| io_err("create the directory of", e))?;
                    if let Some((uid, gid)) = owner {
                        fsutil::chown(dir, uid, gid)
                            .map_err(|e| io_err("chown the directory of", e))?;
                    }
                }
                fsutil::write_atomic(&self.path, format!("{value}\n").as_bytes(), 0o600)
                    .map_err(|e| io_err("write", e))?;
                if let Some((uid, gid)) = owner {
                    fsutil::chown(&self.path, uid, gid).map_err(|e| io_err("chown", e))?;
                }
                Ok(value)
            }
            Err(source) => Err(Error::Io {
                action: "read",
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Reads an existing secret.
    pub fn load(&self) -> Result<String, Error> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| Error::Io {
            action: "read",
            path: self.path.clone(),
            source,
        })?;
        let value = text.trim().to_string();
        if value.is_empty() {
            return Err(Error::Corrupt {
                path: self.path.clone(),
            });
        }
        Ok(value)
    }
}

/// 32 random bytes as hex: 256 bits, and safe to embed in SQL and conninfo.
#[must_use]
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_secret_is_generated_once_then_reused_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = SecretFile::new(&dir.path().join("secrets"), "pw");
        let first = secret.load_or_create(None).expect("create");
        assert_eq!(first.len(), 64);
        assert_eq!(secret.load_or_create(None).expect("reuse"), first);
        assert_eq!(
            std::fs::metadata(secret.path()).expect("meta").mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("secrets"))
                .expect("meta")
                .mode()
                & 0o777,
            0o700
        );
        assert_ne!(generate(), generate());
    }
}
