//! [`Kit`]: a drill's region control over an atoll-testkit [`Cluster`].

use anyhow::Result;
use atoll_drill::DrillError;
use atoll_drill::target::RegionControl;
use atoll_testkit::Cluster;
use std::sync::{Arc, Mutex};

/// Kill/stop/restart through the testkit (what the demo's control API does for `atoll demo`).
pub struct Kit(pub Arc<Mutex<Cluster>>);

impl Kit {
    async fn with(
        &self,
        what: &'static str,
        region: &str,
        f: fn(&mut Cluster, &str) -> Result<()>,
    ) -> atoll_drill::Result<()> {
        let c = self.0.clone();
        let r = region.to_string();
        tokio::task::spawn_blocking(move || {
            let mut g = c.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g, &r)
        })
        .await
        .map_err(|e| DrillError::Control {
            what: what.into(),
            message: e.to_string(),
            retryable: false,
        })?
        .map_err(|e| DrillError::Control {
            what: what.into(),
            message: format!("{e:#}"),
            retryable: false,
        })
    }
}

#[async_trait::async_trait]
impl RegionControl for Kit {
    async fn kill(&self, region: &str) -> atoll_drill::Result<()> {
        self.with("kill", region, |c, r| c.kill9(r).map(|_| ()))
            .await
    }
    async fn stop(&self, region: &str) -> atoll_drill::Result<()> {
        self.with("stop", region, |c, r| c.terminate(r).map(|_| ()))
            .await
    }
    async fn restart(&self, region: &str) -> atoll_drill::Result<()> {
        self.with("restart", region, |c, r| c.restart(r)).await
    }
    fn describe(&self) -> String {
        "atoll-testkit".into()
    }
}
