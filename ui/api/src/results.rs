//! Totals from the consumer's Redis counters (`<prefix>:total`, `:bands`, `:albums`,
//! `:rank_sum`, `:sources`), read in one MULTI so they are from the same instant (the
//! consumer changes them in one atomic script per batch). Every album of the ballot is
//! listed, with zero votes until it has some, so charts keep a stable shape.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Results {
    pub total: u64,
    pub bands: Vec<BandTotal>,
    pub albums: Vec<AlbumTotal>,
    /// `grpc` and `wasm` (and any other source the counters hold).
    pub sources: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BandTotal {
    pub band: String,
    pub votes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlbumTotal {
    pub band: String,
    pub album: String,
    pub year: Option<u32>,
    pub votes: u64,
    pub rank_sum: u64,
    /// `rank_sum / votes`, rounded to 2 decimals; `None` without votes.
    pub avg_rank: Option<f64>,
}

#[derive(Clone)]
pub struct ResultsStore {
    conn: ConnectionManager,
    keys: [String; 5],
}

impl ResultsStore {
    /// Connects (the manager reconnects by itself after Redis comes back).
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<ResultsStore> {
        let conn = urna_common::stores::redis_connection(url, Duration::from_secs(3)).await?;
        let key = |k: &str| format!("{prefix}:{k}");
        Ok(ResultsStore {
            conn,
            keys: [
                key("total"),
                key("bands"),
                key("albums"),
                key("rank_sum"),
                key("sources"),
            ],
        })
    }

    /// The connection, shared with the other Redis readers.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn ping(&self) -> bool {
        urna_common::stores::redis_ping(&self.conn).await
    }

    pub async fn read(&self) -> redis::RedisResult<Results> {
        let [total, bands, albums, rank_sum, sources] = &self.keys;
        let mut conn = self.conn.clone();
        type Hash = HashMap<String, u64>;
        let (total, bands, albums, rank_sum, sources): (Option<u64>, Hash, Hash, Hash, Hash) =
            redis::pipe()
                .atomic()
                .get(total)
                .hgetall(bands)
                .hgetall(albums)
                .hgetall(rank_sum)
                .hgetall(sources)
                .query_async(&mut conn)
                .await?;
        Ok(assemble(
            total.unwrap_or(0),
            &bands,
            &albums,
            &rank_sum,
            sources,
        ))
    }
}

/// Builds the view: ballot order first, then anything else the counters hold.
fn assemble(
    total: u64,
    bands: &HashMap<String, u64>,
    albums: &HashMap<String, u64>,
    rank_sum: &HashMap<String, u64>,
    sources: HashMap<String, u64>,
) -> Results {
    let ballot = urna_vote::Ballot::builtin();
    let mut band_rows: Vec<BandTotal> = Vec::new();
    let mut album_rows: Vec<AlbumTotal> = Vec::new();
    let mut listed_albums = std::collections::HashSet::new();
    for band in ballot.bands() {
        band_rows.push(BandTotal {
            band: band.name.to_owned(),
            votes: bands.get(band.name).copied().unwrap_or(0),
        });
        for album in band.albums {
            let key = format!("{}|{}", band.name, album.title);
            album_rows.push(album_total(
                band.name,
                album.title,
                Some(album.year),
                albums,
                rank_sum,
                &key,
            ));
            listed_albums.insert(key);
        }
    }
    let mut extra_bands: Vec<_> = bands
        .iter()
        .filter(|(b, _)| ballot.band(b).is_none())
        .collect();
    extra_bands.sort();
    band_rows.extend(extra_bands.into_iter().map(|(b, v)| BandTotal {
        band: b.clone(),
        votes: *v,
    }));
    let mut extra_albums: Vec<&String> = albums
        .keys()
        .filter(|k| !listed_albums.contains(*k))
        .collect();
    extra_albums.sort();
    for key in extra_albums {
        let (band, album) = key.split_once('|').unwrap_or((key, ""));
        album_rows.push(album_total(band, album, None, albums, rank_sum, key));
    }
    Results {
        total,
        bands: band_rows,
        albums: album_rows,
        sources: sources.into_iter().collect(),
    }
}

fn album_total(
    band: &str,
    album: &str,
    year: Option<u32>,
    albums: &HashMap<String, u64>,
    rank_sum: &HashMap<String, u64>,
    key: &str,
) -> AlbumTotal {
    let votes = albums.get(key).copied().unwrap_or(0);
    let sum = rank_sum.get(key).copied().unwrap_or(0);
    AlbumTotal {
        band: band.to_owned(),
        album: album.to_owned(),
        year,
        votes,
        rank_sum: sum,
        avg_rank: (votes > 0).then(|| (sum as f64 / votes as f64 * 100.0).round() / 100.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballot_albums_are_listed_with_averages() {
        let ballot = urna_vote::Ballot::builtin();
        let band = &ballot.bands()[0];
        let album = &band.albums[0];
        let key = format!("{}|{}", band.name, album.title);
        let albums = HashMap::from([(key.clone(), 3), ("Other|X".to_owned(), 1)]);
        let ranks = HashMap::from([(key, 20), ("Other|X".to_owned(), 4)]);
        let bands = HashMap::from([(band.name.to_owned(), 3), ("Other".to_owned(), 1)]);
        let r = assemble(4, &bands, &albums, &ranks, HashMap::new());
        let n_albums: usize = ballot.bands().iter().map(|b| b.albums.len()).sum();
        assert_eq!(r.albums.len(), n_albums + 1);
        assert_eq!(r.albums[0].votes, 3);
        assert_eq!(r.albums[0].avg_rank, Some(6.67));
        assert_eq!(r.albums[1].votes, 0);
        assert_eq!(r.albums[1].avg_rank, None);
        let other = r
            .albums
            .last()
            .map(|a| (a.band.as_str(), a.album.as_str(), a.votes));
        assert_eq!(other, Some(("Other", "X", 1)));
        assert_eq!(r.bands.len(), ballot.bands().len() + 1);
        assert_eq!(r.total, 4);
    }
}
