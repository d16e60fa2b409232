//! Sends an outgoing request a component was allowed to make (see
//! `outbound.rs`): HTTP/1.1 over TCP, TLS verified against the system's CA
//! store, each wait bounded by the guest's own request options, or else by
//! the request's `WasmTimeout` (which stops the whole request first: the
//! bound here is only a backstop, [`GRACE`] later).
//!
//! It runs on Wasmtime's Tokio runtime (wasi:http 0.2 spawns it there; 0.3
//! polls it inside the request's `in_tokio`), never touching Apache.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::outbound::{Scheme, Target};

/// How long past the request's deadline an outgoing request may wait when
/// the guest set no timeout of its own: the request is stopped at its
/// deadline, and this one with it, so it is never reached unless that
/// fails.
const GRACE: Duration = Duration::from_secs(1);

/// What `send_request` hands back: the response, and the future that
/// drives its connection until the body is read.
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Outgoing requests one request may have at once (waiting for a
/// connection, or connected until the guest has read the response).
pub const PER_REQUEST: usize = 16;

/// Outgoing requests a child may have at once: each holds a socket, and
/// a name lookup holds a thread until the resolver answers.
const PER_CHILD: usize = 256;

static CHILD: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PER_CHILD);

/// What bounds the outgoing requests of one request.
pub struct Budget {
    /// Its share of [`PER_REQUEST`].
    pub at_once: Arc<tokio::sync::Semaphore>,
    /// Changes (closes) when the request ends.
    pub ended: tokio::sync::watch::Receiver<()>,
    /// The request's `WasmTimeout`.
    pub deadline: Instant,
}

/// Until the request that made an outgoing request has ended.
async fn request_ended(mut ended: tokio::sync::watch::Receiver<()>) {
    while ended.changed().await.is_ok() {}
}

/// Sends `req` to `target`, which it was checked against, within `budget`.
pub async fn send(
    target: Target,
    req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    budget: Budget,
) -> Result<Sent, Error> {
    let ended = budget.ended.clone();
    tokio::select! {
        biased;
        () = request_ended(ended) => Err(Error::ConnectionTerminated),
        r = send_within(target, req, options, budget) => r,
    }
}

async fn send_within(
    target: Target,
    mut req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    budget: Budget,
) -> Result<Sent, Error> {
    let deadline = budget.deadline;
    let wait = |asked: Option<Duration>| {
        let left = (deadline + GRACE).saturating_duration_since(Instant::now());
        asked.map_or(left, |a| a.min(left))
    };
    let options = options.unwrap_or_default();
    let connect = wait(options.connect_timeout);
    let tcp = tokio::time::timeout(connect, async {
        // Both held until the connection closes (the io future below).
        let mine = budget.at_once.clone().acquire_owned().await;
        let child = CHILD.acquire().await;
        let (Ok(mine), Ok(child)) = (mine, child) else {
            return Err(Error::ConnectionLimitReached);
        };
        let tcp = connect_to(&target).await?;
        Ok((tcp, (mine, child)))
    })
    .await
    .map_err(|_| Error::ConnectionTimeout)?;
    let (tcp, permits) = tcp?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = match target.scheme {
        Scheme::Http => Box::new(tcp),
        Scheme::Https => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?);
            let stream =
                tokio::time::timeout(wait(options.connect_timeout), tls.connect(name, tcp))
                    .await
                    .map_err(|_| Error::ConnectionTimeout)?
                    .map_err(tls_error)?;
            Box::new(stream)
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::from)?;
    // Over a connection of its own, the request line carries the path
    // only, and Host names the target that was checked.
    let host = http::HeaderValue::try_from(target.host_header())
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    req.headers_mut().insert(http::header::HOST, host);
    *req.uri_mut() = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    // The connection is driven while the response is awaited, then handed
    // back to be driven while the guest reads the body; it may end first
    // (an upstream that closes after its response).
    let mut conn = Some(Box::pin(conn));
    let first_byte = wait(options.first_byte_timeout);
    let response = tokio::time::timeout(first_byte, async {
        let mut send = std::pin::pin!(sender.send_request(req));
        let Some(c) = conn.as_mut() else {
            unreachable!("the connection is set above");
        };
        tokio::select! {
            biased;
            r = &mut send => r.map_err(Error::from),
            ended = c => {
                conn = None;
                // A connection that ended well has delivered the response.
                ended.map_err(Error::from)?;
                send.await.map_err(Error::from)
            }
        }
    })
    .await
    .map_err(|_| Error::ConnectionReadTimeout)??;
    let between = options.between_bytes_timeout;
    let response = response.map(|body| match between {
        Some(gap) => Paced::new(body, gap).boxed_unsync(),
        None => body.map_err(Error::from).boxed_unsync(),
    });
    let ended = budget.ended;
    let io = async move {
        let _permits = permits;
        let Some(c) = conn else { return Ok(()) };
        tokio::select! {
            biased;
            () = request_ended(ended) => Err(Error::ConnectionTerminated),
            r = c => r.map_err(Error::from),
        }
    };
    Ok((response, Box::new(io)))
}

/// The TLS settings of every outgoing connection of this process: the
/// system's CA certificates (Debian's `ca-certificates`, or what
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` name), read once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no CA certificates in the system's store (install ca-certificates){}",
                    found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(|e| Error::InternalError(Some(e)))
}

/// A connection to one of the target's addresses, tried in the order the
/// resolver gives them.
async fn connect_to(target: &Target) -> Result<TcpStream, Error> {
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(Error::Connect)?;
    let mut last = Error::DestinationNotFound;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = connect_error(e),
        }
    }
    Err(last)
}

fn connect_error(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
        _ => Error::Connect(e),
    }
}

/// A TLS failure as wasi:http names it: a certificate that does not
/// verify is not a protocol error.
fn tls_error(e: std::io::Error) -> Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType,
        ) => Error::TlsCertificateError,
        Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(_) => Error::TlsProtocolError,
        None => Error::Tls(e),
    }
}

/// A response body that fails when the guest's `between-bytes-timeout`
/// passes without a frame.
struct Paced {
    body: hyper::body::Incoming,
    gap: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Paced {
    fn new(body: hyper::body::Incoming, gap: Duration) -> Paced {
        Paced {
            body,
            gap,
            timer: Box::pin(tokio::time::sleep(gap)),
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.gap;
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
