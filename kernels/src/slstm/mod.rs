//! The sLSTM recurrence as a backend primitive.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{backend::Backend, Tensor};
use xlstm_cells::slstm::{SlstmState, SlstmWeights};
use xlstm_cells::CellError;

/// The sLSTM recurrence over a sequence; see [`xlstm_cells::slstm::sequence`] for the math,
/// shapes and errors. The default is that tensor-op reference.
pub trait SlstmBackend: Backend {
    /// `wx [B, S, 4·H]` (gate, head, unit) → `h [B, S, H]` and the final state.
    fn slstm_sequence(
        wx: Tensor<Self, 3>,
        weights: &SlstmWeights<Self>,
        state: Option<SlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, SlstmState<Self>), CellError> {
        xlstm_cells::slstm::sequence(wx, weights, state)
    }
}

impl SlstmBackend for NdArray<f32> {}
impl SlstmBackend for NdArray<f64> {}

impl<B: SlstmBackend, C: CheckpointStrategy> SlstmBackend for Autodiff<B, C> {}
