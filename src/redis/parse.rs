//! Parsing of stream replies as Redis returns them (RESP2 arrays or RESP3 maps).
//!
//! Every function returns a clear [`Protocol`](crate::ErrorKind::Protocol)
//! error on a reply of unexpected shape, never panics.

use crate::{
    bus::{Delivery, GroupInfo, MessageId, PendingEntry, PendingSummary, StreamInfo},
    error::{Error, Result},
    ErrorKind,
};
use bytes::Bytes;
use redis::Value;
use std::collections::BTreeMap;

/// The stream field that holds the msgpack envelope.
pub(crate) const BODY_FIELD: &str = "env";

fn protocol(what: &str) -> Error {
    Error::new(ErrorKind::Protocol, format!("unexpected Redis reply: {what}"))
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        other => text(other).map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Nil => None,
        other => std::str::from_utf8(text(other)?).ok()?.parse().ok(),
    }
}

pub(crate) fn message_id(v: &Value) -> Result<MessageId> {
    let b = text(v).ok_or_else(|| protocol("entry id is not a string"))?;
    id_bytes(b).ok_or_else(|| protocol("entry id is not `ms-seq`"))
}

/// `ms-seq` parsed from bytes (one id per entry read and per publish: no
/// UTF-8 pass, no `str::split_once`).
fn id_bytes(b: &[u8]) -> Option<MessageId> {
    fn num(d: &[u8]) -> Option<u64> {
        if d.is_empty() || d.len() > 20 {
            return None;
        }
        let mut n = 0u64;
        for c in &d[..d.len().min(19)] {
            let digit = c.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            // 19 digits cannot overflow a u64.
            n = n * 10 + u64::from(digit);
        }
        if d.len() == 20 {
            let digit = d[19].wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
        }
        Some(n)
    }
    let dash = b.iter().position(|c| *c == b'-')?;
    Some(MessageId {
        ms: num(&b[..dash])?,
        seq: num(&b[dash + 1..])?,
    })
}

/// An entry id as a command argument, written straight into the command
/// buffer (no `String` per id on the ack path).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdArg(pub(crate) MessageId);

impl redis::ToRedisArgs for IdArg {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        // Digits by hand, one write: `write!` goes through `fmt` and writes
        // three pieces, several times the cost, once per acked entry.
        fn put(buf: &mut [u8; 41], mut at: usize, mut n: u64) -> usize {
            loop {
                at -= 1;
                buf[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    return at;
                }
            }
        }
        let mut buf = [0u8; 41];
        let at = put(&mut buf, 41, self.0.seq) - 1;
        buf[at] = b'-';
        let at = put(&mut buf, at, self.0.ms);
        out.write_arg(&buf[at..]);
    }
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Array(items) if items.len() % 2 == 0 => {
            Some(items.chunks(2).map(|c| (&c[0], &c[1])).collect())
        }
        Value::Map(kv) => Some(kv.iter().map(|(k, v)| (k, v)).collect()),
        _ => None,
    }
}

fn field<'a>(kv: &[(&'a Value, &'a Value)], name: &str) -> Option<&'a Value> {
    kv.iter()
        .find(|(k, _)| text(k) == Some(name.as_bytes()))
        .map(|(_, v)| *v)
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// One `[id, [field, value, ...]]` entry. An entry without our body field
/// (written by someone else, or deleted) is delivered with an empty body, so
/// decoding it fails with a clear error and the consumer can still ack it.
pub(crate) fn entry(v: &Value, delivery_count: u64) -> Result<Delivery> {
    let parts = items(v)
        .filter(|p| p.len() == 2)
        .ok_or_else(|| protocol("stream entry is not [id, fields]"))?;
    let id = message_id(&parts[0])?;
    let kv = match &parts[1] {
        Value::Nil => Vec::new(),
        fields => pairs(fields).ok_or_else(|| protocol("entry fields are not field/value pairs"))?,
    };
    if let Some(body) = field(&kv, BODY_FIELD).and_then(text) {
        return Ok(Delivery::new(id, delivery_count, Bytes::copy_from_slice(body)));
    }
    let raw = kv
        .iter()
        .filter_map(|(k, v)| Some((Bytes::copy_from_slice(text(k)?), Bytes::copy_from_slice(text(v)?))))
        .collect();
    Ok(Delivery::new(id, delivery_count, Bytes::new()).with_fields(raw))
}

/// Entries of one stream, `[[id, fields], ...]`.
pub(crate) fn entries(v: &Value, delivery_count: u64) -> Result<Vec<Delivery>> {
    items(v)
        .ok_or_else(|| protocol("entries are not an array"))?
        .iter()
        .map(|e| entry(e, delivery_count))
        .collect()
}

/// An `XREADGROUP` reply for one stream: nil, `[[stream, entries]]` (RESP2)
/// or `{stream: entries}` (RESP3).
pub fn read_reply(v: &Value) -> Result<Vec<Delivery>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(kv) => kv
            .iter()
            .map(|(_, e)| entries(e, 1))
            .try_fold(Vec::new(), |mut all, r| {
                all.extend(r?);
                Ok(all)
            }),
        Value::Array(streams) => {
            let mut all = Vec::new();
            for s in streams {
                let pair = items(s)
                    .filter(|p| p.len() == 2)
                    .ok_or_else(|| protocol("stream reply is not [key, entries]"))?;
                all.extend(entries(&pair[1], 1)?);
            }
            Ok(all)
        }
        _ => Err(protocol("XREADGROUP reply is neither nil, array nor map")),
    }
}

/// The claim script's reply: `[[[id, fields, count], ...], [deleted ids]]`.
pub(crate) fn claim_script_reply(v: &Value) -> Result<(Vec<Delivery>, Vec<MessageId>)> {
    let parts = items(v)
        .filter(|p| p.len() == 2)
        .ok_or_else(|| protocol("claim reply is not [entries, deleted]"))?;
    let deliveries = items(&parts[0])
        .ok_or_else(|| protocol("claimed entries are not an array"))?
        .iter()
        .map(|row| {
            let row = items(row)
                .filter(|r| r.len() == 3)
                .ok_or_else(|| protocol("claimed entry is not [id, fields, count]"))?;
            let count = int(&row[2]).ok_or_else(|| protocol("claimed delivery count"))?;
            entry(&Value::Array(vec![row[0].clone(), row[1].clone()]), count)
        })
        .collect::<Result<_>>()?;
    let deleted = items(&parts[1])
        .ok_or_else(|| protocol("deleted ids are not an array"))?
        .iter()
        .map(message_id)
        .collect::<Result<_>>()?;
    Ok((deliveries, deleted))
}

/// An array of ids (the renew script's reply).
pub(crate) fn ids(v: &Value) -> Result<Vec<MessageId>> {
    items(v)
        .ok_or_else(|| protocol("ids are not an array"))?
        .iter()
        .map(message_id)
        .collect()
}

/// Extended `XPENDING` rows `[id, consumer, idle, count]`.
pub(crate) fn pending_rows(v: &Value) -> Result<Vec<PendingEntry>> {
    let rows = items(v).ok_or_else(|| protocol("XPENDING rows are not an array"))?;
    rows.iter()
        .map(|r| {
            let r = items(r)
                .filter(|r| r.len() == 4)
                .ok_or_else(|| protocol("XPENDING row"))?;
            Ok(PendingEntry::new(
                message_id(&r[0])?,
                string(&r[1]).ok_or_else(|| protocol("XPENDING consumer"))?,
                std::time::Duration::from_millis(int(&r[2]).ok_or_else(|| protocol("XPENDING idle"))?),
                int(&r[3]).ok_or_else(|| protocol("XPENDING delivery count"))?,
            ))
        })
        .collect()
}

/// Summary `XPENDING`: `[count, lowest, highest, [[consumer, count], ...]]`.
pub(crate) fn pending_summary(v: &Value) -> Result<PendingSummary> {
    let p = items(v)
        .filter(|p| p.len() == 4)
        .ok_or_else(|| protocol("XPENDING summary is not 4 items"))?;
    let opt_id = |v: &Value| {
        if matches!(v, Value::Nil) {
            Ok(None)
        } else {
            message_id(v).map(Some)
        }
    };
    let mut consumers = BTreeMap::new();
    if let Some(rows) = items(&p[3]) {
        for row in rows {
            let row = items(row)
                .filter(|r| r.len() == 2)
                .ok_or_else(|| protocol("XPENDING consumer row"))?;
            let name = string(&row[0]).ok_or_else(|| protocol("XPENDING consumer name"))?;
            consumers.insert(
                name,
                int(&row[1]).ok_or_else(|| protocol("XPENDING consumer count"))?,
            );
        }
    }
    Ok(PendingSummary {
        count: int(&p[0]).ok_or_else(|| protocol("XPENDING count"))?,
        lowest: opt_id(&p[1])?,
        highest: opt_id(&p[2])?,
        consumers,
    })
}

/// `XINFO GROUPS` rows.
pub(crate) fn groups(v: &Value) -> Result<Vec<GroupInfo>> {
    let rows = items(v).ok_or_else(|| protocol("XINFO GROUPS is not an array"))?;
    rows.iter()
        .map(|row| {
            let kv = pairs(row).ok_or_else(|| protocol("XINFO GROUPS row"))?;
            let num = |name| field(&kv, name).and_then(int);
            Ok(GroupInfo {
                name: field(&kv, "name")
                    .and_then(string)
                    .ok_or_else(|| protocol("group name"))?,
                consumers: num("consumers").unwrap_or(0),
                pending: num("pending").unwrap_or(0),
                last_delivered: field(&kv, "last-delivered-id")
                    .map(message_id)
                    .transpose()?
                    .unwrap_or_default(),
                lag: num("lag"),
                entries_read: num("entries-read"),
            })
        })
        .collect()
}

/// `XINFO STREAM` plus its groups.
pub(crate) fn stream_info(stream: &Value, groups_reply: &Value) -> Result<StreamInfo> {
    let kv = pairs(stream).ok_or_else(|| protocol("XINFO STREAM is not a map"))?;
    let edge = |name| -> Result<Option<MessageId>> {
        match field(&kv, name) {
            None | Some(Value::Nil) => Ok(None),
            Some(e) => Ok(Some(entry(e, 0)?.id)),
        }
    };
    Ok(StreamInfo {
        length: field(&kv, "length")
            .and_then(int)
            .ok_or_else(|| protocol("XINFO STREAM length"))?,
        first_id: edge("first-entry")?,
        last_id: edge("last-entry")?,
        groups: groups(groups_reply)?,
    })
}

/// The keep-unacknowledged append script's reply: the stream's length, and
/// the new ids, or `None` when the stream was full.
pub(crate) fn keep_add_reply(v: &Value) -> Result<(u64, Option<Vec<MessageId>>)> {
    let parts = items(v)
        .filter(|p| p.len() >= 2)
        .ok_or_else(|| protocol("append script reply is not [status, length, ...]"))?;
    let len = int(&parts[1]).ok_or_else(|| protocol("append script length"))?;
    match text(&parts[0]) {
        Some(b"ok") => Ok((
            len,
            Some(parts[2..].iter().map(message_id).collect::<Result<_>>()?),
        )),
        Some(b"full") => Ok((len, None)),
        _ => Err(protocol("append script status")),
    }
}

/// Entries trimmed before a group had them delivered, while the gap is still
/// ahead of it: Redis 7.0 keeps `lag = entries-added - entries-read` exact
/// across trims, so what exceeds the stream's length was trimmed unread.
pub(crate) fn trimmed_undelivered(lag: Option<u64>, length: u64) -> Option<u64> {
    lag.map(|lag| lag.saturating_sub(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn ids_parse_and_write_by_hand() {
        for (ms, seq) in [
            (0, 0),
            (1, 2),
            (1_700_000_000_000, 17),
            (u64::MAX, u64::MAX),
            (u64::MAX, 0),
        ] {
            let id = MessageId { ms, seq };
            assert_eq!(message_id(&b(&id.to_string())).unwrap(), id);
            let mut c = redis::Cmd::new();
            c.arg(IdArg(id));
            assert_eq!(
                c.args_iter().next(),
                Some(redis::Arg::Simple(id.to_string().as_bytes()))
            );
        }
        for bad in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "1-2-3",
            "18446744073709551616-0",
            "0-184467440737095516150",
            "+1-2",
            " 1-2",
        ] {
            assert!(message_id(&b(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn read_reply_resp2_and_resp3() {
        let e = Value::Array(vec![
            b("1-1"),
            Value::Array(vec![b("env"), b("xyz"), b("other"), b("1")]),
        ]);
        let r2 = Value::Array(vec![Value::Array(vec![b("s"), Value::Array(vec![e.clone()])])]);
        let r3 = Value::Map(vec![(b("s"), Value::Array(vec![e]))]);
        for r in [r2, r3] {
            let d = read_reply(&r).unwrap();
            assert_eq!(d[0].id, MessageId { ms: 1, seq: 1 });
            assert_eq!(&d[0].body[..], b"xyz");
        }
        assert!(read_reply(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn odd_shapes_are_errors_or_empty_bodies() {
        assert!(read_reply(&Value::Int(3)).is_err());
        assert!(read_reply(&Value::Array(vec![b("s")])).is_err());
        let no_body = Value::Array(vec![b("2-0"), Value::Array(vec![b("foreign"), b("1")])]);
        let d = entry(&no_body, 1).unwrap();
        assert!(d.body.is_empty());
        assert!(d.envelope().unwrap_err().to_string().contains("2-0"));
        assert!(entry(&Value::Array(vec![b("x"), Value::Nil]), 1).is_err());
        assert!(
            pending_summary(&Value::Array(vec![
                Value::Int(0),
                Value::Nil,
                Value::Nil,
                Value::Nil
            ]))
            .unwrap()
            .count
                == 0
        );
    }
}
