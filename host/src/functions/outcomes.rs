//! What each version's votes got, summed over every replica: each replica counts its
//! own per (function, version, outcome) and adds the counts to the store at every sync
//! (`<p>:outcomes:<name>`, a hash of `<version>|<outcome>` → count). The admin API and
//! the web app read the sums, so a canary's errors show next to the active version's.
//! Telemetry, not the vote count: a replica that dies loses what it had not added yet
//! (at most one sync interval), and a vote retried after a 503 is counted twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use redis::AsyncCommands as _;
use urna_vote::FunctionName;

use super::lock;
use super::store::{Store, StoreError};

/// Per function: version → outcome → count.
pub type Counts = BTreeMap<String, BTreeMap<String, u64>>;

/// Counts not yet added to the store.
#[derive(Default)]
pub struct Pending(Mutex<HashMap<(FunctionName, String, &'static str), u64>>);

impl Pending {
    pub fn note(&self, function: &FunctionName, version: &str, outcome: &'static str) {
        *lock(&self.0)
            .entry((function.clone(), version.to_owned(), outcome))
            .or_default() += 1;
    }

    fn take(&self) -> HashMap<(FunctionName, String, &'static str), u64> {
        std::mem::take(&mut *lock(&self.0))
    }

    fn give_back(&self, counts: HashMap<(FunctionName, String, &'static str), u64>) {
        let mut pending = lock(&self.0);
        for (key, n) in counts {
            *pending.entry(key).or_default() += n;
        }
    }

    /// Adds what was counted to the store; kept for the next time if it is unreachable.
    pub async fn flush(&self, store: &Store) -> Result<(), StoreError> {
        let counts = self.take();
        if counts.is_empty() {
            return Ok(());
        }
        let result = store.add_outcomes(&counts).await;
        if result.is_err() {
            self.give_back(counts);
        }
        result
    }
}

fn field(version: &str, outcome: &str) -> String {
    format!("{version}|{outcome}")
}

fn parse(fields: HashMap<String, u64>) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: Counts = BTreeMap::new();
    for (field, n) in fields {
        if let Some((version, outcome)) = field.rsplit_once('|') {
            counts
                .entry(version.to_owned())
                .or_default()
                .insert(outcome.to_owned(), n);
        }
    }
    counts
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl Store {
    async fn add_outcomes(
        &self,
        counts: &HashMap<(FunctionName, String, &'static str), u64>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                let mut m = Self::mem(m);
                for ((function, version, outcome), n) in counts {
                    *m.outcomes
                        .entry(function.clone())
                        .or_default()
                        .entry(field(version, outcome))
                        .or_default() += n;
                }
                Ok(())
            }
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                let mut pipe = redis::pipe();
                for ((function, version, outcome), n) in counts {
                    pipe.hincr(r.outcomes_key(function), field(version, outcome), *n)
                        .ignore();
                }
                pipe.query_async::<()>(&mut c).await.map_err(unavailable)
            }
        }
    }

    /// The sums for `function`.
    pub async fn outcomes(&self, function: &FunctionName) -> Result<Counts, StoreError> {
        let fields = match self {
            Store::Memory(m) => Self::mem(m)
                .outcomes
                .get(function)
                .cloned()
                .unwrap_or_default(),
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                c.hgetall(r.outcomes_key(function))
                    .await
                    .map_err(unavailable)?
            }
        };
        Ok(parse(fields))
    }

    /// Forgets a deleted version's counts.
    pub(super) async fn forget_outcomes(
        &self,
        function: &FunctionName,
        version: &str,
    ) -> Result<(), StoreError> {
        let prefix = field(version, "");
        match self {
            Store::Memory(m) => {
                if let Some(fields) = Self::mem(m).outcomes.get_mut(function) {
                    fields.retain(|f, _| !f.starts_with(&prefix));
                }
                Ok(())
            }
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                let key = r.outcomes_key(function);
                let fields: Vec<String> = c.hkeys(&key).await.map_err(unavailable)?;
                let gone: Vec<&String> = fields.iter().filter(|f| f.starts_with(&prefix)).collect();
                if gone.is_empty() {
                    return Ok(());
                }
                c.hdel::<_, _, ()>(&key, gone).await.map_err(unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_add_up_per_version_and_outcome_and_survive_an_unreachable_store() {
        let f = FunctionName::parse("go").expect("name");
        let pending = Pending::default();
        for _ in 0..3 {
            pending.note(&f, "sha256:aa", "accepted");
        }
        pending.note(&f, "sha256:aa", "rejected");
        pending.note(&f, "sha256:bb", "trap");
        // Nothing listens here: the counts stay pending.
        let down = Store::redis("redis://127.0.0.1:1", "test");
        assert!(pending.flush(&down).await.is_err());
        let store = Store::memory();
        pending.flush(&store).await.expect("memory");
        pending.note(&f, "sha256:aa", "accepted");
        pending.flush(&store).await.expect("memory");
        let counts = store.outcomes(&f).await.expect("read");
        let want: Counts = [
            (
                "sha256:aa".to_owned(),
                [("accepted".to_owned(), 4), ("rejected".to_owned(), 1)].into(),
            ),
            ("sha256:bb".to_owned(), [("trap".to_owned(), 1)].into()),
        ]
        .into();
        assert_eq!(counts, want);
        store
            .forget_outcomes(&f, "sha256:aa")
            .await
            .expect("forget");
        let counts = store.outcomes(&f).await.expect("read");
        assert_eq!(counts.keys().collect::<Vec<_>>(), ["sha256:bb"]);
    }
}
