//! [`S3FaultProxy`]: a small HTTP proxy on a loopback port in front of the S3-compatible test
//! server that injects the faults a real object store shows — `503 SlowDown`, `500
//! InternalError`, a connection dropped before the request reaches the store, and one dropped
//! after the store applied it (the answer is lost: the client must find out what happened) —
//! for a configurable share of requests; or that strips `If-None-Match` from every request (a
//! store without conditional writes).
//!
//! One request per client connection: the proxy asks the server to close after answering and
//! closes the client's connection with it, so it never has to frame responses.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::S3Server;

/// A fault the proxy injects instead of (or after) forwarding a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S3Fault {
    /// `503 Slow Down` (S3's throttling answer), the request not forwarded.
    SlowDown,
    /// `500 Internal Error`, the request not forwarded.
    InternalError,
    /// The connection closed without an answer, the request not forwarded.
    DropBeforeForward,
    /// The request forwarded and applied by the store, then the connection closed without
    /// passing the answer on.
    DropAfterForward,
}

/// What the proxy does to the requests through it.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The share (0..=1) of requests answered with a fault.
    pub share: f64,
    /// The faults injected, in turn.
    pub faults: Vec<S3Fault>,
    /// Remove `If-None-Match` from every request: the store then overwrites where it should
    /// refuse (a store without conditional writes).
    pub strip_conditional: bool,
    /// Seed of the choice of faulted requests.
    pub seed: u64,
    /// The first PUT of each Delta commit `_delta_log/<version>.json` with version
    /// 1..=this-many is forwarded and lands, and its answer is lost (the connection dropped):
    /// the writer cannot tell from the answer whether its commit landed (its retry finds the
    /// version taken).
    pub lose_commit_answers: u64,
}

impl FaultPlan {
    /// Every kind of transient fault, for `share` of the requests.
    pub fn transient(share: f64, seed: u64) -> Self {
        Self {
            share,
            faults: vec![
                S3Fault::SlowDown,
                S3Fault::InternalError,
                S3Fault::DropBeforeForward,
                S3Fault::DropAfterForward,
            ],
            strip_conditional: false,
            seed,
            lose_commit_answers: 0,
        }
    }

    /// No faults; `If-None-Match` stripped from every request.
    pub fn without_conditional_writes() -> Self {
        Self {
            share: 0.0,
            faults: Vec::new(),
            strip_conditional: true,
            seed: 0,
            lose_commit_answers: 0,
        }
    }
}

/// What went through the proxy so far.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    /// Requests seen.
    pub requests: AtomicU64,
    /// Requests answered with an injected fault, per [`S3Fault`] (in declaration order).
    pub faults: [AtomicU64; 4],
    /// Requests a fault hit whose method was PUT (uploads, commits) or POST (multipart).
    pub faulted_writes: AtomicU64,
    /// Requests that change the store (PUT, POST, DELETE) forwarded to it.
    pub writes: AtomicU64,
    /// Multipart uploads started (`POST ...?uploads`) and completed (`POST ...?uploadId=`).
    pub multipart_started: AtomicU64,
    /// See [`Self::multipart_started`].
    pub multipart_completed: AtomicU64,
    /// Delta commits forwarded whose answer was dropped ([`FaultPlan::lose_commit_answers`]).
    pub lost_commit_answers: AtomicU64,
    /// The commit versions whose answer was dropped.
    lost_versions: std::sync::Mutex<std::collections::BTreeSet<u64>>,
}

impl ProxyCounts {
    /// The injected faults in total.
    pub fn total_faults(&self) -> u64 {
        self.faults.iter().map(|f| f.load(Ordering::Relaxed)).sum()
    }
}

/// The fault-injecting proxy; stops accepting when dropped.
pub struct S3FaultProxy {
    port: u16,
    upstream: S3Server,
    counts: Arc<ProxyCounts>,
    stop: Arc<AtomicBool>,
}

impl S3FaultProxy {
    /// Starts the proxy on a free loopback port in front of `server`.
    pub fn start(server: &S3Server, plan: FaultPlan) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the S3 proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream_addr = server
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let counts = Arc::new(ProxyCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            let plan = Arc::new(plan);
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let n = c.requests.fetch_add(1, Ordering::Relaxed);
                let (plan, c, up) = (plan.clone(), c.clone(), upstream_addr.clone());
                std::thread::spawn(move || {
                    let fault = choose(&plan, n);
                    let _ = serve(conn, &up, &plan, fault, &c);
                });
            }
        });
        Self {
            port,
            upstream: server.clone(),
            counts,
            stop,
        }
    }

    /// The proxy as an [`S3Server`]: same buckets, the proxy's endpoint.
    pub fn server(&self) -> S3Server {
        S3Server {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            buckets: self.upstream.buckets.clone(),
        }
    }

    /// What went through so far.
    pub fn counts(&self) -> &ProxyCounts {
        &self.counts
    }
}

impl Drop for S3FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The fault for request `n`, if any (a hash of seed and `n` against the share).
fn choose(plan: &FaultPlan, n: u64) -> Option<S3Fault> {
    if plan.faults.is_empty() || plan.share <= 0.0 {
        return None;
    }
    let mut x = plan.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
    (unit < plan.share).then(|| plan.faults[(x % plan.faults.len() as u64) as usize])
}

/// Reads a request head (through the blank line) from `conn`: the head and the body bytes read
/// past it.
fn read_head(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves one request on `conn`.
fn serve(
    mut conn: TcpStream,
    upstream: &str,
    plan: &FaultPlan,
    fault: Option<S3Fault>,
    counts: &ProxyCounts,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (head, mut body) = read_head(&mut conn)?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<&str> = lines.collect();
    let header = |name: &str| {
        headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let commit_version = if request_line.starts_with("PUT ") {
        request_line
            .split_whitespace()
            .nth(1)
            .and_then(|target| target.split('?').next())
            .and_then(|path| path.rsplit_once("/_delta_log/"))
            .and_then(|(_, name)| name.strip_suffix(".json"))
            .filter(|v| v.len() == 20 && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
    } else {
        None
    };
    let fault = match (fault, commit_version) {
        (None, Some(v)) if (1..=plan.lose_commit_answers).contains(&v) => {
            let first = counts
                .lost_versions
                .lock()
                .map(|mut lost| lost.insert(v))
                .unwrap_or(false);
            if first {
                counts.lost_commit_answers.fetch_add(1, Ordering::Relaxed);
                Some(S3Fault::DropAfterForward)
            } else {
                None
            }
        }
        (other, _) => other,
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // The whole body first: a fault answers a complete request, as a server would.
    let mut chunk = [0u8; 65536];
    while body.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if let Some(f) = fault {
        counts.faults[f as usize].fetch_add(1, Ordering::Relaxed);
        if request_line.starts_with("PUT") || request_line.starts_with("POST") {
            counts.faulted_writes.fetch_add(1, Ordering::Relaxed);
        }
    }
    let answer = |conn: &mut TcpStream, status: &str, code: &str| {
        let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>");
        let text = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        );
        let _ = conn.write_all(text.as_bytes());
        let _ = conn.shutdown(Shutdown::Both);
    };
    match fault {
        Some(S3Fault::SlowDown) => {
            answer(&mut conn, "503 Slow Down", "SlowDown");
            return Ok(());
        }
        Some(S3Fault::InternalError) => {
            answer(&mut conn, "500 Internal Server Error", "InternalError");
            return Ok(());
        }
        Some(S3Fault::DropBeforeForward) => {
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        _ => {}
    }
    if ["PUT ", "POST ", "DELETE "]
        .iter()
        .any(|m| request_line.starts_with(m))
    {
        counts.writes.fetch_add(1, Ordering::Relaxed);
    }
    if request_line.starts_with("POST ") {
        let target = request_line.split_whitespace().nth(1).unwrap_or_default();
        let query = target.split_once('?').map_or("", |(_, q)| q);
        if query
            .split('&')
            .any(|kv| kv == "uploads" || kv == "uploads=")
        {
            counts.multipart_started.fetch_add(1, Ordering::Relaxed);
        } else if query.split('&').any(|kv| kv.starts_with("uploadId=")) {
            counts.multipart_completed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    let mut out = format!("{request_line}\r\n");
    for h in &headers {
        let name = h.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("connection")
            || (plan.strip_conditional && name.eq_ignore_ascii_case("if-none-match"))
        {
            continue;
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    if fault == Some(S3Fault::DropAfterForward) {
        let _ = conn.shutdown(Shutdown::Both);
        return Ok(());
    }
    conn.write_all(&response)?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_of_faulted_requests_is_about_the_plan() {
        let plan = FaultPlan::transient(0.2, 7);
        let hits = (0..10_000).filter(|n| choose(&plan, *n).is_some()).count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
        let kinds: std::collections::HashSet<_> =
            (0..10_000).filter_map(|n| choose(&plan, n)).collect();
        assert_eq!(kinds.len(), 4);
        assert!((0..1000).all(|n| choose(&FaultPlan::without_conditional_writes(), n).is_none()));
    }
}
