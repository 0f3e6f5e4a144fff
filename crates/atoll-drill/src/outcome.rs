//! The outcome store: the last result of each scenario, kept in a versioned JSON file in a state
//! directory (`$ATOLL_DRILL_STATE_DIR`, else `$XDG_STATE_HOME/atoll`, else
//! `~/.local/state/atoll`), so `atoll drill ls` and `atoll status` can say when each scenario
//! last passed.

use crate::error::{DrillError, Result};
use crate::report::Report;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub const OUTCOMES_VERSION: u32 = 1;
pub const OUTCOMES_FILE: &str = "drill-outcomes.json";
/// The same outcomes as Prometheus metrics, in the text format a node_exporter textfile
/// collector reads (point its `--collector.textfile.directory` at the state directory): a drill
/// is a batch job, so this is how its results reach Prometheus and the shipped alert
/// `AtollDrillNotPassedInSixWeeks`.
pub const METRICS_FILE: &str = "drill-outcomes.prom";

/// The metric families of [`Outcomes::prometheus_text`].
pub const METRIC_NAMES: [&str; 5] = [
    "atoll_drill_last_run_timestamp_seconds",
    "atoll_drill_last_run_passed",
    "atoll_drill_last_success_timestamp_seconds",
    "atoll_drill_last_run_lost_writes",
    "atoll_drill_last_run_zombie_writes",
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    pub version: u32,
    pub scenarios: BTreeMap<String, ScenarioOutcome>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioOutcome {
    pub file: String,
    pub last_run_unix_ms: u64,
    pub last_passed: bool,
    /// When it last passed (unix ms), if ever.
    pub last_pass_unix_ms: Option<u64>,
    pub lost_writes: u64,
    pub zombie_writes: u64,
    pub guard_tripped: Option<String>,
}

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ATOLL_DRILL_STATE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("atoll");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/atoll"),
        None => PathBuf::from(".atoll-state"),
    }
}

fn store_err(path: &Path, m: impl std::fmt::Display) -> DrillError {
    DrillError::Store {
        path: path.display().to_string(),
        message: m.to_string(),
    }
}

/// A label value in the Prometheus text format: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Outcomes {
    /// Every scenario's last outcome as Prometheus gauges (text format 0.0.4). A scenario that
    /// never passed has no `atoll_drill_last_success_timestamp_seconds` sample (alert on
    /// `absent` for the scenarios you require).
    pub fn prometheus_text(&self) -> String {
        let secs = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
        let help = [
            "When the scenario last ran (unix seconds).",
            "Whether the scenario's last run passed (1) or failed (0).",
            "When the scenario last passed (unix seconds): six weeks ago is a number.",
            "Acknowledged writes the scenario's last run found lost.",
            "Zombie writes the scenario's last run found (must be 0).",
        ];
        let mut out = String::new();
        for (i, name) in METRIC_NAMES.iter().enumerate() {
            out.push_str(&format!("# HELP {name} {}\n# TYPE {name} gauge\n", help[i]));
            for (sc, o) in &self.scenarios {
                let value = match i {
                    0 => Some(secs(o.last_run_unix_ms)),
                    1 => Some(u8::from(o.last_passed).to_string()),
                    2 => o.last_pass_unix_ms.map(secs),
                    3 => Some(o.lost_writes.to_string()),
                    _ => Some(o.zombie_writes.to_string()),
                };
                if let Some(v) = value {
                    out.push_str(&format!("{name}{{scenario=\"{}\"}} {v}\n", label(sc)));
                }
            }
        }
        out
    }

    /// Reads the store; a missing file is an empty store, a newer version an error.
    pub fn load(dir: &Path) -> Result<Outcomes> {
        let path = dir.join(OUTCOMES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Outcomes {
                    version: OUTCOMES_VERSION,
                    scenarios: BTreeMap::new(),
                });
            }
            Err(e) => return Err(store_err(&path, e)),
        };
        let o: Outcomes = serde_json::from_str(&text).map_err(|e| store_err(&path, e))?;
        if o.version != OUTCOMES_VERSION {
            return Err(store_err(
                &path,
                format!(
                    "format version {} (this build reads {OUTCOMES_VERSION})",
                    o.version
                ),
            ));
        }
        Ok(o)
    }

    /// Records a report and writes the store atomically (temporary file, fsync, rename).
    pub fn record(dir: &Path, r: &Report) -> Result<Outcomes> {
        let mut o = Outcomes::load(dir)?;
        let prev_pass = o
            .scenarios
            .get(&r.scenario)
            .and_then(|s| s.last_pass_unix_ms);
        o.scenarios.insert(
            r.scenario.clone(),
            ScenarioOutcome {
                file: r.file.clone(),
                last_run_unix_ms: r.started_unix_ms,
                last_passed: r.passed,
                last_pass_unix_ms: if r.passed {
                    Some(r.started_unix_ms)
                } else {
                    prev_pass
                },
                lost_writes: r.rpo.lost.len() as u64,
                zombie_writes: r.zombies.len() as u64,
                guard_tripped: r.guard_tripped.clone(),
            },
        );
        std::fs::create_dir_all(dir).map_err(|e| store_err(dir, e))?;
        let path = dir.join(OUTCOMES_FILE);
        let tmp = dir.join(format!(".{OUTCOMES_FILE}.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(&o).map_err(|e| store_err(&path, e))?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| store_err(&tmp, e))?;
            f.write_all(&bytes).map_err(|e| store_err(&tmp, e))?;
            f.sync_all().map_err(|e| store_err(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| store_err(&path, e))?;
        let prom = dir.join(METRICS_FILE);
        let tmp = dir.join(format!(".{METRICS_FILE}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, o.prometheus_text()).map_err(|e| store_err(&tmp, e))?;
        std::fs::rename(&tmp, &prom).map_err(|e| store_err(&prom, e))?;
        Ok(o)
    }
}

/// "3 h ago" for `then` relative to `now` (unix ms).
pub fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(passed: bool, pass: Option<u64>) -> ScenarioOutcome {
        ScenarioOutcome {
            file: "drills/x.toml".into(),
            last_run_unix_ms: 1_700_000_001_500,
            last_passed: passed,
            last_pass_unix_ms: pass,
            lost_writes: u64::from(!passed),
            zombie_writes: 0,
            guard_tripped: None,
        }
    }

    #[test]
    fn outcomes_as_prometheus_text() {
        let mut o = Outcomes {
            version: OUTCOMES_VERSION,
            scenarios: BTreeMap::new(),
        };
        o.scenarios.insert(
            "region-outage".into(),
            outcome(true, Some(1_700_000_001_500)),
        );
        o.scenarios
            .insert("never\"passed".into(), outcome(false, None));
        let t = o.prometheus_text();
        for name in METRIC_NAMES {
            assert!(t.contains(&format!("# TYPE {name} gauge\n")), "{t}");
        }
        assert!(t.contains(
            "atoll_drill_last_success_timestamp_seconds{scenario=\"region-outage\"} 1700000001.500\n"
        ), "{t}");
        assert!(
            t.contains("atoll_drill_last_run_passed{scenario=\"never\\\"passed\"} 0\n"),
            "{t}"
        );
        // A scenario that never passed has no success sample.
        assert!(
            !t.contains("atoll_drill_last_success_timestamp_seconds{scenario=\"never"),
            "{t}"
        );
        assert!(
            t.contains("atoll_drill_last_run_lost_writes{scenario=\"never\\\"passed\"} 1\n"),
            "{t}"
        );
    }
}
