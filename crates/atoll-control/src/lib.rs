//! The control group: a small replicated state machine shared by the regions of a cluster (one
//! voter per region, plus an optional witness, the "arbiter"), replicated by
//! [openraft](https://docs.rs/openraft/0.9) 0.9. It holds what split-brain fencing needs to agree
//! on: the write lease (holder, epoch) and the promotion history.
//!
//! This crate is the consensus adapter only. What the state means lives elsewhere: the lease state
//! machine is a pure, deterministic module of `atoll-core`, which this crate sees through the
//! byte-level [`StateMachine`] trait. The network is the caller's too: the region server
//! implements [`Transport`] over its mutual-TLS peer client and mounts [`ControlGroup::handle`] on
//! its own HTTP routes (this crate has no HTTP).
//!
//! - **Durable.** The log, the vote, the committed log id and the latest snapshot live in one
//!   redb file per member (`store`, format version [`FORMAT_VERSION`]), every write fsynced. At
//!   start the state machine is restored from the snapshot and the log is re-applied up to the
//!   committed log id, so a member that crashed after a commit was acknowledged still holds it.
//! - **Bounded.** A snapshot is taken every [`SnapshotPolicy::every_entries`] applied entries and
//!   the log behind it purged (keeping [`SnapshotPolicy::keep_entries`] for lagging members), so the
//!   log stays bounded. RPC bodies are versioned ([`WIRE_VERSION`]) and bounded
//!   ([`ControlLimits`]).
//! - **Fixed membership.** Every member initializes the group with the same full member set on
//!   its first start (openraft allows this when all use the same membership); a restart does not
//!   initialize again. Membership changes are out of scope. A member whose data directory was
//!   lost must not simply start afresh while the others run: it forgets its vote of the current
//!   term.
//! - **Proposals go to the leader.** [`ControlGroup::propose`] forwards to the leader, or through
//!   one other member that reaches it when this member does not (two regions and an arbiter with
//!   the link between the regions cut), and says whether a failed proposal may have been applied
//!   ([`ControlError::may_have_applied`]).
//! - **Leader lease.** openraft 0.9 keeps a leader lease (the maximum election timeout): a member
//!   that heard from a leader within it refuses to vote, so a member cut off from the leader
//!   cannot depose it while the leader still reaches a majority.

mod error;
mod group;
mod liveness;
mod machine;
mod network;
mod store;
mod wire;

use std::collections::BTreeMap;

pub use error::{ControlError, TransportError};
pub use group::{
    ControlGroup, ControlLimits, ControlOptions, ControlStatus, ControlTiming, Role, SnapshotPolicy,
};
pub use machine::Applied;
pub use store::{FILE_NAME, FORMAT_VERSION};
pub use wire::{WIRE_VERSION, rpc};

/// A member's id in the control group. Stable for the life of the cluster.
pub type NodeId = u64;

/// The members of the group: id and name (for messages and status).
pub type Members = BTreeMap<NodeId, String>;

/// The replicated state machine, opaque to this crate: deterministic, no clock, no I/O.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command; returns the response the proposer gets. Must be
    /// deterministic (every member applies the same commands in the same order and must reach the
    /// same state) and must not panic, whatever the bytes.
    fn apply(&mut self, command: &[u8]) -> Vec<u8>;
    /// The whole state, for snapshots.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state from a snapshot. Errors on a corrupt snapshot, and then leaves
    /// the state as it was.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// How a member reaches another: implemented by the region server over its mutual-TLS peer client
/// (and by tests in memory). `rpc` is one of the stable short names of [`rpc`]; `body` and the
/// answer are opaque bytes. The other end hands both to [`ControlGroup::handle`].
///
/// Error contract: [`TransportError::Unreachable`] only when the request surely did not reach the
/// member (no connection could be made); [`TransportError::Failed`] when it may have (no answer);
/// [`TransportError::Remote`] when `handle` answered with an error (its code and message).
/// Implementations should bound each call (the control group bounds them too), and should give
/// up connecting well within the propose timeout and report that as `Unreachable`: a proposal
/// whose forwarding hangs until the deadline can only fail as ambiguous.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn call(&self, to: NodeId, rpc: &str, body: Vec<u8>) -> Result<Vec<u8>, TransportError>;
}
