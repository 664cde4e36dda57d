//! The control plane's settings and their limits.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    /// The self-healing loop.
    pub heal: crate::heal::HealConfig,
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
            heal: crate::heal::HealConfig::default(),
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
        self.heal.check()?;
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

/// Largest configuration file read.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// The control plane's configuration file (`weft control up --config
/// control.toml`): every key optional, unknown keys refused. Durations
/// are text with a unit (`90s`, `30m`, `1h`, `30d`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The data directory.
    pub data_dir: Option<PathBuf>,
    /// The store: `sqlite://PATH` or `postgres://…`.
    pub db: Option<String>,
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// Also offer classical key exchange to clients without the hybrid.
    pub allow_classical_kex: Option<bool>,
    /// Trust domain of the network, used when it is created.
    pub trust_domain: Option<String>,
    /// The network this control plane serves.
    pub network: Option<String>,
    /// Host names and addresses in the server's certificates.
    pub server_names: Option<Vec<String>>,
    /// NATS URL of the bus.
    pub nats: Option<String>,
    /// Lifetime of node SVIDs.
    pub svid_ttl: Option<String>,
    /// Lifetime of the server's certificates.
    pub server_cert_ttl: Option<String>,
    /// Longest lifetime of a join token.
    pub max_join_token_ttl: Option<String>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsFile,
    /// The self-healing loop.
    #[serde(default)]
    pub heal: HealFile,
}

/// The `[heal]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealFile {
    /// Run the self-healing loop in this process.
    pub enabled: Option<bool>,
    /// Its policy file (the built-in default policy if absent).
    pub policy: Option<PathBuf>,
    /// How often a cycle runs (`1s`).
    pub cycle_interval: Option<String>,
    /// Admin sockets of agents on this host: node id to socket path.
    #[serde(default)]
    pub agent_sockets: std::collections::BTreeMap<String, PathBuf>,
}

/// The `[limits]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request body, bytes.
    pub max_body_bytes: Option<usize>,
    /// Longest time a request may take.
    pub request_timeout: Option<String>,
    /// Longest TLS handshake, and wait for request headers.
    pub handshake_timeout: Option<String>,
    /// Most connections at once.
    pub max_connections: Option<usize>,
    /// Requests per second per identity.
    pub rate_per_second: Option<u32>,
    /// Burst per identity.
    pub rate_burst: Option<u32>,
    /// Failed authentications per minute per client address.
    pub auth_failures_per_minute: Option<u32>,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_grace: Option<String>,
}

/// Parses a duration with a unit (`90s`, `30m`, `1h`, `30d`), naming the key.
pub fn parse_duration(key: &'static str, text: &str) -> Result<Duration, ControlError> {
    let d = humantime::parse_duration(text).map_err(|e| {
        ControlError::config(
            key,
            format!(
                "{:?} is not a duration: {e}; use a number with a unit, e.g. 90s, 30m, 1h, 30d",
                text.chars().take(64).collect::<String>()
            ),
        )
    })?;
    if d.is_zero() {
        return Err(ControlError::config(key, "must be longer than zero"));
    }
    Ok(d)
}

impl ConfigFile {
    /// Parses a configuration file's text; unknown keys and values of the
    /// wrong type are refused with the key and its line.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ControlError> {
        toml::from_str(text).map_err(|e| {
            ControlError::config(
                "configuration file",
                format!(
                    "{origin}: {}",
                    e.to_string().trim_end().replace('\n', "\n  ")
                ),
            )
        })
    }

    /// Reads and parses a configuration file (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Self, ControlError> {
        let origin = path.display().to_string();
        let len = std::fs::metadata(path)
            .map_err(ControlError::io(
                "cannot read the configuration file",
                &origin,
            ))?
            .len();
        if len > MAX_CONFIG_FILE {
            return Err(ControlError::config(
                "configuration file",
                format!("{origin} is {len} bytes; at most {MAX_CONFIG_FILE} are read"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(ControlError::io(
            "cannot read the configuration file",
            &origin,
        ))?;
        Self::parse(&text, &origin)
    }

    /// Settings from this file over the defaults (the data directory is
    /// the file's, or `weft-data`).
    pub fn to_config(&self) -> Result<ControlConfig, ControlError> {
        let mut c = ControlConfig::new(
            self.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("weft-data")),
        )?;
        if let Some(db) = &self.db {
            c.db = Some(db.clone());
        }
        if let Some(listen) = self.listen {
            c.listen = listen;
        }
        if let Some(allow) = self.allow_classical_kex {
            c.allow_classical_kex = allow;
        }
        if let Some(td) = &self.trust_domain {
            c.trust_domain = TrustDomain::new(td)
                .map_err(|e| ControlError::config("trust_domain", e.to_string()))?;
        }
        if let Some(name) = &self.network {
            c.network = NetworkName::new(name)
                .map_err(|e| ControlError::config("network", e.to_string()))?;
        }
        if let Some(names) = &self.server_names {
            c.server_names = names.clone();
        }
        if let Some(nats) = &self.nats {
            c.nats = Some(nats.clone());
        }
        if let Some(t) = &self.svid_ttl {
            c.svid_ttl = parse_duration("svid_ttl", t)?;
        }
        if let Some(t) = &self.server_cert_ttl {
            c.server_cert_ttl = parse_duration("server_cert_ttl", t)?;
        }
        if let Some(t) = &self.max_join_token_ttl {
            c.max_join_token_ttl = parse_duration("max_join_token_ttl", t)?;
        }
        let l = &self.limits;
        let m = &mut c.limits;
        if let Some(v) = l.max_body_bytes {
            m.max_body_bytes = v;
        }
        if let Some(t) = &l.request_timeout {
            m.request_timeout = parse_duration("limits.request_timeout", t)?;
        }
        if let Some(t) = &l.handshake_timeout {
            m.handshake_timeout = parse_duration("limits.handshake_timeout", t)?;
        }
        if let Some(v) = l.max_connections {
            m.max_connections = v;
        }
        if let Some(v) = l.rate_per_second {
            m.rate_per_second = v;
        }
        if let Some(v) = l.rate_burst {
            m.rate_burst = v;
        }
        if let Some(v) = l.auth_failures_per_minute {
            m.auth_failures_per_minute = v;
        }
        if let Some(t) = &l.shutdown_grace {
            m.shutdown_grace = parse_duration("limits.shutdown_grace", t)?;
        }
        let h = &self.heal;
        if let Some(enabled) = h.enabled {
            c.heal.enabled = enabled;
        }
        if let Some(p) = &h.policy {
            c.heal.policy = Some(p.clone());
        }
        if let Some(t) = &h.cycle_interval {
            c.heal.cycle_interval = parse_duration("heal.cycle_interval", t)?;
        }
        for (node, socket) in &h.agent_sockets {
            let id = node.parse::<weft_crypto::NodeId>().map_err(|e| {
                ControlError::config(
                    "heal.agent_sockets",
                    format!(
                        "{:?} is not a node id: {e}",
                        node.chars().take(64).collect::<String>()
                    ),
                )
            })?;
            c.heal.agent_sockets.insert(id, socket.clone());
        }
        c.check()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_file_sets_everything() {
        let text = r#"
            data_dir = "/var/lib/weft-control"
            db = "postgres://weft@db/weft"
            listen = "0.0.0.0:9443"
            allow_classical_kex = true
            trust_domain = "mesh.example"
            network = "lab"
            server_names = ["control.example"]
            nats = "nats://127.0.0.1:4222"
            svid_ttl = "2h"
            server_cert_ttl = "12h"
            max_join_token_ttl = "7d"
            [limits]
            max_body_bytes = 131072
            request_timeout = "10s"
            handshake_timeout = "5s"
            max_connections = 100
            rate_per_second = 50
            rate_burst = 60
            auth_failures_per_minute = 5
            shutdown_grace = "3s"
            [heal]
            enabled = true
            policy = "/etc/weft/heal.toml"
            cycle_interval = "500ms"
            [heal.agent_sockets]
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" = "/run/weft/agent.sock"
        "#;
        let c = ConfigFile::parse(text, "test")
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/weft-control"));
        assert_eq!(c.db.as_deref(), Some("postgres://weft@db/weft"));
        assert_eq!(c.listen, "0.0.0.0:9443".parse().unwrap());
        assert!(c.allow_classical_kex);
        assert_eq!(c.trust_domain.as_str(), "mesh.example");
        assert_eq!(c.network.as_str(), "lab");
        assert_eq!(c.server_names, ["control.example"]);
        assert_eq!(c.svid_ttl, Duration::from_secs(7200));
        assert_eq!(c.max_join_token_ttl, Duration::from_secs(7 * 86400));
        assert_eq!(c.limits.max_body_bytes, 131_072);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections, 100);
        assert_eq!(c.limits.rate_burst, 60);
        assert_eq!(c.limits.shutdown_grace, Duration::from_secs(3));
        assert!(c.heal.enabled);
        assert_eq!(c.heal.policy, Some(PathBuf::from("/etc/weft/heal.toml")));
        assert_eq!(c.heal.cycle_interval, Duration::from_millis(500));
        assert_eq!(
            c.heal.agent_sockets.values().collect::<Vec<_>>(),
            [&PathBuf::from("/run/weft/agent.sock")]
        );
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let c = ConfigFile::parse("", "test").unwrap().to_config().unwrap();
        let d = ControlConfig::new("weft-data").unwrap();
        assert_eq!(c.data_dir, d.data_dir);
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.svid_ttl, d.svid_ttl);
        assert_eq!(c.limits.rate_per_second, d.limits.rate_per_second);
    }

    #[test]
    fn bad_files_name_the_key() {
        for (text, needle) in [
            ("listn = \"x\"", "listn"),
            ("[limits]\nmax_conections = 3", "max_conections"),
            ("[limit]\nrate_burst = 3", "limit"),
            ("svid_ttl = 5", "svid_ttl"),
            ("listen = \"not an address\"", "listen"),
            ("svid_ttl = \"soon\"", "svid_ttl"),
            ("[heal]\nenable = true", "enable"),
            (
                "[heal.agent_sockets]\n\"node\" = \"/x\"",
                "heal.agent_sockets",
            ),
            ("[heal]\ncycle_interval = \"5ms\"", "heal.cycle_interval"),
            ("svid_ttl = \"1s\"", "SVID lifetime"),
            ("[limits]\nmax_body_bytes = 1", "max body size"),
            ("trust_domain = \"Not Valid\"", "trust_domain"),
            ("network = \"UPPER\"", "network"),
            ("= broken", "configuration file"),
        ] {
            let e = ConfigFile::parse(text, "control.toml").and_then(|f| f.to_config());
            let e = e.unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
