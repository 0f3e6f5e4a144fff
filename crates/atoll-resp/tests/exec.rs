//! The RESP front over a real store (in memory): a script of commands gets Redis's answers, auth
//! and grants apply, and malformed frames (fuzzed) never panic and never write.

use atoll_config::Config;
use atoll_config::auth::Tokens;
use atoll_core::AtollError;
use atoll_core::clock::ManualClock;
use atoll_core::op::{Intent, KeyState};
use atoll_resp::exec::{Host, HostInfo, PeerInfo, Session, execute};
use atoll_resp::{Limits, Reply, command, connection};
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use proptest::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
[cluster]
name = "t"

[[regions]]
name = "us-east-1"
api = "127.0.0.1:7100"
resp = "127.0.0.1:7110"

[[keyspaces]]
name = "sessions"
policy = "lww"
max_value_bytes = 64

[[keyspaces]]
name = "carts"
policy = "mvr"

[[keyspaces]]
name = "ratelimits"
policy = "counter"

[[keyspaces]]
name = "flags"
policy = "set"

[[keyspaces]]
name = "seats"
policy = "strong"
"#;

const TOKENS: &str = r#"
[[tokens]]
name = "app"
sha256 = "SHA_APP"
read = ["sessions", "flags"]
write = ["sessions"]
"#;

/// Where the test clock starts: 2023-11-14T22:13:20Z, in ms since the epoch.
const T0: u64 = 1_700_000_000_000;

struct StoreHost {
    config: Config,
    tokens: Option<Tokens>,
    store: Store,
    /// The region's physical clock, shared with the store (its HLC stamps writes from it): tests
    /// move it to expire keys.
    clock: Arc<ManualClock>,
    /// Writes acknowledged, through `write` or `submit` (pipelined).
    writes: Arc<AtomicUsize>,
    /// Writes submitted through `submit`.
    submitted: AtomicUsize,
}

impl StoreHost {
    fn new(extra: &str, auth: bool) -> Self {
        let config = Config::parse(&format!("{CONFIG}\n{extra}"), "atoll.toml").expect("config");
        let tokens = auth.then(|| {
            let text = TOKENS.replace("SHA_APP", &atoll_config::auth::sha256_hex("s3cret"));
            Tokens::parse(&text, "tokens.toml", &config).expect("tokens")
        });
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open(
            Arc::new(MemBackend::default()),
            StoreOptions::new(
                atoll_core::RegionId::new("us-east-1").expect("region"),
                config.keyspaces.clone(),
            ),
            clock.clone(),
        )
        .expect("store");
        Self {
            config,
            tokens,
            store,
            clock,
            writes: Arc::new(AtomicUsize::new(0)),
            submitted: AtomicUsize::new(0),
        }
    }
}

impl Host for StoreHost {
    fn config(&self) -> &Config {
        &self.config
    }

    fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_ref()
    }

    fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    fn read(&self, keyspace: &str, key: &[u8]) -> Result<Option<KeyState>, AtollError> {
        self.store.get(keyspace, key)
    }

    async fn write(
        &self,
        keyspace: &str,
        key: &[u8],
        intent: Intent,
    ) -> Result<KeyState, AtollError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.submit(keyspace, key, intent, move |r| {
            let _ = tx.send(r);
        });
        let out = rx.await.map_err(|_| AtollError::ShuttingDown)??;
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(out.state)
    }

    fn submit(&self, keyspace: &str, key: &[u8], intent: Intent) -> Option<atoll_resp::Submitted> {
        self.submitted.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.submit(keyspace, key, intent, move |r| {
            let _ = tx.send(r);
        });
        let writes = self.writes.clone();
        Some(Box::pin(async move {
            let out = rx.await.map_err(|_| AtollError::ShuttingDown)??;
            writes.fetch_add(1, Ordering::SeqCst);
            Ok(out.state)
        }))
    }

    fn session_token(&self) -> String {
        atoll_core::session::SessionToken::from_vector(self.store.visible_applied()).encode("t")
    }

    async fn session_wait(&self, token: &str, _wait_ms: Option<u64>) -> Result<(), AtollError> {
        let t = atoll_core::session::SessionToken::decode(token, "t", |_| true)?;
        if self.store.applied().dominates(t.seen()) {
            Ok(())
        } else {
            Err(AtollError::Stale("behind the token".into()))
        }
    }

    fn info(&self) -> HostInfo {
        HostInfo {
            region: "us-east-1".into(),
            cluster: "t".into(),
            uptime_secs: 1,
            tcp_port: 7110,
            writable: true,
            atoll_role: "active".into(),
            peers: vec![PeerInfo {
                region: "eu-west-1".into(),
                state: "up".into(),
                lag_seconds: Some(0.0125),
                lag_ops: 3,
            }],
        }
    }
}

fn words(line: &str) -> Vec<Vec<u8>> {
    line.split(' ').map(|w| w.as_bytes().to_vec()).collect()
}

async fn ask(host: &StoreHost, session: &mut Session, line: &str) -> Reply {
    match command::parse(words(line)) {
        Ok(cmd) => execute(host, session, cmd).await.reply,
        Err(r) => r,
    }
}

fn ok() -> Reply {
    Reply::ok()
}

fn bulk(s: &str) -> Reply {
    Reply::bulk(s)
}

fn err_starting(r: &Reply, prefix: &str) -> bool {
    matches!(r, Reply::Error(e) if e.starts_with(prefix))
}

#[tokio::test]
async fn a_script_gets_the_answers_redis_gives() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    let script: Vec<(&str, Reply)> = vec![
        ("PING", Reply::Simple("PONG".into())),
        ("GET sessions:alice", Reply::Null),
        ("EXISTS sessions:alice", Reply::Int(0)),
        ("SET sessions:alice token-1", ok()),
        ("GET sessions:alice", bulk("token-1")),
        ("SET sessions:alice token-2 NX", Reply::Null),
        ("SET sessions:alice token-2 XX GET", bulk("token-1")),
        ("GET sessions:alice", bulk("token-2")),
        ("SET sessions:bob b XX", Reply::Null),
        ("SET sessions:bob b NX", ok()),
        (
            "EXISTS sessions:alice sessions:bob sessions:carol",
            Reply::Int(2),
        ),
        ("DEL sessions:alice sessions:carol", Reply::Int(1)),
        ("GET sessions:alice", Reply::Null),
        ("INCR ratelimits:api", Reply::Int(1)),
        ("INCRBY ratelimits:api 5", Reply::Int(6)),
        ("DECRBY ratelimits:api 2", Reply::Int(4)),
        ("DECR ratelimits:api", Reply::Int(3)),
        ("GET ratelimits:api", bulk("3")),
        (
            "SADD flags:beta dark-mode new-cart dark-mode",
            Reply::Int(2),
        ),
        ("SADD flags:beta dark-mode", Reply::Int(0)),
        ("SISMEMBER flags:beta dark-mode", Reply::Int(1)),
        ("SISMEMBER flags:beta nope", Reply::Int(0)),
        ("SCARD flags:beta", Reply::Int(2)),
        ("SREM flags:beta dark-mode nope", Reply::Int(1)),
        ("SMEMBERS flags:beta", Reply::Set(vec![bulk("new-cart")])),
        ("SMEMBERS flags:none", Reply::Set(vec![])),
        // mvr: SET replaces what this region holds, so one value comes back.
        ("SET carts:c1 apple", ok()),
        ("SET carts:c1 pear", ok()),
        ("GET carts:c1", bulk("pear")),
        ("SELECT 0", ok()),
        ("ECHO hi", bulk("hi")),
        ("COMMAND DOCS", Reply::Array(vec![])),
        ("CLIENT SETNAME me", ok()),
        ("CLIENT GETNAME", bulk("me")),
    ];
    for (line, want) in script {
        assert_eq!(ask(&host, &mut s, line).await, want, "{line}");
    }
    // Errors, with the prefixes Redis uses.
    for (line, prefix) in [
        ("INCR sessions:alice", "WRONGTYPE"),
        ("SET ratelimits:api 5", "WRONGTYPE"),
        ("GET flags:beta", "WRONGTYPE"),
        ("SADD sessions:x m", "WRONGTYPE"),
        (
            "DEL ratelimits:api",
            "ERR keyspace 'ratelimits' is a counter",
        ),
        ("GET seats:12A", "ERR keyspace 'seats' is strong"),
        ("GET nope:x", "ERR unknown keyspace 'nope' (key 'nope:x')"),
        ("GET alice", "ERR unknown keyspace 'alice'"),
        ("GET sessions:", "ERR ATOLL-EMPTY-KEY"),
        ("GETEX sessions:a", "ERR GETEX is not supported"),
        ("SELECT 1", "ERR DB index is out of range"),
        (
            "AUTH x",
            "ERR AUTH <password> called without any password configured",
        ),
        ("KEYS *", "ERR unknown command 'KEYS'"),
        ("HELLO 4", "NOPROTO"),
        (
            "SET sessions:big 01234567890123456789012345678901234567890123456789012345678901234567890",
            "ERR ATOLL-VALUE-TOO-LARGE",
        ),
    ] {
        let r = ask(&host, &mut s, line).await;
        assert!(err_starting(&r, prefix), "{line}: {r:?}");
    }
    // INFO has a line per peer with its lag.
    let Reply::Bulk(info) = ask(&host, &mut s, "INFO").await else {
        panic!("INFO is a bulk string");
    };
    let info = String::from_utf8(info).unwrap();
    for needle in [
        "# Server\r\n",
        "region:us-east-1\r\n",
        "# Replication\r\nrole:master\r\n",
        "peer_eu-west-1:state=up,lag_seconds=0.013,lag_ops=3\r\n",
        "keyspace_carts:policy=mvr\r\n",
    ] {
        assert!(info.contains(needle), "{needle:?} not in {info}");
    }
    let Reply::Bulk(only) = ask(&host, &mut s, "INFO replication").await else {
        panic!("INFO is a bulk string");
    };
    assert!(!String::from_utf8(only).unwrap().contains("# Server"));
    // HELLO 3 switches the protocol and answers a map.
    let r = ask(&host, &mut s, "HELLO 3").await;
    assert!(
        matches!(&r, Reply::Map(m) if m.contains(&(bulk("proto"), Reply::Int(3)))),
        "{r:?}"
    );
    assert_eq!(s.proto, 3);
    // QUIT answers OK and closes.
    let cmd = command::parse(words("QUIT")).unwrap();
    let step = execute(&host, &mut s, cmd).await;
    assert!(step.close && step.reply == ok());
}

/// Runs `script` and checks every reply exactly.
async fn script(host: &StoreHost, s: &mut Session, script: &[(&str, Reply)]) {
    for (line, want) in script {
        assert_eq!(&ask(host, s, line).await, want, "{line}");
    }
}

fn int(v: i64) -> Reply {
    Reply::Int(v)
}

/// An instant `ms` after the test clock's start, as a decimal argument.
fn at_ms(ms: u64) -> String {
    (T0 + ms).to_string()
}

#[tokio::test]
async fn set_with_an_expiry_is_absent_once_the_region_clock_passes_it() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    script(
        &host,
        &mut s,
        &[
            ("SET sessions:a v EX 10", ok()),
            ("GET sessions:a", bulk("v")),
            ("TTL sessions:a", int(10)),
            ("PTTL sessions:a", int(10_000)),
            // (T0 + 10 s + 500) / 1000: seconds are rounded as Redis rounds them.
            ("EXPIRETIME sessions:a", int(1_700_000_010)),
            ("PEXPIRETIME sessions:a", int(1_700_000_010_000)),
        ],
    )
    .await;
    host.clock.advance(9_499);
    script(
        &host,
        &mut s,
        &[("PTTL sessions:a", int(501)), ("TTL sessions:a", int(1))],
    )
    .await;
    host.clock.advance(2);
    script(
        &host,
        &mut s,
        &[
            ("PTTL sessions:a", int(499)),
            ("TTL sessions:a", int(0)),
            ("GET sessions:a", bulk("v")),
            ("EXISTS sessions:a", int(1)),
        ],
    )
    .await;
    // At the expiry instant the key is gone for every read, and a DEL of it writes nothing.
    host.clock.advance(499);
    let writes = host.writes.load(Ordering::SeqCst);
    script(
        &host,
        &mut s,
        &[
            ("GET sessions:a", Reply::Null),
            ("EXISTS sessions:a", int(0)),
            ("TTL sessions:a", int(-2)),
            ("PTTL sessions:a", int(-2)),
            ("EXPIRETIME sessions:a", int(-2)),
            ("PEXPIRETIME sessions:a", int(-2)),
            ("DEL sessions:a", int(0)),
            ("PERSIST sessions:a", int(0)),
            ("EXPIRE sessions:a 100", int(0)),
            ("SET sessions:a w XX", Reply::Null),
            ("SET sessions:a w XX GET", Reply::Null),
        ],
    )
    .await;
    assert_eq!(host.writes.load(Ordering::SeqCst), writes);
    // NX sees it absent; a later write revives it, without an expiry.
    script(
        &host,
        &mut s,
        &[
            ("SET sessions:a w NX GET", Reply::Null),
            ("GET sessions:a", bulk("w")),
            ("TTL sessions:a", int(-1)),
            ("PEXPIRETIME sessions:a", int(-1)),
        ],
    )
    .await;
}

#[tokio::test]
async fn every_set_expiry_form_and_keepttl() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    let exat = format!("SET sessions:exat v EXAT {}", (T0 + 30_000) / 1000);
    let pxat = format!("SET sessions:pxat v PXAT {}", at_ms(1_234));
    script(
        &host,
        &mut s,
        &[
            ("SET sessions:px v PX 1500", ok()),
            ("PTTL sessions:px", int(1_500)),
            ("TTL sessions:px", int(2)),
            (&exat, ok()),
            ("PTTL sessions:exat", int(30_000)),
            ("EXPIRETIME sessions:exat", int(1_700_000_030)),
            (&pxat, ok()),
            ("PEXPIRETIME sessions:pxat", int(1_700_000_001_234)),
            ("SETEX sessions:sx 7 x", ok()),
            ("GET sessions:sx", bulk("x")),
            ("TTL sessions:sx", int(7)),
            ("PSETEX sessions:psx 700 y", ok()),
            ("PTTL sessions:psx", int(700)),
            // A repeated option: the last one counts.
            ("SET sessions:twice v EX 5 EX 9", ok()),
            ("TTL sessions:twice", int(9)),
            // NX and GET with an expiry.
            ("SET sessions:nx v NX EX 3", ok()),
            ("PTTL sessions:nx", int(3_000)),
            ("SET sessions:nx w NX EX 30 GET", bulk("v")),
            ("PTTL sessions:nx", int(3_000)),
            ("SET sessions:nx w XX PX 250 GET", bulk("v")),
            ("PTTL sessions:nx", int(250)),
            ("GET sessions:nx", bulk("w")),
        ],
    )
    .await;
    // KEEPTTL keeps the expiry of the live value, on a later write too.
    host.clock.advance(500);
    script(
        &host,
        &mut s,
        &[
            ("SET sessions:px v2 KEEPTTL", ok()),
            ("GET sessions:px", bulk("v2")),
            ("PTTL sessions:px", int(1_000)),
            ("PEXPIRETIME sessions:px", int(1_700_000_001_500)),
            // A plain SET removes the expiry (no default_ttl in this keyspace), as in Redis.
            ("SET sessions:exat v2", ok()),
            ("TTL sessions:exat", int(-1)),
            // KEEPTTL on a key without expiry: none.
            ("SET sessions:exat v3 KEEPTTL", ok()),
            ("TTL sessions:exat", int(-1)),
            // KEEPTTL on an absent key: none.
            ("SET sessions:fresh v KEEPTTL", ok()),
            ("TTL sessions:fresh", int(-1)),
        ],
    )
    .await;
    host.clock.advance(1_000);
    script(
        &host,
        &mut s,
        &[
            ("GET sessions:px", Reply::Null),
            ("GET sessions:psx", Reply::Null),
            // Its instant (T0 + 1.234 s) has passed too.
            ("GET sessions:pxat", Reply::Null),
            ("GET sessions:sx", bulk("x")),
            // KEEPTTL on an expired key: the key is new, without expiry.
            ("SET sessions:px v3 KEEPTTL", ok()),
            ("GET sessions:px", bulk("v3")),
            ("TTL sessions:px", int(-1)),
        ],
    )
    .await;
    // An instant already past is written expired: the key reads absent at once (Redis deletes it).
    let past = format!("SET sessions:sx gone PXAT {}", at_ms(1_000));
    script(
        &host,
        &mut s,
        &[
            (&past, ok()),
            ("GET sessions:sx", Reply::Null),
            ("EXISTS sessions:sx", int(0)),
        ],
    )
    .await;
}

#[tokio::test]
async fn bad_expiries_are_refused_and_change_nothing() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    assert_eq!(ask(&host, &mut s, "SET sessions:k v EX 100").await, ok());
    let writes = host.writes.load(Ordering::SeqCst);
    let too_far = format!(
        "SET sessions:k w PXAT {}",
        T0 + atoll_core::op::MAX_TTL_MS + 1
    );
    let too_far_at = format!(
        "PEXPIREAT sessions:k {}",
        T0 + atoll_core::op::MAX_TTL_MS + 1
    );
    for (line, want) in [
        (
            "SET sessions:k w EX 0",
            "ERR invalid expire time in 'set' command",
        ),
        (
            "SET sessions:k w PX -5",
            "ERR invalid expire time in 'set' command",
        ),
        (
            "SET sessions:k w EXAT 0",
            "ERR invalid expire time in 'set' command",
        ),
        (
            "SET sessions:k w EX x",
            "ERR value is not an integer or out of range",
        ),
        ("SET sessions:k w EX 1 PX 1", "ERR syntax error"),
        ("SET sessions:k w KEEPTTL PXAT 1", "ERR syntax error"),
        (
            "SETEX sessions:k 0 w",
            "ERR invalid expire time in 'setex' command",
        ),
        (
            "PSETEX sessions:k -1 w",
            "ERR invalid expire time in 'psetex' command",
        ),
        (
            "SETEX sessions:k 10",
            "ERR wrong number of arguments for 'setex' command",
        ),
        (
            "SET sessions:k w EX 3153600001",
            "ERR invalid expire time in 'set' command (atoll: a time to live is at most 100 years)",
        ),
        (
            &too_far,
            "ERR invalid expire time in 'set' command (atoll: a time to live is at most 100 years)",
        ),
        (
            "EXPIRE sessions:k 3153600001",
            "ERR invalid expire time in 'expire' command (atoll: a time to live is at most 100 years)",
        ),
        (
            &too_far_at,
            "ERR invalid expire time in 'pexpireat' command (atoll: a time to live is at most 100 years)",
        ),
        (
            "PEXPIRE sessions:k 9223372036854775807",
            "ERR invalid expire time in 'pexpire' command",
        ),
        (
            "EXPIRE sessions:k soon",
            "ERR value is not an integer or out of range",
        ),
        ("EXPIRE sessions:k 10 later", "ERR Unsupported option later"),
        (
            "EXPIRE sessions:k 10 NX GT",
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ),
        (
            "EXPIRE sessions:k 10 GT LT",
            "ERR GT and LT options at the same time are not compatible",
        ),
        (
            "TTL sessions:k sessions:j",
            "ERR wrong number of arguments for 'ttl' command",
        ),
        (
            "GETEX sessions:k PERSIST",
            "ERR GETEX is not supported by atoll's RESP front yet: use GET, then EXPIRE, PEXPIRE or PERSIST (not atomic; docs/design/resp.md)",
        ),
    ] {
        assert_eq!(
            ask(&host, &mut s, line).await,
            Reply::Error(want.to_string()),
            "{line}"
        );
    }
    assert_eq!(host.writes.load(Ordering::SeqCst), writes);
    script(
        &host,
        &mut s,
        &[
            ("GET sessions:k", bulk("v")),
            ("PTTL sessions:k", int(100_000)),
        ],
    )
    .await;
}

#[tokio::test]
async fn expire_sets_a_new_expiry_and_a_past_one_deletes() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    let expireat = format!("EXPIREAT sessions:k {}", T0 / 1000 + 50);
    let pexpireat = format!("PEXPIREAT sessions:k {}", at_ms(7_000));
    script(
        &host,
        &mut s,
        &[
            ("EXPIRE sessions:nobody 10", int(0)),
            ("PEXPIREAT sessions:nobody 1", int(0)),
            ("SET sessions:k v", ok()),
            ("TTL sessions:k", int(-1)),
            ("EXPIRE sessions:k 100", int(1)),
            ("TTL sessions:k", int(100)),
            ("GET sessions:k", bulk("v")),
            ("PEXPIRE sessions:k 5000", int(1)),
            ("PTTL sessions:k", int(5_000)),
            (&expireat, int(1)),
            ("EXPIRETIME sessions:k", int(1_700_000_050)),
            (&pexpireat, int(1)),
            ("PTTL sessions:k", int(7_000)),
            ("GET sessions:k", bulk("v")),
        ],
    )
    .await;
    assert!(host.store.get("sessions", b"nobody").unwrap().is_none());
    // Moving the expiry later keeps the key past its old expiry.
    host.clock.advance(6_000);
    assert_eq!(ask(&host, &mut s, "EXPIRE sessions:k 10").await, int(1));
    host.clock.advance(5_000);
    script(
        &host,
        &mut s,
        &[
            ("GET sessions:k", bulk("v")),
            ("TTL sessions:k", int(5)),
            // Zero, negative, and an instant already past: the key is deleted, answer 1.
            ("EXPIRE sessions:k 0", int(1)),
            ("GET sessions:k", Reply::Null),
            ("EXISTS sessions:k", int(0)),
            ("TTL sessions:k", int(-2)),
            ("EXPIRE sessions:k 0", int(0)),
            ("SET sessions:k v", ok()),
            ("PEXPIRE sessions:k -1", int(1)),
            ("GET sessions:k", Reply::Null),
            ("SET sessions:k v", ok()),
            ("EXPIREAT sessions:k 1", int(1)),
            ("GET sessions:k", Reply::Null),
        ],
    )
    .await;
    // The delete is a write (a tombstone), not just a hidden value.
    let Some(atoll_core::op::KeyState::Lww(r)) = host.store.get("sessions", b"k").unwrap() else {
        panic!("an lww state");
    };
    assert_eq!((r.value, r.expires_ms), (None, None));
}

#[tokio::test]
async fn expire_conditions_nx_xx_gt_lt() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    script(
        &host,
        &mut s,
        &[
            ("SET sessions:k v", ok()),
            // No expiry: XX and GT refuse (no expiry counts as infinite), LT and NX set.
            ("EXPIRE sessions:k 10 XX", int(0)),
            ("EXPIRE sessions:k 10 GT", int(0)),
            ("EXPIRE sessions:k 10 XX LT", int(0)),
            ("TTL sessions:k", int(-1)),
            ("EXPIRE sessions:k 10 LT", int(1)),
            ("TTL sessions:k", int(10)),
            ("PERSIST sessions:k", int(1)),
            ("EXPIRE sessions:k 10 NX", int(1)),
            ("TTL sessions:k", int(10)),
            // With an expiry of 10 s.
            ("EXPIRE sessions:k 20 NX", int(0)),
            ("EXPIRE sessions:k 5 GT", int(0)),
            ("EXPIRE sessions:k 10 GT", int(0)),
            ("EXPIRE sessions:k 30 LT", int(0)),
            ("EXPIRE sessions:k 10 LT", int(0)),
            ("TTL sessions:k", int(10)),
            ("EXPIRE sessions:k 20 gt xx", int(1)),
            ("TTL sessions:k", int(20)),
            ("EXPIRE sessions:k 15 LT XX", int(1)),
            ("TTL sessions:k", int(15)),
            ("PEXPIRE sessions:k 14000 XX", int(1)),
            ("PTTL sessions:k", int(14_000)),
            // A refused past instant does not delete.
            ("EXPIRE sessions:k -1 GT", int(0)),
            ("GET sessions:k", bulk("v")),
            ("EXPIRE sessions:k -1 LT", int(1)),
            ("GET sessions:k", Reply::Null),
            ("EXPIRE sessions:k 10 NX", int(0)),
        ],
    )
    .await;
}

#[tokio::test]
async fn persist_removes_an_expiry_and_writes_only_then() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    script(
        &host,
        &mut s,
        &[
            ("PERSIST sessions:nobody", int(0)),
            ("SET sessions:k v", ok()),
        ],
    )
    .await;
    let writes = host.writes.load(Ordering::SeqCst);
    assert_eq!(ask(&host, &mut s, "PERSIST sessions:k").await, int(0));
    assert_eq!(host.writes.load(Ordering::SeqCst), writes);
    script(
        &host,
        &mut s,
        &[
            ("EXPIRE sessions:k 5", int(1)),
            ("PERSIST sessions:k", int(1)),
            ("TTL sessions:k", int(-1)),
            ("PEXPIRETIME sessions:k", int(-1)),
            ("GET sessions:k", bulk("v")),
            ("PERSIST sessions:k", int(0)),
        ],
    )
    .await;
    assert_eq!(host.writes.load(Ordering::SeqCst), writes + 2);
    host.clock.advance(60_000);
    assert_eq!(ask(&host, &mut s, "GET sessions:k").await, bulk("v"));
    // PERSIST of an expired key: it does not exist.
    script(
        &host,
        &mut s,
        &[
            ("PSETEX sessions:k 10 v", ok()),
            ("PERSIST sessions:k", int(1)),
            ("PEXPIRE sessions:k 10", int(1)),
        ],
    )
    .await;
    host.clock.advance(10);
    let writes = host.writes.load(Ordering::SeqCst);
    assert_eq!(ask(&host, &mut s, "PERSIST sessions:k").await, int(0));
    assert_eq!(host.writes.load(Ordering::SeqCst), writes);
}

#[tokio::test]
async fn a_keyspace_default_ttl_applies_to_a_plain_set() {
    let host = StoreHost::new(
        "[[keyspaces]]\nname = \"carts2\"\npolicy = \"lww\"\ndefault_ttl = \"60s\"\n",
        false,
    );
    let mut s = Session::new(1);
    script(
        &host,
        &mut s,
        &[
            ("SET carts2:a v", ok()),
            ("TTL carts2:a", int(60)),
            ("SET carts2:a v EX 5", ok()),
            ("TTL carts2:a", int(5)),
            ("SET carts2:a v KEEPTTL", ok()),
            ("TTL carts2:a", int(5)),
            // PERSIST removes the expiry, default or not.
            ("PERSIST carts2:a", int(1)),
            ("TTL carts2:a", int(-1)),
            ("SET carts2:a v", ok()),
            ("TTL carts2:a", int(60)),
        ],
    )
    .await;
}

#[tokio::test]
async fn counters_and_sets_have_no_expiry() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    script(
        &host,
        &mut s,
        &[
            ("INCR ratelimits:api", int(1)),
            ("SADD flags:beta on", int(1)),
            ("TTL ratelimits:api", int(-1)),
            ("PTTL flags:beta", int(-1)),
            ("PEXPIRETIME ratelimits:api", int(-1)),
            ("TTL ratelimits:none", int(-2)),
            ("TTL flags:none", int(-2)),
            // PERSIST: they have no expiry to remove.
            ("PERSIST ratelimits:api", int(0)),
            ("PERSIST flags:beta", int(0)),
        ],
    )
    .await;
    let writes = host.writes.load(Ordering::SeqCst);
    for (line, want) in [
        (
            "EXPIRE ratelimits:api 10",
            "keyspace 'ratelimits' is counter: its keys do not expire",
        ),
        (
            "PEXPIREAT flags:beta 1",
            "keyspace 'flags' is set: its keys do not expire",
        ),
        (
            "PSETEX ratelimits:api 10 5",
            "keyspace 'ratelimits' is counter: INCR",
        ),
    ] {
        let r = ask(&host, &mut s, line).await;
        assert!(
            matches!(&r, Reply::Error(e) if e.starts_with("WRONGTYPE Operation against a key holding the wrong kind of value (") && e.contains(want)),
            "{line}: {r:?}"
        );
    }
    assert!(err_starting(
        &ask(&host, &mut s, "TTL seats:1").await,
        "ERR keyspace 'seats' is strong"
    ));
    assert_eq!(host.writes.load(Ordering::SeqCst), writes);
}

#[tokio::test]
async fn an_mvr_key_expires_as_its_set_said_and_only_a_new_set_changes_that() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    script(
        &host,
        &mut s,
        &[
            ("SET carts:c1 apple", ok()),
            ("TTL carts:c1", int(-1)),
            ("EXPIRETIME carts:c1", int(-1)),
            ("PTTL carts:none", int(-2)),
            // A SET replaces what the region holds, and its sibling expires.
            ("SET carts:c1 pear EX 10", ok()),
            ("TTL carts:c1", int(10)),
            ("GET carts:c1", bulk("pear")),
            ("PSETEX carts:c2 1500 plum", ok()),
            ("PTTL carts:c2", int(1500)),
        ],
    )
    .await;
    let writes = host.writes.load(Ordering::SeqCst);
    for line in [
        "EXPIRE carts:c1 10",
        "PERSIST carts:c1",
        "SET carts:c1 fig KEEPTTL",
    ] {
        let r = ask(&host, &mut s, line).await;
        assert!(
            matches!(&r, Reply::Error(e) if e.starts_with("WRONGTYPE") && e.contains("keyspace 'carts' is mvr: each sibling expires as the write that made it said")),
            "{line}: {r:?}"
        );
    }
    assert_eq!(
        host.writes.load(Ordering::SeqCst),
        writes,
        "a refusal wrote"
    );
    host.clock.advance(10_000);
    script(
        &host,
        &mut s,
        &[
            ("GET carts:c1", Reply::Null),
            ("EXISTS carts:c1", int(0)),
            ("TTL carts:c1", int(-2)),
            ("GET carts:c2", Reply::Null),
        ],
    )
    .await;
}

#[tokio::test]
async fn mvr_siblings_are_an_error_that_names_them() {
    let host = StoreHost::new("", false);
    let mut s = Session::new(1);
    // Two writes without a context (as two regions writing concurrently): two siblings.
    for v in ["apple", "pear"] {
        host.write(
            "carts",
            b"c1",
            Intent::Put {
                value: v.as_bytes().to_vec(),
                context: None,
                ttl: atoll_core::op::Ttl::Default,
            },
        )
        .await
        .unwrap();
    }
    let r = ask(&host, &mut s, "GET carts:c1").await;
    assert!(
        matches!(&r, Reply::Error(e) if e.starts_with("CONFLICT key 'c1' of keyspace 'carts' has 2 siblings") && e.contains("/v1/kv/carts/")),
        "{r:?}"
    );
    // SET resolves them (it writes with the context it read).
    assert_eq!(ask(&host, &mut s, "SET carts:c1 both").await, ok());
    assert_eq!(ask(&host, &mut s, "GET carts:c1").await, bulk("both"));
}

#[tokio::test]
async fn the_default_keyspace_takes_keys_without_a_known_prefix() {
    let host = StoreHost::new("[resp]\ndefault_keyspace = \"sessions\"\n", false);
    let mut s = Session::new(1);
    assert_eq!(ask(&host, &mut s, "SET alice 1").await, ok());
    assert_eq!(ask(&host, &mut s, "SET nope:x 2").await, ok());
    assert!(host.store.get("sessions", b"nope:x").unwrap().is_some());
    assert_eq!(ask(&host, &mut s, "GET sessions:alice").await, bulk("1"));
}

#[tokio::test]
async fn with_tokens_every_command_needs_auth_and_grants_apply() {
    let host = StoreHost::new("", true);
    let mut s = Session::new(1);
    for line in [
        "GET sessions:a",
        "SET sessions:a v",
        "INFO",
        "SMEMBERS flags:x",
    ] {
        assert_eq!(
            ask(&host, &mut s, line).await,
            Reply::Error("NOAUTH Authentication required.".into()),
            "{line}"
        );
    }
    assert_eq!(
        ask(&host, &mut s, "PING").await,
        Reply::Simple("PONG".into())
    );
    let r = ask(&host, &mut s, "HELLO 3").await;
    assert!(err_starting(&r, "NOAUTH"), "{r:?}");
    assert!(err_starting(
        &ask(&host, &mut s, "AUTH wrong").await,
        "WRONGPASS"
    ));
    assert!(err_starting(
        &ask(&host, &mut s, "HELLO 3 AUTH default wrong").await,
        "WRONGPASS"
    ));
    assert_eq!(s.proto, 2);
    assert_eq!(host.writes.load(Ordering::SeqCst), 0);
    // AUTH <user> <token>: the user is ignored.
    assert_eq!(ask(&host, &mut s, "AUTH someone s3cret").await, ok());
    assert_eq!(ask(&host, &mut s, "SET sessions:a v").await, ok());
    assert_eq!(ask(&host, &mut s, "GET sessions:a").await, bulk("v"));
    assert_eq!(
        ask(&host, &mut s, "SMEMBERS flags:x").await,
        Reply::Set(vec![])
    );
    // TTL reads (the grant on flags allows it); EXPIRE and PERSIST write.
    assert_eq!(ask(&host, &mut s, "TTL flags:x").await, Reply::Int(-2));
    assert_eq!(ask(&host, &mut s, "TTL sessions:a").await, Reply::Int(-1));
    for line in [
        "SADD flags:x m",
        "INCR ratelimits:a",
        "GET carts:c",
        "PERSIST flags:x",
        "EXPIRE ratelimits:a 10",
        "TTL carts:c",
    ] {
        let r = ask(&host, &mut s, line).await;
        assert!(err_starting(&r, "NOPERM"), "{line}: {r:?}");
    }
    assert_eq!(host.writes.load(Ordering::SeqCst), 1);
    // HELLO with AUTH on a fresh connection: authenticated and RESP3 at once.
    let mut s2 = Session::new(2);
    let r = ask(&host, &mut s2, "HELLO 3 AUTH default s3cret").await;
    assert!(matches!(r, Reply::Map(_)), "{r:?}");
    assert_eq!(s2.proto, 3);
    assert_eq!(ask(&host, &mut s2, "GET sessions:a").await, bulk("v"));
}

/// Runs `input` through a connection (the client then closes its side) and returns what the
/// server answered.
async fn through_connection(host: &StoreHost, input: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let limits = Limits {
        max_bulk: 64,
        max_frame: 4096,
        max_args: 16,
        max_inline: 256,
    };
    let serve = connection(host, server, &limits, 1, stop);
    let talk = async {
        // The server may close early (protocol error): later writes may fail.
        let _ = client.write_all(input).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        out
    };
    let ((), out) = tokio::join!(serve, talk);
    out
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order_and_a_bad_frame_closes() {
    let host = StoreHost::new("", false);
    let out = through_connection(
        &host,
        b"*3\r\n$3\r\nSET\r\n$10\r\nsessions:a\r\n$1\r\n1\r\nGET sessions:a\r\n*2\r\n$3\r\nGET\r\n$10\r\nsessions:a\r\n*1\r\n*1\r\n*3\r\n$3\r\nSET\r\n$10\r\nsessions:b\r\n$1\r\n1\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(
        text.starts_with("+OK\r\n$1\r\n1\r\n$1\r\n1\r\n-ERR Protocol error: "),
        "{text}"
    );
    // The SET after the bad frame never ran.
    assert_eq!(host.writes.load(Ordering::SeqCst), 1);
    assert!(host.store.get("sessions", b"b").unwrap().is_none());
}

#[tokio::test]
async fn pipelined_writes_are_submitted_together_and_answered_in_order() {
    let host = StoreHost::new("", false);
    let cmds = [
        "SET sessions:a 1",
        "INCR ratelimits:x",
        "SET sessions:a 2",
        "INCRBY ratelimits:x 5",
        // Overflows: refused by the store, answered in its place; the rest go on.
        "INCRBY ratelimits:x 9223372036854775807",
        "SET sessions:b 3 EX 10",
        // Not pipelined: runs once everything before it is answered, and sees it.
        "GET sessions:a",
        "TTL sessions:b",
        "SET sessions:a 4",
        "GET sessions:a",
    ];
    let input: String = cmds.iter().map(|c| format!("{c}\r\n")).collect();
    let out = through_connection(&host, input.as_bytes()).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let want = "+OK\r\n:1\r\n+OK\r\n:6\r\n-ERR ";
    assert!(text.starts_with(want), "{text}");
    assert!(
        text.ends_with("+OK\r\n$1\r\n2\r\n:10\r\n+OK\r\n$1\r\n4\r\n"),
        "{text}"
    );
    assert_eq!(host.writes.load(Ordering::SeqCst), 6, "{text}");
    assert_eq!(
        host.submitted.load(Ordering::SeqCst),
        7,
        "the SETs and INCRs were not submitted as a pipeline"
    );
}

/// Frames that are malformed in every way the decoder could trip on.
fn malformed() -> impl Strategy<Value = Vec<u8>> {
    let set = b"*3\r\n$3\r\nSET\r\n$10\r\nsessions:a\r\n$5\r\nvalue\r\n".to_vec();
    let set2 = set.clone();
    prop_oneof![
        // Random bytes after an array header.
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(|mut v| {
            v.insert(0, b'*');
            v
        }),
        // A write with one length made wrong (longer or shorter than its data).
        (0usize..3, 0usize..40).prop_map(move |(which, len)| {
            let text = String::from_utf8_lossy(&set).to_string();
            let from = ["$3\r\n", "$10\r\n", "$5\r\n"][which];
            let to = format!(
                "${}\r\n",
                if len == [3, 10, 5][which] {
                    len + 1
                } else {
                    len
                }
            );
            text.replacen(from, &to, 1).into_bytes()
        }),
        // A write cut short, with garbage where the rest would be.
        (1usize..40, proptest::collection::vec(any::<u8>(), 0..8)).prop_map(move |(cut, junk)| {
            let mut v = set2[..cut.min(set2.len() - 1)].to_vec();
            v.extend(junk.into_iter().filter(|b| *b != b'\r' && *b != b'\n'));
            v
        }),
        // Deep nesting, huge or negative lengths, wrong element types.
        (1usize..5000).prop_map(|n| b"*1\r\n".repeat(n)),
        Just(b"*1\r\n$99999999999999\r\n".to_vec()),
        Just(b"*-5\r\n*1\r\n$-3\r\n".to_vec()),
        Just(b"*2\r\n:1\r\n:2\r\n".to_vec()),
        Just(b"*2\r\n$3\r\nSET\r\n+OK\r\n".to_vec()),
        Just(b"*99999999999\r\n".to_vec()),
        // An inline line over its limit.
        Just([b'S'; 300].to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Architecture Invariant: malformed RESP never panics and never writes.
    #[test]
    fn malformed_frames_never_panic_and_never_write(input in malformed()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let host = StoreHost::new("", false);
        let out = rt.block_on(through_connection(&host, &input));
        prop_assert_eq!(host.writes.load(Ordering::SeqCst), 0, "input {:?} answered {:?}", input, String::from_utf8_lossy(&out));
        prop_assert_eq!(host.store.stats().writes_total.load(Ordering::Relaxed), 0);
    }

    /// Any bytes at all: no panic, every answer is well-formed RESP.
    #[test]
    fn any_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let host = StoreHost::new("", false);
        let out = rt.block_on(through_connection(&host, &input));
        let mut rest = &out[..];
        while !rest.is_empty() {
            match redis_protocol::resp2::decode::decode(rest) {
                Ok(Some((_, n))) => rest = &rest[n..],
                other => prop_assert!(false, "bad answer {:?}: {:?}", String::from_utf8_lossy(&out), other),
            }
        }
    }
}

#[tokio::test]
async fn atoll_ratelimit_admits_up_to_the_limit_and_a_denial_counts_nothing() {
    let host = StoreHost::new(
        "[[keyspaces]]\nname = \"quota\"\npolicy = \"ratelimit\"\nlimit = 3\nwindow = \"10s\"\nalgorithm = \"fixed\"\n",
        false,
    );
    let mut s = Session::new(2);
    let decision = |allowed: i64, remaining: i64, retry: i64| {
        Reply::Array(vec![
            int(allowed),
            int(3),
            int(remaining),
            int(retry),
            int(1_700_000_010_000),
        ])
    };
    script(
        &host,
        &mut s,
        &[
            ("ATOLL.RATELIMIT quota:user-1", decision(1, 2, 0)),
            ("ATOLL.RATELIMIT quota:user-1 2", decision(1, 0, 0)),
            // T0 is a multiple of 10 s: the window ends 10 s later.
            ("ATOLL.RATELIMIT quota:user-1", decision(0, 0, 10_000)),
            ("ATOLL.RATELIMIT quota:user-2 3", decision(1, 0, 0)),
            (
                "ATOLL.RATELIMIT quota:user-1 0",
                Reply::Error("ERR the cost is a whole number of at least 1".into()),
            ),
        ],
    )
    .await;
    let writes = host.writes.load(Ordering::Relaxed);
    assert_eq!(
        ask(&host, &mut s, "ATOLL.RATELIMIT quota:user-1").await,
        decision(0, 0, 10_000)
    );
    assert_eq!(
        host.writes.load(Ordering::Relaxed),
        writes,
        "a denial wrote"
    );
    assert_eq!(
        host.store
            .applied()
            .get(&atoll_core::RegionId::new("us-east-1").unwrap()),
        3,
        "a denial was counted"
    );
    // Other policies: the WRONGTYPE answer names what the keyspace serves.
    let r = ask(&host, &mut s, "ATOLL.RATELIMIT sessions:a").await;
    assert!(
        matches!(&r, Reply::Error(e) if e.starts_with("WRONGTYPE")),
        "{r:?}"
    );
    let r = ask(&host, &mut s, "GET quota:user-1").await;
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("ATOLL.RATELIMIT")),
        "{r:?}"
    );
    host.clock.advance(10_000);
    assert_eq!(
        ask(&host, &mut s, "ATOLL.RATELIMIT quota:user-1").await,
        Reply::Array(vec![int(1), int(3), int(2), int(0), int(1_700_000_020_000)])
    );
}
