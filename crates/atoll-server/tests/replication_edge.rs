//! The edge of the replication routes: a heartbeat or subscription body over its limit is
//! refused with `413 ATOLL-PEER-REQUEST-TOO-LARGE` before it is read, and a region serves at most
//! `max_subscription_streams` subscription streams at once (more get a retryable
//! `503 ATOLL-OVERLOADED`); both are counted.

use atoll_config::KeyspaceConfig;
use atoll_core::RegionId;
use atoll_core::causal::VersionVector;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::codec;
use atoll_core::op::Policy;
use atoll_core::repl::{ReplConfig, Subscribe};
use atoll_server::metrics::Metrics;
use atoll_server::replication::{Replicator, Settings, router};
use atoll_server::streams::{self, Edge, MAX_HEARTBEAT_BYTES, MAX_SUBSCRIBE_BYTES, Subscribers};
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;
use tower::ServiceExt;

const T0: u64 = 1_700_000_000_000;

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

/// us-east-1 with peers eu-west-1 and ap-southeast-1 (nothing is ever sent to them).
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
    let peer_addrs: BTreeMap<RegionId, std::net::SocketAddr> = ["eu-west-1", "ap-southeast-1"]
        .into_iter()
        .map(|p| (region(p), "127.0.0.1:9".parse().expect("addr")))
        .collect();
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

/// The replication routes as a region serves them, with room for `max_streams` streams.
fn app(max_streams: usize) -> (axum::Router, Arc<Subscribers>, Arc<Metrics>) {
    let (rep, metrics) = replicator();
    let subscribers = Subscribers::new();
    // As an insecure cluster serves them (a TLS cluster's peer listener stamps the certified
    // peer instead): the edge limits come before the peer check either way.
    let app = streams::track(
        router(rep),
        Edge {
            subscribers: subscribers.clone(),
            max_streams: Arc::new(std::sync::atomic::AtomicUsize::new(max_streams)),
            metrics: metrics.clone(),
        },
    )
    .layer(axum::Extension(atoll_server::peer::PeerAuth::Insecure));
    (app, subscribers, metrics)
}

fn subscribe(from: &str, cluster: &str) -> Body {
    Body::from(
        codec::encode(&Subscribe {
            from: region(from),
            cluster: cluster.into(),
            origins: vec![region("us-east-1")],
            applied: VersionVector::default(),
        })
        .expect("encode"),
    )
}

/// A body of `len` bytes without a `Content-Length`: its size is learnt by reading it.
fn streamed(len: usize) -> Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..len.div_ceil(4096))
        .map(|i| Ok(Bytes::from(vec![0u8; 4096.min(len - i * 4096)])))
        .collect();
    Body::from_stream(futures_util::stream::iter(chunks))
}

async fn post(app: &axum::Router, path: &str, body: Body) -> Response<Body> {
    let req = Request::post(path)
        .header("content-type", "application/octet-stream")
        .body(body)
        .expect("request");
    app.clone().oneshot(req).await.expect("infallible")
}

async fn error_of(resp: Response<Body>) -> (StatusCode, Value) {
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, v["error"].clone())
}

fn metric(metrics: &Metrics, series: &str) -> Option<f64> {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
}

#[tokio::test]
async fn replication_bodies_over_their_limit_are_413_before_they_are_read() {
    let (app, _, metrics) = app(8);
    let cases = [
        ("/v1/replication/heartbeat", MAX_HEARTBEAT_BYTES),
        ("/v1/replication/subscribe", MAX_SUBSCRIBE_BYTES),
    ];
    for (path, max) in cases {
        for (body, len) in [
            (Body::from(vec![0u8; max + 1]), Some(max + 1)),
            (streamed(4 * max), None),
        ] {
            let (status, e) = error_of(post(&app, path, body).await).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {e}");
            assert_eq!(e["code"], "ATOLL-PEER-REQUEST-TOO-LARGE", "{path}");
            assert_eq!(e["retryable"], false);
            let message = e["message"].as_str().expect("message");
            assert!(message.contains(&max.to_string()), "{message}");
            if let Some(len) = len {
                assert!(message.contains(&format!("{len} bytes")), "{message}");
            }
        }
    }
    for route in ["heartbeat", "subscribe"] {
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    r#"atoll_replication_requests_refused_total{{route="{route}",reason="too-large"}}"#
                )
            ),
            Some(2.0),
            "{route}"
        );
    }
    // At the limit the handler judges the body itself.
    let (status, e) = error_of(
        post(
            &app,
            "/v1/replication/heartbeat",
            Body::from(vec![0u8; MAX_HEARTBEAT_BYTES]),
        )
        .await,
    )
    .await;
    assert_ne!(status, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
}

#[tokio::test]
async fn the_routes_alone_keep_the_body_limits() {
    let (rep, _) = replicator();
    let app = router(rep);
    for (path, max) in [
        ("/v1/replication/heartbeat", MAX_HEARTBEAT_BYTES),
        ("/v1/replication/subscribe", MAX_SUBSCRIBE_BYTES),
    ] {
        let (status, e) = error_of(post(&app, path, streamed(max + 1)).await).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {e}");
        assert_eq!(e["code"], "ATOLL-PEER-REQUEST-TOO-LARGE");
    }
}

#[tokio::test]
async fn subscription_streams_are_capped_and_the_refusal_is_retryable() {
    let (app, subscribers, metrics) = app(2);
    let first = post(
        &app,
        "/v1/replication/subscribe",
        subscribe("eu-west-1", "test"),
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK);
    // A refused subscription (another cluster) takes no slot.
    let (status, _) = error_of(
        post(
            &app,
            "/v1/replication/subscribe",
            subscribe("eu-west-1", "other"),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let second = post(
        &app,
        "/v1/replication/subscribe",
        subscribe("ap-southeast-1", "test"),
    )
    .await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(subscribers.total(), 2);

    let (status, e) = error_of(
        post(
            &app,
            "/v1/replication/subscribe",
            subscribe("eu-west-1", "test"),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(e["code"], "ATOLL-OVERLOADED");
    assert_eq!(e["retryable"], true);
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("max_subscription_streams"),
        "{e}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"atoll_replication_requests_refused_total{route="subscribe",reason="overloaded"}"#
        ),
        Some(1.0)
    );
    // Heartbeats are never capped.
    let hb = post(&app, "/v1/replication/heartbeat", Body::from(vec![1u8, 0])).await;
    assert_ne!(hb.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A stream that ends frees its slot.
    drop(first);
    assert_eq!(subscribers.total(), 1);
    let again = post(
        &app,
        "/v1/replication/subscribe",
        subscribe("eu-west-1", "test"),
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);
    drop((second, again));
    assert_eq!(subscribers.total(), 0);
}
