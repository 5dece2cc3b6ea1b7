//! Properties of the vote logic over generated input: it never panics, it answers
//! every body with a vote or a typed error, and accepted votes survive the record
//! encoding unchanged. `PROPTEST_CASES` raises the case count for a longer fuzz run.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use proptest::prelude::*;
use prost::Message;
use urna_vote::{Ballot, Source, VoteRecord, check_record, handle, parse_vote};

fn id(n: u64) -> uuid::Uuid {
    // A syntactically valid v7 id: version nibble 7, RFC 4122 variant.
    uuid::Uuid::from_u128((u128::from(n) << 80) | 0x7000_8000_0000_0000_0000u128)
}

/// JSON values shaped like votes: right and wrong names, types, years and ranks.
fn vote_like_json() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        Just("Alux Nahual".to_owned()),
        Just(" bohemia suburbana ".to_owned()),
        Just("Conquista".to_owned()),
        Just("Sombras en el Jardín".to_owned()),
        Just("IMAGINARIA SONORA".to_owned()),
        ".{0,12}",
    ];
    let scalar = prop_oneof![
        text.clone().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (1970i64..2030).prop_map(serde_json::Value::from),
        (-2i64..13).prop_map(|n| serde_json::Value::from(n.to_string())),
        any::<f64>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ];
    let key = prop_oneof![
        Just("name".to_owned()),
        Just("album".to_owned()),
        Just("year".to_owned()),
        Just("rank".to_owned()),
        "[a-z]{1,6}",
    ];
    proptest::collection::btree_map(key, scalar, 0..6)
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()).to_string())
}

/// Every valid vote for the built-in ballot, in any letter case and padding.
fn valid_vote() -> impl Strategy<Value = (String, String, u32, u32)> {
    let ballot = Ballot::builtin();
    let pairs: Vec<(String, String, u32)> = ballot
        .bands()
        .iter()
        .flat_map(|b| {
            b.albums
                .iter()
                .map(|a| (b.name.to_owned(), a.title.to_owned(), a.year))
        })
        .collect();
    (
        proptest::sample::select(pairs),
        1u32..=10,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|((name, album, year), rank, upper, padded)| {
            let style = |s: String| {
                let s = if upper { s.to_uppercase() } else { s };
                if padded { format!("  {s} ") } else { s }
            };
            (style(name), style(album), year, rank)
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_vote(&body, &Ballot::builtin());
    }

    #[test]
    fn vote_like_json_gets_a_vote_or_a_typed_error(body in vote_like_json()) {
        match parse_vote(body.as_bytes(), &Ballot::builtin()) {
            Ok(vote) => prop_assert!((1..=10).contains(&vote.rank.get())),
            Err(e) => {
                prop_assert!(matches!(e.status(), 400 | 422));
                let json: serde_json::Value = serde_json::from_str(&e.body_json()).unwrap();
                prop_assert!(json["error"].is_string());
            }
        }
    }

    #[test]
    fn accepted_votes_round_trip_through_the_record(
        (name, album, year, rank) in valid_vote(),
        as_strings in any::<bool>(),
        n in any::<u64>(),
        at in 0i64..4_000_000_000_000_000,
    ) {
        let body = if as_strings {
            serde_json::json!({"name": name, "album": album, "year": year.to_string(), "rank": rank.to_string()})
        } else {
            serde_json::json!({"name": name, "album": album, "year": year, "rank": rank})
        };
        let ballot = Ballot::builtin();
        let record = handle(body.to_string().as_bytes(), &ballot, id(n), Source::Grpc, at).unwrap();
        // Stored with the ballot's spelling, whatever case and padding came in.
        prop_assert_eq!(record.name.to_lowercase(), name.trim().to_lowercase());
        prop_assert_eq!(record.album.to_lowercase(), album.trim().to_lowercase());
        prop_assert!(ballot.bands().iter().any(|b| b.name == record.name));
        prop_assert_eq!(record.rank, rank);
        prop_assert_eq!(record.year, year);
        prop_assert_eq!(record.accepted_at_micros, at);
        let decoded = VoteRecord::decode(record.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(&decoded, &record);
        prop_assert_eq!(check_record(&decoded, &ballot), Ok(()));
    }
}
