//! Runs a scenario file against a fresh three-region atoll-testkit cluster (real `atoll region`
//! processes on loopback, every inter-region connection through an `atoll link` mesh at 20 ms,
//! an `atoll router` in front), the way `atoll drill run --demo` runs it against `atoll demo`.
//! Used to measure the shipped library (`docs/drills.md`).
//!
//! ```sh
//! cargo build --bin atoll
//! cargo run -p atoll-drill --example testkit_drill -- drills/region-isolation.toml [active-standby] [report.html]
//! ```

use anyhow::{Result, anyhow, bail};
use atoll_config::render::{KeyspaceToml, RouterToml};
use atoll_config::{Model, Policy};
use atoll_drill::{RunOptions, Target};
use atoll_testkit::{Cluster, ClusterOptions, RouterService, atoll_bin};
use kit::Kit;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "testkit-drill-admin-token";

#[path = "../tests/common/kit.rs"]
mod kit;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = args
        .first()
        .ok_or_else(|| anyhow!("usage: testkit_drill SCENARIO [MODEL] [REPORT.html]"))?;
    let model = args.get(1).map_or("active-active", String::as_str);
    let model = Model::parse(model).ok_or_else(|| anyhow!("unknown model {model}"))?;
    let sc = atoll_drill::scenario::load(std::path::Path::new(file)).map_err(|e| anyhow!("{e}"))?;
    let router = RouterToml::new()
        .zone("atoll.test")
        .ttl_secs(30)
        .health("interval_ms", 1000)
        .health("failure_threshold", 3)
        .health("recovery_threshold", 2)
        .name("api", "latency", &[]);
    let mut opts = ClusterOptions::new("testkit-drill")
        .model(model)
        .with_links(20.0)
        .link_control()
        .extra_config(&router.render())
        .keyspace(KeyspaceToml::new("inventory", Policy::Lww).line("on_minority = \"read-only\""))
        .env("ATOLL_ADMIN_TOKEN", TOKEN);
    if model == Model::ActiveActive {
        opts = opts.extra_config("[fencing]\nquorum = true");
    }
    let cluster = Cluster::start(atoll_bin(), 3, opts)?;
    let config = cluster.config_path().to_path_buf();
    let dir = cluster.dir().to_path_buf();
    let link_control = cluster.link_control_url();
    let cluster = Arc::new(Mutex::new(cluster));
    let router = RouterService::start(atoll_bin(), &config, &dir, TOKEN, Duration::from_secs(30))?;
    let proxy = format!("http://{}", router.proxy);
    let admin = Some(format!("http://{}", router.admin));
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
