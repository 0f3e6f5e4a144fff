//! End-to-end: the RESP front (`docs/design/resp.md`) of real regions, driven by `redis-cli`
//! (Debian's `redis-tools`) and by a Redis client library (`redis-py`), which get the answers
//! Redis would give; a write in one region is read in the other; `[auth]` tokens apply; a
//! malformed frame is answered with a protocol error and closes only its connection.
//!
//! Nothing is skipped: without `redis-cli` or the `redis` Python module the tests fail and say
//! how to install them (`scripts/test-all.sh` installs both).

use crate::common::{BIN, DEADLINE, ok};
use anyhow::{Context, Result, bail, ensure};
use atoll_config::Policy;
use atoll_config::render::{ClusterToml, KeyspaceToml, RegionToml, Tls};
use atoll_testkit::{RegionProcess, RegionSpec, TestDir, free_ports, run_with_timeout, test_dir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";
/// Longest any one client command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Fails, saying how to install them, unless `redis-cli` and the `redis` Python module are here.
fn require_tools() {
    let cli = Command::new("redis-cli").arg("--version").output();
    assert!(
        cli.as_ref().is_ok_and(|o| o.status.success()),
        "redis-cli is missing: install Debian's redis-tools (apt-get install redis-tools; scripts/test-all.sh does it): {cli:?}"
    );
    let py = Command::new("python3")
        .args(["-c", "import redis"])
        .output();
    assert!(
        py.as_ref().is_ok_and(|o| o.status.success()),
        "the `redis` Python module (redis-py) is missing: install it with `python3 -m pip install redis` (scripts/test-all.sh does it): {py:?}"
    );
}

struct Regions {
    _dir: TestDir,
    // Dropped (killed) before the directory.
    procs: Vec<RegionProcess>,
    resp: Vec<SocketAddr>,
}

/// Starts `names` with a RESP listener each (insecure between regions: this is about RESP),
/// with `extra` appended to the config and `files` written next to it.
fn start(test: &str, names: &[&str], extra: &str, files: &[(&str, String)]) -> Result<Regions> {
    let dir = test_dir(test)?;
    let ports = free_ports(names.len() * 2)?;
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let mut toml = ClusterToml::new("resp-e2e")
        .tls(Tls::Insecure)
        .heartbeat_interval_ms(200);
    for (i, name) in names.iter().enumerate() {
        toml = toml.region(RegionToml::new(name, addr(ports[2 * i])).resp(addr(ports[2 * i + 1])));
    }
    toml = toml
        .keyspace(KeyspaceToml::new("sessions", Policy::Lww))
        .keyspace(KeyspaceToml::new("carts", Policy::Mvr))
        .keyspace(KeyspaceToml::new("ratelimits", Policy::Counter))
        .keyspace(KeyspaceToml::new("flags", Policy::Set))
        .keyspace(
            KeyspaceToml::new("quota", Policy::RateLimit)
                .line("limit = 3")
                .line("window = \"1d\"")
                .line("algorithm = \"fixed\""),
        );
    if !extra.is_empty() {
        toml = toml.section(extra);
    }
    let config = dir.join("atoll.toml");
    std::fs::write(&config, toml.render())?;
    for (name, text) in files {
        std::fs::write(dir.join(name), text)?;
    }
    let mut procs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        procs.push(RegionProcess::start_spec(
            RegionSpec::new(BIN, &config, name, dir.join(name)).listen(addr(ports[2 * i])),
        )?);
    }
    Ok(Regions {
        _dir: dir,
        procs,
        resp: (0..names.len()).map(|i| addr(ports[2 * i + 1])).collect(),
    })
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS...`: its output, trimmed (redis-cli prints raw replies
/// when its output is not a terminal: `OK`, a value, an integer, an empty line for nil, the
/// error text).
fn cli(port: u16, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    let out = run_with_timeout(cmd, COMMAND_TIMEOUT)?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string())
}

/// Runs `redis-cli` with `args` and checks its output is `want` (or starts with it, for errors).
fn expect(port: u16, args: &[&str], want: &str) -> Result<()> {
    let got = cli(port, args)?;
    let matches = if want.starts_with("ERR")
        || want.starts_with("WRONGTYPE")
        || want.starts_with("NOAUTH")
        || want.starts_with("NOPERM")
        || want.starts_with("WRONGPASS")
    {
        got.starts_with(want) || got.starts_with(&format!("(error) {want}"))
    } else {
        got == want
    };
    ensure!(matches, "redis-cli {args:?}: got {got:?}, want {want:?}");
    Ok(())
}

/// `ATOLL.RATELIMIT` answers: `[allowed, limit, remaining, retry_after_ms, reset_at_ms]`, one per
/// line from redis-cli.
fn decision(port: u16, args: &[&str]) -> Result<Vec<u64>> {
    let out = cli(port, args)?;
    let v: Vec<u64> = out
        .lines()
        .map(|l| l.trim().parse::<u64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("redis-cli {args:?}: {out:?}: {e}"))?;
    ensure!(v.len() == 5, "redis-cli {args:?}: {out:?}");
    Ok(v)
}

/// A rate limit (`quota`: 3 a day, fixed) counted across regions over RESP: what us-east-1
/// admitted counts in eu-west-1 once applied (ATOLL.WAIT on its session token), and a denial
/// counts nothing. The day's window is waited out first if it ends within a minute.
fn rate_limit_across_regions(us: u16, eu: u16) -> Result<()> {
    let now = atoll_core::clock::Clock::physical_ms(&atoll_core::clock::SystemClock);
    let probe = decision(us, &["ATOLL.RATELIMIT", "quota:probe"])?;
    if probe[4].saturating_sub(now) < 60_000 {
        std::thread::sleep(Duration::from_millis(probe[4] - now + 1_000));
    }
    let d = decision(us, &["ATOLL.RATELIMIT", "quota:api", "2"])?;
    ensure!(d[..4] == [1, 3, 1, 0], "us-east-1 admits 2 of 3: {d:?}");
    let token = cli(us, &["ATOLL.SESSION"])?;
    expect(eu, &["ATOLL.WAIT", &token, "10000"], "OK")?;
    let d = decision(eu, &["ATOLL.RATELIMIT", "quota:api", "2"])?;
    ensure!(
        d[0] == 0 && d[2] == 1 && d[3] > 0,
        "eu-west-1 admitted past the limit: {d:?}"
    );
    let d = decision(eu, &["ATOLL.RATELIMIT", "quota:api"])?;
    ensure!(d[..3] == [1, 3, 0], "eu-west-1 admits the last one: {d:?}");
    expect(
        us,
        &["GET", "quota:api"],
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )?;
    Ok(())
}

#[test]
fn redis_cli_and_redis_py_get_redis_answers_from_two_regions() {
    require_tools();
    let r = ok(start("resp", &[US, EU], "", &[]));
    ok(scenario(&r));
}

fn scenario(r: &Regions) -> Result<()> {
    let (us, eu) = (r.resp[0].port(), r.resp[1].port());
    // redis-cli, one command at a time, against us-east-1.
    for (args, want) in [
        (&["PING"][..], "PONG"),
        (&["SET", "sessions:alice", "token-1"], "OK"),
        (&["GET", "sessions:alice"], "token-1"),
        (&["SET", "sessions:alice", "token-2", "NX"], ""),
        (&["SET", "sessions:alice", "token-2", "XX"], "OK"),
        (&["EXISTS", "sessions:alice", "sessions:nobody"], "1"),
        (&["GET", "sessions:nobody"], ""),
        (&["INCR", "ratelimits:api"], "1"),
        (&["INCRBY", "ratelimits:api", "10"], "11"),
        (&["DECRBY", "ratelimits:api", "4"], "7"),
        (&["SADD", "flags:beta", "dark-mode", "new-cart"], "2"),
        (&["SISMEMBER", "flags:beta", "dark-mode"], "1"),
        (&["SREM", "flags:beta", "new-cart"], "1"),
        (&["SMEMBERS", "flags:beta"], "dark-mode"),
        (&["SET", "sessions:bob", "b"], "OK"),
        (&["DEL", "sessions:bob", "sessions:nobody"], "1"),
        (
            &["INCR", "sessions:alice"],
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ),
        (&["GET", "nope:x"], "ERR unknown keyspace 'nope'"),
        (&["TTL", "sessions:alice"], "-1"),
        (&["TTL", "sessions:nobody"], "-2"),
        (&["PERSIST", "sessions:alice"], "0"),
        (&["TTL", "ratelimits:api"], "-1"),
        (
            &["SET", "sessions:s", "v", "EX", "0"],
            "ERR invalid expire time in 'set' command",
        ),
        (
            &["SET", "sessions:s", "v", "EX", "5", "PX", "5"],
            "ERR syntax error",
        ),
        (
            &["EXPIRE", "ratelimits:api", "60"],
            "WRONGTYPE Operation against a key holding the wrong kind of value (keyspace 'ratelimits' is counter: its keys do not expire",
        ),
        // An mvr SET's expiry is the sibling's; there is none to keep or change.
        (&["SET", "carts:m", "v", "EX", "100"], "OK"),
        (&["TTL", "carts:m"], "100"),
        (
            &["SET", "carts:c", "v", "KEEPTTL"],
            "WRONGTYPE Operation against a key holding the wrong kind of value (keyspace 'carts' is mvr: each sibling expires as the write that made it said",
        ),
        (
            &["GETEX", "sessions:alice", "EX", "60"],
            "ERR GETEX is not supported by atoll's RESP front yet",
        ),
        (&["FLUSHALL"], "ERR unknown command 'FLUSHALL'"),
    ] {
        expect(us, args, want)?;
    }
    // Read-your-writes across regions (docs/design/session-consistency.md): the session token
    // of us-east-1 after the write; eu-west-1 waits until it has applied it, then the GET there
    // sees the write.
    expect(us, &["SET", "sessions:carol", "c1"], "OK")?;
    let token = cli(us, &["ATOLL.SESSION"])?;
    ensure!(!token.is_empty(), "ATOLL.SESSION answered nothing");
    expect(eu, &["ATOLL.WAIT", &token, "10000"], "OK")?;
    expect(eu, &["GET", "sessions:carol"], "c1")?;
    expect(
        eu,
        &["ATOLL.WAIT", "garbage!", "10"],
        "ERR ATOLL-BAD-SESSION-TOKEN invalid session token: not base64url",
    )?;
    rate_limit_across_regions(us, eu)?;
    // A write in us-east-1 is read in eu-west-1 once replicated.
    wait_cli(eu, &["GET", "sessions:alice"], |o| o == "token-2")?;
    wait_cli(eu, &["GET", "ratelimits:api"], |o| o == "7")?;
    // INFO replication in eu-west-1: a line for us-east-1 with its state and lag.
    wait_cli(eu, &["INFO", "replication"], |o| {
        o.contains("peer_us-east-1:state=up,lag_seconds=") && o.contains("lag_ops=0")
    })?;
    let info = cli(eu, &["INFO", "server"])?;
    ensure!(
        info.contains("# Server") && info.contains("region:eu-west-1"),
        "{info}"
    );
    expiring_keys(us, eu)?;

    // redis-py, RESP2 and RESP3, against eu-west-1.
    let script = format!(
        r#"
import time
import redis
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port={eu}, protocol=proto, decode_responses=True)
    assert r.ping() is True
    k = f"sessions:py{{proto}}"
    assert r.set(k, "v1") is True
    assert r.get(k) == "v1"
    assert r.set(k, "v2", nx=True) is None
    assert r.set(k, "v2", xx=True) is True
    assert r.get(k) == "v2"
    assert r.exists(k, "sessions:missing") == 1
    assert r.delete(k) == 1
    assert r.get(k) is None
    c = f"ratelimits:py{{proto}}"
    assert r.incr(c) == 1
    assert r.incrby(c, 41) == 42
    assert r.decrby(c, 2) == 40
    s = f"flags:py{{proto}}"
    assert r.sadd(s, "a", "b", "a") == 2
    assert r.sismember(s, "a") in (1, True)
    assert r.srem(s, "a") == 1
    assert set(r.smembers(s)) == {{"b"}}
    try:
        r.incr("sessions:alice")
        raise AssertionError("INCR on an lww keyspace succeeded")
    except redis.exceptions.ResponseError as e:
        assert "WRONGTYPE" in str(e) or "wrong kind" in str(e), e
    # Expiring keys.
    e = f"sessions:exp{{proto}}"
    short = f"sessions:short{{proto}}"
    assert r.set(e, "v", ex=60) is True
    assert 55 <= r.ttl(e) <= 60, r.ttl(e)
    assert 55000 <= r.pttl(e) <= 60000, r.pttl(e)
    left = r.execute_command("EXPIRETIME", e) - int(time.time())
    assert 55 <= left <= 61, left
    assert r.persist(e) == 1
    assert r.ttl(e) == -1
    assert r.persist(e) == 0
    assert r.expire(e, 100) == 1
    assert 95 <= r.ttl(e) <= 100, r.ttl(e)
    assert r.expire(e, 50, nx=True) == 0
    assert r.expire(e, 50, gt=True) == 0
    assert r.expire(e, 200, gt=True) == 1
    assert 195 <= r.ttl(e) <= 200, r.ttl(e)
    assert r.setex(f"sessions:sx{{proto}}", 60, "x") is True
    assert r.psetex(f"sessions:psx{{proto}}", 60000, "y") is True
    assert r.get(f"sessions:psx{{proto}}") == "y"
    assert 1 <= r.ttl(f"sessions:sx{{proto}}") <= 60
    assert r.pexpire(e, 1000) == 1
    assert r.set(short, "s", px=1000) is True
    assert r.get(short) == "s"
    deadline = time.monotonic() + 30
    while r.get(e) is not None or r.get(short) is not None:
        assert time.monotonic() < deadline, "the keys did not expire within 30 s"
        time.sleep(0.05)
    assert r.exists(e, short) == 0
    assert r.ttl(e) == -2 and r.pttl(short) == -2
    assert r.expire(e, 10) == 0
    assert r.set("carts:t", "v", ex=10) is True
    assert 1 <= r.ttl("carts:t") <= 10, r.ttl("carts:t")
    try:
        r.expire("carts:t", 60)
        raise AssertionError("EXPIRE on an mvr keyspace succeeded")
    except redis.exceptions.ResponseError as err:
        assert "is mvr" in str(err), err
    try:
        r.getex("sessions:alice", ex=10)
        raise AssertionError("GETEX succeeded")
    except redis.exceptions.ResponseError as err:
        assert "GETEX is not supported" in str(err), err
    info = r.info("replication")
    assert "peer_us-east-1" in info, info
    p = r.pipeline(transaction=False)
    for i in range(50):
        p.incr(f"ratelimits:pipe{{proto}}")
    assert p.execute() == list(range(1, 51))
print("redis-py ok")
"#
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    let out = run_with_timeout(cmd, Duration::from_secs(60))?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("redis-py ok"),
        "the redis-py script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A malformed frame: a protocol error, that connection closed, the region unharmed.
    let mut s = TcpStream::connect(r.resp[0]).context("connect")?;
    s.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    s.write_all(&b"*1\r\n".repeat(100_000))?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    ensure!(answer.starts_with("-ERR Protocol error: "), "{answer:?}");
    expect(us, &["GET", "sessions:alice"], "token-2")?;

    // The metrics count commands by command and outcome.
    let metrics = metrics_text(&r.procs[0].endpoint())?;
    ensure!(
        metrics.contains("atoll_resp_commands_total{command=\"set\",outcome=\"ok\"}")
            && metrics.contains("atoll_resp_commands_total{command=\"ttl\",outcome=\"ok\"}")
            && metrics.contains("atoll_resp_commands_total{command=\"pexpire\",outcome=\"ok\"}")
            && metrics.contains("outcome=\"protocol-error\""),
        "{metrics}"
    );
    Ok(())
}

/// Expiring keys over RESP (`docs/design/expiring-keys.md`): an expiry replicates with its value,
/// `PERSIST` removes it, and once the expiry passes both regions read the key as absent (each by
/// its own clock). Every wait polls to a deadline.
fn expiring_keys(us: u16, eu: u16) -> Result<()> {
    expect(us, &["SET", "sessions:s1", "v", "EX", "60"], "OK")?;
    in_range(us, &["TTL", "sessions:s1"], 55, 60)?;
    in_range(us, &["PTTL", "sessions:s1"], 55_000, 60_000)?;
    wait_cli(eu, &["GET", "sessions:s1"], |o| o == "v")?;
    in_range(eu, &["TTL", "sessions:s1"], 1, 60)?;
    expect(us, &["PERSIST", "sessions:s1"], "1")?;
    expect(us, &["TTL", "sessions:s1"], "-1")?;
    expect(us, &["PERSIST", "sessions:s1"], "0")?;
    wait_cli(eu, &["TTL", "sessions:s1"], |o| o == "-1")?;
    expect(eu, &["GET", "sessions:s1"], "v")?;
    // Short expiries: an EXPIRE of the replicated key, and a SET with PX.
    expect(us, &["PEXPIRE", "sessions:s1", "2000"], "1")?;
    in_range(us, &["PTTL", "sessions:s1"], 1, 2_000)?;
    expect(us, &["SET", "sessions:s2", "w", "PX", "2000"], "OK")?;
    in_range(us, &["PTTL", "sessions:s2"], 1, 2_000)?;
    for port in [us, eu] {
        wait_cli(port, &["EXISTS", "sessions:s1", "sessions:s2"], |o| {
            o == "0"
        })?;
        expect(port, &["GET", "sessions:s1"], "")?;
        expect(port, &["GET", "sessions:s2"], "")?;
        expect(port, &["TTL", "sessions:s1"], "-2")?;
        expect(port, &["PTTL", "sessions:s2"], "-2")?;
    }
    expect(us, &["EXPIRE", "sessions:s1", "10"], "0")?;
    // A later write revives the key, without an expiry.
    expect(eu, &["SET", "sessions:s1", "again"], "OK")?;
    expect(eu, &["TTL", "sessions:s1"], "-1")?;
    wait_cli(us, &["GET", "sessions:s1"], |o| o == "again")?;
    Ok(())
}

/// Runs `redis-cli` with `args` and checks it answers an integer in `lo..=hi`.
fn in_range(port: u16, args: &[&str], lo: i64, hi: i64) -> Result<()> {
    let got = cli(port, args)?;
    let v: i64 = got
        .parse()
        .with_context(|| format!("redis-cli {args:?}: got {got:?}, want an integer"))?;
    ensure!(
        (lo..=hi).contains(&v),
        "redis-cli {args:?}: {v} not in {lo}..={hi}"
    );
    Ok(())
}

/// `GET {endpoint}/metrics` on a small runtime of its own.
fn metrics_text(endpoint: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        Ok(reqwest::get(format!("{endpoint}/metrics"))
            .await?
            .text()
            .await?)
    })
}

/// Polls `redis-cli ARGS` until its output satisfies `done` (at most [`DEADLINE`]).
fn wait_cli(port: u16, args: &[&str], done: impl Fn(&str) -> bool) -> Result<()> {
    let until = Instant::now() + DEADLINE;
    loop {
        let got = cli(port, args)?;
        if done(&got) {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("redis-cli {args:?} on port {port}: still {got:?} after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn with_auth_resp_needs_a_token_and_its_grants() {
    require_tools();
    let tokens = format!(
        "[[tokens]]\nname = \"app\"\nsha256 = \"{}\"\nread = [\"sessions\"]\nwrite = [\"sessions\"]\n",
        atoll_config::auth::sha256_hex("s3cret")
    );
    let r = ok(start(
        "resp-auth",
        &[US],
        "[auth]\ntokens_file = \"tokens.toml\"",
        &[("tokens.toml", tokens)],
    ));
    let port = r.resp[0].port();
    ok((|| -> Result<()> {
        expect(port, &["PING"], "PONG")?;
        expect(
            port,
            &["SET", "sessions:a", "v"],
            "NOAUTH Authentication required.",
        )?;
        // A wrong token: AUTH fails (WRONGPASS, on stderr) and the GET after it is refused.
        let got = cli(
            port,
            &["-a", "wrong", "--no-auth-warning", "GET", "sessions:a"],
        )?;
        ensure!(
            got.contains("WRONGPASS") && got.contains("NOAUTH Authentication required."),
            "{got}"
        );
        let auth = ["-a", "s3cret", "--no-auth-warning"];
        expect(
            port,
            &[&auth[..], &["SET", "sessions:a", "v"]].concat(),
            "OK",
        )?;
        expect(port, &[&auth[..], &["GET", "sessions:a"]].concat(), "v")?;
        expect(
            port,
            &[&auth[..], &["INCR", "ratelimits:x"]].concat(),
            "NOPERM",
        )?;
        // `AUTH <user> <token>` (the user is ignored).
        expect(
            port,
            &[
                "--user",
                "anyone",
                "--pass",
                "s3cret",
                "--no-auth-warning",
                "GET",
                "sessions:a",
            ],
            "v",
        )?;
        Ok(())
    })());
}
