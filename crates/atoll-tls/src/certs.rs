//! The cluster CA and the region certificates: what `atoll certs init` makes.
//!
//! Keys are ECDSA P-256. The CA certificate may sign end-entity certificates only (path length
//! 0). A region's certificate names the region (`<region>.atoll` as its subject alternative
//! name, the region's name as its common name) and is valid for both server and client
//! authentication, since a region is both on its peers' connections. Every certificate starts
//! being valid an hour before `now`, so a peer whose clock is a little behind accepts it.
//!
//! [`write_cluster`] writes `ca.pem`, `ca.key`, `<region>.pem` and `<region>.key` into a
//! directory; private keys get mode 0600 and every file is written to a temporary name and
//! renamed, so a reader never sees half a file. It refuses to replace an existing file unless
//! told to. [`issue_region`] (`atoll certs issue`) loads that CA back ([`ClusterCa::load`]) and
//! writes the certificate of one more region next to it, under the same rules.

use crate::{NAME_SUFFIX, RegionTls, peer_name, tls_err};
use atoll_core::{RegionId, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Default validity of a region certificate: one year.
pub const DEFAULT_REGION_DAYS: u32 = 365;
/// Default validity of the cluster CA: ten years.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Longest accepted validity, in days (about 30 years).
pub const MAX_DAYS: u32 = 11_000;
/// How far before `now` certificates start being valid.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The file names [`write_cluster`] uses in its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// `<region>.pem`.
pub fn region_cert_file(region: &RegionId) -> String {
    format!("{region}.pem")
}

/// `<region>.key`.
pub fn region_key_file(region: &RegionId) -> String {
    format!("{region}.key")
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// A cluster CA that can issue region certificates.
pub struct ClusterCa {
    params: CertificateParams,
    key: KeyPair,
    pem: Pem,
}

fn validity(params: &mut CertificateParams, now: SystemTime, days: u32) -> Result<()> {
    if days == 0 || days > MAX_DAYS {
        return Err(tls_err(format!(
            "a validity of {days} days: use 1 to {MAX_DAYS}"
        )));
    }
    let from = now.checked_sub(BACKDATE).unwrap_or(now);
    let until = now + Duration::from_secs(u64::from(days) * 86_400);
    params.not_before = time::OffsetDateTime::from(from);
    params.not_after = time::OffsetDateTime::from(until);
    Ok(())
}

/// The common name of cluster `cluster`'s CA: `atoll cluster <cluster> CA`.
pub fn ca_common_name(cluster: &str) -> String {
    format!("atoll cluster {cluster} CA")
}

/// The CA's certificate parameters, validity aside: its distinguished name (common name
/// [`ca_common_name`], then organization `atoll`, in that order: an issuer is matched by the
/// exact encoding of its name), CA with path length 0, and its key usages. [`ClusterCa::generate`]
/// makes the CA from them and [`ClusterCa::from_key`] rebuilds its issuer from them.
fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_common_name(cluster));
    dn.push(DnType::OrganizationName, "atoll");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The first common name (OID 2.5.4.3) in a DER-encoded name, if it is a short UTF-8, printable
/// or IA5 string: for messages only, never for a decision.
fn common_name_in(name_der: &[u8]) -> Option<String> {
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = name_der.windows(CN_OID.len()).position(|w| w == CN_OID)? + CN_OID.len();
    let (&tag, rest) = name_der.get(at..)?.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if !matches!(tag, 0x0c | 0x13 | 0x16) || len >= 0x80 {
        return None;
    }
    let bytes = rest.get(..usize::from(len))?;
    String::from_utf8(bytes.to_vec()).ok()
}

impl ClusterCa {
    /// A new CA for cluster `cluster`, valid from `now` for `days` days.
    pub fn generate(cluster: &str, now: SystemTime, days: u32) -> Result<ClusterCa> {
        let mut params = ca_params(cluster);
        validity(&mut params, now, days)?;
        let key = KeyPair::generate().map_err(|e| tls_err(format!("cannot make a key: {e}")))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_err(format!("cannot make the CA certificate: {e}")))?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(ClusterCa { params, key, pem })
    }

    /// The issuer of cluster `cluster`'s CA rebuilt from its private key `key_pem` and the
    /// distinguished name [`ClusterCa::generate`] gives it, with `cert_pem` (the CA certificate)
    /// kept as [`ClusterCa::pem`] says it. rcgen is built here without its certificate parser, so
    /// the CA certificate is not read back: nothing checks that the key, the certificate and the
    /// cluster name belong together, and with a wrong one the certificates issued verify against
    /// nothing. [`ClusterCa::load`] checks them.
    pub fn from_key(cluster: &str, cert_pem: &str, key_pem: &str) -> Result<ClusterCa> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| tls_err(format!("not a private key atoll can sign with: {e}")))?;
        Ok(ClusterCa {
            params: ca_params(cluster),
            key,
            pem: Pem {
                cert: cert_pem.to_string(),
                key: key_pem.to_string(),
            },
        })
    }

    /// The CA [`write_cluster`] wrote into `dir` (`ca.pem`, `ca.key`) for cluster `cluster`,
    /// ready to issue more region certificates. Refuses, naming the file, a certificate or key
    /// that cannot be read, a key that is not the CA certificate's, and a CA certificate whose
    /// name is not that of cluster `cluster`'s CA (`CN=atoll cluster <cluster> CA, O=atoll`):
    /// certificates issued from either would be refused by every region.
    pub fn load(dir: &Path, cluster: &str) -> Result<ClusterCa> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = std::fs::read_to_string(&cert_path)
            .map_err(|e| tls_err(format!("cannot read {}: {e}", cert_path.display())))?;
        let key_pem = std::fs::read_to_string(&key_path)
            .map_err(|e| tls_err(format!("cannot read {}: {e}", key_path.display())))?;
        let ca_der = first_cert(&cert_pem, &cert_path)?;
        let ca = Self::from_key(cluster, &cert_pem, &key_pem)
            .map_err(|e| tls_err(format!("{}: {e}", key_path.display())))?;
        let anchor = webpki::anchor_from_trusted_cert(&ca_der).map_err(|e| {
            tls_err(format!(
                "{}: not a usable CA certificate: {e}",
                cert_path.display()
            ))
        })?;
        if webpki::spki_for_anchor(&anchor).as_ref() != ca.key.subject_public_key_info().as_slice()
        {
            return Err(tls_err(format!(
                "{} is not the key of the CA certificate {} (they come from different CAs; use the ca.key that `atoll certs init` wrote with this ca.pem)",
                key_path.display(),
                cert_path.display()
            )));
        }
        // The name the rebuilt issuer writes into the certificates it signs, encoded as rcgen
        // encodes it, against the CA certificate's own subject.
        let rebuilt = ca
            .params
            .self_signed(&ca.key)
            .map_err(|e| tls_err(format!("cannot rebuild the CA of cluster {cluster}: {e}")))?;
        let rebuilt_anchor = webpki::anchor_from_trusted_cert(rebuilt.der())
            .map_err(|e| tls_err(format!("cannot rebuild the CA of cluster {cluster}: {e}")))?;
        if rebuilt_anchor.subject.as_ref() != anchor.subject.as_ref() {
            let named = common_name_in(anchor.subject.as_ref())
                .map(|cn| format!(" (it is `{cn}`)"))
                .unwrap_or_default();
            return Err(tls_err(format!(
                "{} is not the CA of cluster `{cluster}`: its name is not `CN={}, O=atoll`{named}; give the config of the cluster this CA was made for (its [cluster] name)",
                cert_path.display(),
                ca_common_name(cluster)
            )));
        }
        Ok(ca)
    }

    /// The CA's certificate and key.
    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// A certificate for `region` (`<region>.atoll`, server and client use), valid from `now`
    /// for `days` days, with a fresh key.
    pub fn issue(&self, region: &RegionId, now: SystemTime, days: u32) -> Result<Pem> {
        self.issue_for_names(region.as_str(), &[peer_name(region)], now, days)
    }

    /// A certificate with common name `common_name` valid for the DNS names `names`. For tests
    /// that need a certificate naming something else than one region.
    pub fn issue_for_names(
        &self,
        common_name: &str,
        names: &[String],
        now: SystemTime,
        days: u32,
    ) -> Result<Pem> {
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|e| tls_err(format!("invalid certificate names {names:?}: {e}")))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "atoll");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, days)?;
        let key = KeyPair::generate().map_err(|e| tls_err(format!("cannot make a key: {e}")))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls_err(format!("cannot issue a certificate for {common_name}: {e}")))?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// What [`write_cluster`] makes.
#[derive(Clone, Debug)]
pub struct ClusterCerts {
    /// The cluster's name (in the CA's common name).
    pub cluster: String,
    pub regions: Vec<RegionId>,
    /// Validity of the region certificates, in days.
    pub days: u32,
    /// Validity of the CA, in days.
    pub ca_days: u32,
}

/// One file [`write_cluster`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    /// A private key (mode 0600).
    pub secret: bool,
    /// What it is, for people: "cluster CA certificate", "us-east-1 key", ...
    pub what: String,
}

/// Creates a CA and one certificate per region and writes them into `dir` (created if needed):
/// `ca.pem`, `ca.key`, and `<region>.pem`, `<region>.key` per region. Refuses, before writing
/// anything, if one of these files exists, unless `force`.
pub fn write_cluster(
    dir: &Path,
    plan: &ClusterCerts,
    now: SystemTime,
    force: bool,
) -> Result<Vec<Written>> {
    if plan.regions.is_empty() {
        return Err(tls_err("no region to issue a certificate for"));
    }
    // Check both validities before making anything.
    for (what, days) in [("--days", plan.days), ("--ca-days", plan.ca_days)] {
        if days == 0 || days > MAX_DAYS {
            return Err(tls_err(format!("{what} {days}: use 1 to {MAX_DAYS} days")));
        }
    }
    if plan.days > plan.ca_days {
        return Err(tls_err(format!(
            "region certificates valid for {} days would outlive the CA ({} days)",
            plan.days, plan.ca_days
        )));
    }
    let mut files: Vec<(PathBuf, bool, String)> = vec![
        (
            dir.join(CA_CERT_FILE),
            false,
            "cluster CA certificate".into(),
        ),
        (dir.join(CA_KEY_FILE), true, "cluster CA key".into()),
    ];
    for r in &plan.regions {
        files.push((
            dir.join(region_cert_file(r)),
            false,
            format!("{r} certificate, for {r}{NAME_SUFFIX}"),
        ));
        files.push((dir.join(region_key_file(r)), true, format!("{r} key")));
    }
    if !force {
        refuse_existing(&files, "every region then needs its new certificate")?;
    }
    let ca = ClusterCa::generate(&plan.cluster, now, plan.ca_days)?;
    let mut contents = vec![ca.pem().cert.clone(), ca.pem().key.clone()];
    for r in &plan.regions {
        let pem = ca.issue(r, now, plan.days)?;
        contents.push(pem.cert);
        contents.push(pem.key);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| tls_err(format!("cannot create {}: {e}", dir.display())))?;
    let mut written = Vec::with_capacity(files.len());
    for ((path, secret, what), text) in files.into_iter().zip(contents) {
        write_file(&path, text.as_bytes(), secret)?;
        written.push(Written { path, secret, what });
    }
    Ok(written)
}

/// The first certificate of a PEM text read from `path`.
fn first_cert(pem: &str, path: &Path) -> Result<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| {
            tls_err(format!(
                "{}: no certificate (no `BEGIN CERTIFICATE` block)",
                path.display()
            ))
        })?
        .map_err(|e| tls_err(format!("{}: not a valid PEM file: {e}", path.display())))
}

/// Issues a certificate for `region` from the cluster CA in `dir` (`ca.pem`, `ca.key`, as
/// [`write_cluster`] wrote them for cluster `cluster`) and writes it next to the CA as
/// `<region>.pem` and `<region>.key`, under [`write_cluster`]'s rules (key mode 0600, written
/// whole, no existing file replaced unless `force`): what `atoll certs issue` does for a region
/// added to a running cluster. Before writing anything it checks the CA ([`ClusterCa::load`]) and
/// that the new certificate is one the cluster's regions accept from `region` (signed by the CA,
/// valid now, for `<region>.atoll`, as a server and as a client). The CA's own expiry is not
/// compared with the certificate's: it cannot be read back here (no certificate parser), and
/// the regions' verifier (rustls with webpki) does not check a trust anchor's validity period.
pub fn issue_region(
    dir: &Path,
    cluster: &str,
    region: &RegionId,
    now: SystemTime,
    days: u32,
    force: bool,
) -> Result<Vec<Written>> {
    if days == 0 || days > MAX_DAYS {
        return Err(tls_err(format!("--days {days}: use 1 to {MAX_DAYS} days")));
    }
    let files = [
        (
            dir.join(region_cert_file(region)),
            false,
            format!("{region} certificate, for {region}{NAME_SUFFIX}"),
        ),
        (
            dir.join(region_key_file(region)),
            true,
            format!("{region} key"),
        ),
    ];
    if !force {
        refuse_existing(
            &files,
            &format!("region {region} then needs a restart to use its new certificate"),
        )?;
    }
    let ca = ClusterCa::load(dir, cluster)?;
    let ca_path = dir.join(CA_CERT_FILE);
    let ca_der = first_cert(&ca.pem().cert, &ca_path)?;
    let pem = ca.issue(region, now, days)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err(format!("the certificate issued for {region}: {e}")))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|e| tls_err(format!("the key made for {region}: {e}")))?;
    RegionTls::from_der(region, std::slice::from_ref(&ca_der), chain, key, now).map_err(|e| {
        tls_err(format!(
            "the certificate issued for {region} does not verify against {}: {e}",
            ca_path.display()
        ))
    })?;
    let mut written = Vec::with_capacity(files.len());
    for ((path, secret, what), text) in files.into_iter().zip([pem.cert, pem.key]) {
        write_file(&path, text.as_bytes(), secret)?;
        written.push(Written { path, secret, what });
    }
    Ok(written)
}

/// Refuses, before anything is written, if one of `files` (path, secret, what) exists: `--force`
/// replaces them, and `then` says what that costs.
fn refuse_existing(files: &[(PathBuf, bool, String)], then: &str) -> Result<()> {
    let existing: Vec<String> = files
        .iter()
        .filter(|(p, _, _)| p.symlink_metadata().is_ok())
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    Err(tls_err(format!(
        "refusing to overwrite {} (pass --force to replace them: {then})",
        existing.join(", ")
    )))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, renamed into place;
/// `secret` files are readable by their owner only.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let fail = |e: std::io::Error| tls_err(format!("cannot write {}: {e}", path.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // The mode given to open() is filtered by the umask and ignored for an existing
            // file: set it explicitly.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(if secret {
                0o600
            } else {
                0o644
            }))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// The UTC date of `t` (`2026-05-01`), for messages about validity.
pub fn date(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).date().to_string()
}
