//! The region's side of the RESP front (`crates/atoll-resp`, `docs/design/resp.md`): the
//! [`atoll_resp::Host`] over the client API's state, so a RESP command reads the same store and
//! writes through the same path as the HTTP API (owned keys' homes, fencing's write gate at the
//! stamping instant, the store's writer), with the same tokens.

use crate::api::AppState;
use atoll_config::Config;
use atoll_config::auth::Tokens;
use atoll_core::AtollError;
use atoll_core::op::{Intent, KeyState};
use atoll_resp::{HostInfo, PeerInfo};
use std::sync::Arc;

/// The RESP front's view of a region.
pub struct RespHost {
    pub(crate) state: Arc<AppState>,
    pub(crate) port: u16,
}

impl RespHost {
    /// A passive region serves no client traffic, over RESP either.
    fn check_serving(&self) -> Result<(), AtollError> {
        if let Some(f) = self.state.fencing.get()
            && f.refuses_clients()
        {
            return Err(f.passive_error());
        }
        if self
            .state
            .replicator
            .get()
            .is_some_and(|r| r.is_bootstrapping())
        {
            return Err(AtollError::Bootstrapping(
                "its data is partial until the snapshot is complete".into(),
            ));
        }
        Ok(())
    }
}

impl atoll_resp::Host for RespHost {
    fn config(&self) -> &Config {
        &self.state.config
    }

    fn tokens(&self) -> Option<&Tokens> {
        self.state.auth.as_deref()
    }

    fn now_ms(&self) -> u64 {
        self.state.store.now_ms()
    }

    fn read(&self, keyspace: &str, key: &[u8]) -> Result<Option<KeyState>, AtollError> {
        self.check_serving()?;
        self.state.store.get(keyspace, key)
    }

    async fn write(
        &self,
        keyspace: &str,
        key: &[u8],
        intent: Intent,
    ) -> Result<KeyState, AtollError> {
        self.check_serving()?;
        crate::api::write(&self.state, keyspace, key, intent)
            .await
            .map(|out| out.state)
    }

    /// Every write but an owned key's (whose home may have to be claimed first, a step of its
    /// own): into the store's queue now, in the caller's order.
    fn submit(&self, keyspace: &str, key: &[u8], intent: Intent) -> Option<atoll_resp::Submitted> {
        let policy = self.state.store.keyspace(keyspace).ok()?.policy;
        if policy == atoll_core::op::Policy::Owned || matches!(intent, Intent::Admit { .. }) {
            return None;
        }
        if let Err(e) = self.check_serving() {
            return Some(Box::pin(std::future::ready(Err(e))));
        }
        let out = crate::api::enqueue(&self.state, keyspace, key, intent);
        Some(Box::pin(async move { out.await.map(|out| out.state) }))
    }

    fn info(&self) -> HostInfo {
        let (atoll_role, writable) = match self.state.fencing.get() {
            Some(f) => {
                let role = f.role();
                (
                    role.as_str().to_string(),
                    matches!(
                        role,
                        atoll_core::fence::Role::Primary | atoll_core::fence::Role::Active
                    ),
                )
            }
            None => ("active".to_string(), true),
        };
        let peers = match self.state.replicator.get().map(|r| r.status()) {
            Some(Ok((peers, _))) => peers
                .into_iter()
                .map(|p| PeerInfo {
                    region: p.region.to_string(),
                    state: p.state.as_str().to_string(),
                    lag_seconds: p.lag_seconds,
                    lag_ops: p.lag_ops,
                })
                .collect(),
            _ => Vec::new(),
        };
        HostInfo {
            region: self.state.store.region().to_string(),
            cluster: self.state.config.cluster.name.clone(),
            uptime_secs: self.state.started.elapsed().as_secs(),
            tcp_port: self.port,
            writable,
            atoll_role,
            peers,
        }
    }

    fn session_token(&self) -> String {
        crate::session::region_token(&self.state)
    }

    async fn session_wait(&self, token: &str, wait_ms: Option<u64>) -> Result<(), AtollError> {
        self.check_serving()?;
        crate::session::wait_for_token(&self.state, token, wait_ms).await
    }

    fn on_command(&self, command: &'static str, outcome: &'static str) {
        self.state.metrics.resp_command(command, outcome);
    }

    fn on_connections(&self, open: usize) {
        self.state
            .metrics
            .resp_connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }
}
