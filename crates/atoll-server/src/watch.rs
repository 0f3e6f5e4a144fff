//! Watches (`GET /v1/watch/{keyspace}`, `docs/design/watch.md`): change feeds built from the
//! operation log, the same for local and replicated writes.
//!
//! - [`Watch`]: the region's live feed (a broadcast ring of committed operation-log entries, fed
//!   by the store's writer) and the cap on open watchers.
//! - [`Token`]: the resume token, a version vector of what a watcher has been given.
//! - [`Watcher`]: one watch: catches up from the log from its token, then follows the live feed
//!   into a bounded buffer; falls behind (ends with `lagged`) rather than buffering without bound.

use crate::metrics::Metrics;
use atoll_config::Config;
use atoll_core::causal::VersionVector;
use atoll_core::op::OpEntry;
use atoll_core::op::{KeyState, Policy};
use atoll_core::{AtollError, RegionId, Result};
use atoll_store::Store;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{broadcast, mpsc};

/// First byte of an encoded [`Token`].
pub const TOKEN_VERSION: u8 = 1;
/// Committed batches the live feed holds for watchers that are behind.
pub const RING_BATCHES: usize = 1024;
/// Events one watcher buffers for its client before it falls behind.
pub const BUFFER_EVENTS: usize = 256;
/// Operation-log entries read per step of a catch-up.
const CATCHUP_PAGE: usize = 256;
/// Keys read per step of a reset's full state.
const RESET_PAGE: usize = 256;
/// How long a watcher waits for room in its buffer before it falls behind.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a watcher that fell behind waits for room for its `lagged` event.
const LAGGED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest encoded token accepted.
const MAX_TOKEN_BYTES: usize = 8192;

/// The region's live feed and its open watchers.
pub struct Watch {
    feed: broadcast::Sender<Arc<Vec<OpEntry>>>,
    open: AtomicUsize,
    max: usize,
    cluster_tag: u32,
    /// The regions of the config the region started with; the membership's, once connected (a
    /// config reload appends to those).
    regions: Vec<RegionId>,
    membership: std::sync::OnceLock<Arc<crate::members::Membership>>,
    me: RegionId,
    metrics: Arc<Metrics>,
    /// Set when the region stops: every watch ends (its client resumes elsewhere or later).
    closed: tokio::sync::watch::Sender<bool>,
    /// The state JSON of recent log entries, read and rendered once for all watchers.
    states: std::sync::Mutex<StateCache>,
}

/// The state JSON of the most recent [`STATE_CACHE`] log entries events were built for.
#[derive(Default)]
struct StateCache {
    map: std::collections::HashMap<(RegionId, u64), Arc<Value>>,
    order: std::collections::VecDeque<(RegionId, u64)>,
}

/// Log entries whose state JSON [`Watch`] keeps for other watchers.
const STATE_CACHE: usize = 8192;

/// A resume token: per origin, the highest sequence number a watcher has been given or passed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Token {
    pub cursor: BTreeMap<RegionId, u64>,
}

#[derive(Serialize, Deserialize)]
struct TokenBody {
    cluster: u32,
    cursor: Vec<(String, u64)>,
}

fn bad_token(detail: impl std::fmt::Display) -> AtollError {
    AtollError::BadRequest(format!(
        "bad watch token: {detail}; resume with a token this cluster's watch events carried, or watch without one"
    ))
}

impl Token {
    pub fn encode(&self, cluster_tag: u32) -> String {
        let body = TokenBody {
            cluster: cluster_tag,
            cursor: self
                .cursor
                .iter()
                .map(|(r, s)| (r.as_str().to_string(), *s))
                .collect(),
        };
        let mut out = vec![TOKEN_VERSION];
        // A Vec of (String, u64) always encodes.
        out.extend(postcard::to_allocvec(&body).unwrap_or_default());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// Decodes a token of this cluster naming only its `regions`.
    pub fn decode(text: &str, cluster_tag: u32, regions: &[RegionId]) -> Result<Self> {
        if text.len() > MAX_TOKEN_BYTES {
            return Err(bad_token(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| bad_token("not base64url"))?;
        let body = match raw.split_first() {
            Some((&TOKEN_VERSION, rest)) => {
                postcard::from_bytes::<TokenBody>(rest).map_err(|_| bad_token("garbled"))?
            }
            Some((v, _)) => {
                return Err(bad_token(format!(
                    "format version {v} is not {TOKEN_VERSION}"
                )));
            }
            None => return Err(bad_token("empty")),
        };
        if body.cluster != cluster_tag {
            return Err(bad_token("issued by another cluster"));
        }
        let mut cursor = BTreeMap::new();
        for (name, seq) in body.cursor {
            let region = regions
                .iter()
                .find(|r| r.as_str() == name)
                .ok_or_else(|| bad_token(format!("`{name}` is not a region of this cluster")))?;
            cursor.insert(region.clone(), seq);
        }
        Ok(Token { cursor })
    }

    /// The position of what `applied` holds, for every region of the cluster.
    fn at(regions: &[RegionId], applied: &VersionVector) -> Self {
        Token {
            cursor: regions
                .iter()
                .map(|r| (r.clone(), applied.get(r)))
                .collect(),
        }
    }

    fn seq_of(&self, origin: &RegionId) -> u64 {
        self.cursor.get(origin).copied().unwrap_or(0)
    }
}

/// Why a watch starts with a `reset`: the token names writes this region's log cannot give.
/// `applied`: what this region has applied per origin; `first`: the first log entry it holds
/// per origin. Pure, for tests.
pub fn needs_reset(
    token: &Token,
    me: &RegionId,
    applied: &VersionVector,
    first: &BTreeMap<RegionId, Option<u64>>,
) -> Option<String> {
    // Nobody has more of this region's own writes than this region: a token that does was
    // taken before this region's data was lost.
    let mine = token.seq_of(me);
    if mine > applied.get(me) {
        return Some(format!(
            "the token names {mine} writes of `{me}`, which holds only {} (its data was rebuilt)",
            applied.get(me)
        ));
    }
    for (origin, f) in first {
        if let Some(f) = f
            && *f > token.seq_of(origin) + 1
        {
            return Some(format!(
                "the log of `{origin}` here starts at {f}, after the token's {}",
                token.seq_of(origin)
            ));
        }
    }
    None
}

/// What a watch follows: a keyspace, and one key or a key prefix in it.
#[derive(Clone, Debug)]
pub struct Filter {
    pub keyspace: String,
    pub policy: Policy,
    pub key: Option<Vec<u8>>,
    pub prefix: Vec<u8>,
}

impl Filter {
    fn matches(&self, e: &OpEntry) -> bool {
        e.keyspace == self.keyspace
            && match &self.key {
                Some(k) => &e.key == k,
                None => e.key.starts_with(&self.prefix),
            }
    }
}

/// One item of a watch's stream.
#[derive(Debug)]
pub enum Item {
    /// `event: ready`: the watch's starting position (before any catch-up event).
    Ready { token: String },
    /// A change (`event: change`), or a key's state after a reset (`event: state`).
    Event { kind: &'static str, body: Value },
    /// `event: reset`: the watch starts over from the current state.
    Reset { reason: String },
    /// `event: lagged`: the watcher fell behind; resume with `token`.
    Lagged { token: String, reason: String },
}

impl Watch {
    pub fn new(config: &Config, me: &RegionId, metrics: Arc<Metrics>) -> Arc<Self> {
        let (feed, _) = broadcast::channel(RING_BATCHES);
        Arc::new(Self {
            feed,
            open: AtomicUsize::new(0),
            max: config.api.max_watchers,
            cluster_tag: crc32fast::hash(config.cluster.name.as_bytes()),
            regions: config.regions.iter().map(|r| r.name.clone()).collect(),
            membership: std::sync::OnceLock::new(),
            me: me.clone(),
            metrics,
            closed: tokio::sync::watch::Sender::new(false),
            states: Default::default(),
        })
    }

    /// Ends every open watch and refuses new ones (the region is stopping).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The store's `on_ops` observer: every committed batch's log entries into the feed.
    pub fn observer(self: &Arc<Self>) -> atoll_store::OpsObserver {
        let w = self.clone();
        Arc::new(move |ops| {
            // No receiver: nobody watches, nothing to keep.
            let _ = w.feed.send(ops);
        })
    }

    /// Follows the cluster's membership from now on (a config reload adds regions to watch).
    pub fn set_membership(&self, m: Arc<crate::members::Membership>) {
        let _ = self.membership.set(m);
    }

    /// The cluster's regions, as of the latest config reload, and those this region removed
    /// (their writes stay in the log and in watch positions).
    pub fn regions(&self) -> Vec<RegionId> {
        match self.membership.get() {
            Some(m) => m.origins(),
            None => self.regions.clone(),
        }
    }

    pub fn decode_token(&self, text: &str) -> Result<Token> {
        Token::decode(text, self.cluster_tag, &self.regions())
    }

    /// Starts a watch: checks the cap, then runs its task. The receiver yields the stream's
    /// items; it ends after a `lagged` item or when the region stops.
    pub fn start(
        self: &Arc<Self>,
        store: Arc<Store>,
        filter: Filter,
        token: Option<Token>,
    ) -> Result<mpsc::Receiver<Item>> {
        if *self.closed.borrow() {
            return Err(AtollError::ShuttingDown);
        }
        let open = self.open.fetch_add(1, Ordering::SeqCst);
        if open >= self.max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            self.metrics.watch_dropped("limit");
            return Err(AtollError::Overloaded(format!(
                "this region already serves {} watchers ([api] max_watchers); retry later or watch through another region",
                self.max
            )));
        }
        self.metrics
            .watchers
            .set(self.open.load(Ordering::SeqCst) as i64);
        // Subscribe before reading the log: an entry committed from now on is in the feed, one
        // committed before is in the log. A watch without a token starts at what is applied
        // now, when the client is answered, not when its task first runs: a write the client
        // makes once it has its answer must be an event (under load the task ran after the
        // client's first write, and that write was never sent).
        let feed = self.feed.subscribe();
        let begin = store.applied();
        let (tx, rx) = mpsc::channel(BUFFER_EVENTS);
        let w = self.clone();
        tokio::spawn(async move {
            let mut watcher = Watcher {
                w: w.clone(),
                store,
                filter,
                tx,
                token: Token::default(),
                resetting: None,
            };
            let mut closed = w.closed.subscribe();
            let lagged = tokio::select! {
                lagged = watcher.run(feed, token, begin) => lagged,
                _ = closed.wait_for(|c| *c) => None,
            };
            // The slot is free as soon as the watcher stops taking events.
            w.open.fetch_sub(1, Ordering::SeqCst);
            w.metrics.watchers.set(w.open.load(Ordering::SeqCst) as i64);
            if let Some(item) = lagged {
                // The buffer is full: wait (bounded) for room for the last word.
                let _ = tokio::time::timeout(LAGGED_WAIT, watcher.tx.send(item)).await;
            }
        });
        Ok(rx)
    }
}

/// Why a watcher stops early.
enum Stop {
    /// Its buffer was full: the client does not keep up.
    Full,
    /// The client went away (or the region stops).
    Gone,
    /// The operation log was truncated past the watch's position while it caught up
    /// (`docs/design/oplog-truncation.md`): it ends with `lagged`, and resuming resets.
    Truncated,
}

struct Watcher {
    w: Arc<Watch>,
    store: Arc<Store>,
    filter: Filter,
    tx: mpsc::Sender<Item>,
    token: Token,
    /// While a reset's state is being sent: the token the watch was asked to resume from, which
    /// a `lagged` event then carries (resuming resets again rather than skip what is unsent).
    resetting: Option<Token>,
}

impl Watcher {
    /// Runs the watch until the client goes away or falls behind; then the `lagged` item to
    /// send once there is room.
    async fn run(
        &mut self,
        mut feed: broadcast::Receiver<Arc<Vec<OpEntry>>>,
        token: Option<Token>,
        begin: VersionVector,
    ) -> Option<Item> {
        let outcome = match self.start(token, begin).await {
            Ok(()) => self.follow(&mut feed).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) | Err(Stop::Gone) => None,
            Err(Stop::Full) => {
                self.w.metrics.watch_dropped("slow");
                let resume = self.resetting.as_ref().unwrap_or(&self.token);
                Some(Item::Lagged {
                    token: resume.encode(self.w.cluster_tag),
                    reason: format!(
                        "the client did not read its {BUFFER_EVENTS} buffered events in time; resume with this token"
                    ),
                })
            }
            Err(Stop::Truncated) => {
                self.w.metrics.watch_dropped("truncated");
                Some(Item::Lagged {
                    token: self.token.encode(self.w.cluster_tag),
                    reason: "the operation log was truncated past this watch's position while it caught up; resume with this token (the watch then starts with a reset)".into(),
                })
            }
        }
    }

    /// From the token (or from `begin`, what this region had applied when the watch was
    /// answered): a reset if the log cannot give what follows the token, else every logged
    /// entry after it.
    async fn start(&mut self, token: Option<Token>, begin: VersionVector) -> Result<(), Stop> {
        let Some(token) = token else {
            self.token = Token::at(&self.w.regions(), &begin);
            return self.ready().await;
        };
        let applied = self.store.applied();
        let mut first = BTreeMap::new();
        for r in &self.w.regions() {
            let f = self.store.oplog_first(r).map_err(|_| Stop::Gone)?;
            first.insert(r.clone(), f);
        }
        if let Some(reason) = needs_reset(&token, &self.w.me, &applied, &first) {
            self.resetting = Some(token);
            self.reset(reason, applied).await?;
            self.resetting = None;
            return Ok(());
        }
        self.token = token;
        self.ready().await?;
        self.catch_up().await
    }

    async fn ready(&self) -> Result<(), Stop> {
        let token = self.token.encode(self.w.cluster_tag);
        self.send(Item::Ready { token }).await
    }

    /// `reset`, then the current state of every watched key, then live from `applied`.
    async fn reset(&mut self, reason: String, applied: VersionVector) -> Result<(), Stop> {
        self.send(Item::Reset { reason }).await?;
        self.token = Token::at(&self.w.regions(), &applied);
        self.ready().await?;
        let token = self.token.encode(self.w.cluster_tag);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = match &self.filter.key {
                Some(k) => match self.store.get(&self.filter.keyspace, k) {
                    Ok(Some(s)) => vec![(k.clone(), s)],
                    _ => Vec::new(),
                },
                None => self
                    .store
                    .scan(
                        &self.filter.keyspace,
                        &self.filter.prefix,
                        after.as_deref(),
                        RESET_PAGE,
                    )
                    .map_err(|_| Stop::Gone)?,
            };
            let n = page.len();
            for (key, state) in page {
                let now = self.store.now_ms();
                if !deleted(&state, now) {
                    let body = event_json(&self.filter, &key, Some(&state), None, &token, now);
                    self.send(Item::Event {
                        kind: "state",
                        body,
                    })
                    .await?;
                }
                after = Some(key);
            }
            if self.filter.key.is_some() || n < RESET_PAGE {
                return Ok(());
            }
        }
    }

    /// Every logged entry after the token, per origin.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        for origin in self.w.regions() {
            loop {
                let from = self.token.seq_of(&origin) + 1;
                let page = self
                    .store
                    .oplog(&origin, from, CATCHUP_PAGE)
                    .map_err(|_| Stop::Gone)?;
                let n = page.len();
                if page.first().is_some_and(|e| e.seq > from) {
                    // Truncated under the watch: never skip silently.
                    return Err(Stop::Truncated);
                }
                for e in &page {
                    self.offer(e).await?;
                }
                if n < CATCHUP_PAGE {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Live: the feed's entries past the token. A watcher behind the ring catches up from the
    /// log (nothing is lost) and follows again.
    async fn follow(
        &mut self,
        feed: &mut broadcast::Receiver<Arc<Vec<OpEntry>>>,
    ) -> Result<(), Stop> {
        loop {
            tokio::select! {
                got = feed.recv() => match got {
                    Ok(batch) => {
                        for e in batch.iter() {
                            self.offer(e).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await?,
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Gone),
                },
                () = self.tx.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// One log entry: sent if it is past the token and matches; the token moves past it.
    async fn offer(&mut self, e: &OpEntry) -> Result<(), Stop> {
        let at = self.token.seq_of(&e.origin);
        if e.seq <= at {
            return Ok(());
        }
        self.token.cursor.insert(e.origin.clone(), e.seq);
        if !self.filter.matches(e) {
            return Ok(());
        }
        let state = self.state_of(e)?;
        let token = self.token.encode(self.w.cluster_tag);
        let body = event_body(&self.filter, &e.key, (*state).clone(), Some(e), &token);
        self.w.metrics.watch_events.inc();
        let sent = self
            .send(Item::Event {
                kind: "change",
                body,
            })
            .await;
        if matches!(sent, Err(Stop::Full)) {
            // Not given: the lagged event's token must not pass it.
            self.token.cursor.insert(e.origin.clone(), at);
        }
        sent
    }

    /// The key's state JSON for the event of `e`: read and rendered by the first watcher that
    /// needs it, shared with the others (it is then at least as new as `e`, as the design says).
    fn state_of(&self, e: &OpEntry) -> Result<Arc<Value>, Stop> {
        let id = (e.origin.clone(), e.seq);
        if let Some(v) = self
            .w
            .states
            .lock()
            .ok()
            .and_then(|c| c.map.get(&id).cloned())
        {
            return Ok(v);
        }
        let state = self
            .store
            .get(&self.filter.keyspace, &e.key)
            .map_err(|_| Stop::Gone)?;
        let v = Arc::new(crate::api::state_json(
            &self.filter.keyspace,
            &e.key,
            self.filter.policy,
            state.as_ref(),
            self.store.now_ms(),
        ));
        if let Ok(mut c) = self.w.states.lock()
            && c.map.insert(id.clone(), v.clone()).is_none()
        {
            c.order.push_back(id);
            while c.order.len() > STATE_CACHE {
                if let Some(old) = c.order.pop_front() {
                    c.map.remove(&old);
                }
            }
        }
        Ok(v)
    }

    /// Into the buffer, waiting up to [`STALL`] for room: a client that reads, however slowly,
    /// keeps its watch; one that reads nothing for that long falls behind.
    async fn send(&self, item: Item) -> Result<(), Stop> {
        match self.tx.send_timeout(item, STALL).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Stop::Full),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop::Gone),
        }
    }
}

/// Whether a reset leaves the key out: deleted, or (mvr) no sibling live at `now_ms`.
fn deleted(state: &KeyState, now_ms: u64) -> bool {
    match state {
        KeyState::Lww(r) => r.value.is_none(),
        KeyState::Mvr(r) => r.live_at(now_ms).is_empty(),
        _ => false,
    }
}

/// An event's JSON: the key, the change (origin, sequence number, timestamp; absent for a
/// reset's state), the key's state in the shape of a read, and the token.
fn event_json(
    filter: &Filter,
    key: &[u8],
    state: Option<&KeyState>,
    entry: Option<&OpEntry>,
    token: &str,
    now_ms: u64,
) -> Value {
    let state = crate::api::state_json(&filter.keyspace, key, filter.policy, state, now_ms);
    event_body(filter, key, state, entry, token)
}

fn event_body(
    filter: &Filter,
    key: &[u8],
    state: Value,
    entry: Option<&OpEntry>,
    token: &str,
) -> Value {
    let mut v = json!({
        "keyspace": filter.keyspace,
        "key_base64": base64::engine::general_purpose::STANDARD.encode(key),
        "state": state,
        "token": token,
    });
    if let Ok(k) = std::str::from_utf8(key) {
        v["key"] = json!(k);
    }
    if let Some(e) = entry {
        v["origin"] = json!(e.origin.as_str());
        v["seq"] = json!(e.seq);
        v["timestamp"] = json!(e.ts.to_string());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use VersionVector;

    fn r(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_refuse_what_is_not_ours() {
        let regions = vec![r("us-east-1"), r("eu-west-1")];
        let t = Token {
            cursor: [(r("us-east-1"), 7), (r("eu-west-1"), 3)].into(),
        };
        let text = t.encode(42);
        assert_eq!(Token::decode(&text, 42, &regions).unwrap(), t);
        for (bad, why) in [
            (Token::decode(&text, 43, &regions), "another cluster"),
            (Token::decode("%%%", 42, &regions), "base64"),
            (Token::decode("", 42, &regions), "empty"),
            (
                Token::decode(&text[..text.len() - 3], 42, &regions),
                "garbled",
            ),
            (Token::decode(&text, 42, &regions[..1]), "not a region"),
            (
                Token::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([9, 1, 2]),
                    42,
                    &regions,
                ),
                "format version",
            ),
        ] {
            let e = bad.unwrap_err();
            assert_eq!(e.code(), "ATOLL-BAD-REQUEST");
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn a_reset_is_needed_only_where_the_log_cannot_give_what_follows_the_token() {
        let (us, eu) = (r("us-east-1"), r("eu-west-1"));
        let mut applied = VersionVector::default();
        applied.raise(&us, 10);
        applied.raise(&eu, 5);
        let first: BTreeMap<RegionId, Option<u64>> =
            [(us.clone(), Some(1)), (eu.clone(), Some(1))].into();
        let token = |u: u64, e: u64| Token {
            cursor: [(us.clone(), u), (eu.clone(), e)].into(),
        };
        assert_eq!(needs_reset(&token(10, 5), &us, &applied, &first), None);
        // Ahead on another origin: this region is behind it, the events come later.
        assert_eq!(needs_reset(&token(10, 9), &us, &applied, &first), None);
        // Ahead on this region's own writes: its data was rebuilt.
        assert!(needs_reset(&token(11, 5), &us, &applied, &first).is_some());
        // The log of an origin starts after the token.
        let truncated: BTreeMap<RegionId, Option<u64>> =
            [(us.clone(), Some(1)), (eu.clone(), Some(4))].into();
        assert!(needs_reset(&token(10, 2), &us, &applied, &truncated).is_some());
        assert_eq!(needs_reset(&token(10, 3), &us, &applied, &truncated), None);
    }
}
