//! The pure checkers: history and read-back in, findings out. No I/O, no clock.
//!
//! - [`rpo`]: every acknowledged write is read back from every region and checked against its
//!   keyspace's semantics; each lost write is listed.
//! - [`zombies`]: writes acknowledged by a region while it was not allowed to accept them.
//! - [`duplicates`]: non-idempotent writes applied more than once.
//!
//! The definitions are in `docs/drills.md` ("What the checks mean").

use crate::history::{FinalState, Hlc, KeyId, Kind, Observed, Outcome, WriteRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// An acknowledged write that a region does not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrite {
    /// The region whose read-back lacks it.
    pub region: String,
    pub keyspace: String,
    pub kind: Kind,
    pub key: String,
    /// The write's id in the history (for counters, the last acknowledged increment of the key).
    pub id: u64,
    /// The region that acknowledged it.
    pub acked_by: String,
    pub value: String,
    pub acked_at_ms: u64,
    /// What the region holds instead, in words.
    pub found: String,
}

/// A key a region could not be read for: the check is incomplete there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unchecked {
    pub region: String,
    pub keyspace: String,
    pub key: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpoFindings {
    pub lost: Vec<LostWrite>,
    pub unchecked: Vec<Unchecked>,
    /// Acknowledged writes checked (each against every region).
    pub checked_writes: u64,
}

fn describe(o: &Observed) -> String {
    match o {
        Observed::Missing => "key missing".into(),
        Observed::Lww { value } => format!("value {value:?}"),
        Observed::Mvr { values } => format!("siblings {values:?}"),
        Observed::Counter { value } => format!("counter {value}"),
        Observed::Set { members } => format!("{} members", members.len()),
        Observed::Unreadable { reason } => format!("unreadable: {reason}"),
    }
}

fn lost(region: &str, w: &WriteRecord, found: String) -> LostWrite {
    LostWrite {
        region: region.to_string(),
        keyspace: w.keyspace.clone(),
        kind: w.kind,
        key: w.key.clone(),
        id: w.id,
        acked_by: w.acked_region().unwrap_or("?").to_string(),
        value: w.value.clone(),
        acked_at_ms: w.done_ms,
        found,
    }
}

fn ts_of(w: &WriteRecord) -> Option<Hlc> {
    match &w.outcome {
        Outcome::Acked { ts, .. } => *ts,
        _ => None,
    }
}

/// Checks every acknowledged write against every region's read-back.
///
/// - lww: the region holds the write's value, or a value that superseded it: one of an
///   acknowledged write with a later HLC timestamp (or the same timestamp and a greater region
///   name, the register's tiebreak), or of a write whose outcome is unknown (it
///   may have been applied with a later timestamp; counted as superseding, never as a loss).
/// - mvr: the drill writes each mvr key once, without a context: the value is one of the
///   key's siblings.
/// - counter: the value is at least the sum of the acknowledged increments.
/// - set: the member acknowledged as added is present (the drill never removes).
pub fn rpo(history: &[WriteRecord], fin: &FinalState) -> RpoFindings {
    let mut out = RpoFindings::default();
    let mut by_key: BTreeMap<KeyId, Vec<&WriteRecord>> = BTreeMap::new();
    for w in history {
        by_key
            .entry((w.keyspace.clone(), w.key.clone()))
            .or_default()
            .push(w);
    }
    for (key, writes) in &by_key {
        let acked: Vec<&&WriteRecord> = writes.iter().filter(|w| w.is_acked()).collect();
        if acked.is_empty() {
            continue;
        }
        out.checked_writes += acked.len() as u64;
        let kind = acked[0].kind;
        // lww: value -> the write that carried it.
        let by_value: HashMap<&str, &WriteRecord> =
            writes.iter().map(|w| (w.value.as_str(), *w)).collect();
        for (region, keys) in fin {
            let obs = keys.get(key).cloned().unwrap_or(Observed::Missing);
            if let Observed::Unreadable { reason } = &obs {
                out.unchecked.push(Unchecked {
                    region: region.clone(),
                    keyspace: key.0.clone(),
                    key: key.1.clone(),
                    reason: reason.clone(),
                });
                continue;
            }
            match kind {
                Kind::Lww => {
                    let holder = match &obs {
                        Observed::Lww { value } => Some(value.as_str()),
                        _ => None,
                    };
                    for w in &acked {
                        let ok = match holder {
                            Some(v) if v == w.value => true,
                            Some(v) => match by_value.get(v) {
                                Some(r) if r.is_unknown() => true,
                                // Later wins; equal timestamps go to the greater region
                                // name, as the lww register breaks ties.
                                Some(r) => match (ts_of(r), ts_of(w)) {
                                    (Some(a), Some(b)) => {
                                        (a, r.acked_region()) > (b, w.acked_region())
                                    }
                                    // Without timestamps, order by the client's clock.
                                    _ => r.sent_ms > w.done_ms,
                                },
                                None => false,
                            },
                            None => false,
                        };
                        if !ok {
                            out.lost.push(lost(region, w, describe(&obs)));
                        }
                    }
                }
                Kind::Mvr => {
                    let values: &[String] = match &obs {
                        Observed::Mvr { values } => values,
                        _ => &[],
                    };
                    for w in &acked {
                        if !values.contains(&w.value) {
                            out.lost.push(lost(region, w, describe(&obs)));
                        }
                    }
                }
                Kind::Counter => {
                    let have = match &obs {
                        Observed::Counter { value } => *value,
                        _ => 0,
                    };
                    let want: i64 = acked.iter().map(|w| w.delta).sum();
                    if have < want {
                        // Which increments are missing cannot be told from a sum: list the key
                        // with the shortfall, named by its last acknowledged increment.
                        let last = acked.iter().max_by_key(|w| w.done_ms).copied();
                        if let Some(w) = last {
                            let mut l = lost(
                                region,
                                w,
                                format!(
                                    "counter {have}, acknowledged increments sum to {want}: {} missing",
                                    want - have
                                ),
                            );
                            l.value = format!("{} of {want}", want - have);
                            out.lost.push(l);
                        }
                    }
                }
                Kind::Set => {
                    let members: &[String] = match &obs {
                        Observed::Set { members } => members,
                        _ => &[],
                    };
                    for w in &acked {
                        if !members.contains(&w.value) {
                            out.lost.push(lost(region, w, describe(&obs)));
                        }
                    }
                }
            }
        }
    }
    out.lost
        .sort_by(|a, b| (a.acked_at_ms, &a.region, a.id).cmp(&(b.acked_at_ms, &b.region, b.id)));
    out
}

/// A region cut off from the others (an `isolate` step) during `[from_ms, to_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub region: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// What the cluster promises about who may write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencingRules {
    /// active-standby / active-passive: one lease, one writer per epoch.
    pub leased: bool,
    /// active-active with `[fencing] quorum = true`: `read-only` keyspaces refuse writes in a
    /// minority.
    pub quorum: bool,
    /// `[fencing] lease_ms`: how long after it was cut off a region may still hold a window.
    pub lease_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zombie {
    pub id: u64,
    pub region: String,
    pub keyspace: String,
    pub key: String,
    pub sent_ms: u64,
    pub acked_at_ms: u64,
    pub epoch: Option<u64>,
    pub why: String,
}

/// Writes acknowledged by a region that was not allowed to accept them, judged on the client's
/// one clock:
///
/// 1. (leased models) a write acknowledged by region R under epoch E, *sent after* another
///    region had acknowledged a write of epoch E' >= E: only one region holds the lease of an
///    epoch, and a later epoch starts only after the old holder's window ended;
/// 2. (leased models, every keyspace; active-active with quorum fencing, `read-only` keyspaces)
///    a write acknowledged by a region that an `isolate` step had cut off, sent at least
///    `lease_ms` after the cut began and answered before it ended: by then its window (lease
///    minus margin after its last answered renewal, which was sent before the cut) is over.
pub fn zombies(
    history: &[WriteRecord],
    isolations: &[Isolation],
    rules: &FencingRules,
) -> Vec<Zombie> {
    let mut out = Vec::new();
    let acked: Vec<(&WriteRecord, &str, Option<u64>)> = history
        .iter()
        .filter_map(|w| match &w.outcome {
            Outcome::Acked { region, epoch, .. } => Some((w, region.as_str(), *epoch)),
            _ => None,
        })
        .collect();
    if rules.leased {
        // Per region: (done_ms, epoch) sorted by time, with the running max of the epoch.
        let mut per: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        for (w, r, e) in &acked {
            if let Some(e) = e {
                per.entry(r).or_default().push((w.done_ms, *e));
            }
        }
        for v in per.values_mut() {
            v.sort();
            let mut m = 0;
            for x in v.iter_mut() {
                m = m.max(x.1);
                x.1 = m;
            }
        }
        for (w, r, e) in &acked {
            let Some(e) = e else { continue };
            for (other, v) in &per {
                if other == r {
                    continue;
                }
                // The highest epoch `other` acknowledged before `w` was sent.
                let n = v.partition_point(|(t, _)| *t < w.sent_ms);
                if n > 0 && v[n - 1].1 >= *e {
                    out.push(Zombie {
                        id: w.id,
                        region: r.to_string(),
                        keyspace: w.keyspace.clone(),
                        key: w.key.clone(),
                        sent_ms: w.sent_ms,
                        acked_at_ms: w.done_ms,
                        epoch: Some(*e),
                        why: format!(
                            "{r} acknowledged it under epoch {e} after {other} had acknowledged writes of epoch {}",
                            v[n - 1].1
                        ),
                    });
                    break;
                }
            }
        }
    }
    if rules.leased || rules.quorum {
        for (w, r, e) in &acked {
            if !rules.leased && !w.fenced {
                continue;
            }
            if out.iter().any(|z| z.id == w.id) {
                continue;
            }
            for iso in isolations.iter().filter(|i| i.region == *r) {
                if w.sent_ms >= iso.from_ms.saturating_add(rules.lease_ms) && w.done_ms < iso.to_ms
                {
                    out.push(Zombie {
                        id: w.id,
                        region: r.to_string(),
                        keyspace: w.keyspace.clone(),
                        key: w.key.clone(),
                        sent_ms: w.sent_ms,
                        acked_at_ms: w.done_ms,
                        epoch: *e,
                        why: format!(
                            "{r} was isolated at {} ms; it acknowledged a write sent {} ms later (lease {} ms) while still cut off",
                            iso.from_ms,
                            w.sent_ms - iso.from_ms,
                            rules.lease_ms
                        ),
                    });
                    break;
                }
            }
        }
    }
    out.sort_by_key(|z| (z.sent_ms, z.id));
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub region: String,
    pub keyspace: String,
    pub key: String,
    /// How many applications beyond the writes sent.
    pub extra: i64,
    pub detail: String,
}

/// Non-idempotent writes applied more than once, per region:
/// - counter: the value exceeds the sum of every increment that may have been applied
///   (acknowledged ones plus those whose outcome is unknown);
/// - mvr (each key written once, without a context): the value appears as more than one
///   sibling.
pub fn duplicates(history: &[WriteRecord], fin: &FinalState) -> Vec<Duplicate> {
    let mut out = Vec::new();
    let mut counters: BTreeMap<KeyId, i64> = BTreeMap::new();
    let mut mvr: BTreeMap<KeyId, ()> = BTreeMap::new();
    for w in history {
        let id = (w.keyspace.clone(), w.key.clone());
        match w.kind {
            Kind::Counter if w.is_acked() || w.is_unknown() => {
                *counters.entry(id).or_default() += w.delta;
            }
            Kind::Counter => {
                counters.entry(id).or_default();
            }
            Kind::Mvr => {
                mvr.insert(id, ());
            }
            _ => {}
        }
    }
    for (region, keys) in fin {
        for (id, max) in &counters {
            if let Some(Observed::Counter { value }) = keys.get(id)
                && value > max
            {
                out.push(Duplicate {
                    region: region.clone(),
                    keyspace: id.0.clone(),
                    key: id.1.clone(),
                    extra: value - max,
                    detail: format!("counter {value}, at most {max} could have been applied"),
                });
            }
        }
        for id in mvr.keys() {
            if let Some(Observed::Mvr { values }) = keys.get(id) {
                let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
                for v in values {
                    *seen.entry(v.as_str()).or_default() += 1;
                }
                for (v, n) in seen {
                    if n > 1 {
                        out.push(Duplicate {
                            region: region.clone(),
                            keyspace: id.0.clone(),
                            key: id.1.clone(),
                            extra: n - 1,
                            detail: format!("value {v:?} is {n} siblings"),
                        });
                    }
                }
            }
        }
    }
    out
}
