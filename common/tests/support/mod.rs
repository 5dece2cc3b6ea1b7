//! The producer HTTP API served in this process on a port-0 listener, over any backend.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses what it needs

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use urna_common::producer_http::{self, HttpSettings, VoteBackend};

/// A valid vote.
pub const VOTE: &str = r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#;

/// A running app; stops when dropped.
pub struct App {
    pub addr: SocketAddr,
    pub base: String,
    _shutdown: DropGuard,
}

/// Serves the shared router over `backend` exactly as the producers do.
pub async fn start<B: VoteBackend>(backend: B, settings: HttpSettings) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = producer_http::router(
        Arc::new(backend),
        settings.clone(),
        urna_common::telemetry::metrics(),
    );
    let shutdown = CancellationToken::new();
    let serving = shutdown.clone();
    tokio::spawn(async move { producer_http::serve(listener, router, &settings, serving).await });
    App {
        addr,
        base: format!("http://{addr}"),
        _shutdown: shutdown.drop_guard(),
    }
}
