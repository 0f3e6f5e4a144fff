//! Keyspace policies, the per-key replicated state, client intents, and the operation log entry.
//!
//! Replication is delta-state: a local write turns a client [`Intent`] into a *delta*, a small
//! [`KeyState`] that holds only what the write changed. The delta is merged into the stored state
//! and appended to the operation log in the same atomic batch. A peer applies a delta by merging it
//! too, so applying is idempotent and the order in which deltas arrive does not matter.

use crate::causal::CausalContext;
use crate::crdt::lww::{LwwConflict, LwwRegister};
use crate::crdt::mvr::MvRegister;
use crate::crdt::orset::OrSet;
use crate::crdt::pncounter::PnCounter;
use crate::error::{AtollError, Result};
use crate::hlc::Timestamp;
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How concurrent writes to one keyspace are reconciled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Last writer wins by hybrid-logical-clock timestamp; losers go to the conflict ledger.
    Lww,
    /// Multi-value register: concurrent writes are kept as siblings.
    Mvr,
    /// PN-counter.
    Counter,
    /// Add-wins observed-remove set.
    Set,
    /// Region ownership (`docs/design/owned-keyspaces.md`): every key has one home region that
    /// alone writes it, so writes never conflict. Stored as an lww register ([`Policy::storage`]).
    Owned,
    /// Linearizable registers with compare-and-set by revision, replicated by consensus (the
    /// strong group, `docs/design/strong-keyspaces.md`); never in the CRDT store or its log.
    Strong,
}

impl Policy {
    pub const ALL: [Policy; 6] = [
        Policy::Lww,
        Policy::Mvr,
        Policy::Counter,
        Policy::Set,
        Policy::Owned,
        Policy::Strong,
    ];

    /// The CRDT a key of this policy is stored and replicated as: an owned key is an lww register
    /// (its single writer makes every write newer than the last).
    pub fn storage(self) -> Policy {
        match self {
            Policy::Owned => Policy::Lww,
            p => p,
        }
    }

    /// Whether the key/value API (`/v1/kv`) serves this policy.
    pub fn is_register(self) -> bool {
        matches!(self.storage(), Policy::Lww | Policy::Mvr)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Lww => "lww",
            Policy::Mvr => "mvr",
            Policy::Counter => "counter",
            Policy::Set => "set",
            Policy::Owned => "owned",
            Policy::Strong => "strong",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The replicated state of one key (and, for a delta, the part of it one write changed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Lww(LwwRegister),
    Mvr(MvRegister),
    Counter(PnCounter),
    Set(OrSet),
}

impl KeyState {
    pub fn policy(&self) -> Policy {
        match self {
            KeyState::Lww(_) => Policy::Lww,
            KeyState::Mvr(_) => Policy::Mvr,
            KeyState::Counter(_) => Policy::Counter,
            KeyState::Set(_) => Policy::Set,
        }
    }

    /// Merges `other` into `self`. Returns the LWW conflict this merge resolved, if any.
    /// Merging states of different policies is corruption and changes nothing.
    pub fn merge(&mut self, other: &KeyState) -> Result<Option<LwwConflict>> {
        use crate::crdt::Crdt;
        match (self, other) {
            (KeyState::Lww(a), KeyState::Lww(b)) => Ok(a.merge_report(b)),
            (KeyState::Mvr(a), KeyState::Mvr(b)) => {
                a.merge(b);
                Ok(None)
            }
            (KeyState::Counter(a), KeyState::Counter(b)) => {
                a.merge(b);
                Ok(None)
            }
            (KeyState::Set(a), KeyState::Set(b)) => {
                a.merge(b);
                Ok(None)
            }
            (a, b) => Err(AtollError::Corrupt(format!(
                "cannot merge a {} state with a {} state",
                a.policy(),
                b.policy()
            ))),
        }
    }
}

/// What a client asked for, before it is turned into a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Write a value (lww, mvr). For mvr, `context` is what the client read; `None` adds a sibling.
    Put {
        value: Vec<u8>,
        context: Option<CausalContext>,
    },
    /// Delete (lww, mvr): leaves a tombstone.
    Delete { context: Option<CausalContext> },
    /// Add `delta` (may be negative) to a counter.
    CounterAdd { delta: i64 },
    /// Add and remove set members.
    SetUpdate {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

impl Intent {
    fn name(&self) -> &'static str {
        match self {
            Intent::Put { .. } => "put",
            Intent::Delete { .. } => "delete",
            Intent::CounterAdd { .. } => "counter increments",
            Intent::SetUpdate { .. } => "set updates",
        }
    }

    fn fits(&self, policy: Policy) -> bool {
        matches!(
            (self, policy.storage()),
            (
                Intent::Put { .. } | Intent::Delete { .. },
                Policy::Lww | Policy::Mvr
            ) | (Intent::CounterAdd { .. }, Policy::Counter)
                | (Intent::SetUpdate { .. }, Policy::Set)
        )
    }
}

/// Turns a local write into the delta to merge and replicate. `current` is the key's stored state
/// (`None` if never written), `region` the local region and `ts` a fresh HLC timestamp.
pub fn prepare(
    keyspace: &str,
    policy: Policy,
    intent: &Intent,
    current: Option<&KeyState>,
    region: &RegionId,
    ts: Timestamp,
) -> Result<KeyState> {
    if policy == Policy::Strong {
        // Served by the strong group, never by the local store (nothing of it is merged).
        return Err(AtollError::WrongPolicy {
            keyspace: keyspace.to_string(),
            policy: policy.to_string(),
            operation: format!(
                "{} through the region's store (a strong keyspace is served by the strong group: /v1/kv/{keyspace}/...)",
                intent.name()
            ),
        });
    }
    if !intent.fits(policy) {
        return Err(AtollError::WrongPolicy {
            keyspace: keyspace.to_string(),
            policy: policy.to_string(),
            operation: intent.name().to_string(),
        });
    }
    let storage = policy.storage();
    if let Some(cur) = current
        && cur.policy() != storage
    {
        return Err(AtollError::Corrupt(format!(
            "key in keyspace `{keyspace}` holds {} state but the keyspace is {policy}",
            cur.policy()
        )));
    }
    Ok(match (storage, intent, current) {
        (Policy::Lww, Intent::Put { value, .. }, cur) => {
            let cur = match cur {
                Some(KeyState::Lww(r)) => Some(r),
                _ => None,
            };
            KeyState::Lww(LwwRegister::write(cur, region, ts, Some(value.clone())))
        }
        (Policy::Lww, Intent::Delete { .. }, cur) => {
            let cur = match cur {
                Some(KeyState::Lww(r)) => Some(r),
                _ => None,
            };
            KeyState::Lww(LwwRegister::write(cur, region, ts, None))
        }
        (Policy::Mvr, Intent::Put { value, context }, cur) => {
            mvr_write(cur, context.as_ref(), region, ts, Some(value.clone()))
        }
        (Policy::Mvr, Intent::Delete { context }, cur) => {
            mvr_write(cur, context.as_ref(), region, ts, None)
        }
        (Policy::Counter, Intent::CounterAdd { delta }, cur) => {
            let cur = match cur {
                Some(KeyState::Counter(c)) => Some(c),
                _ => None,
            };
            KeyState::Counter(PnCounter::add(cur, region, *delta)?)
        }
        (Policy::Set, Intent::SetUpdate { add, remove }, cur) => {
            let cur = match cur {
                Some(KeyState::Set(s)) => Some(s),
                _ => None,
            };
            KeyState::Set(OrSet::update(cur, region, add, remove))
        }
        _ => {
            return Err(AtollError::WrongPolicy {
                keyspace: keyspace.to_string(),
                policy: policy.to_string(),
                operation: intent.name().to_string(),
            });
        }
    })
}

fn mvr_write(
    current: Option<&KeyState>,
    context: Option<&CausalContext>,
    region: &RegionId,
    ts: Timestamp,
    value: Option<Vec<u8>>,
) -> KeyState {
    let cur = match current {
        Some(KeyState::Mvr(r)) => Some(r),
        _ => None,
    };
    // Delete markers the region holds are superseded by every new local write: they carry no
    // value, and keeping them would let markers pile up under writes made without a context.
    let mut seen = context.cloned().unwrap_or_default();
    for s in cur.iter().flat_map(|r| &r.siblings) {
        if s.value.is_none() {
            seen.insert(s.dot.clone());
        }
    }
    KeyState::Mvr(MvRegister::write(cur, &seen, region, ts, value))
}

/// One entry of a region's operation log: what replication streams to peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEntry {
    /// The region where the write was accepted.
    pub origin: RegionId,
    /// Per-origin sequence number, starting at 1, without gaps.
    pub seq: u64,
    /// HLC timestamp of the write at its origin.
    pub ts: Timestamp,
    pub keyspace: String,
    pub key: Vec<u8>,
    /// The delta to merge into the key's state.
    pub delta: KeyState,
    /// The write lease's epoch the write was stamped under (`docs/design/fencing.md`); 0 when
    /// the cluster has no lease (active-active). Added in encoding version 2; version-1 entries
    /// read as epoch 0.
    pub epoch: u64,
}

/// [`OpEntry`] as encoding version 1 wrote it (no epoch).
#[derive(Deserialize)]
pub(crate) struct OpEntryV1 {
    origin: RegionId,
    seq: u64,
    ts: Timestamp,
    keyspace: String,
    key: Vec<u8>,
    delta: KeyState,
}

impl From<OpEntryV1> for OpEntry {
    fn from(e: OpEntryV1) -> Self {
        OpEntry {
            origin: e.origin,
            seq: e.seq,
            ts: e.ts,
            keyspace: e.keyspace,
            key: e.key,
            delta: e.delta,
            epoch: 0,
        }
    }
}
