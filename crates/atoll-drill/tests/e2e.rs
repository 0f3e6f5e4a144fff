//! End to end: drills against real three-region clusters (atoll-testkit: real `atoll region`
//! processes on loopback). Needs the `atoll` binary (`cargo build --bin atoll`).
//!
//! - the shipped region-outage scenario passes with RPO 0 in active-active;
//! - a broken setup (a region whose writes never replicate) fails the drill, and the lost writes
//!   are listed;
//! - a latency fault larger than the p99 guard trips the guard, aborts the drill early and
//!   removes the fault.

mod common;

use atoll_drill::{RunOptions, Target, scenario};
use atoll_testkit::{Cluster, ClusterOptions, atoll_bin};
use common::kit::Kit;
use std::sync::{Arc, Mutex};

fn target_of(cluster: &Arc<Mutex<Cluster>>) -> Target {
    let g = cluster.lock().unwrap_or_else(|p| p.into_inner());
    let cfg = atoll_config::Config::load(g.config_path()).expect("the testkit's config loads");
    let mut t = Target::from_config(cfg);
    t.link_control = g.link_control_url();
    drop(g);
    t.control = Arc::new(Kit(cluster.clone()));
    t
}

fn shipped(name: &str) -> scenario::Scenario {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../drills")
        .join(name);
    scenario::load(&p).expect("shipped scenario parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outage_scenario_passes_with_rpo_zero_in_active_active() {
    let cluster = Cluster::start(
        atoll_bin(),
        3,
        ClusterOptions::new("drill-outage")
            .with_links(1.0)
            .link_control(),
    )
    .expect("cluster starts");
    let cluster = Arc::new(Mutex::new(cluster));
    // The shipped scenario at its defaults (no router here: its router clients go to regions).
    let sc = shipped("region-outage.toml");
    let report = atoll_drill::run(&sc, target_of(&cluster), RunOptions::default())
        .await
        .expect("drill runs");
    println!("{}", report.summary());
    assert!(report.passed, "{}", report.summary());
    assert!(report.rpo.lost.is_empty());
    assert!(
        report.rpo.checked_writes > 100,
        "{}",
        report.rpo.checked_writes
    );
    assert!(report.events.iter().any(|e| e.text.starts_with("kill -9")));
    // The killed region's own clients saw the outage and recovered.
    assert!(
        report
            .rto
            .iter()
            .any(|r| r.write_ms.is_some_and(|ms| ms > 0)),
        "{:?}",
        report.rto
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_whose_writes_never_replicate_fails_the_drill_and_names_the_lost_writes() {
    // ap-southeast-1 is cut off from both others from the start: what it acknowledges never
    // reaches them.
    let opts = ClusterOptions::new("drill-broken")
        .cut("us-east-1", "ap-southeast-1")
        .cut("eu-west-1", "ap-southeast-1");
    let cluster = Arc::new(Mutex::new(
        Cluster::start(atoll_bin(), 3, opts).expect("cluster starts"),
    ));
    // Short settle: these writes can never arrive, waiting the default 30 s proves nothing more.
    let text = r#"
version = 1
name = "broken-replication"
[load]
rate = 60
clients = 3
via = "regions"
settle = "3s"
[[load.mix]]
keyspace = "sessions"
op = "put"
[[load.mix]]
keyspace = "flags"
op = "add"
[[load.mix]]
keyspace = "ratelimits"
op = "incr"
[[steps]]
action = "observe"
for = "4s"
"#;
    let sc = scenario::parse(text, "broken.toml").expect("parses");
    // Replication with ap-southeast-1 is never established: do not wait for a steady cluster.
    let opts = RunOptions {
        allow_unsteady: true,
        ..RunOptions::default()
    };
    let report = atoll_drill::run(&sc, target_of(&cluster), opts)
        .await
        .expect("drill runs");
    println!("{}", report.summary());
    assert!(!report.passed);
    assert!(!report.rpo.lost.is_empty());
    // Each lost write is listed: acknowledged by the cut-off region, missing elsewhere.
    assert!(
        report
            .rpo
            .lost
            .iter()
            .any(|l| l.acked_by == "ap-southeast-1" && l.region == "us-east-1")
    );
    assert!(
        report
            .rpo
            .lost
            .iter()
            .all(|l| l.acked_by == "ap-southeast-1" || l.region == "ap-southeast-1")
    );
    let e = report
        .expects
        .iter()
        .find(|e| e.text == "lost_writes == 0")
        .expect("default expectation");
    assert!(!e.passed);
    assert!(report.summary().contains("LOST in us-east-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_latency_fault_above_the_p99_guard_trips_it_and_is_removed() {
    let cluster = Arc::new(Mutex::new(
        Cluster::start(atoll_bin(), 3, ClusterOptions::new("drill-guard")).expect("cluster starts"),
    ));
    let mut target = target_of(&cluster);
    // The clients of us-east-1 reach it through a link of their own, which the drill slows by
    // 1200 ms each way: a request and its answer cross it, so about 2.4 s a round trip, above the
    // default p99 guard (2000 ms) and below the load's 5 s request timeout (so it is measured as
    // latency, not as errors). The guard window is 5 s instead of 10 s to keep the test short.
    let us = target
        .region_url("us-east-1")
        .expect("us-east-1")
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let spec = atoll_link::LinkSpec::new(
        "client->us-east-1",
        "127.0.0.1:0".parse().expect("addr"),
        us,
    );
    let links =
        atoll_link::LinkServer::start(vec![spec], Some("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("link server");
    let listen = links.listen_addr("client->us-east-1").expect("listen");
    for r in target.regions.iter_mut() {
        if r.0 == "us-east-1" {
            r.1 = format!("http://{listen}");
        }
    }
    target.link_control = links.control_url();
    let text = r#"
version = 1
name = "guard-trip"
[load]
rate = 60
clients = 3
via = "regions"
settle = "10s"
[[load.mix]]
keyspace = "sessions"
op = "put"
[[load.mix]]
keyspace = "sessions"
op = "get"
[guards]
window = "5s"
[[steps]]
action = "observe"
for = "2s"
[[steps]]
action = "latency"
link = "client->us-east-1"
extra_ms = 1200
for = "60s"
"#;
    let sc = scenario::parse(text, "guard.toml").expect("parses");
    let started = std::time::Instant::now();
    let report = atoll_drill::run(&sc, target, RunOptions::default())
        .await
        .expect("drill runs");
    println!("{}", report.summary());
    let why = report.guard_tripped.clone().expect("the p99 guard tripped");
    assert!(why.contains("us-east-1") && why.contains("p99"), "{why}");
    assert!(!report.passed);
    // Aborted long before the fault's 60 s, and the fault is gone.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );
    let left: usize = links.status().iter().map(|l| l.faults.len()).sum();
    assert_eq!(left, 0, "the drill left a fault behind");
    assert!(report.events.iter().any(|e| e.kind == "abort"));
    assert!(report.rpo.lost.is_empty(), "{:?}", report.rpo.lost);
    links.shutdown().await;
}

const ROUTER_CONFIG: &str = "[router]\nzone = \"atoll.test\"\nttl_secs = 30\n\n\
[router.health]\ninterval_ms = 1000\nfailure_threshold = 3\nrecovery_threshold = 2\n\n\
[[router.names]]\nname = \"api\"\npolicy = \"latency\"\n";

const ADMIN_TOKEN: &str = "drill-e2e-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_drain_scenario_passes_through_a_real_router() {
    let cluster = Cluster::start(
        atoll_bin(),
        3,
        ClusterOptions::new("drill-drain").extra_config(ROUTER_CONFIG),
    )
    .expect("cluster starts");
    let config = cluster.config_path().to_path_buf();
    let dir = cluster.dir().to_path_buf();
    let cluster = Arc::new(Mutex::new(cluster));
    let mut cmd = std::process::Command::new(atoll_bin());
    cmd.arg("router")
        .arg("--config")
        .arg(&config)
        .args(["--proxy", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.join("router-state"))
        .env("ATOLL_ADMIN_TOKEN", ADMIN_TOKEN);
    let mut router = atoll_testkit::Service::start("router", cmd, &dir.join("router.log"))
        .expect("router starts");
    let addr_of = |line: &str, prefix: &str| {
        line.strip_prefix(prefix)
            .map(|a| format!("http://{}", a.trim()))
    };
    let mut proxy = None;
    let mut admin = None;
    while proxy.is_none() || admin.is_none() {
        let line = router
            .wait_line(std::time::Duration::from_secs(30), |l| {
                l.starts_with("atoll router ")
            })
            .expect("the router prints its addresses");
        proxy = proxy.or(addr_of(&line, "atoll router proxy on http://"));
        admin = admin.or(addr_of(&line, "atoll router admin on http://"));
    }
    let (proxy, admin) = (proxy.expect("proxy"), admin.expect("admin"));
    // The router sends nothing before its first good checks: wait until it serves.
    let probe = atoll_testkit::Client::new(&proxy);
    atoll_testkit::wait_until_async(
        std::time::Duration::from_secs(30),
        "the router serves",
        || {
            let probe = probe.clone();
            async move {
                probe
                    .kv_get_raw("sessions", "probe")
                    .await
                    .is_ok_and(|r| r.status == 404)
            }
        },
    )
    .await
    .expect("router ready");
    let mut target = target_of(&cluster);
    target.router = Some(proxy);
    target.router_admin = Some(admin.clone());
    target.admin_token = Some(ADMIN_TOKEN.into());
    // The shipped scenario at its defaults.
    let sc = shipped("drain-observe-restore.toml");
    let report = atoll_drill::run(&sc, target, RunOptions::default())
        .await
        .expect("drill runs");
    println!("{}", report.summary());
    assert!(report.passed, "{}", report.summary());
    assert!(report.rpo.lost.is_empty());
    assert!(report.events.iter().any(|e| e.text == "drain us-east-1"));
    assert!(report.events.iter().any(|e| e.text == "undrain us-east-1"));
    // The drain is lifted: the router's status shows no drain left.
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("{admin}/v1/router/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("router status")
        .json()
        .await
        .expect("json");
    let text = status.to_string();
    assert!(
        !text.contains("drill: drain-observe-restore"),
        "a drain was left: {text}"
    );
}
