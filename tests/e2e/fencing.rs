//! End-to-end: split-brain fencing (`docs/design/fencing.md`) between real region processes,
//! every inter-region byte through an in-process `atoll link` mesh, at the shipped fencing
//! defaults (lease 5 s, renewals every 1 s, margin 250 ms).
//!
//! - active-standby, primary isolated under write load: the old primary's last acknowledged
//!   write precedes the new primary's first (one clock: the test's), the new primary takes writes
//!   within the bound, and after the heal the old primary is a standby and nothing acknowledged
//!   is lost;
//! - switchover: every write the old primary acknowledged is on the new primary the moment the
//!   switchover returns;
//! - active-active with quorum fencing: a region cut off from the majority refuses writes to a
//!   `read-only` keyspace and keeps taking writes to an `available` one;
//! - active-standby with `[fencing] forward_writes`: a write to a standby is applied once by the
//!   primary and says so (`X-Atoll-Forwarded-To`), a request marked as forwarded is not
//!   forwarded again; without it the standby refuses with `ATOLL-NOT-PRIMARY`;
//! - bad input: promote during a healthy lease, promote without or with a wrong admin token,
//!   promote of an unknown region;
//! - two regions and an arbiter (`atoll arbiter`, every region-to-arbiter byte through the mesh
//!   too), active-standby: with only the link between the regions cut, the primary keeps
//!   acknowledging writes and nothing is promoted for two leases and more; with the primary cut
//!   from both the other region and the arbiter, the standby takes over within the bound with no
//!   overlap and nothing acknowledged lost; with the arbiter killed, the two regions are still a
//!   majority and the primary keeps writing.
//!
//! Every load is bounded in requests and time, and every wait has a deadline.

use crate::common;

use anyhow::{Result, anyhow, bail, ensure};
use atoll_config::Model;
use atoll_testkit::{ARBITER, Client, Cluster, ClusterOptions, poll};
use common::{BIN, ok};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ops::ControlFlow::{Break, Continue};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const TOKEN: &str = "fencing-test-admin-token";
/// One-way delay of every link.
const LINK_DELAY_MS: f64 = 5.0;
/// Lease 5 s x (1 + drift) + margin, plus a control-group election (up to 3 s) and slack.
const PROMOTION_BOUND: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(40);
/// How often the fencing waits read a region's status.
const STATUS_POLL: Duration = Duration::from_millis(50);

/// How long the two-region tests hold a fault that must change nothing: two leases and more.
const HOLD: Duration = Duration::from_secs(12);

fn start(opts: ClusterOptions) -> Cluster {
    ok(Cluster::start(
        BIN,
        3,
        opts.with_links(LINK_DELAY_MS)
            .env("ATOLL_ADMIN_TOKEN", TOKEN),
    ))
}

/// Two regions (us-east-1, eu-west-1) and an arbiter, every connection through the mesh.
fn start_with_arbiter(opts: ClusterOptions) -> Cluster {
    ok(Cluster::start(
        BIN,
        2,
        opts.arbiter()
            .with_links(LINK_DELAY_MS)
            .env("ATOLL_ADMIN_TOKEN", TOKEN),
    ))
}

async fn fencing(c: &Cluster, region: &str) -> Result<Value> {
    Ok(c.status(region).await?["fencing"].clone())
}

/// Waits until `region` reports `role`; returns its fencing status.
async fn wait_role(c: &Cluster, region: &str, role: &str, within: Duration) -> Result<Value> {
    let what = format!("{region} to become {role}");
    poll(within, STATUS_POLL, &what, || async {
        Ok(match fencing(c, region).await {
            Ok(f) if f["role"] == role => Break(f),
            Ok(f) => Continue(format!("fencing status {f}")),
            Err(e) => Continue(format!("{e:#}")),
        })
    })
    .await
}

/// Waits until any of `regions` reports `primary`; returns it.
async fn wait_any_primary(c: &Cluster, regions: &[&str], within: Duration) -> Result<String> {
    let what = format!("one of {regions:?} to become primary");
    poll(within, STATUS_POLL, &what, || async {
        let mut roles = Vec::new();
        for r in regions {
            let role = fencing(c, r).await.map(|f| f["role"].clone());
            if matches!(&role, Ok(role) if role == "primary") {
                return Ok(Break(r.to_string()));
            }
            roles.push(format!("{r}: {role:?}"));
        }
        Ok(Continue(roles.join(", ")))
    })
    .await
}

/// One acknowledged or refused write, on the test's clock.
#[derive(Clone, Debug)]
struct Attempt {
    region: String,
    key: String,
    value: String,
    at: Instant,
    status: Option<u16>,
    code: Option<String>,
}

/// Writes unique lww keys to every region in turn until `stop` (bounded by `max`), recording
/// every answer with its arrival time.
async fn write_load(
    c: &Cluster,
    regions: &[&str],
    stop: Arc<AtomicBool>,
    max: usize,
) -> Vec<Attempt> {
    let clients: Vec<(String, Client)> = regions
        .iter()
        .map(|r| {
            (
                r.to_string(),
                Client::with_timeout(&c.endpoint(r), Duration::from_secs(2)),
            )
        })
        .collect();
    let mut out = Vec::new();
    let started = Instant::now();
    for i in 0..max {
        if stop.load(Ordering::Relaxed) || started.elapsed() > DEADLINE {
            break;
        }
        let (region, client) = &clients[i % clients.len()];
        let key = format!("fence-{i}");
        let value = format!("written to {region} as write {i}");
        let r = client
            .kv_put_raw("sessions", &key, value.as_bytes(), None)
            .await;
        out.push(Attempt {
            region: region.clone(),
            key,
            value,
            at: Instant::now(),
            status: r.as_ref().ok().map(|r| r.status),
            code: r.as_ref().ok().and_then(|r| r.error_code()),
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

/// Every acknowledged write is readable, with its value, in every region (waits for
/// replication).
async fn all_acked_everywhere(c: &Cluster, regions: &[&str], acked: &[&Attempt]) -> Result<()> {
    for &region in regions {
        let client = c.client(region);
        let end = Instant::now() + DEADLINE;
        for a in acked {
            let what = format!(
                "acknowledged write {} (by {} : {:?}) in {region}",
                a.key, a.region, a.value
            );
            let left = end.saturating_duration_since(Instant::now());
            poll(left, STATUS_POLL, &what, || async {
                let r = client.kv_get("sessions", &a.key).await;
                let got = r.ok().and_then(|r| r.value().map(|v| v.to_vec()));
                Ok(if got.as_deref() == Some(a.value.as_bytes()) {
                    Break(())
                } else {
                    Continue(format!(
                        "read {:?}",
                        got.map(|g| String::from_utf8_lossy(&g).into_owned())
                    ))
                })
            })
            .await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_takes_over_when_the_primary_is_isolated() {
    let c = start(ClusterOptions::new("fence-isolate").model(Model::ActiveStandby));
    ok(isolate_primary(&c, &[EU, AP], &[EU, AP]).await);
}

/// The primary (us-east-1) is cut from every node of `cut_from` under a write load to it and to
/// the `standbys`; one of them must take over with no overlap and nothing acknowledged lost.
async fn isolate_primary(c: &Cluster, standbys: &[&str], cut_from: &[&str]) -> Result<()> {
    let f = wait_role(c, US, "primary", DEADLINE).await?;
    ensure!(f["epoch"] == 1, "first epoch is 1: {f}");
    wait_role(c, EU, "standby", DEADLINE).await?;
    // A standby refuses writes, naming the primary; it serves reads with their staleness.
    let r = c
        .client(EU)
        .kv_put_raw("sessions", "probe", b"x", None)
        .await?;
    ensure!(
        r.status == 503 && r.error_code().as_deref() == Some("ATOLL-NOT-PRIMARY"),
        "a standby must refuse writes with ATOLL-NOT-PRIMARY: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        r.text().contains(US),
        "the refusal names the primary: {}",
        r.text()
    );
    let read = c.client(EU).kv_get_raw("sessions", "probe").await?;
    ensure!(
        read.header("x-atoll-role") == Some("standby")
            && read.header("x-atoll-staleness-ms").is_some(),
        "a standby's read says its role and staleness: {:?}",
        read.header("x-atoll-staleness-ms")
    );

    let (leader, term) = control_view(c, US).await?;
    eprintln!("control group leader before the cut: {leader:?} (term {term})");
    let stop = Arc::new(AtomicBool::new(false));
    let control = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cut_at = Instant::now();
        for &node in cut_from {
            c.partition(US, node)?;
        }
        let new = wait_any_primary(c, standbys, PROMOTION_BOUND + Duration::from_secs(5)).await;
        // Keep writing a little under the new primary.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        stop.store(true, Ordering::Relaxed);
        Ok::<_, anyhow::Error>((cut_at, new?))
    };
    let regions: Vec<&str> = std::iter::once(US)
        .chain(standbys.iter().copied())
        .collect();
    let (attempts, control) = tokio::join!(write_load(c, &regions, stop.clone(), 20_000), control);
    let (cut_at, new) = control?;
    let acked: Vec<&Attempt> = attempts.iter().filter(|a| a.status == Some(200)).collect();
    let last_old = acked
        .iter()
        .filter(|a| a.region == US)
        .map(|a| a.at)
        .max()
        .ok_or_else(|| anyhow!("the old primary acknowledged nothing"))?;
    let first_new = acked
        .iter()
        .filter(|a| a.region == new && a.at > cut_at)
        .map(|a| a.at)
        .min()
        .ok_or_else(|| anyhow!("the new primary {new} acknowledged nothing"))?;
    ensure!(
        last_old < first_new,
        "split brain: {US}'s last acknowledged write came {:?} after {new}'s first",
        last_old - first_new
    );
    ensure!(
        first_new - cut_at < PROMOTION_BOUND,
        "{new} took writes {:?} after the cut (bound {PROMOTION_BOUND:?})",
        first_new - cut_at
    );
    // Refusals changed nothing and said why.
    for a in attempts
        .iter()
        .filter(|a| a.status.is_some_and(|s| s != 200))
    {
        ensure!(
            a.status == Some(503) && matches!(a.code.as_deref(), Some("ATOLL-NOT-PRIMARY")),
            "unexpected refusal {a:?}"
        );
    }
    eprintln!(
        "cut at 0; {US}'s last ack at {:?}; {new} primary, first ack at {:?}; {} acked, {} refused",
        last_old.saturating_duration_since(cut_at),
        first_new - cut_at,
        acked.len(),
        attempts.len() - acked.len()
    );
    // Heal: the old primary rejoins as a standby and everything acknowledged converges.
    c.heal_all()?;
    wait_role(c, US, "standby", DEADLINE).await?;
    let f = fencing(c, US).await?;
    ensure!(
        f["holder"] == new.as_str() && f["epoch"] == 2,
        "after heal: {f}"
    );
    all_acked_everywhere(c, &regions, &acked).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_loses_nothing() {
    let c = start(ClusterOptions::new("fence-switchover").model(Model::ActiveStandby));
    ok(switchover(&c).await);
}

async fn switchover(c: &Cluster) -> Result<()> {
    wait_role(c, US, "primary", DEADLINE).await?;
    let client = c.client(US);
    let mut acked = Vec::new();
    for i in 0..100 {
        let key = format!("before-{i}");
        let value = format!("v{i}");
        let r = client
            .kv_put_raw("sessions", &key, value.as_bytes(), None)
            .await?;
        ensure!(r.status == 200, "write to the primary: {}", r.text());
        acked.push((key, value));
    }
    let started = Instant::now();
    let (status, report) = common::switchover(&c.endpoint(US), TOKEN, EU).await?;
    ensure!(status == 200, "switchover: {status} {report}");
    ensure!(report["to"] == EU && report["epoch"] == 2, "{report}");
    // The moment the switchover returns, the target has every acknowledged write.
    let eu = c.client(EU);
    for (key, value) in &acked {
        let got = eu.kv_get("sessions", key).await?;
        ensure!(
            got.value() == Some(value.as_bytes()),
            "{key} acknowledged by {US} is missing on {EU} right after the switchover"
        );
    }
    wait_role(c, EU, "primary", DEADLINE).await?;
    wait_role(c, US, "standby", DEADLINE).await?;
    let r = eu.kv_put_raw("sessions", "after", b"x", None).await?;
    ensure!(
        r.status == 200,
        "the new primary takes writes: {}",
        r.text()
    );
    let r = client.kv_put_raw("sessions", "after", b"y", None).await?;
    ensure!(
        r.error_code().as_deref() == Some("ATOLL-NOT-PRIMARY"),
        "the old primary refuses: {}",
        r.text()
    );
    eprintln!(
        "switchover took {:?}, writes stopped for {} ms",
        started.elapsed(),
        report["writes_stopped_ms"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minority_region_refuses_read_only_keyspaces_only() {
    let c = start(
        ClusterOptions::new("fence-quorum")
            .keyspace_line("carts", "on_minority = \"read-only\"")
            .extra_config("[fencing]\nquorum = true"),
    );
    ok(minority(&c).await);
}

async fn minority(c: &Cluster) -> Result<()> {
    for r in [US, EU, AP] {
        wait_role(c, r, "active", DEADLINE).await?;
    }
    let us = c.client(US);
    ensure!(
        us.kv_put_raw("carts", "c1", b"apple", None).await?.status == 200,
        "with a majority, read-only keyspaces take writes"
    );
    c.partition(US, EU)?;
    c.partition(US, AP)?;
    wait_role(c, US, "read-only", PROMOTION_BOUND).await?;
    let r = us.kv_put_raw("carts", "c2", b"pear", None).await?;
    ensure!(
        r.status == 503 && r.error_code().as_deref() == Some("ATOLL-FENCED"),
        "a minority region refuses a read-only keyspace: {} {}",
        r.status,
        r.text()
    );
    let r = us.kv_put_raw("sessions", "s1", b"token", None).await?;
    ensure!(
        r.status == 200,
        "an available keyspace keeps writing: {}",
        r.text()
    );
    let r = c
        .client(EU)
        .kv_put_raw("carts", "c3", b"plum", None)
        .await?;
    ensure!(
        r.status == 200,
        "the majority side keeps writing: {}",
        r.text()
    );
    c.heal_all()?;
    wait_role(c, US, "active", DEADLINE).await?;
    let r = us.kv_put_raw("carts", "c4", b"fig", None).await?;
    ensure!(r.status == 200, "healed: {}", r.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_refuses_bad_requests() {
    let c = start(ClusterOptions::new("fence-bad").model(Model::ActivePassive));
    ok(bad_promotes(&c).await);
}

async fn bad_promotes(c: &Cluster) -> Result<()> {
    wait_role(c, US, "primary", DEADLINE).await?;
    wait_role(c, EU, "passive", DEADLINE).await?;
    // A passive region serves no client traffic, and its health says so.
    let r = c.client(EU).kv_get_raw("sessions", "k").await?;
    ensure!(
        r.error_code().as_deref() == Some("ATOLL-PASSIVE"),
        "a passive region refuses reads: {}",
        r.text()
    );
    let http = reqwest::Client::new();
    let url = format!("{}/v1/admin/promote", c.endpoint(EU));
    let mut answers = BTreeMap::new();
    for (name, token) in [
        ("none", None),
        ("wrong", Some("not-the-token")),
        ("right", Some(TOKEN)),
    ] {
        let mut req = http.post(&url).json(&json!({}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        answers.insert(name, (status, body["error"]["code"].clone()));
    }
    ensure!(answers["none"].0 == 401, "no token: {:?}", answers["none"]);
    ensure!(
        answers["wrong"].0 == 401,
        "wrong token: {:?}",
        answers["wrong"]
    );
    ensure!(
        answers["right"] == (409, json!("ATOLL-LEASE-HELD")),
        "promote during a healthy lease: {:?}",
        answers["right"]
    );
    let out = std::process::Command::new(BIN)
        .args(["promote", "nowhere-1", "--config"])
        .arg(c.config_path())
        .env("ATOLL_ADMIN_TOKEN", TOKEN)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("not a region") && err.contains(US),
        "promote of an unknown region: {err}"
    );
    // Nothing changed.
    let f = fencing(c, US).await?;
    ensure!(f["role"] == "primary" && f["epoch"] == 1, "{f}");
    Ok(())
}

/// The control group as `region` sees it: (leader, term).
async fn control_view(c: &Cluster, region: &str) -> Result<(Option<String>, u64)> {
    let f = fencing(c, region).await?;
    Ok((
        f["control"]["leader"].as_str().map(str::to_string),
        f["control"]["term"].as_u64().unwrap_or(0),
    ))
}

/// The fencing status of both regions, sampled until `stop`: (when, region, role, epoch,
/// holder), or the error of a status that could not be read.
async fn watch_roles(
    c: &Cluster,
    stop: Arc<AtomicBool>,
) -> Vec<(Instant, String, Result<(String, u64, String)>)> {
    let mut out = Vec::new();
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < DEADLINE {
        for r in [US, EU] {
            let s = fencing(c, r).await.map(|f| {
                (
                    f["role"].as_str().unwrap_or("?").to_string(),
                    f["epoch"].as_u64().unwrap_or(0),
                    f["holder"].as_str().unwrap_or("-").to_string(),
                )
            });
            out.push((Instant::now(), r.to_string(), s));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// Waits until us-east-1 is the primary under epoch 1 in steady state (it has renewed its lease
/// lately: a first grant that took long to commit leaves a short first window) and eu-west-1 is
/// a standby.
async fn wait_steady(c: &Cluster) -> Result<()> {
    let what = format!("{US} to become a renewing primary");
    poll(DEADLINE, STATUS_POLL, &what, || async {
        Ok(match fencing(c, US).await {
            Ok(f)
                if f["role"] == "primary"
                    && f["epoch"] == 1
                    && f["window_left_ms"].as_u64().is_some_and(|w| w >= 3_500) =>
            {
                Break(())
            }
            Ok(f) => Continue(format!("fencing status {f}")),
            Err(e) => Continue(format!("{e:#}")),
        })
    })
    .await?;
    wait_role(c, EU, "standby", DEADLINE).await?;
    Ok(())
}

/// While `fault` holds (from `start` for [`HOLD`]), the primary (us-east-1) acknowledges every
/// write sent to it and eu-west-1 stays a standby under epoch 1; the roles are sampled all along.
/// Returns the attempts.
async fn primary_unaffected(
    c: &Cluster,
    what: &str,
    fault: impl std::future::Future<Output = Result<()>>,
) -> Result<Vec<Attempt>> {
    let stop = Arc::new(AtomicBool::new(false));
    let scenario = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = async {
            let at = Instant::now();
            fault.await?;
            tokio::time::sleep(HOLD).await;
            Ok::<_, anyhow::Error>(at)
        }
        .await;
        stop.store(true, Ordering::Relaxed);
        r
    };
    let (attempts, roles, at) = tokio::join!(
        write_load(c, &[US], stop.clone(), 5_000),
        watch_roles(c, stop.clone()),
        scenario
    );
    let at = at?;
    let end = at + HOLD;
    let during: Vec<&Attempt> = attempts.iter().filter(|a| a.at >= at).collect();
    ensure!(
        during.len() > 100,
        "too few writes during the {what} ({}): the load did not run",
        during.len()
    );
    if let Some(bad) = attempts.iter().find(|a| a.status != Some(200)) {
        bail!(
            "{US} refused or failed a write {:?} into the {what}: {bad:?} ({} of {} attempts not acknowledged)",
            bad.at.saturating_duration_since(at),
            attempts.iter().filter(|a| a.status != Some(200)).count(),
            attempts.len()
        );
    }
    // Acknowledged without a stall (a write waits for no renewal; only the disk and a loaded
    // machine slow it down).
    let gap = during
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .max()
        .unwrap_or_default();
    ensure!(
        gap < Duration::from_secs(2),
        "{US} stalled for {gap:?} during the {what}"
    );
    let last = during.last().map(|a| a.at).unwrap_or(at);
    ensure!(
        last + Duration::from_secs(1) >= end,
        "the load stopped {:?} before the end of the {what}",
        end.saturating_duration_since(last)
    );
    let mut samples = 0;
    for (when, region, s) in &roles {
        let (role, epoch, holder) = match s {
            Ok(s) => s,
            Err(e) => bail!(
                "no fencing status of {region} {:?} into the {what}: {e:#}",
                when.saturating_duration_since(at)
            ),
        };
        let want = if region == US { "primary" } else { "standby" };
        ensure!(
            role == want && *epoch == 1 && holder == US,
            "{region} was {role} (epoch {epoch}, holder {holder}) {:?} into the {what}; expected {want} under epoch 1 held by {US}",
            when.saturating_duration_since(at)
        );
        if *when >= at {
            samples += 1;
        }
    }
    ensure!(
        samples > 20,
        "too few role samples during the {what}: {samples}"
    );
    eprintln!(
        "{what}: {} writes acknowledged by {US} in {HOLD:?} (largest gap {gap:?}), {samples} role samples, all {US} primary / {EU} standby under epoch 1",
        during.len()
    );
    Ok(attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn arbiter_keeps_the_primary_when_only_the_regions_are_cut_apart() {
    let c = start_with_arbiter(ClusterOptions::new("fence-arb-split").model(Model::ActiveStandby));
    ok(regions_cut_apart(&c).await);
}

async fn regions_cut_apart(c: &Cluster) -> Result<()> {
    wait_steady(c).await?;
    let (leader, term) = control_view(c, US).await?;
    eprintln!("control group leader before the cut: {leader:?} (term {term})");
    let attempts = primary_unaffected(c, "inter-region cut", async {
        c.partition(US, EU)?;
        Ok(())
    })
    .await?;
    let views = (control_view(c, US).await?, control_view(c, EU).await?);
    eprintln!(
        "control group at the end of the cut: {US} sees {:?}, {EU} sees {:?}",
        views.0, views.1
    );
    // Heal: everything acknowledged reaches the standby; the lease never moved.
    c.heal_all()?;
    let acked: Vec<&Attempt> = attempts.iter().filter(|a| a.status == Some(200)).collect();
    all_acked_everywhere(c, &[US, EU], &acked).await?;
    let f = fencing(c, EU).await?;
    ensure!(
        f["role"] == "standby" && f["epoch"] == 1 && f["holder"] == US,
        "after the heal: {f}"
    );
    ensure!(
        f["promotions"].as_array().map(Vec::len) == Some(1),
        "only the initial grant is in the history: {f}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn arbiter_lets_the_standby_take_over_an_isolated_primary() {
    let c =
        start_with_arbiter(ClusterOptions::new("fence-arb-isolate").model(Model::ActiveStandby));
    ok(isolate_primary(&c, &[EU], &[EU, ARBITER]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_regions_keep_writing_without_the_arbiter() {
    let c = start_with_arbiter(ClusterOptions::new("fence-arb-killed").model(Model::ActiveStandby));
    ok(arbiter_killed(&c).await);
}

async fn arbiter_killed(c: &Cluster) -> Result<()> {
    wait_steady(c).await?;
    let (leader, term) = control_view(c, US).await?;
    eprintln!("control group leader before the kill: {leader:?} (term {term})");
    primary_unaffected(c, "arbiter outage", async {
        let status = c.kill_arbiter()?;
        eprintln!("arbiter killed ({status})");
        Ok(())
    })
    .await?;
    let (leader, term) = control_view(c, US).await?;
    ensure!(
        leader.as_deref().is_some_and(|l| l == US || l == EU),
        "a region leads the control group without the arbiter: {leader:?} (term {term})"
    );
    // The arbiter comes back on its data directory and the cluster carries on.
    c.restart_arbiter()?;
    let r = c
        .client(US)
        .kv_put_raw("sessions", "after-arbiter", b"x", None)
        .await?;
    ensure!(
        r.status == 200,
        "the primary writes after the arbiter's return: {}",
        r.text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_forwards_writes_to_the_primary_only_when_configured() {
    let on = start(
        ClusterOptions::new("fence-forward")
            .model(Model::ActiveStandby)
            .extra_config("[fencing]\nforward_writes = true\n"),
    );
    ok(forwarded(&on).await);
    drop(on);
    let off = start(ClusterOptions::new("fence-no-forward").model(Model::ActiveStandby));
    ok(not_forwarded(&off).await);
}

/// With `forward_writes`, a write to a standby is applied by the primary, once, and says so; a
/// request that claims to be forwarded already is refused, never forwarded again.
async fn forwarded(c: &Cluster) -> Result<()> {
    wait_role(c, US, "primary", DEADLINE).await?;
    wait_role(c, EU, "standby", DEADLINE).await?;
    let eu = c.client(EU);
    let r = eu.kv_put_raw("sessions", "fwd-1", "v1", None).await?;
    ensure!(
        r.status == 200 && r.header("x-atoll-forwarded-to") == Some(US),
        "a write to the standby: {} {:?} {}",
        r.status,
        r.header("x-atoll-forwarded-to"),
        r.text()
    );
    ensure!(
        r.json()?["region"] == US,
        "applied by the primary: {}",
        r.text()
    );
    // The primary holds it at once; the standby gets it by replication.
    let read = c.client(US).kv_get("sessions", "fwd-1").await?;
    ensure!(read.value() == Some(b"v1".as_slice()), "{read:?}");
    let (value, applied_by) = {
        let r = eu.counter_add_raw("ratelimits", "fwd-c", 5).await?;
        ensure!(r.status == 200, "{} {}", r.status, r.text());
        let j = r.json()?;
        (j["value"].clone(), j["region"].clone())
    };
    ensure!(value == 5 && applied_by == US, "{value} {applied_by}");
    ensure!(c.client(US).counter_get("ratelimits", "fwd-c").await? == 5);
    // The forwarded write replicates to eu.
    eu.wait_value("sessions", "fwd-1", "v1", DEADLINE).await?;
    // A request that says it was forwarded already is not forwarded again (no loops), whoever
    // sent the header: the standby refuses it and the primary never sees it.
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/kv/sessions/fwd-2", c.endpoint(EU)))
        .header("x-atoll-forwarded-by", AP)
        .body("v2")
        .send()
        .await?;
    let status = resp.status().as_u16();
    let forwarded_to = resp.headers().get("x-atoll-forwarded-to").cloned();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    ensure!(
        status == 503 && body["error"]["code"] == "ATOLL-NOT-PRIMARY" && forwarded_to.is_none(),
        "{status} {body}"
    );
    let r = c.client(US).kv_get_raw("sessions", "fwd-2").await?;
    ensure!(r.status == 404, "fwd-2 reached the primary: {}", r.text());
    Ok(())
}

/// Without `forward_writes`, a write to a standby is refused, naming the primary.
async fn not_forwarded(c: &Cluster) -> Result<()> {
    wait_role(c, US, "primary", DEADLINE).await?;
    wait_role(c, EU, "standby", DEADLINE).await?;
    let r = c
        .client(EU)
        .kv_put_raw("sessions", "fwd-1", "v1", None)
        .await?;
    ensure!(
        r.status == 503
            && r.error_code().as_deref() == Some("ATOLL-NOT-PRIMARY")
            && r.header("x-atoll-forwarded-to").is_none()
            && r.text().contains(US),
        "{} {}",
        r.status,
        r.text()
    );
    let r = c.client(US).kv_get_raw("sessions", "fwd-1").await?;
    ensure!(
        r.status == 404,
        "the refused write reached the primary: {}",
        r.text()
    );
    Ok(())
}
