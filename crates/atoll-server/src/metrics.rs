//! The region's Prometheus metrics (prefix `atoll_`, base units, histograms, OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}

/// One (method, status) of a route, with its request metrics' handles (they share the
/// families' series).
struct RequestHandles {
    method: String,
    status: u16,
    count: Counter,
    duration: Histogram,
}

/// The `method` label of a request: the method itself for the standard ones, `other` for any
/// extension method (a client must not be able to mint label values).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Labels naming the local region.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub region: String,
    pub cluster: String,
    pub version: String,
}

/// Labels naming a keyspace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyspaceLabels {
    pub keyspace: String,
    pub policy: String,
}

/// Labels of a metric about a pair of regions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairLabels {
    pub region: String,
    pub peer_region: String,
}

/// Labels of a resolved conflict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    pub keyspace: String,
    pub resolution: String,
}

/// Labels of a refused heartbeat: who it named, and why it was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub peer_region: String,
    pub reason: String,
}

/// Labels of a refused peer connection or message: why, from a fixed set (see
/// [`crate::peer::AuthFailure`]), never a name the peer chose.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Labels of an outcome from a fixed set (`complete`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

impl OutcomeLabels {
    pub fn new(outcome: &str) -> Self {
        Self {
            outcome: outcome.to_string(),
        }
    }
}

/// Labels of a per-origin figure of the operation log.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub origin: String,
}

/// Labels of a region this region removed from the cluster (`docs/design/region-removal.md`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemovedRegionLabels {
    pub region: String,
}

/// Labels of a storage table (`data`, `oplog`, ..., `journal`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

/// Labels of a RESP command (`docs/design/resp.md`): the command (one of the served ones, or
/// `unknown`) and its outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RespLabels {
    pub command: String,
    pub outcome: String,
}

/// Labels naming only a keyspace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyspaceOnly {
    pub keyspace: String,
}

/// Labels of a rate-limit decision: the keyspace and `allowed` or `denied`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub keyspace: String,
    pub decision: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Labels of an owned keyspace's event: the keyspace and a value from a fixed set, or a region
/// of the config (never a name a client chose).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnedLabels {
    pub keyspace: String,
    pub value: String,
}

/// Every metric a region exports.
pub struct Metrics {
    pub registry: Registry,
    /// Every series name this registry can export (`_total`, `_bucket`... included).
    names: Vec<String>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<RequestLabels, Histogram>,
    /// The request metrics' handles by route, then (method, status): once a combination has
    /// been seen, a request costs one read lock and no allocation or label hashing.
    request_handles: RwLock<HashMap<String, Vec<RequestHandles>>>,
    /// Client API connections open right now (see [`crate::conns`]).
    pub open_connections: Gauge,
    pub store_writes: Counter,
    pub store_commits: Counter,
    pub store_commit_duration: Histogram,
    pub store_commit_batch: Histogram,
    pub oplog_last_seq: Gauge<u64, AtomicU64>,
    pub info: Family<RegionLabels, Gauge>,
    pub keyspaces: Family<KeyspaceLabels, Gauge>,
    pub peer_reachable: Family<PairLabels, Gauge>,
    pub peer_rtt: Family<PairLabels, Histogram>,
    pub replication_lag_seconds: Family<PairLabels, FloatGauge>,
    pub replication_lag_ops: Family<PairLabels, Gauge>,
    pub clock_offset_seconds: Family<PairLabels, FloatGauge>,
    pub peer_clock_skewed: Family<PairLabels, Gauge>,
    pub replication_applied: Family<PairLabels, Counter>,
    pub replication_apply_delay: Family<PairLabels, Histogram>,
    pub conflicts: Family<ConflictLabels, Counter>,
    pub sibling_limit_hits: Family<KeyspaceOnly, Counter>,
    /// Rate-limit decisions (`docs/design/rate-limits.md`), over HTTP and RESP alike.
    pub ratelimit_decisions: Family<DecisionLabels, Counter>,
    pub tombstone_horizon_age: FloatGauge,
    pub tombstones_collected: Counter,
    /// Expired lww values collected (`docs/design/expiring-keys.md`).
    pub expired_collected: Counter,
    /// Operation-log truncation and bootstrap by snapshot (`docs/design/oplog-truncation.md`).
    pub oplog_truncated: Counter,
    pub oplog_truncated_seq: Family<OriginLabels, Gauge<u64, AtomicU64>>,
    pub store_disk_bytes: Family<TableLabels, Gauge<u64, AtomicU64>>,
    pub bootstrap_active: Gauge,
    pub bootstraps: Family<OutcomeLabels, Counter>,
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub region_admitted: Gauge,
    /// 1 once a peer answered this region's heartbeat saying it was removed from the cluster.
    pub region_removed: Gauge,
    /// Per region this region removed: 1 once its writes are settled (every member removed it
    /// and holds as many of them).
    pub removed_region_settled: Family<RemovedRegionLabels, Gauge>,
    pub bootstrap_keys: Counter,
    pub bootstrap_bytes: Counter,
    pub bootstrap_corrupt_chunks: Counter,
    pub snapshot_chunks_served: Counter,
    pub heartbeats_refused: Family<RefusedLabels, Counter>,
    pub peer_auth_failures: Family<ReasonLabels, Counter>,
    pub peer_tls_insecure: Gauge,
    /// Replication requests refused at the edge, before their handler (see [`crate::streams`]).
    pub replication_requests_refused: Family<EdgeRefusalLabels, Counter>,
    /// Subscription streams of this region's writes being served (refreshed at scrape time).
    pub subscription_streams: Gauge,
    /// Fencing (`docs/design/fencing.md`): 1 for the region's current role.
    pub fencing_role: Family<RoleLabels, Gauge>,
    pub fencing_epoch: Gauge<u64, AtomicU64>,
    pub fencing_lease_remaining: FloatGauge,
    pub fencing_window_remaining: FloatGauge,
    pub fencing_lease_held: Gauge,
    pub fencing_writes_refused: Family<ReasonLabels, Counter>,
    pub owned_forwarded: Family<OwnedLabels, Counter>,
    pub owned_not_home: Family<OwnedLabels, Counter>,
    pub owned_moves: Family<OwnedLabels, Counter>,
    pub owned_claims: Family<OwnedLabels, Counter>,
    /// Watches (`docs/design/watch.md`).
    pub watchers: Gauge,
    pub watch_events: Counter,
    pub watch_dropped: Family<ReasonLabels, Counter>,
    /// The RESP front (`docs/design/resp.md`): commands by command and outcome, open connections.
    pub resp_commands: Family<RespLabels, Counter>,
    pub resp_connections: Gauge,
    pub fencing_promotions: Counter,
    pub fencing_proposals: Family<ProposalLabels, Counter>,
    pub fencing_promotion_lag: FloatGauge,
    pub fencing_promotion_blocked: Gauge,
    pub fencing_max_promotion_lag: FloatGauge,
    /// Reads with a session token or a staleness bound (`docs/design/session-consistency.md`),
    /// by level (`session`, `bounded`) and outcome (`served`, `waited`, `stale`, `forwarded`,
    /// `bad-token`).
    pub consistency_reads: Family<ConsistencyLabels, Counter>,
    /// How long session reads that had to wait waited (served or not).
    pub session_wait: Histogram,
    /// Strong keyspaces (`docs/design/strong-keyspaces.md`).
    pub strong_commit_duration: Histogram,
    pub strong_leader_changes: Counter,
    pub strong_no_quorum: Counter,
    pub strong_outcome_unknown: Counter,
    pub strong_term: Gauge<u64, AtomicU64>,
    pub strong_is_leader: Gauge,
    pub strong_leader_known: Gauge,
}

/// Labels of `atoll_consistency_reads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsistencyLabels {
    pub level: &'static str,
    pub outcome: &'static str,
}

/// Labels of the role gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub region: String,
    pub role: String,
}

/// Labels of a proposal to the control group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProposalLabels {
    pub command: String,
    pub outcome: String,
}

/// Every role a region can report.
const ROLES: [&str; 6] = [
    "active",
    "read-only",
    "primary",
    "fenced",
    "standby",
    "passive",
];

/// Labels of `atoll_replication_requests_refused_total`: `route` is `heartbeat` or `subscribe`,
/// `reason` is `too-large` (body over its limit) or `overloaded` (the stream cap is reached).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeRefusalLabels {
    pub route: String,
    pub reason: String,
}

fn latency_buckets() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// The kind of a registered metric, which decides the names of its series.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn reg(
    registry: &mut Registry,
    names: &mut Vec<String>,
    kind: Kind,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    let full = format!("atoll_{name}");
    match kind {
        Kind::Counter => names.push(format!("{full}_total")),
        Kind::Gauge => names.push(full),
        Kind::Histogram => {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.push(format!("{full}{suffix}"));
            }
        }
    }
    registry.register(name, help, metric);
}

fn rtt_buckets() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("atoll");
        let mut names = Vec::new();
        let http_requests = Family::<RequestLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "http_requests",
            "HTTP requests served, by route, method and status",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RequestLabels, Histogram>::new_with_constructor(latency_buckets as fn() -> _);
        reg(
            &mut registry,
            &mut names,
            Kind::Histogram,
            "http_request_duration_seconds",
            "Time to serve an HTTP request, by route, method and status",
            http_duration.clone(),
        );
        let open_connections = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "http_open_connections",
            "Client API connections open right now (the article's active connection count per region)",
            open_connections.clone(),
        );
        let store_writes = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "store_writes",
            "Writes durably committed to the local store",
            store_writes.clone(),
        );
        let store_commits = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "store_commits",
            "Durable group commits (each is one fsync shared by its writes)",
            store_commits.clone(),
        );
        let store_commit_duration = latency_buckets();
        reg(
            &mut registry,
            &mut names,
            Kind::Histogram,
            "store_commit_duration_seconds",
            "Time of one durable group commit, fsync included",
            store_commit_duration.clone(),
        );
        let store_commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        reg(
            &mut registry,
            &mut names,
            Kind::Histogram,
            "store_commit_batch_writes",
            "Writes sharing one group commit",
            store_commit_batch.clone(),
        );
        let oplog_last_seq = Gauge::<u64, AtomicU64>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "oplog_last_seq",
            "Sequence number of the newest local operation-log entry",
            oplog_last_seq.clone(),
        );
        let info = Family::<RegionLabels, Gauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "region_info",
            "The region this process serves (always 1)",
            info.clone(),
        );
        let keyspaces = Family::<KeyspaceLabels, Gauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "keyspace_info",
            "Keyspaces this region serves, with their policy (always 1)",
            keyspaces.clone(),
        );
        let peer_reachable = Family::<PairLabels, Gauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "peer_reachable",
            "Whether this region hears from the peer region (1) or not (0): the inter-region heartbeat",
            peer_reachable.clone(),
        );
        let peer_rtt =
            Family::<PairLabels, Histogram>::new_with_constructor(rtt_buckets as fn() -> _);
        reg(
            &mut registry,
            &mut names,
            Kind::Histogram,
            "peer_rtt_seconds",
            "Round trip to the peer region, measured by heartbeats",
            peer_rtt.clone(),
        );
        let replication_lag_seconds = Family::<PairLabels, FloatGauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "replication_lag_seconds",
            "Age of the newest time as of which this region holds all of the peer region's writes (rises while a link is cut)",
            replication_lag_seconds.clone(),
        );
        let replication_lag_ops = Family::<PairLabels, Gauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "replication_lag_ops",
            "Writes of the peer region known to exist that this region has not applied",
            replication_lag_ops.clone(),
        );
        let clock_offset_seconds = Family::<PairLabels, FloatGauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "clock_offset_seconds",
            "Estimated clock offset of the peer region (its clock minus ours)",
            clock_offset_seconds.clone(),
        );
        let peer_clock_skewed = Family::<PairLabels, Gauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "peer_clock_skewed",
            "1 while the peer region's clock runs ahead beyond max_clock_offset and its writes are held back",
            peer_clock_skewed.clone(),
        );
        let replication_applied = Family::<PairLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "replication_applied_ops",
            "Replicated writes applied here, by origin region (peer_region)",
            replication_applied.clone(),
        );
        let replication_apply_delay =
            Family::<PairLabels, Histogram>::new_with_constructor(rtt_buckets as fn() -> _);
        reg(
            &mut registry,
            &mut names,
            Kind::Histogram,
            "replication_apply_delay_seconds",
            "Time from a write at its origin region (peer_region) to its application here",
            replication_apply_delay.clone(),
        );
        let conflicts = Family::<ConflictLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "conflicts",
            "Concurrent lww writes resolved, by keyspace and why the winner won; the losers are in the conflict ledger",
            conflicts.clone(),
        );
        let ratelimit_decisions = Family::<DecisionLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "ratelimit_decisions",
            "Rate-limit requests this region decided, by keyspace and decision (allowed: counted; denied: nothing counted)",
            ratelimit_decisions.clone(),
        );
        let sibling_limit_hits = Family::<KeyspaceOnly, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "mvr_sibling_limit_hits",
            "Times an mvr key reached its keyspace's sibling limit",
            sibling_limit_hits.clone(),
        );
        let tombstone_horizon_age = FloatGauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "tombstone_horizon_age_seconds",
            "Age of the tombstone collection horizon (tombstones older than it are collected); -1 until every region has reported",
            tombstone_horizon_age.clone(),
        );
        let tombstones_collected = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "tombstones_collected",
            "Tombstones collected after every region had seen them",
            tombstones_collected.clone(),
        );
        let expired_collected = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "expired_collected",
            "Expired values collected: past their expiry by this region's clock, and every region had applied every write stamped before it",
            expired_collected.clone(),
        );
        let oplog_truncated = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "oplog_truncated_entries",
            "Operation-log entries truncated after every region had applied them and the retention had passed",
            oplog_truncated.clone(),
        );
        let oplog_truncated_seq = Family::<OriginLabels, Gauge<u64, AtomicU64>>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "oplog_truncated_seq",
            "Per origin, the highest sequence number truncated from this region's operation log by this process (the log starts after it)",
            oplog_truncated_seq.clone(),
        );
        let store_disk_bytes = Family::<TableLabels, Gauge<u64, AtomicU64>>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "store_disk_bytes",
            "Bytes on disk per storage table (data, oplog, conflicts, tombstones, late_writes, meta) and the engine's journal",
            store_disk_bytes.clone(),
        );
        let bootstrap_active = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "bootstrap_active",
            "1 while this region replaces its state with a peer's snapshot (it serves no client traffic meanwhile)",
            bootstrap_active.clone(),
        );
        let bootstraps = Family::<OutcomeLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "bootstraps",
            "Bootstrap attempts by outcome (complete, failed)",
            bootstraps.clone(),
        );
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "config_reloads",
            "Config reloads (SIGHUP) by outcome: applied (regions added or removed), unchanged, refused (another change, a voter removed, or a removed region's name reused; nothing taken), failed (the file could not be read, or a removal could not be made durable; the next reload tries again)",
            config_reloads.clone(),
        );
        let region_admitted = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "region_admitted",
            "1 once this region takes writes as a member of the cluster (voters from the start); 0 while a region added to a running cluster waits for every region to admit it",
            region_admitted.clone(),
        );
        let region_removed = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "region_removed",
            "1 once a peer said this region was removed from the cluster (the others reloaded a config without it): it takes no writes, and what it wrote that no member received is not replicated",
            region_removed.clone(),
        );
        let removed_region_settled = Family::<RemovedRegionLabels, Gauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "removed_region_settled",
            "Per region this region removed from the cluster: 1 once its writes are settled (every remaining region removed it and holds as many of its writes), 0 while some region has not reloaded or cannot be reached",
            removed_region_settled.clone(),
        );
        let bootstrap_keys = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "bootstrap_keys",
            "Keys loaded from peers' snapshots",
            bootstrap_keys.clone(),
        );
        let bootstrap_bytes = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "bootstrap_bytes",
            "Bytes of keys and states loaded from peers' snapshots",
            bootstrap_bytes.clone(),
        );
        let bootstrap_corrupt_chunks = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "bootstrap_corrupt_chunks",
            "Snapshot chunks that failed their checksum (refused; the bootstrap retries)",
            bootstrap_corrupt_chunks.clone(),
        );
        let snapshot_chunks_served = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "snapshot_chunks_served",
            "Snapshot chunks this region read for peers' bootstraps",
            snapshot_chunks_served.clone(),
        );
        let heartbeats_refused = Family::<RefusedLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "replication_heartbeats_refused",
            "Heartbeats refused before anything in them was believed, by the peer they named and why (garbled or forged)",
            heartbeats_refused.clone(),
        );
        let replication_requests_refused = Family::<EdgeRefusalLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "replication_requests_refused",
            "Replication requests refused before their handler, by route (heartbeat, subscribe) and reason (too-large: body over its limit; overloaded: the region already serves max_subscription_streams streams)",
            replication_requests_refused.clone(),
        );
        let subscription_streams = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "replication_subscription_streams",
            "Subscription streams of this region's writes it serves to its peers right now",
            subscription_streams.clone(),
        );
        let peer_auth_failures = Family::<ReasonLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "peer_auth_failures",
            "Connections and messages refused on the peer routes, by reason: no_certificate, bad_certificate, handshake (TLS handshake failed), unknown_identity (certificate names no region), identity_mismatch (a peer speaking for another region), unauthenticated",
            peer_auth_failures.clone(),
        );
        let peer_tls_insecure = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "peer_tls_insecure",
            "1 when the cluster runs with [cluster.tls] insecure = true: plain HTTP between regions, peers not authenticated",
            peer_tls_insecure.clone(),
        );
        let fencing_role = Family::<RoleLabels, Gauge>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "fencing_role",
            "1 for the region's current fencing role (active, read-only, primary, fenced, standby, passive), 0 for the others",
            fencing_role.clone(),
        );
        let fencing_epoch = Gauge::<u64, AtomicU64>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "fencing_epoch",
            "Epoch of the write lease as this region last applied it (0 before any holder)",
            fencing_epoch.clone(),
        );
        let fencing_lease_remaining = FloatGauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "fencing_lease_remaining_seconds",
            "Until the write lease could end, from this region's view (0 once expired: another region may be promoted)",
            fencing_lease_remaining.clone(),
        );
        let fencing_window_remaining = FloatGauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "fencing_window_remaining_seconds",
            "This region's own write window left (0 unless it holds the lease and its renewals are answered)",
            fencing_window_remaining.clone(),
        );
        let fencing_lease_held = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "fencing_lease_held",
            "1 while this region holds the write lease with a valid window (sum over regions must never exceed 1)",
            fencing_lease_held.clone(),
        );
        let fencing_writes_refused = Family::<ReasonLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "fencing_writes_refused",
            "Writes refused by fencing, by reason: not-primary, no-window, switchover, minority, superseded-epoch (replicated writes of an old lease epoch stamped after the supersession)",
            fencing_writes_refused.clone(),
        );
        let fencing_promotions = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "fencing_promotions",
            "Times this region took the write lease (grant or switchover)",
            fencing_promotions.clone(),
        );
        let fencing_proposals = Family::<ProposalLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "fencing_proposals",
            "Proposals to the control group, by command (acquire, renew, transfer, presence) and outcome (answered, failed)",
            fencing_proposals.clone(),
        );
        let fencing_promotion_lag = FloatGauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "fencing_promotion_lag_seconds",
            "How far behind the lease holder this region is (what automated promotion compares with max_promotion_lag_ms); -1 when unknown",
            fencing_promotion_lag.clone(),
        );
        let fencing_promotion_blocked = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "fencing_promotion_blocked",
            "1 while the lease has expired but this standby is too far behind (max_promotion_lag_ms) to be promoted automatically",
            fencing_promotion_blocked.clone(),
        );
        let fencing_max_promotion_lag = FloatGauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "fencing_max_promotion_lag_seconds",
            "[fencing] max_promotion_lag_ms of this region's config, in seconds (for the lag alert)",
            fencing_max_promotion_lag.clone(),
        );
        let strong_commit_duration = rtt_buckets();
        reg(
            &mut registry,
            &mut names,
            Kind::Histogram,
            "strong_commit_duration_seconds",
            "Time from proposing a strong keyspace's write to its commit and apply (a round trip from the leader to a quorum, plus the forward to the leader)",
            strong_commit_duration.clone(),
        );
        let strong_leader_changes = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "strong_leader_changes",
            "Changes of the strong group's leader as this region saw them",
            strong_leader_changes.clone(),
        );
        let strong_no_quorum = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "strong_no_quorum",
            "Strong keyspace reads and writes refused with ATOLL-NO-QUORUM (no majority of the regions reachable)",
            strong_no_quorum.clone(),
        );
        let strong_outcome_unknown = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "strong_outcome_unknown",
            "Strong keyspace writes answered ATOLL-STRONG-OUTCOME-UNKNOWN (sent to the leader, no outcome came back)",
            strong_outcome_unknown.clone(),
        );
        let strong_term = Gauge::<u64, AtomicU64>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "strong_term",
            "The strong group's Raft term as this region knows it",
            strong_term.clone(),
        );
        let strong_is_leader = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "strong_is_leader",
            "1 while this region leads the strong group",
            strong_is_leader.clone(),
        );
        let strong_leader_known = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "strong_leader_known",
            "1 while this region knows a leader of the strong group; 0 (quorum lost from here, or an election) means strong keyspaces refuse here",
            strong_leader_known.clone(),
        );
        let owned_forwarded = Family::<OwnedLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "owned_forwarded_writes",
            "Writes to owned keys that reached this region and were forwarded to the key's home (label value: the home)",
            owned_forwarded.clone(),
        );
        let owned_not_home = Family::<OwnedLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "owned_not_home_refusals",
            "Writes to owned keys refused with ATOLL-NOT-HOME (the keyspace does not forward, or the write was forwarded already; label value: the home)",
            owned_not_home.clone(),
        );
        let owned_moves = Family::<OwnedLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "owned_moves",
            "Moves of owned keys this region completed as their new home, by outcome (handed: nothing lost; forced: a takeover of a home that did not release)",
            owned_moves.clone(),
        );
        let owned_claims = Family::<OwnedLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "owned_claims",
            "Keys of owned keyspaces homed by their first write that this region claimed (it became their home; label value: this region)",
            owned_claims.clone(),
        );
        let watchers = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "watchers",
            "Watches (GET /v1/watch/...) open on this region",
            watchers.clone(),
        );
        let watch_events = Counter::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "watch_events",
            "Change events this region built for its watchers",
            watch_events.clone(),
        );
        let watch_dropped = Family::<ReasonLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "watchers_dropped",
            "Watches ended or refused by this region, by reason (slow: the client did not read its buffered events and was told to resume; limit: [api] max_watchers reached)",
            watch_dropped.clone(),
        );
        let resp_commands = Family::<RespLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "resp_commands",
            "Commands served by the RESP (Redis protocol) front, by command (unknown: not one it serves) and outcome (ok, error, denied: NOAUTH/NOPERM/WRONGPASS, unknown, protocol-error: the connection was closed)",
            resp_commands.clone(),
        );
        let resp_connections = Gauge::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Gauge,
            "resp_connections",
            "Open connections of the RESP (Redis protocol) front",
            resp_connections.clone(),
        );
        let consistency_reads = Family::<ConsistencyLabels, Counter>::default();
        reg(
            &mut registry,
            &mut names,
            Kind::Counter,
            "consistency_reads",
            "Reads with a session token (level=session) or a staleness bound (level=bounded), by outcome: served at once, waited (then served), stale (503 ATOLL-STALE), forwarded to a region that has the data, bad-token (400)",
            consistency_reads.clone(),
        );
        let session_wait = latency_buckets();
        reg(
            &mut registry,
            &mut names,
            Kind::Histogram,
            "session_wait_seconds",
            "How long session reads that were behind their token waited for this region to apply it",
            session_wait.clone(),
        );
        Self {
            resp_commands,
            resp_connections,
            consistency_reads,
            session_wait,
            watchers,
            watch_events,
            watch_dropped,
            owned_forwarded,
            owned_not_home,
            owned_moves,
            owned_claims,
            strong_commit_duration,
            strong_leader_changes,
            strong_no_quorum,
            strong_outcome_unknown,
            strong_term,
            strong_is_leader,
            strong_leader_known,
            fencing_max_promotion_lag,
            fencing_role,
            fencing_epoch,
            fencing_lease_remaining,
            fencing_window_remaining,
            fencing_lease_held,
            fencing_writes_refused,
            fencing_promotions,
            fencing_proposals,
            fencing_promotion_lag,
            fencing_promotion_blocked,
            names,
            heartbeats_refused,
            replication_requests_refused,
            subscription_streams,
            peer_auth_failures,
            peer_tls_insecure,
            peer_reachable,
            peer_rtt,
            replication_lag_seconds,
            replication_lag_ops,
            clock_offset_seconds,
            peer_clock_skewed,
            replication_applied,
            replication_apply_delay,
            conflicts,
            sibling_limit_hits,
            ratelimit_decisions,
            tombstone_horizon_age,
            tombstones_collected,
            expired_collected,
            oplog_truncated,
            oplog_truncated_seq,
            store_disk_bytes,
            bootstrap_active,
            bootstraps,
            config_reloads,
            region_admitted,
            region_removed,
            removed_region_settled,
            bootstrap_keys,
            bootstrap_bytes,
            bootstrap_corrupt_chunks,
            snapshot_chunks_served,
            registry,
            http_requests,
            http_duration,
            request_handles: RwLock::default(),
            open_connections,
            store_writes,
            store_commits,
            store_commit_duration,
            store_commit_batch,
            oplog_last_seq,
            info,
            keyspaces,
        }
    }

    /// Counts a served request. `method` is a label as given by [`method_label`]: a client
    /// cannot grow the label set with made-up methods.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let find = |handles: &[RequestHandles]| {
            handles
                .iter()
                .find(|h| h.method == method && h.status == status)
                .map(|h| (h.count.clone(), h.duration.clone()))
        };
        let cached = self
            .request_handles
            .read()
            .ok()
            .and_then(|m| m.get(route).and_then(|v| find(v)));
        let (count, duration) = match cached {
            Some(h) => h,
            None => {
                let labels = RequestLabels {
                    route: route.to_string(),
                    method: method.to_string(),
                    status: status.to_string(),
                };
                let count = self.http_requests.get_or_create(&labels).clone();
                let duration = self.http_duration.get_or_create(&labels).clone();
                if let Ok(mut m) = self.request_handles.write() {
                    let v = m.entry(route.to_string()).or_default();
                    if find(v).is_none() {
                        v.push(RequestHandles {
                            method: method.to_string(),
                            status,
                            count: count.clone(),
                            duration: duration.clone(),
                        });
                    }
                }
                (count, duration)
            }
        };
        count.inc();
        duration.observe(secs);
    }

    /// Counts a config reload by outcome.
    pub fn config_reload(&self, outcome: &str) {
        self.config_reloads
            .get_or_create(&OutcomeLabels::new(outcome))
            .inc();
    }

    pub fn observe_commit(&self, writes: usize, elapsed: Duration) {
        self.store_writes.inc_by(writes as u64);
        self.store_commits.inc();
        self.store_commit_duration.observe(elapsed.as_secs_f64());
        self.store_commit_batch.observe(writes as f64);
    }

    /// Fencing state, refreshed by the fencing loop.
    pub fn set_fencing(
        &self,
        region: &str,
        role: &str,
        epoch: u64,
        lease_left_ms: u64,
        window_left_ms: u64,
        held: u64,
    ) {
        for r in ROLES {
            self.fencing_role
                .get_or_create(&RoleLabels {
                    region: region.to_string(),
                    role: r.to_string(),
                })
                .set(i64::from(r == role));
        }
        self.fencing_epoch.set(epoch);
        self.fencing_lease_remaining
            .set(lease_left_ms as f64 / 1000.0);
        self.fencing_window_remaining
            .set(window_left_ms as f64 / 1000.0);
        self.fencing_lease_held
            .set(i64::try_from(held).unwrap_or(1));
    }

    /// How far behind the holder this region is (`None`: unknown).
    pub fn set_promotion_lag(&self, ms: Option<u64>) {
        self.fencing_promotion_lag
            .set(ms.map_or(-1.0, |m| m as f64 / 1000.0));
    }

    /// A completed move of owned keys (`handed` or `forced`).
    pub fn owned_move(&self, keyspace: &str, outcome: &str) {
        self.owned_moves
            .get_or_create(&OwnedLabels {
                keyspace: keyspace.to_string(),
                value: outcome.to_string(),
            })
            .inc();
    }

    /// A key of an owned keyspace this region claimed by writing it first.
    pub fn owned_claim(&self, keyspace: &str, me: &str) {
        self.owned_claims
            .get_or_create(&OwnedLabels {
                keyspace: keyspace.to_string(),
                value: me.to_string(),
            })
            .inc();
    }

    /// One read with a session token or a staleness bound, by level and outcome.
    pub fn consistency_read(&self, level: &'static str, outcome: &'static str) {
        self.consistency_reads
            .get_or_create(&ConsistencyLabels { level, outcome })
            .inc();
    }

    /// A write to an owned key forwarded to its home.
    pub fn owned_forwarded(&self, keyspace: &str, home: &str) {
        self.owned_forwarded
            .get_or_create(&OwnedLabels {
                keyspace: keyspace.to_string(),
                value: home.to_string(),
            })
            .inc();
    }

    /// A write to an owned key refused with `ATOLL-NOT-HOME`.
    pub fn owned_not_home(&self, keyspace: &str, home: &str) {
        self.owned_not_home
            .get_or_create(&OwnedLabels {
                keyspace: keyspace.to_string(),
                value: home.to_string(),
            })
            .inc();
    }

    /// A RESP command ran.
    pub fn resp_command(&self, command: &str, outcome: &str) {
        self.resp_commands
            .get_or_create(&RespLabels {
                command: command.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A watch ended by this region (`slow`; `truncated`: the log was truncated past it while
    /// it caught up) or refused (`limit`).
    pub fn watch_dropped(&self, reason: &str) {
        self.watch_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn fencing_refused(&self, reason: &str) {
        self.fencing_writes_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A proposal to the control group and its outcome.
    pub fn fencing_proposals(&self, command: &str, outcome: &str) {
        self.fencing_proposals
            .get_or_create(&ProposalLabels {
                command: command.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Gives every labelled family one sample (labels `example`, region `a`, peer `b`), so that
    /// [`Metrics::encode`] shows every family with its label names: what the tests that check
    /// shipped dashboards against the exported labels read. Never called by a serving region.
    pub fn fill_examples(&self) {
        let pair = PairLabels {
            region: "a".into(),
            peer_region: "b".into(),
        };
        let ex = || "example".to_string();
        self.observe_request("/v1/status", "GET", 200, Duration::from_millis(1));
        self.info
            .get_or_create(&RegionLabels {
                region: "a".into(),
                cluster: ex(),
                version: ex(),
            })
            .set(1);
        self.keyspaces
            .get_or_create(&KeyspaceLabels {
                keyspace: ex(),
                policy: "lww".into(),
            })
            .set(1);
        self.peer_reachable.get_or_create(&pair).set(1);
        self.peer_rtt.get_or_create(&pair).observe(0.001);
        self.oplog_truncated_seq
            .get_or_create(&OriginLabels { origin: "b".into() })
            .set(0);
        self.store_disk_bytes
            .get_or_create(&TableLabels {
                table: "oplog".into(),
            })
            .set(0);
        self.bootstraps
            .get_or_create(&OutcomeLabels::new("complete"))
            .inc();
        self.config_reload("applied");
        self.region_admitted.set(1);
        self.region_removed.set(0);
        self.removed_region_settled
            .get_or_create(&RemovedRegionLabels { region: "b".into() })
            .set(1);
        self.replication_lag_seconds.get_or_create(&pair).set(0.0);
        self.replication_lag_ops.get_or_create(&pair).set(0);
        self.clock_offset_seconds.get_or_create(&pair).set(0.0);
        self.peer_clock_skewed.get_or_create(&pair).set(0);
        self.replication_applied.get_or_create(&pair).inc();
        self.replication_apply_delay
            .get_or_create(&pair)
            .observe(0.001);
        self.conflicts
            .get_or_create(&ConflictLabels {
                keyspace: ex(),
                resolution: ex(),
            })
            .inc();
        self.sibling_limit_hits
            .get_or_create(&KeyspaceOnly { keyspace: ex() })
            .inc();
        self.ratelimit_decisions
            .get_or_create(&DecisionLabels {
                keyspace: ex(),
                decision: ex(),
            })
            .inc();
        self.heartbeats_refused
            .get_or_create(&RefusedLabels {
                peer_region: "b".into(),
                reason: ex(),
            })
            .inc();
        self.peer_auth_failures
            .get_or_create(&ReasonLabels { reason: ex() })
            .inc();
        self.replication_requests_refused
            .get_or_create(&EdgeRefusalLabels {
                route: ex(),
                reason: ex(),
            })
            .inc();
        self.set_fencing("a", "active", 0, 0, 0, 0);
        self.fencing_refused("example");
        self.fencing_proposals("example", "example");
        self.owned_forwarded("example", "a");
        self.owned_not_home("example", "a");
        self.owned_move("example", "example");
        self.owned_claim("example", "a");
        self.watch_dropped("example");
        self.resp_command("example", "example");
        self.consistency_read("session", "served");
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn cached_request_handles_count_into_the_families_series() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.observe_request("/v1/kv/{*rest}", "GET", 200, Duration::from_millis(1));
        }
        m.observe_request("/v1/kv/{*rest}", "GET", 404, Duration::from_millis(1));
        m.observe_request("/v1/kv/{*rest}", "PUT", 200, Duration::from_millis(1));
        m.observe_request("/healthz", "GET", 200, Duration::from_millis(1));
        let text = m.encode();
        let counts = series(&text, "atoll_http_requests_total{");
        let value = |route: &str, method: &str, status: &str| -> Option<String> {
            counts
                .iter()
                .find(|l| {
                    l.contains(&format!("route=\"{route}\""))
                        && l.contains(&format!("method=\"{method}\""))
                        && l.contains(&format!("status=\"{status}\""))
                })
                .and_then(|l| l.rsplit(' ').next().map(str::to_string))
        };
        assert_eq!(value("/v1/kv/{*rest}", "GET", "200").as_deref(), Some("3"));
        assert_eq!(value("/v1/kv/{*rest}", "GET", "404").as_deref(), Some("1"));
        assert_eq!(value("/v1/kv/{*rest}", "PUT", "200").as_deref(), Some("1"));
        assert_eq!(value("/healthz", "GET", "200").as_deref(), Some("1"));
        assert_eq!(counts.len(), 4, "{counts:?}");
        let durations = series(&text, "atoll_http_request_duration_seconds_count{");
        assert_eq!(durations.len(), 4, "{durations:?}");
    }

    #[test]
    fn a_made_up_method_is_labelled_other() {
        let ext = axum::http::Method::from_bytes(b"FROBNICATE").expect("a valid token");
        assert_eq!(method_label(&ext), "other");
        assert_eq!(method_label(&axum::http::Method::DELETE), "DELETE");
    }
}
