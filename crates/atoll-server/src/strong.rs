//! Strong keyspaces in a region (`docs/design/strong-keyspaces.md`): the strong group (a second
//! `atoll-control` group whose voters are the regions only; the arbiter never holds keyspace
//! data), its state machine (`atoll_core::strong` behind the byte interface), its route on the
//! peer listener (`POST /v1/strong/{rpc}`, authenticated as the control routes are), and the
//! client API of strong keyspaces: `GET`/`PUT`/`DELETE /v1/kv/{keyspace}/{key}` with
//! `If-Match: <revision>`, answered with the revision (`ETag`, JSON) and the leader
//! (`X-Atoll-Leader`). Writes are proposed through the group (forwarded to its leader); reads
//! pass the group's read barrier (ReadIndex) first, so they are linearizable; a region that
//! cannot reach a majority answers `ATOLL-NO-QUORUM`.
//!
//! Members: the regions in config order, 1..=n (the same ids as in the control group). Data:
//! `<data_dir>/strong/`.

use crate::api::AppState;
use crate::metrics::Metrics;
use atoll_config::{Config, KEY_MAX_BYTES};
use atoll_control::{
    ControlError, ControlGroup, ControlOptions, ControlTiming, Members, NodeId, Role, StateMachine,
    Transport,
};
use atoll_core::op::Policy;
use atoll_core::strong::{self, Answer, Command, Register, StrongState};
use atoll_core::{AtollError, ErrorBody, Result};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::path::Path as FsPath;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The route prefix of the strong group's RPCs on the peer listener.
pub const STRONG_PATH: &str = "/v1/strong";
/// Header naming the strong group's leader (as this region knows it) on strong answers.
pub const LEADER_HEADER: &str = "x-atoll-leader";
/// Header carrying a strong key's revision (also in `ETag`, quoted).
pub const REVISION_HEADER: &str = "x-atoll-revision";

/// Whether the config declares a strong keyspace (then every voter region runs the strong
/// group).
pub fn enabled(config: &Config) -> bool {
    config.keyspaces.iter().any(|k| k.policy == Policy::Strong)
}

/// The members of the strong group: the voter regions only (1..=n, config order), never the
/// arbiter or a replica (`docs/design/adding-regions.md`).
pub fn members(config: &Config) -> Members {
    config
        .voters()
        .enumerate()
        .map(|(i, r)| (i as NodeId + 1, r.name.to_string()))
        .collect()
}

/// The strong group's timing: heartbeat 250 ms (also one append RPC's timeout, which an
/// inter-region round trip over TLS needs), elections 1000..2000 ms (`election_max` is also
/// openraft's leader lease), proposals and read barriers give up after 5 s.
pub fn timing() -> ControlTiming {
    ControlTiming {
        heartbeat: Duration::from_millis(250),
        election_min: Duration::from_millis(1000),
        election_max: Duration::from_millis(2000),
        propose_timeout: Duration::from_secs(5),
        snapshot_timeout: Duration::from_secs(30),
    }
}

/// Largest command: the largest strong value, its key, and room for the envelope.
fn max_command_bytes(config: &Config) -> usize {
    let value = config
        .keyspaces
        .iter()
        .filter(|k| k.policy == Policy::Strong)
        .map(|k| k.max_value_bytes)
        .max()
        .unwrap_or(0);
    value + KEY_MAX_BYTES + 1024
}

/// Largest RPC body of the strong group (a snapshot travels whole in one body).
pub fn max_message_bytes(config: &Config) -> usize {
    (max_command_bytes(config) * 64).max(64 << 20)
}

/// `StrongState` behind the byte interface of `atoll-control`, shared with the region's readers.
pub struct StrongMachine(pub Arc<RwLock<StrongState>>);

impl StateMachine for StrongMachine {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let answer = match self.0.write() {
            Ok(mut s) => s.apply_bytes(command),
            Err(poisoned) => poisoned.into_inner().apply_bytes(command),
        };
        strong::encode_answer(&answer).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        let s = match self.0.read() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        strong::encode_state(&s).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> std::result::Result<(), String> {
        let st = strong::decode_state(snapshot).map_err(|e| e.to_string())?;
        match self.0.write() {
            Ok(mut s) => *s = st,
            Err(poisoned) => *poisoned.into_inner() = st,
        }
        Ok(())
    }
}

/// The region's member of the strong group.
pub struct Strong {
    group: ControlGroup,
    state: Arc<RwLock<StrongState>>,
    members: Members,
    metrics: Arc<Metrics>,
}

impl Strong {
    /// Starts this region's member of the strong group with its log under `data_dir/strong`.
    pub async fn start(
        config: &Config,
        region: &str,
        data_dir: &FsPath,
        transport: Arc<dyn Transport>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        let members = members(config);
        let id = members
            .iter()
            .find(|(_, n)| n.as_str() == region)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                AtollError::Config(format!("`{region}` is not a region of the config"))
            })?;
        let dir = data_dir.join("strong");
        std::fs::create_dir_all(&dir)
            .map_err(|e| AtollError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let mut opts = ControlOptions::new(id, members.clone(), dir);
        opts.timing = timing();
        opts.publish_state = false;
        opts.cluster_name = "atoll-strong".into();
        // A region cut off from every other one refuses at once (ATOLL-NO-QUORUM: nothing was
        // sent), rather than send a write down a link that holds it (which can only end in
        // ATOLL-STRONG-OUTCOME-UNKNOWN).
        opts.refuse_when_alone = true;
        opts.limits.max_command_bytes = max_command_bytes(config);
        opts.limits.max_message_bytes = max_message_bytes(config);
        let state = Arc::new(RwLock::new(StrongState::default()));
        let group = ControlGroup::start(opts, Box::new(StrongMachine(state.clone())), transport)
            .await
            .map_err(|e| AtollError::Storage(format!("strong group: {e} ({})", e.hint())))?;
        tracing::info!(
            region,
            members = members.len(),
            "strong keyspaces declared: strong group started (voters: the regions)"
        );
        Ok(Arc::new(Self {
            group,
            state,
            members,
            metrics,
        }))
    }

    pub fn group(&self) -> &ControlGroup {
        &self.group
    }

    pub fn members(&self) -> &Members {
        &self.members
    }

    fn name(&self, id: Option<NodeId>) -> Option<String> {
        id.and_then(|i| self.members.get(&i).cloned())
    }

    /// The leader this region knows, by name.
    pub fn leader(&self) -> Option<String> {
        self.name(self.group.status().leader)
    }

    /// Watches the group: leader changes and whether a leader is known (for the metrics), until
    /// `stop` is notified.
    pub async fn watch(self: Arc<Self>, stop: Arc<tokio::sync::Notify>) {
        let mut last_leader: Option<NodeId> = None;
        let mut first = true;
        loop {
            let s = self.group.status();
            if s.leader != last_leader {
                if !first {
                    self.metrics.strong_leader_changes.inc();
                }
                tracing::info!(leader = ?self.name(s.leader), term = s.term, "strong group leader");
                last_leader = s.leader;
            }
            first = false;
            self.metrics.strong_term.set(s.term);
            self.metrics
                .strong_is_leader
                .set(i64::from(s.role == Role::Leader));
            self.metrics
                .strong_leader_known
                .set(i64::from(s.leader.is_some()));
            tokio::select! {
                _ = stop.notified() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// `/v1/status`'s view of the group.
    pub fn status_json(&self) -> Value {
        let s = self.group.status();
        json!({
            "leader": self.name(s.leader),
            "term": s.term,
            "role": s.role,
            "alone": self.group.alone(),
            "last_applied": s.last_applied,
            "voters": self.members.values().collect::<Vec<_>>(),
            "majority": self.members.len() / 2 + 1,
            "keys": self.read_state(|st| st.len()),
        })
    }

    fn read_state<T>(&self, f: impl FnOnce(&StrongState) -> T) -> T {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn no_quorum(&self, state: &AppState, keyspace: &str, e: &ControlError) -> AtollError {
        self.metrics.strong_no_quorum.inc();
        // Which regions this region hears (replication heartbeats), for the operator.
        let reachable: Vec<String> = match state.replicator.get().map(|r| r.status()) {
            Some(Ok((peers, _))) => peers
                .iter()
                .filter(|p| p.state == atoll_core::repl::LinkState::Up)
                .map(|p| p.region.to_string())
                .collect(),
            _ => Vec::new(),
        };
        let leader = self
            .leader()
            .map_or_else(|| "no leader known".to_string(), |l| format!("leader {l}"));
        AtollError::NoQuorum {
            keyspace: keyspace.to_string(),
            voters: self.members.len(),
            needed: self.members.len() / 2 + 1,
            detail: format!(
                "{leader}; this region reaches [{}] besides itself; {e}",
                reachable.join(", ")
            ),
        }
    }

    /// A linearizable read of one key.
    pub async fn read(
        &self,
        state: &AppState,
        keyspace: &str,
        key: &[u8],
    ) -> Result<Option<Register>> {
        match self.group.read_barrier().await {
            Ok(_) => Ok(self.read_state(|s| s.get(keyspace, key).cloned())),
            Err(e) => Err(self.failed(state, keyspace, e)),
        }
    }

    /// Proposes a write and returns the state machine's answer.
    pub async fn write(&self, state: &AppState, cmd: &Command) -> Result<Answer> {
        let keyspace = cmd.keyspace().to_string();
        let bytes = strong::encode_command(cmd)?;
        let started = Instant::now();
        match self.group.propose(bytes).await {
            Ok(out) => {
                self.metrics
                    .strong_commit_duration
                    .observe(started.elapsed().as_secs_f64());
                strong::decode_answer(&out)
            }
            Err(e) if e.may_have_applied() => {
                self.metrics.strong_outcome_unknown.inc();
                Err(AtollError::StrongOutcomeUnknown {
                    keyspace,
                    detail: e.to_string(),
                })
            }
            Err(ControlError::CommandTooLarge { len, max }) => {
                Err(AtollError::ValueTooLarge { keyspace, len, max })
            }
            Err(e) => Err(self.failed(state, &keyspace, e)),
        }
    }

    /// A read or write that surely applied nothing: no quorum, or this member's own trouble.
    fn failed(&self, state: &AppState, keyspace: &str, e: ControlError) -> AtollError {
        match e {
            ControlError::NotApplied(_) => self.no_quorum(state, keyspace, &e),
            ControlError::ShuttingDown => AtollError::ShuttingDown,
            other => AtollError::Storage(format!("strong group: {other} ({})", other.hint())),
        }
    }
}

/// The revision `If-Match` asks for: a number, quoted (an ETag as we send it) or not. `None`
/// without the header; `*` and lists are refused.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| AtollError::BadRequest("If-Match is not visible ASCII".into()))?
        .trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    s.parse::<u64>().map(Some).map_err(|_| {
        AtollError::BadRequest(format!(
            "If-Match must be one revision (a number, e.g. `If-Match: 7`, or `0` for \"must not exist\"), not `{}`",
            s.chars().take(64).collect::<String>()
        ))
    })
}

fn hv(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// The headers every strong answer carries: the revision (`ETag`, `X-Atoll-Revision`) when
/// known, and the leader.
fn stamp(mut resp: Response, strong: &Strong, revision: Option<u64>) -> Response {
    let h = resp.headers_mut();
    if let Some(r) = revision {
        if let Some(v) = hv(&format!("\"{r}\"")) {
            h.insert(header::ETAG, v);
        }
        h.insert(
            HeaderName::from_static(REVISION_HEADER),
            HeaderValue::from(r),
        );
    }
    if let Some(v) = strong.leader().as_deref().and_then(hv) {
        h.insert(HeaderName::from_static(LEADER_HEADER), v);
    }
    resp
}

/// An error answer of a strong route; a revision mismatch carries `current` in the body.
pub fn error(strong: &Strong, e: &AtollError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::to_value(ErrorBody::from(e)).unwrap_or_default();
    let revision = match e {
        AtollError::RevisionMismatch { current, .. } => {
            body["error"]["current"] = json!(current);
            Some(*current)
        }
        _ => None,
    };
    stamp((status, axum::Json(body)).into_response(), strong, revision)
}

/// `GET /v1/kv/{keyspace}/{key}` of a strong keyspace: the value (`application/octet-stream`)
/// with its revision, or `404 ATOLL-NOT-FOUND` with revision 0.
pub async fn get(state: &AppState, strong: &Strong, keyspace: &str, key: &[u8]) -> Response {
    match strong.read(state, keyspace, key).await {
        Ok(Some(r)) => stamp(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/octet-stream")],
                r.value,
            )
                .into_response(),
            strong,
            Some(r.revision),
        ),
        Ok(None) => {
            let mut resp = error(strong, &AtollError::NotFound);
            resp.headers_mut().insert(
                HeaderName::from_static(REVISION_HEADER),
                HeaderValue::from(0u64),
            );
            resp
        }
        Err(e) => error(strong, &e),
    }
}

/// `PUT` (with `value`) or `DELETE` (`value = None`) of a strong keyspace.
pub async fn write(
    state: &AppState,
    strong: &Strong,
    keyspace: &str,
    key: &[u8],
    value: Option<Vec<u8>>,
    headers: &HeaderMap,
) -> Response {
    let if_revision = match if_match(headers) {
        Ok(r) => r,
        Err(e) => return error(strong, &e),
    };
    let deleting = value.is_none();
    let cmd = match value {
        Some(value) => Command::Put {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            value,
            if_revision,
        },
        None => Command::Delete {
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            if_revision,
        },
    };
    let region = state.store.region().as_str();
    let answer = match strong.write(state, &cmd).await {
        Ok(a) => a,
        Err(e) => return error(strong, &e),
    };
    let (status, body, revision) = match answer {
        Answer::Written {
            revision,
            create_revision,
        } => (
            StatusCode::OK,
            json!({"region": region, "revision": revision, "create_revision": create_revision, "leader": strong.leader()}),
            Some(revision),
        ),
        Answer::Deleted { revision } => (
            StatusCode::OK,
            json!({"region": region, "revision": revision, "deleted": true, "leader": strong.leader()}),
            Some(0),
        ),
        Answer::Absent => (
            StatusCode::OK,
            json!({"region": region, "revision": 0, "deleted": false, "leader": strong.leader()}),
            Some(0),
        ),
        Answer::RevisionMismatch { current } => {
            return error(
                strong,
                &AtollError::RevisionMismatch {
                    keyspace: keyspace.to_string(),
                    expected: if_revision.unwrap_or(0),
                    current,
                },
            );
        }
        Answer::Malformed => {
            return error(
                strong,
                &AtollError::Corrupt(format!(
                    "the strong group refused the {} as malformed",
                    if deleting { "delete" } else { "put" }
                )),
            );
        }
    };
    stamp((status, axum::Json(body)).into_response(), strong, revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn if_match_takes_a_revision_plain_or_quoted() {
        assert_eq!(if_match(&HeaderMap::new()).expect("none"), None);
        assert_eq!(if_match(&headers("0")).expect("0"), Some(0));
        assert_eq!(if_match(&headers("\"17\"")).expect("etag"), Some(17));
        assert_eq!(if_match(&headers("W/\"17\"")).expect("weak"), Some(17));
        for bad in ["*", "\"a\"", "1, 2", "-1", ""] {
            let e = if_match(&headers(bad)).expect_err(bad);
            assert_eq!(e.code(), "ATOLL-BAD-REQUEST", "{bad}: {e}");
        }
    }

    /// A transport that reaches nobody (the route test needs no peer).
    struct Nowhere;

    #[async_trait::async_trait]
    impl Transport for Nowhere {
        async fn call(
            &self,
            _to: NodeId,
            _rpc: &str,
            _body: Vec<u8>,
        ) -> std::result::Result<Vec<u8>, atoll_control::TransportError> {
            Err(atoll_control::TransportError::Unreachable("nowhere".into()))
        }
    }

    /// `POST /v1/strong/{rpc}` takes only members of the strong group, each speaking for the
    /// region its certificate names: the arbiter (a member of the control group, not of this
    /// one), a peer naming another sender, and a connection without a region certificate are
    /// refused before the group sees the body.
    #[tokio::test]
    async fn the_strong_route_takes_only_regions_speaking_for_themselves() {
        use crate::peer::PeerAuth;
        use axum::body::Body;
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Members = [(1, "us-east-1".to_string()), (2, "eu-west-1".to_string())]
            .into_iter()
            .collect();
        let opts = ControlOptions::new(1, members.clone(), dir.path());
        let group = ControlGroup::start(
            opts,
            Box::new(StrongMachine(Arc::default())),
            Arc::new(Nowhere),
        )
        .await
        .expect("group starts");
        let app = crate::control::router(crate::control::ControlRoute {
            group: group.clone(),
            members: Arc::new(members),
            metrics: Arc::new(Metrics::new()),
            path: STRONG_PATH,
            max_body: 1 << 20,
        });
        let call = |auth: Option<PeerAuth>, from: &str, body: Vec<u8>| {
            let app = app.clone();
            let uri = format!("{STRONG_PATH}/vote?from={from}");
            async move {
                let mut req = axum::http::Request::post(uri)
                    .body(Body::from(body))
                    .expect("request");
                if let Some(a) = auth {
                    req.extensions_mut().insert(a);
                }
                let resp = app.oneshot(req).await.expect("answer");
                let status = resp.status().as_u16();
                let bytes = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                (
                    status,
                    v["error"]["code"].as_str().unwrap_or("").to_string(),
                )
            }
        };
        let region = |n: &str| atoll_core::RegionId::new(n).expect("region");
        assert_eq!(
            call(
                Some(PeerAuth::Certified(region("arbiter"))),
                "arbiter",
                vec![1]
            )
            .await,
            (403, "ATOLL-CONTROL-UNKNOWN-MEMBER".to_string())
        );
        assert_eq!(
            call(
                Some(PeerAuth::Certified(region("eu-west-1"))),
                "us-east-1",
                vec![1]
            )
            .await,
            (403, "ATOLL-PEER-IDENTITY-MISMATCH".to_string())
        );
        assert_eq!(
            call(Some(PeerAuth::Uncertified), "eu-west-1", vec![1]).await,
            (403, "ATOLL-PEER-UNAUTHENTICATED".to_string())
        );
        assert_eq!(
            call(None, "eu-west-1", vec![1]).await,
            (403, "ATOLL-PEER-UNAUTHENTICATED".to_string())
        );
        // A member speaking for itself reaches the group, which refuses a garbage body.
        assert_eq!(
            call(
                Some(PeerAuth::Certified(region("eu-west-1"))),
                "eu-west-1",
                vec![1, 255]
            )
            .await,
            (400, "ATOLL-CONTROL-BAD-MESSAGE".to_string())
        );
        group.shutdown().await;
    }

    #[test]
    fn the_group_is_the_regions_only() {
        let text = include_str!("../../../examples/three-regions.toml");
        let mut c = Config::parse(text, "three-regions.toml").expect("the example parses");
        assert!(!enabled(&c));
        c.keyspaces
            .push(atoll_config::KeyspaceConfig::new("seats", Policy::Strong));
        assert!(enabled(&c));
        let m = members(&c);
        assert_eq!(m.len(), c.regions.len());
        assert!(m.values().all(|n| c.region(n).is_some()));
        assert!(max_message_bytes(&c) >= max_command_bytes(&c) * 64);
    }
}
