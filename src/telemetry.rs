//! Metrics and resource sampling: the Prometheus recorder the whole process
//! reports into, and a sampler that measures the daemon and its postgres
//! tree every few seconds and keeps the last hour in memory.
//!
//! Called by `daemon` (installs, samples, renders) and `http::edge` (records
//! requests). Leaf otherwise: it never reaches into other subsystems; the
//! daemon sets their gauges before each render.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

/// Request latency buckets, in seconds: fine below 50 ms, where the API lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed: then ours is unused
            // and renders nothing, which a test would notice.
            let _ = metrics::set_global_recorder(recorder);
            metrics::gauge!("pagodirecto_build_info", "version" => crate::update::VERSION).set(1.0);
            handle
        })
        .clone()
}

/// The HTTP request series (`pagodirecto_http_requests_total` and
/// `…_request_duration_seconds` by route, method and status), with their
/// handles kept: a request then costs a lookup of its route, not label
/// strings and two registry lookups. Owned by the edge middleware; a series
/// is made on its first request, so [`install`] must come before serving.
#[derive(Default)]
pub struct RequestMetrics {
    by_route: std::sync::RwLock<std::collections::HashMap<String, Vec<RequestSeries>>>,
}

struct RequestSeries {
    method: &'static str,
    status: u16,
    count: metrics::Counter,
    seconds: metrics::Histogram,
}

impl RequestMetrics {
    /// Records one request. `route` must come from a bounded set (route
    /// templates); methods outside the standard ones are labelled `other`.
    pub fn record(&self, route: &str, method: &axum::http::Method, status: u16, seconds: f64) {
        let method = method_label(method);
        let record = |series: &RequestSeries| {
            series.count.increment(1);
            series.seconds.record(seconds);
        };
        let find = |all: &[RequestSeries]| {
            all.iter()
                .position(|s| s.method == method && s.status == status)
        };
        {
            let map = self
                .by_route
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(all) = map.get(route)
                && let Some(at) = find(all)
            {
                record(&all[at]);
                return;
            }
        }
        let mut map = self
            .by_route
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let all = map.entry(route.to_string()).or_default();
        let at = find(all).unwrap_or_else(|| {
            let labels = [
                ("route", route.to_string()),
                ("method", method.to_string()),
                ("status", status.to_string()),
            ];
            all.push(RequestSeries {
                method,
                status,
                count: metrics::counter!("pagodirecto_http_requests_total", &labels),
                seconds: metrics::histogram!("pagodirecto_http_request_duration_seconds", &labels),
            });
            all.len() - 1
        });
        record(&all[at]);
    }
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The budget resources are measured against, exported once at start.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Cores; 0 = no limit.
    pub cpu_cores: f64,
    pub postgres_memory_bytes: u64,
    pub postgres_cpu_cores: f64,
    pub disk_reserve_bytes: u64,
    pub max_connections: u32,
    /// `v2`, `v1` or `none`: whether the memory and CPU limits are enforced.
    pub cgroup_mode: &'static str,
}

/// `pagodirecto_limit_*` gauges, beside the usage gauges they bound.
#[allow(clippy::cast_precision_loss)] // byte counts far below 2^53
pub fn export_limits(limits: &Limits) {
    for (scope, memory, cpu) in [
        ("appliance", limits.memory_bytes, limits.cpu_cores),
        (
            "postgres",
            limits.postgres_memory_bytes,
            limits.postgres_cpu_cores,
        ),
    ] {
        metrics::gauge!("pagodirecto_limit_memory_bytes", "scope" => scope).set(memory as f64);
        metrics::gauge!("pagodirecto_limit_cpu_cores", "scope" => scope).set(cpu);
    }
    metrics::gauge!("pagodirecto_limit_disk_reserve_bytes").set(limits.disk_reserve_bytes as f64);
    metrics::gauge!("pagodirecto_limit_postgres_connections")
        .set(f64::from(limits.max_connections));
    metrics::gauge!("pagodirecto_cgroup_info", "mode" => limits.cgroup_mode).set(1.0);
}

/// PostgreSQL's cgroup usage, refreshed before each render.
#[allow(clippy::cast_precision_loss)]
pub fn export_cgroup(usage: &crate::cgroup::Usage) {
    metrics::gauge!("pagodirecto_postgres_cgroup_memory_bytes").set(usage.memory_bytes as f64);
    metrics::counter!("pagodirecto_postgres_oom_kills_total").absolute(usage.oom_kills);
    metrics::gauge!("pagodirecto_postgres_cgroup_memory_peak_bytes")
        .set(usage.memory_peak_bytes as f64);
}

/// One measurement of the appliance's resources.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    pub daemon_rss_bytes: u64,
    pub daemon_cpu_percent: f32,
    pub postgres_rss_bytes: u64,
    pub postgres_cpu_percent: f32,
    pub postgres_processes: u32,
    pub data_free_bytes: u64,
    pub backup_free_bytes: u64,
}

/// The last hour of samples, newest last.
#[derive(Debug, Clone, Default)]
pub struct Samples(Arc<Mutex<VecDeque<Sample>>>);

pub const INTERVAL: Duration = Duration::from_secs(5);
const KEEP: usize = 3600 / 5;

impl Samples {
    #[must_use]
    pub fn all(&self) -> Vec<Sample> {
        self.0
            .lock()
            .expect("samples lock is never poisoned")
            .iter()
            .copied()
            .collect()
    }

    #[must_use]
    pub fn latest(&self) -> Option<Sample> {
        self.0
            .lock()
            .expect("samples lock is never poisoned")
            .back()
            .copied()
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.0.lock().expect("samples lock is never poisoned");
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Drains the histograms' recorded values into their buckets every
/// [`INTERVAL`] until `cancel`. The recorder keeps every value until this
/// (or a render of `/metrics`) runs: without it, a daemon nobody scrapes
/// would hold one value per request for ever.
pub async fn upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = cancel.cancelled() => return,
        }
    }
}

/// Samples every [`INTERVAL`] until `cancel`. `postgres_pid` says where the
/// postmaster is now (it changes on restart); its children are summed in.
pub async fn sample(
    samples: Samples,
    postgres_pid: Arc<dyn Fn() -> Option<u32> + Send + Sync>,
    data_dir: PathBuf,
    backup_dir: PathBuf,
    cancel: CancellationToken,
) {
    let Ok(system) = System::new() else {
        tracing::warn!("cannot read process statistics here; resource usage is not sampled");
        return;
    };
    let system = Arc::new(Mutex::new(system));
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        let postmaster = postgres_pid();
        let (system, data_dir, backup_dir) = (system.clone(), data_dir.clone(), backup_dir.clone());
        // /proc reads are blocking file I/O: keep them off the event loop.
        let measured = tokio::task::spawn_blocking(move || {
            let mut system = system.lock().expect("system lock is never poisoned");
            measure(&mut system, postmaster, &data_dir, &backup_dir)
        })
        .await;
        if let Ok(sample) = measured {
            export(&sample);
            samples.push(sample);
        }
    }
}

fn measure(
    system: &mut System,
    postmaster: Option<u32>,
    data_dir: &std::path::Path,
    backup_dir: &std::path::Path,
) -> Sample {
    let kind = ProcessRefreshKind::nothing().with_memory().with_cpu();
    // All processes: the postgres children are found through their parent.
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    let me = Pid::from_u32(std::process::id());
    let daemon = system.process(me);
    let (mut pg_rss, mut pg_cpu, mut pg_count) = (0u64, 0f32, 0u32);
    if let Some(root) = postmaster.map(Pid::from_u32) {
        for process in system.processes().values() {
            if process.pid() == root || process.parent() == Some(root) {
                pg_rss += process.memory();
                pg_cpu += process.cpu_usage();
                pg_count += 1;
            }
        }
    }
    Sample {
        at: time::OffsetDateTime::now_utc().unix_timestamp(),
        daemon_rss_bytes: daemon.map_or(0, sysinfo::Process::memory),
        daemon_cpu_percent: daemon.map_or(0.0, sysinfo::Process::cpu_usage),
        postgres_rss_bytes: pg_rss,
        postgres_cpu_percent: pg_cpu,
        postgres_processes: pg_count,
        data_free_bytes: crate::fsutil::available_bytes(data_dir).unwrap_or(0),
        backup_free_bytes: crate::fsutil::available_bytes(backup_dir).unwrap_or(0),
    }
}

#[allow(clippy::cast_precision_loss)] // gauges are f64; byte counts this large lose nothing that matters
fn export(sample: &Sample) {
    metrics::gauge!("pagodirecto_process_resident_memory_bytes", "process" => "daemon")
        .set(sample.daemon_rss_bytes as f64);
    metrics::gauge!("pagodirecto_process_cpu_percent", "process" => "daemon")
        .set(f64::from(sample.daemon_cpu_percent));
    metrics::gauge!("pagodirecto_process_resident_memory_bytes", "process" => "postgres")
        .set(sample.postgres_rss_bytes as f64);
    metrics::gauge!("pagodirecto_process_cpu_percent", "process" => "postgres")
        .set(f64::from(sample.postgres_cpu_percent));
    metrics::gauge!("pagodirecto_disk_free_bytes", "dir" => "data")
        .set(sample.data_free_bytes as f64);
    metrics::gauge!("pagodirecto_disk_free_bytes", "dir" => "backups")
        .set(sample.backup_free_bytes as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_the_last_hour_only() {
        let samples = Samples::default();
        let sample = |at| Sample {
            at,
            daemon_rss_bytes: 1,
            daemon_cpu_percent: 0.0,
            postgres_rss_bytes: 0,
            postgres_cpu_percent: 0.0,
            postgres_processes: 0,
            data_free_bytes: 0,
            backup_free_bytes: 0,
        };
        for at in 0..1000 {
            samples.push(sample(at));
        }
        let all = samples.all();
        assert_eq!(all.len(), KEEP);
        assert_eq!(
            all.first().map(|s| s.at),
            Some(1000 - i64::try_from(KEEP).expect("small"))
        );
        assert_eq!(samples.latest().map(|s| s.at), Some(999));
    }

    #[test]
    fn our_own_process_is_measured() {
        let mut system = System::new().expect("sysinfo works on linux");
        let dir = std::env::temp_dir();
        let sample = measure(&mut system, None, &dir, &dir);
        assert!(sample.daemon_rss_bytes > 1024 * 1024, "{sample:?}");
        assert!(sample.data_free_bytes > 0);
    }

    #[test]
    fn requests_show_up_in_the_rendered_metrics() {
        let handle = install();
        let requests = RequestMetrics::default();
        for _ in 0..3 {
            requests.record("/api/v1/customers", &axum::http::Method::GET, 200, 0.004);
        }
        let made_up = axum::http::Method::from_bytes(b"BREW").expect("method");
        requests.record("/api/v1/customers", &made_up, 405, 0.001);
        let text = handle.render();
        assert!(text.contains("pagodirecto_http_requests_total{route=\"/api/v1/customers\",method=\"GET\",status=\"200\"} 3"), "{text}");
        assert!(
            text.contains("method=\"other\",status=\"405\"} 1"),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
        assert!(
            text.contains("pagodirecto_http_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("pagodirecto_build_info"), "{text}");
    }
}
