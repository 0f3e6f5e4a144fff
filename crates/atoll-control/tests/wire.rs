//! What a member refuses: malformed, truncated, oversized or foreign RPC bodies, unknown RPCs and
//! members, messages that speak for another member, relays beyond one hop, and options or data
//! directories that do not fit. None of it panics or disturbs the group.

mod common;

use std::time::Duration;

use atoll_control::{ControlError, ControlGroup, ControlOptions, ControlTiming, WIRE_VERSION, rpc};
use common::{Cluster, Counter, cmd, count_of, init_logs};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{EmptyNode, Entry, Vote};
use serde::{Deserialize, Serialize};

const ELECT: Duration = Duration::from_secs(8);

openraft::declare_raft_types!(
    /// The same types as the crate's own config (commands are bytes, nodes empty).
    Mirror:
        D = Vec<u8>,
        R = Vec<u8>,
        NodeId = u64,
        Node = EmptyNode,
        Entry = Entry<Mirror>,
        SnapshotData = Vec<u8>,
        Responder = openraft::impls::OneshotResponder<Mirror>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Mirrors of the crate's private propose messages (postcard is positional).
#[derive(Serialize)]
struct ProposeRequest {
    command: Vec<u8>,
    relay: bool,
    timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
enum ProposeReply {
    Applied(Vec<u8>),
    Failed {
        ambiguous: bool,
        code: String,
        message: String,
    },
}

fn body<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_extend(msg, vec![WIRE_VERSION]).unwrap()
}

fn vote_from(candidate: u64) -> Vec<u8> {
    body(&VoteRequest::<u64> {
        vote: Vote::new(1_000, candidate),
        last_log_id: None,
    })
}

fn append_from(leader: u64) -> Vec<u8> {
    let mut vote = Vote::new(1_000, leader);
    vote.commit();
    body(&AppendEntriesRequest::<Mirror> {
        vote,
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    })
}

/// A small deterministic generator for garbage.
fn garbage(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 33) as u8
        })
        .collect()
}

fn small_limits(o: &mut ControlOptions) {
    o.limits.max_message_bytes = 64 << 10;
    o.limits.max_command_bytes = 16 << 10;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_foreign_rpc_bodies_are_refused() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west", "ap-south"], small_limits).await;
    let leader = c.leader(ELECT).await;
    let g = c.group(leader).clone();
    let other = if leader == 1 { 2 } else { 1 };
    let third = 6 - leader - other;

    let bad = |r: Result<Vec<u8>, ControlError>| -> ControlError {
        let e = r.expect_err("refused");
        assert!(e.code().starts_with("ATOLL-CONTROL-"), "{e:?}");
        e
    };

    for name in rpc::ALL {
        // Empty, another version, garbage.
        let e = bad(g.handle(other, name, vec![]).await);
        assert!(matches!(e, ControlError::BadMessage(_)), "{name}: {e:?}");
        let e = bad(g.handle(other, name, vec![9, 1, 2, 3]).await);
        assert!(e.to_string().contains("wire version 9"), "{name}: {e}");
        let mut seed = 7;
        for len in 0..200 {
            let mut b = vec![WIRE_VERSION];
            b.extend(garbage(&mut seed, len));
            let e = bad(g.handle(other, name, b).await);
            assert_eq!(e.http_status() / 100, 4, "{name}: {e:?}");
        }
        // Over the size limit: refused before decoding.
        let e = bad(g
            .handle(other, name, vec![WIRE_VERSION; (64 << 10) + 1])
            .await);
        assert!(
            matches!(e, ControlError::MessageTooLarge { max, .. } if max == 64 << 10),
            "{name}: {e:?}"
        );
    }

    // Every strict prefix of a valid body, and a valid body with a byte more, is refused.
    let valid = [
        (rpc::VOTE, vote_from(other)),
        (rpc::APPEND, append_from(other)),
        (
            rpc::PROPOSE,
            body(&ProposeRequest {
                command: cmd(1),
                relay: false,
                timeout_ms: 100,
            }),
        ),
    ];
    for (name, b) in &valid {
        for cut in 1..b.len() {
            let e = bad(g.handle(other, name, b[..cut].to_vec()).await);
            assert!(
                matches!(e, ControlError::BadMessage(_)),
                "{name}[..{cut}]: {e:?}"
            );
        }
        let mut longer = b.clone();
        longer.push(0);
        let e = bad(g.handle(other, name, longer).await);
        assert!(e.to_string().contains("trailing"), "{name}: {e}");
    }

    // A member may only speak for itself.
    let e = bad(g.handle(other, rpc::VOTE, vote_from(third)).await);
    assert_eq!(
        e,
        ControlError::MemberMismatch {
            from: other,
            claimed: third
        }
    );
    let e = bad(g.handle(other, rpc::APPEND, append_from(third)).await);
    assert!(matches!(e, ControlError::MemberMismatch { .. }), "{e:?}");

    // Unknown RPCs and members.
    let e = bad(g.handle(other, "install", vote_from(other)).await);
    assert_eq!(e, ControlError::UnknownRpc("install".into()));
    let e = bad(g.handle(9, rpc::VOTE, vote_from(9)).await);
    assert_eq!(e, ControlError::UnknownMember(9));
    let e = bad(g.handle(leader, rpc::VOTE, vote_from(leader)).await);
    assert_eq!(e, ControlError::UnknownMember(leader));

    // A proposal that may not be relayed, sent to a member that is not the leader, is refused
    // there (one relay hop at most) and surely not applied.
    let reply = c
        .group(other)
        .handle(
            third,
            rpc::PROPOSE,
            body(&ProposeRequest {
                command: cmd(1),
                relay: false,
                timeout_ms: 1000,
            }),
        )
        .await
        .expect("an answer");
    assert_eq!(reply[0], WIRE_VERSION);
    let reply: ProposeReply = postcard::from_bytes(&reply[1..]).expect("reply decodes");
    match reply {
        ProposeReply::Failed {
            ambiguous,
            code,
            message,
        } => {
            assert!(!ambiguous);
            assert_eq!(code, "ATOLL-CONTROL-NOT-APPLIED");
            assert!(message.contains("not the leader"), "{message}");
        }
        ProposeReply::Applied(r) => {
            panic!("a non-leader applied a proposal it may not relay: {r:?}")
        }
    }

    // Commands over the limit are refused before anything is sent.
    let e = g
        .propose(vec![0; (16 << 10) + 1])
        .await
        .expect_err("too large");
    assert!(matches!(e, ControlError::CommandTooLarge { .. }), "{e:?}");
    assert!(!e.may_have_applied());

    // None of it disturbed the group.
    let r = c.group(other).propose(cmd(3)).await.expect("still works");
    assert_eq!(count_of(&r), 1);
    c.converged(&[1, 2, 3], 1, Duration::from_secs(8)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_and_data_directories_that_do_not_fit_are_refused() {
    init_logs();
    let mut c = Cluster::start(&["us-east", "eu-west"], |_| {}).await;
    let start = |o: ControlOptions, c: &Cluster| {
        let t = c.net.transport(o.node_id);
        async move { ControlGroup::start(o, Box::new(Counter::default()), t).await }
    };

    // Member 2 pointed at member 1's directory: in use while 1 runs, then not its own.
    let mut o = c.options(2);
    o.data_dir = c.data_dir(1);
    let e = start(o.clone(), &c).await.expect_err("in use");
    assert!(matches!(e, ControlError::DataDirInUse(_)), "{e:?}");
    c.stop_member(1).await;
    let e = start(o, &c).await.expect_err("another member's");
    assert_eq!(
        e,
        ControlError::DataDirMismatch {
            found: 1,
            expected: 2
        }
    );

    // Options that do not fit.
    let mut o = c.options(3);
    o.data_dir = c.data_dir(3);
    let e = start(o, &c).await.expect_err("not a member");
    assert!(matches!(e, ControlError::Config(_)), "{e:?}");
    let mut o = c.options(1);
    o.timing = ControlTiming {
        heartbeat: Duration::from_millis(500),
        ..o.timing
    };
    let e = start(o, &c)
        .await
        .expect_err("heartbeat above the election timeout");
    assert!(e.to_string().contains("heartbeat"), "{e}");
    let mut o = c.options(1);
    o.limits.max_message_bytes = o.limits.max_command_bytes;
    let e = start(o, &c)
        .await
        .expect_err("a command must fit in a message");
    assert!(matches!(e, ControlError::Config(_)), "{e:?}");

    // Member 1 still starts from its own directory afterwards.
    c.start_member(1).await.expect("restart");
    c.shutdown().await;
}
