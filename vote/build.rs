//! Build-time inputs of the vote logic:
//! - `protos/urna/v1/vote.proto` → prost types (the Kafka record schema),
//! - `config/ballot.toml` → a static table, so a Wasm instance pays nothing to load it.

use std::{env, fmt::Write as _, fs, path::PathBuf};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BallotFile {
    /// Bumped by hand when the ballot changes; the content hash below catches a forgotten bump.
    version: u32,
    band: Vec<BandFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BandFile {
    name: String,
    albums: Vec<AlbumFile>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AlbumFile {
    title: String,
    year: u32,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().ok_or("vote/ has no parent")?;
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let proto_dir = root.join("protos");
    let proto = proto_dir.join("urna/v1/vote.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    // SAFETY of the env write: build scripts are single-threaded.
    unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    prost_build::Config::new().compile_protos(&[&proto], &[&proto_dir])?;

    println!("cargo:rerun-if-env-changed=URNA_BALLOT_FILE");
    let ballot_path = env::var_os("URNA_BALLOT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("config/ballot.toml"));
    println!("cargo:rerun-if-changed={}", ballot_path.display());
    let text = fs::read_to_string(&ballot_path)
        .map_err(|e| format!("reading ballot {}: {e}", ballot_path.display()))?;
    let ballot: BallotFile =
        toml::from_str(&text).map_err(|e| format!("ballot {}: {e}", ballot_path.display()))?;
    if ballot.band.is_empty() {
        return Err(format!("ballot {} names no band", ballot_path.display()).into());
    }

    let mut code = String::from("pub(crate) static BUILTIN: &[BandEntry] = &[\n");
    // FNV-1a over the normalised entries: two files with the same version number but
    // different candidates get different version strings.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |text: &str| {
        for b in text.bytes().chain([0]) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for band in &ballot.band {
        if band.albums.is_empty() {
            return Err(format!("band {:?} has no album", band.name).into());
        }
        check_name("band", &band.name)?;
        feed(band.name.trim());
        for album in &band.albums {
            check_name("album", &album.title)?;
            feed(album.title.trim());
            feed(&album.year.to_string());
        }
        writeln!(
            code,
            "    BandEntry {{ name: {:?}, albums: &[",
            band.name.trim()
        )?;
        for album in &band.albums {
            writeln!(
                code,
                "        AlbumEntry {{ title: {:?}, year: {} }},",
                album.title.trim(),
                album.year
            )?;
        }
        code.push_str("    ] },\n");
    }
    code.push_str("];\n");
    writeln!(
        code,
        "pub(crate) static BUILTIN_VERSION: &str = \"{}+{:08x}\";",
        ballot.version,
        hash >> 32
    )?;
    fs::write(out.join("ballot_data.rs"), code)?;
    Ok(())
}

/// Names become Redis hash fields joined as `band|album`: no separator, no control
/// characters, nothing empty.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    let name = name.trim();
    if name.is_empty() || name.contains('|') || name.chars().any(char::is_control) {
        return Err(format!(
            "{what} name {name:?} is empty or has '|' or a control character"
        ));
    }
    Ok(())
}
