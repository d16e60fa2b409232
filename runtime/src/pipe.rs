//! In-memory stdout/stderr with a byte limit.
//!
//! Wasmtime's `MemoryOutputPipe` makes writes past its capacity fail, which
//! a C guest ignores and goes on (so a cut response looks like a success),
//! and it copies its buffer unless it holds the last reference. This pipe
//! either traps the guest at the limit (stdout: the request fails at once)
//! or drops the excess (stderr: logs are best effort), remembers that it
//! did, and hands its bytes over without a copy.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// What happens to a write past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Trap the guest: the request cannot be answered correctly.
    Trap,
    /// Keep what fits, drop the rest, let the guest go on.
    Truncate,
}

#[derive(Debug)]
struct State {
    buf: BytesMut,
    limit: usize,
    overflow: Overflow,
    overflowed: bool,
}

/// A capped in-memory output stream; clones share the buffer.
#[derive(Debug, Clone)]
pub struct CappedPipe(Arc<Mutex<State>>);

/// The message of the trap raised when stdout goes past its limit.
pub const OVERFLOW_TRAP: &str = "output limit exceeded";

impl CappedPipe {
    /// A pipe that accepts at most `limit` bytes.
    pub fn new(limit: usize, overflow: Overflow) -> Self {
        CappedPipe(Arc::new(Mutex::new(State {
            buf: BytesMut::new(),
            limit,
            overflow,
            overflowed: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a writer panicked; the bytes are fine.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the bytes written so far, and whether anything went past the limit.
    pub fn take(&self) -> (Bytes, bool) {
        let mut s = self.state();
        (std::mem::take(&mut s.buf).freeze(), s.overflowed)
    }

    /// Appends what fits; reports whether everything did.
    fn append(&self, data: &[u8]) -> Result<usize, ()> {
        let mut s = self.state();
        let room = s.limit - s.buf.len();
        if data.len() <= room {
            s.buf.extend_from_slice(data);
            return Ok(data.len());
        }
        s.overflowed = true;
        match s.overflow {
            Overflow::Trap => Err(()),
            Overflow::Truncate => {
                s.buf.extend_from_slice(&data[..room]);
                // Claim the whole write so the guest does not retry forever.
                Ok(data.len())
            }
        }
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes)
            .map(drop)
            .map_err(|()| StreamError::trap(OVERFLOW_TRAP))
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        // Always offer a full buffer's worth, so the guest's write reaches
        // `write` and the limit is enforced there, once.
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map_err(|()| io::Error::other(OVERFLOW_TRAP)),
        )
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_mode_refuses_past_the_limit() {
        let mut p = CappedPipe::new(4, Overflow::Trap);
        assert!(p.write(Bytes::from_static(b"abc")).is_ok());
        assert!(matches!(
            p.write(Bytes::from_static(b"de")),
            Err(StreamError::Trap(_))
        ));
        let (b, over) = p.take();
        assert_eq!(&b[..], b"abc");
        assert!(over);
    }

    #[test]
    fn truncate_mode_keeps_what_fits() {
        let mut p = CappedPipe::new(4, Overflow::Truncate);
        p.write(Bytes::from_static(b"abc")).unwrap();
        p.write(Bytes::from_static(b"defg")).unwrap();
        let (b, over) = p.take();
        assert_eq!(&b[..], b"abcd");
        assert!(over);
    }

    #[test]
    fn exactly_the_limit_is_fine() {
        let mut p = CappedPipe::new(3, Overflow::Trap);
        p.write(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(p.take(), (Bytes::from_static(b"abc"), false));
    }
}
