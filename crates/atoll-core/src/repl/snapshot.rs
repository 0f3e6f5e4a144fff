//! The wire format of bootstrap by snapshot (`docs/design/oplog-truncation.md`): a region asks a
//! peer for one chunk at a time, each answered with the peer's applied vector (read before the
//! chunk's keys), the keys' states in key order, where the next chunk starts, and a checksum.

use crate::causal::VersionVector;
use crate::region::RegionId;
use serde::{Deserialize, Serialize};

/// `POST /v1/replication/snapshot`: "send me your state after this data key".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub from: RegionId,
    pub cluster: String,
    /// The last data key the requester loaded (`None`: from the start).
    pub after: Option<Vec<u8>>,
}

/// One chunk of a peer's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The donor's committed applied vector, read before the chunk's keys: every state in the
    /// chunk reflects at least this much.
    pub applied: VersionVector,
    /// `(data key, encoded key state)`, in key order.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the next chunk starts (exclusive); `None`: this is the last.
    pub next: Option<Vec<u8>>,
    /// CRC-32 of the rows, the applied vector and `next` ([`SnapshotChunk::checksum`]).
    pub crc32: u32,
}

impl SnapshotChunk {
    /// A chunk with its checksum filled in.
    pub fn new(
        applied: VersionVector,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        next: Option<Vec<u8>>,
    ) -> Self {
        let mut c = Self {
            applied,
            rows,
            next,
            crc32: 0,
        };
        c.crc32 = c.checksum();
        c
    }

    /// The checksum of the chunk's content (lengths included, so no two layouts collide).
    pub fn checksum(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for (r, n) in self.applied.iter() {
            h.update(&(r.as_str().len() as u64).to_le_bytes());
            h.update(r.as_str().as_bytes());
            h.update(&n.to_le_bytes());
        }
        h.update(&(self.rows.len() as u64).to_le_bytes());
        for (k, v) in &self.rows {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k);
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v);
        }
        match &self.next {
            Some(n) => {
                h.update(&[1]);
                h.update(n);
            }
            None => h.update(&[0]),
        }
        h.finalize()
    }

    /// Whether the content matches its checksum.
    pub fn verify(&self) -> bool {
        self.checksum() == self.crc32
    }

    /// Encoded size of the rows (for progress and throttling).
    pub fn row_bytes(&self) -> u64 {
        self.rows
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk() -> SnapshotChunk {
        let mut applied = VersionVector::new();
        applied.raise(&RegionId::new("us-east-1").unwrap(), 42);
        SnapshotChunk::new(
            applied,
            vec![
                (b"ks\0a".to_vec(), vec![1, 2, 3]),
                (b"ks\0b".to_vec(), vec![4]),
            ],
            Some(b"ks\0b".to_vec()),
        )
    }

    #[test]
    fn a_chunk_survives_encoding_and_verifies() {
        let c = chunk();
        let back: SnapshotChunk = crate::codec::decode(&crate::codec::encode(&c).unwrap()).unwrap();
        assert!(back.verify());
        assert_eq!(back, c);
    }

    proptest! {
        #[test]
        fn any_changed_byte_of_the_rows_fails_the_check(row in 0usize..2, at in 0usize..8, flip in 1u8..=255) {
            let mut c = chunk();
            let v = &mut c.rows[row].1;
            let i = at % v.len();
            v[i] ^= flip;
            prop_assert!(!c.verify());
        }
    }

    #[test]
    fn moving_a_byte_between_key_and_value_fails_the_check() {
        let mut c = chunk();
        let b = c.rows[0].1.remove(0);
        c.rows[0].0.push(b);
        assert!(!c.verify());
    }
}
