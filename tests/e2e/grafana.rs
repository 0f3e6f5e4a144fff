//! The shipped Grafana dashboard (`deploy/grafana/atoll-overview.json`) is valid against what
//! atoll exports, and the built-in dashboard has the same panels:
//!
//! - every panel's PromQL expression parses: each becomes a recording rule of a generated rules
//!   file that `promtool check rules` must accept (promtool: Debian's `prometheus`, which
//!   `scripts/test-all.sh` installs; the test fails without it);
//! - every metric name an expression names is one a region, the router or the global view
//!   exports, and every label it uses (in a selector, a `by`/`without` clause or the legend) is
//!   one that metric carries; the global view (`GET /v1/global/metrics`) adds `region` to every
//!   region sample, which is what the panels group by;
//! - every Grafana panel has a panel of the same title in the router's built-in dashboard
//!   (`data-grafana="<title>"`), whose script or page names the same metrics.
//!
//! The exported labels come from the registries themselves: `Metrics::fill_examples` gives every
//! region family a sample and the router's families are filled from a config, then both are
//! encoded and read back, so a label that a registry does not encode is not exported.

use atoll_server::metrics::Metrics;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every sample name of an exposition with the label names it carries.
fn labels_of(text: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        let set = into.entry(name.to_string()).or_default();
        if line[end..].starts_with('{') {
            let inner = &line[end + 1..line.rfind('}').unwrap_or(line.len())];
            let mut rest = inner;
            while let Some(eq) = rest.find("=\"") {
                set.insert(rest[..eq].trim_start_matches(',').trim().to_string());
                // Skip the quoted value (escaped quotes included).
                let after = &rest[eq + 2..];
                let mut i = 0;
                let b = after.as_bytes();
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                rest = after.get(i + 1..).unwrap_or("");
            }
        }
    }
}

/// What atoll exports: sample name -> label names.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let m = Metrics::new();
    m.fill_examples();
    let text = m.encode();
    labels_of(&text, &mut out);
    // Every listed series is encoded once filled: the fill is complete, the list truthful.
    let missing: Vec<&String> = m
        .series_names()
        .iter()
        .filter(|n| !out.contains_key(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "Metrics::fill_examples leaves these families without a sample (add them there): {missing:?}"
    );
    // The global view adds `region` to every region sample.
    for set in out.values_mut() {
        set.insert("region".into());
    }
    // The router's own families, filled from a real config.
    let config = atoll_config::Config::load(&root().join("examples/three-regions.toml"))
        .expect("examples/three-regions.toml");
    let state = atoll_router::state::RouterState::new(&config).expect("router state");
    let rm = atoll_router::metrics::RouterMetrics::new();
    rm.refresh(&state, 0);
    rm.observe_request("us-east-1", 200);
    let mut router = BTreeMap::new();
    labels_of(&rm.encode(), &mut router);
    for n in rm.series_names() {
        router.entry(n.clone()).or_default();
    }
    out.extend(router);
    out.insert(
        atoll_router::federate::REGION_UP.to_string(),
        ["region".to_string()].into(),
    );
    out
}

/// Every target expression of every panel (rows' nested panels included): (panel title, expr,
/// legend).
fn panels() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/atoll-overview.json"))
        .expect("the Grafana dashboard");
    let d: Value = serde_json::from_str(&text).expect("valid JSON");
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((
                p["title"].as_str().unwrap_or("").to_string(),
                expr.to_string(),
                t["legendFormat"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "abs",
    "clamp_min",
    "clamp_max",
    "topk",
    "bottomk",
    "delta",
    "deriv",
    "absent",
    "time",
    "vector",
    "scalar",
    "label_replace",
    "quantile_over_time",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
];

/// The metric selectors of an expression: (metric, labels in its matcher), and the labels of its
/// `by (...)` / `without (...)` clauses. A small reader of PromQL's lexical structure (the parse
/// itself is promtool's): identifiers not followed by `(` and not keywords are metric names.
fn selectors(expr: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let b = expr.as_bytes();
    let mut i = 0;
    let mut sels = Vec::new();
    let mut grouping = Vec::new();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let read_labels = |start: usize, close: u8| -> (Vec<String>, usize) {
        // From after the opening bracket to the closing one: label names (before = ! ~ or , ).
        let mut j = start;
        let mut names = Vec::new();
        while j < b.len() && b[j] != close {
            if b[j] == b'"' {
                j += 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                j += 1;
                continue;
            }
            if ident(b[j]) {
                let s = j;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                names.push(expr[s..j].to_string());
                continue;
            }
            j += 1;
        }
        (names, j + 1)
    };
    while i < b.len() {
        if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if b[i] == b'[' {
            // A range: `[5m]`.
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if ident(b[i]) && !(b[i].is_ascii_digit()) {
            let s = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[s..i];
            let mut k = i;
            while k < b.len() && b[k] == b' ' {
                k += 1;
            }
            if word == "by" || word == "without" {
                if b.get(k) == Some(&b'(') {
                    let (names, next) = read_labels(k + 1, b')');
                    grouping.extend(names);
                    i = next;
                }
                continue;
            }
            if KEYWORDS.contains(&word) || b.get(k) == Some(&b'(') {
                continue;
            }
            let mut labels = Vec::new();
            if b.get(i) == Some(&b'{') {
                let (names, next) = read_labels(i + 1, b'}');
                // Matcher label names only: every other identifier was inside a quoted value.
                labels = names;
                i = next;
            }
            sels.push((word.to_string(), labels));
            continue;
        }
        // Numbers (0.99, 1e3) and operators.
        if b[i].is_ascii_digit() || b[i] == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    (sels, grouping)
}

fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_string()))
        .collect()
}

#[test]
fn every_grafana_expression_parses_as_promql() {
    let panels = panels();
    assert!(panels.len() >= 10, "found {} expressions", panels.len());
    let mut rules = String::from("groups:\n  - name: grafana-panels\n    rules:\n");
    for (i, (title, expr, _)) in panels.iter().enumerate() {
        rules.push_str(&format!(
            "      # {title}\n      - record: grafana:panel_expr_{i}\n        expr: {}\n",
            serde_json::to_string(expr).expect("a JSON string is a YAML string")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("grafana-exprs.yml");
    std::fs::write(&file, &rules).expect("write");
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "rules"]).arg(&file);
    let out = atoll_testkit::run_with_timeout(cmd, Duration::from_secs(60))
        .expect("promtool runs (Debian's `prometheus` package; scripts/test-all.sh installs it)");
    assert!(
        out.status.success(),
        "promtool check rules refused a Grafana expression:\n{}{}\nrules:\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And it can fail: a broken expression is refused.
    std::fs::write(
        &file,
        "groups:\n  - name: x\n    rules:\n      - record: x:y\n        expr: \"sum by (region (rate(atoll_http_requests_total[5m]))\"\n",
    )
    .expect("write");
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "rules"]).arg(&file);
    let out = atoll_testkit::run_with_timeout(cmd, Duration::from_secs(60)).expect("promtool");
    assert!(!out.status.success(), "promtool accepted broken PromQL");
}

#[test]
fn every_grafana_expression_names_exported_metrics_and_labels() {
    let exported = exported();
    let mut problems = Vec::new();
    let mut seen = 0;
    for (title, expr, legend) in panels() {
        let (sels, grouping) = selectors(&expr);
        if sels.is_empty() {
            problems.push(format!("{title}: no metric found in `{expr}`"));
        }
        let mut available: BTreeSet<String> = BTreeSet::new();
        for (metric, labels) in &sels {
            seen += 1;
            let Some(have) = exported.get(metric) else {
                problems.push(format!("{title}: `{metric}` is not exported by atoll"));
                continue;
            };
            available.extend(have.iter().cloned());
            for l in labels {
                if !have.contains(l) {
                    problems.push(format!(
                        "{title}: `{metric}` has no label `{l}` (it has {have:?})"
                    ));
                }
            }
        }
        for l in &grouping {
            if !available.contains(l) {
                problems.push(format!(
                    "{title}: groups by `{l}`, which none of its metrics carries"
                ));
            }
        }
        // A legend names labels the result keeps: the grouping's, or the metrics' own.
        let kept: BTreeSet<String> = if grouping.is_empty() {
            available.clone()
        } else {
            grouping.iter().cloned().collect()
        };
        for l in legend_labels(&legend) {
            if !kept.contains(&l) {
                problems.push(format!(
                    "{title}: the legend shows `{{{{{l}}}}}`, which `{expr}` does not keep"
                ));
            }
        }
    }
    assert!(seen >= 10, "found {seen} metric references");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_label_check_can_fail() {
    let exported = exported();
    let (sels, grouping) =
        selectors("sum by (instance) (rate(atoll_http_requests_total{nope=\"x\"}[5m]))");
    assert_eq!(
        sels,
        vec![(
            "atoll_http_requests_total".to_string(),
            vec!["nope".to_string()]
        )]
    );
    assert_eq!(grouping, vec!["instance".to_string()]);
    let have = &exported["atoll_http_requests_total"];
    assert!(!have.contains("nope") && !have.contains("instance"));
    for l in ["route", "method", "status", "region"] {
        assert!(have.contains(l), "{l} in {have:?}");
    }
    assert!(exported["atoll_peer_rtt_seconds_bucket"].contains("le"));
    assert!(!exported.contains_key("atoll_peer_reachable_total"));
}

#[test]
fn every_grafana_panel_is_on_the_built_in_dashboard() {
    let html = atoll_router::global::DASHBOARD_HTML;
    let js = atoll_router::global::DASHBOARD_JS;
    let mut problems = Vec::new();
    let mut titles = BTreeSet::new();
    for (title, expr, _) in panels() {
        if titles.insert(title.clone()) && !html.contains(&format!("data-grafana=\"{title}\"")) {
            problems.push(format!("no built-in panel `{title}`"));
        }
        for (metric, _) in selectors(&expr).0 {
            if !js.contains(&metric) && !html.contains(&metric) {
                problems.push(format!(
                    "`{title}`: the built-in dashboard does not use `{metric}`"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
