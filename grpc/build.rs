//! Generates the `urna.v1.VoteService` client and server (tonic + prost) from
//! `protos/urna/v1/vote_service.proto`, with the `protoc` of `protoc-bin-vendored`.
//! `VoteRecord` and `Source` are not generated again: they map to `urna_vote`'s types,
//! so the record the server publishes is the one type the whole workspace shares.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().ok_or("grpc/ has no parent")?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let proto_dir = root.join("protos");
    let service = proto_dir.join("urna/v1/vote_service.proto");
    println!("cargo:rerun-if-changed={}", service.display());
    println!(
        "cargo:rerun-if-changed={}",
        proto_dir.join("urna/v1/vote.proto").display()
    );
    // SAFETY of the env write: build scripts are single-threaded.
    unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    tonic_prost_build::configure()
        .extern_path(".urna.v1.VoteRecord", "::urna_vote::VoteRecord")
        .extern_path(".urna.v1.Source", "::urna_vote::Source")
        // The raw body travels as `Bytes`: the front hands axum's buffer over uncopied.
        .bytes(".urna.v1.CastRequest.vote_json")
        // With imports, so reflection can describe VoteRecord too.
        .file_descriptor_set_path(out.join("urna_v1_descriptor.bin"))
        .compile_protos(&[&service], &[&proto_dir])?;
    Ok(())
}
