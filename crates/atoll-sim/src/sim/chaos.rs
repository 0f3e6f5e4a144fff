//! Faults: cuts, partitions, crashes with power cuts, restarts and clock skew, scripted or drawn
//! at random during the chaos phase.

use super::*;

impl Sim {
    /// Cuts `from → to`.
    pub fn cut(&mut self, from: usize, to: usize) {
        self.net.set_up(from, to, false);
        self.trace
            .ev(&[kind::CUT, self.now, from as u64, to as u64]);
        self.trace.line(self.now, || {
            format!("cut {} -> {}", self.node_name(from), self.node_name(to))
        });
    }

    /// Cuts `a ↔ b` both ways.
    pub fn partition(&mut self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Brings `from → to` back up.
    pub fn heal(&mut self, from: usize, to: usize) {
        self.net.set_up(from, to, true);
        self.trace
            .ev(&[kind::HEAL, self.now, from as u64, to as u64]);
        self.trace.line(self.now, || {
            format!("heal {} -> {}", self.node_name(from), self.node_name(to))
        });
    }

    /// Crashes region `r`: its store and core are dropped, messages to it are lost, its events do
    /// nothing until it restarts on the same backend.
    pub fn crash(&mut self, r: usize) {
        self.crash_keeping(r, None);
    }

    /// Crashes region `r` with a power cut that loses everything not on stable storage.
    pub fn crash_losing_unsynced(&mut self, r: usize) {
        self.crash_keeping(r, Some(0));
    }

    /// A crash whose power cut keeps `keep` of the batches committed since the last durable
    /// commit (`None`: a random number of them).
    pub(super) fn crash_keeping(&mut self, r: usize, keep: Option<usize>) {
        if let Some(node) = self.regions[r].node.take() {
            drop(node);
            // Its served streams die with it (their subscribers see silence).
            self.streams.retain(|&(p, _, _), _| p != r);
            // A power cut: the stable state survives, with a prefix of what was committed since
            // the last sync.
            let backend = self.regions[r].backend.clone();
            let keep =
                keep.unwrap_or_else(|| self.rng.random_range(0..=backend.unsynced_batches()));
            let lost = backend.power_cut(keep).unwrap_or(0);
            self.stats.batches_lost_at_crash += lost as u64;
            self.regions[r].cursor_at_crash =
                atoll_store::read_applied(&*backend, &self.regions[r].id).unwrap_or_default();
            self.stats.crashes += 1;
            self.fencing_on_crash(r);
            self.trace.ev(&[kind::CRASH, self.now, r as u64]);
            self.trace.line(self.now, || {
                format!(
                    "crash {} (cursor {})",
                    self.ids[r], self.regions[r].cursor_at_crash
                )
            });
        }
    }

    /// Restarts a crashed region on its backend (a no-op if it is up).
    pub fn restart(&mut self, r: usize) -> Result<(), Violation> {
        if r >= self.regions.len() {
            self.set_witness_up(true);
            return Ok(());
        }
        if self.regions[r].node.is_some() || self.not_joined(r) {
            return Ok(());
        }
        self.set_clocks();
        self.start_region(r)?;
        self.trace.ev(&[kind::RESTART, self.now, r as u64]);
        self.trace.line(self.now, || {
            format!("restart {} from cursor {}", self.ids[r], self.applied(r))
        });
        Ok(())
    }

    /// Sets region `r`'s clock skew (on top of its small fixed offset).
    pub fn set_skew(&mut self, r: usize, skew_ms: i64) {
        let before = self.local_ms(r);
        let reg = &mut self.regions[r];
        reg.clock_high_ms = reg.clock_high_ms.max(before);
        reg.skew_ms = skew_ms;
        self.set_clocks();
        self.trace
            .ev(&[kind::SKEW, self.now, r as u64, skew_ms as u64]);
        self.trace
            .line(self.now, || format!("skew {} by {skew_ms} ms", self.ids[r]));
    }

    /// Heals every link, brings every clock back and restarts every crashed region.
    pub fn heal_everything(&mut self) -> Result<(), Violation> {
        self.net.heal_all();
        self.trace.ev(&[kind::HEAL_ALL, self.now]);
        self.trace.line(self.now, || "heal everything".into());
        if self.fen.is_some() {
            self.set_witness_up(true);
        }
        for r in 0..self.regions.len() {
            if self.regions[r].skew_ms != 0 {
                self.set_skew(r, 0);
            }
            self.restart(r)?;
        }
        Ok(())
    }

    pub(super) fn on_fault(&mut self) -> Result<(), Violation> {
        if !self.chaos {
            return Ok(());
        }
        let gap = self
            .rng
            .random_range(self.opts.fault_gap_ms.0..=self.opts.fault_gap_ms.1);
        self.schedule(gap, Event::Fault);
        let n = self.regions.len();
        // With a witness, it is one more node faults may hit (partitions, cuts, isolation, a
        // crash); without one, `nodes == n` and the draws are those from before fencing.
        let nodes = self.net.nodes();
        let dur = self
            .rng
            .random_range(self.opts.fault_duration_ms.0..=self.opts.fault_duration_ms.1);
        let a = self.rng.random_range(0..nodes);
        let b = (a + self.rng.random_range(1..nodes)) % nodes;
        let kind = self.rng.random_range(0..100u32);
        self.trace.ev(&[
            kind::FAULT,
            self.now,
            u64::from(kind),
            a as u64,
            b as u64,
            dur,
        ]);
        if kind < 30 {
            self.stats.partitions += 1;
            self.partition(a, b);
            self.schedule(dur, Event::Heal { from: a, to: b });
            self.schedule(dur, Event::Heal { from: b, to: a });
        } else if kind < 50 {
            self.stats.one_way_cuts += 1;
            self.cut(a, b);
            self.schedule(dur, Event::Heal { from: a, to: b });
        } else if kind < 60 {
            self.stats.isolations += 1;
            for q in 0..nodes {
                if q != a {
                    self.partition(a, q);
                    self.schedule(dur, Event::Heal { from: a, to: q });
                    self.schedule(dur, Event::Heal { from: q, to: a });
                }
            }
        } else if kind < 80 {
            if a >= n {
                if self.witness_up() {
                    self.set_witness_up(false);
                    self.schedule(dur, Event::Restart(a));
                }
                return Ok(());
            }
            // At least two regions stay up (one, in a two-region cluster with a witness).
            let keep = if n < 3 { 1 } else { 2 };
            let up = (0..n).filter(|&q| self.is_up(q)).count();
            if self.is_up(a) && up > keep {
                self.crash(a);
                self.schedule(dur, Event::Restart(a));
            }
        } else if a < n {
            self.stats.skews += 1;
            let (lo, hi) = self.skew_range();
            let skew = self.rng.random_range(lo..=hi);
            self.set_skew(a, skew as i64);
            self.schedule(dur, Event::Unskew(a));
        }
        Ok(())
    }

    /// How far a clock-skew fault sets a clock ahead. Leased runs keep every pair of clocks within
    /// `max_clock_offset_ms` (fixed offsets included): `LeaseState::is_late` relies on that bound
    /// (`docs/design/fencing.md`, "Epochs on writes"), and a holder whose clock runs further ahead
    /// has the writes it acknowledged just before losing its lease refused everywhere as late
    /// (shown by `tests/scenarios.rs::skew_beyond_the_bound_makes_a_lost_primarys_writes_late`).
    /// The other runs skew beyond the bound, which replication holds back.
    pub(super) fn skew_range(&self) -> (u64, u64) {
        if self
            .opts
            .fencing
            .as_ref()
            .is_some_and(|f| f.topology.leased())
        {
            let max = self.opts.max_clock_offset_ms;
            let hi = max.saturating_sub(2 * self.opts.base_offset_ms);
            (hi.min(max / 4), hi)
        } else {
            self.opts.skew_ms
        }
    }
}
