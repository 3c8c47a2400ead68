//! Backups with the real daemon and PostgreSQL: round trips, encryption,
//! stock tools, retention, interruption, damage, drills.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::api_support::Crm;
use crate::support::{DataDir, Signal, ok_stdout, send, sql, wait_until};

/// A fingerprint of the data that matters: per-table row counts and a hash
/// of every customer row.
fn fingerprint(data: &DataDir) -> String {
    sql(
        data,
        "SELECT (SELECT count(*) FROM customers.customers) || '/' || (SELECT count(*) FROM audit.events) || '/' || \
         (SELECT count(*) FROM iam.users) || '/' || \
         coalesce((SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM customers.customers c), '-')",
    )
}

fn backups(data: &DataDir) -> Vec<Value> {
    let out = ok_stdout(&data.cli(&["backup", "list", "--json"]));
    serde_json::from_str::<Vec<Value>>(&out).expect("backup list json")
}

fn create(data: &DataDir, label: &str) -> (String, PathBuf) {
    let out = ok_stdout(&data.cli(&["backup", "create", "--name", label]));
    let (name, path) = out.trim().split_once('\t').expect("name<TAB>path");
    (name.to_string(), PathBuf::from(path))
}

#[test]
fn backup_change_restore_gives_back_exactly_the_backed_up_state() {
    let crm = Crm::start();
    for i in 0..25 {
        crm.customer(&crm.owner, &format!("Customer {i}"));
    }
    let before = fingerprint(&crm.data);
    let (name, path) = create(&crm.data, "golden");
    assert!(path.exists(), "{}", path.display());
    assert_eq!(
        std::fs::metadata(&path).expect("meta").len(),
        backups(&crm.data)
            .iter()
            .find(|b| b["name"] == name)
            .expect("listed")["size"]
    );

    // Change the data: more rows, an update, an archive.
    for i in 0..5 {
        crm.customer(&crm.owner, &format!("Later {i}"));
    }
    let changed = fingerprint(&crm.data);
    assert_ne!(changed, before);

    let out = ok_stdout(&crm.data.cli(&["restore", &name, "--yes"]));
    assert!(out.contains("pre-restore"), "{out}");
    assert_eq!(
        fingerprint(&crm.data),
        before,
        "the restored data equals the backup"
    );
    // It ran in parallel from a decompressed copy, which is gone afterwards.
    let log = crm.daemon.log();
    assert!(log.contains("pg_restore -j done"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("data offsets in the table of contents") && !l.contains("added=0")),
        "{log}"
    );
    let copies = path.parent().expect("backup dir").join(".restore");
    assert_eq!(
        std::fs::read_dir(&copies).map_or(0, Iterator::count),
        0,
        "decompressed copies left in {}",
        copies.display()
    );
    // The API serves the restored data with the same login (the token still verifies).
    let list = crm
        .get(&crm.owner, "/api/v1/customers?limit=200")
        .expect(200)
        .body;
    assert_eq!(list["items"].as_array().expect("items").len(), 25);
    assert!(out.contains("serving it again after"), "{out}");
    // And the safety backup holds the state from just before the restore
    // (written from the database the swap set aside, which is then dropped).
    let safety = out
        .split("in backup ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the safety backup's name")
        .to_string();
    assert!(safety.ends_with("-pre-restore"), "{out}");
    let out = ok_stdout(&crm.data.cli(&["restore", &safety, "--yes"]));
    assert!(out.contains("pre-restore"), "{out}");
    assert_eq!(
        fingerprint(&crm.data),
        changed,
        "the safety backup holds the data from before the restore"
    );
    // The set-aside database is dropped in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while databases_aside(&crm.data) != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "a database is left aside"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many databases a restore made or set aside still exist.
fn databases_aside(data: &DataDir) -> String {
    sql(
        data,
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'pagodirecto\\_%'",
    )
}

/// What a crash between the swap and the safety backup leaves: the data
/// from before the restore in a database set aside (and, had it crashed
/// earlier, a half-restored one). The next start backs the first up and
/// drops both.
#[test]
fn a_restore_interrupted_before_its_safety_backup_is_finished_at_the_next_start() {
    let crm = Crm::start();
    for i in 0..7 {
        crm.customer(&crm.owner, &format!("Set aside {i}"));
    }
    let Crm { data, daemon, .. } = crm;
    let before = fingerprint(&data);
    assert!(daemon.stop().success());
    for statement in [
        "CREATE DATABASE pagodirecto_old_1700000000 TEMPLATE pagodirecto",
        "CREATE DATABASE pagodirecto_restore_1700000001",
    ] {
        ok_stdout(&data.cli(&["psql", "--", "-X", "-d", "postgres", "-c", statement]));
    }
    let _daemon = data.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let safety = loop {
        let pre_restore = backups(&data).into_iter().find(|b| {
            b["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-pre-restore"))
        });
        let left = databases_aside(&data);
        if let Some(backup) = pre_restore
            && left == "0"
        {
            break backup;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not finished: {left} databases left; {:?}",
            backups(&data)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // The backup is of the set-aside data (here a copy of the live data).
    let customers = sql(&data, "SELECT count(*) FROM customers.customers");
    assert_eq!(
        safety["tables"]["customers.customers"].to_string(),
        customers,
        "{safety}"
    );
    assert_eq!(fingerprint(&data), before, "the live data is untouched");
}

#[test]
fn a_backup_file_is_readable_by_stock_pg_restore() {
    let crm = Crm::start();
    crm.customer(&crm.owner, "Stock tools");
    let (_, path) = create(&crm.data, "stock");
    let dump = decompressed(&crm.data, &path, "plain.dump");
    let out = stock_pg_restore(&crm.data, "plain", &["--no-owner"], &dump);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = sql_in(&crm.data, "plain", "SELECT name FROM customers.customers");
    assert_eq!(count, "Stock tools");
}

/// `zstd -dc FILE > OUT`, with the zstd library, so the tests need no zstd binary.
fn decompressed(data: &DataDir, backup: &Path, out: &str) -> PathBuf {
    let dump = data.path().join(out);
    let mut decoder = zstd::Decoder::new(std::fs::File::open(backup).expect("open")).expect("zstd");
    std::io::copy(
        &mut decoder,
        &mut std::fs::File::create(&dump).expect("create"),
    )
    .expect("decompress");
    dump
}

/// Debian's own pg_restore, as the superuser over the daemon's socket, into
/// a new database `into`.
fn stock_pg_restore(
    data: &DataDir,
    into: &str,
    args: &[&str],
    dump: &Path,
) -> std::process::Output {
    sql(data, &format!("CREATE DATABASE {into}"));
    let password = std::fs::read_to_string(data.path().join("secrets/postgres-superuser.password"))
        .expect("pw");
    std::process::Command::new("/usr/lib/postgresql/15/bin/pg_restore")
        .args(["--dbname", into, "--exit-on-error"])
        .args(args)
        .arg(dump)
        .env("PGHOST", data.path().join("run/postgres"))
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", password.trim())
        .output()
        .expect("pg_restore")
}

fn sql_in(data: &DataDir, database: &str, query: &str) -> String {
    ok_stdout(&data.cli(&["psql", "--", "-X", "-A", "-t", "-d", database, "-c", query]))
        .trim()
        .to_string()
}

/// Our archives are written to a pipe, so pg_dump could not record where
/// each table's data starts, and `pg_restore -j` starts the tables in dump
/// order: the audit log, created last and the largest, last of all. The
/// restore adds the offsets to its decompressed copy; stock `pg_restore -j`
/// then starts the largest table first and restores the same data.
#[test]
fn with_the_data_offsets_added_pg_restore_starts_the_largest_table_first() {
    let crm = Crm::start();
    for i in 0..40 {
        crm.customer(&crm.owner, &format!("Customer {i} with a longer name"));
    }
    // The audit log is the largest table, as in service.
    assert_eq!(
        sql(
            &crm.data,
            "SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY pg_relation_size(c.oid) DESC, c.oid LIMIT 1"
        ),
        "audit.events"
    );
    let (_, path) = create(&crm.data, "ordered");
    let first_data = |dump: &Path, into: &str| {
        let out = stock_pg_restore(&crm.data, into, &["--jobs=2", "--verbose"], dump);
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{log}");
        assert_eq!(
            sql_in(&crm.data, into, "SELECT count(*) FROM customers.customers"),
            "40"
        );
        // "pg_restore: launching item 3705 TABLE DATA events": the tag is the table's name.
        log.lines()
            .filter(|line| line.contains("launching item"))
            .find_map(|line| {
                line.split_once(" TABLE DATA ")
                    .map(|(_, table)| table.to_string())
            })
            .unwrap_or_else(|| panic!("no table data launched: {log}"))
    };
    let as_written = decompressed(&crm.data, &path, "as-written.dump");
    assert!(
        first_data(&as_written, "as_written") != "events",
        "without offsets pg_restore goes in dump order"
    );
    let with_offsets = decompressed(&crm.data, &path, "with-offsets.dump");
    let offsets = pagodirecto::backup::archive::add_data_offsets(&with_offsets).expect("offsets");
    assert!(offsets.added >= 10, "{offsets:?}");
    assert_eq!(offsets.present, 0);
    assert!(
        first_data(&with_offsets, "with_offsets") == "events",
        "the largest table first"
    );
    assert_eq!(
        sql_in(
            &crm.data,
            "as_written",
            "SELECT md5(string_agg(e::text, ',' ORDER BY id)) FROM audit.events e"
        ),
        sql_in(
            &crm.data,
            "with_offsets",
            "SELECT md5(string_agg(e::text, ',' ORDER BY id)) FROM audit.events e"
        ),
    );
}

fn age_keys(dir: &Path, file: &str) -> (String, PathBuf) {
    use age::secrecy::ExposeSecret as _;
    let identity = age::x25519::Identity::generate();
    let path = dir.join(file);
    std::fs::write(&path, format!("{}\n", identity.to_string().expose_secret()))
        .expect("write identity");
    (identity.to_public().to_string(), path)
}

#[test]
fn encrypted_backups_round_trip_and_a_wrong_key_is_refused_before_anything_changes() {
    let data = DataDir::new();
    let (recipient, identity) = age_keys(data.path(), "backup-key.txt");
    let (_, wrong) = age_keys(data.path(), "wrong-key.txt");
    let write_config = |identity: &Path| {
        let config = data.path().join("pagodirecto.toml");
        std::fs::write(
            &config,
            format!("[backup]\nschedule = \"\"\nrecipients = [\"{recipient}\"]\nidentity_file = \"{}\"\n", identity.display()),
        )
        .expect("config");
        config
    };
    let config = write_config(&identity);
    let config_arg = config.to_str().expect("utf8").to_string();
    let mut daemon = data.spawn(&["--config", &config_arg]);
    daemon.wait_ready(Duration::from_secs(60));
    sql(
        &data,
        "INSERT INTO ops.settings (key, value) VALUES ('secret', '\"kept\"')",
    );
    let out = ok_stdout(&data.cli(&["--config", &config_arg, "backup", "create", "--name", "enc"]));
    let (name, path) = out.trim().split_once('\t').expect("name<TAB>path");
    assert!(path.ends_with(".pgdump.zst.age"), "{path}");
    let raw = std::fs::read(path).expect("read");
    assert!(
        raw.starts_with(b"age-encryption.org/v1"),
        "the file is an age file"
    );
    assert!(
        !raw.windows(4).any(|w| w == b"kept"),
        "no plaintext in the file"
    );
    ok_stdout(&data.cli(&["--config", &config_arg, "backup", "verify", name]));
    sql(&data, "DELETE FROM ops.settings WHERE key = 'secret'");
    ok_stdout(&data.cli(&["--config", &config_arg, "restore", name, "--yes"]));
    assert_eq!(
        sql(&data, "SELECT value FROM ops.settings WHERE key = 'secret'"),
        "\"kept\""
    );
    assert!(daemon.stop().success());

    // With the wrong identity: refused, and the data is untouched.
    let config = write_config(&wrong);
    let config_arg = config.to_str().expect("utf8").to_string();
    let daemon = data.spawn(&["--config", &config_arg]);
    let mut daemon = daemon;
    daemon.wait_ready(Duration::from_secs(60));
    sql(
        &data,
        "INSERT INTO ops.settings (key, value) VALUES ('after', '1')",
    );
    let out = data.cli(&["--config", &config_arg, "restore", name, "--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be decrypted with"), "{err}");
    assert_eq!(
        sql(
            &data,
            "SELECT count(*) FROM ops.settings WHERE key = 'after'"
        ),
        "1",
        "nothing was touched"
    );
    let out = data.cli(&["--config", &config_arg, "backup", "verify", name]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be decrypted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon.stop().success());
}

#[test]
fn damaged_backups_are_refused_by_verify_restore_and_drill() {
    let crm = Crm::start();
    crm.customer(&crm.owner, "Precious");
    let (good, _) = create(&crm.data, "good");
    ok_stdout(&crm.data.cli(&["backup", "drill"]));
    let listed = backups(&crm.data);
    assert!(
        listed.iter().find(|b| b["name"] == good).expect("listed")["restore_verified_at"]
            .is_string(),
        "drill recorded"
    );
    let status: Value =
        serde_json::from_str(&ok_stdout(&crm.data.cli(&["status", "--json"]))).expect("json");
    assert_eq!(status["backups"]["last_verified_restorable"], json!(good));

    let (bad, path) = create(&crm.data, "bad");
    let before = fingerprint(&crm.data);
    // Truncate to half.
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    for args in [
        vec!["backup", "verify", bad.as_str()],
        vec!["restore", bad.as_str(), "--yes"],
        vec!["backup", "drill"],
    ] {
        let out = crm.data.cli(&args);
        assert!(
            !out.status.success(),
            "{args:?} accepted a truncated backup"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is damaged") || err.contains("truncated"),
            "{args:?}: {err}"
        );
    }
    // Flip bytes in the middle instead.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &flipped).expect("corrupt");
    let out = crm.data.cli(&["backup", "verify", &bad]);
    assert!(!out.status.success(), "a corrupted backup passed verify");
    assert_eq!(fingerprint(&crm.data), before, "nothing was touched");
    crm.get(&crm.owner, "/api/v1/customers").expect(200);
}

#[test]
fn a_backup_from_a_newer_schema_is_refused() {
    let crm = Crm::start();
    let (name, _) = create(&crm.data, "future");
    let manifest_path = crm.data.path().join("backups").join(format!("{name}.json"));
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).expect("read"))
            .expect("json");
    manifest["schema_version"] = json!(999);
    std::fs::write(&manifest_path, manifest.to_string()).expect("write");
    let out = crm.data.cli(&["restore", &name, "--yes"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("newer than this binary"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn retention_keeps_the_newest_and_deletes_old_ones() {
    let crm = Crm::start();
    let (name, path) = create(&crm.data, "base");
    let dir = crm.data.path().join("backups");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("read"),
    )
    .expect("json");
    // Crafted ages: copies of the real backup dated 10, 40, 50 and 60 days ago.
    let now = time::OffsetDateTime::now_utc();
    for (label, days) in [("d10", 10), ("d40", 40), ("d50", 50), ("d60", 60)] {
        let copy_name = format!("old-{label}");
        let file = format!("{copy_name}.pgdump.zst");
        std::fs::copy(&path, dir.join(&file)).expect("copy");
        let mut m = manifest.clone();
        m["name"] = json!(copy_name);
        m["file"] = json!(file);
        let at = now - time::Duration::days(days);
        m["created_at"] = json!(
            at.format(&time::format_description::well_known::Rfc3339)
                .expect("fmt")
        );
        std::fs::write(dir.join(format!("{copy_name}.json")), m.to_string()).expect("write");
    }
    // A leftover from an interrupted backup and an orphan data file.
    std::fs::write(
        dir.join("pagodirecto-20200101-000000.pgdump.zst.partial"),
        b"half",
    )
    .expect("write");
    std::fs::write(
        dir.join("pagodirecto-20200101-000001.pgdump.zst"),
        b"no manifest",
    )
    .expect("write");

    // Defaults: keep_days 30, keep_last 7 → all 5 are among the newest 7; nothing old goes.
    let removed = ok_stdout(&crm.data.cli(&["backup", "prune"]));
    let listing: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        removed.contains("removed 2"),
        "only the failed leftovers: {removed}; now: {listing:?}"
    );
    // The daemon applies its own config; with it stopped, the CLI applies
    // the one it is given.
    let Crm { data, daemon, .. } = crm;
    assert!(daemon.stop().success());
    let config = data.path().join("keep2.toml");
    std::fs::write(
        &config,
        "[backup]\nkeep_last = 2\nkeep_days = 30\nschedule = \"\"\n",
    )
    .expect("config");
    let out = ok_stdout(&data.cli(&[
        "--config",
        config.to_str().expect("utf8"),
        "backup",
        "prune",
    ]));
    assert!(out.contains("removed 3"), "{out}");
    let names: Vec<String> = backups(&data)
        .iter()
        .map(|b| b["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(
        names,
        [name.clone(), "old-d10".to_string()],
        "the newest two stay; older than 30 days go"
    );
    assert!(!dir.join("old-d60.pgdump.zst").exists());
}

#[test]
fn killing_the_daemon_mid_backup_leaves_nothing_listed_and_the_next_backup_works() {
    let data = DataDir::new();
    let daemon = data.start();
    // Enough incompressible data that a backup takes a moment.
    sql(
        &data,
        "CREATE TABLE ops.bulk AS SELECT g, md5(random()::text) || md5(random()::text) AS pad FROM generate_series(1, 1500000) g",
    );
    let mut creating = std::process::Command::new(crate::support::BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args(["backup", "create", "--name", "doomed"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let dir = data.path().join("backups");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let partial = std::fs::read_dir(&dir)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.contains("doomed") && name.ends_with(".partial")
            });
        if partial {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partial backup appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    send(i64::from(daemon.pid()), Signal::SIGKILL);
    let _ = creating.wait();
    daemon.kill();
    data.assert_no_postgres(Duration::from_secs(10));

    // Offline: nothing named "doomed" is a good backup.
    assert!(
        !backups(&data)
            .iter()
            .any(|b| b["name"].as_str().is_some_and(|n| n.contains("doomed")))
    );
    let daemon = data.start();
    let (name, _) = create(&data, "after-kill");
    assert!(backups(&data).iter().any(|b| b["name"] == name));
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("doomed"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the interrupted backup was cleaned up: {leftovers:?}"
    );
    assert!(daemon.stop().success());
}

/// Sends one request line to the daemon's control socket and returns every
/// line it answers with, up to and including the answer.
fn control_lines(data: &DataDir, request: &str) -> Vec<Value> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(data.path().join("run/control.sock"))
        .expect("connect to the control socket");
    stream
        .write_all(format!("{request}\n").as_bytes())
        .expect("send");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stream).lines() {
        let value: Value = serde_json::from_str(&line.expect("read")).expect("json line");
        let done = value.get("progress").is_none();
        lines.push(value);
        if done {
            break;
        }
    }
    lines
}

#[test]
fn the_daemon_streams_progress_to_clients_that_ask_and_only_to_them() {
    let crm = Crm::start();
    crm.customer(&crm.owner, "Progressive");
    let (name, _) = create(&crm.data, "progress");
    let asked = control_lines(
        &crm.data,
        &format!(r#"{{"cmd":"backup_verify","name":"{name}","progress":true}}"#),
    );
    let (answer, progress) = asked.split_last().expect("lines");
    assert_eq!(answer["ok"]["name"], json!(name), "{asked:?}");
    assert!(!progress.is_empty(), "no progress lines: {asked:?}");
    let bytes: Vec<u64> = progress
        .iter()
        .map(|p| p["progress"]["bytes"].as_u64().expect("bytes"))
        .collect();
    assert!(bytes.windows(2).all(|w| w[0] <= w[1]), "{bytes:?}");
    assert!(bytes.last().is_some_and(|b| *b > 0), "{bytes:?}");
    // A client that did not ask (as every client before progress) gets
    // exactly one line: the answer.
    let plain = control_lines(
        &crm.data,
        &format!(r#"{{"cmd":"backup_verify","name":"{name}"}}"#),
    );
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(plain[0]["ok"]["name"], json!(name));
}

/// A restore's progress keeps rising while `pg_restore -j` loads the
/// tables, after the decompression counted the copy's bytes.
#[test]
fn a_restore_reports_progress_through_the_load_itself() {
    let crm = Crm::start();
    crm.customer(&crm.owner, "Progressive");
    // ~150 MB of audit rows: their COPY takes a few of the 0.5 s polls.
    sql(
        &crm.data,
        "INSERT INTO audit.events (tenant_id, action, entity, entity_id, after) \
         SELECT t.id, 'create', 'customers.customers', gen_random_uuid(), \
                jsonb_build_object('n', g, 'notes', repeat(md5(g::text), 12)) \
         FROM tenancy.tenants t, generate_series(1, 250000) g",
    );
    let (name, path) = create(&crm.data, "progress");
    let copy_size = {
        let mut decoder =
            zstd::Decoder::new(std::fs::File::open(&path).expect("open")).expect("zstd");
        std::io::copy(&mut decoder, &mut std::io::sink()).expect("decompress")
    };
    let lines = control_lines(
        &crm.data,
        &format!(r#"{{"cmd":"restore","name":"{name}","progress":true}}"#),
    );
    let (answer, progress) = lines.split_last().expect("lines");
    assert!(answer.get("ok").is_some(), "{answer}");
    let bytes: Vec<u64> = progress
        .iter()
        .map(|p| p["progress"]["bytes"].as_u64().expect("bytes"))
        .collect();
    assert!(bytes.windows(2).all(|w| w[0] <= w[1]), "{bytes:?}");
    let during_load = bytes.iter().filter(|&&b| b > copy_size).count();
    assert!(
        during_load >= 2,
        "reports past the copy's {copy_size} bytes: {bytes:?}"
    );
}

#[test]
fn without_room_for_a_decompressed_copy_a_restore_streams_instead() {
    let crm = Crm::start();
    crm.customer(&crm.owner, "Streamed");
    let (good, path) = create(&crm.data, "streamed");
    let Crm { data, daemon, .. } = crm;
    assert!(daemon.stop().success());
    // Offline, with a reserve larger than any disk: no room for the copy
    // that a parallel restore reads; the drill restores from the stream.
    let config = data.path().join("reserve.toml");
    std::fs::write(
        &config,
        "[limits]\ndisk_reserve = \"1000 TiB\"\n[backup]\nschedule = \"\"\n",
    )
    .expect("config");
    let config_arg = config.to_str().expect("utf8").to_string();
    let out = data.cli(&["--config", &config_arg, "backup", "drill"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("restoring from the compressed stream"),
        "{err}"
    );
    let listed = backups(&data);
    assert!(
        listed.iter().find(|b| b["name"] == good).expect("listed")["restore_verified_at"]
            .is_string(),
        "drill recorded"
    );
    let copies = path.parent().expect("backup dir").join(".restore");
    assert!(!copies.exists(), "{}", copies.display());
}

#[test]
fn backups_are_refused_when_they_would_cross_the_disk_reserve() {
    let data = DataDir::new();
    let config = data.path().join("reserve.toml");
    // A reserve larger than any disk here: every backup must be refused.
    std::fs::write(
        &config,
        "[limits]\ndisk_reserve = \"1000 TiB\"\n[backup]\nschedule = \"\"\n",
    )
    .expect("config");
    let config_arg = config.to_str().expect("utf8").to_string();
    let mut daemon = data.spawn(&["--config", &config_arg]);
    // Not ready (the disk check fails), but up: wait for the control socket.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !data.path().join("run/control.sock").exists() {
        assert!(
            daemon.try_wait().is_none(),
            "daemon exited: {}",
            daemon.log()
        );
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = data.cli(&["--config", &config_arg, "backup", "create"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not enough disk space") && err.contains("reserve"),
        "{err}"
    );
    assert!(backups(&data).is_empty());
    assert!(daemon.stop().success());
}

#[test]
fn a_missed_scheduled_backup_is_caught_up_at_start() {
    let data = DataDir::new();
    let mut daemon = data.spawn_with_schedule(&[]);
    daemon.wait_ready(Duration::from_secs(60));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while backups(&data).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no catch-up backup: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.log().contains("catching up now"));
    // The weekly drill never ran either: once a backup exists, it is caught
    // up too, and proves that backup restorable.
    let status = || -> Value {
        serde_json::from_str(&ok_stdout(&data.cli(&["status", "--json"]))).expect("json")
    };
    wait_until(
        "no catch-up drill",
        Duration::from_secs(60),
        || !status()["backups"]["last_verified_restorable"].is_null(),
        || daemon.log(),
    );
    assert!(daemon.log().contains("restore drill was missed"));
    let status = status();
    let newest = backups(&data)[0]["name"].clone();
    assert_eq!(
        status["backups"]["last_verified_restorable"], newest,
        "{status}"
    );
    // Both runs are in the record every instance reads, and status shows it.
    for job in ["backup", "drill"] {
        assert!(
            status["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .any(|j| j["job"] == job && j["detail"] == newest),
            "{job}: {status}"
        );
    }
    let text = ok_stdout(&data.cli(&["status"]));
    assert!(text.contains("last runs (any instance)"), "{text}");
    assert!(
        status["backups"]["next_scheduled"]
            .as_str()
            .is_some_and(|t| t.contains("T02:00:00")),
        "{status}"
    );
    // Restarted, nothing was missed since: no second drill.
    assert!(daemon.stop().success());
    let mut daemon = data.spawn_with_schedule(&[]);
    daemon.wait_ready(Duration::from_secs(60));
    wait_until(
        "no catch-up decision after the restart",
        Duration::from_secs(30),
        || daemon.log().contains("no scheduled backup was missed"),
        || daemon.log(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !daemon.log().contains("restore drill was missed"),
        "{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
}

#[test]
fn admins_back_up_through_the_api_and_others_may_not() {
    let crm = Crm::start();
    let agent = crm.add_user("default", "agent@x.org", "agent");
    crm.get(&agent, "/api/v1/system/backups")
        .expect_problem(403, "forbidden");
    crm.post(&agent, "/api/v1/system/backups", json!({}))
        .expect_problem(403, "forbidden");
    crm.post(
        &crm.owner,
        "/api/v1/system/backups",
        json!({"label": "../x"}),
    )
    .expect_problem(422, "validation");
    crm.post(
        &crm.owner,
        "/api/v1/system/backups",
        json!({"label": "from-api"}),
    )
    .expect(202);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = crm
            .get(&crm.owner, "/api/v1/system/backups")
            .expect(200)
            .body;
        if let Some(item) = list["items"].as_array().and_then(|items| items.first()) {
            assert!(
                item["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-from-api")),
                "{list}"
            );
            assert!(item["verified_at"].is_string());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no backup appeared: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn admins_see_the_status_report_and_resource_samples_and_others_may_not() {
    let crm = Crm::start();
    let agent = crm.add_user("default", "agent@x.org", "agent");
    crm.get(&agent, "/api/v1/system/status")
        .expect_problem(403, "forbidden");
    crm.get(&agent, "/api/v1/system/resources")
        .expect_problem(403, "forbidden");

    // The same report `pagodirecto status --json` prints.
    let status = crm
        .get(&crm.owner, "/api/v1/system/status")
        .expect(200)
        .body;
    assert_eq!(status["version"], env!("PAGODIRECTO_VERSION"), "{status}");
    assert_eq!(status["ready"], true, "{status}");
    assert!(status["uptime_secs"].is_u64(), "{status}");
    assert_eq!(status["postgres"]["state"], "ready", "{status}");
    assert_eq!(status["postgres"]["restarts"], 0, "{status}");
    assert!(
        status["checks"].as_array().is_some_and(|c| !c.is_empty()),
        "{status}"
    );

    // The charts' data: at least one sample, measured against the budget.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let resources = loop {
        let resources = crm
            .get(&crm.owner, "/api/v1/system/resources")
            .expect(200)
            .body;
        if resources["samples"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
        {
            break resources;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no samples: {resources}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let sample = &resources["samples"][0];
    assert!(
        sample["daemon_rss_bytes"]
            .as_u64()
            .is_some_and(|b| b > 1_000_000),
        "{sample}"
    );
    assert!(
        sample["postgres_rss_bytes"]
            .as_u64()
            .is_some_and(|b| b > 1_000_000),
        "{sample}"
    );
    assert!(
        resources["postgres_memory_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{resources}"
    );
}
