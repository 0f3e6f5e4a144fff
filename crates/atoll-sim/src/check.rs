//! The invariants, one checker each. Each returns a [`Violation`] that says what was expected,
//! what was found, and where.
//!
//! 1. [`convergence`]: after healing and quiescence every region holds the same observable state
//!    for every key ever written, and the same applied vector.
//! 2. [`no_lost_writes`]: every acknowledged lww write is the final value, or was causally
//!    overwritten, or is a loser in some region's conflict ledger; every acknowledged mvr write is
//!    a current sibling or was superseded by a write whose context held its dot.
//! 3. [`counters`]: every counter equals the sum of its acknowledged adds.
//! 4. [`add_wins_sets`]: an element is present iff one of its adds was observed by no remove.
//! 5. [`tombstone_collection`]: a tombstone is collected only once every region applied its delete.
//! 6. [`apply_within_clock_bound`] and [`skewed_writes_converged`]: no region applies an op whose
//!    timestamp runs ahead of its clock beyond the bound, and the writes of a region whose clock ran
//!    ahead still reach everyone once it is back.
//!
//! Fenced runs (`docs/design/fencing.md`) add:
//!
//! 7. [`one_writer_at_a_time`], [`epochs_in_order`] and [`read_only_within_quorum_window`]: no
//!    two regions hold a write permit at the same instant of true time (sampled at every event,
//!    and recorded as windows); acknowledged writes of different epochs never interleave in true
//!    time; in active-active with quorum fencing, a `read-only` keyspace is written only within
//!    `D - M` (at the slowest clock rate the bound allows) of a presence that reached a majority.
//! 8. [`late_write`]: no replicated write of a superseded epoch is refused as late (stamped after
//!    the supersession) unless an operator forced a promotion over it.
//! 9. [`promotion_exposure`] and [`switchover_lost_nothing`]: a promotion (automatic or
//!    `atoll promote`) never reports more exposure than the writes its region really lacked, and
//!    one without `--accept-data-loss` reports none; a switchover's target held every write of
//!    the old holder when the lease moved. (Nothing acknowledged may be lost at all: invariant 2
//!    holds for fenced runs too, forced promotions included, since an old primary's disk always
//!    survives here.)
//!
//! Every run adds, for its session clients (`docs/design/session-consistency.md`):
//!
//! 10. [`session_read`] and [`session_verdict`]: a session read the token check served reflects
//!     every write of its key the client made or saw: the lww state it reads is at least as new
//!     (HLC timestamp, then origin: the lww order) as the client's own newest acknowledged write
//!     of the key (read-your-writes) and as the newest state of it the client read before,
//!     wherever (monotonic reads); and a token a client genuinely holds is never judged forged.

//!
//! Expiring keys (`docs/design/expiring-keys.md`) add:
//!
//! 12. [`expiry_intact`] and [`expired_collection`] ([`mvr_expiry_intact`] and
//!     [`expired_sibling_collection`] for mvr siblings): an lww value's expiry is the one its write
//!     stamped (its timestamp's wall time plus the ttl asked for), in every region it reaches;
//!     an expired value is collected only once every region applied its write and the
//!     collecting region's own clock has passed the expiry. Invariants 1 and 2 read an expiring
//!     value as absent once the expiry is past (by the fastest clock of the views: a region that
//!     collected it had passed it by its own).
//! 13. [`rate_limits`] (`docs/design/rate-limits.md`): per key and window, a `split` keyspace
//!     never admitted more than its limit in all and no region of a `shared` one more than the
//!     limit by itself, under any partition; every region's state holds the newest window
//!     admitted in (and at most the one before), each with exactly the cost each region admitted
//!     in it, or nothing once the key went idle.

use crate::fencing::Promotion;
use crate::model::{
    CARTS, FLAGS, History, LwwWrite, QUOTA, QUOTA_LIMIT, QUOTA_SPLIT, QUOTA_SPLIT_LIMIT,
    RATELIMITS, SESSIONS, Stamp,
};
use atoll_core::RegionId;
use atoll_core::causal::{CausalContext, Dot, VersionVector};
use atoll_core::crdt::mvr::MvRegister;
use atoll_core::hlc::Timestamp;
use atoll_core::op::{KeyState, OpEntry};
use atoll_core::session::{PeerSession, SessionCheck, SessionToken};
use atoll_store::ConflictRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The invariants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// 1: identical state and applied vectors after healing.
    Convergence,
    /// 2: no acknowledged write silently lost.
    NoLostWrites,
    /// 3: counters equal the sum of acknowledged adds.
    Counters,
    /// 4: add-wins set semantics.
    AddWinsSets,
    /// 5: tombstones collected only after every region saw them.
    Tombstones,
    /// 6: clock-skew bound on applies; skewed writes converge after the skew.
    ClockSkew,
    /// 7: at most one region may stamp writes at any instant (per lease; per quorum window for
    /// `read-only` keyspaces in active-active).
    WriteWindows,
    /// 8: no acknowledged write refused as a late write of a superseded epoch.
    LateWrites,
    /// 9: manual promotions report their exposure truthfully; switchovers lose nothing.
    PromotionExposure,
    /// 10: session reads see the client's writes and never go back; genuine tokens are honoured.
    SessionGuarantees,
    /// 11: operation-log truncation never removes an entry a region still needs: no region
    /// that lost nothing is ever sent to bootstrap by snapshot.
    Truncation,
    /// 12: an expiry travels intact with its value; expired values are collected only once every
    /// region applied the write and the local clock passed the expiry.
    Expiry,
    /// 13: rate limits hold their documented bounds, and every region counts exactly what was
    /// admitted in the windows it keeps.
    RateLimits,
    /// The harness itself failed (a store call errored where it must not).
    Harness,
}

impl Invariant {
    /// Number and name, e.g. `1-convergence`.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::Convergence => "1-convergence",
            Invariant::NoLostWrites => "2-no-lost-writes",
            Invariant::Counters => "3-counters",
            Invariant::AddWinsSets => "4-add-wins-sets",
            Invariant::Tombstones => "5-tombstones",
            Invariant::ClockSkew => "6-clock-skew",
            Invariant::WriteWindows => "7-write-windows",
            Invariant::LateWrites => "8-late-writes",
            Invariant::PromotionExposure => "9-promotion-exposure",
            Invariant::SessionGuarantees => "10-session-guarantees",
            Invariant::Truncation => "11-oplog-truncation",
            Invariant::Expiry => "12-expiry",
            Invariant::RateLimits => "13-rate-limits",
            Invariant::Harness => "harness",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: Invariant, detail: impl Into<String>) -> Self {
        Self {
            invariant,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {} violated: {}", self.invariant, self.detail)
    }
}

impl std::error::Error for Violation {}

/// What one region holds, read through its store.
#[derive(Clone, Debug)]
pub struct RegionView {
    pub region: RegionId,
    pub applied: VersionVector,
    /// State of every key ever written that the region holds (absent keys are left out).
    pub states: BTreeMap<(String, Vec<u8>), KeyState>,
    /// The lww conflict ledger (`sessions`), newest first.
    pub conflicts: Vec<ConflictRecord>,
    /// The region's clock when the view was taken (judges expiry).
    pub now_ms: u64,
}

impl RegionView {
    fn state(&self, keyspace: &str, key: &[u8]) -> Option<&KeyState> {
        self.states.get(&(keyspace.to_string(), key.to_vec()))
    }
}

/// Shows a key as `keyspace/key`.
fn k(keyspace: &str, key: &[u8]) -> String {
    format!("{keyspace}/{}", String::from_utf8_lossy(key))
}

fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
        None => "<deleted>".into(),
    }
}

/// What a client can observe of a key's state: an lww tombstone and an absent key look the same
/// (a tombstone is collected at different times in different regions), everything else is the
/// whole CRDT state (for mvr that includes the context a read returns).
#[derive(Debug, PartialEq)]
enum Observed<'a> {
    Absent,
    Lww {
        value: &'a [u8],
        ts: Timestamp,
        origin: &'a RegionId,
    },
    Mvr {
        siblings: Vec<&'a atoll_core::crdt::mvr::Sibling>,
        ctx: &'a CausalContext,
    },
    Other(&'a KeyState),
}

/// `s` as a client sees it once every clock reads at most `t_ms`: an lww value or mvr sibling
/// whose expiry is at most `t_ms` is absent (it may be collected in a region whose clock passed
/// it).
fn observe(s: Option<&KeyState>, t_ms: u64) -> Observed<'_> {
    match s {
        None => Observed::Absent,
        Some(KeyState::Lww(r)) => match r.live_value(t_ms) {
            None => Observed::Absent,
            Some(v) => Observed::Lww {
                value: v,
                ts: r.ts,
                origin: &r.origin,
            },
        },
        // An expired mvr sibling may be collected in one region and not yet in another; the
        // context stays in both.
        Some(KeyState::Mvr(r)) => Observed::Mvr {
            siblings: r
                .siblings
                .iter()
                .filter(|s| s.value.is_none() || !s.expired(t_ms))
                .collect(),
            ctx: &r.ctx,
        },
        // An idle rate-limit key may be collected in one region and not yet in another.
        Some(KeyState::RateLimit(w)) if w.idle_from().is_none_or(|t| t <= t_ms) => Observed::Absent,
        Some(other) => Observed::Other(other),
    }
}

/// Invariant 1: identical applied vectors and identical observable state of every key.
pub fn convergence(views: &[RegionView]) -> Result<(), Violation> {
    let Some(first) = views.first() else {
        return Ok(());
    };
    for v in &views[1..] {
        if v.applied != first.applied {
            return Err(Violation::new(
                Invariant::Convergence,
                format!(
                    "applied vectors differ: {} has {}, {} has {}",
                    first.region, first.applied, v.region, v.applied
                ),
            ));
        }
    }
    let keys: BTreeSet<&(String, Vec<u8>)> = views.iter().flat_map(|v| v.states.keys()).collect();
    let t = latest_clock(views);
    for key in keys {
        let a = observe(first.states.get(key), t);
        for v in &views[1..] {
            let b = observe(v.states.get(key), t);
            if a != b {
                return Err(Violation::new(
                    Invariant::Convergence,
                    format!(
                        "{} differs: {} holds {:?}, {} holds {:?}",
                        k(&key.0, &key.1),
                        first.region,
                        first.states.get(key),
                        v.region,
                        v.states.get(key)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The fastest clock among the views.
fn latest_clock(views: &[RegionView]) -> u64 {
    views.iter().map(|v| v.now_ms).max().unwrap_or(0)
}

fn same_write(a: &LwwWrite, b: &LwwWrite) -> bool {
    a.origin == b.origin && a.seq == b.seq
}

/// Invariant 2: no acknowledged lww or mvr write silently lost (judged on the first region's
/// state; run [`convergence`] first).
pub fn no_lost_writes(views: &[RegionView], history: &History) -> Result<(), Violation> {
    let Some(view) = views.first() else {
        return Ok(());
    };
    let lost = |d: String| Err(Violation::new(Invariant::NoLostWrites, d));

    for (key, writes) in history.lww_by_key() {
        let Some(max) = writes
            .iter()
            .max_by(|a, b| (a.ts, &a.origin, &a.value).cmp(&(b.ts, &b.origin, &b.value)))
        else {
            continue;
        };
        let state = match view.state(SESSIONS, key) {
            Some(KeyState::Lww(r)) => Some(r),
            None => None,
            Some(other) => {
                return lost(format!(
                    "{} holds a {} state",
                    k(SESSIONS, key),
                    other.policy()
                ));
            }
        };
        // The final state is the greatest acknowledged write (a collected tombstone or expired
        // value: absent).
        let expired = max.expires_ms.is_some_and(|e| e <= latest_clock(views));
        let ok = match (state, &max.value) {
            (None, None) => true,
            (None, Some(_)) => expired,
            (Some(r), _) => {
                r.ts == max.ts
                    && r.origin == max.origin
                    && r.value == max.value
                    && r.expires_ms == max.expires_ms
            }
        };
        if !ok {
            return lost(format!(
                "{} at {} is {} but the greatest acknowledged write is {} (origin {}, seq {}, ts {})",
                k(SESSIONS, key),
                view.region,
                state.map_or("<absent>".to_string(), |r| format!(
                    "{} (origin {}, ts {})",
                    show(&r.value),
                    r.origin,
                    r.ts
                )),
                show(&max.value),
                max.origin,
                max.seq,
                max.ts
            ));
        }
        for w in &writes {
            if same_write(w, max) {
                continue;
            }
            if writes.iter().any(|w2| !same_write(w2, w) && w2.had_seen(w)) {
                continue;
            }
            let in_ledger = views.iter().any(|v| {
                v.conflicts.iter().any(|c| {
                    c.keyspace == SESSIONS
                        && c.key == w.key
                        && c.loser.ts == w.ts
                        && c.loser.origin == w.origin
                })
            });
            if in_ledger {
                continue;
            }
            return lost(format!(
                "lww write {} = {} (origin {}, seq {}, ts {}, at {} ms) was lost: it is not the final \
                 value, no later write had seen it, and no region's conflict ledger records it as a loser",
                k(SESSIONS, key),
                show(&w.value),
                w.origin,
                w.seq,
                w.ts,
                w.at_ms
            ));
        }
    }

    for (key, writes) in history.mvr_by_key() {
        let empty = MvRegister::default();
        let state = match view.state(CARTS, key) {
            Some(KeyState::Mvr(r)) => r,
            None => &empty,
            Some(other) => {
                return lost(format!(
                    "{} holds a {} state",
                    k(CARTS, key),
                    other.policy()
                ));
            }
        };
        let superseded = |d: &Dot| writes.iter().any(|w| w.seen.contains(d));
        let expected: BTreeMap<&Dot, &Option<Vec<u8>>> = writes
            .iter()
            .filter(|w| !superseded(&w.dot))
            .map(|w| (&w.dot, &w.value))
            .collect();
        let actual: BTreeMap<&Dot, &Option<Vec<u8>>> =
            state.siblings.iter().map(|s| (&s.dot, &s.value)).collect();
        let t = latest_clock(views);
        for (dot, value) in &expected {
            match actual.get(dot) {
                // An expired sibling may have been collected (invariant 12 checks when).
                None if writes
                    .iter()
                    .any(|w| &&w.dot == dot && w.expires_ms.is_some_and(|e| e <= t)) => {}
                None => {
                    let w = writes.iter().find(|w| &&w.dot == dot);
                    return lost(format!(
                        "mvr write {} = {} (dot {dot}, seq {}) was lost: it is not a sibling at {} and \
                         no acknowledged write's context held its dot; siblings: {:?}",
                        k(CARTS, key),
                        show(value),
                        w.map_or(0, |w| w.seq),
                        view.region,
                        state.siblings
                    ));
                }
                Some(v) if v != value => {
                    return lost(format!(
                        "mvr sibling {} dot {dot} holds {} but its write wrote {}",
                        k(CARTS, key),
                        show(v),
                        show(value)
                    ));
                }
                Some(_) => {}
            }
        }
        for (dot, value) in &actual {
            if !expected.contains_key(dot) {
                return lost(format!(
                    "mvr {} at {} has sibling {dot} = {} that {}",
                    k(CARTS, key),
                    view.region,
                    show(value),
                    if writes.iter().any(|w| &&w.dot == dot) {
                        "an acknowledged write superseded (resurrected)"
                    } else {
                        "no acknowledged write produced"
                    }
                ));
            }
        }
    }
    Ok(())
}

/// Invariant 3: every counter equals the sum of its acknowledged adds.
pub fn counters(views: &[RegionView], history: &History) -> Result<(), Violation> {
    let mut sums: BTreeMap<&[u8], i128> = BTreeMap::new();
    for w in &history.counters {
        *sums.entry(&w.key[..]).or_default() += i128::from(w.delta);
    }
    for view in views {
        for (key, sum) in &sums {
            let value = match view.state(RATELIMITS, key) {
                Some(KeyState::Counter(c)) => c.value(),
                None => 0,
                Some(other) => {
                    return Err(Violation::new(
                        Invariant::Counters,
                        format!("{} holds a {} state", k(RATELIMITS, key), other.policy()),
                    ));
                }
            };
            if value != *sum {
                return Err(Violation::new(
                    Invariant::Counters,
                    format!(
                        "{} at {} is {value}, but the acknowledged adds sum to {sum}",
                        k(RATELIMITS, key),
                        view.region
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Invariant 4: per set key and element, the dots present are exactly the adds no update observed
/// (an element is present iff some add of it was observed by no remove).
pub fn add_wins_sets(views: &[RegionView], history: &History) -> Result<(), Violation> {
    type PerElement<'a> = BTreeMap<&'a str, BTreeSet<&'a Dot>>;
    let mut added: BTreeMap<&[u8], PerElement> = BTreeMap::new();
    let mut observed: BTreeMap<&[u8], PerElement> = BTreeMap::new();
    for w in &history.sets {
        for (e, d) in &w.added {
            added
                .entry(&w.key[..])
                .or_default()
                .entry(e)
                .or_default()
                .insert(d);
        }
        for (e, ds) in &w.observed {
            observed
                .entry(&w.key[..])
                .or_default()
                .entry(e)
                .or_default()
                .extend(ds.iter());
        }
    }
    let none = BTreeSet::new();
    for view in views {
        for (key, adds) in &added {
            let set = match view.state(FLAGS, key) {
                Some(KeyState::Set(s)) => Some(s),
                None => None,
                Some(other) => {
                    return Err(Violation::new(
                        Invariant::AddWinsSets,
                        format!("{} holds a {} state", k(FLAGS, key), other.policy()),
                    ));
                }
            };
            let members: BTreeSet<&str> = set
                .map(|s| s.members())
                .unwrap_or_default()
                .into_iter()
                .collect();
            let elements: BTreeSet<&str> = adds
                .keys()
                .copied()
                .chain(members.iter().copied())
                .collect();
            for e in elements {
                let obs = observed.get(key).and_then(|o| o.get(e)).unwrap_or(&none);
                let expected: BTreeSet<&Dot> = adds
                    .get(e)
                    .unwrap_or(&none)
                    .iter()
                    .copied()
                    .filter(|d| !obs.contains(d))
                    .collect();
                let actual: BTreeSet<&Dot> = set.map(|s| s.dots(e).collect()).unwrap_or_default();
                if expected != actual {
                    return Err(Violation::new(
                        Invariant::AddWinsSets,
                        format!(
                            "{} element {e:?} at {}: present {} with dots {:?}, but the adds no remove \
                             observed are {:?} (so it should be {})",
                            k(FLAGS, key),
                            view.region,
                            !actual.is_empty(),
                            actual,
                            expected,
                            if expected.is_empty() {
                                "absent"
                            } else {
                                "present"
                            }
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Where a region's replication cursor stands when a tombstone is collected (a crashed region's
/// backend keeps the cursor it had).
#[derive(Clone, Debug)]
pub struct CursorAt {
    pub region: RegionId,
    pub applied: VersionVector,
    pub up: bool,
}

/// Invariant 5: `at` just collected the tombstone of `key` written by `origin` at `ts`: every
/// region must have applied that delete.
pub fn tombstone_collection(
    at: &RegionId,
    key: &[u8],
    origin: &RegionId,
    ts: Timestamp,
    horizon_ms: Option<u64>,
    history: &History,
    cursors: &[CursorAt],
) -> Result<(), Violation> {
    let Some(del) = history.lww_delete(key, origin, ts) else {
        return Err(Violation::new(
            Invariant::Tombstones,
            format!(
                "{at} collected a tombstone of {} (origin {origin}, ts {ts}) that no acknowledged \
                 delete wrote",
                k(SESSIONS, key)
            ),
        ));
    };
    for c in cursors {
        if c.applied.get(origin) < del.seq {
            return Err(Violation::new(
                Invariant::Tombstones,
                format!(
                    "{at} collected the tombstone of {} (delete {origin}:{} ts {ts}, horizon {horizon_ms:?}) \
                     but {} ({}) had applied {origin} only up to {}",
                    k(SESSIONS, key),
                    del.seq,
                    c.region,
                    if c.up { "up" } else { "crashed" },
                    c.applied.get(origin)
                ),
            ));
        }
    }
    Ok(())
}

/// Invariant 13: the bounds of both budgets, then each region's windows against what was
/// admitted.
pub fn rate_limits(views: &[RegionView], history: &History) -> Result<(), Violation> {
    let bad = |d: String| Err(Violation::new(Invariant::RateLimits, d));
    // (keyspace, key, window) -> (origin -> admitted cost)
    type PerRegion<'a> = BTreeMap<&'a RegionId, u64>;
    let mut admitted: BTreeMap<(&str, &[u8], u64), PerRegion> = BTreeMap::new();
    for a in &history.admits {
        *admitted
            .entry((a.keyspace, &a.key[..], a.window))
            .or_default()
            .entry(&a.origin)
            .or_default() += a.cost;
    }
    for ((ks, key, w), per) in &admitted {
        let total: u64 = per.values().sum();
        if *ks == QUOTA_SPLIT && total > QUOTA_SPLIT_LIMIT {
            return bad(format!(
                "{} admitted {total} in the window at {w} against a split limit of {QUOTA_SPLIT_LIMIT}: {per:?}",
                k(ks, key)
            ));
        }
        if *ks == QUOTA
            && let Some((r, n)) = per.iter().find(|(_, n)| **n > QUOTA_LIMIT)
        {
            return bad(format!(
                "{r} alone admitted {n} of {} in the window at {w} against a limit of {QUOTA_LIMIT}",
                k(ks, key)
            ));
        }
    }
    for view in views {
        for ks in [QUOTA, QUOTA_SPLIT] {
            let keys: BTreeSet<&[u8]> = admitted
                .keys()
                .filter(|(k2, _, _)| *k2 == ks)
                .map(|(_, key, _)| *key)
                .collect();
            for key in keys {
                let newest = admitted
                    .keys()
                    .filter(|(k2, key2, _)| *k2 == ks && *key2 == key)
                    .map(|(_, _, w)| *w)
                    .max()
                    .unwrap_or(0);
                let state = match view.state(ks, key) {
                    Some(KeyState::RateLimit(w)) => w,
                    None => {
                        // Collected: only once its windows were all over by this region's clock.
                        let window_ms = if ks == QUOTA_SPLIT {
                            crate::model::QUOTA_SPLIT_WINDOW_MS
                        } else {
                            crate::model::QUOTA_WINDOW_MS
                        };
                        if newest + 2 * window_ms > view.now_ms {
                            return bad(format!(
                                "{} is gone at {} (clock {}) while its window at {newest} still counts",
                                k(ks, key),
                                view.region,
                                view.now_ms
                            ));
                        }
                        continue;
                    }
                    Some(other) => {
                        return bad(format!("{} holds a {} state", k(ks, key), other.policy()));
                    }
                };
                if state.windows.keys().next_back() != Some(&newest) {
                    return bad(format!(
                        "{} at {} keeps windows {:?}, but the newest admission was in the window at {newest}",
                        k(ks, key),
                        view.region,
                        state.windows.keys().collect::<Vec<_>>()
                    ));
                }
                for (w, counted) in &state.windows {
                    let expect = admitted.get(&(ks, key, *w)).cloned().unwrap_or_default();
                    let got: PerRegion = counted.iter().map(|(r, n)| (r, *n)).collect();
                    if got != expect {
                        return bad(format!(
                            "{} at {} counts {got:?} in the window at {w}, but {expect:?} was admitted",
                            k(ks, key),
                            view.region
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Invariant 12, first half: the lww register `reg` that region `at` holds for `key` carries the
/// expiry its write stamped.
pub fn expiry_intact(
    at: &RegionId,
    key: &[u8],
    reg: &atoll_core::crdt::lww::LwwRegister,
    history: &History,
) -> Result<(), Violation> {
    let Some(w) = history.lww_write(key, &reg.origin, reg.ts) else {
        // Only acknowledged writes are in the history; a value no acknowledged write wrote is
        // invariant 2's business.
        return Ok(());
    };
    if w.expires_ms != reg.expires_ms || w.value != reg.value {
        return Err(Violation::new(
            Invariant::Expiry,
            format!(
                "{at} holds {} = {} (origin {}, ts {}) expiring {:?}, but its write stamped {} expiring {:?}",
                k(SESSIONS, key),
                show(&reg.value),
                reg.origin,
                reg.ts,
                reg.expires_ms,
                show(&w.value),
                w.expires_ms
            ),
        ));
    }
    Ok(())
}

/// Invariant 12, second half: region `at`, whose clock read `local_ms`, collected the expired
/// value of `key` written by `origin` at `ts`: the write must be acknowledged and expiring, its
/// expiry passed by `local_ms`, and every region must have applied it.
pub fn expired_collection(
    at: &RegionId,
    key: &[u8],
    origin: &RegionId,
    ts: Timestamp,
    local_ms: u64,
    history: &History,
    cursors: &[CursorAt],
) -> Result<(), Violation> {
    let bad = |d: String| Err(Violation::new(Invariant::Expiry, d));
    let Some(w) = history.lww_write(key, origin, ts) else {
        return bad(format!(
            "{at} collected the value of {} (origin {origin}, ts {ts}) that no acknowledged write wrote",
            k(SESSIONS, key)
        ));
    };
    let Some(e) = w.expires_ms else {
        return bad(format!(
            "{at} collected the value of {} written by {origin}:{} that never expires",
            k(SESSIONS, key),
            w.seq
        ));
    };
    if local_ms < e {
        return bad(format!(
            "{at} collected the value of {} ({origin}:{}) expiring at {e} while its clock read {local_ms}: it still read as live there",
            k(SESSIONS, key),
            w.seq
        ));
    }
    for c in cursors {
        if c.applied.get(origin) < w.seq {
            return bad(format!(
                "{at} collected the expired value of {} ({origin}:{} expiring {e}) but {} ({}) had applied {origin} only up to {}",
                k(SESSIONS, key),
                w.seq,
                c.region,
                if c.up { "up" } else { "crashed" },
                c.applied.get(origin)
            ));
        }
    }
    Ok(())
}

/// Invariant 12 for mvr, first half: every sibling with a value that region `at` holds for `key`
/// carries the expiry its write stamped.
pub fn mvr_expiry_intact(
    at: &RegionId,
    key: &[u8],
    reg: &atoll_core::crdt::mvr::MvRegister,
    history: &History,
) -> Result<(), Violation> {
    for s in reg.siblings.iter().filter(|s| s.value.is_some()) {
        let Some(w) = history.mvr.iter().find(|w| w.key == key && w.dot == s.dot) else {
            continue;
        };
        if w.expires_ms != s.expires_ms {
            return Err(Violation::new(
                Invariant::Expiry,
                format!(
                    "{at} holds sibling {} of {} expiring {:?}, but its write ({}:{}) stamped {:?}",
                    s.dot,
                    k(CARTS, key),
                    s.expires_ms,
                    w.origin,
                    w.seq,
                    w.expires_ms
                ),
            ));
        }
    }
    Ok(())
}

/// Invariant 12 for mvr, second half: region `at`, whose clock read `local_ms`, collected the
/// sibling `dot` of `key`: its write must be acknowledged and expiring, its expiry passed by
/// `local_ms`, and every region must have applied it.
pub fn expired_sibling_collection(
    at: &RegionId,
    key: &[u8],
    dot: &Dot,
    local_ms: u64,
    history: &History,
    cursors: &[CursorAt],
) -> Result<(), Violation> {
    let bad = |d: String| Err(Violation::new(Invariant::Expiry, d));
    let Some(w) = history.mvr.iter().find(|w| w.key == key && &w.dot == dot) else {
        return bad(format!(
            "{at} collected sibling {dot} of {} that no acknowledged write wrote",
            k(CARTS, key)
        ));
    };
    let Some(e) = w.expires_ms else {
        return bad(format!(
            "{at} collected sibling {dot} of {} ({}:{}) that never expires",
            k(CARTS, key),
            w.origin,
            w.seq
        ));
    };
    if local_ms < e {
        return bad(format!(
            "{at} collected sibling {dot} of {} expiring at {e} while its clock read {local_ms}: it still read as live there",
            k(CARTS, key)
        ));
    }
    for c in cursors {
        if c.applied.get(&w.origin) < w.seq {
            return bad(format!(
                "{at} collected the expired sibling {dot} of {} ({}:{}) but {} ({}) had applied {} only up to {}",
                k(CARTS, key),
                w.origin,
                w.seq,
                c.region,
                if c.up { "up" } else { "crashed" },
                w.origin,
                c.applied.get(&w.origin)
            ));
        }
    }
    Ok(())
}

/// Invariant 6, first half: `region`, whose clock read `local_ms`, applied `entry`.
pub fn apply_within_clock_bound(
    region: &RegionId,
    entry: &OpEntry,
    local_ms: u64,
    max_clock_offset_ms: u64,
) -> Result<(), Violation> {
    if entry.ts.wall_ms > local_ms.saturating_add(max_clock_offset_ms) {
        return Err(Violation::new(
            Invariant::ClockSkew,
            format!(
                "{region} applied {}:{} with timestamp {}, {} ms ahead of its clock ({local_ms}), \
                 beyond max_clock_offset {max_clock_offset_ms} ms",
                entry.origin,
                entry.seq,
                entry.ts,
                entry.ts.wall_ms - local_ms
            ),
        ));
    }
    Ok(())
}

/// Invariant 6, second half: every write accepted while its region's clock ran ahead reached
/// every region once the clock was back.
pub fn skewed_writes_converged(views: &[RegionView], history: &History) -> Result<(), Violation> {
    for (origin, seq) in &history.skewed_writes {
        for v in views {
            if v.applied.get(origin) < *seq {
                return Err(Violation::new(
                    Invariant::ClockSkew,
                    format!(
                        "write {origin}:{seq}, accepted while {origin}'s clock ran ahead, never reached \
                         {} (applied {origin} up to {})",
                        v.region,
                        v.applied.get(origin)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What one region's fence said at one instant (fenced runs, leased topologies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permit {
    pub region: RegionId,
    pub epoch: u64,
    /// The region's monotonic clock and the end of its window on it.
    pub mono_ms: u64,
    pub window_until_ms: u64,
}

/// Invariant 7, sampled: at true time `at_ms`, these regions' fences would let a write through.
pub fn one_writer_at_a_time(at_ms: u64, permits: &[Permit]) -> Result<(), Violation> {
    if permits.len() <= 1 {
        return Ok(());
    }
    let who: Vec<String> = permits
        .iter()
        .map(|p| {
            format!(
                "{} (epoch {}, its clock {} ms, window until {} ms)",
                p.region, p.epoch, p.mono_ms, p.window_until_ms
            )
        })
        .collect();
    Err(Violation::new(
        Invariant::WriteWindows,
        format!(
            "at true time {at_ms} ms {} regions hold a write window at once: {}",
            permits.len(),
            who.join(", ")
        ),
    ))
}

/// Invariant 7 on the acknowledged writes: ordered by stamping instant, the epochs never go
/// back, an epoch is written by one region only, and a later epoch's first write comes strictly
/// after the previous epoch's last write at another region. Returns the smallest such gap.
pub fn epochs_in_order(stamps: &[Stamp]) -> Result<Option<u64>, Violation> {
    let mut cur: Option<&Stamp> = None;
    let mut last_of_cur: Option<&Stamp> = None;
    let mut min_gap: Option<u64> = None;
    let fail = |d: String| Err(Violation::new(Invariant::WriteWindows, d));
    for s in stamps {
        if s.epoch == 0 {
            return fail(format!(
                "write {}:{} ({}) at {} ms was stamped with epoch 0 under a lease",
                s.region, s.seq, s.keyspace, s.at_ms
            ));
        }
        let (Some(c), Some(last)) = (cur, last_of_cur) else {
            cur = Some(s);
            last_of_cur = Some(s);
            continue;
        };
        if s.epoch < c.epoch {
            return fail(format!(
                "write {}:{} of epoch {} at {} ms comes after {}:{} of epoch {} at {} ms: two \
                 epochs' acknowledged writes interleave",
                s.region, s.seq, s.epoch, s.at_ms, last.region, last.seq, last.epoch, last.at_ms
            ));
        }
        if s.epoch == c.epoch {
            if s.region != c.region {
                return fail(format!(
                    "epoch {} was written by {} ({}:{} at {} ms) and by {} ({}:{} at {} ms)",
                    s.epoch, c.region, c.region, c.seq, c.at_ms, s.region, s.region, s.seq, s.at_ms
                ));
            }
            last_of_cur = Some(s);
            continue;
        }
        if s.region != last.region {
            if s.at_ms <= last.at_ms {
                return fail(format!(
                    "{}:{} of epoch {} and {}:{} of epoch {} were both stamped at {} ms",
                    last.region, last.seq, last.epoch, s.region, s.seq, s.epoch, s.at_ms
                ));
            }
            let gap = s.at_ms - last.at_ms;
            min_gap = Some(min_gap.map_or(gap, |g| g.min(gap)));
        }
        cur = Some(s);
        last_of_cur = Some(s);
    }
    Ok(min_gap)
}

/// Invariant 7, active-active with quorum fencing: `region` wrote (or could write) the
/// `read-only` keyspace `keyspace` at `at_ms`; its newest presence that reached a majority was
/// sent at `presence_sent_ms` (true time). A quorum window lasts at most `max_window_ms` of true
/// time after its presence was sent.
pub fn read_only_within_quorum_window(
    region: &RegionId,
    keyspace: &str,
    at_ms: u64,
    presence_sent_ms: Option<u64>,
    max_window_ms: u64,
) -> Result<(), Violation> {
    match presence_sent_ms {
        Some(s) if at_ms < s + max_window_ms => Ok(()),
        _ => Err(Violation::new(
            Invariant::WriteWindows,
            format!(
                "{region} accepted a write to read-only keyspace `{keyspace}` at {at_ms} ms, but its \
                 newest presence that reached a majority was {}: it was in a minority and its \
                 quorum window (at most {max_window_ms} ms) had ended",
                presence_sent_ms.map_or("never".to_string(), |s| format!("sent at {s} ms"))
            ),
        )),
    }
}

/// Invariant 8: `at` refused the replicated write `origin:seq` of epoch `epoch` (stamped at
/// `ts_ms`) as late. Only a forced promotion over that epoch may explain it.
pub fn late_write(
    at: &RegionId,
    origin: &RegionId,
    seq: u64,
    epoch: u64,
    ts_ms: u64,
    fence_ts_ms: Option<u64>,
    forced_over: bool,
) -> Result<(), Violation> {
    if forced_over {
        return Ok(());
    }
    Err(Violation::new(
        Invariant::LateWrites,
        format!(
            "{at} refused the acknowledged write {origin}:{seq} of epoch {epoch} (HLC {ts_ms}) as \
             stamped after the supersession (fence of epoch {}: {}), and no forced promotion \
             explains it: the write was acknowledged outside a valid lease, or is_late is wrong",
            epoch + 1,
            fence_ts_ms.map_or("unknown".to_string(), |f| f.to_string())
        ),
    ))
}

/// Invariant 9: a committed promotion reported no more exposure than the writes its region
/// really lacked when it proposed (the view may lag behind the old holder, never run ahead of
/// it), and `atoll promote` without `--accept-data-loss` reported none.
pub fn promotion_exposure(p: &Promotion) -> Result<(), Violation> {
    if p.reported_ops > p.missing_ops_at_send {
        return Err(Violation::new(
            Invariant::PromotionExposure,
            format!(
                "{} was promoted (epoch {}) reporting an exposure of {} ops of {:?}, but it lacked \
                 only {} of them when it proposed",
                p.region, p.epoch, p.reported_ops, p.previous, p.missing_ops_at_send
            ),
        ));
    }
    if p.manual && !p.accept_data_loss && (p.reported_ops > 0 || p.reported_ms > 0) {
        return Err(Violation::new(
            Invariant::PromotionExposure,
            format!(
                "{} was promoted (epoch {}) without --accept-data-loss although it reported {} ops \
                 ({} ms) of exposure",
                p.region, p.epoch, p.reported_ops, p.reported_ms
            ),
        ));
    }
    Ok(())
}

/// Invariant 9: the lease moved from `from` to `to` by a switchover that stopped `from` at its
/// head `head`; when the transfer committed, `to` had applied `to_applied` of `from`'s writes.
pub fn switchover_lost_nothing(
    from: &RegionId,
    to: &RegionId,
    head: u64,
    from_head_now: u64,
    to_applied: u64,
) -> Result<(), Violation> {
    if to_applied < head || from_head_now > head {
        return Err(Violation::new(
            Invariant::PromotionExposure,
            format!(
                "switchover {from} -> {to}: {from} stopped at head {head} (now {from_head_now}) \
                 but {to} had applied only {to_applied} of its writes when the lease moved"
            ),
        ));
    }
    Ok(())
}

/// An lww state a session client wrote or read: its version in the lww order, and where and when
/// the client wrote or read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSeen {
    pub ts: Timestamp,
    pub origin: RegionId,
    /// A tombstone (an lww delete).
    pub deleted: bool,
    /// The region the client wrote it at or read it from.
    pub at: RegionId,
    /// Virtual time of the write or read.
    pub at_ms: u64,
}

impl SessionSeen {
    /// Its place in the lww order (timestamp, then origin; two writes never share both).
    pub fn version(&self) -> (Timestamp, &RegionId) {
        (self.ts, &self.origin)
    }
}

impl fmt::Display for SessionSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ts {} origin {} (at {}, virtual {} ms)",
            if self.deleted { "tombstone" } else { "value" },
            self.ts,
            self.origin,
            self.at,
            self.at_ms
        )
    }
}

/// A session read of the lww key `key` that the token check served, with what the client
/// required of it.
#[derive(Clone, Debug)]
pub struct SessionReadCase<'a> {
    pub client: usize,
    /// Where it was served.
    pub region: &'a RegionId,
    pub key: &'a [u8],
    /// The state read (`None`: absent).
    pub state: Option<&'a KeyState>,
    /// The client's newest acknowledged write of the key.
    pub wrote: Option<&'a SessionSeen>,
    /// The newest state of the key the client read before.
    pub read: Option<&'a SessionSeen>,
    /// The token the read presented.
    pub token: &'a SessionToken,
    /// The serving region's committed applied vector at the read.
    pub applied: &'a VersionVector,
}

/// Invariant 10: a served session read reflects the client's own newest write of its key
/// (read-your-writes) and the newest state of it the client read before (monotonic reads). A
/// newer state (another writer's) is fine. An absent key is a tombstone the region collected: it
/// passes only if the region has applied an acknowledged delete of the key at least as new as
/// both (collection itself is invariant 5's business).
pub fn session_read(case: &SessionReadCase<'_>, history: &History) -> Result<(), Violation> {
    let SessionReadCase {
        client,
        region,
        key,
        state,
        wrote,
        read,
        token,
        applied,
    } = case;
    let rules = [
        (wrote, "read-your-writes: its own newest write"),
        (read, "monotonic reads: the newest state it read before"),
    ];
    let miss = |found: String, rule: &str, floor: &SessionSeen| {
        Err(Violation::new(
            Invariant::SessionGuarantees,
            format!(
                "session client {client} read {} at {region} with token {} and got {found}, older \
                 than what it had to reflect ({rule}: {floor}); {region} had applied {applied}",
                k(SESSIONS, key),
                token.seen(),
            ),
        ))
    };
    match state {
        Some(KeyState::Lww(r)) => {
            for (floor, rule) in rules {
                if let Some(f) = floor
                    && (r.ts, &r.origin) < f.version()
                {
                    return miss(
                        format!(
                            "{} ts {} origin {}",
                            if r.value.is_some() {
                                "a value"
                            } else {
                                "a tombstone"
                            },
                            r.ts,
                            r.origin
                        ),
                        rule,
                        f,
                    );
                }
            }
            Ok(())
        }
        Some(other) => Err(Violation::new(
            Invariant::SessionGuarantees,
            format!(
                "session client {client} read {} at {region} and got a {} state",
                k(SESSIONS, key),
                other.policy()
            ),
        )),
        None => {
            for (floor, rule) in rules {
                let Some(f) = floor else { continue };
                // A tombstone, or an expiring value, at least as new that the region applied may
                // have been collected.
                let collected = history.lww.iter().any(|w| {
                    w.key == *key
                        && (w.value.is_none() || w.expires_ms.is_some())
                        && (w.ts, &w.origin) >= f.version()
                        && applied.get(&w.origin) >= w.seq
                });
                if !collected {
                    return miss(
                        "nothing (absent, and it applied no delete of the key at least as new)"
                            .into(),
                        rule,
                        f,
                    );
                }
            }
            Ok(())
        }
    }
}

/// Invariant 10: the token check never judges a token the client genuinely holds forged
/// (`Impossible`: it names a write its origin never made). `peers` is what the region knew of
/// its peers for the read, which arrived at its clock's `asked_at_ms`; `clock_high_ms` is the
/// highest reading its clock showed before its latest step back.
pub fn session_verdict(
    client: usize,
    region: &RegionId,
    token: &SessionToken,
    decision: &SessionCheck,
    asked_at_ms: u64,
    clock_high_ms: u64,
    peers: &[PeerSession],
) -> Result<(), Violation> {
    let SessionCheck::Impossible {
        origin,
        claimed,
        head,
    } = decision
    else {
        return Ok(());
    };
    let about = peers.iter().find(|p| &p.region == origin).map_or(
        "(no peer entry: the claim is about its own writes)".to_string(),
        |p| {
            format!(
                "(its view of {origin}: head_max {}, heard_since {}, applied {})",
                p.head_max, p.heard_since, p.applied
            )
        },
    );
    let stepped = if asked_at_ms < clock_high_ms {
        format!(
            "; its clock had read {clock_high_ms} ms before it stepped back, so echoes of heartbeats \
             it sent before the step look sent after the read arrived"
        )
    } else {
        String::new()
    };
    Err(Violation::new(
        Invariant::SessionGuarantees,
        format!(
            "{region} judged the genuine token {} of session client {client} forged (a read that \
             arrived at its clock's {asked_at_ms} ms): write {claimed} of {origin}, which it \
             believes made only {head} {about}{stepped}",
            token.seen()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_core::crdt::lww::LwwRegister;

    fn r(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    fn ts(ms: u64) -> Timestamp {
        Timestamp {
            wall_ms: ms,
            logical: 0,
        }
    }

    fn seen(ms: u64, origin: &str, deleted: bool) -> SessionSeen {
        SessionSeen {
            ts: ts(ms),
            origin: r(origin),
            deleted,
            at: r(origin),
            at_ms: 0,
        }
    }

    fn lww(ms: u64, origin: &str, value: Option<&str>) -> KeyState {
        KeyState::Lww(LwwRegister {
            value: value.map(|v| v.as_bytes().to_vec()),
            ts: ts(ms),
            origin: r(origin),
            vv: VersionVector::new(),
            expires_ms: None,
        })
    }

    fn delete(ms: u64, origin: &str, seq: u64) -> LwwWrite {
        LwwWrite {
            key: b"k".to_vec(),
            origin: r(origin),
            seq,
            ts: ts(ms),
            value: None,
            expires_ms: None,
            seen: VersionVector::new(),
            at_ms: 0,
        }
    }

    fn case<'a>(
        state: Option<&'a KeyState>,
        wrote: Option<&'a SessionSeen>,
        read: Option<&'a SessionSeen>,
        applied: &'a VersionVector,
        token: &'a SessionToken,
        region: &'a RegionId,
    ) -> SessionReadCase<'a> {
        SessionReadCase {
            client: 1,
            region,
            key: b"k",
            state,
            wrote,
            read,
            token,
            applied,
        }
    }

    #[test]
    fn session_read_catches_each_miss() {
        let at = r("eu");
        let token = SessionToken::new();
        let applied = VersionVector::new();
        let history = History::default();
        let mine = seen(100, "us", false);
        let before = seen(200, "ap", true);
        let check = |state: Option<&KeyState>, wrote, read| {
            session_read(&case(state, wrote, read, &applied, &token, &at), &history)
        };
        // Newer than both, or exactly them: fine.
        assert!(check(Some(&lww(300, "eu", Some("x"))), Some(&mine), Some(&before)).is_ok());
        assert!(check(Some(&lww(100, "us", Some("x"))), Some(&mine), None).is_ok());
        assert!(check(Some(&lww(200, "ap", None)), Some(&mine), Some(&before)).is_ok());
        // Older than the client's own write.
        let v = check(Some(&lww(99, "zz", Some("x"))), Some(&mine), None).unwrap_err();
        assert_eq!(v.invariant, Invariant::SessionGuarantees);
        assert!(v.detail.contains("read-your-writes"), "{v}");
        // Same timestamp, lower origin: an older version in the lww order.
        let v = check(Some(&lww(100, "eu", Some("x"))), Some(&mine), None).unwrap_err();
        assert!(v.detail.contains("read-your-writes"), "{v}");
        // Older than what it read before (a tombstone counts).
        let v = check(Some(&lww(150, "us", Some("x"))), Some(&mine), Some(&before)).unwrap_err();
        assert!(v.detail.contains("monotonic reads"), "{v}");
        // Absent without an applied delete: a miss; nothing required: fine.
        let v = check(None, Some(&mine), None).unwrap_err();
        assert!(v.detail.contains("absent"), "{v}");
        assert!(check(None, None, None).is_ok());
    }

    #[test]
    fn an_absent_key_passes_only_with_a_new_enough_applied_delete() {
        let at = r("eu");
        let token = SessionToken::new();
        let mine = seen(100, "us", false);
        let mut history = History::default();
        history.lww.push(delete(90, "ap", 3));
        history.lww.push(delete(150, "ap", 7));
        let mut applied: VersionVector = [(r("ap"), 6)].into_iter().collect();
        let check = |applied: &VersionVector| {
            session_read(
                &case(None, Some(&mine), None, applied, &token, &at),
                &history,
            )
        };
        // Only the older delete is applied.
        assert!(check(&applied).is_err());
        applied.raise(&r("ap"), 7);
        assert!(check(&applied).is_ok());
    }

    #[test]
    fn session_verdict_fails_only_on_impossible() {
        let at = r("eu");
        let token = SessionToken::new();
        assert!(session_verdict(1, &at, &token, &SessionCheck::Satisfied, 5, 0, &[]).is_ok());
        let behind = SessionCheck::Behind {
            behind: vec![],
            holders: vec![],
        };
        assert!(session_verdict(1, &at, &token, &behind, 5, 0, &[]).is_ok());
        let impossible = SessionCheck::Impossible {
            origin: r("us"),
            claimed: 9,
            head: 4,
        };
        let v = session_verdict(1, &at, &token, &impossible, 5, 0, &[]).unwrap_err();
        assert_eq!(v.invariant, Invariant::SessionGuarantees);
        assert!(v.detail.contains("forged"), "{v}");
        assert!(!v.detail.contains("stepped back"), "{v}");
        let v = session_verdict(1, &at, &token, &impossible, 5, 9, &[]).unwrap_err();
        assert!(v.detail.contains("stepped back"), "{v}");
    }
}
