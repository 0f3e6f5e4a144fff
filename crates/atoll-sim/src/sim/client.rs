//! Client writes and the oracle: every acknowledged write is recorded in the [`History`] the
//! checkers read; the random workload.

use super::*;

impl Sim {
    /// A client write at region `r`, recorded in the history if acknowledged.
    pub fn write(&mut self, r: usize, op: &WriteOp) -> Result<WriteOutcome, AtollError> {
        self.set_clocks();
        let now = self.now;
        let skewed = self.regions[r].skew_ms > self.opts.max_clock_offset_ms as i64;
        let me = self.ids[r].clone();
        let (ks, key) = op.target();
        self.history
            .keys
            .insert((ks.to_string(), key.as_bytes().to_vec()));
        if self.joining(r) && self.regions[r].node.is_some() {
            // The server's write gate (`Membership::permit`): nothing is written.
            self.stats.joiner_writes_refused += 1;
            return Err(AtollError::Joining(format!("{me} is not admitted yet")));
        }
        let Some(node) = self.regions[r].node.as_mut() else {
            return Err(AtollError::ShuttingDown);
        };
        let pre = node.store.get(ks, key.as_bytes())?;
        let seen_vv = node.store.applied();
        let pre_mvr = match &pre {
            Some(KeyState::Mvr(m)) => Some(m.clone()),
            _ => None,
        };
        let read_ctx = || pre_mvr.as_ref().map(|m| m.ctx.clone()).unwrap_or_default();
        let (intent, client_ctx) = match op {
            WriteOp::LwwPut { value, .. } => (
                Intent::Put {
                    value: value.as_bytes().to_vec(),
                    context: None,
                    ttl: atoll_core::op::Ttl::Default,
                },
                None,
            ),
            WriteOp::LwwDelete { .. } => (Intent::Delete { context: None }, None),
            WriteOp::LwwPutTtl { value, ttl_ms, .. } => (
                Intent::Put {
                    value: value.as_bytes().to_vec(),
                    context: None,
                    ttl: atoll_core::op::Ttl::After(*ttl_ms),
                },
                None,
            ),
            WriteOp::LwwExpire { ttl_ms, .. } => (
                Intent::Expire {
                    ttl: ttl_ms.map(atoll_core::op::Ttl::After),
                },
                None,
            ),
            WriteOp::MvrPut {
                value,
                with_context,
                ttl_ms,
                ..
            } => {
                let ctx = with_context.then(read_ctx);
                (
                    Intent::Put {
                        value: value.as_bytes().to_vec(),
                        context: ctx.clone(),
                        ttl: ttl_ms
                            .map_or(atoll_core::op::Ttl::Default, atoll_core::op::Ttl::After),
                    },
                    ctx,
                )
            }
            WriteOp::MvrDelete { .. } => {
                let ctx = read_ctx();
                (
                    Intent::Delete {
                        context: Some(ctx.clone()),
                    },
                    Some(ctx),
                )
            }
            WriteOp::CounterAdd { delta, .. } => (Intent::CounterAdd { delta: *delta }, None),
            WriteOp::Admit { cost, .. } => (Intent::Admit { cost: *cost }, None),
            WriteOp::SetUpdate { add, remove, .. } => (
                Intent::SetUpdate {
                    add: add.clone(),
                    remove: remove.clone(),
                },
                None,
            ),
        };
        let res = node.store.write(ks, key.as_bytes(), intent);
        let out = match res {
            Ok(out) => out,
            Err(e) if fencing::is_fencing_refusal(&e) => {
                // Refused by the fencing gate at the stamping instant: not acknowledged.
                self.history.refused_fencing += 1;
                self.stats.writes_refused_fencing += 1;
                self.trace.ev(&[
                    kind::WRITE,
                    now,
                    r as u64,
                    op.code(),
                    hash_bytes(key.as_bytes()),
                    1,
                ]);
                self.trace.line(now, || {
                    format!("write at {me}: {op:?} refused by fencing: {e}")
                });
                return Err(e);
            }
            Err(e) => {
                if matches!(e, AtollError::RateLimited { .. }) {
                    self.stats.rate_denied += 1;
                }
                self.history.rejected += 1;
                self.stats.writes_rejected += 1;
                self.trace.ev(&[
                    kind::WRITE,
                    now,
                    r as u64,
                    op.code(),
                    hash_bytes(key.as_bytes()),
                    0,
                ]);
                self.trace
                    .line(now, || format!("write at {me}: {op:?} refused: {e}"));
                return Err(e);
            }
        };
        // Fenced runs: the epoch the store stamped on the operation-log entry.
        let stamped = if self.fen.is_some() {
            Some(
                node.store
                    .oplog(&me, out.seq, 1)
                    .ok()
                    .and_then(|v| v.first().map(|e| e.epoch)),
            )
        } else {
            None
        };
        self.stats.writes_acked += 1;
        match stamped {
            Some(Some(epoch)) => self.fencing_on_ack(r, ks, out.seq, epoch),
            Some(None) => self.record(Violation::new(
                Invariant::Harness,
                format!(
                    "the acknowledged write {me}:{} is not in its oplog",
                    out.seq
                ),
            )),
            None => {}
        }
        if skewed {
            self.history.skewed_writes.push((me.clone(), out.seq));
        }
        let key_b = key.as_bytes().to_vec();
        match op {
            WriteOp::LwwPut { .. }
            | WriteOp::LwwDelete { .. }
            | WriteOp::LwwPutTtl { .. }
            | WriteOp::LwwExpire { .. } => {
                // What the write wrote: its own register is the state's winner (an lww write
                // is newer than everything its region holds).
                let (value, expires_ms) = match &out.state {
                    KeyState::Lww(reg) if reg.ts == out.ts && reg.origin == me => {
                        (reg.value.clone(), reg.expires_ms)
                    }
                    other => {
                        self.record(Violation::new(
                            Invariant::Harness,
                            format!("lww write {me}:{} left the state {other:?}", out.seq),
                        ));
                        return Ok(out);
                    }
                };
                let expected = match op {
                    WriteOp::LwwPut { value, .. } => Some((Some(value.as_bytes()), None)),
                    WriteOp::LwwDelete { .. } => Some((None, None)),
                    WriteOp::LwwPutTtl { value, ttl_ms, .. } => {
                        Some((Some(value.as_bytes()), Some(out.ts.wall_ms + ttl_ms)))
                    }
                    WriteOp::LwwExpire { ttl_ms, .. } => {
                        // The value it kept is the one the region held (read just before).
                        let held = match &pre {
                            Some(KeyState::Lww(reg)) => reg.value.as_deref(),
                            _ => None,
                        };
                        Some((held, ttl_ms.map(|t| out.ts.wall_ms + t)))
                    }
                    _ => None,
                };
                if let Some((v, e)) = expected
                    && (value.as_deref() != v || expires_ms != e)
                {
                    self.record(Violation::new(
                        Invariant::Expiry,
                        format!(
                            "{op:?} at {me} (ts {}) stored value {:?} expiring {expires_ms:?}, expected {:?} expiring {e:?}",
                            out.ts,
                            value.as_deref().map(String::from_utf8_lossy),
                            v.map(String::from_utf8_lossy)
                        ),
                    ));
                }
                self.history.lww.push(LwwWrite {
                    key: key_b,
                    origin: me.clone(),
                    seq: out.seq,
                    ts: out.ts,
                    value,
                    expires_ms,
                    seen: seen_vv,
                    at_ms: now,
                });
            }
            WriteOp::MvrPut { .. } | WriteOp::MvrDelete { .. } => {
                let value = match op {
                    WriteOp::MvrPut { value, .. } => Some(value.as_bytes().to_vec()),
                    _ => None,
                };
                let mine = match &out.state {
                    KeyState::Mvr(m) => m
                        .siblings
                        .iter()
                        .find(|s| s.dot.region == me && s.ts == out.ts)
                        .map(|s| (s.dot.clone(), s.expires_ms)),
                    _ => None,
                };
                let Some((dot, expires_ms)) = mine else {
                    self.record(Violation::new(
                        Invariant::Harness,
                        format!("mvr write {me}:{} left no sibling of its own", out.seq),
                    ));
                    return Ok(out);
                };
                let want = match op {
                    WriteOp::MvrPut {
                        ttl_ms: Some(t), ..
                    } => Some(out.ts.wall_ms + t),
                    _ => None,
                };
                if expires_ms != want {
                    self.record(Violation::new(
                        Invariant::Expiry,
                        format!(
                            "{op:?} at {me} (ts {}) stamped its sibling {dot} expiring {expires_ms:?}, expected {want:?}",
                            out.ts
                        ),
                    ));
                }
                // What the write supersedes: the client's context and the delete markers the
                // region held (see `atoll_core::op::prepare`).
                let mut seen: CausalContext = client_ctx.unwrap_or_default();
                for s in pre_mvr.iter().flat_map(|m| &m.siblings) {
                    if s.value.is_none() {
                        seen.insert(s.dot.clone());
                    }
                }
                self.history.mvr.push(MvrWrite {
                    key: key_b,
                    origin: me.clone(),
                    seq: out.seq,
                    dot,
                    value,
                    expires_ms,
                    seen,
                });
            }
            WriteOp::Admit { cost, .. } => {
                let window_ms = match op {
                    WriteOp::Admit { split: true, .. } => crate::model::QUOTA_SPLIT_WINDOW_MS,
                    _ => crate::model::QUOTA_WINDOW_MS,
                };
                self.stats.rate_admitted += 1;
                self.history.admits.push(crate::model::AdmitWrite {
                    keyspace: ks,
                    key: key_b,
                    origin: me.clone(),
                    seq: out.seq,
                    window: atoll_core::crdt::ratewindow::RateWindows::window_of(
                        window_ms,
                        out.ts.wall_ms,
                    ),
                    cost: *cost,
                });
            }
            WriteOp::CounterAdd { delta, .. } => self.history.counters.push(CounterWrite {
                key: key_b,
                origin: me.clone(),
                seq: out.seq,
                delta: *delta,
            }),
            WriteOp::SetUpdate { add, remove, .. } => {
                let pre_set = match &pre {
                    Some(KeyState::Set(s)) => Some(s),
                    _ => None,
                };
                let observed = remove
                    .iter()
                    .chain(add)
                    .map(|e| {
                        (
                            e.clone(),
                            pre_set
                                .map(|s| s.dots(e).cloned().collect::<Vec<Dot>>())
                                .unwrap_or_default(),
                        )
                    })
                    .collect();
                let mut added = Vec::new();
                if let KeyState::Set(s) = &out.state {
                    for e in add {
                        if let Some(d) = s.dots(e).filter(|d| d.region == me).max() {
                            added.push((e.clone(), d.clone()));
                        }
                    }
                }
                self.history.sets.push(SetWrite {
                    key: key_b,
                    origin: me.clone(),
                    seq: out.seq,
                    added,
                    observed,
                });
            }
        }
        self.trace.ev(&[
            kind::WRITE,
            now,
            r as u64,
            op.code(),
            hash_bytes(key.as_bytes()),
            out.seq,
            out.ts.wall_ms,
            u64::from(out.ts.logical),
        ]);
        self.trace.line(now, || {
            format!("write at {me}: {op:?} -> seq {} ts {}", out.seq, out.ts)
        });
        self.log_grew(r);
        Ok(out)
    }

    pub(super) fn on_random_write(&mut self) {
        if !self.writing {
            return;
        }
        let gap = self.write_gap();
        self.schedule(gap, Event::Write);
        let up: Vec<usize> = (0..self.regions.len()).filter(|&r| self.is_up(r)).collect();
        if up.is_empty() {
            return;
        }
        let r = match self.believed_primary() {
            Some(p) => p,
            None => up[self.rng.random_range(0..up.len())],
        };
        let op = self.random_op();
        // Refusals (sibling limit) are expected and recorded; nothing else to do.
        let _ = self.write(r, &op);
    }

    pub(super) fn random_op(&mut self) -> WriteOp {
        self.write_counter += 1;
        let c = self.write_counter;
        let rng = &mut self.rng;
        let roll = rng.random_range(0..100u32);
        if roll < 30 {
            let key = format!("s{}", rng.random_range(0..5u32));
            let kind = rng.random_range(0..100u32);
            if kind < 50 {
                WriteOp::LwwPut {
                    key,
                    value: format!("v{c}"),
                }
            } else if kind < 65 {
                // Expiring keys: short enough to expire during chaos, under partitions,
                // crashes and clock faults, and to be collected.
                WriteOp::LwwPutTtl {
                    key,
                    value: format!("v{c}"),
                    ttl_ms: rng.random_range(200..=5_000u64),
                }
            } else if kind < 75 {
                let ttl_ms =
                    (rng.random_range(0..3u32) > 0).then(|| rng.random_range(200..=5_000u64));
                WriteOp::LwwExpire { key, ttl_ms }
            } else {
                WriteOp::LwwDelete { key }
            }
        } else if roll < 50 {
            let key = format!("c{}", rng.random_range(0..4u32));
            let kind = rng.random_range(0..100u32);
            // A quarter of the puts expire: siblings expire, are collected, and a later write
            // with or without the context meets what is left.
            let ttl_ms = (rng.random_range(0..4u32) == 0).then(|| rng.random_range(200..=5_000u64));
            if kind < 55 {
                WriteOp::MvrPut {
                    key,
                    value: format!("v{c}"),
                    with_context: true,
                    ttl_ms,
                }
            } else if kind < 85 {
                WriteOp::MvrPut {
                    key,
                    value: format!("v{c}"),
                    with_context: false,
                    ttl_ms,
                }
            } else {
                WriteOp::MvrDelete { key }
            }
        } else if roll < 58 {
            WriteOp::CounterAdd {
                key: format!("r{}", rng.random_range(0..3u32)),
                delta: rng.random_range(-5..=10i64),
            }
        } else if roll < 80 {
            // One key per rate-limit keyspace, often enough to reach its limit in a window.
            WriteOp::Admit {
                key: "q0".to_string(),
                cost: rng.random_range(1..=3u64),
                split: rng.random_range(0..2u32) == 0,
            }
        } else {
            let key = format!("f{}", rng.random_range(0..3u32));
            let e = |rng: &mut SimRng| format!("e{}", rng.random_range(0..6u32));
            let kind = rng.random_range(0..100u32);
            let (add, remove) = if kind < 55 {
                (vec![e(rng)], vec![])
            } else if kind < 90 {
                (vec![], vec![e(rng)])
            } else {
                (vec![e(rng)], vec![e(rng)])
            };
            WriteOp::SetUpdate { key, add, remove }
        }
    }
}
