//! The authoritative DNS server, queried over loopback with hickory's DNS client (UDP and TCP).
//! Health is driven with `RouterState::observe_probe`; time with a `ManualClock`.

use atoll_config::Config;
use atoll_core::RegionId;
use atoll_core::clock::{Clock, ManualClock};
use atoll_router::dns::{DnsHandler, DnsMetrics, DnsOptions, DnsServer, locate_subnet};
use atoll_router::health::{Lease, Probe, Role};
use atoll_router::state::RouterState;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsExchange, DnsHandle, FirstAnswer};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[cluster]
name = "t"

[[regions]]
name = "us-east-1"
api = "127.0.0.1:7100"
dns_address = "127.0.0.11"
location = { lat = 38.9, lon = -77.4 }

[[regions]]
name = "eu-west-1"
api = "127.0.0.1:7101"
dns_address = "127.0.0.12"
location = { lat = 53.3, lon = -6.3 }

[[regions]]
name = "ap-southeast-1"
api = "127.0.0.1:7102"
dns_address = "127.0.0.13"
location = { lat = 1.35, lon = 103.8 }

[[keyspaces]]
name = "sessions"
policy = "lww"

[router]
zone = "atoll.test"

[router.health]
failure_threshold = 3
recovery_threshold = 2
hold_down_ms = 0
ramp_secs = 0

[[router.names]]
name = "api"
policy = "latency"

[[router.names]]
name = "primary"
policy = "failover"
regions = ["eu-west-1", "us-east-1"]
ttl_secs = 60

[[router.names]]
name = "w"
policy = "weighted"
weights = { us-east-1 = 1, eu-west-1 = 3, ap-southeast-1 = 0 }

[[router.names]]
name = "closed"
policy = "failover"
no_healthy = "fail-closed"

[[router.names]]
name = "lkg"
policy = "failover"
no_healthy = "last-known-good"

[[router.names]]
name = "deep.sub"
policy = "failover"

[[router.client_locations]]
prefix = "198.51.100.0/24"
lat = 48.85
lon = 2.35

[[router.client_locations]]
prefix = "203.0.113.0/24"
lat = 1.29
lon = 103.85

[[router.client_locations]]
prefix = "192.0.2.0/24"
lat = 38.9
lon = -77.0

[[router.client_locations]]
prefix = "192.0.2.128/25"
lat = 1.29
lon = 103.85
"#;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
const AP: &str = "ap-southeast-1";
/// A deadline for anything a test waits for.
const DEADLINE: Duration = Duration::from_secs(20);

fn rid(n: &str) -> RegionId {
    RegionId::new(n).unwrap()
}

fn dns_ip(region: &str) -> IpAddr {
    match region {
        US => "127.0.0.11".parse().unwrap(),
        EU => "127.0.0.12".parse().unwrap(),
        AP => "127.0.0.13".parse().unwrap(),
        _ => panic!("unknown region {region}"),
    }
}

struct Fixture {
    state: Arc<RouterState>,
    clock: Arc<ManualClock>,
    server: DnsServer,
    addr: SocketAddr,
    registry: Registry,
    udp: DnsExchange<TokioRuntimeProvider>,
}

fn new_state() -> (Arc<RouterState>, Arc<ManualClock>) {
    let c = Config::parse(CONFIG, "atoll.toml").unwrap();
    let state = Arc::new(RouterState::new(&c).unwrap());
    let clock = Arc::new(ManualClock::new(1_000_000));
    (state, clock)
}

impl Fixture {
    /// A server with every region healthy; measured RTTs make us-east-1 the nearest by RTT.
    async fn start() -> Fixture {
        let (state, clock) = new_state();
        let mut registry = Registry::with_prefix("atoll");
        let metrics = DnsMetrics::register(&mut registry);
        let mut opts = DnsOptions::new("127.0.0.1:0".parse().unwrap());
        opts.seed = Some(7);
        let server = DnsServer::bind_with(state.clone(), opts, metrics, clock.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        let udp = udp_client(addr);
        let f = Fixture {
            state,
            clock,
            server,
            addr,
            registry,
            udp,
        };
        for (r, rtt) in [(US, 5.0), (EU, 40.0), (AP, 120.0)] {
            f.probe(r, Probe::Ok, Some(rtt));
        }
        f
    }

    fn probe(&self, region: &str, p: Probe, rtt: Option<f64>) {
        self.clock.advance(1000);
        self.state
            .observe_probe(&rid(region), p, rtt, self.clock.physical_ms())
            .unwrap();
    }

    /// A good check whose `/healthz` reports this fencing role.
    fn role(&self, region: &str, role: Role, epoch: u64, primary: &str) {
        self.clock.advance(1000);
        let probe = if role == Role::Passive {
            Probe::Passive
        } else {
            Probe::Ok
        };
        let lease = Lease {
            role,
            epoch,
            primary: Some(primary.to_string()),
        };
        self.state
            .observe_check(
                &rid(region),
                probe,
                Some(lease),
                None,
                self.clock.physical_ms(),
            )
            .unwrap();
    }

    fn fail(&self, region: &str, times: u32) {
        for _ in 0..times {
            self.probe(region, Probe::Failed("timeout".into()), None);
        }
    }

    async fn ask(&self, name: &str, t: RecordType) -> Message {
        ask(&self.udp, name, t, None, true).await
    }

    async fn ecs(&self, name: &str, subnet: &str) -> Message {
        let s: ClientSubnet = subnet.parse().unwrap();
        ask(&self.udp, name, RecordType::A, Some(s), true).await
    }

    fn metrics_text(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }
}

fn udp_client(addr: SocketAddr) -> DnsExchange<TokioRuntimeProvider> {
    UdpClientStream::builder(addr, TokioRuntimeProvider::new())
        .with_timeout(Some(Duration::from_secs(2)))
        .exchange()
}

/// A TCP client. Keep the runtime provider alive with it: its connection task lives there.
async fn tcp_client(addr: SocketAddr) -> (DnsExchange<TokioRuntimeProvider>, TokioRuntimeProvider) {
    let rt = TokioRuntimeProvider::new();
    let ex = TcpClientStream::exchange(addr, None, Duration::from_secs(5), None, rt.clone())
        .await
        .unwrap();
    (ex, rt)
}

fn query_message(name: &str, t: RecordType, ecs: Option<ClientSubnet>, edns: bool) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.metadata.recursion_desired = false;
    if edns || ecs.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        if let Some(s) = ecs {
            e.options_mut().insert(EdnsOption::Subnet(s));
        }
        m.set_edns(e);
    }
    m
}

/// One query, retried (UDP may drop under load) until the deadline.
async fn ask(
    client: &DnsExchange<TokioRuntimeProvider>,
    name: &str,
    t: RecordType,
    ecs: Option<ClientSubnet>,
    edns: bool,
) -> Message {
    let until = Instant::now() + DEADLINE;
    loop {
        let mut opts = DnsRequestOptions::default();
        opts.use_edns = edns;
        let req = DnsRequest::new(query_message(name, t, ecs, edns), opts);
        match client.send(req).first_answer().await {
            Ok(r) => return r.into_message(),
            Err(e) if Instant::now() < until => eprintln!("retrying {name} {t}: {e}"),
            Err(e) => panic!("no answer to {name} {t} before the deadline: {e}"),
        }
    }
}

fn address(m: &Message) -> Option<IpAddr> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    })
}

fn answered_region(m: &Message) -> &'static str {
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    let ip = address(m).unwrap_or_else(|| panic!("no address in {m:?}"));
    [US, EU, AP]
        .into_iter()
        .find(|r| dns_ip(r) == ip)
        .unwrap_or_else(|| panic!("{ip} is no region's address"))
}

fn scope(m: &Message) -> Option<(u8, u8)> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some((s.source_prefix(), s.scope_prefix())),
        _ => None,
    }
}

fn soa_in_authority(m: &Message) -> Option<&Record> {
    m.authorities
        .iter()
        .find(|r| r.record_type() == RecordType::SOA)
}

fn assert_nodata(m: &Message) {
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    assert!(m.answers.is_empty(), "{m:?}");
    assert!(soa_in_authority(m).is_some(), "no SOA in {m:?}");
    assert!(m.metadata.authoritative);
}

#[tokio::test]
async fn answers_follow_health_with_the_real_thresholds() {
    let f = Fixture::start().await;
    let m = f.ask("api.atoll.test.", RecordType::A).await;
    assert!(m.metadata.authoritative, "AA bit");
    assert_eq!(
        answered_region(&m),
        US,
        "nearest by RTT without a client location"
    );
    // failure_threshold = 3: two failed checks keep it, the third moves the answer.
    f.fail(US, 2);
    assert_eq!(
        answered_region(&f.ask("api.atoll.test.", RecordType::A).await),
        US
    );
    f.fail(US, 1);
    assert_eq!(
        answered_region(&f.ask("api.atoll.test.", RecordType::A).await),
        EU
    );
    // recovery_threshold = 2.
    f.probe(US, Probe::Ok, Some(5.0));
    assert_eq!(
        answered_region(&f.ask("api.atoll.test.", RecordType::A).await),
        EU
    );
    f.probe(US, Probe::Ok, Some(5.0));
    assert_eq!(
        answered_region(&f.ask("api.atoll.test.", RecordType::A).await),
        US
    );
    // Failover order, and a draining region goes at once.
    assert_eq!(
        answered_region(&f.ask("primary.atoll.test.", RecordType::A).await),
        EU
    );
    f.probe(EU, Probe::Draining, None);
    assert_eq!(
        answered_region(&f.ask("primary.atoll.test.", RecordType::A).await),
        US
    );
    // An operator's drain moves it too.
    f.state
        .drain(US, "maintenance", None, f.clock.physical_ms())
        .unwrap();
    assert_eq!(
        answered_region(&f.ask("api.atoll.test.", RecordType::A).await),
        AP
    );
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ecs_locates_the_client_and_echoes_the_scope() {
    let f = Fixture::start().await;
    let m = f.ecs("api.atoll.test.", "198.51.100.7/24").await;
    assert_eq!(answered_region(&m), EU, "Paris goes to Dublin");
    assert_eq!(scope(&m), Some((24, 24)));
    let m = f.ecs("api.atoll.test.", "203.0.113.9/24").await;
    assert_eq!(answered_region(&m), AP, "Singapore stays in Singapore");
    assert_eq!(scope(&m), Some((24, 24)));
    // A more specific entry inside the match: the scope covers it.
    let m = f.ecs("api.atoll.test.", "192.0.2.7/32").await;
    assert_eq!(answered_region(&m), US);
    assert_eq!(scope(&m), Some((32, 25)));
    let m = f.ecs("api.atoll.test.", "192.0.2.200/32").await;
    assert_eq!(answered_region(&m), AP, "the /25 wins over the /24");
    assert_eq!(scope(&m), Some((32, 25)));
    // A source shorter than the table's prefixes says too little to use them.
    let m = f.ecs("api.atoll.test.", "198.51.0.0/16").await;
    assert_eq!(answered_region(&m), US, "RTT fallback");
    assert_eq!(scope(&m), Some((16, 16)));
    // Source prefix 0: the resolver's address (127.0.0.1, not in the table: RTT fallback).
    let m = f.ecs("api.atoll.test.", "0.0.0.0/0").await;
    assert_eq!(answered_region(&m), US);
    assert_eq!(scope(&m), Some((0, 0)));
    // A failover name does not depend on the client: scope 0.
    let m = f.ecs("primary.atoll.test.", "198.51.100.7/24").await;
    assert_eq!(answered_region(&m), EU);
    assert_eq!(scope(&m), Some((24, 0)));
    // Negative answers echo it too, with scope 0.
    let m = f.ecs("nope.atoll.test.", "203.0.113.9/24").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(scope(&m), Some((24, 0)));
    // IPv6 subnets are located too (no v6 entries: scope 0).
    let m = f.ecs("api.atoll.test.", "2001:db8::/56").await;
    assert_eq!(answered_region(&m), US);
    assert_eq!(scope(&m), Some((56, 0)));
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn opt_record_present_exactly_when_the_query_had_one() {
    let f = Fixture::start().await;
    let with = ask(&f.udp, "api.atoll.test.", RecordType::A, None, true).await;
    assert!(with.edns.is_some(), "OPT echoed");
    assert_eq!(scope(&with), None, "no ECS asked, none sent");
    let without = ask(&f.udp, "api.atoll.test.", RecordType::A, None, false).await;
    assert!(without.edns.is_none(), "no OPT when the query had none");
    assert_eq!(answered_region(&without), US);
    let refused = ask(&f.udp, "example.com.", RecordType::A, None, true).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(refused.edns.is_some(), "OPT on errors too");
}

#[tokio::test]
async fn ttl_is_the_configured_value() {
    let f = Fixture::start().await;
    let m = f.ask("api.atoll.test.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 30, "the default TTL");
    let m = f.ask("primary.atoll.test.", RecordType::A).await;
    assert_eq!(m.answers[0].ttl, 60, "the name's ttl_secs");
}

#[tokio::test]
async fn nothing_healthy_follows_each_names_policy() {
    let f = Fixture::start().await;
    // Take them down one by one: eu-west-1 is the last one healthy.
    f.fail(US, 3);
    f.fail(AP, 3);
    assert_eq!(
        answered_region(&f.ask("lkg.atoll.test.", RecordType::A).await),
        EU
    );
    f.fail(EU, 3);
    // Fail-open (the default): still answers, by the policy's order (nearest by RTT).
    assert_eq!(
        answered_region(&f.ask("api.atoll.test.", RecordType::A).await),
        US
    );
    assert_eq!(
        answered_region(&f.ask("primary.atoll.test.", RecordType::A).await),
        EU
    );
    // Fail-closed: SERVFAIL rather than an address known to be down.
    let m = f.ask("closed.atoll.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.answers.is_empty());
    // Last known good: the region healthy most recently, not the first in failover order.
    assert_eq!(
        answered_region(&f.ask("lkg.atoll.test.", RecordType::A).await),
        EU
    );
    // Recovery brings the normal answers back.
    f.probe(US, Probe::Ok, Some(5.0));
    f.probe(US, Probe::Ok, Some(5.0));
    assert_eq!(
        answered_region(&f.ask("closed.atoll.test.", RecordType::A).await),
        US
    );
    assert_eq!(
        answered_region(&f.ask("lkg.atoll.test.", RecordType::A).await),
        US
    );
    let text = f.metrics_text();
    assert!(
        text.contains(
            "atoll_router_dns_queries_total{name=\"closed.atoll.test.\",qtype=\"A\",answer=\"servfail\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn last_known_good_with_nothing_ever_healthy_is_servfail() {
    let (state, clock) = new_state();
    let server = DnsServer::bind(
        state,
        "127.0.0.1:0".parse().unwrap(),
        DnsMetrics::unregistered(),
        clock,
    )
    .await
    .unwrap();
    let udp = udp_client(server.local_addr());
    // Nothing checked yet: regions are not routed before their first good check.
    let m = ask(&udp, "lkg.atoll.test.", RecordType::A, None, true).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = ask(&udp, "closed.atoll.test.", RecordType::A, None, true).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    // Fail-open answers even so.
    let m = ask(&udp, "primary.atoll.test.", RecordType::A, None, true).await;
    assert_eq!(answered_region(&m), EU);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn weighted_names_split_by_weight() {
    let f = Fixture::start().await;
    let mut counts = [0u32; 3];
    for _ in 0..400 {
        let m = f.ask("w.atoll.test.", RecordType::A).await;
        let i = [US, EU, AP]
            .iter()
            .position(|r| *r == answered_region(&m))
            .unwrap();
        counts[i] += 1;
    }
    // Weights 1 : 3 : 0.
    assert_eq!(
        counts[2], 0,
        "weight 0 serves only when nothing else is healthy"
    );
    assert!((40..=160).contains(&counts[0]), "{counts:?}");
    assert!((240..=360).contains(&counts[1]), "{counts:?}");
    // Weight 0 is the backup.
    f.fail(US, 3);
    f.fail(EU, 3);
    assert_eq!(
        answered_region(&f.ask("w.atoll.test.", RecordType::A).await),
        AP
    );
}

#[tokio::test]
async fn negative_answers_and_the_zone_apex() {
    let f = Fixture::start().await;
    // Unknown name in the zone: NXDOMAIN with the SOA and its negative-caching TTL.
    let m = f.ask("nope.atoll.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    let soa = soa_in_authority(&m).expect("SOA in authority");
    assert_eq!(soa.ttl, 30);
    match &soa.data {
        RData::SOA(s) => {
            assert_eq!(s.minimum, 30, "negative-caching TTL");
            assert_eq!(s.mname, Name::from_ascii("ns1.atoll.test.").unwrap());
        }
        other => panic!("{other:?}"),
    }
    // Below a routed name: NXDOMAIN too.
    let m = f.ask("x.api.atoll.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // An empty non-terminal exists: NODATA.
    assert_nodata(&f.ask("sub.atoll.test.", RecordType::A).await);
    assert_eq!(
        answered_region(&f.ask("deep.sub.atoll.test.", RecordType::A).await),
        US
    );
    // Outside the zone: REFUSED.
    let m = f.ask("example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = f.ask("atoll.test.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // AAAA for an IPv4-only region: NODATA. Other types of a routed name: NODATA.
    assert_nodata(&f.ask("api.atoll.test.", RecordType::AAAA).await);
    assert_nodata(&f.ask("api.atoll.test.", RecordType::MX).await);
    assert_nodata(&f.ask("api.atoll.test.", RecordType::TXT).await);
    // ANY gets the address.
    assert_eq!(
        answered_region(&f.ask("api.atoll.test.", RecordType::ANY).await),
        US
    );
    // SOA and NS at the apex.
    let m = f.ask("atoll.test.", RecordType::SOA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(matches!(m.answers.as_slice(), [r] if r.record_type() == RecordType::SOA));
    let m = f.ask("atoll.test.", RecordType::NS).await;
    match m.answers.as_slice() {
        [r] => match &r.data {
            RData::NS(ns) => assert_eq!(ns.0, Name::from_ascii("ns1.atoll.test.").unwrap()),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let glue = m
        .additionals
        .iter()
        .find_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .expect("glue");
    assert_eq!(glue, f.addr.ip(), "ns1 is this server");
    let m = f.ask("ns1.atoll.test.", RecordType::A).await;
    assert_eq!(address(&m), Some(f.addr.ip()));
    assert_nodata(&f.ask("ns1.atoll.test.", RecordType::AAAA).await);
    assert_nodata(&f.ask("atoll.test.", RecordType::A).await);
    // Other classes: REFUSED.
    let mut m = query_message("api.atoll.test.", RecordType::A, None, true);
    m.queries[0].set_query_class(DNSClass::CH);
    let r = f
        .udp
        .send(DnsRequest::new(m, DnsRequestOptions::default()))
        .first_answer()
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn names_are_case_insensitive_and_keep_the_querys_spelling() {
    let f = Fixture::start().await;
    let m = f.ask("ApI.AtOll.TEST.", RecordType::A).await;
    assert_eq!(answered_region(&m), US);
    assert_eq!(m.answers[0].name.to_string(), "ApI.AtOll.TEST.");
    let m = f.ask("ATOLL.test.", RecordType::SOA).await;
    assert_eq!(m.answers.len(), 1);
}

#[tokio::test]
async fn tcp_answers_the_same() {
    let f = Fixture::start().await;
    let (tcp, _rt) = tcp_client(f.addr).await;
    let m = ask(&tcp, "api.atoll.test.", RecordType::A, None, true).await;
    assert_eq!(answered_region(&m), US);
    let s: ClientSubnet = "203.0.113.9/24".parse().unwrap();
    let m = ask(&tcp, "api.atoll.test.", RecordType::A, Some(s), true).await;
    assert_eq!(answered_region(&m), AP);
    assert_eq!(scope(&m), Some((24, 24)));
    let m = ask(&tcp, "nope.atoll.test.", RecordType::A, None, true).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    f.fail(US, 3);
    let m = ask(&tcp, "api.atoll.test.", RecordType::A, None, true).await;
    assert_eq!(answered_region(&m), EU);
}

#[tokio::test]
async fn metrics_count_queries_by_name_type_and_answer() {
    let f = Fixture::start().await;
    for _ in 0..3 {
        f.ask("api.atoll.test.", RecordType::A).await;
    }
    f.ask("api.atoll.test.", RecordType::AAAA).await;
    f.ask("nope.atoll.test.", RecordType::A).await;
    f.ask("example.com.", RecordType::A).await;
    f.ask("atoll.test.", RecordType::SOA).await;
    let text = f.metrics_text();
    for line in [
        "atoll_router_dns_queries_total{name=\"api.atoll.test.\",qtype=\"A\",answer=\"us-east-1\"} 3",
        "atoll_router_dns_queries_total{name=\"api.atoll.test.\",qtype=\"AAAA\",answer=\"nodata\"} 1",
        "atoll_router_dns_queries_total{name=\"other\",qtype=\"A\",answer=\"nxdomain\"} 1",
        "atoll_router_dns_queries_total{name=\"other\",qtype=\"A\",answer=\"refused\"} 1",
        "atoll_router_dns_queries_total{name=\"atoll.test.\",qtype=\"SOA\",answer=\"zone\"} 1",
        "atoll_router_dns_query_duration_seconds_count 7",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    for series in DnsMetrics::series_names() {
        assert!(
            text.lines().any(|l| l.starts_with(&series)),
            "exported series `{series}` not in:\n{text}"
        );
    }
    // The unprefixed registration gives the same names.
    let mut bare = Registry::default();
    let m = DnsMetrics::register_unprefixed(&mut bare);
    m.queries
        .get_or_create(&atoll_router::dns::QueryLabels {
            name: "a".into(),
            qtype: "A".into(),
            answer: "x".into(),
        })
        .inc();
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, &bare).unwrap();
    assert!(s.contains("atoll_router_dns_queries_total{"), "{s}");
    assert!(
        s.contains("atoll_router_dns_query_duration_seconds_bucket"),
        "{s}"
    );
}

#[tokio::test]
async fn serve_runs_until_shutdown() {
    let (state, clock) = new_state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // Find a port free for both UDP and TCP first (serve binds both and does not report what it
    // bound; a port free for UDP only made serve fail to bind now and then).
    let port = atoll_testkit::free_udp_tcp_port().expect("a loopback port free for UDP and TCP");
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let task = tokio::spawn(atoll_router::dns::serve(
        state.clone(),
        addr,
        DnsMetrics::unregistered(),
        clock.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    state
        .observe_probe(&rid(EU), Probe::Ok, Some(1.0), clock.physical_ms())
        .unwrap();
    let udp = udp_client(addr);
    let m = ask(&udp, "primary.atoll.test.", RecordType::A, None, true).await;
    assert_eq!(answered_region(&m), EU);
    tx.send(()).unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Malformed input

fn valid_queries() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (name, t, ecs) in [
        ("api.atoll.test.", RecordType::A, Some("198.51.100.7/24")),
        ("w.atoll.test.", RecordType::A, None),
        ("atoll.test.", RecordType::NS, None),
        ("nope.atoll.test.", RecordType::AAAA, Some("2001:db8::/48")),
        ("example.com.", RecordType::A, None),
    ] {
        let ecs = ecs.map(|s| s.parse::<ClientSubnet>().unwrap());
        let mut m = query_message(name, t, ecs, true);
        m.metadata.id = 4242;
        out.push(m.to_vec().unwrap());
    }
    out
}

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..6) {
        match rng.random_range(0..6) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            2 => v.truncate(rng.random_range(0..=v.len())),
            3 => {
                let i = rng.random_range(0..=v.len());
                v.insert(i, rng.random());
            }
            4 if v.len() >= 12 => {
                // Header counts: the usual way to lie about a message.
                let i = rng.random_range(4..12);
                v[i] = rng.random();
            }
            _ => {
                let extra: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                v.extend(extra);
            }
        }
    }
    v
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.random_range(0..600);
    (0..len).map(|_| rng.random()).collect()
}

/// Asserts the server still answers a valid query over UDP.
async fn still_answers(f: &Fixture) {
    let m = f.ask("api.atoll.test.", RecordType::A).await;
    assert_eq!(answered_region(&m), US);
}

#[tokio::test]
async fn survives_random_and_mutated_packets() {
    let f = Fixture::start().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = StdRng::seed_from_u64(0xD15);
    let valid = valid_queries();
    for i in 0..4000 {
        let pkt = if i % 2 == 0 {
            random_bytes(&mut rng)
        } else {
            let base = &valid[rng.random_range(0..valid.len())];
            mutate(&mut rng, base)
        };
        sock.send_to(&pkt, f.addr).await.unwrap();
        if i % 250 == 249 {
            still_answers(&f).await;
        }
    }
    // Every response that did come back is a well-formed DNS message.
    let mut buf = vec![0u8; 4096];
    let mut replies = 0;
    while let Ok((n, _)) = sock.try_recv_from(&mut buf) {
        Message::from_vec(&buf[..n]).expect("a well-formed response");
        replies += 1;
    }
    assert!(replies > 0, "mutated valid queries get answers");

    // TCP: garbage behind a length prefix, lying length prefixes, mutated queries, half messages.
    use tokio::io::AsyncWriteExt;
    for i in 0..40 {
        let mut conn = tokio::net::TcpStream::connect(f.addr).await.unwrap();
        let body = if i % 2 == 0 {
            random_bytes(&mut rng)
        } else {
            let base = &valid[rng.random_range(0..valid.len())];
            mutate(&mut rng, base)
        };
        let len = if i % 5 == 0 {
            rng.random::<u16>()
        } else {
            body.len() as u16
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend(&body);
        let _ = conn.write_all(&framed).await;
        let _ = conn.shutdown().await;
    }
    let (tcp, _rt) = tcp_client(f.addr).await;
    let m = ask(&tcp, "api.atoll.test.", RecordType::A, None, true).await;
    assert_eq!(answered_region(&m), US);
    still_answers(&f).await;
}

fn handler() -> DnsHandler {
    let (state, clock) = new_state();
    for r in [US, EU, AP] {
        state
            .observe_probe(&rid(r), Probe::Ok, Some(10.0), clock.physical_ms())
            .unwrap();
    }
    DnsHandler::new(
        state,
        DnsMetrics::unregistered(),
        clock,
        Some("127.0.0.1".parse().unwrap()),
        Some(1),
    )
    .unwrap()
}

fn src() -> SocketAddr {
    "127.0.0.1:5300".parse().unwrap()
}

#[test]
fn handler_answers_without_sockets() {
    let h = handler();
    let q = query_message("api.atoll.test.", RecordType::A, None, true)
        .to_vec()
        .unwrap();
    let r = Message::from_vec(&h.answer_bytes(&q, src()).unwrap()).unwrap();
    assert_eq!(r.answers.len(), 1);
    // Two questions: FORMERR.
    let mut m = query_message("api.atoll.test.", RecordType::A, None, true);
    m.add_query(Query::query(
        Name::from_ascii("w.atoll.test.").unwrap(),
        RecordType::A,
    ));
    let r = Message::from_vec(&h.answer_bytes(&m.to_vec().unwrap(), src()).unwrap()).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // EDNS version 1: BADVERS, with an OPT record to carry it.
    let mut m = query_message("api.atoll.test.", RecordType::A, None, true);
    m.edns.as_mut().unwrap().set_version(1);
    let r = Message::from_vec(&h.answer_bytes(&m.to_vec().unwrap(), src()).unwrap()).unwrap();
    assert_eq!(u16::from(r.metadata.response_code), 16, "BADVERS");
    assert!(r.edns.is_some());
    // Not a query: NOTIMP.
    let mut m = query_message("api.atoll.test.", RecordType::A, None, true);
    m.metadata.op_code = hickory_proto::op::OpCode::Notify;
    let r = Message::from_vec(&h.answer_bytes(&m.to_vec().unwrap(), src()).unwrap()).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    // A response is not answered (no reflection).
    let mut m = query_message("api.atoll.test.", RecordType::A, None, true);
    m.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert!(h.answer_bytes(&m.to_vec().unwrap(), src()).is_none());
}

#[test]
fn handler_survives_a_seeded_flood_of_bad_input() {
    let h = handler();
    let mut rng = StdRng::seed_from_u64(99);
    let valid = valid_queries();
    let mut answered = 0;
    for i in 0..30_000 {
        let pkt = if i % 2 == 0 {
            random_bytes(&mut rng)
        } else {
            mutate(&mut rng, &valid[i % valid.len()])
        };
        if let Some(out) = h.answer_bytes(&pkt, src()) {
            Message::from_vec(&out).expect("a well-formed response");
            answered += 1;
        }
    }
    assert!(answered > 1000, "{answered}");
}

#[test]
fn scope_of_a_subnet() {
    let c = Config::parse(CONFIG, "atoll.toml").unwrap();
    let table = &c.router.as_ref().unwrap().client_locations;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(locate_subnet(table, ip("198.51.100.7"), 24).1, 24);
    assert!(locate_subnet(table, ip("198.51.100.7"), 24).0.is_some());
    assert_eq!(locate_subnet(table, ip("198.51.100.7"), 32).1, 24);
    // Unknown subnet: the answer holds only as far as no entry could match.
    let (loc, scope) = locate_subnet(table, ip("10.1.2.3"), 32);
    assert!(loc.is_none());
    assert_eq!(
        scope, 1,
        "10/8 and every entry (192+) differ in the first bit"
    );
    assert_eq!(locate_subnet(table, ip("10.1.2.3"), 0), (None, 0));
    // Odd input never panics.
    for len in [0u8, 1, 31, 32, 33, 128, 200, 255] {
        let _ = locate_subnet(table, ip("255.255.255.255"), len);
        let _ = locate_subnet(table, ip("ffff::1"), len);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

    #[test]
    fn handler_never_panics_on_random_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let h = handler();
        if let Some(out) = h.answer_bytes(&bytes, src()) {
            proptest::prop_assert!(Message::from_vec(&out).is_ok());
        }
    }

    #[test]
    fn handler_never_panics_on_near_valid_queries(
        which in 0usize..5,
        edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 1..8),
        cut in 0usize..200,
    ) {
        let h = handler();
        let mut v = valid_queries()[which].clone();
        for (i, b) in edits {
            if !v.is_empty() {
                let n = v.len();
                v[i % n] = b;
            }
        }
        if cut < v.len() {
            v.truncate(v.len() - cut);
        }
        if let Some(out) = h.answer_bytes(&v, src()) {
            proptest::prop_assert!(Message::from_vec(&out).is_ok());
        }
    }
}

#[tokio::test]
async fn a_failover_name_follows_the_lease_and_passive_regions_are_never_answered() {
    let f = Fixture::start().await;
    let answer = |name: &'static str| {
        let f = &f;
        async move { answered_region(&f.ask(name, RecordType::A).await) }
    };
    // No roles reported (active-active): the configured order, eu-west-1 first.
    assert_eq!(answer("primary.atoll.test.").await, EU);
    // us-east-1 holds the lease: the failover name answers it; the latency name is unchanged.
    f.role(US, Role::Primary, 2, US);
    f.role(EU, Role::Standby, 2, US);
    assert_eq!(answer("primary.atoll.test.").await, US);
    assert_eq!(answer("closed.atoll.test.").await, US);
    assert_eq!(answer("api.atoll.test.").await, US, "nearest by RTT");
    // The lease moves to eu-west-1 (epoch 3) before us-east-1's next check: two claims, the
    // higher epoch wins at once.
    f.role(EU, Role::Primary, 3, EU);
    assert_eq!(answer("primary.atoll.test.").await, EU);
    let st = f.state.status(f.clock.physical_ms()).unwrap();
    assert_eq!(st.primary_claims.len(), 2);
    assert_eq!(st.primary.as_ref().map(|p| p.region.as_str()), Some(EU));
    f.role(US, Role::Standby, 3, EU);
    assert_eq!(answer("primary.atoll.test.").await, EU);
    // The primary unhealthy: the configured order among the others.
    f.fail(EU, 3);
    assert_eq!(answer("primary.atoll.test.").await, US);
    // A passive region is never answered: not for a client next to it, not under fail-open.
    f.role(AP, Role::Passive, 3, EU);
    let near_ap = f.ecs("api.atoll.test.", "203.0.113.0/24").await;
    assert_ne!(answered_region(&near_ap), AP);
    f.fail(US, 3);
    assert_eq!(
        answer("deep.sub.atoll.test.").await,
        US,
        "fail-open: every region but the passive one"
    );
    f.server.shutdown().await.unwrap();
}
