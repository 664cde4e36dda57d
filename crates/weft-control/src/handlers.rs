//! The route handlers. Each is described for the OpenAPI document with
//! `utoipa::path`; who may call it is in [`crate::app::ROUTES`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, OpenApi, ToSchema};
use weft_crypto::NodeId;
use weft_proto::wire::{MAX_REVOKED, Message};
use weft_store::{
    ApiTokenId, AuditFilter, AuditResult, Cursor, JoinTokenId, Network, NewApiToken, NewJoinToken,
    NewNode, Node, NodeFilter, NodeKeys, NodeStatus, PageRequest, Role, Store, StoreError,
    SvidRecord, Tags, limits,
};

use crate::api::{
    ApiTokenPage, ApiTokenView, AuditPage, AuditView, ClaimRequest, CreateApiToken,
    CreateJoinToken, CreateNetwork, CreatedApiToken, CreatedJoinToken, EnrollRequest,
    EnrollResponse, Health, JoinTokenPage, JoinTokenView, MeshSettings, NetworkFile, NetworkPage,
    NetworkView, NodePage, NodeView, Ready, RenewResponse, RevocationEntry, RevocationListView,
    RevokeRequest, RevokeResponse, rfc3339,
};
use crate::app::{AUDIT_STREAM, AuditNote, ConnInfo, Identity, REVOCATION_EVENT, Shared, respond};
use crate::extract::{JsonBody, JsonWithText, PathParams, QueryParams};
use crate::policy::{PolicyDocument, PolicyPage, PolicySummaryView, PolicyView, PutPolicy};
use crate::problem::{Problem, ProblemBody};
use crate::proof;
use crate::telemetry::{HeartbeatRequest, Topology};

/// Longest token text read.
const MAX_TOKEN_TEXT: usize = 256;
/// Longest base64 key or signature read (an ML-DSA-65 signature is 3309
/// bytes, a composite one 3373).
const MAX_B64_BYTES: usize = 4096;
/// OID of ML-DSA-65 (FIPS 204).
const ML_DSA_65_OID: &str = "2.16.840.1.101.3.4.3.18";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn b64(field: &'static str, text: &str) -> Result<Vec<u8>, Problem> {
    if text.len() > MAX_B64_BYTES * 4 / 3 + 4 {
        return Err(Problem::bad_request(format!(
            "{field} is {} characters; at most {} bytes of base64 are accepted",
            text.len(),
            MAX_B64_BYTES
        )));
    }
    BASE64.decode(text.as_bytes()).map_err(|e| {
        Problem::bad_request(format!(
            "{field} is not standard base64 (with padding): {e}"
        ))
    })
}

fn page_request(limit: Option<u32>, cursor: Option<&str>) -> Result<PageRequest, Problem> {
    let limit = limit.unwrap_or(limits::DEFAULT_PAGE_SIZE);
    Ok(match cursor {
        Some(c) => PageRequest::after(Cursor::parse(c)?, limit),
        None => PageRequest::first(limit),
    })
}

fn parse_node_id(text: &str) -> Result<NodeId, Problem> {
    text.parse::<NodeId>()
        .map_err(|e| Problem::bad_request(format!("bad node id: {e}")))
}

fn parse_time(field: &str, text: &str) -> Result<OffsetDateTime, Problem> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        Problem::bad_request(format!(
            "{field} {:?} is not an RFC 3339 time (2030-01-31T12:00:00Z): {e}",
            text.chars().take(64).collect::<String>()
        ))
    })
}

fn duration_secs(field: &str, secs: u64, max: Duration) -> Result<time::Duration, Problem> {
    if secs == 0 || secs > max.as_secs() {
        return Err(Problem::bad_request(format!(
            "{field} is {secs}; it must be 1 to {} seconds",
            max.as_secs()
        )));
    }
    time::Duration::try_from(Duration::from_secs(secs))
        .map_err(|_| Problem::bad_request(format!("{field} is out of range")))
}

// ------------------------------------------------------------------ service

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, description = "alive", body = Health)))]
pub async fn health() -> impl IntoResponse {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the store answers and the bus has the audit stream.
#[utoipa::path(get, path = "/ready", tag = "service",
    responses((status = 200, description = "ready", body = Ready),
        (status = 503, description = "a dependency is down", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn ready(State(state): State<Shared>) -> Result<axum::Json<Ready>, Problem> {
    state
        .store
        .ping()
        .await
        .map_err(|e| Problem::unavailable(format!("the store does not answer: {e}")))?;
    let schema_version = state.store.schema_version().await?;
    use weft_bus::Backend;
    state
        .events
        .backend()
        .stream_info(AUDIT_STREAM)
        .await
        .map_err(|e| Problem::unavailable(format!("the bus does not answer: {e}")))?;
    Ok(axum::Json(Ready {
        store: "ok".into(),
        bus: "ok".into(),
        schema_version,
    }))
}

/// The OpenAPI 3.1 description of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    axum::Json(crate::openapi::ApiDoc::openapi())
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "service", security(("bearer" = [])),
    responses((status = 200, description = "metrics", content_type = "application/openmetrics-text"),
        (status = 401, description = "no or bad API token", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn metrics(State(state): State<Shared>) -> Response {
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

// -------------------------------------------------------------------- audit

/// Filters of the audit listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action (`node.revoke`, ...).
    pub action: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only this result: `success`, `denied` or `failed`.
    pub result: Option<String>,
    /// At or after this time (RFC 3339).
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    pub until: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// The audit trail, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery), security(("bearer" = [])),
    responses((status = 200, description = "a page of records", body = AuditPage),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn list_audit(
    State(state): State<Shared>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<axum::Json<AuditPage>, Problem> {
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        network_id: None,
        result: q
            .result
            .as_deref()
            .map(str::parse::<AuditResult>)
            .transpose()?,
        since: q
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?,
    };
    let page = state
        .store
        .list_audit(filter, page_request(q.limit, q.cursor.as_deref())?)
        .await?;
    Ok(axum::Json(AuditPage {
        items: page.items.iter().map(AuditView::of).collect(),
        next: page.next.map(|c| c.as_str().to_owned()),
    }))
}

// -------------------------------------------------------------- join tokens

/// Paging of listings.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// Makes a join token; the secret is in the answer only.
#[utoipa::path(post, path = "/v1/networks/{network}/join-tokens", tag = "enrollment",
    params(("network" = String, Path, description = "the network's name")),
    request_body = CreateJoinToken, security(("bearer" = [])),
    responses((status = 201, description = "made; the token is shown this once", body = CreatedJoinToken),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn create_join_token(
    State(state): State<Shared>,
    Extension(identity): Extension<Identity>,
    PathParams(network): PathParams<String>,
    JsonBody(req): JsonBody<CreateJoinToken>,
) -> Result<Response, Problem> {
    let net = state.served_network(&network).await?;
    let note = AuditNote {
        network_id: Some(net.id),
        ..AuditNote::default()
    };
    let ttl = duration_secs(
        "ttl_seconds",
        req.ttl_seconds,
        state.config.max_join_token_ttl,
    )
    .map_err(|p| p.with_note(&note))?;
    let tags = Tags::new(&req.tags).map_err(|e| Problem::from(e).with_note(&note))?;
    let at = now();
    let (token, secret) = state
        .store
        .create_join_token(
            NewJoinToken {
                network_id: net.id,
                description: req.description,
                uses: req.uses,
                expires_at: at + ttl,
                tags,
                auto_approve: req.auto_approve,
                created_by: identity.actor(),
            },
            at,
        )
        .await
        .map_err(|e| Problem::from(e).with_note(&note))?;
    let view = JoinTokenView::of(&token, net.name.as_str());
    let note = AuditNote {
        target: Some(format!("join-token:{}", token.id)),
        detail: format!(
            "{} use(s), expires {}, auto-approve {}",
            token.max_uses, view.expires_at, token.auto_approve
        ),
        ..note
    };
    Ok(respond(
        StatusCode::CREATED,
        &CreatedJoinToken {
            token: secret.expose().to_owned(),
            join_token: view,
        },
        note,
    ))
}

/// A network's join tokens (no secrets), oldest first.
#[utoipa::path(get, path = "/v1/networks/{network}/join-tokens", tag = "enrollment",
    params(("network" = String, Path, description = "the network's name"), PageQuery), security(("bearer" = [])),
    responses((status = 200, description = "a page of tokens", body = JoinTokenPage),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn list_join_tokens(
    State(state): State<Shared>,
    PathParams(network): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<axum::Json<JoinTokenPage>, Problem> {
    let net = state.served_network(&network).await?;
    let page = state
        .store
        .list_join_tokens(net.id, page_request(q.limit, q.cursor.as_deref())?)
        .await?;
    Ok(axum::Json(JoinTokenPage {
        items: page
            .items
            .iter()
            .map(|t| JoinTokenView::of(t, net.name.as_str()))
            .collect(),
        next: page.next.map(|c| c.as_str().to_owned()),
    }))
}

// --------------------------------------------------------------- enrollment

/// The join token id in a token's text, if it has the form of one.
fn join_token_id(token: &str) -> Option<JoinTokenId> {
    let rest = token.strip_prefix("weft_join_")?;
    let (id, _secret) = rest.split_once('_')?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    id.parse().ok()
}

fn token_invalid() -> Problem {
    Problem::from(StoreError::TokenInvalid { kind: "join" })
}

fn settings(state: &Shared, net: &Network, node: &Node) -> MeshSettings {
    MeshSettings {
        network: net.name.as_str().to_owned(),
        trust_domain: net.trust_domain.to_string(),
        spiffe_id: node.spiffe_id.to_string(),
        node_id: node.node_id.to_string(),
        control_spiffe_id: state.pki.control_id().to_string(),
        ca_fingerprint: state.pki.ca_fingerprint().to_owned(),
        authority_public_key: BASE64.encode(state.pki.authority_public_key()),
        revocation_epoch: net.revocation_epoch,
        svid_ttl_seconds: state.config.svid_ttl.as_secs(),
    }
}

fn proof_problem(e: proof::ProofError) -> Problem {
    match e {
        proof::ProofError::Malformed { .. } => Problem::bad_request(e.to_string()),
        proof::ProofError::Invalid(_) => {
            Problem::new(StatusCode::UNAUTHORIZED, "proof-invalid", e.to_string())
        }
    }
}

/// Enrolls a node with a join token: checks the token atomically (one use
/// spent), records the node approved (with an X.509-SVID) or pending, and
/// returns the SVID, the CA bundle and the mesh settings.
#[utoipa::path(post, path = "/v1/enroll", tag = "enrollment", request_body = EnrollRequest,
    responses((status = 201, description = "enrolled (approved or pending)", body = EnrollResponse),
        (status = 401, description = "forged, unknown or expired token, or a bad proof", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "token spent, or node already enrolled", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn enroll(
    State(state): State<Shared>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<Response, Problem> {
    if req.token.len() > MAX_TOKEN_TEXT {
        return Err(token_invalid());
    }
    let token_id = join_token_id(&req.token).ok_or_else(token_invalid)?;
    let mut note = AuditNote {
        actor: Some(format!("join-token:{token_id}")),
        network_id: Some(state.network.id),
        ..AuditNote::default()
    };
    let fail = |p: Problem, note: &AuditNote| p.with_note(note);
    let identity_pk =
        b64("identity_public_key", &req.identity_public_key).map_err(|p| fail(p, &note))?;
    let svid_pk = b64("svid_public_key", &req.svid_public_key).map_err(|p| fail(p, &note))?;
    let kem_pk = b64("kem_public_key", &req.kem_public_key).map_err(|p| fail(p, &note))?;
    let signature = b64("signature", &req.signature).map_err(|p| fail(p, &note))?;
    let svid_sig =
        b64("svid_key_signature", &req.svid_key_signature).map_err(|p| fail(p, &note))?;
    let key = proof::identity_key(&identity_pk).map_err(|e| fail(proof_problem(e), &note))?;
    proof::check_kem_key(&kem_pk).map_err(|e| fail(proof_problem(e), &note))?;
    let node_id = NodeId::of(&key);
    note.target = Some(format!("node:{node_id}"));
    let message = proof::enroll_message(&req.token, &identity_pk, &svid_pk, &kem_pk);
    proof::verify(
        &key,
        &svid_pk,
        &message,
        proof::ENROLL_CONTEXT,
        &signature,
        &svid_sig,
    )
    .map_err(|e| fail(proof_problem(e), &note))?;

    let token = match state.store.get_join_token(token_id).await {
        Ok(t) => t,
        Err(StoreError::NotFound { .. }) => return Err(fail(token_invalid(), &note)),
        Err(e) => return Err(fail(e.into(), &note)),
    };
    if token.network_id != state.network.id {
        return Err(fail(
            Problem::conflict(format!(
                "join token {token_id} is for a network this control plane does not serve"
            )),
            &note,
        ));
    }
    let spiffe_id = node_id.spiffe_id(state.pki.trust_domain());
    let svid = if token.auto_approve {
        Some(
            state
                .pki
                .sign_node_svid(&spiffe_id, &svid_pk, state.config.svid_ttl)
                .map_err(|e| fail(Problem::internal(e.to_string()), &note))?,
        )
    } else {
        None
    };
    let enrolled = state
        .store
        .enroll_node(
            &req.token,
            NewNode {
                node_id,
                spiffe_id,
                svid: svid.as_ref().map(|s| SvidRecord {
                    serial: s.serial.clone(),
                    not_after: s.not_after,
                }),
                keys: NodeKeys {
                    signing: identity_pk.clone(),
                    kem: kem_pk,
                },
            },
            now(),
        )
        .await
        .map_err(|e| fail(e.into(), &note))?;
    let net = state.store.get_network(state.network.id).await?;
    let node = enrolled.node;
    note.detail = format!("{} as {}", node.status, node.spiffe_id);
    let body = EnrollResponse {
        node: NodeView::of(&node, net.name.as_str()),
        svid_pem: svid
            .filter(|_| node.status == NodeStatus::Approved)
            .map(|s| s.cert_pem),
        ca_bundle_pem: state.pki.bundle_pem().to_owned(),
        settings: settings(&state, &net, &node),
    };
    Ok(respond(StatusCode::CREATED, &body, note))
}

/// An approved node that enrolled pending claims its first SVID, proving
/// its identity with a fresh signature.
#[utoipa::path(post, path = "/v1/enroll/claim", tag = "enrollment", request_body = ClaimRequest,
    responses((status = 200, description = "the SVID", body = EnrollResponse),
        (status = 401, description = "bad proof or stale claim", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "node revoked", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "still pending, or already holds an SVID", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn claim(
    State(state): State<Shared>,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> Result<Response, Problem> {
    let mut note = AuditNote {
        network_id: Some(state.network.id),
        ..AuditNote::default()
    };
    let fail = |p: Problem, note: &AuditNote| p.with_note(note);
    let identity_pk =
        b64("identity_public_key", &req.identity_public_key).map_err(|p| fail(p, &note))?;
    let svid_pk = b64("svid_public_key", &req.svid_public_key).map_err(|p| fail(p, &note))?;
    let signature = b64("signature", &req.signature).map_err(|p| fail(p, &note))?;
    let svid_sig =
        b64("svid_key_signature", &req.svid_key_signature).map_err(|p| fail(p, &note))?;
    let key = proof::identity_key(&identity_pk).map_err(|e| fail(proof_problem(e), &note))?;
    let node_id = NodeId::of(&key);
    note.target = Some(format!("node:{node_id}"));
    let server_now = now().unix_timestamp();
    if (server_now - req.issued_at).abs() > proof::CLAIM_MAX_SKEW_SECS {
        return Err(fail(
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "claim-stale",
                format!(
                    "the claim was signed at Unix time {} but the server's time is {server_now}; sign a fresh claim and check the node's clock",
                    req.issued_at
                ),
            ),
            &note,
        ));
    }
    let message = proof::claim_message(req.issued_at, &identity_pk, &svid_pk);
    proof::verify(
        &key,
        &svid_pk,
        &message,
        proof::CLAIM_CONTEXT,
        &signature,
        &svid_sig,
    )
    .map_err(|e| fail(proof_problem(e), &note))?;
    let node = state
        .store
        .get_node(&node_id)
        .await
        .map_err(|e| fail(e.into(), &note))?;
    note.actor = Some(node.spiffe_id.to_string());
    if node.network_id != state.network.id {
        return Err(fail(
            Problem::conflict(format!(
                "node {node_id} is in a network this control plane does not serve"
            )),
            &note,
        ));
    }
    match node.status {
        NodeStatus::Pending => {
            return Err(fail(
                Problem::new(
                    StatusCode::CONFLICT,
                    "node-pending",
                    format!(
                        "node {node_id} is still pending; an operator must approve it (weft node approve {node_id}), then claim again"
                    ),
                ),
                &note,
            ));
        }
        NodeStatus::Revoked => {
            return Err(fail(
                Problem::forbidden(format!("node {node_id} was revoked; it cannot get an SVID")),
                &note,
            ));
        }
        NodeStatus::Approved if node.svid.is_some() => {
            return Err(fail(
                Problem::conflict(format!(
                    "node {node_id} already holds an SVID; renew it over mTLS (weft agent renew)"
                )),
                &note,
            ));
        }
        NodeStatus::Approved => {}
    }
    let svid = state
        .pki
        .sign_node_svid(&node.spiffe_id, &svid_pk, state.config.svid_ttl)
        .map_err(|e| fail(Problem::internal(e.to_string()), &note))?;
    let node = state
        .store
        .record_svid(
            &node_id,
            SvidRecord {
                serial: svid.serial.clone(),
                not_after: svid.not_after,
            },
        )
        .await
        .map_err(|e| fail(e.into(), &note))?;
    let net = state.store.get_network(state.network.id).await?;
    note.detail = format!("SVID serial {} issued", crate::api::hex(&svid.serial));
    let body = EnrollResponse {
        node: NodeView::of(&node, net.name.as_str()),
        svid_pem: Some(svid.cert_pem),
        ca_bundle_pem: state.pki.bundle_pem().to_owned(),
        settings: settings(&state, &net, &node),
    };
    Ok(respond(StatusCode::OK, &body, note))
}

/// Renews the caller's SVID over the same key. The caller authenticates
/// with its current SVID as TLS client certificate; a revoked, pending or
/// expired node cannot renew.
#[utoipa::path(post, path = "/v1/renew", tag = "enrollment",
    responses((status = 200, description = "the new SVID", body = RenewResponse),
        (status = 401, description = "no client certificate", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "node revoked or not enrolled", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn renew(
    State(state): State<Shared>,
    Extension(identity): Extension<Identity>,
    Extension(conn): Extension<ConnInfo>,
) -> Result<Response, Problem> {
    let Identity::Agent { node } = identity else {
        return Err(Problem::unauthorized(
            "renewal needs the node's SVID as TLS client certificate",
        ));
    };
    let note = AuditNote {
        target: Some(format!("node:{}", node.node_id)),
        network_id: Some(node.network_id),
        ..AuditNote::default()
    };
    let cert = conn.client_cert.ok_or_else(|| {
        Problem::unauthorized("renewal needs the node's SVID as TLS client certificate")
            .with_note(&note)
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        Problem::bad_request(format!("the client certificate does not parse: {e}")).with_note(&note)
    })?;
    let spki = parsed.public_key();
    let oid = spki.algorithm.algorithm.to_id_string();
    if oid != ML_DSA_65_OID {
        return Err(Problem::bad_request(format!(
            "the client certificate's key is {oid}, not ML-DSA-65; enroll again"
        ))
        .with_note(&note));
    }
    let svid = state
        .pki
        .sign_node_svid(
            &node.spiffe_id,
            &spki.subject_public_key.data,
            state.config.svid_ttl,
        )
        .map_err(|e| Problem::internal(e.to_string()).with_note(&note))?;
    state
        .store
        .record_svid(
            &node.node_id,
            SvidRecord {
                serial: svid.serial.clone(),
                not_after: svid.not_after,
            },
        )
        .await
        .map_err(|e| Problem::from(e).with_note(&note))?;
    let note = AuditNote {
        detail: format!("SVID serial {} issued", crate::api::hex(&svid.serial)),
        ..note
    };
    Ok(respond(
        StatusCode::OK,
        &RenewResponse {
            svid_pem: svid.cert_pem,
            ca_bundle_pem: state.pki.bundle_pem().to_owned(),
            not_after: rfc3339(svid.not_after),
            renew_after_seconds: state.config.svid_ttl.as_secs() / 2,
        },
        note,
    ))
}

// -------------------------------------------------------------------- nodes

/// Filters of the node listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NodeQuery {
    /// The network (default: the one this control plane serves).
    pub network: Option<String>,
    /// Only `pending`, `approved` or `revoked` nodes.
    pub status: Option<String>,
    /// Only nodes with this tag.
    pub tag: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// Nodes, in node-id order.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(NodeQuery), security(("bearer" = [])),
    responses((status = 200, description = "a page of nodes", body = NodePage),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn list_nodes(
    State(state): State<Shared>,
    QueryParams(q): QueryParams<NodeQuery>,
) -> Result<axum::Json<NodePage>, Problem> {
    let net = match &q.network {
        Some(name) => state.served_network(name).await?,
        None => state.network.clone(),
    };
    let filter = NodeFilter {
        status: q
            .status
            .as_deref()
            .map(str::parse::<NodeStatus>)
            .transpose()?,
        tag: q.tag,
    };
    let page = state
        .store
        .list_nodes(net.id, filter, page_request(q.limit, q.cursor.as_deref())?)
        .await?;
    Ok(axum::Json(NodePage {
        items: page
            .items
            .iter()
            .map(|n| NodeView::of(n, net.name.as_str()))
            .collect(),
        next: page.next.map(|c| c.as_str().to_owned()),
    }))
}

async fn served_node(state: &Shared, id: &str) -> Result<Node, Problem> {
    let node_id = parse_node_id(id)?;
    let node = state.store.get_node(&node_id).await?;
    if node.network_id != state.network.id {
        return Err(Problem::not_found(format!(
            "node {node_id} is in a network this control plane does not serve"
        )));
    }
    Ok(node)
}

/// One node.
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "the node id (52 base32 characters)")), security(("bearer" = [])),
    responses((status = 200, description = "the node", body = NodeView),
        (status = "4XX", description = "refused or not found", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn get_node(
    State(state): State<Shared>,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<NodeView>, Problem> {
    let node = served_node(&state, &id).await?;
    Ok(axum::Json(NodeView::of(&node, state.network.name.as_str())))
}

/// Approves a pending node; it then claims its SVID.
#[utoipa::path(post, path = "/v1/nodes/{id}/approve", tag = "nodes",
    params(("id" = String, Path, description = "the node id")), security(("bearer" = [])),
    responses((status = 200, description = "approved (or already was)", body = NodeView),
        (status = 409, description = "the node is revoked", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn approve_node(
    State(state): State<Shared>,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    let note = AuditNote {
        target: Some(format!("node:{}", id.chars().take(64).collect::<String>())),
        network_id: Some(state.network.id),
        ..AuditNote::default()
    };
    let node = served_node(&state, &id)
        .await
        .map_err(|p| p.with_note(&note))?;
    let before = node.status;
    let node = state
        .store
        .approve_node(&node.node_id, now())
        .await
        .map_err(|e| Problem::from(e).with_note(&note))?;
    state.nodes.forget(&node.node_id);
    let note = AuditNote {
        detail: format!("{before} -> {}", node.status),
        ..note
    };
    Ok(respond(
        StatusCode::OK,
        &NodeView::of(&node, state.network.name.as_str()),
        note,
    ))
}

/// Revokes a node: bumps the network's revocation epoch, signs the new
/// revocation list, publishes it on the bus.
#[utoipa::path(post, path = "/v1/nodes/{id}/revoke", tag = "nodes",
    params(("id" = String, Path, description = "the node id")), request_body = RevokeRequest, security(("bearer" = [])),
    responses((status = 200, description = "revoked", body = RevokeResponse),
        (status = 409, description = "already revoked", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn revoke_node(
    State(state): State<Shared>,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<RevokeRequest>,
) -> Result<Response, Problem> {
    let note = AuditNote {
        target: Some(format!("node:{}", id.chars().take(64).collect::<String>())),
        network_id: Some(state.network.id),
        ..AuditNote::default()
    };
    let node = served_node(&state, &id)
        .await
        .map_err(|p| p.with_note(&note))?;
    let (revocation, published) = revoke(&state, &node.node_id, &req.reason)
        .await
        .map_err(|p| p.with_note(&note))?;
    let net = state.store.get_network(state.network.id).await?;
    let node = state.store.get_node(&node.node_id).await?;
    let note = AuditNote {
        detail: format!(
            "epoch {}{}; reason: {}",
            revocation.epoch,
            if published {
                ""
            } else {
                " (not published on the bus: see the logs)"
            },
            req.reason
        ),
        ..note
    };
    Ok(respond(
        StatusCode::OK,
        &RevokeResponse {
            node: NodeView::of(&node, net.name.as_str()),
            epoch: revocation.epoch,
        },
        note,
    ))
}

/// Revokes node `node_id` of this control plane's network: the store
/// records it, the caches forget the node, and the newly signed list is
/// published on the revocation stream (agents also fetch it at their next
/// sync). Returns the revocation and whether the list reached the bus.
pub async fn revoke(
    state: &Shared,
    node_id: &weft_crypto::NodeId,
    reason: &str,
) -> Result<(weft_store::Revocation, bool), Problem> {
    let revocation = state.store.revoke_node(node_id, reason, now()).await?;
    state.nodes.forget(node_id);
    state.heartbeats.forget(node_id);
    let net = state.store.get_network(state.network.id).await?;
    let list = revocation_list(state, &net).await?;
    let published = state
        .publish(
            &format!("weft.revocation.{}", net.name),
            REVOCATION_EVENT,
            serde_json::to_value(list.as_ref()).unwrap_or_default(),
        )
        .await;
    Ok((revocation, published))
}

/// The network's revocation list as signed now (re-signed when the epoch
/// moved since the cached one).
pub async fn revocation_list(
    state: &Shared,
    net: &Network,
) -> Result<Arc<RevocationListView>, Problem> {
    if let Some(cached) = state
        .revocations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&net.id)
        .filter(|l| l.epoch == net.revocation_epoch)
    {
        return Ok(cached.clone());
    }
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let batch = state
            .store
            .list_revocations(net.id, after, limits::MAX_PAGE_SIZE)
            .await?;
        let full = batch.len() == limits::MAX_PAGE_SIZE as usize;
        if let Some(last) = batch.last() {
            after = last.epoch;
        }
        entries.extend(batch);
        if entries.len() > MAX_REVOKED {
            return Err(Problem::internal(format!(
                "network {} has more than {MAX_REVOKED} revoked nodes, more than one signed revocation list carries; this control plane cannot sign it",
                net.name
            )));
        }
        if !full {
            break;
        }
    }
    let epoch = entries
        .last()
        .map_or(0, |r| r.epoch)
        .max(net.revocation_epoch);
    let issued_ms = u64::try_from(now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let revoked: Vec<NodeId> = entries.iter().map(|r| r.node_id).collect();
    let list = state
        .pki
        .sign_revocations(epoch, issued_ms, revoked)
        .map_err(|e| Problem::internal(e.to_string()))?;
    let wire = Message::Revocation(list.clone())
        .to_bytes()
        .map_err(|e| Problem::internal(format!("cannot encode the revocation list: {e}")))?;
    let view = Arc::new(RevocationListView {
        network: net.name.as_str().to_owned(),
        epoch,
        issued_ms,
        authority_public_key: BASE64.encode(state.pki.authority_public_key()),
        revoked: list.revoked.iter().map(NodeId::to_string).collect(),
        signature: BASE64.encode(&list.signature[..]),
        wire: BASE64.encode(&wire),
        entries: entries.iter().map(RevocationEntry::of).collect(),
    });
    state
        .revocations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(net.id, view.clone());
    Ok(view)
}

/// The network's revocation list, signed by the revocation authority.
#[utoipa::path(get, path = "/v1/networks/{network}/revocations", tag = "nodes",
    params(("network" = String, Path, description = "the network's name")), security(("bearer" = [])),
    responses((status = 200, description = "the signed list", body = RevocationListView),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn revocations(
    State(state): State<Shared>,
    PathParams(network): PathParams<String>,
) -> Result<axum::Json<RevocationListView>, Problem> {
    let net = state.served_network(&network).await?;
    let list = revocation_list(&state, &net).await?;
    Ok(axum::Json(list.as_ref().clone()))
}

// ----------------------------------------------------------------- networks

fn network_view(state: &Shared, n: &Network) -> NetworkView {
    let served = n.id == state.network.id;
    let ca_fingerprint = weft_crypto::svid::certs_from_pem(n.ca_bundle_pem.as_bytes())
        .ok()
        .and_then(|certs| certs.first().map(|c| crate::pki::fingerprint(c)));
    NetworkView {
        name: n.name.as_str().to_owned(),
        trust_domain: n.trust_domain.to_string(),
        revocation_epoch: n.revocation_epoch,
        created_at: rfc3339(n.created_at),
        ca_fingerprint,
        served,
    }
}

/// Makes a network (a trust domain) with its own CA and revocation
/// authority, whose keys are stored encrypted with the master key. This
/// control plane keeps serving its own network; one started with
/// `--network NAME` and a copy of `master.key` serves the new one.
#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = CreateNetwork, security(("bearer" = [])),
    responses((status = 201, description = "made", body = NetworkView),
        (status = 409, description = "the name or trust domain is taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn create_network(
    State(state): State<Shared>,
    JsonBody(req): JsonBody<CreateNetwork>,
) -> Result<Response, Problem> {
    let note = AuditNote {
        target: Some(format!(
            "network:{}",
            req.name.chars().take(64).collect::<String>()
        )),
        ..AuditNote::default()
    };
    let name =
        weft_store::NetworkName::new(&req.name).map_err(|e| Problem::from(e).with_note(&note))?;
    let trust_domain = weft_crypto::TrustDomain::new(&req.trust_domain).map_err(|e| {
        Problem::bad_request(format!(
            "trust_domain {:?} is not a SPIFFE trust domain: {e}",
            req.trust_domain.chars().take(64).collect::<String>()
        ))
        .with_note(&note)
    })?;
    let net = crate::pki::Pki::make_network(
        &state.config.data_dir,
        &state.store,
        &name,
        &trust_domain,
        now(),
    )
    .await
    .map_err(|e| {
        match e {
            crate::ControlError::Store(e) => Problem::from(e),
            other => Problem::internal(format!("cannot make network {name}: {other}")),
        }
        .with_note(&note)
    })?;
    let view = network_view(&state, &net);
    let note = AuditNote {
        network_id: Some(net.id),
        detail: format!(
            "trust domain {}, CA {}",
            view.trust_domain,
            view.ca_fingerprint.as_deref().unwrap_or("?")
        ),
        ..note
    };
    Ok(respond(StatusCode::CREATED, &view, note))
}

/// Networks, in name order.
#[utoipa::path(get, path = "/v1/networks", tag = "networks", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, description = "a page of networks", body = NetworkPage),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn list_networks(
    State(state): State<Shared>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<axum::Json<NetworkPage>, Problem> {
    let page = state
        .store
        .list_networks(page_request(q.limit, q.cursor.as_deref())?)
        .await?;
    Ok(axum::Json(NetworkPage {
        items: page.items.iter().map(|n| network_view(&state, n)).collect(),
        next: page.next.map(|c| c.as_str().to_owned()),
    }))
}

// ------------------------------------------------------------------ members

/// Most members one network file lists (about 4.3 KB each in JSON).
pub const MAX_MEMBERS: usize = 20_000;

/// A rendered network file, with what it was rendered from.
#[derive(Debug)]
pub struct MembersFile {
    /// The membership it lists.
    pub stamp: weft_store::MembershipStamp,
    /// Its entity tag (quoted), from the SHA-256 of the body.
    pub etag: String,
    /// The JSON.
    pub body: bytes::Bytes,
}

/// Whether an `If-None-Match` header names `etag` (or is `*`); weak and
/// strong tags compare alike (RFC 9110 weak comparison).
fn if_none_match(headers: &axum::http::HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .map(|t| t.strip_prefix("W/").unwrap_or(t))
        .any(|t| t == "*" || t == etag)
}

/// The network file of `net` as it is now (rendered again only when its
/// membership changed since the cached one).
async fn members_file(state: &Shared, net: &Network) -> Result<Arc<MembersFile>, Problem> {
    let stamp = state.store.membership_stamp(net.id).await?;
    if let Some(cached) = state
        .members
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&net.id)
        .filter(|f| f.stamp == stamp)
    {
        return Ok(cached.clone());
    }
    if usize::try_from(stamp.members).unwrap_or(usize::MAX) > MAX_MEMBERS {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "members-too-many",
            format!(
                "network {} has {} members, more than the {MAX_MEMBERS} one network file lists; split the mesh into several networks",
                net.name, stamp.members
            ),
        ));
    }
    let mut nodes = Vec::new();
    let mut page = PageRequest::first(limits::MAX_PAGE_SIZE);
    loop {
        let got = state.store.list_members(net.id, page).await?;
        nodes.extend(got.items.into_iter().map(|m| crate::api::NetworkFileNode {
            signing: BASE64.encode(&m.keys.signing),
            kem: BASE64.encode(&m.keys.kem),
            tags: m.tags.iter().map(str::to_owned).collect(),
        }));
        if nodes.len() > MAX_MEMBERS {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "members-too-many",
                format!(
                    "network {} has more than the {MAX_MEMBERS} members one network file lists; split the mesh into several networks",
                    net.name
                ),
            ));
        }
        match got.next {
            Some(c) => page = PageRequest::after(c, limits::MAX_PAGE_SIZE),
            None => break,
        }
    }
    let file = crate::api::NetworkFile {
        version: crate::api::NETWORK_FILE_VERSION,
        trust_domain: net.trust_domain.to_string(),
        authority: BASE64.encode(state.pki.authority_public_key()),
        nodes,
    };
    let body = serde_json::to_vec(&file)
        .map_err(|e| Problem::internal(format!("cannot encode the network file: {e}")))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    let etag = format!(
        "\"m1-{}\"",
        data_encoding::HEXLOWER.encode(&digest.as_ref()[..16])
    );
    let file = Arc::new(MembersFile {
        stamp,
        etag,
        body: bytes::Bytes::from(body),
    });
    state
        .members
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(net.id, file.clone());
    Ok(file)
}

/// The network's members as the agent's network file (`network.json`):
/// every node approved so far (revoked ones too), in order of approval,
/// with its signing and X-Wing keys and tags, the trust domain and the
/// revocation authority's key. Carries an `ETag`; send it
/// back in `If-None-Match` to get 304 while nothing changed.
#[utoipa::path(get, path = "/v1/networks/{network}/members", tag = "nodes",
    params(("network" = String, Path, description = "the network's name"),
        ("If-None-Match" = Option<String>, Header, description = "the ETag of the copy the caller holds")),
    security(("bearer" = [])),
    responses((status = 200, description = "the network file", body = NetworkFile,
            headers(("ETag" = String, description = "entity tag of this version of the file"))),
        (status = 304, description = "unchanged since the ETag sent in If-None-Match"),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn members(
    State(state): State<Shared>,
    PathParams(network): PathParams<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    let net = state.served_network(&network).await?;
    let file = members_file(&state, &net).await?;
    let etag = HeaderValue::from_str(&file.etag)
        .map_err(|e| Problem::internal(format!("bad entity tag: {e}")))?;
    let mut response = if if_none_match(&headers, &file.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = file.body.clone().into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    response.headers_mut().insert(header::ETAG, etag);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

// --------------------------------------------------------------- API tokens

/// Makes an API token; the secret is in the answer only.
#[utoipa::path(post, path = "/v1/api-tokens", tag = "api-tokens", request_body = CreateApiToken, security(("bearer" = [])),
    responses((status = 201, description = "made; the token is shown this once", body = CreatedApiToken),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn create_api_token(
    State(state): State<Shared>,
    Extension(identity): Extension<Identity>,
    JsonBody(req): JsonBody<CreateApiToken>,
) -> Result<Response, Problem> {
    let role: Role = req.role.parse()?;
    let at = now();
    let expires_at = match req.ttl_seconds {
        Some(secs) => {
            Some(at + duration_secs("ttl_seconds", secs, Duration::from_secs(10 * 365 * 86400))?)
        }
        None => None,
    };
    let (token, secret) = state
        .store
        .create_api_token(
            NewApiToken {
                name: req.name,
                role,
                expires_at,
                created_by: identity.actor(),
            },
            at,
        )
        .await?;
    let note = AuditNote {
        target: Some(format!("api-token:{}", token.id)),
        detail: format!("role {}, name {:?}", token.role, token.name),
        ..AuditNote::default()
    };
    Ok(respond(
        StatusCode::CREATED,
        &CreatedApiToken {
            token: secret.expose().to_owned(),
            api_token: ApiTokenView::of(&token),
        },
        note,
    ))
}

/// API tokens (no secrets), oldest first.
#[utoipa::path(get, path = "/v1/api-tokens", tag = "api-tokens", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, description = "a page of tokens", body = ApiTokenPage),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn list_api_tokens(
    State(state): State<Shared>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<axum::Json<ApiTokenPage>, Problem> {
    let page = state
        .store
        .list_api_tokens(page_request(q.limit, q.cursor.as_deref())?)
        .await?;
    Ok(axum::Json(ApiTokenPage {
        items: page.items.iter().map(ApiTokenView::of).collect(),
        next: page.next.map(|c| c.as_str().to_owned()),
    }))
}

/// Revokes an API token (again: no change).
#[utoipa::path(post, path = "/v1/api-tokens/{id}/revoke", tag = "api-tokens",
    params(("id" = String, Path, description = "the token id (UUID)")), security(("bearer" = [])),
    responses((status = 200, description = "revoked", body = ApiTokenView),
        (status = "4XX", description = "refused or not found", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn revoke_api_token(
    State(state): State<Shared>,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    let note = AuditNote {
        target: Some(format!(
            "api-token:{}",
            id.chars().take(64).collect::<String>()
        )),
        ..AuditNote::default()
    };
    let id: ApiTokenId = id
        .parse()
        .map_err(|e: StoreError| Problem::bad_request(e.to_string()).with_note(&note))?;
    let token = state
        .store
        .revoke_api_token(id, now())
        .await
        .map_err(|e| Problem::from(e).with_note(&note))?;
    Ok(respond(StatusCode::OK, &ApiTokenView::of(&token), note))
}

// ---------------------------------------------------------------- telemetry

/// What a heartbeat answer says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HeartbeatAck {
    /// Accepted: applied to the latest state and queued for the store.
    pub accepted: bool,
    /// Send the next one after this many seconds.
    pub interval_seconds: u64,
}

/// Records the calling node's heartbeat: applied to the latest state the
/// topology shows and answered at once; written behind, batched with
/// others into one store transaction.
#[utoipa::path(post, path = "/v1/heartbeat", tag = "telemetry", request_body = HeartbeatRequest,
    responses((status = 200, description = "stored", body = HeartbeatAck),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "too many heartbeats wait for the store; retry after Retry-After", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn heartbeat(
    State(state): State<Shared>,
    Extension(identity): Extension<Identity>,
    body: JsonWithText<HeartbeatRequest>,
) -> Result<axum::Json<HeartbeatAck>, Problem> {
    let Identity::Agent { node } = identity else {
        return Err(Problem::unauthorized(
            "heartbeats come from nodes: present the node's SVID as TLS client certificate",
        ));
    };
    body.value.check()?;
    // The report is stored as the agent sent it, once checked: the text
    // is JSON that reads back as this very report, and encoding it again
    // cost a tenth of a heartbeat's handling. A text the store would
    // refuse as too long (a body limit raised, lavish whitespace) is
    // encoded compactly instead, which always fits; so is a report sent
    // as a JSON array (serde reads a struct from one too), since the
    // telemetry stream's schema wants an object.
    let text = body
        .text
        .as_deref()
        .filter(|t| t.len() <= limits::MAX_HEARTBEAT_LEN && t.trim_ascii_start().starts_with(b"{"))
        .map(std::str::from_utf8);
    let payload = match text {
        Some(Ok(text)) => text.to_owned(),
        _ => serde_json::to_string(&body.value)
            .map_err(|e| Problem::internal(format!("cannot encode the heartbeat: {e}")))?,
    };
    state.heartbeats.record(weft_store::Heartbeat {
        node_id: node.node_id,
        at: now(),
        payload,
    })?;
    Ok(axum::Json(HeartbeatAck {
        accepted: true,
        interval_seconds: crate::telemetry::HEARTBEAT_INTERVAL.as_secs(),
    }))
}

/// Options of the topology view.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopologyQuery {
    /// The network (default: the one served).
    pub network: Option<String>,
    /// `json` (default) or `dot` (GraphViz).
    pub format: Option<String>,
}

/// Most nodes in one topology answer.
const MAX_TOPOLOGY_NODES: usize = 10_000;

/// The network's nodes with the latest heartbeat of each (stored, or
/// taken by this process and not written yet).
async fn current_topology(state: &Shared, net: &Network) -> Result<Topology, Problem> {
    let mut nodes = Vec::new();
    let mut page = PageRequest::first(limits::MAX_PAGE_SIZE);
    loop {
        let got = state
            .store
            .list_nodes(net.id, NodeFilter::default(), page)
            .await?;
        nodes.extend(got.items);
        if nodes.len() > MAX_TOPOLOGY_NODES {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "topology-too-large",
                format!(
                    "network {} has more than {MAX_TOPOLOGY_NODES} nodes; list them page by page with /v1/nodes",
                    net.name
                ),
            ));
        }
        match got.next {
            Some(c) => page = PageRequest::after(c, limits::MAX_PAGE_SIZE),
            None => break,
        }
    }
    let mut latest = Vec::new();
    let mut page = PageRequest::first(limits::MAX_PAGE_SIZE);
    loop {
        let got = state.store.latest_heartbeats(net.id, page).await?;
        latest.extend(got.items);
        match got.next {
            Some(c) if latest.len() <= MAX_TOPOLOGY_NODES => {
                page = PageRequest::after(c, limits::MAX_PAGE_SIZE)
            }
            _ => break,
        }
    }
    // Heartbeats this process took but has not written yet are fresher.
    let fresh = state.heartbeats.fresh(nodes.iter().map(|n| &n.node_id));
    if !fresh.is_empty() {
        let mut by_node: HashMap<NodeId, weft_store::Heartbeat> =
            latest.into_iter().map(|h| (h.node_id, h)).collect();
        for hb in fresh {
            match by_node.get(&hb.node_id) {
                Some(stored) if stored.at >= hb.at => {}
                _ => {
                    by_node.insert(hb.node_id, hb);
                }
            }
        }
        latest = by_node.into_values().collect();
        latest.sort_by_key(|h| h.node_id);
    }
    Ok(crate::telemetry::topology(
        net.name.as_str(),
        &nodes,
        &latest,
        now(),
    ))
}

/// Peers an agent may link to: the network's approved nodes that are up
/// (a heartbeat within three intervals) and said where they listen.
#[utoipa::path(get, path = "/v1/networks/{network}/peers", tag = "nodes",
    params(("network" = String, Path, description = "the network's name")),
    security(("bearer" = [])),
    responses((status = 200, description = "the peers", body = PeerList),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn peers(
    State(state): State<Shared>,
    PathParams(network): PathParams<String>,
) -> Result<axum::Json<PeerList>, Problem> {
    let net = state.served_network(&network).await?;
    let t = current_topology(&state, &net).await?;
    let peers = t
        .nodes
        .into_iter()
        .filter(|n| n.status == "approved" && n.health == "up")
        .filter_map(|n| {
            Some(PeerEndpoint {
                endpoint: n.endpoint?,
                node_id: n.node_id,
            })
        })
        .collect();
    Ok(axum::Json(PeerList {
        network: net.name.to_string(),
        peers,
    }))
}

/// Peers an agent may link to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerList {
    /// The network.
    pub network: String,
    /// Up nodes that gave an endpoint, in node id order.
    pub peers: Vec<PeerEndpoint>,
}

/// A node and where it listens for links.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PeerEndpoint {
    /// The node's id.
    pub node_id: String,
    /// Its UDP address for links.
    pub endpoint: String,
}

/// Nodes and links with their health, as JSON or GraphViz dot.
#[utoipa::path(get, path = "/v1/topology", tag = "telemetry", params(TopologyQuery), security(("bearer" = [])),
    responses((status = 200, description = "the topology (JSON, or text/vnd.graphviz with format=dot)", body = Topology),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn topology(
    State(state): State<Shared>,
    QueryParams(q): QueryParams<TopologyQuery>,
) -> Result<Response, Problem> {
    let dot = match q.format.as_deref() {
        None | Some("json") => false,
        Some("dot") => true,
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "format {:?} is not known; use json or dot",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    let net = match &q.network {
        Some(name) => state.served_network(name).await?,
        None => state.network.clone(),
    };
    let t = current_topology(&state, &net).await?;
    if dot {
        let mut response = crate::telemetry::to_dot(&t).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/vnd.graphviz; charset=utf-8"),
        );
        Ok(response)
    } else {
        Ok(axum::Json(t).into_response())
    }
}

// ----------------------------------------------------------------- policies

/// Which policy version to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PolicyQuery {
    /// A version (default: the latest).
    pub version: Option<u32>,
}

fn policy_view(net: &Network, p: &weft_store::Policy) -> Result<PolicyView, Problem> {
    let document: PolicyDocument = serde_json::from_str(&p.document).map_err(|e| {
        Problem::internal(format!(
            "stored policy version {} of network {} does not parse: {e}",
            p.version, net.name
        ))
    })?;
    Ok(PolicyView {
        network: net.name.as_str().to_owned(),
        version: p.version,
        author: p.author.clone(),
        created_at: rfc3339(p.created_at),
        document,
    })
}

/// Stores a policy document as the network's next version, publishes it.
#[utoipa::path(put, path = "/v1/networks/{network}/policy", tag = "policy",
    params(("network" = String, Path, description = "the network's name")),
    request_body = PutPolicy, security(("bearer" = [])),
    responses((status = 200, description = "stored as the next version", body = PolicyView),
        (status = 400, description = "invalid document (the path of the problem is in the detail)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "based on a stale version", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn put_policy(
    State(state): State<Shared>,
    Extension(identity): Extension<Identity>,
    PathParams(network): PathParams<String>,
    JsonBody(req): JsonBody<PutPolicy>,
) -> Result<Response, Problem> {
    let net = state.served_network(&network).await?;
    let note = AuditNote {
        target: Some(format!("policy:{}", net.name)),
        network_id: Some(net.id),
        ..AuditNote::default()
    };
    req.document
        .check(&net.trust_domain)
        .map_err(|e| Problem::bad_request(format!("invalid policy: {e}")).with_note(&note))?;
    let document = serde_json::to_string(&req.document).map_err(|e| {
        Problem::internal(format!("cannot encode the policy: {e}")).with_note(&note)
    })?;
    let stored = state
        .store
        .put_policy(
            weft_store::NewPolicy {
                network_id: net.id,
                document,
                author: identity.actor(),
                base_version: req.base_version,
            },
            now(),
        )
        .await
        .map_err(|e| Problem::from(e).with_note(&note))?;
    let view = policy_view(&net, &stored)?;
    let published = state
        .publish(
            &format!("weft.policy.{}", net.name),
            crate::app::POLICY_EVENT,
            serde_json::to_value(&view).unwrap_or_default(),
        )
        .await;
    let note = AuditNote {
        detail: format!(
            "version {}, {} rule(s){}",
            view.version,
            view.document.rules.len(),
            if published {
                ""
            } else {
                " (not published on the bus: see the logs)"
            }
        ),
        ..note
    };
    Ok(respond(StatusCode::OK, &view, note))
}

/// A policy version (the latest by default), for agents (mTLS) and viewers.
#[utoipa::path(get, path = "/v1/networks/{network}/policy", tag = "policy",
    params(("network" = String, Path, description = "the network's name"), PolicyQuery), security(("bearer" = [])),
    responses((status = 200, description = "the policy", body = PolicyView),
        (status = 404, description = "no policy yet, or no such version", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn get_policy(
    State(state): State<Shared>,
    PathParams(network): PathParams<String>,
    QueryParams(q): QueryParams<PolicyQuery>,
) -> Result<axum::Json<PolicyView>, Problem> {
    let net = state.served_network(&network).await?;
    let p = state
        .store
        .get_policy(net.id, q.version)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => Problem::not_found(match q.version {
                Some(v) => format!("network {} has no policy version {v}", net.name),
                None => format!(
                    "network {} has no policy yet; an operator sets one with weft policy set",
                    net.name
                ),
            }),
            other => other.into(),
        })?;
    Ok(axum::Json(policy_view(&net, &p)?))
}

/// A network's policy versions, newest first.
#[utoipa::path(get, path = "/v1/networks/{network}/policies", tag = "policy",
    params(("network" = String, Path, description = "the network's name"), PageQuery), security(("bearer" = [])),
    responses((status = 200, description = "a page of versions", body = PolicyPage),
        (status = "4XX", description = "refused", body = ProblemBody, content_type = "application/problem+json")))]
pub async fn list_policies(
    State(state): State<Shared>,
    PathParams(network): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<axum::Json<PolicyPage>, Problem> {
    let net = state.served_network(&network).await?;
    let page = state
        .store
        .list_policies(net.id, page_request(q.limit, q.cursor.as_deref())?)
        .await?;
    Ok(axum::Json(PolicyPage {
        items: page
            .items
            .iter()
            .map(|p| PolicySummaryView {
                version: p.version,
                author: p.author.clone(),
                created_at: rfc3339(p.created_at),
                size: p.size,
            })
            .collect(),
        next: page.next.map(|c| c.as_str().to_owned()),
    }))
}
