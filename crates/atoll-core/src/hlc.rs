//! Hybrid logical clock (Kulkarni et al.): timestamps that follow physical time closely, never go
//! backwards, and are greater than every timestamp a region has issued or observed.

use crate::error::{AtollError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A hybrid-logical-clock timestamp. Ordered by `wall_ms`, then `logical`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Physical component: milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical component: orders events within one `wall_ms`.
    pub logical: u32,
}

impl Timestamp {
    /// The smallest timestamp.
    pub const ZERO: Timestamp = Timestamp {
        wall_ms: 0,
        logical: 0,
    };

    /// A timestamp from its parts.
    pub const fn new(wall_ms: u64, logical: u32) -> Self {
        Self { wall_ms, logical }
    }

    /// The next timestamp after `self`: the logical component plus one, or, if that would overflow,
    /// the next millisecond. Saturates at the largest timestamp.
    fn successor(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Self::new(self.wall_ms, logical),
            None => match self.wall_ms.checked_add(1) {
                Some(wall_ms) => Self::new(wall_ms, 0),
                None => self,
            },
        }
    }
}

/// `wall_ms.logical`, e.g. `1700000000000.3`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.logical)
    }
}

/// Parses the [`Display`](fmt::Display) form `wall_ms.logical` (a bare `wall_ms` means logical 0).
impl FromStr for Timestamp {
    type Err = AtollError;

    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || AtollError::BadRequest(format!("invalid timestamp `{s}`: expected WALL_MS.LOGICAL"));
        let (wall, logical) = match s.split_once('.') {
            Some((w, l)) => (w, l),
            None => (s, "0"),
        };
        let wall_ms = wall.parse::<u64>().map_err(|_| bad())?;
        let logical = logical.parse::<u32>().map_err(|_| bad())?;
        Ok(Self::new(wall_ms, logical))
    }
}

/// A hybrid logical clock. Pure: the caller passes the physical time (from a
/// [`Clock`](crate::clock::Clock)) into every call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hlc {
    last: Timestamp,
    max_offset_ms: u64,
}

impl Default for Hlc {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_OFFSET_MS)
    }
}

impl Hlc {
    /// Default bound on how far a peer's clock may run ahead of ours.
    pub const DEFAULT_MAX_OFFSET_MS: u64 = 500;

    /// A clock that has issued nothing yet and rejects remote timestamps more than
    /// `max_offset_ms` ahead of the local physical clock.
    pub fn new(max_offset_ms: u64) -> Self {
        Self {
            last: Timestamp::ZERO,
            max_offset_ms,
        }
    }

    /// Timestamp for a local or send event: `(physical_ms, 0)` if the physical clock is ahead of
    /// the last timestamp, otherwise the last timestamp's successor. Strictly greater than every
    /// timestamp returned or observed before (until the largest representable timestamp).
    pub fn now(&mut self, physical_ms: u64) -> Timestamp {
        let next = if physical_ms > self.last.wall_ms {
            Timestamp::new(physical_ms, 0)
        } else {
            self.last.successor()
        };
        self.last = next;
        next
    }

    /// Receive rule: folds a remote timestamp into the clock and returns a timestamp strictly
    /// greater than both the last one and `remote`, and at least `physical_ms`.
    ///
    /// A remote timestamp more than `max_offset_ms` ahead of `physical_ms` is refused with
    /// [`AtollError::ClockSkew`] and leaves the clock unchanged, so one skewed peer cannot drag
    /// every region's clock into the future.
    pub fn observe(&mut self, remote: Timestamp, physical_ms: u64) -> Result<Timestamp> {
        if remote.wall_ms > physical_ms.saturating_add(self.max_offset_ms) {
            return Err(AtollError::ClockSkew {
                offset_ms: remote.wall_ms - physical_ms,
                max_ms: self.max_offset_ms,
            });
        }
        let seen = self.last.max(remote);
        let next = if physical_ms > seen.wall_ms {
            Timestamp::new(physical_ms, 0)
        } else {
            seen.successor()
        };
        self.last = next;
        Ok(next)
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// After a restart: makes sure no timestamp at or below `ts` (the last persisted one) is
    /// issued again.
    pub fn restore(&mut self, ts: Timestamp) {
        self.last = self.last.max(ts);
    }

    /// The configured bound on a peer's clock offset.
    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(w: u64, l: u32) -> Timestamp {
        Timestamp::new(w, l)
    }

    #[test]
    fn display_and_parse() {
        assert_eq!(ts(1_700_000_000_000, 3).to_string(), "1700000000000.3");
        assert_eq!(
            "1700000000000.3".parse::<Timestamp>().unwrap(),
            ts(1_700_000_000_000, 3)
        );
        assert_eq!("42".parse::<Timestamp>().unwrap(), ts(42, 0));
        for bad in ["", ".", "a.1", "1.b", "1.2.3", "-1.0", "1.4294967296"] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn ordering_is_wall_then_logical() {
        assert!(ts(1, 9) < ts(2, 0));
        assert!(ts(2, 0) < ts(2, 1));
    }

    #[test]
    fn now_is_strictly_monotonic() {
        let mut h = Hlc::new(500);
        let a = h.now(100);
        assert_eq!(a, ts(100, 0));
        let b = h.now(100);
        assert_eq!(b, ts(100, 1));
        // Physical clock steps backwards: logical keeps counting.
        let c = h.now(50);
        assert_eq!(c, ts(100, 2));
        let d = h.now(101);
        assert_eq!(d, ts(101, 0));
        assert!(a < b && b < c && c < d);
        assert_eq!(h.last(), d);
    }

    #[test]
    fn logical_overflow_bumps_wall() {
        let mut h = Hlc::new(500);
        h.restore(ts(10, u32::MAX));
        assert_eq!(h.now(5), ts(11, 0));
        h.restore(ts(u64::MAX, u32::MAX));
        // Saturates instead of wrapping or panicking.
        assert_eq!(h.now(5), ts(u64::MAX, u32::MAX));
    }

    #[test]
    fn receive_rule() {
        let mut h = Hlc::new(500);
        h.now(100); // (100,0)
        // Remote ahead of both local physical and last: continue from the remote.
        assert_eq!(h.observe(ts(300, 4), 200).unwrap(), ts(300, 5));
        // Remote behind last, physical behind last: successor of last.
        assert_eq!(h.observe(ts(250, 9), 200).unwrap(), ts(300, 6));
        // Same wall as last with a higher logical: successor of the larger.
        assert_eq!(h.observe(ts(300, 20), 200).unwrap(), ts(300, 21));
        // Physical ahead of everything: physical with logical 0.
        assert_eq!(h.observe(ts(300, 99), 400).unwrap(), ts(400, 0));
        // Local events after observing stay above the remote.
        assert_eq!(h.now(10), ts(400, 1));
    }

    #[test]
    fn observe_is_greater_than_remote_and_last() {
        let mut h = Hlc::new(1_000);
        for (remote, phys) in [
            (ts(5, 5), 5),
            (ts(5, u32::MAX), 0),
            (ts(900, 1), 1),
            (ts(2, 0), 3),
        ] {
            let before = h.last();
            let got = h.observe(remote, phys).unwrap();
            assert!(
                got > before && got > remote && got.wall_ms >= phys,
                "{got} {before} {remote}"
            );
        }
    }

    #[test]
    fn skew_is_rejected_and_leaves_clock_unchanged() {
        let mut h = Hlc::new(500);
        h.now(1_000);
        let before = h.clone();
        let err = h.observe(ts(1_501, 0), 1_000).unwrap_err();
        assert_eq!(
            err,
            AtollError::ClockSkew {
                offset_ms: 501,
                max_ms: 500
            }
        );
        assert_eq!(h, before);
        // Exactly at the bound is accepted.
        assert_eq!(h.observe(ts(1_500, 0), 1_000).unwrap(), ts(1_500, 1));
        // Huge physical readings do not overflow the bound check.
        assert!(h.observe(ts(u64::MAX, 0), u64::MAX - 1).is_ok());
        assert_eq!(h.max_offset_ms(), 500);
    }

    #[test]
    fn restore_never_goes_backwards() {
        let mut h = Hlc::default();
        assert_eq!(h.max_offset_ms(), Hlc::DEFAULT_MAX_OFFSET_MS);
        h.restore(ts(5_000, 7));
        // The physical clock is behind what was persisted before the restart.
        assert_eq!(h.now(4_000), ts(5_000, 8));
        h.restore(ts(10, 0));
        assert_eq!(h.last(), ts(5_000, 8));
    }
}
