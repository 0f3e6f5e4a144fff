//! Router failover benchmark: how long clients see errors, and how long until all traffic has
//! moved, when a region dies (SIGKILL), through atoll's proxy, through atoll's DNS, and through
//! HAProxy; plus proxy throughput (atoll router vs HAProxy vs a region directly).
//!
//! Run by hand through `bench/failover.sh` (it builds the binaries, installs HAProxy if missing,
//! and kills everything on exit). Results: docs/benchmarks.md, section "Router: failover window
//! and proxy throughput vs HAProxy".
//!
//! Everything listens on 127.0.0.1. The program starts (and on exit kills) every process itself:
//!
//! * three `atoll region` processes (`us-east-1`, `eu-west-1`, `ap-southeast-1`) on free ports;
//! * per failover scenario, two `atoll router` processes with the scenario's `[router.health]`
//!   and TTL: one serving only the proxy, one serving only DNS (so that the proxy's passive
//!   outlier detection cannot move the DNS answer: DNS failover is the active checks alone, as
//!   with Route 53), both for a `failover` name `api` = us-east-1, eu-west-1, ap-southeast-1;
//! * one `haproxy` with two frontends in front of the same regions, both `option httpchk GET
//!   /healthz` and `check inter 1s fall 3 rise 2`, us-east-1 active and the others `backup`
//!   (failover order), configured as its users would for fast failover and throughput: passive
//!   health on every server (`observe layer4 error-limit 10 on-error mark-down`: ten connection
//!   errors mark a server down at once, like the router's outlier ejection), `http-reuse safe`
//!   (the default, stated) and `option http-keep-alive`, `nbthread` left to its default (one
//!   thread per CPU); two frontends: `haproxy` (HAProxy's default `retries 3`, no redispatch) and
//!   `haproxy+redispatch` (`option redispatch 1`: every retry may go to another server).
//!
//! A scenario: all three regions healthy everywhere; open-loop GET clients at `--rate` req/s
//! each through the atoll proxy and both HAProxy frontends; `--dns-clients` simulated DNS clients
//! (together `--rate` req/s) that resolve `api.atoll.test` at the DNS router, keep the answer
//! for its TTL (their cache ages are spread evenly over one TTL, as if they had resolved at
//! different times before), and send their GETs to the region the answer names; pollers of
//! each router's status and HAProxy's stats. After `--before` seconds us-east-1 is SIGKILLed; the
//! scenario ends when every client has moved (and a few seconds more), or at a bound.
//!
//! Measured from the kill: the error window (first to last failed request), when the router /
//! HAProxy marked the region down, when the last response named the dead region
//! (`X-Atoll-Routed-To` for the atoll proxy), when the atoll proxy last tried it (its
//! `atoll_router_retries_total{from_region="us-east-1"}` counter last grew), and for DNS when
//! each client's answer stopped naming it, next to the bound `interval × threshold + TTL`.
//!
//! Output: progress on stderr; markdown tables on stdout.
#![allow(
    clippy::needless_range_loop,
    clippy::format_in_format_args,
    clippy::unnecessary_cast,
    clippy::type_complexity
)]

use anyhow::{Context, Result, anyhow, bail};
use atoll_config::render::{ClusterToml, KeyspaceToml, RegionToml, RouterToml, Tls};
use atoll_config::{Model, Policy};
use atoll_testkit::wait_until_async;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
/// The address each region's DNS answer carries (only a label here: clients map it back).
const DNS_ADDRS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
    Ipv4Addr::new(127, 0, 0, 13),
];
const DEAD: &str = "us-east-1";
const TOKEN: &str = "failover-bench";
const START_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most requests in flight per client loop (open loop: a tick finding this many is skipped).
const MAX_IN_FLIGHT: u64 = 4000;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Failover window and proxy throughput: atoll router vs HAProxy (docs/benchmarks.md)"
)]
struct Args {
    /// The atoll binary.
    #[arg(long)]
    atoll_bin: PathBuf,
    /// The haproxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy_bin: PathBuf,
    /// Scratch directory (configs, data dirs, logs).
    #[arg(long)]
    work: PathBuf,
    /// Failover scenarios to run: `article` (interval 10 s, threshold 3, TTL 30 s) and/or
    /// `default` (interval 1 s, threshold 3, TTL 30 s).
    #[arg(long, value_delimiter = ',', default_value = "default,article")]
    scenarios: Vec<String>,
    /// Requests per second of each proxy client loop, and of all DNS clients together.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Simulated DNS clients.
    #[arg(long, default_value_t = 10)]
    dns_clients: usize,
    /// Seconds of load before the kill.
    #[arg(long, default_value_t = 3.0)]
    before: f64,
    /// Seconds of load after everything has moved.
    #[arg(long, default_value_t = 3.0)]
    after: f64,
    /// Throughput: keep-alive connections.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Throughput: measured seconds per target and round.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Throughput: rounds (targets alternate within a round).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Throughput: keys written first and read at random.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Skip the throughput part.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the failover part.
    #[arg(long)]
    no_failover: bool,
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    name: &'static str,
    interval_ms: u64,
    threshold: u32,
    ttl_secs: u32,
}

const ARTICLE: Settings = Settings {
    name: "article (Route 53): interval 10 s, threshold 3, TTL 30 s",
    interval_ms: 10_000,
    threshold: 3,
    ttl_secs: 30,
};
const DEFAULTS: Settings = Settings {
    name: "atoll defaults: interval 1 s, threshold 3, TTL 30 s",
    interval_ms: 1000,
    threshold: 3,
    ttl_secs: 30,
};

fn log(msg: impl AsRef<str>) {
    eprintln!("failover: {}", msg.as_ref());
}

// ---------------------------------------------------------------------------------------------
// Processes

/// One child process; killed (SIGKILL) and reaped when dropped.
struct Proc {
    name: String,
    child: Option<Child>,
    out: PathBuf,
    out_from: usize,
    err: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.log"));
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        // Appended to across restarts; start-up lines are looked for after the current end.
        let out_len = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(open(&out)?))
            .stderr(Stdio::from(open(&err)?))
            .env("NO_COLOR", "1");
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            out,
            out_from: out_len as usize,
            err,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    fn err_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.err).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest of it.
    fn wait_line(&mut self, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            let text = text.get(self.out_from..).unwrap_or_default();
            if let Some(rest) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
                return Ok(rest.trim().to_string());
            }
            if !self.alive() {
                bail!("{} exited during start-up:\n{}", self.name, self.err_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} printed no `{prefix}` line:\n{}",
                    self.name,
                    self.err_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn region_config(ports: &[u16]) -> String {
    // The bench measures the router's failover, not replication: plain HTTP between regions
    // (each region logs an error saying so) keeps certificates out of it.
    cluster_toml(ports).render()
}

fn cluster_toml(ports: &[u16]) -> ClusterToml {
    let mut toml = ClusterToml::new("failover-bench")
        .model(Model::ActiveActive)
        .max_clock_offset_ms(60_000)
        .tls(Tls::Insecure);
    for ((name, port), ip) in REGIONS.iter().zip(ports).zip(DNS_ADDRS) {
        toml = toml.region(
            RegionToml::new(name, SocketAddr::from((Ipv4Addr::LOCALHOST, *port)))
                .dns_address(IpAddr::V4(ip)),
        );
    }
    toml.keyspace(KeyspaceToml::new("sessions", Policy::Lww))
}

fn router_config(ports: &[u16], st: Settings) -> String {
    let router = RouterToml::new()
        .zone("atoll.test")
        .ttl_secs(u64::from(st.ttl_secs))
        .health("interval_ms", st.interval_ms)
        .health("failure_threshold", u64::from(st.threshold))
        .health("recovery_threshold", 2)
        .name("api", "failover", &REGIONS);
    cluster_toml(ports).section(&router.render()).render()
}

/// GET /healthz answers 200 (blocking, one short connection).
fn healthz_ok(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

struct Regions {
    atoll: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    ports: Vec<u16>,
    procs: Vec<Option<Proc>>,
}

impl Regions {
    fn start(atoll: &Path, dir: &Path) -> Result<Regions> {
        let ports = atoll_testkit::free_ports(3)?;
        let config = dir.join("regions.toml");
        std::fs::write(&config, region_config(&ports))?;
        let mut r = Regions {
            atoll: atoll.to_path_buf(),
            dir: dir.to_path_buf(),
            config,
            ports,
            procs: vec![None, None, None],
        };
        for i in 0..3 {
            r.start_one(i)?;
        }
        Ok(r)
    }

    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports[i]))
    }

    fn start_one(&mut self, i: usize) -> Result<()> {
        let mut cmd = Command::new(&self.atoll);
        cmd.arg("region")
            .arg("--config")
            .arg(&self.config)
            .args(["--region", REGIONS[i]])
            .arg("--data-dir")
            .arg(self.dir.join(REGIONS[i]))
            .arg("--listen")
            .arg(self.addr(i).to_string());
        let mut p = Proc::spawn(REGIONS[i], cmd, &self.dir)?;
        let deadline = Instant::now() + START_DEADLINE;
        while !healthz_ok(self.addr(i)) {
            if !p.alive() {
                bail!("region {} exited:\n{}", REGIONS[i], p.err_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "region {} not healthy in time:\n{}",
                    REGIONS[i],
                    p.err_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.procs[i] = Some(p);
        Ok(())
    }

    fn ensure_all_up(&mut self) -> Result<()> {
        for i in 0..3 {
            let up = self.procs[i].as_mut().is_some_and(Proc::alive);
            if !up {
                self.procs[i] = None;
                self.start_one(i)?;
            }
        }
        Ok(())
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().and_then(Proc::pid)
    }
}

struct RouterProc {
    proc_: Proc,
    admin: SocketAddr,
    proxy: Option<SocketAddr>,
    dns: Option<SocketAddr>,
}

fn start_router(
    atoll: &Path,
    dir: &Path,
    name: &str,
    config: &Path,
    dns: bool,
) -> Result<RouterProc> {
    let mut cmd = Command::new(atoll);
    cmd.arg("router")
        .arg("--config")
        .arg(config)
        .args(["--admin", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.join(format!("{name}-state")))
        .env("ATOLL_ADMIN_TOKEN", TOKEN);
    if dns {
        cmd.args(["--dns", "127.0.0.1:0"]);
    } else {
        cmd.args(["--proxy", "127.0.0.1:0"]);
    }
    let mut p = Proc::spawn(name, cmd, dir)?;
    let admin: SocketAddr = p.wait_line("atoll router admin on http://")?.parse()?;
    let (mut proxy, mut dns_addr) = (None, None);
    if dns {
        let l = p.wait_line("atoll router dns on ")?;
        dns_addr = Some(l.split_whitespace().next().unwrap_or_default().parse()?);
    } else {
        proxy = Some(p.wait_line("atoll router proxy on http://")?.parse()?);
    }
    Ok(RouterProc {
        proc_: p,
        admin,
        proxy,
        dns: dns_addr,
    })
}

fn haproxy_config(
    regions: &Regions,
    plain: u16,
    redispatch: u16,
    stats: u16,
    pidfile: &Path,
) -> String {
    let servers = |s: &mut String| {
        for i in 0..3 {
            let _ = writeln!(
                s,
                "    server {} {} check inter 1s fall 3 rise 2 observe layer4 error-limit 10 on-error mark-down{}",
                REGIONS[i],
                regions.addr(i),
                if i == 0 { "" } else { " backup" }
            );
        }
    };
    let mut s = format!(
        "# Written by bench/src/bin/failover.rs\nglobal\n    pidfile {}\n    maxconn 4000\n\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    option http-keep-alive\n    http-reuse safe\n\n\
         frontend stats\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n\n\
         frontend fe_plain\n    bind 127.0.0.1:{plain}\n    default_backend be_plain\n\n\
         frontend fe_redispatch\n    bind 127.0.0.1:{redispatch}\n    default_backend be_redispatch\n\n\
         backend be_plain\n    option httpchk GET /healthz\n",
        pidfile.display()
    );
    servers(&mut s);
    s.push_str(
        "\nbackend be_redispatch\n    option httpchk GET /healthz\n    option redispatch 1\n",
    );
    servers(&mut s);
    s
}

struct Haproxy {
    _proc: Proc,
    plain: SocketAddr,
    redispatch: SocketAddr,
    stats: SocketAddr,
}

fn start_haproxy(bin: &Path, dir: &Path, regions: &Regions) -> Result<Haproxy> {
    let ports = atoll_testkit::free_ports(3)?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        haproxy_config(
            regions,
            ports[0],
            ports[1],
            ports[2],
            &dir.join("haproxy.pid"),
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&cfg);
    let p = Proc::spawn("haproxy", cmd, dir)?;
    let a = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    Ok(Haproxy {
        _proc: p,
        plain: a(ports[0]),
        redispatch: a(ports[1]),
        stats: a(ports[2]),
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP

type Http = Client<HttpConnector, Full<Bytes>>;

fn http_client(max_idle: usize) -> Http {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build(c)
}

/// (status, headers, body), or an error when no answer came.
async fn get(http: &Http, url: &str, auth: bool) -> Result<(u16, hyper::HeaderMap, Bytes)> {
    let mut b = Request::builder().method(Method::GET).uri(url);
    if auth {
        b = b.header("authorization", format!("Bearer {TOKEN}"));
    }
    let req = b.body(Full::new(Bytes::new()))?;
    let fut = async {
        let resp = http.request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, headers, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("timeout"))?
}

async fn router_health(http: &Http, admin: SocketAddr) -> Option<BTreeMap<String, String>> {
    let (status, _, body) = get(http, &format!("http://{admin}/v1/router/status"), true)
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_slice(&body).ok()?;
    Some(
        v["regions"]
            .as_array()?
            .iter()
            .map(|r| {
                (
                    r["region"].as_str().unwrap_or_default().to_string(),
                    r["health"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

/// HAProxy's `status` column (UP, DOWN, "DOWN 1/2", ...) per (backend, server).
async fn haproxy_status(
    http: &Http,
    stats: SocketAddr,
) -> Option<BTreeMap<(String, String), String>> {
    let (status, _, body) = get(http, &format!("http://{stats}/stats;csv"), false)
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() > 17 && REGIONS.contains(&f[1]) {
            out.insert((f[0].to_string(), f[1].to_string()), f[17].to_string());
        }
    }
    Some(out)
}

/// Sum of `atoll_router_retries_total{from_region="<region>",...}`.
async fn router_retries(http: &Http, admin: SocketAddr, region: &str) -> Option<f64> {
    let (status, _, body) = get(http, &format!("http://{admin}/metrics"), false)
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let needle = format!("from_region=\"{region}\"");
    Some(
        text.lines()
            .filter(|l| l.starts_with("atoll_router_retries_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

// ---------------------------------------------------------------------------------------------
// DNS (a minimal A query over UDP)

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let l = *m.get(i)?;
        if l == 0 {
            return Some(i + 1);
        }
        if l & 0xC0 == 0xC0 {
            return Some(i + 2);
        }
        i += 1 + l as usize;
    }
}

/// (address, TTL) of the first A record of the answer.
fn dns_answer(m: &[u8], id: u16) -> Option<(Ipv4Addr, u32)> {
    if m.len() < 12 || u16::from_be_bytes([m[0], m[1]]) != id || m[3] & 0x0F != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(m, i)? + 4;
    }
    for _ in 0..an {
        i = skip_name(m, i)?;
        let rtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let ttl = u32::from_be_bytes(m.get(i + 4..i + 8)?.try_into().ok()?);
        let len = u16::from_be_bytes([*m.get(i + 8)?, *m.get(i + 9)?]) as usize;
        let data = m.get(i + 10..i + 10 + len)?;
        if rtype == 1 && len == 4 {
            return Some((Ipv4Addr::new(data[0], data[1], data[2], data[3]), ttl));
        }
        i += 10 + len;
    }
    None
}

async fn resolve(sock: &UdpSocket, id: u16) -> Result<(Ipv4Addr, u32)> {
    let q = dns_query(id, "api.atoll.test");
    for _ in 0..3 {
        sock.send(&q).await?;
        let mut buf = [0u8; 1500];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
            && let Some(a) = dns_answer(&buf[..n], id)
        {
            return Ok(a);
        }
    }
    bail!("no DNS answer")
}

// ---------------------------------------------------------------------------------------------
// Client loops

fn ms_since(t: Instant, kill: Instant) -> f64 {
    if t >= kill {
        (t - kill).as_secs_f64() * 1e3
    } else {
        -((kill - t).as_secs_f64() * 1e3)
    }
}

#[derive(Clone, Debug)]
struct RawRec {
    sent: Instant,
    done: Instant,
    ok: bool,
    region: Option<String>,
    what: String,
}

/// Open-loop GETs at `rate` req/s to `base` until `stop`.
async fn proxy_loop(
    http: Http,
    base: String,
    rate: f64,
    stop: Arc<AtomicBool>,
    keys: usize,
) -> Vec<RawRec> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0usize;
    let mut tasks = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            continue;
        }
        n += 1;
        let url = format!("{base}/v1/kv/sessions/k{:06}", n % keys);
        let (http, out, inf) = (http.clone(), out.clone(), in_flight.clone());
        inf.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let r = get(&http, &url, false).await;
            let done = Instant::now();
            let rec = match r {
                Ok((status, h, _)) => {
                    let name = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
                    RawRec {
                        sent,
                        done,
                        ok: status == 200,
                        region: name("x-atoll-routed-to").or_else(|| name("x-atoll-region")),
                        what: format!("HTTP {status}"),
                    }
                }
                Err(e) => RawRec {
                    sent,
                    done,
                    ok: false,
                    region: None,
                    what: format!("{e:#}").chars().take(80).collect(),
                },
            };
            out.lock().unwrap().push(rec);
            inf.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut v = std::mem::take(&mut *out.lock().unwrap());
    v.sort_by_key(|r| r.done);
    v
}

/// A resolution of a DNS client.
#[derive(Clone, Debug)]
struct Resolution {
    at: Instant,
    region: String,
    ttl: u32,
}

struct DnsClientLog {
    resolutions: Vec<Resolution>,
    recs: Vec<RawRec>,
}

/// A client that resolves at `dns`, caches the answer for its TTL (the first answer is taken as
/// `age` old), and sends GETs to the answered region at `rate` req/s until `stop`.
async fn dns_client(
    dns: SocketAddr,
    addrs: BTreeMap<Ipv4Addr, (String, SocketAddr)>,
    rate: f64,
    age: Duration,
    stop: Arc<AtomicBool>,
    seed: u16,
    keys: usize,
) -> Result<DnsClientLog> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    sock.connect(dns).await?;
    let http = http_client(4);
    let mut log = DnsClientLog {
        resolutions: Vec::new(),
        recs: Vec::new(),
    };
    let mut id = seed.wrapping_mul(1000);
    let mut cached: Option<(SocketAddr, String, Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut first = true;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        if cached.as_ref().is_none_or(|c| now >= c.2) {
            id = id.wrapping_add(1);
            match resolve(&sock, id).await {
                Ok((ip, ttl)) => {
                    let (region, addr) = addrs
                        .get(&ip)
                        .cloned()
                        .ok_or_else(|| anyhow!("DNS answered an unknown address {ip}"))?;
                    let mut expires = Instant::now() + Duration::from_secs(u64::from(ttl));
                    if first {
                        expires -= age;
                        first = false;
                    }
                    log.resolutions.push(Resolution {
                        at: Instant::now(),
                        region: region.clone(),
                        ttl,
                    });
                    cached = Some((addr, region, expires));
                }
                Err(e) => {
                    log.recs.push(RawRec {
                        sent: now,
                        done: Instant::now(),
                        ok: false,
                        region: None,
                        what: format!("resolve: {e}"),
                    });
                    continue;
                }
            }
        }
        let (addr, region, _) = cached.clone().expect("set above");
        n += 1;
        let sent = Instant::now();
        let r = get(
            &http,
            &format!("http://{addr}/v1/kv/sessions/k{:06}", n % keys),
            false,
        )
        .await;
        let done = Instant::now();
        log.recs.push(match r {
            Ok((status, _, _)) => RawRec {
                sent,
                done,
                ok: status == 200,
                region: Some(region),
                what: format!("HTTP {status}"),
            },
            Err(e) => RawRec {
                sent,
                done,
                ok: false,
                region: Some(region),
                what: format!("{e:#}").chars().take(80).collect(),
            },
        });
    }
    Ok(log)
}

// ---------------------------------------------------------------------------------------------
// One failover scenario

#[derive(Default, Debug)]
struct Timeline {
    /// When each observer first saw the dead region down: name -> instant.
    down: BTreeMap<String, Instant>,
    /// Last time the atoll proxy's retry counter for the dead region grew.
    last_retry_growth: Option<Instant>,
}

struct ProxyResult {
    name: String,
    after_kill: usize,
    errors: usize,
    window: Option<(f64, f64)>,
    last_error_sent_ms: Option<f64>,
    last_named_dead_ms: Option<f64>,
    max_latency_after_ms: f64,
    p50_before_ms: f64,
    error_kinds: BTreeMap<String, usize>,
}

fn summarize_proxy(name: &str, recs: &[RawRec], kill: Instant) -> ProxyResult {
    let after: Vec<&RawRec> = recs.iter().filter(|r| r.done >= kill).collect();
    let errs: Vec<&&RawRec> = after.iter().filter(|r| !r.ok).collect();
    let mut kinds = BTreeMap::new();
    for e in &errs {
        *kinds.entry(e.what.clone()).or_insert(0) += 1;
    }
    let window = match (errs.first(), errs.iter().max_by_key(|r| r.done)) {
        (Some(f), Some(l)) => Some((
            ms_since(errs.iter().map(|r| r.done).min().unwrap_or(f.done), kill),
            ms_since(l.done, kill),
        )),
        _ => None,
    };
    let last_named_dead_ms = after
        .iter()
        .filter(|r| r.region.as_deref() == Some(DEAD))
        .map(|r| ms_since(r.done, kill))
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    let mut before: Vec<f64> = recs
        .iter()
        .filter(|r| r.done < kill && r.ok)
        .map(|r| (r.done - r.sent).as_secs_f64() * 1e3)
        .collect();
    before.sort_by(f64::total_cmp);
    ProxyResult {
        name: name.to_string(),
        after_kill: after.len(),
        errors: errs.len(),
        window,
        last_error_sent_ms: errs
            .iter()
            .map(|r| ms_since(r.sent, kill))
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x)))),
        last_named_dead_ms,
        max_latency_after_ms: after
            .iter()
            .map(|r| (r.done - r.sent).as_secs_f64() * 1e3)
            .fold(0.0, f64::max),
        p50_before_ms: before.get(before.len() / 2).copied().unwrap_or(0.0),
        error_kinds: kinds,
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms.abs() >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

async fn scenario(
    args: &Args,
    st: Settings,
    regions: &mut Regions,
    dir: &Path,
    report: &mut String,
) -> Result<()> {
    log(format!("scenario: {}", st.name));
    regions.ensure_all_up()?;
    let sdir = dir.join(format!("scenario-{}", st.interval_ms));
    std::fs::create_dir_all(&sdir)?;
    let rcfg = sdir.join("router.toml");
    std::fs::write(&rcfg, router_config(&regions.ports, st))?;
    let proxy_router = start_router(&args.atoll_bin, &sdir, "router-proxy", &rcfg, false)?;
    let dns_router = start_router(&args.atoll_bin, &sdir, "router-dns", &rcfg, true)?;
    let hap = start_haproxy(&args.haproxy_bin, &sdir, regions)?;
    let http = http_client(64);
    let all_healthy = |h: Option<BTreeMap<String, String>>| {
        h.is_some_and(|h| {
            REGIONS
                .iter()
                .all(|r| h.get(*r).map(String::as_str) == Some("healthy"))
        })
    };
    wait_until_async(
        START_DEADLINE,
        "the routers to see every region healthy",
        || async {
            all_healthy(router_health(&http, proxy_router.admin).await)
                && all_healthy(router_health(&http, dns_router.admin).await)
        },
    )
    .await?;
    wait_until_async(START_DEADLINE, "HAProxy to see every server UP", || async {
        haproxy_status(&http, hap.stats)
            .await
            .is_some_and(|s| s.len() == 6 && s.values().all(|v| v == "UP"))
    })
    .await?;
    log("all healthy; starting the clients");

    let stop = Arc::new(AtomicBool::new(false));
    let proxy_url = format!("http://{}", proxy_router.proxy.expect("proxy router"));
    let targets = [
        ("atoll proxy", proxy_url),
        ("haproxy", format!("http://{}", hap.plain)),
        ("haproxy+redispatch", format!("http://{}", hap.redispatch)),
    ];
    let mut loops = Vec::new();
    for (name, url) in &targets {
        loops.push((
            *name,
            tokio::spawn(proxy_loop(
                http_client(512),
                url.clone(),
                args.rate,
                stop.clone(),
                args.keys,
            )),
        ));
    }
    let addrs: BTreeMap<Ipv4Addr, (String, SocketAddr)> = (0..3)
        .map(|i| (DNS_ADDRS[i], (REGIONS[i].to_string(), regions.addr(i))))
        .collect();
    let ttl = Duration::from_secs(u64::from(st.ttl_secs));
    let n = args.dns_clients.max(1);
    let mut dns_loops = Vec::new();
    for i in 0..n {
        // Cache ages spread evenly over one TTL: client i's first answer is i/n TTL old.
        let age = ttl.mul_f64(i as f64 / n as f64);
        dns_loops.push(tokio::spawn(dns_client(
            dns_router.dns.expect("dns router"),
            addrs.clone(),
            args.rate / n as f64,
            age,
            stop.clone(),
            i as u16 + 1,
            args.keys,
        )));
    }

    // Observers: router status (both), HAProxy stats, the proxy's retries of the dead region.
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (tl, ws, http) = (timeline.clone(), watch_stop.clone(), http.clone());
        let (pa, da, hs) = (proxy_router.admin, dns_router.admin, hap.stats);
        tokio::spawn(async move {
            let mut last_retries: Option<f64> = None;
            while !ws.load(Ordering::Relaxed) {
                let now = Instant::now();
                let mut seen = Vec::new();
                if let Some(h) = router_health(&http, pa).await
                    && h.get(DEAD).is_some_and(|s| s != "healthy")
                {
                    seen.push("atoll proxy router".to_string());
                }
                if let Some(h) = router_health(&http, da).await
                    && h.get(DEAD).is_some_and(|s| s != "healthy")
                {
                    seen.push("atoll DNS router".to_string());
                }
                if let Some(s) = haproxy_status(&http, hs).await {
                    for ((be, srv), v) in s {
                        if srv == DEAD && v.starts_with("DOWN") {
                            seen.push(
                                if be == "be_plain" {
                                    "haproxy"
                                } else {
                                    "haproxy+redispatch"
                                }
                                .to_string(),
                            );
                        }
                    }
                }
                let retries = router_retries(&http, pa, DEAD).await;
                {
                    let mut t = tl.lock().unwrap();
                    for s in seen {
                        t.down.entry(s).or_insert(now);
                    }
                    if let (Some(r), Some(l)) = (retries, last_retries)
                        && r > l
                    {
                        t.last_retry_growth = Some(now);
                    }
                    if retries.is_some() {
                        last_retries = retries;
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs_f64(args.before)).await;
    let load_before = loadavg();
    let kill = Instant::now();
    regions.procs[0]
        .as_mut()
        .ok_or_else(|| anyhow!("us-east-1 is not running"))?
        .kill9()?;
    log(format!("SIGKILLed {DEAD}; waiting for everyone to move"));

    // Until every observer saw it down and every DNS client resolved away from it, then `after`
    // seconds more; never longer than the bound plus a margin.
    let bound = Duration::from_millis(st.interval_ms * u64::from(st.threshold)) + ttl;
    let hard = kill + bound + Duration::from_secs(15);
    let observers = 4;
    loop {
        let seen = timeline.lock().unwrap().down.len();
        // The DNS clients cannot be asked while they run: wait for the DNS router's detection
        // plus one TTL (every cache expires within a TTL after the answer changed).
        let dns_done = timeline
            .lock()
            .unwrap()
            .down
            .get("atoll DNS router")
            .is_some_and(|t| Instant::now() > *t + ttl + Duration::from_millis(500));
        if (seen >= observers && dns_done) || Instant::now() > hard {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.after)).await;
    let load_after = loadavg();
    stop.store(true, Ordering::Relaxed);
    watch_stop.store(true, Ordering::Relaxed);
    let _ = watcher.await;
    let mut proxy_results = Vec::new();
    for (name, h) in loops {
        let recs = h.await?;
        proxy_results.push(summarize_proxy(name, &recs, kill));
    }
    let mut dns_logs = Vec::new();
    for h in dns_loops {
        dns_logs.push(h.await??);
    }
    let tl = std::mem::take(&mut *timeline.lock().unwrap());

    // ---- report -------------------------------------------------------------------------
    let detect = |k: &str| {
        tl.down
            .get(k)
            .map(|t| fmt_ms(ms_since(*t, kill)))
            .unwrap_or_else(|| "not seen".into())
    };
    let _ = writeln!(report, "\n#### {}\n", st.name);
    let _ = writeln!(
        report,
        "Load average (1 min) at the kill: {load_before}; at the end: {load_after}. Times are from the SIGKILL of us-east-1; status polled every {} ms.\n",
        POLL.as_millis()
    );
    let _ = writeln!(
        report,
        "| proxy | requests after kill | failed | error window (first → last failure answered) | last failing request sent at | marked down after | last response naming us-east-1 | proxy last tried us-east-1 | max latency after kill | p50 before |"
    );
    let _ = writeln!(report, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in &proxy_results {
        let (detect_key, last_try) = match r.name.as_str() {
            "atoll proxy" => (
                "atoll proxy router",
                tl.last_retry_growth
                    .map(|t| format!("≤ {}", fmt_ms(ms_since(t, kill))))
                    .unwrap_or_else(|| "never (no retry counted)".into()),
            ),
            n => (n, "until marked down".to_string()),
        };
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.after_kill,
            r.errors,
            r.window
                .map(|(a, b)| format!("{} (+{} → +{})", fmt_ms(b - a), fmt_ms(a), fmt_ms(b)))
                .unwrap_or_else(|| "none".into()),
            r.last_error_sent_ms
                .map(|m| format!("+{}", fmt_ms(m)))
                .unwrap_or_else(|| "-".into()),
            detect(detect_key),
            r.last_named_dead_ms
                .map(|m| format!("+{}", fmt_ms(m)))
                .unwrap_or_else(|| "none after the kill".into()),
            last_try,
            fmt_ms(r.max_latency_after_ms),
            format!("{:.2} ms", r.p50_before_ms),
        );
    }
    for r in &proxy_results {
        if !r.error_kinds.is_empty() {
            let kinds: Vec<String> = r
                .error_kinds
                .iter()
                .map(|(k, v)| format!("{v}× {k}"))
                .collect();
            let _ = writeln!(report, "\n{} failures: {}", r.name, kinds.join("; "));
        }
    }

    // DNS: per client, when its answer stopped naming the dead region.
    let mut moved = Vec::new();
    let mut windows = Vec::new();
    let mut errors = 0usize;
    let mut requests = 0usize;
    let mut dead_answers_after = 0usize;
    for l in &dns_logs {
        let m = l
            .resolutions
            .iter()
            .find(|r| r.at >= kill && r.region != DEAD)
            .map(|r| ms_since(r.at, kill));
        dead_answers_after += l
            .resolutions
            .iter()
            .filter(|r| r.at >= kill && r.region == DEAD)
            .count();
        moved.push(m);
        let after: Vec<&RawRec> = l.recs.iter().filter(|r| r.done >= kill).collect();
        requests += after.len();
        let errs: Vec<&&RawRec> = after.iter().filter(|r| !r.ok).collect();
        errors += errs.len();
        if let (Some(f), Some(la)) = (errs.first(), errs.last()) {
            windows.push(ms_since(la.done, kill) - ms_since(f.done, kill));
        }
    }
    let mut got: Vec<f64> = moved.iter().flatten().copied().collect();
    got.sort_by(f64::total_cmp);
    let ttl_seen: Vec<u32> = dns_logs
        .iter()
        .flat_map(|l| l.resolutions.iter().map(|r| r.ttl))
        .collect();
    let _ = writeln!(
        report,
        "\n| DNS ({} clients, cache ages spread over one TTL) | value |\n|---|---:|",
        n
    );
    let _ = writeln!(
        report,
        "| DNS router marked us-east-1 down after | {} |",
        detect("atoll DNS router")
    );
    let _ = writeln!(
        report,
        "| answer stopped naming us-east-1: min / median / max over clients | {} / {} / {} |",
        got.first().map(|m| fmt_ms(*m)).unwrap_or("-".into()),
        got.get(got.len() / 2)
            .map(|m| fmt_ms(*m))
            .unwrap_or("-".into()),
        got.last().map(|m| fmt_ms(*m)).unwrap_or("-".into()),
    );
    let _ = writeln!(
        report,
        "| clients that never moved within the run | {} |",
        moved.iter().filter(|m| m.is_none()).count()
    );
    let _ = writeln!(
        report,
        "| bound interval × threshold + TTL | {} × {} + {} s = {} |",
        fmt_ms(st.interval_ms as f64),
        st.threshold,
        st.ttl_secs,
        fmt_ms(bound.as_secs_f64() * 1e3)
    );
    let _ = writeln!(
        report,
        "| re-resolutions after the kill that still named us-east-1 | {dead_answers_after} |"
    );
    let _ = writeln!(
        report,
        "| requests after kill / failed | {requests} / {errors} |"
    );
    windows.sort_by(f64::total_cmp);
    let _ = writeln!(
        report,
        "| per-client error window, median / max | {} / {} |",
        windows
            .get(windows.len() / 2)
            .map(|m| fmt_ms(*m))
            .unwrap_or("none".into()),
        windows.last().map(|m| fmt_ms(*m)).unwrap_or("none".into()),
    );
    let _ = writeln!(
        report,
        "| TTL in the answers | {} |",
        if ttl_seen.iter().all(|t| *t == st.ttl_secs) {
            format!("{} s (all {})", st.ttl_secs, ttl_seen.len())
        } else {
            format!("{ttl_seen:?}")
        }
    );
    print!("{report}");
    report.clear();
    drop(proxy_router);
    drop(dns_router);
    drop(hap);
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------------------------
// Throughput

const CLK_TCK: f64 = 100.0;

fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let u: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((u + st) / CLK_TCK)
}

fn self_cpu_secs() -> f64 {
    proc_cpu_secs(std::process::id()).unwrap_or(0.0)
}

/// Closed loop: `conns` keep-alive connections, one GET at a time each, for `secs` after a 1 s
/// warm-up. Returns (ok/s, errors, cpu% of each pid and of this process).
async fn throughput(
    addr: SocketAddr,
    conns: usize,
    secs: f64,
    keys: usize,
    pids: &[(String, u32)],
) -> Result<(f64, u64, Vec<(String, f64)>)> {
    let ok = Arc::new(AtomicU64::new(0));
    let errs = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (ok, errs, measuring, stop) =
            (ok.clone(), errs.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
            let mut i = c * 7919;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 5_000_000 {
                n += 1;
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    let Ok(s) = TcpStream::connect(addr).await else {
                        errs.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let Ok((tx, conn)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(s)).await
                    else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    sender = Some(tx);
                }
                let s = sender.as_mut().expect("set");
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let req = Request::builder()
                    .uri(format!("/v1/kv/sessions/k{:06}", (i >> 33) as usize % keys))
                    .header("host", addr.to_string())
                    .body(Full::new(Bytes::new()))
                    .expect("valid");
                let r = async {
                    s.ready().await?;
                    let resp = s.send_request(req).await?;
                    let st = resp.status();
                    resp.into_body().collect().await?;
                    Ok::<_, anyhow::Error>(st.as_u16())
                };
                let good = match tokio::time::timeout(REQUEST_TIMEOUT, r).await {
                    Ok(Ok(200)) => true,
                    Ok(Ok(_)) => false,
                    _ => {
                        sender = None;
                        false
                    }
                };
                if measuring.load(Ordering::Relaxed) {
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0: Vec<Option<f64>> = pids.iter().map(|(_, p)| proc_cpu_secs(*p)).collect();
    let self0 = self_cpu_secs();
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    let cpu1: Vec<Option<f64>> = pids.iter().map(|(_, p)| proc_cpu_secs(*p)).collect();
    let self1 = self_cpu_secs();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    let mut cpu: Vec<(String, f64)> = pids
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .filter_map(|((n, _), (a, b))| Some((n.clone(), (b.as_ref()? - a.as_ref()?) / el * 100.0)))
        .collect();
    cpu.push(("generator".into(), (self1 - self0) / el * 100.0));
    Ok((
        ok.load(Ordering::Relaxed) as f64 / el,
        errs.load(Ordering::Relaxed),
        cpu,
    ))
}

async fn throughput_part(args: &Args, regions: &mut Regions, dir: &Path) -> Result<String> {
    log("throughput: starting a router (defaults) and HAProxy");
    regions.ensure_all_up()?;
    let tdir = dir.join("throughput");
    std::fs::create_dir_all(&tdir)?;
    let rcfg = tdir.join("router.toml");
    std::fs::write(&rcfg, router_config(&regions.ports, DEFAULTS))?;
    let router = start_router(&args.atoll_bin, &tdir, "router-proxy", &rcfg, false)?;
    let hap = start_haproxy(&args.haproxy_bin, &tdir, regions)?;
    let http = http_client(64);
    wait_until_async(
        START_DEADLINE,
        "the router to see every region healthy",
        || async {
            router_health(&http, router.admin).await.is_some_and(|h| {
                REGIONS
                    .iter()
                    .all(|r| h.get(*r).map(String::as_str) == Some("healthy"))
            })
        },
    )
    .await?;
    wait_until_async(START_DEADLINE, "HAProxy to see every server UP", || async {
        haproxy_status(&http, hap.stats)
            .await
            .is_some_and(|s| s.len() == 6 && s.values().all(|v| v == "UP"))
    })
    .await?;
    let direct = regions.addr(0);
    let region_pid = regions
        .pid(0)
        .ok_or_else(|| anyhow!("us-east-1 is not running"))?;
    let router_pid = router.proc_.pid().unwrap_or(0);
    let hap_pid = hap._proc.pid().unwrap_or(0);
    let targets: [(&str, SocketAddr, Vec<(String, u32)>); 3] = [
        (
            "direct to us-east-1",
            direct,
            vec![("region".into(), region_pid)],
        ),
        (
            "atoll router proxy",
            router.proxy.expect("proxy"),
            vec![("region".into(), region_pid), ("proxy".into(), router_pid)],
        ),
        (
            "haproxy",
            hap.plain,
            vec![("region".into(), region_pid), ("proxy".into(), hap_pid)],
        ),
    ];
    let mut rows: BTreeMap<&str, Vec<(f64, u64, Vec<(String, f64)>, String)>> = BTreeMap::new();
    for round in 0..args.rounds {
        // Alternate the order between rounds.
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1, 2]
        } else {
            vec![2, 1, 0]
        };
        for i in order {
            let (name, addr, pids) = &targets[i];
            let la = loadavg();
            log(format!("throughput round {}: {name}", round + 1));
            let (rps, errs, cpu) =
                throughput(*addr, args.conns, args.secs, args.keys, pids).await?;
            rows.entry(name).or_default().push((rps, errs, cpu, la));
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n#### Proxy throughput: GET /v1/kv/sessions/<key>, {} keep-alive connections, closed loop, {} s per cell after 1 s warm-up, {} rounds (order alternates)\n",
        args.conns, args.secs, args.rounds
    );
    let _ = writeln!(
        out,
        "| target | round | requests/s | errors | CPU % of one core (region / proxy / generator) | proxy CPU µs per request | load avg before |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---:|---|");
    let mut mean: BTreeMap<&str, f64> = BTreeMap::new();
    for (name, _, _) in &targets {
        let v = &rows[name];
        for (round, (rps, errs, cpu, la)) in v.iter().enumerate() {
            let get = |k: &str| {
                cpu.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, c)| format!("{c:.0}"))
                    .unwrap_or("-".into())
            };
            // CPU % of one core / requests per second = CPU µs per request (×10⁴).
            let per_req = cpu
                .iter()
                .find(|(n, _)| n == "proxy")
                .filter(|_| *rps > 0.0)
                .map(|(_, c)| format!("{:.1}", c * 1e4 / rps))
                .unwrap_or("-".into());
            let _ = writeln!(
                out,
                "| {name} | {} | {rps:.0} | {errs} | {} / {} / {} | {per_req} | {la} |",
                round + 1,
                get("region"),
                get("proxy"),
                get("generator")
            );
        }
        mean.insert(name, v.iter().map(|r| r.0).sum::<f64>() / v.len() as f64);
    }
    let d = mean["direct to us-east-1"];
    let a = mean["atoll router proxy"];
    let h = mean["haproxy"];
    let _ = writeln!(
        out,
        "\nMeans: direct {d:.0}/s, atoll router {a:.0}/s, HAProxy {h:.0}/s. Ratios: atoll/direct = {:.2}, HAProxy/direct = {:.2}, atoll/HAProxy = {:.2}.",
        a / d,
        h / d,
        a / h
    );
    drop(router);
    drop(hap);
    Ok(out)
}

/// Writes every key (128-byte values) to us-east-1 and waits until the last one has replicated
/// everywhere (replication is in order per origin).
async fn populate(args: &Args, regions: &Regions) -> Result<()> {
    let http = http_client(8);
    let direct = regions.addr(0);
    log(format!("writing {} keys", args.keys));
    let value = Bytes::from(vec![b'v'; 128]);
    for k in 0..args.keys {
        let req = Request::builder()
            .method(Method::PUT)
            .uri(format!("http://{direct}/v1/kv/sessions/k{k:06}"))
            .body(Full::new(value.clone()))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, http.request(req)).await??;
        if resp.status() != 200 {
            bail!("PUT k{k:06}: HTTP {}", resp.status());
        }
        resp.into_body().collect().await?;
    }
    let last = args.keys - 1;
    for i in 0..3 {
        let url = format!("http://{}/v1/kv/sessions/k{last:06}", regions.addr(i));
        wait_until_async(
            START_DEADLINE,
            &format!("k{last:06} on {}", REGIONS[i]),
            || async { get(&http, &url, false).await.is_ok_and(|r| r.0 == 200) },
        )
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.work)?;
    let dir = args.work.clone();
    let mut regions = Regions::start(&args.atoll_bin, &dir)?;
    log(format!(
        "regions: {}",
        (0..3)
            .map(|i| format!("{} on {}", REGIONS[i], regions.addr(i)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    populate(&args, &regions).await?;
    if !args.no_failover {
        println!("### Failover when us-east-1 is SIGKILLed\n");
        println!(
            "Clients: {} GET/s through each proxy (open loop); {} DNS clients, {:.0} GET/s together.",
            args.rate, args.dns_clients, args.rate
        );
        for s in &args.scenarios {
            let st = match s.as_str() {
                "article" => ARTICLE,
                "default" => DEFAULTS,
                other => bail!("unknown scenario {other} (article, default)"),
            };
            let mut report = String::new();
            scenario(&args, st, &mut regions, &dir, &mut report).await?;
        }
    }
    if !args.no_throughput {
        let t = throughput_part(&args, &mut regions, &dir).await?;
        print!("{t}");
    }
    Ok(())
}
