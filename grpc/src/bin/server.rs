//! `urna-grpc-server`: the vote service over gRPC (settings: `urna_grpc::settings::ServerSettings`).

use anyhow::Context;
use tokio::net::TcpListener;
use urna_common::{config, shutdown, telemetry};
use urna_grpc::settings::ServerSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let settings: ServerSettings = config::load()?;
    let shutdown = shutdown::on_signal();
    let grpc = TcpListener::bind(&settings.grpc_listen)
        .await
        .with_context(|| format!("binding URNA_GRPC_LISTEN={}", settings.grpc_listen))?;
    let metrics = if settings.metrics_listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&settings.metrics_listen)
                .await
                .with_context(|| {
                    format!("binding URNA_METRICS_LISTEN={}", settings.metrics_listen)
                })?,
        )
    };
    urna_grpc::server::run(settings, grpc, metrics, shutdown).await
}
