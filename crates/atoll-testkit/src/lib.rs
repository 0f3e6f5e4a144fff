//! Test support for atoll's end-to-end tests: real `atoll`
//! processes on loopback, driven and observed from the outside.
//!
//! - [`process`]: [`RegionProcess`] starts `atoll region` on `127.0.0.1:0`, learns its address
//!   from the `listening on http://ADDR` line, and can SIGKILL it, SIGTERM it and restart it on
//!   the same data directory. A region still running when its handle is dropped is killed, so a
//!   failing test never leaks processes; a test that panics also prints the region's log.
//! - [`cluster`]: [`Cluster`] starts three to five regions that replicate to each other (over
//!   mutual TLS, with certificates made by `atoll certs init`, unless [`ClusterOptions::insecure`]), with
//!   per-pair routes (direct, through another address, or cut), and waits for convergence. With
//!   [`ClusterOptions::with_links`] every region-to-region byte crosses an in-process `atoll link`
//!   mesh (one link per ordered pair), so a test can partition two regions, cut one direction
//!   only, and heal them while the processes run ([`Cluster::partition`],
//!   [`Cluster::partition_oneway`], [`Cluster::heal`], [`Cluster::heal_all`]). With
//!   [`ClusterOptions::arbiter`] it also runs `atoll arbiter` (the control group's witness; then
//!   two regions suffice), a node of the link mesh like a region.
//! - [`Service`]: any other long-running `atoll` process (`atoll link serve`, `atoll router`,
//!   `atoll demo`) started from a command line, waited for by a line it prints, killed on drop;
//!   [`RouterService`] starts `atoll router` with its proxy and admin API on free ports.
//! - [`free_ports`], [`free_port_range`], [`free_udp_tcp_port`]: loopback ports to start on.
//! - [`wait`]: [`wait_until`] / [`wait_until_async`] poll a condition with a short interval until
//!   it holds or a deadline passes (never sleep-and-hope); [`eventually`] also gives back what
//!   the condition found; [`poll`] polls at a pace of its own and says what it saw last when the
//!   deadline passes. Every crate's tests poll with these.
//! - [`client`]: a small HTTP client for the kv, counter and set routes that keeps status codes
//!   and bodies visible to the test.
//! - [`raw_http`]: HTTP/1.1 over a raw socket, for what well-behaved clients never send (slow
//!   uploads answered early, `Expect: 100-continue`, malformed request lines).
//!
//! Everything binds to and talks to `127.0.0.1` only.

pub mod client;
pub mod cluster;
pub mod process;
pub mod raw_http;
pub mod wait;

pub use client::{Client, KvRead, Reply, Sibling, Ts, WriteAck};
pub use cluster::{
    ARBITER, ArbiterLayout, Cluster, ClusterOptions, FAULT_LEASE, Route, free_port_range,
    free_ports, free_udp_tcp_port, link_name,
};
pub use process::{
    RegionProcess, RegionSpec, RouterService, Service, atoll_bin, chromium, run_with_timeout,
};
pub use wait::{eventually, poll, wait_until, wait_until_async};

/// A fresh temporary directory for one test (removed when dropped, kept if the test panics so
/// its data directory and logs can be inspected).
pub fn test_dir(name: &str) -> std::io::Result<TestDir> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("atoll-e2e-{name}-"))
        .tempdir()?;
    Ok(TestDir { dir: Some(dir) })
}

/// A temporary directory that survives a panicking test. See [`test_dir`].
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn path(&self) -> &std::path::Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("TestDir is present until dropped")
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.path().join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            let kept = d.keep();
            eprintln!("test failed: kept its directory {}", kept.display());
        }
    }
}
