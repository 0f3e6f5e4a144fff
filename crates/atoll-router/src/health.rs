//! The health-check state machine of one region, as one router sees it. Pure: results and the
//! current time in, state out.
//!
//! - **Initial state** is `Unknown`, which is *not routed to* (a region is not sent traffic before
//!   its first good check), unless the config says `initial = "healthy"`. The first good check makes
//!   an `Unknown` region healthy at once; `failure_threshold` failed checks make it `Unhealthy`.
//! - A healthy region becomes unhealthy after `failure_threshold` consecutive failed checks (as
//!   Route 53's `failure_threshold = 3`), or **immediately** when its `/healthz` says it is
//!   draining or fenced (it told us; no reason to wait).
//! - A region whose `/healthz` says `passive` (active-passive: it serves no client traffic until
//!   an operator promotes it) is **`Passive`** at once: not routed to, but not failed either. Its
//!   answers are good checks (it is up), so it is neither a flap nor held down; the first
//!   `serving` answer after it makes it healthy again at once (a promoted region takes traffic
//!   within one check interval). Only a region that went passive while it was unhealthy still has
//!   to pass its recovery (`recovery_threshold` good checks, passive ones included, and the
//!   hold-down).
//! - What a region says about the **write lease** ([`Lease`]: its role, epoch and the primary it
//!   knows) is kept next to its health by [`crate::state::RouterState`]; it never changes the
//!   health state except for `passive`.
//! - An unhealthy region recovers after `recovery_threshold` consecutive good checks, but not before
//!   its **hold-down** has passed: `hold_down_ms` after it went down, doubled for each flap within
//!   the flap window (capped), so a flapping region stays out instead of bouncing traffic.
//! - **Passive outlier detection**: the proxy reports failed requests; `outlier_failures`
//!   consecutive ones eject the region at once, before active checks notice.
//! - After recovering, a region's share **ramps** linearly from 0 to full over `ramp_ms` (staged
//!   failback) instead of jumping back.

pub use atoll_core::fence::Role;
use serde::{Deserialize, Serialize};

/// The reason shown for a passive region.
const PASSIVE_REASON: &str =
    "region reports passive (active-passive): it serves no client traffic until promoted";

/// Health-check settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthConfig {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    /// Route to a region before its first check (`true`), or only after a good one (`false`).
    pub initially_healthy: bool,
    /// Least time a region stays unhealthy after going down.
    pub hold_down_ms: u64,
    /// Flaps within this window double the hold-down each time.
    pub flap_window_ms: u64,
    /// Longest hold-down.
    pub max_hold_down_ms: u64,
    /// Consecutive failed proxied requests that eject a region (0: off).
    pub outlier_failures: u32,
    /// Staged failback: time for a recovered region's share to ramp from 0 to full (0: at once).
    pub ramp_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            timeout_ms: 800,
            failure_threshold: 3,
            recovery_threshold: 2,
            initially_healthy: false,
            hold_down_ms: 5_000,
            flap_window_ms: 300_000,
            max_hold_down_ms: 120_000,
            outlier_failures: 5,
            ramp_ms: 30_000,
        }
    }
}

/// Whether a region is routed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// Not checked yet (not routed to unless configured otherwise).
    Unknown,
    Healthy,
    Unhealthy,
    /// The region says it is passive (active-passive, not holding the lease): it answers, but
    /// serves no client traffic until promoted. Not routed to; not a failure.
    Passive,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Passive => "passive",
        }
    }
}

/// What a region's `/healthz` says about the write lease of split-brain fencing
/// (`docs/design/fencing.md`): its role, the lease epoch it knows, and the lease holder it knows.
/// A region that says nothing (an older region, an unfenced active-active cluster) is
/// [`Lease::default`]: `active`, epoch 0, no primary, which changes nothing in routing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub role: Role,
    pub epoch: u64,
    /// The lease holder this region knows (`None`: none, or not said).
    pub primary: Option<String>,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            role: Role::Active,
            epoch: 0,
            primary: None,
        }
    }
}

/// The outcome of one active check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The expected status (and body, if configured).
    Ok,
    /// Connection error, timeout, or an unexpected status/body.
    Failed(String),
    /// `/healthz` says the region is draining (shutting down or drained by its operator).
    Draining,
    /// `/healthz` says `status: "fenced"` (it must not take writes). Regions of issue 8 report
    /// fencing in `role` instead (a `fenced` role keeps serving reads, see [`Lease`]).
    Fenced,
    /// `/healthz` says the region is passive (active-passive: no client traffic until promoted).
    Passive,
}

/// A change of state, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthState,
    pub to: HealthState,
    pub reason: String,
}

/// The health of one region.
#[derive(Clone, Debug)]
pub struct RegionHealth {
    cfg: HealthConfig,
    state: HealthState,
    ok_streak: u32,
    fail_streak: u32,
    passive_fail_streak: u32,
    /// When the region last went unhealthy, and the hold-down in force since.
    down_since_ms: Option<u64>,
    hold_down_ms: u64,
    /// When the region last became healthy after having been unhealthy (for the ramp).
    recovered_at_ms: Option<u64>,
    last_flap_ms: Option<u64>,
    flaps: u32,
    reason: String,
    checks: u64,
    /// In `Passive`: it went passive while unhealthy, so it must still recover before serving.
    passive_while_down: bool,
}

impl RegionHealth {
    pub fn new(cfg: HealthConfig) -> Self {
        let state = if cfg.initially_healthy {
            HealthState::Healthy
        } else {
            HealthState::Unknown
        };
        Self {
            hold_down_ms: cfg.hold_down_ms,
            cfg,
            state,
            ok_streak: 0,
            fail_streak: 0,
            passive_fail_streak: 0,
            down_since_ms: None,
            recovered_at_ms: None,
            last_flap_ms: None,
            flaps: 0,
            reason: "not checked yet".to_string(),
            checks: 0,
            passive_while_down: false,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Why the region is in its state (the last failure, or "ok").
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn checks(&self) -> u64 {
        self.checks
    }

    pub fn is_routable(&self) -> bool {
        self.state == HealthState::Healthy
    }

    /// The region's share during staged failback: 0 right after recovery, 1 after `ramp_ms`.
    pub fn ramp(&self, now_ms: u64) -> f64 {
        match (self.state, self.recovered_at_ms) {
            (HealthState::Healthy, Some(at)) if self.cfg.ramp_ms > 0 => {
                (now_ms.saturating_sub(at) as f64 / self.cfg.ramp_ms as f64).clamp(0.0, 1.0)
            }
            (HealthState::Healthy, _) => 1.0,
            _ => 0.0,
        }
    }

    /// The hold-down in force (grows with flapping).
    pub fn hold_down_ms(&self) -> u64 {
        self.hold_down_ms
    }

    fn go_down(&mut self, reason: String, now_ms: u64) -> Option<Transition> {
        let from = self.state;
        self.reason = reason.clone();
        if from == HealthState::Unhealthy {
            return None;
        }
        if from == HealthState::Healthy {
            // A flap: it was up and goes down again within the window.
            let recent = self
                .last_flap_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= self.cfg.flap_window_ms);
            self.flaps = if recent { self.flaps + 1 } else { 0 };
            self.last_flap_ms = Some(now_ms);
            self.hold_down_ms = self
                .cfg
                .hold_down_ms
                .saturating_mul(1u64 << self.flaps.min(20))
                .min(self.cfg.max_hold_down_ms.max(self.cfg.hold_down_ms));
        }
        self.state = HealthState::Unhealthy;
        self.down_since_ms = Some(now_ms);
        self.recovered_at_ms = None;
        self.ok_streak = 0;
        Some(Transition {
            from,
            to: HealthState::Unhealthy,
            reason,
        })
    }

    /// Takes in the result of an active check.
    pub fn observe(&mut self, probe: Probe, now_ms: u64) -> Option<Transition> {
        self.checks += 1;
        match probe {
            Probe::Draining => {
                self.fail_streak = self.fail_streak.saturating_add(1);
                self.go_down("region reports draining".into(), now_ms)
            }
            Probe::Fenced => {
                self.fail_streak = self.fail_streak.saturating_add(1);
                self.go_down("region reports fenced".into(), now_ms)
            }
            Probe::Passive => {
                // It answered: a good check, only not one that lets it serve clients.
                self.fail_streak = 0;
                self.passive_fail_streak = 0;
                self.ok_streak = self.ok_streak.saturating_add(1);
                self.reason = PASSIVE_REASON.into();
                let from = self.state;
                match from {
                    HealthState::Passive => None,
                    _ => {
                        self.passive_while_down = from == HealthState::Unhealthy;
                        self.state = HealthState::Passive;
                        self.recovered_at_ms = None;
                        Some(Transition {
                            from,
                            to: HealthState::Passive,
                            reason: PASSIVE_REASON.into(),
                        })
                    }
                }
            }
            Probe::Failed(why) => {
                self.ok_streak = 0;
                self.fail_streak = self.fail_streak.saturating_add(1);
                if self.state == HealthState::Unhealthy {
                    self.reason = why;
                    return None;
                }
                if self.fail_streak >= self.cfg.failure_threshold {
                    self.go_down(
                        format!("{} consecutive failed checks: {why}", self.fail_streak),
                        now_ms,
                    )
                } else {
                    self.reason = format!(
                        "check failed ({}/{}): {why}",
                        self.fail_streak, self.cfg.failure_threshold
                    );
                    None
                }
            }
            Probe::Ok => {
                self.fail_streak = 0;
                self.passive_fail_streak = 0;
                self.ok_streak = self.ok_streak.saturating_add(1);
                match self.state {
                    HealthState::Healthy => {
                        self.reason = "ok".into();
                        None
                    }
                    HealthState::Unknown => {
                        self.state = HealthState::Healthy;
                        self.reason = "ok".into();
                        Some(Transition {
                            from: HealthState::Unknown,
                            to: HealthState::Healthy,
                            reason: "first good check".into(),
                        })
                    }
                    HealthState::Passive if !self.passive_while_down => {
                        // Promoted (or no longer passive): it has answered all along.
                        self.state = HealthState::Healthy;
                        self.reason = "ok".into();
                        Some(Transition {
                            from: HealthState::Passive,
                            to: HealthState::Healthy,
                            reason: "no longer passive".into(),
                        })
                    }
                    HealthState::Unhealthy | HealthState::Passive => {
                        let held = self
                            .down_since_ms
                            .is_some_and(|t| now_ms.saturating_sub(t) < self.hold_down_ms);
                        if self.ok_streak < self.cfg.recovery_threshold || held {
                            self.reason = if held {
                                format!("recovering: in hold-down ({} ms)", self.hold_down_ms)
                            } else {
                                format!(
                                    "recovering ({}/{} good checks)",
                                    self.ok_streak, self.cfg.recovery_threshold
                                )
                            };
                            if self.state == HealthState::Passive {
                                // Serving again, but still recovering from the failure it had
                                // before it went passive.
                                self.state = HealthState::Unhealthy;
                                self.passive_while_down = false;
                                return Some(Transition {
                                    from: HealthState::Passive,
                                    to: HealthState::Unhealthy,
                                    reason: format!("no longer passive, {}", self.reason),
                                });
                            }
                            return None;
                        }
                        let from = self.state;
                        self.state = HealthState::Healthy;
                        self.passive_while_down = false;
                        self.recovered_at_ms = Some(now_ms);
                        self.reason = "ok".into();
                        Some(Transition {
                            from,
                            to: HealthState::Healthy,
                            reason: format!("{} consecutive good checks", self.ok_streak),
                        })
                    }
                }
            }
        }
    }

    /// Takes in the outcome of a proxied request (passive outlier detection).
    pub fn observe_request(&mut self, ok: bool, now_ms: u64) -> Option<Transition> {
        if ok {
            self.passive_fail_streak = 0;
            return None;
        }
        self.passive_fail_streak = self.passive_fail_streak.saturating_add(1);
        if self.cfg.outlier_failures > 0
            && self.passive_fail_streak >= self.cfg.outlier_failures
            && self.state == HealthState::Healthy
        {
            self.fail_streak = self.cfg.failure_threshold;
            return self.go_down(
                format!(
                    "ejected: {} consecutive failed requests",
                    self.passive_fail_streak
                ),
                now_ms,
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            hold_down_ms: 0,
            ramp_ms: 10_000,
            ..HealthConfig::default()
        }
    }

    fn fail() -> Probe {
        Probe::Failed("timeout".into())
    }

    #[test]
    fn not_routed_before_first_good_check() {
        let mut h = RegionHealth::new(cfg());
        assert_eq!(h.state(), HealthState::Unknown);
        assert!(!h.is_routable());
        let t = h.observe(Probe::Ok, 0).unwrap();
        assert_eq!(t.to, HealthState::Healthy);
        assert!(h.is_routable());
        assert_eq!(h.ramp(0), 1.0, "first bring-up does not ramp");
    }

    #[test]
    fn initially_healthy_when_configured() {
        let h = RegionHealth::new(HealthConfig {
            initially_healthy: true,
            ..cfg()
        });
        assert!(h.is_routable());
    }

    #[test]
    fn unknown_becomes_unhealthy_after_threshold_failures() {
        let mut h = RegionHealth::new(cfg());
        assert!(h.observe(fail(), 0).is_none());
        assert!(h.observe(fail(), 1).is_none());
        assert_eq!(h.observe(fail(), 2).unwrap().to, HealthState::Unhealthy);
    }

    #[test]
    fn failure_and_recovery_thresholds() {
        let mut h = RegionHealth::new(cfg());
        h.observe(Probe::Ok, 0);
        assert!(h.observe(fail(), 1000).is_none());
        assert!(h.observe(fail(), 2000).is_none());
        assert!(h.is_routable(), "two failures of three keep it routed");
        let t = h.observe(fail(), 3000).unwrap();
        assert_eq!(t.to, HealthState::Unhealthy);
        assert!(t.reason.contains("3 consecutive"));
        // A good check in between resets the streak.
        assert!(h.observe(Probe::Ok, 4000).is_none());
        assert!(h.observe(fail(), 5000).is_none());
        assert!(h.observe(Probe::Ok, 6000).is_none());
        assert_eq!(h.observe(Probe::Ok, 7000).unwrap().to, HealthState::Healthy);
    }

    #[test]
    fn draining_and_fenced_are_immediate() {
        for p in [Probe::Draining, Probe::Fenced] {
            let mut h = RegionHealth::new(cfg());
            h.observe(Probe::Ok, 0);
            let t = h.observe(p, 1).unwrap();
            assert_eq!(t.to, HealthState::Unhealthy);
        }
    }

    #[test]
    fn hold_down_grows_with_flapping() {
        let mut h = RegionHealth::new(HealthConfig {
            hold_down_ms: 1000,
            recovery_threshold: 1,
            failure_threshold: 1,
            ..cfg()
        });
        h.observe(Probe::Ok, 0);
        h.observe(fail(), 100);
        assert_eq!(h.hold_down_ms(), 1000);
        assert!(h.observe(Probe::Ok, 500).is_none(), "held down");
        assert!(h.observe(Probe::Ok, 1200).is_some());
        h.observe(fail(), 1300);
        assert_eq!(h.hold_down_ms(), 2000, "second flap doubles");
        assert!(h.observe(Probe::Ok, 2400).is_none());
        assert!(h.observe(Probe::Ok, 3400).is_some());
        assert!(h.reason() == "ok");
    }

    #[test]
    fn staged_failback_ramps() {
        let mut h = RegionHealth::new(HealthConfig {
            recovery_threshold: 1,
            failure_threshold: 1,
            ..cfg()
        });
        h.observe(Probe::Ok, 0);
        h.observe(fail(), 1000);
        assert_eq!(h.ramp(1000), 0.0);
        h.observe(Probe::Ok, 2000);
        assert_eq!(h.ramp(2000), 0.0);
        assert!((h.ramp(7000) - 0.5).abs() < 1e-9);
        assert_eq!(h.ramp(20_000), 1.0);
    }

    #[test]
    fn passive_outlier_ejection() {
        let mut h = RegionHealth::new(HealthConfig {
            outlier_failures: 3,
            ..cfg()
        });
        h.observe(Probe::Ok, 0);
        assert!(h.observe_request(false, 1).is_none());
        assert!(h.observe_request(true, 2).is_none());
        assert!(h.observe_request(false, 3).is_none());
        assert!(h.observe_request(false, 4).is_none());
        let t = h.observe_request(false, 5).unwrap();
        assert_eq!(t.to, HealthState::Unhealthy);
        assert!(t.reason.contains("ejected"));
    }

    #[test]
    fn passive_is_out_at_once_but_not_a_failure() {
        let mut h = RegionHealth::new(HealthConfig {
            hold_down_ms: 60_000,
            ..cfg()
        });
        // A passive region is a verdict (not `unknown`) and never routed to.
        let t = h.observe(Probe::Passive, 0).unwrap();
        assert_eq!((t.from, t.to), (HealthState::Unknown, HealthState::Passive));
        assert!(!h.is_routable());
        assert!(h.reason().contains("passive"), "{}", h.reason());
        assert!(h.observe(Probe::Passive, 1000).is_none(), "no news");
        // Promoted: serving again within one check, no hold-down, no ramp.
        let t = h.observe(Probe::Ok, 2000).unwrap();
        assert_eq!((t.from, t.to), (HealthState::Passive, HealthState::Healthy));
        assert_eq!(h.ramp(2000), 1.0);
        // Demoted (a switchover away): out at once, and back at once, not held down as a flap.
        assert_eq!(
            h.observe(Probe::Passive, 3000).unwrap().to,
            HealthState::Passive
        );
        assert_eq!(h.ramp(3000), 0.0);
        assert_eq!(h.observe(Probe::Ok, 4000).unwrap().to, HealthState::Healthy);
        assert_eq!(h.hold_down_ms(), 60_000, "no flap counted");
        // One failed check of three while passive keeps it passive.
        h.observe(Probe::Passive, 5000);
        assert!(h.observe(fail(), 6000).is_none());
        assert_eq!(h.state(), HealthState::Passive);
        assert!(h.observe(Probe::Draining, 7000).is_some());
        assert_eq!(h.state(), HealthState::Unhealthy);
    }

    #[test]
    fn a_region_that_went_passive_while_down_still_recovers_first() {
        let mut h = RegionHealth::new(HealthConfig {
            hold_down_ms: 10_000,
            recovery_threshold: 2,
            failure_threshold: 1,
            ..cfg()
        });
        h.observe(Probe::Ok, 0);
        h.observe(fail(), 1000);
        assert_eq!(
            h.observe(Probe::Passive, 2000).unwrap().to,
            HealthState::Passive
        );
        // Serving again inside the hold-down: back to unhealthy (recovering), not routed.
        let t = h.observe(Probe::Ok, 3000).unwrap();
        assert_eq!(
            (t.from, t.to),
            (HealthState::Passive, HealthState::Unhealthy)
        );
        assert!(t.reason.contains("hold-down"), "{}", t.reason);
        assert!(!h.is_routable());
        // After the hold-down, with enough good checks, it recovers (and ramps).
        assert_eq!(
            h.observe(Probe::Ok, 12_000).unwrap().to,
            HealthState::Healthy
        );
        assert_eq!(h.ramp(12_000), 0.0);
    }

    #[test]
    fn a_lease_that_says_nothing_is_active() {
        let l = Lease::default();
        assert_eq!((l.role, l.epoch, l.primary), (Role::Active, 0, None));
    }
}
