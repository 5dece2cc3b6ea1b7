//! `urna-host`: the Wasm producer (settings from `URNA_*` variables, see `Settings`);
//! `urna-host functions …`: its admin CLI.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    urna_host::main_from_args().await
}
