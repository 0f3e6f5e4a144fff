//! Storage engine choice benchmark: redb vs fjall, modelling atoll's group-commit writer.
//!
//! Run by hand: `cargo run --release -p atoll-bench --bin storage`
//! Results and interpretation: docs/benchmarks.md, section "Storage engine choice".
//!
//! Workload (one writer thread, like atoll's store):
//! * keyspace of 100k keys `user:<random u64>`, preloaded with ~150-byte records;
//! * a group commit takes N pending writes (N = 1, 16, 64, 256) and, in ONE atomic
//!   transaction/batch, for each write: reads the key's current record from the data
//!   table/keyspace, writes the new ~150-byte record, and appends a ~200-byte oplog entry
//!   keyed by the big-endian u64 sequence number to the oplog table/keyspace;
//! * the batch is then made durable with fsync:
//!   - redb: one `WriteTransaction` with `Durability::Immediate`, `commit()`;
//!   - fjall: one cross-keyspace `WriteBatch` with `durability(Some(PersistMode::SyncAll))`,
//!     `commit()` (journal write + fsync inside the commit).
//!
//! Reported latency is the whole group commit as a client in that group sees it
//! (reads + writes + commit + fsync). Afterwards: random point reads of existing keys
//! (each an independent GET: redb opens a read transaction per GET), and the on-disk size
//! after 200k writes into a fresh database.
//!
//! Every loop is bounded by a count and by wall-clock time.
//! Environment: `ATOLL_BENCH_SECS` (default 5) per measured phase,
//! `ATOLL_BENCH_DIR` (default /work/targets/benchdata) for the temp dirs (must be a real disk).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

const KEYSPACE: usize = 100_000;
const RECORD_LEN: usize = 150;
const OPLOG_LEN: usize = 200;
const BATCH_SIZES: [usize; 4] = [1, 16, 64, 256];
/// Upper bound on writes per measured group-commit phase (the time bound usually hits first).
const MAX_WRITES_PER_PHASE: usize = 400_000;
/// Upper bound on batches per measured group-commit phase.
const MAX_BATCHES_PER_PHASE: usize = 50_000;
const MAX_READS: usize = 1_000_000;
const SIZE_WRITES: usize = 200_000;
const SIZE_BATCH: usize = 256;
/// Hard time cap for the un-timed phases (preload, size run) so nothing can hang.
const SETUP_TIME_CAP: Duration = Duration::from_secs(120);
/// Same block/page cache budget for both engines (redb default is 1 GiB, fjall 32 MiB).
const CACHE_BYTES: usize = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Deterministic pseudo-random data (no extra dependencies)

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn fill_alnum(rng: &mut Rng, out: &mut [u8]) {
    for chunk in out.chunks_mut(8) {
        let r = rng.next();
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = ALNUM[((r >> (i * 8)) & 0xff) as usize % ALNUM.len()];
        }
    }
}

fn make_keys() -> Vec<Vec<u8>> {
    (0..KEYSPACE as u64)
        .map(|i| format!("user:{}", mix(i ^ 0x000A_7011)).into_bytes())
        .collect()
}

/// New state of a record: 8-byte big-endian version (old version + 1) followed by filler.
fn make_record(rng: &mut Rng, old: Option<&[u8]>, out: &mut Vec<u8>) -> u64 {
    let version = old
        .filter(|v| v.len() >= 8)
        .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap()) + 1)
        .unwrap_or(1);
    out.clear();
    out.extend_from_slice(&version.to_be_bytes());
    out.resize(RECORD_LEN, 0);
    fill_alnum(rng, &mut out[8..]);
    version
}

/// Oplog entry: key, version, record prefix, padded with filler to ~200 bytes.
fn make_oplog(rng: &mut Rng, key: &[u8], version: u64, record: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&record[..record.len().min(OPLOG_LEN - out.len())]);
    let start = out.len();
    out.resize(OPLOG_LEN, 0);
    fill_alnum(rng, &mut out[start..]);
}

fn version_of(v: &[u8]) -> u64 {
    if v.len() >= 8 {
        u64::from_be_bytes(v[..8].try_into().unwrap())
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------
// Engines

trait Engine: Sized {
    const NAME: &'static str;
    fn open(dir: &Path) -> Result<Self>;
    /// Insert `keys` (initial versions), not durable per batch; durable at the end.
    fn preload(&mut self, keys: &[Vec<u8>], rng: &mut Rng) -> Result<()>;
    /// One durable group commit of the writes to `batch` (indices into `keys`).
    fn group_commit(
        &mut self,
        keys: &[Vec<u8>],
        batch: &[usize],
        seq: &mut u64,
        rng: &mut Rng,
    ) -> Result<()>;
    /// Independent point read; returns the record's version.
    fn get(&self, key: &[u8]) -> Result<Option<u64>>;
    /// Bring the files to a settled state (flush/compact) for the size measurement.
    fn settle(&mut self) -> Result<()>;
}

mod redb_engine {
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

    const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
    const OPLOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("oplog");

    pub struct Redb {
        db: Database,
        rec: Vec<u8>,
        op: Vec<u8>,
    }

    impl Engine for Redb {
        const NAME: &'static str = "redb 4";

        fn open(dir: &Path) -> Result<Self> {
            let db = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(dir.join("atoll.redb"))?;
            let txn = db.begin_write()?;
            txn.open_table(DATA)?;
            txn.open_table(OPLOG)?;
            txn.commit()?;
            Ok(Self {
                db,
                rec: Vec::new(),
                op: Vec::new(),
            })
        }

        fn preload(&mut self, keys: &[Vec<u8>], rng: &mut Rng) -> Result<()> {
            let deadline = Instant::now() + SETUP_TIME_CAP;
            let chunks: Vec<_> = keys.chunks(5_000).collect();
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                anyhow::ensure!(Instant::now() < deadline, "preload exceeded time cap");
                let mut txn = self.db.begin_write()?;
                txn.set_durability(if i + 1 == n {
                    Durability::Immediate
                } else {
                    Durability::None
                })?;
                {
                    let mut data = txn.open_table(DATA)?;
                    for key in chunk {
                        make_record(rng, None, &mut self.rec);
                        data.insert(key.as_slice(), self.rec.as_slice())?;
                    }
                }
                txn.commit()?;
            }
            Ok(())
        }

        fn group_commit(
            &mut self,
            keys: &[Vec<u8>],
            batch: &[usize],
            seq: &mut u64,
            rng: &mut Rng,
        ) -> Result<()> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut data = txn.open_table(DATA)?;
                let mut oplog = txn.open_table(OPLOG)?;
                for &ki in batch {
                    let key = keys[ki].as_slice();
                    // Read current state (sees earlier writes of this same transaction).
                    let old_version = data.get(key)?.map(|g| version_of(g.value()));
                    let old = old_version.map(|v| v.to_be_bytes());
                    let version = make_record(rng, old.as_ref().map(|b| &b[..]), &mut self.rec);
                    data.insert(key, self.rec.as_slice())?;
                    *seq += 1;
                    make_oplog(rng, key, version, &self.rec, &mut self.op);
                    oplog.insert(&seq.to_be_bytes()[..], self.op.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        }

        fn get(&self, key: &[u8]) -> Result<Option<u64>> {
            let rtx = self.db.begin_read()?;
            let data = rtx.open_table(DATA)?;
            Ok(data.get(key)?.map(|g| version_of(g.value())))
        }

        fn settle(&mut self) -> Result<()> {
            self.db.compact()?;
            Ok(())
        }
    }
}

mod fjall_engine {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    /// `SyncAll` (fsync) by default; `ATOLL_FJALL_SYNC=data` selects `SyncData` (fdatasync),
    /// which is what redb's `Durability::Immediate` uses.
    fn sync_mode() -> PersistMode {
        match std::env::var("ATOLL_FJALL_SYNC").as_deref() {
            Ok("data") => PersistMode::SyncData,
            _ => PersistMode::SyncAll,
        }
    }

    pub struct Fjall {
        db: Database,
        data: Keyspace,
        oplog: Keyspace,
        rec: Vec<u8>,
        op: Vec<u8>,
        /// Versions written earlier in the current batch: a plain `WriteBatch` has no
        /// read-your-writes, so the single writer keeps this overlay (as atoll would have to).
        overlay: HashMap<usize, u64>,
    }

    impl Engine for Fjall {
        const NAME: &'static str = "fjall 3";

        fn open(dir: &Path) -> Result<Self> {
            let db = Database::builder(dir)
                .cache_size(CACHE_BYTES as u64)
                .open()?;
            let data = db.keyspace("data", KeyspaceCreateOptions::default)?;
            let oplog = db.keyspace("oplog", KeyspaceCreateOptions::default)?;
            Ok(Self {
                db,
                data,
                oplog,
                rec: Vec::new(),
                op: Vec::new(),
                overlay: HashMap::new(),
            })
        }

        fn preload(&mut self, keys: &[Vec<u8>], rng: &mut Rng) -> Result<()> {
            let deadline = Instant::now() + SETUP_TIME_CAP;
            for chunk in keys.chunks(5_000) {
                anyhow::ensure!(Instant::now() < deadline, "preload exceeded time cap");
                let mut b = self.db.batch();
                for key in chunk {
                    make_record(rng, None, &mut self.rec);
                    b.insert(&self.data, key.as_slice(), self.rec.as_slice());
                }
                b.commit()?;
            }
            self.db.persist(PersistMode::SyncAll)?;
            Ok(())
        }

        fn group_commit(
            &mut self,
            keys: &[Vec<u8>],
            batch: &[usize],
            seq: &mut u64,
            rng: &mut Rng,
        ) -> Result<()> {
            self.overlay.clear();
            let mut b = self.db.batch().durability(Some(sync_mode()));
            for &ki in batch {
                let key = keys[ki].as_slice();
                let old_version = match self.overlay.get(&ki) {
                    Some(v) => Some(*v),
                    None => self.data.get(key)?.map(|v| version_of(&v)),
                };
                let old = old_version.map(|v| v.to_be_bytes());
                let version = make_record(rng, old.as_ref().map(|b| &b[..]), &mut self.rec);
                self.overlay.insert(ki, version);
                b.insert(&self.data, key, self.rec.as_slice());
                *seq += 1;
                make_oplog(rng, key, version, &self.rec, &mut self.op);
                b.insert(&self.oplog, seq.to_be_bytes(), self.op.as_slice());
            }
            // Atomic across both keyspaces; journal write + fsync (SyncAll) before returning.
            b.commit()?;
            Ok(())
        }

        fn get(&self, key: &[u8]) -> Result<Option<u64>> {
            Ok(self.data.get(key)?.map(|v| version_of(&v)))
        }

        fn settle(&mut self) -> Result<()> {
            // Flush memtables to tables so the journal can be dropped (doc-hidden but public API).
            self.data.rotate_memtable_and_wait()?;
            self.oplog.rotate_memtable_and_wait()?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while (self.db.journal_count() > 1 || self.db.active_compactions() > 0)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.db.persist(PersistMode::SyncAll)?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurement

struct CommitResult {
    batch: usize,
    batches: u64,
    writes: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

struct ReadResult {
    reads: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
}

struct SizeResult {
    writes: u64,
    after_close: u64,
    settled: u64,
}

struct EngineResult {
    name: &'static str,
    commits: Vec<CommitResult>,
    reads: Option<ReadResult>,
    size: Option<SizeResult>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn tempdir(base: &Path, name: &str) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(base)?;
    tempfile::Builder::new()
        .prefix(&format!("storage-{name}-"))
        .tempdir_in(base)
        .with_context(|| format!("tempdir in {}", base.display()))
}

/// Allocated bytes (like `du`) of everything under `dir`.
fn disk_usage(dir: &Path) -> Result<u64> {
    disk_usage_filtered(dir, |_| false)
}

/// Allocated bytes of the files under `dir` for which `skip` is false.
fn disk_usage_filtered(dir: &Path, skip: impl Fn(&Path) -> bool) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    while let Some(d) = stack.pop() {
        visited += 1;
        anyhow::ensure!(visited < 100_000, "too many directories");
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let md = entry.metadata()?;
            if md.is_dir() {
                stack.push(entry.path());
            } else if !skip(&entry.path()) {
                total += md.blocks() * 512;
            }
        }
    }
    Ok(total)
}

fn run_commit_phase<E: Engine>(
    engine: &mut E,
    keys: &[Vec<u8>],
    n: usize,
    phase: Duration,
    seq: &mut u64,
    rng: &mut Rng,
) -> Result<CommitResult> {
    let max_batches = (MAX_WRITES_PER_PHASE / n).min(MAX_BATCHES_PER_PHASE) as u64;
    let mut hist = new_hist();
    let mut batch = vec![0usize; n];
    let start = Instant::now();
    let mut batches = 0u64;
    while batches < max_batches && start.elapsed() < phase {
        for slot in batch.iter_mut() {
            *slot = rng.below(keys.len());
        }
        let t = Instant::now();
        engine.group_commit(keys, &batch, seq, rng)?;
        hist.record(t.elapsed().as_nanos() as u64).ok();
        batches += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(CommitResult {
        batch: n,
        batches,
        writes: batches * n as u64,
        secs,
        p50_us: hist.value_at_quantile(0.50) / 1_000,
        p99_us: hist.value_at_quantile(0.99) / 1_000,
        max_us: hist.max() / 1_000,
    })
}

fn run_reads<E: Engine>(
    engine: &E,
    keys: &[Vec<u8>],
    phase: Duration,
    rng: &mut Rng,
) -> Result<ReadResult> {
    let mut hist = new_hist();
    let start = Instant::now();
    let mut reads = 0u64;
    let mut checksum = 0u64;
    while (reads as usize) < MAX_READS && start.elapsed() < phase {
        let key = &keys[rng.below(keys.len())];
        let t = Instant::now();
        let v = engine.get(key)?.context("preloaded key missing")?;
        hist.record(t.elapsed().as_nanos() as u64).ok();
        checksum = checksum.wrapping_add(v);
        reads += 1;
    }
    std::hint::black_box(checksum);
    Ok(ReadResult {
        reads,
        secs: start.elapsed().as_secs_f64(),
        p50_us: hist.value_at_quantile(0.50) as f64 / 1_000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1_000.0,
    })
}

/// One group-commit cell: fresh database, preload, measured group commits; with `reads`,
/// point reads right after the load.
fn bench_commit_cell<E: Engine>(
    base: &Path,
    keys: &[Vec<u8>],
    n: usize,
    phase: Duration,
    reads: bool,
    rng: &mut Rng,
) -> Result<(CommitResult, Option<ReadResult>)> {
    let dir = tempdir(base, "commit")?;
    let mut engine = E::open(dir.path())?;
    engine.preload(keys, rng)?;
    let mut seq = 0u64;
    let c = run_commit_phase(&mut engine, keys, n, phase, &mut seq, rng)?;
    eprintln!(
        "  {:<8} N={:<3} {:>6} batches {:>7} writes in {:.2}s  p50 {}us p99 {}us max {}us  (load {})",
        E::NAME,
        n,
        c.batches,
        c.writes,
        c.secs,
        c.p50_us,
        c.p99_us,
        c.max_us,
        loadavg()
    );
    let r = if reads {
        let r = run_reads(&engine, keys, phase, rng)?;
        eprintln!(
            "  {:<8} reads: {} in {:.2}s p50 {:.2}us p99 {:.2}us",
            E::NAME,
            r.reads,
            r.secs,
            r.p50_us,
            r.p99_us
        );
        Some(r)
    } else {
        None
    };
    Ok((c, r))
}

/// On-disk size: fresh database, 200k writes through the group-commit path (N=256).
fn bench_size<E: Engine>(base: &Path, keys: &[Vec<u8>], rng: &mut Rng) -> Result<SizeResult> {
    let dir = tempdir(base, "size")?;
    let mut engine = E::open(dir.path())?;
    let mut seq = 0u64;
    let mut batch = vec![0usize; SIZE_BATCH];
    let start = Instant::now();
    let mut writes = 0u64;
    while (writes as usize) < SIZE_WRITES && start.elapsed() < SETUP_TIME_CAP {
        for slot in batch.iter_mut() {
            *slot = rng.below(keys.len());
        }
        engine.group_commit(keys, &batch, &mut seq, rng)?;
        writes += SIZE_BATCH as u64;
    }
    drop(engine);
    let after_close = disk_usage(dir.path())?;
    let mut engine = E::open(dir.path())?;
    engine.settle()?;
    drop(engine);
    // fjall's active journal (0.jnl) is only reclaimed once it is rotated (at the latest when it
    // reaches max_journaling_size, 512 MiB by default), so "settled" excludes journal files.
    let settled = disk_usage_filtered(dir.path(), |p| p.extension().is_some_and(|e| e == "jnl"))?;
    eprintln!(
        "  {:<8} size after {} writes: {} bytes (closed), {} bytes (settled)",
        E::NAME,
        writes,
        after_close,
        settled
    );
    Ok(SizeResult {
        writes,
        after_close,
        settled,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Filesystem floor: 4 KiB write + fdatasync, (a) overwriting in place, (b) appending.
/// Returns (p50 µs in place, p50 µs append).
fn fsync_floor(base: &Path) -> Result<(u64, u64)> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let dir = tempdir(base, "fsync")?;
    let block = [0x5au8; 4096];
    let mut res = [0u64; 2];
    for (mode, out) in res.iter_mut().enumerate() {
        let mut f = std::fs::File::create(dir.path().join(format!("f{mode}")))?;
        if mode == 0 {
            for _ in 0..64 {
                f.write_all(&block)?;
            }
            f.sync_all()?;
        }
        let mut hist = new_hist();
        let start = Instant::now();
        for i in 0..200u64 {
            if start.elapsed() > Duration::from_secs(3) {
                break;
            }
            let t = Instant::now();
            if mode == 0 {
                f.write_all_at(&block, (i % 64) * 4096)?;
            } else {
                f.write_all(&block)?;
            }
            f.sync_data()?;
            hist.record(t.elapsed().as_nanos() as u64).ok();
        }
        *out = hist.value_at_quantile(0.5) / 1_000;
    }
    Ok(res.into())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn print_tables(results: &[EngineResult], phase: Duration) {
    println!(
        "\n### Durable group commit (read + write + oplog append per write, fsync per batch; ≤{}s or ≤{} writes per cell)\n",
        phase.as_secs(),
        MAX_WRITES_PER_PHASE
    );
    println!(
        "| engine | batch N | durable batches/s | writes/s | commit p50 (µs) | commit p99 (µs) | max (µs) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for e in results {
        for c in &e.commits {
            println!(
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} |",
                e.name,
                c.batch,
                c.batches as f64 / c.secs,
                c.writes as f64 / c.secs,
                c.p50_us,
                c.p99_us,
                c.max_us
            );
        }
    }
    println!(
        "\n### Point reads of random existing keys (single thread, after the N=256 load) and on-disk size\n"
    );
    println!(
        "| engine | reads/s | read p50 (µs) | read p99 (µs) | writes for size | size, closed (MiB) | size after flush/compact, excl. journal (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for e in results {
        let (Some(reads), Some(size)) = (&e.reads, &e.size) else {
            continue;
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {}k | {:.1} | {:.1} |",
            e.name,
            reads.reads as f64 / reads.secs,
            reads.p50_us,
            reads.p99_us,
            size.writes / 1000,
            mib(size.after_close),
            mib(size.settled)
        );
    }
}

fn main() -> Result<()> {
    let secs: u64 = std::env::var("ATOLL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .clamp(1, 60);
    let phase = Duration::from_secs(secs);
    let base = PathBuf::from(
        std::env::var("ATOLL_BENCH_DIR").unwrap_or_else(|_| "/work/targets/benchdata".into()),
    );
    eprintln!(
        "storage bench: {}s per phase, data under {}, load {}",
        secs,
        base.display(),
        loadavg()
    );
    let load_start = loadavg();
    let keys = make_keys();
    let floor = fsync_floor(&base)?;
    eprintln!(
        "  fsync floor: 4KiB in-place write+fdatasync p50 {}us, append+fdatasync p50 {}us",
        floor.0, floor.1
    );

    let mut rng_r = Rng(0xA7011);
    let mut rng_f = Rng(0xA7011);
    let mut redb = EngineResult {
        name: redb_engine::Redb::NAME,
        commits: Vec::new(),
        reads: None,
        size: None,
    };
    let mut fjall = EngineResult {
        name: fjall_engine::Fjall::NAME,
        commits: Vec::new(),
        reads: None,
        size: None,
    };
    // Engines alternate per cell so that drifting background load hits both alike.
    for (i, &n) in BATCH_SIZES.iter().enumerate() {
        let last = i + 1 == BATCH_SIZES.len();
        let (c, r) =
            bench_commit_cell::<redb_engine::Redb>(&base, &keys, n, phase, last, &mut rng_r)?;
        redb.commits.push(c);
        redb.reads = redb.reads.or(r);
        let (c, r) =
            bench_commit_cell::<fjall_engine::Fjall>(&base, &keys, n, phase, last, &mut rng_f)?;
        fjall.commits.push(c);
        fjall.reads = fjall.reads.or(r);
    }
    redb.size = Some(bench_size::<redb_engine::Redb>(&base, &keys, &mut rng_r)?);
    fjall.size = Some(bench_size::<fjall_engine::Fjall>(&base, &keys, &mut rng_f)?);

    print_tables(&[redb, fjall], phase);
    println!(
        "\nfsync floor on this filesystem (4 KiB write + fdatasync, p50): in place {} µs, append {} µs; load average at start {}, at end {}",
        floor.0,
        floor.1,
        load_start,
        loadavg()
    );
    Ok(())
}
