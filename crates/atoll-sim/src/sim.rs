//! The harness: regions, the simulated network, the event queue, faults and phases.
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
//!   A frame lost to a cut link breaks the stream (a reset connection); the subscriber's driver notices the silence and
//!   resubscribes. Every frame goes to the subscriber's driver; the batches it admits are applied
//!   with `store.apply_remote` and the outcome reported back, as the server does.
//! - **maintenance** (the driver's `Maintain` command): `store.maintain(horizon)`, each collected
//!   tombstone checked against invariant 5.
//! - **client write**: a random region, keyspace and key from a small key space (so that writes
//!   conflict), through `store.write` (blocking: acknowledged when it returns).
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
//! numbers and process the same events as before fencing existed.

use crate::check::{self, CursorAt, Invariant, RegionView, Violation};
use crate::fencing::{self, FencingOptions, FencingReport};
use crate::model::{self, CounterWrite, History, LwwWrite, MvrWrite, SESSIONS, SetWrite, WriteOp};
use crate::net::{Network, SimRng};
use crate::trace::{Trace, hash_bytes};
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
use std::sync::atomic::Ordering as AtomicOrdering;

/// Names of the simulated regions (the first `n` are used).
pub const REGION_NAMES: [&str; 5] = ["us-east", "eu-west", "ap-south", "sa-east", "af-south"];

/// Most frames of one served stream in flight at once (the server's per-stream channel bound).
pub const STREAM_WINDOW: usize = 4;

/// Physical time (ms since the Unix epoch) at virtual time 0.
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// Tunables of a simulation run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Length of the chaos phase (random writes and faults), virtual ms.
    pub chaos_ms: u64,
    /// After the chaos phase heals everything, how long random writes go on (no faults): the
    /// cluster collects tombstones while writes keep coming.
    pub calm_ms: u64,
    /// After healing, how long convergence may take before the run fails.
    pub converge_deadline_ms: u64,
    /// Random client writes during the chaos phase.
    pub random_writes: bool,
    /// Gap between two client writes (uniform in the range).
    pub write_gap_ms: (u64, u64),
    /// Random faults during the chaos phase.
    pub random_faults: bool,
    /// Gap between two faults.
    pub fault_gap_ms: (u64, u64),
    /// How long a fault lasts.
    pub fault_duration_ms: (u64, u64),
    /// How far ahead a clock-skew fault sets a region's clock.
    pub skew_ms: (u64, u64),
    pub heartbeat_interval_ms: u64,
    pub maintenance_interval_ms: u64,
    pub max_clock_offset_ms: u64,
    /// Most entries per origin in one frame of a served stream.
    pub batch_max: usize,
    /// One-way latency of a pair (uniform in the range, fixed per pair).
    pub latency_ms: (u64, u64),
    /// Extra latency per message, uniform in `0..=jitter_ms`.
    pub jitter_ms: u64,
    /// Bound of each region's fixed clock offset (uniform in `-b..=b`), well within the bound.
    pub base_offset_ms: u64,
    /// Print every event (also on with `ATOLL_SIM_TRACE=1`).
    pub trace: bool,
    /// Split-brain fencing: the topology and its control group. `None`: active-active without
    /// quorum fencing, no control group (the behaviour from before fencing, event for event).
    pub fencing: Option<FencingOptions>,
}

impl Stats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            events,
            writes_acked,
            writes_rejected,
            messages_sent,
            messages_dropped,
            batches_sent,
            entries_applied,
            duplicates,
            gaps,
            held_back,
            store_refused_skewed,
            conflicts_recorded,
            tombstones_collected,
            maintenance_with_horizon,
            crashes,
            batches_lost_at_crash,
            partitions,
            one_way_cuts,
            isolations,
            skews,
            fence_proposals,
            fence_commits,
            fence_dropped,
            fence_answers_lost,
            promotions,
            manual_promotions,
            forced_promotions,
            exposure_reported_ops,
            exposure_missing_ops,
            switchovers,
            switchovers_abandoned,
            write_windows,
            writes_refused_fencing,
            late_refused,
            old_epoch_merged,
        } = other;
        self.events += events;
        self.writes_acked += writes_acked;
        self.writes_rejected += writes_rejected;
        self.messages_sent += messages_sent;
        self.messages_dropped += messages_dropped;
        self.batches_sent += batches_sent;
        self.entries_applied += entries_applied;
        self.duplicates += duplicates;
        self.gaps += gaps;
        self.held_back += held_back;
        self.store_refused_skewed += store_refused_skewed;
        self.conflicts_recorded += conflicts_recorded;
        self.tombstones_collected += tombstones_collected;
        self.maintenance_with_horizon += maintenance_with_horizon;
        self.crashes += crashes;
        self.batches_lost_at_crash += batches_lost_at_crash;
        self.partitions += partitions;
        self.one_way_cuts += one_way_cuts;
        self.isolations += isolations;
        self.skews += skews;
        self.fence_proposals += fence_proposals;
        self.fence_commits += fence_commits;
        self.fence_dropped += fence_dropped;
        self.fence_answers_lost += fence_answers_lost;
        self.promotions += promotions;
        self.manual_promotions += manual_promotions;
        self.forced_promotions += forced_promotions;
        self.exposure_reported_ops += exposure_reported_ops;
        self.exposure_missing_ops += exposure_missing_ops;
        self.switchovers += switchovers;
        self.switchovers_abandoned += switchovers_abandoned;
        self.write_windows += write_windows;
        self.writes_refused_fencing += writes_refused_fencing;
        self.late_refused += late_refused;
        self.old_epoch_merged += old_epoch_merged;
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            chaos_ms: 30_000,
            calm_ms: 8_000,
            converge_deadline_ms: 120_000,
            random_writes: true,
            write_gap_ms: (30, 170),
            random_faults: true,
            fault_gap_ms: (800, 3_500),
            fault_duration_ms: (1_000, 8_000),
            skew_ms: (700, 3_000),
            heartbeat_interval_ms: 1_000,
            maintenance_interval_ms: 5_000,
            max_clock_offset_ms: 500,
            batch_max: 64,
            latency_ms: (5, 80),
            jitter_ms: 20,
            base_offset_ms: 100,
            trace: std::env::var("ATOLL_SIM_TRACE").is_ok_and(|v| !v.is_empty() && v != "0"),
            fencing: None,
        }
    }
}

impl SimOptions {
    /// No random writes or faults: for scripted scenarios.
    pub fn scripted() -> Self {
        Self {
            random_writes: false,
            random_faults: false,
            ..Self::default()
        }
    }
}

/// Counters of what a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub writes_acked: u64,
    pub writes_rejected: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub batches_sent: u64,
    pub entries_applied: u64,
    pub duplicates: u64,
    pub gaps: u64,
    /// Entries the core held back because their origin's clock runs ahead.
    pub held_back: u64,
    /// Batches in which the store refused an origin's entries for clock skew.
    pub store_refused_skewed: u64,
    pub conflicts_recorded: u64,
    pub tombstones_collected: u64,
    pub maintenance_with_horizon: u64,
    pub crashes: u64,
    /// Committed batches that were not yet on stable storage when a crash (a power cut) came,
    /// and were lost (non-durable maintenance passes; a store that skipped an fsync it needs
    /// would lose writes here).
    pub batches_lost_at_crash: u64,
    pub partitions: u64,
    pub one_way_cuts: u64,
    pub isolations: u64,
    pub skews: u64,
    /// Fenced runs: commands proposed to the modelled control group, committed, dropped (the
    /// proposer or every relay was cut off from a majority), answers lost on the way back.
    pub fence_proposals: u64,
    pub fence_commits: u64,
    pub fence_dropped: u64,
    pub fence_answers_lost: u64,
    /// Promotions that committed (automatic and manual; not the initial grant, not
    /// switchovers); of them, `atoll promote`, and `atoll promote --accept-data-loss` with a
    /// non-zero exposure.
    pub promotions: u64,
    pub manual_promotions: u64,
    pub forced_promotions: u64,
    /// Over promotions: the exposure reported (ops), and the old holder's acknowledged writes
    /// the promoted region really lacked when it proposed.
    pub exposure_reported_ops: u64,
    pub exposure_missing_ops: u64,
    /// Switchovers whose transfer committed; switchovers given up (target not caught up).
    pub switchovers: u64,
    pub switchovers_abandoned: u64,
    /// Write windows opened (leased topologies).
    pub write_windows: u64,
    /// Client writes refused by the fencing gate (`ATOLL-NOT-PRIMARY`, `ATOLL-FENCED`).
    pub writes_refused_fencing: u64,
    /// Replicated writes refused as late writes of a superseded epoch.
    pub late_refused: u64,
    /// Replicated writes of an epoch the applying region already knew superseded, merged
    /// (stamped before the supersession: an old primary's writes arriving late).
    pub old_epoch_merged: u64,
}

/// A successful run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub regions: usize,
    pub stats: Stats,
    pub trace_hash: u64,
    /// Virtual time when the run ended.
    pub end_ms: u64,
    /// Virtual time from healing to convergence.
    pub converge_ms: u64,
    /// Fenced runs: the topology, the write windows, promotions.
    pub fencing: Option<FencingReport>,
}

/// A failed run: which seed, which invariant, and how to replay it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub regions: usize,
    pub violation: Violation,
    pub trace_hash: u64,
    pub at_ms: u64,
}

impl Failure {
    /// The command that replays this seed.
    pub fn replay_command(&self) -> String {
        format!(
            "ATOLL_SIM_SEED={} cargo test -p atoll-sim --test seeds -- --nocapture",
            self.seed
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({} regions), at virtual {} ms: {}\n  replay: {}\n  (ATOLL_SIM_TRACE=1 prints every event)",
            self.seed,
            self.regions,
            self.at_ms,
            self.violation,
            self.replay_command()
        )
    }
}

/// How many regions a seed runs with in the sweep: 3, 4, 5, 3, ...
pub fn regions_for_seed(seed: u64) -> usize {
    3 + (seed % 3) as usize
}

/// What a seed of the sweep runs: `seed % 3` picks 3, 4 or 5 regions ([`regions_for_seed`]),
/// `(seed / 3) % 3` the topology: a third active-active, a third active-standby, a third
/// active-passive. The other choices come from bits of a hash of the seed: half of the
/// active-active seeds run with quorum fencing (two keyspaces `read-only` on a minority), the
/// other half exactly as before fencing existed (no control group, the same events); among
/// fenced seeds, half of the 4-region ones add a witness (5 voters) and a quarter of the
/// 3-region ones run as two regions and a witness (the arbiter setup); the drift bound is
/// 1000 ppm or 1 %, the margin the default or the smallest the bound allows, each clock drifts
/// at the bound or within it, and the control group's propose timeout is the region server's
/// (`lease - margin`) or twice the lease.
pub fn plan_for_seed(seed: u64) -> (usize, SimOptions) {
    let mut n = regions_for_seed(seed);
    let bits = splitmix64(seed);
    let bit = |i: u32| (bits >> i) & 1 == 1;
    let topology = match (seed / 3) % 3 {
        0 if !bit(0) => return (n, SimOptions::default()),
        0 => Topology::ActiveActive { quorum: true },
        1 => Topology::ActiveStandby,
        _ => Topology::ActivePassive,
    };
    let mut f = FencingOptions::new(topology);
    if !topology.leased() {
        f.read_only_keyspaces = vec![model::SESSIONS.to_string(), model::RATELIMITS.to_string()];
    }
    match n {
        4 if bit(1) => f.witness = true,
        3 if bit(1) && bit(2) => {
            f.witness = true;
            n = 2;
        }
        _ => {}
    }
    if bit(3) {
        f.max_drift_ppm = 10_000;
    }
    if bit(4) {
        f.margin_ms = f
            .fence_config(region_id(0), vec![region_id(0)])
            .min_margin_ms();
    }
    if bit(5) {
        // Answers may come long after the fence stopped waiting for them.
        f.control_timeout_ms = Some(2 * f.lease_ms);
    }
    f.operator_gap_ms = match topology {
        Topology::ActivePassive => Some((2_000, 8_000)),
        Topology::ActiveStandby => Some((5_000, 15_000)),
        Topology::ActiveActive { .. } => None,
    };
    (
        n,
        SimOptions {
            fencing: Some(f),
            ..SimOptions::default()
        },
    )
}

/// SplitMix64: spreads a seed's bits, so the options it picks are independent of each other.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn region_id(i: usize) -> RegionId {
    RegionId::new(REGION_NAMES[i]).expect("valid region name")
}

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
    /// A random operator action (switchover, promotion).
    Operator,
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
}

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
            opts,
        };
        sim.fencing_init();
        sim.set_clocks();
        for r in 0..n {
            // Spread the regions' heartbeat and maintenance phases.
            let hb = sim.rng.random_range(0..sim.opts.heartbeat_interval_ms);
            let mt = sim.rng.random_range(0..sim.opts.maintenance_interval_ms);
            sim.start_region_with_phases(r, hb, mt)?;
        }
        sim.fencing_schedule();
        Ok(sim)
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

    /// Cuts `from → to`.
    pub fn cut(&mut self, from: usize, to: usize) {
        self.net.set_up(from, to, false);
        self.trace.ev(&[70, self.now, from as u64, to as u64]);
        self.trace.line(self.now, || {
            format!("cut {} -> {}", self.node_name(from), self.node_name(to))
        });
    }

    /// Cuts `a ↔ b` both ways.
    pub fn partition(&mut self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Brings `from → to` back up.
    pub fn heal(&mut self, from: usize, to: usize) {
        self.net.set_up(from, to, true);
        self.trace.ev(&[71, self.now, from as u64, to as u64]);
        self.trace.line(self.now, || {
            format!("heal {} -> {}", self.node_name(from), self.node_name(to))
        });
    }

    /// Crashes region `r`: its store and core are dropped, messages to it are lost, its events do
    /// nothing until it restarts on the same backend.
    pub fn crash(&mut self, r: usize) {
        self.crash_keeping(r, None);
    }

    /// Crashes region `r` with a power cut that loses everything not on stable storage.
    pub fn crash_losing_unsynced(&mut self, r: usize) {
        self.crash_keeping(r, Some(0));
    }

    /// A crash whose power cut keeps `keep` of the batches committed since the last durable
    /// commit (`None`: a random number of them).
    fn crash_keeping(&mut self, r: usize, keep: Option<usize>) {
        if let Some(node) = self.regions[r].node.take() {
            drop(node);
            // Its served streams die with it (their subscribers see silence).
            self.streams.retain(|&(p, _, _), _| p != r);
            // A power cut: the stable state survives, with a prefix of what was committed since
            // the last sync.
            let backend = self.regions[r].backend.clone();
            let keep =
                keep.unwrap_or_else(|| self.rng.random_range(0..=backend.unsynced_batches()));
            let lost = backend.power_cut(keep).unwrap_or(0);
            self.stats.batches_lost_at_crash += lost as u64;
            self.regions[r].cursor_at_crash =
                atoll_store::read_applied(&*backend, &self.regions[r].id).unwrap_or_default();
            self.stats.crashes += 1;
            self.fencing_on_crash(r);
            self.trace.ev(&[72, self.now, r as u64]);
            self.trace.line(self.now, || {
                format!(
                    "crash {} (cursor {})",
                    self.ids[r], self.regions[r].cursor_at_crash
                )
            });
        }
    }

    /// Restarts a crashed region on its backend (a no-op if it is up).
    pub fn restart(&mut self, r: usize) -> Result<(), Violation> {
        if r >= self.regions.len() {
            self.set_witness_up(true);
            return Ok(());
        }
        if self.regions[r].node.is_some() {
            return Ok(());
        }
        self.set_clocks();
        self.start_region(r)?;
        self.trace.ev(&[73, self.now, r as u64]);
        self.trace.line(self.now, || {
            format!("restart {} from cursor {}", self.ids[r], self.applied(r))
        });
        Ok(())
    }

    /// Sets region `r`'s clock skew (on top of its small fixed offset).
    pub fn set_skew(&mut self, r: usize, skew_ms: i64) {
        self.regions[r].skew_ms = skew_ms;
        self.set_clocks();
        self.trace.ev(&[74, self.now, r as u64, skew_ms as u64]);
        self.trace
            .line(self.now, || format!("skew {} by {skew_ms} ms", self.ids[r]));
    }

    /// Heals every link, brings every clock back and restarts every crashed region.
    pub fn heal_everything(&mut self) -> Result<(), Violation> {
        self.net.heal_all();
        self.trace.ev(&[75, self.now]);
        self.trace.line(self.now, || "heal everything".into());
        if self.fen.is_some() {
            self.set_witness_up(true);
        }
        for r in 0..self.regions.len() {
            if self.regions[r].skew_ms != 0 {
                self.set_skew(r, 0);
            }
            self.restart(r)?;
        }
        Ok(())
    }

    // ----- running -----

    /// Processes every event up to virtual time `t`, then sets the time to `t`.
    pub fn run_until(&mut self, t: u64) -> Result<(), Violation> {
        while self.queue.peek().is_some_and(|s| s.at <= t) {
            let Some(s) = self.queue.pop() else { break };
            self.now = s.at;
            self.set_clocks();
            self.stats.events += 1;
            self.handle(s.ev)?;
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
    pub fn converged(&self) -> bool {
        let Some(first) = self.regions[0].node.as_ref().map(|n| n.store.applied()) else {
            return false;
        };
        self.regions[1..]
            .iter()
            .all(|r| r.node.as_ref().is_some_and(|n| n.store.applied() == first))
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
        self.run_until(end)?;
        if self.chaos || self.writing {
            return Err(Violation::new(
                Invariant::Harness,
                "the chaos phase did not end",
            ));
        }
        let took = self.run_until_converged(self.opts.converge_deadline_ms)?;
        self.check_all()?;
        Ok(took)
    }

    /// Reads every region (all must be up).
    pub fn views(&self) -> Result<Vec<RegionView>, Violation> {
        let harness = |e: AtollError| Violation::new(Invariant::Harness, e.to_string());
        let mut out = Vec::new();
        for reg in &self.regions {
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
        check::skewed_writes_converged(&views, &self.history)?;
        check::epochs_in_order(&self.history.stamps)?;
        Ok(())
    }

    /// A client write at region `r`, recorded in the history if acknowledged.
    pub fn write(&mut self, r: usize, op: &WriteOp) -> Result<WriteOutcome, AtollError> {
        self.set_clocks();
        let now = self.now;
        let skewed = self.regions[r].skew_ms > self.opts.max_clock_offset_ms as i64;
        let me = self.ids[r].clone();
        let (ks, key) = op.target();
        self.history
            .keys
            .insert((ks.to_string(), key.as_bytes().to_vec()));
        let Some(node) = self.regions[r].node.as_mut() else {
            return Err(AtollError::ShuttingDown);
        };
        let pre = node.store.get(ks, key.as_bytes())?;
        let seen_vv = node.store.applied();
        let pre_mvr = match &pre {
            Some(KeyState::Mvr(m)) => Some(m.clone()),
            _ => None,
        };
        let read_ctx = || pre_mvr.as_ref().map(|m| m.ctx.clone()).unwrap_or_default();
        let (intent, client_ctx) = match op {
            WriteOp::LwwPut { value, .. } => (
                Intent::Put {
                    value: value.as_bytes().to_vec(),
                    context: None,
                },
                None,
            ),
            WriteOp::LwwDelete { .. } => (Intent::Delete { context: None }, None),
            WriteOp::MvrPut {
                value,
                with_context,
                ..
            } => {
                let ctx = with_context.then(read_ctx);
                (
                    Intent::Put {
                        value: value.as_bytes().to_vec(),
                        context: ctx.clone(),
                    },
                    ctx,
                )
            }
            WriteOp::MvrDelete { .. } => {
                let ctx = read_ctx();
                (
                    Intent::Delete {
                        context: Some(ctx.clone()),
                    },
                    Some(ctx),
                )
            }
            WriteOp::CounterAdd { delta, .. } => (Intent::CounterAdd { delta: *delta }, None),
            WriteOp::SetUpdate { add, remove, .. } => (
                Intent::SetUpdate {
                    add: add.clone(),
                    remove: remove.clone(),
                },
                None,
            ),
        };
        let res = node.store.write(ks, key.as_bytes(), intent);
        let out = match res {
            Ok(out) => out,
            Err(e) if fencing::is_fencing_refusal(&e) => {
                // Refused by the fencing gate at the stamping instant: not acknowledged.
                self.history.refused_fencing += 1;
                self.stats.writes_refused_fencing += 1;
                self.trace
                    .ev(&[10, now, r as u64, op.code(), hash_bytes(key.as_bytes()), 1]);
                self.trace.line(now, || {
                    format!("write at {me}: {op:?} refused by fencing: {e}")
                });
                return Err(e);
            }
            Err(e) => {
                self.history.rejected += 1;
                self.stats.writes_rejected += 1;
                self.trace
                    .ev(&[10, now, r as u64, op.code(), hash_bytes(key.as_bytes()), 0]);
                self.trace
                    .line(now, || format!("write at {me}: {op:?} refused: {e}"));
                return Err(e);
            }
        };
        // Fenced runs: the epoch the store stamped on the operation-log entry.
        let stamped = if self.fen.is_some() {
            Some(
                node.store
                    .oplog(&me, out.seq, 1)
                    .ok()
                    .and_then(|v| v.first().map(|e| e.epoch)),
            )
        } else {
            None
        };
        self.stats.writes_acked += 1;
        match stamped {
            Some(Some(epoch)) => self.fencing_on_ack(r, ks, out.seq, epoch),
            Some(None) => self.record(Violation::new(
                Invariant::Harness,
                format!(
                    "the acknowledged write {me}:{} is not in its oplog",
                    out.seq
                ),
            )),
            None => {}
        }
        if skewed {
            self.history.skewed_writes.push((me.clone(), out.seq));
        }
        let key_b = key.as_bytes().to_vec();
        match op {
            WriteOp::LwwPut { .. } | WriteOp::LwwDelete { .. } => {
                let value = match op {
                    WriteOp::LwwPut { value, .. } => Some(value.as_bytes().to_vec()),
                    _ => None,
                };
                self.history.lww.push(LwwWrite {
                    key: key_b,
                    origin: me.clone(),
                    seq: out.seq,
                    ts: out.ts,
                    value,
                    seen: seen_vv,
                    at_ms: now,
                });
            }
            WriteOp::MvrPut { .. } | WriteOp::MvrDelete { .. } => {
                let value = match op {
                    WriteOp::MvrPut { value, .. } => Some(value.as_bytes().to_vec()),
                    _ => None,
                };
                let dot = match &out.state {
                    KeyState::Mvr(m) => m
                        .siblings
                        .iter()
                        .find(|s| s.dot.region == me && s.ts == out.ts)
                        .map(|s| s.dot.clone()),
                    _ => None,
                };
                let Some(dot) = dot else {
                    self.record(Violation::new(
                        Invariant::Harness,
                        format!("mvr write {me}:{} left no sibling of its own", out.seq),
                    ));
                    return Ok(out);
                };
                // What the write supersedes: the client's context and the delete markers the
                // region held (see `atoll_core::op::prepare`).
                let mut seen: CausalContext = client_ctx.unwrap_or_default();
                for s in pre_mvr.iter().flat_map(|m| &m.siblings) {
                    if s.value.is_none() {
                        seen.insert(s.dot.clone());
                    }
                }
                self.history.mvr.push(MvrWrite {
                    key: key_b,
                    origin: me.clone(),
                    seq: out.seq,
                    dot,
                    value,
                    seen,
                });
            }
            WriteOp::CounterAdd { delta, .. } => self.history.counters.push(CounterWrite {
                key: key_b,
                origin: me.clone(),
                seq: out.seq,
                delta: *delta,
            }),
            WriteOp::SetUpdate { add, remove, .. } => {
                let pre_set = match &pre {
                    Some(KeyState::Set(s)) => Some(s),
                    _ => None,
                };
                let observed = remove
                    .iter()
                    .chain(add)
                    .map(|e| {
                        (
                            e.clone(),
                            pre_set
                                .map(|s| s.dots(e).cloned().collect::<Vec<Dot>>())
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                let mut added = Vec::new();
                if let KeyState::Set(s) = &out.state {
                    for e in add {
                        if let Some(d) = s.dots(e).filter(|d| d.region == me).max() {
                            added.push((e.clone(), d.clone()));
                        }
                    }
                }
                self.history.sets.push(SetWrite {
                    key: key_b,
                    origin: me.clone(),
                    seq: out.seq,
                    added,
                    observed,
                });
            }
        }
        self.trace.ev(&[
            10,
            now,
            r as u64,
            op.code(),
            hash_bytes(key.as_bytes()),
            out.seq,
            out.ts.wall_ms,
            u64::from(out.ts.logical),
        ]);
        self.trace.line(now, || {
            format!("write at {me}: {op:?} -> seq {} ts {}", out.seq, out.ts)
        });
        self.log_grew(r);
        Ok(out)
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

    fn start_region(&mut self, r: usize) -> Result<(), Violation> {
        self.start_region_with_phases(r, 0, 0)
    }

    /// Region `r`'s driver settings: the server's, with this run's intervals, batch size and
    /// the given first-heartbeat and first-maintenance delays.
    fn driver_config(&self, hb_phase: u64, maint_phase: u64) -> DriverConfig {
        let mut cfg = DriverConfig::new(
            "sim",
            ReplConfig::new(
                self.opts.heartbeat_interval_ms,
                self.opts.max_clock_offset_ms,
            ),
        );
        cfg.batch_max = self.opts.batch_max;
        cfg.maintenance_interval_ms = self.opts.maintenance_interval_ms;
        cfg.first_heartbeat_after_ms = hb_phase;
        cfg.first_maintenance_after_ms = maint_phase;
        cfg
    }

    fn start_region_with_phases(
        &mut self,
        r: usize,
        hb_phase: u64,
        maint_phase: u64,
    ) -> Result<(), Violation> {
        let gate = self.fencing_on_start(r);
        let keyspaces = match &self.opts.fencing {
            Some(f) => model::keyspaces_with_read_only(&f.read_only_keyspaces),
            None => model::keyspaces(),
        };
        let cfg = self.driver_config(hb_phase, maint_phase);
        let now = self.now_of(r);
        let reg = &mut self.regions[r];
        let mut opts = StoreOptions::new(reg.id.clone(), keyspaces);
        opts.gate = gate;
        opts.max_clock_offset_ms = self.opts.max_clock_offset_ms;
        // Durable, as in production: the backend's power-cut model loses what was not synced.
        opts.durable = true;
        let backend: Arc<dyn Backend> = reg.backend.clone();
        let clock: Arc<dyn Clock> = reg.clock.clone();
        let store = Store::open(backend, opts, clock).map_err(|e| {
            Violation::new(
                Invariant::Harness,
                format!("cannot open the store of {}: {e}", reg.id),
            )
        })?;
        let local = local_view(&store);
        let driver = ReplDriver::new(reg.id.clone(), self.ids.clone(), cfg, &local, now);
        reg.node = Some(Node {
            store,
            driver,
            tick_at: None,
        });
        reg.applied_since_start = 0;
        self.reschedule_tick(r);
        Ok(())
    }

    /// Region `r`'s time as its driver reads it: its physical clock, and the virtual time as
    /// the monotonic clock of its timers.
    fn now_of(&self, r: usize) -> Now {
        Now {
            wall_ms: self.local_ms(r),
            mono_ms: self.now,
        }
    }

    /// Brings region `r`'s replication core up to its store's committed state (the adapter's
    /// sync before every decision).
    fn sync_core(&mut self, r: usize) {
        if let Some(node) = self.regions[r].node.as_mut() {
            let local = local_view(&node.store);
            node.driver.sync(&local);
        }
    }

    /// Runs `f` on region `r`'s driver (if it is up) with its time and store state now, then
    /// carries out the commands it returns.
    fn drive(
        &mut self,
        r: usize,
        f: impl FnOnce(&mut ReplDriver, Now, &LocalView) -> Vec<Cmd>,
    ) -> Result<(), Violation> {
        let now = self.now_of(r);
        let Some(node) = self.regions[r].node.as_mut() else {
            return Ok(());
        };
        let local = local_view(&node.store);
        let cmds = f(&mut node.driver, now, &local);
        self.execute(r, cmds)?;
        self.reschedule_tick(r);
        Ok(())
    }

    /// Schedules region `r`'s next driver tick when its driver's next timer is earlier than the
    /// tick already scheduled.
    fn reschedule_tick(&mut self, r: usize) {
        let now = self.now;
        let Some(node) = self.regions[r].node.as_mut() else {
            return;
        };
        let wake = node.driver.next_wake().max(now);
        if node.tick_at.is_some_and(|t| t >= now && t <= wake) {
            return;
        }
        node.tick_at = Some(wake);
        self.schedule(wake - now, Event::Tick { r, at: wake });
    }

    fn on_tick(&mut self, r: usize, at: u64) -> Result<(), Violation> {
        let due = self.regions[r]
            .node
            .as_ref()
            .is_some_and(|n| n.tick_at == Some(at));
        if !due {
            return Ok(());
        }
        if let Some(n) = self.regions[r].node.as_mut() {
            n.tick_at = None;
        }
        self.drive(r, |d, now, local| d.tick(now, local))
    }

    /// Carries out region `r`'s driver commands, the way the server's adapter does.
    fn execute(&mut self, r: usize, cmds: Vec<Cmd>) -> Result<(), Violation> {
        for cmd in cmds {
            match cmd {
                Cmd::SendHeartbeat { to, hb } => {
                    if let Some(p) = self.index_of(&to) {
                        self.send(r, p, Msg::Heartbeat(hb));
                    }
                }
                Cmd::Subscribe { id, peer, request } => {
                    if let Some(p) = self.index_of(&peer) {
                        self.trace.line(self.now, || {
                            format!(
                                "{} subscribes ({id}) to {peer} for {:?} from {}",
                                self.ids[r], request.origins, request.applied
                            )
                        });
                        self.send(r, p, Msg::Subscribe { id, request });
                    }
                }
                Cmd::Unsubscribe { id, peer, reason } => {
                    self.trace.line(self.now, || {
                        format!(
                            "{} closes subscription {id} to {peer}: {reason}",
                            self.ids[r]
                        )
                    });
                    // The connection closes: the peer stops serving it.
                    if let Some(p) = self.index_of(&peer) {
                        self.streams.remove(&(p, r, id));
                    }
                }
                Cmd::Apply { id, peer, entries } => {
                    let from = self.index_of(&peer).unwrap_or(r);
                    let report = self.apply_batch(from, r, entries)?;
                    let now = self.now_of(r);
                    if let Some(node) = self.regions[r].node.as_mut() {
                        let local = local_view(&node.store);
                        let more = node.driver.on_applied(id, &report, now, &local);
                        self.execute(r, more)?;
                    }
                    self.log_grew(r);
                }
                Cmd::Maintain { horizon } => {
                    self.maintain_with(r, horizon)?;
                }
                Cmd::Notice(n) => self.notice(r, n),
            }
        }
        Ok(())
    }

    fn notice(&mut self, r: usize, n: Notice) {
        match n {
            Notice::HeartbeatRefused { from, refusal } => {
                // Every simulated region is honest: a refused heartbeat is a false alarm.
                let v = Violation::new(
                    Invariant::Harness,
                    format!(
                        "{} refused an honest heartbeat of {from}: {refusal}",
                        self.ids[r]
                    ),
                );
                self.record(v);
            }
            Notice::Admitted {
                duplicates,
                gaps,
                held_back,
                ..
            } => {
                self.stats.duplicates += duplicates as u64;
                self.stats.gaps += gaps as u64;
                self.stats.held_back += held_back as u64;
            }
            Notice::SkewBegan { peer, offset_ms } => self.trace.line(self.now, || {
                format!(
                    "{} sees {peer}'s clock ahead by {offset_ms} ms",
                    self.ids[r]
                )
            }),
            Notice::SkewEnded { peer, offset_ms } => self.trace.line(self.now, || {
                format!(
                    "{} sees {peer}'s clock back in bounds ({offset_ms} ms)",
                    self.ids[r]
                )
            }),
            Notice::Rtt { .. } => {}
        }
    }

    fn index_of(&self, id: &RegionId) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    /// Region `r`'s operation log or applied vector grew: its served streams read on.
    fn log_grew(&mut self, r: usize) {
        let keys: Vec<(usize, usize, SubId)> = self
            .streams
            .range((r, 0, 0)..=(r, usize::MAX, SubId::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(s) = self.streams.get_mut(&k) {
                s.wake_at = None;
            }
            self.pump(k);
        }
    }

    /// Runs the stream `key` (publisher, subscriber, id) until it waits, its window is full, or
    /// it breaks.
    fn pump(&mut self, key: (usize, usize, SubId)) {
        let (p, r, id) = key;
        // Bounded: each step either sends (at most the window) or reads one origin of a round.
        for _ in 0..1_000 {
            if !self.is_up(p) {
                self.streams.remove(&key);
                return;
            }
            let Some(s) = self.streams.get_mut(&key) else {
                return;
            };
            if s.in_flight >= STREAM_WINDOW || s.wake_at.is_some() {
                return;
            }
            let step = s.st.next(self.now);
            let frame = match step {
                StreamStep::Wait { until_mono_ms } => {
                    s.wake_at = Some(until_mono_ms);
                    let at = until_mono_ms.max(self.now);
                    self.schedule(at - self.now, Event::StreamWake { p, r, id, at });
                    return;
                }
                StreamStep::Heartbeat => {
                    s.st.on_heartbeat_sent(self.now);
                    let to = self.ids[r].clone();
                    let now = self.now_of(p);
                    let Some(node) = self.regions[p].node.as_mut() else {
                        return;
                    };
                    let local = local_view(&node.store);
                    Frame::Heartbeat(node.driver.heartbeat_for(&to, now, &local))
                }
                StreamStep::Read { origin, from, max } => {
                    let Some(node) = self.regions[p].node.as_ref() else {
                        return;
                    };
                    let entries = match node.store.oplog(&origin, from, max) {
                        Ok(e) => e,
                        Err(e) => {
                            let v = Violation::new(
                                Invariant::Harness,
                                format!("oplog read at {} failed: {e}", self.ids[p]),
                            );
                            self.record(v);
                            self.streams.remove(&key);
                            return;
                        }
                    };
                    let Some(s) = self.streams.get_mut(&key) else {
                        return;
                    };
                    match s.st.on_read(entries) {
                        Ok(Some(f)) => {
                            self.stats.batches_sent += 1;
                            f
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            let v = Violation::new(
                                Invariant::Harness,
                                format!("stream of {} to {}: {e}", self.ids[p], self.ids[r]),
                            );
                            self.record(v);
                            self.streams.remove(&key);
                            return;
                        }
                    }
                }
            };
            if self.send(p, r, Msg::Frame { id, frame }) {
                if let Some(s) = self.streams.get_mut(&key) {
                    s.in_flight += 1;
                }
            } else {
                // Lost on a cut link: the connection breaks.
                self.streams.remove(&key);
                return;
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) -> bool {
        let kind = match &msg {
            Msg::Heartbeat(_) => 1,
            Msg::Subscribe { .. } => 2,
            Msg::Frame {
                frame: Frame::Heartbeat(_),
                ..
            } => 3,
            Msg::Frame {
                frame: Frame::Ops(e),
                ..
            } => 100 + e.len() as u64,
        };
        if !self.net.is_up(from, to) {
            self.stats.messages_dropped += 1;
            self.trace
                .ev(&[20, self.now, from as u64, to as u64, kind, 0]);
            return false;
        }
        let at = self.net.arrival(from, to, self.now, &mut self.rng);
        self.stats.messages_sent += 1;
        self.trace
            .ev(&[20, self.now, from as u64, to as u64, kind, at]);
        self.schedule(at - self.now, Event::Deliver { from, to, msg });
        true
    }

    fn handle(&mut self, ev: Event) -> Result<(), Violation> {
        match ev {
            Event::Write => self.on_random_write(),
            Event::Fault => self.on_fault()?,
            Event::EndChaos => {
                self.chaos = false;
                self.trace.ev(&[1, self.now]);
                self.trace.line(self.now, || "end of chaos".into());
                self.heal_everything()?;
            }
            Event::EndWrites => {
                self.writing = false;
                self.trace.ev(&[2, self.now]);
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
            Event::Operator => self.on_operator(),
        }
        Ok(())
    }

    fn on_deliver(&mut self, from: usize, to: usize, msg: Msg) -> Result<(), Violation> {
        let stream_key = match &msg {
            Msg::Frame { id, .. } => Some((from, to, *id)),
            _ => None,
        };
        // A delivered frame frees its slot of the window only if the acknowledgement can go
        // back: with the return path cut, a stream stalls after a window's worth of frames, as a
        // TCP connection does.
        if let Some(k) = stream_key
            && self.net.is_up(from, to)
            && self.net.is_up(to, from)
            && let Some(s) = self.streams.get_mut(&k)
        {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        if !self.net.is_up(from, to) || !self.is_up(to) {
            self.stats.messages_dropped += 1;
            self.trace.ev(&[30, self.now, from as u64, to as u64, 0]);
            // A stream whose frame is lost breaks.
            if let Some(k) = stream_key {
                self.streams.remove(&k);
            }
            return Ok(());
        }
        match msg {
            Msg::Heartbeat(hb) => {
                let now = self.now_of(to);
                let Some(node) = self.regions[to].node.as_mut() else {
                    return Ok(());
                };
                let local = local_view(&node.store);
                let taken = node.driver.on_heartbeat(&hb, now, &local);
                self.trace.ev(&[
                    30,
                    self.now,
                    from as u64,
                    to as u64,
                    1,
                    u64::from(taken.is_ok()),
                ]);
                match taken {
                    Ok(cmds) => {
                        self.execute(to, cmds)?;
                        self.reschedule_tick(to);
                    }
                    Err(refusal) => self.notice(
                        to,
                        Notice::HeartbeatRefused {
                            from: hb.from,
                            refusal,
                        },
                    ),
                }
            }
            Msg::Subscribe { id, request } => {
                let Some(node) = self.regions[to].node.as_ref() else {
                    return Ok(());
                };
                match node.driver.check_subscription(&request) {
                    Ok(()) => {
                        let st = ServedStream::new(&request, node.driver.config());
                        let key = (to, from, id);
                        self.streams.insert(
                            key,
                            Served {
                                st,
                                in_flight: 0,
                                wake_at: None,
                            },
                        );
                        self.pump(key);
                    }
                    Err(e) => {
                        let v = Violation::new(
                            Invariant::Harness,
                            format!("{} refused an honest subscription: {e}", self.ids[to]),
                        );
                        self.record(v);
                    }
                }
            }
            Msg::Frame { id, frame } => {
                let known = self.regions[to]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.driver.subscriptions().any(|(s, _, _)| s == id));
                if !known {
                    // The subscriber closed it: the connection is gone.
                    self.streams.remove(&(from, to, id));
                    return Ok(());
                }
                self.trace.ev(&[
                    30,
                    self.now,
                    from as u64,
                    to as u64,
                    match &frame {
                        Frame::Heartbeat(_) => 3,
                        Frame::Ops(e) => 100 + e.len() as u64,
                    },
                ]);
                self.drive(to, |d, now, local| d.on_frame(id, frame, now, local))?;
                // The window opened a slot.
                self.pump((from, to, id));
            }
        }
        Ok(())
    }

    /// Applies an admitted batch at `to` (received from `from`), checking the clock bound and,
    /// in fenced runs, the epochs; returns what the driver is told.
    fn apply_batch(
        &mut self,
        from: usize,
        to: usize,
        entries: Vec<OpEntry>,
    ) -> Result<ApplyReport, Violation> {
        let local = self.local_ms(to);
        let max_off = self.opts.max_clock_offset_ms;
        let me = self.ids[to].clone();
        let Some(node) = self.regions[to].node.as_mut() else {
            return Ok(ApplyReport {
                failed: Some("down".into()),
                skewed: Vec::new(),
            });
        };
        let before = node.store.applied();
        let out = node.store.apply_remote(entries.clone()).map_err(|e| {
            Violation::new(
                Invariant::Harness,
                format!("apply_remote at {me} failed: {e}"),
            )
        })?;
        let after = node.store.applied();
        for e in &entries {
            if e.seq > before.get(&e.origin)
                && e.seq <= after.get(&e.origin)
                && let Err(v) = check::apply_within_clock_bound(&me, e, local, max_off)
            {
                self.record(v);
            }
        }
        if self.fen.is_some() {
            let merged: Vec<&OpEntry> = entries
                .iter()
                .filter(|e| e.seq > before.get(&e.origin) && e.seq <= after.get(&e.origin))
                .filter(|e| {
                    !out.late
                        .iter()
                        .any(|(o, s, _)| *o == e.origin && *s == e.seq)
                })
                .collect();
            self.fencing_on_applied(to, &out.late, &entries, &merged);
        }
        self.regions[to].applied_since_start += out.applied as u64;
        self.stats.entries_applied += out.applied as u64;
        self.stats.conflicts_recorded += out.conflicts.len() as u64;
        if !out.skewed.is_empty() {
            self.stats.store_refused_skewed += 1;
        }
        self.sync_core(to);
        self.trace.ev(&[
            31,
            self.now,
            from as u64,
            to as u64,
            out.applied as u64,
            out.skewed.len() as u64,
            out.conflicts.len() as u64,
        ]);
        self.trace.line(self.now, || {
            format!(
                "{me} applied {} from {} (refused skewed {:?}, conflicts {}), applied now {after}",
                out.applied,
                self.ids[from],
                out.skewed
                    .iter()
                    .map(|(o, _)| o.as_str())
                    .collect::<Vec<_>>(),
                out.conflicts.len()
            )
        });
        Ok(ApplyReport {
            failed: None,
            skewed: out.skewed.iter().map(|(o, _)| o.clone()).collect(),
        })
    }

    /// One maintenance pass at region `r` now, with the horizon its core computes now (as the
    /// driver's `Maintain` command does). Returns how many tombstones were collected.
    pub fn maintain_now(&mut self, r: usize) -> Result<usize, Violation> {
        if !self.is_up(r) {
            return Ok(0);
        }
        self.set_clocks();
        self.sync_core(r);
        let local = self.local_ms(r);
        let horizon = self.regions[r]
            .node
            .as_ref()
            .and_then(|n| n.driver.core().tombstone_horizon_ms(local));
        self.maintain_with(r, horizon)
    }

    /// A maintenance pass at region `r` below `horizon`: collects the lww tombstones below it,
    /// checking invariant 5 for each. Returns how many were collected.
    fn maintain_with(&mut self, r: usize, horizon: Option<u64>) -> Result<usize, Violation> {
        let me = self.ids[r].clone();
        let harness = |e: AtollError| Violation::new(Invariant::Harness, e.to_string());
        let Some(node) = self.regions[r].node.as_ref() else {
            return Ok(0);
        };
        // The lww tombstones held before, to see which ones the pass collects.
        let mut tombstones = Vec::new();
        if horizon.is_some() {
            for (ks, key) in &self.history.keys {
                if ks == SESSIONS
                    && let Some(KeyState::Lww(reg)) = node.store.get(ks, key).map_err(harness)?
                    && reg.value.is_none()
                {
                    tombstones.push((key.clone(), reg.origin.clone(), reg.ts));
                }
            }
        }
        let out = node.store.maintain(horizon).map_err(harness)?;
        let mut collected = Vec::new();
        for (key, origin, ts) in tombstones {
            if node.store.get(SESSIONS, &key).map_err(harness)?.is_none() {
                collected.push((key, origin, ts));
            }
        }
        if horizon.is_some() {
            self.stats.maintenance_with_horizon += 1;
        }
        self.stats.tombstones_collected += out.tombstones_collected as u64;
        if !collected.is_empty() {
            let cursors: Vec<CursorAt> = (0..self.regions.len())
                .map(|q| CursorAt {
                    region: self.ids[q].clone(),
                    applied: self.applied(q),
                    up: self.is_up(q),
                })
                .collect();
            for (key, origin, ts) in &collected {
                if let Err(v) = check::tombstone_collection(
                    &me,
                    key,
                    origin,
                    *ts,
                    horizon,
                    &self.history,
                    &cursors,
                ) {
                    self.record(v);
                }
            }
        }
        self.trace.ev(&[
            40,
            self.now,
            r as u64,
            horizon.unwrap_or(0),
            out.tombstones_collected as u64,
        ]);
        if out.tombstones_collected > 0 {
            self.trace.line(self.now, || {
                format!(
                    "{me} collected {} tombstones below horizon {horizon:?}",
                    out.tombstones_collected
                )
            });
        }
        Ok(out.tombstones_collected)
    }

    fn on_random_write(&mut self) {
        if !self.writing {
            return;
        }
        let gap = self.write_gap();
        self.schedule(gap, Event::Write);
        let up: Vec<usize> = (0..self.regions.len()).filter(|&r| self.is_up(r)).collect();
        if up.is_empty() {
            return;
        }
        let r = match self.believed_primary() {
            Some(p) => p,
            None => up[self.rng.random_range(0..up.len())],
        };
        let op = self.random_op();
        // Refusals (sibling limit) are expected and recorded; nothing else to do.
        let _ = self.write(r, &op);
    }

    fn random_op(&mut self) -> WriteOp {
        self.write_counter += 1;
        let c = self.write_counter;
        let rng = &mut self.rng;
        let roll = rng.random_range(0..100u32);
        if roll < 30 {
            let key = format!("s{}", rng.random_range(0..5u32));
            if rng.random_range(0..100u32) < 75 {
                WriteOp::LwwPut {
                    key,
                    value: format!("v{c}"),
                }
            } else {
                WriteOp::LwwDelete { key }
            }
        } else if roll < 55 {
            let key = format!("c{}", rng.random_range(0..4u32));
            let kind = rng.random_range(0..100u32);
            if kind < 55 {
                WriteOp::MvrPut {
                    key,
                    value: format!("v{c}"),
                    with_context: true,
                }
            } else if kind < 85 {
                WriteOp::MvrPut {
                    key,
                    value: format!("v{c}"),
                    with_context: false,
                }
            } else {
                WriteOp::MvrDelete { key }
            }
        } else if roll < 75 {
            WriteOp::CounterAdd {
                key: format!("r{}", rng.random_range(0..3u32)),
                delta: rng.random_range(-5..=10i64),
            }
        } else {
            let key = format!("f{}", rng.random_range(0..3u32));
            let e = |rng: &mut SimRng| format!("e{}", rng.random_range(0..6u32));
            let kind = rng.random_range(0..100u32);
            let (add, remove) = if kind < 55 {
                (vec![e(rng)], vec![])
            } else if kind < 90 {
                (vec![], vec![e(rng)])
            } else {
                (vec![e(rng)], vec![e(rng)])
            };
            WriteOp::SetUpdate { key, add, remove }
        }
    }

    fn on_fault(&mut self) -> Result<(), Violation> {
        if !self.chaos {
            return Ok(());
        }
        let gap = self
            .rng
            .random_range(self.opts.fault_gap_ms.0..=self.opts.fault_gap_ms.1);
        self.schedule(gap, Event::Fault);
        let n = self.regions.len();
        // With a witness, it is one more node faults may hit (partitions, cuts, isolation, a
        // crash); without one, `nodes == n` and the draws are those from before fencing.
        let nodes = self.net.nodes();
        let dur = self
            .rng
            .random_range(self.opts.fault_duration_ms.0..=self.opts.fault_duration_ms.1);
        let a = self.rng.random_range(0..nodes);
        let b = (a + self.rng.random_range(1..nodes)) % nodes;
        let kind = self.rng.random_range(0..100u32);
        self.trace
            .ev(&[50, self.now, u64::from(kind), a as u64, b as u64, dur]);
        if kind < 30 {
            self.stats.partitions += 1;
            self.partition(a, b);
            self.schedule(dur, Event::Heal { from: a, to: b });
            self.schedule(dur, Event::Heal { from: b, to: a });
        } else if kind < 50 {
            self.stats.one_way_cuts += 1;
            self.cut(a, b);
            self.schedule(dur, Event::Heal { from: a, to: b });
        } else if kind < 60 {
            self.stats.isolations += 1;
            for q in 0..nodes {
                if q != a {
                    self.partition(a, q);
                    self.schedule(dur, Event::Heal { from: a, to: q });
                    self.schedule(dur, Event::Heal { from: q, to: a });
                }
            }
        } else if kind < 80 {
            if a >= n {
                if self.witness_up() {
                    self.set_witness_up(false);
                    self.schedule(dur, Event::Restart(a));
                }
                return Ok(());
            }
            // At least two regions stay up (one, in a two-region cluster with a witness).
            let keep = if n < 3 { 1 } else { 2 };
            let up = (0..n).filter(|&q| self.is_up(q)).count();
            if self.is_up(a) && up > keep {
                self.crash(a);
                self.schedule(dur, Event::Restart(a));
            }
        } else if a < n {
            self.stats.skews += 1;
            let (lo, hi) = self.skew_range();
            let skew = self.rng.random_range(lo..=hi);
            self.set_skew(a, skew as i64);
            self.schedule(dur, Event::Unskew(a));
        }
        Ok(())
    }

    /// How far a clock-skew fault sets a clock ahead. Leased runs keep every pair of clocks within
    /// `max_clock_offset_ms` (fixed offsets included): `LeaseState::is_late` relies on that bound
    /// (`docs/design/fencing.md`, "Epochs on writes"), and a holder whose clock runs further ahead
    /// has the writes it acknowledged just before losing its lease refused everywhere as late
    /// (shown by `tests/scenarios.rs::skew_beyond_the_bound_makes_a_lost_primarys_writes_late`).
    /// The other runs skew beyond the bound, which replication holds back.
    fn skew_range(&self) -> (u64, u64) {
        if self
            .opts
            .fencing
            .as_ref()
            .is_some_and(|f| f.topology.leased())
        {
            let max = self.opts.max_clock_offset_ms;
            let hi = max.saturating_sub(2 * self.opts.base_offset_ms);
            (hi.min(max / 4), hi)
        } else {
            self.opts.skew_ms
        }
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

/// What a region's driver needs to know of its store now (as the server's adapter reads it).
fn local_view(store: &Store) -> LocalView {
    let wm = store.watermark();
    LocalView {
        applied: store.applied(),
        watermark_head: wm.head,
        watermark_before_ms: wm.before_ms,
        hlc_wall_ms: store.stats().hlc_wall_ms.load(AtomicOrdering::Relaxed),
    }
}

mod control;

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
        let names: Vec<String> = model::keyspaces().into_iter().map(|k| k.name).collect();
        assert_eq!(
            names,
            vec![SESSIONS, model::CARTS, model::RATELIMITS, model::FLAGS]
        );
    }
}
