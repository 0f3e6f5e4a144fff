//! Architecture Invariant: the cores of atoll-link (`model`, `sched`, `geo`, `units`) do no I/O
//! and read no clock: every time is an argument. Only `proxy`, `timer` and `control` touch
//! tokio, sockets or the monotonic clock.

use std::path::Path;

const PURE: &[&str] = &["model.rs", "sched.rs", "geo.rs", "units.rs"];

const FORBIDDEN: &[&str] = &[
    "tokio",
    "axum",
    "reqwest",
    "socket2",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "Instant::now",
    "SystemTime",
    "std::fs",
    "std::thread",
];

#[test]
fn pure_modules_do_no_io_and_read_no_clock() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in PURE {
        let text = std::fs::read_to_string(src.join(file)).expect("read source");
        for (n, line) in text.lines().enumerate() {
            // Comments may talk about what the module does not do.
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                assert!(
                    !code.contains(word),
                    "src/{file}:{}: `{word}` in a pure module: {line}",
                    n + 1
                );
            }
        }
    }
}
