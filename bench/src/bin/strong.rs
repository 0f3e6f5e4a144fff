//! Strong write latency (issue 11): p50/p99 of sequential compare-free writes to a `strong`
//! keyspace of a 3-region atoll cluster, next to a 3-member etcd cluster, every inter-member
//! connection of both systems through an emulated link (`atoll link`) with the same one-way
//! delay. The physical floor of one write is one round trip from the leader to the nearest
//! quorum: `2 x delay`.
//!
//! Run by hand through `bench/strong.sh`. Everything listens on 127.0.0.1; every process is
//! started (and on exit killed) by this program.
//!
//! - **atoll**: `atoll-testkit`'s `Cluster` (us-east-1, eu-west-1, ap-southeast-1, mutual TLS,
//!   product defaults, one `seats` keyspace with `policy = "strong"`). Writes are
//!   `PUT /v1/kv/seats/k<i>` sent one at a time to the strong group's leader (`/v1/status`), and
//!   then to a follower (one more round trip: the follower forwards to the leader).
//! - **etcd**: one member per node, each member's advertised peer URL an `atoll link` link with
//!   the same delay; writes are `POST /v3/kv/put` (v3 HTTP gateway) to the leader
//!   (`/v3/maintenance/status`).
//!
//! Output: progress on stderr; a markdown table on stdout.

use anyhow::{Result, anyhow, ensure};
use atoll_bench::etcd::{EtcdCluster, EtcdOptions};
use atoll_config::Policy;
use atoll_config::render::KeyspaceToml;
use atoll_testkit::{Cluster, ClusterOptions};
use base64::Engine as _;
use clap::Parser;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
const READY: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Strong write latency of atoll vs etcd through emulated links")]
struct Args {
    /// The atoll binary the regions run.
    #[arg(long, env = "ATOLL_BIN")]
    atoll_bin: PathBuf,
    /// The etcd binary (`none` to skip etcd).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Where etcd's data directories and logs go.
    #[arg(long)]
    work: PathBuf,
    /// Writes measured per series (after 10 warm-up writes).
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// One-way delay of every link, ms (40: an ~80 ms round trip, us-east-1 to eu-west-1).
    #[arg(long, default_value_t = 40.0)]
    link_delay_ms: f64,
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?)
}

/// p50, p99 and max of latencies in ms.
fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

async fn atoll_leader(c: &Cluster) -> Result<String> {
    let deadline = Instant::now() + READY;
    loop {
        let mut seen = Vec::new();
        for r in REGIONS {
            let st = c.status(r).await.ok();
            seen.push(st.and_then(|s| s["strong"]["leader"].as_str().map(str::to_string)));
        }
        if let Some(Some(l)) = seen.first()
            && seen.iter().all(|s| s.as_deref() == Some(l.as_str()))
        {
            return Ok(l.clone());
        }
        ensure!(Instant::now() < deadline, "no strong leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn atoll_series(c: &Cluster, region: &str, n: usize) -> Result<Vec<f64>> {
    let http = http()?;
    let mut out = Vec::new();
    for i in 0..n + 10 {
        let url = format!("{}/v1/kv/seats/k{i}", c.endpoint(region));
        let t = Instant::now();
        let r = http.put(url).body("x").send().await?;
        ensure!(r.status().is_success(), "atoll write {i}: {}", r.status());
        if i >= 10 {
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(out)
}

struct Etcd(EtcdCluster);

impl Etcd {
    async fn start(args: &Args, dir: &Path) -> Result<Etcd> {
        // etcd's tuning guide: heartbeat about the round trip, election 10x.
        let rtt = (args.link_delay_ms * 2.0).round().max(10.0) as u64;
        let o = EtcdOptions {
            etcd_bin: &args.etcd_bin,
            link_delay_ms: args.link_delay_ms,
            heartbeat_ms: rtt,
            election_ms: rtt * 10,
            token: "strong-bench",
        };
        Ok(Etcd(EtcdCluster::start(&o, dir).await?))
    }

    async fn leader(&self) -> Result<usize> {
        let http = http()?;
        let deadline = Instant::now() + READY;
        loop {
            if let Some(l) = self.0.leader(&http).await {
                return Ok(l);
            }
            ensure!(Instant::now() < deadline, "etcd elected no leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn series(&self, member: usize, n: usize) -> Result<Vec<f64>> {
        let http = http()?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let url = format!("http://{}/v3/kv/put", self.0.members[member].client);
        let mut out = Vec::new();
        for i in 0..n + 10 {
            let t = Instant::now();
            let r = http
                .post(&url)
                .json(&json!({"key": b64(&format!("k{i}")), "value": b64("x")}))
                .send()
                .await?;
            ensure!(r.status().is_success(), "etcd put {i}: {}", r.status());
            if i >= 10 {
                out.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok(out)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.writes >= 10, "--writes must be at least 10");
    std::fs::create_dir_all(&args.work)?;
    let floor = args.link_delay_ms * 2.0;
    let mut rows: Vec<(String, (f64, f64, f64))> = Vec::new();

    eprintln!(
        "strong: starting atoll (3 regions, links {} ms one way)",
        args.link_delay_ms
    );
    let c = Cluster::start(
        &args.atoll_bin,
        3,
        ClusterOptions::new("strong-bench")
            .with_links(args.link_delay_ms)
            .env("ATOLL_LOG", "warn")
            .keyspace(KeyspaceToml::new("seats", Policy::Strong)),
    )?;
    let leader = atoll_leader(&c).await?;
    let follower = REGIONS
        .iter()
        .find(|r| **r != leader)
        .ok_or_else(|| anyhow!("no follower"))?;
    eprintln!(
        "strong: atoll leader {leader}; {} writes to it",
        args.writes
    );
    let atoll_leader_ms = atoll_series(&c, &leader, args.writes).await?;
    eprintln!("strong: {} writes to the follower {follower}", args.writes);
    let atoll_follower_ms = atoll_series(&c, follower, args.writes).await?;
    drop(c);
    rows.push((
        format!("atoll, to the leader ({leader})"),
        summary(atoll_leader_ms.clone()),
    ));
    rows.push((
        format!("atoll, to a follower ({follower})"),
        summary(atoll_follower_ms),
    ));

    let mut etcd_p50 = None;
    if args.etcd_bin.as_os_str() != "none" {
        eprintln!("strong: starting etcd (3 members)");
        let etcd = Etcd::start(&args, &args.work.join("etcd")).await?;
        let l = etcd.leader().await?;
        eprintln!("strong: etcd leader member {}; {} puts", l + 1, args.writes);
        let ms = etcd.series(l, args.writes).await?;
        let s = summary(ms);
        etcd_p50 = Some(s.0);
        rows.push(("etcd, to the leader".into(), s));
    }

    println!(
        "| writes ({} each, one at a time; links {} ms one way) | p50 ms | p99 ms | max ms | p50 / floor ({floor:.0} ms) |",
        args.writes, args.link_delay_ms
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, (p50, p99, max)) in &rows {
        println!(
            "| {name} | {p50:.1} | {p99:.1} | {max:.1} | {:.2} |",
            p50 / floor
        );
    }
    if let Some(e) = etcd_p50 {
        println!(
            "\natoll (to the leader) p50 / etcd p50: {:.2}",
            summary(atoll_leader_ms).0 / e
        );
    }
    Ok(())
}
