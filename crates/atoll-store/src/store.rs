//! The [`Store`]: validation, the single writer thread with group commit, and reads.

use crate::backend::{Backend, Mutation, Table, prefix_end};
use crate::keys;
use atoll_config::{KEY_MAX_BYTES, KeyspaceConfig};
use atoll_core::clock::Clock;
use atoll_core::codec;
use atoll_core::crdt::lww::{ConflictReason, LwwVersion};
use atoll_core::hlc::{Hlc, Timestamp};
use atoll_core::op::{Intent, KeyState, OpEntry, Policy, prepare};
use atoll_core::{AtollError, RegionId, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Layout version of a data directory (key scheme and tables). Records inside carry their own
/// encoding version (see `atoll_core::codec`).
pub const STORE_FORMAT_VERSION: u16 = 1;

/// Called after every group commit with the batch size and how long the durable commit took.
pub type CommitObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// How to open a [`Store`].
#[derive(Clone)]
pub struct StoreOptions {
    pub region: RegionId,
    pub keyspaces: Vec<KeyspaceConfig>,
    pub max_clock_offset_ms: u64,
    /// Most writes that share one commit.
    pub group_commit_max_batch: usize,
    /// Requests that may wait for the writer before new ones are refused as overloaded.
    pub queue_capacity: usize,
    /// fsync every commit (always on in production; off only in benchmarks of the CPU path).
    pub durable: bool,
    pub on_commit: Option<CommitObserver>,
}

impl StoreOptions {
    pub fn new(region: RegionId, keyspaces: Vec<KeyspaceConfig>) -> Self {
        Self {
            region,
            keyspaces,
            max_clock_offset_ms: Hlc::DEFAULT_MAX_OFFSET_MS,
            group_commit_max_batch: 512,
            queue_capacity: 16_384,
            durable: true,
            on_commit: None,
        }
    }
}

/// What an acknowledged write produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The key's state after the write.
    pub state: KeyState,
    /// The write's sequence number in this region's operation log.
    pub seq: u64,
    /// The write's HLC timestamp.
    pub ts: Timestamp,
}

/// One entry of the conflict ledger: an lww write that lost to a concurrent one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    pub keyspace: String,
    pub key: Vec<u8>,
    pub winner: LwwVersion,
    pub loser: LwwVersion,
    pub reason: ConflictReason,
    /// Physical time (ms since the epoch) at which this region resolved the conflict.
    pub recorded_at_ms: u64,
}

/// Counters the server exports as metrics.
#[derive(Default, Debug)]
pub struct StoreStats {
    pub writes_total: AtomicU64,
    pub write_errors_total: AtomicU64,
    pub commits_total: AtomicU64,
    pub commit_failures_total: AtomicU64,
    pub last_seq: AtomicU64,
    pub hlc_wall_ms: AtomicU64,
    pub conflicts_total: AtomicU64,
}

type Reply = Box<dyn FnOnce(Result<WriteOutcome>) + Send>;

struct Request {
    keyspace: String,
    key: Vec<u8>,
    intent: Intent,
    reply: Reply,
}

struct Shared {
    backend: Arc<dyn Backend>,
    region: RegionId,
    keyspaces: HashMap<String, KeyspaceConfig>,
    stats: StoreStats,
}

/// A region's durable store. Cheap to share behind an `Arc`; all writes go through one writer
/// thread that batches concurrent writes into one fsynced commit.
pub struct Store {
    shared: Arc<Shared>,
    tx: RwLock<Option<SyncSender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or initializes) the store on `backend`. Refuses a data directory written by a newer
    /// format version or by another region.
    pub fn open(
        backend: Arc<dyn Backend>,
        opts: StoreOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Store> {
        let mut init = Vec::new();
        match backend.get(Table::Meta, keys::META_FORMAT)? {
            Some(raw) => {
                let found = codec::decode::<u16>(&raw)?;
                if found > STORE_FORMAT_VERSION {
                    return Err(AtollError::FormatTooNew {
                        found,
                        supported: STORE_FORMAT_VERSION,
                    });
                }
            }
            None => init.push(Mutation::Put(
                Table::Meta,
                keys::META_FORMAT.to_vec(),
                codec::encode(&STORE_FORMAT_VERSION)?,
            )),
        }
        match backend.get(Table::Meta, keys::META_REGION)? {
            Some(raw) => {
                let owner: String = codec::decode(&raw)?;
                if owner != opts.region.as_str() {
                    return Err(AtollError::Config(format!(
                        "the data directory belongs to region `{owner}`, not `{}`",
                        opts.region
                    )));
                }
            }
            None => init.push(Mutation::Put(
                Table::Meta,
                keys::META_REGION.to_vec(),
                codec::encode(&opts.region.as_str())?,
            )),
        }
        if !init.is_empty() {
            backend.commit(init, true)?;
        }

        let mut hlc = Hlc::new(opts.max_clock_offset_ms);
        if let Some(raw) = backend.get(Table::Meta, keys::META_HLC)? {
            hlc.restore(codec::decode::<Timestamp>(&raw)?);
        }
        let prefix = keys::prefix(opts.region.as_str());
        let seq = match backend.last_in(Table::Oplog, &prefix, &prefix_end(&prefix))? {
            Some((k, _)) => keys::oplog_seq(&opts.region, &k).ok_or_else(|| {
                AtollError::Corrupt("operation-log key of unexpected shape".into())
            })?,
            None => 0,
        };

        let shared = Arc::new(Shared {
            backend,
            region: opts.region.clone(),
            keyspaces: opts
                .keyspaces
                .iter()
                .map(|k| (k.name.clone(), k.clone()))
                .collect(),
            stats: StoreStats::default(),
        });
        shared.stats.last_seq.store(seq, Ordering::Relaxed);
        shared
            .stats
            .hlc_wall_ms
            .store(hlc.last().wall_ms, Ordering::Relaxed);

        let (tx, rx) = mpsc::sync_channel(opts.queue_capacity.max(1));
        let writer = Writer {
            shared: shared.clone(),
            clock,
            hlc,
            seq,
            max_batch: opts.group_commit_max_batch.max(1),
            durable: opts.durable,
            on_commit: opts.on_commit.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("atoll-writer-{}", opts.region))
            .spawn(move || writer.run(rx))
            .map_err(|e| AtollError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            shared,
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn region(&self) -> &RegionId {
        &self.shared.region
    }

    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// The keyspaces this store serves, in no particular order.
    pub fn keyspaces(&self) -> impl Iterator<Item = &KeyspaceConfig> {
        self.shared.keyspaces.values()
    }

    /// The config of `name`, or [`AtollError::UnknownKeyspace`].
    pub fn keyspace(&self, name: &str) -> Result<&KeyspaceConfig> {
        self.shared
            .keyspaces
            .get(name)
            .ok_or_else(|| AtollError::UnknownKeyspace(name.to_string()))
    }

    /// Checks a write before it is queued: keyspace, key and value size.
    pub fn validate(&self, keyspace: &str, key: &[u8], intent: &Intent) -> Result<()> {
        let ks = self.keyspace(keyspace)?;
        validate_key(key)?;
        if let Intent::Put { value, .. } = intent
            && value.len() > ks.max_value_bytes
        {
            return Err(AtollError::ValueTooLarge {
                keyspace: keyspace.to_string(),
                len: value.len(),
                max: ks.max_value_bytes,
            });
        }
        if let Intent::SetUpdate { add, remove } = intent {
            let total: usize = add.iter().chain(remove).map(String::len).sum();
            if total > ks.max_value_bytes {
                return Err(AtollError::ValueTooLarge {
                    keyspace: keyspace.to_string(),
                    len: total,
                    max: ks.max_value_bytes,
                });
            }
        }
        Ok(())
    }

    /// Queues a write; `reply` is called once, from the writer thread, after the write is durable
    /// (or with the error that refused it, in which case nothing changed).
    pub fn submit(
        &self,
        keyspace: &str,
        key: &[u8],
        intent: Intent,
        reply: impl FnOnce(Result<WriteOutcome>) + Send + 'static,
    ) {
        if let Err(e) = self.validate(keyspace, key, &intent) {
            self.shared
                .stats
                .write_errors_total
                .fetch_add(1, Ordering::Relaxed);
            reply(Err(e));
            return;
        }
        let req = Request {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            intent,
            reply: Box::new(reply),
        };
        let guard = match self.tx.read() {
            Ok(g) => g,
            Err(_) => return (req.reply)(Err(AtollError::ShuttingDown)),
        };
        let Some(tx) = guard.as_ref() else {
            return (req.reply)(Err(AtollError::ShuttingDown));
        };
        match tx.try_send(req) {
            Ok(()) => {}
            Err(TrySendError::Full(req)) => (req.reply)(Err(AtollError::Overloaded(
                "the write queue is full".into(),
            ))),
            Err(TrySendError::Disconnected(req)) => (req.reply)(Err(AtollError::ShuttingDown)),
        }
    }

    /// Writes and waits for the durable acknowledgement (for tools and tests; servers use
    /// [`Store::submit`]).
    pub fn write(&self, keyspace: &str, key: &[u8], intent: Intent) -> Result<WriteOutcome> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(keyspace, key, intent, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| AtollError::ShuttingDown)?
    }

    /// Reads a key's state (`None` if never written). Deleted keys return their tombstone state.
    pub fn get(&self, keyspace: &str, key: &[u8]) -> Result<Option<KeyState>> {
        self.keyspace(keyspace)?;
        validate_key(key)?;
        read_state(&*self.shared.backend, &keys::data_key(keyspace, key))
    }

    /// The most recent conflict-ledger entries of `keyspace`, newest first, at most `limit`.
    pub fn conflicts(&self, keyspace: &str, limit: usize) -> Result<Vec<ConflictRecord>> {
        self.keyspace(keyspace)?;
        let prefix = keys::prefix(keyspace);
        let rows = self.shared.backend.range(
            Table::Conflicts,
            &prefix,
            &prefix_end(&prefix),
            usize::MAX,
        )?;
        rows.iter()
            .rev()
            .take(limit)
            .map(|(_, v)| codec::decode(v))
            .collect()
    }

    /// Operation-log entries of `origin` with `seq >= from`, in order, at most `limit`.
    pub fn oplog(&self, origin: &RegionId, from: u64, limit: usize) -> Result<Vec<OpEntry>> {
        let start = keys::oplog_key(origin, from);
        let prefix = keys::prefix(origin.as_str());
        self.shared
            .backend
            .range(Table::Oplog, &start, &prefix_end(&prefix), limit)?
            .iter()
            .map(|(_, v)| codec::decode(v))
            .collect()
    }

    /// Stops accepting writes, finishes every queued write, and waits for the writer to exit.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.write() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock()
            && let Some(h) = w.take()
        {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(AtollError::EmptyKey);
    }
    if key.len() > KEY_MAX_BYTES {
        return Err(AtollError::KeyTooLarge {
            len: key.len(),
            max: KEY_MAX_BYTES,
        });
    }
    Ok(())
}

fn read_state(backend: &dyn Backend, data_key: &[u8]) -> Result<Option<KeyState>> {
    match backend.get(Table::Data, data_key)? {
        Some(raw) => Ok(Some(codec::decode(&raw)?)),
        None => Ok(None),
    }
}

/// The single writer: owns the HLC and the sequence counter, so both advance in commit order.
struct Writer {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    hlc: Hlc,
    seq: u64,
    max_batch: usize,
    durable: bool,
    on_commit: Option<CommitObserver>,
}

/// The uncommitted part of a batch: key states written so far (later writes to the same key in
/// the same batch build on earlier ones) and the mutations to commit.
#[derive(Default)]
struct Batch {
    states: HashMap<Vec<u8>, KeyState>,
    dirty: HashSet<Vec<u8>>,
    mutations: Vec<Mutation>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Request>) {
        // recv() fails only once every sender is gone and the queue is empty: that is shutdown.
        while let Ok(first) = rx.recv() {
            let mut reqs = vec![first];
            while reqs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            self.process(reqs);
        }
    }

    fn process(&mut self, reqs: Vec<Request>) {
        let seq_before = self.seq;
        let mut batch = Batch::default();
        let mut done = Vec::with_capacity(reqs.len());
        for req in reqs {
            match self.apply_local(&req, &mut batch) {
                Ok(outcome) => done.push((req.reply, outcome)),
                Err(e) => {
                    self.shared
                        .stats
                        .write_errors_total
                        .fetch_add(1, Ordering::Relaxed);
                    (req.reply)(Err(e));
                }
            }
        }
        if done.is_empty() {
            return;
        }
        let mut mutations = std::mem::take(&mut batch.mutations);
        for k in batch.dirty {
            if let Some(state) = batch.states.get(&k) {
                match codec::encode(state) {
                    Ok(v) => mutations.push(Mutation::Put(Table::Data, k, v)),
                    Err(e) => return self.fail(done, seq_before, e),
                }
            }
        }
        match codec::encode(&self.hlc.last()) {
            Ok(v) => mutations.push(Mutation::Put(Table::Meta, keys::META_HLC.to_vec(), v)),
            Err(e) => return self.fail(done, seq_before, e),
        }
        let n = done.len();
        let started = Instant::now();
        match self.shared.backend.commit(mutations, self.durable) {
            Ok(()) => {
                let stats = &self.shared.stats;
                stats.commits_total.fetch_add(1, Ordering::Relaxed);
                stats.writes_total.fetch_add(n as u64, Ordering::Relaxed);
                stats.last_seq.store(self.seq, Ordering::Relaxed);
                stats
                    .hlc_wall_ms
                    .store(self.hlc.last().wall_ms, Ordering::Relaxed);
                if let Some(obs) = &self.on_commit {
                    obs(n, started.elapsed());
                }
                for (reply, outcome) in done {
                    reply(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = n, "commit failed; writes not acknowledged");
                self.fail(done, seq_before, e);
            }
        }
    }

    fn fail(&mut self, done: Vec<(Reply, WriteOutcome)>, seq_before: u64, e: AtollError) {
        self.seq = seq_before;
        let stats = &self.shared.stats;
        stats.commit_failures_total.fetch_add(1, Ordering::Relaxed);
        stats
            .write_errors_total
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        for (reply, _) in done {
            reply(Err(e.clone()));
        }
    }

    fn apply_local(&mut self, req: &Request, batch: &mut Batch) -> Result<WriteOutcome> {
        let ks = self
            .shared
            .keyspaces
            .get(&req.keyspace)
            .ok_or_else(|| AtollError::UnknownKeyspace(req.keyspace.clone()))?;
        let dk = keys::data_key(&req.keyspace, &req.key);
        let current = match batch.states.get(&dk) {
            Some(s) => Some(s.clone()),
            None => read_state(&*self.shared.backend, &dk)?,
        };
        if ks.policy == Policy::Mvr
            && let Intent::Put {
                context: Some(seen),
                ..
            }
            | Intent::Delete {
                context: Some(seen),
            } = &req.intent
        {
            let known = match &current {
                Some(KeyState::Mvr(r)) => r.ctx.includes(seen),
                _ => seen.is_empty(),
            };
            if !known {
                return Err(AtollError::ContextAhead(format!(
                    "{}/{}",
                    req.keyspace,
                    String::from_utf8_lossy(&req.key)
                )));
            }
        }
        let ts = self.hlc.now(self.clock.physical_ms());
        let delta = prepare(
            &req.keyspace,
            ks.policy,
            &req.intent,
            current.as_ref(),
            &self.shared.region,
            ts,
        )?;
        let state = match current {
            Some(mut s) => {
                let before = live_siblings(&s);
                s.merge(&delta)?;
                let after = live_siblings(&s);
                if after > ks.max_siblings && after > before {
                    return Err(AtollError::SiblingLimit {
                        count: after,
                        max: ks.max_siblings,
                    });
                }
                s
            }
            None => delta.clone(),
        };
        let seq = self.seq + 1;
        let entry = OpEntry {
            origin: self.shared.region.clone(),
            seq,
            ts,
            keyspace: req.keyspace.clone(),
            key: req.key.clone(),
            delta,
        };
        batch.mutations.push(Mutation::Put(
            Table::Oplog,
            keys::oplog_key(&self.shared.region, seq),
            codec::encode(&entry)?,
        ));
        self.seq = seq;
        batch.states.insert(dk.clone(), state.clone());
        batch.dirty.insert(dk);
        Ok(WriteOutcome { state, seq, ts })
    }
}

fn live_siblings(s: &KeyState) -> usize {
    match s {
        KeyState::Mvr(r) => r.sibling_count(),
        _ => 0,
    }
}
