//! Shared by the end-to-end tests of the `atoll` binary (`tests/e2e/main.rs`).
#![allow(dead_code)]

pub mod load;

use std::time::Duration;

/// The binary under test; cargo builds it before running integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_atoll");
/// One region (`us-east-1`) with one keyspace of each policy: sessions (lww), carts (mvr),
/// ratelimits (counter), flags (set).
pub const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/single-region.toml");
pub const REGION: &str = "us-east-1";

/// Upper bound for any one wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `f` with `timeout`, turning a hang into a failure that says what hung.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| anyhow::anyhow!("{what} did not finish within {timeout:?}"))
}

/// Unwraps a scenario's result with a panic, so that the caller's regions and test directory
/// are dropped while unwinding: they then print the regions' logs and keep the directory.
/// (A test that returns `Err` drops them first, silently.)
#[track_caller]
pub fn ok<T>(r: anyhow::Result<T>) -> T {
    match r {
        Ok(t) => t,
        Err(e) => panic!("{e:?}"),
    }
}
