//! A bounded write load against one region, and the check, after a restart, that what the
//! clients were told matches what the region has.
//!
//! Each writer task alternates an lww put of a key of its own (`r{round}-t{task}-{i}`, written
//! once) with an increment of its own counter (`r{round}-c{task}`), one request at a time, and
//! records what it was told: 200 (acknowledged: must survive), another status (refused: must
//! have changed nothing) or no answer at all (in flight: may go either way). A writer stops at
//! its first unanswered request, at `max_iterations`, after `time_limit`, or when told to.

use super::{DEADLINE, within};
use anyhow::{Result, ensure};
use atoll_testkit::{Client, KvRead, Reply};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What happened to one writer's requests.
#[derive(Debug, Default)]
pub struct TaskLog {
    pub task: usize,
    /// lww puts sent: keys with index `0..sent` were attempted, none after.
    pub sent: usize,
    pub acked: Vec<usize>,
    /// No answer (connection refused/reset/timeout): outcome unknown.
    pub in_flight: Vec<usize>,
    /// An answer other than 200: must have changed nothing.
    pub refused: Vec<(usize, u16)>,
    pub incr_acked: i64,
    pub incr_in_flight: i64,
    /// Statuses of refused increments.
    pub incr_refused: Vec<u16>,
    pub max_seq: u64,
    /// Whether the task stopped because the region stopped answering (vs. hitting a bound).
    pub cut_off: bool,
}

impl TaskLog {
    /// Every non-200 status this writer got.
    pub fn refused_statuses(&self) -> impl Iterator<Item = u16> + '_ {
        self.refused
            .iter()
            .map(|(_, s)| *s)
            .chain(self.incr_refused.iter().copied())
    }

    /// Every request of this writer (a writer to `region`) got 200: none refused, none left
    /// without an answer.
    pub fn all_acknowledged(&self, region: &str) -> Result<()> {
        ensure!(
            self.in_flight.is_empty()
                && self.incr_in_flight == 0
                && self.refused_statuses().count() == 0,
            "{region} writer {} did not get 200 for everything: {self:?}",
            self.task
        );
        Ok(())
    }
}

pub fn lww_key(round: usize, task: usize, i: usize) -> String {
    format!("r{round}-t{task}-{i}")
}

pub fn lww_value(round: usize, task: usize, i: usize) -> String {
    format!("value of round {round} task {task} write {i}")
}

pub fn counter_key(round: usize, task: usize) -> String {
    format!("r{round}-c{task}")
}

fn seq_of(r: &Reply) -> u64 {
    r.json()
        .ok()
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or_default()
}

/// Bounds and shared signals of one load run.
#[derive(Clone)]
pub struct Load {
    pub round: usize,
    pub max_iterations: usize,
    pub time_limit: Duration,
    /// Acknowledged writes so far, over all writers.
    pub acks: Arc<AtomicU64>,
    /// Set to stop every writer before its next request.
    pub stop: Arc<AtomicBool>,
    /// At most one iteration (an lww put and an increment) per this interval, if set.
    pub pace: Option<Duration>,
}

impl Load {
    pub fn new(round: usize, max_iterations: usize, time_limit: Duration) -> Load {
        Load {
            round,
            max_iterations,
            time_limit,
            acks: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            pace: None,
        }
    }

    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Starts `tasks` writers against `c`.
    pub fn spawn(&self, c: &Client, tasks: usize) -> Vec<tokio::task::JoinHandle<TaskLog>> {
        (0..tasks)
            .map(|t| tokio::spawn(writer(c.clone(), self.clone(), t)))
            .collect()
    }
}

async fn writer(c: Client, load: Load, task: usize) -> TaskLog {
    let started = Instant::now();
    let round = load.round;
    let mut log = TaskLog {
        task,
        ..TaskLog::default()
    };
    let counter = counter_key(round, task);
    let mut tick = load.pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    for i in 0..load.max_iterations {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        if load.stop.load(Ordering::Relaxed) || started.elapsed() > load.time_limit {
            return log;
        }
        log.sent = i + 1;
        let key = lww_key(round, task, i);
        match c
            .kv_put_raw("sessions", &key, lww_value(round, task, i), None)
            .await
        {
            Ok(r) if r.status == 200 => {
                log.max_seq = log.max_seq.max(seq_of(&r));
                log.acked.push(i);
                load.acks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => log.refused.push((i, r.status)),
            Err(_) => {
                log.in_flight.push(i);
                log.cut_off = true;
                return log;
            }
        }
        match c.counter_add_raw("ratelimits", &counter, 1).await {
            Ok(r) if r.status == 200 => {
                log.max_seq = log.max_seq.max(seq_of(&r));
                log.incr_acked += 1;
                load.acks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => log.incr_refused.push(r.status),
            Err(_) => {
                log.incr_in_flight += 1;
                log.cut_off = true;
                return log;
            }
        }
    }
    log
}

/// Waits for every writer (each bounded by the deadline).
pub async fn join(handles: Vec<tokio::task::JoinHandle<TaskLog>>) -> Result<Vec<Arc<TaskLog>>> {
    let mut logs = Vec::with_capacity(handles.len());
    for h in handles {
        logs.push(Arc::new(within(DEADLINE, "a writer to stop", h).await??));
    }
    Ok(logs)
}

/// Counts from checking one round's writes after a restart.
#[derive(Debug, Default)]
pub struct Verdict {
    pub acked: usize,
    pub acked_present: usize,
    pub in_flight: usize,
    pub in_flight_present: usize,
    pub refused: usize,
    pub incr_acked: i64,
    pub incr_in_flight: i64,
    pub counter_total: i64,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn line(&self, label: &str) -> String {
        format!(
            "{label}: lww acked {} present {} | no answer {} (present {}) | refused {} | \
             increments acked {} no answer {} -> counters sum {}",
            self.acked,
            self.acked_present,
            self.in_flight,
            self.in_flight_present,
            self.refused,
            self.incr_acked,
            self.incr_in_flight,
            self.counter_total
        )
    }
}

async fn check_task(c: Client, round: usize, log: Arc<TaskLog>) -> Result<Verdict> {
    let mut v = Verdict::default();
    let t = log.task;
    for &i in &log.acked {
        v.acked += 1;
        match c.kv_get("sessions", &lww_key(round, t, i)).await? {
            KvRead::Value { value, .. } if value == lww_value(round, t, i).as_bytes() => {
                v.acked_present += 1;
            }
            other => v.problems.push(format!(
                "LOST: acknowledged write {} reads back as {other:?}",
                lww_key(round, t, i)
            )),
        }
    }
    for &i in &log.in_flight {
        v.in_flight += 1;
        match c.kv_get("sessions", &lww_key(round, t, i)).await? {
            KvRead::Missing { .. } => {}
            KvRead::Value { value, .. } if value == lww_value(round, t, i).as_bytes() => {
                v.in_flight_present += 1;
            }
            other => v.problems.push(format!(
                "unanswered write {} reads back as {other:?}",
                lww_key(round, t, i)
            )),
        }
    }
    for &(i, status) in &log.refused {
        v.refused += 1;
        let read = c.kv_get("sessions", &lww_key(round, t, i)).await?;
        if !matches!(read, KvRead::Missing { .. }) {
            v.problems.push(format!(
                "write {} was refused with HTTP {status} but reads back as {read:?}",
                lww_key(round, t, i)
            ));
        }
    }
    // Keys this task never sent must not exist.
    for i in log.sent..log.sent + 3 {
        let read = c.kv_get("sessions", &lww_key(round, t, i)).await?;
        if !matches!(read, KvRead::Missing { .. }) {
            v.problems.push(format!(
                "never-written key {} reads back as {read:?}",
                lww_key(round, t, i)
            ));
        }
    }
    let value = c.counter_get("ratelimits", &counter_key(round, t)).await?;
    v.incr_acked = log.incr_acked;
    v.incr_in_flight = log.incr_in_flight;
    v.counter_total = value;
    if value < log.incr_acked || value > log.incr_acked + log.incr_in_flight {
        v.problems.push(format!(
            "counter {} = {value}, expected {} acknowledged increments (+ at most {} unanswered)",
            counter_key(round, t),
            log.incr_acked,
            log.incr_in_flight
        ));
    }
    Ok(v)
}

/// Checks every write of `round` against the (restarted) region behind `c`.
pub async fn check_round(c: &Client, round: usize, logs: &[Arc<TaskLog>]) -> Result<Verdict> {
    let checks: Vec<_> = logs
        .iter()
        .map(|log| tokio::spawn(check_task(c.clone(), round, log.clone())))
        .collect();
    let mut total = Verdict::default();
    for h in checks {
        let v = within(DEADLINE, "reading back one writer's keys", h).await???;
        total.acked += v.acked;
        total.acked_present += v.acked_present;
        total.in_flight += v.in_flight;
        total.in_flight_present += v.in_flight_present;
        total.refused += v.refused;
        total.incr_acked += v.incr_acked;
        total.incr_in_flight += v.incr_in_flight;
        total.counter_total += v.counter_total;
        total.problems.extend(v.problems);
    }
    Ok(total)
}

/// Fails with the first problems found, if any.
pub fn no_problems(mut problems: Vec<String>, after: &str) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(20);
    anyhow::bail!("{n} problems {after}, first ones:\n{}", problems.join("\n"))
}
