//! The harness: regions, the simulated network, the event queue and the phases of a run. Its
//! modules: `options` (run options, seed plans, counters, outcome and failure), `repl` (the
//! replication executor), `client` (client writes and the oracle, the random workload), `session`
//! (session clients: tokens, the read gate's check, invariant 10), `chaos` (faults) and `control`
//! (fenced runs).
//!
//! Replication runs the production driver (`atoll_core::driver`, the code the region server
//! runs; `docs/design/replication-driver.md`); this harness only carries its commands out:
//!
//! - **driver tick** (whenever a region's driver has a timer due: heartbeats every
//!   `heartbeat_interval_ms`, subscription reconciliation, silence timeouts, maintenance, skew
//!   watch): its `SendHeartbeat` commands become one-way messages; `Subscribe` sends the request
//!   to the peer, which serves it with a production `ServedStream` (operation-log reads, heartbeat
//!   frames), its frames travelling back FIFO with latency and jitter, at most
//!   [`STREAM_WINDOW`] in flight (the server's channel bound; a slot frees when the frame is
//!   delivered and the return path is up, so a one-way cut stalls the stream as it stalls TCP).
//!   A frame lost to a cut link breaks the stream (a reset connection); the subscriber's driver
//!   notices the silence and resubscribes. Every frame goes to the subscriber's driver; the batches it admits are applied
//!   with `store.apply_remote` and the outcome reported back, as the server does.
//! - **maintenance** (the driver's `Maintain` command): `store.maintain(horizon)`, each collected
//!   tombstone checked against invariant 5.
//! - **client write**: a random region, keyspace and key from a small key space (so that writes
//!   conflict), through `store.write` (blocking: acknowledged when it returns).
//! - **session client** ([`SimOptions::session_clients`]): a client with a session token writes
//!   an lww key or reads one at a random region, through the token check the server's read gate
//!   runs; a read the region has not caught up with waits, then is served or refused.
//! - **faults**: partition a pair both ways, cut one direction, isolate a region, crash a region
//!   (its store is dropped and its backend takes a power cut: what was committed since the last
//!   durable commit survives only as a random prefix) and restart it later, run a region's
//!   clock ahead beyond `max_clock_offset_ms` and bring it back.
//!
//! Every region reads its own [`ManualClock`]: the virtual time plus a small fixed offset
//! (within the bound) plus the skew of a clock-skew fault.
//!
//! **Fenced runs** ([`SimOptions::fencing`], [`plan_for_seed`]) add, in `control.rs`: each
//! region's fencing loop (its real `Fence`, on a monotonic clock of its own that drifts within
//! the bound), the modelled control group ([`crate::fencing`] describes the model), the store's
//! write gate, random switchovers and promotions, a witness node when configured (faults can hit
//! it too), client writes sent mostly to the believed primary, and after every event a sample of
//! every region's permit for the fencing checkers. Runs without fencing draw the same random
//! numbers and process the same events as unfenced runs always did.

use crate::check::{self, CursorAt, Invariant, RegionView, Violation};
use crate::fencing::{self, FencingOptions, FencingReport};
use crate::model::{
    self, CARTS, CounterWrite, History, LwwWrite, MvrWrite, SESSIONS, SetWrite, WriteOp,
};
use crate::net::{Network, SimRng};
use crate::trace::{Trace, hash_bytes, kind};
use atoll_core::causal::{CausalContext, Dot, VersionVector};
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::driver::{
    ApplyReport, Command as Cmd, DriverConfig, LocalView, Notice, Now, ReplDriver, ServedStream,
    StreamStep, SubId,
};
use atoll_core::fence::Topology;
use atoll_core::op::{Intent, KeyState, OpEntry};
use atoll_core::repl::{Frame, Heartbeat, PeerStatus, ReplConfig, Subscribe};
use atoll_core::{AtollError, RegionId};
use atoll_store::backend::{Backend, MemBackend};
use atoll_store::{Store, StoreOptions, WriteOutcome};
use rand::{RngExt, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::sync::Arc;

/// Names of the simulated regions (the first `n` are used).
pub const REGION_NAMES: [&str; 5] = ["us-east", "eu-west", "ap-south", "sa-east", "af-south"];

/// Most frames of one served stream in flight at once (the server's per-stream channel bound).
pub const STREAM_WINDOW: usize = 4;

/// Physical time (ms since the Unix epoch) at virtual time 0.
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// Runs one seed end to end: chaos, heal, converge, check every invariant.
pub fn run_seed(seed: u64, n: usize, opts: SimOptions) -> Result<Outcome, Failure> {
    let mut sim = Sim::new(seed, n, opts).map_err(|v| Failure {
        seed,
        regions: n,
        violation: v,
        trace_hash: 0,
        at_ms: 0,
    })?;
    let result = sim.run_chaos_then_converge();
    match result {
        Ok(converge_ms) => Ok(Outcome {
            seed,
            regions: n,
            stats: sim.stats.clone(),
            trace_hash: sim.trace.hash(),
            end_ms: sim.now,
            converge_ms,
            fencing: sim.fencing_report(),
        }),
        Err(v) => Err(sim.failure(v)),
    }
}

enum Msg {
    /// A one-way heartbeat.
    Heartbeat(Heartbeat),
    /// The request of the sender's subscription `id`.
    Subscribe { id: SubId, request: Subscribe },
    /// A frame of the stream the sender serves for the receiver's subscription `id`.
    Frame { id: SubId, frame: Frame },
}

enum Event {
    Write,
    /// Session client `c`'s next operation.
    Session(usize),
    /// Session client `c`'s waiting read checks its token again.
    SessionRecheck(usize),
    Fault,
    EndChaos,
    EndWrites,
    /// Region `r`'s driver has a timer due at this time (stale if it rescheduled since).
    Tick {
        r: usize,
        at: u64,
    },
    /// The stream publisher `p` serves for `(r, id)` waited until this time.
    StreamWake {
        p: usize,
        r: usize,
        id: SubId,
        at: u64,
    },
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    Heal {
        from: usize,
        to: usize,
    },
    Restart(usize),
    Unskew(usize),
    /// Fenced runs: region `r`'s fencing loop (apply, tick, switchover progress).
    FenceTick(usize),
    /// A proposal reaches the control group.
    Propose(usize),
    /// The answer to proposal `id` reaches its proposer (sent by member `via`).
    Answer {
        id: usize,
        answer: atoll_core::fence::Answer,
        via: usize,
    },
    /// Proposal `id`'s proposer gives up waiting (the control group's propose timeout).
    ProposalTimeout(usize),
    /// Committed entries become visible to region `r`.
    ControlApply(usize),
    /// A replicated batch admitted by region `r`'s subscription `id` (from `from`) commits.
    Apply {
        r: usize,
        from: usize,
        id: SubId,
        incarnation: u64,
        entries: Vec<OpEntry>,
    },
    /// A random operator action (switchover, promotion).
    Operator,
    /// The region added to the running cluster starts ([`SimOptions::join`]).
    Join,
    /// Region `r` adds the joining region to its peers (its config reload).
    AddPeer(usize),
    /// Region `r` removes the removed region from its peers (its config reload,
    /// [`SimOptions::remove`]).
    RemovePeer(usize),
}

struct Scheduled {
    at: u64,
    ctr: u64,
    ev: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.ctr) == (other.at, other.ctr)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest event (then the first inserted)
    /// must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.ctr).cmp(&(self.at, self.ctr))
    }
}

struct Node {
    store: Store,
    driver: ReplDriver,
    /// When the next `Tick` event for the driver is scheduled.
    tick_at: Option<u64>,
}

/// A stream a region serves: for subscriber `r`'s subscription `id` (the key of
/// [`Sim::streams`] is `(publisher, r, id)`).
struct Served {
    st: ServedStream,
    /// Frames sent and not yet delivered.
    in_flight: usize,
    /// The time of the `StreamWake` it waits for, if it waits.
    wake_at: Option<u64>,
}

struct Region {
    id: RegionId,
    backend: Arc<MemBackend>,
    clock: Arc<ManualClock>,
    base_offset_ms: i64,
    skew_ms: i64,
    /// `None` while crashed.
    node: Option<Node>,
    /// The applied vector its backend holds after the crash's power cut (it does not change
    /// while down).
    cursor_at_crash: VersionVector,
    /// Replicated entries applied since the last (re)start.
    applied_since_start: u64,
    /// Bumped at every start: an apply issued by an earlier incarnation is lost with it.
    incarnation: u64,
    /// When the last apply issued by this region commits (applies commit in issue order).
    apply_free_at: u64,
    /// The highest reading its clock showed before its latest step back (a skew ending): while
    /// the clock reads less, it has stepped back and not caught up again.
    clock_high_ms: u64,
}

/// The region added to the running cluster ([`SimOptions::join`]).
struct Joiner {
    /// Its index (the last region).
    r: usize,
    /// Started (at the `Join` event).
    joined: bool,
    /// Its store says it was admitted (it takes writes).
    admitted: bool,
    /// Per region: whether it has added the joiner to its peers.
    knows: Vec<bool>,
    /// Its driver's heartbeat and maintenance phases, drawn with the others'.
    phases: (u64, u64),
}

/// The region removed from the running cluster ([`SimOptions::remove`]).
struct Removal {
    /// Its index (the last region).
    r: usize,
    /// Per region: whether it has removed it (a region down at its `RemovePeer` removes it when
    /// it starts again: its config no longer lists it).
    removed: Vec<bool>,
}

/// A simulated cluster.
pub struct Sim {
    seed: u64,
    opts: SimOptions,
    rng: SimRng,
    now: u64,
    queue: BinaryHeap<Scheduled>,
    ctr: u64,
    regions: Vec<Region>,
    ids: Vec<RegionId>,
    net: Network,
    /// Streams served, by (publisher, subscriber, subscription id).
    streams: BTreeMap<(usize, usize, SubId), Served>,
    history: History,
    violations: Vec<Violation>,
    trace: Trace,
    stats: Stats,
    /// Faults are being injected.
    chaos: bool,
    /// Random writes are being issued.
    writing: bool,
    write_counter: u64,
    /// Fenced runs: the modelled control group and each region's fencing.
    fen: Option<Box<control::Control>>,
    /// Session clients, by number.
    sessions: Vec<SessionClient>,
    /// The session clients' own random choices.
    session_rng: SimRng,
    /// The region added to the running cluster, if the run adds one.
    joiner: Option<Joiner>,
    /// The region removed from the running cluster, if the run removes one.
    removal: Option<Removal>,
}

/// Mixed into the seed of the session clients' RNG (any constant: a stream apart from the run's).
const SESSION_RNG_STREAM: u64 = 0x5e55_1011_c11e_0a75;

impl Sim {
    /// A cluster of `n` regions (3..=5), all up, links up, periodic ticks scheduled.
    pub fn new(seed: u64, n: usize, opts: SimOptions) -> Result<Sim, Violation> {
        let witness = opts.fencing.as_ref().is_some_and(|f| f.witness);
        let least = if witness { 2 } else { 3 };
        assert!(
            (least..=REGION_NAMES.len()).contains(&n),
            "3..=5 regions (2 with a witness)"
        );
        let mut rng = SimRng::seed_from_u64(seed);
        // The witness, if any, is one more node of the network (index n), with no store.
        let nodes = n + usize::from(witness);
        let net = Network::new(nodes, opts.latency_ms, opts.jitter_ms, &mut rng);
        let ids: Vec<RegionId> = REGION_NAMES[..n]
            .iter()
            .map(|s| RegionId::new(s).expect("valid region name"))
            .collect();
        let b = opts.base_offset_ms as i64;
        let regions = ids
            .iter()
            .map(|id| Region {
                id: id.clone(),
                backend: Arc::new(MemBackend::with_power_cuts()),
                clock: Arc::new(ManualClock::new(EPOCH_MS)),
                base_offset_ms: rng.random_range(-b..=b),
                skew_ms: 0,
                node: None,
                cursor_at_crash: VersionVector::new(),
                applied_since_start: 0,
                incarnation: 0,
                apply_free_at: 0,
                clock_high_ms: 0,
            })
            .collect();
        let trace = Trace::new(opts.trace);
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            ctr: 0,
            regions,
            ids,
            net,
            streams: BTreeMap::new(),
            history: History::default(),
            violations: Vec::new(),
            trace,
            stats: Stats::default(),
            chaos: false,
            writing: false,
            write_counter: 0,
            fen: None,
            sessions: Vec::new(),
            session_rng: SimRng::seed_from_u64(seed ^ SESSION_RNG_STREAM),
            joiner: None,
            removal: None,
            opts,
        };
        if sim.opts.join {
            let r = n - 1;
            let mut knows = vec![false; n];
            knows[r] = true;
            sim.joiner = Some(Joiner {
                r,
                joined: false,
                admitted: false,
                knows,
                phases: (0, 0),
            });
        }
        if sim.opts.remove && !sim.opts.join {
            sim.removal = Some(Removal {
                r: n - 1,
                removed: vec![false; n],
            });
        }
        sim.fencing_init();
        sim.set_clocks();
        for r in 0..n {
            // Spread the regions' heartbeat and maintenance phases.
            let hb = sim.rng.random_range(0..sim.opts.heartbeat_interval_ms);
            let mt = sim.rng.random_range(0..sim.opts.maintenance_interval_ms);
            if let Some(j) = sim.joiner.as_mut().filter(|j| j.r == r) {
                j.phases = (hb, mt);
                continue;
            }
            sim.start_region_with_phases(r, hb, mt)?;
        }
        if let Some(r) = sim.joiner.as_ref().map(|j| j.r) {
            let at = sim
                .rng
                .random_range(1_000..=(sim.opts.chaos_ms / 2).max(1_000));
            sim.schedule(at, Event::Join);
            // A freshly provisioned host whose clock runs behind the others', as far as the bound
            // allows (further, it would hold every peer's writes back as skewed, and they its):
            // its writes must still be stamped above every tombstone collected without it.
            let b = sim.opts.base_offset_ms as i64;
            let max = sim.opts.max_clock_offset_ms as i64;
            let lo = (max - b - 50).max(b);
            sim.regions[r].base_offset_ms = -sim.rng.random_range(b..=lo);
        }
        if let Some(r) = sim.removal.as_ref().map(|rm| rm.r) {
            // Each region reloads a config without it at a time of its own during the chaos.
            let last = sim.opts.chaos_ms.max(2_000);
            for q in 0..n {
                if q != r {
                    let at = sim.rng.random_range(1_000..=last);
                    sim.schedule(at, Event::RemovePeer(q));
                }
            }
        }
        sim.fencing_schedule();
        Ok(sim)
    }

    /// Whether region `r` is the joining region and has not started yet.
    pub(crate) fn not_joined(&self, r: usize) -> bool {
        self.joiner.as_ref().is_some_and(|j| j.r == r && !j.joined)
    }

    /// Whether region `r` is the joining region and is not admitted (takes no writes).
    pub(crate) fn joining(&self, r: usize) -> bool {
        self.joiner
            .as_ref()
            .is_some_and(|j| j.r == r && !j.admitted)
    }

    /// Whether region `at` has region `j` among its peers: the joining region only once `at`
    /// added it, the removed region only until `at` removed it (every other pair: yes).
    pub(crate) fn knows(&self, at: usize, j: usize) -> bool {
        if self
            .removal
            .as_ref()
            .is_some_and(|rm| rm.r == j && rm.removed[at])
        {
            return false;
        }
        match &self.joiner {
            Some(jn) if jn.r == j => jn.knows[at],
            _ => true,
        }
    }

    /// Whether region `q` is a member at the end of the run (every region but the removed one).
    pub(crate) fn member(&self, q: usize) -> bool {
        self.removal.as_ref().is_none_or(|rm| rm.r != q)
    }

    /// The removed region's index and id, if the run removes one.
    pub(crate) fn removed_region(&self) -> Option<(usize, RegionId)> {
        self.removal
            .as_ref()
            .map(|rm| (rm.r, self.ids[rm.r].clone()))
    }

    /// Region `q` removes the removed region: its driver first (no heartbeat to it, its
    /// subscriptions end), the streams it serves to it end, then the store makes the removal
    /// effective, as the server's reload does.
    fn on_remove_peer(&mut self, q: usize) -> Result<(), Violation> {
        let Some((r, id)) = self.removed_region() else {
            return Ok(());
        };
        if let Some(rm) = self.removal.as_mut() {
            rm.removed[q] = true;
        }
        self.stats.removals += 1;
        self.trace.line(self.now, || {
            format!("{} removes {id} from the cluster", self.ids[q])
        });
        // A region that is down removes it when it starts (`start_region_with_phases`).
        if !self.is_up(q) {
            return Ok(());
        }
        let gone = id.clone();
        self.drive(q, move |d, _, _| {
            d.remove_peer(&gone);
            Vec::new()
        })?;
        self.streams.retain(|(p, s, _), _| !(*p == q && *s == r));
        self.make_removal_effective(q)
    }

    /// Region `q`'s store makes the removal effective (idempotent), and its core learns it.
    pub(crate) fn make_removal_effective(&mut self, q: usize) -> Result<(), Violation> {
        let Some((_, id)) = self.removed_region() else {
            return Ok(());
        };
        let at = self.local_ms(q);
        if let Some(node) = self.regions[q].node.as_ref() {
            node.store
                .remove_region(&id, at)
                .map_err(|e| Violation::new(Invariant::Harness, format!("cannot remove: {e}")))?;
        }
        self.sync_core(q);
        Ok(())
    }

    /// The peers region `r`'s driver starts with: everyone, but the joining region only once
    /// `r` has added it.
    pub(crate) fn peers_of(&self, r: usize) -> Vec<RegionId> {
        (0..self.ids.len())
            .filter(|&q| self.knows(r, q))
            .map(|q| self.ids[q].clone())
            .collect()
    }

    /// The regions every region shares split budgets with: the voters (an added region, and the
    /// region a run removes, are replicas and get no share, as `atoll-config` divides them among
    /// the voters).
    pub(crate) fn voters(&self) -> Vec<RegionId> {
        (0..self.ids.len())
            .filter(|&q| self.joiner.as_ref().is_none_or(|j| j.r != q))
            .filter(|&q| self.member(q))
            .map(|q| self.ids[q].clone())
            .collect()
    }

    fn on_join(&mut self) -> Result<(), Violation> {
        let Some((r, (hb, mt))) = self.joiner.as_ref().map(|j| (j.r, j.phases)) else {
            return Ok(());
        };
        self.set_clocks();
        if let Some(j) = self.joiner.as_mut() {
            j.joined = true;
        }
        self.stats.joins += 1;
        self.trace.ev(&[kind::RESTART, self.now, r as u64, 1]);
        self.trace
            .line(self.now, || format!("{} joins the cluster", self.ids[r]));
        self.start_region_with_phases(r, hb, mt)?;
        // The others reload their configs one by one.
        for q in 0..self.ids.len() {
            if q != r {
                let at = self.rng.random_range(0..=4_000);
                self.schedule(at, Event::AddPeer(q));
            }
        }
        Ok(())
    }

    fn on_add_peer(&mut self, q: usize) -> Result<(), Violation> {
        let Some(r) = self.joiner.as_ref().map(|j| j.r) else {
            return Ok(());
        };
        if let Some(j) = self.joiner.as_mut() {
            j.knows[q] = true;
        }
        let id = self.ids[r].clone();
        self.trace.line(self.now, || {
            format!("{} adds {id} to its peers", self.ids[q])
        });
        // A region that is down reads the new config when it starts.
        self.drive(q, |d, _, _| {
            d.add_peer(id);
            Vec::new()
        })
    }

    /// The joining region is admitted once its driver says every peer heard it and it caught
    /// up (`ReplCore::admission`), with its clock raised to the floor, as the server does.
    fn check_admission(&mut self) -> Result<(), Violation> {
        let Some(r) = self
            .joiner
            .as_ref()
            .filter(|j| j.joined && !j.admitted)
            .map(|j| j.r)
        else {
            return Ok(());
        };
        let Some(node) = self.regions[r].node.as_ref() else {
            return Ok(());
        };
        let Ok(floor) = node.driver.core().admission() else {
            return Ok(());
        };
        node.store
            .mark_admitted(floor)
            .map_err(|e| Violation::new(Invariant::Harness, format!("cannot admit: {e}")))?;
        if let Some(j) = self.joiner.as_mut() {
            j.admitted = true;
        }
        self.stats.joiners_admitted += 1;
        self.trace.line(self.now, || {
            format!("{} is admitted (clock floor {floor})", self.ids[r])
        });
        Ok(())
    }

    // ----- accessors -----

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether there are no regions (never: `new` asserts at least three).
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Region `r`'s id.
    pub fn id(&self, r: usize) -> &RegionId {
        &self.ids[r]
    }

    /// Virtual time, ms.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Region `r`'s clock reading (virtual time, offset and skew).
    pub fn local_ms(&self, r: usize) -> u64 {
        let reg = &self.regions[r];
        let t = (EPOCH_MS + self.now) as i64 + reg.base_offset_ms + reg.skew_ms;
        t.max(0) as u64
    }

    /// Whether region `r` is running.
    pub fn is_up(&self, r: usize) -> bool {
        self.regions[r].node.is_some()
    }

    /// Region `r`'s applied vector (its cursor at crash time while it is down).
    pub fn applied(&self, r: usize) -> VersionVector {
        match &self.regions[r].node {
            Some(n) => n.store.applied(),
            None => self.regions[r].cursor_at_crash.clone(),
        }
    }

    /// Replicated entries region `r` applied since its last (re)start.
    pub fn applied_since_start(&self, r: usize) -> u64 {
        self.regions[r].applied_since_start
    }

    /// Region `r`'s view of its peers (`None` while crashed).
    pub fn peer_status(&self, r: usize) -> Option<Vec<PeerStatus>> {
        let local = self.local_ms(r);
        self.regions[r]
            .node
            .as_ref()
            .map(|n| n.driver.core().status(local))
    }

    /// The lease epoch region `r` stamped on its own write `seq` (`None` if down or unknown).
    pub fn epoch_of(&self, r: usize, seq: u64) -> Option<u64> {
        let node = self.regions[r].node.as_ref()?;
        let entries = node.store.oplog(&self.ids[r], seq, 1).ok()?;
        entries.first().filter(|e| e.seq == seq).map(|e| e.epoch)
    }

    /// Region `r`'s state of a key (`None` if absent or the region is down).
    pub fn get(&self, r: usize, keyspace: &str, key: &str) -> Option<KeyState> {
        self.regions[r]
            .node
            .as_ref()
            .and_then(|n| n.store.get(keyspace, key.as_bytes()).ok().flatten())
    }

    /// What the run acknowledged so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Mutable history, for negative controls that falsify the model on purpose.
    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Hash of the event log so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// Violations found while running (invariants 5 and 6 are checked as events happen).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// A failure report for `v` at the current time.
    pub fn failure(&self, v: Violation) -> Failure {
        Failure {
            seed: self.seed,
            regions: self.regions.len(),
            violation: v,
            trace_hash: self.trace.hash(),
            at_ms: self.now,
        }
    }

    // ----- faults and control, usable by scripted scenarios -----

    // ----- running -----

    /// Processes every event up to virtual time `t`, then sets the time to `t`.
    pub fn run_until(&mut self, t: u64) -> Result<(), Violation> {
        while self.queue.peek().is_some_and(|s| s.at <= t) {
            let Some(s) = self.queue.pop() else { break };
            self.now = s.at;
            self.set_clocks();
            self.stats.events += 1;
            self.handle(s.ev)?;
            self.check_admission()?;
            if self.fen.is_some() {
                self.sample_fencing();
            }
        }
        self.now = self.now.max(t);
        self.set_clocks();
        Ok(())
    }

    /// Runs for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) -> Result<(), Violation> {
        self.run_until(self.now + ms)
    }

    /// Whether every region is up with the same applied vector (hence each has everything every
    /// other region wrote).
    ///
    /// With a region removed, the members only, and each of them must also consider the removed
    /// region's writes settled (`ReplCore::settled`): every member removed it and holds as many
    /// of its writes, so the tombstone horizon no longer waits for it.
    pub fn converged(&self) -> bool {
        let Some(first) = self.regions[0].node.as_ref().map(|n| n.store.applied()) else {
            return false;
        };
        let removed = self.removed_region();
        (1..self.regions.len())
            .filter(|&q| self.member(q))
            .all(|q| {
                self.regions[q]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.store.applied() == first)
            })
            && removed.is_none_or(|(_, id)| {
                (0..self.regions.len())
                    .filter(|&q| self.member(q))
                    .all(|q| {
                        self.regions[q]
                            .node
                            .as_ref()
                            .is_some_and(|n| n.driver.core().settled(&id))
                    })
            })
    }

    /// Runs until [`Sim::converged`], for at most `max_ms`; returns how long it took.
    pub fn run_until_converged(&mut self, max_ms: u64) -> Result<u64, Violation> {
        let start = self.now;
        loop {
            if let Some(v) = self.violations.first() {
                return Err(v.clone());
            }
            if self.converged() {
                return Ok(self.now - start);
            }
            if self.now >= start + max_ms {
                return Err(Violation::new(
                    Invariant::Convergence,
                    format!(
                        "not converged {max_ms} ms after healing:\n{}",
                        self.describe()
                    ),
                ));
            }
            self.run_for(100)?;
        }
    }

    /// The chaos phase (random writes and faults, if enabled), then heal everything, go on
    /// writing for `calm_ms`, run until converged, and check every invariant. Returns the time
    /// convergence took after the writes stopped.
    pub fn run_chaos_then_converge(&mut self) -> Result<u64, Violation> {
        self.chaos = true;
        self.writing = true;
        let end = self.now + self.opts.chaos_ms + self.opts.calm_ms;
        if self.opts.random_writes {
            let gap = self.write_gap();
            self.schedule(gap, Event::Write);
        }
        if self.opts.random_faults {
            let gap = self
                .rng
                .random_range(self.opts.fault_gap_ms.0..=self.opts.fault_gap_ms.1);
            self.schedule(gap, Event::Fault);
        }
        self.schedule(self.opts.chaos_ms, Event::EndChaos);
        self.schedule(self.opts.chaos_ms + self.opts.calm_ms, Event::EndWrites);
        self.start_session_clients();
        self.run_until(end)?;
        if self.chaos || self.writing {
            return Err(Violation::new(
                Invariant::Harness,
                "the chaos phase did not end",
            ));
        }
        let took = self.run_until_converged(self.opts.converge_deadline_ms)?;
        self.set_removed_writes_aside();
        self.check_all()?;
        Ok(took)
    }

    /// Reads every region (all must be up).
    pub fn views(&self) -> Result<Vec<RegionView>, Violation> {
        let harness = |e: AtollError| Violation::new(Invariant::Harness, e.to_string());
        let mut out = Vec::new();
        for (i, reg) in self.regions.iter().enumerate() {
            if !self.member(i) {
                continue;
            }
            let Some(node) = &reg.node else {
                return Err(Violation::new(
                    Invariant::Convergence,
                    format!("{} is down", reg.id),
                ));
            };
            let mut states = std::collections::BTreeMap::new();
            for (ks, key) in &self.history.keys {
                if let Some(s) = node.store.get(ks, key).map_err(harness)? {
                    states.insert((ks.clone(), key.clone()), s);
                }
            }
            out.push(RegionView {
                region: reg.id.clone(),
                applied: node.store.applied(),
                states,
                conflicts: node
                    .store
                    .conflicts(SESSIONS, usize::MAX)
                    .map_err(harness)?,
                now_ms: self.local_ms(i),
            });
        }
        Ok(out)
    }

    /// Every invariant, in order: those checked while running (5, 6), then convergence, lost
    /// writes, counters, sets, and the skewed writes.
    pub fn check_all(&self) -> Result<(), Violation> {
        if let Some(v) = self.violations.first() {
            return Err(v.clone());
        }
        let views = self.views()?;
        check::convergence(&views)?;
        check::no_lost_writes(&views, &self.history)?;
        check::counters(&views, &self.history)?;
        check::add_wins_sets(&views, &self.history)?;
        check::rate_limits(&views, &self.history)?;
        check::skewed_writes_converged(&views, &self.history)?;
        check::epochs_in_order(&self.history.stamps)?;
        Ok(())
    }

    /// The removed region's acknowledged writes that no member holds (all members hold the
    /// same number once converged) leave the history: the design sets them aside
    /// (`docs/design/region-removal.md`). Those the members hold stay, and must be intact.
    fn set_removed_writes_aside(&mut self) {
        let Some((_, id)) = self.removed_region() else {
            return;
        };
        let Some(held) = self.regions[0]
            .node
            .as_ref()
            .map(|n| n.store.applied().get(&id))
        else {
            return;
        };
        let n = self.history.set_writes_aside_after(&id, held);
        self.stats.removed_writes_set_aside += n as u64;
        self.trace.line(self.now, || {
            format!("{n} writes of {id} past {held} set aside (no member received them)")
        });
    }

    // ----- internals -----

    /// Records a violation found while running, with the virtual time.
    fn record(&mut self, mut v: Violation) {
        v.detail = format!("at virtual {} ms: {}", self.now, v.detail);
        self.trace.line(self.now, || format!("VIOLATION {v}"));
        // With tracing on, the state of every replication core at the violation: what each
        // region believed about its peers (claims, offsets, applied vectors).
        if self.trace.printing() {
            for (i, r) in self.regions.iter().enumerate() {
                if let Some(n) = &r.node {
                    eprintln!(
                        "core of {} at local {}: {:#?}",
                        self.ids[i],
                        self.local_ms(i),
                        n.driver.core()
                    );
                }
            }
        }
        self.violations.push(v);
    }

    fn schedule(&mut self, delay_ms: u64, ev: Event) {
        self.ctr += 1;
        self.queue.push(Scheduled {
            at: self.now + delay_ms,
            ctr: self.ctr,
            ev,
        });
    }

    fn set_clocks(&self) {
        for r in 0..self.regions.len() {
            self.regions[r].clock.set(self.local_ms(r));
        }
        self.set_mono_clocks();
    }

    fn write_gap(&mut self) -> u64 {
        self.rng
            .random_range(self.opts.write_gap_ms.0..=self.opts.write_gap_ms.1)
    }

    fn handle(&mut self, ev: Event) -> Result<(), Violation> {
        match ev {
            Event::Write => self.on_random_write(),
            Event::Session(c) => self.on_session_op(c),
            Event::SessionRecheck(c) => self.on_session_recheck(c),
            Event::Fault => self.on_fault()?,
            Event::EndChaos => {
                self.chaos = false;
                self.trace.ev(&[kind::END_CHAOS, self.now]);
                self.trace.line(self.now, || "end of chaos".into());
                self.heal_everything()?;
            }
            Event::EndWrites => {
                self.writing = false;
                self.trace.ev(&[kind::END_WRITES, self.now]);
                self.trace.line(self.now, || "end of writes".into());
            }
            Event::Tick { r, at } => self.on_tick(r, at)?,
            Event::StreamWake { p, r, id, at } => {
                let key = (p, r, id);
                if let Some(s) = self.streams.get_mut(&key)
                    && s.wake_at == Some(at)
                {
                    s.wake_at = None;
                    self.pump(key);
                }
            }
            Event::Deliver { from, to, msg } => self.on_deliver(from, to, msg)?,
            Event::Heal { from, to } => self.heal(from, to),
            Event::Restart(r) => self.restart(r)?,
            Event::Unskew(r) => self.set_skew(r, 0),
            Event::FenceTick(r) => self.on_fence_tick(r),
            Event::Propose(id) => self.on_propose(id),
            Event::Answer { id, answer, via } => self.on_control_answer(id, answer, via),
            Event::ProposalTimeout(id) => self.on_proposal_timeout(id),
            Event::ControlApply(r) => self.catch_up(r),
            Event::Apply {
                r,
                from,
                id,
                incarnation,
                entries,
            } => self.on_apply(r, from, id, incarnation, entries)?,
            Event::Operator => self.on_operator(),
            Event::Join => self.on_join()?,
            Event::AddPeer(q) => self.on_add_peer(q)?,
            Event::RemovePeer(q) => self.on_remove_peer(q)?,
        }
        Ok(())
    }

    /// A multi-line description of every region (for failures).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for r in 0..self.regions.len() {
            let reg = &self.regions[r];
            s.push_str(&format!(
                "  {}: {} applied {} offset {} skew {}\n",
                reg.id,
                if reg.node.is_some() { "up" } else { "DOWN" },
                self.applied(r),
                reg.base_offset_ms,
                reg.skew_ms
            ));
            if let Some(peers) = self.peer_status(r) {
                for p in peers {
                    s.push_str(&format!(
                        "    peer {}: {} rtt {:?} offset {:?} applied {} known head {}\n",
                        p.region,
                        p.state.as_str(),
                        p.rtt_ms,
                        p.clock_offset_ms,
                        p.applied_seq,
                        p.known_head_seq
                    ));
                }
            }
        }
        let nodes = self.net.nodes();
        let down: Vec<String> = (0..nodes)
            .flat_map(|a| (0..nodes).map(move |b| (a, b)))
            .filter(|&(a, b)| a != b && !self.net.is_up(a, b))
            .map(|(a, b)| format!("{}->{}", self.node_name(a), self.node_name(b)))
            .collect();
        s.push_str(&format!("  links down: {down:?}\n"));
        s.push_str(&self.describe_fencing());
        s
    }

    /// Region `i`'s name, or `witness` for the witness node.
    pub fn node_name(&self, i: usize) -> String {
        match self.ids.get(i) {
            Some(id) => id.to_string(),
            None => "witness".to_string(),
        }
    }
}

mod chaos;
mod options;
pub use options::*;
mod client;
mod control;
mod repl;
mod session;
pub use session::{
    SESSION_RECHECK_MS, SHARED_SESSION_KEY, SessionClient, SessionRead, session_key,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_insertion() {
        let mut h = BinaryHeap::new();
        for (at, ctr) in [(5, 1), (3, 2), (5, 0), (3, 3)] {
            h.push(Scheduled {
                at,
                ctr,
                ev: Event::Write,
            });
        }
        let order: Vec<(u64, u64)> =
            std::iter::from_fn(|| h.pop().map(|s| (s.at, s.ctr))).collect();
        assert_eq!(order, vec![(3, 2), (3, 3), (5, 0), (5, 1)]);
    }

    #[test]
    fn keyspaces_cover_every_policy() {
        let ids: Vec<RegionId> = REGION_NAMES[..3]
            .iter()
            .map(|n| RegionId::new(n).unwrap())
            .collect();
        let ks = model::keyspaces(&ids);
        let names: Vec<&str> = ks.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                SESSIONS,
                model::CARTS,
                model::RATELIMITS,
                model::FLAGS,
                model::QUOTA,
                model::QUOTA_SPLIT
            ]
        );
        // The split budget's shares add up to its limit.
        let shares = ks[5]
            .ratelimit
            .as_ref()
            .and_then(|r| r.shares.clone())
            .unwrap();
        assert_eq!(shares.values().sum::<u64>(), model::QUOTA_SPLIT_LIMIT);
    }
}
