//! The region's durable store.
//!
//! - [`backend`]: the storage trait (atomic multi-table batches with fsync) and its fjall adapter.
//! - [`keys`]: how data, operation-log, conflict and metadata keys are laid out.
//! - [`store`]: the [`Store`]: validation, the single writer thread with group commit, reads.
//!
//! Every acknowledged write has been merged into its key's state and appended to the operation
//! log in one atomic batch that was fsynced before the acknowledgement. Concurrent writers share
//! one fsync (group commit).

pub mod backend;
pub mod keys;
pub mod store;

pub use store::{
    BootstrapProgress, ConflictRecord, LateWriteRecord, MaintenanceOutcome, OpsObserver,
    RemoteOutcome, RemovedBy, RemovedRegion, Store, StoreOptions, StoreStats, TRUNCATE_PER_PASS,
    Watermark, WriteGate, WriteOutcome, read_applied,
};
