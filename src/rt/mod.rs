//! The runtime seam: spawn, sleep, timeout, interval and shutdown signals on
//! whichever executor the caller runs.
//!
//! With `rt-tokio` and a Tokio runtime current, Tokio is used; otherwise the
//! default picked below (async-std, then smol). With no runtime feature at
//! all, each background task gets its own thread driven by `async-io`, so
//! every feature combination still works.

use futures_util::future::{Either, FutureExt, RemoteHandle};
use std::{
    future::Future,
    pin::pin,
    time::{Duration, Instant},
};

mod signal;
pub(crate) use signal::shutdown_signal;

/// The executor fleetwire's background tasks run on.
// Which variants can be picked depends on the features on (async-std shadows smol).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    #[cfg(feature = "rt-tokio")]
    Tokio,
    #[cfg(feature = "rt-async-std")]
    AsyncStd,
    #[cfg(feature = "rt-smol")]
    Smol,
    /// No runtime feature applies: one OS thread per task.
    Thread,
}

impl Runtime {
    /// The runtime of the calling context.
    pub(crate) fn current() -> Self {
        #[cfg(feature = "rt-tokio")]
        if tokio::runtime::Handle::try_current().is_ok() {
            return Self::Tokio;
        }
        // With both async-std and smol on, async-std wins only inside one of
        // its own tasks, so code driven by `smol::block_on` spawns on smol.
        #[cfg(all(feature = "rt-async-std", feature = "rt-smol"))]
        if async_std::task::try_current().is_none() {
            return Self::Smol;
        }
        cfg_if::cfg_if! {
            if #[cfg(feature = "rt-async-std")] {
                Self::AsyncStd
            } else if #[cfg(feature = "rt-smol")] {
                Self::Smol
            } else {
                Self::Thread
            }
        }
    }

    fn spawn_detached(self, fut: impl Future<Output = ()> + Send + 'static) {
        match self {
            #[cfg(feature = "rt-tokio")]
            Self::Tokio => drop(tokio::spawn(fut)),
            #[cfg(feature = "rt-async-std")]
            Self::AsyncStd => drop(async_std::task::spawn(fut)),
            #[cfg(feature = "rt-smol")]
            Self::Smol => smol::spawn(fut).detach(),
            Self::Thread => {
                // Only reached without a runtime; a failed thread spawn drops
                // the future, which the handle reports as a cancelled task.
                let _ = std::thread::Builder::new()
                    .name("fleetwire-task".into())
                    .spawn(move || async_io::block_on(fut));
            }
        }
    }

    pub(crate) async fn sleep(self, d: Duration) {
        match self {
            #[cfg(feature = "rt-tokio")]
            Self::Tokio => tokio::time::sleep(d).await,
            // async-std and smol both drive their timers with async-io.
            _ => {
                async_io::Timer::after(d).await;
            }
        }
    }
}

/// A spawned task; dropping the handle cancels the task.
#[derive(Debug)]
#[must_use = "dropping a TaskHandle cancels the task"]
pub(crate) struct TaskHandle<T> {
    handle: RemoteHandle<T>,
}

impl<T: Send + 'static> TaskHandle<T> {
    /// Wait for the task to finish.
    pub(crate) async fn join(self) -> T {
        self.handle.await
    }
}

/// Spawn `fut` on the current runtime.
pub(crate) fn spawn<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> TaskHandle<T> {
    let (remote, handle) = fut.remote_handle();
    Runtime::current().spawn_detached(remote);
    TaskHandle { handle }
}

/// Spawn `fut` on the current runtime and let it run to its end.
pub(crate) fn spawn_detached(fut: impl Future<Output = ()> + Send + 'static) {
    Runtime::current().spawn_detached(fut);
}

/// Sleep on the current runtime.
pub(crate) async fn sleep(d: Duration) {
    Runtime::current().sleep(d).await
}

/// The future did not finish within its time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Run `fut` for at most `d`.
pub(crate) async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let fut = pin!(fut);
    let timer = pin!(sleep(d));
    match futures_util::future::select(fut, timer).await {
        Either::Left((out, _)) => Ok(out),
        Either::Right(_) => Err(Elapsed),
    }
}

/// Ticks every `period`; a late tick is not made up for, the next one is
/// scheduled from now.
#[derive(Debug)]
pub(crate) struct Interval {
    period: Duration,
    next: Instant,
}

impl Interval {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            next: Instant::now() + period,
        }
    }

    pub(crate) async fn tick(&mut self) {
        let now = Instant::now();
        if self.next > now {
            sleep(self.next - now).await;
        }
        self.next = Instant::now().max(self.next) + self.period;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise() {
        let h = spawn(async { 41 + 1 });
        assert_eq!(h.join().await, 42);
        assert_eq!(
            timeout(Duration::from_millis(10), std::future::pending::<()>()).await,
            Err(Elapsed)
        );
        assert_eq!(timeout(Duration::from_secs(5), async { 1 }).await, Ok(1));

        let (tx, rx) = futures_channel::oneshot::channel::<()>();
        let h = spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(h);
        assert!(rx.await.is_err(), "dropping the handle cancels the task");

        let mut iv = Interval::new(Duration::from_millis(5));
        let start = Instant::now();
        iv.tick().await;
        iv.tick().await;
        assert!(start.elapsed() >= Duration::from_millis(10));
    }

    #[cfg(feature = "rt-tokio")]
    #[test]
    fn tokio() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(Runtime::current(), Runtime::Tokio);
            exercise().await
        });
    }

    #[cfg(feature = "rt-async-std")]
    #[test]
    fn async_std() {
        async_std::task::block_on(async {
            assert_eq!(Runtime::current(), Runtime::AsyncStd);
            exercise().await
        });
    }

    #[cfg(feature = "rt-smol")]
    #[test]
    fn smol() {
        smol::block_on(async {
            assert_eq!(Runtime::current(), Runtime::Smol);
            exercise().await
        });
    }

    #[cfg(not(any(feature = "rt-tokio", feature = "rt-async-std", feature = "rt-smol")))]
    #[test]
    fn thread_fallback() {
        async_io::block_on(exercise());
    }
}
