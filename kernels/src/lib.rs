//! Compute below the model: token sampling and the judge's digit-probability extraction.
//!
//! These are the CPU reference implementations; device kernels (the `cuda` feature, later) are
//! tested against them.

pub mod judge_digits;
pub mod sampling;

/// The one error type of the kernels crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("invalid sampling parameters: {0}")]
    InvalidParams(String),
    #[error("digit token id {id} is outside the vocabulary of {vocab} tokens")]
    DigitOutOfVocab { id: u32, vocab: usize },
}
