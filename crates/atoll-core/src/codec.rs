//! Versioned encodings. Every persisted record and wire message starts with a little-endian
//! `u16` format version followed by a postcard body. A reader accepts every version up to
//! [`FORMAT_VERSION`] (each older version keeps a decode path here) and refuses newer ones with
//! [`AtollError::FormatTooNew`] instead of misreading them.

use crate::causal::CausalContext;
use crate::error::{AtollError, Result};
use base64::Engine as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The encoding version this build writes. Version 2 added the lease epoch to operation-log
/// entries ([`crate::op::OpEntry::epoch`]); version 3 added the expiry to lww registers
/// ([`crate::crdt::lww::LwwRegister::expires_ms`], `docs/design/expiring-keys.md`); version 4
/// added it to mvr siblings ([`crate::crdt::mvr::Sibling::expires_ms`]); version 5 added the
/// removed regions to heartbeats ([`crate::repl::Heartbeat::removed`],
/// `docs/design/region-removal.md`). Every other record reads the same in all five; records
/// that hold key states or heartbeats are read with [`decode_state`], [`decode_entry`],
/// [`decode_frame`] and [`decode_heartbeat`], which keep the older layouts' paths. [`decode`]
/// refuses older versions of those records, never misreads them: use these.
pub const FORMAT_VERSION: u16 = 5;

/// Encodes `value` with the current format version.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_extend(value, FORMAT_VERSION.to_le_bytes().to_vec())
        .map_err(|e| AtollError::Corrupt(format!("unencodable record: {e}")))
}

/// Reads the version prefix of an encoded record.
pub fn version_of(bytes: &[u8]) -> Result<u16> {
    match bytes {
        [a, b, ..] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(AtollError::Corrupt(format!(
            "record of {} bytes is too short to carry a version",
            bytes.len()
        ))),
    }
}

/// Decodes a record written by [`encode`] at this or an older format version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let version = version_of(bytes)?;
    match version {
        0 => Err(AtollError::Corrupt("record has format version 0".into())),
        1..=5 => postcard::from_bytes(&bytes[2..])
            .map_err(|e| AtollError::Corrupt(format!("undecodable v{version} record: {e}"))),
        found => Err(AtollError::FormatTooNew {
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

/// Decodes a key state of any supported version (versions 1 and 2 had no lww expiry, 1 to 3
/// no mvr expiry: `None`).
pub fn decode_state(bytes: &[u8]) -> Result<crate::op::KeyState> {
    match version_of(bytes)? {
        v @ (1 | 2) => postcard::from_bytes::<crate::op::KeyStateV2>(&bytes[2..])
            .map(Into::into)
            .map_err(|e| AtollError::Corrupt(format!("undecodable v{v} key state: {e}"))),
        3 => postcard::from_bytes::<crate::op::KeyStateV3>(&bytes[2..])
            .map(Into::into)
            .map_err(|e| AtollError::Corrupt(format!("undecodable v3 key state: {e}"))),
        _ => decode(bytes),
    }
}

/// Decodes an operation-log entry of any supported version (version 1 had no epoch: 0;
/// versions 1 and 2 had no lww expiry, 1 to 3 no mvr expiry).
pub fn decode_entry(bytes: &[u8]) -> Result<crate::op::OpEntry> {
    match version_of(bytes)? {
        1 => postcard::from_bytes::<crate::op::OpEntryV1>(&bytes[2..])
            .map(Into::into)
            .map_err(|e| AtollError::Corrupt(format!("undecodable v1 log entry: {e}"))),
        2 => postcard::from_bytes::<crate::op::OpEntryV2>(&bytes[2..])
            .map(Into::into)
            .map_err(|e| AtollError::Corrupt(format!("undecodable v2 log entry: {e}"))),
        3 => postcard::from_bytes::<crate::op::OpEntryV3>(&bytes[2..])
            .map(Into::into)
            .map_err(|e| AtollError::Corrupt(format!("undecodable v3 log entry: {e}"))),
        _ => decode(bytes),
    }
}

/// Decodes a heartbeat of any supported version (versions 1 to 4 had no removals: none).
pub fn decode_heartbeat(bytes: &[u8]) -> Result<crate::repl::Heartbeat> {
    match version_of(bytes)? {
        v @ 1..=4 => postcard::from_bytes::<crate::repl::HeartbeatV4>(&bytes[2..])
            .map(Into::into)
            .map_err(|e| AtollError::Corrupt(format!("undecodable v{v} heartbeat: {e}"))),
        _ => decode(bytes),
    }
}

/// A replication stream frame as version 1 wrote it.
#[derive(serde::Deserialize)]
enum FrameV1 {
    Ops(Vec<crate::op::OpEntryV1>),
    Heartbeat(crate::repl::HeartbeatV4),
}

/// A replication stream frame as versions 2 to 4 wrote it, with that version's log entries
/// (and heartbeats without removals).
#[derive(serde::Deserialize)]
enum FrameOf<E> {
    Ops(Vec<E>),
    Heartbeat(crate::repl::HeartbeatV4),
    Truncated { origin: crate::RegionId, first: u64 },
}

/// Decodes the body of a frame of version `v` (2 to 4) with entries of layout `E`.
fn decode_frame_of<E>(v: u16, body: &[u8]) -> Result<crate::repl::Frame>
where
    E: serde::de::DeserializeOwned + Into<crate::op::OpEntry>,
{
    use crate::repl::Frame;
    match postcard::from_bytes::<FrameOf<E>>(body) {
        Ok(FrameOf::Ops(ops)) => Ok(Frame::Ops(ops.into_iter().map(Into::into).collect())),
        Ok(FrameOf::Heartbeat(h)) => Ok(Frame::Heartbeat(h.into())),
        Ok(FrameOf::Truncated { origin, first }) => Ok(Frame::Truncated { origin, first }),
        Err(e) => Err(AtollError::Corrupt(format!("undecodable v{v} frame: {e}"))),
    }
}

/// Decodes a replication stream frame of any supported version.
pub fn decode_frame(bytes: &[u8]) -> Result<crate::repl::Frame> {
    use crate::repl::Frame;
    match version_of(bytes)? {
        1 => match postcard::from_bytes::<FrameV1>(&bytes[2..]) {
            Ok(FrameV1::Ops(v)) => Ok(Frame::Ops(v.into_iter().map(Into::into).collect())),
            Ok(FrameV1::Heartbeat(h)) => Ok(Frame::Heartbeat(h.into())),
            Err(e) => Err(AtollError::Corrupt(format!("undecodable v1 frame: {e}"))),
        },
        2 => decode_frame_of::<crate::op::OpEntryV2>(2, &bytes[2..]),
        3 => decode_frame_of::<crate::op::OpEntryV3>(3, &bytes[2..]),
        4 => decode_frame_of::<crate::op::OpEntry>(4, &bytes[2..]),
        _ => decode(bytes),
    }
}

const TOKEN_VERSION: u8 = 1;

fn fingerprint(keyspace: &str, key: &[u8]) -> u64 {
    // FNV-1a over keyspace, a separator and key: binds a context token to the key it was read from.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in keyspace.as_bytes().iter().chain(&[0xff]).chain(key) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Encodes the causal context returned with a read of `keyspace/key` as an opaque header token:
/// base64url of `[version u8][crc32 u32][key fingerprint u64][postcard context]`.
pub fn encode_context_token(keyspace: &str, key: &[u8], ctx: &CausalContext) -> Result<String> {
    let body = postcard::to_extend(ctx, fingerprint(keyspace, key).to_le_bytes().to_vec())
        .map_err(|e| AtollError::Corrupt(format!("unencodable context: {e}")))?;
    let crc = crc32fast::hash(&body);
    let mut out = vec![TOKEN_VERSION];
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
}

/// Decodes a token from [`encode_context_token`]; garbled tokens, tokens of another key and
/// tokens of an unknown version are [`AtollError::BadContext`].
pub fn decode_context_token(token: &str, keyspace: &str, key: &[u8]) -> Result<CausalContext> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| AtollError::BadContext("not base64url".into()))?;
    if raw.len() < 13 {
        return Err(AtollError::BadContext("token too short".into()));
    }
    if raw[0] != TOKEN_VERSION {
        return Err(AtollError::BadContext(format!(
            "token version {} is not supported (expected {TOKEN_VERSION})",
            raw[0]
        )));
    }
    let crc = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let body = &raw[5..];
    if crc32fast::hash(body) != crc {
        return Err(AtollError::BadContext(
            "checksum mismatch (garbled token)".into(),
        ));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&body[..8]);
    if u64::from_le_bytes(fp) != fingerprint(keyspace, key) {
        return Err(AtollError::BadContext(
            "token was issued for a different key".into(),
        ));
    }
    postcard::from_bytes(&body[8..]).map_err(|_| AtollError::BadContext("undecodable token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::Dot;
    use crate::region::RegionId;

    /// A heartbeat of format version 4 (no removals) still decodes, alone and in a frame, and
    /// one of version 5 keeps its removals.
    #[test]
    fn heartbeats_of_version_4_decode_without_removals() {
        use crate::repl::{Frame, Heartbeat, OriginFrontier};
        use std::collections::{BTreeMap, BTreeSet};
        #[derive(serde::Serialize)]
        struct HeartbeatV4Out {
            from: RegionId,
            sent_ms: u64,
            hlc: crate::hlc::Timestamp,
            echo: Option<crate::repl::Echo>,
            frontier: BTreeMap<RegionId, OriginFrontier>,
            stable_age_ms: Option<u64>,
        }
        #[derive(serde::Serialize)]
        enum FrameV4Out {
            #[allow(dead_code)]
            Ops(Vec<crate::op::OpEntry>),
            Heartbeat(HeartbeatV4Out),
        }
        let a = RegionId::new("a").unwrap();
        let frontier: BTreeMap<RegionId, OriginFrontier> = [(
            a.clone(),
            OriginFrontier {
                applied: 7,
                caught_up_at_origin_ms: Some(9),
            },
        )]
        .into();
        let old = || HeartbeatV4Out {
            from: a.clone(),
            sent_ms: 5,
            hlc: crate::hlc::Timestamp::new(6, 0),
            echo: None,
            frontier: frontier.clone(),
            stable_age_ms: Some(3),
        };
        let v4 = |body: Vec<u8>| [4u16.to_le_bytes().to_vec(), body].concat();
        let hb = decode_heartbeat(&v4(postcard::to_allocvec(&old()).unwrap())).unwrap();
        assert_eq!(
            (hb.from.clone(), hb.sent_ms, hb.stable_age_ms),
            (a.clone(), 5, Some(3))
        );
        assert_eq!(hb.frontier, frontier);
        assert!(hb.removed.is_empty());
        let frame = v4(postcard::to_allocvec(&FrameV4Out::Heartbeat(old())).unwrap());
        assert_eq!(decode_frame(&frame).unwrap(), Frame::Heartbeat(hb.clone()));

        let new = Heartbeat {
            removed: BTreeSet::from([RegionId::new("gone").unwrap()]),
            ..hb
        };
        let bytes = encode(&new).unwrap();
        assert_eq!(version_of(&bytes).unwrap(), 5);
        assert_eq!(decode_heartbeat(&bytes).unwrap(), new);
        let frame = encode(&Frame::Heartbeat(new.clone())).unwrap();
        assert_eq!(decode_frame(&frame).unwrap(), Frame::Heartbeat(new));
    }

    #[test]
    fn roundtrip_and_version_checks() {
        let v: Vec<u32> = vec![1, 2, 3];
        let enc = encode(&v).unwrap();
        assert_eq!(version_of(&enc).unwrap(), FORMAT_VERSION);
        assert_eq!(decode::<Vec<u32>>(&enc).unwrap(), v);
        let mut newer = enc.clone();
        newer[0] = 9;
        assert!(matches!(
            decode::<Vec<u32>>(&newer),
            Err(AtollError::FormatTooNew { found: 9, .. })
        ));
        assert!(matches!(
            decode::<Vec<u32>>(&[1]),
            Err(AtollError::Corrupt(_))
        ));
    }

    #[test]
    fn context_token_roundtrip_and_rejections() {
        let mut ctx = CausalContext::default();
        ctx.insert(Dot::new(RegionId::new("us-east-1").unwrap(), 3));
        let t = encode_context_token("carts", b"k", &ctx).unwrap();
        assert_eq!(decode_context_token(&t, "carts", b"k").unwrap(), ctx);
        assert!(decode_context_token(&t, "carts", b"other").is_err());
        assert!(decode_context_token(&t, "sessions", b"k").is_err());
        assert!(decode_context_token("!!!", "carts", b"k").is_err());
        let mut garbled = t.into_bytes();
        let last = garbled.len() - 2;
        garbled[last] = if garbled[last] == b'A' { b'B' } else { b'A' };
        let garbled = String::from_utf8(garbled).unwrap();
        assert!(decode_context_token(&garbled, "carts", b"k").is_err());
    }
}
