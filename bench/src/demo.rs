//! `atoll demo` for benchmarks that measure at the demo's geographic distances.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running demo; stopped (SIGINT, then SIGKILL after 30 s) when dropped.
pub struct Demo {
    child: Child,
    /// `(region, client API endpoint)`, in the demo's order.
    pub regions: Vec<(String, String)>,
    /// `(region, endpoint, /v1/status)` once every region was ready.
    pub statuses: Vec<(String, String, Value)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGINT: the demo stops its regions and exits.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

pub async fn status(http: &reqwest::Client, endpoint: &str) -> Result<Value> {
    Ok(http
        .get(format!("{endpoint}/v1/status"))
        .send()
        .await?
        .json()
        .await?)
}

impl Demo {
    /// Starts `atoll demo` (`atoll`: the binary) with its data under `data_dir`, and waits until
    /// every region takes writes, knows the strong group's leader and has measured its round
    /// trips to every peer.
    pub async fn start(atoll: &Path, data_dir: &Path, http: &reqwest::Client) -> Result<Demo> {
        let base = atoll_testkit::free_port_range(200)?;
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let child = Command::new(atoll)
            .args(["demo", "--port-base", &base.to_string(), "--data-dir"])
            .arg(data_dir.join("demo"))
            .env("TMPDIR", &tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start atoll demo")?;
        let mut demo = Demo {
            child,
            regions: Vec::new(),
            statuses: Vec::new(),
        };
        let discovery = tmp.join(format!("atoll-demo-{base}.json"));
        // The demo writes its discovery file once its table is printed.
        let end = Instant::now() + Duration::from_secs(120);
        let d: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&discovery)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                break v;
            }
            if Instant::now() > end {
                bail!("the demo did not start within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        demo.regions = d["regions"]
            .as_array()
            .ok_or_else(|| anyhow!("no regions in {d}"))?
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or("").to_string(),
                    r["api"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            demo.statuses.clear();
            for (n, e) in &demo.regions {
                demo.statuses
                    .push((n.clone(), e.clone(), status(http, e).await?));
            }
            let ready = demo.statuses.iter().all(|(_, _, s)| {
                !s["strong"]["leader"].is_null()
                    && s["fencing"]["role"] != "read-only"
                    && s["peers"]
                        .as_array()
                        .is_some_and(|p| p.iter().all(|p| p["rtt_ms"].is_number()))
            });
            if ready {
                return Ok(demo);
            }
            if Instant::now() > end {
                bail!("the demo's regions did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The client API endpoint of `region` (`""` if the demo has none).
    pub fn endpoint(&self, region: &str) -> String {
        self.regions
            .iter()
            .find(|(n, _)| n == region)
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    }

    /// The round trip `from` measured to `to` (its status's `peers[].rtt_ms`), in ms.
    pub fn rtt(&self, from: &str, to: &str) -> Option<f64> {
        let (_, _, s) = self.statuses.iter().find(|(n, _, _)| n == from)?;
        s["peers"].as_array()?.iter().find(|p| p["region"] == to)?["rtt_ms"].as_f64()
    }
}
