//! `atoll certs init` and `atoll certs issue`, and the certificate checks of `atoll config check`.

use anyhow::{Context, Result};
use atoll_config::{Config, PeerTls};
use atoll_core::RegionId;
use atoll_tls::certs::{
    CA_CERT_FILE, CA_KEY_FILE, ClusterCerts, Written, issue_region, region_cert_file,
    region_key_file, write_cluster,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes a CA and a certificate per region of `config` into `out`, then says what to put in
/// the config (or that it already points there).
pub fn init(config: &Path, out: &Path, days: u32, ca_days: u32, force: bool) -> Result<()> {
    let cfg = Config::load(config).map_err(anyhow::Error::msg)?;
    // The arbiter, if any, gets a certificate like a region's (`<name>.atoll`).
    let regions: Vec<RegionId> = cfg
        .regions
        .iter()
        .map(|r| r.name.clone())
        .chain(cfg.cluster.arbiter.as_ref().map(|a| a.name.clone()))
        .collect();
    let plan = ClusterCerts {
        cluster: cfg.cluster.name.clone(),
        regions: regions.clone(),
        days,
        ca_days,
    };
    let now = atoll_core::clock::system_time(&atoll_core::clock::SystemClock);
    let written = write_cluster(out, &plan, now, force)
        .map_err(|e| anyhow::anyhow!("{e} ({}): {}", e.code(), e.hint()))?;
    let until = |d: u32| atoll_tls::certs::date(now + Duration::from_secs(u64::from(d) * 86_400));
    println!(
        "wrote the certificates of cluster {}: CA valid for {ca_days} days (until {}), region certificates for {days} days (until {})",
        cfg.cluster.name,
        until(ca_days),
        until(days)
    );
    print_written(&written);
    println!();
    if points_at(&cfg, out) {
        println!(
            "{}'s [cluster.tls] already points at these files.",
            config.display()
        );
    } else {
        let dir = relative_to_config(config, out)?;
        let path = |file: &str| {
            let p = dir.join(file);
            format!("{:?}", p.display().to_string())
        };
        if cfg.cluster.tls == PeerTls::Insecure {
            println!(
                "{} runs with insecure = true: replace its [cluster.tls] section with",
                config.display()
            );
        } else {
            println!("add to {} (relative to its directory):", config.display());
        }
        println!(
            "\n[cluster.tls]\nca = {}\ncert = {}\nkey = {}",
            path(CA_CERT_FILE),
            path("{region}.pem"),
            path("{region}.key")
        );
        let shared: Vec<&str> = cfg
            .regions
            .iter()
            .filter(|r| r.peer == r.api)
            .map(|r| r.name.as_str())
            .collect();
        if !shared.is_empty() {
            println!(
                "\nand give {} a `peer` address of its own (the peer listener, which speaks mutual TLS)",
                shared.join(", ")
            );
        }
    }
    println!(
        "\n{} is needed only to issue certificates again: keep it off the regions' machines.",
        out.join(CA_KEY_FILE).display()
    );
    Ok(())
}

/// One line per file written: its path, what it is, and its mode if it is a key.
fn print_written(written: &[Written]) {
    let width = written
        .iter()
        .map(|w| w.path.display().to_string().chars().count())
        .max()
        .unwrap_or(0);
    for w in written {
        println!(
            "  {:<width$}  {}{}",
            w.path.display().to_string(),
            w.what,
            if w.secret { ", mode 0600" } else { "" },
        );
    }
}

/// `atoll certs issue`: a certificate for `region` from the cluster CA in `ca_dir`, the cluster
/// named by `config`; then what else adding the region takes.
pub fn issue(config: &Path, ca_dir: &Path, region: &str, days: u32, force: bool) -> Result<()> {
    let cfg = Config::load(config).map_err(anyhow::Error::msg)?;
    let region = RegionId::new(region).map_err(|_| {
        anyhow::anyhow!(
            "--region `{region}` is not a valid region name: use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        )
    })?;
    let now = atoll_core::clock::system_time(&atoll_core::clock::SystemClock);
    let written = issue_region(ca_dir, &cfg.cluster.name, &region, now, days, force)
        .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
    let until = atoll_tls::certs::date(now + Duration::from_secs(u64::from(days) * 86_400));
    println!(
        "issued {region}'s certificate from the CA of cluster {} ({}), valid for {days} days (until {until}):",
        cfg.cluster.name,
        ca_dir.join(CA_CERT_FILE).display()
    );
    print_written(&written);
    if let PeerTls::Mutual(files) = &cfg.cluster.tls {
        let (cert, key) = (
            files.cert_for(region.as_str()),
            files.key_for(region.as_str()),
        );
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        let wrote = |p: &Path| written.iter().any(|w| same(p, &w.path));
        if !wrote(&cert) || !wrote(&key) {
            println!(
                "\nnote: {}'s [cluster.tls] names {} and {} for {region}: copy the files there",
                config.display(),
                cert.display(),
                key.display()
            );
        }
    }
    match cfg.region(region.as_str()) {
        Some(r) if r.voter => println!(
            "\n{region} is a region of {}: restart it to use its new certificate.",
            config.display()
        ),
        Some(_) => println!(
            "\n{region} is in {} already (voter = false): start it with that config and an empty\ndata directory, then reload every running region (kill -HUP <pid>).",
            config.display()
        ),
        None => println!(
            "\nNext (docs/design/adding-regions.md): append to {} on every host\n\n[[regions]]\nname = \"{region}\"\napi = \"<ip:port>\"\npeer = \"<ip:port>\"\nvoter = false\n\nthen start {region} with that config and an empty data directory, and reload every\nrunning region (kill -HUP <pid>): {region} takes writes once all of them have.",
            config.display()
        ),
    }
    Ok(())
}

/// Whether `cfg`'s `[cluster.tls]` names exactly the files `init` wrote into `out`.
fn points_at(cfg: &Config, out: &Path) -> bool {
    let PeerTls::Mutual(files) = &cfg.cluster.tls else {
        return false;
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    same(&files.ca, &out.join(CA_CERT_FILE))
        && cfg.regions.iter().all(|r| {
            same(
                &files.cert_for(r.name.as_str()),
                &out.join(region_cert_file(&r.name)),
            ) && same(
                &files.key_for(r.name.as_str()),
                &out.join(region_key_file(&r.name)),
            )
        })
}

/// `out` as the config should name it: relative to the config file's directory when inside
/// it, absolute otherwise.
fn relative_to_config(config: &Path, out: &Path) -> Result<PathBuf> {
    let out = out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", out.display()))?;
    let base = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .canonicalize()
        .with_context(|| format!("cannot resolve the directory of {}", config.display()))?;
    Ok(match out.strip_prefix(&base) {
        Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
        Ok(rel) => rel.to_path_buf(),
        Err(_) => out,
    })
}

/// For `atoll config check`: every region's TLS files, loaded and checked as `atoll region`
/// would. A problem is a warning, not an error: the config may be checked on a machine that
/// holds no certificates (or only its own).
pub fn check_files(cfg: &Config) -> Vec<String> {
    let PeerTls::Mutual(files) = &cfg.cluster.tls else {
        return Vec::new();
    };
    let now = atoll_core::clock::system_time(&atoll_core::clock::SystemClock);
    cfg.regions
        .iter()
        .filter_map(|r| {
            atoll_tls::RegionTls::load(
                &r.name,
                &files.ca,
                &files.cert_for(r.name.as_str()),
                &files.key_for(r.name.as_str()),
                now,
            )
            .err()
            .map(|e| {
                format!(
                    "region {} cannot start with these TLS files: {e} (`atoll certs init` creates them)",
                    r.name
                )
            })
        })
        .collect()
}
