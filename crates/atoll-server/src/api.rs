//! The client HTTP API v1. Every handler validates before it touches the store, so bad input
//! gets a JSON error (`{"error": {"code", "message", "hint", "retryable"}}`) and changes nothing.

use crate::metrics::Metrics;
use crate::session::Gate;
use atoll_config::{Config, KEY_MAX_BYTES};
use atoll_core::causal::CausalContext;
use atoll_core::codec::{decode_context_token, encode_context_token};
use atoll_core::crdt::mvr::MvRegister;
use atoll_core::op::{Intent, KeyState, Policy};
use atoll_core::session::SessionToken;
use atoll_core::{AtollError, Result};
use atoll_store::{Store, WriteOutcome};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Header naming the region that served a request.
pub const REGION_HEADER: &str = "x-atoll-region";
/// Header carrying an mvr key's causal context (opaque token).
pub const CONTEXT_HEADER: &str = "x-atoll-context";
/// Header carrying the HLC timestamp of an lww value.
pub const TIMESTAMP_HEADER: &str = "x-atoll-timestamp";
/// Header naming the region where an lww value was written.
pub const ORIGIN_HEADER: &str = "x-atoll-origin";

/// Every route of the client API as an OpenAPI path template, with its methods (`GET` routes
/// also answer `HEAD`). `openapi.json` documents exactly these, and the router serves exactly
/// these (checked by `tests/api.rs`). The `{key}` of the kv, counter and set routes is the rest
/// of the path (it may contain `/`); the router also routes an empty or missing key to their
/// handlers, which answer `400 ATOLL-EMPTY-KEY`.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/kv/{keyspace}/{key}", &["GET", "PUT", "DELETE"]),
    ("/v1/counter/{keyspace}/{key}", &["GET", "POST"]),
    ("/v1/set/{keyspace}/{key}", &["GET", "POST"]),
    ("/v1/ttl/{keyspace}/{key}", &["GET", "PUT", "DELETE"]),
    ("/v1/ratelimit/{keyspace}/{key}", &["GET", "POST"]),
    ("/v1/conflicts/{keyspace}", &["GET"]),
    ("/v1/watch/{keyspace}", &["GET"]),
    ("/v1/status", &["GET"]),
    ("/v1/admin/promote", &["POST"]),
    ("/v1/admin/switchover", &["POST"]),
    ("/v1/admin/rehome", &["POST"]),
    ("/v1/openapi.json", &["GET"]),
    ("/healthz", &["GET"]),
    ("/metrics", &["GET"]),
];

/// Most members one set update may name.
const SET_UPDATE_MAX_MEMBERS: usize = 10_000;

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub store: Arc<Store>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// False once shutdown has begun: `/healthz` answers 503 so routers drain the region.
    pub serving: AtomicBool,
    /// The replication adapter, once started (absent in single-process tests).
    pub replicator: std::sync::OnceLock<Arc<crate::replication::Replicator>>,
    /// The peers holding a live stream of this region's writes (see [`crate::streams`]).
    pub subscribers: Arc<crate::streams::Subscribers>,
    /// The tokens the client API accepts (`[auth] tokens_file`); `None`: the API is open.
    pub auth: Option<Arc<atoll_config::auth::Tokens>>,
    /// Split-brain fencing, when the cluster has a lease or quorum fencing (set at start).
    pub fencing: std::sync::OnceLock<Arc<crate::fencing::Fencing>>,
    /// The homes of owned keyspaces, when the config declares one (set at start).
    pub homes: std::sync::OnceLock<Arc<crate::homes::Homes>>,
    /// The strong group, when a strong keyspace is declared (set at start).
    pub strong: std::sync::OnceLock<Arc<crate::strong::Strong>>,
    /// Watches (`GET /v1/watch/...`): the live feed, fed by the store (set at start).
    pub watch: std::sync::OnceLock<Arc<crate::watch::Watch>>,
    /// Session reads' shared parts: the forwarder of `on_stale=forward` and the cached token of
    /// reads that present none.
    pub sessions: crate::session::Sessions,
    /// Who is in the cluster (grows on a config reload), and whether this region is a voter or
    /// a replica waiting to be admitted (`docs/design/adding-regions.md`). Set at start.
    pub membership: std::sync::OnceLock<Arc<crate::members::Membership>>,
}

/// Header naming the region's fencing role on every answer of a fenced cluster.
pub const ROLE_HEADER: &str = "x-atoll-role";
/// Header on reads served by a standby: how far behind the primary it may be, in ms.
pub const STALENESS_HEADER: &str = "x-atoll-staleness-ms";
/// Header naming the lease epoch the region knew when it answered, on every answer of a fenced
/// cluster (drills compare the epochs of acknowledged writes to find zombie writes).
pub const EPOCH_HEADER: &str = "x-atoll-epoch";

/// Whether replication with every peer is established, for `/healthz` and `/v1/status`: every
/// peer is heard both ways (`up`) and holds a live stream of this region's writes
/// (`streaming_to`), so a write here reaches every peer at link speed. `None` without a
/// replication adapter.
fn replication_readiness(state: &AppState) -> Result<Option<Value>> {
    let Some(rep) = state.replicator.get() else {
        return Ok(None);
    };
    let (peers, _) = rep.status()?;
    let up: Vec<&str> = peers
        .iter()
        .filter(|p| p.state == atoll_core::repl::LinkState::Up)
        .map(|p| p.region.as_str())
        .collect();
    let streaming = state.subscribers.streaming_to();
    let streaming_to: Vec<&str> = peers
        .iter()
        .filter(|p| streaming.contains(&p.region))
        .map(|p| p.region.as_str())
        .collect();
    let established = up.len() == peers.len() && streaming_to.len() == peers.len();
    Ok(Some(json!({
        "established": established,
        "peers": peers.len(),
        "up": up,
        "streaming_to": streaming_to,
    })))
}

pub(crate) type Shared = Arc<AppState>;

/// An [`AtollError`] rendered as an HTTP response.
pub struct ApiError(pub AtollError);

impl From<AtollError> for ApiError {
    fn from(e: AtollError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

fn error_response(e: &AtollError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(atoll_core::ErrorBody::from(e))).into_response()
}

type ApiResult = std::result::Result<Response, ApiError>;

/// Builds the router of the client API.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route(
            "/v1/kv/{keyspace}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route(
            "/v1/kv/{keyspace}/",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route(
            "/v1/kv/{keyspace}/{*key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route(
            "/v1/counter/{keyspace}",
            get(counter_get).post(counter_post),
        )
        .route(
            "/v1/counter/{keyspace}/",
            get(counter_get).post(counter_post),
        )
        .route(
            "/v1/counter/{keyspace}/{*key}",
            get(counter_get).post(counter_post),
        )
        .route("/v1/set/{keyspace}", get(set_get).post(set_post))
        .route("/v1/set/{keyspace}/", get(set_get).post(set_post))
        .route("/v1/set/{keyspace}/{*key}", get(set_get).post(set_post))
        .route(
            "/v1/ttl/{keyspace}",
            get(crate::ttl::get)
                .put(crate::ttl::put)
                .delete(crate::ttl::delete),
        )
        .route(
            "/v1/ttl/{keyspace}/",
            get(crate::ttl::get)
                .put(crate::ttl::put)
                .delete(crate::ttl::delete),
        )
        .route(
            "/v1/ttl/{keyspace}/{*key}",
            get(crate::ttl::get)
                .put(crate::ttl::put)
                .delete(crate::ttl::delete),
        )
        .route(
            "/v1/ratelimit/{keyspace}",
            get(crate::ratelimit::get).post(crate::ratelimit::post),
        )
        .route(
            "/v1/ratelimit/{keyspace}/",
            get(crate::ratelimit::get).post(crate::ratelimit::post),
        )
        .route(
            "/v1/ratelimit/{keyspace}/{*key}",
            get(crate::ratelimit::get).post(crate::ratelimit::post),
        )
        .route("/v1/conflicts/{keyspace}", get(conflicts))
        .route("/v1/watch/{keyspace}", get(watch_get))
        .route("/v1/status", get(status))
        .route("/v1/admin/promote", axum::routing::post(admin_promote))
        .route("/v1/admin/rehome", axum::routing::post(admin_rehome))
        .route(
            "/v1/admin/switchover",
            axum::routing::post(admin_switchover),
        )
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            bootstrap_gate,
        ))
        .layer(middleware::from_fn(crate::unread::layer))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// While this region bootstraps by snapshot its state is partial: every data route (reads
/// included) answers `503 ATOLL-BOOTSTRAPPING`, so clients and routers go to another region.
async fn bootstrap_gate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let data = [
        "/v1/kv/",
        "/v1/counter/",
        "/v1/set/",
        "/v1/watch/",
        "/v1/conflicts/",
    ];
    let path = req.uri().path();
    if data.iter().any(|p| path.starts_with(p))
        && state.replicator.get().is_some_and(|r| r.is_bootstrapping())
    {
        return ApiError(AtollError::Bootstrapping(
            "its data is partial until the snapshot is complete".into(),
        ))
        .into_response();
    }
    next.run(req).await
}

/// Records request metrics and stamps every response with the serving region.
async fn track(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // MatchedPath is a shared string: cloning it allocates nothing.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let method = crate::metrics::method_label(req.method());
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(state.store.region().as_str()) {
        resp.headers_mut()
            .insert(HeaderName::from_static(REGION_HEADER), v);
    }
    if let Some(f) = state.fencing.get() {
        let role = f.role();
        resp.headers_mut().insert(
            HeaderName::from_static(ROLE_HEADER),
            HeaderValue::from_static(role.as_str()),
        );
        resp.headers_mut().insert(
            HeaderName::from_static(EPOCH_HEADER),
            HeaderValue::from(f.epoch()),
        );
        let keyspace_read = method == "GET"
            && ["/v1/kv/", "/v1/counter/", "/v1/set/"]
                .iter()
                .any(|p| route.starts_with(p));
        if role == atoll_core::fence::Role::Standby && keyspace_read {
            // How stale this read may be: the lag behind the primary's writes.
            let lag = match (f.primary(), state.replicator.get()) {
                (Some((holder, _)), Some(rep)) => rep.promotion_view(&holder).lag().ms,
                _ => None,
            };
            let text = lag.map_or_else(|| "unknown".to_string(), |ms| ms.to_string());
            if let Ok(v) = HeaderValue::from_str(&text) {
                resp.headers_mut()
                    .insert(HeaderName::from_static(STALENESS_HEADER), v);
            }
        }
    }
    state
        .metrics
        .observe_request(route, method, resp.status().as_u16(), started.elapsed());
    resp
}

pub(crate) async fn route_not_found(uri: Uri) -> Response {
    error_response(&AtollError::BadRequest(format!(
        "no such route: {}",
        uri.path()
    )))
    .map_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_response(&AtollError::BadRequest(format!(
        "method {method} is not allowed on {}",
        uri.path()
    )))
    .map_status(StatusCode::METHOD_NOT_ALLOWED)
}

trait MapStatus {
    fn map_status(self, s: StatusCode) -> Self;
}

impl MapStatus for Response {
    fn map_status(mut self, s: StatusCode) -> Self {
        *self.status_mut() = s;
        self
    }
}

/// Splits `/v1/<kind>/<keyspace>/<key...>` into the keyspace name and the key bytes, both
/// percent-decoded. The key may contain `/`.
fn target(uri: &Uri, kind: &str) -> Result<(String, Vec<u8>)> {
    let path = uri.path();
    let prefix = format!("/v1/{kind}/");
    let rest = path
        .strip_prefix(&prefix)
        .ok_or_else(|| AtollError::BadRequest(format!("path must start with {prefix}")))?;
    let (ks_raw, key_raw) = rest.split_once('/').unwrap_or((rest, ""));
    let ks: Vec<u8> = percent_encoding::percent_decode_str(ks_raw).collect();
    let ks = String::from_utf8(ks).map_err(|_| AtollError::InvalidUtf8("keyspace name".into()))?;
    let key: Vec<u8> = percent_encoding::percent_decode_str(key_raw).collect();
    Ok((ks, key))
}

/// Resolves the target and checks that the keyspace exists, has one of `policies`, and the key
/// is valid.
pub(crate) fn resolve(
    state: &AppState,
    uri: &Uri,
    kind: &str,
    policies: &[Policy],
    operation: &str,
) -> Result<(String, Vec<u8>, Policy)> {
    let (ks, key) = target(uri, kind)?;
    let cfg = state.store.keyspace(&ks)?;
    if let Some(f) = state.fencing.get()
        && f.refuses_clients()
    {
        return Err(f.passive_error());
    }
    if !policies.contains(&cfg.policy) {
        return Err(AtollError::WrongPolicy {
            keyspace: ks,
            policy: cfg.policy.to_string(),
            operation: operation.to_string(),
        });
    }
    if key.is_empty() {
        return Err(AtollError::EmptyKey);
    }
    if key.len() > KEY_MAX_BYTES {
        return Err(AtollError::KeyTooLarge {
            len: key.len(),
            max: KEY_MAX_BYTES,
        });
    }
    let policy = cfg.policy;
    Ok((ks, key, policy))
}

/// Reads a request body of at most `limit` bytes; a larger one is refused with
/// `too_large(its length, when known)`.
async fn read_body(
    body: Body,
    limit: usize,
    too_large: impl Fn(Option<usize>) -> AtollError,
) -> Result<Bytes> {
    // A body of known length (Content-Length) over the limit is refused before it is read, with
    // its real size; `Limited` alone stops at the limit and only knows the size is over it.
    if let Some(len) = axum::body::HttpBody::size_hint(&body).exact()
        && len > limit as u64
    {
        return Err(too_large(Some(usize::try_from(len).unwrap_or(usize::MAX))));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large(None))
            } else {
                Err(AtollError::MalformedBody(format!("cannot read body: {e}")))
            }
        }
    }
}

/// Reads a kv value: its limit is the keyspace's `max_value_bytes`.
async fn read_value(body: Body, limit: usize, keyspace: &str) -> Result<Bytes> {
    read_body(body, limit, |len| AtollError::ValueTooLarge {
        keyspace: keyspace.to_string(),
        len: len.unwrap_or(limit + 1),
        max: limit,
    })
    .await
}

/// Reads a body of at most `[api] max_json_body_bytes`, unparsed (rate-limit requests, whose body
/// may be empty).
pub(crate) async fn read_raw_json_body(state: &AppState, body: Body) -> Result<Bytes> {
    let max = state.config.api.max_json_body_bytes;
    read_body(body, max, |len| AtollError::RequestTooLarge { len, max }).await
}

/// Reads a JSON body (counter and set updates): its limit is `[api] max_json_body_bytes`. Also
/// returns the body as read (a standby may forward it).
async fn read_json<T: for<'de> Deserialize<'de>>(
    state: &AppState,
    body: Body,
) -> Result<(T, Bytes)> {
    let max = state.config.api.max_json_body_bytes;
    let raw = read_body(body, max, |len| AtollError::RequestTooLarge { len, max }).await?;
    let text =
        std::str::from_utf8(&raw).map_err(|_| AtollError::InvalidUtf8("request body".into()))?;
    let parsed =
        serde_json::from_str(text).map_err(|e| AtollError::MalformedBody(e.to_string()))?;
    Ok((parsed, raw))
}

/// What to answer when this region's store refused a write: with `[fencing] forward_writes`, a
/// standby's `NOT-PRIMARY` (nothing applied here) is forwarded to the primary, once, unless the
/// request was itself forwarded; anything else is answered as it is.
pub(crate) async fn refused(
    state: &AppState,
    e: AtollError,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult {
    if let AtollError::NotHome { keyspace, home, .. } = &e
        && let Some(h) = state.homes.get()
    {
        let forwarded = crate::forward::is_forwarded(headers);
        let target = atoll_core::RegionId::new(home)?;
        if forwarded || !h.forwards(keyspace) {
            h.metrics().owned_not_home(keyspace, home);
            return Err(e.into());
        }
        let Some(api) = h.api_of(&target) else {
            return Err(e.into());
        };
        h.metrics().owned_forwarded(keyspace, home);
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| uri.path(), |p| p.as_str());
        let w = crate::forward::Write {
            method,
            path_and_query,
            headers,
            body,
        };
        let ks = keyspace.clone();
        let unavailable = AtollError::HomeUnavailable {
            keyspace: ks,
            home: home.clone(),
            detail: "the write was forwarded to the home, which refused it without applying it"
                .into(),
        };
        return Ok(h.forwarder().forward(&target, api, w, unavailable).await?);
    }
    if !matches!(e, AtollError::NotPrimary { .. }) || crate::forward::is_forwarded(headers) {
        return Err(e.into());
    }
    let Some(f) = state.fencing.get() else {
        return Err(e.into());
    };
    let Some((forwarder, target, api)) = f.forward_target() else {
        return Err(e.into());
    };
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |p| p.as_str());
    let w = crate::forward::Write {
        method,
        path_and_query,
        headers,
        body,
    };
    Ok(forwarder.forward(&target, api, w, e).await?)
}

fn context_from(headers: &HeaderMap, ks: &str, key: &[u8]) -> Result<Option<CausalContext>> {
    match headers.get(CONTEXT_HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| AtollError::BadContext("header is not visible ASCII".into()))?;
            decode_context_token(s, ks, key).map(Some)
        }
    }
}

/// The one write path of client writes (the HTTP API's and the RESP front's): an owned key homed
/// by first write is claimed first, then the store takes the write (its gate checks fencing and
/// homes at the stamping instant).
pub(crate) async fn write(
    state: &AppState,
    ks: &str,
    key: &[u8],
    intent: Intent,
) -> Result<WriteOutcome> {
    // A key of an owned keyspace homed by first write gets its home before its first write.
    if let Some(h) = state.homes.get() {
        h.claim(ks, key).await?;
    }
    let admit = matches!(intent, Intent::Admit { .. });
    let out = enqueue(state, ks, key, intent).await;
    if admit {
        let decision = match &out {
            Ok(_) => Some("allowed"),
            Err(AtollError::RateLimited { .. }) => Some("denied"),
            Err(_) => None,
        };
        if let Some(decision) = decision {
            state
                .metrics
                .ratelimit_decisions
                .get_or_create(&crate::metrics::DecisionLabels {
                    keyspace: ks.to_string(),
                    decision: decision.to_string(),
                })
                .inc();
        }
    }
    out
}

/// Puts a write in the store's queue now (behind every write queued before it) and gives the
/// future of its outcome; the step of [`write`] after an owned key's home claim, also used by
/// the RESP front to submit a pipeline's writes together.
pub(crate) fn enqueue(
    state: &AppState,
    ks: &str,
    key: &[u8],
    intent: Intent,
) -> impl Future<Output = Result<WriteOutcome>> + Send + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.store.submit(ks, key, intent, move |r| {
        let _ = tx.send(r);
    });
    async move { rx.await.map_err(|_| AtollError::ShuttingDown)? }
}

fn header(name: &'static str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::from_str(value)
        .ok()
        .map(|v| (HeaderName::from_static(name), v))
}

fn with_headers(
    mut resp: Response,
    hs: impl IntoIterator<Item = Option<(HeaderName, HeaderValue)>>,
) -> Response {
    for (k, v) in hs.into_iter().flatten() {
        resp.headers_mut().insert(k, v);
    }
    resp
}

fn ack(
    state: &AppState,
    ks: &str,
    key: &[u8],
    out: &WriteOutcome,
    token: Option<SessionToken>,
) -> Result<Response> {
    ack_with(state, ks, key, out, token, &[])
}

/// The answer to an acknowledged write: region, seq, timestamp, the mvr context, the expiry of
/// the lww value or mvr sibling written (`expires_at_ms`, `null` when it never expires), and
/// `extra`.
pub(crate) fn ack_with(
    state: &AppState,
    ks: &str,
    key: &[u8],
    out: &WriteOutcome,
    token: Option<SessionToken>,
    extra: &[(&str, Value)],
) -> Result<Response> {
    let context = match &out.state {
        KeyState::Mvr(r) => Some(encode_context_token(ks, key, &r.ctx)?),
        _ => None,
    };
    let mut body = json!({
        "region": state.store.region().as_str(),
        "seq": out.seq,
        "timestamp": out.ts.to_string(),
    });
    if let Some(c) = &context {
        body["context"] = json!(c);
    }
    if let KeyState::Lww(r) = &out.state
        && r.value.is_some()
    {
        body["expires_at_ms"] = json!(r.expires_ms);
    }
    // An mvr put: the expiry of the sibling it made.
    if let KeyState::Mvr(r) = &out.state
        && let Some(s) = r
            .siblings
            .iter()
            .find(|s| s.ts == out.ts && &s.dot.region == state.store.region() && s.value.is_some())
    {
        body["expires_at_ms"] = json!(s.expires_ms);
    }
    for (k, v) in extra {
        body[*k] = v.clone();
    }
    let resp = (StatusCode::OK, axum::Json(body)).into_response();
    Ok(with_headers(
        resp,
        [
            context.as_deref().and_then(|c| header(CONTEXT_HEADER, c)),
            crate::session::write_token(state, token, out.seq),
        ],
    ))
}

/// A key's state as JSON in the shape of a read (watch events): `lww`/`owned` `{"value",
/// "value_base64", "timestamp", "origin"}` or `{"deleted": true}`; `mvr` `{"siblings",
/// "context"}` (`deleted` when none is live; siblings expired by `now_ms` left out); `counter`
/// `{"value"}`; `set` `{"members"}`.
pub(crate) fn state_json(
    ks: &str,
    key: &[u8],
    policy: Policy,
    st: Option<&KeyState>,
    now_ms: u64,
) -> Value {
    match (policy.storage(), st) {
        (Policy::Lww, Some(KeyState::Lww(r))) => match &r.value {
            Some(v) => {
                let mut out = json!({
                    "value_base64": base64::engine::general_purpose::STANDARD.encode(v),
                    "timestamp": r.ts.to_string(),
                    "origin": r.origin.as_str(),
                });
                if let Some(e) = r.expires_ms {
                    out["expires_at_ms"] = json!(e);
                }
                if let Ok(text) = std::str::from_utf8(v) {
                    out["value"] = json!(text);
                }
                out
            }
            None => json!({"deleted": true, "timestamp": r.ts.to_string()}),
        },
        (Policy::Mvr, Some(KeyState::Mvr(r))) => {
            let live = r.live_at(now_ms);
            json!({
                "siblings": live.iter().map(|s| sibling_json(s)).collect::<Vec<_>>(),
                "context": encode_context_token(ks, key, &r.ctx).unwrap_or_default(),
                "deleted": live.is_empty(),
            })
        }
        (Policy::Counter, st) => json!({"value": counter_value(st)}),
        (Policy::Set, st) => json!({"members": members(st)}),
        _ => json!({"deleted": true}),
    }
}

fn sibling_json(s: &atoll_core::crdt::mvr::Sibling) -> Value {
    let value = s.value.as_deref().unwrap_or_default();
    let mut v = json!({
        "value_base64": base64::engine::general_purpose::STANDARD.encode(value),
        "region": s.dot.region.as_str(),
        "timestamp": s.ts.to_string(),
    });
    if let Ok(text) = std::str::from_utf8(value) {
        v["value"] = json!(text);
    }
    if let Some(e) = s.expires_ms {
        v["expires_at_ms"] = json!(e);
    }
    v
}

/// A read of an mvr key at `now_ms` (this region's physical clock): siblings expired by then
/// are left out (`docs/design/expiring-keys.md`).
fn mvr_read(ks: &str, key: &[u8], reg: Option<&MvRegister>, now_ms: u64) -> Result<Response> {
    let empty = MvRegister::default();
    let reg = reg.unwrap_or(&empty);
    let token = encode_context_token(ks, key, &reg.ctx)?;
    let ctx_header = header(CONTEXT_HEADER, &token);
    let live = reg.live_at(now_ms);
    let resp = match live.as_slice() {
        [] => error_response(&AtollError::NotFound),
        [one] => with_headers(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/octet-stream")],
                one.value.clone().unwrap_or_default(),
            )
                .into_response(),
            [one.expires_ms
                .and_then(|e| header(crate::ttl::EXPIRES_HEADER, &e.to_string()))],
        ),
        many => {
            let body = json!({
                "siblings": many.iter().map(|s| sibling_json(s)).collect::<Vec<_>>(),
                "context": token,
            });
            (StatusCode::MULTIPLE_CHOICES, axum::Json(body)).into_response()
        }
    };
    Ok(with_headers(resp, [ctx_header]))
}

/// The strong group, for a strong keyspace's request.
fn strong_group<'a>(state: &'a AppState, ks: &str) -> Result<&'a Arc<crate::strong::Strong>> {
    // A replica is no member of the strong group (`docs/design/adding-regions.md`).
    if let Some(m) = state.membership.get().filter(|m| !m.is_voter()) {
        return Err(m.not_a_voter(
            ks,
            "strong keyspaces are replicated by the strong group, whose members are the voters",
        ));
    }
    // Declared strong keyspaces start the group with the region; a state without it is one
    // being built (tests) or torn down.
    state.strong.get().ok_or(AtollError::ShuttingDown)
}

/// The policies the key/value routes serve.
const KV_POLICIES: &[Policy] = &[Policy::Lww, Policy::Mvr, Policy::Owned, Policy::Strong];

/// Header on reads of an owned key: the key's home region.
pub const HOME_HEADER: &str = "x-atoll-home";

async fn kv_get(State(state): State<Shared>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (ks, key, policy) = resolve(&state, &uri, "kv", KV_POLICIES, "kv reads")?;
    let params = crate::session::read_params(&uri)?;
    let at_home = params.at_home;
    let token = crate::session::token_from(&state, &headers)?;
    if policy == Policy::Strong {
        if at_home {
            return Err(AtollError::BadRequest(format!(
                "consistency=home applies to owned keyspaces; `{ks}` is strong (its reads are linearizable)"
            ))
            .into());
        }
        let strong = strong_group(&state, &ks)?;
        return Ok(crate::strong::get(&state, strong, &ks, &key).await);
    }
    let mut extra = Vec::new();
    if policy == Policy::Owned
        && let Some(h) = state.homes.get()
        && let Some(res) = h.resolve(&ks, &key)
    {
        let home = match res.home {
            Some(home) => Some(home),
            // Not homed here yet: a home read asks the control group whether a claim homed it.
            None if at_home => h.home_now(&ks, &key).await?,
            None => None,
        };
        match home {
            Some(home) if home != *h.me() => {
                if at_home && !crate::forward::is_forwarded(&headers) {
                    let api = h.api_of(&home).ok_or_else(|| {
                        AtollError::Config(format!("no API address for `{home}`"))
                    })?;
                    let w = crate::forward::Write {
                        method: Method::GET,
                        path_and_query: uri
                            .path_and_query()
                            .map_or_else(|| uri.path(), |p| p.as_str()),
                        headers: &headers,
                        body: Bytes::new(),
                    };
                    let unavailable = AtollError::HomeUnavailable {
                        keyspace: ks.clone(),
                        home: home.to_string(),
                        detail: "the home did not serve the read".into(),
                    };
                    return Ok(h.forwarder().forward(&home, api, w, unavailable).await?);
                }
                // How stale a local read may be: this region's lag behind the home's writes.
                let lag = state
                    .replicator
                    .get()
                    .and_then(|rep| rep.promotion_view(&home).lag().ms);
                extra.push(header(
                    STALENESS_HEADER,
                    &lag.map_or_else(|| "unknown".to_string(), |ms| ms.to_string()),
                ));
                extra.push(header(HOME_HEADER, home.as_str()));
            }
            Some(home) => {
                extra.push(header(STALENESS_HEADER, "0"));
                extra.push(header(HOME_HEADER, home.as_str()));
            }
            // Homed by first write and not claimed (as far as this region knows; with
            // consistency=home: at all, so the key was never written).
            None => extra.push(header(
                STALENESS_HEADER,
                if at_home { "0" } else { "unknown" },
            )),
        }
    } else if at_home {
        return Err(AtollError::BadRequest(format!(
            "consistency=home applies to owned keyspaces; `{ks}` is {policy}"
        ))
        .into());
    }
    if let Gate::Answer(resp) =
        crate::session::gate(&state, &ks, &params, token.as_ref(), &uri, &headers).await?
    {
        return Ok(resp);
    }
    let resp = match kv_read(&state, &ks, &key, policy) {
        Ok(resp) => resp,
        // A key that is not there is an answer too: the session goes on from it.
        Err(e @ AtollError::NotFound) => error_response(&e),
        Err(e) => return Err(e.into()),
    };
    let resp = with_headers(resp, extra);
    Ok(crate::session::decorate_read(&state, resp, token))
}

fn kv_read(state: &AppState, ks: &str, key: &[u8], policy: Policy) -> Result<Response> {
    let st = state.store.get(ks, key)?;
    match (policy.storage(), st) {
        (Policy::Mvr, Some(KeyState::Mvr(r))) => mvr_read(ks, key, Some(&r), state.store.now_ms()),
        (Policy::Mvr, None) => mvr_read(ks, key, None, state.store.now_ms()),
        (Policy::Lww, Some(KeyState::Lww(r))) => match r.live_value(state.store.now_ms()) {
            Some(v) => Ok(with_headers(
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    v.clone(),
                )
                    .into_response(),
                [
                    header(TIMESTAMP_HEADER, &r.ts.to_string()),
                    header(ORIGIN_HEADER, r.origin.as_str()),
                    r.expires_ms
                        .and_then(|e| header(crate::ttl::EXPIRES_HEADER, &e.to_string())),
                ],
            )),
            // Deleted, or expired by this region's clock (`docs/design/expiring-keys.md`).
            None => Err(AtollError::NotFound),
        },
        (_, None) => Err(AtollError::NotFound),
        (_, Some(other)) => Err(AtollError::Corrupt(format!(
            "key holds {} state in a {policy} keyspace",
            other.policy()
        ))),
    }
}

async fn kv_put(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (ks, key, policy) = resolve(&state, &uri, "kv", KV_POLICIES, "kv writes")?;
    // Checked first: a ttl on a keyspace that cannot expire keys (strong) is refused, never
    // ignored.
    let ttl = crate::ttl::of_put(&uri, &headers, &ks, policy)?;
    if policy == Policy::Strong {
        let strong = strong_group(&state, &ks)?;
        // The If-Match header is checked before the body is read.
        if let Err(e) = crate::strong::if_match(&headers) {
            return Ok(crate::strong::error(strong, &e));
        }
        let limit = state.store.keyspace(&ks)?.max_value_bytes;
        let raw = read_value(body, limit, &ks).await?;
        return Ok(
            crate::strong::write(&state, strong, &ks, &key, Some(raw.to_vec()), &headers).await,
        );
    }
    let context = match policy {
        Policy::Mvr => context_from(&headers, &ks, &key)?,
        _ => None,
    };
    let token = crate::session::token_from(&state, &headers)?;
    let limit = state.store.keyspace(&ks)?.max_value_bytes;
    let raw = read_value(body, limit, &ks).await?;
    let value = raw.to_vec();
    match write(
        &state,
        &ks,
        &key,
        Intent::Put {
            value,
            context,
            ttl,
        },
    )
    .await
    {
        Ok(out) => Ok(ack(&state, &ks, &key, &out, token)?),
        Err(e) => refused(&state, e, Method::PUT, &uri, &headers, raw).await,
    }
}

async fn kv_delete(State(state): State<Shared>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (ks, key, policy) = resolve(&state, &uri, "kv", KV_POLICIES, "kv deletes")?;
    if policy == Policy::Strong {
        let strong = strong_group(&state, &ks)?;
        return Ok(crate::strong::write(&state, strong, &ks, &key, None, &headers).await);
    }
    let context = match policy {
        Policy::Mvr => context_from(&headers, &ks, &key)?,
        _ => None,
    };
    let token = crate::session::token_from(&state, &headers)?;
    match write(&state, &ks, &key, Intent::Delete { context }).await {
        Ok(out) => Ok(ack(&state, &ks, &key, &out, token)?),
        Err(e) => refused(&state, e, Method::DELETE, &uri, &headers, Bytes::new()).await,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterBody {
    delta: i64,
}

fn counter_value(st: Option<&KeyState>) -> i64 {
    match st {
        Some(KeyState::Counter(c)) => {
            i64::try_from(c.value()).unwrap_or(if c.value() < 0 { i64::MIN } else { i64::MAX })
        }
        _ => 0,
    }
}

/// The read parameters and session token of a counter or set read (`consistency=home` is for
/// owned keyspaces only).
fn plain_read(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    ks: &str,
    policy: Policy,
) -> Result<(crate::session::ReadParams, Option<SessionToken>)> {
    let params = crate::session::read_params(uri)?;
    if params.at_home {
        return Err(AtollError::BadRequest(format!(
            "consistency=home applies to owned keyspaces; `{ks}` is {policy}"
        )));
    }
    let token = crate::session::token_from(state, headers)?;
    Ok((params, token))
}

async fn counter_get(State(state): State<Shared>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (ks, key, policy) = resolve(&state, &uri, "counter", &[Policy::Counter], "counter reads")?;
    let (params, token) = plain_read(&state, &uri, &headers, &ks, policy)?;
    if let Gate::Answer(resp) =
        crate::session::gate(&state, &ks, &params, token.as_ref(), &uri, &headers).await?
    {
        return Ok(resp);
    }
    let st = state.store.get(&ks, &key)?;
    let resp = axum::Json(json!({"value": counter_value(st.as_ref())})).into_response();
    Ok(crate::session::decorate_read(&state, resp, token))
}

async fn counter_post(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (ks, key, _) = resolve(
        &state,
        &uri,
        "counter",
        &[Policy::Counter],
        "counter increments",
    )?;
    let token = crate::session::token_from(&state, &headers)?;
    let (b, raw): (CounterBody, _) = read_json(&state, body).await?;
    let out = match write(&state, &ks, &key, Intent::CounterAdd { delta: b.delta }).await {
        Ok(out) => out,
        Err(e) => return refused(&state, e, Method::POST, &uri, &headers, raw).await,
    };
    let resp = axum::Json(json!({
        "value": counter_value(Some(&out.state)),
        "region": state.store.region().as_str(),
        "seq": out.seq,
    }))
    .into_response();
    Ok(with_headers(
        resp,
        [crate::session::write_token(&state, token, out.seq)],
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

fn members(st: Option<&KeyState>) -> Vec<String> {
    match st {
        Some(KeyState::Set(s)) => s.members().into_iter().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

async fn set_get(State(state): State<Shared>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (ks, key, policy) = resolve(&state, &uri, "set", &[Policy::Set], "set reads")?;
    let (params, token) = plain_read(&state, &uri, &headers, &ks, policy)?;
    if let Gate::Answer(resp) =
        crate::session::gate(&state, &ks, &params, token.as_ref(), &uri, &headers).await?
    {
        return Ok(resp);
    }
    let st = state.store.get(&ks, &key)?;
    let resp = axum::Json(json!({"members": members(st.as_ref())})).into_response();
    Ok(crate::session::decorate_read(&state, resp, token))
}

async fn set_post(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (ks, key, _) = resolve(&state, &uri, "set", &[Policy::Set], "set updates")?;
    let token = crate::session::token_from(&state, &headers)?;
    let (b, raw): (SetBody, _) = read_json(&state, body).await?;
    if b.add.is_empty() && b.remove.is_empty() {
        return Err(AtollError::MalformedBody("nothing to add or remove".into()).into());
    }
    if b.add.len() + b.remove.len() > SET_UPDATE_MAX_MEMBERS {
        return Err(AtollError::MalformedBody(format!(
            "one update may name at most {SET_UPDATE_MAX_MEMBERS} members"
        ))
        .into());
    }
    if let Some(bad) = b
        .add
        .iter()
        .chain(&b.remove)
        .find(|m| m.is_empty() || m.len() > KEY_MAX_BYTES)
    {
        return Err(AtollError::MalformedBody(format!(
            "set members must be 1 to {KEY_MAX_BYTES} bytes; got one of {} bytes",
            bad.len()
        ))
        .into());
    }
    let out = match write(
        &state,
        &ks,
        &key,
        Intent::SetUpdate {
            add: b.add,
            remove: b.remove,
        },
    )
    .await
    {
        Ok(out) => out,
        Err(e) => return refused(&state, e, Method::POST, &uri, &headers, raw).await,
    };
    let resp = axum::Json(json!({
        "members": members(Some(&out.state)),
        "region": state.store.region().as_str(),
        "seq": out.seq,
    }))
    .into_response();
    Ok(with_headers(
        resp,
        [crate::session::write_token(&state, token, out.seq)],
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictQuery {
    limit: Option<usize>,
}

fn key_json(key: &[u8]) -> Value {
    match std::str::from_utf8(key) {
        Ok(s) => json!(s),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(key)}),
    }
}

/// The query of a watch: `key=` or `prefix=`, `token=`, and `wait=` (long poll).
struct WatchQuery {
    key: Option<Vec<u8>>,
    prefix: Option<Vec<u8>>,
    token: Option<String>,
    wait: Option<std::time::Duration>,
}

/// Longest `wait` of a long-polling watch.
const WATCH_MAX_WAIT_MS: u64 = 60_000;
/// The SSE keep-alive comment interval.
const WATCH_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

fn watch_query(uri: &Uri) -> Result<WatchQuery> {
    let mut q = WatchQuery {
        key: None,
        prefix: None,
        token: None,
        wait: None,
    };
    for kv in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        let (name, raw) = kv.split_once('=').unwrap_or((kv, ""));
        let value: Vec<u8> = percent_encoding::percent_decode_str(&raw.replace('+', " ")).collect();
        match name {
            "key" if q.key.is_none() => q.key = Some(value),
            "prefix" if q.prefix.is_none() => q.prefix = Some(value),
            "token" if q.token.is_none() => {
                q.token = Some(
                    String::from_utf8(value)
                        .map_err(|_| AtollError::InvalidUtf8("watch token".into()))?,
                )
            }
            "wait" if q.wait.is_none() => {
                let text =
                    String::from_utf8(value).map_err(|_| AtollError::InvalidUtf8("wait".into()))?;
                let ms = atoll_config::duration::parse_ms(&text)
                    .ok()
                    .or_else(|| text.parse::<u64>().ok().map(|s| s.saturating_mul(1000)))
                    .filter(|ms| *ms <= WATCH_MAX_WAIT_MS)
                    .ok_or_else(|| {
                        AtollError::BadRequest(format!(
                            "wait=`{text}` is not a duration of at most 60s (e.g. wait=30s)"
                        ))
                    })?;
                q.wait = Some(std::time::Duration::from_millis(ms));
            }
            _ => {
                return Err(AtollError::BadRequest(format!(
                    "unknown or repeated query parameter `{name}`: a watch takes key= or prefix=, token= and wait="
                )));
            }
        }
    }
    if q.key.is_some() && q.prefix.is_some() {
        return Err(AtollError::BadRequest(
            "a watch follows one key (key=) or a key prefix (prefix=), not both".into(),
        ));
    }
    if q.key.as_ref().is_some_and(|k| k.is_empty()) {
        return Err(AtollError::EmptyKey);
    }
    if let Some(k) = q.key.as_ref().or(q.prefix.as_ref())
        && k.len() > KEY_MAX_BYTES
    {
        return Err(AtollError::KeyTooLarge {
            len: k.len(),
            max: KEY_MAX_BYTES,
        });
    }
    Ok(q)
}

/// `GET /v1/watch/{keyspace}` (`docs/design/watch.md`): the changes of a keyspace, one key or
/// a key prefix, as Server-Sent Events, or with `wait=` as one long-poll answer.
async fn watch_get(State(state): State<Shared>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (ks, rest) = target(&uri, "watch")?;
    if !rest.is_empty() {
        return Err(AtollError::BadRequest(
            "watch a key with /v1/watch/{keyspace}?key=K, not /v1/watch/{keyspace}/K".into(),
        )
        .into());
    }
    let cfg = state.store.keyspace(&ks)?;
    if let Some(f) = state.fencing.get()
        && f.refuses_clients()
    {
        return Err(f.passive_error().into());
    }
    if cfg.policy == Policy::Strong {
        return Err(AtollError::WrongPolicy {
            keyspace: ks,
            policy: cfg.policy.to_string(),
            operation: "watches (its writes go through Raft, not the operation log)".into(),
        }
        .into());
    }
    let q = watch_query(&uri)?;
    let text = q.token.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    });
    let w = state.watch.get().ok_or(AtollError::ShuttingDown)?;
    let token = text.map(|t| w.decode_token(&t)).transpose()?;
    let filter = crate::watch::Filter {
        keyspace: ks,
        policy: cfg.policy,
        key: q.key,
        prefix: q.prefix.unwrap_or_default(),
    };
    let rx = w.start(state.store.clone(), filter, token)?;
    Ok(match q.wait {
        Some(wait) => watch_long_poll(rx, wait).await,
        None => watch_sse(rx),
    })
}

fn watch_sse(rx: tokio::sync::mpsc::Receiver<crate::watch::Item>) -> Response {
    use crate::watch::Item;
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let event = match item {
            Item::Ready { token } => Event::default()
                .event("ready")
                .id(token.clone())
                .data(json!({"token": token}).to_string()),
            Item::Event { kind, body } => {
                let token = body["token"].as_str().unwrap_or_default().to_string();
                Event::default()
                    .event(kind)
                    .id(token)
                    .data(body.to_string())
            }
            Item::Reset { reason } => Event::default()
                .event("reset")
                .data(json!({"reason": reason}).to_string()),
            Item::Lagged { token, reason } => Event::default()
                .event("lagged")
                .id(token.clone())
                .data(json!({"token": token, "reason": reason}).to_string()),
        };
        Some((Ok::<_, std::convert::Infallible>(event), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(WATCH_KEEPALIVE))
        .into_response()
}

/// One long-poll answer: the events ready within `wait` (at least one, unless none came),
/// `{"events": [...], "token": "..."}`; `reset` and `lagged` appear as events of that kind.
async fn watch_long_poll(
    mut rx: tokio::sync::mpsc::Receiver<crate::watch::Item>,
    wait: std::time::Duration,
) -> Response {
    use crate::watch::Item;
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = Vec::new();
    let mut token = String::new();
    let mut ended = false;
    loop {
        let item = if events.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => item,
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        } else {
            match rx.try_recv() {
                Ok(item) => item,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        };
        match item {
            Item::Ready { token: t } => token = t,
            Item::Event { kind, mut body } => {
                if let Some(t) = body["token"].as_str() {
                    token = t.to_string();
                }
                body["event"] = json!(kind);
                events.push(body);
            }
            Item::Reset { reason } => events.push(json!({"event": "reset", "reason": reason})),
            Item::Lagged { token: t, reason } => {
                token = t.clone();
                events.push(json!({"event": "lagged", "token": t, "reason": reason}));
            }
        }
        if events.len() >= crate::watch::BUFFER_EVENTS {
            break;
        }
    }
    axum::Json(json!({"events": events, "token": token, "ended": ended})).into_response()
}

async fn conflicts(
    State(state): State<Shared>,
    uri: Uri,
    q: std::result::Result<Query<ConflictQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| AtollError::BadRequest(e.body_text()))?;
    let (ks, _) = target(&uri, "conflicts")?;
    let policy = state.store.keyspace(&ks)?.policy;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let version = |v: &atoll_core::crdt::lww::LwwVersion| {
        json!({
            "value_base64": v.value.as_deref().map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
            "deleted": v.value.is_none(),
            "timestamp": v.ts.to_string(),
            "region": v.origin.as_str(),
        })
    };
    let list: Vec<Value> = state
        .store
        .conflicts(&ks, limit)?
        .iter()
        .map(|c| {
            json!({
                "key": key_json(&c.key),
                "winner": version(&c.winner),
                "loser": version(&c.loser),
                "reason": c.reason.as_str(),
                "recorded_at_ms": c.recorded_at_ms,
            })
        })
        .collect();
    let late: Vec<Value> = state
        .store
        .late_writes(&ks, limit)?
        .iter()
        .map(|l| {
            json!({
                "key": key_json(&l.key),
                "region": l.origin.as_str(),
                "seq": l.seq,
                "epoch": l.epoch,
                "timestamp": l.ts.to_string(),
                "recorded_at_ms": l.recorded_at_ms,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "keyspace": ks,
        "policy": policy.as_str(),
        "conflicts": list,
        "late_writes": late,
    }))
    .into_response())
}

async fn status(State(state): State<Shared>) -> ApiResult {
    let stats = state.store.stats();
    let mut keyspaces: Vec<Value> = state
        .config
        .keyspaces
        .iter()
        .map(|k| {
            let mut v = json!({"name": k.name, "policy": k.policy.as_str()});
            if k.policy == Policy::Strong
                && let Some(s) = state.strong.get()
            {
                let g = s.status_json();
                v["leader"] = g["leader"].clone();
                v["term"] = g["term"].clone();
                v["role"] = g["role"].clone();
            }
            v
        })
        .collect();
    keyspaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let applied: serde_json::Map<String, Value> = state
        .store
        .applied()
        .iter()
        .map(|(r, n)| (r.to_string(), json!(n)))
        .collect();
    let (peers, replication) = match state.replicator.get() {
        Some(rep) => {
            let (peers, horizon) = rep.status()?;
            let mut replication = json!({
                "applied": applied,
                "tombstone_horizon_ms": horizon,
                "max_lag_secs": rep.max_lag_secs(),
            });
            if let Some(r) = replication_readiness(&state)? {
                replication["established"] = r["established"].clone();
                replication["streaming_to"] = r["streaming_to"].clone();
            }
            let truncated: serde_json::Map<String, Value> = state
                .store
                .truncated_through()
                .into_iter()
                .map(|(o, n)| (o.to_string(), json!(n)))
                .collect();
            replication["oplog_truncated_through"] = Value::Object(truncated);
            if let Some(b) = rep.bootstrap_status() {
                replication["bootstrap"] = b;
            }
            (json!(peers), replication)
        }
        None => (json!([]), json!({"applied": applied})),
    };
    let mut body = json!({
        "region": state.store.region().as_str(),
        "cluster": state.config.cluster.name,
        "model": state.config.cluster.model.as_str(),
        "version": env!("CARGO_PKG_VERSION"),
        "serving": state.serving.load(Ordering::Relaxed),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "keyspaces": keyspaces,
        "store": {
            "last_seq": stats.last_seq.load(Ordering::Relaxed),
            "writes_total": stats.writes_total.load(Ordering::Relaxed),
            "commits_total": stats.commits_total.load(Ordering::Relaxed),
            "hlc_wall_ms": stats.hlc_wall_ms.load(Ordering::Relaxed),
        },
        "peers": peers,
        "replication": replication,
        "peer_tls": peer_tls(&state.config),
        "fencing": fencing_json(&state),
        "strong": state.strong.get().map(|s| s.status_json()),
    });
    if let Some(h) = state.homes.get() {
        body["homes"] = h.status_json();
    }
    if let Some(m) = membership_json(&state) {
        body["membership"] = m;
    }
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    #[serde(default)]
    accept_data_loss: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    target: String,
    /// How long to wait for the target to catch up (default 30 s, at most 10 min).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

fn admin_fencing(state: &AppState, headers: &HeaderMap) -> Result<Arc<crate::fencing::Fencing>> {
    let Some(f) = state.fencing.get() else {
        return Err(AtollError::BadRequest(format!(
            "the cluster is {} without quorum fencing: there is no write lease to promote or switch over",
            state.config.cluster.model
        )));
    };
    f.check_admin(bearer(headers))?;
    Ok(f.clone())
}

/// `POST /v1/admin/promote`: this region takes the write lease (`atoll promote`).
async fn admin_promote(State(state): State<Shared>, headers: HeaderMap, body: Body) -> ApiResult {
    let f = admin_fencing(&state, &headers)?;
    let bytes = read_body(body, 4096, |len| AtollError::RequestTooLarge {
        len,
        max: 4096,
    })
    .await?;
    let req: PromoteBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        PromoteBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| AtollError::MalformedBody(e.to_string()))?
    };
    let report = f.promote(req.accept_data_loss).await?;
    tracing::warn!(region = %state.store.region(), ?report, "promoted by an operator");
    Ok(axum::Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RehomeBody {
    keyspace: String,
    /// Exactly one of `key`, `prefix` and `hash` (`[LO, HI]`, a hash rule of the keyspace).
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    hash: Option<(u16, u16)>,
    to: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `POST /v1/admin/rehome`: moves the home of a key, a prefix or a hash range of an owned keyspace
/// (`docs/design/owned-keyspaces.md`); answers once the move has finished, with its report.
async fn admin_rehome(State(state): State<Shared>, headers: HeaderMap, body: Body) -> ApiResult {
    // Moves are control-group entries: the admin token of the region's fencing guards them.
    admin_fencing(&state, &headers)?;
    let Some(h) = state.homes.get() else {
        return Err(AtollError::RehomeRefused(
            "no keyspace of this cluster is owned: only owned keyspaces have homes".into(),
        )
        .into());
    };
    let bytes = read_body(body, 8192, |len| AtollError::RequestTooLarge {
        len,
        max: 8192,
    })
    .await?;
    let req: RehomeBody =
        serde_json::from_slice(&bytes).map_err(|e| AtollError::MalformedBody(e.to_string()))?;
    let selector = match (req.key, req.prefix, req.hash) {
        (Some(k), None, None) if !k.is_empty() && k.len() <= KEY_MAX_BYTES => {
            atoll_core::home::Selector::Key(k.into_bytes())
        }
        (None, Some(p), None) if p.len() <= KEY_MAX_BYTES => {
            atoll_core::home::Selector::Prefix(p.into_bytes())
        }
        (None, None, Some((lo, hi))) if lo <= hi => atoll_core::home::Selector::Hash { lo, hi },
        _ => {
            return Err(AtollError::BadRequest(format!(
                "name exactly one of `key` (1 to {KEY_MAX_BYTES} bytes), `prefix` (at most {KEY_MAX_BYTES} bytes; \"\" moves the default rule) and `hash` ([LO, HI], a hash rule of the keyspace)"
            ))
            .into());
        }
    };
    let to = atoll_core::RegionId::new(&req.to)?;
    let timeout = std::time::Duration::from_millis(req.timeout_ms.unwrap_or(30_000).min(600_000));
    let report = h
        .rehome(&req.keyspace, selector, to, req.force, timeout)
        .await?;
    tracing::warn!(region = %state.store.region(), ?report, "re-homing done");
    Ok(axum::Json(report).into_response())
}

/// `POST /v1/admin/switchover`: the primary hands the lease to `target` without loss.
async fn admin_switchover(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let f = admin_fencing(&state, &headers)?;
    let bytes = read_body(body, 4096, |len| AtollError::RequestTooLarge {
        len,
        max: 4096,
    })
    .await?;
    let req: SwitchoverBody =
        serde_json::from_slice(&bytes).map_err(|e| AtollError::MalformedBody(e.to_string()))?;
    let target = atoll_core::RegionId::new(&req.target)?;
    let timeout = std::time::Duration::from_millis(req.timeout_ms.unwrap_or(30_000).min(600_000));
    let report = f.switchover(&target, timeout).await?;
    tracing::warn!(region = %state.store.region(), ?report, "switchover done");
    Ok(axum::Json(report).into_response())
}

/// Role, epoch, lease holder and lease times (`docs/design/fencing.md`); an unfenced
/// active-active cluster says so.
fn fencing_json(state: &AppState) -> Value {
    match state.fencing.get() {
        Some(f) => f.status_json(),
        None => json!({
            "model": state.config.cluster.model.as_str(),
            "role": "active",
            "epoch": 0,
            "quorum": false,
        }),
    }
}

/// How this region talks to its peers, for `/v1/status`: loud when it is insecure.
fn peer_tls(config: &Config) -> Value {
    let tls = &config.cluster.tls;
    let mut v = json!({ "mode": tls.mode() });
    if *tls == atoll_config::PeerTls::Insecure {
        v["warning"] = json!(atoll_config::INSECURE_WARNING);
    }
    v
}

/// This region's place in the cluster (`docs/design/adding-regions.md`), for `/healthz` and
/// `/v1/status`.
fn membership_json(state: &AppState) -> Option<Value> {
    let m = state.membership.get()?;
    let removed: Vec<Value> = state
        .replicator
        .get()
        .map(|r| r.removed_status())
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            json!({
                "region": r.region.as_str(),
                "effective": r.effective,
                "settled": r.settled,
                "applied_seq": r.applied_seq,
                "waiting_for": r.waiting_for.iter().map(|w| w.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut v = json!({
        "voter": m.is_voter(),
        "admitted": m.is_admitted(),
        "regions": m.regions().iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "waiting_for": m.waiting_for().iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "removed": removed,
    });
    if let Some(r) = state.store.removed_by() {
        let own = state.store.applied().get(state.store.region());
        v["removed_by"] = json!({
            "by": r.by.as_str(),
            "at_ms": r.at_ms,
            "held_by_members": r.held_by_members,
            "unreplicated_writes": own.saturating_sub(r.held_by_members),
        });
    }
    Some(v)
}

async fn healthz(State(state): State<Shared>) -> Response {
    let region = state.store.region().as_str();
    let serving = state.serving.load(Ordering::Relaxed);
    let fencing = fencing_json(&state);
    // A passive region serves no client traffic: it says so, and routers take it out at once.
    let passive = fencing["role"] == "passive";
    let bootstrap = state.replicator.get().and_then(|r| r.bootstrap_status());
    let serving = serving && bootstrap.is_none();
    // Removed from the cluster (`docs/design/region-removal.md`): it still serves reads, takes
    // no writes, and routers should take it out.
    let removed = state.store.removed_by().is_some();
    let mut body = json!({
        "status": if bootstrap.is_some() { "bootstrapping" } else if !serving { "draining" } else if removed { "removed" } else if passive { "passive" } else { "serving" },
        "region": region,
        "role": fencing["role"].clone(),
        "epoch": fencing["epoch"].clone(),
        "primary": fencing.get("holder").cloned().unwrap_or(Value::Null),
    });
    // Replication readiness is information, not health: a region serves its own reads and
    // writes whether or not its peers are reachable.
    if let Ok(Some(r)) = replication_readiness(&state) {
        body["replication"] = r;
    }
    if let Some(b) = bootstrap {
        body["bootstrap"] = b;
    }
    if let Some(m) = membership_json(&state) {
        body["membership"] = m;
    }
    let status = if serving && !removed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Shared>) -> Response {
    state
        .metrics
        .oplog_last_seq
        .set(state.store.stats().last_seq.load(Ordering::Relaxed));
    state
        .metrics
        .subscription_streams
        .set(i64::try_from(state.subscribers.total()).unwrap_or(i64::MAX));
    if let Some(rep) = state.replicator.get() {
        rep.refresh_metrics();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::OPENAPI_JSON,
    )
        .into_response()
}
