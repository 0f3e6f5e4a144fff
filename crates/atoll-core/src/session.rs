//! Read consistency a client chooses per request (`docs/design/session-consistency.md`): session
//! tokens that name what a client has seen, and what a region decides about a read that presents
//! one.
//!
//! A [`SessionToken`] is a version vector: per origin region, the highest sequence number of that
//! origin's writes the client wrote or saw. A write answers with the presented token raised by
//! the write's own `(region, seq)`; a read answers with the presented token merged with the
//! serving region's applied vector (everything the read may have reflected). A region serves a
//! read that presents a token only once its applied vector dominates it ([`check`]), which gives
//! read-your-writes, monotonic reads, and writes-follow-reads for the reads a client makes after
//! them, whichever region serves them.
//!
//! Tokens are not secret and not signed: a token is a client's claim about what it has seen,
//! never a region speaking. What a forged token can do is bounded: it is refused at once when it
//! names an unknown region, another cluster, or more of the serving region's own writes than it
//! ever made; and a claim about a peer's writes that the peer provably never made (its heartbeat,
//! sent after the read arrived, reports a lower head) is refused as soon as that heartbeat is in.
//! Anything else waits at most the read's bound and is answered `ATOLL-STALE`.

use crate::causal::VersionVector;
use crate::error::{AtollError, Result};
use crate::region::RegionId;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Version of the token encoding (the first byte of the decoded token).
pub const SESSION_TOKEN_VERSION: u8 = 1;

/// Longest token accepted, in characters (a cluster of [`SESSION_TOKEN_MAX_REGIONS`] regions with
/// long names stays far below).
pub const SESSION_TOKEN_MAX_CHARS: usize = 8192;

/// Most regions one token may name.
pub const SESSION_TOKEN_MAX_REGIONS: usize = 256;

/// The encoded body: the cluster's fingerprint and the vector as `(region, seq)` pairs, in region
/// order.
#[derive(Serialize, Deserialize)]
struct WireToken {
    cluster: u32,
    seen: Vec<(String, u64)>,
}

/// What a client has seen: per origin region, the highest sequence number of its writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionToken {
    seen: VersionVector,
}

/// The fingerprint binding a token to its cluster (a mistake detector, not a secret).
pub fn cluster_fingerprint(cluster: &str) -> u32 {
    crc32fast::hash(cluster.as_bytes())
}

impl SessionToken {
    /// A token naming nothing (a new session).
    pub fn new() -> Self {
        Self::default()
    }

    /// A token naming exactly `seen`.
    pub fn from_vector(seen: VersionVector) -> Self {
        Self { seen }
    }

    /// What the token names.
    pub fn seen(&self) -> &VersionVector {
        &self.seen
    }

    /// Whether the token names nothing.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Adds what `other` names (tokens of several writes merge).
    pub fn merge(&mut self, other: &SessionToken) {
        self.seen.merge(&other.seen);
    }

    /// Adds everything in `applied` (a read's answer: what the serving region had applied).
    pub fn merge_vector(&mut self, applied: &VersionVector) {
        self.seen.merge(applied);
    }

    /// Adds one write of `region` with sequence number `seq`.
    pub fn observe(&mut self, region: &RegionId, seq: u64) {
        self.seen.raise(region, seq);
    }

    /// The header form: base64url (no padding) of `[version u8][crc32 u32][postcard body]`.
    pub fn encode(&self, cluster: &str) -> String {
        let wire = WireToken {
            cluster: cluster_fingerprint(cluster),
            seen: self
                .seen
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
        };
        // A Vec of strings and integers always encodes.
        let body = postcard::to_allocvec(&wire).unwrap_or_default();
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(SESSION_TOKEN_VERSION);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// Reads a token from its header form. Garbled tokens, tokens of another version or of another
    /// cluster, and tokens naming a region `is_region` does not know are
    /// [`AtollError::BadSessionToken`]. An empty string is a new session.
    pub fn decode(
        text: &str,
        cluster: &str,
        is_region: impl Fn(&RegionId) -> bool,
    ) -> Result<Self> {
        let bad = |why: String| AtollError::BadSessionToken(why);
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::new());
        }
        if text.len() > SESSION_TOKEN_MAX_CHARS {
            return Err(bad(format!(
                "token is {} characters, over the limit of {SESSION_TOKEN_MAX_CHARS}",
                text.len()
            )));
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad("not base64url".into()))?;
        let (version, rest) = raw
            .split_first()
            .ok_or_else(|| bad("token too short".into()))?;
        if *version != SESSION_TOKEN_VERSION {
            return Err(bad(format!(
                "token version {version} is not supported (this build reads version {SESSION_TOKEN_VERSION})"
            )));
        }
        if rest.len() < 4 {
            return Err(bad("token too short".into()));
        }
        let (crc, body) = rest.split_at(4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != crc {
            return Err(bad("checksum mismatch (garbled token)".into()));
        }
        let wire: WireToken =
            postcard::from_bytes(body).map_err(|_| bad("undecodable token".into()))?;
        if wire.cluster != cluster_fingerprint(cluster) {
            return Err(bad(format!(
                "the token was issued by another cluster (this is cluster `{cluster}`)"
            )));
        }
        if wire.seen.len() > SESSION_TOKEN_MAX_REGIONS {
            return Err(bad(format!(
                "token names {} regions, over the limit of {SESSION_TOKEN_MAX_REGIONS}",
                wire.seen.len()
            )));
        }
        let mut seen = VersionVector::new();
        for (name, seq) in wire.seen {
            let region = RegionId::new(&name)
                .map_err(|_| bad(format!("token names `{name}`, which is not a region name")))?;
            if !is_region(&region) {
                return Err(bad(format!(
                    "token names region `{region}`, which is not a region of this cluster"
                )));
            }
            if seen.get(&region) > 0 {
                return Err(bad(format!("token names region `{region}` twice")));
            }
            seen.raise(&region, seq);
        }
        Ok(Self { seen })
    }
}

/// What a region knows of one peer, for [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSession {
    pub region: RegionId,
    /// The peer's applied vector as of its latest heartbeat.
    pub applied: VersionVector,
    /// The highest head (sequence number of its own writes) any heartbeat of the peer reported.
    pub head_max: u64,
    /// Whether a heartbeat of the peer sent after the read arrived is in (it echoed a heartbeat
    /// this region sent after that), so `head_max` covers every write the peer made before the
    /// client could have sent the read.
    pub heard_since: bool,
}

/// How far behind the token this region is for one origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behind {
    pub origin: RegionId,
    /// What this region has applied of the origin.
    pub applied: u64,
    /// What the token names.
    pub wanted: u64,
}

/// The decision about a read that presents a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCheck {
    /// This region has applied everything the token names: serve.
    Satisfied,
    /// Not yet: wait (within the read's bound), or refuse with `ATOLL-STALE` naming the regions
    /// known to have it (`holders`: peers whose latest heartbeat's applied vector dominates the
    /// token), or forward the read to one of them.
    Behind {
        behind: Vec<Behind>,
        holders: Vec<RegionId>,
    },
    /// The token names writes that no region of this cluster made: `origin`'s head is provably
    /// below `claimed`. Refused as a bad token; waiting would change nothing.
    Impossible {
        origin: RegionId,
        claimed: u64,
        head: u64,
    },
}

/// Decides a read that presents `token` at region `me`, whose committed applied vector (its own
/// head included) is `applied` and which has handed out sequence numbers up to `issued` (its
/// committed head, or beyond while a batch commits: a read's token may name that batch already),
/// knowing `peers`.
pub fn check(
    token: &SessionToken,
    me: &RegionId,
    applied: &VersionVector,
    issued: u64,
    peers: &[PeerSession],
) -> SessionCheck {
    let mut behind = Vec::new();
    for (origin, wanted) in token.seen.iter() {
        let have = applied.get(origin);
        if have >= wanted {
            continue;
        }
        // This region is the authority on its own writes: a claim beyond what it ever handed out
        // is no write.
        if origin == me && wanted > issued.max(have) {
            return SessionCheck::Impossible {
                origin: origin.clone(),
                claimed: wanted,
                head: issued.max(have),
            };
        }
        if let Some(p) = peers.iter().find(|p| &p.region == origin)
            && p.heard_since
            && p.head_max < wanted
        {
            return SessionCheck::Impossible {
                origin: origin.clone(),
                claimed: wanted,
                head: p.head_max,
            };
        }
        behind.push(Behind {
            origin: origin.clone(),
            applied: have,
            wanted,
        });
    }
    if behind.is_empty() {
        return SessionCheck::Satisfied;
    }
    let holders = peers
        .iter()
        .filter(|p| p.applied.dominates(&token.seen))
        .map(|p| p.region.clone())
        .collect();
    SessionCheck::Behind { behind, holders }
}

/// Bounded staleness: whether a region whose staleness bound (how long ago it last held every
/// origin's writes, `None` if it never did) is `staleness_ms` may answer a read that accepts at
/// most `max_ms`.
pub fn within_staleness(staleness_ms: Option<u64>, max_ms: u64) -> bool {
    staleness_ms.is_some_and(|s| s <= max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        pairs.iter().map(|(n, s)| (r(n), *s)).collect()
    }

    fn known(region: &RegionId) -> bool {
        ["us-east-1", "eu-west-1", "ap-southeast-1"].contains(&region.as_str())
    }

    #[test]
    fn roundtrip_and_rejections() {
        let t = SessionToken::from_vector(vv(&[("us-east-1", 41), ("eu-west-1", 7)]));
        let text = t.encode("prod");
        assert_eq!(SessionToken::decode(&text, "prod", known).unwrap(), t);
        assert_eq!(
            SessionToken::decode("", "prod", known).unwrap(),
            SessionToken::new()
        );
        let err = |text: &str, cluster: &str| {
            let e = SessionToken::decode(text, cluster, known).unwrap_err();
            assert_eq!(e.code(), "ATOLL-BAD-SESSION-TOKEN", "{e}");
            assert_eq!(e.http_status(), 400);
            e.to_string()
        };
        assert!(err(&text, "staging").contains("another cluster"));
        assert!(err("!!!", "prod").contains("base64"));
        let mut garbled = text.clone().into_bytes();
        let last = garbled.len() - 2;
        garbled[last] = if garbled[last] == b'A' { b'B' } else { b'A' };
        assert!(err(&String::from_utf8(garbled).unwrap(), "prod").contains("garbled"));
        let foreign = SessionToken::from_vector(vv(&[("mars-1", 3)])).encode("prod");
        assert!(err(&foreign, "prod").contains("mars-1"));
        assert!(err(&"A".repeat(SESSION_TOKEN_MAX_CHARS + 1), "prod").contains("limit"));
        // Another version.
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text)
            .unwrap();
        raw[0] = 9;
        let v9 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert!(err(&v9, "prod").contains("version 9"));
    }

    #[test]
    fn merge_and_observe() {
        let mut a = SessionToken::from_vector(vv(&[("us-east-1", 4)]));
        a.merge(&SessionToken::from_vector(vv(&[
            ("us-east-1", 2),
            ("eu-west-1", 9),
        ])));
        a.observe(&r("us-east-1"), 5);
        assert_eq!(a.seen(), &vv(&[("us-east-1", 5), ("eu-west-1", 9)]));
    }

    fn peer(name: &str, applied: &[(&str, u64)], head_max: u64, heard_since: bool) -> PeerSession {
        PeerSession {
            region: r(name),
            applied: vv(applied),
            head_max,
            heard_since,
        }
    }

    #[test]
    fn decisions() {
        let me = r("eu-west-1");
        let applied = vv(&[("eu-west-1", 10), ("us-east-1", 40)]);
        let peers = vec![
            peer(
                "us-east-1",
                &[("us-east-1", 45), ("eu-west-1", 10)],
                45,
                false,
            ),
            peer("ap-southeast-1", &[("us-east-1", 30)], 0, true),
        ];
        let t = |p: &[(&str, u64)]| SessionToken::from_vector(vv(p));
        assert_eq!(
            check(&t(&[("us-east-1", 40)]), &me, &applied, 10, &peers),
            SessionCheck::Satisfied
        );
        assert_eq!(
            check(&t(&[]), &me, &applied, 10, &peers),
            SessionCheck::Satisfied
        );
        assert_eq!(
            check(&t(&[("us-east-1", 43)]), &me, &applied, 10, &peers),
            SessionCheck::Behind {
                behind: vec![Behind {
                    origin: r("us-east-1"),
                    applied: 40,
                    wanted: 43
                }],
                holders: vec![r("us-east-1")],
            }
        );
        // Beyond our own head: no such write; within a batch still committing: wait for it.
        assert!(matches!(
            check(&t(&[("eu-west-1", 11)]), &me, &applied, 10, &peers),
            SessionCheck::Impossible { .. }
        ));
        assert!(matches!(
            check(&t(&[("eu-west-1", 11)]), &me, &applied, 12, &peers),
            SessionCheck::Behind { .. }
        ));
        // Beyond a peer's head, but no heartbeat since the read arrived: it may be new.
        assert!(matches!(
            check(&t(&[("us-east-1", 1000)]), &me, &applied, 10, &peers),
            SessionCheck::Behind { ref holders, .. } if holders.is_empty()
        ));
        // Beyond a peer's head as a heartbeat sent after the read arrived reports it.
        assert_eq!(
            check(&t(&[("ap-southeast-1", 3)]), &me, &applied, 10, &peers),
            SessionCheck::Impossible {
                origin: r("ap-southeast-1"),
                claimed: 3,
                head: 0
            }
        );
    }

    #[test]
    fn staleness_bound() {
        assert!(within_staleness(Some(200), 2000));
        assert!(within_staleness(Some(2000), 2000));
        assert!(!within_staleness(Some(2001), 2000));
        assert!(!within_staleness(None, 2000));
    }

    fn arb_vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::btree_map(
            prop_oneof![Just("us-east-1"), Just("eu-west-1"), Just("ap-southeast-1")],
            0u64..1000,
            0..3,
        )
        .prop_map(|m| m.into_iter().map(|(k, v)| (r(k), v)).collect())
    }

    proptest! {
        /// Any token survives its encoding; garbling one byte never decodes to another token.
        #[test]
        fn encoding_roundtrips(v in arb_vector(), flip in 0usize..64) {
            let t = SessionToken::from_vector(v);
            let text = t.encode("c");
            prop_assert_eq!(SessionToken::decode(&text, "c", known).unwrap(), t.clone());
            let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&text).unwrap();
            let i = flip % raw.len();
            raw[i] ^= 0x40;
            let garbled = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            prop_assert!(SessionToken::decode(&garbled, "c", known).is_err());
        }

        /// A region serves exactly the tokens its applied vector dominates, and never calls a
        /// token it serves impossible.
        #[test]
        fn satisfied_iff_dominated(applied in arb_vector(), seen in arb_vector()) {
            let token = SessionToken::from_vector(seen.clone());
            let issued = applied.get(&r("eu-west-1"));
            let got = check(&token, &r("eu-west-1"), &applied, issued, &[]);
            prop_assert_eq!(got == SessionCheck::Satisfied, applied.dominates(&seen));
        }

        /// Merging is what a client does with several tokens: the merge is served exactly where
        /// both are.
        #[test]
        fn merge_is_the_join(a in arb_vector(), b in arb_vector(), applied in arb_vector()) {
            let mut m = SessionToken::from_vector(a.clone());
            m.merge(&SessionToken::from_vector(b.clone()));
            prop_assert_eq!(
                applied.dominates(m.seen()),
                applied.dominates(&a) && applied.dominates(&b)
            );
        }
    }
}
