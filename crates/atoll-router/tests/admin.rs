//! The admin API of a running router: drains move traffic and survive restarts, tokens are
//! required, bad input changes nothing, weights and the staged failback ramp show in status.

mod common;

use atoll_router::admin::STATE_FILE;
use atoll_router::health::HealthState;
use atoll_router::runtime::RouterHandle;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

struct Admin {
    base: String,
    c: reqwest::Client,
}

impl Admin {
    fn new(h: &RouterHandle) -> Self {
        Self {
            base: format!("http://{}", h.admin_addr()),
            c: http(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut r = self.c.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: Option<&str>) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(TOKEN), body)
            .await
    }

    async fn status(&self) -> Value {
        let (s, v) = self
            .send(reqwest::Method::GET, "/v1/router/status", Some(TOKEN), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }
}

fn region<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == name)
        .unwrap()
}

async fn routed(h: &RouterHandle) -> String {
    let r = http()
        .get(format!("http://{}/v1/kv/s/k", h.proxy_addr().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["x-atoll-routed-to"]
        .to_str()
        .unwrap()
        .to_string()
}

async fn both_healthy(h: &RouterHandle) {
    for r in ["a", "b"] {
        eventually(Duration::from_secs(5), r, || async {
            (health_of(h.ctx(), r).health == HealthState::Healthy).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn drain_and_undrain_move_traffic() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    both_healthy(&h).await;
    let admin = Admin::new(&h);
    assert_eq!(routed(&h).await, "a");

    let (s, v) = admin
        .post(
            "/v1/router/regions/a/drain",
            Some(r#"{"reason": "kernel upgrade"}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["drained"]["reason"], "kernel upgrade");
    assert_eq!(v["routable"], false);
    assert_eq!(routed(&h).await, "b");
    let st = admin.status().await;
    assert_eq!(region(&st, "a")["drained"]["reason"], "kernel upgrade");
    assert_eq!(
        region(&st, "a")["health"],
        "healthy",
        "drained, not unhealthy"
    );
    let (s, m) = admin
        .send(reqwest::Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        metric(
            m.as_str().unwrap(),
            r#"atoll_router_region_drained{region="a"}"#
        ),
        Some(1.0)
    );

    let (s, v) = admin.post("/v1/router/regions/a/undrain", None).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["drained"].is_null());
    assert_eq!(routed(&h).await, "a");
    // Undraining twice is an error, and changes nothing.
    let (s, v) = admin.post("/v1/router/regions/a/undrain", None).await;
    assert_eq!(s, 400, "{v}");
    h.shutdown().await;
}

#[tokio::test]
async fn drains_survive_a_restart() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg.clone(), dir.path(), None).await;
    let admin = Admin::new(&h);
    let (s, v) = admin
        .post(
            "/v1/router/regions/a/drain",
            Some(r#"{"reason": "move", "for": "30m"}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let until = v["drained"]["until_ms"].as_u64().unwrap();
    let file: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(file["version"], 1);
    assert_eq!(file["drains"]["a"]["reason"], "move");
    h.shutdown().await;

    let h = start_router(cfg, dir.path(), None).await;
    let admin = Admin::new(&h);
    let st = admin.status().await;
    assert_eq!(region(&st, "a")["drained"]["reason"], "move");
    assert_eq!(region(&st, "a")["drained"]["until_ms"], until);
    both_healthy(&h).await;
    assert_eq!(routed(&h).await, "b", "still drained after the restart");
    h.shutdown().await;
}

#[tokio::test]
async fn a_timed_drain_lifts_by_itself() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    both_healthy(&h).await;
    let admin = Admin::new(&h);
    let (s, _) = admin
        .post(
            "/v1/router/regions/a/drain",
            Some(r#"{"reason": "blip", "for": "300ms"}"#),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(routed(&h).await, "b");
    eventually(Duration::from_secs(5), "drain expiry", || async {
        let p = h.state().persisted().unwrap();
        p.drains.is_empty().then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "expiry persisted", || async {
        let f: Value = serde_json::from_slice(&std::fs::read(h.state_file()).ok()?).ok()?;
        f["drains"].as_object()?.is_empty().then_some(())
    })
    .await;
    assert_eq!(routed(&h).await, "a");
    h.shutdown().await;
}

#[tokio::test]
async fn every_route_but_healthz_and_metrics_needs_the_token() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    let admin = Admin::new(&h);
    use reqwest::Method;
    let routes = [
        (Method::GET, "/v1/router/status", None),
        (
            Method::POST,
            "/v1/router/regions/a/drain",
            Some(r#"{"reason":"x"}"#),
        ),
        (Method::POST, "/v1/router/regions/a/undrain", None),
        (
            Method::PUT,
            "/v1/router/names/w/weights/a",
            Some(r#"{"weight":2}"#),
        ),
        (Method::GET, "/v1/nope", None),
    ];
    for (m, path, body) in routes {
        for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let (s, v) = admin.send(m.clone(), path, token, body).await;
            assert_eq!(s, 401, "{m} {path} with {token:?}: {v}");
            assert_eq!(v["error"]["code"], "ATOLL-UNAUTHORIZED");
            assert_eq!(v["error"]["retryable"], false);
        }
    }
    assert!(
        h.state().persisted().unwrap().drains.is_empty(),
        "nothing changed"
    );
    assert!(h.state().persisted().unwrap().weights.is_empty());
    assert!(!h.state_file().exists());
    let (s, v) = admin.send(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, &v["status"]), (200, &json!("serving")));
    let (s, v) = admin.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, 200);
    assert!(v.as_str().unwrap().contains("atoll_router_region_healthy"));
    // With the token, an unknown route is a JSON 404.
    let (s, v) = admin.send(Method::GET, "/v1/nope", Some(TOKEN), None).await;
    assert_eq!((s, &v["error"]["code"]), (404, &json!("ATOLL-NOT-FOUND")));
    let (s, _) = admin
        .send(Method::GET, "/v1/router/regions/a/drain", Some(TOKEN), None)
        .await;
    assert_eq!(s, 405);
    h.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_4xx_and_changes_nothing() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    let admin = Admin::new(&h);
    use reqwest::Method;
    let cases: &[(Method, &str, Option<&str>, u16, &str)] = &[
        (
            Method::POST,
            "/v1/router/regions/a/drain",
            Some("{not json"),
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            Method::POST,
            "/v1/router/regions/a/drain",
            Some(r#"{"reason":"x","extra":1}"#),
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            Method::POST,
            "/v1/router/regions/a/drain",
            None,
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            Method::POST,
            "/v1/router/regions/a/drain",
            Some(r#"{"reason":"  "}"#),
            400,
            "ATOLL-BAD-REQUEST",
        ),
        (
            Method::POST,
            "/v1/router/regions/a/drain",
            Some(r#"{"reason":"x","for":"soon"}"#),
            400,
            "ATOLL-BAD-REQUEST",
        ),
        (
            Method::POST,
            "/v1/router/regions/a/drain",
            Some(r#"{"reason":"x","for":"0s"}"#),
            400,
            "ATOLL-BAD-REQUEST",
        ),
        (
            Method::POST,
            "/v1/router/regions/mars-1/drain",
            Some(r#"{"reason":"x"}"#),
            404,
            "ATOLL-UNKNOWN-REGION",
        ),
        (
            Method::POST,
            "/v1/router/regions/a/undrain",
            Some(r#"{"force":true}"#),
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            Method::POST,
            "/v1/router/regions/a/undrain",
            None,
            400,
            "ATOLL-BAD-REQUEST",
        ),
        (
            Method::PUT,
            "/v1/router/names/api/weights/a",
            Some(r#"{"weight":2}"#),
            400,
            "ATOLL-BAD-REQUEST",
        ),
        (
            Method::PUT,
            "/v1/router/names/nope/weights/a",
            Some(r#"{"weight":2}"#),
            404,
            "ATOLL-UNKNOWN-ROUTED-NAME",
        ),
        (
            Method::PUT,
            "/v1/router/names/w/weights/mars-1",
            Some(r#"{"weight":2}"#),
            404,
            "ATOLL-UNKNOWN-REGION",
        ),
        (
            Method::PUT,
            "/v1/router/names/w/weights/a",
            Some(r#"{"weight":-1}"#),
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            Method::PUT,
            "/v1/router/names/w/weights/a",
            Some(r#"{"weight":1.5}"#),
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            Method::PUT,
            "/v1/router/names/w/weights/a",
            Some(r#"{"weight":2000000}"#),
            400,
            "ATOLL-BAD-REQUEST",
        ),
        (
            Method::PUT,
            "/v1/router/names/w/weights/a",
            Some(r#"{"weight":2,"why":"x"}"#),
            400,
            "ATOLL-MALFORMED-BODY",
        ),
    ];
    let before = h.state().persisted().unwrap();
    for (m, path, body, status, code) in cases {
        let (s, v) = admin.send(m.clone(), path, Some(TOKEN), *body).await;
        assert_eq!(s, *status, "{m} {path} {body:?}: {v}");
        assert_eq!(v["error"]["code"], *code, "{m} {path} {body:?}: {v}");
        assert!(v["error"]["message"].as_str().is_some());
        assert!(v["error"]["hint"].as_str().is_some());
        assert_eq!(
            h.state().persisted().unwrap(),
            before,
            "{m} {path} {body:?}"
        );
    }
    assert!(!h.state_file().exists(), "nothing was written");
    h.shutdown().await;
}

#[tokio::test]
async fn weights_steer_a_weighted_name() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), Some("w")).await;
    both_healthy(&h).await;
    let admin = Admin::new(&h);
    let (s, v) = admin
        .send(
            reqwest::Method::PUT,
            "/v1/router/names/w/weights/a",
            Some(TOKEN),
            Some(r#"{"weight": 0}"#),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["weights"]["a"], 0);
    for _ in 0..20 {
        assert_eq!(routed(&h).await, "b", "weight 0: a only as a backup");
    }
    let file: Value = serde_json::from_slice(&std::fs::read(h.state_file()).unwrap()).unwrap();
    assert_eq!(file["weights"]["w.atoll.test."]["a"], 0);
    let st = admin.status().await;
    let w = st["names"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "w.atoll.test.")
        .unwrap();
    assert_eq!(w["weights"]["a"], 0);
    h.shutdown().await;
}

#[tokio::test]
async fn staged_failback_is_visible_in_status() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(
        &[("a", a.addr), ("b", b.addr)],
        &FAST_ROUTER.replace("ramp_secs = 0", "ramp_secs = 600"),
    );
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    both_healthy(&h).await;
    let admin = Admin::new(&h);
    let st = admin.status().await;
    assert_eq!(
        region(&st, "a")["ramp"],
        1.0,
        "first bring-up does not ramp"
    );
    a.set_health(Mode::Status(500));
    eventually(Duration::from_secs(5), "a down", || async {
        (health_of(h.ctx(), "a").health == HealthState::Unhealthy).then_some(())
    })
    .await;
    a.set_health(Mode::Ok);
    eventually(Duration::from_secs(5), "a back", || async {
        (health_of(h.ctx(), "a").health == HealthState::Healthy).then_some(())
    })
    .await;
    let st = admin.status().await;
    let ramp = region(&st, "a")["ramp"].as_f64().unwrap();
    assert!(
        (0.0..0.1).contains(&ramp),
        "a recovered region ramps up over 600 s, got {ramp}"
    );
    assert_eq!(region(&st, "a")["routable"], true);
    // While ramping, b (next in failover order) takes most of the traffic.
    let mut to_b = 0;
    for _ in 0..20 {
        if routed(&h).await == "b" {
            to_b += 1;
        }
    }
    assert!(to_b >= 15, "only {to_b} of 20 to b during a's ramp");
    h.shutdown().await;
}
