//! A position in the log stream: per Kafka partition, the next offset not yet delivered.
//!
//! The stream's cursor is a vector, not a time: logs are keyed by `(partition, offset)`
//! and the consumer's progress record says, per partition, up to which offset every log
//! is in MongoDB. Sent as the SSE event id (`0:17,3:120`), so a browser that reconnects
//! with `Last-Event-ID` resumes exactly where it stopped.

use std::collections::BTreeMap;
use std::fmt;

/// Upper bounds on a cursor a client sends back, so parsing is bounded.
const MAX_PARTITIONS: usize = 4096;
const MAX_TEXT: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<i32, i64>);

impl Cursor {
    pub fn new(next: BTreeMap<i32, i64>) -> Cursor {
        Cursor(next)
    }

    /// The next undelivered offset of `partition` (0 for a partition never seen).
    pub fn get(&self, partition: i32) -> i64 {
        self.0.get(&partition).copied().unwrap_or(0)
    }

    pub fn set(&mut self, partition: i32, next: i64) {
        self.0.insert(partition, next);
    }

    pub fn iter(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0.iter().map(|(p, o)| (*p, *o))
    }

    /// Partitions where `target` is ahead of `self`, with the half-open range between.
    pub fn ranges_to(&self, target: &Cursor) -> Vec<(i32, i64, i64)> {
        target
            .iter()
            .filter(|&(p, to)| to > self.get(p))
            .map(|(p, to)| (p, self.get(p), to))
            .collect()
    }

    /// Moves every partition forward to `other`'s position where that is further.
    pub fn advance_to(&mut self, other: &Cursor) {
        for (p, o) in other.iter() {
            if o > self.get(p) {
                self.set(p, o);
            }
        }
    }

    /// Whether `self` is past `other` on any partition (a client's `Last-Event-ID` from
    /// a feed that was reset, or made up): following from there would be silence.
    pub fn is_ahead_of(&self, other: &Cursor) -> bool {
        self.iter().any(|(p, o)| o > other.get(p))
    }

    /// Whether a log at `(partition, offset)` is still to be delivered.
    pub fn is_pending(&self, partition: i32, offset: i64) -> bool {
        offset >= self.get(partition)
    }

    /// Parses the text form; an error names what is wrong.
    pub fn parse(text: &str) -> Result<Cursor, String> {
        if text.len() > MAX_TEXT {
            return Err("cursor is too long".into());
        }
        let mut next = BTreeMap::new();
        for part in text.split(',').filter(|s| !s.is_empty()) {
            let (p, o) = part
                .split_once(':')
                .ok_or_else(|| format!("cursor entry {part:?} is not partition:offset"))?;
            let p: i32 = p
                .parse()
                .map_err(|_| format!("cursor partition {p:?} is not an integer"))?;
            let o: i64 = o
                .parse()
                .map_err(|_| format!("cursor offset {o:?} is not an integer"))?;
            if p < 0 || o < 0 {
                return Err("cursor partitions and offsets are not negative".into());
            }
            if next.insert(p, o).is_some() {
                return Err(format!("cursor names partition {p} twice"));
            }
            if next.len() > MAX_PARTITIONS {
                return Err("cursor names too many partitions".into());
            }
        }
        Ok(Cursor(next))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (p, o)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(pairs: &[(i32, i64)]) -> Cursor {
        Cursor::new(pairs.iter().copied().collect())
    }

    #[test]
    fn text_round_trip() {
        let c = cursor(&[(0, 17), (3, 120)]);
        assert_eq!(c.to_string(), "0:17,3:120");
        assert_eq!(Cursor::parse("0:17,3:120"), Ok(c));
        assert_eq!(Cursor::parse(""), Ok(Cursor::default()));
    }

    #[test]
    fn bad_text_is_refused() {
        for bad in ["x", "0:", ":1", "0:-1", "-1:0", "0:1,0:2", "0:1.5", "a:b"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
        assert!(Cursor::parse(&"1".repeat(MAX_TEXT + 1)).is_err());
    }

    #[test]
    fn ranges_and_advance() {
        let mut a = cursor(&[(0, 5), (1, 9)]);
        let b = cursor(&[(0, 8), (1, 9), (2, 3)]);
        assert_eq!(a.ranges_to(&b), vec![(0, 5, 8), (2, 0, 3)]);
        assert!(a.is_pending(0, 5) && !a.is_pending(0, 4) && a.is_pending(2, 0));
        a.advance_to(&cursor(&[(0, 7), (1, 2)]));
        assert_eq!(a, cursor(&[(0, 7), (1, 9)]));
    }

    #[test]
    fn ahead_on_any_partition() {
        let feed = cursor(&[(0, 8), (1, 9)]);
        assert!(!cursor(&[(0, 8), (1, 3)]).is_ahead_of(&feed));
        assert!(!Cursor::default().is_ahead_of(&feed));
        assert!(cursor(&[(0, 9)]).is_ahead_of(&feed));
        assert!(
            cursor(&[(5, 1)]).is_ahead_of(&feed),
            "a partition the feed never saw"
        );
    }
}
