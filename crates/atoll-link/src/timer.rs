//! A sub-millisecond sleep for the pumps.
//!
//! tokio's timer wheel has 1 ms ticks and fires at the first tick at or after a deadline, so a
//! 20 ms delay comes out as 20.5-21.5 ms: over a round trip through two emulated hops that is a
//! systematic error of 1-3 ms. [`sleep_until`] sleeps on tokio's timer until 2 ms before the
//! deadline (cheap, many tasks) and hands the rest to one process-wide timer thread that parks
//! with nanosecond timeouts (accurate to the kernel's timer slack, ~50-100 µs) and wakes the task.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The part of a sleep left to tokio's coarse timer: everything but the last 2 ms.
const COARSE_MARGIN: Duration = Duration::from_millis(2);

/// Sleeps until `deadline` with sub-millisecond accuracy; returns at once if it has passed.
pub async fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > COARSE_MARGIN {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline - COARSE_MARGIN)).await;
    }
    PreciseSleep {
        deadline,
        key: None,
    }
    .await
}

#[derive(Default)]
struct State {
    /// Deadlines in order, each with its registration key.
    queue: BTreeSet<(Instant, u64)>,
    wakers: HashMap<u64, Waker>,
    next_key: u64,
}

struct Timer {
    state: Mutex<State>,
    thread: Thread,
}

fn timer() -> &'static Arc<Timer> {
    static TIMER: OnceLock<Arc<Timer>> = OnceLock::new();
    TIMER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Timer>>();
        let handle = std::thread::Builder::new()
            .name("atoll-link-timer".into())
            .spawn(move || {
                // The first message is this thread's own timer.
                if let Ok(t) = rx.recv() {
                    run(&t);
                }
            })
            .expect("cannot start the link timer thread");
        let t = Arc::new(Timer {
            state: Mutex::new(State::default()),
            thread: handle.thread().clone(),
        });
        let _ = tx.send(t.clone());
        t
    })
}

impl Timer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The timer thread: wakes every task whose deadline has come, then parks until the next one.
fn run(t: &Timer) {
    loop {
        let mut due = Vec::new();
        let next = {
            let mut s = t.lock();
            let now = Instant::now();
            while let Some(&(at, key)) = s.queue.first() {
                if at > now {
                    break;
                }
                s.queue.remove(&(at, key));
                if let Some(w) = s.wakers.remove(&key) {
                    due.push(w);
                }
            }
            s.queue.first().map(|&(at, _)| at)
        };
        for w in due {
            w.wake();
        }
        match next {
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
            None => std::thread::park(),
        }
    }
}

struct PreciseSleep {
    deadline: Instant,
    key: Option<u64>,
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let t = timer();
        let mut s = t.lock();
        match self.key {
            Some(key) => {
                s.wakers.insert(key, cx.waker().clone());
                // The timer thread may have fired and dropped the entry just before our check.
                s.queue.insert((self.deadline, key));
            }
            None => {
                let key = s.next_key;
                s.next_key += 1;
                s.queue.insert((self.deadline, key));
                s.wakers.insert(key, cx.waker().clone());
                self.key = Some(key);
            }
        }
        let first = s.queue.first().copied();
        drop(s);
        if first == Some((self.deadline, self.key.unwrap_or(u64::MAX))) {
            t.thread.unpark();
        }
        Poll::Pending
    }
}

impl PreciseSleep {
    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            let mut s = timer().lock();
            s.queue.remove(&(self.deadline, key));
            s.wakers.remove(&key);
        }
    }
}

impl Drop for PreciseSleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeps_accurately() {
        let mut errors = Vec::new();
        for ms in [0u64, 1, 3, 7, 20] {
            for _ in 0..5 {
                let start = Instant::now();
                let deadline = start + Duration::from_millis(ms);
                sleep_until(deadline).await;
                let now = Instant::now();
                assert!(now >= deadline, "woke early");
                errors.push((now - deadline).as_secs_f64() * 1000.0);
            }
        }
        errors.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = errors[errors.len() / 2];
        assert!(median < 0.5, "median overshoot {median:.3} ms");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_sleeps_and_cancellation() {
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            set.spawn(async move {
                let deadline = start + Duration::from_micros(500 + i * 37);
                sleep_until(deadline).await;
                assert!(Instant::now() >= deadline);
            });
        }
        // A cancelled sleep leaves no waker behind.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(1),
            sleep_until(start + Duration::from_secs(3600)),
        )
        .await;
        assert!(cancelled.is_err());
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
}
