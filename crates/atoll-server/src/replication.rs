//! The replication adapter: runs [`atoll_core::repl::ReplCore`] over HTTP.
//!
//! Both routes are served on the peer listener ([`crate::peer`]), and take a message only from
//! the region the connection authenticated (mutual TLS), or from anyone with `insecure = true`.
//!
//! - `POST /v1/replication/heartbeat`: a peer's one-way heartbeat (versioned binary body).
//! - `POST /v1/replication/subscribe`: a peer asks for the ops of some origins beyond its applied
//!   vector; the answer is an endless stream of length-prefixed frames (ops batches read from the
//!   operation log, heartbeats when idle). The stream is bounded: a slow subscriber stalls its
//!   sender through a small channel and TCP, never grows memory.
//!
//! Every decision (when heartbeats go out, which subscriptions run, what a frame means, when a
//! served stream sends what, when maintenance runs) is made by the pure
//! [`atoll_core::driver::ReplDriver`] and [`atoll_core::driver::ServedStream`], which the
//! simulation runs too (`docs/design/replication-driver.md`). This module carries their commands
//! out: one driver loop (timers), one task per open subscription (frames in, batches applied in
//! order), one task per served stream, and the two routes below.

use crate::metrics::{
    ConflictLabels, KeyspaceOnly, Metrics, OutcomeLabels, PairLabels, RefusedLabels,
};
use crate::peer::{self, PeerAuth, PeerClient};
use atoll_core::clock::Clock;
use atoll_core::codec;
use atoll_core::driver::{
    ApplyReport, Command, DriverConfig, LocalView, Notice, Now, ReplDriver, ServedStream,
    StreamStep, SubId,
};
use atoll_core::repl::{
    Frame, FrameReader, Heartbeat, LinkState, PeerStatus, Refusal, ReplConfig, Subscribe,
    encode_frame,
};
use atoll_core::{AtollError, RegionId, Result};
use atoll_store::Store;
use axum::body::{Body, Bytes};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Where the outcome of one apply handed to the store arrives.
type Applying = tokio::sync::oneshot::Receiver<Result<atoll_store::RemoteOutcome>>;

/// The response header of a `410 ATOLL-REGION-REMOVED` answer to a removed region's heartbeat,
/// subscription or snapshot request: how many of the removed region's writes the answering
/// region holds (`docs/design/region-removal.md`).
pub const REMOVED_HOLDS_HEADER: &str = "x-atoll-removed-holds";

/// Longest sleep of the driver loop (it also wakes when the driver's next timer is due).
const DRIVER_NAP: Duration = Duration::from_millis(100);

/// Everything the replication tasks and handlers share: the pure [`ReplDriver`] (which decides)
/// and what carries its commands out (HTTP clients, the store, metrics).
pub struct Replicator {
    driver: Mutex<ReplDriver>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// The cluster's membership (set once the region is assembled): a replica added to a
    /// running cluster is admitted here (`docs/design/adding-regions.md`).
    membership: std::sync::OnceLock<Arc<crate::members::Membership>>,
    /// Woken after every commit that added to the operation log.
    pub changed: Arc<Notify>,
    http: PeerClient,
    stream_http: PeerClient,
    max_lag_secs: u64,
    /// Set on shutdown: every subscription stream this region serves ends, so graceful shutdown
    /// does not wait for peers to give up on them.
    stopping: tokio::sync::watch::Sender<bool>,
    /// The open subscriptions' tasks (aborted when the driver closes them).
    subs: Mutex<BTreeMap<SubId, JoinHandle<()>>>,
    /// A maintenance pass is running (a slow one is not stacked up).
    maintaining: Arc<AtomicBool>,
    /// The driver's monotonic clock starts here.
    mono_base: std::time::Instant,
    /// When (wall ms) this region last held every origin's writes, as of the latest driver call;
    /// `u64::MAX` for never ([`Self::staleness_ms`]).
    stable_at_ms: AtomicU64,
    /// How long entries every region applied stay in the operation log.
    oplog_retention_ms: u64,
    /// Set from the moment the driver decides this region must bootstrap by snapshot until
    /// the bootstrap is complete: client traffic is refused meanwhile.
    bootstrapping: AtomicBool,
    /// The bootstrap's donor, and the last attempt's error (for `/v1/status`).
    bootstrap_info: Mutex<BootstrapInfo>,
    /// Snapshot chunks read for peers at once (the donor keeps serving its own clients).
    snapshot_slots: tokio::sync::Semaphore,
    /// When a refused heartbeat of a region that is not a peer was last logged as a warning.
    not_a_peer_logged_ms: AtomicU64,
    /// When a refused heartbeat of a region this region removed was last logged as a warning.
    removed_logged_ms: AtomicU64,
    /// The regions this region removed: the streams it serves them end
    /// (`docs/design/region-removal.md`).
    removed_peers: tokio::sync::watch::Sender<BTreeSet<RegionId>>,
    /// Set once this region logged that a peer said it was removed from the cluster.
    removed_logged: AtomicBool,
}

/// What `/v1/status` says about a bootstrap.
#[derive(Clone, Debug, Default)]
pub struct BootstrapInfo {
    pub reason: Option<String>,
    pub donor: Option<RegionId>,
    pub last_error: Option<String>,
    pub attempts: u32,
}

/// Most keys in one snapshot chunk.
const SNAPSHOT_CHUNK_ROWS: usize = 4_096;
/// About the most bytes of keys and states in one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;
/// Largest snapshot chunk answer read (a chunk's bytes plus the last row and framing).
const MAX_SNAPSHOT_ANSWER_BYTES: usize = 80 << 20;
/// Largest error answer read from a peer (an error body is a few hundred bytes).
const MAX_ERROR_ANSWER_BYTES: usize = 64 << 10;
/// How long one chunk may take to arrive.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// What a [`Replicator`] is configured with.
pub struct Settings {
    pub cluster: String,
    /// Where to reach each peer.
    pub peer_addrs: BTreeMap<RegionId, SocketAddr>,
    pub core: ReplConfig,
    pub max_lag_secs: u64,
    /// Mutual TLS between regions (`None`: plain HTTP, `insecure = true`).
    pub tls: Option<atoll_tls::RegionTls>,
    /// `[replication] oplog_retention`.
    pub oplog_retention_ms: u64,
}

/// What a subscription task must do itself after handing its commands over.
enum Own {
    Continue,
    Apply(Vec<atoll_core::op::OpEntry>),
    Ended(String),
}

impl Replicator {
    pub fn new(
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: Settings,
        changed: Arc<Notify>,
    ) -> Result<Arc<Replicator>> {
        let Settings {
            cluster,
            peer_addrs,
            core: cfg,
            max_lag_secs,
            tls,
            oplog_retention_ms,
        } = settings;
        let me = store.region().clone();
        let interval = Duration::from_millis(cfg.heartbeat_interval_ms);
        let bound = interval.max(Duration::from_millis(200));
        let http = PeerClient::new(&peer_addrs, tls.as_ref(), bound, Some(bound), true);
        let stream_http = PeerClient::new(&peer_addrs, tls.as_ref(), bound, None, false);
        let mono_base = std::time::Instant::now();
        let local = store.replication_view();
        let now = Now {
            wall_ms: clock.physical_ms(),
            mono_ms: 0,
        };
        let driver = ReplDriver::new(
            me,
            peer_addrs.keys().cloned().collect(),
            DriverConfig::new(cluster, cfg),
            &local,
            now,
        );
        let removed_by = store.removed_by();
        if let Some(r) = &removed_by {
            metrics.region_removed.set(1);
            tracing::error!(
                by = %r.by,
                held_by_members = r.held_by_members,
                "this region was removed from the cluster (the other regions reloaded a config without it): it takes no writes, and what it wrote that no member holds is not replicated; send clients elsewhere and stop it (docs/design/region-removal.md)"
            );
        }
        for r in store.removed_regions().keys() {
            metrics
                .removed_region_settled
                .get_or_create(&crate::metrics::RemovedRegionLabels {
                    region: r.to_string(),
                })
                .set(0);
        }
        Ok(Arc::new(Replicator {
            driver: Mutex::new(driver),
            store,
            clock,
            metrics,
            membership: std::sync::OnceLock::new(),
            changed,
            http,
            stream_http,
            max_lag_secs,
            stopping: tokio::sync::watch::Sender::new(false),
            subs: Mutex::new(BTreeMap::new()),
            maintaining: Arc::new(AtomicBool::new(false)),
            mono_base,
            stable_at_ms: AtomicU64::new(u64::MAX),
            oplog_retention_ms,
            bootstrapping: AtomicBool::new(false),
            bootstrap_info: Mutex::new(BootstrapInfo::default()),
            snapshot_slots: tokio::sync::Semaphore::new(1),
            not_a_peer_logged_ms: AtomicU64::new(0),
            removed_logged_ms: AtomicU64::new(0),
            removed_peers: tokio::sync::watch::Sender::new(local.removed.iter().cloned().collect()),
            removed_logged: AtomicBool::new(removed_by.is_some()),
        }))
    }

    /// Connects the membership (once, when the region is assembled).
    pub fn set_membership(&self, m: Arc<crate::members::Membership>) {
        self.metrics.region_admitted.set(i64::from(m.is_admitted()));
        let _ = self.membership.set(m);
    }

    /// Adds a region to replicate with, reached at `addr` (a config reload,
    /// `docs/design/adding-regions.md`): heartbeats to it start at the next tick; until it is
    /// heard, this region truncates nothing, and until it claims, collects no tombstone.
    pub fn add_peer(&self, peer: &RegionId, addr: SocketAddr) -> Result<()> {
        self.http.add_peer(peer, addr);
        self.stream_http.add_peer(peer, addr);
        let added = self.with_driver(|d, _, _| d.add_peer(peer.clone()))?;
        if added {
            tracing::info!(peer = %peer, %addr, "config reload: replicating with a region added to the cluster");
        }
        Ok(())
    }

    /// Removes a region from the cluster (a config reload that drops it,
    /// `docs/design/region-removal.md`): no more heartbeats to it and its own refused, no peer
    /// client reaches it, the streams this region serves it end, and the subscriptions to it end
    /// at the driver's next tick; then the removal is made effective in the store, after every
    /// apply queued before it (no entry that came from it is applied after that, whatever is
    /// still in flight). Returns how many of its writes this region holds. Idempotent.
    pub async fn remove_peer(&self, peer: &RegionId) -> Result<u64> {
        self.with_driver(|d, _, _| d.remove_peer(peer))?;
        self.http.remove_peer(peer);
        self.stream_http.remove_peer(peer);
        self.removed_peers.send_modify(|r| {
            r.insert(peer.clone());
        });
        let store = self.store.clone();
        let region = peer.clone();
        let now_ms = self.clock.physical_ms();
        let holds = tokio::task::spawn_blocking(move || store.remove_region(&region, now_ms))
            .await
            .map_err(|e| AtollError::Storage(format!("removal task: {e}")))??;
        self.metrics
            .removed_region_settled
            .get_or_create(&crate::metrics::RemovedRegionLabels {
                region: peer.to_string(),
            })
            .set(0);
        self.forget_link_series(peer);
        tracing::info!(
            region = %peer,
            holds,
            "config reload: region removed from the cluster; this region holds {holds} of its writes (its writes settle once every region has removed it and holds as many)"
        );
        Ok(holds)
    }

    /// Drops the link series of a region that is no peer any more: a stale `atoll_peer_reachable
    /// 0` would keep AtollPeerUnreachable and AtollPeerAwayLogsGrowing firing for ever.
    fn forget_link_series(&self, peer: &RegionId) {
        let l = self.pair(peer);
        self.metrics.peer_reachable.remove(&l);
        self.metrics.peer_rtt.remove(&l);
        self.metrics.replication_lag_seconds.remove(&l);
        self.metrics.replication_lag_ops.remove(&l);
        self.metrics.clock_offset_seconds.remove(&l);
        self.metrics.peer_clock_skewed.remove(&l);
    }

    /// The regions this region removed from the cluster (in effect in its store).
    pub fn removed_regions(&self) -> BTreeMap<RegionId, atoll_store::RemovedRegion> {
        self.store.removed_regions()
    }

    /// The regions this region removed: whether their writes are settled, or whom they wait for.
    pub fn removed_status(&self) -> Vec<atoll_core::repl::RemovedStatus> {
        self.with_driver(|d, _, local| {
            d.sync(local);
            d.core().removed_status()
        })
        .unwrap_or_default()
    }

    /// How many of `region`'s writes this region holds, if it removed `region` (what its
    /// `410 ATOLL-REGION-REMOVED` answers say).
    pub fn removed_holds(&self, region: &RegionId) -> Option<u64> {
        self.with_driver(|d, _, _| {
            d.core()
                .removed()
                .contains(region)
                .then(|| d.core().applied().get(region))
        })
        .ok()
        .flatten()
    }

    /// The refusal of a request from a region this region removed.
    fn removed_refusal(&self, region: &RegionId, what: &str) -> Result<()> {
        match self.removed_holds(region) {
            Some(holds) => Err(AtollError::RegionRemoved(format!(
                "{what} from `{region}`, which this region removed from the cluster (it holds {holds} of its writes)"
            ))),
            None => Ok(()),
        }
    }

    /// A peer answered this region's heartbeat `410 ATOLL-REGION-REMOVED`: this region was
    /// removed from the cluster. Recorded durably (the store refuses every local write from now
    /// on); `holds` is how many of this region's writes that peer holds.
    async fn on_removed_by(&self, by: RegionId, holds: u64) {
        if self
            .store
            .removed_by()
            .is_some_and(|r| r.held_by_members >= holds)
        {
            return;
        }
        let store = self.store.clone();
        let at_ms = self.clock.physical_ms();
        let who = by.clone();
        let recorded = tokio::task::spawn_blocking(move || store.mark_removed(&who, at_ms, holds))
            .await
            .map_err(|e| AtollError::Storage(format!("removal task: {e}")))
            .and_then(|r| r);
        match recorded {
            Ok(()) => {
                self.metrics.region_removed.set(1);
                if !self.removed_logged.swap(true, Ordering::AcqRel) {
                    let own = self.store.applied().get(self.store.region());
                    tracing::error!(
                        %by,
                        held_by_members = holds,
                        own_writes = own,
                        "this region was removed from the cluster (`{by}` answered its heartbeat 410 ATOLL-REGION-REMOVED): it takes no writes from now on, and its writes no member holds are not replicated; send clients elsewhere and stop it (docs/design/region-removal.md)"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(%by, error = %e, "cannot record that this region was removed; trying at the next heartbeat")
            }
        }
    }

    /// A replica that is not admitted yet: admitted once every region of its config has sent it
    /// a heartbeat, with its clock raised durably above everything those heartbeats carried
    /// (`docs/design/adding-regions.md`).
    fn check_admission(&self) {
        let Some(m) = self.membership.get() else {
            return;
        };
        if m.is_admitted() {
            return;
        }
        let Ok(admission) = self.with_driver(|d, _, _| d.core().admission()) else {
            return;
        };
        match admission {
            Err(waiting) => m.set_waiting_for(waiting),
            Ok(floor) => match self.store.mark_admitted(floor) {
                Ok(()) => {
                    m.set_admitted();
                    m.set_waiting_for(Vec::new());
                    self.metrics.region_admitted.set(1);
                    tracing::info!(
                        floor_ms = floor,
                        "admitted by every region of the cluster: taking writes"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "cannot persist the admission; trying again"),
            },
        }
    }

    /// Whether this region is bootstrapping by snapshot (it serves no client traffic).
    pub fn is_bootstrapping(&self) -> bool {
        self.bootstrapping.load(Ordering::Acquire)
    }

    /// The bootstrap under way, for `/v1/status` and `/healthz` (`None`: none).
    pub fn bootstrap_status(&self) -> Option<serde_json::Value> {
        if !self.is_bootstrapping() {
            return None;
        }
        let info = self
            .bootstrap_info
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default();
        let progress = self.store.bootstrap_progress();
        Some(serde_json::json!({
            "reason": info.reason,
            "donor": info.donor.map(|d| d.to_string()),
            "attempts": info.attempts,
            "last_error": info.last_error,
            "keys_loaded": progress.as_ref().map_or(0, |p| p.keys),
            "bytes_loaded": progress.as_ref().map_or(0, |p| p.bytes),
            "state_cleared": progress.is_some(),
        }))
    }

    fn now(&self) -> Now {
        Now {
            wall_ms: self.clock.physical_ms(),
            mono_ms: u64::try_from(self.mono_base.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Runs `f` on the driver with the time and the store's state now.
    ///
    /// The store's view is read after the lock is taken, so a heartbeat built here reports a
    /// head at least as new as everything committed before any earlier call (an earlier
    /// heartbeat taken in, say) returned: session reads rely on it (`session_peers`).
    fn with_driver<T>(&self, f: impl FnOnce(&mut ReplDriver, Now, &LocalView) -> T) -> Result<T> {
        let mut d = self
            .driver
            .lock()
            .map_err(|_| AtollError::Storage("replication state lock poisoned".into()))?;
        let local = self.store.replication_view();
        let now = self.now();
        let out = f(&mut d, now, &local);
        // Stored as the time it was last caught up, so a later read adds the time since.
        let stable_at = d
            .core()
            .staleness_ms(now.wall_ms)
            .map_or(u64::MAX, |s| now.wall_ms.saturating_sub(s));
        self.stable_at_ms.store(stable_at, Ordering::Relaxed);
        Ok(out)
    }

    /// This region's staleness bound as of the latest replication event (heartbeat, apply,
    /// timer): how long ago it last held every origin's writes, in ms; `None` if it never did.
    /// Read without the driver's lock (every client read states it): the time since the
    /// latest event's "caught up" time, so it never understates.
    pub fn staleness_ms(&self) -> Option<u64> {
        match self.stable_at_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            at => Some(self.clock.physical_ms().saturating_sub(at)),
        }
    }

    /// The staleness bound now, from the driver (for a read that is refused or forwarded on it).
    pub fn staleness_now(&self) -> Option<u64> {
        self.with_driver(|d, now, local| {
            d.sync(local);
            d.core().staleness_ms(now.wall_ms)
        })
        .ok()
        .flatten()
    }

    /// The peers that say they are within `max_ms` of staleness (a bounded read's forward).
    pub fn peers_within_staleness(&self, max_ms: u64) -> Vec<RegionId> {
        self.with_driver(|d, now, _| d.core().peers_within_staleness(now.wall_ms, max_ms))
            .unwrap_or_default()
    }

    /// The mark of a session read's arrival (per peer, the heartbeats built for it so far), for
    /// [`Self::session_check`].
    pub fn session_mark(&self) -> Result<BTreeMap<RegionId, u64>> {
        self.with_driver(|d, _, _| d.core().session_mark())
    }

    /// Decides a read that presents `token` and arrived at `mark` ([`Self::session_mark`]).
    pub fn session_check(
        &self,
        token: &atoll_core::session::SessionToken,
        mark: &BTreeMap<RegionId, u64>,
    ) -> Result<atoll_core::session::SessionCheck> {
        let issued = self.store.visible_applied().get(self.store.region());
        self.with_driver(|d, _, local| {
            d.sync(local);
            let peers = d.core().session_peers(mark);
            atoll_core::session::check(token, d.core().me(), d.core().applied(), issued, &peers)
        })
    }

    /// Carries out the driver's commands. Those addressed to subscription `own` (the caller's)
    /// are handed back: its next batch to apply, or its end.
    fn execute(self: &Arc<Self>, own: Option<SubId>, cmds: Vec<Command>) -> Own {
        let mut mine = Own::Continue;
        for cmd in cmds {
            match cmd {
                Command::SendHeartbeat { to, hb } => self.send_heartbeat(&to, &hb),
                Command::Subscribe { id, peer, request } => {
                    // The driver subscribes only to its peers, and every peer is in the clients'
                    // address book (both grow together in `add_peer`).
                    let me = self.clone();
                    let handle = tokio::spawn(async move {
                        if let Err(reason) =
                            me.clone().subscription(id, peer.clone(), request).await
                        {
                            tracing::debug!(peer = %peer, %reason, "subscription ended");
                        }
                        let _ = me.with_driver(|d, _, _| d.on_subscription_ended(id));
                    });
                    if let Ok(mut subs) = self.subs.lock() {
                        subs.retain(|_, h| !h.is_finished());
                        subs.insert(id, handle);
                    }
                }
                Command::Unsubscribe { id, peer, reason } => {
                    if own == Some(id) {
                        mine = Own::Ended(reason);
                        continue;
                    }
                    tracing::debug!(peer = %peer, %reason, "closing a subscription");
                    if let Some(h) = self.subs.lock().ok().and_then(|mut s| s.remove(&id)) {
                        h.abort();
                    }
                }
                Command::Apply { id, entries, .. } => {
                    if own == Some(id) {
                        mine = Own::Apply(entries);
                    }
                }
                Command::Maintain { horizon, stable } => self.maintain(horizon, stable),
                Command::Bootstrap { donor, reason } => {
                    self.bootstrapping.store(true, Ordering::Release);
                    self.metrics.bootstrap_active.set(1);
                    if let Ok(mut i) = self.bootstrap_info.lock() {
                        i.reason = Some(reason.clone());
                        i.donor = Some(donor.clone());
                        i.attempts += 1;
                    }
                    tracing::warn!(%donor, %reason, "bootstrapping by snapshot: serving no client traffic until it is complete");
                    let me = self.clone();
                    tokio::spawn(async move { me.bootstrap(donor).await });
                }
                Command::Notice(n) => self.notice(n),
            }
        }
        mine
    }

    fn notice(&self, n: Notice) {
        match n {
            Notice::HeartbeatRefused { from, refusal } => self.refused(&from, &refusal),
            Notice::Rtt { peer, rtt_ms } => self
                .metrics
                .peer_rtt
                .get_or_create(&self.pair(&peer))
                .observe(rtt_ms / 1000.0),
            Notice::SkewBegan { peer, offset_ms } => tracing::error!(
                peer = %peer,
                offset_ms,
                "peer clock runs ahead beyond max_clock_offset: its writes are held back until it is back in bounds"
            ),
            Notice::SkewEnded { peer, offset_ms } => tracing::info!(
                peer = %peer,
                offset_ms,
                "peer clock back in bounds: applying its writes again"
            ),
            Notice::Admitted { .. } => {}
        }
    }

    /// Takes in a heartbeat from a peer. A refused heartbeat changes nothing and is counted.
    pub fn on_heartbeat(self: &Arc<Self>, hb: &Heartbeat) -> Result<()> {
        match self.with_driver(|d, now, local| d.on_heartbeat(hb, now, local))? {
            Ok(cmds) => {
                // A heartbeat that proves this region lost writes is still refused (nothing in
                // it is taken in); the commands start the bootstrap it calls for.
                let refused = cmds.iter().find_map(|c| match c {
                    Command::Notice(Notice::HeartbeatRefused { refusal, .. }) => {
                        Some(refusal.to_string())
                    }
                    _ => None,
                });
                self.execute(None, cmds);
                match refused {
                    Some(why) => Err(AtollError::BadRequest(why)),
                    None => Ok(()),
                }
            }
            Err(refusal) => {
                self.refused(&hb.from, &refusal);
                Err(match refusal {
                    Refusal::Removed(_) => AtollError::RegionRemoved(refusal.to_string()),
                    _ => AtollError::BadRequest(refusal.to_string()),
                })
            }
        }
    }

    fn refused(&self, from: &RegionId, refusal: &Refusal) {
        // A region added to the cluster heartbeats every region from its start, and those that
        // have not reloaded a config that lists it yet refuse it every interval: one warning a
        // minute for those (the name is anyone's to choose), every other refusal each time.
        // A removed region keeps heartbeating until it is stopped: one warning a minute too.
        let once_a_minute = |slot: &AtomicU64| {
            let now = self.clock.physical_ms();
            let last = slot.load(Ordering::Relaxed);
            now.saturating_sub(last) >= 60_000
                && slot
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
        };
        let loud = match refusal {
            Refusal::NotAPeer(_) => once_a_minute(&self.not_a_peer_logged_ms),
            Refusal::Removed(_) => once_a_minute(&self.removed_logged_ms),
            _ => true,
        };
        if loud {
            tracing::warn!(peer = %from, reason = refusal.as_str(), "heartbeat refused: {refusal}");
        } else {
            tracing::debug!(peer = %from, reason = refusal.as_str(), "heartbeat refused: {refusal}");
        }
        self.metrics
            .heartbeats_refused
            .get_or_create(&RefusedLabels {
                // A name that is not a peer is anyone's to choose: one label for all of them, so
                // forged names cannot grow the metric without bound.
                peer_region: match refusal {
                    Refusal::NotAPeer(_) => "unknown".to_string(),
                    _ => from.to_string(),
                },
                reason: refusal.as_str().to_string(),
            })
            .inc();
    }

    fn pair(&self, peer: &RegionId) -> PairLabels {
        PairLabels {
            region: self.store.region().to_string(),
            peer_region: peer.to_string(),
        }
    }

    /// How far behind the lease `holder` this region and its peers are (fencing).
    pub fn promotion_view(&self, holder: &RegionId) -> atoll_core::fence::PromotionView {
        self.with_driver(|d, now, local| {
            d.sync(local);
            d.core().promotion_view(holder, now.wall_ms)
        })
        .unwrap_or_default()
    }

    /// What `peer` has applied of this region's writes, as its last heartbeat said.
    pub fn peer_applied_of_mine(&self, peer: &RegionId) -> Option<u64> {
        let me = self.store.region().clone();
        self.with_driver(|d, now, _| d.core().promotion_view(&me, now.wall_ms))
            .ok()
            .and_then(|v| {
                v.others
                    .into_iter()
                    .find(|(r, _)| r == peer)
                    .map(|(_, a)| a)
            })
    }

    /// Peer status for `/v1/status`, and the tombstone horizon.
    pub fn status(&self) -> Result<(Vec<PeerStatus>, Option<u64>)> {
        self.with_driver(|d, now, local| {
            d.sync(local);
            (
                d.core().status(now.wall_ms),
                d.core().tombstone_horizon_ms(now.wall_ms),
            )
        })
    }

    /// Ends every subscription stream this region serves (on shutdown).
    pub fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }

    pub fn max_lag_secs(&self) -> u64 {
        self.max_lag_secs
    }

    /// Refreshes the gauges from the core (called at scrape time).
    pub fn refresh_metrics(&self) {
        let Ok((peers, horizon)) = self.status() else {
            return;
        };
        for p in peers {
            let l = self.pair(&p.region);
            self.metrics
                .peer_reachable
                .get_or_create(&l)
                .set(i64::from(p.reachable));
            self.metrics
                .replication_lag_seconds
                .get_or_create(&l)
                .set(p.lag_seconds.unwrap_or(f64::INFINITY));
            self.metrics
                .replication_lag_ops
                .get_or_create(&l)
                .set(i64::try_from(p.lag_ops).unwrap_or(i64::MAX));
            self.metrics
                .clock_offset_seconds
                .get_or_create(&l)
                .set(p.clock_offset_ms.unwrap_or(0.0) / 1000.0);
            self.metrics
                .peer_clock_skewed
                .get_or_create(&l)
                .set(i64::from(p.state == LinkState::ClockSkew));
        }
        for r in self.removed_status() {
            // Also if a scrape or a heartbeat's answer raced with the removal.
            self.forget_link_series(&r.region);
            self.metrics
                .removed_region_settled
                .get_or_create(&crate::metrics::RemovedRegionLabels {
                    region: r.region.to_string(),
                })
                .set(i64::from(r.settled));
        }
        let age = horizon.map_or(-1.0, |h| {
            self.clock.physical_ms().saturating_sub(h) as f64 / 1000.0
        });
        self.metrics.tombstone_horizon_age.set(age);
        let truncated = self
            .store
            .stats()
            .oplog_truncated_total
            .load(Ordering::Relaxed);
        let counted = self.metrics.oplog_truncated.get();
        self.metrics
            .oplog_truncated
            .inc_by(truncated.saturating_sub(counted));
        for (origin, seq) in self.store.truncated_through() {
            self.metrics
                .oplog_truncated_seq
                .get_or_create(&crate::metrics::OriginLabels {
                    origin: origin.to_string(),
                })
                .set(seq);
        }
        for (table, bytes) in self.store.disk_usage() {
            self.metrics
                .store_disk_bytes
                .get_or_create(&crate::metrics::TableLabels {
                    table: table.to_string(),
                })
                .set(bytes);
        }
    }

    /// Starts the driver loop (timers: heartbeats, subscriptions, maintenance, skew watch); it
    /// stops, and closes every subscription, when `stop` is notified.
    pub fn start(self: &Arc<Self>, stop: Arc<Notify>) -> Vec<JoinHandle<()>> {
        self.resume_bootstrap();
        vec![tokio::spawn(self.clone().driver_loop(stop))]
    }

    async fn driver_loop(self: Arc<Self>, stop: Arc<Notify>) {
        loop {
            // One look at the store and the driver per round: the due timers, then when the
            // next one is due.
            let ticked = self.with_driver(|d, now, local| {
                let cmds = d.tick(now, local);
                (cmds, d.next_wake().saturating_sub(now.mono_ms))
            });
            let Ok((cmds, wake_in_ms)) = ticked else {
                break;
            };
            self.execute(None, cmds);
            self.check_admission();
            let nap = Duration::from_millis(wake_in_ms).clamp(Duration::from_millis(1), DRIVER_NAP);
            tokio::select! {
                _ = stop.notified() => break,
                _ = tokio::time::sleep(nap) => {}
            }
        }
        if let Ok(mut subs) = self.subs.lock() {
            for (_, h) in std::mem::take(&mut *subs) {
                h.abort();
            }
        }
    }

    /// Sends one heartbeat to `peer`, one way: the answer does not matter (a cut return path must
    /// not stop it), except `410 ATOLL-REGION-REMOVED`, which says this region was removed from
    /// the cluster.
    fn send_heartbeat(self: &Arc<Self>, peer: &RegionId, hb: &Heartbeat) {
        let Ok(body) = codec::encode(hb) else {
            return;
        };
        let (me, peer) = (self.clone(), peer.clone());
        tokio::spawn(async move {
            let Ok(resp) = me.http.post(&peer, HEARTBEAT_PATH, body).await else {
                return;
            };
            if resp.status() != axum::http::StatusCode::GONE {
                return;
            }
            let holds = resp
                .header(REMOVED_HOLDS_HEADER)
                .and_then(|h| h.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let Ok(text) = resp.bytes(MAX_ERROR_ANSWER_BYTES).await else {
                return;
            };
            if crate::forward::error_code(&text).as_deref() == Some("ATOLL-REGION-REMOVED") {
                me.on_removed_by(peer, holds).await;
            }
        });
    }

    /// Runs subscription `id` until the stream breaks, or the driver closes it. Every frame goes
    /// to the driver; the batches it admits are applied here, in order, before the next frame.
    /// Returns why it ended: a subscription ending is how replication recovers (the driver opens
    /// a fresh one from the applied vector), not an error anyone must act on.
    async fn subscription(
        self: Arc<Self>,
        id: SubId,
        peer: RegionId,
        request: Subscribe,
    ) -> std::result::Result<(), String> {
        let stopped = |e: AtollError| format!("replication state: {e}");
        // The driver gives up on a silent stream too; this bounds each wait on the transport.
        let silence = self
            .with_driver(|d, _, _| Duration::from_millis(d.config().silence_ms()))
            .map_err(stopped)?;
        let body = codec::encode(&request).map_err(|e| format!("cannot encode it: {e}"))?;
        let resp = tokio::time::timeout(
            silence,
            self.stream_http
                .post(&peer, crate::streams::SUBSCRIBE_PATH, body),
        )
        .await
        .map_err(|_| format!("subscription to {peer} timed out"))?
        .map_err(|e| format!("subscription to {peer}: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
                // Over its stream cap: retried every 200 ms, so not worth a warning each time
                // (the peer counts these in atoll_replication_requests_refused_total).
                tracing::debug!(peer = %peer, body = %text, "peer has no subscription slot free");
            } else if status == axum::http::StatusCode::GONE {
                // This region was removed from the cluster: its heartbeats learn it, and say it
                // once (`on_removed_by`); the subscriptions are retried all the same.
                tracing::debug!(peer = %peer, body = %text, "peer refused the subscription: this region was removed");
            } else {
                tracing::warn!(peer = %peer, %status, body = %text, "peer refused the subscription");
            }
            return Err(format!("{peer} refused the subscription: {status}"));
        }
        let window = self
            .with_driver(|d, _, _| d.config().apply_window.max(1))
            .map_err(stopped)?;
        let mut resp = resp;
        let mut reader = FrameReader::default();
        // Applies handed to the store, oldest first; the next frames are read and admitted while
        // they commit (docs/design/pipelined-apply.md), and their reports taken in order.
        let mut out: VecDeque<Applying> = VecDeque::new();
        let mut silent_after = tokio::time::Instant::now() + silence;
        loop {
            // Admit what is already buffered, as far as the window allows.
            while out.len() < window {
                let Some(frame) = reader
                    .next_frame()
                    .map_err(|e| format!("the stream from {peer} carried a bad frame: {e}"))?
                else {
                    break;
                };
                let cmds = self
                    .with_driver(|d, now, local| d.on_frame(id, frame, now, local))
                    .map_err(stopped)?;
                self.follow(&peer, self.execute(Some(id), cmds), &mut out)?;
            }
            let read = out.len() < window;
            tokio::select! {
                // Reports first: they free the window and may end the subscription.
                biased;
                answer = async {
                    match out.front_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                }, if !out.is_empty() => {
                    out.pop_front();
                    let report = self.report(&peer, answer);
                    let cmds = self
                        .with_driver(|d, now, local| d.on_applied(id, &report, now, local))
                        .map_err(stopped)?;
                    self.follow(&peer, self.execute(Some(id), cmds), &mut out)?;
                }
                chunk = tokio::time::timeout_at(silent_after, resp.chunk()), if read => {
                    let chunk = chunk
                        .map_err(|_| format!("the stream from {peer} went silent"))?
                        .map_err(|e| format!("the stream from {peer}: {e}"))?;
                    let Some(chunk) = chunk else {
                        return Ok(());
                    };
                    silent_after = tokio::time::Instant::now() + silence;
                    reader.push(&chunk);
                }
            }
        }
    }

    /// Carries out what the driver said of the caller's subscription: queue its next apply, or
    /// end it.
    fn follow(
        &self,
        peer: &RegionId,
        own: Own,
        out: &mut VecDeque<Applying>,
    ) -> std::result::Result<(), String> {
        match own {
            Own::Apply(entries) => out.push_back(self.submit_apply(peer, entries)),
            Own::Ended(reason) => return Err(reason),
            Own::Continue => {}
        }
        Ok(())
    }

    /// Hands replicated entries to the store (in the order of the calls) and returns where its
    /// outcome will arrive. Metrics are recorded in the commit callback, so a subscription
    /// aborted while it waits still counts what was applied.
    fn submit_apply(&self, peer: &RegionId, entries: Vec<atoll_core::op::OpEntry>) -> Applying {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let metrics = self.metrics.clone();
        let me = self.store.region().to_string();
        // Refused by the store once `peer` is removed (`Store::remove_region`): nothing that came
        // from a removed region is applied after its removal took effect, even what was in
        // flight when it was removed.
        self.store
            .submit_remote_from(peer.clone(), entries, move |r| {
                if let Ok(out) = &r {
                    record_applied(&metrics, &me, out);
                }
                let _ = tx.send(r);
            });
        rx
    }

    /// The driver's view of an apply's outcome.
    fn report(
        &self,
        peer: &RegionId,
        answer: std::result::Result<
            Result<atoll_store::RemoteOutcome>,
            tokio::sync::oneshot::error::RecvError,
        >,
    ) -> ApplyReport {
        match answer {
            Err(_) => ApplyReport {
                failed: Some(AtollError::ShuttingDown.to_string()),
                ..ApplyReport::default()
            },
            Ok(Err(e)) => ApplyReport {
                failed: Some(e.to_string()),
                ..ApplyReport::default()
            },
            Ok(Ok(out)) => {
                for (origin, err) in &out.skewed {
                    tracing::error!(origin = %origin, via = %peer, error = %err, "replicated writes refused: their timestamps run ahead of this region's clock");
                }
                ApplyReport {
                    failed: None,
                    skewed: out.skewed.iter().map(|(o, _)| o.clone()).collect(),
                    gaps: out.gaps,
                }
            }
        }
    }

    /// Serves one subscription: streams the requested origins' ops beyond `sub.applied`.
    pub fn serve_subscription(self: &Arc<Self>, sub: Subscribe) -> Result<Body> {
        self.removed_refusal(&sub.from, "subscription")?;
        let stream = self
            .with_driver(|d, _, _| {
                d.check_subscription(&sub)
                    .map(|()| ServedStream::new(&sub, d.config()))
            })?
            .map_err(AtollError::BadRequest)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(4);
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.stream(stream, tx).await {
                tracing::debug!(error = %e, "subscription stream ended");
            }
        });
        Ok(Body::from_stream(tokio_stream_from(rx)))
    }

    async fn stream(
        self: Arc<Self>,
        mut st: ServedStream,
        tx: tokio::sync::mpsc::Sender<std::result::Result<Bytes, std::io::Error>>,
    ) -> Result<()> {
        let closed = || AtollError::ShuttingDown;
        let mut stop = self.stopping.subscribe();
        let mut removed = self.removed_peers.subscribe();
        let changed = self.changed.clone();
        // Armed before the reads of a round, so a commit during the round wakes the wait after it.
        let mut grew = Box::pin(changed.notified());
        grew.as_mut().enable();
        loop {
            if *stop.borrow_and_update() {
                return Ok(());
            }
            if removed.borrow_and_update().contains(st.to()) {
                tracing::info!(peer = %st.to(), "ending a subscription stream: its subscriber was removed from the cluster");
                return Ok(());
            }
            let now = self.now();
            match st.next(now.mono_ms) {
                StreamStep::Read { origin, from, max } => {
                    let store = self.store.clone();
                    let entries =
                        tokio::task::spawn_blocking(move || store.oplog(&origin, from, max))
                            .await
                            .map_err(|_| AtollError::ShuttingDown)??;
                    if let Some(frame) = st.on_read(entries).map_err(AtollError::Corrupt)? {
                        let frame = encode_frame(&frame)?;
                        tx.send(Ok(Bytes::from(frame)))
                            .await
                            .map_err(|_| closed())?;
                    }
                }
                StreamStep::Heartbeat => {
                    let to = st.to().clone();
                    let hb = self.with_driver(|d, now, local| d.heartbeat_for(&to, now, local))?;
                    let frame = encode_frame(&Frame::Heartbeat(hb))?;
                    tx.send(Ok(Bytes::from(frame)))
                        .await
                        .map_err(|_| closed())?;
                    st.on_heartbeat_sent(now.mono_ms);
                }
                StreamStep::Wait { until_mono_ms } => {
                    let nap = Duration::from_millis(until_mono_ms.saturating_sub(now.mono_ms));
                    tokio::select! {
                        _ = &mut grew => {}
                        _ = tokio::time::sleep(nap) => {}
                        _ = tx.closed() => return Ok(()),
                        _ = stop.changed() => return Ok(()),
                        _ = removed.changed() => {}
                    }
                    grew = Box::pin(changed.notified());
                    grew.as_mut().enable();
                }
            }
        }
    }

    /// Runs one maintenance pass (tombstone collection below `horizon`, ledger pruning, then
    /// operation-log truncation up to the `stable` points after the retention) unless one is
    /// still running.
    fn maintain(&self, horizon: Option<u64>, stable: BTreeMap<RegionId, u64>) {
        if self.maintaining.swap(true, Ordering::AcqRel) {
            return;
        }
        let metrics = self.metrics.clone();
        let running = self.maintaining.clone();
        let store = self.store.clone();
        let retention = self.oplog_retention_ms;
        tokio::task::spawn_blocking(move || {
            match store.maintain(horizon) {
                Ok(out) => {
                    metrics
                        .tombstones_collected
                        .inc_by(out.tombstones_collected as u64);
                    metrics
                        .expired_collected
                        .inc_by(out.expired_collected as u64);
                    if out.tombstones_collected > 0
                        || out.expired_collected > 0
                        || out.conflicts_pruned > 0
                    {
                        tracing::debug!(
                            tombstones = out.tombstones_collected,
                            expired = out.expired_collected,
                            conflicts = out.conflicts_pruned,
                            "maintenance"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "maintenance failed"),
            }
            // Batches of at most TRUNCATE_PER_PASS, until the log is down to the stable points
            // or a second has gone: truncation keeps up with any write rate the region takes,
            // without one pass holding a thread for long.
            let started = std::time::Instant::now();
            let mut removed = 0;
            loop {
                match store.truncate_oplog(&stable, retention, atoll_store::TRUNCATE_PER_PASS) {
                    Ok(n) => {
                        removed += n;
                        if n < atoll_store::TRUNCATE_PER_PASS
                            || started.elapsed() > Duration::from_secs(1)
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "operation-log truncation failed");
                        break;
                    }
                }
            }
            if removed > 0 {
                tracing::debug!(entries = removed, "operation log truncated");
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Runs a bootstrap from `donor` and tells the driver how it went.
    async fn bootstrap(self: Arc<Self>, donor: RegionId) {
        let result = self.run_bootstrap(&donor).await;
        match &result {
            Ok(keys) => {
                tracing::info!(%donor, keys, "bootstrap by snapshot complete: serving again");
                self.bootstrapping.store(false, Ordering::Release);
                self.metrics.bootstrap_active.set(0);
                self.metrics
                    .bootstraps
                    .get_or_create(&OutcomeLabels::new("complete"))
                    .inc();
                if let Ok(mut i) = self.bootstrap_info.lock() {
                    *i = BootstrapInfo::default();
                }
            }
            Err(e) => {
                tracing::warn!(%donor, error = %e, "bootstrap by snapshot failed; it is tried again");
                self.metrics
                    .bootstraps
                    .get_or_create(&OutcomeLabels::new("failed"))
                    .inc();
                if let Ok(mut i) = self.bootstrap_info.lock() {
                    i.last_error = Some(e.to_string());
                }
            }
        }
        let report = result.map(|_| ()).map_err(|e| e.to_string());
        // The driver's next tick opens subscriptions again, or retries.
        let _ = self.with_driver(|d, now, _| d.on_bootstrap_done(report, now));
    }

    /// Clears this region's state (or resumes a bootstrap under way), loads the donor's
    /// snapshot chunk by chunk, and adopts its applied vector. Returns the keys loaded.
    async fn run_bootstrap(&self, donor: &RegionId) -> Result<u64> {
        let blocking =
            |e: tokio::task::JoinError| AtollError::Storage(format!("bootstrap task: {e}"));
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.bootstrap_begin(false))
            .await
            .map_err(blocking)??;
        let (me, cluster) =
            self.with_driver(|d, _, _| (d.core().me().clone(), d.config().cluster.clone()))?;
        let mut after = self.store.bootstrap_progress().and_then(|p| p.after);
        loop {
            let request = atoll_core::repl::SnapshotRequest {
                from: me.clone(),
                cluster: cluster.clone(),
                after: after.clone(),
            };
            let body = codec::encode(&request)?;
            let fetch = async {
                let resp = self
                    .stream_http
                    .post(donor, SNAPSHOT_PATH, body)
                    .await
                    .map_err(|e| AtollError::Storage(format!("snapshot from {donor}: {e}")))?;
                let status = resp.status();
                if !status.is_success() {
                    let text = resp.text().await.unwrap_or_default();
                    return Err(AtollError::Storage(format!(
                        "{donor} refused a snapshot chunk: {status}: {text}"
                    )));
                }
                resp.bytes(MAX_SNAPSHOT_ANSWER_BYTES)
                    .await
                    .map_err(|e| AtollError::Storage(format!("snapshot from {donor}: {e}")))
            };
            let bytes = tokio::time::timeout(SNAPSHOT_CHUNK_TIMEOUT, fetch)
                .await
                .map_err(|_| {
                    AtollError::Storage(format!(
                        "a snapshot chunk from {donor} took over {SNAPSHOT_CHUNK_TIMEOUT:?}"
                    ))
                })??;
            let chunk: atoll_core::repl::SnapshotChunk = codec::decode(&bytes)?;
            if !chunk.verify() {
                self.metrics.bootstrap_corrupt_chunks.inc();
                return Err(AtollError::Corrupt(format!(
                    "a snapshot chunk from {donor} failed its checksum"
                )));
            }
            self.metrics.bootstrap_keys.inc_by(chunk.rows.len() as u64);
            self.metrics.bootstrap_bytes.inc_by(chunk.row_bytes());
            let next = chunk.next.clone();
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                store.bootstrap_load(chunk.applied, chunk.rows, chunk.next)
            })
            .await
            .map_err(blocking)??;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        // What peers hold of this region's own writes: its next write must come after them, in
        // sequence and in time (above every claim about them its peers hold).
        let (own_floor, clock_floor) =
            self.with_driver(|d, _, _| (d.bootstrap_own_floor(), d.bootstrap_clock_floor()))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.raise_clock_floor(clock_floor))
            .await
            .map_err(blocking)??;
        let store = self.store.clone();
        let finished = tokio::task::spawn_blocking(move || store.bootstrap_finish(own_floor))
            .await
            .map_err(blocking)?;
        match finished {
            Ok(_) => Ok(self.store.bootstrap_progress().map_or(0, |p| p.keys)),
            Err(e @ AtollError::BootstrapBehind(_)) => {
                // Start over from scratch (from another donor, which the driver picks).
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.bootstrap_begin(true))
                    .await
                    .map_err(blocking)??;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// A peer's request for a chunk of this region's state (`POST /v1/replication/snapshot`).
    async fn serve_snapshot(&self, req: atoll_core::repl::SnapshotRequest) -> Result<Vec<u8>> {
        let cluster = self.with_driver(|d, _, _| d.config().cluster.clone())?;
        if req.cluster != cluster {
            return Err(AtollError::BadRequest(format!(
                "snapshot request for cluster `{}`, this is `{cluster}`",
                req.cluster
            )));
        }
        self.removed_refusal(&req.from, "snapshot request")?;
        if self.is_bootstrapping() || self.store.bootstrap_progress().is_some() {
            return Err(AtollError::Bootstrapping(
                "a region that is itself bootstrapping cannot be a donor".into(),
            ));
        }
        let _slot = self.snapshot_slots.try_acquire().map_err(|_| {
            AtollError::Overloaded("another snapshot chunk is being read for a peer".into())
        })?;
        let store = self.store.clone();
        let after = req.after;
        let chunk = tokio::task::spawn_blocking(move || {
            store.snapshot_chunk(after.as_deref(), SNAPSHOT_CHUNK_ROWS, SNAPSHOT_CHUNK_BYTES)
        })
        .await
        .map_err(|e| AtollError::Storage(format!("snapshot task: {e}")))??;
        self.metrics.snapshot_chunks_served.inc();
        codec::encode(&chunk)
    }

    /// Resumes a bootstrap the store says was under way when this region stopped.
    fn resume_bootstrap(self: &Arc<Self>) {
        if self.store.bootstrap_progress().is_none() {
            return;
        }
        self.bootstrapping.store(true, Ordering::Release);
        self.metrics.bootstrap_active.set(1);
        if let Ok(cmds) = self.with_driver(|d, now, _| {
            d.begin_bootstrap(
                "a bootstrap by snapshot was under way when this region stopped".into(),
                None,
                now,
            )
        }) {
            self.execute(None, cmds);
        }
    }
}

fn record_applied(metrics: &Metrics, me: &str, out: &atoll_store::RemoteOutcome) {
    // A frame holds runs of one origin's entries: look the series up once per run, not per op
    // (a label lookup allocates and locks the family).
    let mut run: Option<(&RegionId, Counter, Histogram)> = None;
    for (origin, delay_ms) in &out.delays_ms {
        if run.as_ref().is_none_or(|(o, _, _)| *o != origin) {
            let l = PairLabels {
                region: me.to_string(),
                peer_region: origin.to_string(),
            };
            let applied = metrics.replication_applied.get_or_create(&l).clone();
            let delay = metrics.replication_apply_delay.get_or_create(&l).clone();
            run = Some((origin, applied, delay));
        }
        if let Some((_, applied, delay)) = &run {
            applied.inc();
            delay.observe(*delay_ms as f64 / 1000.0);
        }
    }
    for (keyspace, reason) in &out.conflicts {
        metrics
            .conflicts
            .get_or_create(&ConflictLabels {
                keyspace: keyspace.clone(),
                resolution: reason.as_str().to_string(),
            })
            .inc();
    }
    for keyspace in &out.sibling_limit_hits {
        metrics
            .sibling_limit_hits
            .get_or_create(&KeyspaceOnly {
                keyspace: keyspace.clone(),
            })
            .inc();
    }
}

/// The route of one-way heartbeats.
pub const HEARTBEAT_PATH: &str = "/v1/replication/heartbeat";
/// The route a bootstrapping peer reads this region's state from, one chunk per request.
pub const SNAPSHOT_PATH: &str = "/v1/replication/snapshot";

/// The peer-facing routes. Every request must carry a [`PeerAuth`] (set by the peer listener,
/// see [`crate::peer`]); a heartbeat or subscription is taken only from the region it names.
pub fn router(rep: Arc<Replicator>) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route(HEARTBEAT_PATH, post(heartbeat_handler))
        .route(crate::streams::SUBSCRIBE_PATH, post(subscribe_handler))
        .route(SNAPSHOT_PATH, post(snapshot_handler))
        .layer(axum::middleware::from_fn(crate::streams::limit_bodies))
        .with_state(rep)
}

async fn heartbeat_handler(
    axum::extract::State(rep): axum::extract::State<Arc<Replicator>>,
    auth: Option<axum::Extension<PeerAuth>>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = auth.as_deref();
    let mut from = None;
    let result = peer::authenticated(&rep.metrics, auth)
        .and_then(|()| peer_message(codec::decode_heartbeat(&body), "heartbeat"))
        .and_then(|hb| {
            peer::authorize(&rep.metrics, auth, &hb.from)?;
            from = Some(hb.from.clone());
            rep.on_heartbeat(&hb)
        });
    match result {
        Ok(()) => axum::http::StatusCode::NO_CONTENT.into_response(),
        Err(e) => refusal(&rep, from.as_ref(), e),
    }
}

async fn snapshot_handler(
    axum::extract::State(rep): axum::extract::State<Arc<Replicator>>,
    auth: Option<axum::Extension<PeerAuth>>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = auth.as_deref();
    let request = peer::authenticated(&rep.metrics, auth)
        .and_then(|()| {
            decode_peer_message::<atoll_core::repl::SnapshotRequest>(&body, "snapshot request")
        })
        .and_then(|r| {
            peer::authorize(&rep.metrics, auth, &r.from)?;
            Ok(r)
        });
    let from = request.as_ref().ok().map(|r| r.from.clone());
    let result = match request {
        Ok(r) => rep.serve_snapshot(r).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Err(e) => refusal(&rep, from.as_ref(), e),
    }
}

async fn subscribe_handler(
    axum::extract::State(rep): axum::extract::State<Arc<Replicator>>,
    auth: Option<axum::Extension<PeerAuth>>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = auth.as_deref();
    let mut from = None;
    let result = peer::authenticated(&rep.metrics, auth)
        .and_then(|()| decode_peer_message::<Subscribe>(&body, "subscription request"))
        .and_then(|s| {
            peer::authorize(&rep.metrics, auth, &s.from)?;
            from = Some(s.from.clone());
            rep.serve_subscription(s)
        });
    match result {
        Ok(stream) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/x-atoll-frames",
            )],
            stream,
        )
            .into_response(),
        Err(e) => refusal(&rep, from.as_ref(), e),
    }
}

/// The answer to a refused peer request. A request from a region this region removed is
/// answered `410 ATOLL-REGION-REMOVED` with [`REMOVED_HOLDS_HEADER`]: how many of its writes
/// this region holds, which the removed region reports as what the cluster keeps of its writes.
fn refusal(rep: &Replicator, from: Option<&RegionId>, e: AtollError) -> axum::response::Response {
    use axum::response::IntoResponse;
    let holds = match (&e, from) {
        (AtollError::RegionRemoved(_), Some(from)) => rep.removed_holds(from),
        _ => None,
    };
    let mut resp = crate::api::ApiError(e).into_response();
    if let Some(holds) = holds {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_static(REMOVED_HOLDS_HEADER),
            axum::http::HeaderValue::from(holds),
        );
    }
    resp
}

/// Decodes a message from a peer. Bytes that do not decode are the sender's fault (400), not a
/// damaged data directory, which is what the codec's own error would say.
fn decode_peer_message<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    peer_message(codec::decode::<T>(body), what)
}

fn peer_message<T>(decoded: Result<T>, what: &str) -> Result<T> {
    decoded.map_err(|e| match e {
        AtollError::FormatTooNew { .. } => e,
        other => AtollError::BadRequest(format!("malformed {what}: {other}")),
    })
}

/// Adapts an mpsc receiver into a `Stream` for `Body::from_stream`.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
