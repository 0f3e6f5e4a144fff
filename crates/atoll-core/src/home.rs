//! Region ownership of `owned` keyspaces (`docs/design/owned-keyspaces.md`): which region is the
//! home (the one writer) of a key, and the replicated table of re-homed keys and prefixes with
//! its moves.
//!
//! Pure, no clock, no I/O:
//!
//! - [`HomeRules`]: the static rules of one keyspace from the config (key prefix or hash range
//!   to region, and a default region, or none: then a key's first write fixes its home through a
//!   [`HomeCommand::Claim`]).
//! - [`HomeTable`]: the overrides and the move in flight per keyspace, replicated by the control
//!   group next to the write lease ([`ControlState`]). [`HomeTable::apply`] is deterministic.
//! - [`resolve`]: a key's home, the rule that decided it, and whether that rule is moving.
//!
//! A move of selectors from `from` to `to` is three entries: `Begin` (from then on the old home
//! refuses writes to the moving keys, as soon as it applied it), `Release` (the old home says it
//! stopped and at which head of its operation log), `Complete` (the new home has applied the old
//! home's writes up to that head, or, for a takeover of a home that is down, waited until any
//! write window the old home could hold has surely ended) after which the new home writes.
//!
//! Architecture Invariant: two regions never both accept writes to the same owned key. The old
//! home stops at `Begin`; the new home starts at `Complete`, which needs the old home's
//! `Release` or a takeover timed like a lease acquisition. Backed by
//! `crates/atoll-core/tests/home_prop.rs`.

use crate::fence::{self, LeaseState};
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// First byte of an encoded home command (the control group's log holds lease commands, whose
/// first byte is [`fence::FENCE_FORMAT_VERSION`], and these).
pub const HOME_COMMAND_TAG: u8 = 0x81;
/// First byte of an encoded [`ControlState`] (a state whose first byte is
/// [`fence::FENCE_FORMAT_VERSION`] is a lease state alone, from before owned keyspaces).
pub const CONTROL_STATE_VERSION: u8 = 2;
/// Moves remembered in [`HomeTable::history`].
pub const MOVES_LEN: usize = 32;
/// Most selectors one move carries.
pub const MAX_SELECTORS: usize = 256;
/// Most overrides (keys homed by their first write, and moved keys and prefixes) one keyspace
/// holds: the control group replicates and snapshots them all, so a keyspace with more keys
/// than this gives them prefix or hash rules instead.
pub const MAX_OVERRIDES: usize = 10_000;

/// The hash bucket of a key, which `hash` home rules match: the top 16 bits of the key's
/// CRC-32 (IEEE, as zlib's `crc32`), so any client can compute it.
pub fn key_bucket(key: &[u8]) -> u16 {
    (crc32fast::hash(key) >> 16) as u16
}

/// What a home rule or an override applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Selector {
    /// Every key that starts with these bytes (the empty prefix: the default rule).
    Prefix(Vec<u8>),
    /// Exactly this key.
    Key(Vec<u8>),
    /// Every key whose [`key_bucket`] is in `lo..=hi`.
    Hash { lo: u16, hi: u16 },
}

impl Selector {
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Selector::Prefix(p) => key.starts_with(p),
            Selector::Key(k) => k == key,
            Selector::Hash { lo, hi } => (*lo..=*hi).contains(&key_bucket(key)),
        }
    }

    /// For messages: `prefix "us:"`, `key "us:42"`, `the default`.
    pub fn describe(&self) -> String {
        match self {
            Selector::Prefix(p) if p.is_empty() => "the default rule".into(),
            Selector::Prefix(p) => format!("prefix \"{}\"", String::from_utf8_lossy(p)),
            Selector::Key(k) => format!("key \"{}\"", String::from_utf8_lossy(k)),
            Selector::Hash { lo, hi } => format!("hash buckets {lo}-{hi}"),
        }
    }

    /// Rank for longest-match: a key beats every prefix, a longer prefix a shorter one, any
    /// prefix a hash range, and a hash range the default (the empty prefix).
    fn rank(&self) -> (u8, usize) {
        match self {
            Selector::Prefix(p) if p.is_empty() => (0, 0),
            Selector::Hash { .. } => (1, 0),
            Selector::Prefix(p) => (2, p.len()),
            Selector::Key(k) => (3, k.len()),
        }
    }
}

/// The static home rules of one keyspace (from the config; the same on every region).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeRules {
    /// Key prefix to home region; no prefix is a prefix of another (the config refuses that).
    pub prefixes: Vec<(Vec<u8>, RegionId)>,
    /// Hash bucket range (`lo..=hi` of [`key_bucket`]) to home region, for keys no prefix
    /// matches; the ranges are disjoint (the config refuses overlaps).
    pub hashes: Vec<(u16, u16, RegionId)>,
    /// The home of keys no rule matches; `None`: such a key's home is the region that writes it
    /// first (it claims the key through the control group, [`HomeCommand::Claim`]).
    pub default: Option<RegionId>,
}

/// An override of the static rules, made by a move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub home: RegionId,
    /// Bumped by every completed move of this selector.
    pub epoch: u64,
}

/// A move in flight (at most one per keyspace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The table version its `Begin` set: names the move.
    pub id: u64,
    pub selectors: Vec<Selector>,
    pub from: RegionId,
    pub to: RegionId,
    /// A takeover of a home that is down (the keyspace's `takeover` order), not an operator's
    /// re-homing.
    pub takeover: bool,
    /// The old home's operation-log head when it stopped (its `Release`).
    pub released_head: Option<u64>,
}

/// How a move ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveOutcome {
    /// The old home released and the new home had applied its writes: nothing lost.
    Handed,
    /// The old home never released; the new home waited out its write window. What the new home
    /// lacked of the old home's writes then (its replication lag) may be lost.
    Forced { lag_ops: u64, lag_ms: u64 },
    /// Abandoned; the old home writes again.
    Aborted { reason: String },
}

/// One finished move, for `atoll status` and the move report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub keyspace: String,
    pub id: u64,
    pub selectors: Vec<Selector>,
    pub from: RegionId,
    pub to: RegionId,
    pub takeover: bool,
    pub outcome: MoveOutcome,
}

/// A command of the control group about homes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HomeCommand {
    /// Start moving `selectors` of `keyspace` from `from` (their current home, as the proposer
    /// resolved it at table version `expect_version`) to `to`.
    Begin {
        keyspace: String,
        selectors: Vec<Selector>,
        from: RegionId,
        to: RegionId,
        expect_version: u64,
        takeover: bool,
    },
    /// The old home stopped writing the moving keys; `head` is its operation-log head then.
    Release {
        keyspace: String,
        id: u64,
        from: RegionId,
        head: u64,
    },
    /// The new home takes over. Without `forced` the old home must have released (and the new
    /// home applied its writes up to the released head, which only it can check).
    Complete {
        keyspace: String,
        id: u64,
        to: RegionId,
        forced: Option<(u64, u64)>,
    },
    /// Abandon the move (the old home keeps its keys).
    Abort {
        keyspace: String,
        id: u64,
        reason: String,
    },
    /// `region` is about to write `key`, which no rule homes (a keyspace without a default
    /// region): the first claim of a key makes its claimant the key's home; a later one is
    /// answered with the home the first fixed. It does not bump the table version: it homes a
    /// key nobody could write before, so no region's resolution of a homed key changes.
    Claim {
        keyspace: String,
        key: Vec<u8>,
        region: RegionId,
    },
}

/// Why a home command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HomeRefusal {
    /// The table changed since the proposer resolved the homes: resolve again.
    Stale { version: u64 },
    /// Another move of the keyspace is in flight.
    MoveInFlight { id: u64 },
    /// No such move in flight.
    NoSuchMove,
    /// The move cannot complete yet (not released, or proposed by another region).
    NotReady(String),
    /// The command is malformed (no selectors, too many, `from == to`).
    Invalid(String),
}

impl std::fmt::Display for HomeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HomeRefusal::Stale { version } => write!(
                f,
                "the home table changed meanwhile (now version {version}); resolve the homes again"
            ),
            HomeRefusal::MoveInFlight { id } => {
                write!(f, "move {id} of this keyspace is still in flight")
            }
            HomeRefusal::NoSuchMove => f.write_str("no such move is in flight"),
            HomeRefusal::NotReady(s) | HomeRefusal::Invalid(s) => f.write_str(s),
        }
    }
}

/// The answer to a [`HomeCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HomeAnswer {
    Begun {
        id: u64,
    },
    Released,
    Completed {
        epoch: u64,
    },
    Aborted,
    Refused(HomeRefusal),
    /// The key's home (the claimant, or whoever claimed it first).
    Claimed {
        home: RegionId,
    },
}

/// The replicated home table of every owned keyspace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeTable {
    /// Bumped by every entry that changes the table.
    pub version: u64,
    /// Overrides per keyspace.
    pub overrides: BTreeMap<String, BTreeMap<Selector, Override>>,
    /// The move in flight per keyspace.
    pub moves: BTreeMap<String, Move>,
    /// Finished moves, newest last (at most [`MOVES_LEN`]).
    pub history: VecDeque<MoveRecord>,
}

/// A key's home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// `None`: no rule homes the key and nobody has claimed it yet (a keyspace homed by first
    /// write); whoever writes it first claims it.
    pub home: Option<RegionId>,
    /// The rule that decided it.
    pub selector: Selector,
    /// Whether that rule came from a move (an override) rather than the config.
    pub overridden: bool,
    /// The move in flight that covers this key, if any: then nobody writes it.
    pub moving: Option<Move>,
}

/// The home of `key` in `keyspace`: the best matching rule among the config's prefixes, hash
/// ranges, the default (the empty prefix) and the table's overrides (an override wins over a
/// config rule with the same selector; an exact key over every prefix, a longer prefix over a
/// shorter one, any prefix over a hash range).
pub fn resolve(rules: &HomeRules, table: &HomeTable, keyspace: &str, key: &[u8]) -> Resolution {
    let mut best: (Selector, Option<RegionId>, bool) =
        (Selector::Prefix(Vec::new()), rules.default.clone(), false);
    let bucket = key_bucket(key);
    for (lo, hi, r) in &rules.hashes {
        if (*lo..=*hi).contains(&bucket) {
            best = (Selector::Hash { lo: *lo, hi: *hi }, Some(r.clone()), false);
        }
    }
    for (p, r) in &rules.prefixes {
        let sel = Selector::Prefix(p.clone());
        if key.starts_with(p) && sel.rank() > best.0.rank() {
            best = (sel, Some(r.clone()), false);
        }
    }
    if let Some(ov) = table.overrides.get(keyspace) {
        for (sel, o) in ov {
            if sel.matches(key) && sel.rank() >= best.0.rank() {
                best = (sel.clone(), Some(o.home.clone()), true);
            }
        }
    }
    let moving = table
        .moves
        .get(keyspace)
        .filter(|m| m.selectors.contains(&best.0))
        .cloned();
    Resolution {
        home: best.1,
        selector: best.0,
        overridden: best.2,
        moving,
    }
}

/// The current home of every key a move of `selector` would take over: the keys the selector
/// would decide once it has an override of its own (those that no higher-ranked rule decides).
/// A move of `selector` names it as its `from`. An error says why the selector has no single
/// home: a prefix whose keys hash rules spread over several regions, a hash range that is not a
/// configured one, or keys nobody has written yet in a keyspace homed by first write.
pub fn home_of_selector(
    rules: &HomeRules,
    table: &HomeTable,
    keyspace: &str,
    selector: &Selector,
) -> Result<RegionId, String> {
    let ov = table.overrides.get(keyspace);
    if let Some(o) = ov.and_then(|o| o.get(selector)) {
        return Ok(o.home.clone());
    }
    match selector {
        Selector::Key(k) => resolve(rules, table, keyspace, k).home.ok_or_else(|| {
            format!(
                "{} has no home yet: nobody has written it, and its first write homes it",
                selector.describe()
            )
        }),
        Selector::Hash { lo, hi } => rules
            .hashes
            .iter()
            .find(|(l, h, _)| (l, h) == (lo, hi))
            .map(|(_, _, r)| r.clone())
            .ok_or_else(|| {
                format!(
                    "{} is not one of the keyspace's hash rules: only a configured hash range moves as one",
                    selector.describe()
                )
            }),
        Selector::Prefix(p) => {
            // The longest prefix rule (config or override) that covers every key under `p`.
            let mut best: Option<(usize, RegionId)> = None;
            let mut consider = |q: &[u8], r: &RegionId| {
                if !q.is_empty() && p.starts_with(q) && best.as_ref().is_none_or(|(l, _)| q.len() >= *l) {
                    best = Some((q.len(), r.clone()));
                }
            };
            for (q, r) in &rules.prefixes {
                consider(q, r);
            }
            for (sel, o) in ov.into_iter().flatten() {
                if let Selector::Prefix(q) = sel {
                    consider(q, &o.home);
                }
            }
            if let Some((_, r)) = best {
                return Ok(r);
            }
            // The default rule decides only keys no other rule does; any other prefix's keys
            // would be taken from the hash rules too.
            if !p.is_empty() && !rules.hashes.is_empty() {
                return Err(format!(
                    "the keys under {} are spread over several homes by the keyspace's hash rules; move a hash range, or single keys",
                    selector.describe()
                ));
            }
            let default = ov
                .and_then(|o| o.get(&Selector::Prefix(Vec::new())))
                .map(|o| o.home.clone())
                .or_else(|| rules.default.clone());
            default.ok_or_else(|| {
                format!(
                    "the keys under {} are homed one by one by their first write; move single keys",
                    selector.describe()
                )
            })
        }
    }
}

/// The selectors of `keyspace` whose home is `region` (config rules and overrides), as a
/// takeover of `region` moves them.
pub fn selectors_of(
    rules: &HomeRules,
    table: &HomeTable,
    keyspace: &str,
    region: &RegionId,
) -> Vec<Selector> {
    let ov = table.overrides.get(keyspace);
    let mut out: Vec<Selector> = Vec::new();
    let mut consider = |sel: Selector, home: &RegionId| {
        let home = ov.and_then(|o| o.get(&sel)).map_or(home, |o| &o.home);
        if home == region && !out.contains(&sel) {
            out.push(sel);
        }
    };
    if let Some(d) = &rules.default {
        consider(Selector::Prefix(Vec::new()), d);
    }
    for (lo, hi, r) in &rules.hashes {
        consider(Selector::Hash { lo: *lo, hi: *hi }, r);
    }
    for (p, r) in &rules.prefixes {
        consider(Selector::Prefix(p.clone()), r);
    }
    for (sel, o) in ov.into_iter().flatten() {
        consider(sel.clone(), &o.home);
    }
    out
}

impl HomeTable {
    /// Applies one committed command. Deterministic; a refused command changes nothing.
    pub fn apply(&mut self, cmd: &HomeCommand) -> HomeAnswer {
        match self.try_apply(cmd) {
            Ok(a) => a,
            Err(r) => HomeAnswer::Refused(r),
        }
    }

    fn try_apply(&mut self, cmd: &HomeCommand) -> Result<HomeAnswer, HomeRefusal> {
        match cmd {
            HomeCommand::Begin {
                keyspace,
                selectors,
                from,
                to,
                expect_version,
                takeover,
            } => {
                if selectors.is_empty() || selectors.len() > MAX_SELECTORS {
                    return Err(HomeRefusal::Invalid(format!(
                        "a move carries 1 to {MAX_SELECTORS} selectors, not {}",
                        selectors.len()
                    )));
                }
                if from == to {
                    return Err(HomeRefusal::Invalid(format!(
                        "`{to}` is already the home of {}",
                        selectors[0].describe()
                    )));
                }
                if let Some(m) = self.moves.get(keyspace) {
                    return Err(HomeRefusal::MoveInFlight { id: m.id });
                }
                if *expect_version != self.version {
                    return Err(HomeRefusal::Stale {
                        version: self.version,
                    });
                }
                self.version += 1;
                let id = self.version;
                // Every moving selector gets an override naming its current home, so that a
                // key rule that did not exist before decides its keys from now on.
                let ov = self.overrides.entry(keyspace.clone()).or_default();
                for sel in selectors {
                    ov.entry(sel.clone()).or_insert_with(|| Override {
                        home: from.clone(),
                        epoch: 0,
                    });
                }
                self.moves.insert(
                    keyspace.clone(),
                    Move {
                        id,
                        selectors: selectors.clone(),
                        from: from.clone(),
                        to: to.clone(),
                        takeover: *takeover,
                        released_head: None,
                    },
                );
                Ok(HomeAnswer::Begun { id })
            }
            HomeCommand::Release {
                keyspace,
                id,
                from,
                head,
            } => {
                let m = self.current(keyspace, *id)?;
                if &m.from != from {
                    return Err(HomeRefusal::NotReady(format!(
                        "only the old home `{}` releases move {id}",
                        m.from
                    )));
                }
                if m.released_head.is_none() {
                    m.released_head = Some(*head);
                    self.version += 1;
                }
                Ok(HomeAnswer::Released)
            }
            HomeCommand::Complete {
                keyspace,
                id,
                to,
                forced,
            } => {
                let m = self.current(keyspace, *id)?;
                if &m.to != to {
                    return Err(HomeRefusal::NotReady(format!(
                        "only the new home `{}` completes move {id}",
                        m.to
                    )));
                }
                let outcome = match (forced, m.released_head) {
                    (_, Some(_)) => MoveOutcome::Handed,
                    (Some((lag_ops, lag_ms)), None) => MoveOutcome::Forced {
                        lag_ops: *lag_ops,
                        lag_ms: *lag_ms,
                    },
                    (None, None) => {
                        return Err(HomeRefusal::NotReady(format!(
                            "the old home `{}` has not released move {id}",
                            m.from
                        )));
                    }
                };
                let m = self.moves.remove(keyspace).ok_or(HomeRefusal::NoSuchMove)?;
                let ov = self.overrides.entry(keyspace.clone()).or_default();
                let mut epoch = 0;
                for sel in &m.selectors {
                    let o = ov.entry(sel.clone()).or_insert_with(|| Override {
                        home: m.from.clone(),
                        epoch: 0,
                    });
                    o.home = m.to.clone();
                    o.epoch += 1;
                    epoch = epoch.max(o.epoch);
                }
                self.version += 1;
                self.record(keyspace, m, outcome);
                Ok(HomeAnswer::Completed { epoch })
            }
            HomeCommand::Abort {
                keyspace,
                id,
                reason,
            } => {
                self.current(keyspace, *id)?;
                let m = self.moves.remove(keyspace).ok_or(HomeRefusal::NoSuchMove)?;
                self.version += 1;
                self.record(
                    keyspace,
                    m,
                    MoveOutcome::Aborted {
                        reason: reason.chars().take(512).collect(),
                    },
                );
                Ok(HomeAnswer::Aborted)
            }
            HomeCommand::Claim {
                keyspace,
                key,
                region,
            } => {
                let ov = self.overrides.entry(keyspace.clone()).or_default();
                // An override that covers the key already homes it (a claim, or a move).
                let held = ov
                    .iter()
                    .filter(|(sel, _)| sel.matches(key))
                    .max_by_key(|(sel, _)| sel.rank())
                    .map(|(_, o)| o.home.clone());
                if let Some(home) = held {
                    return Ok(HomeAnswer::Claimed { home });
                }
                if ov.len() >= MAX_OVERRIDES {
                    return Err(HomeRefusal::Invalid(format!(
                        "keyspace `{keyspace}` already homes {MAX_OVERRIDES} keys by their first write, the most the control group holds; give its keys `homes` rules (a prefix or a hash range) instead"
                    )));
                }
                ov.insert(
                    Selector::Key(key.clone()),
                    Override {
                        home: region.clone(),
                        epoch: 0,
                    },
                );
                Ok(HomeAnswer::Claimed {
                    home: region.clone(),
                })
            }
        }
    }

    fn current(&mut self, keyspace: &str, id: u64) -> Result<&mut Move, HomeRefusal> {
        match self.moves.get_mut(keyspace) {
            Some(m) if m.id == id => Ok(m),
            _ => Err(HomeRefusal::NoSuchMove),
        }
    }

    fn record(&mut self, keyspace: &str, m: Move, outcome: MoveOutcome) {
        self.history.push_back(MoveRecord {
            keyspace: keyspace.to_string(),
            id: m.id,
            selectors: m.selectors,
            from: m.from,
            to: m.to,
            takeover: m.takeover,
            outcome,
        });
        while self.history.len() > MOVES_LEN {
            self.history.pop_front();
        }
    }
}

/// What the control group replicates: the write lease and the home table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    pub lease: LeaseState,
    pub homes: HomeTable,
}

/// The answer to any command of the control group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlAnswer {
    /// A lease command's answer, with the home table's version at the same position of the log
    /// (a quorum window opened by a `Presence` answered at version `v` covers owned writes only
    /// once the region applied `v`).
    Lease {
        answer: fence::Answer,
        homes_version: u64,
    },
    Home(HomeAnswer),
}

impl ControlState {
    /// Applies one committed command of either kind (decided by its first byte); undecodable
    /// bytes are answered the same way on every member and change nothing.
    pub fn apply(&mut self, command: &[u8]) -> ControlAnswer {
        if command.first() == Some(&HOME_COMMAND_TAG) {
            return ControlAnswer::Home(match decode_home_command(command) {
                Ok(c) => self.homes.apply(&c),
                Err(e) => HomeAnswer::Refused(HomeRefusal::Invalid(e.to_string())),
            });
        }
        let answer = match fence::decode_command(command) {
            Ok(cmd) => self.lease.apply(&cmd),
            Err(_) => fence::Answer::Refused(fence::Refused::WrongEpoch {
                current: self.lease.epoch,
            }),
        };
        ControlAnswer::Lease {
            answer,
            homes_version: self.homes.version,
        }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> crate::AtollError {
    crate::AtollError::Corrupt(format!("malformed {what}: {e}"))
}

/// Encodes a home command for the control group's log.
pub fn encode_home_command(cmd: &HomeCommand) -> crate::Result<Vec<u8>> {
    let mut out = vec![HOME_COMMAND_TAG];
    out.extend(postcard::to_allocvec(cmd).map_err(|e| corrupt("home command", e))?);
    Ok(out)
}

/// Decodes a home command; malformed bytes are an error, never a panic.
pub fn decode_home_command(bytes: &[u8]) -> crate::Result<HomeCommand> {
    match bytes.split_first() {
        Some((&HOME_COMMAND_TAG, body)) => {
            postcard::from_bytes(body).map_err(|e| corrupt("home command", e))
        }
        _ => Err(corrupt("home command", "wrong tag")),
    }
}

/// Encodes a control answer (answers are not persisted; the version byte guards mixed builds).
pub fn encode_answer(a: &ControlAnswer) -> crate::Result<Vec<u8>> {
    let mut out = vec![CONTROL_STATE_VERSION];
    out.extend(postcard::to_allocvec(a).map_err(|e| corrupt("control answer", e))?);
    Ok(out)
}

/// Decodes a control answer.
pub fn decode_answer(bytes: &[u8]) -> crate::Result<ControlAnswer> {
    match bytes.split_first() {
        Some((&CONTROL_STATE_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| corrupt("control answer", e))
        }
        Some((v, _)) => Err(crate::AtollError::FormatTooNew {
            found: u16::from(*v),
            supported: u16::from(CONTROL_STATE_VERSION),
        }),
        None => Err(corrupt("control answer", "empty")),
    }
}

/// Encodes the control state (snapshots and the applied-state watch).
pub fn encode_state(s: &ControlState) -> crate::Result<Vec<u8>> {
    let mut out = vec![CONTROL_STATE_VERSION];
    out.extend(postcard::to_allocvec(s).map_err(|e| corrupt("control state", e))?);
    Ok(out)
}

/// Decodes a control state; a lease state alone (format 1, before owned keyspaces) reads as a
/// state with an empty home table.
pub fn decode_state(bytes: &[u8]) -> crate::Result<ControlState> {
    match bytes.first() {
        Some(&fence::FENCE_FORMAT_VERSION) => Ok(ControlState {
            lease: fence::decode_state(bytes)?,
            homes: HomeTable::default(),
        }),
        Some(&CONTROL_STATE_VERSION) => {
            postcard::from_bytes(&bytes[1..]).map_err(|e| corrupt("control state", e))
        }
        Some(v) => Err(crate::AtollError::FormatTooNew {
            found: u16::from(*v),
            supported: u16::from(CONTROL_STATE_VERSION),
        }),
        None => Err(corrupt("control state", "empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    fn rules() -> HomeRules {
        HomeRules {
            prefixes: vec![(b"us:".to_vec(), r("us")), (b"eu:".to_vec(), r("eu"))],
            hashes: Vec::new(),
            default: Some(r("us")),
        }
    }

    fn some(s: &str) -> Option<RegionId> {
        Some(r(s))
    }

    /// A key in bucket range `lo..=hi`, not starting with a configured prefix.
    fn key_in(lo: u16, hi: u16) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| (lo..=hi).contains(&key_bucket(k)))
            .unwrap()
    }

    fn begin(sel: Selector, from: &str, to: &str, v: u64) -> HomeCommand {
        HomeCommand::Begin {
            keyspace: "p".into(),
            selectors: vec![sel],
            from: r(from),
            to: r(to),
            expect_version: v,
            takeover: false,
        }
    }

    #[test]
    fn static_rules_pick_the_longest_prefix_and_the_default() {
        let t = HomeTable::default();
        assert_eq!(resolve(&rules(), &t, "p", b"eu:1").home, some("eu"));
        assert_eq!(resolve(&rules(), &t, "p", b"us:1").home, some("us"));
        let d = resolve(&rules(), &t, "p", b"zz");
        assert_eq!((d.home, d.selector), (some("us"), Selector::Prefix(vec![])));
    }

    #[test]
    fn the_bucket_is_the_top_of_the_crc32() {
        // zlib's crc32("123456789") is 0xCBF43926.
        assert_eq!(key_bucket(b"123456789"), 0xCBF4);
        assert_eq!(key_bucket(b""), 0);
    }

    #[test]
    fn hash_rules_decide_below_prefixes_and_above_the_default() {
        let mut rules = rules();
        rules.hashes = vec![(0, 32767, r("ap")), (32768, 49151, r("eu"))];
        let t = HomeTable::default();
        let low = key_in(0, 32767);
        let mid = key_in(32768, 49151);
        let high = key_in(49152, 65535);
        let res = resolve(&rules, &t, "p", &low);
        assert_eq!(res.home, some("ap"));
        assert_eq!(res.selector, Selector::Hash { lo: 0, hi: 32767 });
        assert_eq!(resolve(&rules, &t, "p", &mid).home, some("eu"));
        assert_eq!(
            resolve(&rules, &t, "p", &high).home,
            some("us"),
            "no range: the default"
        );
        // A prefix beats a hash range, whatever the key's bucket.
        let us_low = (0u32..)
            .map(|i| format!("us:{i}").into_bytes())
            .find(|k| key_bucket(k) <= 32767)
            .unwrap();
        assert_eq!(resolve(&rules, &t, "p", &us_low).home, some("us"));
        // Takeover of `ap` moves its hash range; a hash range moves only as configured.
        assert_eq!(
            selectors_of(&rules, &t, "p", &r("ap")),
            vec![Selector::Hash { lo: 0, hi: 32767 }]
        );
        let sel = Selector::Hash { lo: 0, hi: 32767 };
        assert_eq!(home_of_selector(&rules, &t, "p", &sel), Ok(r("ap")));
        assert!(home_of_selector(&rules, &t, "p", &Selector::Hash { lo: 0, hi: 9 }).is_err());
        assert!(
            home_of_selector(&rules, &t, "p", &Selector::Prefix(b"k".to_vec())).is_err(),
            "keys under an unruled prefix have several homes"
        );
        assert_eq!(
            home_of_selector(&rules, &t, "p", &Selector::Prefix(b"us:7".to_vec())),
            Ok(r("us"))
        );
    }

    #[test]
    fn a_prefix_moves_from_the_home_of_its_keys_not_of_the_key_that_spells_it() {
        let mut t = HomeTable::default();
        t.overrides.entry("p".into()).or_default().insert(
            Selector::Key(b"eu:1".to_vec()),
            Override {
                home: r("ap"),
                epoch: 1,
            },
        );
        assert_eq!(resolve(&rules(), &t, "p", b"eu:1").home, some("ap"));
        assert_eq!(
            home_of_selector(&rules(), &t, "p", &Selector::Prefix(b"eu:1".to_vec())),
            Ok(r("eu")),
            "eu:12 is written by eu, so eu is what a move of prefix eu:1 takes over"
        );
    }

    #[test]
    fn the_first_claim_of_a_key_homes_it_and_later_claims_learn_that_home() {
        let rules = HomeRules {
            prefixes: vec![(b"eu:".to_vec(), r("eu"))],
            hashes: Vec::new(),
            default: None,
        };
        let mut t = HomeTable::default();
        let res = resolve(&rules, &t, "p", b"u1");
        assert_eq!((res.home, res.overridden), (None, false));
        let claim = |key: &[u8], by: &str| HomeCommand::Claim {
            keyspace: "p".into(),
            key: key.to_vec(),
            region: r(by),
        };
        assert_eq!(
            t.apply(&claim(b"u1", "ap")),
            HomeAnswer::Claimed { home: r("ap") }
        );
        assert_eq!(t.version, 0, "a claim changes no homed key's home");
        assert_eq!(
            t.apply(&claim(b"u1", "us")),
            HomeAnswer::Claimed { home: r("ap") }
        );
        assert_eq!(resolve(&rules, &t, "p", b"u1").home, some("ap"));
        assert_eq!(resolve(&rules, &t, "p", b"eu:1").home, some("eu"));
        assert_eq!(
            home_of_selector(&rules, &t, "p", &Selector::Key(b"u1".to_vec())),
            Ok(r("ap"))
        );
        assert!(home_of_selector(&rules, &t, "p", &Selector::Key(b"u2".to_vec())).is_err());
        assert!(home_of_selector(&rules, &t, "p", &Selector::Prefix(b"u".to_vec())).is_err());
        assert!(home_of_selector(&rules, &t, "p", &Selector::Prefix(Vec::new())).is_err());
        assert_eq!(
            selectors_of(&rules, &t, "p", &r("ap")),
            vec![Selector::Key(b"u1".to_vec())]
        );
        // A full table refuses new claims and changes nothing.
        let ov = t.overrides.entry("p".into()).or_default();
        for i in 0..MAX_OVERRIDES {
            ov.entry(Selector::Key(format!("f{i}").into_bytes()))
                .or_insert(Override {
                    home: r("us"),
                    epoch: 0,
                });
        }
        let before = t.clone();
        assert!(matches!(
            t.apply(&claim(b"u2", "us")),
            HomeAnswer::Refused(HomeRefusal::Invalid(_))
        ));
        assert_eq!(t, before);
        assert_eq!(
            t.apply(&claim(b"u1", "us")),
            HomeAnswer::Claimed { home: r("ap") }
        );
    }

    #[test]
    fn a_move_stops_the_old_home_and_hands_over_only_once_released() {
        let mut t = HomeTable::default();
        let sel = Selector::Key(b"eu:7".to_vec());
        assert_eq!(
            t.apply(&begin(sel.clone(), "eu", "us", 0)),
            HomeAnswer::Begun { id: 1 }
        );
        let res = resolve(&rules(), &t, "p", b"eu:7");
        assert_eq!(res.home, some("eu"));
        assert!(res.moving.is_some(), "the key is moving: nobody writes it");
        assert!(resolve(&rules(), &t, "p", b"eu:8").moving.is_none());
        // A second move of the keyspace waits for the first.
        assert!(matches!(
            t.apply(&begin(Selector::Key(b"x".to_vec()), "us", "eu", t.version)),
            HomeAnswer::Refused(HomeRefusal::MoveInFlight { id: 1 })
        ));
        let complete = HomeCommand::Complete {
            keyspace: "p".into(),
            id: 1,
            to: r("us"),
            forced: None,
        };
        assert!(matches!(
            t.apply(&complete),
            HomeAnswer::Refused(HomeRefusal::NotReady(_))
        ));
        let wrong = HomeCommand::Release {
            keyspace: "p".into(),
            id: 1,
            from: r("us"),
            head: 9,
        };
        assert!(matches!(t.apply(&wrong), HomeAnswer::Refused(_)));
        let release = HomeCommand::Release {
            keyspace: "p".into(),
            id: 1,
            from: r("eu"),
            head: 9,
        };
        assert_eq!(t.apply(&release), HomeAnswer::Released);
        assert_eq!(t.apply(&complete), HomeAnswer::Completed { epoch: 1 });
        let res = resolve(&rules(), &t, "p", b"eu:7");
        assert_eq!((res.home, res.moving), (some("us"), None));
        assert_eq!(
            t.history.back().map(|h| &h.outcome),
            Some(&MoveOutcome::Handed)
        );
    }

    #[test]
    fn a_stale_begin_is_refused() {
        let mut t = HomeTable::default();
        t.apply(&begin(Selector::Prefix(b"us:".to_vec()), "us", "eu", 0));
        t.apply(&HomeCommand::Abort {
            keyspace: "p".into(),
            id: 1,
            reason: "test".into(),
        });
        assert_eq!(
            t.apply(&begin(Selector::Prefix(b"us:".to_vec()), "us", "eu", 0)),
            HomeAnswer::Refused(HomeRefusal::Stale { version: 2 })
        );
    }

    #[test]
    fn takeover_selectors_cover_every_rule_of_the_region() {
        let mut t = HomeTable::default();
        t.overrides.entry("p".into()).or_default().insert(
            Selector::Key(b"eu:1".to_vec()),
            Override {
                home: r("us"),
                epoch: 1,
            },
        );
        let s = selectors_of(&rules(), &t, "p", &r("us"));
        assert_eq!(
            s,
            vec![
                Selector::Prefix(vec![]),
                Selector::Prefix(b"us:".to_vec()),
                Selector::Key(b"eu:1".to_vec())
            ]
        );
    }

    #[test]
    fn encodings_round_trip_and_an_old_lease_state_still_reads() {
        let mut s = ControlState::default();
        s.homes
            .apply(&begin(Selector::Key(b"k".to_vec()), "us", "eu", 0));
        let bytes = encode_state(&s).unwrap();
        assert_eq!(decode_state(&bytes).unwrap(), s);
        let old = fence::encode_state(&s.lease).unwrap();
        assert_eq!(decode_state(&old).unwrap().lease, s.lease);
        let cmd = begin(Selector::Key(b"k".to_vec()), "us", "eu", 1);
        assert_eq!(
            decode_home_command(&encode_home_command(&cmd).unwrap()).unwrap(),
            cmd
        );
        for junk in [&[][..], &[0x81, 0xff, 0xff][..], &[9, 1, 2][..]] {
            assert!(decode_state(junk).is_err());
            let mut st = ControlState::default();
            let _ = st.apply(junk);
            assert_eq!(st, ControlState::default(), "junk changes nothing");
        }
    }
}
