//! End-to-end: a bounded operation log and bootstrap by snapshot, on three real region processes
//! (`docs/design/oplog-truncation.md`).
//!
//! - 200,000 overwrites of 1,000 keys: once every region has applied them, each region's log of
//!   the writing region is truncated to its newest entry, and every region still reads the last
//!   value of every key;
//! - a region whose data directory is wiped (after its peers truncated their logs, so replaying
//!   from sequence 1 is impossible) finds out from its peers' heartbeats that it lost writes,
//!   bootstraps from a peer's snapshot, and then holds every acknowledged write of every region,
//!   its own included; its next write gets a sequence number above what its peers hold, so they
//!   apply it.
//!
//! Deviation from the shipped defaults, on purpose: `[replication] oplog_retention = "0s"`. The
//! shipped 10 minutes would keep every entry of a test that lasts a minute; the rule under test
//! (nothing leaves a log before every region applied it) does not depend on the retention, which
//! is only a margin on top. Heartbeats run at the shipped 1 s, maintenance at its fixed 5 s.
//! Every wait has a deadline.

use crate::common;

use anyhow::{Context, Result, bail, ensure};
use atoll_testkit::{Client, Cluster, ClusterOptions, poll, run_with_timeout};
use common::{BIN, metric, ok};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const AP: &str = "ap-southeast-1";

const KEYS: usize = 1_000;
const OVERWRITES: usize = 200_000;
const WRITERS: usize = 16;
/// The load stops after this long even if it has not written everything (the test then fails).
const LOAD_LIMIT: Duration = Duration::from_secs(240);
const CONVERGE: Duration = Duration::from_secs(120);
/// Truncation runs every 5 s and removes at most 50,000 entries a pass.
const TRUNCATED: Duration = Duration::from_secs(90);

fn start(name: &str) -> Cluster {
    ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new(name)
            .heartbeat_interval_ms(atoll_config::DEFAULT_HEARTBEAT_INTERVAL_MS)
            .oplog_retention("0s"),
    ))
}

/// `replication.oplog_truncated_through[origin]` of a region's status.
async fn truncated_through(c: &Client, origin: &str) -> Result<u64> {
    let s = c.status().await?;
    Ok(s["replication"]["oplog_truncated_through"][origin]
        .as_u64()
        .unwrap_or(0))
}

/// What a region has applied of `origin`.
async fn applied_of(c: &Client, origin: &str) -> Result<u64> {
    let s = c.status().await?;
    Ok(s["replication"]["applied"][origin].as_u64().unwrap_or(0))
}

/// Waits until every region's log of each `(origin, at_least)` is truncated through at least
/// that sequence number.
async fn wait_truncated(c: &Cluster, want: &[(&str, u64)]) -> Result<()> {
    for name in c.names() {
        let client = c.client(&name);
        poll(TRUNCATED, Duration::from_millis(500), "truncation", || {
            let client = client.clone();
            let name = name.clone();
            async move {
                let mut short = Vec::new();
                for (origin, at_least) in want {
                    let t = truncated_through(&client, origin).await?;
                    if t < *at_least {
                        short.push(format!("{origin} through {t} of {at_least}"));
                    }
                }
                Ok(if short.is_empty() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(format!("{name} truncated {}", short.join(", ")))
                })
            }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operation_log_stays_bounded_under_overwrites() {
    let c = start("truncate");
    ok(bounded(&c).await);
}

async fn bounded(c: &Cluster) -> Result<()> {
    c.wait_converged(CONVERGE).await?;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let client = c.client(US);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= OVERWRITES || started.elapsed() > LOAD_LIMIT {
                    return Ok::<(), anyhow::Error>(());
                }
                let key = format!("k{}", i % KEYS);
                client
                    .kv_put("sessions", &key, format!("v{i}"), None)
                    .await
                    .with_context(|| format!("write {i}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let head = applied_of(&c.client(US), US).await?;
    ensure!(
        head >= OVERWRITES as u64,
        "only {head} of {OVERWRITES} writes in {:?} (load limit {LOAD_LIMIT:?})",
        started.elapsed()
    );
    println!("{OVERWRITES} overwrites in {:?}", started.elapsed());
    c.wait_converged(CONVERGE).await?;
    // Every region's log of us-east-1 goes down to its newest entry.
    wait_truncated(c, &[(US, head - 1)]).await?;
    // `atoll status` says how far each origin's log is truncated.
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["status", "--endpoint", &c.endpoint(US)]);
    let out = run_with_timeout(cmd, Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("operation log truncated through: ")
            && text.contains(&format!("us-east-1 {}", head - 1)),
        "atoll status:\n{text}"
    );
    // The data is all there: the last value of every key, in every region.
    let last = |k: usize| {
        let mut i = OVERWRITES - 1;
        while i % KEYS != k {
            i -= 1;
        }
        format!("v{i}")
    };
    for name in c.names() {
        let client = c.client(&name);
        for k in (0..KEYS).step_by(37) {
            let got = client.kv_get("sessions", &format!("k{k}")).await?;
            ensure!(
                got.value() == Some(last(k).as_bytes()),
                "{name}: k{k} reads {:?}, want {}",
                got.value().map(String::from_utf8_lossy),
                last(k)
            );
        }
        println!(
            "{name}: oplog table {} bytes on disk, data table {} bytes",
            metric(&client, "atoll_store_disk_bytes{table=\"oplog\"}").await?,
            metric(&client, "atoll_store_disk_bytes{table=\"data\"}").await?
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_region_bootstraps_from_a_peer_and_loses_nothing() {
    let mut c = start("bootstrap");
    ok(wiped(&mut c).await);
}

async fn wiped(c: &mut Cluster) -> Result<()> {
    c.wait_converged(CONVERGE).await?;
    let (us, ap) = (c.client(US), c.client(AP));
    for i in 0..300 {
        us.kv_put("sessions", &format!("us-{i}"), format!("u{i}"), None)
            .await?;
        ap.kv_put("sessions", &format!("ap-{i}"), format!("a{i}"), None)
            .await?;
    }
    for _ in 0..25 {
        ap.counter_add("ratelimits", "hits", 2).await?;
        us.counter_add("ratelimits", "hits", 1).await?;
    }
    let ap_head = applied_of(&ap, AP).await?;
    c.wait_converged(CONVERGE).await?;
    // Both peers truncate their logs of both writers: replaying from sequence 1 is impossible.
    wait_truncated(c, &[(US, 2), (AP, 2)]).await?;

    // ap-southeast-1 loses its disk.
    c.kill9(AP)?;
    let dir = c.region(AP).data_dir().to_path_buf();
    std::fs::remove_dir_all(&dir).with_context(|| format!("wipe {}", dir.display()))?;
    c.restart(AP)?;
    let ap = c.client(AP);
    poll(CONVERGE, Duration::from_millis(250), "bootstrap", || {
        let ap = ap.clone();
        async move {
            let done = metric(&ap, "atoll_bootstraps_total{outcome=\"complete\"}").await?;
            let health = ap.healthz().await.unwrap_or(0);
            Ok(if done >= 1.0 && health == 200 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!(
                    "bootstraps complete {done}, /healthz {health}: {}",
                    ap.status()
                        .await
                        .map(|s| s["replication"]["bootstrap"].to_string())
                        .unwrap_or_default()
                ))
            })
        }
    })
    .await?;
    // It found out from its peers that it lost writes (nothing else could have started it).
    let log = c.region(AP).log();
    let line = log
        .lines()
        .find(|l| l.contains("bootstrapping by snapshot"))
        .unwrap_or_default();
    ensure!(
        line.contains("lost writes"),
        "no lost-writes bootstrap in {AP}'s log: {line:?}"
    );
    println!("{line}");
    c.wait_converged(CONVERGE).await?;
    // Every acknowledged write of both regions is there, ap's own included.
    for i in 0..300 {
        for (key, want) in [
            (format!("us-{i}"), format!("u{i}")),
            (format!("ap-{i}"), format!("a{i}")),
        ] {
            let got = ap.kv_get("sessions", &key).await?;
            if got.value() != Some(want.as_bytes()) {
                bail!("after the bootstrap {key} reads {:?} in {AP}", got.value());
            }
        }
    }
    ensure!(
        ap.counter_get("ratelimits", "hits").await? == 75,
        "the counter lost increments"
    );
    // Its next write comes after what its peers hold of it, so they apply it.
    ensure!(
        applied_of(&ap, AP).await? >= ap_head,
        "ap's head went back below {ap_head}"
    );
    ap.kv_put("sessions", "after", "wipe", None).await?;
    c.client(US)
        .wait_value("sessions", "after", b"wipe", CONVERGE)
        .await?;
    Ok(())
}
