//! Corrupt store bytes must decode to an error, never a panic:
//! `cargo +nightly fuzz run decode_entry` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgecache::store::entry::StoredResponse::decode(&bytes::Bytes::copy_from_slice(data));
});
