//! End-to-end: the router follows the write lease of real fenced regions (issue 8 item 6;
//! `docs/design/fencing.md`). Three region processes in active-standby and an in-process router
//! whose health checks run every 100 ms:
//!
//! - the router learns the roles from `/healthz`: writes through the proxy land on the primary,
//!   and the failover name answers it;
//! - under a switchover, counter increments (never idempotent) keep going through the proxy: each
//!   one the client saw acknowledged is applied exactly once, and every other answer is a
//!   fencing refusal (nothing applied); the router then sends writes straight to the new primary.
//!
//! Every load is bounded in requests and time, and every wait has a deadline.

use crate::common;

use anyhow::{Result, bail, ensure};
use atoll_config::render::RouterToml;
use atoll_config::{Config, Model};
use atoll_router::runtime::{Router, RouterHandle, RouterOptions};
use atoll_testkit::{Client, Cluster, ClusterOptions, poll};
use common::{BIN, DEADLINE, ok};
use std::ops::ControlFlow::{Break, Continue};
use std::sync::Arc;
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const TOKEN: &str = "router-fencing-admin-token";
/// Most counter increments sent through the proxy during the switchover.
const MAX_WRITES: usize = 400;
/// How often the router's state is read while waiting for it to follow.
const ROUTER_POLL: Duration = Duration::from_millis(20);

/// The router section: checks every 100 ms, no hold-down, ramp or outlier ejection, so that
/// it follows a switchover at once.
fn router() -> String {
    RouterToml::new()
        .health("interval_ms", 100)
        .health("timeout_ms", 90)
        .health("failure_threshold", 2)
        .health("recovery_threshold", 1)
        .health("hold_down_ms", 0)
        .health("ramp_secs", 0)
        .health("outlier_failures", 0)
        .name("near", "latency", &[])
        .name("primary", "failover", &[])
        .render()
}

async fn start_router(c: &Cluster, state_dir: &std::path::Path) -> Result<RouterHandle> {
    let cfg = Arc::new(Config::load(c.config_path())?);
    let mut opts = RouterOptions::new(
        cfg,
        "127.0.0.1:0".parse()?,
        state_dir.to_path_buf(),
        "router-admin-token-0123456789".to_string(),
    );
    opts.proxy_listen = Some("127.0.0.1:0".parse()?);
    opts.proxy_name = Some("near".to_string());
    Ok(Router::start(opts).await?)
}

/// Waits until the router sends writes first to `region`.
async fn wait_router_primary(h: &RouterHandle, region: &str) -> Result<()> {
    let what = format!("the router to see {region} as primary");
    poll(DEADLINE, ROUTER_POLL, &what, || async {
        let st = h.state().status(h.ctx().now_ms())?;
        Ok(if st.primary.as_ref().is_some_and(|p| p.region == region) {
            Break(())
        } else {
            Continue(format!("{:?}", st.regions))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_router_follows_the_lease_through_a_switchover() {
    let c = ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("router-fence")
            .model(Model::ActiveStandby)
            .extra_config(&router())
            .env("ATOLL_ADMIN_TOKEN", TOKEN),
    ));
    let dir = ok(tempfile::tempdir().map_err(anyhow::Error::from));
    let h = ok(start_router(&c, dir.path()).await);
    ok(follow(&c, &h).await);
    h.shutdown().await;
}

async fn follow(c: &Cluster, h: &RouterHandle) -> Result<()> {
    wait_router_primary(h, US).await?;
    let Some(proxy_addr) = h.proxy_addr() else {
        bail!("the router serves no proxy");
    };
    let proxy = Client::with_timeout(&format!("http://{proxy_addr}"), Duration::from_secs(10));
    // Writes land on the primary, whichever region is nearest.
    for _ in 0..5 {
        let r = proxy.counter_add_raw("ratelimits", "k", 1).await?;
        ensure!(
            r.status == 200 && r.header("x-atoll-routed-to") == Some(US),
            "a write through the proxy lands on the primary: {} {:?} {}",
            r.status,
            r.header("x-atoll-routed-to"),
            r.text()
        );
    }
    let Some(name) = h
        .state()
        .config()
        .names
        .iter()
        .find(|n| n.name == "primary")
        .cloned()
    else {
        bail!("no failover name in the config");
    };
    let choice = h.state().decide(&name, None, 0.0, h.ctx().now_ms())?;
    ensure!(choice.ranked.first().map(|r| r.as_str()) == Some(US));

    // A switchover under write load through the proxy.
    let switch = tokio::spawn({
        let us = c.endpoint(US);
        async move { common::switchover(&us, TOKEN, EU).await }
    });
    let mut acked: i64 = 5;
    let mut refused = 0;
    let mut acked_by_eu = 0;
    let started = Instant::now();
    let mut after_switch = None;
    for _ in 0..MAX_WRITES {
        if started.elapsed() > DEADLINE {
            break;
        }
        let r = proxy.counter_add_raw("ratelimits", "k", 1).await?;
        match r.status {
            200 => {
                acked += 1;
                if r.header("x-atoll-routed-to") == Some(EU) {
                    acked_by_eu += 1;
                }
            }
            503 if matches!(
                r.error_code().as_deref(),
                Some("ATOLL-NOT-PRIMARY" | "ATOLL-FENCED")
            ) =>
            {
                refused += 1
            }
            s => bail!(
                "a write through the proxy got {s} {}: only acknowledgements and fencing refusals are expected",
                r.text()
            ),
        }
        if switch.is_finished() && after_switch.is_none() {
            after_switch = Some(acked);
        }
        // Keep writing for a while after the switchover, then stop.
        if after_switch.is_some_and(|a| acked >= a + 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, report) = switch.await??;
    ensure!(status == 200, "switchover: {status} {report}");
    ensure!(
        acked_by_eu > 0,
        "writes reached the new primary through the proxy"
    );
    // During the handover no region takes writes: each refusal was sent on to the next region.
    let retried: f64 = h
        .metrics()
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("atoll_router_retries_total{") && l.contains(r#"reason="not-primary""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    ensure!(
        retried > 0.0,
        "refused writes were retried on the next region ({refused} refused in the end)"
    );

    // Every acknowledged increment applied exactly once: the counter is their count.
    let eu = c.client(EU);
    let what = format!(
        "the counter on {EU} to reach the {acked} acknowledged increments ({refused} refused)"
    );
    poll(DEADLINE, Duration::from_millis(50), &what, || async {
        let v = eu.counter_get("ratelimits", "k").await?;
        ensure!(
            v <= acked,
            "counter {v} above the {acked} acknowledged increments: one was applied twice ({refused} refused)"
        );
        Ok(if v == acked {
            Break(())
        } else {
            Continue(format!("counter {v}"))
        })
    })
    .await?;

    // The router follows: writes go straight to the new primary, the failover name answers it.
    wait_router_primary(h, EU).await?;
    let r = proxy.counter_add_raw("ratelimits", "k", 1).await?;
    ensure!(
        r.status == 200 && r.header("x-atoll-routed-to") == Some(EU),
        "{} {:?}",
        r.status,
        r.header("x-atoll-routed-to")
    );
    let choice = h.state().decide(&name, None, 0.0, h.ctx().now_ms())?;
    ensure!(choice.ranked.first().map(|r| r.as_str()) == Some(EU));
    // The old primary is seen as a standby of the new epoch.
    let what = format!("the router to see {US} as a standby of epoch 2");
    poll(DEADLINE, ROUTER_POLL, &what, || async {
        let st = h.state().status(h.ctx().now_ms())?;
        let us = st.regions.into_iter().find(|r| r.region == US);
        Ok(
            if us.as_ref().is_some_and(|r| {
                r.role.map(|x| x.as_str()) == Some("standby") && r.epoch == Some(2)
            }) {
                Break(())
            } else {
                Continue(format!("{us:?}"))
            },
        )
    })
    .await
}
