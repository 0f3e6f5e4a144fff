//! The global view: one place that shows every region side by side (cross-region
//! observability: error rate, p99, lag, reachability and health per region, in place before an
//! incident). The router knows every region's client API from the config, so it
//! fans out to them, concurrently and each with a short timeout, and serves:
//!
//! - [`GlobalView::status`] (`GET /v1/global/status`, admin token): every region's `/v1/status`
//!   (role, epoch, serving, peers, fencing), the router's own view of it (health, drain, ramp,
//!   routable), matrices derived from each region's view of its peers (reachability, replication
//!   lag, RTT, clock offset, writes behind), the drains, the recent conflicts of the `lww`
//!   keyspaces (keys and regions, never values) and the last outcome of each drill scenario;
//! - [`GlobalView::metrics`] (`GET /v1/global/metrics`, open like `/metrics`): every region's
//!   `/metrics` with a `region` label, `atoll_region_up`, and the router's own metrics
//!   ([`crate::federate`]).
//!
//! A region that does not answer within the timeout is reported (`up: false` and why, or
//! `atoll_region_up 0`), never left out, and nothing waits longer than the timeout. Each
//! document is kept for [`CACHE_FOR`] and concurrent requests share one fan-out, so however many
//! clients poll, the regions see at most one round of requests per second per document.

use crate::federate::{self, Scrape};
use crate::runtime::RouterCtx;
use atoll_core::op::Policy;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a fan-out's result is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);
/// The default timeout of one region's answers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/v1/status` or conflicts body read from a region.
const MAX_STATUS_BODY: usize = 2 << 20;
/// Largest `/metrics` body read from a region.
const MAX_METRICS_BODY: usize = 8 << 20;
/// Largest drill outcomes file read.
const MAX_DRILL_FILE: u64 = 1 << 20;
/// Conflicts asked of each region per lww keyspace, and kept in the document in all.
const CONFLICTS_PER_KEYSPACE: usize = 10;
const CONFLICTS_KEPT: usize = 30;
/// Format version of the global status document.
pub const STATUS_VERSION: u32 = 1;

/// The web dashboard, served by the admin API: static HTML, script and style, embedded in the
/// binary (no build step, nothing fetched from another origin). It polls `/v1/global/status`
/// and `/v1/global/metrics` every 2 s and keeps the last minutes in the page.
pub const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
pub const DASHBOARD_JS: &str = include_str!("dashboard/app.js");
pub const DASHBOARD_CSS: &str = include_str!("dashboard/app.css");

/// The name of the drill outcomes file (`atoll drill` writes it; `atoll-drill`'s `outcome`).
pub const DRILL_OUTCOMES_FILE: &str = "drill-outcomes.json";

/// How the global view reaches the regions.
#[derive(Clone, Debug)]
pub struct GlobalOptions {
    /// Longest wait for one region's answers.
    pub timeout: Duration,
    /// A client API bearer token for regions whose client API needs one (`[auth]`: their
    /// `/v1/status` and `/v1/conflicts` do); `None` sends none.
    pub region_token: Option<String>,
    /// The directory where `atoll drill` keeps its outcomes (`drill-outcomes.json`); `None`: the
    /// document says no drill results are known here.
    pub drill_state_dir: Option<PathBuf>,
}

impl Default for GlobalOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            region_token: None,
            drill_state_dir: None,
        }
    }
}

type Cached<T> = Mutex<Option<(Instant, Arc<T>)>>;

/// The fan-out and its caches.
pub struct GlobalView {
    ctx: RouterCtx,
    opts: GlobalOptions,
    cluster: String,
    model: String,
    /// The `lww` keyspaces: the ones with a conflict ledger.
    lww: Vec<String>,
    http: reqwest::Client,
    status_cache: Cached<Value>,
    metrics_cache: Cached<String>,
}

/// Why a region's document could not be read, in a few words.
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_connect() {
        format!("cannot connect: {cause}")
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        format!("request failed: {cause}")
    }
}

async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("answer larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What an error answer of a region says: its code and message when it is atoll's JSON error.
fn error_answer(status: reqwest::StatusCode, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (v["error"]["code"].as_str(), v["error"]["message"].as_str()) {
        (Some(c), Some(m)) => format!("HTTP {}: {c}: {m}", status.as_u16()),
        _ => format!("HTTP {}", status.as_u16()),
    }
}

impl GlobalView {
    pub fn new(ctx: RouterCtx, config: &atoll_config::Config, opts: GlobalOptions) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(opts.timeout)
            .timeout(opts.timeout)
            .pool_idle_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            ctx,
            opts,
            cluster: config.cluster.name.clone(),
            model: config.cluster.model.as_str().to_string(),
            lww: config
                .keyspaces
                .iter()
                .filter(|k| k.policy == Policy::Lww)
                .map(|k| k.name.clone())
                .collect(),
            http,
            status_cache: Mutex::new(None),
            metrics_cache: Mutex::new(None),
        }
    }

    /// The timeout of one region's answers.
    pub fn timeout(&self) -> Duration {
        self.opts.timeout
    }

    async fn get(&self, url: String, max: usize, auth: bool) -> Result<Vec<u8>, String> {
        let mut req = self.http.get(url);
        if auth && let Some(t) = &self.opts.region_token {
            req = req.bearer_auth(t);
        }
        let fut = async {
            let resp = req.send().await.map_err(|e| describe(&e))?;
            let status = resp.status();
            let body = read_limited(resp, max).await?;
            if !status.is_success() {
                return Err(error_answer(status, &body));
            }
            Ok(body)
        };
        // reqwest applies the timeout too; this bounds the body read whatever it does.
        match tokio::time::timeout(self.opts.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timed out after {} ms",
                self.opts.timeout.as_millis()
            )),
        }
    }

    /// The merged metrics of every region (Prometheus text format 0.0.4).
    pub async fn metrics(&self) -> Arc<String> {
        let mut cache = self.metrics_cache.lock().await;
        if let Some((at, v)) = cache.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return v.clone();
        }
        let regions = self.ctx.state.regions();
        let fetches = regions.iter().map(|r| {
            let url = format!("http://{}/metrics", r.api);
            self.get(url, MAX_METRICS_BODY, false)
        });
        let results = join_all(fetches).await;
        let texts: Vec<Result<String, String>> = results
            .into_iter()
            .map(|r| r.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect();
        for (r, t) in regions.iter().zip(&texts) {
            if let Err(e) = t {
                tracing::debug!(region = %r.name, "global metrics: region not scraped: {e}");
            }
        }
        let scrapes: Vec<Scrape<'_>> = regions
            .iter()
            .zip(&texts)
            .map(|(r, t)| Scrape {
                region: r.name.as_str(),
                text: t.as_deref().map_err(String::as_str),
            })
            .collect();
        self.ctx.metrics.refresh(&self.ctx.state, self.ctx.now_ms());
        let own = self.ctx.metrics.encode();
        let merged = Arc::new(federate::merge(&scrapes, Some(&own)));
        *cache = Some((Instant::now(), merged.clone()));
        merged
    }

    /// The global status document.
    pub async fn status(&self) -> Arc<Value> {
        let mut cache = self.status_cache.lock().await;
        if let Some((at, v)) = cache.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return v.clone();
        }
        let doc = Arc::new(self.build_status().await);
        *cache = Some((Instant::now(), doc.clone()));
        doc
    }

    async fn region_doc(&self, api: std::net::SocketAddr) -> (Result<Value, String>, Vec<Value>) {
        let lww = &self.lww;
        let status = async {
            let b = self
                .get(format!("http://{api}/v1/status"), MAX_STATUS_BODY, true)
                .await?;
            serde_json::from_slice::<Value>(&b).map_err(|e| format!("not a status document: {e}"))
        };
        let conflicts = async {
            let mut out = Vec::new();
            for ks in lww {
                let url = format!("http://{api}/v1/conflicts/{ks}?limit={CONFLICTS_PER_KEYSPACE}");
                let Ok(b) = self.get(url, MAX_STATUS_BODY, true).await else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<Value>(&b) else {
                    continue;
                };
                for c in v["conflicts"].as_array().into_iter().flatten() {
                    // Keys and regions only: values are user data, never in this document.
                    out.push(json!({
                        "keyspace": ks,
                        "key": c["key"],
                        "reason": c["reason"],
                        "recorded_at_ms": c["recorded_at_ms"],
                        "winner_region": c["winner"]["region"],
                        "loser_region": c["loser"]["region"],
                    }));
                }
            }
            out
        };
        tokio::join!(status, conflicts)
    }

    async fn build_status(&self) -> Value {
        let started = Instant::now();
        let now_ms = self.ctx.now_ms();
        let regions = self.ctx.state.regions();
        let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
        let fetched = join_all(regions.iter().map(|r| async move {
            let t = Instant::now();
            let res = self.region_doc(r.api).await;
            (res, t.elapsed())
        }))
        .await;
        let router = self.ctx.state.status(now_ms).ok();
        let router_json = router
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let router_region = |name: &str| -> Value {
            router_json["regions"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["region"] == name))
                .cloned()
                .unwrap_or(Value::Null)
        };

        let mut docs = Vec::new();
        let mut conflicts: Vec<Value> = Vec::new();
        let mut views: Vec<Option<Value>> = Vec::new();
        for (r, ((status, region_conflicts), took)) in regions.iter().zip(fetched) {
            let name = r.name.as_str();
            let mut doc = json!({
                "region": name,
                "api": r.api.to_string(),
                "fetch_ms": (took.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                "router": router_region(name),
            });
            match status {
                Ok(s) => {
                    let fencing = &s["fencing"];
                    doc["up"] = json!(true);
                    doc["error"] = Value::Null;
                    doc["role"] = fencing["role"].clone();
                    doc["epoch"] = fencing["epoch"].clone();
                    doc["primary"] = fencing.get("holder").cloned().unwrap_or(Value::Null);
                    doc["serving"] = s["serving"].clone();
                    doc["version"] = s["version"].clone();
                    doc["uptime_seconds"] = s["uptime_seconds"].clone();
                    doc["model"] = s["model"].clone();
                    doc["replication"] = json!({
                        "established": s["replication"]["established"],
                        "max_lag_secs": s["replication"]["max_lag_secs"],
                        "tombstone_horizon_ms": s["replication"]["tombstone_horizon_ms"],
                    });
                    doc["fencing"] = fencing.clone();
                    doc["peer_tls"] = s["peer_tls"].clone();
                    doc["strong"] = s["strong"].clone();
                    doc["peers"] = s["peers"].clone();
                    for mut c in region_conflicts {
                        c["region"] = json!(name);
                        conflicts.push(c);
                    }
                    views.push(Some(s));
                }
                Err(e) => {
                    doc["up"] = json!(false);
                    doc["error"] = json!(e);
                    views.push(None);
                }
            }
            docs.push(doc);
        }
        let reporting = views.iter().filter(|v| v.is_some()).count();
        conflicts.sort_by(|a, b| {
            b["recorded_at_ms"]
                .as_u64()
                .cmp(&a["recorded_at_ms"].as_u64())
        });
        conflicts.truncate(CONFLICTS_KEPT);

        let drains: Vec<Value> = router_json["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| !r["drained"].is_null())
            .map(|r| {
                json!({
                    "region": r["region"],
                    "reason": r["drained"]["reason"],
                    "since_ms": r["drained"]["since_ms"],
                    "until_ms": r["drained"]["until_ms"],
                })
            })
            .collect();

        json!({
            "version": STATUS_VERSION,
            "generated_at_ms": now_ms,
            "took_ms": started.elapsed().as_millis() as u64,
            "timeout_ms": self.opts.timeout.as_millis() as u64,
            "cluster": self.cluster,
            "model": self.model,
            "regions_total": regions.len(),
            "regions_reporting": reporting,
            "complete": reporting == regions.len(),
            "summary": format!("{reporting} of {} regions reporting", regions.len()),
            "regions": docs,
            "matrices": matrices(&names, &views),
            "router": {
                "names": router_json["names"],
                "primary": router_json["primary"],
                "primary_claims": router_json["primary_claims"],
            },
            "drains": drains,
            "conflicts": conflicts,
            "drills": self.drills(now_ms),
        })
    }

    /// The last outcome of each drill scenario, from `atoll drill`'s outcome file.
    fn drills(&self, now_ms: u64) -> Value {
        let Some(dir) = &self.opts.drill_state_dir else {
            return json!({
                "source": null,
                "scenarios": [],
                "note": "no drill state directory given to the router (--drill-state-dir)",
            });
        };
        let path = dir.join(DRILL_OUTCOMES_FILE);
        let source = path.display().to_string();
        let text = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return json!({"source": source, "scenarios": [], "note": "no drill has run yet"});
            }
            Err(e) => return json!({"source": source, "scenarios": [], "error": e.to_string()}),
            Ok(m) if m.len() > MAX_DRILL_FILE => {
                return json!({"source": source, "scenarios": [], "error": "file too large"});
            }
            Ok(_) => match std::fs::read(&path) {
                Ok(t) => t,
                Err(e) => {
                    return json!({"source": source, "scenarios": [], "error": e.to_string()});
                }
            },
        };
        let v: Value = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => return json!({"source": source, "scenarios": [], "error": e.to_string()}),
        };
        let scenarios: Vec<Value> = v["scenarios"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, o)| {
                let last = o["last_run_unix_ms"].as_u64();
                json!({
                    "scenario": name,
                    "file": o["file"],
                    "last_run_unix_ms": last,
                    "age_seconds": last.map(|l| now_ms.saturating_sub(l) / 1000),
                    "passed": o["last_passed"],
                    "last_pass_unix_ms": o["last_pass_unix_ms"],
                    "lost_writes": o["lost_writes"],
                    "zombie_writes": o["zombie_writes"],
                    "guard_tripped": o["guard_tripped"],
                })
            })
            .collect();
        json!({"source": source, "scenarios": scenarios})
    }
}

/// Runs futures concurrently on this task and returns their outputs in order.
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
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
    out.into_iter().flatten().collect()
}

/// The matrices, row = the observing region, column = the peer it reports on; `null` where
/// the observer is not reporting (or for itself). From each region's `peers` in `/v1/status`.
pub fn matrices(names: &[&str], views: &[Option<Value>]) -> Value {
    let cell = |i: usize, j: usize, field: &str| -> Value {
        if i == j {
            return Value::Null;
        }
        let Some(Some(v)) = views.get(i) else {
            return Value::Null;
        };
        v["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["region"] == names[j]))
            .map(|p| p[field].clone())
            .unwrap_or(Value::Null)
    };
    let grid = |field: &str| -> Value {
        Value::Array(
            (0..names.len())
                .map(|i| Value::Array((0..names.len()).map(|j| cell(i, j, field)).collect()))
                .collect(),
        )
    };
    json!({
        "regions": names,
        "reachability": grid("state"),
        "lag_seconds": grid("lag_seconds"),
        "lag_ops": grid("lag_ops"),
        "rtt_ms": grid("rtt_ms"),
        "clock_offset_ms": grid("clock_offset_ms"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices_follow_each_observer_and_leave_the_silent_ones_unknown() {
        let a = json!({"peers": [
            {"region": "b", "state": "up", "lag_seconds": 0.1, "rtt_ms": 80.0, "clock_offset_ms": 1.0, "lag_ops": 0},
            {"region": "c", "state": "down", "lag_seconds": 9.0, "rtt_ms": null, "clock_offset_ms": null, "lag_ops": 3},
        ]});
        let m = matrices(
            &["a", "b", "c"],
            &[Some(a), None, Some(json!({"peers": []}))],
        );
        assert_eq!(m["reachability"][0][1], "up");
        assert_eq!(m["reachability"][0][2], "down");
        assert_eq!(m["reachability"][0][0], Value::Null);
        assert_eq!(m["reachability"][1][0], Value::Null, "b is not reporting");
        assert_eq!(m["lag_seconds"][0][2], 9.0);
        assert_eq!(m["rtt_ms"][0][1], 80.0);
        assert_eq!(m["lag_ops"][0][2], 3);
    }

    #[tokio::test]
    async fn join_all_runs_concurrently_and_keeps_order() {
        let t = Instant::now();
        let out = join_all((0..3u64).map(|i| async move {
            tokio::time::sleep(Duration::from_millis(100 * (3 - i))).await;
            i
        }))
        .await;
        assert_eq!(out, vec![0, 1, 2]);
        assert!(
            t.elapsed() < Duration::from_millis(450),
            "{:?}",
            t.elapsed()
        );
    }
}
