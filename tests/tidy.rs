//! Checks that keep the project's own documents true.
//!
//! - Every path that `ARCHITECTURE.md` or `README.md` cites in backticks exists.
//! - Every "Architecture Invariant:" paragraph names at least one test file or crate that exists
//!   (an invariant without a test is a wish).

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
