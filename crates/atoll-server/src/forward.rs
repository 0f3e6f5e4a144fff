//! Forwarding a standby's client writes to the primary (`[fencing] forward_writes`,
//! active-standby; `docs/design/fencing.md`).
//!
//! A standby forwards a write only after its own store refused it with `ATOLL-NOT-PRIMARY`
//! (nothing was applied here), only to the lease holder's client API, at most once, and never a
//! request that is itself forwarded ([`FORWARDED_BY_HEADER`]: the header only ever turns
//! forwarding off, so a client that sends it gains nothing). What the primary answers is relayed
//! with [`FORWARDED_TO_HEADER`]; a fencing refusal from it (the lease moved meanwhile) becomes a
//! `NOT-PRIMARY` here, never a second attempt; and when the request may have reached the primary
//! but no answer came back the client gets `504 ATOLL-FORWARD-OUTCOME-UNKNOWN`, never a retryable
//! "not applied".

use atoll_core::{AtollError, RegionId};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Set by a forwarding standby on the request it sends: a request carrying it is never forwarded
/// again. Its value is the forwarding region (for logs); it authorizes nothing.
pub const FORWARDED_BY_HEADER: &str = "x-atoll-forwarded-by";
/// Set on an answer relayed from the primary: the region that answered (and, on success,
/// applied) the write.
pub const FORWARDED_TO_HEADER: &str = "x-atoll-forwarded-to";
/// How long a forwarded write may take, answer included, before its outcome is unknown.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the primary may take; a write that could not connect was not sent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer relayed (answers to writes are small JSON documents).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Request headers a forwarded write keeps: what the primary's API reads.
const REQUEST_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    HeaderName::from_static(crate::api::CONTEXT_HEADER),
    HeaderName::from_static(crate::session::SESSION_HEADER),
];
/// Answer headers relayed from the primary (the region's own `X-Atoll-Region` and
/// `X-Atoll-Role` are this region's, set by its API layer).
const ANSWER_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    HeaderName::from_static(crate::api::CONTEXT_HEADER),
    HeaderName::from_static(crate::api::TIMESTAMP_HEADER),
    HeaderName::from_static(crate::api::ORIGIN_HEADER),
    HeaderName::from_static(crate::session::SESSION_HEADER),
    HeaderName::from_static(crate::api::STALENESS_HEADER),
    HeaderName::from_static(crate::api::HOME_HEADER),
];
/// The primary's refusals that say it applied nothing.
const NOT_APPLIED: [&str; 3] = ["ATOLL-NOT-PRIMARY", "ATOLL-PASSIVE", "ATOLL-FENCED"];

/// A write to send to the primary.
pub struct Write<'a> {
    pub method: Method,
    /// Path and query of the client's request, as it came.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The body as this region read it (within the same limits the primary applies).
    pub body: Bytes,
}

/// Sends refused writes on to the primary.
pub struct Forwarder {
    me: RegionId,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// Whether a request was forwarded to this region by another one (then it is never forwarded
/// again).
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_BY_HEADER)
}

impl Forwarder {
    pub fn new(me: RegionId, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            me,
            client,
            timeout,
        }
    }

    /// Forwards `w` to `target` at `api` and returns what to answer the client. `refusal` is
    /// this region's own `NOT-PRIMARY`, answered whenever the primary surely applied nothing.
    pub async fn forward(
        &self,
        target: &RegionId,
        api: SocketAddr,
        w: Write<'_>,
        refusal: AtollError,
    ) -> Result<Response, AtollError> {
        let deadline = Instant::now() + self.timeout;
        let uri = format!("http://{api}{}", w.path_and_query);
        let mut req = hyper::Request::builder().method(w.method).uri(&uri);
        for name in &REQUEST_HEADERS {
            for v in w.headers.get_all(name) {
                req = req.header(name, v);
            }
        }
        let me = HeaderValue::from_str(self.me.as_str())
            .map_err(|_| AtollError::BadRequest("region name is not a header value".into()))?;
        let req = req
            .header(FORWARDED_BY_HEADER, me)
            .body(Full::new(w.body))
            .map_err(|e| AtollError::BadRequest(format!("cannot forward the write: {e}")))?;
        let unknown = |detail: String| AtollError::ForwardOutcomeUnknown {
            target: target.to_string(),
            detail,
        };
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => {
                tracing::warn!(%target, "forwarded write: no answer in time, outcome unknown");
                return Err(unknown(format!("no answer within {:?}", self.timeout)));
            }
            // Never connected: nothing was sent, so nothing was applied.
            Ok(Err(e)) if e.is_connect() => {
                tracing::info!(%target, error = %e, "forwarded write: cannot connect to the primary");
                return Err(with_reason(
                    refusal,
                    &format!("forwarding to `{target}` failed: cannot connect"),
                ));
            }
            Ok(Err(e)) => {
                tracing::warn!(%target, error = %e, "forwarded write: connection failed, outcome unknown");
                return Err(unknown(format!("the connection failed: {e}")));
            }
            Ok(Ok(r)) => r,
        };
        let (parts, body) = resp.into_parts();
        let bytes =
            match tokio::time::timeout_at(deadline, Limited::new(body, MAX_ANSWER_BYTES).collect())
                .await
            {
                Ok(Ok(c)) => c.to_bytes(),
                Ok(Err(e)) => {
                    return Err(unknown(format!(
                        "its answer ({}) could not be read: {e}",
                        parts.status
                    )));
                }
                Err(_) => {
                    return Err(unknown(format!(
                        "its answer ({}) did not arrive within {:?}",
                        parts.status, self.timeout
                    )));
                }
            };
        if let Some(code) = error_code(&bytes)
            && ((parts.status == StatusCode::SERVICE_UNAVAILABLE
                && NOT_APPLIED.contains(&code.as_str()))
                || (parts.status == StatusCode::MISDIRECTED_REQUEST && code == "ATOLL-NOT-HOME"))
        {
            // An owned key's home moved while the write was on its way (`NOT-HOME` from the
            // region this one took for the home): not applied either.
            // The lease moved while the write was on its way: not applied there either. Say
            // so, and never try a third region.
            return Err(with_reason(
                refusal,
                &format!(
                    "forwarded to `{target}`, which refused it too ({code}): the lease or the key's home is moving"
                ),
            ));
        }
        let mut out = Response::builder().status(parts.status);
        for name in &ANSWER_HEADERS {
            for v in parts.headers.get_all(name) {
                out = out.header(name, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(target.as_str()) {
            out = out.header(FORWARDED_TO_HEADER, v);
        }
        out.body(Body::from(bytes))
            .map_err(|e| unknown(format!("its answer cannot be relayed: {e}")))
    }
}

/// The `error.code` of an atoll error body.
pub(crate) fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["error"]["code"].as_str().map(str::to_string)
}

/// `refusal` with `more` added to its reason (a `NOT-PRIMARY` says why it was not forwarded).
fn with_reason(refusal: AtollError, more: &str) -> AtollError {
    match refusal {
        AtollError::NotPrimary {
            primary,
            primary_api,
            reason,
        } => AtollError::NotPrimary {
            primary,
            primary_api,
            reason: format!("{reason}; {more}"),
        },
        AtollError::HomeUnavailable {
            keyspace,
            home,
            detail,
        } => AtollError::HomeUnavailable {
            keyspace,
            home,
            detail: format!("{detail}; {more}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::put;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn refusal() -> AtollError {
        AtollError::NotPrimary {
            primary: Some("us-east-1".into()),
            primary_api: Some("127.0.0.1:1".into()),
            reason: "this region is a standby".into(),
        }
    }

    fn region(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    /// A fake primary: counts the requests it gets and answers with `answer`.
    async fn primary(
        answer: impl Fn(HeaderMap, Bytes) -> Response + Clone + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/v1/kv/{ks}/{key}",
            put(move |headers: HeaderMap, body: Bytes| {
                let answer = answer.clone();
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    answer(headers, body)
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (addr, hits)
    }

    fn write(headers: &HeaderMap) -> Write<'_> {
        Write {
            method: Method::PUT,
            path_and_query: "/v1/kv/sessions/alice",
            headers,
            body: Bytes::from_static(b"v1"),
        }
    }

    #[tokio::test]
    async fn the_primarys_answer_is_relayed_with_the_region_that_applied_it() {
        let (addr, hits) = primary(|headers, body| {
            assert_eq!(
                headers.get(FORWARDED_BY_HEADER).unwrap(),
                "eu-west-1",
                "the forwarded request is marked"
            );
            assert_eq!(headers.get(header::AUTHORIZATION).unwrap(), "Bearer t");
            assert!(headers.get("x-sneaky").is_none());
            assert_eq!(&body[..], b"v1");
            Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .header(crate::api::TIMESTAMP_HEADER, "ts")
                .header("x-atoll-region", "us-east-1")
                .body(Body::from(r#"{"region":"us-east-1","seq":7}"#))
                .unwrap()
        })
        .await;
        let f = Forwarder::new(region("eu-west-1"), FORWARD_TIMEOUT);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert("x-sneaky", HeaderValue::from_static("1"));
        let resp = f
            .forward(&region("us-east-1"), addr, write(&headers), refusal())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get(FORWARDED_TO_HEADER).unwrap(),
            "us-east-1"
        );
        assert_eq!(
            resp.headers().get(crate::api::TIMESTAMP_HEADER).unwrap(),
            "ts"
        );
        // The answering region's own identity headers are not copied over this region's.
        assert!(resp.headers().get("x-atoll-region").is_none());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"region":"us-east-1","seq":7}"#);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refusal_of_the_primary_is_a_not_primary_here_and_is_not_tried_again() {
        for code in NOT_APPLIED {
            let (addr, hits) = primary(move |_, _| {
                Response::builder()
                    .status(503)
                    .body(Body::from(format!(
                        r#"{{"error":{{"code":"{code}","message":"m","hint":"h","retryable":true}}}}"#
                    )))
                    .unwrap()
            })
            .await;
            let f = Forwarder::new(region("eu-west-1"), FORWARD_TIMEOUT);
            let headers = HeaderMap::new();
            let e = f
                .forward(&region("us-east-1"), addr, write(&headers), refusal())
                .await
                .unwrap_err();
            assert_eq!(e.code(), "ATOLL-NOT-PRIMARY", "{code}");
            assert!(e.retryable());
            assert!(e.to_string().contains(code), "{e}");
            assert_eq!(hits.load(Ordering::SeqCst), 1, "{code}");
        }
    }

    #[tokio::test]
    async fn other_errors_of_the_primary_are_relayed() {
        let (addr, _) = primary(|_, _| {
            Response::builder()
                .status(409)
                .body(Body::from(r#"{"error":{"code":"ATOLL-SIBLING-LIMIT"}}"#))
                .unwrap()
        })
        .await;
        let f = Forwarder::new(region("eu-west-1"), FORWARD_TIMEOUT);
        let headers = HeaderMap::new();
        let resp = f
            .forward(&region("us-east-1"), addr, write(&headers), refusal())
            .await
            .unwrap();
        assert_eq!(resp.status(), 409);
        assert_eq!(
            resp.headers().get(FORWARDED_TO_HEADER).unwrap(),
            "us-east-1"
        );
    }

    #[tokio::test]
    async fn a_primary_that_cannot_be_reached_applied_nothing() {
        // A port nothing listens on: connection refused, nothing sent.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let f = Forwarder::new(region("eu-west-1"), FORWARD_TIMEOUT);
        let headers = HeaderMap::new();
        let e = f
            .forward(&region("us-east-1"), addr, write(&headers), refusal())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "ATOLL-NOT-PRIMARY", "{e}");
        assert!(e.retryable());
    }

    #[tokio::test]
    async fn a_primary_that_does_not_answer_in_time_leaves_the_outcome_unknown() {
        // Accepts and reads, never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let f = Forwarder::new(region("eu-west-1"), Duration::from_millis(300));
        let headers = HeaderMap::new();
        let e = f
            .forward(&region("us-east-1"), addr, write(&headers), refusal())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "ATOLL-FORWARD-OUTCOME-UNKNOWN", "{e}");
        assert_eq!(e.http_status(), 504);
        assert!(!e.retryable());
        hold.abort();
    }

    #[tokio::test]
    async fn a_connection_lost_after_sending_leaves_the_outcome_unknown() {
        // Reads the request, then closes without answering.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                drop(s);
            }
        });
        let f = Forwarder::new(region("eu-west-1"), FORWARD_TIMEOUT);
        let headers = HeaderMap::new();
        let e = f
            .forward(&region("us-east-1"), addr, write(&headers), refusal())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "ATOLL-FORWARD-OUTCOME-UNKNOWN", "{e}");
        task.abort();
    }

    #[test]
    fn a_forwarded_request_is_recognised() {
        let mut h = HeaderMap::new();
        assert!(!is_forwarded(&h));
        h.insert(FORWARDED_BY_HEADER, HeaderValue::from_static("x"));
        assert!(is_forwarded(&h));
    }
}
