//! A minimal HTTP/1.1 responder for the operator endpoints: `GET /metrics`,
//! `GET /healthz` and `GET /readyz`, one request per connection.
//!
//! - `/healthz` — 200 while the process runs (its runtime answers).
//! - `/readyz` — 200 only when every [`Check`] passes within [`CHECK_TIMEOUT`]; 503
//!   with one line per failing check otherwise (`NAME: failing`; why is logged at
//!   WARN, never sent: the endpoint is unauthenticated). The checks run at most once
//!   per [`READINESS_CACHE_TTL`], however many requests come: concurrent requests wait
//!   for the one run in flight and share its result.
//! - `/metrics` — the [`Registry`] in the OpenMetrics text format.
//!
//! The endpoints are unauthenticated, so the server protects the process from its
//! clients: at most [`MAX_CONNECTIONS`] at once (more are closed at once), a request
//! head must arrive within [`REQUEST_TIMEOUT`] and the response be taken within
//! [`WRITE_TIMEOUT`]. Those guards are the code; the HTTP is one request line and one
//! answer, so hyper's server half (not compiled into any binary; only its client is)
//! would add a dependency and still need them.

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
/// How long a client may take to send its request head (a slow client is cut off).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to read the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once; one more is closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a readiness result is reused: a flood of `/readyz` runs the checks (a
/// database round trip, an SQS call) at most once per this.
pub const READINESS_CACHE_TTL: Duration = Duration::from_secs(1);
/// The longest request head read; the endpoints take no body.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = crate::metrics::CONTENT_TYPE;

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

/// The last readiness verdict and when it was reached; the lock is held while the
/// checks run, so concurrent requests share one run.
type ReadinessCache = tokio::sync::Mutex<Option<(tokio::time::Instant, (u16, String))>>;

/// The served endpoints and the server's own state.
struct Served {
    endpoints: Endpoints,
    readiness: ReadinessCache,
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
    let served = Arc::new(Served {
        endpoints,
        readiness: tokio::sync::Mutex::new(None),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = shutdown.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        debug!(%peer, max = MAX_CONNECTIONS, "Operator endpoint busy; connection closed.");
                        drop(stream);
                        continue;
                    };
                    let served = Arc::clone(&served);
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, &served).await {
                            debug!(error = %e, "Operator endpoint request failed.");
                        }
                        drop(slot);
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

async fn handle(mut stream: TcpStream, served: &Served) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = match parse_request_line(&head) {
        Some(("GET", path)) => route(path, served).await,
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
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(written) => written,
        Err(_) => Ok(()),
    }
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

async fn route(path: &str, served: &Served) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (
            200,
            METRICS_CONTENT_TYPE,
            crate::metrics::render(&served.endpoints.registry),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let mut cached = served.readiness.lock().await;
            if let Some((at, verdict)) = cached.as_ref()
                && at.elapsed() < READINESS_CACHE_TTL
            {
                let (status, body) = verdict.clone();
                return (status, "text/plain", body);
            }
            let verdict = readiness(&served.endpoints.checks).await;
            *cached = Some((tokio::time::Instant::now(), verdict.clone()));
            (verdict.0, "text/plain", verdict.1)
        }
        _ => (404, "text/plain", "not found\n".to_owned()),
    }
}

/// Runs every check; the status and a body that names each check and says `ok` or
/// `failing`. Why a check failed is logged, never put in the body.
async fn readiness(checks: &[Check]) -> (u16, String) {
    let results = futures::future::join_all(checks.iter().map(|c| async {
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
                warn!(check = name, reason = %why, "Readiness check failed.");
                body.push_str(&format!("{name}: failing\n"));
            }
        }
    }
    (if ready { 200 } else { 503 }, body)
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
        let mut registry = Registry::default();
        let c: crate::metrics::Counter = crate::metrics::Counter::default();
        registry.register("things", "Things.", c.clone());
        c.inc_by(7);
        let endpoints = Endpoints {
            registry: Arc::new(registry),
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
        tokio::time::sleep(READINESS_CACHE_TTL).await;
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503 "), "{not_ready}");
        assert!(not_ready.ends_with("database: failing\n"), "{not_ready}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200 "));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("things_total 7\n"), "{metrics}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404 "));

        shutdown.cancel();
        task.await.unwrap();
    }

    async fn start(checks: Vec<Check>) -> (SocketAddr, CancellationToken) {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let endpoints = Endpoints {
            registry: Arc::new(Registry::default()),
            checks,
        };
        let shutdown = CancellationToken::new();
        serve(addr, endpoints, shutdown.clone()).await.unwrap();
        (addr, shutdown)
    }

    /// A check that counts its runs, takes 50 ms, and fails with an internal reason.
    fn counted(runs: &Arc<std::sync::atomic::AtomicUsize>) -> Check {
        let runs = Arc::clone(runs);
        Check::new("database", move || {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err("password authentication failed for user \"app\" at 10.1.2.3".to_owned())
            })
        })
    }

    #[tokio::test]
    async fn a_flood_of_readiness_requests_runs_the_checks_once_per_cache_window() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (addr, shutdown) = start(vec![counted(&runs)]).await;
        let mut flood = tokio::task::JoinSet::new();
        for _ in 0..20 {
            flood.spawn(async move { get(addr, "/readyz").await });
        }
        let mut answered = 0;
        while let Some(answer) = flood.join_next().await {
            let answer = answer.unwrap();
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
            answered += 1;
        }
        assert_eq!(answered, 20);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        // After the window, one more run.
        tokio::time::sleep(READINESS_CACHE_TTL).await;
        get(addr, "/readyz").await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_anonymous_client_never_sees_why_a_check_failed() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (addr, shutdown) = start(vec![counted(&runs)]).await;
        let answer = get(addr, "/readyz").await;
        assert!(answer.ends_with("\r\n\r\ndatabase: failing\n"), "{answer}");
        assert!(!answer.contains("password") && !answer.contains("10.1.2.3"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_slow_client_is_cut_off_and_does_not_hold_the_server() {
        let (addr, shutdown) = start(Vec::new()).await;
        // A slowloris: a byte now and then, never the end of the head.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let started = std::time::Instant::now();
        // Others are served meanwhile.
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200 "));
        let mut buf = [0u8; 64];
        let closed = loop {
            if slow.write_all(b"X").await.is_err() {
                break true;
            }
            match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => break false,
                Err(_) if started.elapsed() > REQUEST_TIMEOUT * 3 => break false,
                Err(_) => {}
            }
        };
        assert!(
            closed,
            "the slow client was still held after {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() < REQUEST_TIMEOUT * 3);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_the_server_recovers() {
        let (addr, shutdown) = start(Vec::new()).await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server accept them all.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut out)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "one connection over the limit was served: {read:?} {}",
            String::from_utf8_lossy(&out)
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200 "));
        shutdown.cancel();
    }
}
