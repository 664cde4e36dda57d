//! Full enrollment over real HTTPS on 127.0.0.1, on SQLite and on
//! PostgreSQL: join tokens, enrollment (approved and pending), claims,
//! renewal over mTLS, revocation with a signed list, the audit trail and
//! the bus; and every way a token or an identity is refused.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Db, Harness};
use data_encoding::BASE64;
use weft_bus::Backend;
use weft_control::agent::{self, AgentError, AgentPaths};
use weft_control::api::CreateJoinToken;
use weft_control::client::{ClientError, ControlClient};
use weft_crypto::ca::{CertKey, CertificateAuthority, SvidAlgorithm, Validity};
use weft_crypto::sign::{CompositePublicKey, CompositeSignature};
use weft_crypto::svid::{RevokedSerials, SvidVerifier, TrustBundle, Usage, certs_from_pem};
use weft_crypto::tls::SvidCredentials;
use weft_crypto::{NodeId, SpiffeId};
use weft_proto::wire::{Message, RevocationList, decode_exact};
use weft_store::{NewJoinToken, Store, Tags};

fn token_request(uses: u32, auto_approve: bool) -> CreateJoinToken {
    CreateJoinToken {
        uses,
        ttl_seconds: 600,
        tags: vec!["role=db".into()],
        auto_approve,
        description: "test".into(),
    }
}

fn problem(e: &AgentError) -> (u16, String) {
    match e {
        AgentError::Client(ClientError::Problem { status, problem }) => {
            (*status, problem.problem_type.clone())
        }
        other => panic!("expected a problem, got {other}"),
    }
}

async fn full_enrollment(h: &Harness) {
    let admin = h.admin();
    assert_eq!(admin.health().await.unwrap().status, "ok");
    assert_eq!(admin.ready().await.unwrap().store, "ok");

    // Auto-approved, two uses: two agents get SVIDs, a third is refused.
    let made = admin
        .create_join_token("default", &token_request(2, true))
        .await
        .unwrap();
    assert_eq!(made.join_token.uses_left, 2);
    let a = agent::enroll(&h.url(), &made.token, h.trust(), &h.agent_dir("a"))
        .await
        .unwrap();
    assert_eq!(a.status, "approved");
    assert!(a.svid_not_after.is_some());
    let b = agent::enroll(&h.url(), &made.token, h.bundle_trust(), &h.agent_dir("b"))
        .await
        .unwrap();
    let e = agent::enroll(&h.url(), &made.token, h.trust(), &h.agent_dir("c"))
        .await
        .unwrap_err();
    assert_eq!(
        problem(&e),
        (409, "urn:weft:problem:token-exhausted".into())
    );

    // The SVID on disk verifies against the CA and names the node.
    let paths = AgentPaths::new(&h.agent_dir("a"));
    let bundle = TrustBundle::from_pem(&std::fs::read(paths.bundle()).unwrap()).unwrap();
    let chain = certs_from_pem(&std::fs::read(paths.svid_cert()).unwrap()).unwrap();
    let verified = SvidVerifier::new(bundle, RevokedSerials::default())
        .verify(&chain, rustls_pki_types::UnixTime::now(), Usage::Client)
        .unwrap();
    assert_eq!(verified.spiffe_id.as_str(), a.settings.spiffe_id);
    assert!(
        a.settings
            .spiffe_id
            .ends_with(&format!("/node/{}", a.settings.node_id))
    );

    // Pending: no SVID until approved; then a claim gets it, once.
    let pending = admin
        .create_join_token("default", &token_request(1, false))
        .await
        .unwrap();
    let d = agent::enroll(&h.url(), &pending.token, h.trust(), &h.agent_dir("d"))
        .await
        .unwrap();
    assert_eq!(d.status, "pending");
    assert!(!AgentPaths::new(&h.agent_dir("d")).svid_cert().exists());
    let e = agent::claim(&h.agent_dir("d")).await.unwrap_err();
    assert_eq!(problem(&e), (409, "urn:weft:problem:node-pending".into()));
    let approved = admin.approve_node(&d.settings.node_id).await.unwrap();
    assert_eq!(approved.status, "approved");
    let d = agent::claim(&h.agent_dir("d")).await.unwrap();
    assert_eq!(d.status, "approved");
    assert!(AgentPaths::new(&h.agent_dir("d")).svid_cert().exists());
    let e = agent::claim(&h.agent_dir("d")).await.unwrap_err();
    assert_eq!(problem(&e).0, 409);

    // Listing and showing.
    let nodes = admin.list_nodes(None, None, None, None).await.unwrap();
    assert_eq!(nodes.items.len(), 3);
    let shown = admin.get_node(&a.settings.node_id).await.unwrap();
    assert_eq!(shown.tags, ["role=db"]);
    let serial_before = shown.svid_serial.clone().unwrap();

    // Renewal over mTLS gives a new serial over the same key.
    agent::renew(&h.agent_dir("a")).await.unwrap();
    let shown = admin.get_node(&a.settings.node_id).await.unwrap();
    assert_ne!(shown.svid_serial.unwrap(), serial_before);

    // Revocation: epoch 1, signed list in weft-proto's format, and b can
    // no longer renew.
    let revoked = admin
        .revoke_node(&b.settings.node_id, "compromised")
        .await
        .unwrap();
    assert_eq!(
        (revoked.epoch, revoked.node.status.as_str()),
        (1, "revoked")
    );
    let e = admin
        .revoke_node(&b.settings.node_id, "again")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    let list = admin.revocations("default").await.unwrap();
    assert_eq!(list.epoch, 1);
    assert_eq!(list.revoked, std::slice::from_ref(&b.settings.node_id));
    assert_eq!(list.entries[0].reason, "compromised");
    let authority = CompositePublicKey::from_bytes(
        &BASE64
            .decode(a.settings.authority_public_key.as_bytes())
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<NodeId> = list.revoked.iter().map(|s| s.parse().unwrap()).collect();
    let signed = RevocationList::signed_bytes(list.epoch, list.issued_ms, &ids);
    let sig =
        CompositeSignature::from_bytes(&BASE64.decode(list.signature.as_bytes()).unwrap()).unwrap();
    authority
        .verify(&signed, RevocationList::CONTEXT, &sig)
        .unwrap();
    match decode_exact(&BASE64.decode(list.wire.as_bytes()).unwrap()).unwrap() {
        Message::Revocation(wire) => {
            assert_eq!((wire.epoch, wire.revoked.clone()), (1, ids.clone()));
        }
        other => panic!("{other:?}"),
    }
    let e = agent::renew(&h.agent_dir("b")).await.unwrap_err();
    assert_eq!(problem(&e).0, 403, "{e}");

    // An approved node reads the list over mTLS.
    let creds = SvidCredentials::load(&paths.svid_dir()).unwrap();
    let as_a = ControlClient::new(&h.url(), h.bundle_trust(), Some(creds), None).unwrap();
    assert_eq!(as_a.revocations("default").await.unwrap().epoch, 1);
    // A revoked node does not.
    let creds_b = SvidCredentials::load(&AgentPaths::new(&h.agent_dir("b")).svid_dir()).unwrap();
    let as_b = ControlClient::new(&h.url(), h.bundle_trust(), Some(creds_b), None).unwrap();
    assert_eq!(
        as_b.revocations("default").await.unwrap_err().status(),
        Some(403)
    );

    // The audit trail has every mutating request, with who and how it ended.
    let revokes = admin
        .audit(&[("action", Some("node.revoke".into()))])
        .await
        .unwrap();
    assert_eq!(revokes.items.len(), 2);
    assert!(
        revokes
            .items
            .iter()
            .all(|r| r.actor.starts_with("api-token:"))
    );
    let results: Vec<&str> = revokes.items.iter().map(|r| r.result.as_str()).collect();
    assert_eq!(results, ["failed", "success"], "newest first");
    let renewals = admin
        .audit(&[("action", Some("node.renew".into()))])
        .await
        .unwrap();
    assert!(
        renewals
            .items
            .iter()
            .any(|r| r.result == "denied" && r.actor.ends_with(&b.settings.node_id))
    );
    let enrollments = admin
        .audit(&[("action", Some("node.enroll".into()))])
        .await
        .unwrap();
    assert_eq!(enrollments.items.len(), 4);
    assert!(
        enrollments
            .items
            .iter()
            .all(|r| r.actor.starts_with("join-token:"))
    );

    // And the bus carries them.
    let bus = h.running().bus();
    let audit = bus.stream_info("weft_audit").await.unwrap();
    let all = admin
        .audit(&[("limit", Some("1000".into()))])
        .await
        .unwrap();
    assert_eq!(audit.state.messages, all.items.len() as u64);
    let revocations = bus.stream_info("weft_revocations").await.unwrap();
    assert_eq!(revocations.state.messages, 1);
}

async fn tokens_refused(h: &Harness) {
    let admin = h.admin();
    let url = h.url();
    // Forged: not a token, a made-up id, a real id with a wrong secret.
    let made = admin
        .create_join_token("default", &token_request(1, true))
        .await
        .unwrap();
    let real = made.token.clone();
    let (prefix, _) = real.rsplit_once('_').unwrap();
    let wrong_secret = format!("{prefix}_{}", "a".repeat(52));
    let made_up = format!("weft_join_{}_{}", "0".repeat(32), "a".repeat(52));
    for (i, forged) in ["hello", made_up.as_str(), wrong_secret.as_str()]
        .iter()
        .enumerate()
    {
        let e = agent::enroll(&url, forged, h.trust(), &h.agent_dir(&format!("f{i}")))
            .await
            .unwrap_err();
        assert_eq!(
            problem(&e),
            (401, "urn:weft:problem:token-invalid".into()),
            "{forged}"
        );
    }
    // The real one still has its use: forgeries spent nothing.
    agent::enroll(&url, &real, h.trust(), &h.agent_dir("ok"))
        .await
        .unwrap();
    // Reused.
    let e = agent::enroll(&url, &real, h.trust(), &h.agent_dir("again"))
        .await
        .unwrap_err();
    assert_eq!(
        problem(&e),
        (409, "urn:weft:problem:token-exhausted".into())
    );
    // Expired: made an hour ago, valid for a minute.
    let past = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let net = h.running().info().network.clone();
    let network = h
        .store()
        .get_network_by_name(&weft_store::NetworkName::new(&net).unwrap())
        .await
        .unwrap();
    let (_, secret) = h
        .store()
        .create_join_token(
            NewJoinToken {
                network_id: network.id,
                description: String::new(),
                uses: 1,
                expires_at: past + time::Duration::minutes(1),
                tags: Tags::empty(),
                auto_approve: true,
                created_by: "test".into(),
            },
            past,
        )
        .await
        .unwrap();
    let e = agent::enroll(&url, secret.expose(), h.trust(), &h.agent_dir("late"))
        .await
        .unwrap_err();
    assert_eq!(problem(&e), (401, "urn:weft:problem:token-expired".into()));
    // A directory that already holds a node is not enrolled twice.
    let fresh = admin
        .create_join_token("default", &token_request(1, true))
        .await
        .unwrap();
    assert!(matches!(
        agent::enroll(&url, &fresh.token, h.trust(), &h.agent_dir("ok")).await,
        Err(AgentError::AlreadyEnrolled { .. })
    ));
    // A wrong CA fingerprint: the agent refuses the server.
    let wrong =
        weft_control::client::Trust::fingerprint(&format!("sha256:{}", "1".repeat(64))).unwrap();
    let e = agent::enroll(&url, &fresh.token, wrong, &h.agent_dir("mitm"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, AgentError::Client(ClientError::Transport { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("fingerprint"), "{e}");
}

/// The network file: every node approved so far, in order of approval,
/// revoked ones kept (an append-only roster), with the keys they enrolled
/// with, parsed by the agent's own reader; an ETag
/// that answers 304 while nothing changed; agents (mTLS) and viewers may
/// read it, a revoked node may not.
async fn members(h: &Harness) {
    use weft_agent::network::Network;
    let admin = h.admin();
    let made = admin
        .create_join_token("default", &token_request(3, true))
        .await
        .unwrap();
    let mut states = Vec::new();
    for name in ["m0", "m1", "m2"] {
        states.push(
            agent::enroll(&h.url(), &made.token, h.trust(), &h.agent_dir(name))
                .await
                .unwrap(),
        );
    }
    let pending = admin
        .create_join_token("default", &token_request(1, false))
        .await
        .unwrap();
    let p = agent::enroll(&h.url(), &pending.token, h.trust(), &h.agent_dir("mp"))
        .await
        .unwrap();
    let identities: Vec<weft_crypto::NodeIdentity> = ["m0", "m1", "m2", "mp"]
        .iter()
        .map(|n| {
            weft_crypto::NodeIdentity::load(&AgentPaths::new(&h.agent_dir(n)).identity()).unwrap()
        })
        .collect();

    let first = admin.poll_members("default", None).await.unwrap().unwrap();
    let etag = first.etag.clone().expect("an ETag");
    let net = Network::from_json(first.json.as_bytes()).unwrap();
    assert_eq!(net.trust_domain.as_str(), states[0].settings.trust_domain);
    assert_eq!(
        BASE64.encode(net.authority.as_bytes()),
        states[0].settings.authority_public_key
    );
    let listed: Vec<NodeId> = net.nodes.iter().map(|n| n.node_id()).collect();
    let expected: Vec<NodeId> = identities[..3].iter().map(|i| i.node_id()).collect();
    assert_eq!(listed, expected, "approved nodes in enrollment order");
    for (n, id) in net.nodes.iter().zip(&identities) {
        assert_eq!(n.kem.to_bytes(), id.public().kem.to_bytes());
    }
    assert_eq!(net.roster().unwrap().len(), 3);

    // Nothing changed: 304, also for an agent over mTLS.
    assert_eq!(
        admin.poll_members("default", Some(&etag)).await.unwrap(),
        None
    );
    let creds = SvidCredentials::load(&AgentPaths::new(&h.agent_dir("m0")).svid_dir()).unwrap();
    let as_m0 = ControlClient::new(&h.url(), h.bundle_trust(), Some(creds), None).unwrap();
    assert_eq!(
        as_m0.poll_members("default", Some(&etag)).await.unwrap(),
        None
    );
    assert_eq!(as_m0.fetch_members("default").await.unwrap(), first.json);
    let (status, _, _) = as_m0
        .request(
            http::Method::GET,
            "/v1/networks/default/members",
            None,
            &[(http::header::IF_NONE_MATCH, format!("\"x\", W/{etag}"))],
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(status, 304, "a list of tags, one weak");

    // Approving the pending node adds it last; revoking m1 keeps it
    // listed (agents learn it from the revocation list), so no index moves.
    admin.approve_node(&p.settings.node_id).await.unwrap();
    let second = admin
        .poll_members("default", Some(&etag))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second.etag.as_deref(), Some(etag.as_str()));
    let listed: Vec<NodeId> = Network::from_json(second.json.as_bytes())
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.node_id())
        .collect();
    let expected: Vec<NodeId> = identities.iter().map(|i| i.node_id()).collect();
    assert_eq!(listed, expected);
    admin
        .revoke_node(&states[1].settings.node_id, "test")
        .await
        .unwrap();
    let third = as_m0.fetch_members("default").await.unwrap();
    let listed: Vec<NodeId> = Network::from_json(third.as_bytes())
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.node_id())
        .collect();
    assert_eq!(listed, expected, "revoked nodes stay listed");
    // The agent keeps it as network.json, written when it changes.
    assert!(
        agent::update_network_file(&h.agent_dir("m0"))
            .await
            .unwrap()
    );
    assert!(
        !agent::update_network_file(&h.agent_dir("m0"))
            .await
            .unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(h.agent_dir("m0").join(agent::NETWORK_FILE)).unwrap(),
        third
    );
    // The revoked node may not read it; nor may anyone unauthenticated.
    let creds = SvidCredentials::load(&AgentPaths::new(&h.agent_dir("m1")).svid_dir()).unwrap();
    let as_m1 = ControlClient::new(&h.url(), h.bundle_trust(), Some(creds), None).unwrap();
    assert_eq!(
        as_m1.fetch_members("default").await.unwrap_err().status(),
        Some(403)
    );
    assert_eq!(
        h.client(None)
            .fetch_members("default")
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    assert_eq!(
        admin.fetch_members("other").await.unwrap_err().status(),
        Some(404)
    );
}

/// An enrollment whose X-Wing key is not the one signed is refused, and
/// spends nothing.
async fn kem_key_is_signed(h: &Harness) {
    let admin = h.admin();
    let made = admin
        .create_join_token("default", &token_request(1, true))
        .await
        .unwrap();
    let id = weft_crypto::NodeIdentity::generate().unwrap();
    let key = CertKey::generate(SvidAlgorithm::MlDsa65).unwrap();
    let CertKey::MlDsa65 { pair, public } = key else {
        panic!("ML-DSA-65 key expected")
    };
    let mut request = agent::enroll_request(&id, &pair, &public, &made.token).unwrap();
    let other = weft_crypto::NodeIdentity::generate().unwrap();
    request.kem_public_key = BASE64.encode(&other.kem_key().encapsulation_key().to_bytes());
    let client = h.client(None);
    let e = client.enroll(&request).await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    request.kem_public_key = BASE64.encode(&[1u8; 10]);
    let e = client.enroll(&request).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    // The token still has its use.
    let request = agent::enroll_request(&id, &pair, &public, &made.token).unwrap();
    client.enroll(&request).await.unwrap();
}

/// An SVID past its end cannot renew, even though the node is approved.
async fn expired_svid_cannot_renew(h: &Harness) {
    let admin = h.admin();
    let made = admin
        .create_join_token("default", &token_request(1, true))
        .await
        .unwrap();
    let state = agent::enroll(&h.url(), &made.token, h.trust(), &h.agent_dir("x"))
        .await
        .unwrap();
    let paths = AgentPaths::new(&h.agent_dir("x"));
    let ca = CertificateAuthority::load(&h.data_dir().join("ca")).unwrap();
    let key_pem = std::fs::read(paths.svid_key()).unwrap();
    let key = CertKey::from_pkcs8_pem(&key_pem, SvidAlgorithm::MlDsa65, "svid.key").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::hours(2),
        not_after: now - time::Duration::hours(1),
    };
    let id = SpiffeId::parse(&state.settings.spiffe_id).unwrap();
    let (cert, _) = ca.sign_leaf(&id, &key, validity).unwrap();
    let creds = SvidCredentials::from_pem(cert.pem().as_bytes(), &key_pem).unwrap();
    let client = ControlClient::new(&h.url(), h.bundle_trust(), Some(creds), None).unwrap();
    let e = client.renew().await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e}");
    // The current one still works.
    agent::renew(&h.agent_dir("x")).await.unwrap();
}

macro_rules! on_both {
    ($($name:ident),*) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = Harness::start(Db::Sqlite).await;
                    super::$name(&h).await;
                    h.stop().await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = Harness::start(Db::Postgres).await;
                    super::$name(&h).await;
                    h.stop().await;
                }
            )*
        }
    };
}

on_both!(
    full_enrollment,
    tokens_refused,
    expired_svid_cannot_renew,
    members,
    kem_key_is_signed
);

/// A restart keeps the CA, the network and the admin token, and prints no
/// new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_ca_and_makes_no_second_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let first = weft_control::start(common::config(dir.path()))
        .await
        .unwrap();
    let fp = first.info().ca_fingerprint.clone();
    let token = first.info().admin_token.clone().unwrap();
    let file = first.info().admin_token_file.clone().unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    first.shutdown().await;
    let second = weft_control::start(common::config(dir.path()))
        .await
        .unwrap();
    assert_eq!(second.info().ca_fingerprint, fp);
    assert!(second.info().admin_token.is_none());
    assert!(!second.info().created_ca);
    let client = ControlClient::new(
        &second.info().url,
        weft_control::client::Trust::fingerprint(&fp).unwrap(),
        None,
        Some(token),
    )
    .unwrap();
    assert!(client.list_nodes(None, None, None, None).await.is_ok());
    second.shutdown().await;
    // Connections are refused once it is down.
    let e = client.health().await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e}");
}

/// A second process on the same PostgreSQL with a copy of master.key
/// restores the CA from the database; without it, it refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_control_plane_restores_the_ca_from_postgres() {
    let h = Harness::start(Db::Postgres).await;
    let db = h.pg_db.clone().unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut config = common::config(other.path());
    config.db = Some(format!("postgres://postgres@127.0.0.1:5432/{db}"));
    std::fs::create_dir_all(&config.data_dir).unwrap();
    // Without the master key: refused, saying what to do.
    let e = weft_control::start(config.clone()).await.unwrap_err();
    assert!(e.to_string().contains("master.key"), "{e}");
    std::fs::remove_file(config.data_dir.join("master.key")).unwrap();
    let src = h.data_dir().join("master.key");
    std::fs::copy(&src, config.data_dir.join("master.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        config.data_dir.join("master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let second = weft_control::start(config).await.unwrap();
    assert_eq!(
        second.info().ca_fingerprint,
        h.running().info().ca_fingerprint
    );
    assert!(second.info().admin_token.is_none());
    second.shutdown().await;
    h.stop().await;
}

/// `POST /v1/networks` makes a network with its own CA, sealed in the
/// database; a second control plane started with `network` set to it and
/// a copy of `master.key` serves it, and nodes enroll into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_network_is_served_by_a_second_control_plane() {
    use weft_control::api::CreateNetwork;
    let h = Harness::start(Db::Postgres).await;
    let admin = h.admin();
    let made = admin
        .create_network(&CreateNetwork {
            name: "lab".into(),
            trust_domain: "lab.weft.test".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        (made.name.as_str(), made.trust_domain.as_str(), made.served),
        ("lab", "lab.weft.test", false)
    );
    let fingerprint = made.ca_fingerprint.clone().unwrap();
    assert_ne!(fingerprint, h.running().info().ca_fingerprint);
    // Taken names and trust domains, bad names: refused.
    for (name, td, status) in [
        ("lab", "other.weft.test", 409),
        ("lab2", "lab.weft.test", 409),
        ("Not A Name", "x.weft.test", 400),
        ("ok", "not a domain!", 400),
    ] {
        let e = admin
            .create_network(&CreateNetwork {
                name: name.into(),
                trust_domain: td.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(status), "{name} {td}: {e}");
    }
    let listed = admin.list_networks(None, None).await.unwrap();
    let names: Vec<(&str, bool)> = listed
        .items
        .iter()
        .map(|n| (n.name.as_str(), n.served))
        .collect();
    assert_eq!(names, [("default", true), ("lab", false)]);
    let creates = admin
        .audit(&[("action", Some("network.create".into()))])
        .await
        .unwrap();
    assert_eq!(creates.items.len(), 5);
    assert_eq!(creates.items.last().unwrap().result, "success");

    // A second control plane serves it.
    let other = tempfile::tempdir().unwrap();
    let mut config = common::config(other.path());
    config.db = Some(format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        h.pg_db.clone().unwrap()
    ));
    config.network = weft_store::NetworkName::new("lab").unwrap();
    config.trust_domain = weft_crypto::TrustDomain::new("lab.weft.test").unwrap();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    std::fs::copy(
        h.data_dir().join("master.key"),
        config.data_dir.join("master.key"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        config.data_dir.join("master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let lab = weft_control::start(config).await.unwrap();
    assert_eq!(lab.info().ca_fingerprint, fingerprint);
    assert_eq!(lab.info().network, "lab");
    let lab_admin = ControlClient::new(
        &lab.info().url,
        weft_control::client::Trust::fingerprint(&fingerprint).unwrap(),
        None,
        Some(h.admin.clone()),
    )
    .unwrap();
    let token = lab_admin
        .create_join_token("lab", &token_request(1, true))
        .await
        .unwrap();
    let trust = weft_control::client::Trust::fingerprint(&fingerprint).unwrap();
    let state = agent::enroll(&lab.info().url, &token.token, trust, &h.agent_dir("lab0"))
        .await
        .unwrap();
    assert!(
        state
            .settings
            .spiffe_id
            .starts_with("spiffe://lab.weft.test/node/")
    );
    lab.shutdown().await;
    h.stop().await;
}
