//! The region process: opens the store, serves the client API and the peer listener, shuts down
//! gracefully.
//!
//! Listeners: the client API on the region's `api` address (plain HTTP) and, with mutual TLS
//! between regions or a `peer` address of its own, the peer listener ([`crate::peer`]) serving
//! the replication routes. With `insecure = true` and `peer` equal to `api` (or with no
//! `[cluster.tls]` and a single region) the replication routes share the client listener, as
//! plain HTTP, every request marked [`PeerAuth::Insecure`].

use crate::api::{AppState, router};
use crate::metrics::{KeyspaceLabels, Metrics, RegionLabels};
use crate::peer::{PeerAuth, PeerListener};
use crate::replication::{self, Replicator};
use atoll_config::{Config, INSECURE_WARNING, PeerTls};
use atoll_core::clock::{Clock, OffsetClock, SystemClock};
use atoll_core::repl::ReplConfig;
use atoll_core::{AtollError, RegionId, Result};
use atoll_store::backend::FjallBackend;
use atoll_store::{Store, StoreOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::net::TcpListener;

/// What `atoll region` is told.
#[derive(Clone, Debug)]
pub struct RegionOptions {
    pub config: Arc<Config>,
    pub region: String,
    pub data_dir: PathBuf,
    /// Overrides the region's `api` address from the config.
    pub listen: Option<SocketAddr>,
    /// Reach these peers at these addresses instead of their configured `peer` address (for
    /// example through an `atoll link` proxy).
    pub peer_via: BTreeMap<String, SocketAddr>,
    /// On shutdown, answer `/healthz` with 503 for this long before closing the listener, so
    /// routers drain the region before its port goes away.
    pub drain_grace: std::time::Duration,
    /// Run this region's clock this many milliseconds ahead of the host's (negative: behind).
    /// For drills and tests of the clock-skew protections; 0 in production.
    pub clock_offset_ms: i64,
}

/// A bound, ready region: call [`RegionServer::serve`] to run it.
pub struct RegionServer {
    drain_grace: std::time::Duration,
    /// `--peer-via` overrides (a region a reload adds is dialled at one if named here).
    peer_via: BTreeMap<String, SocketAddr>,
    state: Arc<AppState>,
    listener: TcpListener,
    /// The peer listener, unless the replication routes share the client listener.
    peer: Option<PeerListener>,
    replicator: Arc<Replicator>,
    /// The control group (fencing) and its applied lease states, when the cluster is fenced.
    control: Option<(
        atoll_control::ControlGroup,
        tokio::sync::watch::Receiver<Option<atoll_core::fence::LeaseState>>,
    )>,
    /// The strong group, when a strong keyspace is declared.
    strong: Option<Arc<crate::strong::Strong>>,
    /// The RESP (Redis protocol) listener, when the region has a `resp` address.
    resp: Option<atoll_resp::RespListener>,
}

/// Squares the store's removed regions with the config before replication starts
/// (`docs/design/region-removal.md`): a region the config lists that this region removed is
/// refused (a removed region's name is never reused); a region whose writes this region holds
/// that is neither in the config nor removed was removed by the other regions while this one was
/// stopped, and is removed here before the replication driver reads the store's removals.
async fn settle_removals(store: &Arc<Store>, config: &Config, clock: &dyn Clock) -> Result<()> {
    let removed = store.removed_regions();
    if let Some((r, at)) = config
        .regions
        .iter()
        .find_map(|r| removed.get(&r.name).map(|at| (&r.name, at)))
    {
        return Err(AtollError::Config(format!(
            "the config lists region `{r}`, which this region removed from the cluster (at {} ms, holding {} of its writes): a removed region's name is never reused in the cluster; remove its [[regions]] table from the config, or give a new region another name",
            at.at_ms, at.applied_then
        )));
    }
    let me = store.region().clone();
    let stale: Vec<RegionId> = store
        .applied()
        .iter()
        .map(|(r, _)| r.clone())
        .filter(|r| *r != me && config.region(r.as_str()).is_none() && !removed.contains_key(r))
        .collect();
    for r in stale {
        let s = store.clone();
        let region = r.clone();
        let now_ms = clock.physical_ms();
        let holds = tokio::task::spawn_blocking(move || s.remove_region(&region, now_ms))
            .await
            .map_err(|e| AtollError::Storage(format!("removal task: {e}")))??;
        tracing::warn!(
            region = %r,
            holds,
            "region removed from the cluster: this region holds writes of it and the config no longer lists it (removed while this region was stopped); it holds {holds} of them"
        );
    }
    Ok(())
}

/// Every voter region but `me` (the consensus groups' members), at its peer address or
/// `--peer-via` override.
fn peer_addrs_for_control(opts: &RegionOptions, me: &RegionId) -> BTreeMap<RegionId, SocketAddr> {
    opts.config
        .voters()
        .filter(|r| &r.name != me)
        .map(|r| {
            let addr = opts
                .peer_via
                .get(r.name.as_str())
                .copied()
                .unwrap_or(r.peer);
            (r.name.clone(), addr)
        })
        .collect()
}

/// What fencing reads of replication and the store.
struct RegionView {
    rep: Arc<Replicator>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
}

impl crate::fencing::ReplicationView for RegionView {
    fn promotion_view(&self, holder: &RegionId) -> atoll_core::fence::PromotionView {
        self.rep.promotion_view(holder)
    }

    fn head(&self) -> u64 {
        self.store.stats().last_seq.load(Ordering::Relaxed)
    }

    fn settled_head(&self) -> atoll_core::Result<u64> {
        // A maintenance pass runs only once the writer has committed everything taken before
        // it (`docs/design/pipelined-commit.md`): the head after it covers every stamped write.
        self.store.maintain(None)?;
        Ok(self.head())
    }

    fn peer_applied_of_mine(&self, peer: &RegionId) -> Option<u64> {
        self.rep.peer_applied_of_mine(peer)
    }

    fn hlc_ms(&self) -> u64 {
        self.store
            .stats()
            .hlc_wall_ms
            .load(Ordering::Relaxed)
            .max(self.clock.physical_ms())
    }
}

impl RegionServer {
    /// Opens the data directory and binds the API listener.
    pub async fn bind(opts: RegionOptions) -> Result<RegionServer> {
        let rc = opts.config.region(&opts.region).ok_or_else(|| {
            AtollError::Config(format!(
                "region `{}` is not declared in the config (declared: {})",
                opts.region,
                opts.config
                    .regions
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let region: RegionId = rc.name.clone();
        let listen = opts.listen.unwrap_or(rc.api);
        // A cluster must say how its regions talk to each other before anything is touched.
        opts.config
            .check_peer_tls()
            .map_err(|e| AtollError::Config(e.to_string()))?;
        let tls = match &opts.config.cluster.tls {
            PeerTls::Mutual(files) => Some(atoll_tls::RegionTls::load(
                &region,
                &files.ca,
                &files.cert_for(region.as_str()),
                &files.key_for(region.as_str()),
                atoll_core::clock::system_time(&atoll_core::clock::SystemClock),
            )?),
            PeerTls::Insecure | PeerTls::Undeclared => None,
        };
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
            AtollError::Storage(format!(
                "cannot create data directory {}: {e}",
                opts.data_dir.display()
            ))
        })?;
        let metrics = Arc::new(Metrics::new());
        if opts.config.cluster.tls == PeerTls::Insecure {
            metrics.peer_tls_insecure.set(1);
            tracing::error!(region = %region, "INSECURE: {INSECURE_WARNING}");
        }
        metrics
            .info
            .get_or_create(&RegionLabels {
                region: region.to_string(),
                cluster: opts.config.cluster.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        for k in &opts.config.keyspaces {
            metrics
                .keyspaces
                .get_or_create(&KeyspaceLabels {
                    keyspace: k.name.clone(),
                    policy: k.policy.as_str().to_string(),
                })
                .set(1);
        }
        // Fencing first: the store's writer consults it at every write's stamping instant.
        let fencing = crate::fencing::Fencing::new(&opts.config, &region, metrics.clone())?
            .map(|f| f.with_admin_token(std::env::var("ATOLL_ADMIN_TOKEN").ok().as_deref()));
        let backend = Arc::new(FjallBackend::open(&opts.data_dir)?);
        let mut sopts = StoreOptions::new(region.clone(), opts.config.keyspaces.clone());
        sopts.max_clock_offset_ms = opts.config.cluster.max_clock_offset_ms;
        sopts.group_commit_max_batch = opts.config.storage.group_commit_max_batch;
        let m = metrics.clone();
        sopts.on_commit = Some(Arc::new(move |n, d| m.observe_commit(n, d)));
        let changed = Arc::new(tokio::sync::Notify::new());
        let c = changed.clone();
        sopts.on_change = Some(Arc::new(move || c.notify_waiters()));
        let watch = crate::watch::Watch::new(&opts.config, &region, metrics.clone());
        sopts.on_ops = Some(watch.observer());
        let voter = rc.voter;
        let membership = crate::members::Membership::new(opts.config.clone(), &region, false);
        // A replica follows no home table (it lives in the control group): its owned writes are
        // refused by the membership, not forwarded.
        let homes = if voter {
            crate::homes::Homes::new(&opts.config, &region, fencing.clone(), metrics.clone())
        } else {
            None
        };
        sopts.gate = crate::homes::Gate::for_store(
            fencing.clone(),
            homes.clone(),
            (!voter).then(|| membership.clone()),
        );
        let clock: Arc<dyn Clock> = if opts.clock_offset_ms == 0 {
            Arc::new(SystemClock)
        } else {
            tracing::warn!(
                offset_ms = opts.clock_offset_ms,
                "this region's clock runs off the host's on purpose (--clock-offset-ms): peers \
                 will hold its writes back while the offset exceeds max_clock_offset_ms"
            );
            Arc::new(OffsetClock {
                offset_ms: opts.clock_offset_ms,
            })
        };
        let store = Arc::new(Store::open(backend, sopts, clock.clone())?);
        settle_removals(&store, &opts.config, clock.as_ref()).await?;
        membership.recognise_removed(store.removed_regions().keys());
        if store.is_admitted() {
            membership.set_admitted();
        }
        if !membership.is_admitted() {
            tracing::warn!(
                region = %region,
                "this region is a replica (voter = false) not yet admitted to the cluster: it takes no writes until every region of its config has reloaded a config that lists it (docs/design/adding-regions.md)"
            );
        }
        let arbiter = opts.config.cluster.arbiter.clone();
        for name in opts.peer_via.keys() {
            let is_arbiter = arbiter.as_ref().is_some_and(|a| a.name.as_str() == name);
            if (opts.config.region(name).is_none() && !is_arbiter) || name == region.as_str() {
                return Err(AtollError::Config(format!(
                    "--peer-via names `{name}`, which is not a peer region in the config"
                )));
            }
        }
        let peer_addrs: BTreeMap<RegionId, SocketAddr> = opts
            .config
            .regions
            .iter()
            .filter(|r| r.name != region)
            .map(|r| {
                let addr = opts
                    .peer_via
                    .get(r.name.as_str())
                    .copied()
                    .unwrap_or(r.peer);
                (r.name.clone(), addr)
            })
            .collect();
        let replicator = Replicator::new(
            store.clone(),
            clock.clone(),
            metrics.clone(),
            replication::Settings {
                cluster: opts.config.cluster.name.clone(),
                peer_addrs,
                core: ReplConfig::new(
                    opts.config.replication.heartbeat_interval_ms,
                    opts.config.cluster.max_clock_offset_ms,
                ),
                max_lag_secs: opts.config.replication.max_lag_secs,
                tls: tls.clone(),
                oplog_retention_ms: opts.config.replication.oplog_retention_ms,
            },
            changed,
        )?;
        let control = match &fencing {
            None => None,
            Some(f) => {
                let mut addrs = peer_addrs_for_control(&opts, &region);
                if let Some(a) = &arbiter {
                    addrs.insert(
                        a.name.clone(),
                        opts.peer_via
                            .get(a.name.as_str())
                            .copied()
                            .unwrap_or(a.peer),
                    );
                }
                let transport = Arc::new(crate::control::PeerTransport::new(
                    &opts.config,
                    region.as_str(),
                    &addrs,
                    tls.as_ref(),
                )?);
                let (group, applied) = crate::control::start(
                    &opts.config,
                    region.as_str(),
                    &opts.data_dir,
                    transport,
                    homes.clone(),
                )
                .await?;
                if let Some(h) = &homes {
                    h.attach(
                        group.clone(),
                        Arc::new(RegionView {
                            rep: replicator.clone(),
                            store: store.clone(),
                            clock: clock.clone(),
                        }),
                        store.clone(),
                    );
                }
                f.attach(
                    Arc::new(crate::control::GroupProposer {
                        group: group.clone(),
                        homes: homes.clone(),
                    }),
                    Arc::new(RegionView {
                        rep: replicator.clone(),
                        store: store.clone(),
                        clock: clock.clone(),
                    }),
                );
                tracing::info!(
                    region = %region,
                    model = %opts.config.cluster.model,
                    members = crate::control::members(&opts.config).len(),
                    "fencing on: control group started"
                );
                Some((group, applied))
            }
        };
        let strong = if crate::strong::enabled(&opts.config) && voter {
            let transport = crate::control::PeerTransport::new(
                &opts.config,
                region.as_str(),
                &peer_addrs_for_control(&opts, &region),
                tls.as_ref(),
            )?
            .for_group(
                &crate::strong::members(&opts.config),
                crate::strong::STRONG_PATH,
                crate::strong::max_message_bytes(&opts.config),
            )?;
            Some(
                crate::strong::Strong::start(
                    &opts.config,
                    region.as_str(),
                    &opts.data_dir,
                    Arc::new(transport),
                    metrics.clone(),
                )
                .await?,
            )
        } else {
            None
        };
        let auth = atoll_config::auth::Tokens::load_for(&opts.config)
            .map_err(|e| AtollError::Config(e.to_string()))?;
        match &auth {
            Some(t) => tracing::info!(
                tokens = t.grants().len(),
                "client API authentication on: every route but /healthz, /metrics and /v1/openapi.json needs a bearer token"
            ),
            None => tracing::warn!(
                "client API authentication off (no [auth] in the config): anyone who reaches this region can read and write every keyspace"
            ),
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| AtollError::Config(format!("cannot listen on {listen}: {e}")))?;
        let resp = match rc.resp {
            Some(addr) => {
                let l = atoll_resp::RespListener::bind(addr)
                    .await
                    .map_err(|e| AtollError::Config(format!("{} ({})", e, e.code())))?;
                tracing::info!(
                    region = %region,
                    addr = %l.local_addr().map_err(|e| AtollError::Config(e.to_string()))?,
                    "RESP (Redis protocol) listener bound"
                );
                Some(l)
            }
            None => None,
        };
        let peer = if tls.is_some() || rc.peer != rc.api {
            // Who a certificate may name: the regions, and the arbiter (control routes only);
            // a config reload adds to them.
            let peer = PeerListener::bind(rc.peer, tls.as_ref(), membership.identities()).await?;
            tracing::info!(
                region = %region,
                addr = %peer.local_addr()?,
                tls = if peer.is_tls() { "mutual TLS" } else { "none (insecure)" },
                "peer listener bound"
            );
            Some(peer)
        } else {
            None
        };
        let state = Arc::new(AppState {
            store,
            config: opts.config.clone(),
            metrics,
            started: Instant::now(),
            serving: AtomicBool::new(true),
            replicator: std::sync::OnceLock::new(),
            subscribers: crate::streams::Subscribers::new(),
            auth: auth.map(Arc::new),
            fencing: Default::default(),
            homes: Default::default(),
            strong: Default::default(),
            watch: Default::default(),
            sessions: Default::default(),
            membership: Default::default(),
        });
        watch.set_membership(membership.clone());
        let _ = state.watch.set(watch);
        replicator.set_membership(membership.clone());
        let _ = state.membership.set(membership);
        let _ = state.replicator.set(replicator.clone());
        if let Some(h) = &homes {
            let _ = state.homes.set(h.clone());
        }
        if let Some(s) = &strong {
            let _ = state.strong.set(s.clone());
        }
        if let Some(f) = &fencing {
            let _ = state.fencing.set(f.clone());
        }
        Ok(RegionServer {
            drain_grace: opts.drain_grace,
            peer_via: opts.peer_via.clone(),
            state,
            listener,
            peer,
            replicator,
            control,
            strong,
            resp,
        })
    }

    /// What applies a config re-read from disk to this running region (`atoll region` calls
    /// it on SIGHUP; `docs/design/adding-regions.md`).
    pub fn reloader(&self) -> Option<crate::members::Reloader> {
        Some(crate::members::Reloader {
            membership: self.state.membership.get()?.clone(),
            replicator: self.replicator.clone(),
            metrics: self.state.metrics.clone(),
            peer_via: self.peer_via.clone(),
        })
    }

    /// The RESP listener's address, if the region serves RESP.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp.as_ref().and_then(|r| r.local_addr().ok())
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| AtollError::Storage(format!("listener has no address: {e}")))
    }

    /// The peer listener's address, if the replication routes have a listener of their own.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().and_then(|p| p.local_addr().ok())
    }

    pub fn region(&self) -> &RegionId {
        self.state.store.region()
    }

    /// Serves until `shutdown` resolves, then stops accepting connections, lets in-flight
    /// requests finish, drains the write queue and closes the store.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let state = self.state.clone();
        let peer_routes = crate::streams::track(
            replication::router(self.replicator.clone()),
            crate::streams::Edge {
                subscribers: self.state.subscribers.clone(),
                max_streams: match state.membership.get() {
                    Some(m) => m.stream_limit(),
                    None => Arc::new(std::sync::atomic::AtomicUsize::new(
                        state
                            .config
                            .replication
                            .subscription_stream_limit(state.config.regions.len()),
                    )),
                },
                metrics: state.metrics.clone(),
            },
        );
        let peer_routes = match &self.control {
            Some((group, _)) => {
                peer_routes.merge(crate::control::router(crate::control::ControlRoute {
                    group: group.clone(),
                    members: Arc::new(crate::control::members(&state.config)),
                    metrics: state.metrics.clone(),
                    path: crate::control::CONTROL_PATH,
                    max_body: crate::control::MAX_CONTROL_BODY,
                }))
            }
            None => peer_routes,
        };
        let peer_routes = match &self.strong {
            Some(s) => peer_routes.merge(crate::control::router(crate::control::ControlRoute {
                group: s.group().clone(),
                members: Arc::new(s.members().clone()),
                metrics: state.metrics.clone(),
                path: crate::strong::STRONG_PATH,
                max_body: crate::strong::max_message_bytes(&state.config),
            })),
            None => peer_routes,
        };
        let (peer_stop, peer_stopped) = tokio::sync::watch::channel(false);
        let (app, peer_task) = match self.peer {
            Some(listener) => (
                router(self.state.clone()),
                Some(tokio::spawn(listener.serve(
                    peer_routes.fallback(crate::api::route_not_found),
                    state.metrics.clone(),
                    peer_stopped,
                ))),
            ),
            None => (
                router(self.state.clone())
                    .merge(peer_routes.layer(axum::Extension(PeerAuth::Insecure))),
                None,
            ),
        };
        let flag = state.clone();
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut tasks = self.replicator.start(stop.clone());
        if let Some(h) = state.homes.get() {
            let h = h.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = h.run() => {}
                    _ = stop.notified() => {}
                }
            }));
        }
        let group = match (self.control, state.fencing.get()) {
            (Some((group, applied)), Some(f)) => {
                tasks.push(tokio::spawn(f.clone().run(applied, stop.clone())));
                Some(group)
            }
            _ => None,
        };
        if let Some(s) = &self.strong {
            tasks.push(tokio::spawn(s.clone().watch(stop.clone())));
        }
        // The RESP front: its connections end between commands at shutdown, before the store
        // closes.
        let (resp_stop, resp_stopped) = tokio::sync::watch::channel(false);
        let resp_stop = Arc::new(resp_stop);
        let resp_stop2 = resp_stop.clone();
        let resp_task = self.resp.map(|listener| {
            let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
            let host = Arc::new(crate::resp::RespHost {
                state: state.clone(),
                port,
            });
            let limits = atoll_resp::limits_for(&state.config);
            let max = state.config.resp.max_connections;
            tokio::spawn(listener.serve(host, limits, max, resp_stopped))
        });
        let stop2 = stop.clone();
        let grace = self.drain_grace;
        let rep = self.replicator.clone();
        let listener = crate::conns::CountedListener::new(
            self.listener,
            state.metrics.open_connections.clone(),
        );
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                flag.serving.store(false, Ordering::Relaxed);
                // Open watches are endless responses: end them, or the listener never drains.
                if let Some(w) = flag.watch.get() {
                    w.close();
                }
                if !grace.is_zero() {
                    tracing::info!(
                        grace_ms = grace.as_millis() as u64,
                        "draining: /healthz answers 503 before the listener closes"
                    );
                    tokio::time::sleep(grace).await;
                }
                stop2.notify_waiters();
                resp_stop2.send_replace(true);
                rep.stop_streams();
                peer_stop.send_replace(true);
                tracing::info!("shutting down: finishing in-flight requests");
            })
            .await;
        if let Some(t) = peer_task {
            let _ = t.await;
        }
        if let Some(t) = resp_task {
            // Also when the client listener failed before its graceful shutdown ran.
            resp_stop.send_replace(true);
            let _ = t.await;
        }
        for t in tasks {
            t.abort();
        }
        if let Some(g) = group {
            g.shutdown().await;
        }
        if let Some(s) = &self.strong {
            s.group().shutdown().await;
        }
        let store = state.store.clone();
        // Closing joins the writer thread: keep it off the async runtime.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        tracing::info!(region = %state.store.region(), "store closed");
        result.map_err(|e| AtollError::Storage(format!("server error: {e}")))
    }
}
