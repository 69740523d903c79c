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
//!   `/proc/self/fd` (a new description of the same pipe or device, in the
//!   direction the caller's own allows) and only that copy is made
//!   non-blocking. Sockets keep their flags and are read and written with
//!   `MSG_DONTWAIT`.
//! - A pipe, FIFO or terminal that cannot be reopened (no `/proc`, another
//!   user's, a pty master) keeps the caller's description: each read or
//!   write is checked with `poll(2)` first and waiting is a short timer, so
//!   it does not block a thread either.
//! - Regular files, and devices that never wait for another party
//!   (`/dev/null`, `/dev/zero`, `/dev/full`), are read and written inline.
//! - Input is read only when the guest reads, and only what it asks for
//!   (waiting for input reads nothing), so nothing is read ahead and lost
//!   when the invocation ends.

use bytes::{Buf, Bytes, BytesMut};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
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
    /// A pipe, FIFO or terminal that could not be reopened (no `/proc`, as
    /// in a sandbox; another user's; a FIFO without its other end yet; a
    /// pty master, which a reopen would replace by a new pty): its
    /// description is the caller's, so its flags stay as they are. Each
    /// read or write is first checked with `poll(2)` without waiting, a
    /// write takes at most `PIPE_BUF` bytes (which a pipe with room takes
    /// whole), and waiting is a timer ([`POLL_RETRY`]): it never blocks a
    /// thread, so a timeout still ends a guest stuck on it.
    Polled(File),
    /// Read and written inline: regular files and devices that never wait
    /// for another party (`/dev/null`, `/dev/full`).
    Inline(File),
}

/// How often a [`Fd::Polled`] descriptor that was not ready is tried again.
const POLL_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

impl Fd {
    fn open(fd: BorrowedFd<'_>, write: bool) -> io::Result<Fd> {
        let own = File::from(fd.try_clone_to_owned()?);
        let kind = own.metadata()?.file_type();
        if kind.is_socket() {
            return Ok(match register(own) {
                Ok(fd) => Fd::Async { fd, socket: true },
                Err(own) => Fd::Polled(own),
            });
        }
        let tty = kind.is_char_device() && std::io::IsTerminal::is_terminal(&own);
        if !kind.is_fifo() && !tty {
            return Ok(Fd::Inline(own));
        }
        // Reopened only for the direction the caller's description allows
        // (a pipe's read end given as stdout must not become its write
        // end), and never a pty master (`/dev/ptmx`: opening it makes a new
        // pty).
        let mode = rustix::fs::fcntl_getfl(&own)? & rustix::fs::OFlags::RWMODE;
        let allowed = if write {
            mode != rustix::fs::OFlags::RDONLY
        } else {
            mode != rustix::fs::OFlags::WRONLY
        };
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // (readlinkat, as the sandbox's system-call filter allows.)
        let ptmx = tty
            && rustix::fs::readlinkat(rustix::fs::CWD, proc_path.as_str(), Vec::new())
                .is_ok_and(|target| target.as_bytes().ends_with(b"/ptmx"));
        if allowed && !ptmx {
            let reopened = std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .custom_flags(libc::O_NONBLOCK)
                .open(&proc_path);
            if let Ok(f) = reopened
                && let Ok(fd) = register(f)
            {
                return Ok(Fd::Async { fd, socket: false });
            }
        }
        Ok(Fd::Polled(own))
    }

    /// One read, without waiting when the reactor handles this fd
    /// (`WouldBlock` then).
    fn read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Fd::Inline(f) => (&*f).read(buf),
            Fd::Polled(f) => {
                if !poll_now(f, rustix::event::PollFlags::IN)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                (&*f).read(buf)
            }
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
            Fd::Polled(f) => {
                if !poll_now(f, rustix::event::PollFlags::OUT)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                (&*f).write(&buf[..buf.len().min(libc::PIPE_BUF)])
            }
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

    /// Whether a read would not wait (data, the end, or an error), without
    /// reading anything.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Fd::Inline(_) => Poll::Ready(Ok(())),
            Fd::Polled(f) => match poll_now(f, rustix::event::PollFlags::IN) {
                Ok(false) => retry_later(cx),
                Ok(true) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(e)),
            },
            Fd::Async { fd, .. } => loop {
                let mut guard = ready!(fd.poll_read_ready(cx))?;
                // Readiness is edge-triggered and may be stale: ask the
                // kernel, and wait again (clearing it) when nothing is there.
                if poll_now(fd.get_ref(), rustix::event::PollFlags::IN)? {
                    return Poll::Ready(Ok(()));
                }
                guard.clear_ready();
            },
        }
    }

    /// Reads at least one byte (or the end, or an error), waiting for the
    /// reactor (or the retry timer) as needed.
    fn poll_read_some(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let Fd::Async { fd, .. } = self else {
            return match self.read_now(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => retry_later(cx),
                r => Poll::Ready(r),
            };
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
            return match self.write_now(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => retry_later(cx),
                r => Poll::Ready(r),
            };
        };
        loop {
            let mut guard = ready!(fd.poll_write_ready(cx))?;
            if let Ok(result) = guard.try_io(|_| self.write_now(buf)) {
                return Poll::Ready(result);
            }
        }
    }
}

/// `poll(2)` of one descriptor without waiting: whether any of `events`
/// (or an error or hang-up, which a read or write then reports) is there.
fn poll_now(fd: &File, events: rustix::event::PollFlags) -> io::Result<bool> {
    let mut fds = [rustix::event::PollFd::new(fd, events)];
    loop {
        match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(_) => return Ok(!fds[0].revents().is_empty()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Pending, woken after [`POLL_RETRY`] (a descriptor the reactor cannot
/// wait on is tried again then).
fn retry_later<T>(cx: &mut Context<'_>) -> Poll<T> {
    let waker = cx.waker().clone();
    tokio::spawn(async move {
        tokio::time::sleep(POLL_RETRY).await;
        waker.wake();
    });
    Poll::Pending
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
        })
    }

    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        Box::new(ReadFd(self.fd.clone()))
    }
}

/// The WASI input stream: reads only when the guest reads, and only as
/// much as it asks for (`ready` waits until a read would not wait, without
/// reading), so nothing is taken from a shared pipe and lost at the end.
struct InputFd {
    fd: Arc<Fd>,
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
        if size == 0 {
            return Ok(Bytes::new());
        }
        match read_bytes(size, |b| Poll::Ready(self.fd.read_now(b))) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(Bytes::new()),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => Ok(Bytes::new()),
            Poll::Ready(r) => to_stream_result(r),
            Poll::Pending => unreachable!("read_now does not wait"),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for InputFd {
    async fn ready(&mut self) {
        let fd = self.fd.clone();
        // An error is not kept here: the read that follows reports it.
        let _ = std::future::poll_fn(|cx| fd.poll_readable(cx)).await;
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
///
/// Written inline: a guest's write goes to the descriptor in the call that
/// makes it, and only what the descriptor does not take at once (a full
/// pipe) is kept, to be written when the reactor says it can be; until
/// then `check_write` gives no permit and `ready` waits. (wasmtime-wasi's
/// `AsyncStdoutStream` hands every write to a task of its own and waits for
/// it: a round trip through the scheduler, and two reads of the CPU clock,
/// per `printf` that reaches the descriptor.) Every stream made from one
/// output shares its queue, so writes leave in the order they were made.
pub(crate) struct HostOutput {
    shared: Arc<OutputShared>,
    tty: bool,
}

struct OutputShared {
    fd: Fd,
    state: std::sync::Mutex<OutputState>,
}

#[derive(Default)]
struct OutputState {
    /// Written by the guest, not yet taken by the descriptor.
    queued: BytesMut,
    /// The error that ended the stream (reported to every later call).
    failed: Option<Failed>,
}

#[derive(Clone, Copy)]
enum Failed {
    /// The reading end is gone.
    Closed,
    /// Any other error, with its OS error number where it had one (which
    /// is what the guest's errno is made from: ENOSPC stays ENOSPC).
    Error(io::ErrorKind, Option<i32>),
}

impl Failed {
    fn to_io(self) -> io::Error {
        match self {
            Failed::Closed => io::ErrorKind::BrokenPipe.into(),
            Failed::Error(_, Some(code)) => io::Error::from_raw_os_error(code),
            Failed::Error(kind, None) => kind.into(),
        }
    }
}

impl OutputShared {
    fn state(&self) -> std::sync::MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OutputState {
    fn check(&self) -> StreamResult<()> {
        match self.failed {
            None => Ok(()),
            Some(Failed::Closed) => Err(StreamError::Closed),
            Some(failed) => Err(StreamError::LastOperationFailed(failed.to_io().into())),
        }
    }

    /// Writes what is queued with `write` (see [`write_out`]). Ready when
    /// the queue is empty or the stream has failed (the queue then dropped).
    fn drain(&mut self, write: impl FnMut(&[u8]) -> Poll<io::Result<usize>>) -> Poll<()> {
        let done = write_out(&mut self.queued, &mut self.failed, write);
        if self.failed.is_some() {
            self.queued.clear();
        }
        done
    }
}

/// Writes the front of `buf` with `write` until none is left, the
/// descriptor would block (`Pending`), or a write fails: the failure is
/// recorded in `failed` (a write of nothing, or to a pipe without a
/// reader, as the end of the stream).
fn write_out(
    buf: &mut impl Buf,
    failed: &mut Option<Failed>,
    mut write: impl FnMut(&[u8]) -> Poll<io::Result<usize>>,
) -> Poll<()> {
    while buf.has_remaining() && failed.is_none() {
        match write(buf.chunk()) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => *failed = Some(Failed::Closed),
            Poll::Ready(Ok(n)) => buf.advance(n),
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Poll::Pending;
            }
            Poll::Ready(Err(e)) => {
                *failed = Some(match e.kind() {
                    io::ErrorKind::BrokenPipe => Failed::Closed,
                    kind => Failed::Error(kind, e.raw_os_error()),
                });
            }
        }
    }
    Poll::Ready(())
}

/// Output to `fd` (duplicated; the caller keeps its own).
pub(crate) fn output(fd: BorrowedFd<'_>) -> io::Result<HostOutput> {
    let tty = std::io::IsTerminal::is_terminal(&fd);
    let fd = Fd::open(fd, true)?;
    Ok(HostOutput {
        shared: Arc::new(OutputShared {
            fd,
            state: Default::default(),
        }),
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
        Box::new(OutputFd {
            shared: self.shared.clone(),
            permit: 0,
        })
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(WriteFd(self.shared.clone()))
    }
}

/// The WASI output stream.
struct OutputFd {
    shared: Arc<OutputShared>,
    /// Bytes the last `check_write` allowed and no `write` used yet.
    permit: usize,
}

impl OutputFd {
    /// Writes the queue now, as far as the descriptor takes it.
    fn drain_now(&self, state: &mut OutputState) {
        let fd = &self.shared.fd;
        let _ = state.drain(|b| Poll::Ready(fd.write_now(b)));
    }
}

impl OutputStream for OutputFd {
    fn write(&mut self, mut bytes: Bytes) -> StreamResult<()> {
        let mut state = self.shared.state();
        state.check()?;
        if bytes.len() > self.permit {
            return Err(StreamError::trap(
                "wrote more bytes than `check-write` allowed",
            ));
        }
        self.permit -= bytes.len();
        if state.queued.is_empty() {
            // The common case: straight to the descriptor.
            let fd = &self.shared.fd;
            let _ = write_out(&mut bytes, &mut state.failed, |b| {
                Poll::Ready(fd.write_now(b))
            });
            state.check()?;
        }
        state.queued.extend_from_slice(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        let mut state = self.shared.state();
        self.drain_now(&mut state);
        state.check()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let mut state = self.shared.state();
        self.drain_now(&mut state);
        state.check()?;
        self.permit = if state.queued.is_empty() {
            WRITE_BUDGET
        } else {
            0
        };
        Ok(self.permit)
    }
}

#[async_trait::async_trait]
impl Pollable for OutputFd {
    async fn ready(&mut self) {
        let shared = &self.shared;
        std::future::poll_fn(|cx| shared.state().drain(|b| shared.fd.poll_write_some(cx, b))).await;
    }
}

/// `AsyncWrite` over the same output (for interfaces that want one): what
/// the WASI streams queued goes first.
struct WriteFd(Arc<OutputShared>);

impl AsyncWrite for WriteFd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &self.0;
        let mut state = shared.state();
        ready!(state.drain(|b| shared.fd.poll_write_some(cx, b)));
        if let Some(failed) = state.failed {
            return Poll::Ready(Err(failed.to_io()));
        }
        shared.fd.poll_write_some(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.0;
        ready!(shared.state().drain(|b| shared.fd.poll_write_some(cx, b)));
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
