//! Polling with deadlines. A test waits for a condition, never for a fixed time.

use anyhow::{Result, bail};
use std::future::Future;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `condition` every [`POLL_INTERVAL`] until it returns true (`Ok`) or `timeout` has
/// passed (`Err` naming `what` and how long was waited). The condition is checked at least once,
/// and once more after the deadline, so a slow poll cannot turn a success into a failure.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if condition() {
                return Ok(());
            }
            bail!("timed out after {:?} waiting for {what}", started.elapsed());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The async form of [`wait_until`]: `condition` returns a future.
///
/// The deadline is on tokio's clock, so under a paused clock (`start_paused`) it is virtual
/// time, as every timer of the test is.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut condition: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(timeout, what, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}

/// Polls `f` every [`POLL_INTERVAL`] until it returns `Some(value)` (`Ok(value)`) or `timeout`
/// has passed (`Err` naming `what` and how long was waited); `f` is called at least once, and
/// once more after the deadline. For conditions that also give back what they found.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            if let Some(v) = f().await {
                return Ok(v);
            }
            bail!("timed out after {:?} waiting for {what}", started.elapsed());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `check` every `interval` until it returns `Ok(ControlFlow::Break(value))`
/// (`Ok(value)`). `Ok(ControlFlow::Continue(seen))` is "not yet", `seen` saying what was found
/// instead; an `Err` ends the wait at once (a check may fail fast on what must never be seen).
/// `check` runs at least once, and once more after the deadline; after `timeout` the error names
/// `what`, how long was waited and the last `seen`. For waits whose failure should say what was
/// there, or that must poll at a pace of their own.
pub async fn poll<T, F, Fut>(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<ControlFlow<T, String>>>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    loop {
        // A check that began after the deadline and still failed ends the wait.
        let late = tokio::time::Instant::now() >= deadline;
        match check().await? {
            ControlFlow::Break(v) => return Ok(v),
            ControlFlow::Continue(seen) if late => bail!(
                "timed out after {:?} waiting for {what}; last seen: {seen}",
                started.elapsed()
            ),
            ControlFlow::Continue(_) => {}
        }
        if tokio::time::Instant::now() < deadline {
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let n = AtomicU32::new(0);
        wait_until(Duration::from_secs(5), "third poll", || {
            n.fetch_add(1, Ordering::Relaxed) >= 2
        })
        .unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn fails_after_the_deadline_naming_the_condition() {
        let started = Instant::now();
        let err = wait_until(Duration::from_millis(50), "never", || false).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(err.to_string().contains("waiting for never"), "{err}");
    }

    #[tokio::test]
    async fn async_form_polls_futures() {
        let n = AtomicU32::new(0);
        wait_until_async(Duration::from_secs(5), "second poll", || async {
            n.fetch_add(1, Ordering::Relaxed) >= 1
        })
        .await
        .unwrap();
        let err = wait_until_async(Duration::from_millis(20), "never", || async { false })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("never"));
    }

    #[tokio::test]
    async fn eventually_gives_back_what_it_found() {
        let n = AtomicU32::new(0);
        let v = eventually(Duration::from_secs(5), "third poll", || async {
            let i = n.fetch_add(1, Ordering::Relaxed);
            (i >= 2).then_some(i * 10)
        })
        .await
        .unwrap();
        assert_eq!(v, 20);
        let err = eventually(Duration::from_millis(20), "nothing", || async {
            None::<()>
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("waiting for nothing"), "{err}");
    }

    /// On a paused clock the deadline is virtual time: a condition that never holds fails after
    /// the timeout of tokio's clock, at once in real time.
    #[tokio::test(start_paused = true)]
    async fn the_async_deadline_is_on_tokios_clock() {
        let real = Instant::now();
        let err = wait_until_async(Duration::from_secs(600), "never", || async { false })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
        assert!(real.elapsed() < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn poll_says_what_it_saw_last_and_stops_at_an_error() {
        let n = AtomicU32::new(0);
        let v = poll(
            Duration::from_secs(5),
            POLL_INTERVAL,
            "third poll",
            || async {
                let i = n.fetch_add(1, Ordering::Relaxed);
                Ok(if i >= 2 {
                    ControlFlow::Break(i)
                } else {
                    ControlFlow::Continue(format!("poll {i}"))
                })
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 2);
        let err = poll(
            Duration::from_millis(20),
            POLL_INTERVAL,
            "never",
            || async { Ok(ControlFlow::<(), _>::Continue("still nothing".to_string())) },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("waiting for never") && err.ends_with("last seen: still nothing"),
            "{err}"
        );
        let n = AtomicU32::new(0);
        let err = poll(Duration::from_secs(5), POLL_INTERVAL, "fails", || async {
            n.fetch_add(1, Ordering::Relaxed);
            Err::<ControlFlow<(), String>, _>(anyhow::anyhow!("must never be seen"))
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("must never be seen"), "{err}");
        assert_eq!(
            n.load(Ordering::Relaxed),
            1,
            "an error ends the wait at once"
        );
    }
}
