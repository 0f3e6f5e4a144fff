//! The reports: the HTML page is self-contained (no external asset, no script), escapes what it
//! shows, and, opened in headless Chromium, shows its charts (a screenshot whose pixels hold the
//! series' colours and the fault markers). Chromium: Debian's `chromium`, which
//! `scripts/test-all.sh` installs when missing (or `ATOLL_CHROMIUM=/path/to/chrome`).

use atoll_drill::check::RpoFindings;
use atoll_drill::outcome::Outcomes;
use atoll_drill::report::{Event, ExpectResult, Report, TargetSummary};
use atoll_drill::stats::{Point, Rto, WindowStats};
use std::io::Read as _;
use std::process::Command;
use std::time::{Duration, Instant};

fn series(base: u64, dip_from: u64, dip_to: u64) -> Vec<Point> {
    (0..40)
        .map(|t| {
            let down = (dip_from..dip_to).contains(&t);
            Point {
                t_s: t,
                ok_per_s: if down { 0 } else { base + t % 5 },
                errors_per_s: if down { base } else { 0 },
                p50_ms: 5,
                p99_ms: if down { 1500 } else { 40 + t },
            }
        })
        .collect()
}

fn report() -> Report {
    let target = |name: &str, s: Vec<Point>| TargetSummary {
        target: name.into(),
        total: WindowStats {
            requests: 800,
            errors: 10,
            error_rate: 0.0125,
            p50_ms: 5,
            p99_ms: 80,
        },
        series: s,
    };
    Report {
        version: 1,
        scenario: "region-outage".into(),
        file: "drills/region-outage.toml".into(),
        description: "kill <b>busiest</b> & restart".into(),
        model: "active-active".into(),
        run_id: "d1".into(),
        started_unix_ms: 1_700_000_000_000,
        duration_ms: 40_000,
        passed: true,
        guard_tripped: None,
        interrupted: false,
        problems: vec![],
        events: vec![
            Event {
                at_ms: 10_000,
                kind: "fault".into(),
                text: "kill -9 us-east-1".into(),
                line: 40,
            },
            Event {
                at_ms: 25_000,
                kind: "restore".into(),
                text: "us-east-1 restarted".into(),
                line: 48,
            },
        ],
        targets: vec![
            target("us-east-1", series(20, 10, 25)),
            target("eu-west-1", series(40, 99, 99)),
            target("router", series(60, 99, 99)),
        ],
        rto: vec![Rto {
            target: "us-east-1".into(),
            fault: "kill us-east-1".into(),
            fault_ms: 10_000,
            write_ms: Some(15_200),
            slo_ms: Some(16_000),
        }],
        acked_writes: 3000,
        acked_by: [
            ("us-east-1".to_string(), 1000u64),
            ("eu-west-1".to_string(), 2000),
        ]
        .into_iter()
        .collect(),
        unknown_writes: 2,
        failed_by_code: Default::default(),
        refused_writes: 300,
        reads: 900,
        rpo: RpoFindings {
            lost: vec![],
            unchecked: vec![],
            checked_writes: 3000,
        },
        zombies: vec![],
        duplicates: vec![],
        expects: vec![ExpectResult {
            text: "lost_writes == 0".into(),
            line: 0,
            actual: 0.0,
            passed: true,
        }],
        survivors_error_rate: 0.0,
        survivors_p99_ms: 80,
        control: "test".into(),
    }
}

#[test]
fn the_html_is_self_contained_and_escaped() {
    let html = report().to_html();
    for id in ["chart-throughput", "chart-errors", "chart-latency"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} missing");
    }
    assert_eq!(
        html.matches("class=\"series\"").count(),
        9,
        "three series in each of three charts"
    );
    assert!(html.contains("class=\"marker fault\""));
    assert!(html.contains("kill &lt;b&gt;busiest&lt;/b&gt; &amp; restart"));
    for external in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the page refers to something outside it: {external}"
        );
    }
    // The JSON round-trips and carries its version.
    let r = report();
    let back: Report = serde_json::from_str(&r.to_json()).expect("json");
    assert_eq!(back, r);
    assert!(r.to_json().contains("\"version\": 1"));
}

#[test]
fn the_outcome_store_keeps_when_each_scenario_last_passed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = report();
    Outcomes::record(dir.path(), &r).expect("record");
    r.passed = false;
    r.started_unix_ms += 60_000;
    let o = Outcomes::record(dir.path(), &r).expect("record");
    let s = &o.scenarios["region-outage"];
    assert!(!s.last_passed);
    assert_eq!(s.last_pass_unix_ms, Some(1_700_000_000_000));
    assert_eq!(Outcomes::load(dir.path()).expect("load"), o);
    // The same outcomes for a Prometheus textfile collector: the pass is still the last one.
    let prom = std::fs::read_to_string(dir.path().join("drill-outcomes.prom")).expect("metrics");
    assert!(
        prom.contains(
            "atoll_drill_last_success_timestamp_seconds{scenario=\"region-outage\"} 1700000000.000\n"
        ),
        "{prom}"
    );
    assert!(
        prom.contains("atoll_drill_last_run_passed{scenario=\"region-outage\"} 0\n"),
        "{prom}"
    );
    // A newer format is refused, not misread.
    let text = std::fs::read_to_string(dir.path().join("drill-outcomes.json")).expect("file");
    std::fs::write(
        dir.path().join("drill-outcomes.json"),
        text.replace("\"version\": 1", "\"version\": 2"),
    )
    .expect("write");
    assert!(Outcomes::load(dir.path()).is_err());
}

/// A decoded 8-bit RGB or RGBA PNG: (width, height, channels, pixels).
fn decode_png(bytes: &[u8]) -> (usize, usize, usize, Vec<u8>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut pos, mut w, mut h, mut ch) = (8, 0, 0, 0);
    let mut idat = Vec::new();
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => {
                w = u32::from_be_bytes(data[0..4].try_into().expect("4")) as usize;
                h = u32::from_be_bytes(data[4..8].try_into().expect("4")) as usize;
                assert_eq!(data[8], 8, "bit depth");
                assert_eq!(data[12], 0, "interlaced PNGs are not decoded here");
                ch = match data[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("colour type {t}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .expect("zlib");
    let stride = w * ch;
    let mut out = vec![0u8; h * stride];
    for y in 0..h {
        let f = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= ch {
                out[y * stride + x - ch] as i32
            } else {
                0
            };
            let b = if y > 0 {
                out[(y - 1) * stride + x] as i32
            } else {
                0
            };
            let c = if x >= ch && y > 0 {
                out[(y - 1) * stride + x - ch] as i32
            } else {
                0
            };
            let pred = match f {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            out[y * stride + x] = (line[x] as i32 + pred) as u8;
        }
    }
    (w, h, ch, out)
}

fn count_near(px: &(usize, usize, usize, Vec<u8>), rgb: [u8; 3]) -> usize {
    let (_, _, ch, data) = px;
    data.chunks(*ch)
        .filter(|p| (0..3).all(|i| (p[i] as i32 - rgb[i] as i32).abs() <= 24))
        .count()
}

#[test]
fn the_html_report_opens_in_headless_chromium_and_shows_its_charts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let html = dir.path().join("report.html");
    std::fs::write(&html, report().to_html()).expect("write");
    let shot = dir.path().join("shot.png");
    let profile = dir.path().join("profile");
    let mut cmd = Command::new(atoll_testkit::chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1000,1100",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--screenshot={}", shot.display()))
    .arg(format!("file://{}", html.display()));
    let out = run_bounded(cmd, Duration::from_secs(90));
    assert!(shot.is_file(), "no screenshot; chromium said:\n{out}");
    let png = decode_png(&std::fs::read(&shot).expect("read"));
    assert_eq!((png.0, png.1), (1000, 1100), "screenshot size");
    // Each series' colour and the fault marker are on screen: the charts were drawn.
    for (name, rgb, min) in [
        ("us-east-1 series", [0x1f, 0x77, 0xb4], 600),
        ("eu-west-1 series", [0xd6, 0x27, 0x28], 600),
        ("router series", [0x2c, 0xa0, 0x2c], 600),
        ("fault marker", [0xdd, 0x00, 0x00], 20),
    ] {
        let n = count_near(&png, rgb);
        assert!(
            n >= min,
            "{name}: only {n} pixels of {rgb:?} in the screenshot"
        );
    }
}

fn run_bounded(mut cmd: Command, limit: Duration) -> String {
    let log = tempfile::NamedTempFile::new().expect("log");
    let f = log.reopen().expect("reopen");
    let f2 = f.try_clone().expect("clone");
    let mut child = cmd.stdout(f).stderr(f2).spawn().expect("chromium starts");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(log.path()).unwrap_or_default()
}
