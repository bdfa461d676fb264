//! The one error type of the models crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} is not a usable GGUF file: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("model file {path} does not exist (models are given as `default`, a path to a .gguf file, or a directory)")]
    NotFound { path: PathBuf },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("installing the default model {model}: {message}")]
    Install { model: String, message: String },
    #[error("input of {tokens} tokens does not fit the context of {limit} tokens ({what})")]
    ContextOverflow {
        tokens: usize,
        limit: usize,
        what: String,
    },
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Kernel(#[from] steerflow_kernels::KernelError),
    #[error("judge: {0}")]
    Judge(String),
    /// A served model (an OpenAI-compatible server, a reward server) failed; `transient` when
    /// it stayed unavailable (429, 5xx, resets, timeouts) through every retry, so rerunning the
    /// same command may succeed.
    #[error("served model {endpoint}: {message}{}", if *transient { " (transient: the server stayed unavailable through the retries; rerun the same command to resume)" } else { "" })]
    Served {
        endpoint: String,
        message: String,
        transient: bool,
    },
}

impl ModelError {
    /// True when the error belongs to one input record (it goes to rejects) rather than to the
    /// model or the machine (the job stops).
    pub fn is_record_error(&self) -> bool {
        matches!(
            self,
            ModelError::ContextOverflow { .. } | ModelError::Template(_)
        )
    }

    /// True when a served model stayed unavailable through its retries: the run stops with the
    /// transient-failure exit code and nothing committed, and a rerun resumes.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ModelError::Served {
                transient: true,
                ..
            }
        )
    }
}
