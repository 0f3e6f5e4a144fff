//! Every metric named by a shipped alert rule or dashboard exists in what atoll exports, and the
//! exported list is truthful (each family, once it has a sample, encodes under those names).

use atoll_server::metrics::{Metrics, PairLabels};
use std::collections::BTreeSet;
use std::time::Duration;

fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("atoll_") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

fn deploy_files() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("deploy dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "yml" || x == "yaml" || x == "json")
                && !p.to_string_lossy().ends_with(".test.yml")
            {
                files.push(p);
            }
        }
    }
    files
}

#[test]
fn shipped_rules_and_dashboards_name_only_exported_metrics() {
    let metrics = Metrics::new();
    let names = metrics.series_names();
    // What regions and routers export, and what `atoll drill` writes for a textfile collector.
    let router = atoll_router::metrics::RouterMetrics::new();
    let exported: BTreeSet<&str> = names
        .iter()
        .map(String::as_str)
        .chain(router.series_names().iter().map(String::as_str))
        .chain([atoll_router::federate::REGION_UP])
        .chain(atoll_drill::outcome::METRIC_NAMES)
        .collect();
    let files = deploy_files();
    assert!(!files.is_empty(), "deploy/ has rules");
    let mut missing = Vec::new();
    let mut seen = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for m in referenced_metrics(&text) {
            seen += 1;
            if !exported.contains(m.as_str()) {
                missing.push(format!("{}: {m}", f.display()));
            }
        }
    }
    assert!(seen > 3, "found metric references");
    assert!(missing.is_empty(), "not exported by atoll: {missing:?}");
}

#[test]
fn the_exported_list_is_truthful() {
    let m = Metrics::new();
    let pair = PairLabels {
        region: "a".into(),
        peer_region: "b".into(),
    };
    m.observe_request("/x", "GET", 200, Duration::from_millis(1));
    m.peer_reachable.get_or_create(&pair).set(1);
    m.peer_rtt.get_or_create(&pair).observe(0.1);
    let text = m.encode();
    for name in [
        "atoll_http_requests_total",
        "atoll_http_request_duration_seconds_bucket",
        "atoll_peer_reachable",
        "atoll_peer_rtt_seconds_count",
    ] {
        assert!(m.series_names().iter().any(|n| n == name), "{name} listed");
        assert!(text.contains(&format!("\n{name}{{")), "{name} encoded");
    }
    assert!(
        !m.series_names()
            .iter()
            .any(|n| n == "atoll_peer_reachable_total")
    );
}
