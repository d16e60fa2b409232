//! The request body as `wasi:http` reads it: a `http_body::Body` that
//! pulls from the server (a [`BodyReader`], on the request's thread) as the
//! guest reads, one buffer at a time.

use std::pin::Pin;
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
    Reader(Box<dyn BodyReader>),
    Done,
}

impl IncomingBody {
    /// `body`, read until `deadline`.
    pub(crate) fn new(body: RequestBody, deadline: Instant) -> Self {
        let source = match body {
            RequestBody::Bytes(b) if b.is_empty() => Source::Done,
            RequestBody::Bytes(b) => Source::Bytes(Some(b)),
            RequestBody::Reader(r) => Source::Reader(r),
        };
        IncomingBody { source, deadline }
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
                match r.read(&mut buf, timeout) {
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
