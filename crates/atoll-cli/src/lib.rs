//! The command lines of atoll's library crates, kept out of the libraries so that each of them
//! can be embedded without clap, anyhow or an HTTP client of its own:
//!
//! - [`router`]: `atoll router` (serve the proxy, DNS and admin API; or `drain`, `undrain`,
//!   `weight`, `status` against a running router's admin API), over `atoll-router`.
//! - [`link`]: `atoll link` (serve links from a `links.toml` or a cluster config; `ls`, `set`,
//!   `fault add|ls|renew|rm` against a running link's control API), over `atoll-link`.
//!
//! The `atoll` binary embeds [`router::RouterArgs`] and [`link::LinkArgs`] as subcommands and
//! calls [`router::run`] and [`link::run`]. The region's own command line lives in the binary.

pub mod link;
pub mod router;

/// Completes on Ctrl-C or (on Unix) SIGTERM: when a serving command (`atoll router`,
/// `atoll link serve`) stops.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
