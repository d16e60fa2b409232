//! HTTP upstreams on 127.0.0.1 for a component's outgoing requests: each
//! runs on a thread of the test process and ends with it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;

/// An upstream that answers every request with one status and body, and
/// keeps the request heads it saw.
pub struct Upstream {
    /// The port it listens on.
    pub port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    /// Answers `200 OK` with `body`.
    pub fn start(body: &str) -> Upstream {
        Upstream::answering(200, body)
    }

    /// Answers `status` with `body`.
    pub fn answering(status: u16, body: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let body = body.to_string();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                log.lock().unwrap().push(head);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} Upstream\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Upstream { port, seen }
    }

    /// The request heads it saw, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A port that accepts connections and never answers, as long as the
/// listener lives.
pub fn silent() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}
