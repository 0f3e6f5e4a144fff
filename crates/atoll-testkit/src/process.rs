//! [`RegionProcess`]: one real `atoll region` process, started, crashed, stopped and restarted
//! from a test.

use crate::client::Client;
use anyhow::{Context, Result, anyhow, bail};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a region may take to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a region may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// What `atoll region` prints once its listener is bound (followed by the address).
pub const READY_MARKER: &str = " listening on http://";
/// Lines of the region's log printed when a test panics or a start fails.
const LOG_TAIL_LINES: usize = 60;

/// The headless Chromium the browser tests drive: `ATOLL_CHROMIUM`, else `chromium`,
/// `chromium-browser` or `google-chrome` on the `PATH`.
///
/// # Panics
/// If there is none: a browser test must fail, not skip, where its browser is missing.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("ATOLL_CHROMIUM") {
        return PathBuf::from(p);
    }
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(c);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no headless Chromium: install Debian's `chromium` (scripts/test-all.sh does) or set ATOLL_CHROMIUM"
    );
}

/// The `atoll` binary to run: `$ATOLL_BIN` if set, else `atoll` next to the running test
/// executable's `target/<profile>/` directory (where cargo puts it).
///
/// Integration tests of the root package should pass `env!("CARGO_BIN_EXE_atoll")` to
/// [`RegionProcess::start`] instead: cargo guarantees that one is built and current.
///
/// # Panics
/// If neither exists: a test cannot do anything useful without the binary.
pub fn atoll_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ATOLL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut dir = exe
        .parent()
        .expect("the test executable is in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("atoll{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "no atoll binary at {}: build it (cargo build --bin atoll) or set ATOLL_BIN",
        bin.display()
    );
    bin
}

/// How to start a region. [`RegionSpec::new`] fills in the defaults: listen on
/// `127.0.0.1:0`, wait up to [`START_TIMEOUT`] for readiness.
#[derive(Clone, Debug)]
pub struct RegionSpec {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub region: String,
    pub data_dir: PathBuf,
    /// Passed as `--listen`. Port 0 picks a free port on every start.
    pub listen: SocketAddr,
    /// Extra environment variables for the process (e.g. `ATOLL_LOG`).
    pub env: Vec<(String, String)>,
    pub start_timeout: Duration,
    /// After the readiness line, also wait until `GET /healthz` answers 200 (the default). The
    /// line is printed before the server runs, so only a served request shows that the process
    /// is serving (and has installed its SIGTERM handler).
    pub wait_healthy: bool,
}

impl RegionSpec {
    pub fn new(
        bin: impl Into<PathBuf>,
        config: impl Into<PathBuf>,
        region: &str,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            bin: bin.into(),
            config: config.into(),
            region: region.to_string(),
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            env: Vec::new(),
            start_timeout: START_TIMEOUT,
            wait_healthy: true,
        }
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    pub fn wait_healthy(mut self, wait: bool) -> Self {
        self.wait_healthy = wait;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Where the process's stderr (and a copy of its stdout) goes: next to the data directory,
    /// named after it, so a test's data directory and its log sit side by side.
    pub fn log_path(&self) -> PathBuf {
        let name = self
            .data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".to_string());
        match self.data_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join(format!("{name}.log")),
            _ => PathBuf::from(format!("{name}.log")),
        }
    }
}

/// A running (or stopped) `atoll region` process. Dropping it kills the process.
pub struct RegionProcess {
    spec: RegionSpec,
    log_path: PathBuf,
    child: Option<Child>,
    addr: SocketAddr,
    starts: u32,
    last_exit: Option<ExitStatus>,
}

impl RegionProcess {
    /// Starts `bin region --config <config> --region <region> --data-dir <data_dir> --listen
    /// 127.0.0.1:0` and waits until it is listening.
    pub fn start(
        bin: impl Into<PathBuf>,
        config: impl Into<PathBuf>,
        region: &str,
        data_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        Self::start_spec(RegionSpec::new(bin, config, region, data_dir))
    }

    /// Starts a region as `spec` says and waits until it is listening.
    pub fn start_spec(spec: RegionSpec) -> Result<Self> {
        let log_path = spec.log_path();
        let (child, addr) = launch(&spec, &log_path, 1)?;
        Ok(Self {
            spec,
            log_path,
            child: Some(child),
            addr,
            starts: 1,
            last_exit: None,
        })
    }

    /// The address the current (or last) incarnation listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` of the current (or last) incarnation.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A fresh HTTP client for [`RegionProcess::endpoint`].
    pub fn client(&self) -> Client {
        Client::new(&self.endpoint())
    }

    pub fn region(&self) -> &str {
        &self.spec.region
    }

    pub fn spec(&self) -> &RegionSpec {
        &self.spec
    }

    /// How the next [`RegionProcess::restart`] starts the region (e.g. another config file, or
    /// not waiting for `/healthz` to answer 200).
    pub fn spec_mut(&mut self) -> &mut RegionSpec {
        &mut self.spec
    }

    /// Sets an environment variable for the process's next (re)start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.spec.env.retain(|(k, _)| k != key);
        self.spec.env.push((key.to_string(), value.to_string()));
    }

    pub fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    /// How many times the process has been started (1 after [`RegionProcess::start`]).
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The process id, while a process is attached.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status of the last incarnation that was stopped or crashed.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.child = None;
                self.last_exit = Some(status);
                false
            }
            Err(_) => false,
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) without waiting.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("region {} is not running", self.spec.region))?;
        let pid = i32::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, which is
        // not reaped yet (we hold its `Child`), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; returns its status. On timeout the process
    /// is left running and an error is returned.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let region = self.spec.region.clone();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("region {region} is not running"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                self.last_exit = Some(status);
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("region {region} did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: the process dies at once, with no chance to flush or clean up. Waits for it and
    /// returns its status.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let region = self.spec.region.clone();
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("region {region} is not running"))?;
        // Child::kill sends SIGKILL on Unix; it also succeeds on an exited, unreaped child.
        child.kill().context("SIGKILL")?;
        let status = child.wait().context("waiting for the killed region")?;
        self.last_exit = Some(status);
        Ok(status)
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`] for a graceful exit and returns the exit
    /// status. A region that does not exit in time is SIGKILLed and this returns an error.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        match self.wait_exit(STOP_TIMEOUT) {
            Ok(status) => Ok(status),
            Err(e) => {
                let _ = self.kill9();
                Err(e.context(format!(
                    "region {} ignored SIGTERM; killed it. Log tail:\n{}",
                    self.spec.region,
                    self.log_tail(LOG_TAIL_LINES)
                )))
            }
        }
    }

    /// Starts the region again on the same data directory and config (after
    /// [`RegionProcess::kill9`] or [`RegionProcess::terminate`]). With the default listen
    /// address the port may change: use [`RegionProcess::endpoint`] afterwards.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!(
                "region {} is still running; stop it before restarting",
                self.spec.region
            );
        }
        let (child, addr) = launch(&self.spec, &self.log_path, self.starts + 1)?;
        self.starts += 1;
        self.child = Some(child);
        self.addr = addr;
        Ok(())
    }

    /// Where the process's stderr goes (appended to across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }
}

impl Drop for RegionProcess {
    fn drop(&mut self) {
        let label = format!("region {}", self.spec.region);
        kill_and_report(self.child.take(), &label, &self.log_path);
    }
}

/// What a process handle does when dropped: kills the process if it still runs (a failing test
/// leaks no process) and, if the test is panicking, prints the tail of its log.
fn kill_and_report(child: Option<Child>, label: &str, log_path: &Path) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
    if std::thread::panicking() {
        eprintln!(
            "---- {label} log ({}), last {LOG_TAIL_LINES} lines ----\n{}\n---- end of {label} log ----",
            log_path.display(),
            tail(log_path, LOG_TAIL_LINES),
        );
    }
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub fn tail_of(path: &Path, lines: usize) -> String {
    tail(path, lines)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))
}

/// Spawns the process and waits for its readiness line. On any failure the process is gone
/// when this returns.
fn launch(spec: &RegionSpec, log_path: &Path, start_no: u32) -> Result<(Child, SocketAddr)> {
    let mut log = open_log(log_path)?;
    let mut cmd = Command::new(&spec.bin);
    cmd.arg("region")
        .arg("--config")
        .arg(&spec.config)
        .arg("--region")
        .arg(&spec.region)
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .arg("--listen")
        .arg(spec.listen.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.try_clone()?));
    // Plain log lines in the log file (tracing colours its output even when it is not a TTY).
    cmd.env("NO_COLOR", "1");
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    writeln!(log, "==== atoll-testkit: start #{start_no}: {cmd:?} ====")?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", spec.bin.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");

    // The reader keeps draining stdout for the life of the process (so the region never blocks
    // on a full pipe) and copies it into the log; it reports the first readiness line.
    let (tx, rx) = mpsc::channel::<String>();
    let mut copy = open_log(log_path)?;
    std::thread::Builder::new()
        .name(format!("atoll-stdout-{}", spec.region))
        .spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(copy, "[stdout] {line}");
                if line.contains(READY_MARKER)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        })?;

    let fail = |child: &mut Child, why: String| -> anyhow::Error {
        let _ = child.kill();
        let status = child.wait().ok();
        anyhow!(
            "region {} (start #{start_no}) {why}{}; log {}:\n{}",
            spec.region,
            status.map(|s| format!(" [{s}]")).unwrap_or_default(),
            log_path.display(),
            tail(log_path, LOG_TAIL_LINES)
        )
    };
    let deadline = Instant::now() + spec.start_timeout;
    let line = match rx.recv_timeout(spec.start_timeout) {
        Ok(line) => line,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(fail(
                &mut child,
                format!("printed no readiness line within {:?}", spec.start_timeout),
            ));
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // stdout closed without the line: the process exited (or is exiting).
            let exit_deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < exit_deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(fail(&mut child, "exited before listening".to_string()));
        }
    };
    let addr = line
        .split_once(READY_MARKER)
        .map(|(_, a)| a.trim())
        .and_then(|a| a.parse::<SocketAddr>().ok());
    let Some(addr) = addr else {
        return Err(fail(
            &mut child,
            format!("printed an unparsable readiness line: {line:?}"),
        ));
    };
    if spec.wait_healthy {
        loop {
            let last = match healthz(addr) {
                Ok(200) => break,
                Ok(status) => format!("HTTP {status}"),
                Err(e) => e.to_string(),
            };
            if let Ok(Some(_)) = child.try_wait() {
                return Err(fail(&mut child, "exited right after listening".to_string()));
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    &mut child,
                    format!(
                        "listened on {addr} but GET /healthz did not answer 200 within {:?} (last: {last})",
                        spec.start_timeout
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok((child, addr))
}

/// Any long-running `atoll` process other than a region (`atoll link serve`, `atoll router`,
/// ...): started from a full command line, its stdout lines copied into its log (with its
/// stderr) and handed to [`Service::wait_line`]. Dropping it kills the process; a test that
/// panics also prints the log's tail.
pub struct Service {
    name: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    log_path: PathBuf,
}

impl Service {
    /// Starts `cmd` (stdin closed, stdout piped, stderr into `log_path`). `name` labels it in
    /// messages.
    pub fn start(name: &str, mut cmd: Command, log_path: &Path) -> Result<Service> {
        let mut log = open_log(log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .env("NO_COLOR", "1");
        writeln!(log, "==== atoll-testkit: {name}: {cmd:?} ====")?;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel::<String>();
        let mut copy = open_log(log_path)?;
        std::thread::Builder::new()
            .name(format!("atoll-stdout-{name}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(copy, "[stdout] {line}");
                    let _ = tx.send(line);
                }
            })?;
        Ok(Service {
            name: name.to_string(),
            child: Some(child),
            lines,
            log_path: log_path.to_path_buf(),
        })
    }

    /// Waits up to `timeout` for a stdout line that `matches`; returns it. Lines before it are
    /// consumed (they stay in the log). Fails, with the log's tail, if the process exits first.
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "{} printed no expected line within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(LOG_TAIL_LINES)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "{} exited (or closed stdout) before printing the expected line; log {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(LOG_TAIL_LINES)
                ),
            }
        }
    }

    /// The stdout lines printed so far and not yet consumed by [`Service::wait_line`].
    pub fn pending_lines(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: the process dies at once. Waits for it and returns its exit status.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        child.kill().context("SIGKILL")?;
        child
            .wait()
            .with_context(|| format!("waiting for the killed {}", self.name))
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (stderr, and stdout lines prefixed `[stdout] `).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }
}

/// A running `atoll router` with its proxy and admin API on free loopback ports (a [`Service`]:
/// killed when dropped, its log printed when the test panics).
pub struct RouterService {
    pub service: Service,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl RouterService {
    /// `BIN router --config CONFIG --proxy 127.0.0.1:0 --admin 127.0.0.1:0 --state-dir
    /// DIR/router-state` with `ATOLL_ADMIN_TOKEN=token`, logging to `DIR/router.log`; waits up to
    /// `timeout` for the addresses it prints.
    pub fn start(
        bin: impl AsRef<Path>,
        config: &Path,
        dir: &Path,
        token: &str,
        timeout: Duration,
    ) -> Result<RouterService> {
        let mut cmd = Command::new(bin.as_ref());
        cmd.arg("router")
            .arg("--config")
            .arg(config)
            .args(["--proxy", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.join("router-state"))
            .env("ATOLL_ADMIN_TOKEN", token);
        let mut service = Service::start("router", cmd, &dir.join("router.log"))?;
        // It prints the proxy's address, then the admin API's.
        let mut addr = |prefix: &'static str| -> Result<SocketAddr> {
            let line = service.wait_line(timeout, |l| l.starts_with(prefix))?;
            line[prefix.len()..]
                .trim()
                .parse()
                .with_context(|| format!("router printed {line:?}"))
        };
        let proxy = addr("atoll router proxy on http://")?;
        let admin = addr("atoll router admin on http://")?;
        Ok(RouterService {
            service,
            proxy,
            admin,
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        kill_and_report(self.child.take(), &self.name, &self.log_path);
    }
}

/// The status code of `GET /healthz` at `addr`, over a plain blocking HTTP/1.1 request (the
/// harness is synchronous; the async [`Client`] needs a runtime).
pub fn healthz(addr: SocketAddr) -> std::io::Result<u16> {
    use std::io::Read;
    let timeout = Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// Runs `cmd` to completion with its stdout and stderr captured, like [`Command::output`], but
/// kills it and fails if it has not exited within `timeout`: a hung CLI fails the test instead
/// of hanging it. Stdin is closed.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            bail!(
                "{cmd:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
