//! The vote logic of `urna-vote` packaged as WASI modules. Nothing here decides what a
//! valid vote is; this crate only moves bytes in and out of a Wasm instance.
//!
//! Two artefacts, one crate, both importing only `wasi_snapshot_preview1` so that
//! WasmEdge, wasmtime, Node's `node:wasi` or any WASI runtime runs them unchanged:
//!
//! - `vote.wasm` (the `vote` binary, a WASI *command*): one JSON vote per stdin line →
//!   one JSON result per stdout line. For people trying the module by hand.
//! - `vote_module.wasm` (this library as a `cdylib`, a WASI *reactor*): the host ABI.
//!
//! # Host ABI, version 1
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `_initialize` | `() -> ()` | WASI reactor start; call once per instance first |
//! | `urna_abi_version` | `() -> i32` | `1` |
//! | `urna_alloc` | `(len: i32) -> i32` | a buffer of `len` bytes for the host to write into |
//! | `urna_free` | `(ptr: i32, len: i32) -> ()` | returns a buffer from `urna_alloc` or a result |
//! | `urna_handle_vote` | `(ptr: i32, len: i32, id_hi: i64, id_lo: i64, at_micros: i64) -> i64` | see below |
//!
//! `urna_handle_vote` reads the request body at `ptr..ptr+len`, stamps the vote with the
//! UUID `id_hi << 64 | id_lo` and the time `at_micros`, and returns `out_ptr << 32 | out_len`
//! of a result buffer: `[0] ++ protobuf VoteRecord` when accepted (ready to publish), or
//! `[1, status_hi, status_lo] ++ JSON error body` when rejected (the exact HTTP answer).

use prost::Message;
use urna_vote::{Ballot, Source};

pub const ABI_VERSION: i32 = 1;
pub const TAG_ACCEPTED: u8 = 0;
pub const TAG_REJECTED: u8 = 1;

/// The whole per-request work of the reactor, as a plain function so it is testable
/// natively and identical in the Wasm build.
pub fn handle_to_bytes(body: &[u8], id: uuid::Uuid, accepted_at_micros: i64) -> Vec<u8> {
    match urna_vote::handle(
        body,
        &Ballot::builtin(),
        id,
        Source::Wasm,
        accepted_at_micros,
    ) {
        Ok(record) => {
            let mut out = Vec::with_capacity(1 + record.encoded_len());
            out.push(TAG_ACCEPTED);
            record
                .encode(&mut out)
                .expect("a Vec grows to fit any record");
            out
        }
        Err(err) => {
            let body = err.body_json();
            let mut out = Vec::with_capacity(3 + body.len());
            out.push(TAG_REJECTED);
            out.extend_from_slice(&err.status().to_be_bytes());
            out.extend_from_slice(body.as_bytes());
            out
        }
    }
}

/// One stdin line → one stdout line for the command module.
pub fn handle_line(line: &[u8], id: uuid::Uuid, accepted_at_micros: i64) -> String {
    match urna_vote::handle(
        line,
        &Ballot::builtin(),
        id,
        Source::Wasm,
        accepted_at_micros,
    ) {
        Ok(record) => {
            serde_json::json!({ "status": 202, "record": urna_vote::record_json(&record) })
                .to_string()
        }
        Err(err) => error_line(&err),
    }
}

/// A rejection as one stdout line of the command module.
pub fn error_line(err: &urna_vote::VoteError) -> String {
    serde_json::json!({
        "status": err.status(),
        "error": err.to_string(),
        "field": err.field(),
    })
    .to_string()
}

#[cfg(target_arch = "wasm32")]
mod exports {
    //! The raw exports. Only built for Wasm: natively, i32 is not a pointer.

    #[unsafe(no_mangle)]
    pub extern "C" fn urna_abi_version() -> i32 {
        super::ABI_VERSION
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn urna_alloc(len: i32) -> i32 {
        let buf = vec![0u8; len.max(0) as usize].into_boxed_slice();
        Box::into_raw(buf) as *mut u8 as i32
    }

    /// # Safety
    /// `ptr`/`len` must come from `urna_alloc` or `urna_handle_vote`, freed once.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn urna_free(ptr: i32, len: i32) {
        let slice = core::ptr::slice_from_raw_parts_mut(ptr as *mut u8, len.max(0) as usize);
        // SAFETY: the caller passes back a boxed slice this module leaked.
        drop(unsafe { Box::from_raw(slice) });
    }

    /// # Safety
    /// `ptr..ptr+len` must be memory of this instance the host has written.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn urna_handle_vote(
        ptr: i32,
        len: i32,
        id_hi: i64,
        id_lo: i64,
        accepted_at_micros: i64,
    ) -> i64 {
        // SAFETY: guaranteed by the caller (the host wrote `len` bytes at `ptr`).
        let body = unsafe { core::slice::from_raw_parts(ptr as *const u8, len.max(0) as usize) };
        let id = uuid::Uuid::from_u64_pair(id_hi as u64, id_lo as u64);
        let out = super::handle_to_bytes(body, id, accepted_at_micros).into_boxed_slice();
        let out_len = out.len() as i64;
        let out_ptr = Box::into_raw(out) as *mut u8 as u32 as i64;
        (out_ptr << 32) | out_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: uuid::Uuid = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);

    #[test]
    fn accepted_vote_is_tag_then_record() {
        let out = handle_to_bytes(
            br#"{"name":"Alux Nahual","album":"Conquista","year":"1982","rank":"4"}"#,
            ID,
            5,
        );
        assert_eq!(out[0], TAG_ACCEPTED);
        let record = urna_vote::VoteRecord::decode(&out[1..]).expect("record");
        assert_eq!(record.source(), Source::Wasm);
        assert_eq!(record.accepted_at_micros, 5);
        assert_eq!(record.id, ID.to_string());
    }

    #[test]
    fn rejected_vote_is_tag_status_then_body() {
        let out = handle_to_bytes(br#"{"name":"Alux Nahual"}"#, ID, 5);
        assert_eq!(out[0], TAG_REJECTED);
        assert_eq!(u16::from_be_bytes([out[1], out[2]]), 422);
        let body: serde_json::Value = serde_json::from_slice(&out[3..]).expect("json");
        assert_eq!(body["field"], "album");
    }
}
