//! The control plane's settings and their limits.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use weft_crypto::TrustDomain;
use weft_store::NetworkName;

use crate::error::ControlError;

/// The network created at first start.
pub const DEFAULT_NETWORK: &str = "default";
/// The trust domain of the default network unless `--trust-domain` says otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.internal";
/// The default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// Limits on every input and on the work one client can cause.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest time a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Longest time for a TLS handshake, and for a request's headers.
    pub handshake_timeout: Duration,
    /// Most connections served at once (more wait in the accept queue).
    pub max_connections: usize,
    /// Requests per second allowed to one identity (token, SPIFFE ID, or
    /// client address when anonymous), sustained.
    pub rate_per_second: u32,
    /// Requests one identity may send in a burst.
    pub rate_burst: u32,
    /// Failed authentications per minute allowed from one client address.
    pub auth_failures_per_minute: u32,
    /// Longest time in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            rate_per_second: 100,
            rate_burst: 200,
            auth_failures_per_minute: 30,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Everything `weft control up` needs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Directory of the CA, the SQLite database, the embedded bus, the
    /// master key and the admin token file (created 0700 if missing).
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; `None`: `weft.db` in `data_dir`.
    pub db: Option<String>,
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Also offer classical key exchange (X25519, P-256, P-384) to clients
    /// that cannot do X25519MLKEM768; each such handshake is logged and
    /// counted.
    pub allow_classical_kex: bool,
    /// Trust domain of the default network, used when it is created.
    pub trust_domain: TrustDomain,
    /// Name of the default network.
    pub network: NetworkName,
    /// Host names and IP addresses the server's certificates name (besides
    /// its SPIFFE ID), for standard clients that check host names.
    pub server_names: Vec<String>,
    /// NATS URL of the bus; `None`: the embedded bus in `data_dir/bus`.
    pub nats: Option<String>,
    /// Lifetime of the SVIDs issued to nodes (they renew at half).
    pub svid_ttl: Duration,
    /// Lifetime of the server's own certificates (renewed at half).
    pub server_cert_ttl: Duration,
    /// Longest lifetime of a join token.
    pub max_join_token_ttl: Duration,
    /// Limits.
    pub limits: Limits,
}

impl ControlConfig {
    /// Defaults for `data_dir`: 127.0.0.1:8443, SQLite, embedded bus.
    pub fn new(data_dir: impl Into<PathBuf>) -> Result<Self, ControlError> {
        Ok(Self {
            data_dir: data_dir.into(),
            db: None,
            listen: DEFAULT_LISTEN
                .parse()
                .map_err(|_| ControlError::config("listen", "the default does not parse"))?,
            allow_classical_kex: false,
            trust_domain: TrustDomain::new(DEFAULT_TRUST_DOMAIN)
                .map_err(|e| ControlError::config("trust domain", e.to_string()))?,
            network: NetworkName::new(DEFAULT_NETWORK)
                .map_err(|e| ControlError::config("network", e.to_string()))?,
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            nats: None,
            svid_ttl: Duration::from_secs(3600),
            server_cert_ttl: Duration::from_secs(24 * 3600),
            max_join_token_ttl: Duration::from_secs(30 * 24 * 3600),
            limits: Limits::default(),
        })
    }

    /// Refuses settings out of range, naming the setting.
    pub fn check(&self) -> Result<(), ControlError> {
        let l = &self.limits;
        let range = |what: &'static str, ok: bool, rule: &str| {
            if ok {
                Ok(())
            } else {
                Err(ControlError::config(what, rule.to_owned()))
            }
        };
        range(
            "max body size",
            (1024..=16 * 1024 * 1024).contains(&l.max_body_bytes),
            "must be 1 KiB to 16 MiB",
        )?;
        range(
            "request timeout",
            (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&l.request_timeout),
            "must be 100 ms to 10 minutes",
        )?;
        range(
            "handshake timeout",
            (Duration::from_millis(100)..=Duration::from_secs(120)).contains(&l.handshake_timeout),
            "must be 100 ms to 2 minutes",
        )?;
        range(
            "max connections",
            (1..=1_000_000).contains(&l.max_connections),
            "must be 1 to 1,000,000",
        )?;
        range(
            "rate limit",
            l.rate_per_second >= 1 && l.rate_burst >= 1 && l.auth_failures_per_minute >= 1,
            "rates and bursts must be at least 1",
        )?;
        range(
            "SVID lifetime",
            (Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600))
                .contains(&self.svid_ttl),
            "must be 1 minute to 30 days",
        )?;
        range(
            "server certificate lifetime",
            (Duration::from_secs(600)..=Duration::from_secs(90 * 24 * 3600))
                .contains(&self.server_cert_ttl),
            "must be 10 minutes to 90 days",
        )?;
        range(
            "join token lifetime",
            (Duration::from_secs(60)..=Duration::from_secs(365 * 24 * 3600))
                .contains(&self.max_join_token_ttl),
            "must be 1 minute to 1 year",
        )?;
        range(
            "server names",
            !self.server_names.is_empty() && self.server_names.len() <= 32,
            "give 1 to 32 host names or addresses",
        )?;
        self.split_server_names().map(drop)
    }

    /// The server names split into DNS names and IP addresses.
    pub fn split_server_names(&self) -> Result<(Vec<String>, Vec<IpAddr>), ControlError> {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &self.server_names {
            if let Ok(ip) = name.parse::<IpAddr>() {
                ips.push(ip);
            } else if !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'*')
            {
                dns.push(name.to_ascii_lowercase());
            } else {
                return Err(ControlError::config(
                    "server name",
                    format!(
                        "{:?} is neither an IP address nor a DNS name (letters, digits, - and .)",
                        name.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
        if !self.listen.ip().is_unspecified() && !ips.contains(&self.listen.ip()) {
            ips.push(self.listen.ip());
        }
        Ok((dns, ips))
    }
}
