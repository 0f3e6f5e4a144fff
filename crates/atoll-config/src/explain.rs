//! [`Config::explain`]: what was understood, in plain text, defaults included.

use crate::{
    Config, DEFAULT_CONFLICT_MAX_ENTRIES, DEFAULT_CONFLICT_RETENTION_SECS,
    DEFAULT_GROUP_COMMIT_MAX_BATCH, DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_MAX_CLOCK_OFFSET_MS,
    DEFAULT_MAX_LAG_SECS, DEFAULT_MAX_SIBLINGS, DEFAULT_MAX_VALUE_BYTES, KEY_MAX_BYTES,
    KeyspaceConfig, Model,
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
    let mut rows = vec![row(["name", "api", "peer", "location"])];
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
        rows.push(vec![r.name.to_string(), r.api.to_string(), peer, location]);
    }
    table(&mut out, &rows);

    let _ = writeln!(out, "\nkeyspaces ({})", config.keyspaces.len());
    let mut rows = vec![row(["name", "policy", "options"])];
    for k in &config.keyspaces {
        rows.push(vec![
            k.name.clone(),
            k.policy.to_string(),
            keyspace_options(k),
        ]);
    }
    table(&mut out, &rows);
    let _ = writeln!(
        out,
        "  keys: at most {KEY_MAX_BYTES} bytes in every keyspace (fixed)\n  policies: lww = last writer wins, losers kept in the conflict ledger; mvr = concurrent writes kept as siblings;\n            counter = PN-counter, increments from every region add up; set = add-wins observed-remove set"
    );

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
        "  heartbeat_interval_ms  {}{}  (a peer silent for 3 intervals = {} ms is unreachable)",
        r.heartbeat_interval_ms,
        default_mark(r.heartbeat_interval_ms == DEFAULT_HEARTBEAT_INTERVAL_MS),
        r.heartbeat_interval_ms * 3
    );
    let _ = writeln!(
        out,
        "  max_lag_secs           {}{}  (`atoll status` fails when a peer lags more)",
        r.max_lag_secs,
        default_mark(r.max_lag_secs == DEFAULT_MAX_LAG_SECS)
    );
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Writes `rows` as a left-aligned table, indented and separated by two spaces.
fn table(out: &mut String, rows: &[Vec<String>]) {
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
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let _ = write!(line, "  {cell:<width$}", width = widths[i]);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn default_mark(is_default: bool) -> &'static str {
    if is_default { " (default)" } else { "" }
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

fn keyspace_options(k: &KeyspaceConfig) -> String {
    let opts = k.options();
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
        .collect();
    parts.join(", ")
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
