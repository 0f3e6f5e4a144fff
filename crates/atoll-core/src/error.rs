//! Errors that carry decisions: every error has a stable code (`ATOLL-...`), the HTTP status a
//! server answers it with, whether a client may safely retry, and a hint for the operator.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The JSON error body every atoll HTTP API answers with (the region's client and admin APIs, the
/// router's proxy and admin API, the link control API, the demo control API), and what atoll's
/// clients read back: `{"error": {"code", "message", "hint", "retryable"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable (`ATOLL-...`): tooling and alerts match on it.
    pub code: String,
    pub message: String,
    /// What the operator or client should do.
    pub hint: String,
    /// Whether retrying the same request may succeed (nothing was applied).
    pub retryable: bool,
}

impl ErrorBody {
    pub fn new(
        code: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
        retryable: bool,
    ) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                hint: hint.into(),
                retryable,
            },
        }
    }
}

impl From<&AtollError> for ErrorBody {
    fn from(e: &AtollError) -> Self {
        ErrorBody::new(e.code(), e.to_string(), e.hint(), e.retryable())
    }
}

/// Result alias used across atoll's libraries.
pub type Result<T, E = AtollError> = std::result::Result<T, E>;

/// Every error atoll's libraries can return. Codes are stable: tooling and alerts match on them.
///
/// Deliberately not `#[non_exhaustive]` (the other public error enums are): the server's API
/// test matches it without a wildcard, so a new variant does not compile until it is in the list
/// checked against the OpenAPI document and the status it answers with.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AtollError {
    #[error("unknown keyspace `{0}`")]
    UnknownKeyspace(String),
    #[error("keyspace `{keyspace}` has policy `{policy}`, which does not support {operation}")]
    WrongPolicy {
        keyspace: String,
        policy: String,
        operation: String,
    },
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {len} bytes, over the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, over keyspace `{keyspace}`'s limit of {max} bytes")]
    ValueTooLarge {
        keyspace: String,
        len: usize,
        max: usize,
    },
    /// A JSON request body (counter or set update) over the API's limit, which is
    /// `[api] max_json_body_bytes` (not a keyspace's value limit). `len` when it is known.
    #[error("{}", request_too_large(*len, *max))]
    RequestTooLarge { len: Option<usize>, max: usize },
    /// A replication request (heartbeat or subscription) over its fixed limit, which any valid one
    /// of the largest cluster stays far below. `len` when it is known.
    #[error("{route} body is {}, over the limit of {max} bytes for it", len.map_or_else(|| format!("more than {max} bytes"), |n| format!("{n} bytes")))]
    PeerRequestTooLarge {
        route: String,
        len: Option<usize>,
        max: usize,
    },
    #[error("malformed request body: {0}")]
    MalformedBody(String),
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(String),
    #[error("invalid causal context: {0}")]
    BadContext(String),
    #[error("the causal context names versions this region has not seen yet: {0}")]
    ContextAhead(String),
    #[error("key has {count} siblings, the keyspace's limit is {max}")]
    SiblingLimit { count: usize, max: usize },
    #[error("counter overflow: {0}")]
    CounterOverflow(String),
    #[error(
        "rate limit of keyspace `{keyspace}` reached: {remaining} of {limit} left in this window; retry in {retry_after_ms} ms"
    )]
    RateLimited {
        keyspace: String,
        limit: u64,
        remaining: u64,
        reset_at_ms: u64,
        retry_after_ms: u64,
    },
    #[error("not found")]
    NotFound,
    #[error("invalid config: {0}")]
    Config(String),
    #[error(
        "data was written by format version {found}; this build reads up to version {supported}"
    )]
    FormatTooNew { found: u16, supported: u16 },
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("peer clock is {offset_ms} ms ahead, beyond max_clock_offset of {max_ms} ms")]
    ClockSkew { offset_ms: u64, max_ms: u64 },
    #[error("the region is shutting down")]
    ShuttingDown,
    #[error("the region is overloaded: {0}")]
    Overloaded(String),
    #[error("request rejected: {0}")]
    BadRequest(String),
    /// Client authentication is on and the request has no valid bearer token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The request's token is valid but does not grant what the request needs.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A peer route was reached over a connection that authenticated no region of this cluster
    /// (no client certificate, or one that names no region).
    #[error("peer not authenticated: {0}")]
    PeerUnauthenticated(String),
    /// A peer speaking for another region: the `from` of its message is not the region its
    /// certificate names.
    #[error("peer `{certified}` (by its certificate) sent a message from `{claimed}`")]
    PeerIdentityMismatch { claimed: String, certified: String },
    /// The TLS files of `[cluster.tls]` are missing, unreadable or do not fit together.
    #[error("TLS: {0}")]
    Tls(String),
    /// A write reached a region that does not hold the write lease (active-standby,
    /// active-passive), or holds it without a valid window right now. Nothing was written.
    #[error("{}", not_primary(primary.as_deref(), primary_api.as_deref(), reason))]
    NotPrimary {
        primary: Option<String>,
        primary_api: Option<String>,
        reason: String,
    },
    /// Active-active quorum fencing: this region cannot reach a majority and the keyspace is
    /// `on_minority = "read-only"`. Nothing was written.
    #[error(
        "keyspace `{keyspace}` is read-only in this region: it cannot reach a majority of the control group ({detail})"
    )]
    Fenced { keyspace: String, detail: String },
    /// Active-passive: a passive region serves no client traffic.
    #[error("this region is passive (active-passive): it serves no client traffic until promoted; the primary is {}", primary.as_deref().unwrap_or("unknown"))]
    Passive { primary: Option<String> },
    /// `atoll promote` while the current lease is healthy.
    #[error(
        "region `{holder}` holds a healthy write lease (it could still be valid for {remaining_ms} ms); promoting now would make two primaries"
    )]
    LeaseHeld { holder: String, remaining_ms: u64 },
    /// `atoll promote` would lose acknowledged writes.
    #[error("promoting would lose {ops} acknowledged writes ({}) of the old primary that this region has not applied", ms.map_or_else(|| "age unknown".to_string(), |m| format!("about {m} ms of writes")))]
    DataLoss { ops: u64, ms: Option<u64> },
    /// The control group (fencing) could not decide in time: no majority reachable, or no leader.
    #[error("the control group did not answer: {0}")]
    ControlUnavailable(String),
    /// A standby forwarded a write to the primary (`[fencing] forward_writes`) and got no answer
    /// it could read (timeout, connection lost after the request went out): the write may or may
    /// not have been applied there.
    #[error(
        "the write was forwarded to the primary `{target}` and its outcome is unknown: {detail}"
    )]
    ForwardOutcomeUnknown { target: String, detail: String },
    /// A strong keyspace's read or write could not reach a majority of the strong group (no
    /// leader reachable, or the leader could not confirm its leadership with a majority). Nothing
    /// was applied; no stale value was served.
    #[error(
        "keyspace `{keyspace}` is strong and this region cannot reach a majority of the regions ({needed} of {voters}): {detail}"
    )]
    NoQuorum {
        keyspace: String,
        voters: usize,
        needed: usize,
        detail: String,
    },
    /// A compare-and-set (`If-Match: <revision>`) on a strong keyspace whose key is at another
    /// revision (0: the key does not exist). Nothing changed.
    #[error(
        "revision mismatch on keyspace `{keyspace}`: the key is at revision {current}, the request expected {expected}"
    )]
    RevisionMismatch {
        keyspace: String,
        expected: u64,
        current: u64,
    },
    /// A strong keyspace's write reached the leader but no outcome came back: it may be
    /// applied, now or later.
    #[error("the write to strong keyspace `{keyspace}` may or may not have been applied: {detail}")]
    StrongOutcomeUnknown { keyspace: String, detail: String },
    /// An owned keyspace's write reached a region that is not the key's home, and the keyspace
    /// does not forward (`forward = false`), or the write was forwarded already. Nothing was
    /// written.
    #[error("{}", not_home(keyspace, home, home_api.as_deref(), reason))]
    NotHome {
        keyspace: String,
        home: String,
        home_api: Option<String>,
        reason: String,
    },
    /// An owned key's home cannot take its writes now: the home is down or unreachable, or the
    /// key is being moved to another home. Nothing was written.
    #[error(
        "the home of this key in owned keyspace `{keyspace}` is `{home}`, and it cannot take the write: {detail}"
    )]
    HomeUnavailable {
        keyspace: String,
        home: String,
        detail: String,
    },
    /// `atoll keyspace rehome` was refused (nothing moved).
    #[error("re-homing refused: {0}")]
    RehomeRefused(String),
    /// A session token (`X-Atoll-Session`) that cannot be honoured as sent: garbled, of another
    /// version or cluster, naming an unknown region, or naming writes no region made.
    #[error("invalid session token: {0}")]
    BadSessionToken(String),
    /// A read this region may not answer yet: it has not applied what the read's session token
    /// names, or its replication lag exceeds the read's `max_staleness`. Nothing was read.
    #[error("{0}")]
    Stale(String),
    /// This region is replacing its state with a snapshot from a peer
    /// (`docs/design/oplog-truncation.md`) and serves nothing until that is complete.
    #[error("this region is bootstrapping by snapshot and serves nothing yet: {0}")]
    Bootstrapping(String),
    /// A snapshot does not cover what this region had already applied: the bootstrap starts
    /// again (from a donor that is further on). Names the origins short.
    #[error("the snapshot is behind this region's own cursors ({0})")]
    BootstrapBehind(String),
    /// This region was added to a running cluster and takes no writes until every region of
    /// its config has admitted it (`docs/design/adding-regions.md`). Nothing was written.
    #[error("this region is joining the cluster and takes no writes yet: {0}")]
    Joining(String),
    /// This region is a replica (`voter = false`): writes (and strong reads) that need the
    /// control group or the strong group go to a voter. Nothing was written.
    #[error("{0}")]
    NotAVoter(String),
    /// This region was removed from the cluster, or the request came from a region that was
    /// (`docs/design/region-removal.md`). Nothing was written.
    #[error("removed from the cluster: {0}")]
    RegionRemoved(String),
}

fn not_home(keyspace: &str, home: &str, api: Option<&str>, reason: &str) -> String {
    let at = api.map_or_else(String::new, |a| format!(" at http://{a}"));
    format!("this key of owned keyspace `{keyspace}` has its home in `{home}`{at}; {reason}")
}

fn not_primary(primary: Option<&str>, api: Option<&str>, reason: &str) -> String {
    let who = match (primary, api) {
        (Some(p), Some(a)) => format!("the primary is `{p}` at http://{a}"),
        (Some(p), None) => format!("the primary is `{p}`"),
        _ => "no primary is known right now".to_string(),
    };
    format!("this region does not accept writes ({reason}); {who}")
}

fn request_too_large(len: Option<usize>, max: usize) -> String {
    let size = match len {
        Some(n) => format!("{n} bytes"),
        None => format!("more than {max} bytes"),
    };
    format!(
        "request body is {size}, over the API's limit of {max} bytes for JSON bodies ([api] max_json_body_bytes)"
    )
}

impl AtollError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownKeyspace(_) => "ATOLL-UNKNOWN-KEYSPACE",
            Self::WrongPolicy { .. } => "ATOLL-WRONG-POLICY",
            Self::EmptyKey => "ATOLL-EMPTY-KEY",
            Self::KeyTooLarge { .. } => "ATOLL-KEY-TOO-LARGE",
            Self::ValueTooLarge { .. } => "ATOLL-VALUE-TOO-LARGE",
            Self::RequestTooLarge { .. } => "ATOLL-REQUEST-TOO-LARGE",
            Self::PeerRequestTooLarge { .. } => "ATOLL-PEER-REQUEST-TOO-LARGE",
            Self::MalformedBody(_) => "ATOLL-MALFORMED-BODY",
            Self::InvalidUtf8(_) => "ATOLL-INVALID-UTF8",
            Self::BadContext(_) => "ATOLL-BAD-CONTEXT",
            Self::ContextAhead(_) => "ATOLL-CONTEXT-AHEAD",
            Self::SiblingLimit { .. } => "ATOLL-SIBLING-LIMIT",
            Self::CounterOverflow(_) => "ATOLL-COUNTER-OVERFLOW",
            Self::RateLimited { .. } => "ATOLL-RATE-LIMITED",
            Self::NotFound => "ATOLL-NOT-FOUND",
            Self::Config(_) => "ATOLL-CONFIG",
            Self::FormatTooNew { .. } => "ATOLL-FORMAT-TOO-NEW",
            Self::Corrupt(_) => "ATOLL-CORRUPT",
            Self::Storage(_) => "ATOLL-STORAGE",
            Self::ClockSkew { .. } => "ATOLL-CLOCK-SKEW",
            Self::ShuttingDown => "ATOLL-SHUTTING-DOWN",
            Self::Overloaded(_) => "ATOLL-OVERLOADED",
            Self::BadRequest(_) => "ATOLL-BAD-REQUEST",
            Self::Unauthorized(_) => "ATOLL-UNAUTHORIZED",
            Self::Forbidden(_) => "ATOLL-FORBIDDEN",
            Self::PeerUnauthenticated(_) => "ATOLL-PEER-UNAUTHENTICATED",
            Self::PeerIdentityMismatch { .. } => "ATOLL-PEER-IDENTITY-MISMATCH",
            Self::Tls(_) => "ATOLL-TLS",
            Self::NotPrimary { .. } => "ATOLL-NOT-PRIMARY",
            Self::Fenced { .. } => "ATOLL-FENCED",
            Self::Passive { .. } => "ATOLL-PASSIVE",
            Self::LeaseHeld { .. } => "ATOLL-LEASE-HELD",
            Self::DataLoss { .. } => "ATOLL-DATA-LOSS",
            Self::ControlUnavailable(_) => "ATOLL-CONTROL-UNAVAILABLE",
            Self::ForwardOutcomeUnknown { .. } => "ATOLL-FORWARD-OUTCOME-UNKNOWN",
            Self::NotHome { .. } => "ATOLL-NOT-HOME",
            Self::HomeUnavailable { .. } => "ATOLL-HOME-UNAVAILABLE",
            Self::RehomeRefused(_) => "ATOLL-REHOME-REFUSED",
            Self::BadSessionToken(_) => "ATOLL-BAD-SESSION-TOKEN",
            Self::Stale(_) => "ATOLL-STALE",
            Self::Bootstrapping(_) => "ATOLL-BOOTSTRAPPING",
            Self::BootstrapBehind(_) => "ATOLL-BOOTSTRAP-BEHIND",
            Self::Joining(_) => "ATOLL-JOINING",
            Self::NotAVoter(_) => "ATOLL-NOT-A-VOTER",
            Self::RegionRemoved(_) => "ATOLL-REGION-REMOVED",
            Self::NoQuorum { .. } => "ATOLL-NO-QUORUM",
            Self::RevisionMismatch { .. } => "ATOLL-REVISION-MISMATCH",
            Self::StrongOutcomeUnknown { .. } => "ATOLL-STRONG-OUTCOME-UNKNOWN",
        }
    }

    /// HTTP status a server answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::UnknownKeyspace(_) | Self::NotFound => 404,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::WrongPolicy { .. } => 405,
            Self::EmptyKey
            | Self::MalformedBody(_)
            | Self::InvalidUtf8(_)
            | Self::BadContext(_)
            | Self::BadRequest(_)
            | Self::Config(_) => 400,
            Self::KeyTooLarge { .. } => 414,
            Self::ValueTooLarge { .. }
            | Self::RequestTooLarge { .. }
            | Self::PeerRequestTooLarge { .. } => 413,
            Self::ContextAhead(_) | Self::SiblingLimit { .. } | Self::CounterOverflow(_) => 409,
            Self::RateLimited { .. } => 429,
            Self::ShuttingDown | Self::Overloaded(_) => 503,
            Self::ClockSkew { .. } => 503,
            Self::PeerUnauthenticated(_) | Self::PeerIdentityMismatch { .. } => 403,
            Self::FormatTooNew { .. } | Self::Corrupt(_) | Self::Storage(_) | Self::Tls(_) => 500,
            Self::NotPrimary { .. }
            | Self::Fenced { .. }
            | Self::Passive { .. }
            | Self::ControlUnavailable(_)
            | Self::NoQuorum { .. } => 503,
            Self::LeaseHeld { .. } | Self::DataLoss { .. } => 409,
            Self::ForwardOutcomeUnknown { .. } | Self::StrongOutcomeUnknown { .. } => 504,
            Self::RevisionMismatch { .. } => 412,
            Self::NotHome { .. } => 421,
            Self::HomeUnavailable { .. } => 503,
            Self::RehomeRefused(_) => 409,
            Self::BadSessionToken(_) => 400,
            Self::Stale(_) => 503,
            Self::Bootstrapping(_) | Self::BootstrapBehind(_) | Self::Joining(_) => 503,
            Self::NotAVoter(_) => 421,
            Self::RegionRemoved(_) => 410,
        }
    }

    /// Whether the same request may be sent again and could succeed without change.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::ContextAhead(_)
                | Self::ShuttingDown
                | Self::Overloaded(_)
                | Self::Storage(_)
                | Self::ClockSkew { .. }
                | Self::NotPrimary { .. }
                | Self::Fenced { .. }
                | Self::Passive { .. }
                | Self::ControlUnavailable(_)
                | Self::HomeUnavailable { .. }
                | Self::NoQuorum { .. }
                | Self::Stale(_)
                | Self::Bootstrapping(_)
                | Self::BootstrapBehind(_)
                | Self::Joining(_)
                | Self::RateLimited { .. }
        )
    }

    /// What the operator or client should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::UnknownKeyspace(_) => {
                "declare the keyspace in atoll.toml ([[keyspaces]]) or check the spelling; GET /v1/status lists the keyspaces"
            }
            Self::WrongPolicy { .. } => {
                "use the route that matches the keyspace's policy: /v1/kv for lww and mvr, /v1/counter for counter, /v1/set for set"
            }
            Self::EmptyKey => "send a non-empty key in the path",
            Self::KeyTooLarge { .. } => {
                "keys are limited to 1 KiB; hash long identifiers into a shorter key"
            }
            Self::ValueTooLarge { .. } => {
                "store large blobs elsewhere and keep a reference here, or raise the keyspace's max_value_bytes"
            }
            Self::RequestTooLarge { .. } => {
                "send the update in several smaller requests, or raise max_json_body_bytes in the [api] section of atoll.toml (default 4 MiB, at most 64 MiB) and restart the regions"
            }
            Self::PeerRequestTooLarge { .. } => {
                "replication requests come from peer regions and are small: check that every region runs a compatible atoll version and that nothing else posts to /v1/replication/"
            }
            Self::MalformedBody(_) => "check the request body against GET /v1/openapi.json",
            Self::InvalidUtf8(_) => "send UTF-8 text where the API expects text",
            Self::BadContext(_) => {
                "send X-Atoll-Context exactly as a previous read of the same key returned it, or omit it"
            }
            Self::ContextAhead(_) => {
                "the context came from a region this one has not caught up with yet; retry shortly or read the key here first"
            }
            Self::SiblingLimit { .. } => {
                "read the key, merge its siblings, and write the result with the X-Atoll-Context the read returned"
            }
            Self::RateLimited { .. } => {
                "the request was not admitted and nothing was counted: retry after retry_after_ms, or raise the keyspace's limit"
            }
            Self::CounterOverflow(_) => {
                "counters are 64-bit; use smaller deltas or reset by using a new key"
            }
            Self::NotFound => "the key has no value (never written, or deleted)",
            Self::Config(_) => "run `atoll config check FILE` for details",
            Self::FormatTooNew { .. } => {
                "run a newer atoll build on this data directory; never point an older build at newer data"
            }
            Self::Corrupt(_) => {
                "the data directory is damaged; restore the region from its peers or a backup"
            }
            Self::Storage(_) => {
                "check disk space and permissions of the data directory; the write was not acknowledged"
            }
            Self::ClockSkew { .. } => {
                "fix NTP on the skewed host; replication from it resumes by itself once its clock is back in bounds"
            }
            Self::ShuttingDown => "retry against another region or after the restart",
            Self::Overloaded(_) => "back off and retry; the request was not carried out",
            Self::BadRequest(_) => "check the request against GET /v1/openapi.json",
            Self::Unauthorized(_) => {
                "send `Authorization: Bearer <token>` with a token from the cluster's tokens file ([auth] tokens_file); the CLI sends ATOLL_TOKEN or --token"
            }
            Self::Forbidden(_) => {
                "use a token whose read or write list in the tokens file names this keyspace, or have the operator grant it"
            }
            Self::PeerUnauthenticated(_) => {
                "peer routes need mutual TLS: the calling region needs the certificate `atoll certs init` issued for it, signed by this cluster's CA ([cluster.tls])"
            }
            Self::PeerIdentityMismatch { .. } => {
                "a region may only speak for itself: check that each region runs with its own certificate ([cluster.tls] cert and key with {region}) and its own --region"
            }
            Self::Tls(_) => {
                "check the files [cluster.tls] names (`atoll config check FILE`); `atoll certs init --config FILE --out DIR` creates a CA and a certificate per region"
            }
            Self::NotPrimary { .. } => {
                "send writes to the primary (the router does this for you); the write was not applied, so retrying it is safe"
            }
            Self::Fenced { .. } => {
                "write through a region on the majority side (the router does this for you), or wait for the partition to heal; the write was not applied"
            }
            Self::Passive { .. } => {
                "send traffic to the primary; `atoll promote REGION` makes a passive region primary"
            }
            Self::LeaseHeld { .. } => {
                "use `atoll switchover REGION` for a planned move while the primary is healthy; `atoll promote` is for a primary that is gone"
            }
            Self::DataLoss { .. } => {
                "wait for the region to catch up, or bring the old primary back; to promote anyway, accepting the loss, add --accept-data-loss"
            }
            Self::ControlUnavailable(_) => {
                "check that a majority of regions (and the arbiter, if any) are up and reachable from this region; retry"
            }
            Self::ForwardOutcomeUnknown { .. } => {
                "read the key on the primary to learn whether the write was applied before sending it again; an idempotent write (lww, mvr with a context) may simply be repeated"
            }
            Self::NotHome { .. } => {
                "send the write to the key's home region (named in the error); the write was not applied, so sending it there is safe"
            }
            Self::HomeUnavailable { .. } => {
                "retry once the home is back or the move has finished; if the home is gone for good, move its keys: `atoll keyspace rehome KEYSPACE --prefix P --to REGION` (or declare a `takeover` order for the keyspace); the write was not applied"
            }
            Self::BadSessionToken(_) => {
                "send X-Atoll-Session exactly as an answer of this cluster returned it (merge tokens only with a client library), or omit it to read without session guarantees"
            }
            Self::Stale(_) => {
                "retry shortly, read at a region the error names as holding the data, or ask for forwarding with on_stale=forward; the router retries another region by itself"
            }
            Self::Bootstrapping(_) => {
                "send the request to another region (the router does so by itself); `atoll status` shows the bootstrap's progress, and /healthz says when it is done"
            }
            Self::BootstrapBehind(_) => {
                "nothing to do: the bootstrap starts again by itself from a donor that has applied more; if it repeats, check replication between the regions with `atoll status`"
            }
            Self::Joining(_) => {
                "send the write to another region meanwhile (the router does so by itself); reload every region's config with the new region in it (kill -HUP), and `atoll status` here names the regions that have not admitted this one yet"
            }
            Self::NotAVoter(_) => {
                "send the request to a voter region (named in the error): a region added with voter = false replicates every eventual keyspace but is not a member of the control group or the strong group"
            }
            Self::RegionRemoved(_) => {
                "send writes to a region that is still a member; this region's writes that no member received stay in its data directory (`atoll status` counts them) and are not replicated; a removed region's name is never reused in the same cluster (docs/design/region-removal.md)"
            }
            Self::RehomeRefused(_) => {
                "read the reason; `atoll status` shows the homes and any move in flight; retry once the move in flight has finished"
            }
            Self::NoQuorum { .. } => {
                "send the request to a region on the majority side, or wait for the partition to heal or the failed regions to return; nothing was applied, so retrying is safe; /v1/status shows the strong group's leader and this region's role"
            }
            Self::RevisionMismatch { .. } => {
                "read the key (its revision is in the ETag and the body), decide again, and write with If-Match set to the revision you read; If-Match: 0 means the key must not exist"
            }
            Self::StrongOutcomeUnknown { .. } => {
                "read the key (a linearizable read) to learn whether the write took effect before sending it again; a compare-and-set repeated blindly may fail with ATOLL-REVISION-MISMATCH against its own write"
            }
        }
    }
}
