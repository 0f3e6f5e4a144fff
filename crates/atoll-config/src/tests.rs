use super::*;
use atoll_core::AtollError;

const SINGLE: &str = include_str!("../../../examples/single-region.toml");
const THREE: &str = include_str!("../../../examples/three-regions.toml");

/// A minimal valid config; tests edit it. Line numbers are referenced by the tests.
const BASE: &str = r#"[cluster]
name = "t"

[[regions]]
name = "us-east-1"
api = "127.0.0.1:7100"

[[regions]]
name = "eu-west-1"
api = "127.0.0.1:7101"

[[keyspaces]]
name = "sessions"
policy = "lww"

[[keyspaces]]
name = "carts"
policy = "mvr"
"#;

fn ok(text: &str) -> Config {
    Config::parse(text, "atoll.toml").unwrap_or_else(|e| panic!("rejected: {e}\n{text}"))
}

fn err(text: &str) -> ConfigError {
    match Config::parse(text, "atoll.toml") {
        Ok(c) => panic!("accepted: {c:?}\n{text}"),
        Err(e) => e,
    }
}

/// Replaces exactly one occurrence of `from` in `text`.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once");
    text.replace(from, to)
}

/// Asserts the message names the file, the line, the key and contains every `needles`.
fn assert_err(e: &ConfigError, line: Option<usize>, key: &str, needles: &[&str]) {
    let msg = e.to_string();
    assert!(msg.starts_with("atoll.toml"), "no file in: {msg}");
    assert_eq!(e.line(), line, "line of: {msg}");
    if let Some(line) = line {
        assert!(
            msg.starts_with(&format!("atoll.toml:{line}:")),
            "no line {line} in: {msg}"
        );
    }
    assert_eq!(e.key(), Some(key), "key of: {msg}");
    assert!(
        msg.contains(&format!("`{key}`")),
        "key `{key}` not named in: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in: {msg}");
    }
    assert_eq!(e.code(), "ATOLL-CONFIG");
    assert!(!e.retryable());
    assert!(!e.hint().is_empty());
}

/// The warnings other than the one about the open client API (no `[auth]`).
fn router_warnings(c: &Config) -> Vec<String> {
    c.warnings()
        .into_iter()
        .filter(|w| !w.starts_with("no [auth] section"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Examples and defaults

#[test]
fn example_single_region_parses() {
    let c = Config::parse(SINGLE, "examples/single-region.toml").unwrap();
    assert_eq!(c.cluster.name, "atoll-single");
    assert_eq!(c.cluster.model, Model::ActiveActive);
    assert_eq!(c.regions.len(), 1);
    let r = c.region("us-east-1").unwrap();
    assert_eq!(r.api, "127.0.0.1:7100".parse().unwrap());
    assert_eq!(r.peer, r.api);
    assert_eq!(r.location, None);
    let names: Vec<_> = c
        .keyspaces
        .iter()
        .map(|k| (k.name.as_str(), k.policy))
        .collect();
    assert_eq!(
        names,
        [
            ("sessions", Policy::Lww),
            ("carts", Policy::Mvr),
            ("ratelimits", Policy::Counter),
            ("api-quota", Policy::RateLimit),
            ("flags", Policy::Set)
        ]
    );
    // Every optional section is shown, at its defaults.
    assert_eq!(c.storage, StorageConfig::default());
    assert_eq!(c.replication, ReplicationConfig::default());
    assert_eq!(c.api, ApiConfig::default());
    for section in ["[storage]", "[replication]", "[api]"] {
        assert!(SINGLE.contains(section), "{section}");
    }
}

#[test]
fn example_three_regions_parses() {
    let c = Config::parse(THREE, "examples/three-regions.toml").unwrap();
    let regions: Vec<_> = c
        .regions
        .iter()
        .map(|r| (r.name.as_str(), r.api.to_string(), r.location.unwrap()))
        .collect();
    assert_eq!(
        regions,
        [
            (
                "us-east-1",
                "127.0.0.1:7100".to_string(),
                GeoPoint {
                    lat: 38.9,
                    lon: -77.4
                }
            ),
            (
                "eu-west-1",
                "127.0.0.1:7101".to_string(),
                GeoPoint {
                    lat: 53.3,
                    lon: -6.3
                }
            ),
            (
                "ap-southeast-1",
                "127.0.0.1:7102".to_string(),
                GeoPoint {
                    lat: 1.35,
                    lon: 103.8
                }
            ),
        ]
    );
    let single = Config::parse(SINGLE, "single").unwrap();
    assert_eq!(
        c.keyspaces, single.keyspaces,
        "both examples declare the same keyspaces"
    );
    assert!(single.router.is_none());
}

/// The three-region example carries the router the README's router commands run with: a name
/// of each policy, client locations, and every health and proxy key (at its default, as its
/// comments say).
#[test]
fn example_three_regions_has_a_router() {
    use crate::router::{NoHealthyPolicy, RoutePolicy, RouterHealthConfig, RouterProxyConfig};
    let c = Config::parse(THREE, "examples/three-regions.toml").unwrap();
    let r = c.router.as_ref().expect("[router]");
    assert_eq!(r.zone, "atoll.test.");
    assert_eq!(r.ttl_secs, 30);
    assert_eq!(r.health, RouterHealthConfig::default());
    assert_eq!(r.proxy, RouterProxyConfig::default());
    let policies: Vec<_> = r
        .names
        .iter()
        .map(|n| (n.fqdn.as_str(), n.policy))
        .collect();
    assert_eq!(
        policies,
        [
            ("api.atoll.test.", RoutePolicy::Latency),
            ("primary.atoll.test.", RoutePolicy::Failover),
            ("canary.atoll.test.", RoutePolicy::Weighted),
        ]
    );
    let primary = r.name("primary.atoll.test").unwrap();
    assert_eq!(primary.no_healthy, NoHealthyPolicy::FailClosed);
    assert_eq!(primary.ttl_secs, 10);
    let canary = r.name("canary.atoll.test").unwrap();
    assert_eq!(canary.weights.get("us-east-1"), Some(&3));
    assert_eq!(canary.weights.get("ap-southeast-1"), Some(&0));
    assert_eq!(r.names[0].regions.len(), 3, "api is served by every region");
    assert_eq!(r.client_locations.len(), 2);
    let paris = r.locate("198.51.100.7".parse().unwrap()).unwrap();
    assert_eq!(paris, (48.9, 2.35));
    let dns: Vec<String> = c
        .regions
        .iter()
        .map(|r| r.dns_address.to_string())
        .collect();
    assert_eq!(dns, ["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    assert!(router_warnings(&c).is_empty(), "{:?}", c.warnings());
}

/// Every key of `[router]` the parser accepts appears in the three-region example (set or
/// commented out), so the example documents them all.
#[test]
fn example_three_regions_documents_every_router_key() {
    for key in [
        "zone =",
        "ttl_secs =",
        "no_healthy =",
        "[router.health]",
        "interval_ms =",
        "timeout_ms =",
        "failure_threshold =",
        "recovery_threshold =",
        "initial =",
        "path =",
        "expect_status =",
        "expect_body =",
        "hold_down_ms =",
        "outlier_failures =",
        "ramp_secs =",
        "[router.proxy]",
        "connect_timeout_ms =",
        "request_timeout_ms =",
        "idle_timeout_ms =",
        "max_body_bytes =",
        "[[router.names]]",
        "policy = \"latency\"",
        "policy = \"failover\"",
        "policy = \"weighted\"",
        "regions =",
        "weights =",
        "[[router.client_locations]]",
        "prefix =",
        "lat =",
        "lon =",
        "dns_address =",
    ] {
        assert!(
            THREE.contains(key),
            "examples/three-regions.toml lacks `{key}`"
        );
    }
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("atoll.toml");
    std::fs::write(&path, SINGLE).unwrap();
    assert_eq!(
        Config::load(&path).unwrap(),
        Config::parse(SINGLE, &path.display().to_string()).unwrap()
    );

    std::fs::write(&path, edit(SINGLE, "policy = \"set\"", "policy = \"sets\"")).unwrap();
    let e = Config::load(&path).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("{}:", path.display())),
        "{e}"
    );

    let missing = dir.path().join("nope.toml");
    let e = Config::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("nope.toml"), "{e}");
    assert_eq!(e.line(), None);
    assert!(!e.retryable());
}

#[test]
fn defaults_are_applied() {
    let c = ok(BASE);
    assert_eq!(
        c.cluster,
        ClusterConfig {
            name: "t".into(),
            model: Model::ActiveActive,
            max_clock_offset_ms: 500,
            tls: PeerTls::Undeclared,
            arbiter: None,
            rto_ms: None,
        }
    );
    assert_eq!(
        c.storage,
        StorageConfig {
            group_commit_max_batch: 512
        }
    );
    for k in &c.keyspaces {
        assert_eq!(k, &KeyspaceConfig::new(k.name.clone(), k.policy));
        assert_eq!(k.max_value_bytes, DEFAULT_MAX_VALUE_BYTES);
        assert_eq!(k.max_siblings, 16);
        assert_eq!(k.conflict_retention_secs, 86_400);
        assert_eq!(k.conflict_max_entries, 10_000);
    }
    let r = c.region("eu-west-1").unwrap();
    assert_eq!((r.api, r.peer, r.location), (r.api, r.api, None));
    assert!(c.region("nowhere").is_none());
    assert!(c.keyspace("carts").is_some());
    assert!(c.keyspace("nope").is_none());
    assert_eq!(KEY_MAX_BYTES, 1024);
    assert_eq!(DEFAULT_MAX_VALUE_BYTES, 1_048_576);
}

#[test]
fn explicit_values_are_kept() {
    let text = edit(
        BASE,
        "name = \"t\"\n",
        "name = \"t\"\nmodel = \"active-passive\"\nmax_clock_offset_ms = 60000\n",
    );
    let text = edit(
        &text,
        "api = \"127.0.0.1:7101\"\n",
        "api = \"127.0.0.1:7101\"\npeer = \"[::1]:7201\"\nlocation = { lat = -90, lon = 180 }\n",
    );
    let text = edit(
        &text,
        "policy = \"lww\"\n",
        "policy = \"lww\"\nmax_value_bytes = 16777216\nconflict_retention_secs = 60\nconflict_max_entries = 1\n",
    );
    let text = edit(
        &text,
        "policy = \"mvr\"\n",
        "policy = \"mvr\"\nmax_value_bytes = 1\nmax_siblings = 1024\n",
    );
    let text = format!("{text}\n[storage]\ngroup_commit_max_batch = 65536\n");
    let c = ok(&text);
    assert_eq!(c.cluster.model, Model::ActivePassive);
    assert_eq!(c.cluster.model.as_str(), "active-passive");
    assert_eq!(c.cluster.max_clock_offset_ms, 60_000);
    let r = c.region("eu-west-1").unwrap();
    assert_eq!(r.peer, "[::1]:7201".parse().unwrap());
    assert_eq!(
        r.location,
        Some(GeoPoint {
            lat: -90.0,
            lon: 180.0
        })
    );
    let s = c.keyspace("sessions").unwrap();
    assert_eq!(
        (
            s.max_value_bytes,
            s.conflict_retention_secs,
            s.conflict_max_entries
        ),
        (16 << 20, 60, 1)
    );
    let m = c.keyspace("carts").unwrap();
    assert_eq!((m.max_value_bytes, m.max_siblings), (1, 1024));
    assert_eq!(c.storage.group_commit_max_batch, 65_536);
}

#[test]
fn model_names() {
    for m in Model::ALL {
        assert_eq!(Model::parse(m.as_str()), Some(m));
        assert_eq!(m.to_string(), m.as_str());
        let text = edit(
            BASE,
            "name = \"t\"\n",
            &format!("name = \"t\"\nmodel = \"{m}\"\n"),
        );
        assert_eq!(ok(&text).cluster.model, m);
    }
    assert_eq!(Model::default(), Model::ActiveActive);
}

// ---------------------------------------------------------------------------------------------
// Syntax and serde errors

#[test]
fn toml_syntax_error_names_file_line_and_column() {
    let e = err(&edit(BASE, "name = \"carts\"", "name = = \"carts\""));
    assert!(matches!(e, ConfigError::Syntax { line: 17, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with("atoll.toml:17:"), "{msg}");
    assert!(msg.contains("TOML syntax error"), "{msg}");
}

#[test]
fn unknown_keys_are_errors_everywhere() {
    let cases = [
        (
            edit(
                BASE,
                "name = \"t\"\n",
                "name = \"t\"\nmodle = \"active-active\"\n",
            ),
            3,
            "cluster.modle",
        ),
        (
            edit(
                BASE,
                "api = \"127.0.0.1:7101\"\n",
                "api = \"127.0.0.1:7101\"\napi_addr = \"x\"\n",
            ),
            11,
            "regions[1].api_addr",
        ),
        (
            edit(
                BASE,
                "policy = \"mvr\"\n",
                "policy = \"mvr\"\nmax_sibling = 3\n",
            ),
            19,
            "keyspaces[1].max_sibling",
        ),
        (
            format!("{BASE}\n[storage]\nfsync = false\n"),
            21,
            "storage.fsync",
        ),
        (format!("{BASE}\n[routing]\nttl = 5\n"), 20, "routing"),
        (
            edit(
                BASE,
                "api = \"127.0.0.1:7101\"\n",
                "api = \"127.0.0.1:7101\"\nlocation = { lat = 1, lon = 2, alt = 3 }\n",
            ),
            11,
            "regions[1].location.alt",
        ),
    ];
    for (text, line, key) in cases {
        let e = err(&text);
        let field = key.rsplit('.').next().unwrap();
        assert_err(
            &e,
            Some(line),
            key,
            &["unknown field", &format!("`{field}`")],
        );
    }
    // The message lists the keys that are accepted there.
    let e = err(&edit(
        BASE,
        "policy = \"mvr\"\n",
        "policy = \"mvr\"\nmax_sibling = 3\n",
    ));
    assert!(e.to_string().contains("`max_siblings`"), "{e}");
}

#[test]
fn unknown_policy_lists_the_valid_ones() {
    let e = err(&edit(BASE, "policy = \"mvr\"", "policy = \"crdt\""));
    assert_err(
        &e,
        Some(18),
        "keyspaces[1].policy",
        &["`crdt`", "`lww`", "`mvr`", "`counter`", "`set`", "`strong`"],
    );
}

#[test]
fn unknown_model_lists_the_valid_ones() {
    let e = err(&edit(
        BASE,
        "name = \"t\"\n",
        "name = \"t\"\nmodel = \"multi-master\"\n",
    ));
    assert_err(
        &e,
        Some(3),
        "cluster.model",
        &[
            "`multi-master`",
            "`active-active`",
            "`active-standby`",
            "`active-passive`",
        ],
    );
}

#[test]
fn missing_required_keys_are_named() {
    let e = err(&edit(BASE, "api = \"127.0.0.1:7101\"\n", ""));
    assert_err(&e, Some(8), "regions[1].api", &["missing field `api`"]);
    let e = err(&edit(BASE, "name = \"t\"\n", ""));
    assert_err(&e, Some(1), "cluster.name", &["missing field `name`"]);
    let e = err(&edit(BASE, "policy = \"lww\"\n", ""));
    assert_err(
        &e,
        Some(12),
        "keyspaces[0].policy",
        &["missing field `policy`"],
    );
    let e = err(&edit(BASE, "[cluster]\nname = \"t\"\n", ""));
    assert_err(&e, None, "cluster", &["[cluster]", "missing"]);
}

#[test]
fn wrong_types_are_named() {
    let e = err(&edit(
        BASE,
        "policy = \"mvr\"\n",
        "policy = \"mvr\"\nmax_siblings = \"many\"\n",
    ));
    assert_err(
        &e,
        Some(19),
        "keyspaces[1].max_siblings",
        &["invalid type", "expected an integer"],
    );
    let e = err(&edit(BASE, "api = \"127.0.0.1:7101\"", "api = 7101"));
    assert_err(
        &e,
        Some(10),
        "regions[1].api",
        &["invalid type", "expected a string"],
    );
    let e = err(&format!(
        "{BASE}\n[storage]\ngroup_commit_max_batch = 1.5\n"
    ));
    assert_err(
        &e,
        Some(21),
        "storage.group_commit_max_batch",
        &["invalid type"],
    );
    let e = err(&edit(
        BASE,
        "api = \"127.0.0.1:7101\"\n",
        "api = \"127.0.0.1:7101\"\nlocation = { lat = 1 }\n",
    ));
    assert_err(
        &e,
        Some(11),
        "regions[1].location.lon",
        &["missing field `lon`"],
    );
}

// ---------------------------------------------------------------------------------------------
// Semantic errors

#[test]
fn at_least_one_region_and_one_keyspace() {
    let no_regions = "[cluster]\nname = \"t\"\n\n[[keyspaces]]\nname = \"k\"\npolicy = \"set\"\n";
    assert_err(
        &err(no_regions),
        None,
        "regions",
        &["no region", "[[regions]]"],
    );
    let no_keyspaces =
        "[cluster]\nname = \"t\"\n\n[[regions]]\nname = \"r\"\napi = \"127.0.0.1:1\"\n";
    assert_err(
        &err(no_keyspaces),
        None,
        "keyspaces",
        &["no keyspace", "[[keyspaces]]"],
    );
    assert_err(&err(""), None, "cluster", &["[cluster]"]);
}

#[test]
fn duplicate_region_name() {
    let e = err(&edit(BASE, "name = \"eu-west-1\"", "name = \"us-east-1\""));
    assert_err(
        &e,
        Some(9),
        "regions[1].name",
        &["duplicate region name `us-east-1`", "line 5"],
    );
}

#[test]
fn duplicate_keyspace_name() {
    let e = err(&edit(BASE, "name = \"carts\"", "name = \"sessions\""));
    assert_err(
        &e,
        Some(17),
        "keyspaces[1].name",
        &["duplicate keyspace name `sessions`", "line 13"],
    );
}

#[test]
fn duplicate_addresses() {
    // Same api.
    let e = err(&edit(
        BASE,
        "api = \"127.0.0.1:7101\"",
        "api = \"127.0.0.1:7100\"",
    ));
    assert_err(
        &e,
        Some(10),
        "regions[1].api",
        &["127.0.0.1:7100", "`us-east-1`", "`eu-west-1`", "line 6"],
    );
    // A peer address equal to another region's api.
    let e = err(&edit(
        BASE,
        "api = \"127.0.0.1:7101\"\n",
        "api = \"127.0.0.1:7101\"\npeer = \"127.0.0.1:7100\"\n",
    ));
    assert_err(
        &e,
        Some(11),
        "regions[1].peer",
        &["127.0.0.1:7100", "api address of region `us-east-1`"],
    );
    // Same peer in two regions.
    let text = edit(
        BASE,
        "api = \"127.0.0.1:7100\"\n",
        "api = \"127.0.0.1:7100\"\npeer = \"127.0.0.1:7200\"\n",
    );
    let text = edit(
        &text,
        "api = \"127.0.0.1:7101\"\n",
        "api = \"127.0.0.1:7101\"\npeer = \"127.0.0.1:7200\"\n",
    );
    let e = err(&text);
    assert_err(
        &e,
        Some(12),
        "regions[1].peer",
        &["127.0.0.1:7200", "peer address of region `us-east-1`"],
    );
    // A region's own peer may equal its api.
    ok(&edit(
        BASE,
        "api = \"127.0.0.1:7101\"\n",
        "api = \"127.0.0.1:7101\"\npeer = \"127.0.0.1:7101\"\n",
    ));
}

#[test]
fn bad_addresses() {
    let cases = [
        ("127.0.0.1", "has no port"),
        ("localhost:abc", "invalid port \"abc\""),
        ("localhost:7100", "\"localhost\" is not an IP address"),
        ("127.0.0.1:70000", "invalid port \"70000\""),
        ("127.0.0.1:0", "port 0"),
        ("::1", "has no port"),
        ("", "empty"),
    ];
    for (addr, problem) in cases {
        let e = err(&edit(
            BASE,
            "api = \"127.0.0.1:7101\"",
            &format!("api = \"{addr}\""),
        ));
        assert_err(&e, Some(10), "regions[1].api", &[problem]);
    }
    let e = err(&edit(
        BASE,
        "api = \"127.0.0.1:7101\"\n",
        "api = \"127.0.0.1:7101\"\npeer = \"10.0.0.1\"\n",
    ));
    assert_err(
        &e,
        Some(11),
        "regions[1].peer",
        &["\"10.0.0.1\" has no port", "ip:port"],
    );
}

#[test]
fn invalid_names() {
    let e = err(&edit(BASE, "name = \"t\"", "name = \"Atoll_Prod\""));
    assert_err(
        &e,
        Some(2),
        "cluster.name",
        &["invalid cluster name `Atoll_Prod`", "a-z"],
    );
    let long = "c".repeat(64);
    let e = err(&edit(BASE, "name = \"t\"", &format!("name = \"{long}\"")));
    assert_err(&e, Some(2), "cluster.name", &["1-63"]);
    ok(&edit(
        BASE,
        "name = \"t\"",
        &format!("name = \"{}\"", "c".repeat(63)),
    ));

    let e = err(&edit(BASE, "name = \"eu-west-1\"", "name = \"EU West\""));
    assert_err(
        &e,
        Some(9),
        "regions[1].name",
        &["invalid region name `EU West`"],
    );
    let e = err(&edit(BASE, "name = \"eu-west-1\"", "name = \"-eu\""));
    assert_err(&e, Some(9), "regions[1].name", &["invalid region name"]);

    let e = err(&edit(BASE, "name = \"carts\"", "name = \"my carts\""));
    assert_err(
        &e,
        Some(17),
        "keyspaces[1].name",
        &["invalid keyspace name `my carts`", "1-64"],
    );
    let e = err(&edit(BASE, "name = \"carts\"", "name = \"\""));
    assert_err(
        &e,
        Some(17),
        "keyspaces[1].name",
        &["invalid keyspace name ``"],
    );
    let e = err(&edit(
        BASE,
        "name = \"carts\"",
        &format!("name = \"{}\"", "k".repeat(65)),
    ));
    assert_err(
        &e,
        Some(17),
        "keyspaces[1].name",
        &["invalid keyspace name"],
    );
    ok(&edit(
        BASE,
        "name = \"carts\"",
        &format!("name = \"user_carts-{}\"", "k".repeat(53)),
    ));
}

#[test]
fn options_must_apply_to_the_policy() {
    let with = |policy: &str, option: &str| {
        let text = edit(
            BASE,
            "policy = \"mvr\"\n",
            &format!("policy = \"{policy}\"\n{option} = 5\n"),
        );
        err(&text)
    };
    let e = with("counter", "max_siblings");
    assert_err(
        &e,
        Some(19),
        "keyspaces[1].max_siblings",
        &[
            "does not apply",
            "`carts`",
            "policy is `counter`",
            "only `mvr` keyspaces accept it",
        ],
    );
    let e = with("set", "max_value_bytes");
    assert_err(
        &e,
        Some(19),
        "keyspaces[1].max_value_bytes",
        &["policy is `set`", "only `lww` and `mvr`"],
    );
    let e = with("mvr", "conflict_retention_secs");
    assert_err(
        &e,
        Some(19),
        "keyspaces[1].conflict_retention_secs",
        &["policy is `mvr`", "only `lww`"],
    );
    let e = with("counter", "conflict_max_entries");
    assert_err(
        &e,
        Some(19),
        "keyspaces[1].conflict_max_entries",
        &["only `lww`"],
    );
    let e = with("lww", "max_siblings");
    assert_err(
        &e,
        Some(19),
        "keyspaces[1].max_siblings",
        &["policy is `lww`", "only `mvr`"],
    );
}

#[test]
fn out_of_range_numbers() {
    let ks = |policy: &str, option: &str, value: &str| {
        edit(
            BASE,
            "policy = \"mvr\"\n",
            &format!("policy = \"{policy}\"\n{option} = {value}\n"),
        )
    };
    let cases = [
        (
            ks("mvr", "max_siblings", "0"),
            19,
            "keyspaces[1].max_siblings",
            "1 to 1024",
        ),
        (
            ks("mvr", "max_siblings", "1025"),
            19,
            "keyspaces[1].max_siblings",
            "1 to 1024",
        ),
        (
            ks("lww", "max_value_bytes", "16777217"),
            19,
            "keyspaces[1].max_value_bytes",
            "1 to 16777216",
        ),
        (
            ks("mvr", "max_value_bytes", "-1"),
            19,
            "keyspaces[1].max_value_bytes",
            "1 to 16777216",
        ),
        (
            ks("lww", "conflict_retention_secs", "0"),
            19,
            "keyspaces[1].conflict_retention_secs",
            "must be 1 to",
        ),
        (
            ks("lww", "conflict_max_entries", "0"),
            19,
            "keyspaces[1].conflict_max_entries",
            "must be 1 to",
        ),
        (
            edit(
                BASE,
                "name = \"t\"\n",
                "name = \"t\"\nmax_clock_offset_ms = 0\n",
            ),
            3,
            "cluster.max_clock_offset_ms",
            "1 to 60000",
        ),
        (
            edit(
                BASE,
                "name = \"t\"\n",
                "name = \"t\"\nmax_clock_offset_ms = 60001\n",
            ),
            3,
            "cluster.max_clock_offset_ms",
            "1 to 60000",
        ),
        (
            format!("{BASE}\n[storage]\ngroup_commit_max_batch = 0\n"),
            21,
            "storage.group_commit_max_batch",
            "1 to 65536",
        ),
        (
            format!("{BASE}\n[storage]\ngroup_commit_max_batch = 65537\n"),
            21,
            "storage.group_commit_max_batch",
            "1 to 65536",
        ),
        (
            edit(
                BASE,
                "api = \"127.0.0.1:7101\"\n",
                "api = \"127.0.0.1:7101\"\nlocation = { lat = 90.5, lon = 0 }\n",
            ),
            11,
            "regions[1].location.lat",
            "-90 to 90",
        ),
        (
            edit(
                BASE,
                "api = \"127.0.0.1:7101\"\n",
                "api = \"127.0.0.1:7101\"\nlocation = { lat = 0, lon = -181 }\n",
            ),
            11,
            "regions[1].location.lon",
            "-180 to 180",
        ),
        (
            edit(
                BASE,
                "api = \"127.0.0.1:7101\"\n",
                "api = \"127.0.0.1:7101\"\nlocation = { lat = nan, lon = 0 }\n",
            ),
            11,
            "regions[1].location.lat",
            "out of range",
        ),
    ];
    for (text, line, key, range) in cases {
        let e = err(&text);
        assert_err(&e, Some(line), key, &["out of range", range]);
    }
}

#[test]
fn converts_into_atoll_error() {
    let e = err(&edit(BASE, "policy = \"mvr\"", "policy = \"crdt\""));
    let msg = e.to_string();
    let hint = e.hint();
    assert!(hint.contains("config check"), "{hint}");
    let a: AtollError = e.into();
    assert_eq!(a, AtollError::Config(msg.clone()));
    assert_eq!(a.code(), "ATOLL-CONFIG");
    assert!(!a.retryable());
    assert!(a.to_string().contains(&msg));
}

// ---------------------------------------------------------------------------------------------
// explain()

#[test]
fn explain_shows_everything_understood() {
    let text = edit(
        BASE,
        "api = \"127.0.0.1:7101\"\n",
        "api = \"127.0.0.1:7101\"\npeer = \"127.0.0.1:7201\"\nlocation = { lat = 53.3, lon = -6.3 }\n",
    );
    let text = edit(
        &text,
        "policy = \"mvr\"\n",
        "policy = \"mvr\"\nmax_siblings = 4\n",
    );
    let text = format!(
        "{text}\n[[keyspaces]]\nname = \"hits\"\npolicy = \"counter\"\n\n[[keyspaces]]\nname = \"flags\"\npolicy = \"set\"\nmax_staleness = \"3s\"\n\n[api]\nsession_wait = \"250ms\"\n"
    );
    let out = ok(&text).explain();
    for needle in [
        "cluster t",
        "model                active-active (default)",
        "max_clock_offset_ms  500 (default)",
        "regions (2)",
        "us-east-1  127.0.0.1:7100  127.0.0.1:7100 (= api)  -",
        "eu-west-1  127.0.0.1:7101  127.0.0.1:7201",
        "lat 53.3, lon -6.3",
        "keyspaces (4)",
        "sessions  lww      eventual              max_value_bytes=1048576 (1 MiB, default), conflict_retention_secs=86400 (1d, default), conflict_max_entries=10000 (default)",
        "carts     mvr      eventual              max_value_bytes=1048576 (1 MiB, default), max_siblings=4",
        "hits      counter  eventual              (no options",
        "flags     set      bounded staleness 3s  (no options",
        "session_wait         250ms  (how long a read with X-Atoll-Session waits",
        "at most 1024 bytes",
        "group_commit_max_batch  512 (default)",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    // Options that do not apply to a policy are not shown for it.
    let carts = out
        .lines()
        .find(|l| l.trim_start().starts_with("carts"))
        .unwrap();
    assert!(!carts.contains("conflict"), "{carts}");
    let sessions = out
        .lines()
        .find(|l| l.trim_start().starts_with("sessions"))
        .unwrap();
    assert!(!sessions.contains("max_siblings"), "{sessions}");
}

#[test]
fn read_levels_are_validated() {
    let with = |ks_line: &str, api: &str| {
        format!("{BASE}\n[[keyspaces]]\nname = \"reports\"\npolicy = \"lww\"\n{ks_line}\n{api}")
    };
    let c = ok(&with("max_staleness = \"5s\"", ""));
    assert_eq!(c.keyspace("reports").unwrap().max_staleness_ms, Some(5000));
    assert_eq!(c.api.session_wait_ms, crate::DEFAULT_SESSION_WAIT_MS);
    assert!(c.warnings().iter().all(|w| !w.contains("max_staleness")));
    // Below twice the heartbeat interval: valid, but warned about.
    let c = ok(&with("max_staleness = \"1s\"", ""));
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("`reports` has max_staleness = 1s")),
        "{:?}",
        c.warnings()
    );
    for (ks_line, api, needle) in [
        ("max_staleness = \"soon\"", "", "max_staleness"),
        ("max_staleness = \"2d\"", "", "out of range"),
        ("", "[api]\nsession_wait = \"11s\"", "0 to 10s"),
        ("", "[api]\nsession_wait = \"x\"", "api.session_wait"),
    ] {
        let e = err(&with(ks_line, api));
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
}

#[test]
fn oplog_retention_is_a_bounded_duration_and_is_explained() {
    let c = ok(BASE);
    assert_eq!(
        c.replication.oplog_retention_ms,
        crate::DEFAULT_OPLOG_RETENTION_MS
    );
    assert!(
        c.explain()
            .contains("oplog_retention           10m (default)"),
        "{}",
        c.explain()
    );
    let with = |v: &str| format!("{BASE}\n[replication]\noplog_retention = \"{v}\"\n");
    assert_eq!(ok(&with("0s")).replication.oplog_retention_ms, 0);
    assert_eq!(ok(&with("2h")).replication.oplog_retention_ms, 7_200_000);
    for (v, needle) in [
        ("31d", "0 to 30d"),
        ("later", "replication.oplog_retention"),
    ] {
        let e = err(&with(v));
        assert!(e.to_string().contains(needle), "{v}: {e}");
    }
}

#[test]
fn explain_of_the_examples() {
    let out = ok(THREE).explain();
    for needle in [
        "cluster atoll-three",
        "regions (3)",
        "ap-southeast-1",
        "lat 1.35, lon 103.8",
        "keyspaces (5)",
        "api-quota   ratelimit",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    let out = ok(SINGLE).explain();
    assert!(out.contains("ratelimits") && out.contains("flags"), "{out}");
    assert!(out.contains("no [router] section"), "{out}");
}

/// `atoll config check` shows the router: zone, every health and proxy setting (defaults
/// marked), every name with its policy and regions, the client locations and DNS answers.
#[test]
fn explain_shows_the_router() {
    let out = ok(THREE).explain();
    for needle in [
        "\nrouter\n",
        "zone      atoll.test.",
        "ttl_secs  30 (default)",
        "interval_ms         1000 (default)",
        "failure_threshold   3 (default)",
        "a dead region is noticed within 3000 ms",
        "initial             unhealthy (default)",
        "expect_body         - (default)",
        "connect_timeout_ms  1000 (default)",
        "request_timeout_ms  30000 (default)",
        "idle_timeout_ms     30000 (default)",
        "max_body_bytes      16777216 (16 MiB) (default)",
        "--proxy-request-timeout",
        "names (3)",
        "api.atoll.test.",
        "primary.atoll.test.  failover  us-east-1, eu-west-1, ap-southeast-1",
        "fail-closed",
        "us-east-1=3, eu-west-1=1, ap-southeast-1=0",
        "client_locations (2)",
        "198.51.100.0/24  lat 48.9, lon 2.35",
        "203.0.113.0/24   lat 1.35, lon 103.8",
        "us-east-1       127.0.0.11",
        "max_json_body_bytes  4194304 (4 MiB) (default)",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    let text = format!(
        "{BASE}\n[api]\nmax_json_body_bytes = 1024\n\n[router]\n[router.proxy]\nconnect_timeout_ms = 250\nidle_timeout_ms = 0\n\n[[router.names]]\nname = \"api\"\npolicy = \"failover\"\n"
    );
    let out = ok(&text).explain();
    let line = |key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("connect_timeout_ms"),
        "connect_timeout_ms 250 (--proxy-connect-timeout;"
    );
    assert_eq!(
        line("idle_timeout_ms"),
        "idle_timeout_ms 0 (--proxy-idle-timeout;"
    );
    assert_eq!(
        line("request_timeout_ms"),
        "request_timeout_ms 30000 (default)"
    );
    assert_eq!(line("max_json_body_bytes"), "max_json_body_bytes 1024 (1");
    for needle in [
        "client_locations (0)",
        "us-east-1  127.0.0.1 (the api address's IP, default)",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
}

#[test]
fn keyspace_options_follow_the_policy() {
    let keys = |p| {
        KeyspaceConfig::new("k", p)
            .options()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(Policy::Lww),
        [
            "max_value_bytes",
            "conflict_retention_secs",
            "conflict_max_entries"
        ]
    );
    assert_eq!(keys(Policy::Mvr), ["max_value_bytes", "max_siblings"]);
    assert!(keys(Policy::Counter).is_empty());
    assert!(keys(Policy::Set).is_empty());
}

mod router_section {
    use super::*;

    const ROUTER: &str = "\n[router]\nzone = \"atoll.test\"\n\n[router.health]\ninterval_ms = 1000\nfailure_threshold = 3\n\n[[router.names]]\nname = \"api\"\npolicy = \"failover\"\nregions = [\"us-east-1\"]\n";

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(&format!("{BASE}{ROUTER}"), "atoll.toml").unwrap();
        let r = c.router.as_ref().unwrap();
        assert_eq!(r.zone, "atoll.test.");
        assert_eq!(r.ttl_secs, 30);
        let n = r.name("API.atoll.test").unwrap();
        assert_eq!(n.fqdn, "api.atoll.test.");
        assert_eq!(n.regions, vec!["us-east-1".to_string()]);
        assert!(router_warnings(&c).is_empty());
    }

    #[test]
    fn bad_router_configs_are_named() {
        for (bad, key, needle) in [
            (
                "failure_threshold = 3",
                "router.health.failure_threshold",
                "failure_threshold = 0",
            ),
            (
                "zone = \"atoll.test\"",
                "router.ttl_secs",
                "zone = \"atoll.test\"\nttl_secs = 0",
            ),
            (
                "regions = [\"us-east-1\"]",
                "router.names[0].regions",
                "regions = [\"mars-1\"]",
            ),
        ] {
            let text = edit(&format!("{BASE}{ROUTER}"), bad, needle);
            let e = err(&text);
            assert_eq!(e.key(), Some(key), "{e}");
        }
    }

    #[test]
    fn proxy_timeouts_parse_with_defaults() {
        let c = Config::parse(&format!("{BASE}{ROUTER}"), "atoll.toml").unwrap();
        let p = &c.router.as_ref().unwrap().proxy;
        assert_eq!(
            (
                p.connect_timeout_ms,
                p.request_timeout_ms,
                p.idle_timeout_ms,
                p.max_body_bytes
            ),
            (1000, 30_000, 30_000, 16 << 20)
        );
        let text = format!(
            "{BASE}{ROUTER}\n[router.proxy]\nconnect_timeout_ms = 200\nrequest_timeout_ms = 5000\nidle_timeout_ms = 0\nmax_body_bytes = 1024\n"
        );
        let p = ok(&text).router.unwrap().proxy;
        assert_eq!(
            (
                p.connect_timeout_ms,
                p.request_timeout_ms,
                p.idle_timeout_ms,
                p.max_body_bytes
            ),
            (200, 5000, 0, 1024)
        );
    }

    #[test]
    fn bad_proxy_timeouts_are_named() {
        let with = |body: &str| format!("{BASE}{ROUTER}\n[router.proxy]\n{body}\n");
        // The line of `body` in `with(body)`.
        let line = format!("{BASE}{ROUTER}").lines().count() + 3;
        for (body, key, needles) in [
            (
                "connect_timeout_ms = 5",
                "router.proxy.connect_timeout_ms",
                &["5 is out of range", "10 to 60000"][..],
            ),
            (
                "request_timeout_ms = 700000",
                "router.proxy.request_timeout_ms",
                &["600000"][..],
            ),
            (
                "idle_timeout_ms = -1",
                "router.proxy.idle_timeout_ms",
                &["out of range"][..],
            ),
            (
                "max_body_bytes = 10",
                "router.proxy.max_body_bytes",
                &["1024"][..],
            ),
            // Connecting is part of the request: its timeout must be the shorter one.
            (
                "connect_timeout_ms = 40000",
                "router.proxy.connect_timeout_ms",
                &["must be shorter than the request timeout (30000 ms)"][..],
            ),
            (
                "request_timeout_ms = 500",
                "router.proxy.request_timeout_ms",
                &["connect timeout (1000 ms)"][..],
            ),
        ] {
            let e = err(&with(body));
            assert_err(&e, Some(line), key, needles);
        }
        let e = err(&with("connect_timeout = 5"));
        assert_eq!(e.key(), Some("router.proxy.connect_timeout"), "{e}");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn long_ttl_is_a_warning() {
        let text = edit(
            &format!("{BASE}{ROUTER}"),
            "policy = \"failover\"",
            "policy = \"failover\"\nttl_secs = 300",
        );
        let c = Config::parse(&text, "atoll.toml").unwrap();
        let w = router_warnings(&c);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("300"), "{w:?}");
    }
}

mod api_section {
    use super::*;

    #[test]
    fn max_json_body_bytes_defaults_to_4_mib() {
        assert_eq!(ok(BASE).api.max_json_body_bytes, 4 << 20);
        let c = ok(&format!("{BASE}\n[api]\nmax_json_body_bytes = 16777216\n"));
        assert_eq!(c.api.max_json_body_bytes, 16 << 20);
        let c = ok(&format!("{BASE}\n[api]\n"));
        assert_eq!(c.api, ApiConfig::default());
    }

    #[test]
    fn bad_max_json_body_bytes_is_named() {
        let line = BASE.lines().count() + 3;
        for (value, needle) in [("100", "1024 to 67108864"), ("67108865", "out of range")] {
            let e = err(&format!("{BASE}\n[api]\nmax_json_body_bytes = {value}\n"));
            assert_err(&e, Some(line), "api.max_json_body_bytes", &[needle]);
        }
        let e = err(&format!("{BASE}\n[api]\nmax_body = 1\n"));
        assert_eq!(e.key(), Some("api.max_body"), "{e}");
    }

    #[test]
    fn max_watchers_defaults_to_1024_and_is_bounded() {
        assert_eq!(ok(BASE).api.max_watchers, 1024);
        let c = ok(&format!("{BASE}\n[api]\nmax_watchers = 5\n"));
        assert_eq!(c.api.max_watchers, 5);
        let line = BASE.lines().count() + 3;
        for value in ["0", "65537", "-1"] {
            let e = err(&format!("{BASE}\n[api]\nmax_watchers = {value}\n"));
            assert_err(&e, Some(line), "api.max_watchers", &["1 to 65536"]);
        }
    }
}

mod replication_limits {
    use super::*;

    #[test]
    fn max_subscription_streams_defaults_to_4_per_peer() {
        let c = ok(BASE);
        assert_eq!(c.replication.max_subscription_streams, None);
        assert_eq!(c.replication.subscription_stream_limit(c.regions.len()), 4);
        assert_eq!(c.replication.subscription_stream_limit(1), 4, "at least 4");
        assert_eq!(c.replication.subscription_stream_limit(6), 20);
        let c = ok(&format!(
            "{BASE}\n[replication]\nmax_subscription_streams = 2\n"
        ));
        assert_eq!(c.replication.max_subscription_streams, Some(2));
        assert_eq!(c.replication.subscription_stream_limit(6), 2);
        let line = |c: &Config| {
            c.explain()
                .lines()
                .find(|l| l.trim_start().starts_with("max_subscription_streams"))
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        };
        assert_eq!(
            line(&c).as_deref(),
            Some("max_subscription_streams 2 (most")
        );
        assert_eq!(
            line(&ok(BASE)).as_deref(),
            Some("max_subscription_streams 4 (default:")
        );
    }

    #[test]
    fn bad_max_subscription_streams_is_named() {
        let line = BASE.lines().count() + 3;
        for value in ["0", "65537", "-1"] {
            let e = err(&format!(
                "{BASE}\n[replication]\nmax_subscription_streams = {value}\n"
            ));
            assert_err(
                &e,
                Some(line),
                "replication.max_subscription_streams",
                &["1 to 65536"],
            );
        }
    }

    #[test]
    fn a_cluster_has_at_most_256_regions() {
        let mut text = String::from("[cluster]\nname = \"t\"\n");
        for i in 0..=MAX_REGIONS {
            text.push_str(&format!(
                "[[regions]]\nname = \"r{i}\"\napi = \"127.0.0.1:{}\"\n",
                10_000 + i
            ));
        }
        text.push_str("[[keyspaces]]\nname = \"s\"\npolicy = \"lww\"\n");
        let e = err(&text);
        assert_err(
            &e,
            Some(3 + 3 * MAX_REGIONS),
            "regions[256]",
            &["257 regions", "at most 256"],
        );
        let cut = text
            .find(&format!("[[regions]]\nname = \"r{MAX_REGIONS}\""))
            .unwrap();
        let end = text.find("[[keyspaces]]").unwrap();
        let c = ok(&format!("{}{}", &text[..cut], &text[end..]));
        assert_eq!(c.regions.len(), MAX_REGIONS);
    }
}

mod auth_section {
    use super::*;
    use crate::auth::{Keyspaces, Right, Tokens, sha256_hex};

    const TOKENS: &str = include_str!("../../../examples/tokens.toml");

    fn tokens(text: &str) -> Result<Tokens, ConfigError> {
        Tokens::parse(text, "tokens.toml", &ok(SINGLE))
    }

    fn token(name: &str, secret: &str, rest: &str) -> String {
        format!(
            "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\n{rest}\n",
            sha256_hex(secret)
        )
    }

    #[test]
    fn without_auth_the_api_is_open_and_config_check_warns() {
        let c = ok(BASE);
        assert_eq!(c.auth.tokens_file, None);
        let w = c.warnings();
        assert!(
            w.iter().any(|w| w.starts_with("no [auth] section")
                && w.contains("open")
                && w.contains("tokens_file")),
            "{w:?}"
        );
        assert!(
            c.explain()
                .contains("no [auth] section: the client API is open")
        );
        assert_eq!(Tokens::load_for(&c).unwrap(), None);
    }

    #[test]
    fn the_tokens_file_is_relative_to_the_config() {
        let text = format!("{BASE}\n[auth]\ntokens_file = \"tokens.toml\"\n");
        let c = Config::parse(&text, "/etc/atoll/atoll.toml").unwrap();
        assert_eq!(
            c.auth.tokens_file.as_deref(),
            Some(std::path::Path::new("/etc/atoll/tokens.toml"))
        );
        assert!(
            !c.warnings().iter().any(|w| w.contains("[auth]")),
            "{:?}",
            c.warnings()
        );
        assert!(c.explain().contains("tokens_file  /etc/atoll/tokens.toml"));
        let text = format!("{BASE}\n[auth]\ntokens_file = \"/srv/t.toml\"\n");
        let c = Config::parse(&text, "/etc/atoll/atoll.toml").unwrap();
        assert_eq!(
            c.auth.tokens_file.as_deref(),
            Some(std::path::Path::new("/srv/t.toml"))
        );
        let line = BASE.lines().count() + 3;
        let e = err(&format!("{BASE}\n[auth]\ntokens_file = \" \"\n"));
        assert_err(&e, Some(line), "auth.tokens_file", &["empty"]);
        let e = err(&format!("{BASE}\n[auth]\n"));
        assert!(e.to_string().contains("tokens_file"), "{e}");
        let e = err(&format!(
            "{BASE}\n[auth]\ntokens_file = \"t\"\ntokens = 1\n"
        ));
        assert!(e.to_string().contains("tokens"), "{e}");
    }

    #[test]
    fn the_example_tokens_file_parses_and_grants_what_it_says() {
        let t = tokens(TOKENS).unwrap();
        let names: Vec<&str> = t.grants().iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["checkout", "reporting", "operator"]);
        let checkout = t.authenticate("example-checkout-token").unwrap();
        assert_eq!(checkout.name, "checkout");
        assert!(checkout.allows(Right::Read, "sessions"));
        assert!(checkout.allows(Right::Write, "carts"));
        assert!(!checkout.allows(Right::Write, "sessions"));
        assert!(!checkout.allows(Right::Read, "flags"));
        let reporting = t.authenticate("example-reporting-token").unwrap();
        assert_eq!(reporting.read, Keyspaces::All);
        assert!(reporting.allows(Right::Read, "flags"));
        assert!(!reporting.allows(Right::Write, "flags"));
        assert!(t.authenticate("example-admin-token").is_some());
        for wrong in [
            "",
            "example-checkout-token ",
            "EXAMPLE-CHECKOUT-TOKEN",
            &sha256_hex("example-checkout-token"),
        ] {
            assert!(t.authenticate(wrong).is_none(), "{wrong:?}");
        }
    }

    #[test]
    fn bad_tokens_files_are_named() {
        let good = token("a", "secret-a", "read = [\"sessions\"]");
        assert!(tokens(&good).is_ok());
        // Upper-case hex is the same hash.
        let upper = format!(
            "[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\n",
            sha256_hex("secret-a").to_uppercase()
        );
        assert!(tokens(&upper).unwrap().authenticate("secret-a").is_some());
        for (text, key, needle) in [
            (String::new(), "tokens", "no token"),
            (
                token("a", "s", "read = [\"nosuch\"]"),
                "tokens[0].read",
                "unknown keyspace `nosuch`",
            ),
            (
                token("a", "s", "write = [\"sessions\", \"x\"]"),
                "tokens[0].write",
                "unknown keyspace `x`",
            ),
            (
                format!("{}{}", token("a", "s1", ""), token("a", "s2", "")),
                "tokens[1].name",
                "duplicate token name",
            ),
            (
                format!("{}{}", token("a", "same", ""), token("b", "same", "")),
                "tokens[1].sha256",
                "tokens[0]",
            ),
            (
                "[[tokens]]\nname = \"a\"\nsha256 = \"s3cret\"\n".to_string(),
                "tokens[0].sha256",
                "never the token",
            ),
            (
                format!(
                    "[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\n",
                    "g".repeat(64)
                ),
                "tokens[0].sha256",
                "hex",
            ),
            (
                token("a b", "s", ""),
                "tokens[0].name",
                "invalid token name",
            ),
        ] {
            let e = tokens(&text)
                .err()
                .unwrap_or_else(|| panic!("accepted:\n{text}"));
            assert_eq!(e.key(), Some(key), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().starts_with("tokens.toml"), "{e}");
        }
        // Unknown keys are errors too, with their line.
        let e = tokens(&token("a", "s", "reads = [\"sessions\"]")).unwrap_err();
        assert!(e.to_string().contains("reads"), "{e}");
        assert_eq!(e.line(), Some(4), "{e}");
    }

    #[test]
    fn load_reads_the_file_the_config_names() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("atoll.toml");
        std::fs::write(
            &cfg_path,
            format!("{SINGLE}\n[auth]\ntokens_file = \"tokens.toml\"\n"),
        )
        .unwrap();
        let c = Config::load(&cfg_path).unwrap();
        let e = Tokens::load_for(&c).unwrap_err();
        assert!(e.to_string().contains("tokens.toml"), "{e}");
        std::fs::write(dir.path().join("tokens.toml"), TOKENS).unwrap();
        let t = Tokens::load_for(&c).unwrap().unwrap();
        assert_eq!(t.grants().len(), 3);
    }
}

mod cluster_tls {
    use super::*;

    /// BASE with peer addresses of their own and `[cluster.tls]` set to `tls`.
    fn with_tls(tls: &str) -> String {
        let text = edit(
            BASE,
            "api = \"127.0.0.1:7100\"\n",
            "api = \"127.0.0.1:7100\"\npeer = \"127.0.0.1:7200\"\n",
        );
        let text = edit(
            &text,
            "api = \"127.0.0.1:7101\"\n",
            "api = \"127.0.0.1:7101\"\npeer = \"127.0.0.1:7201\"\n",
        );
        edit(
            &text,
            "name = \"t\"\n",
            &format!("name = \"t\"\n\n[cluster.tls]\n{tls}\n"),
        )
    }

    const FILES: &str =
        "ca = \"certs/ca.pem\"\ncert = \"certs/{region}.pem\"\nkey = \"certs/{region}.key\"";

    #[test]
    fn mutual_tls_files_with_a_region_placeholder() {
        let c = ok(&with_tls(FILES));
        let PeerTls::Mutual(files) = &c.cluster.tls else {
            panic!("{:?}", c.cluster.tls)
        };
        assert_eq!(files.ca, PathBuf::from("certs/ca.pem"));
        assert_eq!(
            files.cert_for("eu-west-1"),
            PathBuf::from("certs/eu-west-1.pem")
        );
        assert_eq!(
            files.key_for("us-east-1"),
            PathBuf::from("certs/us-east-1.key")
        );
        assert_eq!(c.cluster.tls.mode(), "mutual-tls");
        assert!(c.check_peer_tls().is_ok());
        let tls_warnings = |c: &Config| {
            c.warnings()
                .into_iter()
                .filter(|w| w.contains("cluster.tls"))
                .collect::<Vec<_>>()
        };
        assert!(tls_warnings(&c).is_empty(), "{:?}", c.warnings());
        // A path without the placeholder is the same file for every region (one per machine).
        let c = ok(&with_tls(
            "ca = \"/etc/atoll/ca.pem\"\ncert = \"/etc/atoll/region.pem\"\nkey = \"/etc/atoll/region.key\"",
        ));
        let PeerTls::Mutual(files) = &c.cluster.tls else {
            panic!()
        };
        assert_eq!(files.cert_for("us-east-1"), files.cert_for("eu-west-1"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("conf");
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("atoll.toml");
        let text = with_tls(
            "ca = \"certs/ca.pem\"\ncert = \"/abs/{region}.pem\"\nkey = \"../keys/{region}.key\"",
        );
        std::fs::write(&path, text).unwrap();
        let c = Config::load(&path).unwrap();
        let PeerTls::Mutual(files) = &c.cluster.tls else {
            panic!()
        };
        assert_eq!(files.ca, sub.join("certs/ca.pem"));
        assert_eq!(
            files.cert_for("us-east-1"),
            PathBuf::from("/abs/us-east-1.pem")
        );
        assert_eq!(
            files.key_for("us-east-1"),
            sub.join("../keys/us-east-1.key")
        );
        assert_eq!(c.source, path.display().to_string());
    }

    #[test]
    fn insecure_is_accepted_and_warned_about() {
        let c = ok(&format!("{BASE}\n[cluster.tls]\ninsecure = true\n"));
        assert_eq!(c.cluster.tls, PeerTls::Insecure);
        assert_eq!(c.cluster.tls.mode(), "insecure");
        assert!(c.check_peer_tls().is_ok());
        // (The other warning: no [auth] section.)
        let w: Vec<String> = c
            .warnings()
            .into_iter()
            .filter(|w| !w.starts_with("no [auth]"))
            .collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("insecure = true") && w[0].contains("atoll certs init"));
        let out = c.explain();
        assert!(out.contains("INSECURE"), "{out}");
        // With insecure, peer may stay at the api address (one listener, as before).
        assert_eq!(c.regions[0].peer, c.regions[0].api);
    }

    #[test]
    fn several_regions_must_say_how_they_talk() {
        let c = ok(BASE);
        assert_eq!(c.cluster.tls, PeerTls::Undeclared);
        let e = c.check_peer_tls().unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("atoll.toml: `cluster.tls`"), "{msg}");
        for n in [
            "2 regions",
            "atoll certs init --config atoll.toml",
            "insecure = true",
        ] {
            assert!(msg.contains(n), "`{n}` not in {msg}");
        }
        assert_eq!(e.key(), Some("cluster.tls"));
        assert!(c.explain().contains("NOT DECLARED"));
        // One region has no peers: nothing to declare.
        let single = ok(SINGLE);
        assert!(single.check_peer_tls().is_ok());
        assert!(
            single.explain().contains("one region"),
            "{}",
            single.explain()
        );
    }

    #[test]
    fn mutual_tls_needs_a_peer_address_of_its_own() {
        let text = edit(&with_tls(FILES), "peer = \"127.0.0.1:7201\"\n", "");
        let e = err(&text);
        // Pointed at the region's name (the table without `peer`).
        let line = text
            .lines()
            .position(|l| l == "name = \"eu-west-1\"")
            .unwrap()
            + 1;
        assert_err(
            &e,
            Some(line),
            "regions[1].peer",
            &["needs a `peer` address of its own", "127.0.0.1:7201"],
        );
        let text = edit(
            &with_tls(FILES),
            "peer = \"127.0.0.1:7200\"",
            "peer = \"127.0.0.1:7100\"",
        );
        let e = err(&text);
        assert_eq!(e.key(), Some("regions[0].peer"), "{e}");
    }

    #[test]
    fn bad_tls_sections_are_named() {
        let line_of = |text: &str, needle: &str| {
            text.lines().position(|l| l.starts_with(needle)).unwrap() + 1
        };
        // insecure = true with files.
        let text = with_tls(&format!("insecure = true\n{FILES}"));
        assert_err(
            &err(&text),
            Some(line_of(&text, "ca =")),
            "cluster.tls.ca",
            &["insecure = true", "takes no files"],
        );
        // A file missing.
        let text = with_tls("ca = \"ca.pem\"\nkey = \"{region}.key\"");
        let e = err(&text);
        assert_eq!(e.key(), Some("cluster.tls.cert"), "{e}");
        assert!(e.to_string().contains("atoll certs init"), "{e}");
        // insecure = false is not a mode of its own.
        let e = err(&with_tls("insecure = false"));
        assert_eq!(e.key(), Some("cluster.tls.ca"), "{e}");
        // An empty section.
        let e = err(&with_tls(""));
        assert_eq!(e.key(), Some("cluster.tls.ca"), "{e}");
        // Unknown keys, placeholders and a per-region CA.
        let text = with_tls(&format!("{FILES}\ncerts_dir = \"x\""));
        assert_err(
            &err(&text),
            Some(line_of(&text, "certs_dir")),
            "cluster.tls.certs_dir",
            &["unknown field"],
        );
        let text = edit(&with_tls(FILES), "{region}.pem", "{name}.pem");
        assert_err(
            &err(&text),
            Some(line_of(&text, "cert =")),
            "cluster.tls.cert",
            &["only placeholder is {region}"],
        );
        let text = edit(&with_tls(FILES), "certs/ca.pem", "certs/{region}-ca.pem");
        assert_err(
            &err(&text),
            Some(line_of(&text, "ca =")),
            "cluster.tls.ca",
            &["one CA"],
        );
        let text = edit(&with_tls(FILES), "\"certs/{region}.key\"", "\" \"");
        assert_err(
            &err(&text),
            Some(line_of(&text, "key =")),
            "cluster.tls.key",
            &["empty"],
        );
        let text = with_tls("insecure = \"yes\"");
        assert_eq!(err(&text).key(), Some("cluster.tls.insecure"));
    }

    #[test]
    fn explain_shows_the_files_of_every_region() {
        let out = ok(&with_tls(FILES)).explain();
        for n in [
            "between regions ([cluster.tls])",
            "mutual TLS",
            "ca    certs/ca.pem",
            "us-east-1: certs/us-east-1.pem and certs/us-east-1.key",
            "eu-west-1: certs/eu-west-1.pem and certs/eu-west-1.key",
        ] {
            assert!(out.contains(n), "`{n}` not in:\n{out}");
        }
    }

    #[test]
    fn the_three_regions_example_uses_mutual_tls() {
        let c = ok(THREE);
        let PeerTls::Mutual(files) = &c.cluster.tls else {
            panic!("{:?}", c.cluster.tls)
        };
        assert_eq!(files.ca, PathBuf::from("certs/ca.pem"));
        for r in &c.regions {
            assert_ne!(r.peer, r.api, "{}", r.name);
        }
    }
}

mod fencing {
    use super::*;

    fn standby(extra: &str) -> String {
        format!(
            "{}\n{extra}",
            edit(
                BASE,
                "name = \"t\"\n",
                "name = \"t\"\nmodel = \"active-standby\"\n"
            )
        )
    }

    #[test]
    fn defaults_and_explicit_values() {
        let c = ok(&standby(""));
        assert_eq!(
            c.fencing,
            FencingConfig::defaults(RegionId::new("us-east-1").unwrap())
        );
        let c = ok(&standby(
            "[fencing]\ninitial_primary = \"eu-west-1\"\nlease_ms = 2000\nrenew_every_ms = 400\nmargin_ms = 100\nmax_promotion_lag_ms = 0\n",
        ));
        assert_eq!(c.fencing.initial_primary.as_str(), "eu-west-1");
        assert_eq!(
            (
                c.fencing.lease_ms,
                c.fencing.renew_every_ms,
                c.fencing.margin_ms
            ),
            (2000, 400, 100)
        );
        assert_eq!(c.fencing.max_promotion_lag_ms, 0);
        let text = c.explain();
        assert!(text.contains("fencing"), "{text}");
        assert!(text.contains("automated promotion"), "{text}");
    }

    #[test]
    fn bad_fencing_is_refused_with_the_key() {
        let e = err(&standby("[fencing]\ninitial_primary = \"mars-1\"\n"));
        assert_eq!(e.key(), Some("fencing.initial_primary"));
        assert!(e.to_string().contains("mars-1") && e.to_string().contains("us-east-1"));
        let e = err(&standby(
            "[fencing]\nmargin_ms = 10\nmax_drift_ppm = 10000\n",
        ));
        assert_eq!(e.key(), Some("fencing"));
        assert!(e.to_string().contains("margin_ms"), "{e}");
        let e = err(&standby("[fencing]\nrenew_every_ms = 3000\n"));
        assert!(e.to_string().contains("renew_every_ms"), "{e}");
        let e = err(&standby("[fencing]\nlease_ms = 10\n"));
        assert_eq!(e.key(), Some("fencing.lease_ms"));
        let e = err(&standby("[fencing]\nquorum = true\n"));
        assert_eq!(e.key(), Some("fencing.quorum"));
        let e = err(&standby("[fencing]\nbogus = 1\n"));
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn forward_writes_is_off_by_default_and_only_for_active_standby() {
        assert!(!ok(&standby("")).fencing.forward_writes);
        let c = ok(&standby("[fencing]\nforward_writes = true\n"));
        assert!(c.fencing.forward_writes);
        assert!(
            c.explain().contains("forward_writes        true"),
            "{}",
            c.explain()
        );
        assert!(
            ok(&standby(""))
                .explain()
                .contains("forward_writes        false (default)")
        );
        let passive = edit(
            &standby("[fencing]\nforward_writes = true\n"),
            "model = \"active-standby\"",
            "model = \"active-passive\"",
        );
        let e = err(&passive);
        assert_eq!(e.key(), Some("fencing.forward_writes"));
        assert!(e.to_string().contains("passive"), "{e}");
        let e = err(&format!("{BASE}\n[fencing]\nforward_writes = true\n"));
        assert_eq!(e.key(), Some("fencing.forward_writes"));
        // Off is accepted everywhere.
        ok(&format!("{BASE}\n[fencing]\nforward_writes = false\n"));
    }

    #[test]
    fn even_voters_without_an_arbiter_is_a_warning() {
        let c = ok(&standby(""));
        let w = c.warnings();
        assert!(
            w.iter()
                .any(|w| w.contains("2 voters") && w.contains("[cluster.arbiter]")),
            "{w:?}"
        );
        let with_arbiter = edit(
            &standby(""),
            "model = \"active-standby\"\n",
            "model = \"active-standby\"\n\n[cluster.arbiter]\npeer = \"127.0.0.1:7190\"\n",
        );
        let c = ok(&with_arbiter);
        assert_eq!(c.control_voters(), 3);
        let a = c.cluster.arbiter.as_ref().unwrap();
        assert_eq!((a.name.as_str(), a.peer.port()), ("arbiter", 7190));
        assert!(!c.warnings().iter().any(|w| w.contains("voters")));
        // Active-active without quorum fencing has no control group: no warning.
        assert!(!ok(BASE).warnings().iter().any(|w| w.contains("voters")));
    }

    #[test]
    fn arbiter_needs_its_own_name_and_address() {
        let clash = edit(
            BASE,
            "name = \"t\"\n",
            "name = \"t\"\n\n[cluster.arbiter]\nname = \"us-east-1\"\npeer = \"127.0.0.1:7190\"\n",
        );
        assert_eq!(err(&clash).key(), Some("cluster.arbiter.name"));
        let addr = edit(
            BASE,
            "name = \"t\"\n",
            "name = \"t\"\n\n[cluster.arbiter]\npeer = \"127.0.0.1:7100\"\n",
        );
        assert_eq!(err(&addr).key(), Some("cluster.arbiter.peer"));
    }

    #[test]
    fn on_minority_per_keyspace() {
        let c = ok(&edit(
            BASE,
            "policy = \"mvr\"\n",
            "policy = \"mvr\"\non_minority = \"read-only\"\n",
        ));
        assert_eq!(
            c.keyspace("carts").unwrap().on_minority,
            OnMinority::ReadOnly
        );
        assert_eq!(
            c.keyspace("sessions").unwrap().on_minority,
            OnMinority::Available
        );
        let e = err(&edit(
            BASE,
            "policy = \"mvr\"\n",
            "policy = \"mvr\"\non_minority = \"maybe\"\n",
        ));
        assert!(e.to_string().contains("maybe"), "{e}");
    }

    /// Three regions, active-active with quorum fencing, and an owned keyspace whose options
    /// are `extra`.
    fn owned(extra: &str) -> String {
        format!(
            "[cluster]\nname = \"t\"\n\n[[regions]]\nname = \"us-east-1\"\napi = \"127.0.0.1:7100\"\n\n[[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\n\n[[regions]]\nname = \"ap-southeast-1\"\napi = \"127.0.0.1:7102\"\n\n[fencing]\nquorum = true\n\n[[keyspaces]]\nname = \"profiles\"\npolicy = \"owned\"\n{extra}"
        )
    }

    #[test]
    fn owned_keyspaces_have_disjoint_homes_in_known_regions() {
        let c = ok(&owned(
            "default_home = \"us-east-1\"\nhomes = [{ prefix = \"eu:\", region = \"eu-west-1\" }, { prefix = \"ap:\", region = \"ap-southeast-1\" }]\ntakeover = [\"us-east-1\", \"eu-west-1\"]\n",
        ));
        let o = c.keyspace("profiles").unwrap().owned.clone().unwrap();
        assert_eq!(
            o.rules.default.as_ref().map(|r| r.as_str()),
            Some("us-east-1")
        );
        assert_eq!(o.rules.prefixes.len(), 2);
        assert!(o.forward, "forwarding is the default");
        assert_eq!(o.takeover.len(), 2);
        let cases: [(&str, &str, &[&str]); 11] = [
            (
                "default_home = \"us-east-1\"\nhomes = [{ hash = [0, 100], region = \"eu-west-1\" }, { hash = [100, 200], region = \"us-east-1\" }]\n",
                "keyspaces[0].homes[1].hash",
                &["overlaps", "[0, 100]"],
            ),
            (
                "default_home = \"us-east-1\"\nhomes = [{ hash = [5, 65536], region = \"eu-west-1\" }]\n",
                "keyspaces[0].homes[0].hash",
                &["65535"],
            ),
            (
                "default_home = \"us-east-1\"\nhomes = [{ hash = [9, 3], region = \"eu-west-1\" }]\n",
                "keyspaces[0].homes[0].hash",
                &["LO <= HI"],
            ),
            (
                "default_home = \"us-east-1\"\nhomes = [{ prefix = \"eu:\", hash = [0, 3], region = \"eu-west-1\" }]\n",
                "keyspaces[0].homes[0]",
                &["exactly one of"],
            ),
            (
                "default_home = \"us-east-1\"\nhomes = [{ region = \"eu-west-1\" }]\n",
                "keyspaces[0].homes[0]",
                &["exactly one of"],
            ),
            ("", "keyspaces[0].default_home", &["default_home"]),
            (
                "default_home = \"mars-1\"\n",
                "keyspaces[0].default_home",
                &["mars-1", "not a region"],
            ),
            (
                "default_home = \"us-east-1\"\nhomes = [{ prefix = \"eu:\", region = \"eu-west-1\" }, { prefix = \"eu:1\", region = \"us-east-1\" }]\n",
                "keyspaces[0].homes[1].prefix",
                &["overlaps", "eu:"],
            ),
            (
                "default_home = \"us-east-1\"\nhomes = [{ prefix = \"eu:\", region = \"venus-2\" }]\n",
                "keyspaces[0].homes[0].region",
                &["venus-2"],
            ),
            (
                "default_home = \"us-east-1\"\nhomes = [{ prefix = \"\", region = \"eu-west-1\" }]\n",
                "keyspaces[0].homes[0].prefix",
                &["1 to 1024"],
            ),
            (
                "default_home = \"us-east-1\"\ntakeover = [\"eu-west-1\", \"eu-west-1\"]\n",
                "keyspaces[0].takeover[1]",
                &["twice"],
            ),
        ];
        for (extra, key, needles) in cases {
            let e = err(&owned(extra));
            assert_eq!(e.key(), Some(key), "{e}");
            for n in needles {
                assert!(e.to_string().contains(n), "`{n}` not in {e}");
            }
        }
    }

    #[test]
    fn owned_options_belong_to_owned_keyspaces_of_active_active_clusters() {
        let e = err(&edit(
            BASE,
            "policy = \"lww\"\n",
            "policy = \"lww\"\ndefault_home = \"us-east-1\"\n",
        ));
        assert_eq!(e.key(), Some("keyspaces[0].default_home"), "{e}");
        assert!(e.to_string().contains("only `owned`"), "{e}");
        let standby = owned("default_home = \"us-east-1\"\n").replace(
            "name = \"t\"\n",
            "name = \"t\"\nmodel = \"active-standby\"\n",
        );
        let e = err(&standby);
        assert!(e.to_string().contains("active-active"), "{e}");
        let no_quorum = owned("default_home = \"us-east-1\"\ntakeover = [\"eu-west-1\"]\n")
            .replace("[fencing]\nquorum = true\n", "");
        let e = err(&no_quorum);
        assert_eq!(e.key(), Some("keyspaces[0].takeover"), "{e}");
        assert!(e.to_string().contains("quorum = true"), "{e}");
        let no_quorum =
            owned("default_home = \"first-write\"\n").replace("[fencing]\nquorum = true\n", "");
        let e = err(&no_quorum);
        assert_eq!(e.key(), Some("keyspaces[0].default_home"), "{e}");
        assert!(e.to_string().contains("control group"), "{e}");
    }

    #[test]
    fn owned_homes_by_hash_range_and_by_first_write() {
        let c = ok(&owned(
            "default_home = \"first-write\"\nhomes = [{ prefix = \"eu:\", region = \"eu-west-1\" }, { hash = [0, 32767], region = \"ap-southeast-1\" }, { hash = [32768, 40000], region = \"us-east-1\" }]\n",
        ));
        let o = c.keyspace("profiles").unwrap().owned.clone().unwrap();
        assert_eq!(o.rules.default, None, "homed by first write");
        assert_eq!(o.rules.prefixes.len(), 1);
        let hashes: Vec<(u16, u16, &str)> = o
            .rules
            .hashes
            .iter()
            .map(|(l, h, r)| (*l, *h, r.as_str()))
            .collect();
        assert_eq!(
            hashes,
            vec![(0, 32767, "ap-southeast-1"), (32768, 40000, "us-east-1")]
        );
        let text = c.explain();
        assert!(text.contains("hash 0-32767->ap-southeast-1"), "{text}");
        assert!(text.contains("first writer"), "{text}");
    }

    #[test]
    fn region_local_data_declared_owned_is_a_warning() {
        let c = ok(&owned("default_home = \"us-east-1\"\n")
            .replace("name = \"profiles\"", "name = \"user_sessions\""));
        assert!(
            c.warnings()
                .iter()
                .any(|w| w.contains("user_sessions") && w.contains("region-local")),
            "{:?}",
            c.warnings()
        );
        let c = ok(&owned("default_home = \"us-east-1\"\n"));
        assert!(
            !c.warnings().iter().any(|w| w.contains("region-local")),
            "{:?}",
            c.warnings()
        );
    }
}

#[test]
fn strong_keyspaces_parse_with_a_value_limit_and_refuse_on_minority() {
    let text = format!(
        "{BASE}\n[[keyspaces]]\nname = \"seats\"\npolicy = \"strong\"\nmax_value_bytes = 4096\n"
    );
    let c = ok(&text);
    let seats = c.keyspace("seats").expect("seats");
    assert_eq!(seats.policy, Policy::Strong);
    assert_eq!(seats.max_value_bytes, 4096);
    assert_eq!(seats.options(), vec![("max_value_bytes", 4096)]);
    let e = err(&format!(
        "{BASE}\n[[keyspaces]]\nname = \"seats\"\npolicy = \"strong\"\non_minority = \"available\"\n"
    ));
    assert_err(
        &e,
        None,
        "keyspaces[2].on_minority",
        &["strong", "ATOLL-NO-QUORUM"],
    );
    let e = err(&format!(
        "{BASE}\n[[keyspaces]]\nname = \"seats\"\npolicy = \"strong\"\nmax_siblings = 3\n"
    ));
    assert!(e.to_string().contains("max_siblings"), "{e}");
}

#[test]
fn strong_region_local_keyspaces_and_two_region_strong_groups_are_warned_about() {
    let c = ok(&format!(
        "{BASE}\n[[keyspaces]]\nname = \"user-sessions\"\npolicy = \"strong\"\n\n[[keyspaces]]\nname = \"seats\"\npolicy = \"strong\"\n"
    ));
    let w = c.warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("`user-sessions` is `strong`") && w.contains("region-local")),
        "{w:?}"
    );
    assert!(
        !w.iter().any(|w| w.contains("`seats` is `strong`")),
        "{w:?}"
    );
    // BASE has two regions: the strong group needs both.
    assert!(w.iter().any(|w| w.contains("which means both")), "{w:?}");
    // No strong keyspace, no strong warning.
    assert!(!ok(BASE).warnings().iter().any(|w| w.contains("strong")));
}

// ---------------------------------------------------------------------------------------------
// What a config promises (`atoll config check`): failover times, RPO bounds, their warnings

mod promises {
    use super::*;
    use crate::promise::{DNS_RESOLVER_SLACK_MS, Promotion, Rpo};

    /// The classic Route 53 health check: every 10 s, 3 failures, TTL 30 s (a check timeout of
    /// 2 s, which atoll needs and Route 53 does not state).
    const ARTICLE: &str = "\n[router]\nzone = \"atoll.test\"\n\n[router.health]\ninterval_ms = 10000\ntimeout_ms = 2000\nfailure_threshold = 3\n\n[[router.names]]\nname = \"api\"\npolicy = \"latency\"\nttl_secs = 30\n";

    fn with_rto(text: &str, rto: &str) -> String {
        edit(
            text,
            "name = \"t\"\n",
            &format!("name = \"t\"\nrto = \"{rto}\"\n"),
        )
    }

    fn standby(extra: &str) -> String {
        format!(
            "{}\n{extra}",
            edit(
                BASE,
                "name = \"t\"\n",
                "name = \"t\"\nmodel = \"active-standby\"\n"
            )
        )
    }

    fn model(text: &str, m: &str) -> String {
        edit(
            text,
            "name = \"t\"\n",
            &format!("name = \"t\"\nmodel = \"{m}\"\n"),
        )
    }

    fn has(c: &Config, needle: &str) -> bool {
        c.warnings().iter().any(|w| w.contains(needle))
    }

    #[test]
    fn the_articles_health_check_gives_its_worst_case() {
        let c = ok(&format!("{BASE}{ARTICLE}"));
        let p = c.promises();
        let d = p.detection.as_ref().unwrap();
        assert_eq!(d.checks_ms, 30_000, "interval x threshold");
        assert_eq!(d.worst_ms, 32_000, "+ the last check's timeout");
        assert_eq!(p.dns.len(), 1);
        let api = &p.dns[0];
        assert_eq!(api.name, "api.atoll.test");
        // 10 s x 3 + TTL 30 s = 60 s; with the check timeout and resolver slack.
        assert_eq!(api.article_ms, 60_000);
        assert_eq!(api.resolver_slack_ms, DNS_RESOLVER_SLACK_MS);
        assert_eq!(
            api.worst_ms,
            30_000 + 2_000 + 30_000 + DNS_RESOLVER_SLACK_MS
        );
        let px = p.proxy.as_ref().unwrap();
        assert_eq!(px.ejection_worst_ms, 32_000);
        assert_eq!((px.connect_timeout_ms, px.outlier_failures), (1_000, 5));
        assert_eq!(p.promotion, Promotion::NotNeeded);
        assert_eq!(p.worst_case_ms, Some(67_000));
        let text = c.explain();
        assert!(text.contains("DNS api.atoll.test"), "{text}");
        assert!(
            text.contains("67 s = detection + TTL 30 s (the article's interval x threshold + TTL: 60 s), + 5 s resolver slack assumed"),
            "{text}"
        );
        assert!(
            text.contains("detection            30 s = interval 10 s x failure_threshold 3"),
            "{text}"
        );
    }

    #[test]
    fn each_name_has_its_own_ttl() {
        let text = format!(
            "{BASE}{ARTICLE}\n[[router.names]]\nname = \"primary\"\npolicy = \"failover\"\nttl_secs = 10\n"
        );
        let p = ok(&text).promises();
        let ttls: Vec<(String, u64)> = p
            .dns
            .iter()
            .map(|d| (d.name.clone(), d.article_ms))
            .collect();
        assert_eq!(
            ttls,
            vec![
                ("api.atoll.test".to_string(), 60_000),
                ("primary.atoll.test".to_string(), 40_000)
            ]
        );
        assert_eq!(p.worst_case_ms, Some(67_000), "the slowest name");
    }

    #[test]
    fn automated_promotion_is_the_fences_expiry_wait() {
        let p = ok(&standby("")).promises();
        // lease 5000 x (1 + 1000 ppm) + margin 250, then a tick of min(1000 / 4, 250).
        assert_eq!(
            p.promotion,
            Promotion::Automatic {
                expiry_wait_ms: 5_255,
                tick_ms: 250,
                worst_ms: 5_505
            }
        );
        let p = ok(&standby(
            "[fencing]\nlease_ms = 2000\nrenew_every_ms = 400\nmargin_ms = 100\n",
        ))
        .promises();
        assert_eq!(
            p.promotion,
            Promotion::Automatic {
                expiry_wait_ms: 2_102,
                tick_ms: 100,
                worst_ms: 2_202
            }
        );
        // The same wait as the lease the regions run.
        let f = ok(&standby("")).fencing;
        let core = f.core(
            f.initial_primary.clone(),
            atoll_core::fence::Topology::ActiveStandby,
            vec![f.initial_primary.clone()],
        );
        assert_eq!(core.expiry_wait_ms(), 5_255);
        // Without a router nothing moves clients: no overall bound.
        assert_eq!(ok(&standby("")).promises().worst_case_ms, None);
        // With one, the larger of promotion and traffic.
        let p = ok(&format!("{}{ARTICLE}", standby(""))).promises();
        assert_eq!(p.worst_case_ms, Some(67_000));
        assert_eq!(p.dns[0].follows_primary_ms, None, "a latency name");
        // A failover name follows the primary: promotion 5.5 s + one 10 s check + TTL 30 s + 5 s.
        let failover = edit(
            &format!("{}{ARTICLE}", standby("")),
            "policy = \"latency\"",
            "policy = \"failover\"",
        );
        let p = ok(&failover).promises();
        assert_eq!(
            p.dns[0].follows_primary_ms,
            Some(5_505 + 10_000 + 30_000 + 5_000)
        );
        assert_eq!(
            p.worst_case_ms,
            Some(67_000),
            "detection + TTL + slack is still the larger"
        );
        let c = ok(&with_rto(&failover, "60s"));
        assert!(!has(&c, "follows the primary"), "{:?}", c.warnings());
        let c = ok(&with_rto(&failover, "45s"));
        assert!(
            has(&c, "`api.atoll.test` follows the primary"),
            "{:?}",
            c.warnings()
        );
        let p = ok(&model(BASE, "active-passive")).promises();
        assert_eq!(
            p.promotion,
            Promotion::Manual {
                lease_expiry_ms: 5_255
            }
        );
        assert!(
            ok(&standby("")).explain().contains(
                "promotion            5.5 s = lease expiry wait 5.3 s + a tick of 250 ms"
            )
        );
    }

    #[test]
    fn rpo_per_keyspace_follows_the_model() {
        let extra = "\n[[keyspaces]]\nname = \"ledger\"\npolicy = \"strong\"\n";
        let rpo = |text: &str| -> Vec<(String, Rpo)> {
            ok(text)
                .promises()
                .keyspaces
                .into_iter()
                .map(|k| (k.name, k.rpo))
                .collect()
        };
        let aa = rpo(&format!("{BASE}{extra}"));
        assert_eq!(
            aa,
            vec![
                (
                    "sessions".into(),
                    Rpo::ReplicationLag {
                        alert_above_secs: 10
                    }
                ),
                (
                    "carts".into(),
                    Rpo::ReplicationLag {
                        alert_above_secs: 10
                    }
                ),
                ("ledger".into(), Rpo::Zero),
            ]
        );
        let st = rpo(&format!("{}{extra}", standby("")));
        assert_eq!(st[0].1, Rpo::PromotionLag { max_ms: 10_000 });
        assert_eq!(st[2].1, Rpo::Zero);
        let ap = rpo(&format!("{}{extra}", model(BASE, "active-passive")));
        assert_eq!(ap[1].1, Rpo::OperatorExposure);
        let owned = format!(
            "{BASE}\n[[keyspaces]]\nname = \"profiles\"\npolicy = \"owned\"\ndefault_home = \"us-east-1\"\n"
        );
        assert_eq!(
            rpo(&owned)[2].1,
            Rpo::LagAtTakeover {
                automatic_takeover: false
            }
        );
        let text = ok(&format!("{}{extra}", standby(""))).explain();
        assert!(text.contains("RPO per keyspace (active-standby)"), "{text}");
        assert!(
            text.contains("at most max_promotion_lag_ms = 10 s"),
            "{text}"
        );
    }

    #[test]
    fn rto_is_parsed_and_checked() {
        assert_eq!(ok(&with_rto(BASE, "90s")).cluster.rto_ms, Some(90_000));
        assert_eq!(ok(&with_rto(BASE, "1h30m")).cluster.rto_ms, Some(5_400_000));
        assert_eq!(ok(BASE).cluster.rto_ms, None);
        for (bad, needle) in [
            ("30", "no unit"),
            ("0s", "out of range"),
            ("soon", "not a duration"),
        ] {
            let e = err(&with_rto(BASE, bad));
            assert_err(&e, Some(3), "cluster.rto", &[needle]);
        }
    }

    #[test]
    fn dns_failover_slower_than_the_rto_is_a_warning() {
        let text = format!("{BASE}{ARTICLE}");
        // 67 s of DNS failover against 60 s: warned, naming the name and the figure.
        let c = ok(&with_rto(&text, "60s"));
        let w: Vec<String> = c
            .warnings()
            .into_iter()
            .filter(|w| w.contains("rto"))
            .collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("DNS failover of `api.atoll.test` can take 67 s"),
            "{w:?}"
        );
        assert!(c.explain().contains("ABOVE the declared rto"));
        // 2 minutes: within it, no warning.
        let c = ok(&with_rto(&text, "2m"));
        assert!(!has(&c, "rto"), "{:?}", c.warnings());
        assert!(c.explain().contains("(within the declared rto)"));
        // No rto declared: nothing to compare.
        assert!(!has(&ok(&text), "rto"));
    }

    #[test]
    fn proxy_ejection_slower_than_the_rto_is_a_warning() {
        // Default checks: 1 s x 3 + 0.8 s = 3.8 s to eject.
        let text = format!(
            "{BASE}\n[router]\nttl_secs = 5\n\n[[router.names]]\nname = \"api\"\npolicy = \"latency\"\n"
        );
        let c = ok(&with_rto(&text, "3s"));
        assert!(
            has(&c, "the proxy's health checks take 3.8 s"),
            "{:?}",
            c.warnings()
        );
        let c = ok(&with_rto(&text, "15s"));
        assert!(!has(&c, "the proxy's"), "{:?}", c.warnings());
        assert!(!has(&c, "rto"), "{:?}", c.warnings());
    }

    #[test]
    fn promotion_slower_than_the_rto_is_a_warning() {
        let c = ok(&with_rto(&standby(""), "5s"));
        assert!(
            has(&c, "automated promotion takes up to 5.5 s"),
            "{:?}",
            c.warnings()
        );
        let c = ok(&with_rto(&standby(""), "6s"));
        assert!(!has(&c, "automated promotion"), "{:?}", c.warnings());
    }

    #[test]
    fn manual_promotion_under_ten_minutes_is_a_warning() {
        let ap = model(BASE, "active-passive");
        let c = ok(&with_rto(&ap, "5m"));
        assert!(
            has(&c, "model active-passive promotes only when an operator"),
            "{:?}",
            c.warnings()
        );
        let c = ok(&with_rto(&ap, "15m"));
        assert!(!has(&c, "operator"), "{:?}", c.warnings());
    }

    #[test]
    fn an_rto_without_a_router_is_a_warning() {
        let c = ok(&with_rto(BASE, "1m"));
        assert!(has(&c, "there is no [router]"), "{:?}", c.warnings());
        let c = ok(&with_rto(&format!("{BASE}{ARTICLE}"), "2m"));
        assert!(!has(&c, "no [router]"), "{:?}", c.warnings());
    }

    #[test]
    fn ttl_of_60_s_is_fine_and_61_is_not() {
        let at = |ttl: u32| {
            ok(&edit(
                &format!("{BASE}{ARTICLE}"),
                "ttl_secs = 30",
                &format!("ttl_secs = {ttl}"),
            ))
        };
        assert!(!has(&at(60), "TTL"), "{:?}", at(60).warnings());
        assert!(has(&at(61), "has a TTL of 61 s"), "{:?}", at(61).warnings());
    }

    fn with_arbiter(arbiter: &str) -> String {
        let located = edit(
            &standby(""),
            "api = \"127.0.0.1:7100\"\n",
            "api = \"127.0.0.1:7100\"\nlocation = { lat = 38.9, lon = -77.4 }\n",
        );
        edit(
            &located,
            "model = \"active-standby\"\n",
            &format!("model = \"active-standby\"\n\n[cluster.arbiter]\n{arbiter}\n"),
        )
    }

    #[test]
    fn an_arbiter_where_a_region_is_is_a_warning() {
        // Ashburn and Washington DC: one location.
        let c = ok(&with_arbiter(
            "peer = \"127.0.0.1:7190\"\nlocation = { lat = 38.9, lon = -77.0 }",
        ));
        assert_eq!(
            c.cluster.arbiter.as_ref().unwrap().location.map(|l| l.lat),
            Some(38.9)
        );
        assert!(
            has(
                &c,
                "the arbiter `arbiter` is placed 35 km from region us-east-1"
            ),
            "{:?}",
            c.warnings()
        );
        // Ohio: a third location.
        let c = ok(&with_arbiter(
            "peer = \"127.0.0.1:7190\"\nlocation = { lat = 40.0, lon = -83.0 }",
        ));
        assert!(!has(&c, "arbiter"), "{:?}", c.warnings());
        // No location: nothing to compare.
        let c = ok(&with_arbiter("peer = \"127.0.0.1:7190\""));
        assert!(!has(&c, "arbiter"), "{:?}", c.warnings());
        // A bad location is refused like a region's.
        let e = err(&with_arbiter(
            "peer = \"127.0.0.1:7190\"\nlocation = { lat = 95.0, lon = 0.0 }",
        ));
        assert_eq!(e.key(), Some("cluster.arbiter.location.lat"), "{e}");
    }

    #[test]
    fn an_arbiter_on_a_regions_host_is_a_warning() {
        let text = edit(
            &edit(
                &standby(""),
                "api = \"127.0.0.1:7101\"",
                "api = \"10.0.0.2:7101\"",
            ),
            "model = \"active-standby\"\n",
            "model = \"active-standby\"\n\n[cluster.arbiter]\npeer = \"10.0.0.2:7190\"\n",
        );
        let c = ok(&text);
        assert!(
            has(&c, "has the IP address 10.0.0.2 of region eu-west-1"),
            "{:?}",
            c.warnings()
        );
        let c = ok(&text.replace("peer = \"10.0.0.2:7190\"", "peer = \"10.0.0.3:7190\""));
        assert!(!has(&c, "arbiter"), "{:?}", c.warnings());
    }
}

// ---------------------------------------------------------------------------------------------
// [resp] and the regions' `resp` addresses (docs/design/resp.md)

#[test]
fn resp_addresses_and_the_key_rule() {
    let text = edit(
        BASE,
        "api = \"127.0.0.1:7100\"\n",
        "api = \"127.0.0.1:7100\"\nresp = \"127.0.0.1:7110\"\n",
    );
    let c = ok(&text);
    assert_eq!(c.regions[0].resp, Some("127.0.0.1:7110".parse().unwrap()));
    assert_eq!(c.regions[1].resp, None);
    assert_eq!(c.resp, RespConfig::default());
    let key = |raw: &'static str| c.resp_key(raw.as_bytes());
    assert_eq!(
        key("sessions:alice"),
        RespKey::Key {
            keyspace: "sessions",
            key: b"alice"
        }
    );
    assert_eq!(
        key("carts:a:b"),
        RespKey::Key {
            keyspace: "carts",
            key: b"a:b"
        }
    );
    assert_eq!(key("nope:x"), RespKey::Unknown { prefix: b"nope" });
    assert_eq!(key("alice"), RespKey::Unknown { prefix: b"alice" });
    // An empty key after the prefix is the keyspace's (the server refuses it as empty).
    assert_eq!(
        key("sessions:"),
        RespKey::Key {
            keyspace: "sessions",
            key: b""
        }
    );
    let out = c.explain();
    assert!(out.contains("127.0.0.1:7110"), "{out}");
    assert!(out.contains("us-east-1 on 127.0.0.1:7110"), "{out}");
    assert!(out.contains("default_keyspace  none (default)"), "{out}");
    assert!(out.contains("max_connections   4096 (default)"), "{out}");

    let with = format!("{text}\n[resp]\ndefault_keyspace = \"sessions\"\nmax_connections = 10\n");
    let c = ok(&with);
    assert_eq!(c.resp.default_keyspace.as_deref(), Some("sessions"));
    assert_eq!(c.resp.max_connections, 10);
    assert_eq!(
        c.resp_key(b"nope:x"),
        RespKey::Key {
            keyspace: "sessions",
            key: b"nope:x"
        }
    );
    assert_eq!(
        c.resp_key(b"carts:x"),
        RespKey::Key {
            keyspace: "carts",
            key: b"x"
        }
    );
    assert!(c.explain().contains("default_keyspace  sessions"));
}

#[test]
fn resp_settings_are_strict() {
    // Line 21 is the first line after BASE's 18 lines, a blank and `[resp]`.
    let e = err(&format!("{BASE}\n[resp]\nseparator = \"/\"\n"));
    assert_err(&e, Some(21), "resp.separator", &["unknown field"]);
    let e = err(&format!("{BASE}\n[resp]\ndefault_keyspace = \"nope\"\n"));
    assert_err(
        &e,
        Some(21),
        "resp.default_keyspace",
        &["`nope` is not a declared keyspace", "sessions, carts"],
    );
    let e = err(&format!("{BASE}\n[resp]\nmax_connections = 0\n"));
    assert_err(&e, Some(21), "resp.max_connections", &["out of range"]);
    // A RESP address is unique like every other address, and not the region's own api.
    let e = err(&edit(
        BASE,
        "api = \"127.0.0.1:7100\"\n",
        "api = \"127.0.0.1:7100\"\nresp = \"127.0.0.1:7101\"\n",
    ));
    assert_err(
        &e,
        Some(11),
        "regions[1].api",
        &["already the resp address"],
    );
    let e = err(&edit(
        BASE,
        "api = \"127.0.0.1:7100\"\n",
        "api = \"127.0.0.1:7100\"\nresp = \"127.0.0.1:7100\"\n",
    ));
    assert_err(&e, Some(7), "regions[0].resp", &["its api address"]);
    let e = err(&edit(
        BASE,
        "api = \"127.0.0.1:7100\"\n",
        "api = \"127.0.0.1:7100\"\nresp = \"localhost:7110\"\n",
    ));
    assert_err(&e, Some(7), "regions[0].resp", &["not an IP address"]);
}

#[test]
fn default_ttl_is_a_bounded_duration_on_lww_owned_and_mvr_keyspaces_only() {
    let with = |policy: &str, line: &str| {
        format!("{BASE}\n[[keyspaces]]\nname = \"tokens\"\npolicy = \"{policy}\"\n{line}\n")
    };
    let c = ok(&with("lww", "default_ttl = \"30m\""));
    let k = c.keyspace("tokens").unwrap();
    assert_eq!(k.default_ttl_ms, Some(30 * 60_000));
    assert!(
        c.explain().contains("default_ttl=30m"),
        "config check does not show it:\n{}",
        c.explain()
    );
    assert_eq!(
        ok(&with("lww", ""))
            .keyspace("tokens")
            .unwrap()
            .default_ttl_ms,
        None
    );
    assert_eq!(
        ok(&with("mvr", "default_ttl = \"1h\""))
            .keyspace("tokens")
            .unwrap()
            .default_ttl_ms,
        Some(3_600_000)
    );
    for (policy, line, needle) in [
        (
            "counter",
            "default_ttl = \"1h\"",
            "only `lww`, `owned` and `mvr` keyspaces",
        ),
        (
            "set",
            "default_ttl = \"1h\"",
            "only `lww`, `owned` and `mvr` keyspaces",
        ),
        ("lww", "default_ttl = \"0s\"", "out of range"),
        ("lww", "default_ttl = \"soon\"", "default_ttl"),
        ("lww", "default_ttl = \"40000d\"", "out of range"),
    ] {
        let e = err(&with(policy, line));
        assert!(e.to_string().contains(needle), "{policy} {line}: {e}");
        assert!(e.to_string().contains("default_ttl"), "{e}");
    }
}

#[test]
fn ratelimit_keyspaces_need_a_limit_and_a_window_and_split_budgets_add_up() {
    let with = |policy: &str, lines: &str| {
        format!("{BASE}\n[[keyspaces]]\nname = \"api-limits\"\npolicy = \"{policy}\"\n{lines}\n")
    };
    let c = ok(&with("ratelimit", "limit = 100\nwindow = \"1m\""));
    let rule = c.keyspace("api-limits").unwrap().ratelimit.clone().unwrap();
    assert_eq!((rule.limit, rule.window_ms), (100, 60_000));
    assert_eq!(
        rule.algorithm,
        atoll_core::crdt::ratewindow::Algorithm::Sliding
    );
    assert_eq!(rule.shares, None);
    assert!(
        c.explain()
            .contains("limit=100 per window=1m, algorithm=sliding, budget=shared"),
        "{}",
        c.explain()
    );
    let c = ok(&with(
        "ratelimit",
        "limit = 7\nwindow = \"10s\"\nalgorithm = \"fixed\"\nbudget = \"split\"",
    ));
    let rule = c.keyspace("api-limits").unwrap().ratelimit.clone().unwrap();
    let shares = rule.shares.unwrap();
    assert_eq!(shares.values().sum::<u64>(), 7, "{shares:?}");
    assert_eq!(shares.len(), c.regions.len());
    for (lines, needle) in [
        ("window = \"1m\"", "needs `limit`"),
        ("limit = 5", "needs `window`"),
        ("limit = 0\nwindow = \"1m\"", "out of range"),
        ("limit = 5\nwindow = \"2d\"", "out of range"),
        (
            "limit = 5\nwindow = \"1m\"\nalgorithm = \"leaky\"",
            "unknown algorithm",
        ),
        (
            "limit = 5\nwindow = \"1m\"\nbudget = \"half\"",
            "unknown budget",
        ),
    ] {
        let e = err(&with("ratelimit", lines));
        assert!(e.to_string().contains(needle), "{lines}: {e}");
    }
    let e = err(&with("counter", "limit = 5"));
    assert!(e.to_string().contains("only `ratelimit` keyspaces"), "{e}");
}

/// `BASE` with a third region appended, a replica unless `voter`.
fn with_added(voter: bool) -> String {
    let region = format!(
        "[[regions]]\nname = \"ap-south-1\"\napi = \"127.0.0.1:7102\"\n{}\n\n[[keyspaces]]\nname = \"sessions\"",
        if voter { "" } else { "voter = false" }
    );
    edit(BASE, "[[keyspaces]]\nname = \"sessions\"", &region)
}

#[test]
fn replicas_are_active_active_only_never_homes_and_never_all() {
    let c = ok(&with_added(false));
    assert_eq!(
        c.voters().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["us-east-1", "eu-west-1"]
    );
    assert!(!c.is_voter("ap-south-1") && c.is_voter("us-east-1"));
    assert_eq!(c.control_voters(), 2);
    assert!(c.explain().contains("no (replica"), "{}", c.explain());
    // In the lease models every region is a lease candidate.
    let e = err(&edit(
        &with_added(false),
        "name = \"t\"",
        "name = \"t\"\nmodel = \"active-standby\"",
    ));
    assert!(e.to_string().contains("needs cluster.model"), "{e}");
    assert_eq!(e.key(), Some("regions[2].voter"));
    // Not every region a replica.
    let all = BASE.replace(
        "api = \"127.0.0.1:7101\"",
        "api = \"127.0.0.1:7101\"\nvoter = false",
    );
    let all = all.replace(
        "api = \"127.0.0.1:7100\"",
        "api = \"127.0.0.1:7100\"\nvoter = false",
    );
    assert!(
        err(&all)
            .to_string()
            .contains("at least one region must be a voter")
    );
    // An owned key's home is a voter.
    let owned = format!(
        "{}\n[[keyspaces]]\nname = \"profiles\"\npolicy = \"owned\"\ndefault_home = \"ap-south-1\"\n",
        with_added(false)
    );
    let e = err(&owned);
    assert!(e.to_string().contains("must be a voter"), "{e}");
    assert!(
        ok(&owned.replace(
            "default_home = \"ap-south-1\"",
            "default_home = \"eu-west-1\""
        ))
        .keyspace("profiles")
        .is_some()
    );
    // A split budget is divided among the voters: the replica's arrival changes no share.
    let split = "\n[[keyspaces]]\nname = \"q\"\npolicy = \"ratelimit\"\nlimit = 10\nwindow = \"1m\"\nbudget = \"split\"\n";
    let before = ok(&format!("{BASE}{split}"));
    let after = ok(&format!("{}{split}", with_added(false)));
    assert_eq!(before.keyspaces, after.keyspaces);
}

fn names(regions: &[RegionConfig]) -> Vec<&str> {
    regions.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn a_reload_takes_appended_replicas_and_refuses_anything_else() {
    let running = ok(BASE);
    let none = running.reload_change(&ok(BASE)).expect("no change");
    assert_eq!(none, ReloadChange::default());
    assert!(none.is_empty());
    let change = running
        .reload_change(&ok(&with_added(false)))
        .expect("an appended replica");
    assert!(change.removed.is_empty() && !change.is_empty());
    assert_eq!(names(&change.added), ["ap-south-1"]);
    assert!(!change.added[0].voter);
    let refused = |text: &str, needle: &str| {
        let e = running.reload_change(&ok(text)).expect_err(text);
        assert!(e.contains(needle), "{needle}: {e}");
    };
    refused(&with_added(true), "added as a voter");
    refused(
        &edit(BASE, "127.0.0.1:7101", "127.0.0.1:7109"),
        "region eu-west-1 changed",
    );
    refused(
        &edit(
            BASE,
            "policy = \"mvr\"",
            "policy = \"mvr\"\nmax_siblings = 7",
        ),
        "[[keyspaces]] changed",
    );
    refused(
        &format!(
            "{}\n[replication]\nheartbeat_interval_ms = 2000\n",
            with_added(false)
        ),
        "[replication] changed",
    );
    // The declared regions in another order.
    let swapped = edit(
        &edit(BASE, "name = \"us-east-1\"", "name = \"X\""),
        "name = \"eu-west-1\"",
        "name = \"us-east-1\"",
    );
    let swapped = edit(&swapped, "name = \"X\"", "name = \"eu-west-1\"");
    let swapped = edit(&swapped, "api = \"127.0.0.1:7100\"", "api = \"X\"");
    let swapped = edit(
        &swapped,
        "api = \"127.0.0.1:7101\"",
        "api = \"127.0.0.1:7100\"",
    );
    let swapped = edit(&swapped, "api = \"X\"", "api = \"127.0.0.1:7101\"");
    refused(&swapped, "changed order");
}

/// BASE with a replica `name` at `api` declared between the two voters.
fn with_replica_between(name: &str, api: &str) -> String {
    edit(
        BASE,
        "[[regions]]\nname = \"eu-west-1\"",
        &format!(
            "[[regions]]\nname = \"{name}\"\napi = \"{api}\"\nvoter = false\n\n[[regions]]\nname = \"eu-west-1\""
        ),
    )
}

#[test]
fn a_reload_takes_replicas_dropped_from_the_list_and_refuses_dropping_a_voter() {
    // The replica appended last, dropped.
    let four = ok(&with_added(false));
    let change = four.reload_change(&ok(BASE)).expect("a replica removed");
    assert!(change.added.is_empty());
    assert_eq!(names(&change.removed), ["ap-south-1"]);
    assert!(!change.removed[0].voter);
    // A replica declared among the voters, dropped: the others keep their order.
    let middle = ok(&with_replica_between("sa-east-1", "127.0.0.1:7103"));
    let change = middle.reload_change(&ok(BASE)).expect("a replica removed");
    assert_eq!(names(&change.removed), ["sa-east-1"]);
    // One replica removed and another appended in the same reload.
    let change = middle
        .reload_change(&ok(&with_added(false)))
        .expect("one removed, one added");
    assert_eq!(names(&change.removed), ["sa-east-1"]);
    assert_eq!(names(&change.added), ["ap-south-1"]);
    // Both replicas removed.
    let both = with_added(false).replace(
        "[[regions]]\nname = \"eu-west-1\"",
        "[[regions]]\nname = \"sa-east-1\"\napi = \"127.0.0.1:7103\"\nvoter = false\n\n[[regions]]\nname = \"eu-west-1\"",
    );
    let change = ok(&both).reload_change(&ok(BASE)).expect("two removed");
    assert_eq!(names(&change.removed), ["sa-east-1", "ap-south-1"]);

    // A voter dropped: refused, with the reason.
    let three_voters =
        format!("{BASE}\n[[regions]]\nname = \"ap-south-1\"\napi = \"127.0.0.1:7102\"\n");
    let three_voters = ok(&three_voters);
    let e = three_voters
        .reload_change(&ok(BASE))
        .expect_err("a voter removed");
    assert!(e.contains("ap-south-1 is a voter"), "{e}");
    assert!(e.contains("control group and the strong group"), "{e}");
    assert!(e.contains("not supported at run time"), "{e}");
    let e = ok(&with_added(false))
        .reload_change(&ok(&edit(
            &with_added(false),
            "[[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\n\n",
            "",
        )))
        .expect_err("a voter removed beside a replica");
    assert!(e.contains("eu-west-1 is a voter"), "{e}");
    // A replica dropped and its name appended again with another table: a change, refused.
    let moved = edit(&with_added(false), "127.0.0.1:7102", "127.0.0.1:7109");
    let e = four
        .reload_change(&ok(&moved))
        .expect_err("a changed table");
    assert!(e.contains("region ap-south-1 changed"), "{e}");
    // A removal with another change: refused as a whole.
    let e = four
        .reload_change(&ok(&format!(
            "{BASE}\n[replication]\nheartbeat_interval_ms = 2000\n"
        )))
        .expect_err("another section changed");
    assert!(e.contains("[replication] changed"), "{e}");
}
