//! The liveness store: "did this id heartbeat recently?" for many ids at once.

use crate::{error::Result, name::InstanceId};
use async_trait::async_trait;
use std::{fmt, time::Duration};

/// Short-lived "heartbeated recently" records, one per id.
///
/// It exists so a heartbeat hot path can write a TTL'd key instead of a
/// database row. The database (or whatever the caller trusts) stays the
/// authority: when [`available`](Self::available) is false or a call errors,
/// callers fall back to it.
///
/// # Contract
/// - `touch(id, ttl)` makes `id` alive until `ttl` lapses (millisecond
///   precision: under 1 ms counts as 1 ms, over 100 years as 100 years).
/// - `is_alive_batch(ids)` answers every id asked, in order, in one round
///   trip; an error means "unavailable, fall back" — never a partial answer.
/// - `forget(id)` makes `id` not alive at once; forgetting a missing id is `Ok`.
/// - A backend that stores nothing reports `available() == false` and
///   answers `is_alive_batch` with an [`Unavailable`](crate::ErrorKind::Unavailable) error.
/// - A backend over a server may report `available() == false` for a while
///   after the server stopped answering (Redis: until a background probe gets
///   an answer); its calls then fail at once instead of waiting out a timeout.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait LivenessStore: Send + Sync + fmt::Debug {
    /// Whether a real backend is wired in and, as far as it knows, answering.
    fn available(&self) -> bool;
    /// Record a fresh heartbeat of `id` for `ttl`.
    ///
    /// # Cancel safety
    /// Safe to drop: one `SET ... PX`, which ran or did not; the next touch restores it.
    async fn touch(&self, id: &InstanceId, ttl: Duration) -> Result<()>;
    /// For each id, whether it is alive; same length and order as `ids`.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn is_alive_batch(&self, ids: &[InstanceId]) -> Result<Vec<bool>>;
    /// Drop the record of `id`.
    ///
    /// # Cancel safety
    /// Safe to drop: one delete, which ran or did not; the record expires with its TTL anyway.
    async fn forget(&self, id: &InstanceId) -> Result<()>;
}
