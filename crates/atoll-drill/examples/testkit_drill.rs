//! Runs a scenario file against a fresh three-region atoll-testkit cluster (real `atoll region`
//! processes on loopback, every inter-region connection through an `atoll link` mesh at 20 ms,
//! an `atoll router` in front), the way `atoll drill run --demo` runs it against `atoll demo`.
//! Used to measure the shipped library (`docs/drills.md`).
//!
//! ```sh
//! cargo build --bin atoll
//! cargo run -p atoll-drill --example testkit_drill -- drills/region-isolation.toml [active-standby] [report.html]
//! ```

use anyhow::{Context, Result, anyhow, bail};
use atoll_drill::target::RegionControl;
use atoll_drill::{DrillError, RunOptions, Target};
use atoll_testkit::{Cluster, ClusterOptions, atoll_bin};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "testkit-drill-admin-token";

const EXTRA: &str = "[router]\nzone = \"atoll.test\"\nttl_secs = 30\n\n\
[router.health]\ninterval_ms = 1000\nfailure_threshold = 3\nrecovery_threshold = 2\n\n\
[[router.names]]\nname = \"api\"\npolicy = \"latency\"\n\n\
[[keyspaces]]\nname = \"inventory\"\npolicy = \"lww\"\non_minority = \"read-only\"\n";

struct Kit(Arc<Mutex<Cluster>>);

impl Kit {
    async fn with(
        &self,
        what: &'static str,
        region: &str,
        f: fn(&mut Cluster, &str) -> Result<()>,
    ) -> atoll_drill::Result<()> {
        let c = self.0.clone();
        let r = region.to_string();
        tokio::task::spawn_blocking(move || {
            let mut g = c.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g, &r)
        })
        .await
        .map_err(|e| DrillError::Control {
            what: what.into(),
            message: e.to_string(),
            retryable: false,
        })?
        .map_err(|e| DrillError::Control {
            what: what.into(),
            message: format!("{e:#}"),
            retryable: false,
        })
    }
}

#[async_trait::async_trait]
impl RegionControl for Kit {
    async fn kill(&self, region: &str) -> atoll_drill::Result<()> {
        self.with("kill", region, |c, r| c.kill9(r).map(|_| ()))
            .await
    }
    async fn stop(&self, region: &str) -> atoll_drill::Result<()> {
        self.with("stop", region, |c, r| c.terminate(r).map(|_| ()))
            .await
    }
    async fn restart(&self, region: &str) -> atoll_drill::Result<()> {
        self.with("restart", region, |c, r| c.restart(r)).await
    }
    fn describe(&self) -> String {
        "atoll-testkit".into()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = args
        .first()
        .ok_or_else(|| anyhow!("usage: testkit_drill SCENARIO [MODEL] [REPORT.html]"))?;
    let model = args.get(1).map_or("active-active", String::as_str);
    let sc = atoll_drill::scenario::load(std::path::Path::new(file)).map_err(|e| anyhow!("{e}"))?;
    let mut extra = EXTRA.to_string();
    if model == "active-active" {
        extra.push_str("\n[fencing]\nquorum = true\n");
    }
    let cluster = Cluster::start(
        atoll_bin(),
        3,
        ClusterOptions::new("testkit-drill")
            .model(model)
            .with_links(20.0)
            .link_control()
            .extra_config(&extra)
            .env("ATOLL_ADMIN_TOKEN", TOKEN),
    )?;
    let config = cluster.config_path().to_path_buf();
    let dir = cluster.dir().to_path_buf();
    let link_control = cluster.link_control_url();
    let cluster = Arc::new(Mutex::new(cluster));
    let mut cmd = std::process::Command::new(atoll_bin());
    cmd.arg("router")
        .arg("--config")
        .arg(&config)
        .args(["--proxy", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.join("router-state"))
        .env("ATOLL_ADMIN_TOKEN", TOKEN);
    let mut router = atoll_testkit::Service::start("router", cmd, &dir.join("router.log"))?;
    let (mut proxy, mut admin) = (None, None);
    while proxy.is_none() || admin.is_none() {
        let line = router.wait_line(Duration::from_secs(30), |l| l.starts_with("atoll router "))?;
        let addr = |p: &str| line.strip_prefix(p).map(|a| format!("http://{}", a.trim()));
        proxy = proxy.or(addr("atoll router proxy on http://"));
        admin = admin.or(addr("atoll router admin on http://"));
    }
    let proxy = proxy.context("proxy")?;
    let probe = atoll_testkit::Client::new(&proxy);
    atoll_testkit::wait_until_async(Duration::from_secs(30), "the router serves", || {
        let probe = probe.clone();
        async move {
            probe
                .kv_get_raw("sessions", "probe")
                .await
                .is_ok_and(|r| r.status == 404)
        }
    })
    .await?;
    let cfg = atoll_config::Config::load(&config).map_err(|e| anyhow!("{e}"))?;
    let mut t = Target::from_config(cfg);
    t.router = Some(proxy);
    t.router_admin = admin;
    t.link_control = link_control;
    t.admin_token = Some(TOKEN.into());
    t.control = Arc::new(Kit(cluster.clone()));
    let r = atoll_drill::run(&sc, t, RunOptions::default())
        .await
        .map_err(|e| anyhow!("{e}"))?;
    print!("{}", r.summary());
    if let Some(out) = args.get(2) {
        std::fs::write(out, r.to_html())?;
        std::fs::write(format!("{out}.json"), r.to_json())?;
    }
    drop(router);
    if !r.passed {
        bail!("drill {} failed", r.scenario);
    }
    Ok(())
}
