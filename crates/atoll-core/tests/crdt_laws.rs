//! Property tests for the CRDTs: random histories of writes at 3-4 regions, each applying its own
//! writes to its own replica and exchanging deltas and whole states at random.
//!
//! Checked for every CRDT:
//! 1. merge is commutative, associative and idempotent on reachable states (deltas and replica
//!    snapshots);
//! 2. folding the same deltas in any order, with duplicates, gives the same state, and every
//!    replica is below that state (merging it changes nothing);
//! 3. after every event, the changed replica equals what a reference model computes from the set
//!    of writes (deltas) it has received, and so does the fold of all deltas;
//! 4. states survive the versioned codec unchanged.

use atoll_core::causal::{CausalContext, Dot};
use atoll_core::codec;
use atoll_core::crdt::Crdt;
use atoll_core::crdt::lww::{ConflictReason, LwwConflict, LwwRegister, LwwVersion};
use atoll_core::crdt::mvr::{MvRegister, Sibling};
use atoll_core::crdt::orset::OrSet;
use atoll_core::crdt::pncounter::PnCounter;
use atoll_core::hlc::{Hlc, Timestamp};
use atoll_core::region::RegionId;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;

const REGION_NAMES: [&str; 4] = ["us-east-1", "eu-west-1", "ap-south-1", "sa-east-1"];

fn region(i: usize) -> RegionId {
    RegionId::new(REGION_NAMES[i]).unwrap()
}

type Hist = BTreeSet<usize>;

/// One write of the history: its delta is `deltas[id]`.
#[derive(Clone, Debug)]
struct WriteRec<I> {
    region: usize,
    /// 1-based index among the writes of `region`.
    seq: u64,
    /// The writes (delta ids) merged into the writer's replica before this write.
    hist: Hist,
    /// This write and, transitively, every write it causally follows.
    closure: Hist,
    info: I,
}

fn closure_of<I>(hist: &Hist, writes: &[WriteRec<I>]) -> Hist {
    hist.iter()
        .flat_map(|&u| writes[u].closure.iter().copied())
        .collect()
}

#[derive(Clone, Debug)]
enum Ev<W> {
    Write(usize, W),
    /// Merge replica `.0`'s whole state into replica `.1`.
    Sync(usize, usize),
    /// Deliver delta number `.0` (modulo the number of deltas) to replica `.1`.
    Deliver(u16, usize),
}

fn events<W: Clone + Debug + 'static>(
    w: impl Strategy<Value = W> + 'static,
) -> impl Strategy<Value = Vec<Ev<W>>> {
    let ev = prop_oneof![
        3 => (0..4usize, w).prop_map(|(r, w)| Ev::Write(r, w)),
        1 => (0..4usize, 0..4usize).prop_map(|(a, b)| Ev::Sync(a, b)),
        2 => (any::<u16>(), 0..4usize).prop_map(|(d, r)| Ev::Deliver(d, r)),
    ];
    prop::collection::vec(ev, 0..40)
}

/// SplitMix64, for shuffling delta deliveries from a proptest-chosen seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

trait Model {
    type S: Crdt + Serialize + DeserializeOwned;
    type W: Clone + Debug;
    type I: Clone + Debug;

    fn bottom() -> Self::S;

    /// Performs a write at replica `r` whose state is `state` and returns the delta.
    fn write(
        &mut self,
        state: &Self::S,
        r: usize,
        w: &Self::W,
        hist: &Hist,
        writes: &[WriteRec<Self::I>],
    ) -> (Self::S, Self::I);

    /// Merges `from` (covering the writes `from_hist`) into `into` (covering `into_hist`).
    fn merge(
        &mut self,
        into: &mut Self::S,
        from: &Self::S,
        _into_hist: &Hist,
        _from_hist: &Hist,
        _writes: &[WriteRec<Self::I>],
    ) {
        into.merge(from);
    }

    /// Called after replica `r` changed.
    fn after_event(
        &mut self,
        _r: usize,
        _state: &Self::S,
        _hist: &Hist,
        _writes: &[WriteRec<Self::I>],
    ) {
    }

    /// Asserts that `state` is what the reference model says the join of the deltas `hist` is.
    fn check(&self, state: &Self::S, hist: &Hist, writes: &[WriteRec<Self::I>]);
}

#[derive(Clone, Debug)]
struct Case<W> {
    nregions: usize,
    events: Vec<Ev<W>>,
    seed: u64,
    triples: Vec<(u16, u16, u16)>,
}

fn case<W: Clone + Debug + 'static>(
    w: impl Strategy<Value = W> + 'static,
) -> impl Strategy<Value = Case<W>> {
    (
        3..=4usize,
        events(w),
        any::<u64>(),
        prop::collection::vec(any::<(u16, u16, u16)>(), 1..16),
    )
        .prop_map(|(nregions, events, seed, triples)| Case {
            nregions,
            events,
            seed,
            triples,
        })
}

fn fold<S: Crdt>(bottom: S, deltas: impl IntoIterator<Item = S>) -> S {
    deltas.into_iter().fold(bottom, |acc, d| acc.merged(&d))
}

fn run<M: Model>(mut m: M, c: Case<M::W>) {
    let n = c.nregions;
    let mut replicas: Vec<M::S> = (0..n).map(|_| M::bottom()).collect();
    let mut hists: Vec<Hist> = vec![Hist::new(); n];
    let mut deltas: Vec<M::S> = Vec::new();
    let mut writes: Vec<WriteRec<M::I>> = Vec::new();
    let mut pool: Vec<M::S> = vec![M::bottom()];
    let mut seqs = vec![0u64; n];

    for ev in &c.events {
        let changed = match ev {
            Ev::Write(r, w) => {
                let r = r % n;
                let (delta, info) = m.write(&replicas[r], r, w, &hists[r], &writes);
                seqs[r] += 1;
                let id = writes.len();
                let mut closure = closure_of(&hists[r], &writes);
                closure.insert(id);
                writes.push(WriteRec {
                    region: r,
                    seq: seqs[r],
                    hist: hists[r].clone(),
                    closure,
                    info,
                });
                m.check(&delta, &Hist::from([id]), &writes);
                // The writer applies its own delta (never a conflict: it follows everything).
                let mut own = replicas[r].clone();
                m.merge(&mut own, &delta, &hists[r], &Hist::from([id]), &writes);
                replicas[r] = own;
                hists[r].insert(id);
                pool.push(delta.clone());
                deltas.push(delta);
                r
            }
            Ev::Sync(from, to) => {
                let (from, to) = (from % n, to % n);
                let src = replicas[from].clone();
                let src_hist = hists[from].clone();
                let mut dst = replicas[to].clone();
                m.merge(&mut dst, &src, &hists[to], &src_hist, &writes);
                replicas[to] = dst;
                hists[to].extend(src_hist);
                to
            }
            Ev::Deliver(k, to) => {
                if deltas.is_empty() {
                    continue;
                }
                let k = *k as usize % deltas.len();
                let to = to % n;
                let mut dst = replicas[to].clone();
                m.merge(&mut dst, &deltas[k], &hists[to], &Hist::from([k]), &writes);
                replicas[to] = dst;
                hists[to].insert(k);
                to
            }
        };
        m.after_event(changed, &replicas[changed], &hists[changed], &writes);
        m.check(&replicas[changed], &hists[changed], &writes);
        pool.push(replicas[changed].clone());
    }

    // (1) Lattice laws on reachable states.
    for &(i, j, k) in &c.triples {
        let a = &pool[i as usize % pool.len()];
        let b = &pool[j as usize % pool.len()];
        let cc = &pool[k as usize % pool.len()];
        assert_eq!(a.clone().merged(b), b.clone().merged(a), "not commutative");
        assert_eq!(
            a.clone().merged(b).merged(cc),
            a.clone().merged(&b.clone().merged(cc)),
            "not associative"
        );
        assert_eq!(&a.clone().merged(a), a, "not idempotent");
    }

    // (2) Any delivery order, with duplicates, converges.
    let all = fold(M::bottom(), deltas.iter().cloned());
    if !deltas.is_empty() {
        let mut rng = Rng(c.seed);
        let mut order: Vec<usize> = (0..deltas.len()).collect();
        for _ in 0..deltas.len() / 2 + 1 {
            order.push(rng.below(deltas.len()));
        }
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let shuffled = fold(M::bottom(), order.iter().map(|&i| deltas[i].clone()));
        assert_eq!(shuffled, all, "delivery order changed the result");
    }
    for r in &replicas {
        assert_eq!(
            r.clone().merged(&all),
            all,
            "a replica is not below the join of all deltas"
        );
    }
    let full_sync = replicas.iter().fold(M::bottom(), |acc, r| acc.merged(r));
    let everything: Hist = (0..deltas.len()).collect();
    let union: Hist = hists.iter().flatten().copied().collect();
    if union == everything {
        assert_eq!(
            full_sync, all,
            "replicas together hold every delta but disagree with the join"
        );
    }

    // (3) The join of all deltas matches the reference model.
    m.check(&all, &everything, &writes);

    // (4) Codec round trip.
    let bytes = codec::encode(&all).unwrap();
    assert_eq!(codec::decode::<M::S>(&bytes).unwrap(), all);
}

// ---------------------------------------------------------------------------------------------
// LWW register

/// `LwwRegister` has no bottom; `None` plays that part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct MaybeLww(Option<LwwRegister>);

impl Crdt for MaybeLww {
    fn merge(&mut self, other: &Self) {
        match (&mut self.0, &other.0) {
            (_, None) => {}
            (None, Some(b)) => self.0 = Some(b.clone()),
            (Some(a), Some(b)) => a.merge(b),
        }
    }
}

#[derive(Clone, Debug)]
struct LwwW {
    phys: u64,
    value: Option<u8>,
    /// Time to live of the write (ms after its timestamp's wall time).
    ttl: Option<u64>,
}

#[derive(Clone, Debug)]
struct LwwInfo {
    version: LwwVersion,
    /// The expiry the write stamped (`None` for deletes and writes without a ttl).
    expires_ms: Option<u64>,
}

struct LwwModel {
    hlcs: Vec<Hlc>,
}

fn lww_key(v: &LwwVersion) -> (Timestamp, &RegionId, &Option<Vec<u8>>) {
    (v.ts, &v.origin, &v.value)
}

fn lww_winner<'a>(hist: &Hist, writes: &'a [WriteRec<LwwInfo>]) -> Option<&'a LwwVersion> {
    hist.iter()
        .map(|&u| &writes[u].info.version)
        .max_by(|a, b| lww_key(a).cmp(&lww_key(b)))
}

impl Model for LwwModel {
    type S = MaybeLww;
    type W = LwwW;
    type I = LwwInfo;

    fn bottom() -> MaybeLww {
        MaybeLww(None)
    }

    fn write(
        &mut self,
        state: &MaybeLww,
        r: usize,
        w: &LwwW,
        _hist: &Hist,
        _writes: &[WriteRec<LwwInfo>],
    ) -> (MaybeLww, LwwInfo) {
        let ts = self.hlcs[r].now(w.phys);
        let value = w.value.map(|v| vec![v]);
        let delta = LwwRegister::write(state.0.as_ref(), &region(r), ts, value)
            .expiring(w.ttl.map(|t| ts.wall_ms + t));
        let info = LwwInfo {
            version: delta.version(),
            expires_ms: delta.expires_ms,
        };
        (MaybeLww(Some(delta)), info)
    }

    fn merge(
        &mut self,
        into: &mut MaybeLww,
        from: &MaybeLww,
        into_hist: &Hist,
        from_hist: &Hist,
        writes: &[WriteRec<LwwInfo>],
    ) {
        let (Some(a), Some(b)) = (&mut into.0, &from.0) else {
            into.merge(from);
            return;
        };
        let (va, vb) = (a.version(), b.version());
        let cl_a = closure_of(into_hist, writes);
        let cl_b = closure_of(from_hist, writes);
        let ordered = cl_a.is_subset(&cl_b) || cl_b.is_subset(&cl_a);
        let expected = if ordered || va == vb {
            None
        } else {
            let (winner, loser) = if lww_key(&va) > lww_key(&vb) {
                (va, vb)
            } else {
                (vb, va)
            };
            let reason = if winner.ts != loser.ts {
                ConflictReason::HigherTimestamp
            } else {
                ConflictReason::RegionTiebreak
            };
            Some(LwwConflict {
                winner,
                loser,
                reason,
            })
        };
        assert_eq!(a.merge_report(b), expected, "conflict report");
    }

    fn after_event(
        &mut self,
        r: usize,
        state: &MaybeLww,
        _hist: &Hist,
        _writes: &[WriteRec<LwwInfo>],
    ) {
        // Receiving a state moves the receiver's clock past it, as a region does.
        if let Some(s) = &state.0 {
            self.hlcs[r].observe(s.ts, 0).unwrap();
        }
    }

    fn check(&self, state: &MaybeLww, hist: &Hist, writes: &[WriteRec<LwwInfo>]) {
        let Some(s) = &state.0 else {
            assert!(hist.is_empty());
            return;
        };
        assert_eq!(Some(&s.version()), lww_winner(hist, writes));
        // The expiry travels with the winning version: the winner's own, never another write's.
        let winner = hist
            .iter()
            .map(|&u| &writes[u].info)
            .max_by(|a, b| lww_key(&a.version).cmp(&lww_key(&b.version)));
        assert_eq!(
            s.expires_ms,
            winner.and_then(|w| w.expires_ms),
            "expiry of the winner"
        );
        // The version vector counts, per region, the writes causally before the state.
        let closure = closure_of(hist, writes);
        for (i, name) in REGION_NAMES.iter().enumerate() {
            let expect = closure
                .iter()
                .filter(|&&u| writes[u].region == i)
                .map(|&u| writes[u].seq)
                .max()
                .unwrap_or(0);
            assert_eq!(s.vv.get(&RegionId::new(name).unwrap()), expect);
        }
    }
}

proptest! {
    #[test]
    fn lww_laws(c in case(
        (0..6u64, prop::option::weighted(0.8, 0..4u8), prop::option::weighted(0.4, 1..5u64))
            .prop_map(|(phys, value, ttl)| LwwW { phys, value, ttl })
    )) {
        let m = LwwModel { hlcs: vec![Hlc::new(u64::MAX); 4] };
        run(m, c);
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-value register

#[derive(Clone, Debug)]
enum Seen {
    /// A blind write.
    Empty,
    /// A read at the writing replica just before the write.
    Local,
    /// An earlier read (anywhere), of which the client kept only the dots selected by the mask.
    Read(u16, u64),
}

#[derive(Clone, Debug)]
struct MvW {
    seen: Seen,
    ts: u64,
    value: Option<u8>,
}

#[derive(Clone, Debug)]
struct MvInfo {
    sibling: Sibling,
    /// The client's context for this write.
    seen: BTreeSet<Dot>,
}

#[derive(Default)]
struct MvModel {
    /// Contexts returned by earlier reads, as exact dot sets.
    reads: Vec<BTreeSet<Dot>>,
}

/// The reference context of the join of `hist`: every dot written or seen by those writes.
fn mv_ctx(hist: &Hist, writes: &[WriteRec<MvInfo>]) -> BTreeSet<Dot> {
    hist.iter()
        .flat_map(|&u| {
            let i = &writes[u].info;
            i.seen.iter().cloned().chain([i.sibling.dot.clone()])
        })
        .collect()
}

impl Model for MvModel {
    type S = MvRegister;
    type W = MvW;
    type I = MvInfo;

    fn bottom() -> MvRegister {
        MvRegister::default()
    }

    fn write(
        &mut self,
        state: &MvRegister,
        r: usize,
        w: &MvW,
        hist: &Hist,
        writes: &[WriteRec<MvInfo>],
    ) -> (MvRegister, MvInfo) {
        let seen: BTreeSet<Dot> = match &w.seen {
            Seen::Empty => BTreeSet::new(),
            Seen::Local => mv_ctx(hist, writes),
            Seen::Read(_, _) if self.reads.is_empty() => BTreeSet::new(),
            Seen::Read(k, mask) => self.reads[*k as usize % self.reads.len()]
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << (i % 64)) != 0)
                .map(|(_, d)| d.clone())
                .collect(),
        };
        let ctx: CausalContext = seen.iter().cloned().collect();
        let value = w.value.map(|v| vec![v]);
        // Every third write expires (the expiry is part of the sibling's content and must
        // merge like the rest of it).
        let expires = w.ts.is_multiple_of(3).then_some(w.ts + 5);
        let delta = MvRegister::write(
            Some(state),
            &ctx,
            &region(r),
            Timestamp::new(w.ts, 0),
            value,
        )
        .expiring(expires);
        assert_eq!(delta.siblings.len(), 1);
        let sibling = delta.siblings[0].clone();
        assert!(
            writes.iter().all(|u| u.info.sibling.dot != sibling.dot),
            "dot {:?} reused",
            sibling.dot
        );
        (delta, MvInfo { sibling, seen })
    }

    fn after_event(
        &mut self,
        _r: usize,
        state: &MvRegister,
        hist: &Hist,
        writes: &[WriteRec<MvInfo>],
    ) {
        let read = mv_ctx(hist, writes);
        assert_eq!(state.ctx, read.iter().cloned().collect::<CausalContext>());
        self.reads.push(read);
    }

    fn check(&self, state: &MvRegister, hist: &Hist, writes: &[WriteRec<MvInfo>]) {
        // Survivors: the writes no other write (in the join) had seen.
        let expected: Vec<Sibling> = hist
            .iter()
            .filter(|&&w| {
                let dot = &writes[w].info.sibling.dot;
                hist.iter()
                    .all(|&u| u == w || !writes[u].info.seen.contains(dot))
            })
            .map(|&w| {
                let s = &writes[w].info.sibling;
                (s.dot.clone(), s.clone())
            })
            .collect::<BTreeMap<Dot, Sibling>>()
            .into_values()
            .collect();
        assert_eq!(state.siblings, expected);
        assert_eq!(
            state.ctx,
            mv_ctx(hist, writes).into_iter().collect::<CausalContext>()
        );
        assert_eq!(
            state.sibling_count_at(0),
            expected.iter().filter(|s| s.value.is_some()).count()
        );
    }
}

proptest! {
    #[test]
    fn mvr_laws(c in case(
        (
            prop_oneof![
                Just(Seen::Empty),
                Just(Seen::Local),
                (any::<u16>(), any::<u64>()).prop_map(|(k, m)| Seen::Read(k, m)),
            ],
            0..10u64,
            prop::option::weighted(0.8, 0..4u8),
        ).prop_map(|(seen, ts, value)| MvW { seen, ts, value })
    )) {
        run(MvModel::default(), c);
    }
}

// ---------------------------------------------------------------------------------------------
// PN-counter

struct CounterModel;

impl Model for CounterModel {
    type S = PnCounter;
    type W = i64;
    type I = i64;

    fn bottom() -> PnCounter {
        PnCounter::default()
    }

    fn write(
        &mut self,
        state: &PnCounter,
        r: usize,
        w: &i64,
        _hist: &Hist,
        _writes: &[WriteRec<i64>],
    ) -> (PnCounter, i64) {
        (PnCounter::add(Some(state), &region(r), *w).unwrap(), *w)
    }

    fn check(&self, state: &PnCounter, hist: &Hist, writes: &[WriteRec<i64>]) {
        // Per region, a delta carries the region's totals up to that write, so the state counts
        // every write of a region up to the latest one it has received.
        let mut expected: i128 = 0;
        for i in 0..REGION_NAMES.len() {
            let latest = hist
                .iter()
                .filter(|&&u| writes[u].region == i)
                .map(|&u| writes[u].seq)
                .max()
                .unwrap_or(0);
            let (mut p, mut n) = (0u64, 0u64);
            for w in writes.iter().filter(|w| w.region == i && w.seq <= latest) {
                expected += i128::from(w.info);
                if w.info >= 0 {
                    p += w.info.unsigned_abs();
                } else {
                    n += w.info.unsigned_abs();
                }
            }
            assert_eq!(state.p(&region(i)), p);
            assert_eq!(state.n(&region(i)), n);
        }
        assert_eq!(state.value(), expected);
        if hist.len() == writes.len() {
            // Everything applied: the value is the sum of all deltas.
            assert_eq!(
                state.value(),
                writes.iter().map(|w| i128::from(w.info)).sum::<i128>()
            );
        }
    }
}

proptest! {
    #[test]
    fn counter_laws(c in case(
        prop_oneof![Just(0i64), -50..50i64, Just(i64::from(i32::MAX)), Just(i64::from(i32::MIN))]
    )) {
        run(CounterModel, c);
    }
}

// ---------------------------------------------------------------------------------------------
// OR-set

const ELEMENTS: [&str; 4] = ["e0", "e1", "e2", "e3"];

#[derive(Clone, Debug)]
struct SetW {
    add: Vec<usize>,
    remove: Vec<usize>,
}

#[derive(Clone, Debug)]
struct SetInfo {
    /// Elements added, with the dot each got.
    added: BTreeMap<usize, Dot>,
    /// Elements added or removed.
    touched: BTreeSet<usize>,
}

#[derive(Default)]
struct SetModel {
    /// Memo of `cancels(u, a, e)`.
    memo: RefCell<HashMap<(usize, usize, usize), bool>>,
}

impl SetModel {
    /// Whether write `u`'s delta removes the dot that write `a` gave element `e`: `u` touched `e`
    /// and `a`'s dot was still alive at `u`'s replica.
    fn cancels(&self, u: usize, a: usize, e: usize, writes: &[WriteRec<SetInfo>]) -> bool {
        if let Some(&b) = self.memo.borrow().get(&(u, a, e)) {
            return b;
        }
        let w = &writes[u];
        let b = u != a && w.info.touched.contains(&e) && self.alive(a, e, &w.hist, writes);
        self.memo.borrow_mut().insert((u, a, e), b);
        b
    }

    /// Whether the dot write `a` gave element `e` survives in the join of the deltas `hist`.
    fn alive(&self, a: usize, e: usize, hist: &Hist, writes: &[WriteRec<SetInfo>]) -> bool {
        hist.contains(&a)
            && writes[a].info.added.contains_key(&e)
            && hist.iter().all(|&u| !self.cancels(u, a, e, writes))
    }
}

impl Model for SetModel {
    type S = OrSet;
    type W = SetW;
    type I = SetInfo;

    fn bottom() -> OrSet {
        OrSet::default()
    }

    fn write(
        &mut self,
        state: &OrSet,
        r: usize,
        w: &SetW,
        _hist: &Hist,
        _writes: &[WriteRec<SetInfo>],
    ) -> (OrSet, SetInfo) {
        let add: Vec<String> = w.add.iter().map(|&e| ELEMENTS[e].to_string()).collect();
        let remove: Vec<String> = w.remove.iter().map(|&e| ELEMENTS[e].to_string()).collect();
        let delta = OrSet::update(Some(state), &region(r), &add, &remove);
        let added: BTreeMap<usize, Dot> = w
            .add
            .iter()
            .map(|&e| {
                let dots: Vec<&Dot> = delta.dots(ELEMENTS[e]).collect();
                assert_eq!(dots.len(), 1);
                (e, dots[0].clone())
            })
            .collect();
        // Removed-only elements are absent from the delta.
        for &e in &w.remove {
            assert_eq!(delta.contains(ELEMENTS[e]), w.add.contains(&e));
        }
        let touched = w.add.iter().chain(&w.remove).copied().collect();
        (delta, SetInfo { added, touched })
    }

    fn check(&self, state: &OrSet, hist: &Hist, writes: &[WriteRec<SetInfo>]) {
        for (e, name) in ELEMENTS.iter().enumerate() {
            let alive: BTreeSet<Dot> = hist
                .iter()
                .filter(|&&a| self.alive(a, e, hist, writes))
                .map(|&a| writes[a].info.added[&e].clone())
                .collect();
            let got: BTreeSet<Dot> = state.dots(name).cloned().collect();
            assert_eq!(got, alive, "dots of {name}");
            assert_eq!(state.contains(name), !alive.is_empty());
        }
        let members: Vec<&str> = ELEMENTS
            .iter()
            .copied()
            .filter(|e| state.contains(e))
            .collect();
        assert_eq!(state.members(), members);
        assert_eq!(state.len(), members.len());
    }
}

proptest! {
    #[test]
    fn orset_laws(c in case(
        (
            prop::collection::vec(0..4usize, 0..3),
            prop::collection::vec(0..4usize, 0..3),
        ).prop_map(|(add, remove)| SetW { add, remove })
    )) {
        run(SetModel::default(), c);
    }
}

/// The scenario the add-wins rule is about, spelled out: an add concurrent with a remove of the
/// same element survives it, whatever order the deltas arrive in.
#[test]
fn orset_concurrent_add_and_remove_add_wins() {
    let (a, b) = (region(0), region(1));
    let x = vec!["x".to_string()];
    let add = OrSet::update(None, &a, &x, &[]);
    let mut at_b = OrSet::default().merged(&add);
    let remove = OrSet::update(Some(&at_b), &b, &[], &x);
    at_b.merge(&remove);
    assert!(!at_b.contains("x"));
    let mut at_a = add.clone();
    let readd = OrSet::update(Some(&at_a), &a, &x, &[]);
    at_a.merge(&readd);
    for order in [
        [&add, &remove, &readd],
        [&readd, &remove, &add],
        [&remove, &readd, &add],
    ] {
        let s = order.iter().fold(OrSet::default(), |acc, d| acc.merged(d));
        assert!(s.contains("x"));
    }
}

// ---------------------------------------------------------------------------------------------
// Rate-limit windows (docs/design/rate-limits.md): a join-semilattice whose merge also drops
// every window but the two newest.

use atoll_core::crdt::ratewindow::RateWindows;

/// A state from raw `(region, window, count)` entries, through merges of one-entry deltas (the
/// only way states are built), with a window length of 1000 or, rarely, 2000 ms.
fn rate_state(entries: &[(usize, u64, u64)], long: bool) -> RateWindows {
    let window_ms = if long { 2_000 } else { 1_000 };
    let mut s = RateWindows {
        window_ms,
        windows: BTreeMap::new(),
    };
    for &(r, w, n) in entries {
        let mut d = RateWindows {
            window_ms,
            windows: BTreeMap::new(),
        };
        d.windows
            .insert(w * window_ms, BTreeMap::from([(region(r), n + 1)]));
        s.merge(&d);
    }
    s
}

proptest! {
    #[test]
    fn rate_windows_merge_is_a_join(
        a in prop::collection::vec((0..4usize, 0..6u64, 0..5u64), 0..8),
        b in prop::collection::vec((0..4usize, 0..6u64, 0..5u64), 0..8),
        c in prop::collection::vec((0..4usize, 0..6u64, 0..5u64), 0..8),
        long in prop::collection::vec(prop::bool::weighted(0.15), 3),
    ) {
        let (a, b, c) = (rate_state(&a, long[0]), rate_state(&b, long[1]), rate_state(&c, long[2]));
        prop_assert_eq!(a.clone().merged(&b), b.clone().merged(&a));
        prop_assert_eq!(a.clone().merged(&b).merged(&c), a.clone().merged(&b.clone().merged(&c)));
        prop_assert_eq!(a.clone().merged(&a), a.clone());
        // At most two windows, adjacent, and the newest of both sides' is kept.
        let m = a.clone().merged(&b);
        prop_assert!(m.windows.len() <= 2);
        if let (Some(lo), Some(hi)) = (m.windows.keys().next(), m.windows.keys().next_back()) {
            prop_assert!(hi - lo <= m.window_ms);
        }
        let bytes = codec::encode(&KeyStateWrap(m.clone())).unwrap();
        prop_assert_eq!(codec::decode::<KeyStateWrap>(&bytes).unwrap().0, m);
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct KeyStateWrap(RateWindows);
