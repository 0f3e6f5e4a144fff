//! `atoll demo`: three regions on this machine, one command.

use crate::demo_control::{AddedRegion, ConfigEdit, DemoError, SpawnFuture};
use anyhow::{Context, Result, anyhow, bail};
use atoll_config::Policy;
use atoll_config::render::{ClusterToml, KeyspaceToml, RegionToml, RouterToml, Tls};
use atoll_core::RegionId;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The demo's regions, in port order, with approximate coordinates of their cloud regions.
pub const DEMO_REGIONS: [(&str, f64, f64); 3] = atoll_config::render::THREE_REGIONS;

/// Where the peer listeners are: region i's on `127.0.0.1:<port_base + PEER_OFFSET + i>`.
pub const PEER_OFFSET: u32 = 100;
/// Where the RESP (Redis protocol) listeners are: region i's on `127.0.0.1:<port_base + RESP_OFFSET + i>`.
pub const RESP_OFFSET: u32 = 10;
/// The highest port offset the demo uses at start (the last peer listener).
const MAX_OFFSET: u32 = PEER_OFFSET + DEMO_REGIONS.len() as u32 - 1;
/// The most regions the demo runs, with those added (`atoll demo ctl add-region`): region i's
/// client API on `<port_base + i>` stays below the RESP listeners at `<port_base + RESP_OFFSET>`.
pub const MAX_REGIONS: usize = RESP_OFFSET as usize;
/// How long the certificates the demo makes are valid, in days.
const CERT_DAYS: u32 = 7;
/// Where the demo's certificates go, in its data directory (the config names them relative to
/// itself).
const CERTS_DIR: &str = "certs";

/// The cluster config the demo runs, with region i's API on `127.0.0.1:<port_base + i>` and its
/// peer listener (mutual TLS, certificates in `certs/` next to the config) on
/// `127.0.0.1:<port_base + 100 + i>`.
pub fn demo_config(port_base: u16, model: atoll_config::Model) -> String {
    // `run` refuses a port base without room for MAX_OFFSET first.
    let at = |offset: u32| -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port_base.saturating_add(offset as u16)))
    };
    let mut toml = ClusterToml::new("atoll-demo")
        .header("Written by `atoll demo`.")
        .model(model)
        .tls(Tls::Certs(CERTS_DIR.to_string()));
    for (i, (name, lat, lon)) in DEMO_REGIONS.iter().enumerate() {
        toml = toml.region(
            RegionToml::new(name, at(i as u32))
                .peer(at(PEER_OFFSET + i as u32))
                .resp(at(RESP_OFFSET + i as u32))
                .dns_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + i as u8)))
                .location(*lat, *lon),
        );
    }
    toml = toml
        .keyspace(KeyspaceToml::new("sessions", Policy::Lww))
        .keyspace(KeyspaceToml::new("carts", Policy::Mvr))
        .keyspace(KeyspaceToml::new("ratelimits", Policy::Counter))
        .keyspace(
            KeyspaceToml::new("api-quota", Policy::RateLimit)
                .line("limit = 5")
                .line("window = \"1m\""),
        )
        .keyspace(KeyspaceToml::new("flags", Policy::Set))
        .keyspace(KeyspaceToml::new("inventory", Policy::Lww).line("on_minority = \"read-only\""))
        .keyspace(KeyspaceToml::new("seats", Policy::Strong));
    let names: Vec<&str> = DEMO_REGIONS.iter().map(|(name, _, _)| *name).collect();
    let router = RouterToml::new()
        .zone("atoll.test")
        .ttl_secs(30)
        .health("interval_ms", 1000)
        .health("failure_threshold", 3)
        .health("recovery_threshold", 2)
        .health("ramp_secs", 30)
        .name("api", "latency", &[])
        .name("primary", "failover", &names)
        .client_location("198.51.100.0/24", 48.9, 2.35)
        .client_location("203.0.113.0/24", 1.35, 103.8);
    toml = toml.section(&router.render());
    // Fencing: active-active runs quorum fencing (a region cut off from the other two refuses
    // writes to `inventory`, keeps taking the rest); the other models fence by the write lease.
    if model == atoll_config::Model::ActiveActive {
        toml = toml.section("[fencing]\nquorum = true");
        // Region ownership (active-active only): each user's profile lives in its region; a
        // home that stays silent for a lease is taken over by the next region of the order.
        toml = toml.keyspace(
            KeyspaceToml::new("profiles", Policy::Owned)
                .line("default_home = \"us-east-1\"")
                .line("homes = [\n  { prefix = \"us:\", region = \"us-east-1\" },\n  { prefix = \"eu:\", region = \"eu-west-1\" },\n  { prefix = \"ap:\", region = \"ap-southeast-1\" },\n]")
                .line("takeover = [\"us-east-1\", \"eu-west-1\", \"ap-southeast-1\"]"),
        );
    }
    toml.render()
}

/// The link fault the demo suggests: a real partition between us-east-1 and eu-west-1, both
/// directions (each region's own connections to the other go through a link of its own, so
/// cutting one link would leave the other region calling it up). The pair is quoted: a shell
/// reads an unquoted `<` or `>` as a redirection.
fn link_fault_example(control_url: &str) -> String {
    format!(
        "atoll link fault add 'us-east-1<->eu-west-1' --kind partition --for 30s --control {control_url}"
    )
}

/// How long the demo waits for replication to be established between every pair of regions
/// before it prints its table anyway (saying so).
const REPLICATION_DEADLINE: Duration = Duration::from_secs(20);

/// Polls every region's `/healthz` until each says replication is established (every peer heard
/// both ways and streaming its writes), or `deadline` passes. `Err` lists what each region still
/// waits for.
async fn wait_replication(regions: &[(String, String)], deadline: Duration) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + deadline;
    loop {
        let mut waiting = Vec::new();
        for (name, endpoint) in regions {
            let health: Option<serde_json::Value> =
                match http.get(format!("{endpoint}/healthz")).send().await {
                    Ok(resp) => resp.json().await.ok(),
                    Err(_) => None,
                };
            let rep = health.as_ref().map(|h| &h["replication"]);
            if rep.and_then(|r| r["established"].as_bool()) != Some(true) {
                let streaming = rep
                    .and_then(|r| r["streaming_to"].as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                waiting.push(format!("{name} (streams to: {streaming})"));
                continue;
            }
            // Fencing and the strong group: the region takes writes (its quorum window is open,
            // or it holds or follows the lease) and knows the strong group's leader, so the
            // commands the demo prints work at once.
            let status: Option<serde_json::Value> =
                match http.get(format!("{endpoint}/v1/status")).send().await {
                    Ok(resp) => resp.json().await.ok(),
                    Err(_) => None,
                };
            let Some(status) = status else {
                waiting.push(format!("{name} (status)"));
                continue;
            };
            if status["fencing"]["role"] == "read-only" {
                waiting.push(format!("{name} (its first quorum window)"));
            } else if status["strong"].is_object() && status["strong"]["leader"].is_null() {
                waiting.push(format!("{name} (a leader of the strong group)"));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(waiting.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts region `name` and waits until it listens: its process and its client API URL. The
/// region runs in a process group of its own, so a Ctrl-C in the demo's terminal reaches only
/// the demo, which then stops the regions itself (and can tell that apart from a crash). Its log
/// (stderr) is appended to `<data_dir>/<name>.log`, across restarts.
async fn start_region(
    exe: &Path,
    config: &Path,
    name: &str,
    data_dir: &Path,
    peer_via: &[(String, std::net::SocketAddr)],
    admin_token: &str,
) -> Result<(Child, String)> {
    let log_path = data_dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("region")
        .arg("--config")
        .arg(config)
        .arg("--region")
        .arg(name)
        .arg("--data-dir")
        .arg(data_dir.join(name))
        .args(
            peer_via
                .iter()
                .flat_map(|(peer, addr)| ["--peer-via".to_string(), format!("{peer}={addr}")]),
        )
        .env("ATOLL_ADMIN_TOKEN", admin_token)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start region {name}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from region {name}"))?;
    let mut lines = BufReader::new(stdout).lines();
    let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.split("listening on ").nth(1) {
                return Ok::<_, anyhow::Error>(url.trim().to_string());
            }
        }
        bail!(
            "region {name} exited before it was ready; see {}",
            log_path.display()
        )
    })
    .await
    .map_err(|_| {
        anyhow!(
            "region {name} was not ready within 30 s; see {}",
            log_path.display()
        )
    })??;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, endpoint))
}

/// Starts a demo region again (`atoll demo ctl restart`): the same binary, config, data
/// directory, links and admin token as at the start; and adds one (`atoll demo ctl add-region`).
struct DemoSpawner {
    exe: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    token: String,
    port_base: u16,
}

impl crate::demo_control::Spawner for DemoSpawner {
    fn spawn(
        &self,
        name: &str,
        via: &[(String, std::net::SocketAddr)],
    ) -> SpawnFuture<'_, Result<Child>> {
        let (name, via) = (name.to_string(), via.to_vec());
        Box::pin(async move {
            let (child, _) =
                start_region(&self.exe, &self.config, &name, &self.dir, &via, &self.token).await?;
            Ok(child)
        })
    }

    fn add(
        &self,
        name: &RegionId,
        index: usize,
    ) -> SpawnFuture<'_, Result<AddedRegion, DemoError>> {
        let name = name.clone();
        Box::pin(async move { self.add_region(&name, index).await })
    }

    fn removal(&self, name: &RegionId) -> Result<ConfigEdit, DemoError> {
        self.region_removal(name)
    }
}

/// `text` (a config) without the `[[regions]]` table of `name` (with any `[regions.*]`
/// sub-tables after it, and the blank line before it), or why not: no such table, or several.
/// The caller parses what comes back: a table this misreads fails there.
fn without_region_table(text: &str, name: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let header = |l: &str| l.trim_start().starts_with('[');
    // Each `[[regions]]` table: (first line, one past its last line).
    let mut tables = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "[[regions]]" {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        // Up to the next header that is not one of its sub-tables.
        let own_part = |l: &str| !header(l) || l.trim_start().starts_with("[regions.");
        while i < lines.len() && own_part(lines[i]) {
            i += 1;
        }
        tables.push((start, i));
    }
    let names_it = |(start, end): (usize, usize)| {
        let body: String = lines[start + 1..end].concat();
        // Only the table's own keys (up to a sub-table) are read for its name: `name = "..."`
        // as `RegionToml` writes it (a region name needs no escapes).
        body.split_inclusive('\n')
            .take_while(|l| !header(l))
            .filter_map(|l| l.split_once('='))
            .any(|(key, value)| {
                let value = value.split('#').next().unwrap_or_default().trim();
                key.trim() == "name"
                    && (value == format!("\"{name}\"") || value == format!("'{name}'"))
            })
    };
    let found: Vec<(usize, usize)> = tables.into_iter().filter(|t| names_it(*t)).collect();
    let (start, end) = match found.as_slice() {
        [one] => *one,
        [] => {
            return Err(format!(
                "the demo's config has no [[regions]] table of {name}"
            ));
        }
        _ => {
            return Err(format!(
                "the demo's config has {} [[regions]] tables of {name}",
                found.len()
            ));
        }
    };
    // The blank lines between it and the next table stay; the blank line `add-region` put
    // before it goes with it.
    let mut end = end;
    while end > start + 1 && lines[end - 1].trim().is_empty() {
        end -= 1;
    }
    let start = if start > 0 && lines[start - 1].trim().is_empty() {
        start - 1
    } else {
        start
    };
    Ok(format!(
        "{}{}",
        lines[..start].concat(),
        lines[end..].concat()
    ))
}

/// Where the demo's region number `index` listens: `(api, resp, peer)`, or why it cannot.
fn added_ports(
    port_base: u16,
    index: usize,
) -> Result<(SocketAddr, SocketAddr, SocketAddr), String> {
    if index >= MAX_REGIONS {
        return Err(format!(
            "the demo runs {index} regions, the most its ports have room for (client APIs on <port-base>..<port-base + {}>, below the RESP listeners)",
            MAX_REGIONS - 1
        ));
    }
    let at = |offset: usize| -> Result<SocketAddr, String> {
        let port = usize::from(port_base) + offset;
        u16::try_from(port)
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
            .map_err(|_| {
                format!(
                    "port {port} (<port-base + {offset}>) is past 65535: start the demo with a lower --port-base"
                )
            })
    };
    let peer = at(PEER_OFFSET as usize + index)?;
    Ok((at(index)?, at(RESP_OFFSET as usize + index)?, peer))
}

/// Writes `text` to `path` through a temporary file renamed into place, so that a region
/// re-reading the config on SIGHUP never reads half of it.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl DemoSpawner {
    /// The demo's config as it is on disk: its text, the name it is read under, and the parse.
    fn read_config(&self) -> Result<(String, String, atoll_config::Config), String> {
        let text = std::fs::read_to_string(&self.config).map_err(|e| {
            format!(
                "cannot read the demo's config {}: {e}",
                self.config.display()
            )
        })?;
        let source = self.config.display().to_string();
        let config = atoll_config::Config::parse(&text, &source)
            .map_err(|e| format!("the demo's config does not parse: {e}"))?;
        Ok((text, source, config))
    }

    /// `Spawner::add`: checks everything it can first (the model, room for the ports and that
    /// they are free, an empty data directory, that the running regions will take the new
    /// config), then issues the certificate, appends the region to the config and starts it. If
    /// the region does not start, the config is put back and its data directory removed.
    async fn add_region(&self, name: &RegionId, index: usize) -> Result<AddedRegion, DemoError> {
        let refuse = |why: String| DemoError::AddRefused(why);
        let (config_text, source, old) = self.read_config().map_err(refuse)?;
        if old.cluster.model != atoll_config::Model::ActiveActive {
            return Err(refuse(format!(
                "the demo runs {}: a region added to a running cluster is a replica (voter = false), which only active-active has (every region of the lease models is a lease candidate); start the demo with --model active-active",
                old.cluster.model
            )));
        }
        let (api, resp, peer) = added_ports(self.port_base, index).map_err(refuse)?;
        for (what, addr) in [("client API", api), ("RESP", resp), ("peer listener", peer)] {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                return Err(refuse(format!(
                    "{addr}, where {name}'s {what} would listen, is taken: {e}"
                )));
            }
        }
        let data_dir = self.dir.join(name.as_str());
        if data_dir.symlink_metadata().is_ok() {
            return Err(refuse(format!(
                "{} exists (left by an earlier demo on this data directory?): a region added to a running cluster starts with an empty data directory; remove it or pick another name",
                data_dir.display()
            )));
        }
        let location = atoll_config::render::CLOUD_REGIONS
            .iter()
            .find(|(n, _, _)| *n == name.as_str())
            .map(|(_, lat, lon)| (*lat, *lon));
        let mut table = RegionToml::new(name.as_str(), api)
            .peer(peer)
            .resp(resp)
            .dns_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + index as u8)))
            .voter(false);
        if let Some((lat, lon)) = location {
            table = table.location(lat, lon);
        }
        let new_text = format!("{config_text}{}", table.render());
        // Exactly what every running region will do with the file on SIGHUP.
        let new = atoll_config::Config::parse(&new_text, &source)
            .map_err(|e| refuse(format!("the config with {name} appended is invalid: {e}")))?;
        match old.reload_change(&new) {
            Ok(change) if change.added.len() == 1 && change.removed.is_empty() => {}
            Ok(change) => {
                return Err(refuse(format!(
                    "the config with {name} appended adds {} regions and removes {}, not one added",
                    change.added.len(),
                    change.removed.len()
                )));
            }
            Err(why) => {
                return Err(refuse(format!(
                    "the running regions would refuse the config with {name} appended: {why}"
                )));
            }
        }
        let certs = self.dir.join(CERTS_DIR);
        let now = atoll_core::clock::system_time(&atoll_core::clock::SystemClock);
        let written =
            atoll_tls::certs::issue_region(&certs, &old.cluster.name, name, now, CERT_DAYS, true)
                .map_err(|e| {
                refuse(format!(
                    "cannot issue {name}'s certificate from the demo's CA in {}: {e}",
                    certs.display()
                ))
            })?;
        replace_file(&self.config, &new_text).map_err(|e| {
            refuse(format!(
                "cannot write the demo's config {}: {e}",
                self.config.display()
            ))
        })?;
        let (child, endpoint) = match start_region(
            &self.exe,
            &self.config,
            name.as_str(),
            &self.dir,
            &[],
            &self.token,
        )
        .await
        {
            Ok(started) => started,
            Err(e) => {
                let mut undo = Vec::new();
                if let Err(e) = replace_file(&self.config, &config_text) {
                    undo.push(format!(
                        "could not put the config back ({e}): remove {name}'s [[regions]] table from {} by hand",
                        self.config.display()
                    ));
                }
                if data_dir.exists()
                    && let Err(e) = std::fs::remove_dir_all(&data_dir)
                {
                    undo.push(format!("could not remove {}: {e}", data_dir.display()));
                }
                let undo = if undo.is_empty() {
                    " (the config is as it was)".to_string()
                } else {
                    format!(" ({})", undo.join("; "))
                };
                return Err(DemoError::StartFailed(format!("{e:#}{undo}")));
            }
        };
        let path_of = |secret: bool| {
            written
                .iter()
                .find(|w| w.secret == secret)
                .map(|w| w.path.display().to_string())
        };
        // What a replica takes and refuses (as `Membership::permit` decides).
        let (refused, writes): (Vec<_>, Vec<_>) = new.keyspaces.iter().partition(|k| {
            k.owned.is_some()
                || k.on_minority == atoll_config::OnMinority::ReadOnly
                || k.policy == Policy::Strong
        });
        let names = |ks: Vec<&atoll_config::KeyspaceConfig>| -> Vec<String> {
            ks.iter().map(|k| k.name.clone()).collect()
        };
        let details = serde_json::json!({
            "resp": resp.to_string(),
            "peer": peer.to_string(),
            "location": location.map(|(lat, lon)| serde_json::json!({"lat": lat, "lon": lon})),
            "voter": false,
            "certificate": path_of(false),
            "key": path_of(true),
            "config": self.config.display().to_string(),
            "data_dir": data_dir.display().to_string(),
            "log": self.dir.join(format!("{name}.log")).display().to_string(),
            "writes": names(writes),
            "refused": names(refused),
            "voters": new.voters().map(|r| r.name.to_string()).collect::<Vec<_>>(),
            "links": false,
        });
        let serde_json::Value::Object(details) = details else {
            return Err(DemoError::StartFailed(
                "internal: details are not an object".into(),
            ));
        };
        Ok(AddedRegion {
            child,
            api: endpoint,
            details,
        })
    }
}

impl DemoSpawner {
    /// `Spawner::removal`: the demo's config without `name`'s table, checked as every running
    /// region will check it on SIGHUP; nothing is written.
    fn region_removal(&self, name: &RegionId) -> Result<ConfigEdit, DemoError> {
        let refuse = |why: String| DemoError::RemoveRefused(why);
        let (config_text, source, old) = self.read_config().map_err(refuse)?;
        let Some(region) = old.region(name.as_str()) else {
            return Err(refuse(format!(
                "the demo's config {} has no region {name}",
                self.config.display()
            )));
        };
        if region.voter {
            let voters: Vec<String> = old.voters().map(|r| r.name.to_string()).collect();
            return Err(refuse(format!(
                "{name} is a voter: only a region added with voter = false (`atoll demo ctl add-region`) can be removed from a running cluster. The founding regions ({}) are the voters, the members of the control group and the strong group, and a consensus group's voters do not change at run time (docs/design/region-removal.md)",
                voters.join(", ")
            )));
        }
        let new_text = without_region_table(&config_text, name.as_str()).map_err(refuse)?;
        // Exactly what every running region will do with the file on SIGHUP.
        let new = atoll_config::Config::parse(&new_text, &source)
            .map_err(|e| refuse(format!("the config without {name} is invalid: {e}")))?;
        match old.reload_change(&new) {
            Ok(change)
                if change.added.is_empty()
                    && change.removed.len() == 1
                    && change.removed[0].name == *name => {}
            Ok(change) => {
                return Err(refuse(format!(
                    "the config without {name}'s table adds {} regions and removes {}, not {name} alone",
                    change.added.len(),
                    change.removed.len()
                )));
            }
            Err(why) => {
                return Err(refuse(format!(
                    "the running regions would refuse the config without {name}: {why}"
                )));
            }
        }
        Ok(ConfigEdit {
            path: self.config.clone(),
            text: new_text,
            write: replace_file,
        })
    }
}

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn run(
    data_dir: Option<PathBuf>,
    port_base: u16,
    model: atoll_config::Model,
) -> Result<()> {
    let started = Instant::now();
    let shutdown = crate::shutdown_signal();
    if u32::from(port_base) + MAX_OFFSET > u32::from(u16::MAX) {
        bail!(
            "--port-base {port_base} leaves no room for the demo's ports (up to <port-base + {MAX_OFFSET}>)"
        );
    }
    // Refuse at once if a live demo owns this port base's discovery file.
    let discovery = crate::demo_control::DiscoveryFile::claim(port_base)?;
    let (_tmp, dir) = match data_dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            (None, d)
        }
        None => {
            let t = tempfile::Builder::new().prefix("atoll-demo-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let config_text = demo_config(port_base, model);
    let config_path = dir.join("atoll.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = atoll_config::Config::load(&config_path).map_err(anyhow::Error::msg)?;
    // Regions talk mutual TLS, through the links (which forward bytes): a fresh cluster CA and a
    // certificate per region, as `atoll certs init` makes them.
    let certs = dir.join(CERTS_DIR);
    atoll_tls::certs::write_cluster(
        &certs,
        &atoll_tls::certs::ClusterCerts {
            cluster: config.cluster.name.clone(),
            regions: config.regions.iter().map(|r| r.name.clone()).collect(),
            days: CERT_DAYS,
            ca_days: CERT_DAYS,
        },
        atoll_core::clock::system_time(&atoll_core::clock::SystemClock),
        true,
    )
    .map_err(|e| anyhow!("cannot create the demo's certificates: {e}"))?;
    let exe = std::env::current_exe().context("cannot find the atoll binary")?;

    // Every inter-region connection goes through an `atoll link` proxy with the latency of the
    // great-circle distance between the regions.
    let specs = atoll_link::links_from_cluster(&config, 0).map_err(|e| anyhow!("{e}"))?;
    let control: std::net::SocketAddr =
        format!("127.0.0.1:{}", u32::from(port_base) + 90).parse()?;
    let links = atoll_link::LinkServer::start(specs, Some(control))
        .await
        .map_err(|e| anyhow!("cannot start the link proxies: {e}"))?;

    // One admin token for the router and the regions' admin API (promote, switchover).
    let token = format!("demo-{:016x}", rand_token());
    let mut started_regions = Vec::new();
    let mut endpoints: Vec<(String, String)> = Vec::new();
    for (name, _, _) in DEMO_REGIONS {
        let via: Vec<(String, std::net::SocketAddr)> = DEMO_REGIONS
            .iter()
            .filter(|(peer, _, _)| *peer != name)
            .filter_map(|(peer, _, _)| {
                links
                    .listen_addr(&format!("{name}->{peer}"))
                    .map(|a| (peer.to_string(), a))
            })
            .collect();
        let (child, endpoint) = start_region(&exe, &config_path, name, &dir, &via, &token).await?;
        endpoints.push((name.to_string(), endpoint.clone()));
        started_regions.push(crate::demo_control::Started {
            name: name.to_string(),
            api: endpoint,
            via,
            child,
        });
    }
    // From here on a region that exits is reported and the rest keeps running; the control
    // API kills, stops and restarts regions.
    let regions = crate::demo_control::Regions::new(
        port_base,
        Box::new(DemoSpawner {
            exe: exe.clone(),
            config: config_path.clone(),
            dir: dir.clone(),
            token: token.clone(),
            port_base,
        }),
        started_regions,
    );

    // A router in front: health-checked failover proxy, authoritative DNS and an admin API.
    let port = |off: u32| -> Result<std::net::SocketAddr> {
        Ok(format!("127.0.0.1:{}", u32::from(port_base) + off).parse()?)
    };
    let mut ropts = atoll_router::runtime::RouterOptions::new(
        std::sync::Arc::new(config.clone()),
        port(81)?,
        dir.join("router"),
        token.clone(),
    );
    ropts.proxy_listen = Some(port(80)?);
    ropts.dns_listen = Some(port(53)?);
    // The dashboard shows the last drill of each scenario: `atoll drill run --demo` keeps its
    // outcomes in the default state directory.
    ropts.global.drill_state_dir = Some(atoll_drill::outcome::default_state_dir());
    let router = atoll_router::runtime::Router::start(ropts)
        .await
        .map_err(|e| anyhow!("cannot start the router: {e}"))?;
    let control = crate::demo_control::ControlServer::start(
        port(crate::demo_control::CONTROL_OFFSET)?,
        regions.clone(),
        token.clone(),
    )
    .await?;
    let links_url = links.control_url().unwrap_or_default();
    let discovery_path = discovery.path().to_path_buf();
    regions.publish(
        discovery,
        crate::demo_control::Discovery {
            version: crate::demo_control::DISCOVERY_VERSION,
            port_base,
            pid: std::process::id(),
            data_dir: dir.display().to_string(),
            config: config_path.display().to_string(),
            token: token.clone(),
            model: model.as_str().to_string(),
            control: control.url(),
            router_admin: format!("http://{}", router.admin_addr()),
            proxy: router
                .proxy_addr()
                .map(|a| format!("http://{a}"))
                .unwrap_or_default(),
            link_control: links_url.clone(),
            regions: endpoints
                .iter()
                .map(|(name, api)| crate::demo_control::DiscoveryRegion {
                    name: name.clone(),
                    api: api.clone(),
                })
                .collect(),
        },
    )?;

    // A region subscribes to a peer's writes once heartbeats have gone both ways (up to one
    // heartbeat interval after the start): wait for that, so that the first write a user tries
    // replicates at link speed instead of waiting for it.
    let replication = wait_replication(&endpoints, REPLICATION_DEADLINE).await;

    println!(
        "atoll demo: 3 regions replicating {model} (data in {})\n",
        dir.display()
    );
    for (name, endpoint) in &endpoints {
        println!("  {name:<16} {endpoint}");
    }
    println!("\nRESP (Redis protocol, docs/design/resp.md; keys are KEYSPACE:KEY):");
    for (i, (name, _, _)) in DEMO_REGIONS.iter().enumerate() {
        println!(
            "  {name:<16} 127.0.0.1:{}",
            u32::from(port_base) + RESP_OFFSET + i as u32
        );
    }
    match &replication {
        Ok(()) => println!(
            "\nreplication: established between every pair of regions ({:.1} s after start): a write\nis readable in the other regions after about one link delay (GET /healthz says so per region)",
            started.elapsed().as_secs_f64()
        ),
        Err(waiting) => println!(
            "\nreplication: NOT established yet after {} s; waiting for {waiting}.\nWrites are kept and replicate once it is; GET /healthz of each region says when.",
            REPLICATION_DEADLINE.as_secs()
        ),
    }
    println!(
        "between regions: mutual TLS on peer ports {}..{} (each region's certificate from a fresh\ncluster CA in {}; a peer may only speak for the region its certificate names)",
        u32::from(port_base) + PEER_OFFSET,
        u32::from(port_base) + MAX_OFFSET,
        certs.display()
    );
    println!("\ninter-region round trips (through atoll link, from great-circle distance):");
    print!("  {:<16}", "");
    for (b, _, _) in DEMO_REGIONS {
        print!(" {b:>15}");
    }
    println!();
    for (a, la, loa) in DEMO_REGIONS {
        print!("  {a:<16}");
        for (b, lb, lob) in DEMO_REGIONS {
            if a == b {
                print!(" {:>15}", "-");
            } else {
                let rtt = atoll_link::geo::rtt_ms(
                    atoll_config::GeoPoint { lat: la, lon: loa },
                    atoll_config::GeoPoint { lat: lb, lon: lob },
                );
                print!(" {:>12.0} ms", rtt);
            }
        }
        println!();
    }
    println!(
        "\nrouter:\n  proxy  http://{}   (name api, latency policy; adds X-Atoll-Routed-To)\n  dns    {} udp+tcp  (zone atoll.test: api = latency, primary = failover)\n  admin  http://{}   (token {token})\ndashboard: http://{}/dashboard#token={token}   (every region live; GET /v1/global/status, /v1/global/metrics)\nlinks control: {}\ndemo control:  {}   (token {token}; kill, stop, restart regions; endpoints in {})",
        router
            .proxy_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        router.dns_addr().map(|a| a.to_string()).unwrap_or_default(),
        router.admin_addr(),
        router.admin_addr(),
        links.control_url().unwrap_or_default(),
        control.url(),
        discovery_path.display()
    );
    let (e0, e1, e2) = (&endpoints[0].1, &endpoints[1].1, &endpoints[2].1);
    // With a write lease only the primary (us-east-1) takes writes, and passive regions serve
    // no client traffic at all: the printed commands go where they work.
    let leased = model != atoll_config::Model::ActiveActive;
    let (w1, w2) = if leased { (e0, e0) } else { (e1, e2) };
    let r1 = if model == atoll_config::Model::ActivePassive {
        e0
    } else {
        e1
    };
    // The RESP ports of the regions the printed commands use: a SET where writes go, a GET
    // where reads are served.
    let resp_port = |endpoint: &str| {
        let i = endpoints
            .iter()
            .position(|(_, e)| e == endpoint)
            .unwrap_or(0);
        u32::from(port_base) + RESP_OFFSET + i as u32
    };
    let (rw, rr) = (resp_port(e0), resp_port(r1));
    println!(
        "\nTry:\n  redis-cli -p {rw} SET sessions:carol token-3\n  redis-cli -p {rr} GET sessions:carol\n  atoll kv put sessions alice token-1 --endpoint {e0}\n  atoll kv get sessions alice --endpoint {r1}\n  atoll counter incr ratelimits api --endpoint {w2}\n  atoll watch flags --prefix beta --endpoint {r1}   # in a second terminal: flag changes as they arrive\n  atoll set add flags beta dark-mode --endpoint {w1}\n  atoll kv put carts c1 apple --endpoint {e0}; atoll kv put carts c1 pear --endpoint {w2}; atoll kv get carts c1 --endpoint {r1}\n  atoll status --endpoint {e0}\n  curl -si http://{}/v1/kv/sessions/alice\n  dig @127.0.0.1 -p {} api.atoll.test +subnet=198.51.100.7/24\n  ATOLL_ADMIN_TOKEN={token} atoll router status --admin http://{}\n  {}\n  atoll link fault ls --control {}\n  {}\n  atoll demo ctl ls{pb}\n  atoll demo ctl restart us-east-1{pb}{add}\n\nconfig: {}\nlogs:   {}/<region>.log\nPress Ctrl-C to stop.",
        router
            .proxy_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        router.dns_addr().map(|a| a.port()).unwrap_or_default(),
        router.admin_addr(),
        link_fault_example(&links.control_url().unwrap_or_default()),
        links.control_url().unwrap_or_default(),
        ctl_kill_example(port_base),
        config_path.display(),
        dir.display(),
        pb = crate::demo_control::port_base_flag(port_base),
        add = if model == atoll_config::Model::ActiveActive {
            format!(
                "\n  atoll demo ctl add-region sa-east-1{pb}   # a fourth region joins the running cluster\n  atoll demo ctl remove-region sa-east-1{pb}   # ... after add-region: it leaves again (a removed name is never reused)",
                pb = crate::demo_control::port_base_flag(port_base)
            )
        } else {
            String::new()
        },
    );

    println!(
        "\nExpiring sessions and a rate limit counted across regions (`api-quota`: 5 per minute):\n  redis-cli -p {rw} SET sessions:dave token-4 EX 30\n  redis-cli -p {rr} TTL sessions:dave\n  atoll ratelimit hit api-quota user-1 --cost 3 --endpoint {e0}\n  atoll ratelimit hit api-quota user-1 --cost 3 --endpoint {w2}   # denied: 2 of 5 left, counted in both"
    );
    println!(
        "\nStrong (`seats`, linearizable, on consensus across the regions): book seat 12A only if it\nis free (--if-match 0); the second booking is refused with ATOLL-REVISION-MISMATCH:\n  atoll kv put seats 12A alice --if-match 0 --endpoint {e0}\n  atoll kv put seats 12A bob --if-match 0 --endpoint {w1}"
    );
    println!(
        "{}",
        fencing_examples(
            model,
            &token,
            &config_path,
            e0,
            &links.control_url().unwrap_or_default()
        )
    );

    // Runs until Ctrl-C (or SIGTERM): a region that exits meanwhile is reported by the
    // supervisor and the rest keeps running.
    shutdown.await;
    println!("\nstopping regions...");
    control.shutdown().await;
    router.shutdown().await;
    let reports = regions.shutdown().await;
    links.shutdown().await;
    let mut clean = true;
    for r in &reports {
        if !r.clean {
            clean = false;
            eprintln!("region {}: {}", r.name, r.detail);
        }
    }
    regions.unpublish();
    if !clean {
        bail!("the demo did not stop cleanly");
    }
    println!("stopped.");
    Ok(())
}

/// The demo's printed example of the control API: kill us-east-1 as a crash would.
fn ctl_kill_example(port_base: u16) -> String {
    format!(
        "atoll demo ctl kill us-east-1{}",
        crate::demo_control::port_base_flag(port_base)
    )
}

/// What to try for the demo's topology model: the write lease or quorum fencing at work.
fn fencing_examples(
    model: atoll_config::Model,
    token: &str,
    config: &Path,
    e0: &str,
    control: &str,
) -> String {
    let config = config.display();
    match model {
        atoll_config::Model::ActiveActive => format!(
            "\nFencing (active-active, quorum): cut us-east-1 off from both others, then writes to\n`inventory` (on_minority = read-only) are refused there while `sessions` keep working:\n  atoll link fault add us-east-1 --kind isolate --for 30s --control {control}\n  atoll kv put inventory seat-1 taken --endpoint {e0}\n  atoll kv put sessions bob token-2 --endpoint {e0}\n\nOwnership (`profiles`, owned: us:* lives in us-east-1, eu:* in eu-west-1): a write\nanywhere is forwarded to the key's home; move a home without losing anything:\n  atoll kv put profiles eu:ana lisbon --endpoint {e0}\n  ATOLL_ADMIN_TOKEN={token} atoll keyspace rehome profiles eu:ana --to us-east-1 --config {config}"
        ),
        atoll_config::Model::ActiveStandby => format!(
            "\nFencing (active-standby): us-east-1 holds the write lease; the others refuse writes and\nare promoted automatically if it goes away. Move the lease without losing anything:\n  atoll status --endpoint {e0}\n  ATOLL_ADMIN_TOKEN={token} atoll switchover eu-west-1 --config {config}\n  atoll link fault add us-east-1 --kind isolate --for 30s --control {control}"
        ),
        atoll_config::Model::ActivePassive => format!(
            "\nFencing (active-passive): us-east-1 is primary, the others are passive (no client traffic).\nPlanned move, or promotion once the primary's lease has ended:\n  ATOLL_ADMIN_TOKEN={token} atoll switchover eu-west-1 --config {config}\n  ATOLL_ADMIN_TOKEN={token} atoll promote ap-southeast-1 --config {config}"
        ),
    }
}

/// A token for the demo's admin API, different on every run.
fn rand_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The words a POSIX shell makes of `line` (run by `sh`, in an empty directory: a
    /// redirection would show as a file there and as missing words).
    fn shell_words(line: &str, dir: &std::path::Path) -> Vec<String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\n' {line}"))
            .current_dir(dir)
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{out:?}");
        let files: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert!(
            files.is_empty(),
            "the shell redirected to a file: {files:?}"
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `atoll demo` keeps its flags, and the `atoll demo ctl` commands the demo prints parse to
    /// the action they show, on the demo's port base, whatever the order of the flag.
    #[test]
    fn the_printed_ctl_commands_parse_and_plain_demo_keeps_its_flags() {
        use crate::demo_control::CtlAction;
        let parse = |words: &[&str]| match crate::Cli::try_parse_from(words).unwrap().command {
            crate::Command::Demo {
                command,
                data_dir,
                port_base,
                model,
            } => (command, data_dir, port_base, model),
            _ => panic!("not `atoll demo`: {words:?}"),
        };
        let (command, data_dir, port_base, model) = parse(&[
            "atoll",
            "demo",
            "--port-base",
            "8100",
            "--data-dir",
            "/tmp/x",
            "--model",
            "active-standby",
        ]);
        assert!(command.is_none());
        assert_eq!(data_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(port_base, 8100);
        assert_eq!(model, atoll_config::Model::ActiveStandby);
        assert_eq!(parse(&["atoll", "demo"]).2, 7100);
        for base in [7100, 8100] {
            let line = ctl_kill_example(base);
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(crate::DemoCommand::Ctl(args)) = parse(&words).0 else {
                panic!("not `atoll demo ctl`: {line}");
            };
            assert_eq!(
                (args.action, args.port_base),
                (
                    CtlAction::Kill {
                        region: "us-east-1".into()
                    },
                    base
                ),
                "{line}"
            );
        }
        let Some(crate::DemoCommand::Ctl(args)) =
            parse(&["atoll", "demo", "ctl", "--port-base", "8100", "ls"]).0
        else {
            panic!("not `atoll demo ctl`");
        };
        assert_eq!((args.action, args.port_base), (CtlAction::Ls, 8100));
        let Some(crate::DemoCommand::Ctl(args)) = parse(&[
            "atoll",
            "demo",
            "ctl",
            "add-region",
            "sa-east-1",
            "--port-base",
            "8100",
        ])
        .0
        else {
            panic!("not `atoll demo ctl`");
        };
        assert_eq!(
            (args.action, args.port_base),
            (
                CtlAction::AddRegion {
                    name: "sa-east-1".into()
                },
                8100
            )
        );
        let Some(crate::DemoCommand::Ctl(args)) =
            parse(&["atoll", "demo", "ctl", "remove-region", "sa-east-1"]).0
        else {
            panic!("not `atoll demo ctl`");
        };
        assert_eq!(
            (args.action, args.port_base),
            (
                CtlAction::RemoveRegion {
                    name: "sa-east-1".into()
                },
                7100
            )
        );
        // Demo flags and `ctl` do not mix: `ctl` finds the demo by its own --port-base.
        assert!(
            crate::Cli::try_parse_from(["atoll", "demo", "--data-dir", "/tmp/x", "ctl", "ls"])
                .is_err()
        );
    }

    /// Removing an added region's table gives back the config before it was appended, which the
    /// running regions take as that region removed; a founding region's table goes too when
    /// asked (the voter check is the caller's), and a name with no table is refused.
    #[test]
    fn an_added_regions_table_comes_out_of_the_config_and_nothing_else() {
        let base = demo_config(7100, atoll_config::Model::ActiveActive);
        let table = |name: &str, i: u16| {
            RegionToml::new(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 7100 + i)))
                .peer(SocketAddr::from((Ipv4Addr::LOCALHOST, 7200 + i)))
                .resp(SocketAddr::from((Ipv4Addr::LOCALHOST, 7110 + i)))
                .location(-23.5, -46.6)
                .voter(false)
                .render()
        };
        let with_two = format!("{base}{}{}", table("sa-east-1", 3), table("sa-east-2", 4));
        let with_first = format!("{base}{}", table("sa-east-1", 3));
        // The last table, and one in the middle.
        assert_eq!(
            without_region_table(&with_two, "sa-east-2").unwrap(),
            with_first
        );
        let without_first = without_region_table(&with_two, "sa-east-1").unwrap();
        assert_eq!(without_first, format!("{base}{}", table("sa-east-2", 4)));
        let old = atoll_config::Config::parse(&with_two, "demo").unwrap();
        let new = atoll_config::Config::parse(&without_first, "demo").unwrap();
        let change = old.reload_change(&new).unwrap();
        assert!(change.added.is_empty());
        assert_eq!(
            change
                .removed
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["sa-east-1"]
        );
        // A founding region's table comes out too, and the reload refuses that (a voter).
        let no_us = without_region_table(&with_first, "us-east-1").unwrap();
        let e = atoll_config::Config::parse(&no_us, "demo")
            .map_err(|e| e.to_string())
            .and_then(|new| {
                atoll_config::Config::parse(&with_first, "demo")
                    .unwrap()
                    .reload_change(&new)
            });
        assert!(e.is_err(), "removing us-east-1 was taken");
        let e = without_region_table(&with_first, "eu-central-1").unwrap_err();
        assert!(e.contains("no [[regions]] table of eu-central-1"), "{e}");
        // A name that only starts like another's is not it.
        let e = without_region_table(&with_first, "sa-east").unwrap_err();
        assert!(e.contains("no [[regions]] table"), "{e}");
    }

    /// A region added to the demo gets the next ports of the scheme, while there is room.
    #[test]
    fn an_added_region_gets_the_next_ports_of_the_scheme() {
        let a = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        assert_eq!(added_ports(7100, 3).unwrap(), (a(7103), a(7113), a(7203)));
        assert_eq!(added_ports(7100, 9).unwrap(), (a(7109), a(7119), a(7209)));
        let e = added_ports(7100, 10).unwrap_err();
        assert!(e.contains("the most its ports have room for"), "{e}");
        let e = added_ports(65_433, 3).unwrap_err();
        assert!(e.contains("past 65535"), "{e}");
        // The demo's own regions are at the same places.
        let config = atoll_config::Config::parse(
            &demo_config(7100, atoll_config::Model::ActiveActive),
            "demo",
        )
        .unwrap();
        for (i, r) in config.regions.iter().enumerate() {
            assert_eq!(
                added_ports(7100, i).unwrap(),
                (r.api, r.resp.unwrap(), r.peer)
            );
        }
    }

    /// The link fault the demo prints, pasted into a shell, is one `atoll link fault add` of the
    /// pair, and run against the demo's links it cuts both directions between us-east-1 and
    /// eu-west-1 (and nothing else).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_printed_link_fault_is_a_real_partition_when_pasted() {
        let config = atoll_config::Config::parse(
            &demo_config(7100, atoll_config::Model::ActiveActive),
            "demo",
        )
        .unwrap();
        let specs = atoll_link::links_from_cluster(&config, 0).unwrap();
        let links = atoll_link::LinkServer::start(specs, Some("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let url = links.control_url().unwrap();
        let example = link_fault_example(&url);

        let dir = tempfile::tempdir().unwrap();
        let words = shell_words(&example, dir.path());
        assert_eq!(
            words,
            [
                "atoll",
                "link",
                "fault",
                "add",
                "us-east-1<->eu-west-1",
                "--kind",
                "partition",
                "--for",
                "30s",
                "--control",
                url.as_str(),
            ]
        );
        let crate::Command::Link(args) = crate::Cli::try_parse_from(&words).unwrap().command else {
            panic!("not an `atoll link` command: {words:?}");
        };
        atoll_cli::link::run(args).await.unwrap();

        let faults = links.faults();
        assert_eq!(faults.len(), 1, "{faults:?}");
        assert_eq!(faults[0].target, "us-east-1<->eu-west-1");
        assert_eq!(faults[0].remaining_ms.div_ceil(1000), 30);
        for l in links.status() {
            let both_ways =
                ["us-east-1->eu-west-1", "eu-west-1->us-east-1"].contains(&l.name.as_str());
            let e = &l.effective;
            assert_eq!(
                (e.forward.blocked, e.reverse.blocked, e.stall_new),
                (both_ways, both_ways, both_ways),
                "{}",
                l.name
            );
        }
        links.shutdown().await;
    }
}
