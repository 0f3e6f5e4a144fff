//! openraft's network over the caller's [`Transport`]: each raft RPC becomes one
//! `Transport::call` with a versioned body.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{EmptyNode, OptionalSend, RPCTypes, Snapshot, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ControlError, TransportError};
use crate::liveness::Liveness;
use crate::wire::{SnapshotRequest, TypeConfig, decode, encode, rpc};
use crate::{NodeId, Transport};

/// Makes one [`PeerClient`] per target member.
pub(crate) struct NetworkFactory {
    pub me: NodeId,
    pub transport: Arc<dyn Transport>,
    pub max_message_bytes: usize,
    /// How long replication to a member that is unreachable pauses before trying again.
    pub backoff: Duration,
    /// Noted: which members answer (shared with the group, which routes proposals by it).
    pub liveness: Arc<Liveness>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &EmptyNode) -> PeerClient {
        PeerClient {
            me: self.me,
            target,
            transport: self.transport.clone(),
            max_message_bytes: self.max_message_bytes,
            backoff: self.backoff,
            liveness: self.liveness.clone(),
        }
    }
}

pub(crate) struct PeerClient {
    me: NodeId,
    target: NodeId,
    transport: Arc<dyn Transport>,
    max_message_bytes: usize,
    backoff: Duration,
    liveness: Arc<Liveness>,
}

/// How a call failed, before it is turned into openraft's error types.
enum CallError {
    Transport(TransportError),
    Local(ControlError),
    Timeout(Duration),
}

impl PeerClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        name: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let body = encode(req).map_err(CallError::Local)?;
        if body.len() > self.max_message_bytes {
            // An append is split in smaller ones; a snapshot cannot be, and the member it is for
            // stays behind until the limit is raised.
            if name == rpc::SNAPSHOT {
                tracing::error!(
                    target_member = self.target,
                    len = body.len(),
                    max = self.max_message_bytes,
                    "control snapshot over the message size limit: raise limits.max_message_bytes on every member"
                );
            }
            return Err(CallError::Local(ControlError::MessageTooLarge {
                rpc: name.to_string(),
                len: body.len(),
                max: self.max_message_bytes,
            }));
        }
        let answer = tokio::time::timeout(ttl, self.transport.call(self.target, name, body)).await;
        let answer = match answer {
            Err(_) => {
                self.liveness.failed(self.target);
                return Err(CallError::Timeout(ttl));
            }
            Ok(Err(e @ (TransportError::Unreachable(_) | TransportError::Failed(_)))) => {
                self.liveness.failed(self.target);
                return Err(CallError::Transport(e));
            }
            Ok(Err(e @ TransportError::Remote { .. })) => {
                self.liveness.heard(self.target);
                return Err(CallError::Transport(e));
            }
            Ok(Ok(answer)) => {
                self.liveness.heard(self.target);
                answer
            }
        };
        decode(name, &answer, self.max_message_bytes).map_err(CallError::Local)
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        e: CallError,
    ) -> RPCError<NodeId, EmptyNode, E> {
        match e {
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            }),
            CallError::Transport(t) => {
                // Nothing was sent, or the member is going away: pause replication to it a while.
                let away = match &t {
                    TransportError::Unreachable(_) => true,
                    TransportError::Remote { code, .. } => {
                        code == ControlError::ShuttingDown.code()
                    }
                    TransportError::Failed(_) => false,
                };
                if away {
                    RPCError::Unreachable(Unreachable::new(&t))
                } else {
                    RPCError::Network(NetworkError::new(&t))
                }
            }
            CallError::Local(c) => RPCError::Network(NetworkError::new(&c)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, EmptyNode, RaftError<NodeId>>> {
        let entries = req.entries.len() as u64;
        match self.call(rpc::APPEND, &req, option.hard_ttl()).await {
            Ok(r) => Ok(r),
            Err(CallError::Local(ControlError::MessageTooLarge { .. })) if entries > 1 => Err(
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2)),
            ),
            Err(e) => Err(self.rpc_error(RPCTypes::AppendEntries, e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        _req: openraft::raft::InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, EmptyNode, RaftError<NodeId, openraft::error::InstallSnapshotError>>,
    > {
        // Snapshots travel whole (`full_snapshot`); openraft never sends chunks with
        // `generic-snapshot-data`.
        Err(RPCError::Network(NetworkError::new(
            &ControlError::UnknownRpc("chunked snapshot".into()),
        )))
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, EmptyNode, RaftError<NodeId>>> {
        self.call(rpc::VOTE, &req, option.hard_ttl())
            .await
            .map_err(|e| self.rpc_error(RPCTypes::Vote, e))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let req = SnapshotRequest {
            vote,
            meta: snapshot.meta,
            data: *snapshot.snapshot,
        };
        let ttl = option.hard_ttl();
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.call::<_, SnapshotResponse<NodeId>>(rpc::SNAPSHOT, &req, ttl) => {
                r.map_err(|e| match self.rpc_error::<Fatal<NodeId>>(RPCTypes::InstallSnapshot, e) {
                    RPCError::Timeout(t) => StreamingError::Timeout(t),
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    RPCError::PayloadTooLarge(p) => StreamingError::Network(NetworkError::new(&p)),
                    RPCError::RemoteError(r) => StreamingError::RemoteError(r),
                })
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
