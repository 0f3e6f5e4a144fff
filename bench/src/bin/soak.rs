//! Soak: a 3-region cluster (real `atoll region` processes, every inter-region connection through
//! an `atoll link` mesh) under steady mixed load for a long time, with a fault every few minutes:
//! a partition of a pair (healed after a while) or a `kill -9` of a region (restarted after a
//! while), in turn. Reports, over time: RSS and open file descriptors of every region (they must
//! stay flat), the replication lag after each fault (how long until every region is caught up
//! again), and at the end whether every acknowledged write is present in every region.
//!
//! Run by `bench/soak.sh` (30 minutes by default; not part of CI). Exits non-zero if an
//! acknowledged write was lost, the cluster did not converge, or memory or descriptors grew
//! beyond the stated bounds.

use anyhow::{Context, Result, bail};
use atoll_testkit::{Client, Cluster, ClusterOptions, atoll_bin};
use clap::Parser;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "Soak a 3-region cluster with load and faults; report RSS, fds, lag, losses")]
struct Args {
    /// How long the soak runs.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// A fault every this many seconds (partition and kill -9 in turn).
    #[arg(long, default_value_t = 180)]
    fault_every_secs: u64,
    /// How long a fault lasts before it is healed or the region restarted.
    #[arg(long, default_value_t = 20)]
    fault_secs: u64,
    /// Client writes per second per region (each region: one lww put and one counter add per
    /// tick).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// A resource sample every this many seconds.
    #[arg(long, default_value_t = 30)]
    sample_every_secs: u64,
    /// Keys each region's writer overwrites in turn (a bounded live set, as sessions are).
    #[arg(long, default_value_t = 5000)]
    keys: u64,
    /// One-way delay of every link, ms.
    #[arg(long, default_value_t = 20.0)]
    link_delay_ms: f64,
    /// Fail if a region's RSS at the end exceeds this multiple of its first steady sample.
    #[arg(long, default_value_t = 2.0)]
    max_rss_growth: f64,
    /// Fail if a region's open descriptors at the end exceed its first steady sample by this.
    #[arg(long, default_value_t = 64)]
    max_fd_growth: u64,
}

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];

/// What clients were told was written, per region of acceptance.
#[derive(Default)]
struct Acked {
    /// lww key -> (number of the last acknowledged write, number of the last attempted one). One
    /// writer per region writes its own keys in order, so the key must end holding a value at
    /// least as new as the last acknowledged one (a later write whose answer was lost may have
    /// landed too).
    puts: BTreeMap<String, (u64, u64)>,
    /// counter key -> sum of acknowledged deltas.
    sums: BTreeMap<String, i64>,
    refused: u64,
}

fn proc_sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss_kb, fds))
}

async fn writer(
    region: usize,
    client: Client,
    rate: u64,
    keys: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) {
    let tick = Duration::from_micros(1_000_000 / rate.max(1));
    let mut n: u64 = 0;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        next += tick;
        tokio::time::sleep_until(next).await;
        n += 1;
        let key = format!("soak-{region}-{}", n % keys.max(1));
        let put = client.kv_put("sessions", &key, format!("{n}"), None).await;
        let counter = format!("soak-c{}", n % 16);
        let add = client.counter_add("ratelimits", &counter, 1).await;
        let mut a = acked.lock().await;
        let entry = a.puts.entry(key).or_insert((0, 0));
        entry.1 = n;
        match put {
            Ok(_) => entry.0 = n,
            Err(_) => a.refused += 1,
        }
        match add {
            Ok(_) => *a.sums.entry(counter).or_default() += 1,
            Err(_) => a.refused += 1,
        }
    }
}

/// Seconds until every live region reports every peer up with lag under a second.
async fn time_to_catch_up(c: &Cluster, limit: Duration) -> Option<f64> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let mut all = true;
        for r in REGIONS {
            let ok = match c.status(r).await {
                Ok(st) => st["peers"].as_array().is_some_and(|ps| {
                    ps.iter().all(|p| {
                        p["state"] == "up" && p["lag_seconds"].as_f64().is_some_and(|l| l < 1.0)
                    })
                }),
                Err(_) => false,
            };
            all &= ok;
        }
        if all {
            return Some(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = atoll_bin();
    let mut c = Cluster::start(
        &bin,
        3,
        ClusterOptions::new("soak").with_links(args.link_delay_ms),
    )
    .context("starting the cluster")?;
    for r in REGIONS {
        c.wait_status(r, Duration::from_secs(30), |st| {
            st["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["state"] == "up"))
        })
        .await?;
    }
    println!(
        "soak: {} min, fault every {} s for {} s, {} puts + {} counter adds /s per region, links {} ms one way",
        args.minutes,
        args.fault_every_secs,
        args.fault_secs,
        args.rate,
        args.rate,
        args.link_delay_ms
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<Mutex<Acked>>> = REGIONS.iter().map(|_| Arc::default()).collect();
    let mut writers = Vec::new();
    for (i, r) in REGIONS.iter().enumerate() {
        writers.push(tokio::spawn(writer(
            i,
            c.client(r),
            args.rate,
            args.keys,
            stop.clone(),
            acked[i].clone(),
        )));
    }

    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let started = Instant::now();
    let mut next_fault = Duration::from_secs(args.fault_every_secs);
    let mut next_sample = Duration::ZERO;
    let mut faults = 0usize;
    let mut first: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut catch_ups = Vec::new();
    println!("\n| t (s) | region | RSS (MiB) | open fds |\n|---|---|---|---|");
    while started.elapsed() < total {
        let t = started.elapsed();
        if t >= next_sample {
            next_sample += Duration::from_secs(args.sample_every_secs);
            for r in REGIONS {
                let Some(pid) = c.region(r).pid() else {
                    continue;
                };
                if let Some((rss, fds)) = proc_sample(pid) {
                    println!(
                        "| {:.0} | {r} | {:.1} | {fds} |",
                        t.as_secs_f64(),
                        rss as f64 / 1024.0
                    );
                    // The first sample after a minute of load is the baseline (warm caches).
                    if t >= Duration::from_secs(60) {
                        first.entry(r).or_insert((rss, fds));
                    }
                    last.insert(r, (rss, fds));
                }
            }
        }
        if t >= next_fault && t + Duration::from_secs(args.fault_secs + 30) < total {
            next_fault += Duration::from_secs(args.fault_every_secs);
            let victim = REGIONS[faults % REGIONS.len()];
            let kind = if faults.is_multiple_of(2) {
                "partition"
            } else {
                "kill -9"
            };
            let other = REGIONS[(faults + 1) % REGIONS.len()];
            let fault_at = Instant::now();
            if kind == "partition" {
                c.partition(victim, other)?;
                tokio::time::sleep(Duration::from_secs(args.fault_secs)).await;
                c.heal(victim, other)?;
            } else {
                c.kill9(victim)?;
                tokio::time::sleep(Duration::from_secs(args.fault_secs)).await;
                c.restart(victim)?;
            }
            let healed_at = fault_at.elapsed().as_secs_f64();
            let catch_up = time_to_catch_up(&c, Duration::from_secs(120)).await;
            println!(
                "| {:.0} | fault {}: {kind} {victim}{} for {:.0} s; caught up {} after healing |  |",
                t.as_secs_f64(),
                faults + 1,
                if kind == "partition" {
                    format!(" <-> {other}")
                } else {
                    String::new()
                },
                healed_at,
                catch_up.map_or("NEVER (120 s)".to_string(), |s| format!("{s:.1} s"))
            );
            catch_ups.push((kind, victim, catch_up));
            faults += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    // Every acknowledged write, in every region.
    c.wait_converged(Duration::from_secs(120))
        .await
        .context("the cluster did not converge after the soak")?;
    let mut lost = Vec::new();
    let mut puts = 0u64;
    let mut refused = 0u64;
    for a in &acked {
        let a = a.lock().await;
        puts += a
            .puts
            .values()
            .map(|(acked, _)| u64::from(*acked > 0))
            .sum::<u64>();
        refused += a.refused;
        for r in REGIONS {
            let client = c.client(r);
            for (k, (acked_n, attempted_n)) in &a.puts {
                if *acked_n == 0 {
                    continue;
                }
                let got = match client.kv_get("sessions", k).await {
                    Ok(read) => read
                        .value()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.parse::<u64>().ok()),
                    Err(_) => None,
                };
                if !got.is_some_and(|g| g >= *acked_n && g <= *attempted_n) {
                    lost.push(format!(
                        "{r}: sessions/{k} holds {got:?}, acknowledged write {acked_n}"
                    ));
                }
            }
        }
    }
    // Counters: the sum of every region's acknowledged adds, per key.
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    for a in &acked {
        for (k, n) in &a.lock().await.sums {
            *sums.entry(k.clone()).or_default() += n;
        }
    }
    for r in REGIONS {
        let client = c.client(r);
        for (k, want) in &sums {
            let got = client.counter_get("ratelimits", k).await.unwrap_or(-1);
            if got < *want {
                lost.push(format!(
                    "{r}: ratelimits/{k} is {got}, acknowledged adds sum to {want}"
                ));
            }
        }
    }

    println!(
        "\n{} keys with an acknowledged put, {} counter keys, {} requests refused or failed during faults",
        puts,
        sums.len(),
        refused
    );
    let mut problems = Vec::new();
    if !lost.is_empty() {
        problems.push(format!(
            "{} acknowledged writes missing, first: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }
    for (kind, victim, catch_up) in &catch_ups {
        if catch_up.is_none() {
            problems.push(format!("never caught up after {kind} {victim}"));
        }
    }
    for r in REGIONS {
        if let (Some((rss0, fd0)), Some((rss1, fd1))) = (first.get(r), last.get(r)) {
            println!(
                "{r}: RSS {:.1} -> {:.1} MiB, fds {fd0} -> {fd1}",
                *rss0 as f64 / 1024.0,
                *rss1 as f64 / 1024.0
            );
            if (*rss1 as f64) > (*rss0 as f64) * args.max_rss_growth {
                problems.push(format!("{r}: RSS grew from {rss0} KiB to {rss1} KiB"));
            }
            if *fd1 > fd0 + args.max_fd_growth {
                problems.push(format!("{r}: open fds grew from {fd0} to {fd1}"));
            }
        }
    }
    if problems.is_empty() {
        println!("soak passed: nothing acknowledged lost, every fault caught up, RSS and fds flat");
        Ok(())
    } else {
        bail!("soak failed:\n- {}", problems.join("\n- "))
    }
}
