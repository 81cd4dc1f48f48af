//! Fleet control operations: restart, quiet / resume, ping and application
//! commands sent to one instance, one service or the whole fleet, signed
//! and acknowledged — the reference design's control-ops daemon.
//!
//! # How a command travels
//!
//! ```text
//! ControlClient ──sign──► control stream (sg:stream:control) ──► one group per instance
//!      ▲                                                              │ verify, target, expiry,
//!      │                                                              │ replay, ack before running
//!      └──── accepted / done / failed / ignored ◄── reply stream ◄────┘ (acks signed too)
//! ```
//!
//! - **The daemon** runs inside every [`Lifecycle`](crate::service::Lifecycle)
//!   configured with a [`ControlKey`] (the builder's
//!   [`control`](crate::service::LifecycleBuilder::control), or `SG_CONTROL_KEY`):
//!   its group is created right after registration, it reads once boot is
//!   done, and it is the first thing stopped at shutdown; its group is
//!   deleted then. No key: no daemon, nothing executed.
//! - **Delivery**: one consumer group per instance on one stream, so every
//!   instance sees every command durably: an instance cut from the store
//!   for a while reads what was sent meanwhile when it is back. A new group
//!   starts at the stream's end, and a command issued before this process
//!   booted is ignored: a restarted instance never runs an old restart.
//! - **At most once**: an entry is acked before it runs, and an instance
//!   remembers the ids it ran until they expire (commands live at most
//!   [`ControlConfig::max_lifetime`]), so a copy replayed onto the stream is refused.
//! - **Authentication**: HMAC-SHA256 under the fleet key over a canonical
//!   encoding of every field (see [`Command::sign`]). Forged, unsigned,
//!   malformed, expired, replayed and out-of-policy commands are refused and
//!   logged (`control_command_rejected` / `control_command_ignored`) by
//!   entry id and reason, never with their arguments.
//! - **Acknowledgements**: each targeted instance answers `accepted`, then
//!   `done` (with a result), `failed` or `ignored` (with a [`reason`]); the
//!   [`ControlClient`] waits for every instance the registry lists as a
//!   target, up to a timeout, and returns one [`InstanceResult`] each.
//! - **Rolling restart**: [`ControlClient::rolling_restart`] restarts a
//!   service N instances at a time, and waits for each to be back
//!   (re-registered and ready, with a new boot id) before the next batch,
//!   never starting a batch unless enough other instances are ready.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # async_io::block_on(async {
//! use fleetwire::{control::{ControlClient, ControlKey, Op, Target}, memory::{MemoryBus, MemoryRegistry}};
//! use std::{sync::Arc, time::Duration};
//!
//! let key = ControlKey::new("a fleet secret, 16 bytes or more")?;
//! let client = ControlClient::builder(Arc::new(MemoryBus::new()), key)
//!     .registry(Arc::new(MemoryRegistry::new()))
//!     .build()
//!     .await?;
//! // Nobody is registered here, so nobody is waited for.
//! let results = client.call(Target::service("api")?, Op::Ping, serde_json::Value::Null, Duration::from_millis(50)).await?;
//! assert!(results.instances.is_empty());
//! # Ok::<(), fleetwire::Error>(())
//! # }).unwrap();
//! ```

mod client;
mod command;
pub(crate) mod daemon;
mod rolling;

pub use client::{ControlClient, ControlClientBuilder, InstanceResult, Pending, Results};
pub use command::{
    Ack, AckStatus, Command, ControlKey, Op, Outcome, Rejection, Target, ACK_KIND, COMMAND_KIND, KEY_ENV,
    MIN_KEY_BYTES, QUIET_STATUS,
};
pub use daemon::{ControlCounts, ControlStats};
pub use rolling::{RollingEvent, RollingOptions, RollingReport};

pub(crate) use command::random_id;
#[cfg(feature = "testkit")]
pub(crate) use command::tamper_args;

use crate::{error::Result, StreamName};
use std::time::Duration;

/// The first word of an [`Outcome::Ignored`] or [`Outcome::Failed`] reason.
pub mod reason {
    /// Ignored: the command's expiry has passed.
    pub const EXPIRED: &str = "expired";
    /// Ignored: issued before this process booted (a restarted instance
    /// never runs an old command).
    pub const ISSUED_BEFORE_BOOT: &str = "issued_before_boot";
    /// Ignored: issued further in the future than the clock skew allows.
    pub const ISSUED_IN_FUTURE: &str = "issued_in_future";
    /// Ignored: expiry further from the issue time than the maximum lifetime.
    pub const LIFETIME_TOO_LONG: &str = "lifetime_too_long";
    /// Ignored: the service has no handler for this application command.
    pub const UNSUPPORTED: &str = "unsupported";
    /// Failed: the instance began shutting down while the command ran.
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// Failed: the command ran longer than [`ControlConfig::exec_timeout`](super::ControlConfig::exec_timeout).
    pub const TIMED_OUT: &str = "timed_out";
}

/// The default control stream.
pub const DEFAULT_STREAM: &str = "sg:stream:control";

/// How an instance's control daemon reads and judges commands.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ControlConfig {
    /// The fleet key that signs commands and acknowledgements.
    pub key: ControlKey,
    /// The stream commands are published on (default `sg:stream:control`);
    /// acknowledgements go only to streams under `{stream}:reply:`.
    pub stream: StreamName,
    /// Longest accepted time between a command's issue and its expiry
    /// (default 1 h). It bounds how long executed ids are remembered.
    pub max_lifetime: Duration,
    /// How far in the future an issue time may lie, for clocks that
    /// disagree a little (default 5 s).
    pub clock_skew: Duration,
    /// Time limit of one command's execution, application hooks included
    /// (default 30 s); past it the command is reported failed.
    pub exec_timeout: Duration,
}

impl ControlConfig {
    /// Defaults around `key`.
    pub fn new(key: ControlKey) -> Self {
        Self {
            key,
            stream: StreamName::new(DEFAULT_STREAM).expect("a valid stream name"),
            max_lifetime: Duration::from_secs(3600),
            clock_skew: Duration::from_secs(5),
            exec_timeout: Duration::from_secs(30),
        }
    }

    /// Defaults around the key in `SG_CONTROL_KEY`; `None` when it is unset.
    pub fn from_env() -> Result<Option<Self>> {
        Ok(ControlKey::from_env()?.map(Self::new))
    }

    /// Use another control stream.
    pub fn stream(mut self, stream: StreamName) -> Self {
        self.stream = stream;
        self
    }

    /// Accept commands living at most this long.
    pub fn max_lifetime(mut self, d: Duration) -> Self {
        self.max_lifetime = d;
        self
    }

    /// Accept issue times at most this far ahead of the local clock.
    pub fn clock_skew(mut self, d: Duration) -> Self {
        self.clock_skew = d;
        self
    }

    /// Limit each command's execution to this long.
    pub fn exec_timeout(mut self, d: Duration) -> Self {
        self.exec_timeout = d;
        self
    }

    /// The prefix of reply streams: `{stream}:reply`.
    pub fn reply_prefix(&self) -> String {
        reply_prefix(&self.stream)
    }
}

pub(crate) fn reply_prefix(stream: &StreamName) -> String {
    format!("{stream}:reply")
}
