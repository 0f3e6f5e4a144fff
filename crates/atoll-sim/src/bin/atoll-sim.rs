//! `atoll-sim --scenario FILE --seeds N [--first SEED]`: runs a drill scenario (`drills/*.toml`)
//! in the deterministic simulation on N seeds and prints the distribution of RPO (acknowledged
//! writes lost), zombie writes, duplicates and RTO. Exits non-zero when any seed lost an
//! acknowledged write, accepted a zombie write, applied a write twice or broke a simulation
//! invariant (each such seed is printed with the command that replays it).

use atoll_sim::drill::{self, Distribution};
use std::process::ExitCode;

const USAGE: &str = "usage: atoll-sim --scenario FILE [--seeds N] [--first SEED]\n\
    Runs a drill scenario (drills/*.toml) in the simulation on N seeds (default 100) from SEED\n\
    (default 1) and prints the distribution of RPO, zombie writes, duplicates and RTO.";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut file, mut seeds, mut first) = (None, 100u64, 1u64);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        let parsed = match a.as_str() {
            "--scenario" => value("--scenario").map(|v| file = Some(v)),
            "--seeds" => value("--seeds").and_then(|v| {
                v.parse()
                    .map(|n| seeds = n)
                    .map_err(|_| format!("--seeds {v}: not a number"))
            }),
            "--first" => value("--first").and_then(|v| {
                v.parse()
                    .map(|n| first = n)
                    .map_err(|_| format!("--first {v}: not a number"))
            }),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument `{other}`\n{USAGE}")),
        };
        if let Err(e) = parsed {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    }
    let Some(file) = file else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let sc = match atoll_drill::scenario::load(std::path::Path::new(&file)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut dist = Distribution::default();
    let mut bad = Vec::new();
    for seed in first..first.saturating_add(seeds) {
        let run = drill::run(&sc, seed);
        if !run.lost.is_empty() || run.zombies > 0 || run.duplicates > 0 || run.violation.is_some()
        {
            bad.push(format!(
                "seed {seed}: {} lost{}, {} zombie, {} duplicate{}\n  replay: atoll-sim --scenario {file} --seeds 1 --first {seed}",
                run.lost.len(),
                run.lost
                    .first()
                    .map(|l| format!(" (first: {l:?})"))
                    .unwrap_or_default(),
                run.zombies,
                run.duplicates,
                run.violation
                    .as_ref()
                    .map(|v| format!(", simulation invariant broken: {v}"))
                    .unwrap_or_default()
            ));
        }
        dist.add(&run);
    }
    print!("{}", drill::summary(&sc, &dist));
    for b in &bad {
        println!("{b}");
    }
    if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
