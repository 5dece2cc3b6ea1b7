//! The HTTP ceiling: a handler that reads the request body and answers `202 {}`,
//! nothing else. `make bench` drives it with the same load generator, connections and
//! body as the producers, so the gap between the two is urna's own work.
//!
//! ```text
//! http_ceiling <listen address>      # e.g. 127.0.0.1:0; prints "listening on <addr>"
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let app = Router::new().route("/votes", post(accept));
    axum::serve(listener, app).await?;
    Ok(())
}

async fn accept(body: Bytes) -> (StatusCode, &'static str) {
    // The body is read in full, as a producer must before it can decide.
    std::hint::black_box(body);
    (StatusCode::ACCEPTED, "{}")
}
