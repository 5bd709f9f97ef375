//! The `[L, L]` gate matrix of every chunk (TFLA's `D`), forward and backward, in tensor ops:
//! the forms of [`MlstmBackend::mlstm_gate_matrix`] and [`MlstmBackend::mlstm_gate_grads`]
//! (the cube backends run each as one kernel, `gate_kernel.rs`).
//!
//! Within a chunk of `L` tokens, `log D_ts = Σ_{s<u≤t} log f_u + ĩ_s` for `s ≤ t` (else
//! `M_EMPTY`), `stab_t = max(max_s log D_ts, m₀ + F_t)`, `A_ts = e^{log D_ts - stab_t}` and
//! `P = (Q Kᵀ)/sqrt(DQK) ∘ A` (eq. 21 within a chunk, as `xlstm_cells::mlstm`'s chunkwise
//! form; the range sums as `segment_sums` forms them).

use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor};
use xlstm_cells::mlstm::segment_sums;
use xlstm_gating::M_EMPTY;

use super::MlstmBackend;

/// What the outputs of the chunks take from their gate matrices.
#[derive(Debug, Clone)]
pub struct GateMatrix<B: Backend> {
    /// `P = (Q Kᵀ)/sqrt(DQK) ∘ A` `[G, L, L]`, rounded to the float type asked for; where the
    /// split was asked for `[G, 2L, L]`: the rounded `P` (rows `0..L`), then `P` minus it,
    /// rounded again (rows `L..2L`; their sum carries `P` to 2⁻¹⁶ of its rows' sums in bf16
    /// where one rounding does not), so that the two halves of `p V` sum to `P V`.
    pub p: Tensor<B, 3>,
    /// `max_{s≤t} log D_ts` `[G, L]`, f32.
    pub row_max: Tensor<B, 2>,
    /// The stabiliser `stab_t = max(max_{s≤t} log D_ts, m₀ + F_t)` `[G, L]`, f32.
    pub stab: Tensor<B, 2>,
    /// The start state's factor `g_t = e^{m₀+F_t-stab_t}` `[G, L]`, f32.
    pub gain: Tensor<B, 2>,
    /// The normaliser's inner product `Σ_s P_ts + g_t q_t·n₀` `[G, L]` (of the unrounded `P`),
    /// f32.
    pub qn: Tensor<B, 2>,
}

/// `log D [G, L, L]` of `log_f, log_i [G, L]`: `M_EMPTY` above the diagonal.
fn log_gate_matrix<B: Backend>(log_f: Tensor<B, 2>, log_i: Tensor<B, 2>) -> Tensor<B, 3> {
    let [g, len] = log_f.dims();
    let seg = segment_sums(log_f.reshape([1, 1, g, len])).reshape([g, len, len]); // [t, s]
    let causal: Tensor<B, 2, Bool> = Tensor::tril_mask([len, len], 0, &log_i.device());
    (seg + log_i.unsqueeze_dim::<3>(1))
        .mask_fill(causal.unsqueeze::<3>().expand([g, len, len]), M_EMPTY)
}

/// The tensor-op form of [`MlstmBackend::mlstm_gate_matrix`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_matrix<B: MlstmBackend>(
    scores: Tensor<B, 3>,
    log_f: Tensor<B, 2>,
    log_i: Tensor<B, 2>,
    log_start: Tensor<B, 2>,
    q: Tensor<B, 3>,
    n_start: Tensor<B, 2>,
    scale: f64,
    out: DType,
    split: bool,
) -> GateMatrix<B> {
    let [g, len, dqk] = q.dims();
    let qn0 = B::mlstm_matmul(
        q.reshape([1, 1, g, len, dqk]),
        n_start.cast(DType::F32).reshape([1, 1, g, dqk, 1]),
        DType::F32,
    )
    .reshape([g, len]);
    let log_d = log_gate_matrix(log_f, log_i);
    let row_max = log_d.clone().max_dim(2); // [G, L, 1]
    let log_start = log_start.unsqueeze_dim::<3>(2);
    let stab = row_max.clone().max_pair(log_start.clone());
    let gain = (log_start - stab.clone()).exp();
    let p = scores * ((log_d - stab.clone()).exp() * scale);
    let qn = p.clone().sum_dim(2).squeeze_dim(2) + qn0 * gain.clone().squeeze_dim(2);
    let p_high = p.clone().cast(out);
    let p = if split {
        let p_low = (p - p_high.clone().cast(DType::F32)).cast(out);
        Tensor::cat(vec![p_high, p_low], 1)
    } else {
        p_high
    };
    GateMatrix {
        p,
        row_max: row_max.squeeze_dim(2),
        stab: stab.squeeze_dim(2),
        gain: gain.squeeze_dim(2),
        qn,
    }
}

/// The tensor-op form of [`MlstmBackend::mlstm_gate_grads`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_grads<B: Backend>(
    scores: Tensor<B, 3>,
    dpv: Tensor<B, 3>,
    log_f: Tensor<B, 2>,
    log_i: Tensor<B, 2>,
    stab: Tensor<B, 2>,
    dqn: Tensor<B, 2>,
    dstab: Tensor<B, 2>,
    scale: f64,
    out: DType,
) -> (Tensor<B, 3>, Tensor<B, 2>, Tensor<B, 2>) {
    let len = log_f.dims()[1];
    let log_d = log_gate_matrix(log_f, log_i);
    let (_, arg) = log_d.clone().max_dim_with_indices(2); // [G, L, 1]
    let a = (log_d - stab.unsqueeze_dim(2)).exp();
    let p = scores * (a.clone() * scale);
    let dp = dpv + dqn.unsqueeze_dim(2);
    let ds = (dp.clone() * a).cast(out);
    let dlog_d = dp * p + one_hot(arg, len) * dstab.unsqueeze_dim(2);
    let rows = dlog_d.clone().sum_dim(2).squeeze_dim(2);
    let cols = dlog_d.sum_dim(1).squeeze_dim(1);
    (ds, rows, cols)
}

/// `1` at `index` along the last axis (of size `len`), f32: where a max sends its gradient.
pub(crate) fn one_hot<B: Backend, const D: usize>(
    index: Tensor<B, D, Int>,
    len: usize,
) -> Tensor<B, D> {
    let mut shape = index.dims();
    shape[D - 1] = len;
    let mut line = [1; D];
    line[D - 1] = len;
    let positions = Tensor::<B, 1, Int>::arange(0..len as i64, &index.device())
        .reshape(line)
        .expand(shape);
    index
        .expand(shape)
        .equal(positions)
        .float()
        .cast(DType::F32)
}
