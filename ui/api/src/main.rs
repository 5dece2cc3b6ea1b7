//! `urna-api`: the logs/results API and the web app. Settings: `URNA_*` variables (see
//! `urna_ui_api::Settings`), or a TOML file named by `URNA_CONFIG`; `PORT` (Cloud Run)
//! overrides the port of `URNA_LISTEN`.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    urna_common::telemetry::init_tracing();
    let mut settings: urna_ui_api::Settings =
        urna_common::config::load().context("loading settings")?;
    if let Ok(port) = std::env::var("PORT") {
        let port: u16 = port.parse().context("PORT is not a port number")?;
        settings.listen.set_port(port);
    }
    // Bound before anything else, so a test can pass port 0 and read the address back.
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let shutdown = urna_common::shutdown::on_signal();
    urna_ui_api::run(settings, listener, shutdown).await
}
