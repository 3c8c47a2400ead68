//! The operating-system account PostgreSQL runs as.
//!
//! PostgreSQL refuses to run as root, and operators start us as root (the
//! packaged service before it drops privileges, CI, a quick `sudo`). So when
//! we are root every PostgreSQL program runs as an unprivileged account, and
//! the data directory belongs to it. When we are not root, everything runs
//! as ourselves and there is nothing to switch.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};
use tokio::process::Command;

/// Tried in order when `[database] os_user` is not set: our package's user,
/// then the one Debian's postgresql packages create.
pub const DEFAULT_USERS: &[&str] = &["pagodirecto", "postgres"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the daemon runs as root and PostgreSQL may not; none of the accounts {tried:?} exists: create one (adduser --system pagodirecto) or set [database] os_user"
    )]
    NoAccount { tried: Vec<String> },
    #[error("[database] os_user = {name:?}: no such user")]
    NoSuchUser { name: String },
    #[error("[database] os_user = {name:?} is root; PostgreSQL refuses to run as root")]
    Root { name: String },
    #[error(
        "[database] os_user = {name:?} needs the daemon to run as root (it runs as {current:?})"
    )]
    NotRoot { name: String, current: String },
    #[error(
        "PostgreSQL runs as {user:?} and cannot reach {target}: {blocker} (mode {mode:o}, owner uid {owner}) is not searchable by it; choose a data dir outside it"
    )]
    Unreachable {
        user: String,
        target: PathBuf,
        blocker: PathBuf,
        mode: u32,
        owner: u32,
    },
    #[error("cannot look up user {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
}

/// `None` when we are not root: run PostgreSQL as ourselves.
pub fn resolve(configured: Option<&str>) -> Result<Option<Account>, Error> {
    let me = Uid::effective();
    if !me.is_root() {
        if let Some(name) = configured {
            let current = User::from_uid(me)
                .ok()
                .flatten()
                .map_or_else(|| me.to_string(), |u| u.name);
            if current != name {
                return Err(Error::NotRoot {
                    name: name.into(),
                    current,
                });
            }
        }
        return Ok(None);
    }
    let lookup = |name: &str| {
        User::from_name(name).map_err(|source| Error::Lookup {
            name: name.into(),
            source,
        })
    };
    let user = if let Some(name) = configured {
        lookup(name)?.ok_or_else(|| Error::NoSuchUser { name: name.into() })?
    } else {
        let mut found = None;
        for name in DEFAULT_USERS {
            if let Some(user) = lookup(name)? {
                found = Some(user);
                break;
            }
        }
        found.ok_or_else(|| Error::NoAccount {
            tried: DEFAULT_USERS.iter().map(|s| (*s).into()).collect(),
        })?
    };
    if user.uid.is_root() {
        return Err(Error::Root { name: user.name });
    }
    Ok(Some(Account {
        name: user.name,
        uid: user.uid,
        gid: user.gid,
    }))
}

impl Account {
    /// Makes `cmd` run as this account (std drops supplementary groups too).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
    }

    /// Checks that every ancestor of `target` lets this account through, so
    /// the failure is our clear message instead of initdb's "permission denied".
    pub fn check_reachable(&self, target: &Path) -> Result<(), Error> {
        for dir in target.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            let mode = meta.mode();
            let searchable = if meta.uid() == self.uid.as_raw() {
                mode & 0o100 != 0
            } else if meta.gid() == self.gid.as_raw() {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !searchable {
                return Err(Error::Unreachable {
                    user: self.name.clone(),
                    target: target.to_path_buf(),
                    blocker: dir.to_path_buf(),
                    mode: mode & 0o7777,
                    owner: meta.uid(),
                });
            }
        }
        Ok(())
    }
}
