//! What `atoll certs init` writes loads back, names its regions, and is what a handshake between
//! two regions needs; anything else is refused.

// Certificates are valid from the real time of day: these tests read the wall clock.
#![allow(clippy::disallowed_methods)]

use atoll_core::RegionId;
use atoll_tls::certs::{
    ClusterCa, ClusterCerts, DEFAULT_CA_DAYS, DEFAULT_REGION_DAYS, issue_region, write_cluster,
};
use atoll_tls::{RegionTls, identity, load_certs, load_key};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore, ServerConnection};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn region(n: &str) -> RegionId {
    RegionId::new(n).unwrap()
}

fn regions() -> Vec<RegionId> {
    ["us-east-1", "eu-west-1", "ap-southeast-1"]
        .iter()
        .map(|n| region(n))
        .collect()
}

fn plan() -> ClusterCerts {
    ClusterCerts {
        cluster: "t".into(),
        regions: regions(),
        days: DEFAULT_REGION_DAYS,
        ca_days: DEFAULT_CA_DAYS,
    }
}

fn load(dir: &Path, r: &str, now: SystemTime) -> atoll_core::Result<RegionTls> {
    RegionTls::load(
        &region(r),
        &dir.join("ca.pem"),
        &dir.join(format!("{r}.pem")),
        &dir.join(format!("{r}.key")),
        now,
    )
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn pem_key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn init_writes_a_ca_and_a_certificate_per_region_that_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let now = SystemTime::now();
    let written = write_cluster(&out, &plan(), now, false).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|w| w.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "ca.pem",
            "ca.key",
            "us-east-1.pem",
            "us-east-1.key",
            "eu-west-1.pem",
            "eu-west-1.key",
            "ap-southeast-1.pem",
            "ap-southeast-1.key"
        ]
    );
    #[cfg(unix)]
    for w in &written {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&w.path).unwrap().permissions().mode() & 0o777;
        let want = if w.secret { 0o600 } else { 0o644 };
        assert_eq!(mode, want, "{}", w.path.display());
        assert_eq!(w.secret, w.path.extension().unwrap() == "key");
    }
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 8);
    for r in regions() {
        let tls = load(&out, r.as_str(), now).unwrap();
        assert_eq!(tls.region(), &r);
        let cert = &load_certs(&out.join(format!("{r}.pem"))).unwrap()[0];
        assert_eq!(identity(cert, &regions()), Some(r.clone()));
        load_key(&out.join(format!("{r}.key"))).unwrap();
    }
    // Valid for the stated period: a year from now, not 400 days from now.
    let in_a_year = now + Duration::from_secs(364 * 86_400);
    load(&out, "us-east-1", in_a_year).unwrap();
    let later = now + Duration::from_secs(366 * 86_400);
    let e = load(&out, "us-east-1", later).unwrap_err();
    assert_eq!(e.code(), "ATOLL-TLS");
    assert!(e.to_string().contains("xpired"), "{e}");
}

#[test]
fn init_refuses_to_overwrite_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let now = SystemTime::now();
    std::fs::write(out.join("eu-west-1.key"), "precious").unwrap();
    let e = write_cluster(out, &plan(), now, false).unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    assert!(e.to_string().contains("eu-west-1.key"), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    // Nothing was written.
    assert_eq!(std::fs::read_dir(out).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(out.join("eu-west-1.key")).unwrap(),
        "precious"
    );

    write_cluster(out, &plan(), now, true).unwrap();
    let old_ca = std::fs::read(out.join("ca.pem")).unwrap();
    let old_us = std::fs::read(out.join("us-east-1.pem")).unwrap();
    load(out, "eu-west-1", now).unwrap();
    // Forced again: a new CA, and the old region certificates no longer fit it.
    write_cluster(out, &plan(), now, true).unwrap();
    assert_ne!(std::fs::read(out.join("ca.pem")).unwrap(), old_ca);
    std::fs::write(out.join("us-east-1.pem"), old_us).unwrap();
    let e = load(out, "us-east-1", now).unwrap_err();
    assert!(e.to_string().contains("signed by the cluster CA"), "{e}");
}

#[test]
fn bad_validities_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = plan();
    p.days = 0;
    assert!(write_cluster(dir.path(), &p, SystemTime::now(), false).is_err());
    let mut p = plan();
    p.days = 400;
    p.ca_days = 300;
    let e = write_cluster(dir.path(), &p, SystemTime::now(), false).unwrap_err();
    assert!(e.to_string().contains("outlive the CA"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_region_refuses_a_certificate_that_is_not_its_own() {
    let now = SystemTime::now();
    let ca = ClusterCa::generate("t", now, 30).unwrap();
    let other_ca = ClusterCa::generate("t", now, 30).unwrap();
    let ca_certs = pem_certs(&ca.pem().cert);
    let us = ca.issue(&region("us-east-1"), now, 30).unwrap();
    let eu = ca.issue(&region("eu-west-1"), now, 30).unwrap();
    let foreign = other_ca.issue(&region("us-east-1"), now, 30).unwrap();
    let good = RegionTls::from_der(
        &region("us-east-1"),
        &ca_certs,
        pem_certs(&us.cert),
        pem_key(&us.key),
        now,
    );
    assert!(good.is_ok(), "{good:?}");
    // eu-west-1's certificate for us-east-1.
    let e = RegionTls::from_der(
        &region("us-east-1"),
        &ca_certs,
        pem_certs(&eu.cert),
        pem_key(&eu.key),
        now,
    )
    .unwrap_err();
    assert!(e.to_string().contains("us-east-1.atoll"), "{e}");
    // Signed by another CA.
    let e = RegionTls::from_der(
        &region("us-east-1"),
        &ca_certs,
        pem_certs(&foreign.cert),
        pem_key(&foreign.key),
        now,
    )
    .unwrap_err();
    assert!(e.to_string().contains("signed by the cluster CA"), "{e}");
    // Not yet valid.
    let e = RegionTls::from_der(
        &region("us-east-1"),
        &ca_certs,
        pem_certs(&us.cert),
        pem_key(&us.key),
        now - Duration::from_secs(7200),
    )
    .unwrap_err();
    assert_eq!(e.code(), "ATOLL-TLS");
    // Someone else's key.
    let e = RegionTls::from_der(
        &region("us-east-1"),
        &ca_certs,
        pem_certs(&us.cert),
        pem_key(&eu.key),
        now,
    )
    .unwrap_err();
    assert!(e.to_string().contains("key does not fit"), "{e}");
}

#[test]
fn missing_and_garbled_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_certs(&dir.path().join("nope.pem")).unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
    std::fs::write(dir.path().join("empty.pem"), "not pem").unwrap();
    let e = load_certs(&dir.path().join("empty.pem")).unwrap_err();
    assert!(e.to_string().contains("no certificate"), "{e}");
    let e = load_key(&dir.path().join("empty.pem")).unwrap_err();
    assert!(e.to_string().contains("empty.pem"), "{e}");
    assert_eq!(e.code(), "ATOLL-TLS");
}

#[test]
fn identity_is_the_one_region_a_certificate_names() {
    let now = SystemTime::now();
    let ca = ClusterCa::generate("t", now, 30).unwrap();
    let cert = |names: &[&str]| {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        pem_certs(&ca.issue_for_names("x", &names, now, 30).unwrap().cert).remove(0)
    };
    let all = regions();
    assert_eq!(
        identity(&cert(&["eu-west-1.atoll"]), &all),
        Some(region("eu-west-1"))
    );
    // The bare region name, another suffix, a region not in the cluster: nobody.
    assert_eq!(identity(&cert(&["eu-west-1"]), &all), None);
    assert_eq!(identity(&cert(&["eu-west-1.example.com"]), &all), None);
    assert_eq!(identity(&cert(&["mallory-1.atoll"]), &all), None);
    // A wildcard (or two regions in one certificate) identifies nobody.
    assert_eq!(identity(&cert(&["*.atoll"]), &all), None);
    assert_eq!(
        identity(&cert(&["eu-west-1.atoll", "us-east-1.atoll"]), &all),
        None
    );
    assert_eq!(identity(&CertificateDer::from(vec![1, 2, 3]), &all), None);
}

// ---------------------------------------------------------------------------------------------
// Handshakes, in memory

/// Runs a handshake between `client` and `server` to its end; returns each side's outcome.
fn handshake(
    client: Arc<rustls::ClientConfig>,
    server_name: &str,
    server: Arc<rustls::ServerConfig>,
) -> (
    Result<(), rustls::Error>,
    Result<ServerConnection, rustls::Error>,
) {
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let mut client_result = Ok(());
    let mut server_result = Ok(());
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = s.process_new_packets() {
                server_result = Err(e);
            }
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = c.process_new_packets() {
                client_result = Err(e);
            }
        }
        if client_result.is_err() || server_result.is_err() {
            break;
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    (client_result, server_result.map(|()| s))
}

#[test]
fn two_regions_handshake_and_each_knows_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    write_cluster(dir.path(), &plan(), now, false).unwrap();
    let us = load(dir.path(), "us-east-1", now).unwrap();
    let eu = load(dir.path(), "eu-west-1", now).unwrap();

    // eu-west-1 dials us-east-1.
    let (c, s) = handshake(eu.client_config(), "us-east-1.atoll", us.server_config());
    c.unwrap();
    let s = s.unwrap();
    let peer = &s.peer_certificates().unwrap()[0];
    assert_eq!(identity(peer, &regions()), Some(region("eu-west-1")));

    // Dialling us-east-1 but reaching eu-west-1: the client refuses the server.
    let (c, _) = handshake(us.client_config(), "us-east-1.atoll", eu.server_config());
    assert!(
        matches!(c, Err(rustls::Error::InvalidCertificate(_))),
        "{c:?}"
    );
}

#[test]
fn the_peer_listener_requires_a_client_certificate_of_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    write_cluster(dir.path(), &plan(), now, false).unwrap();
    let us = load(dir.path(), "us-east-1", now).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in load_certs(&dir.path().join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }

    // No client certificate.
    let anonymous = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let (_, s) = handshake(Arc::new(anonymous), "us-east-1.atoll", us.server_config());
    assert!(
        matches!(s, Err(rustls::Error::NoCertificatesPresented)),
        "{:?}",
        s.err()
    );

    // A certificate for eu-west-1 from another CA.
    let other = tempfile::tempdir().unwrap();
    write_cluster(other.path(), &plan(), now, false).unwrap();
    let chain = load_certs(&other.path().join("eu-west-1.pem")).unwrap();
    let key = load_key(&other.path().join("eu-west-1.key")).unwrap();
    let foreign = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let (_, s) = handshake(Arc::new(foreign), "us-east-1.atoll", us.server_config());
    assert!(
        matches!(s, Err(rustls::Error::InvalidCertificate(_))),
        "{:?}",
        s.err()
    );
}

// ---------------------------------------------------------------------------------------------
// A region added later: `atoll certs issue`, from the CA loaded back

/// Region `r`'s TLS as a client that presents `cert`/`key` and trusts the CA in `dir`.
fn client_with(dir: &Path, pem: &atoll_tls::certs::Pem) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in load_certs(&dir.join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(pem_certs(&pem.cert), pem_key(&pem.key))
            .unwrap(),
    )
}

fn load_ca_err(dir: &Path, cluster: &str) -> String {
    match ClusterCa::load(dir, cluster) {
        Ok(_) => panic!("ClusterCa::load({}, {cluster}) succeeded", dir.display()),
        Err(e) => {
            assert_eq!(e.code(), "ATOLL-TLS");
            e.to_string()
        }
    }
}

#[test]
fn a_region_issued_later_from_the_reloaded_ca_is_a_peer_of_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    write_cluster(dir.path(), &plan(), now, false).unwrap();
    let sa = region("sa-east-1");
    let written = issue_region(dir.path(), "t", &sa, now, 30, false).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|w| w.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["sa-east-1.pem", "sa-east-1.key"]);
    #[cfg(unix)]
    for w in &written {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&w.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode,
            if w.secret { 0o600 } else { 0o644 },
            "{}",
            w.path.display()
        );
    }
    // The CA's files are untouched, and no temporary file is left: 8 + 2.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 10);

    // It loads against the original CA certificate exactly as a founding region's files do
    // (signed by the CA, valid now, for sa-east-1.atoll, as a server and as a client) ...
    let new = load(dir.path(), "sa-east-1", now).unwrap();
    let mut all = regions();
    all.push(sa.clone());
    let cert = &load_certs(&dir.path().join("sa-east-1.pem")).unwrap()[0];
    assert_eq!(identity(cert, &all), Some(sa.clone()));
    // ... for the validity asked, not more.
    load(
        dir.path(),
        "sa-east-1",
        now + Duration::from_secs(29 * 86_400),
    )
    .unwrap();
    assert!(
        load(
            dir.path(),
            "sa-east-1",
            now + Duration::from_secs(31 * 86_400)
        )
        .is_err()
    );

    // A founding region's peer listener takes it as sa-east-1, and it takes the founding region.
    let us = load(dir.path(), "us-east-1", now).unwrap();
    let (c, s) = handshake(new.client_config(), "us-east-1.atoll", us.server_config());
    c.unwrap();
    let s = s.unwrap();
    assert_eq!(
        identity(&s.peer_certificates().unwrap()[0], &all),
        Some(sa.clone())
    );
    let (c, s) = handshake(us.client_config(), "sa-east-1.atoll", new.server_config());
    c.unwrap();
    let s = s.unwrap();
    assert_eq!(
        identity(&s.peer_certificates().unwrap()[0], &all),
        Some(region("us-east-1"))
    );

    // Issued again: refused without --force (naming the files), replaced with it.
    let before = std::fs::read(dir.path().join("sa-east-1.pem")).unwrap();
    let e = issue_region(dir.path(), "t", &sa, now, 30, false).unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    assert!(e.to_string().contains("sa-east-1.key"), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(
        std::fs::read(dir.path().join("sa-east-1.pem")).unwrap(),
        before
    );
    issue_region(dir.path(), "t", &sa, now, 30, true).unwrap();
    assert_ne!(
        std::fs::read(dir.path().join("sa-east-1.pem")).unwrap(),
        before
    );
    load(dir.path(), "sa-east-1", now).unwrap();

    // A validity out of range: refused, nothing written.
    let ap = region("ap-northeast-1");
    for days in [0, 11_001] {
        let e = issue_region(dir.path(), "t", &ap, now, days, false).unwrap_err();
        assert!(e.to_string().contains("--days"), "{e}");
    }
    assert!(!dir.path().join("ap-northeast-1.pem").exists());
}

#[test]
fn another_cas_key_or_another_clusters_name_issues_nothing_that_verifies() {
    let now = SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    write_cluster(dir.path(), &plan(), now, false).unwrap();
    // Another CA of a cluster with the same name: the same issuer name, another key.
    write_cluster(other.path(), &plan(), now, false).unwrap();
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let ca_pem = read(dir.path(), "ca.pem");
    let ca_certs = pem_certs(&ca_pem);
    let sa = region("sa-east-1");
    let us = load(dir.path(), "us-east-1", now).unwrap();

    // The right key and name rebuild an issuer whose certificates verify (the control).
    let same = ClusterCa::from_key("t", &ca_pem, &read(dir.path(), "ca.key")).unwrap();
    let pem = same.issue(&sa, now, 30).unwrap();
    RegionTls::from_der(&sa, &ca_certs, pem_certs(&pem.cert), pem_key(&pem.key), now).unwrap();

    // Not one of the cluster's: loading it as a region refuses it, and the peer listener refuses
    // it in the handshake.
    let refused = |issuer: &ClusterCa| {
        let pem = issuer.issue(&sa, now, 30).unwrap();
        let e = RegionTls::from_der(&sa, &ca_certs, pem_certs(&pem.cert), pem_key(&pem.key), now)
            .unwrap_err();
        assert!(e.to_string().contains("signed by the cluster CA"), "{e}");
        let (_, s) = handshake(
            client_with(dir.path(), &pem),
            "us-east-1.atoll",
            us.server_config(),
        );
        assert!(
            matches!(s, Err(rustls::Error::InvalidCertificate(_))),
            "{:?}",
            s.err()
        );
    };
    // Another CA's key under this CA's name.
    refused(&ClusterCa::from_key("t", &ca_pem, &read(other.path(), "ca.key")).unwrap());
    // The right key under another cluster's name: the issuer it names is not the CA.
    refused(&ClusterCa::from_key("prod", &ca_pem, &read(dir.path(), "ca.key")).unwrap());

    // Loading checks both before anything is issued, and says what is wrong.
    let e = load_ca_err(dir.path(), "prod");
    assert!(e.contains("is not the CA of cluster `prod`"), "{e}");
    assert!(e.contains("(it is `atoll cluster t CA`)"), "{e}");
    let mixed = tempfile::tempdir().unwrap();
    std::fs::write(mixed.path().join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(mixed.path().join("ca.key"), read(other.path(), "ca.key")).unwrap();
    let e = load_ca_err(mixed.path(), "t");
    assert!(e.contains("is not the key of the CA certificate"), "{e}");
    assert!(e.contains("ca.key"), "{e}");
    let e = issue_region(mixed.path(), "t", &sa, now, 30, false).unwrap_err();
    assert!(e.to_string().contains("is not the key"), "{e}");
    let e = issue_region(dir.path(), "prod", &sa, now, 30, false).unwrap_err();
    assert!(e.to_string().contains("is not the CA of cluster"), "{e}");
    assert!(!mixed.path().join("sa-east-1.pem").exists());
    assert!(!dir.path().join("sa-east-1.pem").exists());
    // A missing or garbled CA file is named.
    let e = load_ca_err(tempfile::tempdir().unwrap().path(), "t");
    assert!(e.contains("ca.pem"), "{e}");
    std::fs::write(mixed.path().join("ca.key"), "not a key").unwrap();
    let e = load_ca_err(mixed.path(), "t");
    assert!(e.contains("ca.key"), "{e}");
}
