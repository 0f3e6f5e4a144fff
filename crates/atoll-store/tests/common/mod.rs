//! Test support: a backend that runs hooks before reads and commits (to inject failures or hold
//! a commit open) and otherwise passes everything to the backend it wraps.

use atoll_core::Result;
use atoll_store::backend::{Backend, Mutation, Table};
use std::sync::Arc;

type ReadHook = Box<dyn Fn(Table, &[u8]) -> Result<()> + Send + Sync>;
type CommitHook = Box<dyn Fn(&[Mutation], bool) -> Result<()> + Send + Sync>;

/// Wraps a backend; a hook that returns an error makes the read or commit fail with it.
pub struct Hooked {
    inner: Arc<dyn Backend>,
    before_read: Option<ReadHook>,
    before_commit: Option<CommitHook>,
}

impl Hooked {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            before_read: None,
            before_commit: None,
        }
    }

    /// Runs `hook` before every point read.
    #[allow(dead_code)]
    pub fn before_read(
        mut self,
        hook: impl Fn(Table, &[u8]) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.before_read = Some(Box::new(hook));
        self
    }

    /// Runs `hook` before every commit.
    #[allow(dead_code)]
    pub fn before_commit(
        mut self,
        hook: impl Fn(&[Mutation], bool) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.before_commit = Some(Box::new(hook));
        self
    }
}

impl Backend for Hooked {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(h) = &self.before_read {
            h(table, key)?;
        }
        self.inner.get(table, key)
    }
    fn commit(&self, batch: Vec<Mutation>, durable: bool) -> Result<()> {
        if let Some(h) = &self.before_commit {
            h(&batch, durable)?;
        }
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
}

/// Whether a batch carries an operation-log entry (a write, local or replicated).
#[allow(dead_code)]
pub fn carries_op(batch: &[Mutation]) -> bool {
    batch
        .iter()
        .any(|m| matches!(m, Mutation::Put(Table::Oplog, _, _)))
}
