//! The cluster a drill runs against, and the adapters that change it: the router's admin API
//! (drain/undrain), the link control API (`/v1/faults`, every fault leased), the regions' admin
//! API (promote/switchover), and [`RegionControl`] for kill/stop/restart: the demo's control API,
//! configured shell commands, or (tests) anything else that implements the trait.

use crate::error::{DrillError, Result};
use atoll_config::Config;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The version of the demo discovery file this build reads.
pub const DISCOVERY_VERSION: u64 = 1;

const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Kills, stops and restarts region processes.
#[async_trait::async_trait]
pub trait RegionControl: Send + Sync {
    /// SIGKILL (or the deployment's equivalent): no graceful shutdown.
    async fn kill(&self, region: &str) -> Result<()>;
    /// Graceful stop.
    async fn stop(&self, region: &str) -> Result<()>;
    /// Start it again on the same data; returns once it was started (the runner then waits for
    /// its `/healthz`).
    async fn restart(&self, region: &str) -> Result<()>;
    /// For the report.
    fn describe(&self) -> String;
}

/// No way to kill regions: steps that need one fail with a clear error.
pub struct NoControl;

#[async_trait::async_trait]
impl RegionControl for NoControl {
    async fn kill(&self, region: &str) -> Result<()> {
        Err(no_control("kill", region))
    }
    async fn stop(&self, region: &str) -> Result<()> {
        Err(no_control("stop", region))
    }
    async fn restart(&self, region: &str) -> Result<()> {
        Err(no_control("restart", region))
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

fn no_control(what: &str, region: &str) -> DrillError {
    DrillError::control(
        format!("{what} {region}"),
        "no way to control region processes: run with --demo, or give [commands] in the scenario",
        false,
    )
}

/// The demo's control API (`POST /v1/demo/regions/{name}/kill|stop|restart`).
pub struct DemoControl {
    pub url: String,
    pub token: String,
    http: reqwest::Client,
}

impl DemoControl {
    pub fn new(url: &str, token: &str) -> Result<DemoControl> {
        Ok(DemoControl {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: http_client(Duration::from_secs(60))?,
        })
    }

    async fn act(&self, region: &str, what: &str) -> Result<()> {
        let url = format!("{}/v1/demo/regions/{}/{what}", self.url, enc(region));
        post(
            &self.http,
            &url,
            Some(&self.token),
            &json!({}),
            &format!("demo {what} {region}"),
        )
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl RegionControl for DemoControl {
    async fn kill(&self, region: &str) -> Result<()> {
        self.act(region, "kill").await
    }
    async fn stop(&self, region: &str) -> Result<()> {
        self.act(region, "stop").await
    }
    async fn restart(&self, region: &str) -> Result<()> {
        self.act(region, "restart").await
    }
    fn describe(&self) -> String {
        format!("demo control API {}", self.url)
    }
}

/// Shell commands (`sh -c`), `{region}` replaced by the region's name.
pub struct CommandControl {
    pub commands: crate::scenario::Commands,
    pub timeout: Duration,
}

impl CommandControl {
    async fn run(&self, template: Option<&String>, what: &str, region: &str) -> Result<()> {
        let Some(t) = template else {
            return Err(DrillError::control(
                format!("{what} {region}"),
                format!("the scenario's [commands] has no `{what}` command"),
                false,
            ));
        };
        let cmd = t.replace("{region}", region);
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(self.timeout, child)
            .await
            .map_err(|_| DrillError::Command {
                command: cmd.clone(),
                message: format!("did not finish within {:?}", self.timeout),
            })?
            .map_err(|e| DrillError::Command {
                command: cmd.clone(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(DrillError::Command {
                command: cmd,
                message: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl RegionControl for CommandControl {
    async fn kill(&self, region: &str) -> Result<()> {
        self.run(self.commands.kill.as_ref(), "kill", region).await
    }
    async fn stop(&self, region: &str) -> Result<()> {
        self.run(self.commands.stop.as_ref(), "stop", region).await
    }
    async fn restart(&self, region: &str) -> Result<()> {
        self.run(self.commands.restart.as_ref(), "restart", region)
            .await
    }
    fn describe(&self) -> String {
        "configured shell commands".into()
    }
}

/// Where everything is.
#[derive(Clone)]
pub struct Target {
    pub config: Arc<Config>,
    /// `(name, base URL of its client API)`, in config order.
    pub regions: Vec<(String, String)>,
    /// The router's HTTP proxy.
    pub router: Option<String>,
    /// The router's admin API.
    pub router_admin: Option<String>,
    /// The link control API.
    pub link_control: Option<String>,
    /// The admin token of the router and the regions (`ATOLL_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// The link control API's token (`ATOLL_LINK_TOKEN`), if it has one.
    pub link_token: Option<String>,
    /// A client token for the regions' API, with `[auth]` (`ATOLL_TOKEN`).
    pub client_token: Option<String>,
    pub control: Arc<dyn RegionControl>,
}

impl Target {
    /// Regions at the addresses of the config; nothing else known yet.
    pub fn from_config(config: Config) -> Target {
        let regions = config
            .regions
            .iter()
            .map(|r| (r.name.to_string(), format!("http://{}", r.api)))
            .collect();
        Target {
            config: Arc::new(config),
            regions,
            router: None,
            router_admin: None,
            link_control: None,
            admin_token: None,
            link_token: None,
            client_token: None,
            control: Arc::new(NoControl),
        }
    }

    pub fn region_url(&self, name: &str) -> Option<&str> {
        self.regions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.as_str())
    }

    pub fn region_names(&self) -> Vec<String> {
        self.regions.iter().map(|(n, _)| n.clone()).collect()
    }

    /// From a running demo's discovery file (`${TMPDIR:-/tmp}/atoll-demo-<port_base>.json`).
    pub fn from_demo(port_base: u16) -> Result<Target> {
        let path = discovery_path(port_base);
        let d = Discovery::load(&path)?;
        let config =
            Config::load(Path::new(&d.config)).map_err(|e| DrillError::Config(e.to_string()))?;
        let mut t = Target::from_config(config);
        t.regions = d
            .regions
            .iter()
            .map(|r| (r.name.clone(), r.api.clone()))
            .collect();
        t.router = Some(d.proxy.clone());
        t.router_admin = Some(d.router_admin.clone());
        t.link_control = Some(d.link_control.clone());
        t.admin_token = Some(d.token.clone());
        t.control = Arc::new(DemoControl::new(&d.control, &d.token)?);
        Ok(t)
    }
}

/// `${TMPDIR:-/tmp}/atoll-demo-<port_base>.json`.
pub fn discovery_path(port_base: u16) -> PathBuf {
    let dir = std::env::var_os("TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    dir.join(format!("atoll-demo-{port_base}.json"))
}

/// The demo's discovery file (the contract with `atoll demo`).
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    pub version: u64,
    pub port_base: u16,
    pub config: String,
    pub token: String,
    #[serde(default)]
    pub model: String,
    pub control: String,
    pub router_admin: String,
    pub proxy: String,
    pub link_control: String,
    pub regions: Vec<DiscoveredRegion>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DiscoveredRegion {
    pub name: String,
    pub api: String,
}

impl Discovery {
    pub fn load(path: &Path) -> Result<Discovery> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DrillError::Discovery(format!(
                "cannot read {}: {e} (is `atoll demo` running?)",
                path.display()
            ))
        })?;
        Discovery::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, source: &str) -> Result<Discovery> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| DrillError::Discovery(format!("{source} is not JSON: {e}")))?;
        let version = v["version"].as_u64().unwrap_or(0);
        if version != DISCOVERY_VERSION {
            return Err(DrillError::Discovery(format!(
                "{source} has version {version}; this build reads version {DISCOVERY_VERSION}"
            )));
        }
        serde_json::from_value(v).map_err(|e| DrillError::Discovery(format!("{source}: {e}")))
    }
}

pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| DrillError::control("HTTP client", e.to_string(), false))
}

/// An atoll JSON error body, in words.
fn error_text(status: u16, body: &str) -> (String, bool) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let e = &v["error"];
    match e["code"].as_str() {
        Some(code) => (
            format!(
                "HTTP {status} {code}: {}{}",
                e["message"].as_str().unwrap_or(""),
                e["hint"]
                    .as_str()
                    .map(|h| format!(" (hint: {h})"))
                    .unwrap_or_default()
            ),
            e["retryable"].as_bool().unwrap_or(status >= 500),
        ),
        None => (
            format!(
                "HTTP {status}: {}",
                body.chars().take(300).collect::<String>()
            ),
            status >= 500,
        ),
    }
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<Value> {
    let resp = req
        .send()
        .await
        .map_err(|e| DrillError::control(what, format!("no answer: {e}"), true))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| DrillError::control(what, format!("answer unreadable: {e}"), true))?;
    if !(200..300).contains(&status) {
        let (m, retryable) = error_text(status, &body);
        return Err(DrillError::control(what, m, retryable));
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
    what: &str,
) -> Result<Value> {
    let mut req = http.post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req, what).await
}

/// The control APIs the steps use.
pub struct Ops {
    pub t: Target,
    http: reqwest::Client,
}

impl Ops {
    pub fn new(t: Target) -> Result<Ops> {
        Ok(Ops {
            t,
            http: http_client(Duration::from_secs(10))?,
        })
    }

    fn router_admin(&self) -> Result<&str> {
        self.t.router_admin.as_deref().ok_or_else(|| {
            DrillError::control(
                "router admin",
                "no router admin API known: run with --demo or --router-admin",
                false,
            )
        })
    }

    fn link(&self) -> Result<&str> {
        self.t.link_control.as_deref().ok_or_else(|| {
            DrillError::control(
                "link control",
                "no link control API known: run with --demo or --link-control",
                false,
            )
        })
    }

    pub async fn drain(&self, region: &str, for_ms: Option<u64>, reason: &str) -> Result<()> {
        let url = format!(
            "{}/v1/router/regions/{}/drain",
            self.router_admin()?,
            enc(region)
        );
        let mut body = json!({"reason": reason});
        if let Some(ms) = for_ms {
            body["for"] = json!(format!("{ms}ms"));
        }
        post(
            &self.http,
            &url,
            self.t.admin_token.as_deref(),
            &body,
            &format!("drain {region}"),
        )
        .await?;
        Ok(())
    }

    pub async fn undrain(&self, region: &str) -> Result<()> {
        let url = format!(
            "{}/v1/router/regions/{}/undrain",
            self.router_admin()?,
            enc(region)
        );
        post(
            &self.http,
            &url,
            self.t.admin_token.as_deref(),
            &json!({"reason": "atoll drill"}),
            &format!("undrain {region}"),
        )
        .await?;
        Ok(())
    }

    /// Adds a fault (`body` as `POST /v1/faults` takes it, without `for`) with `lease_ms`.
    pub async fn add_fault(&self, mut body: Value, lease_ms: u64) -> Result<String> {
        body["for"] = json!(format!("{lease_ms}ms"));
        let url = format!("{}/v1/faults", self.link()?);
        let v = post(
            &self.http,
            &url,
            self.t.link_token.as_deref(),
            &body,
            "add link fault",
        )
        .await?;
        v["id"].as_str().map(str::to_string).ok_or_else(|| {
            DrillError::control(
                "add link fault",
                format!("answer without an id: {v}"),
                false,
            )
        })
    }

    pub async fn renew_fault(&self, id: &str, lease_ms: u64) -> Result<()> {
        let url = format!("{}/v1/faults/{}", self.link()?, enc(id));
        let mut req = self
            .http
            .put(&url)
            .json(&json!({"for": format!("{lease_ms}ms")}));
        if let Some(t) = &self.t.link_token {
            req = req.bearer_auth(t);
        }
        send(req, &format!("renew fault {id}")).await?;
        Ok(())
    }

    /// Removes a fault; one already expired or removed is fine.
    pub async fn remove_fault(&self, id: &str) -> Result<()> {
        let url = format!("{}/v1/faults/{}", self.link()?, enc(id));
        let mut req = self.http.delete(&url);
        if let Some(t) = &self.t.link_token {
            req = req.bearer_auth(t);
        }
        match send(req, &format!("remove fault {id}")).await {
            Ok(_) => Ok(()),
            Err(DrillError::Control { message, .. })
                if message.contains("ATOLL-LINK-UNKNOWN-FAULT")
                    || message.contains("ATOLL-LINK-FAULT-EXPIRED") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub async fn healthz(&self, region: &str) -> Result<Value> {
        let base = self.t.region_url(region).ok_or_else(|| {
            DrillError::control("healthz", format!("unknown region {region}"), false)
        })?;
        let resp = self
            .http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| DrillError::control(format!("healthz {region}"), e.to_string(), true))?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status != 200 {
            return Err(DrillError::control(
                format!("healthz {region}"),
                format!("HTTP {status}: {v}"),
                true,
            ));
        }
        Ok(v)
    }

    /// The lease holder that any region names.
    pub async fn primary(&self) -> Result<String> {
        for name in self.t.region_names() {
            if let Ok(v) = self.healthz(&name).await
                && let Some(p) = v["primary"].as_str()
            {
                return Ok(p.to_string());
            }
        }
        Err(DrillError::control(
            "find the primary",
            "no region names a lease holder",
            true,
        ))
    }

    pub async fn promote(&self, region: &str, accept_data_loss: bool) -> Result<Value> {
        let base = self.t.region_url(region).ok_or_else(|| {
            DrillError::control("promote", format!("unknown region {region}"), false)
        })?;
        post(
            &self.http,
            &format!("{base}/v1/admin/promote"),
            self.t.admin_token.as_deref(),
            &json!({"accept_data_loss": accept_data_loss}),
            &format!("promote {region}"),
        )
        .await
    }

    pub async fn switchover(&self, target: &str, timeout_ms: u64) -> Result<Value> {
        let primary = self.primary().await?;
        let base = self.t.region_url(&primary).ok_or_else(|| {
            DrillError::control("switchover", format!("unknown region {primary}"), false)
        })?;
        let http = http_client(Duration::from_millis(timeout_ms + 10_000))?;
        post(
            &http,
            &format!("{base}/v1/admin/switchover"),
            self.t.admin_token.as_deref(),
            &json!({"target": target, "timeout_ms": timeout_ms}),
            &format!("switchover {primary} -> {target}"),
        )
        .await
    }

    /// Why the cluster is not steady yet (`None`: steady): every region serving, replication
    /// established with every peer, and fencing ready (a quorum window in active-active with
    /// quorum fencing; a primary with a write window in leased models).
    pub async fn unsteady(&self) -> Option<String> {
        let mut primary_ok = false;
        let leased = !matches!(
            self.t.config.cluster.model,
            atoll_config::Model::ActiveActive
        );
        for name in self.t.region_names() {
            let h = match self.healthz(&name).await {
                Ok(h) => h,
                Err(e) => return Some(format!("{name}: {e}")),
            };
            if h["replication"]["established"] == Value::Bool(false) {
                return Some(format!("{name}: replication not established"));
            }
            let st = match self.status(&name).await {
                Ok(v) => v,
                Err(e) => return Some(format!("{name}: {e}")),
            };
            let f = &st["fencing"];
            if let Some(q) = f["quorum_window_left_ms"].as_u64()
                && q == 0
            {
                return Some(format!("{name}: no quorum window yet"));
            }
            if leased && f["role"] == "primary" && f["window_left_ms"].as_u64().unwrap_or(0) > 0 {
                primary_ok = true;
            }
        }
        if leased && !primary_ok {
            return Some("no primary with a write window".into());
        }
        None
    }

    /// `/v1/status` of a region (for convergence).
    pub async fn status(&self, region: &str) -> Result<Value> {
        let base = self.t.region_url(region).ok_or_else(|| {
            DrillError::control("status", format!("unknown region {region}"), false)
        })?;
        let mut req = self
            .http
            .get(format!("{base}/v1/status"))
            .timeout(Duration::from_secs(3));
        if let Some(t) = &self.t.client_token {
            req = req.bearer_auth(t);
        }
        send(req, &format!("status {region}")).await
    }
}
