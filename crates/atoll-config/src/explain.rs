//! [`Config::explain`]: what was understood, in plain text, defaults included.

use crate::duration::human;
use crate::promise::Promotion;
use crate::router::{
    DEFAULT_TTL_SECS, InitialHealth, NoHealthyPolicy, RoutePolicy, RouterConfig,
    RouterHealthConfig, RouterProxyConfig,
};
use crate::{
    Config, DEFAULT_CONFLICT_MAX_ENTRIES, DEFAULT_CONFLICT_RETENTION_SECS,
    DEFAULT_GROUP_COMMIT_MAX_BATCH, DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_MAX_CLOCK_OFFSET_MS,
    DEFAULT_MAX_JSON_BODY_BYTES, DEFAULT_MAX_LAG_SECS, DEFAULT_MAX_SIBLINGS,
    DEFAULT_MAX_VALUE_BYTES, INSECURE_WARNING, KEY_MAX_BYTES, KeyspaceConfig, Model, PeerTls,
};
use atoll_core::op::Policy;
use std::fmt::Write as _;

pub(crate) fn explain(config: &Config) -> String {
    let mut out = String::new();
    let c = &config.cluster;
    let _ = writeln!(out, "cluster {}", c.name);
    let _ = writeln!(
        out,
        "  model                {}{}  ({})",
        c.model,
        default_mark(c.model == Model::default()),
        model_meaning(c.model)
    );
    let _ = writeln!(
        out,
        "  max_clock_offset_ms  {}{}  (a peer whose clock runs further ahead is rejected)",
        c.max_clock_offset_ms,
        default_mark(c.max_clock_offset_ms == DEFAULT_MAX_CLOCK_OFFSET_MS)
    );

    let _ = writeln!(out, "\nregions ({})", config.regions.len());
    let mut rows = vec![row(["name", "api", "peer", "resp", "location", "voter"])];
    for r in &config.regions {
        let peer = if r.peer == r.api {
            format!("{} (= api)", r.peer)
        } else {
            r.peer.to_string()
        };
        let location = match r.location {
            Some(g) => format!("lat {}, lon {}", g.lat, g.lon),
            None => "-".to_string(),
        };
        let resp = r.resp.map_or_else(|| "-".to_string(), |a| a.to_string());
        rows.push(vec![
            r.name.to_string(),
            r.api.to_string(),
            peer,
            resp,
            location,
            if r.voter {
                "yes".to_string()
            } else {
                "no (replica: in no consensus group)".to_string()
            },
        ]);
    }
    table(&mut out, &rows);

    peer_tls(&mut out, config);

    let _ = writeln!(out, "\nkeyspaces ({})", config.keyspaces.len());
    let mut rows = vec![row(["name", "policy", "reads", "options"])];
    for k in &config.keyspaces {
        rows.push(vec![
            k.name.clone(),
            k.policy.to_string(),
            read_level(k),
            keyspace_options(k),
        ]);
    }
    table(&mut out, &rows);
    let _ = writeln!(
        out,
        "  reads: the default read level (docs/design/session-consistency.md); any read may present X-Atoll-Session\n         for read-your-writes and monotonic reads, or say max_staleness=DURATION"
    );
    let _ = writeln!(
        out,
        "  keys: at most {KEY_MAX_BYTES} bytes in every keyspace (fixed)\n  policies: lww = last writer wins, losers kept in the conflict ledger; mvr = concurrent writes kept as siblings;\n            counter = PN-counter, increments from every region add up; set = add-wins observed-remove set;\n            owned = one home region per key writes it, no conflicts"
    );

    fencing(&mut out, config);

    let s = &config.storage;
    let _ = writeln!(out, "\nstorage");
    let _ = writeln!(
        out,
        "  group_commit_max_batch  {}{}  (most writes sharing one fsync)",
        s.group_commit_max_batch,
        default_mark(s.group_commit_max_batch == DEFAULT_GROUP_COMMIT_MAX_BATCH)
    );

    let r = &config.replication;
    let _ = writeln!(out, "\nreplication");
    let _ = writeln!(
        out,
        "  heartbeat_interval_ms     {}{}  (a peer silent for 3 intervals = {} ms is unreachable)",
        r.heartbeat_interval_ms,
        default_mark(r.heartbeat_interval_ms == DEFAULT_HEARTBEAT_INTERVAL_MS),
        r.heartbeat_interval_ms * 3
    );
    let _ = writeln!(
        out,
        "  max_lag_secs              {}{}  (`atoll status` fails when a peer lags more)",
        r.max_lag_secs,
        default_mark(r.max_lag_secs == DEFAULT_MAX_LAG_SECS)
    );
    let _ = writeln!(
        out,
        "  max_subscription_streams  {}{}  (most replication streams a region serves at once; more get 503 ATOLL-OVERLOADED)",
        r.subscription_stream_limit(config.regions.len()),
        if r.max_subscription_streams.is_none() {
            " (default: 4 per peer, at least 4)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  oplog_retention           {}{}  (an operation-log entry every region applied is kept this long, then truncated; a region down holds truncation back until it returns, and one that cannot catch up from the log bootstraps by snapshot)",
        crate::duration::to_config(r.oplog_retention_ms),
        default_mark(r.oplog_retention_ms == crate::DEFAULT_OPLOG_RETENTION_MS)
    );

    let a = &config.api;
    let _ = writeln!(out, "\napi");
    let size = bytes(a.max_json_body_bytes as u64)
        .map(|b| format!(" ({b})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  max_json_body_bytes  {}{size}{}  (largest counter or set update body; larger ones get 413 ATOLL-REQUEST-TOO-LARGE)",
        a.max_json_body_bytes,
        default_mark(a.max_json_body_bytes == DEFAULT_MAX_JSON_BODY_BYTES)
    );
    let _ = writeln!(
        out,
        "  max_watchers         {}{}  (open watches, GET /v1/watch/...; more get 503 ATOLL-OVERLOADED)",
        a.max_watchers,
        default_mark(a.max_watchers == crate::DEFAULT_MAX_WATCHERS)
    );
    let _ = writeln!(
        out,
        "  session_wait         {}{}  (how long a read with X-Atoll-Session waits for this region to apply it before 503 ATOLL-STALE; a read may say wait_ms=)",
        crate::duration::to_config(a.session_wait_ms),
        default_mark(a.session_wait_ms == crate::DEFAULT_SESSION_WAIT_MS)
    );

    let _ = writeln!(out, "\nauth");
    match &config.auth.tokens_file {
        Some(path) => {
            let _ = writeln!(
                out,
                "  tokens_file  {}  (bearer tokens and the keyspaces each may read and write; /healthz, /metrics and /v1/openapi.json stay open)",
                path.display()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  (no [auth] section: the client API is open to anyone who reaches it; see examples/tokens.toml)"
            );
        }
    }

    resp(&mut out, config);

    match &config.router {
        Some(rc) => router(&mut out, config, rc),
        None => {
            let _ = writeln!(
                out,
                "\nrouter\n  (no [router] section: `atoll router` needs one; see examples/three-regions.toml)"
            );
        }
    }
    promises(&mut out, config);
    out
}

/// `[resp]` and which regions listen (`docs/design/resp.md`).
fn resp(out: &mut String, config: &Config) {
    let r = &config.resp;
    let _ = writeln!(out, "\nresp (Redis protocol, docs/design/resp.md)");
    let listening: Vec<String> = config
        .regions
        .iter()
        .filter_map(|reg| reg.resp.map(|a| format!("{} on {a}", reg.name)))
        .collect();
    let _ = writeln!(
        out,
        "  listeners         {}",
        if listening.is_empty() {
            "none (a region serves RESP when its [[regions]] entry has `resp = \"IP:PORT\"`)"
                .to_string()
        } else {
            listening.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "  keys              KEYSPACE:KEY (the text before the first ':' names the keyspace)"
    );
    let _ = writeln!(
        out,
        "  default_keyspace  {}",
        match &r.default_keyspace {
            Some(k) => format!("{k}  (keys without a known keyspace prefix go here)"),
            None =>
                "none (default)  (a key without a known keyspace prefix is an error)".to_string(),
        }
    );
    let _ = writeln!(
        out,
        "  max_connections   {}{}  (per region; one more gets -ERR max number of clients reached)",
        r.max_connections,
        default_mark(r.max_connections == crate::DEFAULT_RESP_MAX_CONNECTIONS)
    );
    let _ = writeln!(
        out,
        "  auth              {}",
        if config.auth.tokens_file.is_some() {
            "AUTH <token> with the tokens of [auth]; each keyspace's read and write grants apply"
        } else {
            "off (no [auth]): anyone who reaches a RESP port can read and write every keyspace"
        }
    );
}

/// What the config promises when a region dies ([`crate::promise`]).
fn promises(out: &mut String, config: &Config) {
    let p = config.promises();
    let _ = writeln!(
        out,
        "\nwhen a region dies (worst cases computed from the settings above)"
    );
    match p.rto_ms {
        Some(rto) => {
            let _ = writeln!(out, "  rto (declared)       {}", human(rto));
        }
        None => {
            let _ = writeln!(
                out,
                "  rto                  not declared ([cluster] rto = \"60s\" makes `config check` compare it with what follows)"
            );
        }
    }
    match &p.detection {
        Some(d) => {
            let _ = writeln!(
                out,
                "  detection            {} = interval {} x failure_threshold {}, + up to {} for the last check to time out = {}",
                human(d.checks_ms),
                human(d.interval_ms),
                d.failure_threshold,
                human(d.timeout_ms),
                human(d.worst_ms)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  detection            none: no [router], so nothing here moves clients off a dead region"
            );
        }
    }
    for n in &p.dns {
        let _ = writeln!(
            out,
            "  DNS {:<16} {} = detection + TTL {} s (the article's interval x threshold + TTL: {}), + {} resolver slack assumed",
            n.name,
            human(n.worst_ms),
            n.ttl_secs,
            human(n.article_ms),
            human(n.resolver_slack_ms)
        );
        if let Some(f) = n.follows_primary_ms {
            let _ = writeln!(
                out,
                "  {:<20} {} to follow a new primary = promotion + one check + TTL + slack",
                "",
                human(f)
            );
        }
    }
    if let Some(px) = &p.proxy {
        let _ = writeln!(
            out,
            "  proxy                {} to eject by health checks{}; until then a request that cannot connect moves to the next region within {} (connect timeout), and one in flight waits up to {} (then retried if idempotent, else 502 ATOLL-UPSTREAM-OUTCOME-UNKNOWN)",
            human(px.ejection_worst_ms),
            if px.outlier_failures > 0 {
                format!(
                    ", or at once after {} failed requests in a row (passive)",
                    px.outlier_failures
                )
            } else {
                String::new()
            },
            human(px.connect_timeout_ms),
            human(px.request_timeout_ms)
        );
    }
    match &p.promotion {
        Promotion::NotNeeded => {
            let _ = writeln!(
                out,
                "  writes               every region takes writes: nothing to promote"
            );
        }
        Promotion::Automatic {
            expiry_wait_ms,
            tick_ms,
            worst_ms,
        } => {
            let _ = writeln!(
                out,
                "  promotion            {} = lease expiry wait {} + a tick of {}, plus a round trip to a majority (automated)",
                human(*worst_ms),
                human(*expiry_wait_ms),
                human(*tick_ms)
            );
        }
        Promotion::Manual { lease_expiry_ms } => {
            let _ = writeln!(
                out,
                "  promotion            manual: `atoll promote` once the lease has ended ({} after the last renewal); the article's active-passive RTO is minutes to tens of minutes",
                human(*lease_expiry_ms)
            );
        }
    }
    match p.worst_case_ms {
        Some(w) => {
            let _ = writeln!(
                out,
                "  worst case RTO       {}{}",
                human(w),
                match p.rto_ms {
                    Some(rto) if w > rto => " (ABOVE the declared rto: see the warnings)",
                    Some(_) => " (within the declared rto)",
                    None => "",
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  worst case RTO       not bounded by this config ({})",
                if config.router.is_none() {
                    "no [router]"
                } else {
                    "an operator promotes"
                }
            );
        }
    }
    let _ = writeln!(out, "  RPO per keyspace ({})", config.cluster.model);
    let w = p.keyspaces.iter().map(|k| k.name.len()).max().unwrap_or(0);
    for k in &p.keyspaces {
        let _ = writeln!(
            out,
            "    {:<w$}  {:<7}  {}",
            k.name,
            k.policy.to_string(),
            k.rpo.describe()
        );
    }
}

/// `key  value (default)  (meaning)` lines, aligned.
fn settings(out: &mut String, rows: &[(&str, String, bool, String)]) {
    let key_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let cells: Vec<String> = rows
        .iter()
        .map(|(_, v, d, _)| format!("{v}{}", default_mark(*d)))
        .collect();
    let val_w = cells.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    for ((key, _, _, meaning), cell) in rows.iter().zip(&cells) {
        let line = format!("    {key:<key_w$}  {cell:<val_w$}  ({meaning})");
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn router(out: &mut String, config: &Config, rc: &RouterConfig) {
    let _ = writeln!(out, "\nrouter");
    let _ = writeln!(out, "  zone      {}  (the authoritative DNS zone)", rc.zone);
    let _ = writeln!(
        out,
        "  ttl_secs  {}{}  (answer TTL of names that set none)",
        rc.ttl_secs,
        default_mark(rc.ttl_secs == DEFAULT_TTL_SECS)
    );

    let h = &rc.health;
    let d = RouterHealthConfig::default();
    let _ = writeln!(out, "  health");
    let initial = match h.initial {
        InitialHealth::Unhealthy => "unhealthy",
        InitialHealth::Healthy => "healthy",
    };
    settings(
        out,
        &[
            (
                "interval_ms",
                h.interval_ms.to_string(),
                h.interval_ms == d.interval_ms,
                "time between two checks of a region".into(),
            ),
            (
                "timeout_ms",
                h.timeout_ms.to_string(),
                h.timeout_ms == d.timeout_ms,
                "a check not answered within this fails".into(),
            ),
            (
                "failure_threshold",
                h.failure_threshold.to_string(),
                h.failure_threshold == d.failure_threshold,
                format!(
                    "consecutive failed checks that take a region out: a dead region is noticed within {} ms",
                    h.interval_ms * u64::from(h.failure_threshold)
                ),
            ),
            (
                "recovery_threshold",
                h.recovery_threshold.to_string(),
                h.recovery_threshold == d.recovery_threshold,
                "consecutive good checks that bring it back".into(),
            ),
            (
                "initial",
                initial.into(),
                h.initial == d.initial,
                "a region's state before its first check".into(),
            ),
            (
                "path",
                h.path.clone(),
                h.path == d.path,
                "what is checked, on each region's api address".into(),
            ),
            (
                "expect_status",
                h.expect_status.to_string(),
                h.expect_status == d.expect_status,
                "the status a good check answers".into(),
            ),
            (
                "expect_body",
                h.expect_body
                    .as_ref()
                    .map_or("-".to_string(), |b| format!("{b:?}")),
                h.expect_body.is_none(),
                "text a good check's body must contain".into(),
            ),
            (
                "hold_down_ms",
                h.hold_down_ms.to_string(),
                h.hold_down_ms == d.hold_down_ms,
                "least time a region stays out after failing; doubles while it flaps".into(),
            ),
            (
                "outlier_failures",
                h.outlier_failures.to_string(),
                h.outlier_failures == d.outlier_failures,
                "consecutive failed proxied requests that eject a region; 0: off".into(),
            ),
            (
                "ramp_secs",
                h.ramp_secs.to_string(),
                h.ramp_secs == d.ramp_secs,
                "a recovered region's share grows from 0 to full over this long".into(),
            ),
        ],
    );

    let p = &rc.proxy;
    let d = RouterProxyConfig::default();
    let _ = writeln!(
        out,
        "  proxy (atoll router --proxy; the command line can override each)"
    );
    let body = bytes(p.max_body_bytes)
        .map(|b| format!("{} ({b})", p.max_body_bytes))
        .unwrap_or_else(|| p.max_body_bytes.to_string());
    settings(
        out,
        &[
            (
                "connect_timeout_ms",
                p.connect_timeout_ms.to_string(),
                p.connect_timeout_ms == d.connect_timeout_ms,
                "--proxy-connect-timeout; a request that cannot connect in time is retried on the next region".into(),
            ),
            (
                "request_timeout_ms",
                p.request_timeout_ms.to_string(),
                p.request_timeout_ms == d.request_timeout_ms,
                "--proxy-request-timeout; longest wait for a region's response head, connecting included".into(),
            ),
            (
                "idle_timeout_ms",
                p.idle_timeout_ms.to_string(),
                p.idle_timeout_ms == d.idle_timeout_ms,
                "--proxy-idle-timeout; how long an idle connection to a region is kept; 0: not kept".into(),
            ),
            (
                "max_body_bytes",
                body,
                p.max_body_bytes == d.max_body_bytes,
                "--proxy-max-body-bytes; largest request body, buffered for replay; larger ones get 413".into(),
            ),
        ],
    );

    let _ = writeln!(out, "  names ({})", rc.names.len());
    let mut rows = vec![row(["name", "policy", "regions", "ttl_secs", "no_healthy"])];
    for n in &rc.names {
        let regions = match n.policy {
            RoutePolicy::Weighted => n
                .regions
                .iter()
                .map(|r| format!("{r}={}", n.weights.get(r).copied().unwrap_or(1)))
                .collect::<Vec<_>>()
                .join(", "),
            _ => n.regions.join(", "),
        };
        rows.push(vec![
            n.fqdn.clone(),
            n.policy.as_str().to_string(),
            regions,
            format!("{}", n.ttl_secs),
            format!(
                "{}{}",
                n.no_healthy.as_str(),
                default_mark(n.no_healthy == NoHealthyPolicy::default())
            ),
        ]);
    }
    if rc.names.is_empty() {
        let _ = writeln!(
            out,
            "    (none: DNS answers nothing but SOA/NS, and the proxy cannot start)"
        );
    } else {
        table_indented(out, &rows, 4);
        let _ = writeln!(
            out,
            "    policies: latency = nearest healthy region (client location, else measured RTT); failover = the healthy primary\n              (write-lease holder) if a region reports one, else first healthy in the order listed;\n              weighted = random by weight among healthy regions; the proxy sends writes to the healthy primary first\n              under every policy, and no policy ever answers a passive region"
        );
    }

    let _ = writeln!(out, "  client_locations ({})", rc.client_locations.len());
    let rows: Vec<Vec<String>> = rc
        .client_locations
        .iter()
        .map(|l| {
            vec![
                format!("{}/{}", l.network, l.prefix_len),
                format!("lat {}, lon {}", l.lat, l.lon),
            ]
        })
        .collect();
    table_indented(out, &rows, 4);
    if rc.client_locations.is_empty() {
        let _ = writeln!(
            out,
            "    (none: latency names route DNS queries by the router's measured RTT)"
        );
    }

    let _ = writeln!(out, "  DNS answers (regions' dns_address)");
    let rows: Vec<Vec<String>> = config
        .regions
        .iter()
        .map(|r| {
            let default = if r.dns_address == r.api.ip() {
                " (the api address's IP, default)"
            } else {
                ""
            };
            vec![r.name.to_string(), format!("{}{default}", r.dns_address)]
        })
        .collect();
    table_indented(out, &rows, 4);
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Writes `rows` as a left-aligned table, indented and separated by two spaces.
fn table(out: &mut String, rows: &[Vec<String>]) {
    table_indented(out, rows, 2);
}

/// [`table`] with `indent` spaces before the first column.
fn table_indented(out: &mut String, rows: &[Vec<String>], indent: usize) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = " ".repeat(indent.saturating_sub(2));
        for (i, cell) in r.iter().enumerate() {
            let _ = write!(line, "  {cell:<width$}", width = widths[i]);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn default_mark(is_default: bool) -> &'static str {
    if is_default { " (default)" } else { "" }
}

/// `[fencing]` and `[cluster.arbiter]`: what protects the cluster from split brain, and the
/// promotion time the lease implies.
fn fencing(out: &mut String, config: &Config) {
    let f = &config.fencing;
    let _ = writeln!(out, "\nfencing (docs/design/fencing.md)");
    let leased = config.cluster.model != Model::ActiveActive;
    if !leased && !f.quorum {
        let _ = writeln!(
            out,
            "  off: active-active without quorum fencing (every region writes, even cut off from the others)"
        );
        return;
    }
    let voters = config.control_voters();
    let _ = writeln!(
        out,
        "  control group  {voters} voters ({} voter regions{}), majority {}",
        config.voters().count(),
        config
            .cluster
            .arbiter
            .as_ref()
            .map(|a| format!(" + arbiter {} at {}", a.name, a.peer))
            .unwrap_or_default(),
        voters / 2 + 1
    );
    if leased {
        let _ = writeln!(
            out,
            "  initial_primary       {}{}",
            f.initial_primary,
            default_mark(config.regions.first().map(|r| &r.name) == Some(&f.initial_primary))
        );
    } else {
        let ro: Vec<&str> = config
            .keyspaces
            .iter()
            .filter(|k| k.on_minority == crate::OnMinority::ReadOnly)
            .map(|k| k.name.as_str())
            .collect();
        let _ = writeln!(
            out,
            "  quorum                true  (a region that cannot reach a majority refuses writes to: {})",
            if ro.is_empty() {
                "no keyspace (none is on_minority = \"read-only\")".to_string()
            } else {
                ro.join(", ")
            }
        );
    }
    let rows = [
        (
            "lease_ms",
            f.lease_ms,
            crate::DEFAULT_LEASE_MS,
            "how long an answered renewal lets the holder write, minus the margin",
        ),
        (
            "renew_every_ms",
            f.renew_every_ms,
            crate::DEFAULT_RENEW_EVERY_MS,
            "renewal period",
        ),
        (
            "margin_ms",
            f.margin_ms,
            crate::DEFAULT_MARGIN_MS,
            "safety margin on both ends of the lease",
        ),
        (
            "max_drift_ppm",
            f.max_drift_ppm,
            crate::DEFAULT_MAX_DRIFT_PPM,
            "assumed bound on clock rate differences",
        ),
    ];
    for (key, v, d, what) in rows {
        let _ = writeln!(out, "  {key:<21} {v}{}  ({what})", default_mark(v == d));
    }
    if config.cluster.model == Model::ActiveStandby {
        let _ = writeln!(
            out,
            "  max_promotion_lag_ms  {}{}  (a standby further behind is not promoted automatically: the RPO guard)",
            f.max_promotion_lag_ms,
            default_mark(f.max_promotion_lag_ms == crate::DEFAULT_MAX_PROMOTION_LAG_MS)
        );
        if let Promotion::Automatic {
            expiry_wait_ms,
            tick_ms,
            ..
        } = config.promises().promotion
        {
            let _ = writeln!(
                out,
                "  automated promotion   about {:.1} s after the primary's last answered renewal (lease x (1 + drift) + margin), plus a tick of {tick_ms} ms and a round trip to a majority; a control-group election, if the primary led it, fits inside that wait",
                expiry_wait_ms as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "  forward_writes        {}{}  ({})",
            f.forward_writes,
            default_mark(!f.forward_writes),
            if f.forward_writes {
                "a standby forwards client writes to the primary and relays the answer, with X-Atoll-Forwarded-To"
            } else {
                "a standby refuses writes with ATOLL-NOT-PRIMARY, naming the primary"
            }
        );
    }
    if config.cluster.model == Model::ActivePassive {
        let _ = writeln!(
            out,
            "  promotion             manual: `atoll promote REGION` once the lease has ended; `atoll switchover REGION` for a planned move"
        );
    }
}

fn model_meaning(model: Model) -> &'static str {
    match model {
        Model::ActiveActive => "every region serves reads and writes",
        Model::ActiveStandby => {
            "one primary takes writes; standbys serve reads and are promoted automatically"
        }
        Model::ActivePassive => {
            "one primary takes writes; warm replicas are promoted by an operator"
        }
    }
}

/// A keyspace's default read level, as `config check` shows it.
fn read_level(k: &KeyspaceConfig) -> String {
    match (k.policy, k.max_staleness_ms) {
        (Policy::Strong, _) => "strong (linearizable)".to_string(),
        (_, Some(ms)) => format!("bounded staleness {}", crate::duration::to_config(ms)),
        (Policy::Owned, None) => "eventual (consistency=home: at the key's home)".to_string(),
        (_, None) => "eventual".to_string(),
    }
}

fn keyspace_options(k: &KeyspaceConfig) -> String {
    if let Some(rule) = &k.ratelimit {
        let budget = match &rule.shares {
            None => "budget=shared (each region admits while the count it knows is under the limit; cut off, up to the limit on each side)".to_string(),
            Some(shares) => format!(
                "budget=split ({}; never more than the limit in all)",
                shares
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return format!(
            "limit={} per window={}, algorithm={}, {budget}",
            rule.limit,
            crate::duration::to_config(rule.window_ms),
            rule.algorithm.as_str()
        );
    }
    let opts = k.options();
    let minority = if k.on_minority == crate::OnMinority::ReadOnly {
        "on_minority=read-only"
    } else {
        ""
    };
    if opts.is_empty() && !minority.is_empty() {
        return minority.to_string();
    }
    if opts.is_empty() {
        return match k.policy {
            Policy::Counter => "(no options: 64-bit counters)".to_string(),
            Policy::Set => "(no options: members are strings)".to_string(),
            _ => "(no options)".to_string(),
        };
    }
    let parts: Vec<String> = opts
        .into_iter()
        .map(|(key, value)| {
            let (default, unit) = match key {
                "max_value_bytes" => (DEFAULT_MAX_VALUE_BYTES as u64, bytes(value)),
                "max_siblings" => (DEFAULT_MAX_SIBLINGS as u64, None),
                "conflict_retention_secs" => (DEFAULT_CONFLICT_RETENTION_SECS, duration(value)),
                _ => (DEFAULT_CONFLICT_MAX_ENTRIES as u64, None),
            };
            let mut s = format!("{key}={value}");
            match (unit, value == default) {
                (Some(u), true) => s.push_str(&format!(" ({u}, default)")),
                (Some(u), false) => s.push_str(&format!(" ({u})")),
                (None, true) => s.push_str(" (default)"),
                (None, false) => {}
            }
            s
        })
        .chain((!minority.is_empty()).then(|| minority.to_string()))
        .chain(
            k.default_ttl_ms
                .map(|ms| format!("default_ttl={}", crate::duration::to_config(ms))),
        )
        .chain(k.owned.as_ref().map(owned_options))
        .collect();
    parts.join(", ")
}

/// The homes of an owned keyspace: `homes: eu:*->eu-west-1, hash 0-32767->ap-southeast-1,
/// default->us-east-1; forward; takeover
/// us-east-1, ap-southeast-1`.
fn owned_options(o: &crate::OwnedConfig) -> String {
    let mut homes: Vec<String> = o
        .rules
        .prefixes
        .iter()
        .map(|(p, r)| format!("{}*->{r}", String::from_utf8_lossy(p)))
        .collect();
    homes.extend(
        o.rules
            .hashes
            .iter()
            .map(|(lo, hi, r)| format!("hash {lo}-{hi}->{r}")),
    );
    homes.push(match &o.rules.default {
        Some(r) => format!("default->{r}"),
        None => "default->the key's first writer (claimed through the control group)".into(),
    });
    format!(
        "homes: {}; {}; {}",
        homes.join(", "),
        if o.forward {
            "writes elsewhere forwarded to the home (default)"
        } else {
            "forward=false: writes elsewhere refused (ATOLL-NOT-HOME)"
        },
        if o.takeover.is_empty() {
            "no takeover (a down home's keys wait for `atoll keyspace rehome`)".to_string()
        } else {
            format!(
                "takeover order {}",
                o.takeover
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )
}

/// `1 MiB` for exact multiples of KiB/MiB, else `None`.
fn bytes(n: u64) -> Option<String> {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        Some(format!("{} MiB", n >> 20))
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        Some(format!("{} KiB", n >> 10))
    } else {
        None
    }
}

/// `24h`, `90m`, `7d` for whole units, else `None`.
fn duration(secs: u64) -> Option<String> {
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= len && secs.is_multiple_of(len) {
            return Some(format!("{}{unit}", secs / len));
        }
    }
    None
}

/// `[cluster.tls]`: how the regions talk to each other.
fn peer_tls(out: &mut String, config: &Config) {
    let _ = writeln!(out, "\nbetween regions ([cluster.tls])");
    match &config.cluster.tls {
        PeerTls::Mutual(files) => {
            let _ = writeln!(
                out,
                "  mode  mutual TLS: each region's peer listener (its `peer` address) requires a certificate\n        signed by the cluster CA, and a peer may only speak for the region its certificate names"
            );
            let _ = writeln!(out, "  ca    {}", files.ca.display());
            let _ = writeln!(out, "  cert  {}", files.cert.display());
            let _ = writeln!(out, "  key   {}", files.key.display());
            for r in &config.regions {
                let _ = writeln!(
                    out,
                    "    {}: {} and {}",
                    r.name,
                    files.cert_for(r.name.as_str()).display(),
                    files.key_for(r.name.as_str()).display()
                );
            }
        }
        PeerTls::Insecure => {
            let _ = writeln!(
                out,
                "  mode  INSECURE: plain HTTP between regions, peers not authenticated\n  warning: {INSECURE_WARNING}"
            );
        }
        PeerTls::Undeclared if config.regions.len() < 2 => {
            let _ = writeln!(
                out,
                "  mode  none (one region: nothing crosses regions; a second region needs [cluster.tls])"
            );
        }
        PeerTls::Undeclared => {
            let _ = writeln!(
                out,
                "  mode  NOT DECLARED: `atoll region` refuses to start until [cluster.tls] is set"
            );
        }
    }
}
