//! The store's contract, run against every backend (in-memory and fjall on a temporary
//! directory): atomic multi-table batches and ordered scans, group commit, rollback after a
//! failed commit, replicated apply, maintenance, and state that survives a reopen.

use atoll_config::KeyspaceConfig;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::op::{Intent, KeyState, OpEntry, Policy};
use atoll_core::{AtollError, RegionId};
use atoll_store::backend::{Backend, FjallBackend, MemBackend, Mutation, Table};
use atoll_store::{Store, StoreOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

mod common;
use common::Hooked;

const T0: u64 = 1_700_000_000_000;

/// A backend under test that can be opened again on the same data.
trait Kind {
    fn name(&self) -> &'static str;
    fn open(&self) -> Arc<dyn Backend>;
}

struct Mem(Arc<MemBackend>);
impl Kind for Mem {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn open(&self) -> Arc<dyn Backend> {
        self.0.clone()
    }
}

struct Fjall(tempfile::TempDir);
impl Kind for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }
    fn open(&self) -> Arc<dyn Backend> {
        let dir: PathBuf = self.0.path().to_path_buf();
        Arc::new(FjallBackend::open(&dir).expect("fjall opens"))
    }
}

fn kinds() -> Vec<Box<dyn Kind>> {
    vec![
        Box::new(Mem(Arc::new(MemBackend::default()))),
        Box::new(Fjall(tempfile::tempdir().expect("tempdir"))),
    ]
}

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

fn keyspaces() -> Vec<KeyspaceConfig> {
    vec![
        KeyspaceConfig::new("sessions", Policy::Lww),
        KeyspaceConfig::new("ratelimits", Policy::Counter),
    ]
}

fn store_on(backend: Arc<dyn Backend>, me: &str, clock: Arc<ManualClock>) -> Store {
    let clock: Arc<dyn Clock> = clock;
    Store::open(backend, StoreOptions::new(region(me), keyspaces()), clock).expect("open")
}

fn put_intent(v: &str) -> Intent {
    Intent::Put {
        value: v.as_bytes().to_vec(),
        context: None,
        ttl: atoll_core::op::Ttl::Default,
    }
}

fn value(store: &Store, key: &str) -> Option<Vec<u8>> {
    match store.get("sessions", key.as_bytes()).expect("get") {
        Some(KeyState::Lww(r)) => r.value,
        _ => None,
    }
}

#[test]
fn batches_are_atomic_across_tables_and_scans_are_ordered() {
    for kind in kinds() {
        let b = kind.open();
        let name = kind.name();
        b.commit(
            vec![
                Mutation::Put(Table::Data, b"k/2".to_vec(), b"two".to_vec()),
                Mutation::Put(Table::Data, b"k/1".to_vec(), b"one".to_vec()),
                Mutation::Put(Table::Data, b"k/3".to_vec(), b"three".to_vec()),
                Mutation::Put(Table::Oplog, b"k/1".to_vec(), b"other table".to_vec()),
            ],
            true,
        )
        .expect("commit");
        b.commit(
            vec![
                Mutation::Delete(Table::Data, b"k/3".to_vec()),
                Mutation::Put(Table::Data, b"k/2".to_vec(), b"TWO".to_vec()),
            ],
            true,
        )
        .expect("commit");
        let rows = b.range(Table::Data, b"k/", b"k/~", 100).expect("range");
        assert_eq!(
            rows,
            vec![
                (b"k/1".to_vec(), b"one".to_vec()),
                (b"k/2".to_vec(), b"TWO".to_vec())
            ],
            "{name}"
        );
        assert_eq!(
            b.range(Table::Data, b"k/", b"k/~", 1).expect("range").len(),
            1,
            "{name}: limit"
        );
        assert_eq!(
            b.last_in(Table::Data, b"k/", b"k/~").expect("last"),
            Some((b"k/2".to_vec(), b"TWO".to_vec())),
            "{name}"
        );
        assert_eq!(
            b.get(Table::Oplog, b"k/1").expect("get"),
            Some(b"other table".to_vec()),
            "{name}: tables are separate"
        );
        assert_eq!(b.get(Table::Data, b"k/3").expect("get"), None, "{name}");
        drop(b);
        let b = kind.open();
        assert_eq!(
            b.get(Table::Data, b"k/2").expect("get"),
            Some(b"TWO".to_vec()),
            "{name}: a committed batch survives a reopen"
        );
    }
}

#[test]
fn concurrent_writes_share_commits_and_get_contiguous_sequence_numbers() {
    for kind in kinds() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(store_on(kind.open(), "us-east-1", clock));
        let (tx, rx) = mpsc::channel();
        let n = 400;
        for i in 0..n {
            let tx = tx.clone();
            store.submit(
                "sessions",
                format!("k{i}").as_bytes(),
                put_intent("v"),
                move |r| {
                    let _ = tx.send(r.map(|o| o.seq));
                },
            );
        }
        let mut seqs: Vec<u64> = (0..n)
            .map(|_| rx.recv().expect("reply").expect("acknowledged"))
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "{}", kind.name());
        let stats = store.stats();
        assert_eq!(stats.writes_total.load(Ordering::Relaxed), n as u64);
        let commits = stats.commits_total.load(Ordering::Relaxed);
        // With a real fsync, writes queued behind one commit share the next (the in-memory
        // backend may be fast enough to commit each alone).
        if kind.name() == "fjall" {
            assert!(
                commits < n as u64,
                "fjall: {commits} commits for {n} writes"
            );
        }
    }
}

/// A backend over `inner` failing as many commits carrying an operation-log entry as the
/// counter says.
fn failing_commits(inner: Arc<dyn Backend>) -> (Arc<Hooked>, Arc<AtomicUsize>) {
    let fail_next = Arc::new(AtomicUsize::new(0));
    let n = fail_next.clone();
    let backend = Hooked::new(inner).before_commit(move |batch, _| {
        if common::carries_op(batch)
            && n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(AtollError::Storage("injected commit failure".into()));
        }
        Ok(())
    });
    (Arc::new(backend), fail_next)
}

#[test]
fn a_failed_commit_acknowledges_nothing_and_changes_nothing() {
    for kind in kinds() {
        let name = kind.name();
        let (backend, fail_next) = failing_commits(kind.open());
        let clock = Arc::new(ManualClock::new(T0));
        let store = store_on(backend.clone(), "us-east-1", clock.clone());
        store
            .write("sessions", b"a", put_intent("1"))
            .expect("write");
        fail_next.store(1, Ordering::SeqCst);
        let err = store.write("sessions", b"b", put_intent("2"));
        assert!(err.is_err(), "{name}: {err:?}");
        assert_eq!(value(&store, "b"), None, "{name}");
        assert_eq!(store.applied().get(&region("us-east-1")), 1, "{name}");
        // The next write takes the sequence number the failed one did not use.
        let out = store
            .write("sessions", b"c", put_intent("3"))
            .expect("write");
        assert_eq!(out.seq, 2, "{name}");
        let log = store.oplog(&region("us-east-1"), 1, 10).expect("oplog");
        assert_eq!(
            log.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"c".to_vec()],
            "{name}"
        );
    }
}

fn entries_of(origin: &str, writes: &[(&str, &str)]) -> Vec<OpEntry> {
    let store = store_on(
        Arc::new(MemBackend::default()),
        origin,
        Arc::new(ManualClock::new(T0)),
    );
    for (k, v) in writes {
        store
            .write("sessions", k.as_bytes(), put_intent(v))
            .expect("write");
    }
    store.oplog(&region(origin), 1, 100).expect("oplog")
}

#[test]
fn replicated_entries_apply_in_order_once_and_are_relayed() {
    for kind in kinds() {
        let name = kind.name();
        let entries = entries_of("eu-west-1", &[("a", "1"), ("b", "2"), ("c", "3")]);
        let clock = Arc::new(ManualClock::new(T0 + 5));
        let store = store_on(kind.open(), "us-east-1", clock.clone());
        // A gap: entry 2 before entry 1 is skipped, entry 1 applies.
        let out = store
            .apply_remote(vec![entries[1].clone(), entries[0].clone()])
            .expect("apply");
        assert_eq!((out.applied, out.skipped, out.gaps), (1, 1, 1), "{name}");
        // Duplicates are skipped (not gaps), the rest applies.
        let out = store.apply_remote(entries.clone()).expect("apply");
        assert_eq!((out.applied, out.skipped, out.gaps), (2, 1, 0), "{name}");
        assert_eq!(store.applied().get(&region("eu-west-1")), 3, "{name}");
        assert_eq!(value(&store, "c"), Some(b"3".to_vec()), "{name}");
        // Applied entries are in this region's log, so they can be relayed.
        assert_eq!(
            store.oplog(&region("eu-west-1"), 1, 10).expect("oplog"),
            entries,
            "{name}"
        );
        store.close();
        drop(store);
        let store = store_on(kind.open(), "us-east-1", clock);
        assert_eq!(
            store.applied().get(&region("eu-west-1")),
            3,
            "{name}: cursor after reopen"
        );
    }
}

#[test]
fn maintenance_collects_tombstones_below_the_horizon_only() {
    for kind in kinds() {
        let name = kind.name();
        let clock = Arc::new(ManualClock::new(T0));
        let store = store_on(kind.open(), "us-east-1", clock.clone());
        store
            .write("sessions", b"old", put_intent("x"))
            .expect("write");
        let del_old = store
            .write("sessions", b"old", Intent::Delete { context: None })
            .expect("delete");
        clock.advance(10_000);
        store
            .write("sessions", b"new", put_intent("y"))
            .expect("write");
        store
            .write("sessions", b"new", Intent::Delete { context: None })
            .expect("delete");
        // No horizon: nothing is collected.
        assert_eq!(
            store.maintain(None).expect("maintain").tombstones_collected,
            0
        );
        // A horizon between the two deletes collects the older tombstone only.
        let out = store
            .maintain(Some(del_old.ts.wall_ms + 1))
            .expect("maintain");
        assert_eq!(out.tombstones_collected, 1, "{name}");
        assert!(
            store.get("sessions", b"old").expect("get").is_none(),
            "{name}"
        );
        assert!(
            store.get("sessions", b"new").expect("get").is_some(),
            "{name}"
        );
        // A tombstone overwritten by a later write is not collected with the key's live value.
        store
            .write("sessions", b"new", put_intent("again"))
            .expect("write");
        let out = store.maintain(Some(T0 + 60_000)).expect("maintain");
        assert_eq!(out.tombstones_collected, 0, "{name}");
        assert_eq!(value(&store, "new"), Some(b"again".to_vec()), "{name}");
    }
}

#[test]
fn an_intent_for_a_strong_keyspace_is_refused_and_changes_nothing() {
    // Strong keyspaces are served by the strong group (consensus), never by the CRDT store.
    let clock = Arc::new(ManualClock::new(T0));
    let dyn_clock: Arc<dyn Clock> = clock;
    let mut ks = keyspaces();
    ks.push(KeyspaceConfig::new("seats", Policy::Strong));
    let store = Store::open(
        Arc::new(MemBackend::default()),
        StoreOptions::new(region("us-east-1"), ks),
        dyn_clock,
    )
    .expect("open");
    let e = store
        .write("seats", b"12A", put_intent("alice"))
        .expect_err("refused");
    assert_eq!(e.code(), "ATOLL-WRONG-POLICY", "{e}");
    assert!(e.to_string().contains("strong group"), "{e}");
    assert_eq!(store.stats().last_seq.load(Ordering::Relaxed), 0);
    assert!(store.get("seats", b"12A").expect("get").is_none());
    store.close();
}
