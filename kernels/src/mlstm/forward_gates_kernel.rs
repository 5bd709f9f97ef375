//! Everything the chunkwise forward needs from the gates, in one pass (the tensor-op form is
//! `chunk_matmul::forward_gates`: [`chunk_gates_kernel`](super::chunk_gates_kernel), the
//! stabiliser scan, the keys' weights and `m₀ + F_t`, four launches that ran before the state
//! kernel could start, with the host issuing them one by one).
//!
//! One cube per (batch entry, head) walks its chunks in rounds of `per_round` chunks, a row of
//! units per chunk, one unit per token (or a stride of tokens for chunks over
//! [`GATE_UNITS`]). Per round:
//! 1. each unit reads its token's pre-activations: `ĩ`, `log f = log σ(f̃)` (padding tokens past
//!    `S` carry `ĩ = M_EMPTY`, `log f = 0`, as the reference pads);
//! 2. `F_t = Σ_{u≤t} log f_u` and `log w_s = ĩ_s + Σ_{u>s} log f_u`, summed in token order as
//!    one unit walking the chunk sums them (as `chunk_gates_kernel` does);
//! 3. per chunk `m_loc = max_s log w_s`;
//! 4. one unit carries the stabiliser over the round's chunks (eq. 15 unrolled over a chunk):
//!    `m₁ = max(F_L + m₀, m_loc)`, `decay = e^{F_L+m₀-m₁}`, `gain = e^{m_loc-m₁}`;
//! 5. per token the keys' weight `w_s = e^{log w_s - m_loc} · gain · scale` and `m₀ + F_t`.
//!
//! Every value is the same f32 operations in the same order as the tensor-op form's.

use cubecl::prelude::*;

use super::chunk_gates_kernel::{chunk_sums, token_gates, GATE_UNITS};

/// Units per cube: the rounds take as many chunks as fill it.
pub(crate) const FORWARD_GATE_UNITS: usize = 1024;
/// Longest chunk the kernel takes (four `[L]` rows of f32 per chunk in shared memory: 32 KiB).
pub(crate) const FORWARD_GATE_MAX_LEN: usize = 2048;

/// Chunks per round of the kernel for chunks of `len` tokens, `chunks` of them per row.
pub(crate) fn forward_gate_rounds(len: usize, chunks: usize) -> usize {
    (FORWARD_GATE_UNITS / len.min(GATE_UNITS))
        .min(chunks.next_power_of_two())
        .max(1)
}

/// Row `r = b · NH + h` is cube `r` (numbered along x, then y); chunk `g = r · NC + c`. The
/// pre-activations in any strides, `m0` and the outputs contiguous. Cube:
/// `min(l, GATE_UNITS) × per_round` units. Where `zero_start`, the initial stabiliser is 0 and
/// `m0` is not read.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_gates_kernel<F: Float>(
    i_pre: &Tensor<F>,           // [B, NH, S], ĩ
    f_pre: &Tensor<F>,           // [B, NH, S], f̃
    m0: &Tensor<f32>,            // [B·NH], the initial stabiliser
    log_i: &mut Tensor<f32>,     // [G, L], ĩ
    log_f: &mut Tensor<f32>,     // [G, L], log σ(f̃)
    log_start: &mut Tensor<f32>, // [G, L], m₀ + F_t
    w: &mut Tensor<f32>,         // [G, L], the keys' weights in C and n
    decay: &mut Tensor<f32>,     // [G], e^{F_L+m₀-m₁}
    m_end: &mut Tensor<f32>,     // [B·NH], m after the last chunk
    scale: f32,
    #[comptime] l: usize,
    #[comptime] per_round: usize,
    #[comptime] zero_start: bool,
    #[define(F)] _dtype: StorageType,
) {
    let r = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    // Uniform over the cube: every unit takes the barriers below, or none does.
    if r < m_end.shape(0) {
        let row = UNIT_POS_Y as usize;
        let first = UNIT_POS_X as usize;
        let step = CUBE_DIM_X as usize;
        let (nh, s) = (i_pre.shape(1), i_pre.shape(2));
        let nc = s.div_ceil(l);
        let (b, h) = (r / nh, r % nh);
        let at_i = b * i_pre.stride(0) + h * i_pre.stride(1);
        let at_f = b * f_pre.stride(0) + h * f_pre.stride(1);
        let mut i_log = SharedMemory::<f32>::new(comptime!(per_round * l));
        let mut f_log = SharedMemory::<f32>::new(comptime!(per_round * l));
        let mut f_sum = SharedMemory::<f32>::new(comptime!(per_round * l));
        let mut w_log = SharedMemory::<f32>::new(comptime!(per_round * l));
        let mut m_loc = SharedMemory::<f32>::new(comptime!(per_round));
        let mut m_before = SharedMemory::<f32>::new(comptime!(per_round));
        let mut gain = SharedMemory::<f32>::new(comptime!(per_round));
        let mut m_run = SharedMemory::<f32>::new(1usize);
        if UNIT_POS == 0 {
            let mut m = f32::new(0.0);
            if comptime!(!zero_start) {
                m = m0[r];
            }
            m_run[0] = m;
        }
        for round in range_stepped(0, nc, per_round) {
            let c = round + row;
            let inside = c < nc;
            let g = r * nc + c;
            // 1. The pre-activations.
            for t in range_stepped(first, l, step) {
                let token = c * l + t;
                let (li, lf) = token_gates(i_pre, f_pre, at_i, at_f, token, inside && token < s);
                if inside {
                    log_i[g * l + t] = li;
                    log_f[g * l + t] = lf;
                }
                i_log[row * l + t] = li;
                f_log[row * l + t] = lf;
            }
            // Protects: the chunk's log f are all in shared memory before the sums read them.
            sync_cube();
            // 2. F_t in token order, and the sum after t from the last token down.
            for t in range_stepped(first, l, step) {
                let (before, after) = chunk_sums(&f_log, row * l, t, l);
                f_sum[row * l + t] = before;
                w_log[row * l + t] = i_log[row * l + t] + after;
            }
            // Protects: the chunk's log w are all in shared memory before its maximum.
            sync_cube();
            // 3. m_loc of every chunk of the round.
            if first == 0 {
                let mut most = w_log[row * l];
                for t in 1..l {
                    most = most.max(w_log[row * l + t]);
                }
                m_loc[row] = most;
            }
            // Protects: every m_loc of the round is in before the stabiliser reads them.
            sync_cube();
            // 4. The stabiliser over the round's chunks, in order.
            if UNIT_POS == 0 {
                let mut m = m_run[0];
                for j in 0..per_round {
                    if round + j < nc {
                        m_before[j] = m;
                        let decayed = f_sum[j * l + l - 1] + m;
                        let m_in = m_loc[j];
                        let m_new = decayed.max(m_in);
                        decay[r * nc + round + j] = (decayed - m_new).exp();
                        gain[j] = (m_in - m_new).exp();
                        m = m_new;
                    }
                }
                m_run[0] = m;
            }
            // Protects: the round's stabilisers are in before the weights read them.
            sync_cube();
            // 5. The keys' weights and m₀ + F_t.
            if inside {
                for t in range_stepped(first, l, step) {
                    w[g * l + t] = (w_log[row * l + t] - m_loc[row]).exp() * gain[row] * scale;
                    log_start[g * l + t] = m_before[row] + f_sum[row * l + t];
                }
            }
            // Protects: the round's shared rows are read before the next round writes them.
            sync_cube();
        }
        if UNIT_POS == 0 {
            m_end[r] = m_run[0];
        }
    }
}
