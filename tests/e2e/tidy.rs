//! Checks that keep the project's own documents true.
//!
//! - Every path that `ARCHITECTURE.md` or `README.md` cites in backticks exists.
//! - Every "Architecture Invariant:" paragraph names at least one test file or crate that exists
//!   (an invariant without a test is a wish).
//! - Every crate depends only on the atoll crates its layer allows (read from the manifests), so
//!   heavy adapters never leak into a core and every library can be embedded; and no library but
//!   `crates/atoll-cli` depends on clap (command lines live there and in `src/`).
//! - The wall clock is read only in `crates/atoll-core/src/clock.rs`, and no `todo!` or
//!   `unimplemented!` is left in non-test code.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Backticked spans of `text` that look like repository paths: they contain a `/`, no spaces,
/// and start with a top-level folder of this repository.
fn cited_paths(text: &str) -> Vec<String> {
    let tops = [
        "crates/",
        "tests/",
        "src/",
        "bench/",
        "docs/",
        "deploy/",
        "examples/",
        "scripts/",
        "drills/",
        ".ci/",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.contains(char::is_whitespace))
        .filter(|s| tops.iter().any(|t| s.starts_with(t)))
        .map(|s| s.trim_end_matches(['.', ',', ':', ')']).to_string())
        .collect()
}

#[test]
fn every_path_the_docs_cite_exists() {
    let mut missing = Vec::new();
    for doc in ["ARCHITECTURE.md", "README.md"] {
        for p in cited_paths(&read(doc)) {
            // `crates/atoll-sim` and `crates/atoll-store/tests/format.rs` alike; a glob-like
            // `deploy/*` is not a path.
            if p.contains('*') {
                continue;
            }
            if !root().join(&p).exists() {
                missing.push(format!("{doc} cites `{p}`, which does not exist"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_architecture_invariant_names_an_existing_test() {
    let text = read("ARCHITECTURE.md");
    let mut problems = Vec::new();
    let mut count = 0;
    for para in text.split("\n\n") {
        let para = para.trim();
        if !para.starts_with("Architecture Invariant:") {
            continue;
        }
        count += 1;
        let cited = cited_paths(para);
        if !cited.iter().any(|p| root().join(p).exists()) {
            let head: String = para.chars().take(90).collect();
            problems.push(format!("no existing test cited by: {head}..."));
        }
    }
    assert!(
        count >= 10,
        "only {count} invariants found: did the format change?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_finds_a_missing_citation() {
    // The check itself can fail.
    let doc = "see `crates/atoll-store/tests/never-written.rs` and `crates/atoll-core`";
    let cited = cited_paths(doc);
    assert_eq!(cited.len(), 2);
    assert!(!root().join(&cited[0]).exists());
    assert!(root().join(&cited[1]).exists());
}

/// The atoll crates each crate may depend on (normal dependencies; test-only code may use more).
const LAYERS: &[(&str, &[&str])] = &[
    ("atoll-core", &[]),
    ("atoll-config", &["atoll-core"]),
    ("atoll-store", &["atoll-core", "atoll-config"]),
    ("atoll-tls", &["atoll-core"]),
    ("atoll-http", &[]),
    // Test support with no dependencies at all: the register linearizability checker.
    ("atoll-lincheck", &[]),
    // Consensus adapter only: the lease logic it replicates lives in atoll-core and reaches it as
    // bytes, the network is the server's; so it needs no atoll crate.
    ("atoll-control", &[]),
    (
        "atoll-server",
        &[
            "atoll-core",
            "atoll-config",
            "atoll-store",
            "atoll-tls",
            "atoll-http",
            "atoll-control",
            "atoll-resp",
        ],
    ),
    // The RESP front: an adapter over a host trait the server implements, so it needs only the
    // config (keyspaces, the key rule, tokens) and the core's states and intents.
    ("atoll-resp", &["atoll-core", "atoll-config"]),
    ("atoll-link", &["atoll-core", "atoll-config"]),
    (
        "atoll-router",
        &["atoll-core", "atoll-config", "atoll-http"],
    ),
    (
        "atoll-sim",
        &["atoll-core", "atoll-config", "atoll-store", "atoll-drill"],
    ),
    ("atoll-drill", &["atoll-core", "atoll-config"]),
    (
        "atoll-testkit",
        &["atoll-core", "atoll-config", "atoll-store", "atoll-link"],
    ),
    // The command lines of the libraries (`atoll router`, `atoll link`): the one library crate
    // that parses argv, over the libraries it drives.
    (
        "atoll-cli",
        &["atoll-core", "atoll-config", "atoll-link", "atoll-router"],
    ),
];

/// The one crate under `crates/` that may depend on clap: command lines live there (and in the
/// binary), so every other library can be embedded without argv parsing.
const CLI_CRATE: &str = "atoll-cli";

/// Names of the normal dependencies of `manifest` (all of them, not only atoll's).
fn all_deps(manifest: &str) -> Vec<String> {
    let doc: toml::Table = manifest.parse().expect("manifest parses");
    doc.get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

fn atoll_deps(manifest: &str, section: &str) -> Vec<String> {
    let doc: toml::Table = manifest.parse().expect("manifest parses");
    doc.get(section)
        .and_then(|d| d.as_table())
        .map(|t| {
            t.keys()
                .filter(|k| k.starts_with("atoll-"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_crate_depends_only_on_what_its_layer_allows() {
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let dir = entry.expect("entry").path();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("crate dir name")
            .to_string();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
        let Some((_, allowed)) = LAYERS.iter().find(|(c, _)| *c == name) else {
            problems.push(format!(
                "crate {name} has no layer in tests/e2e/tidy.rs LAYERS"
            ));
            continue;
        };
        seen.push(name.clone());
        if name != CLI_CRATE && all_deps(&manifest).iter().any(|d| d == "clap") {
            problems.push(format!(
                "{name} depends on clap: command lines belong in crates/{CLI_CRATE} or src/"
            ));
        }
        for dep in atoll_deps(&manifest, "dependencies") {
            if !allowed.contains(&dep.as_str()) {
                problems.push(format!(
                    "{name} depends on {dep}, which its layer does not allow"
                ));
            }
        }
    }
    assert!(seen.len() >= 8, "only {seen:?} found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_layer_check_reads_dependencies() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\natoll-store.workspace = true\nserde = \"1\"\n[dev-dependencies]\natoll-sim = { path = \"../atoll-sim\" }\n";
    assert_eq!(
        atoll_deps(manifest, "dependencies"),
        vec!["atoll-store".to_string()]
    );
    assert_eq!(
        atoll_deps(manifest, "dev-dependencies"),
        vec!["atoll-sim".to_string()]
    );
    assert_eq!(
        all_deps(manifest),
        vec!["atoll-store".to_string(), "serde".to_string()]
    );
}

/// Rust sources under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_wall_clock_is_read_in_one_place_and_no_todo_is_left() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        rust_files(&entry.expect("entry").path().join("src"), &mut files);
    }
    assert!(files.len() > 30, "only {} sources found", files.len());
    let clock = root().join("crates/atoll-core/src/clock.rs");
    let mut problems = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("source");
        // Code before any `#[cfg(test)]` module: tests may do as they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let rel = f.strip_prefix(root()).unwrap_or(&f).display().to_string();
        let wall = ["SystemTime", "::now()"].concat();
        if f != clock && code.contains(&wall) {
            problems.push(format!("{rel} reads the wall clock: take a Clock instead"));
        }
        for mac in ["todo!(", "unimplemented!("] {
            if code.contains(mac) {
                problems.push(format!("{rel} has {mac}...)"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The replication decisions live in `atoll_core::driver` only: the server's adapter and the
/// simulation execute its commands and never call the core's deciding functions themselves
/// (`docs/design/replication-driver.md`).
#[test]
fn the_server_and_the_simulation_share_one_replication_driver() {
    let mut files = vec![root().join("crates/atoll-server/src/replication.rs")];
    rust_files(&root().join("crates/atoll-sim/src"), &mut files);
    let deciding = [
        "ReplCore::new(",
        ".admit(",
        ".wanted_subscriptions(",
        ".on_stream_heartbeat(",
        ".heartbeat(&",
        ".on_heartbeat(&hb, now.wall_ms",
    ];
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source");
        let rel = f.strip_prefix(root()).unwrap_or(f).display().to_string();
        for d in deciding {
            if text.contains(d) {
                problems.push(format!("{rel} calls `{d}`: let atoll_core::driver decide"));
            }
        }
    }
    assert!(files.len() > 3, "only {} sources found", files.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Both really use the driver.
    for f in [
        "crates/atoll-server/src/replication.rs",
        "crates/atoll-sim/src/sim/repl.rs",
    ] {
        let text = read(f);
        assert!(
            text.contains("ReplDriver::new("),
            "{f} does not run the driver"
        );
        assert!(
            text.contains("ServedStream::new("),
            "{f} does not serve streams with it"
        );
    }
}
