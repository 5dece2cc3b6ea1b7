//! `urna-consumer`: one member of the counting group. Settings: `URNA_*` variables
//! (see `urna_consumer::Settings`), or a TOML file named by `URNA_CONFIG`.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    urna_common::telemetry::init_tracing();
    let settings: urna_consumer::Settings =
        urna_common::config::load().context("loading settings")?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let shutdown = urna_common::shutdown::on_signal();
    urna_consumer::run(settings, listener, shutdown).await
}
