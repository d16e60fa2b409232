//! A deliberately small HTTP/1.1 client: the tests need exact control over
//! what goes on the wire (chunked bodies, odd headers), and no more.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields, names lower-cased; repeated fields keep every value.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(|s| s.as_str())
    }

    /// Every value of header `name`.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|v| v.iter().map(|s| s.as_str()).collect())
            .unwrap_or_default()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request under construction.
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    chunk_size: Option<usize>,
}

impl Request {
    /// `method path`.
    pub fn new(method: &str, path: &str) -> Self {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
            chunk_size: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body, sent with Content-Length.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sends the body with chunked transfer encoding, in chunks of `size`.
    pub fn chunked(mut self, size: usize) -> Self {
        self.chunk_size = Some(size);
        self
    }

    /// Sends the request to 127.0.0.1:`port` on a new connection and reads
    /// the whole response.
    pub fn send(&self, port: u16) -> std::io::Result<Response> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n",
            self.method, self.path
        );
        for (n, v) in &self.headers {
            head += &format!("{n}: {v}\r\n");
        }
        match (&self.body, self.chunk_size) {
            (Some(_), Some(_)) => head += "Transfer-Encoding: chunked\r\n",
            (Some(b), None) => head += &format!("Content-Length: {}\r\n", b.len()),
            _ => {}
        }
        head += "\r\n";
        s.write_all(head.as_bytes())?;
        if let Some(body) = &self.body {
            match self.chunk_size {
                Some(size) => {
                    for chunk in body.chunks(size.max(1)) {
                        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                        s.write_all(chunk)?;
                        s.write_all(b"\r\n")?;
                    }
                    s.write_all(b"0\r\n\r\n")?;
                }
                None => s.write_all(body)?,
            }
        }
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        parse(&raw, self.method == "HEAD")
    }
}

/// `GET path`.
pub fn get(port: u16, path: &str) -> Response {
    Request::new("GET", path)
        .send(port)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn parse(raw: &[u8], head_only: bool) -> std::io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(status_line))?;
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            headers
                .entry(n.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    let rest = &raw[end + 4..];
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|t| t.eq_ignore_ascii_case("chunked")));
    let body = if head_only {
        rest.to_vec()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&data[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        data = &data[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(bad("short chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A request on a raw connection (HTTP/1.1, kept alive, so that the
/// response is chunked unless it says its length), read to its end; with
/// the time the first and the last byte came.
pub fn raw(port: u16, request: &str) -> (Vec<u8>, Duration, Duration) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    c.write_all(request.as_bytes()).unwrap();
    let (mut out, mut buf) = (Vec::new(), [0u8; 65536]);
    let mut first = None;
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                first.get_or_insert_with(|| started.elapsed());
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        }
    }
    (out, first.unwrap_or_default(), started.elapsed())
}
