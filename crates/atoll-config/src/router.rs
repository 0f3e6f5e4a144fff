//! `[router]`: the global traffic manager (health checks, the HTTP proxy's limits and timeouts,
//! routed names, DNS zone).

use crate::raw::Ctx;
use crate::{ConfigError, RegionConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use toml::Spanned;

/// Default answer TTL: 30-60 s lets clients move within a minute of a failover without flooding
/// the servers; above 60 s `config check` warns.
pub const DEFAULT_TTL_SECS: u32 = 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouter {
    #[serde(default)]
    zone: Option<Spanned<String>>,
    #[serde(default)]
    ttl_secs: Option<Spanned<i64>>,
    #[serde(default)]
    no_healthy: Option<NoHealthyPolicy>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    proxy: Option<RawProxy>,
    #[serde(default)]
    names: Vec<Spanned<RawName>>,
    #[serde(default)]
    client_locations: Vec<Spanned<RawClientLocation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    failure_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    recovery_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    initial: Option<InitialHealth>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    expect_status: Option<Spanned<i64>>,
    #[serde(default)]
    expect_body: Option<String>,
    #[serde(default)]
    hold_down_ms: Option<Spanned<i64>>,
    #[serde(default)]
    outlier_failures: Option<Spanned<i64>>,
    #[serde(default)]
    ramp_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    #[serde(default)]
    connect_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    request_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    idle_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    max_body_bytes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawName {
    name: Spanned<String>,
    policy: RoutePolicy,
    #[serde(default)]
    regions: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    weights: Option<BTreeMap<String, Spanned<i64>>>,
    #[serde(default)]
    ttl_secs: Option<Spanned<i64>>,
    #[serde(default)]
    no_healthy: Option<NoHealthyPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientLocation {
    prefix: Spanned<String>,
    lat: Spanned<f64>,
    lon: Spanned<f64>,
}

/// Routing policy of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutePolicy {
    Latency,
    Failover,
    Weighted,
}

/// Behaviour when no region is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoHealthyPolicy {
    #[default]
    FailOpen,
    FailClosed,
    LastKnownGood,
}

impl NoHealthyPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            NoHealthyPolicy::FailOpen => "fail-open",
            NoHealthyPolicy::FailClosed => "fail-closed",
            NoHealthyPolicy::LastKnownGood => "last-known-good",
        }
    }
}

impl RoutePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutePolicy::Latency => "latency",
            RoutePolicy::Failover => "failover",
            RoutePolicy::Weighted => "weighted",
        }
    }
}

/// Whether a region is routed to before its first check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitialHealth {
    /// Not routed to before its first good check (the default).
    #[default]
    Unhealthy,
    Healthy,
}

/// `[router.health]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterHealthConfig {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    pub initial: InitialHealth,
    pub path: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub hold_down_ms: u64,
    pub outlier_failures: u32,
    pub ramp_secs: u64,
}

impl Default for RouterHealthConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            timeout_ms: 800,
            failure_threshold: 3,
            recovery_threshold: 2,
            initial: InitialHealth::Unhealthy,
            path: "/healthz".into(),
            expect_status: 200,
            expect_body: None,
            hold_down_ms: 5000,
            outlier_failures: 5,
            ramp_secs: 30,
        }
    }
}

/// Accepted `router.proxy.connect_timeout_ms`.
pub const PROXY_CONNECT_TIMEOUT_MS: RangeInclusive<u64> = 10..=60_000;
/// Accepted `router.proxy.request_timeout_ms`.
pub const PROXY_REQUEST_TIMEOUT_MS: RangeInclusive<u64> = 100..=600_000;
/// Accepted `router.proxy.idle_timeout_ms` (0: idle connections are not kept).
pub const PROXY_IDLE_TIMEOUT_MS: RangeInclusive<u64> = 0..=3_600_000;
/// Accepted `router.proxy.max_body_bytes`: 1 KiB to 1 GiB.
pub const PROXY_MAX_BODY_BYTES: RangeInclusive<u64> = 1024..=(1 << 30);

/// `[router.proxy]`: limits and timeouts of the router's HTTP proxy (`atoll router --proxy`).
/// The command line can override each (`--proxy-connect-timeout`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct RouterProxyConfig {
    /// Longest wait for a TCP connection to a region. A request that could not connect never
    /// reached the region, so it is retried on the next one, whatever its method.
    pub connect_timeout_ms: u64,
    /// Longest wait for a region's response head once the request is sent, connecting included.
    /// A request that times out may have reached the region: only idempotent ones are retried.
    pub request_timeout_ms: u64,
    /// How long an idle connection to a region is kept for the next request (0: not kept).
    pub idle_timeout_ms: u64,
    /// Largest request body the proxy buffers (to be able to replay it on another region);
    /// larger requests get `413 ATOLL-REQUEST-TOO-LARGE`.
    pub max_body_bytes: u64,
}

impl Default for RouterProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 1_000,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 30_000,
            max_body_bytes: 16 << 20,
        }
    }
}

impl RouterProxyConfig {
    /// Checks every value's range and that connecting can time out before the whole request
    /// does. On failure: the key (`connect_timeout_ms`, ...) and what is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let ranges = [
            (
                "connect_timeout_ms",
                self.connect_timeout_ms,
                &PROXY_CONNECT_TIMEOUT_MS,
            ),
            (
                "request_timeout_ms",
                self.request_timeout_ms,
                &PROXY_REQUEST_TIMEOUT_MS,
            ),
            (
                "idle_timeout_ms",
                self.idle_timeout_ms,
                &PROXY_IDLE_TIMEOUT_MS,
            ),
            ("max_body_bytes", self.max_body_bytes, &PROXY_MAX_BODY_BYTES),
        ];
        for (key, value, range) in ranges {
            if !range.contains(&value) {
                return Err((
                    key,
                    format!(
                        "{value} is out of range: must be {} to {}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        if self.connect_timeout_ms >= self.request_timeout_ms {
            return Err((
                "connect_timeout_ms",
                format!(
                    "the connect timeout ({} ms) must be shorter than the request timeout ({} ms), which includes connecting",
                    self.connect_timeout_ms, self.request_timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

/// One routed name (`[[router.names]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedName {
    /// Fully qualified, lower case, with the trailing dot (`api.atoll.test.`).
    pub fqdn: String,
    /// As written (`api`).
    pub name: String,
    pub policy: RoutePolicy,
    /// In preference order (failover); every region when not given.
    pub regions: Vec<String>,
    /// Per region (weighted); 1 when not given.
    pub weights: BTreeMap<String, u32>,
    pub ttl_secs: u32,
    pub no_healthy: NoHealthyPolicy,
}

/// A client prefix with a location (for DNS latency routing).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientLocation {
    pub network: IpAddr,
    pub prefix_len: u8,
    pub lat: f64,
    pub lon: f64,
}

impl ClientLocation {
    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `[router]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterConfig {
    /// The authoritative zone, absolute and lower case (`atoll.test.`).
    pub zone: String,
    pub ttl_secs: u32,
    pub health: RouterHealthConfig,
    pub proxy: RouterProxyConfig,
    pub names: Vec<RoutedName>,
    pub client_locations: Vec<ClientLocation>,
}

impl RouterConfig {
    /// The routed name for a fully qualified query name (case-insensitive).
    pub fn name(&self, fqdn: &str) -> Option<&RoutedName> {
        let q = fqdn.to_ascii_lowercase();
        let q = if q.ends_with('.') { q } else { format!("{q}.") };
        self.names.iter().find(|n| n.fqdn == q)
    }

    /// The location of the most specific prefix containing `ip`.
    pub fn locate(&self, ip: IpAddr) -> Option<(f64, f64)> {
        self.client_locations
            .iter()
            .filter(|l| l.contains(ip))
            .max_by_key(|l| l.prefix_len)
            .map(|l| (l.lat, l.lon))
    }
}

const INTERVAL_MS: RangeInclusive<i64> = 100..=300_000;
const TIMEOUT_MS: RangeInclusive<i64> = 10..=60_000;
const THRESHOLD: RangeInclusive<i64> = 1..=100;
const TTL_SECS: RangeInclusive<i64> = 1..=86_400;
const HOLD_DOWN_MS: RangeInclusive<i64> = 0..=3_600_000;
const OUTLIER: RangeInclusive<i64> = 0..=1000;
const RAMP_SECS: RangeInclusive<i64> = 0..=86_400;
const WEIGHT: RangeInclusive<i64> = 0..=1_000_000;

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty() && s.len() <= 253 && s.split('.').all(valid_label)
}

pub(crate) fn router(
    cx: &Ctx<'_>,
    raw: Option<&RawRouter>,
    regions: &[RegionConfig],
) -> Result<Option<RouterConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let zone = match &raw.zone {
        Some(z) => {
            if !valid_dns_name(z.get_ref()) {
                return Err(cx.err(
                    z.span(),
                    "router.zone",
                    format!("`{}` is not a valid DNS name", z.get_ref()),
                ));
            }
            let mut s = z.get_ref().to_ascii_lowercase();
            if !s.ends_with('.') {
                s.push('.');
            }
            s
        }
        None => "atoll.test.".to_string(),
    };
    let ttl = cx.int(
        &raw.ttl_secs,
        "router.ttl_secs",
        TTL_SECS,
        i64::from(DEFAULT_TTL_SECS),
    )? as u32;
    let d = RouterHealthConfig::default();
    let health = match &raw.health {
        None => d,
        Some(h) => {
            let interval = cx.int(
                &h.interval_ms,
                "router.health.interval_ms",
                INTERVAL_MS,
                d.interval_ms as i64,
            )?;
            let timeout = cx.int(
                &h.timeout_ms,
                "router.health.timeout_ms",
                TIMEOUT_MS,
                d.timeout_ms as i64,
            )?;
            if timeout > interval
                && let Some(t) = &h.timeout_ms
            {
                return Err(cx.err(
                    t.span(),
                    "router.health.timeout_ms",
                    format!("timeout {timeout} ms is longer than the check interval {interval} ms"),
                ));
            }
            let path = match &h.path {
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(cx.err(
                        p.span(),
                        "router.health.path",
                        "the health-check path must start with `/`",
                    ));
                }
                Some(p) => p.get_ref().clone(),
                None => d.path,
            };
            RouterHealthConfig {
                interval_ms: interval as u64,
                timeout_ms: timeout as u64,
                failure_threshold: cx.int(
                    &h.failure_threshold,
                    "router.health.failure_threshold",
                    THRESHOLD,
                    3,
                )? as u32,
                recovery_threshold: cx.int(
                    &h.recovery_threshold,
                    "router.health.recovery_threshold",
                    THRESHOLD,
                    2,
                )? as u32,
                initial: h.initial.unwrap_or_default(),
                path,
                expect_status: cx.int(
                    &h.expect_status,
                    "router.health.expect_status",
                    100..=599,
                    200,
                )? as u16,
                expect_body: h.expect_body.clone(),
                hold_down_ms: cx.int(
                    &h.hold_down_ms,
                    "router.health.hold_down_ms",
                    HOLD_DOWN_MS,
                    d.hold_down_ms as i64,
                )? as u64,
                outlier_failures: cx.int(
                    &h.outlier_failures,
                    "router.health.outlier_failures",
                    OUTLIER,
                    5,
                )? as u32,
                ramp_secs: cx.int(&h.ramp_secs, "router.health.ramp_secs", RAMP_SECS, 30)? as u64,
            }
        }
    };
    let proxy = proxy(cx, raw.proxy.as_ref())?;
    let region_names: Vec<String> = regions.iter().map(|r| r.name.to_string()).collect();
    let mut names = Vec::new();
    for (i, n) in raw.names.iter().enumerate() {
        let key = format!("router.names[{i}]");
        let rn = n.get_ref();
        let label = rn.name.get_ref();
        if !valid_dns_name(label) {
            return Err(cx.err(
                rn.name.span(),
                format!("{key}.name"),
                format!("`{label}` is not a valid DNS name"),
            ));
        }
        let fqdn = format!(
            "{}.{zone}",
            label.trim_end_matches('.').to_ascii_lowercase()
        );
        if names.iter().any(|x: &RoutedName| x.fqdn == fqdn) {
            return Err(cx.err(
                rn.name.span(),
                format!("{key}.name"),
                format!("duplicate routed name `{label}`"),
            ));
        }
        let list = match &rn.regions {
            None => region_names.clone(),
            Some(v) => {
                if v.is_empty() {
                    return Err(cx.err(
                        n.span(),
                        format!("{key}.regions"),
                        "an empty region list routes nowhere",
                    ));
                }
                let mut out: Vec<String> = Vec::new();
                for r in v {
                    if !region_names.contains(r.get_ref()) {
                        return Err(cx.err(
                            r.span(),
                            format!("{key}.regions"),
                            format!(
                                "unknown region `{}` (declared: {})",
                                r.get_ref(),
                                region_names.join(", ")
                            ),
                        ));
                    }
                    if out.contains(r.get_ref()) {
                        return Err(cx.err(
                            r.span(),
                            format!("{key}.regions"),
                            format!("region `{}` listed twice", r.get_ref()),
                        ));
                    }
                    out.push(r.get_ref().clone());
                }
                out
            }
        };
        let mut weights = BTreeMap::new();
        if let Some(w) = &rn.weights {
            if rn.policy != RoutePolicy::Weighted {
                return Err(cx.err(
                    n.span(),
                    format!("{key}.weights"),
                    "weights apply only to `policy = \"weighted\"`",
                ));
            }
            for (region, v) in w {
                if !list.contains(region) {
                    return Err(cx.err(
                        v.span(),
                        format!("{key}.weights.{region}"),
                        format!("unknown region `{region}` in weights"),
                    ));
                }
                let n = cx.int(
                    &Some(v.clone()),
                    &format!("{key}.weights.{region}"),
                    WEIGHT,
                    1,
                )?;
                weights.insert(region.clone(), n as u32);
            }
        }
        for r in &list {
            weights.entry(r.clone()).or_insert(1);
        }
        names.push(RoutedName {
            fqdn,
            name: label.clone(),
            policy: rn.policy,
            regions: list,
            weights,
            ttl_secs: cx.int(
                &rn.ttl_secs,
                &format!("{key}.ttl_secs"),
                TTL_SECS,
                i64::from(ttl),
            )? as u32,
            no_healthy: rn.no_healthy.or(raw.no_healthy).unwrap_or_default(),
        });
    }
    let mut client_locations = Vec::new();
    for (i, l) in raw.client_locations.iter().enumerate() {
        let key = format!("router.client_locations[{i}]");
        let l = l.get_ref();
        let (net, len) = l
            .prefix
            .get_ref()
            .split_once('/')
            .and_then(|(a, b)| Some((a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?)))
            .filter(|(a, len)| *len <= if a.is_ipv4() { 32 } else { 128 })
            .ok_or_else(|| {
                cx.err(
                    l.prefix.span(),
                    format!("{key}.prefix"),
                    format!(
                        "`{}` is not a CIDR prefix like 203.0.113.0/24",
                        l.prefix.get_ref()
                    ),
                )
            })?;
        let (lat, lon) = (*l.lat.get_ref(), *l.lon.get_ref());
        if !(-90.0..=90.0).contains(&lat) {
            return Err(cx.err(
                l.lat.span(),
                format!("{key}.lat"),
                format!("latitude {lat} is not in -90..90"),
            ));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(cx.err(
                l.lon.span(),
                format!("{key}.lon"),
                format!("longitude {lon} is not in -180..180"),
            ));
        }
        client_locations.push(ClientLocation {
            network: net,
            prefix_len: len,
            lat,
            lon,
        });
    }
    Ok(Some(RouterConfig {
        zone,
        ttl_secs: ttl,
        health,
        proxy,
        names,
        client_locations,
    }))
}

fn proxy(cx: &Ctx<'_>, raw: Option<&RawProxy>) -> Result<RouterProxyConfig, ConfigError> {
    let d = RouterProxyConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let int = |v: &Option<Spanned<i64>>, key: &str, range: &RangeInclusive<u64>, default: u64| {
        let range = *range.start() as i64..=*range.end() as i64;
        cx.int(v, &format!("router.proxy.{key}"), range, default as i64)
            .map(|n| n as u64)
    };
    let p = RouterProxyConfig {
        connect_timeout_ms: int(
            &raw.connect_timeout_ms,
            "connect_timeout_ms",
            &PROXY_CONNECT_TIMEOUT_MS,
            d.connect_timeout_ms,
        )?,
        request_timeout_ms: int(
            &raw.request_timeout_ms,
            "request_timeout_ms",
            &PROXY_REQUEST_TIMEOUT_MS,
            d.request_timeout_ms,
        )?,
        idle_timeout_ms: int(
            &raw.idle_timeout_ms,
            "idle_timeout_ms",
            &PROXY_IDLE_TIMEOUT_MS,
            d.idle_timeout_ms,
        )?,
        max_body_bytes: int(
            &raw.max_body_bytes,
            "max_body_bytes",
            &PROXY_MAX_BODY_BYTES,
            d.max_body_bytes,
        )?,
    };
    if let Err((key, message)) = p.check() {
        // Point at the key that was written (the other one is at its default).
        let (key, span) = match (&raw.connect_timeout_ms, &raw.request_timeout_ms) {
            (Some(c), _) if key == "connect_timeout_ms" => (key, Some(c.span())),
            (_, Some(r)) => ("request_timeout_ms", Some(r.span())),
            _ => (key, None),
        };
        let key = format!("router.proxy.{key}");
        return Err(match span {
            Some(span) => cx.err(span, key, message),
            None => cx.err_nowhere(key, message),
        });
    }
    Ok(p)
}

/// Warnings about a router config (known anti-patterns: long TTLs, health checks too slow or
/// too eager to fail over), for `atoll config check`.
pub fn warnings(r: &RouterConfig) -> Vec<String> {
    let mut out = Vec::new();
    for n in &r.names {
        if n.ttl_secs > 60 {
            out.push(format!(
                "router name `{}` has a TTL of {} s: clients may keep resolving to a dead region for that long after it is removed; use 30-60 s",
                n.name, n.ttl_secs
            ));
        }
        if n.no_healthy == NoHealthyPolicy::FailOpen {
            // Not a problem in itself; it is the Route 53 default. Say what it means.
        }
    }
    let h = &r.health;
    let detect_ms = h.interval_ms * u64::from(h.failure_threshold);
    if detect_ms > 60_000 {
        out.push(format!(
            "health checks take {} s (interval x failure_threshold) to notice a dead region",
            detect_ms / 1000
        ));
    }
    out
}
