//! A drill scenario (`drills/*.toml`, `atoll_drill::scenario`) run in the simulation: the same
//! file, the same checkers (`atoll_drill::check`: RPO, zombie writes, duplicates), on simulated
//! regions over many seeds, so a drill's RPO and zombie writes come as a distribution instead of
//! one run's luck.
//!
//! What the simulation models of a scenario: the load's write mix (per keyspace policy: lww and
//! mvr puts, counter increments, set adds; reads are not simulated) at its rate, sent to the
//! lease holder ("router": leased models) or a random running region; `kill`/`stop` (a crash with
//! a power cut), `restart`, `isolate`, `partition`, `oneway` with their leases, `heal`,
//! `promote` and `switchover` (leased models), `wait-healthy` and `observe`. Not modelled, and
//! reported as skipped: `drain`/`undrain` (there is no router in the simulation) and `latency`
//! (the simulated links have fixed latencies). The topology is the scenario's first model (three
//! regions; the scenario's region names map to them in the demo's order, other names in order of
//! first use).

use crate::model::WriteOp;
use crate::sim::{Sim, SimOptions};
use crate::{FencingOptions, Violation};
use atoll_core::fence::Topology;
use atoll_core::op::KeyState;
use atoll_drill::check::{self, FencingRules, Isolation, LostWrite};
use atoll_drill::history::{FinalState, Hlc, Kind, Observed, Outcome, WriteRecord};
use atoll_drill::scenario::{Action, OpKind, RegionRef, Scenario};
use rand::{RngExt, SeedableRng};
use std::collections::BTreeMap;

/// The regions of a simulated drill, in order.
const REGIONS: usize = 3;
/// The demo's region names: scenario names map to simulated regions in this order.
const DEMO_NAMES: [&str; REGIONS] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
/// How long the cluster may take to converge after the drill heals everything.
const CONVERGE_MS: u64 = 120_000;

/// What one seed of a simulated drill found.
#[derive(Clone, Debug)]
pub struct DrillRun {
    pub seed: u64,
    pub writes_sent: u64,
    pub writes_acked: u64,
    /// Acknowledged writes missing from some region after healing (listed).
    pub lost: Vec<LostWrite>,
    /// Writes acknowledged by a region that was not allowed to accept them.
    pub zombies: usize,
    /// Non-idempotent writes applied twice.
    pub duplicates: usize,
    /// From the first fault to the first acknowledged write after it (virtual ms).
    pub rto_ms: Option<u64>,
    /// Steps the simulation does not model.
    pub skipped: Vec<String>,
    /// A simulation invariant broke (its own checkers, beyond the drill's).
    pub violation: Option<Violation>,
    /// What the load sent and what every region held after healing (for a closer look, and for
    /// checking the checkers).
    pub history: Vec<WriteRecord>,
    pub final_state: FinalState,
}

/// Whether the simulation can run this scenario at all (its topology).
pub fn topology_of(sc: &Scenario) -> Topology {
    match sc.models.first() {
        Some(atoll_config::Model::ActiveStandby) => Topology::ActiveStandby,
        Some(atoll_config::Model::ActivePassive) => Topology::ActivePassive,
        _ => Topology::ActiveActive { quorum: false },
    }
}

struct Runner<'a> {
    sc: &'a Scenario,
    sim: Sim,
    rng: crate::net::SimRng,
    names: Vec<String>,
    start: u64,
    history: Vec<WriteRecord>,
    next_id: u64,
    acked_by: [u64; REGIONS],
    /// Faults with a lease: (ends at virtual ms, the links they cut).
    faults: Vec<(u64, Vec<(usize, usize)>)>,
    isolations: Vec<Isolation>,
    first_fault_ms: Option<u64>,
    skipped: Vec<String>,
    leased: bool,
    /// The lease the fenced run uses (zombie rule 2's bound).
    lease_ms: u64,
}

/// Runs `sc` on seed `seed`.
pub fn run(sc: &Scenario, seed: u64) -> DrillRun {
    let topology = topology_of(sc);
    let mut opts = SimOptions::scripted();
    let mut f = FencingOptions::new(topology);
    let lease_ms = f.lease_ms;
    if topology.leased() {
        // No operator of its own: the scenario is the operator.
        f.operator_gap_ms = None;
        opts.fencing = Some(f);
    }
    let mut names: Vec<String> = DEMO_NAMES.iter().map(|s| s.to_string()).collect();
    // Scenario names that are not the demo's take the slots in order of first use.
    let mut free = 0;
    for s in &sc.steps {
        for n in named_regions(&s.action) {
            if !names.contains(&n) && free < REGIONS {
                names[free] = n;
                free += 1;
            }
        }
    }
    let sim = match Sim::new(seed, REGIONS, opts) {
        Ok(s) => s,
        Err(v) => {
            return DrillRun {
                seed,
                writes_sent: 0,
                writes_acked: 0,
                lost: Vec::new(),
                zombies: 0,
                duplicates: 0,
                rto_ms: None,
                skipped: Vec::new(),
                violation: Some(v),
                history: Vec::new(),
                final_state: FinalState::new(),
            };
        }
    };
    let mut r = Runner {
        sc,
        sim,
        rng: crate::net::SimRng::seed_from_u64(seed ^ 0xd1e5_5eed),
        names,
        start: 0,
        history: Vec::new(),
        next_id: 0,
        acked_by: [0; REGIONS],
        faults: Vec::new(),
        isolations: Vec::new(),
        first_fault_ms: None,
        skipped: Vec::new(),
        leased: topology.leased(),
        lease_ms,
    };
    let violation = r.go().err();
    r.finish(seed, violation)
}

fn named_regions(a: &Action) -> Vec<String> {
    let named = |r: &RegionRef| match r {
        RegionRef::Named(n) => vec![n.clone()],
        _ => Vec::new(),
    };
    match a {
        Action::Drain { region, .. }
        | Action::Undrain { region }
        | Action::Isolate { region, .. }
        | Action::Kill { region }
        | Action::Stop { region }
        | Action::Restart { region, .. }
        | Action::Promote { region, .. }
        | Action::Switchover { region, .. } => named(region),
        Action::Partition { a, b, .. } => vec![a.clone(), b.clone()],
        Action::Oneway { from, to, .. } => vec![from.clone(), to.clone()],
        _ => Vec::new(),
    }
}

impl Runner<'_> {
    fn now(&self) -> u64 {
        self.sim.now() - self.start
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn resolve(&self, r: &RegionRef) -> Option<usize> {
        match r {
            RegionRef::Named(n) => self.index(n),
            RegionRef::Busiest => (0..REGIONS).max_by_key(|&i| (self.acked_by[i], REGIONS - i)),
            RegionRef::Primary => self.sim.primary(),
        }
    }

    fn go(&mut self) -> Result<(), Violation> {
        // Let the cluster settle (links up both ways, the lease granted) before the drill starts.
        self.sim.run_for(3_000)?;
        self.start = self.sim.now();
        let steps = self.sc.steps.clone();
        for step in &steps {
            self.step(&step.action)?;
        }
        self.load_for(self.sc.load.settle_ms)?;
        Ok(())
    }

    fn fault_started(&mut self) {
        if self.first_fault_ms.is_none() {
            self.first_fault_ms = Some(self.now());
        }
    }

    /// Cuts `links` for `for_ms` (then healed by `load_for`), waiting it out if `wait`.
    fn lease_fault(
        &mut self,
        links: Vec<(usize, usize)>,
        for_ms: u64,
        wait: bool,
    ) -> Result<(), Violation> {
        for &(a, b) in &links {
            self.sim.cut(a, b);
        }
        self.fault_started();
        self.faults.push((self.sim.now() + for_ms, links));
        if wait {
            self.load_for(for_ms)?;
        }
        Ok(())
    }

    fn step(&mut self, a: &Action) -> Result<(), Violation> {
        match a {
            Action::Observe { for_ms } => self.load_for(*for_ms)?,
            Action::Drain { .. } | Action::Undrain { .. } | Action::Latency { .. } => {
                self.skipped.push(a.name().to_string());
            }
            Action::Isolate { region, fault, .. } => {
                if let Some(r) = self.resolve(region) {
                    let links = (0..REGIONS)
                        .filter(|&q| q != r)
                        .flat_map(|q| [(r, q), (q, r)])
                        .collect();
                    self.isolations.push(Isolation {
                        region: self.names[r].clone(),
                        from_ms: self.now(),
                        to_ms: self.now() + fault.for_ms,
                    });
                    self.lease_fault(links, fault.for_ms, fault.wait)?;
                }
            }
            Action::Partition { a, b, fault, .. } => {
                if let (Some(x), Some(y)) = (self.index(a), self.index(b)) {
                    self.lease_fault(vec![(x, y), (y, x)], fault.for_ms, fault.wait)?;
                }
            }
            Action::Oneway { from, to, fault } => {
                if let (Some(x), Some(y)) = (self.index(from), self.index(to)) {
                    self.lease_fault(vec![(x, y)], fault.for_ms, fault.wait)?;
                }
            }
            Action::Heal => self.heal_links(u64::MAX),
            Action::Kill { region } | Action::Stop { region } => {
                if let Some(r) = self.resolve(region) {
                    self.sim.crash(r);
                    self.fault_started();
                }
            }
            Action::Restart { region, .. } => {
                if let Some(r) = self.resolve(region) {
                    self.sim.restart(r)?;
                }
            }
            Action::Promote {
                region,
                accept_data_loss,
            } => {
                if let Some(r) = self.resolve(region) {
                    // A refusal is an answer (the drill's expect lines judge it), not a failure.
                    let _ = self.sim.promote(r, *accept_data_loss);
                    self.fault_started();
                }
            }
            Action::Switchover { region, timeout_ms } => {
                if let (Some(target), Some(p)) = (self.resolve(region), self.sim.primary()) {
                    let _ = self.sim.begin_switchover(p, target);
                    self.fault_started();
                    self.load_for(*timeout_ms.min(&10_000))?;
                }
            }
            Action::WaitHealthy { timeout_ms } => {
                let until = self.sim.now() + timeout_ms;
                while self.sim.now() < until && !(0..REGIONS).all(|r| self.sim.is_up(r)) {
                    self.load_for(100)?;
                }
            }
        }
        Ok(())
    }

    fn heal_links(&mut self, before: u64) {
        let (done, keep): (Vec<_>, Vec<_>) =
            self.faults.drain(..).partition(|(end, _)| *end <= before);
        self.faults = keep;
        for (_, links) in done {
            for (a, b) in links {
                self.sim.heal(a, b);
            }
        }
    }

    /// Runs the load for `ms` of virtual time, healing faults whose lease ended.
    fn load_for(&mut self, ms: u64) -> Result<(), Violation> {
        let gap = (1_000 / u64::from(self.sc.load.rate.max(1))).max(1);
        let end = self.sim.now() + ms;
        while self.sim.now() < end {
            let step = gap.min(end - self.sim.now());
            self.sim.run_for(step)?;
            let now = self.sim.now();
            self.heal_links(now);
            if step == gap {
                self.one_write();
            }
        }
        Ok(())
    }

    fn pick_region(&mut self) -> (String, Option<usize>) {
        let via_router = match self.sc.load.via {
            atoll_drill::scenario::Via::Router => true,
            atoll_drill::scenario::Via::Regions => false,
            atoll_drill::scenario::Via::Both => self.rng.random_bool(0.5),
        };
        if via_router && self.leased {
            return (
                "router".into(),
                self.sim.primary().filter(|&p| self.sim.is_up(p)),
            );
        }
        let up: Vec<usize> = (0..REGIONS).filter(|&r| self.sim.is_up(r)).collect();
        if up.is_empty() {
            return ("router".into(), None);
        }
        let r = up[self.rng.random_range(0..up.len())];
        let via = if via_router {
            "router".to_string()
        } else {
            self.names[r].clone()
        };
        (via, Some(r))
    }

    fn one_write(&mut self) {
        let writes: Vec<_> = self
            .sc
            .load
            .mix
            .iter()
            .filter(|m| m.op != OpKind::Get)
            .collect();
        let total: u32 = writes.iter().map(|m| m.weight).sum();
        if total == 0 {
            return;
        }
        let mut pick = self.rng.random_range(0..total);
        let Some(m) = writes.iter().find(|m| {
            if pick < m.weight {
                true
            } else {
                pick -= m.weight;
                false
            }
        }) else {
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        let lww_keys = u64::from(self.sc.load.lww_keys.max(1));
        // The simulated keyspaces: one per policy.
        let (kind, op, key, value, delta) = match (m.op, m.keyspace.as_str()) {
            (OpKind::Put, "carts") => {
                let key = format!("m{id}");
                let value = format!("v{id}");
                (
                    Kind::Mvr,
                    WriteOp::MvrPut {
                        key: key.clone(),
                        value: value.clone(),
                        with_context: false,
                        ttl_ms: None,
                    },
                    key,
                    value,
                    0,
                )
            }
            (OpKind::Put, _) => {
                let key = format!("k{}", id % lww_keys);
                let value = format!("v{id}");
                (
                    Kind::Lww,
                    WriteOp::LwwPut {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    key,
                    value,
                    0,
                )
            }
            (OpKind::Incr, _) => {
                let key = format!("c{}", id % 8);
                (
                    Kind::Counter,
                    WriteOp::CounterAdd {
                        key: key.clone(),
                        delta: 1,
                    },
                    key,
                    "1".to_string(),
                    1,
                )
            }
            (OpKind::Add, _) | (OpKind::Get, _) => {
                let key = format!("s{}", id % 8);
                let member = format!("m{id}");
                (
                    Kind::Set,
                    WriteOp::SetUpdate {
                        key: key.clone(),
                        add: vec![member.clone()],
                        remove: Vec::new(),
                    },
                    key,
                    member,
                    0,
                )
            }
        };
        let (via, target) = self.pick_region();
        let (keyspace, _) = op.target();
        let sent = self.now();
        let outcome = match target {
            None => Outcome::Refused {
                status: 503,
                code: "ATOLL-NO-HEALTHY-REGION".into(),
            },
            Some(r) => match self.sim.write(r, &op) {
                Ok(out) => {
                    self.acked_by[r] += 1;
                    Outcome::Acked {
                        region: self.names[r].clone(),
                        epoch: self.leased.then(|| self.sim.epoch_of(r, out.seq)).flatten(),
                        ts: Some(Hlc {
                            wall_ms: out.ts.wall_ms,
                            logical: out.ts.logical,
                        }),
                    }
                }
                Err(e) => Outcome::Refused {
                    status: e.http_status(),
                    code: e.code().to_string(),
                },
            },
        };
        self.history.push(WriteRecord {
            id,
            client: 0,
            via,
            keyspace: keyspace.to_string(),
            kind,
            key,
            value,
            delta,
            fenced: false,
            sent_ms: sent,
            done_ms: sent,
            outcome,
        });
    }

    fn finish(mut self, seed: u64, mut violation: Option<Violation>) -> DrillRun {
        if violation.is_none() {
            self.heal_links(u64::MAX);
            violation = self
                .sim
                .heal_everything()
                .and_then(|()| self.sim.run_until_converged(CONVERGE_MS))
                .and_then(|_| self.sim.check_all())
                .err();
        }
        let fin = self.final_state();
        let rpo = check::rpo(&self.history, &fin);
        let fencing = self.sim_fencing_rules();
        let zombies = check::zombies(&self.history, &self.isolations, &fencing).len();
        let duplicates = check::duplicates(&self.history, &fin).len();
        let rto_ms = self.first_fault_ms.and_then(|f| {
            self.history
                .iter()
                .filter(|w| w.sent_ms >= f && w.is_acked())
                .map(|w| w.done_ms - f)
                .next()
        });
        DrillRun {
            seed,
            writes_sent: self.history.len() as u64,
            writes_acked: self.history.iter().filter(|w| w.is_acked()).count() as u64,
            lost: rpo.lost,
            zombies,
            duplicates,
            rto_ms,
            skipped: self.skipped,
            violation,
            history: self.history,
            final_state: fin,
        }
    }

    fn sim_fencing_rules(&self) -> FencingRules {
        FencingRules {
            leased: self.leased,
            quorum: false,
            lease_ms: self.lease_ms,
        }
    }

    /// Every key the drill wrote, read back from every region.
    fn final_state(&self) -> FinalState {
        let mut keys: Vec<(String, String, Kind)> = self
            .history
            .iter()
            .map(|w| (w.keyspace.clone(), w.key.clone(), w.kind))
            .collect();
        keys.sort();
        keys.dedup();
        let mut fin: FinalState = BTreeMap::new();
        for r in 0..REGIONS {
            let mut region = BTreeMap::new();
            for (ks, key, _) in &keys {
                let seen = match self.sim.get(r, ks, key) {
                    None => Observed::Missing,
                    Some(KeyState::Lww(reg)) => match reg.value {
                        Some(v) => Observed::Lww {
                            value: String::from_utf8_lossy(&v).into_owned(),
                        },
                        None => Observed::Missing,
                    },
                    Some(KeyState::Mvr(m)) => Observed::Mvr {
                        // Drill writes carry no expiry: every value sibling is live.
                        values: m
                            .live_at(0)
                            .iter()
                            .filter_map(|s| s.value.as_ref())
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .collect(),
                    },
                    Some(KeyState::Counter(c)) => Observed::Counter {
                        value: i64::try_from(c.value()).unwrap_or(i64::MAX),
                    },
                    Some(KeyState::Set(s)) => Observed::Set {
                        members: s.members().iter().map(|m| m.to_string()).collect(),
                    },
                    // Drill loads never write rate-limit keyspaces (validation refuses them).
                    Some(KeyState::RateLimit(_)) => Observed::Missing,
                };
                region.insert((ks.clone(), key.clone()), seen);
            }
            fin.insert(self.names[r].clone(), region);
        }
        fin
    }
}

/// A summary of many seeds: the distribution of RPO (lost writes), zombie writes, duplicates and
/// RTO.
#[derive(Clone, Debug, Default)]
pub struct Distribution {
    pub seeds: u64,
    pub writes_acked: u64,
    /// Seeds with at least one lost write, and the most lost in one seed.
    pub seeds_with_loss: u64,
    pub max_lost: usize,
    pub zombies: usize,
    pub duplicates: usize,
    /// RTO per seed, sorted.
    pub rto_ms: Vec<u64>,
    /// Seeds whose simulation broke one of its own invariants.
    pub violations: Vec<(u64, String)>,
    pub skipped: Vec<String>,
}

impl Distribution {
    pub fn add(&mut self, run: &DrillRun) {
        self.seeds += 1;
        self.writes_acked += run.writes_acked;
        if !run.lost.is_empty() {
            self.seeds_with_loss += 1;
        }
        self.max_lost = self.max_lost.max(run.lost.len());
        self.zombies += run.zombies;
        self.duplicates += run.duplicates;
        if let Some(r) = run.rto_ms {
            let at = self.rto_ms.partition_point(|x| *x <= r);
            self.rto_ms.insert(at, r);
        }
        if let Some(v) = &run.violation {
            self.violations.push((run.seed, v.to_string()));
        }
        for s in &run.skipped {
            if !self.skipped.contains(s) {
                self.skipped.push(s.clone());
            }
        }
    }

    /// The `q` quantile (0..=1) of the RTOs.
    pub fn rto_quantile(&self, q: f64) -> Option<u64> {
        if self.rto_ms.is_empty() {
            return None;
        }
        let i = ((self.rto_ms.len() - 1) as f64 * q).round() as usize;
        self.rto_ms.get(i).copied()
    }
}

/// The distribution as text, one figure per line.
pub fn summary(sc: &Scenario, d: &Distribution) -> String {
    let q = |x: f64| {
        d.rto_quantile(x)
            .map_or_else(|| "-".to_string(), |v| format!("{v} ms"))
    };
    let mut s = format!(
        "scenario {} ({:?}) in simulation: {} seeds, {} acknowledged writes\n",
        sc.name,
        topology_of(sc),
        d.seeds,
        d.writes_acked
    );
    s.push_str(&format!(
        "  RPO: {} of {} seeds lost acknowledged writes (most in one seed: {})\n",
        d.seeds_with_loss, d.seeds, d.max_lost
    ));
    s.push_str(&format!(
        "  zombie writes: {}   duplicates: {}\n",
        d.zombies, d.duplicates
    ));
    s.push_str(&format!(
        "  RTO (first fault to the first acknowledged write): p50 {}, p99 {}, max {}\n",
        q(0.5),
        q(0.99),
        q(1.0)
    ));
    if !d.skipped.is_empty() {
        s.push_str(&format!(
            "  not modelled in the simulation (skipped): {}\n",
            d.skipped.join(", ")
        ));
    }
    s.push_str(&format!(
        "  simulation invariants broken: {}\n",
        d.violations.len()
    ));
    s
}
