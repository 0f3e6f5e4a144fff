//! The router's authoritative DNS server (the role a managed DNS failover service such as
//! Route 53 plays): answers for the routed names of `[router]` with the region that
//! [`RouterState::decide`](crate::state::RouterState::decide) puts first, over UDP and TCP,
//! with the name's short TTL (default 30 s), so clients move when a region goes unhealthy.
//!
//! Built on `hickory-server` (0.26) with atoll's own `RequestHandler`; the answer itself is
//! computed by plain functions ([`DnsHandler::answer_bytes`] reaches them without sockets).
//!
//! What it answers, for a zone `atoll.test.` (every answer has the AA bit):
//!
//! | query | answer |
//! | --- | --- |
//! | routed name, `A`/`AAAA`/`ANY` | the `dns_address` of the policy's first choice, TTL = the name's `ttl_secs`; a query for the other address family gets NODATA |
//! | routed name, nothing healthy | fail-open / last-known-good: as decided; fail-closed (or an empty last-known-good set): SERVFAIL |
//! | routed name, another type | NODATA (NOERROR, empty answer, SOA in the authority section) |
//! | apex `SOA` / `NS` | `SOA ns1.<zone> hostmaster.<zone>`; `NS ns1.<zone>` with its address as glue |
//! | `ns1.<zone>` `A`/`AAAA` | the server's own address (the listen address unless it is a wildcard, or [`DnsOptions::ns_address`]) |
//! | other names in the zone | NXDOMAIN with the SOA (an empty non-terminal gets NODATA) |
//! | names outside the zone, classes other than IN/ANY, zone transfers | REFUSED |
//! | not a query (NOTIFY, UPDATE) | NOTIMP; a message with other than one question: FORMERR; EDNS version above 0: BADVERS |
//!
//! **Fencing** (`docs/design/fencing.md`): a `failover` name answers the healthy region whose
//! `/healthz` role is `primary` (the write-lease holder; the higher epoch should two claim it),
//! and only when none is healthy the first healthy region in the configured order, so the name
//! follows the lease within one health-check interval. No name ever answers a `passive` region,
//! not even under fail-open. Latency and weighted names are otherwise unchanged (standbys serve
//! reads). See [`crate::policy`].
//!
//! The negative-caching TTL (the SOA's TTL and MINIMUM, RFC 2308) is the zone's `router.ttl_secs`,
//! so a name that starts to exist is not hidden for long.
//!
//! **EDNS Client Subnet** (RFC 7871): a query with an ECS option is located by the subnet's
//! address in `[[router.client_locations]]` (only prefixes no longer than the SOURCE
//! PREFIX-LENGTH are used, since the other bits are unknown); without one (or with SOURCE
//! PREFIX-LENGTH 0) by the resolver's address (`RouterConfig::locate`). The option is echoed
//! with the SOURCE PREFIX-LENGTH as sent and a SCOPE PREFIX-LENGTH saying for which clients the
//! answer holds: 0 when it does not depend on the client (failover and weighted names, errors,
//! the apex); for latency names the matching prefix's length, raised where needed so that no more
//! specific table entry falls inside the scope, and never above the source length. A response
//! carries an OPT record whenever the query did.
//!
//! **Metrics** ([`DnsMetrics`], defined with the router's other metrics in
//! [`crate::metrics::dns`]): `atoll_router_dns_queries_total{name, qtype, answer}` and the
//! histogram `atoll_router_dns_query_duration_seconds`. Labels are bounded: `name` is a routed
//! name, the zone apex, `ns1.<zone>`, or `other`; `qtype` is `A`, `AAAA`, `ANY`, `SOA`, `NS` or
//! `other`; `answer` is the region answered, or `zone` (apex/NS data), `nodata`, `nxdomain`,
//! `refused`, `servfail`, `formerr`, `notimp` or `badvers`.
//!
//! Messages the DNS library cannot decode never reach the handler (it answers FORMERR itself when
//! the header is readable, and drops the rest); the handler itself never panics on any input.
//!
//! Layout: [`answer`] computes answers from the router's state (the `RequestHandler`, no
//! sockets); [`server`] binds UDP and TCP and runs hickory's server with that handler.

pub mod answer;
pub mod server;

pub use crate::metrics::dns::{
    DURATION, DURATION_HELP, DnsMetrics, QUERIES, QUERIES_HELP, QueryLabels,
};
pub use answer::{DnsHandler, EDNS_PAYLOAD, INFRA_TTL_SECS, NS_LABEL, locate_subnet};
pub use server::{DnsOptions, DnsServer, TCP_IDLE_TIMEOUT, serve};
