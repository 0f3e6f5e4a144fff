//! The DNS server's metrics: `atoll_router_dns_queries_total{name, qtype, answer}` and the
//! histogram `atoll_router_dns_query_duration_seconds`, registered in the router's registry with
//! its other metrics (label values: see [`crate::dns`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Labels of `atoll_router_dns_queries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// A routed name (`api.atoll.test.`), the zone apex, `ns1.<zone>`, or `other`.
    pub name: String,
    /// `A`, `AAAA`, `ANY`, `SOA`, `NS` or `other`.
    pub qtype: String,
    /// The region answered, or `zone`, `nodata`, `nxdomain`, `refused`, `servfail`, `formerr`,
    /// `notimp`, `badvers`.
    pub answer: String,
}

/// The DNS server's metrics. Cheap to clone (the clones share the same counters).
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    pub queries: Family<QueryLabels, Counter>,
    pub duration: Histogram,
}

/// Buckets of the query duration histogram: 10 us .. ~0.33 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

/// The query counter's name without the registry's `atoll` prefix (a counter: scraped with
/// `_total`). For registering [`DnsMetrics::queries`] through another helper.
pub const QUERIES: &str = "router_dns_queries";
pub const QUERIES_HELP: &str =
    "DNS queries answered, by name, query type and answer (the region, or the negative answer)";
/// The duration histogram's name without the registry's `atoll` prefix.
pub const DURATION: &str = "router_dns_query_duration_seconds";
pub const DURATION_HELP: &str = "Time to compute and send one DNS answer";

impl DnsMetrics {
    /// Metrics that count but are not registered anywhere (tests, or a router without metrics).
    pub fn unregistered() -> DnsMetrics {
        DnsMetrics {
            queries: Family::default(),
            duration: duration_histogram(),
        }
    }

    /// Registers the metrics in a registry made with `Registry::with_prefix("atoll")` (the
    /// convention of atoll's other processes): the names are registered **without** the `atoll_`
    /// prefix (`router_dns_queries`, `router_dns_query_duration_seconds`), and the registry adds
    /// it. For a registry without a prefix use [`DnsMetrics::register_unprefixed`].
    pub fn register(registry: &mut Registry) -> DnsMetrics {
        Self::register_named(registry, "")
    }

    /// Registers the metrics with their full names (`atoll_router_dns_queries`, ...) in a
    /// registry without a prefix.
    pub fn register_unprefixed(registry: &mut Registry) -> DnsMetrics {
        Self::register_named(registry, "atoll_")
    }

    fn register_named(registry: &mut Registry, prefix: &str) -> DnsMetrics {
        let m = Self::unregistered();
        registry.register(
            format!("{prefix}{QUERIES}"),
            QUERIES_HELP,
            m.queries.clone(),
        );
        registry.register(
            format!("{prefix}{DURATION}"),
            DURATION_HELP,
            m.duration.clone(),
        );
        m
    }

    /// The series these metrics export, as scraped (for checking alert rules and dashboards).
    pub fn series_names() -> Vec<String> {
        let mut v = vec![format!("atoll_{QUERIES}_total")];
        for suffix in ["_bucket", "_sum", "_count"] {
            v.push(format!("atoll_{DURATION}{suffix}"));
        }
        v
    }

    pub(crate) fn record(&self, labels: &QueryLabels, took: Duration) {
        self.queries.get_or_create(labels).inc();
        self.duration.observe(took.as_secs_f64());
    }
}
