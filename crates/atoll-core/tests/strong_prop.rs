//! Property tests of the strong keyspaces' state machine (`atoll_core::strong`): applying the same
//! commands gives the same state and answers on every member (determinism, also through a
//! snapshot taken at any point), compare-and-set never lets two `if_revision = 0` puts on one key
//! both succeed, revisions only grow, and decoding arbitrary bytes never panics.

use atoll_core::strong::{
    Answer, Command, StrongState, decode_answer, decode_command, decode_state, encode_command,
    encode_state,
};
use proptest::prelude::*;

fn command() -> impl Strategy<Value = Command> {
    let key = prop::sample::select(vec!["a", "b", "c"]);
    let ks = prop::sample::select(vec!["seats", "ledger"]);
    let if_rev = prop::option::of(0u64..6);
    prop_oneof![
        (ks.clone(), key.clone(), any::<u8>(), if_rev.clone()).prop_map(|(ks, k, v, r)| {
            Command::Put {
                keyspace: ks.to_string(),
                key: k.as_bytes().to_vec(),
                value: vec![v],
                if_revision: r,
            }
        }),
        (ks, key, if_rev).prop_map(|(ks, k, r)| Command::Delete {
            keyspace: ks.to_string(),
            key: k.as_bytes().to_vec(),
            if_revision: r,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn apply_is_deterministic_and_snapshots_restore_it(
        cmds in prop::collection::vec(command(), 0..60),
        cut in 0usize..60,
    ) {
        let mut a = StrongState::default();
        let mut b = StrongState::default();
        let mut answers_a = Vec::new();
        let mut answers_b = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            answers_a.push(a.apply(c));
            // b goes through the wire encoding, and is rebuilt from a snapshot at `cut`.
            let bytes = encode_command(c).unwrap();
            answers_b.push(b.apply_bytes(&bytes));
            if i == cut {
                b = decode_state(&encode_state(&b).unwrap()).unwrap();
            }
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(answers_a, answers_b);
    }

    #[test]
    fn create_only_puts_never_both_succeed_and_revisions_grow(
        cmds in prop::collection::vec(command(), 0..80),
    ) {
        let mut s = StrongState::default();
        // Every answer is checked against the key's existence and revision just before it.
        let mut last_rev = 0u64;
        for c in &cmds {
            let (ks, key) = match c {
                Command::Put { keyspace, key, .. } | Command::Delete { keyspace, key, .. } => {
                    (keyspace.clone(), key.clone())
                }
            };
            let existed = s.get(&ks, &key).is_some();
            let before = s.revision_of(&ks, &key);
            let answer = s.apply(c);
            match (c, &answer) {
                (Command::Put { if_revision: Some(0), .. }, Answer::Written { revision, create_revision }) => {
                    // A create-only put succeeds only on an absent key.
                    prop_assert!(!existed);
                    prop_assert_eq!(revision, create_revision);
                }
                (Command::Put { if_revision: Some(r), .. }, Answer::RevisionMismatch { current }) => {
                    prop_assert_ne!(*r, before);
                    prop_assert_eq!(*current, before);
                }
                (Command::Put { if_revision: Some(r), .. }, Answer::Written { .. }) => {
                    prop_assert_eq!(*r, before);
                }
                (Command::Put { if_revision: None, .. }, Answer::Written { .. }) => {}
                (Command::Delete { .. }, Answer::Absent) => prop_assert!(!existed),
                (Command::Delete { if_revision, .. }, Answer::Deleted { .. }) => {
                    prop_assert!(existed);
                    prop_assert!(if_revision.is_none_or(|r| r == before));
                }
                (Command::Delete { if_revision: Some(r), .. }, Answer::RevisionMismatch { current }) => {
                    prop_assert_ne!(*r, before);
                    prop_assert_eq!(*current, before);
                }
                (c, a) => prop_assert!(false, "unexpected answer {a:?} to {c:?}"),
            }
            match answer {
                Answer::Written { revision, .. } | Answer::Deleted { revision } => {
                    prop_assert_eq!(revision, last_rev + 1);
                    last_rev = revision;
                }
                _ => prop_assert_eq!(s.revision, last_rev),
            }
        }
        // Two create-only puts on one key in a row: the second always fails.
        let mut s = StrongState::default();
        let c = Command::Put { keyspace: "seats".into(), key: b"12A".to_vec(), value: b"x".to_vec(), if_revision: Some(0) };
        let first = s.apply(&c);
        let second = s.apply(&c);
        prop_assert_eq!(first, Answer::Written { revision: 1, create_revision: 1 });
        prop_assert_eq!(second, Answer::RevisionMismatch { current: 1 });
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_command(&bytes);
        let _ = decode_answer(&bytes);
        let _ = decode_state(&bytes);
        let mut s = StrongState::default();
        let _ = s.apply_bytes(&bytes);
    }
}
