//! The mLSTM chunkwise form and recurrent step as backend primitives.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{backend::Backend, Tensor};
use xlstm_cells::mlstm::{MlstmInputs, MlstmState};
use xlstm_cells::CellError;

/// The mLSTM primitives; see [`xlstm_cells::mlstm`] for the math, shapes and errors. The
/// defaults are those tensor-op references.
pub trait MlstmBackend: Backend {
    /// Chunkwise form over a sequence: `h [B, NH, S, DV]` and the final state.
    fn mlstm_chunkwise(
        x: &MlstmInputs<Self>,
        state: Option<MlstmState<Self>>,
        chunk_size: usize,
    ) -> Result<(Tensor<Self, 4>, MlstmState<Self>), CellError> {
        xlstm_cells::mlstm::chunkwise(x, state, chunk_size)
    }

    /// One recurrent step: `q, k [B, NH, DQK]`, `v [B, NH, DV]`, gates `[B, NH]` →
    /// `h [B, NH, DV]` and the new state.
    fn mlstm_step(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        i_preact: Tensor<Self, 2>,
        f_preact: Tensor<Self, 2>,
        state: Option<MlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, MlstmState<Self>), CellError> {
        xlstm_cells::mlstm::step(q, k, v, i_preact, f_preact, state)
    }
}

impl MlstmBackend for NdArray<f32> {}
impl MlstmBackend for NdArray<f64> {}

impl<B: MlstmBackend, C: CheckpointStrategy> MlstmBackend for Autodiff<B, C> {}
