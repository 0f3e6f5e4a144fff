//! Where links come from: a strict `links.toml`, or one link per ordered pair of regions of an
//! `atoll.toml` ([`links_from_cluster`]). `crates/atoll-link/links.example.toml` is a complete,
//! tested example.
//!
//! ```toml
//! [[links]]
//! name = "us-east-1->eu-west-1"     # A->B: traffic from region A to region B
//! listen = "127.0.0.1:7300"         # A's processes connect here...
//! upstream = "127.0.0.1:7101"       # ...and reach B's peer address
//! latency_ms = 38.9                 # one-way, client -> upstream
//! jitter_ms = 0.4
//! bandwidth = "10MB/s"              # or bytes per second (integer); omit for unlimited
//! # reverse_latency_ms / reverse_jitter_ms / reverse_bandwidth: the replies' direction
//! # (default: the same as the forward values)
//! ```

use crate::error::{LinkError, Result};
use crate::geo;
use crate::model::{LinkSpec, Shaping, regions_from_name};
use crate::units::parse_bandwidth;
use atoll_config::Config;
use atoll_core::RegionId;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    links: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    name: String,
    listen: SocketAddr,
    upstream: SocketAddr,
    /// Overrides the region parsed from the name.
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    latency_ms: f64,
    #[serde(default)]
    jitter_ms: f64,
    bandwidth: Option<RawBandwidth>,
    reverse_latency_ms: Option<f64>,
    reverse_jitter_ms: Option<f64>,
    reverse_bandwidth: Option<RawBandwidth>,
}

/// `bandwidth = 1000000` or `bandwidth = "1MB/s"`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawBandwidth {
    Bytes(i64),
    Text(String),
}

impl RawBandwidth {
    fn resolve(&self, field: &str) -> Result<u64> {
        match self {
            RawBandwidth::Bytes(n) if *n > 0 => Ok(*n as u64),
            RawBandwidth::Bytes(n) => Err(LinkError::invalid(
                field,
                format!("{n} bytes per second: must be above 0 (omit it for unlimited)"),
            )),
            RawBandwidth::Text(s) => parse_bandwidth(s, field),
        }
    }
}

/// Parses and validates the text of a links file. `source` names the file in messages.
pub fn parse_links(text: &str, source: &str) -> Result<Vec<LinkSpec>> {
    let raw: RawFile =
        toml::from_str(text).map_err(|e| LinkError::Config(format!("{source}: {e}")))?;
    let mut specs = Vec::with_capacity(raw.links.len());
    for (i, l) in raw.links.into_iter().enumerate() {
        let at = |e: LinkError| LinkError::Config(format!("{source}: links[{i}]: {e}"));
        let forward = Shaping {
            latency_ms: l.latency_ms,
            jitter_ms: l.jitter_ms,
            bandwidth_bytes_per_sec: l
                .bandwidth
                .as_ref()
                .map(|b| b.resolve("bandwidth"))
                .transpose()
                .map_err(at)?,
        };
        let reverse = Shaping {
            latency_ms: l.reverse_latency_ms.unwrap_or(forward.latency_ms),
            jitter_ms: l.reverse_jitter_ms.unwrap_or(forward.jitter_ms),
            bandwidth_bytes_per_sec: match &l.reverse_bandwidth {
                Some(b) => Some(b.resolve("reverse_bandwidth").map_err(at)?),
                None => forward.bandwidth_bytes_per_sec,
            },
        };
        let (mut from_region, mut to_region) = regions_from_name(&l.name);
        if let Some(f) = &l.from {
            from_region = Some(region(f, "from").map_err(at)?);
        }
        if let Some(t) = &l.to {
            to_region = Some(region(t, "to").map_err(at)?);
        }
        let spec = LinkSpec {
            name: l.name,
            listen: l.listen,
            upstream: l.upstream,
            from_region,
            to_region,
            forward,
            reverse,
        };
        specs.push(spec);
    }
    validate_links(&specs).map_err(|e| match e {
        LinkError::Config(m) => LinkError::Config(format!("{source}: {m}")),
        other => other,
    })?;
    Ok(specs)
}

/// Reads, parses and validates a links file.
pub fn load_links(path: &Path) -> Result<Vec<LinkSpec>> {
    let text = std::fs::read_to_string(path).map_err(|source| LinkError::Io {
        what: format!("cannot read {}", path.display()),
        source,
    })?;
    parse_links(&text, &path.display().to_string())
}

fn region(name: &str, field: &str) -> Result<RegionId> {
    RegionId::new(name).map_err(|e| LinkError::invalid(field, e.to_string()))
}

/// Whether two listen addresses would collide: same non-zero port on the same IP, or on any IP
/// when either is a wildcard (`0.0.0.0`, `::`).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks a set of links: at least one, each valid ([`LinkSpec::validate`]), no upstream port 0,
/// unique names, no two listening on overlapping addresses. Errors are [`LinkError::Config`]
/// naming the link(s).
pub fn validate_links(specs: &[LinkSpec]) -> Result<()> {
    if specs.is_empty() {
        return Err(LinkError::Config(
            "no links: declare at least one [[links]] table".into(),
        ));
    }
    for (i, s) in specs.iter().enumerate() {
        let at = |e: LinkError| LinkError::Config(format!("links[{i}] `{}`: {e}", s.name));
        s.validate().map_err(at)?;
        if s.upstream.port() == 0 {
            return Err(at(LinkError::invalid(
                "upstream",
                "port 0 is not an address",
            )));
        }
        if s.upstream.ip().is_unspecified() {
            return Err(at(LinkError::invalid(
                "upstream",
                format!(
                    "{} is a wildcard address, not a destination",
                    s.upstream.ip()
                ),
            )));
        }
        for (j, t) in specs.iter().enumerate().take(i) {
            if t.name == s.name {
                return Err(LinkError::Config(format!(
                    "links[{j}] and links[{i}] are both named `{}`; names must be unique",
                    s.name
                )));
            }
            if overlaps(t.listen, s.listen) {
                return Err(LinkError::Config(format!(
                    "links[{j}] `{}` ({}) and links[{i}] `{}` ({}) listen on the same port",
                    t.name, t.listen, s.name, s.listen
                )));
            }
        }
    }
    Ok(())
}

/// The shaping the geo model gives a pair of locations: [`geo::one_way_ms`] rounded to 0.1 ms,
/// jitter [`geo::default_jitter_ms`], no bandwidth limit.
pub fn geo_shaping(a: geo::GeoPoint, b: geo::GeoPoint) -> Shaping {
    let one_way = (geo::one_way_ms(a, b) * 10.0).round() / 10.0;
    Shaping {
        latency_ms: one_way,
        jitter_ms: geo::default_jitter_ms(one_way),
        bandwidth_bytes_per_sec: None,
    }
}

/// One link per ordered pair of the cluster's regions, in file order: for regions `a` then `b`,
/// link `a->b` listens on `127.0.0.1:<listen_base_port + k>` (k counting from 0 over the pairs
/// `(0,1), (0,2), ..., (1,0), (1,2), ...`) and forwards to `b`'s peer address. When both regions
/// have a `location`, both directions get [`geo_shaping`]; otherwise the link is unshaped.
/// Region `a` reaches `b` through the link by dialing its `listen` address instead of `b`'s peer
/// address (`atoll region --peer-via b=ADDR`).
pub fn links_from_cluster(config: &Config, listen_base_port: u16) -> Result<Vec<LinkSpec>> {
    let n = config.regions.len();
    if n < 2 {
        return Err(LinkError::Config(format!(
            "the cluster has {n} region(s); links need at least two"
        )));
    }
    let mut specs = Vec::with_capacity(n * (n - 1));
    for a in &config.regions {
        for b in &config.regions {
            if a.name == b.name {
                continue;
            }
            let k = specs.len();
            let port = if listen_base_port == 0 {
                0
            } else {
                u16::try_from(k)
                    .ok()
                    .and_then(|k| listen_base_port.checked_add(k))
                    .ok_or_else(|| {
                        LinkError::Config(format!(
                            "--listen-base {listen_base_port} leaves no room for {} links below port 65536",
                            n * (n - 1)
                        ))
                    })?
            };
            let shaping = match (a.location, b.location) {
                (Some(la), Some(lb)) => geo_shaping(la, lb),
                _ => Shaping::NONE,
            };
            specs.push(LinkSpec {
                name: format!("{}->{}", a.name, b.name),
                listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                upstream: b.peer,
                from_region: Some(a.name.clone()),
                to_region: Some(b.name.clone()),
                forward: shaping,
                reverse: shaping,
            });
        }
    }
    for s in &specs {
        for r in &config.regions {
            for (what, addr) in [("api", r.api), ("peer", r.peer)] {
                if overlaps(s.listen, addr) {
                    return Err(LinkError::Config(format!(
                        "link `{}` would listen on {}, which is region {}'s {what} address; choose another --listen-base",
                        s.name, s.listen, r.name
                    )));
                }
            }
        }
    }
    validate_links(&specs)?;
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[links]]
name = "us-east-1->eu-west-1"
listen = "127.0.0.1:7300"
upstream = "127.0.0.1:7101"
latency_ms = 38.9
jitter_ms = 0.4
bandwidth = "10MB/s"

[[links]]
name = "lab"
listen = "127.0.0.1:7301"
upstream = "127.0.0.1:7102"
latency_ms = 5
reverse_latency_ms = 50
reverse_bandwidth = 4096
from = "us-east-1"
"#;

    #[test]
    fn the_shipped_example_parses() {
        let specs =
            parse_links(include_str!("../links.example.toml"), "links.example.toml").unwrap();
        assert_eq!(specs.len(), 6);
        assert_eq!(specs[4].forward.bandwidth_bytes_per_sec, Some(12_500_000));
        assert_eq!(specs[3].to_region.as_ref().unwrap().as_str(), "us-east-1");
    }

    #[test]
    fn parses_a_good_file() {
        let specs = parse_links(GOOD, "links.toml").unwrap();
        assert_eq!(specs.len(), 2);
        let a = &specs[0];
        assert_eq!(a.from_region.as_ref().unwrap().as_str(), "us-east-1");
        assert_eq!(a.to_region.as_ref().unwrap().as_str(), "eu-west-1");
        assert_eq!(a.forward.latency_ms, 38.9);
        assert_eq!(a.forward.bandwidth_bytes_per_sec, Some(10_000_000));
        assert_eq!(a.reverse, a.forward, "reverse defaults to forward");
        let b = &specs[1];
        assert_eq!(b.forward, Shaping::delay(5.0));
        assert_eq!(b.reverse.latency_ms, 50.0);
        assert_eq!(b.reverse.bandwidth_bytes_per_sec, Some(4096));
        assert_eq!(b.from_region.as_ref().unwrap().as_str(), "us-east-1");
        assert!(b.to_region.is_none());
    }

    #[test]
    fn rejects_bad_files_with_clear_errors() {
        let base =
            "[[links]]\nname = \"a\"\nlisten = \"127.0.0.1:7300\"\nupstream = \"127.0.0.1:7101\"\n";
        let cases: Vec<(String, &str)> = vec![
            (format!("{base}colour = \"red\"\n"), "colour"),
            (format!("{base}latency_ms = -5\n"), "latency_ms"),
            (format!("{base}latency_ms = 70000\n"), "latency_ms"),
            (
                format!("{base}latency_ms = 1\njitter_ms = 11\n"),
                "jitter_ms",
            ),
            (format!("{base}bandwidth = 0\n"), "bandwidth"),
            (format!("{base}bandwidth = \"0MB/s\"\n"), "bandwidth"),
            (
                format!("{base}reverse_bandwidth = \"fast\"\n"),
                "reverse_bandwidth",
            ),
            (format!("{base}latency_ms = \"ten\"\n"), "latency_ms"),
            (format!("{base}from = \"US EAST\"\n"), "from"),
            (base.replace("7300", "7101"), "itself"),
            (base.replace("\"a\"", "\"a/b\""), "name"),
            (base.replace("127.0.0.1:7101", "127.0.0.1:0"), "port 0"),
            (base.replace("127.0.0.1:7300", "localhost:7300"), "listen"),
            (
                format!("{base}{}", base.replace("7101", "7102")),
                "names must be unique",
            ),
            (
                format!(
                    "{base}{}",
                    base.replace("\"a\"", "\"b\"")
                        .replace("127.0.0.1:7300", "0.0.0.0:7300")
                ),
                "same port",
            ),
            ("links = []\n".into(), "no links"),
            ("".into(), "links"),
            ("[[links]]\nname = \"a\"\n".into(), "listen"),
        ];
        for (text, needle) in cases {
            let e = parse_links(&text, "links.toml").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "expected `{needle}` in: {msg}\n---\n{text}"
            );
            assert!(msg.contains("links.toml"), "{msg}");
        }
        // Port 0 (ephemeral) may repeat: it never collides.
        let two = format!(
            "{}{}",
            base.replace("7300", "0"),
            base.replace("\"a\"", "\"b\"").replace("7300", "0")
        );
        assert_eq!(parse_links(&two, "x").unwrap().len(), 2);
    }

    fn cluster(with_location: bool) -> Config {
        let loc = |lat: f64, lon: f64| {
            if with_location {
                format!("location = {{ lat = {lat}, lon = {lon} }}\n")
            } else {
                String::new()
            }
        };
        let text = format!(
            "[cluster]\nname = \"demo\"\n\n[[regions]]\nname = \"us-east-1\"\napi = \"127.0.0.1:7100\"\n{}\n[[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\n{}\n[[regions]]\nname = \"ap-southeast-1\"\napi = \"127.0.0.1:7102\"\n{}\n[[keyspaces]]\nname = \"s\"\npolicy = \"lww\"\n",
            loc(38.9, -77.4),
            loc(53.3, -6.3),
            loc(1.35, 103.8)
        );
        Config::parse(&text, "atoll.toml").unwrap()
    }

    #[test]
    fn one_link_per_ordered_pair() {
        let specs = links_from_cluster(&cluster(true), 7300).unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "us-east-1->eu-west-1",
                "us-east-1->ap-southeast-1",
                "eu-west-1->us-east-1",
                "eu-west-1->ap-southeast-1",
                "ap-southeast-1->us-east-1",
                "ap-southeast-1->eu-west-1",
            ]
        );
        for (k, s) in specs.iter().enumerate() {
            assert_eq!(s.listen, format!("127.0.0.1:{}", 7300 + k).parse().unwrap());
            assert_eq!(s.forward, s.reverse);
        }
        assert_eq!(specs[0].upstream, "127.0.0.1:7101".parse().unwrap());
        assert_eq!(specs[0].forward.latency_ms, 39.8);
        assert_eq!(specs[0].forward.jitter_ms, 0.4);
        assert_eq!(specs[2].forward, specs[0].forward, "symmetric");
        assert_eq!(specs[1].forward.latency_ms, 111.3);
        assert_eq!(specs[3].forward.latency_ms, 80.5);

        let plain = links_from_cluster(&cluster(false), 7300).unwrap();
        assert!(plain.iter().all(|s| s.forward == Shaping::NONE));

        let e = links_from_cluster(&cluster(true), 7098).unwrap_err();
        assert!(e.to_string().contains("us-east-1's api address"), "{e}");
        let e = links_from_cluster(&cluster(true), 65533).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
        // Base 0: every link on an ephemeral port.
        let eph = links_from_cluster(&cluster(true), 0).unwrap();
        assert!(eph.iter().all(|s| s.listen.port() == 0));
    }
}
