//! What a run is: its options (and what each seed of the sweep picks), its counters, and how it
//! ends (an outcome, or a failure with the command that replays it).

use super::*;

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
    /// How long a replicated batch takes to commit once admitted (uniform in the range; applies
    /// of one region finish in the order they were issued). While it commits, the subscription's
    /// next frames are admitted (docs/design/pipelined-apply.md). `(0, 0)`: applied at once.
    pub apply_ms: (u64, u64),
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
    /// Session clients (`session.rs`, `docs/design/session-consistency.md`): how many clients
    /// carry a session token during the chaos and calm phases, each moving between regions at
    /// random, writing lww keys and reading with its token. Their choices come from an RNG of
    /// their own (seeded from the seed), so `0` runs exactly as runs did before they existed.
    pub session_clients: usize,
    /// Gap between two operations of one session client (uniform in the range).
    pub session_gap_ms: (u64, u64),
    /// How long a session read whose token the region has not applied yet waits for it, checking
    /// again every [`SESSION_RECHECK_MS`], before it is refused as `ATOLL-STALE` (the server's
    /// `[api] session_wait` default). `0`: refused at once.
    pub session_wait_ms: u64,
    /// The region's token check (`atoll_core::session::check`). `false` serves every session read
    /// at once, as if the gate were missing: a negative control for invariant 10.
    pub session_check: bool,
    /// Adding a region to the running cluster (`docs/design/adding-regions.md`): the last region
    /// starts only during the chaos phase, with an empty store; the others add it to their peers
    /// one by one at random times after (their config reloads), and it takes writes only once
    /// admitted. Its random draws are made only when on, so runs without it are unchanged.
    pub join: bool,
    /// Removing a region from the running cluster (`docs/design/region-removal.md`): the last
    /// region is a replica; during the chaos phase every other region removes it at a random
    /// time of its own (its config reload, or at its next start if it is down then). The removed
    /// region runs on, learns it was removed from the refusals of its heartbeats and takes no
    /// writes after; what no member received of its writes is set aside (leaves the history).
    /// Not with `join`. Its random draws are made only when on.
    pub remove: bool,
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
            expired_collected,
            rate_keys_collected,
            rate_admitted,
            rate_denied,
            oplog_truncated,
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
            session_writes,
            session_reads_served,
            session_reads_behind,
            session_reads_waited,
            session_reads_stale,
            session_reads_impossible,
            session_reads_unchecked,
            joins,
            joiner_bootstraps,
            joiner_writes_refused,
            joiners_admitted,
            removals,
            removed_told,
            removed_writes_set_aside,
            removed_applies_refused,
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
        self.expired_collected += expired_collected;
        self.rate_keys_collected += rate_keys_collected;
        self.rate_admitted += rate_admitted;
        self.rate_denied += rate_denied;
        self.oplog_truncated += oplog_truncated;
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
        self.session_writes += session_writes;
        self.session_reads_served += session_reads_served;
        self.session_reads_behind += session_reads_behind;
        self.session_reads_waited += session_reads_waited;
        self.session_reads_stale += session_reads_stale;
        self.session_reads_impossible += session_reads_impossible;
        self.session_reads_unchecked += session_reads_unchecked;
        self.joins += joins;
        self.joiner_bootstraps += joiner_bootstraps;
        self.joiner_writes_refused += joiner_writes_refused;
        self.joiners_admitted += joiners_admitted;
        self.removals += removals;
        self.removed_told += removed_told;
        self.removed_writes_set_aside += removed_writes_set_aside;
        self.removed_applies_refused += removed_applies_refused;
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
            apply_ms: (0, 30),
            latency_ms: (5, 80),
            jitter_ms: 20,
            base_offset_ms: 100,
            trace: std::env::var("ATOLL_SIM_TRACE").is_ok_and(|v| !v.is_empty() && v != "0"),
            fencing: None,
            session_clients: 4,
            session_gap_ms: (40, 1_400),
            session_wait_ms: 500,
            session_check: true,
            join: false,
            remove: false,
        }
    }
}

impl SimOptions {
    /// No random writes, faults or session clients: for scripted scenarios.
    pub fn scripted() -> Self {
        Self {
            random_writes: false,
            random_faults: false,
            session_clients: 0,
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
    /// Expired lww values collected (`docs/design/expiring-keys.md`).
    pub expired_collected: u64,
    /// Idle rate-limit keys collected (`docs/design/rate-limits.md`).
    pub rate_keys_collected: u64,
    /// Rate-limit requests admitted and denied.
    pub rate_admitted: u64,
    pub rate_denied: u64,
    /// Operation-log entries truncated (every region had applied them; the simulation keeps no
    /// retention, so truncation is as early as the rule allows).
    pub oplog_truncated: u64,
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
    /// Session clients: acknowledged writes.
    pub session_writes: u64,
    /// Session reads served at once (the region had applied the token, or it named nothing).
    pub session_reads_served: u64,
    /// Session reads whose region had not applied the token when they arrived; each then waited
    /// (`session_wait_ms`) and was served (`session_reads_waited`) or refused as `ATOLL-STALE`
    /// (`session_reads_stale`, which also counts reads whose region crashed while they waited).
    pub session_reads_behind: u64,
    pub session_reads_waited: u64,
    pub session_reads_stale: u64,
    /// Session reads whose genuine token the region judged forged (each one also a violation of
    /// invariant 10 when the check is on).
    pub session_reads_impossible: u64,
    /// With the check off ([`SimOptions::session_check`]): reads served that the check would not
    /// have served at once.
    pub session_reads_unchecked: u64,
    /// Regions added to the running cluster ([`SimOptions::join`]).
    pub joins: u64,
    /// Bootstraps by snapshot of a region added to the running cluster (before its admission).
    pub joiner_bootstraps: u64,
    /// Writes refused at an added region not admitted yet (`ATOLL-JOINING`).
    pub joiner_writes_refused: u64,
    /// Added regions admitted (they take writes from then on).
    pub joiners_admitted: u64,
    /// Removals of a region by a member ([`SimOptions::remove`]).
    pub removals: u64,
    /// Heartbeats of the removed region refused as removed (it learns it was removed).
    pub removed_told: u64,
    /// Acknowledged writes of the removed region no member received: set aside.
    pub removed_writes_set_aside: u64,
    /// Replicated batches from the removed region a member's store refused after the removal
    /// took effect (in flight when it was removed).
    pub removed_applies_refused: u64,
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
        // Half of the unfenced plans add their last region while running.
        0 if !bit(0) => {
            return (
                n,
                SimOptions {
                    join: bit(6),
                    // A quarter of them remove their last region while running.
                    remove: !bit(6) && bit(7),
                    ..SimOptions::default()
                },
            );
        }
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
