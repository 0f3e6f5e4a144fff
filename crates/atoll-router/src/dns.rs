//! The router's authoritative DNS server (the role a managed DNS failover service such as
//! Route 53 plays): answers for the routed
//! names of `[router]` with the region that [`RouterState::decide`] puts first, over UDP and TCP,
//! with the name's short TTL (default 30 s), so clients move when a region goes unhealthy.
//!
//! Built on `hickory-server` (0.26) with atoll's own [`RequestHandler`]; the answer itself is
//! computed by plain functions ([`DnsHandler::answer_bytes`] reaches them without sockets).
//!
//! What it answers, for a zone `atoll.test.` (every answer has the AA bit):
//!
//! | query | answer |
//! | --- | --- |
//! | routed name, `A`/`AAAA`/`ANY` | the `dns_address` of the policy's first choice, TTL = the name's `ttl_secs`; a query for the other address family gets NODATA |
//! | routed name, nothing healthy | fail-open / last-known-good: as decided; fail-closed (or an empty last-known-good set): SERVFAIL |
//! | routed name, another type | NODATA (NOERROR, empty answer, SOA in the authority section) |
//! | apex `SOA` / `NS` | `SOA ns1.<zone> hostmaster.<zone>`; `NS ns1.<zone>` with its address as glue |
//! | `ns1.<zone>` `A`/`AAAA` | the server's own address (the listen address unless it is a wildcard, or [`DnsOptions::ns_address`]) |
//! | other names in the zone | NXDOMAIN with the SOA (an empty non-terminal gets NODATA) |
//! | names outside the zone, classes other than IN/ANY, zone transfers | REFUSED |
//! | not a query (NOTIFY, UPDATE) | NOTIMP; a message with other than one question: FORMERR; EDNS version above 0: BADVERS |
//!
//! **Fencing** (`docs/design/fencing.md`): a `failover` name answers the healthy region whose
//! `/healthz` role is `primary` (the write-lease holder; the higher epoch should two claim it),
//! and only when none is healthy the first healthy region in the configured order, so the name
//! follows the lease within one health-check interval. No name ever answers a `passive` region,
//! not even under fail-open. Latency and weighted names are otherwise unchanged (standbys serve
//! reads). See [`crate::policy`].
//!
//! The negative-caching TTL (the SOA's TTL and MINIMUM, RFC 2308) is the zone's `router.ttl_secs`,
//! so a name that starts to exist is not hidden for long.
//!
//! **EDNS Client Subnet** (RFC 7871): a query with an ECS option is located by the subnet's
//! address in `[[router.client_locations]]` (only prefixes no longer than the SOURCE
//! PREFIX-LENGTH are used, since the other bits are unknown); without one (or with SOURCE
//! PREFIX-LENGTH 0) by the resolver's address ([`RouterConfig::locate`]). The option is echoed
//! with the SOURCE PREFIX-LENGTH as sent and a SCOPE PREFIX-LENGTH saying for which clients the
//! answer holds: 0 when it does not depend on the client (failover and weighted names, errors,
//! the apex); for latency names the matching prefix's length, raised where needed so that no more
//! specific table entry falls inside the scope, and never above the source length. A response
//! carries an OPT record whenever the query did.
//!
//! **Metrics** ([`DnsMetrics`]): `atoll_router_dns_queries_total{name, qtype, answer}` and the
//! histogram `atoll_router_dns_query_duration_seconds`. Labels are bounded: `name` is a routed
//! name, the zone apex, `ns1.<zone>`, or `other`; `qtype` is `A`, `AAAA`, `ANY`, `SOA`, `NS` or
//! `other`; `answer` is the region answered, or `zone` (apex/NS data), `nodata`, `nxdomain`,
//! `refused`, `servfail`, `formerr`, `notimp` or `badvers`.
//!
//! Messages the DNS library cannot decode never reach the handler (it answers FORMERR itself when
//! the header is readable, and drops the rest); the handler itself never panics on any input.

use crate::state::RouterState;
use atoll_config::router::{ClientLocation, RoutePolicy, RoutedName, RouterConfig};
use atoll_core::clock::Clock;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The first label of the zone's name server (`ns1.<zone>`).
pub const NS_LABEL: &str = "ns1";
/// TTL of the apex NS record and the name server's address (they do not change while it runs).
pub const INFRA_TTL_SECS: u32 = 3600;
/// The largest UDP payload the server advertises in its OPT record (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// An idle TCP connection is closed after this long.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Binding port 0 picks a free UDP port and then binds TCP on the same port; this many tries.
const BIND_TRIES: usize = 16;

// ---------------------------------------------------------------------------------------------
// Metrics

/// Labels of `atoll_router_dns_queries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// A routed name (`api.atoll.test.`), the zone apex, `ns1.<zone>`, or `other`.
    pub name: String,
    /// `A`, `AAAA`, `ANY`, `SOA`, `NS` or `other`.
    pub qtype: String,
    /// The region answered, or `zone`, `nodata`, `nxdomain`, `refused`, `servfail`, `formerr`,
    /// `notimp`, `badvers`.
    pub answer: String,
}

/// The DNS server's metrics. Cheap to clone (the clones share the same counters).
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    pub queries: Family<QueryLabels, Counter>,
    pub duration: Histogram,
}

/// Buckets of the query duration histogram: 10 us .. ~0.33 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

/// The query counter's name without the registry's `atoll` prefix (a counter: scraped with
/// `_total`). For registering [`DnsMetrics::queries`] through another helper.
pub const QUERIES: &str = "router_dns_queries";
pub const QUERIES_HELP: &str =
    "DNS queries answered, by name, query type and answer (the region, or the negative answer)";
/// The duration histogram's name without the registry's `atoll` prefix.
pub const DURATION: &str = "router_dns_query_duration_seconds";
pub const DURATION_HELP: &str = "Time to compute and send one DNS answer";

impl DnsMetrics {
    /// Metrics that count but are not registered anywhere (tests, or a router without metrics).
    pub fn unregistered() -> DnsMetrics {
        DnsMetrics {
            queries: Family::default(),
            duration: duration_histogram(),
        }
    }

    /// Registers the metrics in a registry made with `Registry::with_prefix("atoll")` (the
    /// convention of atoll's other processes): the names are registered **without** the `atoll_`
    /// prefix (`router_dns_queries`, `router_dns_query_duration_seconds`), and the registry adds
    /// it. For a registry without a prefix use [`DnsMetrics::register_unprefixed`].
    pub fn register(registry: &mut Registry) -> DnsMetrics {
        Self::register_named(registry, "")
    }

    /// Registers the metrics with their full names (`atoll_router_dns_queries`, ...) in a
    /// registry without a prefix.
    pub fn register_unprefixed(registry: &mut Registry) -> DnsMetrics {
        Self::register_named(registry, "atoll_")
    }

    fn register_named(registry: &mut Registry, prefix: &str) -> DnsMetrics {
        let m = Self::unregistered();
        registry.register(
            format!("{prefix}{QUERIES}"),
            QUERIES_HELP,
            m.queries.clone(),
        );
        registry.register(
            format!("{prefix}{DURATION}"),
            DURATION_HELP,
            m.duration.clone(),
        );
        m
    }

    /// The series these metrics export, as scraped (for checking alert rules and dashboards).
    pub fn series_names() -> Vec<String> {
        let mut v = vec![format!("atoll_{QUERIES}_total")];
        for suffix in ["_bucket", "_sum", "_count"] {
            v.push(format!("atoll_{DURATION}{suffix}"));
        }
        v
    }

    fn record(&self, labels: &QueryLabels, took: Duration) {
        self.queries.get_or_create(labels).inc();
        self.duration.observe(took.as_secs_f64());
    }
}

// ---------------------------------------------------------------------------------------------
// The handler

/// How the DNS server runs.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// UDP and TCP listen address (port 0: a free port, the same for both).
    pub listen: SocketAddr,
    /// The address `ns1.<zone>` resolves to. `None`: the listen address, unless it is a wildcard
    /// (then `ns1.<zone>` has no address records).
    pub ns_address: Option<IpAddr>,
    /// Seed of the random numbers for weighted names (`None`: from the OS).
    pub seed: Option<u64>,
    /// An idle TCP connection is closed after this long.
    pub tcp_idle_timeout: Duration,
}

impl DnsOptions {
    pub fn new(listen: SocketAddr) -> DnsOptions {
        DnsOptions {
            listen,
            ns_address: None,
            seed: None,
            tcp_idle_timeout: TCP_IDLE_TIMEOUT,
        }
    }
}

struct Zone {
    apex: LowerName,
    ns: LowerName,
    ns_name: Name,
    ns_address: Option<IpAddr>,
    /// (routed name, its index in `config().names`).
    names: Vec<(LowerName, usize)>,
    soa: Record,
    ns_record: Record,
}

/// atoll's [`RequestHandler`]: answers queries from the router's shared state.
pub struct DnsHandler {
    state: Arc<RouterState>,
    metrics: DnsMetrics,
    clock: Arc<dyn Clock>,
    rng: Mutex<StdRng>,
    zone: Zone,
}

/// What one query is answered with (before encoding).
struct Reply {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    edns: Option<Edns>,
    labels: QueryLabels,
}

fn name_of(s: &str) -> io::Result<Name> {
    Name::from_ascii(s).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{s}` is not a DNS name: {e}"),
        )
    })
}

fn qtype_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::ANY => "ANY",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        _ => "other",
    }
}

fn address_record(name: Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    };
    Record::from_rdata(name, ttl, data)
}

fn family_matches(qtype: RecordType, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::ANY, _) | (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_))
    )
}

/// Leading bits `a` and `b` share (0 for different families).
fn common_prefix(a: IpAddr, b: IpAddr) -> u8 {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros() as u8,
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros() as u8,
        _ => 0,
    }
}

/// `ip` with the bits past `len` cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let len = u32::from(len.min(32));
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let len = u32::from(len.min(128));
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Locates an ECS subnet in the client table: the most specific prefix, no longer than `source`
/// bits, that contains the subnet; and the SCOPE PREFIX-LENGTH for which that holds (the match's
/// length, raised so that no more specific, non-matching entry shares the scope; at most
/// `source`).
pub fn locate_subnet(
    table: &[ClientLocation],
    addr: IpAddr,
    source: u8,
) -> (Option<(f64, f64)>, u8) {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let source = source.min(max);
    let addr = mask(addr, source);
    let best = table
        .iter()
        .filter(|l| l.prefix_len <= source && l.contains(addr))
        .max_by_key(|l| l.prefix_len);
    let best_len = best.map_or(0, |l| l.prefix_len);
    let mut scope = best_len;
    for l in table {
        if l.network.is_ipv4() != addr.is_ipv4() || l.prefix_len <= best_len {
            continue;
        }
        // Clients sharing `s` leading bits with `addr` may fall into `l` unless `s` reaches past
        // the bits `addr` shares with `l`'s network.
        let needed = common_prefix(addr, l.network)
            .saturating_add(1)
            .min(l.prefix_len);
        scope = scope.max(needed);
    }
    (best.map(|l| (l.lat, l.lon)), scope.min(source))
}

impl DnsHandler {
    /// A handler answering for `state`'s zone. `ns_address` is what `ns1.<zone>` resolves to.
    pub fn new(
        state: Arc<RouterState>,
        metrics: DnsMetrics,
        clock: Arc<dyn Clock>,
        ns_address: Option<IpAddr>,
        seed: Option<u64>,
    ) -> io::Result<DnsHandler> {
        let cfg = state.config();
        let apex_name = name_of(&cfg.zone)?;
        let ns_name = name_of(&format!("{NS_LABEL}.{}", cfg.zone))?;
        let hostmaster = name_of(&format!("hostmaster.{}", cfg.zone))?;
        let mut names = Vec::with_capacity(cfg.names.len());
        for (i, n) in cfg.names.iter().enumerate() {
            names.push((LowerName::new(&name_of(&n.fqdn)?), i));
        }
        let negative_ttl = cfg.ttl_secs;
        // The serial only has to be a number; the zone is not transferred.
        let serial = u32::try_from(clock.physical_ms() / 1000).unwrap_or(u32::MAX);
        let soa = Record::from_rdata(
            apex_name.clone(),
            negative_ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                hostmaster,
                serial,
                3600,
                600,
                86_400,
                negative_ttl,
            )),
        );
        let ns_record = Record::from_rdata(
            apex_name.clone(),
            INFRA_TTL_SECS,
            RData::NS(NS(ns_name.clone())),
        );
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => rand::make_rng(),
        };
        Ok(DnsHandler {
            zone: Zone {
                apex: LowerName::new(&apex_name),
                ns: LowerName::new(&ns_name),
                ns_name,
                ns_address: ns_address.filter(|a| !a.is_unspecified()),
                names,
                soa,
                ns_record,
            },
            state,
            metrics,
            clock,
            rng: Mutex::new(rng),
        })
    }

    fn config(&self) -> &RouterConfig {
        self.state.config()
    }

    fn routed(&self, qname: &LowerName) -> Option<&RoutedName> {
        self.zone
            .names
            .iter()
            .find(|(n, _)| n == qname)
            .and_then(|(_, i)| self.config().names.get(*i))
    }

    fn random(&self) -> f64 {
        let mut rng = match self.rng.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        rng.random::<f64>()
    }

    /// Answers one raw DNS message as if it came from `src` over UDP: decodes it the way the
    /// server does, answers, encodes (truncating to the UDP payload size). `None` when the server
    /// would not call the handler: a message it cannot decode (it answers FORMERR itself when the
    /// header is readable) or a response rather than a query. For tests and fuzzing without
    /// sockets.
    pub fn answer_bytes(&self, message: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
        let request = match Request::from_bytes(message.to_vec(), src, Protocol::Udp) {
            Ok(r) => r,
            Err(_) => {
                // The server answers FORMERR when it can read the header; nothing to ask us.
                return None;
            }
        };
        if request.metadata.message_type == MessageType::Response {
            return None;
        }
        let reply = self.respond(&request, src);
        let mut out = Vec::with_capacity(512);
        let max = reply.edns.as_ref().map_or(512, Edns::max_payload);
        let emitted = {
            let mut enc = BinEncoder::new(&mut out);
            enc.set_max_size(max);
            MessageResponseBuilder::new(&request.queries, reply.edns.as_ref())
                .build(
                    reply.metadata,
                    reply.answers.iter(),
                    reply.authorities.iter(),
                    std::iter::empty(),
                    reply.additionals.iter(),
                )
                .destructive_emit(&mut enc)
                .is_ok()
        };
        emitted.then_some(out)
    }

    /// Computes the reply to one decoded query from `src`.
    fn respond(&self, req: &MessageRequest, src: SocketAddr) -> Reply {
        let mut metadata = Metadata::response_from_request(&req.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        let ecs = req
            .edns
            .as_ref()
            .and_then(|e| match e.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(s)) => Some(*s),
                _ => None,
            });
        let mut reply = Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            edns: req.edns.as_ref().map(|_| {
                // hickory truncates UDP answers to the response's payload size: the smaller of
                // what the client can take and what we advertise.
                let mut e = Edns::new();
                e.set_max_payload(req.max_payload().min(EDNS_PAYLOAD));
                e
            }),
            labels: QueryLabels {
                name: "other".into(),
                qtype: "other".into(),
                answer: String::new(),
            },
        };
        // Filled in by `answer` when the answer depended on the client's subnet.
        let mut scope = 0u8;
        self.answer(req, src, ecs, &mut reply, &mut scope);
        if let (Some(edns), Some(mut subnet)) = (reply.edns.as_mut(), ecs) {
            subnet.set_scope_prefix(scope);
            edns.options_mut().insert(EdnsOption::Subnet(subnet));
        }
        reply
    }

    fn fail(reply: &mut Reply, code: ResponseCode, label: &str) {
        reply.metadata.response_code = code;
        reply.answers.clear();
        reply.additionals.clear();
        reply.labels.answer = label.into();
    }

    fn negative(&self, reply: &mut Reply, code: ResponseCode, label: &str) {
        reply.metadata.response_code = code;
        reply.authorities.push(self.zone.soa.clone());
        reply.labels.answer = label.into();
    }

    fn answer(
        &self,
        req: &MessageRequest,
        src: SocketAddr,
        ecs: Option<ClientSubnet>,
        reply: &mut Reply,
        scope: &mut u8,
    ) {
        if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Self::fail(reply, ResponseCode::BADVERS, "badvers");
        }
        if req.metadata.op_code != OpCode::Query {
            return Self::fail(reply, ResponseCode::NotImp, "notimp");
        }
        let [query] = req.queries.queries() else {
            return Self::fail(reply, ResponseCode::FormErr, "formerr");
        };
        let qname = query.name();
        let qtype = query.query_type();
        reply.labels.qtype = qtype_label(qtype).into();
        if !self.zone.apex.zone_of(qname) {
            return Self::fail(reply, ResponseCode::Refused, "refused");
        }
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY)
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return Self::fail(reply, ResponseCode::Refused, "refused");
        }
        // Owner names keep the query's spelling (0x20 case randomization).
        let owner = query.original().name().clone();
        if let Some(rn) = self.routed(qname) {
            reply.labels.name = rn.fqdn.clone();
            return self.answer_routed(rn, qtype, owner, src, ecs, reply, scope);
        }
        if *qname == self.zone.apex {
            reply.labels.name = self.config().zone.clone();
            let soa = matches!(qtype, RecordType::SOA | RecordType::ANY);
            let ns = matches!(qtype, RecordType::NS | RecordType::ANY);
            if soa {
                let mut r = self.zone.soa.clone();
                r.name = owner.clone();
                reply.answers.push(r);
            }
            if ns {
                let mut r = self.zone.ns_record.clone();
                r.name = owner;
                reply.answers.push(r);
                if let Some(ip) = self.zone.ns_address {
                    reply.additionals.push(address_record(
                        self.zone.ns_name.clone(),
                        INFRA_TTL_SECS,
                        ip,
                    ));
                }
            }
            if soa || ns {
                reply.labels.answer = "zone".into();
            } else {
                self.negative(reply, ResponseCode::NoError, "nodata");
            }
            return;
        }
        if *qname == self.zone.ns {
            reply.labels.name = self.zone.ns.to_string();
            match self.zone.ns_address {
                Some(ip) if family_matches(qtype, ip) => {
                    reply
                        .answers
                        .push(address_record(owner, INFRA_TTL_SECS, ip));
                    reply.labels.answer = "zone".into();
                }
                _ => self.negative(reply, ResponseCode::NoError, "nodata"),
            }
            return;
        }
        // An empty non-terminal (`b.<zone>` when `a.b` is routed) exists, with no data.
        let ent =
            self.zone.names.iter().any(|(n, _)| qname.zone_of(n)) || qname.zone_of(&self.zone.ns);
        if ent {
            self.negative(reply, ResponseCode::NoError, "nodata");
        } else {
            self.negative(reply, ResponseCode::NXDomain, "nxdomain");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn answer_routed(
        &self,
        rn: &RoutedName,
        qtype: RecordType,
        owner: Name,
        src: SocketAddr,
        ecs: Option<ClientSubnet>,
        reply: &mut Reply,
        scope: &mut u8,
    ) {
        if !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
            return self.negative(reply, ResponseCode::NoError, "nodata");
        }
        let client = match ecs.filter(|s| s.source_prefix() > 0) {
            Some(subnet) => {
                let (loc, s) = locate_subnet(
                    &self.config().client_locations,
                    subnet.addr(),
                    subnet.source_prefix(),
                );
                if rn.policy == RoutePolicy::Latency {
                    *scope = s;
                }
                loc
            }
            None => self.config().locate(src.ip().to_canonical()),
        };
        let now = self.clock.physical_ms();
        let choice = match self.state.decide(rn, client, self.random(), now) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(name = %rn.fqdn, error = %e, "DNS: cannot decide");
                *scope = 0;
                return Self::fail(reply, ResponseCode::ServFail, "servfail");
            }
        };
        let Some(region) = choice
            .ranked
            .first()
            .and_then(|r| self.state.region(r.as_str()))
        else {
            // Fail-closed (or nothing was ever healthy for last-known-good): say so, do not
            // send clients to a region known to be down.
            *scope = 0;
            return Self::fail(reply, ResponseCode::ServFail, "servfail");
        };
        let ip = region.dns_address;
        if family_matches(qtype, ip) {
            reply.answers.push(address_record(owner, rn.ttl_secs, ip));
            reply.labels.answer = region.name.to_string();
        } else {
            self.negative(reply, ResponseCode::NoError, "nodata");
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let reply = self.respond(request, request.src());
        let Reply {
            metadata,
            answers,
            authorities,
            additionals,
            edns,
            labels,
        } = reply;
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answers.iter(),
            authorities.iter(),
            std::iter::empty(),
            additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, src = %request.src(), "DNS: cannot send the answer");
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: m,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.metrics.record(&labels, started.elapsed());
        info
    }
}

// ---------------------------------------------------------------------------------------------
// The server

/// A running DNS server (UDP and TCP on one address). Dropping it stops the server too.
pub struct DnsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

async fn bind_pair(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..BIND_TRIES {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("DNS: cannot bind UDP {listen}: {e}")))?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Port 0 gave a UDP port whose TCP twin is taken: try another.
            Err(e) if listen.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                last = Some(e);
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("DNS: cannot bind TCP {addr}: {e}"),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("DNS: no free port")))
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` (port 0: one free port for both) and starts answering.
    /// `ns1.<zone>` resolves to the bound address unless it is a wildcard.
    pub async fn bind(
        state: Arc<RouterState>,
        listen: SocketAddr,
        metrics: DnsMetrics,
        clock: Arc<dyn Clock>,
    ) -> io::Result<DnsServer> {
        Self::bind_with(state, DnsOptions::new(listen), metrics, clock).await
    }

    /// [`DnsServer::bind`] with all the options.
    pub async fn bind_with(
        state: Arc<RouterState>,
        options: DnsOptions,
        metrics: DnsMetrics,
        clock: Arc<dyn Clock>,
    ) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(options.listen).await?;
        let addr = udp.local_addr()?;
        let ns_address = options.ns_address.or(Some(addr.ip()));
        let handler = DnsHandler::new(state, metrics, clock, ns_address, options.seed)?;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, options.tcp_idle_timeout, 32);
        let token = server.shutdown_token().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            // A send or a drop of the handle both stop the server.
            let _ = stopped.await;
            token.cancel();
        });
        let task = tokio::spawn(async move {
            server
                .block_until_done()
                .await
                .map_err(|e| io::Error::other(format!("DNS server failed: {e}")))
        });
        tracing::info!(%addr, "DNS: answering on UDP and TCP");
        Ok(DnsServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting queries and waits for the server's tasks to end.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join().await
    }

    /// Waits until the server stops by itself (a socket failed) and says why.
    pub async fn wait(mut self) -> io::Result<()> {
        self.join().await
    }

    async fn join(&mut self) -> io::Result<()> {
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| io::Error::other(format!("DNS server task: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves DNS on `listen` until `shutdown` completes (or a socket fails).
pub async fn serve(
    state: Arc<RouterState>,
    listen: SocketAddr,
    metrics: DnsMetrics,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut server = DnsServer::bind(state, listen, metrics, clock).await?;
    let Some(mut task) = server.task.take() else {
        return Ok(());
    };
    let flatten = |r: Result<io::Result<()>, tokio::task::JoinError>| {
        r.map_err(|e| io::Error::other(format!("DNS server task: {e}")))?
    };
    tokio::select! {
        () = shutdown => {
            if let Some(stop) = server.stop.take() {
                let _ = stop.send(());
            }
            flatten(task.await)
        }
        r = &mut task => flatten(r),
    }
}
