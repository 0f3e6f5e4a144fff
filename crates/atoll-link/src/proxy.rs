//! The proxy adapter: one process serving many named links over TCP, each shaped and faulted as
//! the [`Mesh`] (the pure core) says, plus the expiry task and the in-process API
//! ([`LinkServer`]).
//!
//! Per connection there are two pumps, forward (client → upstream) and reverse. A pump's reader
//! stamps each chunk with its release time ([`ReleaseClock`]: arrival + latency + jitter, never
//! before the previous chunk) and queues it; its writer sleeps until the release time, waits while
//! the direction is blocked by a fault, spends tokens of the bandwidth bucket, and writes. The
//! queue is bounded in bytes ([`ProxyOptions::hold_cap_bytes`] per direction): once full the
//! reader stops reading and TCP backpressure reaches the sender, so a held link never grows memory
//! without bound.
//!
//! Faults reach the pumps through a `watch` channel of [`Effective`] per link, republished for
//! every link after every change (under the one lock of the mesh, so a pair or region fault
//! reaches all its links together) and by the expiry task, which wakes at the next lease end and
//! at least every 100 ms.
//! Connection setup is not delayed (the handshake completes locally); every byte, and the FIN, is.

use crate::config::validate_links;
use crate::error::{LinkError, Result};
use crate::metrics::{LinkMetrics, Metrics, dir_index};
use crate::model::{
    Direction, Effective, Fault, FaultId, FaultKind, FaultTarget, LinkSpec, Mesh, Shaping,
};
use crate::sched::{ReleaseClock, Rng, TokenBucket, delay_us};
use crate::units::format_duration_ms;
use serde::Serialize;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Tunables of a link server. The defaults suit production and tests alike.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Most bytes one direction of one connection holds (delayed or blocked) before it stops
    /// reading from its socket: 32 MiB, so 64 MiB per connection.
    pub hold_cap_bytes: usize,
    /// Largest single read, bytes (16 KiB).
    pub read_chunk: usize,
    /// How long to wait for the upstream to accept a connection (10 s); then the client is reset.
    pub connect_timeout: Duration,
    /// Longest gap between expiry passes (100 ms).
    pub expiry_interval: Duration,
    /// Most connections open per link; more are reset at once (10 000).
    pub max_connections_per_link: usize,
    /// Seed of the jitter generator; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// The bearer token every control API route but `GET /healthz` and `GET /metrics` requires
    /// (blank counts as none). Required when the control API listens beyond loopback: without
    /// one, [`LinkServer::start_with`] refuses to start.
    pub control_token: Option<String>,
}

impl ProxyOptions {
    /// The control API's token, if one is set (not blank).
    pub(crate) fn control_token(&self) -> Option<&str> {
        self.control_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            hold_cap_bytes: 32 << 20,
            read_chunk: 16 << 10,
            connect_timeout: Duration::from_secs(10),
            expiry_interval: Duration::from_millis(100),
            max_connections_per_link: 10_000,
            seed: None,
            control_token: None,
        }
    }
}

/// An active fault as reported by the control API and [`LinkServer::status`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultInfo {
    pub id: FaultId,
    /// `link`, `pair` or `region`.
    pub scope: &'static str,
    /// What it was added to: the link's name, `A<->B`, or the region.
    pub target: String,
    /// The links it covers, by name.
    pub links: Vec<String>,
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Lease left, ms.
    pub remaining_ms: u64,
    /// Lease left, as a duration (`9m59s`, `1500ms`).
    pub remaining: String,
    /// One line (`partition (stall)`).
    pub description: String,
}

impl FaultInfo {
    fn new(f: &Fault, now_ms: u64) -> Self {
        let remaining_ms = f.remaining_ms(now_ms);
        Self {
            id: f.id,
            scope: f.target.scope(),
            target: f.target.to_string(),
            links: f.links.clone(),
            kind: f.kind,
            remaining_ms,
            remaining: format_duration_ms(remaining_ms),
            description: f.kind.describe(),
        }
    }
}

/// Traffic counters of one link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub forward_bytes: u64,
    pub reverse_bytes: u64,
    pub forward_queued_bytes: u64,
    pub reverse_queued_bytes: u64,
    pub connections_open: u64,
    pub connections_total: u64,
    pub connections_refused: u64,
    pub connections_reset: u64,
}

/// What is in effect on one direction, as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DirEffectInfo {
    pub blocked: bool,
    pub latency_ms: f64,
    pub jitter_ms: f64,
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// What is in effect on a link, as reported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EffectiveInfo {
    pub forward: DirEffectInfo,
    pub reverse: DirEffectInfo,
    pub refuse_new: bool,
    pub stall_new: bool,
}

impl From<&Effective> for EffectiveInfo {
    fn from(e: &Effective) -> Self {
        let d = |d: &crate::model::DirEffect| DirEffectInfo {
            blocked: d.blocked,
            latency_ms: d.latency_ms,
            jitter_ms: d.jitter_ms,
            bandwidth_bytes_per_sec: d.bandwidth,
        };
        Self {
            forward: d(&e.forward),
            reverse: d(&e.reverse),
            refuse_new: e.refuse_new,
            stall_new: e.stall_new,
        }
    }
}

/// One link as reported by `GET /v1/links` and [`LinkServer::status`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub from_region: Option<String>,
    pub to_region: Option<String>,
    /// The bound address (the real port when the spec asked for port 0).
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// Base shaping, client → upstream.
    pub forward: Shaping,
    /// Base shaping, upstream → client.
    pub reverse: Shaping,
    /// Base shaping with the active faults applied.
    pub effective: EffectiveInfo,
    pub faults: Vec<FaultInfo>,
    pub counters: Counters,
}

/// One link at run time.
pub(crate) struct LinkRuntime {
    /// With `listen` resolved to the bound address.
    pub(crate) spec: LinkSpec,
    effect: watch::Sender<Effective>,
    metrics: LinkMetrics,
    /// One token bucket per direction, shared by all of the link's connections: the bandwidth
    /// limit is the link's, not each connection's.
    buckets: [Mutex<Option<TokenBucket>>; 2],
}

impl LinkRuntime {
    /// Reserves `len` bytes of `dir`'s bandwidth at `rate` and returns the µs to wait before
    /// sending them. A changed rate starts a fresh bucket.
    fn reserve(&self, dir: Direction, rate: u64, len: usize, now_us: u64) -> u64 {
        let mut slot = self.buckets[dir_index(dir)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let bucket = match &mut *slot {
            Some(b) if b.rate() == rate => b,
            other => other.insert(TokenBucket::new(rate, now_us)),
        };
        bucket.take(len, now_us)
    }

    /// Republishes what is in effect at `now_ms` (a no-op for the pumps when nothing changed).
    fn publish(&self, mesh: &Mesh, now_ms: u64) {
        let Ok(eff) = mesh.effective(&self.spec.name, now_ms) else {
            return;
        };
        self.metrics
            .observe(&eff, mesh.faults_on(&self.spec.name, now_ms).count());
        self.effect.send_if_modified(|cur| {
            if *cur == eff {
                false
            } else {
                *cur = eff;
                true
            }
        });
    }

    fn counters(&self) -> Counters {
        let m = &self.metrics;
        let gauge =
            |g: &prometheus_client::metrics::gauge::Gauge| u64::try_from(g.get()).unwrap_or(0);
        Counters {
            forward_bytes: m.bytes[0].get(),
            reverse_bytes: m.bytes[1].get(),
            forward_queued_bytes: gauge(&m.queued[0]),
            reverse_queued_bytes: gauge(&m.queued[1]),
            connections_open: gauge(&m.connections),
            connections_total: m.opened.get(),
            connections_refused: m.refused.get(),
            connections_reset: m.reset.get(),
        }
    }

    fn status(&self, mesh: &Mesh, now_ms: u64) -> LinkStatus {
        let name = &self.spec.name;
        let (forward, reverse) = mesh
            .shaping(name)
            .unwrap_or((self.spec.forward, self.spec.reverse));
        let effective = mesh
            .effective(name, now_ms)
            .unwrap_or_else(|_| Effective::unshaped());
        LinkStatus {
            name: self.spec.name.clone(),
            from_region: self.spec.from_region.as_ref().map(|r| r.to_string()),
            to_region: self.spec.to_region.as_ref().map(|r| r.to_string()),
            listen: self.spec.listen,
            upstream: self.spec.upstream,
            forward,
            reverse,
            effective: EffectiveInfo::from(&effective),
            faults: mesh
                .faults_on(name, now_ms)
                .map(|f| FaultInfo::new(f, now_ms))
                .collect(),
            counters: self.counters(),
        }
    }
}

/// State shared by the accept loops, the expiry task, the control API and [`LinkServer`].
pub(crate) struct Shared {
    origin: Instant,
    links: BTreeMap<String, Arc<LinkRuntime>>,
    /// Link names in the order they were given.
    order: Vec<String>,
    /// Every link's shaping and every fault: one lock, so a fault over several links is added,
    /// renewed, removed and expired for all of them at once.
    mesh: Mutex<Mesh>,
    pub(crate) metrics: Metrics,
    wake_expiry: Notify,
    opts: ProxyOptions,
    seed: u64,
    next_conn: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Milliseconds since the server started (monotonic): the `now_ms` of every lease.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Mesh> {
        // A panic while holding the lock cannot leave the mesh half-updated (every mutation is
        // validated first), so a poisoned lock is still consistent.
        self.mesh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Republishes what is in effect on every link (a no-op for the pumps of a link whose
    /// effect did not change).
    fn publish(&self, mesh: &Mesh, now_ms: u64) {
        for l in self.links.values() {
            l.publish(mesh, now_ms);
        }
    }

    fn link(&self, name: &str) -> Result<&Arc<LinkRuntime>> {
        self.links
            .get(name)
            .ok_or_else(|| LinkError::UnknownLink(name.to_string()))
    }

    /// Adds a fault on `target` (a link, a pair or a region): one id and one lease for every link
    /// it covers.
    pub(crate) fn add(
        &self,
        target: FaultTarget,
        kind: FaultKind,
        lease_ms: u64,
    ) -> Result<FaultInfo> {
        let now = self.now_ms();
        let mut mesh = self.lock();
        let id = mesh.add(target, kind, lease_ms, now)?;
        self.publish(&mesh, now);
        let info = FaultInfo::new(mesh.fault(id, now)?, now);
        drop(mesh);
        self.wake_expiry.notify_one();
        tracing::info!(
            fault = %id,
            scope = info.scope,
            target = %info.target,
            links = ?info.links,
            kind = %kind.describe(),
            lease_ms,
            "fault added"
        );
        Ok(info)
    }

    pub(crate) fn add_fault(
        &self,
        link: &str,
        kind: FaultKind,
        lease_ms: u64,
    ) -> Result<FaultInfo> {
        self.add(FaultTarget::Link(link.to_string()), kind, lease_ms)
    }

    /// The fault `id`, whatever its target.
    pub(crate) fn fault(&self, id: FaultId) -> Result<FaultInfo> {
        let now = self.now_ms();
        let mesh = self.lock();
        Ok(FaultInfo::new(mesh.fault(id, now)?, now))
    }

    /// Every active fault, each once, by id.
    pub(crate) fn faults(&self) -> Vec<FaultInfo> {
        let now = self.now_ms();
        let mesh = self.lock();
        mesh.faults(now).map(|f| FaultInfo::new(f, now)).collect()
    }

    /// Renews fault `id` (whatever its target) through `link` when given, which must be its
    /// link.
    pub(crate) fn renew(
        &self,
        link: Option<&str>,
        id: FaultId,
        lease_ms: u64,
    ) -> Result<FaultInfo> {
        let now = self.now_ms();
        let mut mesh = self.lock();
        let result = match link {
            Some(l) => mesh.renew_on_link(l, id, lease_ms, now),
            None => mesh.renew(id, lease_ms, now),
        };
        self.publish(&mesh, now);
        drop(mesh);
        self.wake_expiry.notify_one();
        let fault = result?;
        tracing::info!(fault = %id, target = %fault.target, lease_ms, "fault renewed");
        Ok(FaultInfo::new(&fault, now))
    }

    /// Removes fault `id` (whatever its target) through `link` when given, which must be its
    /// link.
    pub(crate) fn remove(&self, link: Option<&str>, id: FaultId) -> Result<FaultInfo> {
        let now = self.now_ms();
        let mut mesh = self.lock();
        let fault = match link {
            Some(l) => mesh.remove_on_link(l, id)?,
            None => mesh.remove(id)?,
        };
        self.publish(&mesh, now);
        drop(mesh);
        tracing::info!(fault = %id, target = %fault.target, links = ?fault.links, "fault removed");
        Ok(FaultInfo::new(&fault, now))
    }

    /// Removes the faults added to `link` (pair and region faults that cover it stay), or every
    /// fault of the server when `None`; returns how many.
    pub(crate) fn clear_faults(&self, link: Option<&str>) -> Result<usize> {
        let now = self.now_ms();
        let mut mesh = self.lock();
        mesh.expire(now);
        let n = match link {
            Some(name) => mesh.clear_link(name)?.len(),
            None => mesh.clear().len(),
        };
        self.publish(&mesh, now);
        Ok(n)
    }

    pub(crate) fn shaping(&self, link: &str) -> Result<(Shaping, Shaping)> {
        self.lock().shaping(link)
    }

    pub(crate) fn set_shaping(&self, link: &str, forward: Shaping, reverse: Shaping) -> Result<()> {
        let now = self.now_ms();
        let mut mesh = self.lock();
        mesh.set_shaping(link, forward, reverse)?;
        self.publish(&mesh, now);
        tracing::info!(link, ?forward, ?reverse, "shaping changed");
        Ok(())
    }

    pub(crate) fn status(&self) -> Vec<LinkStatus> {
        let now = self.now_ms();
        let mesh = self.lock();
        self.order
            .iter()
            .filter_map(|n| self.links.get(n))
            .map(|l| l.status(&mesh, now))
            .collect()
    }

    pub(crate) fn link_status(&self, link: &str) -> Result<LinkStatus> {
        let l = self.link(link)?;
        let now = self.now_ms();
        Ok(l.status(&self.lock(), now))
    }

    /// The token the control API requires, if any.
    pub(crate) fn control_token(&self) -> Option<&str> {
        self.opts.control_token()
    }

    fn conn_seed(&self) -> u64 {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// A running link server: the links' listeners, the expiry task and (optionally) the control
/// API. Dropping it stops everything too; [`LinkServer::shutdown`] also waits for it.
pub struct LinkServer {
    shared: Arc<Shared>,
    control_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl LinkServer {
    /// Validates `specs`, binds every link's listen address (port 0 picks a free port) and the
    /// control API's address (if given), and starts serving. Fails, binding nothing, on an
    /// invalid spec; fails naming the link on an address in use.
    pub async fn start(specs: Vec<LinkSpec>, control: Option<SocketAddr>) -> Result<Self> {
        Self::start_with(specs, control, ProxyOptions::default()).await
    }

    /// [`start`](Self::start) with explicit options.
    pub async fn start_with(
        specs: Vec<LinkSpec>,
        control: Option<SocketAddr>,
        opts: ProxyOptions,
    ) -> Result<Self> {
        validate_links(&specs)?;
        if let Some(addr) = control
            && !addr.ip().is_loopback()
            && opts.control_token().is_none()
        {
            return Err(LinkError::TokenRequired(addr));
        }
        let mesh = Mesh::new(&specs)?;
        let metrics = Metrics::new();
        let mut listeners = Vec::with_capacity(specs.len());
        let mut links = BTreeMap::new();
        let mut order = Vec::with_capacity(specs.len());
        for mut spec in specs {
            let listener =
                TcpListener::bind(spec.listen)
                    .await
                    .map_err(|source| LinkError::Io {
                        what: format!("link `{}` cannot listen on {}", spec.name, spec.listen),
                        source,
                    })?;
            spec.listen = listener.local_addr().map_err(|source| LinkError::Io {
                what: format!("link `{}`: local address", spec.name),
                source,
            })?;
            let eff = mesh.effective(&spec.name, 0)?;
            let link_metrics = metrics.link(&spec);
            link_metrics.observe(&eff, 0);
            let (effect, _) = watch::channel(eff);
            order.push(spec.name.clone());
            let rt = Arc::new(LinkRuntime {
                spec,
                effect,
                metrics: link_metrics,
                buckets: [Mutex::new(None), Mutex::new(None)],
            });
            listeners.push((rt.clone(), listener));
            links.insert(rt.spec.name.clone(), rt);
        }
        let control_listener = match control {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| LinkError::Io {
                        what: format!("control API cannot listen on {addr}"),
                        source,
                    })?,
            ),
            None => None,
        };
        let control_addr = match &control_listener {
            Some(l) => Some(l.local_addr().map_err(|source| LinkError::Io {
                what: "control API: local address".into(),
                source,
            })?),
            None => None,
        };
        let seed = opts.seed.unwrap_or_else(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            origin: Instant::now(),
            links,
            order,
            mesh: Mutex::new(mesh),
            metrics,
            wake_expiry: Notify::new(),
            opts,
            seed,
            next_conn: AtomicU64::new(0),
            shutdown,
        });
        let mut tasks = Vec::new();
        for (link, listener) in listeners {
            tasks.push(tokio::spawn(accept_loop(shared.clone(), link, listener)));
        }
        tasks.push(tokio::spawn(expiry_loop(shared.clone())));
        if let Some(listener) = control_listener {
            let app = crate::control::router(shared.clone());
            let mut stop = shared.shutdown.subscribe();
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stopped(&mut stop).await })
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "control API stopped");
                }
            }));
        }
        Ok(Self {
            shared,
            control_addr,
            tasks,
        })
    }

    /// Where the control API listens, if it was started.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// `http://ADDR` of the control API, if it was started.
    pub fn control_url(&self) -> Option<String> {
        self.control_addr.map(|a| format!("http://{a}"))
    }

    /// The links in the order given, with `listen` resolved to the bound address.
    pub fn specs(&self) -> Vec<LinkSpec> {
        self.shared
            .order
            .iter()
            .filter_map(|n| self.shared.links.get(n))
            .map(|l| l.spec.clone())
            .collect()
    }

    /// The bound listen address of link `name`.
    pub fn listen_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.links.get(name).map(|l| l.spec.listen)
    }

    /// Adds a fault to `link` for `lease` (at least 1 ms, at most 24 h) and returns its id.
    pub fn add_fault(&self, link: &str, kind: FaultKind, lease: Duration) -> Result<FaultId> {
        Ok(self.shared.add_fault(link, kind, duration_ms(lease))?.id)
    }

    /// Adds a fault to `target` for `lease`: a link, a pair of regions (every link between them,
    /// both ways) or a region (kind isolate: every link to and from it). One id and one lease for
    /// every link it covers.
    pub fn add_fault_on(
        &self,
        target: FaultTarget,
        kind: FaultKind,
        lease: Duration,
    ) -> Result<FaultId> {
        Ok(self.shared.add(target, kind, duration_ms(lease))?.id)
    }

    /// Sets an active fault's lease to `lease` from now. The fault must be `link`'s own (a pair
    /// or region fault is renewed with [`renew`](Self::renew)).
    pub fn renew_fault(&self, link: &str, id: FaultId, lease: Duration) -> Result<()> {
        self.shared
            .renew(Some(link), id, duration_ms(lease))
            .map(|_| ())
    }

    /// Removes a fault of `link`: the link heals from it at once. The fault must be `link`'s own
    /// (a pair or region fault is removed with [`remove`](Self::remove)).
    pub fn remove_fault(&self, link: &str, id: FaultId) -> Result<()> {
        self.shared.remove(Some(link), id).map(|_| ())
    }

    /// Sets the lease of fault `id`, whatever its target, to `lease` from now, on every link it
    /// covers.
    pub fn renew(&self, id: FaultId, lease: Duration) -> Result<()> {
        self.shared.renew(None, id, duration_ms(lease)).map(|_| ())
    }

    /// Removes fault `id`, whatever its target: every link it covers heals from it at once.
    pub fn remove(&self, id: FaultId) -> Result<()> {
        self.shared.remove(None, id).map(|_| ())
    }

    /// Every active fault of the server, each once (with the links it covers), by id.
    pub fn faults(&self) -> Vec<FaultInfo> {
        self.shared.faults()
    }

    /// Removes the faults added to `link` (pair and region faults that cover it stay: remove them
    /// by id), or every fault of the server when `None`; returns how many.
    pub fn clear_faults(&self, link: Option<&str>) -> Result<usize> {
        self.shared.clear_faults(link)
    }

    /// The base shaping `(forward, reverse)` of `link`.
    pub fn shaping(&self, link: &str) -> Result<(Shaping, Shaping)> {
        self.shared.shaping(link)
    }

    /// Replaces the base shaping of `link` (validated first; nothing changes on error). Chunks
    /// already queued keep their release times.
    pub fn set_shaping(&self, link: &str, forward: Shaping, reverse: Shaping) -> Result<()> {
        self.shared.set_shaping(link, forward, reverse)
    }

    /// Every link with its shaping, faults and counters.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.shared.status()
    }

    /// One link's status.
    pub fn link_status(&self, link: &str) -> Result<LinkStatus> {
        self.shared.link_status(link)
    }

    /// The OpenMetrics text of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Stops accepting, resets nothing but closes every connection, stops the control API and
    /// the expiry task, and waits for them. Faults end with the server.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for LinkServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Accepts connections of one link until shutdown; owns their tasks (aborted at shutdown).
async fn accept_loop(shared: Arc<Shared>, link: Arc<LinkRuntime>, listener: TcpListener) {
    let mut stop = shared.shutdown.subscribe();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((sock, _peer)) => {
                    if conns.len() >= shared.opts.max_connections_per_link {
                        link.metrics.opened.inc();
                        link.metrics.refused.inc();
                        reset(&sock);
                        continue;
                    }
                    conns.spawn(handle_conn(shared.clone(), link.clone(), sock, shared.conn_seed()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(link = %link.spec.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

/// Expires faults by their leases: wakes at the next lease end, when faults change, and at least
/// every `expiry_interval`.
async fn expiry_loop(shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let now = shared.now_ms();
        let next = {
            let mut mesh = shared.lock();
            for f in mesh.expire(now) {
                tracing::info!(
                    fault = %f.id,
                    target = %f.target,
                    links = ?f.links,
                    "fault lease ended; removed (every link it covered healed)"
                );
            }
            shared.publish(&mesh, now);
            mesh.next_expiry_ms()
        };
        let mut wait = shared.opts.expiry_interval;
        if let Some(t) = next {
            wait = wait.min(Duration::from_millis(t.saturating_sub(now)));
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = shared.wake_expiry.notified() => {}
            // A lease ending at `t` ms is expired by the pass at or after `t`.
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Resolves once shutdown has begun.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Closes a socket with RST instead of FIN once it is dropped.
fn reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Decrements the open-connections gauge when the connection ends, however it ends.
struct OpenGuard(LinkMetrics);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

async fn handle_conn(shared: Arc<Shared>, link: Arc<LinkRuntime>, client: TcpStream, seed: u64) {
    let m = &link.metrics;
    m.opened.inc();
    m.connections.inc();
    let _open = OpenGuard(m.clone());
    let mut eff = link.effect.subscribe();
    let epoch = eff.borrow().reset_epoch;
    // Admission: a refusing partition resets at once; a stalling one makes the connection wait,
    // unconnected and unread, until it lifts.
    loop {
        let (refuse, stall, now_epoch) = {
            let e = eff.borrow_and_update();
            (e.refuse_new, e.stall_new, e.reset_epoch)
        };
        if refuse || now_epoch != epoch {
            if refuse {
                m.refused.inc();
            } else {
                m.reset.inc();
            }
            reset(&client);
            return;
        }
        if !stall {
            break;
        }
        if eff.changed().await.is_err() {
            return;
        }
    }
    let upstream = match tokio::time::timeout(
        shared.opts.connect_timeout,
        TcpStream::connect(link.spec.upstream),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(link = %link.spec.name, error = %e, "upstream refused");
            m.refused.inc();
            reset(&client);
            return;
        }
        Err(_) => {
            tracing::debug!(link = %link.spec.name, "upstream connect timed out");
            m.refused.inc();
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let ctx = PumpCtx {
        origin: shared.origin,
        link: &link,
        opts: &shared.opts,
    };
    let forward = pump(
        &ctx,
        &client,
        &upstream,
        Direction::Forward,
        eff.clone(),
        seed,
    );
    let reverse = pump(
        &ctx,
        &upstream,
        &client,
        Direction::Reverse,
        eff.clone(),
        seed ^ 0xD1B5_4A32_D192_ED03,
    );
    let killed = async {
        loop {
            if eff.borrow_and_update().reset_epoch != epoch {
                return;
            }
            if eff.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let outcome = tokio::select! {
        r = async { tokio::try_join!(forward, reverse) } => r.err(),
        _ = killed => {
            m.reset.inc();
            Some(io::Error::new(io::ErrorKind::ConnectionReset, "reset fault"))
        }
    };
    if let Some(e) = outcome {
        // One side failed or a reset fault hit: the other side learns by RST, like through a
        // real middlebox that lost the connection.
        tracing::debug!(link = %link.spec.name, error = %e, "connection reset");
        reset(&client);
        reset(&upstream);
    }
}

struct PumpCtx<'a> {
    origin: Instant,
    link: &'a LinkRuntime,
    opts: &'a ProxyOptions,
}

impl PumpCtx<'_> {
    fn us_since_origin(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }
}

enum Item {
    Data { bytes: Vec<u8>, release_us: u64 },
    Eof { release_us: u64 },
}

/// Keeps the queued-bytes gauge right when a pump ends with bytes still queued.
struct QueuedGuard<'a> {
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
    queued: AtomicU64,
}

impl QueuedGuard<'_> {
    fn add(&self, n: usize) {
        let n = n as u64;
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.gauge.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn sub(&self, n: usize) {
        let n = n as u64;
        self.queued.fetch_sub(n, Ordering::Relaxed);
        self.gauge.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        let left = self.queued.load(Ordering::Relaxed);
        self.gauge.dec_by(i64::try_from(left).unwrap_or(i64::MAX));
    }
}

/// Moves bytes from `src` to `dst`, shaped as `dir` of the link. Ends `Ok` after delivering the
/// FIN; ends `Err` on any socket error (the caller resets the connection).
async fn pump(
    ctx: &PumpCtx<'_>,
    src: &TcpStream,
    dst: &TcpStream,
    dir: Direction,
    eff: watch::Receiver<Effective>,
    seed: u64,
) -> io::Result<()> {
    let budget = Semaphore::new(ctx.opts.hold_cap_bytes.max(ctx.opts.read_chunk));
    let queued = QueuedGuard {
        gauge: &ctx.link.metrics.queued[dir_index(dir)],
        queued: AtomicU64::new(0),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let read = read_side(ctx, src, dir, eff.clone(), seed, tx, &budget, &queued);
    let write = write_side(ctx, dst, dir, eff, rx, &budget, &queued);
    tokio::try_join!(read, write).map(|_| ())
}

#[allow(clippy::too_many_arguments)]
async fn read_side(
    ctx: &PumpCtx<'_>,
    src: &TcpStream,
    dir: Direction,
    eff: watch::Receiver<Effective>,
    seed: u64,
    tx: mpsc::UnboundedSender<Item>,
    budget: &Semaphore,
    queued: &QueuedGuard<'_>,
) -> io::Result<()> {
    let mut rng = Rng::new(seed);
    let mut clock = ReleaseClock::default();
    let chunk = ctx.opts.read_chunk.max(1);
    let chunk_permits = u32::try_from(chunk).unwrap_or(u32::MAX);
    let mut buf = vec![0u8; chunk];
    loop {
        // Reserve room before reading: a full queue stops reading, and TCP pushes back.
        budget
            .acquire_many(chunk_permits)
            .await
            .map_err(|_| io::Error::other("budget closed"))?
            .forget();
        let n = loop {
            src.readable().await?;
            match src.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        budget.add_permits(chunk - n);
        let arrival_us = ctx.us_since_origin(Instant::now());
        let delay = {
            let e = eff.borrow();
            let d = e.dir(dir);
            delay_us(d.latency_ms, d.jitter_ms, rng.next_f64())
        };
        let release_us = clock.schedule(arrival_us, delay);
        if n == 0 {
            let _ = tx.send(Item::Eof { release_us });
            return Ok(());
        }
        queued.add(n);
        if tx
            .send(Item::Data {
                bytes: buf[..n].to_vec(),
                release_us,
            })
            .is_err()
        {
            return Ok(());
        }
    }
}

async fn write_side(
    ctx: &PumpCtx<'_>,
    dst: &TcpStream,
    dir: Direction,
    mut eff: watch::Receiver<Effective>,
    mut rx: mpsc::UnboundedReceiver<Item>,
    budget: &Semaphore,
    queued: &QueuedGuard<'_>,
) -> io::Result<()> {
    let bytes_counter = &ctx.link.metrics.bytes[dir_index(dir)];
    while let Some(item) = rx.recv().await {
        let release_us = match &item {
            Item::Data { release_us, .. } | Item::Eof { release_us } => *release_us,
        };
        sleep_until_us(ctx, release_us).await;
        wait_unblocked(&mut eff, dir).await;
        let bytes = match item {
            Item::Eof { .. } => {
                // Half-close: the other direction may still be flowing.
                let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Item::Data { bytes, .. } => bytes,
        };
        let mut off = 0;
        while off < bytes.len() {
            let rate = eff.borrow().dir(dir).bandwidth;
            let len = match rate {
                None => bytes.len() - off,
                Some(rate) => {
                    let now_us = ctx.us_since_origin(Instant::now());
                    let len = TokenBucket::piece_for(rate).min(bytes.len() - off);
                    let wait = ctx.link.reserve(dir, rate, len, now_us);
                    if wait > 0 {
                        let until = std::time::Instant::now() + Duration::from_micros(wait);
                        crate::timer::sleep_until(until).await;
                        // A fault may have started while we waited for tokens.
                        wait_unblocked(&mut eff, dir).await;
                    }
                    len
                }
            };
            write_all(dst, &bytes[off..off + len]).await?;
            off += len;
            bytes_counter.inc_by(len as u64);
            queued.sub(len);
            budget.add_permits(len);
        }
    }
    Ok(())
}

/// Sleeps until `release_us` after the origin (not at all if it has passed), with
/// sub-millisecond accuracy ([`crate::timer`]).
async fn sleep_until_us(ctx: &PumpCtx<'_>, release_us: u64) {
    let at = ctx.origin + Duration::from_micros(release_us);
    crate::timer::sleep_until(at.into_std()).await;
}

/// Waits while `dir` is blocked by a fault.
async fn wait_unblocked(eff: &mut watch::Receiver<Effective>, dir: Direction) {
    loop {
        if !eff.borrow_and_update().dir(dir).blocked {
            return;
        }
        if eff.changed().await.is_err() {
            // The link is gone (server shutting down): the connection is about to be dropped.
            std::future::pending::<()>().await;
        }
    }
}

async fn write_all(dst: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        dst.writable().await?;
        match dst.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
