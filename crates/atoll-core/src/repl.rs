//! The replication core: what a region knows about its peers and what it should do next.
//! Pure: every method takes the current physical time in milliseconds; nothing here does I/O.
//!
//! The protocol, in the words of the adapter that runs it:
//!
//! - **Heartbeats** are one-way messages every region sends to every peer at a fixed interval.
//!   A peer is *reachable* when a heartbeat from it arrived within `dead_after_ms`, so a one-way
//!   partition shows honestly on both sides: the side that still hears the other says so. Each
//!   heartbeat echoes the last heartbeat received from the destination, which gives the round trip
//!   (NTP style: `(t4 - t1) - (t3 - t2)`) and the peer's clock offset.
//! - **Subscriptions** carry the data: a region asks a peer for the operation-log entries of a set
//!   of origins beyond its own applied vector, and the peer streams them in per-origin order. A
//!   region always subscribes to each reachable peer's own ops, and to the ops of every origin it
//!   cannot hear directly, through every peer it can (relay). Applying is idempotent: an entry is
//!   applied only if it is the next sequence number of its origin.
//! - **Lag**: heartbeats carry the sender's applied vector and, per origin, how long ago the sender
//!   was last known to be caught up with it. A region is caught up with origin `O` as of time `t`
//!   when it has applied everything some heartbeat said existed at `t`. `lag_seconds` is the age of
//!   that time: it rises while a link is cut even when nobody writes.
//! - **Clock skew**: a peer whose clock runs ahead of ours by more than `max_clock_offset_ms` has
//!   its ops held back (not applied) until its offset is back in bounds.
//! - **Tombstone horizon**: stability claims start at each origin as its write watermark ("every
//!   write I stamped before `t` has a sequence number of at most `h`", on the origin's own clock)
//!   and travel in heartbeats unchanged: a region that has applied `h` is caught up with the
//!   origin as of `t`, and says so to others. Per origin, the least claim of every region is the
//!   time before which every region holds every write of that origin; a tombstone stamped below
//!   it may be collected. Claims are never converted between clocks, so no clock step or offset
//!   estimate can move one.

use crate::causal::VersionVector;
use crate::hlc::Timestamp;
use crate::op::OpEntry;
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod frame;
pub use frame::{Frame, FrameReader, MAX_FRAME_BYTES, encode_frame};
mod snapshot;
pub use snapshot::{SnapshotChunk, SnapshotRequest};

// The replication messages are versioned by their encoding: `codec::encode` starts every message
// with `codec::FORMAT_VERSION`, and a reader refuses a newer one.

/// Tunables of the replication core.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplConfig {
    /// How often heartbeats are sent.
    pub heartbeat_interval_ms: u64,
    /// A peer not heard from for this long is unreachable.
    pub dead_after_ms: u64,
    /// A peer whose clock runs ahead by more than this has its ops held back.
    pub max_clock_offset_ms: u64,
}

impl ReplConfig {
    pub fn new(heartbeat_interval_ms: u64, max_clock_offset_ms: u64) -> Self {
        Self {
            heartbeat_interval_ms,
            dead_after_ms: heartbeat_interval_ms.saturating_mul(3),
            max_clock_offset_ms,
        }
    }
}

/// The echo of the last heartbeat received from the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// The destination's `sent_ms` of that heartbeat (its clock).
    pub sent_ms: u64,
    /// How long the sender held it before sending this one (sender's clock).
    pub held_ms: u64,
}

/// What a region knows about one origin, as published in its heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginFrontier {
    /// Highest sequence number of the origin the sender has applied (its own head for itself).
    pub applied: u64,
    /// The sender's stability claim: it holds every write the origin stamped (HLC wall time)
    /// before this time, ON THE ORIGIN'S CLOCK; `None` if it has no claim yet. Claims start as the
    /// origin's write watermark and are relayed unchanged, never converted between clocks.
    pub caught_up_at_origin_ms: Option<u64>,
}

/// A heartbeat: liveness, clock and progress of the sender.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: RegionId,
    /// Sender's physical clock when sending.
    pub sent_ms: u64,
    /// Sender's hybrid logical clock when sending.
    pub hlc: Timestamp,
    pub echo: Option<Echo>,
    /// Per origin (the sender included), what the sender has applied and how fresh that is.
    pub frontier: BTreeMap<RegionId, OriginFrontier>,
    /// How long ago (sender's clock) the sender was caught up with every origin, as estimated
    /// with its clock-offset estimates; `None` if it never was. Informational: the tombstone
    /// horizon uses the per-origin claims in `frontier`, which need no estimate.
    pub stable_age_ms: Option<u64>,
    /// The regions the sender has removed from the cluster, once the removal took effect in its
    /// store (no entry that came from the removed region is applied there any more): what lets
    /// a removed region's writes settle (`docs/design/region-removal.md`). Format version 5;
    /// heartbeats of older versions decode with none.
    pub removed: BTreeSet<RegionId>,
}

/// A heartbeat as format versions 1 to 4 wrote it (no removals).
#[derive(Deserialize)]
pub(crate) struct HeartbeatV4 {
    from: RegionId,
    sent_ms: u64,
    hlc: Timestamp,
    echo: Option<Echo>,
    frontier: BTreeMap<RegionId, OriginFrontier>,
    stable_age_ms: Option<u64>,
}

impl From<HeartbeatV4> for Heartbeat {
    fn from(h: HeartbeatV4) -> Self {
        Heartbeat {
            from: h.from,
            sent_ms: h.sent_ms,
            hlc: h.hlc,
            echo: h.echo,
            frontier: h.frontier,
            stable_age_ms: h.stable_age_ms,
            removed: BTreeSet::new(),
        }
    }
}

/// A subscription request: "send me the ops of these origins beyond this vector".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    pub from: RegionId,
    pub cluster: String,
    pub origins: Vec<RegionId>,
    pub applied: VersionVector,
}

/// The state of the link to a peer, as status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// Heard from recently, and it hears us; clock in bounds.
    Up,
    /// We hear the peer, but its heartbeats show it does not hear us (a one-way partition).
    OneWay,
    /// Not heard from within `dead_after_ms` (or never).
    Unreachable,
    /// Heard from, but its clock runs ahead beyond `max_clock_offset_ms`: its ops are held back.
    ClockSkew,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Up => "up",
            LinkState::OneWay => "one-way",
            LinkState::Unreachable => "unreachable",
            LinkState::ClockSkew => "clock-skew",
        }
    }
}

/// What status reports for one peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerStatus {
    pub region: RegionId,
    pub state: LinkState,
    pub reachable: bool,
    /// Whether the peer's heartbeats show it hears ours (the other direction of the link).
    pub hears_us: bool,
    /// Time since the last heartbeat from the peer arrived.
    pub last_heard_ms_ago: Option<u64>,
    pub rtt_ms: Option<f64>,
    /// The peer's clock minus ours (positive: the peer runs ahead).
    pub clock_offset_ms: Option<f64>,
    /// Age of the newest time at which this region was known to hold all of the peer's writes.
    pub lag_seconds: Option<f64>,
    /// Writes of the peer known to exist that this region has not applied.
    pub lag_ops: u64,
    pub applied_seq: u64,
    pub known_head_seq: u64,
}

/// What status reports for one removed region (`docs/design/region-removal.md`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RemovedStatus {
    pub region: RegionId,
    /// The removal is in effect in this region's store.
    pub effective: bool,
    /// Its writes are settled ([`ReplCore::settled`]).
    pub settled: bool,
    /// How many of its writes this region holds.
    pub applied_seq: u64,
    /// The peers that have not announced the removal yet or hold a different number of its
    /// writes.
    pub waiting_for: Vec<RegionId>,
}

/// Decision about a batch of received entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admitted {
    /// Entries to apply now, in order (each the next seq of its origin).
    pub apply: Vec<OpEntry>,
    /// Entries already applied (duplicates from relays): dropped.
    pub duplicates: usize,
    /// Entries beyond a gap: dropped, they will be sent again.
    pub gaps: usize,
    /// Entries of origins whose clock is skewed: held back (dropped, sent again later).
    pub held_back: usize,
}

/// Why a heartbeat was refused (and nothing in it taken in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The sender is not a peer of this region.
    NotAPeer(RegionId),
    /// The echo carries a send time of ours further ahead than any clock plausibly is (an echo
    /// merely later than our latest time is ignored, not refused: our clock may have gone back).
    EchoFromTheFuture,
    /// The sender's clock reading is further from ours than any peer's plausibly is.
    ImplausibleClock,
    /// The sender claims to have applied writes of ours that we never committed.
    AppliedBeyondOurHead,
    /// The sender was removed from the cluster by this region (`docs/design/region-removal.md`).
    Removed(RegionId),
}

impl Refusal {
    /// A stable label (metrics).
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::NotAPeer(_) => "not-a-peer",
            Refusal::EchoFromTheFuture => "echo-from-the-future",
            Refusal::ImplausibleClock => "implausible-clock",
            Refusal::AppliedBeyondOurHead => "applied-beyond-our-head",
            Refusal::Removed(_) => "removed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAPeer(r) => write!(
                f,
                "heartbeat from `{r}`, which is not a peer of this region"
            ),
            Refusal::EchoFromTheFuture => write!(
                f,
                "heartbeat echoes a send time this region has not reached"
            ),
            Refusal::ImplausibleClock => write!(
                f,
                "heartbeat clock reading is more than a day away from this region's"
            ),
            Refusal::AppliedBeyondOurHead => write!(
                f,
                "heartbeat claims writes of this region beyond what it committed"
            ),
            Refusal::Removed(r) => write!(
                f,
                "heartbeat from `{r}`, which this region removed from the cluster"
            ),
        }
    }
}

/// A peer's clock may be off by this much before its heartbeats are refused as garbage (a skew
/// below it is reported as `clock-skew`, which is how an operator learns of it).
const PLAUSIBLE_CLOCK_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone, Debug, Default)]
struct PeerInfo {
    last_heard_ms: Option<u64>,
    /// Their last heartbeat's `sent_ms` and when we received it, for the echo.
    last_hb: Option<(u64, u64)>,
    /// Our send time of the latest of our heartbeats they echoed: proof they hear us.
    heard_us_at_ms: Option<u64>,
    rtt_ms: Option<f64>,
    offset_ms: Option<f64>,
    /// The latest round-trip samples, `(rtt, offset)`, oldest first (see `take_sample`).
    samples: VecDeque<(f64, f64)>,
    /// Their applied vector, as of their last heartbeat.
    applied: VersionVector,
    /// Their `stable_age_ms` as of their last heartbeat, and when (our clock) it came.
    stable_age: Option<(u64, u64)>,
    /// The highest head (their own writes' sequence number) any heartbeat of theirs reported:
    /// what session reads check a token's claims about their writes against.
    head_max: u64,
    /// The highest number (see [`SentLog`]) of a heartbeat of ours they echoed.
    echoed_count: u64,
    /// Their stability claims, as of their last heartbeat: per origin, the time ON THE ORIGIN'S
    /// CLOCK before which they hold every write of that origin. Origins they claim nothing for
    /// are absent. The basis of the tombstone horizon.
    claims: BTreeMap<RegionId, u64>,
    /// The largest clock reading (HLC wall time) any heartbeat of theirs carried since this core
    /// started: what a region added to the cluster must stamp its writes above
    /// ([`ReplCore::admission`]).
    hlc_max_ms: u64,
    /// Their own head as their first heartbeat since this core started said: a region added to
    /// the cluster is admitted only once it has applied that much of their writes
    /// ([`ReplCore::admission`]).
    first_head: Option<u64>,
    /// The regions they have removed, as of their last heartbeat (effective in their store).
    removed: BTreeSet<RegionId>,
}

/// Per origin: the progress this region has made and what it knows exists.
#[derive(Clone, Debug, Default)]
struct OriginProgress {
    known_head: u64,
    /// Time ON THE ORIGIN'S CLOCK before which this region holds every write of the origin.
    caught_up_origin_ms: Option<u64>,
    /// (head, origin time): every write of the origin stamped before `origin time` has a sequence
    /// number of at most `head`; pending until this region has applied `head`.
    pending: VecDeque<(u64, u64)>,
}

const PENDING_MAX: usize = 1024;

/// Heartbeats of ours remembered per peer, to number the ones it echoes.
const SENT_REMEMBERED: usize = 64;

/// The heartbeats this region built for one peer: how many, and the send times of the latest
/// with their numbers. An echo names a send time; looked up here, it names a heartbeat by number,
/// so "echoed a heartbeat sent after X" needs no clock comparison (a clock stepped back could
/// make an old heartbeat's send time look later than X).
#[derive(Clone, Debug, Default)]
struct SentLog {
    count: u64,
    recent: VecDeque<(u64, u64)>,
}

/// Round-trip samples the clock-offset estimate chooses from.
const OFFSET_SAMPLES: usize = 8;

/// Takes in one round-trip sample and returns the offset estimate: that of the sample with the
/// smallest round trip among the latest [`OFFSET_SAMPLES`] (NTP's clock filter). A sample's
/// offset is off by at most half its round trip, however the delay splits between the two ways,
/// so a heartbeat queued behind load (a long round trip) cannot move the estimate much. Two
/// samples whose error intervals do not overlap cannot both be right: one clock stepped, and
/// the window restarts from the newer sample, so a real skew shows at once.
fn take_sample(samples: &mut VecDeque<(f64, f64)>, rtt: f64, offset: f64) -> f64 {
    let best = |s: &VecDeque<(f64, f64)>| s.iter().copied().min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((best_rtt, best_offset)) = best(samples)
        && (offset - best_offset).abs() > (rtt + best_rtt) / 2.0
    {
        samples.clear();
    }
    samples.push_back((rtt, offset));
    while samples.len() > OFFSET_SAMPLES {
        samples.pop_front();
    }
    best(samples).map_or(offset, |(_, o)| o)
}

/// The replication core of one region.
#[derive(Clone, Debug)]
pub struct ReplCore {
    me: RegionId,
    cfg: ReplConfig,
    peers: BTreeMap<RegionId, PeerInfo>,
    applied: VersionVector,
    progress: BTreeMap<RegionId, OriginProgress>,
    /// Per peer, the heartbeats built for it (numbered; for session reads' proofs).
    sent: RefCell<BTreeMap<RegionId, SentLog>>,
    /// The latest local time any call was given.
    clock_ms: Cell<u64>,
    /// The latest local time any call was ever given (an echo of ours cannot be later).
    max_clock_ms: Cell<u64>,
    /// How far the local clock stepped back since the stored local times (when peers were heard,
    /// caught-up times, ...) were taken: they are read minus this, and rebased by the next
    /// `on_heartbeat`. Without it, a clock that ran ahead and is set back (NTP) would keep times
    /// from its ahead reading and claim to be caught up later than it is.
    stepped_back_ms: Cell<u64>,
    /// Regions this region removed from its peers (`docs/design/region-removal.md`). They stay
    /// origins: their writes that peers hold are still exchanged, and claims about them count.
    gone: BTreeSet<RegionId>,
    /// Of those, the removals in effect in the store (no entry that came from the region is
    /// applied any more): what heartbeats announce.
    effective: BTreeSet<RegionId>,
}

impl ReplCore {
    /// A core for `me` with these peers, resuming from `applied` (its durable cursor, its own
    /// head included).
    pub fn new(
        me: RegionId,
        peers: Vec<RegionId>,
        cfg: ReplConfig,
        applied: VersionVector,
    ) -> Self {
        let peers: BTreeMap<_, _> = peers
            .into_iter()
            .filter(|p| *p != me)
            .map(|p| (p, PeerInfo::default()))
            .collect();
        let mut progress: BTreeMap<RegionId, OriginProgress> = peers
            .keys()
            .map(|p| (p.clone(), OriginProgress::default()))
            .collect();
        progress.insert(me.clone(), OriginProgress::default());
        for (o, p) in progress.iter_mut() {
            p.known_head = applied.get(o);
        }
        Self {
            me,
            cfg,
            peers,
            applied,
            progress,
            sent: RefCell::new(BTreeMap::new()),
            clock_ms: Cell::new(0),
            max_clock_ms: Cell::new(0),
            stepped_back_ms: Cell::new(0),
            gone: BTreeSet::new(),
            effective: BTreeSet::new(),
        }
    }

    /// Notes the local time of a call; a time earlier than the latest seen means the clock
    /// stepped back.
    fn observe_clock(&self, now_ms: u64) {
        let last = self.clock_ms.get();
        if now_ms < last {
            self.stepped_back_ms
                .set(self.stepped_back_ms.get().saturating_add(last - now_ms));
        }
        self.clock_ms.set(now_ms);
        self.max_clock_ms.set(self.max_clock_ms.get().max(now_ms));
    }

    /// A stored local time, in the clock's current reading.
    fn local(&self, stored_ms: u64) -> u64 {
        stored_ms.saturating_sub(self.stepped_back_ms.get())
    }

    /// Moves every stored local time back by the steps the clock took back since they were taken.
    fn rebase(&mut self) {
        let back = self.stepped_back_ms.replace(0);
        if back == 0 {
            return;
        }
        let shift = |t: u64| t.saturating_sub(back);
        for p in self.peers.values_mut() {
            p.last_heard_ms = p.last_heard_ms.map(shift);
            p.last_hb = p.last_hb.map(|(sent, recv)| (sent, shift(recv)));
            p.heard_us_at_ms = p.heard_us_at_ms.map(shift);
            p.stable_age = p.stable_age.map(|(age, at)| (age, shift(at)));
        }
    }

    pub fn me(&self) -> &RegionId {
        &self.me
    }

    /// Adds a region to this region's peers (a config reload that appends a region,
    /// `docs/design/adding-regions.md`). It starts as never heard from, so truncation waits
    /// until it is heard ([`Self::stable_points`]) and the tombstone horizon until it and every
    /// peer claim stability for its writes ([`Self::tombstone_horizon_ms`]). `false` if it is
    /// this region or a peer already.
    pub fn add_peer(&mut self, peer: RegionId) -> bool {
        if peer == self.me || self.peers.contains_key(&peer) {
            return false;
        }
        let prog = OriginProgress {
            known_head: self.applied.get(&peer),
            ..Default::default()
        };
        self.progress.entry(peer.clone()).or_insert(prog);
        self.peers.insert(peer, PeerInfo::default());
        true
    }

    /// Removes a region from this region's peers (a config reload that drops it,
    /// `docs/design/region-removal.md`): no heartbeat goes to it, its heartbeats are refused
    /// ([`Refusal::Removed`]), and it no longer holds truncation ([`Self::stable_points`]) or the
    /// tombstone horizon back as a member. It stays an origin: the writes of it that peers hold
    /// are still exchanged (relayed) and claims about them still count, until its writes are
    /// settled ([`Self::settled`]). `false` if it was not a peer.
    pub fn remove_peer(&mut self, peer: &RegionId) -> bool {
        if self.peers.remove(peer).is_none() {
            return false;
        }
        self.sent.borrow_mut().remove(peer);
        self.progress.entry(peer.clone()).or_insert(OriginProgress {
            known_head: self.applied.get(peer),
            ..Default::default()
        });
        self.gone.insert(peer.clone());
        true
    }

    /// The removals in effect in this region's store (`LocalView::removed`): from now on no entry
    /// that came from those regions is applied here, so heartbeats may announce them. A removal
    /// the store has that the core has not made yet (a restart) is made here.
    pub fn set_effective_removals(&mut self, removed: &BTreeSet<RegionId>) {
        for r in removed {
            if *r != self.me && !self.gone.contains(r) {
                self.remove_peer(r);
                if !self.gone.contains(r) {
                    // Never a peer of this core (removed before it started): still an origin.
                    self.progress.entry(r.clone()).or_insert(OriginProgress {
                        known_head: self.applied.get(r),
                        ..Default::default()
                    });
                    self.gone.insert(r.clone());
                }
            }
        }
        self.effective = removed
            .iter()
            .filter(|r| self.gone.contains(*r))
            .cloned()
            .collect();
    }

    /// The regions this region removed.
    pub fn removed(&self) -> &BTreeSet<RegionId> {
        &self.gone
    }

    /// Whether the writes of removed region `g` are settled: its removal is in effect here, every
    /// peer has been heard since this core started and announces (in its latest heartbeat) the
    /// removal of `g` and of every other region this region removed, and every peer has applied
    /// exactly as many of `g`'s writes as this region. No region of the cluster will then ever
    /// apply another write of `g`: each took `g`'s writes only from `g` itself before its removal
    /// took effect, and otherwise from members, all of which hold the same; a region removed
    /// together with `g` that holds more cannot pass them on, every member refuses it too. Once
    /// settled, `g` no longer holds the tombstone horizon or the staleness bound back, and is no
    /// longer asked of relays.
    pub fn settled(&self, g: &RegionId) -> bool {
        self.effective.contains(g)
            && self.peers.values().all(|p| {
                p.last_heard_ms.is_some()
                    && self.effective.is_subset(&p.removed)
                    && p.applied.get(g) == self.applied.get(g)
            })
    }

    /// Every region this region removed, with whether the removal is in effect here, whether
    /// its writes are settled, and how many of them this region holds.
    pub fn removed_status(&self) -> Vec<RemovedStatus> {
        self.gone
            .iter()
            .map(|r| RemovedStatus {
                region: r.clone(),
                effective: self.effective.contains(r),
                settled: self.settled(r),
                applied_seq: self.applied.get(r),
                waiting_for: self
                    .peers
                    .iter()
                    .filter(|(_, p)| {
                        p.last_heard_ms.is_none()
                            || !p.removed.contains(r)
                            || p.applied.get(r) != self.applied.get(r)
                    })
                    .map(|(q, _)| q.clone())
                    .collect(),
            })
            .collect()
    }

    /// Removed origins whose writes are not settled yet: still asked of every peer.
    fn unsettled(&self) -> BTreeSet<RegionId> {
        self.gone
            .iter()
            .filter(|g| !self.settled(g))
            .cloned()
            .collect()
    }

    /// Whether this region, added to a running cluster, may take writes: every peer has sent an
    /// accepted heartbeat since this core started, and this region has applied each peer's own
    /// writes up to the head that first heartbeat reported. `Ok` carries the largest clock
    /// reading (HLC) any of them carried; `Err` the peers still waited for, in order
    /// (`docs/design/adding-regions.md`).
    ///
    /// Why both: a peer sends heartbeats only to regions it has added, and from then on its
    /// tombstone horizon waits for this region's claims and its operation log keeps what this
    /// region has not applied. Any horizon it used before was at most its own stability claim
    /// about itself, which is at most its clock (a watermark never claims past the clock, and the
    /// clock never goes back, across restarts too), so writes stamped above the floor are above
    /// every tombstone collected without this region. (Its claims about other origins are not
    /// needed, and one of a region whose clock runs ahead would only push the floor ahead.) And what a peer truncated of its own log before it added this region is at most
    /// that first head: caught up past it, this region never needs a bootstrap by snapshot once
    /// it takes writes (a bootstrap replaces the whole state, writes not yet replicated with it).
    pub fn admission(&self) -> Result<u64, Vec<RegionId>> {
        let missing: Vec<RegionId> = self
            .peers
            .iter()
            .filter(|(r, p)| {
                p.last_heard_ms.is_none() || p.first_head.is_none_or(|h| self.applied.get(r) < h)
            })
            .map(|(r, _)| r.clone())
            .collect();
        if !missing.is_empty() {
            return Err(missing);
        }
        Ok(self.peers.values().map(|p| p.hlc_max_ms).max().unwrap_or(0))
    }

    /// The latest stability claim about this region's own writes any peer reports: a time on
    /// this region's clock before which, it once promised, it would never stamp a write again.
    /// A region that lost its data directory lost its clock floor with it; after its bootstrap
    /// it must stamp above this (peers may have collected tombstones below it).
    pub fn own_claims_held_by_peers(&self) -> u64 {
        self.peers
            .values()
            .filter_map(|p| p.claims.get(&self.me).copied())
            .max()
            .unwrap_or(0)
    }

    pub fn config(&self) -> &ReplConfig {
        &self.cfg
    }

    pub fn peers(&self) -> impl Iterator<Item = &RegionId> {
        self.peers.keys()
    }

    /// The applied vector (this region's durable cursor, its own head included).
    pub fn applied(&self) -> &VersionVector {
        &self.applied
    }

    /// Records that local writes up to `seq` are committed.
    pub fn on_local_commit(&mut self, seq: u64) {
        self.advance(&self.me.clone(), seq);
    }

    /// Records this region's write watermark (see `atoll_store::Store::watermark`): every local
    /// write stamped (HLC wall time) before `before_ms` has a sequence number of at most `head`,
    /// and no later write will be stamped before it. This is the only source of claims about
    /// this region's own writes; peers relay them, so every stability claim in the cluster is a
    /// time on the clock of the origin it is about.
    pub fn on_watermark(&mut self, head: u64, before_ms: u64) {
        let me = self.me.clone();
        self.claim(&me, head, before_ms);
    }

    /// Takes in the claim "every write of `origin` stamped before `origin_ms` (origin's clock)
    /// has a sequence number of at most `head`": caught up as of `origin_ms` once `head` is
    /// applied here.
    fn claim(&mut self, origin: &RegionId, head: u64, origin_ms: u64) {
        let applied = self.applied.get(origin);
        let Some(prog) = self.progress.get_mut(origin) else {
            return;
        };
        prog.known_head = prog.known_head.max(head);
        if applied >= head {
            prog.caught_up_origin_ms = Some(
                prog.caught_up_origin_ms
                    .map_or(origin_ms, |c| c.max(origin_ms)),
            );
            return;
        }
        match prog.pending.back_mut() {
            Some((h, t)) if *h >= head => *t = (*t).max(origin_ms),
            _ => {
                if prog.pending.len() >= PENDING_MAX {
                    prog.pending.pop_front();
                }
                prog.pending.push_back((head, origin_ms));
            }
        }
    }

    fn reachable_at(&self, p: &PeerInfo, now_ms: u64) -> bool {
        p.last_heard_ms
            .is_some_and(|t| now_ms.saturating_sub(self.local(t)) <= self.cfg.dead_after_ms)
    }

    /// Whether both directions of the link to `p` work: we hear it, and it echoes our heartbeats.
    fn bidirectional_at(&self, p: &PeerInfo, now_ms: u64) -> bool {
        self.reachable_at(p, now_ms)
            && p.heard_us_at_ms
                .is_some_and(|t| now_ms.saturating_sub(self.local(t)) <= self.cfg.dead_after_ms)
    }

    /// Whether `peer` was heard from recently.
    pub fn is_reachable(&self, peer: &RegionId, now_ms: u64) -> bool {
        self.observe_clock(now_ms);
        self.peers
            .get(peer)
            .is_some_and(|p| self.reachable_at(p, now_ms))
    }

    /// Whether both directions of the link to `peer` are known to work: we hear it, and its
    /// heartbeats echo ours.
    pub fn is_bidirectional(&self, peer: &RegionId, now_ms: u64) -> bool {
        self.observe_clock(now_ms);
        self.peers
            .get(peer)
            .is_some_and(|p| self.bidirectional_at(p, now_ms))
    }

    /// What this region knows of how far behind the lease `holder` it and its peers are, for
    /// automated promotion and `atoll promote` (`docs/design/fencing.md`): the holder's head as
    /// last heard (directly, or relayed in any heartbeat), its write watermark, what this region
    /// applied and claims of it, and what each peer heard from recently has applied of it.
    pub fn promotion_view(&self, holder: &RegionId, now_ms: u64) -> crate::fence::PromotionView {
        self.observe_clock(now_ms);
        let progress = self.progress.get(holder);
        let heard = self.peers.get(holder).filter(|p| p.last_heard_ms.is_some());
        let relayed = self
            .peers
            .iter()
            .filter(|(r, p)| *r != holder && p.last_heard_ms.is_some())
            .map(|(_, p)| p.applied.get(holder))
            .max()
            .unwrap_or(0);
        let head = heard
            .map(|p| p.applied.get(holder))
            .into_iter()
            .chain(progress.map(|p| p.known_head))
            .chain(std::iter::once(relayed))
            .max()
            .filter(|_| heard.is_some() || relayed > 0);
        let since_heard = heard
            .and_then(|p| p.last_heard_ms)
            .map(|t| now_ms.saturating_sub(self.local(t)));
        crate::fence::PromotionView {
            since_holder_heard_ms: since_heard,
            holder_head: head,
            holder_watermark_ms: heard.and_then(|p| p.claims.get(holder).copied()),
            my_applied: self.applied.get(holder),
            my_claim_ms: self.caught_up(holder),
            others: self
                .peers
                .iter()
                .filter(|(r, p)| *r != holder && self.reachable_at(p, now_ms))
                .map(|(r, p)| (r.clone(), p.applied.get(holder)))
                .collect(),
        }
    }

    /// Whether `origin`'s clock is known to run ahead beyond the bound.
    pub fn is_skewed(&self, origin: &RegionId) -> bool {
        self.peers.get(origin).is_some_and(|p| {
            p.offset_ms
                .is_some_and(|o| o > self.cfg.max_clock_offset_ms as f64)
        })
    }

    /// Time on `origin`'s clock before which this region holds every write of `origin`.
    fn caught_up(&self, origin: &RegionId) -> Option<u64> {
        self.progress
            .get(origin)
            .and_then(|p| p.caught_up_origin_ms)
    }

    /// [`Self::caught_up`] read on our clock (with the origin's current estimated offset, never
    /// in the future): for lag, which is an estimate. The horizon never converts: a time taken
    /// on one clock and read back with an offset measured later moves when either clock steps.
    fn caught_up_local(&self, origin: &RegionId, now_ms: u64) -> Option<u64> {
        let t = self.caught_up(origin)?;
        if *origin == self.me {
            return Some(t.min(now_ms));
        }
        let offset = self
            .peers
            .get(origin)
            .and_then(|p| p.offset_ms)
            .unwrap_or(0.0);
        Some(((t as f64 - offset).max(0.0) as u64).min(now_ms))
    }

    /// Local time as of which this region holds every write of every origin (an estimate, for
    /// the heartbeat's informational `stable_age_ms`).
    fn stable_at(&self, now_ms: u64) -> Option<u64> {
        let mut min = now_ms;
        for o in self.progress.keys() {
            if self.gone.contains(o) && self.settled(o) {
                continue;
            }
            min = min.min(self.caught_up_local(o, now_ms)?);
        }
        Some(min)
    }

    /// This region's staleness bound: how long ago (local clock) it last held every write of
    /// every origin; `None` if it never did. Every read answer states it, and a read with
    /// `max_staleness` is refused above it (`docs/design/session-consistency.md`).
    pub fn staleness_ms(&self, now_ms: u64) -> Option<u64> {
        self.observe_clock(now_ms);
        self.stable_at(now_ms).map(|t| now_ms.saturating_sub(t))
    }

    /// The reachable peers whose own staleness bound, as their last heartbeat stated it and aged
    /// since, is within `max_ms`: where a bounded-staleness read refused here may go (that region
    /// checks again).
    pub fn peers_within_staleness(&self, now_ms: u64, max_ms: u64) -> Vec<RegionId> {
        self.observe_clock(now_ms);
        self.peers
            .iter()
            .filter(|(_, p)| self.reachable_at(p, now_ms))
            .filter(|(_, p)| {
                p.stable_age.is_some_and(|(age, at)| {
                    age.saturating_add(now_ms.saturating_sub(self.local(at))) <= max_ms
                })
            })
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The mark of a session read's arrival: per peer, how many heartbeats this region had built
    /// for it. Pass it to [`Self::session_peers`].
    pub fn session_mark(&self) -> BTreeMap<RegionId, u64> {
        self.sent
            .borrow()
            .iter()
            .map(|(r, s)| (r.clone(), s.count))
            .collect()
    }

    /// What this region knows of each peer for a session read that arrived at `mark`
    /// ([`Self::session_mark`]): a peer's heartbeats prove what it had written before the read
    /// arrived only once one of them echoes a heartbeat of ours built after the mark (numbered,
    /// not timed: a clock step cannot fake it).
    pub fn session_peers(
        &self,
        mark: &BTreeMap<RegionId, u64>,
    ) -> Vec<crate::session::PeerSession> {
        self.peers
            .iter()
            .map(|(r, p)| crate::session::PeerSession {
                region: r.clone(),
                applied: p.applied.clone(),
                head_max: p.head_max,
                heard_since: p.echoed_count > mark.get(r).copied().unwrap_or(0),
            })
            .collect()
    }

    /// The heartbeat to send to `to` now.
    pub fn heartbeat(&self, to: &RegionId, now_ms: u64, hlc: Timestamp) -> Heartbeat {
        self.observe_clock(now_ms);
        {
            let mut sent = self.sent.borrow_mut();
            let log = sent.entry(to.clone()).or_default();
            log.count += 1;
            log.recent.push_back((now_ms, log.count));
            while log.recent.len() > SENT_REMEMBERED {
                log.recent.pop_front();
            }
        }
        let echo = self
            .peers
            .get(to)
            .and_then(|p| p.last_hb)
            .map(|(sent_ms, recv_ms)| Echo {
                sent_ms,
                held_ms: now_ms.saturating_sub(self.local(recv_ms)),
            });
        let frontier = self
            .progress
            .keys()
            .map(|o| {
                (
                    o.clone(),
                    OriginFrontier {
                        applied: self.applied.get(o),
                        caught_up_at_origin_ms: self.caught_up(o),
                    },
                )
            })
            .collect();
        Heartbeat {
            from: self.me.clone(),
            sent_ms: now_ms,
            hlc,
            echo,
            frontier,
            stable_age_ms: self.stable_at(now_ms).map(|t| now_ms.saturating_sub(t)),
            removed: self.effective.clone(),
        }
    }

    /// Takes in a heartbeat sent on its own (the one-way heartbeat messages). A heartbeat that
    /// fails [`Self::check_heartbeat`] is refused and changes nothing.
    pub fn on_heartbeat(&mut self, hb: &Heartbeat, now_ms: u64) -> Result<(), Refusal> {
        self.take_heartbeat(hb, now_ms, true)
    }

    /// Takes in a heartbeat that arrived on a subscription stream. It may have queued behind
    /// batches of ops, so it says nothing reliable about round trips or clock offsets (using it
    /// would read queueing delay as clock skew); it still proves liveness and carries progress.
    pub fn on_stream_heartbeat(&mut self, hb: &Heartbeat, now_ms: u64) -> Result<(), Refusal> {
        self.take_heartbeat(hb, now_ms, false)
    }

    /// What a heartbeat must satisfy before anything in it is believed. It bounds what can be
    /// checked here: the sender is a peer, echoes a time of ours we have reached, reads a clock
    /// within a day of ours, and has applied no more of our writes than we committed. (That a
    /// heartbeat comes from the region it names is for the transport to prove.) Origins this
    /// region does not know are ignored, not refused: while regions reload a config that adds a
    /// region (`docs/design/adding-regions.md`), those that have added it already report it.
    pub fn check_heartbeat(&self, hb: &Heartbeat, now_ms: u64) -> Result<(), Refusal> {
        if !self.peers.contains_key(&hb.from) {
            if self.gone.contains(&hb.from) {
                return Err(Refusal::Removed(hb.from.clone()));
            }
            return Err(Refusal::NotAPeer(hb.from.clone()));
        }
        if hb
            .echo
            .is_some_and(|e| e.sent_ms > now_ms.saturating_add(PLAUSIBLE_CLOCK_MS))
        {
            return Err(Refusal::EchoFromTheFuture);
        }
        if hb.sent_ms.abs_diff(now_ms) > PLAUSIBLE_CLOCK_MS
            || hb.hlc.wall_ms.abs_diff(now_ms) > PLAUSIBLE_CLOCK_MS
        {
            return Err(Refusal::ImplausibleClock);
        }
        if hb
            .frontier
            .get(&self.me)
            .is_some_and(|f| f.applied > self.applied.get(&self.me))
        {
            return Err(Refusal::AppliedBeyondOurHead);
        }
        Ok(())
    }

    fn take_heartbeat(&mut self, hb: &Heartbeat, now_ms: u64, timing: bool) -> Result<(), Refusal> {
        self.check_heartbeat(hb, now_ms)?;
        self.observe_clock(now_ms);
        self.rebase();
        let Some(p) = self.peers.get_mut(&hb.from) else {
            return Err(Refusal::NotAPeer(hb.from.clone()));
        };
        p.last_heard_ms = Some(now_ms);
        // An echo of a send time we have not reached is no proof they hear us (our clock went
        // back since, across a restart say, or it is forged: taken as is, it would say "they
        // hear us" until that time comes); it is ignored, the rest of the heartbeat is not.
        let latest = self.max_clock_ms.get().max(now_ms);
        let echo = hb.echo.filter(|e| e.sent_ms <= latest);
        if let Some(echo) = echo {
            p.heard_us_at_ms = Some(
                p.heard_us_at_ms
                    .map_or(echo.sent_ms, |t| t.max(echo.sent_ms)),
            );
            // The number of the heartbeat echoed; of several with that send time (a clock
            // stepped back), the earliest.
            if let Some(n) = self.sent.borrow().get(&hb.from).and_then(|log| {
                log.recent
                    .iter()
                    .filter(|(t, _)| *t == echo.sent_ms)
                    .map(|(_, n)| *n)
                    .min()
            }) {
                p.echoed_count = p.echoed_count.max(n);
            }
        }
        if timing {
            p.last_hb = Some((hb.sent_ms, now_ms));
            // An echo that says it was held longer than the whole round trip (our clock stepped
            // back since we sent it, or theirs jumped while holding it) times nothing.
            let usable = |e: &Echo| e.sent_ms <= now_ms && e.held_ms <= now_ms - e.sent_ms;
            if let Some(echo) = echo.filter(usable) {
                let rtt = now_ms
                    .saturating_sub(echo.sent_ms)
                    .saturating_sub(echo.held_ms) as f64;
                p.rtt_ms = Some(rtt);
                let offset = hb.sent_ms as f64 + rtt / 2.0 - now_ms as f64;
                p.offset_ms = Some(take_sample(&mut p.samples, rtt, offset));
            } else if p.rtt_ms.is_none() {
                // No round trip yet: the one-way estimate (sent - received) understates a peer
                // that runs ahead by the one-way delay, so it never invents skew.
                p.offset_ms = Some(hb.sent_ms as f64 - now_ms as f64);
            }
        }
        p.applied = hb
            .frontier
            .iter()
            .map(|(o, f)| (o.clone(), f.applied))
            .collect();
        if let Some(f) = hb.frontier.get(&hb.from) {
            p.head_max = p.head_max.max(f.applied);
        }
        p.stable_age = hb.stable_age_ms.map(|a| (a, now_ms));
        p.removed = hb.removed.clone();
        p.hlc_max_ms = p.hlc_max_ms.max(hb.hlc.wall_ms);
        if p.first_head.is_none() {
            p.first_head = Some(hb.frontier.get(&hb.from).map_or(0, |f| f.applied));
        }
        // The latest claims replace the earlier ones, even when lower: a peer that restarted
        // knows less than it did, and only what it says now is true of it.
        p.claims = hb
            .frontier
            .iter()
            .filter_map(|(o, f)| f.caught_up_at_origin_ms.map(|t| (o.clone(), t)))
            .collect();
        for (origin, f) in &hb.frontier {
            if *origin == self.me {
                continue;
            }
            match f.caught_up_at_origin_ms {
                // The sender holds every write of `origin` stamped before `t` and has applied up
                // to `f.applied`: so every such write has a sequence number of at most that.
                // The time stays on the origin's clock, as received.
                Some(t) => self.claim(origin, f.applied, t),
                None => {
                    if let Some(prog) = self.progress.get_mut(origin) {
                        prog.known_head = prog.known_head.max(f.applied);
                    }
                }
            }
        }
        Ok(())
    }

    /// What this region should subscribe to now: per peer, the origins to ask it for. A
    /// subscription needs both directions (the request goes out, the data comes back), so only
    /// peers that hear us and that we hear are asked. Each such peer is asked for its own ops, and
    /// for the ops of every origin this region cannot exchange with directly (relay). Origins whose
    /// clock is skewed are left out; when the skew ends the set changes and a fresh subscription
    /// starts from the applied vector.
    pub fn wanted_subscriptions(&self, now_ms: u64) -> BTreeMap<RegionId, BTreeSet<RegionId>> {
        self.observe_clock(now_ms);
        // Removed regions' writes are asked of every peer until they settle: some member may hold
        // more of them than this region.
        let relayed: BTreeSet<RegionId> = self
            .peers
            .iter()
            .filter(|(_, p)| !self.bidirectional_at(p, now_ms))
            .map(|(r, _)| r.clone())
            .chain(self.unsettled())
            .collect();
        self.peers
            .iter()
            .filter(|(_, p)| self.bidirectional_at(p, now_ms))
            .filter_map(|(r, _)| {
                let mut origins = relayed.clone();
                origins.insert(r.clone());
                origins.retain(|o| !self.is_skewed(o));
                (!origins.is_empty()).then(|| (r.clone(), origins))
            })
            .collect()
    }

    /// Filters received entries down to those to apply now, in order.
    pub fn admit(&self, entries: Vec<OpEntry>) -> Admitted {
        self.admit_after(entries, &BTreeMap::new())
    }

    /// As [`Self::admit`], continuing per origin after `admitted` where that is beyond the
    /// applied vector: the entries already handed to the store but not yet committed
    /// (docs/design/pipelined-apply.md).
    pub fn admit_after(
        &self,
        entries: Vec<OpEntry>,
        admitted: &BTreeMap<RegionId, u64>,
    ) -> Admitted {
        let mut out = Admitted::default();
        let mut next: BTreeMap<RegionId, u64> = BTreeMap::new();
        for e in entries {
            if e.origin == self.me || !self.progress.contains_key(&e.origin) {
                out.duplicates += 1;
                continue;
            }
            if self.is_skewed(&e.origin) {
                out.held_back += 1;
                continue;
            }
            let expect = next.entry(e.origin.clone()).or_insert_with(|| {
                let floor = admitted.get(&e.origin).copied().unwrap_or(0);
                self.applied.get(&e.origin).max(floor) + 1
            });
            if e.seq < *expect {
                out.duplicates += 1;
            } else if e.seq > *expect {
                out.gaps += 1;
            } else {
                *expect += 1;
                out.apply.push(e);
            }
        }
        out
    }

    /// Records that `origin`'s entries up to `seq` are applied (and durable locally).
    pub fn on_applied(&mut self, origin: &RegionId, seq: u64) {
        self.advance(origin, seq);
    }

    fn advance(&mut self, origin: &RegionId, seq: u64) {
        if seq <= self.applied.get(origin) {
            return;
        }
        self.applied.raise(origin, seq);
        if let Some(prog) = self.progress.get_mut(origin) {
            prog.known_head = prog.known_head.max(seq);
            while let Some(&(h, t)) = prog.pending.front() {
                if h > seq {
                    break;
                }
                prog.caught_up_origin_ms = Some(prog.caught_up_origin_ms.map_or(t, |c| c.max(t)));
                prog.pending.pop_front();
            }
        }
    }

    /// Status of every peer.
    pub fn status(&self, now_ms: u64) -> Vec<PeerStatus> {
        self.observe_clock(now_ms);
        self.peers
            .iter()
            .map(|(r, p)| {
                let reachable = self.reachable_at(p, now_ms);
                let prog = self.progress.get(r);
                let applied = self.applied.get(r);
                let known_head = prog.map_or(applied, |g| g.known_head.max(applied));
                let hears_us = self.bidirectional_at(p, now_ms);
                let state = if !reachable {
                    LinkState::Unreachable
                } else if self.is_skewed(r) {
                    LinkState::ClockSkew
                } else if !hears_us {
                    LinkState::OneWay
                } else {
                    LinkState::Up
                };
                PeerStatus {
                    region: r.clone(),
                    state,
                    reachable,
                    hears_us,
                    last_heard_ms_ago: p
                        .last_heard_ms
                        .map(|t| now_ms.saturating_sub(self.local(t))),
                    rtt_ms: p.rtt_ms,
                    clock_offset_ms: p.offset_ms,
                    lag_seconds: self
                        .caught_up_local(r, now_ms)
                        .map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
                    lag_ops: known_head.saturating_sub(applied),
                    applied_seq: applied,
                    known_head_seq: known_head,
                }
            })
            .collect()
    }

    /// Per origin, the highest sequence number every region (this one included) has applied, as
    /// their latest heartbeats say: the causally stable prefix of each origin's log, which the
    /// operation log may drop (`docs/design/oplog-truncation.md`). Applied vectors are published
    /// from committed, fsynced state, so a peer cannot un-apply what it reported unless its disk
    /// is lost, and then it bootstraps by snapshot. Empty until every peer has been heard since
    /// this core started: a peer never heard from may need anything.
    pub fn stable_points(&self) -> BTreeMap<RegionId, u64> {
        if self.peers.values().any(|p| p.last_heard_ms.is_none()) {
            return BTreeMap::new();
        }
        self.applied
            .iter()
            .filter_map(|(origin, n)| {
                let least = self
                    .peers
                    .values()
                    .map(|p| p.applied.get(origin))
                    .fold(n, u64::min);
                (least > 0).then(|| (origin.clone(), least))
            })
            .collect()
    }

    /// The most of this region's own writes any peer's latest heartbeat says it has applied,
    /// and that peer. More than this region ever sealed means it lost writes it had
    /// acknowledged (its data directory was wiped or restored from an older copy).
    pub fn own_writes_held_by_peers(&self) -> Option<(RegionId, u64)> {
        self.peers
            .iter()
            .map(|(r, p)| (r, p.applied.get(&self.me)))
            .filter(|(_, n)| *n > 0)
            .max_by_key(|(_, n)| *n)
            .map(|(r, n)| (r.clone(), n))
    }

    /// The tombstone horizon: an lww tombstone whose timestamp's wall time is below it has been
    /// applied by every region, and may be collected. `None` until every region (this one
    /// included) has claimed stability for every origin.
    ///
    /// Per origin `O`, the horizon is the least of every region's claim about `O`; each claim is
    /// a time on `O`'s own clock (see [`Self::on_watermark`]), so it compares directly with the
    /// timestamps `O` gave its writes, with no clock-offset estimate or margin in between. The
    /// result is the least of those per-origin horizons: at most the horizon of whichever
    /// origin wrote a given tombstone.
    pub fn tombstone_horizon_ms(&self, now_ms: u64) -> Option<u64> {
        self.observe_clock(now_ms);
        let mut horizon: Option<u64> = None;
        for origin in self.progress.keys() {
            if self.gone.contains(origin) && self.settled(origin) {
                continue;
            }
            let mut h = self.caught_up(origin)?;
            for p in self.peers.values() {
                h = h.min(*p.claims.get(origin)?);
            }
            horizon = Some(horizon.map_or(h, |x| x.min(h)));
        }
        horizon
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::pncounter::PnCounter;
    use crate::op::KeyState;

    fn r(n: &str) -> RegionId {
        RegionId::new(n).unwrap()
    }

    fn core(me: &str) -> ReplCore {
        ReplCore::new(
            r(me),
            vec![r("a"), r("b"), r("c")],
            ReplConfig::new(1000, 500),
            VersionVector::new(),
        )
    }

    fn entry(origin: &str, seq: u64) -> OpEntry {
        OpEntry {
            origin: r(origin),
            seq,
            ts: Timestamp {
                wall_ms: seq,
                logical: 0,
            },
            keyspace: "k".into(),
            key: b"x".to_vec(),
            delta: KeyState::Counter(PnCounter::add(None, &r(origin), 1).unwrap()),
            epoch: 0,
        }
    }

    fn heard_since(a: &ReplCore, peer: &str, mark: &BTreeMap<RegionId, u64>) -> bool {
        a.session_peers(mark)
            .into_iter()
            .find(|p| p.region == r(peer))
            .is_some_and(|p| p.heard_since)
    }

    #[test]
    fn a_session_proof_needs_an_echo_of_a_heartbeat_built_after_the_mark() {
        let mut a = core("a");
        let mut b = core("b");
        // Heartbeats before the read arrives.
        let early = a.heartbeat(&r("b"), 5_000, Timestamp::default());
        b.on_heartbeat(&early, 5_010).unwrap();
        let mark = a.session_mark();
        // b answers with an echo of a heartbeat built before the mark: no proof.
        a.on_heartbeat(&b.heartbeat(&r("a"), 5_020, Timestamp::default()), 5_030)
            .unwrap();
        assert!(!heard_since(&a, "b", &mark));
        // a's clock steps back; a heartbeat built after the mark carries an EARLIER send time
        // than the one before it. Its echo is the proof, and the old one's never is.
        let late = a.heartbeat(&r("b"), 4_000, Timestamp::default());
        b.on_heartbeat(&early, 5_040).unwrap();
        a.on_heartbeat(&b.heartbeat(&r("a"), 5_050, Timestamp::default()), 4_010)
            .unwrap();
        assert!(
            !heard_since(&a, "b", &mark),
            "an echo of the early heartbeat"
        );
        b.on_heartbeat(&late, 5_060).unwrap();
        a.on_heartbeat(&b.heartbeat(&r("a"), 5_070, Timestamp::default()), 4_020)
            .unwrap();
        assert!(heard_since(&a, "b", &mark), "an echo of the late heartbeat");
        assert!(!heard_since(&a, "c", &mark), "c echoed nothing");
        // The head the proof stands on is the highest b ever reported.
        let b_head = a
            .session_peers(&mark)
            .into_iter()
            .find(|p| p.region == r("b"))
            .map(|p| p.head_max);
        assert_eq!(b_head, Some(0));
    }

    #[test]
    fn reachability_follows_heartbeats() {
        let mut a = core("a");
        let b = core("b");
        assert!(!a.is_reachable(&r("b"), 0));
        a.on_heartbeat(&b.heartbeat(&r("a"), 1000, Timestamp::default()), 1000)
            .expect("from a peer");
        assert!(a.is_reachable(&r("b"), 3000));
        assert!(!a.is_reachable(&r("b"), 4001));
        let unknown = core("z").heartbeat(&r("a"), 0, Timestamp::default());
        assert_eq!(
            a.on_heartbeat(&unknown, 1000),
            Err(Refusal::NotAPeer(r("z")))
        );
    }

    #[test]
    fn rtt_and_offset_from_echo() {
        let mut a = core("a");
        let mut b = core("b");
        // a sends at 1000 (a's clock); arrives at b at b-clock 1300 (b runs 250 ahead, 50 ms one way).
        let hb = a.heartbeat(&r("b"), 1000, Timestamp::default());
        b.on_heartbeat(&hb, 1300).unwrap();
        // b holds it 20 ms then replies at b-clock 1320; arrives at a at 1120.
        let reply = b.heartbeat(&r("a"), 1320, Timestamp::default());
        a.on_heartbeat(&reply, 1120).unwrap();
        let st = &a.status(1120)[0];
        assert_eq!(st.rtt_ms, Some(100.0));
        assert_eq!(st.clock_offset_ms, Some(250.0));
        assert_eq!(st.state, LinkState::Up);
    }

    #[test]
    fn skewed_origin_is_held_back_and_resumes() {
        let mut a = core("a");
        let mut b = core("b");
        let hb = a.heartbeat(&r("b"), 1000, Timestamp::default());
        b.on_heartbeat(&hb, 1800).unwrap();
        a.on_heartbeat(&b.heartbeat(&r("a"), 1800, Timestamp::default()), 1000)
            .unwrap();
        assert!(a.is_skewed(&r("b")));
        assert_eq!(a.status(1000)[0].state, LinkState::ClockSkew);
        let adm = a.admit(vec![entry("b", 1), entry("c", 1)]);
        assert_eq!(adm.held_back, 1);
        assert_eq!(adm.apply.len(), 1);
        // b's clock is fixed.
        let hb = a.heartbeat(&r("b"), 2000, Timestamp::default());
        b.on_heartbeat(&hb, 2000).unwrap();
        a.on_heartbeat(&b.heartbeat(&r("a"), 2000, Timestamp::default()), 2000)
            .unwrap();
        assert!(!a.is_skewed(&r("b")));
        assert_eq!(a.admit(vec![entry("b", 1)]).apply.len(), 1);
    }

    #[test]
    fn admit_applies_contiguous_entries_only() {
        let mut a = core("a");
        a.on_applied(&r("b"), 2);
        let adm = a.admit(vec![
            entry("b", 1),
            entry("b", 3),
            entry("b", 4),
            entry("b", 6),
            entry("a", 9),
        ]);
        assert_eq!(
            adm.apply.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(adm.duplicates, 2);
        assert_eq!(adm.gaps, 1);
    }

    #[test]
    fn relay_subscriptions_cover_unreachable_origins() {
        let mut a = core("a");
        let mut b = core("b");
        a.on_heartbeat(&b.heartbeat(&r("a"), 0, Timestamp::default()), 0)
            .unwrap();
        assert!(
            a.wanted_subscriptions(0).is_empty(),
            "b has not shown it hears a"
        );
        assert_eq!(a.status(0)[0].state, LinkState::OneWay);
        b.on_heartbeat(&a.heartbeat(&r("b"), 10, Timestamp::default()), 10)
            .unwrap();
        a.on_heartbeat(&b.heartbeat(&r("a"), 20, Timestamp::default()), 20)
            .unwrap();
        assert_eq!(a.status(20)[0].state, LinkState::Up);
        let w = a.wanted_subscriptions(100);
        assert_eq!(w.len(), 1);
        assert_eq!(
            w[&r("b")].iter().cloned().collect::<Vec<_>>(),
            vec![r("b"), r("c")]
        );
    }

    #[test]
    fn skewed_origins_are_not_subscribed() {
        let mut a = core("a");
        let mut b = core("b");
        b.on_heartbeat(&a.heartbeat(&r("b"), 1000, Timestamp::default()), 1800)
            .unwrap();
        a.on_heartbeat(&b.heartbeat(&r("a"), 1800, Timestamp::default()), 1000)
            .unwrap();
        assert!(a.is_skewed(&r("b")));
        let w = a.wanted_subscriptions(1000);
        assert_eq!(w[&r("b")].iter().cloned().collect::<Vec<_>>(), vec![r("c")]);
    }

    #[test]
    fn lag_rises_while_cut_and_falls_when_caught_up() {
        let mut a = core("a");
        let mut b = core("b");
        b.on_local_commit(5);
        b.on_watermark(5, 1000);
        a.on_heartbeat(&b.heartbeat(&r("a"), 1000, Timestamp::default()), 1000)
            .unwrap();
        let st = &a.status(1000)[0];
        assert_eq!(st.lag_ops, 5);
        assert_eq!(st.lag_seconds, None);
        a.on_applied(&r("b"), 5);
        assert_eq!(a.status(1000)[0].lag_seconds, Some(0.0));
        assert_eq!(a.status(1000)[0].lag_ops, 0);
        // Nothing heard for 10 s: lag keeps rising though nobody wrote.
        assert_eq!(a.status(11_000)[0].lag_seconds, Some(10.0));
    }

    /// Every region exchanges heartbeats with every other at `now`, each after taking its
    /// watermark (its head, stamped before `now`).
    fn gossip(cores: &mut [&mut ReplCore], now: u64) {
        for c in cores.iter_mut() {
            let head = c.applied().get(&c.me().clone());
            c.on_watermark(head, now);
        }
        for i in 0..cores.len() {
            for j in 0..cores.len() {
                if i != j {
                    let to = cores[j].me().clone();
                    let hb = cores[i].heartbeat(&to, now, Timestamp::default());
                    cores[j].on_heartbeat(&hb, now).unwrap();
                }
            }
        }
    }

    #[test]
    fn horizon_needs_every_region() {
        let mut a = core("a");
        let mut b = core("b");
        let mut c = core("c");
        assert_eq!(a.tombstone_horizon_ms(1000), None);
        // One round: every region learns the others' own claims, but not yet what the others
        // claim about third regions.
        gossip(&mut [&mut a, &mut b, &mut c], 10_000);
        assert_eq!(a.tombstone_horizon_ms(10_000), None);
        gossip(&mut [&mut a, &mut b, &mut c], 11_000);
        // The horizon is what every region claims for every origin, with no margin: the claims
        // are times on each origin's own clock.
        assert_eq!(a.tombstone_horizon_ms(11_000), Some(10_000));
        gossip(&mut [&mut a, &mut b, &mut c], 12_000);
        assert_eq!(a.tombstone_horizon_ms(12_000), Some(11_000));
    }

    #[test]
    fn an_added_region_holds_truncation_and_the_horizon_back_and_is_admitted_only_by_everyone() {
        let mut a = core("a");
        let mut b = core("b");
        let mut c = core("c");
        a.on_local_commit(3);
        b.on_applied(&r("a"), 3);
        c.on_applied(&r("a"), 3);
        gossip(&mut [&mut a, &mut b, &mut c], 1_000);
        gossip(&mut [&mut a, &mut b, &mut c], 2_000);
        assert_eq!(a.tombstone_horizon_ms(2_000), Some(1_000));
        assert_eq!(a.stable_points().get(&r("a")), Some(&3));
        // d joins: its own core knows everyone; a adds it (a reload), b and c not yet.
        let mut d = ReplCore::new(
            r("d"),
            vec![r("a"), r("b"), r("c"), r("d")],
            ReplConfig::new(1000, 500),
            VersionVector::new(),
        );
        assert!(a.add_peer(r("d")));
        assert!(!a.add_peer(r("d")), "added twice");
        assert!(!a.add_peer(r("a")), "itself");
        // a never heard d: it truncates nothing and collects nothing.
        assert!(a.stable_points().is_empty());
        assert_eq!(a.tombstone_horizon_ms(2_000), None);
        assert_eq!(d.admission(), Err(vec![r("a"), r("b"), r("c")]));
        // a and d exchange heartbeats; b and c report d in nothing yet.
        d.on_heartbeat(&a.heartbeat(&r("d"), 3_000, ts(3_000)), 3_000)
            .unwrap();
        a.on_heartbeat(&d.heartbeat(&r("a"), 3_000, ts(3_000)), 3_000)
            .unwrap();
        // b's heartbeats still say nothing of d: the horizon at a waits for claims about d.
        gossip(&mut [&mut a, &mut b, &mut c], 4_000);
        assert_eq!(a.tombstone_horizon_ms(4_000), None);
        // d has applied nothing of a: a keeps a's log, and d is not admitted while it is behind
        // a's head as of a's first heartbeat to it.
        assert!(!a.stable_points().contains_key(&r("a")));
        assert_eq!(d.admission(), Err(vec![r("a"), r("b"), r("c")]));
        d.on_applied(&r("a"), 3);
        assert_eq!(d.admission(), Err(vec![r("b"), r("c")]));
        // b and c add d (reloads); everyone gossips. b's clock reads ahead: d's floor takes it.
        assert!(b.add_peer(r("d")));
        assert!(c.add_peer(r("d")));
        for now in [5_000, 6_000] {
            let mut all = [&mut a, &mut b, &mut c, &mut d];
            gossip(&mut all, now);
        }
        let hb = b.heartbeat(&r("d"), 6_100, ts(9_000));
        d.on_heartbeat(&hb, 6_100).unwrap();
        let floor = d.admission().expect("every region heard");
        assert_eq!(floor, 9_000);
        assert_eq!(a.stable_points().get(&r("a")), Some(&3));
        assert!(a.tombstone_horizon_ms(6_000).is_some());
    }

    /// A removed region stops holding truncation back at once, but the tombstone horizon only
    /// once its writes are settled: every member announced its removal (in effect) and holds
    /// the same number of its writes.
    #[test]
    fn a_removed_region_frees_truncation_at_once_and_the_horizon_once_settled() {
        let mut a = core("a");
        let mut b = core("b");
        let mut c = core("c");
        c.on_local_commit(3);
        a.on_applied(&r("c"), 3);
        b.on_applied(&r("c"), 3);
        a.on_local_commit(2);
        b.on_applied(&r("a"), 2);
        gossip(&mut [&mut a, &mut b, &mut c], 1_000);
        // c's fourth write reaches b only, then c is lost.
        c.on_local_commit(4);
        c.on_watermark(4, 1_500);
        b.on_applied(&r("c"), 4);
        b.on_heartbeat(&c.heartbeat(&r("b"), 1_500, ts(1_500)), 1_500)
            .unwrap();
        // c is down for good: its last report holds a's log and the horizon back.
        gossip(&mut [&mut a, &mut b], 2_000);
        assert_eq!(
            a.stable_points().get(&r("a")),
            None,
            "c never applied a's writes"
        );
        // a removes c (its reload); the store makes it effective.
        assert!(a.remove_peer(&r("c")));
        assert!(!a.remove_peer(&r("c")), "removed twice");
        assert_eq!(
            a.on_heartbeat(&c.heartbeat(&r("a"), 2_100, ts(2_100)), 2_100),
            Err(Refusal::Removed(r("c")))
        );
        a.set_effective_removals(&BTreeSet::from([r("c")]));
        gossip(&mut [&mut a, &mut b], 3_000);
        // Truncation no longer waits for c; c's own writes are still an origin (least of a, b).
        assert_eq!(a.stable_points().get(&r("a")), Some(&2));
        assert_eq!(a.stable_points().get(&r("c")), Some(&3));
        // b has not removed c: c's writes are not settled, and a asks b for them.
        assert!(!a.settled(&r("c")));
        assert!(a.wanted_subscriptions(3_000)[&r("b")].contains(&r("c")));
        {
            // Holding as many of c's writes as b is not enough while b may still take more.
            let (mut a3, mut b3) = (a.clone(), b.clone());
            a3.on_applied(&r("c"), 4);
            gossip(&mut [&mut a3, &mut b3], 3_500);
            assert!(!a3.settled(&r("c")), "b has not removed c");
        }
        let before = a.tombstone_horizon_ms(3_000);
        assert!(
            before.is_some_and(|h| h <= 1_000),
            "held at c's claim: {before:?}"
        );
        // b removes c too; a still holds fewer of c's writes than b.
        assert!(b.remove_peer(&r("c")));
        b.set_effective_removals(&BTreeSet::from([r("c")]));
        gossip(&mut [&mut a, &mut b], 4_000);
        assert!(!a.settled(&r("c")), "a holds 3 of c's writes, b 4");
        assert_eq!(a.removed_status()[0].waiting_for, vec![r("b")]);
        a.on_applied(&r("c"), 4);
        gossip(&mut [&mut a, &mut b], 5_000);
        assert!(a.settled(&r("c")) && b.settled(&r("c")));
        assert!(!a.wanted_subscriptions(5_000)[&r("b")].contains(&r("c")));
        assert_eq!(a.tombstone_horizon_ms(5_000), Some(5_000));
        // A region removed by a but not by b holds c's settlement back (b might take writes
        // of c relayed by it).
        let mut a2 = a.clone();
        a2.remove_peer(&r("b"));
        a2.set_effective_removals(&BTreeSet::from([r("b"), r("c")]));
        let mut d = ReplCore::new(
            r("d"),
            vec![r("a"), r("d")],
            ReplConfig::new(1000, 500),
            VersionVector::new(),
        );
        a2.add_peer(r("d"));
        d.set_effective_removals(&BTreeSet::from([r("c")]));
        d.on_applied(&r("c"), 4);
        d.on_applied(&r("b"), b.applied().get(&r("b")));
        a2.on_heartbeat(&d.heartbeat(&r("a"), 6_000, ts(6_000)), 6_000)
            .unwrap();
        assert!(!a2.settled(&r("c")), "d has not removed b");
    }

    fn ts(wall_ms: u64) -> Timestamp {
        Timestamp {
            wall_ms,
            logical: 0,
        }
    }

    #[test]
    fn horizon_waits_for_a_region_that_has_not_applied() {
        let mut a = core("a");
        let mut b = core("b");
        let mut c = core("c");
        gossip(&mut [&mut a, &mut b, &mut c], 1_000);
        gossip(&mut [&mut a, &mut b, &mut c], 2_000);
        assert_eq!(a.tombstone_horizon_ms(2_000), Some(1_000));
        // a writes (a delete, say) stamped 2_500; b applies it, c does not.
        a.on_local_commit(1);
        b.on_applied(&r("a"), 1);
        for now in [3_000, 4_000, 5_000] {
            gossip(&mut [&mut a, &mut b, &mut c], now);
            let h = a.tombstone_horizon_ms(now).expect("every region reported");
            assert!(h <= 2_500, "horizon {h} passed a write c has not applied");
        }
        c.on_applied(&r("a"), 1);
        gossip(&mut [&mut a, &mut b, &mut c], 6_000);
        gossip(&mut [&mut a, &mut b, &mut c], 7_000);
        assert_eq!(a.tombstone_horizon_ms(7_000), Some(6_000));
    }

    #[test]
    fn forged_or_garbled_heartbeats_are_refused_and_change_nothing() {
        let mut a = core("a");
        let mut b = core("b");
        b.on_heartbeat(&a.heartbeat(&r("b"), 1_000, Timestamp::default()), 1_000)
            .unwrap();
        let good = b.heartbeat(&r("a"), 1_010, Timestamp::default());
        a.on_heartbeat(&good, 1_020).unwrap();
        assert_eq!(a.status(1_020)[0].state, LinkState::Up);
        let before = format!("{a:?}");
        // An echo of a send time we never reached: it used to push "heard us at" to the end of
        // time, so the link never showed one-way again.
        let mut forged = good.clone();
        forged.echo = Some(Echo {
            sent_ms: u64::MAX,
            held_ms: 0,
        });
        assert_eq!(
            a.on_heartbeat(&forged, 1_030),
            Err(Refusal::EchoFromTheFuture)
        );
        // A region that is not in the cluster (yet: a peer that reloaded a config adding it
        // reports it): ignored, the rest is taken in.
        let mut forged = good.clone();
        forged.frontier.insert(
            r("zz"),
            OriginFrontier {
                applied: 9,
                caught_up_at_origin_ms: Some(u64::MAX),
            },
        );
        let mut probe = a.clone();
        assert_eq!(probe.on_heartbeat(&forged, 1_030), Ok(()));
        assert!(probe.peers().all(|p| p.as_str() != "zz"));
        assert_eq!(probe.applied().get(&r("zz")), 0);
        assert!(!probe.stable_points().contains_key(&r("zz")));
        // Writes of ours we never committed.
        let mut forged = good.clone();
        forged.frontier.insert(
            r("a"),
            OriginFrontier {
                applied: 1_000_000,
                caught_up_at_origin_ms: None,
            },
        );
        assert_eq!(
            a.on_heartbeat(&forged, 1_030),
            Err(Refusal::AppliedBeyondOurHead)
        );
        // A clock years away.
        let mut forged = good.clone();
        forged.sent_ms = u64::MAX / 2;
        assert_eq!(
            a.on_heartbeat(&forged, 1_030),
            Err(Refusal::ImplausibleClock)
        );
        assert_eq!(
            format!("{a:?}"),
            before,
            "a refused heartbeat changed the core"
        );
        // An echo merely ahead of our clock (ours may have gone back) is ignored, not believed.
        let mut ahead = good.clone();
        ahead.echo = Some(Echo {
            sent_ms: 61_000,
            held_ms: 0,
        });
        a.on_heartbeat(&ahead, 1_040).unwrap();
        // One-way detection still works: b stops hearing a, and a says so after dead_after.
        let hb = b.heartbeat(&r("a"), 4_500, Timestamp::default());
        a.on_heartbeat(&hb, 4_510).unwrap();
        assert_eq!(a.status(4_510)[0].state, LinkState::OneWay);
    }

    #[test]
    fn a_queued_heartbeat_does_not_move_the_offset_but_a_clock_step_does() {
        let mut samples = VecDeque::new();
        // Two clocks 40 ms apart, 10 ms round trips.
        assert_eq!(take_sample(&mut samples, 10.0, 40.0), 40.0);
        assert_eq!(take_sample(&mut samples, 12.0, 41.0), 40.0);
        // A heartbeat that queued 700 ms one way: its offset reads 390 ms, its round trip 710.
        assert_eq!(
            take_sample(&mut samples, 710.0, 390.0),
            40.0,
            "queueing read as skew"
        );
        // The peer's clock steps 1 s ahead: samples with small round trips say 1_040, which no
        // earlier sample allows: the estimate follows at once.
        assert_eq!(take_sample(&mut samples, 11.0, 1_040.0), 1_040.0);
        assert_eq!(take_sample(&mut samples, 10.0, 1_041.0), 1_041.0);
        // The window keeps the latest samples only.
        for _ in 0..OFFSET_SAMPLES {
            take_sample(&mut samples, 30.0, 1_045.0);
        }
        assert_eq!(samples.len(), OFFSET_SAMPLES);
        assert_eq!(take_sample(&mut samples, 30.0, 1_045.0), 1_045.0);
    }

    /// Regression (simulation seed 139842 and 16 others): a caught-up time was kept on the
    /// local clock and converted to the origin's clock with the offset estimated at sending
    /// time. When the origin's clock stepped forward after the region had caught up, the old
    /// local time was read with the new offset: the region claimed to hold writes the origin
    /// stamped after it had caught up, and a third region's horizon passed an unapplied delete.
    #[test]
    fn a_clock_step_at_the_origin_does_not_move_old_claims() {
        let mut a = core("a");
        let mut b = core("b");
        // b applies a's writes up to 5, which a claims as of 1_000 on its clock.
        a.on_local_commit(5);
        a.on_watermark(5, 1_000);
        b.on_applied(&r("a"), 5);
        b.on_heartbeat(&a.heartbeat(&r("b"), 1_000, Timestamp::default()), 1_000)
            .unwrap();
        // a writes seq 6 at 1_100, then its clock steps 1 s ahead: b now estimates its offset
        // at +1_000 ms.
        a.on_local_commit(6);
        a.on_watermark(6, 2_200);
        b.on_heartbeat(&a.heartbeat(&r("b"), 2_200, Timestamp::default()), 1_200)
            .unwrap();
        assert_eq!(b.status(1_200)[0].clock_offset_ms, Some(1_000.0));
        // What b tells c about a must still be "caught up as of 1_000 on a's clock", below
        // seq 6's stamp: b has not applied it.
        let hb = b.heartbeat(&r("c"), 1_300, Timestamp::default());
        let claim = hb.frontier[&r("a")];
        assert_eq!(claim.applied, 5);
        assert_eq!(claim.caught_up_at_origin_ms, Some(1_000));
    }
}
