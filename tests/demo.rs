//! End-to-end: `atoll demo` starts three replicating regions on consecutive ports, prints their
//! endpoints once replication is established between every pair (every region's `/healthz` says
//! so at that moment), replicates a write from one region to the other two over mutual TLS (a
//! peer listener refuses plain HTTP, and the client API serves no peer route), and on SIGINT
//! stops every region and exits 0, leaving no process and no listening port behind.

mod common;

use anyhow::{Context, Result, anyhow, bail, ensure};
use atoll_testkit::{Client, TestDir, free_port_range, test_dir, wait_until_async};
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
    /// The region processes it started (children of the demo).
    regions: Vec<u32>,
    data_dir: std::path::PathBuf,
}

impl Demo {
    fn spawn(base: u16, data_dir: &std::path::Path) -> Result<Demo> {
        let mut child = Command::new(BIN)
            .args(["demo", "--port-base", &base.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("NO_COLOR", "1")
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
        std::thread::spawn(move || {
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
            regions: Vec::new(),
            data_dir: data_dir.to_path_buf(),
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

    /// The regions' logs (the demo writes `<data-dir>/<region>.log`).
    fn region_logs(&self) -> String {
        REGIONS
            .iter()
            .map(|r| {
                let p = self.data_dir.join(format!("{r}.log"));
                format!(
                    "---- {} ----\n{}",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
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

async fn demo_scenario(dir: &TestDir) -> Result<()> {
    let mut attempt = 0;
    let (mut demo, base, endpoints) = loop {
        attempt += 1;
        let base = free_port_range(3)?;
        let data_dir = dir.join(&format!("demo-{attempt}"));
        let mut demo = Demo::spawn(base, &data_dir)?;
        match demo.endpoints()? {
            Some(e) => break (demo, base, e),
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
    };
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

    // A write in one region shows up in the other two.
    let (value, key) = ("written in us-east-1", "demo-key");
    let ack = Client::new(&endpoints[0].1)
        .kv_put("sessions", key, value, None)
        .await?;
    ensure!(ack.region == REGIONS[0], "{ack:?}");
    let started = Instant::now();
    for (name, url) in &endpoints[1..] {
        let c = Client::new(url);
        wait_until_async(DEADLINE, &format!("{key} to replicate to {name}"), || {
            let c = c.clone();
            async move {
                matches!(c.kv_get("sessions", key).await, Ok(r) if r.value() == Some(value.as_bytes()))
            }
        })
        .await?;
    }
    println!("replicated to both in {:?}", started.elapsed());

    // Ctrl-C: every region stops, the demo exits 0.
    demo.signal(libc::SIGINT)?;
    let exit = demo.wait_exit(STOP_DEADLINE)?;
    ensure!(
        exit.code() == Some(0),
        "the demo should exit 0 on SIGINT: {exit}\n{}",
        demo.output()
    );
    for &pid in &demo.regions {
        ensure!(!alive(pid), "region process {pid} outlived the demo");
    }
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
