//! The replication driver: every decision of the replication adapter, as a pure state machine
//! shared by the region server and the simulation (`docs/design/replication-driver.md`).
//!
//! [`ReplDriver`] owns the [`ReplCore`] and the subscriber side: when heartbeats go out, when one
//! is answered at once, which subscriptions are open, when one went silent or must restart, what
//! a received frame means and when maintenance runs. [`ServedStream`] is the publisher side of one
//! subscription. Inputs carry the time ([`Now`]) and what the store holds ([`LocalView`]); outputs
//! are [`Command`]s the executor carries out (HTTP and tokio in the server, messages and virtual
//! time in the simulation).

use crate::causal::VersionVector;
use crate::hlc::Timestamp;
use crate::op::OpEntry;
use crate::region::RegionId;
use crate::repl::{Frame, Heartbeat, LinkState, Refusal, ReplConfig, ReplCore, Subscribe};
use std::collections::{BTreeMap, BTreeSet};

/// The time of an input: the physical clock the protocol reads (heartbeats, lag, skew), and a
/// monotonic clock for the driver's own timers (a wall clock stepped back must not stall them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub wall_ms: u64,
    pub mono_ms: u64,
}

/// What the region's store holds at the moment of an input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalView {
    /// The committed applied vector (this region's own head included).
    pub applied: VersionVector,
    /// The write watermark: every local write stamped before `watermark_before_ms` has a
    /// sequence number of at most `watermark_head`.
    pub watermark_head: u64,
    pub watermark_before_ms: u64,
    /// The HLC's wall time (a heartbeat carries `max(this, now)`).
    pub hlc_wall_ms: u64,
    /// The highest sequence number this region has given a write of its own, committed or
    /// being committed. A peer that has applied more of this region's writes than that proves
    /// this region lost acknowledged writes (a wiped or restored data directory).
    pub sealed_head: u64,
    /// The regions removed from the cluster whose removal is in effect in the store: no entry
    /// that came from one of them is applied any more (`docs/design/region-removal.md`).
    pub removed: BTreeSet<RegionId>,
}

/// Tunables of the driver.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverConfig {
    /// The cluster's name (a subscription for another cluster is refused).
    pub cluster: String,
    /// The replication core's settings (heartbeat interval, clock bound).
    pub repl: ReplConfig,
    /// How often the wanted subscriptions are reconciled with the open ones.
    pub manage_interval_ms: u64,
    /// Least time between two prompt heartbeats to one peer.
    pub prompt_gap_ms: u64,
    /// A served stream sends a heartbeat frame at least this often.
    pub stream_tick_ms: u64,
    /// Most entries per origin in one frame of a served stream.
    pub batch_max: usize,
    /// Most `Apply`s one subscription may have out at once: the executor stops reading the
    /// stream while this many are unanswered, so frames are admitted and merged while earlier
    /// ones commit (docs/design/pipelined-apply.md). 1 is one frame at a time.
    pub apply_window: usize,
    /// How often maintenance (tombstone collection below the horizon) runs.
    pub maintenance_interval_ms: u64,
    /// How often clock-skew transitions are looked for.
    pub skew_watch_interval_ms: u64,
    /// Delay of the first heartbeat and the first maintenance after start (the simulation
    /// spreads regions' phases; the server starts at once).
    pub first_heartbeat_after_ms: u64,
    pub first_maintenance_after_ms: u64,
}

impl DriverConfig {
    /// The server's settings for `repl`.
    pub fn new(cluster: impl Into<String>, repl: ReplConfig) -> Self {
        Self {
            cluster: cluster.into(),
            repl,
            manage_interval_ms: 200,
            prompt_gap_ms: 100,
            stream_tick_ms: 100,
            batch_max: 2048,
            apply_window: 4,
            maintenance_interval_ms: 5_000,
            skew_watch_interval_ms: 500,
            first_heartbeat_after_ms: 0,
            first_maintenance_after_ms: 0,
        }
    }

    /// A subscription silent (no frame at all) for this long is given up and restarted.
    pub fn silence_ms(&self) -> u64 {
        self.repl.heartbeat_interval_ms.saturating_mul(3)
    }
}

/// Identifies one subscription this region opened (unique for the driver's lifetime).
pub type SubId = u64;

/// What the executor must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Send `hb` to `to`, one way: the answer does not matter.
    SendHeartbeat { to: RegionId, hb: Heartbeat },
    /// Open subscription `id` to `peer` with `request`. Feed every frame it delivers to
    /// [`ReplDriver::on_frame`], one at a time; report its end (error, end of stream, refusal)
    /// with [`ReplDriver::on_subscription_ended`].
    Subscribe {
        id: SubId,
        peer: RegionId,
        request: Subscribe,
    },
    /// Close subscription `id` (the driver already forgot it; later input for it is ignored).
    Unsubscribe {
        id: SubId,
        peer: RegionId,
        reason: String,
    },
    /// Apply these admitted entries of subscription `id` to the store, in order, and report with
    /// [`ReplDriver::on_applied`]. Later frames of the subscription may be fed while this one
    /// commits, up to [`DriverConfig::apply_window`] applies out; the store must apply them in
    /// the order they were issued, and reports come back in that order.
    Apply {
        id: SubId,
        peer: RegionId,
        entries: Vec<OpEntry>,
    },
    /// Run maintenance: collect tombstones below `horizon` (none without one), prune the ledger,
    /// and truncate each origin's operation log up to its `stable` point (every region has
    /// applied it; `docs/design/oplog-truncation.md`), after the retention.
    Maintain {
        horizon: Option<u64>,
        stable: BTreeMap<RegionId, u64>,
    },
    /// This region cannot catch up from the operation log: replace its state with a snapshot
    /// streamed from `donor` (`docs/design/oplog-truncation.md`), then report with
    /// [`ReplDriver::on_bootstrap_done`]. No subscription is open meanwhile.
    Bootstrap { donor: RegionId, reason: String },
    /// Something worth a log line or a metric; nothing to carry out.
    Notice(Notice),
}

/// Transitions and samples for logs, metrics and the simulation's counters.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A heartbeat (one-way or on a stream) failed the core's checks and changed nothing.
    HeartbeatRefused {
        from: RegionId,
        refusal: Refusal,
    },
    /// A round trip measured from an echoed one-way heartbeat.
    Rtt {
        peer: RegionId,
        rtt_ms: f64,
    },
    /// A peer's clock started / stopped running ahead beyond the bound.
    SkewBegan {
        peer: RegionId,
        offset_ms: f64,
    },
    SkewEnded {
        peer: RegionId,
        offset_ms: f64,
    },
    /// What admission made of a received batch.
    Admitted {
        peer: RegionId,
        apply: usize,
        duplicates: usize,
        gaps: usize,
        held_back: usize,
    },
}

/// How applying a batch went, as the executor reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The store failed (nothing is known to be applied beyond what `LocalView` shows).
    pub failed: Option<String>,
    /// Origins whose entries the store refused for clock skew.
    pub skewed: Vec<RegionId>,
    /// Entries the store skipped because the entry before them was not applied: the stream
    /// is ahead of the store, so the subscription restarts from the applied vector.
    pub gaps: usize,
}

#[derive(Clone, Debug)]
struct Sub {
    peer: RegionId,
    origins: BTreeSet<RegionId>,
    /// Last frame (or the opening), monotonic.
    last_activity_ms: u64,
    /// `Apply`s out, unanswered (answered in order).
    applying: usize,
    /// Per origin, the last sequence number handed to the store in an `Apply`: the next frame is
    /// admitted from here, so it is not mistaken for a gap while earlier applies commit. Never
    /// moves the applied vector (that follows only the store's committed view).
    admitted: BTreeMap<RegionId, u64>,
    /// A frame dropped entries (a gap, or held back for skew): later frames are not admitted and
    /// the subscription restarts once its applies are answered.
    draining: bool,
}

/// The subscriber side of replication and the owner of the core.
#[derive(Clone, Debug)]
pub struct ReplDriver {
    core: ReplCore,
    cfg: DriverConfig,
    next_sub: SubId,
    subs: BTreeMap<SubId, Sub>,
    next_heartbeat_ms: u64,
    next_manage_ms: u64,
    next_maintenance_ms: u64,
    next_skew_watch_ms: u64,
    /// Reconcile subscriptions at the next input (a link started working both ways).
    manage_now: bool,
    prompted: BTreeMap<RegionId, u64>,
    skewed: BTreeSet<RegionId>,
    /// Set while this region must bootstrap by snapshot before it replicates again.
    bootstrap: Option<BootstrapState>,
    /// (peer, origin) → where the peer's log of that origin (not its own) starts, when it
    /// said it starts past this region's cursor: the origin is asked of the others meanwhile
    /// (a region that bootstrapped holds no log of what its snapshot covered).
    relay_gaps: BTreeMap<(RegionId, RegionId), u64>,
}

/// A bootstrap this region needs: why, from whom it would rather take it, and whether a
/// `Bootstrap` command is out.
#[derive(Clone, Debug)]
struct BootstrapState {
    reason: String,
    prefer: Option<RegionId>,
    /// Peers that proved to hold this region's writes (their heartbeats are refused until the
    /// bootstrap raises this region's head, so they never count as reachable meanwhile).
    candidates: BTreeSet<RegionId>,
    /// The most of this region's own writes a peer said it holds.
    own_floor: u64,
    /// The latest stability claim about this region's own writes a peer reported (this
    /// region's clock): its writes after the bootstrap are stamped above it.
    own_clock_floor_ms: u64,
    running: bool,
    /// Not before this monotonic time (after a failed attempt).
    retry_at_ms: u64,
    attempts: u32,
}

impl ReplDriver {
    /// A driver for `me` with these peers, resuming from the store's state, started at `now`.
    pub fn new(
        me: RegionId,
        peers: Vec<RegionId>,
        cfg: DriverConfig,
        local: &LocalView,
        now: Now,
    ) -> Self {
        let mut core = ReplCore::new(me, peers, cfg.repl.clone(), local.applied.clone());
        core.set_effective_removals(&local.removed);
        let m = now.mono_ms;
        Self {
            core,
            next_sub: 1,
            subs: BTreeMap::new(),
            next_heartbeat_ms: m + cfg.first_heartbeat_after_ms,
            next_manage_ms: m,
            next_maintenance_ms: m + cfg.first_maintenance_after_ms,
            next_skew_watch_ms: m,
            manage_now: false,
            prompted: BTreeMap::new(),
            skewed: BTreeSet::new(),
            bootstrap: None,
            relay_gaps: BTreeMap::new(),
            cfg,
        }
    }

    /// Adds a region to the peers (a config reload, `docs/design/adding-regions.md`); its
    /// heartbeats go out from the next tick and subscriptions are reconciled at the next input.
    /// `false` if it is this region or a peer already.
    pub fn add_peer(&mut self, peer: RegionId) -> bool {
        let added = self.core.add_peer(peer);
        if added {
            self.manage_now = true;
        }
        added
    }

    /// Removes a region from the peers (a config reload that drops it,
    /// `docs/design/region-removal.md`): no heartbeat goes to it from now on, its heartbeats are
    /// refused, and the subscriptions to it end at the next input (their origins change). The
    /// executor must then make the removal effective in the store
    /// (`atoll_store::Store::remove_region`), which refuses every entry that came from it, before
    /// heartbeats announce it. `false` if it was not a peer.
    pub fn remove_peer(&mut self, peer: &RegionId) -> bool {
        let removed = self.core.remove_peer(peer);
        if removed {
            self.manage_now = true;
            self.prompted.remove(peer);
            self.skewed.remove(peer);
            self.relay_gaps.retain(|(p, _), _| p != peer);
            if let Some(b) = self.bootstrap.as_mut() {
                b.candidates.remove(peer);
                if b.prefer.as_ref() == Some(peer) {
                    b.prefer = None;
                }
            }
        }
        removed
    }

    /// Why this region is bootstrapping by snapshot (`None`: it is not).
    pub fn bootstrapping(&self) -> Option<&str> {
        self.bootstrap.as_ref().map(|b| b.reason.as_str())
    }

    /// This region must bootstrap by snapshot (it found out itself, or its store says a
    /// bootstrap was under way when it stopped): every subscription ends and none opens until
    /// [`Self::on_bootstrap_done`] reports success.
    pub fn begin_bootstrap(
        &mut self,
        reason: String,
        prefer: Option<RegionId>,
        now: Now,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        self.need_bootstrap(reason, prefer, now, &mut out);
        out
    }

    fn need_bootstrap(
        &mut self,
        reason: String,
        prefer: Option<RegionId>,
        now: Now,
        out: &mut Vec<Command>,
    ) {
        if self.bootstrap.is_some() {
            return;
        }
        self.bootstrap = Some(BootstrapState {
            reason,
            candidates: prefer.iter().cloned().collect(),
            prefer,
            own_floor: 0,
            own_clock_floor_ms: 0,
            running: false,
            retry_at_ms: now.mono_ms,
            attempts: 0,
        });
        let ids: Vec<SubId> = self.subs.keys().copied().collect();
        for id in ids {
            self.end(id, "bootstrapping by snapshot".into(), out);
        }
        self.start_bootstrap(now, out);
    }

    /// Sends the `Bootstrap` command if one is due and a donor is reachable both ways: the
    /// preferred one, else the first such peer after the last one tried.
    fn start_bootstrap(&mut self, now: Now, out: &mut Vec<Command>) {
        let Some(b) = &self.bootstrap else {
            return;
        };
        if b.running || now.mono_ms < b.retry_at_ms {
            return;
        }
        let usable: Vec<RegionId> = self
            .core
            .peers()
            .filter(|p| b.candidates.contains(*p) || self.core.is_bidirectional(p, now.wall_ms))
            .cloned()
            .collect();
        let donor = b.prefer.clone().filter(|p| usable.contains(p)).or_else(|| {
            (!usable.is_empty()).then(|| usable[b.attempts as usize % usable.len()].clone())
        });
        let Some(donor) = donor else {
            return;
        };
        if let Some(b) = &mut self.bootstrap {
            b.running = true;
            b.attempts += 1;
            out.push(Command::Bootstrap {
                donor,
                reason: b.reason.clone(),
            });
        }
    }

    /// How the `Bootstrap` command went. `Ok`: the store holds the snapshot and replication
    /// resumes from its applied vector. `Err`: it is tried again after two heartbeat
    /// intervals, from another donor if there is one.
    pub fn on_bootstrap_done(&mut self, result: Result<(), String>, now: Now) {
        match result {
            Ok(()) => {
                self.bootstrap = None;
                self.manage_now = true;
            }
            Err(_) => {
                if let Some(b) = &mut self.bootstrap {
                    b.running = false;
                    b.prefer = None;
                    b.retry_at_ms = now.mono_ms + 2 * self.cfg.repl.heartbeat_interval_ms.max(1);
                }
            }
        }
    }

    /// The clock floor of a bootstrap (ms, this region's clock): the latest stability claim
    /// about this region's own writes its peers reported, in heartbeats it took in or refused
    /// because they proved it lost writes. A region whose data directory was lost lost its clock
    /// floor with it, and may have promised, before, never to stamp below a time its clock has
    /// not reached again; peers may have collected tombstones below that promise. Its writes
    /// after the bootstrap are stamped above this (`Store::raise_clock_floor`).
    pub fn bootstrap_clock_floor(&self) -> u64 {
        let held = self.core.own_claims_held_by_peers();
        self.bootstrap
            .as_ref()
            .map_or(held, |b| b.own_clock_floor_ms.max(held))
    }

    /// The most of this region's own writes a peer said it holds (a bootstrap's new head is at
    /// least this, so no write of it reuses a sequence number a peer already has).
    pub fn bootstrap_own_floor(&self) -> u64 {
        let held = self.core.own_writes_held_by_peers().map_or(0, |(_, n)| n);
        self.bootstrap
            .as_ref()
            .map_or(held, |b| b.own_floor.max(held))
    }

    /// A heartbeat the core refused because it claims more of this region's writes than it
    /// committed. More than this region ever sealed means it lost writes it had acknowledged
    /// (its data directory was wiped, or restored from an older copy): it bootstraps, from
    /// that peer if it can. Returns whether that is the case.
    fn claims_lost_writes(
        &mut self,
        hb: &Heartbeat,
        now: Now,
        local: &LocalView,
        out: &mut Vec<Command>,
    ) -> bool {
        let claim = hb.frontier.get(self.core.me()).map_or(0, |f| f.applied);
        if claim <= local.sealed_head {
            return false;
        }
        let reason = format!(
            "{} has applied {claim} of this region's writes, this region holds {}: its data directory lost writes (wiped, or restored from an older copy)",
            hb.from, local.sealed_head
        );
        self.need_bootstrap(reason, Some(hb.from.clone()), now, out);
        let claimed_ms = hb
            .frontier
            .get(self.core.me())
            .and_then(|f| f.caught_up_at_origin_ms)
            .unwrap_or(0);
        if let Some(b) = &mut self.bootstrap {
            b.own_floor = b.own_floor.max(claim);
            b.own_clock_floor_ms = b.own_clock_floor_ms.max(claimed_ms);
            b.candidates.insert(hb.from.clone());
        }
        true
    }

    pub fn core(&self) -> &ReplCore {
        &self.core
    }

    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// The open subscriptions: id, peer, origins.
    pub fn subscriptions(&self) -> impl Iterator<Item = (SubId, &RegionId, &BTreeSet<RegionId>)> {
        self.subs.iter().map(|(id, s)| (*id, &s.peer, &s.origins))
    }

    /// Brings the core up to the store: its applied vector and this region's write watermark.
    pub fn sync(&mut self, local: &LocalView) {
        for (o, n) in local.applied.iter() {
            self.core.on_applied(o, n);
        }
        self.core.set_effective_removals(&local.removed);
        self.core
            .on_watermark(local.watermark_head, local.watermark_before_ms);
    }

    /// The monotonic time at which [`Self::tick`] next has something to do.
    pub fn next_wake(&self) -> u64 {
        let mut t = self
            .next_heartbeat_ms
            .min(self.next_manage_ms)
            .min(self.next_maintenance_ms)
            .min(self.next_skew_watch_ms);
        let silence = self.cfg.silence_ms();
        for s in self.subs.values() {
            if s.applying == 0 {
                t = t.min(s.last_activity_ms + silence);
            }
        }
        t
    }

    /// The heartbeat to send to `to` now (also what a served stream sends).
    pub fn heartbeat_for(&mut self, to: &RegionId, now: Now, local: &LocalView) -> Heartbeat {
        self.sync(local);
        let hlc = Timestamp {
            wall_ms: local.hlc_wall_ms.max(now.wall_ms),
            logical: 0,
        };
        self.core.heartbeat(to, now.wall_ms, hlc)
    }

    /// Runs every timer that is due.
    pub fn tick(&mut self, now: Now, local: &LocalView) -> Vec<Command> {
        self.sync(local);
        let mut out = Vec::new();
        let m = now.mono_ms;
        if m >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = m + self.cfg.repl.heartbeat_interval_ms.max(1);
            let peers: Vec<RegionId> = self.core.peers().cloned().collect();
            for p in peers {
                let hb = self.heartbeat_for(&p, now, local);
                out.push(Command::SendHeartbeat { to: p, hb });
            }
        }
        // Silent subscriptions (an `Apply` out is the executor's to finish, not silence).
        let silence = self.cfg.silence_ms();
        let silent: Vec<SubId> = self
            .subs
            .iter()
            .filter(|(_, s)| s.applying == 0 && m >= s.last_activity_ms + silence)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            if let Some(s) = self.subs.remove(&id) {
                out.push(Command::Unsubscribe {
                    id,
                    peer: s.peer.clone(),
                    reason: format!("the stream from {} went silent", s.peer),
                });
            }
        }
        if self.bootstrap.is_some() {
            // The manage timer keeps its pace meanwhile (it is when a failed attempt is tried
            // again): left in the past, it made every tick due at once, and the server's driver
            // loop woke every millisecond for as long as a bootstrap lasted.
            if m >= self.next_manage_ms {
                self.next_manage_ms = m + self.cfg.manage_interval_ms.max(1);
                self.start_bootstrap(now, &mut out);
            }
        } else if self.manage_now || m >= self.next_manage_ms {
            self.manage(now, local, &mut out);
        }
        if m >= self.next_maintenance_ms {
            self.next_maintenance_ms = m + self.cfg.maintenance_interval_ms.max(1);
            // Not while the store is being replaced by a snapshot.
            if self.bootstrap.is_none() {
                out.push(Command::Maintain {
                    horizon: self.core.tombstone_horizon_ms(now.wall_ms),
                    stable: self.core.stable_points(),
                });
            }
        }
        if m >= self.next_skew_watch_ms {
            self.next_skew_watch_ms = m + self.cfg.skew_watch_interval_ms.max(1);
            self.skew_watch(now, &mut out);
        }
        out
    }

    /// Reconciles the open subscriptions with the core's wanted ones.
    fn manage(&mut self, now: Now, local: &LocalView, out: &mut Vec<Command>) {
        self.manage_now = false;
        self.next_manage_ms = now.mono_ms + self.cfg.manage_interval_ms.max(1);
        if self.bootstrap.is_some() {
            return;
        }
        let mut wanted = self.core.wanted_subscriptions(now.wall_ms);
        // Origins a peer relays but whose log there starts past this region's cursor are asked
        // of the others (until this region has caught up past the gap).
        self.relay_gaps
            .retain(|(_, o), first| *first > local.applied.get(o) + 1);
        for (peer, o) in self.relay_gaps.keys() {
            if let Some(origins) = wanted.get_mut(peer) {
                origins.remove(o);
            }
        }
        let stale: Vec<SubId> = self
            .subs
            .iter()
            .filter(|(_, s)| wanted.get(&s.peer) != Some(&s.origins))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(s) = self.subs.remove(&id) {
                out.push(Command::Unsubscribe {
                    id,
                    peer: s.peer,
                    reason: "the origins wanted from this peer changed".into(),
                });
            }
        }
        for (peer, origins) in wanted {
            if self.subs.values().any(|s| s.peer == peer) {
                continue;
            }
            let id = self.next_sub;
            self.next_sub += 1;
            let request = Subscribe {
                from: self.core.me().clone(),
                cluster: self.cfg.cluster.clone(),
                origins: origins.iter().cloned().collect(),
                applied: local.applied.clone(),
            };
            self.subs.insert(
                id,
                Sub {
                    peer: peer.clone(),
                    origins,
                    last_activity_ms: now.mono_ms,
                    applying: 0,
                    admitted: BTreeMap::new(),
                    draining: false,
                },
            );
            out.push(Command::Subscribe { id, peer, request });
        }
    }

    fn skew_watch(&mut self, now: Now, out: &mut Vec<Command>) {
        for p in self.core.status(now.wall_ms) {
            let offset_ms = p.clock_offset_ms.unwrap_or(0.0);
            if p.state == LinkState::ClockSkew {
                if self.skewed.insert(p.region.clone()) {
                    out.push(Command::Notice(Notice::SkewBegan {
                        peer: p.region,
                        offset_ms,
                    }));
                }
            } else if p.reachable && self.skewed.remove(&p.region) {
                out.push(Command::Notice(Notice::SkewEnded {
                    peer: p.region,
                    offset_ms,
                }));
            }
        }
    }

    /// A one-way heartbeat from a peer (its sender already authenticated by the transport). A
    /// refused one changes nothing: `Err` carries the refusal (also as a notice).
    pub fn on_heartbeat(
        &mut self,
        hb: &Heartbeat,
        now: Now,
        local: &LocalView,
    ) -> Result<Vec<Command>, Refusal> {
        // Our own head first: a peer may already hold writes we committed a moment ago.
        self.sync(local);
        let before = self.core.is_bidirectional(&hb.from, now.wall_ms);
        if let Err(refusal) = self.core.on_heartbeat(hb, now.wall_ms) {
            let mut out = vec![Self::refused_notice(&hb.from, refusal.clone())];
            if refusal == Refusal::AppliedBeyondOurHead
                && self.claims_lost_writes(hb, now, local, &mut out)
            {
                return Ok(out);
            }
            return Err(refusal);
        }
        let after = self.core.is_bidirectional(&hb.from, now.wall_ms);
        let mut out = Vec::new();
        if hb.echo.is_some()
            && let Some(st) = self
                .core
                .status(now.wall_ms)
                .into_iter()
                .find(|s| s.region == hb.from)
            && let Some(rtt_ms) = st.rtt_ms
        {
            out.push(Command::Notice(Notice::Rtt {
                peer: hb.from.clone(),
                rtt_ms,
            }));
        }
        // The peer does not hear us yet (no echo), or we did not know both directions worked:
        // tell it at once that we hear it, so a link comes up in a few round trips rather than
        // a heartbeat interval or two (at most once per `prompt_gap_ms` per peer).
        let prompt = hb.echo.is_none() || !before;
        if prompt {
            let due = self
                .prompted
                .get(&hb.from)
                .is_none_or(|t| now.mono_ms >= t + self.cfg.prompt_gap_ms);
            if due {
                self.prompted.insert(hb.from.clone(), now.mono_ms);
                let h = self.heartbeat_for(&hb.from, now, local);
                out.push(Command::SendHeartbeat {
                    to: hb.from.clone(),
                    hb: h,
                });
            }
        }
        // Subscriptions start as soon as the link works both ways.
        if after && !before {
            self.manage(now, local, &mut out);
        }
        Ok(out)
    }

    /// The notice for a refused heartbeat (for executors that count refusals they saw).
    pub fn refused_notice(from: &RegionId, refusal: Refusal) -> Command {
        Command::Notice(Notice::HeartbeatRefused {
            from: from.clone(),
            refusal,
        })
    }

    /// A frame that arrived on subscription `id`. Input for a subscription the driver no longer
    /// has is ignored.
    pub fn on_frame(
        &mut self,
        id: SubId,
        frame: Frame,
        now: Now,
        local: &LocalView,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        let Some(sub) = self.subs.get_mut(&id) else {
            return out;
        };
        sub.last_activity_ms = now.mono_ms;
        let peer = sub.peer.clone();
        match frame {
            Frame::Heartbeat(hb) => {
                if hb.from != peer {
                    let reason =
                        format!("the stream from {peer} carried a heartbeat of {}", hb.from);
                    self.end(id, reason, &mut out);
                    return out;
                }
                self.sync(local);
                if let Err(refusal) = self.core.on_stream_heartbeat(&hb, now.wall_ms) {
                    let reason = format!("the stream from {peer}: {refusal}");
                    out.push(Self::refused_notice(&hb.from, refusal.clone()));
                    self.end(id, reason, &mut out);
                    if refusal == Refusal::AppliedBeyondOurHead {
                        self.claims_lost_writes(&hb, now, local, &mut out);
                    }
                }
            }
            Frame::Truncated { origin, first } => {
                let applied = local.applied.get(&origin);
                // A relay's log may start past our cursor (it bootstrapped: its snapshot
                // covered those entries, which it never logged). The origin itself still holds
                // them (it truncates nothing a region has not applied), and so may another
                // relay: only the origin's own word sends this region to bootstrap.
                if first > applied + 1 && origin != peer {
                    self.relay_gaps
                        .insert((peer.clone(), origin.clone()), first);
                    self.end(
                        id,
                        format!("{peer}'s log of {origin} starts at {first}, past this region's {applied}: asking the origin and the other peers for it"),
                        &mut out,
                    );
                    self.manage_now = true;
                } else if first > applied + 1 {
                    let reason = format!(
                        "{peer}'s operation log of {origin} starts at {first}; this region has applied {applied} of it, and the entries between are truncated"
                    );
                    self.need_bootstrap(reason, Some(peer), now, &mut out);
                } else {
                    // The store caught up meanwhile (another subscription): start over.
                    self.end(
                        id,
                        format!("resubscribing to {peer}: its log of {origin} moved"),
                        &mut out,
                    );
                }
            }
            Frame::Ops(entries) => {
                if sub.draining {
                    // Beyond a gap: everything here comes again after the restart.
                    return out;
                }
                self.sync(local);
                let none = BTreeMap::new();
                let admitted = self.subs.get(&id).map_or(&none, |s| &s.admitted);
                let adm = self.core.admit_after(entries, admitted);
                out.push(Command::Notice(Notice::Admitted {
                    peer: peer.clone(),
                    apply: adm.apply.len(),
                    duplicates: adm.duplicates,
                    gaps: adm.gaps,
                    held_back: adm.held_back,
                }));
                // The peer's cursor has moved past entries dropped here (beyond a gap, or held
                // back for skew): the subscription restarts from the applied vector.
                let resync = adm.gaps > 0 || adm.held_back > 0;
                let Some(s) = self.subs.get_mut(&id) else {
                    return out;
                };
                s.draining |= resync;
                if adm.apply.is_empty() {
                    if s.draining && s.applying == 0 {
                        self.end(
                            id,
                            format!("resubscribing to {peer}: entries dropped"),
                            &mut out,
                        );
                    }
                    return out;
                }
                // Admitted entries continue each origin's run in order: the last is the new floor.
                for e in &adm.apply {
                    match s.admitted.get_mut(&e.origin) {
                        Some(last) => *last = e.seq,
                        None => {
                            s.admitted.insert(e.origin.clone(), e.seq);
                        }
                    }
                }
                s.applying += 1;
                out.push(Command::Apply {
                    id,
                    peer,
                    entries: adm.apply,
                });
            }
        }
        out
    }

    /// The outcome of subscription `id`'s `Apply`.
    pub fn on_applied(
        &mut self,
        id: SubId,
        report: &ApplyReport,
        now: Now,
        local: &LocalView,
    ) -> Vec<Command> {
        self.sync(local);
        let mut out = Vec::new();
        let Some(sub) = self.subs.get_mut(&id) else {
            return out;
        };
        sub.applying = sub.applying.saturating_sub(1);
        let drained = sub.draining && sub.applying == 0;
        sub.last_activity_ms = now.mono_ms;
        let peer = sub.peer.clone();
        if let Some(e) = &report.failed {
            // Later applies of this subscription were built on this one and are refused too;
            // their reports are ignored once it has ended.
            self.end(
                id,
                format!("applying entries from {peer} failed: {e}"),
                &mut out,
            );
        } else if drained || !report.skewed.is_empty() || report.gaps > 0 {
            self.end(
                id,
                format!("resubscribing to {peer}: entries not applied"),
                &mut out,
            );
        }
        out
    }

    /// Subscription `id` ended on its own (stream closed, transport error, refused).
    pub fn on_subscription_ended(&mut self, id: SubId) {
        self.subs.remove(&id);
    }

    fn end(&mut self, id: SubId, reason: String, out: &mut Vec<Command>) {
        if let Some(s) = self.subs.remove(&id) {
            out.push(Command::Unsubscribe {
                id,
                peer: s.peer,
                reason,
            });
        }
    }

    /// Whether a subscription request may be served: same cluster, from a peer. `Err` names
    /// the problem.
    pub fn check_subscription(&self, sub: &Subscribe) -> Result<(), String> {
        if sub.cluster != self.cfg.cluster {
            return Err(format!(
                "subscription for cluster `{}`, this is `{}`",
                sub.cluster, self.cfg.cluster
            ));
        }
        if self.core.removed().contains(&sub.from) {
            return Err(format!(
                "`{}` was removed from the cluster by this region",
                sub.from
            ));
        }
        if !self.core.peers().any(|p| *p == sub.from) {
            return Err(format!("`{}` is not a peer of this region", sub.from));
        }
        Ok(())
    }
}

/// What a served stream does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamStep {
    /// Read up to `max` operation-log entries of `origin` from `from` on and pass them to
    /// [`ServedStream::on_read`].
    Read {
        origin: RegionId,
        from: u64,
        max: usize,
    },
    /// Send a heartbeat frame ([`ReplDriver::heartbeat_for`]) now.
    Heartbeat,
    /// Nothing to send: call [`ServedStream::next`] again when the log grows or at
    /// `until_mono_ms`, whichever comes first.
    Wait { until_mono_ms: u64 },
}

/// The publisher side of one subscription: a cursor per origin; ops first, and a heartbeat frame
/// after every round that sent nothing and at least every `stream_tick_ms` while sending.
#[derive(Clone, Debug)]
pub struct ServedStream {
    to: RegionId,
    cursor: Vec<(RegionId, u64)>,
    batch_max: usize,
    tick_ms: u64,
    /// Position in the current round over the origins.
    idx: usize,
    sent_this_round: bool,
    last_hb_mono_ms: Option<u64>,
    /// A heartbeat was just sent after an idle round: wait next.
    idle: bool,
}

impl ServedStream {
    /// The stream for `sub` (checked with [`ReplDriver::check_subscription`]).
    pub fn new(sub: &Subscribe, cfg: &DriverConfig) -> Self {
        let origins: BTreeSet<&RegionId> = sub.origins.iter().collect();
        Self {
            to: sub.from.clone(),
            cursor: origins
                .into_iter()
                .map(|o| (o.clone(), sub.applied.get(o)))
                .collect(),
            batch_max: cfg.batch_max.max(1),
            tick_ms: cfg.stream_tick_ms.max(1),
            idx: 0,
            sent_this_round: false,
            last_hb_mono_ms: None,
            idle: false,
        }
    }

    /// The subscriber.
    pub fn to(&self) -> &RegionId {
        &self.to
    }

    /// The next step at monotonic time `mono_ms`.
    pub fn next(&mut self, mono_ms: u64) -> StreamStep {
        if self.idle {
            self.idle = false;
            return StreamStep::Wait {
                until_mono_ms: mono_ms + self.tick_ms,
            };
        }
        if let Some((origin, at)) = self.cursor.get(self.idx) {
            return StreamStep::Read {
                origin: origin.clone(),
                from: at + 1,
                max: self.batch_max,
            };
        }
        // End of a round.
        let sent = std::mem::replace(&mut self.sent_this_round, false);
        self.idx = 0;
        let hb_due = self
            .last_hb_mono_ms
            .is_none_or(|t| mono_ms >= t + self.tick_ms);
        if !sent || hb_due {
            self.idle = !sent;
            return StreamStep::Heartbeat;
        }
        self.next(mono_ms)
    }

    /// The entries a `Read` returned: the frame to send, if any. A batch that does not continue
    /// the cursor (the log moved under it) is an error: the stream must end.
    pub fn on_read(&mut self, entries: Vec<OpEntry>) -> Result<Option<Frame>, String> {
        let Some((origin, at)) = self.cursor.get_mut(self.idx) else {
            return Err("a read the stream did not ask for".into());
        };
        self.idx += 1;
        let Some(last) = entries.last() else {
            return Ok(None);
        };
        if let Some(first) = entries.first()
            && first.origin == *origin
            && first.seq > *at + 1
        {
            // Truncated below the subscriber's cursor: it must bootstrap; stop serving this
            // origin on this stream.
            let frame = Frame::Truncated {
                origin: origin.clone(),
                first: first.seq,
            };
            self.idx -= 1;
            self.cursor.remove(self.idx);
            return Ok(Some(frame));
        }
        if entries
            .first()
            .is_some_and(|e| e.seq != *at + 1 || e.origin != *origin)
        {
            return Err(format!(
                "the operation log of {origin} did not continue at {}",
                *at + 1
            ));
        }
        *at = last.seq;
        self.sent_this_round = true;
        Ok(Some(Frame::Ops(entries)))
    }

    /// A heartbeat frame went out at `mono_ms`.
    pub fn on_heartbeat_sent(&mut self, mono_ms: u64) {
        self.last_hb_mono_ms = Some(mono_ms);
    }

    /// Where the stream stands per origin (the last sequence sent).
    pub fn cursor(&self) -> impl Iterator<Item = (&RegionId, u64)> {
        self.cursor.iter().map(|(o, s)| (o, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::pncounter::PnCounter;
    use crate::op::KeyState;

    fn r(s: &str) -> RegionId {
        RegionId::new(s).expect("valid")
    }

    fn entry(origin: &str, seq: u64) -> OpEntry {
        OpEntry {
            origin: r(origin),
            seq,
            ts: Timestamp {
                wall_ms: 1_000_000 + seq,
                logical: 0,
            },
            keyspace: "k".into(),
            key: b"x".to_vec(),
            delta: KeyState::Counter(PnCounter::add(None, &r(origin), 1).expect("counter")),
            epoch: 0,
        }
    }

    fn at(ms: u64) -> Now {
        Now {
            wall_ms: 1_000_000 + ms,
            mono_ms: ms,
        }
    }

    fn view(pairs: &[(&str, u64)]) -> LocalView {
        let mut applied = VersionVector::new();
        for (o, n) in pairs {
            applied.raise(&r(o), *n);
        }
        LocalView {
            applied,
            ..LocalView::default()
        }
    }

    /// The frame of a publisher whose log of `origin` starts at `first`.
    fn truncated(origin: &str, first: u64) -> Frame {
        Frame::Truncated {
            origin: r(origin),
            first,
        }
    }

    fn driver(me: &str) -> ReplDriver {
        driver_in(me, &["a", "b"])
    }

    fn driver_in(me: &str, regions: &[&str]) -> ReplDriver {
        ReplDriver::new(
            r(me),
            regions.iter().map(|n| r(n)).collect(),
            DriverConfig::new("test", ReplConfig::new(1000, 500)),
            &LocalView::default(),
            at(0),
        )
    }

    fn heartbeats(cmds: &[Command]) -> Vec<(RegionId, Heartbeat)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::SendHeartbeat { to, hb } => Some((to.clone(), hb.clone())),
                _ => None,
            })
            .collect()
    }

    fn subscribes(cmds: &[Command]) -> Vec<(SubId, RegionId, Subscribe)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Subscribe { id, peer, request } => {
                    Some((*id, peer.clone(), request.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn unsubscribed(cmds: &[Command]) -> Vec<SubId> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Unsubscribe { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Two drivers exchange heartbeats until `a` has a subscription to `b`; returns its id.
    fn linked() -> (ReplDriver, ReplDriver, SubId) {
        linked_in(&["a", "b"])
    }

    /// As [`linked`], in a cluster of `regions` where only `a` and `b` are up.
    fn linked_in(regions: &[&str]) -> (ReplDriver, ReplDriver, SubId) {
        let (mut a, mut b) = (driver_in("a", regions), driver_in("b", regions));
        let l = LocalView::default();
        let mut to_b = heartbeats(&a.tick(at(0), &l));
        let mut sub = None;
        for step in 1..10 {
            let mut to_a = Vec::new();
            for (_, hb) in to_b.drain(..) {
                to_a.extend(heartbeats(
                    &b.on_heartbeat(&hb, at(step), &l).expect("taken"),
                ));
            }
            for (_, hb) in to_a {
                let cmds = a.on_heartbeat(&hb, at(step), &l).expect("taken");
                if let Some((id, peer, _)) = subscribes(&cmds).first() {
                    assert_eq!(*peer, r("b"));
                    sub = Some(*id);
                }
                to_b.extend(heartbeats(&cmds));
            }
            if let Some(id) = sub {
                return (a, b, id);
            }
            if to_b.is_empty() {
                to_b = heartbeats(&a.tick(at(step * 1000), &l));
            }
        }
        panic!("no subscription after the link came up both ways");
    }

    #[test]
    fn heartbeats_go_to_every_peer_every_interval() {
        let mut d = driver("a");
        let l = LocalView::default();
        let first = heartbeats(&d.tick(at(0), &l));
        assert_eq!(first.len(), 1, "one peer: b");
        assert_eq!(first[0].0, r("b"));
        assert!(heartbeats(&d.tick(at(500), &l)).is_empty(), "not due yet");
        assert!(d.next_wake() <= 1000);
        assert_eq!(heartbeats(&d.tick(at(1000), &l)).len(), 1);
    }

    #[test]
    fn a_link_that_works_both_ways_opens_a_subscription_at_once() {
        let (a, _, id) = linked();
        let subs: Vec<_> = a.subscriptions().map(|(i, p, _)| (i, p.clone())).collect();
        assert_eq!(subs, vec![(id, r("b"))]);
    }

    #[test]
    fn prompt_answers_are_rate_limited_per_peer() {
        let (mut a, b) = (driver("a"), driver("b"));
        let l = LocalView::default();
        let hb = b
            .core()
            .heartbeat(&r("a"), at(0).wall_ms, Timestamp::default());
        // No echo: the peer does not hear us, so we answer at once...
        let first = a.on_heartbeat(&hb, at(0), &l).expect("taken");
        assert_eq!(heartbeats(&first).len(), 1);
        // ...but not again within the prompt gap.
        let second = a.on_heartbeat(&hb, at(50), &l).expect("taken");
        assert!(heartbeats(&second).is_empty());
        let third = a.on_heartbeat(&hb, at(150), &l).expect("taken");
        assert_eq!(heartbeats(&third).len(), 1);
    }

    #[test]
    fn a_silent_subscription_is_closed_and_reopened() {
        let (mut a, mut b, id) = linked();
        let l = LocalView::default();
        // Three heartbeat intervals, as documented.
        let silence = 3_000;
        // Heartbeats keep flowing both ways (the peer stays reachable, the wanted subscriptions
        // do not change), but the stream delivers nothing: only silence can end it.
        let mut closed_at = None;
        let mut reopened = false;
        for t in (500..=silence + 1_000).step_by(100) {
            let mut cmds = a.tick(at(t), &l);
            for (_, hb) in heartbeats(&cmds) {
                let _ = b.on_heartbeat(&hb, at(t), &l);
            }
            for (_, hb) in heartbeats(&b.tick(at(t), &l)) {
                cmds.extend(a.on_heartbeat(&hb, at(t), &l).expect("taken"));
            }
            if unsubscribed(&cmds).contains(&id) {
                closed_at = Some(t);
            }
            if closed_at.is_some() && subscribes(&cmds).iter().any(|(_, p, _)| *p == r("b")) {
                reopened = true;
                break;
            }
        }
        let closed_at = closed_at.expect("a silent subscription is closed");
        assert!(
            closed_at >= silence,
            "closed at {closed_at}, before the silence bound"
        );
        assert!(reopened, "and opened again while the peer is reachable");
    }

    #[test]
    fn a_subscription_waiting_for_its_apply_is_not_silent() {
        let (mut a, mut b, id) = linked();
        let l = LocalView::default();
        let cmds = a.on_frame(id, Frame::Ops(vec![entry("b", 1)]), at(10), &l);
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Command::Apply { id: i, .. } if *i == id))
        );
        let silence = a.config().silence_ms();
        // The peer stays reachable both ways (heartbeats each way), so only silence could end it.
        for t in (1_000..=10 + silence + 10).step_by(500) {
            for (_, hb) in heartbeats(&a.tick(at(t), &l)) {
                let _ = b.on_heartbeat(&hb, at(t), &l);
            }
            for (_, hb) in heartbeats(&b.tick(at(t), &l)) {
                let _ = a.on_heartbeat(&hb, at(t), &l);
            }
        }
        let cmds = a.tick(at(10 + silence + 10), &l);
        assert!(!unsubscribed(&cmds).contains(&id), "{cmds:?}");
        let cmds = a.on_applied(
            id,
            &ApplyReport::default(),
            at(10 + silence + 20),
            &view(&[("b", 1)]),
        );
        assert!(unsubscribed(&cmds).is_empty());
    }

    #[test]
    fn a_gap_ends_the_subscription_after_what_can_be_applied() {
        let (mut a, _, id) = linked();
        let l = LocalView::default();
        // 1 applies, 3 comes after a gap: apply 1, then resubscribe.
        let cmds = a.on_frame(
            id,
            Frame::Ops(vec![entry("b", 1), entry("b", 3)]),
            at(10),
            &l,
        );
        let applied: Vec<u64> = cmds
            .iter()
            .flat_map(|c| match c {
                Command::Apply { entries, .. } => entries.iter().map(|e| e.seq).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(applied, vec![1]);
        assert!(unsubscribed(&cmds).is_empty(), "not before the apply");
        let cmds = a.on_applied(id, &ApplyReport::default(), at(20), &view(&[("b", 1)]));
        assert_eq!(unsubscribed(&cmds), vec![id]);
    }

    #[test]
    fn a_batch_entirely_beyond_a_gap_ends_the_subscription_at_once() {
        let (mut a, _, id) = linked();
        let cmds = a.on_frame(
            id,
            Frame::Ops(vec![entry("b", 5)]),
            at(10),
            &LocalView::default(),
        );
        assert_eq!(unsubscribed(&cmds), vec![id]);
        assert!(!cmds.iter().any(|c| matches!(c, Command::Apply { .. })));
    }

    #[test]
    fn a_failed_skew_refused_or_gapped_apply_ends_the_subscription() {
        for report in [
            ApplyReport {
                failed: Some("disk".into()),
                ..ApplyReport::default()
            },
            ApplyReport {
                skewed: vec![r("b")],
                ..ApplyReport::default()
            },
            ApplyReport {
                gaps: 1,
                ..ApplyReport::default()
            },
        ] {
            let (mut a, _, id) = linked();
            let l = LocalView::default();
            a.on_frame(id, Frame::Ops(vec![entry("b", 1)]), at(10), &l);
            let cmds = a.on_applied(id, &report, at(20), &l);
            assert_eq!(unsubscribed(&cmds), vec![id], "{report:?}");
        }
    }

    fn applied_seqs(cmds: &[Command]) -> Vec<u64> {
        cmds.iter()
            .flat_map(|c| match c {
                Command::Apply { entries, .. } => entries.iter().map(|e| e.seq).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn the_next_frame_is_admitted_while_the_last_one_commits() {
        let (mut a, _, id) = linked();
        let l = LocalView::default();
        let first = a.on_frame(
            id,
            Frame::Ops(vec![entry("b", 1), entry("b", 2)]),
            at(10),
            &l,
        );
        assert_eq!(applied_seqs(&first), vec![1, 2]);
        // Nothing is committed yet (the view still says 0): 3 continues what was handed out,
        // it is not a gap, and an entry already handed out is a duplicate.
        let second = a.on_frame(
            id,
            Frame::Ops(vec![entry("b", 2), entry("b", 3)]),
            at(11),
            &l,
        );
        assert_eq!(applied_seqs(&second), vec![3]);
        assert!(unsubscribed(&second).is_empty(), "{second:?}");
        // The applied vector the driver tells peers follows the committed view only.
        assert_eq!(a.core().applied().get(&r("b")), 0);
        let cmds = a.on_applied(id, &ApplyReport::default(), at(12), &view(&[("b", 2)]));
        assert!(unsubscribed(&cmds).is_empty());
        assert_eq!(a.core().applied().get(&r("b")), 2);
        let cmds = a.on_applied(id, &ApplyReport::default(), at(13), &view(&[("b", 3)]));
        assert!(unsubscribed(&cmds).is_empty());
        assert_eq!(a.core().applied().get(&r("b")), 3);
    }

    #[test]
    fn a_failed_apply_ends_the_subscription_and_later_reports_are_ignored() {
        let (mut a, _, id) = linked();
        let l = LocalView::default();
        a.on_frame(id, Frame::Ops(vec![entry("b", 1)]), at(10), &l);
        a.on_frame(id, Frame::Ops(vec![entry("b", 2)]), at(11), &l);
        let failed = ApplyReport {
            failed: Some("disk".into()),
            ..ApplyReport::default()
        };
        let cmds = a.on_applied(id, &failed, at(12), &l);
        assert_eq!(unsubscribed(&cmds), vec![id]);
        // The second apply was built on the failed one: its report changes nothing.
        let cmds = a.on_applied(id, &failed, at(13), &l);
        assert!(cmds.is_empty(), "{cmds:?}");
        assert_eq!(a.core().applied().get(&r("b")), 0);
    }

    #[test]
    fn a_gap_behind_applies_still_out_drains_them_then_ends() {
        let (mut a, _, id) = linked();
        let l = LocalView::default();
        a.on_frame(id, Frame::Ops(vec![entry("b", 1)]), at(10), &l);
        // 2 is missing: nothing of this frame can be applied, but 1 is still out.
        let cmds = a.on_frame(id, Frame::Ops(vec![entry("b", 3)]), at(11), &l);
        assert!(unsubscribed(&cmds).is_empty(), "not before 1 is answered");
        assert!(applied_seqs(&cmds).is_empty());
        // While draining, later frames are not admitted (they come again after the restart).
        let cmds = a.on_frame(id, Frame::Ops(vec![entry("b", 2)]), at(12), &l);
        assert!(applied_seqs(&cmds).is_empty(), "{cmds:?}");
        let cmds = a.on_applied(id, &ApplyReport::default(), at(13), &view(&[("b", 1)]));
        assert_eq!(unsubscribed(&cmds), vec![id]);
    }

    #[test]
    fn a_stream_carrying_another_regions_heartbeat_is_dropped() {
        let (mut a, _, id) = linked();
        let l = LocalView::default();
        let c = ReplDriver::new(
            r("c"),
            vec![r("a"), r("b"), r("c")],
            DriverConfig::new("test", ReplConfig::new(1000, 500)),
            &l,
            at(0),
        );
        let hb = c
            .core()
            .heartbeat(&r("a"), at(5).wall_ms, Timestamp::default());
        let cmds = a.on_frame(id, Frame::Heartbeat(hb), at(10), &l);
        assert_eq!(unsubscribed(&cmds), vec![id]);
    }

    #[test]
    fn input_for_a_closed_subscription_is_ignored() {
        let (mut a, _, id) = linked();
        let l = LocalView::default();
        a.on_subscription_ended(id);
        assert!(
            a.on_frame(id, Frame::Ops(vec![entry("b", 1)]), at(10), &l)
                .is_empty()
        );
        assert!(
            a.on_applied(id, &ApplyReport::default(), at(10), &l)
                .is_empty()
        );
    }

    #[test]
    fn maintenance_runs_on_its_interval() {
        let mut d = driver("a");
        let l = LocalView::default();
        let count = |cmds: &[Command]| {
            cmds.iter()
                .filter(|c| matches!(c, Command::Maintain { .. }))
                .count()
        };
        assert_eq!(count(&d.tick(at(0), &l)), 1);
        assert_eq!(count(&d.tick(at(4_999), &l)), 0);
        assert_eq!(count(&d.tick(at(5_000), &l)), 1);
    }

    #[test]
    fn subscriptions_are_checked() {
        let d = driver("a");
        let ok = Subscribe {
            from: r("b"),
            cluster: "test".into(),
            origins: vec![r("b")],
            applied: VersionVector::new(),
        };
        assert!(d.check_subscription(&ok).is_ok());
        let other = Subscribe {
            cluster: "other".into(),
            ..ok.clone()
        };
        assert!(d.check_subscription(&other).unwrap_err().contains("other"));
        let stranger = Subscribe { from: r("z"), ..ok };
        assert!(
            d.check_subscription(&stranger)
                .unwrap_err()
                .contains("not a peer")
        );
    }

    fn stream(origins: &[&str], applied: &[(&str, u64)]) -> ServedStream {
        let mut cfg = DriverConfig::new("test", ReplConfig::new(1000, 500));
        cfg.batch_max = 2;
        ServedStream::new(
            &Subscribe {
                from: r("a"),
                cluster: "test".into(),
                origins: origins.iter().map(|o| r(o)).collect(),
                applied: view(applied).applied,
            },
            &cfg,
        )
    }

    #[test]
    fn a_served_stream_sends_ops_from_the_cursor_then_heartbeats_and_waits() {
        let mut st = stream(&["b", "c"], &[("b", 3)]);
        assert_eq!(
            st.next(0),
            StreamStep::Read {
                origin: r("b"),
                from: 4,
                max: 2
            }
        );
        let f = st
            .on_read(vec![entry("b", 4), entry("b", 5)])
            .expect("continues");
        assert!(matches!(f, Some(Frame::Ops(ref e)) if e.len() == 2));
        assert_eq!(
            st.next(0),
            StreamStep::Read {
                origin: r("c"),
                from: 1,
                max: 2
            }
        );
        assert_eq!(st.on_read(Vec::new()), Ok(None));
        // The round sent something and no heartbeat went out yet: one now.
        assert_eq!(st.next(0), StreamStep::Heartbeat);
        st.on_heartbeat_sent(0);
        // Next round: b from 6; nothing anywhere: a heartbeat, then wait a tick.
        assert_eq!(
            st.next(10),
            StreamStep::Read {
                origin: r("b"),
                from: 6,
                max: 2
            }
        );
        assert_eq!(st.on_read(Vec::new()), Ok(None));
        assert!(matches!(st.next(10), StreamStep::Read { .. }));
        assert_eq!(st.on_read(Vec::new()), Ok(None));
        assert_eq!(st.next(10), StreamStep::Heartbeat);
        st.on_heartbeat_sent(10);
        assert_eq!(st.next(10), StreamStep::Wait { until_mono_ms: 110 });
    }

    #[test]
    fn a_busy_stream_still_heartbeats_every_tick() {
        let mut st = stream(&["b"], &[]);
        let mut seq = 0;
        let mut heartbeats_at = Vec::new();
        for t in (0..1_000).step_by(10) {
            match st.next(t) {
                StreamStep::Read { from, .. } => {
                    assert_eq!(from, seq + 1);
                    seq += 1;
                    assert!(
                        st.on_read(vec![entry("b", seq)])
                            .expect("continues")
                            .is_some()
                    );
                }
                StreamStep::Heartbeat => {
                    st.on_heartbeat_sent(t);
                    heartbeats_at.push(t);
                }
                StreamStep::Wait { .. } => panic!("a busy stream never waits"),
            }
        }
        assert!(heartbeats_at.len() >= 4, "{heartbeats_at:?}");
        assert!(
            heartbeats_at.windows(2).all(|w| w[1] - w[0] <= 110),
            "{heartbeats_at:?}"
        );
    }

    #[test]
    fn a_read_that_goes_back_or_names_another_origin_breaks_the_stream() {
        let mut st = stream(&["b"], &[("b", 3)]);
        assert!(matches!(st.next(0), StreamStep::Read { .. }));
        assert!(st.on_read(vec![entry("b", 3)]).is_err());
        let mut st = stream(&["b"], &[("b", 3)]);
        assert!(matches!(st.next(0), StreamStep::Read { .. }));
        assert!(st.on_read(vec![entry("c", 4)]).is_err());
    }

    #[test]
    fn a_log_truncated_past_the_cursor_is_said_once_and_that_origin_leaves_the_stream() {
        let mut st = stream(&["b", "c"], &[("b", 3), ("c", 1)]);
        let StreamStep::Read { origin, .. } = st.next(0) else {
            panic!("reads first");
        };
        assert_eq!(origin, r("b"));
        let frame = st.on_read(vec![entry("b", 6)]).expect("a frame");
        assert_eq!(
            frame,
            Some(Frame::Truncated {
                origin: r("b"),
                first: 6
            })
        );
        // c is still served; b is never read again.
        for t in 0..5 {
            if let StreamStep::Read { origin, .. } = st.next(t) {
                assert_eq!(origin, r("c"));
                st.on_read(Vec::new()).expect("empty");
            }
        }
    }

    #[test]
    fn a_truncated_log_sends_the_subscriber_to_bootstrap_and_nothing_opens_meanwhile() {
        let (mut d, _b, id) = linked();
        let local = view(&[("b", 3)]);
        let cmds = d.on_frame(id, truncated("b", 9), at(310), &local);
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Command::Bootstrap { donor, .. } if *donor == r("b"))),
            "{cmds:?}"
        );
        assert!(d.bootstrapping().is_some());
        // No subscription opens, no maintenance runs, while it bootstraps.
        let later = d.tick(at(6_000), &local);
        assert!(
            !later
                .iter()
                .any(|c| matches!(c, Command::Subscribe { .. } | Command::Maintain { .. })),
            "{later:?}"
        );
        // A failure is retried after two heartbeat intervals; success resumes replication.
        d.on_bootstrap_done(Err("link broke".into()), at(6_000));
        assert!(
            !d.tick(at(6_500), &local)
                .iter()
                .any(|c| matches!(c, Command::Bootstrap { .. }))
        );
        // The peer that said its log is truncated stays a donor to try.
        let retry = d.tick(at(8_050), &local);
        assert!(
            retry.iter().any(|c| matches!(c, Command::Bootstrap { .. })),
            "{retry:?}"
        );
        d.on_bootstrap_done(Ok(()), at(8_200));
        assert!(d.bootstrapping().is_none());
    }

    #[test]
    fn a_relay_whose_log_starts_past_our_cursor_is_not_a_reason_to_bootstrap() {
        // `c` is down: `a` asks `b` for `b`'s writes and, as a relay, for `c`'s.
        let (mut d, _b, id) = linked_in(&["a", "b", "c"]);
        let local = view(&[("b", 3), ("c", 4)]);
        let cmds = d.on_frame(id, truncated("c", 9), at(310), &local);
        // `b` bootstrapped (its log of `c` starts at 9): `c` itself still holds 5..8.
        assert!(d.bootstrapping().is_none(), "{cmds:?}");
        assert_eq!(unsubscribed(&cmds), vec![id]);
        let again = subscribes(&d.tick(at(320), &local));
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(again[0].1, r("b"));
        assert_eq!(again[0].2.origins, vec![r("b")], "c is not asked of b");
        // Caught up past the gap (from `c`, say), `b` is asked for `c` again.
        let caught_up = view(&[("b", 3), ("c", 9)]);
        let later = d.tick(at(1_000), &caught_up);
        let resub = subscribes(&later);
        assert_eq!(resub.len(), 1, "{later:?}");
        assert_eq!(resub[0].2.origins, vec![r("b"), r("c")]);
        // The origin's own log starting past the cursor still means a bootstrap.
        let own = d.on_frame(resub[0].0, truncated("b", 7), at(1_100), &caught_up);
        assert!(d.bootstrapping().is_some(), "{own:?}");
    }

    #[test]
    fn a_bootstrap_under_way_does_not_make_every_tick_due() {
        let (mut d, _b, id) = linked();
        let local = view(&[("b", 3)]);
        d.on_frame(id, truncated("b", 9), at(310), &local);
        assert!(d.bootstrapping().is_some());
        d.tick(at(400), &local);
        assert!(
            d.next_wake() > 400,
            "next wake {} is not after the tick at 400: the server's loop would spin",
            d.next_wake()
        );
    }

    #[test]
    fn a_peer_holding_more_of_our_writes_than_we_ever_sealed_means_we_lost_them() {
        let mut d = driver("a");
        let mut b = ReplCore::new(
            r("b"),
            vec![r("a")],
            ReplConfig::new(1000, 500),
            VersionVector::new(),
        );
        // b has applied 40 of a's writes, and a (before it lost its disk) claimed that it would
        // never stamp a write before 1_000_050 again.
        b.on_applied(&r("a"), 40);
        let mut old_a = ReplCore::new(
            r("a"),
            vec![r("b")],
            ReplConfig::new(1000, 500),
            VersionVector::new(),
        );
        old_a.on_local_commit(40);
        old_a.on_watermark(40, 1_000_050);
        b.on_heartbeat(
            &old_a.heartbeat(&r("b"), 1_000_050, Timestamp::default()),
            1_000_060,
        )
        .expect("old a's heartbeat");
        let hb = b.heartbeat(&r("a"), 1_000_100, Timestamp::default());
        let mut local = view(&[("a", 40)]);
        local.sealed_head = 40;
        let cmds = d.on_heartbeat(&hb, at(100), &local).expect("taken");
        assert!(!cmds.iter().any(|c| matches!(c, Command::Bootstrap { .. })));
        assert!(d.bootstrapping().is_none());
        // The same claim against a region that holds 12: it lost writes.
        let mut d = driver("a");
        let mut local = view(&[("a", 12)]);
        local.sealed_head = 12;
        let cmds = d.on_heartbeat(&hb, at(100), &local).expect("taken");
        assert!(
            cmds.iter()
                .any(|c| matches!(c, Command::Bootstrap { donor, .. } if *donor == r("b"))),
            "{cmds:?}"
        );
        assert_eq!(d.bootstrap_own_floor(), 40);
        // Its writes after the bootstrap go above the claim its disk no longer holds.
        assert_eq!(d.bootstrap_clock_floor(), 1_000_050);
        // Committed-but-not-yet-published (the claim is within what was sealed): an ordinary
        // refusal, no bootstrap.
        let mut d = driver("a");
        let mut local = view(&[("a", 12)]);
        local.sealed_head = 40;
        assert!(d.on_heartbeat(&hb, at(100), &local).is_err());
        assert!(d.bootstrapping().is_none());
    }
}
