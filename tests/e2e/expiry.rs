//! End-to-end: expiring keys on three real region processes (`docs/design/expiring-keys.md`),
//! at the shipped defaults (heartbeats every 1 s, maintenance every 5 s).
//!
//! - a session written with `atoll kv put --ttl` replicates with the same expiry instant to
//!   every region, reads as live in each until that instant and as absent from it (judged against
//!   this machine's clock, which every region reads: a region that answered 404 must have
//!   answered after the expiry, one that answered the value before it), and is then collected in
//!   every region (`atoll_expired_collected_total`);
//! - `atoll kv persist` removes an expiry everywhere (the key outlives its old expiry in every
//!   region), `atoll kv expire` sets one, and a write after expiry revives the key;
//! - an mvr sibling written with `--ttl` beside one without expires at the same instant in every
//!   region, the other staying, and is collected in every region;
//! - a session written while a region is cut off reaches it seconds late, after the heal, with
//!   its writer's expiry instant, and that region hides it at that instant.
//!
//! Region-to-region traffic runs through a link mesh (1 ms each way) so that the partition can be
//! cut; nothing else deviates from the shipped defaults.
//!
//! Every wait has a deadline.

use crate::common::{self, BIN, metric, ok};
use anyhow::{Context, Result, bail, ensure};
use atoll_core::clock::Clock as _;
use atoll_testkit::{Client, Cluster, ClusterOptions, poll, run_with_timeout};
use std::ops::ControlFlow;
use std::process::Command;
use std::time::Duration;

const US: &str = "us-east-1";

/// This machine's clock, in ms since the epoch (every region process reads the same one).
fn now_ms() -> u64 {
    atoll_core::clock::SystemClock.physical_ms()
}

/// `atoll ARGS... --endpoint ENDPOINT`: its stdout and stderr; fails unless it exited 0.
fn atoll(args: &[&str], endpoint: &str) -> Result<(String, String)> {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--endpoint", endpoint])
        .env_remove("ATOLL_ENDPOINT")
        .env_remove("ATOLL_TOKEN")
        .env("NO_COLOR", "1");
    let out = run_with_timeout(cmd, Duration::from_secs(30))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    ensure!(
        out.status.success(),
        "atoll {args:?} failed:\n{stdout}\n{stderr}"
    );
    Ok((stdout, stderr))
}

/// A read of `sessions/key`: `Some((value, expires_at_ms))` or `None` (404), with the machine's
/// clock just before the request and just after the answer.
async fn read(c: &Client, key: &str) -> Result<(Option<(String, Option<u64>)>, u64, u64)> {
    let before = now_ms();
    let r = c.kv_get_raw("sessions", key).await?;
    let after = now_ms();
    let seen = match r.status {
        200 => Some((
            r.text(),
            r.header("x-atoll-expires-at")
                .map(|e| e.parse::<u64>())
                .transpose()
                .context("X-Atoll-Expires-At is a number")?,
        )),
        404 => None,
        other => bail!("GET sessions/{key}: HTTP {other}: {}", r.text()),
    };
    Ok((seen, before, after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_expires_at_the_same_instant_in_every_region_and_is_collected() {
    let c = ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("expiry")
            .heartbeat_interval_ms(atoll_config::DEFAULT_HEARTBEAT_INTERVAL_MS)
            .with_links(1.0),
    ));
    ok(expires(&c).await);
}

async fn expires(c: &Cluster) -> Result<()> {
    c.wait_converged(common::DEADLINE).await?;
    let (out, _) = atoll(
        &["kv", "put", "sessions", "s1", "token-1", "--ttl", "4s"],
        &c.endpoint(US),
    )?;
    ensure!(out.contains("expires: at "), "no expiry shown: {out}");
    // Every region gets the value with the same expiry instant.
    let mut expiry = None;
    for name in c.names() {
        let client = c.client(&name);
        let seen = poll(
            common::DEADLINE,
            Duration::from_millis(50),
            "replication",
            || {
                let client = client.clone();
                async move {
                    let (seen, before, _) = read(&client, "s1").await?;
                    Ok(match seen {
                        Some((v, e)) if v == "token-1" => ControlFlow::Break((e, before)),
                        other => ControlFlow::Continue(format!("{other:?}")),
                    })
                }
            },
        )
        .await
        .with_context(|| format!("{name} never read the session"))?;
        let (Some(e), before) = seen else {
            bail!("{name} read the session without X-Atoll-Expires-At");
        };
        ensure!(before < e, "{name} served the session after its expiry");
        match expiry {
            None => expiry = Some(e),
            Some(first) => ensure!(
                first == e,
                "{name} holds expiry {e}, another region {first}: not the same instant"
            ),
        }
    }
    let expiry = expiry.context("no region")?;
    let (out, _) = atoll(&["kv", "ttl", "sessions", "s1"], &c.endpoint(&c.names()[1]))?;
    ensure!(
        out.contains(&format!("at {expiry} ms")),
        "kv ttl in another region: {out}"
    );
    // Read every region until each answers 404; every answer must agree with the clock.
    for name in c.names() {
        expires_at(&c.client(&name), &name, "s1", expiry).await?;
    }
    // Collected in every region once every region has applied everything stamped before the
    // expiry (heartbeats every 1 s, maintenance every 5 s).
    for name in c.names() {
        let client = c.client(&name);
        poll(
            Duration::from_secs(60),
            Duration::from_millis(500),
            "collection",
            || {
                let client = client.clone();
                async move {
                    let n = metric(&client, "atoll_expired_collected_total").await?;
                    Ok(if n >= 1.0 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(format!("{n} collected"))
                    })
                }
            },
        )
        .await
        .with_context(|| format!("{name} never collected the expired session"))?;
    }
    // A write after the expiry revives the key, without expiry, everywhere.
    c.client(US)
        .kv_put("sessions", "s1", "token-2", None)
        .await?;
    for name in c.names() {
        c.client(&name)
            .wait_value("sessions", "s1", "token-2", common::DEADLINE)
            .await?;
        let (seen, _, _) = read(&c.client(&name), "s1").await?;
        ensure!(
            matches!(&seen, Some((_, None))),
            "{name}: the revived key has an expiry: {seen:?}"
        );
    }
    persist_and_expire(c).await?;
    a_cart_sibling_expires(c).await?;
    a_session_that_arrives_late_keeps_its_writers_expiry(c).await
}

/// `atoll kv persist` and `atoll kv expire`, written in one region, take effect in all.
async fn persist_and_expire(c: &Cluster) -> Result<()> {
    let other = c.names()[2].clone();
    atoll(
        &["kv", "put", "sessions", "s2", "keep-me", "--ttl", "3s"],
        &c.endpoint(US),
    )?;
    c.client(&other)
        .wait_value("sessions", "s2", "keep-me", common::DEADLINE)
        .await?;
    let old = match read(&c.client(&other), "s2").await?.0 {
        Some((_, Some(e))) => e,
        seen => bail!("{other}: s2 should expire: {seen:?}"),
    };
    let (out, _) = atoll(&["kv", "persist", "sessions", "s2"], &c.endpoint(&other))?;
    ensure!(out.contains("never expires"), "kv persist: {out}");
    // Every region holds the persisted write (no expiry) ...
    for name in c.names() {
        let client = c.client(&name);
        poll(
            common::DEADLINE,
            Duration::from_millis(50),
            "persist",
            || {
                let client = client.clone();
                async move {
                    let (seen, _, _) = read(&client, "s2").await?;
                    Ok(match seen {
                        Some((v, None)) if v == "keep-me" => ControlFlow::Break(()),
                        other => ControlFlow::Continue(format!("{other:?}")),
                    })
                }
            },
        )
        .await
        .with_context(|| format!("{name}: the persist did not arrive"))?;
    }
    // ... and still serves it after the old expiry.
    poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the old expiry to pass",
        || async move {
            Ok(if now_ms() > old {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("{}", now_ms()))
            })
        },
    )
    .await?;
    for name in c.names() {
        let (seen, _, _) = read(&c.client(&name), "s2").await?;
        ensure!(
            matches!(&seen, Some((v, None)) if v == "keep-me"),
            "{name}: the persisted key is gone after its old expiry: {seen:?}"
        );
    }
    // Persisting again writes nothing; expiring sets a new expiry everywhere.
    let (out, _) = atoll(&["kv", "persist", "sessions", "s2"], &c.endpoint(US))?;
    ensure!(out.contains("nothing written"), "second persist: {out}");
    let (out, _) = atoll(&["kv", "expire", "sessions", "s2", "1h"], &c.endpoint(US))?;
    ensure!(out.contains("expires: at "), "kv expire: {out}");
    for name in c.names() {
        let client = c.client(&name);
        poll(
            common::DEADLINE,
            Duration::from_millis(50),
            "expire",
            || {
                let client = client.clone();
                async move {
                    let (seen, _, _) = read(&client, "s2").await?;
                    Ok(match seen {
                        Some((_, Some(e))) if e > now_ms() + 3_000_000 => ControlFlow::Break(()),
                        other => ControlFlow::Continue(format!("{other:?}")),
                    })
                }
            },
        )
        .await
        .with_context(|| format!("{name}: the new expiry did not arrive"))?;
    }
    Ok(())
}

/// A read of `carts/key`: its live siblings `(value, expires_at_ms)` (empty: 404), with the
/// machine's clock just before the request and just after the answer.
async fn read_cart(c: &Client, key: &str) -> Result<(Vec<(String, Option<u64>)>, u64, u64)> {
    let before = now_ms();
    let r = c.kv_get_raw("carts", key).await?;
    let after = now_ms();
    let expires = |v: Option<&str>| v.map(str::parse::<u64>).transpose();
    let seen = match r.status {
        200 => vec![(
            r.text(),
            expires(r.header("x-atoll-expires-at")).context("X-Atoll-Expires-At")?,
        )],
        300 => r.json()?["siblings"]
            .as_array()
            .context("siblings")?
            .iter()
            .map(|s| {
                (
                    s["value"].as_str().unwrap_or("?").to_string(),
                    s["expires_at_ms"].as_u64(),
                )
            })
            .collect(),
        404 => Vec::new(),
        other => bail!("GET carts/{key}: HTTP {other}: {}", r.text()),
    };
    Ok((seen, before, after))
}

/// An mvr sibling written with a ttl, concurrent with one written without: the first expires
/// at the same instant in every region (the other stays), and is collected in every region.
async fn a_cart_sibling_expires(c: &Cluster) -> Result<()> {
    let mut collected_before = Vec::new();
    for name in c.names() {
        collected_before.push(metric(&c.client(&name), "atoll_expired_collected_total").await?);
    }
    let (out, _) = atoll(
        &["kv", "put", "carts", "c1", "apple", "--ttl", "4s"],
        &c.endpoint(US),
    )?;
    ensure!(out.contains("expires: at "), "no expiry shown: {out}");
    // Without a context: a sibling beside the apple, never expiring.
    atoll(
        &["kv", "put", "carts", "c1", "pear"],
        &c.endpoint(&c.names()[1]),
    )?;
    let mut expiry = None;
    for name in c.names() {
        let client = c.client(&name);
        let (e, before) = poll(
            common::DEADLINE,
            Duration::from_millis(50),
            "siblings",
            || {
                let client = client.clone();
                async move {
                    let (seen, before, _) = read_cart(&client, "c1").await?;
                    let apple = seen.iter().find(|(v, _)| v == "apple").map(|(_, e)| *e);
                    let pear = seen.iter().find(|(v, _)| v == "pear").map(|(_, e)| *e);
                    Ok(match (apple, pear) {
                        (Some(Some(e)), Some(None)) => ControlFlow::Break((e, before)),
                        _ => ControlFlow::Continue(format!("{seen:?}")),
                    })
                }
            },
        )
        .await
        .with_context(|| format!("{name} never held both siblings, the apple expiring"))?;
        ensure!(before < e, "{name} served the apple after its expiry");
        match expiry {
            None => expiry = Some(e),
            Some(first) => ensure!(
                first == e,
                "{name} holds the apple expiring {e}, another region {first}"
            ),
        }
    }
    let expiry = expiry.context("no region")?;
    // Every region drops the apple from its reads at the expiry, by its own clock, and keeps
    // the pear.
    for name in c.names() {
        let client = c.client(&name);
        poll(common::DEADLINE, Duration::from_millis(20), "sibling expiry", || {
            let client = client.clone();
            let name = name.clone();
            async move {
                let (seen, before, after) = read_cart(&client, "c1").await?;
                let values: Vec<&str> = seen.iter().map(|(v, _)| v.as_str()).collect();
                Ok(match values.as_slice() {
                    ["pear"] if after < expiry => bail!(
                        "{name} left the apple out before its expiry ({after} < {expiry})"
                    ),
                    ["pear"] => ControlFlow::Break(()),
                    _ if before >= expiry => {
                        bail!("{name} served {values:?} after the apple's expiry ({before} >= {expiry})")
                    }
                    _ => ControlFlow::Continue(format!("{values:?} at {before}")),
                })
            }
        })
        .await?;
    }
    // Collected in every region (the key and its pear stay).
    for (name, before) in c.names().into_iter().zip(collected_before) {
        let client = c.client(&name);
        poll(
            Duration::from_secs(60),
            Duration::from_millis(500),
            "sibling collection",
            || {
                let client = client.clone();
                async move {
                    let n = metric(&client, "atoll_expired_collected_total").await?;
                    Ok(if n > before {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(format!("{n} collected"))
                    })
                }
            },
        )
        .await
        .with_context(|| format!("{name} never collected the expired sibling"))?;
        let (seen, _, _) = read_cart(&client, "c1").await?;
        ensure!(
            seen == vec![("pear".to_string(), None)],
            "{name} after collection: {seen:?}"
        );
    }
    Ok(())
}

/// Written while a region is cut off, a session reaches it only after the partition heals,
/// seconds later: it arrives with its writer's expiry instant (not the time to live counted from
/// its arrival), and that region hides it at that instant like the others.
async fn a_session_that_arrives_late_keeps_its_writers_expiry(c: &Cluster) -> Result<()> {
    let names = c.names();
    let (eu, ap) = (names[1].clone(), names[2].clone());
    // Cut off from both others (a relay through the third would deliver it).
    c.partition(US, &ap)?;
    c.partition(&eu, &ap)?;
    let r = c
        .client(US)
        .request_raw(
            reqwest::Method::PUT,
            "/v1/kv/sessions/s3?ttl=6s",
            &[],
            "token-3",
        )
        .await?;
    ensure!(r.status == 200, "put: {} {}", r.status, r.text());
    let expiry = r.json()?["expires_at_ms"]
        .as_u64()
        .context("the ack carries expires_at_ms")?;
    // A replication delay of two seconds: the scenario, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, _, _) = read(&c.client(&ap), "s3").await?;
    ensure!(
        seen.is_none(),
        "{ap} read the session through the partition: {seen:?}"
    );
    c.heal_all()?;
    let client = c.client(&ap);
    let got = poll(
        common::DEADLINE,
        Duration::from_millis(50),
        "late arrival",
        || {
            let client = client.clone();
            async move {
                let (seen, _, _) = read(&client, "s3").await?;
                Ok(match seen {
                    Some((v, e)) if v == "token-3" => ControlFlow::Break(e),
                    other => ControlFlow::Continue(format!("{other:?}")),
                })
            }
        },
    )
    .await
    .with_context(|| format!("{ap} never received the session after the heal"))?;
    ensure!(
        got == Some(expiry),
        "{ap} holds expiry {got:?} for a session its writer stamped to expire at {expiry}"
    );
    expires_at(&client, &ap, "s3", expiry).await
}

/// Reads `sessions/key` in region `name` until it answers 404; every answer must agree with
/// this machine's clock: live only before `expiry`, absent only from it.
async fn expires_at(client: &Client, name: &str, key: &str, expiry: u64) -> Result<()> {
    poll(
        common::DEADLINE,
        Duration::from_millis(20),
        "expiry",
        || {
            let client = client.clone();
            async move {
                let (seen, before, after) = read(&client, key).await?;
                Ok(match seen {
                    None if after < expiry => {
                        bail!("{name} read {key} as absent before its expiry ({after} < {expiry})")
                    }
                    None => ControlFlow::Break(()),
                    Some(_) if before >= expiry => {
                        bail!("{name} served {key} after its expiry ({before} >= {expiry})")
                    }
                    Some(_) => ControlFlow::Continue(format!("live at {before}")),
                })
            }
        },
    )
    .await
}
