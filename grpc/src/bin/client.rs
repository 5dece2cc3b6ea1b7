//! `urna-grpc-client`: the HTTP front of the gRPC producer (settings:
//! `urna_grpc::settings::ClientSettings`).

use anyhow::Context;
use tokio::net::TcpListener;
use urna_common::{config, shutdown, telemetry};
use urna_grpc::settings::ClientSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let settings: ClientSettings = config::load()?;
    let shutdown = shutdown::on_signal();
    let listener = TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("binding URNA_LISTEN={}", settings.listen))?;
    urna_grpc::client::run(settings, listener, shutdown).await
}
