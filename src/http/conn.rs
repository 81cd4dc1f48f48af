//! Open connections: the cap, who gets closed to make room, and the header
//! and idle timeouts.
//!
//! Every connection is in one phase: `Headers` (waiting for a request's
//! headers: since accept, or since the first byte of a later request on a
//! kept-alive connection), `Busy` (from the call of the handler until the
//! response body is handed to hyper) or `Idle` (kept alive between requests).
//! `Headers` and `Idle` each have a deadline; `Busy` has none, since every
//! route is bounded by the health check timeout (or the dashboard's and
//! metrics' store timeout).

use super::{routes, Limits};
use crate::rt;
use bytes::Bytes;
use event_listener::Event;
use futures_util::task::AtomicWaker;
use http_body_util::Full;
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    rt::{Read, ReadBuf, ReadBufCursor, Write},
    Request,
};
use parking_lot::Mutex;
use smol_hyper::rt::FuturesIo;
use std::{
    collections::HashMap,
    convert::Infallible,
    future::{poll_fn, Future},
    io,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

/// How long the accept loop waits for a connection it asked to close.
/// Idle connections close on their next poll, so this is only reached when
/// the runtime is starved; the new connection is then refused.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
enum Phase {
    Headers { since: Instant },
    Busy,
    Idle { since: Instant },
}

/// What the accept loop and the connection's task share about one connection.
#[derive(Debug)]
struct Watch {
    phase: Mutex<Phase>,
    /// Asked to close: at once when not busy, after the response when busy.
    close: AtomicBool,
    /// Close even when busy (the end of the stop grace).
    force: AtomicBool,
    waker: AtomicWaker,
}

impl Watch {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Headers {
                since: Instant::now(),
            }),
            close: AtomicBool::new(false),
            force: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock()
    }

    fn bytes_arrived(&self) {
        let mut phase = self.phase.lock();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Headers {
                since: Instant::now(),
            };
        }
    }

    fn request_started(&self) {
        *self.phase.lock() = Phase::Busy;
    }

    fn response_done(&self) {
        *self.phase.lock() = Phase::Idle {
            since: Instant::now(),
        };
    }

    fn ask_to_close(&self, force: bool) {
        if force {
            self.force.store(true, Ordering::SeqCst);
        }
        self.close.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Since when the connection has waited for a request, when it may be
    /// closed to make room (not busy, not already closing).
    fn evictable_since(&self) -> Option<Instant> {
        if self.close.load(Ordering::SeqCst) {
            return None;
        }
        match self.phase() {
            Phase::Headers { since } | Phase::Idle { since } => Some(since),
            Phase::Busy => None,
        }
    }
}

/// The open connections of one server, at most `max`.
#[derive(Debug)]
pub(super) struct Connections {
    max: usize,
    open: Mutex<Open>,
    closed: Event,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    by_id: HashMap<u64, Arc<Watch>>,
    /// The cap was reached and not yet left well behind (one warning per episode).
    warned: bool,
}

/// A connection's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub(super) struct Slot {
    id: u64,
    conns: Arc<Connections>,
    watch: Arc<Watch>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.open.lock().by_id.remove(&self.id);
        self.conns.closed.notify(usize::MAX);
    }
}

impl Connections {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(Open::default()),
            closed: Event::new(),
        })
    }

    pub(super) fn len(&self) -> usize {
        self.open.lock().by_id.len()
    }

    /// A place for a new connection. At the cap, the connection that has
    /// waited longest for a request is closed to make room; `None` (refuse
    /// the newcomer) when every open connection is busy with a request.
    pub(super) async fn admit(self: &Arc<Self>) -> Option<Slot> {
        loop {
            let closed = {
                let mut open = self.open.lock();
                let n = open.by_id.len();
                if n < self.max {
                    if open.warned && n <= self.max / 4 * 3 {
                        open.warned = false;
                    }
                    let id = open.next_id;
                    open.next_id += 1;
                    let watch = Arc::new(Watch::new());
                    open.by_id.insert(id, watch.clone());
                    return Some(Slot {
                        id,
                        conns: self.clone(),
                        watch,
                    });
                }
                if !open.warned {
                    open.warned = true;
                    tracing::warn!(
                        event = "health_connection_cap_reached",
                        max_connections = self.max,
                        "closing the longest-waiting idle connection for each new one"
                    );
                }
                // One asked to close by an earlier pass and not busy is on its
                // way out: wait for it rather than close another. One that
                // turned busy first finishes its request, so look further.
                let closing = open
                    .by_id
                    .values()
                    .any(|w| w.close.load(Ordering::SeqCst) && !matches!(w.phase(), Phase::Busy));
                if !closing {
                    let victim = open
                        .by_id
                        .values()
                        .filter_map(|w| w.evictable_since().map(|since| (since, w)))
                        .min_by_key(|(since, _)| *since);
                    match victim {
                        Some((_, w)) => w.ask_to_close(false),
                        None => {
                            tracing::debug!(
                                event = "health_connection_refused",
                                max_connections = self.max,
                                "every connection is busy with a request"
                            );
                            return None;
                        }
                    }
                }
                self.closed.listen()
            };
            if rt::timeout(EVICTION_WAIT, closed).await.is_err() {
                tracing::debug!(
                    event = "health_connection_refused",
                    "no connection closed in time"
                );
                return None;
            }
        }
    }

    /// Ask every open connection to close: idle ones at once, busy ones
    /// after their response, or at once with `force`.
    pub(super) fn close_all(&self, force: bool) {
        for w in self.open.lock().by_id.values() {
            w.ask_to_close(force);
        }
    }

    /// Wait until no connection is open, for at most `limit`.
    pub(super) async fn wait_empty(&self, limit: Duration) -> bool {
        let all_closed = async {
            loop {
                let closed = self.closed.listen();
                if self.len() == 0 {
                    return;
                }
                closed.await;
            }
        };
        rt::timeout(limit, all_closed).await.is_ok()
    }
}

/// The socket, noting when a request's first bytes arrive after an idle spell.
struct WatchedIo {
    io: FuturesIo<async_net::TcpStream>,
    watch: Arc<Watch>,
}

impl Read for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The cursor does not tell how much a read filled, so read into a
        // scratch buffer and copy; requests here are a few hundred bytes.
        let mut scratch = [0u8; 4096];
        let len = buf.remaining().min(scratch.len());
        let mut filled = ReadBuf::new(&mut scratch[..len]);
        ready!(Pin::new(&mut this.io).poll_read(cx, filled.unfilled()))?;
        let bytes = filled.filled();
        if !bytes.is_empty() {
            this.watch.bytes_arrived();
            buf.put_slice(bytes);
        }
        Poll::Ready(Ok(()))
    }
}

impl Write for WatchedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// A response body that marks the connection idle once hyper has taken it
/// (or dropped it, for `HEAD`).
struct TrackedBody {
    inner: Full<Bytes>,
    _done: ResponseDone,
}

struct ResponseDone(Arc<Watch>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug)]
enum Ended {
    Served(Result<(), hyper::Error>),
    TimedOut(Phase),
    Closed,
}

/// Serve one connection until the client leaves, a timeout passes or the
/// server asks it to close.
pub(super) async fn serve(stream: async_net::TcpStream, slot: Slot, app: routes::App, limits: Limits) {
    let watch = slot.watch.clone();
    let io = WatchedIo {
        io: FuturesIo::new(stream),
        watch: watch.clone(),
    };
    let handler = watch.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // Called by hyper as soon as the headers are parsed.
        handler.request_started();
        let done = ResponseDone(handler.clone());
        let app = app.clone();
        async move {
            let response = routes::respond(req, app).await;
            Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _done: done }))
        }
    });
    // In a block of its own, so the socket closes before `slot` gives up
    // its place.
    let ended = {
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            // Both timeouts are kept here, by phase; hyper's would also cut
            // idle keep-alive connections at the header deadline.
            .header_read_timeout(None)
            .serve_connection(io, service);
        let mut conn = pin!(conn);
        let mut timer = async_io::Timer::never();
        let mut armed = None;
        let mut draining = false;
        poll_fn(|cx| loop {
            // Registered before the flags are read, so a close asked for after
            // the read still wakes this task.
            watch.waker.register(cx.waker());
            if let Poll::Ready(served) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ended::Served(served));
            }
            let phase = watch.phase();
            if watch.force.load(Ordering::SeqCst) {
                return Poll::Ready(Ended::Closed);
            }
            if watch.close.load(Ordering::SeqCst) && !draining {
                if let Phase::Busy = phase {
                    // Finish the response in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    continue;
                }
                return Poll::Ready(Ended::Closed);
            }
            let deadline = match phase {
                Phase::Headers { since } => since.checked_add(limits.header_read_timeout),
                Phase::Idle { since } => since.checked_add(limits.idle_timeout),
                Phase::Busy => None,
            };
            let Some(deadline) = deadline else {
                return Poll::Pending;
            };
            if Instant::now() >= deadline {
                return Poll::Ready(Ended::TimedOut(phase));
            }
            if armed != Some(deadline) {
                timer.set_at(deadline);
                armed = Some(deadline);
            }
            if Pin::new(&mut timer).poll(cx).is_ready() {
                armed = None;
                continue;
            }
            return Poll::Pending;
        })
        .await
    };
    drop(slot);
    match ended {
        Ended::Served(Ok(())) => {}
        Ended::Served(Err(e)) => tracing::debug!(event = "health_connection_failed", error = %e),
        Ended::TimedOut(Phase::Headers { .. }) => tracing::debug!(
            event = "health_connection_header_timeout",
            timeout_ms = millis(limits.header_read_timeout)
        ),
        Ended::TimedOut(_) => tracing::debug!(
            event = "health_connection_idle_timeout",
            timeout_ms = millis(limits.idle_timeout)
        ),
        Ended::Closed => tracing::debug!(event = "health_connection_closed_by_server"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
