//! The byte stream under a session: a bounded read buffer, CRLF line
//! framing, and an output buffer that is flushed only when the session is
//! about to wait for input, so pipelined commands get their replies in one
//! write (RFC 2920 section 3.2).

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::reply::Reply;
use crate::shutdown::Shutdown;

const READ_CHUNK: usize = 16 * 1024;

/// Why a read did not deliver bytes.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing arrived in time.
    Timeout,
    /// The client closed the connection.
    Closed,
    /// The gateway is stopping.
    Shutdown,
    /// The socket failed.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// A command line taken from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, CRLF included.
    Complete(Vec<u8>),
    /// A line longer than the bound; it has been read and thrown away.
    TooLong,
}

/// The stream and its buffers.
pub struct Conn<S> {
    stream: S,
    input: Vec<u8>,
    start: usize,
    output: Vec<u8>,
    /// Inside an over-long line: discard until its CRLF.
    discarding: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a stream, with input that was already read from it.
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            input: Vec::with_capacity(READ_CHUNK),
            start: 0,
            output: Vec::with_capacity(1024),
            discarding: false,
        }
    }

    /// Gives the stream back (for STARTTLS), dropping buffered input.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Input received and not yet used.
    pub fn buffered(&self) -> &[u8] {
        &self.input[self.start..]
    }

    /// Marks `n` buffered bytes as used.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.input.len());
        if self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        }
    }

    /// Drops all buffered input (STARTTLS: CVE-2011-0411).
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.buffered().len();
        self.consume(n);
        n
    }

    /// Queues a reply; it is sent at the next flush.
    pub fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    /// Sends queued replies.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Sends queued replies and shuts the write side.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// Flushes replies, then reads more input, waiting at most `timeout`;
    /// with `shutdown`, also gives up when the gateway stops.
    pub async fn fill(
        &mut self,
        timeout: Duration,
        shutdown: Option<&mut Shutdown>,
    ) -> Result<(), ReadError> {
        self.flush().await?;
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.reserve(READ_CHUNK);
        let read = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.input));
        let n = match shutdown {
            Some(shutdown) => tokio::select! {
                r = read => r,
                _ = shutdown.wait() => return Err(ReadError::Shutdown),
            },
            None => read.await,
        }
        .map_err(|_| ReadError::Timeout)??;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Ok(())
    }

    /// Reads whatever the client has already sent, without waiting; true if
    /// anything is buffered afterwards. Used to catch a client that sends
    /// ahead where it must wait (before the greeting, after DATA).
    pub fn poll_ahead(&mut self) -> bool {
        if !self.buffered().is_empty() {
            return true;
        }
        self.input.reserve(READ_CHUNK);
        let mut cx = Context::from_waker(Waker::noop());
        let read = pin!(self.stream.read_buf(&mut self.input));
        matches!(read.poll(&mut cx), Poll::Ready(Ok(n)) if n > 0)
    }

    /// Takes the next CRLF-terminated line if one is complete. A line longer
    /// than `max` is consumed up to its CRLF and reported as too long; bare
    /// LF does not end a line (RFC 5321 2.3.8).
    pub fn take_line(&mut self, max: usize) -> Option<Line> {
        let buf = self.buffered();
        match memchr::memmem::find(buf, b"\r\n") {
            Some(i) if self.discarding => {
                self.consume(i + 2);
                self.discarding = false;
                Some(Line::TooLong)
            }
            Some(i) if i + 2 > max => {
                self.consume(i + 2);
                Some(Line::TooLong)
            }
            Some(i) => {
                let line = buf[..i + 2].to_vec();
                self.consume(i + 2);
                Some(Line::Complete(line))
            }
            None if self.discarding || buf.len() >= max => {
                // Keep a trailing CR: its LF may be in the next read.
                let keep = usize::from(buf.last() == Some(&b'\r'));
                let n = buf.len() - keep;
                self.consume(n);
                self.discarding = true;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_framed_by_crlf_only_and_bounded() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(server);
        let mut client = client;
        let long = format!("NOOP {}\r\nQUIT\r\n", "x".repeat(2000));
        client.write_all(b"EHLO a\nb\r\n").await.unwrap();
        client.write_all(long.as_bytes()).await.unwrap();
        drop(client);
        let mut lines = Vec::new();
        loop {
            while let Some(line) = conn.take_line(512) {
                lines.push(line);
            }
            if conn.fill(Duration::from_secs(1), None).await.is_err() {
                break;
            }
        }
        assert_eq!(
            lines,
            vec![
                Line::Complete(b"EHLO a\nb\r\n".to_vec()),
                Line::TooLong,
                Line::Complete(b"QUIT\r\n".to_vec()),
            ]
        );
    }
}
