//! The last step of the chunkwise forward's outputs, fused: every output row
//! `h_t = (num_t + g_t q_t C₀) / (max(|qn_t|, e^{-stab_t}) + eps)` (eq. 21 with the chunk's
//! start state) from the products (f32, or bf16 where the inputs are bf16), written once in
//! the inputs' float type.

use cubecl::prelude::*;

/// One unit per vector of `W` columns of one row of `h [R, DV]` (`R = G·L`): row `g·L + t` takes
/// row `t` of chunk `g` of `num`, plus row `L + t` where `split`. Every tensor contiguous;
/// arithmetic in f32.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_combine_kernel<F: Float, N: Float, W: Size>(
    num: &Tensor<Vector<N, W>>, // [G, L, DV] ((D∘P) V), or [G, 2L, DV] (its two halves)
    qc: &Tensor<Vector<N, W>>,  // [R, DV], q_t C₀
    g: &Tensor<f32>,            // [R], e^{m₀ + F_t - stab_t}
    qn: &Tensor<f32>,           // [R], q_t·n_t (stabilised)
    stab: &Tensor<f32>,         // [R]
    h: &mut Tensor<Vector<F, W>>, // [R, DV]
    eps: f32,
    #[comptime] split: bool,
    #[define(F, N)] _dtypes: [StorageType; 2],
) {
    let width = h.vector_size();
    let row_vectors = h.shape(1) / width;
    let pos = ABSOLUTE_POS;
    if pos < h.shape(0) * row_vectors {
        let (r, column) = (pos / row_vectors, pos % row_vectors);
        let len = h.shape(0) / num.shape(0);
        let at = ((r / len) * num.shape(1) + r % len) * row_vectors + column;
        let mut sum = Vector::<f32, W>::cast_from(num[at]);
        if comptime!(split) {
            sum += Vector::<f32, W>::cast_from(num[at + len * row_vectors]);
        }
        let den = qn[r].abs().max((-stab[r]).exp()) + eps;
        let x = sum + Vector::new(g[r]) * Vector::<f32, W>::cast_from(qc[pos]);
        h[pos] = Vector::cast_from(x / Vector::new(den));
    }
}
