//! Test support: fake regions (tiny HTTP/1.1 servers on loopback that can be told to answer,
//! fail, hang, drop connections, report draining or a fencing role, or refuse writes as a
//! standby does), config builders, and polling with deadlines.
#![allow(dead_code)]

use atoll_config::render::{ClusterToml, KeyspaceToml, RegionToml};
use atoll_config::{Config, Policy};
use atoll_core::clock::SystemClock;
use atoll_router::metrics::RouterMetrics;
use atoll_router::proxy::{self, Proxy, ProxySettings};
use atoll_router::runtime::{RouterCtx, RouterHandle, RouterOptions};
use atoll_router::state::RouterState;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// A `[router]` section that checks every 100 ms and decides on one check (no hold-down, no
/// ramp), with a `failover` name `api` and a `weighted` name `w`.
pub const FAST_ROUTER: &str = r#"
[router]
[router.health]
interval_ms = 100
timeout_ms = 80
failure_threshold = 1
recovery_threshold = 1
hold_down_ms = 0
ramp_secs = 0
[[router.names]]
name = "api"
policy = "failover"
[[router.names]]
name = "w"
policy = "weighted"
"#;

/// How a fake region behaves.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// 200 (`/healthz`: `{"status":"serving"}`).
    Ok,
    /// Answers with this status.
    Status(u16),
    /// 503 `{"status":"draining"}`.
    Draining,
    /// 200 `{"status":"fenced"}`.
    Fenced,
    /// Reads the request and never answers.
    Hang,
    /// Reads the request, then closes the connection without a byte of response.
    Close,
    /// Answers as [`Mode::Ok`] (keep-alive, no `Connection: close`), then closes the
    /// connection, as a region closing an idle connection does.
    OkThenClose,
    /// 200 with a chunked body of this many bytes (`x`), streamed in 16 KiB chunks.
    Large(usize),
    /// `/healthz` of a fenced cluster (issue 8): 200 `{"status": status, "region", "role",
    /// "epoch", "primary"}` (`status` is `serving` or `passive`).
    Role {
        status: &'static str,
        role: &'static str,
        epoch: u64,
        primary: Option<&'static str>,
    },
    /// A refusal in atoll's error shape: 503 `{"error": {"code": <code>, ...}}`, e.g.
    /// `ATOLL-NOT-PRIMARY` as a standby answers a write.
    Refuse(&'static str),
}

impl Mode {
    /// `/healthz` of a region serving with this role.
    pub fn role(role: &'static str, epoch: u64, primary: Option<&'static str>) -> Mode {
        Mode::Role {
            status: "serving",
            role,
            epoch,
            primary,
        }
    }
}

struct Inner {
    name: String,
    health: Mutex<Mode>,
    data: Mutex<Mode>,
    /// "METHOD path" of every non-health request read in full.
    requests: Mutex<Vec<String>>,
    /// The body of each of them.
    bodies: Mutex<Vec<Vec<u8>>>,
    checks: AtomicU64,
    /// Connections accepted.
    accepted: AtomicU64,
    /// Connections this region closed itself after answering ([`Mode::OkThenClose`]).
    closed: AtomicU64,
}

/// A fake region's API on loopback.
#[derive(Clone)]
pub struct FakeRegion {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
}

impl FakeRegion {
    pub async fn start(name: &str) -> FakeRegion {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            name: name.to_string(),
            health: Mutex::new(Mode::Ok),
            data: Mutex::new(Mode::Ok),
            requests: Mutex::new(Vec::new()),
            bodies: Mutex::new(Vec::new()),
            checks: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            closed: AtomicU64::new(0),
        });
        let (stop, mut stopped) = watch::channel(false);
        let i = inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let Ok((sock, _)) = r else { continue };
                        i.accepted.fetch_add(1, Ordering::SeqCst);
                        let i = i.clone();
                        let stopped = stopped.clone();
                        tokio::spawn(connection(sock, i, stopped));
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        FakeRegion { addr, inner, stop }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn set_health(&self, m: Mode) {
        *self.inner.health.lock().unwrap() = m;
    }

    pub fn set_data(&self, m: Mode) {
        *self.inner.data.lock().unwrap() = m;
    }

    /// Every non-health request read in full, as "METHOD path".
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The body of every non-health request read in full, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.inner
            .bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed by this region after an answer ([`Mode::OkThenClose`]).
    pub fn closed_after_answer(&self) -> u64 {
        self.inner.closed.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> u64 {
        self.inner.checks.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Reads one request head and body; `None` at EOF or on a malformed request.
async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let first = lines.next()?.to_string();
            let len: usize = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let mut chunk = [0u8; 8192];
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            let mut parts = first.split(' ');
            let method = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            return Some((method, path, body));
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(mut sock: TcpStream, i: Arc<Inner>, mut stopped: watch::Receiver<bool>) {
    let mut buf = Vec::new();
    loop {
        let req = tokio::select! {
            r = read_request(&mut sock, &mut buf) => r,
            _ = stopped.changed() => return,
        };
        let Some((method, path, body)) = req else {
            return;
        };
        let health = path == "/healthz";
        let mode = if health {
            i.checks.fetch_add(1, Ordering::SeqCst);
            i.health.lock().unwrap().clone()
        } else {
            i.requests.lock().unwrap().push(format!("{method} {path}"));
            i.bodies.lock().unwrap().push(body);
            i.data.lock().unwrap().clone()
        };
        let (status, body) = match mode.clone() {
            Mode::Hang => {
                let _ = stopped.changed().await;
                return;
            }
            Mode::Close => return,
            Mode::Large(n) => {
                let head = format!(
                    "HTTP/1.1 200 X\r\ncontent-type: application/octet-stream\r\nx-atoll-region: {}\r\ntransfer-encoding: chunked\r\n\r\n",
                    i.name
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut left = n;
                while left > 0 {
                    let k = left.min(16 << 10);
                    let mut chunk = format!("{k:x}\r\n").into_bytes();
                    chunk.extend(std::iter::repeat_n(b'x', k));
                    chunk.extend_from_slice(b"\r\n");
                    if sock.write_all(&chunk).await.is_err() {
                        return;
                    }
                    left -= k;
                }
                if sock.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Ok | Mode::OkThenClose if health => (200, r#"{"status":"serving"}"#.to_string()),
            Mode::Ok | Mode::OkThenClose => {
                (200, format!(r#"{{"region":"{}","path":"{path}"}}"#, i.name))
            }
            Mode::Status(s) => (s, format!(r#"{{"region":"{}","status":{s}}}"#, i.name)),
            Mode::Draining => (503, r#"{"status":"draining"}"#.to_string()),
            Mode::Fenced => (200, r#"{"status":"fenced"}"#.to_string()),
            Mode::Role {
                status,
                role,
                epoch,
                primary,
            } => (
                200,
                serde_json::json!({
                    "status": status,
                    "region": i.name,
                    "role": role,
                    "epoch": epoch,
                    "primary": primary,
                    "replication": {"established": true},
                })
                .to_string(),
            ),
            Mode::Refuse(code) => (
                503,
                serde_json::json!({"error": {
                    "code": code,
                    "message": format!("refused by {}", i.name),
                    "hint": "try another region",
                    "retryable": true,
                }})
                .to_string(),
            ),
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nx-atoll-region: {}\r\ncontent-length: {}\r\n\r\n{body}",
            i.name,
            body.len()
        );
        let resp = if method == "HEAD" {
            resp[..resp.len() - body.len()].to_string()
        } else {
            resp
        };
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        if mode == Mode::OkThenClose {
            let _ = sock.shutdown().await;
            drop(sock);
            i.closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}

/// An address nothing listens on (connections are refused).
pub async fn refused_addr() -> SocketAddr {
    let port = atoll_testkit::free_ports(1).unwrap()[0];
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A cluster config with these regions (in order) and this `[router]` text (which must start
/// with `[router]`). Keyspaces: `s` (lww), `carts` (mvr), `c` (counter), `f` (set).
pub fn config(regions: &[(&str, SocketAddr)], router: &str) -> Arc<Config> {
    let mut toml = ClusterToml::new("t");
    for (n, a) in regions {
        toml = toml.region(RegionToml::new(n, *a));
    }
    let t = toml
        .keyspace(KeyspaceToml::new("s", Policy::Lww))
        .keyspace(KeyspaceToml::new("carts", Policy::Mvr))
        .keyspace(KeyspaceToml::new("c", Policy::Counter))
        .keyspace(KeyspaceToml::new("f", Policy::Set))
        .section(router)
        .render();
    Arc::new(Config::parse(&t, "test.toml").unwrap_or_else(|e| panic!("{e}\n{t}")))
}

/// A shared state for proxy tests (no prober: tests set health themselves).
pub fn ctx(cfg: &Config) -> RouterCtx {
    RouterCtx {
        state: Arc::new(RouterState::new(cfg).unwrap()),
        metrics: Arc::new(RouterMetrics::new()),
        clock: Arc::new(SystemClock),
    }
}

/// A proxy served on loopback; dropped when the sender is.
pub struct ProxyServer {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    _stop: watch::Sender<bool>,
}

pub async fn serve_proxy(ctx: &RouterCtx, name: &str, settings: ProxySettings) -> ProxyServer {
    let cfg_name = ctx
        .state
        .config()
        .names
        .iter()
        .find(|n| n.name == name)
        .unwrap()
        .clone();
    let p = Arc::new(Proxy::new(ctx.clone(), cfg_name, settings));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(proxy::serve(listener, p.clone(), rx));
    ProxyServer {
        addr,
        proxy: p,
        _stop: tx,
    }
}

/// Starts a router with a proxy and the admin API on loopback.
pub async fn start_router(
    cfg: Arc<Config>,
    state_dir: &Path,
    proxy_name: Option<&str>,
) -> RouterHandle {
    let mut opts = RouterOptions::new(
        cfg,
        "127.0.0.1:0".parse().unwrap(),
        state_dir.to_path_buf(),
        TOKEN.to_string(),
    );
    opts.proxy_listen = Some("127.0.0.1:0".parse().unwrap());
    opts.proxy_name = proxy_name.map(str::to_string);
    atoll_router::runtime::Router::start(opts).await.unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Polls `f` until it returns `Some` ([`atoll_testkit::eventually`]), panicking after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    atoll_testkit::eventually(limit, what, f)
        .await
        .unwrap_or_else(|e| panic!("not within {limit:?}: {e}"))
}

/// The health of `region` as the state sees it.
pub fn health_of(ctx: &RouterCtx, region: &str) -> atoll_router::state::RegionStatus {
    ctx.state
        .status(ctx.now_ms())
        .unwrap()
        .regions
        .into_iter()
        .find(|r| r.region == region)
        .unwrap()
}

/// The value of one sample line of the metrics text, e.g.
/// `atoll_router_region_healthy{region="a"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
}

/// The log lines written while a [`Logs`] is alive, captured from the current thread's tracing
/// subscriber (a current-thread tokio test runs the tasks it spawns on that thread, so the
/// router's prober and servers log there too).
pub struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures every event at info level and above, as `atoll router` prints them.
    pub fn capture() -> Logs {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = LogBuf(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        Logs {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        self.buf
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The lines logged at `level` (`"INFO"`, `"ERROR"`, ...).
    pub fn at(&self, level: &str) -> Vec<String> {
        let tag = format!(" {level} ");
        self.text()
            .lines()
            .filter(|l| l.contains(&tag))
            .map(str::to_string)
            .collect()
    }
}

pub use atoll_testkit::raw_http::RawReply;

/// A slow upload ([`atoll_testkit::raw_http::slow_upload`]) of `total` bytes of `x`.
pub async fn slow_upload(
    addr: SocketAddr,
    method: &str,
    path: &str,
    total: usize,
    chunked: bool,
    read_early: bool,
) -> Result<RawReply, String> {
    let u = atoll_testkit::raw_http::Upload {
        method,
        path,
        extra: "",
        total,
        fill: b'x',
        chunked,
        read_early,
    };
    atoll_testkit::raw_http::slow_upload(addr, &u).await
}

/// Sends raw request bytes and reads one complete response.
pub async fn raw_request(addr: SocketAddr, request: &str) -> RawReply {
    atoll_testkit::raw_http::raw_request(addr, request)
        .await
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}
