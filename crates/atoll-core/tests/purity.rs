//! Architecture Invariant: atoll-core does no I/O. It must not depend on an async runtime, a
//! socket, HTTP or storage crate, and only `clock.rs` may read the wall clock.

use std::path::Path;

const FORBIDDEN_DEPS: &[&str] = &[
    "tokio",
    "axum",
    "hyper",
    "reqwest",
    "fjall",
    "redb",
    "mio",
    "async-std",
    "socket2",
];

const FORBIDDEN_CALLS: &[&str] = &[
    "SystemTime::now",
    "Instant::now",
    "std::net::",
    "std::fs::",
    "std::thread::spawn",
    "tokio::",
];

#[test]
fn core_has_no_io_dependencies() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("read Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] section")
        .split("\n[")
        .next()
        .unwrap_or("");
    for line in deps.lines() {
        let name = line.split(['=', '.']).next().unwrap_or("").trim();
        assert!(
            !FORBIDDEN_DEPS.contains(&name),
            "atoll-core depends on `{name}`: cores must stay free of I/O crates"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_clock_module_reads_wall_time_and_nothing_does_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 5, "found the sources");
    let mut violations = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        let is_clock = f.file_name().is_some_and(|n| n == "clock.rs");
        for call in FORBIDDEN_CALLS {
            if text.contains(call) && !(is_clock && *call == "SystemTime::now") {
                violations.push(format!("{} uses {call}", f.display()));
            }
        }
    }
    assert!(violations.is_empty(), "I/O in atoll-core: {violations:?}");
}
