//! A connection's writes, cut off when its client stops reading.
//!
//! hyper has no write timeout: a client that never reads its response
//! would keep the connection, and whatever the response holds (a WAGI
//! body of up to `max_response_size`, a streaming guest's place), for as
//! long as it likes. [`SendTimeout`] fails a write that has made no
//! progress for `send_timeout`; hyper then closes the connection and drops
//! the response. The timer exists only while a write waits: nothing is
//! allocated or armed on a write the socket takes at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` whose writes fail with `TimedOut` after `limit` without progress.
pub(crate) struct SendTimeout<S> {
    io: S,
    limit: Duration,
    /// Armed when a write first waited; dropped when one goes through.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
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
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing of its response for {} (send_timeout)",
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

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
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

    #[tokio::test]
    async fn a_reader_that_stops_cuts_the_writer_off_at_the_limit() {
        // A pipe of 64 bytes: the reader takes some, then stops.
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = SendTimeout::new(a, Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        let writer = tokio::spawn(async move {
            let chunk = [7u8; 32];
            let mut sent = 0usize;
            loop {
                match w.write_all(&chunk).await {
                    Ok(()) => sent += chunk.len(),
                    Err(e) => return (sent, e),
                }
            }
        });
        // A slow reader that keeps reading: never cut off.
        let mut buf = [0u8; 32];
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.read_exact(&mut buf).await.unwrap();
        }
        assert!(!writer.is_finished(), "cut off while its reader read");
        // Then it stops reading.
        let (sent, e) = writer.await.unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("send_timeout"), "{e}");
        assert!(sent >= 10 * 32, "{sent}");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(600), "{took:?}");
    }
}
