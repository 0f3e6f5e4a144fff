//! Active health checks: one task per region checks `http://<region api><health.path>` every
//! `health.interval_ms` with `health.timeout_ms`, and feeds the result (and the check's round
//! trip) to [`RouterState::observe_probe`](crate::state::RouterState::observe_probe). Every change
//! of state is logged (warn when a region goes unhealthy, with the reason; info when it
//! recovers) and shows in the metrics. Also the drain-expiry tick, which lifts timed drains.
//!
//! A check passes when the response has `health.expect_status` (and contains
//! `health.expect_body`, if set). A JSON body whose `status` is `draining` or `fenced` means the
//! region says so itself, whatever the HTTP status: it is taken out at once
//! ([`Probe::Draining`] / [`Probe::Fenced`]) instead of after `failure_threshold` checks. A body
//! whose `status` (or `role`) is `passive` takes it out at once too, as [`Probe::Passive`]: it
//! is up, but serves no client traffic until promoted, and is shown as passive, not failed.
//!
//! Every answer is also read for what the region says about the write lease ([`lease_report`]:
//! `role`, `epoch`, `primary`; missing fields mean `active`, epoch 0, no primary), which the state
//! keeps per region: the proxy sends writes to the healthy `primary` first and a failover name
//! answers it. A change of role is logged at info level; two healthy regions claiming the lease
//! at once is logged and counted (see [`crate::metrics::RouterMetrics::record_claims`]).
//!
//! Nothing here assumes short intervals: a check runs at most once per interval (late ticks are
//! delayed, never bunched up), and a check never takes longer than its timeout.

use crate::admin::StateStore;
use crate::health::{HealthState, Lease, Probe, Role};
use crate::runtime::RouterCtx;
use crate::state::RegionEntry;
use atoll_config::router::RouterHealthConfig;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Largest health-check body read.
const MAX_HEALTH_BODY: usize = 64 << 10;

/// The outcome of one check, with the round trip and what the answer said about the write lease
/// when the region answered at all.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    pub probe: Probe,
    pub rtt_ms: Option<f64>,
    /// `None` when the region did not answer (the last report stands).
    pub lease: Option<Lease>,
}

impl CheckResult {
    /// A check the region did not answer.
    pub fn failed(why: String) -> Self {
        Self {
            probe: Probe::Failed(why),
            rtt_ms: None,
            lease: None,
        }
    }
}

/// A boxed check future.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = CheckResult> + Send + 'a>>;

/// Performs one active check of a region (HTTP in production, scripted in tests).
pub trait Checker: Send + Sync + 'static {
    fn check<'a>(&'a self, region: &'a RegionEntry) -> CheckFuture<'a>;
}

/// Judges a health-check response.
pub fn evaluate(status: u16, body: &[u8], expect_status: u16, expect_body: Option<&str>) -> Probe {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        match v.get("status").and_then(|s| s.as_str()) {
            Some("draining") => return Probe::Draining,
            Some("fenced") => return Probe::Fenced,
            Some("passive") => return Probe::Passive,
            _ => {}
        }
        if v.get("role").and_then(|s| s.as_str()) == Some("passive") {
            return Probe::Passive;
        }
    }
    if status != expect_status {
        return Probe::Failed(format!("status {status} (expected {expect_status})"));
    }
    if let Some(want) = expect_body {
        let text = String::from_utf8_lossy(body);
        if !text.contains(want) {
            return Probe::Failed(format!("body does not contain `{want}`"));
        }
    }
    Probe::Ok
}

/// What a health-check answer says about the write lease: `role`, `epoch` and `primary` of a
/// JSON body. A missing or unknown `role` is `active`, a missing `epoch` 0, a missing, `null` or
/// malformed `primary` none; a body that is not JSON says nothing ([`Lease::default`]).
pub fn lease_report(body: &[u8]) -> Lease {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Lease::default();
    };
    let role = v
        .get("role")
        .filter(|r| r.is_string())
        .and_then(|r| serde_json::from_value::<Role>(r.clone()).ok())
        .unwrap_or(Role::Active);
    Lease {
        role,
        epoch: v.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0),
        primary: v
            .get("primary")
            .and_then(|p| p.as_str())
            .and_then(|p| atoll_core::RegionId::new(p).ok())
            .map(|p| p.to_string()),
    }
}

/// Checks regions over HTTP with pooled keep-alive connections.
pub struct HttpChecker {
    client: Client<HttpConnector, Empty<Bytes>>,
    path: String,
    expect_status: u16,
    expect_body: Option<String>,
    timeout: Duration,
}

impl HttpChecker {
    pub fn new(cfg: &RouterHealthConfig) -> Self {
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        // Keep the connection between checks only if checks come often; a connection idle for
        // many seconds is likely closed by the other end and would only cost a failed reuse.
        let idle = Duration::from_millis(cfg.interval_ms.saturating_mul(2).clamp(1000, 60_000));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(1)
            .build(connector);
        Self {
            client,
            path: cfg.path.clone(),
            expect_status: cfg.expect_status,
            expect_body: cfg.expect_body.clone(),
            timeout,
        }
    }

    async fn run(&self, region: &RegionEntry) -> CheckResult {
        let uri = match format!("http://{}{}", region.api, self.path).parse::<hyper::Uri>() {
            Ok(u) => u,
            Err(e) => return CheckResult::failed(format!("bad health-check URL: {e}")),
        };
        let start = Instant::now();
        let fut = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| describe_client_error(&e))?;
            let rtt_ms = start.elapsed().as_secs_f64() * 1000.0;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_HEALTH_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body, rtt_ms))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => {
                CheckResult::failed(format!("timed out after {} ms", self.timeout.as_millis()))
            }
            Ok(Err(why)) => CheckResult::failed(why),
            Ok(Ok((status, body, rtt))) => CheckResult {
                probe: evaluate(
                    status,
                    &body,
                    self.expect_status,
                    self.expect_body.as_deref(),
                ),
                rtt_ms: Some(rtt),
                lease: Some(lease_report(&body)),
            },
        }
    }
}

/// A client error in a few words, with its innermost cause (`connection refused`...).
pub(crate) fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    format!("{what}: {cause}")
}

impl Checker for HttpChecker {
    fn check<'a>(&'a self, region: &'a RegionEntry) -> CheckFuture<'a> {
        Box::pin(self.run(region))
    }
}

/// Runs the checks of every region.
pub struct Prober {
    ctx: RouterCtx,
    checker: Arc<dyn Checker>,
    interval: Duration,
    timeout: Duration,
}

impl Prober {
    pub fn new(ctx: RouterCtx, checker: Arc<dyn Checker>) -> Self {
        let h = &ctx.state.config().health;
        let interval = Duration::from_millis(h.interval_ms.max(1));
        let timeout = Duration::from_millis(h.timeout_ms.max(1));
        Self {
            ctx,
            checker,
            interval,
            timeout,
        }
    }

    /// Time between two checks of one region.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Longest a check may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks `region` once and takes the result in (logs, metrics).
    pub async fn check_once(&self, region: &RegionEntry) {
        let start = Instant::now();
        // The checker applies the timeout itself; this bounds a checker that does not.
        let limit = self.timeout + Duration::from_millis(100);
        let res = match tokio::time::timeout(limit, self.checker.check(region)).await {
            Ok(r) => r,
            Err(_) => {
                CheckResult::failed(format!("timed out after {} ms", self.timeout.as_millis()))
            }
        };
        let name = region.name.as_str();
        self.ctx.metrics.observe_check(name, start.elapsed());
        let now = self.ctx.now_ms();
        let probe_text = format!("{:?}", res.probe);
        let before = self.ctx.state.lease(&region.name).ok().flatten();
        // A change of role (a region's first answer only when it reports fencing at all).
        if let Some(after) = &res.lease
            && match &before {
                Some(b) => b.role != after.role,
                None => after.role != Role::Active,
            }
        {
            tracing::info!(
                region = name,
                from = before.as_ref().map_or("unknown", |b| b.role.as_str()),
                to = after.role.as_str(),
                epoch = after.epoch,
                primary = after.primary.as_deref().unwrap_or("none"),
                "region reports a new fencing role"
            );
        }
        match self
            .ctx
            .state
            .observe_check(&region.name, res.probe, res.lease, res.rtt_ms, now)
        {
            Ok(Some(t)) => match t.to {
                HealthState::Passive => tracing::info!(
                    region = name,
                    from = t.from.as_str(),
                    reason = %t.reason,
                    "region is passive: no client traffic until it is promoted"
                ),
                HealthState::Unhealthy => tracing::warn!(
                    region = name,
                    from = t.from.as_str(),
                    reason = %t.reason,
                    "region is unhealthy: no new traffic until it recovers"
                ),
                HealthState::Healthy => tracing::info!(
                    region = name,
                    from = t.from.as_str(),
                    reason = %t.reason,
                    "region is healthy: routed to again"
                ),
                HealthState::Unknown => {}
            },
            Ok(None) => tracing::debug!(region = name, probe = %probe_text, "health check"),
            Err(e) => tracing::error!(region = name, "cannot record a health check: {e}"),
        }
        self.ctx.metrics.refresh(&self.ctx.state, now);
    }

    /// Checks every region once, one after the other.
    pub async fn check_all(&self) {
        for r in self.ctx.state.regions().to_vec() {
            self.check_once(&r).await;
        }
    }

    /// Starts one checking task per region; they stop when `shutdown` turns true.
    pub fn spawn(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.ctx
            .state
            .regions()
            .iter()
            .cloned()
            .map(|region| {
                let me = self.clone();
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(me.interval);
                    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = stopped(&mut stop) => break,
                        }
                        tokio::select! {
                            _ = me.check_once(&region) => {}
                            _ = stopped(&mut stop) => break,
                        }
                    }
                })
            })
            .collect()
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Lifts drains whose `for` has run out, every `every`, and persists the change.
pub fn spawn_drain_expiry(
    ctx: RouterCtx,
    store: Arc<StateStore>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => break,
            }
            expire_drains_once(&ctx, &store).await;
        }
    })
}

/// One drain-expiry pass (also used by tests).
pub async fn expire_drains_once(ctx: &RouterCtx, store: &StateStore) {
    let _guard = store.lock().await;
    let now = ctx.now_ms();
    match ctx.state.expire_drains(now) {
        Ok(expired) if !expired.is_empty() => {
            for r in &expired {
                tracing::info!(region = %r, "drain expired: region routed to again");
            }
            match ctx.state.persisted() {
                Ok(p) => {
                    if let Err(e) = store.save(&p).await {
                        tracing::error!(file = %store.path().display(), "cannot persist expired drains: {e}");
                    }
                }
                Err(e) => tracing::error!("cannot read the router state: {e}"),
            }
            ctx.metrics.refresh(&ctx.state, now);
        }
        Ok(_) => {}
        Err(e) => tracing::error!("cannot expire drains: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RouterMetrics;
    use crate::state::RouterState;
    use atoll_config::Config;
    use atoll_core::clock::Clock;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn evaluate_reads_status_and_body() {
        assert_eq!(
            evaluate(200, br#"{"status":"serving"}"#, 200, None),
            Probe::Ok
        );
        assert_eq!(
            evaluate(503, br#"{"status":"draining"}"#, 200, None),
            Probe::Draining
        );
        assert_eq!(
            evaluate(200, br#"{"status":"fenced"}"#, 200, None),
            Probe::Fenced
        );
        assert!(matches!(evaluate(500, b"", 200, None), Probe::Failed(w) if w.contains("500")));
        assert_eq!(evaluate(204, b"", 204, None), Probe::Ok);
        assert!(matches!(
            evaluate(200, b"nope", 200, Some("serving")),
            Probe::Failed(w) if w.contains("serving")
        ));
        assert_eq!(
            evaluate(200, br#"{"status":"serving"}"#, 200, Some("serving")),
            Probe::Ok
        );
    }

    #[test]
    fn evaluate_reads_passive_and_the_lease() {
        // What a region of issue 8 answers (crates/atoll-server/src/api.rs `healthz`).
        let standby = br#"{"status":"serving","region":"eu-west-1","role":"standby","epoch":7,"primary":"us-east-1","replication":{"established":true}}"#;
        assert_eq!(evaluate(200, standby, 200, None), Probe::Ok);
        assert_eq!(
            lease_report(standby),
            Lease {
                role: Role::Standby,
                epoch: 7,
                primary: Some("us-east-1".into())
            }
        );
        let primary = br#"{"status":"serving","region":"us-east-1","role":"primary","epoch":7,"primary":"us-east-1"}"#;
        assert_eq!(evaluate(200, primary, 200, None), Probe::Ok);
        assert_eq!(lease_report(primary).role, Role::Primary);
        // Holds the lease without a window: serving (reads), not primary for writes.
        let fenced = br#"{"status":"serving","region":"us-east-1","role":"fenced","epoch":8,"primary":"us-east-1"}"#;
        assert_eq!(evaluate(200, fenced, 200, None), Probe::Ok);
        assert_eq!(lease_report(fenced).role, Role::Fenced);
        let ro =
            br#"{"status":"serving","region":"a","role":"read-only","epoch":0,"primary":null}"#;
        assert_eq!(
            lease_report(ro),
            Lease {
                role: Role::ReadOnly,
                epoch: 0,
                primary: None
            }
        );
        // Passive: out at once, reported as passive (by its status, or its role alone).
        let passive = br#"{"status":"passive","region":"ap-southeast-1","role":"passive","epoch":7,"primary":"us-east-1"}"#;
        assert_eq!(evaluate(200, passive, 200, None), Probe::Passive);
        assert_eq!(lease_report(passive).role, Role::Passive);
        assert_eq!(
            evaluate(200, br#"{"status":"serving","role":"passive"}"#, 200, None),
            Probe::Passive
        );
        // Draining wins over passive (it is going away either way).
        assert_eq!(
            evaluate(503, br#"{"status":"draining","role":"passive"}"#, 200, None),
            Probe::Draining
        );
        // An older region, or active-active without fencing: active, epoch 0, nothing changes.
        for says_nothing in [
            &br#"{"status":"serving"}"#[..],
            br#"{"status":"serving","role":"warden","epoch":"x","primary":7}"#,
            br#"{"status":"serving","role":5,"primary":"Not A Region!"}"#,
            b"OK",
            b"",
        ] {
            assert_eq!(
                lease_report(says_nothing),
                Lease::default(),
                "{says_nothing:?}"
            );
        }
        assert_eq!(
            evaluate(200, br#"{"status":"serving"}"#, 200, None),
            Probe::Ok
        );
    }

    /// A clock that follows tokio's (paused) time.
    struct TokioClock(tokio::time::Instant);
    impl Clock for TokioClock {
        fn physical_ms(&self) -> u64 {
            1_000_000 + self.0.elapsed().as_millis() as u64
        }
    }

    /// Fails every check after the first `ok_first`, and records when checks happened.
    struct Scripted {
        ok_first: u32,
        n: AtomicU32,
        at: Mutex<Vec<u64>>,
        clock: Arc<TokioClock>,
    }
    impl Checker for Scripted {
        fn check<'a>(&'a self, _r: &'a RegionEntry) -> CheckFuture<'a> {
            Box::pin(async move {
                self.at.lock().unwrap().push(self.clock.physical_ms());
                let i = self.n.fetch_add(1, Ordering::SeqCst);
                let probe = if i < self.ok_first {
                    Probe::Ok
                } else {
                    Probe::Failed("refused".into())
                };
                CheckResult {
                    probe,
                    rtt_ms: Some(1.0),
                    lease: None,
                }
            })
        }
    }

    const TEN_SECONDS: &str = r#"
[cluster]
name = "t"
[[regions]]
name = "us-east-1"
api = "127.0.0.1:7100"
[[keyspaces]]
name = "s"
policy = "lww"
[router]
[router.health]
interval_ms = 10000
timeout_ms = 2000
failure_threshold = 3
recovery_threshold = 2
[[router.names]]
name = "api"
policy = "failover"
"#;

    /// Route 53's usual settings (10 s interval, threshold 3) work as configured: checks
    /// are 10 s apart (not bunched up, not faster), and a dead region is out after 3 of them.
    #[tokio::test(start_paused = true)]
    async fn ten_second_interval_is_honoured() {
        let cfg = Config::parse(TEN_SECONDS, "t.toml").unwrap();
        let clock = Arc::new(TokioClock(tokio::time::Instant::now()));
        let ctx = RouterCtx {
            state: Arc::new(RouterState::new(&cfg).unwrap()),
            metrics: Arc::new(RouterMetrics::new()),
            clock: clock.clone(),
        };
        let checker = Arc::new(Scripted {
            ok_first: 1,
            n: AtomicU32::new(0),
            at: Mutex::new(Vec::new()),
            clock: clock.clone(),
        });
        let prober = Arc::new(Prober::new(ctx.clone(), checker.clone()));
        assert_eq!(prober.interval(), Duration::from_secs(10));
        assert_eq!(prober.timeout(), Duration::from_secs(2));
        let (tx, rx) = watch::channel(false);
        let tasks = prober.spawn(rx);
        let region = ctx.state.regions()[0].name.clone();
        let health = |ctx: &RouterCtx| ctx.state.status(ctx.now_ms()).unwrap().regions[0].health;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(health(&ctx), HealthState::Healthy, "first check at once");
        tokio::time::sleep(Duration::from_secs(25)).await;
        // Checks at 0, 10 and 20 s: two failures of three.
        assert_eq!(health(&ctx), HealthState::Healthy);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            health(&ctx),
            HealthState::Unhealthy,
            "third failure at 30 s"
        );
        let at = checker.at.lock().unwrap().clone();
        let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, vec![10_000, 10_000, 10_000], "checks at {at:?}");
        let _ = region;
        tx.send(true).unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
