//! Client authentication of the client API, when `[auth] tokens_file` is set
//! ([`atoll_config::auth`]): a layer that decides before any handler runs.
//!
//! - `GET`/`HEAD` `/healthz`, `/metrics` and `/v1/openapi.json` are open (health checks,
//!   Prometheus, documentation).
//! - Everything else needs `Authorization: Bearer <token>` naming a token of the tokens file:
//!   otherwise `401 ATOLL-UNAUTHORIZED` with `WWW-Authenticate: Bearer`, before routing, so an
//!   unauthenticated client learns nothing about routes or keyspaces.
//! - `/v1/{kv,counter,set}/{keyspace}/...`, `/v1/conflicts/{keyspace}` and
//!   `/v1/watch/{keyspace}` need the token's
//!   `read` right on the keyspace for `GET`/`HEAD`, its `write` right for any other method;
//!   otherwise `403 ATOLL-FORBIDDEN`. The keyspace is the percent-decoded path segment, decoded
//!   exactly as the handlers decode it, so an encoded name cannot slip past.
//! - `/v1/status` (and anything unknown, which then gets its 404) needs any valid token.
//!
//! Without a tokens file the layer lets everything through: the API is open, and
//! `atoll config check` warns about it.

use crate::api::{ApiError, AppState};
use atoll_config::auth::Right;
use atoll_core::AtollError;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// What a request needs, by its method and raw path.
#[derive(Debug, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: an open route.
    Nothing,
    /// Any valid token.
    AnyToken,
    /// A right on a keyspace (`None`: its name does not decode, so no token grants it).
    Right(Right, Option<String>),
}

/// What `method path` needs (see the module documentation).
pub fn needs(method: &Method, path: &str) -> Needs {
    let read = matches!(*method, Method::GET | Method::HEAD);
    if read && matches!(path, "/healthz" | "/metrics" | "/v1/openapi.json") {
        return Needs::Nothing;
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Needs::AnyToken;
    };
    if rest.starts_with("admin/") {
        // The admin routes check the region's admin token themselves (a client token, whatever
        // it grants, never promotes a region).
        return Needs::Nothing;
    }
    let Some((kind, rest)) = rest.split_once('/') else {
        return Needs::AnyToken;
    };
    if !matches!(
        kind,
        "kv" | "counter" | "set" | "ttl" | "ratelimit" | "conflicts" | "watch"
    ) {
        return Needs::AnyToken;
    }
    let raw = rest.split_once('/').map_or(rest, |(ks, _)| ks);
    let keyspace = String::from_utf8(percent_encoding::percent_decode_str(raw).collect()).ok();
    let right = if read { Right::Read } else { Right::Write };
    Needs::Right(right, keyspace)
}

/// The layer: see the module documentation.
pub async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(tokens) = state.auth.as_ref() else {
        return next.run(req).await;
    };
    let needs = needs(req.method(), req.uri().path());
    if needs == Needs::Nothing {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty());
    let Some(presented) = presented else {
        return unauthorized("this region requires a bearer token (Authorization: Bearer <token>)");
    };
    let Some(grant) = tokens.authenticate(presented) else {
        return unauthorized("the bearer token is not one of this cluster's tokens");
    };
    if let Needs::Right(right, keyspace) = needs {
        let allowed = keyspace
            .as_deref()
            .is_some_and(|ks| grant.allows(right, ks));
        if !allowed {
            tracing::debug!(token = %grant.name, right = right.as_str(), ?keyspace, "request refused: no right");
            let what = keyspace.map_or_else(
                || "this keyspace".to_string(),
                |ks| format!("keyspace `{ks}`"),
            );
            return ApiError(AtollError::Forbidden(format!(
                "token `{}` may not {} {what}",
                grant.name,
                right.as_str()
            )))
            .into_response();
        }
    }
    next.run(req).await
}

fn unauthorized(why: &str) -> Response {
    let mut resp = ApiError(AtollError::Unauthorized(why.to_string())).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"atoll\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_request_needs() {
        let read = |ks: &str| Needs::Right(Right::Read, Some(ks.to_string()));
        let write = |ks: &str| Needs::Right(Right::Write, Some(ks.to_string()));
        for (method, path, want) in [
            (Method::GET, "/healthz", Needs::Nothing),
            (Method::HEAD, "/metrics", Needs::Nothing),
            (Method::GET, "/v1/openapi.json", Needs::Nothing),
            (Method::POST, "/healthz", Needs::AnyToken),
            (Method::GET, "/v1/status", Needs::AnyToken),
            (Method::GET, "/v1/nosuch", Needs::AnyToken),
            (Method::GET, "/", Needs::AnyToken),
            (Method::GET, "/v1/kv/sessions/k", read("sessions")),
            (Method::HEAD, "/v1/kv/sessions/a/b", read("sessions")),
            (Method::PUT, "/v1/kv/carts/k", write("carts")),
            (Method::GET, "/v1/ttl/sessions/k", read("sessions")),
            (Method::POST, "/v1/ratelimit/api/k", write("api")),
            (Method::GET, "/v1/ratelimit/api/k", read("api")),
            (Method::PUT, "/v1/ttl/sessions/k", write("sessions")),
            (Method::DELETE, "/v1/ttl/sessions/k", write("sessions")),
            (Method::DELETE, "/v1/kv/carts", write("carts")),
            (Method::PATCH, "/v1/kv/carts/k", write("carts")),
            (
                Method::POST,
                "/v1/counter/ratelimits/k",
                write("ratelimits"),
            ),
            (Method::GET, "/v1/set/flags/", read("flags")),
            (Method::GET, "/v1/conflicts/sessions", read("sessions")),
            (Method::GET, "/v1/kv/c%61rts/k", read("carts")),
            (Method::GET, "/v1/kv/%FF/k", Needs::Right(Right::Read, None)),
            (Method::GET, "/v1/kv/", read("")),
        ] {
            assert_eq!(needs(&method, path), want, "{method} {path}");
        }
    }
}
