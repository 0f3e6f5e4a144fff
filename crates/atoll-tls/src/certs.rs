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
//! told to.

use crate::{NAME_SUFFIX, peer_name, tls_err};
use atoll_core::{RegionId, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
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

impl ClusterCa {
    /// A new CA for cluster `cluster`, valid from `now` for `days` days.
    pub fn generate(cluster: &str, now: SystemTime, days: u32) -> Result<ClusterCa> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("atoll cluster {cluster} CA"));
        dn.push(DnType::OrganizationName, "atoll");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
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
        let existing: Vec<String> = files
            .iter()
            .filter(|(p, _, _)| p.symlink_metadata().is_ok())
            .map(|(p, _, _)| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(tls_err(format!(
                "refusing to overwrite {} (pass --force to replace them: every region then needs its new certificate)",
                existing.join(", ")
            )));
        }
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
