//! Operation-log truncation and bootstrap by snapshot (`docs/design/oplog-truncation.md`), on
//! every backend: what truncation removes and keeps, that a region's own head survives it, and
//! that a wiped store loaded from a donor's snapshot holds the donor's state, cursors and
//! this region's own writes, resumes after a stop, and refuses writes meanwhile.

use atoll_config::KeyspaceConfig;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::op::{Intent, KeyState, Policy};
use atoll_core::{AtollError, RegionId};
use atoll_store::backend::{Backend, FjallBackend, MemBackend};
use atoll_store::{Store, StoreOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

/// A backend kind: its name, how to open it (again) on the same data, and the directory that
/// holds the data (kept alive while the test runs).
type Kind = (
    &'static str,
    Box<dyn Fn() -> Arc<dyn Backend>>,
    tempfile::TempDir,
);

fn backends() -> Vec<Kind> {
    let mem = Arc::new(MemBackend::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    vec![
        (
            "memory",
            Box::new(move || mem.clone() as Arc<dyn Backend>),
            tempfile::tempdir().expect("tempdir"),
        ),
        (
            "fjall",
            Box::new(move || {
                Arc::new(FjallBackend::open(&path).expect("fjall")) as Arc<dyn Backend>
            }),
            dir,
        ),
    ]
}

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

fn open(backend: Arc<dyn Backend>, me: &str, clock: &Arc<ManualClock>) -> Store {
    let clock: Arc<dyn Clock> = clock.clone();
    let ks = vec![
        KeyspaceConfig::new("sessions", Policy::Lww),
        KeyspaceConfig::new("hits", Policy::Counter),
    ];
    Store::open(backend, StoreOptions::new(region(me), ks), clock).expect("open")
}

fn put(store: &Store, key: &str, v: &str) {
    store
        .write(
            "sessions",
            key.as_bytes(),
            Intent::Put {
                value: v.as_bytes().to_vec(),
                context: None,
                ttl: atoll_core::op::Ttl::Default,
            },
        )
        .expect("write");
}

fn value(store: &Store, key: &str) -> Option<Vec<u8>> {
    match store.get("sessions", key.as_bytes()).expect("get") {
        Some(KeyState::Lww(r)) => r.value,
        _ => None,
    }
}

fn seqs(store: &Store, origin: &str) -> Vec<u64> {
    store
        .oplog(&region(origin), 0, 1_000)
        .expect("oplog")
        .iter()
        .map(|e| e.seq)
        .collect()
}

#[test]
fn truncation_removes_stable_entries_past_the_retention_and_keeps_the_newest() {
    for (name, mk, _dir) in backends() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = open(mk(), "a", &clock);
        for i in 0..10 {
            put(&store, &format!("k{i}"), "v");
        }
        clock.advance(60_000);
        for i in 10..12 {
            put(&store, &format!("k{i}"), "v");
        }
        let a = region("a");
        // Nothing is stable: nothing goes.
        assert_eq!(
            store.truncate_oplog(&BTreeMap::new(), 0, 1_000).expect("t"),
            0
        );
        // Stable through 11, retention 30 s: the ten old entries go, the two recent stay.
        let stable = BTreeMap::from([(a.clone(), 11)]);
        assert_eq!(
            store.truncate_oplog(&stable, 30_000, 1_000).expect("t"),
            10,
            "{name}"
        );
        assert_eq!(seqs(&store, "a"), vec![11, 12], "{name}");
        // Stable through everything, no retention: the newest entry still stays.
        let stable = BTreeMap::from([(a.clone(), 12)]);
        assert_eq!(
            store.truncate_oplog(&stable, 0, 1_000).expect("t"),
            1,
            "{name}"
        );
        assert_eq!(seqs(&store, "a"), vec![12], "{name}");
        assert_eq!(store.truncated_through().get(&a), Some(&11), "{name}");
        // Reopened, the region's own head is where it was: the next write is 13.
        store.close();
        drop(store);
        let store = open(mk(), "a", &clock);
        assert_eq!(store.applied().get(&a), 12, "{name}");
        put(&store, "after", "v");
        assert_eq!(seqs(&store, "a"), vec![12, 13], "{name}");
        assert_eq!(
            value(&store, "k0"),
            Some(b"v".to_vec()),
            "{name}: data stays"
        );
        store.close();
    }
}

#[test]
fn truncation_is_bounded_per_pass() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(Arc::new(MemBackend::default()), "a", &clock);
    for i in 0..20 {
        put(&store, &format!("k{i}"), "v");
    }
    let stable = BTreeMap::from([(region("a"), 20)]);
    assert_eq!(store.truncate_oplog(&stable, 0, 7).expect("t"), 7);
    assert_eq!(store.truncate_oplog(&stable, 0, 7).expect("t"), 7);
    assert_eq!(store.truncate_oplog(&stable, 0, 7).expect("t"), 5);
    assert_eq!(store.truncate_oplog(&stable, 0, 7).expect("t"), 0);
    assert_eq!(seqs(&store, "a"), vec![20]);
}

/// Streams `donor`'s snapshot into `to` in chunks of `rows`.
fn load(donor: &Store, to: &Store, rows: usize) -> usize {
    let mut after = to.bootstrap_progress().and_then(|p| p.after);
    let mut chunks = 0;
    loop {
        let c = donor
            .snapshot_chunk(after.as_deref(), rows, 1 << 20)
            .expect("chunk");
        chunks += 1;
        let next = c.next.clone();
        to.bootstrap_load(c.applied, c.rows, c.next).expect("load");
        match next {
            Some(n) => after = Some(n),
            None => return chunks,
        }
    }
}

#[test]
fn a_wiped_region_bootstraps_from_a_donor_snapshot() {
    for (name, mk, _dir) in backends() {
        let clock = Arc::new(ManualClock::new(T0));
        // b is the donor; it holds a's writes 1..=5 and its own.
        let a_old = open(Arc::new(MemBackend::default()), "a", &clock);
        for i in 0..5 {
            put(&a_old, &format!("a{i}"), "from-a");
        }
        let donor = open(Arc::new(MemBackend::default()), "b", &clock);
        donor
            .apply_remote(a_old.oplog(&region("a"), 1, 100).expect("log"))
            .expect("apply");
        for i in 0..25 {
            put(&donor, &format!("b{i}"), "from-b");
        }
        donor
            .write("hits", b"h", Intent::CounterAdd { delta: 3 })
            .expect("count");
        // a's data directory is lost; a fresh one bootstraps.
        let a = open(mk(), "a", &clock);
        put(&a, "early", "x");
        a.bootstrap_begin(false).expect("begin");
        let refused = a
            .write(
                "sessions",
                b"k",
                Intent::Put {
                    value: b"v".to_vec(),
                    context: None,
                    ttl: atoll_core::op::Ttl::Default,
                },
            )
            .expect_err("writes wait for the bootstrap");
        assert!(
            matches!(refused, AtollError::Bootstrapping(_)),
            "{name}: {refused}"
        );
        assert!(a.bootstrap_progress().is_some());
        // Half the chunks, then a stop: the progress is durable and resumes.
        let c = donor.snapshot_chunk(None, 10, 1 << 20).expect("chunk");
        a.bootstrap_load(c.applied, c.rows, c.next).expect("load");
        a.close();
        drop(a);
        let a = open(mk(), "a", &clock);
        let p = a
            .bootstrap_progress()
            .expect("still under way after the restart");
        assert_eq!(p.keys, 10, "{name}");
        a.bootstrap_begin(false).expect("resume");
        assert_eq!(
            a.bootstrap_progress().map(|p| p.keys),
            Some(10),
            "{name}: resumed, not restarted"
        );
        assert!(load(&donor, &a, 10) >= 2, "{name}");
        // Peers hold 5 of a's writes (own_floor): a's next write is 6, and its early write is
        // merged again from its own log.
        let applied = a.bootstrap_finish(5).expect("finish");
        assert_eq!(applied.get(&region("b")), 26, "{name}");
        assert_eq!(applied.get(&region("a")), 5, "{name}");
        assert!(a.bootstrap_progress().is_none());
        for i in 0..25 {
            assert_eq!(
                value(&a, &format!("b{i}")),
                Some(b"from-b".to_vec()),
                "{name}"
            );
        }
        for i in 0..5 {
            assert_eq!(
                value(&a, &format!("a{i}")),
                Some(b"from-a".to_vec()),
                "{name}"
            );
        }
        match a.get("hits", b"h").expect("get") {
            Some(KeyState::Counter(c)) => assert_eq!(c.value(), 3, "{name}"),
            other => panic!("{name}: counter {other:?}"),
        }
        put(&a, "later", "y");
        assert_eq!(a.applied().get(&region("a")), 6, "{name}");
        // Reopened: the head and cursors hold.
        a.close();
        drop(a);
        let a = open(mk(), "a", &clock);
        assert_eq!(a.applied().get(&region("a")), 6, "{name}");
        assert_eq!(a.applied().get(&region("b")), 26, "{name}");
        a.close();
    }
}

#[test]
fn a_snapshot_behind_this_regions_cursors_is_refused() {
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(Arc::new(MemBackend::default()), "b", &clock);
    for i in 0..4 {
        put(&b, &format!("b{i}"), "v");
    }
    let a = open(Arc::new(MemBackend::default()), "a", &clock);
    a.apply_remote(b.oplog(&region("b"), 1, 100).expect("log"))
        .expect("apply");
    // A donor that has applied only 2 of b's writes.
    let c = open(Arc::new(MemBackend::default()), "c", &clock);
    c.apply_remote(b.oplog(&region("b"), 1, 2).expect("log"))
        .expect("apply");
    a.bootstrap_begin(false).expect("begin");
    load(&c, &a, 100);
    let e = a.bootstrap_finish(0).expect_err("behind");
    assert!(matches!(e, AtollError::BootstrapBehind(_)), "{e}");
    // Begin again (restart) from b itself: done.
    a.bootstrap_begin(true).expect("restart");
    load(&b, &a, 100);
    assert_eq!(a.bootstrap_finish(0).expect("finish").get(&region("b")), 4);
    assert_eq!(value(&a, "b3"), Some(b"v".to_vec()));
}

/// A region whose clock runs behind its donor's: its first write after the bootstrap is
/// stamped above the value it loaded, so it replaces it (it was acknowledged and lost to the
/// older-looking value before the bootstrap raised the clock; found by the simulation of a
/// region added to a running cluster).
#[test]
fn a_write_after_a_bootstrap_is_stamped_above_what_the_snapshot_held() {
    let donor_clock = Arc::new(ManualClock::new(T0 + 400));
    let donor = open(Arc::new(MemBackend::default()), "b", &donor_clock);
    put(&donor, "k", "from-the-donor");
    let slow = Arc::new(ManualClock::new(T0));
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let a = open(backend.clone(), "a", &slow);
    a.bootstrap_begin(false).expect("begin");
    load(&donor, &a, 16);
    a.bootstrap_finish(0).expect("finish");
    assert_eq!(value(&a, "k").as_deref(), Some(&b"from-the-donor"[..]));
    put(&a, "k", "mine");
    assert_eq!(
        value(&a, "k").as_deref(),
        Some(&b"mine"[..]),
        "a write after the bootstrap lost to the loaded value"
    );
    // Also after a restart before any write: the raised clock was persisted with the load.
    let c_backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let c = open(c_backend.clone(), "c", &slow);
    c.bootstrap_begin(false).expect("begin");
    load(&donor, &c, 16);
    c.bootstrap_finish(0).expect("finish");
    c.close();
    drop(c);
    let c = open(c_backend, "c", &slow);
    put(&c, "k", "mine-after-restart");
    assert_eq!(
        value(&c, "k").as_deref(),
        Some(&b"mine-after-restart"[..]),
        "a write after the bootstrap and a restart lost to the loaded value"
    );
    drop(backend);
}

/// A removal takes effect after what was queued before it, refuses everything that comes from
/// the removed region afterwards (relays of its writes from others still apply), and survives a
/// restart; a region told it was removed takes no local write, across restarts too
/// (`docs/design/region-removal.md`).
#[test]
fn a_removal_refuses_what_comes_from_the_removed_region_and_survives_a_restart() {
    for (name, backend, _dir) in backends() {
        let clock = Arc::new(ManualClock::new(T0));
        let g = open(Arc::new(MemBackend::default()), "g", &clock);
        for i in 0..4 {
            put(&g, &format!("k{i}"), "v");
        }
        let from_g = |a: u64, b: u64| g.oplog(&region("g"), a, (b - a + 1) as usize).expect("log");
        let a = open(backend(), "a", &clock);
        a.apply_remote_from(region("g"), from_g(1, 2))
            .expect("apply");
        // Queued before the removal: applied before it takes effect.
        let (tx, rx) = std::sync::mpsc::channel();
        a.submit_remote_from(region("g"), from_g(3, 3), move |r| {
            let _ = tx.send(r.is_ok());
        });
        assert_eq!(
            a.remove_region(&region("g"), T0).expect("remove"),
            3,
            "{name}"
        );
        assert!(rx.recv().expect("reply"), "{name}");
        assert!(
            a.replication_view().removed.contains(&region("g")),
            "{name}"
        );
        // From g itself: refused, nothing applied. Relayed by another member: applied.
        let e = a
            .apply_remote_from(region("g"), from_g(4, 4))
            .expect_err("from a removed region");
        assert_eq!(e.code(), "ATOLL-REGION-REMOVED", "{name}");
        assert_eq!(a.applied().get(&region("g")), 3, "{name}");
        a.apply_remote_from(region("b"), from_g(4, 4))
            .expect("relay");
        assert_eq!(a.applied().get(&region("g")), 4, "{name}");
        assert_eq!(
            a.remove_region(&region("g"), T0 + 5).expect("again"),
            3,
            "{name}"
        );
        assert!(a.remove_region(&region("a"), T0).is_err(), "{name}: itself");
        drop(a);
        let a = open(backend(), "a", &clock);
        assert_eq!(
            a.removed_regions()
                .get(&region("g"))
                .map(|r| (r.at_ms, r.applied_then)),
            Some((T0, 3)),
            "{name}"
        );
        assert!(
            a.apply_remote_from(region("g"), from_g(4, 4)).is_err(),
            "{name}"
        );

        // The removed region's side: told it was removed, it takes no local write.
        put(&a, "before", "v");
        a.mark_removed(&region("b"), T0, 7).expect("mark");
        let e = a
            .write(
                "sessions",
                b"after",
                Intent::Put {
                    value: b"v".to_vec(),
                    context: None,
                    ttl: atoll_core::op::Ttl::Default,
                },
            )
            .expect_err("removed");
        assert!(matches!(e, AtollError::RegionRemoved(_)), "{name}: {e}");
        drop(a);
        let a = open(backend(), "a", &clock);
        let by = a.removed_by().expect("durable");
        assert_eq!((by.by, by.held_by_members), (region("b"), 7), "{name}");
        assert_eq!(
            value(&a, "before"),
            Some(b"v".to_vec()),
            "{name}: reads still served"
        );
        assert!(
            a.write("hits", b"c", Intent::CounterAdd { delta: 1 })
                .is_err(),
            "{name}"
        );
    }
}
