//! `atoll router`: serve (proxy, DNS, admin API) or talk to a running router's admin API
//! (`drain`, `undrain`, `weight`, `status`). The binary embeds [`RouterArgs`] as a subcommand and
//! calls [`run`].

use anyhow::{Context, Result, anyhow, bail};
use atoll_router::runtime::{Router, RouterOptions};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Environment variable holding the admin token.
pub const TOKEN_ENV: &str = "ATOLL_ADMIN_TOKEN";

const SERVE_EXAMPLES: &str = "\
Examples:
  ATOLL_ADMIN_TOKEN=s3cret atoll router --config examples/three-regions.toml --proxy 127.0.0.1:7180 --admin 127.0.0.1:7181 --state-dir /tmp/atoll-router
  atoll router --config atoll.toml --dns 127.0.0.1:7153 --admin 127.0.0.1:7181 --state-dir router-state --admin-token-file /etc/atoll/admin-token
  atoll router --config atoll.toml --proxy 127.0.0.1:7180 --proxy-request-timeout 5s --proxy-connect-timeout 300ms --admin 127.0.0.1:7181 --state-dir router-state
  atoll router drain us-east-1 --reason 'kernel upgrade' --for 30m --admin http://127.0.0.1:7181
  atoll router status --admin http://127.0.0.1:7181

The config needs a [router] section (examples/three-regions.toml has one, every key explained).
Proxy timeouts and the body limit come from [router.proxy]; the --proxy-* flags override them.

The admin API needs `Authorization: Bearer <token>` on every route except GET /healthz,
GET /metrics and GET /v1/global/metrics (Prometheus scrapes metrics without a token) and the
dashboard's static page. The global view (GET /v1/global/status, needs the token) and the
dashboard (http://<admin>/dashboard#token=<token>) fan out to every region's /v1/status and
/metrics; with [auth] on the regions, give the router a client token in ATOLL_TOKEN.";

/// Run a router (HTTP proxy and/or DNS, plus the admin API), or manage a running one.
#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = SERVE_EXAMPLES
)]
pub struct RouterArgs {
    #[command(subcommand)]
    pub command: Option<RouterCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Options of a serving router.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The cluster config (atoll.toml) with a [router] section.
    #[arg(long, required = true)]
    pub config: Option<PathBuf>,
    /// Serve the HTTP proxy on this address (fails over per request).
    #[arg(long, value_name = "ADDR")]
    pub proxy: Option<SocketAddr>,
    /// Serve authoritative DNS on this address (UDP and TCP).
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<SocketAddr>,
    /// Serve the admin API (status, drain, undrain, weights, metrics) on this address.
    #[arg(long, value_name = "ADDR", required = true)]
    pub admin: Option<SocketAddr>,
    /// Where drains and weights are kept across restarts (created if missing).
    #[arg(long, value_name = "DIR", required = true)]
    pub state_dir: Option<PathBuf>,
    /// The routed name whose policy the proxy follows (default: the first [[router.names]]).
    #[arg(long, value_name = "NAME")]
    pub proxy_name: Option<String>,
    /// Read the admin token from this file instead of ATOLL_ADMIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Proxy: longest wait for a connection to a region, e.g. 500ms or 2s; a request that could
    /// not connect is retried on the next region [default: [router.proxy] connect_timeout_ms,
    /// else 1s].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub proxy_connect_timeout: Option<u64>,
    /// Proxy: longest wait for a region's response head, connecting included, e.g. 10s; only
    /// idempotent requests are retried after it [default: [router.proxy] request_timeout_ms,
    /// else 30s].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub proxy_request_timeout: Option<u64>,
    /// Proxy: how long an idle connection to a region is kept for reuse, e.g. 90s (0: none is
    /// kept) [default: [router.proxy] idle_timeout_ms, else 30s].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub proxy_idle_timeout: Option<u64>,
    /// Proxy: largest request body, in bytes (bodies are buffered to be replayable on another
    /// region) [default: [router.proxy] max_body_bytes, else 16777216].
    #[arg(long, value_name = "BYTES")]
    pub proxy_max_body_bytes: Option<u64>,
    /// Global view (GET /v1/global/status, /v1/global/metrics, /dashboard): longest wait for
    /// one region's answers, e.g. 2s; a region slower than that is reported as not reporting.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, default_value = "2s")]
    pub global_timeout: u64,
    /// Global view: where `atoll drill` keeps its outcomes (drill-outcomes.json), to show the
    /// last drill of each scenario [default: none shown].
    #[arg(long, value_name = "DIR")]
    pub drill_state_dir: Option<PathBuf>,
}

/// A duration flag in milliseconds: `0`, or `500ms`, `2s`, `1m`, `1m30s`.
fn duration_arg(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    atoll_router::admin::parse_duration_ms(s)
}

/// The config's `[router.proxy]` with the command line's overrides applied, checked.
pub fn proxy_settings(
    config: &atoll_config::router::RouterProxyConfig,
    a: &ServeArgs,
) -> Result<atoll_config::router::RouterProxyConfig> {
    let mut p = config.clone();
    if let Some(v) = a.proxy_connect_timeout {
        p.connect_timeout_ms = v;
    }
    if let Some(v) = a.proxy_request_timeout {
        p.request_timeout_ms = v;
    }
    if let Some(v) = a.proxy_idle_timeout {
        p.idle_timeout_ms = v;
    }
    if let Some(v) = a.proxy_max_body_bytes {
        p.max_body_bytes = v;
    }
    p.check().map_err(|(key, message)| {
        let flag = match key {
            "connect_timeout_ms" => "--proxy-connect-timeout",
            "request_timeout_ms" => "--proxy-request-timeout",
            "idle_timeout_ms" => "--proxy-idle-timeout",
            _ => "--proxy-max-body-bytes",
        };
        anyhow!("{flag} (router.proxy.{key}): {message}")
    })?;
    Ok(p)
}

/// Where a running router's admin API is, and its token.
#[derive(Args, Debug, Clone)]
pub struct AdminClientArgs {
    /// The router's admin API.
    #[arg(long, value_name = "URL", env = "ATOLL_ROUTER_ADMIN")]
    pub admin: String,
    /// Read the admin token from this file instead of ATOLL_ADMIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Admin commands against a running router.
#[derive(Subcommand, Debug)]
pub enum RouterCommand {
    /// Take a region out of rotation: no new traffic until undrained (or `--for` has passed).
    #[command(
        after_help = "Examples:\n  atoll router drain us-east-1 --reason 'kernel upgrade' --admin http://127.0.0.1:7181\n  atoll router drain eu-west-1 --reason 'drill' --for 30m --admin http://127.0.0.1:7181"
    )]
    Drain {
        region: String,
        /// Why (shown in status and logs).
        #[arg(long)]
        reason: String,
        /// Lift the drain by itself after this long (e.g. 90s, 30m, 2h, 1d, 1h30m).
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        #[command(flatten)]
        client: AdminClientArgs,
    },
    /// Put a drained region back into rotation.
    #[command(
        after_help = "Example:\n  atoll router undrain us-east-1 --admin http://127.0.0.1:7181"
    )]
    Undrain {
        region: String,
        #[command(flatten)]
        client: AdminClientArgs,
    },
    /// Set a region's weight for a weighted routed name (0: only when nothing else is healthy).
    #[command(
        after_help = "Examples:\n  atoll router weight canary us-east-1 3 --admin http://127.0.0.1:7181\n  atoll router weight canary eu-west-1 0 --admin http://127.0.0.1:7181"
    )]
    Weight {
        name: String,
        region: String,
        weight: u32,
        #[command(flatten)]
        client: AdminClientArgs,
    },
    /// Show every region's health as the router sees it, drains, ramps and each name's mode.
    #[command(
        after_help = "Examples:\n  atoll router status --admin http://127.0.0.1:7181\n  atoll router status --admin http://127.0.0.1:7181 --json"
    )]
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: AdminClientArgs,
    },
}

/// The admin token: from `file` if given, else from `ATOLL_ADMIN_TOKEN`. Never empty.
pub fn admin_token(file: Option<&std::path::Path>) -> Result<String> {
    let token = match file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the admin token file {}", f.display()))?,
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            anyhow!("no admin token: set {TOKEN_ENV} or pass --admin-token-file FILE")
        })?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the admin token is empty: set {TOKEN_ENV} or pass --admin-token-file FILE");
    }
    Ok(token)
}

/// Runs `atoll router ...`.
pub async fn run(args: RouterArgs) -> Result<()> {
    match args.command {
        Some(cmd) => client(cmd).await,
        None => serve(args.serve).await,
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    let config = a.config.clone().context("--config is required")?;
    let admin = a.admin.context("--admin ADDR is required")?;
    let state_dir = a.state_dir.clone().context("--state-dir is required")?;
    if a.proxy.is_none() && a.dns.is_none() {
        bail!("nothing to serve: pass --proxy ADDR and/or --dns ADDR");
    }
    let token = admin_token(a.admin_token_file.as_deref())?;
    let mut cfg = atoll_config::Config::load(&config).map_err(anyhow::Error::msg)?;
    if let Some(rc) = cfg.router.as_mut() {
        rc.proxy = proxy_settings(&rc.proxy, &a)?;
    }
    let mut opts = RouterOptions::new(Arc::new(cfg), admin, state_dir, token);
    opts.proxy_listen = a.proxy;
    opts.dns_listen = a.dns;
    opts.proxy_name = a.proxy_name;
    if a.global_timeout == 0 {
        bail!("--global-timeout must be more than zero");
    }
    opts.global = atoll_router::global::GlobalOptions {
        timeout: std::time::Duration::from_millis(a.global_timeout),
        // A client token for regions whose client API needs one ([auth]): the global view
        // reads their /v1/status and /v1/conflicts with it.
        region_token: std::env::var("ATOLL_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
        drill_state_dir: a.drill_state_dir,
    };
    let handle = Router::start(opts).await.map_err(anyhow::Error::msg)?;
    // Machine-readable lines for tools and tests that listen on port 0.
    if let Some(p) = handle.proxy_addr() {
        println!("atoll router proxy on http://{p}");
    }
    if let Some(d) = handle.dns_addr() {
        println!("atoll router dns on {d} (udp+tcp)");
    }
    println!("atoll router admin on http://{}", handle.admin_addr());
    println!(
        "atoll router dashboard on http://{}/dashboard (add #token=<admin token> for the status)",
        handle.admin_addr()
    );
    tracing::info!(admin = %handle.admin_addr(), proxy = ?handle.proxy_addr(), dns = ?handle.dns_addr(), "router serving");
    crate::shutdown_signal().await;
    tracing::info!("router stopping");
    handle.shutdown().await;
    Ok(())
}

async fn call(
    c: &AdminClientArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let token = admin_token(c.admin_token_file.as_deref())?;
    let base = c.admin.trim_end_matches('/');
    let base = if base.starts_with("http://") || base.starts_with("https://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let url = format!("{base}{path}");
    let http = reqwest::Client::new();
    let mut req = http.request(method, &url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the router's admin API at {base}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let e = &v["error"];
        match (e["code"].as_str(), e["message"].as_str()) {
            (Some(code), Some(msg)) => {
                let hint = e["hint"].as_str().unwrap_or("");
                bail!(
                    "{msg} ({code}, HTTP {}){}",
                    status.as_u16(),
                    if hint.is_empty() {
                        String::new()
                    } else {
                        format!("\nhint: {hint}")
                    }
                );
            }
            _ => bail!("the router answered HTTP {}: {v}", status.as_u16()),
        }
    }
    Ok(v)
}

fn seg(s: &str) -> String {
    // Region and name segments are DNS-ish labels; escape anything else.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn client(cmd: RouterCommand) -> Result<()> {
    match cmd {
        RouterCommand::Drain {
            region,
            reason,
            for_,
            client,
        } => {
            let mut body = json!({"reason": reason});
            let for_given = for_.clone();
            if let Some(f) = for_ {
                body["for"] = Value::String(f);
            }
            let v = call(
                &client,
                reqwest::Method::POST,
                &format!("/v1/router/regions/{}/drain", seg(&region)),
                Some(body),
            )
            .await?;
            let until = match (&for_given, v["drained"]["until_ms"].as_u64()) {
                (Some(f), Some(u)) => {
                    format!(" for {f} (until {u} ms since the epoch), then routed to again")
                }
                _ => ": no new traffic until `atoll router undrain`".to_string(),
            };
            println!("drained {region}{until}");
        }
        RouterCommand::Undrain { region, client } => {
            call(
                &client,
                reqwest::Method::POST,
                &format!("/v1/router/regions/{}/undrain", seg(&region)),
                None,
            )
            .await?;
            println!("undrained {region}");
        }
        RouterCommand::Weight {
            name,
            region,
            weight,
            client,
        } => {
            call(
                &client,
                reqwest::Method::PUT,
                &format!("/v1/router/names/{}/weights/{}", seg(&name), seg(&region)),
                Some(json!({"weight": weight})),
            )
            .await?;
            println!("{name}: weight of {region} is {weight}");
        }
        RouterCommand::Status { json, client } => {
            let v = call(&client, reqwest::Method::GET, "/v1/router/status", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_status(&v));
            }
        }
    }
    Ok(())
}

/// The router's status as a readable table.
pub fn render_status(v: &Value) -> String {
    let mut out = String::from("regions:\n");
    for r in v["regions"].as_array().into_iter().flatten() {
        let drained = match &r["drained"] {
            Value::Null => String::new(),
            d => format!(" DRAINED ({})", d["reason"].as_str().unwrap_or("")),
        };
        let ramp = r["ramp"].as_f64().unwrap_or(1.0);
        let ramp = if r["health"] == "healthy" && ramp < 1.0 {
            format!(" ramping {:.0}%", ramp * 100.0)
        } else {
            String::new()
        };
        let rtt = r["rtt_ms"]
            .as_f64()
            .map(|x| format!(" rtt {x:.1} ms"))
            .unwrap_or_default();
        // The fencing role, when the region reports one other than plain active-active.
        let role = match (r["role"].as_str(), r["epoch"].as_u64()) {
            (Some("active") | None, Some(0) | None) => String::new(),
            (role, epoch) => format!(
                " role={} epoch={}",
                role.unwrap_or("?"),
                epoch.map_or_else(|| "?".to_string(), |e| e.to_string())
            ),
        };
        out.push_str(&format!(
            "  {:<20} {:<10} routable={}{role}{drained}{ramp}{rtt}  [{}]\n",
            r["region"].as_str().unwrap_or("?"),
            r["health"].as_str().unwrap_or("?"),
            r["routable"].as_bool().unwrap_or(false),
            r["reason"].as_str().unwrap_or(""),
        ));
    }
    let claims = v["primary_claims"].as_array().map_or(0, Vec::len);
    if let Some(p) = v["primary"].as_object() {
        let conflict = if claims > 1 {
            let all: Vec<String> = v["primary_claims"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{} (epoch {})",
                        c["region"].as_str().unwrap_or("?"),
                        c["epoch"]
                    )
                })
                .collect();
            format!(
                "  << {claims} regions claim the lease: {}; writes go to the higher epoch",
                all.join(", ")
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "writes go first to: {} (primary, epoch {}){conflict}\n",
            p.get("region").and_then(Value::as_str).unwrap_or("?"),
            p.get("epoch").and_then(Value::as_u64).unwrap_or(0),
        ));
    }
    out.push_str("names:\n");
    for n in v["names"].as_array().into_iter().flatten() {
        let mode = n["mode"].as_str().unwrap_or("?");
        let flag = if mode == "normal" {
            ""
        } else if n["starting"].as_bool().unwrap_or(false) {
            "  (starting: first health checks not finished)"
        } else {
            "  << no healthy region"
        };
        out.push_str(&format!(
            "  {:<28} policy={:<9} no_healthy={:<16} mode={mode}{flag}\n",
            n["name"].as_str().unwrap_or("?"),
            n["policy"].as_str().unwrap_or("?"),
            n["no_healthy"].as_str().unwrap_or("?"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Top {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Router(RouterArgs),
    }

    fn parse(args: &[&str]) -> Result<RouterArgs, clap::Error> {
        let mut v = vec!["atoll", "router"];
        v.extend_from_slice(args);
        Top::try_parse_from(v).map(|t| match t.cmd {
            Cmd::Router(r) => r,
        })
    }

    #[test]
    fn serve_and_client_forms_parse() {
        let a = parse(&[
            "--config",
            "a.toml",
            "--proxy",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--state-dir",
            "d",
        ])
        .unwrap();
        assert!(a.command.is_none());
        assert_eq!(a.serve.proxy, Some("127.0.0.1:0".parse().unwrap()));
        let a = parse(&[
            "drain",
            "us-east-1",
            "--reason",
            "x",
            "--for",
            "30m",
            "--admin",
            "http://127.0.0.1:7300",
        ])
        .unwrap();
        assert!(matches!(
            a.command,
            Some(RouterCommand::Drain { ref for_, .. }) if for_.as_deref() == Some("30m")
        ));
        let a = parse(&["weight", "api", "us-east-1", "3", "--admin", "x:1"]).unwrap();
        assert!(matches!(
            a.command,
            Some(RouterCommand::Weight { weight: 3, .. })
        ));
        assert!(
            parse(&["--proxy", "127.0.0.1:0"]).is_err(),
            "serving needs --config"
        );
        assert!(
            parse(&["drain", "us-east-1", "--admin", "x:1"]).is_err(),
            "needs --reason"
        );
    }

    #[test]
    fn proxy_flags_override_the_config() {
        use atoll_config::router::RouterProxyConfig;
        let serve = |extra: &[&str]| {
            let mut v = vec![
                "--config",
                "a.toml",
                "--proxy",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--state-dir",
                "d",
            ];
            v.extend_from_slice(extra);
            parse(&v).map(|a| a.serve)
        };
        let from_config = RouterProxyConfig {
            connect_timeout_ms: 200,
            ..RouterProxyConfig::default()
        };
        // No flag: the config's values.
        let a = serve(&[]).unwrap();
        assert_eq!(proxy_settings(&from_config, &a).unwrap(), from_config);
        let a = serve(&[
            "--proxy-connect-timeout",
            "300ms",
            "--proxy-request-timeout",
            "1m30s",
            "--proxy-idle-timeout",
            "0",
            "--proxy-max-body-bytes",
            "4096",
        ])
        .unwrap();
        assert_eq!(
            proxy_settings(&from_config, &a).unwrap(),
            RouterProxyConfig {
                connect_timeout_ms: 300,
                request_timeout_ms: 90_000,
                idle_timeout_ms: 0,
                max_body_bytes: 4096,
            }
        );
        assert!(serve(&["--proxy-request-timeout", "soon"]).is_err());
        // Out of range, or a connect timeout that is not shorter than the request's: named.
        let a = serve(&["--proxy-request-timeout", "20ms"]).unwrap();
        let e = proxy_settings(&from_config, &a).unwrap_err().to_string();
        assert!(
            e.contains("--proxy-request-timeout") && e.contains("100"),
            "{e}"
        );
        let a = serve(&["--proxy-connect-timeout", "40s"]).unwrap();
        let e = proxy_settings(&from_config, &a).unwrap_err().to_string();
        assert!(
            e.contains("--proxy-connect-timeout") && e.contains("shorter"),
            "{e}"
        );
    }

    #[test]
    fn help_has_examples() {
        Top::command().debug_assert();
        let mut cmd = Top::command();
        let router = cmd.find_subcommand_mut("router").unwrap();
        let help = router.render_long_help().to_string();
        assert!(help.contains("atoll router --config"), "{help}");
        for sub in ["drain", "undrain", "weight", "status"] {
            let s = router.find_subcommand_mut(sub).unwrap();
            let h = s.render_long_help().to_string();
            assert!(h.contains("atoll router"), "{sub}: {h}");
        }
    }

    #[test]
    fn token_file_is_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "  s3cret\n").unwrap();
        assert_eq!(admin_token(Some(&f)).unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert!(admin_token(Some(&f)).is_err());
    }

    #[test]
    fn status_renders() {
        let v = json!({
            "regions": [{"region": "us-east-1", "health": "healthy", "reason": "ok", "routable": false,
                "drained": {"reason": "upgrade", "since_ms": 1, "until_ms": null}, "ramp": 0.5, "rtt_ms": 1.25, "checks": 3}],
            "names": [{"name": "api.atoll.test.", "policy": "failover", "no_healthy": "fail-closed", "mode": "fail-closed", "weights": {}}]
        });
        let s = render_status(&v);
        assert!(s.contains("DRAINED (upgrade)"));
        assert!(s.contains("ramping 50%"));
        assert!(s.contains("no healthy region"));
        let mut v = v;
        v["names"][0]["starting"] = json!(true);
        let s = render_status(&v);
        assert!(
            s.contains("starting: first health checks not finished"),
            "{s}"
        );
        assert!(!s.contains("no healthy region"), "{s}");
        assert!(!s.contains("role="), "no fencing role reported: {s}");
        assert!(!s.contains("writes go first"), "{s}");
    }

    #[test]
    fn status_shows_roles_and_the_primary() {
        let region = |name: &str, health: &str, role: &str, epoch: u64| {
            json!({"region": name, "health": health, "reason": "ok", "routable": health == "healthy",
                "drained": null, "ramp": 1.0, "rtt_ms": 1.0, "checks": 3, "role": role, "epoch": epoch,
                "primary": "eu-west-1"})
        };
        let mut v = json!({
            "regions": [region("us-east-1", "healthy", "standby", 4), region("eu-west-1", "healthy", "primary", 4),
                region("ap-southeast-1", "passive", "passive", 4)],
            "names": [],
            "primary": {"region": "eu-west-1", "epoch": 4},
            "primary_claims": [{"region": "eu-west-1", "epoch": 4}]
        });
        let s = render_status(&v);
        assert!(s.contains("role=standby epoch=4"), "{s}");
        assert!(s.contains("passive    routable=false role=passive"), "{s}");
        assert!(
            s.contains("writes go first to: eu-west-1 (primary, epoch 4)\n"),
            "{s}"
        );
        v["primary_claims"] =
            json!([{"region": "eu-west-1", "epoch": 4}, {"region": "us-east-1", "epoch": 3}]);
        let s = render_status(&v);
        assert!(
            s.contains("2 regions claim the lease: eu-west-1 (epoch 4), us-east-1 (epoch 3)"),
            "{s}"
        );
    }
}
