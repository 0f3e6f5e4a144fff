//! Scenario parsing and validation: clear errors naming file and line.

use atoll_drill::DrillError;
use atoll_drill::scenario::{self, Action, RegionRef};

const CLUSTER: &str = r#"
[cluster]
name = "t"
model = "active-active"
[cluster.tls]
insecure = true
[[regions]]
name = "us-east-1"
api = "127.0.0.1:7100"
[[regions]]
name = "eu-west-1"
api = "127.0.0.1:7101"
[[regions]]
name = "ap-southeast-1"
api = "127.0.0.1:7102"
[[keyspaces]]
name = "sessions"
policy = "lww"
[[keyspaces]]
name = "ratelimits"
policy = "counter"
"#;

fn base(steps: &str) -> String {
    format!(
        "version = 1\nname = \"t\"\n\n[load]\nrate = 10\nclients = 2\nvia = \"regions\"\n[[load.mix]]\nkeyspace = \"sessions\"\nop = \"put\"\n\n{steps}"
    )
}

fn err_line(text: &str) -> (usize, String) {
    match scenario::parse(text, "drills/x.toml") {
        Err(DrillError::Scenario {
            file,
            line,
            message,
        }) => {
            assert_eq!(file, "drills/x.toml");
            (line, message)
        }
        other => panic!("expected a scenario error, got {other:?}"),
    }
}

#[test]
fn every_shipped_scenario_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../drills");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("drills/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} scenarios shipped");
}

#[test]
fn a_valid_scenario_parses_with_lines() {
    let text = base(
        "[[steps]]\naction = \"observe\"\nfor = \"2s\"\n\n[[steps]]\naction = \"kill\"\nregion = \"busiest\"\n",
    );
    let sc = scenario::parse(&text, "x.toml").expect("parses");
    assert_eq!(sc.steps.len(), 2);
    assert_eq!(sc.steps[0].action, Action::Observe { for_ms: 2000 });
    assert_eq!(
        sc.steps[1].action,
        Action::Kill {
            region: RegionRef::Busiest
        }
    );
    assert_eq!(sc.steps[1].line, 16, "{text}");
    // The RegionalFailoverController thresholds by default (5 % errors, p99 2 s).
    assert_eq!(sc.guards.error_rate, 0.05);
    assert_eq!(sc.guards.p99_ms, 2000);
}

#[test]
fn an_unknown_step_is_named_with_its_line() {
    let text =
        base("[[steps]]\naction = \"observe\"\nfor = \"2s\"\n\n[[steps]]\naction = \"explode\"\n");
    let (line, msg) = err_line(&text);
    assert_eq!(line, 17);
    assert!(msg.contains("unknown step `explode`"), "{msg}");
}

#[test]
fn bad_durations_are_named_with_their_line() {
    for (d, want) in [
        ("10", "no unit"),
        ("10 parsecs", "unknown unit"),
        ("2d", "unknown unit"),
        ("0s", "out of range"),
        ("2h", "out of range"),
    ] {
        let text = base(&format!("[[steps]]\naction = \"observe\"\nfor = \"{d}\"\n"));
        let (line, msg) = err_line(&text);
        assert_eq!(line, 14, "{d}: {msg}");
        assert!(msg.contains(want), "{d}: {msg}");
    }
}

#[test]
fn a_field_the_step_does_not_take_is_an_error() {
    let text = base("[[steps]]\naction = \"kill\"\nregion = \"us-east-1\"\nextra_ms = 5\n");
    let (line, msg) = err_line(&text);
    assert_eq!(line, 15);
    assert!(msg.contains("takes no `extra_ms`"), "{msg}");
    let text = base("[[steps]]\naction = \"kill\"\nbogus = 1\n");
    let (line, msg) = err_line(&text);
    assert!(line >= 13, "{line}");
    assert!(msg.contains("bogus"), "{msg}");
}

#[test]
fn missing_fields_and_bad_expectations_are_errors() {
    let (_, msg) = err_line(&base(
        "[[steps]]\naction = \"isolate\"\nregion = \"us-east-1\"\n",
    ));
    assert!(msg.contains("needs `for`"), "{msg}");
    let text = "version = 1\nname = \"t\"\nexpect = [\"lost_writes =< 0\"]\n[load]\nrate = 10\nclients = 1\n[[load.mix]]\nkeyspace = \"s\"\nop = \"put\"\n[[steps]]\naction = \"heal\"\n";
    let (line, msg) = err_line(text);
    assert_eq!(line, 3);
    assert!(msg.contains("unknown comparison"), "{msg}");
    let (_, msg) =
        err_line(&base("[[steps]]\naction = \"heal\"\n").replace("version = 1", "version = 2"));
    assert!(msg.contains("version 2"), "{msg}");
}

#[test]
fn an_unknown_region_or_keyspace_is_named_against_the_cluster() {
    let cfg = atoll_config::Config::parse(CLUSTER, "atoll.toml").expect("cluster config");
    let text = base(
        "[[steps]]\naction = \"observe\"\nfor = \"1s\"\n\n[[steps]]\naction = \"isolate\"\nregion = \"mars-1\"\nfor = \"5s\"\n",
    );
    let sc = scenario::parse(&text, "drills/x.toml").expect("parses on its own");
    match sc.validate(&cfg) {
        Err(DrillError::Mismatch {
            file,
            line,
            message,
            ..
        }) => {
            assert_eq!(file, "drills/x.toml");
            // The line of the step's `[[steps]]` header.
            assert_eq!(line, 16);
            assert!(message.contains("unknown region `mars-1`"), "{message}");
            assert!(message.contains("us-east-1"), "{message}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let sc = scenario::parse(
        &base("[[steps]]\naction = \"heal\"\n").replace("\"sessions\"", "\"nope\""),
        "x.toml",
    )
    .expect("parses");
    let e = sc.validate(&cfg).expect_err("unknown keyspace");
    assert!(e.to_string().contains("unknown keyspace `nope`"), "{e}");
    assert!(
        e.to_string().starts_with("x.toml:8: "),
        "names the [[load.mix]] line: {e}"
    );
    // Promotion needs a leased model; drain needs a router.
    let sc = scenario::parse(
        &base("[[steps]]\naction = \"promote\"\nregion = \"eu-west-1\"\n"),
        "x.toml",
    )
    .expect("parses");
    assert!(
        sc.validate(&cfg)
            .expect_err("active-active")
            .to_string()
            .contains("leased model")
    );
    let sc = scenario::parse(
        &base("[[steps]]\naction = \"drain\"\nregion = \"eu-west-1\"\n"),
        "x.toml",
    )
    .expect("parses");
    assert!(
        sc.validate(&cfg)
            .expect_err("no router")
            .to_string()
            .contains("router")
    );
}
