//! The proxy on loopback: delay accuracy, bandwidth, every fault kind, pair and region faults,
//! leases, backpressure, and byte order under jitter. Every wait is bounded; only 127.0.0.1 is
//! used.

mod common;

use atoll_link::{Direction, FaultKind, FaultTarget, PartitionMode, ProxyOptions, Shaping};
use common::*;
use proptest::prelude::*;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const LINK: &str = "us-east-1->eu-west-1";
const LONG: Duration = Duration::from_secs(60);

/// A stalling partition holds bytes both ways on an open connection, and makes a new connection
/// wait unconnected; removing it releases everything, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_partition_holds_then_releases() {
    let (up, mut accepted) = pair_upstream().await;
    let server = start_one(spec(LINK, up, Shaping::NONE)).await;
    let mut client = connect(&server, LINK).await;
    let mut upstream = accept(&mut accepted).await;
    client.write_all(b"before").await.unwrap();
    assert_eq!(read_n(&mut upstream, 6, LONG).await.unwrap(), b"before");

    let id = server
        .add_fault(
            LINK,
            FaultKind::Partition {
                mode: PartitionMode::Stall,
            },
            LONG,
        )
        .unwrap();
    client.write_all(b"held-forward").await.unwrap();
    upstream.write_all(b"held-reverse").await.unwrap();
    assert_quiet(
        &mut upstream,
        Duration::from_millis(300),
        "forward under stall",
    )
    .await;
    assert_quiet(
        &mut client,
        Duration::from_millis(100),
        "reverse under stall",
    )
    .await;

    // A new connection is accepted but not forwarded while the stall lasts.
    let mut late = connect(&server, LINK).await;
    late.write_all(b"late").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), accepted.recv())
            .await
            .is_err(),
        "the upstream saw a connection through a stalled link"
    );
    let st = server.link_status(LINK).unwrap();
    assert_eq!(st.counters.forward_queued_bytes, 12);
    assert!(st.effective.stall_new && st.effective.forward.blocked);

    server.remove_fault(LINK, id).unwrap();
    assert_eq!(
        read_n(&mut upstream, 12, LONG).await.unwrap(),
        b"held-forward"
    );
    assert_eq!(
        read_n(&mut client, 12, LONG).await.unwrap(),
        b"held-reverse"
    );
    let mut late_up = accept(&mut accepted).await;
    assert_eq!(read_n(&mut late_up, 4, LONG).await.unwrap(), b"late");
    server.shutdown().await;
}

/// A refusing partition resets new connections at once and holds open ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_partition_rejects_new_connections() {
    let echo = echo_server().await;
    let server = start_one(spec(LINK, echo, Shaping::NONE)).await;
    let mut open = connect(&server, LINK).await;
    round_trips(&mut open, 1, 8).await;
    let id = server
        .add_fault(
            LINK,
            FaultKind::Partition {
                mode: PartitionMode::Refuse,
            },
            LONG,
        )
        .unwrap();
    for _ in 0..3 {
        assert_rejected(&server, LINK).await;
    }
    open.write_all(b"held").await.unwrap();
    assert_quiet(
        &mut open,
        Duration::from_millis(300),
        "open connection under refuse",
    )
    .await;
    assert!(
        server
            .link_status(LINK)
            .unwrap()
            .counters
            .connections_refused
            >= 3
    );
    server.remove_fault(LINK, id).unwrap();
    assert_eq!(read_n(&mut open, 4, LONG).await.unwrap(), b"held");
    let mut fresh = connect(&server, LINK).await;
    round_trips(&mut fresh, 1, 8).await;
    server.shutdown().await;
}

/// A one-way fault holds only its direction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneway_holds_one_direction_only() {
    let (up, mut accepted) = pair_upstream().await;
    let server = start_one(spec(LINK, up, Shaping::NONE)).await;
    let mut client = connect(&server, LINK).await;
    let mut upstream = accept(&mut accepted).await;

    let fwd = server
        .add_fault(
            LINK,
            FaultKind::OneWay {
                direction: Direction::Forward,
            },
            LONG,
        )
        .unwrap();
    client.write_all(b"to-upstream").await.unwrap();
    upstream.write_all(b"to-client").await.unwrap();
    assert_eq!(
        read_n(&mut client, 9, Duration::from_secs(2))
            .await
            .unwrap(),
        b"to-client",
        "reverse must flow under a forward one-way fault"
    );
    assert_quiet(&mut upstream, Duration::from_millis(300), "forward held").await;
    server.remove_fault(LINK, fwd).unwrap();
    assert_eq!(
        read_n(&mut upstream, 11, LONG).await.unwrap(),
        b"to-upstream"
    );

    let rev = server
        .add_fault(
            LINK,
            FaultKind::OneWay {
                direction: Direction::Reverse,
            },
            LONG,
        )
        .unwrap();
    upstream.write_all(b"reply").await.unwrap();
    client.write_all(b"request").await.unwrap();
    assert_eq!(
        read_n(&mut upstream, 7, Duration::from_secs(2))
            .await
            .unwrap(),
        b"request"
    );
    assert_quiet(&mut client, Duration::from_millis(300), "reverse held").await;
    server.remove_fault(LINK, rev).unwrap();
    assert_eq!(read_n(&mut client, 5, LONG).await.unwrap(), b"reply");
    server.shutdown().await;
}

/// A reset fault closes existing connections with RST (both sides see it); new connections work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_closes_existing_connections() {
    let (up, mut accepted) = pair_upstream().await;
    let server = start_one(spec(LINK, up, Shaping::NONE)).await;
    let mut client = connect(&server, LINK).await;
    let mut upstream = accept(&mut accepted).await;
    client.write_all(b"x").await.unwrap();
    assert_eq!(read_n(&mut upstream, 1, LONG).await.unwrap(), b"x");

    server
        .add_fault(LINK, FaultKind::Reset, Duration::from_secs(10))
        .unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf))
        .await
        .expect("the client connection was not closed");
    assert_eq!(
        r.expect_err("expected a reset, got a clean read").kind(),
        io::ErrorKind::ConnectionReset
    );
    let r = tokio::time::timeout(Duration::from_secs(2), upstream.read(&mut buf))
        .await
        .expect("the upstream connection was not closed");
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        server.link_status(LINK).unwrap().counters.connections_reset,
        1
    );

    // Once, at application: a connection opened after the reset is not reset.
    let mut again = connect(&server, LINK).await;
    let mut up2 = accept(&mut accepted).await;
    again.write_all(b"ok").await.unwrap();
    assert_eq!(
        read_n(&mut up2, 2, Duration::from_secs(2)).await.unwrap(),
        b"ok"
    );
    server.shutdown().await;
}

/// A fault with a 300 ms lease ends by itself and the held bytes flow, with no call to remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expires_and_traffic_flows_again() {
    let echo = echo_server().await;
    let server = start_one(spec(LINK, echo, Shaping::NONE)).await;
    let mut s = connect(&server, LINK).await;
    round_trips(&mut s, 1, 4).await;
    let start = Instant::now();
    server
        .add_fault(
            LINK,
            FaultKind::Partition {
                mode: PartitionMode::Stall,
            },
            Duration::from_millis(300),
        )
        .unwrap();
    s.write_all(b"ping").await.unwrap();
    // The deadline, not a sleep, is the check: the echo must come back within 3 s.
    let back = read_n(&mut s, 4, Duration::from_secs(3)).await.unwrap();
    let healed = start.elapsed();
    eprintln!("300 ms lease: bytes released after {healed:?}");
    assert_eq!(back, b"ping");
    assert!(
        healed >= Duration::from_millis(295),
        "released early: {healed:?}"
    );
    let st = server.link_status(LINK).unwrap();
    assert!(st.faults.is_empty(), "{:?}", st.faults);
    assert!(!st.effective.forward.blocked);
    server.shutdown().await;
}

/// A held direction never holds more than the cap: past it the proxy stops reading and TCP
/// pushes back on the writer; after the fault every byte arrives intact and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bytes_are_bounded_by_backpressure() {
    let (up, mut accepted) = pair_upstream().await;
    let cap = 256 * 1024;
    let opts = ProxyOptions {
        hold_cap_bytes: cap,
        ..ProxyOptions::default()
    };
    let server = start_with(spec(LINK, up, Shaping::NONE), opts).await;
    let client = connect(&server, LINK).await;
    let mut upstream = accept(&mut accepted).await;
    let id = server
        .add_fault(
            LINK,
            FaultKind::OneWay {
                direction: Direction::Forward,
            },
            LONG,
        )
        .unwrap();
    let total = 16 * 1024 * 1024;
    let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
    let expected = data.clone();
    let (_r, mut w) = client.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w
    });
    // Let the socket buffers and the proxy's queue fill up.
    // Reads reserve a whole chunk (16 KiB) of room first, so a full queue is within one chunk
    // of the cap.
    let queued_at_cap = wait_until(Duration::from_secs(5), "the queue to fill", || async {
        server
            .link_status(LINK)
            .unwrap()
            .counters
            .forward_queued_bytes as usize
            >= cap - 16 * 1024
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = server
        .link_status(LINK)
        .unwrap()
        .counters
        .forward_queued_bytes as usize;
    eprintln!("queue full after {queued_at_cap:?}: {queued} bytes held (cap {cap})");
    assert!(queued <= cap + 16 * 1024, "held {queued} bytes, cap {cap}");
    assert!(
        !writer.is_finished(),
        "16 MiB went into a held link without backpressure"
    );
    server.remove_fault(LINK, id).unwrap();
    let got = read_n(&mut upstream, total, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(got == expected, "bytes changed or reordered");
    let _w = writer.await.unwrap();
    assert_eq!(
        server
            .link_status(LINK)
            .unwrap()
            .counters
            .forward_queued_bytes,
        0
    );
    server.shutdown().await;
}

/// Closing one side is delivered as a half-close after the data (and its delay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_delivered_after_the_data() {
    let (up, mut accepted) = pair_upstream().await;
    let server = start_one(spec(LINK, up, Shaping::delay(10.0))).await;
    let mut client = connect(&server, LINK).await;
    let mut upstream = accept(&mut accepted).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), upstream.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, b"last words");
    // The other direction still works after the half-close.
    upstream.write_all(b"bye").await.unwrap();
    upstream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"bye");
    wait_until(
        Duration::from_secs(2),
        "the connection to close",
        || async { server.link_status(LINK).unwrap().counters.connections_open == 0 },
    )
    .await;
    server.shutdown().await;
}

/// An upstream that is down: the client's connection is reset, counted as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_resets_the_client() {
    let gone = {
        let l = tokio::net::TcpListener::bind(LOCAL).await.unwrap();
        l.local_addr().unwrap()
    };
    let server = start_one(spec(LINK, gone, Shaping::NONE)).await;
    assert_rejected(&server, LINK).await;
    wait_until(
        Duration::from_secs(2),
        "the refusal to be counted",
        || async {
            server
                .link_status(LINK)
                .unwrap()
                .counters
                .connections_refused
                == 1
        },
    )
    .await;
    server.shutdown().await;
}

/// Shutdown closes listeners: connecting afterwards fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_listening() {
    let echo = echo_server().await;
    let server = start_one(spec(LINK, echo, Shaping::NONE)).await;
    let addr = server.listen_addr(LINK).unwrap();
    let mut s = connect(&server, LINK).await;
    round_trips(&mut s, 1, 4).await;
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown hung");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Pair and region faults, end to end: three regions, a link each way between every two, each link
// to an upstream of its own whose connections the test holds.

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";

/// One connection through a link, both ends held by the test.
struct Through {
    name: String,
    client: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
}

impl Through {
    /// Bytes flow both ways: `ping` reaches the upstream and `pong` the client within 2 s.
    async fn flows(&mut self) {
        let limit = Duration::from_secs(2);
        self.client.write_all(b"ping").await.unwrap();
        let got = read_n(&mut self.upstream, 4, limit).await;
        assert_eq!(
            got.ok().as_deref(),
            Some(&b"ping"[..]),
            "{} forward",
            self.name
        );
        self.upstream.write_all(b"pong").await.unwrap();
        let got = read_n(&mut self.client, 4, limit).await;
        assert_eq!(
            got.ok().as_deref(),
            Some(&b"pong"[..]),
            "{} reverse",
            self.name
        );
    }

    /// Bytes flow neither way: what each end sends does not arrive.
    async fn cut(&mut self) {
        self.client.write_all(b"held-fwd").await.unwrap();
        self.upstream.write_all(b"held-rev").await.unwrap();
        let quiet = Duration::from_millis(150);
        let what = format!("{} forward under the fault", self.name);
        assert_quiet(&mut self.upstream, quiet, &what).await;
        let what = format!("{} reverse under the fault", self.name);
        assert_quiet(&mut self.client, quiet, &what).await;
    }

    /// What [`cut`](Self::cut) held arrives both ways, within `limit`.
    async fn released(&mut self, limit: Duration) {
        let got = read_n(&mut self.upstream, 8, limit).await;
        assert_eq!(
            got.ok().as_deref(),
            Some(&b"held-fwd"[..]),
            "{} forward",
            self.name
        );
        let got = read_n(&mut self.client, 8, limit).await;
        assert_eq!(
            got.ok().as_deref(),
            Some(&b"held-rev"[..]),
            "{} reverse",
            self.name
        );
    }
}

/// A server with a link each way between every two of US, EU and AP (each to its own upstream),
/// one open connection through every link, and the upstreams' accept queues.
async fn three_regions() -> (
    atoll_link::LinkServer,
    Vec<Through>,
    std::collections::BTreeMap<String, tokio::sync::mpsc::Receiver<tokio::net::TcpStream>>,
) {
    let mut specs = Vec::new();
    let mut queues = std::collections::BTreeMap::new();
    for a in [US, EU, AP] {
        for b in [US, EU, AP].into_iter().filter(|b| *b != a) {
            let name = format!("{a}->{b}");
            let (up, rx) = pair_upstream().await;
            specs.push(spec(&name, up, Shaping::NONE));
            queues.insert(name, rx);
        }
    }
    let server = atoll_link::LinkServer::start(specs, None).await.unwrap();
    let mut conns = Vec::new();
    for (name, rx) in queues.iter_mut() {
        let client = connect(&server, name).await;
        let upstream = accept(rx).await;
        conns.push(Through {
            name: name.clone(),
            client,
            upstream,
        });
    }
    for c in &mut conns {
        c.flows().await;
    }
    (server, conns, queues)
}

fn touches(name: &str, region: &str) -> bool {
    let (from, to) = name.split_once("->").unwrap();
    from == region || to == region
}

/// A pair partition cuts both directed links between the two regions (bytes flow neither way on
/// either, new connections wait) and no other link; removing it by its one id heals both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_partition_cuts_both_directions_and_nothing_else() {
    let (server, mut conns, mut queues) = three_regions().await;
    let id = server
        .add_fault_on(
            FaultTarget::pair("us-east-1<->eu-west-1").unwrap(),
            FaultKind::Partition {
                mode: PartitionMode::Stall,
            },
            LONG,
        )
        .unwrap();
    let in_pair = |n: &str| touches(n, US) && touches(n, EU);
    assert_eq!(conns.iter().filter(|c| in_pair(&c.name)).count(), 2);
    for c in &mut conns {
        if in_pair(&c.name) {
            c.cut().await;
        } else {
            c.flows().await;
        }
    }
    // Neither region can open a new connection to the other: they wait, unforwarded.
    let mut late = Vec::new();
    for name in [format!("{US}->{EU}"), format!("{EU}->{US}")] {
        let mut s = connect(&server, &name).await;
        s.write_all(b"late").await.unwrap();
        let rx = queues.get_mut(&name).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(150), rx.recv())
                .await
                .is_err(),
            "{name}: a new connection went through the partition"
        );
        late.push((name, s));
    }
    assert_eq!(server.faults().len(), 1, "one fault");

    server.remove(id).unwrap();
    for c in conns.iter_mut().filter(|c| in_pair(&c.name)) {
        c.released(Duration::from_secs(5)).await;
        c.flows().await;
    }
    for (name, _s) in &late {
        let mut up = accept(queues.get_mut(name).unwrap()).await;
        assert_eq!(read_n(&mut up, 4, LONG).await.unwrap(), b"late", "{name}");
    }
    server.shutdown().await;
}

/// Isolating a region cuts every link to and from it, both ways, and no other link; when its one
/// lease ends, every one of its links heals by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_cuts_every_link_of_the_region_and_nothing_else() {
    let (server, mut conns, _queues) = three_regions().await;
    let lease = Duration::from_secs(4);
    let start = Instant::now();
    server
        .add_fault_on(
            FaultTarget::region(AP).unwrap(),
            FaultKind::Isolate {
                mode: PartitionMode::Refuse,
            },
            lease,
        )
        .unwrap();
    assert_eq!(conns.iter().filter(|c| touches(&c.name, AP)).count(), 4);
    for c in &mut conns {
        if touches(&c.name, AP) {
            c.cut().await;
            // Refusing: a new connection through any of its links is reset at once.
            assert_rejected(&server, &c.name).await;
        } else {
            c.flows().await;
        }
    }
    assert!(
        start.elapsed() < lease,
        "the checks outlasted the lease ({:?}); lengthen it",
        start.elapsed()
    );
    // The lease ends for all four links: the held bytes arrive on each, none before the lease.
    for c in conns.iter_mut().filter(|c| touches(&c.name, AP)) {
        c.released(Duration::from_secs(10)).await;
        assert!(
            start.elapsed() >= lease - Duration::from_millis(5),
            "{} released early: {:?}",
            c.name,
            start.elapsed()
        );
    }
    assert!(server.faults().is_empty());
    for c in &mut conns {
        c.flows().await;
    }
    server.shutdown().await;
}

proptest! {
    // Integration tests have no lib.rs for proptest to store regressions beside; a failure
    // prints the minimal failing input instead.
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    /// Bytes and their order survive a link with jitter as large as its latency, whatever the
    /// chunking and pacing of the writer.
    #[test]
    fn bytes_and_order_survive_jitter(
        chunks in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..2048), 0u64..3),
            1..24,
        ),
        latency in 0.5f64..4.0,
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let result: Result<(), String> = rt.block_on(async move {
            let echo = echo_server().await;
            let shaping = Shaping { latency_ms: latency, jitter_ms: latency, bandwidth_bytes_per_sec: None };
            let opts = ProxyOptions { seed: Some(seed), read_chunk: 512, ..ProxyOptions::default() };
            let server = start_with(spec(LINK, echo, shaping), opts).await;
            let s = connect(&server, LINK).await;
            let (mut r, mut w) = s.into_split();
            let expected: Vec<u8> = chunks.iter().flat_map(|(c, _)| c.iter().copied()).collect();
            let total = expected.len();
            let writer = tokio::spawn(async move {
                for (c, pause_ms) in chunks {
                    w.write_all(&c).await.unwrap();
                    if pause_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    }
                }
                w
            });
            let mut back = vec![0u8; total];
            let read = tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut back)).await;
            let _w = writer.await.unwrap();
            server.shutdown().await;
            match read {
                Ok(Ok(_)) if back == expected => Ok(()),
                Ok(Ok(_)) => Err("bytes changed or reordered".to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            }
        });
        prop_assert_eq!(result, Ok(()));
    }
}
