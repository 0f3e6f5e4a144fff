//! Shared by the benchmarks under `bench/src/bin` (not a library anyone else uses).
//!
//! - [`conn`]: one keep-alive HTTP/1.1 connection, reconnected when needed.
//! - [`demo`]: starts `atoll demo` on a free port base and waits until it is ready.
//! - [`etcd`]: a 3-member etcd cluster behind `atoll link`, the peer some benchmarks measure.

pub mod conn;
pub mod demo;
pub mod etcd;
