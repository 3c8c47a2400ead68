//! The web app's files leave plain-TCP connections by `sendfile(2)`, as
//! nginx sends them: the kernel hands the file's pages to the socket, and
//! the daemon never copies the bytes into socket buffers itself. On the
//! largest JS bundle that copy was most of the cost of a request (measured:
//! nginx serves it a third slower with `sendfile off`).
//!
//! Two halves, so that hyper, TLS and HTTP/2 need not know about it:
//! - [`share`] copies bytes once into a sealed in-memory file (`memfd`) and
//!   maps it read-only; the caller serves `Bytes` that point into that
//!   mapping. Called by `http::assets` for the embedded files, once.
//! - [`Stream`] wraps an accepted TCP stream. When hyper writes a slice that
//!   lies inside the mapping, the stream sends those bytes from the memfd at
//!   the same offset instead of copying them; everything else (headers,
//!   API bodies, TLS records) is written as before.
//!
//! Invariants:
//! - The bytes on the wire are exactly the bytes of the slices hyper passed,
//!   in order: the memfd is sealed (no write, grow or shrink) before it is
//!   mapped, so the file and the mapping can never differ.
//! - A write never reports more than the socket took; partial writes are
//!   reported as such and hyper continues with the rest.
//! - Without a memfd (an old kernel, a seccomp filter) nothing changes but
//!   the copy: [`share`] returns `None` and the caller keeps its own bytes.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmsg};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The shared bytes: a sealed memfd and its read-only mapping.
struct Region {
    fd: OwnedFd,
    mapped: &'static [u8],
}

impl Region {
    /// Where `slice` starts in the memfd, if it lies wholly in the mapping.
    fn offset_of(&self, slice: &[u8]) -> Option<usize> {
        let base = self.mapped.as_ptr() as usize;
        let start = (slice.as_ptr() as usize).checked_sub(base)?;
        (!slice.is_empty() && start + slice.len() <= self.mapped.len()).then_some(start)
    }
}

static REGION: OnceLock<Region> = OnceLock::new();

/// Copies `bytes` into a sealed memfd once per process and returns its
/// mapping, whose slices [`Stream`] sends with `sendfile`. `None` if a memfd
/// cannot be made here, or one was already shared (the caller then serves
/// its own bytes, copied per write as before).
pub fn share(bytes: &[u8]) -> Option<&'static [u8]> {
    if bytes.is_empty() || REGION.get().is_some() {
        return None;
    }
    match seal_and_map(bytes) {
        Ok(region) => {
            let mapped = region.mapped;
            REGION.set(region).ok()?;
            Some(mapped)
        }
        Err(err) => {
            tracing::debug!(%err, "web app files are copied per write: no sealed memfd");
            None
        }
    }
}

fn seal_and_map(bytes: &[u8]) -> nix::Result<Region> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use nix::sys::mman::{MapFlags, ProtFlags, mmap};

    let fd = memfd_create(
        c"pagodirecto-web-app",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut written = 0;
    while written < bytes.len() {
        written += nix::unistd::write(&fd, &bytes[written..])?;
    }
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    let len = std::num::NonZeroUsize::new(bytes.len()).ok_or(nix::Error::EINVAL)?;
    // Private and read-only: allowed on a write-sealed memfd by every kernel,
    // and never written, so it keeps sharing the memfd's pages.
    #[allow(unsafe_code)]
    // SAFETY: a fresh mapping of `len` bytes of a file we own and sealed
    // against any change of content or size; it is never unmapped (the
    // region lives as long as the process), so the slice stays valid.
    let mapped = unsafe {
        let ptr = mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_PRIVATE,
            &fd,
            0,
        )?;
        std::slice::from_raw_parts(ptr.as_ptr().cast::<u8>().cast_const(), bytes.len())
    };
    Ok(Region { fd, mapped })
}

/// An accepted TCP stream that sends slices of the shared region with
/// `sendfile` (see the module header).
pub struct Stream(TcpStream);

impl Stream {
    #[must_use]
    pub fn new(stream: TcpStream) -> Self {
        Self(stream)
    }

    /// One attempt without blocking: `bufs[..at]` (headers, corked with
    /// `MSG_MORE` so they leave with the file), then `bufs[at]`, which lies
    /// at `offset` in the shared region, from the memfd.
    fn try_write(
        &self,
        region: &Region,
        bufs: &[IoSlice<'_>],
        at: usize,
        offset: usize,
    ) -> io::Result<usize> {
        let socket = self.0.as_fd();
        let mut done = 0;
        if at > 0 {
            let before = &bufs[..at];
            done = sendmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                before,
                &[],
                MsgFlags::from_bits_retain(libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL,
                None,
            )?;
            if done < before.iter().map(|b| b.len()).sum() {
                return Ok(done);
            }
        }
        let mut from = i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        match nix::sys::sendfile::sendfile64(
            socket,
            region.fd.as_fd(),
            Some(&mut from),
            bufs[at].len(),
        ) {
            Ok(sent) => Ok(done + sent),
            // The headers went; the file waits for the next writable turn.
            Err(nix::Error::EAGAIN) if done > 0 => Ok(done),
            Err(err) => Err(err.into()),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let shared = REGION.get().and_then(|region| {
            bufs.iter()
                .enumerate()
                .find_map(|(at, buf)| Some((region, at, region.offset_of(buf)?)))
        });
        let Some((region, at, offset)) = shared else {
            return Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        };
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_io(Interest::WRITABLE, || {
                self.try_write(region, bufs, at, offset)
            }) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        // hyper keeps the body's `Bytes` (instead of copying them into its
        // own buffer) only for a vectored writer: that is what lets the
        // shared slices reach `poll_write_vectored` as themselves.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
