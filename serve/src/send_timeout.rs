//! A connection's writes, cut off when its client stops reading.
//!
//! hyper has no write timeout: a client that never reads its response
//! would keep the connection, and whatever the response holds (a WAGI
//! body of up to `max_response_size`, a streaming guest's place), for as
//! long as it likes. [`SendTimeout`] fails a write that has waited
//! `send_timeout` while the socket's send queue did not shrink at all;
//! hyper then closes the connection and drops the response.
//!
//! Progress is read from the kernel's send queue (`TIOCOUTQ`: bytes not
//! yet acknowledged by the client), not from the write's wake-ups: Linux
//! wakes a blocked writer only once a third of the send buffer is free,
//! which a slow but steady reader may take longer than `send_timeout` to
//! make room for. (The client's side acknowledges in steps of up to a
//! segment, 64 KiB on loopback, once that much of its buffer is free: a
//! reader slower than about a segment per `send_timeout` looks idle.)
//! The timer exists only while a write waits: nothing is
//! allocated, armed or asked of the kernel on a write the socket takes at
//! once.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` whose writes fail with `TimedOut` after `limit` without progress.
pub(crate) struct SendTimeout<S> {
    io: S,
    limit: Duration,
    /// Armed when a write first waited, with the send queue then; dropped
    /// when one goes through.
    stalled: Option<(Pin<Box<Sleep>>, Option<u32>)>,
}

/// The bytes in `fd`'s send queue not yet acknowledged by the peer, if
/// the kernel says.
fn queued(fd: std::os::fd::RawFd) -> Option<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one int through
    // the pointer, which points at `n`, live for the call; a bad fd or
    // socket type only makes it fail.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (rc == 0).then(|| u32::try_from(n).ok()).flatten()
}

impl<S: AsRawFd> SendTimeout<S> {
    pub(crate) fn new(io: S, limit: Duration) -> Self {
        SendTimeout {
            io,
            limit,
            stalled: None,
        }
    }

    /// The outcome of a write that the socket did (`Ready`) or did not
    /// (`Pending`) take.
    fn progress<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let (limit, fd) = (self.limit, self.io.as_raw_fd());
        let (timer, at_arm) = self
            .stalled
            .get_or_insert_with(|| (Box::pin(tokio::time::sleep(limit)), queued(fd)));
        loop {
            ready!(timer.as_mut().poll(cx));
            // The limit passed: did the client take anything meanwhile?
            match (queued(fd), *at_arm) {
                (Some(now), Some(then)) if now < then => {
                    *at_arm = Some(now);
                    timer.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                _ => break,
            }
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took nothing of its response for {} (send_timeout)",
                humantime::format_duration(limit)
            ),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + AsRawFd + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::SendTimeout;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A loopback connection: the writer under test, and its reader.
    async fn pair(limit: Duration) -> (SendTimeout<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let w = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (r, _) = l.accept().await.unwrap();
        (SendTimeout::new(w, limit), r)
    }

    /// Writes until the writer fails: the bytes written, and the error.
    fn write_forever(
        mut w: SendTimeout<TcpStream>,
    ) -> tokio::task::JoinHandle<(usize, std::io::Error)> {
        tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            let mut sent = 0usize;
            loop {
                match w.write_all(&chunk).await {
                    Ok(()) => sent += chunk.len(),
                    Err(e) => return (sent, e),
                }
            }
        })
    }

    #[tokio::test]
    async fn a_reader_that_stops_cuts_the_writer_off_at_the_limit() {
        let (w, _r) = pair(Duration::from_millis(300)).await;
        let start = tokio::time::Instant::now();
        let (sent, e) = write_forever(w).await.unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("send_timeout"), "{e}");
        assert!(sent > 0);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_is_never_cut_off() {
        // The reader takes 64 KiB every 100 ms: far too slow to free a
        // third of the send buffer (which is what wakes the writer) within
        // the 500 ms limit, yet it never stops reading.
        let (w, mut r) = pair(Duration::from_millis(500)).await;
        let writer = write_forever(w);
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            r.read_exact(&mut buf).await.unwrap();
        }
        assert!(!writer.is_finished(), "cut off while its reader read");
        // Then it stops: cut off.
        let (_, e) = writer.await.unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }
}
