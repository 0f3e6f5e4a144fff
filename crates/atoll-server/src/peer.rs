//! The peer side of replication (`docs/design/mtls.md`): the peer listener, who is on the other
//! end of a connection ([`PeerAuth`]), the check that a peer speaks only for itself
//! ([`authorize`]), and the client a region reaches its peers with ([`PeerClient`]).
//!
//! **Listener.** [`PeerListener::serve`] accepts connections on the region's `peer` address and
//! serves the replication routes on each with hyper. With mutual TLS it first completes a
//! rustls handshake that requires a client certificate signed by the cluster CA (a connection
//! without one, or with one from another CA, never reaches a handler), then resolves the region
//! the certificate names ([`atoll_tls::identity`]). Every request of the connection carries that
//! as a [`PeerAuth`] request extension. A certificate that names no region of the cluster is
//! looked up again at each request of its connection until it does: a region added by a config
//! reload (`docs/design/adding-regions.md`) may have connected before this region reloaded, and
//! its heartbeats come on that same connection. Without TLS (`insecure = true`) every request
//! carries [`PeerAuth::Insecure`].
//!
//! **Check.** The replication handlers call [`authorize`] with the `from` of a heartbeat or a
//! subscription: a certified peer may only speak for the region its certificate names (403
//! `ATOLL-PEER-IDENTITY-MISMATCH`); a connection that authenticated no region, or a request
//! that came by a path that sets no [`PeerAuth`] at all, is refused (403
//! `ATOLL-PEER-UNAUTHENTICATED`). Refusals and failed handshakes are counted in
//! `atoll_peer_auth_failures_total{reason}`, whose reasons are [`AuthFailure`]'s fixed set.
//!
//! **Client.** [`PeerClient`] is hyper-util's pooled HTTP/1 client over [`PeerConnector`], which
//! dials a peer by its region name: at its `peer` address or at a `--peer-via` override (an
//! `atoll link` proxy forwards bytes, so TLS passes through it), and with TLS verifies that the
//! server holds a certificate of the cluster CA for `<peer>.atoll`, whatever address it dialled.

use crate::metrics::{Metrics, ReasonLabels};
use atoll_core::{AtollError, RegionId, Result};
use atoll_tls::RegionTls;
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Longest a TLS handshake on the peer listener may take: an unauthenticated client cannot hold
/// a connection open longer without completing it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open peer connections to finish (their subscription streams end
/// at shutdown, so this is only a bound).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Who is on the other end of a peer connection; set on every request of the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAuth {
    /// A client certificate of the cluster CA that names this region.
    Certified(RegionId),
    /// A client certificate of the cluster CA that names no region of the cluster (or several).
    Uncertified,
    /// The cluster runs `[cluster.tls] insecure = true`: nobody is authenticated.
    Insecure,
}

/// Who is on the other end of one accepted connection: known at accept time, or a certificate
/// of the cluster CA that named no region of the cluster then, looked up again at each request
/// (a reload may add its region) and kept once it names one.
#[derive(Clone)]
enum ConnAuth {
    Fixed(PeerAuth),
    Unresolved {
        cert: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
        regions: Identities,
        resolved: Arc<OnceLock<RegionId>>,
    },
}

impl ConnAuth {
    /// The [`PeerAuth`] of a request on this connection now.
    fn current(&self) -> PeerAuth {
        match self {
            ConnAuth::Fixed(auth) => auth.clone(),
            ConnAuth::Unresolved {
                cert,
                regions,
                resolved,
            } => {
                if let Some(r) = resolved.get() {
                    return PeerAuth::Certified(r.clone());
                }
                let regions = match regions.read() {
                    Ok(r) => r.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                match atoll_tls::identity(cert, &regions) {
                    Some(r) => PeerAuth::Certified(resolved.get_or_init(|| r).clone()),
                    None => PeerAuth::Uncertified,
                }
            }
        }
    }
}

/// Why a peer connection or message was refused: the `reason` label of
/// `atoll_peer_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The TLS client presented no certificate.
    NoCertificate,
    /// Its certificate is not one the cluster CA signed, or not valid now.
    BadCertificate,
    /// The TLS handshake failed otherwise (not TLS at all, timed out, protocol error).
    Handshake,
    /// A valid certificate that names no region of the cluster.
    UnknownIdentity,
    /// A certified peer sent a message from another region.
    IdentityMismatch,
    /// A peer route reached without any authentication.
    Unauthenticated,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 6] = [
        AuthFailure::NoCertificate,
        AuthFailure::BadCertificate,
        AuthFailure::Handshake,
        AuthFailure::UnknownIdentity,
        AuthFailure::IdentityMismatch,
        AuthFailure::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::NoCertificate => "no_certificate",
            AuthFailure::BadCertificate => "bad_certificate",
            AuthFailure::Handshake => "handshake",
            AuthFailure::UnknownIdentity => "unknown_identity",
            AuthFailure::IdentityMismatch => "identity_mismatch",
            AuthFailure::Unauthenticated => "unauthenticated",
        }
    }

    fn from_label(label: &str) -> AuthFailure {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == label)
            .unwrap_or(AuthFailure::Handshake)
    }
}

/// Counts one refusal.
pub fn count(metrics: &Metrics, reason: AuthFailure) {
    metrics
        .peer_auth_failures
        .get_or_create(&ReasonLabels {
            reason: reason.as_str().to_string(),
        })
        .inc();
}

/// Whether the connection may speak on the peer routes at all (before its message is read).
pub fn authenticated(metrics: &Metrics, auth: Option<&PeerAuth>) -> Result<()> {
    match auth {
        Some(PeerAuth::Certified(_) | PeerAuth::Insecure) => Ok(()),
        Some(PeerAuth::Uncertified) => {
            count(metrics, AuthFailure::UnknownIdentity);
            tracing::warn!(
                "peer refused: its certificate is signed by the cluster CA but names no region of this cluster"
            );
            Err(AtollError::PeerUnauthenticated(
                "the client certificate names no region of this cluster (a region's certificate is valid for <region>.atoll)".into(),
            ))
        }
        None => {
            count(metrics, AuthFailure::Unauthenticated);
            Err(AtollError::PeerUnauthenticated(
                "peer routes are served on the peer listener only, to a client certificate of the cluster CA".into(),
            ))
        }
    }
}

/// Whether a message whose `from` is `from` may be taken from this connection: a certified peer
/// speaks only for itself.
pub fn authorize(metrics: &Metrics, auth: Option<&PeerAuth>, from: &RegionId) -> Result<()> {
    authenticated(metrics, auth)?;
    match auth {
        Some(PeerAuth::Certified(region)) if region != from => {
            count(metrics, AuthFailure::IdentityMismatch);
            tracing::warn!(
                certified = %region,
                claimed = %from,
                "peer refused: it sent a message from another region than its certificate names"
            );
            Err(AtollError::PeerIdentityMismatch {
                claimed: from.to_string(),
                certified: region.to_string(),
            })
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The listener

/// Who a peer certificate may name: the cluster's regions (and the arbiter). Shared, so that a
/// config reload that adds a region lets its certificate in (`docs/design/adding-regions.md`).
pub type Identities = Arc<std::sync::RwLock<Vec<RegionId>>>;

/// A region's peer listener: bound, not yet serving.
pub struct PeerListener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The cluster's regions: who a certificate may name.
    regions: Identities,
}

impl PeerListener {
    /// Binds `addr`. With `tls`, every connection must complete a mutual-TLS handshake.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<&RegionTls>,
        regions: Identities,
    ) -> Result<PeerListener> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            AtollError::Config(format!("cannot listen on {addr} (peer listener): {e}"))
        })?;
        Ok(PeerListener {
            listener,
            tls: tls.map(|t| tokio_rustls::TlsAcceptor::from(t.server_config())),
            regions,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| AtollError::Storage(format!("peer listener has no address: {e}")))
    }

    /// Whether connections must speak mutual TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `app` on every accepted connection until `stop` turns true; then stops accepting
    /// and waits (boundedly) for open connections to finish.
    pub async fn serve(
        self,
        app: axum::Router,
        metrics: Arc<Metrics>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                a = self.listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "peer listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let app = app.clone();
            let watcher = graceful.watcher();
            match &self.tls {
                None => {
                    tokio::spawn(serve_connection(
                        tcp,
                        ConnAuth::Fixed(PeerAuth::Insecure),
                        app,
                        watcher,
                    ));
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let metrics = metrics.clone();
                    let regions = self.regions.clone();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            acceptor.accept(tcp),
                        )
                        .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                let reason = AuthFailure::from_label(
                                    atoll_tls::handshake_failure_reason(&e),
                                );
                                count(&metrics, reason);
                                // Anyone can knock on a port: not worth more than debug.
                                tracing::debug!(%remote, reason = reason.as_str(), error = %e, "peer TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                count(&metrics, AuthFailure::Handshake);
                                tracing::debug!(%remote, "peer TLS handshake timed out");
                                return;
                            }
                        };
                        let auth = match tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                        {
                            Some(cert) => {
                                let auth = ConnAuth::Unresolved {
                                    cert: cert.clone().into_owned(),
                                    regions,
                                    resolved: Arc::new(OnceLock::new()),
                                };
                                // Resolved now if it can be: most connections are.
                                match auth.current() {
                                    PeerAuth::Certified(r) => {
                                        ConnAuth::Fixed(PeerAuth::Certified(r))
                                    }
                                    _ => auth,
                                }
                            }
                            None => ConnAuth::Fixed(PeerAuth::Uncertified),
                        };
                        serve_connection(tls, auth, app, watcher).await;
                    });
                }
            }
        }
        drop(self.listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("peer connections still open after the shutdown grace; closing them");
        }
    }
}

/// Serves one connection's requests, each stamped with what `auth` says at that request.
async fn serve_connection<I>(
    io: I,
    auth: ConnAuth,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let svc = app.map_request(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(auth.current());
        req
    });
    // HTTP/1 (subscription streams) and HTTP/2 (heartbeats), told apart by the first bytes.
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(
        TokioIo::new(io),
        hyper_util::service::TowerToHyperService::new(svc),
    );
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "peer connection ended");
    }
}

// ---------------------------------------------------------------------------------------------
// The client

/// An error reaching a peer (connection, TLS, HTTP).
#[derive(Debug)]
pub struct PeerError(String);

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerError {}

/// A connection to a peer, plain or TLS.
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for PeerStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Dials peers by region name (the URI's host).
#[derive(Clone)]
pub struct PeerConnector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    /// Grows when a config reload adds a region.
    addrs: std::sync::RwLock<BTreeMap<String, SocketAddr>>,
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
    /// The last TLS failure per peer, so that a lasting one is logged once, not per attempt.
    failing: Mutex<BTreeMap<String, String>>,
}

impl ConnectorInner {
    async fn connect(&self, uri: hyper::Uri) -> std::io::Result<TokioIo<PeerStream>> {
        let io_err = |m: String| std::io::Error::other(PeerError(m));
        let host = uri.host().unwrap_or_default().to_string();
        let addr = self
            .addrs
            .read()
            .ok()
            .and_then(|a| a.get(&host).copied())
            .ok_or_else(|| io_err(format!("`{host}` is not a peer of this region")))?;
        let work = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &self.tls else {
                return Ok(PeerStream::Plain(tcp));
            };
            let region = RegionId::new(&host).map_err(|e| io_err(e.to_string()))?;
            let name = RegionTls::server_name(&region).map_err(|e| io_err(e.to_string()))?;
            match tls.connect(name, tcp).await {
                Ok(s) => {
                    self.recovered(&host);
                    Ok(PeerStream::Tls(Box::new(s)))
                }
                Err(e) => {
                    self.failed(&host, addr, &e);
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, work).await {
            Ok(r) => r.map(TokioIo::new),
            Err(_) => Err(io_err(format!(
                "connecting to {host} at {addr} timed out after {:?}",
                self.connect_timeout
            ))),
        }
    }

    fn failed(&self, peer: &str, addr: SocketAddr, e: &std::io::Error) {
        let text = e.to_string();
        let is_tls = e
            .get_ref()
            .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>());
        if !is_tls {
            // The connection broke (the peer or a link in between is down): reachability shows
            // that; it says nothing about certificates.
            tracing::debug!(peer, %addr, error = %text, "connection to peer failed during the TLS handshake");
            return;
        }
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        if failing.get(peer) != Some(&text) {
            tracing::warn!(peer, %addr, error = %text, "TLS handshake with peer failed (certificate of the cluster CA for <peer>.atoll expected)");
            failing.insert(peer.to_string(), text);
        }
    }

    fn recovered(&self, peer: &str) {
        if let Ok(mut failing) = self.failing.lock()
            && failing.remove(peer).is_some()
        {
            tracing::info!(peer, "TLS handshake with peer succeeds again");
        }
    }
}

impl tower::Service<hyper::Uri> for PeerConnector {
    type Response = TokioIo<PeerStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.connect(uri).await })
    }
}

/// How a region reaches its peers: HTTP over plain TCP or mutual TLS, pooled.
///
/// Heartbeats use HTTP/2 ([`PeerClient::new`] with `http2`): a heartbeat goes out on the open
/// connection without waiting for the answer to the previous one. That is what lets a one-way
/// heartbeat cross a link whose return path is cut: a new connection would need a TLS handshake,
/// which needs both directions, and HTTP/1 sends a request on a pooled connection only once the
/// previous answer has arrived. A connection on which nothing has arrived for a while is pinged
/// and given up when the ping goes unanswered ([`PeerClient::keep_alive`]), so a connection to a
/// peer that vanished is not kept for ever; one-way hearing lasts that long.
#[derive(Clone)]
pub struct PeerClient {
    http: hyper_util::client::legacy::Client<PeerConnector, Full<Bytes>>,
    /// The connector's address book, shared with `http`.
    http_connector: Arc<ConnectorInner>,
    scheme: &'static str,
    /// Bound on a whole request (answer head included); `None`: none (streams).
    timeout: Option<Duration>,
}

impl PeerClient {
    /// HTTP/2 keep-alive of a client whose requests go out every `interval`: after how long
    /// without a frame received a ping is sent (10 intervals, at least 2 s), and how long an
    /// unanswered ping keeps the connection (20 intervals, at least 20 s).
    pub fn keep_alive(interval: Duration) -> (Duration, Duration) {
        (
            (interval * 10).max(Duration::from_secs(2)),
            (interval * 20).max(Duration::from_secs(20)),
        )
    }

    /// A client reaching each peer at `addrs[peer]`; with `tls`, over mutual TLS as that region;
    /// with `http2`, HTTP/2 (with prior knowledge: the peer listener speaks both; keep-alive
    /// pings per [`PeerClient::keep_alive`] of `connect_timeout`), else HTTP/1.
    pub fn new(
        addrs: &BTreeMap<RegionId, SocketAddr>,
        tls: Option<&RegionTls>,
        connect_timeout: Duration,
        timeout: Option<Duration>,
        http2: bool,
    ) -> PeerClient {
        let connector = PeerConnector {
            inner: Arc::new(ConnectorInner {
                addrs: std::sync::RwLock::new(
                    addrs.iter().map(|(r, a)| (r.to_string(), *a)).collect(),
                ),
                tls: tls.map(|t| tokio_rustls::TlsConnector::from(t.client_config())),
                connect_timeout,
                failing: Mutex::new(BTreeMap::new()),
            }),
        };
        let (ping_after, ping_timeout) = Self::keep_alive(connect_timeout);
        let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_only(http2);
        if http2 {
            builder
                .http2_keep_alive_interval(ping_after)
                .http2_keep_alive_timeout(ping_timeout)
                .http2_keep_alive_while_idle(true);
        }
        let http_connector = connector.inner.clone();
        let http = builder.build(connector);
        PeerClient {
            http,
            http_connector,
            scheme: if tls.is_some() { "https" } else { "http" },
            timeout,
        }
    }

    /// Lets this client reach `peer` at `addr` (a region added by a config reload).
    pub fn add_peer(&self, peer: &RegionId, addr: SocketAddr) {
        let inner = &self.http_connector;
        match inner.addrs.write() {
            Ok(mut a) => {
                a.insert(peer.to_string(), addr);
            }
            Err(poisoned) => {
                poisoned.into_inner().insert(peer.to_string(), addr);
            }
        }
    }

    /// Stops this client reaching `peer` (a region removed from the cluster by a config reload):
    /// no new connection is made to it; a pooled one is dropped when idle.
    pub fn remove_peer(&self, peer: &RegionId) {
        let inner = &self.http_connector;
        match inner.addrs.write() {
            Ok(mut a) => {
                a.remove(peer.as_str());
            }
            Err(poisoned) => {
                poisoned.into_inner().remove(peer.as_str());
            }
        }
    }

    /// `POST path` to `peer`; on failure also says whether the request surely never left (no
    /// connection could be made), which a caller that must tell "not delivered" from "no answer"
    /// needs (the control group's proposals).
    pub async fn post_classified(
        &self,
        peer: &RegionId,
        path: &str,
        body: Vec<u8>,
    ) -> std::result::Result<PeerResponse, (PeerError, bool)> {
        let req = hyper::Request::post(format!("{}://{peer}{path}", self.scheme))
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| (PeerError(format!("bad request to {peer}: {e}")), true))?;
        let send = self.http.request(req);
        let resp = match self.timeout {
            Some(t) => tokio::time::timeout(t, send).await.map_err(|_| {
                (
                    PeerError(format!("{peer} did not answer within {t:?}")),
                    false,
                )
            })?,
            None => send.await,
        };
        match resp {
            Ok(resp) => Ok(PeerResponse { resp }),
            Err(e) => Err((PeerError(describe(&e)), e.is_connect())),
        }
    }

    /// `POST path` to `peer` with a binary body.
    pub async fn post(
        &self,
        peer: &RegionId,
        path: &str,
        body: Vec<u8>,
    ) -> std::result::Result<PeerResponse, PeerError> {
        let req = hyper::Request::post(format!("{}://{peer}{path}", self.scheme))
            .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PeerError(format!("bad request to {peer}: {e}")))?;
        let send = self.http.request(req);
        let resp = match self.timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .map_err(|_| PeerError(format!("{peer} did not answer within {t:?}")))?,
            None => send.await,
        }
        .map_err(|e| PeerError(describe(&e)))?;
        Ok(PeerResponse { resp })
    }
}

/// The error and its sources, which hold the useful part (a TLS or connection error).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A peer's answer.
pub struct PeerResponse {
    resp: hyper::Response<Incoming>,
}

impl PeerResponse {
    pub fn status(&self) -> hyper::StatusCode {
        self.resp.status()
    }

    /// A response header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> std::result::Result<Option<Bytes>, PeerError> {
        loop {
            match self.resp.body_mut().frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(PeerError(describe(&e))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, at most `limit` bytes (an error beyond).
    pub async fn bytes(self, limit: usize) -> std::result::Result<Bytes, PeerError> {
        let limited = http_body_util::Limited::new(self.resp.into_body(), limit);
        limited
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| PeerError(format!("reading the answer: {e}")))
    }

    /// The whole body as text (lossy).
    pub async fn text(self) -> std::result::Result<String, PeerError> {
        let bytes = self
            .resp
            .into_body()
            .collect()
            .await
            .map_err(|e| PeerError(describe(&e)))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
