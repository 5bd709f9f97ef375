//! The recurrences over chunks of the chunkwise form, each one unit per independent lane:
//! - the linear recurrence `x ← a_c x + b_c` for `c = 0, 1, …` (the chunk-boundary states `C, n`)
//!   or `c = NC-1, …, 0` (their gradients `dC, dn`, and the stabiliser's `dm`);
//! - the stabiliser `m₁ = max(F_L + m₀, m_loc)` of every chunk, with the two factors that the
//!   state update needs.

use cubecl::prelude::*;

/// One unit per `(g, e .. e + W)` of `x [G, E]` walks the chunks and writes `out[g, c, e]`, the
/// value of `x` before step `c`, then `last[g, e]`, the value after the final step. `x` is f32
/// inside; `b` and `out` share a float type of their own (the forward keeps the chunk-boundary
/// states in the inputs' type). `W` divides `E`; `b`, `x0`, `out` and `last` are contiguous.
#[cube(launch)]
pub(crate) fn chunk_scan_kernel<F: Float, W: Size>(
    a: &Tensor<f32>,                   // [G, NC]
    b: &Tensor<Vector<F, W>>,          // [G, NC, E]
    x0: &Tensor<Vector<f32, W>>,       // [G, E]
    out: &mut Tensor<Vector<F, W>>,    // [G, NC, E]
    last: &mut Tensor<Vector<f32, W>>, // [G, E]
    #[comptime] reverse: bool,
    #[define(F)] _dtype: StorageType,
) {
    let width = b.vector_size();
    let e_vectors = x0.shape(1) / width;
    let chunks = a.shape(1);
    let pos = ABSOLUTE_POS;
    if pos < x0.shape(0) * e_vectors {
        let g = pos / e_vectors;
        let e = pos % e_vectors;
        let step_stride = b.stride(1) / width;
        let row = g * b.stride(0) / width + e;
        let mut x = x0[pos];
        for step in 0..chunks {
            let mut c = step;
            if comptime!(reverse) {
                c = chunks - 1 - step;
            }
            out[row + c * step_stride] = Vector::cast_from(x);
            x = Vector::new(a[g * a.stride(0) + c * a.stride(1)]) * x
                + Vector::cast_from(b[row + c * step_stride]);
        }
        last[pos] = x;
    }
}

/// One unit per row `g` walks the chunks: from `m = m0[g]`, per chunk
/// `m₁ = max(F_L + m, m_loc)` (eq. 15 unrolled over the chunk), `decay = e^{F_L+m-m₁}`,
/// `gain = e^{m_loc-m₁}`; `m_all[g, c]` is `m` before chunk `c` (`NC + 1` entries).
#[cube(launch)]
pub(crate) fn stabiliser_scan_kernel(
    f_last: &Tensor<f32>,    // [G, NC], F_L of every chunk
    m_loc: &Tensor<f32>,     // [G, NC], max_s(ĩ_s + F_L - F_s)
    m0: &Tensor<f32>,        // [G]
    m_all: &mut Tensor<f32>, // [G, NC + 1]
    decay: &mut Tensor<f32>, // [G, NC]
    gain: &mut Tensor<f32>,  // [G, NC]
) {
    let g = ABSOLUTE_POS;
    if g < m0.shape(0) {
        let chunks = f_last.shape(1);
        let mut m = m0[g * m0.stride(0)];
        m_all[g * m_all.stride(0)] = m;
        for c in 0..chunks {
            let decayed = f_last[g * f_last.stride(0) + c * f_last.stride(1)] + m;
            let m_in = m_loc[g * m_loc.stride(0) + c * m_loc.stride(1)];
            let m_new = decayed.max(m_in);
            decay[g * decay.stride(0) + c * decay.stride(1)] = (decayed - m_new).exp();
            gain[g * gain.stride(0) + c * gain.stride(1)] = (m_in - m_new).exp();
            m = m_new;
            m_all[g * m_all.stride(0) + (c + 1) * m_all.stride(1)] = m;
        }
    }
}
