//! End-to-end tests of the command line: `atoll config check`, the client commands
//! (`atoll kv|counter|set`, human and `--output json`) against a running region, and the ways
//! `atoll region` refuses to start (unknown region, bad config, a data directory of a newer
//! format or of another region), and client authentication (`[auth]`, `--token`, `ATOLL_TOKEN`).

// Certificates are valid from the real time of day: these tests read the wall clock.
#![allow(clippy::disallowed_methods)]

use crate::common;

use anyhow::{Context, Result, anyhow, ensure};
use atoll_testkit::process::START_TIMEOUT;
use atoll_testkit::{RegionProcess, TestDir, run_with_timeout, test_dir};
use common::{BIN, CONFIG, REGION, ok};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Longest any one CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// `atoll ARGS...` with a clean environment for the client (no inherited endpoint, no colours).
fn atoll(args: &[&str]) -> Output {
    run_atoll(args, None)
}

/// `atoll ARGS...` with `ATOLL_TOKEN` set.
fn atoll_with_token(args: &[&str], token: &str) -> Output {
    run_atoll(args, Some(token))
}

/// `atoll ARGS...` without an inherited endpoint or colours, with `ATOLL_TOKEN` set to `token`
/// or unset.
fn run_atoll(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("ATOLL_ENDPOINT")
        .env("NO_COLOR", "1");
    match token {
        Some(t) => cmd.env("ATOLL_TOKEN", t),
        None => cmd.env_remove("ATOLL_TOKEN"),
    };
    ok(run_with_timeout(cmd, CLI_TIMEOUT))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the command exited 0; shows both streams.
#[track_caller]
fn succeeded(o: &Output) -> String {
    assert!(
        o.status.success(),
        "expected success, got {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Fails unless the command exited non-zero with an error (not a crash); returns its stderr.
#[track_caller]
fn failed(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit code 1, got {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

#[track_caller]
fn json_of(o: &Output) -> Value {
    let text = succeeded(o);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// atoll config check

#[test]
fn config_check_accepts_the_example_and_lists_its_keyspaces() {
    let out = succeeded(&atoll(&["config", "check", CONFIG]));
    assert!(out.contains(": OK"), "{out}");
    assert!(out.contains("keyspaces (5)"), "{out}");
    for (name, policy) in [
        ("sessions", "lww"),
        ("carts", "mvr"),
        ("ratelimits", "counter"),
        ("flags", "set"),
        ("api-quota", "ratelimit"),
    ] {
        assert!(
            out.lines().any(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(name) && words.next() == Some(policy)
            }),
            "no line `{name} {policy}` in:\n{out}"
        );
    }
    assert!(out.contains("us-east-1"), "{out}");
}

const BASE: &str = r#"[cluster]
name = "cli-test"

[[regions]]
name = "us-east-1"
api = "127.0.0.1:7100"

[[keyspaces]]
name = "sessions"
policy = "lww"
"#;

/// A second region for [`BASE`] (no `[cluster.tls]`: two regions then need one).
const EU_WEST: &str = "\n[[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\n";

/// `atoll region` on `config` must refuse to start (exit 1) before it creates `data`; returns
/// its stderr.
#[track_caller]
fn region_refused(config: &str, data: &Path, label: &str) -> String {
    let err = failed(&atoll(&[
        "region",
        "--config",
        config,
        "--region",
        REGION,
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]));
    assert!(
        !data.exists(),
        "{label}: a refused region created its data directory"
    );
    err
}

/// 1-based line of the `nth` (0-based) line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` #{nth} not in the config"))
}

struct BadConfig {
    file: &'static str,
    text: String,
    /// (needle, nth occurrence): the line the error must point at.
    line: (&'static str, usize),
    /// What stderr must say, besides `file:line`.
    says: &'static [&'static str],
}

fn bad_configs() -> Vec<BadConfig> {
    vec![
        BadConfig {
            file: "duplicate-region.toml",
            text: format!("{BASE}\n[[regions]]\nname = \"us-east-1\"\napi = \"127.0.0.1:7101\"\n"),
            line: ("name = \"us-east-1\"", 1),
            says: &["`regions[1].name`", "duplicate region name `us-east-1`"],
        },
        BadConfig {
            file: "duplicate-keyspace.toml",
            text: format!("{BASE}\n[[keyspaces]]\nname = \"sessions\"\npolicy = \"set\"\n"),
            line: ("name = \"sessions\"", 1),
            says: &["`keyspaces[1].name`", "duplicate keyspace name `sessions`"],
        },
        BadConfig {
            file: "unknown-policy.toml",
            text: BASE.replace("policy = \"lww\"", "policy = \"last-writer\""),
            line: ("policy = ", 0),
            says: &["`keyspaces[0].policy`", "last-writer", "lww"],
        },
        BadConfig {
            file: "bad-address.toml",
            text: BASE.replace("127.0.0.1:7100", "localhost:7100"),
            line: ("api = ", 0),
            says: &["`regions[0].api`", "localhost"],
        },
        BadConfig {
            file: "unknown-key.toml",
            text: BASE.replace(
                "name = \"cli-test\"",
                "name = \"cli-test\"\nflavour = \"x\"",
            ),
            line: ("flavour", 0),
            says: &["`cluster.flavour`", "unknown field"],
        },
        BadConfig {
            file: "syntax.toml",
            text: BASE.replace("[[keyspaces]]", "[[keyspaces]"),
            line: ("[[keyspaces]", 0),
            says: &["syntax"],
        },
    ]
}

#[test]
fn config_check_rejects_bad_configs_naming_file_line_and_key() {
    let dir = ok(test_dir("cli-config").map_err(Into::into));
    for bad in bad_configs() {
        let path = dir.join(bad.file);
        std::fs::write(&path, &bad.text).unwrap();
        let path_s = path.to_str().unwrap();
        let err = failed(&atoll(&["config", "check", path_s]));
        let line = line_of(&bad.text, bad.line.0, bad.line.1);
        let place = format!("{path_s}:{line}:");
        assert!(
            err.contains(&place),
            "{}: stderr does not point at {place}\n{err}",
            bad.file
        );
        for s in bad.says {
            assert!(
                err.contains(s),
                "{}: stderr does not mention {s}\n{err}",
                bad.file
            );
        }
        assert!(
            !err.contains("panicked"),
            "{}: the CLI panicked:\n{err}",
            bad.file
        );

        // `atoll region` refuses the same file with the same message, before touching any data.
        let data = dir.join(&format!("{}-data", bad.file));
        let err = region_refused(path_s, &data, bad.file);
        assert!(err.contains(&place), "{}: region: {err}", bad.file);
    }
    let missing = dir.join("missing.toml");
    let err = failed(&atoll(&["config", "check", missing.to_str().unwrap()]));
    assert!(
        err.contains("missing.toml") && err.contains("cannot read"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// [cluster.tls] and atoll certs init

const THREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/three-regions.toml");

#[test]
fn several_regions_without_cluster_tls_are_refused_and_insecure_is_warned_about() {
    let dir = ok(test_dir("cli-tls-config").map_err(Into::into));
    let two = format!("{BASE}{EU_WEST}");
    let path = dir.join("two.toml");
    std::fs::write(&path, &two).unwrap();
    let path_s = path.to_str().unwrap();
    let err = failed(&atoll(&["config", "check", path_s]));
    for needle in [
        "`cluster.tls`",
        "atoll certs init --config",
        "insecure = true",
    ] {
        assert!(err.contains(needle), "`{needle}` not in:\n{err}");
    }
    // The region refuses to start with the same message, before touching its data.
    let err = region_refused(path_s, &dir.join("data"), "no [cluster.tls]");
    assert!(err.contains("atoll certs init --config"), "{err}");

    std::fs::write(&path, format!("{two}\n[cluster.tls]\ninsecure = true\n")).unwrap();
    let out = succeeded(&atoll(&["config", "check", path_s]));
    assert!(out.contains("INSECURE"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("warning: [cluster.tls] insecure = true")),
        "{out}"
    );
}

#[test]
fn certs_init_writes_what_the_config_needs_and_refuses_to_overwrite() {
    let dir = ok(test_dir("cli-certs").map_err(Into::into));
    let config = dir.join("three-regions.toml");
    std::fs::copy(THREE, &config).unwrap();
    let config_s = config.to_str().unwrap();
    let out_dir = dir.join("certs");
    let out_s = out_dir.to_str().unwrap();

    let help = succeeded(&atoll(&["certs", "init", "--help"]));
    assert!(
        help.contains(
            "Example:\n  atoll certs init --config examples/three-regions.toml --out examples/certs"
        ),
        "{help}"
    );

    // Before: `config check` says the files are missing (a warning: this machine may hold none).
    let out = succeeded(&atoll(&["config", "check", config_s]));
    assert!(
        out.contains("warning: region us-east-1 cannot start with these TLS files"),
        "{out}"
    );

    let out = succeeded(&atoll(&[
        "certs", "init", "--config", config_s, "--out", out_s,
    ]));
    assert!(out.contains("already points at these files"), "{out}");
    assert!(out.contains("region certificates for 365 days"), "{out}");
    let now = std::time::SystemTime::now();
    for r in ["us-east-1", "eu-west-1", "ap-southeast-1"] {
        let id = atoll_core::RegionId::new(r).unwrap();
        let tls = atoll_tls::RegionTls::load(
            &id,
            &out_dir.join("ca.pem"),
            &out_dir.join(format!("{r}.pem")),
            &out_dir.join(format!("{r}.key")),
            now,
        );
        assert!(tls.is_ok(), "{r}: {tls:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out_dir.join(format!("{r}.key")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{r}.key");
        }
    }
    // `config check` now loads every region's files without a warning.
    let out = succeeded(&atoll(&["config", "check", config_s]));
    assert!(!out.contains("cannot start"), "{out}");

    // A second run refuses and changes nothing; --force replaces everything.
    let ca = std::fs::read(out_dir.join("ca.pem")).unwrap();
    let err = failed(&atoll(&[
        "certs", "init", "--config", config_s, "--out", out_s,
    ]));
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(out_dir.join("ca.pem")).unwrap(), ca);
    succeeded(&atoll(&[
        "certs", "init", "--config", config_s, "--out", out_s, "--force", "--days", "30",
    ]));
    assert_ne!(std::fs::read(out_dir.join("ca.pem")).unwrap(), ca);

    // Somewhere the config does not point at: it prints the lines to add.
    let elsewhere = dir.join("conf");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let plain = elsewhere.join("atoll.toml");
    std::fs::write(&plain, format!("{BASE}{EU_WEST}")).unwrap();
    let out = succeeded(&atoll(&[
        "certs",
        "init",
        "--config",
        plain.to_str().unwrap(),
        "--out",
        elsewhere.join("tls").to_str().unwrap(),
    ]));
    assert!(
        out.contains("[cluster.tls]\nca = \"tls/ca.pem\"\ncert = \"tls/{region}.pem\"\nkey = \"tls/{region}.key\""),
        "{out}"
    );
    assert!(
        out.contains("give us-east-1, eu-west-1 a `peer` address"),
        "{out}"
    );
}

/// `atoll certs issue`, as the README prints it after `atoll certs init`: a certificate for a
/// region added later, from the CA of the config's cluster; refused (nothing written) for
/// another cluster's config, a bad name, or files that exist.
#[test]
fn certs_issue_adds_a_region_certificate_from_the_ca_of_the_configs_cluster() {
    let dir = ok(test_dir("cli-certs-issue").map_err(Into::into));
    let config = dir.join("three-regions.toml");
    std::fs::copy(THREE, &config).unwrap();
    let config_s = config.to_str().unwrap();
    let certs = dir.join("certs");
    let certs_s = certs.to_str().unwrap();
    succeeded(&atoll(&[
        "certs", "init", "--config", config_s, "--out", certs_s,
    ]));
    let help = succeeded(&atoll(&["certs", "issue", "--help"]));
    assert!(
        help.contains("Example:\n  atoll certs issue --ca-dir examples/certs --region sa-east-1 --config examples/three-regions.toml"),
        "{help}"
    );

    let issue = |region: &str, config: &str, extra: &[&str]| {
        let mut args = vec![
            "certs", "issue", "--ca-dir", certs_s, "--region", region, "--config", config,
        ];
        args.extend_from_slice(extra);
        atoll(&args)
    };
    let out = succeeded(&issue("sa-east-1", config_s, &[]));
    assert!(
        out.contains("issued sa-east-1's certificate from the CA of cluster atoll-three"),
        "{out}"
    );
    assert!(out.contains("voter = false"), "{out}");
    let sa = atoll_core::RegionId::new("sa-east-1").unwrap();
    let tls = atoll_tls::RegionTls::load(
        &sa,
        &certs.join("ca.pem"),
        &certs.join("sa-east-1.pem"),
        &certs.join("sa-east-1.key"),
        std::time::SystemTime::now(),
    );
    assert!(tls.is_ok(), "{tls:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("sa-east-1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Again: refused without --force, nothing changed; replaced with it.
    let before = std::fs::read(certs.join("sa-east-1.pem")).unwrap();
    let err = failed(&issue("sa-east-1", config_s, &[]));
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(certs.join("sa-east-1.pem")).unwrap(), before);
    succeeded(&issue("sa-east-1", config_s, &["--force", "--days", "30"]));
    assert_ne!(std::fs::read(certs.join("sa-east-1.pem")).unwrap(), before);

    // The config of another cluster: its CA is not this one.
    let other = dir.join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&config).unwrap().replacen(
            "name = \"atoll-three\"",
            "name = \"elsewhere\"",
            1,
        ),
    )
    .unwrap();
    let err = failed(&issue("eu-central-1", other.to_str().unwrap(), &[]));
    assert!(
        err.contains("is not the CA of cluster `elsewhere`")
            && err.contains("(it is `atoll cluster atoll-three CA`)"),
        "{err}"
    );
    let err = failed(&issue("Not_A_Region", config_s, &[]));
    assert!(err.contains("is not a valid region name"), "{err}");
    assert!(!certs.join("eu-central-1.pem").exists());
}

// ---------------------------------------------------------------------------------------------
// atoll region refusing to start

#[test]
fn region_with_an_unknown_name_is_refused_naming_it() {
    let dir = ok(test_dir("cli-unknown-region").map_err(Into::into));
    let data = dir.join("data");
    let err = match RegionProcess::start(BIN, CONFIG, "eu-west-9", &data) {
        Ok(_) => panic!("a region not in the config started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited before listening"), "{err}");
    assert!(err.contains("region `eu-west-9` is not declared"), "{err}");
    assert!(
        err.contains("us-east-1"),
        "the error should list the declared regions: {err}"
    );
    assert!(
        !data.exists(),
        "an unknown region created its data directory"
    );
}

/// Starts a region on `dir/data`, writes one key, stops it cleanly.
fn seed_data_dir(dir: &TestDir, config: &str, region: &str) -> Result<()> {
    let mut r = RegionProcess::start(BIN, config, region, dir.join("data"))?;
    let out = atoll(&[
        "kv",
        "put",
        "sessions",
        "k",
        "v",
        "--endpoint",
        &r.endpoint(),
    ]);
    succeeded(&out);
    let exit = r.terminate()?;
    ensure!(exit.code() == Some(0), "{exit}");
    Ok(())
}

/// Writes `format_version = 99` into the data directory's metadata, as a newer build would.
fn forge_newer_format(data: &Path) -> Result<()> {
    use atoll_store::backend::{Backend, FjallBackend, Mutation, Table};
    let backend = FjallBackend::open(data).map_err(|e| anyhow!("{e}"))?;
    let current = backend
        .get(Table::Meta, atoll_store::keys::META_FORMAT)
        .map_err(|e| anyhow!("{e}"))?
        .context("a started region wrote its format version")?;
    let version: u16 = atoll_core::codec::decode(&current).map_err(|e| anyhow!("{e}"))?;
    ensure!(
        version == atoll_store::store::STORE_FORMAT_VERSION,
        "unexpected format version {version}"
    );
    let newer = atoll_core::codec::encode(&99u16).map_err(|e| anyhow!("{e}"))?;
    backend
        .commit(
            vec![Mutation::Put(
                Table::Meta,
                atoll_store::keys::META_FORMAT.to_vec(),
                newer,
            )],
            true,
        )
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[test]
fn data_dir_of_a_newer_format_is_refused() {
    let dir = ok(test_dir("cli-format").map_err(Into::into));
    ok(seed_data_dir(&dir, CONFIG, REGION));
    ok(forge_newer_format(&dir.join("data")));
    let err = match RegionProcess::start(BIN, CONFIG, REGION, dir.join("data")) {
        Ok(_) => panic!("a region started on a data directory of format version 99"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("ATOLL-FORMAT-TOO-NEW"), "{err}");
    assert!(err.contains("version 99"), "{err}");
    assert!(err.contains("exited before listening"), "{err}");
}

#[test]
fn data_dir_of_another_region_is_refused() {
    let dir = ok(test_dir("cli-owner").map_err(Into::into));
    let config = dir.join("two-regions.toml");
    let text = format!(
        "{}{EU_WEST}\n[cluster.tls]\ninsecure = true\n",
        std::fs::read_to_string(CONFIG).unwrap()
    );
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    ok(seed_data_dir(&dir, config, "us-east-1"));
    let err = match RegionProcess::start(BIN, config, "eu-west-1", dir.join("data")) {
        Ok(_) => panic!("eu-west-1 started on us-east-1's data directory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("belongs to region `us-east-1`, not `eu-west-1`"),
        "{err}"
    );
    // The rightful owner still opens it, with its data.
    let mut r = ok(RegionProcess::start(
        BIN,
        config,
        "us-east-1",
        dir.join("data"),
    ));
    let out = succeeded(&atoll(&[
        "kv",
        "get",
        "sessions",
        "k",
        "--endpoint",
        &r.endpoint(),
    ]));
    assert_eq!(out, "v\n");
    assert_eq!(ok(r.terminate()).code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Client commands against a running region

/// Runs `atoll <args> --endpoint E` (human output).
fn cli(r: &RegionProcess, args: &[&str]) -> Output {
    let e = r.endpoint();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--endpoint", &e]);
    atoll(&all)
}

/// Runs `atoll <args> --endpoint E --output json`.
fn cli_json(r: &RegionProcess, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--output", "json"]);
    cli(r, &all)
}

fn region_for_cli(name: &str) -> (TestDir, RegionProcess) {
    let dir = ok(test_dir(name).map_err(Into::into));
    let r = ok(RegionProcess::start(BIN, CONFIG, REGION, dir.join("data")));
    (dir, r)
}

#[test]
fn kv_commands_in_human_and_json_output() {
    let (_dir, r) = region_for_cli("cli-kv");

    // put / get (human)
    let out = succeeded(&cli(
        &r,
        &["kv", "put", "sessions", "user-1", "hello world"],
    ));
    assert!(
        out.starts_with("ok: written in us-east-1 (seq 1, timestamp "),
        "{out}"
    );
    let got = cli(&r, &["kv", "get", "sessions", "user-1"]);
    assert_eq!(succeeded(&got), "hello world\n");

    // put / get (json)
    let v = json_of(&cli_json(
        &r,
        &["kv", "put", "sessions", "user-2", "second"],
    ));
    assert_eq!(v["region"], "us-east-1");
    assert_eq!(v["seq"], 2);
    assert!(
        v["timestamp"].as_str().is_some_and(|t| t.contains('.')),
        "{v}"
    );
    let v = json_of(&cli_json(&r, &["kv", "get", "sessions", "user-2"]));
    assert_eq!(v["status"], 200);
    assert_eq!(v["value"], "second");
    assert_eq!(v["region"], "us-east-1");
    assert!(v["timestamp"].as_str().is_some(), "{v}");

    // A key with '/' and spaces goes through the path encoding both ways.
    succeeded(&cli(&r, &["kv", "put", "sessions", "a/b c", "odd key"]));
    assert_eq!(
        succeeded(&cli(&r, &["kv", "get", "sessions", "a/b c"])),
        "odd key\n"
    );

    // del
    let out = succeeded(&cli(&r, &["kv", "del", "sessions", "user-1"]));
    assert!(out.starts_with("ok: deleted in us-east-1 (seq 4)"), "{out}");
    let v = json_of(&cli_json(&r, &["kv", "del", "sessions", "user-2"]));
    assert_eq!(v["seq"], 5);
    for key in ["user-1", "user-2", "never-written"] {
        let err = failed(&cli(&r, &["kv", "get", "sessions", key]));
        assert!(
            err.contains("ATOLL-NOT-FOUND") && err.contains("404"),
            "{key}: {err}"
        );
    }

    // mvr: siblings, then a write with the context resolves them.
    succeeded(&cli(&r, &["kv", "put", "carts", "cart-7", "apple"]));
    succeeded(&cli(&r, &["kv", "put", "carts", "cart-7", "pear"]));
    let out = succeeded(&cli(&r, &["kv", "get", "carts", "cart-7"]));
    assert!(out.starts_with("2 concurrent values (siblings)"), "{out}");
    assert!(out.contains("- apple") && out.contains("- pear"), "{out}");
    let v = json_of(&cli_json(&r, &["kv", "get", "carts", "cart-7"]));
    assert_eq!(v["status"], 300);
    let mut values: Vec<&str> = v["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["value"].as_str().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, ["apple", "pear"]);
    let context = v["context"].as_str().expect("context").to_string();
    // The human output shows the same context.
    assert!(out.contains(&format!("context: {context}")), "{out}");
    let v = json_of(&cli_json(
        &r,
        &[
            "kv",
            "put",
            "carts",
            "cart-7",
            "apple+pear",
            "--context",
            &context,
        ],
    ));
    assert!(
        v["context"].as_str().is_some(),
        "mvr acks carry a context: {v}"
    );
    let v = json_of(&cli_json(&r, &["kv", "get", "carts", "cart-7"]));
    assert_eq!(
        (v["status"].as_u64(), v["value"].as_str()),
        (Some(200), Some("apple+pear"))
    );
    // A context from another key is refused.
    let other = json_of(&cli_json(&r, &["kv", "get", "carts", "cart-7"]))["context"]
        .as_str()
        .unwrap()
        .to_string();
    let err = failed(&cli(
        &r,
        &["kv", "put", "carts", "cart-8", "x", "--context", &other],
    ));
    assert!(err.contains("ATOLL-BAD-CONTEXT"), "{err}");

    // Errors name their code: wrong policy, unknown keyspace, unreachable endpoint.
    let err = failed(&cli(&r, &["kv", "put", "ratelimits", "k", "v"]));
    assert!(
        err.contains("ATOLL-WRONG-POLICY") && err.contains("405"),
        "{err}"
    );
    let err = failed(&cli(&r, &["kv", "get", "nope", "k"]));
    assert!(
        err.contains("ATOLL-UNKNOWN-KEYSPACE") && err.contains("nope"),
        "{err}"
    );
    let err = failed(&atoll(&[
        "kv",
        "get",
        "sessions",
        "k",
        "--endpoint",
        "http://127.0.0.1:1",
        "--timeout",
        "5",
    ]));
    assert!(err.contains("cannot reach http://127.0.0.1:1"), "{err}");
}

#[test]
fn counter_commands_in_human_and_json_output() {
    let (_dir, r) = region_for_cli("cli-counter");
    assert_eq!(
        succeeded(&cli(&r, &["counter", "get", "ratelimits", "u1"])),
        "0\n"
    );
    assert_eq!(
        succeeded(&cli(&r, &["counter", "incr", "ratelimits", "u1"])),
        "1\n"
    );
    assert_eq!(
        succeeded(&cli(
            &r,
            &["counter", "incr", "ratelimits", "u1", "--by", "5"]
        )),
        "6\n"
    );
    let v = json_of(&cli_json(
        &r,
        &["counter", "incr", "ratelimits", "u1", "--by", "-10"],
    ));
    assert_eq!(v["value"], -4);
    assert_eq!(v["region"], "us-east-1");
    assert_eq!(v["seq"], 3);
    assert_eq!(
        succeeded(&cli(&r, &["counter", "get", "ratelimits", "u1"])),
        "-4\n"
    );
    let v = json_of(&cli_json(&r, &["counter", "get", "ratelimits", "u1"]));
    assert_eq!(v["value"], -4);
    let err = failed(&cli(&r, &["counter", "incr", "sessions", "u1"]));
    assert!(err.contains("ATOLL-WRONG-POLICY"), "{err}");
}

#[test]
fn set_commands_in_human_and_json_output() {
    let (_dir, r) = region_for_cli("cli-set");
    succeeded(&cli(
        &r,
        &[
            "set",
            "add",
            "flags",
            "beta",
            "dark-mode",
            "new-checkout",
            "x",
        ],
    ));
    let v = json_of(&cli_json(&r, &["set", "remove", "flags", "beta", "x"]));
    let mut m: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    m.sort();
    assert_eq!(m, ["dark-mode", "new-checkout"]);
    assert_eq!(v["seq"], 2);
    let out = succeeded(&cli(&r, &["set", "members", "flags", "beta"]));
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["dark-mode", "new-checkout"]);
    let v = json_of(&cli_json(&r, &["set", "members", "flags", "nobody"]));
    assert_eq!(v["members"], serde_json::json!([]));
    assert_eq!(
        succeeded(&cli(&r, &["set", "members", "flags", "nobody"])),
        ""
    );
    // `add` without members is a usage error (clap exits 2) and sends nothing.
    let out = cli(&r, &["set", "add", "flags", "beta"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = failed(&cli(&r, &["set", "add", "sessions", "beta", "m"]));
    assert!(err.contains("ATOLL-WRONG-POLICY"), "{err}");
}

#[test]
fn status_command_in_human_and_json_output() {
    let (_dir, r) = region_for_cli("cli-status");
    let out = succeeded(&cli(&r, &["status"]));
    assert!(
        out.starts_with("region us-east-1 of cluster atoll-single (active-active), serving"),
        "{out}"
    );
    let v = json_of(&cli_json(&r, &["status"]));
    assert_eq!(v["region"], "us-east-1");
    assert_eq!(v["serving"], true);
    assert_eq!(v["keyspaces"].as_array().map(Vec::len), Some(5));
}

/// The readiness deadline is what the harness waits for; make sure a region meets it
/// comfortably (a slow start would make every other test flaky).
#[test]
fn region_starts_well_within_the_readiness_deadline() {
    let dir = ok(test_dir("cli-start").map_err(Into::into));
    let started = std::time::Instant::now();
    let mut r = ok(RegionProcess::start(BIN, CONFIG, REGION, dir.join("data")));
    let took = started.elapsed();
    assert!(took < START_TIMEOUT / 2, "start took {took:?}");
    assert_eq!(ok(r.terminate()).code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Client authentication

/// The example config with `[auth]` naming a copy of `examples/tokens.toml` next to it.
fn config_with_auth(dir: &TestDir) -> String {
    let example = ok(std::fs::read_to_string(CONFIG).map_err(Into::into));
    let tokens = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tokens.toml");
    ok(std::fs::copy(tokens, dir.join("tokens.toml")).map_err(Into::into));
    let path = dir.join("atoll.toml");
    ok(std::fs::write(
        &path,
        format!("{example}\n[auth]\ntokens_file = \"tokens.toml\"\n"),
    )
    .map_err(Into::into));
    path.display().to_string()
}

#[test]
fn config_check_warns_about_an_open_api_and_lists_tokens() {
    let out = succeeded(&atoll(&["config", "check", CONFIG]));
    assert!(
        out.contains("warning: no [auth] section: the client API of every region is open"),
        "{out}"
    );
    let dir = ok(test_dir("cli-auth-check").map_err(Into::into));
    let cfg = config_with_auth(&dir);
    let out = succeeded(&atoll(&["config", "check", &cfg]));
    assert!(!out.contains("[auth] section"), "{out}");
    assert!(out.contains("auth tokens (3, from "), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["reporting", "*", "-"]),
        "{out}"
    );
    // A broken tokens file fails the check, naming the file, the line and the key.
    ok(std::fs::write(
        dir.join("tokens.toml"),
        "[[tokens]]\nname = \"a\"\nsha256 = \"plain-token\"\n",
    )
    .map_err(Into::into));
    let err = failed(&atoll(&["config", "check", &cfg]));
    assert!(
        err.contains("tokens.toml:3") && err.contains("tokens[0].sha256"),
        "{err}"
    );
}

#[test]
fn client_commands_send_the_token_and_show_refusals() {
    let dir = ok(test_dir("cli-auth").map_err(Into::into));
    let cfg = config_with_auth(&dir);
    let mut r = ok(RegionProcess::start(BIN, &cfg, REGION, dir.join("data")));
    let e = r.endpoint();
    // No token: 401, said plainly.
    let err = failed(&atoll(&[
        "kv",
        "put",
        "sessions",
        "k",
        "v",
        "--endpoint",
        &e,
    ]));
    assert!(err.contains("ATOLL-UNAUTHORIZED (HTTP 401)"), "{err}");
    assert!(
        err.contains("ATOLL_TOKEN"),
        "the hint names the variable: {err}"
    );
    let err = failed(&atoll(&["status", "--endpoint", &e]));
    assert!(err.contains("ATOLL-UNAUTHORIZED"), "{err}");
    let err = failed(&atoll(&[
        "kv",
        "get",
        "sessions",
        "k",
        "--endpoint",
        &e,
        "--token",
        "nope",
    ]));
    assert!(err.contains("ATOLL-UNAUTHORIZED"), "{err}");
    // --token: the operator writes.
    let out = succeeded(&atoll(&[
        "kv",
        "put",
        "sessions",
        "k",
        "v",
        "--endpoint",
        &e,
        "--token",
        "example-admin-token",
    ]));
    assert!(out.starts_with("ok: written in us-east-1"), "{out}");
    // ATOLL_TOKEN: the reporting token reads everything and writes nothing.
    let out = succeeded(&atoll_with_token(
        &["kv", "get", "sessions", "k", "--endpoint", &e],
        "example-reporting-token",
    ));
    assert_eq!(out, "v\n");
    let err = failed(&atoll_with_token(
        &["counter", "incr", "ratelimits", "k", "--endpoint", &e],
        "example-reporting-token",
    ));
    assert!(
        err.contains("ATOLL-FORBIDDEN (HTTP 403)")
            && err.contains("token `reporting` may not write"),
        "{err}"
    );
    // Status needs any valid token, even one without the right on every keyspace.
    succeeded(&atoll_with_token(
        &["status", "--endpoint", &e],
        "example-checkout-token",
    ));
    assert_eq!(ok(r.terminate()).code(), Some(0));
}

/// `atoll advise` against the decision table (`docs/design/advise.md`): each row's recommendation, and the
/// config it writes passes `atoll config check` (after `atoll certs init`, as its notes say) with
/// no warning but the open client API's, the 2-region strong group's where it has one, and none
/// about the rto it declares.
#[test]
fn advise_answers_the_decision_table_and_its_configs_pass_config_check() {
    let dir = ok(test_dir("cli-advise").map_err(Into::into));
    struct Row {
        label: &'static str,
        args: [&'static str; 4],
        model: &'static str,
        fencing: &'static str,
        arbiter: bool,
        cost: f64,
        extra_warning: Option<&'static str>,
    }
    let rows = [
        Row {
            label: "under-30s",
            args: ["20s", "none", "2", "2"],
            model: "active-active",
            fencing: "none",
            arbiter: false,
            cost: 2.0,
            extra_warning: None,
        },
        Row {
            label: "minutes",
            args: ["5m", "some", "1.5", "2"],
            model: "active-standby",
            fencing: "lease",
            arbiter: true,
            cost: 1.5,
            extra_warning: Some(
                "strong keyspaces are replicated by a group of the 2 voter regions",
            ),
        },
        Row {
            label: "hours",
            args: ["4h", "none", "1.3", "2"],
            model: "active-passive",
            fencing: "lease",
            arbiter: true,
            cost: 1.25,
            extra_warning: None,
        },
        Row {
            label: "never-conflict",
            args: ["20s", "ledger,profiles", "3", "3"],
            model: "active-active",
            fencing: "quorum",
            arbiter: false,
            cost: 3.0,
            extra_warning: None,
        },
    ];
    for r in &rows {
        let (label, model) = (r.label, r.model);
        let [rto, consistency, budget, regions] = r.args;
        let sub = dir.join(label);
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("atoll.toml");
        let path_s = path.to_str().unwrap();
        let advice = json_of(&advise(
            [rto, consistency, budget, regions],
            &["--write", path_s, "--output", "json"],
        ));
        assert_eq!(advice["model"], model, "{label}: {advice:#}");
        assert_eq!(
            advice["fencing"]["method"], r.fencing,
            "{label}: {advice:#}"
        );
        assert_eq!(
            advice["fencing"]["arbiter"].is_string(),
            r.arbiter,
            "{label}: {advice:#}"
        );
        assert_eq!(advice["cost_multiple"].as_f64(), Some(r.cost), "{label}");
        assert_eq!(advice["within_budget"], true, "{label}");
        assert_eq!(advice["written_to"], path_s, "{label}");
        let rule = advice["reasons"][0]["rule"].as_str().unwrap_or_default();
        assert!(rule.contains('→'), "{label}: the rule is quoted: {rule}");
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(advice["config"], written.as_str(), "{label}");

        succeeded(&atoll(&[
            "certs",
            "init",
            "--config",
            path_s,
            "--out",
            sub.join("certs").to_str().unwrap(),
        ]));
        let check = json_of(&atoll(&["config", "check", path_s, "--output", "json"]));
        assert_eq!(check["ok"], true, "{label}");
        assert_eq!(check["model"], model, "{label}");
        assert_eq!(check["promises"]["rto_ms"], duration_ms(rto), "{label}");
        let warnings: Vec<&str> = check["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter(|w| !w.starts_with("no [auth] section"))
            .collect();
        match r.extra_warning {
            None => assert!(warnings.is_empty(), "{label}: {warnings:?}"),
            Some(w) => assert!(
                warnings.len() == 1 && warnings[0].starts_with(w),
                "{label}: {warnings:?}"
            ),
        }
        // The human form says the same and ends in OK.
        let human = succeeded(&atoll(&["config", "check", path_s]));
        assert!(human.contains(": OK"), "{human}");
        assert!(
            human.contains(&format!("model                {model}")),
            "{label}: {human}"
        );
    }

    // Never overwrites; never guesses missing answers when it cannot ask (stdin is not a
    // terminal here).
    let path = dir.join("under-30s").join("atoll.toml");
    let before = std::fs::read_to_string(&path).unwrap();
    let err = failed(&advise(
        ["5m", "none", "2", "2"],
        &["--write", path.to_str().unwrap()],
    ));
    assert!(err.contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    let err = failed(&atoll(&["advise", "--rto", "5m"]));
    assert!(
        err.contains("missing --consistency, --budget, --regions"),
        "{err}"
    );
    let err = failed(&advise(["5m", "sessions", "2", "2"], &[]));
    assert!(err.contains("ATOLL-ADVISE-INPUT"), "{err}");
    let err = failed(&advise(["5m", "none", "0.5", "2"], &[]));
    assert!(
        err.contains("--budget") && err.contains("ATOLL-ADVISE-INPUT"),
        "{err}"
    );
}

/// `atoll advise --rto R --consistency C --budget B --regions N MORE...`.
fn advise([rto, consistency, budget, regions]: [&str; 4], more: &[&str]) -> Output {
    let mut args = vec![
        "advise",
        "--rto",
        rto,
        "--consistency",
        consistency,
        "--budget",
        budget,
        "--regions",
        regions,
    ];
    args.extend_from_slice(more);
    atoll(&args)
}

fn duration_ms(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "s" => 1_000,
        "m" => 60_000,
        _ => 3_600_000,
    }
}

/// `config check` shows the worst case of the classic Route 53 settings (interval 10 s,
/// threshold 3, TTL 30 s: 60 s, plus the check timeout and the resolver slack it states), and
/// warns when that is above the declared rto, in both output forms.
#[test]
fn config_check_computes_the_articles_dns_worst_case_and_warns_above_the_rto() {
    let dir = ok(test_dir("cli-promises").map_err(Into::into));
    let path = dir.join("article.toml");
    let text = |rto: &str| {
        format!(
            "{}\n[router]\n[router.health]\ninterval_ms = 10000\ntimeout_ms = 2000\nfailure_threshold = 3\n\n[[router.names]]\nname = \"api\"\npolicy = \"latency\"\nttl_secs = 30\n",
            BASE.replace(
                "name = \"cli-test\"\n",
                &format!("name = \"cli-test\"\nrto = \"{rto}\"\n")
            )
        )
    };
    std::fs::write(&path, text("1m")).unwrap();
    let p = path.to_str().unwrap();
    let out = succeeded(&atoll(&["config", "check", p]));
    assert!(
        out.contains("the article's interval x threshold + TTL: 60 s"),
        "{out}"
    );
    assert!(out.contains("67 s = detection + TTL 30 s"), "{out}");
    assert!(out.contains("+ 5 s resolver slack assumed"), "{out}");
    assert!(
        out.contains("warning: DNS failover of `api.atoll.test` can take 67 s"),
        "{out}"
    );
    let j = json_of(&atoll(&["config", "check", p, "--output", "json"]));
    assert_eq!(j["promises"]["dns"][0]["article_ms"], 60_000);
    assert_eq!(j["promises"]["dns"][0]["worst_ms"], 67_000);
    assert_eq!(j["promises"]["worst_case_ms"], 67_000);
    assert_eq!(
        j["promises"]["keyspaces"][0]["rpo"]["kind"],
        "replication-lag"
    );
    // With room for it, no warning.
    std::fs::write(&path, text("2m")).unwrap();
    let out = succeeded(&atoll(&["config", "check", p]));
    assert!(!out.contains("warning: DNS failover"), "{out}");
    assert!(out.contains("(within the declared rto)"), "{out}");
}
