//! Errors of training.

/// What can go wrong while training, saving or resuming.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The data could not be made.
    #[error("data: {0}")]
    Data(String),
    /// The model rejected its input.
    #[error("model: {0}")]
    Model(String),
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// burn's recorder failed.
    #[error("checkpoint {path}: {message}")]
    Record {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        message: String,
    },
    /// The model has NaN/Inf weights: nothing is written.
    #[error("refusing to write a checkpoint at step {step}: {count} weights are NaN or infinite")]
    NonFiniteWeights {
        /// The step.
        step: usize,
        /// How many weights are not finite.
        count: usize,
    },
}

impl TrainError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        TrainError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}
