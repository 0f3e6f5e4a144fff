//! End-to-end: the router's global view against three real `atoll region` processes on loopback
//! (mutual TLS between them), with the router in this process.
//!
//! - `the_global_endpoints_report_a_stopped_and_a_killed_region_within_their_timeout`: with
//!   every region up, `GET /v1/global/status` (admin token; 401 without) has 3 of 3 regions and
//!   full matrices, and `GET /v1/global/metrics` (open) has every region's samples with a
//!   `region` label and parses (`promtool check metrics`). A region frozen with SIGSTOP (it
//!   accepts connections and never answers) is reported as not reporting, `atoll_region_up 0`,
//!   and neither endpoint takes longer than the timeout plus a margin; a region killed with
//!   SIGKILL is reported as down with its error while the other two are complete.
//! - `the_dashboard_shows_the_cluster_in_headless_chromium_and_turns_a_killed_region_red`: the
//!   dashboard, driven over the DevTools protocol (`--remote-debugging-pipe`, no extra crate),
//!   loads with the token in its URL fragment, shows three regions, fills its matrices and
//!   charts, and turns a region killed while it is open red within its refresh period; a
//!   screenshot is written to `<target>/tmp/dashboard-global-view.png`. Chromium: Debian's
//!   `chromium` (installed by `scripts/test-all.sh`) or `ATOLL_CHROMIUM`; the test fails when
//!   there is none.
//!
//! The two tests take turns (a lock): each runs three regions, on a 2-core machine.

use crate::common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use atoll_config::render::RouterToml;
use atoll_router::runtime::{Router, RouterHandle, RouterOptions};
use atoll_testkit::{Cluster, ClusterOptions, TestDir, test_dir, wait_until_async};
use common::{BIN, ok};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOKEN: &str = "global-view-token";
const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
/// The global view's per-region timeout in these tests.
const TIMEOUT: Duration = Duration::from_millis(1000);
/// What a fan-out may take beyond the timeout (scheduling on a loaded machine).
const MARGIN: Duration = Duration::from_millis(1500);
/// Upper bound of every wait.
const DEADLINE: Duration = Duration::from_secs(30);
/// The dashboard polls every 2 s; a poll may have begun just before the kill, and the status is
/// cached for 1 s: the killed region must be red within two polls, the timeout and the cache.
const RED_WITHIN: Duration = Duration::from_secs(6);

static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The router section: checks every 500 ms, two failures mark a region down, one success up.
fn router() -> String {
    RouterToml::new()
        .zone("atoll.test")
        .health("interval_ms", 500)
        .health("timeout_ms", 400)
        .health("failure_threshold", 2)
        .health("recovery_threshold", 1)
        .name("api", "latency", &[])
        .render()
}

struct Setup {
    cluster: Cluster,
    router: RouterHandle,
    admin: String,
    _dir: TestDir,
}

async fn setup(name: &str) -> Result<Setup> {
    let cluster = Cluster::start(
        BIN,
        3,
        ClusterOptions::new(name)
            .heartbeat_interval_ms(200)
            .extra_config(&router()),
    )?;
    let dir = test_dir(&format!("{name}-router"))?;
    // A drill outcome, as `atoll drill run` keeps it, for the status to show.
    let drills = dir.join("drills");
    std::fs::create_dir_all(&drills)?;
    std::fs::write(
        drills.join("drill-outcomes.json"),
        serde_json::to_vec(&json!({"version": 1, "scenarios": {"region-outage": {
            "file": "drills/region-outage.toml", "last_run_unix_ms": 1_700_000_000_000u64,
            "last_passed": true, "last_pass_unix_ms": 1_700_000_000_000u64,
            "lost_writes": 0, "zombie_writes": 0, "guard_tripped": null}}}))?,
    )?;
    let config = atoll_config::Config::load(cluster.config_path()).map_err(|e| anyhow!("{e}"))?;
    let mut opts = RouterOptions::new(
        Arc::new(config),
        "127.0.0.1:0".parse()?,
        dir.join("state"),
        TOKEN.into(),
    );
    opts.global.timeout = TIMEOUT;
    opts.global.drill_state_dir = Some(drills);
    let router = Router::start(opts).await.map_err(|e| anyhow!("{e}"))?;
    let admin = format!("http://{}", router.admin_addr());
    Ok(Setup {
        cluster,
        router,
        admin,
        _dir: dir,
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a client")
}

/// The global status, and how long it took.
async fn global_status(admin: &str) -> Result<(Value, Duration)> {
    let t = Instant::now();
    let r = http()
        .get(format!("{admin}/v1/global/status"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    ensure!(r.status() == 200, "status: HTTP {}", r.status());
    let v: Value = r.json().await?;
    Ok((v, t.elapsed()))
}

/// Waits until the global status satisfies `cond`.
async fn wait_global(admin: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Result<()> {
    wait_until_async(DEADLINE, what, || async {
        global_status(admin).await.is_ok_and(|(d, _)| cond(&d))
    })
    .await
}

/// The global status once the cached one has expired: a fresh fan-out, and how long it took.
async fn fresh_global_status(admin: &str) -> Result<(Value, Duration)> {
    tokio::time::sleep(atoll_router::global::CACHE_FOR).await;
    global_status(admin).await
}

async fn global_metrics(admin: &str) -> Result<(String, Duration)> {
    let t = Instant::now();
    let r = http()
        .get(format!("{admin}/v1/global/metrics"))
        .send()
        .await?;
    ensure!(r.status() == 200, "metrics: HTTP {}", r.status());
    ensure!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "content type: {:?}",
        r.headers().get("content-type")
    );
    Ok((r.text().await?, t.elapsed()))
}

fn region<'a>(doc: &'a Value, name: &str) -> Result<&'a Value> {
    doc["regions"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["region"] == name))
        .ok_or_else(|| anyhow!("{name} missing from the global status: {doc}"))
}

/// Every region `up`, with a role, a router view and both peers, and every off-diagonal cell of
/// the reachability, lag and RTT matrices filled.
fn complete(doc: &Value, names: &[&str]) -> bool {
    let all_up = names.iter().all(|n| {
        region(doc, n).is_ok_and(|r| {
            r["up"] == true
                && r["role"].is_string()
                && r["peers"].as_array().map(Vec::len) == Some(names.len() - 1)
        })
    });
    let m = &doc["matrices"];
    let filled = |field: &str| {
        (0..names.len()).all(|i| (0..names.len()).all(|j| i == j || !m[field][i][j].is_null()))
    };
    let reach_up = (0..names.len())
        .all(|i| (0..names.len()).all(|j| i == j || m["reachability"][i][j] == "up"));
    all_up && filled("lag_seconds") && filled("rtt_ms") && reach_up
}

fn up_value(metrics: &str, name: &str) -> Option<String> {
    let prefix = format!("atoll_region_up{{region=\"{name}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

/// `promtool check metrics` on `text`: no parse error (exit 1). Lint findings (exit 3) are
/// printed; they are about names, which the exposition does not change.
fn promtool_parses(text: &str) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), text)?;
    ensure!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "no promtool: install Debian's `prometheus` (scripts/test-all.sh does)"
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "promtool check metrics < \"$0\""])
        .arg(file.path());
    let out = atoll_testkit::run_with_timeout(cmd, DEADLINE)?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.code() != Some(1) && !said.contains("parsing error"),
        "promtool check metrics: {:?}\n{said}",
        out.status
    );
    if !said.trim().is_empty() {
        println!("promtool check metrics (lint):\n{said}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_endpoints_report_a_stopped_and_a_killed_region_within_their_timeout() {
    let _turn = TURNS.lock().await;
    let mut s = ok(setup("global-endpoints").await);
    let r = endpoints_scenario(&mut s).await;
    if r.is_err() {
        // A frozen region would outlive the test otherwise.
        let _ = s.cluster.region(EU).signal(libc::SIGCONT);
    }
    ok(r);
    s.router.shutdown().await;
}

async fn endpoints_scenario(s: &mut Setup) -> Result<()> {
    let names = [US, EU, AP];
    let admin = s.admin.clone();
    // Everyone reporting, matrices full.
    wait_global(&admin, "3 of 3 regions reporting with full matrices", |d| {
        complete(d, &names)
    })
    .await?;
    let (doc, _) = global_status(&admin).await?;
    ensure!(doc["summary"] == "3 of 3 regions reporting", "{doc}");
    ensure!(doc["complete"] == true && doc["regions_reporting"] == 3);
    ensure!(
        doc["drills"]["scenarios"][0]["scenario"] == "region-outage"
            && doc["drills"]["scenarios"][0]["passed"] == true,
        "drills: {}",
        doc["drills"]
    );
    for n in names {
        let r = region(&doc, n)?;
        ensure!(r["router"]["health"].is_string(), "router view of {n}: {r}");
    }

    // The status needs the admin token; the metrics do not.
    let unauth = http()
        .get(format!("{admin}/v1/global/status"))
        .send()
        .await?;
    ensure!(
        unauth.status() == 401,
        "without a token: {}",
        unauth.status()
    );
    let wrong = http()
        .get(format!("{admin}/v1/global/status"))
        .bearer_auth("nope")
        .send()
        .await?;
    ensure!(wrong.status() == 401, "wrong token: {}", wrong.status());

    let (metrics, _) = global_metrics(&admin).await?;
    for n in names {
        ensure!(
            up_value(&metrics, n).as_deref() == Some("1"),
            "{n} up:\n{metrics}"
        );
        ensure!(
            metrics.contains(&format!("atoll_http_requests_total{{region=\"{n}\",")),
            "{n}'s request counter with its region label"
        );
        ensure!(
            metrics.contains(&format!("atoll_http_open_connections{{region=\"{n}\"}}")),
            "{n}'s open connections"
        );
    }
    ensure!(
        metrics
            .matches("# TYPE atoll_http_requests_total counter")
            .count()
            == 1,
        "one TYPE line per family"
    );
    ensure!(
        !metrics.contains("# EOF"),
        "no OpenMetrics EOF in text 0.0.4"
    );
    // Every region sample carries a region label (the router's own families are atoll_router_*
    // and atoll_dns_*: their per-region series carry it already).
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        if !l.starts_with("atoll_router_") && !l.starts_with("atoll_dns_") {
            ensure!(l.contains("{region=\""), "no region label: {l}");
        }
    }
    promtool_parses(&metrics)?;

    // Freeze eu-west-1: its listener still accepts connections, nothing answers.
    s.cluster.region(EU).signal(libc::SIGSTOP)?;
    wait_global(&admin, "eu-west-1 reported as not reporting", |d| {
        region(d, EU).is_ok_and(|r| r["up"] == false)
    })
    .await?;
    // A fresh fan-out (past the 1 s cache) is bounded by the timeout.
    let (doc, took) = fresh_global_status(&admin).await?;
    ensure!(
        took <= TIMEOUT + MARGIN,
        "the status took {took:?} with a frozen region (timeout {TIMEOUT:?})"
    );
    let eu = region(&doc, EU)?;
    ensure!(
        eu["up"] == false
            && eu["error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out")),
        "frozen eu-west-1: {eu}"
    );
    ensure!(
        doc["summary"] == "2 of 3 regions reporting",
        "{}",
        doc["summary"]
    );
    ensure!(doc["complete"] == false);
    for n in [US, AP] {
        let r = region(&doc, n)?;
        ensure!(r["up"] == true && r["role"].is_string(), "{n}: {r}");
    }
    let eu_row = &doc["matrices"]["reachability"][1];
    ensure!(
        eu_row
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_null)),
        "a silent region's row is unknown, not guessed: {eu_row}"
    );
    tokio::time::sleep(atoll_router::global::CACHE_FOR).await;
    let (metrics, took) = global_metrics(&admin).await?;
    ensure!(
        took <= TIMEOUT + MARGIN,
        "the metrics took {took:?} with a frozen region"
    );
    ensure!(up_value(&metrics, EU).as_deref() == Some("0"), "{metrics}");
    ensure!(up_value(&metrics, US).as_deref() == Some("1"));
    promtool_parses(&metrics)?;
    s.cluster.region(EU).signal(libc::SIGCONT)?;
    wait_global(&admin, "3 of 3 again after SIGCONT", |d| {
        d["regions_reporting"] == 3
    })
    .await?;

    // Kill ap-southeast-1: reported as down with why; the other two complete.
    s.cluster.kill9(AP)?;
    wait_global(&admin, "ap-southeast-1 reported down", |d| {
        region(d, AP).is_ok_and(|r| r["up"] == false)
    })
    .await?;
    let (doc, took) = fresh_global_status(&admin).await?;
    ensure!(took <= TIMEOUT + MARGIN, "took {took:?}");
    let ap = region(&doc, AP)?;
    ensure!(
        ap["up"] == false && ap["error"].as_str().is_some_and(|e| !e.is_empty()),
        "killed ap-southeast-1: {ap}"
    );
    ensure!(
        doc["regions"].as_array().map(Vec::len) == Some(3),
        "never left out"
    );
    for n in [US, EU] {
        let r = region(&doc, n)?;
        ensure!(
            r["up"] == true
                && r["role"].is_string()
                && r["peers"].as_array().map(Vec::len) == Some(2),
            "{n} complete: {r}"
        );
    }
    let (metrics, _) = global_metrics(&admin).await?;
    ensure!(up_value(&metrics, AP).as_deref() == Some("0"), "{metrics}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium over the DevTools protocol on a pipe (fd 3: commands in, fd 4: events out,
// messages separated by NUL), so no WebSocket crate is needed.

struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    ensure!(rc == 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

impl Browser {
    fn launch(profile: &Path) -> Result<Browser> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (cmd_read, cmd_write) = pipe()?;
        let (ev_read, ev_write) = pipe()?;
        let (r, w) = (cmd_read.as_raw_fd(), ev_write.as_raw_fd());
        let mut cmd = Command::new(atoll_testkit::chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1400,1700",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (dup, dup2) are made.
        unsafe {
            cmd.pre_exec(move || {
                // Move both out of the way of 3 and 4 first, then onto them (dup2 clears
                // close-on-exec on the copies).
                let r2 = libc::fcntl(r, libc::F_DUPFD_CLOEXEC, 10);
                let w2 = libc::fcntl(w, libc::F_DUPFD_CLOEXEC, 10);
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting chromium")?;
        drop(cmd_read);
        drop(ev_write);
        let (tx, rx) = mpsc::channel();
        let mut from = std::fs::File::from(ev_read);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match from.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(pos) = buf.iter().position(|b| *b == 0) {
                    let msg: Vec<u8> = buf.drain(..=pos).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1])
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Browser {
            child,
            to: std::fs::File::from(cmd_write),
            from: rx,
            next_id: 0,
            session: None,
        })
    }

    /// Sends a command (to the attached page, once there is one) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.to.write_all(&bytes)?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .map_err(|_| anyhow!("no answer to {method} within {DEADLINE:?}"))?;
            if v["id"] == id {
                if !v["error"].is_null() {
                    bail!("{method}: {}", v["error"]);
                }
                return Ok(v["result"].clone());
            }
        }
    }

    fn open(&mut self, url: &str) -> Result<()> {
        let targets = self.call("Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no page target: {targets}"))?;
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        )?;
        self.session = attached["sessionId"].as_str().map(str::to_string);
        ensure!(self.session.is_some(), "not attached: {attached}");
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1700, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        self.call("Page.navigate", json!({"url": url}))?;
        Ok(())
    }

    fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )?;
        Ok(r["result"]["value"].clone())
    }

    fn screenshot(&mut self, path: &Path) -> Result<()> {
        use base64::Engine as _;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = r["data"].as_str().context("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png)?;
        Ok(())
    }
}

/// What the page shows, as the test reads it.
const PAGE_STATE: &str = r#"JSON.stringify({
  polls: Number(document.body.dataset.polls),
  status: document.body.dataset.status,
  summary: document.getElementById('summary').textContent,
  regions: [...document.querySelectorAll('#regions .region')].map(e => ({
    name: e.dataset.region, up: e.dataset.up, bg: getComputedStyle(e).backgroundColor })),
  reach: [...document.querySelectorAll('#m-reach td[data-row]')].map(t => t.dataset.state),
  lag: [...document.querySelectorAll('#m-lag td[data-row]')].map(t => t.dataset.state),
  downHeaders: [...document.querySelectorAll('#m-reach th.down')].map(t => t.textContent),
  lines: document.querySelectorAll('svg.chart polyline').length,
  panels: [...document.querySelectorAll('[data-grafana]')].length,
})"#;

/// [`page_state`] from a blocking thread (the browser's pipe reads block), handing the browser
/// back; `Null` when the page cannot say yet.
async fn page_state_off_runtime<T: Send + 'static>(
    mut b: (Browser, T),
) -> Result<((Browser, T), Value)> {
    Ok(tokio::task::spawn_blocking(move || {
        let st = page_state(&mut b.0).unwrap_or(Value::Null);
        (b, st)
    })
    .await?)
}

fn page_state(b: &mut Browser) -> Result<Value> {
    let v = b.eval(PAGE_STATE)?;
    let text = v.as_str().ok_or_else(|| anyhow!("page state: {v}"))?;
    Ok(serde_json::from_str(text)?)
}

/// `rgb(r, g, b)` that is clearly red: red well above green and blue.
fn reddish(css: &str) -> bool {
    let nums: Vec<u32> = css
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    matches!(nums.as_slice(), [r, g, b, ..] if *r > g + 40 && *r > b + 40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_in_headless_chromium_and_turns_a_killed_region_red() {
    let _turn = TURNS.lock().await;
    // Fails here, before starting anything, when there is no Chromium.
    let _ = atoll_testkit::chromium();
    let mut s = ok(setup("global-dashboard").await);
    ok(dashboard_scenario(&mut s).await);
    s.router.shutdown().await;
}

async fn dashboard_scenario(s: &mut Setup) -> Result<()> {
    let profile = test_dir("global-dashboard-profile")?;
    let url = format!("{}/dashboard#token={TOKEN}", s.admin);
    // The browser is driven from a blocking thread: its pipe reads block.
    let mut b = tokio::task::spawn_blocking(move || -> Result<(Browser, TestDir)> {
        let mut b = Browser::launch(profile.path())?;
        b.open(&url)?;
        Ok((b, profile))
    })
    .await??;
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-global-view.png");

    // Loaded: three regions, all up; matrices full; charts drawn (two polls give rates).
    let started = Instant::now();
    let last = loop {
        let (b2, state) = page_state_off_runtime(b).await?;
        b = b2;
        let regions = state["regions"].as_array().cloned().unwrap_or_default();
        let reach = state["reach"].as_array().cloned().unwrap_or_default();
        let lag = state["lag"].as_array().cloned().unwrap_or_default();
        let ready = state["status"] == "ok"
            && regions.len() == 3
            && regions.iter().all(|r| r["up"] == "true")
            && reach.iter().filter(|c| *c == "up").count() == 6
            && lag
                .iter()
                .filter(|c| *c != "unknown" && *c != "self")
                .count()
                == 6
            && state["lines"].as_u64().unwrap_or(0) >= 3
            && state["polls"].as_u64().unwrap_or(0) >= 3;
        if ready {
            break state;
        }
        ensure!(
            started.elapsed() < DEADLINE,
            "the dashboard did not show the cluster within {DEADLINE:?}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(last["summary"] == "3 of 3 regions reporting", "{last}");
    let names: Vec<&str> = last["regions"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    ensure!(names == [US, EU, AP], "regions shown: {names:?}");
    ensure!(
        last["regions"]
            .as_array()
            .is_some_and(|a| a.iter().all(|r| !reddish(r["bg"].as_str().unwrap_or("")))),
        "no region is red while all are up: {last}"
    );

    // Kill a region while the page is open: it turns red within the refresh period.
    s.cluster.kill9(AP)?;
    let killed = Instant::now();
    loop {
        let (b2, state) = page_state_off_runtime(b).await?;
        b = b2;
        let ap = state["regions"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == AP))
            .cloned()
            .unwrap_or(Value::Null);
        if ap["up"] == "false" && reddish(ap["bg"].as_str().unwrap_or("")) {
            ensure!(
                state["summary"] == "2 of 3 regions reporting",
                "summary: {state}"
            );
            ensure!(
                state["downHeaders"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|h| h == AP)),
                "the matrices mark it: {state}"
            );
            ensure!(
                state["regions"].as_array().is_some_and(|a| a
                    .iter()
                    .filter(|r| r["name"] != AP)
                    .all(|r| r["up"] == "true" && !reddish(r["bg"].as_str().unwrap_or("")))),
                "the others stay up: {state}"
            );
            break;
        }
        ensure!(
            killed.elapsed() < RED_WITHIN,
            "the killed region was not red within {RED_WITHIN:?}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let red_after = killed.elapsed();
    let shot2 = shot.clone();
    let (_b, r) = tokio::task::spawn_blocking(move || {
        let r = b.0.screenshot(&shot2);
        (b, r)
    })
    .await?;
    r?;
    println!(
        "the killed region turned red after {red_after:?}; screenshot: {}",
        shot.display()
    );
    Ok(())
}
