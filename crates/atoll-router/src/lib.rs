//! atoll's global traffic manager.
//!
//! Pure cores: [`health`] (the health-check state machine: thresholds, initial state, hold-down
//! against flapping, passive outlier ejection, staged failback) and [`policy`] (latency, failover
//! and weighted choices, and the explicit behaviour when nothing is healthy).

pub mod health;
pub mod policy;
pub mod state;
