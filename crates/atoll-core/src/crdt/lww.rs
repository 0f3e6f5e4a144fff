//! Last-writer-wins register with causal conflict detection.
//!
//! The value with the greatest `(timestamp, origin region)` wins. Each state also carries a
//! version vector of the writes it has seen, so a merge can tell a causal overwrite (the writer had
//! seen the old value) from a concurrent one (a value was lost without its writer seeing it): the
//! latter is reported as an [`LwwConflict`] for the conflict ledger.

use super::Crdt;
use crate::causal::VersionVector;
use crate::hlc::Timestamp;
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// The state of an LWW key (and the delta of one write to it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister {
    /// The winning value; `None` is a delete tombstone.
    pub value: Option<Vec<u8>>,
    /// HLC timestamp of the winning write.
    pub ts: Timestamp,
    /// Region that accepted the winning write.
    pub origin: RegionId,
    /// Per region, how many writes to this key this state has seen.
    pub vv: VersionVector,
    /// When the winning value expires: milliseconds since the Unix epoch, on the clock of the
    /// winning write's HLC (its `ts.wall_ms` plus the write's time to live); `None` never
    /// expires. Part of the version: it replicates and merges with the value
    /// (`docs/design/expiring-keys.md`). Added in encoding version 3.
    pub expires_ms: Option<u64>,
}

/// One written version of an LWW key, as reported in a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwVersion {
    /// The value; `None` is a delete.
    pub value: Option<Vec<u8>>,
    /// HLC timestamp of the write.
    pub ts: Timestamp,
    /// Region that accepted the write.
    pub origin: RegionId,
}

/// Why the winner of a conflict won.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictReason {
    /// The winner has the greater timestamp.
    HigherTimestamp,
    /// Equal timestamps: the greater region name won.
    RegionTiebreak,
}

impl ConflictReason {
    /// `higher-timestamp` or `region-tiebreak`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictReason::HigherTimestamp => "higher-timestamp",
            ConflictReason::RegionTiebreak => "region-tiebreak",
        }
    }
}

impl std::fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Two concurrent writes, one of which overwrote the other without its writer having seen it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwConflict {
    /// The version that is kept.
    pub winner: LwwVersion,
    /// The version that was overwritten.
    pub loser: LwwVersion,
    /// Why the winner won.
    pub reason: ConflictReason,
}

impl LwwRegister {
    /// A write of `value` (`None` deletes) at `region` with timestamp `ts`, given the key's current
    /// state. Returns the new state, which is also the delta to replicate: it carries the current
    /// version vector with `region`'s count incremented, so peers can tell it causally follows
    /// every write `current` had seen.
    pub fn write(
        current: Option<&LwwRegister>,
        region: &RegionId,
        ts: Timestamp,
        value: Option<Vec<u8>>,
    ) -> LwwRegister {
        let mut vv = current.map(|c| c.vv.clone()).unwrap_or_default();
        vv.increment(region);
        LwwRegister {
            value,
            ts,
            origin: region.clone(),
            vv,
            expires_ms: None,
        }
    }

    /// `self` with the winning value expiring at `expires_ms` (`None`: never). A tombstone never
    /// expires (there is nothing to hide), so its expiry is always `None`.
    pub fn expiring(mut self, expires_ms: Option<u64>) -> LwwRegister {
        self.expires_ms = if self.value.is_some() {
            expires_ms
        } else {
            None
        };
        self
    }

    /// Whether the winning value has expired when the reading region's physical clock reads
    /// `now_ms` (`docs/design/expiring-keys.md`: never judged by an HLC).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }

    /// The value a read sees at physical time `now_ms`: `None` for a tombstone or an expired
    /// value.
    pub fn live_value(&self, now_ms: u64) -> Option<&Vec<u8>> {
        if self.expired(now_ms) {
            None
        } else {
            self.value.as_ref()
        }
    }

    /// The winning version (without the version vector).
    pub fn version(&self) -> LwwVersion {
        LwwVersion {
            value: self.value.clone(),
            ts: self.ts,
            origin: self.origin.clone(),
        }
    }

    /// Whether the winning value is a delete tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Total order on versions: timestamp, then origin, then value, then expiry (so that merge is
    /// a join even for two different versions carrying the same timestamp and origin).
    fn cmp_version(&self, other: &LwwRegister) -> Ordering {
        (self.ts, &self.origin, &self.value, self.expires_ms).cmp(&(
            other.ts,
            &other.origin,
            &other.value,
            other.expires_ms,
        ))
    }

    /// Like [`Crdt::merge`], and returns the conflict it resolved, if the two states were
    /// concurrent (neither version vector dominates the other) and had different winning versions.
    /// Nothing is reported when one state causally follows the other or they are identical.
    pub fn merge_report(&mut self, other: &LwwRegister) -> Option<LwwConflict> {
        let order = self.cmp_version(other);
        let conflict = if order != Ordering::Equal && self.vv.concurrent(&other.vv) {
            let (winner, loser) = if order == Ordering::Greater {
                (self.version(), other.version())
            } else {
                (other.version(), self.version())
            };
            let reason = if winner.ts != loser.ts {
                ConflictReason::HigherTimestamp
            } else {
                // Equal timestamps: decided by region (or, for the degenerate same-region case,
                // by value, which is still a deterministic tiebreak).
                ConflictReason::RegionTiebreak
            };
            Some(LwwConflict {
                winner,
                loser,
                reason,
            })
        } else {
            None
        };
        if order == Ordering::Less {
            self.value.clone_from(&other.value);
            self.ts = other.ts;
            self.origin = other.origin.clone();
            self.expires_ms = other.expires_ms;
        }
        self.vv.merge(&other.vv);
        conflict
    }
}

impl Crdt for LwwRegister {
    fn merge(&mut self, other: &Self) {
        let _ = self.merge_report(other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RegionId {
        RegionId::new(name).unwrap()
    }

    fn ts(w: u64) -> Timestamp {
        Timestamp::new(w, 0)
    }

    #[test]
    fn write_increments_own_region() {
        let a = r("a");
        let w1 = LwwRegister::write(None, &a, ts(1), Some(b"x".to_vec()));
        assert_eq!(w1.vv.get(&a), 1);
        let w2 = LwwRegister::write(Some(&w1), &a, ts(2), None);
        assert_eq!(w2.vv.get(&a), 2);
        assert!(w2.is_tombstone());
        assert_eq!(w2.origin, a);
    }

    #[test]
    fn causal_overwrite_is_not_a_conflict() {
        let (a, b) = (r("a"), r("b"));
        let w1 = LwwRegister::write(None, &a, ts(10), Some(b"1".to_vec()));
        // b has seen w1 and overwrites it.
        let w2 = LwwRegister::write(Some(&w1), &b, ts(20), Some(b"2".to_vec()));
        let mut at_a = w1.clone();
        assert_eq!(at_a.merge_report(&w2), None);
        assert_eq!(at_a.value.as_deref(), Some(&b"2"[..]));
        // The stale delta arriving later is not a conflict either, and changes nothing.
        let before = at_a.clone();
        assert_eq!(at_a.merge_report(&w1), None);
        assert_eq!(at_a, before);
        // Identical states.
        assert_eq!(at_a.merge_report(&before), None);
    }

    #[test]
    fn concurrent_writes_are_reported() {
        let (a, b) = (r("a"), r("b"));
        let wa = LwwRegister::write(None, &a, ts(10), Some(b"a".to_vec()));
        let wb = LwwRegister::write(None, &b, ts(20), Some(b"b".to_vec()));
        let mut x = wa.clone();
        let c = x.merge_report(&wb).unwrap();
        assert_eq!(c.winner, wb.version());
        assert_eq!(c.loser, wa.version());
        assert_eq!(c.reason, ConflictReason::HigherTimestamp);
        let mut y = wb.clone();
        let c2 = y.merge_report(&wa).unwrap();
        assert_eq!(c2, c);
        assert_eq!(x, y);
        assert_eq!(x.vv.get(&a), 1);
        assert_eq!(x.vv.get(&b), 1);
        // After both are merged, a write that saw both is not a conflict.
        let w3 = LwwRegister::write(Some(&x), &a, ts(5), Some(b"c".to_vec()));
        let mut z = y.clone();
        assert_eq!(z.merge_report(&w3), None);
    }

    #[test]
    fn equal_timestamps_break_ties_by_region() {
        let (a, b) = (r("a"), r("b"));
        let wa = LwwRegister::write(None, &a, ts(10), Some(b"a".to_vec()));
        let wb = LwwRegister::write(None, &b, ts(10), None);
        let mut x = wa.clone();
        let c = x.merge_report(&wb).unwrap();
        assert_eq!(c.reason, ConflictReason::RegionTiebreak);
        assert_eq!(c.reason.as_str(), "region-tiebreak");
        assert_eq!(ConflictReason::HigherTimestamp.as_str(), "higher-timestamp");
        assert_eq!(c.winner.origin, b);
        assert!(x.is_tombstone());
    }

    #[test]
    fn merge_is_a_lattice_even_for_odd_inputs() {
        let a = r("a");
        // Same timestamp and origin, different values (cannot happen with a correct HLC).
        let x = LwwRegister::write(None, &a, ts(1), Some(b"x".to_vec()));
        let y = LwwRegister::write(None, &a, ts(1), Some(b"y".to_vec()));
        assert_eq!(x.clone().merged(&y), y.clone().merged(&x));
        assert_eq!(x.clone().merged(&x), x);
    }

    #[test]
    fn reason_roundtrips_and_displays() {
        let bytes = postcard::to_allocvec(&ConflictReason::RegionTiebreak).unwrap();
        let back: ConflictReason = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ConflictReason::RegionTiebreak);
        assert_eq!(
            ConflictReason::HigherTimestamp.to_string(),
            "higher-timestamp"
        );
    }
}
