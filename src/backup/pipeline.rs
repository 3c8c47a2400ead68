//! The byte pipelines of a backup, run on a blocking thread:
//! `pg_dump` → zstd → (age) → SHA-256 → file, and back:
//! file → SHA-256 → (age) → zstd → `pg_restore` (listing or restoring), or
//! → a decompressed copy on disk that a parallel `pg_restore -j` can seek in.
//!
//! Streaming end to end: memory use does not grow with the database.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::Error;

/// Reports bytes processed so far (for a progress bar), or nothing. A
/// clone reports to the same place (a restore's steps each count theirs).
#[derive(Clone)]
pub struct Progress(Option<std::sync::Arc<dyn Fn(u64) + Send + Sync>>);

impl Progress {
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    pub fn new(report: impl Fn(u64) + Send + Sync + 'static) -> Self {
        Self(Some(std::sync::Arc::new(report)))
    }

    #[must_use]
    pub fn is_wanted(&self) -> bool {
        self.0.is_some()
    }

    pub fn report(&self, bytes: u64) {
        if let Some(report) = &self.0 {
            report(bytes);
        }
    }
}

/// What was written: the file's size and SHA-256.
#[derive(Debug)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

/// What reading a backup back found.
#[derive(Debug)]
pub struct Checked {
    pub size: u64,
    pub sha256: String,
    /// The tool's standard output (`pg_restore --list` prints the TOC).
    pub output: String,
}

/// Failures of reading a backup, before we know which backup it was.
#[derive(Debug)]
pub enum ReadError {
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Damaged(String),
    Key {
        identity: PathBuf,
        reason: String,
    },
    Tool {
        program: &'static str,
        status: String,
        stderr: String,
    },
    /// Writing the decompressed copy would have crossed the disk reserve.
    NoSpace {
        written: u64,
        free: u64,
    },
}

impl ReadError {
    #[must_use]
    pub fn for_backup(self, name: &str) -> Error {
        match self {
            Self::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path,
                source,
            },
            Self::Damaged(reason) => Error::Corrupt {
                name: name.to_string(),
                reason,
            },
            Self::Key { identity, reason } => Error::WrongKey {
                name: name.to_string(),
                identity,
                reason,
            },
            Self::Tool {
                program,
                status,
                stderr,
            } => Error::Tool {
                program,
                status,
                stderr,
            },
            Self::NoSpace { written, free } => Error::Io {
                action: "write the decompressed copy of",
                path: PathBuf::from(name),
                source: io::Error::other(format!(
                    "the disk reserve would be crossed after {} ({} free)",
                    bytesize::ByteSize(written),
                    bytesize::ByteSize(free)
                )),
            },
        }
    }
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Clone, Default)]
struct Digest(Arc<Mutex<(Sha256, u64)>>);

struct HashReader<R> {
    inner: R,
    digest: Digest,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.digest.0.lock().expect("digest lock is never poisoned");
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        Ok(n)
    }
}

/// Copies until EOF, checking `abort` between chunks.
fn copy(
    from: &mut impl Read,
    to: &mut (impl Write + ?Sized),
    abort: &AtomicBool,
    progress: &Progress,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "aborted"));
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
        progress.report(total);
    }
}

fn collect(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_string(&mut text);
        }
        text
    })
}

/// Runs `dump` and writes its output, compressed (and encrypted when there
/// are recipients), to `partial`, which it creates (0600) and fsyncs.
pub fn dump_to_file(
    mut dump: Command,
    partial: &Path,
    recipients: &[String],
    level: i32,
    abort: &AtomicBool,
    progress: &Progress,
) -> Result<Written, Error> {
    let io_err = |action: &'static str| {
        let path = partial.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    dump.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = dump.spawn().map_err(|source| Error::Io {
        action: "run pg_dump for",
        path: partial.to_path_buf(),
        source,
    })?;
    let stderr = collect(child.stderr.take());
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(io_err("create"))?;
    let sink = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        size: 0,
    };

    let written = (|| -> io::Result<HashWriter<BufWriter<File>>> {
        if recipients.is_empty() {
            let mut zstd = zstd::Encoder::new(sink, level)?;
            zstd.multithread(2)?;
            copy(&mut stdout, &mut zstd, abort, progress)?;
            zstd.finish()
        } else {
            let parsed: Vec<age::x25519::Recipient> = recipients
                .iter()
                .map(|r| {
                    r.parse()
                        .map_err(|e| io::Error::other(format!("bad age recipient {r}: {e}")))
                })
                .collect::<io::Result<_>>()?;
            let encryptor =
                age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| io::Error::other(format!("age: {e}")))?;
            let encrypted = encryptor.wrap_output(sink)?;
            let mut zstd = zstd::Encoder::new(encrypted, level)?;
            zstd.multithread(2)?;
            copy(&mut stdout, &mut zstd, abort, progress)?;
            zstd.finish()?.finish()
        }
    })();
    let mut sink = match written {
        Ok(sink) => sink,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            if err.kind() == io::ErrorKind::Interrupted {
                return Err(Error::Aborted);
            }
            return Err(Error::Io {
                action: "write",
                path: partial.to_path_buf(),
                source: err,
            });
        }
    };
    sink.flush().map_err(io_err("write"))?;
    let status = child.wait().map_err(io_err("wait for pg_dump writing"))?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Tool {
            program: "pg_dump",
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    let HashWriter {
        inner,
        hasher,
        size,
    } = sink;
    let file = inner.into_inner().map_err(|e| Error::Io {
        action: "write",
        path: partial.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err("fsync"))?;
    Ok(Written {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// A backup file opened for reading: hashed as it is read, decrypted when
/// `identity` is given, decompressed.
struct Opened {
    zstd: zstd::Decoder<'static, BufReader<Box<dyn Read + Send>>>,
    digest: Digest,
}

fn open(path: &Path, identity: Option<&Path>) -> Result<Opened, ReadError> {
    let file = File::open(path).map_err(|source| ReadError::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let digest = Digest::default();
    let hashing = HashReader {
        inner: BufReader::with_capacity(1 << 20, file),
        digest: digest.clone(),
    };
    let source: Box<dyn Read + Send> = match identity {
        None => Box::new(hashing),
        Some(identity_path) => {
            let key_err = |reason: String| ReadError::Key {
                identity: identity_path.to_path_buf(),
                reason,
            };
            let identities = age::IdentityFile::from_file(identity_path.display().to_string())
                .map_err(|e| key_err(format!("cannot read it: {e}")))?
                .into_identities()
                .map_err(|e| key_err(e.to_string()))?;
            let decryptor = age::Decryptor::new(BufReader::new(hashing))
                .map_err(|e| ReadError::Damaged(format!("not an age file: {e}")))?;
            let stream = decryptor
                .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
                .map_err(|e| key_err(e.to_string()))?;
            Box::new(stream)
        }
    };
    let zstd = zstd::Decoder::new(source)
        .map_err(|e| ReadError::Damaged(format!("not a zstd stream: {e}")))?;
    Ok(Opened { zstd, digest })
}

fn damaged(err: &io::Error) -> ReadError {
    ReadError::Damaged(if err.kind() == io::ErrorKind::UnexpectedEof {
        "the file is truncated".to_string()
    } else {
        err.to_string()
    })
}

impl Opened {
    /// Decompresses whatever was not read yet, then reads past the end of
    /// the zstd frame: the hash then covers the whole file, every zstd block
    /// is checked, and age authenticates its last chunk.
    fn finish(mut self) -> Result<(u64, String), ReadError> {
        io::copy(&mut self.zstd, &mut io::sink()).map_err(|e| damaged(&e))?;
        let mut rest = self.zstd.finish();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| ReadError::Damaged(e.to_string()))?;
        let state = self.digest.0.lock().expect("digest lock is never poisoned");
        Ok((state.1, hex::encode(state.0.clone().finalize())))
    }
}

/// How a tool run by [`run_tool`] went.
struct ToolRun {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    /// What feeding its stdin returned.
    fed: io::Result<u64>,
}

/// Runs `tool` reading from a pipe, which `feed` writes to, and returns its
/// status and output once it exited.
fn run_tool(
    mut tool: Command,
    path: &Path,
    feed: impl FnOnce(&mut dyn Write) -> io::Result<u64>,
) -> Result<ToolRun, ReadError> {
    tool.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = tool.spawn().map_err(|source| ReadError::Io {
        action: "run pg_restore for",
        path: path.to_path_buf(),
        source,
    })?;
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = feed(&mut stdin);
    drop(stdin);
    let status = child.wait().map_err(|source| ReadError::Io {
        action: "wait for pg_restore reading",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(ToolRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        fed: written,
    })
}

fn program(tool: &Command) -> &'static str {
    if tool.get_args().any(|a| a == "--list") {
        "pg_restore --list"
    } else {
        "pg_restore"
    }
}

/// Reads the backup at `path`, decrypting with `identity` when given, and
/// feeds the decompressed dump to `tool` on its stdin. Returns the file's
/// hash and the tool's output once both the stream and the tool succeeded.
pub fn feed_tool(
    path: &Path,
    identity: Option<&Path>,
    tool: Command,
    progress: &Progress,
) -> Result<Checked, ReadError> {
    let mut opened = open(path, identity)?;
    let program = program(&tool);
    let never = AtomicBool::new(false);
    let ToolRun {
        status,
        stdout,
        stderr,
        fed,
    } = run_tool(tool, path, |stdin| {
        copy(&mut opened.zstd, stdin, &never, progress)
    })?;
    match fed {
        Ok(_) => {}
        // The tool stopped reading: `pg_restore --list` needs only the table
        // of contents at the start; a failing tool's own error says why.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        Err(err) => return Err(damaged(&err)),
    }
    if !status.success() {
        return Err(ReadError::Tool {
            program,
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    let (size, sha256) = opened.finish()?;
    Ok(Checked {
        size,
        sha256,
        output: stdout,
    })
}

/// Stops writing before the file system's free space drops below `reserve`.
struct ReserveWriter<W> {
    inner: W,
    dir: PathBuf,
    reserve: u64,
    written: u64,
    checked_at: u64,
    /// Set when writing failed (rather than reading the backup).
    failed: bool,
}

/// How often (in bytes written) [`ReserveWriter`] looks at the free space.
const RESERVE_CHECK_EVERY: u64 = 32 << 20;

impl<W: Write> Write for ReserveWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written >= self.checked_at {
            let free = crate::fsutil::available_bytes(&self.dir)?;
            if free < self.reserve.saturating_add(RESERVE_CHECK_EVERY) {
                self.failed = true;
                return Err(io::Error::other(NoSpace {
                    written: self.written,
                    free,
                }));
            }
            self.checked_at = self.written + RESERVE_CHECK_EVERY;
        }
        let n = self.inner.write(buf).inspect_err(|_| self.failed = true)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

#[derive(Debug)]
struct NoSpace {
    written: u64,
    free: u64,
}

impl std::fmt::Display for NoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the disk reserve would be crossed")
    }
}

impl std::error::Error for NoSpace {}

/// Reads the backup at `path` (decrypting with `identity` when given) and
/// writes the decompressed dump to `out` (created 0600), stopping before
/// free space in its directory drops below `reserve`; then lists it with
/// `list` (`pg_restore --list`, which gets the file's path appended). Returns
/// the backup file's hash and the listing. On any failure `out` is removed.
pub fn decompress_to_file(
    path: &Path,
    identity: Option<&Path>,
    out: &Path,
    reserve: u64,
    mut list: Command,
    progress: &Progress,
) -> Result<Checked, ReadError> {
    let result = (|| {
        let mut opened = open(path, identity)?;
        let io_err = |action: &'static str| {
            move |source| ReadError::Io {
                action,
                path: out.to_path_buf(),
                source,
            }
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(io_err("create"))?;
        let mut sink = ReserveWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            dir: out.parent().unwrap_or(Path::new("/")).to_path_buf(),
            reserve,
            written: 0,
            checked_at: 0,
            failed: false,
        };
        let never = AtomicBool::new(false);
        let copied = copy(&mut opened.zstd, &mut sink, &never, progress).and_then(|_| sink.flush());
        if let Err(err) = copied {
            if let Some(no_space) = err.get_ref().and_then(|e| e.downcast_ref::<NoSpace>()) {
                return Err(ReadError::NoSpace {
                    written: no_space.written,
                    free: no_space.free,
                });
            }
            // A read error is the backup's; a write error is the disk's.
            return Err(if sink.failed {
                io_err("write")(err)
            } else {
                damaged(&err)
            });
        }
        drop(sink);
        let (size, sha256) = opened.finish()?;
        let program = program(&list);
        list.arg(out);
        let ToolRun {
            status,
            stdout,
            stderr,
            ..
        } = run_tool(list, path, |_| Ok(0))?;
        if !status.success() {
            return Err(ReadError::Tool {
                program,
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(Checked {
            size,
            sha256,
            output: stdout,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed(dir: &Path, payload: &[u8]) -> PathBuf {
        let path = dir.join("b.pgdump.zst");
        std::fs::write(&path, zstd::encode_all(payload, 3).expect("zstd")).expect("write");
        path
    }

    #[test]
    fn a_decompressed_copy_is_written_hashed_and_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let payload = b"PGDMP pretend dump".repeat(1000);
        let path = compressed(dir.path(), &payload);
        let out = dir.path().join("copy");
        let mut list = Command::new("echo");
        list.arg("listed");
        let checked =
            decompress_to_file(&path, None, &out, 0, list, &Progress::none()).expect("copy");
        assert_eq!(std::fs::read(&out).expect("copy"), payload);
        let file = std::fs::read(&path).expect("backup");
        assert_eq!(checked.size, file.len() as u64);
        assert_eq!(checked.sha256, hex::encode(Sha256::digest(&file)));
        assert!(checked.output.starts_with("listed "), "{}", checked.output);
    }

    #[test]
    fn a_copy_that_would_cross_the_reserve_stops_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = compressed(dir.path(), b"data");
        let out = dir.path().join("copy");
        let err = decompress_to_file(
            &path,
            None,
            &out,
            u64::MAX,
            Command::new("true"),
            &Progress::none(),
        )
        .expect_err("no room");
        assert!(matches!(err, ReadError::NoSpace { .. }), "{err:?}");
        assert!(!out.exists());
    }

    #[test]
    fn a_truncated_backup_leaves_no_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = compressed(dir.path(), &b"0123456789".repeat(100_000));
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
        let out = dir.path().join("copy");
        let err = decompress_to_file(
            &path,
            None,
            &out,
            0,
            Command::new("true"),
            &Progress::none(),
        )
        .expect_err("truncated");
        assert!(
            matches!(&err, ReadError::Damaged(reason) if reason.contains("truncated")),
            "{err:?}"
        );
        assert!(!out.exists());
    }
}
