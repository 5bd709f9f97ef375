//! The sLSTM recurrence as a backend primitive.
//!
//! [`SlstmBackend::slstm_sequence`] is what models call. Its default is the tensor-op reference
//! [`xlstm_cells::slstm::sequence`]. A backend with a fused kernel (burn's cube backends, with
//! the feature `cube`) overrides the two primitive hooks [`SlstmBackend::slstm_fused_forward`]
//! and [`SlstmBackend::slstm_fused_backward`]; `Autodiff<B>` then runs the kernel forward and
//! registers the kernel backward, so training through the cells uses it without knowing.
//!
//! The packed layout the hooks share (`H = NH·DH`):
//! - `state0 [4, B, H]`: the initial `h, c, n, m` stacked;
//! - `out [B, S + 3, H]`: `h_1 … h_S`, then the final `c_S`, `n_S`, `m_S` (the final `h_S` is
//!   row `S - 1`).

mod autodiff;
mod cpu;
#[cfg(feature = "cube")]
pub mod cube;

use burn::backend::NdArray;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use xlstm_cells::slstm::{SlstmState, SlstmWeights, GATES};
use xlstm_cells::CellError;

/// The forward result of a fused sLSTM kernel.
#[derive(Debug)]
pub struct SlstmFused<B: Backend> {
    /// `[B, S + 3, H]`: `h_1 … h_S`, then `c_S`, `n_S`, `m_S`.
    pub out: FloatTensor<B>,
    /// What the backward needs (present when the forward was asked to save it).
    pub saved: Option<SlstmSaved<B>>,
}

/// The tensors the fused backward reads, saved by the fused forward.
#[derive(Debug, Clone)]
pub struct SlstmSaved<B: Backend> {
    /// Recurrent weights `[NH, DH, 4·DH]`.
    pub r: FloatTensor<B>,
    /// Initial state `[4, B, H]` (h, c, n, m).
    pub state0: FloatTensor<B>,
    /// The forward output `[B, S + 3, H]`.
    pub out: FloatTensor<B>,
    /// Gate pre-activations `W x + R h + b`, `[B, S, 4·H]`, f32.
    pub gates: FloatTensor<B>,
    /// `c_t, n_t, m_t` after every step, f32: `[3, B, S, H]` on the CPU; the cube kernels
    /// add a fourth plane, `h_{t-1}` head-major (`[NH, B, S, DH]`), for the `dR` matmul, so
    /// theirs is `[4, B, S, H]`.
    pub states: FloatTensor<B>,
}

/// Gradients of the fused sLSTM with respect to its four inputs.
#[derive(Debug)]
pub struct SlstmFusedGrads<B: Backend> {
    /// `[B, S, 4·H]`.
    pub wx: FloatTensor<B>,
    /// `[NH, DH, 4·DH]`.
    pub r: FloatTensor<B>,
    /// `[4·H]`.
    pub b: FloatTensor<B>,
    /// `[4, B, H]`.
    pub state0: FloatTensor<B>,
}

/// The sLSTM recurrence over a sequence; see [`xlstm_cells::slstm::sequence`] for the math,
/// shapes and errors. The default runs this backend's fused hook where it has one, else that
/// tensor-op reference.
pub trait SlstmBackend: Backend {
    /// `wx [B, S, 4·H]` (gate, head, unit) → `h [B, S, H]` and the final state.
    fn slstm_sequence(
        wx: Tensor<Self, 3>,
        weights: &SlstmWeights<Self>,
        state: Option<SlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, SlstmState<Self>), CellError> {
        fused_or_reference(wx, weights, state)
    }

    /// The fused forward on primitives (`wx [B, S, 4·H]`, `r [NH, DH, 4·DH]`, `b [4·H]`,
    /// `state0 [4, B, H]`, shapes already checked), saving what the backward needs when `save`.
    /// `None` where this backend has no kernel for these sizes or dtypes: the caller then
    /// uses the reference. The default has no kernel.
    fn slstm_fused_forward(
        _wx: FloatTensor<Self>,
        _r: FloatTensor<Self>,
        _b: FloatTensor<Self>,
        _state0: FloatTensor<Self>,
        _save: bool,
    ) -> Option<SlstmFused<Self>> {
        None
    }

    /// The backward of [`SlstmBackend::slstm_fused_forward`], given the gradient of its packed
    /// output `[B, S + 3, H]`. Called only with tensors that this backend's own fused forward
    /// saved, so a backend that overrides the forward overrides this too.
    fn slstm_fused_backward(
        saved: SlstmSaved<Self>,
        _dout: FloatTensor<Self>,
    ) -> SlstmFusedGrads<Self> {
        let _ = saved;
        unreachable!("slstm_fused_backward: this backend's slstm_fused_forward saved no state")
    }
}

/// `NdArray<f32>` runs the fused recurrence as plain Rust loops (`cpu.rs`).
impl SlstmBackend for NdArray<f32> {
    fn slstm_fused_forward(
        wx: FloatTensor<Self>,
        r: FloatTensor<Self>,
        b: FloatTensor<Self>,
        state0: FloatTensor<Self>,
        save: bool,
    ) -> Option<SlstmFused<Self>> {
        Some(cpu::forward(wx, r, b, state0, save))
    }

    fn slstm_fused_backward(
        saved: SlstmSaved<Self>,
        dout: FloatTensor<Self>,
    ) -> SlstmFusedGrads<Self> {
        cpu::backward(saved, dout)
    }
}
impl SlstmBackend for NdArray<f64> {}

/// Checks the shapes as the reference does and returns `(batch, seq, NH, DH)`.
fn check_inputs<B: Backend>(
    wx: &Tensor<B, 3>,
    weights: &SlstmWeights<B>,
    state: Option<&SlstmState<B>>,
) -> Result<(usize, usize, usize, usize), CellError> {
    let (nh, dh) = weights.dims()?;
    let [batch, seq, width] = wx.dims();
    if width != GATES * nh * dh || seq == 0 {
        return Err(CellError {
            field: "wx",
            message: format!(
                "expected shape [B, S, 4·NH·DH] = [{batch}, S ≥ 1, {}], found {:?}",
                GATES * nh * dh,
                wx.dims()
            ),
        });
    }
    if let Some(state) = state {
        state.check(batch, nh * dh)?;
    }
    Ok((batch, seq, nh, dh))
}

/// The initial state packed `[4, B, H]` (zeros for `None`).
fn pack_state<B: Backend>(
    state: Option<SlstmState<B>>,
    wx: &Tensor<B, 3>,
    hidden: usize,
) -> Tensor<B, 3> {
    match state {
        Some(s) => Tensor::stack(vec![s.h, s.c, s.n, s.m], 0),
        None => Tensor::<B, 3>::zeros([4, wx.dims()[0], hidden], &wx.device()).cast(wx.dtype()),
    }
}

/// Splits the packed output `[B, S + 3, H]` into `h [B, S, H]` and the final state.
fn unpack_output<B: Backend>(out: Tensor<B, 3>, seq: usize) -> (Tensor<B, 3>, SlstmState<B>) {
    let [batch, _, hidden] = out.dims();
    let row = |t: usize| out.clone().narrow(1, t, 1).reshape([batch, hidden]);
    let state = SlstmState {
        h: row(seq - 1),
        c: row(seq),
        n: row(seq + 1),
        m: row(seq + 2),
    };
    (out.narrow(1, 0, seq), state)
}

/// `slstm_sequence` through the fused kernel of `B` where it has one, else the reference
/// (the trait's default; the forward saves nothing, `Autodiff<B>` has its own).
fn fused_or_reference<B: SlstmBackend>(
    wx: Tensor<B, 3>,
    weights: &SlstmWeights<B>,
    state: Option<SlstmState<B>>,
) -> Result<(Tensor<B, 3>, SlstmState<B>), CellError> {
    let (_, seq, nh, dh) = check_inputs(&wx, weights, state.as_ref())?;
    let state0 = pack_state(state.clone(), &wx, nh * dh);
    let fused = B::slstm_fused_forward(
        wx.clone().into_primitive().tensor(),
        weights.r.clone().into_primitive().tensor(),
        weights.b.clone().into_primitive().tensor(),
        state0.into_primitive().tensor(),
        false,
    );
    match fused {
        Some(fused) => Ok(unpack_output(
            Tensor::from_primitive(TensorPrimitive::Float(fused.out)),
            seq,
        )),
        None => xlstm_cells::slstm::sequence(wx, weights, state),
    }
}

/// `dR` and `db` from the pre-activation gradients `dgates [B, S, 4·H]`: both are sums over
/// batch and time, `dR[h] = Σ_{b,t} h_{t-1}[b, h]ᵀ dgates_t[b, h]` (one batched matmul over
/// heads) and `db = Σ_{b,t} dgates_t`. `out [B, S + 3, H]` is the packed forward output (for
/// `h_1 … h_{S-1}`), `state0 [4, B, H]` the initial state (for `h_0`).
pub fn recurrent_grads<B: Backend>(
    out: Tensor<B, 3>,
    state0: Tensor<B, 3>,
    dgates: Tensor<B, 3>,
    nh: usize,
) -> (Tensor<B, 3>, Tensor<B, 1>) {
    let [batch, seq, width] = dgates.dims();
    let hidden = width / GATES;
    let dh = hidden / nh;
    let h0 = state0.narrow(0, 0, 1).swap_dims(0, 1);
    let h_prev = match seq {
        1 => h0,
        _ => Tensor::cat(vec![h0, out.narrow(1, 0, seq - 1)], 1),
    };
    // [B·S, NH, DH] → [NH, DH, B·S]
    let h_prev = h_prev.reshape([batch * seq, nh, dh]).permute([1, 2, 0]);
    // [B·S, 4, NH, DH] → [NH, B·S, 4·DH]
    let dg = dgates
        .clone()
        .reshape([batch * seq, GATES, nh, dh])
        .permute([2, 0, 1, 3])
        .reshape([nh, batch * seq, GATES * dh]);
    let dr = h_prev.matmul(dg);
    let db = dgates
        .reshape([batch * seq, width])
        .sum_dim(0)
        .reshape([width]);
    (dr, db)
}
