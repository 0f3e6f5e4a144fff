//! The cluster's membership as this region runs it (`docs/design/adding-regions.md`,
//! `docs/design/region-removal.md`): which regions exist (it grows when a config reload appends
//! a region, and shrinks when one drops a replica), which regions this region removed (their
//! certificates are still recognised, to be told they were removed, and their writes are still
//! an origin's), whether this region is a voter or a replica, and whether a replica added to a
//! running cluster has been admitted by every region of its config (until then it takes no
//! writes).

use crate::metrics::Metrics;
use atoll_config::{Config, KeyspaceConfig, OnMinority, RegionConfig};
use atoll_core::op::Policy;
use atoll_core::{AtollError, RegionId, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// This region's view of who is in the cluster.
pub struct Membership {
    me: RegionId,
    voter: bool,
    /// Who a peer certificate may name (the regions and the arbiter), shared with the peer
    /// listener.
    identities: crate::peer::Identities,
    /// Voters are admitted from the start; a replica once `Store::mark_admitted` ran.
    admitted: AtomicBool,
    /// While not admitted: the regions whose heartbeat has not come yet.
    waiting_for: Mutex<Vec<RegionId>>,
    /// The config the region runs, as last reloaded: its regions are the cluster's.
    config: Mutex<Arc<Config>>,
    /// Most subscription streams this region serves (its default grows with the regions).
    stream_limit: Arc<std::sync::atomic::AtomicUsize>,
    /// The regions this region removed from the cluster (`Store::removed_regions`): no longer
    /// regions of the cluster, still origins of writes, and still recognised by their
    /// certificates (their requests are answered `410 ATOLL-REGION-REMOVED`).
    removed: Mutex<Vec<RegionId>>,
}

impl Membership {
    pub fn new(config: Arc<Config>, me: &RegionId, admitted_in_store: bool) -> Arc<Self> {
        let voter = config.is_voter(me.as_str());
        let identities = config
            .regions
            .iter()
            .map(|r| r.name.clone())
            .chain(config.cluster.arbiter.as_ref().map(|a| a.name.clone()))
            .collect();
        let peers = config
            .regions
            .iter()
            .map(|r| r.name.clone())
            .filter(|r| r != me)
            .collect();
        Arc::new(Self {
            me: me.clone(),
            voter,
            identities: Arc::new(RwLock::new(identities)),
            admitted: AtomicBool::new(voter || admitted_in_store),
            waiting_for: Mutex::new(peers),
            stream_limit: Arc::new(std::sync::atomic::AtomicUsize::new(
                config
                    .replication
                    .subscription_stream_limit(config.regions.len()),
            )),
            config: Mutex::new(config),
            removed: Mutex::new(Vec::new()),
        })
    }

    /// Takes in regions this region removed before it started (`Store::removed_regions`): their
    /// certificates stay recognised, and their writes an origin's.
    pub fn recognise_removed<'a>(&self, regions: impl IntoIterator<Item = &'a RegionId>) {
        let regions: Vec<RegionId> = regions.into_iter().cloned().collect();
        self.note_removed(&regions);
    }

    fn note_removed(&self, regions: &[RegionId]) {
        {
            let mut l = match self.identities.write() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            for r in regions {
                if !l.contains(r) {
                    l.push(r.clone());
                }
            }
        }
        if let Ok(mut removed) = self.removed.lock() {
            for r in regions {
                if !removed.contains(r) {
                    removed.push(r.clone());
                }
            }
        }
    }

    /// The regions this region removed from the cluster.
    pub fn removed(&self) -> Vec<RegionId> {
        self.removed.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Every region whose writes this region may hold: the cluster's regions, and those it
    /// removed (watch positions and session tokens name them).
    pub fn origins(&self) -> Vec<RegionId> {
        let mut all = self.regions();
        for r in self.removed() {
            if !all.contains(&r) {
                all.push(r);
            }
        }
        all
    }

    /// Whether `r` is a region of the cluster or one this region removed.
    pub fn is_origin(&self, r: &RegionId) -> bool {
        self.is_region(r) || self.removed().contains(r)
    }

    pub fn is_voter(&self) -> bool {
        self.voter
    }

    pub fn is_admitted(&self) -> bool {
        self.admitted.load(Ordering::Acquire)
    }

    /// Every region of the cluster, as of the latest reload.
    pub fn regions(&self) -> Vec<RegionId> {
        self.config()
            .regions
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    pub fn is_region(&self, r: &RegionId) -> bool {
        self.config().region(r.as_str()).is_some()
    }

    /// The cap on subscription streams served (shared with the replication routes' edge: a
    /// reload that adds regions raises its default).
    pub fn stream_limit(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.stream_limit.clone()
    }

    /// The peer listener's identities (shared: a reload adds to them).
    pub fn identities(&self) -> crate::peer::Identities {
        self.identities.clone()
    }

    /// The regions a joining replica still waits for (empty once admitted).
    pub fn waiting_for(&self) -> Vec<RegionId> {
        if self.is_admitted() {
            return Vec::new();
        }
        self.waiting_for
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default()
    }

    pub(crate) fn set_waiting_for(&self, regions: Vec<RegionId>) {
        if let Ok(mut w) = self.waiting_for.lock() {
            *w = regions;
        }
    }

    pub(crate) fn set_admitted(&self) {
        self.admitted.store(true, Ordering::Release);
    }

    /// The config as last reloaded.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Takes the regions a reload appended and removed (already checked by
    /// `Config::reload_change`). A removed region's identity stays: its requests are answered
    /// `410 ATOLL-REGION-REMOVED`, not refused as a stranger's.
    pub(crate) fn update(&self, config: Arc<Config>, added: &[RegionConfig], removed: &[RegionId]) {
        self.note_removed(removed);
        {
            let mut l = match self.identities.write() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            for r in added {
                if !l.contains(&r.name) {
                    l.push(r.name.clone());
                }
            }
        }
        self.stream_limit.store(
            config
                .replication
                .subscription_stream_limit(config.regions.len()),
            Ordering::Relaxed,
        );
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
    }

    /// Whether this region may stamp a write to `keyspace` now: a replica takes none until it
    /// is admitted, and never one that needs a consensus group.
    pub fn permit(&self, keyspace: &KeyspaceConfig) -> Result<()> {
        if self.voter {
            return Ok(());
        }
        if !self.is_admitted() {
            let waiting = self.waiting_for();
            return Err(AtollError::Joining(format!(
                "waiting for {} to admit `{}` (each must reload a config that lists it, and this region must catch up with their writes)",
                if waiting.is_empty() {
                    "its peers".to_string()
                } else {
                    waiting
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                self.me
            )));
        }
        let needs = if keyspace.owned.is_some() {
            Some("its keys' homes move through the control group")
        } else if keyspace.on_minority == OnMinority::ReadOnly {
            Some("its writes need a majority of the control group")
        } else if keyspace.policy == Policy::Strong {
            Some("it is replicated by the strong group")
        } else {
            None
        };
        match needs {
            Some(why) => Err(self.not_a_voter(&keyspace.name, why)),
            None => Ok(()),
        }
    }

    /// The refusal of a request to keyspace `keyspace` that needs a consensus group.
    pub fn not_a_voter(&self, keyspace: &str, why: &str) -> AtollError {
        AtollError::NotAVoter(format!(
            "region `{}` is a replica (voter = false) and serves keyspace `{keyspace}` only to read (eventual) or not at all: {why}; the voters are {}",
            self.me,
            self.config()
                .voters()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The file has no change.
    Unchanged,
    /// These regions were added, and these removed.
    Changed {
        added: Vec<RegionId>,
        removed: Vec<RegionId>,
    },
}

/// Applies a config re-read from disk to a running region: appended replicas are added to
/// replication, the peer listener's identities and the membership
/// (`docs/design/adding-regions.md`); replicas dropped from the list are removed from the
/// cluster (`docs/design/region-removal.md`); anything else is refused and changes nothing.
pub struct Reloader {
    pub(crate) membership: Arc<Membership>,
    pub(crate) replicator: Arc<crate::replication::Replicator>,
    pub(crate) metrics: Arc<Metrics>,
    /// `--peer-via` overrides given at start (a region added later is dialled at its `peer`).
    pub(crate) peer_via: std::collections::BTreeMap<String, SocketAddr>,
}

impl Reloader {
    /// Counts a reload whose file could not be read or parsed (nothing changed).
    pub fn failed(&self) {
        self.metrics.config_reload("failed");
    }

    /// Applies `new`. Removing a region blocks on the store (its removal is made durable),
    /// so this runs on the runtime and hands that part to a blocking thread.
    pub async fn apply(&self, new: Config) -> Result<Reloaded> {
        let refused = |why: String| {
            self.metrics.config_reload("refused");
            AtollError::Config(format!("config reload refused, nothing changed: {why}"))
        };
        let current = self.membership.config();
        let change = current.reload_change(&new).map_err(refused)?;
        if change.is_empty() {
            self.metrics.config_reload("unchanged");
            return Ok(Reloaded::Unchanged);
        }
        let me = &self.membership.me;
        if change.removed.iter().any(|r| r.name == *me) {
            return Err(refused(format!(
                "this region (`{me}`) is not in the reloaded config: a region is removed by reloading every other region with a config without it; stop this one instead"
            )));
        }
        let gone = self.replicator.removed_regions();
        if let Some(r) = change.added.iter().find(|r| gone.contains_key(&r.name)) {
            return Err(refused(format!(
                "region `{}` was removed from the cluster: a removed region's name is never reused in the cluster (its writes stay this cluster's under that name); give the new region another name",
                r.name
            )));
        }
        for r in &change.added {
            let addr = self
                .peer_via
                .get(r.name.as_str())
                .copied()
                .unwrap_or(r.peer);
            self.replicator.add_peer(&r.name, addr)?;
        }
        let removed: Vec<RegionId> = change.removed.iter().map(|r| r.name.clone()).collect();
        for r in &removed {
            if let Err(e) = self.replicator.remove_peer(r).await {
                // Not taken into the membership: the next reload of the same file tries again
                // (removing is idempotent).
                self.metrics.config_reload("failed");
                return Err(e);
            }
        }
        self.membership
            .update(Arc::new(new), &change.added, &removed);
        let added: Vec<RegionId> = change.added.iter().map(|r| r.name.clone()).collect();
        self.metrics.config_reload("applied");
        Ok(Reloaded::Changed { added, removed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[cluster]\nname = \"t\"\n\n[[regions]]\nname = \"us-east-1\"\napi = \"127.0.0.1:7100\"\n\n[[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\n\n[[regions]]\nname = \"ap-southeast-1\"\napi = \"127.0.0.1:7102\"\n\n[[regions]]\nname = \"sa-east-1\"\napi = \"127.0.0.1:7103\"\nvoter = false\n\n[[keyspaces]]\nname = \"sessions\"\npolicy = \"lww\"\n\n[[keyspaces]]\nname = \"inventory\"\npolicy = \"lww\"\non_minority = \"read-only\"\n\n[[keyspaces]]\nname = \"profiles\"\npolicy = \"owned\"\ndefault_home = \"us-east-1\"\n\n[[keyspaces]]\nname = \"seats\"\npolicy = \"strong\"\n\n[fencing]\nquorum = true\n";

    fn code(r: Result<()>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn a_replica_writes_nothing_until_admitted_and_never_what_needs_a_group() {
        let config = Arc::new(Config::parse(CONFIG, "t.toml").expect("config"));
        let ks = |n: &str| config.keyspace(n).expect("keyspace").clone();
        let me = RegionId::new("sa-east-1").expect("region");
        let m = Membership::new(config.clone(), &me, false);
        assert!(!m.is_voter() && !m.is_admitted());
        for k in ["sessions", "inventory", "profiles", "seats"] {
            assert_eq!(code(m.permit(&ks(k))), "ATOLL-JOINING", "{k}");
        }
        m.set_admitted();
        assert_eq!(code(m.permit(&ks("sessions"))), "ok");
        for k in ["inventory", "profiles", "seats"] {
            let e = m.permit(&ks(k)).expect_err(k);
            assert_eq!(e.code(), "ATOLL-NOT-A-VOTER", "{k}");
            assert!(
                e.to_string()
                    .contains("us-east-1, eu-west-1, ap-southeast-1"),
                "{e}"
            );
        }
        // A voter is admitted from the start and refused nothing here (fencing decides).
        let us = Membership::new(
            config.clone(),
            &RegionId::new("us-east-1").expect("region"),
            false,
        );
        assert!(us.is_voter() && us.is_admitted());
        for k in ["sessions", "inventory", "profiles", "seats"] {
            assert_eq!(code(us.permit(&ks(k))), "ok", "{k}");
        }
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    #[test]
    fn an_added_region_joins_the_identities_and_raises_the_stream_cap() {
        let three = "[cluster]\nname = \"t\"\n\n[[regions]]\nname = \"a\"\napi = \"127.0.0.1:7100\"\n\n[[regions]]\nname = \"b\"\napi = \"127.0.0.1:7101\"\n\n[[regions]]\nname = \"c\"\napi = \"127.0.0.1:7102\"\n\n[[keyspaces]]\nname = \"s\"\npolicy = \"lww\"\n";
        let four = format!(
            "{three}\n[[regions]]\nname = \"d\"\napi = \"127.0.0.1:7103\"\nvoter = false\n"
        );
        let old = Arc::new(Config::parse(three, "t.toml").expect("three"));
        let new = Config::parse(&four, "t.toml").expect("four");
        let me = RegionId::new("a").expect("region");
        let m = Membership::new(old.clone(), &me, false);
        let cap = m.stream_limit();
        let before = cap.load(Ordering::Relaxed);
        assert_eq!(before, old.replication.subscription_stream_limit(3));
        let d = RegionId::new("d").expect("region");
        assert!(!m.is_region(&d));
        let change = old.reload_change(&new).expect("appended replica");
        m.update(Arc::new(new), &change.added, &[]);
        assert!(m.is_region(&d));
        assert!(m.identities().read().expect("identities").contains(&d));
        assert!(cap.load(Ordering::Relaxed) > before, "the cap did not grow");
        assert_eq!(m.config().regions.len(), 4);
        // Dropped again: out of the cluster, still an origin, still recognised.
        let four = m.config();
        let change = four.reload_change(&old).expect("a replica dropped");
        let removed: Vec<RegionId> = change.removed.iter().map(|r| r.name.clone()).collect();
        assert_eq!(removed, std::slice::from_ref(&d));
        m.update(old.clone(), &change.added, &removed);
        assert!(!m.is_region(&d) && m.is_origin(&d));
        assert!(!m.regions().contains(&d) && m.origins().contains(&d));
        assert_eq!(m.removed(), std::slice::from_ref(&d));
        assert!(m.identities().read().expect("identities").contains(&d));
        assert_eq!(
            cap.load(Ordering::Relaxed),
            before,
            "the cap did not shrink back"
        );
        // A stranger is none of these.
        let x = RegionId::new("x").expect("region");
        assert!(!m.is_origin(&x));
    }

    #[test]
    fn regions_removed_before_a_start_stay_recognised() {
        let three = "[cluster]\nname = \"t\"\n\n[[regions]]\nname = \"a\"\napi = \"127.0.0.1:7100\"\n\n[[regions]]\nname = \"b\"\napi = \"127.0.0.1:7101\"\n\n[[regions]]\nname = \"c\"\napi = \"127.0.0.1:7102\"\n\n[[keyspaces]]\nname = \"s\"\npolicy = \"lww\"\n";
        let config = Arc::new(Config::parse(three, "t.toml").expect("three"));
        let m = Membership::new(config, &RegionId::new("a").expect("region"), false);
        let d = RegionId::new("d").expect("region");
        m.recognise_removed([&d]);
        assert!(m.is_origin(&d) && !m.is_region(&d));
        assert!(m.identities().read().expect("identities").contains(&d));
        assert_eq!(m.origins().len(), 4);
    }
}

#[cfg(test)]
mod reloader_tests {
    use super::*;
    use atoll_core::clock::{Clock, ManualClock};

    const BASE: &str = "[cluster]\nname = \"t\"\n\n[cluster.tls]\ninsecure = true\n\n[[regions]]\nname = \"a\"\napi = \"127.0.0.1:7100\"\n\n[[regions]]\nname = \"b\"\napi = \"127.0.0.1:7101\"\n\n[[keyspaces]]\nname = \"s\"\npolicy = \"lww\"\n";

    fn with_d() -> String {
        format!("{BASE}\n[[regions]]\nname = \"d\"\napi = \"127.0.0.1:7103\"\nvoter = false\n")
    }

    fn parse(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn reloader(config: Config, me: &str) -> (Reloader, Arc<atoll_store::Store>) {
        let config = Arc::new(config);
        let me = RegionId::new(me).expect("region");
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
        let store = Arc::new(
            atoll_store::Store::open(
                Arc::new(atoll_store::backend::MemBackend::default()),
                atoll_store::StoreOptions::new(me.clone(), config.keyspaces.clone()),
                clock.clone(),
            )
            .expect("store"),
        );
        let metrics = Arc::new(Metrics::new());
        let peer_addrs = config
            .regions
            .iter()
            .filter(|r| r.name != me)
            .map(|r| (r.name.clone(), r.peer))
            .collect();
        let replicator = crate::replication::Replicator::new(
            store.clone(),
            clock,
            metrics.clone(),
            crate::replication::Settings {
                cluster: "t".into(),
                peer_addrs,
                core: atoll_core::repl::ReplConfig::new(1000, 500),
                max_lag_secs: 30,
                tls: None,
                oplog_retention_ms: atoll_config::DEFAULT_OPLOG_RETENTION_MS,
            },
            Arc::new(tokio::sync::Notify::new()),
        )
        .expect("replicator");
        let membership = Membership::new(config, &me, false);
        replicator.set_membership(membership.clone());
        (
            Reloader {
                membership,
                replicator,
                metrics,
                peer_via: Default::default(),
            },
            store,
        )
    }

    fn reloads(r: &Reloader, outcome: &str) -> bool {
        r.metrics.encode().contains(&format!(
            "atoll_config_reloads_total{{outcome=\"{outcome}\"}} 1"
        ))
    }

    #[tokio::test]
    async fn a_reload_removes_a_replica_and_refuses_its_name_back_a_voter_or_this_region() {
        let (r, store) = reloader(parse(&with_d()), "a");
        let d = RegionId::new("d").expect("region");
        // Dropping this region itself: refused (the others remove it).
        let e = reloader(parse(&with_d()), "d")
            .0
            .apply(parse(BASE))
            .await
            .expect_err("this region dropped");
        assert!(e.to_string().contains("not in the reloaded config"), "{e}");
        // Dropping a voter: refused, nothing changed.
        let without_b = with_d().replace(
            "[[regions]]\nname = \"b\"\napi = \"127.0.0.1:7101\"\n\n",
            "",
        );
        let e = r
            .apply(parse(&without_b))
            .await
            .expect_err("a voter dropped");
        assert!(e.to_string().contains("b is a voter"), "{e}");
        assert!(reloads(&r, "refused"));
        assert!(r.membership.is_region(&d) && store.removed_regions().is_empty());
        // Dropping the replica: removed, durably, and out of the cluster.
        let done = r.apply(parse(BASE)).await.expect("removed");
        assert_eq!(
            done,
            Reloaded::Changed {
                added: vec![],
                removed: vec![d.clone()]
            }
        );
        assert!(reloads(&r, "applied"));
        assert!(store.removed_regions().contains_key(&d));
        assert!(!r.membership.is_region(&d) && r.membership.is_origin(&d));
        assert_eq!(r.replicator.removed_holds(&d), Some(0));
        // The same file again: no change.
        assert_eq!(
            r.apply(parse(BASE)).await.expect("same"),
            Reloaded::Unchanged
        );
        // Its name back: refused, it is never reused.
        let e = r.apply(parse(&with_d())).await.expect_err("name reused");
        assert!(e.to_string().contains("never reused"), "{e}");
        assert!(!r.membership.is_region(&d));
        assert!(
            r.metrics
                .encode()
                .contains("atoll_config_reloads_total{outcome=\"refused\"} 2")
        );
    }
}
