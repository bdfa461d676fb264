//! Content digests: run ids, lineages, input identities and part checksums are XXH3-128 hex
//! strings of what they stand for.

use xxhash_rust::xxh3::xxh3_128;

/// A hex digest of `bytes` (XXH3-128).
pub fn digest(bytes: &[u8]) -> String {
    format!("{:032x}", xxh3_128(bytes))
}
