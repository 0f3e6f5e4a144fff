//! Active health checks against fake regions toggled up and down: thresholds, recovery, regions
//! that say they are draining, fenced or passive, fencing roles, timeouts, and long intervals.

mod common;

use atoll_router::health::HealthState;
use common::*;
use std::time::{Duration, Instant};

const INTERVAL_MS: u64 = 100;
/// Scheduling slack on a loaded CI machine.
const SLACK: Duration = Duration::from_millis(2000);

fn router_toml(failure: u32, recovery: u32) -> String {
    format!(
        r#"
[router]
[router.health]
interval_ms = {INTERVAL_MS}
timeout_ms = 80
failure_threshold = {failure}
recovery_threshold = {recovery}
hold_down_ms = 0
ramp_secs = 0
outlier_failures = 0
[[router.names]]
name = "api"
policy = "failover"
"#
    )
}

fn within(checks: u32) -> Duration {
    Duration::from_millis(INTERVAL_MS * u64::from(checks)) + SLACK
}

async fn wait_health(
    h: &atoll_router::runtime::RouterHandle,
    region: &str,
    want: HealthState,
    limit: Duration,
) -> atoll_router::state::RegionStatus {
    eventually(limit, &format!("{region} {want:?}"), || async {
        let s = health_of(h.ctx(), region);
        (s.health == want).then_some(s)
    })
    .await
}

#[tokio::test]
async fn thresholds_and_recovery() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(3, 2));
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;

    let st = wait_health(&h, "a", HealthState::Healthy, within(1)).await;
    assert!(st.rtt_ms.is_some(), "the check's round trip is measured");
    let text = h.metrics().encode();
    assert_eq!(
        metric(&text, r#"atoll_router_region_healthy{region="a"}"#),
        Some(1.0)
    );
    assert!(text.contains(r#"atoll_router_health_check_duration_seconds_count{region="a"}"#));

    // Down: out after failure_threshold failed checks, not before.
    let before = health_of(h.ctx(), "a").checks;
    let t0 = Instant::now();
    a.set_health(Mode::Status(500));
    let st = wait_health(&h, "a", HealthState::Unhealthy, within(3)).await;
    assert!(t0.elapsed() <= within(3));
    assert!(
        st.checks - before >= 3,
        "took {} checks",
        st.checks - before
    );
    assert!(st.reason.contains("500"), "{}", st.reason);
    assert_eq!(
        metric(
            &h.metrics().encode(),
            r#"atoll_router_region_healthy{region="a"}"#
        ),
        Some(0.0)
    );
    // Traffic moved.
    let r = http()
        .get(format!("http://{}/v1/kv/s/k", h.proxy_addr().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-atoll-routed-to"], "b");

    // Up again after recovery_threshold good checks.
    let before = health_of(h.ctx(), "a").checks;
    let t0 = Instant::now();
    a.set_health(Mode::Ok);
    let st = wait_health(&h, "a", HealthState::Healthy, within(2)).await;
    assert!(t0.elapsed() <= within(2));
    assert!(
        st.checks - before >= 2,
        "took {} checks",
        st.checks - before
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_region_that_says_it_is_draining_or_fenced_is_out_at_once() {
    for (mode, word) in [(Mode::Draining, "draining"), (Mode::Fenced, "fenced")] {
        let a = FakeRegion::start("a").await;
        let cfg = config(&[("a", a.addr)], &router_toml(5, 1));
        let dir = tempfile::tempdir().unwrap();
        let h = start_router(cfg, dir.path(), None).await;
        wait_health(&h, "a", HealthState::Healthy, within(1)).await;
        let before = health_of(h.ctx(), "a").checks;
        a.set_health(mode);
        let st = wait_health(&h, "a", HealthState::Unhealthy, within(1)).await;
        // One check did it (a second may have been in flight), not failure_threshold = 5.
        assert!(
            st.checks - before <= 2,
            "took {} checks",
            st.checks - before
        );
        assert!(st.reason.contains(word), "{}", st.reason);
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_passive_region_is_out_at_once_and_back_within_a_check_when_promoted() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    a.set_health(Mode::role("primary", 1, Some("a")));
    b.set_health(Mode::Role {
        status: "passive",
        role: "passive",
        epoch: 1,
        primary: Some("a"),
    });
    // failure_threshold 5, recovery_threshold 3: neither applies to passive.
    let cfg = config(&[("a", a.addr), ("b", b.addr)], &router_toml(5, 3));
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    wait_health(&h, "a", HealthState::Healthy, within(1)).await;
    let st = wait_health(&h, "b", HealthState::Passive, within(1)).await;
    assert!(!st.routable);
    assert!(st.reason.contains("passive"), "{}", st.reason);
    assert_eq!(st.role, Some(atoll_router::health::Role::Passive));
    assert_eq!(st.primary.as_deref(), Some("a"));
    let status = h.ctx().state.status(h.ctx().now_ms()).unwrap();
    assert_eq!(status.primary.map(|p| p.region), Some("a".to_string()));
    assert!(!status.names[0].starting, "passive is a verdict");

    // An operator promotes b (epoch 2); a is passive now. One check each moves them.
    let before = health_of(h.ctx(), "b").checks;
    b.set_health(Mode::role("primary", 2, Some("b")));
    a.set_health(Mode::Role {
        status: "passive",
        role: "passive",
        epoch: 2,
        primary: Some("b"),
    });
    let st = wait_health(&h, "b", HealthState::Healthy, within(1)).await;
    assert!(
        st.checks - before <= 2,
        "took {} checks",
        st.checks - before
    );
    wait_health(&h, "a", HealthState::Passive, within(1)).await;
    let status = eventually(within(1), "b holds the lease alone", || async {
        let s = h.ctx().state.status(h.ctx().now_ms()).unwrap();
        (s.primary_claims.len() == 1).then_some(s)
    })
    .await;
    assert_eq!(
        status.primary.map(|p| (p.region, p.epoch)),
        Some(("b".to_string(), 2))
    );
    let text = h.metrics().encode();
    for (series, want) in [
        (
            r#"atoll_router_region_role{region="b",role="primary"}"#,
            1.0,
        ),
        (
            r#"atoll_router_region_role{region="a",role="passive"}"#,
            1.0,
        ),
        (
            r#"atoll_router_region_role{region="a",role="primary"}"#,
            0.0,
        ),
        (r#"atoll_router_region_epoch{region="b"}"#, 2.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series} in\n{text}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn a_region_that_says_nothing_about_fencing_is_active() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], &router_toml(5, 1));
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    let st = wait_health(&h, "a", HealthState::Healthy, within(1)).await;
    assert_eq!(st.role, Some(atoll_router::health::Role::Active));
    assert_eq!((st.epoch, st.primary), (Some(0), None));
    let status = h.ctx().state.status(h.ctx().now_ms()).unwrap();
    assert!(status.primary.is_none() && status.primary_claims.is_empty());
    assert_eq!(
        metric(
            &h.metrics().encode(),
            r#"atoll_router_region_role{region="a",role="active"}"#
        ),
        Some(1.0)
    );
    h.shutdown().await;
}

#[tokio::test]
async fn checks_that_hang_time_out_and_count_as_failures() {
    let a = FakeRegion::start("a").await;
    let cfg = config(&[("a", a.addr)], &router_toml(2, 1));
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    wait_health(&h, "a", HealthState::Healthy, within(1)).await;
    a.set_health(Mode::Hang);
    let st = wait_health(&h, "a", HealthState::Unhealthy, within(2)).await;
    assert!(st.reason.contains("timed out"), "{}", st.reason);
    a.set_health(Mode::Ok);
    wait_health(&h, "a", HealthState::Healthy, within(1)).await;
    h.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_region_never_becomes_routable() {
    let refused = refused_addr().await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", refused), ("b", b.addr)], &router_toml(2, 1));
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    let st = wait_health(&h, "a", HealthState::Unhealthy, within(2)).await;
    assert!(st.reason.contains("connect"), "{}", st.reason);
    assert!(!st.routable);
    h.shutdown().await;
}

#[tokio::test]
async fn long_intervals_are_accepted_and_checked_at_once() {
    let a = FakeRegion::start("a").await;
    let cfg = config(
        &[("a", a.addr)],
        r#"
[router]
[router.health]
interval_ms = 30000
timeout_ms = 2000
[[router.names]]
name = "api"
policy = "failover"
"#,
    );
    assert_eq!(cfg.router.as_ref().unwrap().health.interval_ms, 30_000);
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    // The first check does not wait for the interval.
    wait_health(&h, "a", HealthState::Healthy, SLACK).await;
    assert_eq!(a.health_checks(), 1);
    h.shutdown().await;
}
