//! HTTP behaviour: problem details everywhere, limits, rate limits, the
//! OpenAPI document, metrics by route, and an RBAC walk of every route
//! for every kind of caller.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Db, Harness};
use http::{Method, StatusCode};
use weft_control::api::CreateApiToken;
use weft_control::app::{Access, ROUTES};
use weft_control::client::{ClientError, ControlClient};
use weft_control::problem::ProblemBody;
use weft_store::Role;

async fn problem_of(
    client: &ControlClient,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> (StatusCode, ProblemBody, String) {
    let (status, content_type, bytes) = client.raw(method, path, body).await.unwrap();
    assert_eq!(content_type, "application/problem+json", "{path}: {status}");
    let problem: ProblemBody = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(problem.status, status.as_u16());
    assert!(!problem.detail.is_empty());
    (status, problem, content_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_precise_problem() {
    let h = Harness::start(Db::Sqlite).await;
    let admin = h.admin();
    let (s, p, _) = problem_of(&admin, Method::GET, "/v1/nope", None).await;
    assert_eq!(s, 404);
    assert!(
        p.detail.contains("/v1/nope") && p.detail.contains("/openapi.json"),
        "{}",
        p.detail
    );

    let (status, _, _) = admin.raw(Method::DELETE, "/v1/nodes", None).await.unwrap();
    assert_eq!(status, 405);
    let (s, p, _) = problem_of(&admin, Method::DELETE, "/v1/nodes", None).await;
    assert_eq!(s, 405);
    assert!(p.detail.contains("allowed: GET"), "{}", p.detail);

    let big = vec![b' '; 70 * 1024];
    let (s, p, _) = problem_of(&admin, Method::POST, "/v1/enroll", Some(big)).await;
    assert_eq!(s, 413);
    assert!(p.detail.contains("65536"), "{}", p.detail);

    let (s, p, _) = problem_of(
        &admin,
        Method::POST,
        "/v1/enroll",
        Some(b"{\"token\": ".to_vec()),
    )
    .await;
    assert_eq!(s, 400);
    assert!(p.detail.contains("not valid JSON"), "{}", p.detail);

    let (s, p, _) = problem_of(
        &admin,
        Method::POST,
        "/v1/enroll",
        Some(b"{\"token\": 5}".to_vec()),
    )
    .await;
    assert_eq!(s, 422);
    assert!(p.detail.contains("token"), "{}", p.detail);

    let (s, p, _) = problem_of(
        &admin,
        Method::POST,
        "/v1/networks/default/join-tokens",
        Some(b"{\"usez\": 2}".to_vec()),
    )
    .await;
    assert_eq!(s, 422);
    assert!(p.detail.contains("usez"), "{}", p.detail);

    let (s, p, _) = problem_of(
        &admin,
        Method::POST,
        "/v1/networks/default/join-tokens",
        Some(b"{\"uses\": 0}".to_vec()),
    )
    .await;
    assert_eq!(s, 400);
    assert!(p.detail.contains("uses"), "{}", p.detail);

    let (s, p, _) = problem_of(&admin, Method::GET, "/v1/nodes/not-a-node", None).await;
    assert_eq!(s, 400);
    assert!(p.detail.contains("node id"), "{}", p.detail);

    let (s, p, _) = problem_of(&admin, Method::GET, "/v1/nodes?status=gone", None).await;
    assert_eq!(s, 400);
    assert!(p.detail.contains("gone"), "{}", p.detail);

    let (s, p, _) = problem_of(&admin, Method::GET, "/v1/audit?bogus=1", None).await;
    assert_eq!(s, 400);
    assert!(p.detail.contains("bogus"), "{}", p.detail);

    let (s, p, _) = problem_of(&admin, Method::GET, "/v1/networks/other/join-tokens", None).await;
    assert_eq!(s, 404);
    assert!(p.detail.contains("other"), "{}", p.detail);

    let anon = h.client(None);
    let (s, p, _) = problem_of(&anon, Method::GET, "/v1/nodes", None).await;
    assert_eq!(s, 401);
    assert!(p.detail.contains("Bearer"), "{}", p.detail);

    // Metrics count by route template.
    let text = admin.metrics_text().await.unwrap();
    assert!(
        text.contains(
            "weft_control_requests_total{method=\"GET\",route=\"/v1/nodes/{id}\",status=\"400\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("route=\"unmatched\",status=\"404\""),
        "{text}"
    );
    assert!(
        text.contains("weft_control_request_duration_seconds_bucket"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route() {
    let h = Harness::start(Db::Sqlite).await;
    let (status, _, bytes) = h
        .client(None)
        .raw(Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for route in ROUTES {
        assert!(
            doc["paths"][route.path][route.method.to_lowercase()].is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let h = Harness::start_with(Db::Sqlite, |c| {
        c.limits.rate_per_second = 1;
        c.limits.rate_burst = 3;
        c.limits.auth_failures_per_minute = 2;
    })
    .await;
    let admin = h.admin();
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            admin
                .list_nodes(None, None, None, None)
                .await
                .err()
                .and_then(|e| e.status()),
        );
    }
    assert_eq!(codes[..3], [None, None, None]);
    assert!(codes[3..].contains(&Some(429)), "{codes:?}");
    let (status, ct, bytes) = admin.raw(Method::GET, "/v1/nodes", None).await.unwrap();
    assert_eq!(
        (status.as_u16(), ct.as_str()),
        (429, "application/problem+json")
    );
    assert!(String::from_utf8_lossy(&bytes).contains("slow down"));

    // Failed authentications from one address are limited too.
    let bad = h.client(Some("weft_api_00000000000000000000000000000000_x"));
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            bad.list_nodes(None, None, None, None)
                .await
                .unwrap_err()
                .status()
                .unwrap(),
        );
    }
    assert_eq!(codes, [401, 401, 429, 429]);
    // Forged join tokens from the same address count against the budget.
    let anon = h.client(None);
    let body = br#"{"token":"weft_join_x","identity_public_key":"","svid_public_key":"","kem_public_key":"","signature":"","svid_key_signature":""}"#;
    let (status, _, _) = anon
        .raw(Method::POST, "/v1/enroll", Some(body.to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 429);
    h.stop().await;
}

/// The body and path each route is called with in the RBAC walk: valid
/// enough that an authorized caller gets past authorization.
fn call_for(method: &str, path: &str) -> (String, Option<Vec<u8>>) {
    let node = "a".repeat(52);
    let path = path.replace("{network}", "default").replace(
        "{id}",
        if path.contains("api-tokens") {
            "0190e0f0-0000-7000-8000-000000000000"
        } else {
            &node
        },
    );
    let body = match path.as_str() {
        "/v1/networks/default/join-tokens" => Some(b"{\"uses\": 1}".to_vec()),
        "/v1/enroll" => Some(br#"{"token":"x","identity_public_key":"","svid_public_key":"","kem_public_key":"","signature":"","svid_key_signature":""}"#.to_vec()),
        "/v1/enroll/claim" => Some(br#"{"identity_public_key":"","svid_public_key":"","issued_at":0,"signature":"","svid_key_signature":""}"#.to_vec()),
        "/v1/api-tokens" => Some(br#"{"name":"made in rbac","role":"viewer"}"#.to_vec()),
        "/v1/networks" if method == "POST" => {
            Some(br#"{"name":"rbac","trust_domain":"rbac.weft.test"}"#.to_vec())
        }
        "/v1/heartbeat" => Some(br#"{"seq":1}"#.to_vec()),
        "/v1/networks/default/policy" if method == "PUT" => {
            Some(br#"{"document":{"default":"deny","rules":[]}}"#.to_vec())
        }
        p if p.ends_with("/revoke") && p.starts_with("/v1/nodes") => Some(b"{}".to_vec()),
        _ => None,
    };
    (path, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_every_route_for_every_caller() {
    let h = Harness::start(Db::Sqlite).await;
    let admin = h.admin();
    let mut tokens = vec![("admin", Some(h.admin.clone()))];
    for role in ["operator", "viewer"] {
        let made = admin
            .create_api_token(&CreateApiToken {
                name: role.into(),
                role: role.into(),
                ttl_seconds: None,
            })
            .await
            .unwrap();
        tokens.push((role, Some(made.token)));
    }
    tokens.push(("none", None));
    tokens.push((
        "bad",
        Some(format!("weft_api_{}_{}", "0".repeat(32), "a".repeat(52))),
    ));
    let role_of = |who: &str| match who {
        "admin" => Some(Role::Admin),
        "operator" => Some(Role::Operator),
        "viewer" => Some(Role::Viewer),
        _ => None,
    };
    let mut table = Vec::new();
    for route in ROUTES {
        let (path, body) = call_for(route.method, route.path);
        let method: Method = route.method.parse().unwrap();
        let mut seen = Vec::new();
        for (who, token) in &tokens {
            let client = h.client(token.as_deref());
            let (status, ct, _) = client
                .raw(method.clone(), &path, body.clone())
                .await
                .unwrap();
            let status = status.as_u16();
            if status >= 400 {
                assert_eq!(
                    ct, "application/problem+json",
                    "{} {path} as {who}",
                    route.method
                );
            }
            let expected: &[u16] = match (route.access, role_of(who)) {
                (Access::Public, _) => &[200],
                (Access::Role(need), Some(have)) if have.includes(need) => &[200, 201, 404],
                (Access::Role(_), Some(_)) => &[403],
                (Access::Role(_), None) => &[401],
                (Access::AgentOrViewer, Some(_)) => &[200, 404],
                (Access::AgentOrViewer, None) => &[401],
                (Access::Agent, _) => &[401],
                // The body decides; a bearer token neither helps nor hurts.
                (Access::Enrollment, _) => &[400, 401],
            };
            assert!(
                expected.contains(&status),
                "{} {path} as {who}: {status}, expected {expected:?}",
                route.method
            );
            seen.push(status);
            table.push(format!("{} {path} {who} {status}", route.method));
        }
        if route.access == Access::Enrollment {
            assert!(
                seen.windows(2).all(|w| w[0] == w[1]),
                "{} {path}: {seen:?}",
                route.method
            );
        }
    }
    assert_eq!(table.len(), ROUTES.len() * 5);

    // Denied mutating requests are in the audit trail.
    let denied = admin
        .audit(&[
            ("result", Some("denied".into())),
            ("action", Some("node.revoke".into())),
        ])
        .await
        .unwrap();
    // viewer (403), none (401), bad (401)
    assert_eq!(denied.items.len(), 3, "{:?}", denied.items);
    assert!(
        denied
            .items
            .iter()
            .any(|r| r.actor.starts_with("anonymous@127.0.0.1"))
    );
    let e = h.client(None).audit(&[]).await.unwrap_err();
    assert!(matches!(e, ClientError::Problem { status: 401, .. }));
    h.stop().await;
}

mod in_flight {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::common::{Db, Harness};

    /// Accepts any server: this test is about the connection, not trust.
    #[derive(Debug)]
    struct AnyServer;

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![
                SignatureScheme::ML_DSA_65,
                SignatureScheme::ECDSA_NISTP256_SHA256,
            ]
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_a_request_in_flight_finish_and_refuses_new_connections() {
        let mut h = Harness::start(Db::Sqlite).await;
        let addr = h.running().info().local_addr;
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(weft_crypto::tls::pq_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer))
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let body = br#"{"token":"weft_join_x","identity_public_key":"","svid_public_key":"","kem_public_key":"","signature":"","svid_key_signature":""}"#;
        let head = format!(
            "POST /v1/enroll HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body[..10]).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Shut down while the request waits for the rest of its body.
        let running = h.running.take().unwrap();
        let stopping = tokio::spawn(running.shutdown());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !stopping.is_finished(),
            "shutdown must wait for the request"
        );
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no new connections during shutdown"
        );

        tls.write_all(&body[10..]).await.unwrap();
        tls.flush().await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
        tokio::time::timeout(Duration::from_secs(10), stopping)
            .await
            .expect("shutdown finishes once the request is answered")
            .unwrap();
    }
}
