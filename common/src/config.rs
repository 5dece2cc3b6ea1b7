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
