//! The DNS server: UDP and TCP bound on one address (port 0: one free port for both), running
//! hickory's server with [`DnsHandler`], stopped by a handle or a future.

use super::answer::DnsHandler;
use crate::metrics::dns::DnsMetrics;
use crate::state::RouterState;
use atoll_core::clock::Clock;
use hickory_server::Server;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An idle TCP connection is closed after this long.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Binding port 0 picks a free UDP port and then binds TCP on the same port; this many tries.
const BIND_TRIES: usize = 16;

/// How the DNS server runs.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// UDP and TCP listen address (port 0: a free port, the same for both).
    pub listen: SocketAddr,
    /// The address `ns1.<zone>` resolves to. `None`: the listen address, unless it is a wildcard
    /// (then `ns1.<zone>` has no address records).
    pub ns_address: Option<IpAddr>,
    /// Seed of the random numbers for weighted names (`None`: from the OS).
    pub seed: Option<u64>,
    /// An idle TCP connection is closed after this long.
    pub tcp_idle_timeout: Duration,
}

impl DnsOptions {
    pub fn new(listen: SocketAddr) -> DnsOptions {
        DnsOptions {
            listen,
            ns_address: None,
            seed: None,
            tcp_idle_timeout: TCP_IDLE_TIMEOUT,
        }
    }
}

/// A running DNS server (UDP and TCP on one address). Dropping it stops the server too.
pub struct DnsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

async fn bind_pair(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..BIND_TRIES {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("DNS: cannot bind UDP {listen}: {e}")))?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Port 0 gave a UDP port whose TCP twin is taken: try another.
            Err(e) if listen.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                last = Some(e);
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("DNS: cannot bind TCP {addr}: {e}"),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("DNS: no free port")))
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` (port 0: one free port for both) and starts answering.
    /// `ns1.<zone>` resolves to the bound address unless it is a wildcard.
    pub async fn bind(
        state: Arc<RouterState>,
        listen: SocketAddr,
        metrics: DnsMetrics,
        clock: Arc<dyn Clock>,
    ) -> io::Result<DnsServer> {
        Self::bind_with(state, DnsOptions::new(listen), metrics, clock).await
    }

    /// [`DnsServer::bind`] with all the options.
    pub async fn bind_with(
        state: Arc<RouterState>,
        options: DnsOptions,
        metrics: DnsMetrics,
        clock: Arc<dyn Clock>,
    ) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(options.listen).await?;
        let addr = udp.local_addr()?;
        let ns_address = options.ns_address.or(Some(addr.ip()));
        let handler = DnsHandler::new(state, metrics, clock, ns_address, options.seed)?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, options.tcp_idle_timeout, 32);
        let token = server.shutdown_token().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            // A send or a drop of the handle both stop the server.
            let _ = stopped.await;
            token.cancel();
        });
        let task = tokio::spawn(async move {
            server
                .block_until_done()
                .await
                .map_err(|e| io::Error::other(format!("DNS server failed: {e}")))
        });
        tracing::info!(%addr, "DNS: answering on UDP and TCP");
        Ok(DnsServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting queries and waits for the server's tasks to end.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Waits until the server stops by itself (a socket failed) and says why.
    pub async fn wait(mut self) -> io::Result<()> {
        self.join().await
    }

    async fn join(&mut self) -> io::Result<()> {
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| io::Error::other(format!("DNS server task: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves DNS on `listen` until `shutdown` completes (or a socket fails).
pub async fn serve(
    state: Arc<RouterState>,
    listen: SocketAddr,
    metrics: DnsMetrics,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut server = DnsServer::bind(state, listen, metrics, clock).await?;
    let Some(mut task) = server.task.take() else {
        return Ok(());
    };
    let flatten = |r: Result<io::Result<()>, tokio::task::JoinError>| {
        r.map_err(|e| io::Error::other(format!("DNS server task: {e}")))?
    };
    tokio::select! {
        () = shutdown => {
            if let Some(stop) = server.stop.take() {
                let _ = stop.send(());
            }
            flatten(task.await)
        }
        r = &mut task => flatten(r),
    }
}
