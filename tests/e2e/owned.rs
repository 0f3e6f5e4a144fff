//! End-to-end: `owned` keyspaces (`docs/design/owned-keyspaces.md`) between real region
//! processes over mutual TLS, every inter-region byte through an in-process `atoll link` mesh,
//! with quorum fencing at its shipped defaults (lease 5 s).
//!
//! - a write reaching another region than the key's home is forwarded there and applied once by
//!   the home (`X-Atoll-Forwarded-To`, the answer's `region`); reads say the home and how stale
//!   they may be, or go to the home with `consistency=home`;
//! - with `forward = false` it is refused with `ATOLL-NOT-HOME`, naming the home, and not applied;
//! - homes by hash range and by first write: a key in a hash rule's range is applied by that
//!   rule's region; any other key is homed by the region that writes it first, also when two
//!   regions write a fresh key at the same time (both writes are applied by one home); such a
//!   key re-homes like any other;
//! - re-homing a key while one client writes it continuously: every acknowledged write was
//!   applied by the old home until the move and by the new one after, never both, none is lost,
//!   and no conflict is recorded anywhere;
//! - takeover: with the home killed (`kill -9`), the first region of the keyspace's takeover
//!   order takes its keys over after the home's lease, the move is reported as forced, and the
//!   keys take writes again;
//! - takeover of an isolated home (alive, cut off by `atoll link`): the home stops taking writes
//!   to its keys before the new home's first write, and after the heal it forwards them to the
//!   new home.
//!
//! Every load is bounded in requests and time, and every wait has a deadline.

use crate::common;

use anyhow::{Result, bail, ensure};
use atoll_config::Policy;
use atoll_config::render::KeyspaceToml;
use atoll_testkit::{Client, Cluster, ClusterOptions, poll};
use common::{BIN, ok};
use serde_json::{Value, json};
use std::ops::ControlFlow::{Break, Continue};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const TOKEN: &str = "owned-test-admin-token";
const LINK_DELAY_MS: f64 = 5.0;
const DEADLINE: Duration = Duration::from_secs(40);

/// The owned keyspaces (quorum fencing on: owned keyspaces move homes only through it).
fn owned_keyspaces(opts: ClusterOptions) -> ClusterOptions {
    opts.extra_config("[fencing]\nquorum = true")
        .keyspace(
            KeyspaceToml::new("profiles", Policy::Owned)
                .line("default_home = \"us-east-1\"")
                .line("homes = [{ prefix = \"eu:\", region = \"eu-west-1\" }, { prefix = \"ap:\", region = \"ap-southeast-1\" }]")
                .line("takeover = [\"us-east-1\", \"ap-southeast-1\"]"),
        )
        .keyspace(
            KeyspaceToml::new("pinned", Policy::Owned)
                .line("default_home = \"us-east-1\"")
                .line("forward = false"),
        )
        .keyspace(
            KeyspaceToml::new("accounts", Policy::Owned)
                .line("default_home = \"first-write\"")
                .line("homes = [{ hash = [0, 32767], region = \"ap-southeast-1\" }]"),
        )
}

fn start() -> Cluster {
    ok(Cluster::start(
        BIN,
        3,
        owned_keyspaces(ClusterOptions::new("owned"))
            .with_links(LINK_DELAY_MS)
            .env("ATOLL_ADMIN_TOKEN", TOKEN),
    ))
}

async fn wait_active(c: &Cluster, region: &str) -> Result<()> {
    let what = format!("{region} to become active");
    poll(DEADLINE, Duration::from_millis(50), &what, || async {
        Ok(match c.status(region).await {
            Ok(s) if s["fencing"]["role"] == "active" => Break(()),
            Ok(s) => Continue(format!("fencing status {}", s["fencing"])),
            Err(e) => Continue(format!("{e:#}")),
        })
    })
    .await
}

async fn get(c: &Cluster, region: &str, path: &str) -> Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .get(format!("{}{path}", c.endpoint(region)))
        .send()
        .await?)
}

async fn rehome(c: &Cluster, via: &str, body: Value) -> Result<(u16, Value)> {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?
        .post(format!("{}/v1/admin/rehome", c.endpoint(via)))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owned_keys_are_written_by_their_home_only() {
    let mut c = start();
    ok(forwarding_and_reads(&c).await);
    ok(not_home(&c).await);
    ok(hash_and_first_write(&c).await);
    ok(rehome_under_writes(&c).await);
    ok(bad_rehomes(&c).await);
    ok(takeover(&mut c).await);
}

async fn forwarding_and_reads(c: &Cluster) -> Result<()> {
    for r in [US, EU, AP] {
        wait_active(c, r).await?;
    }
    let r = c
        .client(US)
        .kv_put_raw("profiles", "eu:ana", "lisbon", None)
        .await?;
    ensure!(
        r.status == 200
            && r.header("x-atoll-forwarded-to") == Some(EU)
            && r.json()?["region"] == EU,
        "a write at us-east-1 to an eu: key is applied by eu-west-1: {} {:?} {}",
        r.status,
        r.header("x-atoll-forwarded-to"),
        r.text()
    );
    let at_home = c.client(EU).kv_get_raw("profiles", "eu:ana").await?;
    ensure!(
        at_home.status == 200
            && at_home.body == b"lisbon"
            && at_home.header("x-atoll-home") == Some(EU)
            && at_home.header("x-atoll-staleness-ms") == Some("0"),
        "read at the home: {} {:?}",
        at_home.status,
        at_home.headers
    );
    // At the home's consistency, through another region, at once (no replication wait).
    let home_read = get(c, AP, "/v1/kv/profiles/eu:ana?consistency=home").await?;
    ensure!(
        home_read.status() == 200
            && home_read
                .headers()
                .get("x-atoll-forwarded-to")
                .and_then(|v| v.to_str().ok())
                == Some(EU),
        "consistency=home: {:?}",
        home_read.headers()
    );
    ensure!(home_read.bytes().await?.as_ref() == b"lisbon");
    // A local read elsewhere says whose key it is and how stale it may be.
    let us = c.client(US);
    atoll_testkit::wait_until_async(DEADLINE, "eu:ana to replicate to us-east-1", || {
        let us = us.clone();
        async move {
            matches!(us.kv_get_raw("profiles", "eu:ana").await,
                Ok(r) if r.status == 200 && r.header("x-atoll-home") == Some(EU)
                    && r.header("x-atoll-staleness-ms").is_some_and(|s| s.parse::<u64>().is_ok()))
        }
    })
    .await?;
    // consistency takes two values, on owned keyspaces only.
    let bad = get(c, US, "/v1/kv/profiles/eu:ana?consistency=strict").await?;
    ensure!(bad.status() == 400, "bad consistency: {}", bad.status());
    let bad = get(c, US, "/v1/kv/sessions/x?consistency=home").await?;
    ensure!(
        bad.status() == 400,
        "consistency=home on lww: {}",
        bad.status()
    );
    Ok(())
}

async fn not_home(c: &Cluster) -> Result<()> {
    let r = c.client(EU).kv_put_raw("pinned", "p1", "x", None).await?;
    let j = r.json()?;
    ensure!(
        r.status == 421
            && r.error_code().as_deref() == Some("ATOLL-NOT-HOME")
            && j["error"]["message"]
                .as_str()
                .is_some_and(|m| { m.contains(US) && m.contains(&c.api_addr(US).to_string()) })
            && r.header("x-atoll-forwarded-to").is_none(),
        "forward = false refuses, naming the home and its address: {} {}",
        r.status,
        r.text()
    );
    let home = c.client(US).kv_get_raw("pinned", "p1").await?;
    ensure!(
        home.status == 404,
        "the refused write was applied: {}",
        home.text()
    );
    // A write marked as forwarded is never forwarded again, even where forwarding is on.
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/kv/profiles/eu:loop", c.endpoint(US)))
        .header("x-atoll-forwarded-by", AP)
        .body("v")
        .send()
        .await?;
    let status = resp.status().as_u16();
    ensure!(
        status == 421 && resp.headers().get("x-atoll-forwarded-to").is_none(),
        "a forwarded write is not forwarded again: {status}"
    );
    Ok(())
}

/// `n` keys of `accounts` (`h0`, `h1`, ...) whose hash bucket is in the ap-southeast-1 rule's
/// range (`low`) or not.
fn accounts_keys(low: bool, n: usize) -> Vec<String> {
    (0u32..)
        .map(|i| format!("h{i}"))
        .filter(|k| (atoll_core::home::key_bucket(k.as_bytes()) <= 32767) == low)
        .take(n)
        .collect()
}

/// Writes through `via` until the write is not refused as moving (a region answers
/// `ATOLL-HOME-UNAVAILABLE`, applying nothing, until it has applied the end of a move that the
/// proposer has already seen).
async fn put_after_move(
    c: &Cluster,
    via: &str,
    key: &str,
    value: &str,
) -> Result<atoll_testkit::Reply> {
    let end = Instant::now() + DEADLINE;
    loop {
        let r = c
            .client(via)
            .kv_put_raw("accounts", key, value, None)
            .await?;
        if r.error_code().as_deref() != Some("ATOLL-HOME-UNAVAILABLE") || Instant::now() >= end {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn applied_by(r: &atoll_testkit::Reply) -> String {
    r.json()
        .ok()
        .and_then(|j| j["region"].as_str().map(str::to_string))
        .unwrap_or_default()
}

async fn hash_and_first_write(c: &Cluster) -> Result<()> {
    let low = accounts_keys(true, 1);
    let high = accounts_keys(false, 3);
    // A hash rule homes its range wherever the write arrives.
    let r = c
        .client(US)
        .kv_put_raw("accounts", &low[0], "x", None)
        .await?;
    ensure!(
        r.status == 200 && applied_by(&r) == AP && r.header("x-atoll-forwarded-to") == Some(AP),
        "a key in the hash rule's range is applied by ap-southeast-1: {} {}",
        r.status,
        r.text()
    );
    // Any other key: its first write homes it where it was written.
    let first = c
        .client(EU)
        .kv_put_raw("accounts", &high[0], "first", None)
        .await?;
    ensure!(
        first.status == 200
            && applied_by(&first) == EU
            && first.header("x-atoll-forwarded-to").is_none(),
        "the first write of {} is applied where it arrived: {} {}",
        high[0],
        first.status,
        first.text()
    );
    for via in [US, AP] {
        let r = c
            .client(via)
            .kv_put_raw("accounts", &high[0], via, None)
            .await?;
        ensure!(
            r.status == 200 && applied_by(&r) == EU && r.header("x-atoll-forwarded-to") == Some(EU),
            "a later write through {via} goes to the first writer eu-west-1: {} {}",
            r.status,
            r.text()
        );
    }
    let home_read = get(
        c,
        US,
        &format!("/v1/kv/accounts/{}?consistency=home", high[0]),
    )
    .await?;
    ensure!(
        home_read.status() == 200,
        "home read: {}",
        home_read.status()
    );
    ensure!(
        home_read.bytes().await?.as_ref() == AP.as_bytes(),
        "home read sees the last write"
    );
    // Two regions write a fresh key at the same time: one of them becomes its home and applies
    // both writes.
    let (us, ap) = (c.client(US), c.client(AP));
    let (a, b) = tokio::join!(
        us.kv_put_raw("accounts", &high[1], "from-us", None),
        ap.kv_put_raw("accounts", &high[1], "from-ap", None)
    );
    let (a, b) = (a?, b?);
    ensure!(
        a.status == 200
            && b.status == 200
            && applied_by(&a) == applied_by(&b)
            && [US, AP].contains(&applied_by(&a).as_str()),
        "concurrent first writes are applied by one home: {} {} / {} {}",
        a.status,
        a.text(),
        b.status,
        b.text()
    );
    // A key nobody wrote has no home: a home read says it does not exist, at once.
    let never = get(
        c,
        EU,
        &format!("/v1/kv/accounts/{}?consistency=home", high[2]),
    )
    .await?;
    ensure!(never.status() == 404, "never written: {}", never.status());
    // Every region learns the claims (2 keys homed by first write).
    for r in [US, EU, AP] {
        atoll_testkit::wait_until_async(DEADLINE, "the claims to show in status", || async move {
            c.status(r)
                .await
                .is_ok_and(|s| s["homes"]["keyspaces"]["accounts"]["claimed_keys"] == 2)
        })
        .await?;
    }
    let metrics = get(c, EU, "/metrics").await?.text().await?;
    ensure!(
        metrics.contains("atoll_owned_claims_total{keyspace=\"accounts\",value=\"eu-west-1\"} 1"),
        "eu-west-1 counts its claim"
    );
    // A claimed key re-homes like any other; a prefix whose keys the hash rule spreads does not.
    let (status, report) = rehome(
        c,
        US,
        json!({"keyspace": "accounts", "key": high[0], "to": US}),
    )
    .await?;
    ensure!(
        status == 200 && report["outcome"] == "handed",
        "rehome of a claimed key: {status} {report}"
    );
    let r = put_after_move(c, EU, &high[0], "moved").await?;
    ensure!(
        r.status == 200 && applied_by(&r) == US,
        "after the move us-east-1 applies it: {} {}",
        r.status,
        r.text()
    );
    let (status, report) = rehome(
        c,
        US,
        json!({"keyspace": "accounts", "prefix": "h", "to": US}),
    )
    .await?;
    ensure!(
        status == 409 && report.to_string().contains("hash rules"),
        "a prefix across hash rules has no single home: {status} {report}"
    );
    let (status, report) = rehome(
        c,
        US,
        json!({"keyspace": "accounts", "hash": [0, 32767], "to": EU}),
    )
    .await?;
    ensure!(
        status == 200 && report["outcome"] == "handed",
        "rehome of a hash rule: {status} {report}"
    );
    let r = put_after_move(c, AP, &low[0], "y").await?;
    ensure!(
        r.status == 200 && applied_by(&r) == EU,
        "after the move eu-west-1 applies the hash range: {} {}",
        r.status,
        r.text()
    );
    Ok(())
}

/// One acknowledged write: its value, the region that applied it, its HLC timestamp and when
/// the request went out and its answer came back (the test's clock).
#[derive(Clone, Debug)]
struct Ack {
    value: String,
    origin: String,
    ts: atoll_testkit::Ts,
    sent: Instant,
    answered: Instant,
}

/// Writes `key` sequentially through `via` until `stop` (bounded in count and time too),
/// counting acknowledged writes in `acks`; moving keys are refused (retryable, not applied) and
/// retried.
async fn writer(
    client: Client,
    key: &'static str,
    tag: &'static str,
    acks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<Ack>, u32)> {
    let mut acked = Vec::new();
    let mut refused = 0u32;
    let started = Instant::now();
    for i in 0..4_000u32 {
        if stop.load(Ordering::SeqCst) || started.elapsed() > DEADLINE {
            break;
        }
        let value = format!("{tag}{i}");
        let sent = Instant::now();
        let r = client
            .kv_put_raw("profiles", key, value.clone(), None)
            .await?;
        let answered = Instant::now();
        if r.status == 200 {
            let j = r.json()?;
            acked.push(Ack {
                value,
                origin: j["region"].as_str().unwrap_or_default().to_string(),
                ts: atoll_testkit::Ts::parse(j["timestamp"].as_str().unwrap_or_default())?,
                sent,
                answered,
            });
            acks.fetch_add(1, Ordering::SeqCst);
        } else {
            ensure!(
                r.error_code().as_deref() == Some("ATOLL-HOME-UNAVAILABLE"),
                "unexpected answer {} {}",
                r.status,
                r.text()
            );
            refused += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok((acked, refused))
}

/// Two clients write `eu:bob` continuously, one through ap-southeast-1 and one through
/// us-east-1 (both forward to the home), while the key is re-homed from eu-west-1 to us-east-1.
async fn rehome_under_writes(c: &Cluster) -> Result<()> {
    let (acks_a, acks_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let a = tokio::spawn(writer(
        c.client(AP),
        "eu:bob",
        "a",
        acks_a.clone(),
        stop.clone(),
    ));
    let b = tokio::spawn(writer(
        c.client(US),
        "eu:bob",
        "b",
        acks_b.clone(),
        stop.clone(),
    ));
    // Some writes of each client land at the old home first, and some at the new one after.
    let both_past = |n: (usize, usize)| {
        let (a, b) = (acks_a.clone(), acks_b.clone());
        move || {
            let ok = a.load(Ordering::SeqCst) >= n.0 + 10 && b.load(Ordering::SeqCst) >= n.1 + 10;
            async move { ok }
        }
    };
    let moved = async {
        atoll_testkit::wait_until_async(
            DEADLINE,
            "10 writes of each client at the old home",
            both_past((0, 0)),
        )
        .await?;
        let result = rehome(
            c,
            AP,
            json!({"keyspace": "profiles", "key": "eu:bob", "to": US, "timeout_ms": 20_000}),
        )
        .await?;
        let (status, report) = result;
        ensure!(
            status == 200 && report["outcome"] == "handed" && report["lost_ops"] == 0,
            "the move: {status} {report}"
        );
        let after = (acks_a.load(Ordering::SeqCst), acks_b.load(Ordering::SeqCst));
        let stopped_ms = report["writes_stopped_ms"].clone();
        atoll_testkit::wait_until_async(
            DEADLINE,
            "10 writes of each client after the move",
            both_past(after),
        )
        .await?;
        Ok(stopped_ms)
    }
    .await;
    stop.store(true, Ordering::SeqCst);
    let stopped_ms = moved?;
    let (acked_a, refused_a) = a.await??;
    let (acked_b, refused_b) = b.await??;
    for acked in [&acked_a, &acked_b] {
        ensure!(acked.len() > 10, "too few writes to judge: {}", acked.len());
        // Each client: old home up to the move, new home after it; never back.
        let Some(first_us) = acked.iter().position(|w| w.origin == US) else {
            bail!("no write was applied by the new home after the move: {acked:?}");
        };
        ensure!(
            first_us > 0 && acked[..first_us].iter().all(|w| w.origin == EU),
            "{acked:?}"
        );
        ensure!(
            acked[first_us..].iter().all(|w| w.origin == US),
            "a write applied by the old home after the move: {acked:?}"
        );
    }
    // Never both homes: no write the old home applied was sent after a write of the new home
    // had been acknowledged.
    let all: Vec<&Ack> = acked_a.iter().chain(&acked_b).collect();
    let first_new = all
        .iter()
        .filter(|w| w.origin == US)
        .map(|w| w.answered)
        .min();
    if let Some(t) = first_new {
        let late: Vec<_> = all
            .iter()
            .filter(|w| w.origin == EU && w.sent > t)
            .collect();
        ensure!(
            late.is_empty(),
            "the old home applied writes sent after the new home had acknowledged one: {late:?}"
        );
    }
    // Nothing acknowledged is lost: the acknowledged write with the newest timestamp is the
    // value everywhere, and every timestamp of the new home is newer than every one of the old.
    let newest = all
        .iter()
        .max_by_key(|w| w.ts)
        .map(|w| w.value.clone())
        .unwrap_or_default();
    let old_max = all.iter().filter(|w| w.origin == EU).map(|w| w.ts).max();
    let new_min = all.iter().filter(|w| w.origin == US).map(|w| w.ts).min();
    ensure!(
        old_max < new_min,
        "timestamps of the homes interleave: {old_max:?} {new_min:?}"
    );
    for r in [US, EU, AP] {
        let client = c.client(r);
        let want = newest.clone();
        atoll_testkit::wait_until_async(DEADLINE, &format!("{r} to read {newest}"), || {
            let client = client.clone();
            let want = want.clone();
            async move {
                matches!(client.kv_get_raw("profiles", "eu:bob").await,
                    Ok(x) if x.status == 200 && x.body == want.as_bytes())
            }
        })
        .await?;
        let conflicts: Value = get(c, r, "/v1/conflicts/profiles").await?.json().await?;
        ensure!(
            conflicts["conflicts"].as_array().is_some_and(Vec::is_empty),
            "{r} recorded conflicts on an owned keyspace: {conflicts}"
        );
    }
    // The status shows the override and the finished move.
    let st = c.status(EU).await?;
    let homes = &st["homes"]["keyspaces"]["profiles"];
    ensure!(
        homes["overrides"].as_array().is_some_and(|o| o
            .iter()
            .any(|x| x["selector"]["key"] == "eu:bob" && x["home"] == US)),
        "status: {homes}"
    );
    eprintln!(
        "re-homing under writes: {} acknowledged, {} refused while moving, writes stopped for {} ms",
        all.len(),
        refused_a + refused_b,
        stopped_ms
    );
    Ok(())
}

async fn bad_rehomes(c: &Cluster) -> Result<()> {
    let cases = [
        (json!({"keyspace": "sessions", "key": "k", "to": EU}), 409),
        (
            json!({"keyspace": "profiles", "key": "k", "prefix": "p", "to": EU}),
            400,
        ),
        (
            json!({"keyspace": "profiles", "key": "us:1", "to": "mars-1"}),
            409,
        ),
        (
            json!({"keyspace": "profiles", "key": "us:1", "to": US}),
            409,
        ),
        (json!({"keyspace": "profiles", "to": US, "extra": 1}), 400),
    ];
    for (body, want) in cases {
        let (status, v) = rehome(c, US, body.clone()).await?;
        ensure!(status == want, "{body}: {status} {v}");
    }
    // Without the admin token.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/admin/rehome", c.endpoint(US)))
        .json(&json!({"keyspace": "profiles", "key": "us:1", "to": EU}))
        .send()
        .await?;
    ensure!(r.status() == 401, "no token: {}", r.status());
    Ok(())
}

async fn takeover(c: &mut Cluster) -> Result<()> {
    let ap = c.client(AP);
    ap.kv_put_raw("profiles", "eu:carla", "porto", None)
        .await?
        .expect(200)?;
    c.kill9(EU)?;
    let killed = Instant::now();
    // us-east-1 (first of the order) takes eu-west-1's keys over after its lease.
    let us: Client = c.client(US);
    let end = Instant::now() + Duration::from_secs(45);
    let origin = loop {
        let r = us.kv_put_raw("profiles", "eu:carla", "braga", None).await?;
        if r.status == 200 {
            break r.json()?["region"].as_str().unwrap_or_default().to_string();
        }
        ensure!(
            matches!(
                r.error_code().as_deref(),
                Some("ATOLL-HOME-UNAVAILABLE" | "ATOLL-FORWARD-OUTCOME-UNKNOWN")
            ),
            "while the home is down: {} {}",
            r.status,
            r.text()
        );
        if Instant::now() > end {
            bail!("no takeover within 45 s: {}", r.text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(origin == US, "taken over by {origin}");
    let took = killed.elapsed();
    ensure!(
        took >= Duration::from_secs(5),
        "taken over within the lease: {took:?}"
    );
    let st = c.status(US).await?;
    let moves = st["homes"]["keyspaces"]["profiles"]["moves"].clone();
    ensure!(
        moves
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x["outcome"] == "forced"
                && x["from"] == EU
                && x["to"] == US
                && x["takeover"] == true)),
        "the takeover is reported: {moves}"
    );
    eprintln!("takeover of a killed home: writable again after {took:?}; report {moves}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_home_stops_before_its_keys_are_taken_over() {
    let c = start();
    ok(isolated_home(&c).await);
}

async fn isolated_home(c: &Cluster) -> Result<()> {
    for r in [US, EU, AP] {
        wait_active(c, r).await?;
    }
    let eu = c.client(EU);
    eu.kv_put_raw("profiles", "eu:dora", "faro", None)
        .await?
        .expect(200)?;
    c.partition(EU, US)?;
    c.partition(EU, AP)?;
    // The isolated home keeps trying; the majority side keeps trying through us-east-1.
    let us = c.client(US);
    let end = Instant::now() + Duration::from_secs(45);
    let mut last_home_ack: Option<Instant> = None;
    let first_new_ack = loop {
        let sent = Instant::now();
        let r = eu.kv_put_raw("profiles", "eu:dora", "home", None).await?;
        if r.status == 200 {
            last_home_ack = Some(sent);
        }
        // Forwarded to the old home (the client APIs are not behind the links) until the
        // takeover: applied there while its quorum window lasts, refused after.
        let sent = Instant::now();
        let r = us.kv_put_raw("profiles", "eu:dora", "new", None).await?;
        if r.status == 200 {
            if r.json()?["region"] == US {
                break Instant::now();
            }
            ensure!(r.json()?["region"] == EU, "{}", r.text());
            last_home_ack = Some(sent);
        }
        if Instant::now() > end {
            bail!("no takeover of the isolated home within 45 s: {}", r.text());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The old home's last acknowledged write came before the new home's first.
    if let Some(t) = last_home_ack {
        ensure!(
            t < first_new_ack,
            "the isolated home acknowledged a write after the takeover"
        );
    }
    let r = eu.kv_put_raw("profiles", "eu:dora", "late", None).await?;
    ensure!(
        r.status != 200,
        "the isolated old home still writes: {}",
        r.text()
    );
    c.heal_all()?;
    // After the heal the old home learns the move and forwards its former keys.
    let eu2 = eu.clone();
    atoll_testkit::wait_until_async(
        DEADLINE,
        "eu-west-1 to forward eu:dora to us-east-1",
        || {
            let eu = eu2.clone();
            async move {
                matches!(eu.kv_put_raw("profiles", "eu:dora", "after", None).await,
                Ok(r) if r.status == 200 && r.header("x-atoll-forwarded-to") == Some(US))
            }
        },
    )
    .await?;
    let st = c.status(US).await?;
    let moves = st["homes"]["keyspaces"]["profiles"]["moves"].clone();
    ensure!(
        moves.as_array().is_some_and(|m| m
            .iter()
            .any(|x| x["from"] == EU && x["to"] == US && x["takeover"] == true)),
        "the takeover is reported: {moves}"
    );
    Ok(())
}
