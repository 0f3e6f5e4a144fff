//! The write watermark (`Store::watermark`): every local write stamped before it is committed,
//! and no later write is stamped before it, whatever the physical clock does. The tombstone
//! horizon is built from it, so a watermark that claims too much lets a region collect a
//! tombstone that a peer has not applied.

use atoll_config::KeyspaceConfig;
use atoll_core::RegionId;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::op::{Intent, Policy};
use atoll_store::backend::{Backend, MemBackend};
use atoll_store::{Store, StoreOptions};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::Hooked;

const T0: u64 = 1_700_000_000_000;

fn open(backend: Arc<dyn Backend>, clock: Arc<ManualClock>) -> Store {
    let region = RegionId::new("us-east-1").expect("region");
    let opts = StoreOptions::new(region, vec![KeyspaceConfig::new("sessions", Policy::Lww)]);
    let clock: Arc<dyn Clock> = clock;
    Store::open(backend, opts, clock).expect("open")
}

fn put(store: &Store, key: &str) -> atoll_store::WriteOutcome {
    store
        .write(
            "sessions",
            key.as_bytes(),
            Intent::Put {
                value: b"v".to_vec(),
                context: None,
                ttl: atoll_core::op::Ttl::Default,
            },
        )
        .expect("write")
}

#[test]
fn idle_watermark_covers_every_committed_write_and_bounds_later_ones() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(Arc::new(MemBackend::default()), clock.clone());
    let w0 = store.watermark();
    assert_eq!(w0.head, 0);
    let a = put(&store, "a");
    let b = put(&store, "b");
    let wm = store.watermark();
    assert_eq!(wm.head, b.seq);
    assert!(
        wm.before_ms >= b.ts.wall_ms && b.ts > a.ts,
        "{wm:?} {a:?} {b:?}"
    );
    // Later writes are stamped at or after the watermark, even if the physical clock steps
    // back by far more than any clock-offset margin.
    clock.set(T0 - 10_000);
    let c = put(&store, "c");
    assert!(
        c.ts.wall_ms >= wm.before_ms,
        "write {} stamped before the watermark {} it came after",
        c.ts,
        wm.before_ms
    );
    assert_eq!(store.watermark().head, c.seq);
}

#[test]
fn watermark_moves_with_the_clock_while_idle() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(Arc::new(MemBackend::default()), clock.clone());
    put(&store, "a");
    let w1 = store.watermark();
    clock.advance(5_000);
    let w2 = store.watermark();
    assert_eq!(w1.head, w2.head);
    assert!(w2.before_ms >= T0 + 5_000, "{w2:?}");
}

#[test]
fn a_write_being_committed_is_not_covered() {
    let (entered_tx, entered_rx) = mpsc::sync_channel(8);
    let (release_tx, release_rx) = mpsc::sync_channel(8);
    // Commits of writes wait for the test to let them through, so the test can look at the
    // watermark while a batch is being committed.
    let release = Mutex::new(release_rx);
    let backend = Arc::new(Hooked::new(Arc::new(MemBackend::default())).before_commit(
        move |batch, _| {
            if common::carries_op(batch) {
                let _ = entered_tx.send(());
                if let Ok(rx) = release.lock() {
                    let _ = rx.recv_timeout(Duration::from_secs(30));
                }
            }
            Ok(())
        },
    ));
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(open(backend, clock.clone()));
    // First write goes through.
    release_tx.send(()).expect("release");
    let first = put(&store, "a");
    entered_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("first commit");
    // Second write: stamped, then held in the commit.
    clock.advance(100);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || put(&store, "b"))
    };
    entered_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("second commit started");
    // Time goes on while the commit (an fsync, say) takes its time.
    clock.advance(1_000);
    let during = store.watermark();
    assert_eq!(
        during.head, first.seq,
        "the uncommitted write is not in the head"
    );
    release_tx.send(()).expect("release");
    let second = writer.join().expect("writer");
    assert!(
        second.ts.wall_ms >= during.before_ms,
        "write {} (seq {}) was being committed, yet the watermark {during:?} claims every write \
         stamped before {} is committed",
        second.ts,
        second.seq,
        during.before_ms
    );
    let after = store.watermark();
    assert_eq!(after.head, second.seq);
    assert!(after.before_ms > second.ts.wall_ms);
}

#[test]
fn a_claimed_watermark_survives_a_power_cut_and_a_clock_step_back() {
    // Sweep seed 948009205: a region claimed an idle tick of its clock, lost power before any
    // commit persisted it, and came back with its clock stepped back (a clock fault ended):
    // its next writes were stamped below what it had claimed, and a peer collected a tombstone
    // on the strength of that claim.
    let clock = Arc::new(ManualClock::new(T0 + 10_000));
    let backend = Arc::new(MemBackend::with_power_cuts());
    let store = open(backend.clone(), clock.clone());
    put(&store, "a");
    clock.advance(5_000);
    let claimed = store.watermark();
    assert!(claimed.before_ms >= T0 + 15_000, "{claimed:?}");
    store.close();
    drop(store);
    backend.power_cut(0).expect("power cut");
    clock.set(T0);
    let store = open(backend, clock.clone());
    let out = put(&store, "b");
    assert!(
        out.ts.wall_ms >= claimed.before_ms,
        "a write after the restart was stamped at {} below the claimed {}",
        out.ts,
        claimed.before_ms
    );
}

#[test]
fn commits_keep_the_claim_floor_ahead_so_a_busy_region_claims_without_writing_it() {
    // The floor is written on its own only for an idle region's claims: while batches commit,
    // each raises it, and a claim costs no fsync (it runs on the replication path).
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(Arc::new(MemBackend::default()), clock.clone());
    let writes = |s: &Store| s.stats().claim_floor_writes_total.load(Ordering::Relaxed);
    for i in 0..50 {
        let out = put(&store, &format!("k{i}"));
        clock.advance(100);
        let wm = store.watermark();
        assert!(
            wm.before_ms > out.ts.wall_ms,
            "a claim is not held back by the floor: {wm:?} after {out:?}"
        );
    }
    assert_eq!(writes(&store), 0, "claims between commits wrote the floor");
    // Idle: claims move past the last commit's lead and write the floor, about once per lead.
    for _ in 0..20 {
        clock.advance(100);
        let wm = store.watermark();
        assert_eq!(
            wm.before_ms,
            clock.physical_ms(),
            "an idle claim is the clock"
        );
    }
    let idle = writes(&store);
    assert!(
        (4..=10).contains(&idle),
        "2 s of idle claims wrote the floor {idle} times"
    );
}

/// A region added to a running cluster is admitted with a floor (its peers' clocks and claims,
/// `docs/design/adding-regions.md`): every write after, across a restart, is stamped at or
/// above it, even with its own physical clock far behind.
#[test]
fn admission_raises_the_clock_to_its_floor_durably() {
    let clock = Arc::new(ManualClock::new(T0));
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let store = open(backend.clone(), clock.clone());
    assert!(!store.is_admitted());
    let floor = T0 + 60_000;
    store.mark_admitted(floor).expect("admit");
    assert!(store.is_admitted());
    // Restarted before any write: the floor alone carries the clock.
    store.close();
    drop(store);
    let store = open(backend.clone(), clock.clone());
    assert!(store.is_admitted());
    let w = put(&store, "a");
    assert!(
        w.ts.wall_ms >= floor,
        "{w:?} stamped below the floor {floor} after a restart"
    );
    // And in the same process.
    let other: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let store = open(other, clock);
    store.mark_admitted(floor).expect("admit");
    let w = put(&store, "b");
    assert!(
        w.ts.wall_ms >= floor,
        "{w:?} stamped below the floor {floor}"
    );
    assert!(store.watermark().before_ms >= floor);
}

/// A region that lost its data directory raises its clock, after its bootstrap, above the claim
/// its peers hold about its writes (`ReplDriver::bootstrap_clock_floor`): durably, and never
/// down.
#[test]
fn the_clock_floor_is_raised_durably_and_never_lowered() {
    let clock = Arc::new(ManualClock::new(T0));
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let store = open(backend.clone(), clock.clone());
    let floor = T0 + 30_000;
    store.raise_clock_floor(floor).expect("raise");
    store
        .raise_clock_floor(T0 + 10)
        .expect("a lower floor changes nothing");
    assert!(!store.is_admitted(), "raising the clock is no admission");
    store.close();
    drop(store);
    let store = open(backend, clock);
    let w = put(&store, "a");
    assert!(
        w.ts.wall_ms >= floor,
        "{w:?} stamped below the floor {floor} after a restart"
    );
}
