//! Standard streams on host file descriptors (the process's own stdio, or a
//! file or pipe an embedder passes), read and written without blocking a
//! thread, so that a guest waiting on one can be cancelled.
//!
//! wasmtime-wasi's `InputFile`, `OutputFile` and inherited stdout read and
//! write synchronously inside `poll`: a guest reading a stdin that stays
//! open, or writing into a pipe nobody reads, would hold its thread and
//! outlive its timeout. Here a pipe, FIFO, socket or terminal is registered
//! with tokio's reactor and waited on asynchronously; dropping the
//! invocation drops the wait.
//!
//! - `O_NONBLOCK` belongs to the open file description, which an fd shares
//!   with everyone else holding it (the shell's terminal, the parent's end of
//!   a pipe). So pipes, FIFOs and terminals are reopened through
//!   `/proc/self/fd` (a new description of the same pipe or device) and only
//!   that copy is made non-blocking. Sockets keep their flags and are read
//!   and written with `MSG_DONTWAIT`.
//! - Regular files, and devices the reactor cannot wait on (`/dev/null`,
//!   `/dev/zero`), are read and written inline: they never wait for another
//!   party. So is a pipe that cannot be reopened (no `/proc`): that one
//!   still blocks its thread.
//! - Input is read only when the guest asks for it (nothing is read ahead
//!   and lost when the invocation ends).

use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wasmtime_wasi::cli::{AsyncStdoutStream, IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Bytes one guest write may hand over at once (wasmtime-wasi's figure).
const WRITE_BUDGET: usize = 8192;
/// Most bytes one read takes from the host.
const READ_CHUNK: usize = 64 << 10;

/// A host file descriptor, set up for asynchronous use where that matters.
enum Fd {
    /// Waited on by the reactor; `socket`: read and written with
    /// `MSG_DONTWAIT` (its own flags untouched).
    Async { fd: AsyncFd<File>, socket: bool },
    /// Read and written inline.
    Inline(File),
}

impl Fd {
    fn open(fd: BorrowedFd<'_>, write: bool) -> io::Result<Fd> {
        let own = File::from(fd.try_clone_to_owned()?);
        let kind = own.metadata()?.file_type();
        if kind.is_socket() {
            return Ok(match register(own) {
                Ok(fd) => Fd::Async { fd, socket: true },
                Err(own) => Fd::Inline(own),
            });
        }
        if kind.is_fifo() || kind.is_char_device() {
            let reopened = std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(libc::O_NONBLOCK)
                .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            if let Ok(f) = reopened
                && let Ok(fd) = register(f)
            {
                return Ok(Fd::Async { fd, socket: false });
            }
        }
        Ok(Fd::Inline(own))
    }

    /// One read, without waiting when the reactor handles this fd
    /// (`WouldBlock` then).
    fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Fd::Inline(f) => (&*f).read(buf),
            Fd::Async { fd, socket: false } => fd.get_ref().read(buf),
            Fd::Async { fd, socket: true } => {
                // SAFETY: `buf` is valid for writes of `buf.len()` bytes, and
                // the descriptor stays open for the call (borrowed from `fd`).
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            }
        }
    }

    fn write_now(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Fd::Inline(f) => (&*f).write(buf),
            Fd::Async { fd, socket: false } => fd.get_ref().write(buf),
            Fd::Async { fd, socket: true } => {
                // SAFETY: `buf` is valid for reads of `buf.len()` bytes, and
                // the descriptor stays open for the call (borrowed from `fd`).
                let n = unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        buf.as_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            }
        }
    }

    /// Reads at least one byte (or the end, or an error), waiting for the
    /// reactor as needed.
    fn poll_read_some(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let Fd::Async { fd, .. } = self else {
            return Poll::Ready(self.read_now(buf));
        };
        loop {
            let mut guard = ready!(fd.poll_read_ready(cx))?;
            if let Ok(result) = guard.try_io(|_| self.read_now(buf)) {
                return Poll::Ready(result);
            }
        }
    }

    fn poll_write_some(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Fd::Async { fd, .. } = self else {
            return Poll::Ready(self.write_now(buf));
        };
        loop {
            let mut guard = ready!(fd.poll_write_ready(cx))?;
            if let Ok(result) = guard.try_io(|_| self.write_now(buf)) {
                return Poll::Ready(result);
            }
        }
    }
}

/// Registers `file` with the current runtime's reactor; gives it back if the
/// reactor cannot wait on it (a regular file, `/dev/null`).
fn register(file: File) -> Result<AsyncFd<File>, File> {
    // SAFETY: a `File` owns its descriptor: `as_raw_fd` returns that one
    // descriptor every time, and it stays open until the `File` is dropped,
    // which happens only when the `AsyncFd` (its owner) is dropped.
    unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().0)
}

/// A guest's stdin on a host descriptor.
pub(crate) struct HostStdin {
    fd: Arc<Fd>,
    tty: bool,
}

/// Stdin on `fd` (duplicated; the caller keeps its own).
pub(crate) fn stdin(fd: BorrowedFd<'_>) -> io::Result<HostStdin> {
    let tty = std::io::IsTerminal::is_terminal(&fd);
    Ok(HostStdin {
        fd: Arc::new(Fd::open(fd, false)?),
        tty,
    })
}

impl IsTerminal for HostStdin {
    fn is_terminal(&self) -> bool {
        self.tty
    }
}

impl StdinStream for HostStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(InputFd {
            fd: self.fd.clone(),
            buffered: None,
        })
    }

    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        Box::new(ReadFd(self.fd.clone()))
    }
}

/// The WASI input stream: reads when the guest asks (`ready` waits for
/// data and holds what it read until `read` takes it).
struct InputFd {
    fd: Arc<Fd>,
    buffered: Option<StreamResult<Bytes>>,
}

fn to_stream_result(r: io::Result<Bytes>) -> StreamResult<Bytes> {
    match r {
        Ok(b) if b.is_empty() => Err(StreamError::Closed),
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StreamError::Closed),
        Err(e) => Err(StreamError::LastOperationFailed(e.into())),
    }
}

fn read_bytes(
    size: usize,
    read: impl FnOnce(&mut [u8]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<Bytes>> {
    let mut buf = BytesMut::zeroed(size.min(READ_CHUNK));
    let n = ready!(read(&mut buf))?;
    buf.truncate(n);
    Poll::Ready(Ok(buf.freeze()))
}

impl InputStream for InputFd {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        match self.buffered.take() {
            Some(Ok(mut bytes)) => {
                let rest = bytes.split_off(bytes.len().min(size));
                if !rest.is_empty() {
                    self.buffered = Some(Ok(rest));
                }
                return Ok(bytes);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
        if size == 0 {
            return Ok(Bytes::new());
        }
        match read_bytes(size, |b| Poll::Ready(self.fd.read_now(b))) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(Bytes::new()),
            Poll::Ready(r) => to_stream_result(r),
            Poll::Pending => unreachable!("read_now does not wait"),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for InputFd {
    async fn ready(&mut self) {
        if self.buffered.is_some() || matches!(*self.fd, Fd::Inline(_)) {
            return;
        }
        let fd = self.fd.clone();
        let r =
            std::future::poll_fn(|cx| read_bytes(READ_CHUNK, |b| fd.poll_read_some(cx, b))).await;
        self.buffered = Some(to_stream_result(r));
    }
}

/// `AsyncRead` over the same descriptor (for interfaces that want one).
struct ReadFd(Arc<Fd>);

impl AsyncRead for ReadFd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = ready!(self.0.poll_read_some(cx, buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// A guest's stdout or stderr on a host descriptor.
pub(crate) struct HostOutput {
    stream: AsyncStdoutStream,
    tty: bool,
}

/// Output to `fd` (duplicated; the caller keeps its own).
pub(crate) fn output(fd: BorrowedFd<'_>) -> io::Result<HostOutput> {
    let tty = std::io::IsTerminal::is_terminal(&fd);
    let fd = Fd::open(fd, true)?;
    Ok(HostOutput {
        stream: AsyncStdoutStream::new(WRITE_BUDGET, WriteFd(fd)),
        tty,
    })
}

impl IsTerminal for HostOutput {
    fn is_terminal(&self) -> bool {
        self.tty
    }
}

impl StdoutStream for HostOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        self.stream.p2_stream()
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        self.stream.async_stream()
    }
}

/// `AsyncWrite` for wasmtime-wasi's writer task.
struct WriteFd(Fd);

impl AsyncWrite for WriteFd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_some(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
