//! Split-brain fencing in the simulation (`docs/design/fencing.md`): the options of a fenced
//! run, each region's drifting monotonic clock, the store's write gate backed by the region's
//! real [`Fence`], and the records the fencing checkers judge.
//!
//! The control group is **modelled**, not run: openraft is not in the simulation (its own test
//! suite is what backs log agreement; `crates/atoll-control/tests` runs real groups). The model,
//! driven by `sim::control`, is one log of [`atoll_core::fence::Command`]s applied in commit order
//! to one [`atoll_core::fence::LeaseState`] (the production state machine):
//!
//! - a proposal from region R commits only if, at the instant it reaches the group (after a
//!   network delay, sometimes a long one), R or a member R reaches both ways (a relay, the
//!   arbiter included) is mutually reachable with a majority of the voters, counting itself, in
//!   the simulated network (the sim's partitions, one-way cuts, isolations and crashes). A
//!   proposal that cannot commit then is dropped, or stays in a leader's log and is tried again
//!   later (so it may commit after its proposer gave up on it: the ambiguous outcome);
//! - the answer travels back with a delay and may be lost; the proposer learns the outcome from
//!   the answer or, at its propose timeout, learns nothing (`Fence::on_answer(.., None)`);
//! - every region applies the log in order, each entry some network delay after its commit, and
//!   only while it reaches a member that reaches a majority (a region cut off stalls), calling
//!   `Fence::on_applied` with its monotonic time;
//! - a crashed region restarts with a fresh `Fence` that restores the log prefix it had applied
//!   (the raft log is durable) and acts only once it has applied a state.
//!
//! The star-shaped commit rule is more permissive than Raft (which also needs an elected leader),
//! which only gives the lease protocol more chances to go wrong.

use atoll_config::{KeyspaceConfig, OnMinority};
use atoll_core::fence::{Denial, Fence, FenceConfig, Topology};
use atoll_core::{AtollError, RegionId};
use atoll_store::WriteGate;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How each region's monotonic clock drifts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// Each region's rate drawn from the seed: a third at `1 - ρ`, a third at `1 + ρ`, a third
    /// uniform in between.
    Random,
    /// Region `i` runs at `1 + drift[i] / 10^6` (missing entries: 0).
    Fixed(Vec<i64>),
}

/// What a fenced run models. `None` in [`crate::SimOptions::fencing`] is active-active without
/// quorum fencing: no control group at all (the runs from before fencing, unchanged).
#[derive(Clone, Debug, PartialEq)]
pub struct FencingOptions {
    pub topology: Topology,
    /// A voter with no store (the arbiter): one more node in the network, reachable and
    /// partitionable like a region.
    pub witness: bool,
    /// Active-active quorum fencing: keyspaces declared `on_minority = "read-only"`.
    pub read_only_keyspaces: Vec<String>,
    pub lease_ms: u64,
    pub renew_every_ms: u64,
    pub margin_ms: u64,
    /// The configured `ρ`; the regions' clocks drift within it (or as [`Self::drift`] says).
    pub max_drift_ppm: u64,
    pub max_promotion_lag_ms: u64,
    pub drift: Drift,
    /// Gap between two random operator actions (switchovers; promotions in active-passive, and
    /// in active-standby when the lag bound blocks the automatic one). `None`: no operator.
    pub operator_gap_ms: Option<(u64, u64)>,
    /// Percentage of operator promotions run with `--accept-data-loss`.
    pub accept_data_loss_pct: u32,
    /// Percentage of client writes sent to the believed primary; the rest go to random regions.
    pub to_primary_pct: u32,
    /// How long a switching-over holder waits for its target to catch up before giving up.
    pub handover_timeout_ms: u64,
    /// Percentage of control-group answers lost on the way back.
    pub answer_loss_pct: u32,
    /// Percentage of proposals and answers delayed by up to `slow_ms` more (a slow leader).
    pub slow_pct: u32,
    pub slow_ms: u64,
    /// Percentage of proposals that could not commit and stay in a leader's log, tried again
    /// later (for at most two lease durations).
    pub linger_pct: u32,
    /// How long the control group's `propose` waits for the outcome before the proposer hears
    /// "unknown". `None`: what the region server configures (`lease_ms - margin_ms`, within
    /// 1..=10 s, the fence's own propose timeout too); a longer one lets answers reach the fence
    /// after it stopped waiting and sent its next proposal.
    pub control_timeout_ms: Option<u64>,
}

impl FencingOptions {
    /// `[fencing]` defaults for `topology`.
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            witness: false,
            read_only_keyspaces: Vec::new(),
            lease_ms: 5_000,
            renew_every_ms: 1_000,
            margin_ms: 250,
            max_drift_ppm: 1_000,
            max_promotion_lag_ms: 5_000,
            drift: Drift::Random,
            operator_gap_ms: None,
            accept_data_loss_pct: 50,
            to_primary_pct: 70,
            handover_timeout_ms: 5_000,
            answer_loss_pct: 3,
            slow_pct: 5,
            slow_ms: 3_000,
            linger_pct: 30,
            control_timeout_ms: None,
        }
    }

    /// A short name for reports: `active-active+quorum`, `active-standby+witness`, ...
    pub fn name(&self) -> String {
        let t = match self.topology {
            Topology::ActiveActive { quorum: true } => "active-active+quorum",
            Topology::ActiveActive { quorum: false } => "active-active",
            Topology::ActiveStandby => "active-standby",
            Topology::ActivePassive => "active-passive",
        };
        if self.witness {
            format!("{t}+witness")
        } else {
            t.to_string()
        }
    }

    /// The fence configuration of region `me`, as the region server builds it (the propose
    /// timeout included).
    pub fn fence_config(&self, me: RegionId, regions: Vec<RegionId>) -> FenceConfig {
        let initial = regions.first().cloned().unwrap_or_else(|| me.clone());
        FenceConfig {
            lease_ms: self.lease_ms,
            renew_every_ms: self.renew_every_ms,
            margin_ms: self.margin_ms,
            max_drift_ppm: self.max_drift_ppm,
            max_promotion_lag_ms: self.max_promotion_lag_ms,
            propose_timeout_ms: self.lease_ms.saturating_sub(self.margin_ms).max(500),
            ..FenceConfig::new(me, self.topology, regions, initial)
        }
    }

    /// The control group's propose timeout ([`Self::control_timeout_ms`]).
    pub fn control_timeout(&self) -> u64 {
        self.control_timeout_ms.unwrap_or_else(|| {
            self.lease_ms
                .saturating_sub(self.margin_ms)
                .clamp(1_000, 10_000)
        })
    }

    /// How often each region runs its fencing loop (as the server's: a quarter of the renewal
    /// period, 10..=250 ms).
    pub fn tick_ms(&self) -> u64 {
        (self.renew_every_ms / 4).clamp(10, 250)
    }

    /// The longest a quorum window can last in true time: `D - M` on a clock running at the
    /// slowest rate the bound allows, plus a millisecond of rounding.
    pub fn max_window_true_ms(&self) -> u64 {
        let local = self.lease_ms.saturating_sub(self.margin_ms) + 1;
        let rate = 1_000_000u64.saturating_sub(self.max_drift_ppm).max(1);
        (local * 1_000_000).div_ceil(rate)
    }
}

/// A monotonic clock running at `1 + drift_ppm / 10^6` of true (virtual) time, from `base`.
/// Integer arithmetic only, so a seed replays exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonoClock {
    pub base: u64,
    pub drift_ppm: i64,
}

impl MonoClock {
    fn rate(&self) -> u128 {
        (1_000_000i64 + self.drift_ppm).max(1) as u128
    }

    /// The reading at true time `t`.
    pub fn at(&self, t: u64) -> u64 {
        self.base + (u128::from(t) * self.rate() / 1_000_000) as u64
    }

    /// The first true time, not before `from`, at which the clock reads `local` or more.
    pub fn true_when(&self, local: u64, from: u64) -> u64 {
        if self.at(from) >= local {
            return from;
        }
        // floor(t * rate / 10^6) >= k  iff  t * rate >= k * 10^6.
        let k = u128::from(local - self.base);
        let t = (k * 1_000_000).div_ceil(self.rate());
        (t as u64).max(from)
    }
}

/// A region's fence, shared by the simulation and the store's write gate.
pub type SharedFence = Arc<Mutex<Fence>>;

/// Locks a shared fence (a panic while holding it is a harness bug anyway; keep going).
pub fn lock(f: &SharedFence) -> MutexGuard<'_, Fence> {
    f.lock().unwrap_or_else(|p| p.into_inner())
}

/// The store's write gate of a simulated region: `permit` at the region's monotonic now (set by
/// the simulation before every store call), `is_late` from the applied lease state. What the
/// region server's `Fencing` does, without metrics.
pub struct Gate {
    pub fence: SharedFence,
    pub mono: Arc<AtomicU64>,
}

impl WriteGate for Gate {
    fn permit(&self, keyspace: &KeyspaceConfig, _key: &[u8]) -> atoll_core::Result<u64> {
        let now = self.mono.load(Ordering::SeqCst);
        let f = lock(&self.fence);
        f.permit(now, keyspace.on_minority == OnMinority::ReadOnly)
            .map_err(|d| denial_error(d, &keyspace.name, f.holder()))
    }

    fn is_late(&self, epoch: u64, ts_ms: u64) -> bool {
        lock(&self.fence).state().is_late(epoch, ts_ms)
    }
}

/// The client error for a denial (the codes the server answers with).
pub fn denial_error(d: Denial, keyspace: &str, holder: Option<&RegionId>) -> AtollError {
    let primary = holder.map(|h| h.to_string());
    match d {
        Denial::Minority => AtollError::Fenced {
            keyspace: keyspace.to_string(),
            detail: "no renewal of its quorum window answered within the lease".into(),
        },
        Denial::NotPrimary { .. } => AtollError::NotPrimary {
            primary,
            primary_api: None,
            reason: "this region does not hold the write lease".into(),
        },
        Denial::NoWindow { handing_over } => AtollError::NotPrimary {
            primary,
            primary_api: None,
            reason: if handing_over {
                "a switchover is in progress".into()
            } else {
                "this region holds the lease but has no valid window".into()
            },
        },
    }
}

/// Whether a store error is a fencing refusal (not acknowledged, nothing written).
pub fn is_fencing_refusal(e: &AtollError) -> bool {
    matches!(e.code(), "ATOLL-NOT-PRIMARY" | "ATOLL-FENCED")
}

/// One write window of one region, in true (virtual) time: `[open_ms, close_ms)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub region: RegionId,
    pub epoch: u64,
    pub open_ms: u64,
    /// `None` while open. A window that runs out is closed at the first instant its region's
    /// monotonic clock reaches the window's end; one ended by an event (a handover, a new epoch,
    /// a crash) at that event.
    pub close_ms: Option<u64>,
}

/// A promotion (automatic or `atoll promote`) that committed: what it reported and what the
/// promoted region really lacked of the old holder's acknowledged writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub region: RegionId,
    pub previous: Option<RegionId>,
    pub epoch: u64,
    /// `atoll promote` (else automatic).
    pub manual: bool,
    pub accept_data_loss: bool,
    /// The exposure (lag) in the command, from the region's `PromotionView`.
    pub reported_ops: u64,
    pub reported_ms: u64,
    /// True: the old holder's acknowledged writes the region had not applied when it proposed.
    pub missing_ops_at_send: u64,
    /// The same when the promotion committed.
    pub missing_ops_at_commit: u64,
    /// When it committed: the span, in true time, from the stamping of the first acknowledged
    /// write of the old holder the region lacked to the old holder's last acknowledged write
    /// (the true counterpart of the reported lag in ms: what would be lost, in time, if the old
    /// holder never came back). `None`: it lacked nothing.
    pub missing_span_ms: Option<u64>,
}

/// The per-run fencing report (also in [`crate::Outcome`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FencingReport {
    /// The topology, as [`FencingOptions::name`].
    pub topology: String,
    /// Every write window, in order of opening.
    pub windows: Vec<Window>,
    /// Smallest gap, in true time, between the last acknowledged write of an epoch and the first
    /// of a later epoch at another region.
    pub min_handoff_gap_ms: Option<u64>,
    /// Promotions that committed (the initial grant and switchovers are not promotions).
    pub promotions: Vec<Promotion>,
}
