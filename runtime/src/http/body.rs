//! The request body as `wasi:http` reads it: a `http_body::Body` that
//! pulls from the server (a [`BodyReader`], on the request's thread) as the
//! guest reads, one buffer at a time.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use wasmtime_wasi_http::Error;

use crate::body::{Body as RequestBody, BodyReader};
use crate::limits::time_left;

/// Most bytes one read asks the server for.
const READ_SIZE: usize = 64 << 10;

/// The request body of one component request.
pub(crate) struct IncomingBody {
    source: Source,
    deadline: Instant,
}

enum Source {
    Bytes(Option<Bytes>),
    Reader(Shared),
    Done,
}

/// The server's reader, shared with the [`Revoke`] of its request.
type Shared = Arc<Mutex<Option<Box<dyn BodyReader>>>>;

/// Takes the server's reader away from the body when dropped, at the end
/// of its request: the body lives in the guest's store, and a store kept
/// for reuse (`reuse.rs`) must never reach into a request that is over.
pub(crate) struct Revoke(Option<Shared>);

impl Drop for Revoke {
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            *lock(shared) = None;
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Option<Box<dyn BodyReader>>> {
    // A reader that panicked is as good as gone; the lock is still sound.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl IncomingBody {
    /// `body`, read until `deadline` and until the [`Revoke`] is dropped.
    pub(crate) fn new(body: RequestBody, deadline: Instant) -> (Self, Revoke) {
        let (source, revoke) = match body {
            RequestBody::Bytes(b) if b.is_empty() => (Source::Done, Revoke(None)),
            RequestBody::Bytes(b) => (Source::Bytes(Some(b)), Revoke(None)),
            RequestBody::Reader(r) => {
                let shared: Shared = Arc::new(Mutex::new(Some(r)));
                (Source::Reader(shared.clone()), Revoke(Some(shared)))
            }
        };
        (IncomingBody { source, deadline }, revoke)
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = Error;

    // The read blocks the request's thread, as a CGI guest's read of stdin
    // does: the guest is waiting for these bytes anyway, and the server's
    // input filters must be driven from this thread.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let deadline = self.deadline;
        match &mut self.source {
            Source::Done => Poll::Ready(None),
            Source::Bytes(b) => {
                let b = b.take();
                self.source = Source::Done;
                Poll::Ready(b.map(|b| Ok(Frame::data(b))))
            }
            Source::Reader(r) => {
                let timeout = match time_left(deadline, "reading the request body") {
                    Ok(t) => t,
                    Err(_) => {
                        self.source = Source::Done;
                        return Poll::Ready(Some(Err(Error::ConnectionReadTimeout)));
                    }
                };
                let mut buf = BytesMut::zeroed(READ_SIZE);
                let read = match lock(r).as_mut() {
                    Some(reader) => reader.read(&mut buf, timeout),
                    None => Err(std::io::Error::other("the request is over")),
                };
                match read {
                    Ok(0) => {
                        self.source = Source::Done;
                        Poll::Ready(None)
                    }
                    Ok(n) => {
                        buf.truncate(n);
                        Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
                    }
                    Err(_) => {
                        self.source = Source::Done;
                        Poll::Ready(Some(Err(Error::ConnectionTerminated)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.source, Source::Done)
    }
}
