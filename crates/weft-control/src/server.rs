//! The HTTPS server: an accept loop over tokio-rustls and hyper-util
//! (HTTP/1.1 and HTTP/2 by ALPN), with a connection limit, handshake and
//! header timeouts, the negotiated key exchange checked and counted per
//! connection, and graceful shutdown that lets in-flight requests finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::LazyConfigAcceptor;
use tower::ServiceExt as _;

use crate::app::ConnInfo;
use crate::metrics::Metrics;
use crate::tls::{CertChoice, TlsConfigs, group_name, is_post_quantum};

/// Settings of the accept loop.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest TLS handshake, and longest wait for a request's headers.
    pub handshake_timeout: Duration,
    /// Most connections at once.
    pub max_connections: usize,
    /// Longest wait for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `stop` turns true, then stops
/// accepting, lets open connections finish their requests (up to the
/// grace period) and returns.
pub async fn serve(
    listener: TcpListener,
    tls: TlsConfigs,
    app: Router,
    metrics: Metrics,
    options: ServeOptions,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    loop {
        if *stop.borrow() {
            break;
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let app = app.clone();
        let metrics = metrics.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.connection_opened();
            serve_connection(tcp, peer, tls, app, &metrics, &options, watcher).await;
            metrics.connection_closed();
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; finishing in-flight requests"
    );
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?options.shutdown_grace,
            "connections still open after the grace period; closing them"
        );
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsConfigs,
    app: Router,
    metrics: &Metrics,
    options: &ServeOptions,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
        let hello = start.client_hello();
        let choice = CertChoice::for_schemes(hello.signature_schemes());
        let config = tls.for_groups(hello.named_groups());
        let stream = start.into_stream(config).await?;
        Ok::<_, std::io::Error>((stream, choice))
    };
    let (stream, choice) = match tokio::time::timeout(options.handshake_timeout, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => {
            metrics.handshake_failed();
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics.handshake_failed();
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let group = session.negotiated_key_exchange_group().map(|g| g.name());
    let group_label = group.map_or_else(|| "none".to_owned(), group_name);
    let classical = !group.is_some_and(is_post_quantum);
    if classical {
        tracing::warn!(
            %peer,
            group = %group_label,
            "TLS handshake negotiated a classical key exchange (allowed by --allow-classical-kex); this connection is not protected against a quantum adversary"
        );
    }
    metrics.handshake(&group_label, choice.label(), classical);
    let client_cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::new(c.clone().into_owned()));
    let info = ConnInfo {
        peer,
        client_svid: client_cert
            .as_deref()
            .map(|c| Arc::new(crate::app::PeerSvid::of(c))),
        client_cert,
        kx_group: group_label.into(),
    };
    let service = app.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        req
    });
    let service = TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.handshake_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(32 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
