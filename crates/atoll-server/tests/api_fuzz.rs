//! Fuzzing of the client API's path, header and body parsing, through the real axum router of a
//! region (in process, no sockets): whatever arrives, the region answers (never panics), never
//! with a 5xx, and every refusal is a JSON error with a stable code. A fixed number of cases keeps
//! the test suite bounded in time.

use atoll_config::Config;
use atoll_core::RegionId;
use atoll_core::clock::ManualClock;
use atoll_server::api::{AppState, router};
use atoll_server::metrics::Metrics;
use atoll_server::streams::Subscribers;
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;

const EXAMPLE: &str = include_str!("../../../examples/single-region.toml");

fn state() -> Arc<AppState> {
    let config = Config::parse(EXAMPLE, "single-region.toml").expect("example parses");
    let store = Store::open(
        Arc::new(MemBackend::default()),
        StoreOptions::new(
            RegionId::new("us-east-1").expect("region"),
            config.keyspaces.clone(),
        ),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    )
    .expect("store");
    Arc::new(AppState {
        store: Arc::new(store),
        config: Arc::new(config),
        metrics: Arc::new(Metrics::new()),
        started: Instant::now(),
        serving: std::sync::atomic::AtomicBool::new(true),
        replicator: std::sync::OnceLock::new(),
        subscribers: Subscribers::new(),
        auth: None,
        fencing: Default::default(),
        homes: Default::default(),
        strong: Default::default(),
        watch: Default::default(),
        sessions: Default::default(),
        membership: Default::default(),
    })
}

/// Path segments that exercise the parsers: keyspaces that exist and do not, percent-encoding
/// (valid and broken), dot segments, empty segments, long and non-ASCII keys.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("sessions".to_string()),
        Just("carts".to_string()),
        Just("ratelimits".to_string()),
        Just("flags".to_string()),
        Just("nope".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just("%".to_string()),
        Just("%zz".to_string()),
        Just("%00".to_string()),
        Just("%ff%fe".to_string()),
        Just(String::new()),
        Just("k".repeat(2000)),
        "[a-zA-Z0-9._~-]{1,12}",
        "[\\PC]{1,6}".prop_map(|s| percent_encoding::utf8_percent_encode(
            &s,
            percent_encoding::NON_ALPHANUMERIC
        )
        .to_string()),
    ]
}

fn request() -> impl Strategy<Value = (String, String, Option<String>, Vec<u8>)> {
    let method = prop_oneof![
        Just("GET"),
        Just("PUT"),
        Just("POST"),
        Just("DELETE"),
        Just("PATCH"),
        Just("HEAD")
    ];
    let kind = prop_oneof![
        Just("kv"),
        Just("counter"),
        Just("set"),
        Just("conflicts"),
        Just("status"),
        Just("x"),
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(br#"{"delta": 5}"#.to_vec()),
        Just(br#"{"delta": 9223372036854775807}"#.to_vec()),
        Just(br#"{"delta": -9223372036854775808}"#.to_vec()),
        Just(br#"{"delta": "5"}"#.to_vec()),
        Just(br#"{"add": ["a"], "remove": ["a"]}"#.to_vec()),
        Just(br#"{"add": [1, 2]}"#.to_vec()),
        Just(br#"{"add": ["#.to_vec()),
    ];
    let context = proptest::option::of(prop_oneof![
        "[A-Za-z0-9_-]{0,40}",
        Just("AAAA".to_string()),
        Just("not base64 !".to_string()),
    ]);
    (
        method,
        kind,
        proptest::collection::vec(segment(), 0..4),
        context,
        body,
    )
        .prop_map(|(m, k, segs, ctx, body)| {
            let path = format!("/v1/{k}/{}", segs.join("/"));
            (m.to_string(), path, ctx, body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_500, ..ProptestConfig::default() })]

    #[test]
    fn no_request_makes_the_region_fail(reqs in proptest::collection::vec(request(), 1..4)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let app = router(state());
        rt.block_on(async move {
            for (method, path, ctx, body) in reqs {
                let mut b = Request::builder().method(method.as_str()).uri(&path);
                if let Some(c) = &ctx {
                    b = b.header("x-atoll-context", c);
                }
                let Ok(req) = b.body(Body::from(body)) else {
                    // Not a request the HTTP layer would let through (an invalid header value).
                    continue;
                };
                let resp = app.clone().oneshot(req).await.expect("infallible");
                let status = resp.status();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert!(
                    status.as_u16() < 500,
                    "{method} {path} (context {ctx:?}): {status} {}",
                    String::from_utf8_lossy(&body)
                );
                if status.as_u16() >= 400 && method != "HEAD" {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                        panic!("{method} {path}: {status} without a JSON error: {}", String::from_utf8_lossy(&body))
                    });
                    let code = v["error"]["code"].as_str().unwrap_or("");
                    assert!(code.starts_with("ATOLL-"), "{method} {path}: {status} {v}");
                }
            }
        });
    }
}
