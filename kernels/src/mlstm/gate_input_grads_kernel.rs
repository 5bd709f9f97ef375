//! The gates' gradients of the chunkwise backward in one pass (the tensor-op form is
//! `backward::gate_input_grads`, ≈ 25 tensor ops over `[B, NH, NC, L]`): as the chunk-gates
//! kernel, a row of units per chunk, one unit per token (or a stride of tokens); each unit forms
//! its token's `d log w` and `rows - cols + dlog_start` into shared memory, then sums the
//! chunk's terms after and before it in token order, and writes `dĩ` and `df̃` for the tokens
//! before `S`.

use cubecl::prelude::*;

use super::chunk_gates_kernel::chunk_of_row;

/// `dĩ [B, NH, S]` and `df̃ [B, NH, S]` (contiguous) from the chunk terms `[G, L]` and
/// per-chunk `[G]` (f32, contiguous; `w_arg` as f32), a row of units per chunk
/// ([`chunk_of_row`]); `f_pre` in any strides.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_input_grads_kernel<F: Float>(
    rows: &Tensor<f32>,       // [G, L]
    cols: &Tensor<f32>,       // [G, L]
    dlog_start: &Tensor<f32>, // [G, L]
    k_dot: &Tensor<f32>,      // [G, L]
    w: &Tensor<f32>,          // [G, L]
    w_arg: &Tensor<f32>,      // [G]
    d_loc: &Tensor<f32>,      // [G]
    d_dec: &Tensor<f32>,      // [G]
    f_pre: &Tensor<F>,        // [B, NH, S], f̃
    di: &mut Tensor<F>,       // [B, NH, S]
    df: &mut Tensor<F>,       // [B, NH, S]
    scale: f32,
    #[comptime] l: usize,
    #[comptime] per_cube: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = UNIT_POS_Y as usize;
    let g = chunk_of_row(per_cube);
    let inside = g < rows.shape(0);
    let (nh, s) = (f_pre.shape(1), f_pre.shape(2));
    let nc = s.div_ceil(l);
    let (bh, c) = (g / nc, g % nc);
    let (b, h) = (bh / nh, bh % nh);
    let mut log_w_grad = SharedMemory::<f32>::new(comptime!(per_cube * l));
    let mut range_term = SharedMemory::<f32>::new(comptime!(per_cube * l));
    let first = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    for t in range_stepped(first, l, step) {
        let mut dw = 0.0f32;
        let mut x = 0.0f32;
        if inside {
            let at = g * l + t;
            dw = k_dot[at] * w[at] * scale;
            if f32::cast_from(t) == w_arg[g] {
                dw += d_loc[g];
            }
            x = rows[at] - cols[at] + dlog_start[at];
        }
        log_w_grad[row * l + t] = dw;
        range_term[row * l + t] = x;
    }
    // Protects: the chunk's terms are all in shared memory before the sums read them.
    sync_cube();
    for t in range_stepped(first, l, step) {
        let token = c * l + t;
        if inside && token < s {
            // Σ_{u≥t} of the range terms from the last token down, Σ_{u≤t} d log w from the
            // first: the orders of the tensor ops' cumulative sums.
            let mut after = 0.0f32;
            for r in 0..l - t {
                after += range_term[row * l + l - 1 - r];
            }
            let mut before = 0.0f32;
            for u in 0..t + 1 {
                before += log_w_grad[row * l + u];
            }
            let dw = log_w_grad[row * l + t];
            let dlog_f = after + (before - dw) + d_dec[g];
            let f = f32::cast_from(
                f_pre[b * f_pre.stride(0) + h * f_pre.stride(1) + token * f_pre.stride(2)],
            );
            // σ(-f̃) = 1 / (1 + e^{f̃}).
            let sig = 1.0f32 / (1.0f32 + f.exp());
            let out = (b * nh + h) * s + token;
            di[out] = F::cast_from(cols[g * l + t] + dw);
            df[out] = F::cast_from(dlog_f * sig);
        }
    }
}
