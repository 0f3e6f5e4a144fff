//! `atoll arbiter`: the witness of the control group (`docs/design/fencing.md`). It votes and
//! stores the control log (the write lease and the promotion history), never keyspace data. For
//! two regions it is the third voter that lets a majority form on one side of a split: an
//! external arbiter, placed apart from both regions.
//!
//! It listens like a region's peer listener (mutual TLS, certificate `<name>.atoll` issued by
//! `atoll certs init`) and serves only the control routes.

use crate::metrics::Metrics;
use crate::peer::PeerListener;
use atoll_config::{Config, PeerTls};
use atoll_core::{AtollError, RegionId, Result};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What `atoll arbiter` is told.
#[derive(Clone, Debug)]
pub struct ArbiterOptions {
    pub config: Arc<Config>,
    /// Overrides `[cluster.arbiter] peer`.
    pub listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Reach these regions at these addresses instead of their `peer` address.
    pub peer_via: BTreeMap<String, SocketAddr>,
}

/// A started arbiter: its control group runs and its peer listener is bound; [`Arbiter::serve`]
/// serves the control routes.
pub struct Arbiter {
    name: RegionId,
    group: atoll_control::ControlGroup,
    listener: PeerListener,
    members: usize,
}

/// Runs the arbiter until `shutdown` resolves.
pub async fn run(
    opts: ArbiterOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    Arbiter::bind(opts).await?.serve(shutdown).await
}

impl Arbiter {
    /// Loads its certificate, starts its control-group member and binds its peer listener (at
    /// `--listen`, else `[cluster.arbiter] peer`).
    pub async fn bind(opts: ArbiterOptions) -> Result<Arbiter> {
        let config = &opts.config;
        let Some(arb) = config.cluster.arbiter.clone() else {
            return Err(AtollError::Config(
                "the config has no [cluster.arbiter] section: add one with the arbiter's `peer` address (and `name`, default \"arbiter\")".into(),
            ));
        };
        config
            .check_peer_tls()
            .map_err(|e| AtollError::Config(e.to_string()))?;
        let tls = match &config.cluster.tls {
            PeerTls::Mutual(files) => Some(atoll_tls::RegionTls::load(
                &arb.name,
                &files.ca,
                &files.cert_for(arb.name.as_str()),
                &files.key_for(arb.name.as_str()),
                atoll_core::clock::system_time(&atoll_core::clock::SystemClock),
            )?),
            PeerTls::Insecure | PeerTls::Undeclared => None,
        };
        for name in opts.peer_via.keys() {
            if config.region(name).is_none() {
                return Err(AtollError::Config(format!(
                    "--peer-via names `{name}`, which is not a region in the config"
                )));
            }
        }
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
            AtollError::Storage(format!(
                "cannot create data directory {}: {e}",
                opts.data_dir.display()
            ))
        })?;
        // The control group's members: the voter regions (a replica is in no group).
        let addrs: BTreeMap<RegionId, SocketAddr> = config
            .voters()
            .map(|r| {
                let a = opts
                    .peer_via
                    .get(r.name.as_str())
                    .copied()
                    .unwrap_or(r.peer);
                (r.name.clone(), a)
            })
            .collect();
        // Bind first: a taken port fails the start before the control group opens its log.
        let names = config
            .voters()
            .map(|r| r.name.clone())
            .chain(std::iter::once(arb.name.clone()))
            .collect();
        let listen = opts.listen.unwrap_or(arb.peer);
        let listener = PeerListener::bind(
            listen,
            tls.as_ref(),
            std::sync::Arc::new(std::sync::RwLock::new(names)),
        )
        .await?;
        let transport = Arc::new(crate::control::PeerTransport::new(
            config,
            arb.name.as_str(),
            &addrs,
            tls.as_ref(),
        )?);
        let (group, _applied) =
            crate::control::start(config, arb.name.as_str(), &opts.data_dir, transport, None)
                .await?;
        Ok(Arbiter {
            name: arb.name,
            group,
            listener,
            members: crate::control::members(config).len(),
        })
    }

    /// The arbiter's name (`[cluster.arbiter] name`).
    pub fn name(&self) -> &RegionId {
        &self.name
    }

    /// Where its peer listener is bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves the control routes until `shutdown` resolves, then stops the control group.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Arbiter {
            name,
            group,
            listener,
            members,
        } = self;
        let metrics = Arc::new(Metrics::new());
        tracing::info!(
            arbiter = %name,
            addr = %listener.local_addr()?,
            members,
            tls = if listener.is_tls() { "mutual TLS" } else { "none (insecure)" },
            "arbiter listening (control group only, no keyspace data)"
        );
        let app = crate::control::router(crate::control::ControlRoute {
            group: group.clone(),
            members: Arc::new(group.status().members),
            metrics: metrics.clone(),
            path: crate::control::CONTROL_PATH,
            max_body: crate::control::MAX_CONTROL_BODY,
        })
        .fallback(crate::api::route_not_found);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serve = tokio::spawn(listener.serve(app, metrics, stop_rx));
        shutdown.await;
        stop_tx.send_replace(true);
        let _ = serve.await;
        group.shutdown().await;
        tracing::info!("arbiter stopped");
        Ok(())
    }
}
