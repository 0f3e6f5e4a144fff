//! Starting a router: refusals (token, config, state file, proxy name) and the DNS listener
//! sharing the router's state. The `atoll router` client commands against a running router are
//! tested in `crates/atoll-cli/tests/router.rs`.

mod common;

use atoll_router::health::HealthState;
use atoll_router::runtime::{Router, RouterError, RouterOptions};
use common::*;
use std::time::Duration;

fn opts(cfg: std::sync::Arc<atoll_config::Config>, dir: &std::path::Path) -> RouterOptions {
    let mut o = RouterOptions::new(
        cfg,
        "127.0.0.1:0".parse().unwrap(),
        dir.to_path_buf(),
        TOKEN.into(),
    );
    o.proxy_listen = Some("127.0.0.1:0".parse().unwrap());
    o
}

async fn start_err(o: RouterOptions) -> RouterError {
    match Router::start(o).await {
        Ok(h) => {
            h.shutdown().await;
            panic!("started")
        }
        Err(e) => e,
    }
}

#[tokio::test]
async fn refuses_to_start_when_something_is_wrong() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();

    let mut o = opts(cfg.clone(), dir.path());
    o.admin_token = "  ".into();
    assert!(start_err(o).await.to_string().contains("token"));

    let mut o = opts(cfg.clone(), dir.path());
    o.proxy_name = Some("nope".into());
    let e = start_err(o).await.to_string();
    assert!(e.contains("nope") && e.contains("api"), "{e}");

    let no_router = config(&[("a", a.addr)], "");
    let e = start_err(opts(no_router, dir.path())).await.to_string();
    assert!(e.contains("[router]"), "{e}");

    std::fs::write(dir.path().join("router-state.json"), b"{garbage").unwrap();
    let e = start_err(opts(cfg.clone(), dir.path())).await.to_string();
    assert!(e.contains("router-state.json"), "{e}");

    std::fs::write(
        dir.path().join("router-state.json"),
        br#"{"version": 9, "drains": {}, "weights": {}}"#,
    )
    .unwrap();
    let e = start_err(opts(cfg.clone(), dir.path())).await.to_string();
    assert!(e.contains("newer"), "{e}");

    // A drain of a region no longer in the config is dropped (and logged), not fatal.
    std::fs::write(
        dir.path().join("router-state.json"),
        br#"{"version": 1, "drains": {"gone-1": {"reason": "x", "since_ms": 1, "until_ms": null}}, "weights": {}}"#,
    )
    .unwrap();
    let h = Router::start(opts(cfg.clone(), dir.path())).await.unwrap();
    assert!(h.state().persisted().unwrap().drains.is_empty());
    h.shutdown().await;

    // The proxy name can be given by label or FQDN.
    let mut o = opts(cfg, dir.path());
    o.proxy_name = Some("w.atoll.test.".into());
    let h = Router::start(o).await.unwrap();
    h.shutdown().await;
}

/// Until every region has had its first health check, a name without a healthy region is
/// starting, not failing open: that is logged at info level. Once every region has been checked
/// and none is healthy, failing open is real and logged at error level.
#[tokio::test]
async fn start_logs_starting_at_info_and_a_real_fail_open_at_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeRegion::start("a").await;
    let logs = Logs::capture();
    let h = Router::start(opts(config(&[("a", a.addr)], FAST_ROUTER), dir.path()))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "both names routing normally",
        || async {
            (logs
                .at("INFO")
                .iter()
                .filter(|l| l.contains("first health checks passed"))
                .count()
                == 2)
                .then_some(())
        },
    )
    .await;
    h.shutdown().await;
    assert!(logs.at("ERROR").is_empty(), "{}", logs.text());
    for name in ["api.atoll.test.", "w.atoll.test."] {
        assert!(
            logs.at("INFO")
                .iter()
                .any(|l| l.contains("router starting") && l.contains(name)),
            "no starting line for {name}:\n{}",
            logs.text()
        );
    }
    drop(logs);

    // Nothing answers: after the first round of checks the router fails open for real.
    let dead = refused_addr().await;
    let logs = Logs::capture();
    let h = Router::start(opts(config(&[("a", dead)], FAST_ROUTER), dir.path()))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "an error line for failing open",
        || async {
            logs.at("ERROR")
                .iter()
                .any(|l| l.contains("failing open") && l.contains("api.atoll.test."))
                .then_some(())
        },
    )
    .await;
    let st = h.state().status(h.ctx().now_ms()).unwrap();
    assert!(st.names.iter().all(|n| !n.starting), "{st:?}");
    h.shutdown().await;
    let text = logs.text();
    let starting = text.find("router starting").expect("a starting line first");
    let failing = text.find("failing open").unwrap();
    assert!(starting < failing, "{text}");
}

/// The proxy's timeouts and body limit come from `[router.proxy]` (what `atoll router` and
/// `atoll demo` start routers with).
#[tokio::test]
async fn proxy_limits_and_timeouts_come_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeRegion::start("a").await;
    a.set_data(Mode::Hang);
    let router = format!(
        "{FAST_ROUTER}\n[router.proxy]\nconnect_timeout_ms = 100\nrequest_timeout_ms = 300\nidle_timeout_ms = 0\nmax_body_bytes = 1024\n"
    );
    let o = opts(config(&[("a", a.addr)], &router), dir.path());
    assert_eq!(o.proxy.upstream_timeout, Duration::from_millis(300));
    assert_eq!(o.proxy.connect_timeout, Duration::from_millis(100));
    assert_eq!(o.proxy.pool_max_idle_per_region, 0);
    let h = Router::start(o).await.unwrap();
    eventually(Duration::from_secs(5), "a healthy", || async {
        (health_of(h.ctx(), "a").health == HealthState::Healthy).then_some(())
    })
    .await;
    let base = format!("http://{}", h.proxy_addr().unwrap());
    let started = std::time::Instant::now();
    let r = http()
        .post(format!("{base}/v1/counter/c/k"))
        .body(r#"{"delta":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "ATOLL-UPSTREAM-OUTCOME-UNKNOWN");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("300 ms"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the default 30 s timeout applied"
    );
    let r = http()
        .put(format!("{base}/v1/kv/s/k"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1024 bytes"),
        "{e}"
    );
    assert!(
        e["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes"),
        "{e}"
    );
    h.shutdown().await;
}

/// A raw DNS query for `name` type A; returns (rcode, answer count).
async fn dns_query(addr: std::net::SocketAddr, name: &str) -> (u8, u16) {
    let mut q = vec![0x12, 0x34, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&q, addr).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("a DNS answer")
        .unwrap();
    assert!(n >= 12);
    assert_eq!(&buf[..2], &[0x12, 0x34]);
    (buf[3] & 0x0f, u16::from_be_bytes([buf[6], buf[7]]))
}

#[tokio::test]
async fn dns_shares_the_routers_state_and_metrics() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(cfg, dir.path());
    o.dns_listen = Some("127.0.0.1:0".parse().unwrap());
    let h = Router::start(o).await.unwrap();
    let dns = h.dns_addr().expect("DNS bound");
    eventually(Duration::from_secs(5), "a healthy", || async {
        (health_of(h.ctx(), "a").health == HealthState::Healthy).then_some(())
    })
    .await;
    assert_eq!(dns_query(dns, "api.atoll.test.").await, (0, 1));
    let text = h.metrics().encode();
    assert!(
        text.contains("atoll_router_dns_queries_total{"),
        "DNS counts in the router's registry:\n{text}"
    );
    h.shutdown().await;
}
