//! The [`Store`]: validation, the single writer thread with group commit, and reads.

use crate::backend::{Backend, Mutation, Table, prefix_end};
use crate::keys;
use atoll_config::{KEY_MAX_BYTES, KeyspaceConfig};
use atoll_core::causal::VersionVector;
use atoll_core::clock::Clock;
use atoll_core::codec;
use atoll_core::crdt::lww::{ConflictReason, LwwConflict, LwwVersion};
use atoll_core::hlc::{Hlc, Timestamp};
use atoll_core::op::{Intent, KeyState, OpEntry, Policy, WriteAt, prepare};
use atoll_core::repl::SnapshotChunk;
use atoll_core::{AtollError, RegionId, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Layout version of a data directory (key scheme and tables). Records inside carry their own
/// encoding version (see `atoll_core::codec`).
pub const STORE_FORMAT_VERSION: u16 = 1;

/// Called after every group commit with the batch size and how long the durable commit took.
pub type CommitObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// Decides, when a write is stamped, whether this region may write now (split-brain fencing,
/// `docs/design/fencing.md`), and recognises late writes of a superseded lease epoch.
pub trait WriteGate: Send + Sync {
    /// Called by the writer thread under the stamping lock, at the instant the write gets its
    /// timestamp and sequence number. `Ok(epoch)`: stamp the write with this lease epoch. `key`
    /// matters to `owned` keyspaces, whose keys each have one home region. Because the stamping
    /// lock is held, the gate must not take a lock that anyone holds while reading the store's
    /// watermark or replication view (which take the stamping lock): that is a deadlock.
    fn permit(&self, keyspace: &KeyspaceConfig, key: &[u8]) -> Result<u64>;
    /// A replicated write of `epoch` stamped at `ts_ms` (HLC wall time) that cannot have been
    /// accepted inside a valid lease: it is refused (not merged), and counted.
    fn is_late(&self, epoch: u64, ts_ms: u64) -> bool;
}

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
    /// Called after every commit that added operation-log entries (local or replicated), so
    /// replication streams can wake up.
    pub on_change: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Called after every commit with the operation-log entries it added, in log order (the
    /// live feed of watches, `docs/design/watch.md`).
    pub on_ops: Option<OpsObserver>,
    /// Fencing: `None` lets every write through (a cluster without leases or quorum fencing).
    pub gate: Option<Arc<dyn WriteGate>>,
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
            on_change: None,
            on_ops: None,
            gate: None,
        }
    }
}

/// Receives the operation-log entries of each commit ([`StoreOptions::on_ops`]).
pub type OpsObserver = Arc<dyn Fn(Arc<Vec<OpEntry>>) + Send + Sync>;

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

/// One entry of the fencing ledger: a replicated write stamped under a superseded lease epoch
/// after the supersession (`docs/design/fencing.md`, "Epochs on writes"), refused here: it
/// moved this region's cursor but changed no state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateWriteRecord {
    pub keyspace: String,
    pub key: Vec<u8>,
    /// The region that accepted the write, its sequence number there, and its epoch.
    pub origin: RegionId,
    pub seq: u64,
    pub epoch: u64,
    /// The write's HLC timestamp at its origin.
    pub ts: Timestamp,
    /// Physical time (ms since the epoch) at which this region refused it.
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
    /// Operation-log entries truncated (`Store::truncate_oplog`).
    pub oplog_truncated_total: AtomicU64,
    /// Writes of the claim floor of their own (claims of an idle region; a commit raises the
    /// floor for free).
    pub claim_floor_writes_total: AtomicU64,
}

/// How far ahead of a claim the durable claim floor is set (see `Store::watermark`): half the
/// clock-offset bound peers accept, at most 250 ms.
fn claim_lead_ms(max_clock_offset_ms: u64) -> u64 {
    (max_clock_offset_ms / 2).min(250)
}

/// What applying a batch of replicated entries did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteOutcome {
    /// Entries applied (each the next sequence number of its origin).
    pub applied: usize,
    /// Entries skipped because they were already applied or beyond a gap.
    pub skipped: usize,
    /// Of those, entries beyond a gap (their origin's previous entry is not applied): the
    /// subscription that sent them must restart from the applied vector.
    pub gaps: usize,
    /// Conflicts resolved while merging (lww), by keyspace and reason.
    pub conflicts: Vec<(String, ConflictReason)>,
    /// Keyspaces in which a merge left a key over its sibling limit (mvr).
    pub sibling_limit_hits: Vec<String>,
    /// Origins whose entries were refused because their timestamps run ahead of our clock
    /// beyond `max_clock_offset` (the rest of their entries in the batch were not applied).
    pub skewed: Vec<(RegionId, AtollError)>,
    /// Physical time minus the origin timestamp of each applied entry, in milliseconds, by origin.
    pub delays_ms: Vec<(RegionId, u64)>,
    /// Entries of a superseded lease epoch stamped after the supersession: (origin, seq,
    /// epoch). Recorded in the fencing ledger ([`Store::late_writes`]) and moved past, never
    /// merged.
    pub late: Vec<(RegionId, u64, u64)>,
}

/// This region's write watermark: every local write whose timestamp's wall time is below
/// `before_ms` is committed and has a sequence number of at most `head`, and no later write will be
/// stamped below `before_ms`. It is what lets a region claim, on its own clock, how far its peers
/// have caught up with it (the basis of the tombstone horizon).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    pub head: u64,
    pub before_ms: u64,
}

/// The hybrid logical clock and what [`Store::watermark`] needs to know about stamped writes,
/// shared by the writer thread (which stamps and commits) and readers of the watermark.
struct Stamps {
    hlc: Hlc,
    /// Wall time of the first local write stamped into the batch being built: its writes are
    /// all stamped at or after it.
    building_from_ms: Option<u64>,
    /// The same for each sealed batch not yet committed (or refused), oldest first.
    sealed_from_ms: std::collections::VecDeque<Option<u64>>,
    /// Highest committed local sequence number.
    head: u64,
}

/// What a maintenance pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceOutcome {
    pub tombstones_collected: usize,
    /// Expired lww values and mvr siblings collected (`docs/design/expiring-keys.md`).
    pub expired_collected: usize,
    /// Rate-limit keys whose windows all ended, collected (`docs/design/rate-limits.md`).
    pub rate_keys_collected: usize,
    pub conflicts_pruned: usize,
}

/// Most operation-log entries one truncation pass removes (a pass reads and deletes them in one
/// batch; the next pass continues).
pub const TRUNCATE_PER_PASS: usize = 50_000;

/// A bootstrap's durable progress (meta key `bootstrap`; `docs/design/oplog-truncation.md`):
/// present from the moment the region's state was cleared until the snapshot is complete, so a
/// region that stops part-way resumes (and serves nothing) when it starts again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapProgress {
    /// The least of the donor's applied vectors over the chunks loaded so far: every chunk
    /// reflects at least the vector read before it was scanned, so the whole reflects this.
    pub floor: Option<VersionVector>,
    /// The last data key loaded: the next chunk starts after it.
    pub after: Option<Vec<u8>>,
    /// Keys and encoded bytes loaded so far.
    pub keys: u64,
    pub bytes: u64,
}

/// A region this region removed from the cluster (meta key `removed`,
/// `docs/design/region-removal.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRegion {
    /// When the removal took effect (this region's wall clock, ms).
    pub at_ms: u64,
    /// How many of its writes this region held then.
    pub applied_then: u64,
}

/// A peer told this region it was removed from the cluster (meta key `removed-by`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedBy {
    pub by: RegionId,
    /// When this region learnt it (its wall clock, ms).
    pub at_ms: u64,
    /// The most of this region's writes any member said it holds (what the cluster keeps).
    pub held_by_members: u64,
}

type Reply = Box<dyn FnOnce(Result<WriteOutcome>) + Send>;
type RemoteReply = Box<dyn FnOnce(Result<RemoteOutcome>) + Send>;
type MaintenanceReply = Box<dyn FnOnce(Result<MaintenanceOutcome>) + Send>;

struct LocalWrite {
    keyspace: String,
    key: Vec<u8>,
    intent: Intent,
    reply: Reply,
}

enum Request {
    Local(LocalWrite),
    Remote {
        entries: Vec<OpEntry>,
        /// The peer the entries came from (`None`: a tool or test): refused if it was removed.
        source: Option<RegionId>,
        reply: RemoteReply,
    },
    /// Make the removal of a region effective (after everything before it is committed).
    Remove {
        region: RegionId,
        at_ms: u64,
        reply: Box<dyn FnOnce(Result<u64>) + Send>,
    },
    Maintenance {
        horizon_ms: Option<u64>,
        reply: MaintenanceReply,
    },
    Bootstrap {
        step: BootstrapStep,
        reply: Box<dyn FnOnce(Result<Option<VersionVector>>) + Send>,
    },
}

/// A step of a bootstrap, run by the writer thread after everything before it is committed.
enum BootstrapStep {
    /// Clear the region's state and mark the bootstrap as under way (nothing if it already is,
    /// unless `restart`).
    Begin { restart: bool },
    /// Merge one chunk of the donor's states.
    Load {
        applied: VersionVector,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        next: Option<Vec<u8>>,
    },
    /// Adopt the snapshot's applied vector; this region's own head becomes at least `own_floor`.
    Finish { own_floor: u64 },
}

struct Shared {
    backend: Arc<dyn Backend>,
    region: RegionId,
    keyspaces: HashMap<String, KeyspaceConfig>,
    stats: StoreStats,
    /// The committed applied vector (own head included), for readers.
    applied: Mutex<VersionVector>,
    /// The applied vector of the newest batch handed to the committer (`applied` when none is in
    /// flight): covers everything a read of the backend may reflect, committed or about to be.
    visible: Mutex<VersionVector>,
    /// Bumped at every change of `visible` (readers cache what they derive from it).
    visible_gen: AtomicU64,
    stamps: Mutex<Stamps>,
    clock: Arc<dyn Clock>,
    /// The highest own sequence number sealed (committed or being committed).
    sealed_head: AtomicU64,
    /// Per origin, the highest sequence number truncated from the operation log by this
    /// process (the log starts after it).
    truncated: Mutex<std::collections::BTreeMap<RegionId, u64>>,
    /// The bootstrap under way, if any (mirror of the meta key).
    bootstrap: Mutex<Option<BootstrapProgress>>,
    /// Whether `bootstrap` is set (read on every write).
    bootstrapping: std::sync::atomic::AtomicBool,
    /// The durable claim floor: no watermark above it is claimed, and a restart starts the
    /// clock at or above it. It is the higher of `keys::META_CLAIM_FLOOR` and the last
    /// committed `keys::META_HLC` plus `claim_lead_ms` (every fsynced batch raises it for free).
    claim_floor: AtomicU64,
    /// Serializes the writes of `keys::META_CLAIM_FLOOR` (so the stored value only grows).
    claim_floor_write: Mutex<()>,
    /// `keys::META_ADMITTED` is written (`Store::mark_admitted`).
    admitted: std::sync::atomic::AtomicBool,
    /// The regions this region removed (mirror of `keys::META_REMOVED`).
    removed: Mutex<std::collections::BTreeMap<RegionId, RemovedRegion>>,
    /// Set once a peer told this region it was removed (mirror of `keys::META_REMOVED_BY`).
    removed_by: Mutex<Option<RemovedBy>>,
    /// Whether `removed_by` is set (read on every local write).
    is_removed: std::sync::atomic::AtomicBool,
    /// How far ahead of a claim the floor is set: half of `[cluster] max_clock_offset_ms`, at
    /// most 250 ms (a restarted region stamps at most that far ahead of its last claim).
    claim_lead_ms: u64,
}

impl Shared {
    fn stamps(&self) -> std::sync::MutexGuard<'_, Stamps> {
        // Nothing holding this lock can leave it inconsistent: recover from a poisoned lock.
        self.stamps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A region's durable store. Cheap to share behind an `Arc`; all writes go through one writer
/// thread that batches concurrent writes into one fsynced commit.
pub struct Store {
    shared: Arc<Shared>,
    tx: RwLock<Option<crossbeam_channel::Sender<Request>>>,
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
        let claim_lead_ms = claim_lead_ms(opts.max_clock_offset_ms);
        let mut claim_floor = 0;
        if let Some(raw) = backend.get(Table::Meta, keys::META_HLC)? {
            let last = codec::decode::<Timestamp>(&raw)?;
            hlc.restore(last);
            claim_floor = last.wall_ms.saturating_add(claim_lead_ms);
        }
        // Every write from now on is stamped at or after the highest watermark ever claimed.
        if let Some(raw) = backend.get(Table::Meta, keys::META_CLAIM_FLOOR)? {
            claim_floor = claim_floor.max(codec::decode::<u64>(&raw)?);
        }
        hlc.restore(Timestamp::new(claim_floor, 0));
        let applied = read_applied(&*backend, &opts.region)?;
        let seq = applied.get(&opts.region);
        let admitted = backend.get(Table::Meta, keys::META_ADMITTED)?.is_some();
        let bootstrap = match backend.get(Table::Meta, keys::META_BOOTSTRAP)? {
            Some(raw) => Some(codec::decode::<BootstrapProgress>(&raw)?),
            None => None,
        };
        let removed = match backend.get(Table::Meta, keys::META_REMOVED)? {
            Some(raw) => codec::decode(&raw)?,
            None => Default::default(),
        };
        let removed_by = match backend.get(Table::Meta, keys::META_REMOVED_BY)? {
            Some(raw) => Some(codec::decode::<RemovedBy>(&raw)?),
            None => None,
        };

        let hlc_wall_ms = hlc.last().wall_ms;
        let shared = Arc::new(Shared {
            applied: Mutex::new(applied.clone()),
            visible: Mutex::new(applied.clone()),
            visible_gen: AtomicU64::new(0),
            stamps: Mutex::new(Stamps {
                hlc,
                building_from_ms: None,
                sealed_from_ms: Default::default(),
                head: seq,
            }),
            clock: clock.clone(),
            sealed_head: AtomicU64::new(seq),
            truncated: Mutex::new(Default::default()),
            bootstrapping: std::sync::atomic::AtomicBool::new(bootstrap.is_some()),
            bootstrap: Mutex::new(bootstrap),
            claim_floor: AtomicU64::new(claim_floor),
            claim_floor_write: Mutex::new(()),
            admitted: std::sync::atomic::AtomicBool::new(admitted),
            removed: Mutex::new(removed),
            is_removed: std::sync::atomic::AtomicBool::new(removed_by.is_some()),
            removed_by: Mutex::new(removed_by),
            claim_lead_ms,
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
            .store(hlc_wall_ms, Ordering::Relaxed);

        let (tx, rx) = crossbeam_channel::bounded(opts.queue_capacity.max(1));
        // One sealed batch at a time: the writer seals only when the committer is idle.
        let (to_commit, sealed) = crossbeam_channel::bounded(1);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let committer = Committer {
            shared: shared.clone(),
            durable: opts.durable,
            on_commit: opts.on_commit.clone(),
            on_change: opts.on_change.clone(),
            on_ops: opts.on_ops.clone(),
        };
        let committer = std::thread::Builder::new()
            .name(format!("atoll-commit-{}", opts.region))
            .spawn(move || committer.run(sealed, done_tx))
            .map_err(|e| AtollError::Storage(format!("cannot start the committer thread: {e}")))?;
        let writer = Writer {
            shared: shared.clone(),
            clock,
            seq,
            applied,
            max_batch: opts.group_commit_max_batch.max(1),
            on_ops: opts.on_ops.is_some(),
            gate: opts.gate.clone(),
            overlay: HashMap::new(),
            next_id: 0,
            in_flight: 0,
            to_commit,
            done,
            committer: Some(committer),
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
        if ks.policy == Policy::Strong {
            // Strong keyspaces are served by the strong group (consensus), never merged here.
            return Err(AtollError::WrongPolicy {
                keyspace: keyspace.to_string(),
                policy: ks.policy.to_string(),
                operation: "writes through the region's store (a strong keyspace is served by the strong group)".into(),
            });
        }
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
        self.enqueue(Request::Local(LocalWrite {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            intent,
            reply: Box::new(reply),
        }));
    }

    /// Queues replicated entries for merging; `reply` is called once they are committed.
    pub fn submit_remote(
        &self,
        entries: Vec<OpEntry>,
        reply: impl FnOnce(Result<RemoteOutcome>) + Send + 'static,
    ) {
        self.enqueue(Request::Remote {
            entries,
            source: None,
            reply: Box::new(reply),
        });
    }

    /// As [`Self::submit_remote`], for entries that came from peer `source`: refused
    /// (`ATOLL-REGION-REMOVED`, nothing applied) once this region has removed `source`
    /// ([`Self::remove_region`]), so that nothing that came from a removed region is applied
    /// after its removal took effect, whatever was still in flight.
    pub fn submit_remote_from(
        &self,
        source: RegionId,
        entries: Vec<OpEntry>,
        reply: impl FnOnce(Result<RemoteOutcome>) + Send + 'static,
    ) {
        self.enqueue(Request::Remote {
            entries,
            source: Some(source),
            reply: Box::new(reply),
        });
    }

    /// As [`Self::apply_remote`], for entries from `source` ([`Self::submit_remote_from`]).
    pub fn apply_remote_from(
        &self,
        source: RegionId,
        entries: Vec<OpEntry>,
    ) -> Result<RemoteOutcome> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_remote_from(source, entries, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| AtollError::ShuttingDown)?
    }

    /// Makes the removal of `region` from the cluster effective here, durably, after everything
    /// queued before it is committed (`docs/design/region-removal.md`): from then on no entry
    /// that came from `region` is applied ([`Self::submit_remote_from`]), and
    /// [`Self::replication_view`] lists it (heartbeats announce it). Returns how many of its
    /// writes this region holds. Idempotent. Blocks until done.
    pub fn remove_region(&self, region: &RegionId, at_ms: u64) -> Result<u64> {
        if *region == self.shared.region {
            return Err(AtollError::Config(format!(
                "region `{region}` cannot remove itself"
            )));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue(Request::Remove {
            region: region.clone(),
            at_ms,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        rx.recv().map_err(|_| AtollError::ShuttingDown)?
    }

    /// The regions this region removed from the cluster.
    pub fn removed_regions(&self) -> std::collections::BTreeMap<RegionId, RemovedRegion> {
        self.shared
            .removed
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Records, durably, that peer `by` said this region was removed from the cluster: from now
    /// on, across restarts, every local write is refused (`ATOLL-REGION-REMOVED`). The first
    /// record stays (later ones change nothing but the count of writes members hold).
    pub fn mark_removed(&self, by: &RegionId, at_ms: u64, held_by_members: u64) -> Result<()> {
        let mut slot = self
            .shared
            .removed_by
            .lock()
            .map_err(|_| AtollError::Storage("removed-by lock poisoned".into()))?;
        let record = match slot.as_ref() {
            Some(r) if r.held_by_members >= held_by_members => return Ok(()),
            Some(r) => RemovedBy {
                held_by_members,
                ..r.clone()
            },
            None => RemovedBy {
                by: by.clone(),
                at_ms,
                held_by_members,
            },
        };
        self.shared.backend.commit(
            vec![Mutation::Put(
                Table::Meta,
                keys::META_REMOVED_BY.to_vec(),
                codec::encode(&record)?,
            )],
            true,
        )?;
        *slot = Some(record);
        self.shared.is_removed.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether (and by whom) this region was told it was removed from the cluster.
    pub fn removed_by(&self) -> Option<RemovedBy> {
        self.shared.removed_by.lock().ok().and_then(|r| r.clone())
    }

    /// Applies replicated entries and waits (for tools and tests).
    pub fn apply_remote(&self, entries: Vec<OpEntry>) -> Result<RemoteOutcome> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_remote(entries, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| AtollError::ShuttingDown)?
    }

    /// Collects lww tombstones older than `horizon_ms` (physical ms; `None`: collect nothing)
    /// and prunes the conflict ledger to its retention.
    pub fn submit_maintenance(
        &self,
        horizon_ms: Option<u64>,
        reply: impl FnOnce(Result<MaintenanceOutcome>) + Send + 'static,
    ) {
        self.enqueue(Request::Maintenance {
            horizon_ms,
            reply: Box::new(reply),
        });
    }

    /// Runs maintenance and waits (for tools and tests).
    pub fn maintain(&self, horizon_ms: Option<u64>) -> Result<MaintenanceOutcome> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_maintenance(horizon_ms, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| AtollError::ShuttingDown)?
    }

    fn enqueue(&self, req: Request) {
        let refuse = |req: Request, e: AtollError| match req {
            Request::Local(w) => (w.reply)(Err(e)),
            Request::Remote { reply, .. } => reply(Err(e)),
            Request::Remove { reply, .. } => reply(Err(e)),
            Request::Maintenance { reply, .. } => reply(Err(e)),
            Request::Bootstrap { reply, .. } => reply(Err(e)),
        };
        let guard = match self.tx.read() {
            Ok(g) => g,
            Err(_) => return refuse(req, AtollError::ShuttingDown),
        };
        let Some(tx) = guard.as_ref() else {
            return refuse(req, AtollError::ShuttingDown);
        };
        match tx.try_send(req) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(req)) => refuse(
                req,
                AtollError::Overloaded("the write queue is full".into()),
            ),
            Err(crossbeam_channel::TrySendError::Disconnected(req)) => {
                refuse(req, AtollError::ShuttingDown)
            }
        }
    }

    /// This region's write watermark (see [`Watermark`]). Cheap: it never waits for the writer
    /// thread beyond a short lock.
    pub fn watermark(&self) -> Watermark {
        let mut st = self.shared.stamps();
        // The oldest uncommitted batch's first stamp (batches are stamped in order).
        let oldest = st
            .sealed_from_ms
            .iter()
            .flatten()
            .next()
            .copied()
            .or(st.building_from_ms);
        let before_ms = match oldest {
            Some(t) => t,
            // Nothing is being committed: tick the clock, so every later write is stamped after
            // what this watermark claims.
            None => st.hlc.now(self.shared.clock.physical_ms()).wall_ms,
        };
        let head = st.head;
        drop(st);
        Watermark {
            head,
            before_ms: self.durable_claim(before_ms),
        }
    }

    /// Whether this data directory was admitted to the cluster ([`Self::admit`]). Only a
    /// replica added to a running cluster waits for it (`docs/design/adding-regions.md`).
    pub fn is_admitted(&self) -> bool {
        self.shared.admitted.load(Ordering::Acquire)
    }

    /// Marks this region admitted by every region of its config, with its clock raised to at
    /// least `floor_ms` first, durably: every write from now on, across restarts, is stamped at
    /// or above it (the largest clock reading of the peers' heartbeats that admitted it,
    /// `docs/design/adding-regions.md`). Idempotent.
    pub fn mark_admitted(&self, floor_ms: u64) -> Result<()> {
        self.raise_floor(
            floor_ms,
            Some(Mutation::Put(
                Table::Meta,
                keys::META_ADMITTED.to_vec(),
                codec::encode(&floor_ms)?,
            )),
        )
    }

    /// Raises this region's clock to at least `floor_ms`, durably (the claim floor): every write
    /// from now on, across restarts, is stamped at or above it. A bootstrap after a lost data
    /// directory calls it with the latest claim its peers hold about its writes
    /// (`ReplDriver::bootstrap_clock_floor`).
    pub fn raise_clock_floor(&self, floor_ms: u64) -> Result<()> {
        if floor_ms <= self.shared.claim_floor.load(Ordering::Acquire) {
            return Ok(());
        }
        self.raise_floor(floor_ms, None)
    }

    fn raise_floor(&self, floor_ms: u64, also: Option<Mutation>) -> Result<()> {
        let shared = &self.shared;
        let _writing = shared
            .claim_floor_write
            .lock()
            .map_err(|_| AtollError::Storage("claim floor lock poisoned".into()))?;
        let floor = shared.claim_floor.load(Ordering::Acquire).max(floor_ms);
        let mut mutations = vec![Mutation::Put(
            Table::Meta,
            keys::META_CLAIM_FLOOR.to_vec(),
            codec::encode(&floor)?,
        )];
        let admitted = also.is_some();
        mutations.extend(also);
        shared.backend.commit(mutations, true)?;
        shared.claim_floor.fetch_max(floor, Ordering::AcqRel);
        shared.stamps().hlc.restore(Timestamp::new(floor, 0));
        if admitted {
            shared.admitted.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// `t` once the claim floor is durably at least `t`, so that a restart starts the clock
    /// above it: a watermark is a promise that no later write is stamped below it, and an idle
    /// tick of the clock is otherwise persisted only by the next commit (a region that crashed
    /// after claiming a tick, and came back with its clock stepped back, stamped writes below
    /// its claim: sweep seed 948009205).
    ///
    /// Every fsynced batch raises the floor to its clock plus the lead, so while writes (local
    /// or replicated) commit, a claim is already covered and this writes nothing. Only a claim
    /// more than the lead past the last commit (an idle region) writes
    /// `keys::META_CLAIM_FLOOR`, the lead ahead: at most one small fsync per lead of idle
    /// progress. If it cannot be written, the claim stays at the floor.
    fn durable_claim(&self, t: u64) -> u64 {
        let shared = &self.shared;
        if t <= shared.claim_floor.load(Ordering::Acquire) {
            return t;
        }
        let Ok(_writing) = shared.claim_floor_write.lock() else {
            return shared.claim_floor.load(Ordering::Acquire).min(t);
        };
        // Another caller (or a commit) may have raised it while this one waited.
        if t <= shared.claim_floor.load(Ordering::Acquire) {
            return t;
        }
        let ahead = t.saturating_add(shared.claim_lead_ms);
        let put = codec::encode(&ahead).map(|v| {
            vec![Mutation::Put(
                Table::Meta,
                keys::META_CLAIM_FLOOR.to_vec(),
                v,
            )]
        });
        match put.and_then(|m| shared.backend.commit(m, true)) {
            Ok(()) => {
                shared.claim_floor.fetch_max(ahead, Ordering::AcqRel);
                shared
                    .stats
                    .claim_floor_writes_total
                    .fetch_add(1, Ordering::Relaxed);
                t
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot persist the claim floor; the claim stays where it was");
                shared.claim_floor.load(Ordering::Acquire).min(t)
            }
        }
    }

    /// The committed applied vector: per origin, the highest sequence number merged here
    /// (this region's own head included).
    pub fn applied(&self) -> VersionVector {
        self.shared
            .applied
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Whether the committed applied vector dominates `v` (a session read's test, without a
    /// copy).
    pub fn applied_dominates(&self, v: &VersionVector) -> bool {
        self.shared.applied.lock().is_ok_and(|a| a.dominates(v))
    }

    /// An applied vector that covers every write a read of the store made before this call may
    /// have reflected: that of the newest batch handed to the committer, which may not be
    /// committed yet (a session read's answer names it, `docs/design/session-consistency.md`).
    /// A number that changes whenever [`Self::visible_applied`] does: a reader that derived
    /// something from the vector at generation `g` may reuse it while this is still `g`. Read it
    /// BEFORE the vector (the vector may then be newer than the generation says, never older).
    pub fn visible_generation(&self) -> u64 {
        self.shared.visible_gen.load(Ordering::Acquire)
    }

    pub fn visible_applied(&self) -> VersionVector {
        self.shared
            .visible
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
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

    /// This region's physical clock (ms since the epoch): what judges expiry
    /// (`docs/design/expiring-keys.md`; never the HLC).
    pub fn now_ms(&self) -> u64 {
        self.shared.clock.physical_ms()
    }

    /// Reads a key's state (`None` if never written). Deleted keys return their tombstone state,
    /// expired lww values their expired state: a read decides with [`Store::now_ms`] (for example
    /// `LwwRegister::live_value`) what a client sees.
    pub fn get(&self, keyspace: &str, key: &[u8]) -> Result<Option<KeyState>> {
        self.keyspace(keyspace)?;
        validate_key(key)?;
        read_state(&*self.shared.backend, &keys::data_key(keyspace, key))
    }

    /// The most recent conflict-ledger entries of `keyspace`, newest first, at most `limit`.
    pub fn conflicts(&self, keyspace: &str, limit: usize) -> Result<Vec<ConflictRecord>> {
        self.ledger(Table::Conflicts, keyspace, limit)
    }

    /// The newest `limit` records of a per-keyspace ledger table (keys `keyspace/time/counter`).
    fn ledger<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        keyspace: &str,
        limit: usize,
    ) -> Result<Vec<T>> {
        self.keyspace(keyspace)?;
        let prefix = keys::prefix(keyspace);
        let rows = self
            .shared
            .backend
            .range(table, &prefix, &prefix_end(&prefix), usize::MAX)?;
        rows.iter()
            .rev()
            .take(limit)
            .map(|(_, v)| codec::decode(v))
            .collect()
    }

    /// What the replication driver needs to know of this store now
    /// (`atoll_core::driver::LocalView`): the applied vector, the write watermark and the HLC.
    pub fn replication_view(&self) -> atoll_core::driver::LocalView {
        let wm = self.watermark();
        atoll_core::driver::LocalView {
            applied: self.applied(),
            watermark_head: wm.head,
            watermark_before_ms: wm.before_ms,
            hlc_wall_ms: self.shared.stats.hlc_wall_ms.load(Ordering::Relaxed),
            sealed_head: self.shared.sealed_head.load(Ordering::Acquire),
            removed: self
                .shared
                .removed
                .lock()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// The most recent fencing-ledger entries of `keyspace` (late writes of a superseded epoch
    /// this region refused), newest first, at most `limit`.
    pub fn late_writes(&self, keyspace: &str, limit: usize) -> Result<Vec<LateWriteRecord>> {
        self.ledger(Table::LateWrites, keyspace, limit)
    }

    /// Operation-log entries of `origin` with `seq >= from`, in order, at most `limit`.
    pub fn oplog(&self, origin: &RegionId, from: u64, limit: usize) -> Result<Vec<OpEntry>> {
        let start = keys::oplog_key(origin, from);
        let prefix = keys::prefix(origin.as_str());
        self.shared
            .backend
            .range(Table::Oplog, &start, &prefix_end(&prefix), limit)?
            .iter()
            .map(|(_, v)| codec::decode_entry(v))
            .collect()
    }

    /// The sequence number of the first operation-log entry of `origin` this region holds
    /// (`None`: none): how far back its log reaches.
    pub fn oplog_first(&self, origin: &RegionId) -> Result<Option<u64>> {
        let prefix = keys::prefix(origin.as_str());
        let first = self
            .shared
            .backend
            .range(Table::Oplog, &prefix, &prefix_end(&prefix), 1)?;
        Ok(first.first().and_then(|(k, _)| keys::oplog_seq(origin, k)))
    }

    /// The keys of `keyspace` starting with `prefix` and their states, in key order, after
    /// `after` (exclusive; `None`: from the start), at most `limit`.
    pub fn scan(
        &self,
        keyspace: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, KeyState)>> {
        self.keyspace(keyspace)?;
        let lower = keys::data_key(keyspace, prefix);
        let end = prefix_end(&lower);
        let start = match after {
            Some(a) => {
                let mut k = keys::data_key(keyspace, a);
                k.push(0);
                k.max(lower.clone())
            }
            None => lower.clone(),
        };
        let head = keyspace.len() + 1;
        self.shared
            .backend
            .range(Table::Data, &start, &end, limit)?
            .into_iter()
            .map(|(k, v)| Ok((k[head..].to_vec(), codec::decode_state(&v)?)))
            .collect()
    }

    /// Removes operation-log entries every region has applied (`stable`, per origin: from the
    /// replication core's `stable_points`) that were stamped more than `retention_ms` ago, at
    /// most `max` of them; returns how many. The newest entry of every origin stays (it names
    /// where the log is, and this region's own head is read back from it at start). Runs on the
    /// caller's thread: it deletes only committed entries no reader needs, so the writer goes on.
    pub fn truncate_oplog(
        &self,
        stable: &std::collections::BTreeMap<RegionId, u64>,
        retention_ms: u64,
        max: usize,
    ) -> Result<usize> {
        let applied = self.applied();
        let before_ms = self.shared.clock.physical_ms().saturating_sub(retention_ms);
        let mut removed = 0;
        for (origin, &point) in stable {
            if removed >= max {
                break;
            }
            let cut = point.min(applied.get(origin).saturating_sub(1));
            let from = self
                .shared
                .truncated
                .lock()
                .map(|t| t.get(origin).copied().unwrap_or(0))
                .unwrap_or(0);
            if cut <= from {
                continue;
            }
            let rows = self.shared.backend.range(
                Table::Oplog,
                &keys::oplog_key(origin, from + 1),
                &keys::oplog_key(origin, cut + 1),
                max - removed,
            )?;
            let mut mutations = Vec::with_capacity(rows.len());
            let mut through = from;
            for (k, v) in rows {
                let entry = codec::decode_entry(&v)?;
                if entry.ts.wall_ms > before_ms {
                    break;
                }
                through = entry.seq;
                mutations.push(Mutation::Delete(Table::Oplog, k));
            }
            if mutations.is_empty() {
                continue;
            }
            removed += mutations.len();
            // Not fsynced: a truncation lost to a crash only keeps entries a while longer.
            self.shared.backend.commit(mutations, false)?;
            if let Ok(mut t) = self.shared.truncated.lock() {
                t.insert(origin.clone(), through);
            }
        }
        self.shared
            .stats
            .oplog_truncated_total
            .fetch_add(removed as u64, Ordering::Relaxed);
        Ok(removed)
    }

    /// Per origin, the highest sequence number this process truncated from the log.
    pub fn truncated_through(&self) -> std::collections::BTreeMap<RegionId, u64> {
        self.shared
            .truncated
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// On-disk bytes per table (and the engine's journal), where the backend can tell.
    pub fn disk_usage(&self) -> Vec<(&'static str, u64)> {
        self.shared.backend.disk_usage()
    }

    /// A chunk of this region's state for a peer's bootstrap: the committed applied vector,
    /// then up to `max_rows` data rows (about `max_bytes` at most) after `after`.
    pub fn snapshot_chunk(
        &self,
        after: Option<&[u8]>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<SnapshotChunk> {
        // Read BEFORE the rows: the committer updates it after the backend, so every row read
        // later reflects at least this vector.
        let applied = self.applied();
        let start = match after {
            Some(a) => {
                let mut k = a.to_vec();
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let end = vec![0xff; 256];
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        for (k, v) in self
            .shared
            .backend
            .range(Table::Data, &start, &end, max_rows.max(1))?
        {
            bytes += k.len() + v.len();
            rows.push((k, v));
            if bytes >= max_bytes {
                break;
            }
        }
        let next = if rows.len() >= max_rows.max(1) || bytes >= max_bytes {
            rows.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(SnapshotChunk::new(applied, rows, next))
    }

    /// The bootstrap under way (`None`: none).
    pub fn bootstrap_progress(&self) -> Option<BootstrapProgress> {
        self.shared.bootstrap.lock().ok().and_then(|b| b.clone())
    }

    fn bootstrap_step(&self, step: BootstrapStep) -> Result<Option<VersionVector>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue(Request::Bootstrap {
            step,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        rx.recv().map_err(|_| AtollError::ShuttingDown)?
    }

    /// Starts a bootstrap: clears every key's state (the log and the ledgers stay) and marks
    /// the bootstrap as under way, durably. A bootstrap already under way is resumed as it is,
    /// unless `restart`.
    pub fn bootstrap_begin(&self, restart: bool) -> Result<()> {
        self.bootstrap_step(BootstrapStep::Begin { restart })
            .map(|_| ())
    }

    /// Merges one chunk of a donor's states (`applied`: the donor's vector read before them)
    /// and records where the next starts, durably.
    pub fn bootstrap_load(
        &self,
        applied: VersionVector,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        next: Option<Vec<u8>>,
    ) -> Result<()> {
        self.bootstrap_step(BootstrapStep::Load {
            applied,
            rows,
            next,
        })
        .map(|_| ())
    }

    /// Ends a bootstrap whose chunks are all loaded: the applied vector becomes the snapshot's,
    /// this region's own head at least `own_floor` (what its peers hold of its writes) and its
    /// own logged writes past the snapshot are merged again. Refused with
    /// [`AtollError::BootstrapBehind`] if the snapshot does not cover what this region had
    /// applied before (the bootstrap must then begin again, from a donor that is further on).
    pub fn bootstrap_finish(&self, own_floor: u64) -> Result<VersionVector> {
        self.bootstrap_step(BootstrapStep::Finish { own_floor })?
            .ok_or_else(|| AtollError::Storage("bootstrap finish returned nothing".into()))
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

/// The applied vector a store on `backend` opens with: the replication cursors and this region's
/// own operation-log head (for tools and the simulation, which look at a region that is down).
pub fn read_applied(backend: &dyn Backend, region: &RegionId) -> Result<VersionVector> {
    let prefix = keys::prefix(region.as_str());
    let seq = match backend.last_in(Table::Oplog, &prefix, &prefix_end(&prefix))? {
        Some((k, _)) => keys::oplog_seq(region, &k)
            .ok_or_else(|| AtollError::Corrupt("operation-log key of unexpected shape".into()))?,
        None => 0,
    };

    let mut applied: VersionVector = backend
        .range(
            Table::Meta,
            keys::META_APPLIED_PREFIX,
            &prefix_end(keys::META_APPLIED_PREFIX),
            usize::MAX,
        )?
        .iter()
        .map(|(k, v)| {
            let name = std::str::from_utf8(&k[keys::META_APPLIED_PREFIX.len()..])
                .map_err(|_| AtollError::Corrupt("replication cursor key is not UTF-8".into()))?;
            Ok((RegionId::new(name)?, codec::decode::<u64>(v)?))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .collect();
    applied.raise(region, seq);
    Ok(applied)
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

/// From when a key's state may be collected, once the tombstone horizon has passed it: an lww
/// tombstone from its write; an expiring lww value from its expiry, or from its write if it was
/// written already expired (`Ttl::At` in the past): every region must hold the write itself
/// before any region drops it; a rate-limit key from when its newest window stops counting
/// (`RateWindows::idle_from`: windows are chosen by HLC time, so past the horizon no region can
/// add to them); an mvr key from the earliest expiry of its siblings (or their write), when
/// those siblings are dropped and the key's context kept (`MvRegister::drop_siblings`).
/// `None`: never (values without expiry, mvr keys without expiring siblings, counters, sets).
fn collectable_from(state: &KeyState) -> Option<Timestamp> {
    match state {
        KeyState::Lww(r) => match (&r.value, r.expires_ms) {
            (None, _) => Some(r.ts),
            (Some(_), Some(e)) => Some(Timestamp::new(e, 0).max(r.ts)),
            (Some(_), None) => None,
        },
        KeyState::Mvr(r) => r.next_expiry().map(|(e, ts)| Timestamp::new(e, 0).max(ts)),
        KeyState::RateLimit(w) => w.idle_from().map(|t| Timestamp::new(t, 0)),
        _ => None,
    }
}

fn read_state(backend: &dyn Backend, data_key: &[u8]) -> Result<Option<KeyState>> {
    match backend.get(Table::Data, data_key)? {
        Some(raw) => Ok(Some(codec::decode_state(&raw)?)),
        None => Ok(None),
    }
}

/// The single writer: owns the HLC, the sequence counter and the applied vector, so all three
/// advance in commit order.
/// The writer thread: merges requests into batches (reading each key's state from the batch
/// being built, then the sealed batches not yet committed, then the backend), encodes them and
/// hands them to the committer thread. While the committer fsyncs one batch the writer builds
/// the next, so merging and encoding never wait for the disk (`docs/design/pipelined-commit.md`).
struct Writer {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    /// Sequence number and applied vector as of every batch sealed so far (committed or not).
    seq: u64,
    applied: VersionVector,
    max_batch: usize,
    on_ops: bool,
    gate: Option<Arc<dyn WriteGate>>,
    /// Key states staged by sealed batches the committer has not reported yet, with the id of
    /// the batch that staged them (the newest wins): the backend may not hold them yet.
    overlay: HashMap<Vec<u8>, (u64, KeyState)>,
    next_id: u64,
    /// Sealed batches the committer has not reported on (0 or 1: a batch is sealed only when
    /// the committer is idle).
    in_flight: usize,
    to_commit: crossbeam_channel::Sender<Sealed>,
    done: crossbeam_channel::Receiver<Done>,
    committer: Option<JoinHandle<()>>,
}

/// The uncommitted part of a batch: key states written so far (later writes to the same key in
/// the same batch build on earlier ones) and the mutations to commit.
#[derive(Default)]
struct Batch {
    /// The key states the batch wrote (each is encoded into the commit).
    states: HashMap<Vec<u8>, KeyState>,
    mutations: Vec<Mutation>,
    /// Origins whose applied cursor moved (a handful: a list, not a hashed set, since every
    /// replicated op marks its origin).
    applied_dirty: Vec<RegionId>,
    /// Local writes in the batch (acknowledged to clients after commit: then it is fsynced).
    local_writes: usize,
    /// The operation-log entries of the batch, in order (kept only for an `on_ops` observer).
    ops: Vec<OpEntry>,
}

impl Batch {
    fn mark_applied(&mut self, origin: &RegionId) {
        if !self.applied_dirty.contains(origin) {
            self.applied_dirty.push(origin.clone());
        }
    }

    /// Takes in what `other` staged after this batch (its writes win).
    fn absorb(&mut self, other: Batch) {
        self.states.extend(other.states);
        self.mutations.extend(other.mutations);
        for origin in other.applied_dirty {
            self.mark_applied(&origin);
        }
        self.local_writes += other.local_writes;
        self.ops.extend(other.ops);
    }
}

type Pending = (
    Vec<(Reply, WriteOutcome)>,
    Vec<(RemoteReply, RemoteOutcome)>,
);

/// The batch the writer is building, with the replies it owes once it is committed.
struct Building {
    batch: Batch,
    pending: Pending,
    /// Requests taken into it (the cap counts refused ones too: they cost work).
    requests: usize,
    seq_before: u64,
    applied_before: VersionVector,
}

/// A merged and encoded batch, handed from the writer to the committer.
struct Sealed {
    id: u64,
    mutations: Vec<Mutation>,
    local_writes: usize,
    /// The sequence number and applied vector once it is committed, and before it.
    seq: u64,
    applied: VersionVector,
    seq_before: u64,
    applied_before: VersionVector,
    hlc_wall_ms: u64,
    pending: Pending,
    ops: Vec<OpEntry>,
}

/// The committer's word on a sealed batch.
enum Done {
    /// In the backend, fsynced, acknowledged.
    Committed(u64),
    /// Its commit failed and nothing in it was acknowledged: the writer goes back to the state
    /// before it and refuses the batch it is building (built on this one).
    Failed {
        seq_before: u64,
        applied_before: VersionVector,
        error: AtollError,
    },
}

impl Writer {
    fn building(&self) -> Building {
        Building {
            batch: Batch::default(),
            pending: (Vec::new(), Vec::new()),
            requests: 0,
            seq_before: self.seq,
            applied_before: self.applied.clone(),
        }
    }

    fn run(mut self, rx: crossbeam_channel::Receiver<Request>) {
        let mut b = self.building();
        // The receiver fails only once every sender is gone and the queue is empty: shutdown.
        'serve: loop {
            if b.requests == 0 {
                // Nothing taken: wait for a request only. The committer's word is read when it
                // matters (before a request is built, and before sealing), so an idle writer is
                // not woken for it.
                match rx.recv() {
                    Ok(r) => self.take_after_word(r, &mut b),
                    Err(_) => break 'serve,
                }
                continue;
            }
            while let Ok(d) = self.done.try_recv() {
                self.on_done(d, &mut b);
            }
            if self.in_flight == 0 {
                if b.requests > 0 {
                    while b.requests < self.max_batch {
                        match rx.try_recv() {
                            Ok(r) => self.take(r, &mut b),
                            Err(_) => break,
                        }
                    }
                    b = self.seal(b);
                }
                continue;
            }
            // The committer is busy: build the next batch until it is done.
            if b.requests >= self.max_batch {
                if !self.wait_done(&mut b) {
                    break 'serve;
                }
                continue;
            }
            crossbeam_channel::select! {
                recv(rx) -> r => match r {
                    Ok(r) => self.take_after_word(r, &mut b),
                    Err(_) => break 'serve,
                },
                recv(self.done) -> d => match d {
                    Ok(d) => self.on_done(d, &mut b),
                    Err(_) => break 'serve,
                },
            }
        }
        // Shutdown: commit what was taken, then let the committer finish and exit.
        self.flush(&mut b);
        let Writer {
            to_commit,
            committer,
            ..
        } = self;
        drop(to_commit);
        if let Some(h) = committer {
            let _ = h.join();
        }
    }

    /// Waits for the committer's word on the batch in flight. `false`: the committer is gone.
    fn wait_done(&mut self, b: &mut Building) -> bool {
        match self.done.recv() {
            Ok(d) => {
                self.on_done(d, b);
                true
            }
            Err(_) => {
                self.in_flight = 0;
                false
            }
        }
    }

    /// Commits everything taken so far and waits until it is committed (or refused).
    fn flush(&mut self, b: &mut Building) {
        while self.in_flight > 0 {
            if !self.wait_done(b) {
                return;
            }
        }
        let taken = std::mem::replace(b, self.building());
        *b = self.seal(taken);
        while self.in_flight > 0 {
            if !self.wait_done(b) {
                return;
            }
        }
    }

    fn on_done(&mut self, d: Done, b: &mut Building) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match d {
            Done::Committed(id) => self.overlay.retain(|_, (bid, _)| *bid > id),
            Done::Failed {
                seq_before,
                applied_before,
                error,
            } => {
                // The batch being built was built on the failed one: go back to before both.
                self.seq = seq_before;
                self.applied = applied_before;
                if let Ok(mut v) = self.shared.visible.lock() {
                    v.clone_from(&self.applied);
                    self.shared.visible_gen.fetch_add(1, Ordering::Release);
                }
                self.overlay.clear();
                let doomed = std::mem::replace(b, self.building());
                self.shared.stamps().building_from_ms = None;
                refuse_pending(&self.shared.stats, doomed.pending, &error);
            }
        }
    }

    /// Takes a request after reading the committer's word, if it has come: a request must not
    /// be built on a batch whose commit has already failed (the committer tells the writer
    /// before it tells any client, so a client's retry after its error always finds it here).
    fn take_after_word(&mut self, req: Request, b: &mut Building) {
        while let Ok(d) = self.done.try_recv() {
            self.on_done(d, b);
        }
        self.take(req, b);
    }

    fn take(&mut self, req: Request, b: &mut Building) {
        b.requests += 1;
        match req {
            Request::Local(w) => {
                let stamped_before = self.shared.stamps().building_from_ms;
                match self.apply_local(&w, &mut b.batch) {
                    Ok(outcome) => {
                        b.batch.local_writes += 1;
                        b.pending.0.push((w.reply, outcome));
                    }
                    Err(e) => {
                        // A write refused after it was stamped (a rate-limit denial, an EXPIRE of
                        // an absent key, the sibling limit) is no write: the watermark must not
                        // wait for it, and must not depend on when the writer next seals (the
                        // simulation replays a seed exactly only if it does not).
                        self.shared.stamps().building_from_ms = stamped_before;
                        self.shared
                            .stats
                            .write_errors_total
                            .fetch_add(1, Ordering::Relaxed);
                        (w.reply)(Err(e));
                    }
                }
            }
            Request::Remote {
                entries,
                source,
                reply,
            } => {
                // Staged on its own and kept only if all of it applies: an entry that fails
                // part-way must leave neither its predecessors' changes nor an advanced cursor
                // behind (the cursor would skip the re-sent entries for good).
                if let Err(e) = self.check_not_bootstrapping() {
                    reply(Err(e));
                    return;
                }
                if let Some(source) = source.filter(|s| {
                    self.shared
                        .removed
                        .lock()
                        .map(|m| m.contains_key(s))
                        .unwrap_or(true)
                }) {
                    reply(Err(AtollError::RegionRemoved(format!(
                        "entries from `{source}`, which this region removed from the cluster"
                    ))));
                    return;
                }
                let applied_before = self.applied.clone();
                let mut staged = Batch::default();
                match self.apply_remote(entries, &b.batch, &mut staged) {
                    Ok(outcome) => {
                        b.batch.absorb(staged);
                        b.pending.1.push((reply, outcome));
                    }
                    Err(e) => {
                        self.applied = applied_before;
                        reply(Err(e));
                    }
                }
            }
            Request::Maintenance { horizon_ms, reply } => {
                // Maintenance reads the backend directly and commits on its own (so a failure
                // there never fails writes): everything before it is committed first.
                self.flush(b);
                reply(self.maintain(horizon_ms));
            }
            Request::Bootstrap { step, reply } => {
                self.flush(b);
                reply(self.bootstrap(step));
            }
            Request::Remove {
                region,
                at_ms,
                reply,
            } => {
                // After everything before it is committed: what came from the region before
                // its removal is in, nothing that comes from it after is.
                self.flush(b);
                reply(self.remove(region, at_ms));
            }
        }
    }

    fn remove(&mut self, region: RegionId, at_ms: u64) -> Result<u64> {
        let mut map = self
            .shared
            .removed
            .lock()
            .map_err(|_| AtollError::Storage("removed-regions lock poisoned".into()))?;
        if let Some(r) = map.get(&region) {
            return Ok(r.applied_then);
        }
        let applied_then = self.applied.get(&region);
        let mut next = map.clone();
        next.insert(
            region,
            RemovedRegion {
                at_ms,
                applied_then,
            },
        );
        self.shared.backend.commit(
            vec![Mutation::Put(
                Table::Meta,
                keys::META_REMOVED.to_vec(),
                codec::encode(&next)?,
            )],
            true,
        )?;
        *map = next;
        Ok(applied_then)
    }

    /// Encodes the batch's key states, cursors and clock and hands it to the committer (which
    /// must be idle); returns a fresh batch to build. A batch that acknowledges nothing is
    /// dropped instead.
    fn seal(&mut self, b: Building) -> Building {
        let Building {
            batch,
            pending,
            seq_before,
            applied_before,
            ..
        } = b;
        if pending.0.is_empty() && pending.1.is_empty() {
            // Writes refused after stamping leave nothing to wait for.
            self.shared.stamps().building_from_ms = None;
            return self.building();
        }
        let mut batch = batch;
        let (mutations, hlc_wall_ms) = match self.encode(&mut batch) {
            Ok(encoded) => encoded,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a batch; nothing in it was acknowledged");
                self.seq = seq_before;
                self.applied = applied_before;
                self.shared.stamps().building_from_ms = None;
                refuse_pending(&self.shared.stats, pending, &e);
                return self.building();
            }
        };
        self.applied.raise(&self.shared.region, self.seq);
        self.shared.sealed_head.store(self.seq, Ordering::Release);
        let id = self.next_id;
        self.next_id += 1;
        let sealed = Sealed {
            id,
            mutations,
            local_writes: batch.local_writes,
            seq: self.seq,
            applied: self.applied.clone(),
            seq_before,
            applied_before,
            hlc_wall_ms,
            pending,
            ops: if self.on_ops { batch.ops } else { Vec::new() },
        };
        for (k, s) in batch.states {
            self.overlay.insert(k, (id, s));
        }
        // Before the committer can make the batch visible.
        if let Ok(mut v) = self.shared.visible.lock() {
            v.clone_from(&self.applied);
            self.shared.visible_gen.fetch_add(1, Ordering::Release);
        }
        match self.to_commit.send(sealed) {
            Ok(()) => self.in_flight += 1,
            Err(e) => {
                // The committer is gone (it never exits first): refuse, acknowledge nothing.
                let err = AtollError::Storage("the committer thread stopped".into());
                refuse_pending(&self.shared.stats, e.into_inner().pending, &err);
            }
        }
        self.building()
    }

    /// The batch's mutations with its key states, cursors and clock encoded, and the clock's
    /// wall time; on success the batch's stamps move to the sealed queue.
    fn encode(&self, batch: &mut Batch) -> Result<(Vec<Mutation>, u64)> {
        let mut mutations = std::mem::take(&mut batch.mutations);
        mutations.reserve(batch.states.len() + batch.applied_dirty.len() + 1);
        for (k, state) in &batch.states {
            mutations.push(Mutation::Put(Table::Data, k.clone(), codec::encode(state)?));
        }
        for origin in &batch.applied_dirty {
            mutations.push(Mutation::Put(
                Table::Meta,
                keys::applied_key(origin),
                codec::encode(&self.applied.get(origin))?,
            ));
        }
        let mut st = self.shared.stamps();
        let hlc_last = st.hlc.last();
        mutations.push(Mutation::Put(
            Table::Meta,
            keys::META_HLC.to_vec(),
            codec::encode(&hlc_last)?,
        ));
        let from = st.building_from_ms.take();
        st.sealed_from_ms.push_back(from);
        Ok((mutations, hlc_last.wall_ms))
    }

    fn current(&self, batch: &Batch, dk: &[u8]) -> Result<Option<KeyState>> {
        if let Some(s) = batch.states.get(dk) {
            return Ok(Some(s.clone()));
        }
        if let Some((_, s)) = self.overlay.get(dk) {
            return Ok(Some(s.clone()));
        }
        read_state(&*self.shared.backend, dk)
    }
}

/// Refuses every reply of a batch that was not committed.
fn refuse_pending(stats: &StoreStats, pending: Pending, e: &AtollError) {
    stats
        .write_errors_total
        .fetch_add(pending.0.len() as u64, Ordering::Relaxed);
    for (reply, _) in pending.0 {
        reply(Err(e.clone()));
    }
    for (reply, _) in pending.1 {
        reply(Err(e.clone()));
    }
}

/// The committer thread: commits sealed batches one at a time, fsynced, and only then settles
/// the watermark, publishes the applied vector and acknowledges.
struct Committer {
    shared: Arc<Shared>,
    durable: bool,
    on_commit: Option<CommitObserver>,
    on_change: Option<Arc<dyn Fn() + Send + Sync>>,
    on_ops: Option<OpsObserver>,
}

impl Committer {
    fn run(self, rx: crossbeam_channel::Receiver<Sealed>, done: crossbeam_channel::Sender<Done>) {
        while let Ok(b) = rx.recv() {
            self.commit(b, &done);
        }
    }

    /// Commits one batch, fsynced (replicated entries too, although they could be fetched
    /// again: this region tells its peers what it has applied, the stability claims behind the
    /// tombstone horizon, and after a power cut it must still hold what it claimed).
    ///
    /// The writer hears of a failure before any client does: a client that learns its write
    /// failed and writes again must find the writer already back at the state before the
    /// failed batch, not building on it.
    fn commit(&self, b: Sealed, done: &crossbeam_channel::Sender<Done>) {
        let Sealed {
            id,
            mutations,
            local_writes,
            seq,
            applied,
            seq_before,
            applied_before,
            hlc_wall_ms,
            pending,
            ops,
            ..
        } = b;
        let started = Instant::now();
        let committed = self.shared.backend.commit(mutations, self.durable);
        let stats = &self.shared.stats;
        // Settle the watermark before anyone hears the batch was acknowledged.
        {
            let mut st = self.shared.stamps();
            st.sealed_from_ms.pop_front();
            if committed.is_ok() {
                st.head = seq;
            }
        }
        // The writer is gone only at shutdown, after its last batch: a failed send is harmless.
        if let Err(e) = committed {
            tracing::error!(error = %e, "commit failed; nothing in the batch was acknowledged");
            stats.commit_failures_total.fetch_add(1, Ordering::Relaxed);
            let _ = done.send(Done::Failed {
                seq_before,
                applied_before,
                error: e.clone(),
            });
            refuse_pending(stats, pending, &e);
            return;
        }
        let elapsed = started.elapsed();
        stats.commits_total.fetch_add(1, Ordering::Relaxed);
        stats.hlc_wall_ms.store(hlc_wall_ms, Ordering::Relaxed);
        if self.durable {
            // The batch's clock is on stable storage: a restart starts the clock the lead
            // above it, so claims up to there need no write of their own.
            self.shared.claim_floor.fetch_max(
                hlc_wall_ms.saturating_add(self.shared.claim_lead_ms),
                Ordering::AcqRel,
            );
        }
        if let Ok(mut a) = self.shared.applied.lock() {
            *a = applied;
        }
        if local_writes > 0
            && let Some(obs) = &self.on_commit
        {
            obs(local_writes, elapsed);
        }
        stats
            .writes_total
            .fetch_add(pending.0.len() as u64, Ordering::Relaxed);
        stats.last_seq.store(seq, Ordering::Relaxed);
        for (reply, outcome) in pending.0 {
            reply(Ok(outcome));
        }
        for (reply, outcome) in pending.1 {
            reply(Ok(outcome));
        }
        if let Some(f) = &self.on_change {
            f();
        }
        if let Some(f) = &self.on_ops
            && !ops.is_empty()
        {
            f(Arc::new(ops));
        }
        // After the replies: the writer needs this word only to seal its next batch, and
        // sending it first would wake the writer in the middle of acknowledging.
        let _ = done.send(Done::Committed(id));
    }
}

impl Writer {
    /// A key's state as of `staged` on top of `batch` on top of the backend.
    fn current_over(&self, batch: &Batch, staged: &Batch, dk: &[u8]) -> Result<Option<KeyState>> {
        match staged.states.get(dk) {
            Some(s) => Ok(Some(s.clone())),
            None => self.current(batch, dk),
        }
    }

    /// Stages a key's new state, indexing lww tombstones for collection, and expiring lww values
    /// under their expiry (`docs/design/expiring-keys.md`: an expiry is collected as a delete at
    /// that instant).
    fn stage(&self, batch: &mut Batch, dk: Vec<u8>, state: KeyState) {
        if let Some(at) = collectable_from(&state) {
            batch.mutations.push(Mutation::Put(
                Table::Tombstones,
                keys::tombstone_key(at, &dk),
                Vec::new(),
            ));
        }
        batch.states.insert(dk, state);
    }

    /// Refuses writes while a bootstrap replaces this region's state: a local write would take
    /// a sequence number the snapshot may already hold, a replicated one would move a cursor
    /// the snapshot is about to set.
    fn check_not_bootstrapping(&self) -> Result<()> {
        if self.shared.bootstrapping.load(Ordering::Acquire) {
            return Err(AtollError::Bootstrapping(
                "its state is being replaced by a snapshot".into(),
            ));
        }
        Ok(())
    }

    fn apply_local(&mut self, req: &LocalWrite, batch: &mut Batch) -> Result<WriteOutcome> {
        self.check_not_bootstrapping()?;
        if self.shared.is_removed.load(Ordering::Acquire) {
            let by = self
                .shared
                .removed_by
                .lock()
                .ok()
                .and_then(|r| r.as_ref().map(|r| r.by.to_string()))
                .unwrap_or_default();
            return Err(AtollError::RegionRemoved(format!(
                "`{by}` says this region was removed from the cluster; it takes no writes"
            )));
        }
        let ks = self
            .shared
            .keyspaces
            .get(&req.keyspace)
            .ok_or_else(|| AtollError::UnknownKeyspace(req.keyspace.clone()))?;
        let dk = keys::data_key(&req.keyspace, &req.key);
        let current = self.current(batch, &dk)?;
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
        let (ts, epoch) = {
            let mut st = self.shared.stamps();
            // The fencing check happens at the stamping instant, under the stamping lock: a
            // write is accepted (gets its timestamp and sequence number) only inside a window.
            let epoch = match &self.gate {
                Some(g) => g.permit(ks, &req.key)?,
                None => 0,
            };
            let ts = st.hlc.now(self.clock.physical_ms());
            st.building_from_ms.get_or_insert(ts.wall_ms);
            (ts, epoch)
        };
        let seq = self.seq + 1;
        let mut delta = prepare(
            &req.intent,
            current.as_ref(),
            &WriteAt {
                keyspace: &req.keyspace,
                policy: ks.policy,
                default_ttl_ms: ks.default_ttl_ms,
                region: &self.shared.region,
                ts,
                now_ms: self.clock.physical_ms(),
                rate: ks.ratelimit.as_ref(),
            },
        )?;
        if let KeyState::Lww(r) = &mut delta {
            // The lww version vector counts this region's writes to the key. Once a tombstone is
            // collected that count would restart from zero, and a concurrent write from a region
            // still holding the tombstone (and its larger count) would look causally newer: one of
            // the two writes would be lost without a conflict record. The write's sequence number
            // is above every count this region ever issued for the key, collected or not.
            r.vv.raise(&self.shared.region, seq);
        }
        let state = match current {
            Some(mut s) => {
                let now = self.clock.physical_ms();
                let before = live_siblings(&s, now);
                s.merge(&delta)?;
                let after = live_siblings(&s, now);
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
        let entry = OpEntry {
            origin: self.shared.region.clone(),
            seq,
            ts,
            keyspace: req.keyspace.clone(),
            key: req.key.clone(),
            delta,
            epoch,
        };
        batch.mutations.push(Mutation::Put(
            Table::Oplog,
            keys::oplog_key(&self.shared.region, seq),
            codec::encode(&entry)?,
        ));
        if self.on_ops {
            batch.ops.push(entry);
        }
        self.seq = seq;
        self.stage(batch, dk, state.clone());
        Ok(WriteOutcome { state, seq, ts })
    }

    /// Merges replicated entries: each is applied only if it is the next sequence number of its
    /// origin, and is appended to this region's operation log too, so it can be relayed.
    /// Stages into `batch`, on top of `base` (the rest of the group commit, only read).
    fn apply_remote(
        &mut self,
        entries: Vec<OpEntry>,
        base: &Batch,
        batch: &mut Batch,
    ) -> Result<RemoteOutcome> {
        let mut out = RemoteOutcome::default();
        let mut stopped: HashSet<RegionId> = HashSet::new();
        for e in entries {
            let next = self.applied.get(&e.origin) + 1;
            let takes = e.origin != self.shared.region && !stopped.contains(&e.origin);
            if !takes || e.seq != next {
                if takes && e.seq > next {
                    out.gaps += 1;
                }
                out.skipped += 1;
                continue;
            }
            let physical = self.clock.physical_ms();
            let observed = self.shared.stamps().hlc.observe(e.ts, physical);
            if let Err(err) = observed {
                stopped.insert(e.origin.clone());
                out.skewed.push((e.origin.clone(), err));
                out.skipped += 1;
                continue;
            }
            let dk = keys::data_key(&e.keyspace, &e.key);
            let late = self
                .gate
                .as_ref()
                .is_some_and(|g| g.is_late(e.epoch, e.ts.wall_ms));
            if late {
                // Stamped under a superseded lease after the supersession: never merged. The
                // entry stays in the log (relays and cursors keep moving) and is reported.
                tracing::error!(
                    origin = %e.origin, seq = e.seq, epoch = e.epoch, keyspace = %e.keyspace,
                    "replicated write of a superseded lease epoch, stamped after the supersession: refused, not merged"
                );
                out.late.push((e.origin.clone(), e.seq, e.epoch));
                self.record_late(batch, &e)?;
            } else {
                match self.current_over(base, batch, &dk)? {
                    None => self.stage(batch, dk, e.delta.clone()),
                    Some(mut state) => match state.merge(&e.delta) {
                        Ok(conflict) => {
                            if let Some(c) = conflict {
                                self.record_conflict(batch, &e, c, &mut out)?;
                            }
                            if let Some(ks) = self.shared.keyspaces.get(&e.keyspace)
                                && live_siblings(&state, self.clock.physical_ms()) > ks.max_siblings
                            {
                                out.sibling_limit_hits.push(e.keyspace.clone());
                            }
                            self.stage(batch, dk, state);
                        }
                        Err(err) => {
                            // Keyspace declared with different policies in different regions: the
                            // entry cannot merge here. Keep the cursor moving (and the entry in the
                            // log for relay) rather than stalling replication; say so loudly.
                            tracing::error!(
                                origin = %e.origin, seq = e.seq, keyspace = %e.keyspace, error = %err,
                                "replicated entry does not fit the local keyspace; not merged"
                            );
                        }
                    },
                }
            }
            out.delays_ms
                .push((e.origin.clone(), physical.saturating_sub(e.ts.wall_ms)));
            batch.mutations.push(Mutation::Put(
                Table::Oplog,
                keys::oplog_key(&e.origin, e.seq),
                codec::encode(&e)?,
            ));
            // `e.seq` is the origin's next sequence number (checked above): advance in place
            // rather than rebuilding the vector for every entry.
            self.applied.increment(&e.origin);
            batch.mark_applied(&e.origin);
            out.applied += 1;
            if self.on_ops {
                batch.ops.push(e);
            }
        }
        Ok(out)
    }

    fn record_conflict(
        &mut self,
        batch: &mut Batch,
        e: &OpEntry,
        c: LwwConflict,
        out: &mut RemoteOutcome,
    ) -> Result<()> {
        let now = self.clock.physical_ms();
        let stamp = self.shared.stamps().hlc.now(now);
        let rec = ConflictRecord {
            keyspace: e.keyspace.clone(),
            key: e.key.clone(),
            winner: c.winner,
            loser: c.loser,
            reason: c.reason,
            recorded_at_ms: now,
        };
        batch.mutations.push(Mutation::Put(
            Table::Conflicts,
            keys::conflict_key(&e.keyspace, stamp.wall_ms, u64::from(stamp.logical)),
            codec::encode(&rec)?,
        ));
        self.shared
            .stats
            .conflicts_total
            .fetch_add(1, Ordering::Relaxed);
        out.conflicts.push((e.keyspace.clone(), c.reason));
        Ok(())
    }

    /// Records a refused late write in the fencing ledger (same commit as the cursor move).
    fn record_late(&mut self, batch: &mut Batch, e: &OpEntry) -> Result<()> {
        let now = self.clock.physical_ms();
        let stamp = self.shared.stamps().hlc.now(now);
        let rec = LateWriteRecord {
            keyspace: e.keyspace.clone(),
            key: e.key.clone(),
            origin: e.origin.clone(),
            seq: e.seq,
            epoch: e.epoch,
            ts: e.ts,
            recorded_at_ms: now,
        };
        batch.mutations.push(Mutation::Put(
            Table::LateWrites,
            keys::conflict_key(&e.keyspace, stamp.wall_ms, u64::from(stamp.logical)),
            codec::encode(&rec)?,
        ));
        Ok(())
    }

    fn maintain(&mut self, horizon_ms: Option<u64>) -> Result<MaintenanceOutcome> {
        let backend = &self.shared.backend;
        let mut out = MaintenanceOutcome::default();
        let mut mutations = Vec::new();
        if let Some(h) = horizon_ms {
            let end = keys::tombstone_key(
                Timestamp {
                    wall_ms: h,
                    logical: 0,
                },
                &[],
            );
            let now = self.clock.physical_ms();
            for (ik, _) in backend.range(Table::Tombstones, &[], &end, 10_000)? {
                let Some((ts, dk)) = keys::parse_tombstone_key(&ik) else {
                    continue;
                };
                if let Some(state) = read_state(&**backend, dk)?
                    && collectable_from(&state) == Some(ts)
                {
                    if let KeyState::Mvr(mut reg) = state {
                        // Siblings, not the key: its context stays (see `drop_siblings`).
                        if now < ts.wall_ms {
                            continue;
                        }
                        let dropped = reg.drop_siblings(|s| {
                            s.expired(now) && s.expires_ms.unwrap_or(u64::MAX).max(s.ts.wall_ms) < h
                        });
                        out.expired_collected += dropped;
                        let rest = KeyState::Mvr(reg);
                        let next = collectable_from(&rest);
                        mutations.push(Mutation::Put(
                            Table::Data,
                            dk.to_vec(),
                            codec::encode(&rest)?,
                        ));
                        // Re-indexed under the next expiry (which may be this very entry).
                        if next != Some(ts) {
                            mutations.push(Mutation::Delete(Table::Tombstones, ik.clone()));
                            if let Some(next) = next {
                                mutations.push(Mutation::Put(
                                    Table::Tombstones,
                                    keys::tombstone_key(next, dk),
                                    Vec::new(),
                                ));
                            }
                        }
                        continue;
                    }
                    match &state {
                        KeyState::Lww(r) if r.value.is_none() => {
                            out.tombstones_collected += 1;
                        }
                        // The horizon (HLC watermarks) passed the expiry (or the windows' end)
                        // before this region's own clock did: the key still reads as live here,
                        // so it stays, and so does its index entry, for a later pass.
                        _ if now < ts.wall_ms => continue,
                        KeyState::RateLimit(_) => out.rate_keys_collected += 1,
                        _ => out.expired_collected += 1,
                    }
                    mutations.push(Mutation::Delete(Table::Data, dk.to_vec()));
                }
                mutations.push(Mutation::Delete(Table::Tombstones, ik.clone()));
            }
        }
        let now = self.clock.physical_ms();
        for ks in self.shared.keyspaces.values() {
            // The fencing ledger of every policy, with the conflict ledger's bounds.
            let prefix = keys::prefix(&ks.name);
            let rows =
                backend.range(Table::LateWrites, &prefix, &prefix_end(&prefix), usize::MAX)?;
            let cutoff = now.saturating_sub(ks.conflict_retention_secs.saturating_mul(1000));
            let excess = rows.len().saturating_sub(ks.conflict_max_entries);
            for (i, (k, _)) in rows.iter().enumerate() {
                let at = k
                    .get(prefix.len()..prefix.len() + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if i < excess || at < cutoff {
                    mutations.push(Mutation::Delete(Table::LateWrites, k.clone()));
                }
            }
        }
        for ks in self.shared.keyspaces.values() {
            if ks.policy.storage() != Policy::Lww {
                continue;
            }
            let prefix = keys::prefix(&ks.name);
            let rows =
                backend.range(Table::Conflicts, &prefix, &prefix_end(&prefix), usize::MAX)?;
            let cutoff = now.saturating_sub(ks.conflict_retention_secs.saturating_mul(1000));
            let excess = rows.len().saturating_sub(ks.conflict_max_entries);
            for (i, (k, _)) in rows.iter().enumerate() {
                let at = k
                    .get(prefix.len()..prefix.len() + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if i < excess || at < cutoff {
                    mutations.push(Mutation::Delete(Table::Conflicts, k.clone()));
                    out.conflicts_pruned += 1;
                }
            }
        }
        if !mutations.is_empty() {
            backend.commit(mutations, false)?;
        }
        Ok(out)
    }
}

impl Writer {
    /// The bootstrap the meta key says is under way.
    fn bootstrap_under_way(&self) -> Result<BootstrapProgress> {
        self.shared
            .bootstrap
            .lock()
            .ok()
            .and_then(|b| b.clone())
            .ok_or_else(|| AtollError::Storage("no bootstrap is under way".into()))
    }

    /// Merges `delta` into the key's state as of `batch` and stages the result.
    fn merge_staged(&self, batch: &mut Batch, dk: Vec<u8>, delta: &KeyState) -> Result<()> {
        let state = match self.current(batch, &dk)? {
            Some(mut cur) => {
                cur.merge(delta)?;
                cur
            }
            None => delta.clone(),
        };
        self.stage(batch, dk, state);
        Ok(())
    }

    fn bootstrap(&mut self, step: BootstrapStep) -> Result<Option<VersionVector>> {
        match step {
            BootstrapStep::Begin { restart } => {
                let under_way = self
                    .shared
                    .bootstrap
                    .lock()
                    .map(|b| b.is_some())
                    .unwrap_or(false);
                if under_way && !restart {
                    return Ok(None);
                }
                // Mark first: a region that stops while its state is being cleared resumes the
                // bootstrap, never serves a half-cleared state.
                let progress = BootstrapProgress::default();
                self.shared.backend.commit(
                    vec![Mutation::Put(
                        Table::Meta,
                        keys::META_BOOTSTRAP.to_vec(),
                        codec::encode(&progress)?,
                    )],
                    true,
                )?;
                if let Ok(mut b) = self.shared.bootstrap.lock() {
                    *b = Some(progress);
                }
                self.shared.bootstrapping.store(true, Ordering::Release);
                for table in [Table::Data, Table::Tombstones] {
                    loop {
                        let rows = self
                            .shared
                            .backend
                            .range(table, &[], &[0xff; 256], 10_000)?;
                        if rows.is_empty() {
                            break;
                        }
                        let dels = rows
                            .into_iter()
                            .map(|(k, _)| Mutation::Delete(table, k))
                            .collect();
                        self.shared.backend.commit(dels, false)?;
                    }
                }
                Ok(None)
            }
            BootstrapStep::Load {
                applied,
                rows,
                next,
            } => {
                let mut progress = self.bootstrap_under_way()?;
                let mut batch = Batch::default();
                // The newest timestamp loaded: this region's clock is raised to it, so that its
                // next write is stamped above every value it now holds (with a clock running
                // behind the donor's, a write right after the bootstrap lost to the value it
                // meant to replace, acknowledged: found by the simulation of regions added to a
                // running cluster).
                let mut newest = Timestamp::default();
                for (dk, raw) in &rows {
                    let known = dk
                        .iter()
                        .position(|b| *b == 0)
                        .and_then(|i| std::str::from_utf8(&dk[..i]).ok())
                        .is_some_and(|ks| self.shared.keyspaces.contains_key(ks));
                    if !known {
                        // A keyspace this region does not declare: nothing here could read it.
                        continue;
                    }
                    let delta: KeyState = codec::decode_state(raw)?;
                    match &delta {
                        KeyState::Lww(l) => newest = newest.max(l.ts),
                        KeyState::Mvr(m) => newest = newest.max(m.max_ts().unwrap_or_default()),
                        _ => {}
                    }
                    self.merge_staged(&mut batch, dk.clone(), &delta)?;
                    progress.bytes += (dk.len() + raw.len()) as u64;
                    progress.keys += 1;
                }
                progress.floor = Some(match progress.floor.take() {
                    Some(f) => f.meet(&applied),
                    None => applied,
                });
                progress.after = next.or_else(|| rows.last().map(|(k, _)| k.clone()));
                let mut mutations = std::mem::take(&mut batch.mutations);
                for (k, state) in &batch.states {
                    mutations.push(Mutation::Put(Table::Data, k.clone(), codec::encode(state)?));
                }
                mutations.push(Mutation::Put(
                    Table::Meta,
                    keys::META_BOOTSTRAP.to_vec(),
                    codec::encode(&progress)?,
                ));
                if newest > Timestamp::default() {
                    let last = {
                        let mut st = self.shared.stamps();
                        st.hlc.restore(newest);
                        st.hlc.last()
                    };
                    mutations.push(Mutation::Put(
                        Table::Meta,
                        keys::META_HLC.to_vec(),
                        codec::encode(&last)?,
                    ));
                }
                self.shared.backend.commit(mutations, true)?;
                if let Ok(mut b) = self.shared.bootstrap.lock() {
                    *b = Some(progress);
                }
                Ok(None)
            }
            BootstrapStep::Finish { own_floor } => {
                let progress = self.bootstrap_under_way()?;
                let me = self.shared.region.clone();
                let mut floor = progress.floor.unwrap_or_default();
                // What this region had applied of other origins must be covered: its state was
                // replaced, and its cursors (which peers were told) must not move back.
                let short: Vec<String> = self
                    .applied
                    .iter()
                    .filter(|(o, n)| **o != me && floor.get(o) < *n)
                    .map(|(o, n)| format!("{o}: {} < {n}", floor.get(o)))
                    .collect();
                if !short.is_empty() {
                    return Err(AtollError::BootstrapBehind(short.join(", ")));
                }
                let snapshot_own = floor.get(&me);
                let head = self.seq.max(snapshot_own).max(own_floor);
                floor.raise(&me, head);
                // This region's own logged writes past the snapshot: merged again (a merge is
                // idempotent, so one the snapshot already holds changes nothing).
                let mut batch = Batch::default();
                let own = self.shared.backend.range(
                    Table::Oplog,
                    &keys::oplog_key(&me, snapshot_own + 1),
                    &prefix_end(&keys::prefix(me.as_str())),
                    usize::MAX,
                )?;
                for (_, raw) in own {
                    let e = codec::decode_entry(&raw)?;
                    let dk = keys::data_key(&e.keyspace, &e.key);
                    self.merge_staged(&mut batch, dk, &e.delta)?;
                }
                let mut mutations = std::mem::take(&mut batch.mutations);
                for (k, state) in &batch.states {
                    mutations.push(Mutation::Put(Table::Data, k.clone(), codec::encode(state)?));
                }
                for (o, n) in floor.iter() {
                    mutations.push(Mutation::Put(
                        Table::Meta,
                        keys::applied_key(o),
                        codec::encode(&n)?,
                    ));
                }
                mutations.push(Mutation::Delete(Table::Meta, keys::META_BOOTSTRAP.to_vec()));
                self.shared.backend.commit(mutations, true)?;
                self.seq = head;
                self.applied = floor.clone();
                self.shared.sealed_head.store(head, Ordering::Release);
                self.shared.stamps().head = head;
                self.shared.stats.last_seq.store(head, Ordering::Relaxed);
                if let Ok(mut a) = self.shared.applied.lock() {
                    a.clone_from(&floor);
                }
                if let Ok(mut v) = self.shared.visible.lock() {
                    v.clone_from(&floor);
                    self.shared.visible_gen.fetch_add(1, Ordering::Release);
                }
                if let Ok(mut b) = self.shared.bootstrap.lock() {
                    *b = None;
                }
                self.shared.bootstrapping.store(false, Ordering::Release);
                Ok(Some(floor))
            }
        }
    }
}

/// Siblings of an mvr key that hold a value not expired by `now_ms` (expired ones read as
/// absent and do not count toward `max_siblings`).
fn live_siblings(s: &KeyState, now_ms: u64) -> usize {
    match s {
        KeyState::Mvr(r) => r.sibling_count_at(now_ms),
        _ => 0,
    }
}
