//! What the simulation asked for and what was acknowledged: the history the checkers judge the
//! final state against. Only acknowledged writes are recorded (a refused write changed nothing).

use atoll_config::KeyspaceConfig;
use atoll_core::RegionId;
use atoll_core::causal::{CausalContext, Dot, VersionVector};
use atoll_core::hlc::Timestamp;
use atoll_core::op::Policy;
use std::collections::{BTreeMap, BTreeSet};

/// The lww keyspace.
pub const SESSIONS: &str = "sessions";
/// The mvr keyspace (max 64 siblings).
pub const CARTS: &str = "carts";
/// The counter keyspace.
pub const RATELIMITS: &str = "ratelimits";
/// The add-wins set keyspace.
pub const FLAGS: &str = "flags";
/// The rate-limit keyspace with a shared budget (fixed windows).
pub const QUOTA: &str = "quota";
/// The rate-limit keyspace with a split budget (sliding windows).
pub const QUOTA_SPLIT: &str = "quota-split";
/// `quota`'s limit per window.
pub const QUOTA_LIMIT: u64 = 4;
/// `quota`'s window (ms).
pub const QUOTA_WINDOW_MS: u64 = 2_000;
/// `quota-split`'s window (ms).
pub const QUOTA_SPLIT_WINDOW_MS: u64 = 3_000;
/// `quota-split`'s limit per window.
pub const QUOTA_SPLIT_LIMIT: u64 = 5;

/// The keyspaces every simulated region of the cluster `regions` serves.
pub fn keyspaces(regions: &[RegionId]) -> Vec<KeyspaceConfig> {
    use atoll_core::crdt::ratewindow::{Algorithm, RateRule};
    let mut carts = KeyspaceConfig::new(CARTS, Policy::Mvr);
    carts.max_siblings = 64;
    let mut quota = KeyspaceConfig::new(QUOTA, Policy::RateLimit);
    quota.ratelimit = Some(RateRule {
        limit: QUOTA_LIMIT,
        window_ms: QUOTA_WINDOW_MS,
        algorithm: Algorithm::Fixed,
        shares: None,
    });
    let mut split = KeyspaceConfig::new(QUOTA_SPLIT, Policy::RateLimit);
    let n = regions.len().max(1) as u64;
    split.ratelimit = Some(RateRule {
        limit: QUOTA_SPLIT_LIMIT,
        window_ms: QUOTA_SPLIT_WINDOW_MS,
        algorithm: Algorithm::Sliding,
        shares: Some(
            regions
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let extra = u64::from((i as u64) < QUOTA_SPLIT_LIMIT % n);
                    (r.clone(), QUOTA_SPLIT_LIMIT / n + extra)
                })
                .collect(),
        ),
    });
    vec![
        KeyspaceConfig::new(SESSIONS, Policy::Lww),
        carts,
        KeyspaceConfig::new(RATELIMITS, Policy::Counter),
        KeyspaceConfig::new(FLAGS, Policy::Set),
        quota,
        split,
    ]
}

/// The keyspaces, with those named in `read_only` declared `on_minority = "read-only"`
/// (active-active quorum fencing).
pub fn keyspaces_with_read_only(regions: &[RegionId], read_only: &[String]) -> Vec<KeyspaceConfig> {
    let mut ks = keyspaces(regions);
    for k in &mut ks {
        if read_only.contains(&k.name) {
            k.on_minority = atoll_config::OnMinority::ReadOnly;
        }
    }
    ks
}

/// A client write, as the simulation issues it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// lww put.
    LwwPut { key: String, value: String },
    /// lww delete (tombstone).
    LwwDelete { key: String },
    /// lww put that expires `ttl_ms` after its timestamp (`docs/design/expiring-keys.md`).
    LwwPutTtl {
        key: String,
        value: String,
        ttl_ms: u64,
    },
    /// A new expiry for a live lww key (`Some`: EXPIRE) or none (`None`: PERSIST); refused
    /// (nothing acknowledged) when the key is absent or expired.
    LwwExpire { key: String, ttl_ms: Option<u64> },
    /// mvr put; with the context of a read at the same region just before, or without (adds a
    /// sibling).
    MvrPut {
        key: String,
        value: String,
        with_context: bool,
        /// The new sibling expires this long after its timestamp (`None`: never).
        ttl_ms: Option<u64>,
    },
    /// mvr delete with the context of a read at the same region.
    MvrDelete { key: String },
    /// Counter add (may be negative).
    CounterAdd { key: String, delta: i64 },
    /// Set update.
    SetUpdate {
        key: String,
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// A rate-limit request of `cost` (`split`: against `quota-split`, else `quota`).
    Admit { key: String, cost: u64, split: bool },
}

impl WriteOp {
    /// The keyspace and key written.
    pub fn target(&self) -> (&'static str, &str) {
        match self {
            WriteOp::LwwPut { key, .. }
            | WriteOp::LwwDelete { key }
            | WriteOp::LwwPutTtl { key, .. }
            | WriteOp::LwwExpire { key, .. } => (SESSIONS, key),
            WriteOp::MvrPut { key, .. } | WriteOp::MvrDelete { key } => (CARTS, key),
            WriteOp::CounterAdd { key, .. } => (RATELIMITS, key),
            WriteOp::SetUpdate { key, .. } => (FLAGS, key),
            WriteOp::Admit {
                key, split: true, ..
            } => (QUOTA_SPLIT, key),
            WriteOp::Admit { key, .. } => (QUOTA, key),
        }
    }

    /// A small code for the event log.
    pub fn code(&self) -> u64 {
        match self {
            WriteOp::LwwPut { .. } => 1,
            WriteOp::LwwDelete { .. } => 2,
            WriteOp::MvrPut {
                ttl_ms: Some(_), ..
            } => 11,
            WriteOp::MvrPut {
                with_context: true, ..
            } => 3,
            WriteOp::MvrPut { .. } => 4,
            WriteOp::MvrDelete { .. } => 5,
            WriteOp::CounterAdd { .. } => 6,
            WriteOp::SetUpdate { .. } => 7,
            WriteOp::LwwPutTtl { .. } => 8,
            WriteOp::LwwExpire { .. } => 9,
            WriteOp::Admit { .. } => 10,
        }
    }
}

/// An acknowledged lww write.
#[derive(Clone, Debug)]
pub struct LwwWrite {
    pub key: Vec<u8>,
    pub origin: RegionId,
    pub seq: u64,
    pub ts: Timestamp,
    /// `None`: a delete.
    pub value: Option<Vec<u8>>,
    /// When the written value expires (ms on the writer's clock), as the store stamped it.
    pub expires_ms: Option<u64>,
    /// The writer's applied vector just before the write: every op it had seen.
    pub seen: VersionVector,
    /// Virtual time of the write.
    pub at_ms: u64,
}

impl LwwWrite {
    /// Whether the writer of `self` had seen `other` (applied its op) before writing.
    pub fn had_seen(&self, other: &LwwWrite) -> bool {
        self.seen.get(&other.origin) >= other.seq
    }
}

/// An acknowledged mvr write.
#[derive(Clone, Debug)]
pub struct MvrWrite {
    pub key: Vec<u8>,
    pub origin: RegionId,
    pub seq: u64,
    /// The dot of the sibling it created.
    pub dot: Dot,
    /// `None`: a delete marker.
    pub value: Option<Vec<u8>>,
    /// When the sibling expires (ms on the writer's clock), as the store stamped it.
    pub expires_ms: Option<u64>,
    /// The dots it supersedes: the client's context plus the delete markers the region held.
    pub seen: CausalContext,
}

/// An acknowledged counter add.
#[derive(Clone, Debug)]
pub struct CounterWrite {
    pub key: Vec<u8>,
    pub origin: RegionId,
    pub seq: u64,
    pub delta: i64,
}

/// An acknowledged set update.
#[derive(Clone, Debug)]
pub struct SetWrite {
    pub key: Vec<u8>,
    pub origin: RegionId,
    pub seq: u64,
    /// Each added element and the dot it got.
    pub added: Vec<(String, Dot)>,
    /// For each element removed or re-added, the dots the writing region held for it (the
    /// update removes exactly those).
    pub observed: Vec<(String, Vec<Dot>)>,
}

/// An admitted rate-limit request.
#[derive(Clone, Debug)]
pub struct AdmitWrite {
    pub keyspace: &'static str,
    pub key: Vec<u8>,
    pub origin: RegionId,
    pub seq: u64,
    /// The window it was counted in (by its HLC timestamp).
    pub window: u64,
    pub cost: u64,
}

/// When and under which lease epoch a region stamped an acknowledged write (fenced runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub region: RegionId,
    pub seq: u64,
    /// The epoch the store stamped on the operation-log entry (0 in active-active).
    pub epoch: u64,
    /// Virtual (true) time of the stamping instant.
    pub at_ms: u64,
    pub keyspace: &'static str,
}

/// Everything acknowledged during a run.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub lww: Vec<LwwWrite>,
    pub mvr: Vec<MvrWrite>,
    pub counters: Vec<CounterWrite>,
    pub sets: Vec<SetWrite>,
    pub admits: Vec<AdmitWrite>,
    /// Every (keyspace, key) ever written (acknowledged or not).
    pub keys: BTreeSet<(String, Vec<u8>)>,
    /// Writes refused by the store (sibling limit, ...): not acknowledged, nothing changed.
    pub rejected: u64,
    /// Writes accepted by a region while its clock ran ahead beyond the bound: (origin, seq).
    pub skewed_writes: Vec<(RegionId, u64)>,
    /// Writes refused by the fencing gate (`ATOLL-NOT-PRIMARY`, `ATOLL-FENCED`): not
    /// acknowledged, nothing written.
    pub refused_fencing: u64,
    /// Fenced runs: every acknowledged write's stamping instant, region and epoch, in time order.
    pub stamps: Vec<Stamp>,
}

impl History {
    /// `origin`'s acknowledged writes with a sequence number above `held` leave the write lists
    /// (a removed region's writes no member received, `docs/design/region-removal.md`).
    /// Returns how many.
    pub fn set_writes_aside_after(&mut self, origin: &RegionId, held: u64) -> usize {
        let before = self.acked();
        let keep = |o: &RegionId, s: u64| o != origin || s <= held;
        self.lww.retain(|w| keep(&w.origin, w.seq));
        self.mvr.retain(|w| keep(&w.origin, w.seq));
        self.counters.retain(|w| keep(&w.origin, w.seq));
        self.sets.retain(|w| keep(&w.origin, w.seq));
        self.admits.retain(|w| keep(&w.origin, w.seq));
        self.skewed_writes.retain(|(o, s)| keep(o, *s));
        before - self.acked()
    }

    /// Number of acknowledged writes.
    pub fn acked(&self) -> usize {
        self.lww.len() + self.mvr.len() + self.counters.len() + self.sets.len() + self.admits.len()
    }

    /// The acknowledged lww writes, by key.
    pub fn lww_by_key(&self) -> BTreeMap<&[u8], Vec<&LwwWrite>> {
        let mut out: BTreeMap<&[u8], Vec<&LwwWrite>> = BTreeMap::new();
        for w in &self.lww {
            out.entry(&w.key[..]).or_default().push(w);
        }
        out
    }

    /// The acknowledged mvr writes, by key.
    pub fn mvr_by_key(&self) -> BTreeMap<&[u8], Vec<&MvrWrite>> {
        let mut out: BTreeMap<&[u8], Vec<&MvrWrite>> = BTreeMap::new();
        for w in &self.mvr {
            out.entry(&w.key[..]).or_default().push(w);
        }
        out
    }

    /// The acknowledged lww write by `origin` with timestamp `ts`, if any.
    pub fn lww_write(&self, key: &[u8], origin: &RegionId, ts: Timestamp) -> Option<&LwwWrite> {
        self.lww
            .iter()
            .find(|w| w.key == key && &w.origin == origin && w.ts == ts)
    }

    /// The lww delete written by `origin` with timestamp `ts`, if acknowledged.
    pub fn lww_delete(&self, key: &[u8], origin: &RegionId, ts: Timestamp) -> Option<&LwwWrite> {
        self.lww
            .iter()
            .find(|w| w.key == key && &w.origin == origin && w.ts == ts && w.value.is_none())
    }
}
