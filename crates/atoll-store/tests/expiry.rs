//! Expiring keys in the store (`docs/design/expiring-keys.md`): the expiry a write stamps, the
//! keyspace default, `Ttl::Keep`, `Intent::Expire`, the policies that refuse it, collection by
//! the tombstone horizon and the local clock, revival, and records of older encodings.

use atoll_config::KeyspaceConfig;
use atoll_core::clock::ManualClock;
use atoll_core::codec;
use atoll_core::crdt::lww::LwwRegister;
use atoll_core::op::{Intent, KeyState, OpEntry, Policy, Ttl};
use atoll_core::{AtollError, RegionId};
use atoll_store::backend::{Backend, MemBackend, Mutation, Table};
use atoll_store::keys;
use atoll_store::{Store, StoreOptions};
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

fn open(backend: Arc<MemBackend>, clock: Arc<ManualClock>, default_ttl: Option<u64>) -> Store {
    let mut sessions = KeyspaceConfig::new("sessions", Policy::Lww);
    sessions.default_ttl_ms = default_ttl;
    let ks = vec![
        sessions,
        KeyspaceConfig::new("carts", Policy::Mvr),
        KeyspaceConfig::new("hits", Policy::Counter),
    ];
    Store::open(backend, StoreOptions::new(region("us-east-1"), ks), clock).expect("open")
}

fn setup(default_ttl: Option<u64>) -> (Store, Arc<ManualClock>, Arc<MemBackend>) {
    let clock = Arc::new(ManualClock::new(T0));
    let backend = Arc::new(MemBackend::default());
    (
        open(backend.clone(), clock.clone(), default_ttl),
        clock,
        backend,
    )
}

fn put(value: &str, ttl: Ttl) -> Intent {
    Intent::Put {
        value: value.as_bytes().to_vec(),
        context: None,
        ttl,
    }
}

fn lww(store: &Store, key: &str) -> Option<LwwRegister> {
    match store.get("sessions", key.as_bytes()).expect("get") {
        Some(KeyState::Lww(r)) => Some(r),
        None => None,
        Some(other) => panic!("not an lww state: {other:?}"),
    }
}

fn live(store: &Store, key: &str) -> Option<String> {
    lww(store, key)
        .and_then(|r| r.live_value(store.now_ms()).cloned())
        .map(|v| String::from_utf8(v).expect("utf-8"))
}

#[test]
fn a_write_expires_its_ttl_after_its_timestamp_by_the_local_clock() {
    let (store, clock, _) = setup(None);
    let out = store
        .write("sessions", b"alice", put("v1", Ttl::After(30_000)))
        .expect("write");
    let r = lww(&store, "alice").expect("written");
    assert_eq!(r.expires_ms, Some(out.ts.wall_ms + 30_000));
    assert_eq!(live(&store, "alice").as_deref(), Some("v1"));
    clock.advance(29_999);
    assert_eq!(
        live(&store, "alice").as_deref(),
        Some("v1"),
        "expired early"
    );
    clock.advance(1);
    assert_eq!(live(&store, "alice"), None, "not expired at its expiry");
    // The state is still there (collection needs the horizon); only reads hide it.
    assert!(lww(&store, "alice").is_some());
}

#[test]
fn the_keyspace_default_applies_to_puts_that_name_no_ttl() {
    let (store, _, _) = setup(Some(60_000));
    let out = store
        .write("sessions", b"a", put("x", Ttl::Default))
        .expect("write");
    assert_eq!(
        lww(&store, "a").unwrap().expires_ms,
        Some(out.ts.wall_ms + 60_000)
    );
    store
        .write("sessions", b"b", put("x", Ttl::Never))
        .expect("write");
    assert_eq!(
        lww(&store, "b").unwrap().expires_ms,
        None,
        "ttl=none ignored the default"
    );
    let out = store
        .write("sessions", b"c", put("x", Ttl::After(5)))
        .expect("write");
    assert_eq!(
        lww(&store, "c").unwrap().expires_ms,
        Some(out.ts.wall_ms + 5)
    );
    // A delete carries no expiry, default or not.
    store
        .write("sessions", b"a", Intent::Delete { context: None })
        .expect("delete");
    assert_eq!(lww(&store, "a").unwrap().expires_ms, None);
}

#[test]
fn keep_keeps_a_live_expiry_and_only_a_live_one() {
    let (store, clock, _) = setup(None);
    let first = store
        .write("sessions", b"k", put("v1", Ttl::After(10_000)))
        .expect("write");
    clock.advance(1_000);
    store
        .write("sessions", b"k", put("v2", Ttl::Keep))
        .expect("write");
    let r = lww(&store, "k").unwrap();
    assert_eq!(r.value.as_deref(), Some(&b"v2"[..]));
    assert_eq!(
        r.expires_ms,
        Some(first.ts.wall_ms + 10_000),
        "KEEPTTL lost the expiry"
    );
    // Once expired there is no expiry to keep: the new value lives.
    clock.advance(20_000);
    store
        .write("sessions", b"k", put("v3", Ttl::Keep))
        .expect("write");
    assert_eq!(lww(&store, "k").unwrap().expires_ms, None);
    assert_eq!(live(&store, "k").as_deref(), Some("v3"));
}

#[test]
fn expire_rewrites_a_live_value_and_refuses_an_absent_or_expired_one() {
    let (store, clock, _) = setup(None);
    let expire = |ttl| Intent::Expire { ttl };
    assert!(matches!(
        store.write("sessions", b"k", expire(Some(Ttl::After(1_000)))),
        Err(AtollError::NotFound)
    ));
    store
        .write("sessions", b"k", put("v", Ttl::Never))
        .expect("write");
    let out = store
        .write("sessions", b"k", expire(Some(Ttl::After(1_000))))
        .expect("expire");
    let r = lww(&store, "k").unwrap();
    assert_eq!(
        r.value.as_deref(),
        Some(&b"v"[..]),
        "EXPIRE changed the value"
    );
    assert_eq!(r.expires_ms, Some(out.ts.wall_ms + 1_000));
    // PERSIST.
    store
        .write("sessions", b"k", expire(None))
        .expect("persist");
    assert_eq!(lww(&store, "k").unwrap().expires_ms, None);
    store
        .write("sessions", b"k", expire(Some(Ttl::After(1_000))))
        .expect("expire");
    clock.advance(1_000);
    let before = lww(&store, "k");
    assert!(matches!(
        store.write("sessions", b"k", expire(None)),
        Err(AtollError::NotFound)
    ));
    assert_eq!(lww(&store, "k"), before, "a refused EXPIRE changed the key");
    // Deleted keys have nothing to expire either.
    store
        .write("sessions", b"d", put("v", Ttl::Never))
        .expect("write");
    store
        .write("sessions", b"d", Intent::Delete { context: None })
        .expect("delete");
    assert!(matches!(
        store.write("sessions", b"d", expire(Some(Ttl::After(5)))),
        Err(AtollError::NotFound)
    ));
}

#[test]
fn bad_ttls_and_other_policies_are_refused_and_change_nothing() {
    let (store, _, _) = setup(None);
    for ttl in [Ttl::After(0), Ttl::After(atoll_core::op::MAX_TTL_MS + 1)] {
        let e = store
            .write("sessions", b"k", put("v", ttl))
            .expect_err("a bad ttl was accepted");
        assert!(matches!(e, AtollError::BadRequest(_)), "{e}");
        assert!(e.to_string().contains("time to live"), "{e}");
    }
    assert!(lww(&store, "k").is_none());
    let e = store
        .write("carts", b"k", put("v", Ttl::Keep))
        .expect_err("an mvr write kept an expiry");
    assert!(e.to_string().contains("no one expiry to keep"), "{e}");
    assert!(store.get("carts", b"k").expect("get").is_none());
    let e = store
        .write("carts", b"k", Intent::Expire { ttl: None })
        .expect_err("an mvr key took EXPIRE");
    assert!(e.to_string().contains("EXPIRE and PERSIST"), "{e}");
    let e = store
        .write("hits", b"k", Intent::Expire { ttl: None })
        .expect_err("a counter took an expiry");
    assert!(matches!(e, AtollError::WrongPolicy { .. }), "{e}");
    // An mvr put without a ttl is as before.
    store
        .write("carts", b"k", put("v", Ttl::Default))
        .expect("mvr put");
}

#[test]
fn an_expired_value_is_collected_only_past_the_horizon_and_the_local_clock() {
    let (store, clock, _) = setup(None);
    let out = store
        .write("sessions", b"k", put("v", Ttl::After(10_000)))
        .expect("write");
    let e = out.ts.wall_ms + 10_000;
    // Horizon past the write but not the expiry: nothing.
    clock.advance(20_000);
    let m = store.maintain(Some(e)).expect("maintain");
    assert_eq!(m.expired_collected, 0);
    assert!(lww(&store, "k").is_some());
    // Horizon past the expiry but this region's clock is not (the HLC watermarks ran ahead).
    clock.set(e - 1);
    let m = store.maintain(Some(e + 1)).expect("maintain");
    assert_eq!(
        m.expired_collected, 0,
        "collected a value the region still reads as live"
    );
    assert_eq!(live(&store, "k").as_deref(), Some("v"));
    // The index entry was kept: once the clock passes, the same horizon collects it.
    clock.set(e);
    let m = store.maintain(Some(e + 1)).expect("maintain");
    assert_eq!(m.expired_collected, 1);
    assert!(lww(&store, "k").is_none(), "not collected");
    // Revival: a later write brings the key back, its version count above the collected one.
    let w = store
        .write("sessions", b"k", put("v2", Ttl::Never))
        .expect("write");
    let r = lww(&store, "k").unwrap();
    assert_eq!(live(&store, "k").as_deref(), Some("v2"));
    assert_eq!(r.vv.get(&region("us-east-1")), w.seq);
}

#[test]
fn a_value_overwritten_before_its_expiry_is_not_collected() {
    let (store, clock, _) = setup(None);
    let out = store
        .write("sessions", b"k", put("v", Ttl::After(1_000)))
        .expect("write");
    store
        .write("sessions", b"k", put("w", Ttl::Never))
        .expect("write");
    clock.advance(5_000);
    let m = store
        .maintain(Some(out.ts.wall_ms + 5_000))
        .expect("maintain");
    assert_eq!(m.expired_collected, 0);
    assert_eq!(live(&store, "k").as_deref(), Some("w"));
}

#[test]
fn a_value_written_already_expired_waits_for_the_horizon_to_pass_its_write() {
    let (store, clock, _) = setup(None);
    // EXAT in the past: the write is kept (it hides older values everywhere) and reads absent.
    let out = store
        .write("sessions", b"k", put("v", Ttl::At(T0 - 60_000)))
        .expect("write");
    assert_eq!(live(&store, "k"), None);
    clock.advance(1_000);
    // A horizon past the expiry but not past the write: every region may not hold it yet.
    let m = store.maintain(Some(out.ts.wall_ms)).expect("maintain");
    assert_eq!(m.expired_collected, 0);
    let m = store.maintain(Some(out.ts.wall_ms + 1)).expect("maintain");
    assert_eq!(m.expired_collected, 1);
}

#[test]
fn a_replicated_expiring_write_keeps_its_origins_expiry() {
    let (store, _, _) = setup(Some(1_000));
    let ts = atoll_core::hlc::Timestamp::new(T0 - 500, 0);
    let delta = LwwRegister::write(None, &region("eu-west-1"), ts, Some(b"x".to_vec()))
        .expiring(Some(T0 + 90_000));
    store
        .apply_remote(vec![OpEntry {
            origin: region("eu-west-1"),
            seq: 1,
            ts,
            keyspace: "sessions".into(),
            key: b"k".to_vec(),
            delta: KeyState::Lww(delta),
            epoch: 0,
        }])
        .expect("apply");
    // Neither the receiver's default nor its clock changes the writer's expiry.
    assert_eq!(lww(&store, "k").unwrap().expires_ms, Some(T0 + 90_000));
}

/// The layout of an lww register before encoding version 3 (no expiry).
#[derive(serde::Serialize)]
struct LwwV2 {
    value: Option<Vec<u8>>,
    ts: atoll_core::hlc::Timestamp,
    origin: RegionId,
    vv: atoll_core::causal::VersionVector,
}

#[derive(serde::Serialize)]
enum StateV2 {
    Lww(LwwV2),
}

#[derive(serde::Serialize)]
struct EntryV2 {
    origin: RegionId,
    seq: u64,
    ts: atoll_core::hlc::Timestamp,
    keyspace: String,
    key: Vec<u8>,
    delta: StateV2,
    epoch: u64,
}

fn v2(value: &impl serde::Serialize) -> Vec<u8> {
    postcard::to_extend(value, 2u16.to_le_bytes().to_vec()).expect("encode")
}

#[test]
fn states_and_log_entries_of_encoding_version_2_read_as_never_expiring() {
    let (store, _, backend) = setup(None);
    let ts = atoll_core::hlc::Timestamp::new(T0 - 10, 0);
    let mut vv = atoll_core::causal::VersionVector::new();
    vv.increment(&region("us-east-1"));
    let reg = || LwwV2 {
        value: Some(b"old".to_vec()),
        ts,
        origin: region("us-east-1"),
        vv: vv.clone(),
    };
    backend
        .commit(
            vec![Mutation::Put(
                Table::Data,
                keys::data_key("sessions", b"k"),
                v2(&StateV2::Lww(reg())),
            )],
            true,
        )
        .expect("commit");
    let r = lww(&store, "k").expect("read a v2 state");
    assert_eq!(r.value.as_deref(), Some(&b"old"[..]));
    assert_eq!(r.expires_ms, None);
    let entry = v2(&EntryV2 {
        origin: region("us-east-1"),
        seq: 7,
        ts,
        keyspace: "sessions".into(),
        key: b"k".to_vec(),
        delta: StateV2::Lww(reg()),
        epoch: 4,
    });
    let e = codec::decode_entry(&entry).expect("read a v2 entry");
    assert_eq!((e.seq, e.epoch), (7, 4));
    assert!(
        matches!(&e.delta, KeyState::Lww(r) if r.expires_ms.is_none() && r.value.as_deref() == Some(&b"old"[..]))
    );
    // The generic decoder refuses it rather than misread the epoch as an expiry.
    assert!(codec::decode::<OpEntry>(&entry).is_err());
}

#[test]
fn a_peer_clock_running_ahead_does_not_expire_keys_early_here() {
    // A peer's write stamped 400 ms ahead (within max_clock_offset) moves this region's HLC
    // ahead; expiry is still judged by the physical clock.
    let (store, clock, _) = setup(None);
    let out = store
        .write("sessions", b"k", put("v", Ttl::After(300)))
        .expect("write");
    let ahead = atoll_core::hlc::Timestamp::new(out.ts.wall_ms + 400, 0);
    store
        .apply_remote(vec![OpEntry {
            origin: region("eu-west-1"),
            seq: 1,
            ts: ahead,
            keyspace: "sessions".into(),
            key: b"other".to_vec(),
            delta: KeyState::Lww(LwwRegister::write(
                None,
                &region("eu-west-1"),
                ahead,
                Some(b"x".to_vec()),
            )),
            epoch: 0,
        }])
        .expect("apply");
    // The next local write is stamped after the peer's (the HLC moved) ...
    let later = store
        .write("sessions", b"third", put("y", Ttl::Never))
        .expect("write");
    assert!(
        later.ts > ahead,
        "the HLC did not move: {} <= {ahead}",
        later.ts
    );
    // ... but the key written with 300 ms to live still reads as live until the local clock
    // passes its expiry.
    assert_eq!(
        live(&store, "k").as_deref(),
        Some("v"),
        "expired by the HLC"
    );
    clock.advance(299);
    assert_eq!(live(&store, "k").as_deref(), Some("v"));
    clock.advance(1);
    assert_eq!(live(&store, "k"), None);
}

fn mvr(store: &Store, key: &str) -> atoll_core::crdt::mvr::MvRegister {
    match store.get("carts", key.as_bytes()).expect("get") {
        Some(KeyState::Mvr(r)) => r,
        None => Default::default(),
        Some(other) => panic!("not an mvr state: {other:?}"),
    }
}

fn mvr_values(store: &Store, key: &str) -> Vec<String> {
    mvr(store, key)
        .live_at(store.now_ms())
        .iter()
        .filter_map(|s| s.value.clone())
        .map(|v| String::from_utf8(v).expect("utf-8"))
        .collect()
}

#[test]
fn an_mvr_sibling_expires_on_its_own_and_is_collected_keeping_the_context() {
    let (store, clock, _) = setup(None);
    // Two concurrent siblings (no context): one expires, the other does not.
    let a = store
        .write("carts", b"k", put("short", Ttl::After(1_000)))
        .expect("write");
    store
        .write("carts", b"k", put("long", Ttl::Never))
        .expect("write");
    let e = a.ts.wall_ms + 1_000;
    let reg = mvr(&store, "k");
    assert_eq!(
        reg.siblings
            .iter()
            .map(|s| s.expires_ms)
            .collect::<Vec<_>>(),
        vec![Some(e), None]
    );
    assert_eq!(mvr_values(&store, "k"), vec!["short", "long"]);
    clock.set(e);
    assert_eq!(
        mvr_values(&store, "k"),
        vec!["long"],
        "expired by the local clock"
    );
    // Collection waits for the horizon to pass the expiry, and for the local clock.
    let m = store.maintain(Some(e)).expect("maintain");
    assert_eq!(
        m.expired_collected, 0,
        "the horizon has not passed the expiry"
    );
    clock.set(e - 1);
    let m = store.maintain(Some(e + 1)).expect("maintain");
    assert_eq!(
        m.expired_collected, 0,
        "collected a sibling the region reads as live"
    );
    clock.set(e);
    let m = store.maintain(Some(e + 1)).expect("maintain");
    assert_eq!(m.expired_collected, 1);
    let reg = mvr(&store, "k");
    assert_eq!(reg.siblings.len(), 1, "{reg:?}");
    assert!(
        reg.ctx
            .contains(&atoll_core::causal::Dot::new(region("us-east-1"), 1))
    );
    // The next write takes a dot the key never had.
    let w = store
        .write("carts", b"k", put("next", Ttl::After(500)))
        .expect("write");
    let reg = mvr(&store, "k");
    let mine = reg
        .siblings
        .iter()
        .find(|s| s.ts == w.ts)
        .expect("the new sibling");
    assert_eq!(
        mine.dot,
        atoll_core::causal::Dot::new(region("us-east-1"), 3)
    );
    // Its own expiry is indexed too: collected in a later pass.
    clock.set(w.ts.wall_ms + 500);
    let m = store.maintain(Some(w.ts.wall_ms + 501)).expect("maintain");
    assert_eq!(m.expired_collected, 1);
    assert_eq!(mvr_values(&store, "k"), vec!["long"]);
}

#[test]
fn the_mvr_default_ttl_applies_and_expired_siblings_do_not_count_toward_the_limit() {
    let clock = Arc::new(ManualClock::new(T0));
    let backend = Arc::new(MemBackend::default());
    let mut carts = KeyspaceConfig::new("carts", Policy::Mvr);
    carts.default_ttl_ms = Some(1_000);
    carts.max_siblings = 2;
    let store = Store::open(
        backend,
        StoreOptions::new(region("us-east-1"), vec![carts]),
        clock.clone(),
    )
    .expect("open");
    let a = store
        .write("carts", b"k", put("a", Ttl::Default))
        .expect("write");
    store
        .write("carts", b"k", put("b", Ttl::Default))
        .expect("write");
    assert!(
        mvr(&store, "k")
            .siblings
            .iter()
            .all(|s| s.expires_ms.is_some()),
        "the default applies"
    );
    let e = store
        .write("carts", b"k", put("c", Ttl::Never))
        .expect_err("a third live sibling");
    assert!(matches!(e, AtollError::SiblingLimit { .. }), "{e}");
    // Once the two expire, a third sibling is within the limit.
    clock.set(a.ts.wall_ms + 1_000 + 5);
    store
        .write("carts", b"k", put("c", Ttl::Never))
        .expect("expired siblings do not count");
    assert_eq!(mvr_values(&store, "k"), vec!["c"]);
}

/// The layout of an mvr sibling before encoding version 4 (no expiry).
#[derive(serde::Serialize)]
struct SiblingV3 {
    dot: atoll_core::causal::Dot,
    ts: atoll_core::hlc::Timestamp,
    value: Option<Vec<u8>>,
}

#[derive(serde::Serialize)]
struct MvrV3 {
    siblings: Vec<SiblingV3>,
    ctx: atoll_core::causal::CausalContext,
}

/// `KeyState` of version 3: the mvr variant is the second.
#[derive(serde::Serialize)]
#[allow(dead_code)]
enum StateV3 {
    Lww(LwwV2),
    Mvr(MvrV3),
}

#[test]
fn mvr_states_log_entries_and_frames_of_encoding_version_3_read_without_expiry() {
    let (store, clock, backend) = setup(None);
    let dot = atoll_core::causal::Dot::new(region("us-east-1"), 1);
    let ts = atoll_core::hlc::Timestamp::new(T0 - 10, 0);
    let reg = || MvrV3 {
        siblings: vec![SiblingV3 {
            dot: dot.clone(),
            ts,
            value: Some(b"old".to_vec()),
        }],
        ctx: [dot.clone()].into_iter().collect(),
    };
    backend
        .commit(
            vec![Mutation::Put(
                Table::Data,
                keys::data_key("carts", b"k"),
                v3(&StateV3::Mvr(reg())),
            )],
            true,
        )
        .expect("commit");
    clock.advance(1_000_000);
    assert_eq!(
        mvr_values(&store, "k"),
        vec!["old"],
        "a v3 sibling never expires"
    );
    let entry = v3(&EntryV3 {
        origin: region("us-east-1"),
        seq: 1,
        ts,
        keyspace: "carts".into(),
        key: b"k".to_vec(),
        delta: StateV3::Mvr(reg()),
        epoch: 2,
    });
    let e = codec::decode_entry(&entry).expect("read a v3 entry");
    assert_eq!((e.seq, e.epoch), (1, 2));
    assert!(matches!(&e.delta, KeyState::Mvr(r) if r.siblings[0].expires_ms.is_none()));
    assert!(codec::decode::<OpEntry>(&entry).is_err(), "misread as v4");
    let frame = v3(&FrameV3::Ops(vec![EntryV3 {
        origin: region("us-east-1"),
        seq: 1,
        ts,
        keyspace: "carts".into(),
        key: b"k".to_vec(),
        delta: StateV3::Mvr(reg()),
        epoch: 2,
    }]));
    match codec::decode_frame(&frame).expect("read a v3 frame") {
        atoll_core::repl::Frame::Ops(ops) => assert_eq!(ops.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[derive(serde::Serialize)]
struct EntryV3 {
    origin: RegionId,
    seq: u64,
    ts: atoll_core::hlc::Timestamp,
    keyspace: String,
    key: Vec<u8>,
    delta: StateV3,
    epoch: u64,
}

#[derive(serde::Serialize)]
#[allow(dead_code)]
enum FrameV3 {
    Ops(Vec<EntryV3>),
}

fn v3(value: &impl serde::Serialize) -> Vec<u8> {
    postcard::to_extend(value, 3u16.to_le_bytes().to_vec()).expect("encode")
}
