//! Control groups for the appliance: a memory and CPU limit on the whole
//! appliance and a tighter one on PostgreSQL, where the host lets us.
//!
//! Called by `daemon` (sets up at start, reads usage for `status` and
//! `/metrics`, removes at stop) and `cli::doctor` (detects). Leaf: imports
//! nothing from the crate.
//!
//! The tree is made under the cgroup the daemon already runs in, so it never
//! escapes a limit the host set (systemd's `MemoryMax`, a container's):
//!
//! ```text
//! <our cgroup>/pagodirecto-<id>/          limits.memory, limits.cpu
//!                              daemon/    us (and pg_dump, psql… we spawn)
//!                              postgres/  limits.postgres_memory, limits.postgres_cpu
//! ```
//!
//! - cgroup v2 (`/sys/fs/cgroup` is cgroup2, as under systemd with
//!   `Delegate=yes`): one directory; the daemon moves itself to the `daemon`
//!   leaf first, because v2 lets a cgroup hand controllers to its children
//!   only when it holds no process itself.
//! - cgroup v1 (a `memory` and a `cpu` hierarchy): the same tree in each.
//! - neither writable: [`Mode::None`], with the reason; PostgreSQL then lives
//!   within its derived settings and the rlimits the supervisor applies.
//!
//! `<id>` comes from the data dir, so daemons on different data dirs (tests
//! run many at once) never share a group, and a restart reuses its own.
//!
//! Invariant: postgres joins its group between fork and exec (the
//! supervisor writes the child into [`Cgroups::postgres_procs`]), so every
//! byte it allocates, and every backend it forks, is counted.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The CPU period quotas are expressed in (100 ms, the kernel's default).
const PERIOD_US: u64 = 100_000;

/// Which cgroup interface the appliance's limits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    V2,
    V1,
    /// No writable cgroup: limits are the derived settings and rlimits only.
    None,
}

impl Mode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V1 => "v1",
            Self::None => "none",
        }
    }
}

/// The limits to apply; CPU in cores (`None`: no quota).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub memory: u64,
    pub cpu: Option<f64>,
    pub postgres_memory: u64,
    pub postgres_cpu: Option<f64>,
}

/// Where the cgroup filesystems are, as this process sees them.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/proc/self/cgroup`.
    pub self_cgroup: String,
    /// `/proc/self/mounts`.
    pub mounts: String,
}

impl Host {
    /// The live system.
    #[must_use]
    pub fn current() -> Self {
        Self {
            self_cgroup: std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
            mounts: std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
        }
    }

    /// Our own cgroup directory for each interface we could use: the v2
    /// directory if `/sys/fs/cgroup`-style cgroup2 holds the memory
    /// controller for us, else the v1 memory (and cpu) directories.
    fn locate(&self) -> Result<Located, String> {
        let mut v1_memory = None;
        let mut v1_cpu = None;
        let mut v2 = None;
        for line in self.mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, point, fstype, options, ..] = fields[..] else {
                continue;
            };
            let point = unescape(point);
            match fstype {
                "cgroup2" => {
                    if let Some(rel) = self.own_path(str::is_empty) {
                        v2 = Some(join(&point, rel));
                    }
                }
                "cgroup" => {
                    let has = |name: &str| options.split(',').any(|o| o == name);
                    if has("memory")
                        && let Some(rel) = self.own_path(|c| c.split(',').any(|x| x == "memory"))
                    {
                        v1_memory = Some(join(&point, rel));
                    }
                    if has("cpu")
                        && let Some(rel) = self.own_path(|c| c.split(',').any(|x| x == "cpu"))
                    {
                        v1_cpu = Some(join(&point, rel));
                    }
                }
                _ => {}
            }
        }
        // A cgroup2 mount without the memory controller (the "hybrid" layout:
        // cgroup2 beside v1 hierarchies) cannot limit anything.
        if let Some(dir) = v2
            && controllers(&dir).iter().any(|c| c == "memory")
        {
            return Ok(Located::V2(dir));
        }
        if let Some(memory) = v1_memory {
            return Ok(Located::V1 {
                memory,
                cpu: v1_cpu,
            });
        }
        Err(
            "no cgroup v2 with the memory controller delegated to us and no cgroup v1 memory hierarchy"
                .into(),
        )
    }

    /// The path in `/proc/self/cgroup` whose controller list matches.
    fn own_path(&self, matches: impl Fn(&str) -> bool) -> Option<&str> {
        self.self_cgroup.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            matches(list).then_some(path)
        })
    }
}

enum Located {
    V2(PathBuf),
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
    },
}

/// `/proc/mounts` escapes spaces and friends as octal (`\040`).
fn unescape(field: &str) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

fn join(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

fn controllers(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A cgroup in one or two hierarchies (v1 keeps memory and cpu apart).
#[derive(Debug, Clone)]
struct Group {
    memory: PathBuf,
    /// `None` when there is no cpu controller to use.
    cpu: Option<PathBuf>,
}

impl Group {
    fn child(&self, name: &str) -> Self {
        Self {
            memory: self.memory.join(name),
            cpu: self.cpu.as_ref().map(|c| c.join(name)),
        }
    }

    fn dirs(&self) -> Vec<&Path> {
        let mut dirs = vec![self.memory.as_path()];
        if let Some(cpu) = &self.cpu
            && cpu != &self.memory
        {
            dirs.push(cpu);
        }
        dirs
    }

    fn create(&self) -> Result<(), Error> {
        for dir in self.dirs() {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(Error::io("create", dir, source)),
            }
        }
        Ok(())
    }

    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn set_limits(&self, mode: Mode, memory: u64, cpu: Option<f64>) -> Result<(), Error> {
        let mem = &self.memory;
        match mode {
            Mode::V2 => {
                write(&mem.join("memory.max"), &memory.to_string())?;
                // With swap the limit would page out instead of holding.
                let _ = write(&mem.join("memory.swap.max"), "0");
                if let Some(dir) = &self.cpu {
                    write(&dir.join("cpu.max"), &format!("{} {PERIOD_US}", quota(cpu)))?;
                }
            }
            Mode::V1 => {
                // memsw must stay >= the limit: lift it, set, then match it.
                let _ = write(&mem.join("memory.memsw.limit_in_bytes"), "-1");
                write(&mem.join("memory.limit_in_bytes"), &memory.to_string())?;
                let _ = write(
                    &mem.join("memory.memsw.limit_in_bytes"),
                    &memory.to_string(),
                );
                if let Some(dir) = &self.cpu {
                    write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    let q = quota(cpu);
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        if q == "max" { "-1" } else { &q },
                    )?;
                }
            }
            Mode::None => {}
        }
        Ok(())
    }

    /// Moves the process `pid` (0: the caller) into this group.
    fn add(&self, pid: u32) -> Result<(), Error> {
        for file in self.procs_files() {
            write(&file, &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the directories; `false` while one still holds processes.
    fn remove(&self) -> bool {
        let mut done = true;
        for dir in self.dirs() {
            if let Err(e) = std::fs::remove_dir(dir)
                && e.kind() == io::ErrorKind::ResourceBusy
            {
                done = false;
            }
        }
        done
    }
}

/// `max`, or microseconds per [`PERIOD_US`] (at least the kernel's 1 ms).
fn quota(cores: Option<f64>) -> String {
    match cores {
        // Validated: 0.01..=1024 cores, so the product is small and positive.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        Some(c) if c > 0.0 => ((c * PERIOD_US as f64).round() as u64)
            .max(1000)
            .to_string(),
        _ => "max".into(),
    }
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|source| Error::io("write", path, source))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.events, memory.oom_control): the value of `key`.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What PostgreSQL's group has used, for `status` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    /// The highest usage seen (v1 `max_usage_in_bytes`, v2 `memory.peak`).
    pub memory_peak_bytes: u64,
    /// Processes the kernel killed for crossing the limit.
    pub oom_kills: u64,
}

/// The appliance's cgroups, or why there are none.
#[derive(Debug)]
pub struct Cgroups {
    mode: Mode,
    note: String,
    tree: Option<Tree>,
    /// Set once the tree was removed ([`Cgroups::release`]): not again on drop.
    released: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Tree {
    appliance: Group,
    daemon: Group,
    postgres: Group,
    /// Where the daemon was before it moved itself (v1: moved back at the end).
    origin: Group,
}

impl Cgroups {
    /// Detects the interface and builds the tree for the data dir `id`,
    /// moving this process into the `daemon` leaf. Never fails: when
    /// something is not writable the result is [`Mode::None`] and
    /// [`Cgroups::note`] says why (the caller logs it once).
    #[must_use]
    pub fn setup(host: &Host, id: &str, budget: &Budget) -> Self {
        let located = match host.locate() {
            Ok(located) => located,
            Err(reason) => return Self::none(&reason),
        };
        let (mode, origin) = match located {
            Located::V2(dir) => {
                let cpu = controllers(&dir)
                    .iter()
                    .any(|c| c == "cpu")
                    .then(|| dir.clone());
                (Mode::V2, Group { memory: dir, cpu })
            }
            Located::V1 { memory, cpu } => (Mode::V1, Group { memory, cpu }),
        };
        let appliance = origin.child(&format!("pagodirecto-{id}"));
        let tree = Tree {
            daemon: appliance.child("daemon"),
            postgres: appliance.child("postgres"),
            appliance,
            origin,
        };
        match build(mode, &tree, budget) {
            Ok(()) => {
                let cpu = if tree.postgres.cpu.is_some() {
                    ""
                } else {
                    " (no cpu controller: CPU is not limited)"
                };
                Self {
                    mode,
                    note: format!(
                        "postgres limited in {}{cpu}",
                        tree.postgres.memory.display()
                    ),
                    tree: Some(tree),
                    released: std::sync::atomic::AtomicBool::new(false),
                }
            }
            Err(err) => {
                tree.undo();
                Self::none(&format!("cgroup {mode} not usable: {}", anyhow_like(&err)))
            }
        }
    }

    fn none(reason: &str) -> Self {
        Self {
            mode: Mode::None,
            note: format!("{reason}; relying on the derived settings and rlimits"),
            tree: None,
            released: std::sync::atomic::AtomicBool::new(false),
        }
    }

    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// One line for the log and `status`: where the limits are, or why not.
    #[must_use]
    pub fn note(&self) -> &str {
        &self.note
    }

    /// The `cgroup.procs` files postgres writes itself into before exec.
    #[must_use]
    pub fn postgres_procs(&self) -> Vec<PathBuf> {
        self.tree
            .as_ref()
            .map(|t| t.postgres.procs_files())
            .unwrap_or_default()
    }

    /// PostgreSQL's group directory (its memory hierarchy's, in v1).
    #[must_use]
    pub fn postgres_dir(&self) -> Option<&Path> {
        self.tree.as_ref().map(|t| t.postgres.memory.as_path())
    }

    /// What PostgreSQL's group uses now.
    #[must_use]
    pub fn postgres_usage(&self) -> Option<Usage> {
        let dir = &self.tree.as_ref()?.postgres.memory;
        Some(match self.mode {
            Mode::V2 => Usage {
                memory_bytes: read_u64(&dir.join("memory.current")).unwrap_or(0),
                memory_limit_bytes: read_u64(&dir.join("memory.max")).unwrap_or(u64::MAX),
                memory_peak_bytes: read_u64(&dir.join("memory.peak")).unwrap_or(0),
                oom_kills: read_key(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
            },
            Mode::V1 => Usage {
                memory_bytes: read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0),
                memory_limit_bytes: read_u64(&dir.join("memory.limit_in_bytes"))
                    .unwrap_or(u64::MAX),
                memory_peak_bytes: read_u64(&dir.join("memory.max_usage_in_bytes")).unwrap_or(0),
                oom_kills: read_key(&dir.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            },
            Mode::None => return None,
        })
    }
}

/// Removes the groups (see `Tree::undo`); the daemon drops them once
/// postgres has exited.
impl Cgroups {
    /// Removes the tree now (postgres must have stopped), as dropping does:
    /// before a successor process sets up its own. Once; later calls and
    /// the drop do nothing.
    pub fn release(&self) {
        if self
            .released
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        if let Some(tree) = &self.tree {
            tree.undo();
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.release();
    }
}

impl Tree {
    /// Removes what it can: PostgreSQL's leaf once its processes are gone,
    /// then, if the daemon can move back to where it came from, its leaf
    /// and the appliance's group. In v2 that move fails once the old group
    /// hands out controllers (it may then hold no process), and the rest
    /// stays for systemd to remove with the service.
    fn undo(&self) {
        // Backends exit shortly after their postmaster; give them a moment.
        for _ in 0..100 {
            if self.postgres.remove() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if self.origin.add(0).is_ok() {
            self.daemon.remove();
            self.appliance.remove();
        }
    }
}

/// `{:#}`-style text for an error and its causes.
fn anyhow_like(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn build(mode: Mode, tree: &Tree, budget: &Budget) -> Result<(), Error> {
    tree.appliance.create()?;
    tree.daemon.create()?;
    tree.daemon.add(0)?;
    if mode == Mode::V2 {
        // Hand the controllers down: first from our old group (now without
        // processes), then from the appliance to its leaves.
        let wanted = if tree.postgres.cpu.is_some() {
            "+memory +cpu"
        } else {
            "+memory"
        };
        write(&tree.origin.memory.join("cgroup.subtree_control"), wanted)?;
        write(
            &tree.appliance.memory.join("cgroup.subtree_control"),
            wanted,
        )?;
    }
    tree.appliance.set_limits(mode, budget.memory, budget.cpu)?;
    tree.postgres.create()?;
    tree.postgres.set_limits(
        mode,
        budget.postgres_memory,
        budget.postgres_cpu.or(budget.cpu),
    )?;
    Ok(())
}

/// A short stable name for a data dir: the first 12 hex digits of its
/// path's SHA-256.
#[must_use]
pub fn id_for(data_dir: &Path) -> String {
    use sha2::Digest as _;
    let path = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..6])
}

/// Whether this host offers a cgroup interface we could use, without
/// creating anything: for `doctor`.
pub fn probe(host: &Host) -> Result<(Mode, PathBuf), String> {
    match host.locate()? {
        Located::V2(dir) => writable(&dir).map(|()| (Mode::V2, dir)),
        Located::V1 { memory, .. } => writable(&memory).map(|()| (Mode::V1, memory)),
    }
}

fn writable(dir: &Path) -> Result<(), String> {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("{} is not writable by us: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const V1_SELF: &str = "4:memory:/session/abc\n3:cpuset:/\n1:cpu:/\n0::/\n";

    #[test]
    fn v1_is_found_in_its_memory_and_cpu_hierarchies() {
        let host = Host {
            self_cgroup: V1_SELF.into(),
            mounts: V1_MOUNTS.into(),
        };
        let Ok(Located::V1 { memory, cpu }) = host.locate() else {
            panic!("v1 expected")
        };
        assert_eq!(memory, Path::new("/sys/fs/cgroup/memory/session/abc"));
        assert_eq!(cpu.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu/")));
    }

    #[test]
    fn nothing_mounted_means_none_with_a_reason() {
        let host = Host {
            self_cgroup: "0::/\n".into(),
            mounts: "proc /proc proc rw 0 0\n".into(),
        };
        let cgroups = Cgroups::setup(&host, "x", &budget());
        assert_eq!(cgroups.mode(), Mode::None);
        assert!(cgroups.note().contains("relying on the derived settings"));
        assert!(cgroups.postgres_procs().is_empty());
    }

    fn budget() -> Budget {
        Budget {
            memory: 1 << 30,
            cpu: Some(2.0),
            postgres_memory: 512 << 20,
            postgres_cpu: Some(1.5),
        }
    }

    /// A directory standing in for a delegated cgroup2 mount: plain files,
    /// so the v2 writes can be checked where the host has no v2.
    #[test]
    fn v2_builds_the_tree_and_hands_controllers_down() {
        let root = tempfile::tempdir().expect("tempdir");
        let own = root.path().join("system.slice/pd.service");
        std::fs::create_dir_all(&own).expect("mkdir");
        std::fs::write(own.join("cgroup.controllers"), "cpu io memory pids\n").expect("write");
        let host = Host {
            self_cgroup: "0::/system.slice/pd.service\n".into(),
            mounts: format!("cgroup2 {} cgroup2 rw 0 0\n", root.path().display()),
        };
        let cgroups = Cgroups::setup(&host, "abc", &budget());
        assert_eq!(cgroups.mode(), Mode::V2, "{}", cgroups.note());
        let app = own.join("pagodirecto-abc");
        let read = |p: &Path| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(&own.join("cgroup.subtree_control")), "+memory +cpu");
        assert_eq!(read(&app.join("cgroup.subtree_control")), "+memory +cpu");
        assert_eq!(read(&app.join("daemon/cgroup.procs")), "0");
        assert_eq!(read(&app.join("memory.max")), (1u64 << 30).to_string());
        assert_eq!(read(&app.join("cpu.max")), "200000 100000");
        assert_eq!(
            read(&app.join("postgres/memory.max")),
            (512u64 << 20).to_string()
        );
        assert_eq!(read(&app.join("postgres/memory.swap.max")), "0");
        assert_eq!(read(&app.join("postgres/cpu.max")), "150000 100000");
        assert_eq!(
            cgroups.postgres_procs(),
            vec![app.join("postgres/cgroup.procs")]
        );
        std::fs::write(
            app.join("postgres/memory.events"),
            "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n",
        )
        .expect("write");
        std::fs::write(app.join("postgres/memory.current"), "1234\n").expect("write");
        std::fs::write(app.join("postgres/memory.peak"), "5678\n").expect("write");
        let usage = cgroups.postgres_usage().expect("usage");
        assert_eq!(
            usage,
            Usage {
                memory_bytes: 1234,
                memory_limit_bytes: 512 << 20,
                memory_peak_bytes: 5678,
                oom_kills: 1,
            }
        );
    }

    #[test]
    fn hybrid_cgroup2_without_controllers_is_not_v2() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("cgroup.controllers"), "hugetlb\n").expect("write");
        let host = Host {
            self_cgroup: "0::/\n".into(),
            mounts: format!("cgroup2 {} cgroup2 rw 0 0\n", root.path().display()),
        };
        assert!(host.locate().is_err());
    }

    #[test]
    fn quotas_are_microseconds_per_period() {
        assert_eq!(quota(None), "max");
        assert_eq!(quota(Some(0.0)), "max");
        assert_eq!(quota(Some(0.5)), "50000");
        assert_eq!(quota(Some(0.001)), "1000");
    }

    #[test]
    fn ids_are_stable_and_short() {
        assert_eq!(
            id_for(Path::new("/nonexistent/a")),
            id_for(Path::new("/nonexistent/a"))
        );
        assert_ne!(
            id_for(Path::new("/nonexistent/a")),
            id_for(Path::new("/nonexistent/b"))
        );
        assert_eq!(id_for(Path::new("/x")).len(), 12);
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
    }
}
