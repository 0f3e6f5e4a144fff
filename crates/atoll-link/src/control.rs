//! The control HTTP API of a link server (axum). Every request is validated completely before
//! anything changes; bad input gets `4xx` with `{"error": {"code", "message", "hint",
//! "retryable"}}` and changes nothing. The same, for operators: `docs/link-api.md`.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /v1/links` | every link: name, regions, listen, upstream, shaping, effect, faults (id, remaining lease), counters |
//! | `GET /v1/links/{name}` | one link |
//! | `PATCH /v1/links/{name}` | change base shaping: `{"latency_ms", "jitter_ms", "bandwidth", "reverse_latency_ms", "reverse_jitter_ms", "reverse_bandwidth"}` (any subset) |
//! | `GET /v1/links/{name}/faults` | the faults in effect on the link: its own, and the pair and region faults that cover it |
//! | `POST /v1/links/{name}/faults` | add a fault to the link: `{"kind": "partition", "mode": "stall", "for": "10m"}` → `201` with its `id` |
//! | `DELETE /v1/links/{name}/faults` | remove the link's own faults (pair and region faults that cover it stay; listed as `still_covered_by`) |
//! | `PUT /v1/links/{name}/faults/{id}` | renew one of the link's own faults: `{"for": "5m"}` |
//! | `DELETE /v1/links/{name}/faults/{id}` | remove one of the link's own faults |
//! | `GET /v1/faults` | every active fault of the server, each once, with its `scope`, `target` and `links` |
//! | `POST /v1/faults` | add a fault to a link, a pair or a region (below) → `201` with its `id` and the `links` it covers |
//! | `DELETE /v1/faults` | remove every fault of the server |
//! | `GET /v1/faults/{id}` | one fault, whatever its target |
//! | `PUT /v1/faults/{id}` | renew a fault on every link it covers: `{"for": "5m"}` |
//! | `DELETE /v1/faults/{id}` | remove a fault: every link it covers heals at once |
//! | `GET /healthz` | `200 {"status": "ok"}` |
//! | `GET /metrics` | OpenMetrics text |
//!
//! When the server has a token ([`crate::proxy::ProxyOptions::control_token`]; required when the
//! API listens beyond loopback), every route but `GET /healthz` and `GET /metrics` needs
//! `Authorization: Bearer <token>`, compared in constant time; without it the answer is
//! `401 ATOLL-UNAUTHORIZED` and nothing changes.
//!
//! Link names go in the path percent-encoded (`us-east-1-%3Eeu-west-1`); a literal `>` works too.
//!
//! Fault bodies: `kind` is `partition` (`mode`: `stall` (default) or `refuse`), `isolate` (a
//! region's partition: `mode` as for partition), `oneway` (`direction`: `forward` or `reverse`,
//! required), `reset`, or `latency` (`extra_ms` required, `direction`: `both` (default), `forward`
//! or `reverse`); `for` (the lease, e.g. `30s`, `10m`, `1h`) is required. A field that does not
//! apply to the kind is an error, as is any unknown field.
//!
//! `POST /v1/faults` takes exactly one target field besides:
//!
//! | target | covers | kinds |
//! | --- | --- | --- |
//! | `"link": "us-east-1->eu-west-1"` | that link: one direction of connections | all but isolate |
//! | `"pair": "us-east-1<->eu-west-1"` | every link from either region to the other: both directions | partition, reset, latency (direction both) |
//! | `"region": "us-east-1"` | every link to or from the region | isolate |
//!
//! e.g. `{"pair": "us-east-1<->eu-west-1", "kind": "partition", "for": "30s"}` or
//! `{"region": "us-east-1", "kind": "isolate", "mode": "refuse", "for": "5m"}`. The answer is the
//! fault (`{"id": "f-3", "scope": "pair", "target": "us-east-1<->eu-west-1", "links":
//! ["eu-west-1->us-east-1", "us-east-1->eu-west-1"], "kind": "partition", "mode": "stall",
//! "remaining_ms", "remaining", "description"}`), and so is every fault in a listing. It is one
//! fault: one id (unique on the server), one lease; it is renewed and removed as a whole through
//! `/v1/faults/{id}`, and a link's `/faults/{id}` routes refuse it with `409
//! ATOLL-LINK-FAULT-SCOPE`. Refused targets change nothing: a malformed name (`400
//! ATOLL-LINK-INVALID`), a pair naming one region twice (`400 ATOLL-LINK-PAIR-SAME-REGION`), a
//! region no link goes to or from (`404 ATOLL-LINK-UNKNOWN-REGION`: a link server knows regions
//! only through its links), a pair without a link each way (`404 ATOLL-LINK-NO-LINKS`), a kind the
//! target does not take (`400 ATOLL-LINK-INVALID`, field `kind` or `direction`).

use crate::error::LinkError;
use crate::metrics::OPENMETRICS_CONTENT_TYPE;
use crate::model::{
    Direction, FaultId, FaultKind, FaultTarget, PartitionMode, Shaping, SpikeDirection,
};
use crate::proxy::Shared;
use crate::units::{parse_bandwidth, parse_duration_ms};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;

/// Every route of the control API with its methods.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/links", &["GET"]),
    ("/v1/links/{name}", &["GET", "PATCH"]),
    ("/v1/links/{name}/faults", &["GET", "POST", "DELETE"]),
    ("/v1/links/{name}/faults/{id}", &["PUT", "DELETE"]),
    ("/v1/faults", &["GET", "POST", "DELETE"]),
    ("/v1/faults/{id}", &["GET", "PUT", "DELETE"]),
    ("/healthz", &["GET"]),
    ("/metrics", &["GET"]),
];

type Shared_ = Arc<Shared>;

struct ApiError(LinkError);

impl From<LinkError> for ApiError {
    fn from(e: LinkError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

fn error_response(e: &LinkError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.to_json())).into_response()
}

/// A JSON error that is not a [`LinkError`] (unknown route, wrong method).
fn plain_error(status: StatusCode, code: &str, message: String, hint: &str) -> Response {
    let body = atoll_core::ErrorBody::new(code, message, hint, false);
    (status, axum::Json(body)).into_response()
}

type ApiResult = Result<Response, ApiError>;

/// Builds the control API's router over the server's shared state.
pub(crate) fn router(shared: Shared_) -> Router {
    Router::new()
        .route("/v1/links", get(list_links))
        .route("/v1/links/{name}", get(get_link).patch(patch_link))
        .route(
            "/v1/links/{name}/faults",
            get(list_faults).post(add_fault).delete(clear_faults),
        )
        .route(
            "/v1/links/{name}/faults/{id}",
            axum::routing::put(renew_fault).delete(remove_fault),
        )
        .route(
            "/v1/faults",
            get(list_all_faults)
                .post(add_targeted_fault)
                .delete(clear_all_faults),
        )
        .route(
            "/v1/faults/{id}",
            get(get_fault).put(renew_by_id).delete(remove_by_id),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .with_state(shared)
}

/// Whether `given` equals `expected`, in time that depends only on `expected`'s length.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ e;
    }
    diff == 0
}

/// Refuses every request but `GET /healthz` and `GET /metrics` without the server's token.
async fn require_token(State(s): State<Shared_>, req: Request, next: Next) -> Response {
    let Some(token) = s.control_token() else {
        return next.run(req).await;
    };
    let open = matches!(*req.method(), Method::GET | Method::HEAD)
        && matches!(req.uri().path(), "/healthz" | "/metrics");
    if open {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    let why = if given.is_none() {
        "the link control API needs `Authorization: Bearer <token>`"
    } else {
        "wrong link control token"
    };
    let mut resp = error_response(&LinkError::Unauthorized(why.into()));
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"atoll link\""),
    );
    resp
}

async fn route_not_found(uri: axum::http::Uri) -> Response {
    plain_error(
        StatusCode::NOT_FOUND,
        "ATOLL-NOT-FOUND",
        format!("no route {}", uri.path()),
        "the control API serves /v1/links, /v1/links/{name}, /v1/links/{name}/faults[/{id}], /v1/faults[/{id}], /healthz and /metrics",
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    plain_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "ATOLL-METHOD-NOT-ALLOWED",
        format!("{method} is not allowed on {}", uri.path()),
        "see the route table in `atoll link --help`",
    )
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    match p {
        Ok(Path(v)) => Ok(v),
        Err(e) => Err(LinkError::invalid("path", e.body_text()).into()),
    }
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| LinkError::MalformedBody(e.to_string()).into())
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"status": "ok"}))
}

async fn metrics(State(s): State<Shared_>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        s.metrics.encode(),
    )
        .into_response()
}

async fn list_links(State(s): State<Shared_>) -> Response {
    json_response(StatusCode::OK, json!({"links": to_value(&s.status())}))
}

async fn get_link(State(s): State<Shared_>, p: Result<Path<String>, PathRejection>) -> ApiResult {
    let name = path(p)?;
    Ok(json_response(
        StatusCode::OK,
        to_value(&s.link_status(&name)?),
    ))
}

async fn list_faults(
    State(s): State<Shared_>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let name = path(p)?;
    let status = s.link_status(&name)?;
    Ok(json_response(
        StatusCode::OK,
        json!({"link": name, "faults": to_value(&status.faults)}),
    ))
}

/// `POST /v1/links/{name}/faults` and `POST /v1/faults` body (the target fields only in the
/// latter).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    link: Option<String>,
    pair: Option<String>,
    region: Option<String>,
    kind: String,
    mode: Option<String>,
    direction: Option<String>,
    extra_ms: Option<f64>,
    #[serde(rename = "for")]
    lease: Option<String>,
}

/// A link fault request's kind and lease (`POST /v1/links/{name}/faults`), validated.
pub fn parse_fault_request(body: &Value) -> Result<(FaultKind, u64), LinkError> {
    let req: FaultRequest = serde_json::from_value(body.clone())
        .map_err(|e| LinkError::MalformedBody(e.to_string()))?;
    no_target_fields(&req)?;
    fault_from_request(&req)
}

/// A `POST /v1/faults` request's target, kind and lease, validated (syntax only: whether the
/// target has links is the mesh's to say).
pub fn parse_targeted_fault_request(
    body: &Value,
) -> Result<(FaultTarget, FaultKind, u64), LinkError> {
    let req: FaultRequest = serde_json::from_value(body.clone())
        .map_err(|e| LinkError::MalformedBody(e.to_string()))?;
    targeted_from_request(&req)
}

fn targeted_from_request(req: &FaultRequest) -> Result<(FaultTarget, FaultKind, u64), LinkError> {
    let target = match (&req.link, &req.pair, &req.region) {
        (Some(l), None, None) => FaultTarget::link(l)?,
        (None, Some(p), None) => FaultTarget::pair(p)?,
        (None, None, Some(r)) => FaultTarget::region(r)?,
        (None, None, None) => {
            return Err(LinkError::invalid(
                "target",
                "give one of link (us-east-1->eu-west-1), pair (us-east-1<->eu-west-1) or region (us-east-1, with kind isolate)",
            ));
        }
        _ => {
            return Err(LinkError::invalid(
                "target",
                "give only one of link, pair and region",
            ));
        }
    };
    let (kind, lease_ms) = fault_from_request(req)?;
    target.check_kind(&kind)?;
    Ok((target, kind, lease_ms))
}

/// The link routes take the link from the path: a target field in the body is an error.
fn no_target_fields(req: &FaultRequest) -> Result<(), LinkError> {
    for (field, present) in [
        ("link", req.link.is_some()),
        ("pair", req.pair.is_some()),
        ("region", req.region.is_some()),
    ] {
        if present {
            return Err(LinkError::invalid(
                field,
                "the link is in the path here; to fault a pair or a region, POST it to /v1/faults",
            ));
        }
    }
    Ok(())
}

fn not_for(field: &str, kind: &str) -> LinkError {
    let applies = match field {
        "mode" => "partition and isolate",
        "direction" => "oneway and latency",
        _ => "latency",
    };
    LinkError::invalid(
        field,
        format!("does not apply to kind `{kind}` (only to {applies})"),
    )
}

fn partition_mode(mode: Option<&str>) -> Result<PartitionMode, LinkError> {
    match mode {
        None | Some("stall") => Ok(PartitionMode::Stall),
        Some("refuse") => Ok(PartitionMode::Refuse),
        Some(other) => Err(LinkError::invalid(
            "mode",
            format!("`{other}`: use stall or refuse"),
        )),
    }
}

fn fault_from_request(req: &FaultRequest) -> Result<(FaultKind, u64), LinkError> {
    let kind = match req.kind.as_str() {
        "partition" => {
            if req.direction.is_some() {
                return Err(not_for("direction", "partition"));
            }
            if req.extra_ms.is_some() {
                return Err(not_for("extra_ms", "partition"));
            }
            FaultKind::Partition {
                mode: partition_mode(req.mode.as_deref())?,
            }
        }
        "isolate" => {
            if req.direction.is_some() {
                return Err(not_for("direction", "isolate"));
            }
            if req.extra_ms.is_some() {
                return Err(not_for("extra_ms", "isolate"));
            }
            FaultKind::Isolate {
                mode: partition_mode(req.mode.as_deref())?,
            }
        }
        "oneway" => {
            if req.mode.is_some() {
                return Err(not_for("mode", "oneway"));
            }
            if req.extra_ms.is_some() {
                return Err(not_for("extra_ms", "oneway"));
            }
            let direction = match req.direction.as_deref() {
                Some("forward") => Direction::Forward,
                Some("reverse") => Direction::Reverse,
                Some(other) => {
                    return Err(LinkError::invalid(
                        "direction",
                        format!("`{other}`: a oneway fault holds forward or reverse"),
                    ));
                }
                None => {
                    return Err(LinkError::invalid(
                        "direction",
                        "required for kind oneway: forward (client to upstream) or reverse",
                    ));
                }
            };
            FaultKind::OneWay { direction }
        }
        "reset" => {
            for (field, present) in [
                ("mode", req.mode.is_some()),
                ("direction", req.direction.is_some()),
                ("extra_ms", req.extra_ms.is_some()),
            ] {
                if present {
                    return Err(not_for(field, "reset"));
                }
            }
            FaultKind::Reset
        }
        "latency" => {
            if req.mode.is_some() {
                return Err(not_for("mode", "latency"));
            }
            let direction = match req.direction.as_deref() {
                None | Some("both") => SpikeDirection::Both,
                Some("forward") => SpikeDirection::Forward,
                Some("reverse") => SpikeDirection::Reverse,
                Some(other) => {
                    return Err(LinkError::invalid(
                        "direction",
                        format!("`{other}`: use both, forward or reverse"),
                    ));
                }
            };
            let extra_ms = req.extra_ms.ok_or_else(|| {
                LinkError::invalid("extra_ms", "required for kind latency (ms added one way)")
            })?;
            FaultKind::LatencySpike {
                extra_ms,
                direction,
            }
        }
        other => {
            return Err(LinkError::invalid(
                "kind",
                format!("`{other}`: use partition, isolate, oneway, reset or latency"),
            ));
        }
    };
    kind.validate()?;
    let lease_text = req.lease.as_deref().ok_or_else(|| {
        LinkError::invalid(
            "for",
            "required: how long the fault lasts (e.g. 30s, 10m); faults always expire",
        )
    })?;
    let lease_ms = parse_duration_ms(lease_text, "for")?;
    crate::model::validate_lease("for", lease_ms)?;
    Ok((kind, lease_ms))
}

async fn add_fault(
    State(s): State<Shared_>,
    p: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> ApiResult {
    let name = path(p)?;
    let req: FaultRequest = body(&bytes)?;
    // Unknown link before bad body fields? Both are errors; the link is checked by add_fault,
    // after the body is fully validated, so nothing is half-applied either way.
    no_target_fields(&req)?;
    let (kind, lease_ms) = fault_from_request(&req)?;
    let info = s.add_fault(&name, kind, lease_ms)?;
    let mut v = to_value(&info);
    if let Value::Object(m) = &mut v {
        m.insert("link".into(), Value::String(name));
    }
    Ok(json_response(StatusCode::CREATED, v))
}

/// `PUT /v1/links/{name}/faults/{id}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    #[serde(rename = "for")]
    lease: String,
}

async fn renew_fault(
    State(s): State<Shared_>,
    p: Result<Path<(String, String)>, PathRejection>,
    bytes: Bytes,
) -> ApiResult {
    let (name, id) = path(p)?;
    let id: FaultId = id.parse()?;
    let req: RenewRequest = body(&bytes)?;
    let lease_ms = parse_duration_ms(&req.lease, "for")?;
    crate::model::validate_lease("for", lease_ms)?;
    let info = s.renew(Some(&name), id, lease_ms)?;
    let mut v = to_value(&info);
    if let Value::Object(m) = &mut v {
        m.insert("link".into(), Value::String(name));
    }
    Ok(json_response(StatusCode::OK, v))
}

async fn remove_fault(
    State(s): State<Shared_>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (name, id) = path(p)?;
    let id: FaultId = id.parse()?;
    let info = s.remove(Some(&name), id)?;
    Ok(json_response(
        StatusCode::OK,
        json!({"link": name, "removed": to_value(&info)}),
    ))
}

async fn clear_faults(
    State(s): State<Shared_>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let name = path(p)?;
    let n = s.clear_faults(Some(&name))?;
    let still: Vec<String> = s
        .link_status(&name)?
        .faults
        .iter()
        .map(|f| f.id.to_string())
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({"link": name, "removed": n, "still_covered_by": still}),
    ))
}

async fn list_all_faults(State(s): State<Shared_>) -> Response {
    json_response(StatusCode::OK, json!({"faults": to_value(&s.faults())}))
}

async fn add_targeted_fault(State(s): State<Shared_>, bytes: Bytes) -> ApiResult {
    let req: FaultRequest = body(&bytes)?;
    // The body is validated completely first; the mesh then checks the target's links under its
    // lock, so a refused fault changes nothing.
    let (target, kind, lease_ms) = targeted_from_request(&req)?;
    let info = s.add(target, kind, lease_ms)?;
    Ok(json_response(StatusCode::CREATED, to_value(&info)))
}

async fn clear_all_faults(State(s): State<Shared_>) -> ApiResult {
    let n = s.clear_faults(None)?;
    Ok(json_response(StatusCode::OK, json!({"removed": n})))
}

async fn get_fault(State(s): State<Shared_>, p: Result<Path<String>, PathRejection>) -> ApiResult {
    let id: FaultId = path(p)?.parse()?;
    Ok(json_response(StatusCode::OK, to_value(&s.fault(id)?)))
}

async fn renew_by_id(
    State(s): State<Shared_>,
    p: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> ApiResult {
    let id: FaultId = path(p)?.parse()?;
    let req: RenewRequest = body(&bytes)?;
    let lease_ms = parse_duration_ms(&req.lease, "for")?;
    crate::model::validate_lease("for", lease_ms)?;
    let info = s.renew(None, id, lease_ms)?;
    Ok(json_response(StatusCode::OK, to_value(&info)))
}

async fn remove_by_id(
    State(s): State<Shared_>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id: FaultId = path(p)?.parse()?;
    let info = s.remove(None, id)?;
    Ok(json_response(
        StatusCode::OK,
        json!({"removed": to_value(&info)}),
    ))
}

/// `bandwidth` in a patch: bytes per second, a string like `"10MB/s"`, or `"unlimited"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum BandwidthValue {
    Bytes(i64),
    Text(String),
}

impl BandwidthValue {
    fn resolve(&self, field: &str) -> Result<Option<u64>, LinkError> {
        match self {
            BandwidthValue::Text(t) if t == "unlimited" => Ok(None),
            BandwidthValue::Text(t) => parse_bandwidth(t, field).map(Some),
            BandwidthValue::Bytes(n) if *n > 0 => Ok(Some(*n as u64)),
            BandwidthValue::Bytes(n) => Err(LinkError::invalid(
                field,
                format!("{n} bytes per second: must be above 0 (or \"unlimited\")"),
            )),
        }
    }
}

/// `PATCH /v1/links/{name}` body: an unprefixed field sets the forward direction and, unless its
/// `reverse_` twin is given too, the reverse direction; a `reverse_` field sets only the reverse.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapingPatch {
    latency_ms: Option<f64>,
    jitter_ms: Option<f64>,
    bandwidth: Option<BandwidthValue>,
    reverse_latency_ms: Option<f64>,
    reverse_jitter_ms: Option<f64>,
    reverse_bandwidth: Option<BandwidthValue>,
}

/// Applies a shaping patch to `(forward, reverse)`; the result is validated by the caller.
fn apply_patch(
    patch: &ShapingPatch,
    (mut f, mut r): (Shaping, Shaping),
) -> Result<(Shaping, Shaping), LinkError> {
    if let Some(v) = patch.latency_ms {
        f.latency_ms = v;
        r.latency_ms = v;
    }
    if let Some(v) = patch.jitter_ms {
        f.jitter_ms = v;
        r.jitter_ms = v;
    }
    if let Some(b) = &patch.bandwidth {
        let b = b.resolve("bandwidth")?;
        f.bandwidth_bytes_per_sec = b;
        r.bandwidth_bytes_per_sec = b;
    }
    if let Some(v) = patch.reverse_latency_ms {
        r.latency_ms = v;
    }
    if let Some(v) = patch.reverse_jitter_ms {
        r.jitter_ms = v;
    }
    if let Some(b) = &patch.reverse_bandwidth {
        r.bandwidth_bytes_per_sec = b.resolve("reverse_bandwidth")?;
    }
    Ok((f, r))
}

async fn patch_link(
    State(s): State<Shared_>,
    p: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> ApiResult {
    let name = path(p)?;
    let patch: ShapingPatch = body(&bytes)?;
    let current = s.shaping(&name)?;
    let (f, r) = apply_patch(&patch, current)?;
    s.set_shaping(&name, f, r)?;
    Ok(json_response(
        StatusCode::OK,
        to_value(&s.link_status(&name)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<(FaultKind, u64), LinkError> {
        parse_fault_request(&v)
    }

    #[test]
    fn fault_requests() {
        assert_eq!(
            parse(json!({"kind": "partition", "for": "10m"})).unwrap(),
            (
                FaultKind::Partition {
                    mode: PartitionMode::Stall
                },
                600_000
            )
        );
        assert_eq!(
            parse(json!({"kind": "partition", "mode": "refuse", "for": "30s"}))
                .unwrap()
                .0,
            FaultKind::Partition {
                mode: PartitionMode::Refuse
            }
        );
        assert_eq!(
            parse(json!({"kind": "oneway", "direction": "reverse", "for": "1h"})).unwrap(),
            (
                FaultKind::OneWay {
                    direction: Direction::Reverse
                },
                3_600_000
            )
        );
        assert_eq!(
            parse(json!({"kind": "reset", "for": "500ms"})).unwrap(),
            (FaultKind::Reset, 500)
        );
        assert_eq!(
            parse(json!({"kind": "latency", "extra_ms": 200, "for": "1m"}))
                .unwrap()
                .0,
            FaultKind::LatencySpike {
                extra_ms: 200.0,
                direction: SpikeDirection::Both
            }
        );
    }

    #[test]
    fn bad_fault_requests_name_the_field() {
        let cases = [
            (json!({"kind": "partition"}), "for", "ATOLL-LINK-INVALID"),
            (
                json!({"kind": "partition", "for": "0s"}),
                "for",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "partition", "for": "25h"}),
                "for",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "partition", "for": "10"}),
                "for",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "partition", "for": 10}),
                "string",
                "ATOLL-MALFORMED-BODY",
            ),
            (
                json!({"kind": "flood", "for": "1m"}),
                "kind",
                "ATOLL-LINK-INVALID",
            ),
            (json!({"for": "1m"}), "kind", "ATOLL-MALFORMED-BODY"),
            (
                json!({"kind": "partition", "mode": "drop", "for": "1m"}),
                "mode",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "partition", "direction": "forward", "for": "1m"}),
                "direction",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "oneway", "for": "1m"}),
                "direction",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "oneway", "direction": "both", "for": "1m"}),
                "direction",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "oneway", "direction": "forward", "mode": "stall", "for": "1m"}),
                "mode",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "reset", "extra_ms": 5, "for": "1m"}),
                "extra_ms",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "latency", "for": "1m"}),
                "extra_ms",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "latency", "extra_ms": -5, "for": "1m"}),
                "extra_ms",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "latency", "extra_ms": 90000, "for": "1m"}),
                "extra_ms",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"kind": "latency", "extra_ms": 5, "for": "1m", "colour": 1}),
                "colour",
                "ATOLL-MALFORMED-BODY",
            ),
        ];
        for (v, needle, code) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.code(), code, "{v}: {e}");
            assert!(e.to_string().contains(needle), "{v}: {e}");
            assert_eq!(e.http_status(), 400);
        }
    }

    #[test]
    fn targeted_fault_requests() {
        let t = |v: Value| parse_targeted_fault_request(&v);
        let stall = PartitionMode::Stall;
        let (target, kind, lease) =
            t(json!({"pair": "us-east-1<->eu-west-1", "kind": "partition", "for": "30s"})).unwrap();
        assert_eq!(target, FaultTarget::pair("us-east-1<->eu-west-1").unwrap());
        assert_eq!(
            (kind, lease),
            (FaultKind::Partition { mode: stall }, 30_000)
        );
        let (target, kind, _) =
            t(json!({"region": "us-east-1", "kind": "isolate", "mode": "refuse", "for": "5m"}))
                .unwrap();
        assert_eq!(target, FaultTarget::region("us-east-1").unwrap());
        assert_eq!(
            kind,
            FaultKind::Isolate {
                mode: PartitionMode::Refuse
            }
        );
        let (target, kind, _) =
            t(json!({"region": "us-east-1", "kind": "isolate", "for": "5m"})).unwrap();
        assert_eq!(target.scope(), "region");
        assert_eq!(kind, FaultKind::Isolate { mode: stall });
        let (target, _, _) =
            t(json!({"link": "us-east-1->eu-west-1", "kind": "oneway", "direction": "forward", "for": "1m"}))
                .unwrap();
        assert_eq!(target, FaultTarget::Link("us-east-1->eu-west-1".into()));
        assert!(
            t(json!({"pair": "a<->b", "kind": "latency", "extra_ms": 50, "for": "1m"})).is_ok()
        );

        let cases = [
            (
                json!({"kind": "partition", "for": "1m"}),
                "target",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"pair": "a<->b", "region": "a", "kind": "partition", "for": "1m"}),
                "only one",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"pair": "a<->a", "kind": "partition", "for": "1m"}),
                "a<->a",
                "ATOLL-LINK-PAIR-SAME-REGION",
            ),
            (
                json!({"pair": "a->b", "kind": "partition", "for": "1m"}),
                "pair",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"pair": "a<->B", "kind": "partition", "for": "1m"}),
                "region name",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"region": "Us East", "kind": "isolate", "for": "1m"}),
                "region name",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"region": "a", "kind": "partition", "for": "1m"}),
                "kind isolate",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"pair": "a<->b", "kind": "isolate", "for": "1m"}),
                "kind",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"pair": "a<->b", "kind": "oneway", "direction": "forward", "for": "1m"}),
                "oneway",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"pair": "a<->b", "kind": "latency", "extra_ms": 5, "direction": "forward", "for": "1m"}),
                "direction",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"link": "a->b", "kind": "isolate", "for": "1m"}),
                "isolate",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"region": "a", "kind": "isolate", "direction": "forward", "for": "1m"}),
                "direction",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"region": "a", "kind": "isolate", "mode": "drop", "for": "1m"}),
                "mode",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"region": "a", "kind": "isolate"}),
                "for",
                "ATOLL-LINK-INVALID",
            ),
            (
                json!({"region": ["a"], "kind": "isolate", "for": "1m"}),
                "string",
                "ATOLL-MALFORMED-BODY",
            ),
        ];
        for (v, needle, code) in cases {
            let e = t(v.clone()).unwrap_err();
            assert_eq!(e.code(), code, "{v}: {e}");
            assert!(e.to_string().contains(needle), "{v}: {e}");
            assert_eq!(e.http_status(), 400);
        }
        // A link route takes the link from its path: a target field there is an error.
        for field in ["link", "pair", "region"] {
            let e = parse(json!({field: "a", "kind": "reset", "for": "1m"})).unwrap_err();
            assert_eq!(e.code(), "ATOLL-LINK-INVALID");
            assert!(e.to_string().contains("/v1/faults"), "{e}");
        }
    }

    #[test]
    fn shaping_patches() {
        let base = (Shaping::delay(10.0), Shaping::delay(20.0));
        let p: ShapingPatch = serde_json::from_value(json!({"latency_ms": 40})).unwrap();
        let (f, r) = apply_patch(&p, base).unwrap();
        assert_eq!((f.latency_ms, r.latency_ms), (40.0, 40.0));
        let p: ShapingPatch = serde_json::from_value(
            json!({"latency_ms": 40, "reverse_latency_ms": 5, "bandwidth": "1MB/s"}),
        )
        .unwrap();
        let (f, r) = apply_patch(&p, base).unwrap();
        assert_eq!((f.latency_ms, r.latency_ms), (40.0, 5.0));
        assert_eq!(f.bandwidth_bytes_per_sec, Some(1_000_000));
        assert_eq!(r.bandwidth_bytes_per_sec, Some(1_000_000));
        let p: ShapingPatch =
            serde_json::from_value(json!({"reverse_bandwidth": "unlimited"})).unwrap();
        let (f, r) = apply_patch(&p, (f, r)).unwrap();
        assert_eq!(f.bandwidth_bytes_per_sec, Some(1_000_000));
        assert_eq!(r.bandwidth_bytes_per_sec, None);
        let p: ShapingPatch = serde_json::from_value(json!({"bandwidth": 0})).unwrap();
        assert!(
            apply_patch(&p, base)
                .unwrap_err()
                .to_string()
                .contains("bandwidth")
        );
        assert!(serde_json::from_value::<ShapingPatch>(json!({"latency": 4})).is_err());
    }
}
