//! One error type for every backend, classified by [`ErrorKind`].

use std::fmt;

/// Result alias used throughout fleetwire.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of the backend that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A name, payload or argument was rejected before anything was sent.
    InvalidInput,
    /// The thing asked for does not exist (stream, group, entry).
    NotFound,
    /// The store could not be reached or refused the call; retrying may help.
    Unavailable,
    /// The call did not finish in time.
    Timeout,
    /// The backend cannot do this (see its capabilities).
    Unsupported,
    /// A payload could not be encoded or decoded.
    Codec,
    /// The store answered with something fleetwire did not expect.
    Protocol,
    /// The lifecycle was asked to stop.
    Shutdown,
    /// The call conflicts with the current state (e.g. deleting a consumer
    /// that still holds pending entries).
    Conflict,
    /// The store is full by policy (a stream at its hard cap with
    /// unacknowledged entries); retry later, when consumers have caught up.
    Backpressure,
    /// The store refused the credentials (Redis `NOAUTH`, `WRONGPASS`):
    /// retrying with the same configuration will not help.
    Authentication,
    /// A TLS handshake failed: the server's certificate is not trusted or
    /// does not name the host, or the server refused the client's. Retrying
    /// with the same configuration will not help.
    Tls,
    /// A publish was written on the primary but fewer replicas than asked
    /// acknowledged it in time (Redis `WAIT`). The entry is in the stream and
    /// may survive; it is lost only if the primary fails before replicating
    /// it. Not temporary: a blind retry would publish it twice.
    NotReplicated,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidInput => "invalid input",
            Self::NotFound => "not found",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Unsupported => "unsupported",
            Self::Codec => "codec",
            Self::Protocol => "protocol",
            Self::Shutdown => "shutdown",
            Self::Conflict => "conflict",
            Self::Backpressure => "backpressure",
            Self::Authentication => "authentication",
            Self::Tls => "tls",
            Self::NotReplicated => "not replicated",
        })
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error every fleetwire call returns.
///
/// The message says what failed and with which name, then why, each cause
/// once: ``publish to stream `inbound` failed: connection refused``.
///
/// Because the message already holds every cause, [`source`](std::error::Error::source)
/// is `None`: an anyhow or eyre chain (`{:#}`) prints each cause once. The
/// backend's own error is still there for inspection through [`Error::cause`].
pub struct Error {
    kind: ErrorKind,
    context: String,
    temporary: bool,
    source: Option<Source>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        // Many errors (redis-rs's among them) print their source in their own
        // message and return it from `source()` too: skip what was printed.
        let mut printed = self.context.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> = match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        };
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !printed.contains(&text) {
                write!(f, ": {text}")?;
                printed.push_str(&text);
            }
            next = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.to_string())
            .field("temporary", &self.temporary)
            .finish()
    }
}

impl Error {
    /// A new error of `kind` described by `context`.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        let temporary = matches!(
            kind,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Backpressure
        );
        Self {
            kind,
            context: context.into(),
            temporary,
            source: None,
        }
    }

    /// Attach the underlying error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Override whether retrying may succeed.
    pub fn set_temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// Reclassify as `kind` (and its temporariness), keeping message and source.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn into_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self.temporary = matches!(
            kind,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Backpressure
        );
        self
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when the same call may succeed later (store down, timeout).
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// The underlying error (e.g. a `redis::RedisError`), for downcasting.
    /// Its text is already part of this error's message.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    pub(crate) fn invalid(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, context)
    }

    pub(crate) fn unavailable(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, context)
    }

    pub(crate) fn codec(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::Codec, context)
    }

    #[cfg_attr(not(any(feature = "memory", feature = "redis")), allow(dead_code))]
    pub(crate) fn not_found(context: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_context_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = Error::unavailable("publish to stream `inbound` failed").with_source(io);
        assert_eq!(
            err.to_string(),
            "publish to stream `inbound` failed: connection refused"
        );
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_temporary());
        assert!(err.cause().is_some_and(|c| c.is::<std::io::Error>()));
        assert!(!Error::invalid("bad name").is_temporary());
        assert!(!Error::new(ErrorKind::Authentication, "auth").is_temporary());
    }

    /// What `anyhow`'s `{:#}` prints: the error, then each `source()`.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(s) = next {
            out.push_str(&format!(": {s}"));
            next = s.source();
        }
        out
    }

    #[test]
    fn each_cause_is_printed_once() {
        /// Prints its source in its message and returns it, as redis-rs does.
        #[derive(Debug)]
        struct Echo(std::io::Error);
        impl fmt::Display for Echo {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
        impl std::error::Error for Echo {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let inner = Error::unavailable("ping Redis failed").with_source(Echo(io));
        let outer = Error::new(inner.kind(), "boot failed").with_source(inner);
        assert_eq!(
            chain(&outer),
            "boot failed: ping Redis failed: connection refused"
        );
    }
}
