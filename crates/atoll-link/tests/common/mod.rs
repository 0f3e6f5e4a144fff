//! Helpers of the integration tests: upstream servers on 127.0.0.1 and bounded waits.
#![allow(dead_code)]

use atoll_link::{LinkServer, LinkSpec, ProxyOptions, Shaping};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

pub const LOCAL: &str = "127.0.0.1:0";

/// An echo server on 127.0.0.1: every connection gets back what it sends. Stops with the runtime.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An upstream that hands each accepted socket to the test, so the test holds both ends.
pub async fn pair_upstream() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            if tx.send(sock).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// A link named `name` from an ephemeral port to `upstream`, shaped the same both ways.
pub fn spec(name: &str, upstream: SocketAddr, shaping: Shaping) -> LinkSpec {
    LinkSpec::new(name, LOCAL.parse().unwrap(), upstream).with_shaping(shaping, shaping)
}

/// Starts a server with one link and a control API on an ephemeral port.
pub async fn start_one(spec: LinkSpec) -> LinkServer {
    LinkServer::start(vec![spec], Some(LOCAL.parse().unwrap()))
        .await
        .unwrap()
}

pub async fn start_with(spec: LinkSpec, opts: ProxyOptions) -> LinkServer {
    LinkServer::start_with(vec![spec], Some(LOCAL.parse().unwrap()), opts)
        .await
        .unwrap()
}

/// Connects through link `name` of `server`.
pub async fn connect(server: &LinkServer, name: &str) -> TcpStream {
    try_connect(server, name).await.unwrap()
}

/// Connects through link `name` of `server`; the connect itself may fail when the link resets
/// the connection at once (a refusing partition, an unreachable upstream).
pub async fn try_connect(server: &LinkServer, name: &str) -> io::Result<TcpStream> {
    let s = timeout(
        Duration::from_secs(5),
        TcpStream::connect(server.listen_addr(name).unwrap()),
    )
    .await
    .expect("connect timed out")?;
    // Fails if the link already reset the connection: fine.
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Asserts the link closed this connection attempt at once: the connect failed, or the first
/// read sees a reset or EOF within 2 s.
pub async fn assert_rejected(server: &LinkServer, name: &str) {
    let mut s = match try_connect(server, name).await {
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                ),
                "{e}"
            );
            return;
        }
        Ok(s) => s,
    };
    let mut buf = [0u8; 8];
    let r = timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("a rejected connection was left open");
    match r {
        Ok(0) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("read {n} bytes through a link that should reject"),
    }
}

pub async fn accept(rx: &mut mpsc::Receiver<TcpStream>) -> TcpStream {
    timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the upstream saw no connection within 5 s")
        .unwrap()
}

/// Reads exactly `n` bytes within `limit`; `Err(TimedOut)` if they did not all come.
pub async fn read_n(s: &mut TcpStream, n: usize, limit: Duration) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    match timeout(limit, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Ok(buf),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Asserts nothing arrives on `s` for `quiet`.
pub async fn assert_quiet(s: &mut TcpStream, quiet: Duration, what: &str) {
    let mut buf = [0u8; 64];
    match timeout(quiet, s.read(&mut buf)).await {
        Err(_) => {}
        Ok(r) => panic!("{what}: expected nothing for {quiet:?}, got {r:?}"),
    }
}

/// Polls `check` until it is true ([`atoll_testkit::wait_until_async`]), panicking after
/// `limit`; returns the time it took.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    atoll_testkit::wait_until_async(limit, what, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    start.elapsed()
}

/// The value at quantile `q` (0..=1) of `samples` (sorted in place).
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i]
}

/// Round trips of `msg_len` bytes through the link; returns each RTT in ms.
pub async fn round_trips(s: &mut TcpStream, n: usize, msg_len: usize) -> Vec<f64> {
    let msg = vec![0x5au8; msg_len];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        let back = read_n(s, msg_len, Duration::from_secs(5)).await.unwrap();
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(back, msg);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Servers of the control API tests (`control.rs`) and of the `atoll link` command-line tests
// (`crates/atoll-cli/tests/link.rs`, which include this module).

pub const LINK: &str = "us-east-1->eu-west-1";
pub const TOKEN: &str = "link-token-0123456789";
pub const US: &str = "us-east-1";
pub const EU: &str = "eu-west-1";
pub const AP: &str = "ap-southeast-1";

/// `us-east-1->eu-west-1` and back, 5 ms each way, to an echo server, with a control API.
pub async fn server() -> LinkServer {
    let echo = echo_server().await;
    let specs = vec![
        spec(LINK, echo, Shaping::delay(5.0)),
        spec("eu-west-1->us-east-1", echo, Shaping::delay(5.0)),
    ];
    LinkServer::start(specs, Some(LOCAL.parse().unwrap()))
        .await
        .unwrap()
}

/// [`LINK`] to an echo server, with a control API that needs `token`.
pub async fn server_with_token(token: &str) -> LinkServer {
    let echo = echo_server().await;
    let opts = atoll_link::proxy::ProxyOptions {
        control_token: Some(token.to_string()),
        ..Default::default()
    };
    LinkServer::start_with(
        vec![spec(LINK, echo, Shaping::delay(5.0))],
        Some(LOCAL.parse().unwrap()),
        opts,
    )
    .await
    .unwrap()
}

/// A link each way between every two of `regions`, plus `extra` one-way links, all to an echo
/// server.
pub async fn mesh_server(regions: &[&str], extra: &[(&str, &str)]) -> LinkServer {
    let echo = echo_server().await;
    let mut specs = Vec::new();
    for a in regions {
        for b in regions.iter().filter(|b| *b != a) {
            specs.push(spec(&format!("{a}->{b}"), echo, Shaping::delay(1.0)));
        }
    }
    for (a, b) in extra {
        specs.push(spec(&format!("{a}->{b}"), echo, Shaping::delay(1.0)));
    }
    LinkServer::start(specs, Some(LOCAL.parse().unwrap()))
        .await
        .unwrap()
}

/// The links whose effect is blocked both ways, sorted.
pub fn cut_links(s: &LinkServer) -> Vec<String> {
    let mut v: Vec<String> = s
        .status()
        .into_iter()
        .filter(|l| l.effective.forward.blocked && l.effective.reverse.blocked)
        .map(|l| l.name)
        .collect();
    v.sort();
    v
}

/// `v`, sorted.
pub fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// A link name as a path segment of the control API (`->` becomes `-%3E`; link names hold
/// nothing else that needs encoding).
pub fn encode_link(name: &str) -> String {
    name.replace('>', "%3E")
}
