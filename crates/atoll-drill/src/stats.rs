//! Client-side measurements over time: per target (`router` or a region), one bucket per second
//! with request and error counts and a latency histogram. Sliding windows for the guards, series
//! for the reports, and RTO from the write history. Pure.

use crate::history::WriteRecord;
use crate::scenario::Guards;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const BUCKET_MS: u64 = 1000;
/// Latencies above this are recorded as this (the histogram's range).
pub const MAX_LATENCY_MS: u64 = 600_000;

#[derive(Clone)]
struct Bucket {
    requests: u64,
    errors: u64,
    writes_ok: u64,
    hist: Histogram<u64>,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            requests: 0,
            errors: 0,
            writes_ok: 0,
            // 3 significant digits, 1 ms .. 10 min: a few KB per bucket.
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_MS, 2)
                .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable_hist())),
        }
    }
}

fn unreachable_hist() -> Histogram<u64> {
    // Histogram::new(2) cannot fail (2 significant digits is in range); this keeps the code free
    // of unwrap on a path the compiler cannot see through.
    Histogram::new_with_max(MAX_LATENCY_MS, 2)
        .unwrap_or_else(|_| panic!("histogram bounds are constant and valid"))
}

/// Every target's buckets.
#[derive(Default, Clone)]
pub struct Timeline {
    targets: BTreeMap<String, Vec<Bucket>>,
}

/// Requests, errors and latency over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

/// One point of a report's series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub t_s: u64,
    pub ok_per_s: u64,
    pub errors_per_s: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

impl Timeline {
    pub fn record(&mut self, target: &str, done_ms: u64, latency_ms: u64, ok: bool, write: bool) {
        let idx = (done_ms / BUCKET_MS) as usize;
        let v = self.targets.entry(target.to_string()).or_default();
        if v.len() <= idx {
            v.resize_with(idx + 1, Bucket::new);
        }
        let b = &mut v[idx];
        b.requests += 1;
        if ok {
            if write {
                b.writes_ok += 1;
            }
        } else {
            b.errors += 1;
        }
        let _ = b.hist.record(latency_ms.clamp(1, MAX_LATENCY_MS));
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.keys().cloned().collect()
    }

    /// The window `(now - window_ms, now]`, by whole buckets.
    pub fn window(&self, target: &str, now_ms: u64, window_ms: u64) -> WindowStats {
        let Some(v) = self.targets.get(target) else {
            return WindowStats::default();
        };
        let last = (now_ms / BUCKET_MS) as usize;
        let n = window_ms.div_ceil(BUCKET_MS).max(1) as usize;
        let first = (last + 1).saturating_sub(n);
        let mut h = Bucket::new().hist;
        let (mut req, mut err) = (0, 0);
        for b in v.iter().take(last + 1).skip(first) {
            req += b.requests;
            err += b.errors;
            let _ = h.add(&b.hist);
        }
        stats(req, err, &h)
    }

    /// The whole run of `target`.
    pub fn total(&self, target: &str) -> WindowStats {
        let Some(v) = self.targets.get(target) else {
            return WindowStats::default();
        };
        let mut h = Bucket::new().hist;
        let (mut req, mut err) = (0, 0);
        for b in v {
            req += b.requests;
            err += b.errors;
            let _ = h.add(&b.hist);
        }
        stats(req, err, &h)
    }

    /// One point per second.
    pub fn series(&self, target: &str) -> Vec<Point> {
        self.targets
            .get(target)
            .map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, b)| Point {
                        t_s: i as u64,
                        ok_per_s: b.requests - b.errors,
                        errors_per_s: b.errors,
                        p50_ms: if b.requests > 0 {
                            b.hist.value_at_quantile(0.5)
                        } else {
                            0
                        },
                        p99_ms: if b.requests > 0 {
                            b.hist.value_at_quantile(0.99)
                        } else {
                            0
                        },
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Successful writes per target so far (for `busiest`).
    pub fn writes_ok(&self, target: &str) -> u64 {
        self.targets
            .get(target)
            .map(|v| v.iter().map(|b| b.writes_ok).sum())
            .unwrap_or(0)
    }
}

fn stats(requests: u64, errors: u64, h: &Histogram<u64>) -> WindowStats {
    WindowStats {
        requests,
        errors,
        error_rate: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        p50_ms: if requests == 0 {
            0
        } else {
            h.value_at_quantile(0.5)
        },
        p99_ms: if requests == 0 {
            0
        } else {
            h.value_at_quantile(0.99)
        },
    }
}

/// Whether a window breaks the guards; the reason if so. Windows with fewer than
/// `min_requests` requests say nothing.
pub fn breach(g: &Guards, w: &WindowStats) -> Option<String> {
    if w.requests < g.min_requests {
        return None;
    }
    if w.error_rate >= g.error_rate {
        return Some(format!(
            "error rate {:.1} % >= {:.1} % ({} of {} requests)",
            w.error_rate * 100.0,
            g.error_rate * 100.0,
            w.errors,
            w.requests
        ));
    }
    if w.p99_ms >= g.p99_ms {
        return Some(format!("p99 {} ms >= {} ms", w.p99_ms, g.p99_ms));
    }
    None
}

/// Recovery of one target after a fault at `fault_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rto {
    pub target: String,
    pub fault: String,
    pub fault_ms: u64,
    /// From the fault to the first acknowledged write sent after the first failed one; 0 when
    /// no write failed; `None` when writes never succeeded again.
    pub write_ms: Option<u64>,
    /// From the fault to the first second at which the SLO window (the guards' thresholds) held
    /// again after it broke; 0 when it never broke; `None` when it never held again.
    pub slo_ms: Option<u64>,
}

/// [`Rto::write_ms`] from the history of writes sent to `target` (before `until_ms`).
pub fn rto_write(
    history: &[WriteRecord],
    target: &str,
    fault_ms: u64,
    until_ms: u64,
) -> Option<u64> {
    let mine: Vec<&WriteRecord> = history
        .iter()
        .filter(|w| w.via == target && w.sent_ms >= fault_ms && w.sent_ms < until_ms)
        .collect();
    let Some(first_fail) = mine
        .iter()
        .filter(|w| !w.is_acked())
        .map(|w| w.sent_ms)
        .min()
    else {
        return Some(0);
    };
    mine.iter()
        .filter(|w| w.is_acked() && w.sent_ms > first_fail)
        .map(|w| w.done_ms)
        .min()
        .map(|t| t.saturating_sub(fault_ms))
}

/// Seconds in a row the thresholds must hold for the SLO to count as met again.
pub const SLO_STABLE_SECS: u64 = 3;

/// [`Rto::slo_ms`] from the timeline: second by second after the fault, the target's error rate
/// and p99 against the guards' thresholds; met again at the start of the first run of
/// [`SLO_STABLE_SECS`] good seconds after a bad one.
pub fn rto_slo(
    t: &Timeline,
    g: &Guards,
    target: &str,
    fault_ms: u64,
    until_ms: u64,
) -> Option<u64> {
    let first = fault_ms / BUCKET_MS;
    let last = until_ms / BUCKET_MS;
    let mut broke = false;
    let mut good_since: Option<u64> = None;
    for sec in first..=last {
        let w = t.window(target, sec * BUCKET_MS, BUCKET_MS);
        let bad = w.requests > 0 && (w.error_rate >= g.error_rate || w.p99_ms >= g.p99_ms);
        if bad {
            broke = true;
            good_since = None;
        } else if w.requests > 0 && broke {
            let start = *good_since.get_or_insert(sec);
            if sec + 1 - start >= SLO_STABLE_SECS {
                return Some((start * BUCKET_MS).saturating_sub(fault_ms));
            }
        }
    }
    if broke { None } else { Some(0) }
}
