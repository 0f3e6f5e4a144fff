//! The peer listener over real sockets on 127.0.0.1: with mutual TLS, a heartbeat or a
//! subscription is taken only from a client holding a certificate of the cluster CA, and only
//! for the region that certificate names; everything else is refused, counted by reason, and
//! changes nothing. Without TLS (`insecure = true`) anyone is taken, and the status says so.

// Certificates are valid from the real time of day: these tests read the wall clock.
#![allow(clippy::disallowed_methods)]

use atoll_config::{Config, KeyspaceConfig};
use atoll_core::RegionId;
use atoll_core::causal::VersionVector;
use atoll_core::clock::{Clock, ManualClock};
use atoll_core::codec;
use atoll_core::hlc::Timestamp;
use atoll_core::op::Policy;
use atoll_core::repl::{Heartbeat, ReplConfig, Subscribe};
use atoll_server::metrics::Metrics;
use atoll_server::peer::{PeerClient, PeerListener};
use atoll_server::replication::{HEARTBEAT_PATH, Replicator, Settings, router};
use atoll_server::streams::{SUBSCRIBE_PATH, Subscribers, track};
use atoll_store::backend::MemBackend;
use atoll_store::{Store, StoreOptions};
use atoll_tls::RegionTls;
use atoll_tls::certs::{ClusterCa, ClusterCerts, issue_region, write_cluster};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;
use tower::ServiceExt;

const T0: u64 = 1_700_000_000_000;
const CLUSTER: &str = "test";
const DEADLINE: Duration = Duration::from_secs(10);

fn region(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

fn regions() -> Vec<RegionId> {
    ["us-east-1", "eu-west-1", "ap-southeast-1"]
        .iter()
        .map(|n| region(n))
        .collect()
}

fn load(dir: &Path, r: &str) -> RegionTls {
    RegionTls::load(
        &region(r),
        &dir.join("ca.pem"),
        &dir.join(format!("{r}.pem")),
        &dir.join(format!("{r}.key")),
        SystemTime::now(),
    )
    .expect("region TLS")
}

fn write_certs(dir: &Path) {
    write_cluster(
        dir,
        &ClusterCerts {
            cluster: CLUSTER.into(),
            regions: regions(),
            days: 30,
            ca_days: 30,
        },
        SystemTime::now(),
        false,
    )
    .expect("certs");
}

/// us-east-1's replication routes behind a peer listener on 127.0.0.1:0 (no replication task
/// runs: only what arrives changes its state).
struct Server {
    rep: Arc<Replicator>,
    metrics: Arc<Metrics>,
    /// Who a certificate may name (a config reload adds to it).
    identities: atoll_server::peer::Identities,
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(tls: Option<&RegionTls>) -> Server {
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open(
            Arc::new(MemBackend::default()),
            StoreOptions::new(
                region("us-east-1"),
                vec![KeyspaceConfig::new("sessions", Policy::Lww)],
            ),
            clock.clone(),
        )
        .expect("store");
        let metrics = Arc::new(Metrics::new());
        let mut peer_addrs = BTreeMap::new();
        for r in ["eu-west-1", "ap-southeast-1"] {
            peer_addrs.insert(region(r), "127.0.0.1:9".parse().expect("addr"));
        }
        let clock: Arc<dyn Clock> = clock;
        let rep = Replicator::new(
            Arc::new(store),
            clock,
            metrics.clone(),
            Settings {
                cluster: CLUSTER.into(),
                peer_addrs,
                core: ReplConfig::new(1000, 500),
                max_lag_secs: 30,
                tls: tls.cloned(),
                oplog_retention_ms: atoll_config::DEFAULT_OPLOG_RETENTION_MS,
            },
            Arc::new(Notify::new()),
        )
        .expect("replicator");
        let identities = std::sync::Arc::new(std::sync::RwLock::new(regions()));
        let listener = PeerListener::bind("127.0.0.1:0".parse().unwrap(), tls, identities.clone())
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let app = track(
            router(rep.clone()),
            atoll_server::streams::Edge {
                subscribers: Subscribers::new(),
                max_streams: Arc::new(std::sync::atomic::AtomicUsize::new(16)),
                metrics: metrics.clone(),
            },
        );
        let task = tokio::spawn(listener.serve(app, metrics.clone(), stopped));
        Server {
            rep,
            metrics,
            identities,
            addr,
            stop,
            task: Some(task),
        }
    }

    /// Whether us-east-1 has heard `peer` (a heartbeat was taken).
    fn heard(&self, peer: &str) -> bool {
        let (peers, _) = self.rep.status().expect("status");
        peers
            .iter()
            .find(|p| p.region == region(peer))
            .expect("peer")
            .reachable
    }

    fn failures(&self, reason: &str) -> u64 {
        let text = self.metrics.encode();
        let series = format!("atoll_peer_auth_failures_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `reason` has been counted at least `n` times (handshake failures are counted
    /// by the listener's task, after the client already saw its connection fail); returns the
    /// count.
    async fn wait_failures(&self, reason: &str, n: u64) -> u64 {
        let until = Instant::now() + DEADLINE;
        while self.failures(reason) < n {
            assert!(
                Instant::now() < until,
                "{reason} counted {} times, not {n}:\n{}",
                self.failures(reason),
                self.metrics.encode()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.failures(reason)
    }

    async fn stop(mut self) {
        self.rep.stop_streams();
        self.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("the peer listener stops")
                .expect("no panic");
        }
    }
}

fn heartbeat(from: &str) -> Vec<u8> {
    codec::encode(&Heartbeat {
        from: region(from),
        sent_ms: T0,
        hlc: Timestamp::new(T0, 0),
        echo: None,
        frontier: BTreeMap::new(),
        stable_age_ms: None,
        removed: Default::default(),
    })
    .expect("encode")
}

fn subscribe(from: &str) -> Vec<u8> {
    codec::encode(&Subscribe {
        from: region(from),
        cluster: CLUSTER.into(),
        origins: vec![region("us-east-1")],
        applied: VersionVector::default(),
    })
    .expect("encode")
}

/// A client of us-east-1 speaking as `tls`'s region (or plain).
fn client(addr: SocketAddr, tls: Option<&RegionTls>) -> PeerClient {
    let addrs = BTreeMap::from([(region("us-east-1"), addr)]);
    PeerClient::new(
        &addrs,
        tls,
        Duration::from_secs(5),
        Some(Duration::from_secs(5)),
        false,
    )
}

/// Status and error code of a refused request.
async fn refused(c: &PeerClient, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    let resp = c
        .post(&region("us-east-1"), path, body)
        .await
        .expect("an answer");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    (
        status,
        v["error"]["code"].as_str().unwrap_or(&text).to_string(),
    )
}

#[tokio::test]
async fn the_right_peer_is_taken_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let server = Server::start(Some(&load(dir.path(), "us-east-1"))).await;
    let eu = client(server.addr, Some(&load(dir.path(), "eu-west-1")));

    assert!(!server.heard("eu-west-1"));
    let resp = eu
        .post(&region("us-east-1"), HEARTBEAT_PATH, heartbeat("eu-west-1"))
        .await
        .expect("heartbeat");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(server.heard("eu-west-1"));
    // Over HTTP/2 too, as a region's heartbeat client sends them.
    let h2 = PeerClient::new(
        &BTreeMap::from([(region("us-east-1"), server.addr)]),
        Some(&load(dir.path(), "eu-west-1")),
        Duration::from_secs(5),
        Some(Duration::from_secs(5)),
        true,
    );
    for _ in 0..3 {
        let resp = h2
            .post(&region("us-east-1"), HEARTBEAT_PATH, heartbeat("eu-west-1"))
            .await
            .expect("heartbeat over HTTP/2");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }

    // A subscription streams frames (a heartbeat first, on an idle log).
    let mut stream = eu
        .post(&region("us-east-1"), SUBSCRIBE_PATH, subscribe("eu-west-1"))
        .await
        .expect("subscription");
    assert_eq!(stream.status(), StatusCode::OK);
    let chunk = tokio::time::timeout(DEADLINE, stream.chunk())
        .await
        .expect("a frame in time")
        .expect("no error")
        .expect("not the end");
    assert!(!chunk.is_empty());
    drop(stream);
    for reason in atoll_server::peer::AuthFailure::ALL {
        assert_eq!(server.failures(reason.as_str()), 0, "{}", reason.as_str());
    }
    server.stop().await;
}

#[tokio::test]
async fn a_peer_speaking_for_another_region_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let server = Server::start(Some(&load(dir.path(), "us-east-1"))).await;
    // ap-southeast-1's certificate, claiming to be eu-west-1.
    let ap = client(server.addr, Some(&load(dir.path(), "ap-southeast-1")));

    let (status, code) = refused(&ap, HEARTBEAT_PATH, heartbeat("eu-west-1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code, "ATOLL-PEER-IDENTITY-MISMATCH");
    let (status, code) = refused(&ap, SUBSCRIBE_PATH, subscribe("eu-west-1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code, "ATOLL-PEER-IDENTITY-MISMATCH");
    assert_eq!(server.failures("identity_mismatch"), 2);
    // Nothing it said was believed.
    assert!(!server.heard("eu-west-1") && !server.heard("ap-southeast-1"));

    // Speaking for itself, the same connection is fine.
    let resp = ap
        .post(
            &region("us-east-1"),
            HEARTBEAT_PATH,
            heartbeat("ap-southeast-1"),
        )
        .await
        .expect("heartbeat");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(server.heard("ap-southeast-1") && !server.heard("eu-west-1"));
    server.stop().await;
}

/// A region added to a running cluster starts before the others reload the config that lists it,
/// so its first connection to a peer comes while its certificate names no region there. Its
/// heartbeats then come on that same connection (HTTP/2): refused while the peer does not know
/// it, taken once the peer's reload adds it, without a new connection.
#[tokio::test]
async fn a_connection_of_a_region_added_later_is_taken_once_a_reload_names_it() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let sa = region("sa-east-1");
    issue_region(dir.path(), CLUSTER, &sa, SystemTime::now(), 30, false).expect("issue");
    let server = Server::start(Some(&load(dir.path(), "us-east-1"))).await;
    // One HTTP/2 connection carries every heartbeat, as a region's heartbeat client sends them.
    let h2 = PeerClient::new(
        &BTreeMap::from([(region("us-east-1"), server.addr)]),
        Some(&load(dir.path(), "sa-east-1")),
        Duration::from_secs(5),
        Some(Duration::from_secs(5)),
        true,
    );
    let (status, code) = refused(&h2, HEARTBEAT_PATH, heartbeat("sa-east-1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code, "ATOLL-PEER-UNAUTHENTICATED");
    assert_eq!(server.failures("unknown_identity"), 1);

    // The reload (`Reloader::apply`): the listener's identities and the replication peers.
    server
        .identities
        .write()
        .expect("identities")
        .push(sa.clone());
    server
        .rep
        .add_peer(&sa, "127.0.0.1:9".parse().unwrap())
        .expect("add peer");
    for _ in 0..3 {
        let resp = h2
            .post(&region("us-east-1"), HEARTBEAT_PATH, heartbeat("sa-east-1"))
            .await
            .expect("heartbeat");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    assert!(server.heard("sa-east-1"));
    assert_eq!(server.failures("unknown_identity"), 1);
    // It still speaks only for itself.
    let (status, code) = refused(&h2, HEARTBEAT_PATH, heartbeat("eu-west-1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code, "ATOLL-PEER-IDENTITY-MISMATCH");
    server.stop().await;
}

/// A raw mutual-TLS client with `config`, sending one request; `Err` if the connection fails
/// (as it does when the server refuses the handshake).
async fn raw_request(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    path: &str,
    body: Vec<u8>,
) -> Result<StatusCode, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("us-east-1.atoll").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("host", "us-east-1")
        .body(http_body_util::Full::new(axum::body::Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(resp.status())
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(dir: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in atoll_tls::load_certs(&dir.join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    roots
}

#[tokio::test]
async fn clients_without_a_certificate_of_the_cluster_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let server = Server::start(Some(&load(dir.path(), "us-east-1"))).await;

    // No client certificate: the handshake fails, for a heartbeat and for a subscription.
    let anonymous = || {
        rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(dir.path()))
            .with_no_client_auth()
    };
    let r = raw_request(
        server.addr,
        anonymous(),
        HEARTBEAT_PATH,
        heartbeat("eu-west-1"),
    )
    .await;
    assert!(r.is_err(), "answered without a client certificate: {r:?}");
    let r = raw_request(
        server.addr,
        anonymous(),
        SUBSCRIBE_PATH,
        subscribe("eu-west-1"),
    )
    .await;
    assert!(r.is_err(), "answered without a client certificate: {r:?}");
    assert_eq!(server.wait_failures("no_certificate", 2).await, 2);

    // eu-west-1's certificate from another CA (another cluster's, say).
    let other = tempfile::tempdir().unwrap();
    write_certs(other.path());
    let foreign = || {
        rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(dir.path()))
            .with_client_auth_cert(
                atoll_tls::load_certs(&other.path().join("eu-west-1.pem")).unwrap(),
                atoll_tls::load_key(&other.path().join("eu-west-1.key")).unwrap(),
            )
            .unwrap()
    };
    let r = raw_request(
        server.addr,
        foreign(),
        HEARTBEAT_PATH,
        heartbeat("eu-west-1"),
    )
    .await;
    assert!(r.is_err(), "answered a certificate of another CA: {r:?}");
    let r = raw_request(
        server.addr,
        foreign(),
        SUBSCRIBE_PATH,
        subscribe("eu-west-1"),
    )
    .await;
    assert!(r.is_err(), "answered a certificate of another CA: {r:?}");
    assert_eq!(server.wait_failures("bad_certificate", 2).await, 2);
    // The same through PeerClient (what a region of the other cluster would run).
    let other_eu = client(server.addr, Some(&load(other.path(), "eu-west-1")));
    let r = other_eu
        .post(&region("us-east-1"), HEARTBEAT_PATH, heartbeat("eu-west-1"))
        .await;
    assert!(r.is_err(), "a region of another cluster was answered");

    // Plain HTTP on the TLS port.
    let plain = client(server.addr, None);
    let r = plain
        .post(&region("us-east-1"), HEARTBEAT_PATH, heartbeat("eu-west-1"))
        .await;
    assert!(r.is_err(), "plain HTTP was answered on the TLS port");
    // (At least once: the client may retry on a fresh connection.)
    server.wait_failures("handshake", 1).await;

    // A certificate of the cluster CA that names no region: authenticated, but nobody.
    let now = SystemTime::now();
    let ca = ClusterCa::generate(CLUSTER, now, 30).unwrap();
    let mallory = ca
        .issue_for_names("mallory-1", &["mallory-1.atoll".into()], now, 30)
        .unwrap();
    let certs = |pem: &str| -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let key = |pem: &str| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    };
    let server2 = {
        // A server whose CA is `ca`, to which mallory's certificate is valid.
        let us = ca.issue(&region("us-east-1"), now, 30).unwrap();
        let tls = RegionTls::from_der(
            &region("us-east-1"),
            &certs(&ca.pem().cert),
            certs(&us.cert),
            key(&us.key),
            now,
        )
        .unwrap();
        Server::start(Some(&tls)).await
    };
    let mut r2 = rustls::RootCertStore::empty();
    for c in certs(&ca.pem().cert) {
        r2.add(c).unwrap();
    }
    let nobody = || {
        rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(r2.clone())
            .with_client_auth_cert(certs(&mallory.cert), key(&mallory.key))
            .unwrap()
    };
    let r = raw_request(
        server2.addr,
        nobody(),
        HEARTBEAT_PATH,
        heartbeat("eu-west-1"),
    )
    .await;
    assert_eq!(r, Ok(StatusCode::FORBIDDEN));
    let r = raw_request(
        server2.addr,
        nobody(),
        SUBSCRIBE_PATH,
        subscribe("eu-west-1"),
    )
    .await;
    assert_eq!(r, Ok(StatusCode::FORBIDDEN));
    assert_eq!(server2.failures("unknown_identity"), 2);
    assert!(!server2.heard("eu-west-1"));

    // None of it was believed.
    assert!(!server.heard("eu-west-1") && !server.heard("ap-southeast-1"));
    server.stop().await;
    server2.stop().await;
}

#[tokio::test]
async fn a_region_refuses_a_server_that_is_not_the_peer_it_dials() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    // eu-west-1 listens; ap-southeast-1 believes it reaches us-east-1 there (a wrong
    // --peer-via, or someone in the middle).
    let impostor = Server::start(Some(&load(dir.path(), "eu-west-1"))).await;
    let ap = client(impostor.addr, Some(&load(dir.path(), "ap-southeast-1")));
    let e = ap
        .post(
            &region("us-east-1"),
            HEARTBEAT_PATH,
            heartbeat("ap-southeast-1"),
        )
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(!impostor.heard("ap-southeast-1"));
    impostor.stop().await;
}

#[tokio::test]
async fn peer_routes_without_any_authentication_are_refused() {
    // A request that reached the replication routes by a path that set no PeerAuth.
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path());
    let server = Server::start(Some(&load(dir.path(), "us-east-1"))).await;
    for (path, body) in [
        (HEARTBEAT_PATH, heartbeat("eu-west-1")),
        (SUBSCRIBE_PATH, subscribe("eu-west-1")),
        // Garbage too: refused for who sent it, before anything is decoded.
        (HEARTBEAT_PATH, vec![0xff; 8]),
    ] {
        let req = Request::post(path)
            .header("content-type", "application/octet-stream")
            .body(Body::from(body))
            .unwrap();
        let resp = router(server.rep.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("ATOLL-PEER-UNAUTHENTICATED"), "{text}");
    }
    assert_eq!(server.failures("unauthenticated"), 3);
    assert!(!server.heard("eu-west-1"));
    server.stop().await;
}

#[tokio::test]
async fn insecure_takes_anyone_and_says_so() {
    let server = Server::start(None).await;
    let plain = client(server.addr, None);
    let resp = plain
        .post(&region("us-east-1"), HEARTBEAT_PATH, heartbeat("eu-west-1"))
        .await
        .expect("heartbeat");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(server.heard("eu-west-1"));
    let mut stream = plain
        .post(&region("us-east-1"), SUBSCRIBE_PATH, subscribe("eu-west-1"))
        .await
        .expect("subscription");
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(
        tokio::time::timeout(DEADLINE, stream.chunk())
            .await
            .expect("in time")
            .expect("no error")
            .is_some()
    );
    drop(stream);
    server.stop().await;

    // What a region of such a cluster reports in /v1/status.
    let text = "[cluster]\nname = \"test\"\n\n[cluster.tls]\ninsecure = true\n\n\
        [[regions]]\nname = \"us-east-1\"\napi = \"127.0.0.1:7100\"\n\n\
        [[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\n\n\
        [[keyspaces]]\nname = \"sessions\"\npolicy = \"lww\"\n";
    let status = status_of(Config::parse(text, "atoll.toml").unwrap()).await;
    assert_eq!(status["peer_tls"]["mode"], "insecure", "{status}");
    let warning = status["peer_tls"]["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("insecure = true"), "{status}");
    // And a mutual-TLS one.
    let mutual = text.replace(
        "insecure = true",
        "ca = \"ca.pem\"\ncert = \"{region}.pem\"\nkey = \"{region}.key\"",
    );
    let mutual = mutual
        .replace(
            "api = \"127.0.0.1:7100\"",
            "api = \"127.0.0.1:7100\"\npeer = \"127.0.0.1:7200\"",
        )
        .replace(
            "api = \"127.0.0.1:7101\"",
            "api = \"127.0.0.1:7101\"\npeer = \"127.0.0.1:7201\"",
        );
    let status = status_of(Config::parse(&mutual, "atoll.toml").unwrap()).await;
    assert_eq!(status["peer_tls"]["mode"], "mutual-tls", "{status}");
    assert!(status["peer_tls"].get("warning").is_none(), "{status}");
}

/// `GET /v1/status` of a region (us-east-1) running `config`.
async fn status_of(config: Config) -> serde_json::Value {
    use atoll_server::api::AppState;
    let store = Store::open(
        Arc::new(MemBackend::default()),
        StoreOptions::new(region("us-east-1"), config.keyspaces.clone()),
        Arc::new(ManualClock::new(T0)),
    )
    .unwrap();
    let state = Arc::new(AppState {
        store: Arc::new(store),
        config: Arc::new(config),
        metrics: Arc::new(Metrics::new()),
        started: Instant::now(),
        serving: std::sync::atomic::AtomicBool::new(true),
        replicator: std::sync::OnceLock::new(),
        subscribers: Subscribers::new(),
        auth: None,
        fencing: Default::default(),
        homes: Default::default(),
        strong: Default::default(),
        watch: Default::default(),
        sessions: Default::default(),
        membership: Default::default(),
    });
    let resp = atoll_server::api::router(state)
        .oneshot(Request::get("/v1/status").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}
