//! The pure arithmetic of a link's pump: jitter samples, order-preserving release times and the
//! token bucket. Times are microseconds on the caller's monotonic scale.
//!
//! Architecture Invariant: a link never reorders bytes. Each chunk's release time is
//! `max(previous release, arrival + delay)`, so jitter can delay a chunk behind its predecessor but
//! never ahead of it ([`ReleaseClock`]); the pump then writes chunks strictly in queue order.

/// A small, fast, seedable random generator (SplitMix64). Good enough for jitter; not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One chunk's delay in microseconds: `latency + uniform(-jitter, +jitter)`, clamped at 0.
/// `u` is a uniform sample in `[0, 1)`.
pub fn delay_us(latency_ms: f64, jitter_ms: f64, u: f64) -> u64 {
    let offset = if jitter_ms > 0.0 {
        (2.0 * u - 1.0) * jitter_ms
    } else {
        0.0
    };
    let ms = (latency_ms + offset).max(0.0);
    (ms * 1000.0).round() as u64
}

/// Assigns release times that never go backwards.
#[derive(Clone, Debug, Default)]
pub struct ReleaseClock {
    last_us: u64,
}

impl ReleaseClock {
    /// The release time of a chunk that arrived at `arrival_us` and should be delayed by
    /// `delay_us`: `max(previous release, arrival + delay)`.
    pub fn schedule(&mut self, arrival_us: u64, delay_us: u64) -> u64 {
        let at = arrival_us.saturating_add(delay_us).max(self.last_us);
        self.last_us = at;
        at
    }
}

/// A token bucket in "debt" form: sending `n` bytes takes `n` tokens at once, possibly going into
/// debt, and the caller waits until the debt is paid back at `rate` bytes per second. Tokens
/// refill up to `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: f64,
    tokens: f64,
    last_us: u64,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second, with a burst of [`TokenBucket::burst_for`].
    pub fn new(rate: u64, now_us: u64) -> Self {
        let burst = Self::burst_for(rate) as f64;
        Self {
            rate: rate.max(1),
            burst,
            tokens: burst,
            last_us: now_us,
        }
    }

    /// The burst size for a rate: 20 ms worth of bytes, at least 1.
    pub fn burst_for(rate: u64) -> u64 {
        (rate / 50).max(1)
    }

    /// The largest write the pump should make at once: the burst, at most 16 KiB.
    pub fn piece_for(rate: u64) -> usize {
        usize::try_from(Self::burst_for(rate))
            .unwrap_or(usize::MAX)
            .min(16 * 1024)
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `n` bytes' worth of tokens at `now_us` and returns how many microseconds to wait
    /// before sending them (0 if the bucket had enough).
    pub fn take(&mut self, n: usize, now_us: u64) -> u64 {
        let elapsed = now_us.saturating_sub(self.last_us) as f64 / 1e6;
        self.last_us = self.last_us.max(now_us);
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            0
        } else {
            (-self.tokens / self.rate as f64 * 1e6).ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delays() {
        assert_eq!(delay_us(0.0, 0.0, 0.7), 0);
        assert_eq!(delay_us(20.0, 0.0, 0.0), 20_000);
        assert_eq!(delay_us(20.0, 5.0, 0.0), 15_000);
        assert_eq!(delay_us(20.0, 5.0, 0.5), 20_000);
        assert_eq!(delay_us(1.0, 5.0, 0.0), 0, "clamped at 0");
        let mut rng = super::Rng::new(7);
        for _ in 0..1000 {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
            let d = delay_us(20.0, 5.0, u);
            assert!((15_000..=25_000).contains(&d));
        }
    }

    #[test]
    fn bucket_holds_the_rate() {
        // 1 MB/s: sending 1 MB in 16 KiB pieces as fast as allowed takes ~1 s minus the burst.
        let rate = 1_000_000;
        let mut b = TokenBucket::new(rate, 0);
        let piece = TokenBucket::piece_for(rate);
        let mut now = 0u64;
        let mut sent = 0usize;
        while sent < 1_000_000 {
            now += b.take(piece, now);
            sent += piece;
        }
        let burst_us = TokenBucket::burst_for(rate);
        let ideal = ((sent as u64 - burst_us) as f64 / rate as f64 * 1e6) as u64;
        assert!(now.abs_diff(ideal) < 2_000, "{now} vs {ideal}");
    }

    proptest! {
        #[test]
        fn release_times_never_go_backwards(
            events in proptest::collection::vec((0u64..5_000, 0u64..50_000), 1..100)
        ) {
            let mut clock = ReleaseClock::default();
            let mut arrival = 0u64;
            let mut last = 0u64;
            for (gap, delay) in events {
                arrival += gap;
                let at = clock.schedule(arrival, delay);
                prop_assert!(at >= last);
                prop_assert!(at >= arrival + delay);
                last = at;
            }
        }
    }
}
