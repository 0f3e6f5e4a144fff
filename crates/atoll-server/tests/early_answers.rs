//! A client that sends a body the region answers before reading it (over a keyspace's value
//! limit, over the JSON body limit, no such route, wrong method) reads the whole answer, over a
//! real socket: with `Content-Length` or chunked, reading before or after it sent the whole body,
//! sending slowly. Before `atoll_server::unread`, the region closed the connection while the body
//! was still arriving, and the client got a reset (a broken pipe on its next send) instead.

use atoll_config::Config;
use atoll_core::RegionId;
use atoll_core::clock::ManualClock;
use atoll_server::api::{AppState, router};
use atoll_server::metrics::Metrics;
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use atoll_testkit::raw_http::{self, Continue, RawReply, Upload};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const EXAMPLE: &str = include_str!("../../../examples/single-region.toml");
const REGION: &str = "us-east-1";
/// The value limit of `sessions` and the JSON body limit in these tests.
const LIMIT: usize = 1024;
/// What the slow client sends: far over the limits, and more than loopback buffers absorb
/// between two of its sends.
const BODY: usize = 512 << 10;

/// A region serving the example config (sessions lww, carts mvr, ratelimits counter, flags set)
/// on a loopback port, with 1 KiB limits.
async fn serve() -> (SocketAddr, Arc<AppState>) {
    let mut config = Config::parse(EXAMPLE, "single-region.toml").expect("example parses");
    for k in &mut config.keyspaces {
        k.max_value_bytes = LIMIT;
    }
    config.api.max_json_body_bytes = LIMIT;
    let store = Store::open(
        Arc::new(MemBackend::default()),
        StoreOptions::new(RegionId::new(REGION).unwrap(), config.keyspaces.clone()),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    )
    .expect("store opens");
    let state = Arc::new(AppState {
        store: Arc::new(store),
        config: Arc::new(config),
        metrics: Arc::new(Metrics::new()),
        started: Instant::now(),
        serving: AtomicBool::new(true),
        replicator: OnceLock::new(),
        subscribers: atoll_server::streams::Subscribers::new(),
        auth: None,
        fencing: Default::default(),
        homes: Default::default(),
        strong: Default::default(),
        watch: Default::default(),
        sessions: Default::default(),
        membership: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, state)
}

type Reply = RawReply;

/// Reads one complete response within 10 s; `100 Continue` heads are returned as they are, so
/// callers can see them.
async fn read_reply(sock: &mut TcpStream) -> Result<Reply, String> {
    raw_http::read_reply(sock, Duration::from_secs(10), Continue::Return).await
}

/// Sends `method path` with `extra` headers and a body of [`BODY`] bytes of `{`, trickled in
/// ([`raw_http::slow_upload`]), framed by `Content-Length` or chunked, its response read after
/// the first chunk (`read_early`) or after the whole body.
async fn slow_upload(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    chunked: bool,
    read_early: bool,
) -> Result<Reply, String> {
    let u = Upload {
        method,
        path,
        extra,
        total: BODY,
        fill: b'{',
        chunked,
        read_early,
    };
    raw_http::slow_upload(addr, &u).await
}

/// Every way of sending: `(chunked, read_early)`.
const WAYS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

#[tokio::test]
async fn a_value_over_the_keyspace_limit_gets_a_readable_413() {
    let (addr, state) = serve().await;
    for (chunked, read_early) in WAYS {
        let what = format!("chunked {chunked}, read early {read_early}");
        for path in ["/v1/kv/sessions/big", "/v1/kv/carts/big"] {
            let r = slow_upload(addr, "PUT", path, "", chunked, read_early)
                .await
                .unwrap_or_else(|e| panic!("PUT {path}, {what}: {e}"));
            assert_eq!(r.status, 413, "{what}: {r:?}");
            assert_eq!(r.code(), "ATOLL-VALUE-TOO-LARGE", "{what}");
            assert_eq!(r.header("connection"), Some("close"), "{what}");
            assert_eq!(r.header("x-atoll-region"), Some(REGION), "{what}");
        }
    }
    assert!(state.store.get("sessions", b"big").unwrap().is_none());
    assert!(state.store.get("carts", b"big").unwrap().is_none());
}

#[tokio::test]
async fn a_json_body_over_the_limit_gets_a_readable_413() {
    let (addr, _) = serve().await;
    for (chunked, read_early) in WAYS {
        let what = format!("chunked {chunked}, read early {read_early}");
        for path in ["/v1/counter/ratelimits/k", "/v1/set/flags/k"] {
            let r = slow_upload(addr, "POST", path, "", chunked, read_early)
                .await
                .unwrap_or_else(|e| panic!("POST {path}, {what}: {e}"));
            assert_eq!(r.status, 413, "{what}: {r:?}");
            assert_eq!(r.code(), "ATOLL-REQUEST-TOO-LARGE", "{what}");
        }
    }
}

#[tokio::test]
async fn refused_routes_with_bodies_get_readable_answers() {
    let (addr, _) = serve().await;
    for (chunked, read_early) in WAYS {
        let what = format!("chunked {chunked}, read early {read_early}");
        let r = slow_upload(addr, "PUT", "/v1/nosuch", "", chunked, read_early)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, 404, "{what}");
        let r = slow_upload(addr, "PATCH", "/v1/kv/sessions/k", "", chunked, read_early)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, 405, "{what}");
        // A keyspace that does not exist is refused before the body is read.
        let r = slow_upload(addr, "PUT", "/v1/kv/nosuch/k", "", chunked, read_early)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status, 404, "{what}");
        assert_eq!(r.code(), "ATOLL-UNKNOWN-KEYSPACE", "{what}");
    }
}

#[tokio::test]
async fn expect_100_continue_over_the_limit_gets_the_413_without_sending_the_body() {
    let (addr, _) = serve().await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /v1/kv/sessions/k HTTP/1.1\r\nhost: test\r\nexpect: 100-continue\r\ncontent-length: {BODY}\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let r = read_reply(&mut sock).await.unwrap();
    assert_eq!(
        r.status, 413,
        "the final answer, no 100 Continue first: {r:?}"
    );
    assert_eq!(r.code(), "ATOLL-VALUE-TOO-LARGE");
    assert_eq!(r.header("connection"), Some("close"));
    // The region does not wait for a body it said it does not want: it closes.
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut rest)).await;
    assert!(matches!(eof, Ok(Ok(0))), "closed after the answer: {eof:?}");
}

#[tokio::test]
async fn a_body_within_the_limit_keeps_the_connection() {
    let (addr, state) = serve().await;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    for i in 0..2 {
        let req = format!(
            "PUT /v1/kv/sessions/k{i} HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhello"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let r = read_reply(&mut sock).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("connection"), None, "keep-alive as usual");
    }
    assert!(state.store.get("sessions", b"k1").unwrap().is_some());
}
