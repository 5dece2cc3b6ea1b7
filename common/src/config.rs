//! Layered settings: struct defaults, then a TOML file named by `URNA_CONFIG` (if set),
//! then environment variables `URNA_<FIELD>` (e.g. `URNA_KAFKA_BROKERS`). Settings
//! structs are flat so every field has exactly one obvious variable name.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Serialize, de::DeserializeOwned};

/// Loads `T` from its defaults, the optional `URNA_CONFIG` file and `URNA_*` variables.
pub fn load<T: Serialize + DeserializeOwned + Default>() -> Result<T, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = std::env::var_os("URNA_CONFIG") {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed("URNA_").ignore(&["config"]))
        .extract()
        .map_err(Box::new)
}

/// A setting that cannot work, named by its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct ConfigError(pub String);

/// One link of a deadline chain: the stage that waits (`outer`, e.g.
/// `URNA_REQUEST_TIMEOUT_MS`) must give the stage it waits for (`inner`, e.g.
/// `URNA_KAFKA_DELIVERY_TIMEOUT_MS`) its whole timeout plus `margin`, so the inner stage
/// always answers first. Each pair is `(variable name, milliseconds)`.
pub fn require_longer(
    outer: (&str, u64),
    inner: (&str, u64),
    margin_ms: u64,
    why: &str,
) -> Result<(), ConfigError> {
    let (outer_name, outer_ms) = outer;
    let (inner_name, inner_ms) = inner;
    if outer_ms > inner_ms.saturating_add(margin_ms) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{outer_name}={outer_ms} must be longer than {inner_name}={inner_ms} plus \
             {margin_ms} ms: {why}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_link_needs_the_inner_timeout_plus_the_margin() {
        let why = "so the inner stage answers first";
        assert_eq!(
            require_longer(("A", 2_001), ("B", 1_000), 1_000, why),
            Ok(())
        );
        let err = require_longer(("A", 2_000), ("B", 1_000), 1_000, why).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid settings: A=2000 must be longer than B=1000 plus 1000 ms: so the inner \
             stage answers first"
        );
        assert!(require_longer(("A", 5), ("B", u64::MAX), 1, why).is_err());
    }
}
