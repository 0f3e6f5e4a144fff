//! HTTP API load generator: atoll's durable writes and reads vs etcd's HTTP/JSON gateway.
//!
//! Run by hand through `bench/http.sh` (it starts etcd and an atoll region on loopback ports
//! and passes their addresses). Results and interpretation: docs/benchmarks.md, section
//! "HTTP API: durable writes and reads vs etcd".
//!
//! * N concurrent clients (default 1, 16, 64). Each client is one tokio task that owns ONE
//!   keep-alive HTTP/1.1 connection (hyper 1 `client::conn::http1` over `hyper_util::rt::TokioIo`)
//!   and sends one request at a time (closed loop): the next request goes out when the previous
//!   reply has been read to the end.
//! * Each scenario runs a warm-up (default 1 s, not recorded) and then a measured window
//!   (default 5 s). Every scenario is also capped by a request count (`--max-requests`), every
//!   request by a timeout, and every setup phase by a deadline, so the program always ends.
//! * Keys are drawn uniformly from a space of 100k (`k000000` ..); values are 128 random
//!   alphanumeric bytes (etcd gets the same 128 bytes, base64-encoded in its JSON as its
//!   gateway requires).
//! * Latency is measured per request in µs (hdrhistogram), from just before the request is
//!   written until its whole reply body has been read. A non-2xx reply, a transport error, a
//!   timeout, or a read that finds no value counts as an error and is reported, not recorded.
//!
//! Scenarios (atoll: `--atoll`, etcd: `--etcd`):
//! * `atoll-put`: `PUT /v1/kv/sessions/{key}`, raw body (lww keyspace; the reply is sent after the
//!   group commit's fsync).
//! * `atoll-get`: `GET /v1/kv/sessions/{key}` (every key is written first).
//! * `atoll-incr`: `POST /v1/counter/ratelimits/{key}` with `{"delta":1}` (durable like a put).
//! * `atoll-count`: `GET /v1/counter/ratelimits/{key}` (every key is incremented first).
//! * `etcd-put`: `POST /v3/kv/put` with `{"key": base64, "value": base64}`.
//! * `etcd-range`: `POST /v3/kv/range` with `{"key": base64}` (etcd's default, linearizable read;
//!   a reply without `kvs` counts as an error).
//! * `etcd-range-s`: the same with `"serializable": true`: answered by the member from its own
//!   state without a ReadIndex round, the etcd read that compares with atoll's local reads.
//!
//! During each measured window the generator also samples CPU time (of itself, of the processes
//! given by `--atoll-pid`/`--etcd-pid`, and of the whole machine from /proc/stat) and, for atoll
//! scenarios, atoll's own /metrics (group commits, writes per commit, commit duration).
//!
//! Output: progress on stderr; two markdown tables on stdout.

use anyhow::{Context, Result, bail};
use atoll_bench::conn::KeepAlive as Conn;
use base64::Engine as _;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Clients used to write every key before the read scenarios.
const POPULATE_CLIENTS: usize = 64;
/// Deadline of one populate phase.
const POPULATE_DEADLINE: Duration = Duration::from_secs(180);
/// Pause before reconnecting after a transport error.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

#[derive(Parser, Debug, Clone)]
#[command(about = "Closed-loop HTTP load generator: atoll vs etcd (see docs/benchmarks.md)")]
struct Args {
    /// atoll region API address (ip:port).
    #[arg(long)]
    atoll: Option<SocketAddr>,
    /// etcd client address (ip:port) of its HTTP/JSON gateway.
    #[arg(long)]
    etcd: Option<SocketAddr>,
    /// Concurrent clients (one connection each), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Warm-up seconds per scenario (not recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Hard cap on requests per scenario (warm-up included).
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Size of the key space.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Runtime threads of the generator (1 = a current-thread runtime, at most one core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Only these scenarios (atoll-put, atoll-get, atoll-incr, atoll-count, etcd-put, etcd-range,
    /// etcd-range-s).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Skip writing every key before the read scenarios.
    #[arg(long)]
    no_populate: bool,
    /// pid of the atoll process (for its CPU time).
    #[arg(long)]
    atoll_pid: Option<u32>,
    /// pid of the etcd process (for its CPU time).
    #[arg(long)]
    etcd_pid: Option<u32>,
    /// Regression guard (`bench/smoke.sh`): `SCENARIO:CLIENTS=REQS` (comma-separated) fails the
    /// run when that cell's throughput is below REQS per second or it had any error.
    #[arg(long, value_delimiter = ',', value_parser = parse_floor)]
    require: Vec<Floor>,
}

/// One `--require` floor.
#[derive(Clone, Debug)]
struct Floor {
    scenario: String,
    clients: usize,
    min_rps: f64,
}

fn parse_floor(s: &str) -> std::result::Result<Floor, String> {
    let bad = || format!("`{s}`: expected SCENARIO:CLIENTS=REQS, e.g. atoll-put:16=1000");
    let (cell, rps) = s.split_once('=').ok_or_else(bad)?;
    let (scenario, clients) = cell.split_once(':').ok_or_else(bad)?;
    Ok(Floor {
        scenario: scenario.to_string(),
        clients: clients.parse().map_err(|_| bad())?,
        min_rps: rps.parse().map_err(|_| bad())?,
    })
}

/// Checks every `--require` floor against the results; the failures, one line each.
fn check_floors(floors: &[Floor], results: &[Outcome]) -> Vec<String> {
    let mut failed = Vec::new();
    for f in floors {
        let Some(o) = results
            .iter()
            .find(|o| o.scenario.name() == f.scenario && o.clients == f.clients)
        else {
            failed.push(format!(
                "{}:{}: not measured (add it to --only / --clients)",
                f.scenario, f.clients
            ));
            continue;
        };
        let rps = o.throughput();
        let verdict = if o.error_total() > 0 {
            failed.push(format!(
                "{}:{}: {} errors (first: {})",
                f.scenario,
                f.clients,
                o.error_total(),
                o.first_error.as_deref().unwrap_or("?")
            ));
            "ERRORS"
        } else if rps < f.min_rps {
            failed.push(format!(
                "{}:{}: {rps:.0} req/s, under the floor of {:.0}",
                f.scenario, f.clients, f.min_rps
            ));
            "BELOW THE FLOOR"
        } else {
            "ok"
        };
        eprintln!(
            "guard {}:{}: {rps:.0} req/s (floor {:.0}): {verdict}",
            f.scenario, f.clients, f.min_rps
        );
    }
    failed
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    AtollPut,
    EtcdPut,
    AtollGet,
    EtcdRange,
    /// etcd's range with `serializable: true`: served by the member from its own state, the
    /// etcd read that corresponds to atoll's local reads.
    EtcdRangeSerializable,
    AtollIncr,
    AtollCount,
}

impl Scenario {
    const ALL: [Scenario; 7] = [
        Scenario::AtollPut,
        Scenario::EtcdPut,
        Scenario::AtollGet,
        Scenario::EtcdRangeSerializable,
        Scenario::EtcdRange,
        Scenario::AtollIncr,
        Scenario::AtollCount,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::AtollPut => "atoll-put",
            Scenario::AtollGet => "atoll-get",
            Scenario::AtollIncr => "atoll-incr",
            Scenario::AtollCount => "atoll-count",
            Scenario::EtcdPut => "etcd-put",
            Scenario::EtcdRange => "etcd-range",
            Scenario::EtcdRangeSerializable => "etcd-range-s",
        }
    }

    fn is_atoll(self) -> bool {
        !matches!(
            self,
            Scenario::EtcdPut | Scenario::EtcdRange | Scenario::EtcdRangeSerializable
        )
    }

    fn is_write(self) -> bool {
        matches!(
            self,
            Scenario::AtollPut | Scenario::EtcdPut | Scenario::AtollIncr
        )
    }

    /// The request for key number `k`. `value` is used by puts.
    fn request(self, host: &str, k: usize, value: &[u8]) -> Request<Full<Bytes>> {
        let key = key_name(k);
        let (method, path, ctype, body): (Method, String, &str, Bytes) = match self {
            Scenario::AtollPut => (
                Method::PUT,
                format!("/v1/kv/sessions/{key}"),
                "application/octet-stream",
                Bytes::copy_from_slice(value),
            ),
            Scenario::AtollGet => (
                Method::GET,
                format!("/v1/kv/sessions/{key}"),
                "",
                Bytes::new(),
            ),
            Scenario::AtollIncr => (
                Method::POST,
                format!("/v1/counter/ratelimits/{key}"),
                "application/json",
                Bytes::from_static(br#"{"delta":1}"#),
            ),
            Scenario::AtollCount => (
                Method::GET,
                format!("/v1/counter/ratelimits/{key}"),
                "",
                Bytes::new(),
            ),
            Scenario::EtcdPut => (
                Method::POST,
                "/v3/kv/put".to_string(),
                "application/json",
                Bytes::from(format!(
                    r#"{{"key":"{}","value":"{}"}}"#,
                    B64.encode(key.as_bytes()),
                    B64.encode(value)
                )),
            ),
            Scenario::EtcdRange => (
                Method::POST,
                "/v3/kv/range".to_string(),
                "application/json",
                Bytes::from(format!(r#"{{"key":"{}"}}"#, B64.encode(key.as_bytes()))),
            ),
            Scenario::EtcdRangeSerializable => (
                Method::POST,
                "/v3/kv/range".to_string(),
                "application/json",
                Bytes::from(format!(
                    r#"{{"key":"{}","serializable":true}}"#,
                    B64.encode(key.as_bytes())
                )),
            ),
        };
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host);
        if !ctype.is_empty() {
            b = b.header(header::CONTENT_TYPE, ctype);
        }
        b.body(Full::new(body))
            .expect("static request parts are valid")
    }

    /// Whether a 2xx reply body is a real answer (reads must find the value).
    fn body_ok(self, body: &[u8], value_bytes: usize) -> bool {
        match self {
            Scenario::AtollGet => body.len() == value_bytes,
            Scenario::EtcdRange | Scenario::EtcdRangeSerializable => contains(body, br#""kvs""#),
            Scenario::AtollCount => contains(body, br#""value""#),
            _ => true,
        }
    }
}

fn key_name(k: usize) -> String {
    format!("k{k:06}")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// Deterministic pseudo-random numbers (splitmix64, as in the storage benchmark)

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn fill_alnum(&mut self, out: &mut [u8]) {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        for chunk in out.chunks_mut(8) {
            let r = self.next();
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = ALNUM[((r >> (i * 8)) & 0xff) as usize % ALNUM.len()];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One keep-alive connection (atoll_bench::conn)

enum Reply {
    Ok,
    Status(StatusCode),
    Miss,
}

/// Sends one request and reads the whole reply. On a transport error the connection is dropped
/// (the next call reconnects).
async fn send(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
    check: impl FnOnce(&[u8]) -> bool,
) -> Result<Reply> {
    Ok(match conn.exchange(req).await? {
        (status, body) if status.is_success() => {
            if check(&body) {
                Reply::Ok
            } else {
                Reply::Miss
            }
        }
        (status, _) => Reply::Status(status),
    })
}

/// A plain GET returning the body (for /metrics), or None on any failure.
async fn get_text(conn: &mut Conn, path: &str) -> Option<String> {
    let req = Request::builder()
        .uri(path)
        .header(header::HOST, &conn.host)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let fut = async {
        let (_, body) = conn.exchange(req).await.ok()?;
        String::from_utf8(body.to_vec()).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------------------
// Resource samples: CPU time from /proc, atoll's /metrics, load average

const CLK_TCK: f64 = 100.0;

/// utime + stime of a process in seconds.
fn proc_cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after the comm field: state(0) ... utime(11) stime(12)
    let u: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((u + st) / CLK_TCK)
}

/// Machine-wide (busy, steal, iowait, total) jiffies from the first line of /proc/stat.
fn machine_jiffies() -> Option<[f64; 4]> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    if v.len() < 8 {
        return None;
    }
    let total: f64 = v[..8].iter().sum();
    let idle = v[3] + v[4];
    Some([total - idle - v[7], v[7], v[4], total])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The atoll metrics this benchmark looks at (cumulative values).
#[derive(Clone, Copy, Default, Debug)]
struct AtollMetrics {
    writes: f64,
    commits: f64,
    commit_secs_sum: f64,
    batch_sum: f64,
}

fn parse_metrics(text: &str) -> AtollMetrics {
    let mut m = AtollMetrics::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(name), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = val.parse::<f64>() else { continue };
        match name {
            "atoll_store_writes_total" => m.writes = v,
            "atoll_store_commits_total" => m.commits = v,
            "atoll_store_commit_duration_seconds_sum" => m.commit_secs_sum = v,
            "atoll_store_commit_batch_writes_sum" => m.batch_sum = v,
            _ => {}
        }
    }
    m
}

#[derive(Clone, Default, Debug)]
struct Sample {
    at: Option<Instant>,
    gen_cpu: Option<f64>,
    atoll_cpu: Option<f64>,
    etcd_cpu: Option<f64>,
    machine: Option<[f64; 4]>,
    metrics: Option<AtollMetrics>,
}

async fn sample(args: &Args, metrics: Option<&mut Conn>) -> Sample {
    let mut s = Sample {
        at: Some(Instant::now()),
        gen_cpu: proc_cpu_secs("self"),
        atoll_cpu: args.atoll_pid.and_then(|p| proc_cpu_secs(&p.to_string())),
        etcd_cpu: args.etcd_pid.and_then(|p| proc_cpu_secs(&p.to_string())),
        machine: machine_jiffies(),
        metrics: None,
    };
    if let Some(c) = metrics {
        s.metrics = get_text(c, "/metrics").await.map(|t| parse_metrics(&t));
    }
    s
}

/// What happened on the machine during a measured window.
#[derive(Clone, Debug, Default)]
struct Usage {
    /// CPU used, in % of one core.
    gen_cpu: Option<f64>,
    atoll_cpu: Option<f64>,
    etcd_cpu: Option<f64>,
    /// % of all cores: busy (not idle, not iowait, not steal), steal, iowait.
    machine_busy: Option<f64>,
    machine_steal: Option<f64>,
    machine_iowait: Option<f64>,
    /// atoll: group commits per second, writes per commit, mean commit time (µs), writer busy in commit (%).
    commits_per_sec: Option<f64>,
    writes_per_commit: Option<f64>,
    commit_mean_us: Option<f64>,
    commit_busy: Option<f64>,
    load_start: String,
    load_end: String,
}

fn usage(a: &Sample, b: &Sample, load_start: String, load_end: String) -> Usage {
    let secs = match (a.at, b.at) {
        (Some(x), Some(y)) => (y - x).as_secs_f64().max(1e-9),
        _ => 1.0,
    };
    let pct = |x: Option<f64>, y: Option<f64>| Some((y? - x?) / secs * 100.0);
    let mut u = Usage {
        gen_cpu: pct(a.gen_cpu, b.gen_cpu),
        atoll_cpu: pct(a.atoll_cpu, b.atoll_cpu),
        etcd_cpu: pct(a.etcd_cpu, b.etcd_cpu),
        load_start,
        load_end,
        ..Default::default()
    };
    if let (Some(x), Some(y)) = (a.machine, b.machine) {
        let total = (y[3] - x[3]).max(1.0);
        u.machine_busy = Some((y[0] - x[0]) / total * 100.0);
        u.machine_steal = Some((y[1] - x[1]) / total * 100.0);
        u.machine_iowait = Some((y[2] - x[2]) / total * 100.0);
    }
    if let (Some(x), Some(y)) = (a.metrics, b.metrics) {
        let commits = y.commits - x.commits;
        if commits > 0.0 {
            u.commits_per_sec = Some(commits / secs);
            u.writes_per_commit = Some((y.batch_sum - x.batch_sum) / commits);
            u.commit_mean_us = Some((y.commit_secs_sum - x.commit_secs_sum) / commits * 1e6);
            u.commit_busy = Some((y.commit_secs_sum - x.commit_secs_sum) / secs * 100.0);
        }
    }
    u
}

// ---------------------------------------------------------------------------------------
// Running one scenario

#[derive(Debug)]
struct Outcome {
    scenario: Scenario,
    clients: usize,
    hist: Histogram<u64>,
    ok: u64,
    /// Error counts by kind ("503", "miss", "transport", "timeout").
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    window: Duration,
    usage: Usage,
}

impl Outcome {
    fn throughput(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }
    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
    fn error_text(&self) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        self.errors
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct ClientResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

async fn run_scenario(args: Arc<Args>, sc: Scenario, clients: usize) -> Result<Outcome> {
    let addr = if sc.is_atoll() {
        args.atoll.context("no --atoll address")?
    } else {
        args.etcd.context("no --etcd address")?
    };
    let load_start = loadavg();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.secs);
    let issued = Arc::new(AtomicU64::new(0));
    let timeout = Duration::from_secs_f64(args.timeout);

    // Sampler: CPU and metrics at the start and the end of the measured window.
    let sampler = {
        let args = args.clone();
        tokio::spawn(async move {
            let mut mconn = sc.is_atoll().then(|| Conn::new(addr));
            tokio::time::sleep_until(measure_from.into()).await;
            let a = sample(&args, mconn.as_mut()).await;
            tokio::time::sleep_until(end.into()).await;
            let b = sample(&args, mconn.as_mut()).await;
            (a, b)
        })
    };

    let mut tasks = Vec::with_capacity(clients);
    for id in 0..clients {
        let args = args.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng =
                Rng(0x000A_7011 ^ ((sc as u64) << 32) ^ ((clients as u64) << 16) ^ id as u64);
            let mut conn = Conn::new(addr);
            let mut value = vec![0u8; args.value_bytes];
            let mut r = ClientResult {
                hist: new_hist(),
                ok: 0,
                errors: BTreeMap::new(),
                first_error: None,
                last_done: None,
            };
            loop {
                if Instant::now() >= end
                    || issued.fetch_add(1, Ordering::Relaxed) >= args.max_requests
                {
                    break;
                }
                let k = rng.below(args.keys);
                if sc.is_write() {
                    rng.fill_alnum(&mut value);
                }
                let req = sc.request(&conn.host, k, &value);
                let vb = args.value_bytes;
                let t0 = Instant::now();
                let res =
                    tokio::time::timeout(timeout, send(&mut conn, req, |b| sc.body_ok(b, vb)))
                        .await;
                let t1 = Instant::now();
                let measured = t0 >= measure_from;
                let err = match res {
                    Ok(Ok(Reply::Ok)) => {
                        if measured {
                            let us = (t1 - t0).as_micros().max(1) as u64;
                            r.hist.saturating_record(us);
                            r.ok += 1;
                        }
                        None
                    }
                    Ok(Ok(Reply::Status(s))) => Some((s.as_u16().to_string(), format!("HTTP {s}"))),
                    Ok(Ok(Reply::Miss)) => Some((
                        "miss".to_string(),
                        "2xx reply without the value".to_string(),
                    )),
                    Ok(Err(e)) => Some(("transport".to_string(), format!("{e:#}"))),
                    Err(_) => {
                        conn.reset();
                        Some((
                            "timeout".to_string(),
                            format!("no reply within {timeout:?}"),
                        ))
                    }
                };
                if measured {
                    r.last_done = Some(t1);
                }
                if let Some((kind, text)) = err {
                    if measured {
                        *r.errors.entry(kind.clone()).or_default() += 1;
                    }
                    if r.first_error.is_none() {
                        r.first_error = Some(text);
                    }
                    if kind == "transport" || kind == "timeout" {
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                    }
                }
            }
            r
        }));
    }

    let mut hist = new_hist();
    let mut ok = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_error = None;
    let mut last_done: Option<Instant> = None;
    for t in tasks {
        let r = t.await.context("client task panicked")?;
        hist.add(&r.hist).context("merging histograms")?;
        ok += r.ok;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        if first_error.is_none() {
            first_error = r.first_error;
        }
        last_done = last_done.max(r.last_done);
    }
    let (a, b) = sampler.await.context("sampler panicked")?;
    let window = last_done
        .map(|t| t.saturating_duration_since(measure_from))
        .unwrap_or_default();
    Ok(Outcome {
        scenario: sc,
        clients,
        hist,
        ok,
        errors,
        first_error,
        window,
        usage: usage(&a, &b, load_start, loadavg()),
    })
}

/// Writes every key once (64 clients, keys in order), so that reads find values.
async fn populate(args: Arc<Args>, sc: Scenario) -> Result<()> {
    let addr = if sc.is_atoll() {
        args.atoll.context("no --atoll address")?
    } else {
        args.etcd.context("no --etcd address")?
    };
    let started = Instant::now();
    let deadline = started + POPULATE_DEADLINE;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..POPULATE_CLIENTS {
        let (args, next, failed) = (args.clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x5EED ^ id as u64);
            let mut conn = Conn::new(addr);
            let mut value = vec![0u8; args.value_bytes];
            let mut first_error: Option<String> = None;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= args.keys || Instant::now() >= deadline {
                    break;
                }
                rng.fill_alnum(&mut value);
                let req = sc.request(&conn.host, k, &value);
                let res =
                    tokio::time::timeout(Duration::from_secs(10), send(&mut conn, req, |_| true))
                        .await;
                let msg = match res {
                    Ok(Ok(Reply::Ok)) => None,
                    Ok(Ok(Reply::Status(s))) => Some(format!("HTTP {s}")),
                    Ok(Ok(Reply::Miss)) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => {
                        conn.reset();
                        Some("timeout".into())
                    }
                };
                if let Some(m) = msg {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert(m);
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
            first_error
        }));
    }
    let mut first_error = None;
    for t in tasks {
        let e = t.await.context("populate task panicked")?;
        if first_error.is_none() {
            first_error = e;
        }
    }
    let failed = failed.load(Ordering::Relaxed);
    let done = next.load(Ordering::Relaxed).min(args.keys);
    eprintln!(
        "populate {:<11} {} keys in {:.1} s, {} failed",
        sc.name(),
        done,
        started.elapsed().as_secs_f64(),
        failed
    );
    if failed > 0 || done < args.keys {
        bail!(
            "populating {} failed: {failed} errors, {done}/{} keys (first error: {})",
            sc.name(),
            args.keys,
            first_error.unwrap_or_else(|| "deadline".into())
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Report

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "–".into())
}

fn quantiles(o: &Outcome) -> [u64; 3] {
    if o.hist.is_empty() {
        return [0; 3];
    }
    [
        o.hist.value_at_quantile(0.50),
        o.hist.value_at_quantile(0.99),
        o.hist.value_at_quantile(0.999),
    ]
}

fn cells(o: Option<&Outcome>) -> String {
    match o {
        None => "– | – | – | – | –".into(),
        Some(o) => {
            let [p50, p99, p999] = quantiles(o);
            format!(
                "{:.0} | {p50} | {p99} | {p999} | {}",
                o.throughput(),
                o.error_text()
            )
        }
    }
}

fn report(args: &Args, results: &[Outcome]) -> String {
    let find = |sc: Scenario, c: usize| results.iter().find(|o| o.scenario == sc && o.clients == c);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| operation | clients | atoll req/s | atoll p50 µs | atoll p99 µs | atoll p99.9 µs | atoll errors | etcd req/s | etcd p50 µs | etcd p99 µs | etcd p99.9 µs | etcd errors | atoll/etcd req/s |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"
    );
    let rows = [
        (
            "durable write: atoll lww PUT vs etcd put",
            Scenario::AtollPut,
            Scenario::EtcdPut,
        ),
        (
            "read: atoll lww GET vs etcd serializable range",
            Scenario::AtollGet,
            Scenario::EtcdRangeSerializable,
        ),
        (
            "read: atoll lww GET vs etcd linearizable range",
            Scenario::AtollGet,
            Scenario::EtcdRange,
        ),
        (
            "durable write: atoll counter POST vs etcd put",
            Scenario::AtollIncr,
            Scenario::EtcdPut,
        ),
        (
            "read: atoll counter GET vs etcd serializable range",
            Scenario::AtollCount,
            Scenario::EtcdRangeSerializable,
        ),
    ];
    for (label, a, e) in rows {
        for &c in &args.clients {
            let (oa, oe) = (find(a, c), find(e, c));
            if oa.is_none() && oe.is_none() {
                continue;
            }
            let ratio = match (oa, oe) {
                (Some(x), Some(y)) if y.throughput() > 0.0 => {
                    format!("{:.2}×", x.throughput() / y.throughput())
                }
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {label} | {c} | {} | {} | {ratio} |",
                cells(oa),
                cells(oe)
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| scenario | clients | window s | load avg start→end | gen CPU % | atoll CPU % | etcd CPU % | machine busy % (of 2 cores) | steal % | iowait % | atoll commits/s | writes/commit | commit mean µs | writer in commit % |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in results {
        let u = &o.usage;
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {}→{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.scenario.name(),
            o.clients,
            o.window.as_secs_f64(),
            u.load_start,
            u.load_end,
            fmt_opt(u.gen_cpu, 0),
            fmt_opt(u.atoll_cpu, 0),
            fmt_opt(u.etcd_cpu, 0),
            fmt_opt(u.machine_busy, 0),
            fmt_opt(u.machine_steal, 1),
            fmt_opt(u.machine_iowait, 1),
            fmt_opt(u.commits_per_sec, 0),
            fmt_opt(u.writes_per_commit, 1),
            fmt_opt(u.commit_mean_us, 0),
            fmt_opt(u.commit_busy, 0),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------

async fn run(args: Arc<Args>) -> Result<()> {
    let wanted = |sc: Scenario| {
        let on_target = if sc.is_atoll() {
            args.atoll.is_some()
        } else {
            args.etcd.is_some()
        };
        on_target
            && args
                .only
                .as_ref()
                .is_none_or(|o| o.iter().any(|n| n == sc.name()))
    };
    let scenarios: Vec<Scenario> = Scenario::ALL.into_iter().filter(|&s| wanted(s)).collect();
    if scenarios.is_empty() {
        bail!("nothing to run: give --atoll and/or --etcd (and check --only)");
    }
    if args.clients.is_empty() || args.clients.contains(&0) || args.keys == 0 {
        bail!("--clients must be positive numbers and --keys > 0");
    }
    eprintln!(
        "scenarios: {}; clients {:?}; {} s warm-up + {} s measured each; {} keys; {}-byte values; generator threads {}",
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.clients,
        args.warmup,
        args.secs,
        args.keys,
        args.value_bytes,
        args.threads
    );
    if !args.no_populate {
        let pairs = [
            (Scenario::AtollGet, Scenario::AtollPut),
            (Scenario::EtcdRange, Scenario::EtcdPut),
            (Scenario::EtcdRangeSerializable, Scenario::EtcdPut),
            (Scenario::AtollCount, Scenario::AtollIncr),
        ];
        let mut populated = Vec::new();
        for (read, write) in pairs {
            if scenarios.contains(&read) && !populated.contains(&write) {
                populate(args.clone(), write).await?;
                populated.push(write);
            }
        }
    }
    let mut results = Vec::new();
    for &c in &args.clients {
        for &sc in &scenarios {
            let o = run_scenario(args.clone(), sc, c).await?;
            let [p50, p99, p999] = quantiles(&o);
            eprintln!(
                "{:<11} clients {:>3}: {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  errors {}{}  (load {}, atoll cpu {}%, etcd cpu {}%, gen cpu {}%, writes/commit {})",
                sc.name(),
                c,
                o.throughput(),
                p50,
                p99,
                p999,
                o.error_text(),
                if o.error_total() > 0 {
                    format!(" [first: {}]", o.first_error.as_deref().unwrap_or("?"))
                } else {
                    String::new()
                },
                o.usage.load_start,
                fmt_opt(o.usage.atoll_cpu, 0),
                fmt_opt(o.usage.etcd_cpu, 0),
                fmt_opt(o.usage.gen_cpu, 0),
                fmt_opt(o.usage.writes_per_commit, 1),
            );
            results.push(o);
        }
    }
    print!("{}", report(&args, &results));
    let failed = check_floors(&args.require, &results);
    if !failed.is_empty() {
        bail!("regression guard failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(args))
}
