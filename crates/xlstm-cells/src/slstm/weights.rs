use burn::tensor::{backend::Backend, Tensor};

use super::GATES;
use crate::CellError;

/// The parameters the sLSTM recurrence itself uses (the input projection `W x` is computed
/// outside the cell, by one matmul over the whole sequence).
#[derive(Debug, Clone)]
pub struct SlstmWeights<B: Backend> {
    /// Block-diagonal recurrent weights `[NH, DH, 4·DH]`: `r[h, u, g·DH + j]` maps unit `u` of
    /// head `h` of `h_{t-1}` to gate `g` (i, f, z, o), unit `j` of head `h`.
    pub r: Tensor<B, 3>,
    /// Gate biases `[4·NH·DH]`, gate-major (i, f, z, o), then head, then unit.
    pub b: Tensor<B, 1>,
}

impl<B: Backend> SlstmWeights<B> {
    /// `(NH, DH)` after checking that `r` and `b` agree.
    pub fn dims(&self) -> Result<(usize, usize), CellError> {
        let [nh, dh, out] = self.r.dims();
        if nh == 0 || dh == 0 {
            return Err(CellError::new(
                "r",
                format!(
                    "heads and head dim must be positive, found {:?}",
                    self.r.dims()
                ),
            ));
        }
        CellError::check_shape("r", &[nh, dh, out], &[nh, dh, GATES * dh], "NH, DH, 4·DH")?;
        CellError::check_shape("b", &self.b.dims(), &[GATES * nh * dh], "4·NH·DH")?;
        Ok((nh, dh))
    }

    /// The recurrent weights in the official layout `[NH, 4·DH, DH]` (`R[h, g·DH + j, u]`).
    pub fn r_official(&self) -> Tensor<B, 3> {
        self.r.clone().swap_dims(1, 2)
    }

    /// Weights from the official layout `R [NH, 4·DH, DH]` and bias `[4·NH·DH]`.
    pub fn from_official(r: Tensor<B, 3>, b: Tensor<B, 1>) -> Self {
        Self {
            r: r.swap_dims(1, 2),
            b,
        }
    }
}
