//! The guest's stdin: the request body, in memory or read from the server
//! as the guest asks for it.
//!
//! Reading the whole body before the guest ran cost memory in proportion to
//! the body, whether or not the guest read it: four concurrent 900 MB POSTs
//! to a module that never reads stdin took the children to 2.86 GB. A
//! [`BodyReader`] is called on the request's own thread (the guest runs on a
//! fiber inside `block_on` on that thread), so the server can pull the bytes
//! through its input filters as mod_cgid does, one buffer at a time; a guest
//! that stops reading leaves the rest unread.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use wasmtime_wasi::cli::{IsTerminal, StdinStream};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError, StreamResult};

use crate::limits::time_left;

/// Most bytes one read asks the server for.
const READ_SIZE: usize = 64 << 10;

/// Where the request body comes from.
pub enum Body {
    /// All of it, already in memory (tests, benchmarks).
    Bytes(Bytes),
    /// Pulled from the server as the guest reads.
    Reader(Box<dyn BodyReader>),
}

impl Default for Body {
    fn default() -> Self {
        Body::Bytes(Bytes::new())
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Bytes(b) => write!(f, "Body::Bytes({} bytes)", b.len()),
            Body::Reader(_) => f.write_str("Body::Reader"),
        }
    }
}

/// A source of request body bytes, read on the request's thread.
pub trait BodyReader: Send {
    /// Reads up to `buf.len()` bytes into `buf`, waiting at most `timeout`
    /// for them; `Ok(0)` at the end of the body.
    ///
    /// # Errors
    /// Any failure to read (the client went away, sent a malformed chunk,
    /// exceeded the server's body limit, or was too slow); the guest sees
    /// an I/O error and the server decides what to answer.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
}

struct State {
    reader: Box<dyn BodyReader>,
    deadline: Instant,
    done: bool,
}

/// A WASI stdin over a [`BodyReader`]; clones share the reader, as every
/// handle to stdin must.
#[derive(Clone)]
pub struct StreamedStdin(Arc<Mutex<State>>);

impl StreamedStdin {
    /// Stdin reading from `reader`, which may wait until `deadline` at the
    /// latest (the request's `WasmTimeout`).
    pub fn new(reader: Box<dyn BodyReader>, deadline: Instant) -> Self {
        StreamedStdin(Arc::new(Mutex::new(State {
            reader,
            deadline,
            done: false,
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `size` bytes; empty at the end of the body.
    fn pull(&self, size: usize) -> io::Result<Bytes> {
        let mut s = self.state();
        if s.done || size == 0 {
            return Ok(Bytes::new());
        }
        let left = time_left(s.deadline, "reading the request body")?;
        let mut buf = BytesMut::zeroed(size.min(READ_SIZE));
        let n = s.reader.read(&mut buf, left)?;
        if n == 0 {
            s.done = true;
        }
        buf.truncate(n);
        Ok(buf.freeze())
    }
}

impl InputStream for StreamedStdin {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        match self.pull(size) {
            Ok(b) if b.is_empty() && size > 0 => Err(StreamError::Closed),
            Ok(b) => Ok(b),
            Err(e) => Err(StreamError::LastOperationFailed(e.into())),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StreamedStdin {
    // Reads wait in `read` itself, on the request's thread.
    async fn ready(&mut self) {}
}

impl AsyncRead for StreamedStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(self.pull(buf.remaining()).map(|b| buf.put_slice(&b)))
    }
}

impl IsTerminal for StreamedStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for StreamedStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(Vec<&'static [u8]>);

    impl BodyReader for Chunks {
        fn read(&mut self, buf: &mut [u8], _: Duration) -> io::Result<usize> {
            match self.0.first_mut() {
                None => Ok(0),
                Some(c) => {
                    let n = c.len().min(buf.len());
                    buf[..n].copy_from_slice(&c[..n]);
                    *c = &c[n..];
                    if c.is_empty() {
                        self.0.remove(0);
                    }
                    Ok(n)
                }
            }
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn reads_in_order_then_reports_closed() {
        let mut s = StreamedStdin::new(Box::new(Chunks(vec![b"abc", b"de"])), far());
        assert_eq!(&s.read(2).unwrap()[..], b"ab");
        assert_eq!(&s.read(10).unwrap()[..], b"c");
        assert_eq!(&s.read(10).unwrap()[..], b"de");
        assert!(matches!(s.read(10), Err(StreamError::Closed)));
        assert!(matches!(s.read(10), Err(StreamError::Closed)));
    }

    #[test]
    fn a_past_deadline_fails_without_reading() {
        struct Never;
        impl BodyReader for Never {
            fn read(&mut self, _: &mut [u8], _: Duration) -> io::Result<usize> {
                panic!("read after the deadline")
            }
        }
        let mut s = StreamedStdin::new(Box::new(Never), Instant::now());
        assert!(matches!(
            s.read(10),
            Err(StreamError::LastOperationFailed(_))
        ));
    }
}
