//! The trust-domain CA on disk and the X509-SVID checks of `weft ca verify`.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed setup step should fail the test

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyUsagePurpose, SanType};
use rustls_pki_types::UnixTime;
use time::OffsetDateTime;
use weft_crypto::ca::{
    CaError, CertKey, CertificateAuthority, SvidAlgorithm, Validity, layout, verify_svid_file,
};
use weft_crypto::files::FileError;
use weft_crypto::svid::{
    RevokedSerials, SvidError, SvidVerifier, TrustBundle, Usage, certs_from_pem,
};
use weft_crypto::{SpiffeId, TrustDomain};

fn td() -> TrustDomain {
    TrustDomain::new("mesh.test").unwrap()
}

fn hour() -> Validity {
    Validity::starting_now(Duration::from_secs(3600)).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_directory_round_trip_and_file_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::init(&td(), Duration::from_secs(86400)).unwrap();
    ca.save(dir.path()).unwrap();
    assert_eq!(mode(&dir.path().join(layout::CA_KEY)), 0o600);
    assert_eq!(mode(&dir.path().join(layout::COMPAT_KEY)), 0o600);
    // Never overwrite an existing CA.
    let again = CertificateAuthority::init(&td(), Duration::from_secs(86400)).unwrap();
    assert!(matches!(
        again.save(dir.path()),
        Err(CaError::File(FileError::Exists { .. }))
    ));

    let loaded = CertificateAuthority::load(dir.path()).unwrap();
    assert_eq!(loaded.trust_domain(), &td());
    assert_eq!(loaded.bundle_pem(), ca.bundle_pem());

    // An SVID from the loaded CA verifies against the saved bundle.
    let id = SpiffeId::parse("spiffe://mesh.test/node/a").unwrap();
    for alg in [SvidAlgorithm::MlDsa65, SvidAlgorithm::EcdsaP256] {
        let svid = loaded.issue(&id, alg, hour()).unwrap();
        let out = tempfile::tempdir().unwrap();
        svid.save(out.path(), &loaded.bundle_pem()).unwrap();
        assert_eq!(mode(&out.path().join(layout::SVID_KEY)), 0o600);
        let verified = verify_svid_file(
            dir.path(),
            &out.path().join(layout::SVID_CERT),
            &RevokedSerials::default(),
        )
        .unwrap();
        assert_eq!(verified.spiffe_id, id);
        assert_eq!(verified.serial, svid.serial);
    }

    // A readable CA key is refused, naming the fix.
    fs::set_permissions(
        dir.path().join(layout::CA_KEY),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = CertificateAuthority::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn issuing_outside_the_trust_domain_is_refused() {
    let ca = CertificateAuthority::init(&td(), Duration::from_secs(3600)).unwrap();
    let id = SpiffeId::parse("spiffe://other.test/node/a").unwrap();
    assert!(matches!(
        ca.issue(&id, SvidAlgorithm::MlDsa65, hour()),
        Err(CaError::Svid(SvidError::WrongTrustDomain { .. }))
    ));
}

/// Builds leaves that break one rule each, signed by the real CA key.
struct Forge {
    ca: CertificateAuthority,
    dir: tempfile::TempDir,
}

impl Forge {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init(&td(), Duration::from_secs(3600)).unwrap();
        ca.save(dir.path()).unwrap();
        Self { ca, dir }
    }

    fn leaf(&self, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key_pem = fs::read(self.dir.path().join(layout::CA_KEY)).unwrap();
        let ca_key = CertKey::from_pkcs8_pem(&key_pem, SvidAlgorithm::MlDsa65, "ca.key").unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(self.ca.root_pem(SvidAlgorithm::MlDsa65), &ca_key).unwrap();
        let mut params = CertificateParams::default();
        let v = hour();
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://mesh.test/node/a".try_into().unwrap(),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        edit(&mut params);
        let leaf_key = CertKey::generate(SvidAlgorithm::MlDsa65).unwrap();
        params
            .signed_by(&leaf_key, &issuer)
            .unwrap()
            .pem()
            .into_bytes()
    }

    fn verify(&self, pem: &[u8]) -> Result<(), SvidError> {
        let verifier = SvidVerifier::new(self.ca.bundle().unwrap(), RevokedSerials::default());
        verifier
            .verify(&certs_from_pem(pem)?, UnixTime::now(), Usage::Client)
            .map(drop)
    }
}

#[test]
fn each_x509_svid_rule_is_enforced_with_its_reason() {
    let f = Forge::new();
    assert_eq!(f.verify(&f.leaf(|_| {})), Ok(()));

    let two = f.leaf(|p| {
        p.subject_alt_names.push(SanType::URI(
            "spiffe://mesh.test/node/b".try_into().unwrap(),
        ))
    });
    assert_eq!(f.verify(&two), Err(SvidError::UriSanCount(2)));

    let none =
        f.leaf(|p| p.subject_alt_names = vec![SanType::DnsName("a.test".try_into().unwrap())]);
    assert_eq!(f.verify(&none), Err(SvidError::UriSanCount(0)));

    let bad_id = f.leaf(|p| {
        p.subject_alt_names = vec![SanType::URI("spiffe://mesh.test/a//b".try_into().unwrap())]
    });
    assert!(matches!(
        f.verify(&bad_id),
        Err(SvidError::BadSpiffeId { .. })
    ));

    let other_td = f.leaf(|p| {
        p.subject_alt_names = vec![SanType::URI("spiffe://other.test/a".try_into().unwrap())]
    });
    assert!(matches!(
        f.verify(&other_td),
        Err(SvidError::WrongTrustDomain { .. })
    ));

    let ca_leaf = f.leaf(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    assert_eq!(f.verify(&ca_leaf), Err(SvidError::LeafIsCa));

    let no_ds = f.leaf(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]);
    assert_eq!(f.verify(&no_ds), Err(SvidError::LeafNoDigitalSignature));

    let signer = f.leaf(|p| {
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ]
    });
    assert_eq!(f.verify(&signer), Err(SvidError::LeafCanSign));

    let now = OffsetDateTime::now_utc();
    let expired = f.leaf(|p| {
        p.not_before = now - time::Duration::days(2);
        p.not_after = now - time::Duration::days(1);
    });
    assert!(matches!(f.verify(&expired), Err(SvidError::Expired { .. })));
    let future = f.leaf(|p| {
        p.not_before = now + time::Duration::days(1);
        p.not_after = now + time::Duration::days(2);
    });
    assert!(matches!(
        f.verify(&future),
        Err(SvidError::NotYetValid { .. })
    ));
}

#[test]
fn foreign_tampered_and_revoked_certificates_are_refused() {
    let f = Forge::new();
    // Same trust domain name, different CA: the chain does not verify.
    let impostor = CertificateAuthority::init(&td(), Duration::from_secs(3600)).unwrap();
    let id = SpiffeId::parse("spiffe://mesh.test/node/a").unwrap();
    let svid = impostor.issue(&id, SvidAlgorithm::MlDsa65, hour()).unwrap();
    let err = f.verify(svid.cert_pem.as_bytes()).unwrap_err();
    // Same subject name, other key: webpki finds the "issuer" but its
    // signature does not verify.
    assert!(
        matches!(&err, SvidError::Chain(m) if m.contains("does not verify")),
        "{err}"
    );

    // A flipped bit in the CA signature.
    let svid = f.ca.issue(&id, SvidAlgorithm::MlDsa65, hour()).unwrap();
    let mut der = svid.cert_der.to_vec();
    let last = der.len() - 10;
    der[last] ^= 0x01;
    let verifier = SvidVerifier::new(f.ca.bundle().unwrap(), RevokedSerials::default());
    let err = verifier
        .verify(&[der.into()], UnixTime::now(), Usage::Client)
        .unwrap_err();
    assert!(matches!(err, SvidError::Chain(_)), "{err}");

    // Revoked serial.
    let revoked = RevokedSerials::default();
    let verifier = SvidVerifier::new(f.ca.bundle().unwrap(), revoked.clone());
    verifier
        .verify(
            std::slice::from_ref(&svid.cert_der),
            UnixTime::now(),
            Usage::Client,
        )
        .unwrap();
    revoked.revoke(&svid.serial);
    assert!(matches!(
        verifier.verify(
            std::slice::from_ref(&svid.cert_der),
            UnixTime::now(),
            Usage::Client
        ),
        Err(SvidError::Revoked(_))
    ));
}

#[test]
fn a_bundle_must_hold_ca_certificates() {
    let f = Forge::new();
    let leaf = f.leaf(|_| {});
    assert!(matches!(
        TrustBundle::from_pem(&leaf),
        Err(SvidError::NotACa { index: 0, .. })
    ));
    assert_eq!(
        TrustBundle::from_pem(b"").unwrap_err(),
        SvidError::NoCertificate
    );
    assert!(
        TrustBundle::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .is_err()
    );
}

#[test]
fn server_svids_carry_host_names_and_still_verify_as_svids() {
    let ca = CertificateAuthority::init(&td(), Duration::from_secs(86400)).unwrap();
    let id = SpiffeId::parse("spiffe://mesh.test/control").unwrap();
    let ips = ["127.0.0.1".parse().unwrap()];
    for alg in [SvidAlgorithm::MlDsa65, SvidAlgorithm::EcdsaP256] {
        let svid = ca
            .issue_server(&id, alg, hour(), &["localhost".to_owned()], &ips)
            .unwrap();
        let verifier = SvidVerifier::new(ca.bundle().unwrap(), RevokedSerials::default());
        let ok = verifier
            .verify(
                std::slice::from_ref(&svid.cert_der),
                UnixTime::now(),
                Usage::Server,
            )
            .unwrap();
        assert_eq!(ok.spiffe_id, id);
        let (_, cert) = x509_parser::parse_x509_certificate(&svid.cert_der).unwrap();
        let names = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            names.contains("localhost") && names.contains("127"),
            "{names}"
        );
    }
    // A name that is not a DNS name is refused, not panicked on.
    assert!(
        ca.issue_server(
            &id,
            SvidAlgorithm::EcdsaP256,
            hour(),
            &["bäd.example".into()],
            &[]
        )
        .is_err()
    );
}
