//! The OpenAPI 3.1 document, generated from the handlers' annotations
//! (utoipa) and served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;
use crate::handlers;
use crate::problem::ProblemBody;

/// Adds the bearer scheme operators' API tokens use.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("weft API token (weft_api_<id>_<secret>)")
                    .build(),
            ),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "weft control plane",
        description = "Enrollment, X.509-SVIDs, revocation, API tokens and audit of a weft mesh. HTTPS only (TLS 1.3, X25519MLKEM768). Errors are RFC 9457 problem details (application/problem+json).",
    ),
    paths(
        handlers::health,
        handlers::ready,
        handlers::openapi,
        handlers::metrics,
        handlers::list_audit,
        handlers::create_join_token,
        handlers::list_join_tokens,
        handlers::revocations,
        handlers::members,
        handlers::peers,
        handlers::create_network,
        handlers::list_networks,
        handlers::enroll,
        handlers::claim,
        handlers::renew,
        handlers::list_nodes,
        handlers::get_node,
        handlers::approve_node,
        handlers::revoke_node,
        handlers::heartbeat,
        handlers::topology,
        handlers::put_policy,
        handlers::get_policy,
        handlers::list_policies,
        handlers::create_api_token,
        handlers::list_api_tokens,
        handlers::revoke_api_token,
    ),
    components(schemas(
        ProblemBody,
        api::Health,
        api::Ready,
        api::CreateJoinToken,
        api::CreatedJoinToken,
        api::JoinTokenView,
        api::JoinTokenPage,
        api::EnrollRequest,
        api::ClaimRequest,
        api::EnrollResponse,
        api::MeshSettings,
        api::RenewResponse,
        api::NodeView,
        api::NodePage,
        api::RevokeRequest,
        api::RevokeResponse,
        api::RevocationListView,
        api::RevocationEntry,
        api::NetworkFile,
        api::CreateNetwork,
        api::NetworkView,
        api::NetworkPage,
        api::NetworkFileNode,
        handlers::PeerList,
        handlers::PeerEndpoint,
        api::AuditView,
        api::AuditPage,
        api::CreateApiToken,
        api::CreatedApiToken,
        api::ApiTokenView,
        api::ApiTokenPage,
        handlers::HeartbeatAck,
        crate::telemetry::HeartbeatRequest,
        crate::telemetry::LinkReport,
        crate::telemetry::Topology,
        crate::telemetry::TopologyNode,
        crate::telemetry::TopologyLink,
        crate::policy::PolicyDocument,
        crate::policy::Rule,
        crate::policy::Action,
        crate::policy::Protocol,
        crate::policy::PutPolicy,
        crate::policy::PolicyView,
        crate::policy::PolicySummaryView,
        crate::policy::PolicyPage,
    )),
    modifiers(&Bearer),
    tags(
        (name = "service", description = "Health, readiness, metrics, this document"),
        (name = "enrollment", description = "Join tokens, enrollment, SVID claims and renewal"),
        (name = "nodes", description = "Nodes, approval and revocation"),
        (name = "networks", description = "Networks (trust domains)"),
        (name = "audit", description = "The audit trail"),
        (name = "api-tokens", description = "Operators' API tokens"),
        (name = "telemetry", description = "Heartbeats and the topology"),
        (name = "policy", description = "Versioned ACL policies"),
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = ApiDoc::openapi();
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in json["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = crate::app::ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
