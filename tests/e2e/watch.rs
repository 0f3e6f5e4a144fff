//! End-to-end: watches (`docs/design/watch.md`) between real region processes over mutual TLS,
//! every inter-region byte through an in-process `atoll link` mesh.
//!
//! - a watcher in ap-southeast-1 sees the writes made in each of the three regions, each exactly
//!   once and in per-key order, across a reconnect with its token, which it makes to another
//!   region (tokens name writes cluster-wide);
//! - while ap-southeast-1 is cut off from the other regions, us-east-1's writes do not reach the
//!   watcher there; after the heal they do, once each and in order;
//! - `atoll watch` (the CLI) prints changes as they arrive and stops after `--count`;
//! - a region that stops ends its open watches (SIGTERM: it exits 0, the stream ends).
//!
//! Every load is bounded in requests and time, and every wait has a deadline.

use crate::common;

use anyhow::{Result, bail, ensure};
use atoll_testkit::{Cluster, ClusterOptions};
use common::{BIN, ok};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const LINK_DELAY_MS: f64 = 5.0;
const DEADLINE: Duration = Duration::from_secs(40);

/// One long poll of `region`'s watch of `sessions` keys starting with `w-`.
async fn poll(c: &Cluster, region: &str, token: Option<&str>) -> Result<(Vec<Value>, String)> {
    let mut url = format!("{}/v1/watch/sessions?prefix=w-&wait=2s", c.endpoint(region));
    if let Some(t) = token {
        url.push_str(&format!("&token={t}"));
    }
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    ensure!(resp.status() == 200, "watch at {region}: {}", resp.status());
    let v: Value = resp.json().await?;
    let events = v["events"].as_array().cloned().unwrap_or_default();
    Ok((events, v["token"].as_str().unwrap_or_default().to_string()))
}

/// What a watcher collected: events by `(origin, seq)`, in arrival order.
#[derive(Default)]
struct Seen {
    order: Vec<Value>,
    ids: BTreeSet<(String, u64)>,
}

impl Seen {
    fn take(&mut self, events: Vec<Value>) -> Result<()> {
        for e in events {
            ensure!(e["event"] == "change", "unexpected event {e}");
            let id = (
                e["origin"].as_str().unwrap_or_default().to_string(),
                e["seq"].as_u64().unwrap_or_default(),
            );
            ensure!(self.ids.insert(id.clone()), "event {id:?} came twice");
            self.order.push(e);
        }
        Ok(())
    }

    fn values_of(&self, origin: &str) -> usize {
        self.order.iter().filter(|e| e["origin"] == origin).count()
    }
}

/// Polls `region` from `token` until `done(seen)` (deadline: [`DEADLINE`]); returns the token.
async fn collect(
    c: &Cluster,
    region: &str,
    mut token: String,
    seen: &mut Seen,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) -> Result<String> {
    let end = Instant::now() + DEADLINE;
    while !done(seen) {
        if Instant::now() >= end {
            bail!(
                "{what}: not within {DEADLINE:?}; saw {} events",
                seen.order.len()
            );
        }
        let (events, next) = poll(c, region, Some(&token)).await?;
        seen.take(events)?;
        token = next;
    }
    Ok(token)
}

/// Writes `w-{region}-{i % 3}` = `{region}-{i}` for `i` in `range`, through `region`.
async fn write(c: &Cluster, region: &str, range: std::ops::Range<u32>) -> Result<()> {
    let client = c.client(region);
    for i in range {
        let key = format!("w-{region}-{}", i % 3);
        let r = client
            .kv_put_raw("sessions", &key, format!("{region}-{i}"), None)
            .await?;
        ensure!(
            r.status == 200,
            "write at {region}: {} {}",
            r.status,
            r.text()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_sees_every_regions_writes_once_in_order_across_a_reconnect_and_a_partition() {
    let mut c = ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("watch").with_links(LINK_DELAY_MS),
    ));
    ok(scenario(&c).await);
    ok(shutdown_ends_watches(&mut c).await);
}

/// A stopping region ends its open watches: an endless response would keep it from draining.
async fn shutdown_ends_watches(c: &mut Cluster) -> Result<()> {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/watch/sessions", c.endpoint(EU)))
        .send()
        .await?;
    ensure!(resp.status() == 200, "watch: {}", resp.status());
    atoll_testkit::wait_until_async(DEADLINE, "the watch to open", || async {
        watchers(c, EU).await == Some(1.0)
    })
    .await?;
    let status = tokio::task::block_in_place(|| c.terminate(EU))?;
    ensure!(status.success(), "eu-west-1 exited with {status}");
    let body = tokio::time::timeout(DEADLINE, resp.text())
        .await
        .map_err(|_| anyhow::anyhow!("the watch stream did not end with its region"))?
        .unwrap_or_default();
    ensure!(body.contains("event: ready"), "{body}");
    Ok(())
}

async fn scenario(c: &Cluster) -> Result<()> {
    let (_, start) = poll(c, AP, None).await?;
    let mut seen = Seen::default();
    // 12 writes in each region, 4 to each of 3 keys.
    for r in [US, EU, AP] {
        write(c, r, 0..12).await?;
    }
    // Half of them at ap-southeast-1, then the rest through eu-west-1 with the same token.
    let token = collect(
        c,
        AP,
        start,
        &mut seen,
        "the first half at ap-southeast-1",
        |s| s.order.len() >= 18,
    )
    .await?;
    let token = collect(c, EU, token, &mut seen, "the rest at eu-west-1", |s| {
        s.order.len() >= 36
    })
    .await?;
    // Each change once (checked as they came), all of them, and per key in write order.
    ensure!(seen.order.len() == 36, "{} events", seen.order.len());
    let mut last: BTreeMap<String, u32> = BTreeMap::new();
    for e in &seen.order {
        let key = e["key"].as_str().unwrap_or_default().to_string();
        let origin = e["origin"].as_str().unwrap_or_default();
        ensure!(key.starts_with(&format!("w-{origin}-")), "{e}");
        let seq = e["seq"].as_u64().unwrap_or_default() as u32;
        if let Some(prev) = last.insert(key.clone(), seq) {
            ensure!(prev < seq, "{key}: seq {seq} after {prev}");
        }
    }
    for r in [US, EU, AP] {
        ensure!(seen.values_of(r) == 12, "{r}: {} events", seen.values_of(r));
    }
    // Cut ap-southeast-1 off from both others (eu-west-1 would relay us-east-1's writes).
    c.partition(AP, US)?;
    c.partition(AP, EU)?;
    write(c, US, 12..18).await?;
    // Written (acknowledged by us-east-1) but not applied in ap-southeast-1: no event there.
    let (cut_events, token) = poll(c, AP, Some(&token)).await?;
    ensure!(
        cut_events.is_empty(),
        "events reached an isolated region: {cut_events:?}"
    );
    c.heal(AP, US)?;
    c.heal(AP, EU)?;
    collect(
        c,
        AP,
        token,
        &mut seen,
        "us-east-1's writes after the heal",
        |s| s.values_of(US) == 18,
    )
    .await?;
    let us_seqs: Vec<u64> = seen
        .order
        .iter()
        .filter(|e| e["origin"] == US)
        .map(|e| e["seq"].as_u64().unwrap_or_default())
        .collect();
    ensure!(
        us_seqs.windows(2).all(|w| w[0] < w[1]),
        "us-east-1's changes in order: {us_seqs:?}"
    );
    cli(c).await
}

/// `atoll watch` prints the changes as they come and stops after `--count`.
async fn cli(c: &Cluster) -> Result<()> {
    let child = tokio::process::Command::new(BIN)
        .args([
            "watch",
            "flags",
            "--prefix",
            "beta",
            "--count",
            "2",
            "--endpoint",
            &c.endpoint(AP),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // The watch starts at what ap-southeast-1 has applied when it connects: write only once it
    // is listening (it has then an open watch, `atoll_watchers` 1).
    atoll_testkit::wait_until_async(DEADLINE, "the CLI's watch to open", || async {
        watchers(c, AP).await == Some(1.0)
    })
    .await?;
    for (region, member) in [(US, "dark-mode"), (EU, "new-checkout")] {
        let r = c
            .client(region)
            .set_update_raw("flags", "beta", &[member], &[])
            .await?;
        ensure!(r.status == 200, "set add at {region}: {}", r.text());
    }
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output()).await??;
    ensure!(out.status.success(), "atoll watch failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    ensure!(lines.len() == 2, "{text}");
    ensure!(
        lines.iter().all(|l| l.starts_with("flags/beta: members [")),
        "{text}"
    );
    ensure!(
        lines.iter().any(|l| l.contains("(us-east-1 seq"))
            && lines.iter().any(|l| l.contains("(eu-west-1 seq")),
        "{text}"
    );
    Ok(())
}

async fn watchers(c: &Cluster, region: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", c.endpoint(region)))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("atoll_watchers ")?.trim().parse().ok())
}
