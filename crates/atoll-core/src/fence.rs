//! Split-brain fencing: the write lease and its epochs (`docs/design/fencing.md`).
//!
//! Two pure parts, no clock, no I/O:
//!
//! - [`LeaseState`]: the replicated state machine the control group (openraft, in
//!   `atoll-control`) replicates. [`LeaseState::apply`] is deterministic: every member applies the
//!   same commands in the same order and reaches the same state and the same answers.
//! - [`Fence`]: one member's view and timers. Every call takes `now_ms` on the member's
//!   **monotonic** clock. It turns applied states and answers to its own proposals into the role,
//!   the write window, and the next command to propose.
//!
//! Architecture Invariant: two regions never hold overlapping write windows. A holder's window
//! ends at `send time of an answered renewal + lease - margin` (its clock); anyone else acquires
//! only `lease x (1 + drift) + margin` after it *applied* the last lease-changing entry, and the
//! state machine refuses an `Acquire` that was not timed from the last such entry
//! (`expect_version`). Backed by the property test `crates/atoll-core/tests/fence_prop.rs`.

use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Version byte in front of every encoded command, answer and state snapshot.
pub const FENCE_FORMAT_VERSION: u8 = 1;
/// Promotions remembered in [`LeaseState::history`].
pub const HISTORY_LEN: usize = 32;
/// Epoch fences remembered in [`LeaseState::fences`].
pub const FENCES_LEN: usize = 64;

/// Why a region took the lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromotionReason {
    /// The configured initial primary took the never-held lease.
    Initial,
    /// Automated promotion of the most caught-up standby after the lease ended.
    Automatic { lag_ops: u64, lag_ms: u64 },
    /// `atoll promote`; `exposure_*` is what the operator accepted to lose (0 when nothing).
    Manual { exposure_ops: u64, exposure_ms: u64 },
    /// `atoll switchover`: the old holder stopped, the target caught up, then the lease moved.
    Switchover,
}

/// A command of the control group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Take the lease with `epoch` (= current + 1), timed from the entry that set
    /// `expect_version`. `fence_ts_ms`: the proposer's HLC time plus the maximum clock offset;
    /// writes of older epochs stamped after it are late.
    Acquire {
        region: RegionId,
        epoch: u64,
        expect_version: u64,
        fence_ts_ms: u64,
        reason: PromotionReason,
    },
    /// The holder extends its lease.
    Renew { region: RegionId, epoch: u64 },
    /// The holder hands the lease to `to` (switchover); it stopped writing before proposing.
    Transfer {
        from: RegionId,
        to: RegionId,
        epoch: u64,
        expect_version: u64,
        fence_ts_ms: u64,
    },
    /// Active-active quorum fencing: proves that a majority answered after the send time.
    Presence { region: RegionId },
}

impl Command {
    /// The region the command is proposed by.
    pub fn proposer(&self) -> &RegionId {
        match self {
            Command::Acquire { region, .. }
            | Command::Renew { region, .. }
            | Command::Presence { region } => region,
            Command::Transfer { from, .. } => from,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Acquire { .. } => "acquire",
            Command::Renew { .. } => "renew",
            Command::Transfer { .. } => "transfer",
            Command::Presence { .. } => "presence",
        }
    }
}

/// Why the state machine did not apply a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refused {
    /// The lease changed since the proposer timed it (`expect_version` is stale).
    StaleVersion { current: u64 },
    /// The epoch is not the one the command needs (not current for a renewal, not current + 1
    /// for an acquisition or transfer).
    WrongEpoch { current: u64 },
    /// The proposer does not hold the lease.
    NotHolder { holder: Option<RegionId> },
    /// A transfer to the holder itself.
    SelfTransfer,
}

/// The state machine's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Granted { epoch: u64, version: u64 },
    Renewed { epoch: u64, version: u64 },
    Transferred { epoch: u64, version: u64 },
    Present,
    Refused(Refused),
}

/// One entry of the promotion history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub epoch: u64,
    pub region: RegionId,
    /// The holder it took over from (`None` for the first).
    pub previous: Option<RegionId>,
    pub reason: PromotionReason,
    pub fence_ts_ms: u64,
}

/// The control group's replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    /// The region that holds the write lease, if any ever took it.
    pub holder: Option<RegionId>,
    /// The holder's epoch; 0 before the first holder.
    pub epoch: u64,
    /// Bumped by every lease-changing entry (grant, renewal, transfer). Members time the lease
    /// from the moment they applied the entry that set the current version.
    pub version: u64,
    /// `fence_ts_ms` of each epoch (the newest [`FENCES_LEN`]).
    pub fences: BTreeMap<u64, u64>,
    /// Promotions, oldest first (the newest [`HISTORY_LEN`]).
    pub history: VecDeque<Promotion>,
}

impl LeaseState {
    /// Applies one committed command. Deterministic: no clock, no randomness.
    pub fn apply(&mut self, cmd: &Command) -> Answer {
        match cmd {
            Command::Presence { .. } => Answer::Present,
            Command::Renew { region, epoch } => {
                if self.holder.as_ref() != Some(region) {
                    return Answer::Refused(Refused::NotHolder {
                        holder: self.holder.clone(),
                    });
                }
                if *epoch != self.epoch {
                    return Answer::Refused(Refused::WrongEpoch {
                        current: self.epoch,
                    });
                }
                self.version += 1;
                Answer::Renewed {
                    epoch: self.epoch,
                    version: self.version,
                }
            }
            Command::Acquire {
                region,
                epoch,
                expect_version,
                fence_ts_ms,
                reason,
            } => {
                if *expect_version != self.version {
                    return Answer::Refused(Refused::StaleVersion {
                        current: self.version,
                    });
                }
                if *epoch != self.epoch + 1 {
                    return Answer::Refused(Refused::WrongEpoch {
                        current: self.epoch,
                    });
                }
                let previous = self.holder.replace(region.clone());
                self.grant(
                    *epoch,
                    region.clone(),
                    previous,
                    reason.clone(),
                    *fence_ts_ms,
                );
                Answer::Granted {
                    epoch: self.epoch,
                    version: self.version,
                }
            }
            Command::Transfer {
                from,
                to,
                epoch,
                expect_version,
                fence_ts_ms,
            } => {
                if self.holder.as_ref() != Some(from) {
                    return Answer::Refused(Refused::NotHolder {
                        holder: self.holder.clone(),
                    });
                }
                if from == to {
                    return Answer::Refused(Refused::SelfTransfer);
                }
                if *expect_version != self.version {
                    return Answer::Refused(Refused::StaleVersion {
                        current: self.version,
                    });
                }
                if *epoch != self.epoch + 1 {
                    return Answer::Refused(Refused::WrongEpoch {
                        current: self.epoch,
                    });
                }
                let previous = self.holder.replace(to.clone());
                self.grant(
                    *epoch,
                    to.clone(),
                    previous,
                    PromotionReason::Switchover,
                    *fence_ts_ms,
                );
                Answer::Transferred {
                    epoch: self.epoch,
                    version: self.version,
                }
            }
        }
    }

    fn grant(
        &mut self,
        epoch: u64,
        region: RegionId,
        previous: Option<RegionId>,
        reason: PromotionReason,
        fence_ts_ms: u64,
    ) {
        self.epoch = epoch;
        self.version += 1;
        self.fences.insert(epoch, fence_ts_ms);
        while self.fences.len() > FENCES_LEN {
            self.fences.pop_first();
        }
        self.history.push_back(Promotion {
            epoch,
            region,
            previous,
            reason,
            fence_ts_ms,
        });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
    }

    /// Whether a write of `epoch` stamped at `ts_ms` (HLC wall time) is late: its epoch was
    /// superseded and it was stamped after the supersession, so it cannot have been accepted
    /// inside a valid lease. Epoch 0 (no lease: active-active) is never late.
    pub fn is_late(&self, epoch: u64, ts_ms: u64) -> bool {
        if epoch == 0 || epoch >= self.epoch {
            return false;
        }
        self.fences
            .range(epoch + 1..)
            .next()
            .is_some_and(|(_, fence)| ts_ms > *fence)
    }

    /// The newest promotion.
    pub fn last_promotion(&self) -> Option<&Promotion> {
        self.history.back()
    }
}

fn encode<T: Serialize>(what: &str, v: &T) -> crate::Result<Vec<u8>> {
    let mut out = vec![FENCE_FORMAT_VERSION];
    let body = postcard::to_allocvec(v)
        .map_err(|e| crate::AtollError::Corrupt(format!("cannot encode {what}: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> crate::Result<T> {
    match bytes.split_first() {
        None => Err(crate::AtollError::Corrupt(format!("empty {what}"))),
        Some((&FENCE_FORMAT_VERSION, body)) => postcard::from_bytes(body)
            .map_err(|e| crate::AtollError::Corrupt(format!("malformed {what}: {e}"))),
        Some((v, _)) => Err(crate::AtollError::FormatTooNew {
            found: u16::from(*v),
            supported: u16::from(FENCE_FORMAT_VERSION),
        }),
    }
}

/// Encodes a command for the control group's log.
pub fn encode_command(cmd: &Command) -> crate::Result<Vec<u8>> {
    encode("fencing command", cmd)
}
/// Decodes a command; a wrong version or malformed bytes is an error, never a panic.
pub fn decode_command(bytes: &[u8]) -> crate::Result<Command> {
    decode("fencing command", bytes)
}
/// Encodes an answer.
pub fn encode_answer(a: &Answer) -> crate::Result<Vec<u8>> {
    encode("fencing answer", a)
}
/// Decodes an answer.
pub fn decode_answer(bytes: &[u8]) -> crate::Result<Answer> {
    decode("fencing answer", bytes)
}
/// Encodes the state (snapshots).
pub fn encode_state(s: &LeaseState) -> crate::Result<Vec<u8>> {
    encode("fencing state", s)
}
/// Decodes the state.
pub fn decode_state(bytes: &[u8]) -> crate::Result<LeaseState> {
    decode("fencing state", bytes)
}

/// The topology, as far as fencing is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Every region writes; with `quorum`, a region that cannot reach a majority refuses writes
    /// to keyspaces marked `on_minority = "read-only"`.
    ActiveActive { quorum: bool },
    /// One primary; the most caught-up standby is promoted automatically.
    ActiveStandby,
    /// One primary; promotion is manual.
    ActivePassive,
}

impl Topology {
    /// Whether the cluster has a single write lease.
    pub fn leased(self) -> bool {
        !matches!(self, Topology::ActiveActive { .. })
    }
}

/// Lease timing and policy, the same on every member.
#[derive(Clone, Debug, PartialEq)]
pub struct FenceConfig {
    pub me: RegionId,
    pub topology: Topology,
    /// Every region, in config order (ties in promotion go to the earlier one).
    pub regions: Vec<RegionId>,
    /// Takes the never-held lease at once.
    pub initial_primary: RegionId,
    /// `D`.
    pub lease_ms: u64,
    /// `R`.
    pub renew_every_ms: u64,
    /// `M`.
    pub margin_ms: u64,
    /// `ρ`, in parts per million.
    pub max_drift_ppm: u64,
    /// Automated promotion happens only within this lag of the old holder.
    pub max_promotion_lag_ms: u64,
    /// A proposal with no answer after this long is given up (its outcome unknown).
    pub propose_timeout_ms: u64,
}

impl FenceConfig {
    /// Defaults of `[fencing]`.
    pub fn new(
        me: RegionId,
        topology: Topology,
        regions: Vec<RegionId>,
        initial_primary: RegionId,
    ) -> Self {
        Self {
            me,
            topology,
            regions,
            initial_primary,
            lease_ms: 5_000,
            renew_every_ms: 1_000,
            margin_ms: 250,
            max_drift_ppm: 1_000,
            max_promotion_lag_ms: 10_000,
            propose_timeout_ms: 2_000,
        }
    }

    /// The smallest margin the drift bound allows: `2ρD + 10 ms`.
    pub fn min_margin_ms(&self) -> u64 {
        (2 * self.lease_ms * self.max_drift_ppm).div_ceil(1_000_000) + 10
    }

    /// Checks the timing: a margin that covers the drift, renewals well inside the lease.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_drift_ppm > 10_000 {
            return Err(format!(
                "max_drift_ppm = {} is above 10000 (1 %); no host's monotonic clock drifts that much",
                self.max_drift_ppm
            ));
        }
        if self.margin_ms < self.min_margin_ms() {
            return Err(format!(
                "margin_ms = {} is below 2 x lease_ms x max_drift + 10 ms = {} ms",
                self.margin_ms,
                self.min_margin_ms()
            ));
        }
        if self.renew_every_ms == 0
            || self.renew_every_ms * 2 > self.lease_ms - self.margin_ms.min(self.lease_ms)
        {
            return Err(format!(
                "renew_every_ms = {} must be above 0 and at most half of lease_ms - margin_ms = {} ms, so one lost renewal does not end the lease",
                self.renew_every_ms,
                self.lease_ms.saturating_sub(self.margin_ms)
            ));
        }
        if !self.regions.contains(&self.initial_primary) {
            return Err(format!(
                "initial_primary `{}` is not a region of the cluster",
                self.initial_primary
            ));
        }
        Ok(())
    }

    /// How long after applying the last lease-changing entry a member calls the lease expired:
    /// `D(1+ρ) + M`.
    pub fn expiry_wait_ms(&self) -> u64 {
        self.lease_ms + (self.lease_ms * self.max_drift_ppm).div_ceil(1_000_000) + self.margin_ms
    }

    /// How often a member's fencing loop looks at its lease again (renewals, expiry, automated
    /// promotion) when nothing else wakes it: a quarter of the renewal period, 10 to 250 ms.
    pub fn tick_ms(&self) -> u64 {
        (self.renew_every_ms / 4).clamp(10, 250)
    }

    /// How long an answered proposal sent at `s` lets its proposer write: until `s + D - M`.
    pub fn window_ms(&self) -> u64 {
        self.lease_ms.saturating_sub(self.margin_ms)
    }
}

/// A member's role, as `/healthz` and `/v1/status` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Active-active, writing.
    Active,
    /// Active-active, cut off from a majority: `read-only` keyspaces refuse writes.
    ReadOnly,
    /// Holds the lease and a write window.
    Primary,
    /// Holds the lease but has no window (just granted, restarted, renewals failing) or is
    /// handing it over: refuses writes for now.
    Fenced,
    /// Active-standby, not holding the lease.
    Standby,
    /// Active-passive, not holding the lease: serves no client traffic.
    Passive,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::ReadOnly => "read-only",
            Role::Primary => "primary",
            Role::Fenced => "fenced",
            Role::Standby => "standby",
            Role::Passive => "passive",
        }
    }
}

/// Why a write may not be stamped now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// Another region holds (or may hold) the lease; `holder` if known.
    NotPrimary { holder: Option<RegionId> },
    /// This region holds the lease but has no valid window (renewals failing, restarted, just
    /// granted, or handing over).
    NoWindow { handing_over: bool },
    /// Active-active minority: the keyspace is read-only until a majority answers again.
    Minority,
}

/// What a standby knows about how far behind the holder it is (from replication heartbeats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromotionView {
    /// The holder's own head sequence, from its last heartbeat; `None` if never heard.
    pub holder_head: Option<u64>,
    /// The holder's write watermark (its clock) from the same heartbeat.
    pub holder_watermark_ms: Option<u64>,
    /// Highest sequence of the holder's writes this member has applied.
    pub my_applied: u64,
    /// This member's stability claim for the holder's writes (the holder's clock).
    pub my_claim_ms: Option<u64>,
    /// Other regions heard from recently, with what they applied of the holder's writes.
    pub others: Vec<(RegionId, u64)>,
    /// How long ago this member last heard the holder's replication heartbeats; `None`: never.
    /// Writes the holder may have made since are unknown here, whatever its last head said.
    pub since_holder_heard_ms: Option<u64>,
}

/// How much of the holder's writes a member lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    pub ops: u64,
    /// `None`: unknown (the holder was never heard from, or no claim yet).
    pub ms: Option<u64>,
}

impl PromotionView {
    /// This member's lag behind the holder's last known head.
    pub fn lag(&self) -> Lag {
        let Some(head) = self.holder_head else {
            return Lag { ops: 0, ms: None };
        };
        let ops = head.saturating_sub(self.my_applied);
        if ops == 0 {
            return Lag { ops, ms: Some(0) };
        }
        let ms = match (self.holder_watermark_ms, self.my_claim_ms) {
            (Some(w), Some(c)) => Some(w.saturating_sub(c)),
            _ => None,
        };
        Lag { ops, ms }
    }
}

/// Why a manual promotion or switchover was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromoteRefusal {
    /// This member already holds the lease.
    AlreadyPrimary,
    /// The current lease is healthy from this member's view: `remaining_ms` until it could end.
    LeaseHeld { holder: RegionId, remaining_ms: u64 },
    /// Promoting would lose writes the old holder acknowledged.
    DataLoss { lag: Lag },
    /// A proposal is already in flight.
    Busy,
    /// The topology has no lease (active-active).
    NotLeased,
    /// Switchover asked of a member that does not hold the lease, or to itself.
    NotHolder { holder: Option<RegionId> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Inflight {
    cmd: Command,
    sent_at: u64,
}

/// One member's fencing view and timers.
#[derive(Clone, Debug)]
pub struct Fence {
    cfg: FenceConfig,
    state: LeaseState,
    /// When (this member's clock) it applied the entry that set `state.version`.
    observed_at: u64,
    /// This member may stamp writes while `now < window_until`.
    window_until: u64,
    /// Active-active quorum window.
    quorum_until: u64,
    /// Switchover in progress, to this region.
    handing_over: Option<RegionId>,
    inflight: Option<Inflight>,
    last_sent: Option<u64>,
    /// A grant or renewal answered before this member applied its epoch: (epoch, window end).
    pending: Option<(u64, u64)>,
    /// Answers to proposals sent before this time never open a window: set when a transfer is
    /// proposed, so a late answer to an earlier renewal cannot reopen a window the holder gave
    /// up (the transfer's target starts at once, without waiting for the old lease to end).
    sent_floor: u64,
    /// Windows open only under this epoch or a later one: set when this member learns that it
    /// handed the lease over (its applied state may not show it yet).
    min_epoch: u64,
    /// The newest answer, for status.
    last_answer: Option<Answer>,
}

impl Fence {
    /// A member that has applied nothing yet; `now_ms` starts the clock on the never-held lease.
    pub fn new(cfg: FenceConfig, now_ms: u64) -> Self {
        Self {
            cfg,
            state: LeaseState::default(),
            observed_at: now_ms,
            window_until: 0,
            quorum_until: 0,
            handing_over: None,
            inflight: None,
            last_sent: None,
            pending: None,
            sent_floor: 0,
            min_epoch: 0,
            last_answer: None,
        }
    }

    pub fn config(&self) -> &FenceConfig {
        &self.cfg
    }

    /// The newest applied state.
    pub fn state(&self) -> &LeaseState {
        &self.state
    }

    /// The region the write lease names, if any.
    pub fn holder(&self) -> Option<&RegionId> {
        self.state.holder.as_ref()
    }

    /// The member applied `state` (from the control group) at `now_ms`.
    pub fn on_applied(&mut self, now_ms: u64, state: &LeaseState) {
        if state.version != self.state.version || state.epoch != self.state.epoch {
            self.observed_at = now_ms;
        }
        let mine = state.holder.as_ref() == Some(&self.cfg.me);
        if !mine || state.epoch != self.state.epoch {
            // Not (or no longer, or under a new epoch) ours: a window of an earlier epoch never
            // carries over. (By the protocol it has ended anyway.)
            self.window_until = 0;
        }
        if let Some((epoch, until)) = self.pending {
            if mine && epoch == state.epoch {
                self.window_until = self.window_until.max(until);
            }
            if epoch <= state.epoch {
                self.pending = None;
            }
        }
        if self.handing_over.is_some() && !mine {
            self.handing_over = None;
        }
        self.state = state.clone();
    }

    /// Whether the lease is expired from this member's view: nobody renewed it for
    /// [`FenceConfig::expiry_wait_ms`]. A never-held lease expires likewise from start.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.observed_at) >= self.cfg.expiry_wait_ms()
    }

    /// Until the lease could end, from this member's view (0 when expired).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        (self.observed_at + self.cfg.expiry_wait_ms()).saturating_sub(now_ms)
    }

    /// This member's own write window left (0 when none).
    pub fn window_left_ms(&self, now_ms: u64) -> u64 {
        self.window_until.saturating_sub(now_ms)
    }

    /// Active-active: quorum window left.
    pub fn quorum_left_ms(&self, now_ms: u64) -> u64 {
        self.quorum_until.saturating_sub(now_ms)
    }

    pub fn handing_over(&self) -> Option<&RegionId> {
        self.handing_over.as_ref()
    }

    pub fn last_answer(&self) -> Option<&Answer> {
        self.last_answer.as_ref()
    }

    /// The role now.
    pub fn role(&self, now_ms: u64) -> Role {
        match self.cfg.topology {
            Topology::ActiveActive { quorum } => {
                if quorum && now_ms >= self.quorum_until {
                    Role::ReadOnly
                } else {
                    Role::Active
                }
            }
            t => {
                if self.state.holder.as_ref() == Some(&self.cfg.me) {
                    if self.handing_over.is_none() && now_ms < self.window_until {
                        Role::Primary
                    } else {
                        Role::Fenced
                    }
                } else if t == Topology::ActivePassive {
                    Role::Passive
                } else {
                    Role::Standby
                }
            }
        }
    }

    /// May this member stamp a write now? `read_only_on_minority`: the keyspace's
    /// `on_minority` (active-active only). `Ok(epoch)` is the epoch to stamp the write with.
    pub fn permit(&self, now_ms: u64, read_only_on_minority: bool) -> Result<u64, Denial> {
        match self.cfg.topology {
            Topology::ActiveActive { quorum } => {
                if quorum && read_only_on_minority && now_ms >= self.quorum_until {
                    Err(Denial::Minority)
                } else {
                    Ok(0)
                }
            }
            _ => {
                if self.state.holder.as_ref() != Some(&self.cfg.me) {
                    return Err(Denial::NotPrimary {
                        holder: self.state.holder.clone(),
                    });
                }
                if self.handing_over.is_some()
                    || now_ms >= self.window_until
                    || self.state.epoch < self.min_epoch
                {
                    return Err(Denial::NoWindow {
                        handing_over: self.handing_over.is_some(),
                    });
                }
                Ok(self.state.epoch)
            }
        }
    }

    fn send(&mut self, now_ms: u64, cmd: Command) -> Command {
        self.inflight = Some(Inflight {
            cmd: cmd.clone(),
            sent_at: now_ms,
        });
        self.last_sent = Some(now_ms);
        cmd
    }

    fn busy(&mut self, now_ms: u64) -> bool {
        match &self.inflight {
            Some(i) if now_ms.saturating_sub(i.sent_at) < self.cfg.propose_timeout_ms => true,
            Some(_) => {
                // Given up: its outcome is unknown, which changes nothing here (a late
                // answer is ignored; only answered proposals open windows).
                self.inflight = None;
                false
            }
            None => false,
        }
    }

    fn due(&self, now_ms: u64) -> bool {
        self.last_sent
            .is_none_or(|s| now_ms.saturating_sub(s) >= self.cfg.renew_every_ms)
    }

    /// What to propose now, if anything. The caller sends the command to the control group and
    /// reports the outcome with [`Fence::on_answer`] (the send time is `now_ms`).
    /// `fence_ts_ms`: the member's HLC wall time plus the maximum clock offset, for an `Acquire`.
    /// `view`: for automated promotion (active-standby), `None` when not known.
    pub fn tick(
        &mut self,
        now_ms: u64,
        fence_ts_ms: u64,
        view: Option<&PromotionView>,
    ) -> Option<Command> {
        if self.busy(now_ms) {
            return None;
        }
        let me = self.cfg.me.clone();
        match self.cfg.topology {
            Topology::ActiveActive { quorum } => {
                if quorum && self.due(now_ms) {
                    return Some(self.send(now_ms, Command::Presence { region: me }));
                }
                None
            }
            topology => {
                if self.state.holder.as_ref() == Some(&me) {
                    if self.handing_over.is_none() && self.due(now_ms) {
                        let epoch = self.state.epoch;
                        return Some(self.send(now_ms, Command::Renew { region: me, epoch }));
                    }
                    return None;
                }
                if self.state.version == 0 && me == self.cfg.initial_primary {
                    return Some(self.send(
                        now_ms,
                        Command::Acquire {
                            region: me,
                            epoch: 1,
                            expect_version: 0,
                            fence_ts_ms,
                            reason: PromotionReason::Initial,
                        },
                    ));
                }
                if topology != Topology::ActiveStandby || !self.expired(now_ms) {
                    return None;
                }
                let view = view?;
                if !self.eligible(now_ms, view) {
                    return None;
                }
                let lag = view.lag();
                let bound = self.lag_bound_ms(now_ms, view);
                let cmd = Command::Acquire {
                    region: me,
                    epoch: self.state.epoch + 1,
                    expect_version: self.state.version,
                    fence_ts_ms,
                    reason: PromotionReason::Automatic {
                        lag_ops: lag.ops,
                        lag_ms: bound.unwrap_or(0),
                    },
                };
                Some(self.send(now_ms, cmd))
            }
        }
    }

    fn rank(&self, region: &RegionId) -> usize {
        self.cfg
            .regions
            .iter()
            .position(|r| r == region)
            .unwrap_or(usize::MAX)
    }

    /// Automated promotion: within the lag bound and no reachable member further ahead (ties
    /// to the earlier region in the config).
    fn eligible(&self, now_ms: u64, view: &PromotionView) -> bool {
        if self.lag_blocked(now_ms, view) {
            return false;
        }
        let holder = self.state.holder.as_ref();
        let my_rank = self.rank(&self.cfg.me);
        !view.others.iter().any(|(r, applied)| {
            Some(r) != holder
                && r != &self.cfg.me
                && (*applied > view.my_applied
                    || (*applied == view.my_applied && self.rank(r) < my_rank))
        })
    }

    /// The RPO guard: this member is too far behind (or cannot tell) to be promoted
    /// automatically.
    pub fn lag_blocked(&self, now_ms: u64, view: &PromotionView) -> bool {
        if self.state.holder.is_none() {
            // Never held: nothing to lose.
            return false;
        }
        match self.lag_bound_ms(now_ms, view) {
            Some(ms) => ms > self.cfg.max_promotion_lag_ms,
            None => true,
        }
    }

    /// How much of the holder's writes this member may lack, in ms of the holder's writing:
    /// the larger of what its last head said ([`PromotionView::lag`]) and the time the holder
    /// could have written unheard. The holder may write until its window ends, at most
    /// `lease - margin` after the last renewal this member applied; writes after the last
    /// heartbeat this member heard from it are unknown here, even if it said it was caught up
    /// (a partition between the two regions while the holder still reaches the control group).
    /// `None`: unknown (never heard from the holder).
    pub fn lag_bound_ms(&self, now_ms: u64, view: &PromotionView) -> Option<u64> {
        let known = view.lag().ms?;
        let since_applied = now_ms.saturating_sub(self.observed_at);
        let unheard = view
            .since_holder_heard_ms
            .map(|h| (h + self.cfg.window_ms()).saturating_sub(since_applied))?;
        Some(known.max(unheard))
    }

    /// Active-standby: the lease is expired and this standby would be promoted but for the lag
    /// bound (what the "standby lag above max_promotion_lag" alert reports).
    pub fn promotion_blocked(&self, now_ms: u64, view: &PromotionView) -> bool {
        self.cfg.topology == Topology::ActiveStandby
            && self.state.holder.as_ref() != Some(&self.cfg.me)
            && self.expired(now_ms)
            && self.lag_blocked(now_ms, view)
    }

    /// The answer to the proposal sent at `sent_at` arrived (`None`: it failed or timed out,
    /// outcome unknown).
    pub fn on_answer(&mut self, now_ms: u64, sent_at: u64, cmd: &Command, answer: Option<&Answer>) {
        let _ = now_ms;
        if self
            .inflight
            .as_ref()
            .is_some_and(|i| i.sent_at == sent_at && &i.cmd == cmd)
        {
            self.inflight = None;
        }
        let window_end = sent_at + self.cfg.window_ms();
        let opens = sent_at >= self.sent_floor;
        match (cmd, answer) {
            (Command::Renew { region, epoch }, Some(Answer::Renewed { epoch: e, .. }))
            | (Command::Acquire { region, epoch, .. }, Some(Answer::Granted { epoch: e, .. }))
                if region == &self.cfg.me && epoch == e && opens && *e >= self.min_epoch =>
            {
                // A window opens only under the epoch the member has applied; an answer that
                // overtook the apply waits for it.
                if self.state.epoch == *e && self.state.holder.as_ref() == Some(&self.cfg.me) {
                    self.window_until = self.window_until.max(window_end);
                } else if *e > self.state.epoch {
                    let until = self.pending.map_or(window_end, |(pe, pu)| {
                        if pe == *e {
                            pu.max(window_end)
                        } else {
                            window_end
                        }
                    });
                    self.pending = Some((*e, until));
                }
            }
            (Command::Presence { region }, Some(Answer::Present))
                if region == &self.cfg.me && opens =>
            {
                self.quorum_until = self.quorum_until.max(window_end);
            }
            (Command::Transfer { .. }, Some(Answer::Transferred { epoch, .. })) => {
                self.window_until = 0;
                self.pending = None;
                self.min_epoch = self.min_epoch.max(*epoch + 1);
            }
            (Command::Transfer { .. }, Some(Answer::Refused(_))) => {
                // Still the holder (or not): resume; the window, if any, is still valid.
                self.handing_over = None;
            }
            (Command::Transfer { .. }, None) => {
                // Unknown: stay stopped until a renewal answers; a renewal applied before the
                // transfer makes the transfer stale, one applied after it is refused.
                self.window_until = 0;
                self.handing_over = None;
            }
            _ => {}
        }
        if let Some(a) = answer {
            self.last_answer = Some(a.clone());
        }
    }

    /// `atoll promote`: the command to propose, or why not.
    pub fn promote(
        &mut self,
        now_ms: u64,
        fence_ts_ms: u64,
        view: &PromotionView,
        accept_data_loss: bool,
    ) -> Result<Command, PromoteRefusal> {
        if !self.cfg.topology.leased() {
            return Err(PromoteRefusal::NotLeased);
        }
        if self.state.holder.as_ref() == Some(&self.cfg.me) {
            return Err(PromoteRefusal::AlreadyPrimary);
        }
        if let Some(holder) = &self.state.holder
            && !self.expired(now_ms)
        {
            return Err(PromoteRefusal::LeaseHeld {
                holder: holder.clone(),
                remaining_ms: self.remaining_ms(now_ms),
            });
        }
        if self.busy(now_ms) {
            return Err(PromoteRefusal::Busy);
        }
        let lag = if self.state.holder.is_some() {
            view.lag()
        } else {
            Lag {
                ops: 0,
                ms: Some(0),
            }
        };
        let lossless = lag.ops == 0 && lag.ms == Some(0);
        if !lossless && !accept_data_loss {
            return Err(PromoteRefusal::DataLoss { lag });
        }
        let cmd = Command::Acquire {
            region: self.cfg.me.clone(),
            epoch: self.state.epoch + 1,
            expect_version: self.state.version,
            fence_ts_ms,
            reason: PromotionReason::Manual {
                exposure_ops: lag.ops,
                exposure_ms: lag.ms.unwrap_or(0),
            },
        };
        Ok(self.send(now_ms, cmd))
    }

    /// `atoll switchover TARGET`, step 1: stop stamping writes. The caller then waits until
    /// every stamped write is committed and the target has applied them, and calls
    /// [`Fence::transfer`].
    pub fn begin_handover(&mut self, target: &RegionId) -> Result<(), PromoteRefusal> {
        if !self.cfg.topology.leased() {
            return Err(PromoteRefusal::NotLeased);
        }
        if self.state.holder.as_ref() != Some(&self.cfg.me)
            || target == &self.cfg.me
            || self.state.epoch < self.min_epoch
        {
            return Err(PromoteRefusal::NotHolder {
                holder: self.state.holder.clone(),
            });
        }
        self.handing_over = Some(target.clone());
        Ok(())
    }

    /// Abandons a handover before the transfer was proposed (the target did not catch up in
    /// time): writes resume within the window that is left.
    pub fn abort_handover(&mut self) {
        if self
            .inflight
            .as_ref()
            .is_none_or(|i| i.cmd.kind() != "transfer")
        {
            self.handing_over = None;
        }
    }

    /// Step 2: the transfer command (the caller checked the target caught up).
    pub fn transfer(&mut self, now_ms: u64, fence_ts_ms: u64) -> Result<Command, PromoteRefusal> {
        let Some(to) = self.handing_over.clone() else {
            return Err(PromoteRefusal::NotHolder {
                holder: self.state.holder.clone(),
            });
        };
        if self.state.holder.as_ref() != Some(&self.cfg.me) {
            return Err(PromoteRefusal::NotHolder {
                holder: self.state.holder.clone(),
            });
        }
        if self.busy(now_ms) {
            return Err(PromoteRefusal::Busy);
        }
        let cmd = Command::Transfer {
            from: self.cfg.me.clone(),
            to,
            epoch: self.state.epoch + 1,
            expect_version: self.state.version,
            fence_ts_ms,
        };
        // From here on, only renewals sent after the transfer's outcome is known open windows.
        self.window_until = 0;
        self.pending = None;
        self.sent_floor = now_ms + 1;
        Ok(self.send(now_ms, cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    fn cfg(me: &str, t: Topology) -> FenceConfig {
        FenceConfig::new(r(me), t, vec![r("a"), r("b"), r("c")], r("a"))
    }

    #[test]
    fn state_machine_checks_every_precondition() {
        let mut s = LeaseState::default();
        assert_eq!(
            s.apply(&Command::Renew {
                region: r("a"),
                epoch: 0
            }),
            Answer::Refused(Refused::NotHolder { holder: None })
        );
        let acquire = |region: &str, epoch, expect_version| Command::Acquire {
            region: r(region),
            epoch,
            expect_version,
            fence_ts_ms: 100,
            reason: PromotionReason::Initial,
        };
        assert_eq!(
            s.apply(&acquire("a", 1, 0)),
            Answer::Granted {
                epoch: 1,
                version: 1
            }
        );
        // A second acquisition timed from the same version is stale.
        assert_eq!(
            s.apply(&acquire("b", 2, 0)),
            Answer::Refused(Refused::StaleVersion { current: 1 })
        );
        assert_eq!(
            s.apply(&acquire("b", 3, 1)),
            Answer::Refused(Refused::WrongEpoch { current: 1 })
        );
        assert_eq!(
            s.apply(&Command::Renew {
                region: r("a"),
                epoch: 1
            }),
            Answer::Renewed {
                epoch: 1,
                version: 2
            }
        );
        assert_eq!(
            s.apply(&acquire("b", 2, 2)),
            Answer::Granted {
                epoch: 2,
                version: 3
            }
        );
        // The old holder's renewal is refused after the supersession.
        assert_eq!(
            s.apply(&Command::Renew {
                region: r("a"),
                epoch: 1
            }),
            Answer::Refused(Refused::NotHolder {
                holder: Some(r("b"))
            })
        );
        assert_eq!(s.history.len(), 2);
        assert_eq!(s.history[1].previous, Some(r("a")));
        assert!(s.is_late(1, 101));
        assert!(!s.is_late(1, 100));
        assert!(!s.is_late(2, 10_000));
        assert!(!s.is_late(0, 10_000));
    }

    #[test]
    fn encodings_are_versioned() {
        let cmd = Command::Presence { region: r("a") };
        let bytes = encode_command(&cmd).unwrap();
        assert_eq!(bytes[0], FENCE_FORMAT_VERSION);
        assert_eq!(decode_command(&bytes).unwrap(), cmd);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(
            decode_command(&bad).unwrap_err().code(),
            "ATOLL-FORMAT-TOO-NEW"
        );
        assert_eq!(decode_command(&[]).unwrap_err().code(), "ATOLL-CORRUPT");
        assert_eq!(
            decode_command(&[1, 250, 250]).unwrap_err().code(),
            "ATOLL-CORRUPT"
        );
        let st = LeaseState::default();
        assert_eq!(decode_state(&encode_state(&st).unwrap()).unwrap(), st);
    }

    #[test]
    fn config_validation_names_the_problem() {
        let mut c = cfg("a", Topology::ActiveStandby);
        assert!(c.validate().is_ok());
        c.margin_ms = 5;
        assert!(c.validate().unwrap_err().contains("margin_ms"));
        c.margin_ms = 250;
        c.renew_every_ms = 3_000;
        assert!(c.validate().unwrap_err().contains("renew_every_ms"));
        c.renew_every_ms = 1_000;
        c.initial_primary = r("z");
        assert!(c.validate().unwrap_err().contains("initial_primary"));
    }

    #[test]
    fn holder_writes_only_inside_answered_renewals() {
        let mut f = Fence::new(cfg("a", Topology::ActiveStandby), 0);
        let cmd = f.tick(0, 0, None).unwrap();
        assert!(matches!(cmd, Command::Acquire { epoch: 1, .. }));
        assert_eq!(f.permit(1, false), Err(Denial::NotPrimary { holder: None }));
        let mut st = LeaseState::default();
        let ans = st.apply(&cmd);
        f.on_applied(5, &st);
        // Applied but not answered: no window yet.
        assert_eq!(f.role(5), Role::Fenced);
        f.on_answer(6, 0, &cmd, Some(&ans));
        assert_eq!(f.permit(6, false), Ok(1));
        assert_eq!(f.role(6), Role::Primary);
        // The window ends at send time + D - M.
        assert_eq!(f.permit(4_749, false), Ok(1));
        assert!(f.permit(4_750, false).is_err());
        // Renewal answered late still counts from its send time.
        let renew = f.tick(1_000, 0, None).unwrap();
        let ans = st.apply(&renew);
        f.on_applied(1_100, &st);
        f.on_answer(3_000, 1_000, &renew, Some(&ans));
        assert_eq!(f.window_left_ms(3_000), 2_750);
        // A renewal with no answer opens nothing.
        let renew = f.tick(3_000, 0, None).unwrap();
        f.on_answer(6_000, 3_000, &renew, None);
        assert!(f.permit(5_750, false).is_err());
    }

    #[test]
    fn standby_acquires_only_after_the_expiry_wait_and_when_most_caught_up() {
        let mut f = Fence::new(cfg("b", Topology::ActiveStandby), 0);
        let mut st = LeaseState::default();
        st.apply(&Command::Acquire {
            region: r("a"),
            epoch: 1,
            expect_version: 0,
            fence_ts_ms: 0,
            reason: PromotionReason::Initial,
        });
        f.on_applied(100, &st);
        let view = PromotionView {
            holder_head: Some(10),
            holder_watermark_ms: Some(5_000),
            my_applied: 10,
            my_claim_ms: Some(5_000),
            others: vec![(r("c"), 10)],
            since_holder_heard_ms: Some(0),
        };
        let wait = f.config().expiry_wait_ms();
        assert_eq!(f.tick(100 + wait - 1, 0, Some(&view)), None);
        assert_eq!(f.role(100), Role::Standby);
        // c is as caught up but listed later: b goes.
        let cmd = f.tick(100 + wait, 7, Some(&view)).unwrap();
        assert!(matches!(
            cmd,
            Command::Acquire {
                epoch: 2,
                expect_version: 1,
                fence_ts_ms: 7,
                ..
            }
        ));
        // c, further ahead, would win instead.
        let mut g = Fence::new(cfg("b", Topology::ActiveStandby), 0);
        g.on_applied(100, &st);
        let ahead = PromotionView {
            others: vec![(r("c"), 11)],
            since_holder_heard_ms: Some(0),
            ..view.clone()
        };
        assert_eq!(g.tick(100 + wait, 0, Some(&ahead)), None);
        // Too far behind: blocked.
        let behind = PromotionView {
            holder_head: Some(20),
            holder_watermark_ms: Some(20_000),
            my_applied: 10,
            my_claim_ms: Some(5_000),
            others: vec![],
            since_holder_heard_ms: Some(0),
        };
        assert!(g.promotion_blocked(100 + wait, &behind));
        assert_eq!(g.tick(100 + wait, 0, Some(&behind)), None);
    }

    #[test]
    fn writes_the_standby_never_heard_of_count_as_lag() {
        let mut f = Fence::new(cfg("b", Topology::ActiveStandby), 0);
        let mut st = LeaseState::default();
        st.apply(&Command::Acquire {
            region: r("a"),
            epoch: 1,
            expect_version: 0,
            fence_ts_ms: 0,
            reason: PromotionReason::Initial,
        });
        f.on_applied(100, &st);
        let wait = f.config().expiry_wait_ms();
        let now = 100 + wait;
        // Its last heartbeat said b had everything, but b has not heard it for 8 s while its
        // renewals kept coming: up to 8 s of writes unknown here.
        let silent = PromotionView {
            holder_head: Some(10),
            holder_watermark_ms: Some(5_000),
            my_applied: 10,
            my_claim_ms: Some(5_000),
            others: vec![],
            since_holder_heard_ms: Some(8_000 + wait),
        };
        assert_eq!(silent.lag().ms, Some(0));
        assert_eq!(
            f.lag_bound_ms(now, &silent),
            Some(8_000 + f.config().window_ms())
        );
        assert!(f.promotion_blocked(now, &silent));
        assert_eq!(f.tick(now, 0, Some(&silent)), None);
        // A primary that died just after its last renewal: within the default bound.
        let died = PromotionView {
            since_holder_heard_ms: Some(wait + 900),
            ..silent.clone()
        };
        assert!(!f.promotion_blocked(now, &died));
        assert!(f.tick(now, 0, Some(&died)).is_some());
        // Never heard from it: unknown, blocked.
        let never = PromotionView {
            since_holder_heard_ms: None,
            ..silent
        };
        assert!(f.promotion_blocked(now + 1, &never));
    }

    #[test]
    fn passive_regions_never_promote_themselves() {
        let mut f = Fence::new(cfg("b", Topology::ActivePassive), 0);
        let mut st = LeaseState::default();
        st.apply(&Command::Acquire {
            region: r("a"),
            epoch: 1,
            expect_version: 0,
            fence_ts_ms: 0,
            reason: PromotionReason::Initial,
        });
        f.on_applied(0, &st);
        let view = PromotionView {
            holder_head: Some(1),
            holder_watermark_ms: Some(1),
            my_applied: 1,
            my_claim_ms: Some(1),
            others: vec![],
            since_holder_heard_ms: Some(0),
        };
        assert_eq!(f.tick(1_000_000, 0, Some(&view)), None);
        assert_eq!(f.role(1_000_000), Role::Passive);
        // Manual promotion: refused during a healthy lease, with data loss, then accepted.
        let mut g = Fence::new(cfg("b", Topology::ActivePassive), 0);
        g.on_applied(0, &st);
        assert!(matches!(
            g.promote(10, 0, &view, false),
            Err(PromoteRefusal::LeaseHeld { .. })
        ));
        let behind = PromotionView {
            holder_head: Some(5),
            ..view.clone()
        };
        let late = g.config().expiry_wait_ms();
        assert!(matches!(
            g.promote(late, 0, &behind, false),
            Err(PromoteRefusal::DataLoss {
                lag: Lag { ops: 4, .. }
            })
        ));
        let cmd = g.promote(late, 0, &behind, true).unwrap();
        assert!(matches!(
            cmd,
            Command::Acquire {
                reason: PromotionReason::Manual {
                    exposure_ops: 4,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn quorum_fencing_closes_read_only_keyspaces_only() {
        let mut f = Fence::new(cfg("a", Topology::ActiveActive { quorum: true }), 0);
        assert_eq!(f.permit(0, true), Err(Denial::Minority));
        assert_eq!(f.permit(0, false), Ok(0));
        let cmd = f.tick(0, 0, None).unwrap();
        f.on_answer(10, 0, &cmd, Some(&Answer::Present));
        assert_eq!(f.permit(10, true), Ok(0));
        assert_eq!(f.role(10), Role::Active);
        assert_eq!(f.role(4_750), Role::ReadOnly);
        let mut off = Fence::new(cfg("a", Topology::ActiveActive { quorum: false }), 0);
        assert_eq!(off.tick(0, 0, None), None);
        assert_eq!(off.permit(0, true), Ok(0));
    }

    #[test]
    fn switchover_stops_writes_before_proposing() {
        let mut f = Fence::new(cfg("a", Topology::ActiveStandby), 0);
        let mut st = LeaseState::default();
        let cmd = f.tick(0, 0, None).unwrap();
        let ans = st.apply(&cmd);
        f.on_applied(1, &st);
        f.on_answer(1, 0, &cmd, Some(&ans));
        assert!(f.permit(2, false).is_ok());
        f.begin_handover(&r("b")).unwrap();
        assert_eq!(
            f.permit(2, false),
            Err(Denial::NoWindow { handing_over: true })
        );
        assert_eq!(
            f.tick(2_000, 0, None),
            None,
            "no renewals while handing over"
        );
        let t = f.transfer(2_000, 0).unwrap();
        let ans = st.apply(&t);
        assert!(matches!(ans, Answer::Transferred { epoch: 2, .. }));
        f.on_answer(2_010, 2_000, &t, Some(&ans));
        f.on_applied(2_010, &st);
        assert_eq!(f.role(2_010), Role::Standby);
        assert!(f.permit(2_010, false).is_err());
        assert!(matches!(
            f.begin_handover(&r("c")),
            Err(PromoteRefusal::NotHolder { .. })
        ));
    }
}
