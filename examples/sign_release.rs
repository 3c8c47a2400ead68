//! Signs a release archive the way the updater verifies it, and makes keys.
//!
//! ```text
//! cargo run --example sign_release -- sign KEY ARCHIVE.tar.gz   # in place
//! cargo run --example sign_release -- gen-key KEY PUB           # new keypair
//! ```
//!
//! The format is zipsign's (`zipsign sign tar -c <file name>`): an ed25519ph
//! signature of the whole `.tar.gz` with the archive's file name as the
//! context, appended as a gzip member of its own, so the file stays a valid
//! `.tar.gz`. KEY is zipsign's private key file (the 64-byte keypair);
//! PUB the 32-byte public key that goes into `packaging/update-keys/`.
//! `packaging/build-release.sh` runs `sign` when `PAGODIRECTO_SIGNING_KEY`
//! is set; see docs/update.md for why this example and not the zipsign CLI.

use std::fs::File;
use std::io::Seek as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use zipsign_api::SigningKey;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["sign", key, archive] => sign(Path::new(key), Path::new(archive)),
        ["gen-key", key, public] => gen_key(Path::new(key), Path::new(public)),
        _ => {
            eprintln!("usage: sign_release sign KEY ARCHIVE.tar.gz | gen-key KEY PUB");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sign_release: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn sign(key_file: &Path, archive: &Path) -> Result<()> {
    let key =
        File::open(key_file).with_context(|| format!("opening the key {}", key_file.display()))?;
    let keys = zipsign_api::sign::read_signing_keys([Ok(key)]).with_context(|| {
        format!(
            "{} is not a zipsign private key (64 bytes)",
            key_file.display()
        )
    })?;
    let Some(name) = archive.file_name().and_then(|n| n.to_str()) else {
        bail!(
            "{} has no UTF-8 file name to sign as the context",
            archive.display()
        );
    };
    if !name.ends_with(".tar.gz") {
        bail!("{} is not a .tar.gz", archive.display());
    }
    let mut input =
        File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let dir = archive
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut output = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    zipsign_api::sign::copy_and_sign_tar(
        &mut input,
        output.as_file_mut(),
        &keys,
        Some(name.as_bytes()),
    )
    .with_context(|| format!("signing {}", archive.display()))?;
    output.as_file_mut().rewind()?;
    // Keep the archive's mode (a temp file is 0600).
    output
        .as_file()
        .set_permissions(input.metadata()?.permissions())?;
    output.as_file().sync_all()?;
    output
        .persist(archive)
        .with_context(|| format!("replacing {}", archive.display()))?;
    let public = keys[0].verifying_key().to_bytes();
    let trusted = std::fs::read_dir("packaging/update-keys")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| std::fs::read(entry.path()).is_ok_and(|bytes| bytes == public));
    eprintln!(
        "signed {} (context {name:?}) with the key whose public half is {}{}",
        archive.display(),
        hex::encode(public),
        if trusted {
            " (in packaging/update-keys: release builds trust it)"
        } else {
            " (NOT in packaging/update-keys: release builds will refuse this archive)"
        }
    );
    Ok(())
}

fn gen_key(key_file: &Path, public_file: &Path) -> Result<()> {
    if key_file.exists() {
        bail!("{} exists; not overwriting a key", key_file.display());
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(key_file)
            .with_context(|| format!("creating {}", key_file.display()))?;
        file.write_all(&key.to_keypair_bytes())?;
        file.sync_all()?;
    }
    std::fs::write(public_file, key.verifying_key().to_bytes())
        .with_context(|| format!("writing {}", public_file.display()))?;
    eprintln!(
        "private key {} (keep it off git), public key {}",
        key_file.display(),
        public_file.display()
    );
    Ok(())
}
