//! Errors of `atoll link`. Like every atoll error, each has a stable code (`ATOLL-...`), the HTTP
//! status the control API answers it with, whether retrying may succeed, and a hint. The control
//! API renders them as `{"error": {"code", "message", "hint", "retryable"}}`.

use serde_json::Value;
use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// Everything `atoll link` can refuse or fail at.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A value is out of range or malformed. `field` names it (`latency_ms`, `for`,
    /// `reverse_bandwidth`, `links[2].listen`, ...).
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// No link has this name.
    #[error("unknown link `{0}`")]
    UnknownLink(String),
    /// The fault id is not active where it was asked for (`on`: "link `a->b`" or "this link
    /// server"): it never existed there, was removed, or its lease ended.
    #[error("fault {id} is not active on {on}: {}", if *.expired { "its lease ended (every link it covered healed by itself)" } else { "no such fault (never added, or removed)" })]
    UnknownFault {
        on: String,
        id: String,
        /// Whether the id was active recently and expired by its lease.
        expired: bool,
    },
    /// No link of the server goes to or from this region (a link server knows regions only
    /// through its links, so an unknown region and a region with no links are one error).
    #[error(
        "no link of this server goes to or from region `{region}` (regions with links here: {known})"
    )]
    UnknownRegion { region: String, known: String },
    /// A pair target names the same region twice.
    #[error("pair `{0}<->{0}` names the same region twice")]
    SameRegion(String),
    /// A pair target with no link to fault (or none in one of its directions).
    #[error("no links to fault for pair `{target}`: {reason}")]
    NoLinks { target: String, reason: String },
    /// A pair or region fault asked for through one of the links it covers: it is renewed or
    /// removed as a whole, by its id.
    #[error(
        "fault {id} covers {scope} `{target}`, not only link `{link}`: renew or remove it as a whole"
    )]
    FaultScope {
        id: String,
        scope: &'static str,
        target: String,
        link: String,
    },
    /// A link already has the most active faults allowed.
    #[error("link `{link}` already has {max} active faults")]
    TooManyFaults { link: String, max: usize },
    /// A request body is not valid JSON or does not have the expected shape.
    #[error("malformed request body: {0}")]
    MalformedBody(String),
    /// A link config (links.toml, or the links derived from atoll.toml) is invalid.
    #[error("invalid link config: {0}")]
    Config(String),
    /// A socket could not be bound or another I/O step failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The link server is shutting down.
    #[error("the link server is shutting down")]
    ShuttingDown,
    /// A control API request without the right bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// The control API would listen beyond loopback without a token.
    #[error(
        "the control API would listen on {0}, beyond loopback, without a token: anyone who reaches it could cut or slow every link"
    )]
    TokenRequired(std::net::SocketAddr),
}

impl LinkError {
    /// A [`LinkError::Invalid`] naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "ATOLL-LINK-INVALID",
            Self::UnknownLink(_) => "ATOLL-LINK-UNKNOWN-LINK",
            Self::UnknownFault { expired: false, .. } => "ATOLL-LINK-UNKNOWN-FAULT",
            Self::UnknownFault { expired: true, .. } => "ATOLL-LINK-FAULT-EXPIRED",
            Self::UnknownRegion { .. } => "ATOLL-LINK-UNKNOWN-REGION",
            Self::SameRegion(_) => "ATOLL-LINK-PAIR-SAME-REGION",
            Self::NoLinks { .. } => "ATOLL-LINK-NO-LINKS",
            Self::FaultScope { .. } => "ATOLL-LINK-FAULT-SCOPE",
            Self::TooManyFaults { .. } => "ATOLL-LINK-TOO-MANY-FAULTS",
            Self::MalformedBody(_) => "ATOLL-MALFORMED-BODY",
            Self::Config(_) => "ATOLL-CONFIG",
            Self::Io { .. } => "ATOLL-LINK-IO",
            Self::ShuttingDown => "ATOLL-SHUTTING-DOWN",
            Self::Unauthorized(_) => "ATOLL-UNAUTHORIZED",
            Self::TokenRequired(_) => "ATOLL-LINK-TOKEN-REQUIRED",
        }
    }

    /// HTTP status the control API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Invalid { .. }
            | Self::MalformedBody(_)
            | Self::Config(_)
            | Self::SameRegion(_)
            | Self::TokenRequired(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::UnknownLink(_)
            | Self::UnknownFault { .. }
            | Self::UnknownRegion { .. }
            | Self::NoLinks { .. } => 404,
            Self::TooManyFaults { .. } | Self::FaultScope { .. } => 409,
            Self::Io { .. } => 500,
            Self::ShuttingDown => 503,
        }
    }

    /// Whether the same request may succeed if simply sent again.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Io { .. })
    }

    /// What the operator should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => {
                "delays are 0..=60000 ms, jitter at most 10x the latency, bandwidth above 0 (e.g. \"10MB/s\"), leases 1ms..=24h (e.g. \"30s\", \"10m\")"
            }
            Self::UnknownLink(_) => {
                "list the links with `atoll link ls` or GET /v1/links; percent-encode the name in the path (us-east-1-%3Eeu-west-1)"
            }
            Self::UnknownFault { expired: false, .. } => {
                "list the active faults with `atoll link fault ls`"
            }
            Self::UnknownFault { expired: true, .. } => {
                "add a new fault, and renew it before its lease ends to keep it"
            }
            Self::UnknownRegion { .. } => {
                "list the links and their regions with `atoll link ls`; isolate a region that a link goes to or from"
            }
            Self::SameRegion(_) => {
                "a pair is two different regions, e.g. us-east-1<->eu-west-1; to cut every link of one region use kind isolate"
            }
            Self::NoLinks { .. } => {
                "list the links with `atoll link ls`; a pair needs a link each way between its regions, or fault the one link"
            }
            Self::FaultScope { .. } => {
                "use PUT or DELETE /v1/faults/{id}, or `atoll link fault renew|rm TARGET ID` with the target `atoll link fault ls` shows"
            }
            Self::TooManyFaults { .. } => {
                "remove faults you no longer need, or wait for leases to end"
            }
            Self::MalformedBody(_) => {
                "send JSON such as {\"kind\": \"partition\", \"mode\": \"stall\", \"for\": \"30s\"}; unknown fields are rejected"
            }
            Self::Config(_) => {
                "fix the link config; every link needs a unique name and listen address"
            }
            Self::Io { .. } => "check that the address is free and reachable, then retry",
            Self::ShuttingDown => "start the link server again",
            Self::Unauthorized(_) => {
                "send `Authorization: Bearer <token>` with the token `atoll link serve` was given (`atoll link` commands read it from ATOLL_LINK_TOKEN or --token)"
            }
            Self::TokenRequired(_) => {
                "set ATOLL_LINK_TOKEN (or pass --token) to a secret that clients will send, or listen on a loopback address such as 127.0.0.1:7400"
            }
        }
    }

    /// The JSON error body: `{"error": {"code", "message", "hint", "retryable"}}`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.body()).unwrap_or(Value::Null)
    }

    /// The error as atoll's one error body type.
    pub fn body(&self) -> atoll_core::ErrorBody {
        atoll_core::ErrorBody::new(self.code(), self.to_string(), self.hint(), self.retryable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_statuses_and_body() {
        let e = LinkError::UnknownFault {
            on: "link `a->b`".into(),
            id: "f-7".into(),
            expired: true,
        };
        assert_eq!(e.code(), "ATOLL-LINK-FAULT-EXPIRED");
        assert_eq!(e.http_status(), 404);
        assert!(e.to_string().contains("f-7"));
        let body = e.to_json();
        assert_eq!(body["error"]["code"], "ATOLL-LINK-FAULT-EXPIRED");
        assert_eq!(body["error"]["retryable"], false);
        assert!(body["error"]["hint"].as_str().unwrap().len() > 10);
        let e = LinkError::invalid("latency_ms", "must not be negative");
        assert_eq!(e.to_string(), "invalid latency_ms: must not be negative");
        assert_eq!(e.http_status(), 400);
    }
}
