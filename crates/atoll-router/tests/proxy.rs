//! The HTTP proxy against fake regions on loopback: only the client API is forwarded, routing
//! by policy, per-request failover, no replay of non-idempotent requests (by the keyspace's
//! policy), passive ejection, the no-healthy modes, early answers a slow client can read, and
//! the write lease: writes to the primary, fencing refusals retried elsewhere, other answers
//! never.

mod common;

use atoll_core::RegionId;
use atoll_router::health::{HealthState, Probe, Role};
use atoll_router::policy::Mode as RouteMode;
use atoll_router::prober::{HttpChecker, Prober};
use atoll_router::proxy::ProxySettings;
use atoll_router::runtime::RouterCtx;
use common::*;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn router_toml(outlier_failures: u32) -> String {
    format!(
        r#"
[router]
[router.health]
failure_threshold = 1
recovery_threshold = 1
hold_down_ms = 0
ramp_secs = 0
outlier_failures = {outlier_failures}
[[router.names]]
name = "api"
policy = "failover"
no_healthy = "fail-closed"
[[router.names]]
name = "near"
policy = "latency"
[[router.names]]
name = "open"
policy = "failover"
no_healthy = "fail-open"
[[router.names]]
name = "lkg"
policy = "failover"
no_healthy = "last-known-good"
"#
    )
}

fn up(ctx: &RouterCtx, region: &str, rtt_ms: f64) {
    ctx.state
        .observe_probe(
            &RegionId::new(region).unwrap(),
            Probe::Ok,
            Some(rtt_ms),
            ctx.now_ms(),
        )
        .unwrap();
}

fn down(ctx: &RouterCtx, region: &str) {
    ctx.state
        .observe_probe(
            &RegionId::new(region).unwrap(),
            Probe::Failed("test".into()),
            None,
            ctx.now_ms(),
        )
        .unwrap();
}

/// One round of real health checks of every region (their `/healthz` over HTTP), as the prober
/// runs them: health, round trips and fencing roles.
async fn check_all(ctx: &RouterCtx) {
    let checker = Arc::new(HttpChecker::new(&ctx.state.config().health));
    Prober::new(ctx.clone(), checker).check_all().await;
}

fn routed_to(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("x-atoll-routed-to")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn name_mode(ctx: &RouterCtx, fqdn: &str) -> RouteMode {
    ctx.state
        .status(ctx.now_ms())
        .unwrap()
        .names
        .into_iter()
        .find(|n| n.name == fqdn)
        .unwrap()
        .mode
}

#[tokio::test]
async fn routes_to_the_policys_first_choice_and_says_where() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(5));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 50.0);
    up(&ctx, "b", 1.0);
    let failover = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let latency = serve_proxy(&ctx, "near", ProxySettings::default()).await;
    let c = http();

    let r = c
        .get(format!("http://{}/v1/kv/s/k?x=1", failover.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(routed_to(&r).as_deref(), Some("a"));
    assert_eq!(
        r.headers()["x-atoll-region"],
        "a",
        "region headers pass through"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["region"], "a");
    assert_eq!(a.requests(), vec!["GET /v1/kv/s/k?x=1"]);
    assert!(b.requests().is_empty());

    // Latency with an unknown client location: the lowest measured round trip (b).
    let r = c
        .get(format!("http://{}/v1/status", latency.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(routed_to(&r).as_deref(), Some("b"));

    // A drained region gets nothing new.
    ctx.state.drain("a", "test", None, ctx.now_ms()).unwrap();
    let r = c
        .get(format!("http://{}/v1/kv/s/k", failover.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(routed_to(&r).as_deref(), Some("b"));

    let text = ctx.metrics.encode();
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_requests_total{region="a",code="200"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_requests_total{region="b",code="200"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, r#"atoll_router_active_connections{region="a"}"#),
        Some(0.0),
        "in-flight gauge back to zero once bodies are read"
    );
}

#[tokio::test]
async fn connection_refused_is_retried_elsewhere_for_every_method() {
    let refused = refused_addr().await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", refused), ("b", b.addr)], &router_toml(0));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    up(&ctx, "b", 1.0);
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let c = http();
    let base = format!("http://{}", p.addr);
    let reqs = [
        c.get(format!("{base}/v1/kv/s/k")),
        c.put(format!("{base}/v1/kv/s/k")).body("v"),
        c.delete(format!("{base}/v1/kv/s/k")),
        // Never reached region a, so even a POST is safe to send to b.
        c.post(format!("{base}/v1/counter/c/k"))
            .body(r#"{"delta":1}"#),
    ];
    for req in reqs {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "no client-visible error");
        assert_eq!(routed_to(&r).as_deref(), Some("b"));
    }
    assert_eq!(
        b.requests(),
        vec![
            "GET /v1/kv/s/k",
            "PUT /v1/kv/s/k",
            "DELETE /v1/kv/s/k",
            "POST /v1/counter/c/k"
        ]
    );
    let text = ctx.metrics.encode();
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_retries_total{from_region="a",reason="connect"}"#
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn a_post_whose_connection_dropped_is_not_replayed() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    a.set_data(Mode::Close);
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(0));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    up(&ctx, "b", 1.0);
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let c = http();
    let base = format!("http://{}", p.addr);

    let r = c
        .post(format!("{base}/v1/counter/c/k"))
        .body(r#"{"delta":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(routed_to(&r).as_deref(), Some("a"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "ATOLL-UPSTREAM-OUTCOME-UNKNOWN");
    assert_eq!(e["error"]["retryable"], false);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may or may not")
    );
    assert!(e["error"]["hint"].as_str().is_some());
    assert_eq!(
        a.requests(),
        vec!["POST /v1/counter/c/k"],
        "received exactly once"
    );
    assert!(b.requests().is_empty(), "never replayed on b");

    // Idempotent requests that may have reached a are retried on b: a read, and a write to an
    // lww keyspace (`s`), where a second identical write changes nothing.
    let r = c.get(format!("{base}/v1/kv/s/k")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    let r = c
        .put(format!("{base}/v1/kv/s/k"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    assert_eq!(b.requests(), vec!["GET /v1/kv/s/k", "PUT /v1/kv/s/k"]);
    let text = ctx.metrics.encode();
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_retries_total{from_region="a",reason="reset"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_requests_total{region="a",code="502"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_hanging_region_times_out_and_only_idempotent_requests_move_on() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    a.set_data(Mode::Hang);
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(0));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    up(&ctx, "b", 1.0);
    let settings = ProxySettings {
        upstream_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let p = serve_proxy(&ctx, "api", settings).await;
    let c = http();
    let base = format!("http://{}", p.addr);
    let r = c
        .post(format!("{base}/v1/set/f/k"))
        .body(r#"{"add":["x"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "ATOLL-UPSTREAM-OUTCOME-UNKNOWN");
    assert!(e["error"]["message"].as_str().unwrap().contains("300 ms"));
    let r = c.get(format!("{base}/v1/kv/s/k")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    assert_eq!(b.requests(), vec!["GET /v1/kv/s/k"]);
    assert_eq!(a.requests().len(), 2);
}

#[tokio::test]
async fn consecutive_failures_eject_a_region_before_the_checks_notice() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    a.set_data(Mode::Status(503));
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(3));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    up(&ctx, "b", 1.0);
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let c = http();
    let url = format!("http://{}/v1/kv/s/k", p.addr);
    for i in 0..3 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}: retried on b");
        assert_eq!(routed_to(&r).as_deref(), Some("b"));
        let expect = if i < 2 {
            HealthState::Healthy
        } else {
            HealthState::Unhealthy
        };
        assert_eq!(health_of(&ctx, "a").health, expect, "after request {i}");
    }
    let st = health_of(&ctx, "a");
    assert!(st.reason.contains("ejected"), "{}", st.reason);
    assert_eq!(a.requests().len(), 3);
    // Ejected: the next request goes straight to b.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(routed_to(&r).as_deref(), Some("b"));
    assert_eq!(a.requests().len(), 3);
    let text = ctx.metrics.encode();
    assert_eq!(
        metric(&text, r#"atoll_router_ejections_total{region="a"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, r#"atoll_router_region_healthy{region="a"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_retries_total{from_region="a",reason="status"}"#
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn fail_closed_refuses_with_503_and_says_so() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(5));
    let ctx = ctx(&cfg);
    // Nothing checked yet: nothing healthy.
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let c = http();
    let url = format!("http://{}/v1/kv/s/k", p.addr);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(routed_to(&r).is_none());
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "ATOLL-NO-HEALTHY-REGION");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("fail-closed") && message.contains("starting"),
        "{message}"
    );
    // Once every region has been checked (and failed), it is no longer "starting".
    down(&ctx, "a");
    down(&ctx, "b");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("fail-closed") && !message.contains("starting"),
        "{message}"
    );
    assert!(a.requests().is_empty() && b.requests().is_empty());
    assert_eq!(name_mode(&ctx, "api.atoll.test."), RouteMode::FailClosed);
    let gauge = r#"atoll_router_fail_open_active{name="api.atoll.test.",mode="fail-closed"}"#;
    assert_eq!(metric(&ctx.metrics.encode(), gauge), Some(1.0));
    assert_eq!(
        metric(
            &ctx.metrics.encode(),
            r#"atoll_router_requests_total{region="none",code="503"}"#
        ),
        Some(2.0)
    );

    up(&ctx, "b", 1.0);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    assert_eq!(metric(&ctx.metrics.encode(), gauge), Some(0.0));
}

#[tokio::test]
async fn fail_open_routes_to_every_region_and_still_fails_over() {
    let refused = refused_addr().await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", refused), ("b", b.addr)], &router_toml(0));
    let ctx = ctx(&cfg);
    down(&ctx, "a");
    down(&ctx, "b");
    let p = serve_proxy(&ctx, "open", ProxySettings::default()).await;
    let r = http()
        .get(format!("http://{}/v1/kv/s/k", p.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    assert_eq!(name_mode(&ctx, "open.atoll.test."), RouteMode::FailOpen);
    assert_eq!(
        metric(
            &ctx.metrics.encode(),
            r#"atoll_router_fail_open_active{name="open.atoll.test.",mode="fail-open"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn last_known_good_serves_the_regions_that_were_healthy_last() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(0));
    let ctx = ctx(&cfg);
    let p = serve_proxy(&ctx, "lkg", ProxySettings::default()).await;
    let c = http();
    let url = format!("http://{}/v1/kv/s/k", p.addr);
    // Never anything healthy: nothing known good either.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    up(&ctx, "b", 1.0);
    down(&ctx, "a");
    down(&ctx, "b");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    assert!(a.requests().is_empty(), "a was never good");
    assert_eq!(name_mode(&ctx, "lkg.atoll.test."), RouteMode::LastKnownGood);
    assert_eq!(
        metric(
            &ctx.metrics.encode(),
            r#"atoll_router_fail_open_active{name="lkg.atoll.test.",mode="last-known-good"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_routing() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], &router_toml(5));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    let settings = ProxySettings {
        max_body_bytes: 1024,
        ..ProxySettings::default()
    };
    let p = serve_proxy(&ctx, "api", settings).await;
    let r = http()
        .put(format!("http://{}/v1/kv/s/k", p.addr))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "ATOLL-REQUEST-TOO-LARGE");
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn mvr_writes_are_replayed_only_with_a_context() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    a.set_data(Mode::Close);
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(0));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    up(&ctx, "b", 1.0);
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let c = http();
    let url = format!("http://{}/v1/kv/carts/k", p.addr);

    // Without a context an mvr write adds a sibling: a second attempt would add a second one.
    let refused = [
        c.put(&url).body("apple"),
        c.delete(&url),
        // A keyspace the config does not declare: its policy is unknown.
        c.put(format!("http://{}/v1/kv/nosuch/k", p.addr)).body("v"),
    ];
    for req in refused {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(routed_to(&r).as_deref(), Some("a"));
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "ATOLL-UPSTREAM-OUTCOME-UNKNOWN");
        assert_eq!(e["error"]["retryable"], false);
        assert!(
            e["error"]["hint"].as_str().unwrap().contains("siblings"),
            "{e}"
        );
    }
    assert!(b.requests().is_empty(), "never replayed on b");

    // With a context it supersedes what its client read, wherever it lands.
    for req in [
        c.put(&url).header("x-atoll-context", "ctx").body("apple"),
        c.delete(&url).header("x-atoll-context", "ctx"),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(
            (r.status().as_u16(), routed_to(&r)),
            (200, Some("b".into()))
        );
    }
    assert_eq!(
        b.requests(),
        vec!["PUT /v1/kv/carts/k", "DELETE /v1/kv/carts/k"]
    );
    assert_eq!(
        a.requests(),
        vec![
            "PUT /v1/kv/carts/k",
            "DELETE /v1/kv/carts/k",
            "PUT /v1/kv/nosuch/k",
            "PUT /v1/kv/carts/k",
            "DELETE /v1/kv/carts/k",
        ],
        "each received exactly once"
    );
}

#[tokio::test]
async fn only_the_client_api_is_forwarded() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], &router_toml(5));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let refused = [
        "POST /v1/replication/heartbeat",
        "POST /v1/replication/subscribe",
        "POST //v1/replication/subscribe",
        "POST /v1//replication/subscribe",
        "POST /v1/kv/../replication/heartbeat",
        "POST /v1/kv/s/../../replication/heartbeat",
        "POST /v1/kv/s/%2e%2E/%2E%2e/replication/heartbeat",
        "POST /v1/kv/%2e%2e/replication/subscribe",
        "POST /v1/%72eplication/subscribe",
        "POST /v1/replication%2Fsubscribe",
        "POST /V1/replication/subscribe",
        "POST /v1/REPLICATION/subscribe",
        "GET /V1/kv/s/k",
        "GET /v1/kv/S/k",
        "GET /metrics",
        "GET /v1/status/../replication/subscribe",
        "GET /admin",
        "GET /",
        "POST http://127.0.0.1/v1/replication/heartbeat",
        "OPTIONS *",
    ];
    for line in refused {
        let r = raw_request(
            p.addr,
            &format!("{line} HTTP/1.1\r\nhost: test\r\ncontent-length: 2\r\n\r\n{{}}"),
        )
        .await;
        assert_eq!(r.status, 404, "{line}: {r:?}");
        let e = r.json();
        assert_eq!(e["error"]["code"], "ATOLL-NOT-PROXIED", "{line}");
        assert_eq!(e["error"]["retryable"], false);
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains("/v1/kv/{keyspace}/{key}"), "{message}");
        assert!(r.header("x-atoll-routed-to").is_none(), "{line}");
    }
    assert!(
        a.requests().is_empty(),
        "nothing reached the region: {:?}",
        a.requests()
    );
    assert_eq!(
        metric(
            &ctx.metrics.encode(),
            r#"atoll_router_requests_total{region="none",code="404"}"#
        ),
        Some(refused.len() as f64)
    );

    for line in [
        "GET /v1/kv/s/k?x=1",
        "GET /v1/kv/s/a//b",
        "GET /v1/kv/s/a%2F..%2Fb",
        "GET /v1/counter/c/k",
        "GET /v1/set/f/k",
        "GET /v1/conflicts/s?limit=5",
        "GET /v1/status",
        "GET /v1/openapi.json",
        "GET /healthz",
    ] {
        let r = raw_request(p.addr, &format!("{line} HTTP/1.1\r\nhost: test\r\n\r\n")).await;
        assert_eq!(r.status, 200, "{line}: {r:?}");
        assert_eq!(r.header("x-atoll-routed-to"), Some("a"), "{line}");
    }
    assert_eq!(
        a.requests().len(),
        8,
        "/healthz is not counted: {:?}",
        a.requests()
    );
}

#[tokio::test]
async fn a_slow_client_reads_the_early_answers_whole() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], &router_toml(5));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    let settings = ProxySettings {
        max_body_bytes: 1024,
        ..ProxySettings::default()
    };
    let p = serve_proxy(&ctx, "api", settings).await;
    for chunked in [false, true] {
        for read_early in [false, true] {
            let what = format!("chunked {chunked}, read early {read_early}");
            // Over the body limit: 413, before or after the whole body was sent.
            let r = slow_upload(p.addr, "PUT", "/v1/kv/s/k", 512 << 10, chunked, read_early)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(r.status, 413, "{what}");
            assert_eq!(
                r.json()["error"]["code"],
                "ATOLL-REQUEST-TOO-LARGE",
                "{what}"
            );
            assert_eq!(r.header("connection"), Some("close"), "{what}");
            // Not proxied: 404 without reading the body.
            let r = slow_upload(
                p.addr,
                "POST",
                "/v1/replication/subscribe",
                512 << 10,
                chunked,
                read_early,
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(r.status, 404, "{what}");
            assert_eq!(r.json()["error"]["code"], "ATOLL-NOT-PROXIED", "{what}");
        }
    }
    assert!(a.requests().is_empty());
}

#[tokio::test]
async fn writes_go_to_the_primary_and_reads_to_the_nearest() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let c = FakeRegion::start("c").await;
    a.set_health(Mode::role("standby", 3, Some("b")));
    b.set_health(Mode::role("primary", 3, Some("b")));
    c.set_health(Mode::Role {
        status: "passive",
        role: "passive",
        epoch: 3,
        primary: Some("b"),
    });
    let cfg = config(
        &[("a", a.addr), ("b", b.addr), ("c", c.addr)],
        &router_toml(5),
    );
    let ctx = ctx(&cfg);
    check_all(&ctx).await;
    // a is nearest by measured round trip.
    up(&ctx, "a", 1.0);
    up(&ctx, "b", 200.0);
    let st = ctx.state.status(ctx.now_ms()).unwrap();
    let roles: Vec<_> = st
        .regions
        .iter()
        .map(|r| (r.region.as_str(), r.health, r.role, r.epoch))
        .collect();
    assert_eq!(
        roles,
        [
            ("a", HealthState::Healthy, Some(Role::Standby), Some(3)),
            ("b", HealthState::Healthy, Some(Role::Primary), Some(3)),
            ("c", HealthState::Passive, Some(Role::Passive), Some(3)),
        ]
    );
    assert_eq!(st.primary.as_ref().map(|p| p.region.as_str()), Some("b"));

    let near = serve_proxy(&ctx, "near", ProxySettings::default()).await;
    let cl = http();
    let base = format!("http://{}", near.addr);
    let r = cl.get(format!("{base}/v1/kv/s/k")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("a".into())),
        "a read goes to the nearest region, a standby"
    );
    for req in [
        cl.put(format!("{base}/v1/kv/s/k")).body("v"),
        cl.post(format!("{base}/v1/counter/c/k"))
            .body(r#"{"delta":1}"#),
        cl.delete(format!("{base}/v1/kv/carts/k")),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(
            (r.status().as_u16(), routed_to(&r)),
            (200, Some("b".into())),
            "a write goes to the primary"
        );
    }
    assert_eq!(a.requests(), vec!["GET /v1/kv/s/k"]);
    assert_eq!(
        b.requests(),
        vec![
            "PUT /v1/kv/s/k",
            "POST /v1/counter/c/k",
            "DELETE /v1/kv/carts/k"
        ]
    );
    assert!(c.requests().is_empty(), "a passive region gets nothing");

    // The failover name follows the lease holder for reads too.
    let api = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let r = cl
        .get(format!("http://{}/v1/kv/s/k", api.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(routed_to(&r).as_deref(), Some("b"));

    let text = ctx.metrics.encode();
    for (series, want) in [
        (
            r#"atoll_router_region_role{region="b",role="primary"}"#,
            1.0,
        ),
        (
            r#"atoll_router_region_role{region="b",role="standby"}"#,
            0.0,
        ),
        (
            r#"atoll_router_region_role{region="a",role="standby"}"#,
            1.0,
        ),
        (
            r#"atoll_router_region_role{region="c",role="passive"}"#,
            1.0,
        ),
        (r#"atoll_router_region_epoch{region="b"}"#, 3.0),
        (r#"atoll_router_region_healthy{region="c"}"#, 0.0),
        ("atoll_router_primary_claims", 1.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn a_write_refused_by_a_standby_is_sent_on_and_applied_once() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    // The router's view is one check behind: a still says primary (epoch 3), but the lease has
    // moved to b (epoch 4) and a refuses writes.
    a.set_health(Mode::role("primary", 3, Some("a")));
    b.set_health(Mode::role("standby", 3, Some("a")));
    a.set_data(Mode::Refuse("ATOLL-NOT-PRIMARY"));
    // Outlier detection at 1: a refusal must not count as a failed request.
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(1));
    let ctx = ctx(&cfg);
    check_all(&ctx).await;
    let p = serve_proxy(&ctx, "near", ProxySettings::default()).await;
    let cl = http();
    let base = format!("http://{}", p.addr);

    // Never idempotent: a counter increment and an mvr write without a context.
    let r = cl
        .post(format!("{base}/v1/counter/c/k"))
        .body(r#"{"delta":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    let r = cl
        .put(format!("{base}/v1/kv/carts/k"))
        .body("apple")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    assert_eq!(
        a.requests(),
        vec!["POST /v1/counter/c/k", "PUT /v1/kv/carts/k"]
    );
    assert_eq!(
        b.requests(),
        vec!["POST /v1/counter/c/k", "PUT /v1/kv/carts/k"],
        "applied exactly once, where the lease is"
    );
    assert_eq!(
        b.bodies(),
        vec![r#"{"delta":1}"#, "apple"],
        "the body replayed whole"
    );
    assert_eq!(
        health_of(&ctx, "a").health,
        HealthState::Healthy,
        "refusals are no failures: a still serves reads"
    );
    let text = ctx.metrics.encode();
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_retries_total{from_region="a",reason="not-primary"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, r#"atoll_router_ejections_total{region="a"}"#),
        None
    );

    // The other fencing refusals too.
    for (code, reason) in [("ATOLL-FENCED", "fenced"), ("ATOLL-PASSIVE", "passive")] {
        a.set_data(Mode::Refuse(code));
        let r = cl
            .post(format!("{base}/v1/set/f/k"))
            .body(r#"{"add":["x"]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), routed_to(&r)),
            (200, Some("b".into())),
            "{code}"
        );
        let series = format!(r#"atoll_router_retries_total{{from_region="a",reason="{reason}"}}"#);
        assert_eq!(metric(&ctx.metrics.encode(), &series), Some(1.0));
    }

    // Every region refuses: the client gets the last refusal as it was, each region asked once.
    a.set_data(Mode::Refuse("ATOLL-NOT-PRIMARY"));
    b.set_data(Mode::Refuse("ATOLL-NOT-PRIMARY"));
    let (na, nb) = (a.requests().len(), b.requests().len());
    let r = cl
        .post(format!("{base}/v1/counter/c/k"))
        .body(r#"{"delta":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (503, Some("b".into()))
    );
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "ATOLL-NOT-PRIMARY");
    assert_eq!(e["error"]["retryable"], true);
    assert_eq!((a.requests().len(), b.requests().len()), (na + 1, nb + 1));
}

#[tokio::test]
async fn a_post_answered_with_another_5xx_is_not_retried() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    a.set_health(Mode::role("primary", 3, Some("a")));
    b.set_health(Mode::role("standby", 3, Some("a")));
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(0));
    let ctx = ctx(&cfg);
    check_all(&ctx).await;
    let p = serve_proxy(&ctx, "near", ProxySettings::default()).await;
    let cl = http();
    let base = format!("http://{}", p.addr);
    // A 503 that is not a fencing refusal (the write may have been applied), a plain 503, a 500.
    for (mode, status) in [
        (Mode::Refuse("ATOLL-OVERLOADED"), 503),
        (Mode::Status(503), 503),
        (Mode::Status(500), 500),
    ] {
        a.set_data(mode.clone());
        let r = cl
            .post(format!("{base}/v1/counter/c/k"))
            .body(r#"{"delta":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), routed_to(&r)),
            (status, Some("a".into())),
            "{mode:?}"
        );
        // The region's own answer, unchanged.
        let e: Value = r.json().await.unwrap();
        match &mode {
            Mode::Refuse(code) => assert_eq!(e["error"]["code"], *code),
            _ => assert_eq!(e["region"], "a"),
        }
    }
    assert_eq!(a.requests().len(), 3);
    assert!(b.requests().is_empty(), "never sent on");
    // An idempotent write answered 503 moves on, as before.
    a.set_data(Mode::Refuse("ATOLL-OVERLOADED"));
    let r = cl
        .put(format!("{base}/v1/kv/s/k"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), routed_to(&r)),
        (200, Some("b".into()))
    );
    assert_eq!(
        metric(
            &ctx.metrics.encode(),
            r#"atoll_router_retries_total{from_region="a",reason="status"}"#
        ),
        Some(1.0)
    );
}

/// Waits until the proxy keeps exactly `n` open idle connections to `region`.
async fn idle_connections(p: &ProxyServer, region: &str, n: usize) {
    eventually(
        Duration::from_secs(5),
        &format!("{n} idle connection(s) to {region}"),
        || async { (p.proxy.idle_connections(region) == Some(n)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn keep_alive_connections_to_a_region_are_reused() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], &router_toml(5));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let c = http();
    let base = format!("http://{}", p.addr);
    for i in 0..10 {
        let r = if i % 2 == 0 {
            c.get(format!("{base}/v1/kv/s/k{i}")).send().await.unwrap()
        } else {
            c.put(format!("{base}/v1/kv/s/k{i}"))
                .body("v")
                .send()
                .await
                .unwrap()
        };
        assert_eq!(r.status(), 200, "request {i}");
        r.bytes().await.unwrap();
        idle_connections(&p, "a", 1).await;
    }
    // A large answer is streamed (chunked, not read whole first), and its connection goes back
    // to the pool once it has been read to the end.
    a.set_data(Mode::Large(1 << 20));
    let r = c.get(format!("{base}/v1/kv/s/big")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(routed_to(&r).as_deref(), Some("a"));
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 1 << 20);
    assert!(body.iter().all(|b| *b == b'x'));
    idle_connections(&p, "a", 1).await;
    a.set_data(Mode::Ok);
    let r = c.get(format!("{base}/v1/kv/s/k")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(a.connections(), 1, "every request went over one connection");
    assert_eq!(a.requests().len(), 12);
}

#[tokio::test]
async fn a_pooled_connection_the_region_closed_is_not_used_again() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    a.set_data(Mode::OkThenClose);
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(1));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    up(&ctx, "b", 1.0);
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let c = http();
    let base = format!("http://{}", p.addr);
    for i in 0..3u64 {
        // A counter increment is never replayed: had it gone down a closed connection, the
        // client would get 502 ATOLL-UPSTREAM-OUTCOME-UNKNOWN.
        let r = c
            .post(format!("{base}/v1/counter/c/k"))
            .body(r#"{"delta":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(routed_to(&r).as_deref(), Some("a"));
        // The region closed the connection after its answer; once the proxy has seen that, no
        // idle connection to a is left.
        eventually(
            Duration::from_secs(5),
            "a to close the connection",
            || async { (a.closed_after_answer() == i + 1).then_some(()) },
        )
        .await;
        idle_connections(&p, "a", 0).await;
    }
    assert_eq!(a.connections(), 3, "a new connection for every request");
    assert!(b.requests().is_empty());
    assert_eq!(health_of(&ctx, "a").health, HealthState::Healthy);
    let text = ctx.metrics.encode();
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_requests_total{region="a",code="200"}"#
        ),
        Some(3.0)
    );
    assert!(!text.contains(r#"atoll_router_retries_total{from_region="a""#));
}

#[tokio::test]
async fn a_connection_broken_before_the_answer_counts_as_a_failure() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    a.set_data(Mode::Close);
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(3));
    let ctx = ctx(&cfg);
    up(&ctx, "a", 1.0);
    up(&ctx, "b", 1.0);
    let p = serve_proxy(&ctx, "api", ProxySettings::default()).await;
    let c = http();
    let url = format!("http://{}/v1/kv/s/k", p.addr);
    for i in 0..3 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}: retried on b");
        assert_eq!(routed_to(&r).as_deref(), Some("b"));
    }
    // Three broken connections in a row: ejected, and the next request goes straight to b.
    let st = health_of(&ctx, "a");
    assert_eq!(st.health, HealthState::Unhealthy);
    assert!(st.reason.contains("ejected"), "{}", st.reason);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(routed_to(&r).as_deref(), Some("b"));
    assert_eq!(a.requests().len(), 3);
    assert_eq!(p.proxy.idle_connections("a"), Some(0));
    let text = ctx.metrics.encode();
    assert_eq!(
        metric(
            &text,
            r#"atoll_router_retries_total{from_region="a",reason="reset"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, r#"atoll_router_ejections_total{region="a"}"#),
        Some(1.0)
    );
}
