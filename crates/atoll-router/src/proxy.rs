//! The HTTP reverse proxy: the anycast-style fast path that fails over per request.
//!
//! **Only the client API v1 is forwarded** ([`classify`]): `/v1/kv/{keyspace}/...`,
//! `/v1/counter/{keyspace}/...`, `/v1/set/{keyspace}/...`, `/v1/ttl/{keyspace}/...`,
//! `/v1/ratelimit/{keyspace}/...` (its `POST` is never replayed: it counts),
//! `/v1/conflicts/{keyspace}`,
//! `/v1/status`, `/v1/openapi.json` and `/healthz`. Anything else (the replication protocol
//! under `/v1/replication/`, `/metrics`, unknown paths) is answered by the router itself with
//! `404 ATOLL-NOT-PROXIED` and never reaches a region. The path is matched as sent, byte for
//! byte and case-sensitively: a keyspace segment must be a plain keyspace name
//! (`[a-z0-9_-]`, no percent-encoding), a path must not start with an empty segment
//! (`//v1/...`), and a `.` or `..` segment (percent-encoded too) is refused anywhere, so no
//! later normalisation can turn an allowed path into another one.
//!
//! Every forwarded request is routed by one routed name's policy ([`RouterState::decide`],
//! client location unknown, so the latency policy uses the measured round trips). The request
//! goes to the first region of the decision; if that fails it may go to the next one:
//!
//! - **Connection failures** (the connection could not be made: refused, unreachable, connect
//!   timeout): the request never reached the region, so it is retried on the next region, whatever
//!   its method.
//! - **The request may have reached the region** (the connection broke after the request was
//!   written, or no response came within the upstream timeout): retried only when idempotent
//!   ([`is_idempotent`]), which follows the keyspace's policy in the cluster config: `GET`,
//!   `HEAD` and `OPTIONS` always; `PUT`/`DELETE` on `/v1/kv/...` and `/v1/ttl/...` of an `lww`
//!   or `owned` keyspace (an expiry change rewrites the value, an lww write); on an
//!   `mvr` keyspace only with `X-Atoll-Context` (without one a write adds a sibling, so a second
//!   attempt would add a second one). Anything else (a write without a context to an mvr
//!   keyspace, a `POST` counter increment or set update, a keyspace the config does not
//!   declare) is **never** replayed: the client gets `502 ATOLL-UPSTREAM-OUTCOME-UNKNOWN`,
//!   because doing it twice would apply it twice.
//! - A `502`/`503`/`504` answer to an idempotent request is retried on the next region too; other
//!   answers go back to the client as they are.
//! - **A fencing refusal** (`503` whose JSON error code is `ATOLL-NOT-PRIMARY`, `ATOLL-FENCED`,
//!   `ATOLL-PASSIVE`, `ATOLL-NO-QUORUM`, `ATOLL-HOME-UNAVAILABLE`, `ATOLL-STALE` or
//!   `ATOLL-BOOTSTRAPPING`, see [`fencing_refusal`]) says the region did not apply the request:
//!   it is retried on the next region **whatever its method**, counted in
//!   `atoll_router_retries_total{reason="not-primary"|"fenced"|"passive"|"no-quorum"|
//!   "home-unavailable"|"stale"|"bootstrapping"}`, and not counted as a
//!   failure by outlier detection (the region is up; it only does not hold the write lease). The
//!   body of a `503` is read (at most [`REFUSAL_PEEK_BYTES`], within [`REFUSAL_PEEK_TIMEOUT`]) to
//!   tell; the client gets it unchanged when it is not retried.
//!
//! **Writes follow the write lease** (`docs/design/fencing.md`): a request with any method but
//! `GET`, `HEAD` and `OPTIONS` goes first to the healthy region whose `/healthz` role is
//! `primary` ([`RouterState::decide_for`] with [`Access::Write`]), then in the policy's usual
//! order; reads go by the policy (a failover name puts the primary first for them too). Passive
//! regions get nothing.
//!
//! Every attempt's outcome feeds passive outlier detection
//! ([`RouterState::observe_request`]): consecutive failures (connection errors, timeouts, 5xx)
//! eject a region before the active checks notice. Responses carry `X-Atoll-Routed-To`. When
//! nothing is routable under `no_healthy = "fail-closed"`, the proxy answers
//! `503 ATOLL-NO-HEALTHY-REGION`. Request bodies are buffered (up to
//! [`ProxySettings::max_body_bytes`], else `413`) so that they can be replayed (any method may
//! be replayed after a connection failure or a fencing refusal); a request without a body is
//! forwarded without reading anything. A region's small answer (a `Content-Length` of at most
//! 64 KiB) is read whole before it is passed on, so its head and body leave in one write; a
//! larger one is streamed. A request
//! answered before its body was read (refused, or over the limit) has the rest of its body read
//! and discarded after the answer ([`crate::unread`]), so the client can read that answer.
//!
//! The proxy is served by a plain hyper server ([`serve`]: no router, no middleware) and keeps
//! its own keep-alive HTTP/1 connections to each region (`pool`), reused only once an answer
//! has been read to the end; `docs/design/router-proxy.md` says why.
//!
//! [`RouterState::decide`]: crate::state::RouterState::decide
//! [`RouterState::decide_for`]: crate::state::RouterState::decide_for
//! [`RouterState::observe_request`]: crate::state::RouterState::observe_request

use crate::codes;
use crate::health::HealthState;
use crate::metrics::{ProxyHandles, mode_str};
use crate::policy::{Access, Mode};
use crate::pool::{Conn, Pool, SendError};
use crate::runtime::RouterCtx;
use crate::state::RegionEntry;
use atoll_config::router::{RoutedName, RouterProxyConfig};
use atoll_core::RegionId;
use atoll_core::op::Policy;
use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::uri::PathAndQuery;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Response header naming the region that answered.
pub const ROUTED_TO_HEADER: &str = "x-atoll-routed-to";

/// Proxy limits and timeouts.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Largest request body buffered for replay; larger requests get `413`.
    pub max_body_bytes: usize,
    /// Longest wait for a connection to a region (a failure here is always retried).
    pub connect_timeout: Duration,
    /// Longest wait for a region's response head once the request is sent (connecting
    /// included).
    pub upstream_timeout: Duration,
    /// How long an idle pooled connection to a region is kept.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections per region (0: none is kept).
    pub pool_max_idle_per_region: usize,
}

impl Default for ProxySettings {
    /// The defaults of `[router.proxy]`.
    fn default() -> Self {
        Self::from_config(&RouterProxyConfig::default())
    }
}

impl ProxySettings {
    /// The settings of a config's `[router.proxy]` (an idle timeout of 0 keeps no idle
    /// connection).
    pub fn from_config(c: &RouterProxyConfig) -> Self {
        Self {
            max_body_bytes: usize::try_from(c.max_body_bytes).unwrap_or(usize::MAX),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            upstream_timeout: Duration::from_millis(c.request_timeout_ms),
            pool_idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            pool_max_idle_per_region: if c.idle_timeout_ms == 0 { 0 } else { 64 },
        }
    }
}

/// Header carrying an mvr key's causal context: an mvr write with it supersedes what its
/// client read; one without it adds a sibling.
pub const CONTEXT_HEADER: &str = "x-atoll-context";

/// The paths the proxy forwards, for messages.
pub const PROXIED_PATHS: &str = "/v1/kv/{keyspace}/{key}, /v1/counter/{keyspace}/{key}, /v1/set/{keyspace}/{key}, /v1/ttl/{keyspace}/{key}, /v1/ratelimit/{keyspace}/{key}, /v1/conflicts/{keyspace}, /v1/status, /v1/openapi.json and /healthz";

/// A path the proxy forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/v1/{kind}/{keyspace}...` with `kind` one of `kv`, `counter`, `set`, `conflicts`.
    Data { kind: &'a str, keyspace: &'a str },
    /// `/v1/status`, `/v1/openapi.json` or `/healthz`.
    Fixed,
}

/// Why the proxy refuses a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a route of the client API v1 (replication, metrics, anything unknown).
    NotClientApi,
    /// A `.` or `..` segment, plain or percent-encoded.
    DotSegment,
}

fn is_keyspace_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether a path segment is `.` or `..`, also percent-encoded (`%2e`, `.%2E`, ...), as URL
/// parsers treat them.
fn is_dot_segment(seg: &str) -> bool {
    // Without allocating (every forwarded request's every segment goes through here): count the
    // dots, `%2e` / `%2E` counting as one, and give up at the first other byte.
    let b = seg.as_bytes();
    let (mut i, mut dots) = (0, 0);
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'%'
            && b.get(i + 1) == Some(&b'2')
            && b.get(i + 2).is_some_and(|c| c | 0x20 == b'e')
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// Which client API route a raw request path (as sent, not decoded) is, or why the proxy refuses
/// it. See the module documentation for the rules.
pub fn classify(path: &str) -> Result<Target<'_>, Refusal> {
    if path.split('/').any(is_dot_segment) {
        return Err(Refusal::DotSegment);
    }
    if matches!(path, "/v1/status" | "/v1/openapi.json" | "/healthz") {
        return Ok(Target::Fixed);
    }
    let rest = path.strip_prefix("/v1/").ok_or(Refusal::NotClientApi)?;
    let (kind, rest) = rest.split_once('/').ok_or(Refusal::NotClientApi)?;
    if !matches!(
        kind,
        "kv" | "counter" | "set" | "ttl" | "ratelimit" | "conflicts"
    ) {
        return Err(Refusal::NotClientApi);
    }
    let (keyspace, key) = match rest.split_once('/') {
        Some((ks, key)) => (ks, Some(key)),
        None => (rest, None),
    };
    if !is_keyspace_name(keyspace) || (kind == "conflicts" && key.is_some()) {
        return Err(Refusal::NotClientApi);
    }
    Ok(Target::Data { kind, keyspace })
}

/// Whether a request may be sent again after it may already have reached a region: reads
/// always; `PUT`/`DELETE` on `/v1/kv/...` when the keyspace (`policy_of` looks it up in the
/// cluster config) is `lww`, or `mvr` and the request carries a causal context; nothing else
/// (counter and set `POST`s, mvr writes without a context, keyspaces the config does not
/// declare, paths the proxy does not forward).
pub fn is_idempotent(
    method: &Method,
    path: &str,
    has_context: bool,
    policy_of: impl Fn(&str) -> Option<Policy>,
) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => true,
        Method::PUT | Method::DELETE => match classify(path) {
            Ok(Target::Data {
                kind: "kv",
                keyspace,
            }) => match policy_of(keyspace) {
                Some(Policy::Lww | Policy::Owned) => true,
                Some(Policy::Mvr) => has_context,
                _ => false,
            },
            // An expiry change (`docs/design/expiring-keys.md`) is an lww write of the value.
            Ok(Target::Data {
                kind: "ttl",
                keyspace,
            }) => matches!(policy_of(keyspace), Some(Policy::Lww | Policy::Owned)),
            _ => false,
        },
        _ => false,
    }
}

/// Hop-by-hop headers, which a proxy must not forward.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too (nothing to collect without one, the
    // usual HTTP/1.1 keep-alive case).
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_ATOLL_ROUTED_TO: HeaderName = HeaderName::from_static(ROUTED_TO_HEADER);

/// The headers sent to a region: the client's without hop-by-hop headers, `Host` moved to
/// `X-Forwarded-Host`, the client's address appended to `X-Forwarded-For`. Made once per
/// request, cloned per attempt.
fn forwarded_headers(mut headers: HeaderMap, client: Option<SocketAddr>) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    if let Some(c) = client {
        let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", c.ip()),
            None => c.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers
}

/// An internal error of the router's own state (`AtollError`, e.g. a poisoned lock), answered
/// `500` in atoll's JSON error shape with the error's own code, hint and retryability.
pub(crate) fn internal_error(e: &atoll_core::AtollError) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(atoll_core::ErrorBody::from(e)),
    )
        .into_response()
}

/// Decrements a region's in-flight gauge when dropped.
struct InFlight(Gauge);

impl InFlight {
    fn new(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A region's response body, counted as in flight until it ends; read to the end, its
/// connection goes back to the region's pool.
struct Guarded {
    inner: Incoming,
    _guard: InFlight,
    /// The connection it arrives on, with its pool, until the body ends.
    conn: Option<(Arc<Pool>, Conn)>,
    ended: bool,
}

impl Guarded {
    fn give_back(&mut self) {
        if let Some((pool, conn)) = self.conn.take() {
            pool.put(conn);
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Only a body read to the end leaves its connection reusable; otherwise dropping the
        // connection closes it.
        if self.ended || self.inner.is_end_stream() {
            self.give_back();
        }
    }
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Most bytes of a `503` answer's body read to tell a fencing refusal from another `503`.
pub const REFUSAL_PEEK_BYTES: usize = 16 << 10;

/// Longest wait for the body of a `503` answer (capped at the upstream timeout); one that takes
/// longer is passed on as a plain `503`.
pub const REFUSAL_PEEK_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether an answer is a region's fencing refusal (`docs/design/fencing.md`): a `503` whose
/// JSON error code is `ATOLL-NOT-PRIMARY` (not the lease holder, or no write window right now),
/// `ATOLL-FENCED` (a read-only keyspace cut off from the majority), `ATOLL-PASSIVE`,
/// `ATOLL-NO-QUORUM` (a strong keyspace, no majority reachable from that region) or
/// `ATOLL-HOME-UNAVAILABLE` (an owned key's home not reachable from it, or the key moving), or
/// `ATOLL-STALE` (a read the region may not answer yet: behind the read's session token or its
/// `max_staleness`; another region may have the data), or `ATOLL-BOOTSTRAPPING` (the region is
/// loading a peer's snapshot and serves nothing yet; its health check takes it out too). Each
/// means the request was **not applied**, so it may go to another region whatever its method.
/// Returns the retry reason (`not-primary`, `fenced`, `passive`, `no-quorum`,
/// `home-unavailable`, `stale`, `bootstrapping`); `None` for anything else.
pub fn fencing_refusal(status: u16, body: &[u8]) -> Option<&'static str> {
    if status != 503 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.get("error")?.get("code")?.as_str()? {
        codes::region::NOT_PRIMARY => Some("not-primary"),
        codes::region::FENCED => Some("fenced"),
        codes::region::PASSIVE => Some("passive"),
        codes::region::NO_QUORUM => Some("no-quorum"),
        codes::region::HOME_UNAVAILABLE => Some("home-unavailable"),
        codes::region::STALE => Some("stale"),
        codes::region::BOOTSTRAPPING => Some("bootstrapping"),
        _ => None,
    }
}

/// A region's response body of which the first frames were already read: they are sent first,
/// then the rest (or the error that ended the read).
struct Replayed {
    read: VecDeque<Frame<Bytes>>,
    error: Option<hyper::Error>,
    ended: bool,
    rest: Guarded,
}

impl hyper::body::Body for Replayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(f) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = self.error.take() {
            self.ended = true;
            return Poll::Ready(Some(Err(e)));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.error.is_none() && (self.ended || self.rest.is_end_stream())
    }
}

/// Reads the start of a `503` body (up to [`REFUSAL_PEEK_BYTES`] or `limit`): the answer with its
/// body intact, and whether the whole body is a fencing refusal (with its retry reason).
async fn peek_refusal(
    parts: hyper::http::response::Parts,
    mut body: Guarded,
    limit: Duration,
) -> (Response, Option<&'static str>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut read = VecDeque::new();
    let mut data = Vec::new();
    let mut error = None;
    let mut ended = false;
    while data.len() <= REFUSAL_PEEK_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break,
            Ok(None) => {
                ended = true;
                break;
            }
            Ok(Some(Err(e))) => {
                error = Some(e);
                break;
            }
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    data.extend_from_slice(d);
                }
                read.push_back(f);
            }
        }
    }
    let reason = if ended {
        fencing_refusal(parts.status.as_u16(), &data)
    } else {
        None
    };
    let replay = Replayed {
        read,
        error,
        ended,
        rest: body,
    };
    (Response::from_parts(parts, Body::new(replay)), reason)
}

/// Largest answer (by `Content-Length`) read whole before it is passed on.
const SMALL_ANSWER_BYTES: u64 = 64 << 10;

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A body error in words, with its cause.
fn describe_hyper_error(e: &hyper::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Why an attempt failed.
enum Failure {
    /// The connection could not be made: the request did not reach the region.
    Connect(String),
    /// The request may have reached the region.
    Broken(String),
    /// No response head within the upstream timeout.
    Timeout,
    /// The region answered 502/503/504.
    Status(Response),
    /// The region refused the request because of fencing ([`fencing_refusal`]): not applied.
    Refused(Response, &'static str),
}

/// A region as the proxy sends to it, with what every request to it needs made once: the
/// `Host` header, the `X-Atoll-Routed-To` value, the metric handles and its connections.
struct Upstream {
    entry: RegionEntry,
    host: Result<HeaderValue, String>,
    routed_to: Option<HeaderValue>,
    metrics: ProxyHandles,
    pool: Arc<Pool>,
}

/// The proxy of one routed name.
pub struct Proxy {
    ctx: RouterCtx,
    name: RoutedName,
    settings: ProxySettings,
    upstreams: Vec<Upstream>,
    /// The metric handles of answers no region gave (`region="none"`).
    none_metrics: ProxyHandles,
}

impl Proxy {
    /// The proxy of a routed name. Call it within a tokio runtime: it starts the task that
    /// closes idle connections to the regions (it ends when the proxy is dropped).
    pub fn new(ctx: RouterCtx, name: RoutedName, settings: ProxySettings) -> Self {
        let upstreams: Vec<Upstream> = ctx
            .state
            .regions()
            .iter()
            .map(|e| Upstream {
                host: HeaderValue::from_str(&e.api.to_string())
                    .map_err(|err| format!("bad upstream address {}: {err}", e.api)),
                routed_to: HeaderValue::from_str(e.name.as_str()).ok(),
                metrics: ctx.metrics.proxy_handles(e.name.as_str()),
                pool: Pool::new(
                    e.api,
                    settings.connect_timeout,
                    settings.pool_idle_timeout,
                    settings.pool_max_idle_per_region,
                ),
                entry: e.clone(),
            })
            .collect();
        Pool::spawn_reaper(
            upstreams.iter().map(|u| Arc::downgrade(&u.pool)).collect(),
            settings.pool_idle_timeout,
        );
        let none_metrics = ctx.metrics.proxy_handles("none");
        Self {
            ctx,
            name,
            settings,
            upstreams,
            none_metrics,
        }
    }

    fn upstream(&self, region: &RegionId) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.entry.name == *region)
    }

    /// Idle keep-alive connections to a region that are still open (for tests and
    /// diagnostics); `None` for a region the proxy does not know.
    pub fn idle_connections(&self, region: &str) -> Option<usize> {
        self.upstreams
            .iter()
            .find(|u| u.entry.name.as_str() == region)
            .map(|u| u.pool.idle_open())
    }

    /// The routed name whose policy this proxy follows.
    pub fn name(&self) -> &RoutedName {
        &self.name
    }

    fn report(&self, region: &RegionId, ok: bool) {
        let now = self.ctx.now_ms();
        match self.ctx.state.observe_request(region, ok, now) {
            Ok(Some(t)) if t.to == HealthState::Unhealthy => {
                tracing::warn!(
                    region = region.as_str(),
                    reason = %t.reason,
                    "region ejected by passive outlier detection: no new traffic until its health checks recover"
                );
                self.ctx.metrics.ejected(region.as_str());
                self.ctx.metrics.refresh(&self.ctx.state, now);
            }
            Ok(_) => {}
            Err(e) => tracing::error!("cannot record a request outcome: {e}"),
        }
    }

    /// Counts the answer and names the region that gave it (`None`: the router itself).
    fn finish(&self, region: Option<&Upstream>, mut resp: Response) -> Response {
        let status = resp.status().as_u16();
        match region {
            Some(u) => {
                u.metrics.observe_request(status);
                if let Some(v) = &u.routed_to {
                    resp.headers_mut().insert(X_ATOLL_ROUTED_TO, v.clone());
                }
            }
            None => self.none_metrics.observe_request(status),
        }
        resp
    }

    async fn attempt(
        &self,
        up: &Upstream,
        parts: &hyper::http::request::Parts,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Response, Failure> {
        let host = up.host.clone().map_err(|e| Failure::Connect(e.clone()))?;
        // Origin-form (`/path?query`): the connection is to the region itself.
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut req = hyper::Request::new(Full::new(body.clone()));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = path.into();
        let h = req.headers_mut();
        *h = headers.clone();
        h.insert(header::HOST, host);

        let guard = InFlight::new(up.metrics.in_flight().clone());
        let start = Instant::now();
        let res = tokio::time::timeout(self.settings.upstream_timeout, up.pool.send(req)).await;
        let (resp, conn) = match res {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(SendError::NotSent(why))) => return Err(Failure::Connect(why)),
            Ok(Err(SendError::Broken(why))) => return Err(Failure::Broken(why)),
            Ok(Ok(r)) => r,
        };
        up.metrics.observe_upstream(start.elapsed());
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        let rbody = Guarded {
            inner: rbody,
            _guard: guard,
            conn: Some((up.pool.clone(), conn)),
            ended: false,
        };
        if rparts.status == StatusCode::SERVICE_UNAVAILABLE {
            let limit = REFUSAL_PEEK_TIMEOUT.min(self.settings.upstream_timeout);
            let (out, refusal) = peek_refusal(rparts, rbody, limit).await;
            return Err(match refusal {
                Some(reason) => Failure::Refused(out, reason),
                None => Failure::Status(out),
            });
        }
        // A small answer of known length (most of the client API's) is read whole before it is
        // passed on: its head and body then leave in one write, instead of the head at once
        // and the body after another round through the upstream connection's task. Its body
        // breaking off counts like the connection breaking before the answer.
        let small = parts.method != Method::HEAD
            && !matches!(rparts.status.as_u16(), 100..=199 | 204 | 304)
            && content_length(&rparts.headers).is_some_and(|n| n <= SMALL_ANSWER_BYTES);
        let rbody = if small {
            match tokio::time::timeout(self.settings.upstream_timeout, rbody.collect()).await {
                Ok(Ok(read)) => Body::from(read.to_bytes()),
                Ok(Err(e)) => {
                    return Err(Failure::Broken(format!(
                        "the answer's body broke off: {}",
                        describe_hyper_error(&e)
                    )));
                }
                Err(_) => return Err(Failure::Timeout),
            }
        } else {
            Body::new(rbody)
        };
        let out = Response::from_parts(rparts, rbody);
        if matches!(out.status().as_u16(), 502..=504) {
            return Err(Failure::Status(out));
        }
        Ok(out)
    }

    /// Proxies one request.
    ///
    /// A request answered before its body was read to the end (not proxied, over the body
    /// limit) has the rest read and thrown away after the answer, which says
    /// `Connection: close` ([`crate::unread`]'s rule, applied here without its middleware).
    pub async fn handle<B>(&self, req: hyper::Request<B>, client: Option<SocketAddr>) -> Response
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut parts, mut body) = req.into_parts();
        if let Err(refusal) = classify(parts.uri.path()) {
            tracing::debug!(method = %parts.method, path = parts.uri.path(), ?refusal, "not proxied");
            let why = match refusal {
                Refusal::NotClientApi => "it is not part of the client API v1",
                Refusal::DotSegment => "it has a `.` or `..` segment (plain or percent-encoded)",
            };
            let resp = self.finish(
                None,
                codes::NOT_PROXIED.response(format!(
                    "the router does not forward `{}`: {why}; it forwards only {PROXIED_PATHS}",
                    parts.uri.path()
                )),
            );
            return leave_unread(&parts.headers, body, resp);
        }
        // A request without a body (a GET, most reads) has nothing to read; one with a body is
        // read whole first, so that it can be sent again to another region.
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            match Limited::new(&mut body, self.settings.max_body_bytes)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    let resp = self.finish(
                        None,
                        codes::REQUEST_TOO_LARGE.response(format!(
                            "the request body is over the router's limit of {} bytes",
                            self.settings.max_body_bytes
                        )),
                    );
                    return leave_unread(&parts.headers, body, resp);
                }
                Err(e) => {
                    return self.finish(
                        None,
                        codes::MALFORMED_BODY
                            .response(format!("cannot read the request body: {e}")),
                    );
                }
            }
        };
        // What the region gets (the idempotency rule reads `X-Atoll-Context` there too: the region
        // sees only what is forwarded).
        let headers = forwarded_headers(std::mem::take(&mut parts.headers), client);

        let now = self.ctx.now_ms();
        let access = match parts.method {
            Method::GET | Method::HEAD | Method::OPTIONS => Access::Read,
            _ => Access::Write,
        };
        let choice = match self
            .ctx
            .state
            .decide_for(&self.name, access, None, fastrand::f64(), now)
        {
            Ok(c) => c,
            Err(e) => {
                return self.finish(None, internal_error(&e));
            }
        };
        // Only a decision without a healthy region needs to know whether the router is still
        // waiting for its first checks.
        let starting =
            choice.mode != Mode::Normal && self.ctx.state.starting(&self.name).unwrap_or(false);
        self.ctx
            .metrics
            .record_mode(&self.name.fqdn, choice.mode, starting, now);
        if choice.ranked.is_empty() {
            let why = match choice.mode {
                m if starting => format!(
                    "the router is starting: no region serving `{}` has passed a health check yet, and its no_healthy policy is {}",
                    self.name.fqdn,
                    mode_str(m)
                ),
                Mode::FailClosed => format!(
                    "no region serving `{}` is healthy, and its no_healthy policy is fail-closed",
                    self.name.fqdn
                ),
                Mode::LastKnownGood => format!(
                    "no region serving `{}` is healthy, and none has been healthy since the router started (no_healthy = last-known-good)",
                    self.name.fqdn
                ),
                m => format!(
                    "no region serving `{}` can be routed to (mode {})",
                    self.name.fqdn,
                    mode_str(m)
                ),
            };
            return self.finish(None, codes::NO_HEALTHY_REGION.response(why));
        }

        let idempotent = is_idempotent(
            &parts.method,
            parts.uri.path(),
            headers.contains_key(CONTEXT_HEADER),
            |ks| self.ctx.state.keyspace_policy(ks),
        );
        let mut tried: Vec<String> = Vec::new();
        let mut last_status: Option<(&Upstream, Response)> = None;
        let n = choice.ranked.len();
        for (i, rid) in choice.ranked.iter().enumerate() {
            let Some(up) = self.upstream(rid) else {
                continue;
            };
            let rname = up.entry.name.as_str();
            let has_next = i + 1 < n;
            match self.attempt(up, &parts, &headers, &body).await {
                Ok(resp) => {
                    let ok = resp.status().as_u16() < 500;
                    self.report(&up.entry.name, ok);
                    return self.finish(Some(up), resp);
                }
                Err(Failure::Status(resp)) => {
                    self.report(&up.entry.name, false);
                    let code = resp.status().as_u16();
                    if idempotent && has_next {
                        tracing::debug!(region = %rname, status = code, "retrying on the next region");
                        self.ctx.metrics.retry(rname, "status");
                        tried.push(format!("{rname}: answered {code}"));
                        last_status = Some((up, resp));
                        continue;
                    }
                    return self.finish(Some(up), resp);
                }
                Err(Failure::Refused(resp, reason)) => {
                    // Not applied, and the region is up (it does not hold the lease, or is cut
                    // off): no outlier report, and any method may go on to the next region.
                    if has_next {
                        tracing::debug!(region = %rname, method = %parts.method, reason, "region refused the request because of fencing (not applied): retrying on the next region");
                        self.ctx.metrics.retry(rname, reason);
                        tried.push(format!("{rname}: refused ({reason})"));
                        last_status = Some((up, resp));
                        continue;
                    }
                    return self.finish(Some(up), resp);
                }
                Err(Failure::Connect(why)) => {
                    self.report(&up.entry.name, false);
                    tried.push(format!("{rname}: {why}"));
                    if has_next {
                        tracing::debug!(region = %rname, "connection failed, retrying on the next region: {why}");
                        self.ctx.metrics.retry(rname, "connect");
                    }
                }
                Err(f @ (Failure::Broken(_) | Failure::Timeout)) => {
                    self.report(&up.entry.name, false);
                    let (reason, why) = match f {
                        Failure::Broken(w) => ("reset", w),
                        _ => (
                            "timeout",
                            format!(
                                "no response within {} ms",
                                self.settings.upstream_timeout.as_millis()
                            ),
                        ),
                    };
                    if !idempotent {
                        tracing::warn!(
                            region = %rname,
                            method = %parts.method,
                            path = parts.uri.path(),
                            "request may have reached the region, which did not answer ({why}); not retried: it is not idempotent"
                        );
                        return self.finish(
                            Some(up),
                            codes::UPSTREAM_OUTCOME_UNKNOWN.response(format!(
                                    "the {} request was sent to region {rname}, which did not answer ({why}); it may or may not have been applied, and it was not retried elsewhere because it is not idempotent",
                                    parts.method
                                )),
                        );
                    }
                    tried.push(format!("{rname}: {why}"));
                    if has_next {
                        tracing::debug!(region = %rname, "{reason}, retrying idempotent request on the next region: {why}");
                        self.ctx.metrics.retry(rname, reason);
                    }
                }
            }
        }
        if let Some((up, resp)) = last_status {
            // Every region failed; the last region's own answer says the most.
            return self.finish(Some(up), resp);
        }
        self.finish(
            None,
            codes::UPSTREAM_UNAVAILABLE.response(format!(
                "no region could take the request ({})",
                tried.join("; ")
            )),
        )
    }
}

/// The answer to a request whose body was not read to the end: the rest of the body is read
/// and thrown away in the background (at most [`crate::unread::DRAIN_MAX_BYTES`], for at most
/// [`crate::unread::DRAIN_MAX_TIME`]), so that a client still sending can read the answer, and
/// the connection closes after it. A request that sent `Expect: 100-continue` has not sent its
/// body and will not: nothing is read.
fn leave_unread<B>(req_headers: &HeaderMap, body: B, mut resp: Response) -> Response
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
{
    if body.is_end_stream() {
        return resp;
    }
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let expects_continue = req_headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue {
        tokio::spawn(drain(body));
    }
    resp
}

/// Reads and discards the rest of a body, within [`leave_unread`]'s bounds.
async fn drain<B>(mut body: B)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut read: u64 = 0;
    let _ = tokio::time::timeout(crate::unread::DRAIN_MAX_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.len() as u64);
                if read > crate::unread::DRAIN_MAX_BYTES {
                    break;
                }
            }
        }
    })
    .await;
}

/// Serves the proxy on a listener until `shutdown` turns true (or its sender is dropped): then
/// it stops accepting, lets every open connection finish its request in flight, and returns
/// once they are closed.
///
/// A plain hyper server (HTTP/1.1, and HTTP/2 with prior knowledge, as `axum::serve` served it
/// before), without a router or middleware: every request goes to [`Proxy::handle`] with the
/// client's address. Accepted connections have no Nagle delay (a proxy's small writes must
/// leave at once).
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(serve_connection(tcp, peer, proxy.clone(), shutdown.clone()));
                }
                Err(e) => accept_error(e).await,
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Waits until the shutdown flag is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// After an accept error: go on at once when it concerns one connection; otherwise (out of file
/// descriptors, say) wait a second rather than spin, as `axum::serve` does.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("proxy: cannot accept a connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let proxy = proxy.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, Some(peer)).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, "proxy connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ks: &str) -> Option<Policy> {
        match ks {
            "sessions" => Some(Policy::Lww),
            "carts" => Some(Policy::Mvr),
            "ratelimits" => Some(Policy::Counter),
            "flags" => Some(Policy::Set),
            _ => None,
        }
    }

    #[test]
    fn idempotency_follows_the_keyspace_policy() {
        let idem = |m: Method, path: &str, ctx: bool| is_idempotent(&m, path, ctx, policy);
        assert!(idem(Method::GET, "/v1/counter/ratelimits/y", false));
        assert!(idem(Method::HEAD, "/v1/status", false));
        // lww: last writer wins, a second identical write changes nothing.
        assert!(idem(Method::PUT, "/v1/kv/sessions/k", false));
        assert!(idem(Method::DELETE, "/v1/kv/sessions/k", false));
        // An expiry change is an lww write of the value; other policies have no expiry.
        assert!(idem(Method::PUT, "/v1/ttl/sessions/k", false));
        assert!(idem(Method::DELETE, "/v1/ttl/sessions/k", false));
        assert!(!idem(Method::PUT, "/v1/ttl/carts/k", true));
        // mvr: without a context a write adds a sibling; with one it supersedes what it saw.
        assert!(!idem(Method::PUT, "/v1/kv/carts/k", false));
        assert!(!idem(Method::DELETE, "/v1/kv/carts/k", false));
        assert!(idem(Method::PUT, "/v1/kv/carts/k", true));
        assert!(idem(Method::DELETE, "/v1/kv/carts/k", true));
        // Counter and set updates never, with or without a context.
        assert!(!idem(Method::POST, "/v1/counter/ratelimits/y", true));
        assert!(!idem(Method::POST, "/v1/set/flags/y", false));
        assert!(!idem(Method::POST, "/v1/ratelimit/quota/y", false));
        assert!(!idem(Method::POST, "/v1/kv/sessions/k", false));
        // A keyspace the config does not declare, or a path that is not the client API.
        assert!(!idem(Method::PUT, "/v1/kv/nosuch/k", true));
        assert!(!idem(Method::PUT, "/v1/other", false));
        assert!(!idem(Method::PUT, "/v1/kv/sess%69ons/k", false));
    }

    #[test]
    fn only_the_client_api_is_proxied() {
        for ok in [
            "/v1/kv/sessions/k",
            "/v1/kv/sessions/a/b%2Fc",
            "/v1/kv/sessions",
            "/v1/kv/sessions/",
            "/v1/kv/sessions/a//b",
            "/v1/counter/rate_limits-2/k",
            "/v1/ttl/sessions/k",
            "/v1/ratelimit/quota/k",
            "/v1/set/flags/beta",
            "/v1/conflicts/sessions",
            "/v1/status",
            "/v1/openapi.json",
            "/healthz",
        ] {
            assert!(classify(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("/v1/replication/heartbeat", Refusal::NotClientApi),
            ("/v1/replication/subscribe", Refusal::NotClientApi),
            ("//v1/replication/subscribe", Refusal::NotClientApi),
            ("//v1/kv/sessions/k", Refusal::NotClientApi),
            ("/v1//kv/sessions/k", Refusal::NotClientApi),
            ("/v1/kv/../replication/heartbeat", Refusal::DotSegment),
            (
                "/v1/kv/sessions/../../replication/heartbeat",
                Refusal::DotSegment,
            ),
            ("/v1/kv/sessions/%2e%2E/x", Refusal::DotSegment),
            ("/v1/kv/sessions/.%2e", Refusal::DotSegment),
            ("/v1/kv/sessions/./k", Refusal::DotSegment),
            ("/v1/kv/%2e%2e/replication/heartbeat", Refusal::DotSegment),
            ("/v1/%72eplication/heartbeat", Refusal::NotClientApi),
            ("/v1/kv%2F..%2Freplication", Refusal::NotClientApi),
            ("/v1/kv/sess%69ons/k", Refusal::NotClientApi),
            ("/v1/kv/Sessions/k", Refusal::NotClientApi),
            ("/V1/kv/sessions/k", Refusal::NotClientApi),
            ("/v1/KV/sessions/k", Refusal::NotClientApi),
            ("/v1/kv/", Refusal::NotClientApi),
            ("/v1/kv", Refusal::NotClientApi),
            ("/v1/conflicts/sessions/x", Refusal::NotClientApi),
            ("/v1/status/", Refusal::NotClientApi),
            ("/metrics", Refusal::NotClientApi),
            ("/admin/v1/drain", Refusal::NotClientApi),
            ("/", Refusal::NotClientApi),
            ("", Refusal::NotClientApi),
            ("*", Refusal::NotClientApi),
            ("/v1/kv\\..\\replication", Refusal::NotClientApi),
        ] {
            assert_eq!(classify(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn fencing_refusals_are_told_from_other_answers() {
        let body = |code: &str| {
            format!(r#"{{"error":{{"code":"{code}","message":"m","hint":"h","retryable":true}}}}"#)
        };
        for (code, reason) in [
            ("ATOLL-NOT-PRIMARY", "not-primary"),
            ("ATOLL-FENCED", "fenced"),
            ("ATOLL-PASSIVE", "passive"),
            ("ATOLL-NO-QUORUM", "no-quorum"),
            ("ATOLL-HOME-UNAVAILABLE", "home-unavailable"),
            ("ATOLL-STALE", "stale"),
            ("ATOLL-BOOTSTRAPPING", "bootstrapping"),
        ] {
            assert_eq!(
                fencing_refusal(503, body(code).as_bytes()),
                Some(reason),
                "{code}"
            );
            // Only as a 503, the status regions answer them with.
            assert_eq!(fencing_refusal(500, body(code).as_bytes()), None);
        }
        for other in [
            body("ATOLL-OVERLOADED"),
            body("ATOLL-SHUTTING-DOWN"),
            body("ATOLL-CONTROL-UNAVAILABLE"),
            r#"{"code":"ATOLL-NOT-PRIMARY"}"#.to_string(),
            r#"{"error":{"code":7}}"#.to_string(),
            r#"{"error":{"code":"ATOLL-NOT-PRIMARY""#.to_string(),
            "Service Unavailable".to_string(),
            String::new(),
        ] {
            assert_eq!(fencing_refusal(503, other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn dot_segments_are_told_without_allocating_as_before() {
        // The rule as it was written first: lower-case, decode `%2e`, compare.
        let reference = |seg: &str| {
            let plain = seg.to_ascii_lowercase().replace("%2e", ".");
            plain == "." || plain == ".."
        };
        for seg in [
            "",
            ".",
            "..",
            "...",
            "%2e",
            "%2E",
            "%2e%2E",
            ".%2e",
            "%2e.",
            "%2e%2e%2e",
            "%2",
            "%2f",
            "%",
            "%%2e",
            "%2e%",
            ".a",
            "a.",
            "k",
            "%2ex",
            "..%2e",
            "%252e",
            "%2E%2e",
        ] {
            assert_eq!(is_dot_segment(seg), reference(seg), "{seg:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-atoll-context", HeaderValue::from_static("abc"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-atoll-context"));
    }
}
