//! End-to-end: removing a replica from a running cluster (`docs/design/region-removal.md`), on
//! real region processes.
//!
//! Three voters and a replica (`voter = false`, in the config from the start) take writes and
//! converge. The replica is SIGKILLed: while it is away every region keeps in its operation log
//! what the replica has not applied (truncation stops exactly there). The three reload a config
//! without it (SIGHUP), one at a time: each shows it removed at once, and its writes settled
//! once all three have; truncation then moves past what the replica never applied, and writes
//! keep flowing between the three. The replica, restarted on its old data directory with its old
//! config, is told it was removed (its heartbeats are answered `410 ATOLL-REGION-REMOVED`): its
//! `/healthz` says `removed` (503), it refuses writes (410), and it still serves reads. A reload
//! that puts the removed region back is refused (its name is never reused), and so is a reload
//! that removes a voter. A second test removes the replica while it runs and writes: the three
//! settle on the same number of its writes, and it learns it was removed at its next heartbeat.
//!
//! At the shipped defaults (mutual TLS between regions, heartbeats every 1 s, maintenance every
//! 5 s), but for `[replication] oplog_retention = "0s"`, so that truncation is seen within the
//! test (the rule under test, nothing leaves a log before every member applied it, does not
//! depend on the retention). Every wait is a poll with a deadline.

use crate::common;

use anyhow::{Context, Result, ensure};
use atoll_testkit::{Client, Cluster, ClusterOptions, poll};
use common::{BIN, metric, ok, sighup};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
/// The replica that is removed.
const SA: &str = "sa-east-1";
const VOTERS: [&str; 3] = [US, EU, AP];
const WAIT: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(250);

/// `text` without the `[[regions]]` table of `name` (every other line as it was).
fn without_region(text: &str, name: &str) -> String {
    let mut out = Vec::new();
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut Vec<String>| {
        let drop = section.first() == Some(&"[[regions]]")
            && section
                .iter()
                .any(|l| l.trim() == format!("name = \"{name}\""));
        if !drop {
            out.extend(section.iter().map(|l| l.to_string()));
        }
        section.clear();
    };
    for line in text.lines() {
        if line.starts_with('[') {
            flush(&mut section, &mut out);
        }
        section.push(line);
    }
    flush(&mut section, &mut out);
    out.join("\n") + "\n"
}

/// A region's applied vector, by origin.
async fn applied(c: &Client) -> Result<BTreeMap<String, u64>> {
    let s = c.status().await?;
    Ok(s["replication"]["applied"]
        .as_object()
        .context("replication.applied")?
        .iter()
        .map(|(o, n)| (o.clone(), n.as_u64().unwrap_or(0)))
        .collect())
}

/// `replication.oplog_truncated_through` of a region's status, by origin.
async fn truncated(c: &Client) -> Result<BTreeMap<String, u64>> {
    let s = c.status().await?;
    Ok(s["replication"]["oplog_truncated_through"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(o, n)| (o.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until, at every voter, `done(origin, truncated through)` holds for every origin of the
/// four (an error ends the wait).
async fn wait_truncated(
    c: &Cluster,
    what: &str,
    done: impl Fn(&str, u64) -> Result<bool>,
) -> Result<()> {
    for r in VOTERS {
        let cl = c.client(r);
        poll(WAIT, TICK, what, || async {
            let t = truncated(&cl).await?;
            let mut short = Vec::new();
            for o in [US, EU, AP, SA] {
                let through = t.get(o).copied().unwrap_or(0);
                if !done(o, through).with_context(|| format!("at {r}"))? {
                    short.push(format!("{o} through {through}"));
                }
            }
            Ok(if short.is_empty() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{r} truncated {}", short.join(", ")))
            })
        })
        .await?;
    }
    Ok(())
}

/// Waits until every region in `regions` has applied `want` (per origin, at least).
async fn wait_applied(c: &Cluster, regions: &[&str], want: &BTreeMap<String, u64>) -> Result<()> {
    for r in regions {
        let cl = c.client(r);
        poll(WAIT, TICK, "replication", || async {
            let have = applied(&cl).await?;
            let short: Vec<String> = want
                .iter()
                .filter(|(o, n)| have.get(*o).copied().unwrap_or(0) < **n)
                .map(|(o, n)| format!("{o} {} of {n}", have.get(o).copied().unwrap_or(0)))
                .collect();
            Ok(if short.is_empty() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{r} short of {}", short.join(", ")))
            })
        })
        .await?;
    }
    Ok(())
}

/// Waits until the replica says every region admitted it.
async fn wait_admitted(sa: &Client) -> Result<()> {
    poll(WAIT, TICK, "the replica admitted", || async {
        let s = sa.status().await?;
        Ok(if s["membership"]["admitted"] == true {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(s["membership"].to_string())
        })
    })
    .await
}

/// The entry of `region` in a region's `membership.removed`, if any.
async fn removed_entry(c: &Client, region: &str) -> Result<Option<serde_json::Value>> {
    let s = c.status().await?;
    Ok(s["membership"]["removed"]
        .as_array()
        .context("membership.removed")?
        .iter()
        .find(|r| r["region"] == region)
        .cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_by_reload_settles_frees_the_logs_and_is_told_it_was_removed() {
    let mut c = ok(Cluster::start(
        BIN,
        4,
        ClusterOptions::new("removing")
            .heartbeat_interval_ms(atoll_config::DEFAULT_HEARTBEAT_INTERVAL_MS)
            .oplog_retention("0s")
            .replica(SA),
    ));
    ok(removed(&mut c).await);
}

async fn removed(c: &mut Cluster) -> Result<()> {
    let sa = c.client(SA);
    // The replica is in the config from the start: admitted once every region has heard it.
    wait_admitted(&sa).await?;
    // Writes at every region, a delete among them; all four converge.
    for r in VOTERS.iter().chain([&SA]) {
        let cl = c.client(r);
        for i in 0..3 {
            cl.kv_put("sessions", &format!("{r}-{i}"), format!("v{i}"), None)
                .await?;
        }
        cl.kv_del("sessions", &format!("{r}-0"), None).await?;
    }
    let mut heads = BTreeMap::new();
    for r in VOTERS.iter().chain([&SA]) {
        heads.insert(
            r.to_string(),
            applied(&c.client(r)).await?.get(*r).copied().unwrap_or(0),
        );
    }
    wait_applied(c, &[US, EU, AP, SA], &heads).await?;
    let sa_head = heads[SA];
    // Every region truncates its logs up to the newest entry of each origin (it keeps that one):
    // so the replica has told every region, by a heartbeat, that it holds all of it.
    wait_truncated(
        c,
        "truncation before the kill",
        |o, t| Ok(t == heads[o] - 1),
    )
    .await?;

    // The replica dies. What the others write from now on, it never applies.
    c.kill9(SA)?;
    for r in VOTERS {
        let cl = c.client(r);
        for i in 0..3 {
            cl.kv_put("sessions", &format!("after-{r}-{i}"), format!("w{i}"), None)
                .await?;
        }
        cl.kv_del("sessions", &format!("after-{r}-0"), None).await?;
    }
    let mut heads_after = BTreeMap::new();
    for r in VOTERS {
        let head = applied(&c.client(r)).await?.get(r).copied().unwrap_or(0);
        ensure!(head >= heads[r] + 4, "{r} wrote too little: {head}");
        heads_after.insert(r.to_string(), head);
    }
    wait_applied(c, &VOTERS, &heads_after).await?;
    // Its absence holds truncation back: every region has applied the new entries (and keeps
    // no retention), yet none truncates past what the replica applied, also once each has not
    // heard the replica for two maintenance intervals and more (maintenance runs every 5 s,
    // truncation with it): the bound is checked at every look, so a pass that truncated too far
    // would fail the test whenever it ran.
    let held_back = |o: &str, t: u64| {
        ensure!(
            t <= heads[o],
            "truncated {o} through {t}, past the {} the absent replica applied",
            heads[o]
        );
        Ok(true)
    };
    wait_truncated(c, "truncation held back", held_back).await?;
    for r in VOTERS {
        let cl = c.client(r);
        poll(WAIT, TICK, "the replica unheard for 12 s", || async {
            let t = truncated(&cl).await?;
            for o in [US, EU, AP, SA] {
                held_back(o, t.get(o).copied().unwrap_or(0)).with_context(|| format!("at {r}"))?;
            }
            let s = cl.status().await?;
            let p = atoll_testkit::cluster::peer_status(&s, SA).cloned();
            Ok(match p {
                Some(p)
                    if p["reachable"] == false
                        && p["last_heard_ms_ago"].as_u64().unwrap_or(0) >= 12_000 =>
                {
                    ControlFlow::Break(())
                }
                other => ControlFlow::Continue(format!("{r}: {other:?}")),
            })
        })
        .await?;
    }
    wait_truncated(c, "truncation held back", held_back).await?;

    // The three reload a config without the replica, one at a time.
    let four = std::fs::read_to_string(c.config_path())?;
    let old_path = c.dir().join("atoll-with-sa.toml");
    std::fs::write(&old_path, &four)?;
    let three = without_region(&four, SA);
    ensure!(
        !three.contains(SA) && three.matches("[[regions]]").count() == 3,
        "{three}"
    );
    std::fs::write(c.config_path(), &three)?;
    let mut reloaded: Vec<&str> = Vec::new();
    for r in VOTERS {
        sighup(c, r)?;
        reloaded.push(r);
        let cl = c.client(r);
        poll(WAIT, TICK, "removed", || async {
            let e = removed_entry(&cl, SA).await?;
            Ok(match e {
                Some(e) if e["effective"] == true => ControlFlow::Break(()),
                other => ControlFlow::Continue(format!("{r}: {other:?}")),
            })
        })
        .await?;
        wait_log(c, r, "region removed from the cluster").await?;
        let s = cl.status().await?;
        let regions = s["membership"]["regions"].to_string();
        ensure!(!regions.contains(SA), "{r}'s regions: {regions}");
        // Not settled while a region has not reloaded: it names them.
        if reloaded.len() < VOTERS.len() {
            let e = removed_entry(&cl, SA).await?.context("removed entry")?;
            ensure!(e["settled"] == false, "{r}: settled too early: {e}");
            let waiting = e["waiting_for"].to_string();
            for other in VOTERS.iter().filter(|o| !reloaded.contains(o)) {
                ensure!(
                    waiting.contains(other),
                    "{r} waits for {waiting}, not {other}"
                );
            }
            ensure!(
                metric(
                    &cl,
                    &format!("atoll_removed_region_settled{{region=\"{SA}\"}}")
                )
                .await?
                    == 0.0
            );
        }
    }
    // All three reloaded: the replica's writes are settled everywhere.
    for r in VOTERS {
        let cl = c.client(r);
        poll(WAIT, TICK, "settled", || async {
            let e = removed_entry(&cl, SA).await?;
            let gauge = metric(
                &cl,
                &format!("atoll_removed_region_settled{{region=\"{SA}\"}}"),
            )
            .await?;
            Ok(match e {
                Some(e) if e["settled"] == true && gauge == 1.0 => {
                    ensure!(e["applied_seq"] == sa_head, "{r}: {e}");
                    ControlFlow::Break(())
                }
                other => ControlFlow::Continue(format!("{r}: {other:?}, gauge {gauge}")),
            })
        })
        .await?;
    }
    // It is no peer any more: no link series of it is left to alert on.
    for r in VOTERS {
        let text = c.client(r).get_raw("/metrics").await?.expect(200)?.text();
        let stale: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("atoll_peer_reachable") && l.contains(SA))
            .collect();
        ensure!(stale.is_empty(), "{r} still exports {stale:?}");
    }
    // Truncation moves past what the replica never applied (up to the newest entry).
    wait_truncated(c, "truncation past the replica", |o, t| {
        Ok(o == SA || t == heads_after[o] - 1)
    })
    .await?;
    // Writes keep flowing between the three.
    c.client(EU)
        .kv_put("sessions", "after-removal", "still here", None)
        .await?;
    for r in [US, AP] {
        c.client(r)
            .wait_value("sessions", "after-removal", "still here", WAIT)
            .await?;
    }

    // The replica comes back on its old data directory with its old config: told it was
    // removed. (Not waiting for /healthz 200: it may learn it before the first look.)
    {
        let p = c.region_mut(SA);
        p.spec_mut().config = old_path.clone();
        p.spec_mut().wait_healthy = false;
    }
    c.restart(SA)?;
    let sa = c.client(SA);
    poll(WAIT, TICK, "the replica told it was removed", || async {
        let h = match sa.get_raw("/healthz").await {
            Ok(h) => h,
            Err(e) => return Ok(ControlFlow::Continue(format!("{e:#}"))),
        };
        let body = h.json().unwrap_or_default();
        Ok(if h.status == 503 && body["status"] == "removed" {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("{} {body}", h.status))
        })
    })
    .await?;
    let s = sa.status().await?;
    let by = &s["membership"]["removed_by"];
    ensure!(
        VOTERS.iter().any(|v| by["by"] == *v)
            && by["held_by_members"] == sa_head
            && by["unreplicated_writes"] == 0,
        "removed_by: {by}"
    );
    ensure!(metric(&sa, "atoll_region_removed").await? == 1.0);
    wait_log(c, SA, "this region was removed from the cluster").await?;
    // The others answered its heartbeats 410 (counted as refused: removed).
    let mut refused = 0.0;
    for r in VOTERS {
        refused += metric(
            &c.client(r),
            &format!("atoll_replication_heartbeats_refused_total{{peer_region=\"{SA}\",reason=\"removed\"}}"),
        )
        .await?;
    }
    ensure!(
        refused >= 1.0,
        "no heartbeat of the replica refused as removed"
    );
    // It refuses writes, and serves reads.
    let w = sa.kv_put_raw("sessions", "late", "x", None).await?;
    ensure!(
        w.status == 410,
        "a write at the removed replica: {}",
        w.status
    );
    ensure!(
        w.error_code().as_deref() == Some("ATOLL-REGION-REMOVED"),
        "{}",
        w.text()
    );
    ensure!(w.json()?["error"]["retryable"] == false, "{}", w.text());
    let read = sa.kv_get("sessions", &format!("{US}-1")).await?;
    ensure!(
        read.value().map(|v| v.to_vec()) == Some(b"v1".to_vec()),
        "a read at the removed replica: {read:?}"
    );

    // A reload that puts the removed region back is refused: its name is never reused.
    let us = c.client(US);
    let refused_before = metric(&us, "atoll_config_reloads_total{outcome=\"refused\"}").await?;
    std::fs::write(c.config_path(), &four)?;
    sighup(c, US)?;
    wait_refused(&us, refused_before + 1.0).await?;
    wait_log(c, US, "never reused").await?;
    // And one that removes a voter.
    std::fs::write(c.config_path(), without_region(&three, AP))?;
    sighup(c, US)?;
    wait_refused(&us, refused_before + 2.0).await?;
    wait_log(c, US, "is a voter").await?;
    // Neither changed anything: the three still replicate, the replica stays out.
    std::fs::write(c.config_path(), &three)?;
    us.kv_put("sessions", "last", "word", None).await?;
    for r in [EU, AP] {
        c.client(r)
            .wait_value("sessions", "last", "word", WAIT)
            .await?;
    }
    let s = us.status().await?;
    let regions = s["membership"]["regions"].to_string();
    ensure!(
        !regions.contains(SA) && regions.contains(AP),
        "us-east-1's regions: {regions}"
    );
    Ok(())
}

/// Waits until `region`'s log says `needle` (a line is written a moment after what it reports
/// is visible).
async fn wait_log(c: &Cluster, region: &str, needle: &str) -> Result<()> {
    poll(WAIT, TICK, "a log line", || async {
        Ok(if c.region(region).log().contains(needle) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("{region}'s log does not say `{needle}`"))
        })
    })
    .await
}

async fn wait_refused(c: &Client, at_least: f64) -> Result<()> {
    poll(WAIT, TICK, "refused reload", || async {
        let n = metric(c, "atoll_config_reloads_total{outcome=\"refused\"}").await?;
        Ok(if n >= at_least {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("{n} refused reloads"))
        })
    })
    .await
}

/// A replica removed while it runs and writes: the writes in flight at the removal end up held
/// by every remaining region alike (settled), the replica learns it was removed from the answers
/// to its heartbeats and refuses writes from then on, and says how many of its writes the
/// cluster does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_while_it_writes_settles_with_the_same_writes_everywhere() {
    let c = ok(Cluster::start(
        BIN,
        4,
        ClusterOptions::new("removing-live")
            .heartbeat_interval_ms(atoll_config::DEFAULT_HEARTBEAT_INTERVAL_MS)
            .replica(SA),
    ));
    ok(removed_live(&c).await);
}

async fn removed_live(c: &Cluster) -> Result<()> {
    let sa = c.client(SA);
    wait_admitted(&sa).await?;
    // The replica writes until it is refused.
    let writer = {
        let sa = sa.clone();
        tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                let r = sa
                    .kv_put_raw("sessions", &format!("live-{acked}"), "x", None)
                    .await?;
                if r.status != 200 {
                    return Ok::<_, anyhow::Error>((acked, r));
                }
                acked += 1;
            }
        })
    };
    // Some of its writes have reached the others: remove it from all three.
    wait_applied(c, &VOTERS, &BTreeMap::from([(SA.to_string(), 20)])).await?;
    let four = std::fs::read_to_string(c.config_path())?;
    std::fs::write(c.config_path(), without_region(&four, SA))?;
    for r in VOTERS {
        sighup(c, r)?;
    }
    // The replica learns it, and its next write is refused.
    let (acked, refusal) = tokio::time::timeout(WAIT, writer)
        .await
        .context("the replica was never refused a write")???;
    ensure!(
        refusal.status == 410,
        "{} {}",
        refusal.status,
        refusal.text()
    );
    ensure!(
        refusal.error_code().as_deref() == Some("ATOLL-REGION-REMOVED"),
        "{}",
        refusal.text()
    );
    // Every remaining region settles on the same number of its writes.
    let mut held = BTreeMap::new();
    for r in VOTERS {
        let cl = c.client(r);
        let n = poll(WAIT, TICK, "settled", || async {
            Ok(match removed_entry(&cl, SA).await? {
                Some(e) if e["settled"] == true => {
                    ControlFlow::Break(e["applied_seq"].as_u64().unwrap_or(0))
                }
                other => ControlFlow::Continue(format!("{r}: {other:?}")),
            })
        })
        .await?;
        held.insert(r, n);
    }
    let n = held[US];
    ensure!(held.values().all(|h| *h == n), "held: {held:?}");
    ensure!(n >= 20 && n <= acked, "held {n} of {acked} acknowledged");
    // The replica says so: what the cluster holds of its writes, and what it does not.
    let own = applied(&sa).await?.get(SA).copied().unwrap_or(0);
    ensure!(
        own == acked,
        "the replica made {own} writes, {acked} acknowledged"
    );
    poll(WAIT, TICK, "removed_by", || async {
        let s = sa.status().await?;
        let by = &s["membership"]["removed_by"];
        Ok(
            if by["held_by_members"] == n && by["unreplicated_writes"] == own - n {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(by.to_string())
            },
        )
    })
    .await?;
    let h = sa.get_raw("/healthz").await?;
    ensure!(
        h.status == 503 && h.json()?["status"] == "removed",
        "{}",
        h.text()
    );
    // Settled means nobody takes more of them: the same count a while later, at every region,
    // after more traffic between the three.
    c.client(AP)
        .kv_put("sessions", "after-live-removal", "yes", None)
        .await?;
    for r in [US, EU] {
        c.client(r)
            .wait_value("sessions", "after-live-removal", "yes", WAIT)
            .await?;
    }
    for r in VOTERS {
        let have = applied(&c.client(r)).await?.get(SA).copied().unwrap_or(0);
        ensure!(
            have == n,
            "{r} holds {have} of the replica's writes, not {n}"
        );
    }
    Ok(())
}
