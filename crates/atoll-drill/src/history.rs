//! What the load generator saw: one record per write it sent, on the drill's one clock
//! (milliseconds since the drill started), and what the read-back found in each region.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The keyspace policies the drill writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Lww,
    Mvr,
    Counter,
    Set,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lww => "lww",
            Kind::Mvr => "mvr",
            Kind::Counter => "counter",
            Kind::Set => "set",
        }
    }
}

/// An HLC timestamp as the API prints it (`wall_ms.logical`), ordered like the HLC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Hlc {
    pub fn parse(s: &str) -> Option<Hlc> {
        let (w, l) = s.split_once('.').unwrap_or((s, "0"));
        Some(Hlc {
            wall_ms: w.parse().ok()?,
            logical: l.parse().ok()?,
        })
    }
}

/// How a write ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// 2xx: the region says it is durable.
    Acked {
        /// The region that acknowledged it (its `X-Atoll-Region`).
        region: String,
        /// The lease epoch the region reported (`X-Atoll-Epoch`), leased models only.
        epoch: Option<u64>,
        /// lww/mvr writes: the HLC timestamp of the write.
        ts: Option<Hlc>,
    },
    /// An answer that says nothing was applied (4xx, or a 5xx with an atoll error code).
    Refused { status: u16, code: String },
    /// No answer, or an answer that does not say (timeout, reset, 502 outcome unknown): the
    /// write may or may not have been applied.
    Unknown { reason: String },
}

/// One write the drill sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    pub id: u64,
    pub client: u32,
    /// Where it was sent: `router` or a region's name.
    pub via: String,
    pub keyspace: String,
    pub kind: Kind,
    pub key: String,
    /// lww/mvr: the value written; set: the member added; counter: the delta as text.
    pub value: String,
    /// Counters: the delta.
    pub delta: i64,
    /// Whether the keyspace must refuse writes in a minority (`on_minority = "read-only"`).
    pub fenced: bool,
    pub sent_ms: u64,
    pub done_ms: u64,
    pub outcome: Outcome,
}

impl WriteRecord {
    pub fn acked_region(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Acked { region, .. } => Some(region),
            _ => None,
        }
    }

    pub fn is_acked(&self) -> bool {
        matches!(self.outcome, Outcome::Acked { .. })
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown { .. })
    }
}

/// What one region holds for one key at the read-back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Observed {
    /// The key does not exist (404).
    Missing,
    Lww {
        value: String,
    },
    Mvr {
        values: Vec<String>,
    },
    Counter {
        value: i64,
    },
    Set {
        members: Vec<String>,
    },
    /// The region did not answer (the check of this key in this region is incomplete).
    Unreadable {
        reason: String,
    },
}

/// `(keyspace, key)`.
pub type KeyId = (String, String);

/// The read-back: region -> key -> what it holds.
pub type FinalState = BTreeMap<String, BTreeMap<KeyId, Observed>>;
