//! `pagodirecto status`: asks the running daemon over its control socket;
//! never touches the data dir itself.

use std::process::ExitCode;

use anyhow::Result;

use crate::config::Loaded;
use crate::control::{self, Request, StatusReport};

/// LSB's "program is not running" for status actions.
const NOT_RUNNING: u8 = 3;

pub async fn run(loaded: &Loaded, json: bool) -> Result<ExitCode> {
    let socket = loaded.config.paths().control_socket();
    let value = match control::call(&socket, &Request::Status).await {
        Ok(value) => value,
        Err(err @ control::Error::NotRunning { .. }) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "running": false, "error": err.to_string() })
                );
            } else {
                eprintln!("pagodirecto: {err}");
            }
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        Err(err) => return Err(err.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let report: StatusReport = serde_json::from_value(value)?;
    print!("{}", render(&report));
    Ok(ExitCode::SUCCESS)
}

/// `pagodirecto metrics`: the same text `/metrics` serves, from the control
/// socket (which needs no network access and no allow list).
pub async fn metrics(loaded: &Loaded) -> Result<ExitCode> {
    let socket = loaded.config.paths().control_socket();
    match control::call(&socket, &Request::Metrics).await {
        Ok(value) => {
            print!("{}", value["text"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ control::Error::NotRunning { .. }) => {
            eprintln!("pagodirecto: {err}");
            Ok(ExitCode::from(NOT_RUNNING))
        }
        Err(err) => Err(err.into()),
    }
}

/// The binary, and how the last update went.
fn render_update(out: &mut String, r: &StatusReport) {
    use std::fmt::Write as _;

    use crate::handover::Outcome;
    if let Some(exe) = &r.exe {
        let _ = writeln!(out, "  binary:    {}", exe.display());
    }
    let Some(update) = &r.last_update else {
        return;
    };
    let at = update
        .at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let what = match update.outcome {
        Outcome::Updated => "updated",
        Outcome::RolledBack => "ROLLED BACK",
        Outcome::InProgress => "interrupted (in progress when the machine stopped)",
    };
    let _ = writeln!(
        out,
        "  last update: {} → {} {what} at {at}",
        update.from, update.to
    );
    if let Some(reason) = &update.reason {
        let _ = writeln!(out, "    why: {reason}");
    }
    if let Some(backup) = &update.backup {
        let _ = writeln!(out, "    backup taken before: {backup}");
    }
}

fn render(r: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pagodirecto {} (pid {}), up {}",
        r.version,
        r.pid,
        human_secs(r.uptime_secs)
    );
    let _ = writeln!(out, "  ready:     {}", if r.ready { "yes" } else { "NO" });
    let _ = writeln!(out, "  listening: {}", r.listen.join(", "));
    let _ = writeln!(out, "  data dir:  {}", r.data_dir.display());
    let _ = writeln!(out, "  config:    {}", r.config_source);
    let _ = writeln!(out, "  config at: {}", r.config_loaded_at);
    if !r.restart_pending.is_empty() {
        let _ = writeln!(
            out,
            "  RESTART PENDING for: {}",
            r.restart_pending.join(", ")
        );
    }
    if let Some(err) = &r.config_error {
        let _ = writeln!(out, "  CONFIG CHANGE REFUSED: {err}");
    }
    render_update(&mut out, r);
    let pg = &r.postgres;
    if let Some(ext) = &r.external {
        let _ = writeln!(out, "postgres (external) {}", ext.server);
        let _ = writeln!(
            out,
            "  state:     {}{}",
            if ext.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            ext.latency_ms
                .map(|ms| format!(", latency {ms:.1} ms"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  version:   {}",
            ext.version.as_deref().unwrap_or("unknown")
        );
        if let Some(err) = &ext.last_error {
            let _ = writeln!(out, "  error:     {err}");
        }
        let _ = writeln!(
            out,
            "  leader:    {}",
            if r.leader {
                "yes (runs scheduled backups, drills, retention)"
            } else {
                "no (another instance runs scheduled jobs)"
            }
        );
    } else {
        render_embedded(&mut out, pg);
    }
    render_backups(&mut out, &r.backups);
    render_jobs(&mut out, &r.jobs);
    render_limits(&mut out, r);
    if let Some(res) = &r.resources {
        let _ = writeln!(out, "resources");
        let _ = writeln!(
            out,
            "  daemon:    {} RSS, {:.1}% CPU",
            bytesize::ByteSize(res.daemon_rss_bytes),
            res.daemon_cpu_percent
        );
        let _ = writeln!(
            out,
            "  postgres:  {} RSS in {} processes (budget {}), {:.1}% CPU",
            bytesize::ByteSize(res.postgres_rss_bytes),
            res.postgres_processes,
            bytesize::ByteSize(res.postgres_memory_budget_bytes),
            res.postgres_cpu_percent
        );
        let _ = writeln!(
            out,
            "  disk:      {} free (reserve {})",
            bytesize::ByteSize(res.data_free_bytes),
            bytesize::ByteSize(res.disk_reserve_bytes)
        );
    }
    let _ = writeln!(out, "checks");
    for check in &r.checks {
        let _ = writeln!(
            out,
            "  {:<10} {:<4} {}",
            check.name,
            if check.ok { "ok" } else { "FAIL" },
            check.detail
        );
    }
    out
}

fn render_limits(out: &mut String, r: &StatusReport) {
    use std::fmt::Write as _;
    let l = &r.limits;
    let cores = |c: f64| {
        if c > 0.0 {
            format!("{c} cores")
        } else {
            "no CPU limit".into()
        }
    };
    let _ = writeln!(out, "limits (cgroup {})", r.cgroup.mode);
    let _ = writeln!(
        out,
        "  appliance: {}, {}",
        bytesize::ByteSize(l.memory_bytes),
        cores(l.cpu_cores)
    );
    let _ = writeln!(
        out,
        "  postgres:  {}, {}, {} connections (pool {}), {} requests at once",
        bytesize::ByteSize(l.postgres_memory_bytes),
        cores(l.postgres_cpu_cores),
        l.max_connections,
        l.pool_size,
        l.max_concurrent_requests
    );
    let c = &r.cgroup;
    if let (Some(used), Some(limit)) = (c.postgres_memory_bytes, c.postgres_memory_limit_bytes) {
        let _ = writeln!(
            out,
            "  cgroup:    postgres uses {} of {} (peak {}); {} OOM kills",
            bytesize::ByteSize(used),
            bytesize::ByteSize(limit),
            bytesize::ByteSize(c.postgres_memory_peak_bytes.unwrap_or(0)),
            c.postgres_oom_kills.unwrap_or(0)
        );
    }
    let _ = writeln!(out, "  {}", c.note);
    let _ = writeln!(
        out,
        "  files:     {} open files, core dumps {}",
        l.open_files.map_or_else(|| "?".into(), |n| n.to_string()),
        if l.core_dumps { "on" } else { "off" }
    );
}

fn render_jobs(out: &mut String, jobs: &[crate::control::JobReport]) {
    use std::fmt::Write as _;
    if jobs.is_empty() {
        return;
    }
    let _ = writeln!(out, "last runs (any instance)");
    for j in jobs {
        let _ = writeln!(
            out,
            "  {:<10} {} ({})",
            format!("{}:", j.job),
            j.last_success_at,
            j.detail
        );
    }
}

fn render_backups(out: &mut String, b: &crate::control::BackupReport) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "backups ({} in {})", b.count, b.directory.display());
    let _ = writeln!(
        out,
        "  last:      {}",
        b.last_success.as_ref().map_or_else(
            || "none yet".to_string(),
            |name| format!(
                "{name} at {} ({}, {} ms)",
                b.last_success_at.as_deref().unwrap_or("?"),
                bytesize::ByteSize(b.last_size.unwrap_or(0)),
                b.last_duration_ms.unwrap_or(0)
            )
        )
    );
    let _ = writeln!(
        out,
        "  restorable: {}",
        b.last_verified_restorable.as_ref().map_or_else(
            || "not proven by a drill yet".to_string(),
            |name| format!(
                "{name} (drill at {})",
                b.last_verified_restorable_at.as_deref().unwrap_or("?")
            )
        )
    );
    if let Some(failure) = &b.last_failure {
        let _ = writeln!(out, "  LAST FAILURE: {failure}");
    }
    if let Some(failure) = &b.last_drill_failure {
        let _ = writeln!(out, "  LAST DRILL FAILURE: {failure}");
    }
    if let Some(running) = &b.running {
        let _ = writeln!(out, "  running:   {running}");
    }
    if let Some(next) = &b.next_scheduled {
        let _ = writeln!(out, "  next:      {next}");
    }
}

fn human_secs(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn render_embedded(out: &mut String, pg: &crate::control::PostgresReport) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "postgres {} ({}, {}) as {}",
        pg.version,
        pg.origin,
        pg.bin_dir.display(),
        pg.os_user.as_deref().unwrap_or("the daemon's user")
    );
    let _ = writeln!(
        out,
        "  state:     {}{} for {}",
        pg.state,
        pg.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        human_secs(pg.state_since_secs)
    );
    let _ = writeln!(
        out,
        "  restarts:  {}{}",
        pg.restarts,
        pg.last_exit
            .as_ref()
            .map(|e| format!(" (last exit: {e})"))
            .unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    use super::human_secs;

    #[test]
    fn uptimes_read_like_a_human_wrote_them() {
        assert_eq!(human_secs(5), "5s");
        assert_eq!(human_secs(125), "2m5s");
        assert_eq!(human_secs(7260), "2h1m");
        assert_eq!(human_secs(90000), "1d1h");
    }
}
