//! Session reads at geographic distances (issue 20): the read latency a session token adds just
//! after a remote write, next to the one-way link delay, and the share of session reads that had
//! to wait, in `atoll demo` (regions talking through `atoll link` at great-circle latency) under a
//! steady write load.
//!
//! Starts `atoll demo` (the binary given by `--atoll`) on a free port base, starts a background
//! writer (`--load` lww writes per second spread over the three regions, bounded by `--secs`),
//! then runs each case `--ops` times, sequentially:
//!
//! - **write here, read there**: a PUT in us-east-1 (its token), then at once a GET of the same
//!   key in ap-southeast-1 (or eu-west-1) presenting the token. The read waits until the region
//!   has applied the write; its latency is the added cost, next to the link's one-way delay (half
//!   the regions' measured heartbeat round trip).
//! - **the same GET without a token** (eventual): how often it misses the write (404 or an older
//!   value).
//! - **a session that stays in one region**: reads in ap-southeast-1 presenting the token of the
//!   previous read there (the common case: no wait expected).
//!
//! The share that waited comes from the region's own counters
//! (`atoll_consistency_reads_total{level="session",outcome="served"|"waited"|"stale"}`) read
//! before and after each case. Run by `bench/session.sh`; results in `docs/benchmarks.md`.

use anyhow::{Result, bail};
use atoll_bench::demo::Demo;
use clap::Parser;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The atoll binary (release).
    #[arg(long)]
    atoll: PathBuf,
    /// Probes per case.
    #[arg(long, default_value_t = 200)]
    ops: u64,
    /// Background lww writes per second (spread over the regions).
    #[arg(long, default_value_t = 300)]
    load: u64,
    /// Longest the whole run may take, in seconds.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Data directory of the demo (fresh).
    #[arg(long)]
    data_dir: PathBuf,
}

const SESSION: &str = "x-atoll-session";

/// The session read counters of a region: (served at once, waited, stale).
async fn counters(http: &reqwest::Client, endpoint: &str) -> Result<(f64, f64, f64)> {
    let text = http
        .get(format!("{endpoint}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let get = |outcome: &str| {
        let prefix =
            format!("atoll_consistency_reads_total{{level=\"session\",outcome=\"{outcome}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((get("served"), get("waited"), get("stale")))
}

struct Case {
    name: String,
    reads: Histogram<u64>,
    misses: u64,
    waited: f64,
    served: f64,
    stale: f64,
    floor_ms: Option<f64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let demo = Demo::start(&args.atoll, &args.data_dir, &http).await?;
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let endpoints: Vec<String> = demo.regions.iter().map(|(n, _)| demo.endpoint(n)).collect();

    // The steady background load: `load` writes a second, round-robin over the regions.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let loader = {
        let (stop, written, http, endpoints) = (
            stop.clone(),
            written.clone(),
            http.clone(),
            endpoints.clone(),
        );
        let gap = Duration::from_secs_f64(1.0 / args.load.max(1) as f64);
        tokio::spawn(async move {
            let mut next = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let ep = &endpoints[(i % endpoints.len() as u64) as usize];
                let url = format!("{ep}/v1/kv/sessions/load-{}", i % 1000);
                if http.put(url).body(format!("l{i}")).send().await.is_ok() {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                next += gap;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(d).await;
                }
            }
        })
    };

    let mut cases = Vec::new();
    for (reader, with_token) in [
        ("ap-southeast-1", true),
        ("ap-southeast-1", false),
        ("eu-west-1", true),
    ] {
        let writer_ep = demo.endpoint("us-east-1");
        let reader_ep = demo.endpoint(reader);
        let before = counters(&http, &reader_ep).await?;
        let mut reads = Histogram::<u64>::new(3)?;
        let mut misses = 0;
        for i in 0..args.ops {
            if Instant::now() > deadline {
                bail!("the run took over {} s", args.secs);
            }
            let key = format!("probe-{reader}-{with_token}-{i}");
            let value = format!("p{i}");
            let w = http
                .put(format!("{writer_ep}/v1/kv/sessions/{key}"))
                .body(value.clone())
                .send()
                .await?;
            if !w.status().is_success() {
                bail!("write {i} failed: {}", w.status());
            }
            let token = w
                .headers()
                .get(SESSION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let mut req = http.get(format!("{reader_ep}/v1/kv/sessions/{key}?wait_ms=5000"));
            if with_token {
                req = req.header(SESSION, &token);
            }
            let t = Instant::now();
            let r = req.send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            reads.record(t.elapsed().as_micros() as u64)?;
            if status != 200 || body != value.as_bytes() {
                if with_token {
                    bail!("session read {i} in {reader} missed the write: {status}");
                }
                misses += 1;
            }
        }
        let after = counters(&http, &reader_ep).await?;
        let floor_ms = demo.rtt("us-east-1", reader).map(|r| r / 2.0);
        cases.push(Case {
            name: if with_token {
                format!("write in us-east-1, session read in {reader} at once")
            } else {
                format!("write in us-east-1, eventual read in {reader} at once (no token)")
            },
            reads,
            misses,
            served: after.0 - before.0,
            waited: after.1 - before.1,
            stale: after.2 - before.2,
            floor_ms,
        });
    }

    // A session that stays in one region: each read presents the previous read's token.
    {
        let ep = demo.endpoint("ap-southeast-1");
        let before = counters(&http, &ep).await?;
        let mut reads = Histogram::<u64>::new(3)?;
        let first = http
            .get(format!("{ep}/v1/kv/sessions/load-1"))
            .send()
            .await?;
        let mut token = first
            .headers()
            .get(SESSION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        for i in 0..args.ops {
            if Instant::now() > deadline {
                bail!("the run took over {} s", args.secs);
            }
            let t = Instant::now();
            let r = http
                .get(format!("{ep}/v1/kv/sessions/load-{}", i % 1000))
                .header(SESSION, &token)
                .send()
                .await?;
            reads.record(t.elapsed().as_micros() as u64)?;
            if let Some(t) = r.headers().get(SESSION).and_then(|v| v.to_str().ok()) {
                token = t.to_string();
            }
            let _ = r.bytes().await?;
        }
        let after = counters(&http, &ep).await?;
        cases.push(Case {
            name: "session staying in ap-southeast-1 (previous read's token)".into(),
            reads,
            misses: 0,
            served: after.0 - before.0,
            waited: after.1 - before.1,
            stale: after.2 - before.2,
            floor_ms: None,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = loader.await;

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "background load: {} lww writes over the run ({} a second requested, round-robin over the regions)\n",
        written.load(Ordering::Relaxed),
        args.load
    );
    println!(
        "| case ({} reads each) | read p50 ms | p90 ms | p99 ms | one-way delay ms | waited | served at once | stale | missed the write |",
        args.ops
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for c in &cases {
        let total = (c.served + c.waited + c.stale).max(1.0);
        let share = |n: f64| format!("{:.0} ({:.0} %)", n, 100.0 * n / total);
        let session = !c.name.contains("no token");
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            c.name,
            ms(&c.reads, 0.5),
            ms(&c.reads, 0.9),
            ms(&c.reads, 0.99),
            c.floor_ms
                .map_or_else(|| "-".to_string(), |f| format!("{f:.1}")),
            if session { share(c.waited) } else { "-".into() },
            if session { share(c.served) } else { "-".into() },
            if session { share(c.stale) } else { "-".into() },
            if session {
                "0".to_string()
            } else {
                format!("{} of {}", c.misses, c.reads.len())
            },
        );
    }
    drop(demo);
    Ok(())
}
