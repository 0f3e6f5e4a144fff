//! Every shipped drill scenario (`drills/*.toml`) runs in the simulation over a few seeds with
//! the drill's own checkers: nothing acknowledged is lost, no zombie write, nothing applied twice,
//! no simulation invariant broken. The checkers are shown to see a loss the simulation did not
//! have (a fabricated acknowledged write), so a clean result means something.

use atoll_drill::history::{Hlc, Kind, Outcome, WriteRecord};
use atoll_sim::drill;
use std::path::PathBuf;

/// Seeds per scenario: each seed runs a whole drill (tens of virtual seconds), so a few keep the
/// test short; `atoll-sim --scenario FILE --seeds N` runs as many as wanted.
const SEEDS: u64 = 2;

fn drills() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../drills");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("drills/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_drill_keeps_every_acknowledged_write_in_simulation() {
    let files = drills();
    assert!(files.len() >= 6, "{files:?}");
    let mut failures = Vec::new();
    for f in &files {
        let sc = atoll_drill::scenario::load(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for seed in 1..=SEEDS {
            let run = drill::run(&sc, seed);
            assert!(run.writes_acked > 20, "{}: seed {seed}: {run:?}", sc.name);
            if !run.lost.is_empty()
                || run.zombies > 0
                || run.duplicates > 0
                || run.violation.is_some()
            {
                failures.push(format!(
                    "{} seed {seed}: lost {:?}, zombies {}, duplicates {}, violation {:?}\n  replay: cargo run -p atoll-sim --bin atoll-sim -- --scenario {} --seeds 1 --first {seed}",
                    sc.name,
                    run.lost,
                    run.zombies,
                    run.duplicates,
                    run.violation.map(|v| v.to_string()),
                    f.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_fault_step_measures_a_recovery_time() {
    let f = drills()
        .into_iter()
        .find(|p| p.ends_with("region-outage.toml"))
        .expect("drills/region-outage.toml");
    let sc = atoll_drill::scenario::load(&f).expect("parses");
    let run = drill::run(&sc, 7);
    // Active-active: the survivors keep taking writes, so the first write after the kill is
    // acknowledged within a write gap or two.
    let rto = run.rto_ms.expect("a fault happened and writes went on");
    assert!(rto < 1_000, "{rto} ms");
}

#[test]
fn the_checkers_find_a_loss_the_simulation_did_not_have() {
    let f = drills()
        .into_iter()
        .find(|p| p.ends_with("region-outage.toml"))
        .expect("drills/region-outage.toml");
    let sc = atoll_drill::scenario::load(&f).expect("parses");
    let run = drill::run(&sc, 3);
    assert!(run.lost.is_empty(), "{:?}", run.lost);
    // An acknowledged write no region holds: a counter increment beyond the sum, and a set
    // member never added.
    let mut history = run.history.clone();
    let region = "eu-west-1".to_string();
    let acked = |id, kind, key: &str, value: &str, delta| WriteRecord {
        id,
        client: 0,
        via: region.clone(),
        keyspace: match kind {
            Kind::Counter => "ratelimits".into(),
            _ => "flags".into(),
        },
        kind,
        key: key.into(),
        value: value.into(),
        delta,
        fenced: false,
        sent_ms: 1,
        done_ms: 1,
        outcome: Outcome::Acked {
            region: region.clone(),
            epoch: None,
            ts: Some(Hlc {
                wall_ms: 1,
                logical: 0,
            }),
        },
    };
    history.push(acked(1_000_001, Kind::Set, "s0", "never-added", 0));
    history.push(acked(1_000_002, Kind::Counter, "c0", "1", 1));
    let rpo = atoll_drill::check::rpo(&history, &run.final_state);
    let ids: std::collections::BTreeSet<u64> = rpo.lost.iter().map(|l| l.id).collect();
    assert!(ids.contains(&1_000_001), "{:?}", rpo.lost);
    assert!(
        rpo.lost.iter().any(|l| l.keyspace == "ratelimits"),
        "{:?}",
        rpo.lost
    );
}
