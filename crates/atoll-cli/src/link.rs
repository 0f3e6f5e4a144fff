//! The `atoll link ...` subcommands: clap structs for the binary to embed and [`run`].
//!
//! The binary adds `Link(atoll_cli::link::LinkArgs)` to its subcommands and calls
//! `atoll_cli::link::run(args).await`.

use anyhow::{Context, Result, anyhow, bail};
use atoll_link::config::{links_from_cluster, load_links};
use atoll_link::error::LinkError;
use atoll_link::proxy::LinkServer;
use clap::{Args, Subcommand, ValueEnum};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default control API address of `atoll link serve`.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:7400";
/// Environment variable holding the control API's token (`serve` and the client commands).
pub const TOKEN_ENV: &str = "ATOLL_LINK_TOKEN";
/// Default first listen port of the links `--cluster` derives.
pub const DEFAULT_LISTEN_BASE: u16 = 7300;

/// `atoll link`: emulate WAN links between regions and inject faults.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  atoll link serve --cluster examples/three-regions.toml --listen-base 7300 --control 127.0.0.1:7400\n  atoll link serve --config links.toml\n  atoll link ls\n  atoll link fault add 'us-east-1<->eu-west-1' --kind partition --for 10m\n  atoll link fault add us-east-1 --kind isolate --for 5m\n  atoll link fault add 'us-east-1->eu-west-1' --kind oneway --direction forward --for 30s\n  atoll link fault ls\n  atoll link fault rm 'us-east-1<->eu-west-1' f-1\n\nQuote link names and pairs: unquoted, a shell reads their `>` and `<` as redirections."
)]
pub struct LinkArgs {
    #[command(subcommand)]
    pub command: LinkCommand,
}

#[derive(Subcommand, Debug)]
pub enum LinkCommand {
    /// Serve links (a TCP proxy per link) and the control API until SIGINT/SIGTERM.
    #[command(
        after_help = "Examples:\n  atoll link serve --config links.toml --control 127.0.0.1:7400\n  atoll link serve --cluster atoll.toml --listen-base 7300\n  ATOLL_LINK_TOKEN=s3cret atoll link serve --cluster atoll.toml --control 0.0.0.0:7400\n\nThe control API needs a token (ATOLL_LINK_TOKEN or --token) when it listens beyond loopback,\nand refuses to start without one; clients (`atoll link ls`, `fault`, `set`) send it from the\nsame variable or --token.\n\nWith --cluster, link A->B (one per ordered pair of regions, in file order) listens on\n127.0.0.1:<listen-base + k> and forwards to B's peer address, with the geo model's delay when\nboth regions have a location. One line per link is printed:\n  link NAME listening on ADDR -> UPSTREAM (one-way X ms)\nthen `atoll link control on http://ADDR`, then the `--peer-via` flags each region must be started\nwith for its replication to go through the links (a region reaches its peers at their\nconfigured addresses otherwise, and the links carry nothing)."
    )]
    Serve(ServeArgs),
    /// List the links: addresses, shaping, active faults and counters.
    #[command(
        after_help = "Examples:\n  atoll link ls\n  atoll link ls --json --control http://127.0.0.1:7400"
    )]
    Ls(ControlArgs),
    /// Change a link's base shaping (unprefixed flags set both directions unless the reverse
    /// flag is given too).
    #[command(
        after_help = "Examples:\n  atoll link set 'us-east-1->eu-west-1' --latency-ms 80 --jitter-ms 2\n  atoll link set 'us-east-1->eu-west-1' --bandwidth 10MB/s --reverse-bandwidth unlimited"
    )]
    Set(SetArgs),
    /// Add, renew, remove and list faults on a link, a pair of regions or a region.
    #[command(
        after_help = "A fault's TARGET is one of:\n  'us-east-1->eu-west-1'   a link: the connections us-east-1 opens to eu-west-1 (one direction)\n  'us-east-1<->eu-west-1'  a pair: every link between the two regions, both directions\n  us-east-1                a region, with --kind isolate: every link to and from it\nWhatever it covers, a fault has one id and one lease: renew and rm act on all its links.\n\nExamples:\n  atoll link fault add 'us-east-1<->eu-west-1' --kind partition --for 10m\n  atoll link fault add us-east-1 --kind isolate --mode refuse --for 5m\n  atoll link fault add 'us-east-1->eu-west-1' --kind partition --mode stall --for 10m\n  atoll link fault renew 'us-east-1<->eu-west-1' f-1 --for 5m\n  atoll link fault rm 'us-east-1<->eu-west-1' f-1\n  atoll link fault ls"
    )]
    Fault(FaultArgs),
}

/// `atoll link serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A links file (`[[links]]` tables: name, listen, upstream, latency_ms, jitter_ms,
    /// bandwidth, reverse_*).
    #[arg(
        long,
        value_name = "LINKS_TOML",
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub config: Option<PathBuf>,
    /// A cluster config (atoll.toml): one link per ordered pair of its regions.
    #[arg(long, value_name = "ATOLL_TOML")]
    pub cluster: Option<PathBuf>,
    /// With --cluster: the first listen port (links take consecutive ports). Default 7300.
    #[arg(long, value_name = "PORT", conflicts_with = "config")]
    pub listen_base: Option<u16>,
    /// Where the control API listens. Beyond loopback it needs a token (--token).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_CONTROL)]
    pub control: SocketAddr,
    /// The bearer token the control API requires (every route but /healthz and /metrics).
    /// Required when --control is not a loopback address; optional on loopback.
    #[arg(long, value_name = "TOKEN", env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
}

/// Where the control API of a running `atoll link serve` is.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// The control API's URL (or ADDR).
    #[arg(
        long,
        value_name = "URL",
        env = "ATOLL_LINK_CONTROL",
        default_value = "http://127.0.0.1:7400"
    )]
    pub control: String,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The control API's token, when `atoll link serve` was given one.
    #[arg(long, value_name = "TOKEN", env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
}

/// `atoll link set`.
#[derive(Args, Debug)]
pub struct SetArgs {
    /// The link, e.g. us-east-1->eu-west-1.
    pub link: String,
    /// One-way latency, ms (both directions unless --reverse-latency-ms).
    #[arg(long)]
    pub latency_ms: Option<f64>,
    /// Jitter, ms (both directions unless --reverse-jitter-ms).
    #[arg(long)]
    pub jitter_ms: Option<f64>,
    /// Bandwidth (10MB/s, 512KiB/s, 100Mbit/s, bytes per second, or `unlimited`).
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// Latency of the reverse direction (upstream to client), ms.
    #[arg(long)]
    pub reverse_latency_ms: Option<f64>,
    /// Jitter of the reverse direction, ms.
    #[arg(long)]
    pub reverse_jitter_ms: Option<f64>,
    /// Bandwidth of the reverse direction.
    #[arg(long)]
    pub reverse_bandwidth: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `atoll link fault`.
#[derive(Args, Debug)]
pub struct FaultArgs {
    #[command(subcommand)]
    pub command: FaultCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Cut the link, or every link of a pair, both ways.
    Partition,
    /// Cut every link to and from a region (the target is a region).
    Isolate,
    /// Hold one direction's bytes.
    Oneway,
    /// Reset existing connections once.
    Reset,
    /// Add latency.
    Latency,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Bytes and new connections wait until the fault ends.
    Stall,
    /// New connections are reset at once; existing ones are held.
    Refuse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Forward,
    Reverse,
    Both,
}

#[derive(Subcommand, Debug)]
pub enum FaultCommand {
    /// Add a fault for a lease to a link, a pair of regions or (isolate) a region; prints its id.
    #[command(
        after_help = "Examples:\n  atoll link fault add 'us-east-1<->eu-west-1' --kind partition --for 10m\n  atoll link fault add us-east-1 --kind isolate --for 30s\n  atoll link fault add 'us-east-1<->eu-west-1' --kind latency --extra-ms 200 --for 5m\n  atoll link fault add 'us-east-1->eu-west-1' --kind partition --mode refuse --for 30s\n  atoll link fault add 'eu-west-1->us-east-1' --kind oneway --direction forward --for 1m\n  atoll link fault add 'us-east-1->eu-west-1' --kind reset --for 1m\n\nA pair takes partition, reset and latency (both directions); a region takes isolate; a link\ntakes every kind but isolate. The id is printed on stdout; for a pair or a region, the links it\ncovers on stderr."
    )]
    Add {
        /// What to fault: a link ('us-east-1->eu-west-1'), a pair of regions
        /// ('us-east-1<->eu-west-1': both directions) or, with --kind isolate, a region
        /// (us-east-1: every link to and from it).
        #[arg(value_name = "TARGET")]
        target: String,
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Partition mode (default stall).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Which direction (oneway: forward or reverse; latency: both, forward or reverse).
        #[arg(long, value_enum)]
        direction: Option<DirectionArg>,
        /// Latency added by a latency fault, ms.
        #[arg(long)]
        extra_ms: Option<f64>,
        /// The lease: the fault ends by itself after this long (500ms, 30s, 10m, 1h).
        #[arg(long = "for", value_name = "DURATION")]
        lease: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Remove a fault: every link it covers heals from it at once.
    #[command(
        after_help = "Examples:\n  atoll link fault rm 'us-east-1<->eu-west-1' f-1\n  atoll link fault rm us-east-1 f-2\n  atoll link fault rm 'us-east-1->eu-west-1' f-3"
    )]
    Rm {
        /// The fault's target, as `fault add` was given it (`fault ls` shows it).
        #[arg(value_name = "TARGET")]
        target: String,
        /// The fault id (f-N) printed by `fault add`.
        id: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Set a fault's lease to DURATION from now, on every link it covers.
    #[command(
        after_help = "Examples:\n  atoll link fault renew 'us-east-1<->eu-west-1' f-1 --for 5m\n  atoll link fault renew us-east-1 f-2 --for 1m"
    )]
    Renew {
        /// The fault's target, as `fault add` was given it (`fault ls` shows it).
        #[arg(value_name = "TARGET")]
        target: String,
        id: String,
        #[arg(long = "for", value_name = "DURATION")]
        lease: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// List the active faults, each once with its target and the links it covers (or those on
    /// one target: a link's include the pair and region faults that cover it).
    #[command(
        after_help = "Examples:\n  atoll link fault ls\n  atoll link fault ls 'us-east-1->eu-west-1' --json\n  atoll link fault ls us-east-1"
    )]
    Ls {
        /// Only the faults on this link, pair or region.
        #[arg(value_name = "TARGET")]
        target: Option<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Runs an `atoll link` subcommand. `serve` runs until SIGINT or SIGTERM.
pub async fn run(args: LinkArgs) -> Result<()> {
    match args.command {
        LinkCommand::Serve(a) => serve(a).await,
        LinkCommand::Ls(c) => {
            let v = Client::new(&c)?.get("/v1/links").await?;
            if c.json {
                print_json(&v);
            } else {
                print!("{}", render_links(&v));
            }
            Ok(())
        }
        LinkCommand::Set(a) => {
            let mut body = serde_json::Map::new();
            let mut put = |k: &str, v: Value| {
                body.insert(k.to_string(), v);
            };
            if let Some(v) = a.latency_ms {
                put("latency_ms", json!(v));
            }
            if let Some(v) = a.jitter_ms {
                put("jitter_ms", json!(v));
            }
            if let Some(v) = &a.bandwidth {
                put("bandwidth", json!(v));
            }
            if let Some(v) = a.reverse_latency_ms {
                put("reverse_latency_ms", json!(v));
            }
            if let Some(v) = a.reverse_jitter_ms {
                put("reverse_jitter_ms", json!(v));
            }
            if let Some(v) = &a.reverse_bandwidth {
                put("reverse_bandwidth", json!(v));
            }
            if body.is_empty() {
                bail!(
                    "nothing to change: give --latency-ms, --jitter-ms, --bandwidth or a --reverse-* flag"
                );
            }
            let c = Client::new(&a.control)?;
            let v = c
                .send(
                    reqwest::Method::PATCH,
                    &link_path(&a.link, ""),
                    Some(Value::Object(body)),
                )
                .await?;
            if a.control.json {
                print_json(&v);
            } else {
                print!("{}", render_link(&v));
            }
            Ok(())
        }
        LinkCommand::Fault(f) => fault(f.command).await,
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    serve_with(a, crate::shutdown_signal(), |line| println!("{line}")).await
}

/// `atoll link serve` with the stop signal and the output made explicit (for `atoll demo` and
/// tests): starts the links, reports one line per link ([`describe_link`]) and then
/// `atoll link control on http://ADDR` through `out`, serves until `stop` resolves, then shuts
/// down (every fault ends with it).
pub async fn serve_with(
    a: ServeArgs,
    stop: impl std::future::Future<Output = ()>,
    mut out: impl FnMut(String),
) -> Result<()> {
    let specs = match (&a.config, &a.cluster) {
        (Some(path), _) => load_links(path).map_err(explain)?,
        (None, Some(path)) => {
            let cfg = atoll_config::Config::load(path).map_err(anyhow::Error::msg)?;
            links_from_cluster(&cfg, a.listen_base.unwrap_or(DEFAULT_LISTEN_BASE))
                .map_err(explain)?
        }
        (None, None) => bail!("give --config LINKS_TOML or --cluster ATOLL_TOML"),
    };
    let opts = atoll_link::proxy::ProxyOptions {
        control_token: a.token.clone(),
        ..atoll_link::proxy::ProxyOptions::default()
    };
    let server = LinkServer::start_with(specs, Some(a.control), opts)
        .await
        .map_err(explain)?;
    for s in server.specs() {
        out(describe_link(&s));
    }
    if let Some(addr) = server.control_addr() {
        out(format!("atoll link control on http://{addr}"));
    }
    for line in peer_via_lines(&server.specs()) {
        out(line);
    }
    stop.await;
    tracing::info!("stopping: every fault ends with this process");
    server.shutdown().await;
    Ok(())
}

/// What each region must be started with for its replication to go through the links: the
/// links only carry what is sent to them, and a region sends to its peers' configured
/// addresses unless told otherwise with `atoll region --peer-via PEER=ADDR`. One line per region
/// that has links from it (regions from the link names or `from`/`to`), after a heading; none
/// when no link names its regions.
pub fn peer_via_lines(specs: &[atoll_link::model::LinkSpec]) -> Vec<String> {
    let mut by_region: Vec<(String, Vec<String>)> = Vec::new();
    for s in specs {
        let (Some(from), Some(to)) = (&s.from_region, &s.to_region) else {
            continue;
        };
        let flag = format!("--peer-via {to}={}", s.listen);
        match by_region.iter_mut().find(|(r, _)| r == from.as_str()) {
            Some((_, flags)) => flags.push(flag),
            None => by_region.push((from.to_string(), vec![flag])),
        }
    }
    if by_region.is_empty() {
        return Vec::new();
    }
    let mut out = vec![
        "regions replicate through these links only when started with --peer-via:".to_string(),
    ];
    for (region, flags) in by_region {
        out.push(format!(
            "  atoll region --region {region} ... {}",
            flags.join(" ")
        ));
    }
    out
}

/// `link NAME listening on ADDR -> UPSTREAM (one-way X ms)` (the line `serve` prints per link).
pub fn describe_link(s: &atoll_link::model::LinkSpec) -> String {
    let mut line = format!(
        "link {} listening on {} -> {} (one-way {} ms",
        s.name, s.listen, s.upstream, s.forward.latency_ms
    );
    if s.reverse.latency_ms != s.forward.latency_ms {
        line.push_str(&format!(", reverse {} ms", s.reverse.latency_ms));
    }
    line.push(')');
    line
}

fn explain(e: LinkError) -> anyhow::Error {
    anyhow!("{e} [{}]\nhint: {}", e.code(), e.hint())
}

/// The request field a TARGET goes in: `pair` for `A<->B`, `region` for an isolate, `link`
/// otherwise.
pub fn target_field(target: &str, kind: KindArg) -> &'static str {
    if target.contains(atoll_link::model::PAIR_SEPARATOR) {
        "pair"
    } else if kind == KindArg::Isolate {
        "region"
    } else {
        "link"
    }
}

/// Whether a fault's `target` (as the API reports it) is the TARGET the user typed: the same
/// text, or the same pair in the other order.
fn same_target(reported: &str, typed: &str) -> bool {
    let pair = |t: &str| atoll_link::model::FaultTarget::pair(t).ok();
    match (pair(reported), pair(typed)) {
        (Some(a), Some(b)) => a.same_as(&b),
        _ => reported == typed,
    }
}

/// Where to renew or remove fault `id` given as on `target`: the link's own route for a link
/// fault (the server checks that it is that link's), `/v1/faults/{id}` for a pair or region
/// fault once its target is checked to be `target`.
async fn fault_path(c: &Client, target: &str, id: &str) -> Result<String> {
    let f = c.get(&format!("/v1/faults/{}", encode(id))).await?;
    let scope = f["scope"].as_str().unwrap_or("link");
    let reported = f["target"].as_str().unwrap_or("?");
    if scope == "link" {
        return Ok(link_path(target, &format!("/faults/{}", encode(id))));
    }
    if !same_target(reported, target) {
        bail!(
            "fault {id} is on {scope} `{reported}`, not on `{target}`: give its target, as in `atoll link fault rm '{reported}' {id}` (`atoll link fault ls` lists every fault with its target)"
        );
    }
    Ok(format!("/v1/faults/{}", encode(id)))
}

async fn fault(cmd: FaultCommand) -> Result<()> {
    match cmd {
        FaultCommand::Add {
            target,
            kind,
            mode,
            direction,
            extra_ms,
            lease,
            control,
        } => {
            let mut body = serde_json::Map::new();
            body.insert(target_field(&target, kind).into(), json!(target));
            let kind_name = match kind {
                KindArg::Partition => "partition",
                KindArg::Isolate => "isolate",
                KindArg::Oneway => "oneway",
                KindArg::Reset => "reset",
                KindArg::Latency => "latency",
            };
            body.insert("kind".into(), json!(kind_name));
            if let Some(m) = mode {
                let m = match m {
                    ModeArg::Stall => "stall",
                    ModeArg::Refuse => "refuse",
                };
                body.insert("mode".into(), json!(m));
            }
            if let Some(d) = direction {
                let d = match d {
                    DirectionArg::Forward => "forward",
                    DirectionArg::Reverse => "reverse",
                    DirectionArg::Both => "both",
                };
                body.insert("direction".into(), json!(d));
            }
            if let Some(x) = extra_ms {
                body.insert("extra_ms".into(), json!(x));
            }
            body.insert("for".into(), json!(lease));
            let c = Client::new(&control)?;
            let v = c
                .send(
                    reqwest::Method::POST,
                    "/v1/faults",
                    Some(Value::Object(body)),
                )
                .await?;
            if control.json {
                print_json(&v);
            } else {
                let id = v["id"]
                    .as_str()
                    .context("the server answered without an id")?;
                if v["scope"].as_str().is_some_and(|s| s != "link") {
                    eprintln!("{}", describe_fault(&v));
                }
                println!("{id}");
            }
            Ok(())
        }
        FaultCommand::Rm {
            target,
            id,
            control,
        } => {
            let c = Client::new(&control)?;
            let path = fault_path(&c, &target, &id).await?;
            let v = c.send(reqwest::Method::DELETE, &path, None).await?;
            if control.json {
                print_json(&v);
            } else {
                println!("removed {id} from {target}");
            }
            Ok(())
        }
        FaultCommand::Renew {
            target,
            id,
            lease,
            control,
        } => {
            let c = Client::new(&control)?;
            let path = fault_path(&c, &target, &id).await?;
            let v = c
                .send(reqwest::Method::PUT, &path, Some(json!({"for": lease})))
                .await?;
            if control.json {
                print_json(&v);
            } else {
                println!(
                    "renewed {id} on {target}: {} left",
                    v["remaining"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        FaultCommand::Ls { target, control } => {
            let c = Client::new(&control)?;
            let all = c.get("/v1/faults").await?;
            let faults = match &target {
                None => all["faults"].as_array().cloned().unwrap_or_default(),
                Some(t) => {
                    // Check the target exists, so a typo is an error rather than "no faults".
                    let links = c.get("/v1/links").await?;
                    known_target(&links, t)?;
                    faults_on(&all, t)
                }
            };
            if control.json {
                print_json(&json!({"faults": faults}));
            } else {
                print!("{}", render_faults(&faults));
            }
            Ok(())
        }
    }
}

/// Errors unless `target` names a link, a region or a pair of regions of the `GET /v1/links`
/// answer `links`.
fn known_target(links: &Value, target: &str) -> Result<()> {
    let all = links["links"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = all.iter().filter_map(|l| l["name"].as_str()).collect();
    let regions: Vec<&str> = all
        .iter()
        .flat_map(|l| [l["from_region"].as_str(), l["to_region"].as_str()])
        .flatten()
        .collect();
    let known = names.contains(&target)
        || regions.contains(&target)
        || target
            .split_once(atoll_link::model::PAIR_SEPARATOR)
            .is_some_and(|(a, b)| regions.contains(&a) && regions.contains(&b));
    if known {
        Ok(())
    } else {
        bail!(
            "`{target}` is no link, region or pair of regions of this link server (see `atoll link ls`)"
        )
    }
}

/// The faults of a `GET /v1/faults` answer whose target is `target`, or that cover link
/// `target`.
fn faults_on(all: &Value, target: &str) -> Vec<Value> {
    all["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            same_target(f["target"].as_str().unwrap_or(""), target)
                || f["links"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|n| n.as_str() == Some(target)))
        })
        .cloned()
        .collect()
}

/// `f-3: isolate (stall) on region us-east-1, 4 links: a->b, ...` for a fault object.
fn describe_fault(f: &Value) -> String {
    let links: Vec<&str> = f["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{}: {} on {} {}, {} link{}: {}",
        f["id"].as_str().unwrap_or("?"),
        f["description"].as_str().unwrap_or("?"),
        f["scope"].as_str().unwrap_or("?"),
        f["target"].as_str().unwrap_or("?"),
        links.len(),
        if links.len() == 1 { "" } else { "s" },
        links.join(", ")
    )
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Characters left as they are in a path segment: unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment (`us-east-1->eu-west-1` → `us-east-1-%3Eeu-west-1`).
pub fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

fn link_path(link: &str, rest: &str) -> String {
    format!("/v1/links/{}{rest}", encode(link))
}

/// A small client of the control API.
struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    fn new(c: &ControlArgs) -> Result<Self> {
        let base = c.control.trim_end_matches('/');
        let base = if base.starts_with("http://") || base.starts_with("https://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        let token = c
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        Ok(Self { base, http, token })
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the link control API at {} (is `atoll link serve` running? set --control)",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(v);
        }
        let e = &v["error"];
        match (e["code"].as_str(), e["message"].as_str()) {
            (Some(code), Some(message)) => Err(anyhow!(
                "{message} [{code}]{}",
                e["hint"]
                    .as_str()
                    .map(|h| format!("\nhint: {h}"))
                    .unwrap_or_default()
            )),
            _ => Err(anyhow!("{method} {url}: HTTP {status}: {v}")),
        }
    }
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x}"),
        None => "?".into(),
    }
}

fn shaping(v: &Value) -> String {
    let mut s = format!("{} ms", num(&v["latency_ms"]));
    if v["jitter_ms"].as_f64().unwrap_or(0.0) > 0.0 {
        s = format!("{}±{} ms", num(&v["latency_ms"]), num(&v["jitter_ms"]));
    }
    if let Some(b) = v["bandwidth_bytes_per_sec"].as_u64() {
        s.push_str(&format!(" {}", atoll_link::units::format_bandwidth(b)));
    }
    s
}

fn render_link(l: &Value) -> String {
    let c = &l["counters"];
    let mut out = format!(
        "{}  {} -> {}  forward {}  reverse {}  connections {} open / {} total  bytes {} forward / {} reverse\n",
        l["name"].as_str().unwrap_or("?"),
        l["listen"].as_str().unwrap_or("?"),
        l["upstream"].as_str().unwrap_or("?"),
        shaping(&l["forward"]),
        shaping(&l["reverse"]),
        c["connections_open"],
        c["connections_total"],
        c["forward_bytes"],
        c["reverse_bytes"],
    );
    for f in l["faults"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}  {}  {} left",
            f["id"].as_str().unwrap_or("?"),
            f["description"].as_str().unwrap_or("?"),
            f["remaining"].as_str().unwrap_or("?"),
        ));
        // A pair or region fault: say what it was added to (it is renewed and removed there).
        if let Some(scope) = f["scope"].as_str().filter(|s| *s != "link") {
            out.push_str(&format!(
                "  ({scope} {})",
                f["target"].as_str().unwrap_or("?")
            ));
        }
        out.push('\n');
    }
    out
}

fn render_links(v: &Value) -> String {
    let links = v["links"].as_array().cloned().unwrap_or_default();
    if links.is_empty() {
        return "no links\n".into();
    }
    links.iter().map(render_link).collect()
}

/// One line per fault: `TARGET  ID  DESCRIPTION  REMAINING left`, and for a pair or region
/// fault the links it covers.
fn render_faults(faults: &[Value]) -> String {
    if faults.is_empty() {
        return "no active faults\n".into();
    }
    let mut out = String::new();
    for f in faults {
        out.push_str(&format!(
            "{}  {}  {}  {} left",
            f["target"].as_str().unwrap_or("?"),
            f["id"].as_str().unwrap_or("?"),
            f["description"].as_str().unwrap_or("?"),
            f["remaining"].as_str().unwrap_or("?"),
        ));
        if f["scope"].as_str().is_some_and(|s| s != "link") {
            let links: Vec<&str> = f["links"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            out.push_str(&format!("  links: {}", links.join(", ")));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser, Debug)]
    struct Top {
        #[command(subcommand)]
        cmd: Top2,
    }

    #[derive(Subcommand, Debug)]
    enum Top2 {
        Link(LinkArgs),
    }

    fn parse(args: &[&str]) -> Result<LinkArgs, clap::Error> {
        let mut full = vec!["atoll"];
        full.extend_from_slice(args);
        let m = Top::command().try_get_matches_from(full)?;
        let Top2::Link(a) = Top::from_arg_matches(&m)?.cmd;
        Ok(a)
    }

    #[test]
    fn parses_commands() {
        Top::command().debug_assert();
        let a = parse(&[
            "link",
            "serve",
            "--cluster",
            "atoll.toml",
            "--listen-base",
            "7300",
        ])
        .unwrap();
        match a.command {
            LinkCommand::Serve(s) => {
                assert_eq!(s.listen_base, Some(7300));
                assert_eq!(s.control, DEFAULT_CONTROL.parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
        let a = parse(&[
            "link",
            "serve",
            "--cluster",
            "atoll.toml",
            "--control",
            "0.0.0.0:7400",
            "--token",
            "s3cret",
        ])
        .unwrap();
        match a.command {
            LinkCommand::Serve(s) => assert_eq!(s.token.as_deref(), Some("s3cret")),
            other => panic!("{other:?}"),
        }
        match parse(&["link", "ls", "--token", "s3cret"]).unwrap().command {
            LinkCommand::Ls(c) => assert_eq!(c.token.as_deref(), Some("s3cret")),
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["link", "serve"]).is_err(),
            "needs --config or --cluster"
        );
        assert!(parse(&["link", "serve", "--config", "a", "--cluster", "b"]).is_err());
        assert!(parse(&["link", "serve", "--config", "a", "--listen-base", "1"]).is_err());
        let a = parse(&[
            "link",
            "fault",
            "add",
            "us-east-1->eu-west-1",
            "--kind",
            "partition",
            "--mode",
            "stall",
            "--for",
            "10m",
            "--control",
            "http://127.0.0.1:9",
        ])
        .unwrap();
        match a.command {
            LinkCommand::Fault(FaultArgs {
                command:
                    FaultCommand::Add {
                        target,
                        kind,
                        mode,
                        lease,
                        control,
                        ..
                    },
            }) => {
                assert_eq!(target, "us-east-1->eu-west-1");
                assert_eq!(kind, KindArg::Partition);
                assert_eq!(mode, Some(ModeArg::Stall));
                assert_eq!(lease, "10m");
                assert_eq!(control.control, "http://127.0.0.1:9");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["link", "fault", "add", "x", "--kind", "partition"]).is_err(),
            "--for required"
        );
        assert!(parse(&["link", "fault", "renew", "x", "f-1", "--for", "5m"]).is_ok());
        assert!(parse(&["link", "fault", "rm", "x", "f-1"]).is_ok());
        assert!(parse(&["link", "fault", "ls"]).is_ok());
        assert!(parse(&["link", "set", "x", "--latency-ms", "5"]).is_ok());
    }

    #[test]
    fn targets_go_in_their_own_field() {
        for (words, field) in [
            (
                &["us-east-1<->eu-west-1", "--kind", "partition"][..],
                "pair",
            ),
            (&["us-east-1<->eu-west-1", "--kind", "reset"][..], "pair"),
            (
                &["us-east-1", "--kind", "isolate", "--mode", "refuse"][..],
                "region",
            ),
            (&["us-east-1->eu-west-1", "--kind", "partition"][..], "link"),
            // Wrong on purpose: the server refuses it, naming the kind.
            (&["us-east-1<->eu-west-1", "--kind", "isolate"][..], "pair"),
        ] {
            let mut args = vec!["link", "fault", "add"];
            args.extend_from_slice(words);
            args.extend_from_slice(&["--for", "30s"]);
            let a = parse(&args).unwrap();
            let LinkCommand::Fault(FaultArgs {
                command: FaultCommand::Add { target, kind, .. },
            }) = a.command
            else {
                panic!("{args:?}");
            };
            assert_eq!(target, words[0]);
            assert_eq!(target_field(&target, kind), field, "{args:?}");
        }
        assert!(same_target(
            "us-east-1<->eu-west-1",
            "eu-west-1<->us-east-1"
        ));
        assert!(same_target("us-east-1", "us-east-1"));
        assert!(!same_target("us-east-1<->eu-west-1", "us-east-1"));
        assert!(!same_target("a->b", "b->a"));
    }

    /// Every example in the help pastes into a shell as it reads: a `<` or `>` outside single
    /// quotes would be a redirection (`us-east-1->eu-west-1` unquoted writes to a file
    /// `eu-west-1`).
    #[test]
    fn help_examples_are_shell_safe() {
        fn check(cmd: &clap::Command, seen: &mut usize) {
            let help = cmd
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            for line in help
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("atoll "))
            {
                *seen += 1;
                let mut quoted = false;
                for ch in line.chars() {
                    match ch {
                        '\'' => quoted = !quoted,
                        '<' | '>' => assert!(quoted, "unquoted `{ch}` in help example: {line}"),
                        _ => {}
                    }
                }
                assert!(!quoted, "unbalanced quote in help example: {line}");
            }
            for sub in cmd.get_subcommands() {
                check(sub, seen);
            }
        }
        let mut seen = 0;
        check(&Top::command(), &mut seen);
        assert!(seen > 20, "only {seen} examples found");
    }

    #[test]
    fn renders_group_faults_with_their_links() {
        let f = json!({
            "id": "f-3", "scope": "region", "target": "us-east-1",
            "links": ["eu-west-1->us-east-1", "us-east-1->eu-west-1"],
            "kind": "isolate", "mode": "stall", "description": "isolate (stall)",
            "remaining": "29s", "remaining_ms": 29000,
        });
        assert_eq!(
            render_faults(std::slice::from_ref(&f)),
            "us-east-1  f-3  isolate (stall)  29s left  links: eu-west-1->us-east-1, us-east-1->eu-west-1\n"
        );
        assert_eq!(
            describe_fault(&f),
            "f-3: isolate (stall) on region us-east-1, 2 links: eu-west-1->us-east-1, us-east-1->eu-west-1"
        );
        assert_eq!(render_faults(&[]), "no active faults\n");
        let all = json!({"faults": [f]});
        assert_eq!(faults_on(&all, "us-east-1").len(), 1);
        assert_eq!(faults_on(&all, "us-east-1->eu-west-1").len(), 1);
        assert_eq!(faults_on(&all, "eu-west-1<->us-east-1").len(), 0);
    }

    #[test]
    fn encodes_link_names() {
        assert_eq!(encode("us-east-1->eu-west-1"), "us-east-1-%3Eeu-west-1");
        assert_eq!(link_path("a->b", "/faults"), "/v1/links/a-%3Eb/faults");
    }

    #[test]
    fn describes_links() {
        let s = atoll_link::model::LinkSpec::new(
            "a->b",
            "127.0.0.1:7300".parse().unwrap(),
            "127.0.0.1:7101".parse().unwrap(),
        )
        .with_delay(39.8);
        assert_eq!(
            describe_link(&s),
            "link a->b listening on 127.0.0.1:7300 -> 127.0.0.1:7101 (one-way 39.8 ms)"
        );
    }
}
