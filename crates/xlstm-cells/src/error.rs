use std::fmt;

/// A cell was called with tensors whose shapes do not fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellError {
    /// The argument at fault, e.g. `"k"` or `"state.c"`.
    pub field: &'static str,
    /// What was expected and what was found.
    pub message: String,
}

impl CellError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// Error unless `found == expected`, naming `field` and the meaning of each axis.
    pub(crate) fn check_shape(
        field: &'static str,
        found: &[usize],
        expected: &[usize],
        axes: &str,
    ) -> Result<(), Self> {
        if found == expected {
            Ok(())
        } else {
            Err(Self::new(
                field,
                format!("expected shape {expected:?} ({axes}), found {found:?}"),
            ))
        }
    }
}

impl fmt::Display for CellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for CellError {}
