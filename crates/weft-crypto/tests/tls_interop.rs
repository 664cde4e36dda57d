//! rustls server and client over loopback, both holding SVIDs from a weft
//! CA, X25519MLKEM768 only, each authorizing the other by SPIFFE ID.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed setup step should fail the test

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::kx_group;
use time::OffsetDateTime;
use weft_crypto::bench::loopback_mtls_handshake;
use weft_crypto::ca::{CertificateAuthority, SvidAlgorithm, Validity};
use weft_crypto::svid::{RevokedSerials, SvidVerifier};
use weft_crypto::tls::{
    Authorizer, SpiffePeerVerifier, SvidCredentials, any_in_trust_domain, client_config, only,
    pq_provider, server_config,
};
use weft_crypto::{SpiffeId, TrustDomain};

struct Domain {
    td: TrustDomain,
    ca: CertificateAuthority,
    revoked: RevokedSerials,
}

impl Domain {
    fn new(name: &str) -> Self {
        let td = TrustDomain::new(name).unwrap();
        let ca = CertificateAuthority::init(&td, Duration::from_secs(3600)).unwrap();
        Self {
            td,
            ca,
            revoked: RevokedSerials::default(),
        }
    }

    fn id(&self, path: &str) -> SpiffeId {
        SpiffeId::from_parts(&self.td, path).unwrap()
    }

    fn creds_with(
        &self,
        path: &str,
        alg: SvidAlgorithm,
        validity: Validity,
    ) -> (SvidCredentials, Vec<u8>) {
        let svid = self.ca.issue(&self.id(path), alg, validity).unwrap();
        let creds =
            SvidCredentials::from_pem(svid.cert_pem.as_bytes(), svid.key_pem.as_bytes()).unwrap();
        (creds, svid.serial)
    }

    fn creds(&self, path: &str) -> SvidCredentials {
        self.creds_with(path, SvidAlgorithm::MlDsa65, valid_now()).0
    }

    fn verifier(&self, policy: Authorizer) -> Arc<SpiffePeerVerifier> {
        SpiffePeerVerifier::new(
            SvidVerifier::new(self.ca.bundle().unwrap(), self.revoked.clone()),
            policy,
        )
    }
}

fn valid_now() -> Validity {
    Validity::starting_now(Duration::from_secs(3600)).unwrap()
}

fn server(d: &Domain, creds: &SvidCredentials) -> Arc<rustls::ServerConfig> {
    Arc::new(server_config(creds, d.verifier(any_in_trust_domain())).unwrap())
}

fn client(d: &Domain, creds: &SvidCredentials) -> Arc<rustls::ClientConfig> {
    Arc::new(client_config(creds, d.verifier(any_in_trust_domain())).unwrap())
}

#[test]
fn handshake_succeeds_with_pq_group_and_spiffe_ids() {
    let d = Domain::new("mesh.test");
    let out = loopback_mtls_handshake(
        server(&d, &d.creds("/control")),
        client(&d, &d.creds("/node/a")),
    )
    .unwrap();
    assert_eq!(out.kx_group, "X25519MLKEM768");
    assert_eq!(out.client_id, "spiffe://mesh.test/node/a");
    assert_eq!(out.server_id, "spiffe://mesh.test/control");
}

#[test]
fn refuses_a_certificate_of_another_trust_domain() {
    let d = Domain::new("mesh.test");
    let other = Domain::new("evil.test");
    // The client's SVID comes from another CA: the server refuses it.
    let err = loopback_mtls_handshake(
        server(&d, &d.creds("/control")),
        client(&d, &other.creds("/node/x")),
    )
    .unwrap_err();
    assert!(
        err.contains("WrongTrustDomain") || err.contains("not issued by"),
        "{err}"
    );
    // And a server of another trust domain is refused by the client.
    let err = loopback_mtls_handshake(
        server(&other, &other.creds("/control")),
        client(&d, &d.creds("/node/a")),
    )
    .unwrap_err();
    assert!(
        err.contains("client: ") && err.contains("WrongTrustDomain"),
        "{err}"
    );
}

#[test]
fn refuses_an_expired_certificate() {
    let d = Domain::new("mesh.test");
    let now = OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - time::Duration::hours(2),
        not_after: now - time::Duration::hours(1),
    };
    let (creds, _) = d.creds_with("/node/old", SvidAlgorithm::MlDsa65, expired);
    let err =
        loopback_mtls_handshake(server(&d, &d.creds("/control")), client(&d, &creds)).unwrap_err();
    assert!(
        err.starts_with("server:") && err.contains("Expired"),
        "{err}"
    );
}

#[test]
fn refuses_a_revoked_serial() {
    let d = Domain::new("mesh.test");
    let (creds, serial) = d.creds_with("/node/bad", SvidAlgorithm::MlDsa65, valid_now());
    let srv = server(&d, &d.creds("/control"));
    let cli = client(&d, &creds);
    loopback_mtls_handshake(srv.clone(), cli.clone()).unwrap();
    d.revoked.revoke(&serial);
    let err = loopback_mtls_handshake(srv, cli).unwrap_err();
    assert!(
        err.starts_with("server:") && err.contains("Revoked"),
        "{err}"
    );
}

#[test]
fn refuses_a_client_offering_only_classical_groups() {
    let d = Domain::new("mesh.test");
    let creds = d.creds("/node/a");
    let classical = CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
        ..pq_provider()
    };
    let cli = rustls::ClientConfig::builder_with_provider(Arc::new(classical))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(d.verifier(any_in_trust_domain()))
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .unwrap();
    let err = loopback_mtls_handshake(server(&d, &d.creds("/control")), Arc::new(cli)).unwrap_err();
    assert!(
        err.contains("PeerIncompatible")
            || err.contains("NoKxGroupsInCommon")
            || err.contains("HandshakeFailure"),
        "{err}"
    );
}

#[test]
fn refuses_a_classical_compat_svid_between_components() {
    let d = Domain::new("mesh.test");
    let (compat, _) = d.creds_with("/tool/curl", SvidAlgorithm::EcdsaP256, valid_now());
    // The compat key cannot sign an ML-DSA-65 handshake: refused.
    assert!(
        loopback_mtls_handshake(server(&d, &d.creds("/control")), client(&d, &compat)).is_err()
    );
}

#[test]
fn policy_refuses_an_unlisted_spiffe_id() {
    let d = Domain::new("mesh.test");
    let srv_creds = d.creds("/control");
    let strict =
        Arc::new(server_config(&srv_creds, d.verifier(only(vec![d.id("/node/a")]))).unwrap());
    loopback_mtls_handshake(strict.clone(), client(&d, &d.creds("/node/a"))).unwrap();
    let err = loopback_mtls_handshake(strict, client(&d, &d.creds("/node/b"))).unwrap_err();
    assert!(err.contains("Unauthorized"), "{err}");
}
