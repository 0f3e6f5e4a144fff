//! The router's shared view: per-region health, what each region last said about the write lease
//! (role, epoch, primary), drains, weight overrides, measured RTTs and the last known good set,
//! and the decisions made from them. Plain Rust behind a mutex; the adapters (prober, proxy,
//! DNS, admin API) share one [`RouterState`].

use crate::health::{HealthConfig, HealthState, Lease, Probe, RegionHealth, Role, Transition};
use crate::policy::{
    Access, Candidate, Choice, Mode, NoHealthy, PolicyKind, Primary, choose, primary_of,
};
use atoll_config::Config;
use atoll_config::router::{InitialHealth, NoHealthyPolicy, RoutePolicy, RoutedName, RouterConfig};
use atoll_core::op::Policy;
use atoll_core::{AtollError, RegionId, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};

/// Version of the persisted drain file.
pub const DRAINS_VERSION: u32 = 1;

/// A region as the router knows it from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionEntry {
    pub name: RegionId,
    /// Where the proxy sends requests and the prober checks health.
    pub api: SocketAddr,
    /// What DNS answers for it.
    pub dns_address: IpAddr,
    pub location: Option<(f64, f64)>,
    /// Position in the config.
    pub order: usize,
}

/// An operator's drain of a region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub reason: String,
    pub since_ms: u64,
    /// When the drain lifts by itself (`None`: until undrained).
    pub until_ms: Option<u64>,
}

/// What survives a router restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub version: u32,
    pub drains: BTreeMap<String, Drain>,
    /// name -> region -> weight.
    pub weights: BTreeMap<String, BTreeMap<String, u32>>,
}

/// One region in the router's status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionStatus {
    pub region: String,
    pub health: HealthState,
    pub reason: String,
    pub routable: bool,
    pub drained: Option<Drain>,
    /// Staged-failback share.
    pub ramp: f64,
    pub rtt_ms: Option<f64>,
    pub checks: u64,
    /// The fencing role the region last reported (`active` when its `/healthz` says none;
    /// `passive` also while its health is passive); `None` until it first answered a check.
    pub role: Option<Role>,
    /// The lease epoch it last reported.
    pub epoch: Option<u64>,
    /// The lease holder it last named.
    pub primary: Option<String>,
}

/// A region claiming the write lease, with the epoch it claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrimaryClaim {
    pub region: String,
    pub epoch: u64,
}

/// One routed name in the router's status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NameStatus {
    pub name: String,
    pub policy: String,
    pub no_healthy: String,
    /// `normal`, or which no-healthy behaviour is in force right now.
    pub mode: Mode,
    /// The router is starting for this name: some region of it has no verdict from the health
    /// checks yet (state `unknown`: neither its first good check nor `failure_threshold` failed
    /// ones). A no-healthy mode then means "not decided yet", not "every region failed".
    pub starting: bool,
    pub weights: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouterStatus {
    pub regions: Vec<RegionStatus>,
    pub names: Vec<NameStatus>,
    /// Where writes go first: the routable region whose role is `primary` (the higher epoch if
    /// two claim it); `None` when none does (active-active, or no healthy primary).
    pub primary: Option<PrimaryClaim>,
    /// Every routable region claiming `primary`. More than one must never happen (fencing
    /// prevents it); the router logs it and counts it.
    pub primary_claims: Vec<PrimaryClaim>,
}

struct Inner {
    health: BTreeMap<RegionId, RegionHealth>,
    /// What each region last said about the write lease (absent until it first answered).
    leases: BTreeMap<RegionId, Lease>,
    rtt_ms: BTreeMap<RegionId, f64>,
    persisted: Persisted,
    last_known_good: Vec<RegionId>,
}

/// The router's shared state.
pub struct RouterState {
    regions: Vec<RegionEntry>,
    /// Every keyspace of the cluster config and its policy (the proxy's retry rule needs them).
    keyspaces: BTreeMap<String, Policy>,
    config: RouterConfig,
    health_cfg: HealthConfig,
    inner: Mutex<Inner>,
}

fn policy_kind(p: RoutePolicy) -> PolicyKind {
    match p {
        RoutePolicy::Latency => PolicyKind::Latency,
        RoutePolicy::Failover => PolicyKind::Failover,
        RoutePolicy::Weighted => PolicyKind::Weighted,
    }
}

fn no_healthy(p: NoHealthyPolicy) -> NoHealthy {
    match p {
        NoHealthyPolicy::FailOpen => NoHealthy::FailOpen,
        NoHealthyPolicy::FailClosed => NoHealthy::FailClosed,
        NoHealthyPolicy::LastKnownGood => NoHealthy::LastKnownGood,
    }
}

impl RouterState {
    /// Builds the state from a cluster config with a `[router]` section.
    pub fn new(config: &Config) -> Result<RouterState> {
        let rc = config
            .router
            .clone()
            .ok_or_else(|| AtollError::Config("the config has no [router] section: add one (examples/three-regions.toml has one, every key explained)".into()))?;
        let h = &rc.health;
        let health_cfg = HealthConfig {
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            failure_threshold: h.failure_threshold,
            recovery_threshold: h.recovery_threshold,
            initially_healthy: h.initial == InitialHealth::Healthy,
            hold_down_ms: h.hold_down_ms,
            outlier_failures: h.outlier_failures,
            ramp_ms: h.ramp_secs.saturating_mul(1000),
            ..HealthConfig::default()
        };
        let regions: Vec<RegionEntry> = config
            .regions
            .iter()
            .enumerate()
            .map(|(order, r)| RegionEntry {
                name: r.name.clone(),
                api: r.api,
                dns_address: r.dns_address,
                location: r.location.map(|g| (g.lat, g.lon)),
                order,
            })
            .collect();
        let health = regions
            .iter()
            .map(|r| (r.name.clone(), RegionHealth::new(health_cfg.clone())))
            .collect();
        Ok(RouterState {
            regions,
            keyspaces: config
                .keyspaces
                .iter()
                .map(|k| (k.name.clone(), k.policy))
                .collect(),
            config: rc,
            health_cfg,
            inner: Mutex::new(Inner {
                health,
                leases: BTreeMap::new(),
                rtt_ms: BTreeMap::new(),
                persisted: Persisted {
                    version: DRAINS_VERSION,
                    ..Persisted::default()
                },
                last_known_good: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| AtollError::Storage("router state lock poisoned".into()))
    }

    pub fn regions(&self) -> &[RegionEntry] {
        &self.regions
    }

    pub fn region(&self, name: &str) -> Option<&RegionEntry> {
        self.regions.iter().find(|r| r.name.as_str() == name)
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The policy of keyspace `name` in the cluster config, if it declares one.
    pub fn keyspace_policy(&self, name: &str) -> Option<Policy> {
        self.keyspaces.get(name).copied()
    }

    pub fn health_config(&self) -> &HealthConfig {
        &self.health_cfg
    }

    fn known(&self, region: &str) -> Result<RegionId> {
        self.region(region).map(|r| r.name.clone()).ok_or_else(|| {
            AtollError::BadRequest(format!(
                "unknown region `{region}` (known: {})",
                self.regions
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Takes in an active check result (and the check's round trip when it succeeded), leaving
    /// what the region said about the lease as it was.
    pub fn observe_probe(
        &self,
        region: &RegionId,
        probe: Probe,
        rtt_ms: Option<f64>,
        now_ms: u64,
    ) -> Result<Option<Transition>> {
        self.observe_check(region, probe, None, rtt_ms, now_ms)
    }

    /// Takes in an active check result, what the region's answer said about the write lease
    /// (`None` when it did not answer: the last report stands), and the check's round trip.
    pub fn observe_check(
        &self,
        region: &RegionId,
        probe: Probe,
        lease: Option<Lease>,
        rtt_ms: Option<f64>,
        now_ms: u64,
    ) -> Result<Option<Transition>> {
        let mut inner = self.lock()?;
        if let Some(l) = lease
            && inner.health.contains_key(region)
        {
            inner.leases.insert(region.clone(), l);
        }
        if let Some(rtt) = rtt_ms {
            // Smoothed like TCP's SRTT so one slow check does not reorder regions.
            let e = inner.rtt_ms.entry(region.clone()).or_insert(rtt);
            *e = 0.8 * *e + 0.2 * rtt;
        }
        let t = inner
            .health
            .get_mut(region)
            .and_then(|h| h.observe(probe, now_ms));
        Self::remember_good(&mut inner);
        Ok(t)
    }

    /// What `region` last said about the write lease (`None` before it first answered).
    pub fn lease(&self, region: &RegionId) -> Result<Option<Lease>> {
        Ok(self.lock()?.leases.get(region).cloned())
    }

    /// Takes in the outcome of a proxied request (passive outlier detection).
    pub fn observe_request(
        &self,
        region: &RegionId,
        ok: bool,
        now_ms: u64,
    ) -> Result<Option<Transition>> {
        let mut inner = self.lock()?;
        let t = inner
            .health
            .get_mut(region)
            .and_then(|h| h.observe_request(ok, now_ms));
        Self::remember_good(&mut inner);
        Ok(t)
    }

    /// The regions routable now (healthy and not drained), in order.
    fn routable(inner: &Inner) -> impl Iterator<Item = &RegionId> + '_ {
        inner
            .health
            .iter()
            .filter(|(r, h)| h.is_routable() && !inner.persisted.drains.contains_key(r.as_str()))
            .map(|(r, _)| r)
    }

    fn remember_good(inner: &mut Inner) {
        // Called for every proxied request: compare first, allocate only on a change. Nothing
        // routable keeps the last known good.
        if Self::routable(inner).next().is_none()
            || Self::routable(inner).eq(inner.last_known_good.iter())
        {
            return;
        }
        inner.last_known_good = Self::routable(inner).cloned().collect();
    }

    /// Lifts drains whose expiry has passed; returns the regions undrained.
    pub fn expire_drains(&self, now_ms: u64) -> Result<Vec<String>> {
        let mut inner = self.lock()?;
        let expired: Vec<String> = inner
            .persisted
            .drains
            .iter()
            .filter(|(_, d)| d.until_ms.is_some_and(|u| u <= now_ms))
            .map(|(r, _)| r.clone())
            .collect();
        for r in &expired {
            inner.persisted.drains.remove(r);
        }
        Ok(expired)
    }

    /// Drains a region: it gets no new traffic until undrained (or `until_ms`).
    pub fn drain(
        &self,
        region: &str,
        reason: &str,
        until_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<()> {
        let id = self.known(region)?;
        if reason.trim().is_empty() {
            return Err(AtollError::BadRequest("a drain needs a reason".into()));
        }
        if until_ms.is_some_and(|u| u <= now_ms) {
            return Err(AtollError::BadRequest(
                "the drain's expiry is in the past".into(),
            ));
        }
        let mut inner = self.lock()?;
        inner.persisted.drains.insert(
            id.to_string(),
            Drain {
                reason: reason.to_string(),
                since_ms: now_ms,
                until_ms,
            },
        );
        Ok(())
    }

    /// Lifts a drain. Undraining a region that is not drained is an error (nothing changes).
    pub fn undrain(&self, region: &str) -> Result<()> {
        let id = self.known(region)?;
        let mut inner = self.lock()?;
        if inner.persisted.drains.remove(id.as_str()).is_none() {
            return Err(AtollError::BadRequest(format!(
                "region `{region}` is not drained"
            )));
        }
        Ok(())
    }

    /// Sets a region's weight for a routed name (weighted names only).
    pub fn set_weight(&self, name: &str, region: &str, weight: u32) -> Result<()> {
        let rn = self
            .config
            .name(name)
            .or_else(|| self.config.names.iter().find(|n| n.name == name))
            .ok_or_else(|| AtollError::BadRequest(format!("unknown routed name `{name}`")))?;
        if rn.policy != RoutePolicy::Weighted {
            return Err(AtollError::BadRequest(format!(
                "`{}` uses the {} policy; weights apply to weighted names",
                rn.name,
                rn.policy.as_str()
            )));
        }
        let id = self.known(region)?;
        if !rn.regions.iter().any(|r| r == id.as_str()) {
            return Err(AtollError::BadRequest(format!(
                "region `{region}` does not serve `{}`",
                rn.name
            )));
        }
        if weight > 1_000_000 {
            return Err(AtollError::BadRequest(format!(
                "weight {weight} is over 1000000"
            )));
        }
        let mut inner = self.lock()?;
        inner
            .persisted
            .weights
            .entry(rn.fqdn.clone())
            .or_default()
            .insert(id.to_string(), weight);
        Ok(())
    }

    /// What to write to disk so drains and weights survive a restart.
    pub fn persisted(&self) -> Result<Persisted> {
        Ok(self.lock()?.persisted.clone())
    }

    /// Restores drains and weights read from disk (unknown regions/names are dropped, with the
    /// list returned for a log line). A newer file version is refused.
    pub fn restore(&self, p: Persisted) -> Result<Vec<String>> {
        if p.version > DRAINS_VERSION {
            return Err(AtollError::FormatTooNew {
                found: u16::try_from(p.version).unwrap_or(u16::MAX),
                supported: DRAINS_VERSION as u16,
            });
        }
        let mut dropped = Vec::new();
        let mut inner = self.lock()?;
        inner.persisted.drains = p
            .drains
            .into_iter()
            .filter(|(r, _)| {
                let ok = self.region(r).is_some();
                if !ok {
                    dropped.push(format!("drain of unknown region `{r}`"));
                }
                ok
            })
            .collect();
        inner.persisted.weights = p
            .weights
            .into_iter()
            .filter(|(n, _)| {
                let ok = self.config.name(n).is_some();
                if !ok {
                    dropped.push(format!("weights of unknown name `{n}`"));
                }
                ok
            })
            .collect();
        Ok(dropped)
    }

    /// Whether the router is still starting for `name`: some region serving it has no verdict
    /// from the health checks yet (with `initial = "unhealthy"`, a region is `unknown`, and not
    /// routed to, until its first good check or `failure_threshold` failed ones). Once every
    /// region has a verdict, a name with no healthy region is failing open (or closed) for real.
    /// Regions started together with the router are thus given `interval_ms x
    /// failure_threshold` to come up before that is called a failure.
    pub fn starting(&self, name: &RoutedName) -> Result<bool> {
        let inner = self.lock()?;
        Ok(self.starting_in(&inner, name))
    }

    fn starting_in(&self, inner: &Inner, name: &RoutedName) -> bool {
        name.regions.iter().any(|r| {
            self.region(r)
                .and_then(|e| inner.health.get(&e.name))
                .is_some_and(|h| h.state() == HealthState::Unknown)
        })
    }

    /// The role a region is routed by: passive while its health is passive, else what it last
    /// reported (`None` before it first answered).
    fn role_in(inner: &Inner, region: &RegionId) -> Option<Role> {
        if inner
            .health
            .get(region)
            .is_some_and(|h| h.state() == HealthState::Passive)
        {
            return Some(Role::Passive);
        }
        inner.leases.get(region).map(|l| l.role)
    }

    /// Chooses regions for a query of `fqdn` (DNS): a read.
    pub fn decide(
        &self,
        name: &RoutedName,
        client: Option<(f64, f64)>,
        rand: f64,
        now_ms: u64,
    ) -> Result<Choice> {
        self.decide_for(name, Access::Read, client, rand, now_ms)
    }

    /// Chooses regions for a request routed by `name`'s policy (proxy) or a query (DNS, a read):
    /// writes go to the healthy lease holder first. `rand` is uniform in [0, 1).
    pub fn decide_for(
        &self,
        name: &RoutedName,
        access: Access,
        client: Option<(f64, f64)>,
        rand: f64,
        now_ms: u64,
    ) -> Result<Choice> {
        let inner = self.lock()?;
        let cands = self.candidates(&inner, name, now_ms);
        Ok(choose(
            policy_kind(name.policy),
            no_healthy(name.no_healthy),
            access,
            &cands,
            client,
            &inner.last_known_good,
            rand,
        ))
    }

    /// The lease holder among every region (writes go there first), and every routable region
    /// claiming the lease.
    pub fn primary(&self, now_ms: u64) -> Result<Primary> {
        let inner = self.lock()?;
        let cands: Vec<Candidate> = self
            .regions
            .iter()
            .filter_map(|e| self.candidate(&inner, e, e.order, 1, now_ms))
            .collect();
        Ok(primary_of(&cands))
    }

    fn candidate(
        &self,
        inner: &Inner,
        entry: &RegionEntry,
        order: usize,
        weight: u32,
        now_ms: u64,
    ) -> Option<Candidate> {
        let h = inner.health.get(&entry.name)?;
        let lease = inner.leases.get(&entry.name);
        Some(Candidate {
            region: entry.name.clone(),
            healthy: h.is_routable(),
            drained: inner.persisted.drains.contains_key(entry.name.as_str()),
            ramp: h.ramp(now_ms),
            weight,
            order,
            rtt_ms: inner.rtt_ms.get(&entry.name).copied(),
            location: entry.location,
            role: Self::role_in(inner, &entry.name).unwrap_or(Role::Active),
            epoch: lease.map_or(0, |l| l.epoch),
        })
    }

    fn candidates(&self, inner: &Inner, name: &RoutedName, now_ms: u64) -> Vec<Candidate> {
        let weights = inner.persisted.weights.get(&name.fqdn);
        name.regions
            .iter()
            .enumerate()
            .filter_map(|(order, r)| {
                let entry = self.region(r)?;
                let weight = weights
                    .and_then(|w| w.get(r).copied())
                    .or_else(|| name.weights.get(r).copied())
                    .unwrap_or(1);
                self.candidate(inner, entry, order, weight, now_ms)
            })
            .collect()
    }

    /// The router's status: every region's health as this router sees it, and every name's mode.
    pub fn status(&self, now_ms: u64) -> Result<RouterStatus> {
        let regions = {
            let inner = self.lock()?;
            self.regions
                .iter()
                .filter_map(|r| {
                    let h = inner.health.get(&r.name)?;
                    let drained = inner.persisted.drains.get(r.name.as_str()).cloned();
                    Some(RegionStatus {
                        region: r.name.to_string(),
                        health: h.state(),
                        reason: h.reason().to_string(),
                        routable: h.is_routable() && drained.is_none(),
                        drained,
                        ramp: h.ramp(now_ms),
                        rtt_ms: inner.rtt_ms.get(&r.name).copied(),
                        checks: h.checks(),
                        role: Self::role_in(&inner, &r.name),
                        epoch: inner.leases.get(&r.name).map(|l| l.epoch),
                        primary: inner.leases.get(&r.name).and_then(|l| l.primary.clone()),
                    })
                })
                .collect()
        };
        let mut names = Vec::new();
        for n in &self.config.names {
            let choice = self.decide(n, None, 0.0, now_ms)?;
            let (weights, starting) = {
                let inner = self.lock()?;
                let mut w = n.weights.clone();
                if let Some(o) = inner.persisted.weights.get(&n.fqdn) {
                    w.extend(o.iter().map(|(k, v)| (k.clone(), *v)));
                }
                (w, self.starting_in(&inner, n))
            };
            names.push(NameStatus {
                name: n.fqdn.clone(),
                policy: n.policy.as_str().to_string(),
                no_healthy: n.no_healthy.as_str().to_string(),
                mode: choice.mode,
                starting,
                weights,
            });
        }
        let p = self.primary(now_ms)?;
        let claim = |(r, epoch): &(RegionId, u64)| PrimaryClaim {
            region: r.to_string(),
            epoch: *epoch,
        };
        Ok(RouterStatus {
            regions,
            names,
            primary: p.claims.first().map(claim),
            primary_claims: p.claims.iter().map(claim).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[cluster]
name = "t"
[[regions]]
name = "us-east-1"
api = "127.0.0.1:7100"
[[regions]]
name = "eu-west-1"
api = "127.0.0.1:7101"
[[keyspaces]]
name = "sessions"
policy = "lww"
[router]
[router.health]
failure_threshold = 1
recovery_threshold = 1
hold_down_ms = 0
ramp_secs = 0
[[router.names]]
name = "api"
policy = "failover"
no_healthy = "fail-closed"
[[router.names]]
name = "w"
policy = "weighted"
"#;

    fn state() -> RouterState {
        let c = Config::parse(CONFIG, "t.toml").unwrap();
        RouterState::new(&c).unwrap()
    }

    fn r(n: &str) -> RegionId {
        RegionId::new(n).unwrap()
    }

    #[test]
    fn routes_follow_health_and_drains() {
        let s = state();
        let api = s.config().name("api.atoll.test.").unwrap().clone();
        let ch = s.decide(&api, None, 0.0, 0).unwrap();
        assert_eq!(
            ch.mode,
            Mode::FailClosed,
            "nothing checked yet: nothing routed"
        );
        s.observe_probe(&r("us-east-1"), Probe::Ok, Some(1.0), 0)
            .unwrap();
        s.observe_probe(&r("eu-west-1"), Probe::Ok, Some(1.0), 0)
            .unwrap();
        let ch = s.decide(&api, None, 0.0, 0).unwrap();
        assert_eq!(ch.ranked[0].as_str(), "us-east-1");
        s.drain("us-east-1", "maintenance", None, 0).unwrap();
        assert_eq!(
            s.decide(&api, None, 0.0, 0).unwrap().ranked[0].as_str(),
            "eu-west-1"
        );
        assert!(s.undrain("us-east-1").is_ok());
        assert!(s.undrain("us-east-1").is_err(), "not drained any more");
        assert!(s.drain("mars-1", "x", None, 0).is_err());
        assert!(s.drain("us-east-1", " ", None, 0).is_err());
        s.drain("eu-west-1", "test", Some(100), 0).unwrap();
        assert_eq!(s.expire_drains(100).unwrap(), vec!["eu-west-1".to_string()]);
    }

    #[test]
    fn starting_until_every_region_of_a_name_has_a_verdict() {
        let s = state();
        let api = s.config().name("api.atoll.test.").unwrap().clone();
        let status = |s: &RouterState| s.status(0).unwrap().names[0].clone();
        assert!(s.starting(&api).unwrap());
        assert!(status(&s).starting);
        // One region failed its first check, the other is not checked yet: still starting.
        s.observe_probe(&r("us-east-1"), Probe::Failed("refused".into()), None, 0)
            .unwrap();
        assert!(s.starting(&api).unwrap());
        assert_eq!(status(&s).mode, Mode::FailClosed);
        // Every region checked, none healthy: no longer starting, a real no-healthy mode.
        s.observe_probe(&r("eu-west-1"), Probe::Failed("refused".into()), None, 0)
            .unwrap();
        assert!(!s.starting(&api).unwrap());
        let st = status(&s);
        assert_eq!((st.mode, st.starting), (Mode::FailClosed, false));
    }

    #[test]
    fn a_region_without_a_verdict_keeps_its_names_starting() {
        // failure_threshold 3: one failed check is no verdict yet.
        let c = Config::parse(
            &CONFIG.replace("failure_threshold = 1", "failure_threshold = 3"),
            "t.toml",
        )
        .unwrap();
        let s = RouterState::new(&c).unwrap();
        let api = s.config().name("api.atoll.test.").unwrap().clone();
        for region in ["us-east-1", "eu-west-1"] {
            s.observe_probe(&r(region), Probe::Failed("refused".into()), None, 0)
                .unwrap();
        }
        assert!(s.starting(&api).unwrap(), "1 of 3 failures is no verdict");
        for _ in 0..2 {
            s.observe_probe(&r("us-east-1"), Probe::Failed("refused".into()), None, 0)
                .unwrap();
        }
        assert!(s.starting(&api).unwrap(), "eu-west-1 is still undecided");
        s.observe_probe(&r("eu-west-1"), Probe::Ok, Some(1.0), 0)
            .unwrap();
        assert!(!s.starting(&api).unwrap());
        assert_eq!(s.decide(&api, None, 0.0, 0).unwrap().mode, Mode::Normal);
    }

    #[test]
    fn persisted_state_roundtrips_and_refuses_newer_versions() {
        let s = state();
        s.drain("us-east-1", "maintenance", None, 5).unwrap();
        s.set_weight("w", "eu-west-1", 7).unwrap();
        assert!(s.set_weight("api", "eu-west-1", 7).is_err(), "not weighted");
        let p = s.persisted().unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let back: Persisted = serde_json::from_str(&json).unwrap();
        let s2 = state();
        assert!(s2.restore(back.clone()).unwrap().is_empty());
        assert_eq!(s2.persisted().unwrap(), p);
        let newer = Persisted {
            version: 99,
            ..back
        };
        assert!(s2.restore(newer).is_err());
    }

    fn lease(role: Role, epoch: u64, primary: Option<&str>) -> Option<Lease> {
        Some(Lease {
            role,
            epoch,
            primary: primary.map(str::to_string),
        })
    }

    #[test]
    fn roles_are_kept_shown_and_followed() {
        let s = state();
        let api = s.config().name("api.atoll.test.").unwrap().clone();
        let (us, eu) = (r("us-east-1"), r("eu-west-1"));
        s.observe_check(
            &us,
            Probe::Ok,
            lease(Role::Standby, 2, Some("eu-west-1")),
            Some(1.0),
            0,
        )
        .unwrap();
        s.observe_check(
            &eu,
            Probe::Ok,
            lease(Role::Primary, 2, Some("eu-west-1")),
            Some(9.0),
            0,
        )
        .unwrap();
        let st = s.status(0).unwrap();
        assert_eq!(st.regions[0].role, Some(Role::Standby));
        assert_eq!(st.regions[0].epoch, Some(2));
        assert_eq!(st.regions[0].primary.as_deref(), Some("eu-west-1"));
        assert_eq!(
            st.primary,
            Some(PrimaryClaim {
                region: "eu-west-1".into(),
                epoch: 2
            })
        );
        assert_eq!(st.primary_claims.len(), 1);
        // The failover name answers the lease holder, reads and writes alike.
        for access in [Access::Read, Access::Write] {
            let ch = s.decide_for(&api, access, None, 0.0, 0).unwrap();
            assert_eq!(ch.ranked[0].as_str(), "eu-west-1", "{access:?}");
        }
        // A check without an answer leaves the last report; a later answer replaces it.
        s.observe_check(&eu, Probe::Failed("timeout".into()), None, None, 10)
            .unwrap();
        assert_eq!(s.status(10).unwrap().regions[1].role, Some(Role::Primary));
        assert!(
            s.status(10).unwrap().primary.is_none(),
            "unhealthy: no claim"
        );
        s.observe_check(&eu, Probe::Ok, Some(Lease::default()), Some(9.0), 20)
            .unwrap();
        let st = s.status(20).unwrap();
        assert_eq!(st.regions[1].role, Some(Role::Active));
        assert!(st.primary.is_none() && st.primary_claims.is_empty());
        assert_eq!(
            s.decide(&api, None, 0.0, 20).unwrap().ranked[0].as_str(),
            "us-east-1",
            "no primary: the configured order"
        );
    }

    #[test]
    fn a_passive_region_is_reported_as_passive_and_never_routed() {
        let s = state();
        let api = s.config().name("api.atoll.test.").unwrap().clone();
        s.observe_check(
            &r("us-east-1"),
            Probe::Passive,
            lease(Role::Passive, 1, Some("eu-west-1")),
            Some(1.0),
            0,
        )
        .unwrap();
        assert!(s.starting(&api).unwrap(), "eu-west-1 not checked yet");
        s.observe_probe(&r("eu-west-1"), Probe::Failed("refused".into()), None, 0)
            .unwrap();
        assert!(!s.starting(&api).unwrap(), "passive is a verdict");
        let st = s.status(0).unwrap();
        let us = &st.regions[0];
        assert_eq!(
            (us.health, us.routable, us.role),
            (HealthState::Passive, false, Some(Role::Passive))
        );
        assert!(us.reason.contains("passive"), "{}", us.reason);
        let ch = s.decide_for(&api, Access::Write, None, 0.0, 0).unwrap();
        assert_eq!((ch.ranked.len(), ch.mode), (0, Mode::FailClosed));
    }
}
