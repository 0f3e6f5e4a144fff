//! End-to-end: session tokens and bounded staleness across real region processes
//! (`docs/design/session-consistency.md`). Every byte between regions crosses an `atoll link`
//! mesh delaying each way by the demo's us-east-1 <-> ap-southeast-1 one-way delay (the longest
//! of the demo's links), at the shipped heartbeat interval (1 s).
//!
//! - a write in us-east-1 read at once in ap-southeast-1 with the write's token is there: the read
//!   waits for replication (bounded by `wait_ms`, the link delay plus a margin) instead of missing
//!   it; the answer's token, presented again, is served at once;
//! - with ap-southeast-1 cut off, the same read is `503 ATOLL-STALE` naming what it lacks, a
//!   bounded-staleness read is refused once the cut outlasts the bound, and both are served after
//!   the heal;
//! - a region that hears its peers but cannot fetch from them forwards a session read it cannot
//!   serve to a peer that holds the data (`on_stale=forward`);
//! - garbled tokens, forged ones and tokens of another cluster are a `400`, never a hang: at once
//!   for a claim about the serving region, once a heartbeat proves it for a claim about a peer.
//!
//! Every wait has a deadline; nothing depends on timing luck: a read that must succeed is given
//! a wait bound far above the link delay, and a read that must be refused is made while the cut
//! holds.

use crate::common;

use anyhow::{Result, bail, ensure};
use atoll_core::RegionId;
use atoll_core::session::SessionToken;
use atoll_testkit::{Client, Cluster, ClusterOptions, poll};
use common::{BIN, ok};
use reqwest::Method;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";

/// The demo's us-east-1 <-> ap-southeast-1 one-way delay, rounded (great-circle distance at
/// fibre speed plus routing overhead; `atoll demo` prints the same figure).
const LINK_DELAY_MS: f64 = 111.0;
/// The wait a read that must find the write is given: the link delay plus a margin for a loaded
/// 2-core CI machine.
const WAIT_MS: u64 = 2_000;
/// The staleness bound of the bounded reads: above the shipped heartbeat interval and the link
/// delay (a connected region stays under it), below what a cut reaches in a few seconds.
const MAX_STALENESS: &str = "4s";
const CONVERGE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(30);

fn start(name: &str) -> Cluster {
    ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new(name)
            .with_links(LINK_DELAY_MS)
            .heartbeat_interval_ms(atoll_config::DEFAULT_HEARTBEAT_INTERVAL_MS),
    ))
}

async fn get_with(c: &Client, path: &str, token: &str) -> Result<atoll_testkit::client::Reply> {
    c.request_raw(Method::GET, path, &[("x-atoll-session", token)], Vec::new())
        .await
}

fn token_of(r: &atoll_testkit::client::Reply) -> Result<String> {
    match r.header("x-atoll-session") {
        Some(t) => Ok(t.to_string()),
        None => bail!("answer {} carries no X-Atoll-Session", r.status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_writes_across_regions_and_is_told_when_it_cannot() {
    let c = start("session");
    ok(scenario(&c).await);
}

async fn scenario(c: &Cluster) -> Result<()> {
    c.wait_converged(CONVERGE).await?;
    // Tokens are bound to the cluster's name: forged ones must carry it to be judged forged.
    let text = std::fs::read_to_string(c.config_path())?;
    let cluster = atoll_config::Config::parse(&text, "atoll.toml")?
        .cluster
        .name;
    let us = c.client(US);
    let ap = c.client(AP);

    // 1. Read-your-writes across regions at link speed.
    for i in 0..5 {
        let key = format!("user-{i}");
        let w = us
            .kv_put_raw("sessions", &key, format!("v{i}"), None)
            .await?
            .expect(200)?;
        let token = token_of(&w)?;
        let r = get_with(
            &ap,
            &format!("/v1/kv/sessions/{key}?wait_ms={WAIT_MS}"),
            &token,
        )
        .await?;
        ensure!(
            r.status == 200 && r.body == format!("v{i}").as_bytes(),
            "read {i} in {AP} with the token of the write in {US}: {} {}",
            r.status,
            r.text()
        );
        // The read's token names at least as much; presented again, it is served at once.
        let again = get_with(
            &ap,
            &format!("/v1/kv/sessions/{key}?wait_ms=0"),
            &token_of(&r)?,
        )
        .await?
        .expect(200)?;
        ensure!(again.body == format!("v{i}").as_bytes());
        ensure!(
            again.header("x-atoll-staleness-ms").is_some(),
            "every read states its staleness bound"
        );
    }
    // A forged claim about a peer's writes: refused once that peer's heartbeat proves it never
    // made them (its heartbeat echoing one of ours sent after the read arrived: about two
    // heartbeat intervals), well before the read's wait is up.
    let mut forged_peer = SessionToken::new();
    forged_peer.observe(&RegionId::new(US)?, 1 << 40);
    let started = Instant::now();
    let r = get_with(
        &ap,
        "/v1/kv/sessions/user-0?wait_ms=10000",
        &forged_peer.encode(&cluster),
    )
    .await?;
    ensure!(
        r.status == 400
            && r.error_code().as_deref() == Some("ATOLL-BAD-SESSION-TOKEN")
            && r.text().contains("which has made only"),
        "a forged claim about {US}'s writes read in {AP}: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "refused only after the wait"
    );

    // ap-southeast-1 hears both peers and they hear it, but the streams it subscribed to deliver
    // nothing: it learns from their heartbeats that they hold a write it lacks, and forwards the
    // read there.
    c.hold_answers(AP, US)?;
    c.hold_answers(AP, EU)?;
    let w = us
        .kv_put_raw("sessions", "forwarded", "there", None)
        .await?
        .expect(200)?;
    let r = get_with(
        &ap,
        &format!(
            "/v1/kv/sessions/forwarded?wait_ms={}&on_stale=forward",
            3 * WAIT_MS
        ),
        &token_of(&w)?,
    )
    .await?;
    ensure!(
        r.status == 200 && r.body == b"there",
        "a forwarded session read: {} {}",
        r.status,
        r.text()
    );
    let to = r.header("x-atoll-forwarded-to").unwrap_or_default();
    ensure!(to == US || to == EU, "forwarded to a holder, not `{to}`");
    c.heal(AP, US)?;
    c.heal(AP, EU)?;
    c.wait_converged(CONVERGE).await?;

    // Connected: a bounded read is served.
    let connected = format!("/v1/kv/sessions/user-0?max_staleness={MAX_STALENESS}");
    let r = ap.get_raw(&connected).await?;
    ensure!(
        r.status == 200,
        "bounded read while connected: {} {}",
        r.status,
        r.text()
    );

    // 2. Cut ap-southeast-1 off from both peers (a cut from us-east-1 alone would be relayed).
    c.partition(AP, US)?;
    c.partition(AP, EU)?;
    let w = us
        .kv_put_raw("sessions", "during-cut", "written", None)
        .await?
        .expect(200)?;
    let cut_token = token_of(&w)?;
    let r = get_with(&ap, "/v1/kv/sessions/during-cut?wait_ms=300", &cut_token).await?;
    ensure!(
        r.status == 503 && r.error_code().as_deref() == Some("ATOLL-STALE"),
        "read behind its token while cut off: {} {}",
        r.status,
        r.text()
    );
    let body = r.json()?;
    ensure!(
        body["stale"]["behind"][0]["origin"] == US && body["error"]["retryable"] == true,
        "the refusal names what it lacks: {body}"
    );
    // The bound is refused once the cut outlasts it (the region's bound grows from the cut on).
    poll(
        DEADLINE,
        Duration::from_millis(200),
        "a bounded read refused during the cut",
        || async {
            let r = ap.get_raw(&connected).await?;
            if r.status == 503 && r.error_code().as_deref() == Some("ATOLL-STALE") {
                ensure!(
                    r.json()?["stale"]["max_staleness_ms"] == 4000,
                    "{}",
                    r.text()
                );
                return Ok(ControlFlow::Break(()));
            }
            ensure!(
                r.status == 200,
                "bounded read during the cut: {} {}",
                r.status,
                r.text()
            );
            Ok(ControlFlow::Continue(format!("{} {}", r.status, r.text())))
        },
    )
    .await?;

    // 3. Heal: the same token is served, and bounded reads are served again.
    c.heal(AP, US)?;
    c.heal(AP, EU)?;
    poll(
        CONVERGE,
        Duration::from_millis(200),
        "session and bounded reads served after the heal",
        || async {
            let r = get_with(
                &ap,
                &format!("/v1/kv/sessions/during-cut?wait_ms={WAIT_MS}"),
                &cut_token,
            )
            .await?;
            let bounded = ap.get_raw(&connected).await?;
            if r.status == 200 && bounded.status == 200 {
                ensure!(r.body == b"written", "{}", r.text());
                return Ok(ControlFlow::Break(()));
            }
            ensure!(
                [r.status, bounded.status]
                    .iter()
                    .all(|s| [200, 503].contains(s)),
                "after the heal: {} {} / {} {}",
                r.status,
                r.text(),
                bounded.status,
                bounded.text()
            );
            Ok(ControlFlow::Continue(format!(
                "{} / {}",
                r.text(),
                bounded.text()
            )))
        },
    )
    .await?;

    // 4. Bad tokens: a 400 at once (each request gets a 10 s wait it must not use).
    let me = RegionId::new(AP)?;
    let mut forged = SessionToken::new();
    forged.observe(&me, 1 << 40);
    let mut other_cluster = SessionToken::new();
    other_cluster.observe(&me, 1);
    let mut garbled = cut_token.clone().into_bytes();
    let last = garbled.len() - 1;
    garbled[last] = if garbled[last] == b'A' { b'B' } else { b'A' };
    let cases = [
        ("garbled", String::from_utf8(garbled)?, "garbled"),
        ("forged", forged.encode(&cluster), "which has made only"),
        (
            "another cluster",
            other_cluster.encode("prod"),
            "another cluster",
        ),
    ];
    for (what, token, needle) in cases {
        let started = Instant::now();
        let r = get_with(&ap, "/v1/kv/sessions/user-0?wait_ms=10000", &token).await?;
        ensure!(
            r.status == 400
                && r.error_code().as_deref() == Some("ATOLL-BAD-SESSION-TOKEN")
                && r.text().contains(needle),
            "{what} token: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{what} token: answered only after the wait"
        );
    }
    Ok(())
}

/// Through the router: a client presenting its token never reads older state than it wrote,
/// even when the router's first choice has not caught up: that region answers `ATOLL-STALE`,
/// and the router sends the read on to the next region, which has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_router_a_session_read_skips_a_region_that_has_not_caught_up() {
    // ap-southeast-1 first in failover order: the router's first choice for every request.
    let router = atoll_config::render::RouterToml::new()
        .zone("atoll.test")
        .name("api", "failover", &[AP, US, EU]);
    let c = ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new("session-router")
            .with_links(LINK_DELAY_MS)
            .heartbeat_interval_ms(atoll_config::DEFAULT_HEARTBEAT_INTERVAL_MS)
            .extra_config(&router.render()),
    ));
    let r = ok(atoll_testkit::RouterService::start(
        BIN,
        c.config_path(),
        c.dir(),
        "e2e-session-router",
        DEADLINE,
    ));
    ok(router_scenario(&c, &format!("http://{}", r.proxy)).await);
}

async fn router_scenario(c: &Cluster, proxy: &str) -> Result<()> {
    c.wait_converged(CONVERGE).await?;
    let via = Client::new(proxy);
    // Wait until the router sends reads to its first choice.
    poll(
        DEADLINE,
        Duration::from_millis(100),
        "the router routing to its first choice",
        || async {
            let r = via.get_raw("/v1/kv/sessions/probe").await?;
            Ok(match r.header("x-atoll-routed-to") {
                Some(AP) => ControlFlow::Break(()),
                other => ControlFlow::Continue(format!("routed to {other:?}")),
            })
        },
    )
    .await?;
    // ap-southeast-1 is cut off from its peers (the router still reaches it: its client API is not
    // behind the links), and a client writes in us-east-1.
    c.partition(AP, US)?;
    c.partition(AP, EU)?;
    let w = c
        .client(US)
        .kv_put_raw("sessions", "alice", "logged-in", None)
        .await?
        .expect(200)?;
    let token = token_of(&w)?;
    // Without the token the router's first choice answers with what it has: nothing.
    let plain = via.get_raw("/v1/kv/sessions/alice").await?;
    ensure!(
        plain.status == 404 && plain.header("x-atoll-routed-to") == Some(AP),
        "eventual read through the router: {} from {:?}",
        plain.status,
        plain.header("x-atoll-routed-to")
    );
    // With it, the stale region refuses and the router moves on to one that has the write.
    let r = get_with(&via, "/v1/kv/sessions/alice?wait_ms=300", &token).await?;
    ensure!(
        r.status == 200 && r.body == b"logged-in",
        "session read through the router: {} {}",
        r.status,
        r.text()
    );
    let to = r.header("x-atoll-routed-to").unwrap_or_default();
    ensure!(
        to == US || to == EU,
        "served by `{to}`, which should have had the write"
    );
    // A region that is only behind is not a failing one: more refused session reads than the
    // router's outlier threshold (5 consecutive failures) leave it in rotation.
    for i in 0..8 {
        let r = get_with(&via, "/v1/kv/sessions/alice?wait_ms=50", &token).await?;
        ensure!(
            r.status == 200,
            "session read {i}: {} {}",
            r.status,
            r.text()
        );
    }
    let plain = via.get_raw("/v1/kv/sessions/alice").await?;
    ensure!(
        plain.header("x-atoll-routed-to") == Some(AP),
        "after refusing stale reads {AP} should still get reads, they went to {:?}",
        plain.header("x-atoll-routed-to")
    );
    c.heal(AP, US)?;
    c.heal(AP, EU)?;
    Ok(())
}
