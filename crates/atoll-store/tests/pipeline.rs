//! The pipelined write path (`docs/design/pipelined-commit.md`): the writer builds the next
//! batch while the committer fsyncs the previous one.
//!
//! - a batch built while another is in flight sees that batch's writes (the overlay), and
//!   nothing in it is acknowledged before its own commit;
//! - when the in-flight commit fails, the batch built on it is refused too, nothing of either is
//!   acknowledged or kept, and the next write starts from the state before the failed batch.
//!
//! A commit is held open by a hook in the backend; every wait has a deadline.

mod common;

use atoll_config::KeyspaceConfig;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::op::{Intent, KeyState, Policy};
use atoll_core::{AtollError, RegionId, Result};
use atoll_store::backend::{Backend, FjallBackend, MemBackend, Table};
use atoll_store::{Store, StoreOptions, WriteOutcome};
use common::Hooked;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);
const T0: u64 = 1_700_000_000_000;

fn region() -> RegionId {
    RegionId::new("us-east-1").expect("region")
}

/// A backend whose first commit carrying a write waits, once it has started, until the test
/// says whether it succeeds; and which reports every point read of a data key ending in
/// `marker` (the writer reads a key it holds nowhere else).
struct Held {
    backend: Arc<dyn Backend>,
    entered: Receiver<()>,
    release: SyncSender<bool>,
    marker_read: Receiver<()>,
}

fn held(inner: Arc<dyn Backend>) -> Held {
    let (entered_tx, entered) = mpsc::sync_channel(1);
    let (release, release_rx) = mpsc::sync_channel::<bool>(1);
    let (marker_tx, marker_read) = mpsc::sync_channel(16);
    let first = AtomicBool::new(true);
    let release_rx = Mutex::new(release_rx);
    let backend = Hooked::new(inner)
        .before_commit(move |batch, _| {
            if common::carries_op(batch) && first.swap(false, Ordering::SeqCst) {
                let _ = entered_tx.send(());
                let ok = release_rx
                    .lock()
                    .map_err(|_| AtollError::Storage("test lock".into()))?
                    .recv_timeout(DEADLINE)
                    .map_err(|_| {
                        AtollError::Storage("the test never released the commit".into())
                    })?;
                if !ok {
                    return Err(AtollError::Storage("injected commit failure".into()));
                }
            }
            Ok(())
        })
        .before_read(move |table, key| {
            if table == Table::Data && key.ends_with(b"marker") {
                let _ = marker_tx.try_send(());
            }
            Ok(())
        });
    Held {
        backend: Arc::new(backend),
        entered,
        release,
        marker_read,
    }
}

fn open(backend: Arc<dyn Backend>) -> Store {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let keyspaces = vec![
        KeyspaceConfig::new("sessions", Policy::Lww),
        KeyspaceConfig::new("ratelimits", Policy::Counter),
    ];
    Store::open(backend, StoreOptions::new(region(), keyspaces), clock).expect("open")
}

fn incr() -> Intent {
    Intent::CounterAdd { delta: 1 }
}

fn put(v: &str) -> Intent {
    Intent::Put {
        value: v.as_bytes().to_vec(),
        context: None,
        ttl: atoll_core::op::Ttl::Default,
    }
}

/// Submits a write; its outcome arrives on the returned channel.
fn submit(store: &Store, ks: &str, key: &str, intent: Intent) -> Receiver<Result<WriteOutcome>> {
    let (tx, rx) = mpsc::sync_channel(1);
    store.submit(ks, key.as_bytes(), intent, move |r| {
        let _ = tx.send(r);
    });
    rx
}

fn counter(store: &Store, key: &str) -> i128 {
    match store.get("ratelimits", key.as_bytes()).expect("get") {
        Some(KeyState::Counter(c)) => c.value(),
        None => 0,
        other => panic!("not a counter: {other:?}"),
    }
}

fn backends() -> Vec<(&'static str, Arc<dyn Backend>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let fjall: Arc<dyn Backend> = Arc::new(FjallBackend::open(dir.path()).expect("fjall"));
    vec![
        ("memory", Arc::new(MemBackend::default()), None),
        ("fjall", fjall, Some(dir)),
    ]
}

/// Holds the first commit open, then has the writer build a second batch: an increment of the
/// key the held batch increments, then a write of `marker` (read from the backend, which tells
/// the test the increment before it was merged while the first commit was in flight).
fn second_batch_during_first_commit(
    h: &Held,
    store: &Store,
    name: &str,
) -> [Receiver<Result<WriteOutcome>>; 3] {
    let first = submit(store, "ratelimits", "n", incr());
    h.entered
        .recv_timeout(DEADLINE)
        .expect("first commit started");
    let second = submit(store, "ratelimits", "n", incr());
    let marker = submit(store, "sessions", "marker", put("m"));
    h.marker_read
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{name}: the writer never built the second batch"));
    for (what, rx) in [("first", &first), ("second", &second), ("marker", &marker)] {
        assert!(
            rx.try_recv().is_err(),
            "{name}: the {what} write was answered while the first commit was in flight"
        );
    }
    assert_eq!(
        store.watermark().head,
        0,
        "{name}: head moved before a commit"
    );
    [first, second, marker]
}

#[test]
fn the_next_batch_builds_on_the_batch_in_flight_and_waits_for_its_own_commit() {
    for (name, inner, _dir) in backends() {
        let h = held(inner);
        let store = open(h.backend.clone());
        let [first, second, marker] = second_batch_during_first_commit(&h, &store, name);
        h.release.send(true).expect("release");
        let a = first
            .recv_timeout(DEADLINE)
            .expect("answer")
            .expect("first");
        let b = second
            .recv_timeout(DEADLINE)
            .expect("answer")
            .expect("second");
        let m = marker
            .recv_timeout(DEADLINE)
            .expect("answer")
            .expect("marker");
        assert_eq!((a.seq, b.seq, m.seq), (1, 2, 3), "{name}");
        // Built on the uncommitted first increment: without it the key would read 1.
        assert_eq!(counter(&store, "n"), 2, "{name}");
        assert_eq!(store.watermark().head, 3, "{name}");
        let log = store.oplog(&region(), 1, 10).expect("oplog");
        assert_eq!(
            log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "{name}"
        );
    }
}

#[test]
fn a_failed_commit_refuses_the_batch_built_on_it_and_the_next_write_starts_before_both() {
    for (name, inner, _dir) in backends() {
        let h = held(inner);
        let store = open(h.backend.clone());
        let answers = second_batch_during_first_commit(&h, &store, name);
        h.release.send(false).expect("release");
        for (what, rx) in ["first", "second", "marker"].iter().zip(answers) {
            let r = rx.recv_timeout(DEADLINE).expect("answer");
            assert!(
                r.is_err(),
                "{name}: the {what} write was acknowledged: {r:?}"
            );
        }
        assert_eq!(counter(&store, "n"), 0, "{name}");
        assert_eq!(
            store.get("sessions", b"marker").expect("get"),
            None,
            "{name}"
        );
        let out = store
            .write("ratelimits", b"n", incr())
            .expect("write after");
        assert_eq!(
            out.seq, 1,
            "{name}: the refused writes' sequence numbers are reused"
        );
        assert_eq!(counter(&store, "n"), 1, "{name}");
        assert_eq!(
            store.oplog(&region(), 1, 10).expect("oplog").len(),
            1,
            "{name}"
        );
        assert_eq!(store.applied().get(&region()), 1, "{name}");
        assert_eq!(
            store.stats().commit_failures_total.load(Ordering::Relaxed),
            1
        );
    }
}
