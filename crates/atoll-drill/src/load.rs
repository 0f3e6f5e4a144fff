//! The load generator: `clients` tasks at `rate` operations per second in all, each through the
//! router or pinned to one region, recording every write in the history and every request in
//! the timeline. Bounded in count (`max_ops`) and time (stopped by the runner; every request has
//! a timeout).

use crate::history::{Hlc, Kind, Outcome, WriteRecord};
use crate::scenario::{Load, OpKind, Via};
use crate::stats::Timeline;
use crate::target::{Target, enc};
use atoll_config::OnMinority;
use atoll_core::op::Policy;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Per-request timeout: above the default p99 guard, so a slow answer is measured as slow.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most history records kept.
pub const MAX_HISTORY: usize = 2_000_000;

/// What the load shares with the runner.
#[derive(Default)]
pub struct Recorder {
    pub history: Vec<WriteRecord>,
    pub timeline: Timeline,
    /// Acknowledged writes per acknowledging region.
    pub acked_by: BTreeMap<String, u64>,
    pub reads: u64,
    next_id: u64,
}

pub type Shared = Arc<Mutex<Recorder>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Recorder> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fencing refusals and other answers that say nothing was applied.
const NOT_APPLIED: &[&str] = &[
    "ATOLL-NOT-PRIMARY",
    "ATOLL-FENCED",
    "ATOLL-PASSIVE",
    "ATOLL-SHUTTING-DOWN",
    "ATOLL-OVERLOADED",
];

struct Mix {
    keyspace: String,
    kind: Kind,
    op: OpKind,
    fenced: bool,
    weight: u32,
}

/// Starts the clients; they run until `stop` turns true or `max_ops` operations were sent.
pub fn start(
    load: &Load,
    target: &Target,
    run_id: &str,
    t0: Instant,
    shared: Shared,
    stop: watch::Receiver<bool>,
    max_ops: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    let cfg = &target.config;
    let fencing_on =
        cfg.fencing.quorum || !matches!(cfg.cluster.model, atoll_config::Model::ActiveActive);
    let mix: Arc<Vec<Mix>> = Arc::new(
        load.mix
            .iter()
            .filter_map(|m| {
                let ks = cfg.keyspace(&m.keyspace)?;
                let kind = match ks.policy {
                    Policy::Lww | Policy::Owned => Kind::Lww,
                    Policy::Mvr => Kind::Mvr,
                    Policy::Counter => Kind::Counter,
                    Policy::Set => Kind::Set,
                    // Drill scenarios do not load strong or rate-limit keyspaces yet (validation
                    // refuses them).
                    Policy::Strong | Policy::RateLimit => return None,
                };
                Some(Mix {
                    keyspace: m.keyspace.clone(),
                    kind,
                    op: m.op,
                    fenced: fencing_on && ks.on_minority == OnMinority::ReadOnly,
                    weight: m.weight,
                })
            })
            .collect(),
    );
    let regions = target.regions.clone();
    let mut handles = Vec::new();
    let per_client_ops = max_ops / u64::from(load.clients).max(1) + 1;
    for c in 0..load.clients {
        let (via, base) = match (load.via, &target.router) {
            (Via::Router, Some(r)) => ("router".to_string(), r.clone()),
            (Via::Both, Some(r)) if c % 2 == 0 => ("router".to_string(), r.clone()),
            (Via::Both, _) => {
                let (n, u) = &regions[(c as usize / 2) % regions.len()];
                (n.clone(), u.clone())
            }
            _ => {
                let (n, u) = &regions[c as usize % regions.len()];
                (n.clone(), u.clone())
            }
        };
        let conn = Arc::new(Conn {
            via,
            base,
            token: target.client_token.clone(),
            http: match reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(Duration::from_secs(2))
                .build()
            {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build an HTTP client");
                    continue;
                }
            },
            shared: shared.clone(),
            t0,
        });
        let client = Client {
            id: c,
            run: run_id.to_string(),
            lww_keys: load.lww_keys,
            mix: mix.clone(),
            shared: shared.clone(),
            rng: 0x9E37_79B9_7F4A_7C15 ^ (u64::from(c) + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            n: 0,
        };
        let interval = Duration::from_secs_f64(f64::from(load.clients) / f64::from(load.rate));
        let mut stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let mut client = client;
            // Open loop: an operation starts on every tick whether or not the earlier ones have
            // answered (a slow region is measured as slow, not as a region that gets less load:
            // no coordinated omission), at most MAX_IN_FLIGHT at once per client.
            let mut in_flight = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for _ in 0..per_client_ops {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    break;
                }
                while in_flight.try_join_next().is_some() {}
                if in_flight.len() >= MAX_IN_FLIGHT {
                    // Shed: counted as a failed request of this target, nothing sent.
                    let now = u64::try_from(conn.t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                    lock(&conn.shared).timeline.record(
                        &conn.via,
                        now,
                        REQUEST_TIMEOUT.as_millis() as u64,
                        false,
                        false,
                    );
                    continue;
                }
                let op = client.plan();
                in_flight.spawn(execute(conn.clone(), op));
            }
            // Every request has a timeout: this ends within it.
            while in_flight.join_next().await.is_some() {}
        }));
    }
    handles
}

/// Most operations one client has in flight.
pub const MAX_IN_FLIGHT: usize = 128;

/// One client's connection: where it sends and where it records.
struct Conn {
    via: String,
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    shared: Shared,
    t0: Instant,
}

/// Chooses the operations of one client.
struct Client {
    id: u32,
    run: String,
    lww_keys: u32,
    mix: Arc<Vec<Mix>>,
    shared: Shared,
    rng: u64,
    n: u64,
}

/// One planned operation.
struct Op {
    id: u64,
    client: u32,
    keyspace: String,
    kind: Kind,
    fenced: bool,
    read: bool,
    key: String,
    value: String,
    delta: i64,
}

impl Client {
    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn plan(&mut self) -> Op {
        let total: u64 = self.mix.iter().map(|m| u64::from(m.weight)).sum();
        let mut pick = self.rand() % total.max(1);
        let mut idx = 0;
        for (i, m) in self.mix.iter().enumerate() {
            if pick < u64::from(m.weight) {
                idx = i;
                break;
            }
            pick -= u64::from(m.weight);
        }
        self.n += 1;
        let mix = self.mix.clone();
        let m = &mix[idx];
        let id = {
            let mut s = lock(&self.shared);
            s.next_id += 1;
            s.next_id
        };
        let c = self.id;
        let run = self.run.clone();
        let read = m.op == OpKind::Get;
        let (key, value, delta) = if read {
            let key = match m.kind {
                Kind::Lww => format!("{run}-c{c}-k{}", self.rand() % u64::from(self.lww_keys)),
                Kind::Mvr => format!("{run}-c{c}-w{}", id.saturating_sub(1)),
                Kind::Counter | Kind::Set => format!("{run}-c{c}"),
            };
            (key, String::new(), 0)
        } else {
            match m.kind {
                Kind::Lww => (
                    format!("{run}-c{c}-k{}", self.n % u64::from(self.lww_keys)),
                    format!("{run}-c{c}-w{id}"),
                    0,
                ),
                Kind::Mvr => (format!("{run}-c{c}-w{id}"), format!("{run}-c{c}-w{id}"), 0),
                Kind::Counter => (format!("{run}-c{c}"), "1".to_string(), 1),
                Kind::Set => (format!("{run}-c{c}"), format!("m{id}"), 0),
            }
        };
        Op {
            id,
            client: c,
            keyspace: m.keyspace.clone(),
            kind: m.kind,
            fenced: m.fenced,
            read,
            key,
            value,
            delta,
        }
    }
}

fn now_ms(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn execute(conn: Arc<Conn>, op: Op) {
    let ks = enc(&op.keyspace);
    let path = match op.kind {
        Kind::Lww | Kind::Mvr => "kv",
        Kind::Counter => "counter",
        Kind::Set => "set",
    };
    let url = format!("{}/v1/{path}/{ks}/{}", conn.base, enc(&op.key));
    if op.read {
        let sent = now_ms(conn.t0);
        let mut req = conn.http.get(&url);
        if let Some(t) = &conn.token {
            req = req.bearer_auth(t);
        }
        let ok = match req.send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                (200..=300).contains(&s) || s == 404
            }
            Err(_) => false,
        };
        let done = now_ms(conn.t0);
        let mut s = lock(&conn.shared);
        s.reads += 1;
        s.timeline.record(&conn.via, done, done - sent, ok, false);
        return;
    }
    let req = match op.kind {
        Kind::Lww | Kind::Mvr => conn.http.put(&url).body(op.value.clone()),
        Kind::Counter => conn.http.post(&url).json(&json!({"delta": op.delta})),
        Kind::Set => conn.http.post(&url).json(&json!({"add": [op.value]})),
    };
    let req = match &conn.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    let sent = now_ms(conn.t0);
    let outcome = classify(req.send().await).await;
    let done = now_ms(conn.t0);
    let ok = matches!(outcome, Outcome::Acked { .. });
    let mut s = lock(&conn.shared);
    s.timeline.record(&conn.via, done, done - sent, ok, true);
    if let Outcome::Acked { region, .. } = &outcome {
        *s.acked_by.entry(region.clone()).or_default() += 1;
    }
    if s.history.len() < MAX_HISTORY {
        s.history.push(WriteRecord {
            id: op.id,
            client: op.client,
            via: conn.via.clone(),
            keyspace: op.keyspace,
            kind: op.kind,
            key: op.key,
            value: op.value,
            delta: op.delta,
            fenced: op.fenced,
            sent_ms: sent,
            done_ms: done,
            outcome,
        });
    }
}

async fn classify(r: reqwest::Result<reqwest::Response>) -> Outcome {
    let resp = match r {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Unknown {
                reason: if e.is_timeout() {
                    "timeout".into()
                } else if e.is_connect() {
                    // Nothing was sent: the connection was refused.
                    return Outcome::Refused {
                        status: 0,
                        code: "CONNECT".into(),
                    };
                } else {
                    format!("{e}")
                },
            };
        }
    };
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let region_h = header("x-atoll-region");
    let epoch = header("x-atoll-epoch").and_then(|e| e.parse().ok());
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return Outcome::Unknown {
                reason: format!("HTTP {status}, body lost: {e}"),
            };
        }
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        let region = v["region"]
            .as_str()
            .map(str::to_string)
            .or(region_h)
            .unwrap_or_else(|| "?".into());
        return Outcome::Acked {
            region,
            epoch,
            ts: v["timestamp"].as_str().and_then(Hlc::parse),
        };
    }
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    if (400..500).contains(&status) || NOT_APPLIED.contains(&code.as_str()) {
        Outcome::Refused { status, code }
    } else {
        Outcome::Unknown {
            reason: format!("HTTP {status} {code}"),
        }
    }
}
