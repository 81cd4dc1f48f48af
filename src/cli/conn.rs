//! Global options and the connections every command shares.

use crate::Failure;
use fleetwire::{
    redis::{RedisBackend, RedisTls},
    ErrorKind, EventBus, RegistryStore, StreamName,
};
use std::{path::PathBuf, sync::Arc, time::Duration};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub(crate) struct Global {
    /// Redis URL [default: $SG_REDIS_URL, else $REDIS_URL, else redis://127.0.0.1:6379]
    #[arg(long, global = true, value_name = "URL")]
    redis: Option<String>,
    /// Key namespace of the registry [default: $SG_NAMESPACE, else sg]
    #[arg(long, global = true, value_name = "NS")]
    namespace: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Streams to show (`status`, `streams`); repeatable. Default: every stream in the database.
    #[arg(long = "stream", global = true, value_name = "STREAM")]
    streams: Vec<String>,
    /// CA certificate (PEM) to trust for a rediss:// URL instead of the system's roots [default: $SG_REDIS_TLS_CA]
    #[arg(long, global = true, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key [default: $SG_REDIS_TLS_CERT]
    #[arg(long, global = true, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert [default: $SG_REDIS_TLS_KEY]
    #[arg(long, global = true, value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

/// PEM files read from the TLS options, for the backend and the raw connection alike.
struct TlsFiles {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// `None` when no TLS option is given (a rediss:// URL then trusts the system's roots).
    fn read(g: &Global, env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, Failure> {
        let pick = |flag: &Option<PathBuf>, var: &str| flag.clone().or_else(|| env(var).map(PathBuf::from));
        let ca = pick(&g.tls_ca, "SG_REDIS_TLS_CA");
        let cert = pick(&g.tls_cert, "SG_REDIS_TLS_CERT");
        let key = pick(&g.tls_key, "SG_REDIS_TLS_KEY");
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| Failure::Usage(format!("cannot read `{}`: {e}", p.display())))
        };
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((read(&c)?, read(&k)?)),
            (None, None) => None,
            (Some(_), None) => return Err(Failure::Usage("--tls-cert needs --tls-key".into())),
            (None, Some(_)) => return Err(Failure::Usage("--tls-key needs --tls-cert".into())),
        };
        let ca = ca.as_ref().map(read).transpose()?;
        Ok((ca.is_some() || client.is_some()).then_some(Self { ca, client }))
    }

    fn backend(&self) -> RedisTls {
        let mut tls = RedisTls::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_pem(ca.clone());
        }
        if let Some((cert, key)) = &self.client {
            tls = tls.client_cert_pem(cert.clone(), key.clone());
        }
        tls
    }
}

/// What a command works with.
pub(crate) struct Ctx {
    pub(crate) json: bool,
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) bus: Arc<dyn EventBus>,
    pub(crate) registry: Arc<dyn RegistryStore>,
    /// For what the crate's contracts do not offer: listing streams.
    backend: RedisBackend,
    streams: Vec<String>,
}

impl Ctx {
    pub(crate) async fn connect(g: &Global) -> Result<Self, Failure> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url = g
            .redis
            .clone()
            .or_else(|| env("SG_REDIS_URL"))
            .or_else(|| env("REDIS_URL"))
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let namespace = g
            .namespace
            .clone()
            .or_else(|| env("SG_NAMESPACE"))
            .unwrap_or_else(|| "sg".to_owned());
        let shown = redact(&url);
        let tls = TlsFiles::read(g, env)?;
        let mut builder = RedisBackend::builder()
            .url(url.clone())
            .namespace(namespace.clone())
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(n) = env("SG_STREAM_MAXLEN") {
            let n = n
                .parse()
                .map_err(|_| Failure::Runtime(format!("SG_STREAM_MAXLEN `{n}` is not a number")))?;
            builder = builder.max_len(n);
        }
        if let Some(tls) = &tls {
            builder = builder.tls(tls.backend());
        }
        let backend = builder.build().map_err(|e| match e.kind() {
            ErrorKind::InvalidInput => Failure::Usage(e.to_string()),
            _ => Failure::Runtime(e.to_string()),
        })?;
        let unreachable = |e: &dyn std::fmt::Display| {
            Failure::Runtime(format!(
                "cannot reach Redis at {shown}: {}",
                redact(&e.to_string())
            ))
        };
        backend.ping().await.map_err(|e| match e.kind() {
            ErrorKind::Authentication => Failure::Runtime(format!(
                "Redis at {shown} refused the credentials: {}",
                redact(&e.to_string())
            )),
            ErrorKind::Tls => Failure::Runtime(format!(
                "TLS with Redis at {shown} failed (check --tls-ca, --tls-cert, --tls-key and the host name): {}",
                redact(&e.to_string())
            )),
            _ => unreachable(&e),
        })?;
        Ok(Self {
            json: g.json,
            url: shown,
            namespace,
            bus: Arc::new(backend.bus()),
            registry: Arc::new(backend.registry()),
            backend,
            streams: g.streams.clone(),
        })
    }

    /// The streams asked for with `--stream`, else every stream key of the
    /// database (stream keys are not namespaced), sorted.
    pub(crate) async fn streams(&self) -> Result<Vec<StreamName>, Failure> {
        if !self.streams.is_empty() {
            return self
                .streams
                .iter()
                .map(|s| StreamName::new(s.as_str()).map_err(Failure::from))
                .collect();
        }
        self.backend.stream_names().await.map_err(|e| {
            Failure::Runtime(format!(
                "listing streams on {} failed: {}",
                self.url,
                redact(&e.to_string())
            ))
        })
    }

    /// Whether `--stream` named the streams (then a missing one is an error).
    pub(crate) fn streams_named(&self) -> bool {
        !self.streams.is_empty()
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`, anywhere in `s`.
pub(crate) fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', ' ', '\n']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &tail[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// A missing stream asked for by name is "not found" (exit 3).
pub(crate) fn missing_stream(stream: &StreamName) -> Failure {
    Failure::NotFound(format!("stream `{stream}` not found"))
}
