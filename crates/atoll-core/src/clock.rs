//! Physical clock sources. [`SystemClock`] is the only place in atoll that reads the wall clock;
//! everything else receives milliseconds from a [`Clock`], so tests and simulations can drive time
//! with a [`ManualClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of physical time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch. Not necessarily monotonic: the hybrid logical clock
    /// ([`crate::hlc::Hlc`]) turns it into monotonic timestamps.
    fn physical_ms(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn physical_ms(&self) -> u64 {
        (**self).physical_ms()
    }
}

impl<C: Clock + ?Sized> Clock for Box<C> {
    fn physical_ms(&self) -> u64 {
        (**self).physical_ms()
    }
}

/// The host's wall clock ([`SystemTime::now`]). The only wall-clock read in atoll.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one wall-clock read (`clippy.toml` disallows it everywhere else).
    #[allow(clippy::disallowed_methods)]
    fn physical_ms(&self) -> u64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            // A clock set before 1970 reads as the epoch.
            Err(_) => 0,
        }
    }
}

/// The host's wall clock shifted by a fixed offset: a region told to run its clock ahead (or
/// behind), for drills and tests of the clock-skew protections. Reads [`SystemClock`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OffsetClock {
    pub offset_ms: i64,
}

impl Clock for OffsetClock {
    fn physical_ms(&self) -> u64 {
        let now = SystemClock.physical_ms();
        if self.offset_ms >= 0 {
            now.saturating_add(self.offset_ms.unsigned_abs())
        } else {
            now.saturating_sub(self.offset_ms.unsigned_abs())
        }
    }
}

/// Milliseconds from a [`Clock`] as a [`SystemTime`] (for APIs that take one, such as certificate
/// validity checks), so that such code reads time through a `Clock` too.
pub fn system_time(clock: &dyn Clock) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(clock.physical_ms())
}

/// A clock that only moves when told to. For tests and deterministic simulation; cheap to share
/// behind an [`Arc`].
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: u64) -> Self {
        Self {
            ms: AtomicU64::new(ms),
        }
    }

    /// Sets the reading to `ms` (may go backwards, like a real clock stepped by NTP).
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }

    /// Moves the reading forward by `ms` (saturating at `u64::MAX`).
    pub fn advance(&self, ms: u64) {
        // The closure always returns `Some`, so `fetch_update` cannot fail.
        let _ = self
            .ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
                Some(cur.saturating_add(ms))
            });
    }
}

impl Clock for ManualClock {
    fn physical_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.physical_ms(), 1_000);
        c.advance(5);
        assert_eq!(c.physical_ms(), 1_005);
        c.set(10);
        assert_eq!(c.physical_ms(), 10);
        c.set(u64::MAX - 1);
        c.advance(10);
        assert_eq!(c.physical_ms(), u64::MAX);
    }

    #[test]
    fn system_clock_is_after_2020() {
        // 2020-01-01T00:00:00Z
        assert!(SystemClock.physical_ms() > 1_577_836_800_000);
        let shared: Arc<dyn Clock> = Arc::new(ManualClock::new(7));
        assert_eq!(shared.physical_ms(), 7);
    }
}
