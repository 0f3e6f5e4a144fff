//! What keeps `atoll demo` running through failures, and lets a drill drive it: the region
//! supervisor (one task per region process: a region that dies is reported and the rest keeps
//! running), the demo's control API (`/v1/demo/regions`, kill / stop / restart a region, add one
//! to the running cluster or remove an added one; bearer token), the discovery file
//! (`${TMPDIR:-/tmp}/atoll-demo-<port-base>.json`) that tells tools where all of it is, and
//! `atoll demo ctl`, the command-line client of the control API.

use anyhow::{Context, Result, anyhow, bail};
use atoll_core::RegionId;
use axum::Router;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

/// The port base `atoll demo` and `atoll demo ctl` use without `--port-base`.
pub const DEFAULT_PORT_BASE: u16 = 7100;
/// The demo's control API listens on `127.0.0.1:<port_base + CONTROL_OFFSET>`.
pub const CONTROL_OFFSET: u32 = 91;
/// The version of the discovery file's format; a reader refuses a newer one.
pub const DISCOVERY_VERSION: u32 = 1;
/// How long `stop` (and the demo's own shutdown) waits for a region to exit after SIGTERM before
/// it kills it.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// How long `kill` waits for a region to be reaped after SIGKILL.
const KILL_DEADLINE: Duration = Duration::from_secs(10);
/// How long `add` waits, after reloading every region, for the new one to be admitted.
pub const ADMIT_DEADLINE: Duration = Duration::from_secs(60);
/// How long `remove` waits, after reloading every remaining region, for each of them to show the
/// removed region's writes settled.
pub const REMOVE_DEADLINE: Duration = Duration::from_secs(60);
/// How long `remove`, once the removal settled, waits for the removed region (if it runs) to
/// learn it: it does from the answer to its next heartbeat (one a second by default).
const TOLD_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The discovery file.

/// One region in the discovery file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiscoveryRegion {
    pub name: String,
    pub api: String,
}

/// `${TMPDIR:-/tmp}/atoll-demo-<port_base>.json`: where a running demo's parts are, and its
/// admin token (so the file is 0600).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    pub version: u32,
    pub port_base: u16,
    pub pid: u32,
    pub data_dir: String,
    pub config: String,
    pub token: String,
    pub model: String,
    pub control: String,
    pub router_admin: String,
    pub proxy: String,
    pub link_control: String,
    pub regions: Vec<DiscoveryRegion>,
}

/// `${TMPDIR:-/tmp}`, as a shell reads it: an unset or empty `TMPDIR` means `/tmp`.
fn tmp_dir() -> PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/tmp"),
    }
}

/// Where the demo on `port_base` writes its discovery file.
pub fn discovery_path(port_base: u16) -> PathBuf {
    tmp_dir().join(format!("atoll-demo-{port_base}.json"))
}

/// Whether a process `pid` exists (a zombie counts: it has not been reaped yet).
fn pid_alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The pid a discovery file names, read leniently (any version), or `None` if it names none.
fn file_pid(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_u64()
}

/// The demo's claim on its discovery file: created by [`DiscoveryFile::claim`], written with
/// [`DiscoveryFile::write`], removed when dropped (if it still names this process).
pub struct DiscoveryFile {
    path: PathBuf,
    written: bool,
}

impl DiscoveryFile {
    /// Refuses if a live demo owns the file of `port_base`; a stale one (its pid is gone, or it
    /// names none) is replaced when this demo writes its own.
    pub fn claim(port_base: u16) -> Result<DiscoveryFile> {
        Self::claim_at(discovery_path(port_base), port_base)
    }

    fn claim_at(path: PathBuf, port_base: u16) -> Result<DiscoveryFile> {
        if let Some(pid) = file_pid(&path)
            && pid != u64::from(std::process::id())
            && pid_alive(pid)
        {
            bail!(
                "a demo (pid {pid}) already runs on port base {port_base} ({} names it): stop it first, or use another --port-base",
                path.display()
            );
        }
        Ok(DiscoveryFile {
            path,
            written: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `d` atomically (a temporary file of mode 0600 in the same directory, fsynced,
    /// then renamed over the file).
    pub fn write(&mut self, d: &Discovery) -> Result<()> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| anyhow!("{} has no directory", self.path.display()))?;
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("bad discovery file name {}", self.path.display()))?;
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let text = serde_json::to_string_pretty(d)?;
        let result = (|| -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", self.path.display()));
        }
        self.written = true;
        Ok(())
    }
}

impl DiscoveryFile {
    /// Removes the file if this demo wrote it and it still names this process.
    fn remove(&mut self) {
        if self.written && file_pid(&self.path) == Some(u64::from(std::process::id())) {
            let _ = std::fs::remove_file(&self.path);
        }
        self.written = false;
    }
}

impl Drop for DiscoveryFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Reads the discovery file of the demo on `port_base`, for `atoll demo ctl`.
pub fn read_discovery(port_base: u16) -> Result<Discovery> {
    let path = discovery_path(port_base);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no demo runs on port base {port_base}: {} does not exist (start one with `atoll demo{}`; TMPDIR must be the demo's)",
            path.display(),
            port_base_flag(port_base)
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // Only a file of this user is trusted: in a shared /tmp anyone can create one.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        // SAFETY: geteuid(2) cannot fail and has no side effects.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            bail!(
                "{} belongs to another user (uid {}): not this user's demo",
                path.display(),
                meta.uid()
            );
        }
    }
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a demo discovery file", path.display()))?;
    match v["version"].as_u64() {
        Some(n) if n == u64::from(DISCOVERY_VERSION) => {}
        Some(n) => bail!(
            "{} has format version {n}; this atoll reads version {DISCOVERY_VERSION}: use the atoll that runs the demo",
            path.display()
        ),
        None => bail!("{} has no format version", path.display()),
    }
    let d: Discovery = serde_json::from_value(v)
        .with_context(|| format!("{} is not a demo discovery file", path.display()))?;
    if !pid_alive(u64::from(d.pid)) {
        bail!(
            "the demo that wrote {} (pid {}) is gone",
            path.display(),
            d.pid
        );
    }
    Ok(d)
}

/// ` --port-base B` unless `B` is the default: what a printed command needs to reach the demo.
pub fn port_base_flag(port_base: u16) -> String {
    if port_base == DEFAULT_PORT_BASE {
        String::new()
    } else {
        format!(" --port-base {port_base}")
    }
}

// ---------------------------------------------------------------------------------------------
// The region supervisor.

/// What a region process is doing, as the control API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionState {
    Running,
    /// It exited without being asked to (crash, a signal from outside the demo).
    Exited,
    /// Killed (SIGKILL) through the control API.
    Killed,
    /// Stopped (SIGTERM, graceful) through the control API, or by the demo's shutdown.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requested {
    Kill,
    Stop,
}

/// A boxed future of the [`Spawner`]'s methods.
pub type SpawnFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How to start region processes: one of the demo's again, or one more.
pub trait Spawner: Send + Sync + 'static {
    fn spawn(&self, name: &str, via: &[(String, SocketAddr)]) -> SpawnFuture<'_, Result<Child>>;

    /// Makes `name` the demo's region number `index` (0-based) and starts it: its ports, its
    /// certificate, its `[[regions]]` table (`voter = false`) appended to the demo's config, its
    /// process, listening when this answers. Nothing is left changed when it fails.
    fn add(&self, name: &RegionId, index: usize)
    -> SpawnFuture<'_, Result<AddedRegion, DemoError>>;

    /// Prepares the demo's config without `name`'s `[[regions]]` table, changing nothing yet:
    /// refuses ([`DemoError::RemoveRefused`]) if the config has no such region, if it is a voter,
    /// or if the running regions would refuse the new config on SIGHUP
    /// (`Config::reload_change`). [`ConfigEdit::apply`] writes it.
    fn removal(&self, name: &RegionId) -> Result<ConfigEdit, DemoError>;
}

/// A change of the demo's config, checked and not written yet.
pub struct ConfigEdit {
    /// The demo's config file.
    pub path: PathBuf,
    /// What it will say.
    pub text: String,
    /// How to write it (atomically: the regions re-read the file on SIGHUP).
    pub write: fn(&Path, &str) -> std::io::Result<()>,
}

impl ConfigEdit {
    /// Writes the new config.
    pub fn apply(&self) -> Result<(), DemoError> {
        (self.write)(&self.path, &self.text).map_err(|e| {
            DemoError::RemoveRefused(format!(
                "cannot write the demo's config {}: {e}",
                self.path.display()
            ))
        })
    }
}

/// A region [`Spawner::add`] started.
pub struct AddedRegion {
    pub child: Child,
    /// Its client API URL.
    pub api: String,
    /// What was made for it, for the control API's answer (ports, files, keyspaces).
    pub details: serde_json::Map<String, Value>,
}

struct Live {
    state: RegionState,
    pid: Option<u32>,
    exit: Option<String>,
    restarts: u32,
    requested: Option<Requested>,
    /// Signals for the task that owns the current process.
    signals: Option<mpsc::UnboundedSender<i32>>,
    /// Becomes true when the current process has been reaped.
    reaped: Option<watch::Receiver<bool>>,
}

struct Slot {
    name: String,
    api: String,
    via: Vec<(String, SocketAddr)>,
    /// One control operation at a time per region.
    op: tokio::sync::Mutex<()>,
    live: Mutex<Live>,
    /// Removed from the cluster (`atoll demo ctl remove-region`): no longer a member, never
    /// reloaded or restarted again; its process, if it runs, stays supervised (see
    /// [`Regions::remove`]).
    removed: AtomicBool,
}

impl Slot {
    fn new(name: String, api: String, via: Vec<(String, SocketAddr)>) -> Slot {
        Slot {
            name,
            api,
            via,
            op: tokio::sync::Mutex::new(()),
            live: Mutex::new(Live {
                state: RegionState::Stopped,
                pid: None,
                exit: None,
                restarts: 0,
                requested: None,
                signals: None,
                reaped: None,
            }),
            removed: AtomicBool::new(false),
        }
    }

    fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `sig` to the region's process if it runs (without noting it as a request to
    /// exit): whether it was sent.
    fn signal(&self, sig: i32) -> bool {
        let l = self.live();
        match (&l.signals, l.state) {
            (Some(tx), RegionState::Running) => tx.send(sig).is_ok(),
            _ => false,
        }
    }

    fn json(&self) -> Value {
        let l = self.live();
        json!({
            "name": self.name,
            "api": self.api,
            "state": l.state,
            "pid": l.pid,
            "exit": l.exit,
            "restarts": l.restarts,
            "removed": self.is_removed(),
        })
    }
}

/// The demo's region processes.
pub struct Regions {
    /// In the order they were started; `add` appends.
    slots: Mutex<Vec<Arc<Slot>>>,
    spawner: Box<dyn Spawner>,
    port_base: u16,
    shutting_down: AtomicBool,
    /// One `add` or `remove` at a time (`add` picks the next region number; each changes the
    /// config and reloads the regions).
    membership: tokio::sync::Mutex<()>,
    /// The discovery file once the demo has published it, and what it says.
    discovery: Mutex<Option<(DiscoveryFile, Discovery)>>,
}

/// What happened to a region process, in words (`signal 9`, `exit code 1`).
fn describe(status: &std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(st) => {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt as _;
                if let Some(sig) = st.signal() {
                    return format!("signal {sig}");
                }
            }
            match st.code() {
                Some(c) => format!("exit code {c}"),
                None => st.to_string(),
            }
        }
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// A region process the demo started, handed to [`Regions::new`].
pub struct Started {
    pub name: String,
    pub api: String,
    /// Its `--peer-via` links, which a restart passes again.
    pub via: Vec<(String, SocketAddr)>,
    pub child: Child,
}

/// The outcome of the demo's shutdown for one region.
pub struct StopReport {
    pub name: String,
    /// Ran at the stop and exited 0 after SIGTERM, or was down at the stop because the control
    /// API killed or stopped it.
    pub clean: bool,
    pub detail: String,
}

impl Regions {
    /// The supervisor of regions already started.
    pub fn new(port_base: u16, spawner: Box<dyn Spawner>, started: Vec<Started>) -> Arc<Regions> {
        let mut children = Vec::new();
        let slots: Vec<Arc<Slot>> = started
            .into_iter()
            .map(
                |Started {
                     name,
                     api,
                     via,
                     child,
                 }| {
                    children.push(child);
                    Arc::new(Slot::new(name, api, via))
                },
            )
            .collect();
        let regions = Arc::new(Regions {
            slots: Mutex::new(slots.clone()),
            spawner,
            port_base,
            shutting_down: AtomicBool::new(false),
            membership: tokio::sync::Mutex::new(()),
            discovery: Mutex::new(None),
        });
        for (slot, child) in slots.into_iter().zip(children) {
            regions.clone().adopt(slot, child);
        }
        regions
    }

    /// Every slot, in order (a copy: no lock is held after this).
    fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes the discovery file and keeps it, so that `add` can list its regions in it.
    pub fn publish(&self, mut file: DiscoveryFile, doc: Discovery) -> Result<()> {
        file.write(&doc)?;
        *self.discovery.lock().unwrap_or_else(|p| p.into_inner()) = Some((file, doc));
        Ok(())
    }

    /// Removes the discovery file (the demo is stopping).
    pub fn unpublish(&self) {
        let taken = self
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((mut file, _)) = taken {
            file.remove();
        }
    }

    /// Adds a region to the discovery file (if published).
    fn discover(&self, name: &str, api: &str) -> Result<()> {
        let mut d = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        let Some((file, doc)) = d.as_mut() else {
            return Ok(());
        };
        doc.regions.push(DiscoveryRegion {
            name: name.to_string(),
            api: api.to_string(),
        });
        file.write(doc)
    }

    /// Takes a region out of the discovery file (if published): it is no member any more.
    fn undiscover(&self, name: &str) -> Result<()> {
        let mut d = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        let Some((file, doc)) = d.as_mut() else {
            return Ok(());
        };
        doc.regions.retain(|r| r.name != name);
        file.write(doc)
    }

    fn restart_command(&self, name: &str) -> String {
        format!(
            "atoll demo ctl restart {name}{}",
            port_base_flag(self.port_base)
        )
    }

    /// Makes `child` the current process of `slot` and starts the task that owns it: it
    /// delivers the control API's signals and records the exit.
    fn adopt(self: Arc<Self>, slot: Arc<Slot>, child: Child) {
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let (reaped_tx, reaped_rx) = watch::channel(false);
        {
            let mut l = slot.live();
            l.state = RegionState::Running;
            l.pid = child.id();
            l.exit = None;
            l.requested = None;
            l.signals = Some(sig_tx);
            l.reaped = Some(reaped_rx);
        }
        tokio::spawn(self.own(slot, child, sig_rx, reaped_tx));
    }

    async fn own(
        self: Arc<Self>,
        slot: Arc<Slot>,
        mut child: Child,
        mut signals: mpsc::UnboundedReceiver<i32>,
        reaped: watch::Sender<bool>,
    ) {
        let status = loop {
            tokio::select! {
                st = child.wait() => break st,
                Some(sig) = signals.recv() => {
                    // The child is not reaped while this task holds it, so its pid is still its.
                    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
                        // SAFETY: kill(2) on our own unreaped child.
                        unsafe {
                            libc::kill(pid, sig);
                        }
                    }
                }
            }
        };
        let text = describe(&status);
        let requested = {
            let mut l = slot.live();
            let requested = l.requested.take();
            l.state = match requested {
                Some(Requested::Kill) => RegionState::Killed,
                Some(Requested::Stop) => RegionState::Stopped,
                None => RegionState::Exited,
            };
            l.pid = None;
            l.exit = Some(text.clone());
            l.signals = None;
            requested
        };
        if !self.shutting_down.load(Ordering::SeqCst) && slot.is_removed() {
            eprintln!(
                "region {} (removed from the cluster) {} ({text}); a removed region is not restarted",
                slot.name,
                match requested {
                    None => "exited",
                    Some(Requested::Kill) => "was killed on request",
                    Some(Requested::Stop) => "was stopped on request",
                }
            );
        } else if !self.shutting_down.load(Ordering::SeqCst) {
            let restart = self.restart_command(&slot.name);
            match requested {
                None => eprintln!(
                    "region {} exited ({text}); the others keep running — restart it with: {restart}",
                    slot.name
                ),
                Some(r) => eprintln!(
                    "region {} {} on request ({text}); restart it with: {restart}",
                    slot.name,
                    if r == Requested::Kill {
                        "killed"
                    } else {
                        "stopped"
                    }
                ),
            }
        }
        let _ = reaped.send(true);
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots().into_iter().find(|s| s.name == name)
    }

    pub fn json(&self) -> Value {
        json!({"regions": self.slots().iter().map(|s| s.json()).collect::<Vec<_>>()})
    }

    /// Sends `sig` to the region's process, if it runs, noting that it was asked to exit;
    /// `None` if it was not running. Then waits up to `deadline` for it to be reaped: `Ok(false)`
    /// if it was not.
    async fn signal_and_wait(
        slot: &Slot,
        sig: i32,
        why: Requested,
        deadline: Duration,
    ) -> Option<bool> {
        let mut reaped = {
            let mut l = slot.live();
            if l.state != RegionState::Running {
                return None;
            }
            let (Some(tx), Some(reaped)) = (l.signals.clone(), l.reaped.clone()) else {
                return None;
            };
            // A kill is never recorded as a stop (a stop that times out escalates to one).
            if l.requested != Some(Requested::Kill) {
                l.requested = Some(why);
            }
            let _ = tx.send(sig);
            reaped
        };
        Some(
            tokio::time::timeout(deadline, reaped.wait_for(|r| *r))
                .await
                .is_ok(),
        )
    }

    /// SIGKILL, then waits until the process is reaped.
    async fn kill_slot(slot: &Slot) -> Result<(), DemoError> {
        match Self::signal_and_wait(slot, libc::SIGKILL, Requested::Kill, KILL_DEADLINE).await {
            None | Some(true) => Ok(()),
            Some(false) => Err(DemoError::Stuck(format!(
                "region {} was sent SIGKILL but did not exit within {KILL_DEADLINE:?}",
                slot.name
            ))),
        }
    }

    /// SIGTERM, waits up to [`STOP_DEADLINE`] for a graceful exit, then SIGKILL. `Ok(true)`:
    /// it exited by itself (or was not running).
    async fn stop_slot(slot: &Slot) -> Result<bool, DemoError> {
        match Self::signal_and_wait(slot, libc::SIGTERM, Requested::Stop, STOP_DEADLINE).await {
            None | Some(true) => Ok(true),
            Some(false) => {
                Self::kill_slot(slot).await?;
                Ok(false)
            }
        }
    }

    pub async fn kill(&self, name: &str) -> Result<Value, DemoError> {
        let slot = self.lookup(name)?;
        let _op = slot.op.lock().await;
        Self::kill_slot(&slot).await?;
        Ok(slot.json())
    }

    pub async fn stop(&self, name: &str) -> Result<Value, DemoError> {
        let slot = self.lookup(name)?;
        let _op = slot.op.lock().await;
        Self::stop_slot(&slot).await?;
        Ok(slot.json())
    }

    /// Stops the region if it runs, then starts it again on the same data directory and links;
    /// answers once the new process listens.
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<Value, DemoError> {
        let slot = self.lookup(name)?;
        let _op = slot.op.lock().await;
        if slot.is_removed() {
            return Err(DemoError::RegionRemoved(format!(
                "region {name} was removed from the cluster: the demo's config has no table for it (it would not start) and the other regions refuse it (410 ATOLL-REGION-REMOVED), so it is not restarted"
            )));
        }
        Self::stop_slot(&slot).await?;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(DemoError::ShuttingDown);
        }
        let child = self
            .spawner
            .spawn(&slot.name, &slot.via)
            .await
            .map_err(|e| DemoError::StartFailed(format!("{e:#}")))?;
        slot.live().restarts += 1;
        self.clone().adopt(slot.clone(), child);
        if !self.shutting_down.load(Ordering::SeqCst) {
            println!("region {name} restarted");
        }
        Ok(slot.json())
    }

    /// Adds region `name` to the running demo (`atoll demo ctl add-region`): the spawner makes
    /// and starts it (ports, certificate, `[[regions]]` table with `voter = false`), it joins the
    /// supervisor and the discovery file, every other running region is reloaded (SIGHUP), and
    /// this waits up to [`ADMIT_DEADLINE`] until the new region says every region admitted it.
    pub async fn add(self: &Arc<Self>, name: &str) -> Result<Value, DemoError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(DemoError::ShuttingDown);
        }
        let id = RegionId::new(name)
            .map_err(|_| DemoError::InvalidName(format!("`{name}` is not a valid region name")))?;
        let _membership = self.membership.lock().await;
        if let Some(slot) = self.slot(name) {
            if slot.is_removed() {
                return Err(DemoError::RegionRemoved(format!(
                    "region {name} was removed from the cluster, and a removed region's name is never used again: its sequence numbers belong to the writes the cluster holds, and every region remembers the removal (they would refuse a config that lists {name} again)"
                )));
            }
            return Err(DemoError::RegionExists(name.to_string()));
        }
        let index = self.slots().len();
        let started = Instant::now();
        let added = self.spawner.add(&id, index).await?;
        let slot = Arc::new(Slot::new(name.to_string(), added.api.clone(), Vec::new()));
        {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if self.shutting_down.load(Ordering::SeqCst) {
                // Dropping the child kills it: the demo's shutdown would not know it.
                return Err(DemoError::ShuttingDown);
            }
            slots.push(slot.clone());
        }
        self.clone().adopt(slot.clone(), added.child);
        let mut notes = Vec::new();
        if let Err(e) = self.discover(name, &added.api) {
            notes.push(format!("the discovery file was not updated: {e:#}"));
        }
        // The new region started with the new config; every other one re-reads it. One that is
        // down reads it when restarted.
        let (mut reloaded, mut down) = (Vec::new(), Vec::new());
        for s in self.slots() {
            if s.name == name || s.is_removed() {
                continue;
            }
            if s.signal(libc::SIGHUP) {
                reloaded.push(s.name.clone());
            } else {
                down.push(s.name.clone());
            }
        }
        if let Err(waiting) = wait_admitted(&added.api, ADMIT_DEADLINE).await {
            let down = if down.is_empty() {
                String::new()
            } else {
                format!(
                    "; not running, so not reloaded: {} (a restart reads the new config: {})",
                    down.join(", "),
                    down.iter()
                        .map(|d| format!("`{}`", self.restart_command(d)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(DemoError::NotAdmitted(format!(
                "region {name} runs ({}) but was not admitted within {ADMIT_DEADLINE:?}: {waiting}{down}",
                added.api
            )));
        }
        let mut v = slot.json();
        if let Value::Object(m) = &mut v {
            m.extend(added.details);
            m.insert("reloaded".into(), json!(reloaded));
            m.insert(
                "admitted_after_ms".into(),
                json!(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
            );
            m.insert("notes".into(), json!(notes));
        }
        if !self.shutting_down.load(Ordering::SeqCst) {
            println!(
                "region {name} added ({}), admitted by every region after {:.1} s",
                added.api,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(v)
    }

    /// Removes region `name` from the running demo (`atoll demo ctl remove-region`): only a
    /// region added with `voter = false` (the founding regions are voters), and only while
    /// every other region runs (settling the removal needs each of them). It rewrites the
    /// demo's config without the region's table, reloads every other region (SIGHUP), and waits
    /// up to [`REMOVE_DEADLINE`] until each shows the region's writes settled
    /// (`membership.removed[].settled`). Any refusal changes nothing.
    ///
    /// The removed region's process is **kept running** (if it runs): a removed region that
    /// still runs is what a partitioned or forgotten one does in a real cluster, and the demo
    /// shows what it then does — it learns the removal from the `410` answers to its
    /// heartbeats, refuses writes (`410 ATOLL-REGION-REMOVED`), `/healthz` says `removed`, and
    /// it still serves reads of what it holds, so a user can look at it. It is no member any
    /// more: it is never reloaded, `restart` and `add` of its name are refused, the discovery
    /// file drops it, and `ls` marks it removed; `kill`/`stop` still work, and the demo's
    /// shutdown stops it with the rest.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<Value, DemoError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(DemoError::ShuttingDown);
        }
        let id = RegionId::new(name)
            .map_err(|_| DemoError::InvalidName(format!("`{name}` is not a valid region name")))?;
        let _membership = self.membership.lock().await;
        let slot = self.lookup(name)?;
        if slot.is_removed() {
            return Err(DemoError::RegionRemoved(format!(
                "region {name} was removed from the cluster already"
            )));
        }
        let _op = slot.op.lock().await;
        // Checks the config change first: a voter, or a change the regions would refuse.
        let edit = self.spawner.removal(&id)?;
        let remaining: Vec<Arc<Slot>> = self
            .slots()
            .into_iter()
            .filter(|s| s.name != name && !s.is_removed())
            .collect();
        let down: Vec<String> = remaining
            .iter()
            .filter(|s| s.live().state != RegionState::Running)
            .map(|s| s.name.clone())
            .collect();
        if !down.is_empty() {
            return Err(DemoError::RemoveRefused(format!(
                "{} not running: a removal settles only once every remaining region has removed {name} and holds as many of its writes, so start {} first ({})",
                if down.len() == 1 {
                    format!("region {} is", down[0])
                } else {
                    format!("regions {} are", down.join(", "))
                },
                if down.len() == 1 { "it" } else { "them" },
                down.iter()
                    .map(|d| format!("`{}`", self.restart_command(d)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(DemoError::ShuttingDown);
        }
        let started = Instant::now();
        edit.apply()?;
        // From here on the removal is made: the regions remember it durably once they reload.
        slot.removed.store(true, Ordering::SeqCst);
        let mut notes = Vec::new();
        if let Err(e) = self.undiscover(name) {
            notes.push(format!("the discovery file was not updated: {e:#}"));
        }
        let (mut reloaded, mut missed) = (Vec::new(), Vec::new());
        let mut apis = Vec::new();
        for s in &remaining {
            if s.signal(libc::SIGHUP) {
                reloaded.push(s.name.clone());
            } else {
                missed.push(s.name.clone());
            }
            apis.push((s.name.clone(), s.api.clone()));
        }
        if !missed.is_empty() {
            notes.push(format!(
                "not running when reloaded: {} (a restart reads the new config and removes {name} then)",
                missed.join(", ")
            ));
        }
        let until = started + REMOVE_DEADLINE;
        let settled = wait_settled(&apis, name, until)
            .await
            .map_err(|waiting| {
                DemoError::NotSettled(format!(
                    "region {name} is removed (the demo's config no longer lists it; reloaded on SIGHUP: {}) but not every region shows its writes settled within {REMOVE_DEADLINE:?}: {waiting}",
                    reloaded.join(", ")
                ))
            })?;
        let settled_after = started.elapsed();
        // What the removed region itself says, if it runs: it learns from the 410 answers to its
        // next heartbeats (within a heartbeat interval or two).
        let runs = slot.live().state == RegionState::Running;
        let (told, health) = if runs {
            match wait_told(&slot.api, Instant::now() + TOLD_DEADLINE).await {
                Ok(by) => (by, healthz(&slot.api).await),
                Err(last) => {
                    notes.push(format!(
                        "{name} runs but has not learnt it was removed yet ({last}): its next heartbeat is answered 410 ATOLL-REGION-REMOVED"
                    ));
                    (Value::Null, healthz(&slot.api).await)
                }
            }
        } else {
            (Value::Null, Value::Null)
        };
        let held = settled.first().map(|(_, n)| *n);
        let mut v = slot.json();
        if let Value::Object(m) = &mut v {
            m.insert("config".into(), json!(edit.path.display().to_string()));
            m.insert("reloaded".into(), json!(reloaded));
            m.insert(
                "settled_after_ms".into(),
                json!(u64::try_from(settled_after.as_millis()).unwrap_or(u64::MAX)),
            );
            m.insert(
                "settled".into(),
                json!(
                    settled
                        .iter()
                        .map(|(r, n)| json!({"region": r, "applied_seq": n}))
                        .collect::<Vec<_>>()
                ),
            );
            m.insert("held".into(), json!(held));
            m.insert("kept_running".into(), json!(runs));
            m.insert("removed_by".into(), told);
            m.insert("healthz".into(), health);
            m.insert("notes".into(), json!(notes));
        }
        if !self.shutting_down.load(Ordering::SeqCst) {
            println!(
                "region {name} removed, settled at every region after {:.1} s{}",
                settled_after.as_secs_f64(),
                if runs {
                    " (its process keeps running, refusing writes: `atoll demo ctl ls` marks it removed)"
                } else {
                    ""
                }
            );
        }
        Ok(v)
    }

    fn lookup(&self, name: &str) -> Result<Arc<Slot>, DemoError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(DemoError::ShuttingDown);
        }
        self.slot(name)
            .ok_or_else(|| DemoError::UnknownRegion(name.to_string()))
    }

    /// The demo's shutdown: every region that runs gets SIGTERM and up to [`STOP_DEADLINE`];
    /// regions that are down are skipped. A region is reported unclean if it did not exit 0
    /// after SIGTERM, or if it was down because it had exited unexpectedly and was never
    /// restarted; a region the control API killed or stopped is not.
    pub async fn shutdown(&self) -> Vec<StopReport> {
        self.shutting_down.store(true, Ordering::SeqCst);
        let mut reports = Vec::new();
        // `add` appends a slot only while the demo is not shutting down (checked under the same
        // lock): this list has every region that will ever run.
        for slot in self.slots() {
            // Wait for a control operation in flight (a restart) to finish first.
            let _op = slot.op.lock().await;
            let before = slot.live().state;
            if before != RegionState::Running {
                let l = slot.live();
                reports.push(StopReport {
                    name: slot.name.clone(),
                    // A removed region is never restarted: its exit is no fault of the demo's.
                    clean: before != RegionState::Exited || slot.is_removed(),
                    detail: match before {
                        RegionState::Exited if slot.is_removed() => format!(
                            "removed from the cluster; its process had exited ({})",
                            l.exit.as_deref().unwrap_or("?")
                        ),
                        RegionState::Exited => format!(
                            "had exited unexpectedly ({}) and was not restarted",
                            l.exit.as_deref().unwrap_or("?")
                        ),
                        _ => "was down (killed or stopped on request)".to_string(),
                    },
                });
                continue;
            }
            let report = match Self::stop_slot(&slot).await {
                Ok(true) => {
                    let exit = slot.live().exit.clone().unwrap_or_default();
                    StopReport {
                        name: slot.name.clone(),
                        clean: exit == "exit code 0",
                        detail: exit,
                    }
                }
                Ok(false) => StopReport {
                    name: slot.name.clone(),
                    clean: false,
                    detail: format!("did not stop within {STOP_DEADLINE:?}; killed"),
                },
                Err(e) => StopReport {
                    name: slot.name.clone(),
                    clean: false,
                    detail: e.to_string(),
                },
            };
            reports.push(report);
        }
        reports
    }
}

/// Polls `<api>/v1/status` until its `membership.admitted` is true, or `deadline` passes: then
/// `Err` says what it last said it waits for.
async fn wait_admitted(api: &str, deadline: Duration) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + deadline;
    loop {
        let last = match http.get(format!("{api}/v1/status")).send().await {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(status) => {
                    let m = &status["membership"];
                    if m["admitted"] == true {
                        return Ok(());
                    }
                    let waiting: Vec<&str> = m["waiting_for"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if waiting.is_empty() {
                        "it says it is not admitted yet".to_string()
                    } else {
                        format!("it waits for {} to admit it", waiting.join(", "))
                    }
                }
                Err(e) => format!("its /v1/status answered no JSON: {e}"),
            },
            Err(e) => format!("its /v1/status did not answer: {e}"),
        };
        if Instant::now() >= until {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls every region of `regions` (`(name, api)`) until each one's `/v1/status` shows `name` in
/// `membership.removed` with `settled: true`, or `until` passes: `Ok` has how many of `name`'s
/// writes each holds (`applied_seq`), `Err` says what those not there yet said last.
async fn wait_settled(
    regions: &[(String, String)],
    name: &str,
    until: Instant,
) -> Result<Vec<(String, u64)>, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let mut done: Vec<Option<u64>> = vec![None; regions.len()];
    let mut last: Vec<String> = vec![String::new(); regions.len()];
    loop {
        for (i, (region, api)) in regions.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            last[i] = match http.get(format!("{api}/v1/status")).send().await {
                Ok(resp) => match resp.json::<Value>().await {
                    Ok(status) => {
                        let entry = status["membership"]["removed"]
                            .as_array()
                            .and_then(|a| a.iter().find(|r| r["region"] == name));
                        match entry {
                            None => format!("{region} has not removed {name} yet"),
                            Some(r) if r["settled"] == true => {
                                done[i] = Some(r["applied_seq"].as_u64().unwrap_or(0));
                                String::new()
                            }
                            Some(r) => {
                                let waiting: Vec<&str> = r["waiting_for"]
                                    .as_array()
                                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                                    .unwrap_or_default();
                                format!(
                                    "{region} removed it ({}) and waits for {}",
                                    if r["effective"] == true {
                                        "in effect"
                                    } else {
                                        "not in effect yet"
                                    },
                                    if waiting.is_empty() {
                                        "nothing it names".to_string()
                                    } else {
                                        waiting.join(", ")
                                    }
                                )
                            }
                        }
                    }
                    Err(e) => format!("{region}'s /v1/status answered no JSON: {e}"),
                },
                Err(e) => format!("{region}'s /v1/status did not answer: {e}"),
            };
        }
        if done.iter().all(Option::is_some) {
            return Ok(regions
                .iter()
                .zip(&done)
                .map(|((r, _), n)| (r.clone(), n.unwrap_or(0)))
                .collect());
        }
        if Instant::now() >= until {
            return Err(last
                .into_iter()
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the removed region's `/v1/status` until its `membership.removed_by` shows it learnt it
/// was removed (that object), or `until` passes: `Err` says what it said last.
async fn wait_told(api: &str, until: Instant) -> Result<Value, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    loop {
        let last = match http.get(format!("{api}/v1/status")).send().await {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(status) => {
                    let by = &status["membership"]["removed_by"];
                    if by.is_object() {
                        return Ok(by.clone());
                    }
                    "its /v1/status shows no membership.removed_by yet".to_string()
                }
                Err(e) => format!("its /v1/status answered no JSON: {e}"),
            },
            Err(e) => format!("its /v1/status did not answer: {e}"),
        };
        if Instant::now() >= until {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `<api>/healthz` answers: `{"code": HTTP status, "status": its `status` field}`, or null
/// if it does not answer.
async fn healthz(api: &str) -> Value {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return Value::Null;
    };
    let Ok(resp) = http.get(format!("{api}/healthz")).send().await else {
        return Value::Null;
    };
    let code = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    json!({"code": code, "status": body["status"]})
}

// ---------------------------------------------------------------------------------------------
// The control API.

/// Errors of the control API, answered in atoll's error body
/// (`{"error": {"code", "message", "hint", "retryable"}}`) with stable codes.
#[derive(Debug)]
pub enum DemoError {
    Unauthorized,
    UnknownRegion(String),
    NoSuchRoute(String),
    StartFailed(String),
    Stuck(String),
    ShuttingDown,
    /// `add`: not a valid region name (why).
    InvalidName(String),
    /// `add`: the demo runs a region of that name.
    RegionExists(String),
    /// `add`: the region cannot be added (why); nothing was changed.
    AddRefused(String),
    /// `add`: the region runs but was not admitted in time (what it waits for).
    NotAdmitted(String),
    /// `remove`: the region cannot be removed (why); nothing was changed.
    RemoveRefused(String),
    /// `restart`, `add`, `remove` of a region removed from the cluster (what was asked).
    RegionRemoved(String),
    /// `remove`: the region is removed but not every region shows it settled in time (what
    /// they wait for).
    NotSettled(String),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized => write!(
                f,
                "unauthorized: the demo control API needs `Authorization: Bearer <token>` with the demo's admin token"
            ),
            Self::UnknownRegion(r) => write!(f, "the demo runs no region `{r}`"),
            Self::NoSuchRoute(p) => write!(f, "no such route: {p}"),
            Self::StartFailed(e) => write!(f, "cannot start the region: {e}"),
            Self::Stuck(e) => write!(f, "{e}"),
            Self::ShuttingDown => write!(f, "the demo is shutting down"),
            Self::InvalidName(e) => write!(f, "{e}"),
            Self::RegionExists(r) => write!(f, "the demo runs a region `{r}` already"),
            Self::AddRefused(e) => write!(f, "cannot add the region: {e}"),
            Self::NotAdmitted(e) => write!(f, "{e}"),
            Self::RemoveRefused(e) => write!(f, "cannot remove the region: {e}"),
            Self::RegionRemoved(e) => write!(f, "{e}"),
            Self::NotSettled(e) => write!(f, "{e}"),
        }
    }
}

impl DemoError {
    fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "ATOLL-UNAUTHORIZED",
            Self::UnknownRegion(_) => "ATOLL-UNKNOWN-REGION",
            Self::NoSuchRoute(_) => "ATOLL-BAD-REQUEST",
            Self::StartFailed(_) => "ATOLL-REGION-START-FAILED",
            Self::Stuck(_) => "ATOLL-REGION-STUCK",
            Self::ShuttingDown => "ATOLL-SHUTTING-DOWN",
            Self::InvalidName(_) => "ATOLL-BAD-REQUEST",
            Self::RegionExists(_) => "ATOLL-REGION-EXISTS",
            Self::AddRefused(_) => "ATOLL-ADD-REFUSED",
            Self::NotAdmitted(_) => "ATOLL-NOT-ADMITTED",
            Self::RemoveRefused(_) => "ATOLL-REMOVE-REFUSED",
            Self::RegionRemoved(_) => "ATOLL-REGION-REMOVED",
            Self::NotSettled(_) => "ATOLL-NOT-SETTLED",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnknownRegion(_) | Self::NoSuchRoute(_) => StatusCode::NOT_FOUND,
            Self::StartFailed(_) | Self::Stuck(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidName(_) => StatusCode::BAD_REQUEST,
            Self::RegionExists(_)
            | Self::AddRefused(_)
            | Self::RemoveRefused(_)
            | Self::RegionRemoved(_) => StatusCode::CONFLICT,
            Self::NotAdmitted(_) | Self::NotSettled(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn hint(&self) -> &'static str {
        match self {
            Self::Unauthorized => {
                "the token is in the demo's discovery file (${TMPDIR:-/tmp}/atoll-demo-<port-base>.json); `atoll demo ctl` sends it for you"
            }
            Self::UnknownRegion(_) => "GET /v1/demo/regions lists the demo's regions",
            Self::NoSuchRoute(_) => {
                "the routes are GET /v1/demo/regions and POST /v1/demo/regions/{name}/kill|stop|restart|add|remove"
            }
            Self::StartFailed(_) => {
                "see the region's log in the demo's data directory (<data-dir>/<region>.log)"
            }
            Self::Stuck(_) => "check the process by hand; the demo kills it on exit",
            Self::ShuttingDown => "start the demo again",
            Self::InvalidName(_) => {
                "a region name is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
            }
            Self::RegionExists(_) => {
                "GET /v1/demo/regions lists the demo's regions; add one under another name"
            }
            Self::AddRefused(_) => "nothing was changed; the demo runs as before",
            Self::NotAdmitted(_) => {
                "the region runs and is supervised (`atoll demo ctl ls`); its GET /v1/status shows membership.waiting_for, and it takes writes once every region has admitted it"
            }
            Self::RemoveRefused(_) => "nothing was changed; the demo runs as before",
            Self::RegionRemoved(_) => {
                "a removed region's name is never reused (docs/design/region-removal.md); add a replacement under a new name (`atoll demo ctl add-region NAME`)"
            }
            Self::NotSettled(_) => {
                "the removal is made and is not undone; each region's GET /v1/status shows membership.removed[].waiting_for (alert AtollRemovedRegionNotSettled after an hour)"
            }
        }
    }
}

impl IntoResponse for DemoError {
    fn into_response(self) -> Response {
        let body = atoll_core::ErrorBody::new(
            self.code(),
            self.to_string(),
            self.hint(),
            matches!(self, Self::Stuck(_)),
        );
        (self.status(), axum::Json(body)).into_response()
    }
}

struct Control {
    regions: Arc<Regions>,
    token: String,
}

/// Compares the presented bearer token with the demo's in constant time: every byte of the
/// longer of the two is looked at, with no early exit.
fn token_matches(presented: &str, want: &str) -> bool {
    let (a, b) = (presented.as_bytes(), want.as_bytes());
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

async fn authorize(State(c): State<Arc<Control>>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(t) if token_matches(t, &c.token) => next.run(req).await,
        _ => DemoError::Unauthorized.into_response(),
    }
}

async fn list(State(c): State<Arc<Control>>) -> Response {
    axum::Json(c.regions.json()).into_response()
}

async fn kill(State(c): State<Arc<Control>>, UrlPath(name): UrlPath<String>) -> Response {
    match c.regions.kill(&name).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn stop(State(c): State<Arc<Control>>, UrlPath(name): UrlPath<String>) -> Response {
    match c.regions.stop(&name).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn restart(State(c): State<Arc<Control>>, UrlPath(name): UrlPath<String>) -> Response {
    match c.regions.restart(&name).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn add(State(c): State<Arc<Control>>, UrlPath(name): UrlPath<String>) -> Response {
    match c.regions.add(&name).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove(State(c): State<Arc<Control>>, UrlPath(name): UrlPath<String>) -> Response {
    match c.regions.remove(&name).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    DemoError::NoSuchRoute(uri.path().to_string()).into_response()
}

/// The control API's routes; every request needs the token (401 before routing otherwise).
fn router(regions: Arc<Regions>, token: String) -> Router {
    let c = Arc::new(Control { regions, token });
    Router::new()
        .route("/v1/demo/regions", get(list))
        .route("/v1/demo/regions/{name}/kill", post(kill))
        .route("/v1/demo/regions/{name}/stop", post(stop))
        .route("/v1/demo/regions/{name}/restart", post(restart))
        .route("/v1/demo/regions/{name}/add", post(add))
        .route("/v1/demo/regions/{name}/remove", post(remove))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(c.clone(), authorize))
        .with_state(c)
}

/// The running control API; [`ControlServer::shutdown`] stops it.
pub struct ControlServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    pub async fn start(
        addr: SocketAddr,
        regions: Arc<Regions>,
        token: String,
    ) -> Result<ControlServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (the demo's control API)"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(regions, token);
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the demo's control API failed");
            }
        });
        Ok(ControlServer {
            addr,
            stop: Some(stop),
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops taking requests; requests in flight get up to 5 s.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `atoll demo ctl`.

/// What `atoll demo ctl` does.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CtlAction {
    /// List the demo's regions: state, pid, restarts, last exit, and whether each is a member of
    /// the cluster or was removed (remove-region).
    Ls,
    /// Kill REGION's process (SIGKILL), as a crash would.
    Kill { region: String },
    /// Stop REGION gracefully (SIGTERM; killed if it has not exited after 20 s).
    Stop { region: String },
    /// Start REGION again on its data directory and links (stopping it first if it runs).
    Restart { region: String },
    /// Add a region NAME to the running demo (a replica, voter = false), and wait until every
    /// region has admitted it.
    #[command(
        after_help = "Example:\n  atoll demo ctl add-region sa-east-1\n\nThe region gets the next ports of the demo's scheme (region i: client API <port-base + i>,\nRESP <port-base + 10 + i>, peer <port-base + 100 + i>; at most 10 regions), a certificate\nfrom the demo's CA, and a [[regions]] table with voter = false (and the location of the\ncloud region of that name, if atoll knows it) appended to the demo's config. The demo starts\nit with an empty data directory, reloads every running region (SIGHUP), and answers once the\nnew region is admitted (at most 60 s): then it takes writes to the eventual keyspaces, and\nrefuses what needs a consensus group (ATOLL-NOT-A-VOTER). It talks to the other regions\ndirectly, not through atoll link (no emulated latency, link faults do not reach it), and the\nrouter keeps the regions it started with. Active-active only."
    )]
    AddRegion { name: String },
    /// Remove region NAME, one added with add-region (voter = false), from the running demo, and
    /// wait until every remaining region shows its writes settled.
    #[command(
        after_help = "Example:\n  atoll demo ctl remove-region sa-east-1\n\nOnly a region added with add-region (voter = false) can be removed while the cluster runs:\nthe founding regions are voters of the control group and the strong group, whose members do\nnot change at run time. Every other region must be running. The demo rewrites its config\nwithout the region's [[regions]] table, reloads every other region (SIGHUP), and answers once\neach of them shows the region's writes settled (at most 60 s), with how many of them the\ncluster holds. The removed region's process keeps running, so you can see what a removed\nregion does: it learns the removal from the answers to its heartbeats, refuses writes (410\nATOLL-REGION-REMOVED), /healthz says removed, and it still serves reads. `atoll demo ctl ls`\nmarks it removed; it is never restarted, `stop` ends it, and its name cannot be added again\n(docs/design/region-removal.md)."
    )]
    RemoveRegion { name: String },
}

/// `atoll demo ctl`: the demo control API, found through the discovery file.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
#[command(
    after_help = "Examples:\n  atoll demo ctl ls\n  atoll demo ctl kill us-east-1\n  atoll demo ctl restart us-east-1 --port-base 8100\n  atoll demo ctl add-region sa-east-1\n  atoll demo ctl remove-region sa-east-1\n\nReads ${TMPDIR:-/tmp}/atoll-demo-<port-base>.json, which the running demo writes (with its\ncontrol address and admin token)."
)]
pub struct CtlArgs {
    #[command(subcommand)]
    pub action: CtlAction,
    /// The port base of the demo to control.
    #[arg(long, global = true, default_value_t = DEFAULT_PORT_BASE)]
    pub port_base: u16,
}

/// Runs `atoll demo ctl`.
pub async fn ctl(args: CtlArgs) -> Result<()> {
    let d = read_discovery(args.port_base)?;
    let http = reqwest::Client::builder()
        // A stop waits up to 20 s and then kills; a restart waits for the region to listen; an
        // add for that and then for the admission (up to ADMIT_DEADLINE).
        .timeout(match args.action {
            CtlAction::AddRegion { .. } => ADMIT_DEADLINE + Duration::from_secs(60),
            // A remove waits for the settling, then for the removed region to learn it.
            CtlAction::RemoveRegion { .. } => REMOVE_DEADLINE + Duration::from_secs(60),
            _ => Duration::from_secs(60),
        })
        .build()?;
    let (method, path, verb) = match &args.action {
        CtlAction::Ls => (reqwest::Method::GET, "/v1/demo/regions".to_string(), ""),
        CtlAction::Kill { region } => (reqwest::Method::POST, action_path(region, "kill"), "kill"),
        CtlAction::Stop { region } => (reqwest::Method::POST, action_path(region, "stop"), "stop"),
        CtlAction::Restart { region } => (
            reqwest::Method::POST,
            action_path(region, "restart"),
            "restart",
        ),
        CtlAction::AddRegion { name } => (reqwest::Method::POST, action_path(name, "add"), "add"),
        CtlAction::RemoveRegion { name } => {
            (reqwest::Method::POST, action_path(name, "remove"), "remove")
        }
    };
    let resp = http
        .request(method, format!("{}{path}", d.control))
        .bearer_auth(&d.token)
        .send()
        .await
        .with_context(|| format!("cannot reach the demo's control API at {}", d.control))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .context("the demo's control API answered no JSON")?;
    if !status.is_success() {
        let e = &body["error"];
        bail!(
            "{} ({}): {}",
            e["message"].as_str().unwrap_or("request refused"),
            e["code"].as_str().unwrap_or("?"),
            e["hint"].as_str().unwrap_or("")
        );
    }
    match args.action {
        CtlAction::Ls => print!("{}", describe_list(&body)),
        CtlAction::AddRegion { .. } => print!("{}", describe_added(&body, &d)),
        CtlAction::RemoveRegion { .. } => print!("{}", describe_removed(&body, &d)),
        _ => println!(
            "{verb}: region {} is {}{}",
            body["name"].as_str().unwrap_or("?"),
            body["state"].as_str().unwrap_or("?"),
            match (body["pid"].as_u64(), body["exit"].as_str()) {
                (Some(pid), _) => format!(" (pid {pid})"),
                (None, Some(exit)) => format!(" ({exit})"),
                _ => String::new(),
            }
        ),
    }
    Ok(())
}

/// What `atoll demo ctl ls` prints: a row per region (`cluster` says `member`, or `removed` for
/// a region `remove-region` took out), and a line on what a removed region is.
fn describe_list(list: &Value) -> String {
    let mut out = format!(
        "{:<16} {:<8} {:>8} {:>8}  {:<24} {:<8} api\n",
        "region", "state", "pid", "restarts", "last exit", "cluster"
    );
    let mut removed = Vec::new();
    for r in list["regions"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or("?");
        let gone = r["removed"] == true;
        if gone {
            removed.push(name);
        }
        out += &format!(
            "{:<16} {:<8} {:>8} {:>8}  {:<24} {:<8} {}\n",
            name,
            r["state"].as_str().unwrap_or("?"),
            r["pid"]
                .as_u64()
                .map_or_else(|| "-".to_string(), |p| p.to_string()),
            r["restarts"].as_u64().unwrap_or(0),
            r["exit"].as_str().unwrap_or("-"),
            if gone { "removed" } else { "member" },
            r["api"].as_str().unwrap_or("?"),
        );
    }
    if !removed.is_empty() {
        out += &format!(
            "\nremoved from the cluster (remove-region): {}. If its process runs it refuses writes (410\nATOLL-REGION-REMOVED) and /healthz says removed; it is never restarted, and its name cannot be\nadded again.\n",
            removed.join(", ")
        );
    }
    out
}

/// What `atoll demo ctl remove-region` prints: the control API's answer `removed` in words
/// (settled where and when, how many of its writes the cluster holds, what the removed region
/// now answers), and commands to try that work as printed.
fn describe_removed(removed: &Value, d: &Discovery) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let name = s(&removed["name"]);
    let api = s(&removed["api"]);
    let pb = port_base_flag(d.port_base);
    let settled: Vec<(String, u64)> = removed["settled"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (s(&r["region"]), r["applied_seq"].as_u64().unwrap_or(0)))
        .collect();
    let regions = settled
        .iter()
        .map(|(r, _)| r.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = format!(
        "removed region {name}: settled at every region after {:.1} s ({regions})\n",
        removed["settled_after_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
    );
    out += &format!(
        "  config      {} ([[regions]] table of {name} removed; reloaded on SIGHUP: {})\n",
        s(&removed["config"]),
        removed["reloaded"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    match settled.first() {
        Some((at, held)) => {
            let same = settled.iter().all(|(_, n)| n == held);
            out += &format!(
                "  its writes  the cluster holds {held} of them (membership.removed[].applied_seq at {at}{})\n",
                if same {
                    ", the same at every region"
                } else {
                    ""
                }
            );
        }
        None => out += "  its writes  no region reported how many it holds\n",
    }
    out += "  its name    cannot be added again: a removed region's name is never reused (add a\n              replacement under a new name)\n";
    let by = &removed["removed_by"];
    if removed["kept_running"] == true {
        out += &format!(
            "\n{name} keeps running (pid {}, {api}) so you can see what a removed region does:\n",
            removed["pid"]
                .as_u64()
                .map_or_else(|| "?".to_string(), |p| p.to_string())
        );
        if by.is_object() {
            out += &format!(
                "  it learnt it  from the 410 answers to its heartbeats (first from {})\n  writes        refused: 410 ATOLL-REGION-REMOVED\n  its own       {} of its writes no member holds (kept in its data directory, never\n                replicated)\n",
                s(&by["by"]),
                by["unreplicated_writes"].as_u64().unwrap_or(0)
            );
        } else {
            out += "  it learnt it  not yet: its next heartbeat is answered 410 ATOLL-REGION-REMOVED, and\n                from then on it refuses writes (410)\n";
        }
        let health = &removed["healthz"];
        match (health["code"].as_u64(), health["status"].as_str()) {
            (Some(code), Some(status)) => {
                out += &format!(
                    "  /healthz      {code} {status} (routers take it out); reads are still served\n"
                );
            }
            _ => out += "  /healthz      did not answer\n",
        }
        out += &format!(
            "  the demo      no longer reloads or restarts it; `atoll demo ctl stop {name}{pb}` ends it\n"
        );
    } else {
        out += &format!(
            "\n{name} is not running ({}); a removed region is not restarted\n",
            s(&removed["state"])
        );
    }
    for note in removed["notes"].as_array().into_iter().flatten() {
        out += &format!("note: {}\n", note.as_str().unwrap_or_default());
    }
    let first = d.regions.first().map(|r| r.api.as_str()).unwrap_or("?");
    out += &format!("\nTry:\n  atoll status --endpoint {first}   # membership.removed\n");
    if removed["kept_running"] == true {
        out += &format!(
            "  atoll status --endpoint {api}   # membership.removed_by\n  atoll kv put sessions after-removal x --endpoint {api}   # refused: 410\n  atoll kv get sessions from-{name} --endpoint {api}   # reads still served\n  curl -s {api}/healthz\n"
        );
    }
    out += &format!("  atoll demo ctl ls{pb}\n");
    out
}

/// What `atoll demo ctl add-region` prints: the control API's answer `added` in words, and
/// commands to try that work as printed.
fn describe_added(added: &Value, d: &Discovery) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let name = s(&added["name"]);
    let api = s(&added["api"]);
    let pb = port_base_flag(d.port_base);
    let mut out = format!(
        "added region {name} in {:.1} s: every region admitted it (reloaded on SIGHUP: {})\n",
        added["admitted_after_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        list(&added["reloaded"])
    );
    out += &format!("  client API  {api}\n");
    if let Some(resp) = added["resp"].as_str() {
        out += &format!("  RESP        {resp}\n");
    }
    out += &format!(
        "  peer        {} (mutual TLS; certificate {} from the demo's CA)\n",
        s(&added["peer"]),
        s(&added["certificate"])
    );
    out += &format!(
        "  config      {} ([[regions]] table appended, voter = false)\n",
        s(&added["config"])
    );
    out += &format!(
        "  data, log   {}, {}\n",
        s(&added["data_dir"]),
        s(&added["log"])
    );
    if added["location"].is_null() {
        out += &format!("  location    none (atoll knows no cloud region named {name})\n");
    }
    out += &format!(
        "\n{name} is a replica (voter = false):\n  writes taken     {}\n  refused          writes to {} and strong reads: they need a consensus\n                   group of the voters {} (ATOLL-NOT-A-VOTER)\n  between regions  directly, not through atoll link: no emulated latency, and link faults\n                   do not cut its connections\n  router           keeps the regions it started with (its proxy and DNS do not send to {name})\n",
        list(&added["writes"]),
        list(&added["refused"]),
        list(&added["voters"])
    );
    for note in added["notes"].as_array().into_iter().flatten() {
        out += &format!("note: {}\n", note.as_str().unwrap_or_default());
    }
    let first = d.regions.first().map(|r| r.api.as_str()).unwrap_or("?");
    out += &format!(
        "\nTry:\n  atoll kv put sessions from-{name} hello --endpoint {api}\n  atoll kv get sessions from-{name} --endpoint {first}\n"
    );
    if let Some(port) = added["resp"].as_str().and_then(|r| r.rsplit(':').next()) {
        out += &format!("  redis-cli -p {port} GET sessions:from-{name}\n");
    }
    out += &format!(
        "  atoll status --endpoint {api}\n  atoll demo ctl ls{pb}\n  atoll demo ctl restart {name}{pb}\n"
    );
    out
}

fn action_path(region: &str, action: &str) -> String {
    let name: String =
        percent_encoding::utf8_percent_encode(region, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    format!("/v1/demo/regions/{name}/{action}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("demo-0123", "demo-0123"));
        assert!(!token_matches("demo-0124", "demo-0123"));
        assert!(!token_matches("demo-012", "demo-0123"));
        assert!(!token_matches("demo-01234", "demo-0123"));
        assert!(!token_matches("", "demo-0123"));
    }

    #[test]
    fn a_discovery_file_of_a_dead_demo_is_stale_and_one_of_a_live_demo_is_not() {
        // The pid of this test process is alive; pid 0 and one past pid_max never are.
        assert!(pid_alive(u64::from(std::process::id())));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u64::from(u32::MAX)));
    }

    fn discovery(pid: u32) -> Discovery {
        Discovery {
            version: DISCOVERY_VERSION,
            port_base: 9100,
            pid,
            data_dir: "/d".into(),
            config: "/d/atoll.toml".into(),
            token: "demo-1".into(),
            model: "active-active".into(),
            control: "http://127.0.0.1:9191".into(),
            router_admin: "http://127.0.0.1:9181".into(),
            proxy: "http://127.0.0.1:9180".into(),
            link_control: "http://127.0.0.1:9190".into(),
            regions: vec![DiscoveryRegion {
                name: "us-east-1".into(),
                api: "http://127.0.0.1:9100".into(),
            }],
        }
    }

    #[test]
    fn the_discovery_file_is_private_refuses_a_live_owner_and_goes_away() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("atoll-demo-9100.json");
        // A stale file (its demo is gone) is replaced.
        std::fs::write(&path, r#"{"version":1,"pid":4294967295}"#).unwrap();
        let mut f = DiscoveryFile::claim_at(path.clone(), 9100).unwrap();
        let d = discovery(std::process::id());
        f.write(&d).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back: Discovery =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, d);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        // No temporary file is left next to it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A file naming a live process (pid 1, always there) is refused.
        let other = dir.path().join("atoll-demo-9200.json");
        std::fs::write(&other, r#"{"version":1,"pid":1}"#).unwrap();
        let e = DiscoveryFile::claim_at(other, 9200).err().unwrap();
        assert!(
            e.to_string().contains("already runs on port base 9200"),
            "{e}"
        );
        drop(f);
        assert!(!path.exists(), "the file outlived its demo");
    }

    /// What `atoll demo ctl add-region` prints says where the region is and what it is, and the
    /// atoll commands it suggests parse, on the demo's port base.
    #[test]
    fn the_added_region_is_described_with_commands_that_parse() {
        use clap::Parser as _;
        let added = json!({
            "name": "sa-east-1",
            "api": "http://127.0.0.1:9103",
            "state": "running",
            "resp": "127.0.0.1:9113",
            "peer": "127.0.0.1:9203",
            "location": {"lat": -23.5, "lon": -46.6},
            "certificate": "/d/certs/sa-east-1.pem",
            "config": "/d/atoll.toml",
            "data_dir": "/d/sa-east-1",
            "log": "/d/sa-east-1.log",
            "writes": ["sessions", "flags"],
            "refused": ["seats"],
            "voters": ["us-east-1", "eu-west-1", "ap-southeast-1"],
            "reloaded": ["us-east-1", "eu-west-1", "ap-southeast-1"],
            "admitted_after_ms": 1234,
            "notes": [],
        });
        let d = discovery(std::process::id());
        let text = describe_added(&added, &d);
        for needle in [
            "added region sa-east-1 in 1.2 s: every region admitted it (reloaded on SIGHUP: us-east-1, eu-west-1, ap-southeast-1)",
            "client API  http://127.0.0.1:9103",
            "RESP        127.0.0.1:9113",
            "peer        127.0.0.1:9203 (mutual TLS; certificate /d/certs/sa-east-1.pem",
            "writes taken     sessions, flags",
            "refused          writes to seats",
            "directly, not through atoll link",
            "redis-cli -p 9113 GET sessions:from-sa-east-1",
            "atoll kv get sessions from-sa-east-1 --endpoint http://127.0.0.1:9100",
            "atoll demo ctl ls --port-base 9100",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
        assert!(!text.contains("location"), "{text}");
        let tries: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Try:")
            .skip(1)
            .map(str::trim)
            .filter(|l| l.starts_with("atoll "))
            .collect();
        assert_eq!(tries.len(), 5, "{text}");
        for line in tries {
            crate::Cli::try_parse_from(line.split_whitespace())
                .unwrap_or_else(|e| panic!("`{line}` does not parse: {e}"));
        }
    }

    /// What `atoll demo ctl remove-region` prints says it settled, how many of the region's
    /// writes the cluster holds, what the removed region now answers and that its name is not
    /// reused; the atoll commands it suggests parse, on the demo's port base.
    #[test]
    fn the_removed_region_is_described_with_commands_that_parse() {
        use clap::Parser as _;
        let removed = json!({
            "name": "sa-east-1",
            "api": "http://127.0.0.1:9103",
            "state": "running",
            "pid": 4242,
            "exit": null,
            "restarts": 0,
            "removed": true,
            "config": "/d/atoll.toml",
            "reloaded": ["us-east-1", "eu-west-1", "ap-southeast-1"],
            "settled_after_ms": 2345,
            "settled": [
                {"region": "us-east-1", "applied_seq": 12},
                {"region": "eu-west-1", "applied_seq": 12},
                {"region": "ap-southeast-1", "applied_seq": 12},
            ],
            "held": 12,
            "kept_running": true,
            "removed_by": {"by": "eu-west-1", "at_ms": 1, "held_by_members": 12, "unreplicated_writes": 0},
            "healthz": {"code": 503, "status": "removed"},
            "notes": [],
        });
        let d = discovery(std::process::id());
        let text = describe_removed(&removed, &d);
        for needle in [
            "removed region sa-east-1: settled at every region after 2.3 s (us-east-1, eu-west-1, ap-southeast-1)",
            "reloaded on SIGHUP: us-east-1, eu-west-1, ap-southeast-1",
            "the cluster holds 12 of them (membership.removed[].applied_seq at us-east-1, the same at every region)",
            "cannot be added again",
            "sa-east-1 keeps running (pid 4242, http://127.0.0.1:9103)",
            "first from eu-west-1",
            "refused: 410 ATOLL-REGION-REMOVED",
            "/healthz      503 removed",
            "atoll demo ctl stop sa-east-1 --port-base 9100",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
        let tries = |text: &str| -> Vec<String> {
            text.lines()
                .skip_while(|l| *l != "Try:")
                .skip(1)
                .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
                .filter(|l| l.starts_with("atoll "))
                .collect()
        };
        let lines = tries(&text);
        assert_eq!(lines.len(), 5, "{text}");
        for line in lines {
            crate::Cli::try_parse_from(line.split_whitespace())
                .unwrap_or_else(|e| panic!("`{line}` does not parse: {e}"));
        }
        // A removed region that was not running is said to be so, and not suggested.
        let mut down = removed.clone();
        down["kept_running"] = json!(false);
        down["state"] = json!("killed");
        down["removed_by"] = Value::Null;
        down["healthz"] = Value::Null;
        let text = describe_removed(&down, &d);
        assert!(
            text.contains("sa-east-1 is not running (killed); a removed region is not restarted"),
            "{text}"
        );
        assert!(!text.contains("--endpoint http://127.0.0.1:9103"), "{text}");
        assert_eq!(tries(&text).len(), 2, "{text}");
    }

    /// `atoll demo ctl ls` marks a removed region, in a column of its own (the api stays last).
    #[test]
    fn ls_marks_a_removed_region() {
        let list = json!({"regions": [
            {"name": "us-east-1", "api": "http://127.0.0.1:9100", "state": "running", "pid": 10, "exit": null, "restarts": 0, "removed": false},
            {"name": "sa-east-1", "api": "http://127.0.0.1:9103", "state": "running", "pid": 13, "exit": null, "restarts": 0, "removed": true},
        ]});
        let text = describe_list(&list);
        let row = |name: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(
            row("us-east-1"),
            [
                "us-east-1",
                "running",
                "10",
                "0",
                "-",
                "member",
                "http://127.0.0.1:9100"
            ]
        );
        assert_eq!(
            row("sa-east-1"),
            [
                "sa-east-1",
                "running",
                "13",
                "0",
                "-",
                "removed",
                "http://127.0.0.1:9103"
            ]
        );
        assert!(
            text.contains("removed from the cluster (remove-region): sa-east-1."),
            "{text}"
        );
    }

    #[test]
    fn port_base_flag_only_when_not_the_default() {
        assert_eq!(port_base_flag(DEFAULT_PORT_BASE), "");
        assert_eq!(port_base_flag(8100), " --port-base 8100");
    }
}
