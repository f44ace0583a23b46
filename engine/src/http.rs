//! The HTTP endpoint of a running pipeline (`tidemark run --http ADDR` or
//! `observability.http`): `/metrics` (Prometheus text format), `/healthz` (the process
//! answers), `/readyz` (recovered and committing, see [`crate::health`]) and `/` (the status
//! page). One small server thread (`tiny_http`), apart from the pipeline's runtime: a scrape
//! never waits for the run loop, and the run loop never waits for a scrape beyond the short
//! `live` lock of [`crate::metrics`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Response, Server};
use tracing::{info, warn};

use crate::metrics::{self, Metrics};
use crate::status_page;

/// The endpoint could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {addr} (observability.http / --http): {message}")]
pub struct HttpError {
    /// The address asked for.
    pub addr: String,
    /// Why.
    pub message: String,
}

/// The running server; stopped (and its thread joined) when dropped, and its address free
/// again by the time the drop returns (a worker's next run binds it at once).
pub struct HttpServer {
    /// `None` only while dropping.
    server: Option<Arc<Server>>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

/// Longest a dropped server waits for its address to be free. Why it waits at all: `tiny_http`
/// accepts on a thread of its own that lets the listening socket go only some time after the
/// server is dropped, and a worker's next run (after a rebalance) binds the same address at
/// once: that bind could fail with "address in use", and the worker exit (a unit test binding
/// again right after a drop failed at its first try; a worker's exit after a rebalance was
/// seen once in testing, without a log to show its cause).
const RELEASE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

impl HttpServer {
    /// The address it listens on (the real port when `:0` was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.unblock();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            // The last handle: tiny_http now tells its accepting thread to stop.
            drop(server);
        }
        wait_until_free(self.addr, RELEASE_PATIENCE);
    }
}

/// Waits while `addr` is still in use (then lets it go at once), at most `patience`; warns if
/// it stays in use (another process may have taken it: the next bind will say). Any other
/// bind error ends the wait at once: only "in use" is the old socket still open.
fn wait_until_free(addr: SocketAddr, patience: std::time::Duration) {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return,
            Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
                warn!(%addr, "http: cannot tell whether the stopped server's address is free: {e}");
                return;
            }
            Err(e) if std::time::Instant::now() >= deadline => {
                warn!(%addr, "http: the address is still in use {patience:?} after the server stopped: {e}");
                return;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
}

/// Starts serving `metrics` on `addr`.
pub fn serve(addr: &str, metrics: &'static Metrics) -> Result<HttpServer, HttpError> {
    let fail = |message: String| HttpError {
        addr: addr.to_string(),
        message,
    };
    let server = Arc::new(Server::http(addr).map_err(|e| fail(e.to_string()))?);
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| fail("not an IP address".into()))?;
    let serving = Arc::clone(&server);
    let thread = std::thread::Builder::new()
        .name("tidemark-http".into())
        .spawn(move || {
            for request in serving.incoming_requests() {
                let response = respond(request.method(), request.url(), metrics);
                if let Err(e) = request.respond(response) {
                    warn!("http: answering a request failed: {e}");
                }
            }
        })
        .map_err(|e| fail(e.to_string()))?;
    info!(
        addr = %bound,
        "serving /metrics, /healthz, /readyz and the status page at http://{bound}/"
    );
    Ok(HttpServer {
        server: Some(server),
        thread: Some(thread),
        addr: bound,
    })
}

fn text(status: u16, body: String, content_type: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_string(body).with_status_code(status);
    for (name, value) in [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ] {
        // Both are ASCII constants of this module, so this always succeeds.
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    response
}

/// The answer to one request.
fn respond(
    method: &Method,
    url: &str,
    metrics: &'static Metrics,
) -> Response<std::io::Cursor<Vec<u8>>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if !matches!(method, Method::Get | Method::Head) {
        return text(405, "only GET and HEAD\n".into(), PLAIN);
    }
    let path = url.split('?').next().unwrap_or(url);
    match path {
        "/metrics" => text(200, metrics.render(), metrics::CONTENT_TYPE),
        "/healthz" => text(200, "ok\n".into(), PLAIN),
        "/readyz" => {
            let health = metrics.health();
            text(
                if health.ready { 200 } else { 503 },
                format!("{health}\n"),
                PLAIN,
            )
        }
        "/" => {
            let live = metrics.snapshot();
            let health = metrics.health();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            text(
                200,
                status_page::render(&live, metrics.info(), &health, now),
                "text/html; charset=utf-8",
            )
        }
        _ => text(
            404,
            "not found: try /, /metrics, /healthz or /readyz\n".into(),
            PLAIN,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::serve;
    use crate::metrics::{self, RunInfo};

    /// A run that ends lets the next run of the same process serve on the same address at
    /// once, as a worker's runs across a rebalance do (before the fix: "address in use" at the
    /// first round).
    #[test]
    fn the_same_address_serves_again_right_after_a_server_stops() {
        let metrics = metrics::install(RunInfo {
            pipeline_id: "http-test".into(),
            interval: Duration::from_secs(1),
            commit_stall_after: Duration::from_secs(60),
            watermark_stuck_after: Duration::from_secs(60),
            dedup: false,
        });
        let first = serve("127.0.0.1:0", metrics).unwrap();
        let addr = first.addr().to_string();
        drop(first);
        for round in 0..300 {
            let server = serve(&addr, metrics).unwrap_or_else(|e| panic!("round {round}: {e}"));
            drop(server);
        }
    }
}
