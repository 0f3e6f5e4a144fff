//! [`ControlGroup`]: one member of the control group, its options, proposals (with forwarding and
//! one relay hop), the RPCs it serves, and its status.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{Config, Raft, ServerState, Snapshot};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{ControlError, TransportError};
use crate::liveness::{Liveness, gone_silent};
use crate::machine::{Applied, Machine};
use crate::network::NetworkFactory;
use crate::store::{LogStore, Store, blocking};
use crate::wire::{
    ProposeReply, ProposeRequest, ReadReply, ReadRequest, SnapshotRequest, TypeConfig, decode,
    encode, rpc,
};
use crate::{Members, NodeId, StateMachine, Transport};

/// Timing of the group. The defaults suit members a WAN apart (round trips up to ~200 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlTiming {
    /// How often the leader sends heartbeats; also the timeout of one append RPC. Default 250 ms.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in `[election_min, election_max)` starts
    /// an election. Defaults 1000 ms and 2000 ms. `election_max` is also openraft's leader lease:
    /// a member that heard from a leader within it refuses to vote for another.
    pub election_min: Duration,
    pub election_max: Duration,
    /// How long [`ControlGroup::propose`] tries before it gives up. Default 5 s.
    pub propose_timeout: Duration,
    /// How long sending one whole snapshot to a member may take. Default 10 s.
    pub snapshot_timeout: Duration,
}

impl Default for ControlTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
            propose_timeout: Duration::from_secs(5),
            snapshot_timeout: Duration::from_secs(10),
        }
    }
}

/// When to snapshot and how much log to keep behind a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// A snapshot is taken once this many entries were applied since the last one. Default 1000.
    pub every_entries: u64,
    /// Entries kept behind the latest snapshot, so that a member a little behind catches up from
    /// the log rather than by a snapshot; the rest is purged. Default 100.
    pub keep_entries: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every_entries: 1000,
            keep_entries: 100,
        }
    }
}

/// Sizes the group accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// The largest command [`ControlGroup::propose`] accepts. Default 64 KiB.
    pub max_command_bytes: usize,
    /// The largest RPC body sent or accepted (a snapshot travels in one body). Default 16 MiB.
    pub max_message_bytes: usize,
    /// At most this many entries in one append RPC. Default 64.
    pub max_entries_per_append: u64,
}

impl Default for ControlLimits {
    fn default() -> Self {
        Self {
            max_command_bytes: 64 << 10,
            max_message_bytes: 16 << 20,
            max_entries_per_append: 64,
        }
    }
}

/// What [`ControlGroup::start`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlOptions {
    /// This member.
    pub node_id: NodeId,
    /// Every member, this one included (voters; an arbiter is a member like any other), with the
    /// name messages and status use. The same on every member.
    pub members: Members,
    /// This member's own directory (created if missing); holds [`crate::FILE_NAME`].
    pub data_dir: PathBuf,
    pub timing: ControlTiming,
    pub snapshots: SnapshotPolicy,
    pub limits: ControlLimits,
    /// Whether every applied state is published whole on [`ControlGroup::applied`] (default
    /// `true`). Turn it off for a large state that the caller reads itself: publishing
    /// serializes the whole state after every apply.
    pub publish_state: bool,
    /// openraft's cluster name (in its logs). Default `atoll-control`.
    pub cluster_name: String,
    /// Refuse proposals and read barriers at once, before sending anything, while this member
    /// (leader or not) has heard from no other member for `election_max` ([`ControlGroup::alone`]):
    /// a member cut off from every other one then answers [`ControlError::NotApplied`] for
    /// certain, instead of sending the command down a link that holds it (which can only end
    /// [`ControlError::Ambiguous`]). Default `false` (the control group's renewals keep trying
    /// every path).
    pub refuse_when_alone: bool,
}

impl ControlOptions {
    /// Options with the default timing, snapshot policy and limits.
    pub fn new(node_id: NodeId, members: Members, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            members,
            data_dir: data_dir.into(),
            timing: ControlTiming::default(),
            snapshots: SnapshotPolicy::default(),
            limits: ControlLimits::default(),
            publish_state: true,
            cluster_name: "atoll-control".into(),
            refuse_when_alone: false,
        }
    }

    fn validate(&self) -> Result<Config, ControlError> {
        let bad = |m: String| Err(ControlError::Config(m));
        if !self.members.contains_key(&self.node_id) {
            return bad(format!(
                "member {} is not in the member list {:?}",
                self.node_id,
                self.members.keys().collect::<Vec<_>>()
            ));
        }
        let t = &self.timing;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if t.heartbeat.is_zero() || t.propose_timeout.is_zero() || t.snapshot_timeout.is_zero() {
            return bad("heartbeat, propose and snapshot timeouts must be positive".into());
        }
        if !(t.heartbeat < t.election_min && t.election_min < t.election_max) {
            return bad(format!(
                "need heartbeat ({:?}) < election_min ({:?}) < election_max ({:?})",
                t.heartbeat, t.election_min, t.election_max
            ));
        }
        let l = &self.limits;
        if l.max_entries_per_append == 0 || l.max_command_bytes == 0 {
            return bad("max_entries_per_append and max_command_bytes must be positive".into());
        }
        // One entry of the largest command, with its envelope, must fit in one message.
        if l.max_command_bytes.saturating_add(4096) > l.max_message_bytes {
            return bad(format!(
                "max_message_bytes ({}) must exceed max_command_bytes ({}) by at least 4096",
                l.max_message_bytes, l.max_command_bytes
            ));
        }
        if self.snapshots.every_entries == 0 {
            return bad("snapshots.every_entries must be positive".into());
        }
        let config = Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: ms(t.heartbeat),
            election_timeout_min: ms(t.election_min),
            election_timeout_max: ms(t.election_max),
            install_snapshot_timeout: ms(t.snapshot_timeout),
            max_payload_entries: l.max_entries_per_append,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshots.every_entries),
            max_in_snapshot_log_to_keep: self.snapshots.keep_entries,
            purge_batch_size: 1,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| ControlError::Config(format!("openraft: {e}")))
    }
}

/// A member's role, as openraft sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// A member's view of the group, for `/v1/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlStatus {
    pub node_id: NodeId,
    pub role: Role,
    pub is_leader: bool,
    /// The leader this member knows, if any.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Index of the last log entry this member holds.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state machine.
    pub last_applied: Option<u64>,
    /// Last index the latest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Last index purged from the log (entries up to it are only in the snapshot).
    pub purged_index: Option<u64>,
    /// Entries held in the log: bounded by the snapshot policy.
    pub log_entries: u64,
    pub members: Members,
}

struct Inner {
    id: NodeId,
    members: Members,
    raft: Raft<TypeConfig>,
    transport: Arc<dyn Transport>,
    timing: ControlTiming,
    limits: ControlLimits,
    refuse_when_alone: bool,
    applied: watch::Receiver<Applied>,
    /// Who answers: proposals go to a silent leader or a failing relay last.
    liveness: Arc<Liveness>,
    /// `true` once every user of the store (openraft's tasks) is gone and the file is closed.
    store_closed: watch::Receiver<bool>,
    stopping: AtomicBool,
}

/// One member of the control group. Cheap to clone; clones share the member.
#[derive(Clone)]
pub struct ControlGroup {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ControlGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlGroup")
            .field("node_id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

fn fatal(e: &Fatal<NodeId>) -> ControlError {
    match e {
        Fatal::Stopped => ControlError::ShuttingDown,
        other => ControlError::Fatal(other.to_string()),
    }
}

fn raft_err<E: std::error::Error>(e: RaftError<NodeId, E>) -> ControlError {
    match e {
        RaftError::Fatal(f) => fatal(&f),
        RaftError::APIError(a) => ControlError::Fatal(a.to_string()),
    }
}

fn remaining_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
}

impl ControlGroup {
    /// Opens this member's store, restores its state machine, starts raft and, on the first start
    /// of this data directory, initializes the group with every member.
    pub async fn start(
        opts: ControlOptions,
        sm: Box<dyn StateMachine>,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, ControlError> {
        let config = Arc::new(opts.validate()?);
        let id = opts.node_id;
        let dir = opts.data_dir.clone();
        let (store, store_closed, snapshot) = blocking(move || {
            let (store, closed) = Store::open(&dir, id)?;
            let snapshot = store.load_snapshot()?;
            Ok((store, closed, snapshot))
        })
        .await?;
        let (machine, applied) = Machine::restore(sm, store.clone(), snapshot, opts.publish_state)?;
        let liveness = Arc::new(Liveness::default());
        let network = NetworkFactory {
            me: id,
            transport: transport.clone(),
            max_message_bytes: opts.limits.max_message_bytes,
            backoff: opts.timing.heartbeat,
            liveness: liveness.clone(),
        };
        let raft = Raft::new(id, config, network, LogStore { store }, machine)
            .await
            .map_err(|e| fatal(&e))?;
        let group = Self {
            inner: Arc::new(Inner {
                id,
                members: opts.members.clone(),
                raft,
                transport,
                timing: opts.timing,
                limits: opts.limits,
                refuse_when_alone: opts.refuse_when_alone,
                applied,
                liveness,
                store_closed,
                stopping: AtomicBool::new(false),
            }),
        };
        match group.initialize(&opts.members).await {
            Ok(()) => Ok(group),
            Err(e) => {
                group.shutdown().await;
                Err(e)
            }
        }
    }

    /// On the first start of this data directory, initializes the group with every member (each
    /// member does, with the same set, which openraft allows); a restart skips it.
    async fn initialize(&self, members: &Members) -> Result<(), ControlError> {
        let id = self.inner.id;
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(|e| fatal(&e))? {
            tracing::info!(
                member = id,
                "control group restarted from its data directory"
            );
            return Ok(());
        }
        let voters: BTreeSet<NodeId> = members.keys().copied().collect();
        match raft.initialize(voters).await {
            Ok(()) => {
                tracing::info!(member = id, members = ?members, "control group initialized");
                Ok(())
            }
            // Another start got there first (or the log already holds a membership).
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(member = id, reason = %e, "control group already initialized");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(ControlError::Config(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(fatal(&f)),
        }
    }

    /// This member's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    fn name(&self, id: NodeId) -> String {
        match self.inner.members.get(&id) {
            Some(n) => format!("{n} ({id})"),
            None => format!("member {id}"),
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    fn check_running(&self) -> Result<(), ControlError> {
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(ControlError::ShuttingDown);
        }
        Ok(())
    }

    /// Proposes a command and waits until it is committed and applied; returns the state
    /// machine's response. Forwards to the leader when this member is not it; when the leader is
    /// not reachable from here, forwards through any other member that reaches it (one relay hop
    /// at most). A leader this member has not heard from for an election timeout (a follower
    /// hears its leader every heartbeat) is tried only after the relays, and the relays whose
    /// last call failed after the others: a link that swallows packets makes a request wait for
    /// ever rather than fail, so a silent path is the last one to try. Bounded by
    /// [`ControlTiming::propose_timeout`]. On failure, [`ControlError::may_have_applied`] tells
    /// whether the command may have been applied ([`ControlError::Ambiguous`]) or surely was not
    /// ([`ControlError::NotApplied`] and the others).
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ControlError> {
        self.check_running()?;
        let max = self.inner.limits.max_command_bytes;
        if command.len() > max {
            return Err(ControlError::CommandTooLarge {
                len: command.len(),
                max,
            });
        }
        let budget = self.inner.timing.propose_timeout;
        let deadline = Instant::now() + budget;
        let me = self.inner.id;
        let mut last = String::from("no leader known");
        loop {
            self.check_running()?;
            if Instant::now() >= deadline {
                return Err(ControlError::NotApplied(format!(
                    "no leader could be reached within {budget:?} (last: {last})"
                )));
            }
            // Every earlier round of this loop ended in a failure that applied nothing.
            self.refuse_if_alone()?;
            let leader = self.leader();
            // The leader first, unless it has gone silent; then the relays, each of which passes
            // the command on to the leader it knows; a silent leader last.
            let mut paths: Vec<(NodeId, bool)> = Vec::new();
            let silent_leader = leader.filter(|&l| l != me && !self.hears(l));
            if let Some(l) = leader
                && silent_leader.is_none()
            {
                paths.push((l, false));
            }
            let relays = self.inner.liveness.relay_order(
                self.inner
                    .members
                    .keys()
                    .copied()
                    .filter(|&m| m != me && Some(m) != leader),
            );
            paths.extend(relays.into_iter().map(|m| (m, true)));
            if let Some(l) = silent_leader {
                paths.push((l, false));
            }
            for (to, relay) in paths {
                if Instant::now() >= deadline {
                    break;
                }
                let result = if to == me {
                    self.write_local(command.clone(), deadline).await
                } else {
                    self.forward(to, &command, relay, deadline).await
                };
                match result {
                    Ok(r) => return Ok(r),
                    Err(e) if e.may_have_applied() => return Err(e),
                    Err(e) => last = e.to_string(),
                }
            }
            if leader.is_none() {
                last = format!("no leader known ({last})");
            }
            tracing::debug!(member = me, reason = %last, "proposal not placed yet; retrying");
            let pause = self
                .inner
                .timing
                .heartbeat
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    /// Whether this member has heard from no other member within `election_max` (a follower
    /// hears its leader every heartbeat, a leader its followers' answers): it is cut off from
    /// every other member, or they are all down. Never for a group of one.
    pub fn alone(&self) -> bool {
        let me = self.inner.id;
        if self.inner.members.len() < 2 {
            return false;
        }
        let quiet = self.inner.timing.election_max;
        !self.inner.members.keys().any(|&m| {
            m != me
                && self
                    .inner
                    .liveness
                    .get(m)
                    .heard
                    .is_some_and(|h| h.elapsed() < quiet)
        })
    }

    fn refuse_if_alone(&self) -> Result<(), ControlError> {
        if self.inner.refuse_when_alone && self.alone() {
            return Err(ControlError::NotApplied(format!(
                "{} has heard from no other member for {:?}: no majority is reachable from here; nothing was sent",
                self.name(self.inner.id),
                self.inner.timing.election_max
            )));
        }
        Ok(())
    }

    /// Whether this member has heard from `member` within an election timeout (a follower hears
    /// its leader at every heartbeat).
    fn hears(&self, member: NodeId) -> bool {
        self.inner
            .liveness
            .get(member)
            .heard
            .is_some_and(|h| h.elapsed() < self.inner.timing.election_min)
    }

    /// Appends `command` on this member, which believes it is the leader, and waits for the
    /// outcome until `deadline`.
    async fn write_local(
        &self,
        command: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, ControlError> {
        let rx = self
            .inner
            .raft
            .client_write_ff(command)
            .await
            .map_err(|e| fatal(&e))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(ControlError::Ambiguous(format!(
                "{} (leader) took the command but it was not committed before the deadline",
                self.name(self.inner.id)
            ))),
            Ok(Err(_)) => Err(ControlError::Ambiguous(format!(
                "{} stopped before the outcome was known",
                self.name(self.inner.id)
            ))),
            Ok(Ok(Ok(resp))) => Ok(resp.data),
            // Refused before it was appended, or its entry was truncated (never committed).
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ControlError::NotApplied(format!(
                    "{} is not the leader{}",
                    self.name(self.inner.id),
                    f.leader_id
                        .map(|l| format!(" ({} is)", self.name(l)))
                        .unwrap_or_default()
                )))
            }
            Ok(Ok(Err(e))) => Err(ControlError::NotApplied(e.to_string())),
        }
    }

    /// Sends `command` to member `to` (the leader, or a relay when `relay`), bounded by
    /// `deadline`.
    async fn forward(
        &self,
        to: NodeId,
        command: &[u8],
        relay: bool,
        deadline: Instant,
    ) -> Result<Vec<u8>, ControlError> {
        if remaining_ms(deadline) == 0 {
            return Err(ControlError::NotApplied(format!(
                "no time left to send the proposal to {}",
                self.name(to)
            )));
        }
        // A relay answers within a few round trips (it passes the command to its leader, which
        // commits it; it gives up on a leader that went silent after an election timeout). One
        // that keeps silent longer is behind a link that swallows packets: give up on it
        // (outcome unknown) rather than wait out the deadline, so the caller's next proposal can
        // take another path (this one is tried last then).
        let deadline = if relay {
            deadline
                .min(Instant::now() + self.inner.timing.election_max + self.inner.timing.heartbeat)
        } else {
            deadline
        };
        // The receiver answers a little before our own deadline, so that its answer (which says
        // whether the command may have been applied) arrives in time.
        let left = remaining_ms(deadline);
        let req = ProposeRequest {
            command: command.to_vec(),
            relay,
            timeout_ms: left - left / 10,
        };
        let body = encode(&req)?;
        let via = self.name(to);
        let liveness = &self.inner.liveness;
        let call =
            tokio::time::timeout_at(deadline, self.inner.transport.call(to, rpc::PROPOSE, body));
        let answer = if relay {
            call.await
        } else {
            // The leader sends this member a heartbeat every `heartbeat`: if nothing at all
            // arrives from it for an election timeout while the proposal waits, the link to it
            // has gone dark (a cut that swallows packets), and waiting out the deadline would
            // only keep the caller from trying another path. The outcome is unknown. A stall of
            // this member's own (CPU starvation) is not counted as the leader's silence.
            let silent = gone_silent(
                || liveness.get(to).heard,
                Instant::now(),
                self.inner.timing.heartbeat / 4,
                self.inner.timing.election_min,
            );
            tokio::select! {
                a = call => a,
                after = silent => {
                    liveness.failed(to);
                    return Err(ControlError::Ambiguous(format!(
                        "{via} (the leader) went silent: nothing heard from it for {after:?} while the proposal waited for its answer"
                    )));
                }
            }
        };
        match &answer {
            Err(_) | Ok(Err(TransportError::Unreachable(_) | TransportError::Failed(_))) => {
                liveness.failed(to)
            }
            Ok(_) => liveness.heard(to),
        }
        match answer {
            Err(_) => Err(ControlError::Ambiguous(format!(
                "no answer from {via} before the deadline{}",
                if relay {
                    " (a relay's, an election timeout)"
                } else {
                    ""
                }
            ))),
            Ok(Err(TransportError::Unreachable(e))) => {
                Err(ControlError::NotApplied(format!("{via} unreachable: {e}")))
            }
            Ok(Err(TransportError::Failed(e))) => Err(ControlError::Ambiguous(format!(
                "the proposal was sent to {via} but no answer came: {e}"
            ))),
            // `handle` refused the request before acting on it.
            Ok(Err(TransportError::Remote { code, message })) => Err(ControlError::NotApplied(
                format!("{via} refused: {code}: {message}"),
            )),
            Ok(Ok(bytes)) => {
                match decode::<ProposeReply>(
                    rpc::PROPOSE,
                    &bytes,
                    self.inner.limits.max_message_bytes,
                ) {
                    Ok(reply) => reply.into_result(&via),
                    Err(e) => Err(ControlError::Ambiguous(format!(
                        "{via} answered the proposal with a body that does not decode: {e}"
                    ))),
                }
            }
        }
    }

    /// A linearizable read barrier (ReadIndex, as etcd does it): returns once this member's state
    /// machine has applied every command committed before this call began, so that what the
    /// caller reads from its own state machine afterwards is linearizable. The leader confirms
    /// that it still is the leader by a round of heartbeats answered by a majority after the
    /// call began, and takes its commit index (at least its first entry of its term) as the read
    /// index; a follower asks the leader for it ([`rpc::READ`]) and waits until it has applied
    /// that index itself. No clock is trusted. Bounded by [`ControlTiming::propose_timeout`];
    /// fails with [`ControlError::NotApplied`] (a read changes nothing) when no leader is known,
    /// the leader is unreachable, or it cannot reach a majority. Returns the read index.
    pub async fn read_barrier(&self) -> Result<u64, ControlError> {
        self.check_running()?;
        let budget = self.inner.timing.propose_timeout;
        let deadline = Instant::now() + budget;
        let me = self.inner.id;
        let mut last = String::from("no leader known");
        loop {
            self.check_running()?;
            if Instant::now() >= deadline {
                return Err(ControlError::NotApplied(format!(
                    "no read index within {budget:?} (last: {last})"
                )));
            }
            self.refuse_if_alone()?;
            let attempt = match self.leader() {
                Some(l) if l == me => self.leader_read_index(deadline).await,
                Some(l) => self.ask_read_index(l, deadline).await,
                None => Err(ControlError::NotApplied("no leader known".into())),
            };
            match attempt {
                Ok(index) => {
                    let mut applied = self.inner.applied.clone();
                    return match tokio::time::timeout_at(
                        deadline,
                        applied.wait_for(|a| a.index >= index),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Ok(index),
                        Ok(Err(_)) => Err(ControlError::ShuttingDown),
                        Err(_) => Err(ControlError::NotApplied(format!(
                            "{} did not apply up to the read index {index} within {budget:?}",
                            self.name(me)
                        ))),
                    };
                }
                Err(ControlError::ShuttingDown) => return Err(ControlError::ShuttingDown),
                Err(e) => last = e.to_string(),
            }
            let pause = self
                .inner
                .timing
                .heartbeat
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    /// On the leader: confirms leadership with a majority and returns the read index.
    async fn leader_read_index(&self, deadline: Instant) -> Result<u64, ControlError> {
        match tokio::time::timeout_at(deadline, self.inner.raft.get_read_log_id()).await {
            Err(_) => Err(ControlError::NotApplied(format!(
                "{} could not confirm its leadership with a majority before the deadline",
                self.name(self.inner.id)
            ))),
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::Fatal(f))) => Err(fatal(&f)),
            Ok(Err(RaftError::APIError(e))) => Err(ControlError::NotApplied(format!(
                "{} cannot serve a read index: {e}",
                self.name(self.inner.id)
            ))),
        }
    }

    /// On a follower: asks the leader `to` for a read index.
    async fn ask_read_index(&self, to: NodeId, deadline: Instant) -> Result<u64, ControlError> {
        let left = remaining_ms(deadline);
        let body = encode(&ReadRequest {
            from: self.inner.id,
            timeout_ms: (left - left / 10).max(1),
        })?;
        let via = self.name(to);
        let answer =
            tokio::time::timeout_at(deadline, self.inner.transport.call(to, rpc::READ, body)).await;
        match answer {
            Err(_) => {
                self.inner.liveness.failed(to);
                Err(ControlError::NotApplied(format!(
                    "no read index from {via} (the leader) before the deadline"
                )))
            }
            Ok(Err(e)) => {
                if !matches!(e, TransportError::Remote { .. }) {
                    self.inner.liveness.failed(to);
                }
                Err(ControlError::NotApplied(format!(
                    "no read index from {via} (the leader): {e}"
                )))
            }
            Ok(Ok(bytes)) => {
                self.inner.liveness.heard(to);
                match decode::<ReadReply>(rpc::READ, &bytes, self.inner.limits.max_message_bytes)? {
                    ReadReply::Index(i) => Ok(i),
                    ReadReply::Failed { code, message } => Err(ControlError::NotApplied(format!(
                        "{via} (the leader) gave no read index: {code}: {message}"
                    ))),
                }
            }
        }
    }

    /// A proposal forwarded by another member.
    async fn serve_propose(&self, req: ProposeRequest) -> Result<Vec<u8>, ControlError> {
        let max = self.inner.limits.max_command_bytes;
        if req.command.len() > max {
            return Err(ControlError::CommandTooLarge {
                len: req.command.len(),
                max,
            });
        }
        let budget = Duration::from_millis(req.timeout_ms).min(self.inner.timing.propose_timeout);
        if budget.is_zero() {
            return Err(ControlError::NotApplied(format!(
                "the proposal reached {} with no time left",
                self.name(self.inner.id)
            )));
        }
        let deadline = Instant::now() + budget;
        match self.leader() {
            Some(l) if l == self.inner.id => self.write_local(req.command, deadline).await,
            Some(l) if req.relay => self.forward(l, &req.command, false, deadline).await,
            Some(l) => Err(ControlError::NotApplied(format!(
                "{} is not the leader ({} is)",
                self.name(self.inner.id),
                self.name(l)
            ))),
            None => Err(ControlError::NotApplied(format!(
                "{} knows no leader",
                self.name(self.inner.id)
            ))),
        }
    }

    /// Serves an RPC that arrived from member `from` (already authenticated by the caller, e.g.
    /// by its TLS certificate). `rpc` is one of [`crate::rpc`]. Refuses bodies over
    /// [`ControlLimits::max_message_bytes`], of another wire version or that do not decode, and
    /// raft messages whose vote names another member than `from`.
    pub async fn handle(
        &self,
        from: NodeId,
        rpc: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, ControlError> {
        if from == self.inner.id || !self.inner.members.contains_key(&from) {
            return Err(ControlError::UnknownMember(from));
        }
        if !rpc::ALL.contains(&rpc) {
            return Err(ControlError::UnknownRpc(rpc.chars().take(64).collect()));
        }
        let max = self.inner.limits.max_message_bytes;
        if body.len() > max {
            return Err(ControlError::MessageTooLarge {
                rpc: rpc.to_string(),
                len: body.len(),
                max,
            });
        }
        self.check_running()?;
        // An authenticated member's request: it is alive and its link to here works.
        self.inner.liveness.heard(from);
        let speaks_for = |claimed: Option<NodeId>| match claimed {
            Some(c) if c == from => Ok(()),
            Some(c) => Err(ControlError::MemberMismatch { from, claimed: c }),
            None => Err(ControlError::BadMessage(format!(
                "`{rpc}` from {from} names no leader or candidate"
            ))),
        };
        let raft = &self.inner.raft;
        match rpc {
            rpc::APPEND => {
                let req: AppendEntriesRequest<TypeConfig> = decode(rpc, &body, max)?;
                speaks_for(req.vote.leader_id().voted_for())?;
                let resp = raft.append_entries(req).await.map_err(raft_err)?;
                encode(&resp)
            }
            rpc::VOTE => {
                let req: VoteRequest<NodeId> = decode(rpc, &body, max)?;
                speaks_for(req.vote.leader_id().voted_for())?;
                let resp = raft.vote(req).await.map_err(raft_err)?;
                encode(&resp)
            }
            rpc::SNAPSHOT => {
                let req: SnapshotRequest = decode(rpc, &body, max)?;
                speaks_for(req.vote.leader_id().voted_for())?;
                let snapshot = Snapshot {
                    meta: req.meta,
                    snapshot: Box::new(req.data),
                };
                let resp = raft
                    .install_full_snapshot(req.vote, snapshot)
                    .await
                    .map_err(|e| fatal(&e))?;
                encode(&resp)
            }
            rpc::PROPOSE => {
                let req: ProposeRequest = decode(rpc, &body, max)?;
                let result = self.serve_propose(req).await;
                encode(&ProposeReply::from_result(result))
            }
            rpc::READ => {
                let req: ReadRequest = decode(rpc, &body, max)?;
                speaks_for(Some(req.from))?;
                if req.timeout_ms == 0 {
                    return Err(ControlError::BadMessage(format!(
                        "`{rpc}` from {from} has no time left"
                    )));
                }
                let budget =
                    Duration::from_millis(req.timeout_ms).min(self.inner.timing.propose_timeout);
                let reply = match self.leader_read_index(Instant::now() + budget).await {
                    Ok(i) => ReadReply::Index(i),
                    Err(e) => ReadReply::Failed {
                        code: e.code().to_string(),
                        message: e.to_string(),
                    },
                };
                encode(&reply)
            }
            other => Err(ControlError::UnknownRpc(other.chars().take(64).collect())),
        }
    }

    /// Every apply (and every snapshot install) publishes the last applied index and the whole
    /// state here, so the caller can note on its own monotonic clock when it observed each state.
    /// A watch channel: a slow reader sees the latest state, not every one.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.inner.applied.clone()
    }

    /// This member's view of the group.
    pub fn status(&self) -> ControlStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let role = if m.running_state.is_err() || self.inner.stopping.load(Ordering::Acquire) {
            Role::Shutdown
        } else {
            match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Shutdown,
            }
        };
        let purged_index = m.purged.map(|l| l.index);
        let log_entries = match (m.last_log_index, purged_index) {
            (Some(last), Some(p)) => last.saturating_sub(p),
            (Some(last), None) => last + 1,
            (None, _) => 0,
        };
        ControlStatus {
            node_id: self.inner.id,
            role,
            is_leader: role == Role::Leader,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index,
            log_entries,
            members: self.inner.members.clone(),
        }
    }

    /// Stops raft and waits (up to a few seconds) until the store is closed, so that the data
    /// directory can be opened again. Idempotent; proposals and RPCs are refused from now on.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(member = self.inner.id, error = %e, "control group raft task ended badly");
        }
        // openraft's state machine worker and snapshot tasks end shortly after its core; the
        // store closes with the last of them.
        let mut closed = self.inner.store_closed.clone();
        let wait = closed.wait_for(|c| *c);
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                member = self.inner.id,
                "control store still open 5 s after shutdown"
            );
        }
        tracing::info!(member = self.inner.id, "control group stopped");
    }
}
