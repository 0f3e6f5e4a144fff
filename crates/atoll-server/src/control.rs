//! The control group in a region or arbiter process (`docs/design/fencing.md`): the lease state
//! machine ([`ControlMachine`], `atoll_core::home::ControlState`: the lease state and the homes
//! of owned keyspaces, behind `atoll-control`'s byte interface), the transport over the mutual-TLS peer listener ([`PeerTransport`]:
//! `POST /v1/control/{rpc}`), the route that serves it ([`router`]) and the [`Proposer`] the
//! fencing loop uses.
//!
//! Members and their node ids: the regions in config order are 1..=n, the arbiter (if any) is
//! n + 1. The ids are stored in each member's control log, so the order of `[[regions]]` must not
//! change once a cluster runs (adding and removing regions is not supported yet).

use crate::fencing::Proposer;
use crate::peer::{PeerAuth, PeerClient};
use atoll_config::Config;
use atoll_control::{
    ControlError, ControlGroup, ControlOptions, ControlTiming, Members, NodeId, StateMachine,
    Transport, TransportError,
};
use atoll_core::fence::{self, Answer, Command, LeaseState};
use atoll_core::home::{self, ControlAnswer, ControlState};
use atoll_core::{AtollError, RegionId, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The route prefix of control-group RPCs on the peer listener.
pub const CONTROL_PATH: &str = "/v1/control";
/// Header naming the calling member when the cluster runs without TLS (`insecure = true`).
pub const MEMBER_HEADER: &str = "x-atoll-member";
/// Largest control RPC body accepted (a snapshot of the lease state is tiny).
pub const MAX_CONTROL_BODY: usize = 1 << 20;

/// The members of the control group: every voter region (1..=n, config order), then the
/// arbiter. A replica (`voter = false`) is no member (`docs/design/adding-regions.md`).
pub fn members(config: &Config) -> Members {
    let mut m: Members = config
        .voters()
        .enumerate()
        .map(|(i, r)| (i as NodeId + 1, r.name.to_string()))
        .collect();
    if let Some(a) = &config.cluster.arbiter {
        m.insert(m.len() as NodeId + 1, a.name.to_string());
    }
    m
}

/// The node id of member `name`.
pub fn node_id(config: &Config, name: &str) -> Option<NodeId> {
    members(config)
        .into_iter()
        .find(|(_, n)| n == name)
        .map(|(id, _)| id)
}

/// Timing of the control group, derived from the lease (`docs/design/fencing.md`, "Control group
/// timing").
///
/// The holder's window outlasts its last answered renewal by `lease - margin`, and the next
/// renewal goes out `renew_every` after it: when the control group loses its leader (the arbiter,
/// or a standby region, dies), the group must elect a new one and commit a renewal within the
/// slack `lease - margin - renew_every`, or the primary stops writing although nothing is wrong
/// with it (and a standby may even take over). openraft's failover is the followers' leader lease
/// (`election_max`), then an election timeout (`election_min..election_max`), then a vote round
/// and the commit: about `2 x election_max` and some round trips. `election_max` is 30 % of the
/// slack, `election_min` two thirds of it (a narrow random range: a split vote needs only a few
/// round trips to resolve), so the failover takes about 60 % of the slack and leaves the rest for
/// the round trips (defaults: slack 3750 ms, elections 750..1125 ms, failover about 2.3 s). The
/// heartbeat is half of `election_min` and at most 400 ms; it is also the timeout of one append
/// RPC, which a long inter-region round trip over TLS needs.
pub fn timing(config: &Config) -> ControlTiming {
    let f = &config.fencing;
    let slack = f
        .lease_ms
        .saturating_sub(f.margin_ms)
        .saturating_sub(f.renew_every_ms);
    let election_max = (slack * 3 / 10).clamp(300, 3_000);
    let election_min = election_max * 2 / 3;
    let heartbeat = (election_min / 2).min(400);
    ControlTiming {
        heartbeat: Duration::from_millis(heartbeat),
        election_min: Duration::from_millis(election_min),
        election_max: Duration::from_millis(election_max),
        propose_timeout: Duration::from_millis(
            f.lease_ms.saturating_sub(f.margin_ms).clamp(1_000, 10_000),
        ),
        snapshot_timeout: Duration::from_secs(10),
    }
}

/// `ControlState` (the write lease and the homes of owned keyspaces) behind the byte interface of
/// `atoll-control`.
#[derive(Default)]
pub struct ControlMachine {
    state: ControlState,
}

impl StateMachine for ControlMachine {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        // Deterministic on every member: an undecodable command is answered the same everywhere
        // and changes nothing.
        let answer = self.state.apply(command);
        home::encode_answer(&answer).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        home::encode_state(&self.state).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> std::result::Result<(), String> {
        let st = home::decode_state(snapshot).map_err(|e| e.to_string())?;
        self.state = st;
        Ok(())
    }
}

/// Control RPCs over the peer client (mutual TLS, or plain HTTP with `insecure = true`).
pub struct PeerTransport {
    client: PeerClient,
    names: BTreeMap<NodeId, RegionId>,
    me: String,
    /// The route prefix the RPCs go to ([`CONTROL_PATH`], or the strong group's).
    path: &'static str,
    /// Largest answer body read.
    max_body: usize,
}

impl PeerTransport {
    /// Reaches every member at `addrs` (its name → peer address, `--peer-via` applied).
    pub fn new(
        config: &Config,
        me: &str,
        addrs: &BTreeMap<RegionId, SocketAddr>,
        tls: Option<&atoll_tls::RegionTls>,
    ) -> Result<Self> {
        let mut names = BTreeMap::new();
        for (id, name) in members(config) {
            names.insert(id, RegionId::new(&name)?);
        }
        Ok(Self {
            client: PeerClient::new(
                addrs,
                tls,
                Duration::from_secs(1),
                Some(Duration::from_secs(10)),
                true,
            ),
            names,
            me: me.to_string(),
            path: CONTROL_PATH,
            max_body: MAX_CONTROL_BODY,
        })
    }

    /// The same transport for another group of members (`members`), whose RPCs go to `path`
    /// with answers of at most `max_body` bytes (the strong group, [`crate::strong`]).
    pub fn for_group(
        mut self,
        members: &atoll_control::Members,
        path: &'static str,
        max_body: usize,
    ) -> Result<Self> {
        let mut names = BTreeMap::new();
        for (id, name) in members {
            names.insert(*id, RegionId::new(name)?);
        }
        self.names = names;
        self.path = path;
        self.max_body = max_body;
        Ok(self)
    }
}

#[async_trait::async_trait]
impl Transport for PeerTransport {
    async fn call(
        &self,
        to: NodeId,
        rpc: &str,
        body: Vec<u8>,
    ) -> std::result::Result<Vec<u8>, TransportError> {
        let Some(name) = self.names.get(&to) else {
            return Err(TransportError::Unreachable(format!("no member {to}")));
        };
        let path = format!("{}/{rpc}?from={}", self.path, self.me);
        let resp = self
            .client
            .post_classified(name, &path, body)
            .await
            .map_err(|(e, unsent)| {
                if unsent {
                    TransportError::Unreachable(e.to_string())
                } else {
                    TransportError::Failed(e.to_string())
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes(self.max_body)
            .await
            .map_err(|e| TransportError::Failed(e.to_string()))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        // An error answer: `{"code", "message"}` from `handle`, or an edge refusal.
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let code = v["error"]["code"]
            .as_str()
            .or_else(|| v["code"].as_str())
            .unwrap_or("ATOLL-CONTROL-REMOTE")
            .to_string();
        let message = v["error"]["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .map_or_else(|| format!("HTTP {status}"), str::to_string);
        Err(TransportError::Remote { code, message })
    }
}

/// What the control route needs.
#[derive(Clone)]
pub struct ControlRoute {
    pub group: ControlGroup,
    pub members: Arc<Members>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The route prefix ([`CONTROL_PATH`], or the strong group's).
    pub path: &'static str,
    /// Largest request body accepted.
    pub max_body: usize,
}

/// `POST /v1/control/{rpc}` on the peer listener (or `POST {path}/{rpc}` for another group). The
/// caller is the member its certificate names (with `insecure = true`: the `from` it states,
/// unauthenticated, as for replication); a caller that is no member of the group is refused.
pub fn router(route: ControlRoute) -> axum::Router {
    axum::Router::new()
        .route(
            &format!("{}/{{rpc}}", route.path),
            axum::routing::post(serve_rpc),
        )
        .with_state(route)
}

async fn serve_rpc(
    State(route): State<ControlRoute>,
    Path(rpc): Path<String>,
    auth: Option<axum::Extension<PeerAuth>>,
    uri: axum::http::Uri,
    _headers: HeaderMap,
    body: Body,
) -> Response {
    let claimed = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("from="))
            .map(str::to_string)
    });
    let from_name = match auth.map(|a| a.0) {
        Some(PeerAuth::Certified(r)) => {
            if claimed.as_deref().is_some_and(|c| c != r.as_str()) {
                crate::peer::count(&route.metrics, crate::peer::AuthFailure::IdentityMismatch);
                return refuse(
                    StatusCode::FORBIDDEN,
                    "ATOLL-PEER-IDENTITY-MISMATCH",
                    "a member may only speak for itself",
                );
            }
            r.to_string()
        }
        Some(PeerAuth::Insecure) => match claimed {
            Some(c) => c,
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "ATOLL-BAD-REQUEST",
                    "control RPCs name their sender (?from=MEMBER)",
                );
            }
        },
        Some(PeerAuth::Uncertified) | None => {
            crate::peer::count(&route.metrics, crate::peer::AuthFailure::Unauthenticated);
            return refuse(
                StatusCode::FORBIDDEN,
                "ATOLL-PEER-UNAUTHENTICATED",
                "control RPCs need a client certificate of a member of this cluster",
            );
        }
    };
    let Some(from) = route
        .members
        .iter()
        .find(|(_, n)| **n == from_name)
        .map(|(id, _)| *id)
    else {
        return refuse(
            StatusCode::FORBIDDEN,
            "ATOLL-CONTROL-UNKNOWN-MEMBER",
            "the caller is not a member of the control group",
        );
    };
    let bytes: Bytes =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, route.max_body))
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "ATOLL-PEER-REQUEST-TOO-LARGE",
                    "control RPC body over its limit",
                );
            }
        };
    match route.group.handle(from, &rpc, bytes.to_vec()).await {
        Ok(out) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            out,
        )
            .into_response(),
        Err(e) => refuse_with(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.code(),
            &e.to_string(),
            e.hint(),
            e.retryable(),
        ),
    }
}

/// A refused control RPC, in the JSON error body every atoll API answers with.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    refuse_with(status, code, message, refusal_hint(code), false)
}

fn refuse_with(
    status: StatusCode,
    code: &str,
    message: &str,
    hint: &str,
    retryable: bool,
) -> Response {
    (
        status,
        axum::Json(atoll_core::ErrorBody::new(code, message, hint, retryable)),
    )
        .into_response()
}

/// What a peer whose control RPC was refused by authentication or size should do.
fn refusal_hint(code: &str) -> &'static str {
    match code {
        "ATOLL-PEER-IDENTITY-MISMATCH" | "ATOLL-PEER-UNAUTHENTICATED" => {
            "check [cluster.tls]: each member presents the certificate of its own region, signed by the cluster's CA"
        }
        "ATOLL-CONTROL-UNKNOWN-MEMBER" => {
            "the caller's region is not a voter of this group: check that every member runs the same atoll.toml"
        }
        "ATOLL-PEER-REQUEST-TOO-LARGE" => {
            "members of one cluster run compatible atoll versions; check the caller's version"
        }
        _ => "control RPCs come from members of the cluster with `?from=MEMBER`",
    }
}

/// Proposes fencing commands through the control group.
pub struct GroupProposer {
    pub group: ControlGroup,
    /// Told the home table version of every answered quorum renewal (owned keyspaces).
    pub homes: Option<Arc<crate::homes::Homes>>,
}

impl Proposer for GroupProposer {
    fn propose(&self, cmd: Command) -> Pin<Box<dyn Future<Output = Result<Answer>> + Send + '_>> {
        Box::pin(async move {
            let bytes = fence::encode_command(&cmd)?;
            let out = self
                .group
                .propose(bytes)
                .await
                .map_err(|e: ControlError| AtollError::ControlUnavailable(e.to_string()))?;
            match home::decode_answer(&out)? {
                ControlAnswer::Lease {
                    answer,
                    homes_version,
                } => {
                    if let (Some(h), Command::Presence { .. }, Answer::Present) =
                        (&self.homes, &cmd, &answer)
                    {
                        // Before the fence extends the window: the window covers owned
                        // writes only once this region applied the homes it was answered with.
                        h.note_presence(homes_version);
                    }
                    Ok(answer)
                }
                other => Err(AtollError::Corrupt(format!(
                    "the control group answered a lease command with {other:?}"
                ))),
            }
        })
    }

    fn control_status(&self) -> Option<serde_json::Value> {
        let s = self.group.status();
        let name = |id: NodeId| s.members.get(&id).cloned();
        Some(serde_json::json!({
            "role": s.role,
            "leader": s.leader.and_then(name),
            "term": s.term,
            "last_applied": s.last_applied,
        }))
    }
}

/// Starts the control group of member `me` with its log under `data_dir/control`, and a watch
/// of the applied lease state (`None` until the first state is applied or restored).
pub async fn start(
    config: &Config,
    me: &str,
    data_dir: &FsPath,
    transport: Arc<dyn Transport>,
    homes: Option<Arc<crate::homes::Homes>>,
) -> Result<(ControlGroup, watch::Receiver<Option<LeaseState>>)> {
    let id = node_id(config, me).ok_or_else(|| {
        AtollError::Config(format!("`{me}` is not a member of the control group"))
    })?;
    let dir = data_dir.join("control");
    std::fs::create_dir_all(&dir)
        .map_err(|e| AtollError::Storage(format!("cannot create {}: {e}", dir.display())))?;
    let mut opts = ControlOptions::new(id, members(config), dir);
    opts.timing = timing(config);
    let group = ControlGroup::start(opts, Box::new(ControlMachine::default()), transport)
        .await
        .map_err(|e| AtollError::Storage(format!("control group: {e} ({})", e.hint())))?;
    let (tx, rx) = watch::channel(None);
    let mut applied = group.applied();
    tokio::spawn(async move {
        loop {
            let (bytes, index) = {
                let a = applied.borrow_and_update();
                (a.state.clone(), a.index)
            };
            if !bytes.is_empty() {
                match home::decode_state(&bytes) {
                    Ok(st) => {
                        if let Some(h) = &homes {
                            h.on_table(st.homes, index);
                        }
                        tx.send_replace(Some(st.lease));
                    }
                    Err(e) => tracing::error!(error = %e, "undecodable control state"),
                }
            } else if let Some(h) = &homes {
                // Nothing applied that changes state yet: the table is empty as of `index`.
                h.on_table(home::HomeTable::default(), index);
            }
            if applied.changed().await.is_err() || tx.is_closed() {
                return;
            }
        }
    });
    Ok((group, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lease: u64, renew: u64, margin: u64) -> Config {
        let text = include_str!("../../../examples/three-regions.toml");
        let mut c = Config::parse(text, "three-regions.toml").expect("the example parses");
        c.fencing.lease_ms = lease;
        c.fencing.renew_every_ms = renew;
        c.fencing.margin_ms = margin;
        c
    }

    /// A control-group failover (leader lease, then an election timeout: about two
    /// `election_max`) fits in the renewal slack with room, so losing the group's leader does not
    /// cost the primary its window.
    #[test]
    fn control_failover_fits_in_the_lease_slack() {
        for (lease, renew, margin) in [(5_000, 1_000, 250), (2_000, 400, 100), (30_000, 1_000, 250)]
        {
            let t = timing(&config(lease, renew, margin));
            let slack = Duration::from_millis(lease - margin - renew);
            assert!(
                t.election_max * 2 <= slack * 3 / 5,
                "{lease}/{renew}/{margin}: {t:?}"
            );
            assert!(t.heartbeat < t.election_min && t.election_min < t.election_max);
            assert!(t.heartbeat <= Duration::from_millis(400));
        }
        let t = timing(&config(5_000, 1_000, 250));
        assert_eq!(
            (
                t.heartbeat,
                t.election_min,
                t.election_max,
                t.propose_timeout
            ),
            (
                Duration::from_millis(375),
                Duration::from_millis(750),
                Duration::from_millis(1_125),
                Duration::from_millis(4_750)
            )
        );
    }
}
