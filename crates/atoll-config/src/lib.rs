//! `atoll.toml`: the typed, strict cluster config, its validation and its explanation
//! (`atoll config check`).
//!
//! One file describes the whole cluster: the cluster itself (`[cluster]`, with `[cluster.tls]`:
//! mutual TLS between regions, or `insecure = true`), its regions
//! (`[[regions]]`), its keyspaces (`[[keyspaces]]`), storage and replication settings
//! (`[storage]`, `[replication]`), limits of the client API (`[api]`), client authentication
//! (`[auth]`, whose tokens file [`auth::Tokens`] reads) and the traffic router (`[router]`). Each
//! process is told which region it is. [`Config::parse`] / [`Config::load`] read the file into a
//! [`Config`] whose fields are resolved and typed, with every default applied; anything unknown,
//! missing, duplicated, out of range or not applicable to a keyspace's policy is a
//! [`ConfigError`] naming the file, the line and the key. [`Config::explain`] says in plain text
//! what was understood, defaults included.
//! The other way round, [`render::ClusterToml`] writes a cluster config as text: `atoll demo`,
//! the testkit's clusters, the benchmarks and the end-to-end tests render theirs through it.
//!
//! ```
//! let text = r#"
//! [cluster]
//! name = "demo"
//!
//! [[regions]]
//! name = "us-east-1"
//! api = "127.0.0.1:7100"
//!
//! [[keyspaces]]
//! name = "sessions"
//! policy = "lww"
//! "#;
//! let config = atoll_config::Config::parse(text, "atoll.toml").unwrap();
//! assert_eq!(config.keyspace("sessions").unwrap().max_value_bytes, 1 << 20);
//! assert_eq!(config.region("us-east-1").unwrap().peer, "127.0.0.1:7100".parse().unwrap());
//! ```

pub mod advise;
pub mod auth;
pub mod duration;
mod error;
mod explain;
pub mod promise;
mod raw;
pub mod render;
pub mod router;
#[cfg(test)]
mod tests;

pub use atoll_core::op::Policy;
pub use error::ConfigError;
pub use raw::FIRST_WRITE;

use atoll_core::RegionId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The fixed limit on key length, in bytes, for every keyspace.
pub const KEY_MAX_BYTES: usize = 1024;

/// Default `max_value_bytes` of an `lww` or `mvr` keyspace: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// Largest accepted `max_value_bytes`: 16 MiB.
pub const MAX_VALUE_BYTES_LIMIT: usize = 16 << 20;

/// Default `max_siblings` of an `mvr` keyspace.
pub const DEFAULT_MAX_SIBLINGS: usize = 16;

/// Default `conflict_retention_secs` of an `lww` keyspace: one day.
pub const DEFAULT_CONFLICT_RETENTION_SECS: u64 = 86_400;

/// Default `conflict_max_entries` of an `lww` keyspace.
pub const DEFAULT_CONFLICT_MAX_ENTRIES: usize = 10_000;

/// Default `cluster.max_clock_offset_ms`.
pub const DEFAULT_MAX_CLOCK_OFFSET_MS: u64 = 500;

/// Default `storage.group_commit_max_batch`.
pub const DEFAULT_GROUP_COMMIT_MAX_BATCH: usize = 512;

/// Default `replication.oplog_retention`: ten minutes.
pub const DEFAULT_OPLOG_RETENTION_MS: u64 = 10 * 60 * 1000;
/// Largest `replication.oplog_retention`: thirty days.
pub const OPLOG_RETENTION_MAX_MS: u64 = 30 * 24 * 3600 * 1000;

/// Default `replication.heartbeat_interval_ms`.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 1000;

/// Default `replication.max_lag_secs`.
pub const DEFAULT_MAX_LAG_SECS: u64 = 10;

/// Subscription streams a region serves at once per peer unless
/// `replication.max_subscription_streams` says otherwise: a peer holds one, and a broken one can
/// linger until the region notices; the rest is headroom.
pub const DEFAULT_SUBSCRIPTION_STREAMS_PER_PEER: usize = 4;

/// Most regions one cluster may declare. It bounds the size of every replication message (a
/// heartbeat and a subscription request carry one entry per region), and so the body limits of
/// the replication endpoints.
pub const MAX_REGIONS: usize = 256;

/// An arbiter closer than this to a region is in the same location (one metro area): `atoll
/// config check` warns.
pub const SAME_LOCATION_KM: f64 = 100.0;

/// Default `api.max_json_body_bytes`: 4 MiB.
pub const DEFAULT_MAX_JSON_BODY_BYTES: usize = 4 << 20;

/// Smallest accepted `api.max_json_body_bytes`: 1 KiB.
pub const MAX_JSON_BODY_BYTES_MIN: usize = 1 << 10;

/// Largest accepted `api.max_json_body_bytes`: 64 MiB.
pub const MAX_JSON_BODY_BYTES_LIMIT: usize = 64 << 20;

/// Default `api.session_wait`: how long a read that presents a session token waits for this
/// region to apply what the token names before it answers `ATOLL-STALE`.
pub const DEFAULT_SESSION_WAIT_MS: u64 = 500;

/// Longest `api.session_wait`, and longest `wait_ms` a read may ask for.
pub const SESSION_WAIT_MAX_MS: u64 = 10_000;

/// Accepted keyspace `max_staleness`: 1 ms to a day.
pub const MAX_STALENESS_MS: std::ops::RangeInclusive<u64> = 1..=86_400_000;

/// Default `api.max_watchers`: open watches (`GET /v1/watch/...`) one region serves at once.
pub const DEFAULT_MAX_WATCHERS: usize = 1024;

/// A whole, validated `atoll.toml` with every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub cluster: ClusterConfig,
    /// In file order; names, API addresses and peer addresses are unique.
    pub regions: Vec<RegionConfig>,
    /// In file order; names are unique.
    pub keyspaces: Vec<KeyspaceConfig>,
    pub storage: StorageConfig,
    pub replication: ReplicationConfig,
    pub api: ApiConfig,
    /// `[router]`, if the cluster has a traffic manager.
    pub router: Option<router::RouterConfig>,
    /// `[auth]`: client authentication (off unless it names a tokens file).
    pub auth: auth::AuthConfig,
    /// `[fencing]`: the write lease and quorum fencing.
    pub fencing: FencingConfig,
    /// `[resp]`: how the RESP (Redis protocol) front maps keys to keyspaces
    /// (`docs/design/resp.md`); it listens only in regions with a `resp` address.
    pub resp: RespConfig,
    /// The file (or source name) the config was read from, for messages.
    pub source: String,
}

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// 1-63 characters of `[a-z0-9-]`.
    pub name: String,
    pub model: Model,
    /// How far ahead a peer's clock may run before its writes are rejected (1..=60000 ms).
    pub max_clock_offset_ms: u64,
    /// `[cluster.tls]`: how regions talk to each other.
    pub tls: PeerTls,
    /// `[cluster.arbiter]`: the witness that votes in the control group (fencing), if any.
    pub arbiter: Option<ArbiterConfig>,
    /// `rto`: the recovery time objective, in ms, if declared. `atoll config check` warns when
    /// what the config promises (failover by DNS, the proxy, promotion) takes longer.
    pub rto_ms: Option<u64>,
}

/// `[cluster.arbiter]`: a lightweight process (`atoll arbiter`) that votes in the control group
/// and stores no keyspace data (`docs/design/fencing.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct ArbiterConfig {
    /// Its name, which its TLS certificate carries (`<name>.atoll`); distinct from every region.
    pub name: RegionId,
    /// Where regions reach it (mutual TLS, like a region's peer listener).
    pub peer: SocketAddr,
    /// Where it runs, if declared: `atoll config check` warns when that is where a region is
    /// (an arbiter must fail independently of the regions it arbitrates).
    pub location: Option<GeoPoint>,
}

/// `[fencing]`: the write lease and quorum fencing (`docs/design/fencing.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct FencingConfig {
    /// Takes the never-held lease at once (active-standby, active-passive).
    pub initial_primary: RegionId,
    pub lease_ms: u64,
    pub renew_every_ms: u64,
    pub margin_ms: u64,
    pub max_drift_ppm: u64,
    /// Automated promotion only within this lag behind the old primary (the RPO guard).
    pub max_promotion_lag_ms: u64,
    /// Active-active: a region that cannot reach a majority (the arbiter counts) refuses writes
    /// to keyspaces with `on_minority = "read-only"`.
    pub quorum: bool,
    /// Active-standby: a standby forwards a client write to the lease holder's client API and
    /// relays its answer, instead of refusing it with `ATOLL-NOT-PRIMARY`.
    pub forward_writes: bool,
}

impl FencingConfig {
    /// The lease timing a region runs (`atoll_core::fence`) as member `me` of `regions` in
    /// `topology`: one construction for the regions, the config's validation and what
    /// `config check` promises.
    pub fn core(
        &self,
        me: RegionId,
        topology: atoll_core::fence::Topology,
        regions: Vec<RegionId>,
    ) -> atoll_core::fence::FenceConfig {
        atoll_core::fence::FenceConfig {
            lease_ms: self.lease_ms,
            renew_every_ms: self.renew_every_ms,
            margin_ms: self.margin_ms,
            max_drift_ppm: self.max_drift_ppm,
            max_promotion_lag_ms: self.max_promotion_lag_ms,
            propose_timeout_ms: self.lease_ms.saturating_sub(self.margin_ms).max(500),
            ..atoll_core::fence::FenceConfig::new(
                me,
                topology,
                regions,
                self.initial_primary.clone(),
            )
        }
    }

    /// Defaults, with `initial_primary` the first region.
    pub fn defaults(initial_primary: RegionId) -> Self {
        Self {
            initial_primary,
            lease_ms: DEFAULT_LEASE_MS,
            renew_every_ms: DEFAULT_RENEW_EVERY_MS,
            margin_ms: DEFAULT_MARGIN_MS,
            max_drift_ppm: DEFAULT_MAX_DRIFT_PPM,
            max_promotion_lag_ms: DEFAULT_MAX_PROMOTION_LAG_MS,
            quorum: false,
            forward_writes: false,
        }
    }
}

/// `[fencing] lease_ms` default.
pub const DEFAULT_LEASE_MS: u64 = 5_000;
/// `[fencing] renew_every_ms` default.
pub const DEFAULT_RENEW_EVERY_MS: u64 = 1_000;
/// `[fencing] margin_ms` default.
pub const DEFAULT_MARGIN_MS: u64 = 250;
/// `[fencing] max_drift_ppm` default.
pub const DEFAULT_MAX_DRIFT_PPM: u64 = 1_000;
/// `[fencing] max_promotion_lag_ms` default.
pub const DEFAULT_MAX_PROMOTION_LAG_MS: u64 = 10_000;

/// What a keyspace does on a region cut off from the majority (active-active quorum fencing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnMinority {
    /// Keep accepting writes (sessions, rate limits, carts: region-local data that must keep
    /// working in every region, and converges after the partition).
    #[default]
    Available,
    /// Refuse writes until a majority answers again (inventory, ledgers).
    ReadOnly,
}

impl OnMinority {
    pub fn as_str(self) -> &'static str {
        match self {
            OnMinority::Available => "available",
            OnMinority::ReadOnly => "read-only",
        }
    }
}

/// `[cluster.tls]`: how regions talk to each other (see `docs/design/mtls.md`).
#[derive(Clone, Debug, PartialEq)]
pub enum PeerTls {
    /// No `[cluster.tls]` section. Fine for a single region (nothing crosses regions) and for
    /// the processes that never speak between regions (`atoll router`, `atoll link`); a cluster
    /// of several regions must declare one of the others ([`Config::check_peer_tls`], which
    /// `atoll region` and `atoll config check` apply).
    Undeclared,
    /// Mutual TLS: every region's peer listener requires a client certificate signed by the
    /// cluster CA, and every region presents its own certificate.
    Mutual(TlsFiles),
    /// `insecure = true`: plain HTTP between regions, nobody authenticated. Loudly reported.
    Insecure,
}

impl PeerTls {
    /// `mutual-tls`, `insecure` or `undeclared`, as `/v1/status` reports it.
    pub fn mode(&self) -> &'static str {
        match self {
            PeerTls::Undeclared => "undeclared",
            PeerTls::Mutual(_) => "mutual-tls",
            PeerTls::Insecure => "insecure",
        }
    }
}

/// The placeholder in `cert` and `key` that stands for a region's name.
pub const REGION_PLACEHOLDER: &str = "{region}";

/// What every process logs, shows and prints when a cluster runs with `insecure = true`.
pub const INSECURE_WARNING: &str = "[cluster.tls] insecure = true: regions replicate over plain HTTP and peers are not authenticated; anyone who can reach a region's peer address can speak for any region. Create certificates with `atoll certs init` and configure mutual TLS";

/// The files of mutual TLS between regions. Relative paths in the file are resolved against the
/// config file's directory ([`Config::load`]; [`Config::parse`] leaves them relative to the
/// working directory).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM).
    pub ca: PathBuf,
    /// Each region's certificate chain (PEM), `{region}` standing for the region's name.
    pub cert: PathBuf,
    /// Each region's private key (PEM, PKCS#8, SEC1 or PKCS#1), `{region}` standing for the
    /// region's name.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The certificate file of `region`.
    pub fn cert_for(&self, region: &str) -> PathBuf {
        for_region(&self.cert, region)
    }

    /// The private key file of `region`.
    pub fn key_for(&self, region: &str) -> PathBuf {
        for_region(&self.key, region)
    }
}

fn for_region(pattern: &Path, region: &str) -> PathBuf {
    match pattern.to_str() {
        Some(s) => PathBuf::from(s.replace(REGION_PLACEHOLDER, region)),
        None => pattern.to_path_buf(),
    }
}

/// The cluster's topology model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// Every region serves reads and writes.
    #[default]
    ActiveActive,
    /// One primary; standbys serve reads and are promoted automatically.
    ActiveStandby,
    /// One primary; warm replicas are promoted by an operator.
    ActivePassive,
}

impl Model {
    pub const ALL: [Model; 3] = [
        Model::ActiveActive,
        Model::ActiveStandby,
        Model::ActivePassive,
    ];

    /// The name used in the config file (`active-active`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Model::ActiveActive => "active-active",
            Model::ActiveStandby => "active-standby",
            Model::ActivePassive => "active-passive",
        }
    }

    pub fn parse(s: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[regions]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionConfig {
    pub name: RegionId,
    /// Client HTTP API address.
    pub api: SocketAddr,
    /// Replication address; `api` unless set.
    pub peer: SocketAddr,
    pub location: Option<GeoPoint>,
    /// The address the router's DNS answers with for this region; the api address's IP unless set.
    pub dns_address: std::net::IpAddr,
    /// The RESP (Redis protocol) listener, if this region serves one (`docs/design/resp.md`).
    pub resp: Option<SocketAddr>,
    /// A member of the control group and the strong group, counted in every majority (`true`,
    /// the default); `false`: a replica added to a running cluster, which replicates every
    /// eventual keyspace and is in no consensus group (`docs/design/adding-regions.md`).
    pub voter: bool,
}

/// What a config reload changes in a running region ([`Config::reload_change`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReloadChange {
    /// Regions appended with `voter = false` (`docs/design/adding-regions.md`).
    pub added: Vec<RegionConfig>,
    /// Regions with `voter = false` gone from the list (`docs/design/region-removal.md`).
    pub removed: Vec<RegionConfig>,
}

impl ReloadChange {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Default `[resp] max_connections`.
pub const DEFAULT_RESP_MAX_CONNECTIONS: usize = 4096;

/// `[resp]`: the RESP front's key rule and limits (`docs/design/resp.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespConfig {
    /// The keyspace of a Redis key whose text before the first `:` is not a declared keyspace
    /// (or that has no `:`); `None`: such a key is an error naming the keyspaces.
    pub default_keyspace: Option<String>,
    /// Most open RESP connections per region (1..=65536); one more is answered
    /// `-ERR max number of clients reached` and closed.
    pub max_connections: usize,
}

impl Default for RespConfig {
    fn default() -> Self {
        Self {
            default_keyspace: None,
            max_connections: DEFAULT_RESP_MAX_CONNECTIONS,
        }
    }
}

/// Where a Redis key goes: `(keyspace, key)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespKey<'a> {
    /// Keyspace `keyspace`, key `key`.
    Key { keyspace: &'a str, key: &'a [u8] },
    /// The prefix names no declared keyspace and there is no `default_keyspace`.
    Unknown { prefix: &'a [u8] },
}

impl Config {
    /// The keyspace and key of Redis key `raw` under the `[resp]` rule: the text before the first
    /// `:` names the keyspace; a key without a known prefix goes whole to `default_keyspace`.
    pub fn resp_key<'a>(&'a self, raw: &'a [u8]) -> RespKey<'a> {
        let split = raw.iter().position(|b| *b == b':');
        if let Some(i) = split {
            let prefix = &raw[..i];
            if let Some(k) = self.keyspaces.iter().find(|k| k.name.as_bytes() == prefix) {
                return RespKey::Key {
                    keyspace: &k.name,
                    key: &raw[i + 1..],
                };
            }
        }
        match &self.resp.default_keyspace {
            Some(ks) => RespKey::Key {
                keyspace: ks,
                key: raw,
            },
            None => RespKey::Unknown {
                prefix: split.map_or(raw, |i| &raw[..i]),
            },
        }
    }

    /// The voter regions (`voter = true`, the default), in config order: the members of the
    /// control group and the strong group.
    pub fn voters(&self) -> impl Iterator<Item = &RegionConfig> {
        self.regions.iter().filter(|r| r.voter)
    }

    /// Whether `region` is declared and a voter.
    pub fn is_voter(&self, region: &str) -> bool {
        self.region(region).is_some_and(|r| r.voter)
    }

    /// What a running region may take from `new`, the file it was started with read again
    /// (`docs/design/adding-regions.md`, `docs/design/region-removal.md`): regions appended with
    /// `voter = false`, and regions that are `voter = false` here dropped from the list, and
    /// nothing else. `Ok` says which regions were added and which removed (both empty: nothing
    /// changed); `Err` says what other change the file has, and nothing is taken.
    pub fn reload_change(&self, new: &Config) -> Result<ReloadChange, String> {
        let in_new = |name: &RegionId| new.regions.iter().find(|r| r.name == *name);
        // A region kept must be kept as it was: a changed table is not a removal and an add.
        let changed: Vec<&str> = self
            .regions
            .iter()
            .filter(|r| in_new(&r.name).is_some_and(|n| n != *r))
            .map(|r| r.name.as_str())
            .collect();
        if !changed.is_empty() {
            return Err(format!(
                "region {} changed: a running region takes only regions appended with voter = false and replicas removed from the list (changing a region's table needs a restart)",
                changed.join(", ")
            ));
        }
        let removed: Vec<RegionConfig> = self
            .regions
            .iter()
            .filter(|r| in_new(&r.name).is_none())
            .cloned()
            .collect();
        let voters: Vec<&str> = removed
            .iter()
            .filter(|r| r.voter)
            .map(|r| r.name.as_str())
            .collect();
        if !voters.is_empty() {
            return Err(format!(
                "region {} is a voter and is gone from the list: removing a voter changes the members of the control group and the strong group, which is not supported at run time (only regions with voter = false can be removed by a reload)",
                voters.join(", ")
            ));
        }
        // The regions kept, in their order, then the appended ones.
        let kept = self.regions.len() - removed.len();
        if new.regions.len() < kept
            || new.regions[..kept]
                .iter()
                .zip(self.regions.iter().filter(|r| in_new(&r.name).is_some()))
                .any(|(n, o)| n != o)
        {
            return Err(
                "the regions already declared changed order, or a region was inserted among them: a running region takes only regions appended to the list"
                    .to_string(),
            );
        }
        let added = new.regions[kept..].to_vec();
        if let Some(r) = added.iter().find(|r| r.voter) {
            return Err(format!(
                "region `{}` is added as a voter: a region added to a running cluster must say voter = false (the consensus groups keep the members they started with)",
                r.name
            ));
        }
        let mut same = new.clone();
        same.regions = self.regions.clone();
        same.source = self.source.clone();
        // The router section names regions too; its own process reads it.
        same.router = self.router.clone();
        if same != *self {
            let what = [
                ("[cluster]", same.cluster != self.cluster),
                ("[[keyspaces]]", same.keyspaces != self.keyspaces),
                ("[storage]", same.storage != self.storage),
                ("[replication]", same.replication != self.replication),
                ("[api]", same.api != self.api),
                ("[auth]", same.auth != self.auth),
                ("[fencing]", same.fencing != self.fencing),
                ("[resp]", same.resp != self.resp),
            ]
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
            .join(", ");
            return Err(format!(
                "{what} changed: a running region takes only regions appended with voter = false and replicas removed from the list; restart it to apply other changes"
            ));
        }
        Ok(ReloadChange { added, removed })
    }
}

/// Geographic coordinates in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GeoPoint {
    /// -90..=90.
    pub lat: f64,
    /// -180..=180.
    pub lon: f64,
}

/// One `[[keyspaces]]` entry. Every option holds its value or default even where it does not
/// apply to the policy (see [`KeyspaceConfig::options`]).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyspaceConfig {
    /// 1-64 characters of `[a-z0-9_-]`.
    pub name: String,
    pub policy: Policy,
    /// Largest accepted value (lww, mvr, strong), 1..=16 MiB.
    pub max_value_bytes: usize,
    /// Most siblings one key keeps (mvr), 1..=1024.
    pub max_siblings: usize,
    /// How long the conflict ledger keeps an entry (lww).
    pub conflict_retention_secs: u64,
    /// Most entries the conflict ledger keeps (lww).
    pub conflict_max_entries: usize,
    /// Writes on a region cut off from the majority (active-active with `[fencing] quorum`).
    pub on_minority: OnMinority,
    /// Bounded staleness by default: a read of this keyspace is refused (`ATOLL-STALE`) when the
    /// region's staleness bound exceeds it, unless the read says otherwise (`max_staleness=`).
    /// `None`: eventual (session when a read presents a token). Not for `strong`.
    pub max_staleness_ms: Option<u64>,
    /// `default_ttl`: the time to live of a put that names none (lww, owned and mvr;
    /// `docs/design/expiring-keys.md`). `None`: keys never expire unless a write says so.
    pub default_ttl_ms: Option<u64>,
    /// A `ratelimit` keyspace's rule: `limit`, `window`, `algorithm`, `budget`
    /// (`docs/design/rate-limits.md`); `None` for every other policy.
    pub ratelimit: Option<atoll_core::crdt::ratewindow::RateRule>,
    /// Homes of an `owned` keyspace (`None` for every other policy).
    pub owned: Option<OwnedConfig>,
}

/// The ownership options of an `owned` keyspace (`docs/design/owned-keyspaces.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedConfig {
    /// `homes` (prefix or hash range to region, each kind disjoint) and `default_home` (`None`:
    /// `"first-write"`).
    pub rules: atoll_core::home::HomeRules,
    /// A write that reaches another region is forwarded to its home (`forward = true`, the
    /// default) or refused with `ATOLL-NOT-HOME`.
    pub forward: bool,
    /// Regions that take a down home's keys over, in order (empty: no takeover; writes to a
    /// down home's keys fail until an operator re-homes them).
    pub takeover: Vec<RegionId>,
}

impl KeyspaceConfig {
    /// A keyspace with every option at its default.
    pub fn new(name: impl Into<String>, policy: Policy) -> Self {
        Self {
            name: name.into(),
            policy,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_siblings: DEFAULT_MAX_SIBLINGS,
            conflict_retention_secs: DEFAULT_CONFLICT_RETENTION_SECS,
            conflict_max_entries: DEFAULT_CONFLICT_MAX_ENTRIES,
            on_minority: OnMinority::Available,
            max_staleness_ms: None,
            default_ttl_ms: None,
            ratelimit: None,
            owned: None,
        }
    }

    /// The options that apply to this keyspace's policy, as `(key, value)` pairs in file syntax.
    pub fn options(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for &key in KeyspaceOption::ALL_KEYS {
            if KeyspaceOption::applies(key, self.policy) {
                let value = match key {
                    "max_value_bytes" => self.max_value_bytes as u64,
                    "max_siblings" => self.max_siblings as u64,
                    "conflict_retention_secs" => self.conflict_retention_secs,
                    _ => self.conflict_max_entries as u64,
                };
                out.push((key, value));
            }
        }
        out
    }
}

/// What a keyspace's name says it holds, when that is data that must stay
/// region-local (sessions, feature flags, rate limits, caches): a cross-region call on every request
/// would put another region's latency and availability on the critical path.
fn region_local_kind(name: &str) -> Option<&'static str> {
    let n = name.to_ascii_lowercase().replace(['-', '_'], "");
    if n.contains("session") {
        Some("sessions")
    } else if n.contains("flag") {
        Some("feature flags")
    } else if n.contains("ratelimit") || n.contains("quota") {
        Some("rate limits")
    } else if n.contains("cache") {
        Some("a cache")
    } else {
        None
    }
}

/// Which keyspace options apply to which policies.
pub(crate) struct KeyspaceOption;

impl KeyspaceOption {
    pub(crate) const ALL_KEYS: &'static [&'static str] = &[
        "max_value_bytes",
        "max_siblings",
        "conflict_retention_secs",
        "conflict_max_entries",
    ];

    pub(crate) fn applies(key: &str, policy: Policy) -> bool {
        match key {
            "max_value_bytes" => {
                matches!(policy.storage(), Policy::Lww | Policy::Mvr | Policy::Strong)
            }
            "max_siblings" => matches!(policy, Policy::Mvr),
            "conflict_retention_secs" | "conflict_max_entries" => matches!(policy, Policy::Lww),
            _ => false,
        }
    }

    /// The policies that accept option `key`.
    pub(crate) fn accepted_by(key: &str) -> Vec<Policy> {
        Policy::ALL
            .into_iter()
            .filter(|&p| Self::applies(key, p))
            .collect()
    }
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageConfig {
    /// Most writes that share one fsync (1..=65536).
    pub group_commit_max_batch: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            group_commit_max_batch: DEFAULT_GROUP_COMMIT_MAX_BATCH,
        }
    }
}

/// `[replication]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicationConfig {
    /// How often every region sends a heartbeat to every peer (10..=60000 ms). A peer not heard
    /// from for three intervals is unreachable.
    pub heartbeat_interval_ms: u64,
    /// Replication lag above which `atoll status` reports a peer as lagging and exits non-zero.
    pub max_lag_secs: u64,
    /// Most subscription streams a region serves at once (1..=65536); more are refused with
    /// `503 ATOLL-OVERLOADED` until one ends. `None`: [`DEFAULT_SUBSCRIPTION_STREAMS_PER_PEER`]
    /// per peer (see [`ReplicationConfig::subscription_stream_limit`]).
    pub max_subscription_streams: Option<usize>,
    /// How long an operation-log entry that every region has applied is kept before it is
    /// truncated (`docs/design/oplog-truncation.md`): a margin for a region restored from a
    /// slightly old backup to catch up from the log rather than by snapshot. Entries some region
    /// has not applied are kept whatever this says.
    pub oplog_retention_ms: u64,
}

impl ReplicationConfig {
    /// The most subscription streams a region of a cluster of `regions` regions serves at once:
    /// `max_subscription_streams`, else 4 per peer (at least 4).
    pub fn subscription_stream_limit(&self, regions: usize) -> usize {
        self.max_subscription_streams.unwrap_or_else(|| {
            (DEFAULT_SUBSCRIPTION_STREAMS_PER_PEER * regions.saturating_sub(1))
                .max(DEFAULT_SUBSCRIPTION_STREAMS_PER_PEER)
        })
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            max_lag_secs: DEFAULT_MAX_LAG_SECS,
            max_subscription_streams: None,
            oplog_retention_ms: DEFAULT_OPLOG_RETENTION_MS,
        }
    }
}

/// `[api]`: limits of every region's client HTTP API.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiConfig {
    /// Largest JSON request body (counter and set updates), 1 KiB..=64 MiB. A kv value's limit
    /// is its keyspace's `max_value_bytes` instead.
    pub max_json_body_bytes: usize,
    /// Most open watches (`GET /v1/watch/...`, `docs/design/watch.md`), 1..=65536; one more is
    /// refused with `ATOLL-TOO-MANY-WATCHERS`.
    pub max_watchers: usize,
    /// How long a read that presents a session token waits, unless it says `wait_ms`
    /// (`docs/design/session-consistency.md`), 0..=10 s.
    pub session_wait_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_json_body_bytes: DEFAULT_MAX_JSON_BODY_BYTES,
            max_watchers: DEFAULT_MAX_WATCHERS,
            session_wait_ms: DEFAULT_SESSION_WAIT_MS,
        }
    }
}

impl Config {
    /// Things that are valid but likely mistakes (known multi-region anti-patterns), for
    /// `atoll config check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let beat = self.replication.heartbeat_interval_ms;
        for k in &self.keyspaces {
            if let Some(ms) = k.max_staleness_ms
                && ms < 2 * beat
            {
                out.push(format!(
                    "keyspace `{}` has max_staleness = {}, under twice the heartbeat interval ({} ms): a region learns it is caught up only from heartbeats, so its staleness bound often exceeds this and its reads are refused even with every link up; use at least {} plus the worst one-way delay",
                    k.name,
                    crate::duration::to_config(ms),
                    beat,
                    crate::duration::to_config(2 * beat)
                ));
            }
            if let Some(shares) = k.ratelimit.as_ref().and_then(|r| r.shares.as_ref())
                && let Some((r, _)) = shares.iter().find(|(_, n)| **n == 0)
            {
                out.push(format!(
                    "keyspace `{}` splits a limit of {} between {} regions: {r} gets a share of 0 and admits nothing; raise the limit to at least the number of regions, or use budget = \"shared\"",
                    k.name,
                    k.ratelimit.as_ref().map_or(0, |r| r.limit),
                    shares.len()
                ));
            }
        }
        if self.auth.tokens_file.is_none() {
            out.push(
                "no [auth] section: the client API of every region is open (anyone who reaches a region's address can read and write every keyspace); name a tokens file with [auth] tokens_file (see examples/tokens.toml)".to_string(),
            );
        }
        if self.cluster.tls == PeerTls::Insecure {
            out.push(INSECURE_WARNING.to_string());
        }
        let fenced = self.cluster.model != Model::ActiveActive || self.fencing.quorum;
        if fenced && self.control_voters().is_multiple_of(2) {
            out.push(format!(
                "the control group has {} voters ({} regions{}): an even number, so a split into two halves leaves neither a majority and stops writes everywhere; add [cluster.arbiter] (a witness in a third location) or another region",
                self.control_voters(),
                self.voters().count(),
                if self.cluster.arbiter.is_some() { " and the arbiter" } else { ", no arbiter" }
            ));
        }
        for k in &self.keyspaces {
            // Owned, or a policy that is not a CRDT (strong): a write may leave the region.
            let crosses = k.policy == Policy::Owned
                || !matches!(
                    k.policy.storage(),
                    Policy::Lww | Policy::Mvr | Policy::Counter | Policy::Set | Policy::RateLimit
                );
            if let Some(kind) = region_local_kind(&k.name)
                && crosses
            {
                out.push(format!(
                    "keyspace `{}` is `{}` but looks like {kind}, which should stay region-local (lww, counter, set or ratelimit): every {} a cross-region round trip on the request's critical path{}",
                    k.name,
                    k.policy,
                    if k.policy == Policy::Owned { "write away from its home costs" } else { "read and write costs" },
                    if k.policy == Policy::Owned { "" } else { ", and it is refused in a region cut off from the majority" }
                ));
            }
        }
        let strong = self.keyspaces.iter().any(|k| k.policy == Policy::Strong);
        let voters = self.voters().count();
        if strong && voters.is_multiple_of(2) {
            out.push(format!(
                "strong keyspaces are replicated by a group of the {voters} voter regions (the arbiter is no member: it holds no keyspace data): an even number, so {} of them must be up and reachable for strong reads and writes{}",
                voters / 2 + 1,
                if voters == 2 { ", which means both" } else { "" }
            ));
        }
        out.extend(
            self.router
                .as_ref()
                .map(router::warnings)
                .unwrap_or_default(),
        );
        out.extend(self.arbiter_placement_warnings());
        out.extend(promise::rto_warnings(self, &self.promises()));
        out
    }

    /// The arbiter must fail independently of the regions: not where one of them is (within
    /// [`SAME_LOCATION_KM`] of its `location`), nor on one of their hosts (an IP address a region
    /// uses, loopback aside: a single-machine demo runs everything on it).
    fn arbiter_placement_warnings(&self) -> Vec<String> {
        let Some(a) = &self.cluster.arbiter else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for r in &self.regions {
            if let (Some(al), Some(rl)) = (a.location, r.location) {
                let km = atoll_core::geo::great_circle_km(al.lat, al.lon, rl.lat, rl.lon);
                if km < SAME_LOCATION_KM {
                    out.push(format!(
                        "the arbiter `{}` is placed {km:.0} km from region {} (cluster.arbiter.location): an outage of that location takes both, and the survivors lose their tiebreaker; the article puts the arbiter in a third region or an availability zone not shared by either",
                        a.name, r.name
                    ));
                    continue;
                }
            }
            let ip = a.peer.ip();
            if !ip.is_loopback() && !ip.is_unspecified() && (r.api.ip() == ip || r.peer.ip() == ip)
            {
                out.push(format!(
                    "the arbiter `{}` has the IP address {ip} of region {}: on one host they fail together, and the survivors lose their tiebreaker; run the arbiter in a third location",
                    a.name, r.name
                ));
            }
        }
        out
    }

    /// What this config promises when a region dies: DNS, proxy and promotion times and each
    /// keyspace's RPO bound ([`promise`]).
    pub fn promises(&self) -> promise::Promises {
        promise::promises(self)
    }

    /// Whether this config says how its regions talk to each other, as a process that speaks
    /// between regions (`atoll region`, `atoll config check`) requires: a cluster of several
    /// regions needs `[cluster.tls]` with mutual TLS files or `insecure = true`.
    pub fn check_peer_tls(&self) -> Result<(), ConfigError> {
        if self.cluster.tls != PeerTls::Undeclared || self.regions.len() < 2 {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            file: self.source.clone(),
            line: None,
            column: None,
            key: "cluster.tls".into(),
            message: format!(
                "the cluster has {} regions but no [cluster.tls] section saying how they talk to each other. For mutual TLS, run `atoll certs init --config {} --out certs` (it creates a cluster CA and a certificate per region, and prints the [cluster.tls] lines to add) and give every region a `peer` address of its own; or add `[cluster.tls]` with `insecure = true` to replicate over plain HTTP without authentication (not for production)",
                self.regions.len(),
                self.source
            ),
        })
    }

    /// Parses and validates the text of an `atoll.toml`. `source` names the file in messages.
    /// Relative `[cluster.tls]` paths stay relative to the working directory.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        raw::parse(text, source, Path::new(""))
    }

    /// Reads, parses and validates the file at `path`. Relative `[cluster.tls]` paths are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        raw::parse(&text, &path.display().to_string(), base)
    }

    /// Voters of the control group: every voter region, and the arbiter if configured.
    pub fn control_voters(&self) -> usize {
        self.voters().count() + usize::from(self.cluster.arbiter.is_some())
    }

    /// The region named `name`.
    pub fn region(&self, name: &str) -> Option<&RegionConfig> {
        self.regions.iter().find(|r| r.name.as_str() == name)
    }

    /// The keyspace named `name`.
    pub fn keyspace(&self, name: &str) -> Option<&KeyspaceConfig> {
        self.keyspaces.iter().find(|k| k.name == name)
    }

    /// A human-readable summary of everything understood, defaults included.
    pub fn explain(&self) -> String {
        explain::explain(self)
    }
}
