//! Build-time inputs the compiler cannot see on its own:
//!
//! - Rebuild when a migration or a built web-app file is added or edited:
//!   refinery's `embed_migrations!` reads `migrations/` and rust-embed reads
//!   `assets/dist/` at compile time, and cargo does not know that on its own
//!   (a directory here makes cargo watch every file below it).
//! - The version the binary reports (`PAGODIRECTO_VERSION`): the
//!   `PAGODIRECTO_VERSION` environment variable when set (a release build, or
//!   the test fixture that builds a "newer" binary), else Cargo.toml's.
//! - The release-signing keys the updater trusts (`src/update/verify.rs`):
//!   every `packaging/update-keys/*.pub` (32 raw bytes, as `zipsign gen-key`
//!   writes them), plus the test key in debug builds only, plus the key
//!   file `PAGODIRECTO_EXTRA_UPDATE_KEY` names, if set (a private feed's own
//!   key, or `benches/update.sh`'s).

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=assets/dist");
    version();
    update_keys();
}

fn version() {
    println!("cargo:rerun-if-env-changed=PAGODIRECTO_VERSION");
    let version = match std::env::var("PAGODIRECTO_VERSION") {
        Ok(v) if !v.is_empty() => v,
        _ => std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION"),
    };
    if let Err(err) = semver::Version::parse(&version) {
        panic!(
            "PAGODIRECTO_VERSION={version:?} is not a semantic version (like 1.2.3 or 1.3.0-beta.1): {err}"
        );
    }
    println!("cargo:rustc-env=PAGODIRECTO_VERSION={version}");
}

fn update_keys() {
    let dir = Path::new("packaging/update-keys");
    let test_key = Path::new("tests/fixtures/update/TEST-ONLY-signing.pub");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed={}", test_key.display());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pub"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no release-signing key in {}/*.pub: a binary without one could never verify an update",
        dir.display()
    );
    let mut out = String::from(
        "/// The release-signing keys (packaging/update-keys/*.pub), in file-name order.\n\
         pub const RELEASE_KEYS: &[[u8; 32]] = &[\n",
    );
    // A key of one's own, for a private feed or a benchmark's builds:
    // trusted by this build only (no shipped build sets it).
    println!("cargo:rerun-if-env-changed=PAGODIRECTO_EXTRA_UPDATE_KEY");
    if let Ok(extra) = std::env::var("PAGODIRECTO_EXTRA_UPDATE_KEY")
        && !extra.is_empty()
    {
        println!("cargo:rerun-if-changed={extra}");
        files.push(Path::new(&extra).to_path_buf());
    }
    for file in &files {
        let _ = writeln!(out, "    {:?}, // {}", key_bytes(file), file.display());
    }
    out.push_str("];\n");
    let _ = write!(
        out,
        "/// The test key (tests/fixtures/update): trusted by debug builds only.\n\
         #[cfg(debug_assertions)]\n\
         pub const TEST_KEY: [u8; 32] = {:?};\n",
        key_bytes(test_key)
    );
    let target =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("update_keys.rs");
    std::fs::write(&target, out)
        .unwrap_or_else(|err| panic!("writing {}: {err}", target.display()));
}

fn key_bytes(path: &Path) -> [u8; 32] {
    let bytes =
        std::fs::read(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    bytes.try_into().unwrap_or_else(|bytes: Vec<u8>| {
        panic!(
            "{} holds {} bytes; a zipsign public key is 32 raw bytes",
            path.display(),
            bytes.len()
        )
    })
}
