//! `atoll link`: WAN emulation and fault injection between regions.
//!
//! A region-aware TCP proxy, like toxiproxy, built into atoll because the machines it runs on have
//! no `netem`. Each named link (`us-east-1->eu-west-1`) listens on one address and forwards every
//! connection to an upstream, giving each direction a latency, a jitter and a bandwidth limit, and
//! applying faults: partitions (stall or refuse), one-way partitions, connection resets and
//! latency spikes. A fault goes on one link, on a pair of regions (`us-east-1<->eu-west-1`: both
//! directions) or on a region (isolate: every link to and from it), with one id and one lease
//! however many links it covers. Every fault has a lease and ends by itself; faults live only in
//! the process that added them, so they cannot outlive their controller.
//!
//! Layout (pure cores, adapters at the edges):
//! - [`model`] (pure): links, shaping, fault targets, faults with leases, [`model::Mesh::effective`].
//! - [`sched`] (pure): jitter samples, order-preserving release times, token bucket.
//! - [`timer`]: sub-millisecond sleeps for the pumps (tokio's timer has 1 ms ticks).
//! - [`geo`] (pure): the geographic latency model (haversine, fiber speed, route factor).
//! - [`units`] (pure): `10m` durations and `10MB/s` bandwidths.
//! - [`config`]: strict `links.toml` and [`config::links_from_cluster`] for an `atoll.toml`.
//! - [`proxy`]: the tokio adapter and the in-process API, [`LinkServer`].
//! - [`control`]: the control HTTP API (axum).
//! - [`metrics`]: Prometheus metrics (`atoll_link_*`).
//!
//! The `atoll link ...` command line over these is `atoll-cli`'s (`atoll_cli::link`).
//!
//! In process (tests, `atoll demo`, drills):
//!
//! ```no_run
//! # async fn f() -> Result<(), atoll_link::LinkError> {
//! use atoll_link::{FaultKind, LinkServer, LinkSpec, PartitionMode};
//! use std::time::Duration;
//! let spec = LinkSpec::new(
//!     "us-east-1->eu-west-1",
//!     "127.0.0.1:0".parse().unwrap(),
//!     "127.0.0.1:7101".parse().unwrap(),
//! )
//! .with_delay(39.8);
//! let server = LinkServer::start(vec![spec], Some("127.0.0.1:0".parse().unwrap())).await?;
//! let dial = server.listen_addr("us-east-1->eu-west-1").unwrap();
//! let id = server.add_fault(
//!     "us-east-1->eu-west-1",
//!     FaultKind::Partition { mode: PartitionMode::Stall },
//!     Duration::from_secs(30),
//! )?;
//! server.remove_fault("us-east-1->eu-west-1", id)?;
//! server.shutdown().await;
//! # let _ = dial; Ok(()) }
//! ```

pub mod config;
pub mod control;
pub mod error;
pub mod geo;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod sched;
pub mod timer;
pub mod units;

pub use config::{geo_shaping, links_from_cluster, load_links, parse_links, validate_links};
pub use error::{LinkError, Result};
pub use model::{
    DirEffect, Direction, Effective, Fault, FaultId, FaultKind, FaultTarget, LinkSpec, Mesh,
    PartitionMode, Shaping, SpikeDirection,
};
pub use proxy::{Counters, FaultInfo, LinkServer, LinkStatus, ProxyOptions};
pub use units::{format_duration_ms, parse_bandwidth, parse_duration_ms};
