//! The control group's types for openraft and its wire format.
//!
//! Every RPC body, request and answer alike, is one version byte ([`WIRE_VERSION`]) followed by
//! the message in postcard. A body with another version, trailing bytes, or that does not decode
//! is refused with [`ControlError::BadMessage`]; one over the size limit with
//! [`ControlError::MessageTooLarge`] before it is decoded.

use openraft::{EmptyNode, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::error::ControlError;

openraft::declare_raft_types!(
    /// openraft's types for the control group: commands and answers are opaque bytes, members
    /// carry nothing but their id (names live in the options), snapshots travel whole.
    pub(crate) TypeConfig:
        D = Vec<u8>,
        R = Vec<u8>,
        NodeId = u64,
        Node = EmptyNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Vec<u8>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Version of the RPC bodies. A member refuses any other.
pub const WIRE_VERSION: u8 = 1;

/// The RPC names [`crate::Transport::call`] and [`crate::ControlGroup::handle`] use. Stable: the
/// region server routes on them.
pub mod rpc {
    /// Raft log replication and heartbeats (leader to follower).
    pub const APPEND: &str = "append";
    /// Raft vote requests (candidate to member).
    pub const VOTE: &str = "vote";
    /// A whole snapshot (leader to a follower whose log was purged past).
    pub const SNAPSHOT: &str = "snapshot";
    /// A proposal forwarded to the leader, or to a member that relays it to the leader.
    pub const PROPOSE: &str = "propose";
    /// A read index asked of the leader (a linearizable read on a follower).
    pub const READ: &str = "read";
    /// All of them.
    pub const ALL: [&str; 5] = [APPEND, VOTE, SNAPSHOT, PROPOSE, READ];
}

/// A whole snapshot, as [`rpc::SNAPSHOT`] carries it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotRequest {
    pub vote: Vote<NodeId>,
    pub meta: SnapshotMeta<NodeId, EmptyNode>,
    pub data: Vec<u8>,
}

/// A proposal forwarded by another member.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ProposeRequest {
    pub command: Vec<u8>,
    /// Whether the receiver may pass it on to the leader it knows (one relay hop). A relayed
    /// proposal is passed on with `relay = false`, so a proposal crosses at most two links.
    pub relay: bool,
    /// How long the proposer waits for the answer; the receiver answers before.
    pub timeout_ms: u64,
}

/// The outcome of a forwarded proposal. Failures travel as answers, not as transport errors, so
/// that whether the command may have been applied survives every hop.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ProposeReply {
    Applied(Vec<u8>),
    Failed {
        /// `true`: the command may have been applied; `false`: it surely was not.
        ambiguous: bool,
        code: String,
        message: String,
    },
}

impl ProposeReply {
    pub fn from_result(r: Result<Vec<u8>, ControlError>) -> Self {
        match r {
            Ok(v) => Self::Applied(v),
            Err(e) => Self::Failed {
                ambiguous: e.may_have_applied(),
                code: e.code().to_string(),
                message: e.to_string(),
            },
        }
    }

    /// Back to a result, as seen by the member that forwarded the proposal to `via`.
    pub fn into_result(self, via: &str) -> Result<Vec<u8>, ControlError> {
        match self {
            Self::Applied(v) => Ok(v),
            Self::Failed {
                ambiguous: true,
                message,
                ..
            } => Err(ControlError::Ambiguous(format!("via {via}: {message}"))),
            Self::Failed { code, message, .. } => Err(ControlError::NotApplied(format!(
                "via {via}: {code}: {message}"
            ))),
        }
    }
}

/// A read index asked of the leader by a follower ([`rpc::READ`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReadRequest {
    /// The asking member: must be the member the transport authenticated.
    pub from: crate::NodeId,
    /// How long the asker waits for the answer (positive); the leader answers before.
    pub timeout_ms: u64,
}

/// The leader's answer to [`ReadRequest`]: the index the asker must have applied before it
/// reads, confirmed by a majority after the request arrived; or why there is none.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ReadReply {
    Index(u64),
    Failed { code: String, message: String },
}

/// `msg` as a versioned body.
pub(crate) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ControlError> {
    postcard::to_extend(msg, vec![WIRE_VERSION])
        .map_err(|e| ControlError::BadMessage(format!("cannot encode: {e}")))
}

/// Decodes a versioned body of `rpc` (a request or its answer), bounded by `max` bytes.
pub(crate) fn decode<T: DeserializeOwned>(
    rpc: &str,
    body: &[u8],
    max: usize,
) -> Result<T, ControlError> {
    if body.len() > max {
        return Err(ControlError::MessageTooLarge {
            rpc: rpc.to_string(),
            len: body.len(),
            max,
        });
    }
    let Some((&version, rest)) = body.split_first() else {
        return Err(ControlError::BadMessage(format!("`{rpc}` body is empty")));
    };
    if version != WIRE_VERSION {
        return Err(ControlError::BadMessage(format!(
            "`{rpc}` body has wire version {version}; this build speaks version {WIRE_VERSION}"
        )));
    }
    let (msg, trailing) = postcard::take_from_bytes::<T>(rest)
        .map_err(|e| ControlError::BadMessage(format!("`{rpc}` body does not decode: {e}")))?;
    if !trailing.is_empty() {
        return Err(ControlError::BadMessage(format!(
            "`{rpc}` body has {} trailing bytes",
            trailing.len()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let req = ProposeRequest {
            command: vec![1, 2, 3],
            relay: true,
            timeout_ms: 1500,
        };
        let body = encode(&req).unwrap();
        assert_eq!(body[0], WIRE_VERSION);
        let back: ProposeRequest = decode(rpc::PROPOSE, &body, 1024).unwrap();
        assert_eq!(back.command, vec![1, 2, 3]);
        assert!(back.relay);
        assert_eq!(back.timeout_ms, 1500);

        let err = |b: &[u8], max| decode::<ProposeRequest>(rpc::PROPOSE, b, max).unwrap_err();
        assert!(matches!(err(&[], 1024), ControlError::BadMessage(_)));
        let mut other = body.clone();
        other[0] = 9;
        assert!(err(&other, 1024).to_string().contains("wire version 9"));
        assert!(matches!(
            err(&body[..body.len() - 1], 1024),
            ControlError::BadMessage(_)
        ));
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(err(&trailing, 1024).to_string().contains("trailing"));
        assert!(matches!(
            err(&body, 3),
            ControlError::MessageTooLarge { max: 3, .. }
        ));
        // A length prefix that claims far more than the body holds is refused, not allocated.
        let huge = [WIRE_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(err(&huge, 1024), ControlError::BadMessage(_)));
    }

    #[test]
    fn propose_replies_keep_ambiguity() {
        let amb = ProposeReply::from_result(Err(ControlError::Ambiguous("t".into())));
        assert!(amb.into_result("b").unwrap_err().may_have_applied());
        let not = ProposeReply::from_result(Err(ControlError::NotApplied("n".into())));
        let e = not.into_result("b").unwrap_err();
        assert!(!e.may_have_applied());
        assert!(e.to_string().contains("ATOLL-CONTROL-NOT-APPLIED"));
    }
}
