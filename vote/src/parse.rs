//! Bytes → [`Vote`]: every check a vote must pass, in one pass over the body.
//!
//! Order matters for which error a client sees: first everything that makes the body
//! unreadable as a vote (size → 413, syntax and types → 400), then everything that makes
//! a readable vote invalid (unknown or missing field, ballot, year, rank → 422).

use serde_json::{Map, Value};

use crate::ballot::{AlbumEntry, BandEntry};
use crate::{Ballot, VoteError};

/// The largest body a producer accepts (16 KiB).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

const FIELDS: [&str; 4] = ["name", "album", "year", "rank"];

/// A rank from 1 to 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank(u8);

impl Rank {
    pub const MIN: i64 = 1;
    pub const MAX: i64 = 10;

    pub fn new(value: i64) -> Option<Rank> {
        (Self::MIN..=Self::MAX)
            .contains(&value)
            .then_some(Rank(value as u8))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// A valid vote: band and album point into the ballot, so they carry its spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    pub band: &'static BandEntry,
    pub album: &'static AlbumEntry,
    pub rank: Rank,
    /// The version of the ballot that judged this vote ([`Ballot::version`]).
    pub ballot_version: &'static str,
}

impl Vote {
    pub fn year(&self) -> u32 {
        self.album.year
    }
}

/// Parses and validates one vote body against `ballot`.
pub fn parse_vote(body: &[u8], ballot: &Ballot) -> Result<Vote, VoteError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(VoteError::TooLarge {
            size: body.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    let top: TopLevel = serde_json::from_slice(body)
        .map_err(|e| VoteError::malformed(None, format!("body is not valid JSON: {e}")))?;
    let pairs = match top {
        TopLevel::Object(pairs) => pairs,
        TopLevel::Other(kind) => {
            return Err(VoteError::malformed(
                None,
                format!("a vote must be a JSON object, got {kind}"),
            ));
        }
    };
    // A field given twice is ambiguous (parsers disagree on which value wins): refused,
    // not resolved.
    let mut fields = Map::new();
    // The body's order: serde_json's map order depends on a cargo feature (preserve_order)
    // that other crates of a build may turn on, so the map cannot say which came first.
    let order: Vec<String> = pairs.iter().map(|(key, _)| key.clone()).collect();
    for (key, value) in pairs {
        if fields.contains_key(&key) {
            return Err(VoteError::malformed(
                Some(&key),
                format!("field {key:?} appears more than once"),
            ));
        }
        fields.insert(key, value);
    }

    // 400s: the fields that are there must have usable types.
    let name = text_field(&fields, "name")?;
    let album = text_field(&fields, "album")?;
    let year = integer_field(&fields, "year")?;
    let rank = integer_field(&fields, "rank")?;

    // 422s from here on; of several unknown fields, the first in the body.
    if let Some(unknown) = order.iter().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(VoteError::invalid(
            unknown,
            format!("unknown field {unknown:?}; a vote has only name, album, year and rank"),
        ));
    }
    let name = required(name, "name")?;
    let album = required(album, "album")?;
    let year = required(year, "year")?;
    let rank = required(rank, "rank")?;

    let band = ballot
        .band(name)
        .ok_or_else(|| VoteError::invalid("name", format!("{name:?} is not on the ballot")))?;
    let album_entry = band.album(album).ok_or_else(|| {
        VoteError::invalid(
            "album",
            format!("{album:?} is not an album of {} on the ballot", band.name),
        )
    })?;
    if year != i64::from(album_entry.year) {
        return Err(VoteError::invalid(
            "year",
            format!(
                "{} by {} is from {}, not {year}",
                album_entry.title, band.name, album_entry.year
            ),
        ));
    }
    let rank = Rank::new(rank).ok_or_else(|| {
        VoteError::invalid(
            "rank",
            format!(
                "rank must be between {} and {}, got {rank}",
                Rank::MIN,
                Rank::MAX
            ),
        )
    })?;
    Ok(Vote {
        band,
        album: album_entry,
        rank,
        ballot_version: ballot.version(),
    })
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, VoteError> {
    value.ok_or_else(|| VoteError::invalid(field, format!("{field} is required")))
}

fn text_field<'a>(
    fields: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, VoteError> {
    match fields.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(VoteError::malformed(
            Some(field),
            format!("{field} must be a string, got {}", kind_of(other)),
        )),
    }
}

/// The seed sends years and ranks as strings ("1999"); clients may also send numbers.
fn integer_field(fields: &Map<String, Value>, field: &str) -> Result<Option<i64>, VoteError> {
    let wrong = |got: &str| {
        VoteError::malformed(
            Some(field),
            format!("{field} must be an integer or a string holding one, got {got}"),
        )
    };
    match fields.get(field) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| wrong(&n.to_string())),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| wrong(&format!("{s:?}"))),
        Some(other) => Err(wrong(kind_of(other))),
    }
}

/// The top level of a body: an object's fields in order, duplicates kept (a map would
/// keep only the last), or the kind of value the body was instead.
enum TopLevel {
    Object(Vec<(String, Value)>),
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry::<String, Value>()? {
            pairs.push(pair);
        }
        Ok(TopLevel::Object(pairs))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_unit<E>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a string"))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Vote, VoteError> {
        parse_vote(body.as_bytes(), &Ballot::builtin())
    }

    fn status_and_field(body: &str) -> (u16, Option<String>) {
        let err = parse(body).expect_err("vote should be rejected");
        (err.status(), err.field().map(str::to_owned))
    }

    #[test]
    fn accepts_the_seed_shape_with_string_numbers() {
        let vote = parse(r#"{"name":"Alux Nahual","album":"Conquista","year":"1982","rank":"4"}"#)
            .expect("valid");
        assert_eq!(vote.band.name, "Alux Nahual");
        assert_eq!(vote.album.title, "Conquista");
        assert_eq!(vote.year(), 1982);
        assert_eq!(vote.rank.get(), 4);
    }

    #[test]
    fn accepts_integers_and_normalises_spelling() {
        let vote = parse(
            r#"{"name":"  bohemia suburbana","album":"imaginaria SONORA ","year":2015,"rank":10}"#,
        )
        .expect("valid");
        assert_eq!(vote.band.name, "Bohemia Suburbana");
        assert_eq!(vote.album.title, "Imaginaria Sonora");
        assert_eq!(vote.rank.get(), 10);
    }

    #[test]
    fn malformed_bodies_are_400_without_field() {
        assert_eq!(status_and_field("{"), (400, None));
        assert_eq!(status_and_field(""), (400, None));
        assert_eq!(status_and_field("[1,2]"), (400, None));
        assert_eq!(status_and_field("\"vote\""), (400, None));
    }

    #[test]
    fn wrong_types_are_400_naming_the_field() {
        let cases = [
            (
                r#"{"name":1,"album":"Conquista","year":1982,"rank":4}"#,
                "name",
            ),
            (
                r#"{"name":"Alux Nahual","album":null,"year":1982,"rank":4}"#,
                "album",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":"19x2","rank":4}"#,
                "year",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4.5}"#,
                "rank",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":[4]}"#,
                "rank",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(
                status_and_field(body),
                (400, Some(field.to_owned())),
                "{body}"
            );
        }
    }

    #[test]
    fn invalid_votes_are_422_naming_the_field() {
        let cases = [
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4,"rnak":1}"#,
                "rnak",
            ),
            (r#"{"album":"Conquista","year":1982,"rank":4}"#, "name"),
            (r#"{"name":"Alux Nahual","year":1982,"rank":4}"#, "album"),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","rank":4}"#,
                "year",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":1982}"#,
                "rank",
            ),
            (
                r#"{"name":"Los Tigres","album":"Conquista","year":1982,"rank":4}"#,
                "name",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Imaginaria Sonora","year":2015,"rank":4}"#,
                "album",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":1983,"rank":4}"#,
                "year",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":0}"#,
                "rank",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":"11"}"#,
                "rank",
            ),
            (
                r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":-3}"#,
                "rank",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(
                status_and_field(body),
                (422, Some(field.to_owned())),
                "{body}"
            );
        }
    }

    #[test]
    fn a_field_given_twice_is_400_naming_it() {
        let body = r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4,"rank":5}"#;
        assert_eq!(status_and_field(body), (400, Some("rank".into())));
        let body = r#"{"name":"Alux Nahual","NAME":"x","album":"Conquista","year":1982,"rank":4}"#;
        assert_eq!(
            status_and_field(body),
            (422, Some("NAME".into())),
            "keys are case-sensitive"
        );
        for (body, kind) in [
            ("[1,[2]]", "an array"),
            ("null", "null"),
            ("7", "a number"),
            ("\"x\"", "a string"),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().ends_with(kind), "{body}: {e}");
        }
    }

    #[test]
    fn type_errors_win_over_validation_errors() {
        // An unknown field and a wrongly typed one: the body is unreadable first.
        let body = r#"{"name":"Alux Nahual","album":"Conquista","year":true,"rank":4,"x":1}"#;
        assert_eq!(status_and_field(body), (400, Some("year".to_owned())));
    }

    #[test]
    fn of_several_unknown_fields_the_first_in_the_body_is_named() {
        // Whatever order serde_json's map keeps (its preserve_order feature is decided by
        // the whole build): a CI run of the Go module's test met both.
        let body =
            r#"{"name":"Alux Nahual","zz":1,"album":"Conquista","year":1982,"rank":4,"aa":2}"#;
        assert_eq!(status_and_field(body), (422, Some("zz".to_owned())));
    }

    #[test]
    fn bodies_over_16_kib_are_413() {
        let padding = " ".repeat(MAX_BODY_BYTES);
        let body = format!(
            r#"{{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}}{padding}"#
        );
        let err = parse(&body).expect_err("too large");
        assert_eq!(err.status(), 413);
        // Exactly at the limit is still read.
        let body = &body[..MAX_BODY_BYTES];
        assert!(parse(body).is_ok());
    }
}
