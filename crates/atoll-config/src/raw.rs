//! The file as written (serde, strict, with spans) and its resolution into a [`Config`].

use crate::error::{ConfigError, join_key, line_column};
use crate::{
    ApiConfig, ClusterConfig, Config, DEFAULT_CONFLICT_MAX_ENTRIES,
    DEFAULT_CONFLICT_RETENTION_SECS, DEFAULT_GROUP_COMMIT_MAX_BATCH, DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_MAX_CLOCK_OFFSET_MS, DEFAULT_MAX_JSON_BODY_BYTES, DEFAULT_MAX_LAG_SECS,
    DEFAULT_MAX_SIBLINGS, DEFAULT_MAX_VALUE_BYTES, GeoPoint, KeyspaceConfig, KeyspaceOption,
    MAX_JSON_BODY_BYTES_LIMIT, MAX_JSON_BODY_BYTES_MIN, MAX_REGIONS, MAX_VALUE_BYTES_LIMIT, Model,
    PeerTls, REGION_PLACEHOLDER, RegionConfig, ReplicationConfig, StorageConfig, TlsFiles,
};
use atoll_core::op::Policy;
use atoll_core::{AtollError, RegionId};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    cluster: Option<RawCluster>,
    #[serde(default)]
    regions: Vec<Spanned<RawRegion>>,
    #[serde(default)]
    keyspaces: Vec<Spanned<RawKeyspace>>,
    #[serde(default)]
    storage: Option<RawStorage>,
    #[serde(default)]
    replication: Option<RawReplication>,
    #[serde(default)]
    api: Option<RawApi>,
    #[serde(default)]
    router: Option<crate::router::RawRouter>,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    fencing: Option<RawFencing>,
    #[serde(default)]
    resp: Option<RawResp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResp {
    #[serde(default)]
    default_keyspace: Option<Spanned<String>>,
    #[serde(default)]
    max_connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFencing {
    #[serde(default)]
    initial_primary: Option<Spanned<String>>,
    #[serde(default)]
    lease_ms: Option<Spanned<i64>>,
    #[serde(default)]
    renew_every_ms: Option<Spanned<i64>>,
    #[serde(default)]
    margin_ms: Option<Spanned<i64>>,
    #[serde(default)]
    max_drift_ppm: Option<Spanned<i64>>,
    #[serde(default)]
    max_promotion_lag_ms: Option<Spanned<i64>>,
    #[serde(default)]
    quorum: Option<bool>,
    #[serde(default)]
    forward_writes: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArbiter {
    #[serde(default)]
    name: Option<Spanned<String>>,
    peer: Spanned<String>,
    #[serde(default)]
    location: Option<RawGeo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    tokens_file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default)]
    max_json_body_bytes: Option<Spanned<i64>>,
    #[serde(default)]
    max_watchers: Option<Spanned<i64>>,
    #[serde(default)]
    session_wait: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    #[serde(default)]
    model: Option<Model>,
    #[serde(default)]
    max_clock_offset_ms: Option<Spanned<i64>>,
    #[serde(default)]
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    arbiter: Option<Spanned<RawArbiter>>,
    #[serde(default)]
    rto: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    ca: Option<Spanned<String>>,
    #[serde(default)]
    cert: Option<Spanned<String>>,
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    insecure: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: Spanned<String>,
    api: Spanned<String>,
    #[serde(default)]
    peer: Option<Spanned<String>>,
    #[serde(default)]
    location: Option<RawGeo>,
    #[serde(default)]
    dns_address: Option<Spanned<String>>,
    #[serde(default)]
    resp: Option<Spanned<String>>,
    /// `false`: a replica added to a running cluster (`docs/design/adding-regions.md`).
    #[serde(default)]
    voter: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeo {
    lat: Spanned<f64>,
    lon: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyspace {
    name: Spanned<String>,
    policy: Policy,
    #[serde(default)]
    max_value_bytes: Option<Spanned<i64>>,
    #[serde(default)]
    max_siblings: Option<Spanned<i64>>,
    #[serde(default)]
    conflict_retention_secs: Option<Spanned<i64>>,
    #[serde(default)]
    conflict_max_entries: Option<Spanned<i64>>,
    #[serde(default)]
    on_minority: Option<crate::OnMinority>,
    #[serde(default)]
    max_staleness: Option<Spanned<String>>,
    #[serde(default)]
    default_ttl: Option<Spanned<String>>,
    #[serde(default)]
    limit: Option<Spanned<i64>>,
    #[serde(default)]
    window: Option<Spanned<String>>,
    #[serde(default)]
    algorithm: Option<Spanned<String>>,
    #[serde(default)]
    budget: Option<Spanned<String>>,
    #[serde(default)]
    default_home: Option<Spanned<String>>,
    #[serde(default)]
    homes: Option<Spanned<Vec<Spanned<RawHome>>>>,
    #[serde(default)]
    forward: Option<Spanned<bool>>,
    #[serde(default)]
    takeover: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHome {
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    /// `[lo, hi]`: the keys whose hash bucket (`atoll_core::home::key_bucket`) is in `lo..=hi`.
    #[serde(default)]
    hash: Option<Spanned<Vec<i64>>>,
    region: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    #[serde(default)]
    heartbeat_interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    max_lag_secs: Option<Spanned<i64>>,
    #[serde(default)]
    max_subscription_streams: Option<Spanned<i64>>,
    #[serde(default)]
    oplog_retention: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default)]
    group_commit_max_batch: Option<Spanned<i64>>,
}

const MAX_CLOCK_OFFSET_MS: RangeInclusive<i64> = 1..=60_000;
const MAX_VALUE_BYTES: RangeInclusive<i64> = 1..=MAX_VALUE_BYTES_LIMIT as i64;
const MAX_SIBLINGS: RangeInclusive<i64> = 1..=1024;
/// Up to one year.
const CONFLICT_RETENTION_SECS: RangeInclusive<i64> = 1..=31_536_000;
const CONFLICT_MAX_ENTRIES: RangeInclusive<i64> = 1..=1_000_000;
const GROUP_COMMIT_MAX_BATCH: RangeInclusive<i64> = 1..=65_536;
const HEARTBEAT_INTERVAL_MS: RangeInclusive<i64> = 10..=60_000;
const MAX_LAG_SECS: RangeInclusive<i64> = 1..=86_400;
const MAX_SUBSCRIPTION_STREAMS: RangeInclusive<i64> = 1..=65_536;
const MAX_JSON_BODY_BYTES: RangeInclusive<i64> =
    MAX_JSON_BODY_BYTES_MIN as i64..=MAX_JSON_BODY_BYTES_LIMIT as i64;

/// Where errors point: the text (for line numbers) and the file name.
pub(crate) struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(text: &'a str, file: &'a str) -> Self {
        Self { text, file }
    }
}

impl Ctx<'_> {
    pub(crate) fn err(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::invalid_at(self.text, self.file, Some(span), key, message)
    }

    pub(crate) fn err_nowhere(
        &self,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::invalid_at(self.text, self.file, None, key, message)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        line_column(self.text, span.start).0
    }

    /// The value of an optional integer option, range-checked, or its default.
    pub(crate) fn int(
        &self,
        value: &Option<Spanned<i64>>,
        key: &str,
        range: RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, ConfigError> {
        let Some(v) = value else { return Ok(default) };
        let n = *v.get_ref();
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(self.err(
                v.span(),
                key,
                format!(
                    "{n} is out of range: must be {} to {}",
                    range.start(),
                    range.end()
                ),
            ))
        }
    }
}

pub(crate) fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::from_toml(e, text, file))?;
    let cx = Ctx { text, file };
    let cluster = cluster(&cx, raw.cluster.as_ref(), base)?;
    let mut cluster = cluster;
    let regions = regions(&cx, &raw.regions, matches!(cluster.tls, PeerTls::Mutual(_)))?;
    replicas(&cx, &raw.regions, &regions, cluster.model)?;
    cluster.arbiter = match raw.cluster.as_ref().and_then(|c| c.arbiter.as_ref()) {
        Some(a) => Some(arbiter(&cx, a, &regions)?),
        None => None,
    };
    let fencing = fencing(&cx, raw.fencing.as_ref(), &regions, cluster.model)?;
    let keyspaces = keyspaces(&cx, &raw.keyspaces, &regions, cluster.model, fencing.quorum)?;
    let resp = resp(&cx, raw.resp.as_ref(), &keyspaces)?;
    Ok(Config {
        resp,
        fencing,
        source: file.to_string(),
        cluster,
        router: crate::router::router(&cx, raw.router.as_ref(), &regions)?,
        regions,
        keyspaces,
        storage: storage(&cx, raw.storage.as_ref())?,
        replication: replication(&cx, raw.replication.as_ref())?,
        api: api(&cx, raw.api.as_ref())?,
        auth: auth(&cx, raw.auth.as_ref(), file)?,
    })
}

/// `[resp]`: the RESP front's default keyspace (a declared one) and connection limit.
fn resp(
    cx: &Ctx<'_>,
    raw: Option<&RawResp>,
    keyspaces: &[KeyspaceConfig],
) -> Result<crate::RespConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(crate::RespConfig::default());
    };
    let default_keyspace = match &raw.default_keyspace {
        None => None,
        Some(d) => {
            if !keyspaces.iter().any(|k| &k.name == d.get_ref()) {
                return Err(cx.err(
                    d.span(),
                    "resp.default_keyspace",
                    format!(
                        "`{}` is not a declared keyspace (declared: {})",
                        d.get_ref(),
                        keyspaces
                            .iter()
                            .map(|k| k.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            Some(d.get_ref().clone())
        }
    };
    let max_connections = cx.int(
        &raw.max_connections,
        "resp.max_connections",
        1..=65_536,
        crate::DEFAULT_RESP_MAX_CONNECTIONS as i64,
    )? as usize;
    Ok(crate::RespConfig {
        default_keyspace,
        max_connections,
    })
}

/// `[auth]`: the tokens file, relative to the config file's directory unless absolute.
fn auth(
    cx: &Ctx<'_>,
    raw: Option<&RawAuth>,
    file: &str,
) -> Result<crate::auth::AuthConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(crate::auth::AuthConfig::default());
    };
    let given = raw.tokens_file.get_ref();
    if given.trim().is_empty() {
        return Err(cx.err(
            raw.tokens_file.span(),
            "auth.tokens_file",
            "the path is empty: name the tokens file (e.g. \"tokens.toml\", next to this config), or remove [auth] to leave the client API open",
        ));
    }
    let path = std::path::Path::new(given);
    let resolved = match std::path::Path::new(file).parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    };
    Ok(crate::auth::AuthConfig {
        tokens_file: Some(resolved),
    })
}

fn api(cx: &Ctx<'_>, raw: Option<&RawApi>) -> Result<ApiConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ApiConfig::default());
    };
    let max = cx.int(
        &raw.max_json_body_bytes,
        "api.max_json_body_bytes",
        MAX_JSON_BODY_BYTES,
        DEFAULT_MAX_JSON_BODY_BYTES as i64,
    )?;
    let watchers = cx.int(
        &raw.max_watchers,
        "api.max_watchers",
        1..=65_536,
        crate::DEFAULT_MAX_WATCHERS as i64,
    )?;
    let session_wait_ms = match &raw.session_wait {
        None => crate::DEFAULT_SESSION_WAIT_MS,
        Some(w) => {
            let ms = crate::duration::parse_ms(w.get_ref())
                .map_err(|m| cx.err(w.span(), "api.session_wait", m))?;
            if ms > crate::SESSION_WAIT_MAX_MS {
                return Err(cx.err(
                    w.span(),
                    "api.session_wait",
                    format!(
                        "`{}` is out of range: a session read waits 0 to 10s (longer holds a client's request open; answer ATOLL-STALE and let it retry elsewhere)",
                        w.get_ref()
                    ),
                ));
            }
            ms
        }
    };
    Ok(ApiConfig {
        max_json_body_bytes: max as usize,
        max_watchers: watchers as usize,
        session_wait_ms,
    })
}

fn cluster(
    cx: &Ctx<'_>,
    raw: Option<&RawCluster>,
    base: &Path,
) -> Result<ClusterConfig, ConfigError> {
    let Some(raw) = raw else {
        return Err(cx.err_nowhere(
            "cluster",
            "the [cluster] table is missing: add one with at least `name = \"...\"`",
        ));
    };
    let name = raw.name.get_ref();
    if !valid_name(name, 63, false) {
        return Err(cx.err(
            raw.name.span(),
            "cluster.name",
            format!("invalid cluster name `{name}`: use 1-63 characters of a-z, 0-9 and '-'"),
        ));
    }
    let offset = cx.int(
        &raw.max_clock_offset_ms,
        "cluster.max_clock_offset_ms",
        MAX_CLOCK_OFFSET_MS,
        DEFAULT_MAX_CLOCK_OFFSET_MS as i64,
    )?;
    Ok(ClusterConfig {
        name: name.clone(),
        model: raw.model.unwrap_or_default(),
        max_clock_offset_ms: offset as u64,
        tls: match &raw.tls {
            Some(t) => tls(cx, t, base)?,
            None => PeerTls::Undeclared,
        },
        arbiter: None,
        rto_ms: match &raw.rto {
            Some(r) => Some(rto(cx, r)?),
            None => None,
        },
    })
}

/// Accepted `cluster.rto`: a second to 30 days.
const RTO_MS: RangeInclusive<u64> = 1_000..=30 * 86_400_000;

/// `[cluster] rto`: the recovery time objective the cluster is meant to meet (`30s`, `5m`).
fn rto(cx: &Ctx<'_>, raw: &Spanned<String>) -> Result<u64, ConfigError> {
    let ms = crate::duration::parse_ms(raw.get_ref())
        .map_err(|m| cx.err(raw.span(), "cluster.rto", m))?;
    if !RTO_MS.contains(&ms) {
        return Err(cx.err(
            raw.span(),
            "cluster.rto",
            format!("`{}` is out of range: an rto is 1s to 30d", raw.get_ref()),
        ));
    }
    Ok(ms)
}

/// `[cluster.arbiter]`: a name distinct from every region, an address no region uses.
fn arbiter(
    cx: &Ctx<'_>,
    raw: &Spanned<RawArbiter>,
    regions: &[RegionConfig],
) -> Result<crate::ArbiterConfig, ConfigError> {
    let a = raw.get_ref();
    let (name, span) = match &a.name {
        Some(n) => (n.get_ref().clone(), n.span()),
        None => ("arbiter".to_string(), raw.span()),
    };
    let id = RegionId::new(&name)
        .map_err(|e| cx.err(span.clone(), "cluster.arbiter.name", core_message(e)))?;
    if regions.iter().any(|r| r.name == id) {
        return Err(cx.err(
            span,
            "cluster.arbiter.name",
            format!("`{name}` is also a region's name: the arbiter needs a name of its own (its certificate is `{name}.atoll`)"),
        ));
    }
    let peer = address(cx, &a.peer, "cluster.arbiter.peer")?;
    if let Some(r) = regions
        .iter()
        .find(|r| r.api == peer || r.peer == peer || r.resp == Some(peer))
    {
        return Err(cx.err(
            a.peer.span(),
            "cluster.arbiter.peer",
            format!(
                "address {peer} is already an address of region `{}`; the arbiter needs its own",
                r.name
            ),
        ));
    }
    let location = match &a.location {
        Some(g) => Some(geo(cx, g, "cluster.arbiter.location")?),
        None => None,
    };
    Ok(crate::ArbiterConfig {
        name: id,
        peer,
        location,
    })
}

const LEASE_MS: RangeInclusive<i64> = 500..=600_000;
const RENEW_EVERY_MS: RangeInclusive<i64> = 50..=300_000;
const MARGIN_MS: RangeInclusive<i64> = 10..=60_000;
const MAX_DRIFT_PPM: RangeInclusive<i64> = 0..=10_000;
const MAX_PROMOTION_LAG_MS: RangeInclusive<i64> = 0..=86_400_000;

/// `[fencing]`, checked against the drift bound (`atoll_core::fence::FenceConfig::validate`).
fn fencing(
    cx: &Ctx<'_>,
    raw: Option<&RawFencing>,
    regions: &[RegionConfig],
    model: Model,
) -> Result<crate::FencingConfig, ConfigError> {
    let first = match regions.first() {
        Some(r) => r.name.clone(),
        None => return Err(cx.err_nowhere("regions", "no region is declared")),
    };
    let mut f = crate::FencingConfig::defaults(first);
    let Some(raw) = raw else { return Ok(f) };
    if let Some(p) = &raw.initial_primary {
        let Some(r) = regions.iter().find(|r| r.name.as_str() == p.get_ref()) else {
            return Err(cx.err(
                p.span(),
                "fencing.initial_primary",
                format!(
                    "`{}` is not a region of the cluster (declared: {})",
                    p.get_ref(),
                    regions
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        f.initial_primary = r.name.clone();
    }
    f.lease_ms = cx.int(
        &raw.lease_ms,
        "fencing.lease_ms",
        LEASE_MS,
        f.lease_ms as i64,
    )? as u64;
    f.renew_every_ms = cx.int(
        &raw.renew_every_ms,
        "fencing.renew_every_ms",
        RENEW_EVERY_MS,
        f.renew_every_ms as i64,
    )? as u64;
    f.margin_ms = cx.int(
        &raw.margin_ms,
        "fencing.margin_ms",
        MARGIN_MS,
        f.margin_ms as i64,
    )? as u64;
    f.max_drift_ppm = cx.int(
        &raw.max_drift_ppm,
        "fencing.max_drift_ppm",
        MAX_DRIFT_PPM,
        f.max_drift_ppm as i64,
    )? as u64;
    f.max_promotion_lag_ms = cx.int(
        &raw.max_promotion_lag_ms,
        "fencing.max_promotion_lag_ms",
        MAX_PROMOTION_LAG_MS,
        f.max_promotion_lag_ms as i64,
    )? as u64;
    f.quorum = raw.quorum.unwrap_or(false);
    if f.quorum && model != Model::ActiveActive {
        return Err(cx.err_nowhere(
            "fencing.quorum",
            format!("quorum fencing is for active-active clusters; a {model} cluster is fenced by its write lease already: remove `quorum`"),
        ));
    }
    f.forward_writes = raw.forward_writes.unwrap_or(false);
    if f.forward_writes && model != Model::ActiveStandby {
        let why = match model {
            Model::ActiveActive => "every region of an active-active cluster takes writes itself",
            _ => {
                "the regions without the lease in an active-passive cluster are passive and serve no client traffic, so there is nothing to forward"
            }
        };
        return Err(cx.err_nowhere(
            "fencing.forward_writes",
            format!("forwarding writes to the primary is for active-standby clusters: {why}; remove `forward_writes`"),
        ));
    }
    let core = f.core(
        f.initial_primary.clone(),
        atoll_core::fence::Topology::ActiveStandby,
        regions.iter().map(|r| r.name.clone()).collect(),
    );
    core.validate().map_err(|m| cx.err_nowhere("fencing", m))?;
    Ok(f)
}

/// `[cluster.tls]`: either `insecure = true` alone, or `ca`, `cert` and `key`.
fn tls(cx: &Ctx<'_>, raw: &Spanned<RawTls>, base: &Path) -> Result<PeerTls, ConfigError> {
    let t = raw.get_ref();
    let paths = [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)];
    if let Some(insecure) = &t.insecure
        && *insecure.get_ref()
    {
        if let Some((field, Some(v))) = paths.iter().find(|(_, v)| v.is_some()) {
            return Err(cx.err(
                v.span(),
                format!("cluster.tls.{field}"),
                "`insecure = true` turns TLS between regions off, so it takes no files: remove `insecure` to use mutual TLS, or remove ca, cert and key",
            ));
        }
        return Ok(PeerTls::Insecure);
    }
    let mut resolved = Vec::with_capacity(3);
    for (field, value) in paths {
        let key = format!("cluster.tls.{field}");
        let Some(v) = value else {
            return Err(cx.err(
                raw.span(),
                key,
                format!(
                    "mutual TLS between regions needs `ca`, `cert` and `key` (`{field}` is missing): `atoll certs init --config FILE --out DIR` creates the files and prints the lines to add; or set `insecure = true` for plain HTTP between regions (not for production)"
                ),
            ));
        };
        let path = v.get_ref();
        if path.trim().is_empty() {
            return Err(cx.err(v.span(), key, "the path is empty"));
        }
        let rest = path.replace(REGION_PLACEHOLDER, "");
        if rest.contains('{') || rest.contains('}') {
            return Err(cx.err(
                v.span(),
                key,
                format!("`{path}`: the only placeholder is {REGION_PLACEHOLDER} (a region's name)"),
            ));
        }
        if field == "ca" && path.contains(REGION_PLACEHOLDER) {
            return Err(cx.err(
                v.span(),
                key,
                format!(
                    "the cluster has one CA for every region: its path cannot contain {REGION_PLACEHOLDER}"
                ),
            ));
        }
        resolved.push(base.join(path));
    }
    let mut it = resolved.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(ca), Some(cert), Some(key)) => Ok(PeerTls::Mutual(TlsFiles { ca, cert, key })),
        _ => Err(cx.err_nowhere("cluster.tls", "ca, cert and key are required")),
    }
}

/// The rules of `voter = false` (`docs/design/adding-regions.md`): active-active only, and at
/// least one voter.
fn replicas(
    cx: &Ctx<'_>,
    raw: &[Spanned<RawRegion>],
    regions: &[RegionConfig],
    model: Model,
) -> Result<(), ConfigError> {
    if regions.iter().all(|r| !r.voter) {
        return Err(cx.err_nowhere(
            "regions",
            "every region is declared voter = false: at least one region must be a voter (the founding regions are; only regions added to a running cluster are replicas)",
        ));
    }
    if model != Model::ActiveActive
        && let Some((i, span)) = raw.iter().enumerate().find_map(|(i, r)| {
            r.get_ref()
                .voter
                .as_ref()
                .filter(|v| !*v.get_ref())
                .map(|v| (i, v.span()))
        })
    {
        return Err(cx.err(
            span,
            format!("regions[{i}].voter"),
            format!(
                "voter = false needs cluster.model = \"active-active\": in `{}` every region is a candidate for the write lease, so every region is a member of the control group",
                model.as_str()
            ),
        ));
    }
    Ok(())
}

fn regions(
    cx: &Ctx<'_>,
    raw: &[Spanned<RawRegion>],
    mutual_tls: bool,
) -> Result<Vec<RegionConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(cx.err_nowhere(
            "regions",
            "no region is declared: add at least one [[regions]] table with a name and an api address",
        ));
    }
    if raw.len() > MAX_REGIONS {
        let span = raw[MAX_REGIONS].span();
        return Err(cx.err(
            span,
            format!("regions[{MAX_REGIONS}]"),
            format!(
                "{} regions are declared; a cluster has at most {MAX_REGIONS} (replication messages carry one entry per region, and their size is bounded)",
                raw.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    // name -> line of first declaration; address -> (region, key, line) of first use.
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, (String, &'static str, usize)> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        let r = r.get_ref();
        let key = |field: &str| format!("regions[{i}].{field}");
        let name = r.name.get_ref();
        let id =
            RegionId::new(name).map_err(|e| cx.err(r.name.span(), key("name"), core_message(e)))?;
        if let Some(first) = names.insert(name, cx.line(&r.name.span())) {
            return Err(cx.err(
                r.name.span(),
                key("name"),
                format!("duplicate region name `{name}` (first declared at line {first})"),
            ));
        }
        let api = address(cx, &r.api, &key("api"))?;
        let peer = match &r.peer {
            Some(p) => address(cx, p, &key("peer"))?,
            None => api,
        };
        if mutual_tls && peer == api {
            let (span, field) = match &r.peer {
                Some(p) => (p.span(), "peer"),
                None => (r.name.span(), "peer"),
            };
            return Err(cx.err(
                span,
                key(field),
                format!(
                    "with mutual TLS between regions ([cluster.tls]), region `{name}` needs a `peer` address of its own for its peer listener, different from its api address {api} (e.g. peer = \"{}:{}\")",
                    api.ip(),
                    api.port().saturating_add(100)
                ),
            ));
        }
        let mut uses = vec![("api", api, r.api.span())];
        if let Some(p) = &r.peer
            && peer != api
        {
            uses.push(("peer", peer, p.span()));
        }
        let resp = match &r.resp {
            Some(s) => {
                let a = address(cx, s, &key("resp"))?;
                if a == api || a == peer {
                    return Err(cx.err(
                        s.span(),
                        key("resp"),
                        format!(
                            "address {a} of region `{name}` is also its {} address: the RESP listener needs a port of its own",
                            if a == api { "api" } else { "peer" }
                        ),
                    ));
                }
                uses.push(("resp", a, s.span()));
                Some(a)
            }
            None => None,
        };
        for (field, addr, span) in uses {
            if let Some((other, other_field, line)) = addrs.get(&addr) {
                return Err(cx.err(
                    span,
                    key(field),
                    format!(
                        "address {addr} of region `{name}` is already the {other_field} address of region `{other}` (line {line}); every region needs its own addresses"
                    ),
                ));
            }
            addrs.insert(addr, (name.clone(), field, cx.line(&span)));
        }
        let location = match &r.location {
            Some(g) => Some(geo(cx, g, &key("location"))?),
            None => None,
        };
        let dns_address = match &r.dns_address {
            Some(a) => a.get_ref().parse::<std::net::IpAddr>().map_err(|_| {
                cx.err(
                    a.span(),
                    key("dns_address"),
                    format!("`{}` is not an IP address", a.get_ref()),
                )
            })?,
            None => api.ip(),
        };
        out.push(RegionConfig {
            name: id,
            api,
            peer,
            location,
            dns_address,
            resp,
            voter: r.voter.as_ref().is_none_or(|v| *v.get_ref()),
        });
    }
    Ok(out)
}

fn core_message(e: AtollError) -> String {
    match e {
        AtollError::Config(m) => m,
        other => other.to_string(),
    }
}

fn geo(cx: &Ctx<'_>, raw: &RawGeo, key: &str) -> Result<GeoPoint, ConfigError> {
    let check = |v: &Spanned<f64>, field: &str, limit: f64, what: &str| {
        let x = *v.get_ref();
        if (-limit..=limit).contains(&x) {
            Ok(x)
        } else {
            Err(cx.err(
                v.span(),
                join_key(key, field),
                format!("{what} {x} is out of range: must be -{limit} to {limit} degrees"),
            ))
        }
    };
    Ok(GeoPoint {
        lat: check(&raw.lat, "lat", 90.0, "latitude")?,
        lon: check(&raw.lon, "lon", 180.0, "longitude")?,
    })
}

fn address(cx: &Ctx<'_>, raw: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
    parse_address(raw.get_ref()).map_err(|m| cx.err(raw.span(), key, m))
}

/// Parses `ip:port` (`[v6]:port` for IPv6), explaining what is wrong otherwise.
pub(crate) fn parse_address(s: &str) -> Result<SocketAddr, String> {
    const EXPECTED: &str = "write ip:port, e.g. \"127.0.0.1:7100\" (\"[::1]:7100\" for IPv6; hostnames are not accepted)";
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!(
                "address \"{s}\" has port 0: clients and peers need a fixed port (1-65535)"
            ));
        }
        return Ok(addr);
    }
    if s.trim().is_empty() {
        return Err(format!("the address is empty: {EXPECTED}"));
    }
    if s.parse::<IpAddr>().is_ok() || !s.contains(':') {
        return Err(format!("address \"{s}\" has no port: {EXPECTED}"));
    }
    let (host, port) = s.rsplit_once(':').unwrap_or((s, ""));
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "address \"{s}\" has an invalid port \"{port}\" (must be a number from 1 to 65535): {EXPECTED}"
        ));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Err(format!(
        "address \"{s}\": \"{host}\" is not an IP address: {EXPECTED}"
    ))
}

fn keyspaces(
    cx: &Ctx<'_>,
    raw: &[Spanned<RawKeyspace>],
    regions: &[RegionConfig],
    model: crate::Model,
    quorum: bool,
) -> Result<Vec<KeyspaceConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(cx.err_nowhere(
            "keyspaces",
            "no keyspace is declared: add at least one [[keyspaces]] table with a name and a policy (lww, mvr, counter, set or strong)",
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, k) in raw.iter().enumerate() {
        let k = k.get_ref();
        let key = |field: &str| format!("keyspaces[{i}].{field}");
        let name = k.name.get_ref();
        if !valid_name(name, 64, true) {
            return Err(cx.err(
                k.name.span(),
                key("name"),
                format!(
                    "invalid keyspace name `{name}`: use 1-64 characters of a-z, 0-9, '_' and '-'"
                ),
            ));
        }
        if let Some(first) = names.insert(name, cx.line(&k.name.span())) {
            return Err(cx.err(
                k.name.span(),
                key("name"),
                format!("duplicate keyspace name `{name}` (first declared at line {first})"),
            ));
        }
        let policy = k.policy;
        let options = [
            ("max_value_bytes", &k.max_value_bytes),
            ("max_siblings", &k.max_siblings),
            ("conflict_retention_secs", &k.conflict_retention_secs),
            ("conflict_max_entries", &k.conflict_max_entries),
        ];
        for (option, value) in options {
            if let Some(v) = value
                && !KeyspaceOption::applies(option, policy)
            {
                let accepted: Vec<String> = KeyspaceOption::accepted_by(option)
                    .into_iter()
                    .map(|p| format!("`{p}`"))
                    .collect();
                return Err(cx.err(
                    v.span(),
                    key(option),
                    format!(
                        "{option} does not apply to keyspace `{name}`, whose policy is `{policy}`; only {} keyspaces accept it",
                        accepted.join(" and ")
                    ),
                ));
            }
        }
        if policy == Policy::Strong && k.on_minority.is_some() {
            return Err(cx.err_nowhere(
                key("on_minority"),
                format!(
                    "on_minority does not apply to keyspace `{name}`, whose policy is `strong`: a strong keyspace always refuses reads and writes in a region that cannot reach a majority of the regions (ATOLL-NO-QUORUM)"
                ),
            ));
        }
        let max_staleness_ms = match &k.max_staleness {
            None => None,
            Some(_) if policy == Policy::Strong => {
                return Err(cx.err_nowhere(
                    key("max_staleness"),
                    format!(
                        "max_staleness does not apply to keyspace `{name}`, whose policy is `strong`: its reads are linearizable"
                    ),
                ));
            }
            Some(m) => {
                let ms = crate::duration::parse_ms(m.get_ref())
                    .map_err(|e| cx.err(m.span(), key("max_staleness"), e))?;
                if !crate::MAX_STALENESS_MS.contains(&ms) {
                    return Err(cx.err(
                        m.span(),
                        key("max_staleness"),
                        format!(
                            "`{}` is out of range: a max_staleness is 1ms to 1d",
                            m.get_ref()
                        ),
                    ));
                }
                Some(ms)
            }
        };
        let default_ttl_ms = match &k.default_ttl {
            None => None,
            Some(t) if !matches!(policy.storage(), Policy::Lww | Policy::Mvr) => {
                return Err(cx.err(
                    t.span(),
                    key("default_ttl"),
                    format!(
                        "default_ttl does not apply to keyspace `{name}`, whose policy is `{policy}`: only `lww`, `owned` and `mvr` keyspaces hold expiring keys (docs/design/expiring-keys.md)"
                    ),
                ));
            }
            Some(t) => {
                let ms = crate::duration::parse_ms(t.get_ref())
                    .map_err(|e| cx.err(t.span(), key("default_ttl"), e))?;
                if ms == 0 || ms > atoll_core::op::MAX_TTL_MS {
                    return Err(cx.err(
                        t.span(),
                        key("default_ttl"),
                        format!(
                            "`{}` is out of range: a default_ttl is 1ms to 100 years (leave it out for keys that never expire)",
                            t.get_ref()
                        ),
                    ));
                }
                Some(ms)
            }
        };
        let ratelimit = ratelimit(cx, k, &key, name, policy, regions)?;
        out.push(KeyspaceConfig {
            name: name.clone(),
            policy,
            max_value_bytes: cx.int(
                &k.max_value_bytes,
                &key("max_value_bytes"),
                MAX_VALUE_BYTES,
                DEFAULT_MAX_VALUE_BYTES as i64,
            )? as usize,
            max_siblings: cx.int(
                &k.max_siblings,
                &key("max_siblings"),
                MAX_SIBLINGS,
                DEFAULT_MAX_SIBLINGS as i64,
            )? as usize,
            conflict_retention_secs: cx.int(
                &k.conflict_retention_secs,
                &key("conflict_retention_secs"),
                CONFLICT_RETENTION_SECS,
                DEFAULT_CONFLICT_RETENTION_SECS as i64,
            )? as u64,
            conflict_max_entries: cx.int(
                &k.conflict_max_entries,
                &key("conflict_max_entries"),
                CONFLICT_MAX_ENTRIES,
                DEFAULT_CONFLICT_MAX_ENTRIES as i64,
            )? as usize,
            on_minority: k.on_minority.unwrap_or_default(),
            max_staleness_ms,
            default_ttl_ms,
            ratelimit,
            owned: owned(cx, k, &key, regions, model, quorum)?,
        });
    }
    Ok(out)
}

/// Most cost a `ratelimit` keyspace may admit per window.
pub const MAX_RATE_LIMIT: i64 = 1_000_000_000;
/// Longest rate-limit window: a day.
pub const MAX_RATE_WINDOW_MS: u64 = 86_400_000;

/// The rule of keyspace `k` (`policy = "ratelimit"`): `limit` and `window` required, `algorithm`
/// (`sliding`, the default, or `fixed`) and `budget` (`shared`, the default, or `split`: each
/// region's share of the limit, in region order, adding up to the limit). Refused on any other
/// policy.
fn ratelimit(
    cx: &Ctx<'_>,
    k: &RawKeyspace,
    key: &dyn Fn(&str) -> String,
    name: &str,
    policy: Policy,
    regions: &[RegionConfig],
) -> Result<Option<atoll_core::crdt::ratewindow::RateRule>, ConfigError> {
    use atoll_core::crdt::ratewindow::{Algorithm, RateRule};
    if policy != Policy::RateLimit {
        for (option, span) in [
            ("limit", k.limit.as_ref().map(|v| v.span())),
            ("window", k.window.as_ref().map(|v| v.span())),
            ("algorithm", k.algorithm.as_ref().map(|v| v.span())),
            ("budget", k.budget.as_ref().map(|v| v.span())),
        ] {
            if let Some(span) = span {
                return Err(cx.err(
                    span,
                    key(option),
                    format!(
                        "{option} does not apply to keyspace `{name}`, whose policy is `{policy}`; only `ratelimit` keyspaces accept it"
                    ),
                ));
            }
        }
        return Ok(None);
    }
    let missing = |option: &str, example: &str| {
        cx.err_nowhere(
            key(option),
            format!(
                "keyspace `{name}` is a ratelimit keyspace and needs `{option}` (e.g. {option} = {example})"
            ),
        )
    };
    let limit = match &k.limit {
        None => return Err(missing("limit", "100")),
        Some(l) if !(1..=MAX_RATE_LIMIT).contains(l.get_ref()) => {
            return Err(cx.err(
                l.span(),
                key("limit"),
                format!(
                    "{} is out of range: a limit is 1 to {MAX_RATE_LIMIT} per window",
                    l.get_ref()
                ),
            ));
        }
        Some(l) => *l.get_ref() as u64,
    };
    let window_ms = match &k.window {
        None => return Err(missing("window", "\"1m\"")),
        Some(w) => {
            let ms = crate::duration::parse_ms(w.get_ref())
                .map_err(|e| cx.err(w.span(), key("window"), e))?;
            if ms == 0 || ms > MAX_RATE_WINDOW_MS {
                return Err(cx.err(
                    w.span(),
                    key("window"),
                    format!("`{}` is out of range: a window is 1ms to 1d", w.get_ref()),
                ));
            }
            ms
        }
    };
    let algorithm = match k.algorithm.as_ref().map(|a| (a, a.get_ref().as_str())) {
        None | Some((_, "sliding")) => Algorithm::Sliding,
        Some((_, "fixed")) => Algorithm::Fixed,
        Some((a, other)) => {
            return Err(cx.err(
                a.span(),
                key("algorithm"),
                format!("unknown algorithm `{other}`: use \"sliding\" (the default) or \"fixed\""),
            ));
        }
    };
    let shares = match k.budget.as_ref().map(|b| (b, b.get_ref().as_str())) {
        None | Some((_, "shared")) => None,
        Some((_, "split")) => {
            // Divided among the voters: a replica added at run time admits nothing of a split
            // budget, so adding one changes no share (`docs/design/adding-regions.md`).
            let voters: Vec<&RegionConfig> = regions.iter().filter(|r| r.voter).collect();
            let n = voters.len().max(1) as u64;
            Some(
                voters
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let extra = u64::from((i as u64) < limit % n);
                        (r.name.clone(), limit / n + extra)
                    })
                    .collect(),
            )
        }
        Some((b, other)) => {
            return Err(cx.err(
                b.span(),
                key("budget"),
                format!(
                    "unknown budget `{other}`: use \"shared\" (the default: any region admits while the count it knows is under the limit) or \"split\" (each region admits its share of the limit)"
                ),
            ));
        }
    };
    Ok(Some(RateRule {
        limit,
        window_ms,
        algorithm,
        shares,
    }))
}

/// `default_home = "first-write"`: a key no rule homes is homed by its first write.
pub const FIRST_WRITE: &str = "first-write";

/// The ownership options of keyspace `k` (`policy = "owned"`), refused on any other policy.
fn owned(
    cx: &Ctx<'_>,
    k: &RawKeyspace,
    key: &dyn Fn(&str) -> String,
    regions: &[RegionConfig],
    model: crate::Model,
    quorum: bool,
) -> Result<Option<crate::OwnedConfig>, ConfigError> {
    let name = k.name.get_ref();
    let spans = [
        ("default_home", k.default_home.as_ref().map(|v| v.span())),
        ("homes", k.homes.as_ref().map(|v| v.span())),
        ("forward", k.forward.as_ref().map(|v| v.span())),
        ("takeover", k.takeover.as_ref().map(|v| v.span())),
    ];
    if k.policy != Policy::Owned {
        if let Some((option, Some(span))) = spans.iter().find(|(_, s)| s.is_some()) {
            return Err(cx.err(
                span.clone(),
                key(option),
                format!(
                    "{option} does not apply to keyspace `{name}`, whose policy is `{}`; only `owned` keyspaces have homes",
                    k.policy
                ),
            ));
        }
        return Ok(None);
    }
    if model != crate::Model::ActiveActive {
        return Err(cx.err(
            k.name.span(),
            key("policy"),
            format!(
                "keyspace `{name}` is `owned`, which needs cluster.model = \"active-active\": with one primary every key's home is the primary"
            ),
        ));
    }
    let region = |s: &Spanned<String>, field: String| -> Result<RegionId, ConfigError> {
        if let Some(r) = regions
            .iter()
            .find(|r| r.name.as_str() == s.get_ref() && !r.voter)
        {
            return Err(cx.err(
                s.span(),
                field,
                format!(
                    "`{}` is a replica (voter = false): the home of an owned key must be a voter, because homes move through the control group",
                    r.name
                ),
            ));
        }
        regions
            .iter()
            .find(|r| r.name.as_str() == s.get_ref())
            .map(|r| r.name.clone())
            .ok_or_else(|| {
                cx.err(
                    s.span(),
                    field,
                    format!(
                        "`{}` is not a region of this cluster (regions: {})",
                        s.get_ref(),
                        regions
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    };
    let Some(default) = &k.default_home else {
        return Err(cx.err(
            k.name.span(),
            key("default_home"),
            format!(
                "owned keyspace `{name}` needs default_home = \"REGION\" (the home of keys no `homes` rule matches), or default_home = \"{FIRST_WRITE}\" (such a key's home is the region that writes it first)"
            ),
        ));
    };
    let default = if default.get_ref() == FIRST_WRITE {
        if regions.iter().any(|r| r.name.as_str() == FIRST_WRITE) {
            return Err(cx.err(
                default.span(),
                key("default_home"),
                format!("`{FIRST_WRITE}` is both a region's name and the first-write rule; rename the region"),
            ));
        }
        if !quorum {
            return Err(cx.err(
                default.span(),
                key("default_home"),
                format!(
                    "default_home = \"{FIRST_WRITE}\" in keyspace `{name}` needs [fencing] quorum = true: the control group decides which region wrote a key first"
                ),
            ));
        }
        None
    } else {
        Some(region(default, key("default_home"))?)
    };
    let mut prefixes: Vec<(Vec<u8>, RegionId)> = Vec::new();
    let mut hashes: Vec<(u16, u16, RegionId)> = Vec::new();
    for (i, h) in k.homes.iter().flat_map(|v| v.get_ref()).enumerate() {
        let span = h.span();
        let h = h.get_ref();
        let field = format!("{}[{i}]", key("homes"));
        let r = region(&h.region, format!("{field}.region"))?;
        match (&h.prefix, &h.hash) {
            (Some(prefix), None) => {
                let p = prefix.get_ref();
                if p.is_empty() || p.len() > 1024 {
                    return Err(cx.err(
                        prefix.span(),
                        format!("{field}.prefix"),
                        "a home prefix is 1 to 1024 bytes (the default home is `default_home`)",
                    ));
                }
                if let Some((other, _)) = prefixes
                    .iter()
                    .find(|(o, _)| o.starts_with(p.as_bytes()) || p.as_bytes().starts_with(o))
                {
                    return Err(cx.err(
                        prefix.span(),
                        format!("{field}.prefix"),
                        format!(
                            "prefix \"{p}\" overlaps prefix \"{}\" of the same keyspace: a key would have two home rules; make the prefixes disjoint",
                            String::from_utf8_lossy(other)
                        ),
                    ));
                }
                prefixes.push((p.as_bytes().to_vec(), r));
            }
            (None, Some(hash)) => {
                let bad = || {
                    cx.err(
                        hash.span(),
                        format!("{field}.hash"),
                        "a hash rule is [LO, HI] with 0 <= LO <= HI <= 65535: the keys whose bucket (the top 16 bits of the key's CRC-32) is in LO..=HI",
                    )
                };
                let (lo, hi) = match hash.get_ref().as_slice() {
                    [lo, hi] => (
                        u16::try_from(*lo).map_err(|_| bad())?,
                        u16::try_from(*hi).map_err(|_| bad())?,
                    ),
                    _ => return Err(bad()),
                };
                if lo > hi {
                    return Err(bad());
                }
                if let Some((l, h, _)) = hashes.iter().find(|(l, h, _)| lo <= *h && *l <= hi) {
                    return Err(cx.err(
                        hash.span(),
                        format!("{field}.hash"),
                        format!(
                            "hash range [{lo}, {hi}] overlaps [{l}, {h}] of the same keyspace: a key would have two home rules; make the ranges disjoint"
                        ),
                    ));
                }
                hashes.push((lo, hi, r));
            }
            _ => {
                return Err(cx.err(
                    span,
                    field,
                    "a home rule names exactly one of `prefix = \"P\"` or `hash = [LO, HI]`, and its `region`",
                ));
            }
        }
    }
    let mut takeover = Vec::new();
    if let Some(t) = &k.takeover {
        if !quorum {
            return Err(cx.err(
                t.span(),
                key("takeover"),
                format!(
                    "takeover of keyspace `{name}` needs [fencing] quorum = true: a region takes a home over only once the control group says the home's write window has ended"
                ),
            ));
        }
        for (i, r) in t.get_ref().iter().enumerate() {
            let id = region(r, format!("{}[{i}]", key("takeover")))?;
            if takeover.contains(&id) {
                return Err(cx.err(
                    r.span(),
                    format!("{}[{i}]", key("takeover")),
                    format!("region `{id}` appears twice in the takeover order"),
                ));
            }
            takeover.push(id);
        }
    }
    Ok(Some(crate::OwnedConfig {
        rules: atoll_core::home::HomeRules {
            prefixes,
            hashes,
            default,
        },
        forward: k.forward.as_ref().is_none_or(|f| *f.get_ref()),
        takeover,
    }))
}

fn storage(cx: &Ctx<'_>, raw: Option<&RawStorage>) -> Result<StorageConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(StorageConfig::default());
    };
    let batch = cx.int(
        &raw.group_commit_max_batch,
        "storage.group_commit_max_batch",
        GROUP_COMMIT_MAX_BATCH,
        DEFAULT_GROUP_COMMIT_MAX_BATCH as i64,
    )?;
    Ok(StorageConfig {
        group_commit_max_batch: batch as usize,
    })
}

fn replication(
    cx: &Ctx<'_>,
    raw: Option<&RawReplication>,
) -> Result<ReplicationConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ReplicationConfig::default());
    };
    let hb = cx.int(
        &raw.heartbeat_interval_ms,
        "replication.heartbeat_interval_ms",
        HEARTBEAT_INTERVAL_MS,
        DEFAULT_HEARTBEAT_INTERVAL_MS as i64,
    )?;
    let lag = cx.int(
        &raw.max_lag_secs,
        "replication.max_lag_secs",
        MAX_LAG_SECS,
        DEFAULT_MAX_LAG_SECS as i64,
    )?;
    let streams = match &raw.max_subscription_streams {
        Some(_) => Some(cx.int(
            &raw.max_subscription_streams,
            "replication.max_subscription_streams",
            MAX_SUBSCRIPTION_STREAMS,
            0,
        )? as usize),
        None => None,
    };
    let oplog_retention_ms = match &raw.oplog_retention {
        None => crate::DEFAULT_OPLOG_RETENTION_MS,
        Some(w) => {
            let ms = crate::duration::parse_ms(w.get_ref())
                .map_err(|m| cx.err(w.span(), "replication.oplog_retention", m))?;
            if ms > crate::OPLOG_RETENTION_MAX_MS {
                return Err(cx.err(
                    w.span(),
                    "replication.oplog_retention",
                    format!(
                        "`{}` is out of range: 0 to 30d (the log keeps entries every region has applied for this long; a longer window is disk, not safety)",
                        w.get_ref()
                    ),
                ));
            }
            ms
        }
    };
    Ok(ReplicationConfig {
        heartbeat_interval_ms: hb as u64,
        max_lag_secs: lag as u64,
        max_subscription_streams: streams,
        oplog_retention_ms,
    })
}

/// `[a-z0-9-]{1,max}` (plus `_` if `underscore`).
fn valid_name(name: &str, max: usize, underscore: bool) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (underscore && b == b'_')
        })
}
