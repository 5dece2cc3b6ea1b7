//! `vote.wasm`: a WASI command. Reads one JSON vote per line on stdin and writes one
//! JSON result per line on stdout:
//!
//! ```text
//! $ wasmtime run vote.wasm < locust/data/sample-votes.jsonl     # or: wasmedge run vote.wasm
//! {"record":{"accepted_at":"…","album":"Conquista",…},"status":202}
//! {"error":"rank must be between 1 and 10, got 11","field":"rank","status":422}
//! ```
//!
//! Ids (UUID v7) and times come from the WASI clock and random source.

use std::io::{self, BufRead, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use urna_vote::{MAX_BODY_BYTES, VoteError};

fn main() {
    if let Err(e) = run() {
        eprintln!("vote: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        // Read at most one byte past the limit so a huge line costs bounded memory;
        // the rest of an oversized line is skipped.
        let limit = (MAX_BODY_BYTES + 2) as u64;
        let n = io::Read::take(&mut input, limit).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        let complete = line.last() == Some(&b'\n');
        if !complete && n as u64 == limit {
            let skipped = skip_rest_of_line(&mut input)?;
            let size = n + skipped;
            let err = VoteError::TooLarge {
                size,
                limit: MAX_BODY_BYTES,
            };
            writeln!(out, "{}", vote_module::error_line(&err))?;
            continue;
        }
        let body = trim_newline(&line);
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let result = vote_module::handle_line(body, uuid::Uuid::now_v7(), now);
        writeln!(out, "{result}")?;
    }
    out.flush()
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Skips past the end of the line; returns the bytes skipped before the newline.
fn skip_rest_of_line(input: &mut impl BufRead) -> io::Result<usize> {
    let mut skipped = 0;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(skipped);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(skipped + i);
            }
            None => {
                let n = buf.len();
                input.consume(n);
                skipped += n;
            }
        }
    }
}
