//! Property test of the home table (`atoll_core::home`, `docs/design/owned-keyspaces.md`): over
//! random sequences of moves (begins, releases, completions, aborts, from right and wrong
//! proposers, with stale and fresh versions, over key, prefix and hash selectors) and first-write
//! claims, under rules with a default home and without one (homed by first write), for every
//! probe key:
//!
//! - it has at most one home in every state, and once it has one it always has one;
//! - its home changes only through a `Complete` of a move that covered it and had been released
//!   by the old home or was allowed to be forced, and the new home is that move's target, or,
//!   for a key without a home, through the first `Claim` of it, which homes it at the claimant;
//! - from the `Begin` of a move that covers it until that move ends, the key is moving in every
//!   state (so neither home's gate lets it be written), and a move's keys are those its selectors
//!   decide.
//!
//! Backs the Architecture Invariant in `crates/atoll-core/src/home.rs` together with the timing
//! argument of the design note (the end-to-end test `tests/e2e/owned.rs` runs it on real processes).

use atoll_core::RegionId;
use atoll_core::home::{
    HomeAnswer, HomeCommand, HomeRules, HomeTable, MoveOutcome, Selector, home_of_selector, resolve,
};
use proptest::prelude::*;

const KS: &str = "p";
const REGIONS: [&str; 3] = ["us", "eu", "ap"];
const PROBES: [&[u8]; 9] = [
    b"us:1", b"us:2", b"eu:1", b"eu:12", b"ap:1", b"zz", b"e", b"k1", b"k2",
];

fn r(i: usize) -> RegionId {
    RegionId::new(REGIONS[i % 3]).unwrap()
}

/// `first_write`: no default home (keys no rule covers are homed by their first write).
fn rules(first_write: bool) -> HomeRules {
    HomeRules {
        prefixes: vec![(b"us:".to_vec(), r(0)), (b"eu:".to_vec(), r(1))],
        hashes: vec![(0, 20_000, r(1)), (40_000, 50_000, r(0))],
        default: (!first_write).then(|| r(2)),
    }
}

fn selector(i: u8) -> Selector {
    match i % 9 {
        7 => Selector::Hash { lo: 0, hi: 20_000 },
        8 => Selector::Key(b"k1".to_vec()),
        0 => Selector::Prefix(b"us:".to_vec()),
        1 => Selector::Prefix(b"eu:".to_vec()),
        2 => Selector::Prefix(b"eu:1".to_vec()),
        3 => Selector::Prefix(Vec::new()),
        4 => Selector::Key(b"us:1".to_vec()),
        5 => Selector::Key(b"eu:12".to_vec()),
        _ => Selector::Key(b"zz".to_vec()),
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Begin a move of selector `sel` to region `to`; `honest`: the table version as a proposer
    /// resolves it now; otherwise an older one (a proposer that resolved a stale table).
    Begin {
        sel: u8,
        to: usize,
        honest: bool,
        force: bool,
        junk: u64,
    },
    Release {
        by: usize,
        head: u64,
        right_id: bool,
    },
    Complete {
        by: usize,
        forced: bool,
        right_id: bool,
    },
    Abort {
        right_id: bool,
    },
    Claim {
        probe: usize,
        by: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            any::<u8>(),
            0..3usize,
            any::<bool>(),
            any::<bool>(),
            0..4u64
        )
            .prop_map(|(sel, to, honest, force, junk)| Op::Begin {
                sel,
                to,
                honest,
                force,
                junk
            }),
        (0..3usize, 0..100u64, any::<bool>()).prop_map(|(by, head, right_id)| Op::Release {
            by,
            head,
            right_id
        }),
        (0..3usize, any::<bool>(), any::<bool>()).prop_map(|(by, forced, right_id)| {
            Op::Complete {
                by,
                forced,
                right_id,
            }
        }),
        any::<bool>().prop_map(|right_id| Op::Abort { right_id }),
        (0..PROBES.len(), 0..3usize).prop_map(|(probe, by)| Op::Claim { probe, by }),
    ]
}

fn homes(rules: &HomeRules, t: &HomeTable) -> Vec<(Option<RegionId>, bool)> {
    PROBES
        .iter()
        .map(|k| {
            let res = resolve(rules, t, KS, k);
            (res.home, res.moving.is_some())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn homes_change_only_through_a_released_or_forced_move(
        ops in proptest::collection::vec(op(), 1..60),
        first_write in any::<bool>(),
    ) {
        let rules = rules(first_write);
        let mut t = HomeTable::default();
        for o in ops {
            let before = homes(&rules, &t);
            let current = t.moves.get(KS).cloned();
            let id = |right: bool| current.as_ref().map_or(0, |m| if right { m.id } else { m.id + 7 });
            let cmd = match o {
                Op::Begin { sel, to, honest, force, junk } => {
                    let sel = selector(sel);
                    // A proposer moves only a selector with one home (the server refuses the
                    // others before proposing).
                    let Ok(from) = home_of_selector(&rules, &t, KS, &sel) else { continue };
                    HomeCommand::Begin {
                        keyspace: KS.into(),
                        selectors: vec![sel],
                        // The machine trusts `from` as resolved at `expect_version` (proposers
                        // are authenticated members); a stale version is what it must catch.
                        from,
                        to: r(to),
                        expect_version: if honest { t.version } else { t.version.wrapping_sub(junk + 1) },
                        takeover: force,
                    }
                }
                Op::Release { by, head, right_id } => HomeCommand::Release {
                    keyspace: KS.into(),
                    id: id(right_id),
                    from: r(by),
                    head,
                },
                Op::Complete { by, forced, right_id } => HomeCommand::Complete {
                    keyspace: KS.into(),
                    id: id(right_id),
                    to: r(by),
                    forced: forced.then_some((1, 2)),
                },
                Op::Abort { right_id } => HomeCommand::Abort {
                    keyspace: KS.into(),
                    id: id(right_id),
                    reason: "test".into(),
                },
                Op::Claim { probe, by } => {
                    // A region claims only a key it resolves as unclaimed: no config rule homes
                    // it (the rules are the same everywhere); a stale region may claim a key
                    // that a claim or a move homed meanwhile, which the machine must answer.
                    if resolve(&rules, &HomeTable::default(), KS, PROBES[probe]).home.is_some() {
                        continue;
                    }
                    HomeCommand::Claim { keyspace: KS.into(), key: PROBES[probe].to_vec(), region: r(by) }
                }
            };
            let version = t.version;
            let answer = t.apply(&cmd);
            let after = homes(&rules, &t);
            if let HomeCommand::Claim { key, region, .. } = &cmd {
                prop_assert_eq!(t.version, version, "a claim bumps no version");
                let i = PROBES.iter().position(|p| p == key).expect("a probe");
                match &answer {
                    HomeAnswer::Claimed { home } => {
                        prop_assert_eq!(Some(home), after[i].0.as_ref(), "the answer names the home");
                        if before[i].0.is_none() {
                            prop_assert_eq!(home, region, "the first claim homes the key at its claimant");
                        }
                    }
                    other => prop_assert!(false, "claim answered {other:?}"),
                }
                for (j, (b, a)) in before.iter().zip(&after).enumerate() {
                    if j != i || b.0.is_some() {
                        prop_assert_eq!(b, a, "a claim of {:?} changed {:?}", key, PROBES[j]);
                    }
                }
                if !first_write {
                    prop_assert_eq!(&before, &after, "with a default every key has a home");
                }
                continue;
            }
            for (i, ((h0, m0), (h1, m1))) in before.iter().zip(&after).enumerate() {
                let key = PROBES[i];
                prop_assert!(h0.is_none() || h1.is_some(), "{key:?} lost its home: {cmd:?}");
                if h0 != h1 {
                    // Only a completion of the move that covered this key.
                    let m = current.as_ref().expect("a home changed with no move in flight");
                    prop_assert!(matches!(answer, HomeAnswer::Completed { .. }), "{cmd:?} changed the home of {key:?}");
                    prop_assert!(*m0, "{key:?} changed home without moving first");
                    prop_assert_eq!(h0.as_ref(), Some(&m.from));
                    prop_assert_eq!(h1.as_ref(), Some(&m.to));
                    let rec = t.history.back().expect("recorded");
                    match &rec.outcome {
                        MoveOutcome::Handed => prop_assert!(m.released_head.is_some()),
                        MoveOutcome::Forced { .. } => prop_assert!(m.released_head.is_none()),
                        MoveOutcome::Aborted { .. } => prop_assert!(false, "an abort moved a key"),
                    }
                }
                if *m0 && !matches!(answer, HomeAnswer::Completed { .. } | HomeAnswer::Aborted) {
                    prop_assert!(*m1, "{key:?} stopped moving without the move ending: {cmd:?}");
                }
            }
            // A refused command changes nothing at all.
            if matches!(answer, HomeAnswer::Refused(_)) {
                prop_assert_eq!(before, after);
                prop_assert_eq!(current, t.moves.get(KS).cloned());
            }
            // Every key a move covers is moving, and resolves to the move's old home.
            if let Some(m) = t.moves.get(KS) {
                for k in PROBES {
                    let res = resolve(&rules, &t, KS, k);
                    if m.selectors.contains(&res.selector) {
                        prop_assert!(res.moving.is_some());
                        prop_assert_eq!(res.home.as_ref(), Some(&m.from));
                    }
                }
            }
        }
    }
}
