//! Commands and acknowledgements: their values, wire form and signatures.
//!
//! Both travel as [`Envelope`]s whose msgpack payload holds every field as a
//! plain string or integer, plus an HMAC-SHA256 tag over a canonical
//! encoding of those fields: a domain string, then each field as its byte
//! length (8 bytes, big endian) and its bytes, in a fixed order. The
//! arguments and results are signed as the exact JSON text carried, so no
//! JSON canonicalisation is needed on either side.

use crate::{
    error::{Error, Result},
    Envelope, InstanceId, ServiceName, StreamName,
};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::{fmt, sync::Arc, time::Duration};

/// The environment variable holding the fleet's control key.
pub const KEY_ENV: &str = "SG_CONTROL_KEY";
/// Shortest control key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
/// Envelope kind of a command on the control stream.
pub const COMMAND_KIND: &str = "control.command";
/// Envelope kind of an acknowledgement on a reply stream.
pub const ACK_KIND: &str = "control.ack";
/// The registry status of a quiet instance (`{"status": "quiet"}`).
pub const QUIET_STATUS: &str = "quiet";

const WIRE_VERSION: u32 = 1;
const COMMAND_DOMAIN: &[u8] = b"fleetwire.control.command.v1";
const ACK_DOMAIN: &[u8] = b"fleetwire.control.ack.v1";
const TAG_BYTES: usize = 32;
/// Longest application command name.
const MAX_OP_LEN: usize = 64;

/// The fleet's shared secret that signs and verifies control traffic.
///
/// Its `Debug` never prints the key.
///
/// ```
/// use fleetwire::control::ControlKey;
/// assert!(ControlKey::new("too short").is_err());
/// let key = ControlKey::new("a fleet secret of 32 bytes or so")?;
/// assert_eq!(format!("{key:?}"), "ControlKey(<redacted>)");
/// # Ok::<(), fleetwire::Error>(())
/// ```
#[derive(Clone)]
pub struct ControlKey(Arc<[u8]>);

impl fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlKey(<redacted>)")
    }
}

impl ControlKey {
    /// A key of at least [`MIN_KEY_BYTES`] bytes; a shorter one is
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput).
    pub fn new(key: impl AsRef<[u8]>) -> Result<Self> {
        let key = key.as_ref();
        if key.len() < MIN_KEY_BYTES {
            return Err(Error::invalid(format!(
                "control key is {} bytes; at least {MIN_KEY_BYTES} are required",
                key.len()
            )));
        }
        Ok(Self(Arc::from(key)))
    }

    /// The key in `SG_CONTROL_KEY` (its UTF-8 bytes); `None` when unset or
    /// empty, an error when too short or not UTF-8.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(KEY_ENV) {
            Ok(v) if v.is_empty() => Ok(None),
            Ok(v) => Self::new(v)
                .map(Some)
                .map_err(|e| Error::invalid(format!("{KEY_ENV}: {e}"))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(Error::invalid(format!("{KEY_ENV} is not valid UTF-8")))
            }
        }
    }

    fn mac(&self, domain: &[u8], fields: &[&[u8]]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in std::iter::once(domain).chain(fields.iter().copied()) {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn sign(&self, domain: &[u8], fields: &[&[u8]]) -> Vec<u8> {
        self.mac(domain, fields).finalize().into_bytes().to_vec()
    }

    /// Constant-time comparison of `tag` with the tag of `fields`.
    fn verify(&self, domain: &[u8], fields: &[&[u8]], tag: &[u8]) -> bool {
        self.mac(domain, fields).verify_slice(tag).is_ok()
    }
}

/// What a command asks an instance to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Shut down gracefully, then exit with
    /// [`EXIT_RESTART`](crate::service::EXIT_RESTART) so a supervisor starts it again.
    Restart,
    /// Stop taking new work: runners built with the lifecycle's
    /// [`Pause`](crate::consumer::Pause) stop reading, readiness turns 503,
    /// the registry shows [`QUIET_STATUS`]. The instance stays registered.
    Quiet,
    /// Undo [`Quiet`](Self::Quiet).
    Resume,
    /// Answer with this instance's state: a roll call.
    Ping,
    /// An application command (`pull`, say), handed to
    /// [`Service::on_command`](crate::service::Service::on_command).
    App(String),
}

impl Op {
    /// An application command: 1–64 bytes of `[a-z0-9._-]`, not a built-in name.
    pub fn app(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match Self::parse(&name)? {
            Self::App(_) => Ok(Self::App(name)),
            _ => Err(Error::invalid(format!(
                "`{name}` is a built-in control command, not an application one"
            ))),
        }
    }

    /// The op of a wire name: a built-in one, or a valid application name.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "restart" => Self::Restart,
            "quiet" => Self::Quiet,
            "resume" => Self::Resume,
            "ping" => Self::Ping,
            _ => {
                let ok = !name.is_empty()
                    && name.len() <= MAX_OP_LEN
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                    });
                if !ok {
                    return Err(Error::invalid(format!(
                        "invalid control command `{}`: expected 1-{MAX_OP_LEN} bytes of a-z, 0-9, `.`, `_`, `-`",
                        name.escape_debug()
                    )));
                }
                Self::App(name.to_owned())
            }
        })
    }

    /// The wire name.
    pub fn name(&self) -> &str {
        match self {
            Self::Restart => "restart",
            Self::Quiet => "quiet",
            Self::Resume => "resume",
            Self::Ping => "ping",
            Self::App(name) => name,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which instances a command is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// One instance of one service.
    Instance {
        /// Its service.
        service: ServiceName,
        /// The instance.
        instance: InstanceId,
    },
    /// Every instance of a service.
    Service(ServiceName),
    /// Every instance reading the control stream.
    Fleet,
}

impl Target {
    /// One instance.
    pub fn instance(service: impl AsRef<str>, instance: impl AsRef<str>) -> Result<Self> {
        Ok(Self::Instance {
            service: ServiceName::new(service)?,
            instance: InstanceId::new(instance)?,
        })
    }

    /// Every instance of `service`.
    pub fn service(service: impl AsRef<str>) -> Result<Self> {
        Ok(Self::Service(ServiceName::new(service)?))
    }

    /// Whether instance `instance` of `service` is targeted.
    pub fn matches(&self, service: &ServiceName, instance: &InstanceId) -> bool {
        match self {
            Self::Instance {
                service: s,
                instance: i,
            } => s == service && i == instance,
            Self::Service(s) => s == service,
            Self::Fleet => true,
        }
    }

    fn wire(&self) -> (&'static str, &str, &str) {
        match self {
            Self::Instance { service, instance } => ("instance", service.as_str(), instance.as_str()),
            Self::Service(s) => ("service", s.as_str(), ""),
            Self::Fleet => ("fleet", "", ""),
        }
    }

    fn from_wire(kind: &str, service: &str, instance: &str) -> Result<Self> {
        match (kind, service.is_empty(), instance.is_empty()) {
            ("instance", false, false) => Self::instance(service, instance),
            ("service", false, true) => Self::service(service),
            ("fleet", true, true) => Ok(Self::Fleet),
            _ => Err(Error::codec(format!(
                "invalid control target `{}`",
                kind.escape_debug()
            ))),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Instance { service, instance } => write!(f, "{service}/{instance}"),
            Self::Service(s) => write!(f, "{s}/*"),
            Self::Fleet => f.write_str("*"),
        }
    }
}

/// One control command. Every field is covered by its signature.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Command {
    /// Unique id (128 random bits in hex): the at-most-once key.
    pub id: String,
    /// What to do.
    pub op: Op,
    /// Who should do it.
    pub target: Target,
    /// Arguments, handed as they are to the application hook.
    pub args: serde_json::Value,
    /// Issue time, milliseconds since the Unix epoch (sender's clock).
    pub issued_at_ms: u64,
    /// Not executed at or after this time.
    pub expires_at_ms: u64,
    /// Who sent it, for logs.
    pub sender: String,
    /// Where acknowledgements go; `None` sends none.
    pub reply_to: Option<StreamName>,
}

/// Why a control envelope was refused before anything about it was trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Not a control message of a known version, or fields out of shape.
    Malformed,
    /// No signature.
    Unsigned,
    /// A signature that does not match the fields under the fleet key.
    Forged,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed",
            Self::Unsigned => "unsigned",
            Self::Forged => "forged",
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct WireCommand {
    v: u32,
    id: String,
    op: String,
    target: String,
    service: String,
    instance: String,
    args: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
    sender: String,
    reply_to: String,
    #[serde(default, with = "serde_bytes")]
    sig: Vec<u8>,
}

impl WireCommand {
    fn fields(&self) -> [Vec<u8>; 11] {
        [
            self.v.to_be_bytes().to_vec(),
            self.id.as_bytes().to_vec(),
            self.op.as_bytes().to_vec(),
            self.target.as_bytes().to_vec(),
            self.service.as_bytes().to_vec(),
            self.instance.as_bytes().to_vec(),
            self.args.as_bytes().to_vec(),
            self.issued_at_ms.to_be_bytes().to_vec(),
            self.expires_at_ms.to_be_bytes().to_vec(),
            self.sender.as_bytes().to_vec(),
            self.reply_to.as_bytes().to_vec(),
        ]
    }
}

fn refs(fields: &[Vec<u8>]) -> Vec<&[u8]> {
    fields.iter().map(Vec::as_slice).collect()
}

/// 128 random bits in hex.
pub(crate) fn random_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

impl Command {
    /// A command for `target`, issued now, expiring in 30 s, without
    /// arguments or reply stream.
    pub fn new(target: Target, op: Op) -> Self {
        let now = crate::clock::unix_ms();
        Self {
            id: random_id(),
            op,
            target,
            args: serde_json::Value::Null,
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(30_000),
            sender: String::new(),
            reply_to: None,
        }
    }

    /// Set the arguments.
    pub fn with_args(mut self, args: serde_json::Value) -> Self {
        self.args = args;
        self
    }

    /// Expire `ttl` after the issue time.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.expires_at_ms = self.issued_at_ms.saturating_add(crate::clock::duration_ms(ttl));
        self
    }

    /// Set issue and expiry times (milliseconds since the Unix epoch).
    pub fn with_times(mut self, issued_at_ms: u64, expires_at_ms: u64) -> Self {
        self.issued_at_ms = issued_at_ms;
        self.expires_at_ms = expires_at_ms;
        self
    }

    /// Set the stream acknowledgements go to.
    pub fn with_reply_to(mut self, stream: StreamName) -> Self {
        self.reply_to = Some(stream);
        self
    }

    /// Set the sender's name (shown in logs).
    pub fn with_sender(mut self, sender: impl Into<String>) -> Self {
        self.sender = sender.into();
        self
    }

    fn to_wire(&self) -> Result<WireCommand> {
        let (target, service, instance) = self.target.wire();
        let args = serde_json::to_string(&self.args).map_err(|e| {
            Error::codec(format!("encode arguments of control command `{}`", self.op)).with_source(e)
        })?;
        Ok(WireCommand {
            v: WIRE_VERSION,
            id: self.id.clone(),
            op: self.op.name().to_owned(),
            target: target.to_owned(),
            service: service.to_owned(),
            instance: instance.to_owned(),
            args,
            issued_at_ms: self.issued_at_ms,
            expires_at_ms: self.expires_at_ms,
            sender: self.sender.clone(),
            reply_to: self.reply_to.as_ref().map_or_else(String::new, |s| s.to_string()),
            sig: Vec::new(),
        })
    }

    /// The envelope to publish on the control stream, signed with `key`.
    pub fn sign(&self, key: &ControlKey) -> Result<Envelope> {
        let mut wire = self.to_wire()?;
        wire.sig = key.sign(COMMAND_DOMAIN, &refs(&wire.fields()));
        Envelope::new(COMMAND_KIND).with_payload(&wire)
    }

    /// The same envelope without a signature (for tests of the refusal).
    pub fn unsigned(&self) -> Result<Envelope> {
        Envelope::new(COMMAND_KIND).with_payload(&self.to_wire()?)
    }

    /// Check the signature of a control envelope under `key` and decode it.
    /// Nothing in the envelope is trusted (or parsed beyond its fields)
    /// before the signature checks out.
    pub fn verify(envelope: &Envelope, key: &ControlKey) -> std::result::Result<Self, Rejection> {
        if envelope.kind != COMMAND_KIND {
            return Err(Rejection::Malformed);
        }
        let wire: WireCommand = envelope.payload_as().map_err(|_| Rejection::Malformed)?;
        if wire.v != WIRE_VERSION {
            return Err(Rejection::Malformed);
        }
        if wire.sig.is_empty() {
            return Err(Rejection::Unsigned);
        }
        if wire.sig.len() != TAG_BYTES || !key.verify(COMMAND_DOMAIN, &refs(&wire.fields()), &wire.sig) {
            return Err(Rejection::Forged);
        }
        let reply_to = match wire.reply_to.as_str() {
            "" => None,
            s => Some(StreamName::new(s).map_err(|_| Rejection::Malformed)?),
        };
        Ok(Self {
            op: Op::parse(&wire.op).map_err(|_| Rejection::Malformed)?,
            target: Target::from_wire(&wire.target, &wire.service, &wire.instance)
                .map_err(|_| Rejection::Malformed)?,
            args: serde_json::from_str(&wire.args).map_err(|_| Rejection::Malformed)?,
            id: wire.id,
            issued_at_ms: wire.issued_at_ms,
            expires_at_ms: wire.expires_at_ms,
            sender: wire.sender,
            reply_to,
        })
    }
}

/// `signed` with its arguments replaced and its tag kept: a tampered
/// command, for the conformance suite.
#[cfg(feature = "testkit")]
pub(crate) fn tamper_args(signed: &Envelope, args: &serde_json::Value) -> Result<Envelope> {
    let mut wire: WireCommand = signed.payload_as()?;
    wire.args = args.to_string();
    Envelope::new(COMMAND_KIND).with_payload(&wire)
}

/// How a command ended on one instance.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// Executed; the result (a ping's state, an application hook's value).
    Done(serde_json::Value),
    /// Executed and failed, with why.
    Failed(String),
    /// Not executed, with why; the reason starts with one of the
    /// [`reason`](super::reason) words.
    Ignored(String),
}

impl Outcome {
    /// Whether it is [`Done`](Self::Done).
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done(_))
    }

    /// The result of a [`Done`](Self::Done) outcome.
    pub fn result(&self) -> Option<&serde_json::Value> {
        match self {
            Self::Done(v) => Some(v),
            _ => None,
        }
    }

    /// The reason of a failed or ignored outcome.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Failed(r) | Self::Ignored(r) => Some(r),
            Self::Done(_) => None,
        }
    }
}

/// What an acknowledgement says.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AckStatus {
    /// The command passed every check and is about to run.
    Accepted,
    /// The command ended.
    Finished(Outcome),
}

/// One instance's acknowledgement of one command, signed with the fleet key.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Ack {
    /// The command acknowledged.
    pub command_id: String,
    /// The answering instance's service.
    pub service: ServiceName,
    /// The answering instance.
    pub instance: InstanceId,
    /// What it says.
    pub status: AckStatus,
    /// When it was sent, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireAck {
    v: u32,
    command_id: String,
    service: String,
    instance: String,
    status: String,
    detail: String,
    at_ms: u64,
    #[serde(default, with = "serde_bytes")]
    sig: Vec<u8>,
}

impl WireAck {
    fn fields(&self) -> [Vec<u8>; 7] {
        [
            self.v.to_be_bytes().to_vec(),
            self.command_id.as_bytes().to_vec(),
            self.service.as_bytes().to_vec(),
            self.instance.as_bytes().to_vec(),
            self.status.as_bytes().to_vec(),
            self.detail.as_bytes().to_vec(),
            self.at_ms.to_be_bytes().to_vec(),
        ]
    }
}

impl Ack {
    /// An acknowledgement sent now.
    pub fn new(
        command_id: impl Into<String>,
        service: ServiceName,
        instance: InstanceId,
        status: AckStatus,
    ) -> Self {
        Self {
            command_id: command_id.into(),
            service,
            instance,
            status,
            at_ms: crate::clock::unix_ms(),
        }
    }

    /// The envelope to publish on the reply stream, signed with `key`.
    pub fn sign(&self, key: &ControlKey) -> Result<Envelope> {
        let (status, detail) = match &self.status {
            AckStatus::Accepted => ("accepted", String::new()),
            AckStatus::Finished(Outcome::Done(v)) => (
                "done",
                serde_json::to_string(v)
                    .map_err(|e| Error::codec("encode a control command's result").with_source(e))?,
            ),
            AckStatus::Finished(Outcome::Failed(r)) => ("failed", r.clone()),
            AckStatus::Finished(Outcome::Ignored(r)) => ("ignored", r.clone()),
        };
        let mut wire = WireAck {
            v: WIRE_VERSION,
            command_id: self.command_id.clone(),
            service: self.service.to_string(),
            instance: self.instance.to_string(),
            status: status.to_owned(),
            detail,
            at_ms: self.at_ms,
            sig: Vec::new(),
        };
        wire.sig = key.sign(ACK_DOMAIN, &refs(&wire.fields()));
        Envelope::new(ACK_KIND).with_payload(&wire)
    }

    /// Check the signature of an acknowledgement under `key` and decode it.
    pub fn verify(envelope: &Envelope, key: &ControlKey) -> std::result::Result<Self, Rejection> {
        if envelope.kind != ACK_KIND {
            return Err(Rejection::Malformed);
        }
        let wire: WireAck = envelope.payload_as().map_err(|_| Rejection::Malformed)?;
        if wire.v != WIRE_VERSION {
            return Err(Rejection::Malformed);
        }
        if wire.sig.is_empty() {
            return Err(Rejection::Unsigned);
        }
        if wire.sig.len() != TAG_BYTES || !key.verify(ACK_DOMAIN, &refs(&wire.fields()), &wire.sig) {
            return Err(Rejection::Forged);
        }
        let status = match wire.status.as_str() {
            "accepted" => AckStatus::Accepted,
            "done" => AckStatus::Finished(Outcome::Done(
                serde_json::from_str(&wire.detail).map_err(|_| Rejection::Malformed)?,
            )),
            "failed" => AckStatus::Finished(Outcome::Failed(wire.detail)),
            "ignored" => AckStatus::Finished(Outcome::Ignored(wire.detail)),
            _ => return Err(Rejection::Malformed),
        };
        Ok(Self {
            command_id: wire.command_id,
            service: ServiceName::new(&wire.service).map_err(|_| Rejection::Malformed)?,
            instance: InstanceId::new(&wire.instance).map_err(|_| Rejection::Malformed)?,
            status,
            at_ms: wire.at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ControlKey {
        ControlKey::new("0123456789abcdef-fleet").unwrap()
    }

    #[test]
    fn a_signed_command_round_trips_and_every_field_is_covered() {
        let cmd = Command::new(Target::service("api").unwrap(), Op::app("pull").unwrap())
            .with_args(serde_json::json!({"ref": "main", "n": [1, 2]}))
            .with_sender("ops")
            .with_reply_to(StreamName::new("sg:stream:control:reply:x").unwrap());
        let env = cmd.sign(&key()).unwrap();
        assert_eq!(Command::verify(&env, &key()).unwrap(), cmd);
        let other = ControlKey::new("another key, 16+ bytes").unwrap();
        assert_eq!(Command::verify(&env, &other), Err(Rejection::Forged));
        assert_eq!(
            Command::verify(&cmd.unsigned().unwrap(), &key()),
            Err(Rejection::Unsigned)
        );
        // Change each field of the signed wire form in turn: every change is caught.
        let wire: WireCommand = env.payload_as().unwrap();
        let tamper: Vec<fn(&mut WireCommand)> = vec![
            |w| w.id.push('0'),
            |w| w.op = "restart".into(),
            |w| w.target = "fleet".into(),
            |w| w.service = "apj".into(),
            |w| w.args = r#"{"ref":"evil"}"#.into(),
            |w| w.issued_at_ms += 1,
            |w| w.expires_at_ms += 1,
            |w| w.sender.push('!'),
            |w| w.reply_to = "sg:stream:inbound".into(),
            |w| w.sig[0] ^= 1,
        ];
        for (n, t) in tamper.iter().enumerate() {
            let mut w: WireCommand = env.payload_as().unwrap();
            t(&mut w);
            let forged = Envelope::new(COMMAND_KIND).with_payload(&w).unwrap();
            assert_eq!(
                Command::verify(&forged, &key()),
                Err(Rejection::Forged),
                "tamper #{n}"
            );
        }
        assert_eq!(wire.sig.len(), TAG_BYTES);
    }

    #[test]
    fn acks_round_trip_and_refuse_forgeries() {
        let s = ServiceName::new("api").unwrap();
        let i = InstanceId::new("api-1").unwrap();
        for status in [
            AckStatus::Accepted,
            AckStatus::Finished(Outcome::Done(serde_json::json!({"ok": true}))),
            AckStatus::Finished(Outcome::Failed("boom".into())),
            AckStatus::Finished(Outcome::Ignored("expired".into())),
        ] {
            let ack = Ack::new("c1", s.clone(), i.clone(), status);
            let env = ack.sign(&key()).unwrap();
            assert_eq!(Ack::verify(&env, &key()).unwrap(), ack);
            let mut w: WireAck = env.payload_as().unwrap();
            w.status = "done".into();
            w.detail = "{}".into();
            let forged = Envelope::new(ACK_KIND).with_payload(&w).unwrap();
            if !matches!(ack.status, AckStatus::Finished(Outcome::Done(_))) {
                assert_eq!(Ack::verify(&forged, &key()), Err(Rejection::Forged));
            }
        }
    }

    #[test]
    fn op_names() {
        assert_eq!(Op::parse("restart").unwrap(), Op::Restart);
        assert_eq!(Op::parse("pull").unwrap(), Op::App("pull".into()));
        assert!(Op::app("ping").is_err());
        assert!(Op::app("Pull").is_err());
        assert!(Op::app("").is_err());
        assert!(Op::app("a b").is_err());
        assert!(Op::app("x".repeat(65)).is_err());
    }
}
