//! Watches (issue 18, `docs/design/watch.md`): how fast a change reaches a watcher across the
//! demo's distances, and how many events one region fans out to many watchers.
//!
//! - `--case demo`: starts `atoll demo`, opens one watch in ap-southeast-1, and writes `--ops`
//!   keys one at a time in us-east-1, each once the previous one's event arrived; prints the
//!   time from sending the write to the event at the watcher (p50/p90/p99) next to the one-way
//!   delay us-east-1 -> ap-southeast-1 (half the regions' own measured round trip).
//! - `--case fanout`: starts one region (`examples/single-region.toml`), opens `--watchers`
//!   watches of one keyspace, writes `--writes` keys from 16 concurrent writers, and waits until
//!   every watcher has every event; prints events delivered per second (watchers x writes over
//!   the time from the first write to the last event) and the write-to-event latency one
//!   watcher saw.
//!
//! Run by `bench/watch.sh`; results in `docs/benchmarks.md`.

use anyhow::{Context, Result, anyhow, bail, ensure};
use atoll_bench::demo::Demo;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Case {
    Demo,
    Fanout,
}

#[derive(Parser)]
struct Args {
    /// The atoll binary (release).
    #[arg(long)]
    atoll: PathBuf,
    /// Data directory (fresh).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, value_enum)]
    case: Case,
    /// demo: sequential writes.
    #[arg(long, default_value_t = 100)]
    ops: u64,
    /// fanout: open watches.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// fanout: writes.
    #[arg(long, default_value_t = 2000)]
    writes: u64,
}

/// Reads an SSE watch stream and calls `on_change(key)` for each change event.
async fn follow(
    http: reqwest::Client,
    url: String,
    ready: tokio::sync::mpsc::Sender<()>,
    on_change: impl Fn(&str),
) -> Result<()> {
    let mut resp = http.get(&url).send().await?;
    ensure!(resp.status() == 200, "{url}: {}", resp.status());
    let mut buf = String::new();
    let mut announced = false;
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.contains("event: ready") && !announced {
                announced = true;
                let _ = ready.send(()).await;
            }
            if block.contains("event: change")
                && let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: "))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
            {
                on_change(v["key"].as_str().unwrap_or_default());
            }
            if block.contains("event: lagged") {
                bail!("a watcher fell behind: {block}");
            }
        }
    }
    Ok(())
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn demo_case(args: &Args) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let demo = Demo::start(&args.atoll, &args.data_dir, &http).await?;
    let (us, ap) = (demo.endpoint("us-east-1"), demo.endpoint("ap-southeast-1"));
    let one_way = demo
        .rtt("us-east-1", "ap-southeast-1")
        .ok_or_else(|| anyhow!("no round trip us-east-1 -> ap-southeast-1 measured"))?
        / 2.0;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(1);
    let stream = reqwest::Client::new();
    let watch = tokio::spawn(follow(
        stream,
        format!("{ap}/v1/watch/sessions?prefix=wl-"),
        ready_tx,
        move |k| {
            let _ = tx.try_send(k.to_string());
        },
    ));
    tokio::time::timeout(Duration::from_secs(10), ready.recv())
        .await
        .context("the watch did not open")?;
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..args.ops {
        let key = format!("wl-{i}");
        let sent = Instant::now();
        let r = http
            .put(format!("{us}/v1/kv/sessions/{key}"))
            .body("v")
            .send()
            .await?;
        ensure!(r.status().is_success(), "write: {}", r.status());
        loop {
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("no event within 10 s")?
                .ok_or_else(|| anyhow!("the watch ended"))?;
            if got == key {
                break;
            }
        }
        h.record(sent.elapsed().as_micros() as u64)?;
    }
    watch.abort();
    println!(
        "| case | writes | p50 ms | p90 ms | p99 ms | one-way delay ms | p50 - one-way ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    println!(
        "| write in us-east-1 -> event at a watcher in ap-southeast-1 | {} | {:.1} | {:.1} | {:.1} | {one_way:.1} | {:.1} |",
        args.ops,
        ms(&h, 0.5),
        ms(&h, 0.9),
        ms(&h, 0.99),
        ms(&h, 0.5) - one_way
    );
    Ok(())
}

/// A single region, `atoll region` on a free port: its endpoint.
struct Region(std::process::Child);

impl Drop for Region {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn fanout_case(args: &Args) -> Result<()> {
    let port = atoll_testkit::free_ports(1)?[0];
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(&args.atoll)
        .args([
            "region",
            "--config",
            "examples/single-region.toml",
            "--region",
            "us-east-1",
            "--listen",
            &addr,
            "--data-dir",
        ])
        .arg(args.data_dir.join("region"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start atoll region")?;
    let _region = Region(child);
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let end = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > end {
            bail!("the region did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every watcher counts its events; watcher 0 also notes when each key arrived.
    let delivered = Arc::new(AtomicU64::new(0));
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(args.watchers);
    let stream = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut tasks = Vec::new();
    for w in 0..args.watchers {
        let d = delivered.clone();
        let a = arrivals.clone();
        tasks.push(tokio::spawn(follow(
            stream.clone(),
            format!("{base}/v1/watch/sessions?prefix=f-"),
            ready_tx.clone(),
            move |k| {
                d.fetch_add(1, Ordering::Relaxed);
                if w == 0
                    && let Ok(mut a) = a.lock()
                {
                    a.insert(k.to_string(), Instant::now());
                }
            },
        )));
    }
    for _ in 0..args.watchers {
        tokio::time::timeout(Duration::from_secs(60), ready.recv())
            .await
            .context("the watchers did not all open within 60 s")?;
    }
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let (http, base, sent) = (http.clone(), base.clone(), sent.clone());
        let writes = args.writes;
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while i < writes {
                let key = format!("f-{i}");
                if let Ok(mut s) = sent.lock() {
                    s.insert(key.clone(), Instant::now());
                }
                let r = http
                    .put(format!("{base}/v1/kv/sessions/{key}"))
                    .body("v")
                    .send()
                    .await?;
                ensure!(r.status().is_success(), "write: {}", r.status());
                i += 16;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let writes_done = started.elapsed();
    let want = args.writes * args.watchers as u64;
    let end = Instant::now() + Duration::from_secs(300);
    while delivered.load(Ordering::Relaxed) < want {
        if Instant::now() > end {
            bail!(
                "{} of {want} events delivered within 300 s",
                delivered.load(Ordering::Relaxed)
            );
        }
        if let Some(t) = tasks.iter().position(|t| t.is_finished()) {
            let t = tasks.swap_remove(t);
            t.await??;
            bail!("a watcher ended early");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = started.elapsed();
    for t in &tasks {
        t.abort();
    }
    let mut h = Histogram::<u64>::new(3)?;
    {
        let (s, a) = (
            sent.lock().map_err(|_| anyhow!("lock"))?,
            arrivals.lock().map_err(|_| anyhow!("lock"))?,
        );
        for (k, t) in a.iter() {
            if let Some(s) = s.get(k) {
                h.record(t.saturating_duration_since(*s).as_micros() as u64)?;
            }
        }
    }
    println!(
        "| watchers | writes | writes done s | all events delivered s | events/s | write -> event p50 ms | p99 ms |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    println!(
        "| {} | {} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} |",
        args.watchers,
        args.writes,
        writes_done.as_secs_f64(),
        all.as_secs_f64(),
        want as f64 / all.as_secs_f64(),
        ms(&h, 0.5),
        ms(&h, 0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.case {
        Case::Demo => demo_case(&args).await,
        Case::Fanout => fanout_case(&args).await,
    }
}
