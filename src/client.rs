//! The client side of the CLI: `atoll kv|counter|set|status` against a region's HTTP API, and
//! the admin calls `atoll promote|switchover` (fencing, `docs/design/fencing.md`).

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// Characters left as they are in a path segment; everything else is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// The region to talk to.
    #[arg(
        long,
        global = true,
        env = "ATOLL_ENDPOINT",
        default_value = "http://127.0.0.1:7100"
    )]
    pub endpoint: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub output: Output,
    /// Request timeout in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub timeout: f64,
    /// Bearer token for a cluster with client authentication ([auth] in its config).
    #[arg(
        long,
        global = true,
        env = "ATOLL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Session token from an earlier answer (`session:` in its output): a read is served only by
    /// a region that has applied what it names (read-your-writes across regions).
    #[arg(long, global = true, env = "ATOLL_SESSION", value_name = "TOKEN")]
    pub session: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Write a value (for mvr keyspaces, pass the context of your last read to supersede it).
    #[command(
        after_help = "Examples:\n  atoll kv put sessions user-1 token-abc\n  atoll kv put sessions user-1 token-abc --ttl 30m\n  atoll kv put carts c1 apple,pear --context <context printed by kv get> --endpoint http://127.0.0.1:7101\n  atoll kv put seats 12A alice --if-match 0"
    )]
    Put {
        keyspace: String,
        key: String,
        value: String,
        #[arg(long)]
        context: Option<String>,
        /// lww, owned and mvr keyspaces: the value (mvr: the new sibling) expires this long after
        /// the write (`30s`, `30m`, `1h30m`), `none` (never, whatever the keyspace's default_ttl)
        /// or `keep` (keep the key's expiry; lww and owned only). Without it the keyspace's
        /// default_ttl applies.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Strong keyspaces: write only if the key is at this revision (0: only if it does not
        /// exist), else fail with ATOLL-REVISION-MISMATCH.
        #[arg(long, value_name = "REVISION")]
        if_match: Option<u64>,
    },
    /// Read a value (an mvr key with concurrent writes shows every sibling and a context).
    #[command(
        after_help = "Examples:\n  atoll kv get sessions user-1\n  atoll kv get carts c1 --output json\n  atoll kv get sessions user-1 --endpoint http://127.0.0.1:7102 --session <session printed by kv put>\n  atoll kv get sessions user-1 --max-staleness 3s"
    )]
    Get {
        keyspace: String,
        key: String,
        /// With --session: how long the region may wait to catch up before ATOLL-STALE, in ms.
        #[arg(long, value_name = "MS")]
        wait_ms: Option<u64>,
        /// Refuse (ATOLL-STALE) unless the region last held every region's writes within this
        /// (`2s`, `500ms`).
        #[arg(long, value_name = "DURATION")]
        max_staleness: Option<String>,
    },
    /// Show when a key expires (lww and owned keyspaces).
    #[command(after_help = "Example:\n  atoll kv ttl sessions user-1")]
    Ttl { keyspace: String, key: String },
    /// Give a live key a new expiry, keeping its value (lww and owned keyspaces).
    #[command(after_help = "Example:\n  atoll kv expire sessions user-1 15m")]
    Expire {
        keyspace: String,
        key: String,
        /// The new time to live (`30s`, `15m`, `2h`).
        ttl: String,
    },
    /// Remove a key's expiry, keeping its value (lww and owned keyspaces).
    #[command(after_help = "Example:\n  atoll kv persist sessions user-1")]
    Persist { keyspace: String, key: String },
    /// Delete a key (leaves a tombstone that replicates).
    #[command(
        after_help = "Examples:\n  atoll kv del sessions user-1\n  atoll kv del carts c1 --context <context printed by kv get>"
    )]
    Del {
        keyspace: String,
        key: String,
        #[arg(long)]
        context: Option<String>,
        /// Strong keyspaces: delete only if the key is at this revision.
        #[arg(long, value_name = "REVISION")]
        if_match: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CounterCommand {
    /// Add to a counter (negative values subtract); prints the new value.
    #[command(
        after_help = "Examples:\n  atoll counter incr ratelimits user-1\n  atoll counter incr ratelimits user-1 --by -5"
    )]
    Incr {
        keyspace: String,
        key: String,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Read a counter.
    #[command(after_help = "Example:\n  atoll counter get ratelimits user-1")]
    Get { keyspace: String, key: String },
}

#[derive(Subcommand, Debug)]
pub enum RatelimitCommand {
    /// Ask to admit a request: prints allowed or denied with what is left; exits 2 when denied.
    #[command(
        after_help = "Examples:\n  atoll ratelimit hit api-quota user-1\n  atoll ratelimit hit api-quota user-1 --cost 3"
    )]
    Hit {
        keyspace: String,
        key: String,
        /// What the request costs against the limit.
        #[arg(long, default_value_t = 1)]
        cost: u64,
    },
    /// What is left of the budget now (nothing is counted).
    #[command(after_help = "Example:\n  atoll ratelimit get api-quota user-1")]
    Get { keyspace: String, key: String },
}

#[derive(Subcommand, Debug)]
pub enum SetCommand {
    /// Add members; prints the set's members after the update.
    #[command(after_help = "Example:\n  atoll set add flags beta dark-mode new-checkout")]
    Add {
        keyspace: String,
        key: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members; prints the set's members after the update.
    #[command(after_help = "Example:\n  atoll set remove flags beta dark-mode")]
    Remove {
        keyspace: String,
        key: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// List members.
    #[command(after_help = "Example:\n  atoll set members flags beta --output json")]
    Members { keyspace: String, key: String },
}

struct Client {
    http: reqwest::Client,
    base: String,
    output: Output,
    token: Option<String>,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| anyhow!("server sent invalid JSON: {e}"))
    }
    /// Turns an error reply into an error naming its code, message and hint.
    fn check(self) -> Result<Reply> {
        if (200..300).contains(&self.status) || self.status == 300 {
            return Ok(self);
        }
        match self.json() {
            Ok(v) if v.get("error").is_some() => {
                let e = &v["error"];
                bail!(
                    "{} (HTTP {}): {}\nhint: {}",
                    e["code"].as_str().unwrap_or("?"),
                    self.status,
                    e["message"].as_str().unwrap_or("?"),
                    e["hint"].as_str().unwrap_or("")
                )
            }
            _ => bail!(
                "HTTP {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(args.timeout.max(0.001)))
            .build()?;
        Ok(Client {
            http,
            base: args.endpoint.trim_end_matches('/').to_string(),
            output: args.output,
            token: args
                .token
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        })
    }

    fn url(&self, kind: &str, keyspace: &str, key: &str) -> String {
        format!(
            "{}/v1/{kind}/{}/{}",
            self.base,
            utf8_percent_encode(keyspace, SEGMENT),
            utf8_percent_encode(key, SEGMENT)
        )
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?.to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

pub async fn kv(args: ClientArgs, cmd: KvCommand) -> Result<()> {
    let c = Client::new(&args)?;
    match cmd {
        KvCommand::Put {
            keyspace,
            key,
            value,
            context,
            ttl,
            if_match,
        } => {
            let mut req = c.http.put(c.url("kv", &keyspace, &key)).body(value);
            if let Some(t) = &ttl {
                req = req.header("x-atoll-ttl", t.as_str());
            }
            if let Some(s) = &args.session {
                req = req.header("x-atoll-session", s);
            }
            if let Some(ctx) = context {
                req = req.header("x-atoll-context", ctx);
            }
            if let Some(rev) = if_match {
                req = req.header("if-match", rev.to_string());
            }
            let r = c.send(req).await?.check()?;
            let session = r.header("x-atoll-session").map(str::to_string);
            let mut v = r.json()?;
            match c.output {
                Output::Json => {
                    if let Some(s) = &session {
                        v["session"] = json!(s);
                    }
                    c.print_json(&v)
                }
                Output::Human if v["revision"].is_u64() => println!(
                    "ok: revision {} (strong; leader {}, answered by {})",
                    v["revision"],
                    v["leader"].as_str().unwrap_or("?"),
                    v["region"].as_str().unwrap_or("?")
                ),
                Output::Human => {
                    println!(
                        "ok: written in {} (seq {}, timestamp {})",
                        v["region"].as_str().unwrap_or("?"),
                        v["seq"],
                        v["timestamp"].as_str().unwrap_or("?")
                    );
                    if let Some(e) = v["expires_at_ms"].as_u64() {
                        println!("expires: {}", expiry_text(e));
                    }
                    if let Some(ctx) = v["context"].as_str() {
                        println!("context: {ctx}");
                    }
                    if let Some(s) = &session {
                        println!("session: {s}");
                    }
                }
            }
        }
        KvCommand::Get {
            keyspace,
            key,
            wait_ms,
            max_staleness,
        } => {
            let mut query = Vec::new();
            if let Some(ms) = wait_ms {
                query.push(format!("wait_ms={ms}"));
            }
            if let Some(m) = max_staleness {
                let ms = atoll_config::duration::parse_ms(&m)
                    .map_err(|e| anyhow!("--max-staleness `{m}`: {e}"))?;
                query.push(format!("max_staleness={ms}ms"));
            }
            let mut url = c.url("kv", &keyspace, &key);
            if !query.is_empty() {
                url = format!("{url}?{}", query.join("&"));
            }
            let mut req = c.http.get(url);
            if let Some(s) = &args.session {
                req = req.header("x-atoll-session", s);
            }
            let r = c.send(req).await?;
            let session = r.header("x-atoll-session").map(str::to_string);
            let context = r.header("x-atoll-context").map(str::to_string);
            let region = r.header("x-atoll-region").unwrap_or("?").to_string();
            let r = r.check()?;
            if r.status == 300 {
                let v = r.json()?;
                match c.output {
                    Output::Json => c.print_json(&json!({"status": 300, "region": region, "siblings": v["siblings"], "context": v["context"]})),
                    Output::Human => {
                        let sibs = v["siblings"].as_array().cloned().unwrap_or_default();
                        println!("{} concurrent values (siblings), served by {region}:", sibs.len());
                        for s in sibs {
                            let shown = s["value"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| format!("base64:{}", s["value_base64"].as_str().unwrap_or("")));
                            let expiry = s["expires_at_ms"]
                                .as_u64()
                                .map(|e| format!("; expires {}", expiry_text(e)))
                                .unwrap_or_default();
                            println!(
                                "  - {shown}   (written in {} at {}{expiry})",
                                s["region"].as_str().unwrap_or("?"),
                                s["timestamp"].as_str().unwrap_or("?")
                            );
                        }
                        println!("context: {}", v["context"].as_str().unwrap_or(""));
                        println!("resolve with: atoll kv put {keyspace} {key} <merged value> --context <context>");
                    }
                }
            } else {
                match c.output {
                    Output::Json => {
                        let text = String::from_utf8(r.body.clone()).ok();
                        c.print_json(&json!({
                            "status": r.status,
                            "region": region,
                            "value": text,
                            "context": context,
                            "timestamp": r.header("x-atoll-timestamp"),
                            "expires_at_ms": r.header("x-atoll-expires-at").and_then(|e| e.parse::<u64>().ok()),
                            "session": session,
                            "staleness_ms": r.header("x-atoll-staleness-ms"),
                        }))
                    }
                    Output::Human => {
                        println!("{}", String::from_utf8_lossy(&r.body));
                        if let Some(e) = r.header("x-atoll-expires-at").and_then(|e| e.parse().ok())
                        {
                            eprintln!("expires: {}", expiry_text(e));
                        }
                        if let Some(ctx) = context {
                            eprintln!("context: {ctx}");
                        }
                        if let Some(s) = session {
                            eprintln!("session: {s}");
                        }
                    }
                }
            }
        }
        KvCommand::Ttl { keyspace, key } => {
            let v = c
                .send(c.http.get(c.url("ttl", &keyspace, &key)))
                .await?
                .check()?
                .json()?;
            match c.output {
                Output::Json => c.print_json(&v),
                Output::Human => match v["expires_at_ms"].as_u64() {
                    Some(e) => println!("expires: {}", expiry_text(e)),
                    None => println!("never expires"),
                },
            }
        }
        KvCommand::Expire { keyspace, key, ttl } => {
            let mut req = c
                .http
                .put(c.url("ttl", &keyspace, &key))
                .header("x-atoll-ttl", ttl.as_str());
            if let Some(s) = &args.session {
                req = req.header("x-atoll-session", s);
            }
            let v = c.send(req).await?.check()?.json()?;
            match c.output {
                Output::Json => c.print_json(&v),
                Output::Human => match v["expires_at_ms"].as_u64() {
                    Some(e) => println!(
                        "ok: written in {} (seq {}); expires: {}",
                        v["region"].as_str().unwrap_or("?"),
                        v["seq"],
                        expiry_text(e)
                    ),
                    None => println!("ok"),
                },
            }
        }
        KvCommand::Persist { keyspace, key } => {
            let mut req = c.http.delete(c.url("ttl", &keyspace, &key));
            if let Some(s) = &args.session {
                req = req.header("x-atoll-session", s);
            }
            let v = c.send(req).await?.check()?.json()?;
            match c.output {
                Output::Json => c.print_json(&v),
                Output::Human if v["changed"] == json!(false) => {
                    println!("ok: the key had no expiry (nothing written)")
                }
                Output::Human => println!(
                    "ok: written in {} (seq {}); never expires",
                    v["region"].as_str().unwrap_or("?"),
                    v["seq"]
                ),
            }
        }
        KvCommand::Del {
            keyspace,
            key,
            context,
            if_match,
        } => {
            let mut req = c.http.delete(c.url("kv", &keyspace, &key));
            if let Some(s) = &args.session {
                req = req.header("x-atoll-session", s);
            }
            if let Some(ctx) = context {
                req = req.header("x-atoll-context", ctx);
            }
            if let Some(rev) = if_match {
                req = req.header("if-match", rev.to_string());
            }
            let v = c.send(req).await?.check()?.json()?;
            match c.output {
                Output::Json => c.print_json(&v),
                Output::Human if v["revision"].is_u64() => println!(
                    "ok: deleted at revision {} (strong; leader {})",
                    v["revision"],
                    v["leader"].as_str().unwrap_or("?")
                ),
                Output::Human => println!(
                    "ok: deleted in {} (seq {})",
                    v["region"].as_str().unwrap_or("?"),
                    v["seq"]
                ),
            }
        }
    }
    Ok(())
}

/// An expiry instant as the CLI shows it: the instant (ms since the epoch) and how far away it
/// is by this machine's clock.
fn expiry_text(at_ms: u64) -> String {
    use atoll_core::clock::Clock as _;
    let now = atoll_core::clock::SystemClock.physical_ms();
    if at_ms > now {
        format!(
            "at {at_ms} ms since the epoch (in {})",
            atoll_config::duration::human(at_ms - now)
        )
    } else {
        format!("at {at_ms} ms since the epoch (expired)")
    }
}

pub async fn ratelimit(args: ClientArgs, cmd: RatelimitCommand) -> Result<()> {
    let c = Client::new(&args)?;
    let (r, hit) = match cmd {
        RatelimitCommand::Hit {
            keyspace,
            key,
            cost,
        } => {
            let req = c
                .http
                .post(c.url("ratelimit", &keyspace, &key))
                .json(&json!({ "cost": cost }));
            (c.send(req).await?, true)
        }
        RatelimitCommand::Get { keyspace, key } => (
            c.send(c.http.get(c.url("ratelimit", &keyspace, &key)))
                .await?,
            false,
        ),
    };
    // 429 is a decision (denied), not an error.
    let denied = r.status == 429;
    let v = if denied {
        r.json()?
    } else {
        r.check()?.json()?
    };
    match c.output {
        Output::Json => c.print_json(&v),
        Output::Human => {
            let left = format!(
                "{} of {} left in {}",
                v["remaining"],
                v["limit"],
                v["region"].as_str().unwrap_or("?")
            );
            if denied {
                println!(
                    "denied: {left}; retry in {}",
                    atoll_config::duration::human(v["retry_after_ms"].as_u64().unwrap_or(0))
                );
            } else if hit {
                println!("allowed: {left}");
            } else {
                println!("{left}");
            }
        }
    }
    if denied {
        std::process::exit(2);
    }
    Ok(())
}

pub async fn counter(args: ClientArgs, cmd: CounterCommand) -> Result<()> {
    let c = Client::new(&args)?;
    let v = match cmd {
        CounterCommand::Incr { keyspace, key, by } => {
            let req = c
                .http
                .post(c.url("counter", &keyspace, &key))
                .json(&json!({"delta": by}));
            c.send(req).await?.check()?.json()?
        }
        CounterCommand::Get { keyspace, key } => c
            .send(c.http.get(c.url("counter", &keyspace, &key)))
            .await?
            .check()?
            .json()?,
    };
    match c.output {
        Output::Json => c.print_json(&v),
        Output::Human => println!("{}", v["value"]),
    }
    Ok(())
}

pub async fn set(args: ClientArgs, cmd: SetCommand) -> Result<()> {
    let c = Client::new(&args)?;
    let v = match cmd {
        SetCommand::Add {
            keyspace,
            key,
            members,
        } => {
            let req = c
                .http
                .post(c.url("set", &keyspace, &key))
                .json(&json!({"add": members}));
            c.send(req).await?.check()?.json()?
        }
        SetCommand::Remove {
            keyspace,
            key,
            members,
        } => {
            let req = c
                .http
                .post(c.url("set", &keyspace, &key))
                .json(&json!({"remove": members}));
            c.send(req).await?.check()?.json()?
        }
        SetCommand::Members { keyspace, key } => c
            .send(c.http.get(c.url("set", &keyspace, &key)))
            .await?
            .check()?
            .json()?,
    };
    match c.output {
        Output::Json => c.print_json(&v),
        Output::Human => {
            for m in v["members"].as_array().cloned().unwrap_or_default() {
                println!("{}", m.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// Lines on owned keyspaces for `atoll status`: the homes, overrides, the move in flight and
/// the last move.
pub fn homes_lines(h: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(ks) = h["keyspaces"].as_object() else {
        return out;
    };
    let sel = |s: &Value| {
        s["prefix"]
            .as_str()
            .map(|p| {
                if p.is_empty() {
                    "default".to_string()
                } else {
                    format!("{p}*")
                }
            })
            .or_else(|| s["key"].as_str().map(str::to_string))
            .or_else(|| {
                s["hash"]
                    .as_array()
                    .map(|h| format!("hash {}-{}", h[0], h[1]))
            })
            .unwrap_or_default()
    };
    for (name, k) in ks {
        let mut rules: Vec<String> = k["homes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{}->{}", sel(r), r["region"].as_str().unwrap_or("?")))
            .collect();
        rules.push(format!(
            "default->{}",
            k["default_home"].as_str().unwrap_or("?")
        ));
        out.push(format!("owned {name}: {}", rules.join(", ")));
        if let Some(n) = k["claimed_keys"].as_u64().filter(|n| *n > 0) {
            out.push(format!("  homed by first write: {n} keys"));
        }
        let overrides: Vec<String> = k["overrides"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                format!(
                    "{}->{}",
                    sel(&o["selector"]),
                    o["home"].as_str().unwrap_or("?")
                )
            })
            .collect();
        if !overrides.is_empty() {
            out.push(format!("  moved: {}", overrides.join(", ")));
        }
        if let Some(m) = k["moving"].as_object() {
            out.push(format!(
                "  MOVING (move {}): {} -> {}{}",
                m["id"],
                m["from"].as_str().unwrap_or("?"),
                m["to"].as_str().unwrap_or("?"),
                if m["takeover"] == true {
                    ", takeover"
                } else {
                    ""
                }
            ));
        }
        if let Some(last) = k["moves"].as_array().and_then(|m| m.last()) {
            out.push(format!(
                "  last move {}: {} -> {}, {}{}",
                last["id"],
                last["from"].as_str().unwrap_or("?"),
                last["to"].as_str().unwrap_or("?"),
                last["outcome"].as_str().unwrap_or("?"),
                match last["lost_ops"].as_u64() {
                    Some(n) if n > 0 => format!(", up to {n} writes lost"),
                    _ => String::new(),
                }
            ));
        }
    }
    out
}

/// One line on fencing for `atoll status`: role, epoch, holder, lease remaining.
pub fn fencing_line(f: &Value) -> String {
    let role = f["role"].as_str().unwrap_or("active");
    let model = f["model"].as_str().unwrap_or("active-active");
    if model == "active-active" {
        return match f.get("quorum_window_left_ms").and_then(Value::as_u64) {
            Some(ms) => format!(
                "fencing: {role} (active-active, quorum fencing; quorum window {:.1} s left)",
                ms as f64 / 1000.0
            ),
            None => "fencing: off (active-active, every region writes)".to_string(),
        };
    }
    let holder = f["holder"].as_str().unwrap_or("none");
    let lease = f["lease_remaining_ms"].as_u64().map_or_else(
        || "-".to_string(),
        |ms| format!("{:.1} s", ms as f64 / 1000.0),
    );
    let window = f["window_left_ms"].as_u64().unwrap_or(0);
    let mut line = format!(
        "fencing: role {role}, epoch {}, lease holder {holder} ({model}), lease could end in {lease}",
        f["epoch"]
    );
    if role == "primary" {
        line.push_str(&format!(
            ", own write window {:.1} s",
            window as f64 / 1000.0
        ));
    }
    if let Some(t) = f["handing_over_to"].as_str() {
        line.push_str(&format!(", SWITCHOVER to {t} in progress"));
    }
    line
}

/// Admin calls (`atoll promote`, `atoll switchover`): the region's admin token.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminArgs {
    /// The cluster config: where each region's client API is.
    #[arg(long, env = "ATOLL_CONFIG", default_value = "atoll.toml")]
    pub config: PathBuf,
    /// The regions' admin token (ATOLL_ADMIN_TOKEN of the region processes).
    #[arg(
        long,
        env = "ATOLL_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub output: Output,
}

fn admin_endpoint(cfg: &atoll_config::Config, region: &str) -> Result<String> {
    match cfg.region(region) {
        Some(r) => Ok(format!("http://{}", r.api)),
        None => bail!(
            "`{region}` is not a region of {} (regions: {})",
            cfg.source,
            cfg.regions
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn admin_post(args: &AdminArgs, url: String, body: Value) -> Result<Value> {
    let token = args
        .admin_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            anyhow!("set ATOLL_ADMIN_TOKEN (or --admin-token) to the regions' admin token")
        })?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let resp = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let e = &v["error"];
        bail!(
            "{} ({}): {}{}",
            e["message"].as_str().unwrap_or("request failed"),
            e["code"].as_str().unwrap_or(status.as_str()),
            e["hint"].as_str().unwrap_or(""),
            if status.as_u16() == 409 && e["code"] == "ATOLL-DATA-LOSS" {
                "\n(to promote anyway and lose these writes: add --accept-data-loss)"
            } else {
                ""
            }
        );
    }
    Ok(v)
}

/// `atoll promote REGION`.
pub async fn promote(args: AdminArgs, region: String, accept_data_loss: bool) -> Result<()> {
    let cfg = atoll_config::Config::load(&args.config).map_err(anyhow::Error::msg)?;
    let url = format!("{}/v1/admin/promote", admin_endpoint(&cfg, &region)?);
    let v = admin_post(&args, url, json!({"accept_data_loss": accept_data_loss})).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Human => {
            println!(
                "{region} is primary (epoch {}), took over from {}",
                v["epoch"],
                v["previous"].as_str().unwrap_or("nobody")
            );
            let ops = v["exposure"]["ops"].as_u64().unwrap_or(0);
            if ops > 0 {
                println!(
                    "exposure: {ops} acknowledged writes of the old primary were not replicated here ({}); they return if the old primary comes back",
                    v["exposure"]["ms"]
                        .as_u64()
                        .map_or("age unknown".to_string(), |ms| format!(
                            "about {ms} ms of writes"
                        ))
                );
            } else {
                println!("exposure: none (every write the old primary was known to hold is here)");
            }
        }
    }
    Ok(())
}

/// `atoll keyspace rehome`: asks a region (the new home first, then the others in config order,
/// while they cannot be reached) to move the home of a key, prefix or hash range (`selector`: a
/// JSON object with one of `key`, `prefix`, `hash`).
pub async fn rehome(
    args: AdminArgs,
    keyspace: String,
    selector: Value,
    to: String,
    force: bool,
    timeout_secs: f64,
) -> Result<()> {
    let cfg = atoll_config::Config::load(&args.config).map_err(anyhow::Error::msg)?;
    admin_endpoint(&cfg, &to)?;
    let timeout_ms = (timeout_secs.clamp(0.1, 600.0) * 1000.0) as u64;
    let mut body = json!({
        "keyspace": keyspace, "to": to, "force": force, "timeout_ms": timeout_ms,
    });
    if let (Some(b), Some(sel)) = (body.as_object_mut(), selector.as_object()) {
        b.extend(sel.clone());
    }
    let mut order: Vec<&str> = vec![to.as_str()];
    order.extend(
        cfg.regions
            .iter()
            .map(|r| r.name.as_str())
            .filter(|r| *r != to),
    );
    let mut last = None;
    let mut v = None;
    for region in order {
        let url = format!("{}/v1/admin/rehome", admin_endpoint(&cfg, region)?);
        match admin_post(&args, url, body.clone()).await {
            Ok(answer) => {
                v = Some(answer);
                break;
            }
            // Only an unreachable region is skipped: an answer (even a refusal) is final.
            Err(e) if e.to_string().starts_with("cannot reach") => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    let Some(v) = v else {
        return Err(last.unwrap_or_else(|| anyhow!("no region to ask")));
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Human => {
            let what = v["selectors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            println!(
                "{keyspace}: {what} moved from {} to {} (move {}, {}; keys not writable for {} ms)",
                v["from"].as_str().unwrap_or("?"),
                v["to"].as_str().unwrap_or("?"),
                v["id"],
                v["outcome"].as_str().unwrap_or("?"),
                v["writes_stopped_ms"]
            );
            match v["lost_ops"].as_u64() {
                Some(0) | None => {
                    println!("lost: nothing (the new home had applied every write of the old one)")
                }
                Some(n) => println!(
                    "lost: up to {n} writes the old home acknowledged had not reached the new home (RPO {} ms); they come back if the old home does",
                    v["rpo_ms"]
                ),
            }
        }
    }
    Ok(())
}

/// `atoll switchover REGION`: asks the current primary (found through any region's status) to
/// hand the lease to REGION.
pub async fn switchover(args: AdminArgs, target: String, timeout_secs: f64) -> Result<()> {
    let cfg = atoll_config::Config::load(&args.config).map_err(anyhow::Error::msg)?;
    admin_endpoint(&cfg, &target)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut primary = None;
    for r in &cfg.regions {
        let Ok(resp) = http.get(format!("http://{}/v1/status", r.api)).send().await else {
            continue;
        };
        let Ok(v) = resp.json::<Value>().await else {
            continue;
        };
        if let Some(h) = v["fencing"]["holder"].as_str() {
            primary = Some(h.to_string());
            break;
        }
    }
    let Some(primary) = primary else {
        bail!(
            "no region reports a lease holder: nothing to switch over (is the cluster active-standby or active-passive, and reachable?)"
        );
    };
    if primary == target {
        bail!("`{target}` already holds the write lease");
    }
    let url = format!("{}/v1/admin/switchover", admin_endpoint(&cfg, &primary)?);
    let timeout_ms = (timeout_secs.clamp(0.1, 600.0) * 1000.0) as u64;
    let v = admin_post(
        &args,
        url,
        json!({"target": target, "timeout_ms": timeout_ms}),
    )
    .await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Human => println!(
            "switched over from {primary} to {target} (epoch {}): nothing lost (head {} applied by {target}), writes stopped for {} ms",
            v["epoch"], v["head"], v["writes_stopped_ms"]
        ),
    }
    Ok(())
}

/// Shows a region's status. Fails (non-zero exit) when a peer is unreachable or lags more than
/// `max_lag` seconds (default: the cluster's `replication.max_lag_secs`).
pub async fn status(args: ClientArgs, max_lag: Option<f64>) -> Result<()> {
    let c = Client::new(&args)?;
    let v = c
        .send(c.http.get(format!("{}/v1/status", c.base)))
        .await?
        .check()?
        .json()?;
    let max_lag = max_lag
        .or_else(|| v["replication"]["max_lag_secs"].as_f64())
        .unwrap_or(10.0);
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    if v["replication"]["bootstrap"].is_object() {
        problems.push("bootstrapping by snapshot: serving no client traffic".to_string());
    }
    let m = &v["membership"];
    if m["admitted"].as_bool() == Some(false) {
        let waiting: Vec<&str> = m["waiting_for"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        problems.push(format!(
            "joining: takes no writes until admitted by {} (each must reload a config that lists this region, and this region catch up with it)",
            if waiting.is_empty() { "its peers".to_string() } else { waiting.join(", ") }
        ));
    }
    if let Some(line) = removed_by_line(&m["removed_by"]) {
        problems.push(line);
    }
    for p in &peers {
        let name = p["region"].as_str().unwrap_or("?");
        if p["reachable"].as_bool() != Some(true) {
            problems.push(format!("{name} is unreachable"));
        } else if p["state"].as_str() == Some("clock-skew") {
            problems.push(format!("{name}'s clock runs ahead beyond max_clock_offset"));
        } else if p["state"].as_str() == Some("one-way") {
            problems.push(format!(
                "{name} does not hear this region (one-way partition)"
            ));
        }
        match p["lag_seconds"].as_f64() {
            Some(l) if l > max_lag => {
                problems.push(format!("{name} lags {l:.1} s (limit {max_lag} s)"))
            }
            None => problems.push(format!("{name}: never caught up")),
            _ => {}
        }
    }
    // Loud in every output mode: stderr, so that JSON on stdout stays JSON.
    if let Some(w) = v["peer_tls"]["warning"].as_str() {
        eprintln!("warning: {w}");
    }
    match c.output {
        Output::Json => c.print_json(&v),
        Output::Human => {
            println!(
                "region {} of cluster {} ({}), {}",
                v["region"].as_str().unwrap_or("?"),
                v["cluster"].as_str().unwrap_or("?"),
                v["model"].as_str().unwrap_or("?"),
                if v["serving"].as_bool() == Some(true) {
                    "serving"
                } else {
                    "NOT serving"
                }
            );
            println!(
                "store: {} writes, last seq {}",
                v["store"]["writes_total"], v["store"]["last_seq"]
            );
            println!("{}", fencing_line(&v["fencing"]));
            for line in homes_lines(&v["homes"]) {
                println!("{line}");
            }
            match v["peer_tls"]["mode"].as_str() {
                Some("mutual-tls") => {
                    println!("between regions: mutual TLS (peers authenticated by the cluster CA)")
                }
                Some("insecure") => println!(
                    "between regions: INSECURE, plain HTTP, peers not authenticated ([cluster.tls] insecure = true)"
                ),
                _ => {}
            }
            if !peers.is_empty() {
                let streaming: Vec<&str> = v["replication"]["streaming_to"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                match v["replication"]["established"].as_bool() {
                    Some(true) => println!(
                        "replication: established (every peer hears this region and streams its writes)"
                    ),
                    Some(false) => println!(
                        "replication: not established with every peer (its writes stream to: {}; link states below)",
                        if streaming.is_empty() {
                            "none".to_string()
                        } else {
                            streaming.join(", ")
                        }
                    ),
                    None => {}
                }
            }
            if !peers.is_empty() {
                println!(
                    "\n  {:<16} {:<12} {:>9} {:>10} {:>9} {:>10}",
                    "peer", "link", "rtt ms", "lag s", "lag ops", "offset ms"
                );
                let num = |x: &Value, digits: usize| {
                    x.as_f64()
                        .map_or("-".to_string(), |f| format!("{f:.digits$}"))
                };
                for p in &peers {
                    println!(
                        "  {:<16} {:<12} {:>9} {:>10} {:>9} {:>10}",
                        p["region"].as_str().unwrap_or("?"),
                        p["state"].as_str().unwrap_or("?"),
                        num(&p["rtt_ms"], 1),
                        num(&p["lag_seconds"], 2),
                        p["lag_ops"],
                        num(&p["clock_offset_ms"], 1),
                    );
                }
            }
            for k in v["keyspaces"].as_array().cloned().unwrap_or_default() {
                let mut line = format!(
                    "  keyspace {:<16} {}",
                    k["name"].as_str().unwrap_or("?"),
                    k["policy"].as_str().unwrap_or("?")
                );
                if k["policy"] == "strong" {
                    // Strong keyspaces: the consensus leader, term and this region's role.
                    line.push_str(&format!(
                        " (leader {}, term {}, this region {})",
                        k["leader"].as_str().unwrap_or("none known"),
                        k["term"],
                        k["role"].as_str().unwrap_or("?")
                    ));
                }
                println!("{line}");
            }
            if v["strong"]["alone"] == true {
                println!(
                    "strong keyspaces: this region hears no other region: it refuses their reads and writes (ATOLL-NO-QUORUM)"
                );
            }
            if let Some(h) = v["replication"]["tombstone_horizon_ms"].as_u64() {
                println!("tombstone horizon: {h} ms since the epoch");
            }
            if let Some(t) = v["replication"]["oplog_truncated_through"].as_object()
                && !t.is_empty()
            {
                let parts: Vec<String> = t.iter().map(|(o, n)| format!("{o} {n}")).collect();
                println!("operation log truncated through: {}", parts.join(", "));
            }
            let b = &v["replication"]["bootstrap"];
            if b.is_object() {
                println!(
                    "BOOTSTRAPPING by snapshot (serving no client traffic): {} keys, {} bytes loaded; donor {}; {}{}",
                    b["keys_loaded"],
                    b["bytes_loaded"],
                    b["donor"].as_str().unwrap_or("none yet"),
                    b["reason"].as_str().unwrap_or("?"),
                    b["last_error"]
                        .as_str()
                        .map(|e| format!("; last attempt: {e}"))
                        .unwrap_or_default()
                );
            }
            if m.is_object() {
                println!(
                    "membership: {} of {}{}",
                    if m["voter"].as_bool() == Some(true) {
                        "voter"
                    } else {
                        "replica (voter = false)"
                    },
                    m["regions"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default(),
                    if m["admitted"].as_bool() == Some(false) {
                        "; JOINING (not admitted yet)"
                    } else {
                        ""
                    }
                );
                for line in removal_lines(m) {
                    println!("{line}");
                }
            }
            drill_lines();
        }
    }
    if !problems.is_empty() {
        bail!("unhealthy: {}", problems.join("; "));
    }
    Ok(())
}

/// `atoll status`: this region was removed from the cluster (`membership.removed_by`), if so.
pub fn removed_by_line(r: &Value) -> Option<String> {
    if !r.is_object() {
        return None;
    }
    Some(format!(
        "REMOVED from the cluster (said {}): takes no writes; the members hold {} of its writes, {} are not replicated (kept in its data directory)",
        r["by"].as_str().unwrap_or("?"),
        r["held_by_members"],
        r["unreplicated_writes"]
    ))
}

/// `atoll status`: the regions this region removed from the cluster, settled or waiting for
/// whom, and whether it was removed itself (`docs/design/region-removal.md`).
pub fn removal_lines(m: &Value) -> Vec<String> {
    let mut lines: Vec<String> = removed_by_line(&m["removed_by"]).into_iter().collect();
    for r in m["removed"].as_array().into_iter().flatten() {
        let name = r["region"].as_str().unwrap_or("?");
        let holds = &r["applied_seq"];
        let state = if r["settled"].as_bool() == Some(true) {
            "its writes are settled".to_string()
        } else if r["effective"].as_bool() != Some(true) {
            "removal not in effect yet".to_string()
        } else {
            let waiting: Vec<&str> = r["waiting_for"]
                .as_array()
                .map(|a| a.iter().filter_map(|w| w.as_str()).collect())
                .unwrap_or_default();
            format!(
                "not settled, waiting for {}",
                if waiting.is_empty() {
                    "its peers".to_string()
                } else {
                    waiting.join(", ")
                }
            )
        };
        lines.push(format!(
            "removed {name}: holds {holds} of its writes; {state}"
        ));
    }
    lines
}

/// `atoll status`: when each drill scenario last passed, from this machine's outcome store.
fn drill_lines() {
    use atoll_core::clock::{Clock, SystemClock};
    let dir = atoll_drill::outcome::default_state_dir();
    let Ok(o) = atoll_drill::outcome::Outcomes::load(&dir) else {
        return;
    };
    if o.scenarios.is_empty() {
        return;
    }
    let now = SystemClock.physical_ms();
    println!("drills (from {}):", dir.display());
    for (name, s) in &o.scenarios {
        println!(
            "  {:<28} last run {} ({}), last passed {}",
            name,
            atoll_drill::outcome::ago(now, s.last_run_unix_ms),
            if s.last_passed { "passed" } else { "FAILED" },
            s.last_pass_unix_ms
                .map_or("never".to_string(), |t| atoll_drill::outcome::ago(now, t))
        );
    }
}

/// What `atoll watch` follows.
pub struct WatchTarget {
    pub keyspace: String,
    pub key: Option<String>,
    pub prefix: Option<String>,
    /// Resume from this token (printed with every event).
    pub resume: Option<String>,
    /// Stop after this many change events.
    pub count: Option<u64>,
}

/// One Server-Sent Event.
struct Sse {
    event: String,
    data: String,
}

/// Takes the complete events off the front of `buf` (an SSE stream read so far).
fn sse_events(buf: &mut String) -> Vec<Sse> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let (mut event, mut data) = (String::from("message"), Vec::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            out.push(Sse {
                event,
                data: data.join("\n"),
            });
        }
    }
    out
}

/// A human line for a change event: `flags/beta: members [a, b]  (us-east-1 seq 12)`.
fn watch_line(kind: &str, v: &Value) -> String {
    let key = v["key"].as_str().map_or_else(
        || format!("base64:{}", v["key_base64"].as_str().unwrap_or("")),
        str::to_string,
    );
    let s = &v["state"];
    let state = if s["deleted"] == true {
        "deleted".to_string()
    } else if let Some(m) = s["members"].as_array() {
        format!(
            "members [{}]",
            m.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else if let Some(sibs) = s["siblings"].as_array() {
        format!(
            "{} siblings: {}",
            sibs.len(),
            sibs.iter()
                .map(|x| x["value"].as_str().unwrap_or("<binary>"))
                .collect::<Vec<_>>()
                .join(" | ")
        )
    } else if let Some(text) = s["value"].as_str() {
        format!("= {text}")
    } else if s["value"].is_i64() {
        format!("value {}", s["value"])
    } else {
        format!("= base64:{}", s["value_base64"].as_str().unwrap_or(""))
    };
    let from = match v["origin"].as_str() {
        Some(o) => format!("  ({o} seq {})", v["seq"]),
        None => String::new(),
    };
    let what = if kind == "state" { "state " } else { "" };
    format!(
        "{what}{}/{key}: {state}{from}",
        v["keyspace"].as_str().unwrap_or("?")
    )
}

/// `atoll watch`: follows a keyspace, a key or a prefix over Server-Sent Events and prints each
/// change; after a `lagged` event or a broken connection it resumes with the last token, so no
/// change is missed. Runs until interrupted (or `--count` changes).
pub async fn watch(args: ClientArgs, target: WatchTarget) -> Result<()> {
    let c = Client::new(&args)?;
    // A watch has no overall timeout; `--timeout` bounds connecting.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs_f64(args.timeout.max(0.001)))
        .build()?;
    let mut token = target.resume.clone();
    let mut seen = 0u64;
    let mut failures = 0u32;
    loop {
        let mut url = format!(
            "{}/v1/watch/{}",
            c.base,
            utf8_percent_encode(&target.keyspace, SEGMENT)
        );
        let mut query = Vec::new();
        if let Some(k) = &target.key {
            query.push(format!("key={}", utf8_percent_encode(k, SEGMENT)));
        }
        if let Some(p) = &target.prefix {
            query.push(format!("prefix={}", utf8_percent_encode(p, SEGMENT)));
        }
        if let Some(t) = &token {
            query.push(format!("token={}", utf8_percent_encode(t, SEGMENT)));
        }
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let mut req = http.get(&url).header("accept", "text/event-stream");
        if let Some(t) = &c.token {
            req = req.bearer_auth(t);
        }
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) if failures < 5 && token.is_some() => {
                failures += 1;
                eprintln!("watch: connection lost ({e}); resuming");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                continue;
            }
            Err(e) => bail!("cannot reach {}: {e}", c.base),
        };
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default().to_vec();
            Reply {
                status,
                headers: Default::default(),
                body,
            }
            .check()?;
            bail!("HTTP {status}");
        }
        failures = 0;
        let mut buf = String::new();
        let mut lagged = false;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("watch: stream broken ({e}); resuming");
                    break;
                }
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            for ev in sse_events(&mut buf) {
                let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                    continue;
                };
                if let Some(t) = v["token"].as_str() {
                    token = Some(t.to_string());
                }
                match (ev.event.as_str(), c.output) {
                    ("ready", _) => {}
                    (kind, Output::Json) => {
                        let mut v = v;
                        v["event"] = json!(kind);
                        println!("{v}");
                    }
                    ("change" | "state", Output::Human) => {
                        println!("{}", watch_line(&ev.event, &v))
                    }
                    ("reset", Output::Human) => println!(
                        "reset: {} (the current state follows)",
                        v["reason"].as_str().unwrap_or("")
                    ),
                    ("lagged", Output::Human) => eprintln!(
                        "watch: fell behind ({}); resuming",
                        v["reason"].as_str().unwrap_or("")
                    ),
                    _ => {}
                }
                if ev.event == "lagged" {
                    lagged = true;
                }
                if ev.event == "change" {
                    seen += 1;
                    if target.count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
        }
        if !lagged && token.is_none() {
            bail!("the watch ended before it started");
        }
        // The stream ended (lagged, or the region went away): resume where it stopped.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_names_removed_regions_and_a_removal_of_this_region() {
        let m = json!({
            "voter": true,
            "admitted": true,
            "regions": ["a", "b", "c"],
            "waiting_for": [],
            "removed": [
                {"region": "d", "effective": true, "settled": true, "applied_seq": 12, "waiting_for": []},
                {"region": "e", "effective": true, "settled": false, "applied_seq": 3, "waiting_for": ["b", "c"]},
            ],
        });
        assert_eq!(
            removal_lines(&m),
            [
                "removed d: holds 12 of its writes; its writes are settled",
                "removed e: holds 3 of its writes; not settled, waiting for b, c",
            ]
        );
        assert_eq!(removed_by_line(&m["removed_by"]), None);
        let gone = json!({
            "removed": [],
            "removed_by": {"by": "a", "at_ms": 1, "held_by_members": 40, "unreplicated_writes": 2},
        });
        let lines = removal_lines(&gone);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("REMOVED from the cluster (said a)"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("hold 40 of its writes, 2 are not replicated"),
            "{}",
            lines[0]
        );
    }
}
