//! Commands: the arguments of one request parsed into what it asks (pure; arity, options and
//! numbers checked as Redis checks them, with Redis's error texts).

use crate::reply::Reply;

/// `SET`'s condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// `NX`: only if the key does not exist.
    Nx,
    /// `XX`: only if it exists.
    Xx,
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
    },
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
}

/// The commands this front serves, for messages and metric labels.
pub const SERVED: &[&str] = &[
    "get",
    "set",
    "del",
    "exists",
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
];

/// Commands of expiring keys: not supported yet, and never silently ignored.
const EXPIRING: &[&str] = &[
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "ttl",
    "pttl",
    "persist",
    "setex",
    "psetex",
    "getex",
    "expiretime",
    "pexpiretime",
];

/// The error for anything about expiring keys.
pub fn expiring_error(what: &str) -> Reply {
    Reply::err(format!(
        "expiring keys are not supported yet ({what}): atoll keeps every key until it is deleted; delete it with DEL, or keep sessions that must expire elsewhere for now"
    ))
}

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
        "get" if n == 1 => Command::Get(one()),
        "set" if n >= 2 => {
            let key = one();
            let value = one();
            let mut cond = None;
            let mut get = false;
            for opt in rest {
                let o = opt.to_ascii_lowercase();
                match o.as_slice() {
                    b"nx" if cond.is_none() => cond = Some(Cond::Nx),
                    b"xx" if cond.is_none() => cond = Some(Cond::Xx),
                    b"get" => get = true,
                    b"ex" | b"px" | b"exat" | b"pxat" | b"keepttl" => {
                        return Err(expiring_error(&format!(
                            "SET ... {}",
                            shown(&opt).to_ascii_uppercase()
                        )));
                    }
                    _ => return Err(syntax()),
                }
            }
            Command::Set {
                key,
                value,
                cond,
                get,
            }
        }
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
        _ if EXPIRING.contains(&name.as_str()) => {
            return Err(expiring_error(&name.to_ascii_uppercase()));
        }
        _ if SERVED.contains(&name.as_str()) => return Err(wrong_args(&name)),
        _ => return Err(unknown(&name_raw, &rest.collect::<Vec<_>>())),
    };
    Ok(cmd)
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
                get: true
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

    #[test]
    fn expiring_keys_are_refused_never_ignored() {
        for words in [
            &["SET", "k", "v", "EX", "10"][..],
            &["SET", "k", "v", "px", "10"],
            &["SET", "k", "v", "KEEPTTL"],
            &["EXPIRE", "k", "10"],
            &["TTL", "k"],
            &["PERSIST", "k"],
            &["SETEX", "k", "10", "v"],
        ] {
            let e = err_text(p(words));
            assert!(
                e.starts_with("ERR expiring keys are not supported yet"),
                "{words:?}: {e}"
            );
        }
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(label(b"GET"), "get");
        assert_eq!(label(b"whatever"), "unknown");
    }
}
