//! [`KeepAlive`]: one keep-alive HTTP/1.1 connection (hyper's client connection, Nagle off),
//! opened on first use and again after it closed or failed. The benchmarks that send requests
//! one at a time per connection (`http`, `replication`) measure through it.

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub struct KeepAlive {
    pub addr: SocketAddr,
    /// The `Host` header for requests to `addr`.
    pub host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl KeepAlive {
    /// Not connected yet: the first request connects.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            sender: None,
        }
    }

    /// Drops the connection (after a request timed out: its answer may still come); the next
    /// request reconnects.
    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// Sends `req` and reads the whole answer. On a transport error the connection is dropped
    /// (the next request reconnects).
    pub async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        let r = async {
            let resp = self.sender().await?.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        }
        .await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let s = self.sender.as_mut().context("no connection")?;
        s.ready().await?;
        Ok(s)
    }
}
