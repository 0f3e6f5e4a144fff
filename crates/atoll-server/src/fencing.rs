//! The fencing adapter (`docs/design/fencing.md`): runs [`atoll_core::fence::Fence`] against
//! the control group, gates the store's writes ([`atoll_store::WriteGate`]), and carries out
//! `promote` and `switchover`.
//!
//! Time here is the process's monotonic clock (`Instant`), never the wall clock: lease windows
//! are measured on it. The HLC appears only in an `Acquire`'s `fence_ts`.

use crate::metrics::Metrics;
use atoll_config::{Config, KeyspaceConfig, Model, OnMinority};
use atoll_core::fence::{
    Answer, Command, Denial, Fence, LeaseState, PromoteRefusal, PromotionView, Role, Topology,
};
use atoll_core::{AtollError, RegionId, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// Proposes commands to the control group and waits for the state machine's answer.
pub trait Proposer: Send + Sync + 'static {
    fn propose(&self, cmd: Command) -> Pin<Box<dyn Future<Output = Result<Answer>> + Send + '_>>;

    /// This member's view of the control group (role, leader, term), for `/v1/status`.
    fn control_status(&self) -> Option<Value> {
        None
    }
}

/// What fencing needs to know about replication: how far behind the holder this region and its
/// peers are, and whether a peer has applied this region's writes up to a sequence.
pub trait ReplicationView: Send + Sync + 'static {
    fn promotion_view(&self, holder: &RegionId) -> PromotionView;
    /// This region's own committed head sequence.
    fn head(&self) -> u64;
    /// The committed head once every write stamped before the call is committed (or refused):
    /// a barrier through the store's writer, which blocks; call it off the async runtime.
    fn settled_head(&self) -> Result<u64>;
    /// What `peer` has applied of this region's writes, as its last heartbeat said.
    fn peer_applied_of_mine(&self, peer: &RegionId) -> Option<u64>;
    /// This region's HLC wall time now (for `fence_ts`).
    fn hlc_ms(&self) -> u64;
}

/// The fencing state of a region.
pub struct Fencing {
    me: RegionId,
    model: Model,
    started: Instant,
    fence: Mutex<Fence>,
    apis: BTreeMap<RegionId, SocketAddr>,
    max_clock_offset_ms: u64,
    metrics: Arc<Metrics>,
    /// Set once the first applied state arrived (nothing is proposed before: a restarted
    /// member must not act on the empty state).
    ready: std::sync::atomic::AtomicBool,
    /// Woken when a state is applied or an answer arrives, so the loop reacts at once.
    wake: Notify,
    /// The control group and the replication view, once started.
    driver: std::sync::OnceLock<(Arc<dyn Proposer>, Arc<dyn ReplicationView>)>,
    /// SHA-256 of the admin token (`ATOLL_ADMIN_TOKEN` of the region process): `promote` and
    /// `switchover` need it; `None`: the admin API is off.
    admin_token_sha256: Option<[u8; 32]>,
    /// `[fencing] forward_writes`: sends the writes a standby refuses on to the primary.
    forwarder: Option<crate::forward::Forwarder>,
}

impl Fencing {
    /// The fencing of region `me`, or `None` when the cluster has nothing to fence
    /// (active-active without quorum fencing).
    pub fn new(config: &Config, me: &RegionId, metrics: Arc<Metrics>) -> Result<Option<Arc<Self>>> {
        // A replica is in no control group; what needs one is refused there by the membership
        // (`docs/design/adding-regions.md`).
        if !config.is_voter(me.as_str()) {
            return Ok(None);
        }
        let topology = match config.cluster.model {
            Model::ActiveActive if !config.fencing.quorum => return Ok(None),
            Model::ActiveActive => Topology::ActiveActive { quorum: true },
            Model::ActiveStandby => Topology::ActiveStandby,
            Model::ActivePassive => Topology::ActivePassive,
        };
        let cfg = config.fencing.core(
            me.clone(),
            topology,
            config.voters().map(|r| r.name.clone()).collect(),
        );
        cfg.validate().map_err(AtollError::Config)?;
        Ok(Some(Arc::new(Self {
            me: me.clone(),
            model: config.cluster.model,
            started: Instant::now(),
            fence: Mutex::new(Fence::new(cfg, 0)),
            apis: config.voters().map(|r| (r.name.clone(), r.api)).collect(),
            max_clock_offset_ms: config.cluster.max_clock_offset_ms,
            metrics,
            ready: std::sync::atomic::AtomicBool::new(false),
            wake: Notify::new(),
            driver: std::sync::OnceLock::new(),
            admin_token_sha256: None,
            forwarder: config.fencing.forward_writes.then(|| {
                crate::forward::Forwarder::new(me.clone(), crate::forward::FORWARD_TIMEOUT)
            }),
        })))
    }

    /// Sets the admin token (before the region serves).
    pub fn with_admin_token(mut self: Arc<Self>, token: Option<&str>) -> Arc<Self> {
        if let Some(me) = Arc::get_mut(&mut self) {
            me.admin_token_sha256 = token.filter(|t| !t.is_empty()).map(|t| {
                use sha2::Digest;
                sha2::Sha256::digest(t.as_bytes()).into()
            });
        }
        self
    }

    /// Checks a presented admin token (constant time).
    pub fn check_admin(&self, presented: Option<&str>) -> Result<()> {
        let Some(want) = &self.admin_token_sha256 else {
            return Err(AtollError::Forbidden(
                "the region's admin API is off: start the region with ATOLL_ADMIN_TOKEN set".into(),
            ));
        };
        let Some(p) = presented else {
            return Err(AtollError::Unauthorized(
                "the admin API needs `Authorization: Bearer <admin token>` (ATOLL_ADMIN_TOKEN)"
                    .into(),
            ));
        };
        use sha2::Digest;
        let got: [u8; 32] = sha2::Sha256::digest(p.as_bytes()).into();
        let diff = got
            .iter()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(AtollError::Unauthorized(
                "the admin token is not this region's".into(),
            ))
        }
    }

    /// Attaches the control group and the replication view; the loop and the admin actions use
    /// them.
    pub fn attach(&self, proposer: Arc<dyn Proposer>, view: Arc<dyn ReplicationView>) {
        let _ = self.driver.set((proposer, view));
    }

    fn driver(&self) -> Result<(Arc<dyn Proposer>, Arc<dyn ReplicationView>)> {
        self.driver.get().cloned().ok_or_else(|| {
            AtollError::ControlUnavailable("the control group is not started yet".into())
        })
    }

    /// Milliseconds on this process's monotonic clock.
    /// How long after applying a lease-changing entry a member calls the lease expired:
    /// `D(1+ρ) + M` (what a takeover of an owned home waits too).
    pub fn expiry_wait_ms(&self) -> u64 {
        self.fence().config().expiry_wait_ms()
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn fence(&self) -> MutexGuard<'_, Fence> {
        // A panic while holding the lock cannot leave the fence half-updated in a way that
        // matters for safety (windows only shrink on errors); keep serving.
        self.fence.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn model(&self) -> Model {
        self.model
    }

    pub fn role(&self) -> Role {
        self.fence().role(self.now_ms())
    }

    /// The lease epoch as this region knows it.
    pub fn epoch(&self) -> u64 {
        self.fence().state().epoch
    }

    /// The lease holder and its client API address, if known.
    pub fn primary(&self) -> Option<(RegionId, Option<SocketAddr>)> {
        let holder = self.fence().holder().cloned()?;
        let api = self.apis.get(&holder).copied();
        Some((holder, api))
    }

    /// Where a write this region refused goes (`[fencing] forward_writes`): the forwarder, the
    /// lease holder and its client API, while this region is a standby and the holder is
    /// another region whose address is known. `None`: answer the refusal.
    pub fn forward_target(&self) -> Option<(&crate::forward::Forwarder, RegionId, SocketAddr)> {
        let forwarder = self.forwarder.as_ref()?;
        if self.role() != Role::Standby {
            return None;
        }
        match self.primary()? {
            (holder, Some(api)) if holder != self.me => Some((forwarder, holder, api)),
            _ => None,
        }
    }

    /// Whether a passive region should refuse client traffic (reads included).
    pub fn refuses_clients(&self) -> bool {
        self.role() == Role::Passive
    }

    /// The error a passive region answers client requests with.
    pub fn passive_error(&self) -> AtollError {
        AtollError::Passive {
            primary: self.primary().map(|(p, _)| p.to_string()),
        }
    }

    fn denial_error(&self, d: Denial, keyspace: &str) -> AtollError {
        let (primary, primary_api) = match self.primary() {
            Some((p, a)) => (Some(p.to_string()), a.map(|a| a.to_string())),
            None => (None, None),
        };
        let reason = match &d {
            Denial::NotPrimary { .. } => match self.model {
                Model::ActivePassive => "this region is passive".to_string(),
                _ => "this region is a standby".to_string(),
            },
            Denial::NoWindow { handing_over: true } => {
                "a switchover is in progress: writes are stopped until the new primary takes over"
                    .to_string()
            }
            Denial::NoWindow { .. } => {
                "this region holds the lease but has no valid lease window (renewal pending or failing)"
                    .to_string()
            }
            Denial::Minority => {
                return AtollError::Fenced {
                    keyspace: keyspace.to_string(),
                    detail: "no renewal of its quorum window answered within the lease".into(),
                };
            }
        };
        let label = match &d {
            Denial::NotPrimary { .. } => "not-primary",
            Denial::NoWindow { handing_over: true } => "switchover",
            Denial::NoWindow { .. } => "no-window",
            Denial::Minority => "minority",
        };
        self.metrics.fencing_refused(label);
        AtollError::NotPrimary {
            primary,
            primary_api,
            reason,
        }
    }

    /// `/healthz` and `/v1/status`: role, epoch, holder, lease times.
    pub fn status_json(&self) -> Value {
        let control = self
            .driver
            .get()
            .and_then(|(p, _)| p.control_status())
            .unwrap_or(Value::Null);
        let now = self.now_ms();
        let f = self.fence();
        let st = f.state();
        let holder = st.holder.as_ref().map(|h| h.to_string());
        let holder_api = st
            .holder
            .as_ref()
            .and_then(|h| self.apis.get(h))
            .map(|a| a.to_string());
        let history: Vec<Value> = st
            .history
            .iter()
            .map(|p| {
                json!({
                    "epoch": p.epoch,
                    "region": p.region.as_str(),
                    "previous": p.previous.as_ref().map(|r| r.as_str()),
                    "reason": p.reason,
                })
            })
            .collect();
        let mut v = json!({
            "model": self.model.as_str(),
            "role": f.role(now).as_str(),
            "epoch": st.epoch,
            "holder": holder,
            "holder_api": holder_api,
            "lease_remaining_ms": if st.holder.is_some() { Some(f.remaining_ms(now)) } else { None },
            "window_left_ms": f.window_left_ms(now),
            "lease_ms": f.config().lease_ms,
            "handing_over_to": f.handing_over().map(|r| r.as_str()),
            "promotions": history,
            "control": control,
        });
        if let Topology::ActiveActive { .. } = f.config().topology {
            v["quorum_window_left_ms"] = json!(f.quorum_left_ms(now));
        }
        v
    }

    /// Runs the fencing loop until `stop`: applies states from the control group, proposes
    /// renewals and acquisitions, reports answers.
    pub async fn run(
        self: Arc<Self>,
        mut applied: watch::Receiver<Option<LeaseState>>,
        stop: Arc<Notify>,
    ) {
        let Ok((proposer, view)) = self.driver() else {
            tracing::error!("fencing loop started without a control group; writes stay refused");
            return;
        };
        let tick_every = Duration::from_millis(self.fence().config().tick_ms());
        loop {
            // Apply the newest state first: the moment this member observed it is now (a state
            // seen before changes nothing: the fence notes times only of new versions).
            let st = applied.borrow_and_update().clone();
            if let Some(st) = st {
                let now = self.now_ms();
                self.fence().on_applied(now, &st);
                self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if self.ready.load(std::sync::atomic::Ordering::Relaxed) {
                self.tick(&proposer, &view);
            }
            self.refresh_metrics(&view);
            tokio::select! {
                _ = stop.notified() => return,
                _ = applied.changed() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(tick_every) => {}
            }
        }
    }

    fn fence_ts(&self, view: &Arc<dyn ReplicationView>) -> u64 {
        view.hlc_ms().saturating_add(self.max_clock_offset_ms)
    }

    fn tick(self: &Arc<Self>, proposer: &Arc<dyn Proposer>, view: &Arc<dyn ReplicationView>) {
        let now = self.now_ms();
        let holder = self.fence().holder().cloned();
        let pview = match &holder {
            Some(h) if h != &self.me => Some(view.promotion_view(h)),
            _ => Some(PromotionView::default()),
        };
        let fence_ts = self.fence_ts(view);
        let cmd = self.fence().tick(now, fence_ts, pview.as_ref());
        if let Some(cmd) = cmd {
            self.send(proposer.clone(), cmd, now);
        }
    }

    /// Sends `cmd` (sent at `sent_at`) and reports its answer to the fence when it comes.
    fn send(self: &Arc<Self>, proposer: Arc<dyn Proposer>, cmd: Command, sent_at: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            let answer = proposer.propose(cmd.clone()).await;
            me.answered(sent_at, &cmd, answer);
        });
    }

    fn answered(&self, sent_at: u64, cmd: &Command, answer: Result<Answer>) {
        let now = self.now_ms();
        let a = match &answer {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::debug!(command = cmd.kind(), error = %e, "fencing proposal failed");
                None
            }
        };
        if let Some(Answer::Refused(r)) = a {
            tracing::debug!(command = cmd.kind(), refused = ?r, "fencing proposal refused");
        }
        if matches!(
            a,
            Some(Answer::Granted { .. }) | Some(Answer::Transferred { .. })
        ) {
            self.metrics.fencing_promotions.inc();
            tracing::warn!(command = cmd.kind(), answer = ?a, "write lease changed hands");
        }
        self.fence().on_answer(now, sent_at, cmd, a);
        self.metrics
            .fencing_proposals(cmd.kind(), if a.is_some() { "answered" } else { "failed" });
        self.wake.notify_one();
    }

    fn refresh_metrics(&self, view: &Arc<dyn ReplicationView>) {
        let now = self.now_ms();
        // The promotion view reads the store's watermark, under the store's stamping lock: read
        // it before taking the fence, never while holding it. The store's writer holds the
        // stamping lock while it asks the fence for a permit, so the other order deadlocks (a
        // standby taking refused writes hung this way under load).
        let holder = self.fence().holder().cloned();
        let pview = match &holder {
            Some(h) if h != &self.me => Some(view.promotion_view(h)),
            _ => None,
        };
        let f = self.fence();
        let role = f.role(now);
        let st = f.state();
        self.metrics
            .fencing_max_promotion_lag
            .set(f.config().max_promotion_lag_ms as f64 / 1000.0);
        self.metrics.set_fencing(
            self.me.as_str(),
            role.as_str(),
            st.epoch,
            f.remaining_ms(now),
            f.window_left_ms(now),
            u64::from(role == Role::Primary),
        );
        let blocked = match (st.holder.as_ref(), &pview) {
            (Some(h), Some(v)) if h != &self.me && holder.as_ref() == Some(h) => {
                self.metrics.set_promotion_lag(v.lag().ms);
                Some(f.promotion_blocked(now, v))
            }
            // The holder changed since the view was read: the next refresh has it.
            (Some(h), _) if h != &self.me => None,
            _ => {
                self.metrics.set_promotion_lag(Some(0));
                Some(false)
            }
        };
        if let Some(blocked) = blocked {
            self.metrics
                .fencing_promotion_blocked
                .set(i64::from(blocked));
        }
    }

    /// `atoll promote`: takes the lease if it is not healthy elsewhere and nothing acknowledged
    /// would be lost (or the operator accepts the loss). Returns the report.
    pub async fn promote(self: &Arc<Self>, accept_data_loss: bool) -> Result<Value> {
        let (proposer, view) = self.driver()?;
        let (proposer, view) = (&proposer, &view);
        let holder = self.fence().holder().cloned();
        let pview = match &holder {
            Some(h) => view.promotion_view(h),
            None => PromotionView::default(),
        };
        // A proposal of this region (a failing acquisition, say) may be in flight: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (now, cmd) = loop {
            let now = self.now_ms();
            let fence_ts = self.fence_ts(view);
            let r = self
                .fence()
                .promote(now, fence_ts, &pview, accept_data_loss);
            match r {
                Ok(cmd) => break (now, cmd),
                Err(PromoteRefusal::Busy) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(r) => return Err(refusal_error(r, &self.me)),
            }
        };
        let lag = pview.lag();
        let answer = proposer.propose(cmd.clone()).await;
        self.answered(now, &cmd, answer.clone());
        match answer? {
            Answer::Granted { epoch, .. } => Ok(json!({
                "promoted": self.me.as_str(),
                "epoch": epoch,
                "previous": holder.as_ref().map(|h| h.as_str()),
                "exposure": {"ops": lag.ops, "ms": lag.ms},
            })),
            Answer::Refused(r) => Err(AtollError::ControlUnavailable(format!(
                "the control group refused the promotion: {r:?} (the lease changed meanwhile); check `atoll status` and retry"
            ))),
            other => Err(AtollError::ControlUnavailable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// `atoll switchover TARGET`, on the primary: stop writes, wait until every stamped write is
    /// committed and the target has applied them, transfer the lease. Returns the report (the
    /// write-unavailability window included).
    pub async fn switchover(
        self: &Arc<Self>,
        target: &RegionId,
        timeout: Duration,
    ) -> Result<Value> {
        let (proposer, view) = self.driver()?;
        let (proposer, view) = (&proposer, &view);
        if !self.apis.contains_key(target) {
            return Err(AtollError::BadRequest(format!(
                "`{target}` is not a region of the cluster (regions: {})",
                self.apis
                    .keys()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let stopped = Instant::now();
        self.fence()
            .begin_handover(target)
            .map_err(|r| refusal_error(r, &self.me))?;
        // The gate refuses new writes now; the head read through a barrier of the store's writer
        // covers every write stamped before the stop (with the commit pipelined, up to two
        // batches of them may still be uncommitted at this instant).
        let deadline = stopped + timeout;
        let settled = tokio::task::spawn_blocking({
            let view = view.clone();
            move || view.settled_head()
        })
        .await;
        let head = match settled {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                self.fence().abort_handover();
                return Err(e);
            }
            Err(_) => {
                self.fence().abort_handover();
                return Err(AtollError::ShuttingDown);
            }
        };
        loop {
            if view.peer_applied_of_mine(target).is_some_and(|a| a >= head) {
                break;
            }
            if Instant::now() >= deadline {
                self.fence().abort_handover();
                return Err(AtollError::ControlUnavailable(format!(
                    "`{target}` did not catch up with this region's writes (head {head}, it has applied {}) within {timeout:?}; the switchover was abandoned and writes resumed here",
                    view.peer_applied_of_mine(target)
                        .map_or("nothing known".to_string(), |a| a.to_string())
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A renewal may still be in flight (one proposal at a time): wait for its answer.
        let (now, cmd) = loop {
            let now = self.now_ms();
            let fence_ts = self.fence_ts(view);
            let r = self.fence().transfer(now, fence_ts);
            match r {
                Ok(cmd) => break (now, cmd),
                Err(PromoteRefusal::Busy) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(r) => {
                    self.fence().abort_handover();
                    return Err(refusal_error(r, &self.me));
                }
            }
        };
        let answer = proposer.propose(cmd.clone()).await;
        self.answered(now, &cmd, answer.clone());
        let answer = match answer {
            Ok(a) => a,
            Err(e) => self.transfer_outcome(&cmd, deadline, e).await?,
        };
        match answer {
            Answer::Transferred { epoch, .. } => Ok(json!({
                "from": self.me.as_str(),
                "to": target.as_str(),
                "epoch": epoch,
                "head": head,
                "lost_ops": 0,
                "writes_stopped_ms": stopped.elapsed().as_millis() as u64,
            })),
            Answer::Refused(r) => Err(AtollError::ControlUnavailable(format!(
                "the control group refused the transfer: {r:?}; writes resume here"
            ))),
            other => Err(AtollError::ControlUnavailable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}

impl Fencing {
    /// The outcome of a transfer whose proposal failed (`error`): it may still have been
    /// applied (the control group's leader fell silent after taking it, say). The control
    /// group's state, as this member applies it, settles it: the target holding the lease means
    /// it was applied; this region still holding it under a newer version (a renewal got in
    /// first, or after: either way the transfer can no longer apply) means it was not, and
    /// writes resume here. Until `deadline`; then `error`, the outcome still unknown.
    async fn transfer_outcome(
        &self,
        cmd: &Command,
        deadline: Instant,
        error: AtollError,
    ) -> Result<Answer> {
        let Command::Transfer {
            to, expect_version, ..
        } = cmd
        else {
            return Err(error);
        };
        loop {
            let (holder, epoch, version) = {
                let f = self.fence();
                let st = f.state();
                (st.holder.clone(), st.epoch, st.version)
            };
            if holder.as_ref() == Some(to) {
                tracing::info!(epoch, error = %error, "the switchover's proposal failed, but the control group applied it");
                return Ok(Answer::Transferred { epoch, version });
            }
            if version != *expect_version {
                return Err(AtollError::ControlUnavailable(format!(
                    "{error}; the control group has since changed the lease (holder {}, version {version}), so the transfer was not applied; writes resume on the holder",
                    holder.as_ref().map_or("none", |h| h.as_str())
                )));
            }
            if Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn refusal_error(r: PromoteRefusal, me: &RegionId) -> AtollError {
    match r {
        PromoteRefusal::AlreadyPrimary => {
            AtollError::BadRequest(format!("`{me}` already holds the write lease"))
        }
        PromoteRefusal::LeaseHeld {
            holder,
            remaining_ms,
        } => AtollError::LeaseHeld {
            holder: holder.to_string(),
            remaining_ms,
        },
        PromoteRefusal::DataLoss { lag } => AtollError::DataLoss {
            ops: lag.ops,
            ms: lag.ms,
        },
        PromoteRefusal::Busy => AtollError::Overloaded(
            "a lease proposal of this region is still in flight; retry in a moment".into(),
        ),
        PromoteRefusal::NotLeased => AtollError::BadRequest(
            "the cluster is active-active: there is no write lease to promote or switch over"
                .into(),
        ),
        PromoteRefusal::NotHolder { holder } => AtollError::BadRequest(format!(
            "`{me}` does not hold the write lease (the holder is {}); run the switchover against the primary",
            holder.map_or("unknown".to_string(), |h| format!("`{h}`"))
        )),
    }
}

impl atoll_store::WriteGate for Fencing {
    fn permit(&self, keyspace: &KeyspaceConfig, _key: &[u8]) -> Result<u64> {
        let now = self.now_ms();
        // An owned key is written only inside a quorum window: its home may be taken over by a
        // region on the majority side once that window has ended.
        let r = self.fence().permit(
            now,
            keyspace.on_minority == OnMinority::ReadOnly || keyspace.owned.is_some(),
        );
        r.map_err(|d| self.denial_error(d, &keyspace.name))
    }

    fn is_late(&self, epoch: u64, ts_ms: u64) -> bool {
        let late = self.fence().state().is_late(epoch, ts_ms);
        if late {
            self.metrics.fencing_refused("superseded-epoch");
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atoll_core::fence::LeaseState;
    use std::sync::mpsc;
    use std::time::Duration;

    const CONFIG: &str = "[cluster]\nname = \"t\"\nmodel = \"active-standby\"\n\n[[regions]]\nname = \"us-east-1\"\napi = \"127.0.0.1:7100\"\n\n[[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\n\n[[regions]]\nname = \"ap-southeast-1\"\napi = \"127.0.0.1:7102\"\n\n[[keyspaces]]\nname = \"sessions\"\npolicy = \"lww\"\n";

    /// A replication view whose promotion view, like the real one, needs the store's stamping
    /// lock (here a mutex the test holds), and says when it starts waiting for it.
    struct StampingView {
        stamps: Arc<Mutex<()>>,
        entered: Mutex<mpsc::Sender<()>>,
    }

    impl ReplicationView for StampingView {
        fn promotion_view(&self, _holder: &RegionId) -> PromotionView {
            if let Ok(tx) = self.entered.lock() {
                let _ = tx.send(());
            }
            let _stamped = self.stamps.lock();
            PromotionView::default()
        }
        fn head(&self) -> u64 {
            0
        }
        fn settled_head(&self) -> Result<u64> {
            Ok(0)
        }
        fn peer_applied_of_mine(&self, _peer: &RegionId) -> Option<u64> {
            None
        }
        fn hlc_ms(&self) -> u64 {
            0
        }
    }

    /// The store's writer asks the fence for a permit while it holds the stamping lock; the
    /// fencing loop's metrics refresh reads the promotion view, which takes the stamping lock.
    /// The refresh must not hold the fence meanwhile, or the two wait for each other forever
    /// (a standby under refused writes hung this way).
    #[test]
    fn the_metrics_refresh_never_holds_the_fence_while_it_waits_for_the_store() {
        let config = Config::parse(CONFIG, "t.toml").expect("config");
        let me = RegionId::new("eu-west-1").expect("region");
        let us = RegionId::new("us-east-1").expect("region");
        let fencing = Fencing::new(&config, &me, Arc::new(Metrics::new()))
            .expect("fencing")
            .expect("active-standby fences");
        let state = LeaseState {
            holder: Some(us),
            epoch: 1,
            version: 1,
            ..LeaseState::default()
        };
        fencing.fence().on_applied(fencing.now_ms(), &state);
        let stamps = Arc::new(Mutex::new(()));
        let (entered_tx, entered) = mpsc::channel();
        let view: Arc<dyn ReplicationView> = Arc::new(StampingView {
            stamps: stamps.clone(),
            entered: Mutex::new(entered_tx),
        });
        // The writer's side: the stamping lock is held...
        let stamped = stamps.lock().expect("stamps");
        let refresh = std::thread::spawn({
            let (f, view) = (fencing.clone(), view.clone());
            move || f.refresh_metrics(&view)
        });
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the refresh reads the promotion view");
        // ...and, while the refresh waits for it, the writer asks for a permit.
        let (permit_tx, permit) = mpsc::channel();
        let ks = config.keyspaces[0].clone();
        std::thread::spawn({
            let f = fencing.clone();
            move || {
                let _ = permit_tx.send(atoll_store::WriteGate::permit(&*f, &ks, b"k").is_ok());
            }
        });
        let answered = permit.recv_timeout(Duration::from_secs(10));
        drop(stamped);
        refresh.join().expect("refresh");
        assert_eq!(
            answered,
            Ok(false),
            "the permit (refused: eu-west-1 is a standby) must not wait for the metrics refresh"
        );
    }

    /// A replication view of a target that has caught up with everything.
    struct CaughtUp;

    impl ReplicationView for CaughtUp {
        fn promotion_view(&self, _holder: &RegionId) -> PromotionView {
            PromotionView::default()
        }
        fn head(&self) -> u64 {
            0
        }
        fn settled_head(&self) -> Result<u64> {
            Ok(0)
        }
        fn peer_applied_of_mine(&self, _peer: &RegionId) -> Option<u64> {
            Some(0)
        }
        fn hlc_ms(&self) -> u64 {
            0
        }
    }

    /// A control group whose answer to a transfer is lost (the leader fell silent after taking
    /// it): the proposal fails, and this member then applies `after` (if any) as the group's
    /// state.
    struct LostAnswer {
        fencing: std::sync::OnceLock<Arc<Fencing>>,
        after: Option<LeaseState>,
    }

    impl Proposer for LostAnswer {
        fn propose(
            &self,
            _cmd: Command,
        ) -> Pin<Box<dyn Future<Output = Result<Answer>> + Send + '_>> {
            Box::pin(async move {
                if let (Some(f), Some(st)) = (self.fencing.get(), &self.after) {
                    let f = f.clone();
                    let st = st.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let now = f.now_ms();
                        f.fence().on_applied(now, &st);
                    });
                }
                Err(AtollError::ControlUnavailable(
                    "the leader went silent: the command may or may not have been applied".into(),
                ))
            })
        }
    }

    fn primary_with_lost_answers(after: Option<LeaseState>) -> Arc<Fencing> {
        let config = Config::parse(CONFIG, "t.toml").expect("config");
        let us = RegionId::new("us-east-1").expect("region");
        let fencing = Fencing::new(&config, &us, Arc::new(Metrics::new()))
            .expect("fencing")
            .expect("active-standby fences");
        let state = LeaseState {
            holder: Some(us),
            epoch: 1,
            version: 1,
            ..LeaseState::default()
        };
        fencing.fence().on_applied(fencing.now_ms(), &state);
        let proposer = Arc::new(LostAnswer {
            fencing: std::sync::OnceLock::new(),
            after,
        });
        let _ = proposer.fencing.set(fencing.clone());
        fencing.attach(proposer, Arc::new(CaughtUp));
        fencing
    }

    #[tokio::test]
    async fn a_switchover_whose_answer_was_lost_reports_what_the_control_group_applied() {
        let eu = RegionId::new("eu-west-1").expect("region");
        // Applied: this member sees the target hold the lease under the next epoch.
        let applied = LeaseState {
            holder: Some(eu.clone()),
            epoch: 2,
            version: 2,
            ..LeaseState::default()
        };
        let f = primary_with_lost_answers(Some(applied));
        let report = f
            .switchover(&eu, Duration::from_secs(10))
            .await
            .expect("the transfer was applied: the switchover succeeded");
        assert_eq!(report["to"], "eu-west-1", "{report}");
        assert_eq!(report["epoch"], 2, "{report}");

        // Not applied: a renewal of this region's lease got in first.
        let renewed = LeaseState {
            holder: Some(RegionId::new("us-east-1").expect("region")),
            epoch: 1,
            version: 2,
            ..LeaseState::default()
        };
        let f = primary_with_lost_answers(Some(renewed));
        let err = f
            .switchover(&eu, Duration::from_secs(10))
            .await
            .expect_err("the transfer was not applied");
        assert!(
            err.to_string().contains("was not applied"),
            "the error says the transfer did not happen: {err}"
        );

        // Nothing learned before the deadline: the outcome stays unknown, and says so.
        let f = primary_with_lost_answers(None);
        let err = f
            .switchover(&eu, Duration::from_millis(300))
            .await
            .expect_err("outcome unknown");
        assert!(
            err.to_string().contains("may or may not"),
            "the error says the outcome is unknown: {err}"
        );
    }
}
