//! The TLS policy seen from clients on 127.0.0.1: the certificate chosen
//! by what the client can verify, key exchange X25519MLKEM768 only unless
//! classical groups are allowed (then logged and counted), ALPN for
//! HTTP/2 and HTTP/1.1.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Db, Harness};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use webpki::aws_lc_rs as alg;

/// What browsers and curl verify today: no ML-DSA.
static CLASSICAL_SIGS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA384, alg::ED25519],
    mapping: &[
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[alg::ECDSA_P256_SHA256],
        ),
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[alg::ECDSA_P384_SHA384],
        ),
        (SignatureScheme::ED25519, &[alg::ED25519]),
    ],
};

/// A weft client: ML-DSA-65 first.
static PQ_SIGS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[alg::ML_DSA_65, alg::ECDSA_P256_SHA256],
    mapping: &[
        (SignatureScheme::ML_DSA_65, &[alg::ML_DSA_65]),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[alg::ECDSA_P256_SHA256],
        ),
    ],
};

const ID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const ID_ML_DSA_65: &str = "2.16.840.1.101.3.4.3.18";

fn provider(
    kx: Vec<&'static dyn SupportedKxGroup>,
    sigs: WebPkiSupportedAlgorithms,
) -> CryptoProvider {
    CryptoProvider {
        kx_groups: kx,
        signature_verification_algorithms: sigs,
        ..default_provider()
    }
}

/// A standard client: trusts the compat (ECDSA) root, checks the host name.
fn standard_client(
    h: &Harness,
    kx: Vec<&'static dyn SupportedKxGroup>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let bundle = std::fs::read(&h.running().info().bundle_path).unwrap();
    let certs = weft_crypto::svid::certs_from_pem(&bundle).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(certs[1].clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider(kx, CLASSICAL_SIGS)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Records the server's leaf and accepts any chain (the test looks at it).
#[derive(Debug, Default)]
struct Record(Mutex<Option<CertificateDer<'static>>>);

impl ServerCertVerifier for Record {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &PQ_SIGS)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PQ_SIGS.supported_schemes()
    }
}

async fn connect(h: &Harness, config: ClientConfig) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(h.running().info().local_addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn key_oid(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.public_key().algorithm.algorithm.to_id_string()
}

fn group(tls: &TlsStream<TcpStream>) -> NamedGroup {
    tls.get_ref()
        .1
        .negotiated_key_exchange_group()
        .unwrap()
        .name()
}

async fn get_health_http1(tls: TlsStream<TcpStream>) -> u16 {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/health")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_ml_dsa_gets_the_ecdsa_certificate_and_a_weft_client_the_ml_dsa_one() {
    let h = Harness::start(Db::Sqlite).await;
    // A standard client (no ML-DSA) verifies the ECDSA chain and the host name.
    let config = standard_client(
        &h,
        vec![kx_group::X25519MLKEM768, kx_group::X25519],
        &[b"http/1.1"],
    );
    let tls = connect(&h, config).await.unwrap();
    assert_eq!(group(&tls), NamedGroup::X25519MLKEM768);
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(key_oid(&leaf), ID_EC_PUBLIC_KEY);
    assert_eq!(get_health_http1(tls).await, 200);

    // A client that verifies ML-DSA-65 gets the ML-DSA-65 chain.
    let record = Arc::new(Record::default());
    let config = ClientConfig::builder_with_provider(Arc::new(provider(
        vec![kx_group::X25519MLKEM768],
        PQ_SIGS,
    )))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(record.clone())
    .with_no_client_auth();
    let tls = connect(&h, config).await.unwrap();
    let leaf = record.0.lock().unwrap().clone().unwrap();
    assert_eq!(key_oid(&leaf), ID_ML_DSA_65);
    drop(tls);

    let text = h.admin().metrics_text().await.unwrap();
    assert!(text.contains("certificate=\"ecdsa-p256\""), "{text}");
    assert!(text.contains("certificate=\"ml-dsa-65\""), "{text}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classical_only_key_exchange_is_refused_by_default() {
    let h = Harness::start(Db::Sqlite).await;
    let config = standard_client(
        &h,
        vec![kx_group::X25519, kx_group::SECP256R1],
        &[b"http/1.1"],
    );
    let e = connect(&h, config).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("handshake"), "{e}");
    assert_eq!(h.running().metrics().classical_handshakes(), 0);
    let text = h.admin().metrics_text().await.unwrap();
    assert!(
        text.contains("weft_control_tls_handshake_failures_total 1"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classical_key_exchange_is_accepted_and_counted_when_allowed() {
    let h = Harness::start_with(Db::Sqlite, |c| c.allow_classical_kex = true).await;
    assert!(h.running().info().allow_classical_kex);
    let config = standard_client(&h, vec![kx_group::X25519], &[b"http/1.1"]);
    let tls = connect(&h, config).await.unwrap();
    assert_eq!(group(&tls), NamedGroup::X25519);
    assert_eq!(get_health_http1(tls).await, 200);
    assert_eq!(h.running().metrics().classical_handshakes(), 1);
    // A client that can do the hybrid still gets it.
    let config = standard_client(
        &h,
        vec![kx_group::X25519, kx_group::X25519MLKEM768],
        &[b"http/1.1"],
    );
    let tls = connect(&h, config).await.unwrap();
    assert_eq!(group(&tls), NamedGroup::X25519MLKEM768);
    drop(tls);
    assert_eq!(h.running().metrics().classical_handshakes(), 1);
    let text = h.admin().metrics_text().await.unwrap();
    assert!(
        text.contains("weft_control_classical_kex_handshakes_total{group=\"X25519\"} 1"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_are_negotiated_by_alpn() {
    let h = Harness::start(Db::Sqlite).await;
    let config = standard_client(&h, vec![kx_group::X25519MLKEM768], &[b"h2", b"http/1.1"]);
    let tls = connect(&h, config).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/health")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let config = standard_client(&h, vec![kx_group::X25519MLKEM768], &[b"http/1.1"]);
    let tls = connect(&h, config).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    h.stop().await;
}
