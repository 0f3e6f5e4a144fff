//! Fenced runs: the modelled control group and each region's fencing loop, driven the way
//! `atoll-server`'s `fencing.rs` drives the production [`Fence`] (see [`crate::fencing`] for the
//! model and its limits).
//!
//! - **fence tick** (every `renew_every_ms / 4`, at most 250 ms, per region): apply what the
//!   group committed and the region can see, move a switchover on, then `Fence::tick` with the
//!   region's monotonic now, its HLC-based `fence_ts` and the real
//!   `ReplCore::promotion_view(holder, now)`; a command it returns is proposed.
//! - **propose**: after a delay (to a relay, then a round trip to a quorum, sometimes a slow
//!   leader), the proposal commits if the commit rule holds; every region is told to apply it
//!   after its own delay; the answer travels back (or is lost). The proposer learns the answer,
//!   or nothing at its propose timeout.
//! - **operator** (random): a switchover of the holder to a random region (`begin_handover`,
//!   then `transfer` once the target's heartbeats show it applied the holder's head, or
//!   `abort_handover` after a timeout), or `atoll promote` (active-passive; active-standby only
//!   when the lag bound blocks the automatic promotion), with or without `--accept-data-loss`.
//!
//! After every event the fencing checkers sample every region's `permit`.

use super::{Event, Sim};
use crate::check::{self, Invariant, Permit, Violation};
use crate::fencing::{self, Drift, FencingReport, Gate, MonoClock, Promotion, SharedFence, Window};
use crate::model::Stamp;
use crate::trace::kind;
use atoll_core::RegionId;
use atoll_core::fence::{
    Answer, Command, Fence, LeaseState, PromoteRefusal, PromotionReason, PromotionView, Topology,
};
use atoll_core::op::OpEntry;
use atoll_store::WriteGate;
use rand::RngExt;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

/// One region's fencing.
pub(super) struct Member {
    /// The region's current `Fence` (a fresh one at every start), shared with its store's gate.
    fence: SharedFence,
    /// The region's monotonic now, as the gate reads it.
    mono: Arc<AtomicU64>,
    clock: MonoClock,
    /// Log entries applied (the raft log is durable: this survives a crash).
    applied: usize,
    /// Acts only once it has applied a state (restored or from the group).
    ready: bool,
    /// Bumped at every crash: answers to an earlier incarnation's proposals are not heard.
    incarnation: u64,
    handover: Option<Handover>,
}

#[derive(Clone, Copy, Debug)]
struct Handover {
    target: usize,
    /// The holder's head when it stopped stamping.
    head: u64,
    deadline_ms: u64,
}

#[derive(Clone, Copy, Debug)]
enum Extra {
    None,
    /// An acquisition (automatic or manual) of a lease another region held.
    Promotion {
        missing_ops_at_send: u64,
        accept: bool,
    },
    Handover {
        target: usize,
        head: u64,
    },
}

struct Proposal {
    from: usize,
    incarnation: u64,
    cmd: Command,
    sent_mono: u64,
    sent_true: u64,
    /// The proposer learned the outcome (an answer, or its timeout).
    settled: bool,
    extra: Extra,
}

struct Entry {
    state: LeaseState,
    /// When each region may apply it (commit time plus the delay from the committing member).
    visible_at: Vec<u64>,
}

/// The modelled control group and the fencing of every region.
pub(super) struct Control {
    opts: fencing::FencingOptions,
    members: Vec<Member>,
    witness_up: bool,
    /// The group's state (every committed command applied in log order).
    state: LeaseState,
    log: Vec<Entry>,
    proposals: Vec<Proposal>,
    windows: Vec<Window>,
    /// Per region: the open window (index into `windows`) and when it runs out in true time.
    open: Vec<Option<(usize, u64)>>,
    /// Active-active quorum fencing: per region, the send time (true) of its newest presence
    /// that committed (that reached a majority).
    presence_sent: Vec<Option<u64>>,
    promotions: Vec<Promotion>,
    /// Epochs taken by `atoll promote --accept-data-loss`.
    forced_epochs: Vec<u64>,
    /// A sampled violation was recorded (one is enough; the run fails on it).
    sampled_violation: bool,
}

fn kind_code(cmd: &Command) -> u64 {
    match cmd {
        Command::Acquire { .. } => 1,
        Command::Renew { .. } => 2,
        Command::Transfer { .. } => 3,
        Command::Presence { .. } => 4,
    }
}

impl Sim {
    fn ctl(&self) -> Option<&Control> {
        self.fen.as_deref()
    }

    /// Sets up fencing (fenced runs only: no random draw otherwise).
    pub(super) fn fencing_init(&mut self) {
        let Some(f) = self.opts.fencing.clone() else {
            return;
        };
        let n = self.regions.len();
        let rho = f.max_drift_ppm as i64;
        let mut members = Vec::with_capacity(n);
        for r in 0..n {
            let drift_ppm = match &f.drift {
                Drift::Fixed(v) => v.get(r).copied().unwrap_or(0),
                Drift::Random => match self.rng.random_range(0..3u32) {
                    0 => -rho,
                    1 => rho,
                    _ => self.rng.random_range(-rho..=rho),
                },
            };
            let clock = MonoClock {
                base: self.rng.random_range(0..1_000_000u64),
                drift_ppm,
            };
            let cfg = f.fence_config(self.ids[r].clone(), self.ids.clone());
            members.push(Member {
                fence: Arc::new(Mutex::new(Fence::new(cfg, clock.at(0)))),
                mono: Arc::new(AtomicU64::new(clock.at(0))),
                clock,
                applied: 0,
                ready: true,
                incarnation: 0,
                handover: None,
            });
        }
        self.fen = Some(Box::new(Control {
            opts: f,
            members,
            witness_up: true,
            state: LeaseState::default(),
            log: Vec::new(),
            proposals: Vec::new(),
            windows: Vec::new(),
            open: vec![None; n],
            presence_sent: vec![None; n],
            promotions: Vec::new(),
            forced_epochs: Vec::new(),
            sampled_violation: false,
        }));
    }

    /// The first fence tick of every region and the first operator action.
    pub(super) fn fencing_schedule(&mut self) {
        let Some((tick, gap)) = self
            .ctl()
            .map(|c| (c.opts.tick_ms(), c.opts.operator_gap_ms))
        else {
            return;
        };
        for r in 0..self.regions.len() {
            let at = self.rng.random_range(0..tick);
            self.schedule(at, Event::FenceTick(r));
        }
        if let Some((lo, hi)) = gap {
            let at = self.rng.random_range(lo..=hi);
            self.schedule(at, Event::Operator);
        }
    }

    /// Sets every region's monotonic now (what its gate reads).
    pub(super) fn set_mono_clocks(&self) {
        if let Some(c) = self.ctl() {
            for m in &c.members {
                m.mono.store(m.clock.at(self.now), AtomicOrdering::SeqCst);
            }
        }
    }

    /// Region `r`'s monotonic clock now (fenced runs).
    pub fn mono_ms(&self, r: usize) -> Option<u64> {
        self.ctl().map(|c| c.members[r].clock.at(self.now))
    }

    /// Region `r`'s fence (fenced runs): role, holder, windows.
    pub fn fence(&self, r: usize) -> Option<Fence> {
        self.ctl()
            .map(|c| fencing::lock(&c.members[r].fence).clone())
    }

    /// The control group's state (fenced runs).
    pub fn lease_state(&self) -> Option<&LeaseState> {
        self.ctl().map(|c| &c.state)
    }

    /// Every write window so far (leased topologies).
    pub fn windows(&self) -> &[Window] {
        self.ctl().map_or(&[], |c| &c.windows)
    }

    /// Whether region `r` may stamp a write now (fenced runs; `read_only`: the keyspace is
    /// `on_minority = "read-only"`): the epoch, or `None`.
    pub fn permit(&self, r: usize, read_only: bool) -> Option<u64> {
        let c = self.ctl()?;
        if !self.is_up(r) {
            return None;
        }
        let m = &c.members[r];
        fencing::lock(&m.fence)
            .permit(m.clock.at(self.now), read_only)
            .ok()
    }

    /// The region holding a write window now, if exactly one does.
    pub fn primary(&self) -> Option<usize> {
        let w: Vec<usize> = (0..self.regions.len())
            .filter(|&r| self.permit(r, false).is_some())
            .collect();
        (w.len() == 1).then(|| w[0])
    }

    /// `atoll switchover` on region `r` (the holder), to `target`: stops its writes now; the
    /// fencing loop transfers the lease once `target` caught up, or gives up after the timeout.
    pub fn begin_switchover(&mut self, r: usize, target: usize) -> Result<(), PromoteRefusal> {
        let now = self.now;
        let head = self.applied(r).get(&self.ids[r]);
        let target_id = self.ids[target].clone();
        let Some(c) = self.fen.as_deref_mut() else {
            return Err(PromoteRefusal::NotLeased);
        };
        let m = &mut c.members[r];
        fencing::lock(&m.fence).begin_handover(&target_id)?;
        m.handover = Some(Handover {
            target,
            head,
            deadline_ms: now + c.opts.handover_timeout_ms,
        });
        self.trace
            .ev(&[kind::SWITCHOVER, now, r as u64, target as u64, head]);
        self.trace.line(now, || {
            format!(
                "{} begins a switchover to {} at head {head}",
                self.ids[r], self.ids[target]
            )
        });
        Ok(())
    }

    /// `atoll promote` on region `r`: proposes the acquisition, or says why not.
    pub fn promote(&mut self, r: usize, accept_data_loss: bool) -> Result<(), PromoteRefusal> {
        if self.fen.is_none() {
            return Err(PromoteRefusal::NotLeased);
        }
        if !self.is_up(r) {
            return Err(PromoteRefusal::Busy);
        }
        self.sync_core(r);
        let local = self.local_ms(r);
        let mono = self.mono_ms(r).unwrap_or(0);
        let fence_ts = self.fence_ts(r);
        let Some(c) = self.ctl() else {
            return Err(PromoteRefusal::NotLeased);
        };
        let fence = c.members[r].fence.clone();
        let holder = fencing::lock(&fence).holder().cloned();
        let view = match (&holder, self.regions[r].node.as_ref()) {
            (Some(h), Some(node)) => node.driver.core().promotion_view(h, local),
            _ => PromotionView::default(),
        };
        let cmd = fencing::lock(&fence).promote(mono, fence_ts, &view, accept_data_loss);
        let cmd = match cmd {
            Ok(cmd) => cmd,
            Err(e) => {
                self.trace.ev(&[kind::PROMOTE, self.now, r as u64]);
                self.trace.line(self.now, || {
                    format!("promote {} refused: {e:?}", self.ids[r])
                });
                return Err(e);
            }
        };
        let missing = self.missing_of(r, holder.as_ref());
        self.propose(
            r,
            cmd,
            Extra::Promotion {
                missing_ops_at_send: missing,
                accept: accept_data_loss,
            },
        );
        Ok(())
    }

    /// The witness's node index (for partitions), if the run has one.
    pub fn witness(&self) -> Option<usize> {
        self.ctl()
            .filter(|c| c.opts.witness)
            .map(|_| self.regions.len())
    }

    pub(super) fn witness_up(&self) -> bool {
        self.ctl().is_some_and(|c| c.witness_up)
    }

    /// Brings the witness down (a crash: it keeps its log) or back up.
    pub fn set_witness_up(&mut self, up: bool) {
        let now = self.now;
        if let Some(c) = self.fen.as_deref_mut()
            && c.opts.witness
            && c.witness_up != up
        {
            c.witness_up = up;
            self.trace.ev(&[kind::WITNESS, now, u64::from(up)]);
            self.trace.line(now, || {
                format!("witness {}", if up { "restarts" } else { "crashes" })
            });
        }
    }

    /// A fresh `Fence` for region `r` (re)starting now, restoring the log prefix it applied, and
    /// its store's gate.
    pub(super) fn fencing_on_start(&mut self, r: usize) -> Option<Arc<dyn WriteGate>> {
        let now = self.now;
        let ids = self.ids.clone();
        let c = self.fen.as_deref_mut()?;
        let cfg = c.opts.fence_config(ids[r].clone(), ids);
        let m = &mut c.members[r];
        let mono = m.clock.at(now);
        let mut fence = Fence::new(cfg, mono);
        if m.incarnation == 0 {
            // A fresh cluster: every member knows the log is empty.
            m.ready = true;
        } else if m.applied > 0 {
            fence.on_applied(mono, &c.log[m.applied - 1].state);
            m.ready = true;
        } else {
            m.ready = false;
        }
        m.fence = Arc::new(Mutex::new(fence));
        m.mono.store(mono, AtomicOrdering::SeqCst);
        m.handover = None;
        Some(Arc::new(Gate {
            fence: m.fence.clone(),
            mono: m.mono.clone(),
        }))
    }

    pub(super) fn fencing_on_crash(&mut self, r: usize) {
        if let Some(c) = self.fen.as_deref_mut() {
            let m = &mut c.members[r];
            m.incarnation += 1;
            m.ready = false;
            m.handover = None;
        }
    }

    fn node_up(&self, i: usize) -> bool {
        if i < self.regions.len() {
            self.is_up(i)
        } else {
            self.witness_up()
        }
    }

    /// Both directions between nodes `a` and `b` work and both run.
    fn mutual(&self, a: usize, b: usize) -> bool {
        if a == b {
            return self.node_up(a);
        }
        self.node_up(a) && self.node_up(b) && self.net.is_up(a, b) && self.net.is_up(b, a)
    }

    fn quorum(&self) -> usize {
        self.net.nodes() / 2 + 1
    }

    /// Node `c` and a majority of the voters (itself included) are mutually reachable.
    fn has_majority(&self, c: usize) -> bool {
        self.node_up(c)
            && (0..self.net.nodes()).filter(|&v| self.mutual(c, v)).count() >= self.quorum()
    }

    /// The member through which region `r` reaches the group now: itself if it has a majority,
    /// else the first member it reaches both ways that has one.
    fn contact(&self, r: usize) -> Option<usize> {
        if self.has_majority(r) {
            return Some(r);
        }
        (0..self.net.nodes()).find(|&c| c != r && self.mutual(r, c) && self.has_majority(c))
    }

    fn latency(&self, a: usize, b: usize) -> u64 {
        if a == b {
            0
        } else {
            self.net.link(a, b).latency_ms
        }
    }

    fn jitter(&mut self) -> u64 {
        self.rng.random_range(0..=self.opts.jitter_ms)
    }

    fn slow(&mut self) -> u64 {
        let Some((pct, ms)) = self.ctl().map(|c| (c.opts.slow_pct, c.opts.slow_ms)) else {
            return 0;
        };
        if self.rng.random_range(0..100u32) < pct {
            self.rng.random_range(0..=ms)
        } else {
            0
        }
    }

    /// How long a proposal of region `r` takes to reach the group and commit: to its contact,
    /// then a round trip to the nearest quorum, plus jitter and sometimes a slow leader.
    fn commit_delay(&mut self, r: usize) -> u64 {
        let base = match self.contact(r) {
            Some(c) => {
                let mut l: Vec<u64> = (0..self.net.nodes())
                    .filter(|&v| v != c)
                    .map(|v| self.latency(c, v))
                    .collect();
                l.sort_unstable();
                let k = self.quorum() - 1;
                let q = if k == 0 {
                    0
                } else {
                    l.get(k - 1).copied().unwrap_or(0)
                };
                self.latency(r, c) + 2 * q
            }
            None => self.rng.random_range(20..=200u64),
        };
        base + self.jitter() + self.slow()
    }

    /// How many of `holder`'s acknowledged writes region `r` has not applied (true).
    fn missing_of(&self, r: usize, holder: Option<&RegionId>) -> u64 {
        holder.map_or(0, |h| {
            let hi = self.ids.iter().position(|i| i == h).unwrap_or(r);
            self.applied(hi)
                .get(h)
                .saturating_sub(self.applied(r).get(h))
        })
    }

    /// `fence_ts` of region `r`: its HLC wall time plus the maximum clock offset.
    fn fence_ts(&self, r: usize) -> u64 {
        let local = self.local_ms(r);
        let hlc = self.regions[r].node.as_ref().map_or(local, |n| {
            n.store
                .stats()
                .hlc_wall_ms
                .load(AtomicOrdering::Relaxed)
                .max(local)
        });
        hlc + self.opts.max_clock_offset_ms
    }

    fn propose(&mut self, r: usize, cmd: Command, extra: Extra) {
        let now = self.now;
        let Some(c) = self.fen.as_deref_mut() else {
            return;
        };
        let m = &c.members[r];
        let sent_mono = m.clock.at(now);
        let timeout_at = m.clock.true_when(sent_mono + c.opts.control_timeout(), now);
        let id = c.proposals.len();
        let code = kind_code(&cmd);
        c.proposals.push(Proposal {
            from: r,
            incarnation: m.incarnation,
            cmd,
            sent_mono,
            sent_true: now,
            settled: false,
            extra,
        });
        self.stats.fence_proposals += 1;
        let delay = self.commit_delay(r);
        self.schedule(delay, Event::Propose(id));
        self.schedule(timeout_at - now, Event::ProposalTimeout(id));
        self.trace
            .ev(&[kind::PROPOSE, now, r as u64, code, id as u64, delay]);
        self.trace.line(now, || {
            let cmd = self.ctl().map(|c| &c.proposals[id].cmd);
            format!(
                "{} proposes #{id} {cmd:?} (its clock {sent_mono})",
                self.ids[r]
            )
        });
    }

    pub(super) fn on_propose(&mut self, id: usize) {
        let now = self.now;
        let Some((from, sent_true, lease, linger)) = self.ctl().map(|c| {
            let p = &c.proposals[id];
            (p.from, p.sent_true, c.opts.lease_ms, c.opts.linger_pct)
        }) else {
            return;
        };
        let Some(via) = self.contact(from) else {
            // Nobody with a majority hears the proposer: dropped, or stays in a leader's log and
            // is tried again (it may commit after the proposer gave up on it).
            if now - sent_true < 2 * lease && self.rng.random_range(0..100u32) < linger {
                let again = self.rng.random_range(100..=1_500u64);
                self.schedule(again, Event::Propose(id));
                self.trace
                    .ev(&[kind::PROPOSAL_ARRIVES, now, id as u64, again]);
            } else {
                self.stats.fence_dropped += 1;
                self.trace.ev(&[kind::PROPOSAL_ARRIVES, now, id as u64, 0]);
                self.trace
                    .line(now, || format!("proposal #{id} dropped: no majority"));
            }
            return;
        };
        let n = self.regions.len();
        let Some(c) = self.fen.as_deref_mut() else {
            return;
        };
        let previous = c.state.holder.clone();
        let cmd = c.proposals[id].cmd.clone();
        let answer = c.state.apply(&cmd);
        self.stats.fence_commits += 1;
        self.on_committed(id, &answer, previous);
        let mut visible_at = Vec::with_capacity(n);
        for q in 0..n {
            let d = if q == via {
                0
            } else {
                self.latency(via, q) + self.jitter()
            };
            visible_at.push(now + d);
            self.schedule(d, Event::ControlApply(q));
        }
        let (state, loss) = match self.ctl() {
            Some(c) => (c.state.clone(), c.opts.answer_loss_pct),
            None => return,
        };
        if let Some(c) = self.fen.as_deref_mut() {
            c.log.push(Entry { state, visible_at });
        }
        let index = self.ctl().map_or(0, |c| c.log.len());
        self.trace
            .ev(&[kind::COMMIT, now, id as u64, via as u64, index as u64]);
        self.trace.line(now, || {
            format!(
                "#{id} committed as entry {index} via {}: {answer:?}",
                self.node_name(via)
            )
        });
        if self.rng.random_range(0..100u32) < loss {
            self.stats.fence_answers_lost += 1;
            return;
        }
        let delay = self.latency(via, from) + self.jitter() + self.slow();
        self.schedule(delay, Event::Answer { id, answer, via });
    }

    /// Bookkeeping and checks of a committed command.
    fn on_committed(&mut self, id: usize, answer: &Answer, previous: Option<RegionId>) {
        let Some((from, sent_true, cmd, extra)) = self.ctl().map(|c| {
            let p = &c.proposals[id];
            (p.from, p.sent_true, p.cmd.clone(), p.extra)
        }) else {
            return;
        };
        match (&cmd, answer) {
            (Command::Presence { .. }, Answer::Present) => {
                let s = sent_true;
                if let Some(c) = self.fen.as_deref_mut() {
                    let slot = &mut c.presence_sent[from];
                    *slot = Some(slot.map_or(s, |t| t.max(s)));
                }
            }
            (Command::Acquire { reason, .. }, Answer::Granted { epoch, .. }) => {
                let Extra::Promotion {
                    missing_ops_at_send,
                    accept,
                } = extra
                else {
                    return;
                };
                let (manual, reported_ops, reported_ms) = match reason {
                    PromotionReason::Manual {
                        exposure_ops,
                        exposure_ms,
                    } => (true, *exposure_ops, *exposure_ms),
                    PromotionReason::Automatic { lag_ops, lag_ms } => (false, *lag_ops, *lag_ms),
                    _ => return,
                };
                let missing_ops_at_commit = self.missing_of(from, previous.as_ref());
                let missing_span_ms = previous.as_ref().and_then(|h| {
                    let applied = self.applied(from).get(h);
                    let mut theirs = self.history.stamps.iter().filter(|s| &s.region == h);
                    let first = theirs.find(|s| s.seq == applied + 1)?.at_ms;
                    let last = theirs.next_back().map_or(first, |s| s.at_ms);
                    Some(last - first)
                });
                let p = Promotion {
                    region: self.ids[from].clone(),
                    previous,
                    epoch: *epoch,
                    manual,
                    accept_data_loss: accept,
                    reported_ops,
                    reported_ms,
                    missing_ops_at_send,
                    missing_ops_at_commit,
                    missing_span_ms,
                };
                self.stats.promotions += 1;
                if manual {
                    self.stats.manual_promotions += 1;
                }
                if accept && (reported_ops > 0 || reported_ms > 0) {
                    self.stats.forced_promotions += 1;
                }
                self.stats.exposure_reported_ops += reported_ops;
                self.stats.exposure_missing_ops += missing_ops_at_send;
                if let Err(v) = check::promotion_exposure(&p) {
                    self.record(v);
                }
                self.trace.line(self.now, || format!("promotion {p:?}"));
                if let Some(c) = self.fen.as_deref_mut() {
                    if accept {
                        c.forced_epochs.push(p.epoch);
                    }
                    c.promotions.push(p);
                }
            }
            (Command::Transfer { .. }, Answer::Transferred { .. }) => {
                self.stats.switchovers += 1;
                if let Extra::Handover { target, head } = extra {
                    let me = &self.ids[from];
                    let res = check::switchover_lost_nothing(
                        me,
                        &self.ids[target],
                        head,
                        self.applied(from).get(me),
                        self.applied(target).get(me),
                    );
                    if let Err(v) = res {
                        self.record(v);
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_control_answer(&mut self, id: usize, answer: Answer, via: usize) {
        let now = self.now;
        let Some(c) = self.ctl() else {
            return;
        };
        let p = &c.proposals[id];
        let from = p.from;
        if p.settled {
            return;
        }
        if via != from && !self.net.is_up(via, from) {
            self.stats.fence_answers_lost += 1;
            self.trace.ev(&[kind::ANSWER, now, id as u64, 0]);
            return;
        }
        if !self.is_up(from) || c.members[from].incarnation != p.incarnation {
            self.trace.ev(&[kind::ANSWER, now, id as u64, 1]);
            return;
        }
        let (cmd, sent_mono) = (p.cmd.clone(), p.sent_mono);
        let m = &c.members[from];
        let mono = m.clock.at(now);
        fencing::lock(&m.fence).on_answer(mono, sent_mono, &cmd, Some(&answer));
        if let Some(c) = self.fen.as_deref_mut() {
            c.proposals[id].settled = true;
        }
        self.trace.ev(&[kind::ANSWER, now, id as u64, 2]);
        self.trace.line(now, || {
            format!(
                "{} hears #{id}: {answer:?} (its clock {mono})",
                self.ids[from]
            )
        });
    }

    pub(super) fn on_proposal_timeout(&mut self, id: usize) {
        let now = self.now;
        let Some(c) = self.fen.as_deref_mut() else {
            return;
        };
        let p = &mut c.proposals[id];
        if p.settled {
            return;
        }
        p.settled = true;
        let from = p.from;
        let (cmd, sent_mono, inc) = (p.cmd.clone(), p.sent_mono, p.incarnation);
        if !self.is_up(from) {
            return;
        }
        let Some(c) = self.ctl() else {
            return;
        };
        let m = &c.members[from];
        if m.incarnation != inc {
            return;
        }
        fencing::lock(&m.fence).on_answer(m.clock.at(now), sent_mono, &cmd, None);
        self.trace.ev(&[kind::PROPOSAL_TIMEOUT, now, id as u64]);
        self.trace
            .line(now, || format!("{} gives up on #{id}", self.ids[from]));
    }

    /// Region `r` applies, in order, the committed entries it can see by now, if it reaches
    /// the group; a region cut off stalls.
    pub(super) fn catch_up(&mut self, r: usize) {
        if !self.is_up(r) || self.contact(r).is_none() {
            return;
        }
        let now = self.now;
        let Some(c) = self.fen.as_deref_mut() else {
            return;
        };
        let m = &mut c.members[r];
        let mut k = m.applied;
        while k < c.log.len() && c.log[k].visible_at[r] <= now {
            k += 1;
        }
        m.ready = true;
        if k == m.applied {
            return;
        }
        m.applied = k;
        let st = &c.log[k - 1].state;
        fencing::lock(&m.fence).on_applied(m.clock.at(now), st);
        let (epoch, version) = (st.epoch, st.version);
        self.trace
            .ev(&[kind::CONTROL_APPLY, now, r as u64, k as u64]);
        self.trace.line(now, || {
            format!(
                "{} applies up to entry {k} (epoch {epoch}, version {version})",
                self.ids[r]
            )
        });
    }

    pub(super) fn on_fence_tick(&mut self, r: usize) {
        let Some(tick) = self.ctl().map(|c| c.opts.tick_ms()) else {
            return;
        };
        self.schedule(tick, Event::FenceTick(r));
        if !self.is_up(r) {
            return;
        }
        self.catch_up(r);
        if !self.ctl().is_some_and(|c| c.members[r].ready) {
            return;
        }
        self.sync_core(r);
        self.handover_progress(r);
        let local = self.local_ms(r);
        let fence_ts = self.fence_ts(r);
        let Some(c) = self.ctl() else {
            return;
        };
        let m = &c.members[r];
        let mono = m.clock.at(self.now);
        let fence = m.fence.clone();
        let holder = fencing::lock(&fence).holder().cloned();
        let view = match (&holder, self.regions[r].node.as_ref()) {
            (Some(h), Some(node)) if h != &self.ids[r] => {
                node.driver.core().promotion_view(h, local)
            }
            _ => PromotionView::default(),
        };
        let cmd = fencing::lock(&fence).tick(mono, fence_ts, Some(&view));
        if let Some(cmd) = cmd {
            let extra = match &cmd {
                Command::Acquire {
                    reason: PromotionReason::Automatic { .. },
                    ..
                } => Extra::Promotion {
                    missing_ops_at_send: self.missing_of(r, holder.as_ref()),
                    accept: false,
                },
                _ => Extra::None,
            };
            self.propose(r, cmd, extra);
        }
    }

    /// A switchover in progress at region `r`: transfer once the target's heartbeats show it
    /// applied the head, give up after the timeout.
    fn handover_progress(&mut self, r: usize) {
        let now = self.now;
        let Some(c) = self.ctl() else {
            return;
        };
        let Some(h) = c.members[r].handover else {
            return;
        };
        let fence = c.members[r].fence.clone();
        let mono = c.members[r].clock.at(now);
        if fencing::lock(&fence).handing_over().is_none() {
            if let Some(c) = self.fen.as_deref_mut() {
                c.members[r].handover = None;
            }
            return;
        }
        let me = self.ids[r].clone();
        let local = self.local_ms(r);
        let caught_up = self.regions[r].node.as_ref().is_some_and(|node| {
            node.driver
                .core()
                .promotion_view(&me, local)
                .others
                .iter()
                .any(|(q, a)| q == &self.ids[h.target] && *a >= h.head)
        });
        let mut done = false;
        if caught_up {
            let fence_ts = self.fence_ts(r);
            let res = fencing::lock(&fence).transfer(mono, fence_ts);
            match res {
                Ok(cmd) => {
                    done = true;
                    self.propose(
                        r,
                        cmd,
                        Extra::Handover {
                            target: h.target,
                            head: h.head,
                        },
                    );
                }
                // A renewal still in flight: try again at the next tick.
                Err(PromoteRefusal::Busy) => {}
                Err(_) => {
                    done = true;
                    fencing::lock(&fence).abort_handover();
                    self.stats.switchovers_abandoned += 1;
                }
            }
        }
        if !done && now >= h.deadline_ms {
            done = true;
            fencing::lock(&fence).abort_handover();
            self.stats.switchovers_abandoned += 1;
            self.trace
                .line(now, || format!("{me} abandons its switchover"));
        }
        if done && let Some(c) = self.fen.as_deref_mut() {
            c.members[r].handover = None;
        }
    }

    pub(super) fn on_operator(&mut self) {
        let Some((gap, topology, accept_pct)) = self.ctl().map(|c| {
            (
                c.opts.operator_gap_ms,
                c.opts.topology,
                c.opts.accept_data_loss_pct,
            )
        }) else {
            return;
        };
        let Some((lo, hi)) = gap else {
            return;
        };
        if !self.writing {
            return;
        }
        let at = self.rng.random_range(lo..=hi);
        self.schedule(at, Event::Operator);
        let n = self.regions.len();
        let r = self.rng.random_range(0..n);
        let target = (r + self.rng.random_range(1..n)) % n;
        let accept = self.rng.random_range(0..100u32) < accept_pct;
        if !self.is_up(r) || !self.ctl().is_some_and(|c| c.members[r].ready) {
            return;
        }
        let Some(f) = self.fence(r) else {
            return;
        };
        if f.holder() == Some(&self.ids[r]) {
            if f.handing_over().is_none() {
                let _ = self.begin_switchover(r, target);
            }
            return;
        }
        let allowed = match topology {
            Topology::ActivePassive => true,
            Topology::ActiveStandby => {
                self.sync_core(r);
                let local = self.local_ms(r);
                let mono = self.mono_ms(r).unwrap_or(0);
                match (f.holder(), self.regions[r].node.as_ref()) {
                    (Some(h), Some(node)) => {
                        f.promotion_blocked(mono, &node.driver.core().promotion_view(h, local))
                    }
                    _ => false,
                }
            }
            Topology::ActiveActive { .. } => false,
        };
        if allowed {
            let _ = self.promote(r, accept);
        }
    }

    /// The region a client (or a router) believes is the primary: what a random running
    /// region's fence names, for `to_primary_pct` of the writes in leased topologies. `None`:
    /// send to a random region.
    pub(super) fn believed_primary(&mut self) -> Option<usize> {
        let pct = self
            .ctl()
            .filter(|c| c.opts.topology.leased())
            .map(|c| c.opts.to_primary_pct)?;
        if self.rng.random_range(0..100u32) >= pct {
            return None;
        }
        let up: Vec<usize> = (0..self.regions.len()).filter(|&r| self.is_up(r)).collect();
        if up.is_empty() {
            return None;
        }
        let asked = up[self.rng.random_range(0..up.len())];
        let holder = self.fence(asked)?.holder().cloned()?;
        let h = self.ids.iter().position(|i| *i == holder)?;
        self.is_up(h).then_some(h)
    }

    /// After every event: sample every region's permit (invariant 7) and keep the windows.
    pub(super) fn sample_fencing(&mut self) {
        let now = self.now;
        let n = self.regions.len();
        let Some(c) = self.ctl() else {
            return;
        };
        let topology = c.opts.topology;
        if let Topology::ActiveActive { quorum } = topology {
            if !quorum || c.sampled_violation {
                return;
            }
            let max = c.opts.max_window_true_ms();
            for r in 0..n {
                if self.permit(r, true).is_none() {
                    continue;
                }
                let res = check::read_only_within_quorum_window(
                    &self.ids[r],
                    "(any read-only keyspace)",
                    now,
                    c.presence_sent[r],
                    max,
                );
                if let Err(v) = res {
                    self.record_sampled(v);
                    return;
                }
            }
            return;
        }
        let mut permits: Vec<(usize, Permit, u64)> = Vec::new();
        for r in 0..n {
            if !self.is_up(r) {
                continue;
            }
            let m = &c.members[r];
            let mono = m.clock.at(now);
            let f = fencing::lock(&m.fence);
            if let Ok(epoch) = f.permit(mono, false) {
                let until = mono + f.window_left_ms(mono);
                permits.push((
                    r,
                    Permit {
                        region: self.ids[r].clone(),
                        epoch,
                        mono_ms: mono,
                        window_until_ms: until,
                    },
                    m.clock.true_when(until, now),
                ));
            }
        }
        let sampled = c.sampled_violation;
        let Some(c) = self.fen.as_deref_mut() else {
            return;
        };
        // Close the windows that ended: by time (at the instant the region's clock reached the
        // end) or by an event (now).
        for r in 0..n {
            let Some((idx, end)) = c.open[r] else {
                continue;
            };
            let goes_on = end > now
                && permits
                    .iter()
                    .any(|(q, p, _)| *q == r && p.epoch == c.windows[idx].epoch);
            if !goes_on {
                c.windows[idx].close_ms = Some(end.min(now));
                c.open[r] = None;
            }
        }
        let mut opened = 0;
        for (r, p, end) in &permits {
            match &mut c.open[*r] {
                Some((_, e)) => *e = *end,
                None => {
                    c.open[*r] = Some((c.windows.len(), *end));
                    c.windows.push(Window {
                        region: p.region.clone(),
                        epoch: p.epoch,
                        open_ms: now,
                        close_ms: None,
                    });
                    opened += 1;
                }
            }
        }
        self.stats.write_windows += opened;
        if !sampled {
            let list: Vec<Permit> = permits.into_iter().map(|(_, p, _)| p).collect();
            if let Err(v) = check::one_writer_at_a_time(now, &list) {
                self.record_sampled(v);
            }
        }
    }

    fn record_sampled(&mut self, v: Violation) {
        if let Some(c) = self.fen.as_deref_mut() {
            c.sampled_violation = true;
        }
        self.record(v);
    }

    /// An acknowledged local write of region `r` to `keyspace`, stamped now with `epoch`.
    pub(super) fn fencing_on_ack(
        &mut self,
        r: usize,
        keyspace: &'static str,
        seq: u64,
        epoch: u64,
    ) {
        let now = self.now;
        let Some(c) = self.ctl() else {
            return;
        };
        match c.opts.topology {
            t if t.leased() => self.history.stamps.push(Stamp {
                region: self.ids[r].clone(),
                seq,
                epoch,
                at_ms: now,
                keyspace,
            }),
            Topology::ActiveActive { quorum: true }
                if c.opts.read_only_keyspaces.iter().any(|k| k == keyspace) =>
            {
                let res = check::read_only_within_quorum_window(
                    &self.ids[r],
                    keyspace,
                    now,
                    c.presence_sent[r],
                    c.opts.max_window_true_ms(),
                );
                if let Err(v) = res {
                    self.record(v);
                }
            }
            _ => {}
        }
    }

    /// Region `to` applied a replicated batch: `merged` went in, `late` were refused as late
    /// writes of a superseded epoch (invariant 8).
    pub(super) fn fencing_on_applied(
        &mut self,
        to: usize,
        late: &[(RegionId, u64, u64)],
        entries: &[OpEntry],
        merged: &[&OpEntry],
    ) {
        if let Some(c) = self.ctl() {
            let current = fencing::lock(&c.members[to].fence).state().epoch;
            self.stats.old_epoch_merged += merged
                .iter()
                .filter(|e| e.epoch > 0 && e.epoch < current)
                .count() as u64;
        }
        for (origin, seq, epoch) in late {
            self.stats.late_refused += 1;
            let entry = entries
                .iter()
                .find(|e| &e.origin == origin && e.seq == *seq);
            let ts = entry.map_or(0, |e| e.ts.wall_ms);
            // Refused, and recorded in the region's fencing ledger in the same commit.
            let recorded = entry.is_some_and(|e| {
                self.regions[to].node.as_ref().is_some_and(|n| {
                    n.store.late_writes(&e.keyspace, usize::MAX).is_ok_and(|l| {
                        l.iter()
                            .any(|r| &r.origin == origin && r.seq == *seq && r.epoch == *epoch)
                    })
                })
            });
            if !recorded {
                self.record(Violation::new(
                    Invariant::Harness,
                    format!(
                        "{} refused the late write {origin}:{seq} (epoch {epoch}) without recording it in its fencing ledger",
                        self.ids[to]
                    ),
                ));
            }
            let Some(c) = self.ctl() else {
                return;
            };
            let fence = c.state.fences.get(&(epoch + 1)).copied();
            let forced = c.forced_epochs.iter().any(|e| e > epoch);
            let res = check::late_write(&self.ids[to], origin, *seq, *epoch, ts, fence, forced);
            if let Err(v) = res
                && !c.sampled_violation
            {
                // One is enough: the same writes would be refused again at every region.
                self.record_sampled(v);
            }
        }
    }

    /// The fencing report of the run so far.
    pub fn fencing_report(&self) -> Option<FencingReport> {
        let c = self.ctl()?;
        Some(FencingReport {
            topology: c.opts.name(),
            windows: c.windows.clone(),
            min_handoff_gap_ms: check::epochs_in_order(&self.history.stamps).ok().flatten(),
            promotions: c.promotions.clone(),
        })
    }

    /// Fencing lines for [`Sim::describe`].
    pub(super) fn describe_fencing(&self) -> String {
        let Some(c) = self.ctl() else {
            return String::new();
        };
        let mut s = format!(
            "  control group ({}): holder {:?} epoch {} version {}, {} entries{}\n",
            c.opts.name(),
            c.state.holder.as_ref().map(|h| h.as_str()),
            c.state.epoch,
            c.state.version,
            c.log.len(),
            if c.opts.witness {
                format!(", witness {}", if c.witness_up { "up" } else { "DOWN" })
            } else {
                String::new()
            }
        );
        for (r, m) in c.members.iter().enumerate() {
            let mono = m.clock.at(self.now);
            let f = fencing::lock(&m.fence);
            s.push_str(&format!(
                "    {}: role {} holder {:?} epoch {} applied {} ready {} drift {} ppm window left {} ms\n",
                self.ids[r],
                f.role(mono).as_str(),
                f.holder().map(|h| h.as_str()),
                f.state().epoch,
                m.applied,
                m.ready,
                m.clock.drift_ppm,
                f.window_left_ms(mono)
            ));
        }
        s
    }
}
