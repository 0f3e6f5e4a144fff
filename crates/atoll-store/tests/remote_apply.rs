//! Applying replicated entries when the storage fails part-way: the applied cursor must never
//! move past entries whose changes were not committed, or the re-sent entries are skipped as
//! duplicates and the region (and everything it relays) keeps a hole for good.

use atoll_config::KeyspaceConfig;
use atoll_core::AtollError;
use atoll_core::RegionId;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::op::{Intent, KeyState, OpEntry, Policy};
use atoll_store::backend::{MemBackend, Table};
use atoll_store::{Store, StoreOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod common;
use common::Hooked;

const T0: u64 = 1_700_000_000_000;

/// A backend over `mem` failing every read of the data key `poison` while the flag is set.
fn failing_reads(mem: Arc<MemBackend>) -> (Arc<Hooked>, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let backend = Hooked::new(mem).before_read(move |table, key| {
        if table == Table::Data && f.load(Ordering::SeqCst) && key.ends_with(b"poison") {
            return Err(AtollError::Storage("injected read failure".into()));
        }
        Ok(())
    });
    (Arc::new(backend), failing)
}

fn region(name: &str) -> RegionId {
    RegionId::new(name).expect("region")
}

fn opts(me: &str) -> StoreOptions {
    StoreOptions::new(
        region(me),
        vec![KeyspaceConfig::new("sessions", Policy::Lww)],
    )
}

/// Writes `keys` in a scratch store of region `origin` and returns its operation log.
fn entries_from(origin: &str, keys: &[&str]) -> Vec<OpEntry> {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let store = Store::open(Arc::new(MemBackend::default()), opts(origin), clock).expect("open");
    for k in keys {
        store
            .write(
                "sessions",
                k.as_bytes(),
                Intent::Put {
                    value: format!("{k}-value").into_bytes(),
                    context: None,
                    ttl: atoll_core::op::Ttl::Default,
                },
            )
            .expect("write");
    }
    store.oplog(&region(origin), 1, 100).expect("oplog")
}

fn value(store: &Store, key: &str) -> Option<Vec<u8>> {
    match store.get("sessions", key.as_bytes()).expect("get") {
        Some(KeyState::Lww(r)) => r.value,
        _ => None,
    }
}

#[test]
fn a_batch_that_fails_part_way_leaves_no_hole() {
    let entries = entries_from("eu-west-1", &["a", "poison", "c"]);
    let mem = Arc::new(MemBackend::default());
    let (backend, failing) = failing_reads(mem.clone());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0 + 10));
    let store = Store::open(backend.clone(), opts("us-east-1"), clock.clone()).expect("open");
    let origin = region("eu-west-1");

    // The second entry's read fails: the request fails as a whole, nothing is applied.
    let err = store.apply_remote(entries.clone());
    assert!(err.is_err(), "{err:?}");
    assert_eq!(
        store.applied().get(&origin),
        0,
        "cursor moved past a failed batch"
    );
    assert_eq!(value(&store, "a"), None);

    // The storage recovers and the peer sends the same entries again: all of them apply.
    failing.store(false, Ordering::SeqCst);
    let out = store.apply_remote(entries).expect("apply");
    assert_eq!(out.applied, 3, "{out:?}");
    assert_eq!(store.applied().get(&origin), 3);
    for k in ["a", "poison", "c"] {
        assert_eq!(
            value(&store, k),
            Some(format!("{k}-value").into_bytes()),
            "key {k}"
        );
    }

    // And the durable cursor agrees after a restart.
    store.close();
    drop(store);
    let store = Store::open(mem, opts("us-east-1"), clock).expect("reopen");
    assert_eq!(store.applied().get(&origin), 3);
    assert_eq!(value(&store, "a"), Some(b"a-value".to_vec()));
}

#[test]
fn a_failed_request_does_not_spoil_others_in_the_same_commit() {
    // Two requests share a group commit: one applies, the other fails part-way. The first is
    // committed in full; none of the second's entries are.
    let good = entries_from("ap-south-1", &["x", "y"]);
    let bad = entries_from("eu-west-1", &["a", "poison"]);
    let mem = Arc::new(MemBackend::default());
    let (backend, _failing) = failing_reads(mem);
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0 + 10));
    let store = Arc::new(Store::open(backend, opts("us-east-1"), clock).expect("open"));
    let (tx, rx) = std::sync::mpsc::channel();
    for batch in [good, bad] {
        let tx = tx.clone();
        store.submit_remote(batch, move |r| {
            let _ = tx.send(r.map(|o| o.applied));
        });
    }
    let mut results: Vec<_> = (0..2)
        .map(|_| rx.recv().expect("reply").map_err(|e| e.to_string()))
        .collect();
    results.sort_by_key(|r| r.is_err());
    assert_eq!(results[0], Ok(2));
    assert!(results[1].is_err());
    assert_eq!(store.applied().get(&region("ap-south-1")), 2);
    assert_eq!(store.applied().get(&region("eu-west-1")), 0);
    assert_eq!(value(&store, "x"), Some(b"x-value".to_vec()));
    assert_eq!(
        value(&store, "a"),
        None,
        "a failed request's first entry was committed"
    );
}

/// A gate that calls every replicated write of an epoch below `current` late.
struct EpochGate {
    current: u64,
}

impl atoll_store::WriteGate for EpochGate {
    fn permit(&self, _: &KeyspaceConfig, _key: &[u8]) -> atoll_core::Result<u64> {
        Ok(self.current)
    }
    fn is_late(&self, epoch: u64, _ts_ms: u64) -> bool {
        epoch < self.current
    }
}

#[test]
fn a_late_write_of_a_superseded_epoch_is_refused_and_recorded_in_the_fencing_ledger() {
    let mut entries = entries_from("eu-west-1", &["a", "b"]);
    // `a` was stamped under epoch 1 (superseded), `b` under the current epoch 2.
    entries[0].epoch = 1;
    entries[1].epoch = 2;
    let mut o = opts("us-east-1");
    o.gate = Some(Arc::new(EpochGate { current: 2 }));
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0 + 1_000));
    let store = Store::open(Arc::new(MemBackend::default()), o, clock).expect("open");
    let out = store.apply_remote(entries.clone()).expect("applies");
    assert_eq!(out.applied, 2, "the cursor moves past both");
    assert_eq!(out.late, vec![(region("eu-west-1"), entries[0].seq, 1)]);
    assert_eq!(value(&store, "a"), None, "the late write changed nothing");
    assert_eq!(value(&store, "b"), Some(b"b-value".to_vec()));
    let ledger = store.late_writes("sessions", 10).expect("ledger");
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    let rec = &ledger[0];
    assert_eq!(
        (rec.key.as_slice(), &rec.origin, rec.seq, rec.epoch, rec.ts),
        (
            b"a".as_slice(),
            &region("eu-west-1"),
            entries[0].seq,
            1,
            entries[0].ts
        )
    );
    assert_eq!(rec.recorded_at_ms, T0 + 1_000);
    // Applying the same entries again records nothing more (they are duplicates now).
    store.apply_remote(entries).expect("applies");
    assert_eq!(store.late_writes("sessions", 10).expect("ledger").len(), 1);
    assert!(store.late_writes("nope", 10).is_err(), "unknown keyspace");
}
