//! Region ownership of `owned` keyspaces in a region process (`docs/design/owned-keyspaces.md`).
//!
//! - [`Homes`]: this region's view of every owned keyspace's homes: the config's rules and the
//!   home table the control group replicates (`atoll_core::home`). The write gate asks it, at the
//!   instant a write is stamped, whether this region is the key's home ([`Homes::permit`]); a
//!   write it refuses with `ATOLL-NOT-HOME` is forwarded by the API to the home (the keyspace's
//!   `forward`, on by default).
//! - The mover ([`Homes::run`]): carries out this region's part of every move in flight (as the
//!   old home it releases; as the new home it completes once it has applied the old home's
//!   writes, or, for a takeover, once the old home's write window has surely ended) and starts
//!   a takeover of a home that has been silent for a lease.
//! - [`Homes::rehome`]: `POST /v1/admin/rehome`, an operator's move.

use crate::fencing::{Fencing, ReplicationView};
use atoll_config::{Config, KeyspaceConfig, OwnedConfig};
use atoll_control::ControlGroup;
use atoll_core::home::{
    self, HomeAnswer, HomeCommand, HomeTable, MoveOutcome, Resolution, Selector,
};
use atoll_core::{AtollError, RegionId, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How often the mover looks at the moves in flight and the homes' liveness.
const MOVER_TICK: Duration = Duration::from_millis(50);

/// Proposes home commands through the control group.
pub struct HomeProposer {
    pub group: ControlGroup,
}

impl HomeProposer {
    async fn propose(&self, cmd: &HomeCommand) -> Result<HomeAnswer> {
        let bytes = home::encode_home_command(cmd)?;
        let out = self
            .group
            .propose(bytes)
            .await
            .map_err(|e| AtollError::ControlUnavailable(e.to_string()))?;
        match home::decode_answer(&out)? {
            home::ControlAnswer::Home(a) => Ok(a),
            other => Err(AtollError::Corrupt(format!(
                "the control group answered a home command with {other:?}"
            ))),
        }
    }
}

struct Driver {
    proposer: HomeProposer,
    view: Arc<dyn ReplicationView>,
    store: Arc<atoll_store::Store>,
}

/// This region's view of the homes of every owned keyspace.
pub struct Homes {
    me: RegionId,
    keyspaces: BTreeMap<String, OwnedConfig>,
    apis: BTreeMap<RegionId, SocketAddr>,
    table: RwLock<HomeTable>,
    /// The home table version the latest answered quorum renewal (`Presence`) carried: owned
    /// writes need this region to have applied at least that version (the window that renewal
    /// opened covers only the homes it knew).
    required: AtomicU64,
    fencing: Option<Arc<Fencing>>,
    forwarder: crate::forward::Forwarder,
    metrics: Arc<crate::metrics::Metrics>,
    /// `lease x (1 + drift) + margin`: how long a takeover waits after applying its `Begin`.
    takeover_wait: Duration,
    lease: Duration,
    /// When this region applied each move's `Begin` (move id), on its monotonic clock.
    seen: Mutex<BTreeMap<u64, Instant>>,
    /// Proposals this region has in flight, by move id (one at a time).
    busy: Mutex<BTreeMap<u64, Instant>>,
    /// Bumped at every applied table: waiters never miss one (a `Notify` would while busy).
    changed: tokio::sync::watch::Sender<u64>,
    /// The control group's log index of the applied table.
    applied_index: AtomicU64,
    driver: OnceLock<Driver>,
    started: Instant,
}

impl Homes {
    /// `None` when the config declares no owned keyspace.
    pub fn new(
        config: &Config,
        me: &RegionId,
        fencing: Option<Arc<Fencing>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Option<Arc<Self>> {
        let keyspaces: BTreeMap<String, OwnedConfig> = config
            .keyspaces
            .iter()
            .filter_map(|k| k.owned.clone().map(|o| (k.name.clone(), o)))
            .collect();
        if keyspaces.is_empty() {
            return None;
        }
        let f = &config.fencing;
        let lease = Duration::from_millis(f.lease_ms);
        // The same wait as a lease acquisition (the fence's own `D(1+ρ) + M`); without a
        // control group nothing is ever forced.
        let takeover_wait = fencing
            .as_ref()
            .map_or(Duration::MAX, |f| Duration::from_millis(f.expiry_wait_ms()));
        Some(Arc::new(Self {
            me: me.clone(),
            keyspaces,
            apis: config
                .regions
                .iter()
                .map(|r| (r.name.clone(), r.api))
                .collect(),
            table: RwLock::new(HomeTable::default()),
            required: AtomicU64::new(0),
            fencing,
            forwarder: crate::forward::Forwarder::new(me.clone(), crate::forward::FORWARD_TIMEOUT),
            metrics,
            takeover_wait,
            lease,
            seen: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::watch::Sender::new(0),
            applied_index: AtomicU64::new(0),
            driver: OnceLock::new(),
            started: Instant::now(),
        }))
    }

    /// Connects the mover to the control group (regions with `[fencing] quorum` only).
    pub fn attach(
        &self,
        group: ControlGroup,
        view: Arc<dyn ReplicationView>,
        store: Arc<atoll_store::Store>,
    ) {
        let _ = self.driver.set(Driver {
            proposer: HomeProposer { group },
            view,
            store,
        });
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, HomeTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A new applied home table from the control group, as of its log index `index`.
    pub fn on_table(&self, table: HomeTable, index: u64) {
        let now = Instant::now();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            for m in table.moves.values() {
                seen.entry(m.id).or_insert(now);
            }
            seen.retain(|id, _| table.moves.values().any(|m| m.id == *id));
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = table;
        self.applied_index.fetch_max(index, Ordering::SeqCst);
        self.changed.send_modify(|v| *v += 1);
    }

    /// A quorum renewal was answered at home table version `v`.
    pub fn note_presence(&self, v: u64) {
        self.required.fetch_max(v, Ordering::SeqCst);
    }

    /// The home of `key`, if `keyspace` is owned.
    pub fn resolve(&self, keyspace: &str, key: &[u8]) -> Option<Resolution> {
        let oc = self.keyspaces.get(keyspace)?;
        Some(home::resolve(&oc.rules, &self.table(), keyspace, key))
    }

    /// Whether `keyspace` forwards writes that reach another region than the key's home.
    pub fn forwards(&self, keyspace: &str) -> bool {
        self.keyspaces.get(keyspace).is_some_and(|o| o.forward)
    }

    pub fn api_of(&self, region: &RegionId) -> Option<SocketAddr> {
        self.apis.get(region).copied()
    }

    pub fn forwarder(&self) -> &crate::forward::Forwarder {
        &self.forwarder
    }

    pub fn me(&self) -> &RegionId {
        &self.me
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The write gate's check for an owned key, at its stamping instant.
    pub fn permit(&self, keyspace: &KeyspaceConfig, key: &[u8]) -> Result<()> {
        let Some(oc) = self.keyspaces.get(&keyspace.name) else {
            return Ok(());
        };
        let t = self.table();
        let res = home::resolve(&oc.rules, &t, &keyspace.name, key);
        let Some(home) = res.home else {
            // The API claims a key before writing it (`Homes::claim`); a write that reaches
            // the gate unclaimed came some other way, and nobody may write it yet.
            return Err(AtollError::HomeUnavailable {
                keyspace: keyspace.name.clone(),
                home: "(none yet)".into(),
                detail:
                    "no region has claimed this key yet: its first write through the API claims it"
                        .into(),
            });
        };
        if home != self.me {
            return Err(AtollError::NotHome {
                keyspace: keyspace.name.clone(),
                home: home.to_string(),
                home_api: self.apis.get(&home).map(|a| a.to_string()),
                reason: format!("only the home writes it ({})", res.selector.describe()),
            });
        }
        if let Some(m) = res.moving {
            return Err(AtollError::HomeUnavailable {
                keyspace: keyspace.name.clone(),
                home: self.me.to_string(),
                detail: format!(
                    "{} is moving to `{}` (move {}); its writes resume there once the move completes",
                    res.selector.describe(),
                    m.to,
                    m.id
                ),
            });
        }
        if self.fencing.is_some() && t.version < self.required.load(Ordering::SeqCst) {
            return Err(AtollError::HomeUnavailable {
                keyspace: keyspace.name.clone(),
                home: self.me.to_string(),
                detail: "this region has not yet applied the home table its last quorum renewal was answered with".into(),
            });
        }
        Ok(())
    }

    /// Before a write of `key`: if no rule homes it and nobody has claimed it yet (a keyspace
    /// whose `default_home` is `"first-write"`), claims it for this region through the control
    /// group, and waits until this region has applied the claim (its own or an earlier one). The
    /// gate then decides as for any homed key: this region writes it, or forwards the write.
    pub async fn claim(&self, keyspace: &str, key: &[u8]) -> Result<()> {
        // Only keyspaces without a default home have unhomed keys: the others skip the lookup.
        let Some(oc) = self
            .keyspaces
            .get(keyspace)
            .filter(|o| o.rules.default.is_none())
        else {
            return Ok(());
        };
        let unclaimed = |h: &Self| {
            home::resolve(&oc.rules, &h.table(), keyspace, key)
                .home
                .is_none()
        };
        if !unclaimed(self) {
            return Ok(());
        }
        let unavailable = |detail: String| AtollError::HomeUnavailable {
            keyspace: keyspace.to_string(),
            home: "(none yet)".into(),
            detail,
        };
        let d = self.driver.get().ok_or_else(|| {
            unavailable(
                "homing a key by its first write needs the control group ([fencing] quorum = true)"
                    .into(),
            )
        })?;
        let mut changed = self.changed.subscribe();
        let cmd = HomeCommand::Claim {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            region: self.me.clone(),
        };
        let home = match d.proposer.propose(&cmd).await {
            Ok(HomeAnswer::Claimed { home }) => home,
            Ok(HomeAnswer::Refused(r)) => return Err(unavailable(r.to_string())),
            Ok(other) => {
                return Err(AtollError::Corrupt(format!(
                    "unexpected answer to a claim: {other:?}"
                )));
            }
            Err(e) => {
                return Err(unavailable(format!(
                    "the key has no home yet and the control group could not fix one: {e}"
                )));
            }
        };
        if home == self.me {
            self.metrics.owned_claim(keyspace, self.me.as_str());
        }
        if self.applied_until(&mut changed, || !unclaimed(self)).await {
            Ok(())
        } else {
            Err(unavailable(format!(
                "the key was homed at `{home}`, which this region has not applied yet"
            )))
        }
    }

    /// Waits (up to the forwarding timeout) until the applied table satisfies `done`, woken at
    /// each new table. Whether it did.
    async fn applied_until(
        &self,
        changed: &mut tokio::sync::watch::Receiver<u64>,
        done: impl Fn() -> bool,
    ) -> bool {
        let deadline = Instant::now() + crate::forward::FORWARD_TIMEOUT;
        while !done() {
            if Instant::now() >= deadline {
                return false;
            }
            let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
        }
        true
    }

    /// The home of `key` as of now (linearizable): after a read barrier of the control group,
    /// once this region's table is at least as new as the barrier. `None`: nobody has claimed
    /// the key, so nobody has written it.
    pub async fn home_now(&self, keyspace: &str, key: &[u8]) -> Result<Option<RegionId>> {
        let Some(oc) = self.keyspaces.get(keyspace) else {
            return Ok(None);
        };
        let unavailable = |detail: String| AtollError::HomeUnavailable {
            keyspace: keyspace.to_string(),
            home: "(none known)".into(),
            detail,
        };
        let d = self
            .driver
            .get()
            .ok_or_else(|| unavailable("this region has no control group to ask".into()))?;
        let mut changed = self.changed.subscribe();
        let index = d.proposer.group.read_barrier().await.map_err(|e| {
            unavailable(format!(
                "this region knows no home of the key and cannot ask the control group: {e}"
            ))
        })?;
        let applied = || self.applied_index.load(Ordering::SeqCst) >= index;
        if !self.applied_until(&mut changed, applied).await {
            return Err(unavailable(format!(
                "this region has not applied the control group's entries up to {index}"
            )));
        }
        Ok(home::resolve(&oc.rules, &self.table(), keyspace, key).home)
    }

    /// `atoll status`: the rules, overrides, the move in flight and the recent moves.
    pub fn status_json(&self) -> Value {
        let t = self.table();
        let mut out = serde_json::Map::new();
        for (name, oc) in &self.keyspaces {
            // A key homed by its first write: a key override no move ever completed or covers.
            let moving = t.moves.get(name);
            let claim = |s: &Selector, o: &home::Override| {
                matches!(s, Selector::Key(_))
                    && o.epoch == 0
                    && !moving.is_some_and(|m| m.selectors.contains(s))
            };
            let all = t.overrides.get(name);
            let claimed = all
                .into_iter()
                .flatten()
                .filter(|(s, o)| claim(s, o))
                .count();
            let overrides: Vec<Value> = all
                .into_iter()
                .flatten()
                .filter(|(s, o)| !claim(s, o))
                .take(STATUS_OVERRIDES)
                .map(
                    |(s, o)| json!({"selector": selector_json(s), "home": o.home.as_str(), "epoch": o.epoch}),
                )
                .collect();
            let moving = t.moves.get(name).map(|m| {
                json!({
                    "id": m.id,
                    "selectors": m.selectors.iter().map(selector_json).collect::<Vec<_>>(),
                    "from": m.from.as_str(),
                    "to": m.to.as_str(),
                    "takeover": m.takeover,
                    "released_head": m.released_head,
                })
            });
            let history: Vec<Value> = t
                .history
                .iter()
                .filter(|h| &h.keyspace == name)
                .map(move_json)
                .collect();
            out.insert(
                name.clone(),
                json!({
                    "default_home": oc.rules.default.as_ref().map_or(atoll_config::FIRST_WRITE, |r| r.as_str()),
                    "homes": oc.rules.prefixes.iter().map(|(p, r)| json!({"prefix": String::from_utf8_lossy(p), "region": r.as_str()}))
                        .chain(oc.rules.hashes.iter().map(|(lo, hi, r)| json!({"hash": [lo, hi], "region": r.as_str()})))
                        .collect::<Vec<_>>(),
                    "overrides_total": all.map_or(0, |o| o.len()) - claimed,
                    "claimed_keys": claimed,
                    "forward": oc.forward,
                    "takeover": oc.takeover.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                    "overrides": overrides,
                    "moving": moving,
                    "moves": history,
                }),
            );
        }
        json!({"table_version": t.version, "keyspaces": out})
    }

    fn driver(&self) -> Result<&Driver> {
        self.driver.get().ok_or_else(|| {
            AtollError::RehomeRefused(
                "moving homes needs the control group: set [fencing] quorum = true".into(),
            )
        })
    }

    /// `POST /v1/admin/rehome`: moves `selector` of `keyspace` to `to` and waits for the move to
    /// end (or aborts it at `timeout`). `force`: the old home may be down; the new home then
    /// completes once the old home's write window has surely ended, and what it lacked of the
    /// old home's writes is reported as lost.
    pub async fn rehome(
        &self,
        keyspace: &str,
        selector: Selector,
        to: RegionId,
        force: bool,
        timeout: Duration,
    ) -> Result<Value> {
        let d = self.driver()?;
        let Some(oc) = self.keyspaces.get(keyspace) else {
            return Err(AtollError::RehomeRefused(format!(
                "keyspace `{keyspace}` is not owned (only owned keyspaces have homes)"
            )));
        };
        if !self.apis.contains_key(&to) {
            return Err(AtollError::RehomeRefused(format!(
                "`{to}` is not a region of this cluster"
            )));
        }
        let (from, version) = {
            let t = self.table();
            let from = home::home_of_selector(&oc.rules, &t, keyspace, &selector)
                .map_err(AtollError::RehomeRefused)?;
            (from, t.version)
        };
        if from == to {
            return Err(AtollError::RehomeRefused(format!(
                "`{to}` already is the home of {}",
                selector.describe()
            )));
        }
        let started = Instant::now();
        let cmd = HomeCommand::Begin {
            keyspace: keyspace.to_string(),
            selectors: vec![selector.clone()],
            from: from.clone(),
            to: to.clone(),
            expect_version: version,
            takeover: force,
        };
        let id = match d.proposer.propose(&cmd).await? {
            HomeAnswer::Begun { id } => id,
            HomeAnswer::Refused(r) => return Err(AtollError::RehomeRefused(r.to_string())),
            other => {
                return Err(AtollError::Corrupt(format!(
                    "unexpected answer to a move: {other:?}"
                )));
            }
        };
        tracing::warn!(keyspace, selector = %selector.describe(), %from, %to, id, force, "re-homing started");
        let deadline = started + timeout;
        let mut changed = self.changed.subscribe();
        loop {
            let done = {
                let t = self.table();
                t.history
                    .iter()
                    .find(|h| h.id == id && h.keyspace == keyspace)
                    .cloned()
            };
            if let Some(rec) = done {
                let mut report = move_json(&rec);
                report["writes_stopped_ms"] = json!(started.elapsed().as_millis() as u64);
                return match rec.outcome {
                    MoveOutcome::Aborted { reason } => Err(AtollError::RehomeRefused(format!(
                        "move {id} was aborted: {reason}"
                    ))),
                    _ => Ok(report),
                };
            }
            if Instant::now() >= deadline {
                let abort = HomeCommand::Abort {
                    keyspace: keyspace.to_string(),
                    id,
                    reason: format!("not finished within {timeout:?}"),
                };
                let answer = d.proposer.propose(&abort).await;
                return Err(AtollError::RehomeRefused(format!(
                    "move {id} of {} from `{from}` to `{to}` did not finish within {timeout:?} (the old home did not release it{}); {}",
                    selector.describe(),
                    if force {
                        " and the new home did not take it over"
                    } else {
                        ": it may be down, retry with --force to take its keys over"
                    },
                    match answer {
                        Ok(HomeAnswer::Aborted) =>
                            "it was aborted and the old home writes again".to_string(),
                        Ok(other) => format!("abort answered {other:?}"),
                        Err(e) => format!("the abort failed ({e}); `atoll status` shows the move"),
                    }
                )));
            }
            let _ = tokio::time::timeout(MOVER_TICK, changed.changed()).await;
        }
    }

    /// The mover: this region's part of every move, and takeovers. Runs until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut changed = self.changed.subscribe();
        loop {
            changed.mark_unchanged();
            if self.driver.get().is_some() {
                self.step().await;
            }
            let _ = tokio::time::timeout(MOVER_TICK, changed.changed()).await;
        }
    }

    fn try_busy(&self, id: u64) -> bool {
        let mut b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.retain(|_, t| now.duration_since(*t) < Duration::from_secs(10));
        if b.contains_key(&id) {
            return false;
        }
        b.insert(id, now);
        true
    }

    fn done(&self, id: u64) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    async fn step(self: &Arc<Self>) {
        let Some(d) = self.driver.get() else { return };
        let (moves, version) = {
            let t = self.table();
            (t.moves.clone(), t.version)
        };
        for (ks, m) in &moves {
            if m.from == self.me && m.released_head.is_none() && self.try_busy(m.id) {
                // The gate refuses the moving keys since the table was applied; a write that
                // passed it just before is stamped by the time a request queued behind it is
                // done, so the head read after that barrier covers every accepted write.
                let store = d.store.clone();
                let barrier = tokio::task::spawn_blocking(move || store.maintain(None)).await;
                if !matches!(barrier, Ok(Ok(_))) {
                    self.done(m.id);
                    continue;
                }
                let head = d.view.head();
                let cmd = HomeCommand::Release {
                    keyspace: ks.clone(),
                    id: m.id,
                    from: self.me.clone(),
                    head,
                };
                let r = d.proposer.propose(&cmd).await;
                tracing::info!(keyspace = %ks, id = m.id, head, answer = ?r, "released owned keys");
                self.done(m.id);
            }
            if m.to == self.me {
                let pv = d.view.promotion_view(&m.from);
                let complete = match m.released_head {
                    Some(h) => (pv.my_applied >= h).then_some(None),
                    None if m.takeover => {
                        let seen = self
                            .seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&m.id)
                            .copied();
                        seen.filter(|s| s.elapsed() >= self.takeover_wait).map(|_| {
                            let lag = pv.lag();
                            Some((lag.ops, lag.ms.unwrap_or(u64::MAX)))
                        })
                    }
                    None => None,
                };
                if let Some(forced) = complete
                    && self.try_busy(m.id)
                {
                    let cmd = HomeCommand::Complete {
                        keyspace: ks.clone(),
                        id: m.id,
                        to: self.me.clone(),
                        forced,
                    };
                    let r = d.proposer.propose(&cmd).await;
                    match &r {
                        Ok(HomeAnswer::Completed { .. }) => {
                            let outcome = if forced.is_some() { "forced" } else { "handed" };
                            self.metrics.owned_move(ks, outcome);
                            if let Some((ops, ms)) = forced {
                                tracing::error!(keyspace = %ks, id = m.id, from = %m.from, lost_ops = ops, lag_ms = ms, "took over the keys of a home that did not release them: writes it acknowledged that had not reached this region may be lost");
                            } else {
                                tracing::info!(keyspace = %ks, id = m.id, from = %m.from, "owned keys handed over");
                            }
                        }
                        other => {
                            tracing::warn!(keyspace = %ks, id = m.id, answer = ?other, "completing a move failed; retrying")
                        }
                    }
                    self.done(m.id);
                }
            }
        }
        // Takeover: the first region of a keyspace's order (skipping the silent home) that is
        // this one starts moving a home's keys once the home has been silent for a lease.
        for (ks, oc) in &self.keyspaces {
            if oc.takeover.is_empty() || moves.contains_key(ks) {
                continue;
            }
            let homes: Vec<RegionId> = self
                .apis
                .keys()
                .filter(|r| **r != self.me)
                .cloned()
                .collect();
            for h in homes {
                // Never heard since this process started: silent only once it has run for a few
                // leases (a region that just started has heard nobody yet).
                let silent = match d.view.promotion_view(&h).since_holder_heard_ms {
                    Some(ms) => ms >= self.lease.as_millis() as u64,
                    None => self.started.elapsed() >= self.lease * 3,
                };
                if !silent {
                    continue;
                }
                let next = oc.takeover.iter().find(|r| {
                    **r != h
                        && (**r == self.me
                            || d.view
                                .promotion_view(r)
                                .since_holder_heard_ms
                                .is_some_and(|ms| ms < self.lease.as_millis() as u64))
                });
                if next != Some(&self.me) {
                    continue;
                }
                // At most one move's worth: a home with more (keys homed by first write) is
                // taken over in several moves, one after the other.
                let selectors = {
                    let t = self.table();
                    let mut s = home::selectors_of(&oc.rules, &t, ks, &h);
                    s.truncate(home::MAX_SELECTORS);
                    s
                };
                if selectors.is_empty() || !self.try_busy(u64::MAX) {
                    continue;
                }
                let cmd = HomeCommand::Begin {
                    keyspace: ks.clone(),
                    selectors,
                    from: h.clone(),
                    to: self.me.clone(),
                    expect_version: version,
                    takeover: true,
                };
                let r = d.proposer.propose(&cmd).await;
                tracing::warn!(keyspace = %ks, home = %h, answer = ?r, "home silent for a lease: taking its keys over");
                self.done(u64::MAX);
                break;
            }
        }
    }
}

/// Moved selectors `atoll status` lists per keyspace (`overrides_total` counts them all; keys
/// homed by their first write are only counted, `claimed_keys`).
const STATUS_OVERRIDES: usize = 100;

fn selector_json(s: &Selector) -> Value {
    match s {
        Selector::Prefix(p) => json!({"prefix": String::from_utf8_lossy(p)}),
        Selector::Key(k) => json!({"key": String::from_utf8_lossy(k)}),
        Selector::Hash { lo, hi } => json!({"hash": [lo, hi]}),
    }
}

fn move_json(h: &home::MoveRecord) -> Value {
    let (outcome, lost_ops, lag_ms) = match &h.outcome {
        MoveOutcome::Handed => ("handed", Some(0), None),
        MoveOutcome::Forced { lag_ops, lag_ms } => ("forced", Some(*lag_ops), Some(*lag_ms)),
        MoveOutcome::Aborted { .. } => ("aborted", None, None),
    };
    json!({
        "keyspace": h.keyspace,
        "id": h.id,
        "selectors": h.selectors.iter().map(|s| s.describe()).collect::<Vec<_>>(),
        "from": h.from.as_str(),
        "to": h.to.as_str(),
        "takeover": h.takeover,
        "outcome": outcome,
        "lost_ops": lost_ops,
        "rpo_ms": lag_ms,
        "reason": match &h.outcome { MoveOutcome::Aborted { reason } => Some(reason.as_str()), _ => None },
    })
}

/// The store's write gate: fencing's window, for owned keyspaces the key's home, and at a
/// replica its admission and what needs a consensus group (`docs/design/adding-regions.md`).
pub struct Gate {
    pub fencing: Option<Arc<Fencing>>,
    pub homes: Option<Arc<Homes>>,
    pub replica: Option<Arc<crate::members::Membership>>,
}

impl Gate {
    /// `None` when there is nothing to check.
    pub fn for_store(
        fencing: Option<Arc<Fencing>>,
        homes: Option<Arc<Homes>>,
        replica: Option<Arc<crate::members::Membership>>,
    ) -> Option<Arc<dyn atoll_store::WriteGate>> {
        if fencing.is_none() && homes.is_none() && replica.is_none() {
            return None;
        }
        Some(Arc::new(Gate {
            fencing,
            homes,
            replica,
        }))
    }
}

impl atoll_store::WriteGate for Gate {
    fn permit(&self, keyspace: &KeyspaceConfig, key: &[u8]) -> Result<u64> {
        if let Some(m) = &self.replica {
            m.permit(keyspace)?;
        }
        if let Some(h) = &self.homes {
            h.permit(keyspace, key)?;
        }
        match &self.fencing {
            Some(f) => f.permit(keyspace, key),
            None => Ok(0),
        }
    }

    fn is_late(&self, epoch: u64, ts_ms: u64) -> bool {
        self.fencing
            .as_ref()
            .is_some_and(|f| f.is_late(epoch, ts_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_core::home::{HomeAnswer, Override};
    use atoll_store::WriteGate;

    const CONFIG: &str = "[cluster]\nname = \"t\"\n\n[[regions]]\nname = \"us-east-1\"\napi = \"127.0.0.1:7100\"\n\n[[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\n\n[[regions]]\nname = \"ap-southeast-1\"\napi = \"127.0.0.1:7102\"\n\n[[keyspaces]]\nname = \"profiles\"\npolicy = \"owned\"\ndefault_home = \"us-east-1\"\nhomes = [{ prefix = \"eu:\", region = \"eu-west-1\" }]\n\n[[keyspaces]]\nname = \"sessions\"\npolicy = \"lww\"\n";

    fn homes(me: &str) -> (Arc<Homes>, Config) {
        let config = Config::parse(CONFIG, "t.toml").unwrap();
        let h = Homes::new(
            &config,
            &RegionId::new(me).unwrap(),
            None,
            Arc::new(crate::metrics::Metrics::new()),
        )
        .unwrap();
        (h, config)
    }

    fn code(r: Result<u64>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    /// The gate lets only the key's home write it, and nobody while the key is moving.
    #[test]
    fn only_the_home_writes_and_nobody_while_the_key_moves() {
        let (eu, config) = homes("eu-west-1");
        let gate = Gate {
            fencing: None,
            homes: Some(eu.clone()),
            replica: None,
        };
        let profiles = config.keyspace("profiles").unwrap();
        let sessions = config.keyspace("sessions").unwrap();
        assert_eq!(code(gate.permit(profiles, b"eu:1")), "ok");
        assert_eq!(code(gate.permit(profiles, b"us:1")), "ATOLL-NOT-HOME");
        assert_eq!(
            code(gate.permit(sessions, b"us:1")),
            "ok",
            "other policies pass"
        );
        let mut t = HomeTable::default();
        let begin = HomeCommand::Begin {
            keyspace: "profiles".into(),
            selectors: vec![Selector::Key(b"eu:1".to_vec())],
            from: RegionId::new("eu-west-1").unwrap(),
            to: RegionId::new("us-east-1").unwrap(),
            expect_version: 0,
            takeover: false,
        };
        assert_eq!(t.apply(&begin), HomeAnswer::Begun { id: 1 });
        eu.on_table(t.clone(), 1);
        assert_eq!(
            code(gate.permit(profiles, b"eu:1")),
            "ATOLL-HOME-UNAVAILABLE"
        );
        assert_eq!(
            code(gate.permit(profiles, b"eu:2")),
            "ok",
            "other keys keep writing"
        );
        let (us, _) = homes("us-east-1");
        us.on_table(t.clone(), 1);
        assert_eq!(
            code(us.permit(profiles, b"eu:1").map(|()| 0)),
            "ATOLL-NOT-HOME",
            "the new home waits for the move to complete"
        );
        t.overrides.get_mut("profiles").unwrap().insert(
            Selector::Key(b"eu:1".to_vec()),
            Override {
                home: RegionId::new("us-east-1").unwrap(),
                epoch: 1,
            },
        );
        t.moves.clear();
        us.on_table(t.clone(), 1);
        eu.on_table(t, 2);
        assert_eq!(code(us.permit(profiles, b"eu:1").map(|()| 0)), "ok");
        assert_eq!(code(gate.permit(profiles, b"eu:1")), "ATOLL-NOT-HOME");
    }
}
