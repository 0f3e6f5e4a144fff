//! Multi-value register (a dotted version vector set).
//!
//! Every write gets a [`Dot`] and replaces exactly the siblings whose dots its client had seen (the
//! causal context of its read); concurrent writes survive side by side as siblings until a write
//! that has seen them all replaces them.

use super::Crdt;
use crate::causal::{CausalContext, Dot};
use crate::hlc::Timestamp;
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One concurrent version of a multi-value key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that produced this version.
    pub dot: Dot,
    /// HLC timestamp of the write at its origin.
    pub ts: Timestamp,
    /// The value; `None` is a delete marker.
    pub value: Option<Vec<u8>>,
    /// When the value expires, in milliseconds since the Unix epoch (the write's HLC wall time
    /// plus its time to live, stamped once at the origin); `None`: never. Each region judges it
    /// by its own physical clock (`docs/design/expiring-keys.md`). Added in encoding version 4.
    pub expires_ms: Option<u64>,
}

impl Sibling {
    /// Deterministic choice between two siblings claiming the same dot (only possible with
    /// corrupt or forged input), so that merge stays commutative.
    fn cmp_content(&self, other: &Sibling) -> Ordering {
        (self.ts, &self.value, self.expires_ms).cmp(&(other.ts, &other.value, other.expires_ms))
    }

    /// Whether its expiry has passed by `now_ms` (a region's physical clock).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }

    /// Whether it holds a value that has not expired by `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.value.is_some() && !self.expired(now_ms)
    }
}

/// The state of a multi-value key (and the delta of one write to it).
///
/// Invariants (restored by [`Crdt::merge`] and on decoding): `siblings` is sorted by dot without
/// duplicate dots, and `ctx` contains every sibling's dot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MvRegisterRepr")]
pub struct MvRegister {
    /// The current versions, sorted by dot.
    pub siblings: Vec<Sibling>,
    /// Every dot ever seen for this key (including superseded ones).
    pub ctx: CausalContext,
}

#[derive(Deserialize)]
struct MvRegisterRepr {
    siblings: Vec<Sibling>,
    ctx: CausalContext,
}

impl From<MvRegisterRepr> for MvRegister {
    fn from(repr: MvRegisterRepr) -> Self {
        MvRegister::normalized(repr.siblings, repr.ctx)
    }
}

/// [`Sibling`] as encoding versions 1 to 3 wrote it (no expiry).
#[derive(Deserialize)]
pub(crate) struct SiblingV3 {
    dot: Dot,
    ts: Timestamp,
    value: Option<Vec<u8>>,
}

/// [`MvRegister`] as encoding versions 1 to 3 wrote it (siblings without expiry).
#[derive(Deserialize)]
pub(crate) struct MvRegisterV3 {
    siblings: Vec<SiblingV3>,
    ctx: CausalContext,
}

impl From<MvRegisterV3> for MvRegister {
    fn from(old: MvRegisterV3) -> Self {
        let siblings = old
            .siblings
            .into_iter()
            .map(|s| Sibling {
                dot: s.dot,
                ts: s.ts,
                value: s.value,
                expires_ms: None,
            })
            .collect();
        MvRegister::normalized(siblings, old.ctx)
    }
}

impl MvRegister {
    /// Restores the invariants on decoded parts: siblings sorted by dot without duplicates (a
    /// deterministic choice between two claiming one dot), no zero dots, every dot in `ctx`.
    fn normalized(siblings: Vec<Sibling>, ctx: CausalContext) -> Self {
        let mut ctx = ctx;
        let mut by_dot: BTreeMap<Dot, Sibling> = BTreeMap::new();
        for s in siblings {
            if s.dot.counter == 0 {
                continue;
            }
            ctx.insert(s.dot.clone());
            insert_sibling(&mut by_dot, s);
        }
        MvRegister {
            siblings: by_dot.into_values().collect(),
            ctx,
        }
    }
}

fn insert_sibling(by_dot: &mut BTreeMap<Dot, Sibling>, s: Sibling) {
    match by_dot.get_mut(&s.dot) {
        Some(existing) => {
            if s.cmp_content(existing) == Ordering::Greater {
                *existing = s;
            }
        }
        None => {
            by_dot.insert(s.dot.clone(), s);
        }
    }
}

impl MvRegister {
    /// A write of `value` (`None` deletes) at `region` with timestamp `ts`, by a client that had
    /// seen the dots in `seen` (the context its read returned; empty to just add a sibling).
    ///
    /// Returns the delta: one new sibling with a fresh dot of `region`, and the context
    /// `seen ∪ {dot}`. Merging it into `current` removes exactly the siblings whose dots are in
    /// `seen` and adds the new one. `seen` is used as the exact set of dots it is, never rounded up,
    /// so a write never replaces a sibling its client did not see.
    pub fn write(
        current: Option<&MvRegister>,
        seen: &CausalContext,
        region: &RegionId,
        ts: Timestamp,
        value: Option<Vec<u8>>,
    ) -> MvRegister {
        let from_state = current.map_or(1, |c| c.ctx.next_dot(region).counter);
        // A context that already names later dots of this region (only possible if the caller
        // skipped the "context ahead" check) must not make us reuse one of them.
        let counter = from_state.max(seen.next_dot(region).counter);
        let dot = Dot::new(region.clone(), counter);
        let mut ctx = seen.clone();
        ctx.insert(dot.clone());
        MvRegister {
            siblings: vec![Sibling {
                dot,
                ts,
                value,
                expires_ms: None,
            }],
            ctx,
        }
    }

    /// Gives the one sibling of a write's delta (see [`MvRegister::write`]) the expiry
    /// `expires_ms`; a delete marker never expires (it has nothing to expire).
    pub fn expiring(mut self, expires_ms: Option<u64>) -> Self {
        for s in &mut self.siblings {
            if s.value.is_some() {
                s.expires_ms = expires_ms;
            }
        }
        self
    }

    /// The siblings that hold a value not expired by `now_ms` (a region's physical clock),
    /// in dot order: what a read returns.
    pub fn live_at(&self, now_ms: u64) -> Vec<&Sibling> {
        self.siblings.iter().filter(|s| s.live_at(now_ms)).collect()
    }

    /// Number of siblings that hold a value not expired by `now_ms`.
    pub fn sibling_count_at(&self, now_ms: u64) -> usize {
        self.siblings.iter().filter(|s| s.live_at(now_ms)).count()
    }

    /// When the next of its values expires: the earliest expiry of a value sibling, and the
    /// latest write time among the siblings that expire then (collection waits for both).
    pub fn next_expiry(&self) -> Option<(u64, Timestamp)> {
        let e = self
            .siblings
            .iter()
            .filter(|s| s.value.is_some())
            .filter_map(|s| s.expires_ms)
            .min()?;
        let ts = self
            .siblings
            .iter()
            .filter(|s| s.value.is_some() && s.expires_ms == Some(e))
            .map(|s| s.ts)
            .max()?;
        Some((e, ts))
    }

    /// Drops the value siblings for which `collectable` holds (expired ones the caller may
    /// collect). Their dots stay in the context, exactly as if a write that had seen them had
    /// replaced them: a copy that arrives later is recognized as seen and not revived, and the
    /// key's next dots stay unique. Returns how many were dropped.
    pub fn drop_siblings(&mut self, collectable: impl Fn(&Sibling) -> bool) -> usize {
        let before = self.siblings.len();
        self.siblings
            .retain(|s| !(s.value.is_some() && s.expires_ms.is_some() && collectable(s)));
        before - self.siblings.len()
    }

    /// The greatest timestamp among the current siblings, if any.
    pub fn max_ts(&self) -> Option<Timestamp> {
        self.siblings.iter().map(|s| s.ts).max()
    }

    fn find(&self, dot: &Dot) -> Option<&Sibling> {
        self.siblings
            .binary_search_by(|s| s.dot.cmp(dot))
            .ok()
            .and_then(|i| self.siblings.get(i))
    }
}

impl Crdt for MvRegister {
    /// Keeps a sibling if both sides have it, or if the other side has not seen its dot; the
    /// context becomes the union.
    fn merge(&mut self, other: &Self) {
        let mut by_dot: BTreeMap<Dot, Sibling> = BTreeMap::new();
        for s in &self.siblings {
            if other.find(&s.dot).is_some() || !other.ctx.contains(&s.dot) {
                insert_sibling(&mut by_dot, s.clone());
            }
        }
        for s in &other.siblings {
            if self.find(&s.dot).is_some() || !self.ctx.contains(&s.dot) {
                insert_sibling(&mut by_dot, s.clone());
            }
        }
        self.siblings = by_dot.into_values().collect();
        self.ctx.merge(&other.ctx);
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

    fn values(m: &MvRegister) -> Vec<&[u8]> {
        m.live_at(0)
            .into_iter()
            .filter_map(|s| s.value.as_deref())
            .collect()
    }

    fn apply(
        state: &mut MvRegister,
        seen: &CausalContext,
        region: &RegionId,
        w: u64,
        v: &[u8],
    ) -> MvRegister {
        let delta = MvRegister::write(Some(state), seen, region, ts(w), Some(v.to_vec()));
        state.merge(&delta);
        delta
    }

    #[test]
    fn write_without_context_adds_a_sibling() {
        let a = r("a");
        let mut s = MvRegister::default();
        let empty = CausalContext::new();
        let d1 = apply(&mut s, &empty, &a, 1, b"x");
        assert_eq!(d1.siblings[0].dot, Dot::new(a.clone(), 1));
        apply(&mut s, &empty, &a, 2, b"y");
        assert_eq!(values(&s), vec![&b"x"[..], &b"y"[..]]);
        assert_eq!(s.sibling_count_at(0), 2);
        assert_eq!(s.ctx.next_dot(&a), Dot::new(a.clone(), 3));
    }

    #[test]
    fn write_with_read_context_supersedes_exactly_what_was_seen() {
        let (a, b) = (r("a"), r("b"));
        let empty = CausalContext::new();
        let mut s = MvRegister::default();
        apply(&mut s, &empty, &a, 1, b"x");
        let read_ctx = s.ctx.clone(); // client read {x}
        // Meanwhile b's concurrent write arrives.
        let wb = MvRegister::write(None, &empty, &b, ts(2), Some(b"z".to_vec()));
        s.merge(&wb);
        // The client writes back with the context of its read: replaces x, keeps z.
        apply(&mut s, &read_ctx, &a, 3, b"y");
        assert_eq!(values(&s), vec![&b"y"[..], &b"z"[..]]);
        // A write with the full context replaces everything.
        let full = s.ctx.clone();
        apply(&mut s, &full, &b, 4, b"w");
        assert_eq!(values(&s), vec![&b"w"[..]]);
        assert_eq!(s.siblings.len(), 1);
    }

    #[test]
    fn concurrent_writes_from_two_regions_both_survive() {
        let (a, b) = (r("a"), r("b"));
        let empty = CausalContext::new();
        let mut sa = MvRegister::default();
        let mut sb = MvRegister::default();
        let da = apply(&mut sa, &empty, &a, 1, b"a");
        let db = apply(&mut sb, &empty, &b, 1, b"b");
        // Each also wrote with the full context of its own replica: still does not see the other.
        let ctx_a = sa.ctx.clone();
        let da2 = apply(&mut sa, &ctx_a, &a, 2, b"a2");
        sa.merge(&db);
        sb.merge(&da);
        sb.merge(&da2);
        assert_eq!(sa, sb);
        assert_eq!(values(&sa), vec![&b"a2"[..], &b"b"[..]]);
    }

    #[test]
    fn context_is_exact_not_rounded_up() {
        let a = r("a");
        let empty = CausalContext::new();
        let mut s = MvRegister::default();
        apply(&mut s, &empty, &a, 1, b"1"); // a:1
        apply(&mut s, &empty, &a, 2, b"2"); // a:2
        apply(&mut s, &empty, &a, 3, b"3"); // a:3
        // A client saw only a:1 and a:3.
        let seen: CausalContext = [Dot::new(a.clone(), 1), Dot::new(a.clone(), 3)]
            .into_iter()
            .collect();
        apply(&mut s, &seen, &a, 4, b"4");
        assert_eq!(values(&s), vec![&b"2"[..], &b"4"[..]]);
    }

    #[test]
    fn delete_leaves_a_marker_until_superseded() {
        let a = r("a");
        let empty = CausalContext::new();
        let mut s = MvRegister::default();
        apply(&mut s, &empty, &a, 1, b"x");
        let ctx = s.ctx.clone();
        let del = MvRegister::write(Some(&s), &ctx, &a, ts(2), None);
        s.merge(&del);
        assert!(s.live_at(0).is_empty());
        assert_eq!(s.siblings.len(), 1);
        assert_eq!(s.max_ts(), Some(ts(2)));
        let ctx = s.ctx.clone();
        apply(&mut s, &ctx, &a, 3, b"y");
        assert_eq!(s.siblings.len(), 1);
        assert_eq!(values(&s), vec![&b"y"[..]]);
    }

    #[test]
    fn forged_context_ahead_does_not_reuse_dots() {
        let a = r("a");
        let ahead: CausalContext = [Dot::new(a.clone(), 7)].into_iter().collect();
        let d = MvRegister::write(None, &ahead, &a, ts(1), Some(b"x".to_vec()));
        assert_eq!(d.siblings[0].dot, Dot::new(a, 8));
    }

    #[test]
    fn decoding_normalizes() {
        let a = r("a");
        let s1 = Sibling {
            dot: Dot::new(a.clone(), 2),
            ts: ts(2),
            value: Some(b"b".to_vec()),
            expires_ms: None,
        };
        let s0 = Sibling {
            dot: Dot::new(a.clone(), 1),
            ts: ts(1),
            value: Some(b"a".to_vec()),
            expires_ms: Some(9),
        };
        let raw = MvRegister {
            siblings: vec![s1.clone(), s0.clone(), s1.clone()],
            ctx: CausalContext::new(),
        };
        let back: MvRegister = postcard::from_bytes(&postcard::to_allocvec(&raw).unwrap()).unwrap();
        assert_eq!(back.siblings, vec![s0, s1]);
        assert!(back.ctx.contains(&Dot::new(a, 2)));
        assert_eq!(back.clone().merged(&back), back);
    }

    #[test]
    fn an_expiry_travels_with_its_sibling_and_hides_it_once_past() {
        let (a, b) = (r("a"), r("b"));
        let empty = CausalContext::new();
        let mut s = MvRegister::default();
        let d1 = MvRegister::write(Some(&s), &empty, &a, ts(10), Some(b"x".to_vec()))
            .expiring(Some(1_010));
        s.merge(&d1);
        let d2 = MvRegister::write(Some(&s), &empty, &b, ts(20), Some(b"y".to_vec()));
        s.merge(&d2);
        // A delete marker never carries an expiry.
        let del = MvRegister::write(None, &empty, &a, ts(30), None).expiring(Some(5));
        assert_eq!(del.siblings[0].expires_ms, None);
        assert_eq!(s.live_at(1_009).len(), 2);
        let live: Vec<_> = s.live_at(1_010).iter().map(|s| s.dot.clone()).collect();
        assert_eq!(live, vec![Dot::new(b.clone(), 1)], "expired at its instant");
        assert_eq!(s.sibling_count_at(1_010), 1);
        assert_eq!(s.next_expiry(), Some((1_010, ts(10))));
        // A peer merging the delta gets the same expiry.
        let mut peer = MvRegister::default();
        peer.merge(&d1);
        assert_eq!(peer.siblings[0].expires_ms, Some(1_010));
    }

    #[test]
    fn a_dropped_sibling_stays_seen_so_a_late_copy_is_not_revived_and_dots_stay_unique() {
        let a = r("a");
        let empty = CausalContext::new();
        let mut s = MvRegister::default();
        let d1 = MvRegister::write(Some(&s), &empty, &a, ts(10), Some(b"x".to_vec()))
            .expiring(Some(100));
        s.merge(&d1);
        assert_eq!(s.drop_siblings(|x| x.expired(99)), 0, "not yet expired");
        assert_eq!(s.drop_siblings(|x| x.expired(100)), 1);
        assert!(s.siblings.is_empty());
        assert!(
            s.ctx.contains(&Dot::new(a.clone(), 1)),
            "its dot is still seen"
        );
        // The same delta arriving again (a peer re-sends it) does not bring it back.
        s.merge(&d1);
        assert!(s.siblings.is_empty(), "revived: {:?}", s.siblings);
        // A later write takes a fresh dot.
        let d2 = MvRegister::write(Some(&s), &empty, &a, ts(20), Some(b"y".to_vec()));
        assert_eq!(d2.siblings[0].dot, Dot::new(a.clone(), 2));
        // Values without expiry and delete markers are never dropped.
        s.merge(&d2);
        let del = MvRegister::write(Some(&s), &empty, &a, ts(30), None);
        s.merge(&del);
        assert_eq!(s.drop_siblings(|_| true), 0);
        assert_eq!(s.siblings.len(), 2);
    }

    #[test]
    fn mvr_states_of_encoding_version_3_read_without_expiry() {
        #[derive(Serialize)]
        struct OldSibling {
            dot: Dot,
            ts: Timestamp,
            value: Option<Vec<u8>>,
        }
        #[derive(Serialize)]
        struct OldRegister {
            siblings: Vec<OldSibling>,
            ctx: CausalContext,
        }
        let a = r("a");
        let mut ctx = CausalContext::new();
        ctx.insert(Dot::new(a.clone(), 1));
        let old = OldRegister {
            siblings: vec![OldSibling {
                dot: Dot::new(a.clone(), 1),
                ts: ts(5),
                value: Some(b"x".to_vec()),
            }],
            ctx,
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let reg: MvRegister = postcard::from_bytes::<MvRegisterV3>(&bytes).unwrap().into();
        assert_eq!(reg.siblings.len(), 1);
        assert_eq!(reg.siblings[0].value.as_deref(), Some(&b"x"[..]));
        assert_eq!(reg.siblings[0].expires_ms, None);
        // The current layout does not misread it.
        assert!(postcard::from_bytes::<MvRegister>(&bytes).is_err());
    }
}
