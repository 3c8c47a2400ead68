//! Watches the config file (or any files: the TLS certificate and key) for
//! changes and says when one settled.
//!
//! Watches the file's *parent directory* and filters by name: editors and
//! config-management tools replace files by rename, and a watch on the file
//! itself would follow the old inode and miss every later save. Bursts of
//! events (write, chmod, rename) are debounced into one notification. The
//! receiver re-loads and validates; this module only says "look again".

use std::path::Path;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Quiet time after the last event before a change is reported.
const SETTLE: Duration = Duration::from_millis(300);

/// Starts watching `file`; `()` arrives on `changed` after each settled burst
/// of changes. Keep the returned watcher alive as long as you want events.
pub fn watch(file: &Path, changed: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    watch_all(&[file], changed)
}

/// [`watch`] for several files: one notification per settled burst of
/// changes to any of them.
pub fn watch_all(
    files: &[&Path],
    changed: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let parent = |file: &Path| {
        file.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(ToOwned::to_owned))
        .collect();
    let mut dirs: Vec<std::path::PathBuf> = files.iter().map(|f| parent(f)).collect();
    dirs.sort();
    dirs.dedup();
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
        {
            let _ = raw_tx.send(());
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Debounce: wait until no event came for SETTLE.
            while tokio::time::timeout(SETTLE, raw_rx.recv())
                .await
                .is_ok_and(|e| e.is_some())
            {}
            if changed.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_save_by_rename_is_noticed_once_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pagodirecto.toml");
        std::fs::write(&file, "a = 1\n").expect("write");
        let (tx, mut rx) = mpsc::channel(8);
        let _watcher = watch(&file, tx).expect("watch");

        std::fs::write(dir.path().join("unrelated.txt"), "x").expect("write");
        assert!(
            tokio::time::timeout(Duration::from_millis(800), rx.recv())
                .await
                .is_err(),
            "other files are ignored"
        );

        // What editors do: write a temp file, rename it over the original.
        let tmp = dir.path().join(".pagodirecto.toml.swp");
        std::fs::write(&tmp, "a = 2\n").expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        std::fs::write(&file, "a = 3\n").expect("write again");
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("noticed"),
            Some(())
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(800), rx.recv())
                .await
                .is_err(),
            "one notification per burst"
        );
    }
}
