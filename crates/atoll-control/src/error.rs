//! Errors of the control group, in the style of `atoll_core::error`: every error has a stable code
//! (`ATOLL-CONTROL-...`), the HTTP status a server answers it with, whether the same call may be
//! retried, and a hint for the operator. A failed proposal also says whether the command may have
//! been applied ([`ControlError::may_have_applied`]).

use thiserror::Error;

use crate::NodeId;

/// Every error the control group returns. Codes are stable: tooling and alerts match on them.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// The options given to [`crate::ControlGroup::start`] do not fit together.
    #[error("invalid control group options: {0}")]
    Config(String),
    /// The data directory holds the control data of another member.
    #[error("the control data directory belongs to member {found}, not to member {expected}")]
    DataDirMismatch { found: NodeId, expected: NodeId },
    /// The data directory is open in another control group (another process, or a group of this
    /// process that was not shut down).
    #[error("the control data directory is in use: {0}")]
    DataDirInUse(String),
    #[error(
        "control data was written by format version {found}; this build reads up to version {supported}"
    )]
    FormatTooNew { found: u16, supported: u16 },
    #[error("corrupt control data: {0}")]
    Corrupt(String),
    #[error("control storage failure: {0}")]
    Storage(String),
    /// No leader could be reached before the proposal's deadline, or the leader refused it before
    /// appending it: the command was surely not applied.
    #[error("the command was not applied: {0}")]
    NotApplied(String),
    /// The proposal reached a leader, which may have appended it, but no outcome came back before
    /// the deadline (or the answer was lost): it may be applied, now or later.
    #[error("the command may or may not have been applied: {0}")]
    Ambiguous(String),
    #[error("command is {len} bytes, over the limit of {max} bytes")]
    CommandTooLarge { len: usize, max: usize },
    /// A control RPC body over the accepted size.
    #[error("control `{rpc}` body is {len} bytes, over the limit of {max} bytes")]
    MessageTooLarge { rpc: String, len: usize, max: usize },
    /// A control RPC body that does not decode (wrong version, truncated, garbage).
    #[error("malformed control message: {0}")]
    BadMessage(String),
    #[error("unknown control RPC `{0}`")]
    UnknownRpc(String),
    /// An RPC from a node id that is not a member of the group (or from this member itself).
    #[error("node {0} is not a member of the control group")]
    UnknownMember(NodeId),
    /// A member whose message speaks for another member (its vote names another candidate or
    /// leader than the member that sent it).
    #[error("member {from} sent a message for member {claimed}")]
    MemberMismatch { from: NodeId, claimed: NodeId },
    #[error("the control group is shutting down")]
    ShuttingDown,
    /// openraft stopped on an internal error (a storage failure, a panic).
    #[error("the control group stopped: {0}")]
    Fatal(String),
}

impl ControlError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config(_) => "ATOLL-CONTROL-CONFIG",
            Self::DataDirMismatch { .. } => "ATOLL-CONTROL-DATA-DIR-MISMATCH",
            Self::DataDirInUse(_) => "ATOLL-CONTROL-DATA-DIR-IN-USE",
            Self::FormatTooNew { .. } => "ATOLL-CONTROL-FORMAT-TOO-NEW",
            Self::Corrupt(_) => "ATOLL-CONTROL-CORRUPT",
            Self::Storage(_) => "ATOLL-CONTROL-STORAGE",
            Self::NotApplied(_) => "ATOLL-CONTROL-NOT-APPLIED",
            Self::Ambiguous(_) => "ATOLL-CONTROL-AMBIGUOUS",
            Self::CommandTooLarge { .. } => "ATOLL-CONTROL-COMMAND-TOO-LARGE",
            Self::MessageTooLarge { .. } => "ATOLL-CONTROL-MESSAGE-TOO-LARGE",
            Self::BadMessage(_) => "ATOLL-CONTROL-BAD-MESSAGE",
            Self::UnknownRpc(_) => "ATOLL-CONTROL-UNKNOWN-RPC",
            Self::UnknownMember(_) => "ATOLL-CONTROL-UNKNOWN-MEMBER",
            Self::MemberMismatch { .. } => "ATOLL-CONTROL-MEMBER-MISMATCH",
            Self::ShuttingDown => "ATOLL-CONTROL-SHUTTING-DOWN",
            Self::Fatal(_) => "ATOLL-CONTROL-FATAL",
        }
    }

    /// HTTP status a server answers this error with (when `handle` returns it).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadMessage(_) | Self::Config(_) => 400,
            Self::UnknownMember(_) | Self::MemberMismatch { .. } => 403,
            Self::UnknownRpc(_) => 404,
            Self::CommandTooLarge { .. } | Self::MessageTooLarge { .. } => 413,
            Self::NotApplied(_) | Self::ShuttingDown => 503,
            Self::Ambiguous(_) => 504,
            Self::DataDirMismatch { .. }
            | Self::DataDirInUse(_)
            | Self::FormatTooNew { .. }
            | Self::Corrupt(_)
            | Self::Storage(_)
            | Self::Fatal(_) => 500,
        }
    }

    /// Whether the same call may be sent again and could succeed without change. An ambiguous
    /// proposal is not retryable as such: retry it only if the command is idempotent.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::NotApplied(_) | Self::ShuttingDown | Self::Storage(_)
        )
    }

    /// Whether a failed proposal may have been applied (now or later). `false` means it surely was
    /// not, and proposing it again cannot apply it twice.
    pub fn may_have_applied(&self) -> bool {
        matches!(self, Self::Ambiguous(_))
    }

    /// What the operator or caller should do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Config(_) => {
                "check the control group's members (this member among them, ids unique) and timing (heartbeat below the election timeout)"
            }
            Self::DataDirMismatch { .. } => {
                "each member needs its own control data directory; point this member at its own, or move the directory back"
            }
            Self::DataDirInUse(_) => {
                "another process (or a control group not shut down) has the directory open; stop it first"
            }
            Self::FormatTooNew { .. } => {
                "run a newer atoll build on this data directory; never point an older build at newer data"
            }
            Self::Corrupt(_) => {
                "the control data directory is damaged; move it away and restart the member: it catches up from the others"
            }
            Self::Storage(_) => "check disk space and permissions of the control data directory",
            Self::NotApplied(_) => {
                "no majority of the control group is reachable from here; the command was not applied and may be proposed again"
            }
            Self::Ambiguous(_) => {
                "read the replicated state to learn whether the command took effect before proposing it again, unless it is idempotent"
            }
            Self::CommandTooLarge { .. } => "control commands are small; check the proposer",
            Self::MessageTooLarge { .. } | Self::BadMessage(_) | Self::UnknownRpc(_) => {
                "control messages come from members of the group: check that every member runs a compatible atoll version and that nothing else posts to the control routes"
            }
            Self::UnknownMember(_) | Self::MemberMismatch { .. } => {
                "every member must run with the same member list and its own identity (certificate and node id)"
            }
            Self::ShuttingDown => "retry on another member or after the restart",
            Self::Fatal(_) => {
                "the control group stopped on an internal error (see the log); restart the member"
            }
        }
    }
}

/// Why a [`crate::Transport`] call failed. The distinction matters for proposals: only
/// [`TransportError::Unreachable`] lets the caller conclude that nothing was delivered.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// The request surely did not reach the member: no connection could be made, nothing was
    /// sent. Return this only when that is certain.
    #[error("member unreachable: {0}")]
    Unreachable(String),
    /// The request may have reached the member, but no answer came back (timeout, broken
    /// connection after sending).
    #[error("no answer from member: {0}")]
    Failed(String),
    /// The member answered with an error: the code and message of its [`ControlError`].
    #[error("member refused the call: {code}: {message}")]
    Remote { code: String, message: String },
}

impl From<&ControlError> for TransportError {
    /// What an in-process transport (or a server's client that read an error body) returns for an
    /// error answered by `handle`.
    fn from(e: &ControlError) -> Self {
        Self::Remote {
            code: e.code().to_string(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_namespaced() {
        let all = [
            ControlError::Config(String::new()),
            ControlError::DataDirMismatch {
                found: 1,
                expected: 2,
            },
            ControlError::DataDirInUse(String::new()),
            ControlError::FormatTooNew {
                found: 2,
                supported: 1,
            },
            ControlError::Corrupt(String::new()),
            ControlError::Storage(String::new()),
            ControlError::NotApplied(String::new()),
            ControlError::Ambiguous(String::new()),
            ControlError::CommandTooLarge { len: 2, max: 1 },
            ControlError::MessageTooLarge {
                rpc: "append".into(),
                len: 2,
                max: 1,
            },
            ControlError::BadMessage(String::new()),
            ControlError::UnknownRpc(String::new()),
            ControlError::UnknownMember(9),
            ControlError::MemberMismatch {
                from: 1,
                claimed: 2,
            },
            ControlError::ShuttingDown,
            ControlError::Fatal(String::new()),
        ];
        let mut codes: Vec<_> = all.iter().map(|e| e.code()).collect();
        assert!(codes.iter().all(|c| c.starts_with("ATOLL-CONTROL-")));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for e in &all {
            assert!(!e.hint().is_empty());
            assert!((400..600).contains(&e.http_status()));
        }
        assert!(ControlError::Ambiguous(String::new()).may_have_applied());
        assert!(!ControlError::NotApplied(String::new()).may_have_applied());
        assert!(ControlError::NotApplied(String::new()).retryable());
        assert!(!ControlError::Ambiguous(String::new()).retryable());
    }
}
