//! The event log: every processed event (and what it did) is folded into a 64-bit FNV-1a hash,
//! so two runs of one seed can be compared; with `ATOLL_SIM_TRACE=1` it is also printed.

/// The kind of a logged event: the first word of every [`Trace::ev`].
pub mod kind {
    pub const END_CHAOS: u64 = 1;
    pub const END_WRITES: u64 = 2;
    /// A client write (acknowledged or refused).
    pub const WRITE: u64 = 10;
    /// A message sent (or dropped on a cut link).
    pub const SEND: u64 = 20;
    /// A message delivered (or lost on arrival).
    pub const DELIVER: u64 = 30;
    /// A replicated batch applied.
    pub const APPLY: u64 = 31;
    pub const MAINTAIN: u64 = 40;
    /// A random fault drawn.
    pub const FAULT: u64 = 50;
    pub const CUT: u64 = 70;
    pub const HEAL: u64 = 71;
    pub const CRASH: u64 = 72;
    pub const RESTART: u64 = 73;
    pub const SKEW: u64 = 74;
    pub const HEAL_ALL: u64 = 75;
    /// Fenced runs: a proposal sent to the control group, committed, arrived, answered, timed
    /// out; committed entries applied by a region; a switchover begun; a promotion; the witness
    /// going down or up.
    pub const PROPOSE: u64 = 80;
    pub const COMMIT: u64 = 81;
    pub const PROPOSAL_ARRIVES: u64 = 82;
    pub const ANSWER: u64 = 83;
    pub const PROPOSAL_TIMEOUT: u64 = 84;
    pub const CONTROL_APPLY: u64 = 85;
    pub const SWITCHOVER: u64 = 86;
    pub const PROMOTE: u64 = 87;
    pub const WITNESS: u64 = 88;
    /// A session client's read: the token check's decision and, if served, the state read.
    pub const SESSION_READ: u64 = 90;
}

/// FNV-1a over the words of every logged event.
#[derive(Clone, Debug)]
pub struct Trace {
    hash: u64,
    events: u64,
    print: bool,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    /// A trace that prints its lines when `print` is set.
    pub fn new(print: bool) -> Self {
        Self {
            hash: FNV_OFFSET,
            events: 0,
            print,
        }
    }

    /// Whether lines are printed.
    pub fn printing(&self) -> bool {
        self.print
    }

    /// Folds one event (its words) into the hash.
    pub fn ev(&mut self, words: &[u64]) {
        self.events += 1;
        for w in words {
            for b in w.to_le_bytes() {
                self.hash ^= u64::from(b);
                self.hash = self.hash.wrapping_mul(FNV_PRIME);
            }
        }
        // Separator, so that [a, b] [c] and [a] [b, c] differ.
        self.hash ^= 0xff;
        self.hash = self.hash.wrapping_mul(FNV_PRIME);
    }

    /// Prints a line when tracing is on (the closure is not called otherwise).
    pub fn line(&self, now_ms: u64, f: impl FnOnce() -> String) {
        if self.print {
            eprintln!("[{:>7}.{:03}] {}", now_ms / 1000, now_ms % 1000, f());
        }
    }

    /// Hash of everything logged so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Number of events logged.
    pub fn events(&self) -> u64 {
        self.events
    }
}

/// Hash of a byte string (for folding keys and values into the event log).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}
