//! A TCP proxy in front of an emulator that a test can cut, for an SNS/SQS outage the
//! binaries see while the emulator itself (and its state) lives on: moto keeps its
//! queues in memory, so stopping it would end the test, not simulate an outage.
//!
//! While cut, the proxy closes every open connection and accepts new ones only to close
//! them at once, as a failed load balancer or a network partition does to a client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A listening proxy; its URL replaces the emulator's in the binaries' environment.
#[derive(Debug)]
pub struct CutProxy {
    pub url: String,
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut, so open connections close.
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards to `target_url` (`http://host:port`).
    ///
    /// # Errors
    /// The target URL has no `host:port`, or no port could be bound.
    pub async fn start(target_url: &str) -> Result<CutProxy> {
        let target: SocketAddr = target_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("{target_url} is not http://ip:port"))?;
        CutProxy::to(target).await
    }

    /// Listens on a free loopback port and forwards to `target`.
    ///
    /// # Errors
    /// No port could be bound.
    pub async fn to(target: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let cut = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let (flag, sender) = (Arc::clone(&cut), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut_seen = sender.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_seen.changed() => {}
                    }
                });
            }
        });
        Ok(CutProxy {
            url,
            addr,
            cut,
            cuts,
            task,
        })
    }

    /// Starts the outage: open connections close, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Ends the outage.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cuts.send_modify(|n| *n += 1);
    }
}

/// A TCP proxy to an upstream (`host:port`) that can freeze: from
/// [`FreezeProxy::freeze`] on it forwards nothing more in either direction on any
/// connection, old or new, and closes none (a half-open peer, one that stopped
/// answering mid-run behind a pooled connection), so a call through it hangs.
#[derive(Debug)]
pub struct FreezeProxy {
    pub addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezeProxy {
    /// Listens on a free loopback port.
    pub async fn start(upstream: impl std::fmt::Display) -> Result<FreezeProxy> {
        FreezeProxy::start_on(0, upstream).await
    }

    /// Listens on loopback port `port` (0: any free one).
    pub async fn start_on(port: u16, upstream: impl std::fmt::Display) -> Result<FreezeProxy> {
        let upstream = upstream.to_string();
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = Arc::clone(&flag);
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if flag.load(Ordering::SeqCst) {
                        // Held open, never answered.
                        let _held = client;
                        std::future::pending::<()>().await;
                        return;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, Arc::clone(&flag)),
                        pump(server_read, client_write, flag)
                    );
                });
            }
        });
        Ok(FreezeProxy { addr, frozen, task })
    }

    /// `http://` and the proxy's address: the endpoint URL to hand a binary.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on nothing is forwarded, and nothing is closed.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes until end of stream, or holds both ends forever once `frozen` is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
