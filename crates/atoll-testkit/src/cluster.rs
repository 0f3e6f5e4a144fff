//! [`Cluster`]: several real `atoll region` processes forming one cluster on loopback.
//!
//! [`Cluster::start`] writes one cluster config (regions `us-east-1`, `eu-west-1`,
//! `ap-southeast-1`, then `sa-east-1` and `ap-northeast-1`, each with a client API address and a
//! peer address on free `127.0.0.1` ports; the keyspaces `sessions` (lww), `carts` (mvr),
//! `ratelimits` (counter) and `flags` (set); a fast `[replication] heartbeat_interval_ms`) into a
//! fresh test directory and starts every region as a [`RegionProcess`] listening on its
//! configured addresses (peers reach each other at their peer addresses).
//!
//! **Mutual TLS.** Regions talk to each other over mutual TLS, as in production: the cluster's
//! certificates are made the way an operator makes them, by running `atoll certs init --config
//! atoll.toml --out certs` in the test directory, and `[cluster.tls]` points at them. A test of
//! the plain-HTTP path opts out with [`ClusterOptions::insecure`]; its regions then serve the
//! replication routes on their client listener (no `peer` address), as a one-port setup does.
//!
//! How a region reaches each peer is a [`Route`] per ordered pair ([`ClusterOptions::route`],
//! [`ClusterOptions::cut`]): directly, through another address (`--peer-via PEER=ADDR`), or not
//! at all (`--peer-via` to a [`ClosedPort`], which refuses every connection). The config is
//! written by [`render_config`] (through `atoll_config::render`, where every cluster config is
//! rendered) and every region's extra command-line arguments are computed by
//! `region_args`, both called from `Launcher` only.
//!
//! **Link mesh.** With [`ClusterOptions::with_links`] the cluster also runs an in-process
//! [`LinkServer`] (`atoll link`) with one link per ordered pair, named `a->b` (listening on a
//! free `127.0.0.1` port, forwarding to `b`'s peer address, with the given one-way delay in each
//! direction), and every pair routed [`Route::Direct`] becomes a `Via` route through its link:
//! every byte `a` sends to `b` crosses link `a->b`. A TCP connection carries both ways, so link
//! `a->b` carries `a`'s requests to `b` *forward* and `b`'s answers to them *reverse*, while
//! `b`'s own requests to `a` (its heartbeats, its subscriptions) cross link `b->a`. Faults follow
//! from that ([`Cluster::partition`], [`Cluster::partition_oneway`], [`Cluster::heal`],
//! [`Cluster::heal_all`]); each has a lease of [`FAULT_LEASE`] and every fault ends when the
//! cluster is dropped. A restarted region listens on its old address again, so its links (and
//! their faults) carry on across [`Cluster::kill9`] and [`Cluster::restart`]. The mesh runs on a
//! small tokio runtime of its own, so it keeps moving bytes while a test blocks its own runtime
//! in a lifecycle call.
//!
//! **Arbiter.** With [`ClusterOptions::arbiter`] the config also has `[cluster.arbiter]` (name
//! [`ARBITER`], a peer address on a free `127.0.0.1` port), `atoll certs init` issues its
//! certificate with the regions', and the cluster runs `atoll arbiter` as a managed process (a
//! [`Service`], killed on drop, its log printed when the test panics), which lets a cluster have
//! two regions. The arbiter is a node of the link mesh like a region: links `us-east-1->arbiter`,
//! `arbiter->us-east-1`, ... carry every region-to-arbiter connection (the regions and the
//! arbiter reach each other through them with `--peer-via`), so [`Cluster::partition`] and its
//! kin accept [`ARBITER`] as either end. [`Cluster::kill_arbiter`] and
//! [`Cluster::restart_arbiter`] stop and start it on its data directory and address.
//!
//! [`RegionProcess`] has a fixed command line, so a region with extra arguments is started
//! through a small generated `sh` wrapper that appends them (the process is still `atoll`: the
//! wrapper `exec`s it).
//!
//! Lifecycle calls ([`Cluster::start`], [`Cluster::kill9`], [`Cluster::restart`], ...) and fault
//! calls block (briefly); observation calls ([`Cluster::status`], [`Cluster::wait_status`],
//! [`Cluster::wait_converged`]) are async. Everything is cleaned up on drop: every region
//! process is killed (each prints its log tail if the test is panicking), the link mesh stops
//! (printing its links, faults and counters if the test is panicking) and the directory is kept
//! for inspection when the test panicked.

use crate::client::Client;
use crate::process::{RegionProcess, RegionSpec, Service};
use crate::{TestDir, test_dir};
use anyhow::{Context, Result, anyhow, bail, ensure};
use atoll_config::render::{
    ArbiterToml, CLOUD_REGIONS, ClusterToml, KeyspaceToml, RegionToml, Tls,
};
use atoll_config::{Model, Policy};
use atoll_link::{Direction, FaultKind, LinkServer, LinkSpec, PartitionMode};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// The regions of a cluster, in order, with the approximate coordinates of their cloud regions.
/// A cluster of `n` regions uses the first `n`.
pub const REGIONS: [(&str, f64, f64); 5] = [
    CLOUD_REGIONS[0], // us-east-1
    CLOUD_REGIONS[1], // eu-west-1
    CLOUD_REGIONS[2], // ap-southeast-1
    CLOUD_REGIONS[6], // sa-east-1
    CLOUD_REGIONS[5], // ap-northeast-1
];

/// The keyspaces of every cluster: name and policy.
pub const KEYSPACES: [(&str, Policy); 4] = [
    ("sessions", Policy::Lww),
    ("carts", Policy::Mvr),
    ("ratelimits", Policy::Counter),
    ("flags", Policy::Set),
];

/// The arbiter's name (`[cluster.arbiter] name`) in a cluster with [`ClusterOptions::arbiter`]; a
/// node of the link mesh like a region.
pub const ARBITER: &str = "arbiter";

/// Heartbeat interval of test clusters (the product default is 1000 ms): a peer is unreachable
/// after three intervals, so failures show within a second.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 200;

/// Attempts at starting the whole cluster (a free port picked for the config can be taken by
/// someone else before its region binds it; every attempt picks new ports).
const START_ATTEMPTS: u32 = 5;
/// How long [`Cluster::restart`] keeps retrying when the region's port is briefly taken.
const RESTART_PORT_RETRY: Duration = Duration::from_secs(10);
/// How often cluster-wide conditions are polled.
const POLL: Duration = Duration::from_millis(25);
/// Per-request timeout of the status polls (a hung region must not stall a wait).
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Lease of every fault the cluster adds to its link mesh: longer than any test, and the faults
/// are cleared when the cluster is dropped anyway.
pub const FAULT_LEASE: Duration = Duration::from_secs(600);
/// Worker threads of the link mesh's own runtime.
const MESH_THREADS: usize = 2;

/// How region `from` reaches peer `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// At the peer's configured address (the default).
    Direct,
    /// At another address (`--peer-via TO=ADDR`), e.g. a proxy the test runs.
    Via(SocketAddr),
    /// Not at all: `--peer-via TO=<a port that refuses every connection>`. The peer still
    /// reaches `from` unless the route back is cut too (see [`ClusterOptions::cut`]).
    Cut,
}

/// How to build a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Names the test directory (`atoll-e2e-<name>-...`).
    pub name: String,
    /// `[replication] heartbeat_interval_ms`.
    pub heartbeat_interval_ms: u64,
    /// `[replication] max_lag_secs` (the product default when `None`).
    pub max_lag_secs: Option<u64>,
    /// `[replication] oplog_retention` (the product default when `None`).
    pub oplog_retention: Option<String>,
    /// `[cluster] max_clock_offset_ms` (the product default when `None`).
    pub max_clock_offset_ms: Option<u64>,
    /// `(from, to)`: how region `from` reaches peer `to`; pairs not listed are [`Route::Direct`].
    pub routes: BTreeMap<(String, String), Route>,
    /// More arguments for one region's `atoll region` command line.
    pub extra_args: BTreeMap<String, Vec<String>>,
    /// Environment variables for every region (e.g. `ATOLL_LOG`).
    pub env: Vec<(String, String)>,
    /// Run a link mesh with this one-way delay (ms) on every link; `None`: no mesh.
    pub link_delay_ms: Option<f64>,
    /// `[cluster.tls] insecure = true` instead of mutual TLS between regions.
    pub insecure: bool,
    /// `[cluster] model`.
    pub model: Model,
    /// More lines for a keyspace's `[[keyspaces]]` table (e.g. `on_minority = "read-only"`).
    pub keyspace_lines: BTreeMap<String, Vec<String>>,
    /// Keyspaces beyond [`KEYSPACES`] ([`ClusterOptions::keyspace`]).
    pub keyspaces: Vec<KeyspaceToml>,
    /// Appended to the config as written (e.g. a `[fencing]` section).
    pub extra_config: String,
    /// Run an arbiter ([`ClusterOptions::arbiter`]).
    pub arbiter: bool,
    /// With [`ClusterOptions::with_links`]: also serve the link mesh's control HTTP API on a
    /// loopback port ([`Cluster::link_control_url`]), for tools that drive faults over HTTP
    /// (`atoll drill`).
    pub link_control: bool,
    /// Regions declared `voter = false` (replicas, `docs/design/adding-regions.md`) from the
    /// start ([`ClusterOptions::replica`]).
    pub replicas: BTreeSet<String>,
}

impl ClusterOptions {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            max_lag_secs: None,
            oplog_retention: None,
            max_clock_offset_ms: None,
            routes: BTreeMap::new(),
            extra_args: BTreeMap::new(),
            env: Vec::new(),
            link_delay_ms: None,
            insecure: false,
            model: Model::ActiveActive,
            keyspace_lines: BTreeMap::new(),
            keyspaces: Vec::new(),
            extra_config: String::new(),
            arbiter: false,
            link_control: false,
            replicas: BTreeSet::new(),
        }
    }

    /// Declares region `name` with `voter = false` in the config the cluster starts with: a
    /// replica, in no consensus group (the cluster must keep at least one voter).
    pub fn replica(mut self, name: &str) -> Self {
        self.replicas.insert(name.to_string());
        self
    }

    /// Adds an arbiter: `[cluster.arbiter]` (name [`ARBITER`]) in the config, its certificate
    /// from `atoll certs init`, and an `atoll arbiter` process the cluster starts after the
    /// regions and stops on drop. With [`ClusterOptions::with_links`] every region-to-arbiter
    /// connection crosses the link mesh too. A cluster with an arbiter may have two regions.
    pub fn arbiter(mut self) -> Self {
        self.arbiter = true;
        self
    }

    /// With [`ClusterOptions::with_links`]: also serves the link mesh's control HTTP API
    /// ([`Cluster::link_control_url`]).
    pub fn link_control(mut self) -> Self {
        self.link_control = true;
        self
    }

    /// `[cluster] model` (active-active unless set).
    pub fn model(mut self, model: Model) -> Self {
        self.model = model;
        self
    }

    /// Adds `line` to keyspace `keyspace`'s table.
    pub fn keyspace_line(mut self, keyspace: &str, line: &str) -> Self {
        self.keyspace_lines
            .entry(keyspace.to_string())
            .or_default()
            .push(line.to_string());
        self
    }

    /// Declares one more keyspace (after [`KEYSPACES`]).
    pub fn keyspace(mut self, keyspace: KeyspaceToml) -> Self {
        self.keyspaces.push(keyspace);
        self
    }

    /// Appends `text` to the config (a section of its own, e.g. `[fencing]`).
    pub fn extra_config(mut self, text: &str) -> Self {
        self.extra_config.push_str(text);
        self.extra_config.push('\n');
        self
    }

    /// Regions talk plain HTTP (`[cluster.tls] insecure = true`) instead of mutual TLS.
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// Runs every region-to-region connection through a link mesh: one in-process `atoll link`
    /// link per ordered pair `a->b`, each delaying both of its directions by `delay_ms` (0 to
    /// 60000; a few ms suits tests), which the fault calls ([`Cluster::partition`], ...) act on.
    /// Pairs given a route other than [`Route::Direct`] keep it (and have no link in use).
    pub fn with_links(mut self, delay_ms: f64) -> Self {
        self.link_delay_ms = Some(delay_ms);
        self
    }

    pub fn heartbeat_interval_ms(mut self, ms: u64) -> Self {
        self.heartbeat_interval_ms = ms;
        self
    }

    /// `[replication] oplog_retention`, e.g. `"0s"`.
    pub fn oplog_retention(mut self, retention: &str) -> Self {
        self.oplog_retention = Some(retention.to_string());
        self
    }

    pub fn max_lag_secs(mut self, secs: u64) -> Self {
        self.max_lag_secs = Some(secs);
        self
    }

    pub fn max_clock_offset_ms(mut self, ms: u64) -> Self {
        self.max_clock_offset_ms = Some(ms);
        self
    }

    /// Sets how `from` reaches `to` (one direction only).
    pub fn route(mut self, from: &str, to: &str, route: Route) -> Self {
        self.routes
            .insert((from.to_string(), to.to_string()), route);
        self
    }

    /// `a` and `b` cannot reach each other directly (both directions cut); they still reach
    /// every other region, which can relay between them.
    pub fn cut(self, a: &str, b: &str) -> Self {
        self.route(a, b, Route::Cut).route(b, a, Route::Cut)
    }

    /// Appends `arg` to `region`'s command line.
    pub fn extra_arg(mut self, region: &str, arg: &str) -> Self {
        self.extra_args
            .entry(region.to_string())
            .or_default()
            .push(arg.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The nodes of the cluster other than regions: the arbiter, if any.
    fn extra_nodes(&self) -> Option<&'static str> {
        self.arbiter.then_some(ARBITER)
    }

    fn route_of(&self, from: &str, to: &str) -> &Route {
        self.routes
            .get(&(from.to_string(), to.to_string()))
            .unwrap_or(&Route::Direct)
    }
}

/// One region of the cluster and where the config says its listeners are.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionLayout {
    pub name: String,
    /// The client API.
    pub api: SocketAddr,
    /// The peer listener (replication; mutual TLS unless the cluster is insecure).
    pub peer: SocketAddr,
    pub lat: f64,
    pub lon: f64,
}

/// Where the config says the arbiter listens.
#[derive(Clone, Debug, PartialEq)]
pub struct ArbiterLayout {
    /// `[cluster.arbiter] name` ([`ARBITER`]).
    pub name: String,
    /// `[cluster.arbiter] peer`: its (only) listener, the control routes (mutual TLS unless the
    /// cluster is insecure).
    pub peer: SocketAddr,
}

/// Where [`Cluster`] has `atoll certs init` write the certificates, in the test directory.
pub const CERTS_DIR: &str = "certs";

/// The cluster config for these regions (every region reads the same file).
pub fn render_config(cluster: &str, regions: &[RegionLayout], opts: &ClusterOptions) -> String {
    render_cluster_config(cluster, regions, None, opts)
}

/// The cluster config for these regions and, if given, `[cluster.arbiter]`.
pub fn render_cluster_config(
    cluster: &str,
    regions: &[RegionLayout],
    arbiter: Option<&ArbiterLayout>,
    opts: &ClusterOptions,
) -> String {
    cluster_toml(cluster, regions, arbiter, opts).render()
}

/// The cluster config of [`render_cluster_config`], before rendering.
pub fn cluster_toml(
    cluster: &str,
    regions: &[RegionLayout],
    arbiter: Option<&ArbiterLayout>,
    opts: &ClusterOptions,
) -> ClusterToml {
    let mut toml = ClusterToml::new(cluster)
        .header("Written by atoll-testkit's Cluster.")
        .model(opts.model)
        .tls(if opts.insecure {
            Tls::Insecure
        } else {
            Tls::Certs(CERTS_DIR.to_string())
        })
        .heartbeat_interval_ms(opts.heartbeat_interval_ms);
    toml.max_clock_offset_ms = opts.max_clock_offset_ms;
    toml.max_lag_secs = opts.max_lag_secs;
    toml.oplog_retention = opts.oplog_retention.clone();
    toml.arbiter = arbiter.map(|a| ArbiterToml {
        name: a.name.clone(),
        peer: a.peer,
        location: None,
    });
    for r in regions {
        // A peer address equal to the api address is left out: the replication routes then
        // share the client listener (insecure clusters).
        toml = toml.region(
            RegionToml::new(&r.name, r.api)
                .peer(r.peer)
                .location(r.lat, r.lon)
                .voter(!opts.replicas.contains(&r.name)),
        );
    }
    for (name, policy) in KEYSPACES {
        let mut keyspace = KeyspaceToml::new(name, policy);
        keyspace.lines = opts.keyspace_lines.get(name).cloned().unwrap_or_default();
        toml = toml.keyspace(keyspace);
    }
    for keyspace in &opts.keyspaces {
        toml = toml.keyspace(keyspace.clone());
    }
    if !opts.extra_config.is_empty() {
        toml = toml.section(&opts.extra_config);
    }
    toml
}

/// `n` distinct free ports on 127.0.0.1, found by binding port 0 and letting go (another process
/// can take one before it is used: callers retry).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot bind 127.0.0.1:0")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// The first of `n` consecutive ports on 127.0.0.1 that are all free (each bound, then let go;
/// another process can take one before it is used: callers retry). For what takes a base port
/// and counts up from it (`atoll demo --port-base`, `atoll link serve --listen-base`).
pub fn free_port_range(n: u16) -> Result<u16> {
    ensure!(n > 0, "an empty port range");
    for _ in 0..100 {
        let first =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0")?;
        let base = first.local_addr()?.port();
        if base.checked_add(n - 1).is_none() {
            continue;
        }
        let rest: std::io::Result<Vec<TcpListener>> = (1..n)
            .map(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)))
            .collect();
        if rest.is_ok() {
            return Ok(base);
        }
    }
    bail!("found no {n} consecutive free ports on 127.0.0.1")
}

/// A port on 127.0.0.1 free for both TCP and UDP (bound both ways, then let go), as a DNS
/// server needs.
pub fn free_udp_tcp_port() -> Result<u16> {
    for _ in 0..100 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("found no port on 127.0.0.1 free for both TCP and UDP")
}

/// A 127.0.0.1 port that is bound but not listening, for as long as this value lives: every
/// connection to it is refused at once, and no one else can bind it meanwhile. A peer reached
/// "via" it is unreachable.
#[derive(Debug)]
pub struct ClosedPort {
    fd: i32,
    addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> Result<ClosedPort> {
        // SAFETY: plain socket(2)/bind(2)/getsockname(2) calls on a descriptor this function
        // owns, with a zeroed sockaddr_in of the right size; the descriptor is closed on every
        // error path and otherwise owned by the returned value.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0 {
                bail!("socket(): {}", std::io::Error::last_os_error());
            }
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = 0;
            sa.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let sp = (&raw mut sa).cast::<libc::sockaddr>();
            if libc::bind(fd, sp, len) != 0 || libc::getsockname(fd, sp, &mut len) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("cannot reserve a closed port on 127.0.0.1: {e}");
            }
            let port = u16::from_be(sa.sin_port);
            Ok(ClosedPort {
                fd,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            })
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: `fd` is owned by this value and closed exactly once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

struct Member {
    layout: RegionLayout,
    process: RegionProcess,
}

/// The cluster's `atoll arbiter` process: its command line is fixed at start, so it restarts on
/// the same data directory and address.
struct ArbiterProcess {
    layout: ArbiterLayout,
    bin: PathBuf,
    /// Everything after the binary: `arbiter --config .. --data-dir .. --listen .. [--peer-via ..]`.
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    /// The running process (`None` while stopped).
    service: Option<Service>,
    starts: u32,
}

impl ArbiterProcess {
    /// Starts the process and waits for its `listening on` line; on failure it is gone.
    fn start(&mut self) -> Result<()> {
        ensure!(
            !self.is_running(),
            "the arbiter is still running; stop it before starting it again"
        );
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut service = Service::start(ARBITER, cmd, &self.log_path)?;
        service
            .wait_line(crate::process::START_TIMEOUT, |l| {
                l.contains(" listening on ")
            })
            .with_context(|| format!("arbiter (start #{})", self.starts + 1))?;
        self.starts += 1;
        self.service = Some(service);
        Ok(())
    }

    fn is_running(&mut self) -> bool {
        self.service.as_mut().is_some_and(Service::is_running)
    }
}

/// Everything needed to write the config and start the regions. Config generation and every
/// region's command line are decided here and nowhere else.
struct Launcher<'a> {
    bin: &'a Path,
    config_path: &'a Path,
    dir: &'a Path,
    opts: &'a ClusterOptions,
    closed: &'a ClosedPort,
    /// The link mesh's listen address per ordered pair (empty without a mesh).
    links: &'a LinkAddrs,
    /// Where the arbiter listens, with [`ClusterOptions::arbiter`].
    arbiter: Option<&'a ArbiterLayout>,
}

impl Launcher<'_> {
    /// Writes the config and starts every region, then the arbiter (if any); on failure the
    /// processes started so far are killed (dropped) before this returns.
    fn launch_all(&self, layout: &[RegionLayout]) -> Result<(Vec<Member>, Option<ArbiterProcess>)> {
        let text = render_cluster_config(
            &format!("atoll-e2e-{}", sanitize(&self.opts.name)),
            layout,
            self.arbiter,
            self.opts,
        );
        std::fs::write(self.config_path, text)
            .with_context(|| format!("cannot write {}", self.config_path.display()))?;
        if !self.opts.insecure {
            self.certs_init()?;
        }
        let mut members = Vec::new();
        for r in layout {
            let process = RegionProcess::start_spec(self.spec_for(r, layout)?)?;
            members.push(Member {
                layout: r.clone(),
                process,
            });
        }
        let arbiter = match self.arbiter {
            Some(a) => {
                let mut p = self.arbiter_process(a, layout)?;
                p.start()?;
                Some(p)
            }
            None => None,
        };
        Ok((members, arbiter))
    }

    /// The arbiter's process, not started: `atoll arbiter` on its own data directory, listening
    /// on its configured address, reaching each region as its route says.
    fn arbiter_process(
        &self,
        a: &ArbiterLayout,
        layout: &[RegionLayout],
    ) -> Result<ArbiterProcess> {
        let data_dir = self.dir.join(&a.name);
        let path = |p: &Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
        };
        let mut args = vec![
            "arbiter".to_string(),
            "--config".to_string(),
            path(self.config_path)?,
            "--data-dir".to_string(),
            path(&data_dir)?,
            "--listen".to_string(),
            a.peer.to_string(),
        ];
        args.extend(arbiter_args(self.opts, self.closed, self.links, layout));
        Ok(ArbiterProcess {
            layout: a.clone(),
            bin: self.bin.to_path_buf(),
            args,
            env: self.opts.env.clone(),
            log_path: self.dir.join(format!("{}.log", a.name)),
            service: None,
            starts: 0,
        })
    }

    /// Makes the cluster's certificates with `atoll certs init`, as an operator would, once
    /// (they name the regions, not their ports, so a retry on new ports keeps them).
    fn certs_init(&self) -> Result<()> {
        let out = self.dir.join(CERTS_DIR);
        if out.join("ca.pem").exists() {
            return Ok(());
        }
        let mut cmd = std::process::Command::new(self.bin);
        cmd.arg("certs")
            .arg("init")
            .arg("--config")
            .arg(self.config_path)
            .arg("--out")
            .arg(&out)
            .arg("--days")
            .arg("2");
        let o = crate::process::run_with_timeout(cmd, Duration::from_secs(30))?;
        ensure!(
            o.status.success(),
            "`atoll certs init` failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
    }

    fn spec_for(&self, r: &RegionLayout, layout: &[RegionLayout]) -> Result<RegionSpec> {
        let args = region_args(self.opts, self.closed, self.links, &r.name, layout);
        // RegionProcess runs `<bin> region --config .. --region .. --data-dir .. --listen ..`;
        // extra arguments go through a wrapper script that appends them.
        let bin = if args.is_empty() {
            self.bin.to_path_buf()
        } else {
            let script = self.dir.join(format!("{}.sh", r.name));
            write_wrapper(&script, self.bin, &args)?;
            script
        };
        let mut spec =
            RegionSpec::new(bin, self.config_path, &r.name, self.dir.join(&r.name)).listen(r.api);
        for (k, v) in &self.opts.env {
            spec = spec.env(k, v);
        }
        Ok(spec)
    }
}

/// Where the link mesh listens for each ordered pair `(from, to)`.
type LinkAddrs = BTreeMap<(String, String), SocketAddr>;

/// How `from` reaches `to` in the end: its route, where a direct route goes through the pair's
/// link when there is a mesh.
fn effective_route(opts: &ClusterOptions, links: &LinkAddrs, from: &str, to: &str) -> Route {
    match opts.route_of(from, to) {
        Route::Direct => links
            .get(&(from.to_string(), to.to_string()))
            .map_or(Route::Direct, |addr| Route::Via(*addr)),
        other => other.clone(),
    }
}

/// Everything beyond the standard command line that `region` is started with: `--peer-via` for
/// every route that is not direct (a link of the mesh, or a route given in the options), then
/// [`ClusterOptions::extra_args`].
fn region_args(
    opts: &ClusterOptions,
    closed: &ClosedPort,
    links: &LinkAddrs,
    region: &str,
    layout: &[RegionLayout],
) -> Vec<String> {
    let mut args = Vec::new();
    let peers = layout
        .iter()
        .map(|p| p.name.as_str())
        .chain(opts.extra_nodes())
        .filter(|p| *p != region);
    for peer in peers {
        let via = match effective_route(opts, links, region, peer) {
            Route::Direct => continue,
            Route::Via(addr) => addr,
            Route::Cut => closed.addr(),
        };
        args.push("--peer-via".to_string());
        args.push(format!("{peer}={via}"));
    }
    args.extend(opts.extra_args.get(region).into_iter().flatten().cloned());
    args
}

/// The arbiter's `--peer-via` arguments: one for every region it does not reach directly (a
/// link of the mesh, or a route given in the options).
fn arbiter_args(
    opts: &ClusterOptions,
    closed: &ClosedPort,
    links: &LinkAddrs,
    layout: &[RegionLayout],
) -> Vec<String> {
    let mut args = Vec::new();
    for r in layout {
        let via = match effective_route(opts, links, ARBITER, &r.name) {
            Route::Direct => continue,
            Route::Via(addr) => addr,
            Route::Cut => closed.addr(),
        };
        args.push("--peer-via".to_string());
        args.push(format!("{}={via}", r.name));
    }
    args
}

/// The name of the link that carries `from`'s connections to `to` (`from->to`).
pub fn link_name(from: &str, to: &str) -> String {
    format!("{from}->{to}")
}

/// The in-process link mesh of a cluster: a [`LinkServer`] with a link per ordered pair of
/// regions, on a runtime of its own. Dropping it clears every fault and stops the server.
struct LinkMesh {
    server: Option<LinkServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl LinkMesh {
    /// Starts one link `a->b` per ordered pair of `layout`, listening on a free `127.0.0.1`
    /// port and forwarding to `b`'s peer address, `delay_ms` each way.
    fn start(layout: &[RegionLayout], delay_ms: f64, control: bool) -> Result<LinkMesh> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(MESH_THREADS)
            .thread_name("atoll-testkit-links")
            .enable_all()
            .build()
            .context("cannot build the link mesh's runtime")?;
        let specs: Vec<LinkSpec> = layout
            .iter()
            .flat_map(|a| {
                layout.iter().filter(|b| b.name != a.name).map(|b| {
                    LinkSpec::new(
                        link_name(&a.name, &b.name),
                        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                        b.peer,
                    )
                    .with_delay(delay_ms)
                })
            })
            .collect();
        // `block_on` panics on a thread that is already inside a runtime (tests call this from
        // async code), so the server is started from a thread of its own.
        let control = control.then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let server = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(LinkServer::start(specs, control)))
                .join()
        })
        .map_err(|_| anyhow!("starting the link mesh panicked"))?
        .context("the link mesh did not start")?;
        Ok(LinkMesh {
            server: Some(server),
            runtime: Some(runtime),
        })
    }

    fn server(&self) -> &LinkServer {
        self.server
            .as_ref()
            .expect("the link server lives as long as the mesh")
    }

    /// Every link's listen address, by ordered pair.
    fn addrs(&self) -> LinkAddrs {
        self.server()
            .specs()
            .into_iter()
            .filter_map(|s| {
                let (from, to) = s.name.split_once("->")?;
                Some(((from.to_string(), to.to_string()), s.listen))
            })
            .collect()
    }

    /// Adds `kind` to link `from->to` for [`FAULT_LEASE`].
    fn add(&self, from: &str, to: &str, kind: FaultKind) -> Result<atoll_link::FaultId> {
        let link = link_name(from, to);
        self.server()
            .add_fault(&link, kind, FAULT_LEASE)
            .with_context(|| format!("cannot add a {} fault to link {link}", kind.describe()))
    }

    /// Adds the faults `(from, to, kind)` all or nothing: if one fails, those added are removed.
    fn add_all(&self, faults: &[(&str, &str, FaultKind)]) -> Result<()> {
        let mut added = Vec::new();
        for &(from, to, kind) in faults {
            match self.add(from, to, kind) {
                Ok(id) => added.push((link_name(from, to), id)),
                Err(e) => {
                    for (link, id) in added {
                        let _ = self.server().remove_fault(&link, id);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// See [`Cluster::partition`].
    fn partition(&self, a: &str, b: &str) -> Result<()> {
        let stall = FaultKind::Partition {
            mode: PartitionMode::Stall,
        };
        self.add_all(&[(a, b, stall), (b, a, stall)])
    }

    /// See [`Cluster::partition_oneway`].
    fn partition_oneway(&self, from: &str, to: &str) -> Result<()> {
        let hold = |direction| FaultKind::OneWay { direction };
        self.add_all(&[
            (from, to, hold(Direction::Forward)),
            (to, from, hold(Direction::Reverse)),
        ])
    }

    /// See [`Cluster::hold_answers`].
    fn hold_answers(&self, requester: &str, server: &str) -> Result<()> {
        self.add_all(&[(
            requester,
            server,
            FaultKind::OneWay {
                direction: Direction::Reverse,
            },
        )])
    }

    /// See [`Cluster::heal`].
    fn heal(&self, a: &str, b: &str) -> Result<()> {
        for link in [link_name(a, b), link_name(b, a)] {
            self.server()
                .clear_faults(Some(&link))
                .with_context(|| format!("cannot clear the faults of link {link}"))?;
        }
        Ok(())
    }

    /// See [`Cluster::heal_all`].
    fn heal_all(&self) -> Result<()> {
        self.server()
            .clear_faults(None)
            .context("cannot clear the faults of the link mesh")?;
        Ok(())
    }

    /// Prints every link with its faults and counters to stderr.
    fn print(&self) {
        for l in self.server().status() {
            let faults: Vec<String> = l.faults.iter().map(|f| f.description.clone()).collect();
            let c = &l.counters;
            eprintln!(
                "link {} ({} -> {}): faults {faults:?}; bytes forward {} reverse {}, queued forward {} reverse {}; connections open {} total {} refused {} reset {}",
                l.name,
                l.listen,
                l.upstream,
                c.forward_bytes,
                c.reverse_bytes,
                c.forward_queued_bytes,
                c.reverse_queued_bytes,
                c.connections_open,
                c.connections_total,
                c.connections_refused,
                c.connections_reset
            );
        }
    }
}

impl Drop for LinkMesh {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.clear_faults(None);
            // Signals every task of the server to stop.
            drop(server);
        }
        if let Some(rt) = self.runtime.take() {
            // Does not block, so it is allowed inside an async test (dropping a runtime there
            // panics); the tasks are dropped as the runtime's threads wind down.
            rt.shutdown_background();
        }
    }
}

/// A running cluster of real region processes. Dropping it kills every region.
pub struct Cluster {
    // The processes go before the directory (which is kept if the test panicked): see Drop.
    members: Vec<Member>,
    /// The arbiter, with [`ClusterOptions::arbiter`]. Behind a lock so that a test can kill and
    /// restart it while it observes and loads the regions through a shared borrow.
    arbiter: Option<std::sync::Mutex<ArbiterProcess>>,
    /// The link mesh, with [`ClusterOptions::with_links`].
    mesh: Option<LinkMesh>,
    closed: ClosedPort,
    bin: PathBuf,
    config_path: PathBuf,
    opts: ClusterOptions,
    dir: TestDir,
}

impl Cluster {
    /// Writes the config for `n_regions` (3 to 5; 2 to 5 with [`ClusterOptions::arbiter`])
    /// regions on free loopback ports and starts every region (each waits until `/healthz`
    /// answers), then the arbiter if there is one (it waits for its `listening on` line).
    /// Retries with new ports when one was taken.
    pub fn start(
        bin: impl Into<PathBuf>,
        n_regions: usize,
        opts: ClusterOptions,
    ) -> Result<Cluster> {
        let min = if opts.arbiter { 2 } else { 3 };
        ensure!(
            (min..=REGIONS.len()).contains(&n_regions),
            "a cluster {} has {min} to {} regions, not {n_regions}",
            if opts.arbiter {
                "with an arbiter"
            } else {
                "without an arbiter"
            },
            REGIONS.len()
        );
        let bin = bin.into();
        let dir = test_dir(&opts.name)?;
        let closed = ClosedPort::new()?;
        let names: Vec<&str> = REGIONS[..n_regions]
            .iter()
            .map(|r| r.0)
            .chain(opts.extra_nodes())
            .collect();
        for ((from, to), _) in opts.routes.iter() {
            ensure!(
                names.contains(&from.as_str()) && names.contains(&to.as_str()) && from != to,
                "route {from} -> {to} names a node that is not in this cluster ({names:?})"
            );
        }
        let config_path = dir.join("atoll.toml");
        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            let ports = free_ports(2 * n_regions + usize::from(opts.arbiter))?;
            let layout: Vec<RegionLayout> = REGIONS[..n_regions]
                .iter()
                .zip(ports.chunks(2))
                .map(|(&(name, lat, lon), pair)| RegionLayout {
                    name: name.to_string(),
                    api: SocketAddr::from((Ipv4Addr::LOCALHOST, pair[0])),
                    // Mutual TLS needs a peer listener of its own; an insecure cluster serves
                    // the replication routes on the client listener, as a one-port setup does.
                    peer: SocketAddr::from((
                        Ipv4Addr::LOCALHOST,
                        if opts.insecure { pair[0] } else { pair[1] },
                    )),
                    lat,
                    lon,
                })
                .collect();
            let arbiter = opts.arbiter.then(|| ArbiterLayout {
                name: ARBITER.to_string(),
                peer: SocketAddr::from((Ipv4Addr::LOCALHOST, ports[2 * n_regions])),
            });
            // The links forward to the layout's addresses, so a new mesh goes with every attempt.
            // The arbiter is a node of the mesh like a region (the mesh needs only its name and
            // peer address).
            let nodes: Vec<RegionLayout> = layout
                .iter()
                .cloned()
                .chain(arbiter.iter().map(|a| RegionLayout {
                    name: a.name.clone(),
                    api: a.peer,
                    peer: a.peer,
                    lat: 0.0,
                    lon: 0.0,
                }))
                .collect();
            let mesh = match opts.link_delay_ms {
                Some(ms) => Some(LinkMesh::start(&nodes, ms, opts.link_control)?),
                None => None,
            };
            let links = mesh.as_ref().map(LinkMesh::addrs).unwrap_or_default();
            let launcher = Launcher {
                bin: &bin,
                config_path: &config_path,
                dir: dir.path(),
                opts: &opts,
                closed: &closed,
                links: &links,
                arbiter: arbiter.as_ref(),
            };
            match launcher.launch_all(&layout) {
                Ok((members, arbiter)) => {
                    return Ok(Cluster {
                        members,
                        arbiter: arbiter.map(std::sync::Mutex::new),
                        mesh,
                        closed,
                        bin,
                        config_path,
                        opts,
                        dir,
                    });
                }
                Err(e) if is_transient_start_error(&e) => {
                    eprintln!(
                        "atoll-testkit: cluster start attempt {attempt} failed (retrying with new ports): {e:#}"
                    );
                    last_err = Some(e);
                }
                Err(e) => return Err(e.context("the cluster did not start")),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!(
                "the cluster did not start in {START_ATTEMPTS} attempts"
            )))
    }

    /// Region names, in config order.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.layout.name.clone()).collect()
    }

    #[track_caller]
    fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.layout.name == name)
            .unwrap_or_else(|| panic!("no region {name} in this cluster ({:?})", self.names()))
    }

    #[track_caller]
    fn member_mut(&mut self, name: &str) -> &mut Member {
        let names = self.names();
        self.members
            .iter_mut()
            .find(|m| m.layout.name == name)
            .unwrap_or_else(|| panic!("no region {name} in this cluster ({names:?})"))
    }

    #[track_caller]
    pub fn region(&self, name: &str) -> &RegionProcess {
        &self.member(name).process
    }

    #[track_caller]
    pub fn region_mut(&mut self, name: &str) -> &mut RegionProcess {
        &mut self.member_mut(name).process
    }

    /// `http://ADDR` of the region (its configured address, which it always listens on).
    #[track_caller]
    pub fn endpoint(&self, name: &str) -> String {
        format!("http://{}", self.member(name).layout.api)
    }

    /// A fresh HTTP client of the region.
    #[track_caller]
    pub fn client(&self, name: &str) -> Client {
        Client::new(&self.endpoint(name))
    }

    /// The region's configured API address.
    #[track_caller]
    pub fn api_addr(&self, name: &str) -> SocketAddr {
        self.member(name).layout.api
    }

    /// The region's configured peer address (its peer listener: replication, mutual TLS unless
    /// the cluster is [`ClusterOptions::insecure`]).
    #[track_caller]
    pub fn peer_addr(&self, name: &str) -> SocketAddr {
        self.member(name).layout.peer
    }

    /// Where `atoll certs init` wrote the cluster's certificates (absent for an insecure
    /// cluster).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join(CERTS_DIR)
    }

    /// Whether the region has a process attached (not stopped by this harness). A region that
    /// crashed on its own still counts; talking to it then fails, which is what a test wants.
    #[track_caller]
    pub fn is_up(&self, name: &str) -> bool {
        self.member(name).process.pid().is_some()
    }

    /// Names of the regions that are up.
    pub fn live(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.process.pid().is_some())
            .map(|m| m.layout.name.clone())
            .collect()
    }

    /// SIGKILL: the region dies at once. Returns its exit status.
    pub fn kill9(&mut self, name: &str) -> Result<ExitStatus> {
        self.member_mut(name).process.kill9()
    }

    /// The same as [`Cluster::kill9`].
    pub fn kill(&mut self, name: &str) -> Result<ExitStatus> {
        self.kill9(name)
    }

    /// SIGTERM and wait for a graceful exit. Returns its exit status.
    pub fn terminate(&mut self, name: &str) -> Result<ExitStatus> {
        self.member_mut(name).process.terminate()
    }

    /// Starts a stopped region again, on its data directory, config and address. Retries for a
    /// while if its port is briefly held by someone else.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let started = Instant::now();
        let p = &mut self.member_mut(name).process;
        loop {
            match p.restart() {
                Ok(()) => return Ok(()),
                Err(e)
                    if is_transient_start_error(&e) && started.elapsed() < RESTART_PORT_RETRY =>
                {
                    eprintln!("atoll-testkit: restart of {name} failed, retrying: {e:#}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets an environment variable for `name`'s next restart (e.g. `ATOLL_CLOCK_OFFSET_MS`).
    pub fn set_env(&mut self, name: &str, key: &str, value: &str) {
        self.member_mut(name).process.set_env(key, value);
    }

    /// The cluster config every region reads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The test directory (config, data directories, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `atoll` binary the regions run.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The address that refuses every connection (what [`Route::Cut`] points peers at).
    pub fn closed_addr(&self) -> SocketAddr {
        self.closed.addr()
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// The link mesh's server (to inspect links and counters, or to add other faults), if the
    /// cluster was started [`ClusterOptions::with_links`].
    pub fn links(&self) -> Option<&LinkServer> {
        self.mesh.as_ref().map(LinkMesh::server)
    }

    /// The link mesh's control API (`http://127.0.0.1:PORT`), with
    /// [`ClusterOptions::link_control`].
    pub fn link_control_url(&self) -> Option<String> {
        self.links().and_then(|l| l.control_url())
    }

    /// Panics unless `name` is a region or the arbiter of this cluster.
    #[track_caller]
    fn node(&self, name: &str) {
        if self.has_arbiter() && name == ARBITER {
            return;
        }
        self.member(name);
    }

    #[track_caller]
    fn mesh_for(&self, a: &str, b: &str) -> Result<&LinkMesh> {
        self.node(a);
        self.node(b);
        ensure!(a != b, "{a} has no link to itself");
        self.mesh.as_ref().ok_or_else(|| {
            anyhow!("this cluster has no link mesh: start it with ClusterOptions::with_links")
        })
    }

    /// Cuts `a` and `b` apart both ways: nothing crosses links `a->b` and `b->a` in either
    /// direction until [`Cluster::heal`]. Bytes in flight are held, and new connections are
    /// accepted but stall unanswered (a `stall` partition: packets vanish); at the heal all of
    /// them flow on, so requests sent during the cut may still arrive late, as retransmissions
    /// would deliver them. Both still reach every other region.
    #[track_caller]
    pub fn partition(&self, a: &str, b: &str) -> Result<()> {
        self.mesh_for(a, b)?.partition(a, b)
    }

    /// A one-way partition: bytes sent by `from` no longer reach `to`, while `to`'s bytes still
    /// reach `from`. That holds back link `from->to` forward (`from`'s requests to `to`) and link
    /// `to->from` reverse (`from`'s answers to `to`'s requests); `to`'s requests (`to->from`
    /// forward) and its answers to `from` (`from->to` reverse) still flow. So `to` stops hearing
    /// `from`, and `from` still hears `to`, until [`Cluster::heal`].
    #[track_caller]
    pub fn partition_oneway(&self, from: &str, to: &str) -> Result<()> {
        self.mesh_for(from, to)?.partition_oneway(from, to)
    }

    /// Holds back the answers `server` sends to `requester`'s requests (link `requester->server`
    /// reverse), and nothing else: `requester`'s requests (its heartbeats, its subscription
    /// requests) still reach `server`, and `server`'s own requests (its heartbeats to
    /// `requester`) still arrive, but the streams `requester` subscribed to deliver nothing. So
    /// both hear each other while `requester` receives none of `server`'s data, until
    /// [`Cluster::heal`].
    #[track_caller]
    pub fn hold_answers(&self, requester: &str, server: &str) -> Result<()> {
        self.mesh_for(requester, server)?
            .hold_answers(requester, server)
    }

    /// Removes every fault of links `a->b` and `b->a`: bytes held flow again at once.
    #[track_caller]
    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        self.mesh_for(a, b)?.heal(a, b)
    }

    /// Removes every fault of every link.
    pub fn heal_all(&self) -> Result<()> {
        self.mesh.as_ref().map_or_else(
            || {
                Err(anyhow!(
                    "this cluster has no link mesh: start it with ClusterOptions::with_links"
                ))
            },
            LinkMesh::heal_all,
        )
    }

    /// `GET /v1/status` of the region.
    pub async fn status(&self, name: &str) -> Result<Value> {
        Client::with_timeout(&self.endpoint(name), STATUS_TIMEOUT)
            .status()
            .await
            .with_context(|| format!("GET /v1/status of {name}"))
    }

    /// Polls the region's status until `predicate` holds (returns that status) or `timeout`
    /// passes (the error shows the last status seen, or why none was).
    pub async fn wait_status(
        &self,
        name: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let started = Instant::now();
        let client = Client::with_timeout(&self.endpoint(name), STATUS_TIMEOUT);
        loop {
            let last = match client.status().await {
                Ok(v) if predicate(&v) => return Ok(v),
                Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
                Err(e) => format!("no status: {e:#}"),
            };
            if started.elapsed() >= timeout {
                bail!(
                    "timed out after {:?} waiting for the status of {name} to match; last:\n{last}",
                    started.elapsed()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every live region has applied the same vector and none lags any peer
    /// (`lag_ops` 0 everywhere, stopped peers included: a stopped region whose writes never left
    /// it keeps the cluster from converging until it is back). Returns the common applied vector.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<BTreeMap<String, u64>> {
        let started = Instant::now();
        let live = self.live();
        ensure!(!live.is_empty(), "no region is up");
        let clients: Vec<(String, Client)> = live
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    Client::with_timeout(&self.endpoint(n), STATUS_TIMEOUT),
                )
            })
            .collect();
        loop {
            let why = match converged(&clients).await {
                Ok(applied) => return Ok(applied),
                Err(e) => e,
            };
            if started.elapsed() >= timeout {
                bail!(
                    "regions {live:?} did not converge within {:?}: {why:#}",
                    started.elapsed()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the cluster has an arbiter ([`ClusterOptions::arbiter`]).
    pub fn has_arbiter(&self) -> bool {
        self.arbiter.is_some()
    }

    /// The arbiter's process, locked (a panic elsewhere while it was held leaves it usable).
    #[track_caller]
    fn arbiter_process(&self) -> std::sync::MutexGuard<'_, ArbiterProcess> {
        self.arbiter
            .as_ref()
            .expect("this cluster has no arbiter: start it with ClusterOptions::arbiter")
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The arbiter's configured address (`[cluster.arbiter] peer`, which it listens on).
    ///
    /// # Panics
    /// If the cluster has no arbiter (as every arbiter call does).
    #[track_caller]
    pub fn arbiter_addr(&self) -> SocketAddr {
        self.arbiter_process().layout.peer
    }

    /// The arbiter's data directory (its control log).
    #[track_caller]
    pub fn arbiter_data_dir(&self) -> PathBuf {
        let name = self.arbiter_process().layout.name.clone();
        self.dir.join(&name)
    }

    /// The arbiter's log so far (stderr, and stdout lines prefixed `[stdout] `).
    #[track_caller]
    pub fn arbiter_log(&self) -> String {
        let path = self.arbiter_process().log_path.clone();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Whether the arbiter process is running (reaps it if it exited).
    #[track_caller]
    pub fn arbiter_is_up(&self) -> bool {
        self.arbiter_process().is_running()
    }

    /// SIGKILL the arbiter: it dies at once. Returns its exit status. Takes `&self` (unlike the
    /// regions' lifecycle calls) so that a test can do it while a load runs; it blocks briefly.
    #[track_caller]
    pub fn kill_arbiter(&self) -> Result<ExitStatus> {
        let service = self.arbiter_process().service.take();
        let mut service = service.ok_or_else(|| anyhow!("the arbiter is not running"))?;
        service.kill9()
    }

    /// Starts a stopped arbiter again, on its data directory, config and address (waits for its
    /// `listening on` line). Retries for a while if its port is briefly held by someone else.
    #[track_caller]
    pub fn restart_arbiter(&self) -> Result<()> {
        let started = Instant::now();
        let mut a = self.arbiter_process();
        loop {
            match a.start() {
                Ok(()) => return Ok(()),
                Err(e)
                    if is_transient_start_error(&e) && started.elapsed() < RESTART_PORT_RETRY =>
                {
                    eprintln!("atoll-testkit: restart of the arbiter failed, retrying: {e:#}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Prints the last `lines` lines of every region's log (and the arbiter's) to stderr.
    pub fn print_logs(&self, lines: usize) {
        if self.has_arbiter() {
            let a = self.arbiter_process();
            eprintln!(
                "---- {} log ({}), last {lines} lines ----\n{}\n---- end of {} log ----",
                a.layout.name,
                a.log_path.display(),
                crate::process::tail_of(&a.log_path, lines),
                a.layout.name
            );
        }
        for m in &self.members {
            eprintln!(
                "---- region {} log ({}), last {lines} lines ----\n{}\n---- end of region {} log ----",
                m.layout.name,
                m.process.log_path().display(),
                m.process.log_tail(lines),
                m.layout.name
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "cluster {:?} failed: config {} (regions: {}{})",
                self.opts.name,
                self.config_path.display(),
                self.members
                    .iter()
                    .map(|m| format!(
                        "{} on {} (peer {})",
                        m.layout.name, m.layout.api, m.layout.peer
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                if self.has_arbiter() {
                    format!("; arbiter on {}", self.arbiter_addr())
                } else {
                    String::new()
                }
            );
        }
        // Kill every region and the arbiter before the directory goes; each prints its log tail
        // when panicking.
        self.members.clear();
        self.arbiter = None;
        if let Some(mesh) = self.mesh.take() {
            if std::thread::panicking() {
                mesh.print();
            }
            drop(mesh);
        }
    }
}

/// The applied vector of a status, without zero entries.
pub fn applied_vector(status: &Value) -> BTreeMap<String, u64> {
    status["replication"]["applied"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .unwrap_or_default()
}

/// The `peers[]` entry of `peer` in a status.
pub fn peer_status<'a>(status: &'a Value, peer: &str) -> Option<&'a Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["region"].as_str() == Some(peer))
}

/// `Ok(applied)` if every client's region has the same applied vector and no lag.
async fn converged(clients: &[(String, Client)]) -> Result<BTreeMap<String, u64>> {
    let mut first: Option<(&str, BTreeMap<String, u64>)> = None;
    for (name, c) in clients {
        let st = c
            .status()
            .await
            .with_context(|| format!("status of {name}"))?;
        let applied = applied_vector(&st);
        for p in st["peers"].as_array().into_iter().flatten() {
            let lag = p["lag_ops"].as_u64().unwrap_or(u64::MAX);
            ensure!(
                lag == 0,
                "{name} lags {} by {lag} ops (applied {}, known head {}; link {}, clock offset {} ms)",
                p["region"],
                p["applied_seq"],
                p["known_head_seq"],
                p["state"],
                p["clock_offset_ms"]
            );
        }
        match &first {
            None => first = Some((name, applied)),
            Some((n0, a0)) => ensure!(
                *a0 == applied,
                "{n0} applied {a0:?} but {name} applied {applied:?}"
            ),
        }
    }
    Ok(first.map(|(_, a)| a).unwrap_or_default())
}

/// A start failure worth retrying: the port was taken, or the wrapper script was momentarily
/// "busy" (written while another thread forked).
fn is_transient_start_error(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("cannot listen on")
        || text.contains("Address already in use")
        || text.contains("Text file busy")
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-');
    let s = if s.is_empty() { "cluster" } else { s };
    s.chars()
        .take(40)
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes an executable sh script that runs `bin` with its own arguments followed by `args`.
fn write_wrapper(path: &Path, bin: &Path, args: &[String]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = bin
        .to_str()
        .ok_or_else(|| anyhow!("binary path {} is not UTF-8", bin.display()))?;
    let mut text = format!("#!/bin/sh\nexec {} \"$@\"", sh_quote(bin));
    for a in args {
        text.push(' ');
        text.push_str(&sh_quote(a));
    }
    text.push('\n');
    // Write a new file and rename it into place, so an old script that is being executed (or a
    // descriptor inherited by a concurrent fork) never sees a partly written one.
    let tmp = path.with_extension("sh.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Vec<RegionLayout> {
        REGIONS[..3]
            .iter()
            .enumerate()
            .map(|(i, &(name, lat, lon))| RegionLayout {
                name: name.to_string(),
                api: SocketAddr::from((Ipv4Addr::LOCALHOST, 7100 + i as u16)),
                peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 7200 + i as u16)),
                lat,
                lon,
            })
            .collect()
    }

    #[test]
    fn config_lists_regions_keyspaces_and_replication() {
        let opts = ClusterOptions::new("x")
            .max_lag_secs(3)
            .max_clock_offset_ms(60_000);
        let text = render_config("atoll-e2e-x", &layout(), &opts);
        for needle in [
            "[cluster]\nname = \"atoll-e2e-x\"\nmodel = \"active-active\"\nmax_clock_offset_ms = 60000\n",
            "[cluster.tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{region}.pem\"\nkey = \"certs/{region}.key\"\n",
            "name = \"us-east-1\"\napi = \"127.0.0.1:7100\"\npeer = \"127.0.0.1:7200\"",
            "name = \"ap-southeast-1\"\napi = \"127.0.0.1:7102\"\npeer = \"127.0.0.1:7202\"",
            "name = \"carts\"\npolicy = \"mvr\"",
            "[replication]\nheartbeat_interval_ms = 200\nmax_lag_secs = 3\n",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        let text = render_config("c", &layout(), &ClusterOptions::new("c"));
        assert!(!text.contains("max_lag_secs") && !text.contains("max_clock_offset_ms"));
        let shared: Vec<RegionLayout> = layout()
            .into_iter()
            .map(|r| RegionLayout { peer: r.api, ..r })
            .collect();
        let text = render_config("c", &shared, &ClusterOptions::new("c").insecure());
        assert!(text.contains("[cluster.tls]\ninsecure = true\n"), "{text}");
        assert!(
            !text.contains("ca.pem") && !text.contains("peer ="),
            "{text}"
        );
    }

    #[test]
    fn config_has_the_arbiter_when_given() {
        let arbiter = ArbiterLayout {
            name: ARBITER.to_string(),
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 7300)),
        };
        let opts = ClusterOptions::new("a").arbiter();
        let text = render_cluster_config("c", &layout()[..2], Some(&arbiter), &opts);
        assert!(
            text.contains("[cluster.arbiter]\nname = \"arbiter\"\npeer = \"127.0.0.1:7300\"\n"),
            "{text}"
        );
        // The product's own parser takes it: two regions and the arbiter are three voters.
        let cfg = atoll_config::Config::parse(&text, "atoll.toml").unwrap();
        let a = cfg.cluster.arbiter.as_ref().unwrap();
        assert_eq!((a.name.as_str(), a.peer), (ARBITER, arbiter.peer));
        assert_eq!(cfg.control_voters(), 3);
        assert!(!render_config("c", &layout(), &opts).contains("arbiter"));
    }

    #[test]
    fn the_arbiter_is_reached_through_its_links() {
        let opts = ClusterOptions::new("arb").arbiter().with_links(5.0).route(
            "eu-west-1",
            ARBITER,
            Route::Cut,
        );
        let closed = ClosedPort::new().unwrap();
        let regions = &layout()[..2];
        let mut links = LinkAddrs::new();
        let mut port = 9000;
        for a in ["us-east-1", "eu-west-1", ARBITER] {
            for b in ["us-east-1", "eu-west-1", ARBITER] {
                if a != b {
                    links.insert(
                        (a.to_string(), b.to_string()),
                        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    );
                    port += 1;
                }
            }
        }
        let addr = |a: &str, b: &str| links[&(a.to_string(), b.to_string())];
        assert_eq!(
            region_args(&opts, &closed, &links, "us-east-1", regions),
            vec![
                "--peer-via".to_string(),
                format!("eu-west-1={}", addr("us-east-1", "eu-west-1")),
                "--peer-via".to_string(),
                format!("arbiter={}", addr("us-east-1", ARBITER)),
            ]
        );
        assert_eq!(
            region_args(&opts, &closed, &links, "eu-west-1", regions)[3],
            format!("arbiter={}", closed.addr())
        );
        assert_eq!(
            arbiter_args(&opts, &closed, &links, regions),
            vec![
                "--peer-via".to_string(),
                format!("us-east-1={}", addr(ARBITER, "us-east-1")),
                "--peer-via".to_string(),
                format!("eu-west-1={}", addr(ARBITER, "eu-west-1")),
            ]
        );
        // Without an arbiter nothing names one.
        let plain = ClusterOptions::new("plain").with_links(5.0);
        assert!(
            !region_args(&plain, &closed, &links, "us-east-1", regions)
                .iter()
                .any(|a| a.contains(ARBITER))
        );
    }

    #[test]
    fn closed_port_refuses_connections() {
        let p = ClosedPort::new().unwrap();
        let err =
            std::net::TcpStream::connect_timeout(&p.addr(), Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        // Nobody else can listen there while it is held.
        assert!(TcpListener::bind(p.addr()).is_err());
    }

    #[test]
    fn routes_become_peer_via_arguments() {
        let opts = ClusterOptions::new("routes")
            .cut("us-east-1", "ap-southeast-1")
            .route(
                "eu-west-1",
                "us-east-1",
                Route::Via("127.0.0.1:9".parse().unwrap()),
            )
            .extra_arg("eu-west-1", "--drain-grace=0");
        assert_eq!(opts.route_of("us-east-1", "eu-west-1"), &Route::Direct);
        assert_eq!(opts.route_of("ap-southeast-1", "us-east-1"), &Route::Cut);
        let closed = ClosedPort::new().unwrap();
        let none = LinkAddrs::new();
        let args = region_args(&opts, &closed, &none, "us-east-1", &layout());
        assert_eq!(
            args,
            vec![
                "--peer-via".to_string(),
                format!("ap-southeast-1={}", closed.addr())
            ]
        );
        let args = region_args(&opts, &closed, &none, "eu-west-1", &layout());
        assert_eq!(
            args,
            vec!["--peer-via", "us-east-1=127.0.0.1:9", "--drain-grace=0"]
        );
    }

    #[test]
    fn links_replace_direct_routes_only() {
        let opts = ClusterOptions::new("links")
            .with_links(5.0)
            .cut("us-east-1", "ap-southeast-1");
        let closed = ClosedPort::new().unwrap();
        let mut links = LinkAddrs::new();
        for (i, (from, to)) in [
            ("us-east-1", "eu-west-1"),
            ("us-east-1", "ap-southeast-1"),
            ("eu-west-1", "us-east-1"),
        ]
        .into_iter()
        .enumerate()
        {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9000 + i as u16));
            links.insert((from.to_string(), to.to_string()), addr);
        }
        assert_eq!(
            region_args(&opts, &closed, &links, "us-east-1", &layout()),
            vec![
                "--peer-via".to_string(),
                "eu-west-1=127.0.0.1:9000".to_string(),
                "--peer-via".to_string(),
                format!("ap-southeast-1={}", closed.addr()),
            ]
        );
        assert_eq!(
            effective_route(&opts, &links, "eu-west-1", "ap-southeast-1"),
            Route::Direct
        );
    }

    /// A connection through the mesh: what `from` writes and what `to` accepted.
    fn connect(
        mesh: &LinkMesh,
        from: &str,
        to: &str,
        to_listener: &TcpListener,
    ) -> (std::net::TcpStream, std::net::TcpStream) {
        let addr = mesh.addrs()[&(from.to_string(), to.to_string())];
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = to_listener.accept().unwrap();
        (client, server)
    }

    /// Whether `byte` arrives on `s` within `within` (false: nothing arrived).
    fn receives(s: &mut std::net::TcpStream, byte: u8, within: Duration) -> bool {
        use std::io::Read;
        s.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 1];
        match s.read(&mut buf) {
            Ok(1) => {
                assert_eq!(buf[0], byte, "bytes arrived out of order");
                true
            }
            Ok(_) => panic!("connection closed"),
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{e}"
                );
                false
            }
        }
    }

    #[test]
    fn mesh_faults_hold_the_right_directions() {
        use std::io::Write;
        let (a, b) = ("us-east-1", "eu-west-1");
        let (la, lb) = (
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(),
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(),
        );
        let region = |name: &str, l: &TcpListener| RegionLayout {
            name: name.to_string(),
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
            peer: l.local_addr().unwrap(),
            lat: 0.0,
            lon: 0.0,
        };
        let mesh = LinkMesh::start(&[region(a, &la), region(b, &lb)], 0.0, false).unwrap();
        assert_eq!(mesh.addrs().len(), 2);
        let held = Duration::from_millis(300);
        let arrives = Duration::from_secs(5);
        // a's connection to b (link a->b) and b's connection to a (link b->a).
        let (mut a_out, mut b_in) = connect(&mesh, a, b, &lb);
        let (mut b_out, mut a_in) = connect(&mesh, b, a, &la);

        // a's bytes no longer reach b; b's still reach a.
        mesh.partition_oneway(a, b).unwrap();
        a_out.write_all(b"1").unwrap(); // a's request to b
        a_in.write_all(b"2").unwrap(); // a's answer to b
        b_in.write_all(b"3").unwrap(); // b's answer to a
        b_out.write_all(b"4").unwrap(); // b's request to a
        assert!(receives(&mut a_out, b'3', arrives));
        assert!(receives(&mut a_in, b'4', arrives));
        assert!(!receives(&mut b_in, b'1', held));
        assert!(!receives(&mut b_out, b'2', held));
        mesh.heal(b, a).unwrap();
        assert!(receives(&mut b_in, b'1', arrives));
        assert!(receives(&mut b_out, b'2', arrives));

        // Both ways: nothing crosses.
        mesh.partition(a, b).unwrap();
        a_out.write_all(b"5").unwrap();
        b_in.write_all(b"6").unwrap();
        b_out.write_all(b"7").unwrap();
        a_in.write_all(b"8").unwrap();
        assert!(!receives(&mut b_in, b'5', held));
        assert!(!receives(&mut a_out, b'6', held));
        assert!(!receives(&mut a_in, b'7', held));
        assert!(!receives(&mut b_out, b'8', held));
        mesh.heal_all().unwrap();
        assert!(receives(&mut b_in, b'5', arrives));
        assert!(receives(&mut a_out, b'6', arrives));
        assert!(receives(&mut a_in, b'7', arrives));
        assert!(receives(&mut b_out, b'8', arrives));
        assert!(mesh.server().status().iter().all(|l| l.faults.is_empty()));
    }

    #[tokio::test]
    async fn mesh_starts_and_stops_inside_an_async_test() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let layout: Vec<RegionLayout> = REGIONS[..3]
            .iter()
            .map(|&(name, lat, lon)| RegionLayout {
                name: name.to_string(),
                api: l.local_addr().unwrap(),
                peer: l.local_addr().unwrap(),
                lat,
                lon,
            })
            .collect();
        let mesh = LinkMesh::start(&layout, 1.0, false).unwrap();
        assert_eq!(mesh.addrs().len(), 6);
        mesh.partition("us-east-1", "eu-west-1").unwrap();
        assert!(mesh.partition("us-east-1", "nowhere").is_err());
        let faults: usize = mesh.server().status().iter().map(|l| l.faults.len()).sum();
        assert_eq!(faults, 2, "a failed partition adds nothing");
        // Dropping it here must not panic (a runtime dropped in async code does).
        drop(mesh);
    }

    #[test]
    fn wrapper_appends_arguments() {
        let dir = test_dir("wrapper").unwrap();
        let script = dir.join("w.sh");
        write_wrapper(
            &script,
            Path::new("/bin/echo"),
            &["a b".into(), "it's".into()],
        )
        .unwrap();
        let out = std::process::Command::new(&script)
            .arg("first")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "first a b it's\n");
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("Repl_Test 1"), "repl-test-1");
        assert_eq!(sanitize("__"), "cluster");
    }
}
