//! Session clients (issue 20, `docs/design/session-consistency.md`): simulated clients that each
//! carry a session token and move between regions at random, writing lww keys through the real
//! store and reading with their token through the token check the server's read gate runs
//! (`crates/atoll-server/src/session.rs`): the region's committed applied vector and what its
//! replication core knows of its peers (`ReplCore::session_peers`, read at the region's clock
//! when the read arrived), judged by `atoll_core::session::check`. A read the region has not
//! caught up with waits (checking again every [`SESSION_RECHECK_MS`], up to
//! [`SimOptions::session_wait_ms`]) and is then served or refused as `ATOLL-STALE`. Every served
//! read is judged by invariant 10 (`check::session_read`), every verdict by
//! `check::session_verdict`.
//!
//! The clients draw from an RNG of their own, seeded from the run's seed: with no session clients
//! a run draws and processes exactly what it did before they existed.

use super::*;
use crate::check::{SessionReadCase, SessionSeen};
use atoll_core::session::{self, PeerSession, SessionCheck, SessionToken};

/// How often a waiting session read checks again (the server's recheck interval; the server is
/// also woken by every commit, so it may serve up to this much sooner).
pub const SESSION_RECHECK_MS: u64 = 50;

/// The lww key every session client writes and reads besides its own ([`session_key`]).
pub const SHARED_SESSION_KEY: &str = "u-shared";

/// Session client `c`'s own lww key (in [`model::SESSIONS`]).
pub fn session_key(c: usize) -> String {
    format!("u{c}")
}

/// A simulated client with a session token, and what invariant 10 requires of its reads.
#[derive(Clone, Debug, Default)]
pub struct SessionClient {
    /// The token it presents: what the answers to its writes and reads gave it.
    pub token: SessionToken,
    /// Per lww key: its own newest acknowledged write of the key.
    pub wrote: BTreeMap<Vec<u8>, SessionSeen>,
    /// Per lww key: the newest state a served read of it returned.
    pub read: BTreeMap<Vec<u8>, SessionSeen>,
    /// The read it waits for, if any (random workload only).
    waiting: Option<Waiting>,
}

/// A session read waiting for its region to apply the token.
#[derive(Clone, Debug)]
struct Waiting {
    r: usize,
    key: String,
    /// The region's clock when the read arrived.
    asked_at_ms: u64,
    /// The region's session mark when the read arrived (`ReplCore::session_mark`).
    mark: BTreeMap<RegionId, u64>,
    /// The region's incarnation then (a crash ends the read).
    incarnation: u64,
    /// Virtual time when it stops waiting.
    until: u64,
}

/// What a session read came to.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionRead {
    /// Served: the state read (`None`: absent).
    Served(Option<KeyState>),
    /// Not served: the region has not applied everything the token names (yet).
    Behind,
    /// Refused: the region judged the token forged (a violation of invariant 10 when the check is
    /// on, since every simulated client's token is genuine).
    Impossible,
    /// The region is down.
    Down,
}

/// Keeps in `map` the newer (in the lww order) of what it holds for `key` and `seen`.
fn keep_newest(map: &mut BTreeMap<Vec<u8>, SessionSeen>, key: &[u8], seen: SessionSeen) {
    if map.get(key).is_none_or(|s| seen.version() > s.version()) {
        map.insert(key.to_vec(), seen);
    }
}

impl Sim {
    /// Session client `c` (`None` if it never did anything).
    pub fn session_client(&self, c: usize) -> Option<&SessionClient> {
        self.sessions.get(c)
    }

    /// Session client `c`'s token, for negative controls that forge one.
    pub fn session_token_mut(&mut self, c: usize) -> &mut SessionToken {
        &mut self.client(c).token
    }

    /// Session client `c`, created (with an empty token) on first use.
    fn client(&mut self, c: usize) -> &mut SessionClient {
        if self.sessions.len() <= c {
            self.sessions.resize_with(c + 1, SessionClient::default);
        }
        &mut self.sessions[c]
    }

    /// Session client `c` writes `op` at region `r` (as [`Sim::write`], recorded in the history
    /// if acknowledged). An acknowledged write raises its token by the write's `(r, seq)`; an lww
    /// write becomes the client's newest write of its key if it is the newest in the lww order.
    pub fn session_write(
        &mut self,
        c: usize,
        r: usize,
        op: &WriteOp,
    ) -> Result<WriteOutcome, AtollError> {
        self.client(c);
        let out = self.write(r, op)?;
        self.stats.session_writes += 1;
        let me = self.ids[r].clone();
        let now = self.now;
        let (_, key) = op.target();
        let deleted = match op {
            WriteOp::LwwPut { .. } => Some(false),
            WriteOp::LwwDelete { .. } => Some(true),
            _ => None,
        };
        let client = self.client(c);
        client.token.observe(&me, out.seq);
        if let Some(deleted) = deleted {
            let seen = SessionSeen {
                ts: out.ts,
                origin: me.clone(),
                deleted,
                at: me,
                at_ms: now,
            };
            keep_newest(&mut client.wrote, key.as_bytes(), seen);
        }
        Ok(out)
    }

    /// Session client `c` reads the lww key `key` at region `r` with its token, now: served if the
    /// token check says so (or the check is off), judged by invariant 10. Never waits.
    pub fn session_read(&mut self, c: usize, r: usize, key: &str) -> SessionRead {
        self.set_clocks();
        self.client(c);
        let asked_at = self.local_ms(r);
        let mark = self.session_mark(r);
        self.session_look(c, r, key, asked_at, &mark, true)
    }

    /// Region `r`'s session mark now (empty while it is down): what a read arriving now waits on
    /// for a peer's proof.
    fn session_mark(&self, r: usize) -> BTreeMap<RegionId, u64> {
        self.regions[r]
            .node
            .as_ref()
            .map(|n| n.driver.core().session_mark())
            .unwrap_or_default()
    }

    /// The token check at region `r` for a read of client `c` that arrived at `asked_at_ms` (the
    /// region's clock), as the server runs it: the driver brought up to the store first. `None`
    /// while `r` is down.
    fn session_decide(
        &mut self,
        c: usize,
        r: usize,
        mark: &BTreeMap<RegionId, u64>,
    ) -> Option<(SessionCheck, Vec<PeerSession>)> {
        let me = &self.ids[r];
        let token = &self.sessions[c].token;
        let node = self.regions[r].node.as_mut()?;
        if token.is_empty() {
            return Some((SessionCheck::Satisfied, Vec::new()));
        }
        let local = node.store.replication_view();
        node.driver.sync(&local);
        let peers = node.driver.core().session_peers(mark);
        let issued = node.store.visible_applied().get(me);
        let decision = session::check(token, me, &node.store.applied(), issued, &peers);
        Some((decision, peers))
    }

    /// One look of the token check at a read (`first`: when it arrives; later: while it waits),
    /// and the read itself if it is served.
    fn session_look(
        &mut self,
        c: usize,
        r: usize,
        key: &str,
        asked_at_ms: u64,
        mark: &BTreeMap<RegionId, u64>,
        first: bool,
    ) -> SessionRead {
        let Some((decision, peers)) = self.session_decide(c, r, mark) else {
            return SessionRead::Down;
        };
        let check_on = self.opts.session_check;
        let code = match &decision {
            SessionCheck::Satisfied => {
                if first {
                    self.stats.session_reads_served += 1;
                } else {
                    self.stats.session_reads_waited += 1;
                }
                0
            }
            SessionCheck::Behind { .. } => {
                if first {
                    self.stats.session_reads_behind += 1;
                    if !check_on {
                        self.stats.session_reads_unchecked += 1;
                    }
                }
                1
            }
            SessionCheck::Impossible { .. } => {
                self.stats.session_reads_impossible += 1;
                // The heartbeat proof counts heartbeats, so a clock stepped back (a skew fault
                // ending) cannot fake it: any verdict on a genuine token is a violation.
                let high = self.regions[r].clock_high_ms;
                if !check_on {
                    self.stats.session_reads_unchecked += 1;
                } else {
                    let token = &self.sessions[c].token;
                    if let Err(v) = check::session_verdict(
                        c,
                        &self.ids[r],
                        token,
                        &decision,
                        asked_at_ms,
                        high,
                        &peers,
                    ) {
                        self.record(v);
                    }
                }
                2
            }
        };
        self.trace.ev(&[
            kind::SESSION_READ,
            self.now,
            c as u64,
            r as u64,
            hash_bytes(key.as_bytes()),
            code,
            asked_at_ms,
        ]);
        self.trace.line(self.now, || {
            format!(
                "session client {c} reads {key} at {} with token {} (asked at {asked_at_ms}): {decision:?}",
                self.ids[r],
                self.sessions[c].token.seen()
            )
        });
        match decision {
            SessionCheck::Satisfied => self.session_serve(c, r, key),
            _ if !check_on => self.session_serve(c, r, key),
            SessionCheck::Behind { .. } => SessionRead::Behind,
            SessionCheck::Impossible { .. } => SessionRead::Impossible,
        }
    }

    /// Serves client `c`'s read of `key` at `r`: reads the key, judges the state (invariant 10),
    /// then answers as the server does: the token merged with the region's visible applied vector
    /// (read after the key).
    fn session_serve(&mut self, c: usize, r: usize, key: &str) -> SessionRead {
        let me = self.ids[r].clone();
        let now = self.now;
        let Some(node) = self.regions[r].node.as_ref() else {
            return SessionRead::Down;
        };
        let state = match node.store.get(SESSIONS, key.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                self.record(Violation::new(
                    Invariant::Harness,
                    format!("session read of {key} at {me} failed: {e}"),
                ));
                return SessionRead::Down;
            }
        };
        let visible = node.store.visible_applied();
        let applied = node.store.applied();
        let client = &self.sessions[c];
        let case = SessionReadCase {
            client: c,
            region: &me,
            key: key.as_bytes(),
            state: state.as_ref(),
            wrote: client.wrote.get(key.as_bytes()),
            read: client.read.get(key.as_bytes()),
            token: &client.token,
            applied: &applied,
        };
        if let Err(v) = check::session_read(&case, &self.history) {
            self.record(v);
        }
        let lww = match &state {
            Some(KeyState::Lww(reg)) => Some(SessionSeen {
                ts: reg.ts,
                origin: reg.origin.clone(),
                deleted: reg.value.is_none(),
                at: me.clone(),
                at_ms: now,
            }),
            _ => None,
        };
        self.trace.ev(&[
            kind::SESSION_READ,
            now,
            c as u64,
            r as u64,
            lww.as_ref().map_or(0, |s| s.ts.wall_ms),
            lww.as_ref().map_or(0, |s| u64::from(s.ts.logical)),
        ]);
        self.trace.line(now, || {
            format!(
                "session client {c} read {key} at {me}: {}",
                lww.as_ref().map_or("absent".to_string(), |s| s.to_string())
            )
        });
        let client = &mut self.sessions[c];
        client.token.merge_vector(&visible);
        if let Some(seen) = lww {
            keep_newest(&mut client.read, key.as_bytes(), seen);
        }
        SessionRead::Served(state)
    }

    // ----- the random workload -----

    fn session_gap(&mut self) -> u64 {
        let (lo, hi) = self.opts.session_gap_ms;
        self.session_rng.random_range(lo..=hi)
    }

    /// Starts every session client of the run (chaos and calm phases).
    pub(super) fn start_session_clients(&mut self) {
        for c in 0..self.opts.session_clients {
            self.client(c);
            let gap = self.session_gap();
            self.schedule(gap, Event::Session(c));
        }
    }

    /// Where a session client sends a write: a random running region; in leased topologies
    /// mostly the primary a random running region's fence names (as a router would).
    fn session_write_region(&mut self, up: &[usize]) -> usize {
        let leased = self
            .opts
            .fencing
            .as_ref()
            .is_some_and(|f| f.topology.leased());
        let asked = up[self.session_rng.random_range(0..up.len())];
        let to_primary = self.session_rng.random_range(0..100u32) < 80;
        if leased && to_primary {
            let holder = self
                .fence(asked)
                .and_then(|f| f.holder().cloned())
                .and_then(|h| self.index_of(&h))
                .filter(|&h| self.is_up(h));
            if let Some(h) = holder {
                return h;
            }
        }
        asked
    }

    /// Session client `c`'s next operation: a write of its own key or the shared one, or a read
    /// of its own key, the shared one, another client's or one the random writes use.
    pub(super) fn on_session_op(&mut self, c: usize) {
        if !self.writing {
            return;
        }
        let up: Vec<usize> = (0..self.regions.len()).filter(|&r| self.is_up(r)).collect();
        if up.is_empty() {
            let gap = self.session_gap();
            self.schedule(gap, Event::Session(c));
            return;
        }
        let rng = &mut self.session_rng;
        if rng.random_range(0..100u32) < 30 {
            let key = if rng.random_range(0..100u32) < 70 {
                session_key(c)
            } else {
                SHARED_SESSION_KEY.to_string()
            };
            let op = if rng.random_range(0..100u32) < 85 {
                WriteOp::LwwPut {
                    key,
                    value: format!("c{c}@{}", self.now),
                }
            } else {
                WriteOp::LwwDelete { key }
            };
            let r = self.session_write_region(&up);
            // Refusals (fencing) are expected: nothing acknowledged, the token stays.
            let _ = self.session_write(c, r, &op);
        } else {
            let pick = rng.random_range(0..100u32);
            let clients = self.opts.session_clients.max(1);
            let key = if pick < 45 {
                session_key(c)
            } else if pick < 65 {
                SHARED_SESSION_KEY.to_string()
            } else if pick < 75 {
                session_key(rng.random_range(0..clients))
            } else {
                format!("s{}", rng.random_range(0..5u32))
            };
            let r = up[rng.random_range(0..up.len())];
            self.set_clocks();
            let asked_at_ms = self.local_ms(r);
            let mark = self.session_mark(r);
            let wait = self.opts.session_wait_ms;
            match self.session_look(c, r, &key, asked_at_ms, &mark, true) {
                SessionRead::Behind if wait > 0 => {
                    self.client(c).waiting = Some(Waiting {
                        r,
                        key,
                        asked_at_ms,
                        mark,
                        incarnation: self.regions[r].incarnation,
                        until: self.now + wait,
                    });
                    // Its next operation follows the answer.
                    self.schedule(SESSION_RECHECK_MS.min(wait), Event::SessionRecheck(c));
                    return;
                }
                SessionRead::Behind => self.stats.session_reads_stale += 1,
                _ => {}
            }
        }
        let gap = self.session_gap();
        self.schedule(gap, Event::Session(c));
    }

    /// Session client `c`'s waiting read looks again: served, judged forged, still behind (waits
    /// on until its time is up, then `ATOLL-STALE`), or its region crashed meanwhile.
    pub(super) fn on_session_recheck(&mut self, c: usize) {
        let Some(w) = self.sessions.get_mut(c).and_then(|s| s.waiting.take()) else {
            return;
        };
        self.set_clocks();
        let alive = self.is_up(w.r) && self.regions[w.r].incarnation == w.incarnation;
        let out = if alive {
            self.session_look(c, w.r, &w.key, w.asked_at_ms, &w.mark, false)
        } else {
            SessionRead::Down
        };
        match out {
            SessionRead::Behind if self.now < w.until => {
                let next = SESSION_RECHECK_MS.min(w.until - self.now);
                self.client(c).waiting = Some(w);
                self.schedule(next, Event::SessionRecheck(c));
                return;
            }
            SessionRead::Behind | SessionRead::Down => self.stats.session_reads_stale += 1,
            SessionRead::Served(_) | SessionRead::Impossible => {}
        }
        if self.writing {
            let gap = self.session_gap();
            self.schedule(gap, Event::Session(c));
        }
    }
}
