//! Pure cores of atoll. Nothing here opens a socket, spawns a task or reads the wall clock
//! (except [`clock::SystemClock`], the one place that does): events in, states and decisions out.
//!
//! - [`error`]: errors with stable codes, HTTP status, retryability and a hint.
//! - [`region`]: region identifiers.
//! - [`clock`], [`hlc`]: the physical clock source and the hybrid logical clock.
//! - [`causal`]: dots, version vectors and causal contexts (dotted version vectors).
//! - [`crdt`]: LWW register, multi-value register, PN-counter, add-wins OR-set.
//! - [`op`]: keyspace policies, per-key state, client intents and the replicated operation log entry.
//! - [`codec`]: versioned binary encodings and the `X-Atoll-Context` token.
//! - [`repl`]: the replication core (heartbeats, reachability, relay subscriptions, admission,
//!   lag, clock-skew hold-back, stability claims and the tombstone horizon) and the stream framing.
//! - [`driver`]: the replication driver around the core (timers, subscriptions, served
//!   streams): commands out, executed by the region server and by the simulation.
//! - [`session`]: session tokens (what a client has seen) and the decision about a read that
//!   presents one; the bounded-staleness test.
//! - [`fence`]: split-brain fencing: the write lease's replicated state machine and each
//!   member's lease timers and role.
//! - [`geo`]: great-circle distance, for the latency model.
//! - [`strong`]: the state machine of strong keyspaces: linearizable registers with
//!   compare-and-set by revision, replicated by consensus.
//! - [`home`]: region ownership of owned keyspaces: home rules (prefix, hash range, default or
//!   first write), the replicated home table with its moves and claims, and the control
//!   group's state (lease and homes).

pub mod causal;
pub mod clock;
pub mod codec;
pub mod crdt;
pub mod driver;
pub mod error;
pub mod fence;
pub mod geo;
pub mod hlc;
pub mod home;
pub mod op;
pub mod region;
pub mod repl;
pub mod session;
pub mod strong;

pub use error::{AtollError, ErrorBody, Result};
pub use region::RegionId;
