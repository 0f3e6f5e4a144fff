//! The strong keyspaces' state machine (`atoll_core::strong`) replicated by whole groups in this
//! process, over the in-memory transport with links cut per direction: concurrent clients write
//! (plain puts, compare-and-set, create-only puts, deletes) and read (through
//! [`ControlGroup::read_barrier`]) while a seeded nemesis cuts links (both ways, one way,
//! stalled), isolates members and crashes and restarts the leader. Every history, per key, is
//! checked linearizable by `atoll-lincheck`, operations of unknown outcome included.
//!
//! Time is tokio's paused clock on a current-thread runtime: timers fire as soon as nothing else
//! can run, so a run of many virtual seconds takes a fraction of one, and 200+ seeds fit in CI.
//! A failing seed is printed; `STRONG_SEED=N` runs that seed alone, `STRONG_SEEDS=N` sets how
//! many run.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_control::{
    ControlGroup, ControlOptions, Members, NodeId, StateMachine, Transport, TransportError,
};
use atoll_core::strong::{self, Answer, Command, StrongState};
use atoll_lincheck::{Input, Op, Outcome, Verdict};
use common::{Net, test_timing};
use tokio::time::Instant;

/// The strong state machine behind the byte interface, shared with the test so that reads
/// see the member's state directly.
struct Shared(Arc<Mutex<StrongState>>);

impl StateMachine for Shared {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let answer = self.0.lock().unwrap().apply_bytes(command);
        strong::encode_answer(&answer).unwrap_or_default()
    }
    fn snapshot(&self) -> Vec<u8> {
        strong::encode_state(&self.0.lock().unwrap()).unwrap_or_default()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let s = strong::decode_state(snapshot).map_err(|e| e.to_string())?;
        *self.0.lock().unwrap() = s;
        Ok(())
    }
}

/// The in-memory transport with time in it: every call takes 2 ms, and a call whose answer was
/// lost fails only after 100 ms (a real caller notices a lost answer by a timeout; failing at
/// once would make openraft retry in a loop in which no time passes).
struct Timed(Arc<dyn Transport>);

#[async_trait::async_trait]
impl Transport for Timed {
    async fn call(&self, to: NodeId, rpc: &str, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let r = self.0.call(to, rpc, body).await;
        if matches!(r, Err(TransportError::Failed(_))) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        r
    }
}

/// SplitMix64: a failing seed replays its schedule.
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
}

type Running = Arc<Mutex<BTreeMap<NodeId, (ControlGroup, Arc<Mutex<StrongState>>)>>>;

struct Harness {
    net: Arc<Net>,
    members: Members,
    dir: tempfile::TempDir,
    running: Running,
}

impl Harness {
    fn options(&self, id: NodeId) -> ControlOptions {
        let mut o = ControlOptions::new(
            id,
            self.members.clone(),
            self.dir.path().join(format!("member-{id}")),
        );
        o.timing = test_timing();
        o.publish_state = false;
        o.cluster_name = "atoll-strong-test".into();
        // As the region server runs the strong group.
        o.refuse_when_alone = true;
        // Snapshots and purges happen within a run, so restarts also restore from them.
        o.snapshots.every_entries = 20;
        o.snapshots.keep_entries = 5;
        o
    }

    async fn start(&self, id: NodeId) {
        let state = Arc::new(Mutex::new(StrongState::default()));
        let g = ControlGroup::start(
            self.options(id),
            Box::new(Shared(state.clone())),
            Arc::new(Timed(self.net.transport(id))),
        )
        .await
        .expect("member starts");
        self.net.register(&g);
        self.running.lock().unwrap().insert(id, (g, state));
    }

    async fn stop(&self, id: NodeId) {
        self.net.unregister(id);
        let g = self.running.lock().unwrap().remove(&id);
        if let Some((g, _)) = g {
            g.shutdown().await;
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let r = self.running.lock().unwrap();
        r.values()
            .map(|(g, _)| g.status())
            .find(|s| s.is_leader)
            .map(|s| s.node_id)
    }
}

const KEYS: [&str; 2] = ["12A", "12B"];
const KS: &str = "seats";

/// One client operation against member `via`: what it asked, what came back (`None`: surely not
/// applied, left out of the history).
async fn client_op(running: &Running, via: NodeId, key: &str, input: &Input) -> Option<Outcome> {
    let member = running.lock().unwrap().get(&via).cloned();
    let (g, state) = member?;
    let cmd = match input {
        Input::Read => {
            return match g.read_barrier().await {
                Ok(_) => {
                    let s = state.lock().unwrap();
                    Some(match s.get(KS, key.as_bytes()) {
                        Some(r) => Outcome::Read {
                            value: Some(r.value.clone()),
                            revision: r.revision,
                        },
                        None => Outcome::Read {
                            value: None,
                            revision: 0,
                        },
                    })
                }
                Err(_) => None,
            };
        }
        Input::Put { value, if_revision } => Command::Put {
            keyspace: KS.into(),
            key: key.as_bytes().to_vec(),
            value: value.clone(),
            if_revision: *if_revision,
        },
        Input::Delete { if_revision } => Command::Delete {
            keyspace: KS.into(),
            key: key.as_bytes().to_vec(),
            if_revision: *if_revision,
        },
    };
    let bytes = strong::encode_command(&cmd).expect("encodes");
    match g.propose(bytes).await {
        Ok(out) => Some(match strong::decode_answer(&out).expect("answer decodes") {
            Answer::Written { revision, .. } => Outcome::Written { revision },
            Answer::Deleted { revision } => Outcome::Deleted { revision },
            Answer::Absent => Outcome::Absent,
            Answer::RevisionMismatch { current } => Outcome::Mismatch { current },
            Answer::Malformed => panic!("a well-formed command was answered Malformed"),
        }),
        Err(e) if e.may_have_applied() => Some(Outcome::Unknown),
        Err(_) => None,
    }
}

struct Stats {
    ops: usize,
    completed: usize,
    unknown: usize,
    writes_ok: usize,
}

async fn run_seed(seed: u64) -> Result<Stats, String> {
    let members: Members = (1..=3).map(|i| (i, format!("r{i}"))).collect();
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().expect("tempdir"),
    };
    let h = Arc::new(Harness {
        net: Arc::new(Net::default()),
        members,
        dir,
        running: Arc::new(Mutex::new(BTreeMap::new())),
    });
    for id in 1..=3 {
        h.start(id).await;
    }
    let t0 = Instant::now();
    let ns = move || u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let history: Arc<Mutex<Vec<(String, Op)>>> = Arc::default();

    // Clients: each bound to a member, falling back to another one when it is down.
    let mut clients = Vec::new();
    for c in 0..4usize {
        let h = h.clone();
        let history = history.clone();
        let mut rng = Rng(seed.wrapping_mul(1000).wrapping_add(c as u64 + 1));
        clients.push(tokio::spawn(async move {
            let mut last_rev: BTreeMap<&str, u64> = BTreeMap::new();
            for i in 0..10u64 {
                tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
                let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                let seen = last_rev.get(key).copied().unwrap_or(0);
                let value = format!("c{c}-{i}").into_bytes();
                let input = match rng.below(10) {
                    0..=3 => Input::Read,
                    4..=5 => Input::Put {
                        value,
                        if_revision: Some(0),
                    },
                    6..=7 => Input::Put {
                        value,
                        if_revision: Some(seen),
                    },
                    8 => Input::Put {
                        value,
                        if_revision: None,
                    },
                    _ => Input::Delete {
                        if_revision: (rng.below(2) == 0).then_some(seen),
                    },
                };
                let home = (c as u64 % 3) + 1;
                let via = if h.running.lock().unwrap().contains_key(&home) {
                    home
                } else {
                    1 + rng.below(3)
                };
                let invoke = ns();
                let Some(outcome) = client_op(&h.running, via, key, &input).await else {
                    continue;
                };
                let complete = (outcome != Outcome::Unknown).then(ns);
                match &outcome {
                    Outcome::Read { revision, .. }
                    | Outcome::Written { revision }
                    | Outcome::Mismatch { current: revision } => {
                        last_rev.insert(key, *revision);
                    }
                    Outcome::Deleted { .. } | Outcome::Absent => {
                        last_rev.insert(key, 0);
                    }
                    Outcome::Unknown => {}
                }
                history.lock().unwrap().push((
                    key.to_string(),
                    Op {
                        client: c,
                        invoke,
                        complete,
                        input,
                        outcome,
                    },
                ));
            }
        }));
    }

    // The nemesis.
    let mut rng = Rng(seed ^ 0xA5A5_5A5A_0F0F_F0F0);
    let mut schedule = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1200))).await;
        let a = 1 + rng.below(3);
        let b = 1 + (a + rng.below(2)) % 3;
        match rng.below(7) {
            0 => {
                h.net.cut(a, b);
                schedule.push(format!("cut {a}<->{b}"));
            }
            1 => {
                h.net.cut_one_way(a, b);
                schedule.push(format!("cut {a}->{b}"));
            }
            2 => {
                h.net.isolate(a, [1, 2, 3]);
                schedule.push(format!("isolate {a}"));
            }
            3 => {
                h.net.stall(a, b);
                schedule.push(format!("stall {a}<->{b}"));
            }
            4 | 5 => {
                if let Some(l) = h.leader() {
                    h.stop(l).await;
                    schedule.push(format!("crash leader {l}"));
                    tokio::time::sleep(Duration::from_millis(300 + rng.below(1500))).await;
                    h.start(l).await;
                    schedule.push(format!("restart {l}"));
                }
            }
            _ => {
                h.net.heal();
                schedule.push("heal".into());
            }
        }
    }
    h.net.heal();
    for c in clients {
        c.await.map_err(|e| format!("client task: {e}"))?;
    }
    // A final read of every key once healed (retried until it gets through).
    for key in KEYS {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let invoke = ns();
            if let Some(outcome) = client_op(&h.running, 1, key, &Input::Read).await {
                history.lock().unwrap().push((
                    key.to_string(),
                    Op {
                        client: 99,
                        invoke,
                        complete: Some(ns()),
                        input: Input::Read,
                        outcome,
                    },
                ));
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("seed {seed}: no final read of {key} after healing"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for id in 1..=3 {
        h.stop(id).await;
    }
    let history = history.lock().unwrap().clone();
    let stats = Stats {
        ops: history.len(),
        completed: history.iter().filter(|(_, o)| o.complete.is_some()).count(),
        unknown: history
            .iter()
            .filter(|(_, o)| o.outcome == Outcome::Unknown)
            .count(),
        writes_ok: history
            .iter()
            .filter(|(_, o)| matches!(o.outcome, Outcome::Written { .. }))
            .count(),
    };
    match atoll_lincheck::check_per_key(&history) {
        Ok(()) => Ok(stats),
        Err((key, Verdict::GaveUp, _)) => Err(format!(
            "seed {seed}: the checker gave up on key {key} (schedule: {schedule:?})"
        )),
        Err((key, verdict, ops)) => Err(format!(
            "seed {seed}: key {key} is not linearizable ({verdict:?}); schedule: {schedule:?}; history: {ops:#?}"
        )),
    }
}

fn run_one(seed: u64) -> Result<Stats, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run_seed(seed))
}

#[test]
fn histories_under_partitions_and_leader_crashes_are_linearizable() {
    common::init_logs();
    let seeds: Vec<u64> = match std::env::var("STRONG_SEED") {
        Ok(s) => vec![s.parse().expect("STRONG_SEED is a number")],
        Err(_) => {
            let n = std::env::var("STRONG_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200u64);
            (1..=n).collect()
        }
    };
    // Two threads of seeds (the runs are independent).
    let halves: Vec<Vec<u64>> = vec![
        seeds.iter().copied().step_by(2).collect(),
        seeds.iter().copied().skip(1).step_by(2).collect(),
    ];
    let results: Vec<Vec<(u64, Result<Stats, String>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .into_iter()
            .map(|part| {
                s.spawn(move || part.into_iter().map(|seed| (seed, run_one(seed))).collect())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("seed thread"))
            .collect()
    });
    let (mut ops, mut completed, mut unknown, mut writes) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for (seed, r) in results.into_iter().flatten() {
        match r {
            Ok(s) => {
                ops += s.ops;
                completed += s.completed;
                unknown += s.unknown;
                writes += s.writes_ok;
            }
            Err(e) => failures.push((seed, e)),
        }
    }
    println!(
        "{} seeds: {ops} operations recorded, {completed} completed, {unknown} of unknown outcome, {writes} writes applied",
        seeds.len()
    );
    assert!(
        failures.is_empty(),
        "{} seeds failed (rerun one with STRONG_SEED=N): {}",
        failures.len(),
        failures
            .iter()
            .map(|(s, e)| format!("\n--- seed {s}: {e}"))
            .collect::<String>()
    );
    // The runs did something: most operations completed and writes were applied.
    assert!(completed > ops / 2, "{completed} of {ops} completed");
    assert!(writes > seeds.len(), "{writes} writes applied");
}

/// The checker is not vacuous here: a history recorded from a member's local state without the
/// read barrier (a stale read) is caught.
#[test]
fn a_read_without_the_barrier_is_caught_by_the_checker() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let members: Members = (1..=3).map(|i| (i, format!("r{i}"))).collect();
        let h = Harness {
            net: Arc::new(Net::default()),
            members,
            dir: tempfile::tempdir().expect("tempdir"),
            running: Arc::new(Mutex::new(BTreeMap::new())),
        };
        for id in 1..=3 {
            h.start(id).await;
        }
        // Wait for a leader, then cut one follower off and write through the majority.
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader = loop {
            if let Some(l) = h.leader() {
                break l;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let lagging = (1..=3).find(|&i| i != leader).expect("a follower");
        h.net.isolate(lagging, [1, 2, 3]);
        let t0 = Instant::now();
        let ns = || u64::try_from(t0.elapsed().as_nanos()).unwrap_or(0);
        let mut history = Vec::new();
        let input = Input::Put {
            value: b"alice".to_vec(),
            if_revision: Some(0),
        };
        let invoke = ns();
        let out = client_op(&h.running, leader, "12A", &input)
            .await
            .expect("the majority commits");
        history.push(Op {
            client: 0,
            invoke,
            complete: Some(ns()),
            input,
            outcome: out,
        });
        // The isolated member's barrier refuses...
        assert_eq!(
            client_op(&h.running, lagging, "12A", &Input::Read).await,
            None,
            "a member cut off from the leader gave a read index"
        );
        // ...while its local state, read without the barrier, is stale, and the checker says so.
        let invoke = ns();
        let stale = {
            let r = h.running.lock().unwrap();
            let s = r[&lagging].1.lock().unwrap();
            s.get(KS, b"12A").map(|r| r.value.clone())
        };
        assert_eq!(stale, None);
        history.push(Op {
            client: 1,
            invoke,
            complete: Some(ns()),
            input: Input::Read,
            outcome: Outcome::Read {
                value: None,
                revision: 0,
            },
        });
        assert!(matches!(
            atoll_lincheck::check(&history),
            Verdict::NotLinearizable { .. }
        ));
        for id in 1..=3 {
            h.stop(id).await;
        }
    });
}

/// A member cut off from every other one by links that hold messages (a WAN partition) refuses
/// proposals and reads as surely not applied once it has heard from nobody for `election_max`:
/// it sends nothing, so nothing it refused can be applied later when the links heal.
#[test]
fn an_isolated_member_refuses_for_certain() {
    for isolate_the_leader in [false, true] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(isolated(isolate_the_leader));
    }
}

async fn isolated(isolate_the_leader: bool) {
    {
        let members: Members = (1..=3).map(|i| (i, format!("r{i}"))).collect();
        let h = Harness {
            net: Arc::new(Net::default()),
            members,
            dir: tempfile::tempdir().expect("tempdir"),
            running: Arc::new(Mutex::new(BTreeMap::new())),
        };
        for id in 1..=3 {
            h.start(id).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader = loop {
            if let Some(l) = h.leader() {
                break l;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let cut = if isolate_the_leader {
            leader
        } else {
            (1..=3).find(|&i| i != leader).expect("a follower")
        };
        for other in (1..=3).filter(|&i| i != cut) {
            h.net.stall(cut, other);
        }
        let g = h.running.lock().unwrap()[&cut].0.clone();
        let started = Instant::now();
        while !g.alone() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the isolated member never noticed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Noticed within election_max (800 ms in the test timing) and a heartbeat.
        assert!(
            started.elapsed() <= Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        let input = Input::Put {
            value: b"minority".to_vec(),
            if_revision: None,
        };
        let t = Instant::now();
        let e = g
            .propose(
                strong::encode_command(&Command::Put {
                    keyspace: KS.into(),
                    key: b"12A".to_vec(),
                    value: b"minority".to_vec(),
                    if_revision: None,
                })
                .expect("encodes"),
            )
            .await
            .expect_err("an isolated member cannot commit");
        assert!(!e.may_have_applied(), "{e}");
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        assert_eq!(client_op(&h.running, cut, "12A", &Input::Read).await, None);
        assert_eq!(client_op(&h.running, cut, "12A", &input).await, None);
        // The majority still writes (electing a new leader if the old one was cut off); after
        // the heal the member serves again and nothing it refused shows up.
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader = loop {
            let l = (1..=3)
                .filter(|&i| i != cut)
                .find(|&i| h.running.lock().unwrap()[&i].0.status().is_leader);
            if let Some(l) = l {
                break l;
            }
            assert!(Instant::now() < deadline, "the majority elects no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let ok = client_op(
            &h.running,
            leader,
            "12A",
            &Input::Put {
                value: b"majority".to_vec(),
                if_revision: Some(0),
            },
        )
        .await;
        assert_eq!(ok, Some(Outcome::Written { revision: 1 }));
        h.net.heal();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client_op(&h.running, cut, "12A", &Input::Read).await {
                Some(Outcome::Read { value, revision }) => {
                    assert_eq!(value.as_deref(), Some(b"majority".as_slice()));
                    assert_eq!(revision, 1);
                    break;
                }
                _ => assert!(Instant::now() < deadline, "no read after the heal"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Give any held message time to arrive, then check again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = client_op(&h.running, leader, "12A", &Input::Read).await;
        assert_eq!(
            r,
            Some(Outcome::Read {
                value: Some(b"majority".to_vec()),
                revision: 1
            })
        );
        for id in 1..=3 {
            h.stop(id).await;
        }
    }
}

/// A group of one (a single-region cluster with a strong keyspace) is never "alone": it writes
/// and reads by itself.
#[test]
fn a_group_of_one_writes_and_reads() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let h = Harness {
            net: Arc::new(Net::default()),
            members: [(1, "r1".to_string())].into_iter().collect(),
            dir: tempfile::tempdir().expect("tempdir"),
            running: Arc::new(Mutex::new(BTreeMap::new())),
        };
        h.start(1).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let put = Input::Put {
            value: b"alice".to_vec(),
            if_revision: Some(0),
        };
        let written = loop {
            if let Some(o) = client_op(&h.running, 1, "12A", &put).await {
                break o;
            }
            assert!(Instant::now() < deadline, "a group of one never wrote");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(written, Outcome::Written { revision: 1 });
        assert!(!h.running.lock().unwrap()[&1].0.alone());
        assert_eq!(
            client_op(&h.running, 1, "12A", &Input::Read).await,
            Some(Outcome::Read {
                value: Some(b"alice".to_vec()),
                revision: 1
            })
        );
        h.stop(1).await;
    });
}
