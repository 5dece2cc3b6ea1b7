//! Vote function names. A producer serves the function `default` on `POST /votes`; the
//! Wasm producer serves every other deployed function on `POST /functions/{name}/votes`.
//! A name is parsed at the edge, so the rest of the code only meets valid ones.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The function behind `POST /votes`.
pub const DEFAULT_FUNCTION: &str = "default";

/// The longest function name.
pub const MAX_FUNCTION_NAME: usize = 32;

/// A function name: 1–32 of `[a-z0-9-]`, starting with a letter, not ending with `-`
/// (it is a URL path segment, a Redis key part and a metric label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(Arc<str>);

impl FunctionName {
    pub fn parse(name: &str) -> Result<FunctionName, String> {
        let valid = !name.is_empty()
            && name.len() <= MAX_FUNCTION_NAME
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(FunctionName(name.into()))
        } else {
            Err(format!(
                "function name {:?} is not 1-{MAX_FUNCTION_NAME} of [a-z0-9-] starting with a \
                 letter and not ending with '-'",
                name.chars().take(MAX_FUNCTION_NAME + 8).collect::<String>()
            ))
        }
    }

    /// `default`, the function of `POST /votes`.
    pub fn default_function() -> FunctionName {
        FunctionName(DEFAULT_FUNCTION.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        &*self.0 == DEFAULT_FUNCTION
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for FunctionName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        FunctionName::parse(&s)
    }
}

impl From<FunctionName> for String {
    fn from(n: FunctionName) -> String {
        n.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_url_and_key_safe() {
        for ok in ["default", "a", "vote-go", "v2", &"a".repeat(32)] {
            assert_eq!(FunctionName::parse(ok).expect(ok).as_str(), ok);
        }
        for bad in [
            "",
            "Default",
            "1st",
            "-a",
            "a-",
            "a_b",
            "a/b",
            "a b",
            "ä",
            &"a".repeat(33),
        ] {
            assert!(FunctionName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(FunctionName::default_function().is_default());
    }
}
