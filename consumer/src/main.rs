//! `urna-consumer`: one member of the counting group. Settings: `URNA_*` variables
//! (see `urna_consumer::Settings`), or a TOML file named by `URNA_CONFIG`.
//!
//! `urna-consumer reset --yes` deletes the counting state those settings name (Redis
//! counters, offsets and owner; the Mongo logs), so the next member counts again.

use anyhow::Context as _;

const USAGE: &str = "usage: urna-consumer            run a member\n       urna-consumer reset --yes  delete the counting state (counters, offsets, owner, logs)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    urna_common::telemetry::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings: urna_consumer::Settings =
        urna_common::config::load().context("loading settings")?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("binding {}", settings.listen))?;
            let shutdown = urna_common::shutdown::on_signal();
            urna_consumer::run(settings, listener, shutdown).await
        }
        ["reset", "--yes"] => {
            for removed in urna_consumer::reset(&settings).await? {
                println!("removed {removed}");
            }
            Ok(())
        }
        ["reset"] => anyhow::bail!("reset deletes every count and log: confirm with --yes"),
        _ => anyhow::bail!("{USAGE}"),
    }
}
