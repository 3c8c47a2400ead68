//! Logging: tracing to stderr (journald captures it under systemd) and to
//! daily files in a directory of their own, deleted after `keep_days`.
//!
//! Called once by `cli` (the daemon gets files, other commands stderr only).
//! Also reads the files back for `pagodirecto logs`.
//!
//! Invariants: the log directory holds only our files (tracing-appender's
//! retention deletes everything matching its prefix there), and the returned
//! [`Guard`] lives as long as `main`, or buffered lines are lost at exit.
//! The daemon's access lines (one per HTTP request, [`ACCESS_TARGET`]) go
//! to the files only (and to stderr when it is a terminal), written in
//! batches ([`batch`]), at most 50 ms late; every other line goes to both at
//! once.

use std::io::{self, BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::config::{LogConfig, LogFormat};

mod batch;

/// File names are `pagodirecto.YYYY-MM-DD.log` (dates in UTC).
pub const FILE_PREFIX: &str = "pagodirecto";
pub const FILE_SUFFIX: &str = "log";
/// The tracing target of lines that come from PostgreSQL.
pub const POSTGRES_TARGET: &str = "postgres";
/// The tracing target of the line the edge logs for every HTTP request:
/// the one kind of line that comes by the thousand, the only one written in
/// batches, and kept out of the journal.
pub const ACCESS_TARGET: &str = "access";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the log directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open log files in {path}")]
    Appender {
        path: PathBuf,
        #[source]
        source: tracing_appender::rolling::InitError,
    },
    #[error("cannot start the log writer thread")]
    Thread(#[source] io::Error),
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// Keeps the batch writer running (dropping it writes what is left) and
/// lets the level change at run time.
pub struct Guard {
    _batch: Option<batch::Batch>,
    filter: reload::Handle<EnvFilter, Registry>,
}

impl Guard {
    /// A handle that changes the level while the daemon runs.
    #[must_use]
    pub fn level(&self) -> Level {
        Level(self.filter.clone())
    }
}

/// Changes `[logging] level` at run time (a config reload).
#[derive(Clone)]
pub struct Level(reload::Handle<EnvFilter, Registry>);

impl Level {
    /// Applies a level already validated by config.
    pub fn set(&self, level: &str) {
        if let Ok(filter) = EnvFilter::try_new(level) {
            let _ = self.0.reload(filter);
        }
    }
}

type BoxedLayer = Box<
    dyn Layer<tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>>
        + Send
        + Sync,
>;

/// Installs the global subscriber. `files`: the directory for the daily
/// files, or `None` for stderr only (CLI commands other than `run`).
pub fn init(cfg: &LogConfig, files: Option<&Path>) -> Result<Guard, Error> {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let stderr_is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut layers: Vec<BoxedLayer> = Vec::with_capacity(2);
    let mut guard = None;
    if let Some(dir) = files {
        std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(FILE_PREFIX)
            .filename_suffix(FILE_SUFFIX)
            .max_log_files(usize::try_from(cfg.keep_days).unwrap_or(usize::MAX))
            .build(dir)
            .map_err(|source| Error::Appender {
                path: dir.to_path_buf(),
                source,
            })?;
        // Every line goes to the file (access lines in batches).
        let writer = batch::Batch::start(Box::new(appender)).map_err(Error::Thread)?;
        layers.push(format_layer(cfg.format, writer.writer(), false));
        guard = Some(writer);
        if stderr_is_tty {
            // A terminal shows everything, in colour.
            layers.push(format_layer(cfg.format, std::io::stderr, true));
        } else {
            // The journal gets the daemon's events but not a line per
            // request: those would double what a request writes, and
            // journald's rate limit would drop the events among them.
            layers.push(Box::new(
                format_layer(cfg.format, std::io::stderr, false).with_filter(
                    tracing_subscriber::filter::filter_fn(|meta| meta.target() != ACCESS_TARGET),
                ),
            ));
        }
    } else {
        layers.push(format_layer(cfg.format, std::io::stderr, stderr_is_tty));
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init()
        .map_err(|_| Error::AlreadyInstalled)?;
    Ok(Guard {
        _batch: guard,
        filter: handle,
    })
}

fn format_layer<W>(format: LogFormat, writer: W, ansi: bool) -> BoxedLayer
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => Box::new(fmt::layer().with_writer(writer).with_ansi(ansi)),
        LogFormat::Json => Box::new(
            fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(writer),
        ),
    }
}

/// Our log files in `dir`, oldest first (the date in the name sorts them).
pub fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("{FILE_PREFIX}.")) && n.ends_with(&format!(".{FILE_SUFFIX}"))
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Which lines `pagodirecto logs --service` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    App,
    Postgres,
}

/// Whether `line` (text or JSON format) came from `service`.
#[must_use]
pub fn line_is_from(line: &str, service: Service) -> bool {
    let from_postgres = if line.trim_start().starts_with('{') {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .is_some_and(|v| v.get("target").and_then(|t| t.as_str()) == Some(POSTGRES_TARGET))
    } else {
        // Text: "2026-11-25T20:11:39.123Z  INFO postgres: [123] LOG: …"
        line.split_whitespace().nth(2) == Some("postgres:")
    };
    from_postgres == (service == Service::Postgres)
}

/// The last `n` lines across `files` that pass `keep`.
pub fn tail(files: &[PathBuf], n: usize, keep: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
    let mut out = std::collections::VecDeque::with_capacity(n.min(10_000));
    for file in files.iter().rev() {
        let text = std::fs::read_to_string(file)?;
        let mut lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
        while out.len() < n {
            match lines.pop() {
                Some(line) => out.push_front(line.to_string()),
                None => break,
            }
        }
        if out.len() >= n {
            break;
        }
    }
    Ok(out.into())
}

/// Prints lines appended to the newest file in `dir` as they arrive,
/// switching to the next file when the day rolls over. Runs until killed.
pub fn follow(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
    mut print: impl FnMut(&str),
) -> io::Result<()> {
    let mut current: Option<(PathBuf, io::BufReader<std::fs::File>)> = None;
    loop {
        let newest = files(dir)?.pop();
        if let Some(newest) = newest
            && current.as_ref().is_none_or(|(path, _)| *path != newest)
        {
            let mut file = std::fs::File::open(&newest)?;
            if current.is_none() {
                file.seek(io::SeekFrom::End(0))?;
            }
            current = Some((newest, io::BufReader::new(file)));
        }
        if let Some((_, reader)) = current.as_mut() {
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                if line.ends_with('\n') {
                    let text = line.trim_end();
                    if keep(text) {
                        print(text);
                    }
                    line.clear();
                } else {
                    // A partial line: wait for the writer to finish it.
                    let back = i64::try_from(line.len()).unwrap_or(0);
                    reader.seek_relative(-back)?;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_told_apart_by_target_in_both_formats() {
        let pg_text = "2026-11-25T20:11:39.123Z  INFO postgres: [123] LOG:  ready";
        let app_text = "2026-11-25T20:11:39.123Z  INFO pagodirecto::daemon: ready";
        let pg_json =
            r#"{"timestamp":"x","level":"INFO","fields":{"message":"m"},"target":"postgres"}"#;
        let app_json = r#"{"timestamp":"x","level":"INFO","fields":{"message":"m"},"target":"pagodirecto::daemon"}"#;
        for (line, pg) in [
            (pg_text, true),
            (app_text, false),
            (pg_json, true),
            (app_json, false),
        ] {
            assert_eq!(line_is_from(line, Service::Postgres), pg, "{line}");
            assert_eq!(line_is_from(line, Service::App), !pg, "{line}");
        }
    }

    #[test]
    fn tail_reads_back_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pagodirecto.2026-11-24.log"), "a\nb\nc\n").expect("write");
        std::fs::write(dir.path().join("pagodirecto.2026-11-25.log"), "d\ne\n").expect("write");
        std::fs::write(dir.path().join("other.txt"), "zzz\n").expect("write");
        let files = files(dir.path()).expect("files");
        assert_eq!(files.len(), 2);
        assert_eq!(tail(&files, 3, |_| true).expect("tail"), ["c", "d", "e"]);
        assert_eq!(
            tail(&files, 10, |l| l != "d").expect("tail"),
            ["a", "b", "c", "e"]
        );
    }
}
