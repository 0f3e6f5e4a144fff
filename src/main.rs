//! `atoll`: one binary for every role. This file only parses the command line and dispatches.

mod advise;
mod certs;
mod client;
mod demo;
mod demo_control;
mod drill;

/// mimalloc rather than glibc's malloc: the request and replication paths allocate per request
/// and per op, and profiles under load put malloc and free at 14-20 % of the process's CPU
/// (docs/benchmarks.md, "Where the CPU goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "atoll",
    version,
    about = "Multi-region reliability platform: region-local replicated state, traffic management, failover drills",
    after_help = "Examples:\n  atoll region --config examples/single-region.toml --region us-east-1\n  atoll kv put sessions user-1 hello\n  atoll config check examples/single-region.toml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one region: its store, client API and peer listener.
    ///
    /// The client API listens on the region's `api` address, the peer listener (replication
    /// with the other regions, mutual TLS as [cluster.tls] says) on its `peer` address.
    #[command(
        after_help = "Example:\n  atoll region --config examples/single-region.toml --region us-east-1 --data-dir /var/lib/atoll"
    )]
    Region {
        /// The cluster config (atoll.toml).
        #[arg(long)]
        config: PathBuf,
        /// Which of the config's regions this process is.
        #[arg(long)]
        region: String,
        /// Where the region keeps its data (created if missing).
        #[arg(long, default_value = "atoll-data")]
        data_dir: PathBuf,
        /// Listen here instead of the region's `api` address from the config.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Reach a peer at another address than its configured one (e.g. through `atoll link`):
        /// NAME=ADDR, repeatable.
        #[arg(long, value_parser = parse_peer_via)]
        peer_via: Vec<(String, SocketAddr)>,
        /// On SIGTERM, answer /healthz with 503 for this many seconds before closing the
        /// listener, so routers move traffic away first.
        #[arg(long, default_value_t = 0.0)]
        drain_grace: f64,
        /// Run this region's clock N ms ahead of the host's (negative: behind), to see the
        /// clock-skew protections at work in a drill or test. Never in production.
        #[arg(
            long,
            env = "ATOLL_CLOCK_OFFSET_MS",
            default_value_t = 0,
            allow_negative_numbers = true
        )]
        clock_offset_ms: i64,
    },
    /// Start three regions (us-east-1, eu-west-1, ap-southeast-1) on this machine, linked at
    /// the latency of their distance, with a router in front.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  atoll demo\n  atoll demo --port-base 8100 --data-dir /tmp/atoll-demo\n  atoll demo ctl kill us-east-1\n\nThe demo prints its endpoints once replication is established between every pair of\nregions, and logs only warnings and errors (ATOLL_LOG=info for more). A region that exits is\nreported and the others keep running; `atoll demo ctl` kills, stops and restarts regions,\nadds one to the running cluster (add-region) and removes it again (remove-region), through\nthe demo's control API on <port-base + 91>. While it runs, the demo describes itself in\n${TMPDIR:-/tmp}/atoll-demo-<port-base>.json (mode 0600: it holds the admin token)."
    )]
    Demo {
        #[command(subcommand)]
        command: Option<DemoCommand>,
        /// Where the regions keep their data (default: a fresh temporary directory, removed on exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Region i listens on 127.0.0.1:<port-base + i> (client API) and <port-base + 100 + i>
        /// (peer listener, mutual TLS); the router's proxy on <port-base + 80>, its admin API on
        /// <port-base + 81>, its DNS on <port-base + 53>, the links' control API on
        /// <port-base + 90>, and the demo's control API on <port-base + 91>.
        #[arg(long, default_value_t = demo_control::DEFAULT_PORT_BASE)]
        port_base: u16,
        /// Topology: active-active (with quorum fencing), active-standby (automatic promotion)
        /// or active-passive (manual promotion).
        #[arg(long, default_value = "active-active", value_parser = parse_model)]
        model: atoll_config::Model,
    },
    /// Recommend a topology from the multi-region decision framework (RTO, consistency, budget;
    /// `docs/design/advise.md`)
    /// and write a starting atoll.toml.
    ///
    /// Without flags on a terminal it asks each question; elsewhere every flag is needed.
    #[command(
        after_help = "Examples:\n  atoll advise --rto 5m --consistency some --budget 1.5 --regions 2\n  atoll advise --rto 20s --consistency ledger,profiles --budget 3 --regions 3 --write atoll.toml\n  atoll advise --rto 4h --consistency none --budget 1.3 --regions 2 --output json\n  atoll advise                    # asks, on a terminal\n\nThe rules (quoted from the article in the answer): RTO under 30 s -> active-active; up to\n10 minutes -> active-standby with automated promotion; longer -> active-passive. Data that must\nnever conflict gets strong consistency replication (strong keyspaces; owned ones for data with\na natural owner in active-active). Cost: active-active ~N x one region, active-standby ~1.5x,\nactive-passive ~1.25x for two regions; a budget below what the RTO needs is reported."
    )]
    Advise(AdviseArgs),
    /// Validate and explain a config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Certificates for mutual TLS between regions.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Read and write lww and mvr keys.
    #[command(
        after_help = "Examples:\n  atoll kv put sessions user-1 token-abc\n  atoll kv get carts cart-7 --output json\n  atoll kv put carts cart-7 '[\"apple\"]' --context <token from get>"
    )]
    Kv {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::KvCommand,
    },
    /// Increment and read counters.
    #[command(
        after_help = "Examples:\n  atoll counter incr ratelimits user-1 --by 5\n  atoll counter get ratelimits user-1"
    )]
    Counter {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::CounterCommand,
    },
    /// Ask a rate limit to admit a request, or read what is left (ratelimit keyspaces).
    #[command(
        after_help = "Examples:\n  atoll ratelimit hit api-quota user-1\n  atoll ratelimit hit api-quota user-1 --cost 3\n  atoll ratelimit get api-quota user-1\n\n`hit` exits 0 when admitted and 2 when not (nothing counted), for scripts."
    )]
    Ratelimit {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::RatelimitCommand,
    },
    /// Add, remove and list set members.
    #[command(
        after_help = "Examples:\n  atoll set add flags beta dark-mode new-checkout\n  atoll set members flags beta"
    )]
    Set {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::SetCommand,
    },
    /// Follow the changes of a keyspace, a key or a key prefix as they are applied in a region
    /// (local and replicated writes alike); resumes without loss after a broken connection.
    #[command(
        after_help = "Examples:\n  atoll watch flags\n  atoll watch flags --prefix beta --endpoint http://127.0.0.1:7102\n  atoll watch sessions --key user-1 --output json\n  atoll watch flags --resume <token printed with an event>"
    )]
    Watch {
        #[command(flatten)]
        client: client::ClientArgs,
        keyspace: String,
        /// Only this key.
        #[arg(long, conflicts_with = "prefix")]
        key: Option<String>,
        /// Only keys with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Resume after the change that carried this token (`--output json` prints tokens).
        #[arg(long, value_name = "TOKEN")]
        resume: Option<String>,
        /// Stop after this many changes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Emulate WAN links between regions and inject faults (latency, partitions, resets).
    Link(atoll_cli::link::LinkArgs),
    /// Run a traffic router (health-checked proxy, authoritative DNS, admin API) or manage one.
    Router(Box<atoll_cli::router::RouterArgs>),
    /// Run the arbiter: a witness that votes in the control group (fencing) and stores no
    /// keyspace data. For two-region clusters: put it in a third location.
    #[command(
        after_help = "Example:\n  atoll arbiter --config atoll.toml --data-dir /var/lib/atoll-arbiter\n\nThe config needs [cluster.arbiter] (its peer address; name, default \"arbiter\"), and with\nmutual TLS a certificate for <name>.atoll (`atoll certs init` issues one)."
    )]
    Arbiter {
        /// The cluster config (atoll.toml).
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of [cluster.arbiter] peer.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where the arbiter keeps the control log (created if missing).
        #[arg(long, default_value = "atoll-arbiter-data")]
        data_dir: PathBuf,
        /// Reach a region at another address than its configured `peer` one: NAME=ADDR.
        #[arg(long, value_parser = parse_peer_via)]
        peer_via: Vec<(String, SocketAddr)>,
    },
    /// Make REGION the primary (active-standby, active-passive): for a primary that is gone.
    ///
    /// Refused while another region's lease may still be valid (use `atoll switchover` for a
    /// planned move), and while REGION has not applied every write the old primary was known
    /// to hold, unless --accept-data-loss; then the exposure is printed.
    #[command(after_help = "Example:
  ATOLL_ADMIN_TOKEN=... atoll promote eu-west-1 --config atoll.toml")]
    Promote {
        region: String,
        /// Promote even though writes acknowledged by the old primary are missing here.
        #[arg(long)]
        accept_data_loss: bool,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Planned, zero-loss move of the write lease to REGION: the primary stops writes, waits
    /// until REGION has caught up, then hands the lease over.
    #[command(after_help = "Example:
  ATOLL_ADMIN_TOKEN=... atoll switchover eu-west-1 --config atoll.toml")]
    Switchover {
        region: String,
        /// Give up (and resume writes on the primary) if REGION has not caught up by then.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
    /// Keyspace operations: move the home of owned keys (`atoll keyspace rehome`).
    Keyspace {
        #[command(subcommand)]
        command: KeyspaceCommand,
    },
    /// Failover drills: run a scenario against a cluster, check a scenario, list scenarios.
    #[command(
        after_help = "Examples:\n  atoll drill check drills/region-outage.toml\n  atoll drill run drills/region-outage.toml --demo --report outage.html\n  atoll drill run drills/drain-observe-restore.toml --config atoll.toml --router-admin http://127.0.0.1:7181\n  atoll drill ls"
    )]
    Drill {
        #[command(subcommand)]
        command: drill::DrillCommand,
    },
    /// Show a region's status.
    #[command(after_help = "Example:\n  atoll status --endpoint http://127.0.0.1:7100")]
    Status {
        #[command(flatten)]
        client: client::ClientArgs,
        /// Exit non-zero when a peer lags more than this many seconds (default: the cluster's
        /// replication.max_lag_secs).
        #[arg(long)]
        max_lag: Option<f64>,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Control a running demo: list its regions, kill, stop or restart one, add one, or remove
    /// an added one.
    Ctl(demo_control::CtlArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse, validate and print what was understood (defaults included), what it promises
    /// when a region dies (DNS, proxy and promotion worst cases, each keyspace's RPO) and the
    /// anti-patterns it contains.
    #[command(
        after_help = "Examples:\n  atoll config check examples/single-region.toml\n  atoll config check atoll.toml --output json"
    )]
    Check {
        file: PathBuf,
        /// human, or json: {file, ok, promises, warnings}.
        #[arg(long, value_enum, default_value = "human")]
        output: client::Output,
    },
}

#[derive(clap::Args)]
struct AdviseArgs {
    /// Recovery time objective: how long a region's loss may take to recover from (30s, 5m, 4h).
    #[arg(long, value_parser = parse_duration)]
    rto: Option<u64>,
    /// Which data must never conflict: none, some, all, or the data's names (ledger,inventory).
    #[arg(long)]
    consistency: Option<String>,
    /// The most the deployment may cost, as a multiple of one region's (1.5 = 50 % more).
    #[arg(long)]
    budget: Option<f64>,
    /// Number of regions.
    #[arg(long)]
    regions: Option<usize>,
    /// Write the starting atoll.toml here (refuses to overwrite an existing file) instead of
    /// printing it.
    #[arg(long)]
    write: Option<PathBuf>,
    /// human, or json: the answer with the config as a string.
    #[arg(long, value_enum, default_value = "human")]
    output: client::Output,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    atoll_config::duration::parse_ms(s)
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a cluster CA and one certificate per region of the config, for [cluster.tls].
    #[command(
        after_help = "Example:\n  atoll certs init --config examples/three-regions.toml --out examples/certs\n\nWrites into DIR: ca.pem and ca.key (the cluster CA), and <region>.pem and <region>.key for\nevery region of the config (ECDSA P-256; a region's certificate is valid for the name\n<region>.atoll, which identifies it to its peers). Keys are written with mode 0600. Existing\nfiles are never replaced without --force (a new CA means every region needs its new\ncertificate). Then prints the [cluster.tls] lines that point at the files, unless the config\nalready does. Keep ca.key off the regions' machines: it is needed only to issue certificates."
    )]
    Init {
        /// The cluster config (atoll.toml): its cluster name and regions.
        #[arg(long)]
        config: PathBuf,
        /// The directory to write the files into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// How long the region certificates are valid, in days.
        #[arg(long, default_value_t = atoll_tls::certs::DEFAULT_REGION_DAYS)]
        days: u32,
        /// How long the CA certificate is valid, in days.
        #[arg(long, default_value_t = atoll_tls::certs::DEFAULT_CA_DAYS)]
        ca_days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue the certificate of one more region (one added to a running cluster) from the
    /// cluster CA that `atoll certs init` made.
    #[command(
        after_help = "Example:\n  atoll certs issue --ca-dir examples/certs --region sa-east-1 --config examples/three-regions.toml\n\nLoads the cluster CA from DIR (ca.pem and ca.key, as `atoll certs init --out DIR` wrote them)\nand writes DIR/<region>.pem and DIR/<region>.key (ECDSA P-256, valid for <region>.atoll; the\nkey with mode 0600). The config only names the cluster: the CA is `atoll cluster <name> CA`,\nafter its [cluster] name, and the region need not be in it yet. Refused before anything is\nwritten if ca.key is not the key of ca.pem, if ca.pem is not that cluster's CA, if the\ncertificate would outlive the CA, or if the region's files exist (--force replaces them).\nThen add the region to the config with voter = false, start it, and reload every running\nregion (kill -HUP): docs/design/adding-regions.md."
    )]
    Issue {
        /// The directory of the cluster CA (ca.pem, ca.key); the region's files go there too.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The region to issue a certificate for.
        #[arg(long, value_name = "NAME")]
        region: String,
        /// The cluster config (atoll.toml): its [cluster] name, which names the CA.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = atoll_tls::certs::DEFAULT_REGION_DAYS)]
        days: u32,
        /// Replace the region's existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Logs to stderr, filtered by `ATOLL_LOG` (e.g. `debug`, `atoll_router=debug`), else by
/// `default`.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATOLL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn parse_model(s: &str) -> Result<atoll_config::Model, String> {
    atoll_config::Model::parse(s).ok_or_else(|| {
        format!("unknown model `{s}`: use active-active, active-standby or active-passive")
    })
}

fn parse_peer_via(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=ADDR, got `{s}`"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address `{addr}` for peer `{name}`: {e}"))?;
    Ok((name.to_string(), addr))
}

/// Installs the SIGINT/SIGTERM handlers now (so a signal that arrives before the returned future
/// is first polled is not lost, and never kills the process), and resolves on the first signal.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let term = async {
                match term {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = term => {},
                _ = int => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run_region(
    config: PathBuf,
    region: String,
    data_dir: PathBuf,
    listen: Option<SocketAddr>,
    peer_via: Vec<(String, SocketAddr)>,
    drain_grace: f64,
    clock_offset_ms: i64,
) -> Result<()> {
    let cfg = atoll_config::Config::load(&config).map_err(anyhow::Error::msg)?;
    let shutdown = shutdown_signal();
    let server = atoll_server::RegionServer::bind(atoll_server::RegionOptions {
        config: Arc::new(cfg),
        region,
        data_dir: data_dir.clone(),
        listen,
        peer_via: peer_via.into_iter().collect(),
        drain_grace: std::time::Duration::from_secs_f64(drain_grace.clamp(0.0, 3600.0)),
        clock_offset_ms,
    })
    .await
    .map_err(|e| anyhow::anyhow!("{} ({}): {}", e, e.code(), e.hint()))?;
    let addr = server.local_addr().map_err(anyhow::Error::msg)?;
    if let Some(reloader) = server.reloader() {
        // Listen for SIGHUP before saying the region listens: a reload sent right after that
        // line (`atoll demo ctl add-region` after a restart) must not meet SIGHUP's default
        // action, which ends the process.
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(hup) => {
                tokio::spawn(reload_on_sighup(config.clone(), reloader, hup));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: config reloads are off")
            }
        }
    }
    tracing::info!(region = %server.region(), %addr, data_dir = %data_dir.display(), "region serving");
    // Machine-readable line for tools and tests that start regions on port 0.
    println!(
        "atoll region {} listening on http://{addr}",
        server.region()
    );
    server.serve(shutdown).await.map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Re-reads the config file at every SIGHUP and applies what a running region may take from it:
/// regions appended with `voter = false` (`docs/design/adding-regions.md`) and `voter = false`
/// regions dropped from the list (`docs/design/region-removal.md`). Anything else is refused and
/// logged; nothing changes.
async fn reload_on_sighup(
    path: PathBuf,
    reloader: atoll_server::members::Reloader,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        let cfg = match atoll_config::Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                reloader.failed();
                tracing::error!(config = %path.display(), "config reload failed, nothing changed: {e}");
                continue;
            }
        };
        match reloader.apply(cfg).await {
            Ok(atoll_server::members::Reloaded::Unchanged) => {
                tracing::info!(config = %path.display(), "config reloaded: no change");
            }
            Ok(atoll_server::members::Reloaded::Changed { added, removed }) => {
                let names = |r: &[atoll_core::RegionId]| {
                    r.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
                };
                tracing::info!(config = %path.display(), added = %names(&added), removed = %names(&removed), "config reloaded: replicating with the added regions, the removed ones are out of the cluster");
            }
            Err(e) => tracing::error!(config = %path.display(), "{e} ({}): {}", e.code(), e.hint()),
        }
    }
}

async fn run_arbiter(
    config: PathBuf,
    listen: Option<SocketAddr>,
    data_dir: PathBuf,
    peer_via: Vec<(String, SocketAddr)>,
) -> Result<()> {
    let cfg = atoll_config::Config::load(&config).map_err(anyhow::Error::msg)?;
    let describe =
        |e: atoll_core::AtollError| anyhow::anyhow!("{} ({}): {}", e, e.code(), e.hint());
    let arbiter = atoll_server::arbiter::Arbiter::bind(atoll_server::arbiter::ArbiterOptions {
        config: Arc::new(cfg),
        listen,
        data_dir,
        peer_via: peer_via.into_iter().collect(),
    })
    .await
    .map_err(describe)?;
    let addr = arbiter.local_addr().map_err(describe)?;
    // Machine-readable line for tools and tests that start an arbiter on port 0.
    println!("atoll arbiter {} listening on {addr}", arbiter.name());
    arbiter.serve(shutdown_signal()).await.map_err(describe)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file, output },
        } => config_check(&file, output),
        Command::Advise(args) => advise::run(args),
        Command::Certs {
            command:
                CertsCommand::Init {
                    config,
                    out,
                    days,
                    ca_days,
                    force,
                },
        } => certs::init(&config, &out, days, ca_days, force),
        Command::Certs {
            command:
                CertsCommand::Issue {
                    ca_dir,
                    region,
                    config,
                    days,
                    force,
                },
        } => certs::issue(&config, &ca_dir, &region, days, force),
        other => {
            // The demo prints a table and commands to try: only warnings and errors of its
            // in-process router and links go to the terminal (the regions log to files).
            init_tracing(match other {
                Command::Demo { command: None, .. } => "warn,hickory_server=error,openraft=error",
                _ => "info,hickory_server=warn,openraft=warn",
            });
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                match other {
                    Command::Region {
                        config,
                        region,
                        data_dir,
                        listen,
                        peer_via,
                        drain_grace,
                        clock_offset_ms,
                    } => {
                        run_region(
                            config,
                            region,
                            data_dir,
                            listen,
                            peer_via,
                            drain_grace,
                            clock_offset_ms,
                        )
                        .await
                    }
                    Command::Demo {
                        command: Some(DemoCommand::Ctl(args)),
                        ..
                    } => demo_control::ctl(args).await,
                    Command::Demo {
                        command: None,
                        data_dir,
                        port_base,
                        model,
                    } => demo::run(data_dir, port_base, model).await,
                    Command::Kv { client, command } => client::kv(client, command).await,
                    Command::Watch {
                        client,
                        keyspace,
                        key,
                        prefix,
                        resume,
                        count,
                    } => {
                        let target = client::WatchTarget {
                            keyspace,
                            key,
                            prefix,
                            resume,
                            count,
                        };
                        client::watch(client, target).await
                    }
                    Command::Counter { client, command } => client::counter(client, command).await,
                    Command::Ratelimit { client, command } => {
                        client::ratelimit(client, command).await
                    }
                    Command::Set { client, command } => client::set(client, command).await,
                    Command::Status { client, max_lag } => client::status(client, max_lag).await,
                    Command::Drill { command } => drill::run(command).await,
                    Command::Keyspace {
                        command:
                            KeyspaceCommand::Rehome {
                                keyspace,
                                key,
                                prefix,
                                hash,
                                to,
                                force,
                                timeout,
                                admin,
                            },
                    } => {
                        let selector = match (key, prefix, hash) {
                            (Some(k), _, _) => serde_json::json!({ "key": k }),
                            (_, Some(p), _) => serde_json::json!({ "prefix": p }),
                            (_, _, Some((lo, hi))) => serde_json::json!({ "hash": [lo, hi] }),
                            (None, None, None) => {
                                anyhow::bail!("name a key, --prefix P or --hash LO-HI")
                            }
                        };
                        client::rehome(admin, keyspace, selector, to, force, timeout).await
                    }
                    Command::Promote {
                        region,
                        accept_data_loss,
                        admin,
                    } => client::promote(admin, region, accept_data_loss).await,
                    Command::Switchover {
                        region,
                        timeout,
                        admin,
                    } => client::switchover(admin, region, timeout).await,
                    Command::Arbiter {
                        config,
                        listen,
                        data_dir,
                        peer_via,
                    } => run_arbiter(config, listen, data_dir, peer_via).await,
                    Command::Router(args) => atoll_cli::router::run(*args).await,
                    Command::Link(args) => atoll_cli::link::run(args).await,
                    Command::Config { .. } | Command::Certs { .. } | Command::Advise(_) => Ok(()),
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_check(file: &std::path::Path, output: client::Output) -> Result<()> {
    let cfg = atoll_config::Config::load(file)
        .and_then(|c| c.check_peer_tls().map(|()| c))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{} is not a valid atoll config", file.display()))?;
    let tokens = atoll_config::auth::Tokens::load_for(&cfg)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{} names an invalid tokens file", file.display()))?;
    if let client::Output::Json = output {
        let mut warnings = cfg.warnings();
        warnings.extend(certs::check_files(&cfg));
        let doc = serde_json::json!({
            "file": file.display().to_string(),
            "ok": true,
            "model": cfg.cluster.model,
            "promises": cfg.promises(),
            "warnings": warnings,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("{}: OK\n", file.display());
    print!("{}", cfg.explain());
    if let (Some(tokens), Some(path)) = (tokens, &cfg.auth.tokens_file) {
        println!(
            "\nauth tokens ({}, from {})",
            tokens.grants().len(),
            path.display()
        );
        let rows: Vec<[String; 3]> = tokens
            .grants()
            .iter()
            .map(|g| [g.name.clone(), g.read.describe(), g.write.describe()])
            .collect();
        let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(4);
        let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0).max(4);
        println!("  {:<w0$}  {:<w1$}  write", "name", "read");
        for [name, read, write] in rows {
            println!("  {name:<w0$}  {read:<w1$}  {write}");
        }
    }
    let mut warnings = cfg.warnings();
    warnings.extend(certs::check_files(&cfg));
    if !warnings.is_empty() {
        println!();
        for w in warnings {
            println!("warning: {w}");
        }
    }
    Ok(())
}

/// `--hash LO-HI`: an inclusive range of hash buckets (0 to 65535).
fn parse_hash_range(s: &str) -> std::result::Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not a hash range LO-HI with 0 <= LO <= HI <= 65535");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// `atoll keyspace ...`.
#[derive(clap::Subcommand, Debug)]
enum KeyspaceCommand {
    /// Move the home of a key, a key prefix or a hash range of an owned keyspace to REGION
    /// (`docs/design/owned-keyspaces.md`): the old home stops writing them, the new home starts
    /// once it has applied the old home's writes; nothing acknowledged is lost. With --force the
    /// old home may be down: the new home takes over once the old home's write window has surely
    /// ended, and what it had not replicated is reported as lost.
    #[command(after_help = "Examples:
  ATOLL_ADMIN_TOKEN=... atoll keyspace rehome profiles us:42 --to eu-west-1 --config atoll.toml
  ATOLL_ADMIN_TOKEN=... atoll keyspace rehome profiles --prefix us: --to eu-west-1 --config atoll.toml
  ATOLL_ADMIN_TOKEN=... atoll keyspace rehome profiles --hash 0-32767 --to eu-west-1 --config atoll.toml")]
    Rehome {
        keyspace: String,
        /// One key (or use --prefix or --hash).
        #[arg(required_unless_present_any = ["prefix", "hash"], conflicts_with_all = ["prefix", "hash"])]
        key: Option<String>,
        /// Every key with this prefix whose longest home rule is this prefix ("" = the default).
        #[arg(long, conflicts_with = "hash")]
        prefix: Option<String>,
        /// A hash rule of the keyspace, as configured: `LO-HI` (the keys whose bucket, the top
        /// 16 bits of the key's CRC-32, is in LO..=HI and that no prefix or key rule homes).
        #[arg(long, value_parser = parse_hash_range)]
        hash: Option<(u16, u16)>,
        /// The new home.
        #[arg(long)]
        to: String,
        /// The old home may be down: take its keys over once its write window has ended.
        #[arg(long)]
        force: bool,
        /// Give up (abort the move; the old home writes again) if it has not finished by then.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        #[command(flatten)]
        admin: client::AdminArgs,
    },
}
