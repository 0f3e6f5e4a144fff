//! The runner: validates the scenario against the target, starts the load and the guard
//! watcher, runs the steps in order (each raced against a tripped guard and an interrupt),
//! restores everything it changed, waits for the regions to converge, reads every written key
//! back from every region, runs the checkers and builds the [`Report`](crate::report::Report).

use crate::check::{self, FencingRules, Isolation};
use crate::error::{DrillError, Result};
use crate::history::{FinalState, Kind, Observed};
use crate::load::{self, Shared};
use crate::report::{Event, ExpectResult, REPORT_VERSION, Report, TargetSummary};
use crate::scenario::{Action, LatencyTarget, Metric, RegionRef, Scenario};
use crate::stats::{self, Rto};
use crate::target::{Ops, Target, enc};
use atoll_config::Model;
use atoll_core::clock::{Clock, SystemClock};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the guards are evaluated.
const GUARD_EVERY: Duration = Duration::from_millis(500);
/// How long a drill waits for a steady cluster before it starts.
const STEADY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Default)]
pub struct RunOptions {
    /// Turns true on Ctrl-C: restore, report, exit non-zero.
    pub interrupt: Option<watch::Receiver<bool>>,
    /// Start without waiting for a steady cluster (a cluster broken on purpose never is).
    pub allow_unsteady: bool,
}

/// A fault the drill holds on the link server: renewed every third of its lease until `until`.
struct HeldFault {
    ids: Vec<String>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Changes {
    /// Slot per fault added; `None` once it ended and its task was awaited.
    faults: Vec<Option<HeldFault>>,
    drained: BTreeSet<String>,
    down: BTreeSet<String>,
}

struct Runner<'a> {
    sc: &'a Scenario,
    ops: Arc<Ops>,
    t0: Instant,
    shared: Shared,
    events: Arc<Mutex<Vec<Event>>>,
    isolations: Vec<Isolation>,
    /// Regions not counted as survivors by the guards, until the given time.
    affected: Arc<Mutex<BTreeMap<String, u64>>>,
    changes: Changes,
    /// Faults and their times, for RTO.
    faults_at: Vec<(String, u64)>,
    /// `busiest`, fixed the first time a step names it (so `kill busiest` and `restart busiest`
    /// act on the same region).
    busiest: Option<String>,
}

fn ms(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Runner<'_> {
    fn now(&self) -> u64 {
        ms(self.t0)
    }

    fn event(&self, kind: &str, text: String, line: usize) {
        tracing::info!(at_ms = self.now(), kind, line, "{text}");
        let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        e.push(Event {
            at_ms: self.now(),
            kind: kind.to_string(),
            text,
            line,
        });
    }

    fn affect(&self, region: &str) {
        self.affected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(region.to_string(), u64::MAX);
    }

    fn unaffect_later(&self, region: &str) {
        let until = self.now() + self.sc.guards.window_ms;
        self.affected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(region.to_string(), until);
    }

    async fn resolve(&mut self, r: &RegionRef) -> Result<String> {
        match r {
            RegionRef::Named(n) => Ok(n.clone()),
            RegionRef::Primary => self.ops.primary().await,
            RegionRef::Busiest => {
                if let Some(b) = &self.busiest {
                    return Ok(b.clone());
                }
                let s = load::lock(&self.shared);
                let names = self.ops.t.region_names();
                let b = names
                    .iter()
                    .max_by_key(|n| s.acked_by.get(*n).copied().unwrap_or(0))
                    .cloned()
                    .ok_or_else(|| DrillError::control("busiest", "no regions", false))?;
                drop(s);
                self.busiest = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// Adds the faults, all or nothing, and keeps them renewed until `for_ms` has passed.
    async fn hold(&mut self, bodies: Vec<Value>, for_ms: u64) -> Result<usize> {
        let lease = self.sc.fault_lease_ms.min(for_ms.max(1000));
        let mut ids = Vec::new();
        for b in bodies {
            match self.ops.add_fault(b, lease).await {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for id in &ids {
                        let _ = self.ops.remove_fault(id).await;
                    }
                    return Err(e);
                }
            }
        }
        let (tx, mut rx) = watch::channel(false);
        let ops = self.ops.clone();
        let task_ids = ids.clone();
        let end = Instant::now() + Duration::from_millis(for_ms);
        let task = tokio::spawn(async move {
            let every = Duration::from_millis((lease / 3).max(200));
            loop {
                let next = (Instant::now() + every).min(end);
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = rx.changed() => break,
                }
                if Instant::now() >= end {
                    break;
                }
                let left = u64::try_from(end.saturating_duration_since(Instant::now()).as_millis())
                    .unwrap_or(0);
                for id in &task_ids {
                    if let Err(e) = ops.renew_fault(id, lease.min(left.max(1))).await {
                        tracing::warn!(fault = %id, error = %e, "cannot renew a fault (its lease ends it)");
                    }
                }
            }
            for id in &task_ids {
                let _ = ops.remove_fault(id).await;
            }
        });
        self.changes.faults.push(Some(HeldFault {
            ids,
            stop: tx,
            task,
        }));
        Ok(self.changes.faults.len() - 1)
    }

    /// Waits for held fault `i` to end on its own.
    async fn wait_fault(&mut self, i: usize) {
        // The slot is emptied only once the task is done: if this step is abandoned (a guard
        // tripped, Ctrl-C), the fault is still listed and `restore` ends it.
        if let Some(Some(f)) = self.changes.faults.get_mut(i) {
            let _ = (&mut f.task).await;
            self.changes.faults[i] = None;
        }
    }

    async fn heal_all(&mut self) {
        for f in self.changes.faults.drain(..).flatten() {
            let _ = f.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(10), f.task).await;
            // If the task could not remove them, the leases end them.
            let _ = f.ids;
        }
    }

    async fn wait_healthy(&self, regions: &[String], timeout_ms: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let mut bad = Vec::new();
            for r in regions {
                if self.ops.healthz(r).await.is_err() {
                    bad.push(r.clone());
                }
            }
            if bad.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DrillError::control(
                    "wait-healthy",
                    format!("{} not healthy within {timeout_ms} ms", bad.join(", ")),
                    true,
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn step(&mut self, action: &Action, line: usize) -> Result<()> {
        let t = self.now();
        match action {
            Action::Observe { for_ms } => {
                self.event("observe", format!("observe {for_ms} ms"), line);
                tokio::time::sleep(Duration::from_millis(*for_ms)).await;
            }
            Action::Drain {
                region,
                for_ms,
                reason,
            } => {
                let r = self.resolve(region).await?;
                // Always leased: without a `for`, the drain ends by itself 5 min after the
                // longest the drill can take, so a drill that dies leaves no drain for ever.
                let lease = for_ms.unwrap_or(self.sc.max_duration_ms() + 300_000);
                self.ops.drain(&r, Some(lease), reason).await?;
                self.changes.drained.insert(r.clone());
                self.affect(&r);
                self.faults_at.push((format!("drain {r}"), t));
                self.event("fault", format!("drain {r}"), line);
            }
            Action::Undrain { region } => {
                let r = self.resolve(region).await?;
                self.ops.undrain(&r).await?;
                self.changes.drained.remove(&r);
                self.unaffect_later(&r);
                self.event("restore", format!("undrain {r}"), line);
            }
            Action::Isolate {
                region,
                mode,
                fault,
            } => {
                let r = self.resolve(region).await?;
                let body = json!({"region": r, "kind": "isolate", "mode": mode.as_str()});
                let i = self.hold(vec![body], fault.for_ms).await?;
                self.affect(&r);
                self.isolations.push(Isolation {
                    region: r.clone(),
                    from_ms: t,
                    to_ms: t + fault.for_ms,
                });
                self.faults_at.push((format!("isolate {r}"), t));
                self.event(
                    "fault",
                    format!("isolate {r} ({}) for {} ms", mode.as_str(), fault.for_ms),
                    line,
                );
                if fault.wait {
                    self.wait_fault(i).await;
                    self.unaffect_later(&r);
                    self.event("restore", format!("{r} no longer isolated"), line);
                }
            }
            Action::Partition { a, b, mode, fault } => {
                let body = json!({"pair": format!("{a}<->{b}"), "kind": "partition", "mode": mode.as_str()});
                let i = self.hold(vec![body], fault.for_ms).await?;
                self.faults_at.push((format!("partition {a}<->{b}"), t));
                self.event(
                    "fault",
                    format!("partition {a}<->{b} for {} ms", fault.for_ms),
                    line,
                );
                if fault.wait {
                    self.wait_fault(i).await;
                    self.event("restore", format!("{a}<->{b} healed"), line);
                }
            }
            Action::Oneway { from, to, fault } => {
                // `from`'s bytes no longer reach `to`: its requests (link from->to, forward)
                // and its answers to `to`'s requests (link to->from, reverse).
                let bodies = vec![
                    json!({"link": format!("{from}->{to}"), "kind": "oneway", "direction": "forward"}),
                    json!({"link": format!("{to}->{from}"), "kind": "oneway", "direction": "reverse"}),
                ];
                let i = self.hold(bodies, fault.for_ms).await?;
                self.faults_at.push((format!("oneway {from}->{to}"), t));
                self.event(
                    "fault",
                    format!("one-way partition {from} -/-> {to} for {} ms", fault.for_ms),
                    line,
                );
                if fault.wait {
                    self.wait_fault(i).await;
                    self.event("restore", format!("{from}->{to} healed"), line);
                }
            }
            Action::Latency {
                target,
                extra_ms,
                fault,
            } => {
                let (body, what) = match target {
                    LatencyTarget::Pair(a, b) => (
                        json!({"pair": format!("{a}<->{b}"), "kind": "latency", "extra_ms": extra_ms}),
                        format!("{a}<->{b}"),
                    ),
                    LatencyTarget::Link(l) => (
                        json!({"link": l, "kind": "latency", "extra_ms": extra_ms}),
                        l.clone(),
                    ),
                };
                let i = self.hold(vec![body], fault.for_ms).await?;
                self.faults_at.push((format!("latency {what}"), t));
                self.event(
                    "fault",
                    format!("latency +{extra_ms} ms on {what} for {} ms", fault.for_ms),
                    line,
                );
                if fault.wait {
                    self.wait_fault(i).await;
                    self.event("restore", format!("latency on {what} ended"), line);
                }
            }
            Action::Heal => {
                self.heal_all().await;
                for iso in &mut self.isolations {
                    iso.to_ms = iso.to_ms.min(t);
                }
                self.event("restore", "every drill fault removed".into(), line);
            }
            Action::Kill { region } | Action::Stop { region } => {
                let r = self.resolve(region).await?;
                let kill = matches!(action, Action::Kill { .. });
                self.affect(&r);
                if kill {
                    self.ops.t.control.kill(&r).await?;
                } else {
                    self.ops.t.control.stop(&r).await?;
                }
                self.changes.down.insert(r.clone());
                self.faults_at
                    .push((format!("{} {r}", if kill { "kill" } else { "stop" }), t));
                self.event(
                    "fault",
                    format!("{} {r}", if kill { "kill -9" } else { "stop" }),
                    line,
                );
            }
            Action::Restart { region, timeout_ms } => {
                let r = self.resolve(region).await?;
                self.ops.t.control.restart(&r).await?;
                self.changes.down.remove(&r);
                self.wait_healthy(std::slice::from_ref(&r), *timeout_ms)
                    .await?;
                self.unaffect_later(&r);
                self.event("restore", format!("{r} restarted and healthy"), line);
            }
            Action::Promote {
                region,
                accept_data_loss,
            } => {
                let r = self.resolve(region).await?;
                let v = self.ops.promote(&r, *accept_data_loss).await?;
                self.faults_at.push((format!("promote {r}"), t));
                self.event(
                    "fault",
                    format!(
                        "promote {r}: epoch {} exposure {}",
                        v["epoch"], v["exposure"]
                    ),
                    line,
                );
            }
            Action::Switchover { region, timeout_ms } => {
                let r = self.resolve(region).await?;
                let v = self.ops.switchover(&r, *timeout_ms).await?;
                self.faults_at.push((format!("switchover to {r}"), t));
                self.event(
                    "fault",
                    format!(
                        "switchover to {r}: epoch {}, writes stopped {} ms",
                        v["epoch"], v["writes_stopped_ms"]
                    ),
                    line,
                );
            }
            Action::WaitHealthy { timeout_ms } => {
                let all = self.ops.t.region_names();
                self.wait_healthy(&all, *timeout_ms).await?;
                self.event("observe", "every region healthy".into(), line);
            }
        }
        Ok(())
    }

    /// Undoes whatever the drill changed that is still in effect.
    async fn restore(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.changes.faults.iter().any(Option::is_some) {
            self.heal_all().await;
            let now = self.now();
            for iso in &mut self.isolations {
                iso.to_ms = iso.to_ms.min(now);
            }
            self.event("restore", "removed the drill's link faults".into(), 0);
        }
        for r in std::mem::take(&mut self.changes.drained) {
            match self.ops.undrain(&r).await {
                Ok(()) => self.event("restore", format!("undrain {r}"), 0),
                Err(e) => problems.push(format!("cannot undrain {r}: {e}")),
            }
        }
        for r in std::mem::take(&mut self.changes.down) {
            match self.ops.t.control.restart(&r).await {
                Ok(()) => match self.wait_healthy(std::slice::from_ref(&r), 60_000).await {
                    Ok(()) => self.event("restore", format!("restarted {r}"), 0),
                    Err(e) => problems.push(format!("{r} restarted but not healthy: {e}")),
                },
                Err(e) => problems.push(format!("cannot restart {r}: {e}")),
            }
        }
        problems
    }
}

/// Runs `sc` against `target`.
pub async fn run(sc: &Scenario, target: Target, opts: RunOptions) -> Result<Report> {
    sc.validate(&target.config)?;
    let started_unix_ms = SystemClock.physical_ms();
    let run_id = format!("d{}", started_unix_ms % 100_000_000);
    let ops = Arc::new(Ops::new(target.clone())?);
    // Precondition: a steady cluster (a drill that starts on a cluster still electing or
    // catching up measures that, not the fault).
    let steady_deadline = Instant::now() + STEADY_TIMEOUT;
    if !opts.allow_unsteady {
        loop {
            match ops.unsteady().await {
                None => break,
                Some(why) if Instant::now() >= steady_deadline => {
                    return Err(DrillError::control(
                        "precondition",
                        format!("the cluster is not steady after {STEADY_TIMEOUT:?}: {why}"),
                        true,
                    ));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    let t0 = Instant::now();
    let shared: Shared = Arc::new(Mutex::new(load::Recorder::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let max_ops = u64::from(sc.load.rate) * (sc.max_duration_ms() / 1000 + 60);
    let clients = load::start(
        &sc.load,
        &target,
        &run_id,
        t0,
        shared.clone(),
        stop_rx,
        max_ops,
    );
    let mut runner = Runner {
        sc,
        ops: ops.clone(),
        t0,
        shared: shared.clone(),
        events: Arc::new(Mutex::new(Vec::new())),
        isolations: Vec::new(),
        affected: Arc::new(Mutex::new(BTreeMap::new())),
        changes: Changes::default(),
        faults_at: Vec::new(),
        busiest: None,
    };
    runner.event(
        "start",
        format!("drill {} started (run {run_id})", sc.name),
        0,
    );

    // The guard watcher.
    let (trip_tx, mut trip_rx) = watch::channel::<Option<String>>(None);
    let guard_task = {
        let shared = shared.clone();
        let affected = runner.affected.clone();
        let g = sc.guards.clone();
        let mut targets: Vec<String> = target.region_names();
        if target.router.is_some() {
            targets.push("router".into());
        }
        tokio::spawn(async move {
            if !g.enabled {
                return;
            }
            loop {
                tokio::time::sleep(GUARD_EVERY).await;
                let now = ms(t0);
                let s = load::lock(&shared);
                let aff = affected.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for t in &targets {
                    if aff.get(t).is_some_and(|until| *until > now) {
                        continue;
                    }
                    let w = s.timeline.window(t, now, g.window_ms);
                    if let Some(why) = stats::breach(&g, &w) {
                        let _ = trip_tx.send(Some(format!("{t}: {why}")));
                        return;
                    }
                }
            }
        })
    };

    let mut interrupt = opts.interrupt.clone();
    let mut aborted: Option<String> = None;
    let mut step_error: Option<String> = None;
    let mut interrupted = false;
    for step in &sc.steps {
        let fut = runner.step(&step.action, step.line);
        let res = tokio::select! {
            r = fut => Some(r),
            // A closed channel (guards disabled) never trips.
            _ = async {
                if trip_rx.wait_for(Option::is_some).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => None,
            _ = async {
                match interrupt.as_mut() {
                    Some(rx) => { let _ = rx.wait_for(|v| *v).await; }
                    None => std::future::pending::<()>().await,
                }
            } => { interrupted = true; None }
        };
        match res {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                step_error = Some(format!(
                    "line {}: step `{}` failed: {e}",
                    step.line,
                    step.action.name()
                ));
                runner.event("error", step_error.clone().unwrap_or_default(), step.line);
                break;
            }
            None => {
                if interrupted {
                    runner.event("abort", "interrupted: restoring".into(), step.line);
                } else {
                    let why = trip_rx.borrow().clone().unwrap_or_default();
                    runner.event(
                        "abort",
                        format!("guard tripped: {why}; restoring"),
                        step.line,
                    );
                    aborted = Some(why);
                }
                break;
            }
        }
    }
    if aborted.is_none()
        && let Some(why) = trip_rx.borrow().clone()
    {
        aborted = Some(why);
    }
    guard_task.abort();
    let mut problems = runner.restore().await;
    if let Some(e) = &step_error {
        problems.push(e.clone());
    }
    let end_of_faults_ms = runner.now();
    // Keep the load on a little after restoring, to see recovery, then stop it.
    tokio::time::sleep(Duration::from_millis(if interrupted { 0 } else { 2000 })).await;
    let _ = stop_tx.send(true);
    for c in clients {
        let _ = tokio::time::timeout(load::REQUEST_TIMEOUT + Duration::from_secs(2), c).await;
    }
    let load_end_ms = runner.now();
    runner.event(
        "observe",
        "load stopped; reading every written key back from every region".into(),
        0,
    );

    let history = load::lock(&shared).history.clone();
    let regions = target.region_names();
    // Converge: read back until nothing is missing or the settle deadline passes.
    let deadline = Instant::now() + Duration::from_millis(sc.load.settle_ms);
    let (fin, rpo) = loop {
        let fin = read_back(&ops, &history, &regions, sc.load.read_back_timeout_ms).await;
        let rpo = check::rpo(&history, &fin);
        if (rpo.lost.is_empty() && rpo.unchecked.is_empty())
            || Instant::now() >= deadline
            || interrupted
        {
            break (fin, rpo);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    let cfg = &target.config;
    let rules = FencingRules {
        leased: matches!(
            cfg.cluster.model,
            Model::ActiveStandby | Model::ActivePassive
        ),
        quorum: cfg.fencing.quorum,
        lease_ms: cfg.fencing.lease_ms,
    };
    let zombies = check::zombies(&history, &runner.isolations, &rules);
    let duplicates = check::duplicates(&history, &fin);

    let rec = load::lock(&shared);
    let mut targets: Vec<String> = rec.timeline.targets();
    targets.sort();
    let mut rto = Vec::new();
    for (fault, at) in &runner.faults_at {
        for t in &targets {
            rto.push(Rto {
                target: t.clone(),
                fault: fault.clone(),
                fault_ms: *at,
                write_ms: stats::rto_write(&history, t, *at, load_end_ms),
                slo_ms: stats::rto_slo(&rec.timeline, &sc.guards, t, *at, load_end_ms),
            });
        }
    }
    let summaries: Vec<TargetSummary> = targets
        .iter()
        .map(|t| TargetSummary {
            target: t.clone(),
            total: rec.timeline.total(t),
            series: rec.timeline.series(t),
        })
        .collect();
    // Survivors over the whole run: targets never affected.
    let ever_affected: BTreeSet<String> = runner
        .affected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    let (mut sreq, mut serr, mut sp99) = (0u64, 0u64, 0u64);
    for s in &summaries {
        if !ever_affected.contains(&s.target) {
            sreq += s.total.requests;
            serr += s.total.errors;
            sp99 = sp99.max(s.total.p99_ms);
        }
    }
    let acked = history.iter().filter(|w| w.is_acked()).count() as u64;
    let metric = |m: Metric| -> f64 {
        match m {
            Metric::LostWrites => rpo.lost.len() as f64,
            Metric::ZombieWrites => zombies.len() as f64,
            Metric::DuplicateWrites => duplicates.iter().map(|d| d.extra).sum::<i64>() as f64,
            Metric::AckedWrites => acked as f64,
            Metric::RtoWriteMs => rto
                .iter()
                .map(|r| r.write_ms.unwrap_or(u64::MAX))
                .max()
                .unwrap_or(0) as f64,
            Metric::RtoSloMs => rto
                .iter()
                .map(|r| r.slo_ms.unwrap_or(u64::MAX))
                .max()
                .unwrap_or(0) as f64,
            Metric::ErrorRate => {
                if sreq == 0 {
                    0.0
                } else {
                    serr as f64 / sreq as f64
                }
            }
            Metric::P99Ms => sp99 as f64,
            Metric::GuardTripped => f64::from(u8::from(aborted.is_some())),
        }
    };
    // The data checks always apply; an expect line on the same metric replaces its default.
    let mut expects = Vec::new();
    for (m, text) in [
        (Metric::LostWrites, "lost_writes == 0"),
        (Metric::ZombieWrites, "zombie_writes == 0"),
        (Metric::DuplicateWrites, "duplicate_writes == 0"),
    ] {
        if !sc.expect.iter().any(|e| e.metric == m) {
            let v = metric(m);
            expects.push(ExpectResult {
                text: text.to_string(),
                line: 0,
                actual: v,
                passed: v == 0.0,
            });
        }
    }
    for e in &sc.expect {
        let v = metric(e.metric);
        expects.push(ExpectResult {
            text: e.text.clone(),
            line: e.line,
            actual: v,
            passed: e.op.holds(v, e.value),
        });
    }
    let passed = aborted.is_none()
        && !interrupted
        && problems.is_empty()
        && rpo.unchecked.is_empty()
        && expects.iter().all(|e| e.passed);
    let survivors_error_rate = metric(Metric::ErrorRate);
    let events = runner
        .events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let _ = end_of_faults_ms;
    Ok(Report {
        version: REPORT_VERSION,
        scenario: sc.name.clone(),
        file: sc.file.clone(),
        description: sc.description.clone(),
        model: cfg.cluster.model.as_str().to_string(),
        run_id,
        started_unix_ms,
        duration_ms: runner.now(),
        passed,
        guard_tripped: aborted,
        interrupted,
        problems,
        events,
        targets: summaries,
        rto,
        acked_writes: acked,
        acked_by: rec.acked_by.clone(),
        failed_by_code: {
            let mut m = BTreeMap::new();
            for w in &history {
                let code = match &w.outcome {
                    crate::history::Outcome::Refused { status, code } => {
                        if code.is_empty() {
                            format!("HTTP {status}")
                        } else {
                            code.clone()
                        }
                    }
                    crate::history::Outcome::Unknown { reason } => format!("unknown: {reason}"),
                    crate::history::Outcome::Acked { .. } => continue,
                };
                *m.entry(format!("{} {code}", w.keyspace)).or_insert(0u64) += 1;
            }
            m
        },
        unknown_writes: history.iter().filter(|w| w.is_unknown()).count() as u64,
        refused_writes: history
            .iter()
            .filter(|w| !w.is_acked() && !w.is_unknown())
            .count() as u64,
        reads: rec.reads,
        rpo,
        zombies,
        duplicates,
        expects,
        survivors_error_rate,
        survivors_p99_ms: sp99,
        control: target.control.describe(),
    })
}

/// Reads every key the history wrote (acknowledged or not) from every region.
pub async fn read_back(
    ops: &Ops,
    history: &[crate::history::WriteRecord],
    regions: &[String],
    timeout_ms: u64,
) -> FinalState {
    let mut keys: BTreeMap<(String, String), Kind> = BTreeMap::new();
    for w in history {
        keys.insert((w.keyspace.clone(), w.key.clone()), w.kind);
    }
    let keys: Arc<Vec<((String, String), Kind)>> = Arc::new(keys.into_iter().collect());
    let http = match crate::target::http_client(Duration::from_secs(5)) {
        Ok(h) => h,
        Err(_) => return FinalState::new(),
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut fin = FinalState::new();
    for r in regions {
        let Some(base) = ops.t.region_url(r) else {
            continue;
        };
        let mut set = tokio::task::JoinSet::new();
        let workers = 16usize;
        for wkr in 0..workers {
            let keys = keys.clone();
            let http = http.clone();
            let base = base.to_string();
            let token = ops.t.client_token.clone();
            set.spawn(async move {
                let mut out = Vec::new();
                for (i, (id, kind)) in keys.iter().enumerate() {
                    if i % workers != wkr {
                        continue;
                    }
                    let obs = if Instant::now() >= deadline {
                        Observed::Unreadable {
                            reason: "read-back deadline passed".into(),
                        }
                    } else {
                        read_one(&http, &base, token.as_deref(), &id.0, &id.1, *kind).await
                    };
                    out.push((id.clone(), obs));
                }
                out
            });
        }
        let mut m = BTreeMap::new();
        while let Some(res) = set.join_next().await {
            if let Ok(v) = res {
                m.extend(v);
            }
        }
        fin.insert(r.clone(), m);
    }
    fin
}

async fn read_one(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    ks: &str,
    key: &str,
    kind: Kind,
) -> Observed {
    let path = match kind {
        Kind::Lww | Kind::Mvr => "kv",
        Kind::Counter => "counter",
        Kind::Set => "set",
    };
    let mut last = String::new();
    for _attempt in 0..3 {
        let mut req = http.get(format!("{base}/v1/{path}/{}/{}", enc(ks), enc(key)));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let status = resp.status().as_u16();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        if status == 404 {
            return Observed::Missing;
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        return match (kind, status) {
            (Kind::Lww, 200) => Observed::Lww { value: text },
            (Kind::Mvr, 200) => Observed::Mvr { values: vec![text] },
            (Kind::Mvr, 300) => Observed::Mvr {
                values: v["siblings"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s["value"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            (Kind::Counter, 200) => Observed::Counter {
                value: v["value"].as_i64().unwrap_or(0),
            },
            (Kind::Set, 200) => Observed::Set {
                members: v["members"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            _ => {
                last = format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                );
                continue;
            }
        };
    }
    Observed::Unreadable { reason: last }
}
