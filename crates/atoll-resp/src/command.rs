//! Commands: the arguments of one request parsed into what it asks (pure; arity, options and
//! numbers checked as Redis checks them, with Redis's error texts).

use crate::reply::Reply;
use atoll_core::op::MAX_TTL_MS;

/// `SET`'s condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// `NX`: only if the key does not exist.
    Nx,
    /// `XX`: only if it exists.
    Xx,
}

/// When a written value expires, as `SET`'s options (and `SETEX`, `PSETEX`) ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// `EX`, `PX`, `SETEX`, `PSETEX`: this many milliseconds after the write (at least 1, at most
    /// `atoll_core::op::MAX_TTL_MS`).
    After(u64),
    /// `EXAT`, `PXAT`: at this instant, milliseconds since the Unix epoch (at least 1).
    At(u64),
    /// `KEEPTTL`: keep the expiry the live value has.
    Keep,
}

/// `EXPIRE`'s new expiry, as given (Redis allows zero and negative values: the key is deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireWhen {
    /// `EXPIRE`, `PEXPIRE`: this many milliseconds from now.
    In(i64),
    /// `EXPIREAT`, `PEXPIREAT`: this instant, milliseconds since the Unix epoch.
    At(i64),
}

/// `EXPIRE`'s conditions (Redis 7): each one set must hold for the expiry to be set. `NX` excludes
/// the others, `GT` and `LT` exclude each other; `XX` may go with `GT` or `LT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpireCond {
    /// `NX`: only if the key has no expiry.
    pub nx: bool,
    /// `XX`: only if it has one.
    pub xx: bool,
    /// `GT`: only if the new expiry is later than the current one (a key without expiry never:
    /// no expiry counts as infinite).
    pub gt: bool,
    /// `LT`: only if the new expiry is earlier than the current one (a key without expiry
    /// always).
    pub lt: bool,
}

/// What `TTL`, `PTTL`, `EXPIRETIME` and `PEXPIRETIME` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlQuery {
    /// Milliseconds (`PTTL`, `PEXPIRETIME`) rather than seconds.
    pub ms: bool,
    /// The absolute instant (`EXPIRETIME`, `PEXPIRETIME`) rather than the time left.
    pub absolute: bool,
}

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
    Quit,
    Hello {
        proto: Option<i64>,
        auth: Option<(Vec<u8>, Vec<u8>)>,
        setname: Option<Vec<u8>>,
    },
    Auth {
        token: Vec<u8>,
    },
    Select(i64),
    /// `COMMAND` and its subcommands: an empty answer (redis-cli asks at start for hints).
    CommandInfo,
    ClientSetName(Vec<u8>),
    ClientSetInfo,
    ClientGetName,
    ClientId,
    Info(Vec<String>),
    Get(Vec<u8>),
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: Option<Cond>,
        get: bool,
        /// `None`: the keyspace's `default_ttl` (no expiry without one), docs/design/resp.md.
        expiry: Option<Expiry>,
        /// The command's name for messages (`set`, `setex`, `psetex`).
        name: &'static str,
    },
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`.
    Expire {
        key: Vec<u8>,
        when: ExpireWhen,
        cond: ExpireCond,
        /// The command's name for messages.
        name: &'static str,
    },
    Ttl {
        key: Vec<u8>,
        query: TtlQuery,
    },
    Persist(Vec<u8>),
    Del(Vec<Vec<u8>>),
    Exists(Vec<Vec<u8>>),
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`: add `delta`.
    IncrBy {
        key: Vec<u8>,
        delta: i64,
    },
    SAdd {
        key: Vec<u8>,
        members: Vec<Vec<u8>>,
    },
    SRem {
        key: Vec<u8>,
        members: Vec<Vec<u8>>,
    },
    SMembers(Vec<u8>),
    SIsMember {
        key: Vec<u8>,
        member: Vec<u8>,
    },
    SCard(Vec<u8>),
    /// `ATOLL.SESSION`: a session token naming everything this region has applied (so every
    /// write acknowledged here so far), `docs/design/session-consistency.md`.
    Session,
    /// `ATOLL.WAIT token [ms]`: wait until this region has applied what `token` names (at most
    /// `ms`, default the region's `[api] session_wait`), then `+OK`, or `-STALE ...`.
    SessionWait {
        token: Vec<u8>,
        wait_ms: Option<u64>,
    },
    /// `ATOLL.RATELIMIT key [cost]`: ask a `ratelimit` keyspace to admit a request
    /// (`docs/design/rate-limits.md`); answers `[allowed, limit, remaining, retry_after_ms,
    /// reset_at_ms]`.
    RateLimit {
        key: Vec<u8>,
        cost: u64,
    },
}

/// The commands this front serves, for messages and metric labels.
pub const SERVED: &[&str] = &[
    "get",
    "set",
    "del",
    "exists",
    "setex",
    "psetex",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "persist",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "sadd",
    "srem",
    "smembers",
    "sismember",
    "scard",
    "ping",
    "echo",
    "hello",
    "auth",
    "info",
    "select",
    "command",
    "client",
    "quit",
    "atoll.session",
    "atoll.wait",
    "atoll.ratelimit",
];

/// Commands Redis has that this front recognizes but does not serve yet: each gets an error
/// naming it (never the generic unknown-command message, never silently ignored).
const NOT_YET: &[(&str, &str)] = &[(
    "getex",
    "GETEX is not supported by atoll's RESP front yet: use GET, then EXPIRE, PEXPIRE or PERSIST (not atomic; docs/design/resp.md)",
)];

/// A command name as its metric label: one of [`SERVED`], or `unknown`.
pub fn label(name: &[u8]) -> &'static str {
    let lower = name.to_ascii_lowercase();
    SERVED
        .iter()
        .find(|s| s.as_bytes() == lower.as_slice())
        .copied()
        .unwrap_or("unknown")
}

fn wrong_args(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

/// An integer argument, as Redis reads one.
pub fn integer(arg: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.starts_with('+') || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// The text of an argument for a message: printable, at most 64 characters.
pub fn shown(arg: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(arg)
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    text
}

fn unknown(name: &[u8], rest: &[Vec<u8>]) -> Reply {
    let mut begins = String::new();
    for a in rest.iter().take(3) {
        begins.push_str(&format!("'{}' ", shown(a)));
    }
    Reply::err(format!(
        "unknown command '{}', with args beginning with: {begins}(atoll's RESP front serves {}; docs/design/resp.md)",
        shown(name),
        SERVED
            .iter()
            .map(|s| s.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

/// Parses a request's arguments (`args[0]` is the command's name). `Err`: the reply to send
/// instead (the command is not run).
pub fn parse(args: Vec<Vec<u8>>) -> Result<Command, Reply> {
    let mut it = args.into_iter();
    let Some(name_raw) = it.next() else {
        return Err(Reply::err("empty command"));
    };
    let rest: Vec<Vec<u8>> = it.collect();
    let name = String::from_utf8_lossy(&name_raw).to_ascii_lowercase();
    let n = rest.len();
    let mut rest = rest.into_iter();
    let mut one = || rest.next().unwrap_or_default();
    let cmd = match name.as_str() {
        "ping" => match n {
            0 => Command::Ping(None),
            1 => Command::Ping(Some(one())),
            _ => return Err(wrong_args(&name)),
        },
        "echo" if n == 1 => Command::Echo(one()),
        "quit" => Command::Quit,
        "hello" => return hello(rest.collect()),
        "auth" => match n {
            1 => Command::Auth { token: one() },
            2 => {
                let _user = one();
                Command::Auth { token: one() }
            }
            _ => return Err(wrong_args(&name)),
        },
        "select" if n == 1 => Command::Select(integer(&one()).ok_or_else(not_integer)?),
        "command" => Command::CommandInfo,
        "client" if n >= 1 => {
            let sub = one().to_ascii_lowercase();
            match (sub.as_slice(), n) {
                (b"setname", 2) => Command::ClientSetName(one()),
                (b"setinfo", 3) => Command::ClientSetInfo,
                (b"getname", 1) => Command::ClientGetName,
                (b"id", 1) => Command::ClientId,
                (b"setname" | b"setinfo" | b"getname" | b"id", _) => {
                    return Err(Reply::err(format!(
                        "wrong number of arguments for 'client|{}' command",
                        shown(&sub)
                    )));
                }
                _ => {
                    return Err(Reply::err(format!(
                        "unknown subcommand '{}'. atoll's RESP front serves CLIENT SETNAME, SETINFO, GETNAME and ID",
                        shown(&sub)
                    )));
                }
            }
        }
        "info" => Command::Info(
            rest.map(|s| String::from_utf8_lossy(&s).to_ascii_lowercase())
                .collect(),
        ),
        "atoll.session" if n == 0 => Command::Session,
        "atoll.wait" if n == 1 || n == 2 => {
            let token = one();
            let wait_ms = match rest.next() {
                Some(ms) => Some(
                    integer(&ms)
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or_else(not_integer)?,
                ),
                None => None,
            };
            Command::SessionWait { token, wait_ms }
        }
        "atoll.ratelimit" if n == 1 || n == 2 => {
            let key = one();
            let cost = match rest.next() {
                Some(c) => integer(&c)
                    .and_then(|v| u64::try_from(v).ok())
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| Reply::err("the cost is a whole number of at least 1"))?,
                None => 1,
            };
            Command::RateLimit { key, cost }
        }
        "get" if n == 1 => Command::Get(one()),
        "set" if n >= 2 => {
            let key = one();
            let value = one();
            let (cond, get, expiry) = set_options(rest)?;
            Command::Set {
                key,
                value,
                cond,
                get,
                expiry,
                name: "set",
            }
        }
        "setex" | "psetex" if n == 3 => {
            let key = one();
            let given = one();
            let value = one();
            let (name, unit) = if name == "setex" {
                ("setex", 1000)
            } else {
                ("psetex", 1)
            };
            let ms = relative_ms(&given, unit, name)?;
            Command::Set {
                key,
                value,
                cond: None,
                get: false,
                expiry: Some(Expiry::After(ms)),
                name,
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" if n >= 2 => {
            let key = one();
            let given = one();
            let cond = expire_options(rest)?;
            let (name, unit, absolute) = match name.as_str() {
                "expire" => ("expire", 1000, false),
                "pexpire" => ("pexpire", 1, false),
                "expireat" => ("expireat", 1000, true),
                _ => ("pexpireat", 1, true),
            };
            let v = integer(&given).ok_or_else(not_integer)?;
            let ms = v.checked_mul(unit).ok_or_else(|| invalid_expire(name))?;
            Command::Expire {
                key,
                when: if absolute {
                    ExpireWhen::At(ms)
                } else {
                    ExpireWhen::In(ms)
                },
                cond,
                name,
            }
        }
        "ttl" | "pttl" | "expiretime" | "pexpiretime" if n == 1 => Command::Ttl {
            key: one(),
            query: TtlQuery {
                ms: name.starts_with('p'),
                absolute: name.ends_with("expiretime"),
            },
        },
        "persist" if n == 1 => Command::Persist(one()),
        "del" if n >= 1 => Command::Del(rest.collect()),
        "exists" if n >= 1 => Command::Exists(rest.collect()),
        "incr" if n == 1 => Command::IncrBy {
            key: one(),
            delta: 1,
        },
        "decr" if n == 1 => Command::IncrBy {
            key: one(),
            delta: -1,
        },
        "incrby" if n == 2 => {
            let key = one();
            let delta = integer(&one()).ok_or_else(not_integer)?;
            Command::IncrBy { key, delta }
        }
        "decrby" if n == 2 => {
            let key = one();
            let delta = integer(&one()).ok_or_else(not_integer)?;
            let delta = delta
                .checked_neg()
                .ok_or_else(|| Reply::err("decrement would overflow"))?;
            Command::IncrBy { key, delta }
        }
        "sadd" if n >= 2 => Command::SAdd {
            key: one(),
            members: rest.collect(),
        },
        "srem" if n >= 2 => Command::SRem {
            key: one(),
            members: rest.collect(),
        },
        "smembers" if n == 1 => Command::SMembers(one()),
        "sismember" if n == 2 => Command::SIsMember {
            key: one(),
            member: one(),
        },
        "scard" if n == 1 => Command::SCard(one()),
        _ if NOT_YET.iter().any(|(n, _)| *n == name) => {
            let why = NOT_YET
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("not supported", |(_, why)| *why);
            return Err(Reply::err(why));
        }
        _ if SERVED.contains(&name.as_str()) => return Err(wrong_args(&name)),
        _ => return Err(unknown(&name_raw, &rest.collect::<Vec<_>>())),
    };
    Ok(cmd)
}

/// Redis's error for an expiry it refuses (`name`: the command, lower case).
pub fn invalid_expire(name: &str) -> Reply {
    Reply::err(format!("invalid expire time in '{name}' command"))
}

/// A relative expiry of `EX`, `PX`, `SETEX`, `PSETEX` in milliseconds, checked as Redis checks it
/// (an integer, positive, no overflow) and at most atoll's longest time to live.
fn relative_ms(given: &[u8], unit: i64, name: &str) -> Result<u64, Reply> {
    let v = integer(given).ok_or_else(not_integer)?;
    if v <= 0 {
        return Err(invalid_expire(name));
    }
    let ms = v
        .checked_mul(unit)
        .and_then(|ms| u64::try_from(ms).ok())
        .ok_or_else(|| invalid_expire(name))?;
    if ms > MAX_TTL_MS {
        return Err(too_long(name));
    }
    Ok(ms)
}

/// An expiry past atoll's longest time to live (Redis would take it; atoll caps it).
pub fn too_long(name: &str) -> Reply {
    Reply::err(format!(
        "invalid expire time in '{name}' command (atoll: a time to live is at most 100 years)"
    ))
}

/// `SET`'s options after the value, as Redis 7 reads them: `NX`/`XX` exclude each other, at most
/// one kind of `EX`/`PX`/`EXAT`/`PXAT`/`KEEPTTL` (a repeated one: the last value counts, as in
/// Redis), anything else is a syntax error; then the expiry's value is checked.
fn set_options(
    opts: impl Iterator<Item = Vec<u8>>,
) -> Result<(Option<Cond>, bool, Option<Expiry>), Reply> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Ex,
        Px,
        ExAt,
        PxAt,
        Keep,
    }
    let mut cond = None;
    let mut get = false;
    let mut kind: Option<Kind> = None;
    let mut given: Vec<u8> = Vec::new();
    let mut opts = opts.peekable();
    while let Some(opt) = opts.next() {
        let o = opt.to_ascii_lowercase();
        let timed = match o.as_slice() {
            b"ex" => Some(Kind::Ex),
            b"px" => Some(Kind::Px),
            b"exat" => Some(Kind::ExAt),
            b"pxat" => Some(Kind::PxAt),
            _ => None,
        };
        match (o.as_slice(), timed) {
            (b"nx", _) if cond != Some(Cond::Xx) => cond = Some(Cond::Nx),
            (b"xx", _) if cond != Some(Cond::Nx) => cond = Some(Cond::Xx),
            (b"get", _) => get = true,
            (b"keepttl", _) if kind.is_none_or(|k| k == Kind::Keep) => kind = Some(Kind::Keep),
            (_, Some(k)) if kind.is_none_or(|had| had == k) && opts.peek().is_some() => {
                kind = Some(k);
                given = opts.next().unwrap_or_default();
            }
            _ => return Err(syntax()),
        }
    }
    let expiry = match kind {
        None => None,
        Some(Kind::Keep) => Some(Expiry::Keep),
        Some(Kind::Ex) => Some(Expiry::After(relative_ms(&given, 1000, "set")?)),
        Some(Kind::Px) => Some(Expiry::After(relative_ms(&given, 1, "set")?)),
        Some(k @ (Kind::ExAt | Kind::PxAt)) => {
            let v = integer(&given).ok_or_else(not_integer)?;
            let unit = if k == Kind::ExAt { 1000 } else { 1 };
            let at = if v <= 0 {
                None
            } else {
                v.checked_mul(unit).and_then(|ms| u64::try_from(ms).ok())
            };
            Some(Expiry::At(at.ok_or_else(|| invalid_expire("set"))?))
        }
    };
    Ok((cond, get, expiry))
}

/// `EXPIRE`'s options after the time, as Redis 7 reads them.
fn expire_options(opts: impl Iterator<Item = Vec<u8>>) -> Result<ExpireCond, Reply> {
    let mut c = ExpireCond::default();
    for opt in opts {
        match opt.to_ascii_lowercase().as_slice() {
            b"nx" => c.nx = true,
            b"xx" => c.xx = true,
            b"gt" => c.gt = true,
            b"lt" => c.lt = true,
            _ => {
                return Err(Reply::err(format!("Unsupported option {}", shown(&opt))));
            }
        }
    }
    if c.nx && (c.xx || c.gt || c.lt) {
        return Err(Reply::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if c.gt && c.lt {
        return Err(Reply::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    Ok(c)
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
fn hello(rest: Vec<Vec<u8>>) -> Result<Command, Reply> {
    let mut it = rest.into_iter();
    let proto = match it.next() {
        None => None,
        Some(v) => Some(
            integer(&v)
                .ok_or_else(|| Reply::err("Protocol version is not an integer or out of range"))?,
        ),
    };
    let mut auth = None;
    let mut setname = None;
    while let Some(opt) = it.next() {
        match opt.to_ascii_lowercase().as_slice() {
            b"auth" => {
                let (Some(user), Some(pass)) = (it.next(), it.next()) else {
                    return Err(syntax());
                };
                auth = Some((user, pass));
            }
            b"setname" => {
                let Some(name) = it.next() else {
                    return Err(syntax());
                };
                setname = Some(name);
            }
            _ => {
                return Err(Reply::err(format!(
                    "Syntax error in HELLO option '{}'",
                    shown(&opt)
                )));
            }
        }
    }
    Ok(Command::Hello {
        proto,
        auth,
        setname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(words: &[&str]) -> Result<Command, Reply> {
        parse(words.iter().map(|w| w.as_bytes().to_vec()).collect())
    }

    fn err_text(r: Result<Command, Reply>) -> String {
        match r {
            Err(Reply::Error(e)) => e,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(p(&["get", "k"]), Ok(Command::Get(b"k".to_vec())));
        assert_eq!(
            p(&["SeT", "k", "v", "nx", "GET"]),
            Ok(Command::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: Some(Cond::Nx),
                get: true,
                expiry: None,
                name: "set"
            })
        );
        assert_eq!(
            p(&["DECRBY", "k", "5"]),
            Ok(Command::IncrBy {
                key: b"k".to_vec(),
                delta: -5
            })
        );
        assert_eq!(
            p(&["hello", "3", "AUTH", "u", "t", "setname", "n"]),
            Ok(Command::Hello {
                proto: Some(3),
                auth: Some((b"u".to_vec(), b"t".to_vec())),
                setname: Some(b"n".to_vec())
            })
        );
        assert_eq!(
            p(&["AUTH", "user", "tok"]),
            Ok(Command::Auth {
                token: b"tok".to_vec()
            })
        );
    }

    #[test]
    fn errors_read_as_redis_writes_them() {
        assert_eq!(
            err_text(p(&["GET"])),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err_text(p(&["INCRBY", "k", "1.5"])),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            err_text(p(&["INCRBY", "k", "+1"])),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            err_text(p(&["DECRBY", "k", "-9223372036854775808"])),
            "ERR decrement would overflow"
        );
        assert_eq!(
            err_text(p(&["SET", "k", "v", "NX", "XX"])),
            "ERR syntax error"
        );
        let e = err_text(p(&["FLUSHALL", "ASYNC"]));
        assert!(
            e.starts_with("ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' "),
            "{e}"
        );
        assert!(e.contains("GET SET DEL"), "{e}");
    }

    fn set_expiry(words: &[&str]) -> Option<Expiry> {
        match p(words) {
            Ok(Command::Set { expiry, .. }) => expiry,
            other => panic!("{words:?}: not a SET: {other:?}"),
        }
    }

    #[test]
    fn set_expiry_options_parse_as_redis_reads_them() {
        assert_eq!(
            set_expiry(&["SET", "k", "v", "EX", "10"]),
            Some(Expiry::After(10_000))
        );
        assert_eq!(
            set_expiry(&["set", "k", "v", "px", "1500"]),
            Some(Expiry::After(1_500))
        );
        assert_eq!(
            set_expiry(&["SET", "k", "v", "EXAT", "1700000000"]),
            Some(Expiry::At(1_700_000_000_000))
        );
        assert_eq!(
            set_expiry(&["SET", "k", "v", "PXAT", "1700000000123"]),
            Some(Expiry::At(1_700_000_000_123))
        );
        assert_eq!(
            set_expiry(&["SET", "k", "v", "KEEPTTL"]),
            Some(Expiry::Keep)
        );
        assert_eq!(set_expiry(&["SET", "k", "v"]), None);
        // A repeated option: the last value counts (Redis too); an earlier value is not read.
        assert_eq!(
            set_expiry(&["SET", "k", "v", "EX", "junk", "EX", "20"]),
            Some(Expiry::After(20_000))
        );
        assert_eq!(
            p(&["SET", "k", "v", "XX", "GET", "PX", "5", "NX"]).map_err(|_| ()),
            Err(())
        );
        assert_eq!(
            p(&["SET", "k", "v", "XX", "GET", "PX", "5"]),
            Ok(Command::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: Some(Cond::Xx),
                get: true,
                expiry: Some(Expiry::After(5)),
                name: "set"
            })
        );
        assert_eq!(
            p(&["SETEX", "k", "10", "v"]),
            Ok(Command::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: None,
                get: false,
                expiry: Some(Expiry::After(10_000)),
                name: "setex"
            })
        );
        assert_eq!(
            p(&["psetex", "k", "10", "v"]),
            Ok(Command::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: None,
                get: false,
                expiry: Some(Expiry::After(10)),
                name: "psetex"
            })
        );
    }

    #[test]
    fn bad_expiries_get_redis_errors() {
        for (words, want) in [
            (
                &["SET", "k", "v", "EX", "0"][..],
                "ERR invalid expire time in 'set' command",
            ),
            (
                &["SET", "k", "v", "PX", "-1"],
                "ERR invalid expire time in 'set' command",
            ),
            (
                &["SET", "k", "v", "EXAT", "0"],
                "ERR invalid expire time in 'set' command",
            ),
            (
                &["SET", "k", "v", "PXAT", "-5"],
                "ERR invalid expire time in 'set' command",
            ),
            (
                &["SET", "k", "v", "EX", "9223372036854776"],
                "ERR invalid expire time in 'set' command",
            ),
            (
                &["SET", "k", "v", "EX", "3153600001"],
                "ERR invalid expire time in 'set' command (atoll: a time to live is at most 100 years)",
            ),
            (
                &["SET", "k", "v", "EX", "1.5"],
                "ERR value is not an integer or out of range",
            ),
            (
                &["SET", "k", "v", "EX", "+5"],
                "ERR value is not an integer or out of range",
            ),
            (&["SET", "k", "v", "EX"], "ERR syntax error"),
            (
                &["SET", "k", "v", "EX", "10", "PX", "10"],
                "ERR syntax error",
            ),
            (
                &["SET", "k", "v", "EXAT", "10", "PXAT", "10"],
                "ERR syntax error",
            ),
            (
                &["SET", "k", "v", "KEEPTTL", "EX", "10"],
                "ERR syntax error",
            ),
            (
                &["SET", "k", "v", "PX", "10", "KEEPTTL"],
                "ERR syntax error",
            ),
            // A syntax error wins over a bad value, as in Redis (options are read first).
            (&["SET", "k", "v", "EX", "0", "BOGUS"], "ERR syntax error"),
            (
                &["SETEX", "k", "0", "v"],
                "ERR invalid expire time in 'setex' command",
            ),
            (
                &["PSETEX", "k", "-1", "v"],
                "ERR invalid expire time in 'psetex' command",
            ),
            (
                &["SETEX", "k", "x", "v"],
                "ERR value is not an integer or out of range",
            ),
            (
                &["SETEX", "k", "v"],
                "ERR wrong number of arguments for 'setex' command",
            ),
            (
                &["EXPIRE", "k"],
                "ERR wrong number of arguments for 'expire' command",
            ),
            (&["TTL"], "ERR wrong number of arguments for 'ttl' command"),
            (
                &["PTTL", "a", "b"],
                "ERR wrong number of arguments for 'pttl' command",
            ),
            (
                &["PERSIST"],
                "ERR wrong number of arguments for 'persist' command",
            ),
            (
                &["EXPIRE", "k", "ten"],
                "ERR value is not an integer or out of range",
            ),
            (
                &["EXPIRE", "k", "10", "sooner"],
                "ERR Unsupported option sooner",
            ),
            // Options are read before the number, as in Redis.
            (
                &["EXPIRE", "k", "ten", "sooner"],
                "ERR Unsupported option sooner",
            ),
            (
                &["EXPIRE", "k", "10", "NX", "XX"],
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            ),
            (
                &["PEXPIRE", "k", "10", "gt", "nx"],
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            ),
            (
                &["EXPIREAT", "k", "10", "GT", "LT"],
                "ERR GT and LT options at the same time are not compatible",
            ),
            (
                &["EXPIRE", "k", "9223372036854776"],
                "ERR invalid expire time in 'expire' command",
            ),
            (
                &["EXPIREAT", "k", "-9223372036854776"],
                "ERR invalid expire time in 'expireat' command",
            ),
            (
                &["GETEX", "k", "EX", "10"],
                "ERR GETEX is not supported by atoll's RESP front yet",
            ),
        ] {
            let e = err_text(p(words));
            assert!(e.starts_with(want), "{words:?}: {e}");
            if !want.contains("atoll") && !want.contains("GETEX") {
                assert_eq!(e, want, "{words:?}");
            }
        }
    }

    #[test]
    fn expire_ttl_and_persist_parse() {
        assert_eq!(
            p(&["EXPIRE", "k", "10"]),
            Ok(Command::Expire {
                key: b"k".to_vec(),
                when: ExpireWhen::In(10_000),
                cond: ExpireCond::default(),
                name: "expire"
            })
        );
        assert_eq!(
            p(&["pexpire", "k", "-5", "xx", "LT"]),
            Ok(Command::Expire {
                key: b"k".to_vec(),
                when: ExpireWhen::In(-5),
                cond: ExpireCond {
                    xx: true,
                    lt: true,
                    ..ExpireCond::default()
                },
                name: "pexpire"
            })
        );
        assert_eq!(
            p(&["EXPIREAT", "k", "1700000000", "NX"]),
            Ok(Command::Expire {
                key: b"k".to_vec(),
                when: ExpireWhen::At(1_700_000_000_000),
                cond: ExpireCond {
                    nx: true,
                    ..ExpireCond::default()
                },
                name: "expireat"
            })
        );
        assert_eq!(
            p(&["PEXPIREAT", "k", "0", "GT"]),
            Ok(Command::Expire {
                key: b"k".to_vec(),
                when: ExpireWhen::At(0),
                cond: ExpireCond {
                    gt: true,
                    ..ExpireCond::default()
                },
                name: "pexpireat"
            })
        );
        for (name, ms, absolute) in [
            ("TTL", false, false),
            ("pttl", true, false),
            ("ExpireTime", false, true),
            ("PEXPIRETIME", true, true),
        ] {
            assert_eq!(
                p(&[name, "k"]),
                Ok(Command::Ttl {
                    key: b"k".to_vec(),
                    query: TtlQuery { ms, absolute }
                }),
                "{name}"
            );
        }
        assert_eq!(p(&["PERSIST", "k"]), Ok(Command::Persist(b"k".to_vec())));
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(label(b"GET"), "get");
        for name in [
            "SETEX",
            "psetex",
            "EXPIRE",
            "PEXPIRE",
            "EXPIREAT",
            "PEXPIREAT",
            "TTL",
            "PTTL",
            "EXPIRETIME",
            "PEXPIRETIME",
            "PERSIST",
        ] {
            assert_eq!(label(name.as_bytes()), name.to_ascii_lowercase(), "{name}");
        }
        assert_eq!(label(b"GETEX"), "unknown");
        assert_eq!(label(b"whatever"), "unknown");
    }
}
