//! The jobs crate's one error type, with the exit code of the `steerflow` command for each.

/// Exit codes of the `steerflow` command.
pub mod exit_code {
    /// The run failed (model, storage, worker).
    pub const FAILURE: i32 = 1;
    /// The command line or the job file is wrong.
    pub const CONFIG: i32 = 2;
    /// More records were rejected than `input.max_rejects` allows.
    pub const TOO_MANY_REJECTS: i32 = 3;
    /// Storage or a served model failed in a way that may pass (5xx, throttling, resets,
    /// timeouts, after the retries): nothing partial was committed; rerun the same command to
    /// resume.
    pub const RETRYABLE: i32 = 4;
}

/// A problem with the configuration (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("--set {item}: {message}")]
    Override { item: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// Any failure of a job, with its exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pipeline(#[from] steerflow_pipeline::PipelineError),
    #[error(transparent)]
    Model(#[from] steerflow_models::ModelError),
}

impl JobError {
    pub fn exit_code(&self) -> i32 {
        use steerflow_pipeline::PipelineError as P;
        match self {
            JobError::Config(_) => exit_code::CONFIG,
            JobError::Pipeline(P::TooManyRejects { .. }) => exit_code::TOO_MANY_REJECTS,
            JobError::Pipeline(P::Operator(_)) | JobError::Pipeline(P::RunConflict(_)) => {
                exit_code::CONFIG
            }
            JobError::Pipeline(P::Storage {
                retryable: true, ..
            }) => exit_code::RETRYABLE,
            JobError::Pipeline(P::Model(e)) | JobError::Model(e) if e.is_transient() => {
                exit_code::RETRYABLE
            }
            _ => exit_code::FAILURE,
        }
    }
}

/// A configuration error (exit code 2) with `message`.
pub fn invalid(message: impl Into<String>) -> JobError {
    JobError::Config(ConfigError::Invalid(message.into()))
}
