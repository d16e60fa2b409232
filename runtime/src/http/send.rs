//! A component's response going out: its head to the server once the guest
//! sets it, then its body as the guest writes it, within the request's
//! limits; and what the request comes to, given how that ended. The same
//! for both versions of `wasi:http` (`call_p2.rs`, `call_p3.rs`).

use std::cell::Cell;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::request::HeadSink;
use crate::error::{Code, Error, Result};
use crate::limits::{time_left, Limits};
use crate::outcome::timed_out;
use crate::pipe::OutputSink;

/// How the sending of a response ended.
pub(super) enum Sent {
    /// All of the body went out.
    Complete,
    /// The guest returned, or failed, without setting a response.
    NotSet,
    /// The guest set an error instead of a response (the error code).
    Refused(String),
    /// The head or a part of the body could not be sent.
    Failed(std::io::Error),
    /// The body outgrew `WasmMaxOutput`.
    TooLong,
    /// The body ended in an error (a `content-length` it did not match, or
    /// the guest's abort).
    Broken(String),
    /// The guest returned without setting a response or finishing its body.
    Unfinished,
}

impl Sent {
    /// Whether the server stopped taking the response, or the response
    /// broke its own head: then the guest's failure to write or finish it
    /// is the consequence, not the cause, and this is what is reported.
    pub(super) fn cut(&self) -> bool {
        matches!(self, Sent::TooLong | Sent::Failed(_) | Sent::Broken(_))
    }
}

/// Where one request's response goes.
pub(super) struct Sink<'a> {
    head: Option<Box<dyn HeadSink>>,
    output: Option<Box<dyn OutputSink>>,
    max_output: usize,
    deadline: Instant,
    /// Body bytes that went out, for the outcome.
    sent_bytes: &'a Cell<usize>,
}

impl<'a> Sink<'a> {
    /// A sink sending to `head` and `output` until `deadline`.
    pub(super) fn new(
        head: Option<Box<dyn HeadSink>>,
        output: Option<Box<dyn OutputSink>>,
        max_output: usize,
        deadline: Instant,
        sent_bytes: &'a Cell<usize>,
    ) -> Self {
        Sink {
            head,
            output,
            max_output,
            deadline,
            sent_bytes,
        }
    }

    /// Sends the head of `response`, then its body as the guest writes it.
    pub(super) async fn send<B>(&mut self, response: http::Response<B>) -> Sent
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (parts, mut body) = response.into_parts();
        let declared: Option<usize> = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        // wasi:http refuses a finish short of the content-length; the body
        // that was to go out does not match what the head said.
        let mismatch = |written: usize, declared: usize| {
            Sent::Broken(format!(
                "the body does not match its content-length ({declared} bytes): \
                 the guest wrote {written}"
            ))
        };
        if let Some(h) = self.head.as_mut() {
            if let Err(e) = h.send_head(parts.status.as_u16(), &fields(&parts.headers)) {
                return Sent::Failed(e);
            }
        }
        let mut written = 0usize;
        while let Some(frame) = body.frame().await {
            let data: Bytes = match frame.map(|f| f.into_data()) {
                Ok(Ok(d)) => d,
                Ok(Err(f)) => {
                    if let (Some(h), Ok(trailers)) = (self.head.as_mut(), f.into_trailers()) {
                        if let Err(e) = h.send_trailers(&fields(&trailers)) {
                            return Sent::Failed(e);
                        }
                    }
                    continue;
                }
                Err(e) => match declared {
                    Some(d) if d != written => return mismatch(written, d),
                    _ => return Sent::Broken(e.to_string()),
                },
            };
            written += data.len();
            if written > self.max_output {
                return Sent::TooLong;
            }
            // Never a byte past the length the head announced: on a
            // kept-alive connection it would be read as the start of the
            // next response.
            if let Some(d) = declared.filter(|&d| written > d) {
                return mismatch(written, d);
            }
            if let Some(out) = self.output.as_mut() {
                let timeout = match time_left(self.deadline, "sending the response") {
                    Ok(t) => t,
                    Err(e) => return Sent::Failed(e),
                };
                if let Err(e) = out.send(&[data], timeout) {
                    return Sent::Failed(e);
                }
                self.sent_bytes.set(written);
            }
        }
        match declared {
            Some(d) if d != written => mismatch(written, d),
            _ => Sent::Complete,
        }
    }
}

/// Header or trailer fields as the server takes them.
fn fields(map: &http::HeaderMap) -> Vec<(&[u8], &[u8])> {
    map.iter()
        .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
        .collect()
}

/// What the guest's run comes to, given how its response was sent.
pub(super) fn sent_result(name: &str, sent: Sent, limits: &Limits) -> Result<()> {
    let err = |code, text: String| Err(Error::new(code, format!("{name}: {text}")));
    match sent {
        Sent::Complete => Ok(()),
        Sent::NotSet => err(
            Code::Trap,
            "the guest returned without setting a response".into(),
        ),
        Sent::Refused(code) => err(
            Code::Trap,
            format!("the guest answered with an error: {code}"),
        ),
        Sent::Failed(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(timed_out(name, limits.timeout))
        }
        Sent::Failed(e) => err(
            Code::Aborted,
            format!("the response could not be sent: {e}"),
        ),
        Sent::TooLong => err(
            Code::OutputLimit,
            format!(
                "the guest wrote more than {} bytes of body (WasmMaxOutput)",
                limits.max_output
            ),
        ),
        Sent::Broken(why) => err(Code::Trap, format!("the response body failed: {why}")),
        Sent::Unfinished => err(
            Code::Trap,
            "the guest returned without setting its response or finishing its body".into(),
        ),
    }
}

/// `poll`'s value if it is ready within `turns` polls, yielding to the
/// executor (and so to the store's loop or the guest's future) after each
/// one that was not: for what should follow shortly from work the guest
/// already did, and otherwise never will.
pub(super) async fn within_turns<T>(
    turns: usize,
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Option<T> {
    for _ in 0..turns {
        if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await {
            return Some(v);
        }
        tokio::task::yield_now().await;
    }
    None
}
