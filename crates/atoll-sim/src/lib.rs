//! Deterministic simulation of several atoll regions.
//!
//! Each simulated region runs the real [`atoll_store::Store`] (on an in-memory backend that
//! survives crashes) and the production replication driver ([`atoll_core::driver`], which the
//! region server runs too), over a simulated network: one-way heartbeats, per-peer subscriptions
//! served as streams of operation-log entries beyond the subscriber's applied vector, periodic
//! maintenance with the tombstone horizon. Everything is a discrete event on a virtual
//! clock, ordered by time and then by insertion, and every random choice comes from one seeded RNG,
//! so a seed replays exactly (the store's writer thread is the only other thread, and every call
//! into it blocks until done).
//!
//! - [`sim`]: the harness ([`Sim`]): regions, network, events and phases; its modules hold the
//!   run options and seed plans (`options`), the replication executor (`repl`), client writes
//!   and the oracle (`client`), faults (`chaos`) and, in fenced runs, the production fencing
//!   (`atoll_core::fence`) over a modelled control group (`control`).
//! - [`fencing`]: the options of a fenced run, drifting monotonic clocks, the store's write gate,
//!   the model of the control group and its limits, and what the fencing checkers record.
//! - [`model`]: the history of acknowledged writes the checkers judge the final state against.
//! - [`check`]: one checker per invariant.
//! - [`net`]: links with latency, jitter and per-direction up/down flags.
//! - [`trace`]: the event log hash (determinism) and the optional printed trace.
//! - [`drill`]: a drill scenario (`drills/*.toml`) run in the simulation over many seeds, judged
//!   by the drill's own checkers (the `atoll-sim` binary: `--scenario FILE --seeds N`).

pub mod check;
pub mod drill;
pub mod fencing;
pub mod model;
pub mod net;
pub mod sim;
pub mod trace;

pub use check::{Invariant, Violation};
pub use fencing::FencingOptions;
pub use model::WriteOp;
pub use sim::{Failure, Outcome, Sim, SimOptions, plan_for_seed, run_seed};
