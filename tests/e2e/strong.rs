//! End-to-end: strong keyspaces (`docs/design/strong-keyspaces.md`) on three real region
//! processes, every inter-region byte through an in-process `atoll link` mesh (5 ms each way).
//!
//! - seat booking: clients in every region race to book the same seats with `If-Match: 0`; no
//!   seat is booked twice, and every region reads the one booking back;
//! - a minority region (the strong group's leader, cut from both others) refuses writes and reads with
//!   `503 ATOLL-NO-QUORUM` while the majority writes, and never serves the stale value; after
//!   the heal it reads the majority's write;
//! - linearizability under faults: clients in every region read, compare-and-set and put a few
//!   keys while the test `kill -9`s the strong group's leader region, restarts it, and then cuts
//!   the new leader off from the others (a stall: bytes held, not refused); every per-key
//!   history (operations of unknown outcome included) is checked by `atoll-lincheck`.
//!
//! Every load is bounded in requests and time, and every wait has a deadline.

use crate::common;

use anyhow::{Result, anyhow, bail, ensure};
use atoll_config::Policy;
use atoll_config::render::KeyspaceToml;
use atoll_lincheck::{Input, Op, Outcome, Verdict};
use atoll_testkit::{Cluster, ClusterOptions, poll};
use common::{BIN, ok};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ops::ControlFlow::{Break, Continue};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
const REGIONS: [&str; 3] = [US, EU, AP];
const LINK_DELAY_MS: f64 = 5.0;
const DEADLINE: Duration = Duration::from_secs(40);
/// How often the waits below ask again.
const POLL: Duration = Duration::from_millis(100);

fn start(name: &str) -> Cluster {
    ok(Cluster::start(
        BIN,
        3,
        ClusterOptions::new(name)
            .with_links(LINK_DELAY_MS)
            .keyspace(KeyspaceToml::new("seats", Policy::Strong)),
    ))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client")
}

/// What one strong request came back with.
#[derive(Debug)]
enum Reply {
    /// An HTTP answer: status, error code (if any), body.
    Answer {
        status: u16,
        code: Option<String>,
        body: Vec<u8>,
        revision: Option<u64>,
    },
    /// No connection could be made: nothing was sent.
    NotSent,
    /// Sent, and no answer (timeout, connection lost).
    Lost,
}

async fn send(
    http: &reqwest::Client,
    c_endpoint: &str,
    method: reqwest::Method,
    key: &str,
    if_match: Option<u64>,
    body: Option<Vec<u8>>,
) -> Reply {
    let mut req = http.request(method, format!("{c_endpoint}/v1/kv/seats/{key}"));
    if let Some(r) = if_match {
        req = req.header("if-match", r.to_string());
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Reply::NotSent,
        Err(_) => return Reply::Lost,
    };
    let status = resp.status().as_u16();
    let revision = resp
        .headers()
        .get("x-atoll-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = match resp.bytes().await {
        Ok(b) => b.to_vec(),
        Err(_) => return Reply::Lost,
    };
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    Reply::Answer {
        status,
        code,
        body,
        revision,
    }
}

/// Waits until every region in `among` names the same strong leader; returns it.
async fn leader(c: &Cluster, among: &[&str]) -> Result<String> {
    let what = format!("a strong leader agreed among {among:?}");
    poll(DEADLINE, POLL, &what, || async {
        let mut seen = Vec::new();
        for r in among {
            seen.push(
                c.status(r)
                    .await
                    .ok()
                    .and_then(|s| s["strong"]["leader"].as_str().map(str::to_string)),
            );
        }
        if let Some(Some(l)) = seen.first()
            && seen.iter().all(|s| s.as_deref() == Some(l.as_str()))
            && among.contains(&l.as_str())
        {
            return Ok(Break(l.clone()));
        }
        Ok(Continue(format!("{seen:?}")))
    })
    .await
}

/// Reads `key` at `region` until it answers 200 or 404 (a leader election may be under way).
async fn read_settled(c: &Cluster, region: &str, key: &str) -> Result<Option<Vec<u8>>> {
    let http = http();
    let what = format!("a read of {key} at {region}");
    poll(DEADLINE, POLL, &what, || async {
        let reply = send(
            &http,
            &c.endpoint(region),
            reqwest::Method::GET,
            key,
            None,
            None,
        )
        .await;
        Ok(match reply {
            Reply::Answer {
                status: 200, body, ..
            } => Break(Some(body)),
            Reply::Answer { status: 404, .. } => Break(None),
            other => Continue(format!("{other:?}")),
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seats_are_never_double_booked_and_a_minority_refuses() {
    let c = start("strong-seats");
    ok(seats(&c).await);
}

async fn seats(c: &Cluster) -> Result<()> {
    leader(c, &REGIONS).await?;
    const SEATS: usize = 20;
    // Two clients per region, each trying to book every seat, in a different order.
    let mut tasks = Vec::new();
    for (i, region) in REGIONS.iter().cycle().take(6).enumerate() {
        let endpoint = c.endpoint(region);
        tasks.push(tokio::spawn(async move {
            let http = http();
            let mut out = Vec::new();
            for k in 0..SEATS {
                let seat = (k * 7 + i * 3) % SEATS;
                let who = format!("client-{i}");
                let r = send(
                    &http,
                    &endpoint,
                    reqwest::Method::PUT,
                    &format!("seat-{seat}"),
                    Some(0),
                    Some(who.clone().into_bytes()),
                )
                .await;
                out.push((seat, who, r));
            }
            out
        }));
    }
    let mut booked: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut unknown: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut refused = 0;
    for t in tasks {
        for (seat, who, r) in t.await? {
            match r {
                Reply::Answer { status: 200, .. } => booked.entry(seat).or_default().push(who),
                Reply::Answer {
                    status: 412,
                    code: Some(code),
                    ..
                } if code == "ATOLL-REVISION-MISMATCH" => refused += 1,
                Reply::Answer { status: 504, .. } | Reply::Lost => {
                    unknown.entry(seat).or_default().push(who)
                }
                other => bail!("unexpected answer to a booking of seat {seat}: {other:?}"),
            }
        }
    }
    for (seat, who) in &booked {
        ensure!(who.len() == 1, "seat {seat} was booked twice: {who:?}");
    }
    ensure!(
        refused >= SEATS * 4,
        "only {refused} bookings were refused (6 clients, {SEATS} seats)"
    );
    // Every region reads the one booking of each seat.
    for seat in 0..SEATS {
        for region in REGIONS {
            let v = read_settled(c, region, &format!("seat-{seat}")).await?;
            let v = v.map(|b| String::from_utf8_lossy(&b).to_string());
            let ok = match (&v, booked.get(&seat)) {
                (Some(v), Some(w)) => w.contains(v),
                (Some(v), None) => unknown.get(&seat).is_some_and(|u| u.contains(v)),
                (None, _) => false,
            };
            ensure!(
                ok,
                "{region} reads seat {seat} as {v:?}; booked {:?}, unknown {:?}",
                booked.get(&seat),
                unknown.get(&seat)
            );
        }
    }

    // A minority: the strong group's leader cut off from both others (the harder case: it
    // believes it leads until it notices it hears nobody).
    let cut = leader(c, &REGIONS).await?;
    let cut = cut.as_str();
    let rest: Vec<&str> = REGIONS.iter().copied().filter(|r| *r != cut).collect();
    for r in &rest {
        c.partition(cut, r)?;
    }
    let majority_leader = leader(c, &rest).await?;
    // The cut-off region notices that it hears nobody (within the group's election_max, 2 s).
    let what = format!("{cut} to notice it is cut off");
    poll(DEADLINE, POLL, &what, || async {
        let st = c.status(cut).await?;
        Ok(if st["strong"]["alone"] == true {
            Break(())
        } else {
            Continue(format!("{}", st["strong"]))
        })
    })
    .await?;
    let http = http();
    // The majority writes a new value.
    let what = format!("the majority (leader {majority_leader}) to write");
    poll(DEADLINE, POLL, &what, || async {
        let r = send(
            &http,
            &c.endpoint(rest[0]),
            reqwest::Method::PUT,
            "seat-0",
            None,
            Some(b"after-the-cut".to_vec()),
        )
        .await;
        Ok(if matches!(r, Reply::Answer { status: 200, .. }) {
            Break(())
        } else {
            Continue(format!("{r:?}"))
        })
    })
    .await?;
    // The minority refuses writes and reads, with ATOLL-NO-QUORUM, never the old value.
    for method in [reqwest::Method::PUT, reqwest::Method::GET] {
        let body = (method == reqwest::Method::PUT).then(|| b"minority".to_vec());
        let r = send(
            &http,
            &c.endpoint(cut),
            method.clone(),
            "seat-0",
            None,
            body,
        )
        .await;
        match r {
            Reply::Answer {
                status: 503,
                code: Some(code),
                body,
                ..
            } if code == "ATOLL-NO-QUORUM" => {
                let text = String::from_utf8_lossy(&body).to_string();
                ensure!(
                    text.contains("2 of 3"),
                    "the refusal does not say a majority of 3 is needed: {text}"
                );
            }
            other => bail!("{method} at the minority region {cut} answered {other:?}"),
        }
    }
    // The refusals are counted, and the majority's commits timed.
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let cut_metrics = http
        .get(format!("{}/metrics", c.endpoint(cut)))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metric(&cut_metrics, "atoll_strong_no_quorum_total") >= 2.0,
        "{cut}'s refusals are not counted"
    );
    let majority_metrics = http
        .get(format!("{}/metrics", c.endpoint(rest[0])))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metric(
            &majority_metrics,
            "atoll_strong_commit_duration_seconds_count"
        ) >= 1.0,
        "{}'s strong commits are not timed",
        rest[0]
    );
    let st = c.status(cut).await?;
    ensure!(
        st["keyspaces"].as_array().is_some_and(|ks| ks
            .iter()
            .any(|k| k["name"] == "seats" && k["policy"] == "strong")),
        "status does not list the strong keyspace: {st}"
    );
    c.heal_all()?;
    let what = format!("{cut} to read seat-0 as after-the-cut after the heal");
    poll(DEADLINE, POLL, &what, || async {
        let v = read_settled(c, cut, "seat-0").await?;
        Ok(if v.as_deref() == Some(b"after-the-cut".as_slice()) {
            Break(())
        } else {
            Continue(format!("{v:?}"))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_leader_kill_and_partition_are_linearizable() {
    let mut c = start("strong-lin");
    ok(linearizable(&mut c).await);
}

async fn linearizable(c: &mut Cluster) -> Result<()> {
    const KEYS: [&str; 3] = ["k0", "k1", "k2"];
    let first_leader = leader(c, &REGIONS).await?;
    let t0 = Instant::now();
    let ns = move || u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let history: Arc<Mutex<Vec<(String, Op)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, region) in REGIONS.iter().cycle().take(6).enumerate() {
        let endpoint = c.endpoint(region);
        let history = history.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let http = http();
            let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 400 {
                n += 1;
                let key = KEYS[(n as usize * 7 + i) % KEYS.len()];
                let value = format!("c{i}-{n}").into_bytes();
                let last = seen.get(key).copied().unwrap_or(0);
                let input = match (n + i as u64) % 5 {
                    0 | 1 => Input::Read,
                    2 => Input::Put {
                        value,
                        if_revision: Some(last),
                    },
                    3 => Input::Put {
                        value,
                        if_revision: Some(0),
                    },
                    _ => Input::Put {
                        value,
                        if_revision: None,
                    },
                };
                let invoke = ns();
                let reply = match &input {
                    Input::Read => {
                        send(&http, &endpoint, reqwest::Method::GET, key, None, None).await
                    }
                    Input::Put { value, if_revision } => {
                        send(
                            &http,
                            &endpoint,
                            reqwest::Method::PUT,
                            key,
                            *if_revision,
                            Some(value.clone()),
                        )
                        .await
                    }
                    Input::Delete { .. } => unreachable!("no deletes here"),
                };
                let complete = ns();
                let outcome = match (&input, reply) {
                    (
                        Input::Read,
                        Reply::Answer {
                            status: 200,
                            body,
                            revision,
                            ..
                        },
                    ) => Some(Outcome::Read {
                        value: Some(body),
                        revision: revision.unwrap_or(0),
                    }),
                    (Input::Read, Reply::Answer { status: 404, .. }) => Some(Outcome::Read {
                        value: None,
                        revision: 0,
                    }),
                    // A read that failed changed nothing.
                    (Input::Read, _) => None,
                    (
                        _,
                        Reply::Answer {
                            status: 200,
                            revision,
                            ..
                        },
                    ) => Some(Outcome::Written {
                        revision: revision.unwrap_or(0),
                    }),
                    (
                        _,
                        Reply::Answer {
                            status: 412,
                            revision,
                            ..
                        },
                    ) => Some(Outcome::Mismatch {
                        current: revision.unwrap_or(0),
                    }),
                    (_, Reply::Answer { status: 504, .. }) | (_, Reply::Lost) => {
                        Some(Outcome::Unknown)
                    }
                    // 503 (no quorum, shutting down) and no connection: nothing applied.
                    (_, Reply::Answer { status: 503, .. }) | (_, Reply::NotSent) => None,
                    (_, other) => {
                        panic!("unexpected answer to {input:?} of {key}: {other:?}")
                    }
                };
                let Some(outcome) = outcome else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match &outcome {
                    Outcome::Read { revision, .. }
                    | Outcome::Written { revision }
                    | Outcome::Mismatch { current: revision } => {
                        seen.insert(key, *revision);
                    }
                    _ => {}
                }
                let complete = (outcome != Outcome::Unknown).then_some(complete);
                history.lock().expect("history").push((
                    key.to_string(),
                    Op {
                        client: i,
                        invoke,
                        complete,
                        input,
                        outcome,
                    },
                ));
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }));
    }
    // The nemesis: kill -9 the leader, restart it, then cut the new leader off, then heal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill9(&first_leader)?;
    let rest: Vec<&str> = REGIONS
        .iter()
        .copied()
        .filter(|r| *r != first_leader)
        .collect();
    let second = leader(c, &rest).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.restart(&first_leader)?;
    leader(c, &REGIONS).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let current = leader(c, &REGIONS).await?;
    for r in REGIONS.iter().filter(|r| **r != current) {
        c.partition(&current, r)?;
    }
    let others: Vec<&str> = REGIONS.iter().copied().filter(|r| *r != current).collect();
    let third = leader(c, &others).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.heal_all()?;
    leader(c, &REGIONS).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(DEADLINE, t)
            .await
            .map_err(|_| anyhow!("a client did not stop"))??;
    }
    let history = history.lock().expect("history").clone();
    let completed = history.iter().filter(|(_, o)| o.complete.is_some()).count();
    let writes = history
        .iter()
        .filter(|(_, o)| matches!(o.outcome, Outcome::Written { .. }))
        .count();
    let unknown = history.len() - completed;
    eprintln!(
        "leaders: {first_leader} (killed), {second}, {current} (cut off), {third}; {} operations, {completed} completed, {unknown} unknown, {writes} writes applied",
        history.len()
    );
    ensure!(writes >= 20, "only {writes} writes were applied");
    match atoll_lincheck::check_per_key(&history) {
        Ok(()) => Ok(()),
        Err((key, Verdict::GaveUp, ops)) => bail!(
            "the checker gave up on key {key} ({} operations)",
            ops.len()
        ),
        Err((key, v, ops)) => bail!("key {key} is not linearizable: {v:?}\n{ops:#?}"),
    }
}
