//! What can be wrong with a vote, and how each problem maps to an HTTP status.

/// A rejected vote. Every variant says which field (if any) is at fault, so clients
/// get `{"error": "...", "field": "..."}` instead of a bare status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    /// The body is over [`crate::MAX_BODY_BYTES`]. → 413
    #[error("body is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// Not JSON, not an object, or a field of the wrong type. → 400
    #[error("{message}")]
    Malformed {
        field: Option<String>,
        message: String,
    },
    /// Well-formed, but not a valid vote: unknown or missing field, not on the
    /// ballot, wrong year, rank out of range. → 422
    #[error("{message}")]
    Invalid { field: String, message: String },
}

impl VoteError {
    pub(crate) fn malformed(field: Option<&str>, message: impl Into<String>) -> Self {
        VoteError::Malformed {
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        VoteError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The HTTP status both producers answer with.
    pub fn status(&self) -> u16 {
        match self {
            VoteError::TooLarge { .. } => 413,
            VoteError::Malformed { .. } => 400,
            VoteError::Invalid { .. } => 422,
        }
    }

    /// The offending field, when the problem is one field's.
    pub fn field(&self) -> Option<&str> {
        match self {
            VoteError::TooLarge { .. } => None,
            VoteError::Malformed { field, .. } => field.as_deref(),
            VoteError::Invalid { field, .. } => Some(field),
        }
    }

    /// The response body: `{"error": "...", "field": "..." | null}`.
    pub fn body_json(&self) -> String {
        serde_json::json!({ "error": self.to_string(), "field": self.field() }).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_http_contract() {
        let too_large = VoteError::TooLarge { size: 2, limit: 1 };
        assert_eq!(too_large.status(), 413);
        assert_eq!(VoteError::malformed(None, "x").status(), 400);
        assert_eq!(VoteError::invalid("rank", "x").status(), 422);
    }

    #[test]
    fn body_names_the_field_or_null() {
        let e = VoteError::invalid("rank", "rank must be between 1 and 10, got 11");
        assert_eq!(
            e.body_json(),
            r#"{"error":"rank must be between 1 and 10, got 11","field":"rank"}"#
        );
        let e = VoteError::malformed(None, "not JSON");
        assert_eq!(e.body_json(), r#"{"error":"not JSON","field":null}"#);
    }
}
