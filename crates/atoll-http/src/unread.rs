//! Request bodies that were answered before they were read are read to the end (and thrown
//! away) after the answer, so that the client can read it.
//!
//! An HTTP server that answers early (a `413` on a `Content-Length` over the limit, a `401`, a
//! `404`, a `405`) and then closes the connection while the client is still sending makes the
//! client's TCP stack receive a reset: the client's next send fails, and data it had received
//! (the answer) may be dropped before it reads it. That is what hyper does when a handler drops a
//! request body it has not read. [`layer`] wraps every request body: when the body is dropped
//! unread, the rest of it is read in the background (at most [`DRAIN_MAX_BYTES`], for at most
//! [`DRAIN_MAX_TIME`]; past that the connection is closed anyway), and the response says
//! `Connection: close`. A request that sent `Expect: 100-continue` is not drained: its client
//! has not sent the body and, given the final answer, will not; the connection is just closed.
//!
//! Used by the regions' API (`atoll-server`) and the router's proxy (`atoll-router`).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Bytes, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes of an unread body read after the answer.
pub const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// Longest time an unread body is read after the answer.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(30);

/// Middleware: see the module documentation.
pub async fn layer(req: Request, next: Next) -> Response {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let left_unread = Arc::new(AtomicBool::new(false));
    let flag = left_unread.clone();
    let req = req.map(|inner| {
        Body::new(Watched {
            inner: Some(inner),
            finished: false,
            drain: !expects_continue,
            left_unread: flag,
        })
    });
    let mut resp = next.run(req).await;
    if left_unread.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body that notices being dropped before its end.
struct Watched {
    inner: Option<Body>,
    finished: bool,
    drain: bool,
    left_unread: Arc<AtomicBool>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.finished || inner.is_end_stream() {
            return;
        }
        self.left_unread.store(true, Ordering::Relaxed);
        if !self.drain {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(inner));
        }
    }
}

/// Reads and discards the rest of a body, within the bounds.
async fn drain(mut body: Body) {
    let mut read: u64 = 0;
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.len() as u64);
                if read > DRAIN_MAX_BYTES {
                    break;
                }
            }
        }
    })
    .await;
}
