//! Causality tracking: [`Dot`]s name single writes, [`VersionVector`]s count writes per region,
//! and [`CausalContext`]s are exact sets of dots (what a replica or a client has seen).

use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One write: the `counter`-th write of `region` (to one key). Counters start at 1.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The region that issued the write.
    pub region: RegionId,
    /// Per-region, per-key write counter, starting at 1.
    pub counter: u64,
}

impl Dot {
    /// The `counter`-th write of `region`.
    pub fn new(region: RegionId, counter: u64) -> Self {
        Self { region, counter }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.region, self.counter)
    }
}

/// A version vector: per region, how many writes have been seen. Zero entries are never stored,
/// so equality is semantic equality.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BTreeMap<RegionId, u64>")]
pub struct VersionVector(BTreeMap<RegionId, u64>);

impl From<BTreeMap<RegionId, u64>> for VersionVector {
    fn from(mut map: BTreeMap<RegionId, u64>) -> Self {
        map.retain(|_, n| *n > 0);
        Self(map)
    }
}

impl FromIterator<(RegionId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (RegionId, u64)>>(iter: I) -> Self {
        let mut vv = Self::default();
        for (region, n) in iter {
            if n > vv.get(&region) {
                vv.0.insert(region, n);
            }
        }
        vv
    }
}

impl VersionVector {
    /// An empty vector (nothing seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// The count for `region` (0 if absent).
    pub fn get(&self, region: &RegionId) -> u64 {
        self.0.get(region).copied().unwrap_or(0)
    }

    /// Counts one more write of `region` and returns the new count (saturating at `u64::MAX`).
    pub fn increment(&mut self, region: &RegionId) -> u64 {
        let n = self.0.entry(region.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Raises `region`'s count to `n` if it is lower (a count of 0 is never stored).
    pub fn raise(&mut self, region: &RegionId, n: u64) {
        if n > self.get(region) {
            self.0.insert(region.clone(), n);
        }
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &Self) {
        for (region, &n) in &other.0 {
            if n > self.get(region) {
                self.0.insert(region.clone(), n);
            }
        }
    }

    /// Pointwise minimum (what both have seen).
    pub fn meet(&self, other: &Self) -> Self {
        self.0
            .iter()
            .map(|(r, &n)| (r.clone(), n.min(other.get(r))))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Whether `self` has seen everything `other` has (`self >= other` pointwise).
    pub fn dominates(&self, other: &Self) -> bool {
        other.0.iter().all(|(region, &n)| self.get(region) >= n)
    }

    /// Whether neither vector dominates the other: each has seen a write the other has not.
    pub fn concurrent(&self, other: &Self) -> bool {
        !self.dominates(other) && !other.dominates(self)
    }

    /// `(region, count)` pairs in region order; zero counts are never yielded.
    pub fn iter(&self) -> impl Iterator<Item = (&RegionId, u64)> + '_ {
        self.0.iter().map(|(r, &n)| (r, n))
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of regions with a non-zero count.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (r, n)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}:{n}")?;
        }
        f.write_str("}")
    }
}

/// An exact set of dots, stored compactly: per region the contiguous prefix `1..=n` in `vv`, and
/// the dots beyond a gap in `cloud`.
///
/// The representation is always compacted (no zero prefix, no cloud dot inside or adjacent to its
/// region's prefix), so equal sets have equal representations and `==` is set equality. Decoding
/// (e.g. a client's context token) re-compacts whatever it is given. The common case, no gaps, has
/// an empty cloud and costs one map entry per region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CausalContextRepr")]
pub struct CausalContext {
    vv: BTreeMap<RegionId, u64>,
    cloud: BTreeSet<Dot>,
}

/// The encoded shape of a [`CausalContext`], compacted on the way in.
#[derive(Deserialize)]
struct CausalContextRepr {
    vv: BTreeMap<RegionId, u64>,
    cloud: BTreeSet<Dot>,
}

impl From<CausalContextRepr> for CausalContext {
    fn from(repr: CausalContextRepr) -> Self {
        let mut ctx = CausalContext {
            vv: repr.vv,
            cloud: repr.cloud,
        };
        ctx.vv.retain(|_, n| *n > 0);
        ctx.cloud.retain(|d| d.counter > 0);
        ctx.compact();
        ctx
    }
}

impl FromIterator<Dot> for CausalContext {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut ctx = Self::default();
        for dot in iter {
            ctx.insert(dot);
        }
        ctx
    }
}

impl From<&VersionVector> for CausalContext {
    /// The dots `region:1..=n` for every `(region, n)` of the vector.
    fn from(vv: &VersionVector) -> Self {
        Self {
            vv: vv.0.clone(),
            cloud: BTreeSet::new(),
        }
    }
}

impl CausalContext {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `dot` is in the set. Counter 0 names no write and is never contained.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.counter > 0 && (dot.counter <= self.prefix(&dot.region) || self.cloud.contains(dot))
    }

    /// Adds `dot` (a no-op for counter 0, which names no write).
    pub fn insert(&mut self, dot: Dot) {
        let prefix = self.prefix(&dot.region);
        if dot.counter == 0 || dot.counter <= prefix {
            return;
        }
        if dot.counter == prefix + 1 {
            let region = dot.region;
            let mut n = dot.counter;
            // Fold the cloud dots that now extend the prefix.
            while let Some(next) = n.checked_add(1) {
                if !self.cloud.remove(&Dot::new(region.clone(), next)) {
                    break;
                }
                n = next;
            }
            self.vv.insert(region, n);
        } else {
            self.cloud.insert(dot);
        }
    }

    /// Set union.
    pub fn merge(&mut self, other: &CausalContext) {
        let mut grew = false;
        for (region, &n) in &other.vv {
            if n > self.prefix(region) {
                self.vv.insert(region.clone(), n);
                grew = true;
            }
        }
        if grew && !self.cloud.is_empty() {
            self.compact();
        }
        for dot in &other.cloud {
            if !self.contains(dot) {
                self.insert(dot.clone());
            }
        }
    }

    /// Whether every dot of `other` is in `self` (`other ⊆ self`).
    pub fn includes(&self, other: &CausalContext) -> bool {
        // `self` is compacted: if its prefix for a region is shorter than `other`'s, the dot right
        // after it is missing from `self` (it would have been folded into the prefix otherwise).
        other.vv.iter().all(|(region, &n)| self.prefix(region) >= n)
            && other.cloud.iter().all(|d| self.contains(d))
    }

    /// The dot for `region`'s next write: one above the largest counter of `region` in the set
    /// (prefix or cloud), or counter 1 if the set has none. Saturates at `u64::MAX`.
    pub fn next_dot(&self, region: &RegionId) -> Dot {
        Dot::new(region.clone(), self.max_counter(region).saturating_add(1))
    }

    /// The largest counter of `region` in the set (0 if none).
    pub fn max_counter(&self, region: &RegionId) -> u64 {
        let in_cloud = self
            .cloud
            .range(Dot::new(region.clone(), 0)..=Dot::new(region.clone(), u64::MAX))
            .next_back()
            .map_or(0, |d| d.counter);
        self.prefix(region).max(in_cloud)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// Number of dots in the set (saturating at `u64::MAX`).
    pub fn dots_len(&self) -> u64 {
        let prefixes = self.vv.values().fold(0u64, |acc, &n| acc.saturating_add(n));
        prefixes.saturating_add(u64::try_from(self.cloud.len()).unwrap_or(u64::MAX))
    }

    /// Number of dots kept outside the contiguous prefixes (0 in the common case).
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }

    /// The regions that have at least one dot in the set, in order.
    pub fn regions(&self) -> impl Iterator<Item = &RegionId> + '_ {
        self.max_counters().into_keys()
    }

    /// Per region, the largest counter in the set, in region order (for display and diagnostics).
    pub fn max_counters(&self) -> BTreeMap<&RegionId, u64> {
        let mut out: BTreeMap<&RegionId, u64> = self.vv.iter().map(|(r, &n)| (r, n)).collect();
        for d in &self.cloud {
            let e = out.entry(&d.region).or_insert(0);
            *e = (*e).max(d.counter);
        }
        out
    }

    /// The contiguous prefix as a version vector: `region:1..=n` are all in the set.
    pub fn prefix_vector(&self) -> VersionVector {
        VersionVector(self.vv.clone())
    }

    /// The dots outside the contiguous prefixes, in order.
    pub fn cloud(&self) -> impl Iterator<Item = &Dot> + '_ {
        self.cloud.iter()
    }

    fn prefix(&self, region: &RegionId) -> u64 {
        self.vv.get(region).copied().unwrap_or(0)
    }

    /// Restores the invariant: drops cloud dots covered by their prefix and folds the ones that
    /// extend it. The cloud is ordered by region then counter, so one pass suffices.
    fn compact(&mut self) {
        if self.cloud.is_empty() {
            return;
        }
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let prefix = self.prefix(&dot.region);
            if dot.counter <= prefix {
                continue;
            }
            if dot.counter == prefix + 1 {
                self.vv.insert(dot.region, dot.counter);
            } else {
                self.cloud.insert(dot);
            }
        }
    }
}

/// `{region:n, region:n+[d1,d2]}`: per region the prefix, then any cloud counters.
impl fmt::Display for CausalContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        let mut first = true;
        for region in self.regions() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{region}:{}", self.prefix(region))?;
            let extra: Vec<String> = self
                .cloud
                .range(Dot::new(region.clone(), 0)..=Dot::new(region.clone(), u64::MAX))
                .map(|d| d.counter.to_string())
                .collect();
            if !extra.is_empty() {
                write!(f, "+[{}]", extra.join(","))?;
            }
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RegionId {
        RegionId::new(name).unwrap()
    }

    fn d(name: &str, n: u64) -> Dot {
        Dot::new(r(name), n)
    }

    fn ctx(dots: &[(&str, u64)]) -> CausalContext {
        dots.iter().map(|(n, c)| d(n, *c)).collect()
    }

    #[test]
    fn version_vector_basics() {
        let (a, b) = (r("a"), r("b"));
        let mut x = VersionVector::new();
        assert_eq!(x.increment(&a), 1);
        assert_eq!(x.increment(&a), 2);
        let mut y = VersionVector::new();
        y.increment(&b);
        assert!(x.concurrent(&y));
        assert!(!x.dominates(&y));
        let mut z = x.clone();
        z.merge(&y);
        assert!(z.dominates(&x) && z.dominates(&y) && !z.concurrent(&x));
        assert_eq!(z.get(&a), 2);
        assert_eq!(z.get(&b), 1);
        assert_eq!(z.get(&r("c")), 0);
        assert!(z.dominates(&VersionVector::new()));
        assert!(VersionVector::new().dominates(&VersionVector::new()));
        assert_eq!(z.iter().collect::<Vec<_>>(), vec![(&a, 2), (&b, 1)]);
        assert_eq!(z.to_string(), "{a:2, b:1}");
        // Zero entries are not stored, so they do not break equality.
        let zeros: VersionVector = BTreeMap::from([(a.clone(), 0)]).into();
        assert_eq!(zeros, VersionVector::new());
    }

    #[test]
    fn compaction_folds_cloud_into_prefix() {
        let mut c = ctx(&[("a", 1), ("a", 3), ("a", 5)]);
        assert_eq!(c.cloud_len(), 2);
        assert_eq!(c.to_string(), "{a:1+[3,5]}");
        c.insert(d("a", 2));
        assert_eq!(c.cloud_len(), 1);
        assert_eq!(c.prefix_vector().get(&r("a")), 3);
        c.insert(d("a", 4));
        assert_eq!(c.cloud_len(), 0);
        assert_eq!(c, ctx(&[("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5)]));
        assert_eq!(c.dots_len(), 5);
    }

    #[test]
    fn equal_sets_have_equal_representations() {
        let x = ctx(&[("a", 3), ("a", 1), ("a", 2), ("b", 2)]);
        let y = ctx(&[("b", 2), ("a", 2), ("a", 3), ("a", 1)]);
        assert_eq!(x, y);
        let mut m = ctx(&[("a", 2), ("b", 2)]);
        m.merge(&ctx(&[("a", 1), ("a", 3)]));
        assert_eq!(m, x);
        let mut m2 = ctx(&[("a", 1), ("a", 3)]);
        m2.merge(&ctx(&[("a", 2), ("b", 2)]));
        assert_eq!(m2, x);
        // Merge where the other's prefix swallows our cloud.
        let mut m3 = ctx(&[("a", 3), ("a", 7)]);
        m3.merge(&ctx(&[
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("a", 4),
            ("a", 5),
            ("a", 6),
        ]));
        assert_eq!(m3.cloud_len(), 0);
        assert_eq!(m3.max_counter(&r("a")), 7);
        assert_eq!(m3.dots_len(), 7);
    }

    #[test]
    fn contains_and_includes() {
        let c = ctx(&[("a", 1), ("a", 2), ("a", 4), ("b", 1)]);
        assert!(c.contains(&d("a", 1)) && c.contains(&d("a", 4)));
        assert!(!c.contains(&d("a", 3)) && !c.contains(&d("a", 5)) && !c.contains(&d("a", 0)));
        assert!(!c.contains(&d("c", 1)));
        assert!(c.includes(&ctx(&[("a", 2), ("a", 4)])));
        assert!(c.includes(&ctx(&[("a", 1)])));
        assert!(c.includes(&CausalContext::new()));
        assert!(c.includes(&c));
        assert!(!c.includes(&ctx(&[("a", 1), ("a", 2), ("a", 3)])));
        assert!(!c.includes(&ctx(&[("c", 1)])));
        assert!(!CausalContext::new().includes(&c));
    }

    #[test]
    fn next_dot_uses_prefix_and_cloud() {
        let c = ctx(&[("a", 1), ("a", 5), ("b", 1), ("b", 2)]);
        assert_eq!(c.next_dot(&r("a")), d("a", 6));
        assert_eq!(c.next_dot(&r("b")), d("b", 3));
        assert_eq!(c.next_dot(&r("c")), d("c", 1));
        assert_eq!(
            c.max_counters().into_iter().collect::<Vec<_>>(),
            vec![(&r("a"), 5), (&r("b"), 2)]
        );
        assert_eq!(
            c.regions().cloned().collect::<Vec<_>>(),
            vec![r("a"), r("b")]
        );
        assert_eq!(c.cloud().cloned().collect::<Vec<_>>(), vec![d("a", 5)]);
        assert!(CausalContext::new().is_empty() && !c.is_empty());
    }

    #[test]
    fn counter_zero_is_not_a_dot() {
        let mut c = CausalContext::new();
        c.insert(d("a", 0));
        assert!(c.is_empty());
        assert!(!c.contains(&d("a", 0)));
    }

    #[test]
    fn decoding_recompacts() {
        let raw = CausalContext {
            vv: BTreeMap::from([(r("a"), 2), (r("z"), 0)]),
            cloud: BTreeSet::from([d("a", 1), d("a", 3), d("a", 5), d("b", 0), d("z", 1)]),
        };
        let bytes = postcard::to_allocvec(&raw).unwrap();
        let back: CausalContext = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            back,
            ctx(&[("a", 1), ("a", 2), ("a", 3), ("a", 5), ("z", 1)])
        );
        assert_eq!(back.cloud_len(), 1);
        let vv_bytes = postcard::to_allocvec(&back.prefix_vector()).unwrap();
        let vv: VersionVector = postcard::from_bytes(&vv_bytes).unwrap();
        assert_eq!(vv, back.prefix_vector());
    }

    #[test]
    fn from_version_vector() {
        let mut vv = VersionVector::new();
        vv.increment(&r("a"));
        vv.increment(&r("a"));
        let c = CausalContext::from(&vv);
        assert_eq!(c, ctx(&[("a", 1), ("a", 2)]));
    }
}
