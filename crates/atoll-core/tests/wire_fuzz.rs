//! Fuzzing of what arrives from the network between regions: decoding never panics and refuses
//! garbage with an error, and the replication core takes in any heartbeat that decodes (with any
//! field values) without panicking: no overflow, no division by zero, no index out of range.
//! Runs a fixed number of cases so the test suite stays bounded in time.

use atoll_core::RegionId;
use atoll_core::causal::VersionVector;
use atoll_core::codec;
use atoll_core::hlc::Timestamp;
use atoll_core::op::OpEntry;
use atoll_core::repl::{
    Echo, Frame, FrameReader, Heartbeat, OriginFrontier, ReplConfig, ReplCore, Subscribe,
    encode_frame,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn r(n: &str) -> RegionId {
    RegionId::new(n).expect("region")
}

fn regions() -> Vec<RegionId> {
    vec![r("a"), r("b"), r("c")]
}

fn valid_heartbeat() -> Heartbeat {
    let mut frontier = BTreeMap::new();
    frontier.insert(
        r("b"),
        OriginFrontier {
            applied: 3,
            caught_up_at_origin_ms: Some(1_000),
        },
    );
    Heartbeat {
        from: r("b"),
        sent_ms: 1_000,
        hlc: Timestamp::new(1_000, 2),
        echo: Some(Echo {
            sent_ms: 900,
            held_ms: 10,
        }),
        frontier,
        stable_age_ms: Some(5),
        removed: Default::default(),
    }
}

fn region_name() -> impl Strategy<Value = RegionId> {
    prop_oneof![Just(r("a")), Just(r("b")), Just(r("c")), Just(r("zz"))]
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        region_name(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of((any::<u64>(), any::<u64>())),
        proptest::collection::vec(
            (
                region_name(),
                any::<u64>(),
                proptest::option::of(any::<u64>()),
            ),
            0..4,
        ),
        proptest::option::of(any::<u64>()),
        proptest::collection::btree_set(region_name(), 0..3),
    )
        .prop_map(
            |(from, sent_ms, hlc, echo, frontier, stable_age_ms, removed)| Heartbeat {
                from,
                sent_ms,
                hlc: Timestamp::new(hlc, 0),
                echo: echo.map(|(sent_ms, held_ms)| Echo { sent_ms, held_ms }),
                frontier: frontier
                    .into_iter()
                    .map(|(o, applied, c)| {
                        (
                            o,
                            OriginFrontier {
                                applied,
                                caught_up_at_origin_ms: c,
                            },
                        )
                    })
                    .collect(),
                stable_age_ms,
                removed,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode::<Heartbeat>(&bytes);
        let _ = codec::decode_heartbeat(&bytes);
        let _ = codec::decode::<Subscribe>(&bytes);
        let _ = codec::decode::<Frame>(&bytes);
        let _ = codec::decode::<OpEntry>(&bytes);
        let mut reader = FrameReader::default();
        reader.push(&bytes);
        // At most a few frames can come out of 256 bytes; an error ends the stream.
        for _ in 0..64 {
            match reader.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn a_mangled_heartbeat_is_an_error_or_a_heartbeat(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = codec::encode(&valid_heartbeat()).expect("encode");
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] ^= b;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        if let Ok(hb) = codec::decode::<Heartbeat>(&bytes) {
            let mut core = ReplCore::new(r("a"), regions(), ReplConfig::new(1_000, 500), VersionVector::new());
            let _ = core.on_heartbeat(&hb, 1_000);
            let _ = core.status(1_000);
            let _ = core.tombstone_horizon_ms(1_000);
        }
    }

    #[test]
    fn any_heartbeat_is_taken_or_refused_without_panicking(
        hbs in proptest::collection::vec(heartbeat(), 1..8),
        nows in proptest::collection::vec(any::<u64>(), 1..8),
        head in any::<u64>(),
        watermark in any::<u64>(),
    ) {
        let mut core = ReplCore::new(r("a"), regions(), ReplConfig::new(1_000, 500), VersionVector::new());
        core.on_local_commit(head);
        core.on_watermark(head, watermark);
        for (i, hb) in hbs.iter().enumerate() {
            let now = nows[i % nows.len()];
            if core.on_heartbeat(hb, now).is_ok() {
                prop_assert!(hb.from != r("zz"));
            }
            let _ = core.on_stream_heartbeat(hb, now);
            let _ = core.status(now);
            let _ = core.wanted_subscriptions(now);
            let _ = core.tombstone_horizon_ms(now);
            let _ = core.heartbeat(&r("b"), now, Timestamp::new(now, 0));
        }
    }
}

#[test]
fn an_oversized_frame_announcement_is_refused_before_buffering_it() {
    let mut reader = FrameReader::default();
    reader.push(&u32::MAX.to_be_bytes());
    assert!(reader.next_frame().is_err());
    // A valid frame still round-trips.
    let frame = Frame::Heartbeat(valid_heartbeat());
    let mut reader = FrameReader::default();
    reader.push(&encode_frame(&frame).expect("encode"));
    assert_eq!(reader.next_frame().expect("decode"), Some(frame));
}
