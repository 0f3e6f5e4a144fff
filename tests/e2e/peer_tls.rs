//! End-to-end: mutual TLS between real region processes (`[cluster.tls]`, certificates from
//! `atoll certs init`, made by the test harness).
//!
//! - A cluster replicates over its peer listeners through a link mesh; the client API serves no
//!   peer route; a client holding one region's certificate that speaks for another is refused
//!   (403 `ATOLL-PEER-IDENTITY-MISMATCH`, counted in the region's metrics) and believed in
//!   nothing; plain HTTP gets no answer on the peer listener.
//! - A region whose certificate is not its own refuses to start, naming the file.
//! - A cluster with `insecure = true` replicates over plain HTTP and says so everywhere: an
//!   error-level log line at start, `/v1/status`, `atoll status`, `atoll_peer_tls_insecure`.

// Certificates are valid from the real time of day: these tests read the wall clock.
#![allow(clippy::disallowed_methods)]

use crate::common;

use anyhow::{Context, Result, ensure};
use atoll_core::RegionId;
use atoll_server::peer::PeerClient;
use atoll_testkit::{Cluster, ClusterOptions, run_with_timeout};
use common::{BIN, DEADLINE, ok};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const REGIONS: [&str; 3] = [US, EU, AP];

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region name")
}

/// Writes a key in every region and waits until every region holds all of them.
async fn replicates(c: &Cluster, tag: &str) -> Result<()> {
    for r in REGIONS {
        c.client(r)
            .kv_put("sessions", &format!("{tag}-{r}"), r, None)
            .await?;
    }
    for reader in REGIONS {
        let cl = c.client(reader);
        for writer in REGIONS {
            cl.wait_value("sessions", &format!("{tag}-{writer}"), writer, DEADLINE)
                .await?;
        }
    }
    Ok(())
}

/// The value of `atoll_peer_auth_failures_total{reason}` in a region's metrics (0 if absent).
async fn auth_failures(c: &Cluster, r: &str, reason: &str) -> Result<u64> {
    let text = c.client(r).get_raw("/metrics").await?.text();
    let series = format!("atoll_peer_auth_failures_total{{reason=\"{reason}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_over_mutual_tls_and_refuses_impostors() {
    let c = ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("tls-mutual").with_links(2.0),
    ));
    ok(mutual_scenario(&c).await);
}

async fn mutual_scenario(c: &Cluster) -> Result<()> {
    replicates(c, "tls").await?;
    for r in REGIONS {
        let st = c.status(r).await?;
        ensure!(st["peer_tls"]["mode"] == "mutual-tls", "{r}: {st}");
        ensure!(st["peer_tls"].get("warning").is_none(), "{r}: {st}");
    }
    // Every byte between regions went through the links, to the peer listeners.
    let links = c.links().context("a link mesh")?;
    for l in links.status() {
        ensure!(
            l.counters.forward_bytes > 0,
            "link {} carried nothing",
            l.name
        );
    }

    // The client API serves no peer route.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let r = http
        .post(format!("{}/v1/replication/heartbeat", c.endpoint(US)))
        .body(vec![0u8; 4])
        .send()
        .await?;
    ensure!(
        r.status() == reqwest::StatusCode::NOT_FOUND,
        "{}",
        r.status()
    );
    // Plain HTTP gets no answer from the peer listener.
    let r = http
        .post(format!(
            "http://{}/v1/replication/heartbeat",
            c.peer_addr(US)
        ))
        .body(vec![0u8; 4])
        .send()
        .await;
    ensure!(
        r.is_err(),
        "plain HTTP answered by the peer listener: {r:?}"
    );

    // ap-southeast-1's own certificate, speaking for eu-west-1: a forged subscription (it would
    // get eu-west-1's share of us-east-1's writes) and a forged heartbeat.
    let certs = c.certs_dir();
    let ap_tls = atoll_tls::RegionTls::load(
        &region(AP),
        &certs.join("ca.pem"),
        &certs.join(format!("{AP}.pem")),
        &certs.join(format!("{AP}.key")),
        SystemTime::now(),
    )?;
    let ap = PeerClient::new(
        &BTreeMap::from([(region(US), c.peer_addr(US))]),
        Some(&ap_tls),
        Duration::from_secs(5),
        Some(Duration::from_secs(5)),
        false,
    );
    let before = auth_failures(c, US, "identity_mismatch").await?;
    let sub = atoll_core::codec::encode(&atoll_core::repl::Subscribe {
        from: region(EU),
        cluster: c.status(US).await?["cluster"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        origins: vec![region(US)],
        applied: Default::default(),
    })?;
    let resp = ap
        .post(&region(US), "/v1/replication/subscribe", sub)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        resp.status() == 403,
        "forged subscription: {}",
        resp.status()
    );
    let text = resp.text().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(text.contains("ATOLL-PEER-IDENTITY-MISMATCH"), "{text}");
    let ts = atoll_core::hlc::Timestamp::new(0, 0);
    let hb = atoll_core::codec::encode(&atoll_core::repl::Heartbeat {
        from: region(EU),
        sent_ms: 0,
        hlc: ts,
        echo: None,
        frontier: BTreeMap::new(),
        stable_age_ms: None,
        removed: Default::default(),
    })?;
    let resp = ap
        .post(&region(US), "/v1/replication/heartbeat", hb)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(resp.status() == 403, "forged heartbeat: {}", resp.status());
    ensure!(
        auth_failures(c, US, "identity_mismatch").await? == before + 2,
        "the refusals are counted"
    );
    // And the cluster carries on.
    replicates(c, "after").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_with_another_regions_certificate_refuses_to_start() {
    let mut c = ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("tls-wrong-cert"),
    ));
    ok(c.terminate(US).map(|_| ()));
    let certs = c.certs_dir();
    for ext in ["pem", "key"] {
        ok(std::fs::copy(
            certs.join(format!("{EU}.{ext}")),
            certs.join(format!("{US}.{ext}")),
        )
        .map(|_| ())
        .map_err(Into::into));
    }
    let err = match c.restart(US) {
        Ok(()) => panic!("us-east-1 started with eu-west-1's certificate"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("ATOLL-TLS"), "{err}");
    assert!(err.contains("us-east-1.atoll"), "{err}");
    assert!(err.contains(&format!("{US}.pem")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_cluster_replicates_and_warns_everywhere() {
    let c = ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("tls-insecure").insecure(),
    ));
    ok(insecure_scenario(&c).await);
}

async fn insecure_scenario(c: &Cluster) -> Result<()> {
    replicates(c, "plain").await?;
    for r in REGIONS {
        let log = c.region(r).log();
        ensure!(
            log.lines()
                .any(|l| l.contains(" ERROR ") && l.contains("INSECURE")),
            "{r} did not log an error about running insecure:\n{log}"
        );
        let st = c.status(r).await?;
        ensure!(st["peer_tls"]["mode"] == "insecure", "{r}: {st}");
        let warning = st["peer_tls"]["warning"].as_str().unwrap_or_default();
        ensure!(warning.contains("insecure = true"), "{r}: {st}");
        let metrics = c.client(r).get_raw("/metrics").await?.text();
        ensure!(
            metrics.lines().any(|l| l == "atoll_peer_tls_insecure 1"),
            "{r}: no atoll_peer_tls_insecure 1"
        );
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["status", "--endpoint", &c.endpoint(US)]);
    let o = run_with_timeout(cmd, DEADLINE)?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(
        stderr.contains("warning: [cluster.tls] insecure = true"),
        "{stderr}"
    );
    ensure!(stdout.contains("between regions: INSECURE"), "{stdout}");
    Ok(())
}
