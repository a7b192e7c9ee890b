//! A minimal HTTP/1.1 responder for the operator endpoints: `GET /metrics`,
//! `GET /healthz` and `GET /readyz`, one request per connection.
//!
//! - `/healthz` — 200 while the process runs (its runtime answers).
//! - `/readyz` — 200 only when every [`Check`] passes within [`CHECK_TIMEOUT`]; 503
//!   with one line per failing check otherwise. Checks run on each request.
//! - `/metrics` — the [`Registry`] in the Prometheus text format.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Registry;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read; the endpoints take no body.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A readiness check: a name and a function returning `Err(why)` when the dependency
/// does not answer.
pub struct Check {
    pub name: &'static str,
    pub run: Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check").field("name", &self.name).finish()
    }
}

impl Check {
    /// A check named `name` that runs `f`.
    pub fn new<F>(name: &'static str, f: F) -> Check
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        Check {
            name,
            run: Box::new(f),
        }
    }
}

/// What the server serves.
#[derive(Debug)]
pub struct Endpoints {
    pub registry: Arc<Registry>,
    pub checks: Vec<Check>,
}

/// Binds `addr` and serves until `shutdown` is cancelled. The listener is bound before
/// this returns, so a bad or busy address fails at start.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "Serving /metrics, /healthz and /readyz.");
    let endpoints = Arc::new(endpoints);
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = shutdown.cancelled() => break,
            };
            match accepted {
                Ok((stream, _)) => {
                    let endpoints = Arc::clone(&endpoints);
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, &endpoints).await {
                            debug!(error = %e, "Operator endpoint request failed.");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "Accepting an operator endpoint connection failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn handle(mut stream: TcpStream, endpoints: &Endpoints) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = match parse_request_line(&head) {
        Some(("GET", path)) => route(path, endpoints).await,
        Some(_) => (405, "text/plain", "only GET is served\n".to_owned()),
        None => (400, "text/plain", "bad request\n".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The method and path (without query) of a request head, if it has a request line.
pub fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next()?.strip_prefix("HTTP/")?;
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

async fn route(path: &str, endpoints: &Endpoints) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (200, METRICS_CONTENT_TYPE, endpoints.registry.render()),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let results = futures::future::join_all(endpoints.checks.iter().map(|c| async {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (c.run)()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
                };
                (c.name, outcome)
            }))
            .await;
            let mut body = String::new();
            let mut ready = true;
            for (name, outcome) in results {
                match outcome {
                    Ok(()) => body.push_str(&format!("{name}: ok\n")),
                    Err(why) => {
                        ready = false;
                        body.push_str(&format!("{name}: {}\n", why.replace('\n', " ")));
                    }
                }
            }
            if ready {
                (200, "text/plain", body)
            } else {
                (503, "text/plain", body)
            }
        }
        _ => (404, "text/plain", "not found\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_gives_method_and_path_without_query() {
        assert_eq!(
            parse_request_line("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line("garbage\r\n\r\n"), None);
        assert_eq!(parse_request_line("GET /x SPDY\r\n"), None);
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readiness_follows_its_checks_and_metrics_are_served() {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = Arc::clone(&flag);
        let registry = Arc::new(Registry::default());
        let c = registry.counter("things_total", "Things.", &[]);
        registry.inc_by(c, &[], 7);
        let endpoints = Endpoints {
            registry,
            checks: vec![Check::new("database", move || {
                let up = f.load(std::sync::atomic::Ordering::SeqCst);
                Box::pin(async move {
                    if up {
                        Ok(())
                    } else {
                        Err("refused".to_owned())
                    }
                })
            })],
        };
        // Port 0 then ask the OS which one: bind a probe listener to learn a free port.
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let shutdown = CancellationToken::new();
        let task = serve(addr, endpoints, shutdown.clone()).await.unwrap();

        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200 "), "{ready}");
        assert!(ready.ends_with("database: ok\n"), "{ready}");
        flag.store(false, std::sync::atomic::Ordering::SeqCst);
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503 "), "{not_ready}");
        assert!(not_ready.ends_with("database: refused\n"), "{not_ready}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200 "));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("things_total 7\n"), "{metrics}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404 "));

        shutdown.cancel();
        task.await.unwrap();
    }
}
