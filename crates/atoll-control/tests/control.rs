//! The control group end to end, in one process: election and forwarding, partitions (a member
//! cut from the majority, a leader cut from the others), a proposal relayed through the arbiter,
//! restarts from the data directory, snapshots and log purging.

mod common;

use std::time::Duration;

use atoll_control::{ControlError, Role};
use common::{Cluster, cmd, count_of, init_logs, timed, wait_for};

const ELECT: Duration = Duration::from_secs(8);
const CONVERGE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_a_leader_and_a_follower_proposal_is_forwarded() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "ap-south"], |_| {}).await;
    let leader = c.leader(ELECT).await;
    let follower = *c.groups.keys().find(|&&id| id != leader).unwrap();

    let r = c
        .group(follower)
        .propose(cmd(5))
        .await
        .expect("forwarded proposal");
    assert_eq!(count_of(&r), 1);
    c.converged(&[1, 2, 3], 1, CONVERGE).await;
    assert_eq!(c.state(follower).sum, 5);

    // Exactly one leader, in one term, and every member says so.
    let statuses: Vec<_> = c.groups.values().map(|g| g.status()).collect();
    assert_eq!(
        statuses.iter().filter(|s| s.role == Role::Leader).count(),
        1
    );
    assert!(statuses.iter().all(|s| s.leader == Some(leader)));
    assert!(statuses.iter().all(|s| s.term == statuses[0].term));
    assert_eq!(
        statuses[0].members.get(&1).map(String::as_str),
        Some("us-east")
    );
    // The applied index moved past the initial membership entry and the leader's blank entry.
    let applied = c.group(follower).applied().borrow().clone();
    assert!(applied.index >= 2, "{applied:?}");

    // The leader's own proposals work too, and every answer is the state machine's.
    let r = c
        .group(leader)
        .propose(cmd(7))
        .await
        .expect("leader proposal");
    assert_eq!(count_of(&r), 2);
    c.converged(&[1, 2, 3], 2, CONVERGE).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_from_the_majority_cannot_commit_and_the_majority_can() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "ap-south"], |_| {}).await;
    let leader = c.leader(ELECT).await;
    let cut = *c.groups.keys().find(|&&id| id != leader).unwrap();
    let other = *c
        .groups
        .keys()
        .find(|&&id| id != leader && id != cut)
        .unwrap();
    c.net.isolate(cut, [1, 2, 3]);

    // The cut follower reaches no leader: surely not applied, within its propose timeout.
    let timeout = c.options(cut).timing.propose_timeout;
    let (r, took) = timed(c.group(cut).propose(cmd(100))).await;
    let err = r.expect_err("a member cut from the majority cannot commit");
    assert!(matches!(err, ControlError::NotApplied(_)), "{err:?}");
    assert!(!err.may_have_applied());
    assert!(err.retryable());
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");

    // Meanwhile the majority commits.
    c.group(leader)
        .propose(cmd(1))
        .await
        .expect("majority commits");
    c.group(other)
        .propose(cmd(2))
        .await
        .expect("majority commits (forwarded)");
    c.converged(&[leader, other], 2, CONVERGE).await;
    assert_eq!(c.state(cut).count, 0);

    // Now cut the leader instead: what it takes may be appended but cannot commit, so its
    // outcome is ambiguous; the other two elect a new leader and go on.
    c.net.heal();
    c.converged(&[1, 2, 3], 2, CONVERGE).await;
    let old = c.leader(ELECT).await;
    c.net.isolate(old, [1, 2, 3]);
    let (r, took) = timed(c.group(old).propose(cmd(1000))).await;
    let err = r.expect_err("a cut leader cannot commit");
    assert!(err.may_have_applied(), "{err:?}");
    assert!(matches!(err, ControlError::Ambiguous(_)), "{err:?}");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
    let rest: Vec<_> = c.groups.keys().copied().filter(|&id| id != old).collect();
    let new = c.leader_among(&rest, ELECT).await;
    assert_ne!(new, old);
    c.group(rest[0])
        .propose(cmd(3))
        .await
        .expect("new majority commits");
    c.converged(&rest, 3, CONVERGE).await;

    // Healed, the old leader drops its uncommitted entry and converges: the ambiguous command
    // was in fact never applied anywhere.
    c.net.heal();
    c.converged(&[1, 2, 3], 3, CONVERGE).await;
    assert_eq!(c.state(old).sum, 1 + 2 + 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_reaches_the_leader_through_the_arbiter() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "arbiter"], |_| {}).await;
    let arbiter = 3;
    // The scenario needs a region as leader: while the arbiter leads, cut it off until a region
    // takes over.
    let mut leader = c.leader(ELECT).await;
    for _ in 0..5 {
        if leader != arbiter {
            break;
        }
        c.net.isolate(arbiter, [1, 2]);
        c.leader_among(&[1, 2], ELECT).await;
        c.net.heal();
        leader = c.leader(ELECT).await;
    }
    assert_ne!(leader, arbiter, "a region should lead");
    let proposer = if leader == 1 { 2 } else { 1 };

    // The link between the two regions is cut; each still reaches the arbiter.
    c.net.cut(1, 2);
    let r = c
        .group(proposer)
        .propose(cmd(42))
        .await
        .expect("relayed through the arbiter");
    assert_eq!(count_of(&r), 1);
    c.converged(&[leader, arbiter], 1, CONVERGE).await;
    // The proposer's region does not hear the leader, so it has not applied it yet; the leader
    // is still the leader (the arbiter's lease kept the cut region from deposing it).
    assert_eq!(c.state(proposer).count, 0);
    assert!(c.group(leader).status().is_leader);

    // A second proposal, once the proposer has noticed it lost the leader, goes the same way.
    wait_for("the cut region to lose the leader", ELECT, || {
        c.group(proposer).status().leader != Some(leader)
    })
    .await;
    let r = c
        .group(proposer)
        .propose(cmd(8))
        .await
        .expect("relayed again");
    assert_eq!(count_of(&r), 2);

    c.net.heal();
    c.converged(&[1, 2, 3], 2, CONVERGE).await;
    assert_eq!(c.state(proposer).sum, 50);
    c.shutdown().await;
}

/// A link that swallows packets (a WAN partition) neither refuses a request nor answers it. A
/// region whose link to the leader (the other region) stalls must still get its proposals through
/// the arbiter, and must not spend its whole proposal deadline on the dark link first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_go_around_a_leader_whose_link_swallows_packets() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "arbiter"], |_| {}).await;
    let arbiter = 3;
    let mut leader = c.leader(ELECT).await;
    for _ in 0..5 {
        if leader != arbiter {
            break;
        }
        c.net.isolate(arbiter, [1, 2]);
        c.leader_among(&[1, 2], ELECT).await;
        c.net.heal();
        leader = c.leader(ELECT).await;
    }
    assert_ne!(leader, arbiter, "a region should lead");
    let proposer = if leader == 1 { 2 } else { 1 };
    let timing = c.options(proposer).timing;
    // Placed, then the link between the regions goes dark.
    c.group(proposer).propose(cmd(1)).await.expect("placed");
    c.net.stall(1, 2);

    // The first proposal goes to the leader it has just heard from; once the leader has been
    // silent for an election timeout the proposer gives up on it (outcome unknown), well before
    // its deadline.
    let (r, took) = timed(c.group(proposer).propose(cmd(2))).await;
    if let Err(e) = &r {
        assert!(e.may_have_applied(), "{e}");
    }
    assert!(
        took < timing.propose_timeout / 2,
        "gave up on the silent leader after {took:?} (deadline {:?})",
        timing.propose_timeout
    );
    // Every later one goes through the arbiter, promptly, and the leader stays the leader.
    let mut count = 0;
    for v in 3..=6 {
        let (r, took) = timed(c.group(proposer).propose(cmd(v))).await;
        count = count_of(&r.expect("relayed through the arbiter"));
        assert!(
            took < timing.propose_timeout / 2,
            "proposal {v} took {took:?} through the arbiter"
        );
    }
    assert!(count >= 5, "count {count}");
    assert!(c.group(leader).status().is_leader);

    c.net.heal();
    c.converged(&[1, 2, 3], count, CONVERGE).await;
    c.shutdown().await;
}

/// A member whose every link swallows packets cannot commit; each of its proposals gives up
/// (outcome unknown) after the leader or a relay stayed silent for about an election timeout,
/// not after the whole deadline, so a caller that retries (the fencing loop) is free to try
/// again at once when a path opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_through_dark_links_give_up_early() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "ap-south"], |_| {}).await;
    let leader = c.leader(ELECT).await;
    let cut = *c.groups.keys().find(|&&id| id != leader).unwrap();
    let timing = c.options(cut).timing;
    c.group(cut).propose(cmd(1)).await.expect("placed");
    for other in [1, 2, 3] {
        if other != cut {
            c.net.stall(cut, other);
        }
    }
    // The first goes to the leader (heard from just now), the next ones through the relays
    // first: each is given up on.
    for v in 2..=4 {
        let (r, took) = timed(c.group(cut).propose(cmd(v))).await;
        let e = r.expect_err("no path is open");
        assert!(
            took < timing.propose_timeout / 2,
            "proposal {v} gave up after {took:?} (deadline {:?}): {e}",
            timing.propose_timeout
        );
    }
    c.net.heal();
    c.shutdown().await;
}

/// The group's failover is the followers' leader lease (`election_max`), then an election
/// timeout (below `election_max`), then a vote round and the commit: about two `election_max`
/// and some round trips. atoll sizes the
/// timing from the lease so that this fits in the renewal slack (`lease - margin - renew_every`,
/// 3750 ms with the shipped lease; `atoll_server::control::timing`): losing the group's leader
/// (an arbiter, a standby region) must not cost the primary its write window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_within_the_lease_slack() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "arbiter"], |o| {
        // What atoll derives for the shipped lease (5000 ms, renewals every 1000, margin 250).
        o.timing.heartbeat = Duration::from_millis(375);
        o.timing.election_min = Duration::from_millis(750);
        o.timing.election_max = Duration::from_millis(1_125);
        o.timing.propose_timeout = Duration::from_millis(4_750);
    })
    .await;
    let slack = Duration::from_millis(3_750);
    let leader = c.leader(ELECT).await;
    let proposer = *c.groups.keys().find(|&&id| id != leader).unwrap();
    c.group(proposer).propose(cmd(1)).await.expect("placed");
    let killed = std::time::Instant::now();
    c.stop_member(leader).await;
    // Proposals are retried until one commits, as the fencing loop renews.
    let mut last = None;
    while killed.elapsed() < ELECT {
        match c.group(proposer).propose(cmd(2)).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e.to_string()),
        }
    }
    let took = killed.elapsed();
    eprintln!("leader {leader} stopped; a proposal of {proposer} committed after {took:?}");
    assert!(
        last.is_none(),
        "nothing committed after the leader died: {last:?}"
    );
    assert!(
        took < slack,
        "a proposal committed {took:?} after the leader died: over the renewal slack {slack:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_has_its_state_and_log_back_and_catches_up() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "ap-south"], |_| {}).await;
    let leader = c.leader(ELECT).await;
    for v in 1..=5 {
        c.group(leader).propose(cmd(v)).await.expect("commit");
    }
    c.converged(&[1, 2, 3], 5, CONVERGE).await;
    let f = *c.groups.keys().find(|&&id| id != leader).unwrap();
    let before = c.group(f).status();
    let state_before = c.state(f);
    c.stop_member(f).await;

    // The others go on without it.
    for v in 6..=8 {
        c.group(leader)
            .propose(cmd(v))
            .await
            .expect("commit without the stopped member");
    }

    // Restarted from its directory with a fresh state machine, and not yet reachable: its log
    // and its applied state are back from disk alone.
    c.net.isolate(f, [1, 2, 3]);
    let g = c.start_member(f).await.expect("restart");
    let back = g.status();
    assert!(
        back.last_log_index >= before.last_log_index,
        "{back:?} vs {before:?}"
    );
    assert_eq!(c.state(f), state_before);
    assert_eq!(g.applied().borrow().index, before.last_applied.unwrap());

    // Reachable again, it catches up.
    c.net.heal();
    c.converged(&[1, 2, 3], 8, CONVERGE).await;

    // The whole group restarts: every state is back and the group goes on.
    c.shutdown().await;
    for id in [1, 2, 3] {
        c.start_member(id).await.expect("restart");
    }
    for id in [1, 2, 3] {
        assert_eq!(c.state(id).count, 8, "member {id} after the restart");
    }
    let leader = c.leader(ELECT).await;
    let r = c
        .group(leader)
        .propose(cmd(9))
        .await
        .expect("commit after restart");
    assert_eq!(count_of(&r), 9);
    c.converged(&[1, 2, 3], 9, CONVERGE).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_purged_behind_snapshots_and_a_lagging_member_gets_the_snapshot() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "ap-south"], |o| {
        o.snapshots.every_entries = 20;
        o.snapshots.keep_entries = 5;
    })
    .await;
    let leader = c.leader(ELECT).await;
    let lagging = *c.groups.keys().find(|&&id| id != leader).unwrap();
    let rest: Vec<_> = c
        .groups
        .keys()
        .copied()
        .filter(|&id| id != lagging)
        .collect();
    c.net.isolate(lagging, [1, 2, 3]);

    let n = 150u64;
    for v in 1..=n {
        c.group(leader).propose(cmd(v)).await.expect("commit");
    }
    c.converged(&rest, n, CONVERGE).await;
    // Bounded: at most a snapshot interval plus what is kept behind it (and a few entries in
    // flight), far below the 150 proposed.
    wait_for("the log to be purged behind a snapshot", CONVERGE, || {
        rest.iter().all(|&id| {
            let s = c.group(id).status();
            s.snapshot_index.is_some() && s.purged_index.is_some() && s.log_entries <= 20 + 5 + 5
        })
    })
    .await;

    // The lagging member's log ends where the leader's was purged: it gets the snapshot.
    c.net.heal();
    c.converged(&[1, 2, 3], n, CONVERGE).await;
    let s = c.group(lagging).status();
    assert!(s.snapshot_index.is_some(), "{s:?}");
    assert_eq!(c.state(lagging).sum, n * (n + 1) / 2);

    // ...and keeps it across a restart.
    c.stop_member(lagging).await;
    c.net.isolate(lagging, [1, 2, 3]);
    c.start_member(lagging).await.expect("restart");
    assert_eq!(c.state(lagging).count, n);
    c.shutdown().await;
}
