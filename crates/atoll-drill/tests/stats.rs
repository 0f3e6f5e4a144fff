//! Windows, guards and RTO from constructed timelines and histories; the demo discovery file.

use atoll_drill::history::{Hlc, Kind, Outcome, WriteRecord};
use atoll_drill::scenario::Guards;
use atoll_drill::stats::{self, Timeline};
use atoll_drill::target::Discovery;

fn write(id: u64, sent: u64, ok: bool) -> WriteRecord {
    WriteRecord {
        id,
        client: 0,
        via: "us".into(),
        keyspace: "s".into(),
        kind: Kind::Lww,
        key: "k".into(),
        value: format!("v{id}"),
        delta: 0,
        fenced: false,
        sent_ms: sent,
        done_ms: sent + 3,
        outcome: if ok {
            Outcome::Acked {
                region: "us".into(),
                epoch: None,
                ts: Some(Hlc {
                    wall_ms: sent,
                    logical: 0,
                }),
            }
        } else {
            Outcome::Refused {
                status: 0,
                code: "CONNECT".into(),
            }
        },
    }
}

#[test]
fn guards_trip_on_error_rate_or_p99_and_ignore_thin_windows() {
    let g = Guards::default();
    let mut t = Timeline::default();
    for i in 0..100 {
        t.record("us", 10_000 + i * 10, 5, i % 10 != 0, true);
    }
    let w = t.window("us", 10_999, 10_000);
    assert_eq!(w.requests, 100);
    let why = stats::breach(&g, &w).expect("10 % errors breaks a 5 % guard");
    assert!(why.contains("error rate"), "{why}");
    let mut t = Timeline::default();
    for i in 0..100 {
        t.record(
            "eu",
            10_000 + i * 10,
            if i < 5 { 3000 } else { 5 },
            true,
            true,
        );
    }
    let why = stats::breach(&g, &t.window("eu", 10_999, 10_000)).expect("5 % slow: p99 above 2 s");
    assert!(why.contains("p99"), "{why}");
    // Healthy, and a window of 3 failures among 3 requests says nothing (min_requests 20).
    let mut t = Timeline::default();
    for i in 0..100 {
        t.record("ap", 10_000 + i * 10, 5, true, true);
    }
    assert!(stats::breach(&g, &t.window("ap", 10_999, 10_000)).is_none());
    let mut t = Timeline::default();
    for i in 0..3 {
        t.record("ap", 10_000 + i, 5, false, true);
    }
    assert!(stats::breach(&g, &t.window("ap", 10_999, 10_000)).is_none());
    // The window slides: old errors leave it.
    let mut t = Timeline::default();
    for i in 0..50 {
        t.record("us", i * 10, 5, false, true);
    }
    for i in 0..50 {
        t.record("us", 20_000 + i * 10, 5, true, true);
    }
    assert!(stats::breach(&g, &t.window("us", 20_999, 10_000)).is_none());
    assert!(stats::breach(&g, &t.window("us", 999, 10_000)).is_some());
}

#[test]
fn rto_is_measured_from_the_fault_to_recovery() {
    // Fault at 10 s; writes fail from 10.1 s to 14.9 s, succeed again at 15 s.
    let mut h = Vec::new();
    let mut t = Timeline::default();
    for i in 0..300u64 {
        let at = i * 100;
        let ok = !(10_100..15_000).contains(&at);
        h.push(write(i, at, ok));
        t.record("us", at + 3, 3, ok, true);
    }
    assert_eq!(stats::rto_write(&h, "us", 10_000, 30_000), Some(5_003));
    // No failure after the fault: 0.
    assert_eq!(stats::rto_write(&h, "us", 16_000, 30_000), Some(0));
    // Never recovered.
    assert_eq!(stats::rto_write(&h, "us", 10_000, 14_000), None);
    let g = Guards::default();
    let slo = stats::rto_slo(&t, &g, "us", 10_000, 30_000).expect("recovered");
    assert!((5_000..=6_000).contains(&slo), "{slo}");
    assert_eq!(stats::rto_slo(&t, &g, "us", 16_000, 30_000), Some(0));
}

#[test]
fn the_demo_discovery_file_is_read_and_its_version_checked() {
    let text = r#"{"version":1,"port_base":7100,"pid":42,"data_dir":"/tmp/d","config":"/tmp/d/atoll.toml",
        "token":"t","model":"active-active","control":"http://127.0.0.1:7191","router_admin":"http://127.0.0.1:7181",
        "proxy":"http://127.0.0.1:7180","link_control":"http://127.0.0.1:7190",
        "regions":[{"name":"us-east-1","api":"http://127.0.0.1:7100"}]}"#;
    let d = Discovery::parse(text, "atoll-demo-7100.json").expect("parses");
    assert_eq!(d.control, "http://127.0.0.1:7191");
    assert_eq!(d.regions[0].name, "us-east-1");
    let e = Discovery::parse(&text.replace("\"version\":1", "\"version\":2"), "f")
        .expect_err("newer version");
    assert!(e.to_string().contains("version 2"), "{e}");
    assert_eq!(
        atoll_drill::target::discovery_path(7100)
            .file_name()
            .and_then(|n| n.to_str()),
        Some("atoll-demo-7100.json")
    );
}
