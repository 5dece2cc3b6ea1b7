//! What every version passes before it can serve, in this order, each failure naming
//! its stage: size limit → (uploads) no native code inside → parse, validate, import
//! allow-list, exports and their signatures, compile, ABI version ([`Runtime::load`]) →
//! the deploy trial in real instances ([`crate::trial`]).

use std::sync::Arc;
use std::time::Instant;

use crate::runtime::{Runtime, VoteModule, WASMEDGE_AOT_SECTION, inspect};

/// A version that passed.
pub struct Checked {
    pub module: Arc<dyn VoteModule>,
    /// `sha256:<hex>` of the bytes.
    pub version: String,
    pub size: u64,
    pub compile_ms: u64,
    pub trial_ms: u64,
}

/// Why a version was refused: the stage and what it found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage}: {reason}")]
pub struct Refused {
    /// `size`, `native_code`, `load` or `trial`.
    pub stage: &'static str,
    pub reason: String,
}

/// Where a module comes from: an upload is untrusted, the host's own module directory
/// is the operator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Upload,
    File,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Upload => "api",
            Origin::File => "file",
        }
    }
}

pub fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Runs the checks on `bytes`. Blocking (compiles, runs the trial): call it off the
/// async workers.
pub fn check(
    runtime: &dyn Runtime,
    bytes: &[u8],
    max_bytes: usize,
    origin: Origin,
    trial: bool,
) -> Result<Checked, Refused> {
    if bytes.len() > max_bytes {
        return Err(Refused {
            stage: "size",
            reason: format!(
                "the module is {} bytes, over the limit of {max_bytes} (URNA_FUNCTION_MAX_MODULE_BYTES)",
                bytes.len()
            ),
        });
    }
    // Native code inside an upload would run outside the sandbox in WasmEdge's AOT mode:
    // an upload must be plain Wasm.
    if origin == Origin::Upload {
        let info = inspect(bytes).map_err(|e| Refused {
            stage: "load",
            reason: e.to_string(),
        })?;
        if info.has_wasmedge_aot {
            return Err(Refused {
                stage: "native_code",
                reason: format!(
                    "the module carries a `{WASMEDGE_AOT_SECTION}` custom section (native code \
                     from `wasmedge compile`); upload the plain .wasm"
                ),
            });
        }
    }
    let started = Instant::now();
    let module = runtime.load(bytes).map_err(|e| Refused {
        stage: "load",
        // One line: some parser errors are multi-line debug dumps.
        reason: e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    })?;
    let compile_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    if trial {
        crate::trial::run(&*module).map_err(|reason| Refused {
            stage: "trial",
            reason,
        })?;
    }
    Ok(Checked {
        module,
        version: version_of(bytes),
        size: bytes.len() as u64,
        compile_ms,
        trial_ms: started.elapsed().as_millis() as u64,
    })
}
