//! Mutual TLS between regions (`docs/design/mtls.md`).
//!
//! - [`certs`]: the cluster CA and one certificate per region, made with rcgen and written as PEM
//!   files (`atoll certs init`, `atoll demo`, the end-to-end test harness).
//! - [`RegionTls`]: a region's TLS material loaded from its `[cluster.tls]` files and checked
//!   (its certificate is signed by the cluster CA, valid now, names the region, and matches its
//!   key), with the rustls configs of its peer listener (which requires a client certificate
//!   signed by the cluster CA) and of its peer client (which presents the region's certificate
//!   and expects the peer's).
//! - [`identity`]: the region a verified peer certificate names.
//!
//! **Identity.** A region's certificate is valid for the DNS name `<region>.atoll`
//! ([`peer_name`]); that name is the region's identity, on both sides of a connection. rustls uses
//! the *ring* crypto provider, passed explicitly (no process-wide default is installed).
//!
//! Errors are [`AtollError::Tls`] naming the file and what is wrong with it.

pub mod certs;

use atoll_core::{AtollError, RegionId, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// The suffix of every region's certificate name: region `us-east-1` is `us-east-1.atoll`.
pub const NAME_SUFFIX: &str = ".atoll";

/// The DNS name a region's certificate is valid for, which identifies it: `<region>.atoll`.
pub fn peer_name(region: &RegionId) -> String {
    format!("{region}{NAME_SUFFIX}")
}

fn server_name(region: &RegionId) -> Result<ServerName<'static>> {
    ServerName::try_from(peer_name(region))
        .map_err(|e| AtollError::Tls(format!("`{}` is not a DNS name: {e}", peer_name(region))))
}

/// The crypto provider every config here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: impl std::fmt::Display) -> AtollError {
    AtollError::Tls(what.to_string())
}

/// Every certificate in a PEM file, in order (a chain: the region's own certificate first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            tls_err(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err(format!("{}: not a valid PEM file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{}: no certificate (no `BEGIN CERTIFICATE` block)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        tls_err(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

/// The cluster CA as a root store.
fn roots(ca: &[CertificateDer<'static>], ca_path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(|e| {
            tls_err(format!(
                "{}: not a usable CA certificate: {e}",
                ca_path.display()
            ))
        })?;
    }
    Ok(Arc::new(roots))
}

/// A region's TLS material, loaded and checked, and the rustls configs made from it.
#[derive(Clone)]
pub struct RegionTls {
    region: RegionId,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for RegionTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionTls")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl RegionTls {
    /// Loads `region`'s files: the cluster CA certificate `ca`, the region's certificate chain
    /// `cert` and its private key `key`. Refuses a certificate that the CA did not sign, that is
    /// not valid at `now`, that does not name `region` (`<region>.atoll`) for both server and
    /// client use, or that does not match the key.
    pub fn load(
        region: &RegionId,
        ca: &Path,
        cert: &Path,
        key: &Path,
        now: SystemTime,
    ) -> Result<RegionTls> {
        let ca_certs = load_certs(ca)?;
        let chain = load_certs(cert)?;
        let key_der = load_key(key)?;
        Self::from_der(region, &ca_certs, chain, key_der, now).map_err(|e| match e {
            AtollError::Tls(m) => AtollError::Tls(format!(
                "region `{region}` (certificate {}, key {}, CA {}): {m}",
                cert.display(),
                key.display(),
                ca.display()
            )),
            other => other,
        })
    }

    /// [`RegionTls::load`] from DER data already read.
    pub fn from_der(
        region: &RegionId,
        ca: &[CertificateDer<'static>],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        now: SystemTime,
    ) -> Result<RegionTls> {
        let roots = roots(ca, Path::new("the CA"))?;
        let provider = provider();
        let unix_now = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|_| tls_err("the clock is before 1970"))?,
        );
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(tls_err("the certificate file holds no certificate"));
        };

        // Our own certificate must be what our peers will accept: signed by the cluster CA,
        // valid now, for our name, as a server and as a client.
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| tls_err(format!("cannot build the certificate verifier: {e}")))?;
        server_verifier
            .verify_server_cert(
                end_entity,
                intermediates,
                &server_name(region)?,
                &[],
                unix_now,
            )
            .map_err(|e| {
                tls_err(format!(
                    "the region's certificate is not one its peers accept (it must be signed by the cluster CA, valid now, and for `{}`): {e}",
                    peer_name(region)
                ))
            })?;
        let client_verifier = client_verifier(&roots, &provider)?;
        client_verifier
            .verify_client_cert(end_entity, intermediates, unix_now)
            .map_err(|e| {
                tls_err(format!(
                    "the region's certificate cannot be used as a client certificate: {e}"
                ))
            })?;

        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_err(format!("the key does not fit the certificate: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_err(format!("the key does not fit the certificate: {e}")))?;
        Ok(RegionTls {
            region: region.clone(),
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// The peer listener's config: presents the region's certificate and requires a client
    /// certificate signed by the cluster CA.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The peer client's config: presents the region's certificate and accepts a server only
    /// with a certificate signed by the cluster CA for the name it dials (see
    /// [`RegionTls::server_name`]).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The name to verify when dialling `peer`, whatever address is dialled (an `atoll link`
    /// proxy forwards bytes, so TLS passes through it unchanged).
    pub fn server_name(peer: &RegionId) -> Result<ServerName<'static>> {
        server_name(peer)
    }
}

fn client_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| tls_err(format!("cannot build the client certificate verifier: {e}")))
}

/// The region of `regions` that a (verified) peer certificate names: the one region for whose
/// name `<region>.atoll` the certificate is valid. `None` if it names none of them, or more than
/// one (a wildcard certificate identifies nobody).
pub fn identity(cert: &CertificateDer<'_>, regions: &[RegionId]) -> Option<RegionId> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut found = None;
    for r in regions {
        let Ok(name) = server_name(r) else { continue };
        if ee.verify_is_valid_for_subject_name(&name).is_ok() {
            if found.is_some() {
                return None;
            }
            found = Some(r.clone());
        }
    }
    found
}

/// Why a TLS handshake on the peer listener failed, as a bounded metric label.
pub fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    let Some(inner) = e.get_ref() else {
        return "handshake";
    };
    match inner.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)
            | rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
            | rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired),
        ) => "bad_certificate",
        _ => "handshake",
    }
}
