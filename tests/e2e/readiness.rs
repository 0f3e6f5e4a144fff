//! End-to-end: `/healthz` (and `/v1/status`) say whether replication with every peer is
//! established: false right after a start, true once every peer is heard both ways and holds a
//! live stream of the region's writes, false again while a peer is down (the status code stays
//! 200: a region serves its own reads and writes regardless), and true again once it is back.

use crate::common;

use anyhow::{Result, ensure};
use atoll_testkit::{Client, Cluster, ClusterOptions, wait_until_async};
use common::{BIN, DEADLINE, ok};
use serde_json::Value;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";

async fn health(c: &Cluster, region: &str) -> Result<(u16, Value)> {
    let r = Client::new(&c.endpoint(region)).get_raw("/healthz").await?;
    Ok((r.status, r.json()?))
}

/// Waits until `region`'s `/healthz` says `established == want`; returns that body.
async fn wait_established(c: &Cluster, region: &str, want: bool) -> Result<Value> {
    wait_until_async(
        DEADLINE,
        &format!("{region}: replication established == {want}"),
        || async {
            health(c, region)
                .await
                .is_ok_and(|(_, h)| h["replication"]["established"] == want)
        },
    )
    .await?;
    Ok(health(c, region).await?.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_when_replication_is_established() {
    let mut c = ok(Cluster::start(BIN, 3, ClusterOptions::new("readiness")));
    ok(scenario(&mut c).await);
}

async fn scenario(c: &mut Cluster) -> Result<()> {
    for r in [US, EU, AP] {
        let h = wait_established(c, r, true).await?;
        let rep = &h["replication"];
        ensure!(rep["peers"] == 2, "{h}");
        ensure!(rep["up"].as_array().map(Vec::len) == Some(2), "{h}");
        ensure!(
            rep["streaming_to"].as_array().map(Vec::len) == Some(2),
            "{h}"
        );
        // `/v1/status` says the same, but waited for too: while the regions start, a peer may
        // rearrange its subscriptions (a relay stream replaced by a direct one once every link
        // works both ways), and the served stream it closes is gone for a moment.
        wait_until_async(
            DEADLINE,
            &format!("{r}: /v1/status says replication established"),
            || async {
                c.status(r)
                    .await
                    .is_ok_and(|st| st["replication"]["established"] == true)
            },
        )
        .await?;
    }

    // A peer down: not established, still serving.
    c.kill9(AP)?;
    let h = wait_established(c, US, false).await?;
    ensure!(
        !h["replication"]["streaming_to"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == AP)),
        "{h}"
    );
    let (status, h) = health(c, US).await?;
    ensure!(status == 200 && h["status"] == "serving", "{status} {h}");

    // Back: established again everywhere.
    c.restart(AP)?;
    for r in [US, EU, AP] {
        wait_established(c, r, true).await?;
    }
    Ok(())
}
