//! Helpers for the operator's view tests: the test's database behind a proxy that can
//! cut it (to take PostgreSQL away from one process without touching the shared
//! server), a bare HTTP GET, and Prometheus text parsing.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Stack;
use crate::outage::CutProxy;

impl Stack {
    /// The test's database behind a [`CutProxy`]: the proxy and the connect options
    /// that go through it.
    pub async fn database_behind_proxy(&self) -> Result<(CutProxy, PgConnectOptions)> {
        let pg = PgConnectOptions::from_str(&self.database_url)?;
        let upstream = tokio::net::lookup_host((pg.get_host(), pg.get_port()))
            .await?
            .next()
            .context("PostgreSQL's address")?;
        let proxy = CutProxy::to(upstream).await?;
        let through = pg.host("127.0.0.1").port(proxy.addr.port());
        Ok((proxy, through))
    }
}

/// `GET path` on `addr`: the status code and the body. Bounded by a 10 s timeout.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("GET timed out")??;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The value of one sample in a Prometheus text exposition: `series` is the metric
/// name with its labels exactly as rendered (`name{reason="x"}`), or a bare name.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
