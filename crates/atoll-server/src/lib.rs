//! Adapters around the store: the region's client HTTP API v1 (axum), its Prometheus metrics,
//! its OpenAPI document, replication (and which peers stream this region's writes), the peer
//! listener and client (mutual TLS between regions, `peer`), and the region process runtime
//! (listen, serve, shut down gracefully).

pub mod api;
pub mod metrics;
pub mod openapi;
pub mod peer;
pub mod region;
pub mod replication;
pub mod streams;

pub use region::{RegionOptions, RegionServer};
