//! The pure core of `atoll link`: links, their shaping, faults with leases, and what is in effect
//! at a given time. No sockets, no tokio, no clock: every time is a `now_ms` argument (milliseconds
//! on any monotonic scale the caller chooses).
//!
//! A fault has a target ([`FaultTarget`]): one link (`us-east-1->eu-west-1`), a pair of regions
//! (`us-east-1<->eu-west-1`: every link between them, both directions) or a region (`us-east-1`,
//! kind [`FaultKind::Isolate`]: every link to and from it). Whatever it covers, it is one fault in
//! the [`Mesh`]: one id, one lease, so renewing, removing or expiring it acts on every link it
//! covers at once, and no link can stay cut after the others healed.
//!
//! Architecture Invariant: a fault never outlives its lease. [`Mesh::effective`] ignores a fault
//! whose `expires_at_ms <= now_ms` even before [`Mesh::expire`] removes it, so a late expiry pass
//! cannot extend a fault, and a fault lives only in the memory of the process that added it (its
//! controller): when that process ends, every fault ends with it.

use crate::error::{LinkError, Result};
use atoll_core::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Largest accepted delay (latency, jitter, latency spike), ms: 60 s.
pub const MAX_DELAY_MS: f64 = 60_000.0;
/// Longest accepted fault lease, ms: 24 h.
pub const MAX_LEASE_MS: u64 = 24 * 3_600_000;
/// Most faults active on one link at once (a pair or region fault counts on every link it covers).
pub const MAX_FAULTS_PER_LINK: usize = 64;
/// Between the two regions of a pair target: `us-east-1<->eu-west-1`.
pub const PAIR_SEPARATOR: &str = "<->";
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
/// "mode": "stall"}`, `{"kind": "isolate", "mode": "stall"}`, `{"kind": "oneway", "direction":
/// "forward"}`, `{"kind": "reset"}`, `{"kind": "latency", "extra_ms": 200, "direction": "both"}`).
/// Which kinds a target takes: [`FaultTarget::check_kind`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FaultKind {
    /// Cut the link both ways.
    Partition { mode: PartitionMode },
    /// Cut every link to and from a region (region targets only): a partition of each.
    Isolate { mode: PartitionMode },
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

    /// The kind's name in the control API and the CLI (`partition`, `isolate`, `oneway`, `reset`,
    /// `latency`).
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Partition { .. } => "partition",
            FaultKind::Isolate { .. } => "isolate",
            FaultKind::OneWay { .. } => "oneway",
            FaultKind::Reset => "reset",
            FaultKind::LatencySpike { .. } => "latency",
        }
    }

    /// A one-line description (`partition (stall)`, `oneway forward`, `latency +200 ms both`).
    pub fn describe(&self) -> String {
        let mode_name = |mode: &PartitionMode| match mode {
            PartitionMode::Stall => "stall",
            PartitionMode::Refuse => "refuse",
        };
        match self {
            FaultKind::Partition { mode } => format!("partition ({})", mode_name(mode)),
            FaultKind::Isolate { mode } => format!("isolate ({})", mode_name(mode)),
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

/// What a fault covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FaultTarget {
    /// One link, by name: one direction of connections (`us-east-1->eu-west-1` carries the
    /// connections us-east-1 opens to eu-west-1, and their replies).
    Link(String),
    /// Every link between two different regions, both ways (`us-east-1<->eu-west-1`: the links
    /// from the first to the second and from the second to the first). Kinds: partition, reset,
    /// latency with direction both.
    Pair(RegionId, RegionId),
    /// Every link to or from the region (kind isolate only).
    Region(RegionId),
}

impl FaultTarget {
    /// A link target; the name is checked ([`validate_name`]).
    pub fn link(name: &str) -> Result<Self> {
        validate_name("link", name)?;
        Ok(Self::Link(name.to_string()))
    }

    /// A region target: a valid region name.
    pub fn region(name: &str) -> Result<Self> {
        Ok(Self::Region(region_id("region", name)?))
    }

    /// A pair target from `A<->B`: two valid, different region names.
    pub fn pair(text: &str) -> Result<Self> {
        let Some((a, b)) = text.split_once(PAIR_SEPARATOR) else {
            return Err(LinkError::invalid(
                "pair",
                format!(
                    "`{text}` is not a pair of regions: write it A<->B (e.g. us-east-1<->eu-west-1)"
                ),
            ));
        };
        let (a, b) = (region_id("pair", a)?, region_id("pair", b)?);
        if a == b {
            return Err(LinkError::SameRegion(a.to_string()));
        }
        Ok(Self::Pair(a, b))
    }

    /// `link`, `pair` or `region`.
    pub fn scope(&self) -> &'static str {
        match self {
            Self::Link(_) => "link",
            Self::Pair(..) => "pair",
            Self::Region(_) => "region",
        }
    }

    /// Whether `other` is the same target (a pair in either order).
    pub fn same_as(&self, other: &FaultTarget) -> bool {
        match (self, other) {
            (Self::Pair(a, b), Self::Pair(c, d)) => (a == c && b == d) || (a == d && b == c),
            _ => self == other,
        }
    }

    /// Whether the target covers the link `name` from `from` to `to`.
    fn covers(&self, name: &str, from: Option<&RegionId>, to: Option<&RegionId>) -> bool {
        match self {
            Self::Link(l) => l == name,
            Self::Pair(a, b) => {
                (from == Some(a) && to == Some(b)) || (from == Some(b) && to == Some(a))
            }
            Self::Region(r) => from == Some(r) || to == Some(r),
        }
    }

    /// Checks that the target takes `kind`: a link takes every kind but isolate; a pair takes
    /// partition, reset and latency in both directions (forward and reverse are a link's
    /// directions, which a pair's two links have opposite ways round); a region takes isolate.
    pub fn check_kind(&self, kind: &FaultKind) -> Result<()> {
        let refuse = |field: &str, reason: String| Err(LinkError::invalid(field, reason));
        match (self, kind) {
            (Self::Link(l), FaultKind::Isolate { .. }) => refuse(
                "kind",
                format!(
                    "isolate cuts every link to and from a region: give a region (e.g. us-east-1), not link `{l}`; to cut this link use partition"
                ),
            ),
            (Self::Link(_), _) => Ok(()),
            (Self::Pair(..), FaultKind::Partition { .. } | FaultKind::Reset) => Ok(()),
            (
                Self::Pair(..),
                FaultKind::LatencySpike {
                    direction: SpikeDirection::Both,
                    ..
                },
            ) => Ok(()),
            (Self::Pair(a, b), FaultKind::LatencySpike { .. }) => refuse(
                "direction",
                format!(
                    "a latency fault on pair `{a}<->{b}` slows both directions of both links; to slow one way, add it to link {a}->{b} or {b}->{a}"
                ),
            ),
            (Self::Pair(a, b), FaultKind::OneWay { .. }) => refuse(
                "kind",
                format!(
                    "oneway holds one direction of one link: add it to link {a}->{b} or {b}->{a}, not to pair `{a}<->{b}`"
                ),
            ),
            (Self::Pair(a, b), FaultKind::Isolate { .. }) => refuse(
                "kind",
                format!(
                    "isolate takes one region (e.g. {a}); to cut pair `{a}<->{b}` both ways use partition"
                ),
            ),
            (Self::Region(_), FaultKind::Isolate { .. }) => Ok(()),
            (Self::Region(r), other) => refuse(
                "kind",
                format!(
                    "a region target takes kind isolate (every link to and from `{r}` cut), not {}; name a link or a pair for {}",
                    other.name(),
                    other.name()
                ),
            ),
        }
    }
}

impl fmt::Display for FaultTarget {
    /// The link's name, `A<->B` or the region's name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Link(l) => f.write_str(l),
            Self::Pair(a, b) => write!(f, "{a}{PAIR_SEPARATOR}{b}"),
            Self::Region(r) => f.write_str(r.as_str()),
        }
    }
}

fn region_id(field: &str, name: &str) -> Result<RegionId> {
    RegionId::new(name).map_err(|_| {
        LinkError::invalid(
            field,
            format!(
                "`{name}` is not a region name: use 1-{} characters of a-z, 0-9 and '-', not starting or ending with '-' (e.g. us-east-1)",
                RegionId::MAX_LEN
            ),
        )
    })
}

/// A fault's id, unique on its link server for the life of the process (never reused, whatever
/// the fault's target). Written `f-N`.
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
    /// What it was added to.
    pub target: FaultTarget,
    /// The links it covers, by name (sorted), resolved when it was added: the links of a server
    /// do not change while it runs.
    pub links: Vec<String>,
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

    /// Whether it covers link `name`.
    pub fn covers(&self, name: &str) -> bool {
        self.links.iter().any(|l| l == name)
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

/// One link as the core knows it: its regions, base shaping and reset epoch.
#[derive(Clone, Debug)]
struct MeshLink {
    from: Option<RegionId>,
    to: Option<RegionId>,
    forward: Shaping,
    reverse: Shaping,
    /// Incremented by every reset fault that covers the link.
    reset_epoch: u64,
}

/// The links of one link server and every fault on them: the controller's pure core.
///
/// A fault is stored once, with its target and the links it covers; what a link does
/// ([`effective`](Self::effective)) is its base shaping with every active fault that covers it
/// applied. So a pair or region fault has one id and one lease for all its links, and renewing,
/// removing or expiring it acts on all of them at once. Every mutation is validated completely
/// before anything changes.
#[derive(Clone, Debug)]
pub struct Mesh {
    links: BTreeMap<String, MeshLink>,
    faults: BTreeMap<FaultId, Fault>,
    next_id: u64,
    /// Recently expired faults and the links they covered, to tell "expired" from "unknown".
    recently_expired: VecDeque<(FaultId, Vec<String>)>,
}

impl Mesh {
    /// A mesh of `specs` (their names, regions and base shaping), with no faults.
    pub fn new(specs: &[LinkSpec]) -> Result<Self> {
        let mut links = BTreeMap::new();
        for spec in specs {
            spec.forward.validate("")?;
            spec.reverse.validate("reverse_")?;
            let link = MeshLink {
                from: spec.from_region.clone(),
                to: spec.to_region.clone(),
                forward: spec.forward,
                reverse: spec.reverse,
                reset_epoch: 0,
            };
            if links.insert(spec.name.clone(), link).is_some() {
                return Err(LinkError::Config(format!(
                    "two links are named `{}`",
                    spec.name
                )));
            }
        }
        Ok(Self {
            links,
            faults: BTreeMap::new(),
            next_id: 1,
            recently_expired: VecDeque::new(),
        })
    }

    /// The link names, sorted.
    pub fn link_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.links.keys().map(String::as_str)
    }

    /// Every region some link goes to or from, sorted.
    pub fn regions(&self) -> BTreeSet<RegionId> {
        self.links
            .values()
            .flat_map(|l| l.from.iter().chain(l.to.iter()))
            .cloned()
            .collect()
    }

    fn link(&self, name: &str) -> Result<&MeshLink> {
        self.links
            .get(name)
            .ok_or_else(|| LinkError::UnknownLink(name.to_string()))
    }

    /// Base shaping `(forward, reverse)` of link `name`.
    pub fn shaping(&self, name: &str) -> Result<(Shaping, Shaping)> {
        let l = self.link(name)?;
        Ok((l.forward, l.reverse))
    }

    /// Replaces the base shaping of link `name`; both are validated first and nothing changes on
    /// error.
    pub fn set_shaping(&mut self, name: &str, forward: Shaping, reverse: Shaping) -> Result<()> {
        self.link(name)?;
        forward.validate("")?;
        reverse.validate("reverse_")?;
        if let Some(l) = self.links.get_mut(name) {
            l.forward = forward;
            l.reverse = reverse;
        }
        Ok(())
    }

    /// The links `target` covers, sorted; an error when it covers none. A pair must have a link
    /// each way: with one direction missing, that direction's connections would not go through
    /// this server at all, and the "partition" would cut one way only.
    pub fn resolve(&self, target: &FaultTarget) -> Result<Vec<String>> {
        let covered = |t: &FaultTarget| -> Vec<String> {
            self.links
                .iter()
                .filter(|(name, l)| t.covers(name, l.from.as_ref(), l.to.as_ref()))
                .map(|(name, _)| name.clone())
                .collect()
        };
        match target {
            FaultTarget::Link(name) => {
                if self.links.contains_key(name) {
                    return Ok(vec![name.clone()]);
                }
                // `us-east-1` where a link was expected: say what to do instead.
                if let Ok(r) = RegionId::new(name)
                    && self.regions().contains(&r)
                {
                    return Err(LinkError::invalid(
                        "link",
                        format!(
                            "`{name}` is a region, not a link: isolate it with kind isolate, or name a link (e.g. {name}->OTHER) or a pair ({name}<->OTHER)"
                        ),
                    ));
                }
                Err(LinkError::UnknownLink(name.clone()))
            }
            FaultTarget::Region(r) => {
                self.known_region(r)?;
                Ok(covered(target))
            }
            FaultTarget::Pair(a, b) => {
                if a == b {
                    return Err(LinkError::SameRegion(a.to_string()));
                }
                self.known_region(a)?;
                self.known_region(b)?;
                let links = covered(target);
                let one_way = |from: &RegionId, to: &RegionId| {
                    links.iter().any(|n| {
                        self.links.get(n).is_some_and(|l| {
                            l.from.as_ref() == Some(from) && l.to.as_ref() == Some(to)
                        })
                    })
                };
                match (one_way(a, b), one_way(b, a)) {
                    (true, true) => Ok(links),
                    (false, false) => Err(LinkError::NoLinks {
                        target: target.to_string(),
                        reason: format!("no link goes from {a} to {b} or from {b} to {a}"),
                    }),
                    (ab, _) => {
                        let (from, to) = if ab { (b, a) } else { (a, b) };
                        Err(LinkError::NoLinks {
                            target: target.to_string(),
                            reason: format!(
                                "no link goes from {from} to {to}, so {from}'s connections to {to} would still flow; to cut the one direction there is, fault link {}",
                                links.join(", ")
                            ),
                        })
                    }
                }
            }
        }
    }

    /// A region is known when some link goes to or from it (a link server knows regions only
    /// through its links, so an unknown region and a region with no links are the same error).
    fn known_region(&self, r: &RegionId) -> Result<()> {
        let regions = self.regions();
        if regions.contains(r) {
            return Ok(());
        }
        Err(LinkError::UnknownRegion {
            region: r.to_string(),
            known: regions
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Adds a fault on `target` for `lease_ms` from `now_ms` and returns its id. A reset fault
    /// bumps the reset epoch of every link it covers (their existing connections are reset once).
    /// Nothing changes on error.
    pub fn add(
        &mut self,
        target: FaultTarget,
        kind: FaultKind,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<FaultId> {
        kind.validate()?;
        validate_lease("for", lease_ms)?;
        target.check_kind(&kind)?;
        let links = self.resolve(&target)?;
        for name in &links {
            let active = self
                .faults
                .values()
                .filter(|f| f.active_at(now_ms) && f.covers(name))
                .count();
            if active >= MAX_FAULTS_PER_LINK {
                return Err(LinkError::TooManyFaults {
                    link: name.clone(),
                    max: MAX_FAULTS_PER_LINK,
                });
            }
        }
        // Everything is checked: from here on nothing fails.
        self.expire(now_ms);
        let id = FaultId(self.next_id);
        self.next_id += 1;
        if kind == FaultKind::Reset {
            for name in &links {
                if let Some(l) = self.links.get_mut(name) {
                    l.reset_epoch += 1;
                }
            }
        }
        self.faults.insert(
            id,
            Fault {
                id,
                kind,
                target,
                links,
                added_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(lease_ms),
            },
        );
        Ok(id)
    }

    /// Sets an active fault's lease to `now_ms + lease_ms` (longer or shorter), for every link
    /// it covers. A fault whose lease has already ended cannot be renewed (it is gone: add a new
    /// one).
    pub fn renew(&mut self, id: FaultId, lease_ms: u64, now_ms: u64) -> Result<Fault> {
        validate_lease("for", lease_ms)?;
        self.expire(now_ms);
        match self.faults.get_mut(&id) {
            Some(f) => {
                f.expires_at_ms = now_ms.saturating_add(lease_ms);
                Ok(f.clone())
            }
            None => Err(self.unknown(id, None)),
        }
    }

    /// Removes a fault: every link it covers heals from it at once.
    pub fn remove(&mut self, id: FaultId) -> Result<Fault> {
        match self.faults.remove(&id) {
            Some(f) => Ok(f),
            None => Err(self.unknown(id, None)),
        }
    }

    /// [`renew`](Self::renew) through one link: the fault must be a fault of that link (target
    /// [`FaultTarget::Link`]); a pair or region fault that covers it is renewed as a whole, by
    /// its id, not through one of its links.
    pub fn renew_on_link(
        &mut self,
        link: &str,
        id: FaultId,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Fault> {
        validate_lease("for", lease_ms)?;
        self.expire(now_ms);
        self.check_on_link(link, id)?;
        self.renew(id, lease_ms, now_ms)
    }

    /// [`remove`](Self::remove) through one link, with the checks of
    /// [`renew_on_link`](Self::renew_on_link).
    pub fn remove_on_link(&mut self, link: &str, id: FaultId) -> Result<Fault> {
        self.check_on_link(link, id)?;
        self.remove(id)
    }

    fn check_on_link(&self, link: &str, id: FaultId) -> Result<()> {
        self.link(link)?;
        match self.faults.get(&id) {
            Some(f) if f.target == FaultTarget::Link(link.to_string()) => Ok(()),
            Some(f) if f.covers(link) => Err(LinkError::FaultScope {
                id: id.to_string(),
                scope: f.target.scope(),
                target: f.target.to_string(),
                link: link.to_string(),
            }),
            _ => Err(self.unknown(id, Some(link))),
        }
    }

    /// Removes the faults added to link `name` (target [`FaultTarget::Link`]) and returns their
    /// ids. Pair and region faults that cover it stay: they are removed as a whole, by id.
    pub fn clear_link(&mut self, name: &str) -> Result<Vec<FaultId>> {
        self.link(name)?;
        let own = FaultTarget::Link(name.to_string());
        let ids: Vec<FaultId> = self
            .faults
            .values()
            .filter(|f| f.target == own)
            .map(|f| f.id)
            .collect();
        for id in &ids {
            self.faults.remove(id);
        }
        Ok(ids)
    }

    /// Removes every fault (every link heals at once) and returns their ids.
    pub fn clear(&mut self) -> Vec<FaultId> {
        let ids: Vec<FaultId> = self.faults.keys().copied().collect();
        self.faults.clear();
        ids
    }

    /// Removes every fault whose lease has ended (`expires_at_ms <= now_ms`) and returns them,
    /// oldest first: each heals every link it covered at once.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Fault> {
        let gone: Vec<FaultId> = self
            .faults
            .values()
            .filter(|f| !f.active_at(now_ms))
            .map(|f| f.id)
            .collect();
        let mut out = Vec::with_capacity(gone.len());
        for id in gone {
            if let Some(f) = self.faults.remove(&id) {
                self.recently_expired.push_back((id, f.links.clone()));
                if self.recently_expired.len() > EXPIRED_MEMORY {
                    self.recently_expired.pop_front();
                }
                out.push(f);
            }
        }
        out
    }

    /// The faults in effect at `now_ms`, by id.
    pub fn faults(&self, now_ms: u64) -> impl Iterator<Item = &Fault> + '_ {
        self.faults.values().filter(move |f| f.active_at(now_ms))
    }

    /// The faults in effect on link `name` at `now_ms` (its own and the pair and region faults
    /// that cover it), by id.
    pub fn faults_on<'a>(
        &'a self,
        name: &'a str,
        now_ms: u64,
    ) -> impl Iterator<Item = &'a Fault> + 'a {
        self.faults(now_ms).filter(move |f| f.covers(name))
    }

    /// The fault `id` if it is in effect at `now_ms`, or why not.
    pub fn fault(&self, id: FaultId, now_ms: u64) -> Result<&Fault> {
        match self.faults.get(&id) {
            Some(f) if f.active_at(now_ms) => Ok(f),
            Some(_) => Err(LinkError::UnknownFault {
                on: ON_SERVER.into(),
                id: id.to_string(),
                expired: true,
            }),
            None => Err(self.unknown(id, None)),
        }
    }

    /// The earliest lease end among the stored faults.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.faults.values().map(|f| f.expires_at_ms).min()
    }

    /// What link `name` does at `now_ms`: its base shaping with every fault that covers it
    /// applied. Faults whose lease has ended are ignored even if [`expire`](Self::expire) has not
    /// run yet.
    pub fn effective(&self, name: &str, now_ms: u64) -> Result<Effective> {
        let link = self.link(name)?;
        let mut eff = Effective {
            forward: DirEffect {
                blocked: false,
                latency_ms: link.forward.latency_ms,
                jitter_ms: link.forward.jitter_ms,
                bandwidth: link.forward.bandwidth_bytes_per_sec,
            },
            reverse: DirEffect {
                blocked: false,
                latency_ms: link.reverse.latency_ms,
                jitter_ms: link.reverse.jitter_ms,
                bandwidth: link.reverse.bandwidth_bytes_per_sec,
            },
            refuse_new: false,
            stall_new: false,
            reset_epoch: link.reset_epoch,
        };
        for f in self.faults_on(name, now_ms) {
            match f.kind {
                FaultKind::Partition { mode } | FaultKind::Isolate { mode } => {
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
        Ok(eff)
    }

    /// Unknown or expired `id`, asked through `link` (or the server as a whole).
    fn unknown(&self, id: FaultId, link: Option<&str>) -> LinkError {
        let expired = self
            .recently_expired
            .iter()
            .any(|(gone, links)| *gone == id && link.is_none_or(|l| links.iter().any(|n| n == l)));
        LinkError::UnknownFault {
            on: match link {
                Some(l) => format!("link `{l}`"),
                None => ON_SERVER.into(),
            },
            id: id.to_string(),
            expired,
        }
    }
}

/// How an error names the whole server as the place a fault is not active.
const ON_SERVER: &str = "this link server";

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A mesh of one link `a->b`, shaped 20 ms forward and 30 ms reverse.
    fn state() -> One {
        let spec = LinkSpec::new("a->b", addr(), "127.0.0.1:9".parse().unwrap())
            .with_shaping(Shaping::delay(20.0), Shaping::delay(30.0));
        One(Mesh::new(&[spec]).unwrap())
    }

    /// The one-link API of the old per-link state, over a [`Mesh`] of one link `a->b`, so the
    /// single-link tests read as before.
    struct One(Mesh);

    impl One {
        fn add_fault(&mut self, kind: FaultKind, lease: u64, now: u64) -> Result<FaultId> {
            self.0
                .add(FaultTarget::Link("a->b".into()), kind, lease, now)
        }
        fn renew(&mut self, id: FaultId, lease: u64, now: u64) -> Result<Fault> {
            self.0.renew_on_link("a->b", id, lease, now)
        }
        fn remove(&mut self, id: FaultId) -> Result<Fault> {
            self.0.remove_on_link("a->b", id)
        }
        fn expire(&mut self, now: u64) -> Vec<FaultId> {
            self.0.expire(now).into_iter().map(|f| f.id).collect()
        }
        fn effective(&self, now: u64) -> Effective {
            self.0.effective("a->b", now).unwrap()
        }
        fn faults(&self, now: u64) -> impl Iterator<Item = &Fault> + '_ {
            self.0.faults_on("a->b", now)
        }
        fn next_expiry_ms(&self) -> Option<u64> {
            self.0.next_expiry_ms()
        }
        fn set_shaping(&mut self, f: Shaping, r: Shaping) -> Result<()> {
            self.0.set_shaping("a->b", f, r)
        }
        fn shaping(&self) -> (Shaping, Shaping) {
            self.0.shaping("a->b").unwrap()
        }
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

    /// A mesh with one link `A->B` per `(A, B)`, unshaped.
    fn mesh(pairs: &[(&str, &str)]) -> Mesh {
        let specs: Vec<LinkSpec> = pairs
            .iter()
            .map(|(a, b)| {
                LinkSpec::new(format!("{a}->{b}"), addr(), "127.0.0.1:9".parse().unwrap())
            })
            .collect();
        Mesh::new(&specs).unwrap()
    }

    /// The three-region mesh of the demo: a link each way between every two regions.
    fn three() -> Mesh {
        mesh(&[
            ("us-east-1", "eu-west-1"),
            ("us-east-1", "ap-southeast-1"),
            ("eu-west-1", "us-east-1"),
            ("eu-west-1", "ap-southeast-1"),
            ("ap-southeast-1", "us-east-1"),
            ("ap-southeast-1", "eu-west-1"),
        ])
    }

    /// The links that are cut (both directions blocked) at `now`, sorted.
    fn cut(m: &Mesh, now: u64) -> Vec<String> {
        m.link_names()
            .filter(|n| {
                let e = m.effective(n, now).unwrap();
                e.forward.blocked && e.reverse.blocked
            })
            .map(str::to_string)
            .collect()
    }

    fn region(r: &str) -> FaultTarget {
        FaultTarget::region(r).unwrap()
    }

    fn pair(p: &str) -> FaultTarget {
        FaultTarget::pair(p).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    const ISOLATE: FaultKind = FaultKind::Isolate {
        mode: PartitionMode::Stall,
    };

    #[test]
    fn isolate_and_pair_cover_their_links_with_one_id_and_one_lease() {
        let mut m = three();
        let iso = m.add(region("us-east-1"), ISOLATE, 1_000, 0).unwrap();
        let us_links = names(&[
            "us-east-1->eu-west-1",
            "us-east-1->ap-southeast-1",
            "eu-west-1->us-east-1",
            "ap-southeast-1->us-east-1",
        ]);
        assert_eq!(cut(&m, 0), us_links);
        assert_eq!(m.fault(iso, 0).unwrap().links, us_links);
        assert!(m.effective("us-east-1->eu-west-1", 0).unwrap().stall_new);
        // One fault, listed once, and on each link it covers.
        assert_eq!(m.faults(0).count(), 1);
        for l in &us_links {
            assert_eq!(m.faults_on(l, 0).map(|f| f.id).collect::<Vec<_>>(), [iso]);
        }
        assert_eq!(m.faults_on("eu-west-1->ap-southeast-1", 0).count(), 0);

        let p = m
            .add(
                pair("eu-west-1<->ap-southeast-1"),
                FaultKind::Partition {
                    mode: PartitionMode::Refuse,
                },
                500,
                100,
            )
            .unwrap();
        assert_ne!(p, iso, "ids are unique on the server");
        assert_eq!(
            m.fault(p, 100).unwrap().links,
            names(&["eu-west-1->ap-southeast-1", "ap-southeast-1->eu-west-1"])
        );
        assert_eq!(cut(&m, 100).len(), 6);
        assert!(
            m.effective("ap-southeast-1->eu-west-1", 100)
                .unwrap()
                .refuse_new
        );

        // The pair's lease ends at 600: both of its links heal at that instant, together.
        assert_eq!(cut(&m, 599).len(), 6);
        assert_eq!(cut(&m, 600), us_links);
        let gone = m.expire(600);
        assert_eq!(gone.iter().map(|f| f.id).collect::<Vec<_>>(), [p]);
        assert_eq!(gone[0].links.len(), 2);

        // Renewing the isolate moves the lease of all four links at once.
        let f = m.renew(iso, 5_000, 900).unwrap();
        assert_eq!(f.expires_at_ms, 5_900);
        assert_eq!(cut(&m, 5_899), us_links);
        assert!(cut(&m, 5_900).is_empty());
        // Removing it heals all four at once.
        m.remove(iso).unwrap();
        assert!(cut(&m, 1_000).is_empty());
        assert_eq!(m.faults(1_000).count(), 0);
        assert_eq!(
            m.remove(iso).unwrap_err().code(),
            "ATOLL-LINK-UNKNOWN-FAULT"
        );
        assert_eq!(
            m.renew(p, 10, 1_000).unwrap_err().code(),
            "ATOLL-LINK-FAULT-EXPIRED"
        );
    }

    #[test]
    fn a_pair_in_either_order_is_the_same_pair() {
        let a = pair("us-east-1<->eu-west-1");
        let b = pair("eu-west-1<->us-east-1");
        assert!(a.same_as(&b) && b.same_as(&a));
        assert_ne!(a, b, "each keeps the order it was written in");
        assert_eq!(a.to_string(), "us-east-1<->eu-west-1");
        assert_eq!(b.to_string(), "eu-west-1<->us-east-1");
        assert!(!a.same_as(&region("us-east-1")));
        let mut m = three();
        let x = m.add(a, FaultKind::Reset, 100, 0).unwrap();
        let y = m.add(b, FaultKind::Reset, 100, 0).unwrap();
        assert_eq!(m.fault(x, 0).unwrap().links, m.fault(y, 0).unwrap().links);
    }

    #[test]
    fn bad_targets_get_their_own_codes_and_change_nothing() {
        let mut m = three();
        m.add(pair("us-east-1<->eu-west-1"), FaultKind::Reset, 1_000, 0)
            .unwrap();
        let before = (
            m.faults(0).cloned().collect::<Vec<_>>(),
            m.link_names()
                .map(|n| m.effective(n, 0).unwrap())
                .collect::<Vec<_>>(),
        );
        let partition = FaultKind::Partition {
            mode: PartitionMode::Stall,
        };
        let spike = |direction| FaultKind::LatencySpike {
            extra_ms: 50.0,
            direction,
        };
        let cases: Vec<(FaultTarget, FaultKind, &str, &str)> = vec![
            (
                region("eu-central-1"),
                ISOLATE,
                "ATOLL-LINK-UNKNOWN-REGION",
                "eu-central-1",
            ),
            (
                pair("us-east-1<->eu-central-1"),
                partition,
                "ATOLL-LINK-UNKNOWN-REGION",
                "eu-central-1",
            ),
            (
                FaultTarget::Pair(
                    RegionId::new("us-east-1").unwrap(),
                    RegionId::new("us-east-1").unwrap(),
                ),
                partition,
                "ATOLL-LINK-PAIR-SAME-REGION",
                "us-east-1<->us-east-1",
            ),
            (
                FaultTarget::Link("nope".into()),
                partition,
                "ATOLL-LINK-UNKNOWN-LINK",
                "nope",
            ),
            (
                FaultTarget::Link("us-east-1".into()),
                partition,
                "ATOLL-LINK-INVALID",
                "is a region",
            ),
            (
                FaultTarget::Link("us-east-1->eu-west-1".into()),
                ISOLATE,
                "ATOLL-LINK-INVALID",
                "isolate",
            ),
            (
                region("us-east-1"),
                partition,
                "ATOLL-LINK-INVALID",
                "isolate",
            ),
            (
                region("us-east-1"),
                FaultKind::Reset,
                "ATOLL-LINK-INVALID",
                "isolate",
            ),
            (
                pair("us-east-1<->eu-west-1"),
                ISOLATE,
                "ATOLL-LINK-INVALID",
                "partition",
            ),
            (
                pair("us-east-1<->eu-west-1"),
                FaultKind::OneWay {
                    direction: Direction::Forward,
                },
                "ATOLL-LINK-INVALID",
                "oneway",
            ),
            (
                pair("us-east-1<->eu-west-1"),
                spike(SpikeDirection::Forward),
                "ATOLL-LINK-INVALID",
                "direction",
            ),
        ];
        for (target, kind, code, needle) in cases {
            let what = format!("{target} {}", kind.describe());
            let e = m.add(target, kind, 1_000, 0).unwrap_err();
            assert_eq!(e.code(), code, "{what}: {e}");
            assert!(e.to_string().contains(needle), "{what}: {e}");
            assert!((400..500).contains(&e.http_status()), "{what}");
        }
        let after = (
            m.faults(0).cloned().collect::<Vec<_>>(),
            m.link_names()
                .map(|n| m.effective(n, 0).unwrap())
                .collect::<Vec<_>>(),
        );
        assert_eq!(before, after, "a refused fault changes nothing");
        // A latency spike both ways is fine on a pair.
        assert!(
            m.add(
                pair("us-east-1<->eu-west-1"),
                spike(SpikeDirection::Both),
                10,
                0
            )
            .is_ok()
        );

        // Parsing: names and the separator.
        for bad in [
            "us-east-1",
            "us-east-1<->",
            "<->eu-west-1",
            "US<->eu-west-1",
            "a<->b<->c",
        ] {
            assert_eq!(
                FaultTarget::pair(bad).unwrap_err().code(),
                "ATOLL-LINK-INVALID",
                "{bad}"
            );
        }
        let e = FaultTarget::pair("eu-west-1<->eu-west-1").unwrap_err();
        assert_eq!(
            (e.code(), e.http_status()),
            ("ATOLL-LINK-PAIR-SAME-REGION", 400)
        );
        assert!(e.to_string().contains("eu-west-1<->eu-west-1"), "{e}");
        for bad in ["", "Us-East", "-a", "a->b"] {
            assert_eq!(
                FaultTarget::region(bad).unwrap_err().code(),
                "ATOLL-LINK-INVALID",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_pair_needs_a_link_each_way_and_a_region_needs_a_link() {
        // Only us-east-1->eu-west-1 exists; ap-southeast-1 has a link with us-east-1 only.
        let mut m = mesh(&[
            ("us-east-1", "eu-west-1"),
            ("us-east-1", "ap-southeast-1"),
            ("ap-southeast-1", "us-east-1"),
        ]);
        let partition = FaultKind::Partition {
            mode: PartitionMode::Stall,
        };
        let e = m
            .add(pair("us-east-1<->eu-west-1"), partition, 100, 0)
            .unwrap_err();
        assert_eq!((e.code(), e.http_status()), ("ATOLL-LINK-NO-LINKS", 404));
        assert!(e.to_string().contains("from eu-west-1 to us-east-1"), "{e}");
        assert!(
            e.to_string().contains("us-east-1->eu-west-1"),
            "names the one link: {e}"
        );
        let e = m
            .add(pair("eu-west-1<->ap-southeast-1"), partition, 100, 0)
            .unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-NO-LINKS");
        assert!(e.to_string().contains("no link goes"), "{e}");
        // eu-west-1 has one (inbound) link: isolating it cuts that link.
        let id = m.add(region("eu-west-1"), ISOLATE, 100, 0).unwrap();
        assert_eq!(m.fault(id, 0).unwrap().links, ["us-east-1->eu-west-1"]);
        // A region no link goes to or from: unknown, naming the regions there are.
        let e = m.add(region("sa-east-1"), ISOLATE, 100, 0).unwrap_err();
        assert_eq!(
            (e.code(), e.http_status()),
            ("ATOLL-LINK-UNKNOWN-REGION", 404)
        );
        assert!(
            e.to_string()
                .contains("ap-southeast-1, eu-west-1, us-east-1"),
            "{e}"
        );
        // A server whose links name no regions knows no region at all.
        let mut bare = Mesh::new(&[LinkSpec::new(
            "loop",
            addr(),
            "127.0.0.1:9".parse().unwrap(),
        )])
        .unwrap();
        let e = bare.add(region("us-east-1"), ISOLATE, 100, 0).unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-UNKNOWN-REGION");
        assert!(
            bare.add(FaultTarget::Link("loop".into()), FaultKind::Reset, 100, 0)
                .is_ok()
        );
    }

    #[test]
    fn group_faults_are_renewed_and_removed_as_a_whole() {
        let mut m = three();
        let link = "us-east-1->eu-west-1";
        let own = m
            .add(FaultTarget::Link(link.into()), FaultKind::Reset, 1_000, 0)
            .unwrap();
        let iso = m.add(region("us-east-1"), ISOLATE, 1_000, 0).unwrap();
        // Through one of its links, a region fault is neither renewed nor removed.
        for e in [
            m.renew_on_link(link, iso, 5_000, 10).unwrap_err(),
            m.remove_on_link(link, iso).unwrap_err(),
        ] {
            assert_eq!((e.code(), e.http_status()), ("ATOLL-LINK-FAULT-SCOPE", 409));
            assert!(e.to_string().contains("region `us-east-1`"), "{e}");
        }
        assert_eq!(m.fault(iso, 10).unwrap().expires_at_ms, 1_000, "unchanged");
        // Through a link it does not cover: unknown there.
        let e = m
            .remove_on_link("eu-west-1->ap-southeast-1", iso)
            .unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-UNKNOWN-FAULT");
        assert!(
            e.to_string().contains("link `eu-west-1->ap-southeast-1`"),
            "{e}"
        );
        let e = m
            .remove_on_link("eu-west-1->ap-southeast-1", own)
            .unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-UNKNOWN-FAULT");
        assert_eq!(
            m.remove_on_link("nope", own).unwrap_err().code(),
            "ATOLL-LINK-UNKNOWN-LINK"
        );
        // Clearing the link removes its own faults, not the region's.
        assert_eq!(m.clear_link(link).unwrap(), [own]);
        assert_eq!(
            m.faults_on(link, 10).map(|f| f.id).collect::<Vec<_>>(),
            [iso]
        );
        assert!(m.effective(link, 10).unwrap().forward.blocked);
        // Expired: through a link it covered it reads expired, elsewhere unknown.
        m.expire(1_000);
        assert_eq!(
            m.remove_on_link(link, iso).unwrap_err().code(),
            "ATOLL-LINK-FAULT-EXPIRED"
        );
        assert_eq!(
            m.remove_on_link("eu-west-1->ap-southeast-1", iso)
                .unwrap_err()
                .code(),
            "ATOLL-LINK-UNKNOWN-FAULT"
        );
        assert_eq!(
            m.fault(iso, 1_000).unwrap_err().code(),
            "ATOLL-LINK-FAULT-EXPIRED"
        );
        // clear() removes every fault, whatever its target.
        m.add(region("eu-west-1"), ISOLATE, 1_000, 2_000).unwrap();
        m.add(
            pair("us-east-1<->ap-southeast-1"),
            FaultKind::Reset,
            1_000,
            2_000,
        )
        .unwrap();
        assert_eq!(m.clear().len(), 2);
        assert!(cut(&m, 2_000).is_empty());
    }

    #[test]
    fn a_reset_on_a_pair_resets_both_links_once_and_group_faults_count_on_each_link() {
        let mut m = three();
        m.add(pair("us-east-1<->eu-west-1"), FaultKind::Reset, 100, 0)
            .unwrap();
        let epoch = |m: &Mesh, l: &str| m.effective(l, 0).unwrap().reset_epoch;
        assert_eq!(epoch(&m, "us-east-1->eu-west-1"), 1);
        assert_eq!(epoch(&m, "eu-west-1->us-east-1"), 1);
        assert_eq!(epoch(&m, "us-east-1->ap-southeast-1"), 0);

        // Fill one link of us-east-1 to the limit: isolating us-east-1 is refused, naming it.
        let full = "ap-southeast-1->us-east-1";
        let mut m = three();
        for _ in 0..MAX_FAULTS_PER_LINK {
            m.add(FaultTarget::Link(full.into()), FaultKind::Reset, 1_000, 0)
                .unwrap();
        }
        let e = m.add(region("us-east-1"), ISOLATE, 1_000, 0).unwrap_err();
        assert_eq!(e.code(), "ATOLL-LINK-TOO-MANY-FAULTS");
        assert!(e.to_string().contains(full), "{e}");
        assert!(cut(&m, 0).is_empty(), "nothing half-applied");
        assert!(
            m.add(pair("us-east-1<->eu-west-1"), FaultKind::Reset, 1_000, 0)
                .is_ok()
        );
    }

    const POOL: [&str; 4] = ["r0", "r1", "r2", "r3"];

    proptest::proptest! {
        /// Over any set of links between four regions: isolate covers exactly the links to and
        /// from its region, both directions; a pair covers exactly its two directions; each is
        /// one fault whose lease ends for all its links at the same instant; and a refused one
        /// changes nothing.
        #[test]
        fn targets_cover_exactly_their_links(
            present in proptest::collection::vec(proptest::bool::ANY, 12),
            r in 0usize..4,
            a in 0usize..4,
            b in 0usize..4,
            lease in 1u64..10_000,
            now in 0u64..1_000_000,
        ) {
            let all: Vec<(&str, &str)> = POOL
                .iter()
                .flat_map(|x| POOL.iter().filter(move |y| *y != x).map(move |y| (*x, *y)))
                .collect();
            let links: Vec<(&str, &str)> = all
                .iter()
                .zip(&present)
                .filter(|(_, p)| **p)
                .map(|(l, _)| *l)
                .collect();
            let mut m = mesh(&links);

            // Isolate POOL[r].
            let want: Vec<String> = {
                let mut v: Vec<String> = links
                    .iter()
                    .filter(|(x, y)| *x == POOL[r] || *y == POOL[r])
                    .map(|(x, y)| format!("{x}->{y}"))
                    .collect();
                v.sort();
                v
            };
            match m.add(region(POOL[r]), ISOLATE, lease, now) {
                Ok(id) => {
                    proptest::prop_assert!(!want.is_empty());
                    proptest::prop_assert_eq!(&m.fault(id, now).unwrap().links, &want);
                    proptest::prop_assert_eq!(cut(&m, now), want.clone());
                    proptest::prop_assert_eq!(cut(&m, now + lease - 1), want.clone());
                    proptest::prop_assert!(cut(&m, now + lease).is_empty());
                    m.remove(id).unwrap();
                }
                Err(e) => {
                    proptest::prop_assert!(want.is_empty());
                    proptest::prop_assert_eq!(e.code(), "ATOLL-LINK-UNKNOWN-REGION");
                }
            }
            proptest::prop_assert!(cut(&m, now).is_empty());

            // Pair POOL[a]<->POOL[b].
            let text = format!("{}<->{}", POOL[a], POOL[b]);
            if a == b {
                let e = FaultTarget::pair(&text).unwrap_err();
                proptest::prop_assert_eq!(e.code(), "ATOLL-LINK-PAIR-SAME-REGION");
                return Ok(());
            }
            let has = |x: &str, y: &str| links.contains(&(x, y));
            let (ab, ba) = (has(POOL[a], POOL[b]), has(POOL[b], POOL[a]));
            let partition = FaultKind::Partition { mode: PartitionMode::Stall };
            match m.add(pair(&text), partition, lease, now) {
                Ok(id) => {
                    proptest::prop_assert!(ab && ba);
                    let want = names(&[&format!("{}->{}", POOL[a], POOL[b]), &format!("{}->{}", POOL[b], POOL[a])]);
                    proptest::prop_assert_eq!(&m.fault(id, now).unwrap().links, &want);
                    proptest::prop_assert_eq!(cut(&m, now + lease - 1), want);
                    proptest::prop_assert!(cut(&m, now + lease).is_empty());
                    // Renewed, every link follows; expired, every link heals together.
                    m.renew(id, lease, now + lease - 1).unwrap();
                    proptest::prop_assert_eq!(cut(&m, now + 2 * lease - 2).len(), 2);
                    let gone = m.expire(now + 2 * lease - 1);
                    proptest::prop_assert_eq!(gone.len(), 1);
                    proptest::prop_assert!(cut(&m, now).is_empty());
                }
                Err(e) => {
                    proptest::prop_assert!(!(ab && ba));
                    let regions = m.regions();
                    let known = |x: &str| regions.contains(&RegionId::new(x).unwrap());
                    let code = if known(POOL[a]) && known(POOL[b]) {
                        "ATOLL-LINK-NO-LINKS"
                    } else {
                        "ATOLL-LINK-UNKNOWN-REGION"
                    };
                    proptest::prop_assert_eq!(e.code(), code);
                    proptest::prop_assert_eq!(m.faults(now).count(), 0);
                }
            }
        }
    }
}
