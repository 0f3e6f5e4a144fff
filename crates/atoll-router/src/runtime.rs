//! Starts and stops a router: the prober, the drain-expiry tick, the HTTP proxy, the admin API
//! and (when built) the DNS server, all sharing one [`RouterState`] and one [`RouterMetrics`].
//!
//! ```no_run
//! # async fn demo(config: std::sync::Arc<atoll_config::Config>) -> Result<(), atoll_router::runtime::RouterError> {
//! use atoll_router::runtime::{Router, RouterOptions};
//! let mut opts = RouterOptions::new(
//!     config,
//!     "127.0.0.1:7300".parse().unwrap(),
//!     "router-state".into(),
//!     "secret-token".into(),
//! );
//! opts.proxy_listen = Some("127.0.0.1:8080".parse().unwrap());
//! let handle = Router::start(opts).await?;
//! println!("proxy on {:?}", handle.proxy_addr());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

use crate::admin::{self, StateStore};
use crate::dns::DnsServer;
use crate::global::{GlobalOptions, GlobalView};
use crate::metrics::RouterMetrics;
use crate::prober::{self, HttpChecker, Prober};
use crate::proxy::{self, Proxy, ProxySettings};
use crate::state::RouterState;
use atoll_config::Config;
use atoll_config::router::RoutedName;
use atoll_core::AtollError;
use atoll_core::clock::{Clock, SystemClock};
use axum::serve::ListenerExt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`RouterHandle::shutdown`] lets in-flight requests finish before it cuts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every adapter of one router shares.
#[derive(Clone)]
pub struct RouterCtx {
    pub state: Arc<RouterState>,
    pub metrics: Arc<RouterMetrics>,
    pub clock: Arc<dyn Clock>,
}

impl RouterCtx {
    /// Milliseconds since the epoch, from the injected clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.physical_ms()
    }
}

/// How to run a router.
#[derive(Clone)]
pub struct RouterOptions {
    pub config: Arc<Config>,
    /// Serve the HTTP proxy here (one routed name, see `proxy_name`).
    pub proxy_listen: Option<SocketAddr>,
    /// Serve authoritative DNS here (UDP and TCP).
    pub dns_listen: Option<SocketAddr>,
    /// Serve the admin API (status, drain, undrain, weights, metrics) here.
    pub admin_listen: SocketAddr,
    /// Where drains and weights are persisted (`router-state.json`); created if missing.
    pub state_dir: PathBuf,
    /// The bearer token every admin route except `/healthz` and `/metrics` requires.
    pub admin_token: String,
    /// The routed name whose policy the proxy follows (label `api` or FQDN `api.atoll.test.`);
    /// the first `[[router.names]]` when `None`.
    pub proxy_name: Option<String>,
    /// The clock decisions, drains and ramps are timed by.
    pub clock: Arc<dyn Clock>,
    /// Proxy limits and timeouts.
    pub proxy: ProxySettings,
    /// The global view's timeout, region token and drill state directory.
    pub global: GlobalOptions,
}

impl RouterOptions {
    /// Options with the admin API only (set `proxy_listen` / `dns_listen` to serve traffic),
    /// the system clock and the proxy settings of the config's `[router.proxy]` (defaults if
    /// the config has no `[router]`).
    pub fn new(
        config: Arc<Config>,
        admin_listen: SocketAddr,
        state_dir: PathBuf,
        admin_token: String,
    ) -> Self {
        let proxy = config
            .router
            .as_ref()
            .map(|r| ProxySettings::from_config(&r.proxy))
            .unwrap_or_default();
        Self {
            config,
            proxy_listen: None,
            dns_listen: None,
            admin_listen,
            state_dir,
            admin_token,
            proxy_name: None,
            clock: Arc::new(SystemClock),
            proxy,
            global: GlobalOptions::default(),
        }
    }
}

/// Why a router could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    State(#[from] AtollError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("router state file {path}: {message}")]
    StateFile { path: PathBuf, message: String },
}

/// Resolves the routed name the proxy serves: by label or FQDN, else the first one.
pub fn proxy_name(config: &Config, wanted: Option<&str>) -> Result<RoutedName, RouterError> {
    let rc = config
        .router
        .as_ref()
        .ok_or_else(|| RouterError::Config("the config has no [router] section: add one (examples/three-regions.toml has one, every key explained)".into()))?;
    let all = || {
        rc.names
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(w) => rc
            .name(w)
            .or_else(|| rc.names.iter().find(|n| n.name == w))
            .cloned()
            .ok_or_else(|| {
                RouterError::Config(format!(
                    "--proxy-name `{w}` is not a routed name of the config (declared: {})",
                    all()
                ))
            }),
        None => rc.names.first().cloned().ok_or_else(|| {
            RouterError::Config(
                "the proxy routes by a routed name's policy, and the config declares no [[router.names]]"
                    .into(),
            )
        }),
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RouterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RouterError::Bind { what, addr, source })
}

/// The router's entry point.
pub struct Router;

impl Router {
    /// Restores drains and weights from `state_dir`, binds every listener, and starts the prober,
    /// the drain-expiry tick and the servers. Fails before serving anything if the config, the
    /// token, the state file or a listener is not right.
    pub async fn start(opts: RouterOptions) -> Result<RouterHandle, RouterError> {
        if opts.admin_token.trim().is_empty() {
            return Err(RouterError::Config(
                "the admin API needs a token (ATOLL_ADMIN_TOKEN or --admin-token-file)".into(),
            ));
        }
        let state = Arc::new(RouterState::new(&opts.config)?);
        // The DNS metrics are part of RouterMetrics (`metrics.dns`), registered whether or not
        // DNS is served, so the exported names do not depend on the listeners.
        let metrics = Arc::new(RouterMetrics::new());
        let ctx = RouterCtx {
            state: state.clone(),
            metrics: metrics.clone(),
            clock: opts.clock.clone(),
        };

        let store = Arc::new(StateStore::new(&opts.state_dir));
        std::fs::create_dir_all(&opts.state_dir).map_err(|e| RouterError::StateFile {
            path: opts.state_dir.clone(),
            message: format!("cannot create the state directory: {e}"),
        })?;
        match store.load() {
            Ok(Some(p)) => {
                let dropped = state.restore(p).map_err(|e| RouterError::StateFile {
                    path: store.path().to_path_buf(),
                    message: format!("{e} ({})", e.hint()),
                })?;
                for d in dropped {
                    tracing::warn!(file = %store.path().display(), "not restored: {d} (no longer in the config)");
                }
                let p = state.persisted()?;
                tracing::info!(
                    file = %store.path().display(),
                    drains = p.drains.len(),
                    "restored drains and weights"
                );
            }
            Ok(None) => {}
            Err(message) => {
                return Err(RouterError::StateFile {
                    path: store.path().to_path_buf(),
                    message,
                });
            }
        }

        let proxy_routed = match opts.proxy_listen {
            Some(_) => Some(proxy_name(&opts.config, opts.proxy_name.as_deref())?),
            None => None,
        };

        let admin_listener = bind("the admin API", opts.admin_listen).await?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| RouterError::Bind {
                what: "the admin API",
                addr: opts.admin_listen,
                source,
            })?;
        let proxy_listener = match opts.proxy_listen {
            Some(a) => {
                let l = bind("the proxy", a).await?;
                let bound = l.local_addr().map_err(|source| RouterError::Bind {
                    what: "the proxy",
                    addr: a,
                    source,
                })?;
                Some((l, bound))
            }
            None => None,
        };

        // DNS: the authoritative server, with the same state, metrics and clock.
        let dns = match opts.dns_listen {
            Some(addr) => Some(
                DnsServer::bind(state.clone(), addr, metrics.dns.clone(), opts.clock.clone())
                    .await
                    .map_err(|source| RouterError::Bind {
                        what: "DNS",
                        addr,
                        source,
                    })?,
            ),
            None => None,
        };
        let dns_addr = dns.as_ref().map(DnsServer::local_addr);

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        let mut servers: Vec<JoinHandle<()>> = Vec::new();

        metrics.refresh(&state, ctx.now_ms());
        let checker = Arc::new(HttpChecker::new(&state.config().health));
        let prober = Arc::new(Prober::new(ctx.clone(), checker));
        tasks.extend(prober.spawn(shutdown_rx.clone()));
        tasks.push(prober::spawn_drain_expiry(
            ctx.clone(),
            store.clone(),
            Duration::from_secs(1),
            shutdown_rx.clone(),
        ));

        let global = Arc::new(GlobalView::new(
            ctx.clone(),
            &opts.config,
            opts.global.clone(),
        ));
        let admin_app = admin::router(admin::AdminState::new(
            ctx.clone(),
            store.clone(),
            opts.admin_token.clone(),
            global,
        ));
        servers.push(tokio::spawn(serve_app(
            "admin",
            admin_listener,
            admin_app,
            shutdown_rx.clone(),
        )));

        let mut proxy_addr = None;
        if let (Some((listener, bound)), Some(name)) = (proxy_listener, proxy_routed) {
            tracing::info!(
                name = %name.fqdn,
                policy = name.policy.as_str(),
                connect_timeout_ms = opts.proxy.connect_timeout.as_millis() as u64,
                request_timeout_ms = opts.proxy.upstream_timeout.as_millis() as u64,
                idle_timeout_ms = opts.proxy.pool_idle_timeout.as_millis() as u64,
                max_body_bytes = opts.proxy.max_body_bytes,
                "proxy routes by this name's policy"
            );
            let p = Arc::new(Proxy::new(ctx.clone(), name, opts.proxy.clone()));
            servers.push(tokio::spawn(proxy::serve(listener, p, shutdown_rx.clone())));
            proxy_addr = Some(bound);
        }

        Ok(RouterHandle {
            proxy_addr,
            admin_addr,
            dns_addr,
            dns,
            ctx,
            store,
            shutdown_tx,
            tasks,
            servers,
        })
    }
}

async fn serve_app(
    what: &'static str,
    listener: TcpListener,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    // No Nagle delay on answers (a proxy's small writes must leave at once).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let res = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await;
    if let Err(e) = res {
        tracing::error!(server = what, "server stopped: {e}");
    }
}

/// A running router.
pub struct RouterHandle {
    proxy_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    dns_addr: Option<SocketAddr>,
    dns: Option<DnsServer>,
    ctx: RouterCtx,
    store: Arc<StateStore>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    servers: Vec<JoinHandle<()>>,
}

impl RouterHandle {
    /// Where the proxy listens (if it runs).
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy_addr
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where DNS listens, UDP and TCP (if it runs).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// The shared state (health, drains, weights, decisions).
    pub fn state(&self) -> &Arc<RouterState> {
        &self.ctx.state
    }

    /// The shared metrics.
    pub fn metrics(&self) -> &Arc<RouterMetrics> {
        &self.ctx.metrics
    }

    /// State, metrics and clock together.
    pub fn ctx(&self) -> &RouterCtx {
        &self.ctx
    }

    /// The file drains and weights are persisted to.
    pub fn state_file(&self) -> &std::path::Path {
        self.store.path()
    }

    /// Stops probing and serving: listeners close, in-flight requests get a few seconds to
    /// finish, then everything is cut.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(dns) = self.dns
            && let Err(e) = dns.shutdown().await
        {
            tracing::error!("DNS server: {e}");
        }
        for s in self.servers {
            let abort = s.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, s).await.is_err() {
                abort.abort();
            }
        }
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, t).await.is_err() {
                abort.abort();
            }
        }
    }
}
