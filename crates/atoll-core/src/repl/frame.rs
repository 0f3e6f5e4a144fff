//! The framing of subscription streams: length-prefixed, versioned frames of ops batches and
//! heartbeats, and a reader that reassembles them from chunks of any size.

use super::Heartbeat;
use crate::op::OpEntry;
use crate::region::RegionId;
use serde::{Deserialize, Serialize};

/// One frame on a subscription stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    Ops(Vec<OpEntry>),
    Heartbeat(Heartbeat),
    /// The publisher's operation log of `origin` no longer reaches back to the subscriber's
    /// cursor: its first entry is `first` (the rest was truncated,
    /// `docs/design/oplog-truncation.md`). The subscriber cannot catch up from this log and
    /// bootstraps by snapshot. Nothing more of `origin` follows on this stream.
    Truncated {
        origin: RegionId,
        first: u64,
    },
}

/// Largest frame accepted on a subscription stream.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Encodes a frame for a subscription stream: a big-endian `u32` length, then the versioned
/// encoding of the frame.
pub fn encode_frame(frame: &Frame) -> crate::Result<Vec<u8>> {
    let body = crate::codec::encode(frame)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME_BYTES)
        .ok_or_else(|| {
            crate::AtollError::Corrupt(format!("frame of {} bytes is too large", body.len()))
        })?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reassembles frames from the chunks of a stream, whatever their boundaries.
#[derive(Default, Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` if more bytes are needed, or an error for a corrupt or
    /// oversized frame (the stream must then be dropped).
    pub fn next_frame(&mut self) -> crate::Result<Option<Frame>> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(crate::AtollError::Corrupt(format!(
                "frame announces {len} bytes, over the limit of {MAX_FRAME_BYTES}"
            )));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = crate::codec::decode_frame(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        frame.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use crate::region::RegionId;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn hb() -> Frame {
        Frame::Heartbeat(Heartbeat {
            from: RegionId::new("a").unwrap(),
            sent_ms: 7,
            hlc: Timestamp::default(),
            echo: None,
            frontier: BTreeMap::new(),
            stable_age_ms: Some(3),
            removed: Default::default(),
        })
    }

    proptest! {
        #[test]
        fn frames_survive_any_chunking(cuts in proptest::collection::vec(0usize..200, 0..10)) {
            let mut wire = Vec::new();
            for _ in 0..3 {
                wire.extend(encode_frame(&hb()).unwrap());
            }
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut cuts = cuts;
            cuts.push(wire.len());
            for c in cuts {
                let end = c.min(wire.len()).max(pos);
                r.push(&wire[pos..end]);
                pos = end;
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got.len(), 3);
        }
    }

    #[test]
    fn corrupt_frames_are_errors() {
        let mut r = FrameReader::default();
        r.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(r.next_frame().is_err());
        let mut r = FrameReader::default();
        r.push(&[0, 0, 0, 3, 1, 0, 0xee]);
        assert!(r.next_frame().is_err());
    }
}
