//! Replies, and their encoding in RESP2 or RESP3 by `redis-protocol`'s encoders.

use redis_protocol::resp2::types::{OwnedFrame as F2, Resp2Frame as _};
use redis_protocol::resp3::types::{OwnedFrame as F3, Resp3Frame as _};

/// One reply, in the terms of RESP3 (RESP2 gets the nearest shape: a set or map is an array,
/// null is the null bulk string).
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK` and other simple strings.
    Simple(String),
    /// `-PREFIX message`: the first word is the error's kind (`ERR`, `WRONGTYPE`, `NOAUTH`, ...).
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// A missing value (`$-1` in RESP2, `_` in RESP3).
    Null,
    Array(Vec<Reply>),
    /// An unordered collection (RESP3 `~`; an array in RESP2).
    Set(Vec<Reply>),
    /// Key-value pairs (RESP3 `%`; a flat array in RESP2).
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".to_string())
    }

    /// `-ERR message`.
    pub fn err(message: impl AsRef<str>) -> Reply {
        Reply::Error(format!("ERR {}", message.as_ref()))
    }

    pub fn bulk(text: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(text.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The reply as RESP `proto` (2 or 3) bytes, appended to `out`.
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        if proto >= 3 {
            let frame = self.to_resp3();
            let len = frame.encode_len(false);
            let start = out.len();
            out.resize(start + len, 0);
            match redis_protocol::resp3::encode::complete::encode(&mut out[start..], &frame, false)
            {
                Ok(n) => out.truncate(start + n),
                Err(e) => {
                    out.truncate(start);
                    tracing::error!(error = ?e, "cannot encode a RESP3 reply");
                    out.extend_from_slice(b"-ERR internal error: cannot encode the reply\r\n");
                }
            }
        } else {
            let frame = self.to_resp2();
            let len = frame.encode_len(false);
            let start = out.len();
            out.resize(start + len, 0);
            match redis_protocol::resp2::encode::encode(&mut out[start..], &frame, false) {
                Ok(n) => out.truncate(start + n),
                Err(e) => {
                    out.truncate(start);
                    tracing::error!(error = ?e, "cannot encode a RESP2 reply");
                    out.extend_from_slice(b"-ERR internal error: cannot encode the reply\r\n");
                }
            }
        }
    }

    fn to_resp2(&self) -> F2 {
        match self {
            Reply::Simple(s) => F2::SimpleString(line(s).into_bytes()),
            Reply::Error(s) => F2::Error(line(s)),
            Reply::Int(n) => F2::Integer(*n),
            Reply::Bulk(b) => F2::BulkString(b.clone()),
            Reply::Null => F2::Null,
            Reply::Array(items) | Reply::Set(items) => {
                F2::Array(items.iter().map(Reply::to_resp2).collect())
            }
            Reply::Map(pairs) => F2::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()])
                    .collect(),
            ),
        }
    }

    fn to_resp3(&self) -> F3 {
        match self {
            Reply::Simple(s) => F3::SimpleString {
                data: line(s).into_bytes(),
                attributes: None,
            },
            Reply::Error(s) => F3::SimpleError {
                data: line(s),
                attributes: None,
            },
            Reply::Int(n) => F3::Number {
                data: *n,
                attributes: None,
            },
            Reply::Bulk(b) => F3::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Reply::Null => F3::Null,
            Reply::Array(items) => F3::Array {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
            // Members and map keys are strings here (hashing an aggregate would panic in the
            // crate); anything else is sent as an array of pairs instead.
            Reply::Set(items) if items.iter().all(Reply::is_scalar) => F3::Set {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) if pairs.iter().all(|(k, _)| k.is_scalar()) => F3::Map {
                data: pairs
                    .iter()
                    .map(|(k, v)| (k.to_resp3(), v.to_resp3()))
                    .collect(),
                attributes: None,
            },
            Reply::Set(items) => F3::Array {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => F3::Array {
                data: pairs
                    .iter()
                    .flat_map(|(k, v)| [k.to_resp3(), v.to_resp3()])
                    .collect(),
                attributes: None,
            },
        }
    }

    fn is_scalar(&self) -> bool {
        matches!(
            self,
            Reply::Simple(_) | Reply::Bulk(_) | Reply::Int(_) | Reply::Null
        )
    }
}

/// A simple string or error is one line: CR and LF become spaces.
fn line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, proto: u8) -> String {
        let mut out = Vec::new();
        r.encode(proto, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn replies_in_both_protocols() {
        assert_eq!(enc(&Reply::ok(), 2), "+OK\r\n");
        assert_eq!(enc(&Reply::err("bad\r\nthing"), 2), "-ERR bad  thing\r\n");
        assert_eq!(enc(&Reply::Int(-3), 2), ":-3\r\n");
        assert_eq!(enc(&Reply::Int(-3), 3), ":-3\r\n");
        assert_eq!(enc(&Reply::Null, 2), "$-1\r\n");
        assert_eq!(enc(&Reply::Null, 3), "_\r\n");
        assert_eq!(enc(&Reply::bulk("v"), 2), "$1\r\nv\r\n");
        assert_eq!(
            enc(&Reply::Set(vec![Reply::bulk("a")]), 2),
            "*1\r\n$1\r\na\r\n"
        );
        assert_eq!(
            enc(&Reply::Set(vec![Reply::bulk("a")]), 3),
            "~1\r\n$1\r\na\r\n"
        );
        assert_eq!(
            enc(&Reply::Map(vec![(Reply::bulk("k"), Reply::Int(1))]), 2),
            "*2\r\n$1\r\nk\r\n:1\r\n"
        );
        assert_eq!(
            enc(&Reply::Map(vec![(Reply::bulk("k"), Reply::Int(1))]), 3),
            "%1\r\n$1\r\nk\r\n:1\r\n"
        );
    }
}
