//! atoll's global traffic manager.
//!
//! Pure cores: [`health`] (the health-check state machine: thresholds, initial state, hold-down
//! against flapping, passive outlier ejection, staged failback, regions that say they are
//! passive) and [`policy`] (latency, failover and weighted choices, the explicit behaviour when
//! nothing is healthy, and following the write lease of split-brain fencing: writes to the
//! healthy `primary` first, failover names answer it, passive regions never chosen).
//!
//! Adapters, sharing one [`state::RouterState`] and one [`metrics::RouterMetrics`]: [`prober`]
//! (active health checks, drain expiry), [`proxy`] (HTTP reverse proxy with per-request
//! failover), [`dns`] (authoritative DNS), [`admin`] (admin API, persisted drains and weights),
//! [`codes`] (the stable error codes of the proxy and admin API, one `RouterCode` each with its
//! status, retryability and hint),
//! [`global`] (the global view: every region's status and metrics fanned out and merged by
//! [`federate`], and the web dashboard the admin API serves),
//! [`runtime`] (starts and stops them all; the `atoll router` command line over it is
//! `atoll-cli`'s); [`unread`] reads the rest of request bodies answered before they were read, so
//! clients can read the answer.

pub mod admin;
pub mod codes;
pub mod dns;
pub mod federate;
pub mod global;
pub mod health;
pub mod metrics;
pub mod policy;
mod pool;
pub mod prober;
pub mod proxy;
pub mod runtime;
pub mod state;
pub use atoll_http::unread;
