//! End-to-end: graceful shutdown under load. SIGTERM arrives while 16 clients are writing: every
//! request that got an answer got 200 or 503 (never a 5xx crash or a torn response), the process
//! exits with code 0 within the stop deadline, and after a restart every acknowledged write is
//! there and every refused one is not.

use crate::common;

use anyhow::{Result, ensure};
use atoll_testkit::process::STOP_TIMEOUT;
use atoll_testkit::{RegionProcess, test_dir, wait_until_async};
use common::load::{Load, check_round, join, no_problems};
use common::{BIN, CONFIG, DEADLINE, REGION, ok};
use std::sync::atomic::Ordering;
use std::time::Duration;

const TASKS: usize = 16;
const MAX_ITERATIONS_PER_TASK: usize = 5_000;
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(30);
/// SIGTERM is sent once this many writes have been acknowledged.
const TERM_AFTER_ACKS: u64 = 1_000;
/// Signal number of SIGTERM (15 on every Unix).
const SIGTERM: i32 = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_200_or_503_and_exits_cleanly() {
    let dir = ok(test_dir("shutdown").map_err(Into::into));
    let mut region = ok(RegionProcess::start(BIN, CONFIG, REGION, dir.join("data")));
    ok(scenario(&mut region).await);
}

async fn scenario(region: &mut RegionProcess) -> Result<()> {
    let load = Load::new(0, MAX_ITERATIONS_PER_TASK, LOAD_TIME_LIMIT);
    let handles = load.spawn(&region.client(), TASKS);
    let enough = wait_until_async(DEADLINE, "acknowledged writes before SIGTERM", || {
        let load = load.clone();
        async move { load.acks() >= TERM_AFTER_ACKS }
    })
    .await;
    let load_running = handles.iter().all(|h| !h.is_finished());
    let acked_at_term = load.acks();
    let signalled = region.signal(SIGTERM);
    // The writers keep going (on the runtime's worker threads) while this thread waits.
    let exit = region.wait_exit(STOP_TIMEOUT);
    load.stop.store(true, Ordering::Relaxed);
    let logs = join(handles).await?;

    enough?;
    signalled?;
    let exit = exit?;
    ensure!(load_running, "a writer finished before SIGTERM");
    ensure!(
        exit.code() == Some(0),
        "graceful shutdown under load must exit with 0: {exit}"
    );

    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for log in &logs {
        for s in log.refused_statuses() {
            *statuses.entry(s).or_default() += 1;
        }
    }
    let unanswered: usize = logs
        .iter()
        .map(|l| l.in_flight.len() + l.incr_in_flight as usize)
        .sum();
    println!(
        "SIGTERM after {acked_at_term} acks; {} acks in total, refusals by status {statuses:?}, {unanswered} requests unanswered",
        load.acks()
    );
    ensure!(
        statuses.keys().all(|&s| s == 503),
        "during shutdown a request got an answer other than 200 or 503: {statuses:?}"
    );

    region.restart()?;
    let c = region.client();
    let v = check_round(&c, 0, &logs).await?;
    println!("{}", v.line("after graceful shutdown and restart"));
    ensure!(v.acked > 0, "nothing was acknowledged");
    no_problems(v.problems, "after a graceful shutdown under load")?;
    // A graceful shutdown finishes what it started: a write the region applied was answered.
    ensure!(
        v.in_flight_present == 0 && v.counter_total == v.incr_acked,
        "{} unanswered puts and {} unanswered increments were applied: the shutdown dropped \
         answers to requests it had processed",
        v.in_flight_present,
        v.counter_total - v.incr_acked
    );
    let exit = region.terminate()?;
    ensure!(exit.code() == Some(0), "{exit}");
    Ok(())
}
