//! End-to-end: a real `atoll router` process (HTTP proxy and admin API) in front of three real
//! `atoll region` processes on loopback, all started from the `atoll` binary.
//!
//! - **Drain / undrain / token**: draining the primary through the admin API moves proxied
//!   traffic to the next region (`X-Atoll-Routed-To`), undraining moves it back, and a wrong or
//!   missing token is refused with 401 and changes nothing.
//! - **Failover under mixed load**: 8 tasks send idempotent requests (GET and PUT on the lww
//!   keyspace `sessions`) and non-idempotent ones (counter `POST {"delta":1}` on `ratelimits`)
//!   through the proxy while the primary region is SIGKILLed. Idempotent requests must see no
//!   error at all; non-idempotent ones may fail only within a window shorter than 1 s (first to
//!   last error). Then the killed region is restarted on its data directory (its acknowledged
//!   increments are durable there and replicate from it), replication converges, and every
//!   counter, read from the regions that survived, counts each acknowledged increment exactly
//!   once: `acked <= value <= acked + unknown` (unknown = `502 ATOLL-UPSTREAM-OUTCOME-UNKNOWN`
//!   or no answer) and `value <= attempts`.
//!
//! Health checks every 1000 ms with failure_threshold 3 (the router's defaults). Every load is
//! bounded in time and requests, and every wait has a deadline.

use crate::common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use atoll_config::Policy;
use atoll_config::render::{ClusterToml, KeyspaceToml, RegionToml, RouterToml, Tls};
use atoll_testkit::{
    Client, RegionProcess, RegionSpec, RouterService, TestDir, free_ports, test_dir,
    wait_until_async,
};
use common::{BIN, ok};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
/// In failover order: `us-east-1` is the primary.
const REGIONS: [&str; 3] = [US, EU, AP];
const TOKEN: &str = "e2e-router-token";
const ROUTED_TO: &str = "x-atoll-routed-to";

/// Concurrent load tasks.
const TASKS: usize = 8;
/// A task stops after this many requests even if the load is not over.
const MAX_REQUESTS_PER_TASK: usize = 20_000;
/// The load never runs longer than this.
const LOAD_LIMIT: Duration = Duration::from_secs(20);
/// The primary is killed once this many increments have been acknowledged and the load has run
/// for at least [`KILL_NOT_BEFORE`] (or at the deadline).
const KILL_AFTER_INCR_ACKS: u64 = 100;
const KILL_NOT_BEFORE: Duration = Duration::from_secs(1);
/// The load goes on this long after the kill: 3 failed checks 1 s apart, plus margin.
const AFTER_KILL: Duration = Duration::from_secs(6);
/// Non-idempotent requests may fail only within a window shorter than this.
const MAX_ERROR_WINDOW: Duration = Duration::from_secs(1);
/// Upper bound for starting things and for the router to see a region's health change.
const DEADLINE: Duration = Duration::from_secs(20);
/// Upper bound for replication to converge after the load.
const CONVERGE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Processes

/// `ports`: each region's client API port, then its peer listener's.
fn config_text(ports: &[u16]) -> String {
    let at = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut toml = ClusterToml::new("router-e2e")
        .max_clock_offset_ms(60_000)
        .tls(Tls::Certs("certs".to_string()));
    for (name, port) in REGIONS.iter().zip(ports.chunks(2)) {
        toml = toml.region(RegionToml::new(name, at(port[0])).peer(at(port[1])));
    }
    let router = RouterToml::new()
        .zone("atoll.test")
        .ttl_secs(30)
        .health("interval_ms", 1000)
        .health("failure_threshold", 3)
        .health("recovery_threshold", 2)
        .name("api", "failover", &REGIONS);
    toml.keyspace(KeyspaceToml::new("sessions", Policy::Lww))
        .keyspace(KeyspaceToml::new("ratelimits", Policy::Counter))
        .heartbeat_interval_ms(200)
        .section(&router.render())
        .render()
}

/// Writes the config, makes the cluster's certificates (`atoll certs init`: the regions talk
/// mutual TLS) and starts the three regions on their configured ports (retried with new ports if
/// one was taken meanwhile).
fn start_regions(dir: &TestDir) -> Result<(PathBuf, Vec<RegionProcess>)> {
    let config = dir.join("atoll.toml");
    let mut last = None;
    for _attempt in 0..5 {
        let ports = free_ports(2 * REGIONS.len())?;
        std::fs::write(&config, config_text(&ports))?;
        if !dir.join("certs").exists() {
            let mut cmd = Command::new(BIN);
            cmd.args(["certs", "init", "--config"])
                .arg(&config)
                .arg("--out")
                .arg(dir.join("certs"));
            let out = atoll_testkit::run_with_timeout(cmd, DEADLINE)?;
            ensure!(out.status.success(), "atoll certs init: {out:?}");
        }
        let mut regions = Vec::new();
        let mut failed = None;
        for (name, port) in REGIONS.iter().zip(ports.iter().step_by(2)) {
            let spec = RegionSpec::new(BIN, &config, name, dir.join(name))
                .listen(SocketAddr::from((Ipv4Addr::LOCALHOST, *port)));
            match RegionProcess::start_spec(spec) {
                Ok(p) => regions.push(p),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => return Ok((config, regions)),
            Some(e) => {
                drop(regions);
                for r in REGIONS {
                    let _ = std::fs::remove_dir_all(dir.join(r));
                }
                last = Some(e);
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no attempt made"))
        .context("starting the regions"))
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .expect("a plain-HTTP client builds")
}

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<(u16, Value)> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn status(&self) -> Result<Value> {
        let resp = self
            .http
            .get(format!("{}/v1/router/status", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        ensure!(
            resp.status() == 200,
            "router status: HTTP {}",
            resp.status()
        );
        Ok(resp.json().await?)
    }

    /// `region -> health` as the router sees it.
    async fn health(&self) -> Result<BTreeMap<String, String>> {
        let st = self.status().await?;
        Ok(st["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["region"].as_str().unwrap_or_default().to_string(),
                    r["health"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    async fn wait_health(&self, want: &[(&str, &str)]) -> Result<()> {
        wait_until_async(DEADLINE, &format!("router health {want:?}"), || async {
            match self.health().await {
                Ok(h) => want
                    .iter()
                    .all(|(r, s)| h.get(*r).map(String::as_str) == Some(*s)),
                Err(_) => false,
            }
        })
        .await
    }
}

/// The regions that answered `n` GETs through the proxy (by `X-Atoll-Routed-To`). The key
/// may not have replicated to the region answering yet: 404 is an answer too.
async fn routed(http: &reqwest::Client, proxy: &str, n: usize) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = http
            .get(format!("{proxy}/v1/kv/sessions/drain-probe"))
            .send()
            .await?;
        ensure!(
            resp.status() == 200 || resp.status() == 404,
            "GET through the proxy: HTTP {}",
            resp.status()
        );
        out.push(
            resp.headers()
                .get(ROUTED_TO)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| anyhow!("no {ROUTED_TO} header"))?
                .to_string(),
        );
    }
    Ok(out)
}

fn all_to(v: &[String], region: &str) -> bool {
    v.iter().all(|r| r == region)
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn router_drains_and_fails_over_without_double_counting() {
    let dir = ok(test_dir("router").map_err(Into::into));
    let (config, mut regions) = ok(start_regions(&dir));
    let router = ok(RouterService::start(
        BIN,
        &config,
        dir.path(),
        TOKEN,
        DEADLINE,
    ));
    let admin = Admin {
        http: http(),
        base: format!("http://{}", router.admin),
    };
    let proxy = format!("http://{}", router.proxy);
    ok(admin
        .wait_health(&[(US, "healthy"), (EU, "healthy"), (AP, "healthy")])
        .await);
    ok(drain_undrain_and_token(&admin, &proxy).await);
    ok(failover_under_load(&admin, &proxy, &mut regions).await);
}

async fn drain_undrain_and_token(admin: &Admin, proxy: &str) -> Result<()> {
    let http = http();
    Client::new(proxy)
        .kv_put("sessions", "drain-probe", "x", None)
        .await
        .context("PUT through the proxy")?;
    let before = routed(&http, proxy, 10).await?;
    ensure!(
        all_to(&before, US),
        "before any drain: routed to {before:?}"
    );

    let drain = format!("/v1/router/regions/{US}/drain");
    let undrain = format!("/v1/router/regions/{US}/undrain");
    let body = json!({"reason": "router e2e"});
    for token in [Some("not-the-token"), None] {
        let (status, v) = admin.post(&drain, token, body.clone()).await?;
        ensure!(
            status == 401 && v["error"]["code"] == "ATOLL-UNAUTHORIZED",
            "drain with token {token:?}: HTTP {status} {v}"
        );
    }
    let still = routed(&http, proxy, 10).await?;
    ensure!(
        all_to(&still, US),
        "a refused drain moved traffic: {still:?}"
    );

    let (status, v) = admin.post(&drain, Some(TOKEN), body.clone()).await?;
    ensure!(status == 200, "drain: HTTP {status} {v}");
    let drained = routed(&http, proxy, 20).await?;
    ensure!(
        all_to(&drained, EU),
        "after draining {US}: routed to {drained:?}"
    );

    let (status, v) = admin.post(&undrain, Some("wrong"), json!({})).await?;
    ensure!(
        status == 401 && v["error"]["code"] == "ATOLL-UNAUTHORIZED",
        "undrain with a wrong token: HTTP {status} {v}"
    );
    let still = routed(&http, proxy, 10).await?;
    ensure!(
        all_to(&still, EU),
        "a refused undrain moved traffic: {still:?}"
    );

    let (status, v) = admin.post(&undrain, Some(TOKEN), json!({})).await?;
    ensure!(status == 200, "undrain: HTTP {status} {v}");
    let back = routed(&http, proxy, 20).await?;
    ensure!(
        all_to(&back, US),
        "after undraining {US}: routed to {back:?}"
    );
    println!("drain/undrain: {US} -> {EU} -> {US}; wrong and missing tokens refused with 401");
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Put,
    Incr,
}

/// One request of the load and what came back.
#[derive(Clone, Debug)]
struct Event {
    task: usize,
    op: Op,
    /// When the request was sent and when its answer (or error) came, since the load started.
    sent: Duration,
    done: Duration,
    /// HTTP status, or None when no answer came.
    status: Option<u16>,
    code: Option<String>,
    routed_to: Option<String>,
    transport: Option<String>,
}

impl Event {
    fn ok(&self) -> bool {
        match self.op {
            // A key not written yet reads as 404 ATOLL-NOT-FOUND: an answer, not an error.
            Op::Get => {
                self.status == Some(200)
                    || (self.status == Some(404) && self.code.as_deref() == Some("ATOLL-NOT-FOUND"))
            }
            Op::Put | Op::Incr => self.status == Some(200),
        }
    }

    /// An increment that may or may not have been applied.
    fn unknown(&self) -> bool {
        self.status.is_none()
            || (self.status == Some(502)
                && self.code.as_deref() == Some("ATOLL-UPSTREAM-OUTCOME-UNKNOWN"))
    }

    fn describe(&self) -> String {
        format!(
            "task {} {:?} sent at {:?}, done at {:?}: {}{}{}",
            self.task,
            self.op,
            self.sent,
            self.done,
            self.status
                .map(|s| format!("HTTP {s}"))
                .unwrap_or_else(|| format!(
                    "no answer ({})",
                    self.transport.as_deref().unwrap_or("?")
                )),
            self.code
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default(),
            self.routed_to
                .as_deref()
                .map(|r| format!(" via {r}"))
                .unwrap_or_default()
        )
    }
}

fn counter_key(task: usize) -> String {
    format!("router-e2e-{task}")
}

async fn load_task(
    http: reqwest::Client,
    proxy: String,
    task: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    incr_acks: Arc<AtomicU64>,
) -> Vec<Event> {
    let mut events = Vec::new();
    let counter_url = format!("{proxy}/v1/counter/ratelimits/{}", counter_key(task));
    for i in 0..MAX_REQUESTS_PER_TASK {
        if stop.load(Ordering::Relaxed) || start.elapsed() >= LOAD_LIMIT {
            break;
        }
        let op = [Op::Get, Op::Put, Op::Incr][i % 3];
        let kv_url = format!("{proxy}/v1/kv/sessions/t{task}-k{}", (i / 3) % 16);
        let req = match op {
            Op::Get => http.get(&kv_url),
            Op::Put => http.put(&kv_url).body(format!("v{i}")),
            Op::Incr => http.post(&counter_url).json(&json!({"delta": 1})),
        };
        let sent = start.elapsed();
        let mut ev = Event {
            task,
            op,
            sent,
            done: sent,
            status: None,
            code: None,
            routed_to: None,
            transport: None,
        };
        match req.send().await {
            Ok(resp) => {
                ev.status = Some(resp.status().as_u16());
                ev.routed_to = resp
                    .headers()
                    .get(ROUTED_TO)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match resp.bytes().await {
                    Ok(b) => {
                        ev.code = serde_json::from_slice::<Value>(&b)
                            .ok()
                            .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
                    }
                    Err(e) => {
                        // The head came but the body broke: the outcome is still known.
                        ev.transport = Some(format!("body: {e}"));
                    }
                }
            }
            Err(e) => ev.transport = Some(e.to_string()),
        }
        ev.done = start.elapsed();
        if op == Op::Incr && ev.ok() {
            incr_acks.fetch_add(1, Ordering::Relaxed);
        }
        events.push(ev);
    }
    events
}

async fn failover_under_load(
    admin: &Admin,
    proxy: &str,
    regions: &mut [RegionProcess],
) -> Result<()> {
    let http = http();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let incr_acks = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(load_task(
                http.clone(),
                proxy.to_string(),
                t,
                start,
                stop.clone(),
                incr_acks.clone(),
            ))
        })
        .collect();

    // Kill the primary in the middle of the load.
    let kill_deadline = LOAD_LIMIT - AFTER_KILL;
    while (incr_acks.load(Ordering::Relaxed) < KILL_AFTER_INCR_ACKS
        || start.elapsed() < KILL_NOT_BEFORE)
        && start.elapsed() < kill_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acks_at_kill = incr_acks.load(Ordering::Relaxed);
    let killed_at = start.elapsed();
    let exit = tokio::task::block_in_place(|| regions[0].kill9())?;
    println!(
        "killed {US} (SIGKILL, {exit}) at {killed_at:?}, after {acks_at_kill} acknowledged increments"
    );

    // The router notices (3 failed checks 1 s apart) while the load goes on.
    let detect = admin.wait_health(&[(US, "unhealthy")]).await;
    let detected_at = start.elapsed();
    let until = killed_at + AFTER_KILL;
    while start.elapsed() < until.min(LOAD_LIMIT) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut events = Vec::new();
    for h in handles {
        events.extend(h.await.context("a load task panicked")?);
    }
    detect.context("the router did not mark the killed primary unhealthy")?;
    events.sort_by_key(|e| e.done);

    // ---- idempotent requests: no error at all -------------------------------------------
    let idem: Vec<&Event> = events.iter().filter(|e| e.op != Op::Incr).collect();
    let idem_errors: Vec<&&Event> = idem.iter().filter(|e| !e.ok()).collect();
    let incr: Vec<&Event> = events.iter().filter(|e| e.op == Op::Incr).collect();
    let incr_errors: Vec<&&Event> = incr.iter().filter(|e| !e.ok()).collect();
    println!(
        "load: {} requests ({} idempotent, {} increments) in {:?}; primary killed at {killed_at:?}, marked unhealthy by {detected_at:?}; idempotent errors {}, increment errors {}",
        events.len(),
        idem.len(),
        incr.len(),
        events.last().map(|e| e.done).unwrap_or_default(),
        idem_errors.len(),
        incr_errors.len()
    );
    for e in incr_errors.iter().take(20) {
        println!("  increment error: {}", e.describe());
    }
    ensure!(
        idem_errors.is_empty(),
        "{} idempotent requests failed through the proxy, e.g.:\n{}",
        idem_errors.len(),
        idem_errors
            .iter()
            .take(10)
            .map(|e| e.describe())
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        idem.iter().filter(|e| e.sent > killed_at).count() > 100
            && incr.iter().filter(|e| e.sent > killed_at).count() > 50,
        "too little load after the kill to say anything"
    );

    // ---- non-idempotent requests: errors only in a short window around the kill -------
    if let (Some(first), Some(last)) = (incr_errors.first(), incr_errors.last()) {
        let window = last.done.saturating_sub(first.done);
        println!(
            "increment error window: {window:?} (first {:?}, last {:?})",
            first.done, last.done
        );
        ensure!(
            window < MAX_ERROR_WINDOW,
            "increments failed over {window:?} (from {:?} to {:?}), not within {MAX_ERROR_WINDOW:?}",
            first.done,
            last.done
        );
        ensure!(
            first.done >= killed_at,
            "an increment failed before the kill: {}",
            first.describe()
        );
    }
    // Traffic ends up on the next region in failover order.
    let late: Vec<&Event> = events.iter().filter(|e| e.sent > detected_at).collect();
    ensure!(
        !late.is_empty() && late.iter().all(|e| e.routed_to.as_deref() == Some(EU)),
        "after the router marked {US} unhealthy, requests went to {:?}",
        late.iter()
            .map(|e| e.routed_to.clone())
            .collect::<std::collections::BTreeSet<_>>()
    );

    // ---- every acknowledged increment counted exactly once ------------------------------
    // The killed region's acknowledged increments are durable on its disk; restart it so that
    // they replicate, then read the counters from the regions that survived.
    tokio::task::block_in_place(|| regions[0].restart()).context("restarting the primary")?;
    let clients: Vec<Client> = regions.iter().map(|r| r.client()).collect();
    let keys: Vec<String> = (0..TASKS).map(counter_key).collect();
    let converge_deadline = Instant::now() + CONVERGE;
    loop {
        match counters_converged(&clients, &keys).await {
            Ok(()) => break,
            Err(e) if Instant::now() >= converge_deadline => {
                bail!("replication did not converge within {CONVERGE:?}: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    let mut problems = Vec::new();
    let (mut acked_total, mut unknown_total, mut value_total) = (0i64, 0i64, 0i64);
    for (task, key) in keys.iter().enumerate() {
        let mine: Vec<&&Event> = incr.iter().filter(|e| e.task == task).collect();
        let attempts = mine.len() as i64;
        let acked = mine.iter().filter(|e| e.ok()).count() as i64;
        let unknown = mine.iter().filter(|e| e.unknown()).count() as i64;
        let mut values = Vec::new();
        for (r, c) in REGIONS.iter().zip(&clients).skip(1) {
            values.push((*r, c.counter_get("ratelimits", key).await?));
        }
        let value = values[0].1;
        ensure!(
            values.iter().all(|(_, v)| *v == value),
            "{key}: the surviving regions disagree after convergence: {values:?}"
        );
        if value < acked {
            problems.push(format!(
                "{key}: {value} < {acked} acknowledged increments (an acknowledged increment was lost)"
            ));
        }
        if value > acked + unknown {
            problems.push(format!(
                "{key}: {value} > {acked} acknowledged + {unknown} unknown (an increment was applied twice, or a refused one applied)"
            ));
        }
        if value > attempts {
            problems.push(format!("{key}: {value} > {attempts} attempts"));
        }
        acked_total += acked;
        unknown_total += unknown;
        value_total += value;
    }
    println!(
        "counters after convergence: {value_total} counted, {acked_total} acknowledged, {unknown_total} unknown, {} attempts",
        incr.len()
    );
    ensure!(
        problems.is_empty(),
        "counter problems:\n{}",
        problems.join("\n")
    );
    Ok(())
}

/// Ok when every region's peers report no lag and every region has the same counter values.
async fn counters_converged(clients: &[Client], keys: &[String]) -> Result<()> {
    for c in clients {
        let st = c.status().await?;
        for p in st["peers"].as_array().into_iter().flatten() {
            let lag = p["lag_ops"].as_u64().unwrap_or(u64::MAX);
            if lag != 0 {
                bail!("{} lags {} by {lag} ops", c.endpoint(), p["region"]);
            }
        }
    }
    for k in keys {
        let mut vals = Vec::new();
        for c in clients {
            vals.push(c.counter_get("ratelimits", k).await?);
        }
        if vals.iter().any(|v| *v != vals[0]) {
            bail!("{k}: {vals:?}");
        }
    }
    Ok(())
}
