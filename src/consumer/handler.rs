//! What a handler returns, and the handler trait with its closure forms.

use crate::Delivery;
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use std::{fmt, future::Future, marker::PhantomData, time::Duration};

/// Why a handler did not finish an entry, and what should happen to it.
///
/// Any error converts with `?` and means "retry with the runner's backoff";
/// [`retry_after`](Self::retry_after) picks the delay (Sidekiq's `retry_in`),
/// and [`dead_letter`](Self::dead_letter) gives up at once (BullMQ's
/// `UnrecoverableError`). An entry whose deliveries reach the runner's
/// `max_deliveries` is dead-lettered whatever the error asked.
pub struct HandlerError {
    action: Action,
    reason: String,
}

/// What the runner does with a failed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Retry after the runner's backoff.
    Retry,
    /// Retry after this delay.
    RetryAfter(Duration),
    /// Move to the dead-letter stream now.
    DeadLetter,
}

impl HandlerError {
    /// Retry with the runner's backoff.
    pub fn retry(reason: impl fmt::Display) -> Self {
        Self::with_action(Action::Retry, reason)
    }

    /// Retry after `delay` (any length; longer than the lease too).
    pub fn retry_after(delay: Duration, reason: impl fmt::Display) -> Self {
        Self::with_action(Action::RetryAfter(delay), reason)
    }

    /// Never retry: dead-letter the entry with `reason`.
    pub fn dead_letter(reason: impl fmt::Display) -> Self {
        Self::with_action(Action::DeadLetter, reason)
    }

    fn with_action(action: Action, reason: impl fmt::Display) -> Self {
        Self {
            action,
            reason: reason.to_string(),
        }
    }

    /// What the runner will do with the entry.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The reason, kept in the dead-letter record.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> Self {
        // The whole chain, each cause once: the dead-letter record is often all an operator has.
        let mut reason = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !reason.contains(&text) {
                reason = format!("{reason}: {text}");
            }
            source = s.source();
        }
        Self::retry(reason)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("action", &self.action)
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What a handler returns: `Ok(())` acks the entry.
pub type HandlerResult = Result<(), HandlerError>;

/// Handles one entry at a time; the runner calls it concurrently.
///
/// Any `Fn(Delivery) -> impl Future<Output = HandlerResult>` is a handler;
/// [`typed`] decodes the envelope payload first.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handle `delivery`; `Ok(())` acks it.
    async fn handle(&self, delivery: Delivery) -> HandlerResult;
}

#[async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, delivery: Delivery) -> HandlerResult {
        self(delivery).await
    }
}

/// A handler of the envelope payload decoded as `T`. An entry that does not
/// decode is dead-lettered at once: retrying cannot fix it.
///
/// ```
/// use fleetwire::consumer::{typed, HandlerResult};
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
/// let handler = typed(|order: Order, _delivery| async move {
///     println!("order {}", order.id);
///     HandlerResult::Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn typed<T, F, Fut>(f: F) -> Typed<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Typed {
        f,
        _payload: PhantomData,
    }
}

/// See [`typed`].
pub struct Typed<T, F> {
    f: F,
    _payload: PhantomData<fn() -> T>,
}

impl<T, F> fmt::Debug for Typed<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Typed")
            .field("payload", &std::any::type_name::<T>())
            .finish()
    }
}

#[async_trait]
impl<T, F, Fut> Handler for Typed<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn handle(&self, delivery: Delivery) -> HandlerResult {
        let value = delivery
            .envelope()
            .and_then(|e| e.payload_as::<T>())
            .map_err(HandlerError::dead_letter)?;
        (self.f)(value, delivery).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_with_their_chain_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e: HandlerError = Outer(std::io::Error::other("inner")).into();
        assert_eq!(e.reason(), "outer: inner");
        assert_eq!(e.action(), Action::Retry);
        assert_eq!(HandlerError::dead_letter("bad").action(), Action::DeadLetter);
    }
}
