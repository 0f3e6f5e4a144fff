//! Key layout in the backend's tables. Keyspace and region names never contain `0x00`, so it
//! separates the parts; sequence numbers and times are big-endian so that byte order is numeric
//! order.

use atoll_core::RegionId;
use atoll_core::hlc::Timestamp;

/// `keyspace 0x00 key`: a key's state in the data table.
pub fn data_key(keyspace: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(keyspace.len() + 1 + key.len());
    k.extend_from_slice(keyspace.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// `origin 0x00 seq(be u64)`: one operation-log entry.
pub fn oplog_key(origin: &RegionId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(origin.as_str().len() + 9);
    k.extend_from_slice(origin.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Parses the sequence number out of an operation-log key of `origin`.
pub fn oplog_seq(origin: &RegionId, key: &[u8]) -> Option<u64> {
    let prefix_len = origin.as_str().len() + 1;
    if key.len() != prefix_len + 8 || !key.starts_with(origin.as_str().as_bytes()) {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[prefix_len..]);
    Some(u64::from_be_bytes(b))
}

/// `keyspace 0x00 recorded_at_ms(be) counter(be)`: one conflict-ledger entry.
pub fn conflict_key(keyspace: &str, recorded_at_ms: u64, counter: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(keyspace.len() + 17);
    k.extend_from_slice(keyspace.as_bytes());
    k.push(0);
    k.extend_from_slice(&recorded_at_ms.to_be_bytes());
    k.extend_from_slice(&counter.to_be_bytes());
    k
}

/// `wall_ms(be) logical(be) data_key`: one entry of the tombstone index.
pub fn tombstone_key(ts: Timestamp, data_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + data_key.len());
    k.extend_from_slice(&ts.wall_ms.to_be_bytes());
    k.extend_from_slice(&ts.logical.to_be_bytes());
    k.extend_from_slice(data_key);
    k
}

/// Splits a tombstone-index key into the tombstone's timestamp and its data key.
pub fn parse_tombstone_key(k: &[u8]) -> Option<(Timestamp, &[u8])> {
    if k.len() < 12 {
        return None;
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&k[..8]);
    let mut l = [0u8; 4];
    l.copy_from_slice(&k[8..12]);
    Some((
        Timestamp {
            wall_ms: u64::from_be_bytes(w),
            logical: u32::from_be_bytes(l),
        },
        &k[12..],
    ))
}

/// `applied/<origin>`: the replication cursor of one origin (meta table).
pub fn applied_key(origin: &RegionId) -> Vec<u8> {
    let mut k = META_APPLIED_PREFIX.to_vec();
    k.extend_from_slice(origin.as_str().as_bytes());
    k
}

/// Prefix of the per-origin replication cursors in the meta table.
pub const META_APPLIED_PREFIX: &[u8] = b"applied/";

/// The prefix of every key of `name` in a table keyed by `name 0x00 ...`.
pub fn prefix(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

/// Metadata key: the format version of the data directory.
pub const META_FORMAT: &[u8] = b"format_version";
/// Metadata key: the last HLC timestamp this region issued or observed.
pub const META_HLC: &[u8] = b"hlc";
/// The highest write watermark this region ever claimed (`Store::watermark`), made durable before
/// it is claimed: after a restart the clock starts above it, so no write is stamped below a time
/// the region said it would never stamp below again, even if its physical clock stepped back.
pub const META_CLAIM_FLOOR: &[u8] = b"claim-floor";
/// Metadata key: a bootstrap by snapshot under way (`store::BootstrapProgress`).
pub const META_BOOTSTRAP: &[u8] = b"bootstrap";
/// Metadata key: the region this data directory belongs to.
pub const META_REGION: &[u8] = b"region";
/// Metadata key: this region, added to a running cluster, was admitted by every region of its
/// config (`Store::mark_admitted`; the value is the clock floor it was admitted with, u64 ms).
pub const META_ADMITTED: &[u8] = b"admitted";
/// Metadata key: the regions this region removed from the cluster (`store::RemovedRegion` by
/// name; `docs/design/region-removal.md`).
pub const META_REMOVED: &[u8] = b"removed";
/// Metadata key: a peer told this region it was removed from the cluster (`store::RemovedBy`):
/// it takes no local write any more.
pub const META_REMOVED_BY: &[u8] = b"removed-by";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oplog_keys_sort_by_seq_and_parse_back() {
        let r = RegionId::new("us-east-1").unwrap();
        let a = oplog_key(&r, 2);
        let b = oplog_key(&r, 256);
        assert!(a < b);
        assert_eq!(oplog_seq(&r, &b), Some(256));
        let other = RegionId::new("us-east-10").unwrap();
        assert_eq!(oplog_seq(&other, &b), None);
    }
}
