//! `weft bench crypto`: per-operation medians of the primitives and their
//! composites, measured in one run so the ratios mean something on a busy
//! machine, and mutual-TLS handshakes per second over loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{
    ED25519, Ed25519KeyPair, KeyPair, ML_DSA_65, ML_DSA_65_SIGNING, ParsedPublicKey, PqdsaKeyPair,
};
use rustls::{ClientConfig, ServerConfig};
use serde::Serialize;

use crate::ca::{CertificateAuthority, SvidAlgorithm, Validity};
use crate::kem::DecapsulationKey;
use crate::sign::{CompositeSigningKey, MLDSA65_SIGNATURE_LEN};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{RevokedSerials, SvidVerifier, spiffe_id_from_der};
use crate::tls::{
    SpiffePeerVerifier, SvidCredentials, any_in_trust_domain, client_config, server_config,
};

/// Results of `weft bench crypto`. Times are medians in nanoseconds.
#[derive(Debug, Clone, Serialize)]
pub struct CryptoBench {
    /// X-Wing encapsulation.
    pub xwing_encaps_ns: f64,
    /// X-Wing decapsulation.
    pub xwing_decaps_ns: f64,
    /// Composite ML-DSA-65+Ed25519 signing.
    pub composite_sign_ns: f64,
    /// Composite verification.
    pub composite_verify_ns: f64,
    /// ML-DSA-65 signing alone.
    pub mldsa65_sign_ns: f64,
    /// ML-DSA-65 verification alone.
    pub mldsa65_verify_ns: f64,
    /// Ed25519 signing alone.
    pub ed25519_sign_ns: f64,
    /// Ed25519 verification alone.
    pub ed25519_verify_ns: f64,
    /// composite_sign / (mldsa65_sign + ed25519_sign); target ≤ 1.10.
    pub composite_sign_overhead_ratio: f64,
    /// composite_verify / (mldsa65_verify + ed25519_verify); target ≤ 1.10.
    pub composite_verify_overhead_ratio: f64,
    /// Full mutual-TLS handshakes (X25519MLKEM768, ML-DSA-65 SVIDs) per
    /// second over loopback TCP, one at a time.
    pub mtls_handshakes_per_sec: f64,
    /// Rounds each median was taken over.
    pub rounds: usize,
    /// Handshakes timed.
    pub handshakes: usize,
}

/// How much work the bench does.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// Rounds per primitive; each round times a batch and yields one sample.
    pub rounds: usize,
    /// Operations per batch.
    pub batch: usize,
    /// Handshakes to time.
    pub handshakes: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            rounds: 41,
            batch: 32,
            handshakes: 300,
        }
    }
}

/// Errors of the bench.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Setting up keys or certificates failed.
    #[error("bench setup failed: {0}")]
    Setup(String),
    /// A measured operation failed.
    #[error("bench operation failed: {0}")]
    Operation(String),
}

fn setup<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Maps any error of a measured operation to [`BenchError::Operation`].
fn op<E>(what: &'static str) -> impl Fn(E) -> BenchError {
    move |_| BenchError::Operation(what.into())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times `batch` calls of `op` and returns nanoseconds per call.
fn time_batch(
    batch: usize,
    mut op: impl FnMut() -> Result<(), BenchError>,
) -> Result<f64, BenchError> {
    let start = Instant::now();
    for _ in 0..batch {
        op()?;
    }
    Ok(start.elapsed().as_nanos() as f64 / batch as f64)
}

/// Runs the crypto bench.
pub fn run(cfg: BenchConfig) -> Result<CryptoBench, BenchError> {
    let msg = [0x5au8; 256];
    let ctx = b"weft/bench";
    let rounds = cfg.rounds.max(1);
    let batch = cfg.batch.max(1);

    // Primitives, through the same aws-lc-rs types the composite uses.
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).map_err(setup)?;
    let mldsa = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seed).map_err(setup)?;
    let mldsa_pub = ParsedPublicKey::new(&ML_DSA_65, mldsa.public_key().as_ref()).map_err(setup)?;
    let ed = Ed25519KeyPair::generate().map_err(setup)?;
    let ed_pub = ParsedPublicKey::new(&ED25519, ed.public_key().as_ref()).map_err(setup)?;
    let composite = CompositeSigningKey::generate().map_err(setup)?;
    let kem = DecapsulationKey::generate().map_err(setup)?;
    let ek = kem.encapsulation_key();

    let mut mldsa_sig = vec![0u8; MLDSA65_SIGNATURE_LEN];
    mldsa.sign(&msg, &mut mldsa_sig).map_err(setup)?;
    let ed_sig = ed.sign(&msg);
    let comp_sig = composite.sign(&msg, ctx).map_err(setup)?;
    let (ct, _) = ek.encapsulate().map_err(setup)?;

    let mut samples: [Vec<f64>; 8] = Default::default();
    // Interleave the operations round by round so that a slow patch of the
    // machine affects all of them alike.
    for _ in 0..rounds {
        let mut sig_buf = vec![0u8; MLDSA65_SIGNATURE_LEN];
        samples[0].push(time_batch(batch, || {
            mldsa
                .sign(&msg, &mut sig_buf)
                .map(drop)
                .map_err(op("ML-DSA-65 sign"))
        })?);
        samples[1].push(time_batch(batch, || {
            std::hint::black_box(ed.sign(&msg));
            Ok(())
        })?);
        samples[2].push(time_batch(batch, || {
            composite
                .sign(&msg, ctx)
                .map(drop)
                .map_err(op("composite sign"))
        })?);
        samples[3].push(time_batch(batch, || {
            mldsa_pub
                .verify_sig(&msg, &mldsa_sig)
                .map_err(op("ML-DSA-65 verify"))
        })?);
        samples[4].push(time_batch(batch, || {
            ed_pub
                .verify_sig(&msg, ed_sig.as_ref())
                .map_err(op("Ed25519 verify"))
        })?);
        samples[5].push(time_batch(batch, || {
            composite
                .public_key()
                .verify(&msg, ctx, &comp_sig)
                .map_err(op("composite verify"))
        })?);
        samples[6].push(time_batch(batch, || {
            ek.encapsulate().map(drop).map_err(op("X-Wing encapsulate"))
        })?);
        samples[7].push(time_batch(batch, || {
            std::hint::black_box(kem.decapsulate(&ct));
            Ok(())
        })?);
    }
    let [mldsa_s, ed_s, comp_s, mldsa_v, ed_v, comp_v, encaps, decaps] = samples.map(median);

    let handshakes = cfg.handshakes.max(1);
    let mtls_handshakes_per_sec = measure_handshakes(handshakes)?;

    Ok(CryptoBench {
        xwing_encaps_ns: encaps,
        xwing_decaps_ns: decaps,
        composite_sign_ns: comp_s,
        composite_verify_ns: comp_v,
        mldsa65_sign_ns: mldsa_s,
        mldsa65_verify_ns: mldsa_v,
        ed25519_sign_ns: ed_s,
        ed25519_verify_ns: ed_v,
        composite_sign_overhead_ratio: comp_s / (mldsa_s + ed_s),
        composite_verify_overhead_ratio: comp_v / (mldsa_v + ed_v),
        mtls_handshakes_per_sec,
        rounds,
        handshakes,
    })
}

fn measure_handshakes(n: usize) -> Result<f64, BenchError> {
    let td = TrustDomain::new("bench.weft").map_err(setup)?;
    let ca = CertificateAuthority::init(&td, Duration::from_secs(3600)).map_err(setup)?;
    let validity = Validity::starting_now(Duration::from_secs(3600)).map_err(setup)?;
    let creds = |path: &str| -> Result<SvidCredentials, BenchError> {
        let id = SpiffeId::from_parts(&td, path).map_err(setup)?;
        let svid = ca
            .issue(&id, SvidAlgorithm::MlDsa65, validity)
            .map_err(setup)?;
        SvidCredentials::from_pem(svid.cert_pem.as_bytes(), svid.key_pem.as_bytes()).map_err(setup)
    };
    let verifier = SpiffePeerVerifier::new(
        SvidVerifier::new(ca.bundle().map_err(setup)?, RevokedSerials::default()),
        any_in_trust_domain(),
    );
    let server = Arc::new(server_config(&creds("/server")?, verifier.clone()).map_err(setup)?);
    let client = Arc::new(client_config(&creds("/client")?, verifier).map_err(setup)?);
    // One untimed handshake warms up the code paths.
    loopback_mtls_handshake(server.clone(), client.clone()).map_err(BenchError::Operation)?;
    let start = Instant::now();
    for _ in 0..n {
        loopback_mtls_handshake(server.clone(), client.clone()).map_err(BenchError::Operation)?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// What one mutual-TLS handshake established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeOutcome {
    /// Key exchange group negotiated, as rustls names it.
    pub kx_group: String,
    /// SPIFFE ID of the client, as the server saw it.
    pub client_id: String,
    /// SPIFFE ID of the server, as the client saw it.
    pub server_id: String,
}

/// Performs one mutual-TLS handshake over a fresh loopback TCP connection
/// and exchanges one message each way. Errors name the failing side or
/// sides (`server: …; client: …`).
pub fn loopback_mtls_handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<HandshakeOutcome, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let timeout = Some(Duration::from_secs(10));
    let server_side = std::thread::spawn(move || -> Result<String, String> {
        let (tcp, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        configure_socket(&tcp, timeout)?;
        let conn = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).map_err(|e| e.to_string())?;
        let client_id = peer_id(tls.conn.peer_certificates())?;
        tls.write_all(b"pong").map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        Ok(client_id)
    });
    let client_result = (|| -> Result<(String, String), String> {
        let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        configure_socket(&tcp, timeout)?;
        let name = rustls_pki_types::ServerName::try_from("weft").map_err(|e| e.to_string())?;
        let conn = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).map_err(|e| e.to_string())?;
        let group = tls
            .conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default();
        Ok((group, peer_id(tls.conn.peer_certificates())?))
    })();
    let server_result = server_side
        .join()
        .map_err(|_| "server thread panicked".to_string())?;
    match (server_result, client_result) {
        (Ok(client_id), Ok((kx_group, server_id))) => Ok(HandshakeOutcome {
            kx_group,
            client_id,
            server_id,
        }),
        (Err(s), Err(c)) => Err(format!("server: {s}; client: {c}")),
        (Err(e), _) => Err(format!("server: {e}")),
        (_, Err(e)) => Err(format!("client: {e}")),
    }
}

/// Read timeout so a stuck peer fails the handshake instead of hanging,
/// and no Nagle delay: TLS flights are small writes that would otherwise
/// wait for delayed ACKs (~40 ms each on Linux loopback).
fn configure_socket(tcp: &TcpStream, timeout: Option<Duration>) -> Result<(), String> {
    tcp.set_read_timeout(timeout)
        .and_then(|()| tcp.set_nodelay(true))
        .map_err(|e| format!("socket options: {e}"))
}

fn peer_id(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Result<String, String> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or("peer presented no certificate")?;
    spiffe_id_from_der(leaf)
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}
