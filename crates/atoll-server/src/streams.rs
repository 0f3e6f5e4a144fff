//! The edge of the replication routes: body limits, the cap on subscription streams, and which
//! peers hold a live subscription stream of this region's writes.
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
//!
//! The replication routes listen on the same address as the client API, so anyone who reaches a
//! region reaches them. Before a handler sees a request:
//!
//! - its body is read under a fixed limit ([`MAX_HEARTBEAT_BYTES`], [`MAX_SUBSCRIBE_BYTES`]; a
//!   valid request of the largest cluster, [`atoll_config::MAX_REGIONS`] regions, is far below
//!   it), and a larger one is refused with `413 ATOLL-PEER-REQUEST-TOO-LARGE`, by
//!   `Content-Length` before anything is read ([`limit_bodies`], which
//!   [`crate::replication::router`] applies, and [`track`]);
//! - a subscription takes one of `[replication] max_subscription_streams` stream slots (default 4
//!   per peer) until its stream ends; with none free it is refused with `503 ATOLL-OVERLOADED`
//!   (retryable) before its handler runs.
//!
//! Both refusals are counted by `atoll_replication_requests_refused_total{route, reason}`, and
//! `atoll_replication_subscription_streams` says how many streams are served.

use crate::api::ApiError;
use crate::metrics::{EdgeRefusalLabels, Metrics};
use atoll_core::codec;
use atoll_core::repl::Subscribe;
use atoll_core::{AtollError, RegionId};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The route whose answers are subscription streams.
pub const SUBSCRIBE_PATH: &str = "/v1/replication/subscribe";
/// The route of one-way heartbeats.
pub const HEARTBEAT_PATH: &str = "/v1/replication/heartbeat";

/// Largest heartbeat body read. A heartbeat carries one frontier entry per region of the
/// cluster: a name of at most 63 bytes and at most 21 bytes of integers, so one of a cluster of
/// [`atoll_config::MAX_REGIONS`] regions is under 22 KiB (checked by a test below).
pub const MAX_HEARTBEAT_BYTES: usize = 64 << 10;
/// Largest subscription request read: one of the largest cluster, every region an origin, is
/// under 36 KiB (checked by a test below).
pub const MAX_SUBSCRIBE_BYTES: usize = 64 << 10;

/// The body limit of a replication route, and its name in metrics; `None` for other routes.
fn route_limit(method: &Method, path: &str) -> Option<(&'static str, usize)> {
    match (method, path) {
        (&Method::POST, HEARTBEAT_PATH) => Some(("heartbeat", MAX_HEARTBEAT_BYTES)),
        (&Method::POST, SUBSCRIBE_PATH) => Some(("subscribe", MAX_SUBSCRIBE_BYTES)),
        (&Method::POST, crate::replication::SNAPSHOT_PATH) => {
            Some(("snapshot", MAX_SUBSCRIBE_BYTES))
        }
        _ => None,
    }
}

/// Reads a replication request's body under `max`: refused by its `Content-Length` before
/// anything is read, else as soon as it passes `max`.
async fn read_limited(body: Body, path: &str, max: usize) -> Result<Bytes, AtollError> {
    let too_large = |len| AtollError::PeerRequestTooLarge {
        route: path.to_string(),
        len,
        max,
    };
    if let Some(len) = axum::body::HttpBody::size_hint(&body).exact()
        && len > max as u64
    {
        return Err(too_large(Some(usize::try_from(len).unwrap_or(usize::MAX))));
    }
    match Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(None)),
        Err(e) => Err(AtollError::MalformedBody(format!(
            "cannot read the {path} body: {e}"
        ))),
    }
}

fn count_refusal(metrics: &Metrics, route: &str, reason: &str) {
    metrics
        .replication_requests_refused
        .get_or_create(&EdgeRefusalLabels {
            route: route.to_string(),
            reason: reason.to_string(),
        })
        .inc();
}

/// Middleware: reads the body of a replication request under its route's limit (see the module
/// documentation) and hands the handler the bytes. [`crate::replication::router`] applies it, so
/// the limits hold wherever its routes are served; in a region, [`track`] reads (and counts what
/// it refuses) first.
pub async fn limit_bodies(req: Request, next: Next) -> Response {
    let Some((_, max)) = route_limit(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    match read_limited(body, parts.uri.path(), max).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// Live subscription streams served, per subscriber, and slots being taken.
#[derive(Debug, Default)]
pub struct Subscribers {
    live: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    streams: BTreeMap<RegionId, usize>,
    /// Slots taken by subscriptions whose handler has not answered yet.
    reserved: usize,
}

impl Slots {
    fn total(&self) -> usize {
        self.streams.values().sum::<usize>() + self.reserved
    }
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
                m.streams
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, _)| r.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Streams served right now, and slots being taken.
    pub fn total(&self) -> usize {
        self.live.lock().map(|m| m.total()).unwrap_or(0)
    }

    /// Counts a stream to `peer` until the returned guard is dropped.
    pub fn open(self: &Arc<Self>, peer: RegionId) -> StreamGuard {
        if let Ok(mut m) = self.live.lock() {
            *m.streams.entry(peer.clone()).or_insert(0) += 1;
        }
        StreamGuard {
            subscribers: self.clone(),
            peer,
        }
    }

    /// Takes one of `max` stream slots, if one is free, until the reservation is dropped or
    /// becomes a stream ([`Reservation::open`]).
    pub fn reserve(self: &Arc<Self>, max: usize) -> Option<Reservation> {
        let mut m = self.live.lock().ok()?;
        if m.total() >= max {
            return None;
        }
        m.reserved += 1;
        Some(Reservation {
            subscribers: self.clone(),
        })
    }
}

/// A stream slot taken for a subscription whose handler has not answered yet.
#[derive(Debug)]
pub struct Reservation {
    subscribers: Arc<Subscribers>,
}

impl Reservation {
    /// The slot becomes a stream to `peer`.
    pub fn open(self, peer: RegionId) -> StreamGuard {
        // Count the stream before the reservation ends, so the slot is never free in between.
        let guard = self.subscribers.open(peer);
        drop(self);
        guard
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut m) = self.subscribers.live.lock() {
            m.reserved = m.reserved.saturating_sub(1);
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
            && let Some(n) = m.streams.get_mut(&self.peer)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.streams.remove(&self.peer);
            }
        }
    }
}

/// What [`track`] enforces.
#[derive(Clone)]
pub struct Edge {
    pub subscribers: Arc<Subscribers>,
    /// Most subscription streams served at once (`[replication] max_subscription_streams`, or
    /// its default for the number of regions, which a config reload that adds a region raises).
    pub max_streams: Arc<std::sync::atomic::AtomicUsize>,
    pub metrics: Arc<Metrics>,
}

/// Wraps the replication routes: body limits, the stream cap, and [`Subscribers`] sees every
/// subscription stream.
pub fn track(routes: axum::Router, edge: Edge) -> axum::Router {
    routes
        .layer(middleware::from_fn_with_state(edge, observe))
        .layer(middleware::from_fn(crate::unread::layer))
}

async fn observe(State(edge): State<Edge>, req: Request, next: Next) -> Response {
    let Some((route, max)) = route_limit(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match read_limited(body, parts.uri.path(), max).await {
        Ok(b) => b,
        Err(e) => {
            if matches!(e, AtollError::PeerRequestTooLarge { .. }) {
                count_refusal(&edge.metrics, route, "too-large");
            }
            return ApiError(e).into_response();
        }
    };
    let req = Request::from_parts(parts, Body::from(bytes.clone()));
    if route != "subscribe" {
        return next.run(req).await;
    }
    // The handler decodes (and judges) the request itself; this only learns who asks.
    let Some(from) = codec::decode::<Subscribe>(&bytes).ok().map(|s| s.from) else {
        return next.run(req).await;
    };
    let max_streams = edge.max_streams.load(std::sync::atomic::Ordering::Relaxed);
    let Some(slot) = edge.subscribers.reserve(max_streams) else {
        count_refusal(&edge.metrics, route, "overloaded");
        tracing::warn!(
            peer = %from,
            max = max_streams,
            "subscription refused: this region already serves max_subscription_streams streams"
        );
        return ApiError(AtollError::Overloaded(format!(
            "this region already serves {} subscription streams, its limit ([replication] max_subscription_streams); one ends when its subscriber goes away",
            max_streams
        )))
        .into_response();
    };
    let resp = next.run(req).await;
    if !resp.status().is_success() {
        return resp;
    }
    let guard = slot.open(from);
    resp.map(move |body| {
        Body::new(body.map_frame(move |frame| {
            // The closure owns the guard: the count ends with the body.
            let _ = &guard;
            frame
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_core::causal::VersionVector;
    use atoll_core::hlc::Timestamp;
    use atoll_core::repl::{Echo, Heartbeat, OriginFrontier};

    /// The longest region names there are, one per region of the largest cluster.
    fn largest_cluster() -> Vec<RegionId> {
        (0..atoll_config::MAX_REGIONS)
            .map(|i| {
                let name = format!("r{i:03}-{}", "x".repeat(RegionId::MAX_LEN - 5));
                RegionId::new(&name).expect("valid name")
            })
            .collect()
    }

    #[test]
    fn the_largest_valid_requests_fit_the_body_limits() {
        let regions = largest_cluster();
        let hb = Heartbeat {
            from: regions[0].clone(),
            sent_ms: u64::MAX,
            hlc: Timestamp::new(u64::MAX, u32::MAX),
            echo: Some(Echo {
                sent_ms: u64::MAX,
                held_ms: u64::MAX,
            }),
            frontier: regions
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        OriginFrontier {
                            applied: u64::MAX,
                            caught_up_at_origin_ms: Some(u64::MAX),
                        },
                    )
                })
                .collect(),
            stable_age_ms: Some(u64::MAX),
            removed: Default::default(),
        };
        let hb_len = codec::encode(&hb).expect("encodes").len();
        assert!(
            hb_len * 2 < MAX_HEARTBEAT_BYTES,
            "a heartbeat of {} regions is {hb_len} bytes",
            regions.len()
        );
        let sub = Subscribe {
            from: regions[0].clone(),
            cluster: "c".repeat(63),
            origins: regions.clone(),
            applied: VersionVector::from(
                regions
                    .iter()
                    .map(|r| (r.clone(), u64::MAX))
                    .collect::<BTreeMap<_, _>>(),
            ),
        };
        let sub_len = codec::encode(&sub).expect("encodes").len();
        assert!(
            sub_len + sub_len / 2 < MAX_SUBSCRIBE_BYTES,
            "a subscription of {} origins is {sub_len} bytes",
            regions.len()
        );
    }

    #[test]
    fn stream_slots_are_capped_and_freed() {
        let s = Subscribers::new();
        let eu = RegionId::new("eu-west-1").unwrap();
        let a = s.reserve(2).expect("a free slot");
        let b = s.reserve(2).expect("a second free slot");
        assert!(s.reserve(2).is_none(), "both slots taken");
        assert!(s.streaming_to().is_empty(), "a reservation is not a stream");
        let stream = a.open(eu.clone());
        assert_eq!(s.streaming_to(), [eu.clone()].into());
        assert!(s.reserve(2).is_none(), "the stream holds its slot");
        drop(b);
        let c = s.reserve(2).expect("freed by dropping a reservation");
        assert_eq!(s.total(), 2);
        drop(stream);
        drop(c);
        assert_eq!(s.total(), 0);
        assert!(s.streaming_to().is_empty());
    }

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
