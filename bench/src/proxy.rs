//! A counting TCP proxy in front of an emulator: it forwards bytes unchanged and counts
//! the AWS operations of the HTTP/1.1 requests passing through, by the `X-Amz-Target`
//! header (JSON protocols: SQS, DynamoDB, DynamoDB Streams) or the `Action` parameter
//! of a form body (query protocol: SNS).
//!
//! Counting at the wire, outside the processes, needs no change to the binaries and
//! counts exactly what the emulator (and so AWS) would bill: SDK retries included.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Requests by operation name.
#[derive(Debug, Default, Clone)]
pub struct Counts(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counts {
    fn add(&self, operation: String) {
        if let Ok(mut counts) = self.0.lock() {
            *counts.entry(operation).or_default() += 1;
        }
    }

    /// A copy of the counts now.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// A listening proxy; its URL replaces the emulator's in a process's environment.
#[derive(Debug)]
pub struct Proxy {
    pub url: String,
    pub counts: Counts,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Result<Proxy> {
        let authority = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let upstream: SocketAddr = tokio::net::lookup_host(&authority)
            .await?
            .next()
            .with_context(|| format!("resolving {authority}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let counts = Counts::default();
        let task_counts = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counts = task_counts.clone();
                tokio::spawn(async move {
                    let _ = forward(client, upstream, counts).await;
                });
            }
        });
        Ok(Proxy { url, counts, task })
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, counts: Counts) -> Result<()> {
    client.set_nodelay(true)?;
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let responses = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut reader = BufReader::new(client_read);
    let mut head = Vec::with_capacity(2048);
    loop {
        head.clear();
        // The request line and headers, up to the blank line.
        loop {
            let before = head.len();
            let n = reader.read_until(b'\n', &mut head).await?;
            if n == 0 {
                responses.abort();
                return Ok(());
            }
            let line = &head[before..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head);
        let mut length = 0usize;
        let mut target = None;
        for line in text.lines().skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("x-amz-target") {
                    target = Some(value.rsplit('.').next().unwrap_or(value).to_owned());
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await?;
        let operation = target.unwrap_or_else(|| form_action(&body));
        counts.add(operation);
        server_write.write_all(&head).await?;
        server_write.write_all(&body).await?;
    }
}

/// The `Action=` parameter of a query-protocol body.
fn form_action(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .unwrap_or("unknown")
        .to_owned()
}
