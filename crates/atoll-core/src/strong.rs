//! The state machine of strong keyspaces (`docs/design/strong-keyspaces.md`): linearizable
//! registers with compare-and-set by revision, replicated by the strong group (openraft, in
//! `atoll-control`). Pure and deterministic: every member applies the same commands in the same
//! order and reaches the same state; no clock, no I/O.
//!
//! One register per `(keyspace, key)`: its value, its `revision` (the global revision at which it
//! was last written) and its `create_revision`. The global revision starts at 0 and grows by one
//! with every applied [`Command::Put`] and every [`Command::Delete`] of a key that exists. A key
//! that does not exist has revision 0, so `if_revision: Some(0)` means "only if it does not
//! exist" (booking a seat).
//!
//! Commands, answers and snapshots are postcard with a leading format-version byte
//! ([`STRONG_FORMAT_VERSION`]); decoding returns an error, never panics.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Format version of commands, answers and snapshots (the first byte of each encoding).
pub const STRONG_FORMAT_VERSION: u8 = 1;

/// One register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub value: Vec<u8>,
    /// Global revision of the write that set `value`.
    pub revision: u64,
    /// Global revision of the write that created the key (since it last did not exist).
    pub create_revision: u64,
}

/// A command of the strong group's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the value. With `if_revision`, only if the key is at that revision (0: absent).
    Put {
        keyspace: String,
        key: Vec<u8>,
        value: Vec<u8>,
        if_revision: Option<u64>,
    },
    /// Removes the key. With `if_revision`, only if the key is at that revision (0: absent,
    /// which deletes nothing and is answered [`Answer::Absent`]).
    Delete {
        keyspace: String,
        key: Vec<u8>,
        if_revision: Option<u64>,
    },
}

impl Command {
    pub fn keyspace(&self) -> &str {
        match self {
            Command::Put { keyspace, .. } | Command::Delete { keyspace, .. } => keyspace,
        }
    }
}

/// What the proposer of a command gets back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// A put was applied: the key is now at `revision`.
    Written { revision: u64, create_revision: u64 },
    /// A delete removed the key; `revision` is the global revision of the removal.
    Deleted { revision: u64 },
    /// A delete found no key (nothing changed, no revision used).
    Absent,
    /// `if_revision` did not match: nothing changed; the key is at `current` (0: absent).
    RevisionMismatch { current: u64 },
    /// The command did not decode (every member refuses it alike; nothing changed).
    Malformed,
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongState {
    /// The last global revision used (0: nothing written yet).
    pub revision: u64,
    /// keyspace -> key -> register. Only existing keys are held.
    pub keyspaces: BTreeMap<String, BTreeMap<Vec<u8>, Register>>,
}

impl StrongState {
    /// The register of `(keyspace, key)`, if the key exists.
    pub fn get(&self, keyspace: &str, key: &[u8]) -> Option<&Register> {
        self.keyspaces.get(keyspace).and_then(|m| m.get(key))
    }

    /// The revision of `(keyspace, key)`: 0 if it does not exist.
    pub fn revision_of(&self, keyspace: &str, key: &[u8]) -> u64 {
        self.get(keyspace, key).map_or(0, |r| r.revision)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keyspaces.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one command at its position in the log.
    pub fn apply(&mut self, cmd: &Command) -> Answer {
        match cmd {
            Command::Put {
                keyspace,
                key,
                value,
                if_revision,
            } => {
                let current = self.revision_of(keyspace, key);
                if let Some(expected) = if_revision
                    && *expected != current
                {
                    return Answer::RevisionMismatch { current };
                }
                self.revision += 1;
                let revision = self.revision;
                let create_revision = self
                    .get(keyspace, key)
                    .map_or(revision, |r| r.create_revision);
                self.keyspaces.entry(keyspace.clone()).or_default().insert(
                    key.clone(),
                    Register {
                        value: value.clone(),
                        revision,
                        create_revision,
                    },
                );
                Answer::Written {
                    revision,
                    create_revision,
                }
            }
            Command::Delete {
                keyspace,
                key,
                if_revision,
            } => {
                let current = self.revision_of(keyspace, key);
                if let Some(expected) = if_revision
                    && *expected != current
                {
                    return Answer::RevisionMismatch { current };
                }
                if current == 0 {
                    return Answer::Absent;
                }
                self.revision += 1;
                if let Some(m) = self.keyspaces.get_mut(keyspace.as_str()) {
                    m.remove(key.as_slice());
                    if m.is_empty() {
                        self.keyspaces.remove(keyspace.as_str());
                    }
                }
                Answer::Deleted {
                    revision: self.revision,
                }
            }
        }
    }

    /// Applies an encoded command; a command that does not decode is answered
    /// [`Answer::Malformed`] and changes nothing (the same on every member).
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> Answer {
        match decode_command(bytes) {
            Ok(cmd) => self.apply(&cmd),
            Err(_) => Answer::Malformed,
        }
    }
}

fn encode<T: Serialize>(what: &str, v: &T) -> crate::Result<Vec<u8>> {
    let mut out = vec![STRONG_FORMAT_VERSION];
    let body = postcard::to_allocvec(v)
        .map_err(|e| crate::AtollError::Corrupt(format!("cannot encode {what}: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> crate::Result<T> {
    match bytes.split_first() {
        None => Err(crate::AtollError::Corrupt(format!("empty {what}"))),
        Some((&STRONG_FORMAT_VERSION, body)) => {
            let (v, rest) = postcard::take_from_bytes(body)
                .map_err(|e| crate::AtollError::Corrupt(format!("malformed {what}: {e}")))?;
            if !rest.is_empty() {
                return Err(crate::AtollError::Corrupt(format!(
                    "malformed {what}: {} trailing bytes",
                    rest.len()
                )));
            }
            Ok(v)
        }
        Some((v, _)) => Err(crate::AtollError::FormatTooNew {
            found: u16::from(*v),
            supported: u16::from(STRONG_FORMAT_VERSION),
        }),
    }
}

/// Encodes a command for the strong group's log.
pub fn encode_command(cmd: &Command) -> crate::Result<Vec<u8>> {
    encode("strong command", cmd)
}
/// Decodes a command; a wrong version or malformed bytes is an error, never a panic.
pub fn decode_command(bytes: &[u8]) -> crate::Result<Command> {
    decode("strong command", bytes)
}
/// Encodes an answer.
pub fn encode_answer(a: &Answer) -> crate::Result<Vec<u8>> {
    encode("strong answer", a)
}
/// Decodes an answer.
pub fn decode_answer(bytes: &[u8]) -> crate::Result<Answer> {
    decode("strong answer", bytes)
}
/// Encodes the whole state (snapshots).
pub fn encode_state(s: &StrongState) -> crate::Result<Vec<u8>> {
    encode("strong state", s)
}
/// Decodes the whole state.
pub fn decode_state(bytes: &[u8]) -> crate::Result<StrongState> {
    decode("strong state", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, if_revision: Option<u64>) -> Command {
        Command::Put {
            keyspace: "seats".into(),
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            if_revision,
        }
    }

    fn del(key: &str, if_revision: Option<u64>) -> Command {
        Command::Delete {
            keyspace: "seats".into(),
            key: key.as_bytes().to_vec(),
            if_revision,
        }
    }

    #[test]
    fn revisions_grow_and_cas_checks_them() {
        let mut s = StrongState::default();
        assert_eq!(
            s.apply(&put("a", "x", Some(0))),
            Answer::Written {
                revision: 1,
                create_revision: 1
            }
        );
        assert_eq!(
            s.apply(&put("a", "y", Some(0))),
            Answer::RevisionMismatch { current: 1 }
        );
        assert_eq!(
            s.apply(&put("b", "z", None)),
            Answer::Written {
                revision: 2,
                create_revision: 2
            }
        );
        assert_eq!(
            s.apply(&put("a", "y", Some(1))),
            Answer::Written {
                revision: 3,
                create_revision: 1
            }
        );
        assert_eq!(
            s.get("seats", b"a").map(|r| r.value.clone()),
            Some(b"y".to_vec())
        );
        assert_eq!(
            s.apply(&del("a", Some(1))),
            Answer::RevisionMismatch { current: 3 }
        );
        assert_eq!(s.apply(&del("a", Some(3))), Answer::Deleted { revision: 4 });
        assert_eq!(s.revision_of("seats", b"a"), 0);
        assert_eq!(s.apply(&del("a", None)), Answer::Absent);
        assert_eq!(s.apply(&del("a", Some(0))), Answer::Absent);
        assert_eq!(s.revision, 4);
        // Re-created: a new create revision.
        assert_eq!(
            s.apply(&put("a", "w", Some(0))),
            Answer::Written {
                revision: 5,
                create_revision: 5
            }
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn encodings_round_trip_and_refuse_garbage() {
        let mut s = StrongState::default();
        s.apply(&put("a", "x", None));
        s.apply(&put("b", "y", None));
        let snap = encode_state(&s).unwrap();
        assert_eq!(decode_state(&snap).unwrap(), s);
        let c = put("a", "x", Some(7));
        assert_eq!(decode_command(&encode_command(&c).unwrap()).unwrap(), c);
        let a = Answer::RevisionMismatch { current: 9 };
        assert_eq!(decode_answer(&encode_answer(&a).unwrap()).unwrap(), a);
        assert!(decode_command(&[]).is_err());
        assert!(matches!(
            decode_command(&[2, 0]),
            Err(crate::AtollError::FormatTooNew { found: 2, .. })
        ));
        let mut trailing = encode_command(&c).unwrap();
        trailing.push(0);
        assert!(decode_command(&trailing).is_err());
        let before = s.clone();
        assert_eq!(s.apply_bytes(&[1, 200, 200, 200]), Answer::Malformed);
        assert_eq!(s, before);
    }
}
