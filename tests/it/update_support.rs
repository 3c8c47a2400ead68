//! What the self-update tests need, shared with the daemon-side ones: a
//! release feed on 127.0.0.1 ([`Feed`]), release archives in the layout
//! `packaging/build-release.sh` makes, signed like a release ([`archive`],
//! [`sign`]), a copy of the binary in a directory of its own
//! ([`Install`]), and a rebuilt binary that reports a higher version
//! ([`newer_binary`]).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use zipsign_api::SigningKey;

use crate::support::BIN;

/// The test-only signing key; debug builds trust its public half.
pub const TEST_KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/update/TEST-ONLY-signing.key"
);

/// The version the binaries under test report.
pub fn current_version() -> semver::Version {
    semver::Version::parse(env!("PAGODIRECTO_VERSION")).expect("semver")
}

/// The current version with the patch number one higher: what
/// [`newer_binary`] reports.
pub fn next_patch() -> semver::Version {
    let mut v = current_version();
    v.patch += 1;
    v.pre = semver::Prerelease::EMPTY;
    v
}

/// `pagodirecto-<version>-<arch>-linux.tar.gz`.
pub fn asset_name(version: &semver::Version) -> String {
    format!(
        "pagodirecto-{version}-{}-linux.tar.gz",
        std::env::consts::ARCH
    )
}

/// The key that signs releases in tests.
pub fn test_key() -> SigningKey {
    let file = fs::File::open(TEST_KEY_FILE).expect("open the test key");
    zipsign_api::sign::read_signing_keys([Ok(file)])
        .expect("a zipsign keypair")
        .remove(0)
}

/// A valid key that no build trusts.
pub fn untrusted_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// A `.tar.gz` laid out like a release: `pagodirecto-<v>-<arch>-linux/`
/// with the binary (when given), the unit, the config and the README.
pub fn archive(version: &semver::Version, binary: Option<&Path>) -> Vec<u8> {
    let top = asset_name(version)
        .strip_suffix(".tar.gz")
        .expect("suffix")
        .to_string();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, format!("{top}/{name}"), bytes)
            .expect("append");
    };
    add("README.md", b"# pagodirecto\n", 0o644);
    add(
        "pagodirecto.toml",
        include_bytes!("../../packaging/pagodirecto.toml"),
        0o644,
    );
    if let Some(binary) = binary {
        add(
            "pagodirecto",
            &fs::read(binary).expect("read binary"),
            0o755,
        );
    }
    tar.into_inner().expect("tar").finish().expect("gzip")
}

/// `archive` signed by `key` for the file name `asset` (the context), as
/// `zipsign sign tar` and examples/sign_release.rs do.
pub fn sign(archive: &[u8], asset: &str, key: &SigningKey) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    zipsign_api::sign::copy_and_sign_tar(
        &mut std::io::Cursor::new(archive),
        &mut out,
        std::slice::from_ref(key),
        Some(asset.as_bytes()),
    )
    .expect("sign");
    out.into_inner()
}

/// A stand-in for a release binary: a shell script that answers
/// `version --json` with `output` (the probe runs nothing else).
pub fn script_binary(output: &str) -> tempfile::TempPath {
    shell_binary(&format!("echo '{output}'"))
}

/// A stand-in for a release binary that runs `body` (sh) whatever it is asked.
pub fn shell_binary(body: &str) -> tempfile::TempPath {
    let mut file = tempfile::Builder::new()
        .prefix("pd-fake-binary-")
        .tempfile()
        .expect("tempfile");
    writeln!(file, "#!/bin/sh\n{body}").expect("write");
    // Only its bytes matter: `archive` stores it as 0755.
    file.into_temp_path()
}

/// [`script_binary`] reporting `version`.
pub fn binary_reporting(version: &semver::Version) -> tempfile::TempPath {
    script_binary(&format!("{{\"version\":\"{version}\",\"schema\":1}}"))
}

/// One release as the feed lists it.
#[derive(Clone)]
pub struct FakeRelease {
    pub tag: String,
    pub prerelease: bool,
    pub notes: Option<String>,
    pub asset_name: String,
    pub archive: Vec<u8>,
}

impl FakeRelease {
    /// Release `v<version>` whose archive holds `binary`, signed by the test key.
    pub fn signed(version: &semver::Version, binary: Option<&Path>) -> Self {
        let name = asset_name(version);
        Self::with_archive(version, sign(&archive(version, binary), &name, &test_key()))
    }

    /// Release `v<version>` with these archive bytes, whatever they are.
    pub fn with_archive(version: &semver::Version, archive: Vec<u8>) -> Self {
        Self {
            tag: format!("v{version}"),
            prerelease: false,
            notes: Some(format!("What is new in {version}.")),
            asset_name: asset_name(version),
            archive,
        }
    }
}

/// A GitHub-style release feed on 127.0.0.1: `GET
/// /repos/{owner}/{repo}/releases` lists the releases (newest first, as
/// GitHub does), `GET /download/{name}` serves an archive. Stops on drop.
pub struct Feed {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feed {
    pub fn serve(releases: Vec<FakeRelease>) -> Self {
        use axum::extract::{Path as UrlPath, State};
        use axum::http::StatusCode;
        use axum::response::IntoResponse;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let list: Vec<serde_json::Value> = releases
            .iter()
            .map(|r| {
                serde_json::json!({
                    "tag_name": r.tag,
                    "name": r.tag,
                    "draft": false,
                    "prerelease": r.prerelease,
                    "created_at": "2026-11-26T00:00:00Z",
                    "body": r.notes,
                    "assets": [{
                        "name": r.asset_name,
                        "size": r.archive.len(),
                        "url": format!("{url}/api/assets/{}", r.asset_name),
                        "browser_download_url": format!("{url}/download/{}", r.asset_name),
                    }],
                })
            })
            .collect();
        let assets: std::collections::HashMap<String, Vec<u8>> = releases
            .into_iter()
            .map(|r| (r.asset_name, r.archive))
            .collect();
        let state = std::sync::Arc::new((serde_json::Value::from(list), assets));
        type Shared = std::sync::Arc<(
            serde_json::Value,
            std::collections::HashMap<String, Vec<u8>>,
        )>;
        let app = axum::Router::new()
            .route(
                "/repos/{owner}/{repo}/releases",
                axum::routing::get(
                    |State(s): State<Shared>| async move { axum::Json(s.0.clone()) },
                ),
            )
            .route(
                "/download/{name}",
                axum::routing::get(
                    |State(s): State<Shared>, UrlPath(name): UrlPath<String>| async move {
                        match s.1.get(&name) {
                            Some(bytes) => bytes.clone().into_response(),
                            None => StatusCode::NOT_FOUND.into_response(),
                        }
                    },
                ),
            )
            .with_state(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        Self {
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A standalone install: a copy of a binary alone in a temp directory (the
/// tests update this copy, never target/debug/pagodirecto).
pub struct Install {
    pub dir: tempfile::TempDir,
    pub exe: PathBuf,
}

impl Install {
    /// A copy of the binary under test.
    pub fn new() -> Self {
        Self::of(Path::new(BIN))
    }

    pub fn of(binary: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pd-update-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let exe = dir.path().join("pagodirecto");
        fs::copy(binary, &exe).expect("copy the binary");
        Self { dir, exe }
    }

    /// The file names in the install's directory, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Runs the installed binary with `args`, following `feed`, on `data_dir`.
    pub fn update_cmd(&self, feed: &Feed, data_dir: &Path, args: &[&str]) -> Output {
        self.update_cmd_env(feed, data_dir, args, &[])
    }

    /// [`Install::update_cmd`] with more environment (`PAGODIRECTO_UPDATE__CHANNEL`…).
    pub fn update_cmd_env(
        &self,
        feed: &Feed,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        run_retrying(|| {
            let mut cmd = Command::new(&self.exe);
            cmd.arg("--data-dir")
                .arg(data_dir)
                .args(args)
                .env("PAGODIRECTO_UPDATE__FEED", &feed.url)
                .env("PAGODIRECTO_UPDATE__REPO", "pagodirecto/pagodirecto")
                .envs(env.iter().copied())
                .stdin(Stdio::null());
            cmd
        })
    }
}

/// `<binary> version --json` as (version, schema).
pub fn reported_version(binary: &Path) -> (semver::Version, i64) {
    let out = run_retrying(|| {
        let mut cmd = Command::new(binary);
        cmd.args(["version", "--json"]);
        cmd
    });
    assert!(
        out.status.success(),
        "{} version --json: {out:?}",
        binary.display()
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (
        semver::Version::parse(value["version"].as_str().expect("version")).expect("semver"),
        value["schema"].as_i64().expect("schema"),
    )
}

/// Runs a command, retrying while the binary is "text file busy": a copy
/// just written may still be open in a child that another test thread
/// forked and has not exec'd yet.
fn run_retrying(make: impl Fn() -> Command) -> Output {
    for _ in 0..50 {
        match make().output() {
            Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result.expect("run the binary"),
        }
    }
    panic!("the binary stayed busy (ETXTBSY)");
}

/// A build of this crate that reports [`next_patch`] as its version, made
/// once per test run (and once across concurrent runs: a file lock) in
/// `<target>/update-fixture`, so it never replaces the binary other tests
/// run. Dev profile without debug info, to keep it small and quick.
pub fn newer_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build_with_version(&next_patch()))
        .clone()
}

fn build_with_version(version: &semver::Version) -> PathBuf {
    let target = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("BIN is <target>/<profile>/pagodirecto");
    let fixture = target.join("update-fixture");
    fs::create_dir_all(&fixture).expect("mkdir update-fixture");
    let lock = fs::File::create(target.join("update-fixture.lock")).expect("lock file");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .expect("lock update-fixture");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO"))
        .args(["build", "--locked", "--offline", "--bin", "pagodirecto"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &fixture)
        .env("PAGODIRECTO_VERSION", version.to_string())
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_PROFILE_DEV_STRIP", "debuginfo")
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "building the newer binary failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = writeln!(
        std::io::stderr(),
        "built the {version} fixture binary in {:?}",
        started.elapsed()
    );
    let binary = fixture.join("debug").join("pagodirecto");
    assert_eq!(
        reported_version(&binary).0,
        *version,
        "{}",
        binary.display()
    );
    binary
}
