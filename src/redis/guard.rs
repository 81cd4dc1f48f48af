//! Cancel safety for calls whose reply hands entries to a consumer.
//!
//! Once `XREADGROUP` (or a claim) has run on the server, its entries belong
//! to the consumer whether or not anyone reads the reply. A caller that stops
//! waiting (timeout, `select!`, shutdown) must therefore not simply drop the
//! call: [`Guarded`] polls the call inline, and if it is dropped first, moves
//! the unfinished call to a background task that waits for the reply and
//! releases whatever it handed out ([`Release::Unhandled`](crate::Release)).
//! A blocking read is also unblocked at once (`CLIENT UNBLOCK`, queued on the
//! shared connection before the caller's next command; on Cluster, routed to
//! the primary serving the read), so its connection is free again and the
//! next entry goes to a live consumer.

use super::connection::Shared as ConnectionManager;
use super::connection::{BlockedOn, CancelSlot};
use crate::{error::Result, rt};
use futures_util::future::BoxFuture;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

/// What to do with a reply nobody waits for any more.
pub(crate) type Orphan<T> = Box<dyn FnOnce(T) -> BoxFuture<'static, ()> + Send>;

/// A call that, when dropped unfinished, finishes in the background and hands its reply to an [`Orphan`].
pub(crate) struct Guarded<T: Send + 'static> {
    call: Option<BoxFuture<'static, Result<T>>>,
    orphan: Option<Orphan<T>>,
    unblock: Option<(Arc<CancelSlot>, ConnectionManager)>,
}

impl<T: Send + 'static> Guarded<T> {
    pub(crate) fn new(call: BoxFuture<'static, Result<T>>, orphan: Orphan<T>) -> Self {
        Self {
            call: Some(call),
            orphan: Some(orphan),
            unblock: None,
        }
    }

    /// On cancellation, unblock the connection `slot` names, through `manager`.
    pub(crate) fn unblock_with(mut self, slot: Arc<CancelSlot>, manager: ConnectionManager) -> Self {
        self.unblock = Some((slot, manager));
        self
    }
}

impl<T: Send + 'static> Future for Guarded<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let Some(call) = self.call.as_mut() else {
            return Poll::Pending;
        };
        let out = std::task::ready!(call.as_mut().poll(cx));
        self.call = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for Guarded<T> {
    fn drop(&mut self) {
        let (Some(call), Some(orphan)) = (self.call.take(), self.orphan.take()) else {
            return;
        };
        if let Some((slot, manager)) = self.unblock.take() {
            if let Some(on) = slot.cancel() {
                unblock(manager, on);
            }
        }
        rt::spawn_detached(async move {
            if let Ok(reply) = call.await {
                orphan(reply).await;
            }
        });
    }
}

/// Queue `CLIENT UNBLOCK` now, so it reaches the server before anything the
/// caller sends next on the shared connection; finish it in the background.
/// On Cluster it goes to the primary the read was sent to.
fn unblock(manager: ConnectionManager, on: BlockedOn) {
    let mut send: BoxFuture<'static, ()> = Box::pin(async move {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(on.client_id);
        let done = match (manager, on.hash_slot) {
            #[cfg(feature = "redis-cluster")]
            (ConnectionManager::Cluster(routed), Some(hash_slot)) => routed
                .connection()
                .route_command(cmd, super::cluster::primary_serving(hash_slot))
                .await
                .map(drop),
            #[cfg(feature = "redis-cluster")]
            (ConnectionManager::Cluster(_), None) => return,
            (mut manager, _) => cmd.query_async::<redis::Value>(&mut manager).await.map(drop),
        };
        if let Err(e) = done {
            tracing::debug!(event = "unblock_failed", client_id = on.client_id, error = %e);
        }
    });
    // The first poll writes the command into the connection's queue.
    let mut cx = Context::from_waker(Waker::noop());
    if send.as_mut().poll(&mut cx).is_pending() {
        rt::spawn_detached(send);
    }
}
