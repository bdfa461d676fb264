//! The one error type of the pipeline crate.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The input cannot be read at all (as opposed to a bad record, which becomes a reject).
    #[error("input {location}: {message}")]
    Input { location: String, message: String },
    #[error("output {location}: {message}")]
    Output { location: String, message: String },
    /// A storage request failed; `retryable` when the failure was transient (5xx, throttling,
    /// resets, timeouts) even after the retries, so rerunning the same command may succeed.
    #[error("storage {location}: {message}{}", if *retryable { " (transient: rerun the same command to resume)" } else { "" })]
    Storage {
        location: String,
        message: String,
        retryable: bool,
    },
    /// The output holds committed runs that this run cannot be added to.
    #[error("{0}")]
    RunConflict(String),
    #[error("storage location `{location}`: {message}")]
    Location { location: String, message: String },
    #[error(
        "{count} records were rejected, more than max_rejects allows ({limit}); first: {first}"
    )]
    TooManyRejects {
        count: u64,
        limit: String,
        first: String,
    },
    #[error(transparent)]
    Model(#[from] steerflow_models::ModelError),
    #[error(transparent)]
    Operator(#[from] steerflow_operators::OperatorError),
    #[error("dataflow worker failed: {0}")]
    Worker(String),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}
