//! The drill's outcome: a [`Report`] (versioned JSON), its terminal summary and a self-contained
//! HTML page with inline SVG charts (no external assets, no script).

use crate::check::{Duplicate, RpoFindings, Zombie};
use crate::stats::{Point, Rto, WindowStats};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// A chart: its id, its title and the value it plots.
type Chart = (&'static str, &'static str, fn(&Point) -> u64);

/// The report format version (the JSON carries it; readers refuse newer ones).
pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    /// `start`, `fault`, `restore`, `observe`, `abort`, `error`.
    pub kind: String,
    pub text: String,
    /// The scenario line of the step (0: the runner's own).
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetSummary {
    /// `router` or a region.
    pub target: String,
    pub total: WindowStats,
    pub series: Vec<Point>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpectResult {
    pub text: String,
    pub line: usize,
    pub actual: f64,
    pub passed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    pub scenario: String,
    pub file: String,
    pub description: String,
    pub model: String,
    pub run_id: String,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    pub passed: bool,
    /// Why a guard tripped, if one did.
    pub guard_tripped: Option<String>,
    pub interrupted: bool,
    /// Steps that failed, restores that failed.
    pub problems: Vec<String>,
    pub events: Vec<Event>,
    pub targets: Vec<TargetSummary>,
    pub rto: Vec<Rto>,
    pub acked_writes: u64,
    /// Acknowledged writes per region that acknowledged them (through the router too).
    pub acked_by: std::collections::BTreeMap<String, u64>,
    pub unknown_writes: u64,
    /// Refused and unknown writes by error code (`CONNECT`: connection refused, nothing sent).
    pub failed_by_code: std::collections::BTreeMap<String, u64>,
    pub refused_writes: u64,
    pub reads: u64,
    pub rpo: RpoFindings,
    pub zombies: Vec<Zombie>,
    pub duplicates: Vec<Duplicate>,
    pub expects: Vec<ExpectResult>,
    pub survivors_error_rate: f64,
    pub survivors_p99_ms: u64,
    pub control: String,
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or("not recovered".to_string(), |ms| format!("{ms} ms"))
}

impl Report {
    /// The terminal summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "drill {} ({}, {}): {}",
            self.scenario,
            self.file,
            self.model,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        if let Some(g) = &self.guard_tripped {
            let _ = writeln!(s, "  guard tripped: {g} (aborted and restored)");
        }
        if self.interrupted {
            let _ = writeln!(s, "  interrupted (restored)");
        }
        for p in &self.problems {
            let _ = writeln!(s, "  problem: {p}");
        }
        let _ = writeln!(
            s,
            "  {:.1} s; writes acknowledged {}, refused {}, outcome unknown {}; reads {}",
            self.duration_ms as f64 / 1000.0,
            self.acked_writes,
            self.refused_writes,
            self.unknown_writes,
            self.reads
        );
        if !self.failed_by_code.is_empty() {
            let by: Vec<String> = self
                .failed_by_code
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(s, "  failed writes by code: {}", by.join(", "));
        }
        if !self.acked_by.is_empty() {
            let by: Vec<String> = self
                .acked_by
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let _ = writeln!(s, "  acknowledged by: {}", by.join(", "));
        }
        let _ = writeln!(s, "  timeline:");
        for e in &self.events {
            let _ = writeln!(
                s,
                "    {:>8.1} s  {:<8} {}",
                e.at_ms as f64 / 1000.0,
                e.kind,
                e.text
            );
        }
        let _ = writeln!(s, "  per target (whole run):");
        let _ = writeln!(
            s,
            "    {:<16} {:>9} {:>8} {:>8} {:>8}",
            "target", "requests", "errors", "p50 ms", "p99 ms"
        );
        for t in &self.targets {
            let _ = writeln!(
                s,
                "    {:<16} {:>9} {:>7.2}% {:>8} {:>8}",
                t.target,
                t.total.requests,
                t.total.error_rate * 100.0,
                t.total.p50_ms,
                t.total.p99_ms
            );
        }
        if !self.rto.is_empty() {
            let _ = writeln!(
                s,
                "  RTO (fault -> first successful write after a failure / -> SLO met again):"
            );
            for r in &self.rto {
                let _ = writeln!(
                    s,
                    "    {:<28} {:<16} write {:>14}   slo {:>14}",
                    r.fault,
                    r.target,
                    opt_ms(r.write_ms),
                    opt_ms(r.slo_ms)
                );
            }
        }
        let _ = writeln!(
            s,
            "  RPO: {} acknowledged writes checked in every region: {} lost{}",
            self.rpo.checked_writes,
            self.rpo.lost.len(),
            if self.rpo.unchecked.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} keys unreadable (check incomplete)",
                    self.rpo.unchecked.len()
                )
            }
        );
        for l in self.rpo.lost.iter().take(50) {
            let _ = writeln!(
                s,
                "    LOST in {}: {} {}/{} = {:?} (write {}, acknowledged by {} at {} ms); found {}",
                l.region,
                l.kind.as_str(),
                l.keyspace,
                l.key,
                l.value,
                l.id,
                l.acked_by,
                l.acked_at_ms,
                l.found
            );
        }
        if self.rpo.lost.len() > 50 {
            let _ = writeln!(
                s,
                "    ... and {} more (see --output json)",
                self.rpo.lost.len() - 50
            );
        }
        let _ = writeln!(s, "  zombie writes: {}", self.zombies.len());
        for z in self.zombies.iter().take(20) {
            let _ = writeln!(
                s,
                "    ZOMBIE write {} {}/{}: {}",
                z.id, z.keyspace, z.key, z.why
            );
        }
        let _ = writeln!(
            s,
            "  writes applied twice: {}",
            self.duplicates.iter().map(|d| d.extra).sum::<i64>()
        );
        for d in self.duplicates.iter().take(20) {
            let _ = writeln!(
                s,
                "    DUPLICATE in {}: {}/{}: {}",
                d.region, d.keyspace, d.key, d.detail
            );
        }
        let _ = writeln!(s, "  expectations:");
        for e in &self.expects {
            let _ = writeln!(
                s,
                "    [{}] {} (actual {}){}",
                if e.passed { "ok" } else { "FAIL" },
                e.text,
                e.actual,
                if e.line > 0 {
                    format!(" line {}", e.line)
                } else {
                    String::new()
                }
            );
        }
        s
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// A self-contained HTML page: summary tables and three charts (throughput, errors, p99 per
    /// target over time, faults marked).
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>atoll drill {name}</title>\
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}.pass{{color:#070}}.fail{{color:#b00}}\
svg{{background:#fafafa;border:1px solid #ddd;margin:0.5em 0}}</style></head><body>\n\
<h1>drill {name}: <span id=\"verdict\" class=\"{cls}\">{verdict}</span></h1>\n<p>{desc}</p>\n\
<p>{file}, model {model}, run {run}, {dur:.1} s. Writes acknowledged {acked}, refused {refused}, outcome unknown {unknown}; reads {reads}.</p>\n",
            name = esc(&self.scenario),
            cls = if self.passed { "pass" } else { "fail" },
            verdict = if self.passed { "PASSED" } else { "FAILED" },
            desc = esc(&self.description),
            file = esc(&self.file),
            model = esc(&self.model),
            run = esc(&self.run_id),
            dur = self.duration_ms as f64 / 1000.0,
            acked = self.acked_writes,
            refused = self.refused_writes,
            unknown = self.unknown_writes,
            reads = self.reads,
        );
        if let Some(g) = &self.guard_tripped {
            let _ = writeln!(
                h,
                "<p class=\"fail\">Guard tripped: {} (aborted and restored)</p>",
                esc(g)
            );
        }
        for p in &self.problems {
            let _ = writeln!(h, "<p class=\"fail\">Problem: {}</p>", esc(p));
        }
        let charts: [Chart; 3] = [
            ("throughput", "successful requests per second", |p| {
                p.ok_per_s
            }),
            ("errors", "failed requests per second", |p| p.errors_per_s),
            ("latency", "p99 latency (ms) per second", |p| p.p99_ms),
        ];
        for (id, title, f) in charts {
            let _ = writeln!(h, "<h2>{title}</h2>");
            h.push_str(&self.chart(id, f));
        }
        h.push_str("<h2>Expectations</h2><table><tr><th>expectation</th><th>actual</th><th>result</th></tr>\n");
        for e in &self.expects {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                esc(&e.text),
                e.actual,
                if e.passed { "pass" } else { "fail" },
                if e.passed { "ok" } else { "FAIL" }
            );
        }
        h.push_str("</table>\n<h2>Per target</h2><table><tr><th>target</th><th>requests</th><th>error rate</th><th>p50 ms</th><th>p99 ms</th></tr>\n");
        for t in &self.targets {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.2} %</td><td>{}</td><td>{}</td></tr>",
                esc(&t.target),
                t.total.requests,
                t.total.error_rate * 100.0,
                t.total.p50_ms,
                t.total.p99_ms
            );
        }
        h.push_str("</table>\n<h2>RTO</h2><table><tr><th>fault</th><th>target</th><th>to first write</th><th>to SLO met</th></tr>\n");
        for r in &self.rto {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.fault),
                esc(&r.target),
                opt_ms(r.write_ms),
                opt_ms(r.slo_ms)
            );
        }
        let _ = writeln!(
            h,
            "</table>\n<h2>RPO</h2><p>{} acknowledged writes checked in every region: <b>{} lost</b>, {} keys unreadable.</p>",
            self.rpo.checked_writes,
            self.rpo.lost.len(),
            self.rpo.unchecked.len()
        );
        if !self.rpo.lost.is_empty() {
            h.push_str("<table id=\"lost\"><tr><th>region</th><th>keyspace/key</th><th>value</th><th>acked by</th><th>at ms</th><th>found</th></tr>\n");
            for l in self.rpo.lost.iter().take(1000) {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&l.region),
                    esc(&l.keyspace),
                    esc(&l.key),
                    esc(&l.value),
                    esc(&l.acked_by),
                    l.acked_at_ms,
                    esc(&l.found)
                );
            }
            h.push_str("</table>\n");
        }
        let _ = writeln!(h, "<h2>Zombie writes: {}</h2><ul>", self.zombies.len());
        for z in self.zombies.iter().take(200) {
            let _ = writeln!(
                h,
                "<li>write {} {}/{}: {}</li>",
                z.id,
                esc(&z.keyspace),
                esc(&z.key),
                esc(&z.why)
            );
        }
        let _ = writeln!(
            h,
            "</ul><h2>Writes applied twice: {}</h2><ul>",
            self.duplicates.iter().map(|d| d.extra).sum::<i64>()
        );
        for d in self.duplicates.iter().take(200) {
            let _ = writeln!(
                h,
                "<li>{}: {}/{}: {}</li>",
                esc(&d.region),
                esc(&d.keyspace),
                esc(&d.key),
                esc(&d.detail)
            );
        }
        h.push_str("</ul><h2>Timeline</h2><table><tr><th>s</th><th>kind</th><th>what</th></tr>\n");
        for e in &self.events {
            let _ = writeln!(
                h,
                "<tr><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                e.at_ms as f64 / 1000.0,
                esc(&e.kind),
                esc(&e.text)
            );
        }
        h.push_str("</table>\n</body></html>\n");
        h
    }

    fn chart(&self, id: &str, f: fn(&Point) -> u64) -> String {
        const W: f64 = 900.0;
        const H: f64 = 240.0;
        const L: f64 = 50.0;
        const B: f64 = 24.0;
        const COLORS: [&str; 8] = [
            "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
        ];
        let t_max = (self.duration_ms as f64 / 1000.0).max(1.0);
        let y_max = self
            .targets
            .iter()
            .flat_map(|t| t.series.iter().map(f))
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let x = |t: f64| L + (t / t_max) * (W - L - 10.0);
        let y = |v: f64| (H - B) - (v / y_max) * (H - B - 10.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg id=\"chart-{id}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\">",
            H + 20.0 * self.targets.len().div_ceil(4) as f64,
            H + 20.0 * self.targets.len().div_ceil(4) as f64
        );
        let _ = writeln!(
            s,
            "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><line x1=\"{L}\" y1=\"10\" x2=\"{L}\" y2=\"{}\" stroke=\"#888\"/>",
            H - B,
            W - 10.0,
            H - B,
            H - B
        );
        let _ = writeln!(
            s,
            "<text x=\"4\" y=\"16\" font-size=\"11\">{}</text><text x=\"4\" y=\"{}\" font-size=\"11\">0</text>",
            y_max,
            H - B
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\">{t_max:.0} s</text>",
            W - 50.0,
            H - 6.0
        );
        for e in self
            .events
            .iter()
            .filter(|e| e.kind == "fault" || e.kind == "restore" || e.kind == "abort")
        {
            let xx = x(e.at_ms as f64 / 1000.0);
            let color = match e.kind.as_str() {
                "fault" => "#d00",
                "abort" => "#000",
                _ => "#080",
            };
            let _ = writeln!(
                s,
                "<line class=\"marker {}\" x1=\"{xx:.1}\" y1=\"10\" x2=\"{xx:.1}\" y2=\"{}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"6 3\"><title>{}</title></line>",
                esc(&e.kind),
                H - B,
                esc(&e.text)
            );
        }
        for (i, t) in self.targets.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            // The last second is cut short by the end of the load: left out, it is not a dip.
            let pts: Vec<String> = t
                .series
                .iter()
                .filter(|p| (p.t_s + 1) * 1000 <= self.duration_ms)
                .map(|p| format!("{:.1},{:.1}", x(p.t_s as f64 + 0.5), y(f(p) as f64)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline class=\"series\" data-target=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                esc(&t.target),
                pts.join(" ")
            );
            let lx = L + (i % 4) as f64 * 200.0;
            let ly = H + 14.0 + (i / 4) as f64 * 20.0;
            let _ = writeln!(
                s,
                "<rect x=\"{lx}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{ly}\" font-size=\"12\">{}</text>",
                ly - 5.0,
                lx + 16.0,
                esc(&t.target)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// HTML escaping.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}
