//! The RESP (Redis serialization protocol) front of a region (`docs/design/resp.md`): `redis-cli`
//! and Redis client libraries read and write atoll keyspaces on a port of the region's own.
//!
//! An adapter in the sense of `ARCHITECTURE.md`: [`frame`] takes requests off the wire (limits
//! first, then `redis-protocol`'s decoder), [`command`] parses them into what they ask,
//! [`exec`] maps a command to reads and intents of a [`Host`] (the region server implements it
//! over its store, write path, tokens and replicator) and [`reply`] encodes the answer in RESP2
//! or RESP3. [`server`] is the tokio listener. Nothing here decides what the HTTP API does not:
//! writes go through the host's one write path, so fencing, homes and grants apply alike.

pub mod command;
pub mod exec;
pub mod frame;
pub mod reply;
pub mod server;

pub use exec::{Host, HostInfo, PeerInfo, Pipelined, Session, Submitted};
pub use frame::Limits;
pub use reply::Reply;
pub use server::{RespError, RespListener, connection};

/// The frame limits for `config`: arguments up to the largest `max_value_bytes` of its
/// keyspaces (the store checks each key's own keyspace).
pub fn limits_for(config: &atoll_config::Config) -> Limits {
    let max = config
        .keyspaces
        .iter()
        .map(|k| k.max_value_bytes)
        .max()
        .unwrap_or(atoll_config::DEFAULT_MAX_VALUE_BYTES);
    Limits::for_values(max)
}
