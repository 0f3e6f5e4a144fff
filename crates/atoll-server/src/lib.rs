//! Adapters around the store: the region's client HTTP API v1 (axum) and its optional client
//! authentication (`auth`), its Prometheus metrics (and the count of open client connections, `conns`), its OpenAPI document, replication (and which
//! peers stream this region's writes), the peer listener and client (mutual TLS between regions,
//! `peer`), a standby's forwarding of writes to the primary (`forward`), strong keyspaces on their consensus group (`strong`), the RESP front's view of the region (`resp`, over `atoll-resp`), the draining of request bodies answered before they were read (`unread`), and the
//! region process runtime (listen, serve, shut down gracefully).

pub mod api;
pub mod arbiter;
pub mod auth;
pub mod conns;
pub mod control;
pub mod fencing;
pub mod forward;
pub mod homes;
pub mod members;
pub mod metrics;
pub mod openapi;
pub mod peer;
pub mod ratelimit;
pub mod region;
pub mod replication;
pub mod resp;
pub mod session;
pub mod streams;
pub mod strong;
pub mod ttl;
pub mod watch;
pub use atoll_http::unread;

pub use region::{RegionOptions, RegionServer};
