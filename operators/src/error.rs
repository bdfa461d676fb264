//! The one error type of the operators crate.

/// Errors raised by the pure stages: always a problem with configuration or data, never I/O.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum OperatorError {
    /// A goodness preset name that does not exist.
    #[error("unknown goodness preset `{name}` (known: {known})")]
    UnknownPreset { name: String, known: String },
    /// A weight names an attribute the scorer does not produce.
    #[error("goodness weight for `{attribute}` is {weight}, but the scorer produces no such attribute (it produces: {available})")]
    MissingAttribute {
        attribute: String,
        weight: f64,
        available: String,
    },
    /// A weight that is NaN or infinite.
    #[error("goodness weight for `{attribute}` must be a finite number, got {weight}")]
    NonFiniteWeight { attribute: String, weight: f64 },
    /// Reference statistics that cannot normalise anything.
    #[error("normalisation reference stats need a finite mean and a finite std > 0, got mean={mean}, std={std}")]
    InvalidReferenceStats { mean: f64, std: f64 },
}
