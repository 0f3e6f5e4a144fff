//! Windowed rate-limit counters (`docs/design/rate-limits.md`): per time window, per region, the
//! cost that region admitted. Only the two newest windows are kept (a sliding estimate needs the
//! current and the previous one; older windows can never matter again), so the state stays small
//! and old windows are collected by the merge itself.
//!
//! Windows are chosen by the admitting write's HLC timestamp, so after the tombstone horizon
//! passes a window's end no region can add to it any more, and a whole key whose windows are all
//! past can be dropped (`RateWindows::idle_from`).

use super::Crdt;
use crate::region::RegionId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How admitted cost is counted against the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// The current window's total.
    Fixed,
    /// The current window's total plus the previous window's, weighted by how much of the
    /// previous window the sliding window still covers (the estimate Cloudflare and others use).
    Sliding,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Fixed => "fixed",
            Algorithm::Sliding => "sliding",
        }
    }
}

/// A `ratelimit` keyspace's rule (`[[keyspaces]] limit`, `window`, `algorithm`, `budget`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateRule {
    /// Most cost admitted per window, cluster-wide.
    pub limit: u64,
    /// Window length in ms.
    pub window_ms: u64,
    pub algorithm: Algorithm,
    /// `budget = "split"`: each region admits at most its share of the limit by its own count,
    /// so the cluster never admits more than the limit, even cut in pieces (`None`: `"shared"`,
    /// every region admits while the total it knows is under the limit). Shares add up to
    /// `limit`.
    pub shares: Option<BTreeMap<RegionId, u64>>,
}

/// What a region decided about one request at time `now_ms` (its HLC time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Budget left after this request (cluster-wide, or this region's share with `split`).
    pub remaining: u64,
    /// The limit the decision was made against (the region's share with `split`).
    pub limit: u64,
    /// When the current window ends (ms since the epoch).
    pub reset_at_ms: u64,
    /// Denied: how long until the same request would be admitted if nothing else is admitted
    /// meanwhile.
    pub retry_after_ms: u64,
}

/// The state of a rate-limit key (and the delta of one admission).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateWindows {
    /// Window length (ms). States of different lengths (the config changed) do not mix: the
    /// longer window wins a merge and the other's counts are dropped.
    pub window_ms: u64,
    /// Window start (ms since the epoch, a multiple of `window_ms`) to, per region, the cost it
    /// admitted in that window. At most the two newest windows; no zero entries.
    pub windows: BTreeMap<u64, BTreeMap<RegionId, u64>>,
}

fn total(w: Option<&BTreeMap<RegionId, u64>>) -> u64 {
    w.map_or(0, |m| m.values().fold(0u64, |a, v| a.saturating_add(*v)))
}

impl RateWindows {
    /// The start of the window holding instant `t`.
    pub fn window_of(window_ms: u64, t: u64) -> u64 {
        t - t % window_ms.max(1)
    }

    /// Drops every window but the two newest.
    fn prune(&mut self) {
        while self.windows.len() > 2 {
            self.windows.pop_first();
        }
        if let Some(&newest) = self.windows.keys().next_back() {
            let oldest_kept = newest.saturating_sub(self.window_ms);
            self.windows
                .retain(|&w, m| w >= oldest_kept && !m.is_empty());
        }
    }

    /// Cost counted against `limit` at `t`: by everyone, or by `only` (the region's own count,
    /// with a split budget).
    fn used(&self, rule: &RateRule, t: u64, only: Option<&RegionId>) -> u64 {
        let w = Self::window_of(rule.window_ms, t);
        let count = |start: u64| match only {
            Some(r) => self
                .windows
                .get(&start)
                .and_then(|m| m.get(r))
                .copied()
                .unwrap_or(0),
            None => total(self.windows.get(&start)),
        };
        let cur = if self.window_ms == rule.window_ms {
            count(w)
        } else {
            0
        };
        match rule.algorithm {
            Algorithm::Fixed => cur,
            Algorithm::Sliding => {
                let prev = if self.window_ms == rule.window_ms {
                    w.checked_sub(rule.window_ms).map_or(0, count)
                } else {
                    0
                };
                // The previous window's share still inside the sliding window, rounded up: the
                // estimate never under-counts.
                let left = u128::from(rule.window_ms - (t - w));
                let weighted =
                    (u128::from(prev) * left).div_ceil(u128::from(rule.window_ms.max(1)));
                cur.saturating_add(u64::try_from(weighted).unwrap_or(u64::MAX))
            }
        }
    }

    /// Decides a request of `cost` at `region`, at HLC time `t`, against `rule`, given the key's
    /// state `current`. When allowed, also returns the delta that records it: `region`'s new total
    /// in the current window.
    pub fn admit(
        current: Option<&RateWindows>,
        rule: &RateRule,
        region: &RegionId,
        t: u64,
        cost: u64,
    ) -> (Decision, Option<RateWindows>) {
        let empty = RateWindows {
            window_ms: rule.window_ms,
            windows: BTreeMap::new(),
        };
        let cur = current.unwrap_or(&empty);
        let w = Self::window_of(rule.window_ms, t);
        let reset_at_ms = w.saturating_add(rule.window_ms);
        let (limit, only) = match &rule.shares {
            Some(shares) => (shares.get(region).copied().unwrap_or(0), Some(region)),
            None => (rule.limit, None),
        };
        let used = cur.used(rule, t, only);
        if used.saturating_add(cost) <= limit {
            let mine = if cur.window_ms == rule.window_ms {
                cur.windows
                    .get(&w)
                    .and_then(|m| m.get(region))
                    .copied()
                    .unwrap_or(0)
            } else {
                0
            };
            let mut windows = BTreeMap::new();
            windows.insert(
                w,
                BTreeMap::from([(region.clone(), mine.saturating_add(cost))]),
            );
            let delta = RateWindows {
                window_ms: rule.window_ms,
                windows,
            };
            let decision = Decision {
                allowed: true,
                remaining: limit - used - cost,
                limit,
                reset_at_ms,
                retry_after_ms: 0,
            };
            return (decision, Some(delta));
        }
        let decision = Decision {
            allowed: false,
            remaining: limit.saturating_sub(used),
            limit,
            reset_at_ms,
            retry_after_ms: cur.retry_after(rule, t, only, limit, cost),
        };
        (decision, None)
    }

    /// How long from `t` until `cost` fits under `limit`, if nothing more is admitted: the first
    /// instant (ms) at which the estimate drops enough. A cost over the limit never fits: the end
    /// of the next window is reported.
    fn retry_after(
        &self,
        rule: &RateRule,
        t: u64,
        only: Option<&RegionId>,
        limit: u64,
        cost: u64,
    ) -> u64 {
        let w = Self::window_of(rule.window_ms, t);
        let next = w.saturating_add(rule.window_ms);
        match rule.algorithm {
            Algorithm::Fixed => next - t,
            Algorithm::Sliding => {
                // The estimate only falls as time passes; find the first millisecond it fits, by
                // bisection over the next two windows (after them it is 0).
                let horizon = next.saturating_add(rule.window_ms);
                if cost > limit {
                    return horizon - t;
                }
                let fits = |at: u64| self.used(rule, at, only).saturating_add(cost) <= limit;
                let (mut lo, mut hi) = (t, horizon);
                while lo + 1 < hi {
                    let mid = lo + (hi - lo) / 2;
                    if fits(mid) {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                hi - t
            }
        }
    }

    /// The decision a request of cost 0 would get at `t`: what is left of the budget now.
    pub fn peek(
        current: Option<&RateWindows>,
        rule: &RateRule,
        region: &RegionId,
        t: u64,
    ) -> Decision {
        RateWindows::admit(current, rule, region, t, 0).0
    }

    /// The cost admitted in the window starting at `start`, by every region.
    pub fn total_in(&self, start: u64) -> u64 {
        total(self.windows.get(&start))
    }

    /// From when the key can matter no more: the end of the window after its newest one (a
    /// sliding estimate still counts the newest window until then). Once the tombstone horizon
    /// has passed it, no region can add to these windows, and the key may be dropped.
    pub fn idle_from(&self) -> Option<u64> {
        self.windows
            .keys()
            .next_back()
            .map(|&w| w.saturating_add(self.window_ms.saturating_mul(2)))
    }
}

impl Crdt for RateWindows {
    /// The longer window wins; equal windows merge pointwise (maximum per region and window),
    /// then only the two newest windows stay.
    fn merge(&mut self, other: &Self) {
        if other.window_ms > self.window_ms {
            *self = other.clone();
            self.prune();
            return;
        }
        if other.window_ms < self.window_ms {
            return;
        }
        for (w, m) in &other.windows {
            let mine = self.windows.entry(*w).or_default();
            for (r, &v) in m {
                if v > mine.get(r).copied().unwrap_or(0) {
                    mine.insert(r.clone(), v);
                }
            }
        }
        self.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: &str) -> RegionId {
        RegionId::new(n).unwrap()
    }

    fn rule(limit: u64, algorithm: Algorithm) -> RateRule {
        RateRule {
            limit,
            window_ms: 1_000,
            algorithm,
            shares: None,
        }
    }

    /// Admits at `region` and merges the delta, as the store does.
    fn hit(s: &mut Option<RateWindows>, rule: &RateRule, region: &str, t: u64) -> Decision {
        let (d, delta) = RateWindows::admit(s.as_ref(), rule, &r(region), t, 1);
        if let Some(delta) = delta {
            match s {
                Some(s) => s.merge(&delta),
                None => *s = Some(delta),
            }
        }
        d
    }

    #[test]
    fn a_fixed_window_admits_up_to_the_limit_then_resets() {
        let rule = rule(3, Algorithm::Fixed);
        let mut s = None;
        let got: Vec<bool> = (0..5)
            .map(|i| hit(&mut s, &rule, "a", 10_100 + i).allowed)
            .collect();
        assert_eq!(got, [true, true, true, false, false]);
        let d = hit(&mut s, &rule, "a", 10_500);
        assert_eq!(
            (d.remaining, d.reset_at_ms, d.retry_after_ms),
            (0, 11_000, 500)
        );
        assert!(
            hit(&mut s, &rule, "a", 11_000).allowed,
            "the next window resets"
        );
    }

    #[test]
    fn regions_count_together_and_merges_commute() {
        let rule = rule(4, Algorithm::Fixed);
        let (mut a, mut b) = (None, None);
        assert!(hit(&mut a, &rule, "a", 5_000).allowed);
        assert!(hit(&mut a, &rule, "a", 5_001).allowed);
        assert!(hit(&mut b, &rule, "b", 5_002).allowed);
        let (sa, sb) = (a.clone().unwrap(), b.clone().unwrap());
        let ab = sa.clone().merged(&sb);
        assert_eq!(ab, sb.clone().merged(&sa));
        assert_eq!(ab.clone().merged(&ab), ab);
        assert_eq!(ab.total_in(5_000), 3);
        let mut joined = Some(ab);
        assert_eq!(hit(&mut joined, &rule, "b", 5_003).remaining, 0);
        assert!(!hit(&mut joined, &rule, "a", 5_004).allowed);
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_window() {
        let rule = rule(10, Algorithm::Sliding);
        let mut s = None;
        for i in 0..10 {
            assert!(hit(&mut s, &rule, "a", 1_000 + i).allowed);
        }
        // A quarter into the next window, 3/4 of the previous 10 still count (7.5, rounded up).
        let d = hit(&mut s, &rule, "a", 2_250);
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, 10 - 8 - 1);
        assert!(hit(&mut s, &rule, "a", 2_250).allowed);
        let d = hit(&mut s, &rule, "a", 2_250);
        assert!(!d.allowed, "{d:?}");
        // It fits once 2 (this window) + ceil(10 * (1000 - e) / 1000) + 1 <= 10: e >= 300.
        assert_eq!(d.retry_after_ms, 2_300 - 2_250);
        let fits = hit(&mut s, &rule, "a", 2_250 + d.retry_after_ms);
        assert!(fits.allowed, "retry_after is too early: {fits:?}");
    }

    #[test]
    fn a_split_budget_caps_each_region_by_its_own_count() {
        let mut rule = rule(5, Algorithm::Fixed);
        rule.shares = Some(BTreeMap::from([(r("a"), 3), (r("b"), 2)]));
        // Cut off from each other: each admits its share, never more; the cluster never more
        // than the limit.
        let (mut a, mut b) = (None, None);
        let na = (0..10)
            .filter(|i| hit(&mut a, &rule, "a", 7_000 + i).allowed)
            .count();
        let nb = (0..10)
            .filter(|i| hit(&mut b, &rule, "b", 7_000 + i).allowed)
            .count();
        assert_eq!((na, nb), (3, 2));
        let d = hit(&mut a, &rule, "a", 7_500);
        assert_eq!((d.allowed, d.limit), (false, 3));
    }

    #[test]
    fn only_the_two_newest_windows_stay_and_idle_keys_say_when() {
        let rule = rule(100, Algorithm::Fixed);
        let mut s = None;
        for t in [1_000, 2_000, 3_000, 4_500] {
            hit(&mut s, &rule, "a", t);
        }
        let s = s.unwrap();
        // The newest window and the one before it (a sliding estimate still weighs it).
        assert_eq!(
            s.windows.keys().copied().collect::<Vec<_>>(),
            vec![3_000, 4_000]
        );
        assert_eq!(s.idle_from(), Some(6_000));
        // A late delta for an old window is dropped by the merge, from either side.
        let mut old = RateWindows {
            window_ms: 1_000,
            ..Default::default()
        };
        old.windows.insert(1_000, BTreeMap::from([(r("b"), 9)]));
        assert_eq!(s.clone().merged(&old), s);
        assert_eq!(old.merged(&s), s);
    }

    #[test]
    fn a_longer_window_wins_a_merge() {
        let mut a = RateWindows {
            window_ms: 1_000,
            ..Default::default()
        };
        a.windows.insert(1_000, BTreeMap::from([(r("a"), 1)]));
        let mut b = RateWindows {
            window_ms: 60_000,
            ..Default::default()
        };
        b.windows.insert(0, BTreeMap::from([(r("b"), 2)]));
        assert_eq!(a.clone().merged(&b), b);
        assert_eq!(b.clone().merged(&a), b);
    }
}
