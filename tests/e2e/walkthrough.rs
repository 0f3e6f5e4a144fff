//! End-to-end: README.md's "Three regions by hand" walkthrough, run as printed.
//!
//! The test reads the walkthrough's shell block from README.md itself and runs every command in
//! order, with real processes on loopback: `atoll certs init` (the cluster's certificates, for
//! mutual TLS between the regions), `atoll link serve`, three `atoll region`s that reach their
//! peers through the links (`--peer-via`), `atoll router`, then the commands that try it
//! (`atoll`, `curl` and `dig` lines; `curl` and `dig` are performed by the test itself, so the
//! machine needs neither). Only what must change to run beside other tests changes: every port
//! the README and `examples/three-regions.toml` use is mapped to a free one (the links keep
//! consecutive ports), the example config is copied with those ports, `/tmp/atoll-3` becomes
//! the test's directory, and `examples/certs` the `certs` directory next to the copied config
//! (where its `[cluster.tls]` points).
//!
//! What it checks: `atoll certs init` finds the config already pointing at what it wrote; the
//! flags `atoll link serve` prints are the README's `--peer-via` flags; each
//! command does what its README comment says (replication established, the write replicated,
//! every link carried bytes, every region healthy at the router, the proxy and DNS answers, the
//! drain, the one-way partition and its healing); every command the test knows is still in the
//! README (and the README has no command the test does not know); and the router logged no error
//! while it started (it says "router starting" at info level instead).

use crate::common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use atoll_testkit::{
    Service, TestDir, free_port_range, free_ports, free_udp_tcp_port, run_with_timeout, test_dir,
    wait_until_async,
};
use common::{BIN, ok};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const README: &str = include_str!("../../README.md");
const EXAMPLE: &str = include_str!("../../examples/three-regions.toml");
const SECTION: &str = "## Three regions by hand";
/// Where the walkthrough keeps its data.
const DATA: &str = "/tmp/atoll-3";
const CONFIG: &str = "examples/three-regions.toml";
/// Where the walkthrough writes the certificates (next to the example config).
const CERTS: &str = "examples/certs";
/// Ports of the walkthrough: regions (client API, then peer listeners), links (consecutive from
/// the first), links' control API, router proxy, admin API and DNS.
const REGION_PORTS: [u16; 6] = [7100, 7101, 7102, 7200, 7201, 7202];
const LINK_BASE: u16 = 7300;
const LINKS: u16 = 6;
const CONTROL: u16 = 7400;
const PROXY: u16 = 7180;
const ADMIN: u16 = 7181;
const DNS: u16 = 7153;

/// Upper bound for any one wait (a start, replication, a health verdict, a partition showing).
const DEADLINE: Duration = Duration::from_secs(30);
/// Upper bound for one short command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------------------------
// The README's commands

/// One command of the walkthrough: environment assignments, then the program and its args.
#[derive(Clone, Debug)]
struct Cmd {
    /// The command as the README prints it (continuations joined), for messages and matching.
    text: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// The shell block under [`SECTION`].
fn walkthrough_block(readme: &str) -> Result<&str> {
    let at = readme
        .find(SECTION)
        .with_context(|| format!("README.md has no `{SECTION}` section"))?;
    let rest = &readme[at..];
    let start = rest
        .find("```sh\n")
        .context("no ```sh block in the walkthrough section")?
        + "```sh\n".len();
    let len = rest[start..]
        .find("```")
        .context("the walkthrough's code block does not end")?;
    Ok(&rest[start..start + len])
}

/// Splits one shell command into words: single and double quotes, backslash escapes outside
/// single quotes; an unquoted `#` at the start of a word begins a comment.
fn words(line: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => bail!("unclosed ' in: {line}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.extend(chars.next()),
                        Some(x) => cur.push(x),
                        None => bail!("unclosed \" in: {line}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// The commands of the block: continuation lines joined, comments and blank lines dropped.
fn commands(block: &str) -> Result<Vec<Cmd>> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let text = std::mem::take(&mut pending);
        let mut w = words(&text)?;
        if w.is_empty() {
            continue;
        }
        let mut env = Vec::new();
        while let Some((k, v)) = w.first().and_then(|a| a.split_once('=')) {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                break;
            }
            env.push((k.to_string(), v.to_string()));
            w.remove(0);
        }
        let text = text
            .split("  #")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push(Cmd { text, env, args: w });
    }
    ensure!(pending.is_empty(), "the block ends in a continuation line");
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Running them beside other tests

/// What changes so that the walkthrough runs in a test: ports, the config's path, the data
/// directory.
struct Remap {
    ports: BTreeMap<u16, u16>,
    config: PathBuf,
    data: PathBuf,
}

impl Remap {
    fn new(dir: &Path) -> Result<Remap> {
        for _ in 0..10 {
            let regions = free_ports(REGION_PORTS.len())?;
            let links = free_port_range(LINKS)?;
            let others = free_ports(3)?;
            let dns = free_udp_tcp_port()?;
            let mut ports = BTreeMap::new();
            for (old, new) in REGION_PORTS.iter().zip(&regions) {
                ports.insert(*old, *new);
            }
            for k in 0..LINKS {
                ports.insert(LINK_BASE + k, links + k);
            }
            for (old, new) in [CONTROL, PROXY, ADMIN].iter().zip(&others) {
                ports.insert(*old, *new);
            }
            ports.insert(DNS, dns);
            let mut distinct: Vec<u16> = ports.values().copied().collect();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() == ports.len() {
                return Ok(Remap {
                    ports,
                    config: dir.join("three-regions.toml"),
                    data: dir.join("atoll-3"),
                });
            }
        }
        bail!("could not find distinct free ports")
    }

    /// `text` with every `:PORT` (and `PORT` when it is all of `text`) of the walkthrough mapped.
    fn ports_in(&self, text: &str) -> String {
        if let Ok(p) = text.parse::<u16>() {
            return self.ports.get(&p).map_or(text.to_string(), u16::to_string);
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(':') {
            out.push_str(&rest[..=i]);
            rest = &rest[i + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let mapped = rest[..digits]
                .parse::<u16>()
                .ok()
                .and_then(|p| self.ports.get(&p));
            match mapped {
                Some(p) => out.push_str(&p.to_string()),
                None => out.push_str(&rest[..digits]),
            }
            rest = &rest[digits..];
        }
        out.push_str(rest);
        out
    }

    fn arg(&self, a: &str) -> String {
        let certs = self
            .config
            .parent()
            .map(|d| d.join("certs"))
            .unwrap_or_else(|| "certs".into());
        let a = a
            .replace(CONFIG, &self.config.display().to_string())
            .replace(CERTS, &certs.display().to_string())
            .replace(DATA, &self.data.display().to_string());
        self.ports_in(&a)
    }

    /// Fails if a README command would still use a port this test does not map.
    fn check_mapped(&self, c: &Cmd) -> Result<()> {
        let mapped: Vec<String> = c.args.iter().map(|a| self.arg(a)).collect();
        let unmapped = unmapped_ports(&mapped);
        ensure!(
            unmapped.is_empty(),
            "`{}` uses ports this test does not map: {unmapped:?}",
            c.text
        );
        Ok(())
    }

    /// The example config with its ports mapped.
    fn write_config(&self) -> Result<()> {
        std::fs::write(&self.config, self.ports_in(EXAMPLE))
            .with_context(|| format!("cannot write {}", self.config.display()))
    }
}

/// Words of a command that still name a low port (`:7100`, or a bare `7300`), one the map does
/// not know (mapped ports are ephemeral ones, far above).
fn unmapped_ports(args: &[String]) -> Vec<String> {
    let low = |digits: &str| digits.parse::<u16>().is_ok_and(|p| p < 10_000);
    args.iter()
        .filter(|a| {
            low(a)
                || a.split(':').skip(1).any(|after| {
                    let n = after.bytes().take_while(u8::is_ascii_digit).count();
                    n > 0 && low(&after[..n])
                })
        })
        .cloned()
        .collect()
}

/// What a command printed.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// The walkthrough, running: its long-running processes and how to run its other commands.
struct Walk {
    remap: Remap,
    services: Vec<Service>,
    /// The `--peer-via` lines `atoll link serve` printed.
    link_hints: Vec<String>,
    http: reqwest::Client,
    dir: PathBuf,
}

/// Whether a line a long-running command printed says it is ready.
type Ready = fn(&str) -> bool;

/// Whether a command prepares what the long-running ones need (it runs before them, in order).
fn is_setup(args: &[String]) -> bool {
    args.get(1).map(String::as_str) == Some("certs")
}

/// The long-running commands, and the line each prints once it is ready.
fn readiness(args: &[String]) -> Option<(&'static str, Ready)> {
    match (
        args.get(1).map(String::as_str),
        args.get(2).map(String::as_str),
    ) {
        (Some("link"), Some("serve")) => Some(("link serve", |l: &str| {
            l.starts_with("atoll link control on http://")
        })),
        (Some("region"), _) => Some(("region", |l: &str| l.contains(" listening on http://"))),
        (Some("router"), Some(a)) if a.starts_with("--") => Some(("router", |l: &str| {
            l.starts_with("atoll router admin on http://")
        })),
        _ => None,
    }
}

impl Walk {
    fn command(&self, cmd: &Cmd) -> Command {
        let mut c = Command::new(BIN);
        c.args(cmd.args[1..].iter().map(|a| self.remap.arg(a)));
        for (k, v) in &cmd.env {
            c.env(k, v);
        }
        c.env("NO_COLOR", "1");
        c
    }

    /// Starts a long-running command and waits for its readiness line.
    fn start(&mut self, cmd: &Cmd) -> Result<()> {
        let (kind, ready) = readiness(&cmd.args).context("not a long-running command")?;
        let name = match kind {
            "region" => cmd
                .args
                .iter()
                .skip_while(|a| *a != "--region")
                .nth(1)
                .cloned()
                .unwrap_or_else(|| "region".into()),
            other => other.replace(' ', "-"),
        };
        let log = self.dir.join(format!("{name}.log"));
        let mut s = Service::start(&name, self.command(cmd), &log)?;
        s.wait_line(DEADLINE, ready)
            .with_context(|| format!("`{}` did not start", cmd.text))?;
        if kind == "link serve" {
            // The --peer-via hints come right after the control line.
            let heading = s.wait_line(DEADLINE, |l| l.contains("--peer-via"))?;
            ensure!(heading.ends_with(':'), "{heading}");
            for _ in 0..3 {
                let hint = s.wait_line(DEADLINE, |l| l.trim_start().starts_with("atoll region"))?;
                self.link_hints.push(hint);
            }
        }
        self.services.push(s);
        Ok(())
    }

    /// Runs a short command to its end (`curl` and `dig` done here).
    async fn run(&self, cmd: &Cmd) -> Result<Out> {
        match cmd.args[0].as_str() {
            "atoll" => {
                let o = run_with_timeout(self.command(cmd), COMMAND_TIMEOUT)?;
                Ok(Out {
                    code: o.status.code(),
                    stdout: String::from_utf8_lossy(&o.stdout).trim_end().to_string(),
                    stderr: String::from_utf8_lossy(&o.stderr).trim_end().to_string(),
                })
            }
            "curl" => self.curl(cmd).await,
            "dig" => self.dig(cmd).await,
            other => bail!("the walkthrough runs `{other}`, which this test does not know"),
        }
    }

    /// `curl -s URL` (the body) or `curl -si URL` (status line, headers, body).
    async fn curl(&self, cmd: &Cmd) -> Result<Out> {
        let flags: Vec<&str> = cmd.args[1..]
            .iter()
            .filter(|a| a.starts_with('-'))
            .map(String::as_str)
            .collect();
        ensure!(
            flags.iter().all(|f| ["-s", "-si", "-is"].contains(f)),
            "curl flags {flags:?} are not supported by this test"
        );
        let url = cmd.args[1..]
            .iter()
            .find(|a| !a.starts_with('-'))
            .context("curl without a URL")?;
        let resp = self.http.get(self.remap.arg(url)).send().await?;
        let mut out = String::new();
        if flags.iter().any(|f| f.contains('i')) {
            out.push_str(&format!("HTTP/1.1 {}\n", resp.status()));
            for (k, v) in resp.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            out.push('\n');
        }
        out.push_str(&resp.text().await?);
        Ok(Out {
            code: Some(0),
            stdout: out,
            stderr: String::new(),
        })
    }

    /// `dig @SERVER -p PORT NAME [+short] [+subnet=PREFIX]`, type A, over UDP.
    async fn dig(&self, cmd: &Cmd) -> Result<Out> {
        let mut server = None;
        let mut port = 53u16;
        let mut name = None;
        let mut subnet = None;
        let mut args = cmd.args[1..].iter();
        while let Some(a) = args.next() {
            if let Some(s) = a.strip_prefix('@') {
                server = Some(s.to_string());
            } else if a == "-p" {
                port = self
                    .remap
                    .arg(args.next().context("-p without a port")?)
                    .parse()?;
            } else if let Some(s) = a.strip_prefix("+subnet=") {
                subnet = Some(s.to_string());
            } else if a == "+short" {
            } else if a.starts_with('+') || a.starts_with('-') {
                bail!("dig option {a} is not supported by this test");
            } else {
                name = Some(a.clone());
            }
        }
        let server: std::net::IpAddr = server.context("dig without @server")?.parse()?;
        let query = dns_query(&name.context("dig without a name")?, subnet.as_deref())?;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        sock.send_to(&query, (server, port)).await?;
        let mut buf = [0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .map_err(|_| anyhow!("no DNS answer within 5 s"))??;
        let ips = dns_a_records(&buf[..n])?;
        Ok(Out {
            code: Some(0),
            stdout: ips.join("\n"),
            stderr: String::new(),
        })
    }

    fn service(&self, name: &str) -> Result<&Service> {
        self.services
            .iter()
            .find(|s| {
                s.log_path()
                    .file_stem()
                    .is_some_and(|f| f == std::ffi::OsStr::new(name))
            })
            .with_context(|| format!("no {name} running"))
    }
}

/// A DNS query for `name` type A, recursion desired, with an EDNS Client Subnet option when
/// `subnet` (an IPv4 prefix) is given.
fn dns_query(name: &str, subnet: Option<&str>) -> Result<Vec<u8>> {
    let mut q = vec![
        0x4a,
        0x11,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(subnet.is_some()),
    ];
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len())?);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some(s) = subnet {
        let (ip, len) = s.split_once('/').context("subnet without /len")?;
        let ip: std::net::Ipv4Addr = ip.parse()?;
        let len: u8 = len.parse()?;
        let addr = &ip.octets()[..usize::from(len).div_ceil(8)];
        let mut ecs = vec![0, 1, len, 0];
        ecs.extend_from_slice(addr);
        let mut opt = vec![0, 8];
        opt.extend_from_slice(&u16::try_from(ecs.len())?.to_be_bytes());
        opt.extend_from_slice(&ecs);
        // root name, type OPT, UDP size 4096, extended rcode/flags 0, rdata
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0]);
        q.extend_from_slice(&u16::try_from(opt.len())?.to_be_bytes());
        q.extend_from_slice(&opt);
    }
    Ok(q)
}

/// The addresses of the A records in the answer section of a DNS response.
fn dns_a_records(m: &[u8]) -> Result<Vec<String>> {
    ensure!(m.len() >= 12, "a DNS answer of {} bytes", m.len());
    let rcode = m[3] & 0x0f;
    ensure!(rcode == 0, "DNS rcode {rcode}");
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let skip_name = |mut i: usize| -> Result<usize> {
        loop {
            let len = *m.get(i).context("truncated name")?;
            if len & 0xc0 == 0xc0 {
                return Ok(i + 2);
            }
            if len == 0 {
                return Ok(i + 1);
            }
            i += 1 + usize::from(len);
        }
    };
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(i)?;
        let rr = m.get(i..i + 10).context("truncated record")?;
        let (ty, len) = (
            u16::from_be_bytes([rr[0], rr[1]]),
            usize::from(u16::from_be_bytes([rr[8], rr[9]])),
        );
        let data = m.get(i + 10..i + 10 + len).context("truncated rdata")?;
        if ty == 1 && len == 4 {
            out.push(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]).to_string());
        }
        i += 10 + len;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// What each command must show

/// Polls `cmd` until `check` accepts its output (or [`DEADLINE`] passes, then fails with the last
/// output and what was expected).
async fn until(walk: &Walk, cmd: &Cmd, what: &str, check: impl Fn(&Out) -> bool) -> Result<Out> {
    let last = std::sync::Mutex::new(None::<Out>);
    let last_error = std::sync::Mutex::new(String::new());
    let waited = wait_until_async(DEADLINE, &format!("`{}`: {what}", cmd.text), || {
        let (last, last_error, check) = (&last, &last_error, &check);
        async move {
            match walk.run(cmd).await {
                Ok(o) => {
                    let good = check(&o);
                    if let Ok(mut l) = last.lock() {
                        *l = Some(o);
                    }
                    good
                }
                Err(e) => {
                    if let Ok(mut l) = last_error.lock() {
                        *l = format!("{e:#}");
                    }
                    false
                }
            }
        }
    })
    .await;
    let last = last.into_inner().ok().flatten();
    match (waited, last) {
        (Ok(()), Some(o)) => Ok(o),
        (Ok(()), None) => bail!("`{}`: no output", cmd.text),
        (Err(e), o) => Err(e.context(format!(
            "last output: {o:?}; last error: {}",
            last_error.into_inner().unwrap_or_default()
        ))),
    }
}

/// Checks one of the walkthrough's short commands; returns the key of the expectation used
/// (`None`: not one the test knows, then it must simply succeed).
async fn check(walk: &Walk, cmd: &Cmd) -> Result<Option<&'static str>> {
    let t = cmd.text.as_str();
    let key = if t.starts_with("curl -s http://127.0.0.1:7100/healthz") {
        until(walk, cmd, "replication established", |o| {
            serde_json::from_str::<Value>(&o.stdout)
                .is_ok_and(|v| v["status"] == "serving" && v["replication"]["established"] == true)
        })
        .await?;
        "healthz"
    } else if t.starts_with("atoll kv put sessions alice token-1") {
        let o = walk.run(cmd).await?;
        ensure!(o.ok() && o.stdout.contains("written in us-east-1"), "{o:?}");
        "put"
    } else if t.starts_with("atoll kv get sessions alice --endpoint http://127.0.0.1:7102") {
        until(walk, cmd, "the value replicated", |o| {
            o.ok() && o.stdout == "token-1"
        })
        .await?;
        "get"
    } else if t.starts_with("atoll status --endpoint http://127.0.0.1:7101") {
        until(walk, cmd, "both peers up, replication established", |o| {
            o.ok()
                && ["us-east-1", "ap-southeast-1"].iter().all(|peer| {
                    o.stdout
                        .lines()
                        .any(|l| l.split_whitespace().take(2).eq([*peer, "up"]))
                })
                && o.stdout.contains("replication: established")
                && o.stdout.contains("between regions: mutual TLS")
        })
        .await?;
        "status"
    } else if t.starts_with("atoll link ls") {
        let o = walk.run(cmd).await?;
        ensure!(o.ok(), "{o:?}");
        let lines: Vec<&str> = o.stdout.lines().filter(|l| l.contains("->")).collect();
        ensure!(lines.len() == 6, "six links expected:\n{}", o.stdout);
        for l in lines {
            let forward: u64 = l
                .split("bytes ")
                .nth(1)
                .and_then(|b| b.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("no byte count in: {l}"))?;
            ensure!(forward > 0, "a link carried nothing: {l}");
        }
        "links"
    } else if t.contains("atoll router status") {
        until(walk, cmd, "every region healthy", |o| {
            o.ok()
                && o.stdout
                    .lines()
                    .filter(|l| l.contains("healthy") && l.contains("routable=true"))
                    .count()
                    == 3
        })
        .await?;
        "router-status"
    } else if t.starts_with("curl -si http://127.0.0.1:7180/") {
        // The proxy picks the nearest healthy region, which may not hold the write yet (it
        // replicates a link delay later, longer while a subscription restarts and does its TLS
        // handshake through the link): wait for it, as for the `get` above.
        let o = until(walk, cmd, "the proxied read finds the write", |o| {
            o.stdout.starts_with("HTTP/1.1 200")
        })
        .await?;
        ensure!(o.stdout.starts_with("HTTP/1.1 200"), "{}", o.stdout);
        ensure!(o.stdout.contains("x-atoll-routed-to: "), "{}", o.stdout);
        ensure!(o.stdout.ends_with("\n\ntoken-1"), "{}", o.stdout);
        "proxy"
    } else if t.starts_with("dig ") && t.contains("+subnet=198.51.100.7/24") {
        let o = walk.run(cmd).await?;
        ensure!(o.stdout == "127.0.0.12", "a client in Paris: {o:?}");
        "dig"
    } else if t.contains("atoll router drain us-east-1") {
        let o = walk.run(cmd).await?;
        ensure!(
            o.ok() && o.stdout.starts_with("drained us-east-1 for 30m"),
            "{o:?}"
        );
        "drain"
    } else if t.starts_with("atoll link fault add 'us-east-1<->eu-west-1'") {
        let o = walk.run(cmd).await?;
        ensure!(o.ok() && o.stdout == "f-1", "{o:?}");
        // One fault on both links between the two regions (the links are named on stderr).
        ensure!(
            o.stderr.contains("us-east-1->eu-west-1") && o.stderr.contains("eu-west-1->us-east-1"),
            "{o:?}"
        );
        "fault"
    } else if t.starts_with("atoll status --endpoint http://127.0.0.1:7100") {
        // Both directions are cut: us-east-1 no longer hears eu-west-1 at all.
        until(walk, cmd, "eu-west-1 unreachable, exit 1", |o| {
            o.code == Some(1)
                && o.stdout.lines().any(|l| {
                    l.split_whitespace()
                        .take(2)
                        .eq(["eu-west-1", "unreachable"])
                })
                && o.stderr.contains("eu-west-1 is unreachable")
        })
        .await?;
        "partitioned"
    } else if t.starts_with("atoll link fault rm 'us-east-1<->eu-west-1' f-1") {
        let o = walk.run(cmd).await?;
        ensure!(o.ok() && o.stdout.contains("removed f-1"), "{o:?}");
        "heal"
    } else {
        let o = walk.run(cmd).await?;
        ensure!(o.ok(), "`{t}` failed: {o:?}");
        return Ok(None);
    };
    Ok(Some(key))
}

/// Every expectation [`check`] has: each must have been used once.
const EXPECTED: [&str; 14] = [
    "certs",
    "healthz",
    "put",
    "get",
    "status",
    "links",
    "router-status",
    "proxy",
    "dig",
    "drain",
    "fault",
    "partitioned",
    "heal",
    "peer-via",
];

// ---------------------------------------------------------------------------------------------

#[test]
fn the_walkthrough_parses_into_commands() {
    let cmds = ok(walkthrough_block(README).and_then(commands));
    let long: Vec<&Cmd> = cmds
        .iter()
        .filter(|c| readiness(&c.args).is_some())
        .collect();
    assert_eq!(long.len(), 5, "links, three regions, router: {long:#?}");
    let setup: Vec<&Cmd> = cmds.iter().filter(|c| is_setup(&c.args)).collect();
    assert_eq!(setup.len(), 1, "certs init: {setup:#?}");
    assert!(
        cmds.iter().position(|c| is_setup(&c.args))
            < cmds.iter().position(|c| readiness(&c.args).is_some()),
        "the certificates are made before anything starts"
    );
    let router = long[4];
    assert_eq!(router.env, [("ATOLL_ADMIN_TOKEN".into(), "secret".into())]);
    assert!(router.args.contains(&"--state-dir".to_string()));
    let fault = cmds
        .iter()
        .find(|c| c.text.starts_with("atoll link fault add"))
        .unwrap();
    assert_eq!(fault.args[4], "us-east-1<->eu-west-1", "quotes are removed");
    assert!(
        cmds.iter()
            .all(|c| !c.args.iter().any(|a| a.starts_with('#'))),
        "comments are dropped"
    );
    assert_eq!(
        words("a 'b c' \"d\\\"e\" f\\ g # h").unwrap(),
        ["a", "b c", "d\"e", "f g"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_three_regions_by_hand() {
    let dir = ok(test_dir("walkthrough").map_err(Into::into));
    ok(scenario(&dir).await);
}

async fn scenario(dir: &TestDir) -> Result<()> {
    let cmds = commands(walkthrough_block(README)?)?;
    ensure!(
        cmds.iter()
            .all(|c| ["atoll", "curl", "dig"].contains(&c.args[0].as_str())),
        "the walkthrough runs a program other than atoll, curl and dig: {cmds:#?}"
    );
    let (setup, cmds): (Vec<Cmd>, Vec<Cmd>) = cmds.into_iter().partition(|c| is_setup(&c.args));
    let (long, short): (Vec<Cmd>, Vec<Cmd>) =
        cmds.into_iter().partition(|c| readiness(&c.args).is_some());

    // Start the links, the regions and the router, in the README's order (retried on new ports
    // if one was taken meanwhile).
    let mut attempt = 0;
    let walk = loop {
        attempt += 1;
        let attempt_dir = dir.join(&format!("attempt-{attempt}"));
        std::fs::create_dir_all(&attempt_dir)?;
        let remap = Remap::new(&attempt_dir)?;
        remap.write_config()?;
        let mut walk = Walk {
            remap,
            services: Vec::new(),
            link_hints: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            dir: attempt_dir,
        };
        let mut failed = None;
        // The certificates, before anything starts: the config already points at them.
        for c in &setup {
            let o = walk.run(c).await?;
            ensure!(
                o.ok() && o.stdout.contains("already points at these files"),
                "`{}`: {o:?}",
                c.text
            );
        }
        for c in &long {
            walk.remap.check_mapped(c)?;
            if let Err(e) = walk.start(c) {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => break walk,
            Some(e) if attempt < START_ATTEMPTS && format!("{e:#}").contains("in use") => {
                eprintln!("walkthrough start attempt {attempt} lost a port race, retrying: {e:#}");
            }
            Some(e) => return Err(e),
        }
    };

    // `atoll link serve` printed exactly the --peer-via flags the README starts regions with.
    let mut used: Vec<&'static str> = vec!["certs"];
    for c in long
        .iter()
        .filter(|c| c.args.get(1).map(String::as_str) == Some("region"))
    {
        let region = c
            .args
            .iter()
            .skip_while(|a| *a != "--region")
            .nth(1)
            .context("a region command without --region")?;
        let readme_flags: Vec<String> = c
            .args
            .windows(2)
            .filter(|w| w[0] == "--peer-via")
            .map(|w| format!("--peer-via {}", walk.remap.arg(&w[1])))
            .collect();
        let printed = walk
            .link_hints
            .iter()
            .find(|h| h.contains(&format!("--region {region} ")))
            .with_context(|| format!("atoll link serve printed no flags for {region}"))?;
        let printed: Vec<String> = printed
            .split(" ... ")
            .nth(1)
            .unwrap_or_default()
            .split(" --peer-via ")
            .map(|f| format!("--peer-via {}", f.trim_start_matches("--peer-via ")))
            .collect();
        ensure!(
            printed == readme_flags,
            "{region}: atoll link serve says {printed:?}, the README {readme_flags:?}"
        );
    }
    used.push("peer-via");

    // The rest, in order.
    for c in &short {
        walk.remap.check_mapped(c)?;
        if let Some(key) = check(&walk, c)
            .await
            .with_context(|| format!("README command `{}`", c.text))?
        {
            ensure!(!used.contains(&key), "`{key}` checked twice");
            used.push(key);
        }
    }
    let mut missing: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|k| !used.contains(k))
        .collect();
    missing.sort_unstable();
    ensure!(
        missing.is_empty(),
        "the README no longer has the commands of {missing:?}; update the walkthrough or this test"
    );

    // Healed: us-east-1 hears from eu-west-1 both ways again (status exits 0).
    let status_us = short
        .iter()
        .find(|c| {
            c.text
                .starts_with("atoll status --endpoint http://127.0.0.1:7100")
        })
        .context("no status of us-east-1")?;
    until(&walk, status_us, "healed after fault rm", Out::ok).await?;

    // The router started without an error: it said "starting" instead.
    let router_log = walk.service("router")?.log();
    ensure!(
        router_log.contains(" INFO ") && router_log.contains("router starting"),
        "{router_log}"
    );
    let errors: Vec<&str> = router_log
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .collect();
    ensure!(
        errors.is_empty(),
        "the router logged errors:\n{}",
        errors.join("\n")
    );
    drop(walk);
    Ok(())
}
