//! What a command does: a parsed [`Command`], the connection's [`Session`] and a [`Host`] (the
//! region: its config, tokens, store reads and the write path) give a [`Reply`]. Everything here
//! is decided from the host's answers; the host does the I/O. `docs/design/resp.md` says how each
//! command maps and where Redis semantics differ.

use crate::command::{
    Command, Cond, ExpireCond, ExpireWhen, Expiry, TtlQuery, invalid_expire, shown, too_long,
};
use crate::reply::Reply;
use atoll_config::auth::{Grant, Right, Tokens};
use atoll_config::{Config, KEY_MAX_BYTES, Policy, RespKey};
use atoll_core::AtollError;
use atoll_core::op::{Intent, KeyState, MAX_TTL_MS, Ttl};
use std::future::Future;

/// One peer's replication as `INFO` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    pub region: String,
    /// `up`, `one-way`, `unreachable`, `clock-skew`.
    pub state: String,
    /// `None` before anything is known.
    pub lag_seconds: Option<f64>,
    pub lag_ops: u64,
}

/// What `INFO` shows of the region.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostInfo {
    pub region: String,
    pub cluster: String,
    pub uptime_secs: u64,
    /// The RESP port.
    pub tcp_port: u16,
    /// Whether this region takes writes now (`role:master`); a standby is `slave`.
    pub writable: bool,
    /// The fencing role as atoll names it (`active`, `primary`, `standby`, ...).
    pub atoll_role: String,
    pub peers: Vec<PeerInfo>,
}

/// The region a RESP connection talks to.
pub trait Host: Send + Sync + 'static {
    fn config(&self) -> &Config;
    /// The client tokens (`[auth]`); `None`: every connection may do everything.
    fn tokens(&self) -> Option<&Tokens>;
    /// The region's physical clock, milliseconds since the Unix epoch: what judges whether a
    /// value has expired (`docs/design/expiring-keys.md`; never the HLC).
    fn now_ms(&self) -> u64;
    /// The key's state in this region's store (after the host's own client checks: a passive
    /// region refuses).
    fn read(&self, keyspace: &str, key: &[u8]) -> Result<Option<KeyState>, AtollError>;
    /// Writes through the region's write path (homes, fencing, the store's writer); the key's
    /// state after the write.
    fn write(
        &self,
        keyspace: &str,
        key: &[u8],
        intent: Intent,
    ) -> impl Future<Output = Result<KeyState, AtollError>> + Send;
    /// Submits a write now, behind every write submitted before it, and gives the future of
    /// its answer ([`Host::write`]'s), so that a pipeline's writes share the store's group
    /// commit instead of waiting one by one. `None`: this host cannot take `keyspace`'s writes
    /// that way (a write that needs a step of its own first, such as an owned key's home claim);
    /// the command then runs through [`Host::write`]. The default takes none.
    fn submit(&self, _keyspace: &str, _key: &[u8], _intent: Intent) -> Option<Submitted> {
        None
    }
    fn info(&self) -> HostInfo;
    /// A session token naming everything this region has applied (`ATOLL.SESSION`).
    fn session_token(&self) -> String;
    /// Waits until this region has applied what `token` names, at most `wait_ms` (`None`: the
    /// region's default): `Err` with `ATOLL-STALE` when it has not by then, or
    /// `ATOLL-BAD-SESSION-TOKEN` for a token it cannot honour (`ATOLL.WAIT`).
    fn session_wait(
        &self,
        token: &str,
        wait_ms: Option<u64>,
    ) -> impl Future<Output = Result<(), AtollError>> + Send;
    /// One command ran: its label ([`crate::command::label`]) and outcome (`ok`, `error`,
    /// `denied`, `unknown`).
    fn on_command(&self, _command: &'static str, _outcome: &'static str) {}
    /// The number of open connections changed.
    fn on_connections(&self, _open: usize) {}
}

/// A submitted write's answer ([`Host::submit`]).
pub type Submitted =
    std::pin::Pin<Box<dyn Future<Output = Result<KeyState, AtollError>> + Send + 'static>>;

/// A pipelined command whose write is submitted: its answer, once awaited ([`Pipelined::reply`]).
pub struct Pipelined {
    label: &'static str,
    kind: PipelinedKind,
    answer: Submitted,
}

enum PipelinedKind {
    Set,
    Incr,
}

impl Pipelined {
    /// Waits for the write and answers as the command answers when run on its own.
    pub async fn reply<H: Host>(self, host: &H) -> Reply {
        let answer = self.answer.await.map_err(|e| atoll_error(&e));
        let r = match (self.kind, answer) {
            (_, Err(r)) => r,
            (PipelinedKind::Set, Ok(_)) => Reply::ok(),
            (PipelinedKind::Incr, Ok(st)) => counter_reply(st),
        };
        host.on_command(
            self.label,
            if matches!(r, Reply::Error(_)) {
                "error"
            } else {
                "ok"
            },
        );
        r
    }
}

/// Submits `cmd`'s write now if it is one a pipeline may submit without waiting for the
/// commands before it to be answered: a plain `SET` of an lww key (no `NX`/`XX`/`GET`/`KEEPTTL`:
/// nothing read first) and the `INCR` family, of an authenticated connection allowed to write
/// the keyspace. Its effects are those of running it: the writes of one connection are
/// submitted, and so applied, in command order, and the connection waits for every submitted
/// write before it runs any other command (a `GET` after a `SET` reads it). `None`: run it.
pub fn pipelined<H: Host>(
    host: &H,
    session: &Session,
    label: &'static str,
    cmd: &Command,
) -> Option<Pipelined> {
    if host.tokens().is_some() && session.grant.is_none() {
        return None;
    }
    let (t, kind, intent) = match cmd {
        Command::Set {
            key,
            value,
            cond: None,
            get: false,
            expiry,
            ..
        } => {
            let t = target(host, session, key, Right::Write, KV).ok()?;
            if t.policy != Policy::Lww {
                return None;
            }
            let ttl = match expiry {
                None => Ttl::Default,
                Some(Expiry::After(ms)) => Ttl::After(*ms),
                Some(Expiry::At(at)) if *at <= host.now_ms().saturating_add(MAX_TTL_MS) => {
                    Ttl::At(*at)
                }
                Some(_) => return None,
            };
            let intent = Intent::Put {
                value: value.clone(),
                context: None,
                ttl,
            };
            (t, PipelinedKind::Set, intent)
        }
        Command::IncrBy { key, delta } => {
            let t = target(host, session, key, Right::Write, COUNTER).ok()?;
            (t, PipelinedKind::Incr, Intent::CounterAdd { delta: *delta })
        }
        _ => return None,
    };
    let answer = host.submit(t.keyspace, t.key, intent)?;
    Some(Pipelined {
        label,
        kind,
        answer,
    })
}

/// A connection's state.
#[derive(Clone, Debug)]
pub struct Session {
    /// RESP version of the replies: 2 until `HELLO 3`.
    pub proto: u8,
    /// The authenticated token, with `[auth]`.
    pub grant: Option<Grant>,
    pub name: Option<Vec<u8>>,
    pub id: u64,
}

impl Session {
    pub fn new(id: u64) -> Self {
        Self {
            proto: 2,
            grant: None,
            name: None,
            id,
        }
    }
}

/// What to do after a reply.
#[derive(Debug, PartialEq)]
pub struct Step {
    pub reply: Reply,
    /// Close the connection once the reply is sent (`QUIT`).
    pub close: bool,
}

fn noauth() -> Reply {
    Reply::Error("NOAUTH Authentication required.".to_string())
}

fn wrongpass() -> Reply {
    Reply::Error(
        "WRONGPASS invalid username-password pair or user is disabled. (atoll: AUTH with a token of the [auth] tokens file)"
            .to_string(),
    )
}

/// An atoll error as a RESP error: fencing refusals, and a replica region's refusal of what
/// needs a voter, read as a Redis replica's (`READONLY`), the rest as `ERR ATOLL-CODE message`.
pub fn atoll_error(e: &AtollError) -> Reply {
    let prefix = match e {
        AtollError::NotPrimary { .. }
        | AtollError::Fenced { .. }
        | AtollError::Passive { .. }
        | AtollError::NotAVoter(_)
        | AtollError::RegionRemoved(_) => "READONLY",
        AtollError::Unauthorized(_) => "NOAUTH",
        AtollError::Forbidden(_) => "NOPERM",
        AtollError::WrongPolicy { .. } => "WRONGTYPE",
        _ => "ERR",
    };
    Reply::Error(format!("{prefix} {} {e}", e.code()))
}

/// Runs a command and records its outcome.
pub async fn run<H: Host>(
    host: &H,
    session: &mut Session,
    label: &'static str,
    cmd: Command,
) -> Step {
    let step = execute(host, session, cmd).await;
    let outcome = match &step.reply {
        Reply::Error(e)
            if e.starts_with("NOAUTH") || e.starts_with("NOPERM") || e.starts_with("WRONGPASS") =>
        {
            "denied"
        }
        Reply::Error(_) => "error",
        _ => "ok",
    };
    host.on_command(label, outcome);
    step
}

fn reply(r: Reply) -> Step {
    Step {
        reply: r,
        close: false,
    }
}

/// What `cmd` answers (see the module documentation).
pub async fn execute<H: Host>(host: &H, session: &mut Session, cmd: Command) -> Step {
    let authenticated = host.tokens().is_none() || session.grant.is_some();
    match cmd {
        Command::Quit => {
            return Step {
                reply: Reply::ok(),
                close: true,
            };
        }
        Command::Ping(msg) => {
            return reply(match msg {
                None => Reply::Simple("PONG".to_string()),
                Some(m) => Reply::Bulk(m),
            });
        }
        Command::Auth { token } => return reply(auth(host, session, &token)),
        Command::Hello {
            proto,
            auth: creds,
            setname,
        } => return reply(hello(host, session, proto, creds, setname)),
        _ if !authenticated => return reply(noauth()),
        _ => {}
    }
    let r = match cmd {
        Command::Echo(m) => Reply::Bulk(m),
        Command::Select(0) => Reply::ok(),
        Command::Select(_) => Reply::err("DB index is out of range (atoll serves one database, 0)"),
        Command::CommandInfo => Reply::Array(Vec::new()),
        Command::ClientSetName(name) => {
            session.name = (!name.is_empty()).then_some(name);
            Reply::ok()
        }
        Command::ClientSetInfo => Reply::ok(),
        Command::ClientGetName => session.name.clone().map_or(Reply::Null, Reply::Bulk),
        Command::ClientId => Reply::Int(i64::try_from(session.id).unwrap_or(i64::MAX)),
        Command::Info(sections) => Reply::Bulk(info(host, &sections).into_bytes()),
        Command::Get(key) => get(host, session, &key),
        Command::Set {
            key,
            value,
            cond,
            get: want_old,
            expiry,
            name,
        } => {
            let how = SetHow {
                cond,
                want_old,
                expiry,
                name,
            };
            set(host, session, &key, value, how).await
        }
        Command::Expire {
            key,
            when,
            cond,
            name,
        } => expire(host, session, &key, when, cond, name).await,
        Command::Ttl { key, query } => ttl(host, session, &key, query),
        Command::Persist(key) => persist(host, session, &key).await,
        Command::Del(keys) => del(host, session, &keys).await,
        Command::Exists(keys) => exists(host, session, &keys),
        Command::IncrBy { key, delta } => incr(host, session, &key, delta).await,
        Command::SAdd { key, members } => set_update(host, session, &key, members, true).await,
        Command::SRem { key, members } => set_update(host, session, &key, members, false).await,
        Command::SMembers(key) => smembers(host, session, &key),
        Command::SIsMember { key, member } => sismember(host, session, &key, &member),
        Command::SCard(key) => scard(host, session, &key),
        Command::Session => Reply::Bulk(host.session_token().into_bytes()),
        Command::RateLimit { key, cost } => ratelimit(host, session, &key, cost).await,
        Command::SessionWait { token, wait_ms } => match std::str::from_utf8(&token) {
            Err(_) => Reply::err("ATOLL-BAD-SESSION-TOKEN invalid session token: not ASCII"),
            Ok(t) => match host.session_wait(t, wait_ms).await {
                Ok(()) => Reply::ok(),
                Err(e) => atoll_error(&e),
            },
        },
        // Answered above.
        Command::Quit | Command::Ping(_) | Command::Auth { .. } | Command::Hello { .. } => {
            Reply::err("internal error: connection command not answered")
        }
    };
    reply(r)
}

fn auth<H: Host>(host: &H, session: &mut Session, token: &[u8]) -> Reply {
    let Some(tokens) = host.tokens() else {
        return Reply::err(
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct? (atoll: this cluster has no [auth] tokens file)",
        );
    };
    let grant = std::str::from_utf8(token)
        .ok()
        .and_then(|t| tokens.authenticate(t));
    match grant {
        Some(g) => {
            tracing::debug!(token = %g.name, "RESP connection authenticated");
            session.grant = Some(g.clone());
            Reply::ok()
        }
        None => wrongpass(),
    }
}

fn hello<H: Host>(
    host: &H,
    session: &mut Session,
    proto: Option<i64>,
    creds: Option<(Vec<u8>, Vec<u8>)>,
    setname: Option<Vec<u8>>,
) -> Reply {
    let version = match proto {
        None => session.proto,
        Some(2) => 2,
        Some(3) => 3,
        Some(_) => {
            return Reply::Error("NOPROTO unsupported protocol version".to_string());
        }
    };
    if let Some((_, token)) = creds
        && host.tokens().is_some()
    {
        let r = auth(host, session, &token);
        if r.is_error() {
            return r;
        }
    }
    if host.tokens().is_some() && session.grant.is_none() {
        return Reply::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".to_string(),
        );
    }
    if let Some(name) = setname {
        session.name = (!name.is_empty()).then_some(name);
    }
    session.proto = version;
    let info = host.info();
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("atoll")),
        (
            Reply::bulk("version"),
            Reply::bulk(env!("CARGO_PKG_VERSION")),
        ),
        (Reply::bulk("proto"), Reply::Int(i64::from(version))),
        (
            Reply::bulk("id"),
            Reply::Int(i64::try_from(session.id).unwrap_or(i64::MAX)),
        ),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (
            Reply::bulk("role"),
            Reply::bulk(if info.writable { "master" } else { "replica" }),
        ),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
}

/// The `INFO` text (Redis's format: `# Section` then `field:value` lines, CRLF).
fn info<H: Host>(host: &H, sections: &[String]) -> String {
    let all = sections.is_empty()
        || sections
            .iter()
            .any(|s| matches!(s.as_str(), "all" | "everything" | "default"));
    let want = |s: &str| all || sections.iter().any(|x| x == s);
    let i = host.info();
    let mut out = String::new();
    if want("server") {
        out.push_str("# Server\r\n");
        out.push_str("redis_version:7.0.0\r\n");
        out.push_str(&format!("atoll_version:{}\r\n", env!("CARGO_PKG_VERSION")));
        out.push_str("redis_mode:standalone\r\n");
        out.push_str(&format!("region:{}\r\n", i.region));
        out.push_str(&format!("cluster:{}\r\n", i.cluster));
        out.push_str(&format!("tcp_port:{}\r\n", i.tcp_port));
        out.push_str(&format!("uptime_in_seconds:{}\r\n", i.uptime_secs));
        out.push_str("\r\n");
    }
    if want("replication") {
        out.push_str("# Replication\r\n");
        out.push_str(&format!(
            "role:{}\r\n",
            if i.writable { "master" } else { "slave" }
        ));
        out.push_str(&format!("atoll_role:{}\r\n", i.atoll_role));
        out.push_str(&format!("connected_peers:{}\r\n", i.peers.len()));
        for p in &i.peers {
            let lag = p
                .lag_seconds
                .filter(|l| l.is_finite())
                .map_or_else(|| "unknown".to_string(), |l| format!("{l:.3}"));
            out.push_str(&format!(
                "peer_{}:state={},lag_seconds={lag},lag_ops={}\r\n",
                p.region, p.state, p.lag_ops
            ));
        }
        out.push_str("\r\n");
    }
    if want("keyspace") {
        out.push_str("# Keyspace\r\n");
        for k in &host.config().keyspaces {
            out.push_str(&format!("keyspace_{}:policy={}\r\n", k.name, k.policy));
        }
        out.push_str("\r\n");
    }
    out
}

/// A key of a keyspace, resolved and checked for a command.
struct Target<'a> {
    keyspace: &'a str,
    key: &'a [u8],
    policy: Policy,
}

/// What a command may do on a keyspace of each policy.
fn policies_text(policy: Policy) -> &'static str {
    match policy.storage() {
        Policy::Lww => {
            "GET, SET, SETEX, PSETEX, DEL, EXISTS, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, TTL, PTTL, EXPIRETIME, PEXPIRETIME, PERSIST"
        }
        Policy::Mvr => {
            "GET, SET (EX, PX, EXAT, PXAT; not KEEPTTL), DEL, EXISTS, TTL, PTTL, EXPIRETIME, PEXPIRETIME"
        }
        Policy::Counter => "INCR, INCRBY, DECR, DECRBY, GET, EXISTS",
        Policy::Set => "SADD, SREM, SMEMBERS, SISMEMBER, SCARD, DEL, EXISTS",
        Policy::RateLimit => "ATOLL.RATELIMIT",
        _ => "nothing over RESP",
    }
}

/// Resolves `raw` by the `[resp]` rule and checks the grant, the policy and the key.
fn target<'a, H: Host>(
    host: &'a H,
    session: &Session,
    raw: &'a [u8],
    right: Right,
    allowed: &[Policy],
) -> Result<Target<'a>, Reply> {
    let config = host.config();
    let (keyspace, key) = match config.resp_key(raw) {
        RespKey::Key { keyspace, key } => (keyspace, key),
        RespKey::Unknown { prefix } => {
            return Err(Reply::err(format!(
                "unknown keyspace '{}' (key '{}'): a key is KEYSPACE:KEY with one of the keyspaces {}{}",
                shown(prefix),
                shown(raw),
                config
                    .keyspaces
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if raw.contains(&b':') {
                    ""
                } else {
                    ", or set [resp] default_keyspace"
                }
            )));
        }
    };
    if host.tokens().is_some() {
        let allowed = session
            .grant
            .as_ref()
            .is_some_and(|g| g.allows(right, keyspace));
        if !allowed {
            let name = session.grant.as_ref().map_or("-", |g| g.name.as_str());
            return Err(Reply::Error(format!(
                "NOPERM this user has no permissions to {} the '{keyspace}' keyspace (token `{name}`)",
                right.as_str()
            )));
        }
    }
    let policy = config
        .keyspace(keyspace)
        .map(|k| k.policy)
        .unwrap_or(Policy::Lww);
    if policy == Policy::Strong {
        return Err(Reply::err(format!(
            "keyspace '{keyspace}' is strong: its reads and writes go through consensus with compare-and-set by revision, which RESP does not carry here; use the HTTP API (GET/PUT /v1/kv/{keyspace}/KEY with If-Match)"
        )));
    }
    if !allowed.contains(&policy) {
        return Err(Reply::Error(format!(
            "WRONGTYPE Operation against a key holding the wrong kind of value (keyspace '{keyspace}' is {policy}: {})",
            policies_text(policy)
        )));
    }
    if key.is_empty() {
        return Err(atoll_error(&AtollError::EmptyKey));
    }
    if key.len() > KEY_MAX_BYTES {
        return Err(atoll_error(&AtollError::KeyTooLarge {
            len: key.len(),
            max: KEY_MAX_BYTES,
        }));
    }
    Ok(Target {
        keyspace,
        key,
        policy,
    })
}

const KV: &[Policy] = &[Policy::Lww, Policy::Owned, Policy::Mvr];
const COUNTER: &[Policy] = &[Policy::Counter];
const SET: &[Policy] = &[Policy::Set];
const RATELIMIT: &[Policy] = &[Policy::RateLimit];
const ANY: &[Policy] = &[
    Policy::Lww,
    Policy::Owned,
    Policy::Mvr,
    Policy::Counter,
    Policy::Set,
];

fn read<H: Host>(host: &H, t: &Target<'_>) -> Result<Option<KeyState>, Reply> {
    host.read(t.keyspace, t.key).map_err(|e| atoll_error(&e))
}

/// A kv key's value as GET answers it at physical time `now` ([`Host::now_ms`]): `Ok(None)` when
/// absent, deleted or expired; the conflict error for an mvr key with several live siblings.
fn kv_value(t: &Target<'_>, st: Option<&KeyState>, now: u64) -> Result<Option<Vec<u8>>, Reply> {
    match st {
        None => Ok(None),
        Some(KeyState::Lww(r)) => Ok(r.live_value(now).cloned()),
        Some(KeyState::Mvr(r)) => {
            let live = r.live_at(now);
            match live.as_slice() {
                [] => Ok(None),
                [one] => Ok(one.value.clone()),
                many => Err(Reply::Error(format!(
                    "CONFLICT key '{}' of keyspace '{}' has {} siblings (concurrent writes): read them with GET /v1/kv/{}/KEY over HTTP and resolve with its X-Atoll-Context, or SET the key to one value",
                    shown(t.key),
                    t.keyspace,
                    many.len(),
                    t.keyspace
                ))),
            }
        }
        Some(KeyState::Counter(c)) => Ok(Some(c.value().to_string().into_bytes())),
        Some(KeyState::Set(_) | KeyState::RateLimit(_)) => Ok(None),
    }
}

/// Whether a key exists in this region at physical time `now`: a live value (not deleted, not
/// expired), a written counter, a non-empty set.
fn exists_in(st: Option<&KeyState>, now: u64) -> bool {
    match st {
        None => false,
        Some(KeyState::Lww(r)) => r.live_value(now).is_some(),
        Some(KeyState::Mvr(r)) => !r.live_at(now).is_empty(),
        Some(KeyState::Counter(_)) => true,
        Some(KeyState::Set(s)) => !s.members().is_empty(),
        Some(KeyState::RateLimit(w)) => !w.windows.is_empty(),
    }
}

fn get<H: Host>(host: &H, session: &Session, raw: &[u8]) -> Reply {
    let policies = &[Policy::Lww, Policy::Owned, Policy::Mvr, Policy::Counter];
    let t = match target(host, session, raw, Right::Read, policies) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let st = match read(host, &t) {
        Ok(st) => st,
        Err(r) => return r,
    };
    match kv_value(&t, st.as_ref(), host.now_ms()) {
        Ok(Some(v)) => Reply::Bulk(v),
        Ok(None) => Reply::Null,
        Err(r) => r,
    }
}

async fn write<H: Host>(host: &H, t: &Target<'_>, intent: Intent) -> Result<KeyState, Reply> {
    host.write(t.keyspace, t.key, intent)
        .await
        .map_err(|e| atoll_error(&e))
}

/// The causal context of what this region holds of an mvr key: a write with it replaces what
/// was read (concurrent writes elsewhere still become siblings).
fn context(st: Option<&KeyState>) -> Option<atoll_core::causal::CausalContext> {
    match st {
        Some(KeyState::Mvr(r)) => Some(r.ctx.clone()),
        _ => None,
    }
}

/// `SET`'s options (and `SETEX`'s, `PSETEX`'s).
struct SetHow {
    cond: Option<Cond>,
    want_old: bool,
    /// `None`: the keyspace's `default_ttl` (none: no expiry), docs/design/resp.md.
    expiry: Option<Expiry>,
    name: &'static str,
}

/// The refusal of an expiry on a keyspace whose keys cannot expire (counter, set), or of a
/// change of expiry on an mvr key (each sibling keeps the expiry its write gave it), in the
/// style of [`target`]'s policy refusal.
fn no_expiry(t: &Target<'_>) -> Reply {
    if t.policy.storage() == Policy::Mvr {
        return Reply::Error(format!(
            "WRONGTYPE Operation against a key holding the wrong kind of value (keyspace '{}' is mvr: each sibling expires as the write that made it said; SET the key again with EX or PX to change it, docs/design/expiring-keys.md)",
            t.keyspace
        ));
    }
    Reply::Error(format!(
        "WRONGTYPE Operation against a key holding the wrong kind of value (keyspace '{}' is {}: its keys do not expire; expiring keys are lww, owned and mvr keyspaces, docs/design/expiring-keys.md)",
        t.keyspace, t.policy
    ))
}

async fn set<H: Host>(
    host: &H,
    session: &Session,
    raw: &[u8],
    value: Vec<u8>,
    how: SetHow,
) -> Reply {
    let t = match target(host, session, raw, Right::Write, KV) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if how.expiry.is_some()
        && (!matches!(t.policy.storage(), Policy::Lww | Policy::Mvr)
            || (t.policy.storage() == Policy::Mvr && matches!(how.expiry, Some(Expiry::Keep))))
    {
        return no_expiry(&t);
    }
    let now = host.now_ms();
    let ttl = match how.expiry {
        None => Ttl::Default,
        Some(Expiry::After(ms)) => Ttl::After(ms),
        Some(Expiry::At(at)) if at > now.saturating_add(MAX_TTL_MS) => return too_long(how.name),
        Some(Expiry::At(at)) => Ttl::At(at),
        Some(Expiry::Keep) => Ttl::Keep,
    };
    if how.want_old
        && let Some(g) = &session.grant
        && !g.allows(Right::Read, t.keyspace)
    {
        return Reply::Error(format!(
            "NOPERM this user has no permissions to read the '{}' keyspace (SET ... GET reads it)",
            t.keyspace
        ));
    }
    // NX/XX (and GET) read first: not atomic with the write (docs/design/resp.md).
    let st = match read(host, &t) {
        Ok(st) => st,
        Err(r) => return r,
    };
    let old = if how.want_old {
        match kv_value(&t, st.as_ref(), now) {
            Ok(v) => Some(v),
            Err(r) => return r,
        }
    } else {
        None
    };
    let present = exists_in(st.as_ref(), now);
    let proceed = match how.cond {
        None => true,
        Some(Cond::Nx) => !present,
        Some(Cond::Xx) => present,
    };
    if !proceed {
        return match old {
            Some(Some(v)) => Reply::Bulk(v),
            _ => Reply::Null,
        };
    }
    let intent = Intent::Put {
        value,
        context: context(st.as_ref()),
        ttl,
    };
    if let Err(r) = write(host, &t, intent).await {
        return r;
    }
    match old {
        Some(Some(v)) => Reply::Bulk(v),
        Some(None) => Reply::Null,
        None => Reply::ok(),
    }
}

/// The live lww register of a key at physical time `now`: `None` when absent, deleted or expired.
fn live_lww(st: Option<&KeyState>, now: u64) -> Option<&atoll_core::crdt::lww::LwwRegister> {
    match st {
        Some(KeyState::Lww(r)) if r.live_value(now).is_some() => Some(r),
        _ => None,
    }
}

/// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`: `:1` when the expiry was set (or the key deleted,
/// for an instant already past, as Redis does), `:0` when the key does not exist or a condition
/// does not hold. The conditions are read first, then written: not atomic (docs/design/resp.md).
async fn expire<H: Host>(
    host: &H,
    session: &Session,
    raw: &[u8],
    when: ExpireWhen,
    cond: ExpireCond,
    name: &'static str,
) -> Reply {
    let t = match target(host, session, raw, Right::Write, ANY) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if t.policy.storage() != Policy::Lww {
        return no_expiry(&t);
    }
    let now = host.now_ms();
    let now_i = i64::try_from(now).unwrap_or(i64::MAX);
    // The instant asked for (ms since the epoch), checked before the key is looked at, as Redis
    // does: an overflow is an error, and so is an instant past atoll's longest time to live.
    let at = match when {
        ExpireWhen::In(ms) => match now_i.checked_add(ms) {
            Some(at) => at,
            None => return invalid_expire(name),
        },
        ExpireWhen::At(at) => at,
    };
    if at > now_i.saturating_add(i64::try_from(MAX_TTL_MS).unwrap_or(i64::MAX)) {
        return too_long(name);
    }
    let st = match read(host, &t) {
        Ok(st) => st,
        Err(r) => return r,
    };
    let Some(live) = live_lww(st.as_ref(), now) else {
        return Reply::Int(0);
    };
    let current = live
        .expires_ms
        .map(|e| i64::try_from(e).unwrap_or(i64::MAX));
    let refused = (cond.nx && current.is_some())
        || (cond.xx && current.is_none())
        || (cond.gt && current.is_none_or(|c| at <= c))
        || (cond.lt && current.is_some_and(|c| at >= c));
    if refused {
        return Reply::Int(0);
    }
    let intent = if at <= now_i {
        // Already past: Redis deletes the key.
        Intent::Delete { context: None }
    } else {
        let ttl = match (when, u64::try_from(at)) {
            (ExpireWhen::In(ms), _) => u64::try_from(ms).map(Ttl::After),
            (ExpireWhen::At(_), at) => at.map(Ttl::At),
        };
        match ttl {
            Ok(ttl) => Intent::Expire { ttl: Some(ttl) },
            Err(_) => return invalid_expire(name),
        }
    };
    match host.write(t.keyspace, t.key, intent).await {
        Ok(_) => Reply::Int(1),
        // Deleted or expired since it was read.
        Err(AtollError::NotFound) => Reply::Int(0),
        Err(e) => atoll_error(&e),
    }
}

/// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`: `-2` when the key does not exist, `-1` when it has
/// no expiry (every counter and set key), else the time left or the instant (an mvr key: of its
/// one live sibling; several are the conflict error GET gives), in
/// seconds rounded as Redis rounds them (`(ms + 500) / 1000`) or milliseconds.
fn ttl<H: Host>(host: &H, session: &Session, raw: &[u8], query: TtlQuery) -> Reply {
    let t = match target(host, session, raw, Right::Read, ANY) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let st = match read(host, &t) {
        Ok(st) => st,
        Err(r) => return r,
    };
    let now = host.now_ms();
    if !exists_in(st.as_ref(), now) {
        return Reply::Int(-2);
    }
    let expires = match st.as_ref() {
        // An mvr key answers for its one live sibling; several are a conflict, as for GET.
        Some(KeyState::Mvr(r)) => match r.live_at(now).as_slice() {
            [one] => one.expires_ms,
            _ => {
                if let Err(conflict) = kv_value(&t, st.as_ref(), now) {
                    return conflict;
                }
                None
            }
        },
        _ => live_lww(st.as_ref(), now).and_then(|r| r.expires_ms),
    };
    let Some(expires) = expires else {
        return Reply::Int(-1);
    };
    let ms = if query.absolute {
        expires
    } else {
        expires.saturating_sub(now)
    };
    let v = if query.ms {
        ms
    } else {
        ms.saturating_add(500) / 1000
    };
    Reply::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// `PERSIST`: `:1` when the key had an expiry and it was removed, `:0` otherwise, without a write
/// (keys of counter and set keyspaces never have one; an mvr sibling's expiry cannot be changed
/// but by a new SET: refused).
async fn persist<H: Host>(host: &H, session: &Session, raw: &[u8]) -> Reply {
    let t = match target(host, session, raw, Right::Write, ANY) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if t.policy.storage() == Policy::Mvr {
        return no_expiry(&t);
    }
    if t.policy.storage() != Policy::Lww {
        return Reply::Int(0);
    }
    let st = match read(host, &t) {
        Ok(st) => st,
        Err(r) => return r,
    };
    let now = host.now_ms();
    if live_lww(st.as_ref(), now).is_none_or(|r| r.expires_ms.is_none()) {
        return Reply::Int(0);
    }
    match host
        .write(t.keyspace, t.key, Intent::Expire { ttl: None })
        .await
    {
        Ok(_) => Reply::Int(1),
        // Deleted or expired since it was read.
        Err(AtollError::NotFound) => Reply::Int(0),
        Err(e) => atoll_error(&e),
    }
}

async fn del<H: Host>(host: &H, session: &Session, keys: &[Vec<u8>]) -> Reply {
    // Every key is checked before anything is deleted.
    let mut targets = Vec::with_capacity(keys.len());
    for raw in keys {
        match target(host, session, raw, Right::Write, ANY) {
            Ok(t) if t.policy == Policy::Counter => {
                return Reply::err(format!(
                    "keyspace '{}' is a counter (PN-counter): a counter cannot be deleted without losing concurrent increments; DECRBY it instead",
                    t.keyspace
                ));
            }
            Ok(t) => targets.push(t),
            Err(r) => return r,
        }
    }
    let mut deleted = 0;
    for t in &targets {
        let st = match read(host, t) {
            Ok(st) => st,
            Err(r) => return r,
        };
        if !exists_in(st.as_ref(), host.now_ms()) {
            continue;
        }
        let intent = match &st {
            Some(KeyState::Set(s)) => Intent::SetUpdate {
                add: Vec::new(),
                remove: s.members().into_iter().map(str::to_string).collect(),
            },
            _ => Intent::Delete {
                context: context(st.as_ref()),
            },
        };
        if let Err(r) = write(host, t, intent).await {
            return r;
        }
        deleted += 1;
    }
    Reply::Int(deleted)
}

fn exists<H: Host>(host: &H, session: &Session, keys: &[Vec<u8>]) -> Reply {
    let mut n = 0;
    for raw in keys {
        let t = match target(host, session, raw, Right::Read, ANY) {
            Ok(t) => t,
            Err(r) => return r,
        };
        match read(host, &t) {
            Ok(st) if exists_in(st.as_ref(), host.now_ms()) => n += 1,
            Ok(_) => {}
            Err(r) => return r,
        }
    }
    Reply::Int(n)
}

async fn incr<H: Host>(host: &H, session: &Session, raw: &[u8], delta: i64) -> Reply {
    let t = match target(host, session, raw, Right::Write, COUNTER) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match write(host, &t, Intent::CounterAdd { delta }).await {
        Ok(st) => counter_reply(st),
        Err(r) => r,
    }
}

/// `INCR`'s answer from the counter's state after the write: its value.
fn counter_reply(st: KeyState) -> Reply {
    match st {
        KeyState::Counter(c) => match i64::try_from(c.value()) {
            Ok(v) => Reply::Int(v),
            Err(_) => Reply::err("increment or decrement would overflow"),
        },
        _ => Reply::err("internal error: a counter write answered another state"),
    }
}

/// `ATOLL.RATELIMIT key [cost]` (`docs/design/rate-limits.md`): `[allowed (1 or 0), limit,
/// remaining, retry_after_ms, reset_at_ms]`, the decision `POST /v1/ratelimit` answers. A denial
/// counts nothing.
async fn ratelimit<H: Host>(host: &H, session: &Session, raw: &[u8], cost: u64) -> Reply {
    let t = match target(host, session, raw, Right::Write, RATELIMIT) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(rule) = host
        .config()
        .keyspace(t.keyspace)
        .and_then(|k| k.ratelimit.clone())
    else {
        return Reply::err(format!("keyspace '{}' has no rate-limit rule", t.keyspace));
    };
    let decision = |allowed: bool, limit: u64, remaining: u64, retry: u64, reset: u64| {
        let int = |v: u64| Reply::Int(i64::try_from(v).unwrap_or(i64::MAX));
        Reply::Array(vec![
            Reply::Int(i64::from(allowed)),
            int(limit),
            int(remaining),
            int(retry),
            int(reset),
        ])
    };
    match host.write(t.keyspace, t.key, Intent::Admit { cost }).await {
        Ok(KeyState::RateLimit(w)) => {
            let Ok(region) = atoll_core::RegionId::new(&host.info().region) else {
                return Reply::err("internal error: the region has no valid name");
            };
            // What is left after this admission, at the host's clock (the admission was
            // stamped at its HLC time, at least this).
            let d = atoll_core::crdt::ratewindow::RateWindows::peek(
                Some(&w),
                &rule,
                &region,
                host.now_ms(),
            );
            decision(true, d.limit, d.remaining, 0, d.reset_at_ms)
        }
        Ok(_) => Reply::err("internal error: a rate-limit write answered another state"),
        Err(AtollError::RateLimited {
            limit,
            remaining,
            reset_at_ms,
            retry_after_ms,
            ..
        }) => decision(false, limit, remaining, retry_after_ms, reset_at_ms),
        Err(e) => atoll_error(&e),
    }
}

fn members_of(st: Option<&KeyState>) -> Vec<String> {
    match st {
        Some(KeyState::Set(s)) => s.members().into_iter().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

async fn set_update<H: Host>(
    host: &H,
    session: &Session,
    raw: &[u8],
    members: Vec<Vec<u8>>,
    add: bool,
) -> Reply {
    let t = match target(host, session, raw, Right::Write, SET) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut names: Vec<String> = Vec::with_capacity(members.len());
    for m in members {
        if m.is_empty() || m.len() > KEY_MAX_BYTES {
            return Reply::err(format!(
                "set members are 1 to {KEY_MAX_BYTES} bytes; got one of {} bytes",
                m.len()
            ));
        }
        match String::from_utf8(m) {
            Ok(s) => {
                if !names.contains(&s) {
                    names.push(s);
                }
            }
            Err(_) => return Reply::err("set members are UTF-8 text in atoll"),
        }
    }
    // The count Redis answers: members added (or removed) that were not (or were) there, as
    // this region saw the set just before.
    let before = match read(host, &t) {
        Ok(st) => members_of(st.as_ref()),
        Err(r) => return r,
    };
    let changed = names.iter().filter(|m| before.contains(m) != add).count();
    let intent = if add {
        Intent::SetUpdate {
            add: names,
            remove: Vec::new(),
        }
    } else {
        Intent::SetUpdate {
            add: Vec::new(),
            remove: names,
        }
    };
    match write(host, &t, intent).await {
        Ok(_) => Reply::Int(i64::try_from(changed).unwrap_or(i64::MAX)),
        Err(r) => r,
    }
}

fn smembers<H: Host>(host: &H, session: &Session, raw: &[u8]) -> Reply {
    let t = match target(host, session, raw, Right::Read, SET) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match read(host, &t) {
        Ok(st) => Reply::Set(
            members_of(st.as_ref())
                .into_iter()
                .map(|m| Reply::Bulk(m.into_bytes()))
                .collect(),
        ),
        Err(r) => r,
    }
}

fn sismember<H: Host>(host: &H, session: &Session, raw: &[u8], member: &[u8]) -> Reply {
    let t = match target(host, session, raw, Right::Read, SET) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match read(host, &t) {
        Ok(Some(KeyState::Set(s))) => Reply::Int(i64::from(
            std::str::from_utf8(member).is_ok_and(|m| s.contains(m)),
        )),
        Ok(_) => Reply::Int(0),
        Err(r) => r,
    }
}

fn scard<H: Host>(host: &H, session: &Session, raw: &[u8]) -> Reply {
    let t = match target(host, session, raw, Right::Read, SET) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match read(host, &t) {
        Ok(st) => Reply::Int(i64::try_from(members_of(st.as_ref()).len()).unwrap_or(i64::MAX)),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Reply) -> String {
        match r {
            Reply::Error(e) => e,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn refusals_of_a_region_that_does_not_take_the_write_read_as_a_redis_replicas() {
        let fenced = AtollError::Fenced {
            keyspace: "k".into(),
            detail: "d".into(),
        };
        for e in [fenced, AtollError::NotAVoter("a replica".into())] {
            let t = text(atoll_error(&e));
            assert!(t.starts_with(&format!("READONLY {} ", e.code())), "{t}");
        }
        let t = text(atoll_error(&AtollError::Joining("waiting".into())));
        assert!(t.starts_with("ERR ATOLL-JOINING "), "{t}");
    }
}
