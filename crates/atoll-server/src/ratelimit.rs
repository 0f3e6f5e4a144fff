//! Rate limits over HTTP (`docs/design/rate-limits.md`): `POST /v1/ratelimit/{keyspace}/{key}`
//! asks to admit a request (`{"cost": N}`, default 1) and answers the decision, `GET` reads what
//! is left of the budget without counting anything.

use crate::api::{ApiError, AppState, Shared};
use atoll_core::crdt::ratewindow::{Decision, RateWindows};
use atoll_core::op::{Intent, KeyState, Policy};
use atoll_core::{AtollError, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// The policies `/v1/ratelimit` serves.
pub const POLICIES: &[Policy] = &[Policy::RateLimit];

/// Most cost one request may ask for.
pub const MAX_COST: u64 = 1_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdmitBody {
    #[serde(default)]
    cost: Option<u64>,
}

fn decision_json(state: &AppState, d: &Decision) -> Value {
    json!({
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "reset_at_ms": d.reset_at_ms,
        "retry_after_ms": d.retry_after_ms,
        "region": state.store.region().as_str(),
    })
}

/// The answer to a decision: 200 when admitted, 429 with `Retry-After` (whole seconds, rounded
/// up) when not; the same JSON body either way.
fn answer(state: &AppState, d: &Decision) -> Response {
    let status = if d.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut resp = (status, axum::Json(decision_json(state, d))).into_response();
    if !d.allowed
        && let Ok(v) = HeaderValue::from_str(&d.retry_after_ms.div_ceil(1000).max(1).to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn rule_of(state: &AppState, ks: &str) -> Result<atoll_core::crdt::ratewindow::RateRule> {
    state
        .store
        .keyspace(ks)?
        .ratelimit
        .clone()
        .ok_or_else(|| AtollError::Config(format!("keyspace `{ks}` has no rate-limit rule")))
}

/// `GET /v1/ratelimit/{keyspace}/{key}`: what is left now, by this region's count (nothing is
/// counted).
pub async fn get(State(state): State<Shared>, uri: Uri) -> std::result::Result<Response, ApiError> {
    let (ks, key, _) =
        crate::api::resolve(&state, &uri, "ratelimit", POLICIES, "rate-limit reads")?;
    let rule = rule_of(&state, &ks)?;
    let cur = match state.store.get(&ks, &key)? {
        Some(KeyState::RateLimit(w)) => Some(w),
        None => None,
        Some(other) => {
            return Err(AtollError::Corrupt(format!(
                "key holds {} state in a ratelimit keyspace",
                other.policy()
            ))
            .into());
        }
    };
    // By the region's clock (an admission is decided at its HLC stamp, which is at least this).
    let d = RateWindows::peek(
        cur.as_ref(),
        &rule,
        state.store.region(),
        state.store.now_ms(),
    );
    Ok(axum::Json(decision_json(&state, &d)).into_response())
}

/// `POST /v1/ratelimit/{keyspace}/{key}` with an optional `{"cost": N}` (default 1): admitted
/// (counted, durable, replicated; 200) or not (nothing counted; 429 with `Retry-After`).
pub async fn post(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> std::result::Result<Response, ApiError> {
    let (ks, key, _) =
        crate::api::resolve(&state, &uri, "ratelimit", POLICIES, "rate-limit requests")?;
    if uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(AtollError::BadRequest(
            "POST /v1/ratelimit takes no query parameters: send {\"cost\": N} as the body".into(),
        )
        .into());
    }
    let rule = rule_of(&state, &ks)?;
    let raw = crate::api::read_raw_json_body(&state, body).await?;
    let cost = if raw.iter().all(u8::is_ascii_whitespace) {
        1
    } else {
        let text = std::str::from_utf8(&raw)
            .map_err(|_| AtollError::InvalidUtf8("request body".into()))?;
        let parsed: AdmitBody =
            serde_json::from_str(text).map_err(|e| AtollError::MalformedBody(e.to_string()))?;
        parsed.cost.unwrap_or(1)
    };
    if !(1..=MAX_COST).contains(&cost) {
        return Err(AtollError::BadRequest(format!(
            "cost {cost} is out of range: a request costs 1 to {MAX_COST}"
        ))
        .into());
    }
    match crate::api::write(&state, &ks, &key, Intent::Admit { cost }).await {
        Ok(out) => {
            let cur = match &out.state {
                KeyState::RateLimit(w) => Some(w),
                _ => None,
            };
            let mut d = RateWindows::peek(cur, &rule, state.store.region(), out.ts.wall_ms);
            d.allowed = true;
            Ok(answer(&state, &d))
        }
        Err(AtollError::RateLimited {
            limit,
            remaining,
            reset_at_ms,
            retry_after_ms,
            ..
        }) => Ok(answer(
            &state,
            &Decision {
                allowed: false,
                remaining,
                limit,
                reset_at_ms,
                retry_after_ms,
            },
        )),
        Err(e) => crate::api::refused(&state, e, Method::POST, &uri, &headers, raw).await,
    }
}
