//! The deploy trial: before a module serves (at start and at every hot reload), it
//! judges a fixed set of votes built from the host's ballot — every album voted once,
//! and each documented class of bad input — in real instances, and must answer each as
//! the vote logic of `urna-vote` does: the same record for a valid vote (which
//! [`decode_output`] also checks against the ballot), the same status and field for a
//! bad one. A module that accepts an invalid vote, refuses a valid one, traps or loops
//! is refused, naming the first case it failed; the module serving keeps serving.

use urna_vote::{Ballot, Source};

use crate::runtime::{InvokeError, InvokeErrorKind, ModuleOutput, VoteModule, decode_output};

const STARVED_RETRIES: usize = 3;

fn invoke(
    module: &dyn VoteModule,
    body: &str,
    id: uuid::Uuid,
    at: i64,
) -> Result<ModuleOutput, InvokeError> {
    module
        .invoke(body.as_bytes(), id, at)
        .result
        .and_then(|out| decode_output(out, id, at))
}

/// The trial's cases: `(what, body)`.
pub fn cases(ballot: &Ballot) -> Vec<(String, String)> {
    let js = |s: &str| serde_json::Value::from(s).to_string();
    let vote = |name: &str, album: &str, year: String, rank: String| {
        format!(
            r#"{{"name":{},"album":{},"year":{year},"rank":{rank}}}"#,
            js(name),
            js(album)
        )
    };
    let mut cases = Vec::new();
    let mut rank = 0;
    for band in ballot.bands() {
        for album in band.albums {
            rank = rank % 10 + 1;
            cases.push((
                format!("a vote for {} by {}", album.title, band.name),
                vote(
                    band.name,
                    album.title,
                    album.year.to_string(),
                    rank.to_string(),
                ),
            ));
        }
    }
    let band = &ballot.bands()[0];
    let album = &band.albums[0];
    let year = album.year.to_string();
    let valid = |rank: &str| vote(band.name, album.title, year.clone(), rank.to_owned());
    let spelt = format!("  {} ", band.name.to_uppercase());
    cases.extend([
        (
            "the seed's shape (strings), spelt otherwise".to_owned(),
            vote(&spelt, album.title, format!("\"{year}\""), "\"7\"".into()),
        ),
        ("malformed JSON".into(), valid("4")[..10].to_owned()),
        ("not an object".into(), format!("[{}]", valid("4"))),
        (
            "year of wrong type".into(),
            vote(band.name, album.title, "true".into(), "4".into()),
        ),
        ("rank not an integer".into(), valid("\"four\"")),
        (
            "a field twice".into(),
            valid("4").replacen('{', r#"{"rank":4,"#, 1),
        ),
        (
            "unknown field".into(),
            valid("4").replacen('{', r#"{"rnak":4,"#, 1),
        ),
        (
            "missing field".into(),
            format!(
                r#"{{"name":{},"album":{},"year":{year}}}"#,
                js(band.name),
                js(album.title)
            ),
        ),
        (
            "band not on the ballot".into(),
            vote(
                "urna trial: no such band",
                album.title,
                year.clone(),
                "4".into(),
            ),
        ),
        (
            "wrong year".into(),
            vote(
                band.name,
                album.title,
                (album.year + 1).to_string(),
                "4".into(),
            ),
        ),
        ("rank 0".into(), valid("0")),
        ("rank 11".into(), valid("11")),
    ]);
    if let Some(other) = ballot.bands().get(1) {
        cases.push((
            "album of another band".into(),
            vote(
                band.name,
                other.albums[0].title,
                other.albums[0].year.to_string(),
                "4".into(),
            ),
        ));
    }
    cases
}

/// Runs the trial on `module`; `Err` names the first case it failed and how.
pub fn run(module: &dyn VoteModule) -> Result<(), String> {
    let ballot = Ballot::builtin();
    for (what, body) in cases(&ballot) {
        let id = urna_common::stamp::new_vote_id();
        let at = urna_common::stamp::now_micros();
        let fail = |how: String| Err(format!("deploy trial, {what}: {how}"));
        let want = urna_vote::handle(body.as_bytes(), &ballot, id, Source::Wasm, at);
        // A stop on a machine too busy to give the module its CPU is not the module's
        // fault: that case is tried again, a few times.
        let mut got = invoke(module, &body, id, at);
        for _ in 0..STARVED_RETRIES {
            if !matches!(&got, Err(e) if e.kind == InvokeErrorKind::Starved) {
                break;
            }
            got = invoke(module, &body, id, at);
        }
        match (want, got) {
            (_, Err(e)) => return fail(e.to_string()),
            (Ok(record), Ok(ModuleOutput::Accepted(got, _))) if got == record => {}
            (Ok(record), Ok(ModuleOutput::Accepted(got, _))) => {
                return fail(format!(
                    "accepted as {got:?}, the vote logic says {record:?}"
                ));
            }
            (Ok(_), Ok(ModuleOutput::Rejected { status, .. })) => {
                return fail(format!("refused with {status}, the vote logic accepts it"));
            }
            (Err(e), Ok(ModuleOutput::Accepted(..))) => {
                return fail(format!(
                    "accepted, the vote logic answers {} ({})",
                    e.status(),
                    e.field().unwrap_or("no field")
                ));
            }
            (Err(e), Ok(ModuleOutput::Rejected { status, body })) => {
                let field = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|b| b["field"].as_str().map(str::to_owned));
                if status != e.status() || field.as_deref() != e.field() {
                    return fail(format!(
                        "answered {status} ({}), the vote logic answers {} ({})",
                        field.as_deref().unwrap_or("no field"),
                        e.status(),
                        e.field().unwrap_or("no field")
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Invocation, Limits, LoadError};
    use std::sync::Arc;
    use std::time::Duration;

    /// The real vote logic in the ABI's output format, with one lie told on the cases
    /// `lie` picks: what a module that passes everything else could do.
    struct Lying {
        lie: fn(&[u8], uuid::Uuid, i64) -> Option<urna_vote::VoteRecord>,
    }

    impl VoteModule for Lying {
        fn invoke_instance(&self, body: &[u8], id: uuid::Uuid, at: i64) -> Invocation {
            let ballot = Ballot::builtin();
            let accepted = |record: urna_vote::VoteRecord| {
                let mut out = vec![0];
                prost::Message::encode(&record, &mut out).expect("encode");
                out
            };
            let out = match (
                (self.lie)(body, id, at),
                urna_vote::handle(body, &ballot, id, Source::Wasm, at),
            ) {
                (Some(lie), _) => accepted(lie),
                (None, Ok(record)) => accepted(record),
                (None, Err(e)) => [
                    &[1][..],
                    &e.status().to_be_bytes(),
                    e.body_json().as_bytes(),
                ]
                .concat(),
            };
            Invocation {
                result: Ok(out),
                instantiate: Duration::ZERO,
                run: Duration::ZERO,
                cpu: Duration::ZERO,
            }
        }

        fn limits(&self) -> Limits {
            Limits {
                cpu_budget: Duration::from_millis(100),
                wall_limit: Duration::from_secs(1),
                memory_bytes: 16 << 20,
                max_instances: 1,
                keep_resident_bytes: 0,
            }
        }

        fn with_limits(&self, _: Limits) -> Result<Arc<dyn VoteModule>, LoadError> {
            Ok(Arc::new(Lying { lie: self.lie }))
        }
    }

    /// A record of the ballot's first album with `rank`, as the logic would write it.
    fn record_with_rank(id: uuid::Uuid, at: i64, rank: u32) -> urna_vote::VoteRecord {
        let ballot = Ballot::builtin();
        let (band, album) = (&ballot.bands()[0], &ballot.bands()[0].albums[0]);
        let body = format!(
            r#"{{"name":"{}","album":"{}","year":{},"rank":4}}"#,
            band.name, album.title, album.year
        );
        let mut record =
            urna_vote::handle(body.as_bytes(), &ballot, id, Source::Wasm, at).expect("valid");
        record.rank = rank;
        record
    }

    #[test]
    fn a_module_that_accepts_an_invalid_vote_or_writes_rank_0_is_refused_naming_the_case() {
        let honest = Lying {
            lie: |_, _, _| None,
        };
        assert_eq!(run(&honest), Ok(()), "control: the real logic passes");

        // Takes an album of another band as a valid vote (a well-formed, ballot-true
        // record of the first band's album).
        let other_band = Lying {
            lie: |body, id, at| {
                let other = &Ballot::builtin().bands()[1].albums[0].title;
                std::str::from_utf8(body)
                    .is_ok_and(|b| {
                        b.contains(&**other) && !b.contains(Ballot::builtin().bands()[1].name)
                    })
                    .then(|| record_with_rank(id, at, 4))
            },
        };
        assert_eq!(
            run(&other_band),
            Err(
                "deploy trial, album of another band: accepted, the vote logic answers 422 (album)"
                    .into()
            )
        );

        // Accepts "rank 0" and writes rank 0 into the record: the host's record check
        // refuses the record before the trial compares it.
        let rank_zero = Lying {
            lie: |body, id, at| {
                std::str::from_utf8(body)
                    .is_ok_and(|b| b.ends_with(r#""rank":0}"#))
                    .then(|| record_with_rank(id, at, 0))
            },
        };
        let refused = run(&rank_zero).expect_err("rank 0");
        assert!(refused.starts_with("deploy trial, rank 0: "), "{refused}");
        assert!(refused.contains("rank"), "{refused}");
    }

    /// Every valid case is valid and every bad one bad by the vote logic itself, so the
    /// trial asks something a wrong module can fail both ways.
    #[test]
    fn the_cases_cover_acceptance_and_each_refusal() {
        let ballot = Ballot::builtin();
        let id = urna_common::stamp::new_vote_id();
        let mut refusals = std::collections::BTreeSet::new();
        let mut accepted = 0;
        for (what, body) in cases(&ballot) {
            match urna_vote::handle(body.as_bytes(), &ballot, id, Source::Wasm, 1) {
                Ok(_) => {
                    assert!(
                        what.starts_with("a vote for") || what.starts_with("the seed"),
                        "{what}"
                    );
                    accepted += 1;
                }
                Err(e) => {
                    assert!(!what.starts_with("a vote for"), "{what}: {e}");
                    refusals.insert((e.status(), e.field().map(str::to_owned)));
                }
            }
        }
        let albums: usize = ballot.bands().iter().map(|b| b.albums.len()).sum();
        assert_eq!(accepted, albums + 1);
        let field = |f: &str| Some(f.to_owned());
        for want in [
            (400, None),
            (400, field("year")),
            (400, field("rank")),
            (422, field("rnak")),
            (422, field("rank")),
            (422, field("name")),
            (422, field("album")),
            (422, field("year")),
        ] {
            assert!(refusals.contains(&want), "{want:?} not among {refusals:?}");
        }
    }
}
