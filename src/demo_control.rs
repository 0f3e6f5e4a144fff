//! What keeps `atoll demo` running through failures, and lets a drill drive it: the region
//! supervisor (one task per region process: a region that dies is reported and the rest keeps
//! running), the demo's control API (`/v1/demo/regions`, kill / stop / restart a region, bearer
//! token), the discovery file (`${TMPDIR:-/tmp}/atoll-demo-<port-base>.json`) that tells tools
//! where all of it is, and `atoll demo ctl`, the command-line client of the control API.

use anyhow::{Context, Result, anyhow, bail};
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
use std::time::Duration;
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

impl Drop for DiscoveryFile {
    fn drop(&mut self) {
        if self.written && file_pid(&self.path) == Some(u64::from(std::process::id())) {
            let _ = std::fs::remove_file(&self.path);
        }
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

/// How to start one region process again.
pub trait Spawner: Send + Sync + 'static {
    fn spawn(
        &self,
        name: &str,
        via: &[(String, SocketAddr)],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Child>> + Send + '_>>;
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
}

impl Slot {
    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
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
        })
    }
}

/// The demo's region processes.
pub struct Regions {
    slots: Vec<Slot>,
    spawner: Box<dyn Spawner>,
    port_base: u16,
    shutting_down: AtomicBool,
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
        let slots = started
            .into_iter()
            .map(
                |Started {
                     name,
                     api,
                     via,
                     child,
                 }| {
                    children.push(child);
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
                    }
                },
            )
            .collect();
        let regions = Arc::new(Regions {
            slots,
            spawner,
            port_base,
            shutting_down: AtomicBool::new(false),
        });
        for (i, child) in children.into_iter().enumerate() {
            regions.clone().adopt(i, child);
        }
        regions
    }

    fn restart_command(&self, name: &str) -> String {
        format!(
            "atoll demo ctl restart {name}{}",
            port_base_flag(self.port_base)
        )
    }

    /// Makes `child` the current process of slot `i` and starts the task that owns it: it
    /// delivers the control API's signals and records the exit.
    fn adopt(self: Arc<Self>, i: usize, child: Child) {
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let (reaped_tx, reaped_rx) = watch::channel(false);
        {
            let mut l = self.slots[i].live();
            l.state = RegionState::Running;
            l.pid = child.id();
            l.exit = None;
            l.requested = None;
            l.signals = Some(sig_tx);
            l.reaped = Some(reaped_rx);
        }
        tokio::spawn(self.own(i, child, sig_rx, reaped_tx));
    }

    async fn own(
        self: Arc<Self>,
        i: usize,
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
        let slot = &self.slots[i];
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
        if !self.shutting_down.load(Ordering::SeqCst) {
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

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name == name)
    }

    pub fn json(&self) -> Value {
        json!({"regions": self.slots.iter().map(Slot::json).collect::<Vec<_>>()})
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
        Self::kill_slot(slot).await?;
        Ok(slot.json())
    }

    pub async fn stop(&self, name: &str) -> Result<Value, DemoError> {
        let slot = self.lookup(name)?;
        let _op = slot.op.lock().await;
        Self::stop_slot(slot).await?;
        Ok(slot.json())
    }

    /// Stops the region if it runs, then starts it again on the same data directory and links;
    /// answers once the new process listens.
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<Value, DemoError> {
        let slot = self.lookup(name)?;
        let _op = slot.op.lock().await;
        Self::stop_slot(slot).await?;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(DemoError::ShuttingDown);
        }
        let child = self
            .spawner
            .spawn(&slot.name, &slot.via)
            .await
            .map_err(|e| DemoError::StartFailed(format!("{e:#}")))?;
        let i = self
            .slots
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| DemoError::UnknownRegion(name.to_string()))?;
        slot.live().restarts += 1;
        self.clone().adopt(i, child);
        if !self.shutting_down.load(Ordering::SeqCst) {
            println!("region {name} restarted");
        }
        Ok(slot.json())
    }

    fn lookup(&self, name: &str) -> Result<&Slot, DemoError> {
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
        for slot in &self.slots {
            // Wait for a control operation in flight (a restart) to finish first.
            let _op = slot.op.lock().await;
            let before = slot.live().state;
            if before != RegionState::Running {
                let l = slot.live();
                reports.push(StopReport {
                    name: slot.name.clone(),
                    clean: before != RegionState::Exited,
                    detail: match before {
                        RegionState::Exited => format!(
                            "had exited unexpectedly ({}) and was not restarted",
                            l.exit.as_deref().unwrap_or("?")
                        ),
                        _ => "was down (killed or stopped on request)".to_string(),
                    },
                });
                continue;
            }
            let report = match Self::stop_slot(slot).await {
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
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnknownRegion(_) | Self::NoSuchRoute(_) => StatusCode::NOT_FOUND,
            Self::StartFailed(_) | Self::Stuck(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn hint(&self) -> &'static str {
        match self {
            Self::Unauthorized => {
                "the token is in the demo's discovery file (${TMPDIR:-/tmp}/atoll-demo-<port-base>.json); `atoll demo ctl` sends it for you"
            }
            Self::UnknownRegion(_) => "GET /v1/demo/regions lists the demo's regions",
            Self::NoSuchRoute(_) => {
                "the routes are GET /v1/demo/regions and POST /v1/demo/regions/{name}/kill|stop|restart"
            }
            Self::StartFailed(_) => {
                "see the region's log in the demo's data directory (<data-dir>/<region>.log)"
            }
            Self::Stuck(_) => "check the process by hand; the demo kills it on exit",
            Self::ShuttingDown => "start the demo again",
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
    /// List the demo's regions: state, pid, last exit, restarts.
    Ls,
    /// Kill REGION's process (SIGKILL), as a crash would.
    Kill { region: String },
    /// Stop REGION gracefully (SIGTERM; killed if it has not exited after 20 s).
    Stop { region: String },
    /// Start REGION again on its data directory and links (stopping it first if it runs).
    Restart { region: String },
}

/// `atoll demo ctl`: the demo control API, found through the discovery file.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
#[command(
    after_help = "Examples:\n  atoll demo ctl ls\n  atoll demo ctl kill us-east-1\n  atoll demo ctl restart us-east-1 --port-base 8100\n\nReads ${TMPDIR:-/tmp}/atoll-demo-<port-base>.json, which the running demo writes (with its\ncontrol address and admin token)."
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
        // A stop waits up to 20 s and then kills; a restart waits for the region to listen.
        .timeout(Duration::from_secs(60))
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
        CtlAction::Ls => {
            println!(
                "{:<16} {:<8} {:>8} {:>8}  {:<24} api",
                "region", "state", "pid", "restarts", "last exit"
            );
            for r in body["regions"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<8} {:>8} {:>8}  {:<24} {}",
                    r["name"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?"),
                    r["pid"]
                        .as_u64()
                        .map_or_else(|| "-".to_string(), |p| p.to_string()),
                    r["restarts"].as_u64().unwrap_or(0),
                    r["exit"].as_str().unwrap_or("-"),
                    r["api"].as_str().unwrap_or("?"),
                );
            }
        }
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

    #[test]
    fn port_base_flag_only_when_not_the_default() {
        assert_eq!(port_base_flag(DEFAULT_PORT_BASE), "");
        assert_eq!(port_base_flag(8100), " --port-base 8100");
    }
}
