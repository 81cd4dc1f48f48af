//! The dead-letter stream: records of entries given up on, and the
//! operator's tools to list, inspect, redrive and purge them.

use crate::{
    error::{Error, Result},
    name::StreamName,
    Codec, Delivery, EventBus, MessageId,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One dead-lettered entry: where it came from, why it was given up on, and
/// its original body. Stored msgpack-encoded as the dead-letter entry's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The original entry id.
    pub original_id: String,
    /// The stream it was read from (and is redriven to).
    pub stream: String,
    /// The consumer group that gave up on it.
    pub group: String,
    /// The consumer that handled its last attempt.
    pub consumer: String,
    /// Why: the handler's last error, or the limit that was reached.
    pub reason: String,
    /// Deliveries counted, the last one included.
    pub attempts: u64,
    /// When it was published (unix ms, from its id).
    pub published_at_ms: u64,
    /// When its first delivery started, when known (unix ms). Redis keeps only
    /// the last delivery time, so this is set when the first attempt is also the last.
    pub first_delivered_at_ms: Option<u64>,
    /// When its last delivery started (unix ms).
    pub last_delivered_at_ms: u64,
    /// When it was dead-lettered (unix ms).
    pub dead_at_ms: u64,
    /// The original encoded envelope.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl DeadLetter {
    /// Encode for the dead-letter stream.
    pub fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(|e| Error::codec("encode dead-letter record").with_source(e))
    }

    /// Decode a dead-letter entry's body.
    pub fn decode(body: &[u8]) -> Result<Self> {
        rmp_serde::from_slice(body).map_err(|e| Error::codec("decode dead-letter record").with_source(e))
    }
}

/// One entry of a dead-letter stream; `letter` is `None` when its body is not
/// a record (written by someone else): it can still be purged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadEntry {
    /// Its id in the dead-letter stream.
    pub id: MessageId,
    /// The decoded record.
    pub letter: Option<DeadLetter>,
    /// The raw body.
    pub raw: Bytes,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redriven {
    /// Entries published back to their stream and removed from the dead letters.
    pub moved: u64,
    /// Entries left in place, with why.
    pub failed: Vec<(MessageId, String)>,
}

/// The dead-letter stream of one stream, over any [`EventBus`].
///
/// Redrive publishes the original envelope to its stream first and deletes
/// the dead letter second: a crash in between leaves a duplicate, never a loss.
///
/// # Cancel safety
/// Every method may be dropped at any await point: reads change nothing, a
/// purge is one delete, and a dropped redrive leaves each entry either
/// untouched, redriven, or (between its two steps) in both places.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    bus: Arc<dyn EventBus>,
    stream: StreamName,
    codec: Codec,
}

/// Entries looked at per round trip when walking a whole dead-letter stream.
const PAGE: usize = 200;

impl DeadLetters {
    /// The dead letters kept in `dead_letter_stream`.
    pub fn new(bus: Arc<dyn EventBus>, dead_letter_stream: StreamName) -> Self {
        Self {
            bus,
            stream: dead_letter_stream,
            codec: Codec::default(),
        }
    }

    /// The default dead-letter stream of `stream`: `{stream}:dlq`.
    pub fn of(bus: Arc<dyn EventBus>, stream: &StreamName) -> Result<Self> {
        Ok(Self::new(bus, default_stream(stream)?))
    }

    /// Decode redriven envelopes with this size limit (default 1 MiB).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The dead-letter stream.
    pub fn stream(&self) -> &StreamName {
        &self.stream
    }

    /// Entries in the dead-letter stream (0 when it does not exist).
    pub async fn len(&self) -> Result<u64> {
        match self.bus.stream_info(&self.stream).await {
            Ok(info) => Ok(info.length),
            Err(e) if e.kind() == crate::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Up to `count` dead letters from `start` on, oldest first.
    pub async fn list(&self, start: MessageId, count: usize) -> Result<Vec<DeadEntry>> {
        let got = self.bus.range(&self.stream, start, count).await?;
        Ok(got.into_iter().map(entry).collect())
    }

    /// One dead letter by id.
    pub async fn get(&self, id: MessageId) -> Result<Option<DeadEntry>> {
        let got = self.bus.range(&self.stream, id, 1).await?;
        Ok(got.into_iter().find(|d| d.id == id).map(entry))
    }

    /// Publish the given dead letters back to their streams and remove them.
    pub async fn redrive(&self, ids: &[MessageId]) -> Result<Redriven> {
        let mut out = Redriven::default();
        for id in ids {
            match self.get(*id).await? {
                Some(e) => self.redrive_one(e, &mut out).await?,
                None => out.failed.push((*id, "no such dead letter".into())),
            }
        }
        Ok(out)
    }

    /// Redrive every dead letter for which `keep` is true.
    pub async fn redrive_where(&self, keep: impl Fn(&DeadLetter) -> bool + Send + Sync) -> Result<Redriven> {
        let mut out = Redriven::default();
        let mut start = MessageId::ZERO;
        loop {
            let page = self.list(start, PAGE).await?;
            let Some(last) = page.last().map(|e| e.id) else {
                return Ok(out);
            };
            for e in page {
                if e.letter.as_ref().is_some_and(&keep) {
                    self.redrive_one(e, &mut out).await?;
                }
            }
            start = last.next();
        }
    }

    /// Redrive them all.
    pub async fn redrive_all(&self) -> Result<Redriven> {
        self.redrive_where(|_| true).await
    }

    /// Delete the given dead letters; returns how many existed.
    pub async fn purge(&self, ids: &[MessageId]) -> Result<u64> {
        self.bus.delete_entries(&self.stream, ids).await
    }

    /// Delete every dead letter; returns how many there were.
    pub async fn purge_all(&self) -> Result<u64> {
        let mut purged = 0;
        loop {
            let page = self.bus.range(&self.stream, MessageId::ZERO, PAGE).await?;
            if page.is_empty() {
                return Ok(purged);
            }
            let ids: Vec<MessageId> = page.iter().map(|d| d.id).collect();
            purged += self.bus.delete_entries(&self.stream, &ids).await?;
        }
    }

    async fn redrive_one(&self, e: DeadEntry, out: &mut Redriven) -> Result<()> {
        let Some(letter) = e.letter else {
            out.failed.push((e.id, "not a dead-letter record".into()));
            return Ok(());
        };
        let target = match StreamName::new(&letter.stream) {
            Ok(s) => s,
            Err(err) => {
                out.failed.push((e.id, err.to_string()));
                return Ok(());
            }
        };
        let envelope = match self.codec.decode(&letter.body) {
            Ok(env) => env,
            Err(err) => {
                out.failed
                    .push((e.id, format!("original body does not decode: {err}")));
                return Ok(());
            }
        };
        self.bus.publish(&target, &envelope).await?;
        self.bus.delete_entries(&self.stream, &[e.id]).await?;
        out.moved += 1;
        Ok(())
    }
}

fn entry(d: Delivery) -> DeadEntry {
    DeadEntry {
        id: d.id,
        letter: DeadLetter::decode(&d.body).ok(),
        raw: d.body,
    }
}

/// `{stream}:dlq`.
pub(crate) fn default_stream(stream: &StreamName) -> Result<StreamName> {
    StreamName::new(format!("{stream}:dlq"))
}
