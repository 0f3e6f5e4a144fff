//! Property test of the home table (`atoll_core::home`, `docs/design/owned-keyspaces.md`): over
//! random sequences of moves (begins, releases, completions, aborts, from right and wrong
//! proposers, with stale and fresh versions, over key and prefix selectors), for every probe key:
//!
//! - it has exactly one home in every state;
//! - its home changes only through a `Complete` of a move that covered it and had been released
//!   by the old home or was allowed to be forced, and the new home is that move's target;
//! - from the `Begin` of a move that covers it until that move ends, the key is moving in every
//!   state (so neither home's gate lets it be written), and a move's keys are those its selectors
//!   decide.
//!
//! Backs the Architecture Invariant in `crates/atoll-core/src/home.rs` together with the timing
//! argument of the design note (the end-to-end test `tests/owned.rs` runs it on real processes).

use atoll_core::RegionId;
use atoll_core::home::{
    HomeAnswer, HomeCommand, HomeRules, HomeTable, MoveOutcome, Selector, resolve,
};
use proptest::prelude::*;

const KS: &str = "p";
const REGIONS: [&str; 3] = ["us", "eu", "ap"];
const PROBES: [&[u8]; 7] = [b"us:1", b"us:2", b"eu:1", b"eu:12", b"ap:1", b"zz", b"e"];

fn r(i: usize) -> RegionId {
    RegionId::new(REGIONS[i % 3]).unwrap()
}

fn rules() -> HomeRules {
    HomeRules {
        prefixes: vec![(b"us:".to_vec(), r(0)), (b"eu:".to_vec(), r(1))],
        default: r(2),
    }
}

fn selector(i: u8) -> Selector {
    match i % 7 {
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
    ]
}

fn homes(t: &HomeTable) -> Vec<(RegionId, bool)> {
    PROBES
        .iter()
        .map(|k| {
            let res = resolve(&rules(), t, KS, k);
            (res.home, res.moving.is_some())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn homes_change_only_through_a_released_or_forced_move(ops in proptest::collection::vec(op(), 1..60)) {
        let rules = rules();
        let mut t = HomeTable::default();
        for o in ops {
            let before = homes(&t);
            let current = t.moves.get(KS).cloned();
            let id = |right: bool| current.as_ref().map_or(0, |m| if right { m.id } else { m.id + 7 });
            let cmd = match o {
                Op::Begin { sel, to, honest, force, junk } => {
                    let sel = selector(sel);
                    let probe = match &sel { Selector::Prefix(p) | Selector::Key(p) => p.clone() };
                    let from = t
                        .overrides
                        .get(KS)
                        .and_then(|o| o.get(&sel))
                        .map_or_else(|| resolve(&rules, &t, KS, &probe).home, |o| o.home.clone());
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
            };
            let answer = t.apply(&cmd);
            let after = homes(&t);
            for (i, ((h0, m0), (h1, m1))) in before.iter().zip(&after).enumerate() {
                let key = PROBES[i];
                if h0 != h1 {
                    // Only a completion of the move that covered this key.
                    let m = current.as_ref().expect("a home changed with no move in flight");
                    prop_assert!(matches!(answer, HomeAnswer::Completed { .. }), "{cmd:?} changed the home of {key:?}");
                    prop_assert!(*m0, "{key:?} changed home without moving first");
                    prop_assert_eq!(h0, &m.from);
                    prop_assert_eq!(h1, &m.to);
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
                        prop_assert_eq!(&res.home, &m.from);
                    }
                }
            }
        }
    }
}
