//! Trust: the keys built into the binary, the archive's signature, the
//! binary inside it, and what that binary says it is.
//!
//! Signatures are zipsign's (ed25519ph over the whole `.tar.gz`, stored in
//! a trailing gzip member, so the archive stays a valid `.tar.gz`): what
//! `zipsign sign tar -c <file name>` and `examples/sign_release.rs` write.
//! The context is the asset's file name, so a signed 0.1.0 archive renamed
//! to 0.2.0 does not verify.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use self_update::zipsign_api;

use super::{Error, Release};

include!(concat!(env!("OUT_DIR"), "/update_keys.rs"));

/// The keys an archive may be signed with: the release keys
/// (`packaging/update-keys/*.pub`), and in debug builds (tests) also the
/// test key of `tests/fixtures/update/`. A release build trusts the release
/// keys only.
#[cfg(not(debug_assertions))]
pub const TRUSTED_KEYS: &[[u8; 32]] = RELEASE_KEYS;
#[cfg(debug_assertions)]
pub const TRUSTED_KEYS: &[[u8; 32]] = &{
    let mut keys = [[0; 32]; RELEASE_KEYS.len() + 1];
    let mut i = 0;
    while i < RELEASE_KEYS.len() {
        keys[i] = RELEASE_KEYS[i];
        i += 1;
    }
    keys[i] = TEST_KEY;
    keys
};

// An empty list must never mean "verify nothing" (self_update's
// `verify_signature` returns Ok for no keys): refuse to compile instead.
const _: () = assert!(!RELEASE_KEYS.is_empty() && !TRUSTED_KEYS.is_empty());

/// How long `<binary> version --json` may take before it is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary file in `dir` (the executable's directory); deleted on drop.
pub fn temp_in(dir: &Path) -> Result<tempfile::NamedTempFile, Error> {
    tempfile::Builder::new()
        .prefix(".pagodirecto-update-")
        .tempfile_in(dir)
        .map_err(|source| Error::DirNotWritable {
            dir: dir.to_path_buf(),
            source,
        })
}

/// Checks that one of [`TRUSTED_KEYS`] signed `archive` for its file name.
pub fn signature(release: &Release, archive: &mut File) -> Result<(), Error> {
    let keys = zipsign_api::verify::collect_keys(TRUSTED_KEYS.iter().copied().map(Ok))
        .expect("the built-in keys are valid ed25519 points (build.rs read them)");
    archive.rewind().map_err(|source| Error::Io {
        step: "reading the downloaded archive",
        path: release.asset_name.clone().into(),
        source,
    })?;
    match zipsign_api::verify::verify_tar(archive, &keys, Some(release.asset_name.as_bytes())) {
        Ok(_) => Ok(()),
        // zipsign's error is opaque; the one case without a cause is "no
        // key matches any signature": the signature block itself was read.
        Err(err) if std::error::Error::source(&err).is_none() => Err(Error::Untrusted {
            asset: release.asset_name.clone(),
            url: release.asset_url.clone(),
        }),
        Err(source) => Err(Error::Unsigned {
            asset: release.asset_name.clone(),
            url: release.asset_url.clone(),
            source,
        }),
    }
}

/// Unpacks `pagodirecto-<version>-<arch>-linux/pagodirecto` from the
/// (verified) archive into a 0755 temp file in `dir`, closed so it can run.
pub fn unpack(
    release: &Release,
    archive: &mut File,
    dir: &Path,
) -> Result<tempfile::TempPath, Error> {
    let corrupt = |source| Error::Corrupt {
        asset: release.asset_name.clone(),
        source,
    };
    let top = release
        .asset_name
        .strip_suffix(".tar.gz")
        .unwrap_or(&release.asset_name);
    let member = format!("{top}/pagodirecto");
    archive.rewind().map_err(corrupt)?;
    // Multi-member: the signature is a gzip member of its own at the end.
    let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(
        &mut *archive,
    )));
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.into_owned();
        if path != Path::new(&member) || !entry.header().entry_type().is_file() {
            continue;
        }
        let mut out = temp_in(dir)?;
        let out_path = out.path().to_path_buf();
        let io_err = |source| Error::Io {
            step: "writing the new binary",
            path: out_path.clone(),
            source,
        };
        // A read error here is the archive's; a write error is the disk's.
        let mut buf = vec![0; 1 << 16];
        loop {
            let n = entry.read(&mut buf).map_err(corrupt)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io_err)?;
        }
        out.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o755))
            .and_then(|()| out.as_file().sync_all())
            .map_err(io_err)?;
        // Closed: a file still open for writing cannot be executed (ETXTBSY).
        return Ok(out.into_temp_path());
    }
    Err(Error::MissingBinary {
        asset: release.asset_name.clone(),
        member,
    })
}

/// Runs `<binary> version --json` and returns the version and schema it
/// reports; a binary that hangs is killed after [`PROBE_TIMEOUT`].
pub async fn probe(binary: &Path) -> Result<(semver::Version, i64), Error> {
    let fail = |detail: String| Error::Probe {
        binary: binary.to_path_buf(),
        detail,
    };
    let mut attempts = 0;
    let output = loop {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(["version", "--json"])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
            Err(_) => {
                return Err(fail(format!(
                    "no answer within {PROBE_TIMEOUT:?}; it was killed"
                )));
            }
            // Another thread's fork may briefly hold the file's (closed
            // here, CLOEXEC there) write descriptor until it execs.
            Ok(Err(err)) if err.raw_os_error() == Some(libc::ETXTBSY) && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(err)) => return Err(fail(format!("cannot start it: {err}"))),
            Ok(Ok(output)) => break output,
        }
    };
    if !output.status.success() {
        return Err(fail(format!(
            "it exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        fail(format!(
            "it printed {:?}, not JSON: {e}",
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    })?;
    let version = answer["version"]
        .as_str()
        .and_then(|v| semver::Version::parse(v).ok())
        .ok_or_else(|| fail(format!("no semantic \"version\" in {answer}")))?;
    let schema = answer["schema"]
        .as_i64()
        .ok_or_else(|| fail(format!("no \"schema\" in {answer}")))?;
    Ok((version, schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(debug_assertions))]
    fn release_builds_trust_the_release_keys_only() {
        assert_eq!(TRUSTED_KEYS, RELEASE_KEYS);
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        // Not even root may create files in /proc.
        let err = temp_in(Path::new("/proc")).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot write beside the binary in /proc"),
            "{text}"
        );
        assert!(text.contains("updated by apt"), "{text}");
    }

    #[test]
    #[cfg(debug_assertions)]
    fn debug_builds_trust_the_release_keys_and_the_test_key() {
        assert_eq!(&TRUSTED_KEYS[..RELEASE_KEYS.len()], RELEASE_KEYS);
        assert_eq!(TRUSTED_KEYS.last(), Some(&TEST_KEY));
        assert!(
            !RELEASE_KEYS.contains(&TEST_KEY),
            "the test key is never a release key"
        );
    }
}
