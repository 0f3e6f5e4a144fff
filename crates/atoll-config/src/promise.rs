//! [`Config::promises`]: what a config promises when a region dies, computed from its settings
//! (`atoll config check` prints it and warns where it breaks the declared `rto`).
//!
//! - **DNS**: the router notices a dead region within `interval x failure_threshold` checks, the
//!   last of which may take `timeout_ms` to fail; then resolvers may keep the old answer for the
//!   name's TTL, plus [`DNS_RESOLVER_SLACK_MS`]. The classic Route 53 example (interval 10 s,
//!   threshold 3, TTL 30 s) is `30 s + 30 s` = 60 s before that slack and the check timeout.
//! - **Proxy**: the same active checks eject the region (or `outlier_failures` failed proxied
//!   requests in a row, sooner under load); until then a request that cannot connect goes to the
//!   next region after at most `connect_timeout_ms`.
//! - **Promotion** (active-standby): a standby takes the lease `lease x (1 + drift) + margin`
//!   after it applied the last lease-changing entry (`atoll_core::fence::FenceConfig::expiry_wait_ms`,
//!   what the fencing loop waits), plus one tick of that loop.
//! - **RPO** of each keyspace under the model: strong 0, async replication its lag, owned its
//!   lag at takeover, active-standby at most `max_promotion_lag_ms`.

use crate::{Config, Model, Policy};
use serde::Serialize;

/// Resolver slack assumed on top of a DNS answer's TTL: recursive resolvers and operating-system
/// caches that honour the TTL refresh within a few seconds of it (prefetching, rounding, the
/// query itself). Clients that cache an address for longer than its TTL (some runtimes, long-
/// lived connections) are bounded by no DNS setting: put them behind the proxy.
pub const DNS_RESOLVER_SLACK_MS: u64 = 5_000;

/// What an active-passive failover is assumed to take, for comparison with a declared `rto`:
/// manual promotion (an operator notices, decides and runs `atoll promote`) takes minutes to tens
/// of minutes, so active-passive suits RTOs of 10 minutes and more (`atoll advise`'s rule).
pub const MANUAL_PROMOTION_MS: u64 = 600_000;

/// Everything [`Config::promises`] computes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Promises {
    /// `[cluster] rto`, if declared.
    pub rto_ms: Option<u64>,
    /// How fast the router's active checks notice a dead region (`None` without `[router]`).
    pub detection: Option<Detection>,
    /// Per routed name: the time until DNS stops sending clients to a dead region.
    pub dns: Vec<DnsFailover>,
    /// The router's proxy (`None` without `[router]`).
    pub proxy: Option<ProxyFailover>,
    /// How writes move when the writer is lost.
    pub promotion: Promotion,
    /// The worst case of everything above that applies to this model: the time until traffic
    /// has moved and writes are taken again. `None` when an operator decides (active-passive)
    /// or nothing moves traffic (no `[router]`).
    pub worst_case_ms: Option<u64>,
    /// The RPO bound of each keyspace, in file order.
    pub keyspaces: Vec<KeyspaceRpo>,
}

/// Active health checks: `interval x failure_threshold + timeout`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub interval_ms: u64,
    pub failure_threshold: u32,
    pub timeout_ms: u64,
    /// `interval_ms x failure_threshold`: Route 53's figure.
    pub checks_ms: u64,
    /// `checks_ms + timeout_ms`: a region that dies just after a good check fails its
    /// `failure_threshold`-th check at most this long after, when that check times out.
    pub worst_ms: u64,
}

/// One routed name's DNS failover.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsFailover {
    /// `<name>.<zone>`.
    pub name: String,
    pub ttl_secs: u32,
    /// `interval x failure_threshold + ttl`: the usual DNS failover formula.
    pub article_ms: u64,
    /// [`Detection::worst_ms`] + TTL + [`DNS_RESOLVER_SLACK_MS`].
    pub worst_ms: u64,
    pub resolver_slack_ms: u64,
    /// Active-standby, a `failover` name (it answers the primary): promotion, then one health
    /// check for the router to see the new primary's role, then TTL and slack.
    pub follows_primary_ms: Option<u64>,
}

/// The router's proxy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyFailover {
    /// Ejection by the active checks: [`Detection::worst_ms`].
    pub ejection_worst_ms: u64,
    /// Consecutive failed proxied requests that eject a region sooner (0: off).
    pub outlier_failures: u32,
    /// Until ejection, the most a request that cannot connect waits before it goes to the next
    /// region.
    pub connect_timeout_ms: u64,
    /// A request in flight when the region died waits at most this; then an idempotent one is
    /// retried elsewhere and any other answered `502 ATOLL-UPSTREAM-OUTCOME-UNKNOWN`.
    pub request_timeout_ms: u64,
}

/// How writes move when the writer is lost.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Promotion {
    /// Active-active: every region writes; nothing to promote.
    NotNeeded,
    /// Active-standby: the most caught-up standby within `max_promotion_lag_ms` takes the lease.
    Automatic {
        /// `lease x (1 + drift) + margin` after the standby applied the last lease-changing
        /// entry (a control-group election, if the primary led the group, fits inside it).
        expiry_wait_ms: u64,
        /// One tick of the fencing loop.
        tick_ms: u64,
        /// `expiry_wait_ms + tick_ms`, plus a round trip to a majority of the control group.
        worst_ms: u64,
    },
    /// Active-passive: `atoll promote REGION` by an operator, once the lease has ended.
    Manual { lease_expiry_ms: u64 },
}

/// A keyspace's RPO bound under the cluster's model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyspaceRpo {
    pub name: String,
    pub policy: Policy,
    pub rpo: Rpo,
}

/// What a region loss may cost a keyspace in acknowledged writes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Rpo {
    /// `strong`: nothing, while a majority of the regions survives.
    Zero,
    /// Asynchronous replication (active-active CRDT keyspaces): the writes the dead region had
    /// not replicated, that is its replication lag; `atoll status` flags lag above
    /// `alert_above_secs`. They come back if the region does.
    ReplicationLag { alert_above_secs: u64 },
    /// `owned`: the home's replication lag at takeover (a `takeover` order or `rehome --force`);
    /// what had not replicated is reported as lost.
    LagAtTakeover { automatic_takeover: bool },
    /// Active-standby: automated promotion only within this lag of the old primary.
    PromotionLag { max_ms: u64 },
    /// Active-passive: nothing unless the operator promotes with `--accept-data-loss`, then the
    /// exposure `atoll promote` prints (the lag).
    OperatorExposure,
}

impl Rpo {
    /// The bound in words.
    pub fn describe(&self) -> String {
        match self {
            Rpo::Zero => "0 (linearizable: a write is acknowledged once a majority of regions holds it)".into(),
            Rpo::ReplicationLag { alert_above_secs } => format!(
                "the dead region's replication lag (async; `atoll status` fails above max_lag_secs = {alert_above_secs} s); those writes come back if the region does"
            ),
            Rpo::LagAtTakeover { automatic_takeover } => format!(
                "the home's replication lag at takeover{}; what it had not replicated is reported as lost",
                if *automatic_takeover {
                    " (automatic, by its takeover order)"
                } else {
                    " (`atoll keyspace rehome --force`; until then its keys refuse writes)"
                }
            ),
            Rpo::PromotionLag { max_ms } => format!(
                "at most max_promotion_lag_ms = {} (a standby further behind is not promoted); those writes come back if the old primary does",
                crate::duration::human(*max_ms)
            ),
            Rpo::OperatorExposure => "0 unless the operator promotes with --accept-data-loss; then the exposure `atoll promote` prints".into(),
        }
    }

    /// The bound in ms where the config fixes one.
    pub fn bound_ms(&self) -> Option<u64> {
        match self {
            Rpo::Zero => Some(0),
            Rpo::PromotionLag { max_ms } => Some(*max_ms),
            _ => None,
        }
    }
}

impl Promises {
    /// Automated promotion's worst case, if the model promotes automatically.
    pub fn promotion_worst_ms(&self) -> Option<u64> {
        match self.promotion {
            Promotion::Automatic { worst_ms, .. } => Some(worst_ms),
            _ => None,
        }
    }
}

pub(crate) fn promises(config: &Config) -> Promises {
    let detection = config.router.as_ref().map(|rc| {
        let h = &rc.health;
        let checks_ms = h.interval_ms * u64::from(h.failure_threshold);
        Detection {
            interval_ms: h.interval_ms,
            failure_threshold: h.failure_threshold,
            timeout_ms: h.timeout_ms,
            checks_ms,
            worst_ms: checks_ms + h.timeout_ms,
        }
    });
    let fence = fence_config(config);
    let promotion = match config.cluster.model {
        Model::ActiveActive => Promotion::NotNeeded,
        Model::ActiveStandby => Promotion::Automatic {
            expiry_wait_ms: fence.expiry_wait_ms(),
            tick_ms: fence.tick_ms(),
            worst_ms: fence.expiry_wait_ms() + fence.tick_ms(),
        },
        Model::ActivePassive => Promotion::Manual {
            lease_expiry_ms: fence.expiry_wait_ms(),
        },
    };
    let promotion_ms = match &promotion {
        Promotion::Automatic { worst_ms, .. } => Some(*worst_ms),
        _ => None,
    };
    let dns: Vec<DnsFailover> = match (&config.router, &detection) {
        (Some(rc), Some(d)) => rc
            .names
            .iter()
            .map(|n| {
                let ttl_ms = u64::from(n.ttl_secs) * 1_000;
                DnsFailover {
                    name: n.fqdn.trim_end_matches('.').to_string(),
                    ttl_secs: n.ttl_secs,
                    article_ms: d.checks_ms + ttl_ms,
                    worst_ms: d.worst_ms + ttl_ms + DNS_RESOLVER_SLACK_MS,
                    resolver_slack_ms: DNS_RESOLVER_SLACK_MS,
                    follows_primary_ms: match (n.policy, promotion_ms) {
                        (crate::router::RoutePolicy::Failover, Some(p)) => {
                            Some(p + d.interval_ms + ttl_ms + DNS_RESOLVER_SLACK_MS)
                        }
                        _ => None,
                    },
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    let proxy = match (&config.router, &detection) {
        (Some(rc), Some(d)) => Some(ProxyFailover {
            ejection_worst_ms: d.worst_ms,
            outlier_failures: rc.health.outlier_failures,
            connect_timeout_ms: rc.proxy.connect_timeout_ms,
            request_timeout_ms: rc.proxy.request_timeout_ms,
        }),
        _ => None,
    };
    let traffic = dns
        .iter()
        .map(|d| d.worst_ms.max(d.follows_primary_ms.unwrap_or(0)))
        .chain(proxy.as_ref().map(|p| p.ejection_worst_ms))
        .max();
    let worst_case_ms = match (&promotion, traffic) {
        (Promotion::Manual { .. }, _) | (_, None) => None,
        (Promotion::Automatic { worst_ms, .. }, Some(t)) => Some(t.max(*worst_ms)),
        (Promotion::NotNeeded, Some(t)) => Some(t),
    };
    let keyspaces = config
        .keyspaces
        .iter()
        .map(|k| KeyspaceRpo {
            name: k.name.clone(),
            policy: k.policy,
            rpo: match (k.policy, config.cluster.model) {
                (Policy::Strong, _) => Rpo::Zero,
                (Policy::Owned, _) => Rpo::LagAtTakeover {
                    automatic_takeover: k.owned.as_ref().is_some_and(|o| !o.takeover.is_empty()),
                },
                (_, Model::ActiveActive) => Rpo::ReplicationLag {
                    alert_above_secs: config.replication.max_lag_secs,
                },
                (_, Model::ActiveStandby) => Rpo::PromotionLag {
                    max_ms: config.fencing.max_promotion_lag_ms,
                },
                (_, Model::ActivePassive) => Rpo::OperatorExposure,
            },
        })
        .collect();
    Promises {
        rto_ms: config.cluster.rto_ms,
        detection,
        dns,
        proxy,
        promotion,
        worst_case_ms,
        keyspaces,
    }
}

/// The lease timing the regions run (`atoll_core::fence`), from `[fencing]`.
fn fence_config(config: &Config) -> atoll_core::fence::FenceConfig {
    let f = &config.fencing;
    f.core(
        f.initial_primary.clone(),
        atoll_core::fence::Topology::ActiveStandby,
        config.regions.iter().map(|r| r.name.clone()).collect(),
    )
}

/// The warnings about a declared `rto` that the config cannot meet.
pub(crate) fn rto_warnings(config: &Config, p: &Promises) -> Vec<String> {
    use crate::duration::human;
    let Some(rto) = p.rto_ms else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let declared = human(rto);
    if config.router.is_none() {
        out.push(format!(
            "[cluster] rto = {declared}, but there is no [router]: nothing in this config moves clients off a dead region, so nothing promises the rto; add a [router] (health checks, names)"
        ));
    }
    if let Some(d) = &p.detection {
        for n in &p.dns {
            if let Some(f) = n.follows_primary_ms
                && f > rto
            {
                out.push(format!(
                    "`{}` follows the primary: after a promotion of up to {} the router sees the new primary within one check ({}), then clients wait out TTL {} s + {} resolver slack: {} in all, more than [cluster] rto = {declared}: lower ttl_secs or [fencing] lease_ms, or send writes through the proxy",
                    n.name,
                    p.promotion_worst_ms().map(human).unwrap_or_default(),
                    human(d.interval_ms),
                    n.ttl_secs,
                    human(n.resolver_slack_ms),
                    human(f),
                ));
            }
            if n.worst_ms > rto {
                out.push(format!(
                    "DNS failover of `{}` can take {} (checks every {} x failure_threshold {} + a {} check timeout + TTL {} s + {} resolver slack), more than [cluster] rto = {declared}: lower ttl_secs, health.interval_ms or health.failure_threshold, or send clients through the proxy",
                    n.name,
                    human(n.worst_ms),
                    human(d.interval_ms),
                    d.failure_threshold,
                    human(d.timeout_ms),
                    n.ttl_secs,
                    human(n.resolver_slack_ms),
                ));
            }
        }
    }
    if let Some(px) = &p.proxy
        && px.ejection_worst_ms > rto
    {
        out.push(format!(
            "the proxy's health checks take {} (interval x failure_threshold + timeout) to eject a dead region, more than [cluster] rto = {declared}: lower [router.health] interval_ms or failure_threshold",
            human(px.ejection_worst_ms)
        ));
    }
    match &p.promotion {
        Promotion::Automatic { worst_ms, .. } if *worst_ms > rto => out.push(format!(
            "automated promotion takes up to {} (lease x (1 + drift) + margin, after the primary's last renewal), more than [cluster] rto = {declared}: shorten [fencing] lease_ms",
            human(*worst_ms)
        )),
        Promotion::Manual { .. } if rto < MANUAL_PROMOTION_MS => out.push(format!(
            "model active-passive promotes only when an operator runs `atoll promote`, which the article puts at minutes to tens of minutes (it gives active-passive to RTOs of 10 minutes and more), but [cluster] rto = {declared}: use model = \"active-standby\" (automated promotion) or active-active (`atoll advise --rto {}` says which)",
            crate::duration::to_config(rto)
        )),
        _ => {}
    }
    out
}
