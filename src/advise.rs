//! `atoll advise`: the multi-region decision framework (`docs/design/advise.md`) on the command
//! line. The decision is
//! `atoll_config::advise`; this asks the questions on a terminal when flags are missing, prints
//! the answer and writes the starting config.

use crate::AdviseArgs;
use crate::client::Output;
use anyhow::{Context, Result, anyhow, bail};
use atoll_config::advise::{Advice, AdviseError, Consistency, Requirements, advise};
use std::io::{BufRead, IsTerminal, Write};

pub fn run(args: AdviseArgs) -> Result<()> {
    let missing: Vec<&str> = [
        ("--rto", args.rto.is_none()),
        ("--consistency", args.consistency.is_none()),
        ("--budget", args.budget.is_none()),
        ("--regions", args.regions.is_none()),
    ]
    .into_iter()
    .filter_map(|(flag, missing)| missing.then_some(flag))
    .collect();
    let interactive = !missing.is_empty();
    if interactive && !std::io::stdin().is_terminal() {
        bail!(
            "missing {} (stdin is not a terminal, so atoll advise cannot ask): e.g. atoll advise --rto 5m --consistency some --budget 1.5 --regions 2",
            missing.join(", ")
        );
    }
    let mut ask = Asker::new();
    let rto_ms = match args.rto {
        Some(v) => v,
        None => ask.question(
            "Q1: What is your RTO (how long may losing a region take to recover from: 30s, 5m, 4h)?",
            "5m",
            atoll_config::duration::parse_ms,
        )?,
    };
    let consistency = match &args.consistency {
        Some(c) => Consistency::parse(c).map_err(describe)?,
        None => ask.question(
            "Q2: Which data must never conflict? none (all of it tolerates eventual consistency), some (a ledger), all, or name it (ledger,inventory,profiles)",
            "none",
            |s| Consistency::parse(s).map_err(|e| e.to_string()),
        )?,
    };
    let budget = match args.budget {
        Some(b) => b,
        None => ask.question(
            "Q3: What's your budget, as a multiple of one region's cost (1.25, 1.5, 2, 3)?",
            "1.5",
            |s| {
                s.parse::<f64>()
                    .map_err(|_| format!("`{s}` is not a number"))
            },
        )?,
    };
    let regions = match args.regions {
        Some(n) => n,
        None => ask.question("How many regions?", "2", |s| {
            s.parse::<usize>()
                .map_err(|_| format!("`{s}` is not a whole number"))
        })?,
    };
    let advice = advise(&Requirements {
        rto_ms,
        consistency,
        budget,
        regions,
    })
    .map_err(describe)?;
    if let Some(path) = &args.write {
        write_new(path, &advice.config)?;
    }
    match args.output {
        Output::Json => {
            let mut doc = serde_json::to_value(&advice)?;
            if let Some(path) = &args.write {
                doc["written_to"] = path.display().to_string().into();
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Human => {
            print!("{}", advice.explain());
            match &args.write {
                Some(path) => println!(
                    "\nwrote {}; check it with: atoll config check {}",
                    path.display(),
                    path.display()
                ),
                None => print_config(&advice),
            }
        }
    }
    Ok(())
}

fn describe(e: AdviseError) -> anyhow::Error {
    anyhow!("{e} ({}): {}", e.code(), e.hint())
}

fn print_config(advice: &Advice) {
    println!("\n# ---- atoll.toml (write it with --write PATH) ----");
    print!("{}", advice.config);
}

/// Creates `path` with `text`; never replaces an existing file.
fn write_new(path: &std::path::Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (atoll advise never overwrites a file: remove it or pick another path)",
                path.display()
            )
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Asks on stderr (stdout stays the answer, JSON included) and reads stdin.
struct Asker {
    stdin: std::io::StdinLock<'static>,
}

impl Asker {
    fn new() -> Self {
        Self {
            stdin: std::io::stdin().lock(),
        }
    }

    /// Asks until `parse` accepts the answer (an empty one is `default`), at most 5 times.
    fn question<T>(
        &mut self,
        prompt: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T> {
        for _ in 0..5 {
            eprint!("{prompt} [{default}] ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            if self.stdin.read_line(&mut line)? == 0 {
                bail!("no answer (end of input)");
            }
            let answer = match line.trim() {
                "" => default,
                a => a,
            };
            match parse(answer) {
                Ok(v) => return Ok(v),
                Err(e) => eprintln!("  {e}"),
            }
        }
        bail!("no valid answer after 5 tries")
    }
}
