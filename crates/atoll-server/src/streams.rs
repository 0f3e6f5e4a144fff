//! Which peers hold a live subscription stream of this region's writes.
//!
//! A peer replicates this region's writes over `POST /v1/replication/subscribe`, whose answer is
//! an endless stream. [`track`] wraps the replication routes: a subscription answered with a
//! stream counts for its subscriber (the `from` of its request) until the stream's body is
//! dropped, i.e. until the stream ends or the connection breaks. While every peer holds one, a
//! write here reaches every peer at link speed; that (with every peer heard both ways) is what
//! `/healthz` and `/v1/status` report as replication being established.
//!
//! Right after a start, replication is not established yet: a region subscribes to a peer only
//! once heartbeats have gone both ways, which takes up to one heartbeat interval
//! (`[replication] heartbeat_interval_ms`) plus a round trip. `atoll demo` waits for it before
//! printing its table.

use atoll_core::RegionId;
use atoll_core::codec;
use atoll_core::repl::Subscribe;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The route whose answers are subscription streams.
pub const SUBSCRIBE_PATH: &str = "/v1/replication/subscribe";

/// Largest subscription request read (the same as axum's default body limit, which the
/// replication handler applies too).
const MAX_SUBSCRIBE_BYTES: usize = 2 << 20;

/// Live subscription streams served, per subscriber.
#[derive(Debug, Default)]
pub struct Subscribers {
    live: Mutex<BTreeMap<RegionId, usize>>,
}

impl Subscribers {
    pub fn new() -> Arc<Subscribers> {
        Arc::new(Subscribers::default())
    }

    /// The peers that hold at least one live stream of this region's writes.
    pub fn streaming_to(&self) -> BTreeSet<RegionId> {
        self.live
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, _)| r.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Counts a stream to `peer` until the returned guard is dropped.
    pub fn open(self: &Arc<Self>, peer: RegionId) -> StreamGuard {
        if let Ok(mut m) = self.live.lock() {
            *m.entry(peer.clone()).or_insert(0) += 1;
        }
        StreamGuard {
            subscribers: self.clone(),
            peer,
        }
    }
}

/// One live stream; dropping it ends its count.
#[derive(Debug)]
pub struct StreamGuard {
    subscribers: Arc<Subscribers>,
    peer: RegionId,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.subscribers.live.lock()
            && let Some(n) = m.get_mut(&self.peer)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// Wraps the replication routes so that [`Subscribers`] sees every subscription stream.
pub fn track(routes: axum::Router, subscribers: Arc<Subscribers>) -> axum::Router {
    routes.layer(middleware::from_fn_with_state(subscribers, observe))
}

async fn observe(
    State(subscribers): State<Arc<Subscribers>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST || req.uri().path() != SUBSCRIBE_PATH {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_SUBSCRIBE_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the subscription request: {e}"),
            )
                .into_response();
        }
    };
    // The handler decodes (and judges) the request itself; this only learns who asks.
    let from = codec::decode::<Subscribe>(&bytes).ok().map(|s| s.from);
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    match from {
        Some(peer) if resp.status().is_success() => {
            let guard = subscribers.open(peer);
            resp.map(move |body| {
                Body::new(body.map_frame(move |frame| {
                    // The closure owns the guard: the count ends with the body.
                    let _ = &guard;
                    frame
                }))
            })
        }
        _ => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_peer_until_dropped() {
        let s = Subscribers::new();
        let eu = RegionId::new("eu-west-1").unwrap();
        let ap = RegionId::new("ap-southeast-1").unwrap();
        let a = s.open(eu.clone());
        let b = s.open(eu.clone());
        let c = s.open(ap.clone());
        assert_eq!(s.streaming_to(), [ap.clone(), eu.clone()].into());
        drop(a);
        assert!(s.streaming_to().contains(&eu), "a second stream is live");
        drop(b);
        assert_eq!(s.streaming_to(), [ap].into());
        drop(c);
        assert!(s.streaming_to().is_empty());
    }
}
