//! Serving a router over HTTP/1.1 so that slow or stalled clients cannot pin the process:
//!
//! - at most `URNA_MAX_CONNECTIONS` connections are open at once (a semaphore, as in
//!   mini-redis): when all are taken the server stops accepting and new connections wait
//!   in the kernel's backlog instead of costing memory and file descriptors;
//! - a connection must deliver a request's headers within `URNA_HEADER_READ_TIMEOUT_MS`
//!   of the server starting to wait for them (on a new connection and between keep-alive
//!   requests alike), or it is closed — so an idle or stalled connection gives its slot
//!   back;
//! - bodies have their own deadline, enforced where they are read
//!   ([`crate::producer_http`]).
//!
//! HTTP/1.1 only: every client of the producer API (browsers, curl, Locust, wrk) speaks
//! it, and hyper's header deadline exists for HTTP/1 connections.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The limits a server applies to its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a connection has to deliver one request's headers.
    pub header_read_timeout: Duration,
}

/// Serves `router` on an already-bound listener until `shutdown`; then stops accepting,
/// lets the requests in flight finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: wait a
                    // little rather than spin, then go on serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _slot = permit;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
