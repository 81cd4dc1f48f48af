//! The message envelope and its msgpack codec (serde + rmp-serde).

use crate::error::{Error, Result};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default upper bound of an encoded envelope: 1 MiB.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// One message on a stream or topic.
///
/// `payload` is opaque bytes, usually msgpack written by
/// [`Envelope::with_payload`]; `headers` carry routing data such as a
/// request id or a reply stream.
///
/// ```
/// use fleetwire::Envelope;
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Hello { text: String }
///
/// let env = Envelope::new("chat.message")
///     .with_header("channel_id", "42")
///     .with_payload(&Hello { text: "hi".into() })?;
/// let back: Hello = env.payload_as()?;
/// assert_eq!(back.text, "hi");
/// # Ok::<(), fleetwire::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope {
    /// What the message is, e.g. `message.inbound`.
    pub kind: String,
    /// Correlates the message across services, when the sender set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Small string metadata (routing, reply stream, request id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The body.
    #[serde(default, with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Milliseconds since the Unix epoch when the envelope was made.
    #[serde(default)]
    pub created_at_ms: u64,
}

impl Envelope {
    /// An empty envelope of `kind`, stamped with the current time.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            trace_id: None,
            headers: BTreeMap::new(),
            payload: Vec::new(),
            created_at_ms: crate::clock::unix_ms(),
        }
    }

    /// Set the payload to `value` encoded as msgpack.
    pub fn with_payload<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.payload = rmp_serde::to_vec_named(value)
            .map_err(|e| Error::codec(format!("encode payload of `{}`", self.kind)).with_source(e))?;
        Ok(self)
    }

    /// Set the payload to raw bytes.
    pub fn with_raw_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Add a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Set the trace id.
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// A header's value.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(String::as_str)
    }

    /// Decode the msgpack payload as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        rmp_serde::from_slice(&self.payload)
            .map_err(|e| Error::codec(format!("decode payload of `{}`", self.kind)).with_source(e))
    }
}

/// Encodes and decodes envelopes, enforcing a size limit both ways.
///
/// Decoding reads from a slice whose length is checked first, so a hostile
/// length prefix cannot make it allocate beyond the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    max_bytes: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENVELOPE_BYTES)
    }
}

impl Codec {
    /// A codec that accepts envelopes of at most `max_bytes` encoded.
    pub const fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }

    /// The size limit in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Encode `env`; [`ErrorKind::InvalidInput`](crate::ErrorKind) when it exceeds the limit.
    pub fn encode(&self, env: &Envelope) -> Result<Bytes> {
        let mut buf = Vec::with_capacity(Self::size_hint(env));
        self.encode_to(env, &mut buf)?;
        Ok(Bytes::from(buf))
    }

    /// Bytes enough for `env` encoded: field names and msgpack headers fit in 96.
    pub(crate) fn size_hint(env: &Envelope) -> usize {
        let headers: usize = env.headers.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
        96 + env.kind.len() + env.payload.len() + headers + env.trace_id.as_ref().map_or(0, String::len)
    }

    /// Append `env` encoded to `out`, with the checks of [`encode`](Self::encode).
    /// On error `out` may hold part of it.
    pub(crate) fn encode_to(&self, env: &Envelope, out: &mut Vec<u8>) -> Result<()> {
        let too_big = |n: usize| {
            Error::invalid(format!(
                "envelope `{}` is {n} bytes encoded, over the {} byte limit",
                env.kind, self.max_bytes
            ))
        };
        if env.payload.len() > self.max_bytes {
            return Err(too_big(env.payload.len()));
        }
        let start = out.len();
        rmp_serde::encode::write_named(out, env)
            .map_err(|e| Error::codec(format!("encode envelope `{}`", env.kind)).with_source(e))?;
        let n = out.len() - start;
        if n > self.max_bytes {
            return Err(too_big(n));
        }
        Ok(())
    }

    /// Run `f` on `env` encoded, in a buffer this thread reuses (no
    /// allocation per call once it has grown to the largest envelope).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_encoded<T>(&self, env: &Envelope, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                self.encode_to(env, &mut buf)?;
                let out = f(&buf);
                // Do not keep one huge envelope's buffer for the thread's lifetime.
                if buf.capacity() > 64 * 1024 {
                    *buf = Vec::new();
                }
                Ok(out)
            }
            // Re-entered from inside `f`: encode into a buffer of its own.
            Err(_) => {
                let mut buf = Vec::with_capacity(Self::size_hint(env));
                self.encode_to(env, &mut buf)?;
                Ok(f(&buf))
            }
        })
    }

    /// Decode bytes into an envelope; a clear error on oversized or malformed input.
    pub fn decode(&self, bytes: &[u8]) -> Result<Envelope> {
        if bytes.len() > self.max_bytes {
            return Err(Error::invalid(format!(
                "envelope of {} bytes is over the {} byte limit",
                bytes.len(),
                self.max_bytes
            )));
        }
        rmp_serde::from_slice(bytes).map_err(|e| Error::codec("decode envelope").with_source(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let codec = Codec::new(256);
        let env = Envelope::new("k")
            .with_header("a", "b")
            .with_raw_payload(vec![7; 10]);
        let bytes = codec.encode(&env).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap(), env);

        let big = Envelope::new("k").with_raw_payload(vec![0; 300]);
        assert_eq!(
            codec.encode(&big).unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
        let near = Envelope::new("k").with_raw_payload(vec![0; 250]);
        assert_eq!(
            codec.encode(&near).unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
        assert_eq!(
            codec.decode(&[0u8; 300]).unwrap_err().kind(),
            crate::ErrorKind::InvalidInput
        );
        assert_eq!(codec.decode(&[0xc1]).unwrap_err().kind(), crate::ErrorKind::Codec);
        assert_eq!(codec.decode(&[]).unwrap_err().kind(), crate::ErrorKind::Codec);
    }

    #[test]
    fn hostile_length_prefix_is_an_error() {
        // map32 claiming 4 billion entries, then nothing
        assert!(Codec::default().decode(&[0xdf, 0xff, 0xff, 0xff, 0xff]).is_err());
        // bin32 claiming 4 GiB
        assert!(Codec::default().decode(&[0xc6, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
