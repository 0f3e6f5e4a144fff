//! Expiring keys over HTTP (`docs/design/expiring-keys.md`): the `ttl` of a put (`?ttl=` or the
//! `X-Atoll-Ttl` header) and the `/v1/ttl/{keyspace}/{key}` routes that read, set and remove a
//! key's expiry (RESP `TTL`, `EXPIRE`, `PERSIST`).

use crate::api::{ApiError, AppState, Shared};
use atoll_core::crdt::lww::LwwRegister;
use atoll_core::op::{Intent, KeyState, MAX_TTL_MS, Policy, Ttl};
use atoll_core::{AtollError, Result};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Header of a put: the written value's time to live (`30m`, `none`, `keep`), like `?ttl=`.
pub const TTL_HEADER: &str = "x-atoll-ttl";
/// Header of a read of an expiring lww value: when it expires, in ms since the Unix epoch.
pub const EXPIRES_HEADER: &str = "x-atoll-expires-at";

/// The policies `/v1/ttl` serves: lww and owned. An mvr sibling carries the expiry its write
/// gave it (a read shows each one's `expires_at_ms`); a new one is a new write with the read's
/// context and a ttl. Counter, set and strong keys never expire.
pub const TTL_POLICIES: &[Policy] = &[Policy::Lww, Policy::Owned];

/// The policies whose puts take a ttl: lww, owned and mvr.
const PUT_TTL_POLICIES: &[Policy] = &[Policy::Lww, Policy::Owned, Policy::Mvr];

/// Parses a time to live as a request gives it: a duration (`30s`, `5m`, `1h30m`, `500ms`),
/// `none` (never expires, whatever the keyspace default) or `keep` (the key's current expiry).
pub fn parse(text: &str, what: &str) -> Result<Ttl> {
    match text.trim() {
        "none" => return Ok(Ttl::Never),
        "keep" => return Ok(Ttl::Keep),
        _ => {}
    }
    let ms = atoll_config::duration::parse_ms(text).map_err(|e| {
        AtollError::BadRequest(format!(
            "{what}=`{text}`: {e}; or `none` (never expires) or `keep` (keep the key's expiry)"
        ))
    })?;
    if ms == 0 || ms > MAX_TTL_MS {
        return Err(AtollError::BadRequest(format!(
            "{what}=`{text}` is out of range: a time to live is 1ms to 100 years"
        )));
    }
    Ok(Ttl::After(ms))
}

/// The `ttl` query parameter, the only one a write takes: anything else is refused rather than
/// ignored (a misspelt `ttl` would otherwise write a key that never expires).
fn from_query(uri: &Uri) -> Result<Option<Ttl>> {
    let mut out = None;
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value: Vec<u8> = percent_encoding::percent_decode_str(value).collect();
        let value = String::from_utf8(value)
            .map_err(|_| AtollError::InvalidUtf8("query parameter".into()))?;
        match name {
            "ttl" if out.is_none() => out = Some(parse(&value, "ttl")?),
            "ttl" => return Err(AtollError::BadRequest("ttl= is given twice".into())),
            other => {
                return Err(AtollError::BadRequest(format!(
                    "unknown query parameter `{other}` on a write: a write takes only ttl= (e.g. ttl=30m)"
                )));
            }
        }
    }
    Ok(out)
}

/// The time to live of a put: `?ttl=` or `X-Atoll-Ttl` (both: they must agree), else the
/// keyspace default. A ttl on a keyspace that cannot expire keys is refused.
pub fn of_put(uri: &Uri, headers: &HeaderMap, ks: &str, policy: Policy) -> Result<Ttl> {
    let query = from_query(uri)?;
    let header = match headers.get(TTL_HEADER) {
        None => None,
        Some(v) => {
            let text = v.to_str().map_err(|_| {
                AtollError::BadRequest(format!("{TTL_HEADER} is not visible ASCII"))
            })?;
            Some(parse(text, TTL_HEADER)?)
        }
    };
    let ttl = match (query, header) {
        (Some(q), Some(h)) if q != h => {
            return Err(AtollError::BadRequest(format!(
                "ttl= and {TTL_HEADER} disagree: give one"
            )));
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => return Ok(Ttl::Default),
    };
    if !PUT_TTL_POLICIES.contains(&policy) {
        return Err(AtollError::WrongPolicy {
            keyspace: ks.to_string(),
            policy: policy.to_string(),
            operation:
                "expiring keys (lww, owned and mvr keyspaces only: docs/design/expiring-keys.md)"
                    .into(),
        });
    }
    if policy == Policy::Mvr && ttl == Ttl::Keep {
        return Err(AtollError::BadRequest(format!(
            "ttl=keep on keyspace `{ks}`: it is mvr, and each sibling carries its own expiry, so there is none to keep; give the write its own ttl"
        )));
    }
    Ok(ttl)
}

/// The expiry of a live lww register, as the `/v1/ttl` answers and reads show it.
fn expiry_json(r: &LwwRegister, now_ms: u64) -> Value {
    match r.expires_ms {
        Some(e) => json!({"expires_at_ms": e, "ttl_ms": e.saturating_sub(now_ms)}),
        None => json!({"expires_at_ms": null, "ttl_ms": null}),
    }
}

/// The key's live lww register (absent, deleted and expired keys are `NotFound`).
fn live(state: &AppState, ks: &str, key: &[u8]) -> Result<LwwRegister> {
    match state.store.get(ks, key)? {
        Some(KeyState::Lww(r)) if r.live_value(state.store.now_ms()).is_some() => Ok(r),
        Some(KeyState::Lww(_)) | None => Err(AtollError::NotFound),
        Some(other) => Err(AtollError::Corrupt(format!(
            "key holds {} state in an lww keyspace",
            other.policy()
        ))),
    }
}

/// `GET /v1/ttl/{keyspace}/{key}`: `{"expires_at_ms", "ttl_ms"}` (both `null`: never expires).
pub async fn get(State(state): State<Shared>, uri: Uri) -> std::result::Result<Response, ApiError> {
    let (ks, key, _) = crate::api::resolve(&state, &uri, "ttl", TTL_POLICIES, "expiry reads")?;
    let r = live(&state, &ks, &key)?;
    let mut body = expiry_json(&r, state.store.now_ms());
    body["region"] = json!(state.store.region().as_str());
    Ok(axum::Json(body).into_response())
}

/// `PUT /v1/ttl/{keyspace}/{key}?ttl=30s` (or `X-Atoll-Ttl`): a new expiry for a live key,
/// keeping its value (a write of the same value). `DELETE`: removes the expiry; a key without
/// one answers `"changed": false` and writes nothing.
pub async fn put(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
) -> std::result::Result<Response, ApiError> {
    let (ks, key, policy) =
        crate::api::resolve(&state, &uri, "ttl", TTL_POLICIES, "expiry changes")?;
    let ttl = match of_put(&uri, &headers, &ks, policy)? {
        Ttl::Default => {
            return Err(AtollError::BadRequest(format!(
                "give the new time to live: ?ttl=30m or {TTL_HEADER} (remove an expiry with DELETE)"
            ))
            .into());
        }
        t => t,
    };
    change(&state, &ks, &key, Some(ttl), Method::PUT, &uri, &headers).await
}

/// `DELETE /v1/ttl/{keyspace}/{key}`: see [`put`].
pub async fn delete(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
) -> std::result::Result<Response, ApiError> {
    let (ks, key, _) = crate::api::resolve(&state, &uri, "ttl", TTL_POLICIES, "expiry changes")?;
    if uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(
            AtollError::BadRequest("DELETE /v1/ttl takes no query parameters".into()).into(),
        );
    }
    if live(&state, &ks, &key)?.expires_ms.is_none() {
        return Ok(axum::Json(json!({
            "region": state.store.region().as_str(),
            "changed": false,
            "expires_at_ms": null,
            "ttl_ms": null,
        }))
        .into_response());
    }
    change(&state, &ks, &key, None, Method::DELETE, &uri, &headers).await
}

async fn change(
    state: &AppState,
    ks: &str,
    key: &[u8],
    ttl: Option<Ttl>,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> std::result::Result<Response, ApiError> {
    let token = crate::session::token_from(state, headers)?;
    match crate::api::write(state, ks, key, Intent::Expire { ttl }).await {
        Ok(out) => {
            let now = state.store.now_ms();
            let ttl_ms = match &out.state {
                KeyState::Lww(r) => expiry_json(r, now)["ttl_ms"].clone(),
                _ => Value::Null,
            };
            Ok(crate::api::ack_with(
                state,
                ks,
                key,
                &out,
                token,
                &[("changed", json!(true)), ("ttl_ms", ttl_ms)],
            )?)
        }
        Err(e) => crate::api::refused(state, e, method, uri, headers, Default::default()).await,
    }
}
