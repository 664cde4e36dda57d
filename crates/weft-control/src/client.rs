//! An HTTPS client of the control plane API, used by the `weft` CLI and
//! the tests. It speaks only what weft components speak: TLS 1.3,
//! X25519MLKEM768, ML-DSA-65 server certificates, and it accepts the
//! server only when its certificate is an SVID of the control plane
//! (`spiffe://TD/control`) issued by a CA the caller trusts, given either
//! as a bundle file or as the SHA-256 fingerprint of the ML-DSA-65 root
//! (which the server sends with its chain).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_crypto::svid::{RevokedSerials, SvidVerifier, TrustBundle, Usage};
use weft_crypto::tls::SvidCredentials;

use crate::api::{
    ApiTokenPage, ApiTokenView, AuditPage, ClaimRequest, CreateApiToken, CreateJoinToken,
    CreatedApiToken, CreatedJoinToken, EnrollRequest, EnrollResponse, Health, JoinTokenPage,
    NodePage, NodeView, Ready, RenewResponse, RevocationListView, RevokeRequest, RevokeResponse,
};
use crate::pki::fingerprint;
use crate::problem::ProblemBody;

/// Largest response body read.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Largest network file read (the agent reads up to 256 MiB).
const MAX_MEMBERS_BYTES: usize = 256 * 1024 * 1024;

/// A network file fetched from the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersFile {
    /// Its entity tag: send it back to [`ControlClient::poll_members`].
    pub etag: Option<String>,
    /// The JSON text, as the agent's `network.json`.
    pub json: String,
}
/// Longest control URL accepted.
const MAX_URL_LEN: usize = 2048;

static MLDSA65_ONLY: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[webpki::aws_lc_rs::ML_DSA_65],
    mapping: &[(SignatureScheme::ML_DSA_65, &[webpki::aws_lc_rs::ML_DSA_65])],
};

/// How the client decides that the server is the control plane.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The CA bundle (PEM), e.g. `DATA_DIR/ca/bundle.pem` of the control plane.
    Bundle(Vec<u8>),
    /// `sha256:<hex>` of the ML-DSA-65 root, as `weft control up` prints it.
    Fingerprint(String),
}

impl Trust {
    /// Parses a fingerprint (`sha256:` and 64 hex digits, any case).
    pub fn fingerprint(text: &str) -> Result<Self, ClientError> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::Trust(format!(
                "{:?} is not a CA fingerprint; expected sha256: and 64 hex digits, as printed by weft control up",
                text.chars().take(80).collect::<String>()
            )));
        }
        Ok(Trust::Fingerprint(format!(
            "sha256:{}",
            hex.to_ascii_lowercase()
        )))
    }

    /// Whether `bundle_pem` (from the server) holds the trusted root.
    pub fn accepts_bundle(&self, bundle_pem: &str) -> Result<(), ClientError> {
        let theirs = weft_crypto::svid::certs_from_pem(bundle_pem.as_bytes())
            .map_err(|e| ClientError::Trust(format!("the server's CA bundle: {e}")))?;
        let theirs: Vec<String> = theirs.iter().map(|c| fingerprint(c)).collect();
        let ok = match self {
            Trust::Fingerprint(fp) => theirs.contains(fp),
            Trust::Bundle(pem) => weft_crypto::svid::certs_from_pem(pem)
                .map_err(|e| ClientError::Trust(format!("the trusted CA bundle: {e}")))?
                .iter()
                .any(|c| theirs.contains(&fingerprint(c))),
        };
        if ok {
            Ok(())
        } else {
            Err(ClientError::Trust(
                "the CA bundle the server sent does not hold the trusted CA root".into(),
            ))
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is unusable.
    #[error("bad control plane URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The trust anchor is unusable, or the server is not trusted.
    #[error("{0}")]
    Trust(String),
    /// TLS could not be configured.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server could not be reached or the connection failed.
    #[error("cannot reach the control plane at {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// Why, with every cause.
        reason: String,
    },
    /// The server refused the request with problem details.
    #[error("{status} {}: {}", problem.title, problem.detail)]
    Problem {
        /// The status.
        status: u16,
        /// The problem.
        problem: ProblemBody,
    },
    /// The server answered something unexpected.
    #[error("unexpected answer {status} from {url}: {reason}")]
    Unexpected {
        /// The status.
        status: u16,
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// No answer in time.
    #[error("the control plane at {url} did not answer within {seconds} s")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        seconds: u64,
    },
}

impl ClientError {
    /// The HTTP status of a refusal, if the server answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// A request body as JSON.
fn encode(body: &impl Serialize) -> Result<Vec<u8>, ClientError> {
    // Most requests are small documents: one allocation, not a series of
    // doublings from serde_json's 128 bytes.
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer(&mut out, body)
        .map_err(|e| ClientError::Tls(format!("cannot encode the request: {e}")))?;
    Ok(out)
}

/// An answer: the JSON of a success, else the server's problem details
/// (`url` is written out only for an error).
fn decode<T: DeserializeOwned>(
    status: StatusCode,
    content_type: &str,
    bytes: &[u8],
    url: impl Fn() -> String,
) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Unexpected {
            status: status.as_u16(),
            url: url(),
            reason: format!("the body is not the expected JSON: {e}"),
        });
    }
    Err(refusal(status, content_type, bytes, url))
}

/// The error for an answer that is not a success: the server's problem
/// details, else the start of what it sent.
fn refusal(
    status: StatusCode,
    content_type: &str,
    bytes: &[u8],
    url: impl Fn() -> String,
) -> ClientError {
    match serde_json::from_slice::<ProblemBody>(bytes) {
        Ok(problem) if content_type.starts_with(crate::problem::PROBLEM_JSON) => {
            ClientError::Problem {
                status: status.as_u16(),
                problem,
            }
        }
        _ => ClientError::Unexpected {
            status: status.as_u16(),
            url: url(),
            reason: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
        },
    }
}

/// The TLS stream under a [`Connection`].
type TlsIo = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
/// The hyper connection a [`Connection`] drives.
type Driver = Pin<Box<hyper::client::conn::http1::Connection<TlsIo, Full<Bytes>>>>;

/// One keep-alive HTTP/1.1 connection to the control plane, from
/// [`ControlClient::connect`]: requests go out one at a time, in order.
/// It presents the client's certificate (an agent's SVID) but sends no
/// API token: it serves the agents' routes. It does not reconnect; once
/// it fails, every call fails.
///
/// The connection's I/O is driven by the caller's task during each call
/// rather than by a task of its own: a request then wakes one task, not
/// two handing the request and the answer to each other.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// Polled only while a call is in flight; once an exchange has
    /// failed (the server closed the connection, a timeout), why.
    driver: Result<Driver, String>,
    base: String,
    host: HeaderValue,
    timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Connection {
    async fn call<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &'static str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let Self {
            sender,
            driver,
            base,
            host,
            timeout,
        } = self;
        // Written out only for an error.
        let url = || format!("{base}{path}");
        let connection = match driver {
            Ok(connection) => connection,
            Err(reason) => {
                return Err(ClientError::Transport {
                    url: url(),
                    reason: reason.clone(),
                });
            }
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host.clone())
            .header(header::ACCEPT, HeaderValue::from_static("application/json"));
        let body = match body {
            Some(b) => {
                builder = builder.header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Full::new(Bytes::from(encode(b)?))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body).map_err(|e| ClientError::Url {
            url: url(),
            reason: e.to_string(),
        })?;
        let transport = |e: hyper::Error| ClientError::Transport {
            url: url(),
            reason: causes(&e),
        };
        let exchange = async {
            sender.ready().await.map_err(transport)?;
            let response = sender.send_request(request).await.map_err(transport)?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ClientError::Unexpected {
                    status: parts.status.as_u16(),
                    url: url(),
                    reason: format!("the body could not be read: {e}"),
                })?
                .to_bytes();
            Ok::<_, ClientError>((parts, bytes))
        };
        // The exchange completes only while the connection is polled too.
        let driven = async {
            tokio::select! {
                biased;
                done = exchange => done,
                ended = connection.as_mut() => Err(ClientError::Transport {
                    url: url(),
                    reason: match ended {
                        Ok(()) => "the control plane closed the connection".into(),
                        Err(e) => causes(&e),
                    },
                }),
            }
        };
        let outcome = tokio::time::timeout(*timeout, driven)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url(),
                seconds: timeout.as_secs(),
            })
            .and_then(|r| r);
        let (parts, bytes) = match outcome {
            Ok(answer) => answer,
            Err(error) => {
                // The connection's state is unknown after a failed or
                // cut-short exchange (and a finished driver must not be
                // polled again): later calls fail rather than read a
                // stale answer.
                *driver = Err(error.to_string());
                return Err(error);
            }
        };
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        decode(parts.status, content_type, &bytes, url)
    }

    /// `GET /health`.
    pub async fn health(&mut self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/health", None::<&()>).await
    }

    /// `POST /v1/heartbeat` (needs the client built with the node's SVID).
    pub async fn heartbeat(
        &mut self,
        report: &crate::telemetry::HeartbeatRequest,
    ) -> Result<crate::handlers::HeartbeatAck, ClientError> {
        self.call(Method::POST, "/v1/heartbeat", Some(report)).await
    }
}

fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Accepts the control plane's ML-DSA-65 SVID from a trusted CA.
#[derive(Debug)]
struct ControlVerifier {
    trust: Trust,
    bundle: Option<TrustBundle>,
}

impl ControlVerifier {
    fn new(trust: Trust) -> Result<Self, ClientError> {
        let bundle = match &trust {
            Trust::Bundle(pem) => Some(
                TrustBundle::from_pem(pem)
                    .map_err(|e| ClientError::Trust(format!("the CA bundle: {e}")))?,
            ),
            Trust::Fingerprint(_) => None,
        };
        Ok(Self { trust, bundle })
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let bundle = match (&self.bundle, &self.trust) {
            (Some(b), _) => b.clone(),
            (None, Trust::Fingerprint(fp)) => {
                let root = intermediates
                    .iter()
                    .find(|c| fingerprint(c) == *fp)
                    .ok_or_else(|| {
                        format!(
                            "the server's chain holds no CA certificate with fingerprint {fp}; check --ca-fingerprint"
                        )
                    })?;
                TrustBundle::from_der(vec![root.clone().into_owned()])
                    .map_err(|e| format!("the pinned CA certificate: {e}"))?
            }
            (None, Trust::Bundle(_)) => return Err("no trust bundle".into()),
        };
        let td = bundle.trust_domain().clone();
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let verified = SvidVerifier::new(bundle, RevokedSerials::default())
            .verify(&chain, now, Usage::Server)
            .map_err(|e| format!("the server's certificate: {e}"))?;
        if verified.spiffe_id.path() != "/control" {
            return Err(format!(
                "the server is {}, not the control plane of {td} (spiffe://{td}/control)",
                verified.spiffe_id
            ));
        }
        Ok(())
    }
}

impl ServerCertVerifier for ControlVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The control plane is named by its SPIFFE ID, not the host name.
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &MLDSA65_ONLY)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        MLDSA65_ONLY.supported_schemes()
    }
}

/// A client of one control plane.
#[derive(Clone)]
pub struct ControlClient {
    base: String,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The TLS settings, for [`ControlClient::connect`].
    tls: Arc<ClientConfig>,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs whose value is set.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode_query_value(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

impl ControlClient {
    /// A client of the control plane at `url` (`https://host:port`), trusting
    /// `trust`, presenting `svid` as client certificate if given (agents),
    /// sending `api_token` as bearer token if given (operators).
    pub fn new(
        url: &str,
        trust: Trust,
        svid: Option<SvidCredentials>,
        api_token: Option<String>,
    ) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: url.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        if url.len() > MAX_URL_LEN {
            return Err(bad("longer than 2048 bytes"));
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad(
                "the control plane speaks HTTPS only: use https://HOST:PORT",
            ));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host in the URL"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("give only https://HOST:PORT, without a path"));
        }
        let base = format!("https://{authority}");
        let verifier = Arc::new(ControlVerifier::new(trust)?);
        let builder =
            ClientConfig::builder_with_provider(Arc::new(weft_crypto::tls::pq_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| ClientError::Tls(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
        let mut config = match svid {
            Some(creds) => builder
                .with_client_auth_cert(creds.chain, creds.key)
                .map_err(|e| ClientError::Tls(format!("the SVID cannot be used: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.resumption = rustls::client::Resumption::disabled();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.clone())
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        // `connect` speaks HTTP/1.1: its caller sends one request at a
        // time, so HTTP/2's multiplexing buys nothing, and through hyper
        // each HTTP/2 request cost both ends about 40 % more CPU (a task
        // per stream on the server, flow-control frames, HPACK): with
        // 1000 agents on two cores, GET /health took 180 µs of CPU per
        // request over HTTP/2 and 103 µs over HTTP/1.1. The pooled
        // client keeps HTTP/2 as well: over HTTP/1.1
        // a server refusing an oversized body closes the connection
        // while the body is still being written, and the caller saw a
        // broken pipe instead of the 413 that says why.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = Client::builder(TokioExecutor::new()).build(connector);
        if let Some(t) = &api_token
            && (t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ClientError::Trust(
                "the API token is not a token weft made (visible ASCII, at most 256 characters)"
                    .into(),
            ));
        }
        Ok(Self {
            base,
            http,
            tls: Arc::new(config),
            token: api_token,
            timeout: Duration::from_secs(30),
        })
    }

    /// Opens a connection of its own (TLS handshake included) for a
    /// caller that sends many requests one after another, such as an
    /// agent's heartbeats: its requests skip the pool's checkout, and it
    /// is never raced by a second connection that the pool opens while
    /// the first is still finishing its previous answer.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let transport = |reason: String| ClientError::Transport {
            url: self.base.clone(),
            reason,
        };
        let uri: http::Uri = self
            .base
            .parse()
            .map_err(|e: http::uri::InvalidUri| transport(e.to_string()))?;
        let authority = uri
            .authority()
            .ok_or_else(|| transport("no host in the URL".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(443);
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| transport(format!("the Host header: {e}")))?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| transport(format!("{host:?} is not a server name: {e}")))?;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| transport(causes(&e)))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(server_name, tcp)
                .await
                .map_err(|e| transport(causes(&e)))?;
            hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| transport(causes(&e)))
        };
        let (sender, connection) = tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.base.clone(),
                seconds: self.timeout.as_secs(),
            })??;
        Ok(Connection {
            sender,
            driver: Ok(Box::pin(connection)),
            base: self.base.clone(),
            host: host_header,
            timeout: self.timeout,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the status, content type and body.
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, String, Bytes), ClientError> {
        let (status, headers, bytes) = self
            .request(method, path_and_query, body, &[], MAX_RESPONSE_BYTES)
            .await?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok((status, content_type, bytes))
    }

    /// Sends a request with extra headers, reading at most `max_body`
    /// bytes of the answer; returns the status, headers and body.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        extra_headers: &[(header::HeaderName, String)],
        max_body: usize,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), ClientError> {
        let url = format!("{}{path_and_query}", self.base);
        let mut builder = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::ACCEPT, HeaderValue::from_static("application/json"));
        for (name, value) in extra_headers {
            builder = builder.header(name, value);
        }
        if let Some(t) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                builder = builder.header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body).map_err(|e| ClientError::Url {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let timeout = |url: &str| ClientError::Timeout {
            url: url.to_owned(),
            seconds: self.timeout.as_secs(),
        };
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| timeout(&url))?
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                reason: causes(&e),
            })?;
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let headers = parts.headers;
        let collected = tokio::time::timeout(self.timeout, Limited::new(body, max_body).collect())
            .await
            .map_err(|_| timeout(&url))?
            .map_err(|e| ClientError::Unexpected {
                status: status.as_u16(),
                url: url.clone(),
                reason: format!("the body could not be read: {e}"),
            })?;
        Ok((status, headers, collected.to_bytes()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body.map(encode).transpose()?;
        let (status, content_type, bytes) = self.raw(method, path, body).await?;
        decode(status, &content_type, &bytes, || {
            format!("{}{path}", self.base)
        })
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/health", None::<&()>).await
    }

    /// `GET /ready`.
    pub async fn ready(&self) -> Result<Ready, ClientError> {
        self.call(Method::GET, "/ready", None::<&()>).await
    }

    /// `POST /v1/networks/{network}/join-tokens`.
    pub async fn create_join_token(
        &self,
        network: &str,
        request: &CreateJoinToken,
    ) -> Result<CreatedJoinToken, ClientError> {
        let path = format!("/v1/networks/{}/join-tokens", encode_query_value(network));
        self.call(Method::POST, &path, Some(request)).await
    }

    /// `GET /v1/networks/{network}/join-tokens`.
    pub async fn list_join_tokens(
        &self,
        network: &str,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<JoinTokenPage, ClientError> {
        let path = format!(
            "/v1/networks/{}/join-tokens{}",
            encode_query_value(network),
            query(&[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)])
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.call(Method::POST, "/v1/enroll", Some(request)).await
    }

    /// `POST /v1/enroll/claim`.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<EnrollResponse, ClientError> {
        self.call(Method::POST, "/v1/enroll/claim", Some(request))
            .await
    }

    /// `POST /v1/renew` (needs the client built with the node's SVID).
    pub async fn renew(&self) -> Result<RenewResponse, ClientError> {
        self.call(Method::POST, "/v1/renew", Some(&serde_json::json!({})))
            .await
    }

    /// `GET /v1/nodes`.
    pub async fn list_nodes(
        &self,
        status: Option<String>,
        tag: Option<String>,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<NodePage, ClientError> {
        let path = format!(
            "/v1/nodes{}",
            query(&[
                ("status", status),
                ("tag", tag),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor),
            ])
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn get_node(&self, id: &str) -> Result<NodeView, ClientError> {
        let path = format!("/v1/nodes/{}", encode_query_value(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/nodes/{id}/approve`.
    pub async fn approve_node(&self, id: &str) -> Result<NodeView, ClientError> {
        let path = format!("/v1/nodes/{}/approve", encode_query_value(id));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// `POST /v1/nodes/{id}/revoke`.
    pub async fn revoke_node(&self, id: &str, reason: &str) -> Result<RevokeResponse, ClientError> {
        let path = format!("/v1/nodes/{}/revoke", encode_query_value(id));
        let body = RevokeRequest {
            reason: reason.to_owned(),
        };
        self.call(Method::POST, &path, Some(&body)).await
    }

    /// `GET /v1/networks/{network}/revocations`.
    pub async fn revocations(&self, network: &str) -> Result<RevocationListView, ClientError> {
        let path = format!("/v1/networks/{}/revocations", encode_query_value(network));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/networks`.
    pub async fn create_network(
        &self,
        request: &crate::api::CreateNetwork,
    ) -> Result<crate::api::NetworkView, ClientError> {
        self.call(Method::POST, "/v1/networks", Some(request)).await
    }

    /// `GET /v1/networks`.
    pub async fn list_networks(
        &self,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<crate::api::NetworkPage, ClientError> {
        let path = format!(
            "/v1/networks{}",
            query(&[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)])
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/networks/{network}/members`: the network file's JSON text
    /// (what the agent keeps as `network.json`).
    pub async fn fetch_members(&self, network: &str) -> Result<String, ClientError> {
        match self.poll_members(network, None).await? {
            Some(file) => Ok(file.json),
            None => Err(ClientError::Unexpected {
                status: 304,
                url: format!("{}/v1/networks/{network}/members", self.base),
                reason: "304 Not Modified to a request without If-None-Match".into(),
            }),
        }
    }

    /// `GET /v1/networks/{network}/members` with `If-None-Match: etag`:
    /// `None` while the file is unchanged (304), else the new file and
    /// its entity tag.
    pub async fn poll_members(
        &self,
        network: &str,
        etag: Option<&str>,
    ) -> Result<Option<MembersFile>, ClientError> {
        let path = format!("/v1/networks/{}/members", encode_query_value(network));
        let extra: Vec<(header::HeaderName, String)> = etag
            .map(|e| (header::IF_NONE_MATCH, e.to_owned()))
            .into_iter()
            .collect();
        let (status, headers, bytes) = self
            .request(Method::GET, &path, None, &extra, MAX_MEMBERS_BYTES)
            .await?;
        if status == StatusCode::NOT_MODIFIED && etag.is_some() {
            return Ok(None);
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.check_status(status, content_type, &bytes, &path)?;
        let json = String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Unexpected {
            status: status.as_u16(),
            url: format!("{}{path}", self.base),
            reason: format!("the network file is not UTF-8: {e}"),
        })?;
        Ok(Some(MembersFile {
            etag: headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            json,
        }))
    }

    fn check_status(
        &self,
        status: StatusCode,
        content_type: &str,
        bytes: &[u8],
        path: &str,
    ) -> Result<(), ClientError> {
        if status.is_success() {
            return Ok(());
        }
        Err(refusal(status, content_type, bytes, || {
            format!("{}{path}", self.base)
        }))
    }

    /// `GET /v1/audit` with filters (`actor`, `action`, `target`,
    /// `result`, `since`, `until`, `limit`, `cursor`).
    pub async fn audit(
        &self,
        filters: &[(&str, Option<String>)],
    ) -> Result<AuditPage, ClientError> {
        let path = format!("/v1/audit{}", query(filters));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/api-tokens`.
    pub async fn create_api_token(
        &self,
        request: &CreateApiToken,
    ) -> Result<CreatedApiToken, ClientError> {
        self.call(Method::POST, "/v1/api-tokens", Some(request))
            .await
    }

    /// `GET /v1/api-tokens`.
    pub async fn list_api_tokens(
        &self,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<ApiTokenPage, ClientError> {
        let path = format!(
            "/v1/api-tokens{}",
            query(&[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)])
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/api-tokens/{id}/revoke`.
    pub async fn revoke_api_token(&self, id: &str) -> Result<ApiTokenView, ClientError> {
        let path = format!("/v1/api-tokens/{}/revoke", encode_query_value(id));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// `GET /v1/networks/{network}/peers`: up nodes and where they listen.
    pub async fn peers(&self, network: &str) -> Result<crate::handlers::PeerList, ClientError> {
        let path = format!("/v1/networks/{}/peers", encode_query_value(network));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/heartbeat` (needs the client built with the node's SVID).
    pub async fn heartbeat(
        &self,
        report: &crate::telemetry::HeartbeatRequest,
    ) -> Result<crate::handlers::HeartbeatAck, ClientError> {
        self.call(Method::POST, "/v1/heartbeat", Some(report)).await
    }

    /// `GET /v1/topology` as JSON.
    pub async fn topology(&self) -> Result<crate::telemetry::Topology, ClientError> {
        self.call(Method::GET, "/v1/topology", None::<&()>).await
    }

    /// `GET /v1/topology?format=dot`: GraphViz text.
    pub async fn topology_dot(&self) -> Result<String, ClientError> {
        self.text("/v1/topology?format=dot").await
    }

    /// `PUT /v1/networks/{network}/policy`.
    pub async fn put_policy(
        &self,
        network: &str,
        request: &crate::policy::PutPolicy,
    ) -> Result<crate::policy::PolicyView, ClientError> {
        let path = format!("/v1/networks/{}/policy", encode_query_value(network));
        self.call(Method::PUT, &path, Some(request)).await
    }

    /// `GET /v1/networks/{network}/policy`.
    pub async fn get_policy(
        &self,
        network: &str,
        version: Option<u32>,
    ) -> Result<crate::policy::PolicyView, ClientError> {
        let path = format!(
            "/v1/networks/{}/policy{}",
            encode_query_value(network),
            query(&[("version", version.map(|v| v.to_string()))])
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET /v1/networks/{network}/policies`.
    pub async fn list_policies(
        &self,
        network: &str,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<crate::policy::PolicyPage, ClientError> {
        let path = format!(
            "/v1/networks/{}/policies{}",
            encode_query_value(network),
            query(&[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)])
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    async fn text(&self, path: &str) -> Result<String, ClientError> {
        let (status, content_type, bytes) = self.raw(Method::GET, path, None).await?;
        self.check_status(status, &content_type, &bytes, path)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        self.text("/metrics").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            query(&[("actor", Some("api-token:x y/z".into())), ("b", None)]),
            "?actor=api-token%3Ax%20y%2Fz"
        );
        assert_eq!(query(&[("b", None)]), "");
    }

    #[test]
    fn fingerprints_and_urls_are_checked() {
        assert!(Trust::fingerprint("sha256:00").is_err());
        let fp = format!("sha256:{}", "AB".repeat(32));
        match Trust::fingerprint(&fp) {
            Ok(Trust::Fingerprint(f)) => assert_eq!(f, format!("sha256:{}", "ab".repeat(32))),
            other => panic!("{other:?}"),
        }
        let trust = Trust::Fingerprint(format!("sha256:{}", "0".repeat(64)));
        for bad in ["http://x:1", "https://x:1/v1", "not a url", ""] {
            assert!(
                ControlClient::new(bad, trust.clone(), None, None).is_err(),
                "{bad}"
            );
        }
        assert!(ControlClient::new("https://127.0.0.1:8443", trust, None, None).is_ok());
    }
}
