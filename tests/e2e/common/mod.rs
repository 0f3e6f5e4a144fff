//! Shared by the end-to-end tests of the `atoll` binary (`tests/e2e/main.rs`).
#![allow(dead_code)]

pub mod load;

use anyhow::{anyhow, ensure};
use atoll_testkit::cluster::peer_status;
use serde_json::Value;
use std::collections::BTreeMap;
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

/// `me` shows `other` unreachable yet holds every write of it (`applied` is the converged vector).
pub fn holds_all_of_unreachable(
    st: &Value,
    me: &str,
    other: &str,
    applied: &BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    let p = peer_status(st, other).ok_or_else(|| anyhow!("{me}: no peer {other}"))?;
    ensure!(
        p["reachable"] == false && p["state"] == "unreachable",
        "{me} should show {other} unreachable: {p}"
    );
    ensure!(
        p["lag_ops"] == 0 && p["applied_seq"].as_u64() == applied.get(other).copied(),
        "{me} should hold everything {other} wrote: {p}, applied {applied:?}"
    );
    Ok(())
}

/// `POST {endpoint}/v1/admin/switchover` to `target` with the admin `token`: the status and the
/// report.
pub async fn switchover(endpoint: &str, token: &str, target: &str) -> anyhow::Result<(u16, Value)> {
    let resp = reqwest::Client::new()
        .post(format!("{endpoint}/v1/admin/switchover"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "target": target }))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let report: Value = resp.json().await?;
    Ok((status, report))
}

/// The value of a counter metric series of a region (`name{labels}` exactly as exposed; 0 when
/// the series is absent).
pub async fn metric(c: &atoll_testkit::Client, series: &str) -> anyhow::Result<f64> {
    let text = c.get_raw("/metrics").await?.expect(200)?.text();
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0))
}

/// Sends `region` SIGHUP: it re-reads its config (`docs/design/adding-regions.md`,
/// `docs/design/region-removal.md`).
pub fn sighup(c: &atoll_testkit::Cluster, region: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let pid = c
        .region(region)
        .pid()
        .with_context(|| format!("{region} is not running"))?;
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .context("run kill -HUP")?;
    ensure!(st.success(), "kill -HUP {pid} failed: {st}");
    Ok(())
}
