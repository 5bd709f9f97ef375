//! The keys' weights in the chunk-boundary states in one pass (the tensor-op form is
//! `chunk_matmul::state_weights`): `w_s = e^{log w_s - m_loc} · e^{m_loc - m₁} · scale`, one
//! unit per token, the same f32 operations in the same order as the four tensor ops it
//! replaces.

use cubecl::prelude::*;

/// `w[g, t] = e^{log_w[g, t] - m_loc[g]} · gain[g] · scale`; `w` contiguous.
#[cube(launch)]
pub(crate) fn state_weights_kernel(
    log_w: &Tensor<f32>, // [G, L]
    m_loc: &Tensor<f32>, // [G]
    gain: &Tensor<f32>,  // [G], e^{m_loc - m₁}
    w: &mut Tensor<f32>, // [G, L]
    scale: f32,
) {
    let len = w.shape(1);
    if ABSOLUTE_POS < w.shape(0) * len {
        let g = ABSOLUTE_POS / len;
        let t = ABSOLUTE_POS % len;
        let x = log_w[g * log_w.stride(0) + t * log_w.stride(1)];
        w[ABSOLUTE_POS] = (x - m_loc[g * m_loc.stride(0)]).exp() * gain[g * gain.stride(0)] * scale;
    }
}
