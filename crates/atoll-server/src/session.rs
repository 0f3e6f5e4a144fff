//! The read gate of session and bounded-staleness reads (`docs/design/session-consistency.md`).
//!
//! A kv, counter or set read may present a session token (`X-Atoll-Session`) and a staleness
//! bound (`max_staleness=`, or the keyspace's `max_staleness`). Before the key is read,
//! [`gate`] decides: serve; wait (woken at every commit, at most `wait_ms`) until this region
//! has applied what the token names; forward the read to a region known to have it
//! (`on_stale=forward`); or answer `503 ATOLL-STALE`, naming how far behind this region is and
//! where the data is. A token that cannot be honoured (garbled, another cluster, an unknown
//! region, writes nobody made) is `400 ATOLL-BAD-SESSION-TOKEN`, before anything is read.
//! Every read answer then carries the token to present next ([`decorate_read`]) and the region's
//! staleness bound; every write answer its token ([`write_token`]).

use crate::api::{AppState, STALENESS_HEADER};
use atoll_core::session::{Behind, SessionCheck, SessionToken, within_staleness};
use atoll_core::{AtollError, RegionId, Result};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// The session token header, on requests and answers.
pub const SESSION_HEADER: &str = "x-atoll-session";

/// How often a waiting session read looks again without a commit waking it (a peer's heartbeat
/// can prove a token forged; heartbeats wake nothing).
const RECHECK: Duration = Duration::from_millis(50);

/// What session reads share in a region.
#[derive(Default)]
pub struct Sessions {
    /// Forwards reads this region cannot serve (`on_stale=forward`), made at the first one.
    forwarder: std::sync::OnceLock<crate::forward::Forwarder>,
    /// The token a read that presents none answers with, and the store's visible generation it
    /// was made at (most reads present none: they share one encoding until the next batch).
    plain: std::sync::Mutex<Option<(u64, HeaderValue)>>,
}

/// The query parameters of a kv, counter or set read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadParams {
    /// `consistency=home` (owned keyspaces).
    pub at_home: bool,
    /// `wait_ms=`: how long a session read may wait (default `[api] session_wait`).
    pub wait_ms: Option<u64>,
    /// `max_staleness=` (a duration: `2s`, `500ms`).
    pub max_staleness_ms: Option<u64>,
    /// `on_stale=forward` (default `refuse`).
    pub forward: bool,
}

fn bad(msg: String) -> AtollError {
    AtollError::BadRequest(msg)
}

/// Reads the query of a kv, counter or set read; an unknown parameter or a bad value is a
/// `400` naming it.
pub fn read_params(uri: &Uri) -> Result<ReadParams> {
    let mut p = ReadParams::default();
    for kv in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        match kv.split_once('=') {
            Some(("consistency", "home")) => p.at_home = true,
            Some(("consistency", "local")) => p.at_home = false,
            Some(("consistency", other)) => {
                return Err(bad(format!(
                    "consistency=`{other}` is not a read consistency: use local (the default) or home (owned keyspaces); session reads present X-Atoll-Session, bounded ones say max_staleness=, and strong keyspaces are always linearizable"
                )));
            }
            Some(("wait_ms", v)) => {
                let ms: u64 = v.parse().map_err(|_| {
                    bad(format!(
                        "wait_ms=`{v}` is not a whole number of milliseconds"
                    ))
                })?;
                if ms > atoll_config::SESSION_WAIT_MAX_MS {
                    return Err(bad(format!(
                        "wait_ms={ms} is over the limit of {} ms",
                        atoll_config::SESSION_WAIT_MAX_MS
                    )));
                }
                p.wait_ms = Some(ms);
            }
            Some(("max_staleness", v)) => {
                let ms = atoll_config::duration::parse_ms(v)
                    .map_err(|e| bad(format!("max_staleness=`{v}`: {e}")))?;
                if !atoll_config::MAX_STALENESS_MS.contains(&ms) {
                    return Err(bad(format!(
                        "max_staleness=`{v}` is out of range: 1ms to 1d"
                    )));
                }
                p.max_staleness_ms = Some(ms);
            }
            Some(("on_stale", "forward")) => p.forward = true,
            Some(("on_stale", "refuse")) => p.forward = false,
            Some(("on_stale", other)) => {
                return Err(bad(format!(
                    "on_stale=`{other}`: use refuse (the default: 503 ATOLL-STALE) or forward (to a region that has the data)"
                )));
            }
            _ => {
                return Err(bad(format!(
                    "unknown query parameter `{kv}`: reads take consistency=local|home, wait_ms=N, max_staleness=DURATION and on_stale=refuse|forward"
                )));
            }
        }
    }
    Ok(p)
}

/// The session token a request presents (`None` without the header). A bad one is
/// `400 ATOLL-BAD-SESSION-TOKEN`, before anything is read or written.
pub fn token_from(state: &AppState, headers: &HeaderMap) -> Result<Option<SessionToken>> {
    let Some(v) = headers.get(SESSION_HEADER) else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| AtollError::BadSessionToken("not ASCII".into()));
    text.and_then(|t| decode_token(state, t))
        .map(Some)
        .inspect_err(|_| {
            state.metrics.consistency_read("session", "bad-token");
        })
}

/// Reads a token as this region honours it: of this cluster, naming its regions, and naming no
/// more of this region's own writes than it ever handed out.
pub fn decode_token(state: &AppState, text: &str) -> Result<SessionToken> {
    let config = &state.config;
    let t = SessionToken::decode(text, &config.cluster.name, |r| {
        match state.membership.get() {
            // A region removed from the cluster still made the writes a token names.
            Some(m) => m.is_origin(r),
            None => config.region(r.as_str()).is_some(),
        }
    })?;
    // This region is the authority on its own writes: a claim beyond every sequence number it
    // handed out names no write (checked here for writes too).
    let me = state.store.region();
    let claimed = t.seen().get(me);
    if claimed == 0 {
        return Ok(t);
    }
    let issued = state.store.visible_applied().get(me);
    if claimed > issued {
        return Err(AtollError::BadSessionToken(format!(
            "the token names write {claimed} of `{me}`, which has made only {issued}: it was not issued by this cluster as it is now (forged, or from before `{me}` lost its data)"
        )));
    }
    Ok(t)
}

/// What the gate decided.
pub enum Gate {
    /// Read here.
    Serve,
    /// Answer this instead (a forwarded read's answer, or `ATOLL-STALE` with its details).
    Answer(Response),
}

/// Decides a read of keyspace `ks` before the key is read (see the module's text).
pub async fn gate(
    state: &AppState,
    ks: &str,
    params: &ReadParams,
    token: Option<&SessionToken>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Gate> {
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        if state.store.applied_dominates(token.seen()) {
            state.metrics.consistency_read("session", "served");
        } else if let Some(answer) = wait_for(state, token, params, uri, headers).await? {
            return Ok(Gate::Answer(answer));
        }
    }
    let bound = params.max_staleness_ms.or_else(|| {
        state
            .store
            .keyspace(ks)
            .ok()
            .and_then(|k| k.max_staleness_ms)
    });
    if let Some(max_ms) = bound {
        let Some(rep) = state.replicator.get() else {
            // No replication: nothing to lag behind.
            state.metrics.consistency_read("bounded", "served");
            return Ok(Gate::Serve);
        };
        // The published bound never understates; only a refusal is worth the driver's lock.
        if within_staleness(rep.staleness_ms(), max_ms) {
            state.metrics.consistency_read("bounded", "served");
            return Ok(Gate::Serve);
        }
        let staleness = rep.staleness_now();
        if within_staleness(staleness, max_ms) {
            state.metrics.consistency_read("bounded", "served");
            return Ok(Gate::Serve);
        }
        let text = staleness.map_or_else(
            || "has never held every region's writes".to_string(),
            |ms| format!("last held every region's writes {ms} ms ago"),
        );
        let err = AtollError::Stale(format!(
            "this region ({}) {text}, over the read's max_staleness of {max_ms} ms",
            state.store.region()
        ));
        let holders = rep.peers_within_staleness(max_ms);
        if let Some(answer) = forward(state, params, &holders, uri, headers, &err).await? {
            state.metrics.consistency_read("bounded", "forwarded");
            return Ok(Gate::Answer(answer));
        }
        state.metrics.consistency_read("bounded", "stale");
        let details = json!({
            "staleness_ms": staleness,
            "max_staleness_ms": max_ms,
            "holders": holders_json(state, &holders),
        });
        return Ok(Gate::Answer(stale_answer(&err, details)));
    }
    Ok(Gate::Serve)
}

/// Waits until this region has applied `token` (then `None`: serve), or answers.
async fn wait_for(
    state: &AppState,
    token: &SessionToken,
    params: &ReadParams,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Response>> {
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(state.config.api.session_wait_ms));
    let Some((behind, holders)) = wait_applied(state, token, wait).await? else {
        return Ok(None);
    };
    let err = AtollError::Stale(stale_message(state, &behind, &holders, wait));
    if let Some(answer) = forward(state, params, &holders, uri, headers, &err).await? {
        state.metrics.consistency_read("session", "forwarded");
        return Ok(Some(answer));
    }
    state.metrics.consistency_read("session", "stale");
    let details = json!({
        "behind": behind.iter().map(|b| json!({
            "origin": b.origin.as_str(),
            "applied": b.applied,
            "wanted": b.wanted,
        })).collect::<Vec<_>>(),
        "waited_ms": u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "holders": holders_json(state, &holders),
    });
    Ok(Some(stale_answer(&err, details)))
}

/// Waits (at most `wait`) until this region has applied `token`: `None` then; what it still
/// lacks, and the peers known to hold it, when the wait is up; a forged token's error as soon as
/// it is proven.
async fn wait_applied(
    state: &AppState,
    token: &SessionToken,
    wait: Duration,
) -> Result<Option<(Vec<Behind>, Vec<RegionId>)>> {
    let started = Instant::now();
    let deadline = started + wait;
    let rep = state.replicator.get();
    let mark = rep.map(|r| r.session_mark()).transpose()?;
    let notify = rep.map(|r| r.changed.clone());
    let served = |state: &AppState| {
        state
            .metrics
            .session_wait
            .observe(started.elapsed().as_secs_f64());
        state.metrics.consistency_read("session", "waited");
    };
    // The full check (the replication lock: peers' proofs and holders) at most every RECHECK;
    // a commit in between only needs the store's applied vector, which costs no lock of the
    // replicator's.
    let mut full_check_due = Instant::now();
    let (behind, holders) = loop {
        // Registered before the check, so a commit between the two still wakes us.
        let mut notified = notify.as_deref().map(|n| Box::pin(n.notified()));
        if let Some(f) = notified.as_mut() {
            f.as_mut().enable();
        }
        let now = Instant::now();
        if now < full_check_due && now < deadline {
            if state.store.applied_dominates(token.seen()) {
                served(state);
                return Ok(None);
            }
        } else {
            full_check_due = now + RECHECK;
            let decision = match (rep, &mark) {
                (Some(r), Some(mark)) => r.session_check(token, mark)?,
                _ => atoll_core::session::check(
                    token,
                    state.store.region(),
                    &state.store.applied(),
                    state.store.visible_applied().get(state.store.region()),
                    &[],
                ),
            };
            match decision {
                SessionCheck::Satisfied => {
                    served(state);
                    return Ok(None);
                }
                SessionCheck::Impossible {
                    origin,
                    claimed,
                    head,
                } => {
                    state.metrics.consistency_read("session", "bad-token");
                    return Err(AtollError::BadSessionToken(format!(
                        "the token names write {claimed} of `{origin}`, which has made only {head}: it was not issued by this cluster as it is now (forged, or from before `{origin}` lost its data)"
                    )));
                }
                SessionCheck::Behind { behind, holders } => {
                    if now >= deadline {
                        break (behind, holders);
                    }
                }
            }
        }
        // Until the next commit, the next full check or the deadline, whichever comes first.
        let nap = full_check_due.min(deadline).saturating_duration_since(now);
        match notified {
            Some(f) => {
                let _ = tokio::time::timeout(nap, f).await;
            }
            None => tokio::time::sleep(nap).await,
        }
    };
    state
        .metrics
        .session_wait
        .observe(started.elapsed().as_secs_f64());
    Ok(Some((behind, holders)))
}

/// `ATOLL.WAIT` of the RESP front: [`wait_applied`] with the read's answer as an error.
pub async fn wait_for_token(state: &AppState, text: &str, wait_ms: Option<u64>) -> Result<()> {
    let token = decode_token(state, text).inspect_err(|_| {
        state.metrics.consistency_read("session", "bad-token");
    })?;
    if token.is_empty() || state.store.applied_dominates(token.seen()) {
        state.metrics.consistency_read("session", "served");
        return Ok(());
    }
    let wait = Duration::from_millis(
        wait_ms
            .unwrap_or(state.config.api.session_wait_ms)
            .min(atoll_config::SESSION_WAIT_MAX_MS),
    );
    match wait_applied(state, &token, wait).await? {
        None => Ok(()),
        Some((behind, holders)) => {
            state.metrics.consistency_read("session", "stale");
            Err(AtollError::Stale(stale_message(
                state, &behind, &holders, wait,
            )))
        }
    }
}

/// `ATOLL.SESSION` of the RESP front: the token a read that presents none answers with.
pub fn region_token(state: &AppState) -> String {
    plain_token(state)
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .unwrap_or_default()
}

fn stale_message(
    state: &AppState,
    behind: &[Behind],
    holders: &[RegionId],
    wait: Duration,
) -> String {
    let parts: Vec<String> = behind
        .iter()
        .map(|b| {
            format!(
                "`{}` up to {} of the {} the token names",
                b.origin, b.applied, b.wanted
            )
        })
        .collect();
    let where_ = if holders.is_empty() {
        "no peer is known to have it yet".to_string()
    } else {
        let named: Vec<String> = holders
            .iter()
            .map(|h| match state.config.region(h.as_str()) {
                Some(r) => format!("`{h}` (http://{})", r.api),
                None => format!("`{h}`"),
            })
            .collect();
        format!("it is at {}", named.join(", "))
    };
    format!(
        "this region ({}) has applied {} after waiting {} ms; {where_}",
        state.store.region(),
        parts.join(", "),
        wait.as_millis()
    )
}

fn holders_json(state: &AppState, holders: &[RegionId]) -> Vec<serde_json::Value> {
    holders
        .iter()
        .map(|h| {
            json!({
                "region": h.as_str(),
                "api": state.config.region(h.as_str()).map(|r| format!("http://{}", r.api)),
            })
        })
        .collect()
}

/// `503 ATOLL-STALE`: the usual error body, with the details under `"stale"`.
fn stale_answer(err: &AtollError, details: serde_json::Value) -> Response {
    let mut body = serde_json::to_value(atoll_core::ErrorBody::from(err)).unwrap_or_default();
    body["stale"] = details;
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// Forwards the read to the first of `holders` when it asks for it and was not forwarded
/// already; `None`: answer here.
async fn forward(
    state: &AppState,
    params: &ReadParams,
    holders: &[RegionId],
    uri: &Uri,
    headers: &HeaderMap,
    refusal: &AtollError,
) -> Result<Option<Response>> {
    if !params.forward || crate::forward::is_forwarded(headers) {
        return Ok(None);
    }
    let Some((target, api)) = holders
        .iter()
        .find_map(|h| state.config.region(h.as_str()).map(|r| (h, r.api)))
    else {
        return Ok(None);
    };
    let forwarder = state.sessions.forwarder.get_or_init(|| {
        crate::forward::Forwarder::new(
            state.store.region().clone(),
            crate::forward::FORWARD_TIMEOUT,
        )
    });
    let w = crate::forward::Write {
        method: Method::GET,
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| uri.path(), |p| p.as_str()),
        headers,
        body: Bytes::new(),
    };
    forwarder
        .forward(target, api, w, refusal.clone())
        .await
        .map(Some)
}

/// Adds to a read's answer the token to present next (the presented one merged with what this
/// region had applied: everything the read may have reflected) and, unless the answer states a
/// more specific one already, the region's staleness bound.
pub fn decorate_read(
    state: &AppState,
    mut resp: Response,
    token: Option<SessionToken>,
) -> Response {
    let value = match token.filter(|t| !t.is_empty()) {
        Some(mut next) => {
            next.merge_vector(&state.store.visible_applied());
            HeaderValue::from_str(&next.encode(&state.config.cluster.name)).ok()
        }
        None => plain_token(state),
    };
    let headers = resp.headers_mut();
    if let Some(v) = value {
        headers.insert(HeaderName::from_static(SESSION_HEADER), v);
    }
    if !headers.contains_key(STALENESS_HEADER) {
        let staleness = match state.replicator.get() {
            Some(rep) => rep.staleness_ms(),
            None => Some(0),
        };
        let text = staleness.map_or_else(|| "unknown".to_string(), |ms| ms.to_string());
        if let Ok(v) = HeaderValue::from_str(&text) {
            headers.insert(HeaderName::from_static(STALENESS_HEADER), v);
        }
    }
    resp
}

/// The token of a read that presented none: the visible applied vector, encoded once per
/// generation of it.
fn plain_token(state: &AppState) -> Option<HeaderValue> {
    // The generation first: the vector read after it is at least as new.
    let generation = state.store.visible_generation();
    if let Ok(cache) = state.sessions.plain.lock()
        && let Some((g, v)) = cache.as_ref()
        && *g == generation
    {
        return Some(v.clone());
    }
    let token = SessionToken::from_vector(state.store.visible_applied());
    let v = HeaderValue::from_str(&token.encode(&state.config.cluster.name)).ok()?;
    if let Ok(mut cache) = state.sessions.plain.lock() {
        *cache = Some((generation, v.clone()));
    }
    Some(v)
}

/// The token a write answers with: the presented one raised by the write itself.
pub fn write_token(
    state: &AppState,
    token: Option<SessionToken>,
    seq: u64,
) -> Option<(HeaderName, HeaderValue)> {
    let mut next = token.unwrap_or_default();
    next.observe(state.store.region(), seq);
    HeaderValue::from_str(&next.encode(&state.config.cluster.name))
        .ok()
        .map(|v| (HeaderName::from_static(SESSION_HEADER), v))
}
