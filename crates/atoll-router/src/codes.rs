//! The stable error codes of the router's proxy and admin API (`ATOLL-...`).
//!
//! Each code the router answers with is one [`RouterCode`] constant carrying everything its
//! answers share: the code string, the HTTP status, whether retrying the same request may
//! succeed, and the hint. A call site passes only the code and its message
//! ([`RouterCode::response`]), so the same code always comes with the same status, hint and
//! retryability, rendered through [`atoll_core::ErrorBody`] like every other atoll error.
//!
//! The regions' own codes are `AtollError::code`; the few of them that the proxy reads in a
//! region's answer (the fencing refusals) are in [`region`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// One error code of the router: its answers' code string, status, retryability and hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterCode {
    /// Stable (`ATOLL-...`): tooling and alerts match on it.
    pub code: &'static str,
    /// The HTTP status of every answer with this code.
    pub status: StatusCode,
    /// Whether retrying the same request may succeed (nothing was applied, and the cause may
    /// pass).
    pub retryable: bool,
    /// What the client or operator should do.
    pub hint: &'static str,
}

impl RouterCode {
    /// The JSON error body with this code and `message`.
    pub fn body(&self, message: impl Into<String>) -> atoll_core::ErrorBody {
        atoll_core::ErrorBody::new(self.code, message, self.hint, self.retryable)
    }

    /// The answer: this code's status and JSON error body with `message`.
    pub fn response(&self, message: impl Into<String>) -> Response {
        (self.status, axum::Json(self.body(message))).into_response()
    }
}

/// A request the admin API cannot take (bad path, query or value).
pub const BAD_REQUEST: RouterCode = RouterCode {
    code: "ATOLL-BAD-REQUEST",
    status: StatusCode::BAD_REQUEST,
    retryable: false,
    hint: "see the admin API in `atoll router --help` and docs",
};

/// A body that is not the JSON the route expects (admin API), or that could not be read to its
/// end (proxy: cut short, or invalid chunked encoding). Not retryable, as a region answers the
/// same (`AtollError::MalformedBody`): the same bytes would fail the same way.
pub const MALFORMED_BODY: RouterCode = RouterCode {
    code: "ATOLL-MALFORMED-BODY",
    status: StatusCode::BAD_REQUEST,
    retryable: false,
    hint: "send the whole body: the admin API takes a JSON object with exactly the documented fields; through the proxy, check the request body against GET /v1/openapi.json",
};

/// The admin route does not take this method.
pub const METHOD_NOT_ALLOWED: RouterCode = RouterCode {
    code: "ATOLL-METHOD-NOT-ALLOWED",
    status: StatusCode::METHOD_NOT_ALLOWED,
    retryable: false,
    hint: "drain and undrain are POST, weights are PUT, status is GET",
};

/// No such admin route.
pub const NOT_FOUND: RouterCode = RouterCode {
    code: "ATOLL-NOT-FOUND",
    status: StatusCode::NOT_FOUND,
    retryable: false,
    hint: "routes: GET /v1/router/status, POST /v1/router/regions/{region}/drain|undrain, PUT /v1/router/names/{name}/weights/{region}, GET /v1/global/status, GET /v1/global/metrics, GET /dashboard, GET /metrics, GET /healthz",
};

/// A path the proxy does not forward (only the client API v1).
pub const NOT_PROXIED: RouterCode = RouterCode {
    code: "ATOLL-NOT-PROXIED",
    status: StatusCode::NOT_FOUND,
    retryable: false,
    hint: "replication, metrics and admin endpoints are never reachable through the router's proxy: talk to a region (or the router's admin API) directly; a key whose path has a `.` or `..` segment cannot go through the router",
};

/// No region can take the request now (nothing was sent).
pub const NO_HEALTHY_REGION: RouterCode = RouterCode {
    code: "ATOLL-NO-HEALTHY-REGION",
    status: StatusCode::SERVICE_UNAVAILABLE,
    retryable: true,
    hint: "see `atoll router status`: bring a region back, undrain one, or change router.names.no_healthy",
};

/// A request body over the proxy's limit.
pub const REQUEST_TOO_LARGE: RouterCode = RouterCode {
    code: "ATOLL-REQUEST-TOO-LARGE",
    status: StatusCode::PAYLOAD_TOO_LARGE,
    retryable: false,
    hint: "the router buffers request bodies so that it can replay them on another region; raise [router.proxy] max_body_bytes in the config (or --proxy-max-body-bytes), send smaller requests, or talk to a region directly",
};

/// The router could not persist its admin state (drains, weights); nothing was changed.
pub const STORAGE: RouterCode = RouterCode {
    code: "ATOLL-STORAGE",
    status: StatusCode::INTERNAL_SERVER_ERROR,
    retryable: true,
    hint: "check disk space and permissions of the router's --state-dir",
};

/// No or a wrong admin token.
pub const UNAUTHORIZED: RouterCode = RouterCode {
    code: "ATOLL-UNAUTHORIZED",
    status: StatusCode::UNAUTHORIZED,
    retryable: false,
    hint: "send the router's admin token (ATOLL_ADMIN_TOKEN or --admin-token-file)",
};

/// A region the cluster config does not name.
pub const UNKNOWN_REGION: RouterCode = RouterCode {
    code: "ATOLL-UNKNOWN-REGION",
    status: StatusCode::NOT_FOUND,
    retryable: false,
    hint: "use a region name from atoll.toml ([[regions]])",
};

/// A routed name the config does not declare.
pub const UNKNOWN_ROUTED_NAME: RouterCode = RouterCode {
    code: "ATOLL-UNKNOWN-ROUTED-NAME",
    status: StatusCode::NOT_FOUND,
    retryable: false,
    hint: "use a name from atoll.toml ([[router.names]])",
};

/// A region got a request that is not idempotent and did not answer: it may or may not have
/// been applied, so it is not retried (a 5xx that is deliberately not retryable).
pub const UPSTREAM_OUTCOME_UNKNOWN: RouterCode = RouterCode {
    code: "ATOLL-UPSTREAM-OUTCOME-UNKNOWN",
    status: StatusCode::BAD_GATEWAY,
    retryable: false,
    hint: "read the affected key to see whether the change took effect before sending it again: a counter increment or set update sent twice is applied twice, and an mvr write without X-Atoll-Context sent twice adds two siblings",
};

/// No region could take the request: every attempt failed to connect, or the request is
/// idempotent and every region failed. Either way sending it again is safe.
pub const UPSTREAM_UNAVAILABLE: RouterCode = RouterCode {
    code: "ATOLL-UPSTREAM-UNAVAILABLE",
    status: StatusCode::BAD_GATEWAY,
    retryable: true,
    hint: "the regions are unreachable from the router; see `atoll router status`",
};

/// Every code the router answers with (for the tests and documentation).
pub const ALL: &[RouterCode] = &[
    BAD_REQUEST,
    MALFORMED_BODY,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    NOT_PROXIED,
    NO_HEALTHY_REGION,
    REQUEST_TOO_LARGE,
    STORAGE,
    UNAUTHORIZED,
    UNKNOWN_REGION,
    UNKNOWN_ROUTED_NAME,
    UPSTREAM_OUTCOME_UNKNOWN,
    UPSTREAM_UNAVAILABLE,
];

/// Codes of the regions' own answers (`AtollError::code`) that the proxy reads: the fencing
/// refusals, each meaning the region applied nothing (`proxy::fencing_refusal`). The router
/// never answers with them itself; it passes a region's answer on unchanged.
pub mod region {
    /// The region is not the lease holder (or has no write window right now).
    pub const NOT_PRIMARY: &str = "ATOLL-NOT-PRIMARY";
    /// A read-only keyspace cut off from the majority.
    pub const FENCED: &str = "ATOLL-FENCED";
    /// A passive region refused client traffic.
    pub const PASSIVE: &str = "ATOLL-PASSIVE";
    /// A strong keyspace could not reach a majority from that region.
    pub const NO_QUORUM: &str = "ATOLL-NO-QUORUM";
    /// An owned key's home could not take the write from that region.
    pub const HOME_UNAVAILABLE: &str = "ATOLL-HOME-UNAVAILABLE";
    /// A read the region may not answer yet: it has not applied what the read's session token
    /// names, or it lags more than the read's `max_staleness` (`docs/design/session-consistency.md`).
    pub const STALE: &str = "ATOLL-STALE";
    /// The region is replacing its state with a peer's snapshot and serves nothing yet
    /// (`docs/design/oplog-truncation.md`); its `/healthz` says so too.
    pub const BOOTSTRAPPING: &str = "ATOLL-BOOTSTRAPPING";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn codes_are_unique_prefixed_and_retryable_only_when_it_can_help() {
        let mut seen = BTreeSet::new();
        for c in ALL {
            assert!(seen.insert(c.code), "{} is used twice", c.code);
            assert!(c.code.starts_with("ATOLL-"), "{}", c.code);
            assert!(
                c.code[6..]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'),
                "{}",
                c.code
            );
            assert!(!c.hint.is_empty(), "{} has no hint", c.code);
            // A retryable code says "the same request may succeed later": a server-side or
            // overload condition, never a client error. (No code is retryable for another
            // documented reason today; add it here with that reason if one ever is.)
            if c.retryable {
                assert!(
                    c.status.is_server_error() || c.status == StatusCode::TOO_MANY_REQUESTS,
                    "{} is retryable with status {}",
                    c.code,
                    c.status
                );
            }
        }
        // The region codes the proxy reads are distinct from the router's own.
        for r in [
            region::NOT_PRIMARY,
            region::FENCED,
            region::PASSIVE,
            region::NO_QUORUM,
            region::HOME_UNAVAILABLE,
            region::STALE,
        ] {
            assert!(r.starts_with("ATOLL-") && !seen.contains(r), "{r}");
        }
    }

    #[test]
    fn a_code_renders_its_status_and_body() {
        let resp = NO_HEALTHY_REGION.response("nothing is up");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let b = UPSTREAM_OUTCOME_UNKNOWN.body("m");
        assert_eq!(b.error.code, "ATOLL-UPSTREAM-OUTCOME-UNKNOWN");
        assert_eq!(b.error.message, "m");
        assert!(!b.error.retryable);
        assert_eq!(b.error.hint, UPSTREAM_OUTCOME_UNKNOWN.hint);
    }
}
