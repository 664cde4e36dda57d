//! QUIC links between agents: quinn over rustls with weft-crypto's
//! post-quantum configuration (TLS 1.3, X25519MLKEM768 only, ML-DSA-65
//! X.509-SVIDs both ways).
//!
//! One connection per neighbour carries the mesh control messages on one
//! bidirectional stream (opened by the dialer, which writes
//! [`STREAM_PREAMBLE`] first so the stream exists for the peer at once)
//! and mesh datagrams and hellos as QUIC DATAGRAM frames (RFC 9221).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;
use weft_crypto::SpiffeId;
use weft_crypto::svid::spiffe_id_from_der;
use weft_crypto::tls::{self, SpiffePeerVerifier, SvidCredentials};

use crate::AgentError;

/// ALPN protocol of mesh links.
pub const ALPN: &[u8] = b"weft-mesh/1";
/// First bytes each end writes on the link's stream: the dialer's opens
/// the stream for the peer, the acceptor's answer tells the dialer that
/// the peer accepted its certificate (in TLS 1.3 the client finishes its
/// side of the handshake before the server has checked it).
pub const STREAM_PREAMBLE: &[u8; 8] = b"WEFTMSH1";
/// Time allowed from the end of a handshake to both preambles exchanged.
pub const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A link idle this long is closed by QUIC itself. The mesh's own liveness
/// detector (hellos every 75 ms) declares a silent neighbour dead within
/// ~250 ms and closes the link first; this only bounds a link whose peer
/// vanished while the node was not probing it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of QUIC DATAGRAM frames buffered per direction.
const DATAGRAM_BUFFER: usize = 1 << 20;

/// Why peers were refused, counted since start.
#[derive(Debug, Default)]
pub struct Refusals {
    /// The SVID's SPIFFE ID does not name a node (`/node/<id>`).
    pub not_a_node: AtomicU64,
    /// The node is not in the network's roster.
    pub not_enrolled: AtomicU64,
    /// The node is revoked.
    pub revoked: AtomicU64,
    /// The peer presented our own identity.
    pub own_identity: AtomicU64,
    /// The handshake failed otherwise: a certificate from another trust
    /// domain, an expired or badly signed chain, a classical-only client,
    /// a wrong ALPN.
    pub handshake: AtomicU64,
    /// A second connection to a neighbour already linked.
    pub duplicate: AtomicU64,
}

/// A snapshot of [`Refusals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    /// See [`Refusals::not_a_node`].
    pub not_a_node: u64,
    /// See [`Refusals::not_enrolled`].
    pub not_enrolled: u64,
    /// See [`Refusals::revoked`].
    pub revoked: u64,
    /// See [`Refusals::own_identity`].
    pub own_identity: u64,
    /// See [`Refusals::handshake`].
    pub handshake: u64,
    /// See [`Refusals::duplicate`].
    pub duplicate: u64,
}

impl Refusals {
    /// The counts now.
    pub fn snapshot(&self) -> RefusalCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RefusalCounts {
            not_a_node: get(&self.not_a_node),
            not_enrolled: get(&self.not_enrolled),
            revoked: get(&self.revoked),
            own_identity: get(&self.own_identity),
            handshake: get(&self.handshake),
            duplicate: get(&self.duplicate),
        }
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The TLS configurations of both sides of a link for `creds`.
pub(crate) fn configs(
    creds: &SvidCredentials,
    verifier: Arc<SpiffePeerVerifier>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), AgentError> {
    let mut server = tls::server_config(creds, verifier.clone())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = tls::client_config(creds, verifier)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let transport = Arc::new(transport_config()?);

    let server = QuicServerConfig::try_from(Arc::new(server))
        .map_err(|e| AgentError::Quic(format!("server TLS configuration: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());
    // Address validation costs a round trip on every new link; links come
    // from peers that must pass an ML-DSA handshake anyway.
    server.migration(false);

    let client = QuicClientConfig::try_from(Arc::new(client))
        .map_err(|e| AgentError::Quic(format!("client TLS configuration: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    Ok((server, client))
}

/// Builds the endpoint that both accepts and dials links on `listen`, and
/// the configuration its dials use.
pub(crate) fn endpoint(
    listen: SocketAddr,
    creds: &SvidCredentials,
    verifier: Arc<SpiffePeerVerifier>,
) -> Result<(quinn::Endpoint, quinn::ClientConfig), AgentError> {
    let (server, client) = configs(creds, verifier)?;
    let endpoint = quinn::Endpoint::server(server, listen).map_err(|e| AgentError::Bind {
        addr: listen,
        reason: e.to_string(),
    })?;
    Ok((endpoint, client))
}

fn transport_config() -> Result<quinn::TransportConfig, AgentError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
            .map_err(|e| AgentError::Quic(format!("idle timeout: {e}")))?,
    ));
    // One stream per link, opened by the dialer.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    Ok(t)
}

/// The SPIFFE ID of the peer's leaf certificate (verified in the handshake).
pub(crate) fn peer_spiffe_id(conn: &quinn::Connection) -> Result<SpiffeId, String> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| "the peer presented no certificate".to_string())?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type".to_string())?;
    let leaf = chain
        .first()
        .ok_or_else(|| "the peer presented an empty chain".to_string())?;
    spiffe_id_from_der(leaf).map_err(|e| e.to_string())
}

/// Reads the peer's [`STREAM_PREAMBLE`].
pub(crate) async fn read_preamble(recv: &mut quinn::RecvStream) -> Result<(), String> {
    let mut preamble = [0u8; STREAM_PREAMBLE.len()];
    recv.read_exact(&mut preamble)
        .await
        .map_err(|e| e.to_string())?;
    if &preamble != STREAM_PREAMBLE {
        return Err("the link's stream does not start with the weft preamble".into());
    }
    Ok(())
}
