//! Merges every region's metrics into one exposition, federation style (a pure function, no
//! I/O): each region's samples get a `region` label, each family's `# HELP` and `# TYPE` appear
//! once, and `atoll_region_up{region}` says, for every region of the config, whether its
//! `/metrics` could be read (1) or not (0). A region that cannot be scraped is never silently
//! left out.
//!
//! The output is the Prometheus text format 0.0.4 (what Prometheus's own `/federate` serves,
//! what every Prometheus and `promtool check metrics` read), converted from the regions'
//! OpenMetrics: a counter family is named by its sample name (`atoll_http_requests_total`, so
//! PromQL names do not change), OpenMetrics-only lines (`# EOF`, `# UNIT`, `_created` samples,
//! exemplars, timestamps in seconds) are dropped, and types the old format lacks are `untyped`.
//!
//! A sample that already has a `region` label (the pair metrics, `atoll_peer_reachable{region,
//! peer_region}`) keeps it when it names the region it came from, as it does by construction;
//! one naming another region keeps its value as `exported_region`, as Prometheus does for a
//! clashing target label.

use std::collections::HashMap;

/// The `up`-style series of the global view.
pub const REGION_UP: &str = "atoll_region_up";

/// What one region's scrape gave: its exposition, or why there is none.
pub struct Scrape<'a> {
    pub region: &'a str,
    pub text: Result<&'a str, &'a str>,
}

struct Family {
    name: String,
    help: Option<String>,
    kind: &'static str,
    samples: Vec<String>,
}

#[derive(Default)]
struct Merger {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

/// A label value escaped for the text format (`\`, `"`, newline).
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn text_kind(openmetrics: &str) -> &'static str {
    match openmetrics {
        "counter" => "counter",
        "gauge" => "gauge",
        "histogram" => "histogram",
        "summary" => "summary",
        _ => "untyped",
    }
}

/// A parsed sample line: name, labels (name, escaped value), value.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: &'a str,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let bytes = inner.as_bytes();
        let mut i = 0;
        loop {
            while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'}' {
                i += 1;
                break;
            }
            let start = i;
            while i < bytes.len() && is_name_char(bytes[i] as char) {
                i += 1;
            }
            let lname = &inner[start..i];
            if lname.is_empty() || bytes.get(i) != Some(&b'=') || bytes.get(i + 1) != Some(&b'"') {
                return None;
            }
            i += 2;
            let vstart = i;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            if i >= bytes.len() {
                return None;
            }
            labels.push((lname, &inner[vstart..i]));
            i += 1;
        }
        rest = &inner[i..];
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

impl Merger {
    fn family(&mut self, name: &str, kind: &'static str) -> &mut Family {
        let idx = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    help: None,
                    kind,
                    samples: Vec::new(),
                });
                let i = self.families.len() - 1;
                self.index.insert(name.to_string(), i);
                i
            }
        };
        &mut self.families[idx]
    }

    /// Takes in one exposition (OpenMetrics or 0.0.4); with `region`, every sample gets it.
    fn add(&mut self, text: &str, region: Option<&str>) {
        // The current family: its OpenMetrics name, kind and HELP.
        let mut cur: Option<(String, &'static str, Option<String>)> = None;
        let mut helps: HashMap<String, String> = HashMap::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix('#') {
                let c = c.trim_start();
                if let Some(h) = c.strip_prefix("HELP ") {
                    let (n, t) = h.split_once(' ').unwrap_or((h, ""));
                    // 0.0.4 escapes only `\\` and `\n` in HELP; OpenMetrics also `\"`.
                    helps.insert(n.to_string(), t.replace("\\\"", "\""));
                } else if let Some(t) = c.strip_prefix("TYPE ") {
                    let (n, k) = t.split_once(' ').unwrap_or((t, "untyped"));
                    cur = Some((n.to_string(), text_kind(k.trim()), helps.get(n).cloned()));
                }
                continue;
            }
            let Some(s) = parse_sample(line) else {
                continue;
            };
            let (fname, kind, help) = match &cur {
                Some((fam, kind, help)) if s.name.starts_with(fam.as_str()) => {
                    let suffix = &s.name[fam.len()..];
                    match (*kind, suffix) {
                        ("counter", "_created") => continue,
                        ("counter", "_total") => (s.name.to_string(), "counter", help.clone()),
                        ("counter", "") => (s.name.to_string(), "counter", help.clone()),
                        ("histogram", "_bucket" | "_sum" | "_count" | "")
                        | ("summary", "_sum" | "_count" | "") => (fam.clone(), *kind, help.clone()),
                        ("gauge" | "untyped", "") => (fam.clone(), *kind, help.clone()),
                        _ => (s.name.to_string(), "untyped", None),
                    }
                }
                _ => (s.name.to_string(), "untyped", helps.get(s.name).cloned()),
            };
            let mut labels: Vec<String> = Vec::with_capacity(s.labels.len() + 1);
            if let Some(r) = region {
                labels.push(format!("region=\"{}\"", escape_label(r)));
            }
            for (n, v) in &s.labels {
                match (region, *n) {
                    (Some(r), "region") if *v == escape_label(r) => {}
                    (Some(_), "region") => labels.push(format!("exported_region=\"{v}\"")),
                    _ => labels.push(format!("{n}=\"{v}\"")),
                }
            }
            let line = if labels.is_empty() {
                format!("{} {}", s.name, s.value)
            } else {
                format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
            };
            let f = self.family(&fname, kind);
            if f.help.is_none() {
                f.help = help;
            }
            f.samples.push(line);
        }
    }

    fn render(self, out: &mut String) {
        for f in self.families {
            if f.samples.is_empty() {
                continue;
            }
            if let Some(h) = &f.help {
                out.push_str(&format!("# HELP {} {}\n", f.name, h));
            }
            out.push_str(&format!("# TYPE {} {}\n", f.name, f.kind));
            for s in f.samples {
                out.push_str(&s);
                out.push('\n');
            }
        }
    }
}

/// The merged exposition: `atoll_region_up` for every scrape, then every region's families with
/// a `region` label, then `extra` (the router's own metrics) as it is.
pub fn merge(scrapes: &[Scrape<'_>], extra: Option<&str>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# HELP {REGION_UP} 1 if the global view read the region's /metrics, 0 if it could not (why: GET /v1/global/status)\n# TYPE {REGION_UP} gauge\n"
    ));
    for s in scrapes {
        out.push_str(&format!(
            "{REGION_UP}{{region=\"{}\"}} {}\n",
            escape_label(s.region),
            u8::from(s.text.is_ok())
        ));
    }
    let mut m = Merger::default();
    for s in scrapes {
        if let Ok(t) = s.text {
            m.add(t, Some(s.region));
        }
    }
    if let Some(e) = extra {
        m.add(e, None);
    }
    m.render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP atoll_http_requests HTTP requests served.\n# TYPE atoll_http_requests counter\natoll_http_requests_total{route=\"/v1/status\",method=\"GET\",status=\"200\"} 3\natoll_http_requests_created{route=\"/v1/status\",method=\"GET\",status=\"200\"} 1700000000.0\n# HELP atoll_peer_reachable Heartbeat \\\"gauge\\\".\n# TYPE atoll_peer_reachable gauge\natoll_peer_reachable{region=\"a\",peer_region=\"b\"} 1\n# HELP atoll_lat Latency.\n# TYPE atoll_lat histogram\natoll_lat_bucket{le=\"0.1\"} 1\natoll_lat_bucket{le=\"+Inf\"} 2\natoll_lat_sum 0.5\natoll_lat_count 2 # {trace_id=\"x\"} 0.2\n# EOF\n";

    #[test]
    fn merges_with_a_region_label_and_one_help_per_family() {
        let b = A
            .replace("region=\"a\"", "region=\"b\"")
            .replace("\"b\"}", "\"a\"}");
        let out = merge(
            &[
                Scrape {
                    region: "a",
                    text: Ok(A),
                },
                Scrape {
                    region: "b",
                    text: Ok(&b),
                },
                Scrape {
                    region: "c",
                    text: Err("timed out"),
                },
            ],
            Some("# TYPE atoll_router_x gauge\natoll_router_x{region=\"a\"} 1\n# EOF\n"),
        );
        assert_eq!(
            out.matches("# TYPE atoll_http_requests_total counter")
                .count(),
            1
        );
        assert_eq!(out.matches("# HELP atoll_lat ").count(), 1);
        assert!(out.contains("atoll_region_up{region=\"c\"} 0"), "{out}");
        assert!(out.contains("atoll_region_up{region=\"a\"} 1"));
        assert!(out.contains(
            "atoll_http_requests_total{region=\"b\",route=\"/v1/status\",method=\"GET\",status=\"200\"} 3"
        ));
        assert!(out.contains("atoll_peer_reachable{region=\"a\",peer_region=\"b\"} 1"));
        assert!(out.contains("atoll_lat_count{region=\"a\"} 2\n"), "{out}");
        assert!(out.contains("# HELP atoll_peer_reachable Heartbeat \"gauge\"."));
        assert!(out.contains("atoll_router_x{region=\"a\"} 1"));
        for gone in ["# EOF", "_created", "trace_id", "# UNIT"] {
            assert!(!out.contains(gone), "{gone} in\n{out}");
        }
        // Every sample of a family is together, after its TYPE line.
        let mut seen = std::collections::HashSet::new();
        let mut last = String::new();
        for l in out.lines() {
            if let Some(t) = l.strip_prefix("# TYPE ") {
                let n = t.split(' ').next().unwrap_or_default().to_string();
                assert!(seen.insert(n.clone()), "{n} typed twice");
                last = n;
            } else if !l.starts_with('#') {
                assert!(l.starts_with(&last), "{l} outside its family {last}");
            }
        }
    }

    #[test]
    fn a_clashing_region_label_is_kept_as_exported_region() {
        let out = merge(
            &[Scrape {
                region: "a",
                text: Ok("# TYPE m gauge\nm{region=\"zz\"} 1\n"),
            }],
            None,
        );
        assert!(
            out.contains("m{region=\"a\",exported_region=\"zz\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn garbage_lines_are_skipped_not_fatal() {
        let out = merge(
            &[Scrape {
                region: "a",
                text: Ok("}{ nonsense\nm{x=\"unterminated 1\n# TYPE g gauge\ng 2\n"),
            }],
            None,
        );
        assert!(out.contains("g{region=\"a\"} 2"), "{out}");
        assert!(!out.contains("unterminated"));
    }
}
