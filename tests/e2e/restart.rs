//! End-to-end: a region stopped with SIGTERM and started again on the same data directory has
//! every value, sibling, counter and set member it acknowledged, and keeps numbering its writes
//! after the last one (no sequence number is reused, timestamps keep increasing).

use crate::common;

use anyhow::{Result, ensure};
use atoll_testkit::{Client, KvRead, RegionProcess, RegionSpec, Ts, test_dir};
use common::{BIN, CONFIG, REGION};
use std::collections::BTreeMap;

/// Everything the test wrote, read back through the API.
#[derive(Debug, PartialEq)]
struct Snapshot {
    kv: BTreeMap<String, KvRead>,
    counters: BTreeMap<String, i64>,
    sets: BTreeMap<String, Vec<String>>,
}

const LWW_KEYS: &[&str] = &["user-1", "user-2", "user-bin", "a/b c", "gone", "never"];
const MVR_KEYS: &[&str] = &["cart-1", "cart-2", "cart-3", "cart-del"];
const COUNTERS: &[&str] = &["c-up", "c-mixed", "c-neg"];
const SETS: &[&str] = &["beta", "emptied"];

async fn snapshot(c: &Client) -> Result<Snapshot> {
    let mut kv = BTreeMap::new();
    for k in LWW_KEYS {
        kv.insert(format!("sessions/{k}"), c.kv_get("sessions", k).await?);
    }
    for k in MVR_KEYS {
        kv.insert(format!("carts/{k}"), c.kv_get("carts", k).await?);
    }
    let mut counters = BTreeMap::new();
    for k in COUNTERS {
        counters.insert(k.to_string(), c.counter_get("ratelimits", k).await?);
    }
    let mut sets = BTreeMap::new();
    for k in SETS {
        sets.insert(k.to_string(), c.set_members("flags", k).await?);
    }
    Ok(Snapshot { kv, counters, sets })
}

/// Every write's (seq, timestamp), to check ordering and continuity.
#[derive(Default)]
struct Writes {
    seqs: Vec<u64>,
    max_ts: Option<Ts>,
}

impl Writes {
    fn note(&mut self, seq: u64, ts: Option<Ts>) {
        self.seqs.push(seq);
        if let Some(ts) = ts {
            self.max_ts = self.max_ts.max(Some(ts));
        }
    }
    fn last_seq(&self) -> u64 {
        self.seqs.last().copied().unwrap_or(0)
    }
}

fn str_of(v: &str) -> Vec<u8> {
    v.as_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_survives_a_graceful_restart() {
    let dir = common::ok(test_dir("restart").map_err(Into::into));
    let mut region = common::ok(RegionProcess::start(BIN, CONFIG, REGION, dir.join("data")));
    common::ok(write_restart_and_compare(&mut region).await);
}

async fn write_restart_and_compare(region: &mut RegionProcess) -> Result<()> {
    let c = region.client();
    let mut w = Writes::default();

    // lww: plain, overwritten, binary, a key with '/' and ' ', and a deleted key.
    for (key, value) in [
        ("user-1", str_of("alpha")),
        ("user-2", str_of("first")),
        ("user-2", str_of("second")),
        ("user-bin", vec![0, 0xff, 0xfe, b'\n', 0x80]),
        ("a/b c", str_of("slashes and spaces")),
        ("gone", str_of("soon deleted")),
    ] {
        let ack = c.kv_put("sessions", key, value, None).await?;
        w.note(ack.seq, Some(ack.timestamp));
    }
    let ack = c.kv_del("sessions", "gone", None).await?;
    w.note(ack.seq, Some(ack.timestamp));

    // mvr: two writes without a context are siblings...
    for v in ["apple", "pear"] {
        let ack = c.kv_put("carts", "cart-1", v, None).await?;
        w.note(ack.seq, Some(ack.timestamp));
    }
    // ...which a write with the read's context resolves,
    for v in ["x", "y"] {
        let ack = c.kv_put("carts", "cart-2", v, None).await?;
        w.note(ack.seq, Some(ack.timestamp));
    }
    let read = c.kv_get("carts", "cart-2").await?;
    ensure!(matches!(read, KvRead::Siblings { .. }), "cart-2: {read:?}");
    let ack = c.kv_put("carts", "cart-2", "x+y", read.context()).await?;
    w.note(ack.seq, Some(ack.timestamp));
    // ...a single value whose context is used again after the restart,
    let ack = c.kv_put("carts", "cart-3", "one", None).await?;
    w.note(ack.seq, Some(ack.timestamp));
    let cart3_ctx = c
        .kv_get("carts", "cart-3")
        .await?
        .context()
        .map(str::to_string);
    ensure!(cart3_ctx.is_some(), "mvr read without a context");
    // ...and a deleted mvr key.
    let ack = c.kv_put("carts", "cart-del", "z", None).await?;
    w.note(ack.seq, Some(ack.timestamp));
    let ctx = c
        .kv_get("carts", "cart-del")
        .await?
        .context()
        .map(str::to_string);
    let ack = c.kv_del("carts", "cart-del", ctx.as_deref()).await?;
    w.note(ack.seq, Some(ack.timestamp));

    // counters
    for _ in 0..25 {
        let (_, seq) = c.counter_add("ratelimits", "c-up", 1).await?;
        w.note(seq, None);
    }
    for d in [5, -2, 10, -1] {
        let (_, seq) = c.counter_add("ratelimits", "c-mixed", d).await?;
        w.note(seq, None);
    }
    let (_, seq) = c.counter_add("ratelimits", "c-neg", -7).await?;
    w.note(seq, None);

    // sets
    let (_, seq) = c.set_update("flags", "beta", &["a", "b", "c"], &[]).await?;
    w.note(seq, None);
    let (_, seq) = c.set_update("flags", "beta", &[], &["b"]).await?;
    w.note(seq, None);
    let (_, seq) = c.set_update("flags", "emptied", &["x"], &[]).await?;
    w.note(seq, None);
    let (_, seq) = c.set_update("flags", "emptied", &[], &["x"]).await?;
    w.note(seq, None);

    // Every write got the next sequence number.
    let expected: Vec<u64> = (1..=w.seqs.len() as u64).collect();
    assert_eq!(w.seqs, expected, "sequence numbers of a fresh region");

    let before = snapshot(&c).await?;
    // What the writes above must have produced (checked before the restart, so a wrong value
    // is blamed on the write path, not on recovery).
    let value = |k: &str| before.kv[k].value().map(<[u8]>::to_vec);
    assert_eq!(value("sessions/user-1"), Some(str_of("alpha")));
    assert_eq!(value("sessions/user-2"), Some(str_of("second")));
    assert_eq!(
        value("sessions/user-bin"),
        Some(vec![0, 0xff, 0xfe, b'\n', 0x80])
    );
    assert_eq!(value("sessions/a/b c"), Some(str_of("slashes and spaces")));
    assert!(matches!(before.kv["sessions/gone"], KvRead::Missing { .. }));
    assert!(matches!(
        before.kv["sessions/never"],
        KvRead::Missing { .. }
    ));
    assert_eq!(
        before.kv["carts/cart-1"].values_sorted(),
        vec![str_of("apple"), str_of("pear")]
    );
    assert!(matches!(before.kv["carts/cart-1"], KvRead::Siblings { .. }));
    assert_eq!(value("carts/cart-2"), Some(str_of("x+y")));
    assert_eq!(value("carts/cart-3"), Some(str_of("one")));
    assert!(matches!(
        before.kv["carts/cart-del"],
        KvRead::Missing { .. }
    ));
    assert_eq!(before.counters["c-up"], 25);
    assert_eq!(before.counters["c-mixed"], 12);
    assert_eq!(before.counters["c-neg"], -7);
    assert_eq!(before.sets["beta"], vec!["a", "c"]);
    assert!(before.sets["emptied"].is_empty());
    let status = c.status().await?;
    assert_eq!(status["store"]["last_seq"].as_u64(), Some(w.last_seq()));

    // Graceful stop: exit code 0.
    let exit = region.terminate()?;
    assert_eq!(
        exit.code(),
        Some(0),
        "SIGTERM must stop the region cleanly: {exit}"
    );

    region.restart()?;
    let c = region.client();
    let after = snapshot(&c).await?;
    assert_eq!(
        after, before,
        "state after a graceful restart differs from the state before it"
    );
    let status = c.status().await?;
    assert_eq!(
        status["store"]["last_seq"].as_u64(),
        Some(w.last_seq()),
        "last_seq after restart: {status}"
    );

    // New writes continue the sequence and the clock.
    let last = w.last_seq();
    let max_ts = w.max_ts.expect("lww and mvr writes carry timestamps");
    let ack = c.kv_put("sessions", "user-1", "beta", None).await?;
    assert_eq!(
        ack.seq,
        last + 1,
        "first write after restart reuses or skips a seq"
    );
    assert!(
        ack.timestamp > max_ts,
        "timestamp went back: {} after {max_ts}",
        ack.timestamp
    );
    let (v, seq) = c.counter_add("ratelimits", "c-up", 1).await?;
    assert_eq!((v, seq), (26, last + 2));
    let (m, seq) = c.set_update("flags", "beta", &["d"], &[]).await?;
    assert_eq!(
        (m, seq),
        (vec!["a".into(), "c".into(), "d".into()], last + 3)
    );
    // A context read before the restart still supersedes what it saw.
    let ack = c
        .kv_put("carts", "cart-3", "two", cart3_ctx.as_deref())
        .await?;
    assert_eq!(ack.seq, last + 4);
    assert_eq!(
        c.kv_get("carts", "cart-3").await?.value(),
        Some(&b"two"[..]),
        "a pre-restart context must still supersede the value it was read with"
    );
    assert_eq!(
        c.kv_get("sessions", "user-1").await?.value(),
        Some(&b"beta"[..])
    );

    // And a second stop/start cycle keeps those too.
    let exit = region.terminate()?;
    assert_eq!(exit.code(), Some(0), "{exit}");
    region.restart()?;
    let c = region.client();
    assert_eq!(
        c.status().await?["store"]["last_seq"].as_u64(),
        Some(last + 4)
    );
    assert_eq!(c.counter_get("ratelimits", "c-up").await?, 26);
    let exit = region.terminate()?;
    assert_eq!(exit.code(), Some(0), "{exit}");
    Ok(())
}

/// A supervisor may stop a region the moment it reports readiness: the signal handlers are
/// installed before the `listening on` line is printed, so even an immediate SIGTERM is a graceful
/// shutdown (exit code 0), never death by signal.
#[test]
fn sigterm_right_after_the_readiness_line_is_graceful() {
    let dir = common::ok(test_dir("early-sigterm").map_err(Into::into));
    for attempt in 0..5 {
        let spec = RegionSpec::new(BIN, CONFIG, REGION, dir.join(&format!("data-{attempt}")))
            .wait_healthy(false);
        let mut region = common::ok(RegionProcess::start_spec(spec));
        let exit = common::ok(region.terminate());
        assert_eq!(
            exit.code(),
            Some(0),
            "attempt {attempt}: SIGTERM right after readiness: {exit}"
        );
    }
}
