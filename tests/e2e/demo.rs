//! End-to-end: `atoll demo` starts three replicating regions on consecutive ports, prints their
//! endpoints once replication is established between every pair (every region's `/healthz` says
//! so at that moment), replicates a write from one region to the other two over mutual TLS (a
//! peer listener refuses plain HTTP, and the client API serves no peer route), and on SIGINT
//! stops every region and exits 0, leaving no process and no listening port behind.

use crate::common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use atoll_testkit::{Client, TestDir, free_port_range, test_dir, wait_until, wait_until_async};
use common::{BIN, DEADLINE, ok};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
/// How long the demo may take to print its endpoints (it starts three regions one by one).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the demo may take to stop after SIGINT (each region gets up to 20 s).
const STOP_DEADLINE: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// The running `atoll demo`. Dropping it stops the demo and, failing that, kills it and the
/// regions it started, so a failing test leaks no process.
struct Demo {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// The thread that reads stderr: done once the demo exited and all of it was read.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    /// The region processes it started (children of the demo).
    regions: Vec<u32>,
    data_dir: std::path::PathBuf,
    /// The demo's TMPDIR: where it writes its discovery file.
    tmp_dir: std::path::PathBuf,
}

impl Demo {
    fn spawn(base: u16, data_dir: &std::path::Path) -> Result<Demo> {
        let tmp_dir = data_dir.with_extension("tmp");
        std::fs::create_dir_all(&tmp_dir)?;
        let mut child = Command::new(BIN)
            .args(["demo", "--port-base", &base.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("NO_COLOR", "1")
            .env("TMPDIR", &tmp_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start atoll demo")?;
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped");
        let all = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut a) = all.lock() {
                    a.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped");
        let e = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut e) = e.lock() {
                    e.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Demo {
            child: Some(child),
            lines,
            stdout,
            stderr,
            stderr_reader: Some(stderr_reader),
            regions: Vec::new(),
            data_dir: data_dir.to_path_buf(),
            tmp_dir,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: i32) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("the demo is not running"))?;
        // SAFETY: kill(2) on our own unreaped child.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Ctrl-C (SIGINT): the demo must exit 0 within [`STOP_DEADLINE`], and none of its regions
    /// outlive it.
    fn ctrl_c(&mut self) -> Result<()> {
        self.signal(libc::SIGINT)?;
        let exit = self.wait_exit(STOP_DEADLINE)?;
        ensure!(
            exit.code() == Some(0),
            "the demo should exit 0 on SIGINT: {exit}\n{}",
            self.output()
        );
        for &pid in &self.regions {
            ensure!(!alive(pid), "region process {pid} outlived the demo");
        }
        Ok(())
    }

    /// Waits for the demo to exit (at most `timeout`).
    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("the demo is not running"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                // What it wrote last (why it exited) is read before anyone looks at it: the
                // pipe is at its end once the demo is gone (its regions write to their logs).
                if let Some(reader) = self.stderr_reader.take() {
                    let until = Instant::now() + Duration::from_secs(5);
                    while !reader.is_finished() && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("the demo did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads stdout until every region's endpoint was printed: `(region, endpoint)` in order.
    /// `None` if the demo exited first.
    fn endpoints(&mut self) -> Result<Option<Vec<(String, String)>>> {
        let deadline = Instant::now() + START_DEADLINE;
        let mut found: Vec<(String, String)> = Vec::new();
        while found.len() < REGIONS.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let mut words = line.split_whitespace();
                    if let (Some(name), Some(url), None) =
                        (words.next(), words.next(), words.next())
                        && REGIONS.contains(&name)
                        && url.starts_with("http://")
                    {
                        found.push((name.to_string(), url.to_string()));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "the demo printed {} of {} endpoints within {START_DEADLINE:?}",
                        found.len(),
                        REGIONS.len()
                    )
                }
            }
        }
        Ok(Some(found))
    }

    /// Reads stdout until a line starting with `prefix` (at most [`START_DEADLINE`]).
    fn line_starting(&mut self, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!(
                    "no line starting with {prefix:?} within {START_DEADLINE:?}\n{}",
                    self.output()
                ),
            }
        }
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().map(|s| s.join("\n")).unwrap_or_default(),
            self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
        )
    }

    /// The regions' logs (the demo writes `<data-dir>/<region>.log`), added regions included.
    fn region_logs(&self) -> String {
        let mut logs: Vec<std::path::PathBuf> = std::fs::read_dir(&self.data_dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        logs.iter()
            .map(|p| {
                format!(
                    "---- {} ----\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.signal(libc::SIGTERM);
            if self.wait_exit(STOP_DEADLINE).is_err()
                && let Some(mut c) = self.child.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for &pid in &self.regions {
            if alive(pid) {
                // SAFETY: kill(2); the pid was a region of this demo moments ago.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- atoll demo ----\n{}\n{}",
                self.output(),
                self.region_logs()
            );
        }
    }
}

/// Pids of the live processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut f = rest.split_whitespace();
        let state = f.next()?;
        let ppid: u32 = f.next()?.parse().ok()?;
        (ppid == parent && state != "Z").then_some(pid)
    })
    .collect()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st != "Z")
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_replicates_and_stops_cleanly_on_sigint() {
    let dir = ok(test_dir("demo").map_err(Into::into));
    ok(demo_scenario(&dir).await);
}

/// `(region, client API URL)` in the demo's order.
type Endpoints = Vec<(String, String)>;

/// The port offsets of the demo's listeners (regions 0..=2, and region 3 that `add-region`
/// gives the next ports: client APIs, RESP, DNS, the router's proxy and admin, the links' and
/// the demo's control, peer listeners).
const DEMO_PORT_OFFSETS: [u16; 17] = [
    0, 1, 2, 3, 10, 11, 12, 13, 53, 80, 81, 90, 91, 100, 101, 102, 103,
];

/// A port base whose every demo port is free now (another test may still take one before the
/// demo binds it: [`start_demo`] retries then).
fn demo_port_base() -> Result<u16> {
    for _ in 0..50 {
        let base = free_port_range(4)?;
        let free = DEMO_PORT_OFFSETS.iter().all(|off| {
            base.checked_add(*off).is_some_and(|p| {
                std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                    && (*off != 53 || std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
            })
        });
        if free {
            return Ok(base);
        }
    }
    bail!("found no port base with every port of the demo free")
}

/// Starts a demo on a free port base (other ports, up to [`START_ATTEMPTS`] times, if one was
/// taken meanwhile) and reads its endpoints.
fn start_demo(dir: &TestDir) -> Result<(Demo, u16, Endpoints)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let base = demo_port_base()?;
        let data_dir = dir.join(&format!("demo-{attempt}"));
        let mut demo = Demo::spawn(base, &data_dir)?;
        match demo.endpoints()? {
            Some(e) => return Ok((demo, base, e)),
            None => {
                let exit = demo.wait_exit(STOP_DEADLINE)?;
                let logs = demo.region_logs();
                // A port taken between our check and the demo's bind (a region's, or one of the
                // router's or links' ports above the base): try other ports.
                let lost_race = logs.contains("cannot listen on")
                    || demo.output().contains("Address already in use");
                if attempt < START_ATTEMPTS && lost_race {
                    eprintln!("demo on port base {base} could not listen; retrying");
                    continue;
                }
                bail!(
                    "the demo exited ({exit}) before printing its endpoints\n{}\n{logs}",
                    demo.output()
                );
            }
        }
    }
}

async fn demo_scenario(dir: &TestDir) -> Result<()> {
    let (mut demo, base, endpoints) = start_demo(dir)?;
    for (i, (name, url)) in endpoints.iter().enumerate() {
        ensure!(
            *name == REGIONS[i] && *url == format!("http://127.0.0.1:{}", base + i as u16),
            "endpoint {i}: {name} {url}, expected {} on port {}",
            REGIONS[i],
            base + i as u16
        );
    }
    let pid = demo.pid().expect("running");
    demo.regions = children_of(pid);
    ensure!(
        demo.regions.len() == REGIONS.len(),
        "the demo should run {} region processes, found children {:?}",
        REGIONS.len(),
        demo.regions
    );

    // The demo prints its table once replication is established everywhere, and says so: a
    // first write then replicates at link speed instead of waiting for the first heartbeats.
    let replication = demo.line_starting("replication:")?;
    ensure!(
        replication.contains("established between every pair"),
        "{replication}\n{}",
        demo.output()
    );
    for (name, url) in &endpoints {
        let health = Client::new(url).get_raw("/healthz").await?.json()?;
        let rep = &health["replication"];
        ensure!(
            rep["established"] == true && rep["streaming_to"].as_array().map(Vec::len) == Some(2),
            "{name} right after the demo's table: {health}"
        );
    }

    // Regions talk mutual TLS, and nothing else gets in.
    let tls_line = demo.line_starting("between regions:")?;
    ensure!(
        tls_line.starts_with("between regions: mutual TLS on peer ports"),
        "{tls_line}"
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    for (i, (name, url)) in endpoints.iter().enumerate() {
        let status = Client::new(url).get_raw("/v1/status").await?.json()?;
        ensure!(
            status["peer_tls"]["mode"] == "mutual-tls",
            "{name}: {}",
            status["peer_tls"]
        );
        // A forged heartbeat in plain HTTP, to the peer listener and to the client API.
        let peer = format!(
            "http://127.0.0.1:{}/v1/replication/heartbeat",
            base + 100 + i as u16
        );
        let r = http.post(&peer).body(vec![1u8, 2, 3]).send().await;
        ensure!(
            r.is_err(),
            "{name}'s peer listener answered plain HTTP: {r:?}"
        );
        let r = http
            .post(format!("{url}/v1/replication/heartbeat"))
            .body(vec![1u8, 2, 3])
            .send()
            .await?;
        ensure!(
            r.status() == reqwest::StatusCode::NOT_FOUND,
            "{name}'s client API serves the peer routes: {}",
            r.status()
        );
    }

    // Read-your-writes across the demo's longest link (us-east-1 -> ap-southeast-1, ~111 ms one
    // way): a read right after the write, with the write's session token, waits for it instead
    // of missing it (docs/design/session-consistency.md).
    let w = Client::new(&endpoints[0].1)
        .kv_put_raw("sessions", "demo-session", "mine", None)
        .await?
        .expect(200)?;
    let token = w
        .header("x-atoll-session")
        .ok_or_else(|| anyhow!("a write answers no X-Atoll-Session"))?
        .to_string();
    let r = Client::new(&endpoints[2].1)
        .request_raw(
            reqwest::Method::GET,
            "/v1/kv/sessions/demo-session?wait_ms=5000",
            &[("x-atoll-session", token.as_str())],
            Vec::new(),
        )
        .await?;
    ensure!(
        r.status == 200 && r.body == b"mine",
        "a session read in ap-southeast-1 of a write in us-east-1: {} {}",
        r.status,
        r.text()
    );

    // The dashboard URL the demo prints works as printed: the page loads, and the token in its
    // fragment (which a browser keeps to itself) opens the global status of all three regions.
    let dash = demo.line_starting("dashboard: ")?;
    let url = dash
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no URL in `{dash}`"))?;
    let (page, token) = url
        .split_once("#token=")
        .ok_or_else(|| anyhow!("no #token= in `{url}`"))?;
    let html = http.get(page).send().await?;
    ensure!(html.status() == 200, "{page}: {}", html.status());
    ensure!(
        html.text().await?.contains("/dashboard/app.js"),
        "{page} is the dashboard"
    );
    let admin = page.trim_end_matches("/dashboard");
    let global: serde_json::Value = http
        .get(format!("{admin}/v1/global/status"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        global["regions"].as_array().map(Vec::len) == Some(3),
        "the dashboard's status: {global}"
    );

    // The strong and ownership commands the demo prints work exactly as printed (`atoll` on
    // the PATH): the first booking succeeds, the second is refused.
    let book_alice = demo.line_starting("  atoll kv put seats 12A alice")?;
    let book_bob = demo.line_starting("  atoll kv put seats 12A bob")?;
    let rehome = loop {
        let l = demo.line_starting("  ATOLL_ADMIN_TOKEN=")?;
        if l.contains("atoll keyspace rehome profiles") {
            break l;
        }
    };
    let put = demo
        .stdout
        .lock()
        .map_err(|_| anyhow!("stdout lock"))?
        .iter()
        .find(|l| l.starts_with("  atoll kv put profiles"))
        .cloned()
        .ok_or_else(|| anyhow!("no `atoll kv put profiles` line\n{}", demo.output()))?;
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let link = bin_dir.join("atoll");
    if !link.exists() {
        std::os::unix::fs::symlink(BIN, &link)?;
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for line in [&put, &rehome] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(line.trim())
            .env("PATH", &path)
            .env_remove("ATOLL_ADMIN_TOKEN")
            .output()?;
        ensure!(
            out.status.success(),
            "`{}` failed: {}{}",
            line.trim(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    }
    let alice = Command::new("sh")
        .arg("-c")
        .arg(book_alice.trim())
        .env("PATH", &path)
        .output()?;
    ensure!(
        alice.status.success(),
        "{book_alice}: {}",
        String::from_utf8_lossy(&alice.stderr)
    );
    let bob = Command::new("sh")
        .arg("-c")
        .arg(book_bob.trim())
        .env("PATH", &path)
        .output()?;
    ensure!(
        !bob.status.success()
            && String::from_utf8_lossy(&bob.stderr).contains("ATOLL-REVISION-MISMATCH"),
        "{book_bob}: {} {}",
        String::from_utf8_lossy(&bob.stdout),
        String::from_utf8_lossy(&bob.stderr)
    );
    println!(
        "{}\n{}",
        String::from_utf8_lossy(&alice.stdout).trim(),
        String::from_utf8_lossy(&bob.stderr).trim()
    );
    let status = Client::new(&endpoints[0].1)
        .get_raw("/v1/status")
        .await?
        .json()?;
    ensure!(
        status["homes"]["keyspaces"]["profiles"]["moves"][0]["outcome"] == "handed",
        "the printed rehome is reported: {}",
        status["homes"]
    );

    // The printed watch, run as printed, shows the flag change the printed `set add` makes.
    let printed = |prefix: &str| -> Result<String> {
        demo.stdout
            .lock()
            .map_err(|_| anyhow!("stdout lock"))?
            .iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
            .ok_or_else(|| anyhow!("no line starting with {prefix:?}\n{}", demo.output()))
    };
    // The printed redis-cli commands, run as printed: a SET over RESP in one region, the GET in
    // another answers it once replicated.
    let resp_set = printed("  redis-cli -p")?;
    let resp_get = demo
        .stdout
        .lock()
        .map_err(|_| anyhow!("stdout lock"))?
        .iter()
        .filter(|l| l.starts_with("  redis-cli -p"))
        .nth(1)
        .cloned()
        .ok_or_else(|| anyhow!("no second redis-cli line\n{}", demo.output()))?;
    let sh = |line: &str| -> Result<String> {
        let out = Command::new("sh").arg("-c").arg(line.trim()).output()?;
        ensure!(out.status.success(), "`{}` failed: {:?}", line.trim(), out);
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    ensure!(sh(&resp_set)? == "OK", "{resp_set}");
    wait_until(Duration::from_secs(30), "the printed RESP GET", || {
        sh(&resp_get).is_ok_and(|v| v == "token-3")
    })?;

    // The printed expiring session and rate limit, run as printed: the session's TTL is read in
    // another region once replicated; the rate limit counts the first region's admission in the
    // second, which then refuses (exit 2, nothing counted).
    let containing = |needle: &str| -> Result<String> {
        demo.stdout
            .lock()
            .map_err(|_| anyhow!("stdout lock"))?
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .ok_or_else(|| anyhow!("no line containing {needle:?}\n{}", demo.output()))
    };
    let ttl_set = containing("SET sessions:dave")?;
    let ttl_get = containing("TTL sessions:dave")?;
    ensure!(sh(&ttl_set)? == "OK", "{ttl_set}");
    wait_until(Duration::from_secs(30), "the printed TTL", || {
        sh(&ttl_get).is_ok_and(|v| v.parse::<i64>().is_ok_and(|s| (1..=30).contains(&s)))
    })?;
    let hits: Vec<String> = demo
        .stdout
        .lock()
        .map_err(|_| anyhow!("stdout lock"))?
        .iter()
        .filter(|l| l.starts_with("  atoll ratelimit hit api-quota"))
        .cloned()
        .collect();
    let [first, second] = hits.as_slice() else {
        bail!(
            "expected two printed `atoll ratelimit hit` lines\n{}",
            demo.output()
        );
    };
    let run = |line: &str| -> Result<std::process::Output> {
        // The line as printed, without its trailing comment (sh drops it anyway).
        Ok(Command::new("sh")
            .arg("-c")
            .arg(line.trim())
            .env("PATH", &path)
            .output()?)
    };
    let out = run(first)?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("allowed: 2 of 5 left"),
        "{first}: {out:?}"
    );
    let second_at = second
        .split_whitespace()
        .skip_while(|w| *w != "--endpoint")
        .nth(1)
        .ok_or_else(|| anyhow!("no --endpoint in `{second}`"))?
        .to_string();
    let peek = format!("atoll ratelimit get api-quota user-1 --endpoint {second_at}");
    wait_until(
        Duration::from_secs(30),
        "the admission to replicate",
        || run(&peek).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("2 of 5 left")),
    )?;
    let out = run(second)?;
    ensure!(
        out.status.code() == Some(2)
            && String::from_utf8_lossy(&out.stdout).contains("denied: 2 of 5 left"),
        "{second}: {out:?}"
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());

    let watch_line = printed("  atoll watch flags")?;
    let add_line = printed("  atoll set add flags beta")?;
    let watch_at = watch_line
        .split_whitespace()
        .skip_while(|w| *w != "--endpoint")
        .nth(1)
        .ok_or_else(|| anyhow!("no --endpoint in `{watch_line}`"))?
        .to_string();
    // `exec`: the shell becomes the printed command, so killing it stops the watch.
    let mut watcher = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {}", watch_line.trim()))
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .spawn()?;
    let watched = async {
        let metrics = Client::new(&watch_at);
        wait_until_async(DEADLINE, "the printed watch to open", || async {
            metrics
                .get_raw("/metrics")
                .await
                .ok()
                .and_then(|r| String::from_utf8(r.body).ok())
                .is_some_and(|t| {
                    t.lines()
                        .any(|l| l.starts_with("atoll_watchers ") && !l.ends_with(" 0"))
                })
        })
        .await?;
        let out = Command::new("sh")
            .arg("-c")
            .arg(add_line.trim())
            .env("PATH", &path)
            .output()?;
        ensure!(out.status.success(), "`{}`: {out:?}", add_line.trim());
        let stdout = watcher.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let seen = rx
            .recv_timeout(DEADLINE)
            .map_err(|_| anyhow!("the printed watch printed nothing within {DEADLINE:?}"))?;
        ensure!(
            seen.starts_with("flags/beta: members [") && seen.contains("dark-mode"),
            "the watch printed `{seen}`"
        );
        println!("{seen}");
        Ok(())
    }
    .await;
    let _ = watcher.kill();
    let _ = watcher.wait();
    watched?;

    // A write in one region shows up in the other two.
    let (value, key) = ("written in us-east-1", "demo-key");
    let ack = Client::new(&endpoints[0].1)
        .kv_put("sessions", key, value, None)
        .await?;
    ensure!(ack.region == REGIONS[0], "{ack:?}");
    let started = Instant::now();
    for (name, url) in &endpoints[1..] {
        Client::new(url)
            .wait_value("sessions", key, value, DEADLINE)
            .await
            .with_context(|| format!("{key} to replicate to {name}"))?;
    }
    println!("replicated to both in {:?}", started.elapsed());

    // Ctrl-C: every region stops, the demo exits 0.
    demo.ctrl_c()?;
    for (name, url) in &endpoints {
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("endpoint {url}"))?;
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => {
                bail!("{name}'s port {addr} should refuse connections after the demo: {other:?}")
            }
        }
    }
    // The rest of its output (the pipe closes with the process).
    let mut rest = Vec::new();
    while let Ok(line) = demo.lines.recv_timeout(Duration::from_secs(5)) {
        rest.push(line);
    }
    ensure!(
        rest.iter().any(|l| l == "stopped."),
        "no `stopped.` line after SIGINT:\n{}",
        demo.output()
    );
    Ok(())
}

/// The demo's stderr so far.
fn stderr_of(demo: &Demo) -> String {
    demo.stderr.lock().map(|s| s.clone()).unwrap_or_default()
}

/// The demo's control API (`/v1/demo/regions`), called with a bearer token or none; every call
/// answers `(status, body)`.
struct Control {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port_base + 91>`.
    base: String,
}

impl Control {
    /// `GET /v1/demo/regions`.
    async fn regions(&self, token: Option<&str>) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}/v1/demo/regions", self.base);
        self.call(reqwest::Method::GET, &url, token).await
    }

    /// `POST /v1/demo/regions/{name}/{what}` (`kill`, `restart`, `stop`).
    async fn act(
        &self,
        name: &str,
        what: &str,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}/v1/demo/regions/{name}/{what}", self.base);
        self.call(reqwest::Method::POST, &url, token).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }
}

/// The region `name` in a `GET /v1/demo/regions` answer.
fn region_in<'a>(list: &'a serde_json::Value, name: &str) -> Result<&'a serde_json::Value> {
    list["regions"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .ok_or_else(|| anyhow!("no region {name} in {list}"))
}

/// The pid of region `name` in a `GET /v1/demo/regions` answer.
fn pid_in(list: &serde_json::Value, name: &str) -> Result<u32> {
    let r = region_in(list, name)?;
    r["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| anyhow!("no pid for {name}: {r}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_survives_a_dead_region_and_restarts_it_on_request() {
    let dir = ok(test_dir("demo-survive").map_err(Into::into));
    ok(survive_scenario(&dir).await);
}

async fn survive_scenario(dir: &TestDir) -> Result<()> {
    let (mut demo, base, endpoints) = start_demo(dir)?;
    let pid = demo.pid().expect("running");
    demo.regions = children_of(pid);
    // Everything is printed once the table is: the discovery file was written before it.
    demo.line_starting("Press Ctrl-C to stop.")?;

    // The discovery file: where everything is, readable by its owner only.
    let path = demo.tmp_dir.join(format!("atoll-demo-{base}.json"));
    let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        ensure!(
            meta.permissions().mode() & 0o777 == 0o600,
            "{} has mode {:o}",
            path.display(),
            meta.permissions().mode()
        );
    }
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let at = |off: u16| format!("http://127.0.0.1:{}", base + off);
    ensure!(
        d["version"] == 1 && d["port_base"] == base && d["pid"] == pid,
        "{d}"
    );
    ensure!(d["model"] == "active-active", "{d}");
    ensure!(
        d["control"] == at(91)
            && d["router_admin"] == at(81)
            && d["proxy"] == at(80)
            && d["link_control"] == at(90),
        "{d}"
    );
    let listed: Vec<(String, String)> = d["regions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["name"].as_str().unwrap_or_default().to_string(),
                        r["api"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ensure!(listed == endpoints, "{listed:?} vs {endpoints:?}");
    ensure!(
        std::path::Path::new(d["config"].as_str().unwrap_or_default()).is_file(),
        "{d}"
    );
    let token = d["token"].as_str().unwrap_or_default().to_string();
    ensure!(!token.is_empty(), "{d}");
    // A second demo on the same port base refuses to start while this one lives.
    let second = Command::new(BIN)
        .args(["demo", "--port-base", &base.to_string()])
        .env("TMPDIR", &demo.tmp_dir)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        !second.status.success()
            && String::from_utf8_lossy(&second.stderr).contains("already runs on port base"),
        "{second:?}"
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()?;
    let ctl = Control { http, base: at(91) };

    // Without the token, or with another one, nothing is served, and nothing is killed.
    for t in [None, Some("demo-0000000000000000"), Some("")] {
        let (status, body) = ctl.regions(t).await?;
        ensure!(
            status == 401 && body["error"]["code"] == "ATOLL-UNAUTHORIZED",
            "{t:?}: {status} {body}"
        );
        let (status, _) = ctl.act("us-east-1", "kill", t).await?;
        ensure!(status == 401, "{t:?}: kill answered {status}");
    }
    let (status, list) = ctl.regions(Some(&token)).await?;
    ensure!(status == 200, "{status} {list}");
    for name in REGIONS {
        let r = region_in(&list, name)?;
        ensure!(
            r["state"] == "running" && r["pid"].is_u64() && r["restarts"] == 0,
            "{r}"
        );
    }
    // An unknown region: 404 with atoll's error body.
    let (status, body) = ctl.act("mars-north-1", "kill", Some(&token)).await?;
    ensure!(
        status == 404
            && body["error"]["code"] == "ATOLL-UNKNOWN-REGION"
            && body["error"]["message"].is_string()
            && body["error"]["hint"].is_string()
            && body["error"]["retryable"] == false,
        "{status} {body}"
    );

    // Kill us-east-1 as a crash would.
    let old_pid = pid_in(&list, "us-east-1")?;
    let (status, killed) = ctl.act("us-east-1", "kill", Some(&token)).await?;
    ensure!(
        status == 200
            && killed["state"] == "killed"
            && killed["pid"].is_null()
            && killed["exit"] == "signal 9",
        "{status} {killed}"
    );
    ensure!(!alive(old_pid), "us-east-1 ({old_pid}) is still alive");
    // The demo goes on: the other two take writes, the router serves through its proxy.
    let (key, value) = ("written-while-us-east-1-was-down", "v1");
    for (name, url) in &endpoints[1..] {
        let ack = Client::new(url)
            .kv_put("sessions", &format!("{key}-{name}"), value, None)
            .await?;
        ensure!(ack.region == *name, "{ack:?}");
    }
    Client::new(&endpoints[1].1)
        .kv_put("sessions", key, value, None)
        .await?;
    let proxy = Client::new(&at(80));
    // The router's proxy serves the key.
    proxy.wait_value("sessions", key, value, DEADLINE).await?;
    let routed = proxy
        .kv_put("sessions", "through-the-proxy", "v", None)
        .await?;
    ensure!(routed.region != "us-east-1", "{routed:?}");
    ensure!(
        demo.child
            .as_mut()
            .map(|c| c.try_wait().ok().flatten().is_none())
            == Some(true),
        "the demo exited after a region was killed\n{}",
        demo.output()
    );
    let (_, list) = ctl.regions(Some(&token)).await?;
    ensure!(
        region_in(&list, "us-east-1")?["state"] == "killed",
        "{list}"
    );
    wait_until(DEADLINE, "the demo to report the kill", || {
        stderr_of(&demo).contains("region us-east-1 killed on request (signal 9)")
    })?;

    // Restart it with the command the demo printed (the discovery file tells it where to go).
    let printed = demo
        .stdout
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.trim().to_string())
        .find(|l| l.starts_with("atoll demo ctl restart us-east-1"))
        .ok_or_else(|| anyhow!("no `atoll demo ctl restart` printed\n{}", demo.output()))?;
    let words: Vec<&str> = printed.split_whitespace().skip(1).collect();
    let out = Command::new(BIN)
        .args(&words)
        .env("TMPDIR", &demo.tmp_dir)
        .stdin(Stdio::null())
        .output()?;
    ensure!(out.status.success(), "`{printed}`: {out:?}");
    let (_, list) = ctl.regions(Some(&token)).await?;
    let r = region_in(&list, "us-east-1")?;
    let new_pid = pid_in(&list, "us-east-1").context("after the restart")?;
    demo.regions.push(new_pid);
    ensure!(
        r["state"] == "running" && r["restarts"] == 1 && new_pid != old_pid,
        "{r}"
    );
    // It comes back on the same data and links, and catches up with what it missed.
    let east = Client::new(&endpoints[0].1);
    east.wait_value("sessions", key, value, DEADLINE)
        .await
        .context("us-east-1 to catch up after its restart")?;
    east.kv_put("sessions", "after-restart", "v2", None).await?;
    // A write in the restarted region replicates.
    Client::new(&endpoints[1].1)
        .wait_value("sessions", "after-restart", "v2", DEADLINE)
        .await?;

    // A region that dies without being asked is reported with the command that restarts it.
    let ap_pid = libc::pid_t::try_from(pid_in(&list, "ap-southeast-1")?)?;
    // SAFETY: kill(2) on a region process of this demo, alive a moment ago (the demo holds it
    // unreaped until it sees the exit).
    unsafe {
        libc::kill(ap_pid, libc::SIGKILL);
    }
    let expected = format!(
        "region ap-southeast-1 exited (signal 9); the others keep running — restart it with: atoll demo ctl restart ap-southeast-1 --port-base {base}"
    );
    wait_until(DEADLINE, "the demo to report the dead region", || {
        stderr_of(&demo).contains(&expected)
    })?;
    let (_, list) = ctl.regions(Some(&token)).await?;
    ensure!(
        region_in(&list, "ap-southeast-1")?["state"] == "exited",
        "{list}"
    );
    let (status, r) = ctl.act("ap-southeast-1", "restart", Some(&token)).await?;
    ensure!(status == 200 && r["state"] == "running", "{status} {r}");
    if let Some(p) = r["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
        demo.regions.push(p);
    }

    // A graceful stop on request, then Ctrl-C: a region stopped on request does not make the
    // demo's own stop unclean.
    let (status, r) = ctl.act("eu-west-1", "stop", Some(&token)).await?;
    ensure!(
        status == 200 && r["state"] == "stopped" && r["exit"] == "exit code 0",
        "{status} {r}"
    );
    demo.ctrl_c()?;
    ensure!(!path.exists(), "{} outlived the demo", path.display());
    Ok(())
}

/// Runs `atoll` with `args` against the demo (its TMPDIR), within `timeout`: its output.
fn atoll_within(demo: &Demo, args: &[&str], timeout: Duration) -> Result<std::process::Output> {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("TMPDIR", &demo.tmp_dir);
    atoll_testkit::run_with_timeout(cmd, timeout)
}

/// `atoll demo ctl ARGS --port-base BASE`, within [`DEADLINE`].
fn demo_ctl(demo: &Demo, base_flag: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut all = vec!["demo", "ctl"];
    all.extend_from_slice(args);
    all.extend(["--port-base", base_flag]);
    atoll_within(demo, &all, DEADLINE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_added_to_the_running_demo_converges_takes_writes_and_is_removed_again() {
    let dir = ok(test_dir("demo-add-region").map_err(Into::into));
    ok(add_region_scenario(&dir).await);
}

/// `atoll demo ctl add-region sa-east-1`, run as the demo prints it: the new region holds what
/// the others held before it came, its writes reach them, `atoll demo ctl ls` lists it; then
/// `atoll demo ctl remove-region sa-east-1` (see [`remove_region_part`]), and the demo's Ctrl-C
/// stops it, still running though removed, with the rest.
async fn add_region_scenario(dir: &TestDir) -> Result<()> {
    const NEW: &str = "sa-east-1";
    /// Starting the region, reloading the others and the admission (the command's own bound
    /// is 60 s for the admission), with room to spare.
    const ADD_DEADLINE: Duration = Duration::from_secs(100);
    let (mut demo, base, endpoints) = start_demo(dir)?;
    let pid = demo.pid().expect("running");
    demo.regions = children_of(pid);
    demo.line_starting("Press Ctrl-C to stop.")?;

    // Data written before the region exists.
    let us = Client::new(&endpoints[0].1);
    for i in 0..5 {
        us.kv_put("sessions", &format!("before-{i}"), format!("v{i}"), None)
            .await?;
    }
    us.counter_add("ratelimits", "hits", 7).await?;

    // The command the demo printed, as printed (without its comment).
    let printed = demo
        .stdout
        .lock()
        .map_err(|_| anyhow!("stdout lock"))?
        .iter()
        .map(|l| l.trim().to_string())
        .find(|l| l.starts_with(&format!("atoll demo ctl add-region {NEW}")))
        .ok_or_else(|| anyhow!("no `atoll demo ctl add-region` printed\n{}", demo.output()))?;
    let command = printed.split('#').next().unwrap_or_default();
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    ensure!(
        words
            == [
                "demo",
                "ctl",
                "add-region",
                NEW,
                "--port-base",
                &base.to_string()
            ],
        "{printed}"
    );
    let started = Instant::now();
    // A port of the new region's (base + 3, 13, 103) may be held for a moment by another test
    // running beside this one: the command then refuses and changes nothing, and is run again
    // until the port is free (within the deadline). Any other failure fails the test.
    let out = loop {
        let out = atoll_within(&demo, &words, ADD_DEADLINE)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains("is taken") || started.elapsed() > ADD_DEADLINE
        {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "`{command}`: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}(in {:?})", started.elapsed());
    let new_url = format!("http://127.0.0.1:{}", base + 3);
    for needle in [
        format!("added region {NEW} in "),
        format!("client API  {new_url}"),
        format!("RESP        127.0.0.1:{}", base + 13),
        format!("peer        127.0.0.1:{} (mutual TLS", base + 103),
        "directly, not through atoll link".to_string(),
    ] {
        ensure!(stdout.contains(&needle), "no {needle:?} in\n{stdout}");
    }
    // The command answers once the region is admitted: it takes writes at once.
    let sa = Client::new(&new_url);
    let status = sa.status().await?;
    let m = &status["membership"];
    ensure!(
        m["admitted"] == true && m["voter"] == false && m["waiting_for"] == serde_json::json!([]),
        "{m}"
    );
    ensure!(
        status["peer_tls"]["mode"] == "mutual-tls",
        "{}",
        status["peer_tls"]
    );
    // The founding regions list it.
    for (name, url) in &endpoints {
        let s = Client::new(url).status().await?;
        ensure!(
            s["membership"]["regions"]
                .as_array()
                .is_some_and(|r| r.iter().any(|v| v == NEW)),
            "{name}: {}",
            s["membership"]
        );
    }

    // What the others held before it came has converged there.
    for i in 0..5 {
        sa.wait_value(
            "sessions",
            &format!("before-{i}"),
            format!("v{i}"),
            DEADLINE,
        )
        .await
        .with_context(|| format!("before-{i} at {NEW}"))?;
    }
    wait_until_async(DEADLINE, "the counter at the new region", || async {
        sa.counter_get("ratelimits", "hits").await.ok() == Some(7)
    })
    .await?;

    // Its writes reach every founding region, and it answers for itself.
    let ack = sa.kv_put("sessions", "from-sa", "hola", None).await?;
    ensure!(ack.region == NEW, "{ack:?}");
    sa.counter_add("ratelimits", "hits", 5).await?;
    for (name, url) in &endpoints {
        let c = Client::new(url);
        c.wait_value("sessions", "from-sa", "hola", DEADLINE)
            .await
            .with_context(|| format!("from-sa at {name}"))?;
        wait_until_async(DEADLINE, "the counter at a founding region", || async {
            c.counter_get("ratelimits", "hits").await.ok() == Some(12)
        })
        .await
        .with_context(|| format!("hits at {name}"))?;
    }
    // What needs a consensus group is refused there, naming the voters.
    let r = sa.kv_put_raw("seats", "12A", "x", None).await?;
    ensure!(
        r.status == 421 && r.error_code().as_deref() == Some("ATOLL-NOT-A-VOTER"),
        "a strong write at the replica: {} {}",
        r.status,
        r.text()
    );

    // `atoll demo ctl ls` lists it, running at its address.
    let base_flag = base.to_string();
    let ls = demo_ctl(&demo, &base_flag, &["ls"])?;
    let listed = String::from_utf8_lossy(&ls.stdout).to_string();
    ensure!(ls.status.success(), "{ls:?}");
    let row = listed
        .lines()
        .find(|l| l.starts_with(NEW))
        .ok_or_else(|| anyhow!("`atoll demo ctl ls` does not list {NEW}:\n{listed}"))?;
    let cols: Vec<&str> = row.split_whitespace().collect();
    ensure!(
        cols.get(1) == Some(&"running") && cols.last() == Some(&new_url.as_str()),
        "{row}"
    );
    let new_pid: u32 = cols
        .get(2)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no pid in `{row}`"))?;
    demo.regions.push(new_pid);
    ensure!(alive(new_pid), "{NEW} ({new_pid}) is not running");
    // The discovery file names it for other tools.
    let path = demo.tmp_dir.join(format!("atoll-demo-{base}.json"));
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    ensure!(
        d["regions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["name"] == NEW && r["api"] == new_url)),
        "{d}"
    );

    // A second add of the same name, and a name that is no region name, are refused clearly;
    // the control route needs the token like the others.
    let again = demo_ctl(&demo, &base_flag, &["add-region", NEW])?;
    let err = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && err.contains("ATOLL-REGION-EXISTS"),
        "{again:?}"
    );
    let ctl = Control {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: format!("http://127.0.0.1:{}", base + 91),
    };
    let (status, body) = ctl.act("Mars_1", "add", d["token"].as_str()).await?;
    ensure!(
        status == 400
            && body["error"]["code"] == "ATOLL-BAD-REQUEST"
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not a valid region name")),
        "{status} {body}"
    );
    let (status, body) = ctl.act("eu-central-1", "add", None).await?;
    ensure!(
        status == 401 && body["error"]["code"] == "ATOLL-UNAUTHORIZED",
        "{status} {body}"
    );
    ensure!(
        !demo.data_dir.join("eu-central-1").exists(),
        "an unauthorized add started something"
    );

    // ---- Removing it again, as the demo printed (`docs/design/region-removal.md`).
    remove_region_part(
        &mut demo,
        base,
        &endpoints,
        &ctl,
        d["token"].as_str(),
        new_pid,
    )
    .await?;

    // Ctrl-C stops the added (and removed, still running) region with the others (`ctrl_c`
    // checks every pid).
    demo.ctrl_c()?;
    Ok(())
}

/// `atoll demo ctl remove-region sa-east-1` after `add-region sa-east-1`: refusals first (a
/// founding region, an unknown name, no token: nothing changes), then the printed command; every
/// founding region shows sa-east-1 settled with the same count of its writes, writes keep
/// flowing among them (also after a restart of one), the removed region (kept running) refuses
/// writes with 410 and says `removed`, and it can be neither removed again, added again nor
/// restarted.
async fn remove_region_part(
    demo: &mut Demo,
    base: u16,
    endpoints: &Endpoints,
    ctl: &Control,
    token: Option<&str>,
    removed_pid: u32,
) -> Result<()> {
    const NEW: &str = "sa-east-1";
    /// The reload, the settling (the command's own bound is 60 s) and the removed region
    /// learning it, with room to spare.
    const REMOVE_DEADLINE: Duration = Duration::from_secs(100);
    let base_flag = base.to_string();
    let new_url = format!("http://127.0.0.1:{}", base + 3);
    let config_path = demo.data_dir.join("atoll.toml");
    let config_before = std::fs::read_to_string(&config_path)?;
    let sa = Client::new(&new_url);

    // A founding region is a voter: refused, saying why, and nothing changes.
    let refused = demo_ctl(demo, &base_flag, &["remove-region", "us-east-1"])?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && err.contains("ATOLL-REMOVE-REFUSED")
            && err.contains("us-east-1 is a voter")
            && err.contains("only a region added with voter = false")
            && err.contains("founding regions"),
        "{refused:?}"
    );
    // An unknown name, and a request without the token, are refused too.
    let (status, body) = ctl.act("eu-central-1", "remove", token).await?;
    ensure!(
        status == 404 && body["error"]["code"] == "ATOLL-UNKNOWN-REGION",
        "{status} {body}"
    );
    let (status, body) = ctl.act(NEW, "remove", None).await?;
    ensure!(
        status == 401 && body["error"]["code"] == "ATOLL-UNAUTHORIZED",
        "{status} {body}"
    );
    ensure!(
        std::fs::read_to_string(&config_path)? == config_before,
        "a refused removal changed the config"
    );
    for (name, url) in endpoints {
        let s = Client::new(url).status().await?;
        let m = &s["membership"];
        ensure!(
            m["removed"] == serde_json::json!([])
                && m["regions"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|v| v == NEW)),
            "{name} after refused removals: {m}"
        );
    }
    // While a founding region is down the removal could not settle: refused, naming it and how
    // to start it; then it is restarted.
    let on_eu = |what: &'static str| {
        let base_flag = base_flag.clone();
        move |demo: &Demo| demo_ctl(demo, &base_flag, &[what, "eu-west-1"])
    };
    let o = on_eu("kill")(demo)?;
    ensure!(o.status.success(), "kill eu-west-1: {o:?}");
    let refused = demo_ctl(demo, &base_flag, &["remove-region", NEW])?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && err.contains("ATOLL-REMOVE-REFUSED")
            && err.contains("region eu-west-1 is not running")
            && err.contains(&format!(
                "atoll demo ctl restart eu-west-1 --port-base {base_flag}"
            )),
        "{refused:?}"
    );
    let o = on_eu("restart")(demo)?;
    ensure!(o.status.success(), "restart eu-west-1: {o:?}");
    let list = ctl.regions(token).await?.1;
    demo.regions.push(pid_in(&list, "eu-west-1")?);
    ensure!(
        std::fs::read_to_string(&config_path)? == config_before,
        "a refused removal changed the config"
    );
    ensure!(
        sa.status().await?["membership"]["removed_by"].is_null(),
        "{NEW} was told it was removed by a refused removal"
    );

    // The command the demo printed, as printed (without its comment).
    let printed = demo
        .stdout
        .lock()
        .map_err(|_| anyhow!("stdout lock"))?
        .iter()
        .map(|l| l.trim().to_string())
        .find(|l| l.starts_with(&format!("atoll demo ctl remove-region {NEW}")))
        .ok_or_else(|| {
            anyhow!(
                "no `atoll demo ctl remove-region` printed\n{}",
                demo.output()
            )
        })?;
    let command = printed.split('#').next().unwrap_or_default();
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    ensure!(
        words
            == [
                "demo",
                "ctl",
                "remove-region",
                NEW,
                "--port-base",
                &base_flag
            ],
        "{printed}"
    );
    let started = Instant::now();
    let out = atoll_within(demo, &words, REMOVE_DEADLINE)?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "`{command}`: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}(in {:?})", started.elapsed());

    // Every founding region shows it removed and settled, holding the same count of its writes
    // (it wrote at least `from-sa` and a counter increment), and no longer lists it.
    let mut held = Vec::new();
    for (name, url) in endpoints {
        let s = Client::new(url).status().await?;
        let m = &s["membership"];
        let entry = m["removed"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["region"] == NEW))
            .ok_or_else(|| anyhow!("{name} does not show {NEW} removed: {m}"))?;
        ensure!(
            entry["settled"] == true && entry["effective"] == true,
            "{name}: {entry}"
        );
        ensure!(
            m["regions"]
                .as_array()
                .is_some_and(|r| !r.iter().any(|v| v == NEW)),
            "{name} still lists {NEW}: {m}"
        );
        held.push(entry["applied_seq"].as_u64().unwrap_or(0));
    }
    ensure!(
        held[0] >= 2 && held.iter().all(|h| *h == held[0]),
        "{NEW}'s writes held: {held:?}"
    );
    for needle in [
        format!("removed region {NEW}: settled at every region after "),
        format!("the cluster holds {} of them", held[0]),
        format!("{NEW} keeps running"),
        "cannot be added again".to_string(),
    ] {
        ensure!(stdout.contains(&needle), "no {needle:?} in\n{stdout}");
    }

    // The removed region runs on: once it has learnt it was removed (the command waited for
    // that), it refuses writes with 410 and /healthz says `removed`.
    wait_until_async(
        DEADLINE,
        "the removed region learns it was removed",
        || async {
            sa.status()
                .await
                .is_ok_and(|s| s["membership"]["removed_by"].is_object())
        },
    )
    .await?;
    let r = sa
        .kv_put_raw("sessions", "after-removal", "x", None)
        .await?;
    ensure!(
        r.status == 410 && r.error_code().as_deref() == Some("ATOLL-REGION-REMOVED"),
        "a write at the removed region: {} {}",
        r.status,
        r.text()
    );
    let h = sa.get_raw("/healthz").await?;
    ensure!(
        h.status == 503 && h.json()?["status"] == "removed",
        "/healthz of the removed region: {} {}",
        h.status,
        h.text()
    );
    ensure!(
        stdout.contains("refused: 410 ATOLL-REGION-REMOVED"),
        "{stdout}"
    );

    // Writes keep flowing among the founding regions.
    let ack = Client::new(&endpoints[1].1)
        .kv_put("sessions", "after-removal", "still-here", None)
        .await?;
    ensure!(ack.region == endpoints[1].0, "{ack:?}");
    for (name, url) in endpoints {
        Client::new(url)
            .wait_value("sessions", "after-removal", "still-here", DEADLINE)
            .await
            .with_context(|| format!("after-removal at {name}"))?;
    }

    // `ls` marks it removed (still running), the founding regions members; the discovery file
    // no longer names it.
    let ls = demo_ctl(demo, &base_flag, &["ls"])?;
    let listed = String::from_utf8_lossy(&ls.stdout).to_string();
    ensure!(ls.status.success(), "{ls:?}");
    for (name, want) in [
        (NEW, "removed"),
        ("us-east-1", "member"),
        ("ap-southeast-1", "member"),
    ] {
        let row = listed
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("`atoll demo ctl ls` does not list {name}:\n{listed}"))?;
        let cols: Vec<&str> = row.split_whitespace().collect();
        ensure!(
            cols.get(1) == Some(&"running") && cols.iter().rev().nth(1) == Some(&want),
            "{row}"
        );
    }
    let path = demo.tmp_dir.join(format!("atoll-demo-{base}.json"));
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    ensure!(
        d["regions"]
            .as_array()
            .is_some_and(|a| a.len() == 3 && !a.iter().any(|r| r["name"] == NEW)),
        "{d}"
    );

    // Removed again, added again, restarted: each refused, saying why.
    for (args, needle) in [
        (
            vec!["remove-region", NEW],
            "removed from the cluster already",
        ),
        (
            vec!["add-region", NEW],
            "a removed region's name is never used again",
        ),
        (vec!["restart", NEW], "so it is not restarted"),
    ] {
        let o = demo_ctl(demo, &base_flag, &args)?;
        let err = String::from_utf8_lossy(&o.stderr);
        ensure!(
            !o.status.success() && err.contains("ATOLL-REGION-REMOVED") && err.contains(needle),
            "{args:?}: {o:?}"
        );
    }
    ensure!(
        alive(removed_pid),
        "the removed region's process ({removed_pid}) is gone"
    );

    // A founding region restarts on the config without it, and takes part in replication.
    let o = demo_ctl(demo, &base_flag, &["restart", "ap-southeast-1"])?;
    ensure!(o.status.success(), "restart ap-southeast-1: {o:?}");
    let list = ctl.regions(token).await?.1;
    demo.regions.push(pid_in(&list, "ap-southeast-1")?);
    let ap = Client::new(&endpoints[2].1);
    let ack = ap.kv_put("sessions", "after-restart", "ap", None).await?;
    ensure!(ack.region == "ap-southeast-1", "{ack:?}");
    Client::new(&endpoints[0].1)
        .wait_value("sessions", "after-restart", "ap", DEADLINE)
        .await
        .context("after-restart at us-east-1")?;
    let s = ap.status().await?;
    ensure!(
        s["membership"]["removed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["region"] == NEW)),
        "ap-southeast-1 forgot the removal across its restart: {}",
        s["membership"]
    );
    Ok(())
}
