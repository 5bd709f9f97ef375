use burn::tensor::{backend::Backend, Tensor};

use crate::CellError;

/// The recurrent state of the sLSTM cell, each `[B, H]` with `H = NH·DH`.
#[derive(Debug, Clone)]
pub struct SlstmState<B: Backend> {
    /// Hidden state `h` (the only state fed back through the recurrent weights).
    pub h: Tensor<B, 2>,
    /// Cell state `c` (scaled by `exp(-m)`).
    pub c: Tensor<B, 2>,
    /// Normaliser state `n` (scaled by `exp(-m)`).
    pub n: Tensor<B, 2>,
    /// Stabiliser state `m`.
    pub m: Tensor<B, 2>,
}

impl<B: Backend> SlstmState<B> {
    /// The official initial state: everything zero.
    pub fn zeros(batch: usize, hidden: usize, device: &B::Device) -> Self {
        let z = Tensor::zeros([batch, hidden], device);
        Self {
            h: z.clone(),
            c: z.clone(),
            n: z.clone(),
            m: z,
        }
    }

    /// Error unless every tensor is `[batch, hidden]`.
    pub fn check(&self, batch: usize, hidden: usize) -> Result<(), CellError> {
        let want = [batch, hidden];
        CellError::check_shape("state.h", &self.h.dims(), &want, "B, H")?;
        CellError::check_shape("state.c", &self.c.dims(), &want, "B, H")?;
        CellError::check_shape("state.n", &self.n.dims(), &want, "B, H")?;
        CellError::check_shape("state.m", &self.m.dims(), &want, "B, H")
    }

    /// Detach every tensor from the autodiff graph (truncated backpropagation through time).
    pub fn detach(self) -> Self {
        Self {
            h: self.h.detach(),
            c: self.c.detach(),
            n: self.n.detach(),
            m: self.m.detach(),
        }
    }
}
