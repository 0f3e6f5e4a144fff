//! `atoll link` benchmark: what the WAN-emulation proxy costs at zero delay, and how accurate its
//! configured delays are.
//!
//! Run by hand through `bench/link.sh`. Results and interpretation: docs/benchmarks.md, section
//! "atoll link: overhead and delay accuracy".
//!
//! Everything is in this one process, on 127.0.0.1 only, on three separate tokio runtimes so the
//! parts do not share a scheduler:
//! * the link: `atoll_link::LinkServer` (the same code `atoll link serve` and `atoll demo` run)
//!   with one link, on a multi-thread runtime with 2 workers (threads `link-rt`), plus the link's
//!   own precise-timer thread (`atoll-link-timer`);
//! * the servers: a TCP echo server and a TCP sink (reads to EOF, answers the byte count as a
//!   big-endian u64), on a 1-worker runtime (threads `srv-rt`);
//! * the client: the main thread's current-thread runtime.
//!
//! Every socket has `TCP_NODELAY` (the link sets it on both of its sockets too).
//!
//! Measurements (each bounded by a count and a timeout):
//! * **bulk**: one connection writes `--bulk-mb` MiB in 64 KiB writes to the sink, half-closes,
//!   and waits for the sink's count; MB/s = bytes / (first write .. count received). Direct and
//!   through the link, alternating, `--bulk-rounds` times each.
//! * **round trips**: one connection sends a 64-byte request to the echo server and reads the
//!   64-byte reply, `--rtts` times (after 500 unrecorded), direct and through the link, alternating
//!   for `--rtt-rounds` rounds.
//! * **delay accuracy**: the link is reshaped to a fixed one-way delay D both ways (no jitter, no
//!   bandwidth limit) with `LinkServer::set_shaping`; `--delay-rtts` round trips on a fresh
//!   connection; measured one-way = RTT / 2; error = measured - D.
//!
//! Output: progress on stderr, markdown tables on stdout.

use anyhow::{Context, Result, bail};
use atoll_link::{LinkServer, LinkSpec, Shaping};
use clap::Parser;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LINK: &str = "bench-a->bench-b";
const MSG: usize = 64;
const CHUNK: usize = 64 << 10;

#[derive(Parser, Debug)]
#[command(about = "atoll link overhead and delay accuracy (see docs/benchmarks.md)")]
struct Args {
    /// MiB per bulk transfer.
    #[arg(long, default_value_t = 256)]
    bulk_mb: u64,
    /// Bulk transfers per mode (direct, link), alternating.
    #[arg(long, default_value_t = 3)]
    bulk_rounds: usize,
    /// Recorded round trips per mode and round.
    #[arg(long, default_value_t = 10_000)]
    rtts: usize,
    /// Rounds of round trips (direct then link each round).
    #[arg(long, default_value_t = 2)]
    rtt_rounds: usize,
    /// One-way delays to check, ms.
    #[arg(long, value_delimiter = ',', default_value = "35,110")]
    delays: Vec<f64>,
    /// Round trips per delay.
    #[arg(long, default_value_t = 200)]
    delay_rtts: usize,
    /// Timeout of one bulk transfer or one round-trip series, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

// ------------------------------------------------------------------------------------------
// Servers

async fn echo_server(l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

async fn sink_server(l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 << 10];
            let mut total: u64 = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = s.write_all(&total.to_be_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

// ------------------------------------------------------------------------------------------
// CPU time of this process's threads, by name prefix (from /proc/self/task/*/stat)

fn thread_cpu_secs(prefix: &str) -> f64 {
    let mut total = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    for e in dir.flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        if !s[open + 1..close].starts_with(prefix) {
            continue;
        }
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let u: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0);
        let st: f64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
        total += (u + st) / 100.0;
    }
    total
}

fn link_cpu() -> f64 {
    thread_cpu_secs("link-rt") + thread_cpu_secs("atoll-link-tim")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ------------------------------------------------------------------------------------------
// Client measurements

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One bulk transfer: returns (seconds, bytes confirmed by the sink).
async fn bulk(addr: SocketAddr, bytes: u64) -> Result<(f64, u64)> {
    let mut s = connect(addr).await?;
    let buf = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    Ok((started.elapsed().as_secs_f64(), u64::from_be_bytes(count)))
}

/// `n` round trips after `warm` unrecorded ones; returns each recorded RTT in µs.
async fn round_trips(addr: SocketAddr, warm: usize, n: usize) -> Result<Vec<f64>> {
    let mut s = connect(addr).await?;
    let req = [0x42u8; MSG];
    let mut resp = [0u8; MSG];
    let mut out = Vec::with_capacity(n);
    for i in 0..warm + n {
        let t = Instant::now();
        s.write_all(&req).await?;
        s.read_exact(&mut resp).await?;
        if i >= warm {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

fn hist_of(v: &[f64]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for &x in v {
        h.saturating_record(x.round().max(1.0) as u64);
    }
    h
}

/// Percentile of a sample (nearest rank), for small signed samples.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn timed<T>(
    secs: u64,
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(r) => r,
        Err(_) => bail!("{what} did not finish within {secs} s"),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.bulk_mb == 0 || args.bulk_mb > 4096 || args.rtts == 0 || args.delay_rtts == 0 {
        bail!("--bulk-mb must be 1..=4096, --rtts and --delay-rtts at least 1");
    }

    // Servers on their own runtime.
    let srv_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("srv-rt")
        .enable_all()
        .build()?;
    let (echo_addr, sink_addr) = srv_rt.block_on(async {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let sink = TcpListener::bind("127.0.0.1:0").await?;
        let addrs = (echo.local_addr()?, sink.local_addr()?);
        tokio::spawn(echo_server(echo));
        tokio::spawn(sink_server(sink));
        Ok::<_, anyhow::Error>(addrs)
    })?;

    // The link on its own runtime: two links (one to each server), unshaped to begin with.
    let link_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("link-rt")
        .enable_all()
        .build()?;
    let sink_link = "bench-a->bench-sink";
    let server = link_rt.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("valid");
        LinkServer::start(
            vec![
                LinkSpec::new(LINK, any, echo_addr),
                LinkSpec::new(sink_link, any, sink_addr),
            ],
            None,
        )
        .await
    })?;
    let echo_via = server.listen_addr(LINK).context("link has no address")?;
    let sink_via = server
        .listen_addr(sink_link)
        .context("link has no address")?;
    eprintln!(
        "link.rs: echo {echo_addr} (via link {echo_via}), sink {sink_addr} (via link {sink_via})"
    );

    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t = args.timeout;

    // ---- (a) bulk throughput -----------------------------------------------------------------
    let bytes = args.bulk_mb << 20;
    let mut bulk_rows = Vec::new();
    let load_a = loadavg();
    for round in 0..args.bulk_rounds {
        for (mode, addr) in [("direct", sink_addr), ("link", sink_via)] {
            let cpu0 = link_cpu();
            let (secs, got) = client.block_on(timed(t, "bulk transfer", bulk(addr, bytes)))?;
            let cpu = link_cpu() - cpu0;
            if got != bytes {
                bail!("{mode}: the sink counted {got} bytes, {bytes} were sent");
            }
            let mbs = bytes as f64 / 1e6 / secs;
            eprintln!(
                "link.rs: bulk round {} {mode}: {mbs:.0} MB/s ({secs:.2} s)",
                round + 1
            );
            bulk_rows.push((round + 1, mode, secs, mbs, cpu, loadavg()));
        }
    }

    // ---- (a) round-trip latency --------------------------------------------------------------
    let mut direct = Vec::new();
    let mut via = Vec::new();
    let load_r = loadavg();
    for round in 0..args.rtt_rounds {
        for (mode, addr) in [("direct", echo_addr), ("link", echo_via)] {
            let v = client.block_on(timed(t, "round trips", round_trips(addr, 500, args.rtts)))?;
            let h = hist_of(&v);
            eprintln!(
                "link.rs: rtt round {} {mode}: p50 {} µs p99 {} µs",
                round + 1,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99)
            );
            if mode == "direct" {
                direct.extend(v);
            } else {
                via.extend(v);
            }
        }
    }
    let load_r_end = loadavg();

    // ---- (b) delay accuracy ------------------------------------------------------------------
    let mut delay_rows = Vec::new();
    for &d in &args.delays {
        server.set_shaping(LINK, Shaping::delay(d), Shaping::delay(d))?;
        let l0 = loadavg();
        let budget =
            (t).max(((2.0 * d * (args.delay_rtts + 20) as f64) / 1000.0 * 3.0) as u64 + 10);
        let v = client.block_on(timed(
            budget,
            "delay round trips",
            round_trips(echo_via, 5, args.delay_rtts),
        ))?;
        // error of the one-way estimate, ms
        let mut err: Vec<f64> = v.iter().map(|rtt_us| rtt_us / 2000.0 - d).collect();
        err.sort_by(|a, b| a.total_cmp(b));
        let mean = err.iter().sum::<f64>() / err.len() as f64;
        eprintln!(
            "link.rs: delay {d} ms: error p50 {:.3} ms p99 {:.3} ms",
            pct(&err, 50.0),
            pct(&err, 99.0)
        );
        delay_rows.push((d, err, mean, l0, loadavg()));
    }
    server.set_shaping(LINK, Shaping::NONE, Shaping::NONE)?;
    let direct_sorted = {
        let mut v: Vec<f64> = direct.iter().map(|x| x / 2000.0).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };

    // ---- report --------------------------------------------------------------------------------
    println!(
        "#### Bulk transfer ({} MiB per transfer, 64 KiB writes; load average at start {load_a})",
        args.bulk_mb
    );
    println!();
    println!(
        "| round | path | seconds | MB/s | link CPU s (proxy threads) | link CPU µs per MB | load avg after |"
    );
    println!("|---:|---|---:|---:|---:|---:|---|");
    for (round, mode, secs, mbs, cpu, load) in &bulk_rows {
        let per_mb = if *mode == "link" {
            format!("{:.0}", cpu / (bytes as f64 / 1e6) * 1e6)
        } else {
            "–".into()
        };
        let cpu_s = if *mode == "link" {
            format!("{cpu:.2}")
        } else {
            "–".into()
        };
        println!("| {round} | {mode} | {secs:.2} | {mbs:.0} | {cpu_s} | {per_mb} | {load} |");
    }
    let med = |mode: &str| {
        let mut v: Vec<f64> = bulk_rows
            .iter()
            .filter(|r| r.1 == mode)
            .map(|r| r.3)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (md, ml) = (med("direct"), med("link"));
    println!();
    println!("| path | median MB/s | link/direct |");
    println!("|---|---:|---:|");
    println!("| direct | {md:.0} | – |");
    println!("| link, 0 ms | {ml:.0} | {:.2} |", ml / md);
    println!();

    let (hd, hl) = (hist_of(&direct), hist_of(&via));
    println!(
        "#### Small round trips ({MSG}-byte request and reply, {} recorded per path in {} alternating rounds; load average {load_r} → {load_r_end})",
        args.rtts * args.rtt_rounds,
        args.rtt_rounds
    );
    println!();
    println!("| path | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, h) in [("direct", &hd), ("link, 0 ms", &hl)] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
    let q = |h: &Histogram<u64>, x: f64| h.value_at_quantile(x) as f64;
    println!(
        "| **link/direct** | {:.2}× | {:.2}× | {:.2}× | {:.2}× | – |",
        q(&hl, 0.5) / q(&hd, 0.5),
        q(&hl, 0.9) / q(&hd, 0.9),
        q(&hl, 0.99) / q(&hd, 0.99),
        q(&hl, 0.999) / q(&hd, 0.999)
    );
    println!(
        "| **added by the link** | +{:.0} | +{:.0} | +{:.0} | +{:.0} | – |",
        q(&hl, 0.5) - q(&hd, 0.5),
        q(&hl, 0.9) - q(&hd, 0.9),
        q(&hl, 0.99) - q(&hd, 0.99),
        q(&hl, 0.999) - q(&hd, 0.999)
    );
    println!();

    println!(
        "#### Delay accuracy ({} round trips per delay, same delay both ways, no jitter; one-way = RTT/2; error = one-way − configured)",
        args.delay_rtts
    );
    println!();
    println!(
        "| configured one-way ms | measured one-way p50 ms | error p50 ms | error p99 ms | error max ms | error min ms | mean error ms | error p50 % | load avg start → end |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (d, err, mean, l0, l1) in &delay_rows {
        println!(
            "| {d} | {:.3} | {:+.3} | {:+.3} | {:+.3} | {:+.3} | {:+.3} | {:+.2}% | {l0} → {l1} |",
            d + pct(err, 50.0),
            pct(err, 50.0),
            pct(err, 99.0),
            err.last().copied().unwrap_or(f64::NAN),
            err.first().copied().unwrap_or(f64::NAN),
            mean,
            pct(err, 50.0) / d * 100.0
        );
    }
    println!(
        "| 0 (direct, no link: the floor) | {:.3} | – | – | – | – | – | – | – |",
        pct(&direct_sorted, 50.0)
    );

    client.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
    link_rt.block_on(server.shutdown());
    drop(link_rt);
    drop(srv_rt);
    Ok(())
}
