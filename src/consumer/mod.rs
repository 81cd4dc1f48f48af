//! At-least-once consumers over any [`EventBus`](crate::EventBus): the
//! [`Runner`] with leases, retries with backoff, dead letters and redrive,
//! and a drain at shutdown. The same code runs on every backend.
//!
//! # How an entry moves
//!
//! ```text
//! read / take over ──► handler ──Ok──► ack (rides with the next read)
//!                          │
//!                          ├─Err, deliveries < max ──► release(RetryAfter(backoff)) ──► taken over when due
//!                          └─Err, deliveries = max, or HandlerError::dead_letter ──► dead_letter (append + ack, atomic)
//! ```
//!
//! The retry delay is kept by the store, not by the process that failed: on
//! Redis 7.0 the entry stays in the group's pending list (so a crash at any
//! point loses nothing) and its not-before time sits in a hash beside the
//! stream; a Lua script claims and re-parks atomically. `XCLAIM ... TIME` alone
//! could not express delays longer than the lease, as it clamps future times
//! to now. Every path counts attempts the same way: the store's delivery
//! count, which a drain or a cancelled read does not raise.
//!
//! # Guarantees
//! - Every published entry ends acked or dead-lettered, never stranded: an
//!   entry held by a consumer that died is taken over after the lease.
//! - An entry may be handled more than once (a crash after the handler
//!   finished, before its ack reached the store): make handlers idempotent.
//! - With concurrency 1 entries are handled in stream order, retries aside.

mod config;
mod dead_letter;
mod handler;
mod pause;
mod runner;
mod stats;

pub use config::{Backoff, RunnerConfig};
#[cfg_attr(not(feature = "http"), allow(unused_imports))]
pub(crate) use dead_letter::default_stream as default_dead_letter_stream;
pub use dead_letter::{DeadEntry, DeadLetter, DeadLetters, Redriven};
pub use handler::{typed, Action, Handler, HandlerError, HandlerResult, Typed};
pub use pause::Pause;
pub use runner::{OnDead, RetryPolicy, Runner, RunnerBuilder};
pub use stats::{RunnerCounts, RunnerStats};
