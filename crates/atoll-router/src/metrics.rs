//! The router's Prometheus metrics (prefix `atoll_`, base units, counters end in `_total`,
//! histograms, OpenMetrics text), shared by the prober, the proxy, the admin API and DNS.
//!
//! Split-brain fencing as the router sees it: `atoll_router_region_role{region,role}` (1 for the
//! role each region last reported, 0 for the others; no series before its first answer),
//! `atoll_router_region_epoch{region}` (the lease epoch it reported), `atoll_router_primary_claims`
//! (healthy regions claiming the write lease: more than 1 must never happen) and
//! `atoll_router_primary_conflicts_total{kind}` (times that began, see
//! [`RouterMetrics::record_claims`]; each is also a log line).
//! Proxied requests a region refused because of fencing and that were sent on to the next region
//! count in `atoll_router_retries_total` with reason `not-primary`, `fenced`, `passive`,
//! `no-quorum` (strong keyspaces), `home-unavailable` (owned keyspaces) or `stale` (a read behind
//! its session token or max_staleness).
//!
//! DNS's metrics ([`dns`], [`DnsMetrics`]: `atoll_router_dns_queries_total{name,qtype,answer}`
//! and `atoll_router_dns_query_duration_seconds`) are defined and registered here too, so that one registry and
//! one [`RouterMetrics::series_names`] list cover the whole router whichever listeners run. Other
//! adapters can register more with [`RouterMetrics::register`] before the metrics are shared.

pub mod dns;
pub use dns::DnsMetrics;

use crate::health::Role;
use crate::policy::Mode;
use crate::state::RouterState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Labels naming one region.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabel {
    pub region: String,
}

/// Labels of a proxied request's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The region that answered (`none` when nothing was routable).
    pub region: String,
    /// The HTTP status the client got.
    pub code: String,
}

/// One region's series of the proxy's hot path (see [`RouterMetrics::proxy_handles`]): they
/// share the families' series, so what they count is exported as usual.
#[derive(Clone)]
pub struct ProxyHandles {
    region: String,
    in_flight: Gauge,
    upstream: Histogram,
    requests: Family<RequestLabels, Counter>,
    /// The request counters of this region by status, made on first use.
    by_status: Arc<RwLock<Vec<(u16, Counter)>>>,
}

impl ProxyHandles {
    /// The region's in-flight gauge (`atoll_router_active_connections`).
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// Observes the time to a region's response head.
    pub fn observe_upstream(&self, elapsed: Duration) {
        self.upstream.observe(elapsed.as_secs_f64());
    }

    /// Counts a proxied request's outcome (`atoll_router_requests_total{region,code}`).
    pub fn observe_request(&self, code: u16) {
        let find =
            |v: &[(u16, Counter)]| v.iter().find(|(c, _)| *c == code).map(|(_, n)| n.clone());
        if let Some(c) = self.by_status.read().ok().and_then(|v| find(&v)) {
            c.inc();
            return;
        }
        let c = self
            .requests
            .get_or_create(&RequestLabels {
                region: self.region.clone(),
                code: code.to_string(),
            })
            .clone();
        c.inc();
        if let Ok(mut v) = self.by_status.write()
            && find(&v).is_none()
        {
            v.push((code, c));
        }
    }
}

/// Labels of a retry: the region given up on, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub from_region: String,
    pub reason: String,
}

/// Labels of a region's fencing role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub region: String,
    pub role: String,
}

/// Every fencing role, for the role gauge.
const ROLES: [Role; 6] = [
    Role::Active,
    Role::ReadOnly,
    Role::Primary,
    Role::Fenced,
    Role::Standby,
    Role::Passive,
];

/// Labels of a conflict of primaries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    /// `older-epoch` or `same-epoch`.
    pub kind: String,
}

/// Labels of a routed name's no-healthy mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub name: String,
    pub mode: String,
}

/// What kind of metric is registered: decides the names of its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// The name of a [`Mode`] as it appears in metrics, logs and status.
pub fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::Normal => "normal",
        Mode::FailOpen => "fail-open",
        Mode::FailClosed => "fail-closed",
        Mode::LastKnownGood => "last-known-good",
    }
}

const NO_HEALTHY_MODES: [Mode; 3] = [Mode::FailOpen, Mode::FailClosed, Mode::LastKnownGood];

/// How often an error line is repeated while a name stays in a no-healthy mode.
const MODE_LOG_REPEAT_MS: u64 = 60_000;

/// Every metric the router exports.
pub struct RouterMetrics {
    registry: Registry,
    names: Vec<String>,
    pub region_healthy: Family<RegionLabel, Gauge>,
    pub region_drained: Family<RegionLabel, Gauge>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RegionLabel, Histogram>,
    pub health_check_duration: Family<RegionLabel, Histogram>,
    pub fail_open_active: Family<ModeLabels, Gauge>,
    pub active_connections: Family<RegionLabel, Gauge>,
    pub retries: Family<RetryLabels, Counter>,
    pub ejections: Family<RegionLabel, Counter>,
    pub region_role: Family<RoleLabels, Gauge>,
    pub region_epoch: Family<RegionLabel, Gauge>,
    pub primary_claims: Gauge,
    pub primary_conflicts: Family<ConflictLabels, Counter>,
    /// The kind of conflict of primaries at the last refresh (`None`: at most one claim), to log
    /// and count each episode once.
    conflict: Mutex<Option<&'static str>>,
    /// The DNS server's metrics (registered in the same registry).
    pub dns: DnsMetrics,
    /// name -> (mode, starting, when its log line was last written).
    modes: Mutex<BTreeMap<String, (Mode, bool, u64)>>,
}

fn request_buckets() -> Histogram {
    // 100 µs .. ~52 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 20))
}

fn check_buckets() -> Histogram {
    // 100 µs .. ~6.5 s (a check never takes longer than its timeout, at most 60 s)
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

impl RouterMetrics {
    pub fn new() -> Self {
        Self::with_registry(Registry::with_prefix("atoll"))
    }

    /// Builds the router's metrics into `registry` (which should have the `atoll` prefix, as
    /// [`Registry::with_prefix`]`("atoll")`).
    pub fn with_registry(registry: Registry) -> Self {
        let mut m = Self {
            registry,
            names: Vec::new(),
            region_healthy: Family::default(),
            region_drained: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets as fn() -> _),
            health_check_duration: Family::new_with_constructor(check_buckets as fn() -> _),
            fail_open_active: Family::default(),
            active_connections: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            region_role: Family::default(),
            region_epoch: Family::default(),
            primary_claims: Gauge::default(),
            primary_conflicts: Family::default(),
            conflict: Mutex::new(None),
            dns: DnsMetrics::unregistered(),
            modes: Mutex::new(BTreeMap::new()),
        };
        let f = m.region_healthy.clone();
        m.register(
            MetricKind::Gauge,
            "router_region_healthy",
            "Whether this router's health checks find the region healthy (1) or not (0)",
            f,
        );
        let f = m.region_drained.clone();
        m.register(
            MetricKind::Gauge,
            "router_region_drained",
            "Whether an operator has drained the region (1) or not (0)",
            f,
        );
        let f = m.requests.clone();
        m.register(
            MetricKind::Counter,
            "router_requests",
            "Requests proxied, by the region that answered (none: nothing routable) and the status the client got",
            f,
        );
        let f = m.request_duration.clone();
        m.register(
            MetricKind::Histogram,
            "router_request_duration_seconds",
            "Time from sending a proxied request to a region to its response head",
            f,
        );
        let f = m.health_check_duration.clone();
        m.register(
            MetricKind::Histogram,
            "router_health_check_duration_seconds",
            "Time of one active health check of a region (failed checks included)",
            f,
        );
        let f = m.fail_open_active.clone();
        m.register(
            MetricKind::Gauge,
            "router_fail_open_active",
            "1 while a routed name has no healthy region and serves by its no_healthy policy (mode: fail-open, fail-closed or last-known-good)",
            f,
        );
        let f = m.active_connections.clone();
        m.register(
            MetricKind::Gauge,
            "router_active_connections",
            "Proxied requests in flight to the region (until their response body ends)",
            f,
        );
        let f = m.retries.clone();
        m.register(
            MetricKind::Counter,
            "router_retries",
            "Proxied requests retried on another region, by the region given up on and why (connect, timeout, reset, status; not-primary, fenced, passive: the region refused a write because of fencing; no-quorum: a strong keyspace's region cut off from the majority; home-unavailable: an owned key's home not reachable from the region, or the key moving; stale: a read the region had not caught up for (session token or max_staleness); either way not applied)",
            f,
        );
        let f = m.ejections.clone();
        m.register(
            MetricKind::Counter,
            "router_ejections",
            "Times passive outlier detection ejected the region after consecutive failed requests",
            f,
        );
        let f = m.region_role.clone();
        m.register(
            MetricKind::Gauge,
            "router_region_role",
            "1 for the fencing role the region last reported in /healthz (active, read-only, primary, fenced, standby, passive), 0 for the others",
            f,
        );
        let f = m.region_epoch.clone();
        m.register(
            MetricKind::Gauge,
            "router_region_epoch",
            "The write-lease epoch the region last reported in /healthz (0: none, as in active-active)",
            f,
        );
        let f = m.primary_claims.clone();
        m.register(
            MetricKind::Gauge,
            "router_primary_claims",
            "Healthy regions claiming the write lease (role primary); more than 1 must never happen, and writes then go to the higher epoch",
            f,
        );
        let f = m.primary_conflicts.clone();
        m.register(
            MetricKind::Counter,
            "router_primary_conflicts",
            "Times two healthy regions began to claim the write lease at once, by kind: older-epoch (a check from before the lease moved; logged as a warning) or same-epoch (impossible unless fencing is broken; logged as an error)",
            f,
        );
        m.dns = DnsMetrics::register(&mut m.registry);
        m.extend_series_names(DnsMetrics::series_names());
        m
    }

    /// Records series names of metrics registered through [`RouterMetrics::registry_mut`].
    pub fn extend_series_names(&mut self, names: impl IntoIterator<Item = String>) {
        self.names.extend(names);
    }

    /// Registers another metric (e.g. DNS's) under the `atoll_` prefix and records its series
    /// names. `name` is without the prefix and, for counters, without `_total`.
    pub fn register(&mut self, kind: MetricKind, name: &str, help: &str, metric: impl Metric) {
        let full = format!("atoll_{name}");
        match kind {
            MetricKind::Counter => self.names.push(format!("{full}_total")),
            MetricKind::Gauge => self.names.push(full),
            MetricKind::Histogram => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    self.names.push(format!("{full}{suffix}"));
                }
            }
        }
        self.registry.register(name, help, metric);
    }

    /// The registry itself, for adapters that register metrics on their own. Prefer
    /// [`RouterMetrics::register`], which keeps [`RouterMetrics::series_names`] complete.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Every series name this registry can export, whether or not it has samples yet (alert rules
    /// and dashboards are checked against this list).
    pub fn series_names(&self) -> &[String] {
        &self.names
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn region(r: &str) -> RegionLabel {
        RegionLabel {
            region: r.to_string(),
        }
    }

    /// The proxy's handles of one region's series (`none` for answers no region gave), made
    /// once so that a request is counted without building labels or looking families up.
    pub fn proxy_handles(&self, region: &str) -> ProxyHandles {
        let label = Self::region(region);
        ProxyHandles {
            in_flight: self.active_connections.get_or_create(&label).clone(),
            upstream: self.request_duration.get_or_create(&label).clone(),
            region: label.region,
            requests: self.requests.clone(),
            by_status: Arc::new(RwLock::new(Vec::new())),
        }
    }

    /// Counts a proxied request's outcome.
    pub fn observe_request(&self, region: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                region: region.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    pub fn observe_upstream(&self, region: &str, elapsed: Duration) {
        self.request_duration
            .get_or_create(&Self::region(region))
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_check(&self, region: &str, elapsed: Duration) {
        self.health_check_duration
            .get_or_create(&Self::region(region))
            .observe(elapsed.as_secs_f64());
    }

    pub fn retry(&self, from_region: &str, reason: &str) {
        self.retries
            .get_or_create(&RetryLabels {
                from_region: from_region.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn ejected(&self, region: &str) {
        self.ejections.get_or_create(&Self::region(region)).inc();
    }

    /// The in-flight gauge of a region (increment while a request is outstanding).
    pub fn connections(&self, region: &str) -> Gauge {
        self.active_connections
            .get_or_create(&Self::region(region))
            .clone()
    }

    /// Records the mode a routed name is served in (every decision may call this; it is cheap).
    /// Sets `atoll_router_fail_open_active{name,mode}`, and logs on every change:
    ///
    /// - `starting` (some region of the name has no verdict from the health checks yet, see
    ///   [`RouterState::starting`]): a no-healthy mode is expected, not a failure, and is logged
    ///   once at info level;
    /// - a no-healthy mode once every region has a verdict: at error level (again every minute
    ///   while it lasts), since the router is failing open, closed or to the last known good
    ///   regions for real;
    /// - back to normal: at info level.
    pub fn record_mode(&self, name: &str, mode: Mode, starting: bool, now_ms: u64) {
        let Ok(mut modes) = self.modes.lock() else {
            return;
        };
        // Starting only matters while no region is routable.
        let starting = starting && mode != Mode::Normal;
        let prev = modes.get(name).copied();
        let changed = prev.is_none_or(|(m, s, _)| m != mode || s != starting);
        let due = prev.is_some_and(|(_, _, at)| now_ms.saturating_sub(at) >= MODE_LOG_REPEAT_MS);
        if !changed && (mode == Mode::Normal || starting || !due) {
            return;
        }
        if prev.is_none_or(|(m, _, _)| m != mode) {
            for m in NO_HEALTHY_MODES {
                self.fail_open_active
                    .get_or_create(&ModeLabels {
                        name: name.to_string(),
                        mode: mode_str(m).to_string(),
                    })
                    .set(i64::from(m == mode));
            }
        }
        match mode {
            Mode::Normal => match prev {
                Some((m, true, _)) if m != Mode::Normal => {
                    tracing::info!(name, "first health checks passed: routing normally");
                }
                Some((m, false, _)) if m != Mode::Normal => {
                    tracing::info!(name, "healthy regions are back: routing normally again");
                }
                _ => {}
            },
            m if starting => tracing::info!(
                name,
                mode = mode_str(m),
                "router starting: no region has passed a health check yet; routing by the no_healthy policy ({}) until one does, or every region has failed failure_threshold checks",
                mode_str(m)
            ),
            Mode::FailOpen => tracing::error!(
                name,
                mode = mode_str(mode),
                "no healthy region: failing open, routing to every undrained region"
            ),
            Mode::FailClosed => tracing::error!(
                name,
                mode = mode_str(mode),
                "no healthy region: failing closed, refusing requests (proxy 503, DNS SERVFAIL)"
            ),
            Mode::LastKnownGood => tracing::error!(
                name,
                mode = mode_str(mode),
                "no healthy region: routing to the last known good regions"
            ),
        }
        modes.insert(name.to_string(), (mode, starting, now_ms));
    }

    /// Brings the health, drain, role, epoch and mode gauges in line with `state`, and notices
    /// two regions claiming the write lease.
    pub fn refresh(&self, state: &RouterState, now_ms: u64) {
        let Ok(status) = state.status(now_ms) else {
            return;
        };
        for r in &status.regions {
            let l = Self::region(&r.region);
            self.region_healthy
                .get_or_create(&l)
                .set(i64::from(r.health == crate::health::HealthState::Healthy));
            self.region_drained
                .get_or_create(&l)
                .set(i64::from(r.drained.is_some()));
            if let Some(role) = r.role {
                for each in ROLES {
                    self.region_role
                        .get_or_create(&RoleLabels {
                            region: r.region.clone(),
                            role: each.as_str().to_string(),
                        })
                        .set(i64::from(each == role));
                }
            }
            if let Some(epoch) = r.epoch {
                self.region_epoch
                    .get_or_create(&l)
                    .set(i64::try_from(epoch).unwrap_or(i64::MAX));
            }
        }
        self.record_claims(&status.primary_claims);
        for n in &status.names {
            self.record_mode(&n.name, n.mode, n.starting, now_ms);
        }
    }

    /// Records the healthy regions claiming the write lease; logs and counts the start of a
    /// conflict (two or more claims) once, and its end. A conflict is `older-epoch` when the
    /// claims are of different epochs (most likely the router's last check of the old holder
    /// predates a lease change, which the next check corrects; writes go to the higher epoch,
    /// and the old holder refuses them anyway once its window has run out): a warning. Two claims
    /// of the same epoch (`same-epoch`) are impossible unless fencing is broken: an error.
    pub fn record_claims(&self, claims: &[crate::state::PrimaryClaim]) {
        self.primary_claims
            .set(i64::try_from(claims.len()).unwrap_or(i64::MAX));
        let Ok(mut conflict) = self.conflict.lock() else {
            return;
        };
        let kind = match claims {
            [first, second, ..] if first.epoch == second.epoch => Some("same-epoch"),
            [_, _, ..] => Some("older-epoch"),
            _ => None,
        };
        if kind == *conflict {
            return;
        }
        *conflict = kind;
        let list = claims
            .iter()
            .map(|c| format!("{} (epoch {})", c.region, c.epoch))
            .collect::<Vec<_>>()
            .join(", ");
        let first = claims.first().map_or("none", |c| c.region.as_str());
        match kind {
            Some(kind) => {
                self.primary_conflicts
                    .get_or_create(&ConflictLabels {
                        kind: kind.to_string(),
                    })
                    .inc();
                if kind == "same-epoch" {
                    tracing::error!(
                        claims = %list,
                        "two healthy regions claim the write lease at the same epoch: fencing must prevent this; writes go to {first} (first in the config order)"
                    );
                } else {
                    tracing::warn!(
                        claims = %list,
                        "two healthy regions claim the write lease (role primary): writes go to the higher epoch, {first}; the other claim is from before the lease moved, or from an old holder that has not noticed (it refuses writes once its window has run out)"
                    );
                }
            }
            None => tracing::info!(
                primary = first,
                "at most one region claims the write lease again"
            ),
        }
    }
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_name_is_listed_and_exported() {
        let m = RouterMetrics::new();
        m.observe_request("us-east-1", 200);
        m.observe_upstream("us-east-1", Duration::from_millis(3));
        m.observe_check("us-east-1", Duration::from_millis(3));
        m.retry("us-east-1", "connect");
        m.ejected("us-east-1");
        m.connections("us-east-1").inc();
        m.region_healthy
            .get_or_create(&RouterMetrics::region("a"))
            .set(1);
        m.region_drained
            .get_or_create(&RouterMetrics::region("a"))
            .set(0);
        m.record_mode("api.atoll.test.", Mode::FailOpen, false, 0);
        m.dns
            .queries
            .get_or_create(&dns::QueryLabels {
                name: "api.atoll.test.".into(),
                qtype: "A".into(),
                answer: "us-east-1".into(),
            })
            .inc();
        m.dns.duration.observe(0.001);
        m.region_role
            .get_or_create(&RoleLabels {
                region: "a".into(),
                role: "primary".into(),
            })
            .set(1);
        m.region_epoch
            .get_or_create(&RouterMetrics::region("a"))
            .set(3);
        m.primary_claims.set(1);
        m.primary_conflicts
            .get_or_create(&ConflictLabels {
                kind: "same-epoch".into(),
            })
            .inc();
        let text = m.encode();
        for n in m.series_names() {
            assert!(
                text.lines().any(|l| l.starts_with(n.as_str())),
                "{n} not in:\n{text}"
            );
        }
        for expected in [
            "atoll_router_region_healthy",
            "atoll_router_region_drained",
            "atoll_router_requests_total",
            "atoll_router_request_duration_seconds_bucket",
            "atoll_router_health_check_duration_seconds_count",
            "atoll_router_fail_open_active",
            "atoll_router_active_connections",
            "atoll_router_retries_total",
            "atoll_router_ejections_total",
            "atoll_router_dns_queries_total",
            "atoll_router_region_role",
            "atoll_router_region_epoch",
            "atoll_router_primary_claims",
            "atoll_router_primary_conflicts_total",
        ] {
            assert!(m.series_names().iter().any(|n| n == expected), "{expected}");
        }
        assert!(text.contains(
            "atoll_router_fail_open_active{name=\"api.atoll.test.\",mode=\"fail-open\"} 1"
        ));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn modes_set_the_gauge_and_clear_it() {
        let m = RouterMetrics::new();
        m.record_mode("a.", Mode::FailClosed, false, 0);
        assert!(
            m.encode()
                .contains("atoll_router_fail_open_active{name=\"a.\",mode=\"fail-closed\"} 1")
        );
        m.record_mode("a.", Mode::Normal, false, 10);
        let text = m.encode();
        assert!(text.contains("atoll_router_fail_open_active{name=\"a.\",mode=\"fail-closed\"} 0"));
        assert!(
            !text.lines().any(
                |l| l.starts_with("atoll_router_fail_open_active{name=\"a.\"") && l.ends_with(" 1")
            ),
            "{text}"
        );
    }

    #[test]
    fn adapters_can_register_more_series_and_dns_is_included() {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Other {
            name: String,
            answer: String,
        }
        let mut m = RouterMetrics::new();
        let f = Family::<Other, Counter>::default();
        m.register(
            MetricKind::Counter,
            "router_other_queries",
            "Other queries",
            f.clone(),
        );
        f.get_or_create(&Other {
            name: "api.atoll.test.".into(),
            answer: "a".into(),
        })
        .inc();
        assert!(
            m.series_names()
                .iter()
                .any(|n| n == "atoll_router_other_queries_total")
        );
        assert!(m.encode().contains("atoll_router_other_queries_total{"));
        let _ = m.registry_mut();
    }

    #[test]
    fn a_conflict_of_primaries_is_counted_once_per_episode() {
        use crate::state::PrimaryClaim;
        let m = RouterMetrics::new();
        let claim = |r: &str, epoch| PrimaryClaim {
            region: r.into(),
            epoch,
        };
        let older = [claim("b", 4), claim("a", 3)];
        let same = [claim("a", 4), claim("b", 4)];
        let count = |m: &RouterMetrics, kind: &str| {
            let series = format!("atoll_router_primary_conflicts_total{{kind=\"{kind}\"}}");
            m.encode().lines().find_map(|l| {
                l.strip_prefix(series.as_str())
                    .map(|v| v.trim().to_string())
            })
        };
        m.record_claims(&[claim("a", 3)]);
        assert_eq!(count(&m, "older-epoch"), None);
        m.record_claims(&older);
        m.record_claims(&older);
        assert!(m.encode().contains("atoll_router_primary_claims 2\n"));
        assert_eq!(count(&m, "older-epoch").as_deref(), Some("1"));
        m.record_claims(&[claim("b", 4)]);
        assert!(m.encode().contains("atoll_router_primary_claims 1\n"));
        m.record_claims(&older);
        assert_eq!(count(&m, "older-epoch").as_deref(), Some("2"));
        // Turning into a same-epoch conflict is a new (worse) episode.
        m.record_claims(&same);
        m.record_claims(&same);
        assert_eq!(count(&m, "same-epoch").as_deref(), Some("1"));
        assert_eq!(count(&m, "older-epoch").as_deref(), Some("2"));
    }
}
