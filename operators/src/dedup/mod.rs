//! Deduplication and decontamination, the pure parts: text normalisation and shingles
//! (`text.rs`), MinHash signatures, LSH bands and the signature estimate of Jaccard similarity
//! (`minhash.rs`), the n-grams of decontamination (`ngrams.rs`), exact Jaccard by brute force,
//! the reference the others are measured against (`jaccard.rs`), and which copy of a cluster
//! is kept (`keep.rs`). The clustering itself runs on differential-dataflow in
//! `steerflow-pipeline` (`dataflow/dedup.rs`).

pub mod jaccard;
pub mod keep;
pub mod minhash;
pub mod ngrams;
pub mod text;

pub use keep::KeepRule;
pub use minhash::{MinHashParams, MinHasher, Signature};
pub use text::{ShingleUnit, TextNorm};
