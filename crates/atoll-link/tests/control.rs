//! The control HTTP API against a real link server on 127.0.0.1: the happy path, and bad input
//! that must get a 4xx JSON error and change nothing. The `atoll link` command line over it is
//! tested in `crates/atoll-cli/tests/link.rs`.

mod common;

use atoll_link::{LinkServer, LinkStatus, Shaping};
use common::*;
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

const ENCODED: &str = "us-east-1-%3Eeu-west-1";

struct Api {
    base: String,
    http: Client,
}

impl Api {
    fn new(s: &LinkServer) -> Self {
        Self {
            base: s.control_url().unwrap(),
            http: Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }
}

/// What must not change when a request is refused: shaping and faults (ids and kinds).
fn snapshot(s: &LinkServer) -> Vec<(String, Shaping, Shaping, Vec<String>)> {
    s.status()
        .into_iter()
        .map(|l: LinkStatus| {
            (
                l.name,
                l.forward,
                l.reverse,
                l.faults
                    .iter()
                    .map(|f| format!("{} {}", f.id, f.description))
                    .collect(),
            )
        })
        .collect()
}

fn assert_error(status: StatusCode, body: &Value, want_status: u16, code: &str, what: &str) {
    assert_eq!(status.as_u16(), want_status, "{what}: {body}");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{what}: {body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    assert!(
        e["hint"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    assert_eq!(e["retryable"], false, "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_lifecycle_over_http() {
    let server = server().await;
    let api = Api::new(&server);

    let (st, v) = api.call(Method::GET, "/healthz", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["status"], "ok");

    let (st, v) = api.call(Method::GET, "/v1/links", None).await;
    assert_eq!(st, 200);
    let links = v["links"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    assert_eq!(links[0]["name"], LINK);
    assert_eq!(links[0]["from_region"], "us-east-1");
    assert_eq!(links[0]["to_region"], "eu-west-1");
    assert_eq!(links[0]["forward"]["latency_ms"], 5.0);
    assert_eq!(
        links[0]["listen"],
        server.listen_addr(LINK).unwrap().to_string()
    );
    assert!(links[0]["counters"]["forward_bytes"].is_u64());

    let path = format!("/v1/links/{ENCODED}/faults");
    let (st, v) = api
        .call(
            Method::POST,
            &path,
            Some(r#"{"kind": "partition", "mode": "stall", "for": "10m"}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id, "f-1");
    assert_eq!(v["kind"], "partition");
    assert_eq!(v["mode"], "stall");
    assert_eq!(v["link"], LINK);
    assert!(v["remaining_ms"].as_u64().unwrap() > 590_000);

    // A literal `>` in the path works too.
    let (st, v) = api
        .call(
            Method::POST,
            "/v1/links/us-east-1->eu-west-1/faults",
            Some(r#"{"kind": "latency", "extra_ms": 100, "direction": "reverse", "for": "1m"}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["id"], "f-2");

    let (st, v) = api.call(Method::GET, &path, None).await;
    assert_eq!(st, 200);
    let faults = v["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 2);
    assert_eq!(faults[1]["extra_ms"], 100.0);
    let (_, v) = api
        .call(Method::GET, &format!("/v1/links/{ENCODED}"), None)
        .await;
    assert_eq!(v["effective"]["forward"]["blocked"], true);
    assert_eq!(v["effective"]["reverse"]["latency_ms"], 105.0);
    assert_eq!(v["effective"]["stall_new"], true);

    let (st, v) = api
        .call(
            Method::PUT,
            &format!("{path}/{id}"),
            Some(r#"{"for": "30s"}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["remaining_ms"].as_u64().unwrap() <= 30_000);

    let (st, v) = api
        .call(Method::DELETE, &format!("{path}/{id}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["removed"]["id"], id);
    let (st, v) = api
        .call(Method::DELETE, &format!("{path}/{id}"), None)
        .await;
    assert_error(st, &v, 404, "ATOLL-LINK-UNKNOWN-FAULT", "removed twice");
    assert!(v["error"]["message"].as_str().unwrap().contains("f-1"));

    let (st, v) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(st, 200);
    assert_eq!(v["removed"], 1);
    assert!(server.link_status(LINK).unwrap().faults.is_empty());

    let (st, v) = api
        .call(
            Method::PATCH,
            &format!("/v1/links/{ENCODED}"),
            Some(r#"{"latency_ms": 40, "jitter_ms": 2, "reverse_bandwidth": "10MB/s"}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (f, r) = server.shaping(LINK).unwrap();
    assert_eq!(
        (f.latency_ms, f.jitter_ms, f.bandwidth_bytes_per_sec),
        (40.0, 2.0, None)
    );
    assert_eq!(
        (r.latency_ms, r.jitter_ms, r.bandwidth_bytes_per_sec),
        (40.0, 2.0, Some(10_000_000))
    );
    server.shutdown().await;
}

/// (method, path, body, expected status, expected code, what it checks)
type BadCase = (
    Method,
    String,
    Option<&'static str>,
    u16,
    &'static str,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let server = server().await;
    let api = Api::new(&server);
    let faults = format!("/v1/links/{ENCODED}/faults");
    let link = format!("/v1/links/{ENCODED}");
    // One fault to renew and remove, so "nothing changed" also covers faults.
    let (st, v) = api
        .call(
            Method::POST,
            &faults,
            Some(r#"{"kind": "reset", "for": "10m"}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let before = snapshot(&server);

    let cases: Vec<BadCase> = vec![
        (
            Method::POST,
            faults.clone(),
            Some(r#"{"kind": "partition", "for": "#),
            400,
            "ATOLL-MALFORMED-BODY",
            "malformed JSON",
        ),
        (
            Method::POST,
            faults.clone(),
            Some("not json"),
            400,
            "ATOLL-MALFORMED-BODY",
            "not JSON",
        ),
        (
            Method::POST,
            faults.clone(),
            Some(""),
            400,
            "ATOLL-MALFORMED-BODY",
            "empty body",
        ),
        (
            Method::POST,
            faults.clone(),
            Some(r#"{"kind": "partition", "for": "1m", "severity": 9}"#),
            400,
            "ATOLL-MALFORMED-BODY",
            "unknown field",
        ),
        (
            Method::POST,
            faults.clone(),
            Some(r#"{"kind": "partition", "for": "0s"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "lease 0",
        ),
        (
            Method::POST,
            faults.clone(),
            Some(r#"{"kind": "partition", "for": "48h"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "lease over 24h",
        ),
        (
            Method::POST,
            faults.clone(),
            Some(r#"{"kind": "partition"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "no lease",
        ),
        (
            Method::POST,
            faults.clone(),
            Some(r#"{"kind": "latency", "extra_ms": -20, "for": "1m"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "negative spike",
        ),
        (
            Method::POST,
            faults.clone(),
            Some(r#"{"kind": "oneway", "for": "1m"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "oneway without direction",
        ),
        (
            Method::POST,
            faults.clone(),
            Some(r#"{"kind": "meteor", "for": "1m"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "unknown kind",
        ),
        (
            Method::POST,
            "/v1/links/nowhere/faults".into(),
            Some(r#"{"kind": "partition", "for": "1m"}"#),
            404,
            "ATOLL-LINK-UNKNOWN-LINK",
            "unknown link",
        ),
        (
            Method::PUT,
            format!("{faults}/f-99"),
            Some(r#"{"for": "1m"}"#),
            404,
            "ATOLL-LINK-UNKNOWN-FAULT",
            "renew unknown id",
        ),
        (
            Method::PUT,
            format!("{faults}/f-1"),
            Some(r#"{"for": "0ms"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "renew with lease 0",
        ),
        (
            Method::PUT,
            format!("{faults}/f-1"),
            Some(r#"{"for": "1m", "extra": 1}"#),
            400,
            "ATOLL-MALFORMED-BODY",
            "renew unknown field",
        ),
        (
            Method::PUT,
            format!("{faults}/banana"),
            Some(r#"{"for": "1m"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "malformed id",
        ),
        (
            Method::DELETE,
            format!("{faults}/f-99"),
            None,
            404,
            "ATOLL-LINK-UNKNOWN-FAULT",
            "remove unknown id",
        ),
        (
            Method::DELETE,
            "/v1/links/nowhere/faults/f-1".into(),
            None,
            404,
            "ATOLL-LINK-UNKNOWN-LINK",
            "remove on unknown link",
        ),
        (
            Method::PATCH,
            link.clone(),
            Some(r#"{"latency_ms": -5}"#),
            400,
            "ATOLL-LINK-INVALID",
            "negative delay",
        ),
        (
            Method::PATCH,
            link.clone(),
            Some(r#"{"latency_ms": 61000}"#),
            400,
            "ATOLL-LINK-INVALID",
            "absurd delay",
        ),
        (
            Method::PATCH,
            link.clone(),
            Some(r#"{"latency_ms": 1, "jitter_ms": 50}"#),
            400,
            "ATOLL-LINK-INVALID",
            "jitter over 10x latency",
        ),
        (
            Method::PATCH,
            link.clone(),
            Some(r#"{"bandwidth": 0}"#),
            400,
            "ATOLL-LINK-INVALID",
            "zero bandwidth",
        ),
        (
            Method::PATCH,
            link.clone(),
            Some(r#"{"latency_ms": 50, "reverse_bandwidth": "0MB/s"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "half-valid patch",
        ),
        (
            Method::PATCH,
            link.clone(),
            Some(r#"{"latency": 5}"#),
            400,
            "ATOLL-MALFORMED-BODY",
            "patch unknown field",
        ),
        (
            Method::PATCH,
            "/v1/links/nowhere".into(),
            Some(r#"{"latency_ms": 5}"#),
            404,
            "ATOLL-LINK-UNKNOWN-LINK",
            "patch unknown link",
        ),
        (
            Method::GET,
            "/v1/links/nowhere".into(),
            None,
            404,
            "ATOLL-LINK-UNKNOWN-LINK",
            "get unknown link",
        ),
        (
            Method::GET,
            "/v2/links".into(),
            None,
            404,
            "ATOLL-NOT-FOUND",
            "unknown route",
        ),
        (
            Method::POST,
            "/v1/links".into(),
            Some("{}"),
            405,
            "ATOLL-METHOD-NOT-ALLOWED",
            "wrong method",
        ),
    ];
    for (method, path, body, want, code, what) in cases {
        let (st, v) = api.call(method, &path, body).await;
        assert_error(st, &v, want, code, what);
        assert_eq!(snapshot(&server), before, "{what} changed something");
    }
    // The field is named in the message.
    let (_, v) = api
        .call(Method::PATCH, &link, Some(r#"{"reverse_latency_ms": -1}"#))
        .await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reverse_latency_ms"),
        "{v}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_fault_ids_say_so() {
    let server = server().await;
    let api = Api::new(&server);
    let faults = format!("/v1/links/{ENCODED}/faults");
    let (st, v) = api
        .call(
            Method::POST,
            &faults,
            Some(r#"{"kind": "oneway", "direction": "reverse", "for": "100ms"}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(3), "the lease to end", || async {
        server.link_status(LINK).unwrap().faults.is_empty()
    })
    .await;
    for (method, body) in [
        (Method::PUT, Some(r#"{"for": "1m"}"#)),
        (Method::DELETE, None),
    ] {
        let (st, v) = api.call(method, &format!("{faults}/{id}"), body).await;
        assert_error(st, &v, 404, "ATOLL-LINK-FAULT-EXPIRED", "expired id");
        assert!(v["error"]["message"].as_str().unwrap().contains(&id));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported() {
    let server = server().await;
    let api = Api::new(&server);
    let mut s = connect(&server, LINK).await;
    round_trips(&mut s, 2, 10).await;
    // Bytes are counted once written; the echo may reach the client a moment before that.
    wait_until(Duration::from_secs(2), "the byte counters", || async {
        let c = server.link_status(LINK).unwrap().counters;
        c.forward_bytes == 20 && c.reverse_bytes == 20
    })
    .await;
    server
        .add_fault(LINK, atoll_link::FaultKind::Reset, Duration::from_secs(60))
        .unwrap();
    let resp = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = resp.text().await.unwrap();
    for needle in [
        "atoll_link_bytes_total{link=\"us-east-1->eu-west-1\",direction=\"forward\"} 20",
        "atoll_link_bytes_total{link=\"us-east-1->eu-west-1\",direction=\"reverse\"} 20",
        "atoll_link_connections{link=\"eu-west-1->us-east-1\"} 0",
        "atoll_link_connections_opened_total{link=\"us-east-1->eu-west-1\"} 1",
        "atoll_link_faults_active{link=\"us-east-1->eu-west-1\"} 1",
        "atoll_link_faults_active{link=\"eu-west-1->us-east-1\"} 0",
        "atoll_link_delay_seconds{link=\"us-east-1->eu-west-1\",direction=\"forward\"} 0.005",
        "# EOF",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn beyond_loopback_the_control_api_refuses_to_start_without_a_token() {
    let echo = echo_server().await;
    for blank in [None, Some(String::new()), Some("  ".to_string())] {
        for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7400"] {
            let opts = atoll_link::proxy::ProxyOptions {
                control_token: blank.clone(),
                ..Default::default()
            };
            // Refused before anything is bound (192.0.2.1 is not even an address of this host).
            let e = LinkServer::start_with(
                vec![spec(LINK, echo, Shaping::delay(5.0))],
                Some(addr.parse().unwrap()),
                opts,
            )
            .await
            .err()
            .unwrap_or_else(|| panic!("{addr} with token {blank:?} started"));
            assert_eq!(e.code(), "ATOLL-LINK-TOKEN-REQUIRED", "{addr}: {e}");
            assert!(e.to_string().contains("beyond loopback"), "{e}");
            assert!(e.hint().contains("ATOLL_LINK_TOKEN"), "{}", e.hint());
        }
    }
}

#[tokio::test]
async fn with_a_token_every_route_but_health_and_metrics_needs_it() {
    let server = server_with_token(TOKEN).await;
    let api = Api::new(&server);
    let before = snapshot(&server);
    let fault = r#"{"kind": "partition", "for": "10m"}"#;
    let isolate = r#"{"region": "us-east-1", "kind": "isolate", "for": "10m"}"#;
    let path = format!("/v1/links/{ENCODED}/faults");
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic bGluazp0b2tlbg=="),
        Some("Bearer "),
    ] {
        for (method, p, body) in [
            (Method::GET, "/v1/links", None),
            (Method::POST, path.as_str(), Some(fault)),
            (Method::DELETE, path.as_str(), None),
            (Method::GET, "/v1/faults", None),
            (Method::POST, "/v1/faults", Some(isolate)),
            (Method::DELETE, "/v1/faults", None),
            (Method::GET, "/v1/faults/f-1", None),
            (Method::PUT, "/v1/faults/f-1", Some(r#"{"for": "1h"}"#)),
            (Method::DELETE, "/v1/faults/f-1", None),
            (Method::GET, "/v1/nosuch", None),
        ] {
            let mut req = api.http.request(method.clone(), format!("{}{p}", api.base));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {p} with {auth:?}");
            assert!(resp.headers().contains_key("www-authenticate"));
            let v: Value = resp.json().await.unwrap();
            assert_error(
                StatusCode::UNAUTHORIZED,
                &v,
                401,
                "ATOLL-UNAUTHORIZED",
                &format!("{method} {p}"),
            );
        }
    }
    assert_eq!(snapshot(&server), before, "nothing changed");
    // Health and metrics stay open (probes and Prometheus carry no token).
    assert_eq!(api.call(Method::GET, "/healthz", None).await.0, 200);
    assert_eq!(api.call(Method::GET, "/metrics", None).await.0, 200);
    // With the token, everything works.
    let (status, v) = api
        .http
        .post(format!("{}{path}", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(fault)
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(status, 201, "{:?}", v.text().await);
    assert_eq!(server.link_status(LINK).unwrap().faults.len(), 1);
    let resp = api
        .http
        .post(format!("{}/v1/faults", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(isolate)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    assert_eq!(server.faults().len(), 2);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Pair and region faults.
fn links_of(v: &Value) -> Vec<String> {
    v["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_and_region_faults_over_http() {
    let server = mesh_server(&[US, EU, AP], &[]).await;
    let api = Api::new(&server);
    let us_eu = format!("{US}->{EU}");
    let eu_us = format!("{EU}->{US}");

    // A pair: both directed links, one fault.
    let (st, v) = api
        .call(
            Method::POST,
            "/v1/faults",
            Some(r#"{"pair": "us-east-1<->eu-west-1", "kind": "partition", "for": "10m"}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let pair_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["scope"], "pair");
    assert_eq!(v["target"], "us-east-1<->eu-west-1");
    assert_eq!(v["kind"], "partition");
    assert_eq!(v["mode"], "stall");
    assert_eq!(links_of(&v), sorted(&[us_eu.clone(), eu_us.clone()]));
    assert!(v["remaining_ms"].as_u64().unwrap() > 590_000);
    assert_eq!(cut_links(&server), sorted(&[us_eu.clone(), eu_us.clone()]));
    // Each link lists it, with its target.
    for name in [&us_eu, &eu_us] {
        let (st, l) = api
            .call(
                Method::GET,
                &format!("/v1/links/{}/faults", encode_link(name)),
                None,
            )
            .await;
        assert_eq!(st, 200, "{l}");
        assert_eq!(l["faults"][0]["id"], pair_id.as_str());
        assert_eq!(l["faults"][0]["scope"], "pair");
    }

    // A region: every link to and from it.
    let (st, v) = api
        .call(
            Method::POST,
            "/v1/faults",
            Some(r#"{"region": "ap-southeast-1", "kind": "isolate", "mode": "refuse", "for": "10m"}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let iso_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        (v["scope"].as_str(), v["kind"].as_str()),
        (Some("region"), Some("isolate"))
    );
    assert_eq!(v["description"], "isolate (refuse)");
    let ap_links: Vec<String> = [
        format!("{US}->{AP}"),
        format!("{EU}->{AP}"),
        format!("{AP}->{US}"),
        format!("{AP}->{EU}"),
    ]
    .into();
    assert_eq!(links_of(&v), sorted(&ap_links));
    assert_eq!(cut_links(&server).len(), 6);
    assert!(
        server
            .link_status(&format!("{AP}->{EU}"))
            .unwrap()
            .effective
            .refuse_new
    );

    // Listed once each, however many links they cover.
    let (st, v) = api.call(Method::GET, "/v1/faults", None).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = v["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [pair_id.as_str(), iso_id.as_str()]);
    let (st, v) = api
        .call(Method::GET, &format!("/v1/faults/{iso_id}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["target"], AP);

    // Renewed as a whole: every link it covers has the new lease.
    let (st, v) = api
        .call(
            Method::PUT,
            &format!("/v1/faults/{pair_id}"),
            Some(r#"{"for": "30s"}"#),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    for name in [&us_eu, &eu_us] {
        let f = &server.link_status(name).unwrap().faults[0];
        assert!(f.remaining_ms <= 30_000, "{name}: {f:?}");
    }

    // Not through one of its links: 409, naming its target, and nothing changes.
    let before = snapshot(&server);
    let one = format!("/v1/links/{}/faults/{pair_id}", encode_link(&us_eu));
    for (method, body) in [
        (Method::PUT, Some(r#"{"for": "1h"}"#)),
        (Method::DELETE, None),
    ] {
        let (st, v) = api.call(method, &one, body).await;
        assert_error(
            st,
            &v,
            409,
            "ATOLL-LINK-FAULT-SCOPE",
            "a pair fault through a link",
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("pair `us-east-1<->eu-west-1`"),
            "{v}"
        );
    }
    assert_eq!(snapshot(&server), before);
    // Clearing a link removes its own faults only, and says what still covers it.
    let (st, v) = api
        .call(
            Method::DELETE,
            &format!("/v1/links/{}/faults", encode_link(&format!("{US}->{AP}"))),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["removed"], 0);
    assert_eq!(v["still_covered_by"], serde_json::json!([iso_id]));

    // Removed as a whole: both links heal at once, the region's stay cut.
    let (st, v) = api
        .call(Method::DELETE, &format!("/v1/faults/{pair_id}"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["removed"]["id"], pair_id.as_str());
    assert_eq!(cut_links(&server), sorted(&ap_links));
    let (st, v) = api
        .call(Method::GET, &format!("/v1/faults/{pair_id}"), None)
        .await;
    assert_error(
        st,
        &v,
        404,
        "ATOLL-LINK-UNKNOWN-FAULT",
        "removed pair fault",
    );

    // DELETE /v1/faults heals everything.
    let (st, v) = api.call(Method::DELETE, "/v1/faults", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["removed"], 1);
    assert!(cut_links(&server).is_empty());
    assert!(server.faults().is_empty());

    // A short lease ends for both links of the pair together, by itself.
    let (st, v) = api
        .call(
            Method::POST,
            "/v1/faults",
            Some(r#"{"pair": "eu-west-1<->ap-southeast-1", "kind": "partition", "for": "200ms"}"#),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(cut_links(&server).len(), 2);
    wait_until(
        Duration::from_secs(3),
        "the pair's lease to end",
        || async { cut_links(&server).is_empty() && server.faults().is_empty() },
    )
    .await;
    let (st, v) = api
        .call(
            Method::PUT,
            &format!("/v1/faults/{id}"),
            Some(r#"{"for": "1m"}"#),
        )
        .await;
    assert_error(
        st,
        &v,
        404,
        "ATOLL-LINK-FAULT-EXPIRED",
        "expired pair fault",
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pair_and_region_faults_are_refused_and_change_nothing() {
    // us-east-1 and eu-west-1 have a link each way; us-east-1->ap-southeast-1 goes one way only;
    // eu-west-1 and ap-southeast-1 have no link between them.
    let server = mesh_server(&[US, EU], &[(US, AP)]).await;
    let api = Api::new(&server);
    // One fault of each target, so "nothing changed" also covers them.
    for body in [
        r#"{"pair": "us-east-1<->eu-west-1", "kind": "reset", "for": "10m"}"#,
        r#"{"region": "eu-west-1", "kind": "isolate", "for": "10m"}"#,
    ] {
        let (st, v) = api.call(Method::POST, "/v1/faults", Some(body)).await;
        assert_eq!(st, 201, "{v}");
    }
    let faults = |s: &LinkServer| -> Vec<(String, String, Vec<String>, String)> {
        s.faults()
            .into_iter()
            .map(|f| (f.id.to_string(), f.target, f.links, f.description))
            .collect()
    };
    let before = (snapshot(&server), faults(&server));
    let post = |body: &'static str, want: u16, code: &'static str, what: &'static str| {
        (
            Method::POST,
            "/v1/faults".to_string(),
            Some(body),
            want,
            code,
            what,
        )
    };
    let cases: Vec<BadCase> = vec![
        post(
            r#"{"region": "sa-east-1", "kind": "isolate", "for": "1m"}"#,
            404,
            "ATOLL-LINK-UNKNOWN-REGION",
            "isolate a region no link goes to or from (unknown, or without links)",
        ),
        post(
            r#"{"pair": "us-east-1<->sa-east-1", "kind": "partition", "for": "1m"}"#,
            404,
            "ATOLL-LINK-UNKNOWN-REGION",
            "pair with an unknown region",
        ),
        post(
            r#"{"pair": "eu-west-1<->eu-west-1", "kind": "partition", "for": "1m"}"#,
            400,
            "ATOLL-LINK-PAIR-SAME-REGION",
            "pair naming one region twice",
        ),
        post(
            r#"{"pair": "eu-west-1<->ap-southeast-1", "kind": "partition", "for": "1m"}"#,
            404,
            "ATOLL-LINK-NO-LINKS",
            "pair with no links",
        ),
        post(
            r#"{"pair": "us-east-1<->ap-southeast-1", "kind": "partition", "for": "1m"}"#,
            404,
            "ATOLL-LINK-NO-LINKS",
            "pair with a link one way only",
        ),
        post(
            r#"{"pair": "us-east-1->eu-west-1", "kind": "partition", "for": "1m"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "a link name as a pair",
        ),
        post(
            r#"{"region": "US-EAST", "kind": "isolate", "for": "1m"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "malformed region",
        ),
        post(
            r#"{"link": "us-east-1", "kind": "partition", "for": "1m"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "a region as a link",
        ),
        post(
            r#"{"link": "nowhere", "kind": "partition", "for": "1m"}"#,
            404,
            "ATOLL-LINK-UNKNOWN-LINK",
            "unknown link",
        ),
        post(
            r#"{"region": "us-east-1", "kind": "partition", "for": "1m"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "a region takes isolate",
        ),
        post(
            r#"{"pair": "us-east-1<->eu-west-1", "kind": "isolate", "for": "1m"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "isolate on a pair",
        ),
        post(
            r#"{"pair": "us-east-1<->eu-west-1", "kind": "oneway", "direction": "forward", "for": "1m"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "oneway on a pair",
        ),
        post(
            r#"{"kind": "partition", "for": "1m"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "no target",
        ),
        post(
            r#"{"pair": "us-east-1<->eu-west-1", "region": "us-east-1", "kind": "partition", "for": "1m"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "two targets",
        ),
        post(
            r#"{"region": "us-east-1", "kind": "isolate"}"#,
            400,
            "ATOLL-LINK-INVALID",
            "no lease",
        ),
        post(
            r#"{"region": "us-east-1", "kind": "isolate", "for": "1m", "scope": "region"}"#,
            400,
            "ATOLL-MALFORMED-BODY",
            "unknown field",
        ),
        (
            Method::POST,
            format!("/v1/links/{ENCODED}/faults"),
            Some(r#"{"pair": "us-east-1<->eu-west-1", "kind": "partition", "for": "1m"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "a pair on a link route",
        ),
        (
            Method::PUT,
            "/v1/faults/f-99".into(),
            Some(r#"{"for": "1m"}"#),
            404,
            "ATOLL-LINK-UNKNOWN-FAULT",
            "renew unknown id",
        ),
        (
            Method::DELETE,
            "/v1/faults/f-99".into(),
            None,
            404,
            "ATOLL-LINK-UNKNOWN-FAULT",
            "remove unknown id",
        ),
        (
            Method::PUT,
            "/v1/faults/f-1".into(),
            Some(r#"{"for": "0s"}"#),
            400,
            "ATOLL-LINK-INVALID",
            "renew for 0",
        ),
        (
            Method::DELETE,
            "/v1/faults/banana".into(),
            None,
            400,
            "ATOLL-LINK-INVALID",
            "malformed id",
        ),
    ];
    for (method, path, body, want, code, what) in cases {
        let (st, v) = api.call(method, &path, body).await;
        assert_error(st, &v, want, code, what);
        assert_eq!(
            (snapshot(&server), faults(&server)),
            before,
            "{what} changed something"
        );
    }
    // The messages name the problem.
    for (body, needle) in [
        (
            r#"{"region": "sa-east-1", "kind": "isolate", "for": "1m"}"#,
            "regions with links here: ap-southeast-1, eu-west-1, us-east-1",
        ),
        (
            r#"{"pair": "us-east-1<->ap-southeast-1", "kind": "partition", "for": "1m"}"#,
            "no link goes from ap-southeast-1 to us-east-1",
        ),
        (
            r#"{"pair": "eu-west-1<->eu-west-1", "kind": "partition", "for": "1m"}"#,
            "same region twice",
        ),
    ] {
        let (_, v) = api.call(Method::POST, "/v1/faults", Some(body)).await;
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(needle), "{body}: {m}");
    }
    server.shutdown().await;
}
