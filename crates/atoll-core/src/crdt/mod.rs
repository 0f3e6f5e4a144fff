//! State-based CRDTs with delta mutators.
//!
//! Every write function (`LwwRegister::write`, `MvRegister::write`, `PnCounter::add`,
//! `OrSet::update`) returns a *delta*: a small state holding only what the write changed. Deltas
//! are states of the same type, merged with the same [`Crdt::merge`]; merging the delta into the
//! state it was computed from performs the write.

pub mod lww;
pub mod mvr;
pub mod orset;
pub mod pncounter;
pub mod ratewindow;

/// A join-semilattice: a replicated state with a merge (join, `⊔`).
///
/// Every implementation must satisfy, for all reachable states `a`, `b`, `c`:
///
/// - commutativity: `a ⊔ b == b ⊔ a`;
/// - associativity: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`;
/// - idempotence: `a ⊔ a == a`.
///
/// Equality is `PartialEq`, so representations must be canonical (equal states compare equal).
/// Deltas produced by the write functions are states too, so delivering the same set of deltas
/// in any order, any number of times each, converges to the same state.
pub trait Crdt: Clone + PartialEq + std::fmt::Debug {
    /// Merges `other` into `self` (`self = self ⊔ other`).
    fn merge(&mut self, other: &Self);

    /// `self ⊔ other`, by value.
    fn merged(mut self, other: &Self) -> Self
    where
        Self: Sized,
    {
        self.merge(other);
        self
    }
}
