//! End-to-end: adding a region to a running cluster (`docs/design/adding-regions.md`), on real
//! region processes.
//!
//! Three regions run and take writes. A fourth (`voter = false`) starts with a config that lists
//! all four and an empty data directory: it catches up with what the others hold, but takes no
//! write (`ATOLL-JOINING`) until every region has reloaded a config that lists it (SIGHUP), one
//! at a time here, and it names the ones it still waits for. A reload that changes anything else
//! is refused and changes nothing. Once admitted, its writes reach every region, and theirs reach
//! it.
//!
//! At the shipped defaults: mutual TLS between regions (the new region's certificate is issued
//! from the cluster CA with `atoll certs issue`, as an operator would, and the running regions
//! accept it once they reload, on connections it opened before), heartbeats every 1 s. Every
//! wait has a deadline.

use crate::common;

use anyhow::{Context, Result, ensure};
use atoll_testkit::{Client, Cluster, ClusterOptions, RegionProcess, RegionSpec, poll};
use common::{BIN, metric, ok, sighup};
use std::ops::ControlFlow;
use std::time::Duration;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const NEW: &str = "sa-east-1";
const WAIT: Duration = Duration::from_secs(60);

/// The new region's `membership.waiting_for`, and whether it is admitted.
async fn membership(c: &Client) -> Result<(Vec<String>, bool)> {
    let s = c.status().await?;
    let m = &s["membership"];
    let waiting = m["waiting_for"]
        .as_array()
        .context("membership.waiting_for")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    Ok((waiting, m["admitted"].as_bool().unwrap_or(false)))
}

async fn wait_waiting_for(c: &Client, want: &[&str]) -> Result<()> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let want = &want;
    poll(WAIT, Duration::from_millis(250), "admission", || async {
        let (mut waiting, admitted) = membership(c).await?;
        waiting.sort();
        Ok(if waiting == *want && !admitted {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("waiting for {waiting:?}, admitted {admitted}"))
        })
    })
    .await
}

/// A write at the new region is refused as joining, naming the regions it waits for.
async fn refused_as_joining(c: &Client, naming: &[&str]) -> Result<()> {
    let r = c.kv_put_raw("sessions", "early", "x", None).await?;
    ensure!(
        r.status == 503,
        "a write before admission answered {}",
        r.status
    );
    let body = r.json()?;
    ensure!(
        body["error"]["code"] == "ATOLL-JOINING" && body["error"]["retryable"] == true,
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for n in naming {
        ensure!(message.contains(n), "{message} does not name {n}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_added_to_a_running_cluster_joins_once_every_region_admits_it() {
    let c = ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("adding")
            .heartbeat_interval_ms(atoll_config::DEFAULT_HEARTBEAT_INTERVAL_MS),
    ));
    ok(added(&c).await);
}

async fn added(c: &Cluster) -> Result<()> {
    let us = c.client(US);
    for i in 0..50 {
        us.kv_put("sessions", &format!("before-{i}"), format!("v{i}"), None)
            .await?;
    }
    us.counter_add("ratelimits", "hits", 7).await?;
    // The config with a fourth region appended, a replica, and its certificate from the CA.
    let ports = atoll_testkit::free_ports(2)?;
    let api = format!("127.0.0.1:{}", ports[0]);
    let peer = format!("127.0.0.1:{}", ports[1]);
    let old = std::fs::read_to_string(c.config_path())?;
    let four = format!(
        "{old}\n[[regions]]\nname = \"{NEW}\"\napi = \"{api}\"\npeer = \"{peer}\"\nvoter = false\n"
    );
    let four_path = c.dir().join("atoll-four.toml");
    std::fs::write(&four_path, &four)?;
    let issued = std::process::Command::new(BIN)
        .args(["certs", "issue", "--ca-dir"])
        .arg(c.certs_dir())
        .args(["--region", NEW, "--config"])
        .arg(c.config_path())
        .output()
        .context("run atoll certs issue")?;
    ensure!(
        issued.status.success(),
        "atoll certs issue failed: {}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let new = RegionProcess::start_spec(
        RegionSpec::new(BIN, &four_path, NEW, c.dir().join(NEW)).listen(api.parse()?),
    )?;
    let n = new.client();
    // Nobody has admitted it: it takes no write, and says whom it waits for.
    wait_waiting_for(&n, &[US, EU, AP]).await?;
    refused_as_joining(&n, &[US, EU, AP]).await?;
    ensure!(metric(&n, "atoll_region_admitted").await? == 0.0);
    // Two of the three reload the four-region config.
    std::fs::write(c.config_path(), &four)?;
    sighup(c, US)?;
    sighup(c, EU)?;
    wait_waiting_for(&n, &[AP]).await?;
    refused_as_joining(&n, &[AP]).await?;
    // A reload with another change is refused, and changes nothing.
    std::fs::write(
        c.config_path(),
        four.replacen(
            "policy = \"lww\"",
            "policy = \"lww\"\nmax_value_bytes = 77",
            1,
        ),
    )?;
    sighup(c, AP)?;
    let ap = c.client(AP);
    poll(
        WAIT,
        Duration::from_millis(250),
        "refused reload",
        || async {
            let n = metric(&ap, "atoll_config_reloads_total{outcome=\"refused\"}").await?;
            Ok(if n >= 1.0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{n} refused reloads"))
            })
        },
    )
    .await?;
    ensure!(
        c.region(AP).log().contains("config reload refused"),
        "ap-southeast-1's log does not say the reload was refused"
    );
    wait_waiting_for(&n, &[AP]).await?;
    // The last one reloads the right file: the new region is admitted.
    std::fs::write(c.config_path(), &four)?;
    sighup(c, AP)?;
    poll(WAIT, Duration::from_millis(250), "admitted", || async {
        let (waiting, admitted) = membership(&n).await?;
        Ok(if admitted && waiting.is_empty() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("waiting for {waiting:?}"))
        })
    })
    .await?;
    ensure!(metric(&n, "atoll_region_admitted").await? == 1.0);
    // It holds what the others held before it came, and its writes and theirs cross.
    for i in [0, 25, 49] {
        n.wait_value("sessions", &format!("before-{i}"), format!("v{i}"), WAIT)
            .await?;
    }
    poll(WAIT, Duration::from_millis(250), "counter", || async {
        let v = n.counter_get("ratelimits", "hits").await.unwrap_or(0);
        Ok(if v == 7 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("hits = {v}"))
        })
    })
    .await?;
    n.kv_put("sessions", "from-new", "hello", None).await?;
    n.counter_add("ratelimits", "hits", 5).await?;
    c.client(EU)
        .kv_put("sessions", "from-eu", "hola", None)
        .await?;
    for r in [US, EU, AP] {
        c.client(r)
            .wait_value("sessions", "from-new", "hello", WAIT)
            .await?;
    }
    n.wait_value("sessions", "from-eu", "hola", WAIT).await?;
    for r in [US, EU, AP] {
        let cl = c.client(r);
        poll(
            WAIT,
            Duration::from_millis(250),
            "counter everywhere",
            || async {
                let v = cl.counter_get("ratelimits", "hits").await.unwrap_or(0);
                Ok(if v == 12 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(format!("{r}: hits = {v}"))
                })
            },
        )
        .await?;
    }
    // The old regions list it as a peer.
    let s = us.status().await?;
    let regions = s["membership"]["regions"].to_string();
    ensure!(regions.contains(NEW), "us-east-1's regions: {regions}");
    drop(new);
    Ok(())
}
