use burn::tensor::{backend::Backend, Tensor};

use crate::CellError;

/// The recurrent state of the mLSTM cell, per batch entry and head.
#[derive(Debug, Clone)]
pub struct MlstmState<B: Backend> {
    /// Matrix memory `C = Σ i·f… k vᵀ` with keys scaled by `1/sqrt(DQK)`: `[B, NH, DQK, DV]`.
    pub c: Tensor<B, 4>,
    /// Normaliser `n = Σ i·f… k`: `[B, NH, DQK]`.
    pub n: Tensor<B, 3>,
    /// Stabiliser `m` (log scale of `C` and `n`): `[B, NH]`.
    pub m: Tensor<B, 2>,
}

impl<B: Backend> MlstmState<B> {
    /// The official initial state: `C = 0`, `n = 0`, `m = 0`.
    ///
    /// Allocated flat, then viewed in shape: burn's GPU layout pads the rows of a tensor
    /// allocated with its shape (e.g. `DV` = 192 f32 entries to 256), and a padded state is
    /// copied wherever its dims are merged (the chunkwise kernels see `C` as `[B·NH, DQK·DV]`).
    pub fn zeros(batch: usize, heads: usize, dqk: usize, dv: usize, device: &B::Device) -> Self {
        Self {
            c: Tensor::<B, 1>::zeros([batch * heads * dqk * dv], device)
                .reshape([batch, heads, dqk, dv]),
            n: Tensor::<B, 1>::zeros([batch * heads * dqk], device).reshape([batch, heads, dqk]),
            m: Tensor::zeros([batch, heads], device),
        }
    }

    /// An empty memory: `C = 0`, `n = 0` and `m = -∞` (in practice [`xlstm_gating::M_EMPTY`]),
    /// which contributes nothing to any output. This is what the official *parallel* form
    /// starts from; the official recurrent and chunkwise forms start from [`Self::zeros`].
    pub fn empty(batch: usize, heads: usize, dqk: usize, dv: usize, device: &B::Device) -> Self {
        let mut state = Self::zeros(batch, heads, dqk, dv, device);
        state.m = Tensor::full([batch, heads], xlstm_gating::M_EMPTY, device);
        state
    }

    /// `state` after checking that it fits `[batch, heads, dqk, dv]`, or the official initial
    /// state ([`Self::zeros`]) where there is none.
    pub fn given_or_zeros(
        state: Option<Self>,
        [batch, heads, dqk, dv]: [usize; 4],
        device: &B::Device,
    ) -> Result<Self, CellError> {
        match state {
            Some(state) => {
                state.check(batch, heads, dqk, dv)?;
                Ok(state)
            }
            None => Ok(Self::zeros(batch, heads, dqk, dv, device)),
        }
    }

    /// `[B, NH, DQK, DV]` of this state.
    pub fn dims(&self) -> [usize; 4] {
        self.c.dims()
    }

    /// Error unless this state fits `[batch, heads, dqk, dv]`.
    pub fn check(
        &self,
        batch: usize,
        heads: usize,
        dqk: usize,
        dv: usize,
    ) -> Result<(), CellError> {
        CellError::check_shape(
            "state.c",
            &self.c.dims(),
            &[batch, heads, dqk, dv],
            "B, NH, DQK, DV",
        )?;
        CellError::check_shape(
            "state.n",
            &self.n.dims(),
            &[batch, heads, dqk],
            "B, NH, DQK",
        )?;
        CellError::check_shape("state.m", &self.m.dims(), &[batch, heads], "B, NH")
    }

    /// Detach every tensor from the autodiff graph (truncated backpropagation through time).
    pub fn detach(self) -> Self {
        Self {
            c: self.c.detach(),
            n: self.n.detach(),
            m: self.m.detach(),
        }
    }

    /// The batch entries `start..start + len`.
    pub fn narrow_batch(&self, start: usize, len: usize) -> Self {
        Self {
            c: self.c.clone().narrow(0, start, len),
            n: self.n.clone().narrow(0, start, len),
            m: self.m.clone().narrow(0, start, len),
        }
    }

    /// The states of groups of batch entries `parts` joined along the batch, in order.
    pub fn cat_batch(parts: Vec<Self>) -> Self {
        Self {
            c: Tensor::cat(parts.iter().map(|p| p.c.clone()).collect(), 0),
            n: Tensor::cat(parts.iter().map(|p| p.n.clone()).collect(), 0),
            m: Tensor::cat(parts.iter().map(|p| p.m.clone()).collect(), 0),
        }
    }
}
