//! What the benches share: the sample envelope and the raw baseline command.
#![allow(dead_code)]

use fleetwire::Envelope;

/// A typical envelope, about 250 bytes encoded.
pub fn envelope() -> Envelope {
    Envelope::new("message.inbound")
        .with_trace_id("6f1c2a9e-93f1-4a57-b0b2-1d0e6f3a2c11")
        .with_header("platform", "discord")
        .with_header("channel_id", "1234567890")
        .with_raw_payload(vec![b'x'; 100])
}

/// The raw redis-rs baseline of a publish: `XADD stream MAXLEN ~ 10000 * env body`.
#[cfg(feature = "redis")]
pub fn raw_xadd(stream: &str, body: &[u8]) -> redis::Cmd {
    let mut c = redis::cmd("XADD");
    c.arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(10_000)
        .arg("*")
        .arg("env")
        .arg(body);
    c
}
