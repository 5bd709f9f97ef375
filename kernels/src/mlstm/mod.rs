//! The mLSTM chunkwise form and recurrent step as backend primitives.
//!
//! With the `cube` feature (turned on by `wgpu` / `cuda`), burn's cube backends run fused
//! kernels: the generation step in one launch (`step_kernel.rs`) and the chunkwise forward in
//! two (`chunk_kernel.rs`, TFLA-style). Other backends, and shapes or float types the kernels
//! do not take, use the tensor-op reference of `xlstm_cells::mlstm`.

mod backward;
#[cfg(feature = "cube")]
mod chunk_kernel;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cube")]
mod step_kernel;

#[cfg(feature = "cube")]
pub use cube::DEFAULT_CHUNK;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    Tensor,
};
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

    /// Gradients of [`Self::mlstm_chunkwise`] from `state` (the zero state where the forward had
    /// none): `dh [B, NH, S, DV]` and `dstate` are the gradients of its outputs. Returns the
    /// gradients of the five inputs and of the three state tensors, each in its tensor's float
    /// type. The default is TFLA's backward in tensor ops (`backward.rs`), memory
    /// O(S · (chunk + DQK · DV / chunk)).
    fn mlstm_chunkwise_backward(
        x: &MlstmInputs<Self>,
        state: MlstmState<Self>,
        chunk_size: usize,
        dh: Tensor<Self, 4>,
        dstate: MlstmState<Self>,
    ) -> (MlstmInputs<Self>, MlstmState<Self>) {
        backward::chunkwise_backward(x, state, chunk_size, dh, dstate)
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

/// Under autodiff, inputs that carry no gradient (inference, generation) run the inner
/// backend's primitive — the kernels on cube backends; tracked inputs run the tensor-op
/// reference, whose backward autodiff derives (memory O(S · chunk)).
impl<B: MlstmBackend, C: CheckpointStrategy> MlstmBackend for Autodiff<B, C> {
    fn mlstm_chunkwise(
        x: &MlstmInputs<Self>,
        state: Option<MlstmState<Self>>,
        chunk_size: usize,
    ) -> Result<(Tensor<Self, 4>, MlstmState<Self>), CellError> {
        let tracked = [&x.q, &x.k, &x.v].iter().any(|t| in_graph(t))
            || [&x.i_preact, &x.f_preact].iter().any(|t| in_graph(t))
            || state.as_ref().is_some_and(state_tracked);
        if tracked {
            return xlstm_cells::mlstm::chunkwise(x, state, chunk_size);
        }
        let inner = MlstmInputs {
            q: x.q.clone().inner(),
            k: x.k.clone().inner(),
            v: x.v.clone().inner(),
            i_preact: x.i_preact.clone().inner(),
            f_preact: x.f_preact.clone().inner(),
        };
        let (h, state) = B::mlstm_chunkwise(&inner, state.map(inner_state), chunk_size)?;
        Ok((Tensor::from_inner(h), outer_state(state)))
    }

    fn mlstm_step(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        i_preact: Tensor<Self, 2>,
        f_preact: Tensor<Self, 2>,
        state: Option<MlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, MlstmState<Self>), CellError> {
        let tracked = [&q, &k, &v].iter().any(|t| in_graph(t))
            || [&i_preact, &f_preact].iter().any(|t| in_graph(t))
            || state.as_ref().is_some_and(state_tracked);
        if tracked {
            return xlstm_cells::mlstm::step(q, k, v, i_preact, f_preact, state);
        }
        let (h, state) = B::mlstm_step(
            q.inner(),
            k.inner(),
            v.inner(),
            i_preact.inner(),
            f_preact.inner(),
            state.map(inner_state),
        )?;
        Ok((Tensor::from_inner(h), outer_state(state)))
    }
}

/// Whether `t` takes part in the autodiff graph: a tracked leaf *or* computed from one.
/// (`Tensor::is_require_grad` is true for leaves only, so it misses every activation.)
fn in_graph<B: Backend, C: CheckpointStrategy, const D: usize>(
    t: &Tensor<Autodiff<B, C>, D>,
) -> bool {
    !t.clone()
        .into_primitive()
        .tensor()
        .node
        .requirement
        .is_none()
}

fn state_tracked<B: Backend, C: CheckpointStrategy>(s: &MlstmState<Autodiff<B, C>>) -> bool {
    in_graph(&s.c) || in_graph(&s.n) || in_graph(&s.m)
}

fn inner_state<B: AutodiffBackend>(s: MlstmState<B>) -> MlstmState<B::InnerBackend> {
    MlstmState {
        c: s.c.inner(),
        n: s.n.inner(),
        m: s.m.inner(),
    }
}

fn outer_state<B: AutodiffBackend>(s: MlstmState<B::InnerBackend>) -> MlstmState<B> {
    MlstmState {
        c: Tensor::from_inner(s.c),
        n: Tensor::from_inner(s.n),
        m: Tensor::from_inner(s.m),
    }
}
