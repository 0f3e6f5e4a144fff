//! Write latency at geographic distances (issue 11): `strong` and `owned` writes in `atoll demo`,
//! whose regions talk through `atoll link` at great-circle latency, next to the physical floor
//! the demo's links impose.
//!
//! Starts `atoll demo` (the binary given by `--atoll`) on a free port base, waits until every
//! region takes writes and knows the strong group's leader, then, for each case, sends `--ops`
//! sequential writes (one client, keep-alive) and prints p50/p90/p99 in a markdown table:
//!
//! - `strong` at the leader's region: one round trip from the leader to the nearest quorum;
//! - `strong` at a region that is not the leader: plus the hop to the leader and back;
//! - `owned`, key homed in eu-west-1, written at eu-west-1 (local) and at us-east-1 (one
//!   forward; the demo's client APIs are not behind atoll link, so the forward crosses no
//!   emulated WAN: the row is the forward's own cost, a deployment adds the us <-> eu round trip);
//! - `lww` at us-east-1 (local, for reference).
//!
//! The floor of each case comes from the regions' own measured heartbeat round trips
//! (`/v1/status` `peers[].rtt_ms`). Run by `bench/geo.sh`; results in `docs/benchmarks.md`.

use anyhow::{Result, anyhow, bail};
use atoll_bench::demo::Demo;
use clap::Parser;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The atoll binary (release).
    #[arg(long)]
    atoll: PathBuf,
    /// Sequential writes per case.
    #[arg(long, default_value_t = 200)]
    ops: u64,
    /// Data directory of the demo (fresh).
    #[arg(long)]
    data_dir: PathBuf,
}

async fn run_case(
    http: &reqwest::Client,
    url: impl Fn(u64) -> String,
    ops: u64,
) -> Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new(3)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..ops {
        if Instant::now() > deadline {
            bail!("case took over 300 s");
        }
        let req = http.put(url(i)).body(format!("v{i}"));
        let t = Instant::now();
        let r = req.send().await?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("write {i} failed: {status} {body}");
        }
        h.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(h)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let demo = Demo::start(&args.atoll, &args.data_dir, &http).await?;
    let regions = &demo.regions;
    let leader = demo.statuses[0].2["strong"]["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let endpoint = |name: &str| demo.endpoint(name);
    let rtt = |from: &str, to: &str| demo.rtt(from, to);
    let others: Vec<String> = regions
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| *n != leader)
        .collect();
    // The nearest quorum of three is the leader and its nearest follower.
    let nearest = others
        .iter()
        .filter_map(|o| rtt(&leader, o).map(|r| (o.clone(), r)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| anyhow!("no round trips measured"))?;
    let follower = others
        .iter()
        .find(|o| **o != nearest.0)
        .cloned()
        .unwrap_or_else(|| nearest.0.clone());
    let us_eu = rtt("us-east-1", "eu-west-1").unwrap_or(f64::NAN);
    let f_leader = rtt(&follower, &leader).unwrap_or(f64::NAN);
    println!(
        "strong group leader: {leader}; nearest quorum member: {} (round trip {:.1} ms); us-east-1 <-> eu-west-1 round trip {us_eu:.1} ms\n",
        nearest.0, nearest.1
    );
    println!(
        "| case ({} sequential writes) | p50 ms | p90 ms | p99 ms | floor ms | p50 / floor |",
        args.ops
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let cases: Vec<(String, String, f64)> = vec![
        (
            format!("strong at the leader ({leader})"),
            format!("{}/v1/kv/seats/bench-l-", endpoint(&leader)),
            nearest.1,
        ),
        (
            format!("strong at a follower ({follower})"),
            format!("{}/v1/kv/seats/bench-f-", endpoint(&follower)),
            nearest.1 + f_leader,
        ),
        (
            "owned at its home (eu:*, eu-west-1)".into(),
            format!("{}/v1/kv/profiles/eu:bench-h-", endpoint("eu-west-1")),
            0.0,
        ),
        (
            // The demo's client APIs are not behind atoll link (only the peer ports are), so the
            // forward to the home's client API crosses no emulated WAN: this row is the cost
            // of the forward itself; a deployment adds one round trip (us_eu, printed above).
            "owned away from its home (eu:* at us-east-1, one forward, no emulated WAN)".into(),
            format!("{}/v1/kv/profiles/eu:bench-a-", endpoint("us-east-1")),
            0.0,
        ),
        (
            "lww at us-east-1 (local)".into(),
            format!("{}/v1/kv/sessions/bench-", endpoint("us-east-1")),
            0.0,
        ),
    ];
    for (name, prefix, floor) in cases {
        let h = run_case(&http, |i| format!("{prefix}{i}"), args.ops).await?;
        let ratio = if floor > 0.0 {
            format!("{:.2}", ms(&h, 0.5) / floor)
        } else {
            "-".into()
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {} | {ratio} |",
            ms(&h, 0.5),
            ms(&h, 0.9),
            ms(&h, 0.99),
            if floor > 0.0 {
                format!("{floor:.1}")
            } else {
                "local".into()
            }
        );
    }
    Ok(())
}
