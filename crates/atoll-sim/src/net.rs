//! The simulated network: one link per directed pair of regions, with a one-way latency, jitter,
//! and an up/down flag. Links are FIFO (like the TCP streams they stand for): a message never
//! overtakes an earlier one on the same link.

use rand::RngExt;

/// The simulation's RNG: ChaCha8, seeded explicitly (never from the OS).
pub type SimRng = rand::rngs::ChaCha8Rng;

/// One direction between two regions.
#[derive(Clone, Debug)]
pub struct Link {
    /// Base one-way latency.
    pub latency_ms: u64,
    /// Whether messages pass in this direction.
    pub up: bool,
    /// Arrival time of the last message sent on this link (FIFO).
    last_arrival_ms: u64,
}

/// Every link of an `n`-region cluster.
#[derive(Clone, Debug)]
pub struct Network {
    n: usize,
    links: Vec<Link>,
    jitter_ms: u64,
}

impl Network {
    /// A fully connected network with per-pair latencies drawn from `latency_ms` (the same both
    /// ways), each message getting up to `jitter_ms` more.
    pub fn new(n: usize, latency_ms: (u64, u64), jitter_ms: u64, rng: &mut SimRng) -> Self {
        let mut links = vec![
            Link {
                latency_ms: 0,
                up: true,
                last_arrival_ms: 0,
            };
            n * n
        ];
        for a in 0..n {
            for b in (a + 1)..n {
                let l = rng.random_range(latency_ms.0..=latency_ms.1);
                links[a * n + b].latency_ms = l;
                links[b * n + a].latency_ms = l;
            }
        }
        Self {
            n,
            links,
            jitter_ms,
        }
    }

    /// Number of nodes (regions, and the witness when there is one).
    pub fn nodes(&self) -> usize {
        self.n
    }

    /// The link `from → to`.
    pub fn link(&self, from: usize, to: usize) -> &Link {
        &self.links[from * self.n + to]
    }

    /// Whether `from → to` is up.
    pub fn is_up(&self, from: usize, to: usize) -> bool {
        self.link(from, to).up
    }

    /// Sets `from → to` up or down.
    pub fn set_up(&mut self, from: usize, to: usize, up: bool) {
        self.links[from * self.n + to].up = up;
    }

    /// Whether every link is up.
    pub fn all_up(&self) -> bool {
        (0..self.n).all(|a| (0..self.n).all(|b| a == b || self.is_up(a, b)))
    }

    /// Brings every link up.
    pub fn heal_all(&mut self) {
        for l in &mut self.links {
            l.up = true;
        }
    }

    /// When a message sent now on `from → to` arrives (latency + jitter, never before the
    /// previous message on the link).
    pub fn arrival(&mut self, from: usize, to: usize, now_ms: u64, rng: &mut SimRng) -> u64 {
        let jitter = if self.jitter_ms > 0 {
            rng.random_range(0..=self.jitter_ms)
        } else {
            0
        };
        let link = &mut self.links[from * self.n + to];
        let at = (now_ms + link.latency_ms + jitter).max(link.last_arrival_ms);
        link.last_arrival_ms = at;
        at
    }
}
