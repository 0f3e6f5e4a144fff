//! The proxy's keep-alive connections to one region: plain hyper HTTP/1 connections
//! (`hyper::client::conn::http1`), kept idle on a stack (the most recently used first) and
//! reused while they are open and ready.
//!
//! It replaces hyper-util's pooled client, whose checkout, per-request pool bookkeeping and
//! boxed futures cost CPU on every proxied request (`docs/design/router-proxy.md`). What the
//! proxy needs is narrower: one address per region, HTTP/1.1 only, no TLS (regions' client APIs
//! are plain HTTP), and to know whether a request reached the region:
//!
//! - a connection that cannot be made ([`Pool::connect`]) never carried the request;
//! - a pooled connection that turns out closed before the request was written (hyper hands the
//!   request back) is replaced by a new connection once: the request never left ([`send`]);
//! - anything after the request was written is the caller's "may have reached the region".
//!
//! A connection goes back to the stack only when its answer has been read to the end and hyper
//! says it is ready for the next request; one that is not ready yet waits in a small task until
//! it is (or closes). Idle connections older than the idle timeout are closed by a reaper task
//! and never handed out; at most `max_idle` are kept.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A connection's sending half (the connection itself runs in its own task).
pub(crate) type Conn = SendRequest<Full<Bytes>>;

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A region's connections.
pub(crate) struct Pool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

/// Why a request could not be sent.
pub(crate) enum SendError {
    /// The request did not reach the region (no connection, or it closed before the request was
    /// written).
    NotSent(String),
    /// The request was (or may have been) written; the connection failed before an answer head.
    Broken(String),
}

/// The innermost cause of an error, in words.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl Pool {
    pub(crate) fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            addr,
            connect_timeout,
            idle_timeout,
            max_idle: if idle_timeout.is_zero() { 0 } else { max_idle },
            idle: Mutex::new(Vec::new()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The lock only guards a Vec of connections: a panic elsewhere cannot leave it torn.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection that is open, ready and not past the idle timeout.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle();
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout && c.conn.is_ready() && !c.conn.is_closed() {
                return Some(c.conn);
            }
        }
        None
    }

    /// A new connection.
    async fn connect(&self) -> Result<Conn, String> {
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
                Err(_) => {
                    return Err(format!(
                        "cannot connect: no connection within {} ms",
                        self.connect_timeout.as_millis()
                    ));
                }
                Ok(Err(e)) => return Err(format!("cannot connect: {e}")),
                Ok(Ok(s)) => s,
            };
        // No Nagle delay: a request leaves in one write, at once.
        let _ = tcp.set_nodelay(true);
        let (conn, driver) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("cannot connect: {}", root_cause(&e)))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(%addr, "connection to the region ended: {}", root_cause(&e));
            }
        });
        Ok(conn)
    }

    /// Sends a request on an idle connection, or a new one. Returns the answer head and the
    /// connection to give back ([`Pool::put`]) once the answer's body has been read to the end.
    pub(crate) async fn send(
        &self,
        mut req: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::Response<Incoming>, Conn), SendError> {
        let (mut conn, mut pooled) = match self.take() {
            Some(c) => (c, true),
            None => (self.connect().await.map_err(SendError::NotSent)?, false),
        };
        loop {
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    // Handed back unwritten: the connection closed before it could take the
                    // request (a region closing an idle connection). The request never left.
                    Some(back) if pooled => {
                        tracing::debug!(addr = %self.addr, "pooled connection closed before the request was sent: opening a new one");
                        req = back;
                        conn = self.connect().await.map_err(SendError::NotSent)?;
                        pooled = false;
                    }
                    Some(_) => {
                        return Err(SendError::NotSent(format!(
                            "the connection closed before the request was sent: {}",
                            root_cause(e.error())
                        )));
                    }
                    None => {
                        return Err(SendError::Broken(format!(
                            "connection failed: {}",
                            root_cause(e.error())
                        )));
                    }
                },
            }
        }
    }

    /// Gives back a connection whose last answer was read to the end.
    pub(crate) fn put(self: &Arc<Self>, conn: Conn) {
        if self.max_idle == 0 || conn.is_closed() {
            return;
        }
        if conn.is_ready() {
            self.push(conn);
            return;
        }
        // Its task has not yet taken in the end of the answer: wait for that (or for the close)
        // without holding up the request that used it. (No runtime, while it shuts down: the
        // connection is just closed.)
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(self);
        let mut conn = conn;
        rt.spawn(async move {
            if conn.ready().await.is_ok()
                && let Some(p) = pool.upgrade()
            {
                p.push(conn);
            }
        });
    }

    fn push(&self, conn: Conn) {
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections past the idle timeout or already closed.
    fn reap(&self) {
        let timeout = self.idle_timeout;
        self.idle()
            .retain(|c| c.since.elapsed() < timeout && !c.conn.is_closed());
    }

    /// Idle connections that are still open (for tests and diagnostics).
    pub(crate) fn idle_open(&self) -> usize {
        self.idle().iter().filter(|c| !c.conn.is_closed()).count()
    }

    /// Starts the task that closes idle connections past their timeout (within half of it);
    /// it ends once every pool is dropped. Needs a tokio runtime (none: nothing is started, and
    /// expired connections are only dropped when they are next looked at).
    pub(crate) fn spawn_reaper(pools: Vec<Weak<Pool>>, idle_timeout: Duration) {
        if pools.is_empty() || idle_timeout.is_zero() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let period = (idle_timeout / 2).max(Duration::from_millis(10));
        rt.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut alive = false;
                for p in pools.iter().filter_map(Weak::upgrade) {
                    alive = true;
                    p.reap();
                }
                if !alive {
                    return;
                }
            }
        });
    }
}
