//! Adapters around the store: the region's client HTTP API v1 (axum), its Prometheus metrics,
//! its OpenAPI document, and the region process runtime (listen, serve, shut down gracefully).

pub mod api;
pub mod metrics;
pub mod openapi;
pub mod region;
pub mod replication;

pub use region::{RegionOptions, RegionServer};
