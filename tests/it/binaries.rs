//! `pagodirecto postgres install|status` as a user runs them: the real
//! binary on a temporary data dir, with a theseus-layout archive built from
//! the Debian PostgreSQL 15 installed on this machine, served by an HTTP
//! server on 127.0.0.1 inside the test. Nothing leaves the machine.
//!
//! Self-contained on purpose (its own small helpers), so it does not depend
//! on the daemon harness other modules use.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// Debian 12's PostgreSQL: copied out of its directory, its binaries still
/// find their libraries and share files through compiled-in absolute paths.
const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The archive's name says 15.18.0, as theseus names releases;
/// `postgres --version` says 15.18, and that names the install.
const VERSION: &str = "15.18.0";
const INSTALLED: &str = "15.18";
/// Per run of the binary; an install takes about a second.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

fn archive_name() -> String {
    format!("postgresql-{VERSION}-{}.tar.gz", target())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The archive, built once per test process, in theseus' layout:
/// `postgresql-<version>-<target>/{bin,share}/…`.
fn archive_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let bin = Path::new(DEBIAN_BIN);
        assert!(
            bin.join("postgres").is_file(),
            "these tests need Debian's postgresql-15 package ({DEBIAN_BIN}/postgres)"
        );
        let top = format!("postgresql-{VERSION}-{}", target());
        let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        tar.follow_symlinks(false); // keep postmaster -> postgres a symlink
        tar.append_dir(&top, bin).expect("add the top directory");
        tar.append_dir_all(format!("{top}/bin"), bin)
            .expect("add bin/");
        let readme = b"built by the pagodirecto tests from Debian's PostgreSQL 15\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(readme.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, format!("{top}/share/README"), &readme[..])
            .expect("add share/");
        tar.into_inner()
            .expect("finish the tar")
            .finish()
            .expect("finish the gzip")
    })
}

enum Checksum {
    Right,
    /// A well-formed digest of something else.
    Wrong,
    Missing,
}

fn wrong_digest() -> String {
    sha256_hex(b"not the archive")
}

/// Writes the archive (cut to `len` bytes, when given) into `dir`, with a
/// `.sha256` beside it as `checksum` says; returns the archive's path.
fn write_archive(dir: &Path, checksum: &Checksum, len: Option<usize>) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the archive's directory");
    let bytes = archive_bytes();
    let path = dir.join(archive_name());
    std::fs::write(&path, &bytes[..len.unwrap_or(bytes.len())]).expect("write the archive");
    let digest = match checksum {
        Checksum::Right => sha256_hex(bytes),
        Checksum::Wrong => wrong_digest(),
        Checksum::Missing => return path,
    };
    std::fs::write(
        dir.join(format!("{}.sha256", archive_name())),
        format!("{digest}  {}\n", archive_name()),
    )
    .expect("write the checksum");
    path
}

/// A temporary directory holding the data dir, a config file and whatever
/// else a test needs; all of it is removed on drop.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Downloads off: nothing in these tests may fetch from the default
        // mirror, only from the test's own server.
        std::fs::write(
            dir.path().join("pagodirecto.toml"),
            "[database]\ndownload = false\n",
        )
        .expect("write the config");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn installs(&self) -> PathBuf {
        self.path("data").join("pg").join("binaries")
    }

    /// Every name in `<data>/pg/binaries`, hidden ones included.
    fn installed_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.installs())
            .into_iter()
            .flatten()
            .map(|e| {
                e.expect("list the installs")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Runs `pagodirecto --config … --data-dir … ARGS`, bounded in time,
    /// with no proxy and none of our environment overrides inherited.
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pagodirecto"));
        cmd.arg("--config")
            .arg(self.path("pagodirecto.toml"))
            .arg("--data-dir")
            .arg(self.path("data"))
            .args(args)
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("PAGODIRECTO_") || key.to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(key);
            }
        }
        tokio::time::timeout(RUN_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("pagodirecto {args:?} ran longer than {RUN_TIMEOUT:?}"))
            .expect("run pagodirecto")
    }

    #[track_caller]
    fn assert_success(&self, output: &Output, what: &str) -> String {
        assert!(
            output.status.success(),
            "{what} failed{}",
            self.context(output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Checks that the command failed and returns its stderr.
    #[track_caller]
    fn assert_failure(&self, output: &Output, what: &str) -> String {
        assert!(
            !output.status.success(),
            "{what} succeeded{}",
            self.context(output)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn context(&self, output: &Output) -> String {
        format!(
            " ({})\nstdout:\n{}\nstderr:\n{}\n{} holds {:?}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.installs().display(),
            self.installed_names(),
        )
    }
}

/// A static file server on 127.0.0.1, for the test's lifetime; it records
/// each path asked for.
struct Mirror {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Mirror {
    async fn serve(root: PathBuf) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let app = Router::new().fallback(move |uri: Uri| {
            let (root, log) = (root.clone(), Arc::clone(&log));
            async move {
                log.lock()
                    .expect("request log")
                    .push(uri.path().to_string());
                file(&root, uri.path()).await
            }
        });
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            url: format!("http://{addr}"),
            requests,
            server,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("request log").clone()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn file(root: &Path, path: &str) -> Response {
    let relative = path.trim_start_matches('/');
    if relative
        .split('/')
        .any(|part| part == ".." || part.is_empty())
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    match tokio::fs::read(root.join(relative)).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Publishes the archive as a mirror must: `<mirror>/<version>/<name>`.
fn publish(f: &Fixture, checksum: &Checksum) -> PathBuf {
    let root = f.path("mirror");
    write_archive(&root.join(VERSION), checksum, None);
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_from_a_mirror_then_status_reports_it() {
    let f = Fixture::new();
    let mirror = Mirror::serve(publish(&f, &Checksum::Right)).await;
    let install = [
        "postgres",
        "install",
        "--version",
        VERSION,
        "--mirror",
        &mirror.url,
    ];

    let out = f.run(&install).await;
    let stdout = f.assert_success(&out, "install --version");
    assert!(
        stdout.contains(&format!("installed PostgreSQL {INSTALLED} in")),
        "{stdout}"
    );
    assert!(stdout.contains(&sha256_hex(archive_bytes())), "{stdout}");
    assert_eq!(f.installed_names(), [INSTALLED]);

    let out = f.run(&["postgres", "status"]).await;
    let stdout = f.assert_success(&out, "postgres status");
    let bin_dir = f.installs().join(INSTALLED).join("bin");
    assert!(
        stdout.contains(&format!("PostgreSQL {INSTALLED} in {}", bin_dir.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("origin: installed under the data dir"),
        "{stdout}"
    );

    // Again: already there, so it says so and does not even ask the mirror.
    let asked = mirror.requests().len();
    let out = f.run(&install).await;
    let stdout = f.assert_success(&out, "the second install");
    assert!(stdout.contains("is already installed"), "{stdout}");
    assert_eq!(mirror.requests().len(), asked, "{:?}", mirror.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_with_a_wrong_checksum_is_refused_and_leaves_nothing() {
    let f = Fixture::new();
    let mirror = Mirror::serve(publish(&f, &Checksum::Wrong)).await;

    let out = f
        .run(&[
            "postgres",
            "install",
            "--version",
            VERSION,
            "--mirror",
            &mirror.url,
        ])
        .await;
    let stderr = f.assert_failure(&out, "install with a wrong checksum");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(stderr.contains(&wrong_digest()), "{stderr}");
    assert!(stderr.contains(&sha256_hex(archive_bytes())), "{stderr}");
    assert!(f.installed_names().is_empty(), "{:?}", f.installed_names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_without_a_checksum_is_refused_before_fetching_it() {
    let f = Fixture::new();
    let mirror = Mirror::serve(publish(&f, &Checksum::Missing)).await;

    let out = f
        .run(&[
            "postgres",
            "install",
            "--version",
            VERSION,
            "--mirror",
            &mirror.url,
        ])
        .await;
    let stderr = f.assert_failure(&out, "install without a checksum");
    assert!(stderr.contains("no checksum at"), "{stderr}");
    assert!(stderr.contains(".tar.gz.sha256"), "{stderr}");
    // Only the checksum was asked for; the archive never was.
    assert_eq!(
        mirror.requests(),
        [format!("/{VERSION}/{}.sha256", archive_name())]
    );
    assert!(f.installed_names().is_empty(), "{:?}", f.installed_names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_archive_is_refused_and_leaves_nothing() {
    let f = Fixture::new();
    let half = archive_bytes().len() / 2;
    let archive = write_archive(&f.path("offline"), &Checksum::Missing, Some(half));

    let out = f
        .run(&[
            "postgres",
            "install",
            "--archive",
            &archive.to_string_lossy(),
        ])
        .await;
    let stderr = f.assert_failure(&out, "install of a truncated archive");
    assert!(stderr.contains("damaged or truncated"), "{stderr}");
    assert!(f.installed_names().is_empty(), "{:?}", f.installed_names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_its_checksum_installs_offline() {
    let f = Fixture::new();
    let archive = write_archive(&f.path("offline"), &Checksum::Right, None);

    let out = f
        .run(&[
            "postgres",
            "install",
            "--archive",
            &archive.to_string_lossy(),
        ])
        .await;
    let stdout = f.assert_success(&out, "install --archive");
    assert!(
        stdout.contains(&format!(
            "sha256 {} matches {}.sha256",
            sha256_hex(archive_bytes()),
            archive.display()
        )),
        "{stdout}"
    );
    assert_eq!(f.installed_names(), [INSTALLED]);
    let root = f.installs().join(INSTALLED);
    assert!(root.join("bin/postgres").is_file());
    assert!(root.join("share/README").is_file());
    // Reachable by the unprivileged account postgres runs as.
    assert_eq!(
        std::fs::metadata(&root).expect("install").mode() & 0o777,
        0o755
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_install_leaves_an_existing_install_alone() {
    let f = Fixture::new();
    let good = write_archive(&f.path("good"), &Checksum::Right, None);
    let out = f
        .run(&["postgres", "install", "--archive", &good.to_string_lossy()])
        .await;
    f.assert_success(&out, "the first install");
    let installed = f.installs().join(INSTALLED);
    let before = std::fs::metadata(&installed).expect("installed").ino();

    let bad = write_archive(&f.path("bad"), &Checksum::Wrong, None);
    let out = f
        .run(&["postgres", "install", "--archive", &bad.to_string_lossy()])
        .await;
    let stderr = f.assert_failure(&out, "install with a wrong checksum");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert_eq!(f.installed_names(), [INSTALLED]);
    assert_eq!(
        std::fs::metadata(&installed)
            .expect("still installed")
            .ino(),
        before
    );
    let out = f.run(&["postgres", "status"]).await;
    let stdout = f.assert_success(&out, "postgres status");
    assert!(
        stdout.contains(&format!(
            "  {INSTALLED}    {}",
            installed.join("bin").display()
        )),
        "{stdout}"
    );
}
