//! openraft's state machine over the caller's byte-level [`StateMachine`]: applies committed
//! commands, builds and installs snapshots (persisted in the [`Store`]), and publishes every
//! applied state on a watch channel.

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EmptyNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use tokio::sync::watch;

use crate::error::ControlError;
use crate::store::{Store, StoredSnapshot, blocking};
use crate::wire::TypeConfig;
use crate::{NodeId, StateMachine};

/// A state of the replicated state machine, as published after every apply and every snapshot
/// install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Log index of the last entry applied (0 also before anything is: index 0 is the group's
    /// initial membership entry, which changes no state).
    pub index: u64,
    /// Term of the last entry applied (0 before anything is).
    pub term: u64,
    /// The whole state, as [`StateMachine::snapshot`] gives it; empty when
    /// [`crate::ControlOptions::publish_state`] is off (the caller reads its state machine
    /// itself).
    pub state: Vec<u8>,
}

pub(crate) struct Machine {
    sm: Box<dyn StateMachine>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, EmptyNode>,
    store: Store,
    applied: watch::Sender<Applied>,
    snapshot_seq: u64,
    /// Whether [`Applied::state`] carries the whole state (else it is empty).
    publish_state: bool,
}

fn applied_of(last: Option<&LogId<NodeId>>, sm: &dyn StateMachine, publish_state: bool) -> Applied {
    Applied {
        index: last.map_or(0, |l| l.index),
        term: last.map_or(0, |l| l.leader_id.term),
        state: if publish_state {
            sm.snapshot()
        } else {
            Vec::new()
        },
    }
}

impl Machine {
    /// The state machine restored from the store's snapshot (if any), and the receiver of its
    /// applied states.
    pub fn restore(
        mut sm: Box<dyn StateMachine>,
        store: Store,
        snapshot: Option<StoredSnapshot>,
        publish_state: bool,
    ) -> Result<(Self, watch::Receiver<Applied>), ControlError> {
        let (last_applied, membership) = match snapshot {
            Some(s) => {
                sm.restore(&s.data).map_err(|e| {
                    ControlError::Corrupt(format!("the stored snapshot does not restore: {e}"))
                })?;
                (s.meta.last_log_id, s.meta.last_membership)
            }
            None => (None, StoredMembership::default()),
        };
        let (tx, rx) = watch::channel(applied_of(
            last_applied.as_ref(),
            sm.as_ref(),
            publish_state,
        ));
        Ok((
            Self {
                sm,
                last_applied,
                membership,
                store,
                applied: tx,
                snapshot_seq: 0,
                publish_state,
            },
            rx,
        ))
    }

    fn publish(&self) {
        self.applied.send_replace(applied_of(
            self.last_applied.as_ref(),
            self.sm.as_ref(),
            self.publish_state,
        ));
    }
}

pub(crate) struct SnapshotBuilder {
    store: Store,
    snapshot: StoredSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let store = self.store.clone();
        let snap = self.snapshot.clone();
        let saved = blocking(move || store.save_snapshot(&snap))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, openraft::AnyError::new(&e)))?;
        tracing::debug!(
            snapshot = %self.snapshot.meta.snapshot_id,
            saved,
            bytes = self.snapshot.data.len(),
            "control snapshot built"
        );
        Ok(Snapshot {
            meta: self.snapshot.meta.clone(),
            snapshot: Box::new(self.snapshot.data.clone()),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, EmptyNode>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<u8>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            let resp = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(cmd) => self.sm.apply(&cmd),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
            };
            self.last_applied = Some(entry.log_id);
            out.push(resp);
        }
        if !out.is_empty() {
            self.publish();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let id = match &self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_seq),
            None => format!("none-{}", self.snapshot_seq),
        };
        SnapshotBuilder {
            store: self.store.clone(),
            snapshot: StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: self.last_applied,
                    last_membership: self.membership.clone(),
                    snapshot_id: id,
                },
                data: self.sm.snapshot(),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError<NodeId>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, EmptyNode>,
        snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Restore first: a snapshot that does not restore is never stored.
        if let Err(e) = self.sm.restore(&snapshot) {
            tracing::error!(
                snapshot = %meta.snapshot_id,
                error = %e,
                "the leader's snapshot does not restore into this member's state machine"
            );
            return Err(StorageIOError::read_snapshot(
                Some(meta.signature()),
                openraft::AnyError::error(e),
            )
            .into());
        }
        let store = self.store.clone();
        let snap = StoredSnapshot {
            meta: meta.clone(),
            data: *snapshot,
        };
        blocking(move || store.save_snapshot(&snap))
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::new(&e))
            })?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish();
        tracing::info!(snapshot = %meta.snapshot_id, "control snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let store = self.store.clone();
        let snap = blocking(move || store.load_snapshot())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, openraft::AnyError::new(&e)))?;
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(s.data),
        }))
    }
}
