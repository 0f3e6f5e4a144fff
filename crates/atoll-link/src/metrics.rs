//! The link server's Prometheus metrics (prefix `atoll_link_`, base units, OpenMetrics text).
//!
//! | series | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `atoll_link_bytes_total` | counter | link, direction | bytes delivered through the link |
//! | `atoll_link_queued_bytes` | gauge | link, direction | bytes read but not yet delivered (delayed or held) |
//! | `atoll_link_connections` | gauge | link | connections open now |
//! | `atoll_link_connections_opened_total` | counter | link | connections accepted |
//! | `atoll_link_connections_refused_total` | counter | link | connections reset at once (refusing partition, upstream down, limit) |
//! | `atoll_link_connections_reset_total` | counter | link | open connections reset by a reset fault |
//! | `atoll_link_faults_active` | gauge | link | faults in effect |
//! | `atoll_link_delay_seconds` | gauge | link, direction | configured one-way delay, spikes included |
//! | `atoll_link_info` | gauge (1) | link, region, peer_region, listen, upstream | what the link connects |

use crate::model::{Direction, Effective, LinkSpec};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    link: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirLabels {
    link: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    link: String,
    region: String,
    peer_region: String,
    listen: String,
    upstream: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric of a link server.
pub struct Metrics {
    registry: Registry,
    bytes: Family<DirLabels, Counter>,
    queued: Family<DirLabels, Gauge>,
    connections: Family<LinkLabels, Gauge>,
    opened: Family<LinkLabels, Counter>,
    refused: Family<LinkLabels, Counter>,
    reset: Family<LinkLabels, Counter>,
    faults: Family<LinkLabels, Gauge>,
    delay: Family<DirLabels, FloatGauge>,
    info: Family<InfoLabels, Gauge>,
}

/// One link's handles into [`Metrics`] (cheap clones of the same atomics).
#[derive(Clone)]
pub struct LinkMetrics {
    /// Indexed by [`dir_index`].
    pub bytes: [Counter; 2],
    pub queued: [Gauge; 2],
    pub connections: Gauge,
    pub opened: Counter,
    pub refused: Counter,
    pub reset: Counter,
    pub faults: Gauge,
    delay: [FloatGauge; 2],
}

/// 0 for forward, 1 for reverse.
pub fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Forward => 0,
        Direction::Reverse => 1,
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let bytes = Family::<DirLabels, Counter>::default();
        registry.register(
            "atoll_link_bytes",
            "Bytes delivered through the link, by direction (forward: client to upstream)",
            bytes.clone(),
        );
        let queued = Family::<DirLabels, Gauge>::default();
        registry.register(
            "atoll_link_queued_bytes",
            "Bytes read from one side and not yet delivered to the other (delayed or held by a fault)",
            queued.clone(),
        );
        let connections = Family::<LinkLabels, Gauge>::default();
        registry.register(
            "atoll_link_connections",
            "Connections open through the link",
            connections.clone(),
        );
        let opened = Family::<LinkLabels, Counter>::default();
        registry.register(
            "atoll_link_connections_opened",
            "Connections accepted on the link's listen address",
            opened.clone(),
        );
        let refused = Family::<LinkLabels, Counter>::default();
        registry.register(
            "atoll_link_connections_refused",
            "Connections reset at once: a refusing partition, an unreachable upstream or the connection limit",
            refused.clone(),
        );
        let reset = Family::<LinkLabels, Counter>::default();
        registry.register(
            "atoll_link_connections_reset",
            "Open connections reset by a reset fault",
            reset.clone(),
        );
        let faults = Family::<LinkLabels, Gauge>::default();
        registry.register(
            "atoll_link_faults_active",
            "Faults in effect on the link",
            faults.clone(),
        );
        let delay = Family::<DirLabels, FloatGauge>::default();
        registry.register(
            "atoll_link_delay_seconds",
            "Configured one-way delay of the link, latency spikes included, by direction",
            delay.clone(),
        );
        let info = Family::<InfoLabels, Gauge>::default();
        registry.register(
            "atoll_link_info",
            "What each link connects (value 1)",
            info.clone(),
        );
        Self {
            registry,
            bytes,
            queued,
            connections,
            opened,
            refused,
            reset,
            faults,
            delay,
            info,
        }
    }

    /// Creates the series of one link (at zero) and returns its handles.
    pub fn link(&self, spec: &LinkSpec) -> LinkMetrics {
        let l = || LinkLabels {
            link: spec.name.clone(),
        };
        let d = |dir: Direction| DirLabels {
            link: spec.name.clone(),
            direction: dir.as_str().to_string(),
        };
        let region = |r: &Option<atoll_core::RegionId>| {
            r.as_ref().map(|r| r.to_string()).unwrap_or_default()
        };
        let info = get(
            &self.info,
            &InfoLabels {
                link: spec.name.clone(),
                region: region(&spec.from_region),
                peer_region: region(&spec.to_region),
                listen: spec.listen.to_string(),
                upstream: spec.upstream.to_string(),
            },
        );
        info.set(1);
        let [f, r] = Direction::BOTH;
        LinkMetrics {
            bytes: [get(&self.bytes, &d(f)), get(&self.bytes, &d(r))],
            queued: [get(&self.queued, &d(f)), get(&self.queued, &d(r))],
            connections: get(&self.connections, &l()),
            opened: get(&self.opened, &l()),
            refused: get(&self.refused, &l()),
            reset: get(&self.reset, &l()),
            faults: get(&self.faults, &l()),
            delay: [get(&self.delay, &d(f)), get(&self.delay, &d(r))],
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The metric of `labels` in `family`. The family's read guard is dropped on return: holding it
/// while calling `get_or_create` again on the same family would deadlock.
fn get<L, M>(family: &Family<L, M>, labels: &L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone + Default,
{
    family.get_or_create(labels).clone()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkMetrics {
    /// Records what is in effect now (delays, active fault count).
    pub fn observe(&self, eff: &Effective, faults_active: usize) {
        for dir in Direction::BOTH {
            self.delay[dir_index(dir)].set(eff.dir(dir).latency_ms / 1000.0);
        }
        self.faults
            .set(i64::try_from(faults_active).unwrap_or(i64::MAX));
    }
}
