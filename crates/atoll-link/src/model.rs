//! The pure core of `atoll link`: links, their shaping, faults with leases, and what is in effect
//! at a given time. No sockets, no tokio, no clock: every time is a `now_ms` argument (milliseconds
//! on any monotonic scale the caller chooses).
//!
//! Architecture Invariant: a fault never outlives its lease. [`LinkState::effective`] ignores a
//! fault whose `expires_at_ms <= now_ms` even before [`LinkState::expire`] removes it, so a late
//! expiry pass cannot extend a fault, and a fault lives only in the memory of the process that
//! added it (its controller): when that process ends, every fault ends with it.

use crate::error::{LinkError, Result};
use atoll_core::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Largest accepted delay (latency, jitter, latency spike), ms: 60 s.
pub const MAX_DELAY_MS: f64 = 60_000.0;
/// Longest accepted fault lease, ms: 24 h.
pub const MAX_LEASE_MS: u64 = 24 * 3_600_000;
/// Most faults active on one link at once.
pub const MAX_FAULTS_PER_LINK: usize = 64;
/// Longest accepted link name.
pub const MAX_NAME_LEN: usize = 128;
/// How many recently expired fault ids a link remembers, to tell "expired" from "unknown".
const EXPIRED_MEMORY: usize = 256;

/// How one direction of a link is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shaping {
    /// Added one-way delay, ms (0..=60000).
    pub latency_ms: f64,
    /// Each chunk's delay is `latency_ms` plus a uniform sample in `[-jitter_ms, +jitter_ms]`,
    /// clamped at 0 (0..=60000, and at most 10x `latency_ms`).
    pub jitter_ms: f64,
    /// Token-bucket limit in bytes per second; `None` is unlimited.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

impl Shaping {
    /// No delay, no jitter, no limit.
    pub const NONE: Shaping = Shaping {
        latency_ms: 0.0,
        jitter_ms: 0.0,
        bandwidth_bytes_per_sec: None,
    };

    /// A fixed delay, no jitter, no limit.
    pub fn delay(latency_ms: f64) -> Self {
        Self {
            latency_ms,
            ..Self::NONE
        }
    }

    /// Checks every field; errors name the field as `{prefix}latency_ms` etc.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        validate_delay(&format!("{prefix}latency_ms"), self.latency_ms)?;
        let jitter_field = format!("{prefix}jitter_ms");
        validate_delay(&jitter_field, self.jitter_ms)?;
        if self.jitter_ms > self.latency_ms * 10.0 {
            return Err(LinkError::invalid(
                jitter_field,
                format!(
                    "{} ms is more than 10x the latency ({} ms); raise the latency or lower the jitter",
                    self.jitter_ms, self.latency_ms
                ),
            ));
        }
        if self.bandwidth_bytes_per_sec == Some(0) {
            return Err(LinkError::invalid(
                format!("{prefix}bandwidth"),
                "must be above 0 bytes per second (use a partition to cut a link, or omit it for unlimited)",
            ));
        }
        Ok(())
    }
}

impl Default for Shaping {
    fn default() -> Self {
        Self::NONE
    }
}

/// Checks a delay in ms: finite, not negative, at most [`MAX_DELAY_MS`].
pub fn validate_delay(field: &str, ms: f64) -> Result<()> {
    if ms.is_nan() || ms.is_infinite() {
        return Err(LinkError::invalid(field, "must be a finite number of ms"));
    }
    if ms < 0.0 {
        return Err(LinkError::invalid(
            field,
            format!("{ms} ms is negative; delays are 0..=60000 ms"),
        ));
    }
    if ms > MAX_DELAY_MS {
        return Err(LinkError::invalid(
            field,
            format!("{ms} ms is over the limit of 60000 ms (60 s)"),
        ));
    }
    Ok(())
}

/// Checks a fault lease in ms: 1 ms..=24 h.
pub fn validate_lease(field: &str, lease_ms: u64) -> Result<()> {
    if lease_ms == 0 {
        return Err(LinkError::invalid(
            field,
            "a lease of 0 would end at once; give a duration such as 30s or 10m",
        ));
    }
    if lease_ms > MAX_LEASE_MS {
        return Err(LinkError::invalid(
            field,
            format!("{lease_ms} ms is over the limit of 24h; renew the fault instead"),
        ));
    }
    Ok(())
}

/// Checks a link name: 1-128 characters of `A-Z a-z 0-9 . _ : > -` (so `us-east-1->eu-west-1`).
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'>' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(LinkError::invalid(
            field,
            format!(
                "`{name}` is not a link name: use 1-{MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '.', '_', ':', '>' and '-' (e.g. us-east-1->eu-west-1)"
            ),
        ))
    }
}

/// One emulated link: connections accepted on `listen` are forwarded to `upstream`.
/// `forward` shapes client→upstream bytes, `reverse` upstream→client bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSpec {
    /// `us-east-1->eu-west-1` by convention: traffic from the first region to the second.
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// The region whose processes connect to `listen`, if known.
    pub from_region: Option<RegionId>,
    /// The region `upstream` belongs to, if known.
    pub to_region: Option<RegionId>,
    pub forward: Shaping,
    pub reverse: Shaping,
}

impl LinkSpec {
    /// An unshaped link. Regions are taken from the name when it reads `A->B` with valid region
    /// names.
    pub fn new(name: impl Into<String>, listen: SocketAddr, upstream: SocketAddr) -> Self {
        let name = name.into();
        let (from_region, to_region) = regions_from_name(&name);
        Self {
            name,
            listen,
            upstream,
            from_region,
            to_region,
            forward: Shaping::NONE,
            reverse: Shaping::NONE,
        }
    }

    /// The same link with both directions shaped as given.
    pub fn with_shaping(mut self, forward: Shaping, reverse: Shaping) -> Self {
        self.forward = forward;
        self.reverse = reverse;
        self
    }

    /// The same link with the same fixed one-way delay in both directions.
    pub fn with_delay(self, one_way_ms: f64) -> Self {
        self.with_shaping(Shaping::delay(one_way_ms), Shaping::delay(one_way_ms))
    }

    /// Checks the name, the shaping and that the link does not point at itself.
    pub fn validate(&self) -> Result<()> {
        validate_name("name", &self.name)?;
        self.forward.validate("")?;
        self.reverse.validate("reverse_")?;
        if self.listen == self.upstream && self.listen.port() != 0 {
            return Err(LinkError::invalid(
                "upstream",
                format!(
                    "link `{}` listens on {} and forwards to the same address (a link to itself)",
                    self.name, self.listen
                ),
            ));
        }
        Ok(())
    }
}

/// `A->B` with valid region names gives `(Some(A), Some(B))`.
pub fn regions_from_name(name: &str) -> (Option<RegionId>, Option<RegionId>) {
    match name.split_once("->") {
        Some((a, b)) => match (RegionId::new(a), RegionId::new(b)) {
            (Ok(a), Ok(b)) => (Some(a), Some(b)),
            _ => (None, None),
        },
        None => (None, None),
    }
}

/// One direction of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client → upstream (`from_region` → `to_region`).
    Forward,
    /// Upstream → client (the replies).
    Reverse,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Forward, Direction::Reverse];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a partition treats new connections (existing ones are held in both directions either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionMode {
    /// Packets vanish: new connections wait (no upstream connection is made) and existing ones
    /// stop passing bytes, until the fault ends; then everything flows again.
    Stall,
    /// The far side is refusing: new connections are accepted and reset at once; existing
    /// connections stop passing bytes.
    Refuse,
}

/// Which directions a latency spike slows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpikeDirection {
    Both,
    Forward,
    Reverse,
}

impl SpikeDirection {
    /// Whether the spike applies to `dir`.
    pub fn covers(self, dir: Direction) -> bool {
        match self {
            SpikeDirection::Both => true,
            SpikeDirection::Forward => dir == Direction::Forward,
            SpikeDirection::Reverse => dir == Direction::Reverse,
        }
    }
}

/// What a fault does. Serialized as the control API's fault object (`{"kind": "partition",
/// "mode": "stall"}`, `{"kind": "oneway", "direction": "forward"}`, `{"kind": "reset"}`,
/// `{"kind": "latency", "extra_ms": 200, "direction": "both"}`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FaultKind {
    /// Cut the link both ways.
    Partition { mode: PartitionMode },
    /// Hold back `direction`'s bytes; the other direction flows.
    #[serde(rename = "oneway")]
    OneWay { direction: Direction },
    /// Reset (RST) every existing connection once, when added. Listed until its lease ends, but
    /// has no further effect.
    Reset,
    /// Add `extra_ms` to the latency of the directions named.
    #[serde(rename = "latency")]
    LatencySpike {
        extra_ms: f64,
        direction: SpikeDirection,
    },
}

impl FaultKind {
    /// Checks the parameters (the spike's `extra_ms`).
    pub fn validate(&self) -> Result<()> {
        if let FaultKind::LatencySpike { extra_ms, .. } = self {
            validate_delay("extra_ms", *extra_ms)?;
        }
        Ok(())
    }

    /// A one-line description (`partition (stall)`, `oneway forward`, `latency +200 ms both`).
    pub fn describe(&self) -> String {
        match self {
            FaultKind::Partition { mode } => format!(
                "partition ({})",
                match mode {
                    PartitionMode::Stall => "stall",
                    PartitionMode::Refuse => "refuse",
                }
            ),
            FaultKind::OneWay { direction } => format!("oneway {direction} held"),
            FaultKind::Reset => "reset".into(),
            FaultKind::LatencySpike {
                extra_ms,
                direction,
            } => format!(
                "latency +{extra_ms} ms {}",
                match direction {
                    SpikeDirection::Both => "both",
                    SpikeDirection::Forward => "forward",
                    SpikeDirection::Reverse => "reverse",
                }
            ),
        }
    }
}

/// A fault's id, unique on its link for the life of the process (never reused). Written `f-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultId(pub u64);

impl fmt::Display for FaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "f-{}", self.0)
    }
}

impl FromStr for FaultId {
    type Err = LinkError;

    /// Accepts `f-N` or `N`.
    fn from_str(s: &str) -> Result<Self> {
        let digits = s.strip_prefix("f-").unwrap_or(s);
        digits
            .parse::<u64>()
            .ok()
            .filter(|_| !digits.starts_with('+'))
            .map(FaultId)
            .ok_or_else(|| {
                LinkError::invalid("fault id", format!("`{s}` is not a fault id (like f-3)"))
            })
    }
}

impl Serialize for FaultId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FaultId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An active fault.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub id: FaultId,
    pub kind: FaultKind,
    /// When it was added.
    pub added_at_ms: u64,
    /// It is in effect while `now_ms < expires_at_ms`.
    pub expires_at_ms: u64,
}

impl Fault {
    /// Lease left at `now_ms` (0 once expired).
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms)
    }

    /// Whether the fault is in effect at `now_ms`.
    pub fn active_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// What one direction does at a given time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DirEffect {
    /// Bytes are held back (not delivered) while set.
    pub blocked: bool,
    /// Base latency plus active latency spikes, ms.
    pub latency_ms: f64,
    pub jitter_ms: f64,
    /// Bytes per second; `None` is unlimited.
    pub bandwidth: Option<u64>,
}

/// What a link does at a given time: the base shaping with the active faults applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Effective {
    pub forward: DirEffect,
    pub reverse: DirEffect,
    /// New connections are reset at once (a refusing partition).
    pub refuse_new: bool,
    /// New connections wait, unconnected, until this clears (a stalling partition).
    pub stall_new: bool,
    /// Incremented by every reset fault: a connection opened under an older epoch is reset.
    pub reset_epoch: u64,
}

impl Effective {
    /// The effect on `dir`.
    pub fn dir(&self, dir: Direction) -> &DirEffect {
        match dir {
            Direction::Forward => &self.forward,
            Direction::Reverse => &self.reverse,
        }
    }

    /// No shaping, no faults.
    pub fn unshaped() -> Self {
        let d = DirEffect {
            blocked: false,
            latency_ms: 0.0,
            jitter_ms: 0.0,
            bandwidth: None,
        };
        Self {
            forward: d,
            reverse: d,
            refuse_new: false,
            stall_new: false,
            reset_epoch: 0,
        }
    }
}

/// One link's base shaping and active faults.
#[derive(Clone, Debug)]
pub struct LinkState {
    name: String,
    forward: Shaping,
    reverse: Shaping,
    faults: BTreeMap<FaultId, Fault>,
    next_id: u64,
    recently_expired: VecDeque<FaultId>,
    reset_epoch: u64,
}

impl LinkState {
    /// A link with the given base shaping and no faults.
    pub fn new(name: impl Into<String>, forward: Shaping, reverse: Shaping) -> Result<Self> {
        forward.validate("")?;
        reverse.validate("reverse_")?;
        Ok(Self {
            name: name.into(),
            forward,
            reverse,
            faults: BTreeMap::new(),
            next_id: 1,
            recently_expired: VecDeque::new(),
            reset_epoch: 0,
        })
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Base shaping `(forward, reverse)`.
    pub fn shaping(&self) -> (Shaping, Shaping) {
        (self.forward, self.reverse)
    }

    /// Replaces the base shaping; both are validated first and nothing changes on error.
    pub fn set_shaping(&mut self, forward: Shaping, reverse: Shaping) -> Result<()> {
        forward.validate("")?;
        reverse.validate("reverse_")?;
        self.forward = forward;
        self.reverse = reverse;
        Ok(())
    }

    /// Adds a fault for `lease_ms` from `now_ms` and returns its id. A reset fault bumps the
    /// reset epoch (existing connections are reset once). Nothing changes on error.
    pub fn add_fault(&mut self, kind: FaultKind, lease_ms: u64, now_ms: u64) -> Result<FaultId> {
        kind.validate()?;
        validate_lease("for", lease_ms)?;
        self.expire(now_ms);
        if self.faults.len() >= MAX_FAULTS_PER_LINK {
            return Err(LinkError::TooManyFaults {
                link: self.name.clone(),
                max: MAX_FAULTS_PER_LINK,
            });
        }
        let id = FaultId(self.next_id);
        self.next_id += 1;
        if kind == FaultKind::Reset {
            self.reset_epoch += 1;
        }
        self.faults.insert(
            id,
            Fault {
                id,
                kind,
                added_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(lease_ms),
            },
        );
        Ok(id)
    }

    /// Extends (or shortens) an active fault's lease to `now_ms + lease_ms`. A fault whose lease
    /// has already ended cannot be renewed (it is gone: add a new one).
    pub fn renew(&mut self, id: FaultId, lease_ms: u64, now_ms: u64) -> Result<Fault> {
        validate_lease("for", lease_ms)?;
        self.expire(now_ms);
        match self.faults.get_mut(&id) {
            Some(f) => {
                f.expires_at_ms = now_ms.saturating_add(lease_ms);
                Ok(f.clone())
            }
            None => Err(self.unknown(id)),
        }
    }

    /// Removes a fault (the link heals from it at once).
    pub fn remove(&mut self, id: FaultId) -> Result<Fault> {
        self.faults.remove(&id).ok_or_else(|| self.unknown(id))
    }

    /// Removes every fault (the link heals at once) and returns their ids.
    pub fn clear(&mut self) -> Vec<FaultId> {
        let ids: Vec<FaultId> = self.faults.keys().copied().collect();
        self.faults.clear();
        ids
    }

    /// Removes every fault whose lease has ended (`expires_at_ms <= now_ms`) and returns their
    /// ids, oldest first.
    pub fn expire(&mut self, now_ms: u64) -> Vec<FaultId> {
        let gone: Vec<FaultId> = self
            .faults
            .values()
            .filter(|f| !f.active_at(now_ms))
            .map(|f| f.id)
            .collect();
        for id in &gone {
            self.faults.remove(id);
            self.recently_expired.push_back(*id);
            if self.recently_expired.len() > EXPIRED_MEMORY {
                self.recently_expired.pop_front();
            }
        }
        gone
    }

    /// The faults in effect at `now_ms`, by id.
    pub fn faults(&self, now_ms: u64) -> impl Iterator<Item = &Fault> + '_ {
        self.faults.values().filter(move |f| f.active_at(now_ms))
    }

    /// The fault `id` if it is in effect at `now_ms`.
    pub fn fault(&self, id: FaultId, now_ms: u64) -> Option<&Fault> {
        self.faults.get(&id).filter(|f| f.active_at(now_ms))
    }

    /// The earliest lease end among the stored faults.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.faults.values().map(|f| f.expires_at_ms).min()
    }

    /// What the link does at `now_ms`: faults whose lease has ended are ignored even if
    /// [`expire`](Self::expire) has not run yet.
    pub fn effective(&self, now_ms: u64) -> Effective {
        let mut eff = Effective {
            forward: DirEffect {
                blocked: false,
                latency_ms: self.forward.latency_ms,
                jitter_ms: self.forward.jitter_ms,
                bandwidth: self.forward.bandwidth_bytes_per_sec,
            },
            reverse: DirEffect {
                blocked: false,
                latency_ms: self.reverse.latency_ms,
                jitter_ms: self.reverse.jitter_ms,
                bandwidth: self.reverse.bandwidth_bytes_per_sec,
            },
            refuse_new: false,
            stall_new: false,
            reset_epoch: self.reset_epoch,
        };
        for f in self.faults(now_ms) {
            match f.kind {
                FaultKind::Partition { mode } => {
                    eff.forward.blocked = true;
                    eff.reverse.blocked = true;
                    match mode {
                        PartitionMode::Stall => eff.stall_new = true,
                        PartitionMode::Refuse => eff.refuse_new = true,
                    }
                }
                FaultKind::OneWay { direction } => match direction {
                    Direction::Forward => eff.forward.blocked = true,
                    Direction::Reverse => eff.reverse.blocked = true,
                },
                FaultKind::Reset => {}
                FaultKind::LatencySpike {
                    extra_ms,
                    direction,
                } => {
                    for d in Direction::BOTH {
                        if direction.covers(d) {
                            match d {
                                Direction::Forward => eff.forward.latency_ms += extra_ms,
                                Direction::Reverse => eff.reverse.latency_ms += extra_ms,
                            }
                        }
                    }
                }
            }
        }
        eff
    }

    fn unknown(&self, id: FaultId) -> LinkError {
        LinkError::UnknownFault {
            link: self.name.clone(),
            id: id.to_string(),
            expired: self.recently_expired.contains(&id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> LinkState {
        LinkState::new("a->b", Shaping::delay(20.0), Shaping::delay(30.0)).unwrap()
    }

    const STALL: FaultKind = FaultKind::Partition {
        mode: PartitionMode::Stall,
    };

    #[test]
    fn lease_expires_exactly_at_its_end() {
        let mut s = state();
        let id = s.add_fault(STALL, 300, 1_000).unwrap();
        assert_eq!(id.to_string(), "f-1");
        assert!(s.effective(1_000).forward.blocked);
        assert!(s.effective(1_299).forward.blocked);
        assert!(s.expire(1_299).is_empty());
        // At exactly added + lease the fault is over, even before expire() runs.
        assert!(!s.effective(1_300).forward.blocked);
        assert_eq!(s.faults(1_300).count(), 0);
        assert_eq!(s.next_expiry_ms(), Some(1_300));
        assert_eq!(s.expire(1_300), vec![id]);
        assert_eq!(s.next_expiry_ms(), None);
        assert!(s.expire(1_300).is_empty());
    }

    #[test]
    fn renew_extends_and_unknown_or_expired_ids_are_errors() {
        let mut s = state();
        let id = s.add_fault(STALL, 100, 0).unwrap();
        let f = s.renew(id, 500, 50).unwrap();
        assert_eq!(f.expires_at_ms, 550);
        assert!(s.effective(549).stall_new);
        assert!(!s.effective(550).stall_new);
        // Renewing after the lease ended: expired, named, and it stays gone.
        let e = s.renew(id, 500, 550).unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-FAULT-EXPIRED");
        assert!(e.to_string().contains("f-1"), "{e}");
        assert_eq!(e.http_status(), 404);
        let e = s.remove(id).unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-FAULT-EXPIRED");
        // Never existed.
        let e = s.remove(FaultId(99)).unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-UNKNOWN-FAULT");
        assert!(e.to_string().contains("f-99"));
        let e = s.renew(FaultId(99), 10, 0).unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-UNKNOWN-FAULT");
        // Removed explicitly: unknown (not expired); ids are never reused.
        let id2 = s.add_fault(STALL, 100, 600).unwrap();
        assert_eq!(id2, FaultId(2));
        s.remove(id2).unwrap();
        assert_eq!(
            s.remove(id2).unwrap_err().code(),
            "ATOLL-LINK-UNKNOWN-FAULT"
        );
        assert_eq!(s.add_fault(STALL, 100, 600).unwrap(), FaultId(3));
    }

    #[test]
    fn effects_combine() {
        let mut s = state();
        let base = s.effective(0);
        assert!(!base.forward.blocked && !base.reverse.blocked);
        assert!(!base.refuse_new && !base.stall_new);
        assert_eq!(base.forward.latency_ms, 20.0);
        assert_eq!(base.reverse.latency_ms, 30.0);

        let ow = s
            .add_fault(
                FaultKind::OneWay {
                    direction: Direction::Forward,
                },
                1_000,
                0,
            )
            .unwrap();
        let e = s.effective(0);
        assert!(e.forward.blocked && !e.reverse.blocked && !e.stall_new && !e.refuse_new);

        s.add_fault(
            FaultKind::LatencySpike {
                extra_ms: 100.0,
                direction: SpikeDirection::Reverse,
            },
            500,
            0,
        )
        .unwrap();
        s.add_fault(
            FaultKind::LatencySpike {
                extra_ms: 5.0,
                direction: SpikeDirection::Both,
            },
            1_000,
            0,
        )
        .unwrap();
        let e = s.effective(10);
        assert_eq!(e.forward.latency_ms, 25.0);
        assert_eq!(e.reverse.latency_ms, 135.0);
        let e = s.effective(500);
        assert_eq!(e.reverse.latency_ms, 35.0);

        s.remove(ow).unwrap();
        let refuse = s
            .add_fault(
                FaultKind::Partition {
                    mode: PartitionMode::Refuse,
                },
                1_000,
                0,
            )
            .unwrap();
        let e = s.effective(0);
        assert!(e.forward.blocked && e.reverse.blocked && e.refuse_new && !e.stall_new);
        s.remove(refuse).unwrap();

        assert_eq!(s.effective(0).reset_epoch, 0);
        s.add_fault(FaultKind::Reset, 1_000, 0).unwrap();
        let e = s.effective(0);
        assert_eq!(e.reset_epoch, 1);
        assert!(!e.forward.blocked);
        // The epoch stays after the reset fault expires: connections reset once, not again.
        s.expire(2_000);
        assert_eq!(s.effective(2_000).reset_epoch, 1);
    }

    #[test]
    fn validation_names_the_field_and_changes_nothing() {
        let mut s = state();
        let cases: [(FaultKind, u64, &str); 6] = [
            (STALL, 0, "for"),
            (STALL, MAX_LEASE_MS + 1, "for"),
            (
                FaultKind::LatencySpike {
                    extra_ms: -1.0,
                    direction: SpikeDirection::Both,
                },
                1_000,
                "extra_ms",
            ),
            (
                FaultKind::LatencySpike {
                    extra_ms: f64::NAN,
                    direction: SpikeDirection::Both,
                },
                1_000,
                "extra_ms",
            ),
            (
                FaultKind::LatencySpike {
                    extra_ms: 60_001.0,
                    direction: SpikeDirection::Both,
                },
                1_000,
                "extra_ms",
            ),
            (
                FaultKind::LatencySpike {
                    extra_ms: f64::INFINITY,
                    direction: SpikeDirection::Both,
                },
                1_000,
                "extra_ms",
            ),
        ];
        for (kind, lease, field) in cases {
            let e = s.add_fault(kind, lease, 0).unwrap_err();
            assert_eq!(e.code(), "ATOLL-LINK-INVALID");
            assert!(e.to_string().contains(field), "{e}");
        }
        assert_eq!(s.faults(0).count(), 0);
        assert!(s.add_fault(STALL, MAX_LEASE_MS, 0).is_ok());

        let bad_shapings = [
            (Shaping::delay(-1.0), "latency_ms"),
            (Shaping::delay(f64::NAN), "latency_ms"),
            (Shaping::delay(60_000.5), "latency_ms"),
            (
                Shaping {
                    latency_ms: 10.0,
                    jitter_ms: 101.0,
                    bandwidth_bytes_per_sec: None,
                },
                "jitter_ms",
            ),
            (
                Shaping {
                    latency_ms: 0.0,
                    jitter_ms: 1.0,
                    bandwidth_bytes_per_sec: None,
                },
                "jitter_ms",
            ),
            (
                Shaping {
                    latency_ms: 10.0,
                    jitter_ms: -1.0,
                    bandwidth_bytes_per_sec: None,
                },
                "jitter_ms",
            ),
            (
                Shaping {
                    latency_ms: 10.0,
                    jitter_ms: 0.0,
                    bandwidth_bytes_per_sec: Some(0),
                },
                "bandwidth",
            ),
        ];
        for (bad, field) in bad_shapings {
            let e = s.set_shaping(bad, Shaping::NONE).unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
            let e = s.set_shaping(Shaping::NONE, bad).unwrap_err();
            assert!(e.to_string().contains(&format!("reverse_{field}")), "{e}");
        }
        assert_eq!(s.shaping(), (Shaping::delay(20.0), Shaping::delay(30.0)));
        assert!(
            Shaping {
                latency_ms: 60_000.0,
                jitter_ms: 60_000.0,
                bandwidth_bytes_per_sec: Some(1)
            }
            .validate("")
            .is_ok()
        );
    }

    #[test]
    fn fault_limit() {
        let mut s = state();
        for _ in 0..MAX_FAULTS_PER_LINK {
            s.add_fault(FaultKind::Reset, 1_000, 0).unwrap();
        }
        let e = s.add_fault(STALL, 1_000, 0).unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-TOO-MANY-FAULTS");
        // Expired faults make room.
        assert!(s.add_fault(STALL, 1_000, 1_000).is_ok());
    }

    #[test]
    fn names_ids_and_specs() {
        assert!(validate_name("name", "us-east-1->eu-west-1").is_ok());
        for bad in ["", "a/b", "a b", "a%3E", &"x".repeat(129)] {
            assert!(validate_name("name", bad).is_err(), "{bad}");
        }
        assert_eq!("f-12".parse::<FaultId>().unwrap(), FaultId(12));
        assert_eq!("12".parse::<FaultId>().unwrap(), FaultId(12));
        for bad in ["f-", "f-x", "g-1", "-1", "+1", "f-+1"] {
            assert!(bad.parse::<FaultId>().is_err(), "{bad}");
        }
        let spec = LinkSpec::new(
            "us-east-1->eu-west-1",
            "127.0.0.1:7300".parse().unwrap(),
            "127.0.0.1:7101".parse().unwrap(),
        );
        assert_eq!(spec.from_region.as_ref().unwrap().as_str(), "us-east-1");
        assert_eq!(spec.to_region.as_ref().unwrap().as_str(), "eu-west-1");
        assert!(spec.validate().is_ok());
        let own = LinkSpec::new(
            "loop",
            "127.0.0.1:7300".parse().unwrap(),
            "127.0.0.1:7300".parse().unwrap(),
        );
        assert!(own.from_region.is_none());
        let e = own.validate().unwrap_err();
        assert!(e.to_string().contains("itself"), "{e}");
    }

    #[test]
    fn fault_kind_json_shape() {
        let k = FaultKind::LatencySpike {
            extra_ms: 200.0,
            direction: SpikeDirection::Both,
        };
        assert_eq!(
            serde_json::to_value(k).unwrap(),
            serde_json::json!({"kind": "latency", "extra_ms": 200.0, "direction": "both"})
        );
        assert_eq!(
            serde_json::to_value(FaultKind::OneWay {
                direction: Direction::Reverse
            })
            .unwrap(),
            serde_json::json!({"kind": "oneway", "direction": "reverse"})
        );
        assert_eq!(
            serde_json::to_value(FaultKind::Reset).unwrap(),
            serde_json::json!({"kind": "reset"})
        );
    }
}
