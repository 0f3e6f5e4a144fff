//! `atoll drill`: declared failover drills (issue 9). A scenario file (`drills/*.toml`) names a
//! load and a sequence of steps (drain, isolate, partition, one-way partition, latency, kill,
//! restart, promote, switchover, observe); the runner applies them to a live cluster while the
//! load generator measures what clients saw, guards abort and restore when the surviving regions
//! suffer, and the checkers say what was lost, what a fenced region accepted and what was applied
//! twice. Documented in `docs/drills.md`.
//!
//! Layout (pure cores, adapters at the edges):
//! - [`scenario`] (pure): the model, strict TOML parsing with file and line in every error,
//!   validation against a cluster config.
//! - [`history`] (pure): what the load saw and what the read-back found.
//! - [`check`] (pure): RPO, zombie-write and duplicate checkers.
//! - [`stats`] (pure): per-second buckets, sliding windows, guards, RTO.
//! - [`report`] (pure): the report, terminal summary, JSON, HTML with inline SVG.
//! - [`outcome`]: the versioned outcome store (when each scenario last passed).
//! - [`target`]: the cluster and its control APIs; [`target::RegionControl`] for kill/restart
//!   (demo control API, shell commands, or a test's own).
//! - [`load`]: the load generator. [`run`]: the runner.

pub mod check;
pub mod error;
pub mod history;
pub mod load;
pub mod outcome;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod target;

pub use error::{DrillError, Result};
pub use report::Report;
pub use run::{RunOptions, run};
pub use scenario::Scenario;
pub use target::{RegionControl, Target};
