//! `urna-host`: the Wasm producer. Settings from `URNA_*` variables (see `Settings`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    urna_host::run_from_env().await
}
