//! Rate-limit keyspaces in the store (`docs/design/rate-limits.md`): admissions are decided on
//! the writer thread against the key's windows, a denial writes nothing, replicated admissions
//! count, and a key whose windows all ended is collected past the horizon and the local clock.

use atoll_config::KeyspaceConfig;
use atoll_core::clock::ManualClock;
use atoll_core::crdt::ratewindow::{Algorithm, RateRule, RateWindows};
use atoll_core::hlc::Timestamp;
use atoll_core::op::{Intent, KeyState, OpEntry, Policy};
use atoll_core::{AtollError, RegionId};
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

fn setup() -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let mut ks = KeyspaceConfig::new("api", Policy::RateLimit);
    ks.ratelimit = Some(RateRule {
        limit: 3,
        window_ms: 1_000,
        algorithm: Algorithm::Fixed,
        shares: None,
    });
    let store = Store::open(
        Arc::new(MemBackend::default()),
        StoreOptions::new(region("us-east-1"), vec![ks]),
        clock.clone(),
    )
    .expect("open");
    (store, clock)
}

fn admit(store: &Store, cost: u64) -> Result<u64, AtollError> {
    store
        .write("api", b"user-1", Intent::Admit { cost })
        .map(|o| o.seq)
}

#[test]
fn admissions_stop_at_the_limit_and_a_denial_writes_nothing() {
    let (store, clock) = setup();
    assert!(admit(&store, 2).is_ok());
    assert!(admit(&store, 1).is_ok());
    let before = store.get("api", b"user-1").expect("get");
    let last = store.watermark();
    match admit(&store, 1) {
        Err(AtollError::RateLimited {
            limit, remaining, ..
        }) => assert_eq!((limit, remaining), (3, 0)),
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(
        store.get("api", b"user-1").expect("get"),
        before,
        "a denial changed the key"
    );
    assert_eq!(
        store.watermark().head,
        last.head,
        "a denial took a sequence number"
    );
    // The next window starts afresh.
    clock.advance(1_000);
    assert!(admit(&store, 3).is_ok());
    assert!(matches!(
        store.write("api", b"user-1", Intent::Admit { cost: 0 }),
        Err(AtollError::BadRequest(_))
    ));
}

#[test]
fn replicated_admissions_count_against_the_limit() {
    let (store, _) = setup();
    let ts = Timestamp::new(T0 + 1, 0);
    let mut windows = BTreeMap::new();
    let w = RateWindows::window_of(1_000, ts.wall_ms);
    windows.insert(w, BTreeMap::from([(region("eu-west-1"), 2)]));
    store
        .apply_remote(vec![OpEntry {
            origin: region("eu-west-1"),
            seq: 1,
            ts,
            keyspace: "api".into(),
            key: b"user-1".to_vec(),
            delta: KeyState::RateLimit(RateWindows {
                window_ms: 1_000,
                windows,
            }),
            epoch: 0,
        }])
        .expect("apply");
    assert!(admit(&store, 1).is_ok());
    assert!(matches!(
        admit(&store, 1),
        Err(AtollError::RateLimited { .. })
    ));
}

#[test]
fn an_idle_key_is_collected_past_the_horizon_and_the_local_clock() {
    let (store, clock) = setup();
    let out = store
        .write("api", b"user-1", Intent::Admit { cost: 1 })
        .expect("admit");
    let idle = RateWindows::window_of(1_000, out.ts.wall_ms) + 2_000;
    clock.set(idle + 10);
    assert_eq!(
        store
            .maintain(Some(idle))
            .expect("maintain")
            .rate_keys_collected,
        0
    );
    clock.set(idle - 1);
    assert_eq!(
        store
            .maintain(Some(idle + 1))
            .expect("maintain")
            .rate_keys_collected,
        0,
        "collected before the local clock passed the windows"
    );
    clock.set(idle);
    assert_eq!(
        store
            .maintain(Some(idle + 1))
            .expect("maintain")
            .rate_keys_collected,
        1
    );
    assert!(store.get("api", b"user-1").expect("get").is_none());
    assert!(admit(&store, 3).is_ok(), "a collected key starts afresh");
}
