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
//! Tasks: one heartbeat sender, one subscription manager (starts, restarts and stops one
//! subscription per peer as `wanted_subscriptions` changes), one maintenance loop (tombstone
//! collection below the horizon, conflict-ledger pruning), and a watcher that logs clock-skew
//! transitions.

use crate::metrics::{ConflictLabels, KeyspaceOnly, Metrics, PairLabels, RefusedLabels};
use crate::peer::{self, PeerAuth, PeerClient};
use atoll_core::clock::Clock;
use atoll_core::codec;
use atoll_core::hlc::Timestamp;
use atoll_core::repl::{
    Frame, FrameReader, Heartbeat, LinkState, PeerStatus, Refusal, ReplConfig, ReplCore, Subscribe,
    encode_frame,
};
use atoll_core::{AtollError, RegionId, Result};
use atoll_store::Store;
use axum::body::{Body, Bytes};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Largest ops batch per frame.
const BATCH_MAX: usize = 2048;
/// Heartbeat frames on an idle subscription stream, so lag stays fresh between heartbeats.
const STREAM_TICK: Duration = Duration::from_millis(100);

/// Everything the replication tasks and handlers share.
pub struct Replicator {
    core: Mutex<ReplCore>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    cluster: String,
    /// Where to reach each peer (the config's peer address, or a `--peer-via` override).
    peer_addrs: BTreeMap<RegionId, SocketAddr>,
    /// Woken after every commit that added to the operation log.
    pub changed: Arc<Notify>,
    http: PeerClient,
    stream_http: PeerClient,
    max_lag_secs: u64,
    /// Set on shutdown: every subscription stream this region serves ends, so graceful shutdown
    /// does not wait for peers to give up on them.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Woken when a link to a peer starts working both ways (subscriptions can start).
    link_up: Notify,
    /// When each peer was last sent a prompt heartbeat.
    prompted: Mutex<BTreeMap<RegionId, tokio::time::Instant>>,
}

/// Least time between two prompt heartbeats to one peer.
const PROMPT_HEARTBEAT_GAP: Duration = Duration::from_millis(100);

/// What a [`Replicator`] is configured with.
pub struct Settings {
    pub cluster: String,
    /// Where to reach each peer.
    pub peer_addrs: BTreeMap<RegionId, SocketAddr>,
    pub core: ReplConfig,
    pub max_lag_secs: u64,
    /// Mutual TLS between regions (`None`: plain HTTP, `insecure = true`).
    pub tls: Option<atoll_tls::RegionTls>,
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
        } = settings;
        let me = store.region().clone();
        let core = ReplCore::new(
            me,
            peer_addrs.keys().cloned().collect(),
            cfg.clone(),
            store.applied(),
        );
        let interval = Duration::from_millis(cfg.heartbeat_interval_ms);
        let bound = interval.max(Duration::from_millis(200));
        let http = PeerClient::new(&peer_addrs, tls.as_ref(), bound, Some(bound), true);
        let stream_http = PeerClient::new(&peer_addrs, tls.as_ref(), bound, None, false);
        Ok(Arc::new(Replicator {
            core: Mutex::new(core),
            store,
            clock,
            metrics,
            cluster,
            peer_addrs,
            changed,
            http,
            stream_http,
            max_lag_secs,
            stopping: tokio::sync::watch::Sender::new(false),
            link_up: Notify::new(),
            prompted: Mutex::new(BTreeMap::new()),
        }))
    }

    fn now(&self) -> u64 {
        self.clock.physical_ms()
    }

    fn with_core<T>(&self, f: impl FnOnce(&mut ReplCore) -> T) -> Result<T> {
        let mut core = self
            .core
            .lock()
            .map_err(|_| AtollError::Storage("replication state lock poisoned".into()))?;
        Ok(f(&mut core))
    }

    /// Brings the core's applied vector up to the store's committed one.
    fn sync_applied(&self) -> Result<()> {
        let applied = self.store.applied();
        self.with_core(|c| {
            for (o, n) in applied.iter() {
                c.on_applied(o, n);
            }
        })
    }

    fn hlc_now(&self) -> Timestamp {
        Timestamp {
            wall_ms: self
                .store
                .stats()
                .hlc_wall_ms
                .load(Ordering::Relaxed)
                .max(self.now()),
            logical: 0,
        }
    }

    fn heartbeat_for(&self, to: &RegionId) -> Result<Heartbeat> {
        self.sync_applied()?;
        let wm = self.store.watermark();
        let now = self.now();
        let hlc = self.hlc_now();
        self.with_core(|c| {
            c.on_watermark(wm.head, wm.before_ms);
            c.heartbeat(to, now, hlc)
        })
    }

    /// Takes in a heartbeat from a peer. A refused heartbeat changes nothing and is counted.
    pub fn on_heartbeat(&self, hb: &Heartbeat) -> Result<()> {
        // Our own head first: a peer may already hold writes we committed a moment ago.
        self.sync_applied()?;
        let now = self.now();
        let (taken, status, was_bidirectional, is_bidirectional) = self.with_core(|c| {
            let before = c.is_bidirectional(&hb.from, now);
            let taken = c.on_heartbeat(hb, now);
            let after = c.is_bidirectional(&hb.from, now);
            (taken, c.status(now), before, after)
        })?;
        if let Err(refusal) = taken {
            self.refused(&hb.from, &refusal);
            return Err(AtollError::BadRequest(refusal.to_string()));
        }
        // The peer does not hear us yet (no echo), or we did not know both directions worked:
        // tell it at once that we hear it.
        let prompt = hb.echo.is_none() || !was_bidirectional;
        self.after_heartbeat(&hb.from, prompt, is_bidirectional && !was_bidirectional);
        if hb.echo.is_some()
            && let Some(st) = status.iter().find(|s| s.region == hb.from)
            && let Some(rtt) = st.rtt_ms
        {
            self.metrics
                .peer_rtt
                .get_or_create(&self.pair(&hb.from))
                .observe(rtt / 1000.0);
        }
        Ok(())
    }

    fn refused(&self, from: &RegionId, refusal: &Refusal) {
        tracing::warn!(peer = %from, reason = refusal.as_str(), "heartbeat refused: {refusal}");
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
        let _ = self.sync_applied();
        let now = self.now();
        self.with_core(|c| c.promotion_view(holder, now))
            .unwrap_or_default()
    }

    /// What `peer` has applied of this region's writes, as its last heartbeat said.
    pub fn peer_applied_of_mine(&self, peer: &RegionId) -> Option<u64> {
        let me = self.store.region().clone();
        let now = self.now();
        self.with_core(|c| c.promotion_view(&me, now))
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
        self.sync_applied()?;
        let now = self.now();
        self.with_core(|c| (c.status(now), c.tombstone_horizon_ms(now)))
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
        let age = horizon.map_or(-1.0, |h| self.now().saturating_sub(h) as f64 / 1000.0);
        self.metrics.tombstone_horizon_age.set(age);
    }

    /// Starts the background tasks; they stop when `stop` is notified.
    pub fn start(self: &Arc<Self>, stop: Arc<Notify>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().heartbeat_loop(stop.clone())),
            tokio::spawn(self.clone().subscription_manager(stop.clone())),
            tokio::spawn(self.clone().maintenance_loop(stop.clone())),
            tokio::spawn(self.clone().skew_watch(stop)),
        ]
    }

    fn interval(&self) -> Duration {
        let ms = self
            .with_core(|c| c.config().heartbeat_interval_ms)
            .unwrap_or(1000);
        Duration::from_millis(ms)
    }

    async fn heartbeat_loop(self: Arc<Self>, stop: Arc<Notify>) {
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tick.tick() => {}
            }
            for peer in self.peer_addrs.keys() {
                self.send_heartbeat(peer);
            }
        }
    }

    /// Sends one heartbeat to `peer`, one way: the answer does not matter (a cut return path must
    /// not stop it).
    fn send_heartbeat(&self, peer: &RegionId) {
        let Ok(hb) = self.heartbeat_for(peer) else {
            return;
        };
        let Ok(body) = codec::encode(&hb) else {
            return;
        };
        let (http, peer) = (self.http.clone(), peer.clone());
        tokio::spawn(async move {
            let _ = http.post(&peer, HEARTBEAT_PATH, body).await;
        });
    }

    /// While a link is coming up, a heartbeat that shows one side does not yet know the other
    /// hears it is answered at once instead of at the next tick, so both directions are proven in
    /// a few round trips rather than a heartbeat interval or two; at most one prompt answer per
    /// peer per `PROMPT_HEARTBEAT_GAP`. Subscriptions start as soon as the link works both ways.
    fn after_heartbeat(&self, from: &RegionId, prompt: bool, now_bidirectional: bool) {
        if now_bidirectional {
            self.link_up.notify_one();
        }
        if !prompt {
            return;
        }
        let due = match self.prompted.lock() {
            Ok(mut last) => {
                let now = tokio::time::Instant::now();
                let due = last
                    .get(from)
                    .is_none_or(|t| now.duration_since(*t) >= PROMPT_HEARTBEAT_GAP);
                if due {
                    last.insert(from.clone(), now);
                }
                due
            }
            Err(_) => false,
        };
        if due {
            self.send_heartbeat(from);
        }
    }

    async fn subscription_manager(self: Arc<Self>, stop: Arc<Notify>) {
        let mut running: BTreeMap<RegionId, (BTreeSet<RegionId>, JoinHandle<()>)> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = stop.notified() => break,
                _ = tick.tick() => {}
                _ = self.link_up.notified() => {}
            }
            let now = self.now();
            let Ok(wanted) = self.with_core(|c| c.wanted_subscriptions(now)) else {
                continue;
            };
            running.retain(|peer, (origins, handle)| {
                let keep = !handle.is_finished() && wanted.get(peer) == Some(origins);
                if !keep {
                    handle.abort();
                }
                keep
            });
            for (peer, origins) in wanted {
                if running.contains_key(&peer) {
                    continue;
                }
                if !self.peer_addrs.contains_key(&peer) {
                    continue;
                }
                let me = self.clone();
                let o = origins.clone();
                let p = peer.clone();
                let handle = tokio::spawn(async move {
                    if let Err(e) = me.subscribe(p.clone(), o).await {
                        tracing::debug!(peer = %p, error = %e, "subscription ended");
                    }
                });
                running.insert(peer, (origins, handle));
            }
        }
        for (_, (_, h)) in running {
            h.abort();
        }
    }

    /// Runs one subscription until the stream breaks or goes silent.
    async fn subscribe(self: Arc<Self>, peer: RegionId, origins: BTreeSet<RegionId>) -> Result<()> {
        self.sync_applied()?;
        let sub = Subscribe {
            from: self.store.region().clone(),
            cluster: self.cluster.clone(),
            origins: origins.into_iter().collect(),
            applied: self.store.applied(),
        };
        let silence = self.interval() * 3;
        let resp = tokio::time::timeout(
            silence,
            self.stream_http
                .post(&peer, crate::streams::SUBSCRIBE_PATH, codec::encode(&sub)?),
        )
        .await
        .map_err(|_| AtollError::Storage(format!("subscription to {peer} timed out")))?
        .map_err(|e| AtollError::Storage(format!("subscription to {peer}: {e}")))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
                // Over its stream cap: retried every 200 ms, so not worth a warning each time
                // (the peer counts these in atoll_replication_requests_refused_total).
                tracing::debug!(peer = %peer, body = %text, "peer has no subscription slot free");
            } else {
                tracing::warn!(peer = %peer, %status, body = %text, "peer refused the subscription");
            }
            return Err(AtollError::Storage(format!("peer refused: {status}")));
        }
        let mut resp = resp;
        let mut reader = FrameReader::default();
        loop {
            let chunk = tokio::time::timeout(silence, resp.chunk())
                .await
                .map_err(|_| AtollError::Storage(format!("stream from {peer} went silent")))?
                .map_err(|e| AtollError::Storage(format!("stream from {peer}: {e}")))?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            reader.push(&chunk);
            while let Some(frame) = reader.next_frame()? {
                match frame {
                    Frame::Heartbeat(hb) => {
                        if hb.from != peer {
                            return Err(AtollError::Corrupt(format!(
                                "stream from {peer} carried a heartbeat of {}",
                                hb.from
                            )));
                        }
                        self.sync_applied()?;
                        let now = self.now();
                        if let Err(refusal) = self.with_core(|c| c.on_stream_heartbeat(&hb, now))? {
                            self.refused(&hb.from, &refusal);
                            return Err(AtollError::Corrupt(format!(
                                "stream from {peer}: {refusal}"
                            )));
                        }
                    }
                    Frame::Ops(entries) => self.apply(&peer, entries).await?,
                }
            }
        }
    }

    async fn apply(&self, peer: &RegionId, entries: Vec<atoll_core::op::OpEntry>) -> Result<()> {
        let admitted = self.with_core(|c| c.admit(entries))?;
        // The peer's stream cursor has moved past entries dropped here (beyond a gap, or held
        // back for skew): end the subscription so the next one restarts from the applied vector.
        let resync = admitted.gaps > 0 || admitted.held_back > 0;
        if admitted.apply.is_empty() {
            return if resync {
                Err(AtollError::Storage(format!(
                    "resubscribing to {peer}: entries dropped"
                )))
            } else {
                Ok(())
            };
        }
        // Metrics are recorded in the commit callback, so a subscription aborted while it waits
        // (the manager restarts it) still counts what was applied.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let metrics = self.metrics.clone();
        let me = self.store.region().to_string();
        self.store.submit_remote(admitted.apply, move |r| {
            if let Ok(out) = &r {
                record_applied(&metrics, &me, out);
            }
            let _ = tx.send(r);
        });
        let out = rx.await.map_err(|_| AtollError::ShuttingDown)??;
        for (origin, err) in &out.skewed {
            tracing::error!(origin = %origin, via = %peer, error = %err, "replicated writes refused: their timestamps run ahead of this region's clock");
        }
        self.sync_applied()?;
        if resync || !out.skewed.is_empty() {
            return Err(AtollError::Storage(format!(
                "resubscribing to {peer}: entries not applied"
            )));
        }
        Ok(())
    }

    /// Serves one subscription: streams the requested origins' ops beyond `sub.applied`.
    pub fn serve_subscription(self: &Arc<Self>, sub: Subscribe) -> Result<Body> {
        if sub.cluster != self.cluster {
            return Err(AtollError::BadRequest(format!(
                "subscription for cluster `{}`, this is `{}`",
                sub.cluster, self.cluster
            )));
        }
        if !self.peer_addrs.contains_key(&sub.from) {
            return Err(AtollError::BadRequest(format!(
                "`{}` is not a peer of this region",
                sub.from
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(4);
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.stream(sub, tx).await {
                tracing::debug!(error = %e, "subscription stream ended");
            }
        });
        Ok(Body::from_stream(tokio_stream_from(rx)))
    }

    async fn stream(
        self: Arc<Self>,
        sub: Subscribe,
        tx: tokio::sync::mpsc::Sender<std::result::Result<Bytes, std::io::Error>>,
    ) -> Result<()> {
        let mut cursor: BTreeMap<RegionId, u64> = sub
            .origins
            .iter()
            .map(|o| (o.clone(), sub.applied.get(o)))
            .collect();
        let closed = || AtollError::ShuttingDown;
        let mut last_hb = tokio::time::Instant::now() - STREAM_TICK;
        let mut stop = self.stopping.subscribe();
        loop {
            if *stop.borrow_and_update() {
                return Ok(());
            }
            let changed = self.changed.clone();
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut sent = false;
            for (origin, next) in cursor.iter_mut() {
                let store = self.store.clone();
                let o = origin.clone();
                let from = *next + 1;
                let entries = tokio::task::spawn_blocking(move || store.oplog(&o, from, BATCH_MAX))
                    .await
                    .map_err(|_| AtollError::ShuttingDown)??;
                if let Some(last) = entries.last() {
                    *next = last.seq;
                    let frame = encode_frame(&Frame::Ops(entries))?;
                    tx.send(Ok(Bytes::from(frame)))
                        .await
                        .map_err(|_| closed())?;
                    sent = true;
                }
            }
            if !sent || last_hb.elapsed() >= STREAM_TICK {
                let hb = self.heartbeat_for(&sub.from)?;
                let frame = encode_frame(&Frame::Heartbeat(hb))?;
                tx.send(Ok(Bytes::from(frame)))
                    .await
                    .map_err(|_| closed())?;
                last_hb = tokio::time::Instant::now();
            }
            if !sent {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(STREAM_TICK) => {}
                    _ = tx.closed() => return Ok(()),
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }

    async fn maintenance_loop(self: Arc<Self>, stop: Arc<Notify>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tick.tick() => {}
            }
            let horizon = self.status().ok().and_then(|(_, h)| h);
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.store.submit_maintenance(horizon, move |r| {
                let _ = tx.send(r);
            });
            match rx.await {
                Ok(Ok(out)) => {
                    self.metrics
                        .tombstones_collected
                        .inc_by(out.tombstones_collected as u64);
                    if out.tombstones_collected > 0 || out.conflicts_pruned > 0 {
                        tracing::debug!(
                            tombstones = out.tombstones_collected,
                            conflicts = out.conflicts_pruned,
                            "maintenance"
                        );
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "maintenance failed"),
                Err(_) => return,
            }
        }
    }

    async fn skew_watch(self: Arc<Self>, stop: Arc<Notify>) {
        let mut skewed: BTreeSet<RegionId> = BTreeSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tick.tick() => {}
            }
            let Ok((peers, _)) = self.status() else {
                continue;
            };
            for p in peers {
                let now_skewed = p.state == LinkState::ClockSkew;
                if now_skewed && skewed.insert(p.region.clone()) {
                    tracing::error!(
                        peer = %p.region,
                        offset_ms = p.clock_offset_ms.unwrap_or(0.0),
                        "peer clock runs ahead beyond max_clock_offset: its writes are held back until it is back in bounds"
                    );
                } else if !now_skewed && p.reachable && skewed.remove(&p.region) {
                    tracing::info!(peer = %p.region, offset_ms = p.clock_offset_ms.unwrap_or(0.0), "peer clock back in bounds: applying its writes again");
                }
            }
        }
    }
}

fn record_applied(metrics: &Metrics, me: &str, out: &atoll_store::RemoteOutcome) {
    for (origin, delay_ms) in &out.delays_ms {
        let l = PairLabels {
            region: me.to_string(),
            peer_region: origin.to_string(),
        };
        metrics.replication_applied.get_or_create(&l).inc();
        metrics
            .replication_apply_delay
            .get_or_create(&l)
            .observe(*delay_ms as f64 / 1000.0);
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

/// The peer-facing routes. Every request must carry a [`PeerAuth`] (set by the peer listener,
/// see [`crate::peer`]); a heartbeat or subscription is taken only from the region it names.
pub fn router(rep: Arc<Replicator>) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route(HEARTBEAT_PATH, post(heartbeat_handler))
        .route(crate::streams::SUBSCRIBE_PATH, post(subscribe_handler))
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
    let result = peer::authenticated(&rep.metrics, auth)
        .and_then(|()| decode_peer_message::<Heartbeat>(&body, "heartbeat"))
        .and_then(|hb| {
            peer::authorize(&rep.metrics, auth, &hb.from)?;
            rep.on_heartbeat(&hb)
        });
    match result {
        Ok(()) => axum::http::StatusCode::NO_CONTENT.into_response(),
        Err(e) => crate::api::ApiError(e).into_response(),
    }
}

async fn subscribe_handler(
    axum::extract::State(rep): axum::extract::State<Arc<Replicator>>,
    auth: Option<axum::Extension<PeerAuth>>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = auth.as_deref();
    let result = peer::authenticated(&rep.metrics, auth)
        .and_then(|()| decode_peer_message::<Subscribe>(&body, "subscription request"))
        .and_then(|s| {
            peer::authorize(&rep.metrics, auth, &s.from)?;
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
        Err(e) => crate::api::ApiError(e).into_response(),
    }
}

/// Decodes a message from a peer. Bytes that do not decode are the sender's fault (400), not a
/// damaged data directory, which is what the codec's own error would say.
fn decode_peer_message<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    codec::decode::<T>(body).map_err(|e| match e {
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
