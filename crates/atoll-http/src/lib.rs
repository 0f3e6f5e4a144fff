//! HTTP plumbing that the region's API (`atoll-server`) and the router's proxy (`atoll-router`)
//! share: axum/hyper layers with no knowledge of atoll's data or cores.
//!
//! - [`unread`]: request bodies answered before they were read are drained after the answer, so
//!   the client can read it.

pub mod unread;
