//! A linearizability checker for histories of one register with compare-and-set by revision, the
//! model of a key of a strong keyspace (`docs/design/strong-keyspaces.md`). Test support only.
//!
//! A history is a list of [`Op`]s, each with the real-time interval in which it ran (`invoke`,
//! and `complete` when its answer came back) and what it returned. The checker searches for a
//! linearization: one total order of the operations that respects real time (an operation that
//! completed before another was invoked comes first) and in which every operation's answer is the
//! one the register model gives at its position. The search is Wing and Gong's, with Lowe's
//! memoization of (linearized set, model state), as Knossos and Porcupine do it.
//!
//! Operations whose outcome is unknown (a timeout, a lost answer: [`Outcome::Unknown`]) may or
//! may not have taken effect: the search may place them anywhere after their invocation, or
//! leave them out. Operations that surely did not take effect (refused, no quorum) are not part
//! of a history: leave them out before checking.
//!
//! The model: the key holds a value or nothing, and a revision (0 when absent). Every write that
//! takes effect gives the key a revision greater than every revision the key had before (the
//! revision is global to the group, so revisions of one key grow but skip). A put with
//! `if_revision = Some(r)` takes effect only if the key is at revision `r`, else it returns
//! [`Outcome::Mismatch`] with the key's revision. Revisions set by operations of unknown outcome
//! are unknown to the model until an answer reveals them.
//!
//! Keep histories per key and small (tens of operations): the search is exponential in the
//! worst case. [`check`] gives up after a budget of steps and says so.

use std::collections::HashSet;

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Read,
    Put {
        value: Vec<u8>,
        if_revision: Option<u64>,
    },
    Delete {
        if_revision: Option<u64>,
    },
}

/// What it returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A read: the value (`None`: absent) and the key's revision (0 when absent).
    Read {
        value: Option<Vec<u8>>,
        revision: u64,
    },
    /// A put took effect: the key's new revision.
    Written { revision: u64 },
    /// A delete removed the key, at this global revision.
    Deleted { revision: u64 },
    /// A delete found no key (nothing changed).
    Absent,
    /// `if_revision` did not match: nothing changed; the key was at `current`.
    Mismatch { current: u64 },
    /// No answer (timeout, lost connection): it may or may not have taken effect.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Who ran it (for messages only).
    pub client: usize,
    /// When it was invoked, on one clock shared by the whole history (e.g. ns since the start).
    pub invoke: u64,
    /// When its answer came back; `None` for [`Outcome::Unknown`] (it may take effect at any
    /// time after `invoke`).
    pub complete: Option<u64>,
    pub input: Input,
    pub outcome: Outcome,
}

/// The checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `longest` is the longest prefix of operations (indices into the
    /// history) the search could linearize, to help read the failure.
    NotLinearizable {
        longest: Vec<usize>,
    },
    /// The search ran out of its budget of steps.
    GaveUp,
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// The register as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    value: Option<Vec<u8>>,
    /// The key's revision: `Some(0)` when absent, `None` when it exists at a revision not known
    /// yet (set by an operation of unknown outcome), which is greater than `floor`.
    revision: Option<u64>,
    /// Every revision the key had so far is at most this.
    floor: u64,
}

impl State {
    fn initial() -> Self {
        State {
            value: None,
            revision: Some(0),
            floor: 0,
        }
    }

    /// Whether the key can be at revision `r` now; binds an unknown revision to `r`.
    fn at(&mut self, r: u64) -> bool {
        match self.revision {
            Some(x) => x == r,
            None => {
                if r > self.floor {
                    self.revision = Some(r);
                    self.floor = r;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Whether the precondition `if_revision` holds (binding an unknown revision if it does).
    fn precondition(&mut self, if_revision: Option<u64>) -> bool {
        match if_revision {
            None => true,
            Some(r) => self.at(r),
        }
    }

    /// Whether the key can be at a revision other than `r` (and bind it to `current`).
    fn mismatch(&mut self, expected: Option<u64>, current: u64) -> bool {
        match expected {
            Some(e) if e != current => self.at(current),
            _ => false,
        }
    }

    /// The state after `op` takes effect at this point, if the model allows its outcome here.
    // The preconditions bind unknown revisions (they change `s`): kept out of match guards.
    #[allow(clippy::collapsible_match)]
    fn step(&self, op: &Op) -> Option<State> {
        let mut s = self.clone();
        let ok = match (&op.input, &op.outcome) {
            (Input::Read, Outcome::Read { value, revision }) => match value {
                None => s.value.is_none() && *revision == 0,
                Some(v) => s.value.as_ref() == Some(v) && s.at(*revision),
            },
            (Input::Put { value, if_revision }, Outcome::Written { revision }) => {
                if s.precondition(*if_revision) && *revision > s.floor {
                    s.value = Some(value.clone());
                    s.revision = Some(*revision);
                    s.floor = *revision;
                    true
                } else {
                    false
                }
            }
            (Input::Put { value, if_revision }, Outcome::Unknown) => {
                if s.precondition(*if_revision) {
                    if let Some(r) = s.revision {
                        s.floor = s.floor.max(r);
                    }
                    s.value = Some(value.clone());
                    s.revision = None;
                    true
                } else {
                    false
                }
            }
            (Input::Delete { if_revision }, Outcome::Deleted { revision }) => {
                if s.value.is_some() && s.precondition(*if_revision) && *revision > s.floor {
                    s.value = None;
                    s.revision = Some(0);
                    s.floor = *revision;
                    true
                } else {
                    false
                }
            }
            (Input::Delete { if_revision }, Outcome::Absent) => {
                s.value.is_none() && matches!(if_revision, None | Some(0))
            }
            (Input::Delete { if_revision }, Outcome::Unknown) => {
                if s.precondition(*if_revision) {
                    if s.value.is_some() {
                        if let Some(r) = s.revision {
                            s.floor = s.floor.max(r);
                        }
                        // The removal's own revision is unknown, but above the floor: a later
                        // write's revision is checked against the floor only, which stays a
                        // lower bound.
                        s.floor += 1;
                        s.value = None;
                        s.revision = Some(0);
                    }
                    true
                } else {
                    false
                }
            }
            (
                Input::Put { if_revision, .. } | Input::Delete { if_revision },
                Outcome::Mismatch { current },
            ) => s.mismatch(*if_revision, *current),
            // A read of unknown outcome tells nothing; any other pairing is a malformed history.
            (Input::Read, Outcome::Unknown) => true,
            _ => false,
        };
        ok.then_some(s)
    }
}

/// One entry of the event list: an operation's call or its return.
#[derive(Clone, Copy, Debug)]
struct Entry {
    op: usize,
    is_call: bool,
    /// Index of the matching return entry (calls of completed operations).
    ret: Option<usize>,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Checks a history with the default budget (ten million steps).
pub fn check(history: &[Op]) -> Verdict {
    check_with_budget(history, 10_000_000)
}

/// Checks a history, giving up after `budget` search steps.
pub fn check_with_budget(history: &[Op], budget: u64) -> Verdict {
    // Events in time order; at equal times calls first (the operations overlap: more freedom,
    // never a false alarm).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
    for (i, op) in history.iter().enumerate() {
        events.push((op.invoke, true, i));
        if let Some(c) = op.complete {
            events.push((c.max(op.invoke), false, i));
        }
    }
    events.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    let n = events.len();
    let mut entries: Vec<Entry> = events
        .iter()
        .enumerate()
        .map(|(k, &(_, is_call, op))| Entry {
            op,
            is_call,
            ret: None,
            prev: k.checked_sub(1),
            next: (k + 1 < n).then_some(k + 1),
        })
        .collect();
    let mut ret_of = vec![None; history.len()];
    for (k, e) in entries.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = Some(k);
        }
    }
    for e in entries.iter_mut() {
        if e.is_call {
            e.ret = ret_of[e.op];
        }
    }
    let must = history.iter().filter(|o| o.complete.is_some()).count();
    let mut head: Option<usize> = (n > 0).then_some(0);
    let words = history.len().div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut done_must = 0usize;
    let mut state = State::initial();
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    // (call entry, state before it, whether the op had a return entry)
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut cursor = head;
    let mut steps = 0u64;

    // Unlinks entry `k` from the list.
    fn unlink(entries: &mut [Entry], head: &mut Option<usize>, k: usize) {
        let (p, nx) = (entries[k].prev, entries[k].next);
        match p {
            Some(p) => entries[p].next = nx,
            None => *head = nx,
        }
        if let Some(nx) = nx {
            entries[nx].prev = p;
        }
    }
    // Links entry `k` back where it was (its neighbours are unchanged since, LIFO).
    fn relink(entries: &mut [Entry], head: &mut Option<usize>, k: usize) {
        let (p, nx) = (entries[k].prev, entries[k].next);
        match p {
            Some(p) => entries[p].next = Some(k),
            None => *head = Some(k),
        }
        if let Some(nx) = nx {
            entries[nx].prev = Some(k);
        }
    }

    loop {
        if done_must == must {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Verdict::GaveUp;
        }
        let Some(k) = cursor else {
            // Only calls of operations of unknown outcome are left ahead: backtrack.
            match stack.pop() {
                None => return Verdict::NotLinearizable { longest },
                Some((call, prev_state)) => {
                    let op = entries[call].op;
                    if let Some(r) = entries[call].ret {
                        relink(&mut entries, &mut head, r);
                        done_must -= 1;
                    }
                    relink(&mut entries, &mut head, call);
                    linearized[op / 64] &= !(1 << (op % 64));
                    state = prev_state;
                    cursor = entries[call].next;
                    continue;
                }
            }
        };
        let e = entries[k];
        if e.is_call {
            let op = e.op;
            if let Some(next_state) = state.step(&history[op]) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), next_state.clone())) {
                    stack.push((k, state.clone()));
                    state = next_state;
                    linearized = lin;
                    unlink(&mut entries, &mut head, k);
                    if let Some(r) = e.ret {
                        unlink(&mut entries, &mut head, r);
                        done_must += 1;
                    }
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|(c, _)| entries[*c].op).collect();
                    }
                    cursor = head;
                    continue;
                }
            }
            cursor = e.next;
        } else {
            // A return whose operation is not linearized yet: backtrack.
            match stack.pop() {
                None => return Verdict::NotLinearizable { longest },
                Some((call, prev_state)) => {
                    let op = entries[call].op;
                    if let Some(r) = entries[call].ret {
                        relink(&mut entries, &mut head, r);
                        done_must -= 1;
                    }
                    relink(&mut entries, &mut head, call);
                    linearized[op / 64] &= !(1 << (op % 64));
                    state = prev_state;
                    cursor = entries[call].next;
                }
            }
        }
    }
}

/// Splits a history of many keys into one history per key (`key_of` names each operation's key),
/// checks each, and returns the first key that is not linearizable with its verdict.
pub fn check_per_key<K: Ord + Clone>(history: &[(K, Op)]) -> Result<(), (K, Verdict, Vec<Op>)> {
    let mut by_key: std::collections::BTreeMap<K, Vec<Op>> = std::collections::BTreeMap::new();
    for (k, op) in history {
        by_key.entry(k.clone()).or_default().push(op.clone());
    }
    for (k, ops) in by_key {
        let v = check(&ops);
        if !v.is_linearizable() {
            return Err((k, v, ops));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
