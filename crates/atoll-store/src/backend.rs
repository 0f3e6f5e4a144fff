//! The storage trait and its adapters. The store needs little from an engine: point reads,
//! ordered range scans, and atomic multi-table batches that are fsynced before they return.

use atoll_core::{AtollError, Result};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

/// The tables of a region's data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Format version, region name, last HLC timestamp, replication cursors.
    Meta,
    /// `keyspace/key` → encoded key state.
    Data,
    /// `origin/seq` → encoded operation-log entry.
    Oplog,
    /// `keyspace/time/counter` → encoded conflict record.
    Conflicts,
    /// `timestamp/data key` → empty: the lww tombstones, in timestamp order, for collection.
    Tombstones,
    /// `keyspace/time/counter` → encoded late-write record: replicated writes of a superseded
    /// lease epoch stamped after the supersession, refused (the fencing ledger).
    LateWrites,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Meta,
        Table::Data,
        Table::Oplog,
        Table::Conflicts,
        Table::Tombstones,
        Table::LateWrites,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Data => "data",
            Table::Oplog => "oplog",
            Table::Conflicts => "conflicts",
            Table::Tombstones => "tombstones",
            Table::LateWrites => "late_writes",
        }
    }
}

/// One change in an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
}

/// A key-value engine with atomic, durable multi-table batches.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies every mutation atomically: after a crash either all or none are visible. When
    /// `durable` is set the batch is on stable storage (fsync) when this returns `Ok`.
    fn commit(&self, batch: Vec<Mutation>, durable: bool) -> Result<()>;

    /// Entries with `start <= key < end`, in key order, at most `limit` of them.
    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The entry with the greatest key in `start <= key < end`.
    fn last_in(&self, table: Table, start: &[u8], end: &[u8])
    -> Result<Option<(Vec<u8>, Vec<u8>)>>;

    /// Bytes on disk per table name (and `journal` for a write-ahead journal), where the
    /// engine can tell; empty otherwise.
    fn disk_usage(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The smallest key greater than every key that starts with `prefix` (for `[prefix, end)` scans).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): no finite bound; callers use a long 0xff run instead.
    vec![0xff; prefix.len() + 64]
}

type MemTables = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// What a batch overwrote: each touched key with its value before the batch (`None`: absent).
type Undo = Vec<((Table, Vec<u8>), Option<Vec<u8>>)>;

#[derive(Default)]
struct MemState {
    tables: MemTables,
    /// With the power-cut model: per batch committed since the last durable one, what it
    /// overwrote, oldest first.
    unsynced: Vec<Undo>,
}

/// An in-memory backend for tests and simulation.
///
/// By default `durable` is ignored and everything committed survives. With
/// [`MemBackend::with_power_cuts`] it models a disk with a volatile cache, as a journaling
/// engine sees it: a durable commit puts it and every earlier batch on stable storage; a power
/// cut ([`MemBackend::power_cut`]) keeps the stable state and a prefix of the batches committed
/// since (the journal's order is kept; a torn last batch fails its checksum and is dropped whole)
/// and loses the rest. A store that skips an fsync it needs loses data here.
#[derive(Default)]
pub struct MemBackend {
    state: Mutex<MemState>,
    power_cuts: bool,
}

impl MemBackend {
    /// A backend with the power-cut model (see the type's documentation).
    pub fn with_power_cuts() -> Self {
        Self {
            state: Mutex::default(),
            power_cuts: true,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemState>> {
        self.state
            .lock()
            .map_err(|_| AtollError::Storage("memory backend lock poisoned".into()))
    }

    /// Batches committed since the last durable commit (what a power cut may lose).
    pub fn unsynced_batches(&self) -> usize {
        self.lock().map_or(0, |s| s.unsynced.len())
    }

    /// A power cut: keeps the durable state and the first `keep` batches committed since, and
    /// loses the others. Returns how many batches were lost. Without the power-cut model nothing
    /// is lost.
    pub fn power_cut(&self, keep: usize) -> Result<usize> {
        let mut st = self.lock()?;
        let lost = st.unsynced.len().saturating_sub(keep);
        for _ in 0..lost {
            let Some(undo) = st.unsynced.pop() else { break };
            for (k, before) in undo.into_iter().rev() {
                match before {
                    Some(v) => st.tables.insert(k, v),
                    None => st.tables.remove(&k),
                };
            }
        }
        st.unsynced.clear();
        Ok(lost)
    }
}

impl Backend for MemBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?.tables.get(&(table, key.to_vec())).cloned())
    }

    fn commit(&self, batch: Vec<Mutation>, durable: bool) -> Result<()> {
        let mut st = self.lock()?;
        let record = self.power_cuts && !durable;
        let mut undo = Vec::new();
        for m in batch {
            let (k, v) = match m {
                Mutation::Put(table, k, v) => ((table, k), Some(v)),
                Mutation::Delete(table, k) => ((table, k), None),
            };
            let before = match v {
                Some(v) => st.tables.insert(k.clone(), v),
                None => st.tables.remove(&k),
            };
            if record {
                undo.push((k, before));
            }
        }
        if record {
            st.unsynced.push(undo);
        } else {
            // Durable: this batch and every earlier one are on stable storage.
            st.unsynced.clear();
        }
        Ok(())
    }

    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let st = self.lock()?;
        let r = (
            Bound::Included((table, start.to_vec())),
            Bound::Excluded((table, end.to_vec())),
        );
        Ok(st
            .tables
            .range(r)
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_in(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let st = self.lock()?;
        let r = (
            Bound::Included((table, start.to_vec())),
            Bound::Excluded((table, end.to_vec())),
        );
        Ok(st
            .tables
            .range(r)
            .next_back()
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }
}

/// The fjall (LSM-tree) adapter: one fjall keyspace per [`Table`] in one database, batches
/// committed atomically across them and fsynced through the journal.
pub struct FjallBackend {
    // filled in by the fjall adapter below
    inner: fjall_impl::Inner,
}

impl FjallBackend {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            inner: fjall_impl::Inner::open(dir)?,
        })
    }
}

impl Backend for FjallBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(table, key)
    }
    fn commit(&self, batch: Vec<Mutation>, durable: bool) -> Result<()> {
        self.inner.commit(batch, durable)
    }
    fn range(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.range(table, start, end, limit)
    }
    fn last_in(
        &self,
        table: Table,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.last_in(table, start, end)
    }
    fn disk_usage(&self) -> Vec<(&'static str, u64)> {
        self.inner.disk_usage()
    }
}

mod fjall_impl {
    use super::{Mutation, Table};
    use atoll_core::{AtollError, Result};
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
    use std::path::Path;

    fn storage_err(e: fjall::Error) -> AtollError {
        AtollError::Storage(e.to_string())
    }

    pub struct Inner {
        db: Database,
        tables: [Keyspace; 6],
    }

    impl Inner {
        pub fn open(dir: &Path) -> Result<Self> {
            let db = Database::builder(dir)
                .manual_journal_persist(true)
                .open()
                .map_err(|e| {
                    AtollError::Storage(format!(
                        "cannot open data directory {}: {e}",
                        dir.display()
                    ))
                })?;
            let open = |t: Table| {
                db.keyspace(t.name(), KeyspaceCreateOptions::default)
                    .map_err(storage_err)
            };
            let tables = [
                open(Table::Meta)?,
                open(Table::Data)?,
                open(Table::Oplog)?,
                open(Table::Conflicts)?,
                open(Table::Tombstones)?,
                open(Table::LateWrites)?,
            ];
            Ok(Self { db, tables })
        }

        pub fn disk_usage(&self) -> Vec<(&'static str, u64)> {
            let mut out: Vec<(&'static str, u64)> = Table::ALL
                .iter()
                .map(|t| (t.name(), self.table(*t).disk_space()))
                .collect();
            let tables: u64 = out.iter().map(|(_, b)| b).sum();
            if let Ok(total) = self.db.disk_space() {
                out.push(("journal", total.saturating_sub(tables)));
            }
            out
        }

        fn table(&self, t: Table) -> &Keyspace {
            &self.tables[t as usize]
        }

        pub fn get(&self, t: Table, k: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(self
                .table(t)
                .get(k)
                .map_err(storage_err)?
                .map(|v| v.to_vec()))
        }

        pub fn commit(&self, batch: Vec<Mutation>, durable: bool) -> Result<()> {
            let mut b = self.db.batch().durability(Some(if durable {
                PersistMode::SyncAll
            } else {
                PersistMode::Buffer
            }));
            for m in batch {
                match m {
                    Mutation::Put(t, k, v) => b.insert(self.table(t), k, v),
                    Mutation::Delete(t, k) => b.remove(self.table(t), k),
                }
            }
            b.commit().map_err(storage_err)
        }

        pub fn range(
            &self,
            t: Table,
            start: &[u8],
            end: &[u8],
            limit: usize,
        ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            let mut out = Vec::new();
            for guard in self.table(t).range(start..end).take(limit) {
                let (k, v) = guard.into_inner().map_err(storage_err)?;
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(out)
        }

        pub fn last_in(
            &self,
            t: Table,
            start: &[u8],
            end: &[u8],
        ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
            match self.table(t).range(start..end).next_back() {
                Some(guard) => {
                    let (k, v) = guard.into_inner().map_err(storage_err)?;
                    Ok(Some((k.to_vec(), v.to_vec())))
                }
                None => Ok(None),
            }
        }
    }
}
