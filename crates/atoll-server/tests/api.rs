//! The client HTTP API v1, driven in-process through the axum router (no sockets).
//!
//! Every request goes through [`Harness::send`], which also checks the response against
//! `openapi.json`: the route and method are documented, the status is documented for that
//! operation, the JSON body validates against the documented schema (including the error codes
//! listed for that status), documented required headers are present, no undocumented
//! `X-Atoll-*` header is sent, and `X-Atoll-Region` names the serving region.

use atoll_config::Config;
use atoll_core::AtollError;
use atoll_core::RegionId;
use atoll_core::causal::{CausalContext, Dot};
use atoll_core::clock::ManualClock;
use atoll_core::codec::{decode_context_token, encode_context_token};
use atoll_core::crdt::lww::LwwRegister;
use atoll_core::hlc::Timestamp;
use atoll_core::op::{Intent, KeyState, OpEntry};
use atoll_server::api::{AppState, ROUTES, router};
use atoll_server::metrics::Metrics;
use atoll_server::openapi::OPENAPI_JSON;
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tower::ServiceExt;

/// The manual clock's starting reading (2023-11-14T22:13:20Z).
const T0: u64 = 1_700_000_000_000;
const REGION: &str = "us-east-1";
const EXAMPLE: &str = include_str!("../../../examples/single-region.toml");

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct Harness {
    app: Router,
    state: Arc<AppState>,
    clock: Arc<ManualClock>,
}

impl Harness {
    /// A region serving `examples/single-region.toml`: sessions (lww), carts (mvr),
    /// ratelimits (counter), flags (set).
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// Same, with client authentication on: `tokens` is the text of a tokens file.
    fn with_tokens(tokens: &str) -> Self {
        let config = Config::parse(EXAMPLE, "single-region.toml").expect("example parses");
        let tokens = atoll_config::auth::Tokens::parse(tokens, "tokens.toml", &config)
            .expect("tokens parse");
        Self::build(config, Some(Arc::new(tokens)))
    }

    /// Same, with the parsed config adjusted by `tweak` first.
    fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::parse(EXAMPLE, "single-region.toml").expect("example parses");
        tweak(&mut config);
        Self::build(config, None)
    }

    fn build(config: Config, auth: Option<Arc<atoll_config::auth::Tokens>>) -> Self {
        let region = RegionId::new(REGION).unwrap();
        assert!(config.region(REGION).is_some());
        let clock = Arc::new(ManualClock::new(T0));
        let metrics = Arc::new(Metrics::new());
        let watch = atoll_server::watch::Watch::new(&config, &region, metrics.clone());
        let mut sopts = StoreOptions::new(region, config.keyspaces.clone());
        sopts.on_ops = Some(watch.observer());
        let store = Store::open(Arc::new(MemBackend::default()), sopts, clock.clone())
            .expect("store opens");
        let state = Arc::new(AppState {
            store: Arc::new(store),
            config: Arc::new(config),
            metrics,
            started: Instant::now(),
            serving: AtomicBool::new(true),
            replicator: OnceLock::new(),
            subscribers: atoll_server::streams::Subscribers::new(),
            auth,
            fencing: Default::default(),
            homes: Default::default(),
            strong: Default::default(),
            watch: Default::default(),
            sessions: Default::default(),
            membership: Default::default(),
        });
        let _ = state.watch.set(watch);
        Self {
            app: router(state.clone()),
            state,
            clock,
        }
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let resp = Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        assert_eq!(
            resp.header("x-atoll-region"),
            Some(REGION),
            "{method} {path}: every response names the serving region"
        );
        conforms(&method, &path, &resp);
        resp
    }

    async fn request(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(body.into()).unwrap()).await
    }

    async fn get(&self, uri: &str) -> Resp {
        self.request(Method::GET, uri, &[], Body::empty()).await
    }

    async fn put(&self, uri: &str, body: impl Into<Body>) -> Resp {
        self.request(Method::PUT, uri, &[], body).await
    }

    async fn put_ctx(&self, uri: &str, ctx: &str, body: impl Into<Body>) -> Resp {
        self.request(Method::PUT, uri, &[("x-atoll-context", ctx)], body)
            .await
    }

    async fn delete(&self, uri: &str) -> Resp {
        self.request(Method::DELETE, uri, &[], Body::empty()).await
    }

    async fn delete_ctx(&self, uri: &str, ctx: &str) -> Resp {
        self.request(
            Method::DELETE,
            uri,
            &[("x-atoll-context", ctx)],
            Body::empty(),
        )
        .await
    }

    async fn post(&self, uri: &str, body: impl Into<Body>) -> Resp {
        self.request(Method::POST, uri, &[], body).await
    }

    async fn status(&self) -> Value {
        let r = self.get("/v1/status").await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()
    }

    /// The newest sequence number of the region's operation log, read through `/v1/status`.
    async fn last_seq(&self) -> u64 {
        self.status().await["store"]["last_seq"]
            .as_u64()
            .expect("last_seq is an integer")
    }

    async fn counter(&self, key: &str) -> i64 {
        let r = self.get(&format!("/v1/counter/ratelimits/{key}")).await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()["value"].as_i64().unwrap()
    }

    async fn members(&self, key: &str) -> Vec<String> {
        let r = self.get(&format!("/v1/set/flags/{key}")).await;
        assert_eq!(r.status, StatusCode::OK);
        serde_json::from_value(r.json()["members"].clone()).unwrap()
    }
}

#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    fn context(&self) -> String {
        self.header("x-atoll-context")
            .unwrap_or_else(|| panic!("no X-Atoll-Context on {self:?}"))
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error: {self:?}"))
            .to_string()
    }

    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Asserts an error response: status, code, and a non-empty message and hint.
    #[track_caller]
    fn expect_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status.as_u16(), self.code().as_str()),
            (status, code),
            "unexpected response: {self:?}"
        );
        let e = &self.json()["error"];
        assert!(!e["message"].as_str().unwrap().is_empty());
        assert!(!e["hint"].as_str().unwrap().is_empty());
        assert_eq!(
            self.header(header::CONTENT_TYPE.as_str()),
            Some("application/json")
        );
        self
    }

    #[track_caller]
    fn expect_ok(&self) -> &Self {
        assert_eq!(self.status, StatusCode::OK, "unexpected response: {self:?}");
        self
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document, and checking responses against it
// ---------------------------------------------------------------------------------------------

fn doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON"))
}

/// Follows `$ref`s (local JSON pointers) until a non-reference object.
fn deref(v: &Value) -> &Value {
    let mut v = v;
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let ptr = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local $ref {r}"));
        v = doc()
            .pointer(ptr)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

/// Every error with its stable code, HTTP status and retryability.
fn every_error() -> Vec<AtollError> {
    let all = vec![
        AtollError::UnknownKeyspace("x".into()),
        AtollError::WrongPolicy {
            keyspace: "x".into(),
            policy: "lww".into(),
            operation: "y".into(),
        },
        AtollError::EmptyKey,
        AtollError::KeyTooLarge { len: 2, max: 1 },
        AtollError::ValueTooLarge {
            keyspace: "x".into(),
            len: 2,
            max: 1,
        },
        AtollError::RequestTooLarge {
            len: Some(2),
            max: 1,
        },
        AtollError::PeerRequestTooLarge {
            route: "x".into(),
            len: None,
            max: 1,
        },
        AtollError::MalformedBody("x".into()),
        AtollError::InvalidUtf8("x".into()),
        AtollError::BadContext("x".into()),
        AtollError::ContextAhead("x".into()),
        AtollError::SiblingLimit { count: 2, max: 1 },
        AtollError::CounterOverflow("x".into()),
        AtollError::RateLimited {
            keyspace: "x".into(),
            limit: 1,
            remaining: 0,
            reset_at_ms: 1,
            retry_after_ms: 1,
        },
        AtollError::NotFound,
        AtollError::Config("x".into()),
        AtollError::FormatTooNew {
            found: 2,
            supported: 1,
        },
        AtollError::Corrupt("x".into()),
        AtollError::Storage("x".into()),
        AtollError::ClockSkew {
            offset_ms: 2,
            max_ms: 1,
        },
        AtollError::ShuttingDown,
        AtollError::Overloaded("x".into()),
        AtollError::BadRequest("x".into()),
        AtollError::Unauthorized("x".into()),
        AtollError::Forbidden("x".into()),
        AtollError::PeerUnauthenticated("x".into()),
        AtollError::PeerIdentityMismatch {
            claimed: "x".into(),
            certified: "y".into(),
        },
        AtollError::Tls("x".into()),
        AtollError::NotPrimary {
            primary: Some("x".into()),
            primary_api: None,
            reason: "y".into(),
        },
        AtollError::Fenced {
            keyspace: "x".into(),
            detail: "y".into(),
        },
        AtollError::Passive { primary: None },
        AtollError::LeaseHeld {
            holder: "x".into(),
            remaining_ms: 1,
        },
        AtollError::DataLoss { ops: 1, ms: None },
        AtollError::ControlUnavailable("x".into()),
        AtollError::ForwardOutcomeUnknown {
            target: "x".into(),
            detail: "y".into(),
        },
        AtollError::NotHome {
            keyspace: "x".into(),
            home: "y".into(),
            home_api: None,
            reason: "z".into(),
        },
        AtollError::HomeUnavailable {
            keyspace: "x".into(),
            home: "y".into(),
            detail: "z".into(),
        },
        AtollError::RehomeRefused("x".into()),
        AtollError::BadSessionToken("x".into()),
        AtollError::Stale("x".into()),
        AtollError::NoQuorum {
            keyspace: "x".into(),
            voters: 3,
            needed: 2,
            detail: "y".into(),
        },
        AtollError::RevisionMismatch {
            keyspace: "x".into(),
            expected: 1,
            current: 2,
        },
        AtollError::StrongOutcomeUnknown {
            keyspace: "x".into(),
            detail: "y".into(),
        },
        AtollError::Bootstrapping("x".into()),
        AtollError::BootstrapBehind("x".into()),
        AtollError::Joining("x".into()),
        AtollError::NotAVoter("x".into()),
        AtollError::RegionRemoved("x".into()),
    ];
    // No wildcard: a new variant fails to compile here until it is added to the list above.
    for e in &all {
        match e {
            AtollError::UnknownKeyspace(_)
            | AtollError::WrongPolicy { .. }
            | AtollError::EmptyKey
            | AtollError::KeyTooLarge { .. }
            | AtollError::ValueTooLarge { .. }
            | AtollError::RequestTooLarge { .. }
            | AtollError::PeerRequestTooLarge { .. }
            | AtollError::MalformedBody(_)
            | AtollError::InvalidUtf8(_)
            | AtollError::BadContext(_)
            | AtollError::ContextAhead(_)
            | AtollError::SiblingLimit { .. }
            | AtollError::CounterOverflow(_)
            | AtollError::NotFound
            | AtollError::Config(_)
            | AtollError::FormatTooNew { .. }
            | AtollError::Corrupt(_)
            | AtollError::Storage(_)
            | AtollError::ClockSkew { .. }
            | AtollError::ShuttingDown
            | AtollError::Overloaded(_)
            | AtollError::BadRequest(_)
            | AtollError::Unauthorized(_)
            | AtollError::Forbidden(_)
            | AtollError::PeerUnauthenticated(_)
            | AtollError::PeerIdentityMismatch { .. }
            | AtollError::Tls(_)
            | AtollError::NotPrimary { .. }
            | AtollError::Fenced { .. }
            | AtollError::Passive { .. }
            | AtollError::LeaseHeld { .. }
            | AtollError::DataLoss { .. }
            | AtollError::ControlUnavailable(_)
            | AtollError::ForwardOutcomeUnknown { .. }
            | AtollError::NotHome { .. }
            | AtollError::HomeUnavailable { .. }
            | AtollError::RehomeRefused(_)
            | AtollError::BadSessionToken(_)
            | AtollError::Stale(_)
            | AtollError::Bootstrapping(_)
            | AtollError::BootstrapBehind(_)
            | AtollError::Joining(_)
            | AtollError::NotAVoter(_)
            | AtollError::RegionRemoved(_)
            | AtollError::NoQuorum { .. }
            | AtollError::RevisionMismatch { .. }
            | AtollError::StrongOutcomeUnknown { .. }
            | AtollError::RateLimited { .. } => {}
        }
    }
    all
}

fn error_by_code(code: &str) -> AtollError {
    every_error()
        .into_iter()
        .find(|e| e.code() == code)
        .unwrap_or_else(|| panic!("unknown error code {code}"))
}

/// The `ROUTES` template a request path is served by, if any. `{key}` takes the rest of the path
/// (possibly containing `/`, possibly empty or absent); other parameters one non-empty segment.
fn route_of(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .map(|(t, _)| *t)
        .find(|t| template_matches(t, path))
}

fn template_matches(template: &str, path: &str) -> bool {
    let Some(path) = path.strip_prefix('/') else {
        return false;
    };
    let t: Vec<&str> = template[1..].split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    for (i, ts) in t.iter().enumerate() {
        if *ts == "{key}" {
            return p.len() >= i;
        }
        let Some(ps) = p.get(i) else { return false };
        let ok = if ts.starts_with('{') {
            !ps.is_empty()
        } else {
            ts == ps
        };
        if !ok {
            return false;
        }
    }
    p.len() == t.len()
}

/// The reason of a route fallback's error message (`request rejected: <reason>`).
fn fallback_reason(message: &str) -> &str {
    message
        .strip_prefix("request rejected: ")
        .unwrap_or(message)
}

fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Checks one response against the document (see the module docs).
fn conforms(method: &Method, path: &str, resp: &Resp) {
    let what = format!("{method} {path} -> {}", resp.status);
    // Authentication decides before routing: a refusal of a path or method that is not served
    // is the documented shared response.
    let served = route_of(path).is_some_and(|t| {
        let routed = if method == Method::HEAD {
            "GET"
        } else {
            method.as_str()
        };
        ROUTES
            .iter()
            .any(|(r, methods)| *r == t && methods.contains(&routed))
    });
    let shared = match resp.status.as_u16() {
        401 => Some("Unauthorized"),
        403 => Some("Forbidden"),
        _ => None,
    };
    if let (false, Some(name)) = (served, shared) {
        check_response(
            &doc()["components"]["responses"][name],
            resp,
            &what,
            method == Method::HEAD,
        );
        return;
    }
    let Some(template) = route_of(path) else {
        assert_eq!(
            resp.status,
            StatusCode::NOT_FOUND,
            "{what}: no route, so 404"
        );
        assert_eq!(resp.code(), "ATOLL-BAD-REQUEST", "{what}");
        assert!(
            fallback_reason(&resp.message()).starts_with("no such route"),
            "{what}"
        );
        check_response(
            &doc()["components"]["responses"]["RouteNotFound"],
            resp,
            &what,
            false,
        );
        return;
    };
    let routed = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let methods = ROUTES.iter().find(|(t, _)| *t == template).unwrap().1;
    if !methods.contains(&routed) {
        assert_eq!(
            resp.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{what}: method not served"
        );
        assert_eq!(resp.code(), "ATOLL-BAD-REQUEST", "{what}");
        assert!(
            fallback_reason(&resp.message())
                .starts_with(&format!("method {method} is not allowed")),
            "{what}"
        );
        let allow = resp
            .header("allow")
            .unwrap_or_else(|| panic!("{what}: no Allow"));
        for m in methods {
            assert!(
                allow.split(',').any(|a| a.trim() == *m),
                "{what}: Allow {allow}"
            );
        }
        check_response(
            &doc()["components"]["responses"]["MethodNotAllowed"],
            resp,
            &what,
            false,
        );
        return;
    }
    let op = &doc()["paths"][template][routed.to_ascii_lowercase()];
    assert!(
        op.is_object(),
        "{what}: {template} {routed} is not documented"
    );
    let documented = op["responses"]
        .get(resp.status.as_str())
        .unwrap_or_else(|| panic!("{what}: status not documented for {routed} {template}"));
    check_response(documented, resp, &what, method == Method::HEAD);
}

fn check_response(documented: &Value, resp: &Resp, what: &str, head: bool) {
    let documented = deref(documented);
    let empty = serde_json::Map::new();
    let headers = documented["headers"].as_object().unwrap_or(&empty);
    for (name, h) in headers {
        let h = deref(h);
        match resp.header(name) {
            Some(v) => validate(&h["schema"], &json!(v), &format!("{what}: header {name}"))
                .unwrap_or_else(|e| panic!("{e}")),
            None => assert!(
                h["required"] != json!(true),
                "{what}: required header {name} missing"
            ),
        }
    }
    for name in resp.headers.keys() {
        if name.as_str().starts_with("x-atoll-") || name == header::ALLOW {
            assert!(
                headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case(name.as_str())),
                "{what}: header {name} is not documented for this response"
            );
        }
    }
    if head {
        return;
    }
    let Some(content) = documented["content"].as_object() else {
        assert!(resp.body.is_empty(), "{what}: undocumented body");
        return;
    };
    let ct = resp
        .header(header::CONTENT_TYPE.as_str())
        .unwrap_or_else(|| panic!("{what}: no Content-Type"));
    let (_, media) = content
        .iter()
        .find(|(k, _)| k.as_str() == ct || essence(k) == essence(ct))
        .unwrap_or_else(|| panic!("{what}: Content-Type {ct} is not documented"));
    if essence(ct) == "application/json" {
        let body = resp.json();
        validate(&media["schema"], &body, &format!("{what}: body"))
            .unwrap_or_else(|e| panic!("{e}\nbody: {body}"));
        if let Some(code) = body["error"]["code"].as_str() {
            let e = error_by_code(code);
            assert_eq!(body["error"]["retryable"], json!(e.retryable()), "{what}");
            assert_eq!(body["error"]["hint"], json!(e.hint()), "{what}");
            // The route fallbacks use ATOLL-BAD-REQUEST with 404/405.
            if code != "ATOLL-BAD-REQUEST" {
                assert_eq!(resp.status.as_u16(), e.http_status(), "{what}: {code}");
            }
        }
    }
}

/// A validator for the subset of JSON Schema 2020-12 the document uses. An unknown keyword is
/// a test failure, so nothing in the document goes unchecked by accident.
fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    const ANNOTATIONS: &[&str] = &[
        "description",
        "title",
        "examples",
        "default",
        "format",
        "contentEncoding",
        "contentMediaType",
    ];
    let fail = |why: String| Err(format!("{at}: {why} (value {v})"));
    let obj = schema
        .as_object()
        .ok_or_else(|| format!("{at}: schema {schema} is not an object"))?;
    let as_i128 = |x: &Value| {
        x.as_i64()
            .map(i128::from)
            .or_else(|| x.as_u64().map(i128::from))
    };
    for (kw, s) in obj {
        match kw.as_str() {
            "$ref" => validate(deref(schema), v, at)?,
            "allOf" => {
                for sub in s.as_array().unwrap() {
                    validate(sub, v, at)?;
                }
            }
            "oneOf" | "anyOf" => {
                let n = s
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|sub| validate(sub, v, at).is_ok())
                    .count();
                if (kw == "oneOf" && n != 1) || n == 0 {
                    return fail(format!("{n} of {kw} match"));
                }
            }
            "type" => {
                let types: Vec<&str> = match s {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                    _ => panic!("{at}: bad type keyword"),
                };
                let ok = types.iter().any(|t| match *t {
                    "object" => v.is_object(),
                    "array" => v.is_array(),
                    "string" => v.is_string(),
                    "boolean" => v.is_boolean(),
                    "null" => v.is_null(),
                    "integer" => v.is_i64() || v.is_u64(),
                    "number" => v.is_number(),
                    other => panic!("{at}: unknown type {other}"),
                });
                if !ok {
                    return fail(format!("not of type {s}"));
                }
            }
            "enum" => {
                if !s.as_array().unwrap().contains(v) {
                    return fail(format!("not one of {s}"));
                }
            }
            "const" => {
                if s != v {
                    return fail(format!("not {s}"));
                }
            }
            "properties" => {
                if let Some(o) = v.as_object() {
                    for (name, ps) in s.as_object().unwrap() {
                        if let Some(pv) = o.get(name) {
                            validate(ps, pv, &format!("{at}.{name}"))?;
                        }
                    }
                }
            }
            "required" => {
                if let Some(o) = v.as_object() {
                    for r in s.as_array().unwrap() {
                        if !o.contains_key(r.as_str().unwrap()) {
                            return fail(format!("missing required {r}"));
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(o) = v.as_object() {
                    let known = obj.get("properties").and_then(Value::as_object);
                    for (name, pv) in o {
                        if known.is_some_and(|k| k.contains_key(name)) {
                            continue;
                        }
                        match s {
                            Value::Bool(false) => {
                                return fail(format!("undocumented property {name}"));
                            }
                            Value::Bool(true) => {}
                            sub => validate(sub, pv, &format!("{at}.{name}"))?,
                        }
                    }
                }
            }
            "items" => {
                if let Some(a) = v.as_array() {
                    for (i, x) in a.iter().enumerate() {
                        validate(s, x, &format!("{at}[{i}]"))?;
                    }
                }
            }
            "minItems" | "maxItems" => {
                if let Some(a) = v.as_array() {
                    let n = s.as_u64().unwrap() as usize;
                    if (kw == "minItems" && a.len() < n) || (kw == "maxItems" && a.len() > n) {
                        return fail(format!("{kw} {n}"));
                    }
                }
            }
            "uniqueItems" => {
                if let Some(a) = v.as_array()
                    && s == &json!(true)
                {
                    let set: BTreeSet<String> = a.iter().map(Value::to_string).collect();
                    if set.len() != a.len() {
                        return fail("items are not unique".into());
                    }
                }
            }
            "minimum" | "maximum" => {
                if v.is_number() {
                    let ok = match (as_i128(v), as_i128(s)) {
                        (Some(x), Some(b)) => {
                            if kw == "minimum" {
                                x >= b
                            } else {
                                x <= b
                            }
                        }
                        _ => {
                            let (x, b) = (v.as_f64().unwrap(), s.as_f64().unwrap());
                            if kw == "minimum" { x >= b } else { x <= b }
                        }
                    };
                    if !ok {
                        return fail(format!("{kw} {s}"));
                    }
                }
            }
            "minLength" | "maxLength" => {
                if let Some(t) = v.as_str() {
                    let n = s.as_u64().unwrap() as usize;
                    let len = t.chars().count();
                    if (kw == "minLength" && len < n) || (kw == "maxLength" && len > n) {
                        return fail(format!("{kw} {n}"));
                    }
                }
            }
            "pattern" => {
                // The only pattern in the document: HLC timestamps.
                assert_eq!(s, "^[0-9]+\\.[0-9]+$", "{at}: validator knows one pattern");
                if let Some(t) = v.as_str() {
                    let ok = t.split_once('.').is_some_and(|(a, b)| {
                        !a.is_empty()
                            && !b.is_empty()
                            && a.bytes().all(|c| c.is_ascii_digit())
                            && b.bytes().all(|c| c.is_ascii_digit())
                    });
                    if !ok {
                        return fail(format!("does not match {s}"));
                    }
                }
            }
            a if ANNOTATIONS.contains(&a) => {}
            other => panic!("{at}: the test validator does not know keyword `{other}`"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Task 1/2: the document and the route table
// ---------------------------------------------------------------------------------------------

const OPERATION_KEYS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

#[test]
fn openapi_paths_and_methods_equal_routes() {
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, item) in doc()["paths"].as_object().unwrap() {
        let methods = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| OPERATION_KEYS.contains(&k.as_str()))
            .map(|k| k.to_ascii_uppercase())
            .collect();
        documented.insert(path.clone(), methods);
    }
    let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, methods) in ROUTES {
        let set: BTreeSet<String> = methods.iter().map(|m| m.to_string()).collect();
        assert_eq!(set.len(), methods.len(), "{path}: duplicate method");
        assert!(
            routes.insert(path.to_string(), set).is_none(),
            "{path} twice in ROUTES"
        );
    }
    assert_eq!(documented, routes);
}

#[test]
fn openapi_document_is_consistent() {
    let d = doc();
    assert!(d["openapi"].as_str().unwrap().starts_with("3.1."));
    assert_eq!(d["info"]["version"], env!("CARGO_PKG_VERSION"));
    let description = d["info"]["description"].as_str().unwrap();
    for needle in ["sibling", "X-Atoll-Context", "300", "ATOLL-CONTEXT-AHEAD"] {
        assert!(
            description.contains(needle),
            "description explains {needle}"
        );
    }

    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    if k == "$ref" {
                        out.push(x.as_str().unwrap().to_string());
                    } else {
                        refs(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(d, &mut all);
    assert!(all.len() > 50);
    for r in &all {
        assert!(
            d.pointer(r.strip_prefix('#').unwrap()).is_some(),
            "dangling {r}"
        );
    }

    // The error-code enum lists exactly atoll's error codes.
    let enum_codes: BTreeSet<&str> = d["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let codes: BTreeSet<&str> = every_error().iter().map(AtollError::code).collect();
    assert_eq!(enum_codes, codes);

    let mut operation_ids = BTreeSet::new();
    for (path, item) in d["paths"].as_object().unwrap() {
        // Every path parameter is declared, on the path item.
        let declared: BTreeSet<String> = item["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| deref(p)["name"].as_str().unwrap().to_string())
            .collect();
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_string)
            .collect();
        for p in &in_path {
            let declared_on_ops = item
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| OPERATION_KEYS.contains(&k.as_str()))
                .all(|(_, op)| {
                    op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|x| deref(x)["name"] == json!(p) && deref(x)["in"] == "path")
                });
            assert!(
                declared.contains(p) || declared_on_ops,
                "{path}: {{{p}}} not declared"
            );
        }
        for (method, op) in item.as_object().unwrap() {
            if !OPERATION_KEYS.contains(&method.as_str()) {
                continue;
            }
            let id = op["operationId"].as_str().unwrap();
            assert!(
                operation_ids.insert(id.to_string()),
                "operationId {id} twice"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{method} {path}: no 200");
            for (status, r) in responses {
                let r = deref(r);
                assert!(
                    r["headers"].get("X-Atoll-Region").is_some(),
                    "{method} {path} {status}: X-Atoll-Region not documented"
                );
                assert!(!r["description"].as_str().unwrap().is_empty());
                // Error responses list their codes, and each code maps to this status.
                let status: u16 = status.parse().unwrap();
                let schema = &r["content"]["application/json"]["schema"];
                let listed =
                    schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
                        .as_array();
                // /healthz answers 503 with its own body, not an error; a rate-limit denial
                // (429) is a decision, with the same body as an admission.
                let decision = path.starts_with("/v1/ratelimit/") && status == 429;
                if status >= 400 && path != "/healthz" && !decision {
                    let listed = listed
                        .unwrap_or_else(|| panic!("{method} {path} {status}: codes not listed"));
                    assert!(!listed.is_empty());
                    for code in listed {
                        let e = error_by_code(code.as_str().unwrap());
                        assert_eq!(e.http_status(), status, "{method} {path}: {code}");
                    }
                }
            }
        }
    }
}

/// Fills a template with an existing keyspace of the right policy and the key `k`.
fn fill(template: &str) -> String {
    let keyspace = if template.starts_with("/v1/counter/") {
        "ratelimits"
    } else if template.starts_with("/v1/ratelimit/") {
        "api-quota"
    } else if template.starts_with("/v1/set/") {
        "flags"
    } else {
        "sessions"
    };
    let uri = template
        .replace("{keyspace}", keyspace)
        .replace("{key}", "k");
    // A watch is a stream: its long-poll form answers.
    if template.starts_with("/v1/watch/") {
        format!("{uri}?wait=10ms")
    } else {
        uri
    }
}

#[tokio::test]
async fn every_route_is_served_and_no_other_method() {
    let h = Harness::new();
    // Writes first, so that the reads find a value; HEAD follows GET; DELETE last.
    let probe = [
        Method::PUT,
        Method::POST,
        Method::GET,
        Method::HEAD,
        Method::PATCH,
        Method::OPTIONS,
        Method::DELETE,
    ];
    for (template, methods) in ROUTES {
        let uri = fill(template);
        if template.starts_with("/v1/ttl/") {
            // An expiry is set on a live key (the kv route's DELETE removed it).
            h.put("/v1/kv/sessions/k", "v").await.expect_ok();
        }
        for method in &probe {
            if *method == Method::HEAD && !methods.contains(&"GET") {
                // HEAD follows GET; a POST-only route (the admin routes) has none.
                continue;
            }
            let body = match (template.split('/').nth(2), method.as_str()) {
                (Some("kv"), "PUT") => "v".to_string(),
                (Some("counter"), "POST") => r#"{"delta": 1}"#.to_string(),
                (Some("set"), "POST") => r#"{"add": ["x"]}"#.to_string(),
                _ => String::new(),
            };
            // A new expiry names its time to live (the kv route wrote the key before).
            let headers: &[(&str, &str)] = match (template.split('/').nth(2), method.as_str()) {
                (Some("ttl"), "PUT") => &[("x-atoll-ttl", "1h")],
                _ => &[],
            };
            let r = h.request(method.clone(), &uri, headers, body).await;
            let fallback = method != Method::HEAD
                && r.status.is_client_error()
                && r.header(header::CONTENT_TYPE.as_str()) == Some("application/json")
                && r.json()["error"]["message"].as_str().is_some_and(|m| {
                    let m = fallback_reason(m);
                    m.starts_with("no such route")
                        || (m.starts_with("method ") && m.contains(" is not allowed"))
                });
            if method == Method::HEAD {
                assert!(r.status.is_success(), "HEAD {uri} follows GET: {r:?}");
                assert!(r.body.is_empty());
            } else if methods.contains(&method.as_str()) {
                assert!(
                    !fallback,
                    "{method} {uri} fell through to the fallback: {r:?}"
                );
                // The admin routes are served but refuse without a lease (this harness is one
                // active-active region) and without the admin token.
                if !uri.starts_with("/v1/admin/") {
                    assert!(r.status.is_success(), "{method} {uri} is served: {r:?}");
                }
            } else {
                assert!(
                    fallback,
                    "{method} {uri} is not in ROUTES but served: {r:?}"
                );
                r.expect_error(405, "ATOLL-BAD-REQUEST");
            }
        }
    }
}

#[tokio::test]
async fn openapi_route_serves_the_document() {
    let h = Harness::new();
    let r = h.get("/v1/openapi.json").await;
    r.expect_ok();
    assert_eq!(
        r.header(header::CONTENT_TYPE.as_str()),
        Some("application/json")
    );
    assert_eq!(r.body, OPENAPI_JSON.as_bytes());
    let v = r.json();
    let version = v["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "{version}");
    assert_eq!(v["paths"].as_object().unwrap().len(), ROUTES.len());
}

// ---------------------------------------------------------------------------------------------
// lww
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lww_put_get_delete() {
    let h = Harness::new();
    assert_eq!(h.last_seq().await, 0);
    h.get("/v1/kv/sessions/alice")
        .await
        .expect_error(404, "ATOLL-NOT-FOUND");

    let ack = h.put("/v1/kv/sessions/alice", "token-1").await;
    ack.expect_ok();
    let a = ack.json();
    assert_eq!(a["region"], REGION);
    assert_eq!(a["seq"], 1);
    assert!(a.get("context").is_none(), "lww writes carry no context");
    assert!(ack.header("x-atoll-context").is_none());

    let r = h.get("/v1/kv/sessions/alice").await;
    r.expect_ok();
    assert_eq!(&r.body[..], b"token-1");
    assert_eq!(
        r.header(header::CONTENT_TYPE.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(r.header("x-atoll-origin"), Some(REGION));
    assert_eq!(r.header("x-atoll-timestamp"), a["timestamp"].as_str());

    // Non-UTF-8 bytes round trip exactly; an overwrite wins.
    let raw: Vec<u8> = vec![0x00, 0xff, 0xfe, 0x80, b'\n', 0xc3, 0x28, 0x00];
    h.put("/v1/kv/sessions/alice", raw.clone())
        .await
        .expect_ok();
    let r = h.get("/v1/kv/sessions/alice").await;
    assert_eq!(r.body.to_vec(), raw);

    // An empty body stores an empty value (not a delete).
    h.put("/v1/kv/sessions/empty", Body::empty())
        .await
        .expect_ok();
    let r = h.get("/v1/kv/sessions/empty").await;
    r.expect_ok();
    assert!(r.body.is_empty());

    // Delete, then the key is gone.
    let d = h.delete("/v1/kv/sessions/alice").await;
    d.expect_ok();
    assert_eq!(d.json()["seq"], 4);
    let r = h.get("/v1/kv/sessions/alice").await;
    r.expect_error(404, "ATOLL-NOT-FOUND");
    assert!(r.header("x-atoll-timestamp").is_none());
    // The other key is untouched; deleting a missing key is fine.
    assert!(h.get("/v1/kv/sessions/empty").await.status.is_success());
    h.delete("/v1/kv/sessions/never").await.expect_ok();
    assert_eq!(h.last_seq().await, 5);

    // lww ignores X-Atoll-Context, even a garbled one.
    h.put_ctx("/v1/kv/sessions/alice", "garbage", "back")
        .await
        .expect_ok();
    assert_eq!(&h.get("/v1/kv/sessions/alice").await.body[..], b"back");
}

#[tokio::test]
async fn lww_keys_are_percent_decoded_bytes_and_may_contain_slashes() {
    let h = Harness::new();
    // A key with slashes, written literally and read percent-encoded: one key.
    h.put("/v1/kv/sessions/users/42/cart", "a")
        .await
        .expect_ok();
    let r = h.get("/v1/kv/sessions/users%2F42%2Fcart").await;
    r.expect_ok();
    assert_eq!(&r.body[..], b"a");
    assert_eq!(h.get("/v1/kv/sessions/users%2f42%2fcart").await.body, "a");

    // Percent-encoded bytes that are not UTF-8 are a valid key, distinct from its neighbours.
    h.put("/v1/kv/sessions/%FF%00%2F", "binary")
        .await
        .expect_ok();
    assert_eq!(h.get("/v1/kv/sessions/%FF%00%2F").await.body, "binary");
    h.get("/v1/kv/sessions/%FF%00")
        .await
        .expect_error(404, "ATOLL-NOT-FOUND");
    // `%25` is a literal percent sign; `%20` a space; the query string is not part of the key.
    h.put("/v1/kv/sessions/100%25%20sure?ttl=1h", "pct")
        .await
        .expect_ok();
    assert_eq!(h.get("/v1/kv/sessions/100%25%20sure").await.body, "pct");
    // Stored under exactly those bytes.
    let st = h.state.store.get("sessions", b"100% sure").unwrap();
    assert!(matches!(st, Some(KeyState::Lww(ref r)) if r.value.as_deref() == Some(&b"pct"[..])));
    let st = h.state.store.get("sessions", &[0xff, 0x00, b'/']).unwrap();
    assert!(matches!(st, Some(KeyState::Lww(ref r)) if r.value.as_deref() == Some(&b"binary"[..])));
    // A key with a leading slash is a different key.
    h.get("/v1/kv/sessions//users/42/cart")
        .await
        .expect_error(404, "ATOLL-NOT-FOUND");
    // The keyspace name is percent-decoded too.
    assert_eq!(h.get("/v1/kv/%73essions/users/42/cart").await.body, "a");
}

// ---------------------------------------------------------------------------------------------
// mvr
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mvr_siblings_contexts_and_delete() {
    let h = Harness::new();
    let k = "/v1/kv/carts/bob";
    let r = h.get(k).await;
    r.expect_error(404, "ATOLL-NOT-FOUND");
    let empty_ctx = r.context();

    // Two writes without context: two siblings.
    let a1 = h.put(k, "apple").await;
    a1.expect_ok();
    assert_eq!(a1.json()["context"].as_str(), Some(a1.context().as_str()));
    h.put(k, vec![0xffu8, 0x00]).await.expect_ok();
    let r = h.get(k).await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES, "{r:?}");
    let body = r.json();
    let siblings = body["siblings"].as_array().unwrap();
    assert_eq!(siblings.len(), 2);
    assert_eq!(siblings[0]["value"], "apple");
    assert_eq!(siblings[0]["value_base64"], b64(b"apple"));
    assert!(
        siblings[1].get("value").is_none(),
        "non-UTF-8 has no text form"
    );
    assert_eq!(siblings[1]["value_base64"], b64(&[0xff, 0x00]));
    for s in siblings {
        assert_eq!(s["region"], REGION);
    }
    let ctx = r.context();
    assert_eq!(body["context"].as_str(), Some(ctx.as_str()));
    assert_ne!(ctx, empty_ctx);
    // The token decodes for this key and names both writes.
    let decoded = decode_context_token(&ctx, "carts", b"bob").unwrap();
    let us = RegionId::new(REGION).unwrap();
    assert!(
        decoded.contains(&Dot::new(us.clone(), 1)) && decoded.contains(&Dot::new(us.clone(), 2))
    );

    // A write with that context supersedes both.
    let w = h.put_ctx(k, &ctx, "apple,pear").await;
    w.expect_ok();
    let after_write = w.context();
    let r = h.get(k).await;
    r.expect_ok();
    assert_eq!(&r.body[..], b"apple,pear");
    assert_eq!(
        r.header(header::CONTENT_TYPE.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(r.context(), after_write);
    assert!(r.header("x-atoll-timestamp").is_none());

    // A write with a stale context (the one from before) keeps the value it did not see.
    h.put_ctx(k, &ctx, "banana").await.expect_ok();
    let r = h.get(k).await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES);
    let vals: Vec<Value> = r.json()["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].clone())
        .collect();
    assert_eq!(vals, [json!("apple,pear"), json!("banana")]);

    // A delete without context leaves live siblings alone.
    h.delete(k).await.expect_ok();
    assert_eq!(h.get(k).await.status, StatusCode::MULTIPLE_CHOICES);

    // A delete with the read's context removes them: 404, still with a context.
    let ctx = h.get(k).await.context();
    let d = h.delete_ctx(k, &ctx).await;
    d.expect_ok();
    assert!(d.header("x-atoll-context").is_some());
    let r = h.get(k).await;
    r.expect_error(404, "ATOLL-NOT-FOUND");
    let gone_ctx = r.context();
    assert_eq!(gone_ctx, d.context());
    // Writing with the 404's context gives one value again.
    h.put_ctx(k, &gone_ctx, "fresh").await.expect_ok();
    let r = h.get(k).await;
    r.expect_ok();
    assert_eq!(&r.body[..], b"fresh");
}

#[tokio::test]
async fn mvr_bad_contexts_are_400_and_change_nothing() {
    let h = Harness::new();
    let k = "/v1/kv/carts/k";
    h.put(k, "one").await.expect_ok();
    h.put(k, "two").await.expect_ok();
    let before = h.get(k).await;
    assert_eq!(before.status, StatusCode::MULTIPLE_CHOICES);
    let ctx = before.context();
    let other_key_ctx = h.put("/v1/kv/carts/other", "x").await.context();
    let seq = h.last_seq().await;

    let mut flipped = ctx.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let real = decode_context_token(&ctx, "carts", b"k").unwrap();
    let bad = [
        flipped,
        "not base64 !!".to_string(),
        "AAAA".to_string(),
        other_key_ctx,
        encode_context_token("sessions", b"k", &real).unwrap(),
        encode_context_token("carts", b"K", &real).unwrap(),
        String::new(),
    ];
    for token in &bad {
        h.put_ctx(k, token, "overwrite")
            .await
            .expect_error(400, "ATOLL-BAD-CONTEXT");
        h.delete_ctx(k, token)
            .await
            .expect_error(400, "ATOLL-BAD-CONTEXT");
    }
    // A header that is not visible ASCII.
    let req = Request::builder()
        .method(Method::PUT)
        .uri(k)
        .header("x-atoll-context", &b"caf\xc3\xa9"[..])
        .body(Body::from("overwrite"))
        .unwrap();
    h.send(req).await.expect_error(400, "ATOLL-BAD-CONTEXT");

    let after = h.get(k).await;
    assert_eq!(after.status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(after.body, before.body);
    assert_eq!(after.context(), ctx);
    assert_eq!(h.last_seq().await, seq);
    // The genuine token still works.
    h.put_ctx(k, &ctx, "merged").await.expect_ok();
    assert_eq!(h.get(k).await.body, "merged");
}

#[tokio::test]
async fn mvr_context_ahead_is_409_and_changes_nothing() {
    let h = Harness::new();
    let k = "/v1/kv/carts/k";
    h.put(k, "v").await.expect_ok();
    let before = h.get(k).await;
    before.expect_ok();
    let seq = h.last_seq().await;
    let us = RegionId::new(REGION).unwrap();

    // A well-formed token for this key naming a write of ours that never happened.
    let mut forged = CausalContext::new();
    forged.insert(Dot::new(us.clone(), 1_000_000));
    let token = encode_context_token("carts", b"k", &forged).unwrap();
    let r = h.put_ctx(k, &token, "w").await;
    r.expect_error(409, "ATOLL-CONTEXT-AHEAD");
    assert_eq!(r.json()["error"]["retryable"], true);
    h.delete_ctx(k, &token)
        .await
        .expect_error(409, "ATOLL-CONTEXT-AHEAD");

    // The real context plus a write from a region we have not heard from.
    let mut ahead = decode_context_token(&before.context(), "carts", b"k").unwrap();
    ahead.insert(Dot::new(RegionId::new("eu-west-1").unwrap(), 3));
    let token = encode_context_token("carts", b"k", &ahead).unwrap();
    h.put_ctx(k, &token, "w")
        .await
        .expect_error(409, "ATOLL-CONTEXT-AHEAD");

    // Any non-empty context for a key never written here is ahead.
    let token = encode_context_token("carts", b"new", &forged).unwrap();
    h.put_ctx("/v1/kv/carts/new", &token, "w")
        .await
        .expect_error(409, "ATOLL-CONTEXT-AHEAD");
    h.get("/v1/kv/carts/new")
        .await
        .expect_error(404, "ATOLL-NOT-FOUND");

    let after = h.get(k).await;
    assert_eq!(after.body, before.body);
    assert_eq!(after.context(), before.context());
    assert_eq!(h.last_seq().await, seq);
}

#[tokio::test]
async fn mvr_sibling_limit() {
    let h = Harness::with(|c| {
        c.keyspaces
            .iter_mut()
            .find(|k| k.name == "carts")
            .unwrap()
            .max_siblings = 2;
    });
    let k = "/v1/kv/carts/k";
    h.put(k, "a").await.expect_ok();
    h.put(k, "b").await.expect_ok();
    let before = h.get(k).await;
    assert_eq!(before.status, StatusCode::MULTIPLE_CHOICES);
    let seq = h.last_seq().await;

    let r = h.put(k, "c").await;
    r.expect_error(409, "ATOLL-SIBLING-LIMIT");
    assert!(r.message().contains("limit is 2"), "{}", r.message());
    assert_eq!(r.json()["error"]["retryable"], false);
    let after = h.get(k).await;
    assert_eq!(after.body, before.body);
    assert_eq!(after.context(), before.context());
    assert_eq!(h.last_seq().await, seq);

    // Writing back with the context resolves the siblings.
    h.put_ctx(k, &before.context(), "a+b+c").await.expect_ok();
    let r = h.get(k).await;
    r.expect_ok();
    assert_eq!(&r.body[..], b"a+b+c");
    assert_eq!(h.last_seq().await, seq + 1);
}

// ---------------------------------------------------------------------------------------------
// counter
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn counter_add_and_read() {
    let h = Harness::new();
    assert_eq!(h.counter("api").await, 0);
    for (delta, value) in [(5, 5), (-8, -3), (10, 7), (0, 7)] {
        let r = h
            .post(
                "/v1/counter/ratelimits/api",
                format!(r#"{{"delta": {delta}}}"#),
            )
            .await;
        r.expect_ok();
        assert_eq!(r.json()["value"], value);
        assert_eq!(r.json()["region"], REGION);
    }
    assert_eq!(h.counter("api").await, 7);
    assert_eq!(h.counter("other").await, 0);
    assert_eq!(h.last_seq().await, 4);
    // Keys with slashes work here too.
    h.post("/v1/counter/ratelimits/a/b", r#"{"delta": 2}"#)
        .await
        .expect_ok();
    assert_eq!(h.counter("a%2Fb").await, 2);
}

#[tokio::test]
async fn counter_bad_bodies_are_400_and_change_nothing() {
    let h = Harness::new();
    h.post("/v1/counter/ratelimits/k", r#"{"delta": 3}"#)
        .await
        .expect_ok();
    let seq = h.last_seq().await;
    let bodies: [&[u8]; 11] = [
        b"{",
        b"",
        b"null",
        b"{}",
        br#"{"delta": 1, "extra": 2}"#,
        br#"{"Delta": 1}"#,
        br#"{"delta": 1.5}"#,
        br#"{"delta": 1.0}"#,
        br#"{"delta": "1"}"#,
        br#"{"delta": 9223372036854775808}"#,
        br#"{"delta": 1} trailing"#,
    ];
    for body in bodies {
        let r = h.post("/v1/counter/ratelimits/k", body.to_vec()).await;
        r.expect_error(400, "ATOLL-MALFORMED-BODY");
    }
    h.post("/v1/counter/ratelimits/k", b"{\"delta\": \xff}".to_vec())
        .await
        .expect_error(400, "ATOLL-INVALID-UTF8");
    assert_eq!(h.counter("k").await, 3);
    assert_eq!(h.last_seq().await, seq);
}

#[tokio::test]
async fn counter_overflow_is_409_and_changes_nothing() {
    let h = Harness::new();
    let max = format!(r#"{{"delta": {}}}"#, i64::MAX);
    h.post("/v1/counter/ratelimits/big", max).await.expect_ok();
    assert_eq!(h.counter("big").await, i64::MAX);
    let seq = h.last_seq().await;
    h.post("/v1/counter/ratelimits/big", r#"{"delta": 1}"#)
        .await
        .expect_error(409, "ATOLL-COUNTER-OVERFLOW");
    assert_eq!(h.counter("big").await, i64::MAX);
    assert_eq!(h.last_seq().await, seq);
    // Going down from the top still works.
    h.post("/v1/counter/ratelimits/big", r#"{"delta": -1}"#)
        .await
        .expect_ok();
    assert_eq!(h.counter("big").await, i64::MAX - 1);

    let min = format!(r#"{{"delta": {}}}"#, i64::MIN);
    h.post("/v1/counter/ratelimits/small", min)
        .await
        .expect_ok();
    assert_eq!(h.counter("small").await, i64::MIN);
    let seq = h.last_seq().await;
    h.post("/v1/counter/ratelimits/small", r#"{"delta": -1}"#)
        .await
        .expect_error(409, "ATOLL-COUNTER-OVERFLOW");
    assert_eq!(h.counter("small").await, i64::MIN);
    assert_eq!(h.last_seq().await, seq);
}

// ---------------------------------------------------------------------------------------------
// set
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn set_add_remove_members() {
    let h = Harness::new();
    assert!(h.members("beta").await.is_empty());
    let r = h
        .post(
            "/v1/set/flags/beta",
            r#"{"add": ["zeta", "alpha", "mu", "alpha"]}"#,
        )
        .await;
    r.expect_ok();
    assert_eq!(r.json()["members"], json!(["alpha", "mu", "zeta"]));
    assert_eq!(r.json()["seq"], 1);
    let r = h
        .post(
            "/v1/set/flags/beta",
            r#"{"remove": ["mu", "absent"], "add": ["été"]}"#,
        )
        .await;
    r.expect_ok();
    assert_eq!(h.members("beta").await, ["alpha", "zeta", "été"]);
    h.post("/v1/set/flags/beta", r#"{"remove": ["alpha"]}"#)
        .await
        .expect_ok();
    assert_eq!(h.members("beta").await, ["zeta", "été"]);
    // Adding and removing the same member in one update: the add wins.
    h.post("/v1/set/flags/beta", r#"{"add": ["x"], "remove": ["x"]}"#)
        .await
        .expect_ok();
    assert_eq!(h.members("beta").await, ["x", "zeta", "été"]);
    assert_eq!(h.last_seq().await, 4);
}

#[tokio::test]
async fn set_bad_updates_are_400_and_change_nothing() {
    let h = Harness::new();
    h.post("/v1/set/flags/k", r#"{"add": ["on"]}"#)
        .await
        .expect_ok();
    let seq = h.last_seq().await;
    let long = "m".repeat(1025);
    let too_many: Vec<String> = (0..10_001).map(|i| i.to_string()).collect();
    let bodies: Vec<Vec<u8>> = vec![
        br#"{}"#.to_vec(),
        br#"{"add": [], "remove": []}"#.to_vec(),
        br#"{"add": [""]}"#.to_vec(),
        br#"{"remove": ["ok", ""]}"#.to_vec(),
        format!(r#"{{"add": ["{long}"]}}"#).into_bytes(),
        json!({"add": too_many}).to_string().into_bytes(),
        br#"{"add": ["a"], "other": []}"#.to_vec(),
        br#"{"add": "a"}"#.to_vec(),
        br#"{"add": [1]}"#.to_vec(),
        br#"{"add": null}"#.to_vec(),
        br#"["a"]"#.to_vec(),
        br#"{"add": ["\ud800"]}"#.to_vec(),
        b"{".to_vec(),
    ];
    for body in bodies {
        let r = h.post("/v1/set/flags/k", body.clone()).await;
        r.expect_error(400, "ATOLL-MALFORMED-BODY");
    }
    h.post("/v1/set/flags/k", b"{\"add\": [\"\xff\xfe\"]}".to_vec())
        .await
        .expect_error(400, "ATOLL-INVALID-UTF8");
    assert_eq!(h.members("k").await, ["on"]);
    assert_eq!(h.last_seq().await, seq);
    // The limits themselves are accepted.
    let r = h
        .post(
            "/v1/set/flags/k",
            format!(r#"{{"add": ["{}"]}}"#, "m".repeat(1024)),
        )
        .await;
    r.expect_ok();
}

// ---------------------------------------------------------------------------------------------
// Errors common to the keyed routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_policy_is_405_and_changes_nothing() {
    let h = Harness::new();
    h.put("/v1/kv/sessions/k", "v").await.expect_ok();
    let seq = h.last_seq().await;
    let cases: [(Method, &str, &str); 14] = [
        (Method::POST, "/v1/counter/sessions/k", r#"{"delta": 1}"#),
        (Method::GET, "/v1/counter/sessions/k", ""),
        (Method::POST, "/v1/counter/carts/k", r#"{"delta": 1}"#),
        (Method::POST, "/v1/counter/flags/k", r#"{"delta": 1}"#),
        (Method::PUT, "/v1/kv/ratelimits/k", "v"),
        (Method::GET, "/v1/kv/ratelimits/k", ""),
        (Method::DELETE, "/v1/kv/ratelimits/k", ""),
        (Method::PUT, "/v1/kv/flags/k", "v"),
        (Method::GET, "/v1/kv/flags/k", ""),
        (Method::POST, "/v1/set/sessions/k", r#"{"add": ["a"]}"#),
        (Method::GET, "/v1/set/sessions/k", ""),
        (Method::POST, "/v1/set/ratelimits/k", r#"{"add": ["a"]}"#),
        (Method::GET, "/v1/set/carts/k", ""),
        // The policy is checked before the body.
        (Method::POST, "/v1/counter/sessions/k", "not json"),
    ];
    for (method, uri, body) in cases {
        let r = h.request(method.clone(), uri, &[], body).await;
        r.expect_error(405, "ATOLL-WRONG-POLICY");
        assert!(
            r.header("allow").is_none(),
            "{method} {uri}: the route exists"
        );
    }
    assert_eq!(h.last_seq().await, seq);
    assert_eq!(h.get("/v1/kv/sessions/k").await.body, "v");
}

#[tokio::test]
async fn unknown_keyspace_is_404_everywhere() {
    let h = Harness::new();
    let cases: [(Method, &str, &str); 8] = [
        (Method::GET, "/v1/kv/nope/k", ""),
        (Method::PUT, "/v1/kv/nope/k", "v"),
        (Method::DELETE, "/v1/kv/nope/k", ""),
        (Method::GET, "/v1/counter/nope/k", ""),
        (Method::POST, "/v1/counter/nope/k", r#"{"delta": 1}"#),
        (Method::GET, "/v1/set/nope/k", ""),
        (Method::POST, "/v1/set/nope/k", r#"{"add": ["a"]}"#),
        (Method::GET, "/v1/conflicts/nope", ""),
    ];
    for (method, uri, body) in cases {
        let r = h.request(method, uri, &[], body).await;
        r.expect_error(404, "ATOLL-UNKNOWN-KEYSPACE");
        assert!(r.message().contains("`nope`"), "{}", r.message());
    }
    // Names are case-sensitive.
    h.get("/v1/kv/Sessions/k")
        .await
        .expect_error(404, "ATOLL-UNKNOWN-KEYSPACE");
    assert_eq!(h.last_seq().await, 0);
}

#[tokio::test]
async fn empty_and_oversized_keys() {
    let h = Harness::new();
    let cases: [(Method, &str, &str); 9] = [
        (Method::GET, "/v1/kv/sessions/", ""),
        (Method::GET, "/v1/kv/sessions", ""),
        (Method::PUT, "/v1/kv/sessions/", "v"),
        (Method::DELETE, "/v1/kv/carts", ""),
        (Method::GET, "/v1/counter/ratelimits/", ""),
        (Method::POST, "/v1/counter/ratelimits", r#"{"delta": 1}"#),
        (Method::GET, "/v1/set/flags/", ""),
        (Method::POST, "/v1/set/flags/", r#"{"add": ["a"]}"#),
        (Method::GET, "/v1/set/flags", ""),
    ];
    for (method, uri, body) in cases {
        h.request(method, uri, &[], body)
            .await
            .expect_error(400, "ATOLL-EMPTY-KEY");
    }
    assert_eq!(h.last_seq().await, 0);

    // 1024 bytes is the limit, counted after percent-decoding.
    let max = "k".repeat(1024);
    h.put(&format!("/v1/kv/sessions/{max}"), "v")
        .await
        .expect_ok();
    assert_eq!(h.get(&format!("/v1/kv/sessions/{max}")).await.body, "v");
    let seq = h.last_seq().await;
    let over = "k".repeat(1025);
    // 342 three-byte characters: 1026 bytes, though only 342 characters.
    let over_encoded = "%E2%82%AC".repeat(342);
    for key in [&over, &over_encoded] {
        let r = h.put(&format!("/v1/kv/sessions/{key}"), "v").await;
        r.expect_error(414, "ATOLL-KEY-TOO-LARGE");
        assert!(
            r.message().contains("limit of 1024 bytes"),
            "{}",
            r.message()
        );
        h.get(&format!("/v1/kv/sessions/{key}"))
            .await
            .expect_error(414, "ATOLL-KEY-TOO-LARGE");
        h.delete(&format!("/v1/kv/carts/{key}"))
            .await
            .expect_error(414, "ATOLL-KEY-TOO-LARGE");
        h.post(&format!("/v1/counter/ratelimits/{key}"), r#"{"delta": 1}"#)
            .await
            .expect_error(414, "ATOLL-KEY-TOO-LARGE");
        h.get(&format!("/v1/counter/ratelimits/{key}"))
            .await
            .expect_error(414, "ATOLL-KEY-TOO-LARGE");
        h.post(&format!("/v1/set/flags/{key}"), r#"{"add": ["a"]}"#)
            .await
            .expect_error(414, "ATOLL-KEY-TOO-LARGE");
        h.get(&format!("/v1/set/flags/{key}"))
            .await
            .expect_error(414, "ATOLL-KEY-TOO-LARGE");
    }
    assert_eq!(h.last_seq().await, seq);
}

#[tokio::test]
async fn value_too_large_is_413_and_stores_nothing() {
    let h = Harness::with(|c| {
        for k in &mut c.keyspaces {
            if k.name == "sessions" || k.name == "carts" {
                k.max_value_bytes = 16;
            }
        }
    });
    h.put("/v1/kv/sessions/k", "x".repeat(16)).await.expect_ok();
    let seq = h.last_seq().await;
    for uri in ["/v1/kv/sessions/k", "/v1/kv/sessions/new", "/v1/kv/carts/k"] {
        let r = h.put(uri, "y".repeat(17)).await;
        r.expect_error(413, "ATOLL-VALUE-TOO-LARGE");
        assert!(
            r.message()
                .starts_with("value is 17 bytes, over keyspace `")
                && r.message().ends_with("'s limit of 16 bytes"),
            "{}",
            r.message()
        );
        // A body of known length is refused with its real size.
        let r = h
            .request(
                Method::PUT,
                uri,
                &[("content-length", "1000")],
                "z".repeat(1000),
            )
            .await;
        r.expect_error(413, "ATOLL-VALUE-TOO-LARGE");
        assert!(
            r.message().starts_with("value is 1000 bytes"),
            "{}",
            r.message()
        );
        // A body of unknown length (chunked) is cut off at the limit.
        let r = h.put(uri, chunked(&[&b"0123456789"[..]; 100])).await;
        r.expect_error(413, "ATOLL-VALUE-TOO-LARGE");
        // Also with a context (mvr): the size is checked, nothing stored.
        if uri.contains("carts") {
            let ctx = h.get(uri).await.context();
            h.put_ctx(uri, &ctx, "y".repeat(17))
                .await
                .expect_error(413, "ATOLL-VALUE-TOO-LARGE");
        }
    }
    assert_eq!(h.get("/v1/kv/sessions/k").await.body, "x".repeat(16));
    h.get("/v1/kv/sessions/new")
        .await
        .expect_error(404, "ATOLL-NOT-FOUND");
    h.get("/v1/kv/carts/k")
        .await
        .expect_error(404, "ATOLL-NOT-FOUND");
    assert_eq!(h.last_seq().await, seq);
    h.put("/v1/kv/carts/k", "c".repeat(16)).await.expect_ok();
    // A chunked body within the limit is stored whole.
    h.put(
        "/v1/kv/sessions/chunked",
        chunked(&[b"01234567", b"89abcdef"]),
    )
    .await
    .expect_ok();
    assert_eq!(
        h.get("/v1/kv/sessions/chunked").await.body,
        "0123456789abcdef"
    );
}

/// A request body sent in chunks, of unknown length (no size hint, as with
/// `Transfer-Encoding: chunked`).
fn chunked(chunks: &[&[u8]]) -> Body {
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    assert_eq!(axum::body::HttpBody::size_hint(&body).exact(), None);
    body
}

/// A JSON body over the API's limit is refused as a request body over `[api]
/// max_json_body_bytes` (not as a keyspace's value limit), and the hint says how to raise it.
#[tokio::test]
async fn json_bodies_over_the_api_limit_are_413_request_too_large() {
    let h = Harness::new();
    let mut body = br#"{"delta": 1}"#.to_vec();
    body.resize((4 << 20) + 1, b' ');
    for uri in ["/v1/counter/ratelimits/k", "/v1/set/flags/k"] {
        let r = h.post(uri, body.clone()).await;
        r.expect_error(413, "ATOLL-REQUEST-TOO-LARGE");
        assert_eq!(
            r.message(),
            "request body is 4194305 bytes, over the API's limit of 4194304 bytes for JSON bodies ([api] max_json_body_bytes)"
        );
        let hint = r.json()["error"]["hint"].as_str().unwrap().to_string();
        assert!(
            hint.contains("max_json_body_bytes") && hint.contains("[api]"),
            "{hint}"
        );
        assert!(!r.message().contains("keyspace"), "{}", r.message());
        // Of unknown length (chunked): cut off at the limit.
        let chunks: Vec<&[u8]> = body.chunks(1 << 20).collect();
        let r = h.post(uri, chunked(&chunks)).await;
        r.expect_error(413, "ATOLL-REQUEST-TOO-LARGE");
        assert!(
            r.message()
                .starts_with("request body is more than 4194304 bytes"),
            "{}",
            r.message()
        );
    }
    // The set's members together may not exceed the keyspace's max_value_bytes (1 MiB): that
    // one is the value limit.
    let members: Vec<String> = (0..1100).map(|i| format!("{i:01000}")).collect();
    h.post("/v1/set/flags/k", json!({ "add": members }).to_string())
        .await
        .expect_error(413, "ATOLL-VALUE-TOO-LARGE");
    assert_eq!(h.last_seq().await, 0);
    assert!(h.members("k").await.is_empty());
}

/// `[api] max_json_body_bytes` sets the limit.
#[tokio::test]
async fn the_json_body_limit_is_configurable() {
    let h = Harness::with(|c| c.api.max_json_body_bytes = 64 << 10);
    let mut small = br#"{"delta": 1}"#.to_vec();
    small.resize(64 << 10, b' ');
    h.post("/v1/counter/ratelimits/k", small).await.expect_ok();
    let mut big = br#"{"delta": 1}"#.to_vec();
    big.resize((64 << 10) + 1, b' ');
    let r = h.post("/v1/counter/ratelimits/k", big).await;
    r.expect_error(413, "ATOLL-REQUEST-TOO-LARGE");
    assert!(
        r.message().contains("limit of 65536 bytes"),
        "{}",
        r.message()
    );
    let h = Harness::with(|c| c.api.max_json_body_bytes = 8 << 20);
    let mut five = br#"{"delta": 2}"#.to_vec();
    five.resize(5 << 20, b' ');
    h.post("/v1/counter/ratelimits/k", five).await.expect_ok();
}

#[tokio::test]
async fn invalid_utf8_keyspace_is_400() {
    let h = Harness::new();
    let cases: [(Method, &str, &str); 8] = [
        (Method::GET, "/v1/kv/%FF/k", ""),
        (Method::PUT, "/v1/kv/%FF/k", "v"),
        (Method::DELETE, "/v1/kv/se%C3ssions/k", ""),
        (Method::GET, "/v1/counter/%FF/k", ""),
        (Method::POST, "/v1/counter/%FF/k", r#"{"delta": 1}"#),
        (Method::GET, "/v1/set/%FF/k", ""),
        (Method::POST, "/v1/set/%FF/k", r#"{"add": ["a"]}"#),
        (Method::GET, "/v1/conflicts/%FF", ""),
    ];
    for (method, uri, body) in cases {
        let r = h.request(method, uri, &[], body).await;
        r.expect_error(400, "ATOLL-INVALID-UTF8");
        assert!(r.message().contains("keyspace"), "{}", r.message());
    }
    assert_eq!(h.last_seq().await, 0);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let h = Harness::new();
    for uri in [
        "/",
        "/v1",
        "/v1/kv",
        "/v1/kv/",
        "/v2/kv/sessions/k",
        "/v1/status/extra",
        "/v1/conflicts",
        "/v1/conflicts/sessions/extra",
        "/healthz/",
        "/nope",
    ] {
        let r = h.get(uri).await;
        r.expect_error(404, "ATOLL-BAD-REQUEST");
        assert_eq!(
            r.message(),
            format!("request rejected: no such route: {uri}")
        );
    }
    let cases: [(Method, &str); 7] = [
        (Method::PATCH, "/v1/kv/sessions/k"),
        (Method::POST, "/v1/kv/sessions/k"),
        (Method::PUT, "/v1/counter/ratelimits/k"),
        (Method::DELETE, "/v1/set/flags/k"),
        (Method::POST, "/v1/status"),
        (Method::DELETE, "/healthz"),
        (Method::PUT, "/metrics"),
    ];
    for (method, uri) in cases {
        let r = h.request(method.clone(), uri, &[], "x").await;
        r.expect_error(405, "ATOLL-BAD-REQUEST");
        assert_eq!(
            r.message(),
            format!("request rejected: method {method} is not allowed on {uri}")
        );
        assert!(r.header("allow").is_some());
    }
    assert_eq!(h.last_seq().await, 0);
}

// ---------------------------------------------------------------------------------------------
// Operations routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn conflicts_of_a_fresh_store_and_bad_queries() {
    let h = Harness::new();
    for (uri, ks, policy) in [
        ("/v1/conflicts/sessions", "sessions", "lww"),
        ("/v1/conflicts/sessions?limit=5", "sessions", "lww"),
        ("/v1/conflicts/sessions?limit=0", "sessions", "lww"),
        ("/v1/conflicts/sessions?limit=99999999", "sessions", "lww"),
        ("/v1/conflicts/carts", "carts", "mvr"),
        ("/v1/conflicts/flags", "flags", "set"),
    ] {
        let r = h.get(uri).await;
        r.expect_ok();
        assert_eq!(
            r.json(),
            json!({"keyspace": ks, "policy": policy, "conflicts": [], "late_writes": []}),
            "{uri}"
        );
    }
    for q in [
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "limit=",
        "other=1",
        "limit=1&x=2",
    ] {
        let r = h.get(&format!("/v1/conflicts/sessions?{q}")).await;
        r.expect_error(400, "ATOLL-BAD-REQUEST");
    }
}

#[tokio::test]
async fn conflicts_list_replicated_lww_conflicts() {
    let h = Harness::new();
    h.put("/v1/kv/sessions/k", "local").await.expect_ok();
    h.put("/v1/kv/sessions/%FF", "local").await.expect_ok();
    // A concurrent write from another region with a later timestamp wins; ours is recorded.
    let eu = RegionId::new("eu-west-1").unwrap();
    let entry = |seq: u64, key: &[u8], ms: u64| {
        let ts = Timestamp::new(ms, 0);
        OpEntry {
            origin: eu.clone(),
            seq,
            ts,
            keyspace: "sessions".into(),
            key: key.to_vec(),
            delta: KeyState::Lww(LwwRegister::write(None, &eu, ts, Some(b"remote".to_vec()))),
            epoch: 0,
        }
    };
    let out = h
        .state
        .store
        .apply_remote(vec![entry(1, b"k", T0 + 100), entry(2, &[0xff], T0 + 200)])
        .unwrap();
    assert_eq!(out.applied, 2);
    assert_eq!(h.get("/v1/kv/sessions/k").await.body, "remote");
    assert_eq!(
        h.get("/v1/kv/sessions/k").await.header("x-atoll-origin"),
        Some("eu-west-1")
    );

    let r = h.get("/v1/conflicts/sessions").await;
    r.expect_ok();
    let v = r.json();
    let list = v["conflicts"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    // Newest first: the non-UTF-8 key, as base64.
    assert_eq!(list[0]["key"], json!({"base64": b64(&[0xff])}));
    assert_eq!(list[1]["key"], "k");
    let c = &list[1];
    assert_eq!(c["reason"], "higher-timestamp");
    assert_eq!(c["winner"]["region"], "eu-west-1");
    assert_eq!(c["winner"]["value_base64"], b64(b"remote"));
    assert_eq!(c["winner"]["timestamp"], format!("{}.0", T0 + 100));
    assert_eq!(c["loser"]["region"], REGION);
    assert_eq!(c["loser"]["value_base64"], b64(b"local"));
    assert_eq!(c["loser"]["deleted"], false);
    assert_eq!(c["loser"]["timestamp"], format!("{T0}.0"));
    assert_eq!(c["recorded_at_ms"], T0);

    let r = h.get("/v1/conflicts/sessions?limit=1").await;
    let v = r.json();
    assert_eq!(v["conflicts"].as_array().unwrap().len(), 1);
    assert_eq!(v["conflicts"][0]["key"], json!({"base64": b64(&[0xff])}));
}

#[tokio::test]
async fn status_reports_the_region_and_store() {
    let h = Harness::new();
    let s = h.status().await;
    assert_eq!(s["region"], REGION);
    assert_eq!(s["cluster"], "atoll-single");
    assert_eq!(s["model"], "active-active");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["serving"], true);
    assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        s["keyspaces"],
        json!([
            {"name": "api-quota", "policy": "ratelimit"},
            {"name": "carts", "policy": "mvr"},
            {"name": "flags", "policy": "set"},
            {"name": "ratelimits", "policy": "counter"},
            {"name": "sessions", "policy": "lww"},
        ])
    );
    assert_eq!(
        s["store"],
        json!({"last_seq": 0, "writes_total": 0, "commits_total": 0, "hlc_wall_ms": 0})
    );
    assert_eq!(s["peers"], json!([]));

    h.put("/v1/kv/sessions/a", "1").await.expect_ok();
    h.post("/v1/counter/ratelimits/a", r#"{"delta": 1}"#)
        .await
        .expect_ok();
    // A refused write moves nothing.
    h.post("/v1/counter/ratelimits/a", r#"{"delta": 1.5}"#)
        .await
        .expect_error(400, "ATOLL-MALFORMED-BODY");
    let s = h.status().await;
    assert_eq!(s["store"]["last_seq"], 2);
    assert_eq!(s["store"]["writes_total"], 2);
    assert_eq!(s["store"]["commits_total"], 2);
    assert_eq!(s["store"]["hlc_wall_ms"], T0);
}

#[tokio::test]
async fn healthz_serving_and_draining() {
    let h = Harness::new();
    let r = h.get("/healthz").await;
    r.expect_ok();
    assert_eq!(
        r.json(),
        json!({"status": "serving", "region": REGION, "role": "active", "epoch": 0, "primary": null})
    );

    h.state.serving.store(false, Ordering::Relaxed);
    let r = h.get("/healthz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json(),
        json!({"status": "draining", "region": REGION, "role": "active", "epoch": 0, "primary": null})
    );
    assert_eq!(h.status().await["serving"], false);

    h.state.serving.store(true, Ordering::Relaxed);
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
}

/// A region removed from the cluster (`docs/design/region-removal.md`) and one that removed
/// another: `/healthz`, `/v1/status` and a refused write, each as documented.
#[tokio::test]
async fn a_removed_region_and_a_removal_are_answered_as_documented() {
    let h = Harness::new();
    let config = h.state.config.clone();
    let me = RegionId::new(REGION).unwrap();
    let membership = atoll_server::members::Membership::new(config.clone(), &me, false);
    let _ = h.state.membership.set(membership);
    // This region removed eu-west-1, a peer it replicated with.
    let eu = RegionId::new("eu-west-1").unwrap();
    let clock: Arc<dyn atoll_core::clock::Clock> = h.clock.clone();
    let rep = atoll_server::replication::Replicator::new(
        h.state.store.clone(),
        clock,
        h.state.metrics.clone(),
        atoll_server::replication::Settings {
            cluster: config.cluster.name.clone(),
            peer_addrs: [(eu.clone(), "127.0.0.1:9".parse().unwrap())].into(),
            core: atoll_core::repl::ReplConfig::new(1000, 500),
            max_lag_secs: 30,
            tls: None,
            oplog_retention_ms: atoll_config::DEFAULT_OPLOG_RETENTION_MS,
        },
        Arc::new(tokio::sync::Notify::new()),
    )
    .unwrap();
    assert_eq!(rep.remove_peer(&eu).await.unwrap(), 0);
    let _ = h.state.replicator.set(rep);
    h.put("/v1/kv/sessions/a", "v").await.expect_ok();
    let s = h.status().await;
    assert_eq!(
        s["membership"]["removed"],
        json!([{"region": "eu-west-1", "effective": true, "settled": true, "applied_seq": 0, "waiting_for": []}])
    );
    assert!(s["membership"].get("removed_by").is_none(), "{s}");
    h.get("/healthz").await.expect_ok();

    // Then a peer says this region was removed too.
    let ap = RegionId::new("ap-southeast-1").unwrap();
    h.state.store.mark_removed(&ap, T0, 0).unwrap();
    let r = h.get("/healthz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "removed");
    let by = &r.json()["membership"]["removed_by"];
    assert_eq!(
        *by,
        json!({"by": "ap-southeast-1", "at_ms": T0, "held_by_members": 0, "unreplicated_writes": 1})
    );
    assert_eq!(h.status().await["membership"]["removed_by"], *by);
    let r = h.put("/v1/kv/sessions/b", "v").await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.code(), "ATOLL-REGION-REMOVED");
    let r = h.delete("/v1/kv/sessions/a").await;
    assert_eq!(r.status, StatusCode::GONE);
    // Reads are served.
    h.get("/v1/kv/sessions/a").await.expect_ok();
}

#[tokio::test]
async fn metrics_exposition() {
    let h = Harness::new();
    h.get("/v1/status").await;
    h.get("/v1/status").await;
    h.get("/nope").await;
    h.put("/v1/kv/sessions/a%2Fb", "v").await.expect_ok();
    h.get("/v1/kv/nope/k").await;
    let r = h.get("/metrics").await;
    r.expect_ok();
    let ct = r.header(header::CONTENT_TYPE.as_str()).unwrap();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    let has = |l: &str| lines.contains(&l);
    assert!(
        has(r#"atoll_http_requests_total{route="/v1/status",method="GET",status="200"} 2"#),
        "{text}"
    );
    assert!(
        has(r#"atoll_http_requests_total{route="unmatched",method="GET",status="404"} 1"#),
        "{text}"
    );
    assert!(
        has(
            r#"atoll_http_requests_total{route="/v1/kv/{keyspace}/{*key}",method="PUT",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"atoll_http_requests_total{route="/v1/kv/{keyspace}/{*key}",method="GET",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(has("# TYPE atoll_http_requests counter"), "{text}");
    assert!(
        has("# TYPE atoll_http_request_duration_seconds histogram"),
        "{text}"
    );
    let buckets: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            l.starts_with("atoll_http_request_duration_seconds_bucket{")
                && l.contains(r#"route="/v1/status""#)
                && l.contains(r#"method="GET""#)
                && l.contains(r#"status="200""#)
        })
        .collect();
    assert!(buckets.len() > 10, "{text}");
    assert!(
        buckets
            .iter()
            .any(|l| l.contains(r#"le="+Inf""#) && l.ends_with(" 2")),
        "{buckets:?}"
    );
    assert!(has("atoll_oplog_last_seq 1"), "{text}");
    assert_eq!(lines.last(), Some(&"# EOF"));
}

#[tokio::test]
async fn manual_clock_timestamps_appear_in_responses() {
    let h = Harness::new();
    let ts = |r: &Resp| r.json()["timestamp"].as_str().unwrap().to_string();

    let r = h.put("/v1/kv/sessions/k", "a").await;
    assert_eq!(ts(&r), "1700000000000.0");
    let g = h.get("/v1/kv/sessions/k").await;
    assert_eq!(g.header("x-atoll-timestamp"), Some("1700000000000.0"));

    // Same millisecond: the logical part counts up.
    let r = h.put("/v1/kv/sessions/k", "b").await;
    assert_eq!(ts(&r), "1700000000000.1");
    assert_eq!(
        h.get("/v1/kv/sessions/k").await.header("x-atoll-timestamp"),
        Some("1700000000000.1")
    );

    h.clock.advance(250);
    let r = h.put("/v1/kv/carts/x", "c").await;
    assert_eq!(ts(&r), "1700000000250.0");
    h.clock.advance(1);
    h.put("/v1/kv/carts/x", "d").await.expect_ok();
    let g = h.get("/v1/kv/carts/x").await;
    assert_eq!(g.status, StatusCode::MULTIPLE_CHOICES);
    let stamps: Vec<Value> = g.json()["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["timestamp"].clone())
        .collect();
    assert_eq!(stamps, [json!("1700000000250.0"), json!("1700000000251.0")]);

    // The clock stepping back does not make timestamps go back.
    h.clock.set(T0);
    let r = h.delete("/v1/kv/sessions/k").await;
    assert_eq!(ts(&r), "1700000000251.1");
    assert_eq!(h.status().await["store"]["hlc_wall_ms"], T0 + 251);
}

// ---------------------------------------------------------------------------------------------
// Client authentication ([auth] tokens_file)
// ---------------------------------------------------------------------------------------------

/// Tokens: `reader` reads sessions and carts; `writer` writes carts only; `ops` has no right at
/// all; `all` reads and writes everything.
fn tokens_file() -> String {
    let t = |name: &str, rest: &str| {
        format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\n{rest}\n",
            atoll_config::auth::sha256_hex(&format!("{name}-secret"))
        )
    };
    [
        t("reader", "read = [\"sessions\", \"carts\"]"),
        t("writer", "write = [\"carts\"]"),
        t("ops", ""),
        t("all", "read = [\"*\"]\nwrite = [\"*\"]"),
    ]
    .concat()
}

fn bearer(name: &str) -> String {
    format!("Bearer {name}-secret")
}

#[tokio::test]
async fn without_a_valid_token_everything_but_health_metrics_and_openapi_is_401() {
    let h = Harness::with_tokens(&tokens_file());
    for (method, uri, body) in [
        (Method::GET, "/v1/kv/sessions/k", ""),
        (Method::PUT, "/v1/kv/sessions/k", "v"),
        (Method::DELETE, "/v1/kv/carts/k", ""),
        (Method::GET, "/v1/counter/ratelimits/k", ""),
        (Method::POST, "/v1/counter/ratelimits/k", r#"{"delta": 1}"#),
        (Method::POST, "/v1/set/flags/k", r#"{"add": ["x"]}"#),
        (Method::GET, "/v1/conflicts/sessions", ""),
        (Method::GET, "/v1/status", ""),
        (Method::GET, "/v1/nosuch", ""),
        (Method::PATCH, "/v1/kv/sessions/k", ""),
        (Method::GET, "/v1/kv/nosuch/k", ""),
    ] {
        for auth in [
            None,
            Some("Bearer wrong".to_string()),
            Some("Bearer ".to_string()),
            Some("Basic cmVhZGVyOnJlYWRlci1zZWNyZXQ=".to_string()),
            Some("reader-secret".to_string()),
            Some(format!(
                "Bearer {}",
                atoll_config::auth::sha256_hex("reader-secret")
            )),
        ] {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            let r = h.request(method.clone(), uri, &headers, body).await;
            let what = format!("{method} {uri} with {auth:?}");
            r.expect_error(401, "ATOLL-UNAUTHORIZED");
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{what}"
            );
        }
    }
    // Nothing was written.
    assert!(h.state.store.get("sessions", b"k").unwrap().is_none());
    assert_eq!(
        h.state.store.stats().writes_total.load(Ordering::Relaxed),
        0
    );
    // Open: health checks, Prometheus, documentation.
    for uri in ["/healthz", "/metrics", "/v1/openapi.json"] {
        assert_eq!(h.get(uri).await.status, StatusCode::OK, "{uri}");
        let r = h.request(Method::HEAD, uri, &[], Body::empty()).await;
        assert_eq!(r.status, StatusCode::OK, "HEAD {uri}");
    }
    // The refusals are counted like any answer.
    let text = h.get("/metrics").await.text();
    assert!(text.contains(r#"status="401""#), "{text}");
}

#[tokio::test]
async fn a_token_reads_and_writes_only_the_keyspaces_it_is_granted() {
    let h = Harness::with_tokens(&tokens_file());
    let as_ = |name: &str| bearer(name);
    let all = as_("all");
    h.request(
        Method::PUT,
        "/v1/kv/sessions/k",
        &[("authorization", &all)],
        "v1",
    )
    .await
    .expect_ok();
    // reader: reads sessions and carts, writes nothing.
    let reader = as_("reader");
    let r = h
        .request(
            Method::GET,
            "/v1/kv/sessions/k",
            &[("authorization", &reader)],
            "",
        )
        .await;
    r.expect_ok();
    assert_eq!(&r.body[..], b"v1");
    h.request(
        Method::GET,
        "/v1/conflicts/sessions",
        &[("authorization", &reader)],
        "",
    )
    .await
    .expect_ok();
    h.request(
        Method::GET,
        "/v1/watch/sessions?wait=10ms",
        &[("authorization", &reader)],
        "",
    )
    .await
    .expect_ok();
    for (method, uri, body) in [
        (Method::PUT, "/v1/kv/sessions/k", "v2"),
        // A watch is a read of its keyspace.
        (Method::GET, "/v1/watch/flags?wait=10ms", ""),
        (Method::GET, "/v1/watch/fl%61gs?wait=10ms", ""),
        (Method::DELETE, "/v1/kv/sessions/k", ""),
        (Method::GET, "/v1/counter/ratelimits/k", ""),
        (Method::GET, "/v1/set/flags/k", ""),
        (Method::GET, "/v1/conflicts/flags", ""),
        // A keyspace name percent-encoded is the keyspace it decodes to.
        (Method::PUT, "/v1/kv/s%65ssions/k", "v2"),
        (Method::GET, "/v1/kv/r%61telimits/k", ""),
        // A keyspace that does not exist is granted to nobody but "*": 403, not 404.
        (Method::GET, "/v1/kv/nosuch/k", ""),
        // Methods that are not reads need write (and would be 405 after that).
        (Method::PATCH, "/v1/kv/sessions/k", ""),
    ] {
        let r = h
            .request(method.clone(), uri, &[("authorization", &reader)], body)
            .await;
        r.expect_error(403, "ATOLL-FORBIDDEN");
        let message = r.message();
        assert!(message.contains("token `reader` may not"), "{message}");
    }
    // writer: writes carts, reads nothing.
    let writer = as_("writer");
    let r = h
        .request(
            Method::PUT,
            "/v1/kv/carts/c",
            &[("authorization", &writer)],
            "apple",
        )
        .await;
    r.expect_ok();
    let context = r.header("x-atoll-context").unwrap().to_string();
    h.request(
        Method::PUT,
        "/v1/kv/carts/c",
        &[("authorization", &writer), ("x-atoll-context", &context)],
        "pear",
    )
    .await
    .expect_ok();
    h.request(
        Method::GET,
        "/v1/kv/carts/c",
        &[("authorization", &writer)],
        "",
    )
    .await
    .expect_error(403, "ATOLL-FORBIDDEN");
    h.request(
        Method::POST,
        "/v1/counter/ratelimits/k",
        &[("authorization", &writer)],
        r#"{"delta": 1}"#,
    )
    .await
    .expect_error(403, "ATOLL-FORBIDDEN");
    // Nothing a refused request sent was applied.
    let r = h
        .request(
            Method::GET,
            "/v1/kv/sessions/k",
            &[("authorization", &all)],
            "",
        )
        .await;
    r.expect_ok();
    assert_eq!(&r.body[..], b"v1");
    let r = h
        .request(
            Method::GET,
            "/v1/kv/carts/c",
            &[("authorization", &all)],
            "",
        )
        .await;
    r.expect_ok();
    assert_eq!(&r.body[..], b"pear");
    h.request(
        Method::GET,
        "/v1/counter/ratelimits/k",
        &[("authorization", &all)],
        "",
    )
    .await
    .expect_ok();
    // /v1/status needs any valid token, even one without rights; the scheme is case-insensitive.
    for token in ["ops", "reader", "writer"] {
        let auth = format!("bearer {token}-secret");
        h.request(Method::GET, "/v1/status", &[("authorization", &auth)], "")
            .await
            .expect_ok();
    }
    // A valid token on an unknown route gets the route's 404.
    let r = h
        .request(
            Method::GET,
            "/v1/nosuch",
            &[("authorization", &as_("ops"))],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// Watches (docs/design/watch.md)
// ---------------------------------------------------------------------------------------------

/// A long poll of `uri` (which carries `wait=`): its events and token.
async fn poll(h: &Harness, uri: &str) -> (Vec<Value>, String) {
    let r = h.get(uri).await;
    assert_eq!(r.status, StatusCode::OK, "{uri}: {r:?}");
    let v = r.json();
    let events = v["events"].as_array().cloned().unwrap_or_default();
    (events, v["token"].as_str().unwrap_or_default().to_string())
}

fn keys_of(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap_or("?").to_string(),
                e["state"]["value"]
                    .as_str()
                    .unwrap_or(if e["state"]["deleted"] == true {
                        "<deleted>"
                    } else {
                        "?"
                    })
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_watch_gives_each_matching_change_once_and_resumes_after_its_token() {
    let h = Harness::new();
    assert_eq!(
        h.put("/v1/kv/sessions/old", "before").await.status,
        StatusCode::OK
    );
    // Without a token the watch starts now: the earlier write is not an event.
    let (events, start) = poll(&h, "/v1/watch/sessions?wait=10ms").await;
    assert!(events.is_empty(), "{events:?}");
    assert!(!start.is_empty());
    for (k, v) in [("u1", "a"), ("u2", "b"), ("x", "c"), ("u1", "d")] {
        assert_eq!(
            h.put(&format!("/v1/kv/sessions/{k}"), v).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(h.delete("/v1/kv/sessions/u2").await.status, StatusCode::OK);
    let (events, last) = poll(
        &h,
        &format!("/v1/watch/sessions?prefix=u&wait=1s&token={start}"),
    )
    .await;
    // Every change of a u-key, in log order; a change's state is the key's state when sent.
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![2, 3, 5, 6], "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["origin"] == REGION && e["event"] == "change")
    );
    assert_eq!(
        keys_of(&events[3..]),
        vec![("u2".to_string(), "<deleted>".to_string())]
    );
    assert_eq!(last, events[3]["token"].as_str().unwrap());
    // Resuming after the second event gives the rest, once.
    let second = events[1]["token"].as_str().unwrap();
    let (rest, _) = poll(
        &h,
        &format!("/v1/watch/sessions?prefix=u&wait=1s&token={second}"),
    )
    .await;
    let seqs: Vec<u64> = rest.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![5, 6]);
    // One key; the token also resumes through Last-Event-ID.
    let r = h
        .request(
            Method::GET,
            "/v1/watch/sessions?key=x&wait=1s",
            &[("last-event-id", start.as_str())],
            Body::empty(),
        )
        .await;
    assert_eq!(
        keys_of(r.json()["events"].as_array().unwrap()),
        vec![("x".to_string(), "c".to_string())]
    );
    // Nothing new after the last token: the poll waits, then answers with no event.
    let (none, same) = poll(
        &h,
        &format!("/v1/watch/sessions?prefix=u&wait=20ms&token={last}"),
    )
    .await;
    assert!(none.is_empty());
    assert_eq!(same, last);
    // Counters and sets read as they read.
    let token = poll(&h, "/v1/watch/ratelimits?wait=10ms").await.1;
    h.post("/v1/counter/ratelimits/r", r#"{"delta": 5}"#).await;
    let (events, _) = poll(&h, &format!("/v1/watch/ratelimits?wait=1s&token={token}")).await;
    assert_eq!(events[0]["state"], json!({"value": 5}));
}

#[tokio::test]
async fn a_watch_refuses_bad_input_and_changes_nothing() {
    let h = Harness::new();
    let other = atoll_server::watch::Token {
        cursor: [(RegionId::new(REGION).unwrap(), 1)].into(),
    }
    .encode(7);
    for (uri, status, code) in [
        ("/v1/watch/nope?wait=10ms", 404, "ATOLL-UNKNOWN-KEYSPACE"),
        (
            "/v1/watch/sessions?key=a&prefix=b&wait=10ms",
            400,
            "ATOLL-BAD-REQUEST",
        ),
        ("/v1/watch/sessions?key=&wait=10ms", 400, "ATOLL-EMPTY-KEY"),
        (
            "/v1/watch/sessions?token=garbage!&wait=10ms",
            400,
            "ATOLL-BAD-REQUEST",
        ),
        (
            "/v1/watch/sessions?token=AQID&wait=10ms",
            400,
            "ATOLL-BAD-REQUEST",
        ),
        ("/v1/watch/sessions?wait=5m", 400, "ATOLL-BAD-REQUEST"),
        ("/v1/watch/sessions?since=1", 400, "ATOLL-BAD-REQUEST"),
        ("/v1/watch/sessions/k?wait=10ms", 404, "ATOLL-BAD-REQUEST"),
    ] {
        h.get(uri).await.expect_error(status, code);
    }
    // A well-formed token of another cluster is refused too.
    h.get(&format!("/v1/watch/sessions?wait=10ms&token={other}"))
        .await
        .expect_error(400, "ATOLL-BAD-REQUEST");
    let long = "k".repeat(2000);
    h.get(&format!("/v1/watch/sessions?prefix={long}&wait=10ms"))
        .await
        .expect_error(414, "ATOLL-KEY-TOO-LARGE");
    assert_eq!(h.last_seq().await, 0, "nothing was written");
}

#[tokio::test]
async fn a_token_naming_writes_this_region_lost_resets_to_the_current_state() {
    let h = Harness::new();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        h.put(&format!("/v1/kv/sessions/{k}"), v).await;
    }
    h.delete("/v1/kv/sessions/b").await;
    // A token from before this region's data was rebuilt: it names 9 of its writes; it has 4.
    let token = atoll_server::watch::Token {
        cursor: [(RegionId::new(REGION).unwrap(), 9)].into(),
    }
    .encode(crc32fast::hash(b"atoll-single"));
    let (events, after) = poll(&h, &format!("/v1/watch/sessions?wait=1s&token={token}")).await;
    assert_eq!(events[0]["event"], "reset", "{events:?}");
    assert!(events[0]["reason"].as_str().unwrap().contains("rebuilt"));
    let states: Vec<&Value> = events[1..].iter().collect();
    assert!(states.iter().all(|e| e["event"] == "state"));
    assert_eq!(
        keys_of(&events[1..]),
        vec![
            ("a".to_string(), "1".to_string()),
            ("c".to_string(), "3".to_string())
        ],
        "the live keys, in key order"
    );
    // From the reset's position on, changes come as usual.
    h.put("/v1/kv/sessions/d", "4").await;
    let (events, _) = poll(&h, &format!("/v1/watch/sessions?wait=1s&token={after}")).await;
    assert_eq!(keys_of(&events), vec![("d".to_string(), "4".to_string())]);
}

/// Reads the metric sample `name` (with its labels, as exposed) from `/metrics`.
async fn metric(h: &Harness, sample: &str) -> Option<f64> {
    let text = String::from_utf8(h.get("/metrics").await.body.to_vec()).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

#[tokio::test]
async fn a_watcher_that_never_reads_falls_behind_with_bounded_memory_and_resumes_without_loss() {
    let h = Harness::new();
    // An SSE watch whose body nobody reads.
    let req = Request::get("/v1/watch/sessions")
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(metric(&h, "atoll_watchers ").await, Some(1.0));
    const WRITES: usize = 400;
    for i in 0..WRITES {
        let r = h
            .put(&format!("/v1/kv/sessions/k{i:03}"), format!("v{i}"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Its buffer (256 events) fills; after the stall it is dropped and its slot freed.
    let deadline = Instant::now() + atoll_server::watch::STALL * 6;
    while metric(&h, "atoll_watchers_dropped_total{reason=\"slow\"}").await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the stuck watcher was never dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&h, "atoll_watchers ").await, Some(0.0));
    // Its stream: the buffered events, then `lagged` with the token to resume from.
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let datas: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let changes = text.matches("event: change").count();
    assert!(
        changes > 0 && changes <= atoll_server::watch::BUFFER_EVENTS,
        "{changes}"
    );
    assert!(text.contains("event: lagged"), "{text}");
    let lagged = datas.last().unwrap();
    let token = lagged["token"].as_str().unwrap();
    // Resuming gives exactly the rest.
    let mut seen = changes;
    let mut token = token.to_string();
    // Polls until every write was seen (an empty poll under load is no proof that nothing is
    // left: the catch-up may just be slow), then once more: nothing beyond them comes.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while seen < WRITES {
        assert!(
            Instant::now() < deadline,
            "resuming gave {seen} of {WRITES} events"
        );
        let (events, next) = poll(&h, &format!("/v1/watch/sessions?wait=1s&token={token}")).await;
        seen += events.len();
        token = next;
    }
    let (events, _) = poll(&h, &format!("/v1/watch/sessions?wait=1s&token={token}")).await;
    seen += events.len();
    assert_eq!(seen, WRITES, "every write was an event exactly once");
}

#[tokio::test]
async fn a_write_made_once_the_watch_answered_is_an_event() {
    // The watch's position is what was applied when the client got its answer, not when the
    // watcher's task first ran: on this single-threaded runtime the task has not run yet when
    // the write below commits (under load that happened on any runtime, and the write was
    // never sent).
    let h = Harness::new();
    let req = Request::get("/v1/watch/sessions")
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    // Synchronous: nothing else on this runtime runs until it is committed.
    h.state
        .store
        .write(
            "sessions",
            b"first",
            Intent::Put {
                value: b"v".to_vec(),
                context: None,
                ttl: atoll_core::op::Ttl::Default,
            },
        )
        .expect("write");
    let mut body = resp.into_body();
    let mut text = String::new();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("event: change") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no event for the write; the stream gave: {text}"
        );
        match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(d));
                }
            }
            Ok(other) => panic!("the stream ended ({}): {text}", other.is_some()),
            Err(_) => panic!("no event for the write within 10 s; the stream gave: {text}"),
        }
    }
    assert!(text.contains("\"key\":\"first\""), "{text}");
}

#[tokio::test]
async fn watches_beyond_max_watchers_are_refused() {
    let h = Harness::with(|c| c.api.max_watchers = 1);
    let first = h
        .app
        .clone()
        .oneshot(
            Request::get("/v1/watch/sessions")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .expect("infallible");
    assert_eq!(first.status(), StatusCode::OK);
    h.get("/v1/watch/sessions?wait=10ms")
        .await
        .expect_error(503, "ATOLL-OVERLOADED");
    drop(first);
    // Its slot comes back once the client is gone.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = h.get("/v1/watch/sessions?wait=10ms").await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back: {r:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Session tokens and bounded staleness (docs/design/session-consistency.md)
// ---------------------------------------------------------------------------------------------

fn session_of(r: &Resp) -> atoll_core::session::SessionToken {
    let text = r
        .header("x-atoll-session")
        .expect("answer carries a session token");
    atoll_core::session::SessionToken::decode(text, "atoll-single", |_| true).expect("decodes")
}

/// The example with a second region, `eu-west-1`, whose writes this region never receives here
/// (no replication in these tests): a token naming them stays unsatisfied.
fn two_regions() -> Harness {
    Harness::with(|c| {
        let mut peer = c.regions[0].clone();
        peer.name = RegionId::new("eu-west-1").unwrap();
        peer.api = "127.0.0.1:1".parse().unwrap();
        peer.peer = peer.api;
        c.regions.push(peer);
    })
}

#[tokio::test]
async fn writes_and_reads_answer_session_tokens_that_name_what_the_client_saw() {
    let h = Harness::new();
    let me = RegionId::new(REGION).unwrap();
    let w = h.put("/v1/kv/sessions/u1", "v1").await;
    assert_eq!(w.status, StatusCode::OK);
    let seq = w.json()["seq"].as_u64().unwrap();
    let t1 = session_of(&w);
    assert_eq!(t1.seen().get(&me), seq, "a write's token names the write");
    // The token served here at once, and the read's token names at least as much.
    let r = h
        .request(
            Method::GET,
            "/v1/kv/sessions/u1",
            &[("x-atoll-session", &t1.encode("atoll-single"))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"v1");
    assert!(session_of(&r).seen().dominates(t1.seen()));
    assert_eq!(
        r.header("x-atoll-staleness-ms"),
        Some("0"),
        "one region: never stale"
    );
    // A write presenting a token answers the merge; counters, sets and missing keys too.
    let mut other = atoll_core::session::SessionToken::new();
    other.observe(&me, 1);
    let c = h
        .request(
            Method::POST,
            "/v1/counter/ratelimits/x",
            &[
                ("x-atoll-session", &other.encode("atoll-single")),
                ("content-type", "application/json"),
            ],
            r#"{"delta": 2}"#,
        )
        .await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(
        session_of(&c).seen().get(&me),
        c.json()["seq"].as_u64().unwrap()
    );
    for uri in [
        "/v1/counter/ratelimits/x",
        "/v1/set/flags/nothing",
        "/v1/kv/sessions/never-written",
    ] {
        let r = h.get(uri).await;
        assert!(session_of(&r).seen().get(&me) >= seq, "{uri}");
    }
}

#[tokio::test]
async fn bad_session_tokens_are_400_and_change_nothing() {
    let h = two_regions();
    let me = RegionId::new(REGION).unwrap();
    h.put("/v1/kv/sessions/k", "before").await;
    let head = h.state.store.applied().get(&me);
    let mut ahead = atoll_core::session::SessionToken::new();
    ahead.observe(&me, head + 5);
    let mut foreign = atoll_core::session::SessionToken::new();
    foreign.observe(&me, 1);
    let cases = [
        ("garbled", "not!base64".to_string(), "base64"),
        ("another cluster", foreign.encode("prod"), "another cluster"),
        (
            "beyond this region's head",
            ahead.encode("atoll-single"),
            "which has made only",
        ),
    ];
    for (what, token, needle) in cases {
        let started = std::time::Instant::now();
        let r = h
            .request(
                Method::GET,
                "/v1/kv/sessions/k?wait_ms=10000",
                &[("x-atoll-session", token.as_str())],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(
            r.json()["error"]["code"],
            "ATOLL-BAD-SESSION-TOKEN",
            "{what}"
        );
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{what}: {}",
            r.json()
        );
        // Refused at once, not after the 10 s wait.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{what}"
        );
        let w = h
            .request(
                Method::PUT,
                "/v1/kv/sessions/k",
                &[("x-atoll-session", token.as_str())],
                "after",
            )
            .await;
        assert_eq!(w.status, StatusCode::BAD_REQUEST, "{what}");
    }
    assert_eq!(&h.get("/v1/kv/sessions/k").await.body[..], b"before");
    assert_eq!(
        h.state.store.applied().get(&me),
        head,
        "nothing was written"
    );
    assert!(
        metric(
            &h,
            "atoll_consistency_reads_total{level=\"session\",outcome=\"bad-token\"}"
        )
        .await
            >= Some(3.0)
    );
}

#[tokio::test]
async fn a_token_naming_writes_not_applied_here_is_stale_after_the_wait() {
    let h = two_regions();
    let eu = RegionId::new("eu-west-1").unwrap();
    let mut t = atoll_core::session::SessionToken::new();
    t.observe(&eu, 7);
    let token = t.encode("atoll-single");
    let r = h
        .request(
            Method::GET,
            "/v1/kv/sessions/k?wait_ms=20",
            &[("x-atoll-session", token.as_str())],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["error"]["code"], "ATOLL-STALE");
    assert_eq!(v["error"]["retryable"], true);
    assert_eq!(v["stale"]["behind"][0]["origin"], "eu-west-1");
    assert_eq!(v["stale"]["behind"][0]["applied"], 0);
    assert_eq!(v["stale"]["behind"][0]["wanted"], 7);
    assert_eq!(v["stale"]["waited_ms"], 20);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("up to 0 of the 7")
    );
    // Counters and sets are gated the same way; bad parameters are named.
    let r = h
        .request(
            Method::GET,
            "/v1/set/flags/f?wait_ms=0",
            &[("x-atoll-session", token.as_str())],
            Body::empty(),
        )
        .await;
    assert_eq!(r.json()["error"]["code"], "ATOLL-STALE");
    for (q, needle) in [
        ("wait_ms=soon", "wait_ms"),
        ("wait_ms=999999", "over the limit"),
        ("max_staleness=fast", "max_staleness"),
        ("on_stale=maybe", "on_stale"),
        ("consistency=session", "not a read consistency"),
    ] {
        let r = h.get(&format!("/v1/counter/ratelimits/x?{q}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{q}: {}",
            r.json()
        );
    }
    // Without replication there is nothing to lag behind: a bounded read is served.
    let r = h.get("/v1/kv/sessions/k?max_staleness=1ms").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        metric(
            &h,
            "atoll_consistency_reads_total{level=\"session\",outcome=\"stale\"}"
        )
        .await,
        Some(2.0)
    );
}

// ---------------------------------------------------------------------------------------------
// Expiring keys (docs/design/expiring-keys.md)

#[tokio::test]
async fn a_put_with_a_ttl_expires_by_the_regions_clock_and_a_later_write_revives_it() {
    let h = Harness::new();
    let r = h.put("/v1/kv/sessions/alice?ttl=30s", "v1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let ack = r.json();
    let ts: Timestamp = ack["timestamp"].as_str().unwrap().parse().unwrap();
    let expires = ts.wall_ms + 30_000;
    assert_eq!(ack["expires_at_ms"], json!(expires));
    let r = h.get("/v1/kv/sessions/alice").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("x-atoll-expires-at"),
        Some(expires.to_string().as_str())
    );
    let t = h.get("/v1/ttl/sessions/alice").await;
    assert_eq!(t.status, StatusCode::OK);
    assert_eq!(t.json()["expires_at_ms"], json!(expires));
    assert_eq!(t.json()["ttl_ms"], json!(expires - T0));
    // One millisecond before: live; at the expiry: absent, for the value and its ttl alike.
    h.clock.set(expires - 1);
    assert_eq!(h.get("/v1/kv/sessions/alice").await.status, StatusCode::OK);
    h.clock.set(expires);
    let r = h.get("/v1/kv/sessions/alice").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "ATOLL-NOT-FOUND");
    assert_eq!(
        h.get("/v1/ttl/sessions/alice").await.status,
        StatusCode::NOT_FOUND
    );
    // An expiry cannot be set on an expired key.
    let r = h.put("/v1/ttl/sessions/alice?ttl=1m", "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A plain put revives it, without expiry.
    let r = h.put("/v1/kv/sessions/alice", "v2").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["expires_at_ms"], Value::Null);
    assert_eq!(h.get("/v1/kv/sessions/alice").await.text(), "v2");
    assert_eq!(
        h.get("/v1/ttl/sessions/alice").await.json()["ttl_ms"],
        Value::Null
    );
}

#[tokio::test]
async fn an_mvr_sibling_expires_by_its_own_ttl_and_reads_show_each_expiry() {
    let h = Harness::new();
    // Two siblings (puts without a context): one for 30 s, one forever.
    let r = h.put("/v1/kv/carts/c1?ttl=30s", "apple").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let ts: Timestamp = r.json()["timestamp"].as_str().unwrap().parse().unwrap();
    let expires = ts.wall_ms + 30_000;
    assert_eq!(r.json()["expires_at_ms"], json!(expires));
    let r = h.put("/v1/kv/carts/c1", "pear").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["expires_at_ms"], Value::Null);
    let r = h.get("/v1/kv/carts/c1").await;
    assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES, "{}", r.text());
    let siblings = r.json()["siblings"].as_array().cloned().unwrap();
    let by_value = |v: &str| siblings.iter().find(|s| s["value"] == v).cloned().unwrap();
    assert_eq!(by_value("apple")["expires_at_ms"], json!(expires));
    assert_eq!(by_value("pear").get("expires_at_ms"), None);
    // At its expiry the apple is gone here: one value left, read plainly.
    h.clock.set(expires);
    let r = h.get("/v1/kv/carts/c1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "pear");
    assert_eq!(r.header("x-atoll-expires-at"), None);
    // A write with the read's context replaces what was read; its own ttl applies.
    let ctx = r.header("x-atoll-context").unwrap().to_string();
    let r = h
        .request(
            Method::PUT,
            "/v1/kv/carts/c1?ttl=1m",
            &[("x-atoll-context", ctx.as_str())],
            "plum",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = h.get("/v1/kv/carts/c1").await;
    assert_eq!(r.text(), "plum");
    assert!(r.header("x-atoll-expires-at").is_some());
    // The expiry routes are lww's: an mvr sibling's expiry is its write's.
    assert_eq!(
        h.get("/v1/ttl/carts/c1").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn ttl_routes_set_and_remove_an_expiry_keeping_the_value() {
    let h = Harness::new();
    assert_eq!(h.put("/v1/kv/sessions/k", "v").await.status, StatusCode::OK);
    // Nothing to remove: answered without a write.
    let seq = h.last_seq().await;
    let r = h.delete("/v1/ttl/sessions/k").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["changed"], json!(false));
    assert_eq!(
        h.last_seq().await,
        seq,
        "PERSIST of a key without expiry wrote"
    );
    // Set one (the header form).
    let r = h
        .request(
            Method::PUT,
            "/v1/ttl/sessions/k",
            &[("x-atoll-ttl", "1m")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["changed"], json!(true));
    assert_eq!(r.json()["ttl_ms"], json!(60_000));
    assert_eq!(
        h.get("/v1/kv/sessions/k").await.text(),
        "v",
        "EXPIRE changed the value"
    );
    // Remove it.
    let r = h.delete("/v1/ttl/sessions/k").await;
    assert_eq!(r.json()["changed"], json!(true));
    h.clock.advance(120_000);
    assert_eq!(h.get("/v1/kv/sessions/k").await.text(), "v");
    assert_eq!(
        h.get("/v1/ttl/sessions/k").await.json()["expires_at_ms"],
        Value::Null
    );
    // keep: a new value under the old expiry.
    h.put("/v1/ttl/sessions/k?ttl=10s", "").await;
    let before = h.get("/v1/ttl/sessions/k").await.json()["expires_at_ms"].clone();
    h.clock.advance(1_000);
    assert_eq!(
        h.put("/v1/kv/sessions/k?ttl=keep", "w").await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get("/v1/ttl/sessions/k").await.json()["expires_at_ms"],
        before
    );
    assert_eq!(h.get("/v1/kv/sessions/k").await.text(), "w");
}

#[tokio::test]
async fn bad_ttls_are_refused_naming_the_problem_and_change_nothing() {
    let h = Harness::new();
    let seq = h.last_seq().await;
    for (uri, headers, status, needle) in [
        (
            "/v1/kv/sessions/k?ttl=30",
            &[][..],
            StatusCode::BAD_REQUEST,
            "no unit",
        ),
        (
            "/v1/kv/sessions/k?ttl=0s",
            &[][..],
            StatusCode::BAD_REQUEST,
            "out of range",
        ),
        (
            "/v1/kv/sessions/k?tll=30s",
            &[][..],
            StatusCode::BAD_REQUEST,
            "unknown query parameter `tll`",
        ),
        (
            "/v1/kv/sessions/k?ttl=1s&ttl=2s",
            &[][..],
            StatusCode::BAD_REQUEST,
            "twice",
        ),
        (
            "/v1/kv/sessions/k?ttl=1s",
            &[("x-atoll-ttl", "2s")][..],
            StatusCode::BAD_REQUEST,
            "disagree",
        ),
        (
            "/v1/kv/carts/k?ttl=keep",
            &[][..],
            StatusCode::BAD_REQUEST,
            "none to keep",
        ),
        (
            "/v1/ttl/sessions/k",
            &[][..],
            StatusCode::BAD_REQUEST,
            "give the new time to live",
        ),
    ] {
        let r = h.request(Method::PUT, uri, headers, "v").await;
        assert_eq!(r.status, status, "{uri}: {}", r.text());
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{uri}: {}",
            r.json()
        );
    }
    assert_eq!(h.last_seq().await, seq, "a refused write wrote");
    assert_eq!(
        h.get("/v1/kv/sessions/k").await.status,
        StatusCode::NOT_FOUND
    );
    // Counters, sets and mvr keys have no expiry to read.
    let r = h.get("/v1/ttl/ratelimits/k").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_keyspace_default_ttl_applies_to_puts_that_name_none() {
    let h = Harness::with(|c| {
        for k in &mut c.keyspaces {
            if k.name == "sessions" {
                k.default_ttl_ms = Some(5_000);
            }
        }
    });
    let r = h.put("/v1/kv/sessions/a", "v").await;
    let ts: Timestamp = r.json()["timestamp"].as_str().unwrap().parse().unwrap();
    assert_eq!(r.json()["expires_at_ms"], json!(ts.wall_ms + 5_000));
    let r = h.put("/v1/kv/sessions/b?ttl=none", "v").await;
    assert_eq!(r.json()["expires_at_ms"], Value::Null);
    h.clock.advance(5_000);
    assert_eq!(
        h.get("/v1/kv/sessions/a").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(h.get("/v1/kv/sessions/b").await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Rate limits (docs/design/rate-limits.md): `api-quota` admits 100 per minute, sliding.

#[tokio::test]
async fn a_rate_limit_admits_up_to_its_limit_then_answers_429_with_retry_after() {
    let h = Harness::new();
    let r = h.get("/v1/ratelimit/api-quota/user-1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["remaining"], json!(100));
    let r = h
        .post("/v1/ratelimit/api-quota/user-1", r#"{"cost": 60}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["allowed"], json!(true));
    assert_eq!(r.json()["remaining"], json!(40));
    for left in (0..40).rev() {
        let r = h.post("/v1/ratelimit/api-quota/user-1", "").await;
        assert_eq!(r.json()["remaining"], json!(left), "{}", r.text());
    }
    let seq = h.last_seq().await;
    let r = h.post("/v1/ratelimit/api-quota/user-1", "").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["allowed"].clone(), v["remaining"].clone()),
        (json!(false), json!(0))
    );
    let reset = v["reset_at_ms"].as_u64().unwrap();
    assert_eq!(reset, T0 - T0 % 60_000 + 60_000);
    let retry_ms = v["retry_after_ms"].as_u64().unwrap();
    assert!(retry_ms > 0);
    assert_eq!(
        r.header("retry-after"),
        Some(retry_ms.div_ceil(1000).to_string().as_str())
    );
    assert_eq!(h.last_seq().await, seq, "a denial was counted");
    // Another key has its own budget; the first one's comes back as the window slides.
    let r = h.post("/v1/ratelimit/api-quota/user-2", "").await;
    assert_eq!(r.json()["remaining"], json!(99));
    h.clock.advance(retry_ms);
    let r = h.post("/v1/ratelimit/api-quota/user-1", "").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "retry_after_ms was too early: {}",
        r.text()
    );
    // 41 + 1 + 1 admitted (user-1, user-2, user-1 again), 1 denied; over HTTP and RESP alike
    // (both go through `api::write`).
    for (decision, n) in [("allowed", 43.0), ("denied", 1.0)] {
        let series = format!(
            "atoll_ratelimit_decisions_total{{keyspace=\"api-quota\",decision=\"{decision}\"}}"
        );
        assert_eq!(metric(&h, &series).await, Some(n), "{series}");
    }
}

#[tokio::test]
async fn bad_rate_limit_requests_are_refused_and_count_nothing() {
    let h = Harness::new();
    for (uri, body, status, code) in [
        (
            "/v1/ratelimit/api-quota/k",
            r#"{"cost": 0}"#,
            400,
            "ATOLL-BAD-REQUEST",
        ),
        (
            "/v1/ratelimit/api-quota/k",
            r#"{"cost": -1}"#,
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            "/v1/ratelimit/api-quota/k",
            r#"{"cost": 1, "x": 2}"#,
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            "/v1/ratelimit/api-quota/k",
            "nope",
            400,
            "ATOLL-MALFORMED-BODY",
        ),
        (
            "/v1/ratelimit/api-quota/k?cost=2",
            "",
            400,
            "ATOLL-BAD-REQUEST",
        ),
        ("/v1/ratelimit/sessions/k", "", 405, "ATOLL-WRONG-POLICY"),
        ("/v1/ratelimit/nosuch/k", "", 404, "ATOLL-UNKNOWN-KEYSPACE"),
    ] {
        let r = h.post(uri, body).await;
        r.expect_error(status, code);
    }
    assert_eq!(h.last_seq().await, 0, "a refused request was counted");
    let r = h.post("/v1/kv/api-quota/k", "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}
