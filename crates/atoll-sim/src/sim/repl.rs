//! The replication executor: carries out each region's `atoll_core::driver` commands over the
//! simulated network (heartbeats, subscription requests, served streams with a window of
//! [`STREAM_WINDOW`] frames), applies admitted batches and runs maintenance with the tombstone
//! checks (`docs/design/replication-driver.md`).

use super::*;

impl Sim {
    pub(super) fn start_region(&mut self, r: usize) -> Result<(), Violation> {
        self.start_region_with_phases(r, 0, 0)
    }

    /// Region `r`'s driver settings: the server's, with this run's intervals, batch size and
    /// the given first-heartbeat and first-maintenance delays.
    pub(super) fn driver_config(&self, hb_phase: u64, maint_phase: u64) -> DriverConfig {
        let mut cfg = DriverConfig::new(
            "sim",
            ReplConfig::new(
                self.opts.heartbeat_interval_ms,
                self.opts.max_clock_offset_ms,
            ),
        );
        cfg.batch_max = self.opts.batch_max;
        cfg.maintenance_interval_ms = self.opts.maintenance_interval_ms;
        cfg.first_heartbeat_after_ms = hb_phase;
        cfg.first_maintenance_after_ms = maint_phase;
        cfg
    }

    pub(super) fn start_region_with_phases(
        &mut self,
        r: usize,
        hb_phase: u64,
        maint_phase: u64,
    ) -> Result<(), Violation> {
        let gate = self.fencing_on_start(r);
        let voters = self.voters();
        let keyspaces = match &self.opts.fencing {
            Some(f) => model::keyspaces_with_read_only(&voters, &f.read_only_keyspaces),
            None => model::keyspaces(&voters),
        };
        let peers = self.peers_of(r);
        let cfg = self.driver_config(hb_phase, maint_phase);
        let now = self.now_of(r);
        let reg = &mut self.regions[r];
        let mut opts = StoreOptions::new(reg.id.clone(), keyspaces);
        opts.gate = gate;
        opts.max_clock_offset_ms = self.opts.max_clock_offset_ms;
        // Durable, as in production: the backend's power-cut model loses what was not synced.
        opts.durable = true;
        let backend: Arc<dyn Backend> = reg.backend.clone();
        let clock: Arc<dyn Clock> = reg.clock.clone();
        let store = Store::open(backend, opts, clock).map_err(|e| {
            Violation::new(
                Invariant::Harness,
                format!("cannot open the store of {}: {e}", reg.id),
            )
        })?;
        // A region that removed the removed region while it was down reads a config without
        // it now: the removal takes effect before its driver starts.
        if let Some((_, gone)) = self
            .removal
            .as_ref()
            .filter(|rm| rm.removed[r])
            .map(|rm| (rm.r, self.ids[rm.r].clone()))
        {
            store.remove_region(&gone, now.wall_ms).map_err(|e| {
                Violation::new(Invariant::Harness, format!("cannot remove {gone}: {e}"))
            })?;
        }
        let local = store.replication_view();
        let driver = ReplDriver::new(reg.id.clone(), peers, cfg, &local, now);
        reg.node = Some(Node {
            store,
            driver,
            tick_at: None,
        });
        reg.applied_since_start = 0;
        reg.incarnation += 1;
        reg.apply_free_at = 0;
        self.reschedule_tick(r);
        Ok(())
    }

    /// Region `r`'s time as its driver reads it: its physical clock, and the virtual time as
    /// the monotonic clock of its timers.
    pub(super) fn now_of(&self, r: usize) -> Now {
        Now {
            wall_ms: self.local_ms(r),
            mono_ms: self.now,
        }
    }

    /// Brings region `r`'s replication core up to its store's committed state (the adapter's
    /// sync before every decision).
    pub(super) fn sync_core(&mut self, r: usize) {
        if let Some(node) = self.regions[r].node.as_mut() {
            let local = node.store.replication_view();
            node.driver.sync(&local);
        }
    }

    /// Runs `f` on region `r`'s driver (if it is up) with its time and store state now, then
    /// carries out the commands it returns.
    pub(super) fn drive(
        &mut self,
        r: usize,
        f: impl FnOnce(&mut ReplDriver, Now, &LocalView) -> Vec<Cmd>,
    ) -> Result<(), Violation> {
        let now = self.now_of(r);
        let Some(node) = self.regions[r].node.as_mut() else {
            return Ok(());
        };
        let local = node.store.replication_view();
        let cmds = f(&mut node.driver, now, &local);
        self.execute(r, cmds)?;
        self.reschedule_tick(r);
        Ok(())
    }

    /// Schedules region `r`'s next driver tick when its driver's next timer is earlier than the
    /// tick already scheduled.
    pub(super) fn reschedule_tick(&mut self, r: usize) {
        let now = self.now;
        let Some(node) = self.regions[r].node.as_mut() else {
            return;
        };
        let wake = node.driver.next_wake().max(now);
        if node.tick_at.is_some_and(|t| t >= now && t <= wake) {
            return;
        }
        node.tick_at = Some(wake);
        self.schedule(wake - now, Event::Tick { r, at: wake });
    }

    pub(super) fn on_tick(&mut self, r: usize, at: u64) -> Result<(), Violation> {
        let due = self.regions[r]
            .node
            .as_ref()
            .is_some_and(|n| n.tick_at == Some(at));
        if !due {
            return Ok(());
        }
        if let Some(n) = self.regions[r].node.as_mut() {
            n.tick_at = None;
        }
        self.drive(r, |d, now, local| d.tick(now, local))
    }

    /// Carries out region `r`'s driver commands, the way the server's adapter does.
    pub(super) fn execute(&mut self, r: usize, cmds: Vec<Cmd>) -> Result<(), Violation> {
        for cmd in cmds {
            match cmd {
                Cmd::SendHeartbeat { to, hb } => {
                    if let Some(p) = self.index_of(&to) {
                        self.send(r, p, Msg::Heartbeat(hb));
                    }
                }
                Cmd::Subscribe { id, peer, request } => {
                    if let Some(p) = self.index_of(&peer) {
                        self.trace.line(self.now, || {
                            format!(
                                "{} subscribes ({id}) to {peer} for {:?} from {}",
                                self.ids[r], request.origins, request.applied
                            )
                        });
                        self.send(r, p, Msg::Subscribe { id, request });
                    }
                }
                Cmd::Unsubscribe { id, peer, reason } => {
                    self.trace.line(self.now, || {
                        format!(
                            "{} closes subscription {id} to {peer}: {reason}",
                            self.ids[r]
                        )
                    });
                    // The connection closes: the peer stops serving it.
                    if let Some(p) = self.index_of(&peer) {
                        self.streams.remove(&(p, r, id));
                    }
                }
                Cmd::Apply { id, peer, entries } => {
                    let from = self.index_of(&peer).unwrap_or(r);
                    let (lo, hi) = self.opts.apply_ms;
                    if hi == 0 {
                        self.finish_apply(r, from, id, entries)?;
                    } else {
                        // The commit takes a while; the subscription's next frames are admitted
                        // meanwhile. Applies of one region commit in the order they were issued.
                        let at = (self.now + self.rng.random_range(lo..=hi))
                            .max(self.regions[r].apply_free_at);
                        self.regions[r].apply_free_at = at;
                        let incarnation = self.regions[r].incarnation;
                        self.schedule(
                            at - self.now,
                            Event::Apply {
                                r,
                                from,
                                id,
                                incarnation,
                                entries,
                            },
                        );
                    }
                }
                Cmd::Maintain { horizon, stable } => {
                    self.maintain_with(r, horizon)?;
                    self.truncate(r, &stable)?;
                }
                Cmd::Bootstrap { donor, reason } if self.joining(r) => {
                    // A region added to the running cluster, not admitted yet: the others
                    // truncated what it needs before they added it.
                    self.join_bootstrap(r, &donor, &reason)?;
                }
                Cmd::Bootstrap { donor, reason } => {
                    // Simulated regions lose nothing they committed (crashes are power cuts of
                    // an fsyncing store): a region sent to bootstrap was cut off by truncation
                    // (an added region, once admitted, included: `ReplCore::admission`).
                    // The run ends here: the region would wait for a snapshot for ever.
                    return Err(Violation::new(
                        Invariant::Truncation,
                        format!(
                            "{} must bootstrap by snapshot from {donor}: {reason}",
                            self.ids[r]
                        ),
                    ));
                }
                Cmd::Notice(n) => self.notice(r, n),
            }
        }
        Ok(())
    }

    pub(super) fn notice(&mut self, r: usize, n: Notice) {
        match n {
            // The joining region's heartbeats reach regions that have not added it yet.
            Notice::HeartbeatRefused {
                from,
                refusal: atoll_core::repl::Refusal::NotAPeer(_),
            } if self.index_of(&from).is_some_and(|j| !self.knows(r, j)) => {}
            // The removed region's heartbeats reach regions that removed it (which tells it).
            Notice::HeartbeatRefused {
                from,
                refusal: atoll_core::repl::Refusal::Removed(_),
            } if self.index_of(&from).is_some_and(|j| !self.knows(r, j)) => {}
            Notice::HeartbeatRefused { from, refusal } => {
                // Every simulated region is honest: a refused heartbeat is a false alarm.
                let v = Violation::new(
                    Invariant::Harness,
                    format!(
                        "{} refused an honest heartbeat of {from}: {refusal}",
                        self.ids[r]
                    ),
                );
                self.record(v);
            }
            Notice::Admitted {
                duplicates,
                gaps,
                held_back,
                ..
            } => {
                self.stats.duplicates += duplicates as u64;
                self.stats.gaps += gaps as u64;
                self.stats.held_back += held_back as u64;
            }
            Notice::SkewBegan { peer, offset_ms } => self.trace.line(self.now, || {
                format!(
                    "{} sees {peer}'s clock ahead by {offset_ms} ms",
                    self.ids[r]
                )
            }),
            Notice::SkewEnded { peer, offset_ms } => self.trace.line(self.now, || {
                format!(
                    "{} sees {peer}'s clock back in bounds ({offset_ms} ms)",
                    self.ids[r]
                )
            }),
            Notice::Rtt { .. } => {}
        }
    }

    /// The joining region `r` loads a snapshot from `donor` (the harness reads it in one go, as
    /// the server's bootstrap task does chunk by chunk; the donor does not move meanwhile), then
    /// tells its driver how it went.
    fn join_bootstrap(
        &mut self,
        r: usize,
        donor: &RegionId,
        reason: &str,
    ) -> Result<(), Violation> {
        self.stats.joiner_bootstraps += 1;
        self.trace.line(self.now, || {
            format!("{} bootstraps from {donor}: {reason}", self.ids[r])
        });
        // Applies issued before the bootstrap began are void: the store refuses them from now on
        // (the server's bootstrap waits for them), and the snapshot replaces what they held.
        self.regions[r].incarnation += 1;
        self.regions[r].apply_free_at = 0;
        let result = match self.index_of(donor) {
            Some(d) if self.net.is_up(r, d) && self.net.is_up(d, r) => self.load_snapshot(r, d),
            _ => Err(format!("{donor} cannot be reached")),
        };
        self.trace.line(self.now, || {
            format!("{} bootstrap from {donor}: {result:?}", self.ids[r])
        });
        self.drive(r, |d, now, _| {
            d.on_bootstrap_done(result, now);
            Vec::new()
        })
    }

    fn load_snapshot(&self, r: usize, d: usize) -> Result<(), String> {
        let (Some(me), Some(donor)) =
            (self.regions[r].node.as_ref(), self.regions[d].node.as_ref())
        else {
            return Err("the donor is down".into());
        };
        if donor.driver.bootstrapping().is_some() || donor.store.bootstrap_progress().is_some() {
            return Err("the donor is bootstrapping".into());
        }
        me.store.bootstrap_begin(false).map_err(|e| e.to_string())?;
        let mut after = me.store.bootstrap_progress().and_then(|p| p.after);
        loop {
            let chunk = donor
                .store
                .snapshot_chunk(after.as_deref(), 64, 1 << 20)
                .map_err(|e| e.to_string())?;
            let next = chunk.next.clone();
            me.store
                .bootstrap_load(chunk.applied, chunk.rows, chunk.next)
                .map_err(|e| e.to_string())?;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let own_floor = me.driver.bootstrap_own_floor();
        me.store
            .raise_clock_floor(me.driver.bootstrap_clock_floor())
            .map_err(|e| e.to_string())?;
        match me.store.bootstrap_finish(own_floor) {
            Ok(_) => Ok(()),
            Err(e @ AtollError::BootstrapBehind(_)) => {
                me.store.bootstrap_begin(true).map_err(|e| e.to_string())?;
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Region `from`'s heartbeat was refused by `to` as coming from a removed region: the
    /// server's answer (`410 ATOLL-REGION-REMOVED` with how many of its writes `to` holds) tells
    /// it, and from then on its store takes no local write.
    fn told_removed(&mut self, from: usize, to: usize) -> Result<(), Violation> {
        let held = self.applied(to).get(&self.ids[from]);
        let at = self.local_ms(from);
        let by = self.ids[to].clone();
        if let Some(node) = self.regions[from].node.as_ref() {
            node.store.mark_removed(&by, at, held).map_err(|e| {
                Violation::new(Invariant::Harness, format!("cannot mark removed: {e}"))
            })?;
            self.stats.removed_told += 1;
        }
        Ok(())
    }

    pub(super) fn index_of(&self, id: &RegionId) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    /// Region `r`'s operation log or applied vector grew: its served streams read on.
    pub(super) fn log_grew(&mut self, r: usize) {
        let keys: Vec<(usize, usize, SubId)> = self
            .streams
            .range((r, 0, 0)..=(r, usize::MAX, SubId::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(s) = self.streams.get_mut(&k) {
                s.wake_at = None;
            }
            self.pump(k);
        }
    }

    /// Runs the stream `key` (publisher, subscriber, id) until it waits, its window is full, or
    /// it breaks.
    pub(super) fn pump(&mut self, key: (usize, usize, SubId)) {
        let (p, r, id) = key;
        // Bounded: each step either sends (at most the window) or reads one origin of a round.
        for _ in 0..1_000 {
            if !self.is_up(p) {
                self.streams.remove(&key);
                return;
            }
            let Some(s) = self.streams.get_mut(&key) else {
                return;
            };
            if s.in_flight >= STREAM_WINDOW || s.wake_at.is_some() {
                return;
            }
            let step = s.st.next(self.now);
            let frame = match step {
                StreamStep::Wait { until_mono_ms } => {
                    s.wake_at = Some(until_mono_ms);
                    let at = until_mono_ms.max(self.now);
                    self.schedule(at - self.now, Event::StreamWake { p, r, id, at });
                    return;
                }
                StreamStep::Heartbeat => {
                    s.st.on_heartbeat_sent(self.now);
                    let to = self.ids[r].clone();
                    let now = self.now_of(p);
                    let Some(node) = self.regions[p].node.as_mut() else {
                        return;
                    };
                    let local = node.store.replication_view();
                    Frame::Heartbeat(node.driver.heartbeat_for(&to, now, &local))
                }
                StreamStep::Read { origin, from, max } => {
                    let Some(node) = self.regions[p].node.as_ref() else {
                        return;
                    };
                    let entries = match node.store.oplog(&origin, from, max) {
                        Ok(e) => e,
                        Err(e) => {
                            let v = Violation::new(
                                Invariant::Harness,
                                format!("oplog read at {} failed: {e}", self.ids[p]),
                            );
                            self.record(v);
                            self.streams.remove(&key);
                            return;
                        }
                    };
                    let Some(s) = self.streams.get_mut(&key) else {
                        return;
                    };
                    match s.st.on_read(entries) {
                        Ok(Some(f)) => {
                            self.stats.batches_sent += 1;
                            f
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            let v = Violation::new(
                                Invariant::Harness,
                                format!("stream of {} to {}: {e}", self.ids[p], self.ids[r]),
                            );
                            self.record(v);
                            self.streams.remove(&key);
                            return;
                        }
                    }
                }
            };
            if self.send(p, r, Msg::Frame { id, frame }) {
                if let Some(s) = self.streams.get_mut(&key) {
                    s.in_flight += 1;
                }
            } else {
                // Lost on a cut link: the connection breaks.
                self.streams.remove(&key);
                return;
            }
        }
    }

    pub(super) fn send(&mut self, from: usize, to: usize, msg: Msg) -> bool {
        let kind = match &msg {
            Msg::Heartbeat(_) => 1,
            Msg::Subscribe { .. } => 2,
            Msg::Frame {
                frame: Frame::Heartbeat(_),
                ..
            } => 3,
            Msg::Frame {
                frame: Frame::Ops(e),
                ..
            } => 100 + e.len() as u64,
            Msg::Frame {
                frame: Frame::Truncated { .. },
                ..
            } => 4,
        };
        if !self.net.is_up(from, to) {
            self.stats.messages_dropped += 1;
            self.trace
                .ev(&[kind::SEND, self.now, from as u64, to as u64, kind, 0]);
            return false;
        }
        let at = self.net.arrival(from, to, self.now, &mut self.rng);
        self.stats.messages_sent += 1;
        self.trace
            .ev(&[kind::SEND, self.now, from as u64, to as u64, kind, at]);
        self.schedule(at - self.now, Event::Deliver { from, to, msg });
        true
    }

    pub(super) fn on_deliver(&mut self, from: usize, to: usize, msg: Msg) -> Result<(), Violation> {
        let stream_key = match &msg {
            Msg::Frame { id, .. } => Some((from, to, *id)),
            _ => None,
        };
        // A delivered frame frees its slot of the window only if the acknowledgement can go
        // back: with the return path cut, a stream stalls after a window's worth of frames, as a
        // TCP connection does.
        if let Some(k) = stream_key
            && self.net.is_up(from, to)
            && self.net.is_up(to, from)
            && let Some(s) = self.streams.get_mut(&k)
        {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        if !self.net.is_up(from, to) || !self.is_up(to) {
            self.stats.messages_dropped += 1;
            self.trace
                .ev(&[kind::DELIVER, self.now, from as u64, to as u64, 0]);
            // A stream whose frame is lost breaks.
            if let Some(k) = stream_key {
                self.streams.remove(&k);
            }
            return Ok(());
        }
        match msg {
            Msg::Heartbeat(hb) => {
                let now = self.now_of(to);
                let Some(node) = self.regions[to].node.as_mut() else {
                    return Ok(());
                };
                let local = node.store.replication_view();
                let taken = node.driver.on_heartbeat(&hb, now, &local);
                self.trace.ev(&[
                    kind::DELIVER,
                    self.now,
                    from as u64,
                    to as u64,
                    1,
                    u64::from(taken.is_ok()),
                ]);
                match taken {
                    Ok(cmds) => {
                        self.execute(to, cmds)?;
                        self.reschedule_tick(to);
                    }
                    Err(refusal) => {
                        if matches!(refusal, atoll_core::repl::Refusal::Removed(_)) {
                            self.told_removed(from, to)?;
                        }
                        self.notice(
                            to,
                            Notice::HeartbeatRefused {
                                from: hb.from,
                                refusal,
                            },
                        )
                    }
                }
            }
            Msg::Subscribe { id, request } => {
                let Some(node) = self.regions[to].node.as_ref() else {
                    return Ok(());
                };
                match node.driver.check_subscription(&request) {
                    Ok(()) => {
                        let st = ServedStream::new(&request, node.driver.config());
                        let key = (to, from, id);
                        self.streams.insert(
                            key,
                            Served {
                                st,
                                in_flight: 0,
                                wake_at: None,
                            },
                        );
                        self.pump(key);
                    }
                    // The joining region asks regions that have not added it yet.
                    Err(_) if !self.knows(to, from) => {}
                    Err(e) => {
                        let v = Violation::new(
                            Invariant::Harness,
                            format!("{} refused an honest subscription: {e}", self.ids[to]),
                        );
                        self.record(v);
                    }
                }
            }
            Msg::Frame { id, frame } => {
                let known = self.regions[to]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.driver.subscriptions().any(|(s, _, _)| s == id));
                if !known {
                    // The subscriber closed it: the connection is gone.
                    self.streams.remove(&(from, to, id));
                    return Ok(());
                }
                self.trace.ev(&[
                    kind::DELIVER,
                    self.now,
                    from as u64,
                    to as u64,
                    match &frame {
                        Frame::Heartbeat(_) => 3,
                        Frame::Ops(e) => 100 + e.len() as u64,
                        Frame::Truncated { .. } => 4,
                    },
                ]);
                self.drive(to, |d, now, local| d.on_frame(id, frame, now, local))?;
                // The window opened a slot.
                self.pump((from, to, id));
            }
        }
        Ok(())
    }

    /// An apply issued by region `r`'s subscription `id` commits now, unless `r` crashed since it
    /// was issued (then it is lost, as a commit the crash cut short).
    pub(super) fn on_apply(
        &mut self,
        r: usize,
        from: usize,
        id: SubId,
        incarnation: u64,
        entries: Vec<OpEntry>,
    ) -> Result<(), Violation> {
        if self.regions[r].node.is_none() || self.regions[r].incarnation != incarnation {
            return Ok(());
        }
        self.finish_apply(r, from, id, entries)?;
        self.reschedule_tick(r);
        Ok(())
    }

    /// Applies the batch and reports to the driver, as the server's commit callback does.
    fn finish_apply(
        &mut self,
        r: usize,
        from: usize,
        id: SubId,
        entries: Vec<OpEntry>,
    ) -> Result<(), Violation> {
        let open = self.regions[r]
            .node
            .as_ref()
            .is_some_and(|n| n.driver.subscriptions().any(|(s, _, _)| s == id));
        let report = self.apply_batch(from, r, entries)?;
        if report.gaps > 0 && open {
            // The simulated store never fails a commit. A subscription's applies reach it in the
            // order the driver admitted them, and an earlier one that was refused (clock skew)
            // or gapped ends the subscription before this one commits; so while it is open,
            // none of its entries can be ahead of the store. A gap here is an executor or driver
            // bug (the server would recover by resubscribing, but slowly and silently).
            self.record(Violation::new(
                Invariant::Harness,
                format!(
                    "{} skipped {} replicated entries beyond a gap of an open subscription: applies reached the store out of order",
                    self.ids[r], report.gaps
                ),
            ));
        }
        let now = self.now_of(r);
        if let Some(node) = self.regions[r].node.as_mut() {
            let local = node.store.replication_view();
            let more = node.driver.on_applied(id, &report, now, &local);
            self.execute(r, more)?;
        }
        self.log_grew(r);
        Ok(())
    }

    /// Applies an admitted batch at `to` (received from `from`), checking the clock bound and,
    /// in fenced runs, the epochs; returns what the driver is told.
    pub(super) fn apply_batch(
        &mut self,
        from: usize,
        to: usize,
        entries: Vec<OpEntry>,
    ) -> Result<ApplyReport, Violation> {
        let local = self.local_ms(to);
        let max_off = self.opts.max_clock_offset_ms;
        let me = self.ids[to].clone();
        let Some(node) = self.regions[to].node.as_mut() else {
            return Ok(ApplyReport {
                failed: Some("down".into()),
                ..ApplyReport::default()
            });
        };
        let before = node.store.applied();
        let out = match node
            .store
            .apply_remote_from(self.ids[from].clone(), entries.clone())
        {
            Ok(out) => out,
            // In flight from the removed region when the removal took effect: refused whole.
            Err(e @ AtollError::RegionRemoved(_)) => {
                self.stats.removed_applies_refused += 1;
                return Ok(ApplyReport {
                    failed: Some(e.to_string()),
                    ..ApplyReport::default()
                });
            }
            Err(e) => {
                return Err(Violation::new(
                    Invariant::Harness,
                    format!("apply_remote at {me} failed: {e}"),
                ));
            }
        };
        let after = node.store.applied();
        for e in &entries {
            if e.seq > before.get(&e.origin)
                && e.seq <= after.get(&e.origin)
                && let Err(v) = check::apply_within_clock_bound(&me, e, local, max_off)
            {
                self.record(v);
            }
        }
        if self.fen.is_some() {
            let merged: Vec<&OpEntry> = entries
                .iter()
                .filter(|e| e.seq > before.get(&e.origin) && e.seq <= after.get(&e.origin))
                .filter(|e| {
                    !out.late
                        .iter()
                        .any(|(o, s, _)| *o == e.origin && *s == e.seq)
                })
                .collect();
            self.fencing_on_applied(to, &out.late, &entries, &merged);
        }
        self.regions[to].applied_since_start += out.applied as u64;
        self.stats.entries_applied += out.applied as u64;
        self.stats.conflicts_recorded += out.conflicts.len() as u64;
        if !out.skewed.is_empty() {
            self.stats.store_refused_skewed += 1;
        }
        self.sync_core(to);
        self.trace.ev(&[
            kind::APPLY,
            self.now,
            from as u64,
            to as u64,
            out.applied as u64,
            out.skewed.len() as u64,
            out.conflicts.len() as u64,
        ]);
        self.trace.line(self.now, || {
            format!(
                "{me} applied {} from {} (refused skewed {:?}, conflicts {}), applied now {after}",
                out.applied,
                self.ids[from],
                out.skewed
                    .iter()
                    .map(|(o, _)| o.as_str())
                    .collect::<Vec<_>>(),
                out.conflicts.len()
            )
        });
        Ok(ApplyReport {
            failed: None,
            skewed: out.skewed.iter().map(|(o, _)| o.clone()).collect(),
            gaps: out.gaps,
        })
    }

    /// One maintenance pass at region `r` now, with the horizon its core computes now (as the
    /// driver's `Maintain` command does). Returns how many tombstones were collected.
    pub fn maintain_now(&mut self, r: usize) -> Result<usize, Violation> {
        if !self.is_up(r) {
            return Ok(0);
        }
        self.set_clocks();
        self.sync_core(r);
        let local = self.local_ms(r);
        let horizon = self.regions[r]
            .node
            .as_ref()
            .and_then(|n| n.driver.core().tombstone_horizon_ms(local));
        self.maintain_with(r, horizon)
    }

    /// Truncates region `r`'s operation log up to the driver's stable points, with no
    /// retention: as early as the rule allows, so a wrong stable point shows up as a region
    /// that can no longer catch up (invariant 11).
    fn truncate(
        &mut self,
        r: usize,
        stable: &std::collections::BTreeMap<atoll_core::RegionId, u64>,
    ) -> Result<(), Violation> {
        let Some(node) = self.regions[r].node.as_ref() else {
            return Ok(());
        };
        let n = node
            .store
            .truncate_oplog(stable, 0, 10_000)
            .map_err(|e| Violation::new(Invariant::Harness, e.to_string()))?;
        self.stats.oplog_truncated += n as u64;
        if n > 0 {
            self.trace.line(self.now, || {
                format!("{} truncated {n} log entries up to {stable:?}", self.ids[r])
            });
        }
        Ok(())
    }

    /// Where every region's cursor is now (crashed regions: where their backend stands).
    /// Every region's cursor, as region `at` must respect them: a region it has not added to its
    /// peers yet (a region joining the running cluster) is none of its concern, as its horizon
    /// and truncation do not wait for it (`docs/design/adding-regions.md`: the joiner's writes
    /// are stamped above anything collected without it).
    fn cursors(&self, at: usize) -> Vec<CursorAt> {
        (0..self.regions.len())
            .filter(|&q| self.knows(at, q))
            .map(|q| CursorAt {
                region: self.ids[q].clone(),
                applied: self.applied(q),
                up: self.is_up(q),
            })
            .collect()
    }

    /// A maintenance pass at region `r` below `horizon`: collects the lww tombstones below it,
    /// checking invariant 5 for each. Returns how many were collected.
    pub(super) fn maintain_with(
        &mut self,
        r: usize,
        horizon: Option<u64>,
    ) -> Result<usize, Violation> {
        let me = self.ids[r].clone();
        let harness = |e: AtollError| Violation::new(Invariant::Harness, e.to_string());
        let Some(node) = self.regions[r].node.as_ref() else {
            return Ok(0);
        };
        // The lww tombstones and expiring values held before, to see which ones the pass
        // collects; every expiry held is checked against its write (invariant 12).
        let mut tombstones = Vec::new();
        let mut expiring = Vec::new();
        let mut broken = Vec::new();
        // The expiring mvr siblings held before, by key.
        let mut siblings = Vec::new();
        for (ks, key) in &self.history.keys {
            if ks == CARTS {
                if let Some(KeyState::Mvr(reg)) = node.store.get(ks, key).map_err(harness)? {
                    if let Err(v) = check::mvr_expiry_intact(&me, key, &reg, &self.history) {
                        broken.push(v);
                    }
                    let dots: Vec<_> = reg
                        .siblings
                        .iter()
                        .filter(|s| s.value.is_some() && s.expires_ms.is_some())
                        .map(|s| s.dot.clone())
                        .collect();
                    if !dots.is_empty() {
                        siblings.push((key.clone(), dots));
                    }
                }
                continue;
            }
            if ks != SESSIONS {
                continue;
            }
            let Some(KeyState::Lww(reg)) = node.store.get(ks, key).map_err(harness)? else {
                continue;
            };
            if let Err(v) = check::expiry_intact(&me, key, &reg, &self.history) {
                broken.push(v);
            }
            if horizon.is_none() {
                continue;
            }
            if reg.value.is_none() {
                tombstones.push((key.clone(), reg.origin.clone(), reg.ts));
            } else if reg.expires_ms.is_some() {
                expiring.push((key.clone(), reg.origin.clone(), reg.ts));
            }
        }
        let local_ms = node.store.now_ms();
        let out = node.store.maintain(horizon).map_err(harness)?;
        let mut collected = Vec::new();
        for (key, origin, ts) in tombstones {
            if node.store.get(SESSIONS, &key).map_err(harness)?.is_none() {
                collected.push((key, origin, ts));
            }
        }
        let mut expired = Vec::new();
        for (key, origin, ts) in expiring {
            if node.store.get(SESSIONS, &key).map_err(harness)?.is_none() {
                expired.push((key, origin, ts));
            }
        }
        let mut dropped = Vec::new();
        for (key, dots) in siblings {
            let after = match node.store.get(CARTS, &key).map_err(harness)? {
                Some(KeyState::Mvr(reg)) => reg,
                _ => Default::default(),
            };
            for dot in dots {
                if !after.siblings.iter().any(|s| s.dot == dot) {
                    dropped.push((key.clone(), dot));
                }
            }
        }
        for v in broken {
            self.record(v);
        }
        self.stats.expired_collected += out.expired_collected as u64;
        self.stats.rate_keys_collected += out.rate_keys_collected as u64;
        if !dropped.is_empty() {
            let cursors = self.cursors(r);
            for (key, dot) in &dropped {
                if let Err(v) = check::expired_sibling_collection(
                    &me,
                    key,
                    dot,
                    local_ms,
                    &self.history,
                    &cursors,
                ) {
                    self.record(v);
                }
            }
        }
        if !expired.is_empty() {
            let cursors = self.cursors(r);
            for (key, origin, ts) in &expired {
                if let Err(v) = check::expired_collection(
                    &me,
                    key,
                    origin,
                    *ts,
                    local_ms,
                    &self.history,
                    &cursors,
                ) {
                    self.record(v);
                }
            }
        }
        if horizon.is_some() {
            self.stats.maintenance_with_horizon += 1;
        }
        self.stats.tombstones_collected += out.tombstones_collected as u64;
        if !collected.is_empty() {
            let cursors = self.cursors(r);
            for (key, origin, ts) in &collected {
                if let Err(v) = check::tombstone_collection(
                    &me,
                    key,
                    origin,
                    *ts,
                    horizon,
                    &self.history,
                    &cursors,
                ) {
                    self.record(v);
                }
            }
        }
        self.trace.ev(&[
            kind::MAINTAIN,
            self.now,
            r as u64,
            horizon.unwrap_or(0),
            out.tombstones_collected as u64,
        ]);
        if out.tombstones_collected > 0 {
            self.trace.line(self.now, || {
                format!(
                    "{me} collected {} tombstones below horizon {horizon:?}",
                    out.tombstones_collected
                )
            });
        }
        Ok(out.tombstones_collected)
    }
}
