//! Validated names: a name cannot smuggle `:`, glob characters, whitespace
//! or control bytes into a Redis key or pattern.
//!
//! Every constructor returns [`ErrorKind::InvalidInput`](crate::ErrorKind)
//! with the offending name on bad input; none panics.

use crate::error::{Error, Result};
use std::{fmt, str::FromStr, sync::Arc};

/// Longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 200;

fn check_key_name(what: &str, s: &str, allow_colon: bool) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "invalid {what} `{}`: {why}",
            s.escape_debug()
        )))
    };
    if s.is_empty() {
        return bad("must not be empty");
    }
    if s.len() > MAX_NAME_LEN {
        return bad("longer than 200 bytes");
    }
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() {
            return bad("contains whitespace or a control character");
        }
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            return bad("contains a glob character (* ? [ ] \\)");
        }
        if c == ':' && !allow_colon {
            return bad("contains `:`, which separates key segments");
        }
    }
    Ok(())
}

fn is_topic_token(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_topic(what: &str, s: &str, allow_wildcard: bool) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.split('.')
            .all(|t| is_topic_token(t) || (allow_wildcard && t == "*"));
    if ok {
        Ok(())
    } else {
        let tokens = if allow_wildcard {
            "letters, digits, `_`, `-` or a lone `*`"
        } else {
            "letters, digits, `_` or `-`"
        };
        Err(Error::invalid(format!(
            "invalid {what} `{}`: expected dot-separated tokens of {tokens}, at most 200 bytes",
            s.escape_debug()
        )))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal, |$s:ident| $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validate `name`; see the type's docs for the rules.
            pub fn new(name: impl AsRef<str>) -> Result<Self> {
                let $s = name.as_ref();
                $check?;
                Ok(Self(Arc::from($s)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), &*self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A logical service name (`gateway`, `inference`). One key segment: no `:`.
    ServiceName, "service name", |s| check_key_name("service name", s, false)
);
name_type!(
    /// One replica's id (`gw-1`, a UUID), also used as a liveness id. No `:`.
    InstanceId, "instance id", |s| check_key_name("instance id", s, false)
);
name_type!(
    /// A stream, used verbatim as the Redis key (`sg:stream:inbound`); `:` allowed.
    StreamName, "stream name", |s| check_key_name("stream name", s, true)
);
name_type!(
    /// A consumer group (`sg:workers`); `:` allowed.
    GroupName, "group name", |s| check_key_name("group name", s, true)
);
name_type!(
    /// A consumer within a group, usually the instance id; `:` allowed.
    ConsumerName, "consumer name", |s| check_key_name("consumer name", s, true)
);
name_type!(
    /// A concrete topic: dot-separated tokens of `[A-Za-z0-9_-]`, e.g. `system.api.health`.
    Topic, "topic", |s| check_topic("topic", s, false)
);
name_type!(
    /// A topic pattern in which `*` matches exactly one token:
    /// `system.*.health` matches `system.api.health`, not `system.a.b.health`.
    TopicPattern, "topic pattern", |s| check_topic("topic pattern", s, true)
);

impl TopicPattern {
    /// Whether `topic` matches: same number of tokens, each equal or `*`.
    pub fn matches(&self, topic: &Topic) -> bool {
        pattern_matches(self.as_str(), topic.as_str())
    }
}

impl From<Topic> for TopicPattern {
    fn from(t: Topic) -> Self {
        Self(t.0)
    }
}

/// Token-wise match of a validated pattern against a validated topic.
pub(crate) fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (None, None) => return true,
            (Some(pt), Some(tt)) if pt == "*" || pt == tt => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_would_break_a_key() {
        for bad in [
            "",
            "a:b",
            "a*",
            "a?",
            "a[b]",
            "a b",
            "a\nb",
            "a\\b",
            &"x".repeat(201),
        ] {
            let err = ServiceName::new(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(StreamName::new("sg:stream:inbound").is_ok());
        assert!(StreamName::new("sg:stream:*").is_err());
        let msg = InstanceId::new("gw:1").unwrap_err().to_string();
        assert!(msg.contains("instance id `gw:1`"), "{msg}");
    }

    #[test]
    fn one_token_wildcard() {
        let p = TopicPattern::new("system.*.health").unwrap();
        let t = |s| Topic::new(s).unwrap();
        assert!(p.matches(&t("system.api.health")));
        assert!(!p.matches(&t("system.a.b.health")));
        assert!(!p.matches(&t("system.health")));
        assert!(!p.matches(&t("system.api.healthz")));
        assert!(Topic::new("system.*.health").is_err());
        assert!(TopicPattern::new("system..health").is_err());
        assert!(TopicPattern::new("system.a*.health").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: ServiceName = serde_json::from_str("\"gateway\"").unwrap();
        assert_eq!(ok.as_str(), "gateway");
        assert!(serde_json::from_str::<ServiceName>("\"a:b\"").is_err());
    }
}
