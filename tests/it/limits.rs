//! Resource limits for real: PostgreSQL in its own cgroup on this host,
//! what `status --json` and `/metrics` say about them, and `doctor`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::{DataDir, http_get, ok_stdout, sql};

fn status_json(data: &DataDir, extra: &[&str]) -> serde_json::Value {
    let mut args = extra.to_vec();
    args.extend(["status", "--json"]);
    serde_json::from_str(&ok_stdout(&data.cli(&args))).expect("status json")
}

/// The cgroup a process is in, for one v1 controller (or v2's `0::`).
fn cgroup_of(pid: u64, controller: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
}

#[test]
fn a_postgres_memory_limit_is_enforced_and_the_appliance_recovers() {
    let data = DataDir::new();
    let config = data.path().join("small.toml");
    // 128 MiB for PostgreSQL: shared_buffers 32 MB plus its connections fit,
    // a 400 MB string does not.
    std::fs::write(
        &config,
        "[limits]\npostgres_memory = \"128MiB\"\nmax_connections = 20\npool_size = 8\ncpu = 1.5\npostgres_cpu = 1\n[backup]\nschedule = \"\"\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf8").to_string();
    let mut daemon = data.spawn(&["--config", &config]);
    daemon.wait_ready(Duration::from_secs(60));

    let status = status_json(&data, &[]);
    let cgroup = &status["cgroup"];
    assert_ne!(
        cgroup["mode"], "none",
        "this host offers cgroups; the limit must use them: {cgroup}"
    );
    assert_eq!(
        cgroup["postgres_memory_limit_bytes"].as_u64(),
        Some(128 * 1024 * 1024),
        "{cgroup}"
    );
    let pg_dir = std::path::PathBuf::from(cgroup["postgres_dir"].as_str().expect("dir"));
    assert!(pg_dir.is_dir(), "{}", pg_dir.display());
    // The postmaster and every backend it forked are in the group.
    let postmaster = status["postgres"]["pid"].as_u64().expect("pid");
    let memory_path = cgroup_of(postmaster, "memory")
        .or_else(|| cgroup_of(postmaster, ""))
        .expect("cgroup");
    assert!(
        pg_dir.ends_with(memory_path.trim_start_matches('/')),
        "postmaster in {memory_path}, group is {}",
        pg_dir.display()
    );
    // And its CPU quota: one core, 100 ms per 100 ms period (v1 cpu
    // hierarchy, or v2's cpu.max).
    let quota = match cgroup_of(postmaster, "cpu") {
        Some(path) => std::fs::read_to_string(format!(
            "/sys/fs/cgroup/cpu/{}/cpu.cfs_quota_us",
            path.trim_start_matches('/')
        ))
        .expect("quota"),
        None => std::fs::read_to_string(pg_dir.join("cpu.max")).expect("cpu.max"),
    };
    assert!(
        quota.trim() == "100000" || quota.trim() == "100000 100000",
        "{quota}"
    );
    // The daemon is in the appliance's group, under the whole budget:
    // `memory` (1 GiB by default) and `cpu` (1.5 cores).
    let daemon_pid = daemon.pid() as u64;
    if cgroup["mode"] == "v1" {
        let mem = cgroup_of(daemon_pid, "memory").expect("memory cgroup");
        let cpu = cgroup_of(daemon_pid, "cpu").expect("cpu cgroup");
        assert!(
            mem.ends_with("/daemon") && cpu.ends_with("/daemon"),
            "{mem} {cpu}"
        );
        let read = |file: String| {
            std::fs::read_to_string(file)
                .expect("read")
                .trim()
                .to_string()
        };
        let parent = |p: &str| {
            p.trim_start_matches('/')
                .trim_end_matches("/daemon")
                .to_string()
        };
        assert_eq!(
            read(format!(
                "/sys/fs/cgroup/memory/{}/memory.limit_in_bytes",
                parent(&mem)
            )),
            (1u64 << 30).to_string()
        );
        assert_eq!(
            read(format!(
                "/sys/fs/cgroup/cpu/{}/cpu.cfs_quota_us",
                parent(&cpu)
            )),
            "150000"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{postmaster}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core row");
    assert!(
        core.split_whitespace().nth(4) == Some("0"),
        "no core dumps: {core}"
    );

    sql(
        &data,
        "CREATE TABLE keep (id int PRIMARY KEY, note text); INSERT INTO keep SELECT g, 'row ' || g FROM generate_series(1, 1000) g",
    );
    let out = data.cli(&[
        "psql",
        "--",
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "SELECT length(repeat('x', 400 * 1024 * 1024))",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a query needing 400 MB ran within a 128 MiB limit: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("server closed the connection")
            || stderr.contains("out of memory")
            || stderr.contains("terminat"),
        "{stderr}"
    );

    // The kernel acted on the limit, and status says so.
    let status = status_json(&data, &[]);
    let cgroup = &status["cgroup"];
    // It got to the limit (not further), and the kernel killed for it.
    let peak = cgroup["postgres_memory_peak_bytes"].as_u64().unwrap_or(0);
    assert!(
        peak > 120 * 1024 * 1024 && peak <= 128 * 1024 * 1024,
        "{cgroup}"
    );
    let oom_kills = cgroup["postgres_oom_kills"].as_u64().unwrap_or(0);
    assert!(oom_kills >= 1, "{cgroup}\n{stderr}");

    // The appliance recovers by itself: ready again, data intact, API up.
    let addr = daemon.addr.clone().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http_get(&addr, "/ready") {
            break;
        }
        assert!(daemon.try_wait().is_none(), "daemon died: {}", daemon.log());
        assert!(
            Instant::now() < deadline,
            "not ready again: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        sql(&data, "SELECT count(*), max(note) FROM keep"),
        "1000|row 999"
    );
    assert_eq!(daemon.get("/api/v1/customers").0, 401, "the API answers");
    let (_, metrics) = daemon.get("/metrics");
    let oom_line = metrics
        .lines()
        .find(|l| l.starts_with("pagodirecto_postgres_oom_kills_total "))
        .expect("oom metric");
    assert!(oom_line.ends_with(&format!(" {oom_kills}")), "{oom_line}");

    assert!(daemon.stop().success());
    assert!(
        !pg_dir.exists(),
        "the cgroup is removed after postgres stops: {}",
        pg_dir.display()
    );
}

#[test]
fn status_json_shows_daemon_postgres_cgroup_limits_resources_backups_and_config() {
    let data = DataDir::new();
    let daemon = data.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = status_json(&data, &[]);
        if status["resources"].is_object() {
            break status;
        }
        assert!(Instant::now() < deadline, "no resource sample: {status}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(status["pid"].as_u64(), Some(daemon.pid() as u64));
    assert_eq!(status["version"], env!("PAGODIRECTO_VERSION"));
    assert_eq!(status["ready"], true);
    assert_eq!(status["postgres"]["state"], "ready");
    assert_eq!(status["postgres"]["restarts"], 0);
    assert!(status["postgres"]["version"].as_str().is_some());
    assert!(status["config_source"].as_str().is_some());
    assert!(status["config_loaded_at"].as_str().is_some());
    assert_eq!(
        status["data_dir"].as_str(),
        Some(data.path().to_str().expect("utf8"))
    );

    let limits = &status["limits"];
    assert_eq!(limits["memory_bytes"].as_u64(), Some(1 << 30), "{limits}");
    assert_eq!(limits["postgres_memory_bytes"].as_u64(), Some(512 << 20));
    assert_eq!(limits["cpu_cores"].as_f64(), Some(0.0));
    assert_eq!(limits["max_connections"], 40);
    assert_eq!(limits["pool_size"], 16);
    assert_eq!(limits["max_concurrent_requests"], 512);
    assert_eq!(limits["disk_reserve_bytes"].as_u64(), Some(512 << 20));
    assert_eq!(limits["core_dumps"], false);
    // Raised to the hard limit at start, so at least the usual 1024.
    assert!(limits["open_files"].as_u64().expect("nofile") >= 1024);
    // No core dumps from the daemon, nor from anything it starts.
    let own = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).expect("limits");
    let core = own
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core row");
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");

    let cgroup = &status["cgroup"];
    assert!(
        ["v1", "v2", "none"].contains(&cgroup["mode"].as_str().expect("mode")),
        "{cgroup}"
    );
    assert!(!cgroup["note"].as_str().expect("note").is_empty());
    if cgroup["mode"] != "none" {
        assert!(cgroup["postgres_memory_bytes"].as_u64().expect("usage") > 0);
        assert_eq!(cgroup["postgres_oom_kills"], 0);
    }

    let resources = &status["resources"];
    for key in [
        "daemon_rss_bytes",
        "postgres_rss_bytes",
        "data_free_bytes",
        "disk_reserve_bytes",
        "postgres_memory_budget_bytes",
    ] {
        assert!(
            resources[key].as_u64().expect(key) > 0,
            "{key}: {resources}"
        );
    }
    assert!(resources["daemon_cpu_percent"].as_f64().is_some());

    let backups = &status["backups"];
    assert_eq!(backups["count"], 0);
    assert!(backups["directory"].as_str().is_some());
    assert!(backups["last_success"].is_null());

    let text = ok_stdout(&data.cli(&["status"]));
    for needle in ["limits (cgroup ", "appliance: 1.0 GiB", "open files"] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    assert!(daemon.stop().success());
}

/// A family's type and its samples: (name with suffix, labels, value).
type Families = BTreeMap<String, (String, Vec<(String, BTreeMap<String, String>, f64)>)>;

/// Parses the exposition strictly enough to call it well-formed: every
/// sample belongs to a family declared with `# TYPE` (histograms through
/// their `_bucket`/`_sum`/`_count` series), every value is a number, and
/// each histogram's buckets never decrease and end at `+Inf` = `_count`.
/// prometheus-parse reads the same text; its view must agree.
fn families(text: &str) -> Families {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse reads it");
    let mut out: Families = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            out.insert(name.to_string(), (kind.to_string(), Vec::new()));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("label in {line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| out.get(*base).is_some_and(|(k, _)| k == "histogram"))
            })
            .unwrap_or(name);
        let entry = out
            .get_mut(family)
            .unwrap_or_else(|| panic!("sample without # TYPE: {line}"));
        entry.1.push((name.to_string(), labels, value));
    }
    for (name, (kind, samples)) in &out {
        assert!(!samples.is_empty(), "{name} declared but empty");
        if kind != "histogram" {
            let parsed = scrape.samples.iter().filter(|s| &s.metric == name).count();
            assert_eq!(parsed, samples.len(), "prometheus-parse sees {name} alike");
            continue;
        }
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for (sample, labels, value) in samples {
            let mut key = labels.clone();
            let le = key.remove("le");
            let key = format!("{key:?}");
            if sample.ends_with("_bucket") {
                let le = le.expect("bucket has le");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                series.entry(key).or_default().push((bound, *value));
            } else if sample.ends_with("_count") {
                counts.insert(key, *value);
            }
        }
        for (key, buckets) in series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name}{key}: buckets out of order"
            );
            let last = buckets.last().expect("buckets");
            assert!(last.0.is_infinite(), "{name}{key}: no +Inf bucket");
            assert_eq!(
                Some(&last.1),
                counts.get(&key),
                "{name}{key}: +Inf = _count"
            );
        }
    }
    out
}

fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = families
        .keys()
        .find(|f| name.starts_with(f.as_str()) && families[*f].1.iter().any(|s| s.0 == name))?;
    families[family].1.iter().find_map(|(sample, l, v)| {
        (sample == name
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want)))
        .then_some(*v)
    })
}

#[test]
fn metrics_are_well_formed_prometheus_and_counters_increase() {
    let data = DataDir::new();
    let daemon = data.start();
    let scrape = || {
        let (code, text) = daemon.get("/metrics");
        assert_eq!(code, 200);
        families(&text)
    };
    assert_eq!(daemon.get("/api/v1/customers").0, 401);
    let before = scrape();
    let names: BTreeSet<&str> = before.keys().map(String::as_str).collect();
    for family in [
        "pagodirecto_http_requests_total",
        "pagodirecto_http_request_duration_seconds",
        "pagodirecto_pool_connections",
        "pagodirecto_pool_waiting",
        "pagodirecto_pool_max",
        "pagodirecto_postgres_up",
        "pagodirecto_postgres_restarts_total",
        "pagodirecto_limit_memory_bytes",
        "pagodirecto_limit_cpu_cores",
        "pagodirecto_limit_disk_reserve_bytes",
        "pagodirecto_cgroup_info",
        "pagodirecto_build_info",
    ] {
        assert!(names.contains(family), "{family} missing: {names:?}");
    }
    assert_eq!(before["pagodirecto_postgres_restarts_total"].0, "counter");
    assert_eq!(before["pagodirecto_http_requests_total"].0, "counter");
    assert_eq!(
        before["pagodirecto_http_request_duration_seconds"].0,
        "histogram"
    );
    assert_eq!(
        value(
            &before,
            "pagodirecto_limit_memory_bytes",
            &[("scope", "postgres")]
        ),
        Some(f64::from(512u32 << 20))
    );
    assert_eq!(value(&before, "pagodirecto_postgres_up", &[]), Some(1.0));

    let route = [
        ("route", "/api/v1/customers"),
        ("method", "GET"),
        ("status", "401"),
    ];
    let count = |f: &Families| value(f, "pagodirecto_http_requests_total", &route).unwrap_or(0.0);
    let histogram = |f: &Families| {
        value(f, "pagodirecto_http_request_duration_seconds_count", &route).unwrap_or(0.0)
    };
    for _ in 0..3 {
        assert_eq!(daemon.get("/api/v1/customers").0, 401);
    }
    let after = scrape();
    // Counts are whole numbers; compare them as such.
    assert_eq!(count(&after) as u64, count(&before) as u64 + 3);
    assert_eq!(histogram(&after) as u64, histogram(&before) as u64 + 3);
    assert!(daemon.stop().success());
}

#[test]
fn doctor_finds_a_wrongly_owned_data_dir() {
    let data = DataDir::new();
    let pgdata = data.pgdata();
    std::fs::create_dir_all(&pgdata).expect("mkdir");
    // Someone else's: PostgreSQL would refuse to start on it.
    nix::unistd::chown(&pgdata, Some(nix::unistd::Uid::from_raw(54321)), None).expect("chown");
    let out = data.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "doctor must fail:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL  pgdata"))
        .unwrap_or_else(|| panic!("no pgdata failure:\n{text}"));
    assert!(
        line.contains(pgdata.to_str().expect("utf8")) && line.contains("owned by uid 54321"),
        "{line}"
    );
    assert!(text.contains("fix: chown -R "), "{text}");
    // The rest of the report is there too.
    for check in [
        "config", "os user", "postgres", "disk", "cgroups", "port", "clock",
    ] {
        assert!(
            text.lines().any(|l| l[6..].starts_with(check)),
            "{check} missing:\n{text}"
        );
    }
}

#[test]
fn doctor_finds_a_disk_reserve_larger_than_the_free_space() {
    let data = DataDir::new();
    let config = data.path().join("full.toml");
    std::fs::write(
        &config,
        "[limits]\ndisk_reserve = \"1000 TiB\"\n[server]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .expect("config");
    let out = data.cli(&["--config", config.to_str().expect("utf8"), "doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "doctor must fail:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL  disk"))
        .unwrap_or_else(|| panic!("no disk failure:\n{text}"));
    assert!(line.contains("below the reserve of 1000.0 TiB"), "{line}");
    assert!(text.contains("lower [limits] disk_reserve"), "{text}");
    // Everything else on a fresh data dir is fine.
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("FAIL") && !l.starts_with("FAIL  disk")),
        "{text}"
    );
}

#[test]
fn ready_names_the_directory_and_bytes_when_the_disk_is_below_the_reserve() {
    let data = DataDir::new();
    let config = data.path().join("reserve.toml");
    std::fs::write(&config, "[limits]\ndisk_reserve = \"1000 TiB\"\n").expect("config");
    let mut daemon = data.spawn(&["--config", config.to_str().expect("utf8")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        assert!(daemon.try_wait().is_none(), "{}", daemon.log());
        assert!(Instant::now() < deadline, "{}", daemon.log());
        if let Ok(addr) = std::fs::read_to_string(data.path().join("run/http.addr"))
            && let Ok((503, body)) = http_get(&addr, "/ready")
            && body.contains("disk")
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains(data.path().to_str().expect("utf8")), "{body}");
    assert!(body.contains("reserve 1000.0 TiB"), "{body}");
    assert!(daemon.stop().success());
}

#[test]
fn the_system_page_gets_the_budget_beside_the_samples() {
    let crm = crate::api_support::Crm::start();
    let res = crm.get(&crm.owner, "/api/v1/system/resources").expect(200);
    assert_eq!(
        res.body["memory_bytes"].as_u64(),
        Some(1 << 30),
        "{}",
        res.body
    );
    assert_eq!(res.body["postgres_memory_bytes"].as_u64(), Some(512 << 20));
    assert_eq!(res.body["cpu_cores"].as_f64(), Some(0.0));
    assert_eq!(res.body["postgres_cpu_cores"].as_f64(), Some(0.0));
    assert!(res.body["samples"].is_array());
}
