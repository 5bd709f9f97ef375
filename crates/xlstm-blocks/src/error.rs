use xlstm_cells::CellError;

/// A configuration value is out of its valid range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `{field}`: {message}")]
pub struct ConfigError {
    /// The field at fault, e.g. `"mlstm.num_heads"`.
    pub field: String,
    /// The constraint that failed.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Error unless `cond`.
    pub(crate) fn ensure(
        cond: bool,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<(), Self> {
        if cond {
            Ok(())
        } else {
            Err(Self::new(field, message))
        }
    }
}

/// A forward / step call failed (bad input shapes or a state that does not fit the model).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Cell(#[from] CellError),
    #[error("invalid `{field}`: {message}")]
    Input {
        field: &'static str,
        message: String,
    },
}

impl ModelError {
    pub(crate) fn input(field: &'static str, message: impl Into<String>) -> Self {
        Self::Input {
            field,
            message: message.into(),
        }
    }
}
