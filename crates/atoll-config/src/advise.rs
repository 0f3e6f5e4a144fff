//! `atoll advise`: the multi-region decision framework (RTO, consistency, budget -> topology,
//! `docs/design/advise.md`) as a pure function from [`Requirements`] to [`Advice`]: the model, why
//! (the rule each answer applied, quoted), the fencing it needs, the cost multiple, and a starting `atoll.toml`
//! that [`Config::parse`] accepts (checked before it is returned). No I/O: the binary prompts,
//! prints and writes files.
//!
//! The framework, as `docs/design/advise.md` states it and as it is applied here:
//!
//! | question | answer | model |
//! | --- | --- | --- |
//! | Q1 RTO | under 30 s | active-active ("only option with automatic failover") |
//! | | 30 s to 10 min | active-standby (automated promotion; the framework's row says 1–10 minutes, atoll's promotion takes seconds, so RTOs from 30 s fit) |
//! | | 10 min and more | active-passive |
//! | Q2 consistency | none: everything tolerates eventual consistency | keeps Q1's model, every keyspace a CRDT |
//! | | some (named) data must never conflict | that data is `strong` (strong consistency replication: Raft across regions); in active-active, data with a natural owner (users, accounts) is `owned` instead (region ownership: one home region writes each key) |
//! | | all data | every keyspace `strong` (or `owned`) |
//! | Q3 budget | cost multiple | active-active N x (one full stack per region: ~2–3x), active-standby 1 + 0.5(N−1) (~1.5x), active-passive 1 + 0.25(N−1) (~1.2–1.3x); a budget below the model RTO needs is reported, never silently traded for a slower failover |
//!
//! Fencing: active-standby and active-passive need the write lease; active-active with data that
//! must never conflict needs quorum fencing (`[fencing] quorum = true`); any control group with an
//! even number of regions gets an arbiter in a third location (the framework's two options: three regions, or two and a witness).

use crate::duration;
use crate::promise::DNS_RESOLVER_SLACK_MS;
use crate::{Config, ConfigError, Model, Policy};
use serde::Serialize;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use thiserror::Error;

/// The decision table, quoted as `docs/design/advise.md` gives it.
pub mod rules {
    pub const RTO_ACTIVE_ACTIVE: &str =
        "< 30 seconds → Active-Active (only option with automatic failover)";
    pub const RTO_ACTIVE_STANDBY: &str = "1–10 minutes → Active-Standby with automated promotion";
    pub const RTO_ACTIVE_PASSIVE: &str = "10+ minutes → Active-Passive is probably fine";
    pub const EVENTUAL_YES: &str =
        "Yes (social feeds, analytics, event logs) → Active-Active is viable";
    pub const EVENTUAL_NO: &str = "No (financial ledgers, inventory, booking seats) → Active-Passive or Active-Standby with strong consistency replication (e.g., CockroachDB, Spanner) — and accept the latency cost";
    pub const OWNERSHIP: &str = "For most teams, region ownership is the pragmatic path to active-active without the full consistency nightmare.";
    pub const COST_ACTIVE_ACTIVE: &str =
        "Active-Active: ~2–3x the infra cost of a single region (full stack everywhere)";
    pub const COST_ACTIVE_STANDBY: &str =
        "Active-Standby: ~1.5x (right-sized standby, not full peer capacity)";
    pub const COST_ACTIVE_PASSIVE: &str =
        "Active-Passive: ~1.2–1.3x (replica storage + minimal compute)";
    pub const QUORUM: &str = "a region that cannot reach a quorum of the others stops accepting writes. … It requires an odd number of members (typically 3 or 5)";
    pub const ARBITER: &str = "a lightweight arbiter service (often hosted in a third region or an availability zone not shared by either primary region) acts as a tiebreaker";
    pub const TTL: &str = "set your TTL to 30–60 seconds";
}

/// RTOs below this need active-active (Q1).
pub const ACTIVE_ACTIVE_BELOW_MS: u64 = 30_000;
/// RTOs from this on are fine with active-passive (Q1).
pub const ACTIVE_PASSIVE_FROM_MS: u64 = 600_000;
/// Accepted `--rto`: one second to 30 days (as `[cluster] rto`).
pub const RTO_MS: RangeInclusive<u64> = 1_000..=30 * 86_400_000;
/// Accepted `--budget`: a single region's cost (1x) to 100x.
pub const BUDGET: RangeInclusive<f64> = 1.0..=100.0;
/// The never-conflict keyspace `--consistency some` creates when it names none.
pub const DEFAULT_NEVER_CONFLICT: &str = "ledger";
/// The keyspace `--consistency all` creates when it names none.
pub const DEFAULT_ALL: &str = "records";
/// TTLs the advice writes: 30 s (the recommended 30–60 s) at most, and no lower than this.
pub const MIN_TTL_SECS: u64 = 5;
pub const MAX_TTL_SECS: u64 = 30;

/// The regions a starting config uses, in this order, with their coordinates.
pub const REGIONS: &[(&str, f64, f64)] = &crate::render::CLOUD_REGIONS;

/// Where the arbiter goes: the first of these that is no region's location.
const ARBITER_SITES: &[(&str, f64, f64)] = &[
    ("us-east-2", 40.0, -83.0),
    ("ca-central-1", 45.5, -73.6),
    ("eu-north-1", 59.3, 18.1),
];

/// Why a question cannot be answered. Like [`ConfigError`]: a stable code, never retryable, a
/// hint.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdviseError {
    /// An answer is out of range or not understood; `input` names the flag (`rto`, ...).
    #[error("--{input}: {message}")]
    Invalid {
        input: &'static str,
        message: String,
    },
    /// The config the advice wrote does not validate: a bug of `atoll advise`.
    #[error("the advised config does not validate: {0}")]
    Generated(#[from] ConfigError),
}

impl AdviseError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "ATOLL-ADVISE-INPUT",
            Self::Generated(_) => "ATOLL-ADVISE-BUG",
        }
    }

    /// Asking again with the same answers gives the same error.
    pub fn retryable(&self) -> bool {
        false
    }

    pub fn hint(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => {
                "e.g. atoll advise --rto 5m --consistency some --budget 1.5 --regions 2; see `atoll advise --help`"
            }
            Self::Generated(_) => {
                "please report it with the command line; meanwhile start from examples/three-regions.toml"
            }
        }
    }

    fn invalid(input: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            input,
            message: message.into(),
        }
    }
}

/// Q2: which data must never conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "data", rename_all = "kebab-case")]
pub enum Consistency {
    /// Everything tolerates eventual consistency (sessions, carts, counters, flags).
    None,
    /// These keyspaces must never conflict; the rest (sessions, carts, rate limits, flags) may.
    Some(Vec<String>),
    /// Nothing may conflict: only these keyspaces.
    All(Vec<String>),
}

impl Consistency {
    /// `none`, `some`, `all`, or the names of the data that must never conflict, comma-separated
    /// (`ledger,inventory,profiles`): each becomes a keyspace.
    pub fn parse(text: &str) -> Result<Self, AdviseError> {
        let t = text.trim().to_ascii_lowercase();
        match t.as_str() {
            "none" => return Ok(Self::None),
            "some" => return Ok(Self::Some(vec![DEFAULT_NEVER_CONFLICT.into()])),
            "all" => return Ok(Self::All(vec![DEFAULT_ALL.into()])),
            _ => {}
        }
        let mut names: Vec<String> = Vec::new();
        for raw in t.split(',') {
            let name = raw.trim();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid {
                return Err(AdviseError::invalid(
                    "consistency",
                    format!(
                        "`{text}`: say none, some or all, or name the data that must never conflict, comma-separated (keyspace names: 1-64 characters of a-z, 0-9, '_' and '-'), e.g. ledger,inventory"
                    ),
                ));
            }
            if let Some(kind) = crate::region_local_kind(name) {
                return Err(AdviseError::invalid(
                    "consistency",
                    format!(
                        "`{name}` looks like {kind}, which the article keeps region-local and tolerant of conflicts (last writer wins is \"fine for caches and session data\"); leave it out: every starting config has sessions, carts, rate limits and flags as CRDTs"
                    ),
                ));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        Ok(Self::Some(names))
    }

    fn never_conflict(&self) -> &[String] {
        match self {
            Self::None => &[],
            Self::Some(n) | Self::All(n) => n,
        }
    }
}

/// The three answers and the number of regions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Requirements {
    pub rto_ms: u64,
    pub consistency: Consistency,
    /// The most the deployment may cost, as a multiple of one region's.
    pub budget: f64,
    pub regions: usize,
}

/// One question of the framework, the rule it applied (quoted) and what followed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reason {
    pub question: &'static str,
    pub answer: String,
    pub rule: &'static str,
    pub conclusion: String,
}

/// The split-brain protection the topology needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fencing {
    /// `none`, `quorum` or `lease`.
    pub method: &'static str,
    /// An arbiter in a third location makes the control group odd.
    pub arbiter: Option<String>,
    pub why: String,
}

/// One keyspace of the starting config.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdvisedKeyspace {
    pub name: String,
    pub policy: Policy,
    pub why: String,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Advice {
    pub requirements: Requirements,
    pub model: Model,
    pub reasons: Vec<Reason>,
    pub fencing: Fencing,
    /// Estimated infrastructure cost as a multiple of one region's.
    pub cost_multiple: f64,
    pub within_budget: bool,
    pub keyspaces: Vec<AdvisedKeyspace>,
    /// The worst-case RTO the starting config promises (`atoll config check` shows how), if it
    /// bounds one.
    pub promised_rto_ms: Option<u64>,
    /// Trade-offs and what to do next.
    pub notes: Vec<String>,
    /// The starting `atoll.toml`.
    pub config: String,
}

/// The estimated cost of `model` over `regions` regions, as a multiple of one region's: a full
/// stack everywhere (active-active), a standby at half capacity, a passive replica at a quarter.
pub fn cost_multiple(model: Model, regions: usize) -> f64 {
    let extra = regions.saturating_sub(1) as f64;
    match model {
        Model::ActiveActive => 1.0 + extra,
        Model::ActiveStandby => 1.0 + 0.5 * extra,
        Model::ActivePassive => 1.0 + 0.25 * extra,
    }
}

fn cost_rule(model: Model) -> &'static str {
    match model {
        Model::ActiveActive => rules::COST_ACTIVE_ACTIVE,
        Model::ActiveStandby => rules::COST_ACTIVE_STANDBY,
        Model::ActivePassive => rules::COST_ACTIVE_PASSIVE,
    }
}

/// Q1: the model the RTO calls for, and the rule.
pub fn model_for_rto(rto_ms: u64) -> (Model, &'static str) {
    if rto_ms < ACTIVE_ACTIVE_BELOW_MS {
        (Model::ActiveActive, rules::RTO_ACTIVE_ACTIVE)
    } else if rto_ms < ACTIVE_PASSIVE_FROM_MS {
        (Model::ActiveStandby, rules::RTO_ACTIVE_STANDBY)
    } else {
        (Model::ActivePassive, rules::RTO_ACTIVE_PASSIVE)
    }
}

/// Data with a natural owner (a user, an account): `owned` in active-active.
fn has_natural_owner(name: &str) -> bool {
    ["user", "profile", "account", "customer", "tenant"]
        .iter()
        .any(|w| name.contains(w))
}

/// Answers the framework's questions and writes a starting config.
pub fn advise(req: &Requirements) -> Result<Advice, AdviseError> {
    if !RTO_MS.contains(&req.rto_ms) {
        return Err(AdviseError::invalid(
            "rto",
            format!(
                "{} is out of range: an RTO is 1s to 30d",
                duration::human(req.rto_ms)
            ),
        ));
    }
    if !req.budget.is_finite() || !BUDGET.contains(&req.budget) {
        return Err(AdviseError::invalid(
            "budget",
            format!(
                "{} is out of range: a cost multiple of one region's, from 1 (one region) to 100 (the article: active-passive ~1.2–1.3x, active-standby ~1.5x, active-active ~2–3x)",
                req.budget
            ),
        ));
    }
    if !(2..=REGIONS.len()).contains(&req.regions) {
        return Err(AdviseError::invalid(
            "regions",
            format!(
                "{} is out of range: a multi-region topology has 2 to {} regions here",
                req.regions,
                REGIONS.len()
            ),
        ));
    }
    let n = req.regions;
    let mut notes = Vec::new();
    let mut reasons = Vec::new();

    // Q1: RTO.
    let (model, rule) = model_for_rto(req.rto_ms);
    reasons.push(Reason {
        question: "Q1: What is your RTO requirement?",
        answer: duration::human(req.rto_ms),
        rule,
        conclusion: match model {
            Model::ActiveActive => "active-active: every region takes writes, so losing one moves traffic without promoting anything".into(),
            Model::ActiveStandby => "active-standby: one primary, warm standbys serving reads, a standby promoted automatically when the primary's lease ends".into(),
            Model::ActivePassive => "active-passive: one primary, warm replicas, promotion by an operator (`atoll promote`)".into(),
        },
    });

    // Q2: consistency.
    let never = req.consistency.never_conflict();
    match &req.consistency {
        Consistency::None => reasons.push(Reason {
            question: "Q2: Can your data model tolerate eventual consistency?",
            answer: "yes, all of it".into(),
            rule: rules::EVENTUAL_YES,
            conclusion: format!(
                "{model} stands; every keyspace is a CRDT that converges after a partition (lww sessions, mvr carts, counter rate limits, set flags)"
            ),
        }),
        c => reasons.push(Reason {
            question: "Q2: Can your data model tolerate eventual consistency?",
            answer: match c {
                Consistency::All(_) => "no, none of it".into(),
                _ => format!("not for {}", never.join(", ")),
            },
            rule: rules::EVENTUAL_NO,
            conclusion: if model == Model::ActiveActive {
                format!(
                    "the RTO rules out one writer, so {model} stays and the data that must never conflict gets strong consistency replication: `strong` keyspaces (Raft across the regions, a cross-region round trip per write: the latency cost){}",
                    if never.iter().any(|k| has_natural_owner(k)) {
                        ", or region ownership (`owned`) for data with a natural owner"
                    } else {
                        ""
                    }
                )
            } else {
                format!(
                    "{model} has one writer, so nothing conflicts; the data that must never conflict also gets strong consistency replication (`strong` keyspaces), so a failover loses none of it"
                )
            },
        }),
    }

    // Keyspaces.
    let mut keyspaces = Vec::new();
    if !matches!(req.consistency, Consistency::All(_)) {
        for (name, policy, why) in [
            (
                "sessions",
                Policy::Lww,
                "sessions: last writer wins is fine (the article: \"Fine for caches and session data\"), region-local",
            ),
            (
                "carts",
                Policy::Mvr,
                "carts: concurrent writes kept as siblings, merged by the application",
            ),
            (
                "ratelimits",
                Policy::Counter,
                "rate limits: a PN-counter, increments from every region add up, region-local",
            ),
            (
                "flags",
                Policy::Set,
                "feature flags: an add-wins set, region-local",
            ),
        ] {
            if !never.iter().any(|k| k == name) {
                keyspaces.push(AdvisedKeyspace {
                    name: name.into(),
                    policy,
                    why: why.into(),
                });
            }
        }
    }
    for name in never {
        if model == Model::ActiveActive && has_natural_owner(name) {
            keyspaces.push(AdvisedKeyspace {
                name: name.clone(),
                policy: Policy::Owned,
                why: format!(
                    "{name} has a natural owner: each key has a home region that alone writes it, so it never conflicts and reads stay local (\"{}\"); another region takes a dead home's keys over after a lease",
                    rules::OWNERSHIP
                ),
            });
        } else {
            keyspaces.push(AdvisedKeyspace {
                name: name.clone(),
                policy: Policy::Strong,
                why: format!(
                    "{name} must never conflict: linearizable, replicated by Raft across the regions, RPO 0 while a majority survives"
                ),
            });
        }
    }
    let strong = keyspaces.iter().any(|k| k.policy == Policy::Strong);
    let owned = keyspaces.iter().any(|k| k.policy == Policy::Owned);
    if strong && n == 2 {
        notes.push(
            "with 2 regions a strong keyspace needs both to write (a majority of 2 is 2): a region loss stops its writes until the region returns; --regions 3 keeps a majority through the loss of one (the arbiter holds no keyspace data, so it does not help here)".into(),
        );
    }

    // Fencing.
    let quorum = model == Model::ActiveActive && (strong || owned);
    let fenced = model != Model::ActiveActive || quorum;
    let arbiter_site = if fenced && n.is_multiple_of(2) {
        ARBITER_SITES
            .iter()
            .find(|(_, lat, lon)| {
                REGIONS[..n].iter().all(|(_, rl, ro)| {
                    atoll_core::geo::great_circle_km(*lat, *lon, *rl, *ro)
                        >= crate::SAME_LOCATION_KM
                })
            })
            .copied()
    } else {
        None
    };
    let fencing = Fencing {
        method: if model != Model::ActiveActive {
            "lease"
        } else if quorum {
            "quorum"
        } else {
            "none"
        },
        arbiter: arbiter_site.map(|(name, _, _)| name.to_string()),
        why: {
            let mut why = match (model, quorum) {
                (Model::ActiveActive, false) => "none needed: every keyspace converges after a partition, so a region cut off from the others keeps taking writes".to_string(),
                (Model::ActiveActive, true) => format!(
                    "quorum fencing ([fencing] quorum = true): \"{}\"; strong keyspaces refuse writes without a majority of regions, and owned keyspaces move homes only through the control group",
                    rules::QUORUM
                ),
                _ => "the write lease (one holder at a time, epochs, decided by the control group of one voter per region), so a partitioned old primary stops writing before anyone else starts".to_string(),
            };
            if let Some((site, _, _)) = arbiter_site {
                let _ = write!(
                    why,
                    "; {n} regions are an even number of voters, so an arbiter in {site}: \"{}\"",
                    rules::ARBITER
                );
            }
            why
        },
    };

    // Q3: budget.
    let cost = cost_multiple(model, n);
    let within_budget = req.budget + 1e-9 >= cost;
    reasons.push(Reason {
        question: "Q3: What's your budget?",
        answer: format!("{}x", trim_float(req.budget)),
        rule: cost_rule(model),
        conclusion: if within_budget {
            format!(
                "{model} over {n} regions costs about {}x a single region: within the budget",
                trim_float(cost)
            )
        } else {
            format!(
                "{model} over {n} regions costs about {}x a single region: OVER the budget of {}x",
                trim_float(cost),
                trim_float(req.budget)
            )
        },
    });
    if !within_budget {
        let fits: Vec<String> = Model::ALL
            .into_iter()
            .filter(|m| cost_multiple(*m, n) <= req.budget + 1e-9)
            .map(|m| {
                let rto = match m {
                    Model::ActiveActive => "any RTO",
                    Model::ActiveStandby => "RTOs of 30 s and more",
                    Model::ActivePassive => "RTOs of 10 min and more",
                };
                format!("{m} (~{}x, for {rto})", trim_float(cost_multiple(m, n)))
            })
            .collect();
        let fewer = (2..n)
            .rev()
            .find(|r| cost_multiple(model, *r) <= req.budget + 1e-9);
        let mut note = format!(
            "the budget does not cover what the RTO needs; the RTO decides the model here, so either raise the budget to {}x",
            trim_float(cost)
        );
        if let Some(r) = fewer {
            let _ = write!(
                note,
                ", or run {model} over {r} regions (~{}x)",
                trim_float(cost_multiple(model, r))
            );
        }
        if fits.is_empty() {
            note.push_str(
                "; no multi-region topology fits this budget (the cheapest, active-passive over 2 regions, is ~1.25x)",
            );
        } else {
            let _ = write!(
                note,
                ", or relax the RTO to what fits the budget: {}",
                fits.join(", ")
            );
        }
        notes.push(note);
    }
    // DNS: the TTL that keeps DNS failover within the RTO, 5..=30 s, from what the config with
    // a 30 s TTL promises (the same computation as `atoll config check`).
    let first = write_config(req, model, &keyspaces, quorum, arbiter_site, MAX_TTL_SECS);
    let p = Config::parse(&first, "atoll.toml (advised)")?.promises();
    // What each name needs before its TTL starts: detection, or (a failover name in
    // active-standby) promotion and one check.
    let before_ttl_ms = p
        .dns
        .iter()
        .map(|d| {
            let fixed = u64::from(d.ttl_secs) * 1_000 + d.resolver_slack_ms;
            d.worst_ms.max(d.follows_primary_ms.unwrap_or(0)) - fixed
        })
        .max()
        .unwrap_or(0);
    let ttl_room = req
        .rto_ms
        .saturating_sub(before_ttl_ms)
        .saturating_sub(DNS_RESOLVER_SLACK_MS);
    let ttl_secs = (ttl_room / 1_000).clamp(MIN_TTL_SECS, MAX_TTL_SECS);
    if ttl_secs < MAX_TTL_SECS {
        notes.push(format!(
            "DNS TTL {ttl_secs} s rather than the article's 30–60 s (\"{}\"), so DNS moves clients within the RTO; more DNS queries, which the article calls negligible",
            rules::TTL
        ));
    }
    if ttl_room / 1_000 < MIN_TTL_SECS {
        notes.push(format!(
            "DNS cannot move clients off a dead region within {} (failover {} before the TTL, + TTL + {} resolver slack); send them through the router's proxy (`atoll router --proxy`), which fails over per request: `atoll config check` warns about the DNS names until then",
            duration::human(req.rto_ms),
            duration::human(before_ttl_ms),
            duration::human(DNS_RESOLVER_SLACK_MS)
        ));
    }
    if model == Model::ActivePassive {
        notes.push("promotion is manual: rehearse `atoll promote` with `atoll drill run drills/primary-loss.toml` monthly, as the article advises".into());
    }
    notes.push(format!(
        "next: `atoll certs init --config atoll.toml --out certs` (mutual TLS between regions), replace the 127.0.0.1 addresses, add [auth] (examples/tokens.toml), then `atoll config check atoll.toml`{}",
        if fencing.arbiter.is_some() {
            " and run `atoll arbiter` in the third location"
        } else {
            ""
        }
    ));

    let config = write_config(req, model, &keyspaces, quorum, arbiter_site, ttl_secs);
    let parsed = Config::parse(&config, "atoll.toml (advised)")?;
    let promised_rto_ms = parsed.promises().worst_case_ms;
    Ok(Advice {
        requirements: req.clone(),
        model,
        reasons,
        fencing,
        cost_multiple: cost,
        within_budget,
        keyspaces,
        promised_rto_ms,
        notes,
        config,
    })
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn write_config(
    req: &Requirements,
    model: Model,
    keyspaces: &[AdvisedKeyspace],
    quorum: bool,
    arbiter: Option<(&str, f64, f64)>,
    ttl_secs: u64,
) -> String {
    let n = req.regions;
    let regions = &REGIONS[..n];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# A starting atoll.toml from `atoll advise` (RTO {}, consistency: {}, budget {}x, {n} regions).\n# Replace the 127.0.0.1 addresses with each region's own, create the certificates with\n#   atoll certs init --config atoll.toml --out certs\n# and check it with `atoll config check atoll.toml`.\n",
        duration::to_config(req.rto_ms),
        match &req.consistency {
            Consistency::None => "none".to_string(),
            Consistency::Some(k) => format!("never conflict: {}", k.join(", ")),
            Consistency::All(k) => format!("all ({})", k.join(", ")),
        },
        trim_float(req.budget)
    );
    let _ = writeln!(
        s,
        "[cluster]\nname = \"atoll\"\nmodel = \"{model}\"\n# The recovery time objective: `atoll config check` warns when failover can take longer.\nrto = \"{}\"\n",
        duration::to_config(req.rto_ms)
    );
    let _ = writeln!(
        s,
        "# Mutual TLS between regions (files relative to this file).\n[cluster.tls]\nca = \"certs/ca.pem\"\ncert = \"certs/{{region}}.pem\"\nkey = \"certs/{{region}}.key\"\n"
    );
    if let Some((site, lat, lon)) = arbiter {
        let _ = writeln!(
            s,
            "# The tiebreaker of the control group: run `atoll arbiter` in a third location ({site}).\n[cluster.arbiter]\nname = \"arbiter\"\npeer = \"127.0.0.1:7290\"\nlocation = {{ lat = {lat:?}, lon = {lon:?} }}\n"
        );
    }
    for (i, (name, lat, lon)) in regions.iter().enumerate() {
        let _ = writeln!(
            s,
            "[[regions]]\nname = \"{name}\"\napi = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\nlocation = {{ lat = {lat:?}, lon = {lon:?} }}\n",
            7100 + i,
            7200 + i
        );
    }
    for k in keyspaces {
        let _ = writeln!(
            s,
            "# {}\n[[keyspaces]]\nname = \"{}\"\npolicy = \"{}\"",
            k.why, k.name, k.policy
        );
        if k.policy == Policy::Owned {
            let order: Vec<String> = regions.iter().map(|(r, _, _)| format!("\"{r}\"")).collect();
            let _ = writeln!(
                s,
                "default_home = \"{}\"\n# homes = [{{ prefix = \"eu:\", region = \"{}\" }}]\ntakeover = [{}]",
                regions[0].0,
                regions[1].0,
                order.join(", ")
            );
        }
        s.push('\n');
    }
    match model {
        Model::ActiveActive if quorum => {
            let _ = writeln!(
                s,
                "# Quorum fencing: a region cut off from the majority refuses writes to keyspaces marked\n# on_minority = \"read-only\"; owned keyspaces move homes only through it.\n[fencing]\nquorum = true\n"
            );
        }
        Model::ActiveActive => {}
        _ => {
            let _ = writeln!(
                s,
                "# The write lease: one primary at a time.\n[fencing]\ninitial_primary = \"{}\"\nlease_ms = 5000\nrenew_every_ms = 1000\nmargin_ms = 250",
                regions[0].0
            );
            if model == Model::ActiveStandby {
                let _ = writeln!(
                    s,
                    "# A standby further behind than this is not promoted automatically (the RPO bound).\nmax_promotion_lag_ms = 10000"
                );
            }
            s.push('\n');
        }
    }
    let _ = writeln!(
        s,
        "# The traffic router: `atoll router --config atoll.toml --proxy ... --dns ...`.\n[router]\nzone = \"atoll.test\"\nttl_secs = {ttl_secs}\n\n[router.health]\ninterval_ms = 1000\ntimeout_ms = 800\nfailure_threshold = 3\nrecovery_threshold = 2\n"
    );
    match model {
        Model::ActiveActive => {
            let _ = writeln!(
                s,
                "# The nearest healthy region.\n[[router.names]]\nname = \"api\"\npolicy = \"latency\""
            );
        }
        Model::ActiveStandby => {
            let _ = writeln!(
                s,
                "# Reads at the nearest healthy region (the proxy sends writes to the primary).\n[[router.names]]\nname = \"api\"\npolicy = \"latency\"\n\n# The primary (the write-lease holder).\n[[router.names]]\nname = \"primary\"\npolicy = \"failover\""
            );
        }
        Model::ActivePassive => {
            let _ = writeln!(
                s,
                "# The primary (the write-lease holder); passive regions get no traffic.\n[[router.names]]\nname = \"api\"\npolicy = \"failover\""
            );
        }
    }
    s
}

impl Advice {
    /// The answer in words (without the config).
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "recommended topology: {} (cluster.model = \"{}\")",
            self.model, self.model
        );
        let _ = writeln!(out, "\nwhy (the article's decision framework):");
        for r in &self.reasons {
            let _ = writeln!(out, "  {} {}", r.question, r.answer);
            let _ = writeln!(out, "    rule: \"{}\"", r.rule);
            let _ = writeln!(out, "    so:   {}", r.conclusion);
        }
        let _ = writeln!(
            out,
            "\nfencing: {}{}\n  {}",
            self.fencing.method,
            self.fencing
                .arbiter
                .as_ref()
                .map(|a| format!(" + arbiter in {a}"))
                .unwrap_or_default(),
            self.fencing.why
        );
        let _ = writeln!(
            out,
            "\ncost: about {}x a single region ({})",
            trim_float(self.cost_multiple),
            if self.within_budget {
                "within budget"
            } else {
                "OVER budget"
            }
        );
        let _ = writeln!(out, "\nkeyspaces:");
        let w = self
            .keyspaces
            .iter()
            .map(|k| k.name.len())
            .max()
            .unwrap_or(0);
        for k in &self.keyspaces {
            let _ = writeln!(
                out,
                "  {:<w$}  {:<7}  {}",
                k.name,
                k.policy.to_string(),
                k.why
            );
        }
        if let Some(rto) = self.promised_rto_ms {
            let _ = writeln!(
                out,
                "\nthe starting config promises a worst-case RTO of {} against the {} asked (`atoll config check` shows the figures)",
                duration::human(rto),
                duration::human(self.requirements.rto_ms)
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for n in &self.notes {
                let _ = writeln!(out, "  - {n}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(rto: &str, consistency: &str, budget: f64, regions: usize) -> Requirements {
        Requirements {
            rto_ms: duration::parse_ms(rto).unwrap(),
            consistency: Consistency::parse(consistency).unwrap(),
            budget,
            regions,
        }
    }

    /// The advice for a row, with its config parsed and checked as `atoll config check` does,
    /// and the warnings other than the open client API's (a starting config has no tokens file).
    fn row(
        rto: &str,
        consistency: &str,
        budget: f64,
        regions: usize,
    ) -> (Advice, Config, Vec<String>) {
        let a = advise(&req(rto, consistency, budget, regions))
            .unwrap_or_else(|e| panic!("{e} ({})", e.code()));
        let c =
            Config::parse(&a.config, "atoll.toml").unwrap_or_else(|e| panic!("{e}\n{}", a.config));
        c.check_peer_tls().unwrap();
        let w = c
            .warnings()
            .into_iter()
            .filter(|w| !w.starts_with("no [auth] section"))
            .collect();
        (a, c, w)
    }

    fn policies(a: &Advice) -> Vec<(&str, Policy)> {
        a.keyspaces
            .iter()
            .map(|k| (k.name.as_str(), k.policy))
            .collect()
    }

    #[test]
    fn q1_rto_boundaries_follow_the_article() {
        assert_eq!(model_for_rto(29_999).0, Model::ActiveActive);
        assert_eq!(model_for_rto(30_000).0, Model::ActiveStandby);
        assert_eq!(model_for_rto(599_999).0, Model::ActiveStandby);
        assert_eq!(model_for_rto(600_000).0, Model::ActivePassive);
        assert_eq!(model_for_rto(4 * 3_600_000).1, rules::RTO_ACTIVE_PASSIVE);
    }

    #[test]
    fn q3_cost_multiples_are_the_articles() {
        assert_eq!(cost_multiple(Model::ActiveActive, 2), 2.0);
        assert_eq!(cost_multiple(Model::ActiveActive, 3), 3.0);
        assert_eq!(cost_multiple(Model::ActiveStandby, 2), 1.5);
        assert_eq!(cost_multiple(Model::ActivePassive, 2), 1.25);
    }

    #[test]
    fn row_rto_under_30_s_eventual_data_is_active_active_without_fencing() {
        let (a, c, w) = row("20s", "none", 2.0, 2);
        assert_eq!(a.model, Model::ActiveActive);
        assert_eq!(c.cluster.model, Model::ActiveActive);
        assert_eq!(a.reasons[0].rule, rules::RTO_ACTIVE_ACTIVE);
        assert_eq!(a.reasons[1].rule, rules::EVENTUAL_YES);
        assert_eq!(a.reasons[2].rule, rules::COST_ACTIVE_ACTIVE);
        assert_eq!(
            (a.fencing.method, a.fencing.arbiter.as_deref()),
            ("none", None)
        );
        assert!(!c.fencing.quorum);
        assert_eq!(a.cost_multiple, 2.0);
        assert!(a.within_budget);
        assert_eq!(
            policies(&a),
            vec![
                ("sessions", Policy::Lww),
                ("carts", Policy::Mvr),
                ("ratelimits", Policy::Counter),
                ("flags", Policy::Set)
            ]
        );
        assert_eq!(c.cluster.rto_ms, Some(20_000));
        // The TTL is lowered so that DNS failover fits the RTO, and the config says it does.
        let ttl = c.router.as_ref().unwrap().ttl_secs;
        assert_eq!(ttl, 11, "20 s - 3.8 s detection - 5 s slack");
        assert!(
            a.promised_rto_ms.unwrap() <= 20_000,
            "{:?}",
            a.promised_rto_ms
        );
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn row_rto_minutes_with_a_ledger_is_active_standby_with_a_lease_and_an_arbiter() {
        let (a, c, w) = row("5m", "some", 1.5, 2);
        assert_eq!(a.model, Model::ActiveStandby);
        assert_eq!(a.reasons[0].rule, rules::RTO_ACTIVE_STANDBY);
        assert_eq!(a.reasons[1].rule, rules::EVENTUAL_NO);
        assert_eq!(a.reasons[2].rule, rules::COST_ACTIVE_STANDBY);
        assert_eq!(a.fencing.method, "lease");
        assert_eq!(a.fencing.arbiter.as_deref(), Some("us-east-2"));
        assert!(a.fencing.why.contains(rules::ARBITER));
        assert_eq!(c.control_voters(), 3);
        assert!(c.cluster.arbiter.as_ref().unwrap().location.is_some());
        assert_eq!((a.cost_multiple, a.within_budget), (1.5, true));
        assert!(policies(&a).contains(&("ledger", Policy::Strong)));
        assert_eq!(
            c.router.as_ref().unwrap().ttl_secs,
            30,
            "the article's TTL fits 5 minutes"
        );
        // Two regions and a strong keyspace: both needed, said by the advice and by config check.
        assert!(
            a.notes.iter().any(|n| n.contains("--regions 3")),
            "{:?}",
            a.notes
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("strong keyspaces are replicated by a group of the 2 voter regions"),
            "{w:?}"
        );
    }

    #[test]
    fn row_rto_hours_is_active_passive() {
        let (a, c, w) = row("4h", "none", 1.3, 2);
        assert_eq!(a.model, Model::ActivePassive);
        assert_eq!(c.cluster.model, Model::ActivePassive);
        assert_eq!(a.reasons[0].rule, rules::RTO_ACTIVE_PASSIVE);
        assert_eq!(a.reasons[2].rule, rules::COST_ACTIVE_PASSIVE);
        assert_eq!(a.fencing.method, "lease");
        assert_eq!((a.cost_multiple, a.within_budget), (1.25, true));
        assert_eq!(a.promised_rto_ms, None, "an operator promotes");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn row_fast_rto_with_data_that_must_never_conflict_is_active_active_with_quorum() {
        let (a, c, w) = row("20s", "ledger,profiles", 3.0, 3);
        assert_eq!(a.model, Model::ActiveActive);
        assert_eq!(a.reasons[1].rule, rules::EVENTUAL_NO);
        assert_eq!(a.fencing.method, "quorum");
        assert_eq!(
            a.fencing.arbiter, None,
            "3 regions are an odd number of voters"
        );
        assert!(c.fencing.quorum);
        let p = policies(&a);
        assert!(p.contains(&("ledger", Policy::Strong)), "{p:?}");
        assert!(p.contains(&("profiles", Policy::Owned)), "{p:?}");
        assert!(p.contains(&("sessions", Policy::Lww)), "{p:?}");
        let profiles = c.keyspace("profiles").unwrap().owned.as_ref().unwrap();
        assert_eq!(profiles.takeover.len(), 3);
        assert!(a.within_budget);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn row_all_data_strong() {
        let (a, _, w) = row("5m", "all", 2.0, 3);
        assert_eq!(a.model, Model::ActiveStandby);
        assert_eq!(policies(&a), vec![("records", Policy::Strong)]);
        assert_eq!(a.cost_multiple, 2.0);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn a_budget_below_what_the_rto_needs_is_reported_not_traded() {
        let (a, _, _) = row("20s", "none", 1.5, 3);
        assert_eq!(a.model, Model::ActiveActive, "the RTO decides");
        assert!(!a.within_budget);
        assert!(a.reasons[2].conclusion.contains("OVER the budget"));
        let note = a.notes.iter().find(|n| n.contains("budget")).unwrap();
        assert!(note.contains("raise the budget to 3x"), "{note}");
        assert!(
            !note.contains("active-standby"),
            "2x does not fit 1.5x: {note}"
        );
        assert!(note.contains("active-passive (~1.5x"), "{note}");
        // 2x: active-active over 2 regions fits instead.
        let (a, _, _) = row("20s", "none", 2.0, 3);
        assert!(
            a.notes
                .iter()
                .any(|n| n.contains("active-active over 2 regions (~2x)")),
            "{:?}",
            a.notes
        );
        // A generous budget does not buy a model the RTO does not need.
        let (a, _, _) = row("5m", "none", 3.0, 2);
        assert_eq!(a.model, Model::ActiveStandby);
    }

    #[test]
    fn an_rto_dns_cannot_meet_is_said_and_config_check_agrees() {
        let (a, c, w) = row("8s", "none", 2.0, 2);
        assert_eq!(c.router.as_ref().unwrap().ttl_secs, MIN_TTL_SECS as u32);
        assert!(
            a.notes
                .iter()
                .any(|n| n.contains("DNS cannot move clients")),
            "{:?}",
            a.notes
        );
        assert!(
            w.iter()
                .any(|w| w.contains("DNS failover of `api.atoll.test`")),
            "{w:?}"
        );
    }

    #[test]
    fn bad_answers_are_refused_with_a_code_and_a_hint() {
        let good = req("5m", "none", 1.5, 2);
        for (r, input) in [
            (
                Requirements {
                    rto_ms: 0,
                    ..good.clone()
                },
                "rto",
            ),
            (
                Requirements {
                    budget: 0.5,
                    ..good.clone()
                },
                "budget",
            ),
            (
                Requirements {
                    budget: f64::NAN,
                    ..good.clone()
                },
                "budget",
            ),
            (
                Requirements {
                    regions: 1,
                    ..good.clone()
                },
                "regions",
            ),
            (
                Requirements {
                    regions: REGIONS.len() + 1,
                    ..good.clone()
                },
                "regions",
            ),
        ] {
            let e = advise(&r).unwrap_err();
            assert!(
                matches!(&e, AdviseError::Invalid { input: i, .. } if *i == input),
                "{e}"
            );
            assert_eq!(e.code(), "ATOLL-ADVISE-INPUT");
            assert!(!e.retryable());
            assert!(e.hint().contains("atoll advise"));
        }
        assert!(Consistency::parse("Ledger, inventory").is_ok());
        for bad in [
            "",
            "ledger,,x",
            "sessions",
            "ledger,feature-flags",
            "l€dger",
        ] {
            let e = Consistency::parse(bad).unwrap_err();
            assert_eq!(e.code(), "ATOLL-ADVISE-INPUT", "{bad}");
        }
        assert_eq!(
            Consistency::parse("ledger,inventory,ledger").unwrap(),
            Consistency::Some(vec!["ledger".into(), "inventory".into()])
        );
    }

    #[test]
    fn every_row_and_region_count_writes_a_valid_config() {
        for rto in ["5s", "20s", "30s", "40s", "45s", "5m", "10m", "4h"] {
            for consistency in ["none", "some", "all", "ledger,users"] {
                for n in 2..=REGIONS.len() {
                    let a = advise(&req(rto, consistency, 10.0, n))
                        .unwrap_or_else(|e| panic!("{rto} {consistency} {n}: {e}"));
                    let c = Config::parse(&a.config, "atoll.toml").unwrap();
                    assert_eq!(c.regions.len(), n);
                    assert_eq!(c.cluster.model, a.model);
                    assert!(
                        !c.warnings().iter().any(|w| w.contains("voters")),
                        "{rto} {consistency} {n}: {:?}",
                        c.warnings()
                    );
                    assert!(
                        !c.warnings().iter().any(|w| w.contains("arbiter `")),
                        "{:?}",
                        c.warnings()
                    );
                    assert!(!a.explain().is_empty());
                    if rto != "5s" {
                        // What the advice wrote fits the RTO it was asked for.
                        assert!(
                            !c.warnings().iter().any(|w| w.contains("rto")),
                            "{rto} {consistency} {n}: {:?}",
                            c.warnings()
                        );
                    }
                }
            }
        }
    }
}
