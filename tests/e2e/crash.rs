//! End-to-end: "nothing acknowledged is lost". Concurrent clients write to a region; the region
//! is SIGKILLed in the middle of the load and restarted on the same data directory. Every write
//! that was acknowledged (HTTP 200) must be there, with its value; writes that were refused must
//! not be; writes whose answer never came (in flight at the kill) may go either way, and each
//! counter is at least its acknowledged increments and at most those plus the unanswered ones.
//! Done twice, so the second crash also hits a region that recovered from the first.

use crate::common;

use anyhow::{Context, Result, ensure};
use atoll_testkit::{RegionProcess, test_dir, wait_until_async};
use common::load::{Load, TaskLog, check_round, join, no_problems};
use common::{BIN, CONFIG, DEADLINE, REGION, ok};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

/// Concurrent writers.
const TASKS: usize = 16;
/// Each iteration is one lww put and one counter increment; a writer does at most this many.
const MAX_ITERATIONS_PER_TASK: usize = 5_000;
/// A writer stops after this long even if the kill never came (the test then fails).
const LOAD_TIME_LIMIT: Duration = Duration::from_secs(30);
/// The region is killed once this many writes have been acknowledged.
const KILL_AFTER_ACKS: u64 = 1_000;
const ROUNDS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_when_a_region_is_killed() {
    let dir = ok(test_dir("crash").map_err(Into::into));
    let mut region = ok(RegionProcess::start(BIN, CONFIG, REGION, dir.join("data")));
    ok(crash_rounds(&mut region).await);
}

async fn crash_rounds(region: &mut RegionProcess) -> Result<()> {
    let mut rounds: Vec<Vec<Arc<TaskLog>>> = Vec::new();
    for round in 0..ROUNDS {
        let logs = load_and_kill(region, round).await?;
        let max_acked_seq = logs.iter().map(|l| l.max_seq).max().unwrap_or(0);
        rounds.push(logs);

        region.restart().context("restart after SIGKILL")?;
        let c = region.client();
        // Every round so far, including earlier ones, which now survived more than one crash.
        let mut problems = Vec::new();
        for (r, logs) in rounds.iter().enumerate() {
            let v = check_round(&c, r, logs).await?;
            println!(
                "{}",
                v.line(&format!("after crash {}, round {r}", round + 1))
            );
            ensure!(
                v.acked > 0 && v.incr_acked > 0,
                "round {r} acknowledged nothing"
            );
            problems.extend(v.problems);
        }
        no_problems(problems, &format!("after crash {} and recovery", round + 1))?;

        // The operation log continues after the last acknowledged write.
        let status = c.status().await?;
        let last_seq = status["store"]["last_seq"].as_u64().unwrap_or_default();
        ensure!(
            last_seq >= max_acked_seq,
            "after recovery last_seq is {last_seq}, but seq {max_acked_seq} was acknowledged"
        );
        let ack = c.kv_put("sessions", "after-crash", "x", None).await?;
        ensure!(
            ack.seq > max_acked_seq && ack.seq == last_seq + 1,
            "first write after recovery got seq {} (last_seq {last_seq}, highest acknowledged {max_acked_seq})",
            ack.seq
        );
    }
    let exit = region.terminate()?;
    ensure!(exit.code() == Some(0), "SIGTERM after recovery: {exit}");
    Ok(())
}

/// Runs the load, SIGKILLs the region once `KILL_AFTER_ACKS` writes are acknowledged, and
/// returns what every writer saw.
async fn load_and_kill(region: &mut RegionProcess, round: usize) -> Result<Vec<Arc<TaskLog>>> {
    let load = Load::new(round, MAX_ITERATIONS_PER_TASK, LOAD_TIME_LIMIT);
    let handles = load.spawn(&region.client(), TASKS);

    let enough = wait_until_async(DEADLINE, "acknowledged writes before the kill", || {
        let load = load.clone();
        async move { load.acks() >= KILL_AFTER_ACKS }
    })
    .await;
    let load_running = handles.iter().all(|h| !h.is_finished());
    let acked_at_kill = load.acks();
    // No stop signal: every writer must see the region die on its next request (a stop flag set
    // here could end a writer between two requests, before it saw the death). The writers stay
    // bounded by their iteration and time limits.
    let killed = region.kill9();
    let logs = join(handles).await?;

    enough?;
    let status = killed?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the region was not killed by SIGKILL: {status}"
    );
    ensure!(
        load_running,
        "a writer finished before the kill: the kill did not hit a running load"
    );
    let cut_off = logs.iter().filter(|l| l.cut_off).count();
    ensure!(
        cut_off == TASKS,
        "only {cut_off} of {TASKS} writers saw the region die; the others hit a bound"
    );
    println!(
        "round {round}: SIGKILLed the region after {acked_at_kill} acknowledged writes ({} in total once every answer was in)",
        load.acks()
    );
    Ok(logs)
}
