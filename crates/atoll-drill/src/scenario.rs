//! Scenario files (`drills/*.toml`): the model, strict parsing with file and line in every
//! error, and validation against a cluster config. Pure: text in, a [`Scenario`] or an error out.
//!
//! The format is documented in `docs/drills.md`. Every file starts with `version = 1`; a reader
//! refuses other versions.

use crate::error::{DrillError, Result};
use atoll_config::{Config, Model};
use atoll_core::op::Policy;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use toml::Spanned;

/// The scenario format this build reads and writes.
pub const SCENARIO_VERSION: u32 = 1;

/// Longest step duration, fault and observation accepted: one hour.
pub const MAX_DURATION_MS: u64 = 3_600_000;
/// The most operations per second a drill's load may ask for.
pub const MAX_RATE: u32 = 5_000;
/// The most concurrent clients.
pub const MAX_CLIENTS: u32 = 64;
/// The most steps in one scenario.
pub const MAX_STEPS: usize = 100;

// ---------------------------------------------------------------------------------------------
// The validated model.

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    /// Where it was read from (for messages).
    pub file: String,
    pub name: String,
    pub description: String,
    /// Topologies it applies to (empty: any).
    pub models: Vec<Model>,
    /// Line of `models` (for errors).
    pub models_line: usize,
    pub load: Load,
    pub guards: Guards,
    /// Lease of every link fault the drill adds (renewed while the fault should last).
    pub fault_lease_ms: u64,
    /// Shell commands for kill/stop/restart in a real deployment (`{region}` is replaced).
    pub commands: Commands,
    pub steps: Vec<Step>,
    pub expect: Vec<Expect>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Commands {
    pub kill: Option<String>,
    pub stop: Option<String>,
    pub restart: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    Router,
    Regions,
    Both,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Load {
    pub rate: u32,
    pub clients: u32,
    pub via: Via,
    pub mix: Vec<MixEntry>,
    /// Keys per client and keyspace for lww writes (small, so writes supersede each other).
    pub lww_keys: u32,
    /// How long the read-back after the drill may take.
    pub read_back_timeout_ms: u64,
    /// How long to wait for every region to converge before the read-back.
    pub settle_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// `PUT /v1/kv` to an lww or mvr keyspace.
    Put,
    /// `POST /v1/counter` with delta 1.
    Incr,
    /// `POST /v1/set` adding one new member.
    Add,
    /// A read of the keyspace (kv, counter or set, by policy).
    Get,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Incr => "incr",
            OpKind::Add => "add",
            OpKind::Get => "get",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MixEntry {
    /// Line of the `[[load.mix]]` entry.
    pub line: usize,
    pub keyspace: String,
    pub op: OpKind,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Guards {
    pub window_ms: u64,
    /// Trip when a surviving target's error rate over the window is at least this (0..1).
    pub error_rate: f64,
    /// Trip when a surviving target's p99 over the window is at least this.
    pub p99_ms: u64,
    /// Ignore windows with fewer requests than this (a rate over 3 requests says nothing).
    pub min_requests: u64,
    /// Off: measure, never abort (to see how bad it gets). Default on.
    pub enabled: bool,
}

impl Default for Guards {
    /// `RegionalFailoverController`'s thresholds: roll back above a 5 % error rate or a p99 of 2 s
    /// (`docs/drills.md`).
    fn default() -> Self {
        Guards {
            window_ms: 10_000,
            error_rate: 0.05,
            p99_ms: 2_000,
            min_requests: 20,
            enabled: true,
        }
    }
}

/// Which region a step acts on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionRef {
    Named(String),
    /// The region that acknowledged the most writes so far.
    Busiest,
    /// The lease holder (leased models), from `/healthz`.
    Primary,
}

impl std::fmt::Display for RegionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionRef::Named(n) => f.write_str(n),
            RegionRef::Busiest => f.write_str("busiest"),
            RegionRef::Primary => f.write_str("primary"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CutMode {
    Stall,
    Refuse,
}

impl CutMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CutMode::Stall => "stall",
            CutMode::Refuse => "refuse",
        }
    }
}

/// Where a latency fault goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyTarget {
    Pair(String, String),
    /// A link as the link server names it (`A->B`), verbatim.
    Link(String),
}

/// A link fault: how long it lasts and whether the step waits for it to end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultSpec {
    pub for_ms: u64,
    pub wait: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Observe {
        for_ms: u64,
    },
    Drain {
        region: RegionRef,
        for_ms: Option<u64>,
        reason: String,
    },
    Undrain {
        region: RegionRef,
    },
    Isolate {
        region: RegionRef,
        mode: CutMode,
        fault: FaultSpec,
    },
    Partition {
        a: String,
        b: String,
        mode: CutMode,
        fault: FaultSpec,
    },
    Oneway {
        from: String,
        to: String,
        fault: FaultSpec,
    },
    Latency {
        target: LatencyTarget,
        extra_ms: u64,
        fault: FaultSpec,
    },
    Heal,
    Kill {
        region: RegionRef,
    },
    Stop {
        region: RegionRef,
    },
    Restart {
        region: RegionRef,
        timeout_ms: u64,
    },
    Promote {
        region: RegionRef,
        accept_data_loss: bool,
    },
    Switchover {
        region: RegionRef,
        timeout_ms: u64,
    },
    WaitHealthy {
        timeout_ms: u64,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Observe { .. } => "observe",
            Action::Drain { .. } => "drain",
            Action::Undrain { .. } => "undrain",
            Action::Isolate { .. } => "isolate",
            Action::Partition { .. } => "partition",
            Action::Oneway { .. } => "oneway",
            Action::Latency { .. } => "latency",
            Action::Heal => "heal",
            Action::Kill { .. } => "kill",
            Action::Stop { .. } => "stop",
            Action::Restart { .. } => "restart",
            Action::Promote { .. } => "promote",
            Action::Switchover { .. } => "switchover",
            Action::WaitHealthy { .. } => "wait-healthy",
        }
    }

    /// Whether this step takes a region out of the "surviving" set while it is in effect.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Action::Drain { .. }
                | Action::Isolate { .. }
                | Action::Partition { .. }
                | Action::Oneway { .. }
                | Action::Latency { .. }
                | Action::Kill { .. }
                | Action::Stop { .. }
                | Action::Promote { .. }
                | Action::Switchover { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    /// 1-based line of the `[[steps]]` table in the file.
    pub line: usize,
    pub action: Action,
}

/// One `expect` line: `METRIC OP NUMBER`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expect {
    pub line: usize,
    pub text: String,
    pub metric: Metric,
    pub op: CmpOp,
    pub value: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    LostWrites,
    ZombieWrites,
    DuplicateWrites,
    AckedWrites,
    RtoWriteMs,
    RtoSloMs,
    ErrorRate,
    P99Ms,
    GuardTripped,
}

pub const METRICS: [(&str, Metric); 9] = [
    ("lost_writes", Metric::LostWrites),
    ("zombie_writes", Metric::ZombieWrites),
    ("duplicate_writes", Metric::DuplicateWrites),
    ("acked_writes", Metric::AckedWrites),
    ("rto_write_ms", Metric::RtoWriteMs),
    ("rto_slo_ms", Metric::RtoSloMs),
    ("error_rate", Metric::ErrorRate),
    ("p99_ms", Metric::P99Ms),
    ("guard_tripped", Metric::GuardTripped),
];

impl Metric {
    pub fn as_str(self) -> &'static str {
        METRICS
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CmpOp {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl CmpOp {
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            CmpOp::Eq => left == right,
            CmpOp::Ne => left != right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw serde structs (strict).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    version: Spanned<u32>,
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    models: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    expect: Vec<Spanned<String>>,
    load: Spanned<RawLoad>,
    #[serde(default)]
    guards: Option<Spanned<RawGuards>>,
    #[serde(default)]
    faults: Option<Spanned<RawFaults>>,
    #[serde(default)]
    commands: Option<RawCommands>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    rate: u32,
    clients: u32,
    #[serde(default)]
    via: Option<Spanned<String>>,
    #[serde(default)]
    lww_keys: Option<u32>,
    #[serde(default)]
    read_back_timeout: Option<Spanned<String>>,
    #[serde(default)]
    settle: Option<Spanned<String>>,
    mix: Vec<Spanned<RawMix>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMix {
    keyspace: Spanned<String>,
    op: Spanned<String>,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuards {
    #[serde(default)]
    window: Option<Spanned<String>>,
    #[serde(default)]
    error_rate: Option<f64>,
    #[serde(default)]
    p99_ms: Option<u64>,
    #[serde(default)]
    min_requests: Option<u64>,
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    lease: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommands {
    kill: Option<String>,
    stop: Option<String>,
    restart: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    action: Spanned<String>,
    region: Option<Spanned<String>>,
    a: Option<Spanned<String>>,
    b: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    link: Option<Spanned<String>>,
    #[serde(rename = "for")]
    for_: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    extra_ms: Option<Spanned<u64>>,
    wait: Option<bool>,
    reason: Option<String>,
    accept_data_loss: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> DrillError {
        DrillError::Scenario {
            file: self.file.to_string(),
            line: line_of(self.text, span.start),
            message: message.into(),
        }
    }

    fn duration(&self, s: &Spanned<String>, what: &str) -> Result<u64> {
        let ms = parse_duration_ms(s.get_ref())
            .map_err(|m| self.err(s.span(), format!("{what}: {m}")))?;
        if ms == 0 || ms > MAX_DURATION_MS {
            return Err(self.err(
                s.span(),
                format!("{what}: `{}` is out of range (1ms..=1h)", s.get_ref()),
            ));
        }
        Ok(ms)
    }
}

/// `500ms`, `30s`, `2m`, `1h` (an integer and a unit; fractions like `1.5s` too).
pub fn parse_duration_ms(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit: write e.g. `500ms`, `30s`, `2m`"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. `500ms`, `30s`, `2m`"))?;
    let factor = match unit {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => {
            return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)"));
        }
    };
    let ms = n * factor;
    if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(ms.round() as u64)
}

const ACTIONS: &[&str] = &[
    "observe",
    "drain",
    "undrain",
    "isolate",
    "partition",
    "oneway",
    "latency",
    "heal",
    "kill",
    "stop",
    "restart",
    "promote",
    "switchover",
    "wait-healthy",
];

/// Parses and checks a scenario on its own (no cluster): syntax, types, durations, steps and
/// their fields, expectations.
pub fn parse(text: &str, file: &str) -> Result<Scenario> {
    let cx = Ctx { file, text };
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        DrillError::Scenario {
            file: file.to_string(),
            line,
            message: e.message().trim().to_string(),
        }
    })?;
    if *raw.version.get_ref() != SCENARIO_VERSION {
        return Err(cx.err(
            raw.version.span(),
            format!(
                "scenario format version {} is not supported (this build reads version {SCENARIO_VERSION})",
                raw.version.get_ref()
            ),
        ));
    }
    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(cx.err(
            raw.name.span(),
            "name must be letters, digits, `-` and `_` (it names the outcome kept in the state directory)",
        ));
    }
    let mut models = Vec::new();
    if let Some(ms) = &raw.models {
        for m in ms.get_ref() {
            models.push(Model::parse(m).ok_or_else(|| {
                cx.err(
                    ms.span(),
                    format!(
                        "unknown model `{m}` (active-active, active-standby or active-passive)"
                    ),
                )
            })?);
        }
    }
    let load = parse_load(&cx, &raw.load)?;
    let guards = match &raw.guards {
        None => Guards::default(),
        Some(g) => {
            let d = Guards::default();
            let r = g.get_ref();
            let window_ms = match &r.window {
                Some(w) => cx.duration(w, "guards.window")?,
                None => d.window_ms,
            };
            let error_rate = r.error_rate.unwrap_or(d.error_rate);
            if !(error_rate > 0.0 && error_rate <= 1.0) {
                return Err(cx.err(g.span(), "guards.error_rate must be in (0, 1]"));
            }
            let p99_ms = r.p99_ms.unwrap_or(d.p99_ms);
            if p99_ms == 0 || p99_ms > MAX_DURATION_MS {
                return Err(cx.err(g.span(), "guards.p99_ms must be in 1..=3600000"));
            }
            Guards {
                window_ms,
                error_rate,
                p99_ms,
                min_requests: r.min_requests.unwrap_or(d.min_requests).max(1),
                enabled: r.enabled.unwrap_or(true),
            }
        }
    };
    let fault_lease_ms = match &raw.faults {
        Some(f) => cx.duration(&f.get_ref().lease, "faults.lease")?,
        None => 15_000,
    };
    if fault_lease_ms < 1000 {
        let span = raw.faults.as_ref().map(|f| f.span()).unwrap_or(0..0);
        return Err(cx.err(
            span,
            "faults.lease must be at least 1s (it is renewed every third of it)",
        ));
    }
    if raw.steps.len() > MAX_STEPS {
        return Err(cx.err(
            raw.steps[MAX_STEPS].span(),
            format!("more than {MAX_STEPS} steps"),
        ));
    }
    let steps = raw
        .steps
        .iter()
        .map(|s| parse_step(&cx, s))
        .collect::<Result<Vec<_>>>()?;
    if steps.is_empty() {
        return Err(cx.err(0..0, "a scenario needs at least one [[steps]]"));
    }
    let expect = raw
        .expect
        .iter()
        .map(|e| parse_expect(&cx, e))
        .collect::<Result<Vec<_>>>()?;
    let commands = raw
        .commands
        .map(|c| Commands {
            kill: c.kill,
            stop: c.stop,
            restart: c.restart,
        })
        .unwrap_or_default();
    Ok(Scenario {
        file: file.to_string(),
        name,
        description: raw.description,
        models,
        models_line: raw
            .models
            .as_ref()
            .map_or(1, |m| line_of(text, m.span().start)),
        load,
        guards,
        fault_lease_ms,
        commands,
        steps,
        expect,
    })
}

fn parse_load(cx: &Ctx, l: &Spanned<RawLoad>) -> Result<Load> {
    let r = l.get_ref();
    if r.rate == 0 || r.rate > MAX_RATE {
        return Err(cx.err(
            l.span(),
            format!("load.rate must be in 1..={MAX_RATE} operations per second"),
        ));
    }
    if r.clients == 0 || r.clients > MAX_CLIENTS {
        return Err(cx.err(
            l.span(),
            format!("load.clients must be in 1..={MAX_CLIENTS}"),
        ));
    }
    let via = match &r.via {
        None => Via::Both,
        Some(v) => match v.get_ref().as_str() {
            "router" => Via::Router,
            "regions" => Via::Regions,
            "both" => Via::Both,
            other => {
                return Err(cx.err(
                    v.span(),
                    format!("load.via: `{other}` is not router, regions or both"),
                ));
            }
        },
    };
    if r.mix.is_empty() {
        return Err(cx.err(l.span(), "load.mix needs at least one entry"));
    }
    let mut mix = Vec::new();
    for m in &r.mix {
        let raw = m.get_ref();
        let op = match raw.op.get_ref().as_str() {
            "put" => OpKind::Put,
            "incr" => OpKind::Incr,
            "add" => OpKind::Add,
            "get" => OpKind::Get,
            other => {
                return Err(cx.err(
                    raw.op.span(),
                    format!("unknown op `{other}` (put, incr, add or get)"),
                ));
            }
        };
        if raw.weight == 0 || raw.weight > 1000 {
            return Err(cx.err(m.span(), "weight must be in 1..=1000"));
        }
        mix.push(MixEntry {
            line: line_of(cx.text, m.span().start),
            keyspace: raw.keyspace.get_ref().clone(),
            op,
            weight: raw.weight,
        });
    }
    let read_back_timeout_ms = match &r.read_back_timeout {
        Some(d) => cx.duration(d, "load.read_back_timeout")?,
        None => 60_000,
    };
    let settle_ms = match &r.settle {
        Some(d) => cx.duration(d, "load.settle")?,
        None => 30_000,
    };
    let lww_keys = r.lww_keys.unwrap_or(8);
    if lww_keys == 0 || lww_keys > 10_000 {
        return Err(cx.err(l.span(), "load.lww_keys must be in 1..=10000"));
    }
    Ok(Load {
        rate: r.rate,
        clients: r.clients,
        via,
        mix,
        lww_keys,
        read_back_timeout_ms,
        settle_ms,
    })
}

fn region_ref(s: &Spanned<String>) -> RegionRef {
    match s.get_ref().as_str() {
        "busiest" => RegionRef::Busiest,
        "primary" => RegionRef::Primary,
        n => RegionRef::Named(n.to_string()),
    }
}

fn parse_step(cx: &Ctx, s: &Spanned<RawStep>) -> Result<Step> {
    let r = s.get_ref();
    let span = s.span();
    let line = line_of(cx.text, span.start);
    let action = r.action.get_ref().as_str();
    if !ACTIONS.contains(&action) {
        return Err(cx.err(
            r.action.span(),
            format!("unknown step `{action}` (steps: {})", ACTIONS.join(", ")),
        ));
    }
    // Which fields this action takes; any other present field is an error.
    let allowed: &[&str] = match action {
        "observe" => &["for"],
        "drain" => &["region", "for", "reason"],
        "undrain" => &["region"],
        "isolate" => &["region", "for", "mode", "wait"],
        "partition" => &["a", "b", "for", "mode", "wait"],
        "oneway" => &["from", "to", "for", "wait"],
        "latency" => &["a", "b", "link", "extra_ms", "for", "wait"],
        "heal" => &[],
        "kill" | "stop" => &["region"],
        "restart" => &["region", "timeout"],
        "promote" => &["region", "accept_data_loss"],
        "switchover" => &["region", "timeout"],
        "wait-healthy" => &["timeout"],
        _ => &[],
    };
    let present: [(&str, Option<Range<usize>>); 13] = [
        ("region", r.region.as_ref().map(|x| x.span())),
        ("a", r.a.as_ref().map(|x| x.span())),
        ("b", r.b.as_ref().map(|x| x.span())),
        ("from", r.from.as_ref().map(|x| x.span())),
        ("to", r.to.as_ref().map(|x| x.span())),
        ("link", r.link.as_ref().map(|x| x.span())),
        ("for", r.for_.as_ref().map(|x| x.span())),
        ("timeout", r.timeout.as_ref().map(|x| x.span())),
        ("mode", r.mode.as_ref().map(|x| x.span())),
        ("extra_ms", r.extra_ms.as_ref().map(|x| x.span())),
        ("wait", r.wait.map(|_| span.clone())),
        ("reason", r.reason.as_ref().map(|_| span.clone())),
        ("accept_data_loss", r.accept_data_loss.map(|_| span.clone())),
    ];
    for (field, sp) in &present {
        if let Some(sp) = sp
            && !allowed.contains(field)
        {
            return Err(cx.err(
                sp.clone(),
                format!(
                    "step `{action}` takes no `{field}` (it takes: {})",
                    if allowed.is_empty() {
                        "nothing".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            ));
        }
    }
    let need = |v: &Option<Spanned<String>>, field: &str| -> Result<Spanned<String>> {
        v.clone()
            .ok_or_else(|| cx.err(span.clone(), format!("step `{action}` needs `{field}`")))
    };
    let for_ms = |required: bool| -> Result<Option<u64>> {
        match &r.for_ {
            Some(d) => cx.duration(d, &format!("step `{action}` for")).map(Some),
            None if required => Err(cx.err(span.clone(), format!("step `{action}` needs `for`"))),
            None => Ok(None),
        }
    };
    let timeout = |default: u64| -> Result<u64> {
        match &r.timeout {
            Some(d) => cx.duration(d, &format!("step `{action}` timeout")),
            None => Ok(default),
        }
    };
    let mode = || -> Result<CutMode> {
        match r.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("stall", _)) => Ok(CutMode::Stall),
            Some(("refuse", _)) => Ok(CutMode::Refuse),
            Some((other, sp)) => Err(cx.err(sp, format!("mode `{other}` is not stall or refuse"))),
        }
    };
    let fault = |for_ms: u64| FaultSpec {
        for_ms,
        wait: r.wait.unwrap_or(true),
    };
    let action = match action {
        "observe" => Action::Observe {
            for_ms: for_ms(true)?.unwrap_or(0),
        },
        "drain" => Action::Drain {
            region: region_ref(&need(&r.region, "region")?),
            for_ms: for_ms(false)?,
            reason: r
                .reason
                .clone()
                .unwrap_or_else(|| "atoll drill".to_string()),
        },
        "undrain" => Action::Undrain {
            region: region_ref(&need(&r.region, "region")?),
        },
        "isolate" => Action::Isolate {
            region: region_ref(&need(&r.region, "region")?),
            mode: mode()?,
            fault: fault(for_ms(true)?.unwrap_or(0)),
        },
        "partition" => {
            let a = need(&r.a, "a")?;
            let b = need(&r.b, "b")?;
            if a.get_ref() == b.get_ref() {
                return Err(cx.err(b.span(), "a partition needs two different regions"));
            }
            Action::Partition {
                a: a.into_inner(),
                b: b.into_inner(),
                mode: mode()?,
                fault: fault(for_ms(true)?.unwrap_or(0)),
            }
        }
        "oneway" => {
            let from = need(&r.from, "from")?;
            let to = need(&r.to, "to")?;
            if from.get_ref() == to.get_ref() {
                return Err(cx.err(to.span(), "a one-way partition needs two different regions"));
            }
            Action::Oneway {
                from: from.into_inner(),
                to: to.into_inner(),
                fault: fault(for_ms(true)?.unwrap_or(0)),
            }
        }
        "latency" => {
            let target = match (&r.a, &r.b, &r.link) {
                (Some(a), Some(b), None) => {
                    if a.get_ref() == b.get_ref() {
                        return Err(cx.err(b.span(), "a latency pair needs two different regions"));
                    }
                    LatencyTarget::Pair(a.get_ref().clone(), b.get_ref().clone())
                }
                (None, None, Some(l)) => {
                    if !l.get_ref().contains("->") {
                        return Err(
                            cx.err(l.span(), format!("link `{}` is not `A->B`", l.get_ref()))
                        );
                    }
                    LatencyTarget::Link(l.get_ref().clone())
                }
                _ => {
                    return Err(cx.err(
                        span.clone(),
                        "step `latency` needs either `a` and `b` (a pair) or `link` (`A->B`)",
                    ));
                }
            };
            let extra = r
                .extra_ms
                .as_ref()
                .ok_or_else(|| cx.err(span.clone(), "step `latency` needs `extra_ms`"))?;
            if *extra.get_ref() == 0 || *extra.get_ref() > 60_000 {
                return Err(cx.err(extra.span(), "extra_ms must be in 1..=60000"));
            }
            Action::Latency {
                target,
                extra_ms: *extra.get_ref(),
                fault: fault(for_ms(true)?.unwrap_or(0)),
            }
        }
        "heal" => Action::Heal,
        "kill" => Action::Kill {
            region: region_ref(&need(&r.region, "region")?),
        },
        "stop" => Action::Stop {
            region: region_ref(&need(&r.region, "region")?),
        },
        "restart" => Action::Restart {
            region: region_ref(&need(&r.region, "region")?),
            timeout_ms: timeout(60_000)?,
        },
        "promote" => Action::Promote {
            region: region_ref(&need(&r.region, "region")?),
            accept_data_loss: r.accept_data_loss.unwrap_or(false),
        },
        "switchover" => Action::Switchover {
            region: region_ref(&need(&r.region, "region")?),
            timeout_ms: timeout(30_000)?,
        },
        "wait-healthy" => Action::WaitHealthy {
            timeout_ms: timeout(60_000)?,
        },
        _ => unreachable!("checked against ACTIONS above"),
    };
    Ok(Step { line, action })
}

fn parse_expect(cx: &Ctx, e: &Spanned<String>) -> Result<Expect> {
    let text = e.get_ref().trim();
    let parts: Vec<&str> = text.split_whitespace().collect();
    let bad = |m: String| cx.err(e.span(), m);
    let [metric, op, value] = parts.as_slice() else {
        return Err(bad(format!(
            "expect `{text}`: write `METRIC OP NUMBER`, e.g. `lost_writes == 0`"
        )));
    };
    let metric = METRICS
        .iter()
        .find(|(n, _)| n == metric)
        .map(|(_, m)| *m)
        .ok_or_else(|| {
            bad(format!(
                "expect `{text}`: unknown metric `{metric}` (metrics: {})",
                METRICS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let op = match *op {
        "==" => CmpOp::Eq,
        "!=" => CmpOp::Ne,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        other => {
            return Err(bad(format!(
                "expect `{text}`: unknown comparison `{other}`"
            )));
        }
    };
    let value: f64 = value
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| bad(format!("expect `{text}`: `{value}` is not a number")))?;
    Ok(Expect {
        line: line_of(cx.text, e.span().start),
        text: text.to_string(),
        metric,
        op,
        value,
    })
}

/// Reads and parses a scenario file.
pub fn load(path: &std::path::Path) -> Result<Scenario> {
    let text = std::fs::read_to_string(path).map_err(|e| DrillError::Scenario {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, &path.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// Validation against a cluster.

impl Scenario {
    fn mismatch(&self, cfg: &Config, line: usize, message: String) -> DrillError {
        DrillError::Mismatch {
            file: self.file.clone(),
            line,
            config: cfg.source.clone(),
            message,
        }
    }

    /// Checks that every region, keyspace and step of the scenario exists in (and suits) the
    /// cluster `cfg`.
    pub fn validate(&self, cfg: &Config) -> Result<()> {
        let regions: Vec<&str> = cfg.regions.iter().map(|r| r.name.as_str()).collect();
        if !self.models.is_empty() && !self.models.contains(&cfg.cluster.model) {
            return Err(self.mismatch(
                cfg,
                self.models_line,
                format!(
                    "scenario `{}` is for {}, the cluster is {}",
                    self.name,
                    self.models
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    cfg.cluster.model.as_str()
                ),
            ));
        }
        for m in &self.load.mix {
            let Some(ks) = cfg.keyspace(&m.keyspace) else {
                return Err(self.mismatch(
                    cfg,
                    m.line,
                    format!(
                        "load.mix: unknown keyspace `{}` (keyspaces: {})",
                        m.keyspace,
                        cfg.keyspaces
                            .iter()
                            .map(|k| k.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            let ok = match m.op {
                OpKind::Put => matches!(ks.policy, Policy::Lww | Policy::Mvr),
                OpKind::Incr => ks.policy == Policy::Counter,
                OpKind::Add => ks.policy == Policy::Set,
                OpKind::Get => true,
            };
            if !ok {
                return Err(self.mismatch(
                    cfg,
                    m.line,
                    format!(
                        "load.mix: op `{}` does not suit keyspace `{}` (policy {})",
                        m.op.as_str(),
                        m.keyspace,
                        ks.policy.as_str()
                    ),
                ));
            }
        }
        let leased = matches!(
            cfg.cluster.model,
            Model::ActiveStandby | Model::ActivePassive
        );
        for step in &self.steps {
            let check_region = |r: &RegionRef| -> Result<()> {
                match r {
                    RegionRef::Named(n) if !regions.contains(&n.as_str()) => Err(self.mismatch(
                        cfg,
                        step.line,
                        format!(
                            "step `{}`: unknown region `{n}` (regions: {})",
                            step.action.name(),
                            regions.join(", ")
                        ),
                    )),
                    RegionRef::Primary if !leased => Err(self.mismatch(
                        cfg,
                        step.line,
                        format!(
                            "step `{}`: `primary` needs a leased model (active-standby or active-passive)",
                            step.action.name()
                        ),
                    )),
                    _ => Ok(()),
                }
            };
            let named = |n: &str| check_region(&RegionRef::Named(n.to_string()));
            match &step.action {
                Action::Drain { region, .. } | Action::Undrain { region } => {
                    check_region(region)?;
                    if cfg.router.is_none() {
                        return Err(self.mismatch(
                            cfg,
                            step.line,
                            "step `drain`/`undrain` needs a router ([router] in the cluster config)".into(),
                        ));
                    }
                }
                Action::Isolate { region, .. }
                | Action::Kill { region }
                | Action::Stop { region }
                | Action::Restart { region, .. } => check_region(region)?,
                Action::Partition { a, b, .. } => {
                    named(a)?;
                    named(b)?;
                }
                Action::Oneway { from, to, .. } => {
                    named(from)?;
                    named(to)?;
                }
                Action::Latency { target, .. } => match target {
                    LatencyTarget::Pair(a, b) => {
                        named(a)?;
                        named(b)?;
                    }
                    LatencyTarget::Link(_) => {}
                },
                Action::Promote { region, .. } | Action::Switchover { region, .. } => {
                    if !leased {
                        return Err(self.mismatch(
                            cfg,
                            step.line,
                            format!(
                                "step `{}` needs a leased model (active-standby or active-passive); the cluster is {}",
                                step.action.name(),
                                cfg.cluster.model.as_str()
                            ),
                        ));
                    }
                    check_region(region)?;
                }
                Action::Observe { .. } | Action::Heal | Action::WaitHealthy { .. } => {}
            }
        }
        Ok(())
    }

    /// The longest the steps can take (observations, waited faults, timeouts), for a deadline.
    pub fn max_duration_ms(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| match &s.action {
                Action::Observe { for_ms } => *for_ms,
                Action::Isolate { fault, .. }
                | Action::Partition { fault, .. }
                | Action::Oneway { fault, .. }
                | Action::Latency { fault, .. } => fault.for_ms,
                Action::Restart { timeout_ms, .. }
                | Action::Switchover { timeout_ms, .. }
                | Action::WaitHealthy { timeout_ms } => *timeout_ms,
                _ => 5_000,
            })
            .sum::<u64>()
            + self.load.settle_ms
            + self.load.read_back_timeout_ms
    }
}
