//! SIGTERM / SIGINT as a future.

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
///
/// On non-Unix targets it never resolves; use the lifecycle's shutdown
/// handle there.
pub(crate) async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(feature = "rt-tokio")]
    if super::Runtime::current() == super::Runtime::Tokio {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            return Ok(tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            });
        }
    }
    #[cfg(unix)]
    {
        use async_signal::{Signal, Signals};
        use futures_util::StreamExt;
        let mut signals = Signals::new([Signal::Term, Signal::Int])?;
        match signals.next().await {
            Some(Ok(Signal::Term)) => Ok("SIGTERM"),
            Some(Ok(_)) => Ok("SIGINT"),
            Some(Err(e)) => Err(e),
            None => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending().await
}
