//! Removing a region at the replication routes (`docs/design/region-removal.md`): a region that
//! removed `eu-west-1` answers its heartbeats, subscriptions and snapshot requests `410
//! ATOLL-REGION-REMOVED` with how many of its writes it holds (`x-atoll-removed-holds`), while a
//! region it never knew stays refused as a stranger; and a region whose heartbeat is answered so
//! records that it was removed and refuses writes from then on.

use atoll_config::KeyspaceConfig;
use atoll_core::RegionId;
use atoll_core::causal::VersionVector;
use atoll_core::clock::{Clock, ManualClock, SystemClock};
use atoll_core::codec;
use atoll_core::hlc::Timestamp;
use atoll_core::op::{Intent, Policy, Ttl};
use atoll_core::repl::{Heartbeat, ReplConfig, SnapshotRequest, Subscribe};
use atoll_server::metrics::Metrics;
use atoll_server::peer::PeerAuth;
use atoll_server::replication::{REMOVED_HOLDS_HEADER, Replicator, Settings, router};
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tower::ServiceExt;

const T0: u64 = 1_700_000_000_000;

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

fn store(me: &str, clock: Arc<dyn Clock>) -> Arc<Store> {
    Arc::new(
        Store::open(
            Arc::new(MemBackend::default()),
            StoreOptions::new(
                region(me),
                vec![KeyspaceConfig::new("sessions", Policy::Lww)],
            ),
            clock,
        )
        .expect("store"),
    )
}

fn replicator(
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    peers: &[(&str, SocketAddr)],
) -> (Arc<Replicator>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let rep = Replicator::new(
        store,
        clock,
        metrics.clone(),
        Settings {
            cluster: "test".into(),
            peer_addrs: peers.iter().map(|(r, a)| (region(r), *a)).collect(),
            core: ReplConfig::new(100, 500),
            max_lag_secs: 30,
            tls: None,
            oplog_retention_ms: atoll_config::DEFAULT_OPLOG_RETENTION_MS,
        },
        Arc::new(Notify::new()),
    )
    .expect("replicator");
    (rep, metrics)
}

fn put(store: &Store, key: &str) {
    store
        .write(
            "sessions",
            key.as_bytes(),
            Intent::Put {
                value: b"v".to_vec(),
                context: None,
                ttl: Ttl::Default,
            },
        )
        .expect("write");
}

fn heartbeat(from: &str) -> Vec<u8> {
    codec::encode(&Heartbeat {
        from: region(from),
        sent_ms: T0,
        hlc: Timestamp::new(T0, 0),
        echo: None,
        frontier: BTreeMap::new(),
        stable_age_ms: None,
        removed: Default::default(),
    })
    .expect("encode")
}

/// Posts `body` to `path` as on an insecure cluster; the status, the holds header and the body.
async fn post(
    rep: &Arc<Replicator>,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Option<String>, String) {
    let req = Request::post(path)
        .extension(PeerAuth::Insecure)
        .header("content-type", "application/octet-stream")
        .body(Body::from(body))
        .expect("request");
    let resp = router(rep.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let holds = resp
        .headers()
        .get(REMOVED_HOLDS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, holds, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_removed_region_is_answered_410_with_what_is_held_of_its_writes() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let us = store("us-east-1", clock.clone());
    // Two writes of eu-west-1 that came from it.
    let eu = store("eu-west-1", clock.clone());
    put(&eu, "a");
    put(&eu, "b");
    let entries = eu.oplog(&region("eu-west-1"), 1, 10).expect("oplog");
    us.apply_remote_from(region("eu-west-1"), entries.clone())
        .expect("applied");
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let (rep, _) = replicator(
        us.clone(),
        clock,
        &[("eu-west-1", nowhere), ("ap-southeast-1", nowhere)],
    );
    // Before the removal: eu-west-1's heartbeat is taken.
    let (status, holds, body) =
        post(&rep, "/v1/replication/heartbeat", heartbeat("eu-west-1")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(holds, None);

    assert_eq!(
        rep.remove_peer(&region("eu-west-1"))
            .await
            .expect("removed"),
        2
    );
    // Idempotent.
    assert_eq!(
        rep.remove_peer(&region("eu-west-1"))
            .await
            .expect("removed"),
        2
    );
    assert!(us.removed_regions().contains_key(&region("eu-west-1")));
    let removed = rep.removed_status();
    assert_eq!(removed.len(), 1);
    assert!(removed[0].effective && !removed[0].settled, "{removed:?}");
    assert_eq!(removed[0].applied_seq, 2);
    // Nothing that comes from it is applied any more.
    let e = us
        .apply_remote_from(region("eu-west-1"), entries)
        .expect_err("refused");
    assert_eq!(e.code(), "ATOLL-REGION-REMOVED");

    let gone = |status: StatusCode, holds: Option<String>, body: &str| {
        assert_eq!(status, StatusCode::GONE, "{body}");
        assert!(body.contains("\"ATOLL-REGION-REMOVED\""), "{body}");
        assert_eq!(holds.as_deref(), Some("2"), "{body}");
    };
    let (status, holds, body) =
        post(&rep, "/v1/replication/heartbeat", heartbeat("eu-west-1")).await;
    gone(status, holds, &body);
    let sub = codec::encode(&Subscribe {
        from: region("eu-west-1"),
        cluster: "test".into(),
        origins: vec![region("us-east-1")],
        applied: VersionVector::default(),
    })
    .expect("encode");
    let (status, holds, body) = post(&rep, "/v1/replication/subscribe", sub).await;
    gone(status, holds, &body);
    let snap = codec::encode(&SnapshotRequest {
        from: region("eu-west-1"),
        cluster: "test".into(),
        after: None,
    })
    .expect("encode");
    let (status, holds, body) = post(&rep, "/v1/replication/snapshot", snap).await;
    gone(status, holds, &body);

    // A region that was never a peer stays refused as before, without the header; a member's
    // heartbeat is taken.
    let (status, holds, body) =
        post(&rep, "/v1/replication/heartbeat", heartbeat("sa-east-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("not a peer"), "{body}");
    assert_eq!(holds, None);
    let (status, _, body) = post(
        &rep,
        "/v1/replication/heartbeat",
        heartbeat("ap-southeast-1"),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_whose_heartbeat_is_answered_410_records_it_was_removed() {
    // A peer that answers every heartbeat as a region that removed this one.
    let app = axum::Router::new().route(
        "/v1/replication/heartbeat",
        axum::routing::post(|| async {
            (
                StatusCode::GONE,
                [(REMOVED_HOLDS_HEADER, "1")],
                axum::Json(serde_json::json!({
                    "error": {"code": "ATOLL-REGION-REMOVED", "message": "removed", "retryable": false}
                })),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sa = store("sa-east-1", clock.clone());
    put(&sa, "mine");
    put(&sa, "also-mine");
    let (rep, metrics) = replicator(sa.clone(), clock, &[("us-east-1", addr)]);
    let stop = Arc::new(Notify::new());
    let tasks = rep.start(stop.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sa.removed_by().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recorded the removal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let by = sa.removed_by().expect("removed");
    assert_eq!(by.by, region("us-east-1"));
    assert_eq!(by.held_by_members, 1);
    assert!(metrics.encode().contains("atoll_region_removed 1"));
    let e = sa
        .write(
            "sessions",
            b"late",
            Intent::Put {
                value: b"x".to_vec(),
                context: None,
                ttl: Ttl::Default,
            },
        )
        .expect_err("refused");
    assert_eq!(e.code(), "ATOLL-REGION-REMOVED");
    assert_eq!(e.http_status(), 410);
    stop.notify_one();
    for t in tasks {
        t.abort();
    }
    server.abort();
}

/// A config of regions `a`, `b` (voters) and, with `with_c`, `c` (a replica), plain HTTP.
fn config(with_c: bool) -> Arc<atoll_config::Config> {
    let mut text = String::from(
        "[cluster]\nname = \"t\"\n\n[cluster.tls]\ninsecure = true\n\n[[regions]]\nname = \"a\"\napi = \"127.0.0.1:9\"\n\n[[regions]]\nname = \"b\"\napi = \"127.0.0.1:10\"\n",
    );
    if with_c {
        text.push_str("\n[[regions]]\nname = \"c\"\napi = \"127.0.0.1:11\"\nvoter = false\n");
    }
    text.push_str("\n[[keyspaces]]\nname = \"sessions\"\npolicy = \"lww\"\n");
    Arc::new(atoll_config::Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}\n{text}")))
}

fn options(
    config: Arc<atoll_config::Config>,
    dir: &std::path::Path,
) -> atoll_server::region::RegionOptions {
    atoll_server::region::RegionOptions {
        config,
        region: "a".into(),
        data_dir: dir.to_path_buf(),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        peer_via: BTreeMap::new(),
        drain_grace: Duration::ZERO,
        clock_offset_ms: 0,
    }
}

fn open_disk(dir: &std::path::Path) -> Arc<Store> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Arc::new(
        Store::open(
            Arc::new(atoll_store::backend::FjallBackend::open(dir).expect("backend")),
            StoreOptions::new(
                region("a"),
                vec![KeyspaceConfig::new("sessions", Policy::Lww)],
            ),
            clock,
        )
        .expect("store"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_removes_what_was_removed_while_stopped_and_refuses_a_removed_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("a");
    std::fs::create_dir_all(&data).expect("data dir");
    // Region a holds writes of c, then stops.
    {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let c = store("c", clock);
        put(&c, "x");
        put(&c, "y");
        put(&c, "z");
        let a = open_disk(&data);
        a.apply_remote_from(region("c"), c.oplog(&region("c"), 1, 10).expect("oplog"))
            .expect("applied");
        a.close();
    }
    // The others removed c meanwhile: a starts with a config without it, and removes it too.
    let server = atoll_server::region::RegionServer::bind(options(config(false), &data))
        .await
        .expect("starts");
    drop(server);
    {
        let a = open_disk(&data);
        let removed = a.removed_regions();
        assert_eq!(
            removed.get(&region("c")).map(|r| r.applied_then),
            Some(3),
            "{removed:?}"
        );
        a.close();
    }
    // A config that lists c again is refused at start.
    let e = match atoll_server::region::RegionServer::bind(options(config(true), &data)).await {
        Ok(_) => panic!("started with a removed region in its config"),
        Err(e) => e,
    };
    assert_eq!(e.code(), "ATOLL-CONFIG");
    assert!(e.to_string().contains("never reused"), "{e}");
    assert!(e.to_string().contains("`c`"), "{e}");
}
