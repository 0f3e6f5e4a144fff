//! Test support: a toy state machine, an in-memory transport whose links can be cut one direction
//! at a time (refusing, or swallowing messages), and a cluster of members started in this process, each with its own data
//! directory.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atoll_control::{
    ControlGroup, ControlOptions, ControlTiming, Members, NodeId, StateMachine, Transport,
    TransportError,
};
use tokio::time::Instant;

/// A counter and a register: every command increments `count`, adds its value (8 bytes little
/// endian, else 0) to `sum` and becomes `last`. The response is the new count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
    pub sum: u64,
    pub last: Vec<u8>,
}

impl Counter {
    pub fn decode(state: &[u8]) -> Result<Self, String> {
        if state.len() < 16 {
            return Err(format!("counter state is {} bytes, needs 16", state.len()));
        }
        let (c, rest) = state.split_at(8);
        let (s, last) = rest.split_at(8);
        let u = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        Ok(Self {
            count: u(c),
            sum: u(s),
            last: last.to_vec(),
        })
    }
}

impl StateMachine for Counter {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        self.count += 1;
        let v = <[u8; 8]>::try_from(command).map_or(0, u64::from_le_bytes);
        self.sum = self.sum.wrapping_add(v);
        self.last = command.to_vec();
        self.count.to_le_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.count.to_le_bytes().to_vec();
        out.extend_from_slice(&self.sum.to_le_bytes());
        out.extend_from_slice(&self.last);
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        *self = Self::decode(snapshot)?;
        Ok(())
    }
}

pub fn cmd(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub fn count_of(response: &[u8]) -> u64 {
    u64::from_le_bytes(response.try_into().expect("8-byte response"))
}

/// The members' network: who is running, and which directions are cut.
#[derive(Default)]
pub struct Net {
    nodes: Mutex<HashMap<NodeId, ControlGroup>>,
    cut: Mutex<BTreeSet<(NodeId, NodeId)>>,
    stalled: Mutex<BTreeSet<(NodeId, NodeId)>>,
}

impl Net {
    pub fn register(&self, g: &ControlGroup) {
        self.nodes.lock().unwrap().insert(g.node_id(), g.clone());
    }

    pub fn unregister(&self, id: NodeId) {
        self.nodes.lock().unwrap().remove(&id);
    }

    /// Cuts `from -> to` only.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.cut.lock().unwrap().insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Cuts `a` from every one of `others`, both ways.
    pub fn isolate(&self, a: NodeId, others: impl IntoIterator<Item = NodeId>) {
        for b in others {
            if b != a {
                self.cut(a, b);
            }
        }
    }

    /// Stalls both directions between `a` and `b`, as a WAN partition does: a call is neither
    /// refused nor answered; it is held (and so is an answer) until the link heals.
    pub fn stall(&self, a: NodeId, b: NodeId) {
        let mut s = self.stalled.lock().unwrap();
        s.insert((a, b));
        s.insert((b, a));
    }

    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
        self.stalled.lock().unwrap().clear();
    }

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.lock().unwrap().contains(&(from, to))
    }

    fn is_stalled(&self, from: NodeId, to: NodeId) -> bool {
        self.stalled.lock().unwrap().contains(&(from, to))
    }

    /// Holds a message on `from -> to` while that direction is stalled.
    async fn held(&self, from: NodeId, to: NodeId) {
        while self.is_stalled(from, to) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn transport(self: &Arc<Self>, me: NodeId) -> Arc<dyn Transport> {
        Arc::new(MemTransport {
            me,
            net: self.clone(),
        })
    }
}

struct MemTransport {
    me: NodeId,
    net: Arc<Net>,
}

#[async_trait::async_trait]
impl Transport for MemTransport {
    async fn call(&self, to: NodeId, rpc: &str, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        if self.net.is_cut(self.me, to) {
            return Err(TransportError::Unreachable(format!(
                "link {} -> {to} is cut",
                self.me
            )));
        }
        self.net.held(self.me, to).await;
        let target = self.net.nodes.lock().unwrap().get(&to).cloned();
        let Some(target) = target else {
            return Err(TransportError::Unreachable(format!("{to} is not running")));
        };
        let answer = target.handle(self.me, rpc, body).await;
        self.net.held(to, self.me).await;
        if self.net.is_cut(to, self.me) {
            return Err(TransportError::Failed(format!(
                "the answer was lost: link {to} -> {} is cut",
                self.me
            )));
        }
        answer.map_err(|e| TransportError::from(&e))
    }
}

/// Fast timing for tests in one process (a debug build on a loaded 2-core machine included).
pub fn test_timing() -> ControlTiming {
    ControlTiming {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(400),
        election_max: Duration::from_millis(800),
        propose_timeout: Duration::from_secs(3),
        snapshot_timeout: Duration::from_secs(3),
    }
}

/// Members started in this process, each with its own data directory under one temporary
/// directory.
pub struct Cluster {
    pub net: Arc<Net>,
    pub members: Members,
    pub groups: BTreeMap<NodeId, ControlGroup>,
    dir: tempfile::TempDir,
    tweak: fn(&mut ControlOptions),
}

impl Cluster {
    /// Starts every member named in `names` (ids 1, 2, ...), with `tweak` applied to each one's
    /// options after the test timing.
    pub async fn start(names: &[&str], tweak: fn(&mut ControlOptions)) -> Self {
        let members: Members = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as NodeId + 1, n.to_string()))
            .collect();
        let mut c = Self {
            net: Arc::new(Net::default()),
            members,
            groups: BTreeMap::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            tweak,
        };
        let ids: Vec<NodeId> = c.members.keys().copied().collect();
        for id in ids {
            c.start_member(id).await.expect("member starts");
        }
        c
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("member-{id}"))
    }

    pub fn options(&self, id: NodeId) -> ControlOptions {
        let mut o = ControlOptions::new(id, self.members.clone(), self.data_dir(id));
        o.timing = test_timing();
        (self.tweak)(&mut o);
        o
    }

    /// Starts member `id` from its data directory (new or not) with a fresh state machine.
    pub async fn start_member(
        &mut self,
        id: NodeId,
    ) -> Result<ControlGroup, atoll_control::ControlError> {
        let g = ControlGroup::start(
            self.options(id),
            Box::new(Counter::default()),
            self.net.transport(id),
        )
        .await?;
        self.net.register(&g);
        self.groups.insert(id, g.clone());
        Ok(g)
    }

    /// Stops member `id` (it leaves the network first) and waits until its store is closed.
    pub async fn stop_member(&mut self, id: NodeId) {
        self.net.unregister(id);
        if let Some(g) = self.groups.remove(&id) {
            g.shutdown().await;
        }
    }

    pub fn group(&self, id: NodeId) -> &ControlGroup {
        self.groups.get(&id).expect("member running")
    }

    /// The state member `id` last published.
    pub fn state(&self, id: NodeId) -> Counter {
        let applied = self.group(id).applied();
        let s = applied.borrow();
        Counter::decode(&s.state).expect("counter state")
    }

    /// Waits until the running members among `among` agree on one leader, itself among them and
    /// leading; returns it.
    pub async fn leader_among(&self, among: &[NodeId], within: Duration) -> NodeId {
        let mut found = None;
        wait_for("a leader everyone agrees on", within, || {
            let seen: Vec<_> = among.iter().map(|id| self.group(*id).status()).collect();
            let first = seen[0].leader;
            let agreed = first.is_some()
                && seen.iter().all(|s| s.leader == first)
                && first.is_some_and(|l| among.contains(&l) && self.group(l).status().is_leader);
            if agreed {
                found = first;
            }
            agreed
        })
        .await;
        found.expect("leader")
    }

    pub async fn leader(&self, within: Duration) -> NodeId {
        let all: Vec<NodeId> = self.groups.keys().copied().collect();
        self.leader_among(&all, within).await
    }

    /// Waits until every member in `ids` published a state of `count` commands, and they agree.
    pub async fn converged(&self, ids: &[NodeId], count: u64, within: Duration) {
        wait_for(
            &format!("{ids:?} to apply {count} commands"),
            within,
            || {
                let states: Vec<_> = ids.iter().map(|id| self.state(*id)).collect();
                states.iter().all(|s| s.count == count && *s == states[0])
            },
        )
        .await;
    }

    pub async fn shutdown(&mut self) {
        let ids: Vec<NodeId> = self.groups.keys().copied().collect();
        for id in ids {
            self.stop_member(id).await;
        }
    }
}

/// Polls `cond` until it holds ([`atoll_testkit::wait_until_async`], on tokio's clock, so paused
/// time works); panics with `what` after `within`.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    atoll_testkit::wait_until_async(within, what, || std::future::ready(cond()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `f` and returns its output with how long it took.
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

/// Logs to the test output when `RUST_LOG` is set (for debugging a test).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
