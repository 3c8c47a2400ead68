//! The byte pipelines of a backup, run on a blocking thread:
//! `pg_dump` → zstd → (age) → SHA-256 → file, and back:
//! file → SHA-256 → (age) → zstd → `pg_restore` (listing or restoring).
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

/// Reports bytes processed so far (for a progress bar), or nothing.
pub struct Progress(Option<Box<dyn Fn(u64) + Send>>);

impl Progress {
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    pub fn new(report: impl Fn(u64) + Send + 'static) -> Self {
        Self(Some(Box::new(report)))
    }

    fn report(&self, bytes: u64) {
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
    to: &mut impl Write,
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

/// Reads the backup at `path`, decrypting with `identity` when given, and
/// feeds the decompressed dump to `tool` on its stdin. Returns the file's
/// hash and the tool's output once both the stream and the tool succeeded.
pub fn feed_tool(
    path: &Path,
    identity: Option<&Path>,
    mut tool: Command,
    progress: &Progress,
) -> Result<Checked, ReadError> {
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
    let mut zstd = zstd::Decoder::new(source)
        .map_err(|e| ReadError::Damaged(format!("not a zstd stream: {e}")))?;

    let program = if tool.get_args().any(|a| a == "--list") {
        "pg_restore --list"
    } else {
        "pg_restore"
    };
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
    let never = AtomicBool::new(false);
    let fed = copy(&mut zstd, &mut stdin, &never, progress);
    drop(stdin);
    let status = child.wait().map_err(|source| ReadError::Io {
        action: "wait for pg_restore reading",
        path: path.to_path_buf(),
        source,
    })?;
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    match fed {
        Ok(_) => {}
        // The tool stopped reading: `pg_restore --list` needs only the table
        // of contents at the start; a failing tool's own error says why.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        Err(err) => {
            let reason = if err.kind() == io::ErrorKind::UnexpectedEof {
                "the file is truncated".to_string()
            } else {
                err.to_string()
            };
            return Err(ReadError::Damaged(reason));
        }
    }
    if !status.success() {
        return Err(ReadError::Tool {
            program,
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    // Decompress whatever the tool did not read, then read past the end of
    // the zstd frame: the hash then covers the whole file, every zstd block
    // is checked, and age authenticates its last chunk.
    io::copy(&mut zstd, &mut io::sink()).map_err(|e| {
        ReadError::Damaged(if e.kind() == io::ErrorKind::UnexpectedEof {
            "the file is truncated".to_string()
        } else {
            e.to_string()
        })
    })?;
    let mut rest = zstd.finish();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| ReadError::Damaged(e.to_string()))?;
    let state = digest.0.lock().expect("digest lock is never poisoned");
    Ok(Checked {
        size: state.1,
        sha256: hex::encode(state.0.clone().finalize()),
        output: stdout,
    })
}
