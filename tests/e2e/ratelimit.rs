//! End-to-end: rate limits counted across three real region processes
//! (`docs/design/rate-limits.md`), every byte between regions through an `atoll link` mesh (5 ms
//! each way) so the test can cut them.
//!
//! - connected: admissions in every region add up; once the limit is reached every region
//!   refuses (429, nothing counted);
//! - cut into three pieces: with `budget = "shared"` each region admits up to the limit on its
//!   own (the documented overshoot: at most 3 x limit in all), with `budget = "split"` each admits
//!   its share and the cluster never more than the limit; after the heal every region counts
//!   every admission.
//!
//! Windows are a day long (`window = "1d"`), so no window ends while the test runs; the test
//! waits for the next window first if the current one ends within two minutes. Heartbeats run at
//! 200 ms (the testkit's default for link tests) so that a cut is noticed quickly; the rule under
//! test does not depend on them. Every wait has a deadline.

use crate::common::{self, BIN, ok};
use anyhow::{Result, bail, ensure};
use atoll_config::Policy;
use atoll_config::render::KeyspaceToml;
use atoll_testkit::{Client, Cluster, ClusterOptions, poll};
use serde_json::{Value, json};
use std::ops::ControlFlow;
use std::time::Duration;

const LIMIT: u64 = 6;

fn start() -> Cluster {
    ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("ratelimit")
            .with_links(5.0)
            .keyspace(
                KeyspaceToml::new("quota", Policy::RateLimit)
                    .line(&format!("limit = {LIMIT}"))
                    .line("window = \"1d\"")
                    .line("algorithm = \"fixed\""),
            )
            .keyspace(
                KeyspaceToml::new("quota-split", Policy::RateLimit)
                    .line(&format!("limit = {LIMIT}"))
                    .line("window = \"1d\"")
                    .line("algorithm = \"fixed\"")
                    .line("budget = \"split\""),
            ),
    ))
}

/// `POST /v1/ratelimit/{ks}/{key}` with cost 1: the status and the decision.
async fn hit(c: &Client, ks: &str, key: &str) -> Result<(u16, Value)> {
    let r = c
        .request_raw(
            reqwest::Method::POST,
            &format!("/v1/ratelimit/{ks}/{key}"),
            &[],
            json!({"cost": 1}).to_string(),
        )
        .await?;
    let status = r.status;
    ensure!(
        status == 200 || status == 429,
        "POST {ks}/{key}: HTTP {status}: {}",
        r.text()
    );
    Ok((status, r.json()?))
}

/// What a region says is left of `ks/key`.
async fn remaining(c: &Client, ks: &str, key: &str) -> Result<u64> {
    let r = c
        .get_raw(&format!("/v1/ratelimit/{ks}/{key}"))
        .await?
        .expect(200)?;
    r.json()?["remaining"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no remaining"))
}

/// Waits until every region says `left` remain of `ks/key`.
async fn wait_remaining(c: &Cluster, ks: &str, key: &str, left: u64) -> Result<()> {
    for name in c.names() {
        let client = c.client(&name);
        poll(
            common::DEADLINE,
            Duration::from_millis(50),
            "replication",
            || {
                let client = client.clone();
                async move {
                    let n = remaining(&client, ks, key).await?;
                    Ok(if n == left {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(format!("{n} left"))
                    })
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// If the current (day-long) window ends within two minutes, waits until it has ended.
async fn away_from_a_window_end(c: &Client) -> Result<()> {
    let r = c.get_raw("/v1/ratelimit/quota/probe").await?.expect(200)?;
    let reset = r.json()?["reset_at_ms"].as_u64().unwrap_or(0);
    let now = atoll_core::clock::Clock::physical_ms(&atoll_core::clock::SystemClock);
    if reset.saturating_sub(now) < 120_000 {
        tokio::time::sleep(Duration::from_millis(reset.saturating_sub(now) + 1_000)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_counts_every_region_and_holds_its_bounds_when_cut() {
    let c = start();
    ok(scenario(&c).await);
}

async fn scenario(c: &Cluster) -> Result<()> {
    c.wait_converged(common::DEADLINE).await?;
    let names = c.names();
    away_from_a_window_end(&c.client(&names[0])).await?;

    // Connected: two admissions per region, each replicated before the next.
    let mut admitted = 0;
    for round in 0..2 {
        for name in &names {
            let (status, d) = hit(&c.client(name), "quota", "connected").await?;
            ensure!(status == 200, "round {round} at {name}: {d}");
            admitted += 1;
            wait_remaining(c, "quota", "connected", LIMIT - admitted).await?;
        }
    }
    for name in &names {
        let (status, d) = hit(&c.client(name), "quota", "connected").await?;
        ensure!(
            status == 429 && d["allowed"] == false && d["remaining"] == 0,
            "{name} admitted past the limit: {d}"
        );
    }
    wait_remaining(c, "quota", "connected", 0).await?;

    // Cut into three pieces.
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            c.partition(a, b)?;
        }
    }
    let mut shared = 0;
    let mut split = 0;
    for name in &names {
        let client = c.client(name);
        let mut mine = (0, 0);
        for _ in 0..(2 * LIMIT) {
            if hit(&client, "quota", "cut").await?.0 == 200 {
                mine.0 += 1;
            }
            if hit(&client, "quota-split", "cut").await?.0 == 200 {
                mine.1 += 1;
            }
        }
        ensure!(
            mine.0 == LIMIT,
            "{name} admitted {} on its own with a shared budget of {LIMIT}",
            mine.0
        );
        ensure!(
            mine.1 == LIMIT / 3,
            "{name} admitted {} with a split budget (its share is {})",
            mine.1,
            LIMIT / 3
        );
        shared += mine.0;
        split += mine.1;
    }
    ensure!(shared == 3 * LIMIT, "shared: {shared} admitted in all");
    ensure!(
        split == LIMIT,
        "split: {split} admitted in all, over the limit"
    );
    c.heal_all()?;
    c.wait_converged(common::DEADLINE).await?;
    // Every region now counts every admission: nothing is left anywhere.
    for (ks, left) in [("quota", 0), ("quota-split", 0)] {
        wait_remaining(c, ks, "cut", left).await?;
    }
    let (status, d) = hit(&c.client(&names[1]), "quota", "cut").await?;
    if status != 429 {
        bail!("admitted after the heal although {shared} were admitted: {d}");
    }
    Ok(())
}
