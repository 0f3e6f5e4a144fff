use super::*;

fn op(client: usize, invoke: u64, complete: Option<u64>, input: Input, outcome: Outcome) -> Op {
    Op {
        client,
        invoke,
        complete,
        input,
        outcome,
    }
}

fn put(v: &str, if_revision: Option<u64>) -> Input {
    Input::Put {
        value: v.as_bytes().to_vec(),
        if_revision,
    }
}

fn read(v: Option<&str>, revision: u64) -> Outcome {
    Outcome::Read {
        value: v.map(|v| v.as_bytes().to_vec()),
        revision,
    }
}

fn written(revision: u64) -> Outcome {
    Outcome::Written { revision }
}

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert!(check(&[]).is_linearizable());
    let h = vec![
        op(0, 0, Some(1), Input::Read, read(None, 0)),
        op(0, 2, Some(3), put("a", None), written(1)),
        op(0, 4, Some(5), Input::Read, read(Some("a"), 1)),
        op(0, 6, Some(7), put("b", Some(1)), written(3)),
        op(
            0,
            8,
            Some(9),
            put("c", Some(1)),
            Outcome::Mismatch { current: 3 },
        ),
        op(
            0,
            10,
            Some(11),
            Input::Delete {
                if_revision: Some(3),
            },
            Outcome::Deleted { revision: 4 },
        ),
        op(
            0,
            12,
            Some(13),
            Input::Delete { if_revision: None },
            Outcome::Absent,
        ),
        op(0, 14, Some(15), put("d", Some(0)), written(9)),
        op(0, 16, Some(17), Input::Read, read(Some("d"), 9)),
    ];
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn a_stale_read_after_a_completed_write_is_rejected() {
    // The write completed before the read began, yet the read saw the old value.
    let h = vec![
        op(0, 0, Some(1), put("a", None), written(1)),
        op(0, 2, Some(3), put("b", None), written(2)),
        op(1, 4, Some(5), Input::Read, read(Some("a"), 1)),
    ];
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    let h = vec![
        op(0, 0, Some(1), put("a", None), written(1)),
        op(0, 2, Some(10), put("b", None), written(2)),
        op(1, 3, Some(4), Input::Read, read(Some("b"), 2)),
        op(2, 5, Some(6), Input::Read, read(Some("a"), 1)),
    ];
    // Read 1 saw b, then read 2 (which began after read 1 ended) saw a: b cannot be undone.
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    let ok = vec![
        op(0, 0, Some(1), put("a", None), written(1)),
        op(0, 2, Some(10), put("b", None), written(2)),
        op(1, 3, Some(4), Input::Read, read(Some("a"), 1)),
        op(2, 5, Some(6), Input::Read, read(Some("b"), 2)),
    ];
    assert_eq!(check(&ok), Verdict::Linearizable);
}

#[test]
fn two_create_only_puts_cannot_both_succeed() {
    // The double booking: both clients booked the seat with If-Match: 0.
    let h = vec![
        op(0, 0, Some(5), put("alice", Some(0)), written(1)),
        op(1, 1, Some(6), put("bob", Some(0)), written(2)),
    ];
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    let ok = vec![
        op(0, 0, Some(5), put("alice", Some(0)), written(1)),
        op(
            1,
            1,
            Some(6),
            put("bob", Some(0)),
            Outcome::Mismatch { current: 1 },
        ),
        op(2, 7, Some(8), Input::Read, read(Some("alice"), 1)),
    ];
    assert_eq!(check(&ok), Verdict::Linearizable);
}

#[test]
fn a_mismatch_must_report_the_revision_the_key_had() {
    let h = vec![
        op(0, 0, Some(1), put("a", None), written(4)),
        op(
            1,
            2,
            Some(3),
            put("b", Some(0)),
            Outcome::Mismatch { current: 7 },
        ),
    ];
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    // And a mismatch whose expected revision was in fact current is wrong too.
    let h = vec![
        op(0, 0, Some(1), put("a", None), written(4)),
        op(
            1,
            2,
            Some(3),
            put("b", Some(4)),
            Outcome::Mismatch { current: 4 },
        ),
    ];
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
}

#[test]
fn revisions_must_grow() {
    let h = vec![
        op(0, 0, Some(1), put("a", None), written(5)),
        op(0, 2, Some(3), put("b", None), written(3)),
    ];
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
}

#[test]
fn a_read_of_a_value_never_written_is_rejected() {
    let h = vec![op(0, 0, Some(1), Input::Read, read(Some("ghost"), 1))];
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
}

#[test]
fn an_unknown_write_may_or_may_not_take_effect() {
    // Taken effect (a later read sees it, at a revision the checker learns from the read).
    let seen = vec![
        op(0, 0, None, put("a", None), Outcome::Unknown),
        op(1, 5, Some(6), Input::Read, read(Some("a"), 3)),
        op(1, 7, Some(8), put("b", Some(3)), written(4)),
    ];
    assert_eq!(check(&seen), Verdict::Linearizable);
    // Not taken effect.
    let unseen = vec![
        op(0, 0, None, put("a", None), Outcome::Unknown),
        op(1, 5, Some(6), Input::Read, read(None, 0)),
    ];
    assert_eq!(check(&unseen), Verdict::Linearizable);
    // Taken effect late: after a read that did not see it.
    let late = vec![
        op(0, 0, None, put("a", None), Outcome::Unknown),
        op(1, 5, Some(6), Input::Read, read(None, 0)),
        op(1, 7, Some(8), Input::Read, read(Some("a"), 2)),
    ];
    assert_eq!(check(&late), Verdict::Linearizable);
    // But not before it was invoked.
    let early = vec![
        op(1, 0, Some(1), Input::Read, read(Some("a"), 2)),
        op(0, 5, None, put("a", None), Outcome::Unknown),
    ];
    assert!(matches!(check(&early), Verdict::NotLinearizable { .. }));
    // And it takes effect once at most: seen, then gone with no delete, is wrong.
    let flicker = vec![
        op(0, 0, None, put("a", None), Outcome::Unknown),
        op(1, 5, Some(6), Input::Read, read(Some("a"), 1)),
        op(1, 7, Some(8), Input::Read, read(None, 0)),
    ];
    assert!(matches!(check(&flicker), Verdict::NotLinearizable { .. }));
}

#[test]
fn an_unknown_create_only_put_cannot_double_book() {
    // Alice's booking has an unknown outcome, Bob's succeeded; a later read shows Alice's
    // value: both took effect, which compare-and-set forbids.
    let h = vec![
        op(0, 0, None, put("alice", Some(0)), Outcome::Unknown),
        op(1, 1, Some(4), put("bob", Some(0)), written(2)),
        op(2, 10, Some(11), Input::Read, read(Some("alice"), 5)),
    ];
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
    // Alice's took effect and Bob's was refused: fine.
    let ok = vec![
        op(0, 0, None, put("alice", Some(0)), Outcome::Unknown),
        op(
            1,
            1,
            Some(4),
            put("bob", Some(0)),
            Outcome::Mismatch { current: 5 },
        ),
        op(2, 10, Some(11), Input::Read, read(Some("alice"), 5)),
    ];
    assert_eq!(check(&ok), Verdict::Linearizable);
}

#[test]
fn unknown_deletes_are_optional_too() {
    let h = vec![
        op(0, 0, Some(1), put("a", None), written(1)),
        op(
            0,
            2,
            None,
            Input::Delete { if_revision: None },
            Outcome::Unknown,
        ),
        op(1, 5, Some(6), Input::Read, read(None, 0)),
        op(1, 7, Some(8), put("b", Some(0)), written(3)),
    ];
    assert_eq!(check(&h), Verdict::Linearizable);
    // After the deletion, the key's next write must be above the deletion's revision.
    let h = vec![
        op(0, 0, Some(1), put("a", None), written(1)),
        op(
            0,
            2,
            None,
            Input::Delete { if_revision: None },
            Outcome::Unknown,
        ),
        op(1, 5, Some(6), Input::Read, read(None, 0)),
        op(1, 7, Some(8), put("b", Some(0)), written(1)),
    ];
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
}

#[test]
fn a_larger_concurrent_history_is_checked_within_budget() {
    // Ten clients, each putting then reading, all overlapping: many interleavings, one truth.
    let mut h = Vec::new();
    for c in 0..10u64 {
        h.push(op(
            c as usize,
            c,
            Some(100 + c),
            put(&format!("v{c}"), None),
            written(c + 1),
        ));
    }
    h.push(op(11, 200, Some(201), Input::Read, read(Some("v9"), 10)));
    assert_eq!(check(&h), Verdict::Linearizable);
    h.push(op(12, 202, Some(203), Input::Read, read(Some("v3"), 4)));
    assert!(matches!(check(&h), Verdict::NotLinearizable { .. }));
}

#[test]
fn per_key_histories_are_checked_separately() {
    let h = vec![
        ("a", op(0, 0, Some(1), put("x", None), written(1))),
        ("b", op(0, 2, Some(3), put("y", None), written(2))),
        ("a", op(0, 4, Some(5), Input::Read, read(Some("x"), 1))),
    ];
    assert!(check_per_key(&h).is_ok());
    let bad = vec![
        ("a", op(0, 0, Some(1), put("x", None), written(1))),
        ("b", op(0, 4, Some(5), Input::Read, read(Some("x"), 1))),
    ];
    assert_eq!(check_per_key(&bad).map_err(|e| e.0), Err("b"));
}
