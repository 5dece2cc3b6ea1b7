//! The `Idempotency-Key` a client may send with a vote so that a retry is not a second
//! vote: 1–64 characters of `[A-Za-z0-9_-]` (a UUID, a ULID or a base64url digest fit).
//! The producers check it at their edge; the consumer checks it again on the record.

use crate::VoteError;

/// Longest key accepted, in bytes (= characters: the alphabet is ASCII).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 64;

/// The HTTP header that carries the key, and the `field` of its errors.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// A key that passed [`IdempotencyKey::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Accepts 1–64 characters of `[A-Za-z0-9_-]`; anything else is a 400 naming the header.
    pub fn parse(raw: &[u8]) -> Result<IdempotencyKey, VoteError> {
        if raw.is_empty() || raw.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(VoteError::malformed(
                Some(IDEMPOTENCY_KEY_HEADER),
                format!(
                    "{IDEMPOTENCY_KEY_HEADER} must have 1 to {MAX_IDEMPOTENCY_KEY_BYTES} characters"
                ),
            ));
        }
        if !raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        {
            return Err(VoteError::malformed(
                Some(IDEMPOTENCY_KEY_HEADER),
                format!("{IDEMPOTENCY_KEY_HEADER} may only contain A-Z, a-z, 0-9, '_' and '-'"),
            ));
        }
        // Checked ASCII above, so this cannot fail.
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    /// The key of a request from its header values: none, or exactly one valid key (two
    /// keys for one vote leave unknowable which one a retry must repeat).
    pub fn from_header_values<'a>(
        mut values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Option<IdempotencyKey>, VoteError> {
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(VoteError::malformed(
                Some(IDEMPOTENCY_KEY_HEADER),
                format!("{IDEMPOTENCY_KEY_HEADER} was sent more than once"),
            ));
        }
        IdempotencyKey::parse(first).map(Some)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet_and_lengths() {
        for ok in [
            "a",
            "0190a3c4-7b1e-7c3d-9f00-000000000001",
            "A_b-9",
            &"k".repeat(64),
        ] {
            assert_eq!(IdempotencyKey::parse(ok.as_bytes()).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn a_request_has_no_key_or_exactly_one() {
        let none: [&[u8]; 0] = [];
        assert_eq!(
            IdempotencyKey::from_header_values(none.into_iter()),
            Ok(None)
        );
        let one = IdempotencyKey::from_header_values([&b"k-1"[..]].into_iter()).unwrap();
        assert_eq!(one.unwrap().as_str(), "k-1");
        let two = IdempotencyKey::from_header_values([&b"k-1"[..], b"k-1"].into_iter());
        assert_eq!(two.unwrap_err().status(), 400);
    }

    #[test]
    fn refuses_anything_else_with_a_400_naming_the_header() {
        let long = "k".repeat(65);
        for bad in [
            &b""[..],
            long.as_bytes(),
            b"has space",
            b"semi;colon",
            b"dot.ted",
            b"slash/",
            b"\xc3\xa9",
            b"tab\t",
            b"nul\0",
        ] {
            let e = IdempotencyKey::parse(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{bad:?}");
            assert!(
                e.body_json().contains("\"field\":\"Idempotency-Key\""),
                "{}",
                e.body_json()
            );
        }
    }
}
