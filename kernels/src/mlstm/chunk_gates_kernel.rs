//! The gates of every chunk in one pass (the tensor-op form is `chunked::chunk_gates`): one
//! unit per chunk of `L` tokens walks its tokens forward (`ĩ`, `log σ(f̃)` and the running sum
//! `F_t`), then backward (the sums after each token, for `log w_s`). Tokens past `S` are padding:
//! `ĩ = M_EMPTY`, `log f = 0`, as the reference pads.

use cubecl::prelude::*;

/// One unit per chunk `g = (b · NH + h) · NC + c`; the pre-activations in any strides, the
/// outputs contiguous `[G, L]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_gates_kernel<F: Float>(
    i_pre: &Tensor<F>,       // [B, NH, S], ĩ
    f_pre: &Tensor<F>,       // [B, NH, S], f̃
    log_i: &mut Tensor<f32>, // [G, L]
    log_f: &mut Tensor<f32>, // [G, L], log σ(f̃)
    f_cum: &mut Tensor<f32>, // [G, L], F_t = Σ_{u≤t} log f_u
    log_w: &mut Tensor<f32>, // [G, L], ĩ_s + Σ_{u>s} log f_u
    #[comptime] l: usize,
    #[define(F)] _dtype: StorageType,
) {
    let g = ABSOLUTE_POS;
    if g < log_i.shape(0) {
        let (nh, s) = (i_pre.shape(1), i_pre.shape(2));
        let nc = s.div_ceil(l);
        let (bh, c) = (g / nc, g % nc);
        let (b, h) = (bh / nh, bh % nh);
        let at_i = b * i_pre.stride(0) + h * i_pre.stride(1);
        let at_f = b * f_pre.stride(0) + h * f_pre.stride(1);
        let mut sum = 0.0f32;
        for t in 0..l {
            let token = c * l + t;
            let mut li = f32::new(-1.0e30); // M_EMPTY
            let mut lf = 0.0f32;
            if token < s {
                li = f32::cast_from(i_pre[at_i + token * i_pre.stride(2)]);
                let x = f32::cast_from(f_pre[at_f + token * f_pre.stride(2)]);
                // log σ(x) = min(x, 0) - log(1 + e^{-|x|}): neither branch overflows.
                lf = x.min(0.0) - (-x.abs()).exp().log1p();
            }
            sum += lf;
            log_i[g * l + t] = li;
            log_f[g * l + t] = lf;
            f_cum[g * l + t] = sum;
        }
        let mut after = 0.0f32;
        for r in 0..l {
            let t = l - 1 - r;
            log_w[g * l + t] = log_i[g * l + t] + after;
            after += log_f[g * l + t];
        }
    }
}
