//! Answering DNS queries from the router's shared state: the zone (SOA, NS, the name server's
//! address), routed names answered by policy, EDNS Client Subnet, negative answers, and
//! [`DnsHandler`], the `RequestHandler` that hickory's server calls. No sockets here
//! ([`DnsHandler::answer_bytes`] answers a query's bytes); the rules are in [`super`].

use crate::metrics::dns::{DnsMetrics, QueryLabels};
use crate::state::RouterState;
use atoll_config::router::{ClientLocation, RoutePolicy, RoutedName, RouterConfig};
use atoll_core::clock::Clock;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The first label of the zone's name server (`ns1.<zone>`).
pub const NS_LABEL: &str = "ns1";
/// TTL of the apex NS record and the name server's address (they do not change while it runs).
pub const INFRA_TTL_SECS: u32 = 3600;
/// The largest UDP payload the server advertises in its OPT record (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

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
