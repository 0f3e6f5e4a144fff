//! Property test of the lease protocol (`docs/design/fencing.md`): over random event orders,
//! message delays and losses, crashes, partitions of members from the control group and clock
//! drift up to the configured bound, two members never hold write windows at the same instant of
//! true time. The control group is modelled as one log (commit = append in arrival order); each
//! member applies it late and in order, and hears answers late or never.
//!
//! Backs the Architecture Invariant in `crates/atoll-core/src/fence.rs`. The margin is set to the
//! smallest the config accepts, so the test sits exactly at the bound the proof needs.

use atoll_core::RegionId;
use atoll_core::fence::{Answer, Command, Fence, FenceConfig, LeaseState, PromotionView, Topology};
use proptest::prelude::*;

/// SplitMix64: a small deterministic generator, so a failing seed replays exactly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    /// A message delay: mostly short, sometimes very long (a late answer is the classic way to
    /// get a lease wrong).
    fn delay(&mut self, long_ms: u64) -> u64 {
        if self.chance(300) {
            1 + self.below(long_ms)
        } else {
            1 + self.below(40)
        }
    }
}

struct Member {
    fence: Fence,
    /// Local clock: `offset + t * rate`, `rate` within the drift bound.
    offset: f64,
    rate: f64,
    /// Log entries applied so far.
    applied: usize,
    /// Cut from the control group until this true time (proposals and applies stall).
    cut_until: u64,
    down_until: u64,
}

impl Member {
    fn local(&self, t: u64) -> u64 {
        (self.offset + t as f64 * self.rate) as u64
    }
}

enum Ev {
    /// A proposal reaches the log.
    Commit {
        from: usize,
        cmd: Command,
        sent_at: u64,
    },
    /// An answer reaches its proposer.
    Answer {
        to: usize,
        cmd: Command,
        sent_at: u64,
        answer: Answer,
        incarnation: u64,
    },
}

/// Runs one seed; returns how many times the write window changed hands.
fn run(seed: u64, drift_ppm: u64, topology: Topology) -> Result<u64, String> {
    let mut rng = Rng(seed);
    let trace = std::env::var("FENCE_TRACE").is_ok();
    let names: Vec<RegionId> = ["a", "b", "c"]
        .iter()
        .map(|s| RegionId::new(s).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mk = |i: usize| {
        let mut c = FenceConfig::new(names[i].clone(), topology, names.clone(), names[0].clone());
        c.max_drift_ppm = drift_ppm;
        c.margin_ms = c.min_margin_ms();
        c
    };
    for i in 0..3 {
        mk(i).validate()?;
    }
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let d = (rng.below(2 * drift_ppm + 1) as f64 - drift_ppm as f64) / 1e6;
            let offset = rng.below(1_000_000) as f64;
            let m = Member {
                fence: Fence::new(mk(i), 0),
                offset,
                rate: 1.0 + d,
                applied: 0,
                cut_until: 0,
                down_until: 0,
            };
            let now = m.local(0);
            Member {
                fence: Fence::new(mk(i), now),
                ..m
            }
        })
        .collect();
    let mut incarnation = [0u64; 3];
    // The log and the state after each entry.
    let mut log_states: Vec<LeaseState> = vec![];
    let mut state = LeaseState::default();
    let mut events: Vec<(u64, Ev)> = vec![];
    let end = 90_000u64;
    let mut holder_at: Vec<Option<usize>> = vec![];
    let mut windows_seen = 0u64;
    for t in 0..end {
        // Faults.
        if rng.chance(1) {
            let i = rng.below(3) as usize;
            members[i].cut_until = t + rng.below(15_000);
            if trace {
                eprintln!("t={t} cut {i} until {}", members[i].cut_until);
            }
        }
        if rng.below(3_000) == 0 {
            let i = rng.below(3) as usize;
            if members[i].down_until < t {
                members[i].down_until = t + rng.below(10_000);
                incarnation[i] += 1;
                let now = members[i].local(t);
                members[i].fence = Fence::new(mk(i), now);
                members[i].applied = 0;
                if trace {
                    eprintln!("t={t} crash {i} until {}", members[i].down_until);
                }
            }
        }
        // Deliver due events (in time order; ties in insertion order).
        events.sort_by_key(|(at, _)| *at);
        let due: Vec<(u64, Ev)> = {
            let k = events.iter().take_while(|(at, _)| *at <= t).count();
            events.drain(..k).collect()
        };
        for (_, ev) in due {
            match ev {
                Ev::Commit { from, cmd, sent_at } => {
                    let answer = state.apply(&cmd);
                    if trace {
                        eprintln!(
                            "t={t} commit from {from} sent_at={sent_at} {cmd:?} -> {answer:?}"
                        );
                    }
                    log_states.push(state.clone());
                    if !rng.chance(100) {
                        events.push((
                            t + rng.delay(4_000),
                            Ev::Answer {
                                to: from,
                                cmd,
                                sent_at,
                                answer,
                                incarnation: incarnation[from],
                            },
                        ));
                    }
                }
                Ev::Answer {
                    to,
                    cmd,
                    sent_at,
                    answer,
                    incarnation: inc,
                } => {
                    // An answer to a previous incarnation is not heard (its memory is gone).
                    if trace {
                        eprintln!(
                            "t={t} answer to {to} (inc {inc} vs {}) {answer:?} local={}",
                            incarnation[to],
                            members[to].local(t)
                        );
                    }
                    if inc == incarnation[to] && members[to].down_until <= t {
                        let now = members[to].local(t);
                        members[to]
                            .fence
                            .on_answer(now, sent_at, &cmd, Some(&answer));
                    }
                }
            }
        }
        #[allow(clippy::needless_range_loop)] // `i` names the member in events too
        for i in 0..3 {
            let m = &mut members[i];
            if m.down_until > t {
                continue;
            }
            let now = m.local(t);
            // Apply the log late and in order (a cut member stalls).
            if m.cut_until <= t && m.applied < log_states.len() && rng.chance(200) {
                let upto =
                    m.applied + 1 + rng.below((log_states.len() - m.applied) as u64) as usize;
                m.applied = upto;
                m.fence.on_applied(now, &log_states[upto - 1]);
                if trace {
                    let st = &log_states[upto - 1];
                    eprintln!(
                        "t={t} {i} applies v{} e{} holder {:?} local={now}",
                        st.version, st.epoch, st.holder
                    );
                }
            }
            if t % 10 == 0 {
                // A member cut off from the log may still get proposals through (a relay):
                // its view is stale, which is what the state machine's checks are for.
                let proposals_pass = m.cut_until > t && i % 2 == 0;
                let view = PromotionView {
                    holder_head: Some(0),
                    holder_watermark_ms: Some(0),
                    my_applied: 0,
                    my_claim_ms: Some(0),
                    others: vec![],
                };
                // Occasionally a holder hands over, or an operator promotes.
                if topology.leased() && rng.chance(2) {
                    let target = names[rng.below(3) as usize].clone();
                    if m.fence.begin_handover(&target).is_ok() {
                        // The caller would wait for the target to catch up; here: at once.
                        if let Ok(cmd) = m.fence.transfer(now, 0) {
                            if m.cut_until <= t || proposals_pass {
                                events.push((
                                    t + rng.delay(2_000),
                                    Ev::Commit {
                                        from: i,
                                        cmd,
                                        sent_at: now,
                                    },
                                ));
                            }
                        } else {
                            m.fence.abort_handover();
                        }
                    }
                }
                if topology.leased()
                    && rng.chance(1)
                    && let Ok(cmd) = m.fence.promote(now, 0, &view, true)
                    && (m.cut_until <= t || proposals_pass)
                {
                    events.push((
                        t + rng.delay(2_000),
                        Ev::Commit {
                            from: i,
                            cmd,
                            sent_at: now,
                        },
                    ));
                }
                if let Some(cmd) = m.fence.tick(now, 0, Some(&view))
                    && (m.cut_until <= t || proposals_pass)
                    && !rng.chance(50)
                {
                    events.push((
                        t + rng.delay(2_000),
                        Ev::Commit {
                            from: i,
                            cmd,
                            sent_at: now,
                        },
                    ));
                }
            }
        }
        // The check: at this instant of true time, at most one member may stamp a write.
        if topology.leased() {
            let writers: Vec<usize> = (0..3)
                .filter(|&i| {
                    members[i].down_until <= t
                        && members[i].fence.permit(members[i].local(t), false).is_ok()
                })
                .collect();
            if writers.len() > 1 {
                return Err(format!(
                    "seed {seed}: at t={t} ms members {writers:?} both hold a write window (epochs {:?})",
                    writers
                        .iter()
                        .map(|&i| members[i].fence.permit(members[i].local(t), false))
                        .collect::<Vec<_>>()
                ));
            }
            let w = writers.first().copied();
            if w.is_some() && holder_at.last() != Some(&w) {
                windows_seen += 1;
            }
            holder_at.push(w);
            if holder_at.len() > 2 {
                holder_at.remove(0);
            }
        }
    }
    // A seed in which nobody got a window (a member crashed at the wrong time) checks little;
    // `fixed_seeds_cover_promotions` makes sure the schedule moves the lease around.
    Ok(windows_seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn never_two_windows_active_standby(seed in any::<u64>(), drift in prop_oneof![Just(0u64), Just(1_000u64), Just(10_000u64)]) {
        if let Err(e) = run(seed, drift, Topology::ActiveStandby) {
            prop_assert!(false, "{e}");
        }
    }

    #[test]
    fn never_two_windows_active_passive(seed in any::<u64>(), drift in prop_oneof![Just(1_000u64), Just(10_000u64)]) {
        if let Err(e) = run(seed, drift, Topology::ActivePassive) {
            prop_assert!(false, "{e}");
        }
    }
}

#[test]
fn fixed_seeds_cover_promotions() {
    let mut handovers = 0;
    for seed in 0..8 {
        match run(seed, 10_000, Topology::ActiveStandby) {
            Ok(n) => handovers += n,
            Err(e) => panic!("{e}"),
        }
    }
    // The schedule must actually move the lease around, or the check above proves little.
    assert!(
        handovers >= 40,
        "only {handovers} window changes over 8 seeds"
    );
}

/// Seeds that once broke the invariant. 10152335477350168704: a renewal's answer arrived after
/// the holder's own transfer was answered, and reopened the window it had handed over while the
/// target already wrote (fixed by `sent_floor` and `min_epoch` in `Fence`).
#[test]
fn regression_seeds() {
    for (seed, drift, topology) in [(10152335477350168704u64, 1_000u64, Topology::ActiveStandby)] {
        if let Err(e) = run(seed, drift, topology) {
            panic!("{e}");
        }
    }
}
