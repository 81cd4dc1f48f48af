//! Request/reply over streams, the reference design's tools pattern:
//! requests go on a shared stream that a group load-balances; each reply
//! goes on the caller's own reply stream, matched back by request id.

use crate::{
    error::{Error, ErrorKind, Result},
    name::{ConsumerName, GroupName, InstanceId, StreamName},
    rt::{self, TaskHandle},
    Envelope, EventBus, MessageId, ReadOptions, StartFrom,
};
use futures_channel::oneshot;
use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc, time::Duration};

/// Header naming the request an envelope belongs to.
pub const REQUEST_ID: &str = "request_id";
/// Header naming the stream a reply goes to.
pub const REPLY_TO: &str = "reply_to";

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Envelope>>>>;

/// Sends requests and waits for their replies.
///
/// A background task reads the reply stream and hands each reply to the
/// request waiting for it; replies nobody waits for (late, after a timeout)
/// are acked and dropped. Dropping the client stops the task.
#[derive(Debug)]
pub struct RequestClient {
    bus: Arc<dyn EventBus>,
    requests: StreamName,
    reply_to: StreamName,
    waiters: Waiters,
    _reader: TaskHandle<()>,
}

impl RequestClient {
    /// A client publishing to `requests` and reading replies from `reply_to`.
    pub async fn start(bus: Arc<dyn EventBus>, requests: StreamName, reply_to: StreamName) -> Result<Self> {
        let group = GroupName::new("replies")?;
        bus.ensure_group(&reply_to, &group, StartFrom::Latest).await?;
        let waiters: Waiters = Default::default();
        let reader = rt::spawn(read_replies(
            bus.clone(),
            reply_to.clone(),
            group,
            waiters.clone(),
        ));
        Ok(Self {
            bus,
            requests,
            reply_to,
            waiters,
            _reader: reader,
        })
    }

    /// Publish `request` and wait up to `timeout` for its reply.
    ///
    /// # Cancel safety
    /// Dropping the future removes its waiter at once. If the request was
    /// already published it may still be served; its late reply is acked
    /// and dropped by the reader.
    pub async fn request(&self, request: Envelope, timeout: Duration) -> Result<Envelope> {
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id.clone(), tx);
        let _waiter = Waiter {
            waiters: &self.waiters,
            id: &id,
        };
        let request = request
            .with_header(REQUEST_ID, id.clone())
            .with_header(REPLY_TO, self.reply_to.as_str());
        let kind = request.kind.clone();
        self.bus.publish(&self.requests, &request).await?;
        match rt::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::unavailable(format!(
                "request `{kind}`: reply reader stopped"
            ))),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "request `{kind}` on stream `{}`: no reply within {timeout:?}",
                    self.requests
                ),
            )),
        }
    }

    /// Requests waiting for their reply right now.
    pub fn in_flight(&self) -> usize {
        self.waiters.lock().len()
    }
}

/// Removes a request's waiter however the request ends, dropped included.
struct Waiter<'a> {
    waiters: &'a Waiters,
    id: &'a str,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiters.lock().remove(self.id);
    }
}

async fn read_replies(bus: Arc<dyn EventBus>, stream: StreamName, group: GroupName, waiters: Waiters) {
    let Ok(me) = ConsumerName::new("demux") else {
        return;
    };
    loop {
        match bus
            .read(
                &stream,
                &group,
                &me,
                ReadOptions::count(64).block(Duration::from_secs(1)),
            )
            .await
        {
            Ok(got) => {
                for d in &got {
                    let waiter = d.envelope().ok().and_then(|env| {
                        let tx = waiters.lock().remove(env.header(REQUEST_ID)?)?;
                        Some((tx, env))
                    });
                    match waiter {
                        Some((tx, env)) => drop(tx.send(env)),
                        None => tracing::debug!(event = "reply_unclaimed", stream = %stream, id = %d.id),
                    }
                }
                let ids: Vec<MessageId> = got.iter().map(|d| d.id).collect();
                if let Err(e) = bus.ack(&stream, &group, &ids).await {
                    tracing::warn!(event = "reply_ack_failed", stream = %stream, error = %e);
                }
            }
            Err(e) => {
                tracing::warn!(event = "reply_read_failed", stream = %stream, error = %e);
                rt::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Publish `response` as the reply to `request`, on the stream its
/// `reply_to` header names, which must be `{reply_prefix}:{one segment}`
/// (as [`Topology::tools_reply`](crate::topology::Topology::tools_reply)
/// builds them).
///
/// Any other stream is refused with [`InvalidInput`](ErrorKind::InvalidInput)
/// and logged: `reply_to` comes from whoever published the request, and
/// must not let them make this service write into any stream (inbound, say).
///
/// ```
/// # #[cfg(feature = "memory")]
/// # async_io::block_on(async {
/// use fleetwire::{memory::MemoryBus, request, Envelope, ErrorKind};
///
/// let bus = MemoryBus::new();
/// let hostile = Envelope::new("tool.exec")
///     .with_header(request::REQUEST_ID, "r1")
///     .with_header(request::REPLY_TO, "sg:stream:inbound");
/// let refused = request::reply(&bus, "sg:tools:reply", &hostile, Envelope::new("tool.result")).await;
/// assert_eq!(refused.unwrap_err().kind(), ErrorKind::InvalidInput);
/// # });
/// ```
///
/// # Cancel safety
/// One publish: dropped before it completed, the reply may or may not have
/// been written.
pub async fn reply(
    bus: &dyn EventBus,
    reply_prefix: &str,
    request: &Envelope,
    response: Envelope,
) -> Result<MessageId> {
    let missing = |h: &str| Error::invalid(format!("request `{}` has no `{h}` header", request.kind));
    let to = request.header(REPLY_TO).ok_or_else(|| missing(REPLY_TO))?;
    let id = request.header(REQUEST_ID).ok_or_else(|| missing(REQUEST_ID))?;
    let under_prefix = to
        .strip_prefix(reply_prefix)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|segment| InstanceId::new(segment).is_ok());
    if !under_prefix {
        tracing::warn!(
            event = "reply_refused",
            kind = %request.kind,
            reply_to = %to.escape_debug(),
            reply_prefix,
            "reply_to is not a reply stream"
        );
        return Err(Error::invalid(format!(
            "request `{}`: reply_to `{}` is not under the reply prefix `{reply_prefix}`",
            request.kind,
            to.escape_debug()
        )));
    }
    let to = StreamName::new(to)?;
    bus.publish(&to, &response.with_header(REQUEST_ID, id)).await
}
