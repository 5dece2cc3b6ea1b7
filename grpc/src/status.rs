//! A vote's fate as a gRPC status, and back to the HTTP answer of the producer API.
//!
//! Server side: a [`VoteError`] becomes `INVALID_ARGUMENT` whose message is the logic's
//! sentence and whose details (google.rpc.Status in `grpc-status-details-bin`) hold an
//! `ErrorInfo` (domain [`ERROR_DOMAIN`], metadata `http_status` and `field`) and, when a
//! field is at fault, a `BadRequest` naming it — standard types, so grpcurl shows them.
//! Client side: [`cast_error`] turns any status into the [`CastError`] the shared HTTP
//! router answers with; a rejection's body is rebuilt exactly as
//! [`VoteError::body_json`] writes it, so both producers give the same bytes.

use std::collections::HashMap;

use axum::body::Bytes;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use urna_common::kafka::PublishError;
use urna_common::producer_http::CastError;
use urna_vote::VoteError;

use crate::pb;

/// The `ErrorInfo.domain` of a vote rejection.
pub const ERROR_DOMAIN: &str = "urna.v1";

fn reason(err: &VoteError) -> &'static str {
    match err {
        VoteError::TooLarge { .. } => "VOTE_TOO_LARGE",
        VoteError::Malformed { .. } => "VOTE_MALFORMED",
        VoteError::Invalid { .. } => "VOTE_INVALID",
    }
}

/// The `INVALID_ARGUMENT` status of a vote the logic rejected.
pub fn rejection_status(err: &VoteError) -> Status {
    let message = err.to_string();
    let mut metadata = HashMap::from([("http_status".to_owned(), err.status().to_string())]);
    if let Some(field) = err.field() {
        metadata.insert("field".to_owned(), field.to_owned());
    }
    let mut details = ErrorDetails::with_error_info(reason(err), ERROR_DOMAIN, metadata);
    if let Some(field) = err.field() {
        details.add_bad_request_violation(field, message.clone());
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The rejection of a vote, as `CastStream` reports it per vote.
pub fn rejection(err: &VoteError) -> pb::Rejection {
    pb::Rejection {
        http_status: u32::from(err.status()),
        field: err.field().map(str::to_owned),
        error: err.to_string(),
    }
}

/// The rejection a status carries, if it is one of ours.
pub fn rejection_of(status: &Status) -> Option<pb::Rejection> {
    if status.code() != Code::InvalidArgument {
        return None;
    }
    let info = status.get_details_error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    let http_status = info.metadata.get("http_status")?.parse().ok()?;
    Some(pb::Rejection {
        http_status,
        field: info.metadata.get("field").cloned(),
        error: status.message().to_owned(),
    })
}

/// The HTTP body of a rejection: the same bytes as [`VoteError::body_json`].
pub fn rejection_body(rejection: &pb::Rejection) -> String {
    serde_json::json!({ "error": rejection.error, "field": rejection.field }).to_string()
}

/// The status of a vote Kafka did not take.
pub fn publish_status(err: &PublishError) -> Status {
    match err {
        PublishError::Unavailable(_) => Status::unavailable(err.to_string()),
        PublishError::QueueFull => Status::resource_exhausted(err.to_string()),
    }
}

/// What the HTTP front answers for a failed `Cast`:
/// INVALID_ARGUMENT (ours) → the logic's 400/413/422 and body; UNAVAILABLE,
/// DEADLINE_EXCEEDED and CANCELLED (a deadline expiring on either side; the server
/// going away), and a transport failure of this side (UNKNOWN with a source) → 503 +
/// Retry-After; RESOURCE_EXHAUSTED → 429; anything else → 500.
pub fn cast_error(status: &Status) -> CastError {
    match status.code() {
        Code::InvalidArgument => match rejection_of(status) {
            Some(r) => CastError::Rejected {
                status: u16::try_from(r.http_status).unwrap_or(400),
                body: Bytes::from(rejection_body(&r)),
            },
            None => CastError::Internal(format!(
                "server gave INVALID_ARGUMENT without a vote rejection: {}",
                status.message()
            )),
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            CastError::Unavailable(status.message().to_owned())
        }
        // Not an answer from the server but this side's transport failing mid-call (tonic
        // keeps the error as the source): the server went away, with the vote or
        // without it — the 503 of "A 503 means not written", which a retry with the
        // Idempotency-Key resolves.
        Code::Unknown if std::error::Error::source(status).is_some() => {
            CastError::Unavailable(format!("connection to the vote server lost: {status}"))
        }
        Code::ResourceExhausted => CastError::Overloaded(status.message().to_owned()),
        code => CastError::Internal(format!("gRPC {code:?}: {}", status.message())),
    }
}

/// A low-cardinality label for a status code (metrics).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::InvalidArgument => "invalid_argument",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Cancelled => "cancelled",
        Code::ResourceExhausted => "resource_exhausted",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use urna_vote::{Ballot, parse_vote};

    use super::*;

    /// Every rejection class of the contract, after a trip through real gRPC headers,
    /// gives the same status and body bytes as the vote logic (what the Wasm host sends).
    #[test]
    fn rejections_survive_the_wire_byte_for_byte() {
        let ballot = Ballot::builtin();
        let mut bodies: Vec<Vec<u8>> = urna_testkit::contract::bad_cases()
            .into_iter()
            .filter(|c| {
                c.content_type.is_some_and(|ct| ct == "application/json")
                    && c.idempotency_keys.is_empty()
            })
            .map(|c| c.body)
            .collect();
        // Non-ASCII in the sentence (percent-encoded in grpc-message).
        bodies.push(
            r#"{"name":"Bohemia Suburbana","album":"Sombras en el Jardín","year":1990,"rank":3}"#
                .into(),
        );
        bodies.push(r#"{"námé":1}"#.into());
        bodies.push(b"".to_vec());
        for body in bodies {
            let err = parse_vote(&body, &ballot).expect_err("a bad case");
            let status = rejection_status(&err);
            let wire = status.into_http::<()>();
            let back = Status::from_header_map(wire.headers()).expect("a status");
            match cast_error(&back) {
                CastError::Rejected { status, body } => {
                    assert_eq!(status, err.status());
                    assert_eq!(body, err.body_json().as_bytes(), "{err:?}");
                }
                other => panic!("{err:?} became {other:?}"),
            }
            let r = rejection_of(&back).expect("ours");
            assert_eq!(r, rejection(&err));
            assert_eq!(rejection_body(&r), err.body_json());
        }
    }

    #[test]
    fn a_connection_lost_mid_call_is_a_503_an_unknown_answer_a_500() {
        let lost = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "transport error",
        )));
        assert_eq!(lost.code(), Code::Unknown);
        assert!(matches!(cast_error(&lost), CastError::Unavailable(_)));
        let answered = Status::new(Code::Unknown, "the server said so");
        assert!(matches!(cast_error(&answered), CastError::Internal(_)));
    }

    #[test]
    fn other_codes_map_to_the_contract() {
        let s = |c| cast_error(&Status::new(c, "x"));
        assert!(matches!(s(Code::Unavailable), CastError::Unavailable(_)));
        assert!(matches!(
            s(Code::DeadlineExceeded),
            CastError::Unavailable(_)
        ));
        assert!(matches!(
            s(Code::ResourceExhausted),
            CastError::Overloaded(_)
        ));
        assert!(matches!(s(Code::Internal), CastError::Internal(_)));
        assert!(matches!(s(Code::Unknown), CastError::Internal(_)));
        // INVALID_ARGUMENT that is not a vote rejection is the producer's fault.
        assert!(matches!(s(Code::InvalidArgument), CastError::Internal(_)));
        let unavailable = publish_status(&PublishError::Unavailable("down".into()));
        assert_eq!(unavailable.code(), Code::Unavailable);
        assert_eq!(
            publish_status(&PublishError::QueueFull).code(),
            Code::ResourceExhausted
        );
    }
}
