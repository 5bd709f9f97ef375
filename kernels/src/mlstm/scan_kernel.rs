//! The linear recurrence over chunks that both directions of the chunkwise backward need:
//! `x ← a_c x + b_c` for `c = 0, 1, …` (forward: the chunk-boundary states `C, n`) or
//! `c = NC-1, …, 0` (reverse: their gradients `dC, dn`, and the stabiliser's `dm`).

use cubecl::prelude::*;

/// One unit per `(g, e)` of `x [G, E]` walks the chunks and writes `out[g, c, e]`, the value
/// of `x` before step `c`, then `last[g, e]`, the value after the final step.
#[cube(launch)]
pub(crate) fn chunk_scan_kernel(
    a: &Tensor<f32>,        // [G, NC]
    b: &Tensor<f32>,        // [G, NC, E]
    x0: &Tensor<f32>,       // [G, E]
    out: &mut Tensor<f32>,  // [G, NC, E]
    last: &mut Tensor<f32>, // [G, E]
    #[comptime] reverse: bool,
) {
    let e_len = x0.shape(1);
    let chunks = a.shape(1);
    let pos = ABSOLUTE_POS;
    if pos < x0.shape(0) * e_len {
        let g = pos / e_len;
        let e = pos % e_len;
        let mut x = x0[g * x0.stride(0) + e * x0.stride(1)];
        for step in 0..chunks {
            let mut c = step;
            if comptime!(reverse) {
                c = chunks - 1 - step;
            }
            out[g * out.stride(0) + c * out.stride(1) + e * out.stride(2)] = x;
            x = a[g * a.stride(0) + c * a.stride(1)] * x
                + b[g * b.stride(0) + c * b.stride(1) + e * b.stride(2)];
        }
        last[g * last.stride(0) + e * last.stride(1)] = x;
    }
}
