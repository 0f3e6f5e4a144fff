//! PN-counter: per region, the total of its increments (`p`) and of its decrements (`n`).

use super::Crdt;
use crate::error::{AtollError, Result};
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The state of a counter key (and the delta of one add to it). Zero totals are never stored, so
/// equality is semantic equality.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PnCounterRepr")]
pub struct PnCounter {
    p: BTreeMap<RegionId, u64>,
    n: BTreeMap<RegionId, u64>,
}

#[derive(Deserialize)]
struct PnCounterRepr {
    p: BTreeMap<RegionId, u64>,
    n: BTreeMap<RegionId, u64>,
}

impl From<PnCounterRepr> for PnCounter {
    fn from(mut repr: PnCounterRepr) -> Self {
        repr.p.retain(|_, v| *v > 0);
        repr.n.retain(|_, v| *v > 0);
        PnCounter {
            p: repr.p,
            n: repr.n,
        }
    }
}

fn max_into(into: &mut BTreeMap<RegionId, u64>, from: &BTreeMap<RegionId, u64>) {
    for (region, &v) in from {
        if v > into.get(region).copied().unwrap_or(0) {
            into.insert(region.clone(), v);
        }
    }
}

fn sum(map: &BTreeMap<RegionId, u64>) -> i128 {
    map.values()
        .fold(0i128, |acc, &v| acc.saturating_add(i128::from(v)))
}

impl PnCounter {
    /// Adds `delta` (may be negative or zero) at `region`. Returns the delta state: `region`'s new
    /// totals only. Fails with [`AtollError::CounterOverflow`] if `region`'s increment or decrement
    /// total would overflow `u64`, or the counter's value would leave `i64`'s range.
    pub fn add(current: Option<&PnCounter>, region: &RegionId, delta: i64) -> Result<PnCounter> {
        let (p, n, value) = match current {
            Some(c) => (c.p(region), c.n(region), c.value()),
            None => (0, 0, 0),
        };
        let overflow = || {
            AtollError::CounterOverflow(format!(
                "adding {delta} to a counter at {value} in region {region}"
            ))
        };
        let (p, n) = if delta >= 0 {
            (p.checked_add(delta.unsigned_abs()).ok_or_else(overflow)?, n)
        } else {
            (p, n.checked_add(delta.unsigned_abs()).ok_or_else(overflow)?)
        };
        let result = value.saturating_add(i128::from(delta));
        if i64::try_from(result).is_err() {
            return Err(overflow());
        }
        let mut out = PnCounter::default();
        if p > 0 {
            out.p.insert(region.clone(), p);
        }
        if n > 0 {
            out.n.insert(region.clone(), n);
        }
        Ok(out)
    }

    /// The counter's value: all increments minus all decrements. `i128`, because concurrent adds
    /// from several regions may together leave `i64`'s range.
    pub fn value(&self) -> i128 {
        sum(&self.p).saturating_sub(sum(&self.n))
    }

    /// Total of `region`'s increments.
    pub fn p(&self, region: &RegionId) -> u64 {
        self.p.get(region).copied().unwrap_or(0)
    }

    /// Total of `region`'s decrements.
    pub fn n(&self, region: &RegionId) -> u64 {
        self.n.get(region).copied().unwrap_or(0)
    }

    /// Per region, `(increments, decrements)`, in region order.
    pub fn per_region(&self) -> BTreeMap<&RegionId, (u64, u64)> {
        let mut out: BTreeMap<&RegionId, (u64, u64)> = BTreeMap::new();
        for (r, &v) in &self.p {
            out.entry(r).or_default().0 = v;
        }
        for (r, &v) in &self.n {
            out.entry(r).or_default().1 = v;
        }
        out
    }

    /// Whether no region has added anything (non-zero).
    pub fn is_empty(&self) -> bool {
        self.p.is_empty() && self.n.is_empty()
    }
}

impl Crdt for PnCounter {
    /// Pointwise maximum of the increment and decrement totals.
    fn merge(&mut self, other: &Self) {
        max_into(&mut self.p, &other.p);
        max_into(&mut self.n, &other.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RegionId {
        RegionId::new(name).unwrap()
    }

    fn add(c: &mut PnCounter, region: &RegionId, delta: i64) -> Result<PnCounter> {
        let d = PnCounter::add(Some(c), region, delta)?;
        c.merge(&d);
        Ok(d)
    }

    #[test]
    fn adds_and_merges() {
        let (a, b) = (r("a"), r("b"));
        let mut ca = PnCounter::default();
        let mut cb = PnCounter::default();
        let d1 = add(&mut ca, &a, 5).unwrap();
        let d2 = add(&mut ca, &a, -2).unwrap();
        let d3 = add(&mut cb, &b, 10).unwrap();
        assert_eq!(ca.value(), 3);
        // A delta holds only the region's new totals.
        assert_eq!(d2.p(&a), 5);
        assert_eq!(d2.n(&a), 2);
        assert_eq!(d3.per_region().len(), 1);
        // Out of order and duplicated delivery.
        for d in [&d2, &d1, &d2] {
            cb.merge(d);
        }
        ca.merge(&d3);
        assert_eq!(ca, cb);
        assert_eq!(ca.value(), 13);
        assert_eq!(ca.per_region().get(&a), Some(&(5, 2)));
    }

    #[test]
    fn zero_delta_returns_current_totals() {
        let a = r("a");
        assert!(PnCounter::add(None, &a, 0).unwrap().is_empty());
        let mut c = PnCounter::default();
        add(&mut c, &a, 4).unwrap();
        let d = PnCounter::add(Some(&c), &a, 0).unwrap();
        assert_eq!(d, c);
    }

    #[test]
    fn overflow_is_rejected() {
        let (a, b) = (r("a"), r("b"));
        let mut c = PnCounter::default();
        add(&mut c, &a, i64::MAX).unwrap();
        let err = PnCounter::add(Some(&c), &a, 1).unwrap_err();
        assert_eq!(err.code(), "ATOLL-COUNTER-OVERFLOW");
        // Value at i64::MIN is fine, one below is not.
        let mut d = PnCounter::default();
        add(&mut d, &a, i64::MIN).unwrap();
        assert_eq!(d.value(), i128::from(i64::MIN));
        assert!(PnCounter::add(Some(&d), &b, -1).is_err());
        // Per-region u64 total overflow even though the value stays in range.
        let mut e = PnCounter::default();
        for _ in 0..2 {
            add(&mut e, &a, i64::MAX).unwrap();
            add(&mut e, &a, i64::MIN + 1).unwrap();
        }
        assert_eq!(e.value(), 0);
        assert_eq!(e.p(&a), u64::MAX - 1);
        assert!(PnCounter::add(Some(&e), &a, 2).is_err());
        assert!(PnCounter::add(Some(&e), &a, 1).is_ok());
        // A failed add changes nothing.
        assert_eq!(e.value(), 0);
    }

    #[test]
    fn decoding_drops_zero_totals() {
        let a = r("a");
        let raw = PnCounter {
            p: BTreeMap::from([(a.clone(), 0)]),
            n: BTreeMap::new(),
        };
        let back: PnCounter = postcard::from_bytes(&postcard::to_allocvec(&raw).unwrap()).unwrap();
        assert_eq!(back, PnCounter::default());
    }
}
