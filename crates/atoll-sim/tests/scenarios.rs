//! Targeted scenarios, scripted on the simulated cluster, and negative controls showing that the
//! checkers do fail when the state or the history is wrong.

use atoll_core::causal::Dot;
use atoll_core::fence::{PromoteRefusal, Role, Topology};
use atoll_core::op::KeyState;
use atoll_core::repl::LinkState;
use atoll_sim::check::{self, Invariant};
use atoll_sim::fencing::{Drift, FencingOptions};
use atoll_sim::model::{CounterWrite, LwwWrite, SetWrite};
use atoll_sim::{Sim, SimOptions, WriteOp};

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn sim(n: usize) -> Sim {
    Sim::new(1, n, SimOptions::scripted()).unwrap_or_else(|v| panic!("{v}"))
}

/// No periodic maintenance: the scenario runs it by hand.
fn sim_manual_maintenance(n: usize) -> Sim {
    let opts = SimOptions {
        maintenance_interval_ms: 1 << 40,
        ..SimOptions::scripted()
    };
    Sim::new(1, n, opts).unwrap_or_else(|v| panic!("{v}"))
}

fn w(sim: &mut Sim, r: usize, op: WriteOp) -> u64 {
    sim.write(r, &op)
        .unwrap_or_else(|e| panic!("write {op:?} at {} refused: {e}", sim.id(r)))
        .seq
}

fn put(key: &str, value: &str) -> WriteOp {
    WriteOp::LwwPut {
        key: key.into(),
        value: value.into(),
    }
}

fn add(key: &str, delta: i64) -> WriteOp {
    WriteOp::CounterAdd {
        key: key.into(),
        delta,
    }
}

fn one_of_each(sim: &mut Sim, r: usize, tag: &str) {
    w(sim, r, put("s", &format!("{tag}-s")));
    w(
        sim,
        r,
        WriteOp::MvrPut {
            key: "c".into(),
            value: format!("{tag}-c"),
            with_context: true,
            ttl_ms: None,
        },
    );
    w(sim, r, add("r", 3));
    w(
        sim,
        r,
        WriteOp::SetUpdate {
            key: "f".into(),
            add: vec![tag.into()],
            remove: vec![],
        },
    );
}

fn converge(sim: &mut Sim, max_ms: u64) {
    if let Err(v) = sim.run_until_converged(max_ms) {
        panic!("{v}");
    }
    if let Err(v) = sim.check_all() {
        panic!("{v}");
    }
}

fn state_of(sim: &Sim, r: usize, peer: usize) -> LinkState {
    let id = sim.id(peer).clone();
    sim.peer_status(r)
        .expect("up")
        .into_iter()
        .find(|p| p.region == id)
        .expect("peer")
        .state
}

#[test]
fn partial_partition_converges_through_relay() {
    let mut sim = sim(3);
    sim.run_for(3_000).unwrap();
    sim.partition(A, C);
    // A and C stop hearing each other after dead_after (3 heartbeat intervals).
    sim.run_for(4_000).unwrap();
    assert_eq!(state_of(&sim, A, C), LinkState::Unreachable);
    assert_eq!(state_of(&sim, C, A), LinkState::Unreachable);
    assert_eq!(state_of(&sim, A, B), LinkState::Up);
    for (r, tag) in [(A, "a"), (B, "b"), (C, "c")] {
        one_of_each(&mut sim, r, tag);
    }
    // Converges with the A-C cut still in place: A gets C's ops through B and the other way.
    converge(&mut sim, 10_000);
    assert!(sim.violations().is_empty());
    assert_eq!(sim.applied(A), sim.applied(C));
    let expected = sim.applied(B);
    assert_eq!(expected.get(sim.id(C)), 4);
    assert_eq!(expected.get(sim.id(A)), 4);
}

#[test]
fn one_way_partition() {
    let mut sim = sim(3);
    sim.run_for(3_000).unwrap();
    // A's messages no longer reach B; B's still reach A.
    sim.cut(A, B);
    sim.run_for(4_000).unwrap();
    // Each side says honestly what it sees: B does not hear A; A hears B but B's heartbeats no
    // longer echo A's, so A reports the link as one-way.
    assert_eq!(state_of(&sim, B, A), LinkState::Unreachable);
    assert_eq!(state_of(&sim, A, B), LinkState::OneWay);
    one_of_each(&mut sim, A, "a");
    one_of_each(&mut sim, B, "b");
    sim.run_for(5_000).unwrap();
    // B cannot hear A, so it gets A's ops relayed through C.
    assert_eq!(sim.applied(B).get(sim.id(A)), 4, "{}", sim.describe());
    assert_eq!(sim.applied(C).get(sim.id(A)), 4);
    assert_eq!(sim.applied(C).get(sim.id(B)), 4);
    // A cannot subscribe to B (its requests do not arrive), so it relays B's ops through C too.
    assert_eq!(sim.applied(A).get(sim.id(B)), 4, "{}", sim.describe());
    sim.heal(A, B);
    converge(&mut sim, 10_000);
}

#[test]
fn crash_restart_catches_up_from_cursor() {
    let mut sim = sim(3);
    sim.run_for(2_000).unwrap();
    for (r, tag) in [(A, "a"), (B, "b"), (C, "c")] {
        one_of_each(&mut sim, r, tag);
    }
    converge(&mut sim, 10_000);
    let cursor = sim.applied(C);
    sim.crash(C);
    let mut missed = 0;
    for i in 0..5 {
        w(&mut sim, A, put("s", &format!("a{i}")));
        w(&mut sim, B, add("r", i));
        missed += 2;
        sim.run_for(400).unwrap();
    }
    // The others stop hearing C and keep replicating among themselves.
    sim.run_for(4_000).unwrap();
    assert_eq!(state_of(&sim, A, C), LinkState::Unreachable);
    assert_eq!(sim.applied(A), sim.applied(B));
    sim.restart(C).unwrap();
    // The durable cursor survived the crash.
    assert_eq!(sim.applied(C), cursor);
    converge(&mut sim, 10_000);
    // C resumed from its cursor: it applied exactly the entries it missed.
    assert_eq!(sim.applied_since_start(C), missed);
    let own = sim.applied(C).get(sim.id(C));
    assert_eq!(own, 4);
}

#[test]
fn clock_skew_holds_back_then_resumes() {
    let mut sim = sim(3);
    sim.run_for(3_000).unwrap();
    w(&mut sim, A, put("s", "before"));
    converge(&mut sim, 5_000);
    let head_before = sim.applied(B).get(sim.id(A));
    sim.set_skew(A, 2_000);
    // Two heartbeat rounds: B and C measure A's offset through the echo.
    sim.run_for(2_500).unwrap();
    assert_eq!(state_of(&sim, B, A), LinkState::ClockSkew);
    assert_eq!(state_of(&sim, C, A), LinkState::ClockSkew);
    assert_eq!(state_of(&sim, A, B), LinkState::Up);
    w(&mut sim, A, put("s", "skewed"));
    w(&mut sim, A, add("r", 7));
    w(&mut sim, B, add("r", 1));
    sim.run_for(4_000).unwrap();
    // Held back: B and C have not applied A's skewed writes, but A applied B's.
    assert_eq!(sim.applied(B).get(sim.id(A)), head_before);
    assert_eq!(sim.applied(C).get(sim.id(A)), head_before);
    assert_eq!(sim.applied(A).get(sim.id(B)), 1);
    assert_eq!(sim.history().skewed_writes.len(), 2);
    sim.set_skew(A, 0);
    // Resumes once A's offset is back in bounds and the clocks pass A's timestamps.
    converge(&mut sim, 15_000);
    assert_eq!(sim.applied(B).get(sim.id(A)), head_before + 2);
    match sim.get(B, "sessions", "s") {
        Some(KeyState::Lww(r)) => assert_eq!(r.value.as_deref(), Some(&b"skewed"[..])),
        other => panic!("{other:?}"),
    }
    match sim.get(C, "ratelimits", "r") {
        Some(KeyState::Counter(c)) => assert_eq!(c.value(), 8),
        other => panic!("{other:?}"),
    }
}

/// Regression: a region whose clock runs ahead beyond the bound measured the horizon in its own
/// (ahead) time and collected other regions' tombstones before every region had them.
#[test]
fn skewed_region_does_not_collect_tombstones_early() {
    let mut sim = sim_manual_maintenance(3);
    sim.run_for(2_000).unwrap();
    w(&mut sim, B, put("s", "x"));
    converge(&mut sim, 5_000);
    sim.set_skew(A, 2_500);
    sim.run_for(2_500).unwrap();
    // C goes dark; right after, B deletes the key and A gets the delete.
    for q in [A, B] {
        sim.partition(C, q);
    }
    sim.run_for(200).unwrap();
    let del = w(&mut sim, B, WriteOp::LwwDelete { key: "s".into() });
    sim.run_for(600).unwrap();
    assert_eq!(sim.applied(A).get(sim.id(B)), del);
    assert!(sim.applied(C).get(sim.id(B)) < del);
    // A's horizon, in its own time, is past the delete; C has not got it.
    let collected = sim.maintain_now(A).unwrap();
    assert_eq!(collected, 0, "{:?}", sim.violations());
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.heal_everything().unwrap();
    converge(&mut sim, 15_000);
}

/// A region that told its peers it holds a delete must still hold it after a power cut: with
/// replicated batches left unsynced, C would lose the delete at the crash while A, trusting C's
/// earlier claim, collects the tombstone (this test fails if replicated commits skip the fsync).
#[test]
fn a_power_cut_does_not_take_back_what_a_region_claimed() {
    let mut sim = sim_manual_maintenance(3);
    sim.run_for(2_000).unwrap();
    w(&mut sim, A, put("s", "x"));
    converge(&mut sim, 5_000);
    let del = w(&mut sim, A, WriteOp::LwwDelete { key: "s".into() });
    // B and C apply the delete; a few heartbeat rounds carry their claims about it to A.
    sim.run_for(3_000).unwrap();
    assert_eq!(sim.applied(C).get(sim.id(A)), del);
    // C loses power, losing whatever was not on stable storage.
    sim.crash_losing_unsynced(C);
    // A collects the tombstone on the strength of C's claim: C must really hold the delete.
    assert_eq!(sim.maintain_now(A).unwrap(), 1, "{}", sim.describe());
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    assert_eq!(
        sim.applied(C).get(sim.id(A)),
        del,
        "C lost an applied entry it had told its peers about"
    );
    sim.restart(C).unwrap();
    converge(&mut sim, 10_000);
}

/// Regression: after a tombstone was collected, the next local lww write started its version
/// vector from zero; a concurrent write from a region still holding the tombstone's larger vector
/// looked causally newer, and one of the two writes was lost without a conflict record.
#[test]
fn write_after_tombstone_collection_is_still_a_conflict() {
    let mut sim = sim_manual_maintenance(3);
    sim.run_for(2_000).unwrap();
    for i in 0..3 {
        w(&mut sim, A, put("s", &format!("a{i}")));
        w(&mut sim, B, put("s", &format!("b{i}")));
        sim.run_for(300).unwrap();
    }
    w(&mut sim, A, WriteOp::LwwDelete { key: "s".into() });
    converge(&mut sim, 5_000);
    // Let the horizon pass the delete, then collect at A only.
    sim.run_for(3_000).unwrap();
    assert_eq!(sim.maintain_now(A).unwrap(), 1);
    assert!(sim.get(A, "sessions", "s").is_none());
    assert!(sim.get(B, "sessions", "s").is_some());
    // A and B write concurrently; B's write (later, so greater timestamp) wins.
    sim.partition(A, B);
    sim.partition(A, C);
    w(&mut sim, A, put("s", "after-gc-a"));
    sim.run_for(300).unwrap();
    w(&mut sim, B, put("s", "after-gc-b"));
    sim.heal_everything().unwrap();
    converge(&mut sim, 10_000);
    let views = sim.views().unwrap();
    assert!(
        views.iter().any(|v| v
            .conflicts
            .iter()
            .any(|c| c.loser.value.as_deref() == Some(&b"after-gc-a"[..]))),
        "A's lost write is not in any conflict ledger"
    );
}

#[test]
fn same_script_same_trace() {
    let run = || {
        let mut sim = sim(4);
        sim.run_for(2_000).unwrap();
        sim.partition(A, C);
        one_of_each(&mut sim, A, "a");
        one_of_each(&mut sim, C, "c");
        sim.crash(B);
        sim.run_for(3_000).unwrap();
        sim.restart(B).unwrap();
        converge(&mut sim, 10_000);
        sim.trace_hash()
    };
    assert_eq!(run(), run());
}

// ----- negative controls: the checkers do fail -----

fn converged_cluster() -> Sim {
    let mut sim = sim(3);
    sim.run_for(2_000).unwrap();
    for (r, tag) in [(A, "a"), (B, "b"), (C, "c")] {
        one_of_each(&mut sim, r, tag);
    }
    converge(&mut sim, 10_000);
    sim
}

#[test]
fn convergence_checker_catches_a_write_applied_at_one_region_only() {
    let mut sim = converged_cluster();
    for q in [B, C] {
        sim.partition(A, q);
    }
    w(&mut sim, A, put("s", "only-here"));
    let err = check::convergence(&sim.views().unwrap()).unwrap_err();
    assert_eq!(err.invariant, Invariant::Convergence);
    assert!(err.detail.contains("applied vectors differ"), "{err}");
    // Even with the vectors made equal, the state difference is reported: compare A with a
    // region whose view pretends to have applied everything A has.
    let mut views = sim.views().unwrap();
    let applied = views[0].applied.clone();
    for v in &mut views[1..] {
        v.applied = applied.clone();
    }
    let err = check::convergence(&views).unwrap_err();
    assert!(err.detail.contains("sessions/s differs"), "{err}");
    assert_eq!(
        sim.check_all().unwrap_err().invariant,
        Invariant::Convergence
    );
}

#[test]
fn lost_write_checker_catches_an_unrecorded_loss() {
    let mut sim = converged_cluster();
    let mut fake = sim.history().lww[0].clone();
    fake.seq = 999;
    fake.value = Some(b"never-written".to_vec());
    fake.ts.wall_ms -= 1;
    let id = sim.id(B).clone();
    sim.history_mut().lww.push(LwwWrite { origin: id, ..fake });
    let err = check::no_lost_writes(&sim.views().unwrap(), sim.history()).unwrap_err();
    assert_eq!(err.invariant, Invariant::NoLostWrites);
    assert!(err.detail.contains("never-written"), "{err}");
}

#[test]
fn counter_checker_catches_a_missing_increment() {
    let mut sim = converged_cluster();
    let id = sim.id(A).clone();
    sim.history_mut().counters.push(CounterWrite {
        key: b"r".to_vec(),
        origin: id,
        seq: 999,
        delta: 5,
    });
    let err = check::counters(&sim.views().unwrap(), sim.history()).unwrap_err();
    assert_eq!(err.invariant, Invariant::Counters);
    assert!(err.detail.contains("sum to 14"), "{err}");
}

#[test]
fn set_checker_catches_a_lost_add_and_a_resurrection() {
    let mut sim = converged_cluster();
    let id = sim.id(A).clone();
    sim.history_mut().sets.push(SetWrite {
        key: b"f".to_vec(),
        origin: id.clone(),
        seq: 999,
        added: vec![("ghost".into(), Dot::new(id.clone(), 999))],
        observed: vec![],
    });
    let err = check::add_wins_sets(&sim.views().unwrap(), sim.history()).unwrap_err();
    assert_eq!(err.invariant, Invariant::AddWinsSets);
    assert!(err.detail.contains("ghost"), "{err}");
    // A remove that observed the live "a" dot: the element should be gone but is present.
    sim.history_mut().sets.pop();
    let a_dot = sim.history().sets[0].added[0].1.clone();
    sim.history_mut().sets.push(SetWrite {
        key: b"f".to_vec(),
        origin: id,
        seq: 1000,
        added: vec![],
        observed: vec![("a".into(), vec![a_dot])],
    });
    let err = check::add_wins_sets(&sim.views().unwrap(), sim.history()).unwrap_err();
    assert!(err.detail.contains("should be absent"), "{err}");
}

#[test]
fn tombstone_checker_catches_an_early_collection() {
    let mut sim = converged_cluster();
    let del = w(&mut sim, A, WriteOp::LwwDelete { key: "s".into() });
    let ts = sim.history().lww.last().unwrap().ts;
    let cursors: Vec<check::CursorAt> = (0..3)
        .map(|q| check::CursorAt {
            region: sim.id(q).clone(),
            applied: sim.applied(q),
            up: true,
        })
        .collect();
    // A has its own delete; B and C have not applied it yet.
    let err = check::tombstone_collection(
        sim.id(A),
        b"s",
        sim.id(A),
        ts,
        Some(ts.wall_ms + 1),
        sim.history(),
        &cursors,
    )
    .unwrap_err();
    assert_eq!(err.invariant, Invariant::Tombstones);
    assert!(
        err.detail.contains(&format!("only up to {}", del - 1)),
        "{err}"
    );
}

/// Regression: when a region's clock stepped back (here: its skew ends), the caught-up times its
/// core recorded with the clock ahead stayed as they were, so for a while it claimed to hold
/// everything up to "now" although it could not hear B; C trusted that claim and collected B's
/// tombstone before A had the delete.
#[test]
fn clock_step_back_does_not_overclaim() {
    let mut sim = sim_manual_maintenance(3);
    sim.run_for(2_000).unwrap();
    w(&mut sim, B, put("s", "x"));
    converge(&mut sim, 5_000);
    sim.set_skew(A, 3_000);
    sim.run_for(3_000).unwrap();
    // A's clock steps back; at the same moment B's messages stop reaching A.
    sim.set_skew(A, 0);
    sim.cut(B, A);
    sim.run_for(200).unwrap();
    let del = w(&mut sim, B, WriteOp::LwwDelete { key: "s".into() });
    sim.run_for(1_500).unwrap();
    assert!(sim.applied(A).get(sim.id(B)) < del);
    assert_eq!(sim.applied(C).get(sim.id(B)), del);
    sim.maintain_now(C).unwrap();
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

// ----- split-brain fencing (docs/design/fencing.md) -----

/// A scripted fenced run: no random writes or faults, and a control group that loses no answer
/// and has no slow leader (scenarios decide what goes wrong).
fn fenced_opts(topology: Topology, tune: impl FnOnce(&mut FencingOptions)) -> SimOptions {
    let mut f = FencingOptions::new(topology);
    f.answer_loss_pct = 0;
    f.slow_pct = 0;
    tune(&mut f);
    SimOptions {
        fencing: Some(f),
        ..SimOptions::scripted()
    }
}

fn fenced(n: usize, topology: Topology, tune: impl FnOnce(&mut FencingOptions)) -> Sim {
    Sim::new(1, n, fenced_opts(topology, tune)).unwrap_or_else(|v| panic!("{v}"))
}

fn refused_code(sim: &mut Sim, r: usize, op: WriteOp) -> &'static str {
    match sim.write(r, &op) {
        Ok(out) => panic!("write at {} was accepted (seq {})", sim.id(r), out.seq),
        Err(e) => e.code(),
    }
}

fn isolate(sim: &mut Sim, r: usize, nodes: usize) {
    for q in (0..nodes).filter(|&q| q != r) {
        sim.partition(r, q);
    }
}

/// The last instant `r`'s windows were open and the first instant of another region's window
/// after it: the old primary's window must have ended first.
fn handoff(sim: &Sim, old: usize, new: usize) -> (u64, u64) {
    let old_id = sim.id(old).clone();
    let new_id = sim.id(new).clone();
    let old_end = sim
        .windows()
        .iter()
        .filter(|w| w.region == old_id)
        .map(|w| w.close_ms.expect("the old primary's window is closed"))
        .max()
        .expect("the old primary had a window");
    let new_start = sim
        .windows()
        .iter()
        .filter(|w| w.region == new_id)
        .map(|w| w.open_ms)
        .min()
        .expect("the new primary has a window");
    eprintln!(
        "handoff {old_id} -> {new_id}: old window ended at {old_end} ms, new began at {new_start} ms"
    );
    (old_end, new_start)
}

fn role(sim: &Sim, r: usize) -> Role {
    let now = sim.mono_ms(r).expect("a fenced run");
    sim.fence(r).expect("a fenced run").role(now)
}

fn no_violation(sim: &Sim) {
    assert!(
        sim.violations().is_empty(),
        "{:?}\n{}",
        sim.violations(),
        sim.describe()
    );
}

#[test]
fn isolated_primary_is_replaced_after_its_window_ended() {
    let mut sim = fenced(3, Topology::ActiveStandby, |_| {});
    sim.run_for(2_000).unwrap();
    assert_eq!(sim.primary(), Some(A), "{}", sim.describe());
    w(&mut sim, A, put("s", "before"));
    assert_eq!(
        refused_code(&mut sim, B, put("s", "b")),
        "ATOLL-NOT-PRIMARY"
    );
    sim.run_for(1_000).unwrap();
    isolate(&mut sim, A, 3);
    // A keeps writing while its window lasts (D - M after its last answered renewal at most).
    let mut acked_isolated = 0;
    for i in 0..60 {
        if sim.write(A, &put("s", &format!("isolated-{i}"))).is_ok() {
            acked_isolated += 1;
        }
        sim.run_for(100).unwrap();
    }
    assert!(acked_isolated > 0, "A wrote nothing after the cut");
    assert!(
        sim.permit(A, false).is_none(),
        "A's window outlived its lease"
    );
    // The standbys time the lease out and the most caught-up one (B, listed first) takes it.
    sim.run_for(4_000).unwrap();
    assert_eq!(sim.primary(), Some(B), "{}", sim.describe());
    assert_eq!(role(&sim, A), Role::Fenced);
    w(&mut sim, B, put("s", "after"));
    let (old_end, new_start) = handoff(&sim, A, B);
    assert!(
        old_end <= new_start,
        "A's window ended at {old_end}, B's began at {new_start}"
    );
    no_violation(&sim);
    // A's writes from the isolation were stamped before the supersession: they merge.
    sim.heal_everything().unwrap();
    converge(&mut sim, 20_000);
    assert_eq!(sim.stats().late_refused, 0);
    assert_eq!(sim.lease_state().unwrap().epoch, 2);
    assert_eq!(role(&sim, A), Role::Standby);
}

#[test]
fn arbiter_keeps_the_primary_that_reaches_it() {
    // Two regions and a witness: a voter with no store.
    let mut sim = fenced(2, Topology::ActiveStandby, |f| f.witness = true);
    let wit = sim.witness().expect("a witness");
    sim.run_for(2_000).unwrap();
    assert_eq!(sim.primary(), Some(A));
    // The link between the regions breaks: A and the witness are still a majority.
    sim.partition(A, B);
    sim.run_for(12_000).unwrap();
    assert_eq!(sim.primary(), Some(A), "{}", sim.describe());
    w(&mut sim, A, put("s", "a-with-witness"));
    assert_eq!(
        refused_code(&mut sim, B, put("s", "b")),
        "ATOLL-NOT-PRIMARY"
    );
    // A loses the witness too: B and the witness are the majority now. But A kept its lease
    // (and could write) for 12 s that B never heard of: the RPO guard blocks automatic
    // promotion, and an operator promotes B accepting the loss.
    sim.partition(A, wit);
    sim.run_for(12_000).unwrap();
    assert_eq!(sim.primary(), None, "{}", sim.describe());
    sim.promote(B, true).expect("an operator promotes B");
    sim.run_for(5_000).unwrap();
    assert_eq!(sim.primary(), Some(B), "{}", sim.describe());
    let (old_end, new_start) = handoff(&sim, A, B);
    assert!(old_end <= new_start);
    no_violation(&sim);
    sim.heal_everything().unwrap();
    converge(&mut sim, 20_000);
}

#[test]
fn arbiter_decides_which_side_of_an_active_active_split_stays_writable() {
    let mut sim = fenced(2, Topology::ActiveActive { quorum: true }, |f| {
        f.witness = true;
        f.read_only_keyspaces = vec!["ratelimits".into()];
    });
    let wit = sim.witness().expect("a witness");
    sim.run_for(2_000).unwrap();
    w(&mut sim, A, add("r", 1));
    w(&mut sim, B, add("r", 1));
    // B loses both A and the witness; A still reaches the witness.
    sim.partition(A, B);
    sim.partition(B, wit);
    sim.run_for(6_000).unwrap();
    w(&mut sim, A, add("r", 5));
    assert_eq!(refused_code(&mut sim, B, add("r", 7)), "ATOLL-FENCED");
    // Available keyspaces keep taking writes on both sides.
    w(&mut sim, B, put("s", "b-minority"));
    assert_eq!(role(&sim, B), Role::ReadOnly);
    no_violation(&sim);
    sim.heal_everything().unwrap();
    converge(&mut sim, 20_000);
    match sim.get(B, "ratelimits", "r") {
        Some(KeyState::Counter(c)) => assert_eq!(c.value(), 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_way_partition_of_the_primary() {
    // Either direction: the primary cannot be reached both ways, so it commits nothing.
    for outgoing in [true, false] {
        let mut sim = fenced(3, Topology::ActiveStandby, |_| {});
        sim.run_for(2_000).unwrap();
        assert_eq!(sim.primary(), Some(A));
        for q in [B, C] {
            if outgoing {
                sim.cut(A, q);
            } else {
                sim.cut(q, A);
            }
        }
        sim.run_for(12_000).unwrap();
        let p = sim
            .primary()
            .unwrap_or_else(|| panic!("{}", sim.describe()));
        assert_ne!(p, A, "outgoing {outgoing}: {}", sim.describe());
        assert!(sim.permit(A, false).is_none());
        let (old_end, new_start) = handoff(&sim, A, p);
        assert!(old_end <= new_start);
        w(&mut sim, p, put("s", "new"));
        no_violation(&sim);
        sim.heal_everything().unwrap();
        converge(&mut sim, 20_000);
    }
}

/// The holder's clock runs slow and the standbys' fast, both at the configured bound (1 %),
/// with the smallest margin the bound allows: the windows still never overlap.
#[test]
fn drift_at_the_bound() {
    let tune = |f: &mut FencingOptions| {
        f.max_drift_ppm = 10_000;
        f.margin_ms = 2 * f.lease_ms * f.max_drift_ppm / 1_000_000 + 10;
        f.drift = Drift::Fixed(vec![-10_000, 10_000, 10_000]);
    };
    let opts = SimOptions {
        latency_ms: (2, 2),
        jitter_ms: 0,
        ..fenced_opts(Topology::ActiveStandby, tune)
    };
    let mut sim = Sim::new(1, 3, opts).unwrap_or_else(|v| panic!("{v}"));
    sim.run_for(2_000).unwrap();
    isolate(&mut sim, A, 3);
    sim.run_for(12_000).unwrap();
    assert_eq!(sim.primary(), Some(B), "{}", sim.describe());
    let (old_end, new_start) = handoff(&sim, A, B);
    assert!(
        old_end <= new_start,
        "A's window ended at {old_end}, B's began at {new_start}"
    );
    no_violation(&sim);
    sim.heal_everything().unwrap();
    converge(&mut sim, 20_000);
}

/// Negative control: clocks drifting ten times beyond the configured bound make the windows
/// overlap, and the checker says so.
#[test]
fn window_checker_catches_drift_beyond_the_bound() {
    let tune = |f: &mut FencingOptions| {
        f.max_drift_ppm = 10_000;
        f.margin_ms = 2 * f.lease_ms * f.max_drift_ppm / 1_000_000 + 10;
        f.drift = Drift::Fixed(vec![-100_000, 100_000, 100_000]);
    };
    let opts = SimOptions {
        latency_ms: (2, 2),
        jitter_ms: 0,
        ..fenced_opts(Topology::ActiveStandby, tune)
    };
    let mut sim = Sim::new(1, 3, opts).unwrap_or_else(|v| panic!("{v}"));
    sim.run_for(2_000).unwrap();
    isolate(&mut sim, A, 3);
    sim.run_for(12_000).unwrap();
    let v = sim.violations().first().expect("an overlap was caught");
    assert_eq!(v.invariant, Invariant::WriteWindows, "{v}");
    assert!(v.detail.contains("hold a write window at once"), "{v}");
}

/// Negative control, active-active: a minority region whose clock runs far slower than the
/// bound keeps its quorum window too long, and the checker says so.
#[test]
fn quorum_checker_catches_a_window_that_outlives_the_bound() {
    let mut sim = fenced(3, Topology::ActiveActive { quorum: true }, |f| {
        f.read_only_keyspaces = vec!["ratelimits".into()];
        f.drift = Drift::Fixed(vec![-100_000, 0, 0]);
    });
    sim.run_for(2_000).unwrap();
    isolate(&mut sim, A, 3);
    sim.run_for(8_000).unwrap();
    let v = sim
        .violations()
        .first()
        .expect("the long window was caught");
    assert_eq!(v.invariant, Invariant::WriteWindows, "{v}");
    assert!(v.detail.contains("quorum window"), "{v}");
}

#[test]
fn switchover_moves_the_lease_without_losing_writes() {
    let mut sim = fenced(3, Topology::ActivePassive, |_| {});
    sim.run_for(2_000).unwrap();
    for i in 0..5 {
        w(&mut sim, A, add("r", i));
    }
    sim.begin_switchover(A, C).unwrap();
    assert_eq!(refused_code(&mut sim, A, add("r", 1)), "ATOLL-NOT-PRIMARY");
    sim.run_for(3_000).unwrap();
    assert_eq!(sim.primary(), Some(C), "{}", sim.describe());
    assert_eq!(sim.stats().switchovers, 1);
    assert_eq!(role(&sim, A), Role::Passive);
    let (old_end, new_start) = handoff(&sim, A, C);
    assert!(old_end <= new_start);
    w(&mut sim, C, add("r", 100));
    no_violation(&sim);
    converge(&mut sim, 10_000);
}

/// Active-passive: the primary is cut off, and B hears its heartbeats (so it knows A's head)
/// but cannot fetch its writes. `atoll promote` is refused while the lease may be valid, then
/// for the data it would lose, and goes through with `--accept-data-loss`, reporting the
/// exposure. A's writes were stamped before the supersession: they merge once A is back.
#[test]
fn forced_promotion_reports_its_exposure() {
    const D: usize = 3;
    let mut sim = fenced(4, Topology::ActivePassive, |_| {});
    sim.run_for(2_000).unwrap();
    assert_eq!(sim.primary(), Some(A));
    w(&mut sim, A, add("r", 1));
    sim.run_for(1_000).unwrap();
    // A still reaches B one way (its heartbeats), nothing else.
    sim.cut(B, A);
    for q in [C, D] {
        sim.partition(A, q);
    }
    for i in 0..10 {
        let _ = sim.write(A, &add("r", i));
        sim.run_for(100).unwrap();
    }
    assert!(matches!(
        sim.promote(B, true),
        Err(PromoteRefusal::LeaseHeld { .. })
    ));
    sim.run_for(6_000).unwrap();
    assert!(matches!(
        sim.promote(B, false),
        Err(PromoteRefusal::DataLoss { .. })
    ));
    sim.promote(B, true).unwrap();
    sim.run_for(2_000).unwrap();
    assert_eq!(sim.primary(), Some(B), "{}", sim.describe());
    let report = sim.fencing_report().unwrap();
    let p = report.promotions.last().expect("a promotion");
    assert!(
        p.manual && p.accept_data_loss && p.reported_ops > 0,
        "{p:?}"
    );
    assert!(p.reported_ops <= p.missing_ops_at_send, "{p:?}");
    assert_eq!(sim.stats().forced_promotions, 1);
    no_violation(&sim);
    sim.heal_everything().unwrap();
    converge(&mut sim, 20_000);
    assert_eq!(sim.stats().late_refused, 0);
}

/// A limit of the design, kept visible: `is_late` trusts wall clocks to stay within
/// `max_clock_offset_ms`. A primary whose clock runs 2.5 s ahead and then loses its lease has
/// the writes it acknowledged in its last window refused everywhere as late (invariant 8),
/// although its window ended before the new primary's began. The seed sweep keeps leased runs'
/// clocks within the bound for this reason.
#[test]
fn skew_beyond_the_bound_makes_a_lost_primarys_writes_late() {
    let mut sim = fenced(3, Topology::ActiveStandby, |_| {});
    sim.run_for(2_000).unwrap();
    sim.set_skew(A, 2_500);
    sim.run_for(2_000).unwrap();
    isolate(&mut sim, A, 3);
    for i in 0..60 {
        let _ = sim.write(A, &add("r", i));
        sim.run_for(100).unwrap();
    }
    sim.run_for(4_000).unwrap();
    assert_eq!(sim.primary(), Some(B));
    no_violation(&sim);
    sim.heal_everything().unwrap();
    sim.run_for(5_000).unwrap();
    let v = sim.violations().first().expect("late writes were refused");
    assert_eq!(v.invariant, Invariant::LateWrites, "{v}");
    assert!(sim.stats().late_refused > 0);
}

/// The RPO guard counts writes the standby never heard of (this scenario once promoted B
/// reporting no lag): two regions and a witness; the link between the regions breaks, the
/// primary keeps its lease through the witness and writes for 8 s that the standby never hears
/// of, then crashes. B may lack those 8 s plus the lease tail, above `max_promotion_lag_ms`:
/// nothing is promoted automatically; an operator promotes B with `--accept-data-loss`. The
/// writes are not lost here (the old primary's disk survives and they merge when it is back).
#[test]
fn rpo_guard_counts_writes_it_never_heard_of() {
    let mut sim = fenced(2, Topology::ActiveStandby, |f| f.witness = true);
    sim.run_for(2_000).unwrap();
    w(&mut sim, A, add("r", 1));
    sim.run_for(1_000).unwrap();
    sim.partition(A, B);
    for _ in 0..80 {
        w(&mut sim, A, add("r", 1));
        sim.run_for(100).unwrap();
    }
    sim.crash(A);
    sim.run_for(8_000).unwrap();
    assert_eq!(
        sim.primary(),
        None,
        "blocked by the RPO guard: {}",
        sim.describe()
    );
    sim.promote(B, true).expect("an operator promotes B");
    sim.run_for(5_000).unwrap();
    assert_eq!(sim.primary(), Some(B), "{}", sim.describe());
    let report = sim.fencing_report().unwrap();
    let p = report.promotions.last().expect("B was promoted");
    assert!(p.manual, "{p:?}");
    assert!(p.missing_ops_at_send >= 80, "{p:?}");
    assert!(p.missing_span_ms.is_some_and(|s| s > 5_000), "{p:?}");
    no_violation(&sim);
    sim.heal_everything().unwrap();
    converge(&mut sim, 20_000);
    match sim.get(B, "ratelimits", "r") {
        Some(KeyState::Counter(c)) => assert_eq!(c.value(), 81),
        other => panic!("{other:?}"),
    }
}

/// A region added to the running cluster (`docs/design/adding-regions.md`), under the random
/// writes and faults of a full run: it bootstraps or catches up, refuses writes until every region
/// has added it and it caught up, is admitted, and the cluster converges with every invariant
/// holding. Several seeds and cluster sizes, so the join lands at different moments.
#[test]
fn a_region_added_while_running_is_admitted_and_the_cluster_converges() {
    let mut admitted = 0;
    let mut refused = 0;
    for (seed, n) in [(11, 3), (12, 4), (13, 5), (14, 3), (15, 4)] {
        let opts = SimOptions {
            join: true,
            ..SimOptions::default()
        };
        let out = atoll_sim::run_seed(seed, n, opts).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(out.stats.joins, 1, "seed {seed}");
        admitted += out.stats.joiners_admitted;
        refused += out.stats.joiner_writes_refused;
    }
    assert_eq!(admitted, 5, "every added region was admitted");
    assert!(refused > 0, "no write was ever refused before an admission");
}

/// A region removed from the running cluster (`docs/design/region-removal.md`), under the random
/// writes and faults of a full run: every other region removes it at a time of its own (some
/// while down), it learns it was removed from the refusals of its heartbeats and takes no writes
/// after, its writes the members hold converge everywhere, the rest are set aside, its writes
/// settle (the horizon moves on without it), and every invariant holds among the members.
#[test]
fn a_region_removed_while_running_settles_and_the_members_converge() {
    let mut told = 0;
    for (seed, n) in [(21, 3), (22, 4), (23, 5), (24, 3), (25, 4)] {
        let opts = SimOptions {
            remove: true,
            ..SimOptions::default()
        };
        let out = atoll_sim::run_seed(seed, n, opts).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(
            out.stats.removals,
            n as u64 - 1,
            "seed {seed}: every member removed it"
        );
        told += out.stats.removed_told;
    }
    assert!(told > 0, "the removed region never learnt it was removed");
}
