//! The router's admin API (its own listener), and the state file that makes drains and weights
//! survive a restart.
//!
//! Every route requires `Authorization: Bearer <token>` except `GET /healthz`, `GET /metrics`
//! and `GET /v1/global/metrics` (metrics carry no secrets and Prometheus scrapes them without
//! credentials; the global one is fanned out at most once a second whoever asks, see
//! [`crate::global`]) and the dashboard's static files (`GET /dashboard`, `/dashboard/app.js`,
//! `/dashboard/app.css`: no data in them). `GET /v1/global/status` needs the token: it shows
//! the cluster's internals (drains and their reasons, roles, keys of recent conflicts, drill
//! results, addresses). The dashboard page sends the token it is given in its URL fragment
//! (`/dashboard#token=...`, which browsers never send to a server) as a bearer header from the
//! page's own script, keeps it in the tab's `sessionStorage` and removes it from the address
//! bar; without it, the page shows what the open metrics show and asks for the token. A missing
//! or wrong token gets `401 ATOLL-UNAUTHORIZED`; the token is compared in constant time.
//!
//! | route | body | does |
//! | --- | --- | --- |
//! | `GET /healthz` | | `{"status":"serving"}` |
//! | `GET /metrics` | | OpenMetrics text |
//! | `GET /v1/router/status` | | every region's health as this router sees it (`passive` included), its fencing role, epoch and the primary it names, drains, ramps, every name's mode, and where writes go first (`primary`, `primary_claims`) |
//! | `POST /v1/router/regions/{region}/drain` | `{"reason": "...", "for": "30m"}` (`for` optional) | no new traffic to the region until undrained (or `for` has passed) |
//! | `POST /v1/router/regions/{region}/undrain` | none, or `{"reason": "..."}` | lifts the drain |
//! | `PUT /v1/router/names/{name}/weights/{region}` | `{"weight": n}` | sets a weighted name's weight |
//! | `GET /v1/global/status` | | every region's status, the router's view of it, reachability, lag, RTT and clock-offset matrices, drains, recent conflicts, drill outcomes ([`crate::global`]) |
//! | `GET /v1/global/metrics` | | every region's metrics with a `region` label and `atoll_region_up`, plus the router's (text format 0.0.4) |
//! | `GET /dashboard` | | the web dashboard (HTML; `app.js`, `app.css` beside it) |
//!
//! Bodies are strict JSON (unknown fields are errors). Bad input gets a 4xx JSON error
//! (`{"error": {"code", "message", "hint", "retryable"}}`) and changes nothing. Every change is
//! written to `<state-dir>/router-state.json` (versioned, written atomically: temporary file,
//! fsync, rename, fsync of the directory) before it is acknowledged; if that write fails, the
//! change is undone and the answer is `500 ATOLL-STORAGE`.

use crate::codes;
use crate::codes::RouterCode;
use crate::global::GlobalView;
use crate::proxy::internal_error;
use crate::runtime::RouterCtx;
use crate::state::{DRAINS_VERSION, Persisted};
use atoll_core::AtollError;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard};

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "router-state.json";

/// Longest drain `for` accepted: one year.
const MAX_DRAIN_MS: u64 = 366 * 86_400_000;

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory. A crash leaves the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The persisted drains and weights (`<state-dir>/router-state.json`). Changes are serialized by
/// [`StateStore::lock`].
pub struct StateStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl StateStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(STATE_FILE),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Held while a change is made and persisted, so changes are written in order.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Reads the file (`None` if there is none yet). A file that cannot be read or decoded is an
    /// error, never silently ignored: starting without its drains would send traffic to regions
    /// an operator took out.
    pub fn load(&self) -> Result<Option<Persisted>, String> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        decode(&text).map(Some)
    }

    /// Writes `p` atomically.
    pub async fn save(&self, p: &Persisted) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Decodes a state file of any supported version (there is one: 1).
pub fn decode(bytes: &[u8]) -> Result<Persisted, String> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let v: VersionOnly = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a router state file ({e}); fix it or move it away"))?;
    if v.version > DRAINS_VERSION {
        return Err(format!(
            "written by a newer atoll (format version {}; this build reads up to {DRAINS_VERSION}); run a newer build",
            v.version
        ));
    }
    // Version 1 is the current shape; an older version would be converted here.
    serde_json::from_slice(bytes).map_err(|e| format!("corrupt router state file: {e}"))
}

/// Compares two byte strings in time that depends only on `expected`'s length.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ e;
    }
    diff == 0
}

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    ctx: RouterCtx,
    store: Arc<StateStore>,
    token: Arc<str>,
    global: Arc<GlobalView>,
}

impl AdminState {
    pub fn new(
        ctx: RouterCtx,
        store: Arc<StateStore>,
        token: String,
        global: Arc<GlobalView>,
    ) -> Self {
        Self {
            ctx,
            store,
            token: token.trim().into(),
            global,
        }
    }
}

/// Routes served without the admin token (GET only).
const OPEN_ROUTES: [&str; 6] = [
    "/healthz",
    "/metrics",
    "/v1/global/metrics",
    "/dashboard",
    "/dashboard/app.js",
    "/dashboard/app.css",
];

/// An admin API error: one of the router's codes with its message, or an error of the router's
/// state (answered `500` with its own code).
enum AdminError {
    Code(RouterCode, String),
    State(AtollError),
}

impl AdminError {
    fn bad(message: impl Into<String>) -> Self {
        Self::Code(codes::BAD_REQUEST, message.into())
    }

    fn malformed(message: impl Into<String>) -> Self {
        Self::Code(codes::MALFORMED_BODY, message.into())
    }

    fn unknown_region(ctx: &RouterCtx, region: &str) -> Self {
        let known: Vec<&str> = ctx
            .state
            .regions()
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        Self::Code(
            codes::UNKNOWN_REGION,
            format!("unknown region `{region}` (known: {})", known.join(", ")),
        )
    }

    fn storage(e: std::io::Error, path: &Path) -> Self {
        Self::Code(
            codes::STORAGE,
            format!(
                "cannot persist the change to {}: {e}; nothing was changed",
                path.display()
            ),
        )
    }

    fn from_state(e: AtollError) -> Self {
        match e {
            AtollError::BadRequest(m) => Self::bad(m),
            other => Self::State(other),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            Self::Code(code, message) => code.response(message),
            Self::State(e) => internal_error(&e),
        }
    }
}

type AdminResult = Result<Response, AdminError>;

/// Parses a strict JSON body. An empty body is `{}`.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| AdminError::malformed(format!("bad JSON body: {e}")))
}

/// Parses a duration like `90s`, `30m`, `2h`, `1d`, `1h30m` or `500ms`.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration like 90s, 30m, 2h, 1d or 1h30m"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let mult: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"
                ));
            }
        };
        total = n
            .checked_mul(mult)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| format!("`{s}` is too long"))?;
    }
    if total == 0 {
        return Err("a duration must be more than zero".into());
    }
    Ok(total)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    reason: String,
    #[serde(default, rename = "for")]
    for_: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UndrainBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let open = req.method() == Method::GET && OPEN_ROUTES.contains(&req.uri().path());
    if open {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110).
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        })
        .map(str::trim);
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), s.token.as_bytes()));
    if !ok {
        let mut resp = codes::UNAUTHORIZED.response(if given.is_none() {
            "the admin API needs `Authorization: Bearer <token>`"
        } else {
            "wrong admin token"
        });
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    next.run(req).await
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "serving"})).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    s.ctx.metrics.refresh(&s.ctx.state, s.ctx.now_ms());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.ctx.metrics.encode(),
    )
        .into_response()
}

fn status_json(s: &AdminState) -> Result<serde_json::Value, AdminError> {
    let st = s
        .ctx
        .state
        .status(s.ctx.now_ms())
        .map_err(AdminError::from_state)?;
    serde_json::to_value(st).map_err(|e| AdminError::bad(e.to_string()))
}

async fn status(State(s): State<AdminState>) -> AdminResult {
    Ok(axum::Json(status_json(&s)?).into_response())
}

fn region_status(s: &AdminState, region: &str) -> Result<serde_json::Value, AdminError> {
    let all = status_json(s)?;
    Ok(all["regions"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["region"] == region))
        .cloned()
        .unwrap_or(serde_json::Value::Null))
}

/// Applies `change` and persists it; undoes it if it cannot be persisted.
async fn change(
    s: &AdminState,
    apply: impl FnOnce() -> Result<(), AtollError>,
) -> Result<(), AdminError> {
    let _guard = s.store.lock().await;
    let before = s.ctx.state.persisted().map_err(AdminError::from_state)?;
    apply().map_err(AdminError::from_state)?;
    let after = s.ctx.state.persisted().map_err(AdminError::from_state)?;
    if let Err(e) = s.store.save(&after).await {
        let _ = s.ctx.state.restore(before);
        tracing::error!(file = %s.store.path().display(), "cannot persist a router change, undone: {e}");
        return Err(AdminError::storage(e, s.store.path()));
    }
    s.ctx.metrics.refresh(&s.ctx.state, s.ctx.now_ms());
    Ok(())
}

async fn drain(
    State(s): State<AdminState>,
    UrlPath(region): UrlPath<String>,
    body: Bytes,
) -> AdminResult {
    if s.ctx.state.region(&region).is_none() {
        return Err(AdminError::unknown_region(&s.ctx, &region));
    }
    let b: DrainBody = parse_body(&body)?;
    let now = s.ctx.now_ms();
    let until = match &b.for_ {
        None => None,
        Some(d) => {
            let ms = parse_duration_ms(d).map_err(|e| AdminError::bad(format!("`for`: {e}")))?;
            if ms > MAX_DRAIN_MS {
                return Err(AdminError::bad(
                    "`for`: a timed drain lasts at most 366 days; omit `for` to drain until undrained",
                ));
            }
            Some(now.saturating_add(ms))
        }
    };
    change(&s, || s.ctx.state.drain(&region, &b.reason, until, now)).await?;
    tracing::warn!(region = %region, reason = %b.reason, until_ms = ?until, "region drained by an operator");
    Ok(axum::Json(region_status(&s, &region)?).into_response())
}

async fn undrain(
    State(s): State<AdminState>,
    UrlPath(region): UrlPath<String>,
    body: Bytes,
) -> AdminResult {
    if s.ctx.state.region(&region).is_none() {
        return Err(AdminError::unknown_region(&s.ctx, &region));
    }
    let b: UndrainBody = parse_body(&body)?;
    change(&s, || s.ctx.state.undrain(&region)).await?;
    tracing::info!(region = %region, reason = ?b.reason, "region undrained by an operator");
    Ok(axum::Json(region_status(&s, &region)?).into_response())
}

async fn set_weight(
    State(s): State<AdminState>,
    UrlPath((name, region)): UrlPath<(String, String)>,
    body: Bytes,
) -> AdminResult {
    let rc = s.ctx.state.config();
    let Some(rn) = rc
        .name(&name)
        .or_else(|| rc.names.iter().find(|n| n.name == name))
        .cloned()
    else {
        let known: Vec<&str> = rc.names.iter().map(|n| n.name.as_str()).collect();
        return Err(AdminError::Code(
            codes::UNKNOWN_ROUTED_NAME,
            format!("unknown routed name `{name}` (known: {})", known.join(", ")),
        ));
    };
    if s.ctx.state.region(&region).is_none() {
        return Err(AdminError::unknown_region(&s.ctx, &region));
    }
    let b: WeightBody = parse_body(&body)?;
    change(&s, || s.ctx.state.set_weight(&rn.fqdn, &region, b.weight)).await?;
    tracing::info!(name = %rn.fqdn, region = %region, weight = b.weight, "weight set by an operator");
    let all = status_json(&s)?;
    let ns = all["names"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == rn.fqdn.as_str()))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    Ok(axum::Json(ns).into_response())
}

async fn global_status(State(s): State<AdminState>) -> Response {
    let doc = s.global.status().await;
    axum::Json(doc.as_ref()).into_response()
}

async fn global_metrics(State(s): State<AdminState>) -> Response {
    let text = s.global.metrics().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text.as_ref().clone(),
    )
        .into_response()
}

/// The dashboard's static files: no data, no inline script (the policy forbids it), nothing
/// from another origin.
fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard_html() -> Response {
    static_file("text/html; charset=utf-8", crate::global::DASHBOARD_HTML)
}

async fn dashboard_js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        crate::global::DASHBOARD_JS,
    )
}

async fn dashboard_css() -> Response {
    static_file("text/css; charset=utf-8", crate::global::DASHBOARD_CSS)
}

async fn not_found() -> Response {
    codes::NOT_FOUND.response("no such admin route")
}

async fn method_not_allowed() -> Response {
    codes::METHOD_NOT_ALLOWED.response("method not allowed on this admin route")
}

/// The admin API as an axum app.
pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/router/status", get(status))
        .route("/v1/router/regions/{region}/drain", post(drain))
        .route("/v1/router/regions/{region}/undrain", post(undrain))
        .route("/v1/router/names/{name}/weights/{region}", put(set_weight))
        .route("/v1/global/status", get(global_status))
        .route("/v1/global/metrics", get(global_metrics))
        .route("/dashboard", get(dashboard_html))
        .route("/dashboard/app.js", get(dashboard_js))
        .route("/dashboard/app.css", get(dashboard_css))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        for bad in [
            "",
            "m",
            "30",
            "30x",
            "-5m",
            "0s",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn state_file_roundtrip_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let mut p = Persisted {
            version: DRAINS_VERSION,
            ..Persisted::default()
        };
        p.drains.insert(
            "us-east-1".into(),
            crate::state::Drain {
                reason: "maintenance".into(),
                since_ms: 1,
                until_ms: None,
            },
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(store.save(&p)).unwrap();
        assert_eq!(store.load().unwrap(), Some(p));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(STATE_FILE)]);
        std::fs::write(
            store.path(),
            br#"{"version": 2, "drains": {}, "weights": {}}"#,
        )
        .unwrap();
        assert!(store.load().unwrap_err().contains("newer"));
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(store.load().is_err());
    }
}
