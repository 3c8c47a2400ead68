//! `pagodirecto update` and `update --check` against a release feed on
//! 127.0.0.1 with real archives signed by the test key: what is refused
//! leaves the binary byte-identical and nothing beside it; a signed newer
//! release is installed after a backup, keeping the old binary.

use std::process::Output;
use std::time::Duration;

use crate::handover::Prober;
use crate::support::{BIN, DataDir, ok_stdout, sql};
use crate::update_support::{
    FakeRelease, Feed, Install, archive, asset_name, binary_reporting, current_version,
    newer_binary, next_patch, reported_version, script_binary, shell_binary, sign, test_key,
    untrusted_key,
};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_json_reports_the_version_and_schema() {
    let (version, schema) = reported_version(std::path::Path::new(BIN));
    assert_eq!(version, current_version());
    assert!(schema > 0, "schema {schema}");
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .expect("run");
    assert_eq!(ok_stdout(&out).trim(), format!("pagodirecto {version}"));
}

#[test]
fn check_reports_the_newest_release_of_the_channel() {
    let current = current_version();
    let stable = next_patch();
    let beta = semver::Version::parse(&format!("{}.{}.0-beta.1", current.major, current.minor + 1))
        .expect("semver");
    let flagged = semver::Version::new(current.major + 1, 0, 0);
    let mut flagged_release = FakeRelease::with_archive(&flagged, b"not needed".to_vec());
    flagged_release.prerelease = true;
    let mut nightly = FakeRelease::with_archive(&stable, b"x".to_vec());
    nightly.tag = "nightly".into();
    let feed = Feed::serve(vec![
        flagged_release,
        nightly,
        FakeRelease::with_archive(&beta, b"x".to_vec()),
        FakeRelease::with_archive(&stable, b"x".to_vec()),
    ]);
    let install = Install::new();
    let data = DataDir::new();

    let out = install.update_cmd(&feed, data.path(), &["update", "--check"]);
    let text = ok_stdout(&out);
    assert!(text.contains(&format!("current:   {current}")), "{text}");
    assert!(
        text.contains(&format!(
            "available: {stable} (v{stable}), {}/download/{}",
            feed.url,
            asset_name(&stable)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("What is new in {stable}.")),
        "{text}"
    );
    assert!(
        stderr(&out).contains("skipping a release whose tag is not a semantic version")
            && stderr(&out).contains("nightly"),
        "a non-semver tag is skipped with a warning: {}",
        stderr(&out)
    );

    let beta_out = install.update_cmd_env(
        &feed,
        data.path(),
        &["update", "--check"],
        &[("PAGODIRECTO_UPDATE__CHANNEL", "beta")],
    );
    let text = ok_stdout(&beta_out);
    assert!(
        text.contains(&format!("available: {flagged} (v{flagged}, pre-release)")),
        "{text}"
    );
    assert_eq!(install.files(), ["pagodirecto"], "--check changes nothing");
}

/// Runs `update` with `release` as the only one in the feed and checks
/// that it is refused with `expected` and that nothing changed.
#[track_caller]
fn check_refused(release: FakeRelease, args: &[&str], expected: &str) {
    let feed = Feed::serve(vec![release]);
    let install = Install::new();
    let data = DataDir::new();
    let before = std::fs::read(&install.exe).expect("read");
    let out = install.update_cmd(&feed, data.path(), args);
    let err = stderr(&out);
    let expected = expected.replace("{feed}", &feed.url);
    assert!(!out.status.success(), "{args:?} should fail: {out:?}");
    assert!(err.contains(&expected), "expected {expected:?} in:\n{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        std::fs::read(&install.exe).expect("read") == before,
        "the binary changed"
    );
    assert_eq!(
        install.files(),
        ["pagodirecto"],
        "a file was left beside the binary"
    );
}

#[test]
fn archives_without_a_valid_signature_are_refused() {
    let next = next_patch();
    let name = asset_name(&next);
    // Never run: each of these fails before.
    let fake = binary_reporting(&next);
    let binary = Some(&*fake);
    let signed = sign(&archive(&next, binary), &name, &test_key());

    check_refused(
        FakeRelease::with_archive(&next, archive(&next, binary)),
        &["update"],
        &format!(
            "the archive {name} from {{feed}}/download/{name} has no valid signature from a trusted key (it carries no signature, or it is truncated); nothing was changed"
        ),
    );
    check_refused(
        FakeRelease::with_archive(
            &next,
            sign(&archive(&next, binary), &name, &untrusted_key()),
        ),
        &["update"],
        "has no valid signature from a trusted key (it is signed by a key this binary does not trust",
    );
    check_refused(
        FakeRelease::with_archive(&next, signed[..signed.len() / 2].to_vec()),
        &["update"],
        "has no valid signature from a trusted key (it carries no signature, or it is truncated)",
    );
    // One flipped byte in the middle: the signature no longer matches.
    let mut altered = signed.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0xff;
    check_refused(
        FakeRelease::with_archive(&next, altered),
        &["update"],
        "or was altered after signing",
    );
    // Signed for another file name: the context does not match.
    let other = asset_name(&semver::Version::new(0, 0, 1));
    check_refused(
        FakeRelease::with_archive(&next, sign(&archive(&next, binary), &other, &test_key())),
        &["update"],
        "has no valid signature from a trusted key",
    );
}

#[test]
fn a_signed_archive_without_the_binary_is_refused() {
    let next = next_patch();
    check_refused(
        FakeRelease::signed(&next, None),
        &["update"],
        &format!(
            "the archive {} has no file pagodirecto-{next}-{}-linux/pagodirecto",
            asset_name(&next),
            std::env::consts::ARCH
        ),
    );
}

#[test]
fn downgrades_and_the_same_version_are_refused_unless_allowed() {
    let current = current_version();
    let older = semver::Version::new(0, 0, 1);
    assert!(older < current);
    let fake = binary_reporting(&current);
    let binary = Some(&*fake);
    check_refused(
        FakeRelease::signed(&older, binary),
        &["update"],
        &format!(
            "the newest release on the stable channel, {older}, is older than this binary ({current}): refusing a downgrade"
        ),
    );
    check_refused(
        FakeRelease::signed(&current, binary),
        &["update"],
        &format!("pagodirecto {current} is already up to date"),
    );
    // --allow-downgrade passes that check; this archive then fails the
    // next one (the binary inside is not 0.0.1).
    check_refused(
        FakeRelease::signed(&older, binary),
        &["update", "--allow-downgrade"],
        &format!("but the binary inside reports version {current}"),
    );
}

#[test]
fn a_feed_that_lies_about_the_version_is_refused() {
    let next = next_patch();
    // Correctly signed, named and laid out, but what is inside reports the
    // current version (the real binary answers the same way: see
    // offline_update_installs_a_newer_signed_binary_after_a_backup).
    let current = binary_reporting(&current_version());
    check_refused(
        FakeRelease::signed(&next, Some(&current)),
        &["update"],
        &format!(
            "the feed says {} is release v{next}, but the binary inside reports version {}",
            asset_name(&next),
            current_version()
        ),
    );
    // A binary that does not answer `version --json` is not taken either.
    let mute = script_binary("hello");
    check_refused(
        FakeRelease::signed(&next, Some(&mute)),
        &["update"],
        "version --json) failed: it printed \"hello\", not JSON",
    );
}

#[test]
fn a_new_binary_that_hangs_is_killed_and_refused() {
    let next = next_patch();
    let pid_file = tempfile::NamedTempFile::new().expect("tempfile");
    let hangs = shell_binary(&format!(
        "echo $$ > {}\nexec sleep 600",
        pid_file.path().display()
    ));
    check_refused(
        FakeRelease::signed(&next, Some(&hangs)),
        &["update"],
        "version --json) failed: no answer within 10s; it was killed",
    );
    let pid: i32 = std::fs::read_to_string(pid_file.path())
        .expect("the binary ran")
        .trim()
        .parse()
        .expect("pid");
    // Killed (SIGKILL on timeout): gone, or a zombie until init reaps it.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(") ")
        .next()
        .and_then(|rest| rest.chars().next());
    assert!(
        stat.is_empty() || state == Some('Z'),
        "the hung binary {pid} still runs: {stat}"
    );
}

#[test]
fn an_empty_feed_is_refused_naming_it() {
    let feed = Feed::serve(vec![]);
    let install = Install::new();
    let data = DataDir::new();
    let out = install.update_cmd(&feed, data.path(), &["update"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("no release with a"), "{err}");
    assert!(
        err.contains(&format!(
            "on the stable channel of {}/repos/pagodirecto/pagodirecto/releases",
            feed.url
        )),
        "{err}"
    );
    assert_eq!(install.files(), ["pagodirecto"]);
}

#[test]
fn offline_update_installs_a_newer_signed_binary_after_a_backup() {
    let next = next_patch();
    let newer = newer_binary();
    let feed = Feed::serve(vec![FakeRelease::signed(&next, Some(&newer))]);
    let data = DataDir::new();
    // A database to back up: start once, stop.
    let daemon = data.start();
    let status = daemon.stop();
    assert!(status.success(), "{status}");

    let install = Install::new();
    let out = install.update_cmd(&feed, data.path(), &["update"]);
    let text = ok_stdout(&out);
    let current = current_version();
    let previous = install.dir.path().join("pagodirecto.previous");
    assert!(
        text.contains(&format!(
            "updated {current} → {next}; previous binary kept at {}",
            previous.display()
        )),
        "{text}\n{}",
        stderr(&out)
    );
    assert_eq!(reported_version(&install.exe).0, next);
    assert_eq!(reported_version(&previous).0, current);
    assert_eq!(install.files(), ["pagodirecto", "pagodirecto.previous"]);

    let label = format!("before-update-to-{}", next.to_string().replace('.', "_"));
    assert!(text.contains(&label), "{text}");
    let list = ok_stdout(&data.cli(&["backup", "list", "--json"]));
    assert!(list.contains(&label), "{list}");

    // Already there now: the same feed has nothing newer.
    let again = install.update_cmd(&feed, data.path(), &["update"]);
    assert!(
        stderr(&again).contains(&format!("pagodirecto {next} is already up to date")),
        "{}",
        stderr(&again)
    );
}

#[test]
fn the_release_script_refuses_to_run_without_a_signing_key() {
    // Data-driven: (signing key variable, what the script must say).
    for (key, expected) in [
        (None, "no signing key: set PAGODIRECTO_SIGNING_KEY"),
        (
            Some("/nonexistent/release.key"),
            "/nonexistent/release.key: no such readable file",
        ),
    ] {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/build-release.sh"
        ))
        .env_remove("UNSIGNED");
        match key {
            Some(key) => cmd.env("PAGODIRECTO_SIGNING_KEY", key),
            None => cmd.env_remove("PAGODIRECTO_SIGNING_KEY"),
        };
        let out = cmd.output().expect("run the script");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
}

/// `pagodirecto status --json` of the daemon on `data`.
fn status_json(data: &DataDir) -> serde_json::Value {
    serde_json::from_str(&ok_stdout(&data.cli(&["status", "--json"]))).expect("status json")
}

#[test]
fn update_hands_a_running_daemon_over_to_a_newer_build_and_no_request_fails() {
    let next = next_patch();
    let newer = newer_binary();
    let feed = Feed::serve(vec![FakeRelease::signed(&next, Some(&newer))]);
    let data = DataDir::new();
    // The daemon runs the binary `update` replaces: a copy, not the test's.
    let install = Install::new();
    let mut daemon = data.spawn_bin(&install.exe, &[], &[("PAGODIRECTO_BACKUP__SCHEDULE", "")]);
    daemon.wait_ready(Duration::from_secs(60));
    sql(
        &data,
        "CREATE TABLE public.kept (n int); INSERT INTO public.kept VALUES (42)",
    );
    let before = status_json(&data);

    let prober = Prober::start(daemon.addr.as_deref().expect("ready"), "/health");
    let out = install.update_cmd(&feed, data.path(), &["update"]);
    let (answered, failures) = prober.finish();
    let text = ok_stdout(&out);

    assert!(
        text.contains(&format!("→ {next}: pid")),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("backup taken before the update: "), "{text}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the update: {failures:?}",
        failures.len(),
        answered + failures.len()
    );
    assert!(
        answered > 10,
        "the prober ran throughout ({answered} answers)"
    );
    // The old process handed over and exited; the new one serves the data.
    assert!(
        daemon.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        daemon.log()
    );
    let after = status_json(&data);
    assert_eq!(after["version"], next.to_string());
    assert_ne!(after["pid"], before["pid"]);
    assert_eq!(after["listen"], before["listen"]);
    assert_eq!(after["last_update"]["outcome"], "updated");
    assert_eq!(sql(&data, "SELECT n FROM public.kept"), "42");
    assert_eq!(reported_version(&install.exe).0, next);
    // `daemon` (the old process) is gone; dropping it stops the new one.
}

/// Updates a running daemon to a signed release whose binary is a script:
/// it answers `version --json` honestly and does `on_run` (where `{next}`
/// is its version) when started as the successor. The update must be
/// rolled back with `reason`, the old binary back on disk and the old
/// version serving in the same process, with no request failed meanwhile.
fn update_is_rolled_back(on_run: &str, reason: &str) {
    let next = next_patch();
    let script = tempfile::NamedTempFile::new()
        .expect("tempfile")
        .into_temp_path();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = version ]; then echo '{{\"version\":\"{next}\",\"schema\":{}}}'; exit 0; fi\n{}\n",
            pagodirecto::migrate::latest_known(),
            on_run.replace("{next}", &next.to_string()),
        ),
    )
    .expect("write");
    let feed = Feed::serve(vec![FakeRelease::signed(&next, Some(&script))]);
    let data = DataDir::new();
    let install = Install::new();
    let original = std::fs::read(&install.exe).expect("read the binary");
    let mut daemon = data.spawn_bin(
        &install.exe,
        &[],
        &[
            ("PAGODIRECTO_BACKUP__SCHEDULE", ""),
            ("PAGODIRECTO_UPDATE__READY_TIMEOUT", "3s"),
        ],
    );
    daemon.wait_ready(Duration::from_secs(60));
    let before = status_json(&data);

    let prober = Prober::start(daemon.addr.as_deref().expect("ready"), "/health");
    let out = install.update_cmd(&feed, data.path(), &["update"]);
    let (answered, failures) = prober.finish();

    assert!(!out.status.success(), "{}", ok_stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("the update to {next} was rolled back")) && err.contains(reason),
        "expected {reason:?}:\n{err}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        answered + failures.len()
    );
    // The old binary is back on disk, and the old version serves in the
    // same process (exec'd again with the same sockets).
    assert_eq!(std::fs::read(&install.exe).expect("read"), original);
    let after = status_json(&data);
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["last_update"]["outcome"], "rolled_back");
    assert!(daemon.try_wait().is_none(), "{}", daemon.log());
    assert!(
        String::from_utf8_lossy(&data.cli(&["status"]).stdout).contains("ROLLED BACK"),
        "status shows the rollback"
    );
}

#[test]
fn a_new_version_that_never_becomes_ready_is_rolled_back_and_the_old_one_serves() {
    update_is_rolled_back("exec sleep 600", "not ready within 3s");
}

#[test]
fn a_new_version_that_dies_right_after_it_said_ready_is_rolled_back() {
    // It says ready on the pipe it was given (`ready=N` in
    // PAGODIRECTO_HANDOVER), then crashes.
    update_is_rolled_back(
        "fd=${PAGODIRECTO_HANDOVER##*ready=}; echo \"ready {next} $$\" > /proc/self/fd/$fd; exit 7",
        "exited (exit status: 7) within 3s of becoming ready",
    );
}

#[test]
fn an_automatic_check_finds_a_newer_release_and_the_daemon_updates_itself() {
    let next = next_patch();
    let newer = newer_binary();
    let feed = Feed::serve(vec![FakeRelease::signed(&next, Some(&newer))]);
    let data = DataDir::new();
    let install = Install::new();
    let mut daemon = data.spawn_bin(
        &install.exe,
        &[],
        &[
            ("PAGODIRECTO_BACKUP__SCHEDULE", ""),
            ("PAGODIRECTO_UPDATE__FEED", &feed.url),
            ("PAGODIRECTO_UPDATE__AUTOMATIC", "true"),
            ("PAGODIRECTO_UPDATE__CHECK_EVERY", "10s"),
        ],
    );
    daemon.wait_ready(Duration::from_secs(60));
    sql(
        &data,
        "CREATE TABLE public.kept (n int); INSERT INTO public.kept VALUES (42)",
    );

    // No command: the daemon's own check (every 10 s ± 1 s) finds it.
    assert!(
        daemon.wait_exit(Duration::from_secs(120)).success(),
        "{}",
        daemon.log()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let out = data.cli(&["status", "--json"]);
        if out.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            if status["ready"] == true {
                break status;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new version never served\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(after["version"], next.to_string());
    assert_eq!(after["last_update"]["outcome"], "updated");
    assert!(after["last_update"]["backup"].is_string(), "{after}");
    assert_eq!(reported_version(&install.exe).0, next);
    assert_eq!(sql(&data, "SELECT n FROM public.kept"), "42");
}

#[test]
fn refused_archives_leave_a_running_daemon_serving_the_old_version() {
    let next = next_patch();
    let name = asset_name(&next);
    let fake = binary_reporting(&next);
    let binary = Some(&*fake);
    let signed = sign(&archive(&next, binary), &name, &test_key());
    let liar = binary_reporting(&current_version());
    let refusals = [
        (
            FakeRelease::with_archive(&next, archive(&next, binary)),
            "no valid signature",
        ),
        (
            FakeRelease::with_archive(
                &next,
                sign(&archive(&next, binary), &name, &untrusted_key()),
            ),
            "no valid signature",
        ),
        (
            FakeRelease::with_archive(&next, signed[..signed.len() / 2].to_vec()),
            "truncated",
        ),
        (
            FakeRelease::signed(&semver::Version::new(0, 0, 1), binary),
            "refusing a downgrade",
        ),
        (
            FakeRelease::signed(&next, Some(&liar)),
            "but the binary inside reports version",
        ),
    ];
    let data = DataDir::new();
    let install = Install::new();
    let original = std::fs::read(&install.exe).expect("read");
    let daemon = data.spawn_bin(&install.exe, &[], &[("PAGODIRECTO_BACKUP__SCHEDULE", "")]);
    let mut daemon = daemon;
    daemon.wait_ready(Duration::from_secs(60));
    let before = status_json(&data);
    let prober = Prober::start(daemon.addr.as_deref().expect("ready"), "/health");
    for (release, expected) in refusals {
        let feed = Feed::serve(vec![release]);
        let out = install.update_cmd(&feed, data.path(), &["update"]);
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains(expected),
            "expected {expected:?}:\n{err}"
        );
        assert!(err.contains("nothing was changed"), "{err}");
    }
    let (answered, failures) = prober.finish();
    let after = status_json(&data);
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["version"], before["version"]);
    assert!(
        after["last_update"].is_null(),
        "no update was attempted: {after}"
    );
    assert_eq!(std::fs::read(&install.exe).expect("read"), original);
    assert_eq!(install.files(), ["pagodirecto"]);
    assert!(failures.is_empty() && answered > 0, "{failures:?}");
    assert!(daemon.try_wait().is_none());
}
