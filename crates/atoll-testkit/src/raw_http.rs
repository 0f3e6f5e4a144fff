//! HTTP/1.1 over a raw socket, for tests of what a server does with requests no well-behaved
//! client sends: bodies trickled in slowly, answers expected before the body is read,
//! `Expect: 100-continue`, malformed request lines.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error.code` of an error body (empty when there is none).
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// What [`read_reply`] does with a `100 Continue` head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continue {
    /// Reads past it to the final response.
    Skip,
    /// Returns it, so the caller sees that one came.
    Return,
}

/// Reads one complete response (its head, then a body of its `Content-Length`) within `limit`.
pub async fn read_reply(
    sock: &mut TcpStream,
    limit: Duration,
    continues: Continue,
) -> Result<RawReply, String> {
    let read = async {
        let mut buf = Vec::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let mut lines = head.split("\r\n");
                let first = lines.next().unwrap_or_default().to_string();
                let status: u16 = first
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad status line {first:?}"))?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                if status == 100 && continues == Continue::Skip {
                    buf.drain(..end + 4);
                    continue;
                }
                let len: usize = if status == 100 {
                    0
                } else {
                    headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .ok_or("no content-length")?
                };
                while buf.len() < end + 4 + len {
                    let mut chunk = [0u8; 8192];
                    match sock.read(&mut chunk).await {
                        Ok(0) => return Err("EOF inside the body".to_string()),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) => return Err(format!("reading the body: {e}")),
                    }
                }
                let body = buf[end + 4..end + 4 + len].to_vec();
                return Ok(RawReply {
                    status,
                    headers,
                    body,
                });
            }
            let mut chunk = [0u8; 8192];
            match sock.read(&mut chunk).await {
                Ok(0) => return Err(format!("EOF before a response head ({} bytes)", buf.len())),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading the head: {e}")),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| format!("no complete response within {limit:?}"))?
}

/// A request whose body a slow client trickles in ([`slow_upload`]).
#[derive(Clone, Debug)]
pub struct Upload<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Extra header lines, each ending in `\r\n`.
    pub extra: &'a str,
    /// Body bytes, all `fill`.
    pub total: usize,
    pub fill: u8,
    /// `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
    /// Read the response after the first chunk, then send the rest; otherwise send the whole
    /// body first.
    pub read_early: bool,
}

/// Sends one request with an answer expected before the body is read: its body goes in chunks
/// of 16 KiB, 2 ms apart. Every send must succeed and the response must be complete (within
/// 10 s; a `100 Continue` is read past).
pub async fn slow_upload(addr: SocketAddr, u: &Upload<'_>) -> Result<RawReply, String> {
    const CHUNK: usize = 16 << 10;
    const LIMIT: Duration = Duration::from_secs(10);
    let mut sock = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let framing = if u.chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {}", u.total)
    };
    let head = format!(
        "{} {} HTTP/1.1\r\nhost: test\r\n{}{framing}\r\n\r\n",
        u.method, u.path, u.extra
    );
    sock.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("sending the head: {e}"))?;
    let mut sent = 0;
    let mut reply = None;
    while sent < u.total {
        let n = CHUNK.min(u.total - sent);
        let mut data = Vec::with_capacity(n + 16);
        if u.chunked {
            data.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        }
        data.extend(std::iter::repeat_n(u.fill, n));
        if u.chunked {
            data.extend_from_slice(b"\r\n");
        }
        sock.write_all(&data)
            .await
            .map_err(|e| format!("sending the body: {e} after {sent} of {} bytes", u.total))?;
        sent += n;
        if u.read_early && reply.is_none() {
            reply = Some(read_reply(&mut sock, LIMIT, Continue::Skip).await?);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if u.chunked {
        sock.write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| format!("sending the last chunk: {e}"))?;
    }
    match reply {
        Some(r) => Ok(r),
        None => read_reply(&mut sock, LIMIT, Continue::Skip).await,
    }
}

/// Sends raw request bytes and reads one complete response (10 s).
pub async fn raw_request(addr: SocketAddr, request: &str) -> Result<RawReply, String> {
    let mut sock = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    sock.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending: {e}"))?;
    read_reply(&mut sock, Duration::from_secs(10), Continue::Skip).await
}
