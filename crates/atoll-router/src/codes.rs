//! The stable error codes of the router's proxy and admin API (`ATOLL-...`), one constant each,
//! so a code is written once and matched by name (the region's own codes are `AtollError::code`).

/// A request the admin API cannot take (bad path, query or value).
pub const BAD_REQUEST: &str = "ATOLL-BAD-REQUEST";
/// A region refused a write: it is fenced (nothing applied; retried elsewhere).
pub const FENCED: &str = "ATOLL-FENCED";
/// A body that is not the JSON the route expects (admin API), or unreadable (proxy).
pub const MALFORMED_BODY: &str = "ATOLL-MALFORMED-BODY";
/// The route does not take this method.
pub const METHOD_NOT_ALLOWED: &str = "ATOLL-METHOD-NOT-ALLOWED";
/// No such route.
pub const NOT_FOUND: &str = "ATOLL-NOT-FOUND";
/// A region could not reach a majority for a strong keyspace (nothing applied; retried
/// elsewhere).
pub const NO_QUORUM: &str = "ATOLL-NO-QUORUM";
/// An owned key's home could not take the write from this region (nothing applied; retried
/// elsewhere).
pub const HOME_UNAVAILABLE: &str = "ATOLL-HOME-UNAVAILABLE";
/// A region refused a write: it is not the lease holder (nothing applied; retried elsewhere).
pub const NOT_PRIMARY: &str = "ATOLL-NOT-PRIMARY";
/// A path the proxy does not forward (only the client API v1).
pub const NOT_PROXIED: &str = "ATOLL-NOT-PROXIED";
/// No region can take the request now.
pub const NO_HEALTHY_REGION: &str = "ATOLL-NO-HEALTHY-REGION";
/// A passive region refused client traffic (nothing applied; retried elsewhere).
pub const PASSIVE: &str = "ATOLL-PASSIVE";
/// A request body over the proxy's limit.
pub const REQUEST_TOO_LARGE: &str = "ATOLL-REQUEST-TOO-LARGE";
/// The router could not persist its admin state (drains, weights).
pub const STORAGE: &str = "ATOLL-STORAGE";
/// No or a wrong admin token.
pub const UNAUTHORIZED: &str = "ATOLL-UNAUTHORIZED";
/// A region the cluster config does not name.
pub const UNKNOWN_REGION: &str = "ATOLL-UNKNOWN-REGION";
/// A routed name the config does not declare.
pub const UNKNOWN_ROUTED_NAME: &str = "ATOLL-UNKNOWN-ROUTED-NAME";
/// The region got the request and did not answer: it may or may not have been applied.
pub const UPSTREAM_OUTCOME_UNKNOWN: &str = "ATOLL-UPSTREAM-OUTCOME-UNKNOWN";
/// No region could be reached for the request (nothing was sent, or nothing applied).
pub const UPSTREAM_UNAVAILABLE: &str = "ATOLL-UPSTREAM-UNAVAILABLE";
