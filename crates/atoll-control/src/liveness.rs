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
use std::time::Duration;

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

/// Resolves once nothing has been heard from a member (`heard` reads when it last was) for
/// `quiet` since `since`, with the silence measured in steps of `tick`; gives the silence.
///
/// Only silence this member was awake for counts. A member that was itself stalled (its runtime
/// starved of CPU, the process paused) has not yet read what arrived meanwhile: the heartbeats
/// are queued, not missing. A tick that comes more than a few ticks late marks such a stall,
/// and the count starts again from it.
pub(crate) async fn gone_silent(
    heard: impl Fn() -> Option<Instant>,
    since: Instant,
    tick: Duration,
    quiet: Duration,
) -> Duration {
    let tick = tick.max(Duration::from_millis(1));
    let mut awake_since = since;
    let mut last_tick = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        if now.duration_since(last_tick) > tick * STALL_TICKS {
            awake_since = now;
        }
        last_tick = now;
        let last = heard().map_or(awake_since, |h| h.max(awake_since));
        let silent = now.duration_since(last);
        if silent >= quiet {
            return silent;
        }
    }
}

/// A tick this many ticks late (or later) marks a stall of this member's own.
const STALL_TICKS: u32 = 4;

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

    #[tokio::test(start_paused = true)]
    async fn silence_is_counted_from_the_last_word() {
        let start = Instant::now();
        let heard = Mutex::new(Some(start));
        let watch = gone_silent(
            || *heard.lock().unwrap_or_else(|p| p.into_inner()),
            start,
            Duration::from_millis(50),
            Duration::from_millis(750),
        );
        tokio::pin!(watch);
        // Heard every 200 ms for a second: not silent.
        for _ in 0..5 {
            tokio::select! {
                s = &mut watch => panic!("silent after {s:?} while heard every 200 ms"),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            *heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let last = Instant::now();
        let silent = watch.await;
        assert!(silent >= Duration::from_millis(750), "{silent:?}");
        let at = Instant::now().duration_since(last);
        assert!(at < Duration::from_millis(850), "noticed only after {at:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_of_this_member_is_not_the_peers_silence() {
        let start = Instant::now();
        let watch = gone_silent(
            || Some(start),
            start,
            Duration::from_millis(50),
            Duration::from_millis(750),
        );
        tokio::pin!(watch);
        // Let the watch start ticking, then stall this member for 2 s (the timer fires once,
        // 2 s late): what the peer sent meanwhile is unread, so that is no silence of its.
        tokio::select! {
            s = &mut watch => panic!("silent after {s:?}"),
            () = tokio::time::sleep(Duration::from_millis(60)) => {}
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let resumed = Instant::now();
        // Still nothing heard once awake: silent a full `quiet` after the stall ended.
        let silent = watch.await;
        let at = Instant::now().duration_since(resumed);
        assert!(
            at >= Duration::from_millis(750) && silent < Duration::from_secs(1),
            "gave up {at:?} after the stall ended, reporting {silent:?}"
        );
    }
}
