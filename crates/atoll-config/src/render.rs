//! Writing an `atoll.toml`: [`ClusterToml`], a typed description of a cluster config that
//! renders as the text [`Config::parse`](crate::Config::parse) reads.
//!
//! The one place cluster configs are written as text: `atoll demo`, the testkit's clusters, the
//! benchmarks and the end-to-end tests build a [`ClusterToml`] (with a [`RouterToml`] for the
//! `[router]` section) instead of formatting TOML by hand. Keys the types do not model (a
//! keyspace's `on_minority`, a `[fencing]` section) are added as lines or sections of their own,
//! written as given.
//!
//! ```
//! use atoll_config::render::{ClusterToml, KeyspaceToml, RegionToml, Tls};
//! use atoll_config::{Config, Model, Policy};
//!
//! let text = ClusterToml::new("demo")
//!     .model(Model::ActiveStandby)
//!     .tls(Tls::Insecure)
//!     .region(RegionToml::new("us-east-1", "127.0.0.1:7100".parse().unwrap()))
//!     .region(RegionToml::new("eu-west-1", "127.0.0.1:7101".parse().unwrap()))
//!     .keyspace(KeyspaceToml::new("sessions", Policy::Lww))
//!     .render();
//! let config = Config::parse(&text, "atoll.toml").unwrap();
//! assert_eq!(config.regions.len(), 2);
//! ```

use crate::Model;
use atoll_core::op::Policy;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// Approximate coordinates (degrees) of the cloud regions atoll's starting configs, demo, tests
/// and benchmarks name: `(name, lat, lon)`, in the order `atoll advise` uses them.
pub const CLOUD_REGIONS: [(&str, f64, f64); 7] = [
    ("us-east-1", 38.9, -77.4),
    ("eu-west-1", 53.3, -6.3),
    ("ap-southeast-1", 1.35, 103.8),
    ("us-west-2", 45.8, -119.7),
    ("eu-central-1", 50.1, 8.7),
    ("ap-northeast-1", 35.7, 139.7),
    ("sa-east-1", -23.5, -46.6),
];

/// The first three of [`CLOUD_REGIONS`] (`us-east-1`, `eu-west-1`, `ap-southeast-1`): the
/// three-region cluster of the demo, the examples and most tests.
pub const THREE_REGIONS: [(&str, f64, f64); 3] =
    [CLOUD_REGIONS[0], CLOUD_REGIONS[1], CLOUD_REGIONS[2]];

/// `[cluster.tls]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Tls {
    /// `insecure = true`: plain HTTP between regions.
    Insecure,
    /// Mutual TLS with the files `atoll certs init --out DIR` writes: `DIR/ca.pem`,
    /// `DIR/{region}.pem`, `DIR/{region}.key` (relative to the config file unless absolute).
    Certs(String),
}

/// `[cluster.arbiter]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ArbiterToml {
    pub name: String,
    pub peer: SocketAddr,
    /// `location = { lat, lon }`.
    pub location: Option<(f64, f64)>,
}

/// One `[[regions]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionToml {
    pub name: String,
    pub api: SocketAddr,
    /// The peer listener; `None` (or the api address) leaves `peer` out: the replication routes
    /// then share the client listener.
    pub peer: Option<SocketAddr>,
    pub dns_address: Option<IpAddr>,
    /// `location = { lat, lon }`, degrees.
    pub location: Option<(f64, f64)>,
    /// `resp = "IP:PORT"`: the region's RESP (Redis protocol) listener.
    pub resp: Option<SocketAddr>,
    /// `voter = false` when false: a replica added to a running cluster
    /// (`docs/design/adding-regions.md`). True (the default, not written) otherwise.
    pub voter: bool,
}

impl RegionToml {
    pub fn new(name: &str, api: SocketAddr) -> Self {
        Self {
            name: name.to_string(),
            api,
            peer: None,
            dns_address: None,
            location: None,
            resp: None,
            voter: true,
        }
    }

    /// `false`: a replica, written `voter = false`.
    pub fn voter(mut self, voter: bool) -> Self {
        self.voter = voter;
        self
    }

    /// The region's `[[regions]]` table, starting with a blank line, as
    /// [`ClusterToml::render`] writes it: what appending a region to a config file appends.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n[[regions]]\nname = {}\napi = \"{}\"",
            quoted(&self.name),
            self.api
        );
        if let Some(peer) = self.peer.filter(|p| *p != self.api) {
            let _ = writeln!(out, "peer = \"{peer}\"");
        }
        if let Some(ip) = self.dns_address {
            let _ = writeln!(out, "dns_address = \"{ip}\"");
        }
        if let Some(a) = self.resp {
            let _ = writeln!(out, "resp = \"{a}\"");
        }
        if let Some((lat, lon)) = self.location {
            let _ = writeln!(out, "{}", location(lat, lon));
        }
        if !self.voter {
            out.push_str("voter = false\n");
        }
        out
    }

    pub fn resp(mut self, addr: SocketAddr) -> Self {
        self.resp = Some(addr);
        self
    }

    pub fn peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    pub fn dns_address(mut self, ip: IpAddr) -> Self {
        self.dns_address = Some(ip);
        self
    }

    pub fn location(mut self, lat: f64, lon: f64) -> Self {
        self.location = Some((lat, lon));
        self
    }
}

/// One `[[keyspaces]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyspaceToml {
    pub name: String,
    pub policy: Policy,
    /// More `key = value` lines of the table, as given (e.g. `on_minority = "read-only"`).
    pub lines: Vec<String>,
}

impl KeyspaceToml {
    pub fn new(name: &str, policy: Policy) -> Self {
        Self {
            name: name.to_string(),
            policy,
            lines: Vec::new(),
        }
    }

    /// Adds a `key = value` line to the table, as given.
    pub fn line(mut self, line: &str) -> Self {
        self.lines.push(line.to_string());
        self
    }
}

/// A whole cluster config. Sections are written in a fixed order: the header comments,
/// `[cluster]`, `[cluster.tls]`, `[cluster.arbiter]`, the regions, the keyspaces,
/// `[replication]`, then the extra sections as given.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterToml {
    /// Comment lines at the top of the file (without the `# `).
    pub header: Vec<String>,
    pub name: String,
    pub model: Model,
    pub max_clock_offset_ms: Option<u64>,
    /// `None`: no `[cluster.tls]` (enough for one region).
    pub tls: Option<Tls>,
    pub arbiter: Option<ArbiterToml>,
    pub regions: Vec<RegionToml>,
    pub keyspaces: Vec<KeyspaceToml>,
    /// `[replication] heartbeat_interval_ms`.
    pub heartbeat_interval_ms: Option<u64>,
    /// `[replication] max_lag_secs`.
    pub max_lag_secs: Option<u64>,
    /// `[replication] oplog_retention` (a duration, e.g. `"0s"`).
    pub oplog_retention: Option<String>,
    /// Written after the rest, each as given (`[router]` from [`RouterToml::render`],
    /// `[fencing]`, more `[[keyspaces]]`, ...).
    pub sections: Vec<String>,
}

impl ClusterToml {
    pub fn new(name: &str) -> Self {
        Self {
            header: Vec::new(),
            name: name.to_string(),
            model: Model::default(),
            max_clock_offset_ms: None,
            tls: None,
            arbiter: None,
            regions: Vec::new(),
            keyspaces: Vec::new(),
            heartbeat_interval_ms: None,
            max_lag_secs: None,
            oplog_retention: None,
            sections: Vec::new(),
        }
    }

    /// A comment line at the top of the file (e.g. who wrote it).
    pub fn header(mut self, line: &str) -> Self {
        self.header.push(line.to_string());
        self
    }

    pub fn model(mut self, model: Model) -> Self {
        self.model = model;
        self
    }

    pub fn max_clock_offset_ms(mut self, ms: u64) -> Self {
        self.max_clock_offset_ms = Some(ms);
        self
    }

    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn arbiter(mut self, arbiter: ArbiterToml) -> Self {
        self.arbiter = Some(arbiter);
        self
    }

    pub fn region(mut self, region: RegionToml) -> Self {
        self.regions.push(region);
        self
    }

    pub fn keyspace(mut self, keyspace: KeyspaceToml) -> Self {
        self.keyspaces.push(keyspace);
        self
    }

    pub fn heartbeat_interval_ms(mut self, ms: u64) -> Self {
        self.heartbeat_interval_ms = Some(ms);
        self
    }

    pub fn max_lag_secs(mut self, secs: u64) -> Self {
        self.max_lag_secs = Some(secs);
        self
    }

    /// A section written after the rest, as given.
    pub fn section(mut self, text: &str) -> Self {
        self.sections.push(text.to_string());
        self
    }

    /// The config as TOML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(
            out,
            "[cluster]\nname = {}\nmodel = \"{}\"",
            quoted(&self.name),
            self.model
        );
        if let Some(ms) = self.max_clock_offset_ms {
            let _ = writeln!(out, "max_clock_offset_ms = {ms}");
        }
        match &self.tls {
            None => {}
            Some(Tls::Insecure) => out.push_str("\n[cluster.tls]\ninsecure = true\n"),
            Some(Tls::Certs(dir)) => {
                let _ = writeln!(
                    out,
                    "\n[cluster.tls]\nca = {}\ncert = {}\nkey = {}",
                    quoted(&format!("{dir}/ca.pem")),
                    quoted(&format!("{dir}/{{region}}.pem")),
                    quoted(&format!("{dir}/{{region}}.key")),
                );
            }
        }
        if let Some(a) = &self.arbiter {
            let _ = writeln!(
                out,
                "\n[cluster.arbiter]\nname = {}\npeer = \"{}\"",
                quoted(&a.name),
                a.peer
            );
            if let Some((lat, lon)) = a.location {
                let _ = writeln!(out, "{}", location(lat, lon));
            }
        }
        for r in &self.regions {
            out.push_str(&r.render());
        }
        for k in &self.keyspaces {
            let _ = writeln!(
                out,
                "\n[[keyspaces]]\nname = {}\npolicy = \"{}\"",
                quoted(&k.name),
                k.policy
            );
            for line in &k.lines {
                let _ = writeln!(out, "{line}");
            }
        }
        if self.heartbeat_interval_ms.is_some()
            || self.max_lag_secs.is_some()
            || self.oplog_retention.is_some()
        {
            out.push_str("\n[replication]\n");
            if let Some(ms) = self.heartbeat_interval_ms {
                let _ = writeln!(out, "heartbeat_interval_ms = {ms}");
            }
            if let Some(secs) = self.max_lag_secs {
                let _ = writeln!(out, "max_lag_secs = {secs}");
            }
            if let Some(r) = &self.oplog_retention {
                let _ = writeln!(out, "oplog_retention = \"{r}\"");
            }
        }
        for s in &self.sections {
            out.push('\n');
            out.push_str(s);
            if !s.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// One `[[router.names]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterName {
    pub name: String,
    /// `latency`, `failover`, ...
    pub policy: String,
    /// `regions = [...]` (in failover order); empty: left out.
    pub regions: Vec<String>,
    pub ttl_secs: Option<u64>,
}

/// The `[router]` section with `[router.health]`, `[[router.names]]` and
/// `[[router.client_locations]]`, for [`ClusterToml::section`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouterToml {
    pub zone: Option<String>,
    pub ttl_secs: Option<u64>,
    /// `[router.health]` keys and values, in order (`interval_ms`, `failure_threshold`, ...);
    /// empty: no `[router.health]`.
    pub health: Vec<(String, u64)>,
    pub names: Vec<RouterName>,
    /// `(prefix, lat, lon)`.
    pub client_locations: Vec<(String, f64, f64)>,
}

impl RouterToml {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_string());
        self
    }

    pub fn ttl_secs(mut self, secs: u64) -> Self {
        self.ttl_secs = Some(secs);
        self
    }

    /// A `[router.health]` key.
    pub fn health(mut self, key: &str, value: u64) -> Self {
        self.health.push((key.to_string(), value));
        self
    }

    /// A `[[router.names]]` entry; `regions` empty: no `regions` key.
    pub fn name(mut self, name: &str, policy: &str, regions: &[&str]) -> Self {
        self.names.push(RouterName {
            name: name.to_string(),
            policy: policy.to_string(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            ttl_secs: None,
        });
        self
    }

    pub fn client_location(mut self, prefix: &str, lat: f64, lon: f64) -> Self {
        self.client_locations.push((prefix.to_string(), lat, lon));
        self
    }

    /// The section as TOML text.
    pub fn render(&self) -> String {
        let mut out = String::from("[router]\n");
        if let Some(zone) = &self.zone {
            let _ = writeln!(out, "zone = {}", quoted(zone));
        }
        if let Some(ttl) = self.ttl_secs {
            let _ = writeln!(out, "ttl_secs = {ttl}");
        }
        if !self.health.is_empty() {
            out.push_str("\n[router.health]\n");
            for (key, value) in &self.health {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        for n in &self.names {
            let _ = writeln!(
                out,
                "\n[[router.names]]\nname = {}\npolicy = {}",
                quoted(&n.name),
                quoted(&n.policy)
            );
            if !n.regions.is_empty() {
                let list: Vec<String> = n.regions.iter().map(|r| quoted(r)).collect();
                let _ = writeln!(out, "regions = [{}]", list.join(", "));
            }
            if let Some(ttl) = n.ttl_secs {
                let _ = writeln!(out, "ttl_secs = {ttl}");
            }
        }
        for (prefix, lat, lon) in &self.client_locations {
            let _ = writeln!(
                out,
                "\n[[router.client_locations]]\nprefix = {}\nlat = {lat:?}\nlon = {lon:?}",
                quoted(prefix)
            );
        }
        out
    }
}

/// `location = { lat = .., lon = .. }` (`{:?}` keeps a decimal point, so TOML reads a float).
fn location(lat: f64, lon: f64) -> String {
    format!("location = {{ lat = {lat:?}, lon = {lon:?} }}")
}

/// `s` as a TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_rendered_config_reads_back_as_written() {
        let router = RouterToml::new()
            .zone("atoll.test")
            .ttl_secs(30)
            .health("interval_ms", 500)
            .health("failure_threshold", 2)
            .name("api", "latency", &[])
            .name("primary", "failover", &["eu-west-1", "us-east-1"])
            .client_location("198.51.100.0/24", 48.9, 2.35);
        let text = ClusterToml::new("t-1")
            .header("Written by a test.")
            .model(Model::ActiveStandby)
            .max_clock_offset_ms(900)
            .tls(Tls::Certs("certs".into()))
            .arbiter(ArbiterToml {
                name: "arbiter".into(),
                peer: addr(7290),
                location: Some((50.1, 8.7)),
            })
            .region(
                RegionToml::new("us-east-1", addr(7100))
                    .peer(addr(7200))
                    .dns_address("127.0.0.11".parse().unwrap())
                    .location(38.9, -77.4),
            )
            .region(
                RegionToml::new("eu-west-1", addr(7101))
                    .peer(addr(7201))
                    .location(53.0, -6.3),
            )
            .keyspace(
                KeyspaceToml::new("sessions", Policy::Lww).line("on_minority = \"read-only\""),
            )
            .keyspace(KeyspaceToml::new("ratelimits", Policy::Counter))
            .heartbeat_interval_ms(200)
            .max_lag_secs(7)
            .section(&router.render())
            .section("[fencing]\ninitial_primary = \"us-east-1\"")
            .render();
        assert!(
            text.starts_with("# Written by a test.\n[cluster]\n"),
            "{text}"
        );
        let c = Config::parse(&text, "atoll.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.cluster.name, "t-1");
        assert_eq!(c.cluster.model, Model::ActiveStandby);
        assert_eq!(c.cluster.max_clock_offset_ms, 900);
        assert_eq!(c.regions.len(), 2);
        let us = c.region("us-east-1").unwrap();
        assert_eq!((us.api, us.peer), (addr(7100), addr(7200)));
        assert_eq!(us.dns_address, "127.0.0.11".parse::<IpAddr>().unwrap());
        // 53.0 stays a float.
        assert!(text.contains("lat = 53.0"), "{text}");
        assert_eq!(c.keyspace("ratelimits").unwrap().policy, Policy::Counter);
        assert_eq!(c.keyspaces.len(), 2);
        assert_eq!(c.replication.heartbeat_interval_ms, 200);
        let router = c.router.as_ref().unwrap();
        assert_eq!(router.names.len(), 2);
    }

    /// A region table appended at the end of a file, after its `[router]` and `[fencing]`
    /// sections (as `atoll demo ctl add-region` does), is a region of the config: the reload
    /// rule takes it as the one region added.
    #[test]
    fn a_replica_appended_after_every_section_is_a_region_added() {
        let text = ClusterToml::new("t")
            .tls(Tls::Certs("certs".into()))
            .region(RegionToml::new("us-east-1", addr(7100)).peer(addr(7200)))
            .region(RegionToml::new("eu-west-1", addr(7101)).peer(addr(7201)))
            .region(RegionToml::new("ap-southeast-1", addr(7102)).peer(addr(7202)))
            .keyspace(KeyspaceToml::new("sessions", Policy::Lww))
            .section(&RouterToml::new().name("api", "latency", &[]).render())
            .section("[fencing]\nquorum = true")
            .render();
        let table = RegionToml::new("sa-east-1", addr(7103))
            .peer(addr(7203))
            .resp(addr(7113))
            .location(-23.5, -46.6)
            .voter(false)
            .render();
        assert!(table.starts_with("\n[[regions]]\n") && table.ends_with("voter = false\n"));
        let old = Config::parse(&text, "atoll.toml").unwrap();
        let new = Config::parse(&format!("{text}{table}"), "atoll.toml")
            .unwrap_or_else(|e| panic!("{e}\n{text}{table}"));
        let change = old.reload_change(&new).unwrap();
        assert!(change.removed.is_empty());
        let added = change.added;
        assert_eq!(added.len(), 1);
        let sa = &added[0];
        assert_eq!(sa.name.as_str(), "sa-east-1");
        assert_eq!(
            (sa.api, sa.peer, sa.resp),
            (addr(7103), addr(7203), Some(addr(7113)))
        );
        assert!(!sa.voter);
        assert!(sa.location.is_some());
        // A voter table says nothing about it.
        assert!(!RegionToml::new("x", addr(1)).render().contains("voter"));
    }

    #[test]
    fn an_insecure_config_with_no_optional_sections_reads_back() {
        let text = ClusterToml::new("plain")
            .tls(Tls::Insecure)
            .region(RegionToml::new("us-east-1", addr(7100)).peer(addr(7100)))
            .region(RegionToml::new("eu-west-1", addr(7101)))
            .keyspace(KeyspaceToml::new("flags", Policy::Set))
            .render();
        assert!(!text.contains("[replication]"), "{text}");
        // A peer equal to the api is left out (the replication routes share the client
        // listener), and read back as the api.
        assert!(!text.contains("peer ="), "{text}");
        let c = Config::parse(&text, "atoll.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.cluster.model, Model::ActiveActive);
        assert_eq!(c.region("us-east-1").unwrap().peer, addr(7100));
        assert_eq!(c.keyspace("flags").unwrap().policy, Policy::Set);
    }

    #[test]
    fn strings_are_quoted_for_toml() {
        assert_eq!(quoted("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
