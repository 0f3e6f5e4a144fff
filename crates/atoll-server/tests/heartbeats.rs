//! The peer-facing heartbeat endpoint refuses forged or garbled heartbeats before believing
//! anything in them, answers with a JSON error, and counts the refusal by peer and reason.

use atoll_config::KeyspaceConfig;
use atoll_core::RegionId;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::codec;
use atoll_core::hlc::Timestamp;
use atoll_core::op::Policy;
use atoll_core::repl::{Echo, Heartbeat, OriginFrontier, ReplConfig};
use atoll_server::metrics::Metrics;
use atoll_server::peer::PeerAuth;
use atoll_server::replication::{Replicator, Settings, router};
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;
use tower::ServiceExt;

const T0: u64 = 1_700_000_000_000;

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

fn replicator() -> (Arc<Replicator>, Arc<Metrics>) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open(
        Arc::new(MemBackend::default()),
        StoreOptions::new(
            region("us-east-1"),
            vec![KeyspaceConfig::new("sessions", Policy::Lww)],
        ),
        clock.clone(),
    )
    .expect("store");
    let metrics = Arc::new(Metrics::new());
    let mut peer_addrs = BTreeMap::new();
    // Nothing is sent to these: no replication task is started.
    peer_addrs.insert(region("eu-west-1"), "127.0.0.1:9".parse().expect("addr"));
    peer_addrs.insert(
        region("ap-southeast-1"),
        "127.0.0.1:9".parse().expect("addr"),
    );
    let clock: Arc<dyn Clock> = clock;
    let rep = Replicator::new(
        Arc::new(store),
        clock,
        metrics.clone(),
        Settings {
            cluster: "test".into(),
            peer_addrs,
            core: ReplConfig::new(1000, 500),
            max_lag_secs: 30,
            tls: None,
            oplog_retention_ms: atoll_config::DEFAULT_OPLOG_RETENTION_MS,
        },
        Arc::new(Notify::new()),
    )
    .expect("replicator");
    (rep, metrics)
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        from: region("eu-west-1"),
        sent_ms: T0,
        hlc: Timestamp::new(T0, 0),
        echo: None,
        frontier: BTreeMap::new(),
        stable_age_ms: None,
        removed: Default::default(),
    }
}

async fn post(rep: &Arc<Replicator>, hb: &Heartbeat) -> (StatusCode, String) {
    // As on a cluster with `insecure = true`: these tests are about what a heartbeat says, not
    // who sent it (see tests/e2e/peer_tls.rs).
    let req = Request::post("/v1/replication/heartbeat")
        .extension(PeerAuth::Insecure)
        .header("content-type", "application/octet-stream")
        .body(Body::from(codec::encode(hb).expect("encode")))
        .expect("request");
    let resp = router(rep.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_good_heartbeat_is_taken_and_bad_ones_are_refused_and_counted() {
    let (rep, metrics) = replicator();
    let (status, _) = post(&rep, &heartbeat()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let mut forged = heartbeat();
    forged.echo = Some(Echo {
        sent_ms: u64::MAX,
        held_ms: 0,
    });
    let (status, body) = post(&rep, &forged).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("\"code\""), "not a JSON error: {body}");
    assert!(body.contains("echoes a send time"), "{body}");

    let mut forged = heartbeat();
    forged.frontier.insert(
        region("us-east-1"),
        OriginFrontier {
            applied: 1_000,
            caught_up_at_origin_ms: None,
        },
    );
    let (status, body) = post(&rep, &forged).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A claim on this region's writes beyond anything it ever sealed is refused too, and it
    // means this region lost writes: it bootstraps by snapshot (docs/design/oplog-truncation.md).
    assert!(rep.is_bootstrapping());

    // Garbage is the sender's fault (400), not a damaged data directory (500).
    let req = Request::post("/v1/replication/heartbeat")
        .header("content-type", "application/octet-stream")
        .extension(PeerAuth::Insecure)
        .body(Body::from(vec![1u8, 0, 0xff, 0xff, 0xff]))
        .expect("request");
    let resp = router(rep.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let mut stranger = heartbeat();
    stranger.from = region("mallory-1");
    let (status, _) = post(&rep, &stranger).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let text = metrics.encode();
    for (peer, reason) in [
        ("eu-west-1", "echo-from-the-future"),
        ("eu-west-1", "applied-beyond-our-head"),
        ("unknown", "not-a-peer"),
    ] {
        let series = format!(
            "atoll_replication_heartbeats_refused_total{{peer_region=\"{peer}\",reason=\"{reason}\"}} 1"
        );
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }
    // The good heartbeat counted nowhere, and the peer is heard.
    let (peers, _) = rep.status().expect("status");
    let eu = peers
        .iter()
        .find(|p| p.region == region("eu-west-1"))
        .expect("peer");
    assert!(eu.reachable);
}
