//! What the host's benches share.

use std::path::PathBuf;

/// The vote module the benches load: `URNA_MODULE_DIR`, else the workspace's `make modules` output.
pub fn module_path() -> PathBuf {
    std::env::var_os("URNA_MODULE_DIR")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm"),
            PathBuf::from,
        )
        .join(urna_host::MODULE_FILE)
}
