//! Add-wins observed-remove set of UTF-8 strings.
//!
//! Each add tags the element with a fresh [`Dot`]; a remove deletes only the tags it observed. An
//! add concurrent with a remove therefore survives it (add wins).

use super::Crdt;
use crate::causal::{CausalContext, Dot};
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The state of a set key (and the delta of one update to it).
///
/// Invariants (restored on decoding): no element has an empty dot set, and `ctx` contains every
/// element's dots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OrSetRepr")]
pub struct OrSet {
    entries: BTreeMap<String, BTreeSet<Dot>>,
    ctx: CausalContext,
}

#[derive(Deserialize)]
struct OrSetRepr {
    entries: BTreeMap<String, BTreeSet<Dot>>,
    ctx: CausalContext,
}

impl From<OrSetRepr> for OrSet {
    fn from(repr: OrSetRepr) -> Self {
        let mut set = OrSet {
            entries: repr.entries,
            ctx: repr.ctx,
        };
        for dots in set.entries.values_mut() {
            dots.retain(|d| d.counter > 0);
        }
        set.entries.retain(|_, dots| !dots.is_empty());
        for d in set.entries.values().flatten() {
            set.ctx.insert(d.clone());
        }
        set
    }
}

impl OrSet {
    /// Adds and removes members at `region`. Returns the delta:
    ///
    /// - each removed element's dots in `current` go into the delta's context (the element is
    ///   absent from the delta's entries), so merging removes exactly what was observed;
    /// - each added element gets one fresh dot of `region` (successive counters after
    ///   `current`'s context), placed in the delta's entries and context. The element's existing
    ///   dots are also put in the context: they are superseded by the new one, which keeps one dot
    ///   per element in the common case instead of one per add.
    ///
    /// An element both removed and added in one update ends up present (add wins). Duplicates in
    /// `add` or `remove` count once.
    pub fn update(
        current: Option<&OrSet>,
        region: &RegionId,
        add: &[String],
        remove: &[String],
    ) -> OrSet {
        let mut delta = OrSet::default();
        let observed = |e: &str| current.and_then(|c| c.entries.get(e));
        for e in remove.iter().chain(add) {
            if let Some(dots) = observed(e) {
                for d in dots {
                    delta.ctx.insert(d.clone());
                }
            }
        }
        let mut counter = current.map_or(1, |c| c.ctx.next_dot(region).counter);
        let added: BTreeSet<&String> = add.iter().collect();
        for e in added {
            let dot = Dot::new(region.clone(), counter);
            counter = counter.saturating_add(1);
            delta.ctx.insert(dot.clone());
            delta.entries.insert(e.clone(), BTreeSet::from([dot]));
        }
        delta
    }

    /// The members, sorted.
    pub fn members(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Whether `element` is a member.
    pub fn contains(&self, element: &str) -> bool {
        self.entries.contains_key(element)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set has no members.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The dots currently tagging `element` (empty if it is not a member).
    pub fn dots(&self, element: &str) -> impl Iterator<Item = &Dot> + '_ {
        self.entries.get(element).into_iter().flatten()
    }

    /// Every dot this state has seen (added or removed).
    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }
}

impl Crdt for OrSet {
    /// An element's dot survives if both sides have it or the other side has not seen it;
    /// elements left without dots are dropped; the context becomes the union.
    fn merge(&mut self, other: &Self) {
        let mut entries: BTreeMap<String, BTreeSet<Dot>> = BTreeMap::new();
        let keys: BTreeSet<&String> = self.entries.keys().chain(other.entries.keys()).collect();
        let none = BTreeSet::new();
        for key in keys {
            let mine = self.entries.get(key).unwrap_or(&none);
            let theirs = other.entries.get(key).unwrap_or(&none);
            let kept: BTreeSet<Dot> = mine
                .iter()
                .filter(|d| theirs.contains(*d) || !other.ctx.contains(d))
                .chain(
                    theirs
                        .iter()
                        .filter(|d| mine.contains(*d) || !self.ctx.contains(d)),
                )
                .cloned()
                .collect();
            if !kept.is_empty() {
                entries.insert(key.clone(), kept);
            }
        }
        self.entries = entries;
        self.ctx.merge(&other.ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RegionId {
        RegionId::new(name).unwrap()
    }

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|x| x.to_string()).collect()
    }

    fn update(set: &mut OrSet, region: &RegionId, add: &[&str], remove: &[&str]) -> OrSet {
        let d = OrSet::update(Some(set), region, &s(add), &s(remove));
        set.merge(&d);
        d
    }

    #[test]
    fn add_and_remove_observed() {
        let a = r("a");
        let mut x = OrSet::default();
        update(&mut x, &a, &["milk", "eggs", "milk"], &[]);
        assert_eq!(x.members(), vec!["eggs", "milk"]);
        assert_eq!(x.len(), 2);
        let milk: Vec<Dot> = x.dots("milk").cloned().collect();
        let d = update(&mut x, &a, &[], &["milk", "bread"]);
        assert!(d.is_empty());
        assert!(milk.iter().all(|m| d.context().contains(m)));
        assert_eq!(d.context().dots_len(), 1);
        assert_eq!(x.members(), vec!["eggs"]);
        assert!(!x.contains("milk") && x.contains("eggs"));
    }

    #[test]
    fn concurrent_add_wins_over_remove() {
        let (a, b) = (r("a"), r("b"));
        let mut xa = OrSet::default();
        let add1 = update(&mut xa, &a, &["milk"], &[]);
        let mut xb = OrSet::default();
        xb.merge(&add1);
        // a removes milk while b concurrently re-adds it.
        let rm = update(&mut xa, &a, &[], &["milk"]);
        let readd = update(&mut xb, &b, &["milk"], &[]);
        xa.merge(&readd);
        xb.merge(&rm);
        assert_eq!(xa, xb);
        assert!(xa.contains("milk"));
    }

    #[test]
    fn remove_and_add_in_one_update_adds() {
        let a = r("a");
        let mut x = OrSet::default();
        update(&mut x, &a, &["k"], &[]);
        update(&mut x, &a, &["k"], &["k"]);
        assert!(x.contains("k"));
        // Re-adding replaces the element's old dot instead of piling up dots.
        assert_eq!(x.dots("k").count(), 1);
        assert_eq!(x.dots("k").next(), Some(&Dot::new(a, 2)));
    }

    #[test]
    fn remove_of_unobserved_add_does_nothing() {
        let (a, b) = (r("a"), r("b"));
        let mut xa = OrSet::default();
        let rm = update(&mut xa, &a, &[], &["x"]);
        let mut xb = OrSet::default();
        update(&mut xb, &b, &["x"], &[]);
        xb.merge(&rm);
        assert!(xb.contains("x"));
    }

    #[test]
    fn decoding_normalizes() {
        let a = r("a");
        let raw = OrSet {
            entries: BTreeMap::from([
                ("gone".to_string(), BTreeSet::new()),
                ("here".to_string(), BTreeSet::from([Dot::new(a.clone(), 1)])),
            ]),
            ctx: CausalContext::new(),
        };
        let back: OrSet = postcard::from_bytes(&postcard::to_allocvec(&raw).unwrap()).unwrap();
        assert_eq!(back.members(), vec!["here"]);
        assert!(back.context().contains(&Dot::new(a, 1)));
    }
}
