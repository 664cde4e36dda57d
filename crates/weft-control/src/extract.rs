//! axum's extractors with their rejections turned into problem details.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// A JSON body (`Content-Type: application/json`, within the size limit).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        JsonWithText::from_request(req, state)
            .await
            .map(|body| JsonBody(body.value))
    }
}

/// A JSON body and, when it came as plain `application/json`, its text:
/// for a handler that keeps what the client sent (once checked) rather
/// than encoding the value again.
#[derive(Debug)]
pub struct JsonWithText<T> {
    /// The value.
    pub value: T,
    /// The body as received, valid JSON for `value`; `None` for other
    /// JSON media types (`+json`, parameters), which axum reads.
    pub text: Option<Bytes>,
}

impl<S, T> FromRequest<S> for JsonWithText<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let plain_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"));
        if !plain_json {
            // Other media types (`+json`, parameters, none) are judged
            // and refused exactly as axum's extractor does.
            return Json::<T>::from_request(req, state)
                .await
                .map(|Json(value)| JsonWithText { value, text: None })
                .map_err(Problem::from);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| Problem::from(JsonRejection::from(e)))?;
        // Plain serde_json first: axum's extractor tracks the JSON path
        // of every value it reads (serde_path_to_error), which costs
        // allocations on every request for a path that only a refusal
        // needs. A body that fails is read again the tracked way, so the
        // refusal still names the field.
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(JsonWithText {
                value,
                text: Some(bytes),
            }),
            Err(_) => Json::<T>::from_bytes(&bytes)
                .map(|Json(value)| JsonWithText {
                    value,
                    text: Some(bytes),
                })
                .map_err(Problem::from),
        }
    }
}

/// Query parameters.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(Problem::from)
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| PathParams(v))
            .map_err(Problem::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Link {
        up: bool,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Report {
        links: Vec<Link>,
    }

    async fn extract(content_type: Option<&str>, body: &str) -> Result<JsonBody<Report>, Problem> {
        let mut builder = axum::http::Request::builder().method("POST").uri("/");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let req = builder
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        JsonBody::<Report>::from_request(req, &()).await
    }

    #[tokio::test]
    async fn bodies_are_read_and_refusals_name_the_field() {
        let ok = extract(Some("application/json"), r#"{"links":[{"up":true}]}"#)
            .await
            .unwrap();
        assert!(ok.0.links[0].up);
        // Other JSON media types go through axum's extractor.
        let ok = extract(
            Some("application/json; charset=utf-8"),
            r#"{"links":[{"up":false}]}"#,
        )
        .await
        .unwrap();
        assert!(!ok.0.links[0].up);

        let bad = extract(
            Some("application/json"),
            r#"{"links":[{"up":true},{"up":"yes"}]}"#,
        )
        .await
        .unwrap_err();
        assert_eq!(bad.status, 422);
        assert!(bad.detail.contains("links[1].up"), "{}", bad.detail);

        let bad = extract(Some("APPLICATION/JSON"), r#"{"links":[{"up":true,"x":1}]}"#)
            .await
            .unwrap_err();
        assert_eq!(bad.status, 422);
        assert!(bad.detail.contains("links[0]"), "{}", bad.detail);

        let bad = extract(Some("application/json"), r#"{"links": ["#)
            .await
            .unwrap_err();
        assert_eq!(bad.status, 400);
        assert!(bad.detail.contains("not valid JSON"), "{}", bad.detail);

        let bad = extract(Some("text/plain"), r#"{"links":[]}"#)
            .await
            .unwrap_err();
        assert_eq!(bad.status, 415);
        let bad = extract(None, r#"{"links":[]}"#).await.unwrap_err();
        assert_eq!(bad.status, 415);
    }

    #[tokio::test]
    async fn plain_json_bodies_keep_their_text() {
        let with_text = |content_type: &'static str, body: &'static str| async move {
            let req = axum::http::Request::builder()
                .method("POST")
                .uri("/")
                .header(header::CONTENT_TYPE, content_type)
                .body(axum::body::Body::from(body))
                .unwrap();
            JsonWithText::<Report>::from_request(req, &()).await
        };
        let body = r#"{ "links": [ {"up": true} ] }"#;
        let got = with_text("application/json", body).await.unwrap();
        assert!(got.value.links[0].up);
        assert_eq!(got.text.as_deref(), Some(body.as_bytes()));
        // axum reads the other media types; their text is not kept.
        let got = with_text("application/json; charset=utf-8", body)
            .await
            .unwrap();
        assert!(got.value.links[0].up);
        assert!(got.text.is_none());
        let bad = with_text("application/json", r#"{"links":[{"up":1}]}"#)
            .await
            .unwrap_err();
        assert!(bad.detail.contains("links[0].up"), "{}", bad.detail);
    }
}
