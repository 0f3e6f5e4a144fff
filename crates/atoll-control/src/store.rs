//! The durable part of a member: the raft log, the vote, the committed log id and the latest
//! snapshot of the state machine, in one redb file (`<data_dir>/control.redb`). Every write is one
//! redb transaction with redb's default durability (fsynced at commit).
//!
//! Layout (format version [`FORMAT_VERSION`]):
//!
//! | table      | key                 | value                                                    |
//! |------------|---------------------|----------------------------------------------------------|
//! | `meta`     | `"format"`          | format version, u16 little-endian                        |
//! | `meta`     | `"node_id"`         | the member this directory belongs to, u64 little-endian  |
//! | `meta`     | `"vote"`            | postcard `Vote`                                          |
//! | `meta`     | `"committed"`       | postcard `LogId` (the last committed log id seen)        |
//! | `meta`     | `"purged"`          | postcard `LogId` (the last log id purged)                |
//! | `log`      | log index (u64)     | postcard `Entry` (log id and payload)                    |
//! | `snapshot` | `"current"`         | postcard [`StoredSnapshot`] (meta and state bytes)       |
//!
//! The version is checked at open: a newer one is refused with
//! [`ControlError::FormatTooNew`], an unknown older one (0) or a file with tables but no version
//! as corrupt. The state machine itself is not stored between snapshots: at start it is restored
//! from the snapshot and openraft re-applies the log up to the committed log id.

use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, EmptyNode, Entry, LogId, LogState, OptionalSend, RaftLogReader, SnapshotMeta,
    StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::NodeId;
use crate::error::ControlError;
use crate::wire::TypeConfig;

/// Version of the on-disk layout above.
pub const FORMAT_VERSION: u16 = 1;

/// File name of the store inside the data directory.
pub const FILE_NAME: &str = "control.redb";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const K_FORMAT: &str = "format";
const K_NODE: &str = "node_id";
const K_VOTE: &str = "vote";
const K_COMMITTED: &str = "committed";
const K_PURGED: &str = "purged";
const K_SNAPSHOT: &str = "current";

/// redb's page cache for this small database (its default is 1 GiB).
const CACHE_BYTES: usize = 4 << 20;

/// A snapshot as stored: openraft's meta and the state machine's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, EmptyNode>,
    pub data: Vec<u8>,
}

fn storage(what: &str, e: impl std::fmt::Display) -> ControlError {
    ControlError::Storage(format!("{what}: {e}"))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ControlError {
    ControlError::Corrupt(format!("{what}: {e}"))
}

fn to_bytes<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, ControlError> {
    postcard::to_stdvec(v).map_err(|e| storage(what, e))
}

fn from_bytes<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, ControlError> {
    postcard::from_bytes(b).map_err(|e| corrupt(what, e))
}

/// The open store. Cheap to clone; every clone shares the one redb database.
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Db>,
}

/// The database, and a signal sent once it is closed. Fields drop in order: the database (which
/// closes the file and releases its lock) before the signal.
struct Db {
    db: Database,
    _closed: ClosedSignal,
}

impl std::ops::Deref for Db {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

struct ClosedSignal(watch::Sender<bool>);

impl Drop for ClosedSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` for member `node_id`, checking format and owner.
    /// The receiver turns `true` once every clone of the store is gone and the file is closed
    /// (its lock released).
    pub fn open(
        dir: &Path,
        node_id: NodeId,
    ) -> Result<(Self, watch::Receiver<bool>), ControlError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| storage(&format!("create {}", dir.display()), e))?;
        let path = dir.join(FILE_NAME);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    ControlError::DataDirInUse(path.display().to_string())
                }
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(c)) => {
                    corrupt(&path.display().to_string(), c)
                }
                other => storage(&format!("open {}", path.display()), other),
            })?;
        let txn = db.begin_write().map_err(|e| storage("begin", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| storage("meta table", e))?;
            let log = txn.open_table(LOG).map_err(|e| storage("log table", e))?;
            let snap = txn
                .open_table(SNAPSHOT)
                .map_err(|e| storage("snapshot table", e))?;
            let format = meta
                .get(K_FORMAT)
                .map_err(|e| storage("read format", e))?
                .map(|g| g.value().to_vec());
            match format {
                Some(b) => {
                    let v = <[u8; 2]>::try_from(b.as_slice())
                        .map(u16::from_le_bytes)
                        .map_err(|_| corrupt("format version", "not 2 bytes"))?;
                    if v > FORMAT_VERSION {
                        return Err(ControlError::FormatTooNew {
                            found: v,
                            supported: FORMAT_VERSION,
                        });
                    }
                    if v != FORMAT_VERSION {
                        return Err(corrupt("format version", format!("unknown version {v}")));
                    }
                }
                None => {
                    let empty = meta.len().map_err(|e| storage("meta", e))? == 0
                        && log.len().map_err(|e| storage("log", e))? == 0
                        && snap.len().map_err(|e| storage("snapshot", e))? == 0;
                    if !empty {
                        return Err(corrupt(
                            &path.display().to_string(),
                            "holds control data but no format version",
                        ));
                    }
                    meta.insert(K_FORMAT, FORMAT_VERSION.to_le_bytes().as_slice())
                        .map_err(|e| storage("write format", e))?;
                    meta.insert(K_NODE, node_id.to_le_bytes().as_slice())
                        .map_err(|e| storage("write node id", e))?;
                }
            }
            let owner = meta
                .get(K_NODE)
                .map_err(|e| storage("read node id", e))?
                .map(|g| g.value().to_vec())
                .ok_or_else(|| corrupt("node id", "missing"))?;
            let owner = <[u8; 8]>::try_from(owner.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| corrupt("node id", "not 8 bytes"))?;
            if owner != node_id {
                return Err(ControlError::DataDirMismatch {
                    found: owner,
                    expected: node_id,
                });
            }
        }
        txn.commit().map_err(|e| storage("commit", e))?;
        let (tx, rx) = watch::channel(false);
        let store = Self {
            db: Arc::new(Db {
                db,
                _closed: ClosedSignal(tx),
            }),
        };
        Ok((store, rx))
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ControlError> {
        let txn = self.db.begin_read().map_err(|e| storage("begin read", e))?;
        let meta = txn.open_table(META).map_err(|e| storage("meta table", e))?;
        let v = meta.get(key).map_err(|e| storage(key, e))?;
        v.map(|g| from_bytes(key, g.value())).transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &str, v: Option<&T>) -> Result<(), ControlError> {
        let txn = self.db.begin_write().map_err(|e| storage("begin", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| storage("meta table", e))?;
            match v {
                Some(v) => {
                    let b = to_bytes(key, v)?;
                    meta.insert(key, b.as_slice())
                        .map_err(|e| storage(key, e))?;
                }
                None => {
                    meta.remove(key).map_err(|e| storage(key, e))?;
                }
            }
        }
        txn.commit().map_err(|e| storage("commit", e))
    }

    pub fn read_vote(&self) -> Result<Option<Vote<NodeId>>, ControlError> {
        self.get_meta(K_VOTE)
    }

    pub fn save_vote(&self, vote: &Vote<NodeId>) -> Result<(), ControlError> {
        self.put_meta(K_VOTE, Some(vote))
    }

    pub fn read_committed(&self) -> Result<Option<LogId<NodeId>>, ControlError> {
        self.get_meta(K_COMMITTED)
    }

    pub fn save_committed(&self, c: Option<&LogId<NodeId>>) -> Result<(), ControlError> {
        self.put_meta(K_COMMITTED, c)
    }

    /// The last purged log id and the last log id (the purged one when the log is empty).
    pub fn log_state(&self) -> Result<LogState<TypeConfig>, ControlError> {
        let purged: Option<LogId<NodeId>> = self.get_meta(K_PURGED)?;
        let txn = self.db.begin_read().map_err(|e| storage("begin read", e))?;
        let log = txn.open_table(LOG).map_err(|e| storage("log table", e))?;
        let last = log.last().map_err(|e| storage("last entry", e))?;
        let last = match last {
            Some((_, v)) => Some(from_bytes::<Entry<TypeConfig>>("log entry", v.value())?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    /// Entries in `range`, in order.
    pub fn entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry<TypeConfig>>, ControlError> {
        let txn = self.db.begin_read().map_err(|e| storage("begin read", e))?;
        let log = txn.open_table(LOG).map_err(|e| storage("log table", e))?;
        let mut out = Vec::new();
        for item in log
            .range::<u64>(range)
            .map_err(|e| storage("read log", e))?
        {
            let (k, v) = item.map_err(|e| storage("read log", e))?;
            let entry: Entry<TypeConfig> = from_bytes("log entry", v.value())?;
            if entry.log_id.index != k.value() {
                return Err(corrupt(
                    "log",
                    format!(
                        "entry stored at {} has index {}",
                        k.value(),
                        entry.log_id.index
                    ),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Number of entries held in the log.
    #[cfg(test)]
    pub fn log_len(&self) -> Result<u64, ControlError> {
        let txn = self.db.begin_read().map_err(|e| storage("begin read", e))?;
        let log = txn.open_table(LOG).map_err(|e| storage("log table", e))?;
        log.len().map_err(|e| storage("log", e))
    }

    pub fn append(&self, entries: &[Entry<TypeConfig>]) -> Result<(), ControlError> {
        let txn = self.db.begin_write().map_err(|e| storage("begin", e))?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| storage("log table", e))?;
            for e in entries {
                let b = to_bytes("log entry", e)?;
                log.insert(e.log_id.index, b.as_slice())
                    .map_err(|e| storage("append", e))?;
            }
        }
        txn.commit().map_err(|e| storage("commit", e))
    }

    /// Removes the entries from `index` on.
    pub fn truncate(&self, index: u64) -> Result<(), ControlError> {
        let txn = self.db.begin_write().map_err(|e| storage("begin", e))?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| storage("log table", e))?;
            log.retain_in(index.., |_, _| false)
                .map_err(|e| storage("truncate", e))?;
        }
        txn.commit().map_err(|e| storage("commit", e))
    }

    /// Removes the entries up to `upto` (inclusive) and records it as purged, in one transaction.
    pub fn purge(&self, upto: &LogId<NodeId>) -> Result<(), ControlError> {
        let txn = self.db.begin_write().map_err(|e| storage("begin", e))?;
        {
            let mut log = txn.open_table(LOG).map_err(|e| storage("log table", e))?;
            log.retain_in(..=upto.index, |_, _| false)
                .map_err(|e| storage("purge", e))?;
            let mut meta = txn.open_table(META).map_err(|e| storage("meta table", e))?;
            let b = to_bytes(K_PURGED, upto)?;
            meta.insert(K_PURGED, b.as_slice())
                .map_err(|e| storage(K_PURGED, e))?;
        }
        txn.commit().map_err(|e| storage("commit", e))
    }

    pub fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, ControlError> {
        let txn = self.db.begin_read().map_err(|e| storage("begin read", e))?;
        let t = txn
            .open_table(SNAPSHOT)
            .map_err(|e| storage("snapshot table", e))?;
        let v = t.get(K_SNAPSHOT).map_err(|e| storage("snapshot", e))?;
        v.map(|g| from_bytes("snapshot", g.value())).transpose()
    }

    /// Stores `snap` unless the stored one is at least as new; returns whether it was stored.
    pub fn save_snapshot(&self, snap: &StoredSnapshot) -> Result<bool, ControlError> {
        let b = to_bytes("snapshot", snap)?;
        let txn = self.db.begin_write().map_err(|e| storage("begin", e))?;
        let stored;
        {
            let mut t = txn
                .open_table(SNAPSHOT)
                .map_err(|e| storage("snapshot table", e))?;
            let current = match t.get(K_SNAPSHOT).map_err(|e| storage("snapshot", e))? {
                Some(g) => Some(from_bytes::<StoredSnapshot>("snapshot", g.value())?),
                None => None,
            };
            stored = current.is_none_or(|c| c.meta.last_log_id < snap.meta.last_log_id);
            if stored {
                t.insert(K_SNAPSHOT, b.as_slice())
                    .map_err(|e| storage("snapshot", e))?;
            }
        }
        txn.commit().map_err(|e| storage("commit", e))?;
        Ok(stored)
    }
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Storage(format!("storage task failed: {e}")))?
}

fn io_err(e: ControlError) -> AnyError {
    AnyError::new(&e)
}

/// openraft's log storage over [`Store`]. Its reader is a clone of itself.
#[derive(Clone)]
pub(crate) struct LogStore {
    pub store: Store,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let store = self.store.clone();
        blocking(move || store.entries(bounds))
            .await
            .map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let store = self.store.clone();
        blocking(move || store.log_state())
            .await
            .map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let store = self.store.clone();
        let vote = *vote;
        blocking(move || store.save_vote(&vote))
            .await
            .map_err(|e| StorageIOError::write_vote(io_err(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let store = self.store.clone();
        blocking(move || store.read_vote())
            .await
            .map_err(|e| StorageIOError::read_vote(io_err(e)).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let store = self.store.clone();
        blocking(move || store.save_committed(committed.as_ref()))
            .await
            .map_err(|e| StorageIOError::write(io_err(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let store = self.store.clone();
        blocking(move || store.read_committed())
            .await
            .map_err(|e| StorageIOError::read(io_err(e)).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let store = self.store.clone();
        match blocking(move || store.append(&entries)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "control log append failed");
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(io_err(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let store = self.store.clone();
        blocking(move || store.truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let store = self.store.clone();
        blocking(move || store.purge(&log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, StoredMembership};

    use super::*;

    fn entry(term: u64, index: u64, cmd: &[u8]) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(cmd.to_vec()),
        }
    }

    #[test]
    fn log_vote_and_snapshot_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = Store::open(dir.path(), 7).unwrap();
            s.append(&[entry(1, 1, b"a"), entry(1, 2, b"b"), entry(2, 3, b"c")])
                .unwrap();
            s.save_vote(&Vote::new(2, 7)).unwrap();
            s.save_committed(Some(&LogId::new(CommittedLeaderId::new(1, 1), 2)))
                .unwrap();
            s.truncate(3).unwrap();
            s.purge(&LogId::new(CommittedLeaderId::new(1, 1), 1))
                .unwrap();
            let snap = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
                    last_membership: StoredMembership::default(),
                    snapshot_id: "s1".into(),
                },
                data: b"state".to_vec(),
            };
            assert!(s.save_snapshot(&snap).unwrap());
            // An older snapshot never replaces a newer one.
            let mut older = snap.clone();
            older.meta.last_log_id = None;
            assert!(!s.save_snapshot(&older).unwrap());
        }
        let (s, _) = Store::open(dir.path(), 7).unwrap();
        let st = s.log_state().unwrap();
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(1));
        assert_eq!(st.last_log_id.map(|l| l.index), Some(2));
        assert_eq!(s.log_len().unwrap(), 1);
        let got = s.entries((Bound::Unbounded, Bound::Unbounded)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].log_id.index, 2);
        assert_eq!(s.read_vote().unwrap(), Some(Vote::new(2, 7)));
        assert_eq!(s.read_committed().unwrap().map(|l| l.index), Some(2));
        let snap = s.load_snapshot().unwrap().unwrap();
        assert_eq!(snap.data, b"state");
        assert_eq!(snap.meta.snapshot_id, "s1");
    }

    #[test]
    fn refuses_another_member_a_newer_format_and_a_second_open() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(dir.path(), 1).unwrap();
        assert!(matches!(
            Store::open(dir.path(), 1).err(),
            Some(ControlError::DataDirInUse(_))
        ));
        drop(s);
        assert_eq!(
            Store::open(dir.path(), 2).err(),
            Some(ControlError::DataDirMismatch {
                found: 1,
                expected: 2
            })
        );
        // Rewrite the version as a future one.
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(K_FORMAT, 9u16.to_le_bytes().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(
            Store::open(dir.path(), 1).err(),
            Some(ControlError::FormatTooNew {
                found: 9,
                supported: FORMAT_VERSION
            })
        );
    }

    #[test]
    fn refuses_a_file_that_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![0x5a; 8192]).unwrap();
        let err = Store::open(dir.path(), 1).err().unwrap();
        assert!(
            matches!(err, ControlError::Corrupt(_) | ControlError::Storage(_)),
            "{err:?}"
        );
    }
}
