//! The Kafka record: one schema (`protos/urna/v1/vote.proto`) for producers and consumer.

use crate::{Ballot, Vote, VoteError};

mod proto {
    include!(concat!(env!("OUT_DIR"), "/urna.v1.rs"));
}

pub use proto::{Source, VoteRecord};

/// Stamps a valid vote with the producer's id, name and clock.
pub fn accept(vote: &Vote, id: uuid::Uuid, source: Source, accepted_at_micros: i64) -> VoteRecord {
    VoteRecord {
        id: id.hyphenated().to_string(),
        name: vote.band.name.to_owned(),
        album: vote.album.title.to_owned(),
        year: vote.year(),
        rank: u32::from(vote.rank.get()),
        source: source as i32,
        accepted_at_micros,
        ballot_version: vote.ballot_version.to_owned(),
        idempotency_key: String::new(),
        module_version: String::new(),
        function: String::new(),
    }
}

impl Source {
    /// The name used in Redis keys, Mongo documents and JSON (`grpc` / `wasm`).
    pub fn label(self) -> &'static str {
        match self {
            Source::Unspecified => "unspecified",
            Source::Grpc => "grpc",
            Source::Wasm => "wasm",
        }
    }
}

/// Longest band or album name a record may carry (Redis hash fields, Mongo documents).
pub const MAX_NAME_BYTES: usize = 256;
/// Longest ballot version a record may carry.
pub const MAX_BALLOT_VERSION_BYTES: usize = 64;
/// Longest module version a record may carry (`sha256:` and 64 hex digits fit).
pub const MAX_MODULE_VERSION_BYTES: usize = 80;

/// Checks a decoded record's *shape*: what the consumer needs to count and log it
/// safely. It deliberately does not ask whether the band is on the consumer's ballot:
/// a producer already accepted the vote (202) against the ballot named in
/// `ballot_version`, and a second opinion from another build could only dead-letter
/// an accepted vote.
pub fn check_shape(record: &VoteRecord) -> Result<(), VoteError> {
    let id = uuid::Uuid::try_parse(&record.id)
        .map_err(|e| VoteError::invalid("id", format!("id is not a UUID: {e}")))?;
    if id.get_version_num() != 7 {
        return Err(VoteError::invalid("id", "id is not a UUID v7"));
    }
    for (field, value) in [("name", &record.name), ("album", &record.album)] {
        if value.is_empty() || value.len() > MAX_NAME_BYTES {
            return Err(VoteError::invalid(
                field,
                format!("{field} must have 1 to {MAX_NAME_BYTES} bytes"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(VoteError::invalid(
                field,
                format!("{field} has a control character"),
            ));
        }
    }
    // `band|album` is a Redis hash field: a '|' in the band would make two albums collide.
    if record.name.contains('|') {
        return Err(VoteError::invalid("name", "name contains '|'"));
    }
    if !(1..=9999).contains(&record.year) {
        return Err(VoteError::invalid("year", "year out of range"));
    }
    if crate::Rank::new(i64::from(record.rank)).is_none() {
        return Err(VoteError::invalid("rank", "rank out of range"));
    }
    if !matches!(
        Source::try_from(record.source),
        Ok(Source::Grpc | Source::Wasm)
    ) {
        return Err(VoteError::invalid("source", "unknown source"));
    }
    if record.accepted_at_micros <= 0 {
        return Err(VoteError::invalid(
            "accepted_at_micros",
            "no acceptance time",
        ));
    }
    if record.ballot_version.len() > MAX_BALLOT_VERSION_BYTES
        || record.ballot_version.chars().any(char::is_control)
    {
        return Err(VoteError::invalid(
            "ballot_version",
            "ballot version is malformed",
        ));
    }
    if record.module_version.len() > MAX_MODULE_VERSION_BYTES
        || record.module_version.chars().any(char::is_control)
    {
        return Err(VoteError::invalid(
            "module_version",
            "module version is malformed",
        ));
    }
    if !record.function.is_empty() && crate::FunctionName::parse(&record.function).is_err() {
        return Err(VoteError::invalid("function", "function name is malformed"));
    }
    // A record written by a producer carries no key or one that passed the producer's
    // edge; anything else was not written by a producer of this contract.
    if !record.idempotency_key.is_empty() {
        crate::IdempotencyKey::parse(record.idempotency_key.as_bytes())?;
    }
    Ok(())
}

/// Checks a decoded record as strictly as a vote, against `ballot`: what a producer
/// writes passes it (used by the producers' tests, not by the consumer: see
/// [`check_shape`]).
pub fn check_record(record: &VoteRecord, ballot: &Ballot) -> Result<(), VoteError> {
    let id = uuid::Uuid::try_parse(&record.id)
        .map_err(|e| VoteError::invalid("id", format!("id is not a UUID: {e}")))?;
    if id.get_version_num() != 7 {
        return Err(VoteError::invalid("id", "id is not a UUID v7"));
    }
    let band = ballot
        .band(&record.name)
        .filter(|b| b.name == record.name)
        .ok_or_else(|| VoteError::invalid("name", "band is not on the ballot"))?;
    let album = band
        .album(&record.album)
        .filter(|a| a.title == record.album)
        .ok_or_else(|| VoteError::invalid("album", "album is not on the ballot"))?;
    if album.year != record.year {
        return Err(VoteError::invalid("year", "year does not match the ballot"));
    }
    if crate::Rank::new(i64::from(record.rank)).is_none() {
        return Err(VoteError::invalid("rank", "rank out of range"));
    }
    if record.ballot_version != ballot.version() {
        return Err(VoteError::invalid(
            "ballot_version",
            "another ballot judged this record",
        ));
    }
    check_shape(record)
}

/// The JSON view of a record (what the command module prints, what logs show).
pub fn record_json(record: &VoteRecord) -> serde_json::Value {
    let source = Source::try_from(record.source).unwrap_or(Source::Unspecified);
    serde_json::json!({
        "id": record.id,
        "name": record.name,
        "album": record.album,
        "year": record.year,
        "rank": record.rank,
        "source": source.label(),
        "accepted_at": crate::time::rfc3339_micros(record.accepted_at_micros),
        "ballot_version": record.ballot_version,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn sample() -> VoteRecord {
        let vote = crate::parse_vote(
            br#"{"name":"alux nahual","album":"conquista","year":"1982","rank":"7"}"#,
            &Ballot::builtin(),
        )
        .expect("valid");
        let id = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
        accept(&vote, id, Source::Wasm, 1_700_000_000_123_456)
    }

    #[test]
    fn accepted_record_carries_ballot_spelling_and_stamps() {
        let record = sample();
        assert_eq!(record.name, "Alux Nahual");
        assert_eq!(record.album, "Conquista");
        assert_eq!((record.year, record.rank), (1982, 7));
        assert_eq!(record.id, "01900000-0000-7000-8000-000000000001");
        assert_eq!(record.source(), Source::Wasm);
        assert_eq!(check_record(&record, &Ballot::builtin()), Ok(()));
    }

    #[test]
    fn record_round_trips_through_protobuf() {
        let record = sample();
        let decoded = VoteRecord::decode(record.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(decoded, record);
    }

    #[test]
    fn json_view_has_rfc3339_time_and_source_label() {
        let json = record_json(&sample());
        assert_eq!(json["accepted_at"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(json["source"], "wasm");
        assert_eq!(json["year"], 1982);
    }

    #[test]
    fn check_record_rejects_what_no_producer_writes() {
        let ballot = Ballot::builtin();
        let mut r = sample();
        r.rank = 11;
        assert_eq!(
            check_record(&r, &ballot).map_err(|e| e.field().map(str::to_owned)),
            Err(Some("rank".into()))
        );
        let mut r = sample();
        r.name = "alux nahual".into(); // records carry the ballot's spelling only
        assert!(check_record(&r, &ballot).is_err());
        let mut r = sample();
        r.source = 0;
        assert!(check_record(&r, &ballot).is_err());
        let mut r = sample();
        r.id = "not-a-uuid".into();
        assert!(check_record(&r, &ballot).is_err());
    }

    #[test]
    fn accepted_record_carries_the_ballot_version() {
        assert_eq!(sample().ballot_version, Ballot::builtin().version());
    }

    #[test]
    fn shape_check_accepts_bands_of_other_ballots_but_not_broken_records() {
        let field = |r: &VoteRecord| check_shape(r).map_err(|e| e.field().map(str::to_owned));
        // A vote judged by another ballot (a newer module) is still a vote to count.
        let mut r = sample();
        r.name = "Malacates Trébol Shop".into();
        r.album = "Gracias por Volver".into();
        r.year = 2004;
        r.ballot_version = "2+0badc0de".into();
        assert_eq!(field(&r), Ok(()));
        // Records written before ballots were versioned still count.
        r.ballot_version.clear();
        assert_eq!(field(&r), Ok(()));
        type Breakage = (&'static str, fn(&mut VoteRecord));
        let cases: [Breakage; 12] = [
            ("id", |r| {
                r.id = "01900000-0000-4000-8000-000000000001".into()
            }),
            ("name", |r| r.name.clear()),
            ("name", |r| r.name = "A|B".into()),
            ("album", |r| r.album = "x\u{7}".into()),
            ("album", |r| r.album = "a".repeat(MAX_NAME_BYTES + 1)),
            ("year", |r| r.year = 0),
            ("rank", |r| r.rank = 0),
            ("source", |r| r.source = 9),
            ("accepted_at_micros", |r| r.accepted_at_micros = 0),
            ("module_version", |r| {
                r.module_version = "x".repeat(MAX_MODULE_VERSION_BYTES + 1)
            }),
            ("module_version", |r| r.module_version = "sha256:\n".into()),
            ("function", |r| r.function = "Not/A-Name".into()),
        ];
        for (want, break_it) in cases {
            let mut r = sample();
            break_it(&mut r);
            assert_eq!(field(&r), Err(Some(want.to_owned())), "{r:?}");
        }
    }
}
