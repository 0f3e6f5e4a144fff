//! Replication benchmark: lag, throughput and convergence of three `atoll region` processes on
//! this machine (127.0.0.1 only).
//!
//! Run by hand through `bench/replication.sh`. Results and interpretation: docs/benchmarks.md,
//! section "Replication: lag, throughput, convergence".
//!
//! The generator writes a 3-region config (us-east-1, eu-west-1, ap-southeast-1 with their
//! coordinates; keyspace `sessions` lww) with free loopback ports, starts one real `atoll region`
//! child per region (fresh data directories under `--data-dir`) and waits until every region
//! reports both peers reachable. Phases (`--phases`):
//!
//! * `peak`: closed loop, `--clients` keep-alive HTTP/1.1 connections to us-east-1, each doing
//!   durable lww `PUT /v1/kv/sessions/{unique key}` with a 128-byte value, 1 s warm-up then
//!   `--peak-secs`. The rate R is acked writes/s.
//! * `sustained`: open loop at R/2 (or `--rate`) to us-east-1 for `--sustained-secs`: write i is
//!   due at start + i/rate and handed to the next free one of `--clients` connections (latency is
//!   counted from when it was due, so a backlog shows). Lag at eu-west-1 and ap-southeast-1:
//!   (1) atoll's `atoll_replication_apply_delay_seconds{region,peer_region}` histogram scraped
//!   from each region's /metrics before and after, quantiles from the bucket deltas; (2) a probe
//!   on its own thread and runtime, `--probes` times during the run: PUT a unique key at
//!   us-east-1, then poll GET at each other region every 1 ms (bounded, 5 s) until it is visible;
//!   time from the PUT's ack (and from its send) to the first GET that finds it. The probe is also
//!   run once with no other load (`idle`).
//! * `all`: closed loop against all three regions at once (`--all-clients` per region), 1 s
//!   warm-up then `--all-secs`; sum of acked writes/s, apply delays from the histograms over the
//!   window, the backlog (ops known at their origin, not yet applied) the moment the load stops
//!   and the time until it drains to zero.
//! * `converge` (fresh cluster): SIGTERM ap-southeast-1, write `--converge-ops` to the other two
//!   (`--converge-clients` each, distinct keys, bounded by `--converge-write-secs`), wait for them
//!   to agree, restart ap-southeast-1 and poll /v1/status every 100 ms until its
//!   `replication.applied` reaches the others' (deadline `--converge-deadline`). Reports the
//!   catch-up rate, a timeline, commits (batches) during catch-up and per-thread CPU of the
//!   catching-up process (optionally a `perf record` profile with `--perf`).
//! * `links` (fresh cluster): as `sustained`, but every inter-region connection goes through an
//!   in-process `atoll link` (`atoll_link::links_from_cluster`, the demo's great-circle delays;
//!   regions get `--peer-via`).
//!
//! Every loop is bounded by a count and a time. Output: progress on stderr, markdown on stdout.
#![allow(clippy::redundant_guards, clippy::needless_range_loop)]

use anyhow::{Context, Result, anyhow, bail};
use atoll_bench::conn::KeepAlive;
use atoll_config::Policy;
use atoll_config::render::{ClusterToml, KeyspaceToml, RegionToml, Tls};
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const REGIONS: [(&str, f64, f64); 3] = atoll_config::render::THREE_REGIONS;
const REQ_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_POLL: Duration = Duration::from_millis(1);
const PROBE_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Replication lag, throughput and convergence of three atoll regions (see docs/benchmarks.md)"
)]
struct Args {
    /// The atoll binary.
    #[arg(long)]
    atoll_bin: PathBuf,
    /// Parent of the temporary data directories (a real disk).
    #[arg(long, default_value = "/work/targets/benchdata")]
    data_dir: PathBuf,
    /// Phases to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "peak,sustained,all,converge,links"
    )]
    phases: Vec<String>,
    /// Clients (connections) of the peak and sustained phases.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 5.0)]
    peak_secs: f64,
    #[arg(long, default_value_t = 20.0)]
    sustained_secs: f64,
    /// Sustained rate (writes/s); default: half the measured peak (or 1000 without `peak`).
    #[arg(long)]
    rate: Option<f64>,
    /// Probe writes per probe run.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Clients per region in the `all` phase, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    all_clients: Vec<usize>,
    #[arg(long, default_value_t = 10.0)]
    all_secs: f64,
    /// Writes to the two live regions while the third is down.
    #[arg(long, default_value_t = 1_000_000)]
    converge_ops: u64,
    /// Clients per live region while writing for the convergence phase.
    #[arg(long, default_value_t = 64)]
    converge_clients: usize,
    /// Time bound of the convergence writes, seconds.
    #[arg(long, default_value_t = 300.0)]
    converge_write_secs: f64,
    /// Deadline of the catch-up, seconds.
    #[arg(long, default_value_t = 600.0)]
    converge_deadline: f64,
    /// Profile the catching-up region with `perf record -e cpu-clock` (flat) into this file (needs perf).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Sustained rate of the `links` phase (default: the sustained rate).
    #[arg(long)]
    links_rate: Option<f64>,
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
}

// ------------------------------------------------------------------------------------------
// Small helpers

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// utime + stime of a process (or `self`) in seconds.
fn proc_cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_of_stat(&s).map(|(_, c)| c)
}

/// (comm, utime + stime seconds) of a /proc stat line.
fn cpu_of_stat(s: &str) -> Option<(String, f64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let u: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((s[open + 1..close].to_string(), (u + st) / 100.0))
}

/// Per-thread CPU seconds of a process, summed by thread name.
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("stat"))
                && let Some((name, cpu)) = cpu_of_stat(&s)
            {
                *out.entry(name).or_insert(0.0) += cpu;
            }
        }
    }
    out
}

fn pct_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

// ------------------------------------------------------------------------------------------
// HTTP: one keep-alive connection (atoll_bench::conn)

struct Conn(KeepAlive);

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self(KeepAlive::new(addr))
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.0.host);
        if !body.is_empty() {
            b = b.header(header::CONTENT_TYPE, "application/octet-stream");
        }
        let req = b.body(Full::new(body))?;
        match tokio::time::timeout(REQ_TIMEOUT, self.0.exchange(req)).await {
            Ok(r) => r,
            Err(_) => {
                self.0.reset();
                bail!("timeout")
            }
        }
    }

    async fn put(&mut self, key: &str, value: Bytes) -> Result<bool> {
        let (st, _) = self
            .request(Method::PUT, &format!("/v1/kv/sessions/{key}"), value)
            .await?;
        Ok(st.is_success())
    }

    async fn get_json(&mut self, path: &str) -> Result<serde_json::Value> {
        let (st, body) = self.request(Method::GET, path, Bytes::new()).await?;
        if !st.is_success() {
            bail!("GET {path}: {st}");
        }
        Ok(serde_json::from_slice(&body)?)
    }

    async fn get_text(&mut self, path: &str) -> Result<String> {
        let (st, body) = self.request(Method::GET, path, Bytes::new()).await?;
        if !st.is_success() {
            bail!("GET {path}: {st}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

// ------------------------------------------------------------------------------------------
// The cluster: three `atoll region` children

struct Region {
    name: &'static str,
    addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    peer_via: Vec<(String, SocketAddr)>,
}

struct Cluster {
    bin: PathBuf,
    config: PathBuf,
    config_text: String,
    regions: Vec<Region>,
}

/// `ports`: the regions' client API ports, then their peer listeners' (replication over mutual
/// TLS, as shipped; certificates from `atoll certs init` in `certs/` next to the config).
fn config_text(ports: &[u16]) -> String {
    let at = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut toml = ClusterToml::new("atoll-bench")
        .header("Written by bench/src/bin/replication.rs.")
        .tls(Tls::Certs("certs".to_string()));
    for (i, (name, lat, lon)) in REGIONS.iter().enumerate() {
        toml = toml.region(
            RegionToml::new(name, at(ports[i]))
                .peer(at(ports[REGIONS.len() + i]))
                .location(*lat, *lon),
        );
    }
    toml.keyspace(KeyspaceToml::new("sessions", Policy::Lww))
        .keyspace(KeyspaceToml::new("ratelimits", Policy::Counter))
        .render()
}

impl Cluster {
    fn create(bin: &Path, base: &Path) -> Result<Cluster> {
        let ports = atoll_testkit::free_ports(2 * REGIONS.len())?;
        let text = config_text(&ports);
        std::fs::create_dir_all(base)?;
        let config = base.join("atoll.toml");
        std::fs::write(&config, &text)?;
        let certs = Command::new(bin)
            .args(["certs", "init", "--force", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(base.join("certs"))
            .output()
            .context("cannot run atoll certs init")?;
        if !certs.status.success() {
            bail!(
                "atoll certs init failed: {}",
                String::from_utf8_lossy(&certs.stderr)
            );
        }
        let regions = REGIONS
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| Region {
                name,
                addr: SocketAddr::from(([127, 0, 0, 1], ports[i])),
                dir: base.join(name),
                log: base.join(format!("{name}.log")),
                child: None,
                peer_via: Vec::new(),
            })
            .collect();
        Ok(Cluster {
            bin: bin.to_path_buf(),
            config,
            config_text: text,
            regions,
        })
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.regions[i].child.as_ref().map(|c| c.id())
    }

    /// Starts region i and waits (30 s) for its "listening on" line.
    fn start(&mut self, i: usize) -> Result<()> {
        let r = &mut self.regions[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("region")
            .arg("--config")
            .arg(&self.config)
            .arg("--region")
            .arg(r.name)
            .arg("--data-dir")
            .arg(&r.dir);
        for (peer, addr) in &r.peer_via {
            cmd.arg("--peer-via").arg(format!("{peer}={addr}"));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains("listening on") {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
        r.child = Some(child);
        rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            anyhow!(
                "region {} did not start within 30 s; see {}",
                r.name,
                r.log.display()
            )
        })?;
        Ok(())
    }

    /// SIGTERM, then wait up to 30 s (SIGKILL after that).
    fn stop(&mut self, i: usize) -> Result<Duration> {
        let r = &mut self.regions[i];
        let Some(mut child) = r.child.take() else {
            return Ok(Duration::ZERO);
        };
        let t = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        while t.elapsed() < Duration::from_secs(30) {
            if child.try_wait()?.is_some() {
                return Ok(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "region {} did not stop within 30 s after SIGTERM; killed",
            r.name
        )
    }

    fn stop_all(&mut self) {
        for i in 0..self.regions.len() {
            if let Err(e) = self.stop(i) {
                eprintln!("replication.rs: {e}");
            }
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.regions[i].addr
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Status of every running region (index → JSON).
async fn statuses(addrs: &[SocketAddr], conns: &mut [Conn]) -> Vec<Option<serde_json::Value>> {
    let mut out = Vec::new();
    for (i, _) in addrs.iter().enumerate() {
        out.push(conns[i].get_json("/v1/status").await.ok());
    }
    out
}

fn applied_of(st: &serde_json::Value, origin: &str) -> u64 {
    st["replication"]["applied"][origin].as_u64().unwrap_or(0)
}

fn last_seq(st: &serde_json::Value) -> u64 {
    st["store"]["last_seq"].as_u64().unwrap_or(0)
}

/// Ops known at their origins that `region` has not applied, over the given origins.
fn backlog(sts: &[Option<serde_json::Value>], region: usize, origins: &[usize]) -> Option<u64> {
    let me = sts[region].as_ref()?;
    let mut total = 0;
    for &o in origins {
        if o == region {
            continue;
        }
        let head = last_seq(sts[o].as_ref()?);
        total += head.saturating_sub(applied_of(me, REGIONS[o].0));
    }
    Some(total)
}

/// Waits (60 s) until every region of `live` reports every other peer of `live` reachable.
async fn wait_ready(addrs: &[SocketAddr], live: &[usize]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conns: Vec<Conn> = addrs.iter().map(|a| Conn::new(*a)).collect();
    loop {
        let mut ok = true;
        for &i in live {
            let st = conns[i].get_json("/v1/status").await;
            let good = st.is_ok_and(|st| {
                live.iter().filter(|&&j| j != i).all(|&j| {
                    st["peers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["region"] == REGIONS[j].0 && p["reachable"] == true)
                })
            });
            ok &= good;
        }
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the regions did not see each other within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no live region has a backlog from the live origins; returns the time it took.
async fn wait_drained(addrs: &[SocketAddr], live: &[usize], limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut conns: Vec<Conn> = addrs.iter().map(|a| Conn::new(*a)).collect();
    while t.elapsed() < limit {
        let mut sts = vec![None; addrs.len()];
        for &i in live {
            sts[i] = conns[i].get_json("/v1/status").await.ok();
        }
        if live.iter().all(|&i| backlog(&sts, i, live) == Some(0)) {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

// ------------------------------------------------------------------------------------------
// The apply-delay histogram from /metrics

/// (region, peer_region) → (upper bound s, cumulative count) in bucket order.
type DelayHists = BTreeMap<(String, String), Vec<(f64, f64)>>;

fn parse_delay(text: &str) -> DelayHists {
    let mut out: DelayHists = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("atoll_replication_apply_delay_seconds_bucket{") else {
            continue;
        };
        let Some(close) = rest.find('}') else {
            continue;
        };
        let mut labels = BTreeMap::new();
        for kv in rest[..close].split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                labels.insert(k.trim(), v.trim().trim_matches('"'));
            }
        }
        let Some(val) = rest[close + 1..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let le = match labels.get("le") {
            Some(&"+Inf") => f64::INFINITY,
            Some(v) => v.parse().unwrap_or(f64::NAN),
            None => continue,
        };
        let key = (
            labels.get("region").unwrap_or(&"?").to_string(),
            labels.get("peer_region").unwrap_or(&"?").to_string(),
        );
        out.entry(key).or_default().push((le, val));
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

fn delta(after: &[(f64, f64)], before: Option<&Vec<(f64, f64)>>) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, c)| {
            let b = before
                .and_then(|v| v.iter().find(|(l, _)| l == le))
                .map_or(0.0, |x| x.1);
            (*le, c - b)
        })
        .collect()
}

/// The bucket holding quantile q: (lower, upper) in ms, and the count.
fn bucket_quantile(cum: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    let total = cum.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let mut lower = 0.0;
    for (le, c) in cum {
        if *c >= target {
            return Some((lower * 1000.0, le * 1000.0));
        }
        lower = *le;
    }
    None
}

fn fmt_bucket(b: Option<(f64, f64)>) -> String {
    match b {
        None => "–".into(),
        Some((lo, hi)) if hi.is_infinite() => format!("> {lo} ms"),
        Some((lo, hi)) if lo == 0.0 => format!("≤ {hi} ms"),
        Some((lo, hi)) => format!("{lo}–{hi} ms"),
    }
}

struct DelayRow {
    region: String,
    peer: String,
    count: f64,
    p50: Option<(f64, f64)>,
    p99: Option<(f64, f64)>,
    mean_ms: Option<f64>,
}

fn delay_rows(
    before: &DelayHists,
    after: &DelayHists,
    sums: &BTreeMap<(String, String), f64>,
    sums_before: &BTreeMap<(String, String), f64>,
    filter: impl Fn(&str, &str) -> bool,
) -> Vec<DelayRow> {
    let mut rows = Vec::new();
    for (k, v) in after {
        if !filter(&k.0, &k.1) {
            continue;
        }
        let d = delta(v, before.get(k));
        let count = d.last().map_or(0.0, |x| x.1);
        let sum = sums.get(k).copied().unwrap_or(0.0) - sums_before.get(k).copied().unwrap_or(0.0);
        rows.push(DelayRow {
            region: k.0.clone(),
            peer: k.1.clone(),
            count,
            p50: bucket_quantile(&d, 0.5),
            p99: bucket_quantile(&d, 0.99),
            mean_ms: (count > 0.0).then(|| sum / count * 1000.0),
        });
    }
    rows
}

fn parse_delay_sums(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("atoll_replication_apply_delay_seconds_sum{") else {
            continue;
        };
        let Some(close) = rest.find('}') else {
            continue;
        };
        let mut labels = BTreeMap::new();
        for kv in rest[..close].split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                labels.insert(k.trim(), v.trim().trim_matches('"'));
            }
        }
        if let Some(v) = rest[close + 1..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            out.insert(
                (
                    labels.get("region").unwrap_or(&"?").to_string(),
                    labels.get("peer_region").unwrap_or(&"?").to_string(),
                ),
                v,
            );
        }
    }
    out
}

#[derive(Default)]
struct DelaySnap {
    hists: DelayHists,
    sums: BTreeMap<(String, String), f64>,
}

async fn delay_snap(addrs: &[SocketAddr], which: &[usize]) -> DelaySnap {
    let mut s = DelaySnap::default();
    for &i in which {
        let mut c = Conn::new(addrs[i]);
        if let Ok(t) = c.get_text("/metrics").await {
            s.hists.extend(parse_delay(&t));
            s.sums.extend(parse_delay_sums(&t));
        }
    }
    s
}

fn print_delay_table(title: &str, rows: &[DelayRow]) {
    println!("{title}");
    println!();
    println!(
        "| applied at (region) | origin (peer_region) | ops in window | p50 bucket | p99 bucket | mean ms (from _sum) |"
    );
    println!("|---|---|---:|---|---|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} |",
            r.region,
            r.peer,
            r.count,
            fmt_bucket(r.p50),
            fmt_bucket(r.p99),
            r.mean_ms.map_or("–".into(), |m| format!("{m:.2}"))
        );
    }
    println!();
}

// ------------------------------------------------------------------------------------------
// Load: closed loop and open loop

struct LoadOut {
    /// Acked writes inside the measured window, per target.
    ok: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
    /// Measured window (from its start to the last completion inside it).
    window: Duration,
    issued: u64,
}

/// `clients[i]` connections to `targets[i]`, closed loop, distinct keys `{prefix}{n}`.
async fn closed_loop(
    targets: &[SocketAddr],
    clients: &[usize],
    warmup: Duration,
    window: Duration,
    max_ops: u64,
    prefix: &str,
    value: Bytes,
) -> LoadOut {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let mut handles = Vec::new();
    for (t, (&addr, &n)) in targets.iter().zip(clients).enumerate() {
        for _ in 0..n {
            let next = next.clone();
            let value = value.clone();
            let prefix = prefix.to_string();
            handles.push(tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut hist = new_hist();
                let (mut ok, mut errors, mut first_error, mut last_done) =
                    (0u64, 0u64, None, measure_from);
                loop {
                    if Instant::now() >= end {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max_ops {
                        break;
                    }
                    let key = format!("{prefix}{i:010}");
                    let t0 = Instant::now();
                    let r = conn.put(&key, value.clone()).await;
                    let done = Instant::now();
                    let counted = t0 >= measure_from && done <= end;
                    match r {
                        Ok(true) => {
                            if counted {
                                ok += 1;
                                hist.saturating_record((done - t0).as_micros() as u64);
                                last_done = last_done.max(done);
                            }
                        }
                        Ok(false) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| "non-2xx".to_string());
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (t, ok, errors, first_error, hist, last_done)
            }));
        }
    }
    let mut out = LoadOut {
        ok: vec![0; targets.len()],
        errors: 0,
        first_error: None,
        hist: new_hist(),
        window: Duration::ZERO,
        issued: 0,
    };
    let mut last = measure_from;
    for h in handles {
        if let Ok((t, ok, errors, fe, hist, last_done)) = h.await {
            out.ok[t] += ok;
            out.errors += errors;
            if out.first_error.is_none() {
                out.first_error = fe;
            }
            let _ = out.hist.add(&hist);
            last = last.max(last_done);
        }
    }
    out.window = last
        .saturating_duration_since(measure_from)
        .max(Duration::from_millis(1));
    out.issued = next.load(Ordering::Relaxed).min(max_ops);
    out
}

struct OpenOut {
    planned: u64,
    ok: u64,
    errors: u64,
    /// From when each write was due to its ack, µs.
    hist: Histogram<u64>,
    /// Writes that started more than 1 ms after they were due.
    late: u64,
    elapsed: Duration,
}

async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    secs: f64,
    workers: usize,
    prefix: &str,
    value: Bytes,
) -> OpenOut {
    let planned = (rate * secs).round().max(1.0) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let hard_end = start + Duration::from_secs_f64(secs * 2.0 + 10.0);
    let mut handles = Vec::new();
    for _ in 0..workers {
        let next = next.clone();
        let value = value.clone();
        let prefix = prefix.to_string();
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut hist = new_hist();
            let (mut ok, mut errors, mut late) = (0u64, 0u64, 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= planned || Instant::now() >= hard_end {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let began = Instant::now();
                if began > due + Duration::from_millis(1) {
                    late += 1;
                }
                match conn.put(&format!("{prefix}{i:010}"), value.clone()).await {
                    Ok(true) => {
                        ok += 1;
                        hist.saturating_record(due.elapsed().as_micros() as u64);
                    }
                    Ok(false) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ok, errors, late, hist)
        }));
    }
    let mut out = OpenOut {
        planned,
        ok: 0,
        errors: 0,
        hist: new_hist(),
        late: 0,
        elapsed: Duration::ZERO,
    };
    for h in handles {
        if let Ok((ok, e, late, hist)) = h.await {
            out.ok += ok;
            out.errors += e;
            out.late += late;
            let _ = out.hist.add(&hist);
        }
    }
    out.elapsed = start.elapsed();
    out
}

// ------------------------------------------------------------------------------------------
// The visibility probe (own thread, own runtime)

#[derive(Clone, Debug)]
struct ProbeSample {
    /// PUT latency at the origin, ms.
    ack_ms: f64,
    /// Per other region: (ms from ack to the reply of the first GET that found it, ms from the
    /// PUT's send, GETs it took), or None when not visible within the deadline.
    seen: Vec<Option<(f64, f64, u32)>>,
}

fn spawn_probe(
    origin: SocketAddr,
    others: Vec<SocketAddr>,
    n: usize,
    every: Duration,
    prefix: String,
    value: Bytes,
) -> std::thread::JoinHandle<Result<Vec<ProbeSample>>> {
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut w = Conn::new(origin);
                let mut readers: Vec<Conn> = others.iter().map(|a| Conn::new(*a)).collect();
                // Connect the readers first.
                for r in readers.iter_mut() {
                    let _ = r.request(Method::GET, "/healthz", Bytes::new()).await;
                }
                let mut out = Vec::with_capacity(n);
                let t_start = Instant::now();
                for j in 0..n {
                    let due = t_start + every * j as u32;
                    tokio::time::sleep_until(due.into()).await;
                    let key = format!("{prefix}{j:06}");
                    let sent = Instant::now();
                    if !w.put(&key, value.clone()).await.unwrap_or(false) {
                        continue;
                    }
                    let acked = Instant::now();
                    let path = format!("/v1/kv/sessions/{key}");
                    let polls = readers.iter_mut().map(|r| {
                        let path = path.clone();
                        async move {
                            let mut gets = 0u32;
                            while acked.elapsed() < PROBE_DEADLINE {
                                let t = Instant::now();
                                gets += 1;
                                if let Ok((st, _)) =
                                    r.request(Method::GET, &path, Bytes::new()).await
                                    && st == StatusCode::OK
                                {
                                    let now = Instant::now();
                                    return Some((
                                        (now - acked).as_secs_f64() * 1000.0,
                                        (now - sent).as_secs_f64() * 1000.0,
                                        gets,
                                    ));
                                }
                                tokio::time::sleep_until((t + PROBE_POLL).into()).await;
                            }
                            None
                        }
                    });
                    let seen = join_all(polls.map(Box::pin).collect()).await;
                    out.push(ProbeSample {
                        ack_ms: (acked - sent).as_secs_f64() * 1000.0,
                        seen,
                    });
                }
                Ok(out)
            })
        })
        .expect("spawn probe thread")
}

/// Joins futures concurrently on the current task (no extra dependency).
async fn join_all<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> Vec<F::Output> {
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if outs[i].is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(o) => outs[i] = Some(o),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().map(|o| o.expect("all ready")).collect()
}

fn print_probe_table(
    title: &str,
    names: &[&str],
    samples: &[ProbeSample],
    expect_ms: Option<&[f64]>,
) {
    println!("{title}");
    println!();
    println!(
        "| visible at | probes | not visible in 5 s | ack → visible p50 ms | p99 ms | max ms | send → visible p50 ms | p99 ms | GETs per probe p50 |{}",
        if expect_ms.is_some() {
            " configured one-way ms |"
        } else {
            ""
        }
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|{}",
        if expect_ms.is_some() { "---:|" } else { "" }
    );
    for (k, name) in names.iter().enumerate() {
        let mut a: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.seen[k].map(|x| x.0))
            .collect();
        let mut b: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.seen[k].map(|x| x.1))
            .collect();
        let mut g: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.seen[k].map(|x| x.2 as f64))
            .collect();
        let missing = samples.iter().filter(|s| s.seen[k].is_none()).count();
        for v in [&mut a, &mut b, &mut g] {
            v.sort_by(|x, y| x.total_cmp(y));
        }
        println!(
            "| {name} | {} | {missing} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |{}",
            samples.len(),
            pct_sorted(&a, 50.0),
            pct_sorted(&a, 99.0),
            a.last().copied().unwrap_or(f64::NAN),
            pct_sorted(&b, 50.0),
            pct_sorted(&b, 99.0),
            pct_sorted(&g, 50.0),
            expect_ms.map_or(String::new(), |e| format!(" {:.1} |", e[k]))
        );
    }
    let mut acks: Vec<f64> = samples.iter().map(|s| s.ack_ms).collect();
    acks.sort_by(|x, y| x.total_cmp(y));
    println!();
    println!(
        "(probe PUT at {} acked in p50 {:.1} ms, p99 {:.1} ms)",
        REGIONS[0].0,
        pct_sorted(&acks, 50.0),
        pct_sorted(&acks, 99.0)
    );
    println!();
}

// ------------------------------------------------------------------------------------------
// Phases

struct Cpu {
    at: Instant,
    regions: Vec<Option<f64>>,
    gen_: Option<f64>,
}

fn cpu_now(c: &Cluster) -> Cpu {
    Cpu {
        at: Instant::now(),
        regions: (0..3)
            .map(|i| c.pid(i).and_then(|p| proc_cpu_secs(&p.to_string())))
            .collect(),
        gen_: proc_cpu_secs("self"),
    }
}

fn cpu_pct(a: &Cpu, b: &Cpu) -> String {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let f = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => format!("{:.0}", (y - x) / secs * 100.0),
        _ => "–".into(),
    };
    let mut parts: Vec<String> = (0..3).map(|i| f(a.regions[i], b.regions[i])).collect();
    parts.push(f(a.gen_, b.gen_));
    parts.join(" / ")
}

fn value_of(n: usize) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz012345"[i % 32])
            .collect::<Vec<u8>>(),
    )
}

async fn phase_peak(args: &Args, c: &Cluster, run: &str) -> Result<f64> {
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.addr(i)).collect();
    eprintln!(
        "replication.rs: peak: {} clients to {} for {} s",
        args.clients, REGIONS[0].0, args.peak_secs
    );
    let l0 = loadavg();
    let before = delay_snap(&addrs, &[1, 2]).await;
    let cpu0 = cpu_now(c);
    let out = closed_loop(
        &addrs[..1],
        &[args.clients],
        Duration::from_secs(1),
        Duration::from_secs_f64(args.peak_secs),
        5_000_000,
        &format!("{run}-peak-"),
        value_of(args.value_bytes),
    )
    .await;
    let cpu1 = cpu_now(c);
    let l1 = loadavg();
    let drain = wait_drained(&addrs, &[0, 1, 2], Duration::from_secs(60)).await;
    let after = delay_snap(&addrs, &[1, 2]).await;
    let rate = out.ok[0] as f64 / out.window.as_secs_f64();
    println!(
        "#### 1a. Peak durable write rate in one region ({} clients, closed loop, 1 s warm-up + {} s)",
        args.clients, args.peak_secs
    );
    println!();
    println!(
        "| region | acked writes/s | p50 ms | p99 ms | p99.9 ms | errors | CPU % us-east / eu-west / ap-se / generator | load avg start → end | backlog drained after load stopped |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|---|");
    println!(
        "| {} | {rate:.0} | {} | {} | {} | {}{} | {} | {l0} → {l1} | {} |",
        REGIONS[0].0,
        ms(out.hist.value_at_quantile(0.5)),
        ms(out.hist.value_at_quantile(0.99)),
        ms(out.hist.value_at_quantile(0.999)),
        out.errors,
        out.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" ({e})")),
        cpu_pct(&cpu0, &cpu1),
        drain.map_or("not within 60 s".into(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1000.0
        )),
    );
    println!();
    let rows = delay_rows(
        &before.hists,
        &after.hists,
        &after.sums,
        &before.sums,
        |_, p| p == REGIONS[0].0,
    );
    print_delay_table(
        "Apply delay during the peak run (atoll_replication_apply_delay_seconds, bucket deltas):",
        &rows,
    );
    Ok(rate)
}

async fn phase_sustained(
    args: &Args,
    c: &Cluster,
    run: &str,
    rate: f64,
    title: &str,
    expect: Option<&[f64]>,
) -> Result<()> {
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.addr(i)).collect();
    let names = [REGIONS[1].0, REGIONS[2].0];
    // Idle probe first (no other load).
    eprintln!(
        "replication.rs: {title}: idle probe ({} writes)",
        args.probes
    );
    let l0 = loadavg();
    let idle = spawn_probe(
        addrs[0],
        vec![addrs[1], addrs[2]],
        args.probes,
        Duration::from_millis(20),
        format!("{run}-idleprobe-"),
        value_of(args.value_bytes),
    )
    .join()
    .map_err(|_| anyhow!("probe thread panicked"))??;
    let l1 = loadavg();
    print_probe_table(
        &format!(
            "{title}: visibility probe with **no other load** ({} probes, 20 ms apart; load avg {l0} → {l1})",
            args.probes
        ),
        &names,
        &idle,
        expect,
    );

    eprintln!(
        "replication.rs: {title}: open loop at {rate:.0}/s for {} s with {} probes",
        args.sustained_secs, args.probes
    );
    let l0 = loadavg();
    let before = delay_snap(&addrs, &[1, 2]).await;
    let cpu0 = cpu_now(c);
    let every = Duration::from_secs_f64((args.sustained_secs / args.probes as f64).max(0.005));
    let probe = spawn_probe(
        addrs[0],
        vec![addrs[1], addrs[2]],
        args.probes,
        every,
        format!("{run}-probe-"),
        value_of(args.value_bytes),
    );
    let out = open_loop(
        addrs[0],
        rate,
        args.sustained_secs,
        args.clients,
        &format!("{run}-sus-"),
        value_of(args.value_bytes),
    )
    .await;
    let cpu1 = cpu_now(c);
    let samples = probe
        .join()
        .map_err(|_| anyhow!("probe thread panicked"))??;
    let l1 = loadavg();
    let drain = wait_drained(&addrs, &[0, 1, 2], Duration::from_secs(60)).await;
    let after = delay_snap(&addrs, &[1, 2]).await;
    println!(
        "{title}: open loop at {rate:.0} writes/s to {} for {} s ({} connections)",
        REGIONS[0].0, args.sustained_secs, args.clients
    );
    println!();
    println!(
        "| planned | acked | achieved writes/s | errors | started > 1 ms late | latency from due p50 ms | p99 ms | p99.9 ms | CPU % us-east / eu-west / ap-se / generator | load avg start → end | backlog drained after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|");
    println!(
        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {l0} → {l1} | {} |",
        out.planned,
        out.ok,
        out.ok as f64 / out.elapsed.as_secs_f64(),
        out.errors,
        out.late,
        ms(out.hist.value_at_quantile(0.5)),
        ms(out.hist.value_at_quantile(0.99)),
        ms(out.hist.value_at_quantile(0.999)),
        cpu_pct(&cpu0, &cpu1),
        drain.map_or("not within 60 s".into(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1000.0
        )),
    );
    println!();
    let rows = delay_rows(
        &before.hists,
        &after.hists,
        &after.sums,
        &before.sums,
        |_, p| p == REGIONS[0].0,
    );
    print_delay_table(
        &format!(
            "{title}: lag from atoll's histogram `atoll_replication_apply_delay_seconds` (origin HLC wall ms → applied, integer ms; buckets 0.5, 1, 2, 4, 8, 16 ms …: the true quantile is somewhere in the bucket shown)"
        ),
        &rows,
    );
    print_probe_table(
        &format!(
            "{title}: visibility probe **during** the load ({} probes, {} ms apart)",
            args.probes,
            every.as_millis()
        ),
        &names,
        &samples,
        expect,
    );
    Ok(())
}

async fn phase_all(args: &Args, c: &Cluster, run: &str) -> Result<()> {
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.addr(i)).collect();
    println!(
        "#### 2. All three regions writing at once (closed loop, 1 s warm-up + {} s)",
        args.all_secs
    );
    println!();
    println!(
        "| clients per region | acked writes/s: sum | us-east-1 | eu-west-1 | ap-southeast-1 | write p50 ms | p99 ms | errors | apply delay p50 bucket (all 6 pairs) | p99 bucket | mean ms | backlog at stop (ops) | drained after | CPU % us-east / eu-west / ap-se / generator | load avg start → end |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---|---|");
    for &n in &args.all_clients {
        eprintln!(
            "replication.rs: all: {n} clients per region for {} s",
            args.all_secs
        );
        let l0 = loadavg();
        let before = delay_snap(&addrs, &[0, 1, 2]).await;
        let cpu0 = cpu_now(c);
        let out = closed_loop(
            &addrs,
            &[n, n, n],
            Duration::from_secs(1),
            Duration::from_secs_f64(args.all_secs),
            10_000_000,
            &format!("{run}-all{n}-"),
            value_of(args.value_bytes),
        )
        .await;
        let cpu1 = cpu_now(c);
        let mut conns: Vec<Conn> = addrs.iter().map(|a| Conn::new(*a)).collect();
        let sts = statuses(&addrs, &mut conns).await;
        let backlog_total: Option<u64> = (0..3).map(|i| backlog(&sts, i, &[0, 1, 2])).sum();
        let drain = wait_drained(&addrs, &[0, 1, 2], Duration::from_secs(120)).await;
        let l1 = loadavg();
        let after = delay_snap(&addrs, &[0, 1, 2]).await;
        // Merge the six pairs' deltas (same buckets).
        let mut merged: Vec<(f64, f64)> = Vec::new();
        let mut sum = 0.0;
        for (k, v) in &after.hists {
            let d = delta(v, before.hists.get(k));
            if merged.is_empty() {
                merged = d;
            } else {
                for (m, x) in merged.iter_mut().zip(d) {
                    m.1 += x.1;
                }
            }
            sum += after.sums.get(k).copied().unwrap_or(0.0)
                - before.sums.get(k).copied().unwrap_or(0.0);
        }
        let count = merged.last().map_or(0.0, |x| x.1);
        let secs = out.window.as_secs_f64();
        let total: u64 = out.ok.iter().sum();
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {l0} → {l1} |",
            total as f64 / secs,
            out.ok[0] as f64 / secs,
            out.ok[1] as f64 / secs,
            out.ok[2] as f64 / secs,
            ms(out.hist.value_at_quantile(0.5)),
            ms(out.hist.value_at_quantile(0.99)),
            out.errors,
            out.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})")),
            fmt_bucket(bucket_quantile(&merged, 0.5)),
            fmt_bucket(bucket_quantile(&merged, 0.99)),
            if count > 0.0 {
                format!("{:.1}", sum / count * 1000.0)
            } else {
                "–".into()
            },
            backlog_total.map_or("?".into(), |b| b.to_string()),
            drain.map_or("not within 120 s".into(), |d| format!(
                "{:.0} ms",
                d.as_secs_f64() * 1000.0
            )),
            cpu_pct(&cpu0, &cpu1),
        );
    }
    println!();
    Ok(())
}

async fn phase_converge(args: &Args, c: &mut Cluster, run: &str) -> Result<()> {
    let addrs: Vec<SocketAddr> = (0..3).map(|i| c.addr(i)).collect();
    let down = 2;
    eprintln!("replication.rs: converge: stopping {}", REGIONS[down].0);
    let stop_took = c.stop(down)?;
    let l0 = loadavg();
    let t_write = Instant::now();
    let per = args.converge_clients;
    let out = closed_loop(
        &addrs[..2],
        &[per, per],
        Duration::ZERO,
        Duration::from_secs_f64(args.converge_write_secs),
        args.converge_ops,
        &format!("{run}-conv-"),
        value_of(args.value_bytes),
    )
    .await;
    let write_secs = t_write.elapsed().as_secs_f64();
    let written: u64 = out.ok.iter().sum();
    let l1 = loadavg();
    eprintln!(
        "replication.rs: converge: {written} writes acked in {write_secs:.1} s ({} errors); waiting for the two live regions to agree",
        out.errors
    );
    let ab_drain = wait_drained(&addrs, &[0, 1], Duration::from_secs(300)).await;
    let mut conns: Vec<Conn> = addrs.iter().map(|a| Conn::new(*a)).collect();
    let sts = statuses(&addrs, &mut conns).await;
    let heads: Vec<u64> = (0..2)
        .map(|i| sts[i].as_ref().map_or(0, last_seq))
        .collect();

    // Restart the stopped region and time its catch-up.
    let mut cc = Conn::new(addrs[down]);
    let t0 = Instant::now();
    c.start(down)?;
    let t_listen = t0.elapsed();
    let pid = c.pid(down).context("no pid")?;
    let threads0 = thread_cpu(pid);
    let cpu0 = cpu_now(c);
    let la = loadavg();
    let mut perf_child = None;
    if let Some(perf_data) = &args.perf {
        perf_child = Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "999",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(perf_data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
    }
    let start_status = cc.get_json("/v1/status").await.ok();
    let base: Vec<u64> = (0..2)
        .map(|o| {
            start_status
                .as_ref()
                .map_or(0, |s| applied_of(s, REGIONS[o].0))
        })
        .collect();
    let commits_base = start_status
        .as_ref()
        .and_then(|s| s["store"]["commits_total"].as_u64())
        .unwrap_or(0);
    let to_apply: u64 = (0..2).map(|o| heads[o].saturating_sub(base[o])).sum();
    let deadline = Duration::from_secs_f64(args.converge_deadline);
    let mut timeline: Vec<(f64, u64, u64)> = Vec::new();
    let mut first_apply: Option<Duration> = None;
    let mut done_at: Option<Duration> = None;
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    while t0.elapsed() < deadline {
        if let Ok(st) = cc.get_json("/v1/status").await {
            let applied: u64 = (0..2)
                .map(|o| applied_of(&st, REGIONS[o].0).saturating_sub(base[o]))
                .sum();
            let commits = st["store"]["commits_total"].as_u64().unwrap_or(0) - commits_base;
            if applied > 0 && first_apply.is_none() {
                first_apply = Some(t0.elapsed());
            }
            if last_sample.elapsed() >= Duration::from_secs(1) {
                timeline.push((t0.elapsed().as_secs_f64(), applied, commits));
                last_sample = Instant::now();
            }
            if (0..2).all(|o| applied_of(&st, REGIONS[o].0) >= heads[o]) {
                done_at = Some(t0.elapsed());
                timeline.push((t0.elapsed().as_secs_f64(), applied, commits));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu1 = cpu_now(c);
    let threads1 = thread_cpu(pid);
    let lb = loadavg();
    if let Some(mut p) = perf_child {
        // SAFETY: SIGINT to our own child.
        unsafe {
            libc::kill(p.id() as libc::pid_t, libc::SIGINT);
        }
        let _ = p.wait();
    }
    let final_commits = timeline.last().map_or(0, |t| t.2);

    println!("#### 3. Convergence after a region restart");
    println!();
    println!(
        "ap-southeast-1 stopped with SIGTERM (exit took {:.0} ms). Writes to us-east-1 and eu-west-1: {} clients each, closed loop, distinct keys, lww, {}-byte values, bounded by {} ops and {} s.",
        stop_took.as_secs_f64() * 1000.0,
        per,
        args.value_bytes,
        args.converge_ops,
        args.converge_write_secs
    );
    println!();
    println!(
        "| writes acked | errors | write time s | writes/s | write p50 ms | p99 ms | load avg start → end | us-east-1 ↔ eu-west-1 agreed after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---|");
    println!(
        "| {written} | {}{} | {write_secs:.1} | {:.0} | {} | {} | {l0} → {l1} | {} |",
        out.errors,
        out.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" ({e})")),
        written as f64 / write_secs,
        ms(out.hist.value_at_quantile(0.5)),
        ms(out.hist.value_at_quantile(0.99)),
        ab_drain.map_or("not within 300 s".into(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        )),
    );
    println!();
    let secs = done_at.map(|d| d.as_secs_f64());
    let apply_secs = match (done_at, first_apply) {
        (Some(d), Some(f)) => Some((d - f).as_secs_f64()),
        _ => None,
    };
    println!(
        "| ops to apply | process start → listening | → first op applied | → converged (applied = others') | catch-up ops/s (whole, from process start) | ops/s (first → last applied) | commits (batches) | ops per commit | CPU % catching-up / us-east / eu-west / generator | load avg start → end |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    println!(
        "| {to_apply} | {:.2} s | {} | {} | {} | {} | {final_commits} | {} | {} | {la} → {lb} |",
        t_listen.as_secs_f64(),
        first_apply.map_or("–".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        secs.map_or(
            format!("not within {} s", args.converge_deadline),
            |s| format!("{s:.2} s")
        ),
        secs.map_or("–".into(), |s| format!("{:.0}", to_apply as f64 / s)),
        apply_secs.map_or("–".into(), |s| format!(
            "{:.0}",
            to_apply as f64 / s.max(1e-3)
        )),
        if final_commits > 0 {
            format!("{:.0}", to_apply as f64 / final_commits as f64)
        } else {
            "–".into()
        },
        {
            let s = cpu_pct(&cpu0, &cpu1);
            // put the catching-up region first
            let p: Vec<&str> = s.split(" / ").collect();
            if p.len() == 4 {
                format!("{} / {} / {} / {}", p[2], p[0], p[1], p[3])
            } else {
                s
            }
        },
    );
    println!();
    println!("Catch-up timeline (from the restart; sampled about every second):");
    println!();
    println!("| t s | applied | ops/s since previous | commits |");
    println!("|---:|---:|---:|---:|");
    let mut prev = (t_listen.as_secs_f64(), 0u64);
    for (t, a, cm) in &timeline {
        let rate = (a - prev.1) as f64 / (t - prev.0).max(1e-3);
        println!("| {t:.1} | {a} | {rate:.0} | {cm} |");
        prev = (*t, *a);
    }
    println!();
    let mut deltas: Vec<(String, f64)> = threads1
        .iter()
        .map(|(k, v)| (k.clone(), v - threads0.get(k).copied().unwrap_or(0.0)))
        .collect();
    deltas.sort_by(|a, b| b.1.total_cmp(&a.1));
    let window =
        done_at.map_or(deadline.as_secs_f64(), |d| d.as_secs_f64()) - t_listen.as_secs_f64();
    println!(
        "CPU of the catching-up process by thread name, over {window:.1} s (listening → converged):"
    );
    println!();
    println!("| thread | CPU s | % of one core |");
    println!("|---|---:|---:|");
    for (name, s) in deltas.iter().take(8) {
        println!("| {name} | {s:.2} | {:.0} |", s / window.max(1e-3) * 100.0);
    }
    println!();
    Ok(())
}

/// Starts a cluster whose inter-region connections go through an in-process atoll link.
fn start_linked(
    args: &Args,
    base: &Path,
    link_rt: &tokio::runtime::Runtime,
) -> Result<(Cluster, atoll_link::LinkServer, Vec<f64>)> {
    let mut c = Cluster::create(&args.atoll_bin, base)?;
    let config =
        atoll_config::Config::parse(&c.config_text, "bench config").map_err(|e| anyhow!("{e}"))?;
    let specs = atoll_link::links_from_cluster(&config, 0).map_err(|e| anyhow!("{e}"))?;
    let server = link_rt
        .block_on(atoll_link::LinkServer::start(specs.clone(), None))
        .map_err(|e| anyhow!("{e}"))?;
    for i in 0..3 {
        let me = REGIONS[i].0;
        c.regions[i].peer_via = REGIONS
            .iter()
            .filter(|(p, _, _)| *p != me)
            .filter_map(|(p, _, _)| {
                server
                    .listen_addr(&format!("{me}->{p}"))
                    .map(|a| (p.to_string(), a))
            })
            .collect();
    }
    // configured one-way delays us-east-1 -> eu-west-1, -> ap-southeast-1
    let expect: Vec<f64> = [1, 2]
        .iter()
        .map(|&j| {
            specs
                .iter()
                .find(|s| s.name == format!("{}->{}", REGIONS[0].0, REGIONS[j].0))
                .map_or(f64::NAN, |s| s.forward.latency_ms)
        })
        .collect();
    for i in 0..3 {
        c.start(i)?;
    }
    Ok((c, server, expect))
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("replication.")
        .tempdir_in(&args.data_dir)?;
    let keep = std::env::var("KEEP").is_ok_and(|v| v == "1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run = format!("r{}", std::process::id());
    let phases: Vec<&str> = args.phases.iter().map(String::as_str).collect();
    let mut rate = args.rate;

    if phases
        .iter()
        .any(|p| matches!(*p, "peak" | "sustained" | "all"))
    {
        let mut c = Cluster::create(&args.atoll_bin, &tmp.path().join("main"))?;
        for i in 0..3 {
            c.start(i)?;
        }
        let addrs: Vec<SocketAddr> = (0..3).map(|i| c.addr(i)).collect();
        rt.block_on(wait_ready(&addrs, &[0, 1, 2]))?;
        eprintln!("replication.rs: cluster up: {addrs:?}");
        if phases.contains(&"peak") {
            let peak = rt.block_on(phase_peak(&args, &c, &run))?;
            rate.get_or_insert(peak / 2.0);
        }
        if phases.contains(&"sustained") {
            let r = rate.unwrap_or(1000.0);
            rt.block_on(phase_sustained(
                &args,
                &c,
                &run,
                r,
                &format!("#### 1b. Sustained writes to {} at {r:.0}/s", REGIONS[0].0),
                None,
            ))?;
        }
        if phases.contains(&"all") {
            rt.block_on(phase_all(&args, &c, &run))?;
        }
        c.stop_all();
    }
    if phases.contains(&"converge") {
        let mut c = Cluster::create(&args.atoll_bin, &tmp.path().join("converge"))?;
        for i in 0..3 {
            c.start(i)?;
        }
        let addrs: Vec<SocketAddr> = (0..3).map(|i| c.addr(i)).collect();
        rt.block_on(wait_ready(&addrs, &[0, 1, 2]))?;
        rt.block_on(phase_converge(&args, &mut c, &run))?;
        c.stop_all();
    }
    if phases.contains(&"links") {
        let link_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("link-rt")
            .enable_all()
            .build()?;
        let (mut c, server, expect) = start_linked(&args, &tmp.path().join("links"), &link_rt)?;
        let addrs: Vec<SocketAddr> = (0..3).map(|i| c.addr(i)).collect();
        rt.block_on(wait_ready(&addrs, &[0, 1, 2]))?;
        let r = args.links_rate.or(rate).unwrap_or(1000.0);
        rt.block_on(phase_sustained(
            &args,
            &c,
            &run,
            r,
            &format!("#### 4. Through atoll link at the demo's great-circle delays: sustained writes to {} at {r:.0}/s", REGIONS[0].0),
            Some(&expect),
        ))?;
        c.stop_all();
        link_rt.block_on(server.shutdown());
    }
    if keep {
        let p = tmp.keep();
        eprintln!("replication.rs: kept {}", p.display());
    }
    Ok(())
}
