//! What survives a power cut. `kill -9` keeps the page cache, so only a backend that drops what
//! was not fsynced can show a missing fsync: [`MemBackend::with_power_cuts`] keeps the durable
//! state and a prefix of what was committed since. Every acknowledged write, local or
//! replicated, must survive whatever prefix the cut keeps.

use atoll_config::KeyspaceConfig;
use atoll_core::RegionId;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::op::{Intent, KeyState, Policy};
use atoll_store::backend::{Backend, MemBackend};
use atoll_store::{Store, StoreOptions, read_applied};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn region(name: &str) -> RegionId {
    RegionId::new(name).expect("region")
}

fn open(backend: Arc<dyn Backend>, me: &str) -> Store {
    let opts = StoreOptions::new(
        region(me),
        vec![
            KeyspaceConfig::new("sessions", Policy::Lww),
            KeyspaceConfig::new("ratelimits", Policy::Counter),
        ],
    );
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    Store::open(backend, opts, clock).expect("open")
}

fn put(store: &Store, key: &str, value: &str) {
    store
        .write(
            "sessions",
            key.as_bytes(),
            Intent::Put {
                value: value.as_bytes().to_vec(),
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

#[test]
fn acknowledged_local_writes_survive_any_power_cut() {
    for keep in 0..3 {
        let backend = Arc::new(MemBackend::with_power_cuts());
        let store = open(backend.clone(), "us-east-1");
        for i in 0..20 {
            put(&store, &format!("k{i}"), &format!("v{i}"));
        }
        store.close();
        drop(store);
        backend.power_cut(keep).expect("power cut");
        let store = open(backend, "us-east-1");
        for i in 0..20 {
            assert_eq!(
                value(&store, &format!("k{i}")),
                Some(format!("v{i}").into_bytes()),
                "acknowledged write k{i} lost at a power cut keeping {keep} unsynced batches"
            );
        }
        assert_eq!(store.applied().get(&region("us-east-1")), 20);
    }
}

#[test]
fn applied_replicated_entries_survive_a_power_cut() {
    // eu-west-1 writes; us-east-1 applies its entries and would tell its peers it holds them.
    let origin = open(Arc::new(MemBackend::default()), "eu-west-1");
    for i in 0..10 {
        put(&origin, &format!("r{i}"), &format!("x{i}"));
    }
    let entries = origin.oplog(&region("eu-west-1"), 1, 100).expect("oplog");
    let backend = Arc::new(MemBackend::with_power_cuts());
    let store = open(backend.clone(), "us-east-1");
    for chunk in entries.chunks(3) {
        store.apply_remote(chunk.to_vec()).expect("apply");
    }
    assert_eq!(store.applied().get(&region("eu-west-1")), 10);
    store.close();
    drop(store);
    backend.power_cut(0).expect("power cut");
    assert_eq!(
        read_applied(&*backend, &region("us-east-1"))
            .expect("cursor")
            .get(&region("eu-west-1")),
        10,
        "the replication cursor went back after a power cut"
    );
    let store = open(backend, "us-east-1");
    for i in 0..10 {
        assert_eq!(
            value(&store, &format!("r{i}")),
            Some(format!("x{i}").into_bytes())
        );
    }
}

#[test]
fn the_power_cut_model_loses_what_was_not_synced() {
    // The model itself: a batch committed without durability is lost by a cut keeping nothing,
    // kept by one keeping it; a durable commit makes everything before it stable.
    use atoll_store::backend::{Mutation, Table};
    let b = MemBackend::with_power_cuts();
    let put = |k: &str| {
        vec![Mutation::Put(
            Table::Data,
            k.as_bytes().to_vec(),
            b"v".to_vec(),
        )]
    };
    b.commit(put("a"), false).expect("commit");
    b.commit(put("b"), true).expect("commit");
    b.commit(put("c"), false).expect("commit");
    b.commit(put("d"), false).expect("commit");
    assert_eq!(b.unsynced_batches(), 2);
    assert_eq!(b.power_cut(1).expect("cut"), 1);
    assert!(b.get(Table::Data, b"a").expect("get").is_some());
    assert!(b.get(Table::Data, b"b").expect("get").is_some());
    assert!(b.get(Table::Data, b"c").expect("get").is_some());
    assert!(b.get(Table::Data, b"d").expect("get").is_none());
    b.commit(put("e"), false).expect("commit");
    assert_eq!(b.power_cut(0).expect("cut"), 1);
    assert!(b.get(Table::Data, b"e").expect("get").is_none());
    assert!(b.get(Table::Data, b"c").expect("get").is_some());
}
