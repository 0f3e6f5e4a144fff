//! The pure checkers against histories with known losses (each must be found and listed), with
//! none (no false alarms), per keyspace policy; zombie and duplicate histories.

use atoll_drill::check::{self, FencingRules, Isolation};
use atoll_drill::history::{FinalState, Hlc, Kind, Observed, Outcome, WriteRecord};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn w(id: u64, kind: Kind, key: &str, value: &str, region: &str, at: u64) -> WriteRecord {
    WriteRecord {
        id,
        client: 0,
        via: region.into(),
        keyspace: kind.as_str().into(),
        kind,
        key: key.into(),
        value: value.into(),
        delta: if kind == Kind::Counter { 1 } else { 0 },
        fenced: false,
        sent_ms: at,
        done_ms: at + 5,
        outcome: Outcome::Acked {
            region: region.into(),
            epoch: None,
            ts: Some(Hlc {
                wall_ms: 1_000_000 + at,
                logical: 0,
            }),
        },
    }
}

fn unknown(mut r: WriteRecord) -> WriteRecord {
    r.outcome = Outcome::Unknown {
        reason: "timeout".into(),
    };
    r
}

fn state(regions: &[&str], keys: &[(Kind, &str, Observed)]) -> FinalState {
    let mut f = FinalState::new();
    for r in regions {
        let mut m = BTreeMap::new();
        for (k, key, o) in keys {
            m.insert((k.as_str().to_string(), key.to_string()), o.clone());
        }
        f.insert(r.to_string(), m);
    }
    f
}

#[test]
fn nothing_lost_no_alarm_for_every_policy() {
    let h = vec![
        w(1, Kind::Lww, "a", "v1", "r1", 10),
        w(2, Kind::Lww, "a", "v2", "r2", 20),
        w(3, Kind::Mvr, "m1", "x1", "r1", 30),
        w(4, Kind::Counter, "c", "1", "r1", 40),
        w(5, Kind::Counter, "c", "1", "r2", 50),
        unknown(w(6, Kind::Counter, "c", "1", "r2", 55)),
        w(7, Kind::Set, "s", "m7", "r1", 60),
        w(8, Kind::Set, "s", "m8", "r2", 70),
    ];
    let fin = state(
        &["r1", "r2", "r3"],
        &[
            (Kind::Lww, "a", Observed::Lww { value: "v2".into() }),
            (
                Kind::Mvr,
                "m1",
                Observed::Mvr {
                    values: vec!["x1".into()],
                },
            ),
            // The unknown increment was applied: 3 is allowed, neither lost nor a duplicate.
            (Kind::Counter, "c", Observed::Counter { value: 3 }),
            (
                Kind::Set,
                "s",
                Observed::Set {
                    members: vec!["m7".into(), "m8".into()],
                },
            ),
        ],
    );
    let r = check::rpo(&h, &fin);
    assert!(r.lost.is_empty(), "{:?}", r.lost);
    assert_eq!(r.checked_writes, 7);
    assert!(check::duplicates(&h, &fin).is_empty());
}

#[test]
fn lww_superseded_by_a_later_or_unknown_write_is_not_lost() {
    let h = vec![
        w(1, Kind::Lww, "a", "v1", "r1", 10),
        unknown(w(2, Kind::Lww, "a", "v2", "r2", 20)),
    ];
    let fin = state(
        &["r1"],
        &[(Kind::Lww, "a", Observed::Lww { value: "v2".into() })],
    );
    assert!(check::rpo(&h, &fin).lost.is_empty());
}

/// Two lww writes with the same HLC timestamp from different regions: the register keeps the
/// greater region's (found in simulation, where two regions can stamp the same millisecond). The
/// loser is superseded, not lost; a region holding the loser's value instead of the winner's has
/// lost the winner.
#[test]
fn lww_ties_go_to_the_greater_region_as_in_the_register() {
    let mut a = w(1, Kind::Lww, "k", "from-a", "region-a", 10);
    let mut b = w(2, Kind::Lww, "k", "from-b", "region-b", 10);
    for r in [&mut a, &mut b] {
        if let Outcome::Acked { ts, .. } = &mut r.outcome {
            *ts = Some(Hlc {
                wall_ms: 5,
                logical: 0,
            });
        }
    }
    let h = vec![a, b];
    let winner = state(
        &["region-a", "region-b"],
        &[(
            Kind::Lww,
            "k",
            Observed::Lww {
                value: "from-b".into(),
            },
        )],
    );
    assert!(check::rpo(&h, &winner).lost.is_empty());
    let loser = state(
        &["region-a"],
        &[(
            Kind::Lww,
            "k",
            Observed::Lww {
                value: "from-a".into(),
            },
        )],
    );
    let lost = check::rpo(&h, &loser).lost;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].value, "from-b");
}

#[test]
fn every_known_loss_is_found_and_listed() {
    let h = vec![
        w(1, Kind::Lww, "a", "v1", "r1", 10),
        w(2, Kind::Lww, "a", "v2", "r2", 20),
        w(3, Kind::Mvr, "m1", "x1", "r1", 30),
        w(4, Kind::Counter, "c", "1", "r1", 40),
        w(5, Kind::Counter, "c", "1", "r2", 50),
        w(6, Kind::Set, "s", "m6", "r1", 60),
        w(7, Kind::Set, "s", "m7", "r2", 70),
        w(8, Kind::Lww, "b", "only", "r2", 80),
    ];
    let fin = state(
        &["r3"],
        &[
            // r3 holds the older lww value: write 2 is lost (write 1 was superseded by it).
            (Kind::Lww, "a", Observed::Lww { value: "v1".into() }),
            (Kind::Mvr, "m1", Observed::Mvr { values: vec![] }),
            (Kind::Counter, "c", Observed::Counter { value: 1 }),
            (
                Kind::Set,
                "s",
                Observed::Set {
                    members: vec!["m6".into()],
                },
            ),
            (Kind::Lww, "b", Observed::Missing),
        ],
    );
    let r = check::rpo(&h, &fin);
    let ids: Vec<u64> = r.lost.iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![2, 3, 5, 7, 8], "{:#?}", r.lost);
    assert!(r.lost.iter().all(|l| l.region == "r3"));
    let counter = r
        .lost
        .iter()
        .find(|l| l.kind == Kind::Counter)
        .expect("counter loss");
    assert!(counter.found.contains("1 missing"), "{}", counter.found);
}

#[test]
fn an_unreadable_region_makes_the_check_incomplete_not_clean() {
    let h = vec![w(1, Kind::Lww, "a", "v1", "r1", 10)];
    let fin = state(
        &["r1"],
        &[(
            Kind::Lww,
            "a",
            Observed::Unreadable {
                reason: "refused".into(),
            },
        )],
    );
    let r = check::rpo(&h, &fin);
    assert!(r.lost.is_empty());
    assert_eq!(r.unchecked.len(), 1);
}

#[test]
fn duplicates_of_non_idempotent_writes_are_found() {
    let h = vec![
        w(1, Kind::Counter, "c", "1", "r1", 10),
        unknown(w(2, Kind::Counter, "c", "1", "r1", 20)),
        w(3, Kind::Mvr, "m", "x", "r1", 30),
    ];
    let fin = state(
        &["r1"],
        &[
            (Kind::Counter, "c", Observed::Counter { value: 4 }),
            (
                Kind::Mvr,
                "m",
                Observed::Mvr {
                    values: vec!["x".into(), "x".into()],
                },
            ),
        ],
    );
    let d = check::duplicates(&h, &fin);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(d.iter().map(|d| d.extra).sum::<i64>(), 3);
}

fn leased(mut r: WriteRecord, epoch: u64) -> WriteRecord {
    if let Outcome::Acked { epoch: e, .. } = &mut r.outcome {
        *e = Some(epoch);
    }
    r
}

#[test]
fn a_write_of_an_old_epoch_after_a_newer_one_was_acknowledged_is_a_zombie() {
    let rules = FencingRules {
        leased: true,
        quorum: false,
        lease_ms: 5000,
    };
    let h = vec![
        leased(w(1, Kind::Lww, "a", "1", "us", 100), 1),
        // eu took over under epoch 2 and acknowledged at 2005.
        leased(w(2, Kind::Lww, "a", "2", "eu", 2000), 2),
        // us acknowledged a write of epoch 1 sent at 3000: a zombie.
        leased(w(3, Kind::Lww, "a", "3", "us", 3000), 1),
        // us writes sent before eu's first ack are fine (the client cannot tell).
        leased(w(4, Kind::Lww, "a", "4", "us", 1990), 1),
    ];
    let z = check::zombies(&h, &[], &rules);
    assert_eq!(z.iter().map(|z| z.id).collect::<Vec<_>>(), vec![3], "{z:?}");
    // The same history in order is clean.
    let clean = vec![h[0].clone(), h[3].clone(), h[1].clone()];
    assert!(check::zombies(&clean, &[], &rules).is_empty());
}

#[test]
fn a_read_only_write_acknowledged_by_an_isolated_region_after_the_lease_bound_is_a_zombie() {
    let rules = FencingRules {
        leased: false,
        quorum: true,
        lease_ms: 5000,
    };
    let fenced = |id, at| {
        let mut r = w(id, Kind::Lww, "inv", "x", "us", at);
        r.fenced = true;
        r.value = format!("v{id}");
        r
    };
    let h = vec![
        fenced(1, 12_000),                       // within the bound: allowed
        fenced(2, 16_000),                       // 6 s after the cut: zombie
        w(3, Kind::Lww, "s", "y", "us", 16_000), // an available keyspace: allowed
        fenced(4, 40_000),                       // after the heal: allowed
    ];
    let iso = [Isolation {
        region: "us".into(),
        from_ms: 10_000,
        to_ms: 30_000,
    }];
    let z = check::zombies(&h, &iso, &rules);
    assert_eq!(z.iter().map(|z| z.id).collect::<Vec<_>>(), vec![2], "{z:?}");
    // Without quorum fencing nothing must be refused: no zombies.
    let rules = FencingRules {
        quorum: false,
        ..rules
    };
    assert!(check::zombies(&h, &iso, &rules).is_empty());
}

proptest! {
    /// Random histories of every policy, replicated to three regions; a random subset of the
    /// acknowledged writes is dropped from one region. The checker lists exactly the dropped
    /// writes that nothing later superseded, and nothing when none were dropped.
    #[test]
    fn the_rpo_checker_finds_exactly_the_dropped_writes(
        ops in proptest::collection::vec((0u8..4, 0u8..3, 0u8..3, any::<bool>()), 1..60),
        drop_region in 0usize..3,
    ) {
        let regions = ["r0", "r1", "r2"];
        let mut h = Vec::new();
        for (i, (kind, key, region, _)) in ops.iter().enumerate() {
            let kind = [Kind::Lww, Kind::Mvr, Kind::Counter, Kind::Set][*kind as usize];
            let key = if kind == Kind::Mvr { format!("m{i}") } else { format!("k{key}") };
            h.push(w(i as u64 + 1, kind, &key, &format!("v{i}"), regions[*region as usize], i as u64 * 10));
        }
        let dropped: Vec<bool> = ops.iter().map(|o| o.3).collect();
        // Apply every write in each region; region `drop_region` misses the dropped ones.
        let mut fin = FinalState::new();
        for (ri, r) in regions.iter().enumerate() {
            let mut m: BTreeMap<(String, String), Observed> = BTreeMap::new();
            for (i, wr) in h.iter().enumerate() {
                if ri == drop_region && dropped[i] { continue; }
                let id = (wr.keyspace.clone(), wr.key.clone());
                match wr.kind {
                    Kind::Lww => { m.insert(id, Observed::Lww { value: wr.value.clone() }); }
                    Kind::Mvr => { m.insert(id, Observed::Mvr { values: vec![wr.value.clone()] }); }
                    Kind::Counter => {
                        let e = m.entry(id).or_insert(Observed::Counter { value: 0 });
                        if let Observed::Counter { value } = e { *value += 1; }
                    }
                    Kind::Set => {
                        let e = m.entry(id).or_insert(Observed::Set { members: vec![] });
                        if let Observed::Set { members } = e { members.push(wr.value.clone()); }
                    }
                }
            }
            fin.insert(r.to_string(), m);
        }
        let r = check::rpo(&h, &fin);
        // Expected: in the dropping region, a dropped mvr/set write; a counter key with a drop
        // (once per key); an lww write unless a later kept write of its key superseded it.
        let mut want: Vec<(String, u64)> = Vec::new();
        let mut counter_keys = std::collections::BTreeSet::new();
        for (i, wr) in h.iter().enumerate() {
            let lost = match wr.kind {
                Kind::Mvr | Kind::Set => dropped[i],
                Kind::Counter => dropped[i] && counter_keys.insert(wr.key.clone()),
                Kind::Lww => {
                    // Lost iff the region's final value of the key is older than this write.
                    let last_kept = h.iter().enumerate().rev()
                        .find(|(j, x)| x.kind == Kind::Lww && x.key == wr.key && !dropped[*j])
                        .map(|(j, _)| j);
                    last_kept.is_none_or(|j| j < i)
                }
            };
            if lost { want.push((regions[drop_region].to_string(), wr.id)); }
        }
        let mut got: Vec<(String, u64)> = r.lost.iter().map(|l| (l.region.clone(), if l.kind == Kind::Counter { 0 } else { l.id })).collect();
        let mut want: Vec<(String, u64)> = want.into_iter().map(|(r, id)| {
            let kind = h[id as usize - 1].kind;
            (r, if kind == Kind::Counter { 0 } else { id })
        }).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
        prop_assert!(check::duplicates(&h, &fin).is_empty());
    }
}
