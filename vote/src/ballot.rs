//! The ballot: which bands (and which of their albums, from which year) a vote may name.

include!(concat!(env!("OUT_DIR"), "/ballot_data.rs"));

/// A band on the ballot, spelled as the ballot spells it.
#[derive(Debug, PartialEq, Eq)]
pub struct BandEntry {
    pub name: &'static str,
    pub albums: &'static [AlbumEntry],
}

/// An album of a band on the ballot and the year it was released.
#[derive(Debug, PartialEq, Eq)]
pub struct AlbumEntry {
    pub title: &'static str,
    pub year: u32,
}

/// The list of candidates. Cheap to copy: it only borrows static data.
#[derive(Debug, Clone, Copy)]
pub struct Ballot {
    bands: &'static [BandEntry],
    version: &'static str,
}

impl Ballot {
    /// The ballot compiled from `config/ballot.toml`.
    pub fn builtin() -> Self {
        Ballot {
            bands: BUILTIN,
            version: BUILTIN_VERSION,
        }
    }

    /// `<version from the file>+<hash of its candidates>`: stamped on every record, so
    /// a record says which ballot judged it (producers may be deployed at different times).
    pub fn version(&self) -> &'static str {
        self.version
    }

    pub fn bands(&self) -> &'static [BandEntry] {
        self.bands
    }

    /// Finds a band by name, ignoring surrounding white space and letter case.
    pub fn band(&self, name: &str) -> Option<&'static BandEntry> {
        let name = name.trim();
        self.bands.iter().find(|b| eq_ignore_case(b.name, name))
    }
}

impl BandEntry {
    /// Finds one of this band's albums, ignoring surrounding white space and letter case.
    pub fn album(&self, title: &str) -> Option<&'static AlbumEntry> {
        let title = title.trim();
        self.albums.iter().find(|a| eq_ignore_case(a.title, title))
    }
}

/// Unicode-aware and allocation-free (this runs on every request, also inside Wasm).
fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_ballot_has_two_bands_with_two_albums_each() {
        let ballot = Ballot::builtin();
        assert_eq!(ballot.bands().len(), 2);
        for band in ballot.bands() {
            assert_eq!(band.albums.len(), 2, "{}", band.name);
        }
    }

    #[test]
    fn version_names_the_file_version_and_a_content_hash() {
        let version = Ballot::builtin().version();
        let (number, hash) = version.split_once('+').expect("version+hash");
        assert_eq!(number, "1");
        assert_eq!(hash.len(), 8);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{version}");
    }

    #[test]
    fn lookups_ignore_case_and_surrounding_space() {
        let ballot = Ballot::builtin();
        let band = ballot.band("  bohemia SUBURBANA ").expect("band");
        assert_eq!(band.name, "Bohemia Suburbana");
        let album = band.album("SOMBRAS EN EL JARDÍN").expect("album");
        assert_eq!(album.title, "Sombras en el Jardín");
        assert_eq!(album.year, 1993);
    }

    #[test]
    fn lookups_do_not_match_prefixes_or_other_bands_albums() {
        let ballot = Ballot::builtin();
        assert!(ballot.band("Bohemia").is_none());
        let alux = ballot.band("Alux Nahual").expect("band");
        assert!(alux.album("Imaginaria Sonora").is_none());
    }
}
