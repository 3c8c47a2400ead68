//! The web app in a real browser: `assets/web/e2e/run.mjs` drives Debian's
//! Chromium (playwright-core) against the daemon binary this test run built.
//!
//! Never skipped: without Chromium, Node or `node_modules` it fails and says
//! what to install (`.ci/run` installs all three), so a green run always
//! means the browser tests ran.

use std::path::Path;
use std::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn the_web_app_works_in_headless_chromium() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/web");
    assert!(
        Path::new(CHROMIUM).exists(),
        "browser tests need Debian's Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
    );
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "browser tests need playwright-core: run `npm ci` in {} (.ci/run does)",
        web.display()
    );
    let output = Command::new("node")
        .arg("e2e/run.mjs")
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_pagodirecto"))
        .current_dir(&web)
        .output()
        .unwrap_or_else(|err| panic!("browser tests need Node.js 20 (`node` on PATH): {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser tests failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    // Shown with --nocapture: which steps ran.
    println!("{stdout}");
}
