//! The gates of every chunk in one pass (the tensor-op form is `chunked::chunk_gates`): `ĩ`,
//! `log σ(f̃)`, the running sums `F_t` and the sums after each token (for `log w_s`), and per
//! chunk `F_L` and `m_loc = max_s log w_s`. A cube
//! takes `per_cube` chunks, a row of units per chunk, one unit per token (or a stride of tokens
//! for chunks over [`GATE_UNITS`]): each unit reads its token's pre-activations (coalesced) and
//! puts `log f` in shared memory, then sums the chunk's `log f` before and after its token in
//! token order, so that the sums are bit for bit those of one unit walking the chunk. Tokens
//! past `S` are padding: `ĩ = M_EMPTY`, `log f = 0`, as the reference pads.

use cubecl::prelude::*;

/// Units per cube (along the tokens of its chunks).
pub(crate) const GATE_UNITS: usize = 256;
/// Longest chunk the kernel takes (its `log f` in shared memory: 16 KiB).
pub(crate) const GATE_MAX_LEN: usize = 4096;

/// The chunk of this unit's row in the kernels with a row of units per chunk (this one and
/// `gate_input_grads_kernel.rs`): chunk `g` is row `g % per_cube` of cube `g / per_cube`, the
/// cubes numbered along x, then y.
#[cube]
pub(crate) fn chunk_of_row(#[comptime] per_cube: usize) -> usize {
    let cube = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
    cube * per_cube + UNIT_POS_Y as usize
}

/// `(ĩ, log σ(f̃))` of `token` in the pre-activations' row at `at_i`, `at_f` (offsets of its
/// batch entry and head); a padding token (`real` false) leaves the memory as it is:
/// `ĩ = M_EMPTY`, `log f = 0`, as the reference pads.
#[cube]
pub(crate) fn token_gates<F: Float>(
    i_pre: &Tensor<F>,
    f_pre: &Tensor<F>,
    at_i: usize,
    at_f: usize,
    token: usize,
    real: bool,
) -> (f32, f32) {
    let mut li = f32::new(-1.0e30); // M_EMPTY
    let mut lf = 0.0f32;
    if real {
        li = f32::cast_from(i_pre[at_i + token * i_pre.stride(2)]);
        let x = f32::cast_from(f_pre[at_f + token * f_pre.stride(2)]);
        // log σ(x) = min(x, 0) - log(1 + e^{-|x|}): neither branch overflows.
        lf = x.min(0.0) - (-x.abs()).exp().log1p();
    }
    (li, lf)
}

/// `(F_t, Σ_{u>t} log f_u)` of token `t` of the chunk whose `log f` are
/// `f_log[base..base + l]`: `F_t` in token order and the sum after `t` from the last token
/// down, as one unit walking the chunk forward and then back sums them.
#[cube]
pub(crate) fn chunk_sums(
    f_log: &SharedMemory<f32>,
    base: usize,
    t: usize,
    #[comptime] l: usize,
) -> (f32, f32) {
    let mut before = 0.0f32;
    for u in 0..t + 1 {
        before += f_log[base + u];
    }
    let mut after = 0.0f32;
    for r in 0..l - 1 - t {
        after += f_log[base + l - 1 - r];
    }
    (before, after)
}

/// Chunk `g = (b · NH + h) · NC + c` is row `g % per_cube` of cube `g / per_cube`
/// ([`chunk_of_row`]); the pre-activations in any strides, the outputs contiguous
/// `[G, L]` and `[G]`. Cube: `min(l, GATE_UNITS) × per_cube` units.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_gates_kernel<F: Float>(
    i_pre: &Tensor<F>,        // [B, NH, S], ĩ
    f_pre: &Tensor<F>,        // [B, NH, S], f̃
    log_i: &mut Tensor<f32>,  // [G, L]
    log_f: &mut Tensor<f32>,  // [G, L], log σ(f̃)
    f_cum: &mut Tensor<f32>,  // [G, L], F_t = Σ_{u≤t} log f_u
    log_w: &mut Tensor<f32>,  // [G, L], ĩ_s + Σ_{u>s} log f_u
    f_last: &mut Tensor<f32>, // [G], F_L
    m_loc: &mut Tensor<f32>,  // [G], max_s log w_s
    #[comptime] l: usize,
    #[comptime] per_cube: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = UNIT_POS_Y as usize;
    let g = chunk_of_row(per_cube);
    let inside = g < log_i.shape(0);
    let (nh, s) = (i_pre.shape(1), i_pre.shape(2));
    let nc = s.div_ceil(l);
    let (bh, c) = (g / nc, g % nc);
    let (b, h) = (bh / nh, bh % nh);
    let at_i = b * i_pre.stride(0) + h * i_pre.stride(1);
    let at_f = b * f_pre.stride(0) + h * f_pre.stride(1);
    let mut f_log = SharedMemory::<f32>::new(comptime!(per_cube * l));
    let mut w_log = SharedMemory::<f32>::new(comptime!(per_cube * l));
    let first = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    for t in range_stepped(first, l, step) {
        let token = c * l + t;
        let (li, lf) = token_gates(i_pre, f_pre, at_i, at_f, token, inside && token < s);
        if inside {
            log_i[g * l + t] = li;
            log_f[g * l + t] = lf;
        }
        f_log[row * l + t] = lf;
    }
    // Protects: the chunk's log f are all in shared memory before the sums read them.
    sync_cube();
    for t in range_stepped(first, l, step) {
        let (before, after) = chunk_sums(&f_log, row * l, t, l);
        let mut lw = 0.0f32;
        if inside {
            lw = log_i[g * l + t] + after;
            f_cum[g * l + t] = before;
            log_w[g * l + t] = lw;
            if t == l - 1 {
                f_last[g] = before;
            }
        }
        w_log[row * l + t] = lw;
    }
    // Protects: the chunk's log w are all in shared memory before its maximum reads them.
    sync_cube();
    if inside && first == 0 {
        let mut most = w_log[row * l];
        for t in 1..l {
            most = most.max(w_log[row * l + t]);
        }
        m_loc[g] = most;
    }
}
