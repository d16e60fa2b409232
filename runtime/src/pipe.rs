//! In-memory stdout/stderr with a byte limit.
//!
//! Wasmtime's `MemoryOutputPipe` makes writes past its capacity fail, which
//! a C guest ignores and goes on (so a cut response looks like a success),
//! and it grows one contiguous buffer by reallocation. This pipe either traps
//! the guest at the limit (stdout: the request fails at once) or drops the
//! excess (stderr: logs are best effort), and remembers that it did.
//!
//! Output is kept as a list of chunks: large writes keep the buffer WASI
//! already copied them into (no further copy, no reallocation), small writes
//! are gathered into fixed-size blocks. Apache then sends the chunks as they
//! are. Growing one buffer to megabytes by doubling, per request and per
//! thread, was measured to fragment glibc's heap: children grew by tens of
//! MiB under output-heavy load.
//!
//! With an [`OutputSink`] (stdout of a request served by Apache), whatever
//! is gathered is handed on once it reaches [`STREAM_AFTER`] bytes, so a
//! request holds at most that much output however much it writes: 32
//! requests writing 64 MiB each had left children at over 1 GB, which glibc
//! kept after they ended. Smaller responses are still kept whole until the
//! guest ends, so a guest that fails before it wrote that much gets a clean
//! error response instead of a truncated one.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::limits::time_left;

/// Writes below this size are copied into a shared block.
const SMALL_WRITE: usize = 4096;
/// Size of the blocks small writes are gathered in.
const BLOCK: usize = 16 << 10;
/// Output gathered before it is handed to the sink.
pub const STREAM_AFTER: usize = 256 << 10;

/// Where output goes once there is more of it than a request keeps.
pub trait OutputSink: Send {
    /// Sends `chunks`, in order, waiting at most `timeout`.
    ///
    /// # Errors
    /// Any failure to send (the client went away, was too slow, or the
    /// server refused the response head); the guest is then stopped.
    fn send(&mut self, chunks: &[Bytes], timeout: Duration) -> io::Result<()>;
}

/// A sink and when its sends must be done by.
struct Sink {
    sink: Box<dyn OutputSink>,
    deadline: Instant,
}

/// What happens to a write past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Trap the guest: the request cannot be answered correctly.
    Trap,
    /// Keep what fits, drop the rest, let the guest go on.
    Truncate,
}

/// Bytes written to a pipe, in the order written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Output {
    /// The chunks, none of them empty.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Everything in one buffer; a copy unless there is at most one chunk.
    pub fn to_bytes(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => many.concat().into(),
        }
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push(b);
        }
    }
}

struct State {
    out: Output,
    /// The block small writes are being gathered in.
    tail: BytesMut,
    limit: usize,
    overflow: Overflow,
    overflowed: bool,
    sink: Option<Sink>,
    /// Bytes handed to the sink so far.
    sent: usize,
    /// Why the sink refused output, once it did.
    send_error: Option<io::Error>,
}

impl State {
    fn written(&self) -> usize {
        self.sent + self.out.len + self.tail.len()
    }

    /// Hands what is gathered to the sink once there is enough of it.
    fn maybe_send(&mut self) -> Result<(), ()> {
        let Some(sink) = self.sink.as_mut() else {
            return Ok(());
        };
        if self.out.len + self.tail.len() < STREAM_AFTER {
            return Ok(());
        }
        if !self.tail.is_empty() {
            let block = self.tail.split().freeze();
            self.out.push(block);
        }
        let out = std::mem::take(&mut self.out);
        let sent = time_left(sink.deadline, "sending the response")
            .and_then(|left| sink.sink.send(out.chunks(), left));
        match sent {
            Ok(()) => {
                self.sent += out.len;
                Ok(())
            }
            Err(e) => {
                self.send_error = Some(e);
                // Nothing more can reach the client: stop the guest.
                self.sink = None;
                Err(())
            }
        }
    }

    fn flush_tail(&mut self) {
        if !self.tail.is_empty() {
            let block = self.tail.split().freeze();
            self.out.push(block);
        }
    }

    fn store(&mut self, data: Bytes) {
        if data.len() >= SMALL_WRITE {
            self.flush_tail();
            self.out.push(data);
            return;
        }
        if self.tail.capacity() - self.tail.len() < data.len() {
            self.flush_tail();
            self.tail = BytesMut::with_capacity(BLOCK);
        }
        self.tail.extend_from_slice(&data);
    }
}

/// A capped in-memory output stream; clones share the buffer.
#[derive(Clone)]
pub struct CappedPipe(Arc<Mutex<State>>);

impl std::fmt::Debug for CappedPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CappedPipe")
    }
}

/// The message of the trap raised when stdout goes past its limit.
pub const OVERFLOW_TRAP: &str = "output limit exceeded";
/// The message of the trap raised when the output cannot be sent.
pub const SEND_TRAP: &str = "the response could not be sent";

impl CappedPipe {
    /// A pipe that accepts at most `limit` bytes.
    pub fn new(limit: usize, overflow: Overflow) -> Self {
        CappedPipe(Arc::new(Mutex::new(State {
            out: Output::default(),
            tail: BytesMut::new(),
            limit,
            overflow,
            overflowed: false,
            sink: None,
            sent: 0,
            send_error: None,
        })))
    }

    /// A pipe like [`CappedPipe::new`]'s that hands its output to `sink`
    /// in batches of [`STREAM_AFTER`] bytes, sending until `deadline`.
    pub fn streaming(
        limit: usize,
        overflow: Overflow,
        sink: Box<dyn OutputSink>,
        deadline: Instant,
    ) -> Self {
        let pipe = CappedPipe::new(limit, overflow);
        pipe.state().sink = Some(Sink { sink, deadline });
        pipe
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a writer panicked; the bytes are fine.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what was written and not yet sent, and whether anything went
    /// past the limit.
    pub fn take(&self) -> (Output, bool) {
        let mut s = self.state();
        s.flush_tail();
        (
            std::mem::take(&mut s.out),
            std::mem::take(&mut s.overflowed),
        )
    }

    /// Bytes handed to the sink so far.
    pub fn sent(&self) -> usize {
        self.state().sent
    }

    /// Why the sink refused output, if it did (taken: asked once).
    pub fn send_error(&self) -> Option<io::Error> {
        self.state().send_error.take()
    }

    /// Stores what fits; reports whether everything did, or else why the
    /// guest must stop.
    fn append(&self, data: Bytes) -> Result<usize, &'static str> {
        let mut s = self.state();
        if s.send_error.is_some() {
            return Err(SEND_TRAP);
        }
        let room = s.limit - s.written();
        let n = data.len();
        if n <= room {
            s.store(data);
            s.maybe_send().map_err(|()| SEND_TRAP)?;
            return Ok(n);
        }
        s.overflowed = true;
        match s.overflow {
            Overflow::Trap => Err(OVERFLOW_TRAP),
            Overflow::Truncate => {
                s.store(data.slice(..room));
                // Claim the whole write so the guest does not retry forever.
                Ok(n)
            }
        }
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(bytes).map(drop).map_err(StreamError::trap)
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
            self.append(Bytes::copy_from_slice(buf))
                .map_err(io::Error::other),
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
        assert_eq!(&b.to_bytes()[..], b"abc");
        assert!(over);
    }

    #[test]
    fn truncate_mode_keeps_what_fits() {
        let mut p = CappedPipe::new(4, Overflow::Truncate);
        p.write(Bytes::from_static(b"abc")).unwrap();
        p.write(Bytes::from_static(b"defg")).unwrap();
        let (b, over) = p.take();
        assert_eq!(&b.to_bytes()[..], b"abcd");
        assert!(over);
    }

    #[test]
    fn exactly_the_limit_is_fine() {
        let mut p = CappedPipe::new(3, Overflow::Trap);
        p.write(Bytes::from_static(b"abc")).unwrap();
        let (b, over) = p.take();
        assert_eq!((&b.to_bytes()[..], over), (&b"abc"[..], false));
    }

    #[test]
    fn large_writes_are_kept_without_a_copy_and_small_ones_gathered() {
        let mut p = CappedPipe::new(1 << 20, Overflow::Trap);
        let big = Bytes::from(vec![7u8; 10_000]);
        for _ in 0..1000 {
            p.write(Bytes::from_static(b"x")).unwrap();
        }
        p.write(big.clone()).unwrap();
        p.write(Bytes::from_static(b"tail")).unwrap();
        let (out, _) = p.take();
        assert_eq!(out.len(), 1000 + 10_000 + 4);
        assert_eq!(out.chunks().len(), 3);
        assert_eq!(
            out.chunks()[1].as_ptr(),
            big.as_ptr(),
            "the large write was copied"
        );
        let all = out.to_bytes();
        assert!(all[..1000].iter().all(|&b| b == b'x') && all.ends_with(b"tail"));
    }

    struct Collect(Arc<Mutex<Vec<u8>>>, bool);

    impl OutputSink for Collect {
        fn send(&mut self, chunks: &[Bytes], _: Duration) -> io::Result<()> {
            if self.1 {
                return Err(io::Error::other("gone"));
            }
            let mut all = self.0.lock().unwrap();
            chunks.iter().for_each(|c| all.extend_from_slice(c));
            Ok(())
        }
    }

    fn streaming(limit: usize, fail: bool) -> (CappedPipe, Arc<Mutex<Vec<u8>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let far = Instant::now() + Duration::from_secs(60);
        let sink = Box::new(Collect(sent.clone(), fail));
        (
            CappedPipe::streaming(limit, Overflow::Trap, sink, far),
            sent,
        )
    }

    #[test]
    fn output_past_the_threshold_goes_to_the_sink_and_the_rest_stays() {
        let (mut p, sent) = streaming(4 << 20, false);
        let block = Bytes::from(vec![1u8; 100_000]);
        for _ in 0..10 {
            p.write(block.clone()).unwrap();
        }
        let (rest, over) = p.take();
        let sent = sent.lock().unwrap().len();
        assert!(!over);
        assert_eq!(sent + rest.len(), 1_000_000);
        assert_eq!(p.sent(), sent);
        assert!(
            sent >= STREAM_AFTER && rest.len() < STREAM_AFTER,
            "{sent} {}",
            rest.len()
        );
    }

    #[test]
    fn a_small_output_is_kept_whole() {
        let (mut p, sent) = streaming(4 << 20, false);
        p.write(Bytes::from(vec![1u8; STREAM_AFTER - 1])).unwrap();
        assert!(sent.lock().unwrap().is_empty());
        assert_eq!(p.take().0.len(), STREAM_AFTER - 1);
    }

    #[test]
    fn the_limit_counts_what_was_sent() {
        let (mut p, _) = streaming(STREAM_AFTER + 10, false);
        p.write(Bytes::from(vec![1u8; STREAM_AFTER])).unwrap();
        assert!(matches!(
            p.write(Bytes::from(vec![1u8; 11])),
            Err(StreamError::Trap(_))
        ));
        assert!(p.take().1);
    }

    #[test]
    fn a_failed_send_stops_every_later_write() {
        let (mut p, _) = streaming(4 << 20, true);
        assert!(matches!(
            p.write(Bytes::from(vec![1u8; STREAM_AFTER])),
            Err(StreamError::Trap(_))
        ));
        assert!(p.write(Bytes::from_static(b"x")).is_err());
        assert!(p.send_error().is_some());
    }
}
