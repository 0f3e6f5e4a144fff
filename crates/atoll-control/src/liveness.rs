//! What a member has lately heard from each other member, for routing proposals.
//!
//! A link that drops packets (a WAN partition) does not refuse a request: it swallows it, and the
//! request waits for an answer that never comes. A proposal sent to a leader behind such a link,
//! or relayed through a member behind one, would then wait out its whole deadline while another
//! path (a relay that still reaches the leader) was open all along. [`Liveness`] lets
//! [`crate::ControlGroup::propose`] tell a leader that has gone silent (a follower hears its
//! leader every heartbeat) and a member whose last call failed, and try them last.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::NodeId;

/// When each member was last heard from (a request from it, or an answer to a call to it) and
/// when a call to it last failed (unreachable, no answer, given up).
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    seen: Mutex<BTreeMap<NodeId, Seen>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub heard: Option<Instant>,
    pub failed: Option<Instant>,
}

impl Seen {
    /// A call to it failed after the last time it was heard from.
    pub fn suspect(&self) -> bool {
        self.failed
            .is_some_and(|f| self.heard.is_none_or(|h| h < f))
    }
}

impl Liveness {
    fn update(&self, member: NodeId, f: impl FnOnce(&mut Seen)) {
        // A poisoned lock only means another thread panicked while updating two timestamps.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        f(seen.entry(member).or_default());
    }

    /// `member` sent a request, or answered a call (even with an error: it is there).
    pub fn heard(&self, member: NodeId) {
        let now = Instant::now();
        self.update(member, |s| s.heard = Some(now));
    }

    /// A call to `member` got no answer (unreachable, timed out, given up).
    pub fn failed(&self, member: NodeId) {
        let now = Instant::now();
        self.update(member, |s| s.failed = Some(now));
    }

    pub fn get(&self, member: NodeId) -> Seen {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&member).copied().unwrap_or_default()
    }

    /// `members` in the order to try them as relays: those whose last call did not fail first,
    /// the most recently heard from first; ties keep the given order.
    pub fn relay_order(&self, members: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let mut ms: Vec<(NodeId, Seen)> = members.into_iter().map(|m| (m, self.get(m))).collect();
        ms.sort_by_key(|(_, s)| (s.suspect(), std::cmp::Reverse(s.heard)));
        ms.into_iter().map(|(m, _)| m).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failed_members_go_last_and_recent_ones_first() {
        let l = Liveness::default();
        assert_eq!(
            l.relay_order([2, 3, 4]),
            vec![2, 3, 4],
            "nothing known: given order"
        );
        l.heard(2);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        l.heard(3);
        assert_eq!(l.relay_order([2, 3, 4]), vec![3, 2, 4]);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        l.failed(3);
        assert!(l.get(3).suspect());
        assert_eq!(l.relay_order([2, 3, 4]), vec![2, 4, 3]);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        l.heard(3);
        assert!(!l.get(3).suspect(), "heard again after the failure");
        assert_eq!(l.relay_order([2, 3, 4]), vec![3, 2, 4]);
    }
}
