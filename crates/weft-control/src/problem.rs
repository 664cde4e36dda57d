//! RFC 9457 problem details: every error the API returns is an
//! `application/problem+json` object whose `detail` says what was wrong,
//! with the value, and what to do.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use weft_store::StoreError;

use crate::app::AuditNote;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Longest `detail` sent (longer ones are cut at a character boundary).
const MAX_DETAIL_LEN: usize = 2048;

/// A problem details object (RFC 9457).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProblemBody {
    /// A URI naming the kind of problem (`urn:weft:problem:<slug>`).
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What exactly was wrong in this request, and what to do.
    pub detail: String,
}

/// An error response: a status, a problem kind, a detail, and extra
/// headers (`WWW-Authenticate`, `Retry-After`, `Allow`).
#[derive(Debug, Clone)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// The problem kind's slug (`token-invalid`, `not-found`, ...).
    pub slug: &'static str,
    /// What was wrong, and what to do.
    pub detail: String,
    /// Headers to add to the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What the audit trail should record beyond the request.
    pub note: Option<Box<AuditNote>>,
}

impl Problem {
    /// A problem of `status` and kind `slug`.
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            slug,
            detail: detail.into(),
            headers: Vec::new(),
            note: None,
        }
    }

    /// Attaches an audit note.
    pub fn with_note(mut self, note: &AuditNote) -> Self {
        self.note = Some(Box::new(note.clone()));
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 400: the request is malformed or breaks a rule.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", detail)
    }

    /// 401: no or bad credentials; says which scheme to use.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"weft\""),
        )
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 500: a fault of the server; the detail says which.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// 503: a dependency (database, bus) is unavailable.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// The body as sent.
    pub fn body(&self) -> ProblemBody {
        let mut detail = self.detail.clone();
        if detail.len() > MAX_DETAIL_LEN {
            let mut cut = MAX_DETAIL_LEN;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        ProblemBody {
            problem_type: format!("urn:weft:problem:{}", self.slug),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.slug, self.detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
            .extensions_mut()
            .insert(ProblemMarker(self.detail.chars().take(512).collect()));
        if let Some(note) = self.note {
            response.extensions_mut().insert(*note);
        }
        response
    }
}

/// Put on responses that already carry problem details (so the fallback
/// layer leaves them alone); holds the start of the detail for the audit
/// trail.
#[derive(Debug, Clone)]
pub struct ProblemMarker(pub String);

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        let detail = e.to_string();
        match e {
            StoreError::NotFound { .. } => Problem::not_found(detail),
            StoreError::Conflict { .. } => Problem::conflict(detail),
            StoreError::InvalidInput { .. } => Problem::bad_request(detail),
            StoreError::TokenInvalid { .. } => {
                Problem::new(StatusCode::UNAUTHORIZED, "token-invalid", detail)
            }
            StoreError::TokenExpired { .. } => {
                Problem::new(StatusCode::UNAUTHORIZED, "token-expired", detail)
            }
            StoreError::TokenRevoked { .. } => {
                Problem::new(StatusCode::UNAUTHORIZED, "token-revoked", detail)
            }
            StoreError::TokenExhausted { .. } => {
                Problem::new(StatusCode::CONFLICT, "token-exhausted", detail)
            }
            StoreError::NodeState { .. } => {
                Problem::new(StatusCode::CONFLICT, "node-state", detail)
            }
            StoreError::Corrupt { .. } | StoreError::Migration { .. } => {
                tracing::error!(error = %detail, "store failure");
                Problem::internal(detail)
            }
            StoreError::Location { .. } | StoreError::Database { .. } => {
                tracing::error!(error = %detail, "database unavailable");
                Problem::unavailable(detail)
            }
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "the request body must be JSON: send Content-Type: application/json",
            ),
            JsonRejection::JsonSyntaxError(e) => Problem::bad_request(format!(
                "the request body is not valid JSON: {}",
                source_text(&e)
            )),
            JsonRejection::JsonDataError(e) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                format!(
                    "the request body does not match the expected shape: {}",
                    source_text(&e)
                ),
            ),
            JsonRejection::BytesRejection(e) => body_read_problem(e.status(), &e.body_text()),
            other => Problem::bad_request(other.body_text()),
        }
    }
}

/// The innermost error message of a rejection (serde's message with its
/// line and column, or the JSON path).
fn source_text(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        last = s.to_string();
        cur = s.source();
    }
    last
}

/// A body that could not be read: too large or cut off.
pub(crate) fn body_read_problem(status: StatusCode, text: &str) -> Problem {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the request body is larger than this server accepts; send a smaller body",
        )
    } else {
        Problem::bad_request(format!("the request body could not be read: {text}"))
    }
}

impl From<QueryRejection> for Problem {
    fn from(r: QueryRejection) -> Self {
        Problem::bad_request(format!("bad query string: {}", source_text(&r)))
    }
}

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Self {
        Problem::bad_request(format!("bad path parameter: {}", source_text(&r)))
    }
}
