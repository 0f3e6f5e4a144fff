//! `atoll drill run|check|ls`: a thin command line over `atoll-drill`.

use anyhow::{Context, Result, anyhow, bail};
use atoll_drill::outcome::{self, Outcomes};
use atoll_drill::target::{CommandControl, Target};
use atoll_drill::{DrillError, RunOptions, Scenario};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand)]
pub enum DrillCommand {
    /// Run a scenario against a cluster: load, steps, guards, checks, report.
    #[command(
        after_help = "Examples:\n  atoll drill run drills/region-outage.toml --demo\n  atoll drill run drills/region-isolation.toml --demo --port-base 8100 --output json --report out.html\n\nExit status: 0 when the drill passed, 1 when a guard tripped, an expectation failed,\nwrites were lost, a fenced region accepted writes, or the drill was interrupted."
    )]
    Run(Box<RunArgs>),
    /// Parse and validate a scenario (against a cluster config, if given).
    #[command(
        after_help = "Example:\n  atoll drill check drills/region-outage.toml --config examples/three-regions.toml"
    )]
    Check {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the scenarios of a directory and when each last passed.
    #[command(after_help = "Example:\n  atoll drill ls drills")]
    Ls {
        #[arg(default_value = "drills")]
        dir: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct RunArgs {
    file: PathBuf,
    /// Run against a running `atoll demo` (its discovery file gives every address and the token).
    #[arg(long)]
    demo: bool,
    /// The demo's --port-base.
    #[arg(long, default_value_t = 7100)]
    port_base: u16,
    /// The cluster config (regions' addresses, keyspaces, fencing), without --demo.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The router's HTTP proxy (load through the router), without --demo.
    #[arg(long)]
    router: Option<String>,
    /// The router's admin API (drain/undrain), without --demo.
    #[arg(long)]
    router_admin: Option<String>,
    /// The link control API (faults), without --demo.
    #[arg(long)]
    link_control: Option<String>,
    /// The admin token of the router and the regions.
    #[arg(long, env = "ATOLL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The link control API's token.
    #[arg(long, env = "ATOLL_LINK_TOKEN", hide_env_values = true)]
    link_token: Option<String>,
    /// A client token for the regions' API (with [auth]).
    #[arg(long, env = "ATOLL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// `human` (default) or `json` (the whole report on stdout).
    #[arg(long, default_value = "human")]
    output: String,
    /// Write the HTML report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Start without waiting for a steady cluster (every region serving, replication
    /// established, fencing ready).
    #[arg(long)]
    allow_unsteady: bool,
    /// Where outcomes are kept (default: $ATOLL_DRILL_STATE_DIR, $XDG_STATE_HOME/atoll or ~/.local/state/atoll).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

fn describe(e: DrillError) -> anyhow::Error {
    anyhow!("{e} ({}): {}", e.code(), e.hint())
}

pub async fn run(cmd: DrillCommand) -> Result<()> {
    match cmd {
        DrillCommand::Check { file, config } => {
            let sc = atoll_drill::scenario::load(&file).map_err(describe)?;
            if let Some(c) = config {
                let cfg = atoll_config::Config::load(&c).map_err(anyhow::Error::msg)?;
                sc.validate(&cfg).map_err(describe)?;
            }
            println!(
                "{}: OK: scenario {} ({} steps, load {} ops/s by {} clients)",
                file.display(),
                sc.name,
                sc.steps.len(),
                sc.load.rate,
                sc.load.clients
            );
            for s in &sc.steps {
                println!("  line {:>3}: {}", s.line, s.action.name());
            }
            Ok(())
        }
        DrillCommand::Ls { dir, state_dir } => {
            ls(&dir, &state_dir.unwrap_or_else(outcome::default_state_dir))
        }
        DrillCommand::Run(args) => {
            let RunArgs {
                file,
                demo,
                port_base,
                config,
                router,
                router_admin,
                link_control,
                admin_token,
                link_token,
                token,
                output,
                report,
                allow_unsteady,
                state_dir,
            } = *args;
            let sc: Scenario = atoll_drill::scenario::load(&file).map_err(describe)?;
            let mut target = if demo {
                Target::from_demo(port_base).map_err(describe)?
            } else {
                let c = config.ok_or_else(|| anyhow!("give --demo or --config"))?;
                let cfg = atoll_config::Config::load(&c).map_err(anyhow::Error::msg)?;
                let mut t = Target::from_config(cfg);
                t.router = router;
                t.router_admin = router_admin;
                t.link_control = link_control;
                t
            };
            if admin_token.is_some() {
                target.admin_token = admin_token;
            }
            target.link_token = link_token.or(target.link_token);
            target.client_token = token;
            if !demo {
                target.control = Arc::new(CommandControl {
                    commands: sc.commands.clone(),
                    timeout: std::time::Duration::from_secs(120),
                });
            }
            let (tx, rx) = tokio::sync::watch::channel(false);
            let signal = crate::shutdown_signal();
            tokio::spawn(async move {
                signal.await;
                eprintln!("interrupted: restoring what the drill changed, then reporting");
                let _ = tx.send(true);
            });
            let r = atoll_drill::run(
                &sc,
                target,
                RunOptions {
                    interrupt: Some(rx),
                    allow_unsteady,
                },
            )
            .await
            .map_err(describe)?;
            match output.as_str() {
                "json" => println!("{}", r.to_json()),
                _ => print!("{}", r.summary()),
            }
            if let Some(p) = report {
                std::fs::write(&p, r.to_html())
                    .with_context(|| format!("cannot write {}", p.display()))?;
                eprintln!("report: {}", p.display());
            }
            let dir = state_dir.unwrap_or_else(outcome::default_state_dir);
            if let Err(e) = Outcomes::record(&dir, &r) {
                eprintln!("warning: outcome not kept: {e}");
            }
            if !r.passed {
                bail!("drill {} failed", r.scenario);
            }
            Ok(())
        }
    }
}

fn ls(dir: &Path, state_dir: &Path) -> Result<()> {
    use atoll_core::clock::{Clock, SystemClock};
    let outcomes = Outcomes::load(state_dir).map_err(describe)?;
    let now = SystemClock.physical_ms();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    println!(
        "{:<28} {:<10} {:<22} description",
        "scenario", "last run", "last passed"
    );
    for f in files {
        match atoll_drill::scenario::load(&f) {
            Ok(sc) => {
                let o = outcomes.scenarios.get(&sc.name);
                println!(
                    "{:<28} {:<10} {:<22} {}",
                    sc.name,
                    o.map_or("never", |o| if o.last_passed { "passed" } else { "FAILED" }),
                    o.and_then(|o| o.last_pass_unix_ms)
                        .map_or("never".to_string(), |t| outcome::ago(now, t)),
                    sc.description
                );
            }
            Err(e) => println!("{:<28} invalid: {e}", f.display()),
        }
    }
    Ok(())
}
