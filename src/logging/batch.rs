//! Log lines gathered in memory and written in batches, as nginx's
//! `access_log … buffer= flush=` does: with a line per request, one write
//! (and, through a writer thread, one wake-up) per line was a third of what
//! serving a small file cost.
//!
//! Invariants:
//! - Lines reach every sink in the order they were logged, whole.
//! - A batched line (target [`super::ACCESS_TARGET`], `INFO` or below) is
//!   written at most [`DELAY`] after it was logged; any other line is
//!   written before the call that logs it returns, with everything logged
//!   before it: the daemon's own events show at once, as before.
//! - Memory is bounded: past [`HIGH_WATER`] bytes the logging thread writes
//!   the batch itself (back-pressure, never a dropped line).
//! - Dropping the [`Batch`] writes what is left and stops the writer thread.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait for others to share its write.
pub const DELAY: Duration = Duration::from_millis(50);
/// Pending bytes beyond which the thread that logs writes the batch itself.
pub const HIGH_WATER: usize = 256 * 1024;

/// Where batches go (the daily log file).
pub type Sink = Box<dyn Write + Send>;

/// Owns the writer thread; hands out [`BatchWriter`]s for fmt layers.
pub struct Batch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held for the whole of a write: batches leave in the order they were
    /// taken from `pending`.
    sink: Mutex<Sink>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a log lock leaves plain bytes behind: keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Batch {
    /// Starts the writer thread for `sink`.
    pub fn start(sink: Sink) -> std::io::Result<Batch> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            sink: Mutex::new(sink),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })?;
        Ok(Batch {
            shared,
            thread: Some(thread),
        })
    }

    /// A `MakeWriter` whose lines go into this batch.
    #[must_use]
    pub fn writer(&self) -> BatchWriter {
        BatchWriter(self.shared.clone())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Lines logged after the thread saw `closed` (other threads still
        // running at exit).
        self.shared.write_pending();
    }
}

impl Shared {
    fn push(&self, line: &[u8], urgent: bool) {
        let mut pending = lock(&self.pending);
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        let full = pending.bytes.len() >= HIGH_WATER;
        drop(pending);
        if urgent || full {
            self.write_pending();
        } else if was_empty {
            self.wake.notify_one();
        }
    }

    /// Writes what is pending, in this thread.
    fn write_pending(&self) {
        let mut sink = lock(&self.sink);
        let bytes = std::mem::take(&mut lock(&self.pending).bytes);
        if bytes.is_empty() {
            return;
        }
        // Nowhere to report a failed log write; the next batch tries again.
        let _ = sink.write_all(&bytes).and_then(|()| sink.flush());
    }

    /// The writer thread: sleeps while nothing is pending, then lets a batch
    /// gather for [`DELAY`] and writes it.
    fn run(&self) {
        loop {
            let mut pending = lock(&self.pending);
            while pending.bytes.is_empty() && !pending.closed {
                pending = self
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let (pending, _) = self
                .wake
                .wait_timeout_while(pending, DELAY, |p| !p.closed)
                .unwrap_or_else(PoisonError::into_inner);
            let closed = pending.closed;
            drop(pending);
            self.write_pending();
            if closed {
                return;
            }
        }
    }
}

/// Given to a fmt layer: each event's line becomes one `push`.
#[derive(Clone)]
pub struct BatchWriter(Arc<Shared>);

/// The writer for one line.
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        // No metadata, so no telling it is an access line: at once.
        Line {
            shared: &self.0,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.0,
            // More severe levels compare lower.
            urgent: *meta.level() <= Level::WARN || meta.target() != super::ACCESS_TARGET,
        }
    }
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.push(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records what it was given and how many writes it took.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut inner = lock(&self.0);
            inner.0.extend_from_slice(buf);
            inner.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(batch: &Batch, text: &str, urgent: bool) {
        let writer = batch.writer();
        let mut line = Line {
            shared: &writer.0,
            urgent,
        };
        line.write_all(text.as_bytes()).expect("start");
    }

    #[test]
    fn lines_are_written_together_in_order_and_all_of_them_by_drop() {
        let sink = Recorder::default();
        let batch = Batch::start(Box::new(sink.clone())).expect("start");
        let lines: Vec<String> = (0..1000).map(|i| format!("line {i}\n")).collect();
        for text in &lines {
            line(&batch, text, false);
        }
        let expected = lines.concat();
        drop(batch);
        let (bytes, writes) = lock(&sink.0).clone();
        assert_eq!(String::from_utf8(bytes).expect("utf-8"), expected);
        assert!(writes < 100, "{writes} writes for 1000 lines");
    }

    #[test]
    fn a_warning_is_written_before_the_call_returns_with_what_came_before() {
        let sink = Recorder::default();
        let batch = Batch::start(Box::new(sink.clone())).expect("start");
        line(&batch, "info\n", false);
        line(&batch, "warn\n", true);
        assert_eq!(lock(&sink.0).0, b"info\nwarn\n");
        drop(batch);
    }

    /// Through a real fmt layer: an event that is not an access line is
    /// written before `info!` returns, with the access lines before it.
    #[test]
    fn only_access_lines_wait_for_a_batch() {
        let sink = Recorder::default();
        let batch = Batch::start(Box::new(sink.clone())).expect("start");
        let subscriber = tracing_subscriber::fmt()
            .with_writer(batch.writer())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: super::super::ACCESS_TARGET, "request one");
            tracing::info!("configuration reloaded");
            let text = String::from_utf8(lock(&sink.0).0.clone()).expect("utf-8");
            let (access, event) = (
                text.find("request one"),
                text.find("configuration reloaded"),
            );
            assert!(access.is_some() && access < event, "{text}");
        });
        drop(batch);
    }

    #[test]
    fn a_quiet_line_is_written_after_the_delay_without_a_drop() {
        let sink = Recorder::default();
        let batch = Batch::start(Box::new(sink.clone())).expect("start");
        line(&batch, "alone\n", false);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&sink.0).0.is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lock(&sink.0).0, b"alone\n");
        drop(batch);
    }

    #[test]
    fn past_the_high_water_mark_the_logging_thread_writes_itself() {
        let sink = Recorder::default();
        let batch = Batch::start(Box::new(sink.clone())).expect("start");
        let big = "x".repeat(HIGH_WATER);
        line(&batch, &big, false);
        assert_eq!(lock(&sink.0).0.len(), HIGH_WATER);
        drop(batch);
    }
}
