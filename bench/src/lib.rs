//! Shared by the benchmarks under `bench/src/bin` (not a library anyone else uses).
//!
//! - [`demo`]: starts `atoll demo` on a free port base and waits until it is ready.

pub mod demo;
