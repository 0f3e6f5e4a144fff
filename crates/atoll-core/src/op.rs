//! Keyspace policies, the per-key replicated state, client intents, and the operation log entry.
//!
//! Replication is delta-state: a local write turns a client [`Intent`] into a *delta*, a small
//! [`KeyState`] that holds only what the write changed. The delta is merged into the stored state
//! and appended to the operation log in the same atomic batch. A peer applies a delta by merging it
//! too, so applying is idempotent and the order in which deltas arrive does not matter.

use crate::causal::CausalContext;
use crate::crdt::lww::{LwwConflict, LwwRegister};
use crate::crdt::mvr::{MvRegister, MvRegisterV3};
use crate::crdt::orset::OrSet;
use crate::crdt::pncounter::PnCounter;
use crate::crdt::ratewindow::{RateRule, RateWindows};
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
    /// Windowed rate limits (`docs/design/rate-limits.md`): each key counts the cost every
    /// region admitted per time window; a request is admitted while the count is under the
    /// keyspace's limit.
    #[serde(rename = "ratelimit")]
    RateLimit,
}

impl Policy {
    pub const ALL: [Policy; 7] = [
        Policy::Lww,
        Policy::Mvr,
        Policy::Counter,
        Policy::Set,
        Policy::Owned,
        Policy::Strong,
        Policy::RateLimit,
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
            Policy::RateLimit => "ratelimit",
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
    /// Added in encoding version 3 (a new variant: older records never hold it).
    RateLimit(RateWindows),
}

impl KeyState {
    pub fn policy(&self) -> Policy {
        match self {
            KeyState::Lww(_) => Policy::Lww,
            KeyState::Mvr(_) => Policy::Mvr,
            KeyState::Counter(_) => Policy::Counter,
            KeyState::Set(_) => Policy::Set,
            KeyState::RateLimit(_) => Policy::RateLimit,
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
            (KeyState::RateLimit(a), KeyState::RateLimit(b)) => {
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

/// How long a written value lives (`docs/design/expiring-keys.md`): lww and owned values, mvr
/// siblings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ttl {
    /// The keyspace's `default_ttl` (never expires when it has none).
    #[default]
    Default,
    /// Never expires, whatever the keyspace's default.
    Never,
    /// Expires this many milliseconds after the write's timestamp (at least 1).
    After(u64),
    /// Expires at this instant (milliseconds since the Unix epoch; RESP `EXAT`/`PXAT`).
    At(u64),
    /// Keeps the expiry the live value has (none if the key is absent or expired; RESP `KEEPTTL`).
    Keep,
}

/// Longest time to live a write may ask for: 100 years.
pub const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// What a client asked for, before it is turned into a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Write a value (lww, mvr). For mvr, `context` is what the client read; `None` adds a sibling.
    /// `ttl`: when the value expires (for mvr, the new sibling; [`Ttl::Keep`] is refused there).
    Put {
        value: Vec<u8>,
        context: Option<CausalContext>,
        ttl: Ttl,
    },
    /// Give a live lww value a new expiry (`Some`: RESP `EXPIRE`) or none (`None`: `PERSIST`),
    /// keeping its value: a new write of the same value. An absent or expired key is
    /// [`AtollError::NotFound`]. (Callers that answer "nothing to persist" read first: a
    /// `PERSIST` of a key without expiry still writes.)
    Expire { ttl: Option<Ttl> },
    /// Delete (lww, mvr): leaves a tombstone.
    Delete { context: Option<CausalContext> },
    /// Add `delta` (may be negative) to a counter.
    CounterAdd { delta: i64 },
    /// Add and remove set members.
    SetUpdate {
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// A request of `cost` (at least 1) against a `ratelimit` keyspace's limit: recorded if
    /// admitted, refused with [`AtollError::RateLimited`] (nothing written) if not.
    Admit { cost: u64 },
}

impl Intent {
    fn name(&self) -> &'static str {
        match self {
            Intent::Put { .. } => "put",
            Intent::Expire { .. } => "expire",
            Intent::Delete { .. } => "delete",
            Intent::CounterAdd { .. } => "counter increments",
            Intent::SetUpdate { .. } => "set updates",
            Intent::Admit { .. } => "rate-limit requests",
        }
    }

    fn fits(&self, policy: Policy) -> bool {
        matches!(
            (self, policy.storage()),
            (
                Intent::Put { .. } | Intent::Delete { .. },
                Policy::Lww | Policy::Mvr
            ) | (Intent::Expire { .. }, Policy::Lww)
                | (Intent::Admit { .. }, Policy::RateLimit)
                | (Intent::CounterAdd { .. }, Policy::Counter)
                | (Intent::SetUpdate { .. }, Policy::Set)
        )
    }
}

/// Where and when a local write is made: what [`prepare`] needs besides the intent.
#[derive(Clone, Copy, Debug)]
pub struct WriteAt<'a> {
    pub keyspace: &'a str,
    pub policy: Policy,
    /// The keyspace's `default_ttl` in milliseconds (lww, owned and mvr).
    pub default_ttl_ms: Option<u64>,
    /// The local region.
    pub region: &'a RegionId,
    /// A fresh HLC timestamp for the write.
    pub ts: Timestamp,
    /// The region's physical clock: what judges whether the current value has expired
    /// ([`Ttl::Keep`], [`Intent::Expire`]); never the HLC (`docs/design/expiring-keys.md`).
    pub now_ms: u64,
    /// A `ratelimit` keyspace's rule (its window is chosen by `ts`, the HLC time).
    pub rate: Option<&'a RateRule>,
}

/// The expiry instant a write at `at` gives its value, `current` being the key's stored register.
fn expiry(at: &WriteAt<'_>, ttl: Ttl, current: Option<&LwwRegister>) -> Result<Option<u64>> {
    let bad = |what: String| {
        Err(AtollError::BadRequest(format!(
            "{what} (keyspace `{}`): a time to live is at least 1 ms and at most 100 years",
            at.keyspace
        )))
    };
    match ttl {
        Ttl::Default => Ok(at.default_ttl_ms.map(|d| at.ts.wall_ms.saturating_add(d))),
        Ttl::Never => Ok(None),
        Ttl::After(0) => bad("a time to live of 0".into()),
        Ttl::After(ms) if ms > MAX_TTL_MS => bad(format!("a time to live of {ms} ms")),
        Ttl::After(ms) => Ok(Some(at.ts.wall_ms.saturating_add(ms))),
        Ttl::At(t) if t > at.ts.wall_ms.saturating_add(MAX_TTL_MS) => {
            bad(format!("an expiry at {t} ms since the epoch"))
        }
        // An instant already past: the value is written expired (Redis deletes the key; here the
        // write is kept, so it replicates and hides older values everywhere, and is collected).
        Ttl::At(t) => Ok(Some(t)),
        Ttl::Keep => Ok(current
            .filter(|c| c.live_value(at.now_ms).is_some())
            .and_then(|c| c.expires_ms)),
    }
}

/// Turns a local write into the delta to merge and replicate. `current` is the key's stored state
/// (`None` if never written); `at` says where and when.
pub fn prepare(intent: &Intent, current: Option<&KeyState>, at: &WriteAt<'_>) -> Result<KeyState> {
    let (keyspace, policy, region, ts) = (at.keyspace, at.policy, at.region, at.ts);
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
            operation: if matches!(intent, Intent::Expire { .. }) {
                "EXPIRE and PERSIST (lww and owned keyspaces only; an mvr sibling expires as the write that made it said: rewrite it with the read's context and a ttl; docs/design/expiring-keys.md)".into()
            } else {
                intent.name().to_string()
            },
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
    let cur_lww = match current {
        Some(KeyState::Lww(r)) => Some(r),
        _ => None,
    };
    Ok(match (storage, intent, current) {
        (Policy::Lww, Intent::Put { value, ttl, .. }, _) => {
            let expires = expiry(at, *ttl, cur_lww)?;
            KeyState::Lww(
                LwwRegister::write(cur_lww, region, ts, Some(value.clone())).expiring(expires),
            )
        }
        (Policy::Lww, Intent::Expire { ttl }, _) => {
            let Some(live) = cur_lww.and_then(|c| c.live_value(at.now_ms)) else {
                return Err(AtollError::NotFound);
            };
            let expires = match ttl {
                Some(t) => expiry(at, *t, cur_lww)?,
                None => None,
            };
            KeyState::Lww(
                LwwRegister::write(cur_lww, region, ts, Some(live.clone())).expiring(expires),
            )
        }
        (Policy::Lww, Intent::Delete { .. }, _) => {
            KeyState::Lww(LwwRegister::write(cur_lww, region, ts, None))
        }
        (Policy::Mvr, Intent::Put { ttl: Ttl::Keep, .. }, _) => {
            return Err(AtollError::BadRequest(format!(
                "keyspace `{keyspace}` is mvr: each sibling carries the expiry of the write that made it, so there is no one expiry to keep; give the write its own ttl"
            )));
        }
        (
            Policy::Mvr,
            Intent::Put {
                value,
                context,
                ttl,
            },
            cur,
        ) => {
            let expires = expiry(at, *ttl, None)?;
            mvr_write(
                cur,
                context.as_ref(),
                region,
                ts,
                Some(value.clone()),
                expires,
            )
        }
        (Policy::Mvr, Intent::Delete { context }, cur) => {
            mvr_write(cur, context.as_ref(), region, ts, None, None)
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
        (Policy::RateLimit, Intent::Admit { cost }, cur) => {
            let Some(rule) = at.rate else {
                return Err(AtollError::Config(format!(
                    "keyspace `{keyspace}` is ratelimit but has no limit and window"
                )));
            };
            if *cost == 0 {
                return Err(AtollError::BadRequest(
                    "a rate-limit request costs at least 1".into(),
                ));
            }
            let cur = match cur {
                Some(KeyState::RateLimit(w)) => Some(w),
                _ => None,
            };
            match RateWindows::admit(cur, rule, region, ts.wall_ms, *cost) {
                (_, Some(delta)) => KeyState::RateLimit(delta),
                (d, None) => {
                    return Err(AtollError::RateLimited {
                        keyspace: keyspace.to_string(),
                        limit: d.limit,
                        remaining: d.remaining,
                        reset_at_ms: d.reset_at_ms,
                        retry_after_ms: d.retry_after_ms,
                    });
                }
            }
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
    expires_ms: Option<u64>,
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
    KeyState::Mvr(MvRegister::write(cur, &seen, region, ts, value).expiring(expires_ms))
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

/// [`LwwRegister`] as encoding versions 1 and 2 wrote it (no expiry).
#[derive(Deserialize)]
pub(crate) struct LwwRegisterV2 {
    value: Option<Vec<u8>>,
    ts: Timestamp,
    origin: RegionId,
    vv: crate::causal::VersionVector,
}

/// [`KeyState`] as encoding versions 1 and 2 wrote it (lww registers and mvr siblings without
/// expiry).
#[derive(Deserialize)]
pub(crate) enum KeyStateV2 {
    Lww(LwwRegisterV2),
    Mvr(MvRegisterV3),
    Counter(PnCounter),
    Set(OrSet),
}

/// [`KeyState`] as encoding version 3 wrote it (mvr siblings without expiry).
#[derive(Deserialize)]
pub(crate) enum KeyStateV3 {
    Lww(LwwRegister),
    Mvr(MvRegisterV3),
    Counter(PnCounter),
    Set(OrSet),
    RateLimit(RateWindows),
}

impl From<KeyStateV3> for KeyState {
    fn from(s: KeyStateV3) -> Self {
        match s {
            KeyStateV3::Lww(r) => KeyState::Lww(r),
            KeyStateV3::Mvr(m) => KeyState::Mvr(m.into()),
            KeyStateV3::Counter(c) => KeyState::Counter(c),
            KeyStateV3::Set(s) => KeyState::Set(s),
            KeyStateV3::RateLimit(w) => KeyState::RateLimit(w),
        }
    }
}

impl From<KeyStateV2> for KeyState {
    fn from(s: KeyStateV2) -> Self {
        match s {
            KeyStateV2::Lww(r) => KeyState::Lww(LwwRegister {
                value: r.value,
                ts: r.ts,
                origin: r.origin,
                vv: r.vv,
                expires_ms: None,
            }),
            KeyStateV2::Mvr(m) => KeyState::Mvr(m.into()),
            KeyStateV2::Counter(c) => KeyState::Counter(c),
            KeyStateV2::Set(s) => KeyState::Set(s),
        }
    }
}

/// [`OpEntry`] as encoding version 1 wrote it (no epoch, no expiry).
#[derive(Deserialize)]
pub(crate) struct OpEntryV1 {
    origin: RegionId,
    seq: u64,
    ts: Timestamp,
    keyspace: String,
    key: Vec<u8>,
    delta: KeyStateV2,
}

impl From<OpEntryV1> for OpEntry {
    fn from(e: OpEntryV1) -> Self {
        OpEntry {
            origin: e.origin,
            seq: e.seq,
            ts: e.ts,
            keyspace: e.keyspace,
            key: e.key,
            delta: e.delta.into(),
            epoch: 0,
        }
    }
}

/// [`OpEntry`] as encoding versions 2 and 3 wrote it: with the epoch, and a delta of that
/// version's [`KeyState`] layout ([`OpEntryV2`], [`OpEntryV3`]).
#[derive(Deserialize)]
pub(crate) struct OpEntryOf<D> {
    origin: RegionId,
    seq: u64,
    ts: Timestamp,
    keyspace: String,
    key: Vec<u8>,
    delta: D,
    epoch: u64,
}

/// Version 2: no expiry in lww deltas (nor in mvr ones).
pub(crate) type OpEntryV2 = OpEntryOf<KeyStateV2>;
/// Version 3: no expiry in mvr deltas.
pub(crate) type OpEntryV3 = OpEntryOf<KeyStateV3>;

impl<D: Into<KeyState>> From<OpEntryOf<D>> for OpEntry {
    fn from(e: OpEntryOf<D>) -> Self {
        OpEntry {
            origin: e.origin,
            seq: e.seq,
            ts: e.ts,
            keyspace: e.keyspace,
            key: e.key,
            delta: e.delta.into(),
            epoch: e.epoch,
        }
    }
}
