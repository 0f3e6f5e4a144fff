//! Promotion time (issue 8): how long writes are unavailable when the primary of an
//! active-standby atoll cluster dies, is cut off, or hands over, next to how long a 3-member etcd
//! cluster takes to accept writes again after its leader dies. Every inter-member connection, of
//! both systems, crosses an emulated link (`atoll link`) with the same one-way delay.
//!
//! Run by hand through `bench/promotion.sh`; results in docs/benchmarks.md, section "Fencing:
//! promotion time vs etcd". Everything listens on 127.0.0.1; every process is started (and on exit
//! killed) by this program.
//!
//! **atoll** (one fresh 3-region cluster per repetition: `atoll-testkit`'s `Cluster`, regions
//! us-east-1, eu-west-1, ap-southeast-1, model active-standby, us-east-1 the initial primary,
//! mutual TLS, product defaults but for the link delay, with `[fencing]` as the lease
//! configuration says). Before each measurement the primary is renewing (its window has at least
//! `lease - margin - renew_every` left), both standbys are standbys and have applied the primary's
//! writes. Clients write (`PUT /v1/kv/sessions/...`, 1 s timeout, one request at a time per
//! region, 5 ms apart) to every region concerned; a write "succeeds" on a 200.
//!
//! - `kill`: SIGKILL the primary; measured: from the kill to the first write a standby acknowledges.
//! - `isolate`: cut the primary from both standbys (link partition, both ways); measured: the same,
//!   and when the old primary acknowledged its last write (it must be before the new one's first).
//! - `switchover`: `POST /v1/admin/switchover {"target": "eu-west-1"}` to the primary under
//!   write load; measured: the report's `writes_stopped_ms` (from the stop until the transfer
//!   committed), the request's duration, and the client-observed unavailability: from the old
//!   primary's last acknowledged write to the new primary's first.
//!
//! **etcd** (one fresh 3-member cluster per repetition: `etcd` with `--heartbeat-interval` and
//! `--election-timeout` as given; each member's advertised peer URL is an `atoll link` link that
//! forwards to its peer listener with the same delay both ways, so every peer connection crosses
//! one, as with atoll). Measured: SIGKILL the leader (found with `/v3/maintenance/status`), then
//! from the kill to the first `POST /v3/kv/put` (v3 HTTP gateway, 1 s timeout, 5 ms apart) that
//! one of the two others answers with 200.
//!
//! Output: progress on stderr; markdown tables on stdout.

use anyhow::{Context, Result, anyhow, bail, ensure};
use atoll_bench::etcd::{EtcdCluster, EtcdOptions};
use atoll_config::Model;
use atoll_testkit::{Client, Cluster, ClusterOptions};
use base64::Engine as _;
use clap::Parser;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const TOKEN: &str = "promotion-bench-admin-token";
/// Per-request timeout of every client write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two writes of one client.
const WRITE_PAUSE: Duration = Duration::from_millis(5);
/// Bound of every wait for a cluster to be ready.
const READY: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(
    about = "Promotion time of atoll active-standby vs etcd leader failover (docs/benchmarks.md)"
)]
struct Args {
    /// The atoll binary the regions run.
    #[arg(long, env = "ATOLL_BIN")]
    atoll_bin: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Where etcd's data directories and logs go (atoll's go to $TMPDIR, as the testkit's).
    #[arg(long)]
    work: PathBuf,
    /// Repetitions of every measurement (each on a fresh cluster).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// One-way delay of every link, ms.
    #[arg(long, default_value_t = 20.0)]
    link_delay_ms: f64,
    /// atoll scenarios: kill, isolate, switchover (comma-separated); `none` for etcd only.
    #[arg(long, value_delimiter = ',', default_value = "kill,isolate,switchover")]
    scenarios: Vec<String>,
    /// Lease configurations: `default` (5000/1000/250) and `short` (2000/400/100), as
    /// lease_ms/renew_every_ms/margin_ms.
    #[arg(long, value_delimiter = ',', default_value = "default,short")]
    leases: Vec<String>,
    /// etcd `heartbeat-interval/election-timeout` pairs in ms (comma-separated); `none` to skip
    /// etcd.
    #[arg(long, value_delimiter = ',', default_value = "50/500,100/1000")]
    etcd_timing: Vec<String>,
    /// Bound of one measurement (from the fault until a write succeeds), seconds.
    #[arg(long, default_value_t = 30)]
    bound_secs: u64,
}

/// A lease configuration.
#[derive(Clone, Debug)]
struct Lease {
    name: String,
    lease_ms: u64,
    renew_ms: u64,
    margin_ms: u64,
}

impl Lease {
    fn parse(name: &str) -> Result<Lease> {
        let (lease_ms, renew_ms, margin_ms) = match name {
            "default" => (5_000, 1_000, 250),
            "short" => (2_000, 400, 100),
            other => bail!("unknown lease configuration `{other}` (default, short)"),
        };
        Ok(Lease {
            name: name.to_string(),
            lease_ms,
            renew_ms,
            margin_ms,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}/{}/{})",
            self.name, self.lease_ms, self.renew_ms, self.margin_ms
        )
    }

    /// The `[fencing]` section (nothing for the defaults: the product's own).
    fn config(&self) -> String {
        if self.name == "default" {
            String::new()
        } else {
            format!(
                "[fencing]\nlease_ms = {}\nrenew_every_ms = {}\nmargin_ms = {}\n",
                self.lease_ms, self.renew_ms, self.margin_ms
            )
        }
    }

    /// The primary has renewed lately: its window has at least this much left.
    fn steady_window_ms(&self) -> u64 {
        self.lease_ms - self.margin_ms - self.renew_ms
    }
}

/// One write attempt's outcome, on this program's clock.
#[derive(Clone, Debug)]
struct Attempt {
    region: String,
    at: Instant,
    ok: bool,
}

/// Writes to `region` until `stop` (or `bound`), one request at a time.
async fn writer(
    c: &Cluster,
    region: &str,
    tag: &str,
    stop: Arc<AtomicBool>,
    bound: Duration,
) -> Vec<Attempt> {
    let client = Client::with_timeout(&c.endpoint(region), WRITE_TIMEOUT);
    let started = Instant::now();
    let mut out = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < bound {
        i += 1;
        let key = format!("promo-{tag}-{region}-{i}");
        let r = client
            .kv_put_raw("sessions", &key, b"x".to_vec(), None)
            .await;
        out.push(Attempt {
            region: region.to_string(),
            at: Instant::now(),
            ok: r.is_ok_and(|r| r.status == 200),
        });
        tokio::time::sleep(WRITE_PAUSE).await;
    }
    out
}

async fn fencing(c: &Cluster, region: &str) -> Result<Value> {
    Ok(c.status(region).await?["fencing"].clone())
}

/// Waits until us-east-1 is a renewing primary, both others standbys that have applied
/// everything, and returns who leads the control group.
async fn steady(c: &Cluster, lease: &Lease) -> Result<String> {
    // Some writes for the standbys to have applied.
    let end = Instant::now() + READY;
    let client = Client::with_timeout(&c.endpoint(US), WRITE_TIMEOUT);
    let mut written = 0;
    while written < 20 {
        ensure!(
            Instant::now() < end,
            "us-east-1 took no writes within {READY:?}"
        );
        if client
            .kv_put_raw(
                "sessions",
                &format!("warmup-{written}"),
                b"w".to_vec(),
                None,
            )
            .await
            .is_ok_and(|r| r.status == 200)
        {
            written += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c.wait_converged(READY).await?;
    loop {
        ensure!(
            Instant::now() < end,
            "the cluster did not settle within {READY:?}"
        );
        let (us, eu, ap) = (
            fencing(c, US).await?,
            fencing(c, EU).await?,
            fencing(c, AP).await?,
        );
        if us["role"] == "primary"
            && us["window_left_ms"]
                .as_u64()
                .is_some_and(|w| w >= lease.steady_window_ms())
            && eu["role"] == "standby"
            && ap["role"] == "standby"
        {
            return Ok(us["control"]["leader"].as_str().unwrap_or("?").to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start_cluster(args: &Args, scenario: &str, lease: &Lease, rep: usize) -> Result<Cluster> {
    let opts = ClusterOptions::new(&format!("promo-{scenario}-{}-{rep}", lease.name))
        .model(Model::ActiveStandby)
        // The product's heartbeat (the testkit's default is faster).
        .heartbeat_interval_ms(1_000)
        .with_links(args.link_delay_ms)
        .env("ATOLL_ADMIN_TOKEN", TOKEN)
        .env("ATOLL_LOG", "warn")
        .extra_config(&lease.config());
    Cluster::start(&args.atoll_bin, 3, opts)
}

/// One measurement of a primary failure: ms from the fault to the first write a standby
/// acknowledged, which standby, and (isolate) when the old primary acknowledged its last write.
struct Failover {
    promoted_ms: f64,
    region: String,
    old_last_ack_ms: Option<f64>,
    control_leader: String,
}

async fn failover(args: &Args, lease: &Lease, scenario: &str, rep: usize) -> Result<Failover> {
    let mut c = start_cluster(args, scenario, lease, rep)?;
    let control_leader = steady(&c, lease).await?;
    let bound = Duration::from_secs(args.bound_secs);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = async {
        let (us, eu, ap) = tokio::join!(
            writer(&c, US, scenario, stop.clone(), bound),
            writer(&c, EU, scenario, stop.clone(), bound),
            writer(&c, AP, scenario, stop.clone(), bound)
        );
        us.into_iter().chain(eu).chain(ap).collect::<Vec<_>>()
    };
    let fault = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let at = Instant::now();
        if scenario == "kill" {
            // SIGKILL now, under load (the harness reaps the process afterwards).
            let pid = c
                .region(US)
                .pid()
                .ok_or_else(|| anyhow!("{US} is not running"))?;
            let pid = i32::try_from(pid)?;
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
            let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
            ensure!(rc == 0, "kill({pid}): {}", std::io::Error::last_os_error());
        } else {
            c.partition(US, EU)?;
            c.partition(US, AP)?;
        }
        let end = at + bound;
        while Instant::now() < end {
            let f = fencing(&c, EU).await.ok();
            let g = fencing(&c, AP).await.ok();
            if [f, g].iter().flatten().any(|f| f["role"] == "primary") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Writes reach the new primary a moment after its role shows: keep writing a while.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        Ok::<_, anyhow::Error>(at)
    };
    let (attempts, fault_at) = tokio::join!(writers, fault);
    let fault_at = fault_at?;
    if scenario == "kill" {
        let _ = c.kill9(US);
    }
    let first_new = attempts
        .iter()
        .filter(|a| a.ok && a.region != US && a.at > fault_at)
        .min_by_key(|a| a.at)
        .ok_or_else(|| {
            anyhow!("no standby acknowledged a write within {bound:?} of the {scenario}")
        })?;
    let old_last = attempts
        .iter()
        .filter(|a| a.ok && a.region == US)
        .map(|a| a.at)
        .max();
    if let Some(last) = old_last {
        // (Killed: its last acknowledgement came before the kill.)
        ensure!(
            last < first_new.at,
            "overlap: {US} acknowledged a write after {} did",
            first_new.region
        );
    }
    let ms = |t: Instant| t.saturating_duration_since(fault_at).as_secs_f64() * 1e3;
    Ok(Failover {
        promoted_ms: ms(first_new.at),
        region: first_new.region.clone(),
        old_last_ack_ms: old_last.filter(|_| scenario == "isolate").map(ms),
        control_leader,
    })
}

/// One switchover: (writes_stopped_ms from the report, request duration ms, client-observed
/// unavailability ms).
async fn switchover(args: &Args, lease: &Lease, rep: usize) -> Result<(f64, f64, f64, String)> {
    let c = start_cluster(args, "switchover", lease, rep)?;
    let control_leader = steady(&c, lease).await?;
    let bound = Duration::from_secs(args.bound_secs);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = async {
        let (us, eu) = tokio::join!(
            writer(&c, US, "s", stop.clone(), bound),
            writer(&c, EU, "s", stop.clone(), bound)
        );
        us.into_iter().chain(eu).collect::<Vec<_>>()
    };
    let control = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let http = reqwest::Client::builder()
            .timeout(bound)
            .no_proxy()
            .build()?;
        let started = Instant::now();
        let resp = http
            .post(format!("{}/v1/admin/switchover", c.endpoint(US)))
            .bearer_auth(TOKEN)
            .json(&json!({"target": EU}))
            .send()
            .await;
        let took = started.elapsed();
        // Keep writing until the new primary has taken writes for a moment.
        let end = Instant::now() + bound;
        while Instant::now() < end {
            if fencing(&c, EU).await.is_ok_and(|f| f["role"] == "primary") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let resp = resp?;
        let status = resp.status();
        let report: Value = resp.json().await?;
        ensure!(status.is_success(), "switchover: {status} {report}");
        Ok::<_, anyhow::Error>((report, took))
    };
    let (attempts, control) = tokio::join!(writers, control);
    let (report, took) = control?;
    let last_old = attempts
        .iter()
        .filter(|a| a.ok && a.region == US)
        .map(|a| a.at)
        .max()
        .ok_or_else(|| anyhow!("{US} acknowledged nothing"))?;
    let first_new = attempts
        .iter()
        .filter(|a| a.ok && a.region == EU)
        .map(|a| a.at)
        .min()
        .ok_or_else(|| anyhow!("{EU} acknowledged nothing after the switchover"))?;
    ensure!(last_old < first_new, "overlap during the switchover");
    let stopped = report["writes_stopped_ms"]
        .as_f64()
        .ok_or_else(|| anyhow!("no writes_stopped_ms in {report}"))?;
    Ok((
        stopped,
        took.as_secs_f64() * 1e3,
        (first_new - last_old).as_secs_f64() * 1e3,
        control_leader,
    ))
}

/// The 3-member etcd cluster and a client for it.
struct Etcd {
    cluster: EtcdCluster,
    http: reqwest::Client,
}

impl Etcd {
    async fn start(args: &Args, dir: &Path, heartbeat: u64, election: u64) -> Result<Etcd> {
        let o = EtcdOptions {
            etcd_bin: &args.etcd_bin,
            link_delay_ms: args.link_delay_ms,
            heartbeat_ms: heartbeat,
            election_ms: election,
            token: "promotion-bench",
        };
        let cluster = EtcdCluster::start(&o, dir).await?;
        let http = reqwest::Client::builder()
            .timeout(WRITE_TIMEOUT)
            .no_proxy()
            .build()?;
        Ok(Etcd { cluster, http })
    }

    async fn put(&self, member: usize, key: &str) -> bool {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let url = format!("http://{}/v3/kv/put", self.cluster.members[member].client);
        match self
            .http
            .post(url)
            .json(&json!({"key": b64(key), "value": b64("x")}))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r
                .json::<Value>()
                .await
                .is_ok_and(|v| v.get("header").is_some() && v.get("error").is_none()),
            _ => false,
        }
    }

    async fn leader(&self) -> Option<usize> {
        self.cluster.leader(&self.http).await
    }
}

/// One etcd leader failover: ms from SIGKILL of the leader to the first put that one of the
/// others acknowledged, and the killed member's name.
async fn etcd_failover(
    args: &Args,
    rep: usize,
    heartbeat: u64,
    election: u64,
) -> Result<(f64, String)> {
    let dir = args.work.join(format!("etcd-{heartbeat}-{election}-{rep}"));
    let mut etcd = Etcd::start(args, &dir, heartbeat, election).await?;
    let end = Instant::now() + READY;
    let leader = loop {
        ensure!(
            Instant::now() < end,
            "etcd did not elect a leader within {READY:?} (logs in {})",
            dir.display()
        );
        if let Some(l) = etcd.leader().await
            && etcd.put(l, "warmup").await
        {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every member takes writes (followers forward them) before the fault.
    for m in 0..3 {
        let end = Instant::now() + READY;
        while !etcd.put(m, "warmup").await {
            ensure!(Instant::now() < end, "etcd member {m} takes no writes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let others: Vec<usize> = (0..3).filter(|&m| m != leader).collect();
    let killed = etcd.cluster.members[leader].name.clone();
    let fault_at = Instant::now();
    if let Some(mut c) = etcd.cluster.members[leader].child.take() {
        c.kill().context("SIGKILL of the etcd leader")?;
        let _ = c.wait();
    }
    let bound = Duration::from_secs(args.bound_secs);
    let stop = Arc::new(AtomicBool::new(false));
    let first = |m: usize| {
        let etcd = &etcd;
        let stop = stop.clone();
        async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && fault_at.elapsed() < bound {
                i += 1;
                if etcd.put(m, &format!("after-{i}")).await {
                    stop.store(true, Ordering::Relaxed);
                    return Some(Instant::now());
                }
                tokio::time::sleep(WRITE_PAUSE).await;
            }
            None
        }
    };
    let (a, b) = tokio::join!(first(others[0]), first(others[1]));
    let at = [a, b]
        .into_iter()
        .flatten()
        .min()
        .ok_or_else(|| anyhow!("etcd took no write within {bound:?} of the leader's death"))?;
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(((at - fault_at).as_secs_f64() * 1e3, killed))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of the results table.
struct Row {
    system: String,
    scenario: String,
    config: String,
    samples: Vec<f64>,
    notes: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let leases: Vec<Lease> = args
        .leases
        .iter()
        .filter(|l| l.as_str() != "none")
        .map(|l| Lease::parse(l))
        .collect::<Result<_>>()?;
    let scenarios: Vec<String> = args
        .scenarios
        .iter()
        .filter(|s| s.as_str() != "none")
        .cloned()
        .collect();
    for s in &scenarios {
        ensure!(
            ["kill", "isolate", "switchover"].contains(&s.as_str()),
            "unknown scenario `{s}` (kill, isolate, switchover)"
        );
    }
    let etcd_timings: Vec<(u64, u64)> = args
        .etcd_timing
        .iter()
        .filter(|t| t.as_str() != "none")
        .map(|t| {
            let (h, e) = t
                .split_once('/')
                .ok_or_else(|| anyhow!("etcd timing `{t}`: expected HEARTBEAT/ELECTION"))?;
            Ok((h.parse()?, e.parse()?))
        })
        .collect::<Result<_>>()?;
    ensure!(args.reps > 0 && args.reps <= 50, "--reps must be 1 to 50");
    std::fs::create_dir_all(&args.work)?;
    let mut rows: Vec<Row> = Vec::new();

    for lease in &leases {
        for scenario in &scenarios {
            let mut samples = Vec::new();
            let mut notes = Vec::new();
            let mut extra = Vec::new();
            let mut leaders = Vec::new();
            for rep in 1..=args.reps {
                eprintln!(
                    "promotion: atoll {scenario}, lease {}, repetition {rep}/{}",
                    lease.describe(),
                    args.reps
                );
                if scenario == "switchover" {
                    let (stopped, took, unavailable, leader) =
                        switchover(&args, lease, rep).await?;
                    eprintln!(
                        "  writes_stopped_ms {stopped:.0}, request {took:.0} ms, client-observed unavailability {unavailable:.0} ms (control leader {leader})"
                    );
                    samples.push(unavailable);
                    extra.push((stopped, took));
                    leaders.push(leader);
                } else {
                    let f = failover(&args, lease, scenario, rep).await?;
                    eprintln!(
                        "  {} took writes {:.0} ms after the {scenario}{} (control leader was {})",
                        f.region,
                        f.promoted_ms,
                        f.old_last_ack_ms
                            .map(|l| format!("; {US}'s last ack at {l:.0} ms"))
                            .unwrap_or_default(),
                        f.control_leader
                    );
                    samples.push(f.promoted_ms);
                    if let Some(l) = f.old_last_ack_ms {
                        extra.push((l, 0.0));
                    }
                    leaders.push(f.control_leader);
                }
            }
            let led = leaders.iter().filter(|l| l.as_str() == US).count();
            notes.push(format!(
                "control leader was the old primary in {led} of {}",
                leaders.len()
            ));
            if scenario == "switchover" {
                let stopped: Vec<f64> = extra.iter().map(|e| e.0).collect();
                let took: Vec<f64> = extra.iter().map(|e| e.1).collect();
                notes.push(format!(
                    "writes_stopped_ms median {:.0} max {:.0}; switchover request median {:.0} ms",
                    median(&stopped),
                    max(&stopped),
                    median(&took)
                ));
            } else if !extra.is_empty() {
                let last: Vec<f64> = extra.iter().map(|e| e.0).collect();
                notes.push(format!(
                    "old primary's last ack median {:.0} ms, max {:.0} ms after the cut",
                    median(&last),
                    max(&last)
                ));
            }
            rows.push(Row {
                system: "atoll active-standby".into(),
                scenario: match scenario.as_str() {
                    "kill" => "primary SIGKILL → write on new primary".into(),
                    "isolate" => "primary isolated → write on new primary".into(),
                    _ => "switchover: client-observed unavailability".into(),
                },
                config: format!("lease {}", lease.describe()),
                samples,
                notes: notes.join("; "),
            });
        }
    }

    for &(heartbeat, election) in &etcd_timings {
        let mut samples = Vec::new();
        for rep in 1..=args.reps {
            eprintln!(
                "promotion: etcd leader SIGKILL, heartbeat {heartbeat} ms, election {election} ms, repetition {rep}/{}",
                args.reps
            );
            let (ms, killed) = etcd_failover(&args, rep, heartbeat, election).await?;
            eprintln!("  a put succeeded {ms:.0} ms after SIGKILL of leader {killed}");
            samples.push(ms);
        }
        rows.push(Row {
            system: "etcd 3-member".into(),
            scenario: "leader SIGKILL → put succeeds".into(),
            config: format!("heartbeat {heartbeat} ms, election {election} ms"),
            samples,
            notes: String::new(),
        });
    }

    println!(
        "Links: {} ms one way on every inter-member connection (RTT {} ms). {} repetitions each, every one on a fresh cluster. Times in ms from the fault.",
        args.link_delay_ms,
        2.0 * args.link_delay_ms,
        args.reps
    );
    println!();
    println!(
        "| system | measurement | configuration | median ms | max ms | samples (ms) | notes |"
    );
    println!("|---|---|---|---:|---:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} |",
            r.system,
            r.scenario,
            r.config,
            median(&r.samples),
            max(&r.samples),
            list(&r.samples),
            r.notes
        );
    }
    let etcd_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.system.starts_with("etcd"))
        .collect();
    let atoll_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.system.starts_with("atoll") && !r.scenario.starts_with("switchover"))
        .collect();
    if !etcd_rows.is_empty() && !atoll_rows.is_empty() {
        println!();
        println!(
            "| atoll measurement | vs etcd | atoll median / etcd median | atoll max / etcd max |"
        );
        println!("|---|---|---:|---:|");
        for a in &atoll_rows {
            for e in &etcd_rows {
                println!(
                    "| {}, {} | {} | {:.1}× | {:.1}× |",
                    a.scenario,
                    a.config,
                    e.config,
                    median(&a.samples) / median(&e.samples),
                    max(&a.samples) / max(&e.samples)
                );
            }
        }
    }
    Ok(())
}
