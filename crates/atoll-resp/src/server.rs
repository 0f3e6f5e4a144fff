//! The listener: one tokio task per connection, bounded buffers, bounded pipelining, a clean
//! `-ERR Protocol error` and close on a frame it does not take.

use crate::command;
use crate::exec::{self, Host, Pipelined, Session, run};
use crate::frame::{Limits, Next, next_command};
use crate::reply::Reply;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Replies are sent at least every this many pipelined commands.
pub const MAX_PIPELINE: usize = 1024;
/// Replies are sent once this many bytes of them are waiting.
const FLUSH_BYTES: usize = 64 << 10;
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 << 10;
/// How long shutdown waits for connections to finish their current command.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Errors of the listener, with stable codes.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("cannot listen on {addr} (RESP): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("RESP listener failed: {0}")]
    Io(#[from] std::io::Error),
}

impl RespError {
    /// Stable code (`ATOLL-RESP-...`).
    pub fn code(&self) -> &'static str {
        match self {
            RespError::Bind { .. } => "ATOLL-RESP-BIND",
            RespError::Io(_) => "ATOLL-RESP-IO",
        }
    }
}

/// A bound RESP listener.
pub struct RespListener {
    listener: TcpListener,
}

impl RespListener {
    pub async fn bind(addr: SocketAddr) -> Result<RespListener, RespError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RespError::Bind { addr, source })?;
        Ok(RespListener { listener })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, RespError> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `stop` turns true, then stops accepting, lets each connection finish the
    /// command it runs (up to a few seconds) and returns.
    pub async fn serve<H: Host>(
        self,
        host: Arc<H>,
        limits: Limits,
        max_connections: usize,
        mut stop: watch::Receiver<bool>,
    ) {
        let open = Arc::new(AtomicUsize::new(0));
        let ids = AtomicU64::new(1);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                () = stopped(&mut stop) => break,
            };
            // Reap finished connections as we go.
            while tasks.try_join_next().is_some() {}
            let (mut stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "RESP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if open.load(Ordering::Relaxed) >= max_connections {
                tracing::warn!(%peer, max_connections, "RESP connection refused: too many open");
                tasks.spawn(async move {
                    let _ = stream
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                    let _ = stream.shutdown().await;
                });
                continue;
            }
            let _ = stream.set_nodelay(true);
            let n = open.fetch_add(1, Ordering::Relaxed) + 1;
            host.on_connections(n);
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let (host, open, stop) = (host.clone(), open.clone(), stop.clone());
            tasks.spawn(async move {
                connection(&*host, stream, &limits, id, stop).await;
                let n = open.fetch_sub(1, Ordering::Relaxed) - 1;
                host.on_connections(n);
            });
        }
        drop(self.listener);
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.shutdown().await;
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves one connection until the client closes it, sends `QUIT`, sends a frame this front does
/// not take (answered `-ERR Protocol error: ...`, then closed) or `stop` turns true (between
/// commands). Never panics on anything the client sends.
pub async fn connection<H: Host, S: AsyncRead + AsyncWrite + Unpin>(
    host: &H,
    mut stream: S,
    limits: &Limits,
    id: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut session = Session::new(id);
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    // Pipelined writes submitted and not yet answered, in command order (`exec::pipelined`).
    let mut pending: Vec<Pipelined> = Vec::new();
    loop {
        // Every complete command in the buffer, in order; replies sent in batches.
        let mut pos = 0;
        let mut since_flush = 0;
        let mut close = false;
        loop {
            match next_command(&buf[pos..], limits) {
                Next::Incomplete => break,
                Next::Skip { used } => pos += used,
                Next::Invalid(why) => {
                    tracing::debug!(id, why, "RESP protocol error: closing the connection");
                    answer(host, &mut pending, session.proto, &mut out).await;
                    host.on_command("unknown", "protocol-error");
                    Reply::err(format!("Protocol error: {why}")).encode(session.proto, &mut out);
                    close = true;
                    break;
                }
                Next::Command { args, used } => {
                    pos += used;
                    let label = args.first().map_or("unknown", |n| command::label(n));
                    let parsed = command::parse(args);
                    if let Ok(cmd) = &parsed
                        && let Some(p) = exec::pipelined(host, &session, label, cmd)
                    {
                        // Submitted: answered with the next command that is not, or once the
                        // buffer holds no more complete commands.
                        pending.push(p);
                        if pending.len() >= MAX_PIPELINE {
                            since_flush +=
                                answer(host, &mut pending, session.proto, &mut out).await;
                        }
                    } else {
                        // Every write before it is answered first: it sees them.
                        since_flush += answer(host, &mut pending, session.proto, &mut out).await;
                        let step = match parsed {
                            Ok(cmd) => run(host, &mut session, label, cmd).await,
                            Err(r) => {
                                host.on_command(
                                    label,
                                    if label == "unknown" {
                                        "unknown"
                                    } else {
                                        "error"
                                    },
                                );
                                crate::exec::Step {
                                    reply: r,
                                    close: false,
                                }
                            }
                        };
                        step.reply.encode(session.proto, &mut out);
                        since_flush += 1;
                        if step.close {
                            close = true;
                            break;
                        }
                    }
                    if out.len() >= FLUSH_BYTES || since_flush >= MAX_PIPELINE {
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                        since_flush = 0;
                    }
                }
            }
        }
        answer(host, &mut pending, session.proto, &mut out).await;
        buf.drain(..pos);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close || *stop.borrow() {
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
            return;
        }
        let read = tokio::select! {
            r = stream.read(&mut chunk) => r,
            () = stopped(&mut stop) => {
                let _ = stream.shutdown().await;
                return;
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Waits for the pipelined writes submitted, in order, and encodes their replies; how many.
async fn answer<H: Host>(
    host: &H,
    pending: &mut Vec<Pipelined>,
    proto: u8,
    out: &mut Vec<u8>,
) -> usize {
    let n = pending.len();
    for p in pending.drain(..) {
        p.reply(host).await.encode(proto, out);
    }
    n
}
