//! The fused mLSTM recurrent step (generation): one launch reads the state once, writes the
//! new state once and produces `h`.
//!
//! One cube per `(column tile of DV, head, batch)`; a cube is `TILE_V` columns × `ROWS` rows of
//! units. Unit `(x, y)` owns column `d` of its tile and the key rows `y, y + ROWS, …`: it
//! updates `C[a, d]` for those rows (eq. 19) and sums `q[a] C'[a, d]`; the partial sums over
//! rows are reduced in shared memory. Every cube recomputes the scalar gates and `q·n'`
//! (`DQK` products, negligible next to the `DQK × TILE_V` state tile); the cube of the first
//! column tile writes `n'` and `m'`.
//!
//! - `m' = max(log σ(f̃) + m, ĩ)` (eq. 15), `f' = e^{log σ(f̃) + m - m'}`, `i' = e^{ĩ - m'}`
//! - `C' = f' C + i' k vᵀ`, `n' = f' n + i' k`, `k` scaled by `1/sqrt(DQK)` (eqs. 19, 20, 23)
//! - `h = qᵀ C' / (max(|q·n'|, e^{-m'}) + eps)` (eq. 21)
//!
//! Arithmetic is in f32 whatever the storage types (`F` for q, k, v, gates, h; `S` for the
//! state).

use cubecl::prelude::*;

/// Columns of `C` per cube (one per unit along x).
pub(crate) const TILE_V: u32 = 32;
/// Units along the key dimension per cube.
pub(crate) const ROWS: u32 = 16;

/// `log σ(x) = min(x, 0) - log(1 + e^{-|x|})`, finite for every finite `x`.
#[cube]
pub(crate) fn log_sigmoid(x: f32) -> f32 {
    x.min(0.0) - (-x.abs()).exp().log1p()
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlstm_step_kernel<F: Float, S: Float>(
    q: &Tensor<F>,         // [B, NH, DQK]
    k: &Tensor<F>,         // [B, NH, DQK]
    v: &Tensor<F>,         // [B, NH, DV]
    i_pre: &Tensor<F>,     // [B, NH]
    f_pre: &Tensor<F>,     // [B, NH]
    c: &Tensor<S>,         // [B, NH, DQK, DV]
    n: &Tensor<S>,         // [B, NH, DQK]
    m: &Tensor<S>,         // [B, NH]
    h: &mut Tensor<F>,     // [B, NH, DV]
    c_out: &mut Tensor<S>, // [B, NH, DQK, DV]
    n_out: &mut Tensor<S>, // [B, NH, DQK]
    m_out: &mut Tensor<S>, // [B, NH]
    key_scale: f32,
    eps: f32,
    #[define(F, S)] _dtypes: [StorageType; 2],
) {
    let tile = CUBE_POS_X as usize;
    let head = CUBE_POS_Y as usize;
    let batch = CUBE_POS_Z as usize;
    let x = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let tile_v = TILE_V as usize;
    let rows = ROWS as usize;
    let dqk = q.shape(2);
    let dv = v.shape(2);
    let d = tile * tile_v + x;

    // Scalar gates (eqs. 15–17), the same in every unit.
    let gate = batch * i_pre.stride(0) + head * i_pre.stride(1);
    let i_t = f32::cast_from(i_pre[gate]);
    let log_f = log_sigmoid(f32::cast_from(
        f_pre[batch * f_pre.stride(0) + head * f_pre.stride(1)],
    ));
    let m_prev = f32::cast_from(m[batch * m.stride(0) + head * m.stride(1)]);
    let m_new = (log_f + m_prev).max(i_t);
    let forget = (log_f + m_prev - m_new).exp();
    let input = (i_t - m_new).exp();

    let q_base = batch * q.stride(0) + head * q.stride(1);
    let k_base = batch * k.stride(0) + head * k.stride(1);
    let n_base = batch * n.stride(0) + head * n.stride(1);
    let no_base = batch * n_out.stride(0) + head * n_out.stride(1);
    let c_base = batch * c.stride(0) + head * c.stride(1);
    let co_base = batch * c_out.stride(0) + head * c_out.stride(1);

    // Numerator: this unit's rows of q ⊙ C'[:, d].
    let mut num = 0.0f32;
    if d < dv {
        let v_d = f32::cast_from(v[batch * v.stride(0) + head * v.stride(1) + d * v.stride(2)]);
        let iv = input * key_scale * v_d;
        let mut a = y;
        while a < dqk {
            let k_a = f32::cast_from(k[k_base + a * k.stride(2)]);
            let q_a = f32::cast_from(q[q_base + a * q.stride(2)]);
            let c_new =
                forget * f32::cast_from(c[c_base + a * c.stride(2) + d * c.stride(3)]) + iv * k_a;
            c_out[co_base + a * c_out.stride(2) + d * c_out.stride(3)] = S::cast_from(c_new);
            num += q_a * c_new;
            a += rows;
        }
    }

    // q·n' over all DQK, spread over all units of the cube.
    let flat = y * tile_v + x;
    let units = rows * tile_v;
    let mut qn = 0.0f32;
    let mut a = flat;
    while a < dqk {
        let k_a = f32::cast_from(k[k_base + a * k.stride(2)]);
        let n_new = forget * f32::cast_from(n[n_base + a * n.stride(2)]) + input * key_scale * k_a;
        if tile == 0 {
            n_out[no_base + a * n_out.stride(2)] = S::cast_from(n_new);
        }
        qn += f32::cast_from(q[q_base + a * q.stride(2)]) * n_new;
        a += units;
    }

    let mut num_part = SharedMemory::<f32>::new(TILE_V as usize * ROWS as usize);
    let mut qn_part = SharedMemory::<f32>::new(TILE_V as usize * ROWS as usize);
    num_part[flat] = num;
    qn_part[flat] = qn;
    // Protects: all partial sums are written before the column sums read them.
    sync_cube();

    if y == 0 {
        let mut col_num = 0.0f32;
        let mut col_qn = 0.0f32;
        for r in 0..rows {
            col_num += num_part[r * tile_v + x];
            col_qn += qn_part[r * tile_v + x];
        }
        num_part[x] = col_num;
        qn_part[x] = col_qn;
    }
    // Protects: the column sums of row 0 are written before the totals read them.
    sync_cube();

    if y == 0 {
        let mut total_qn = 0.0f32;
        for j in 0..tile_v {
            total_qn += qn_part[j];
        }
        let den = total_qn.abs().max((-m_new).exp()) + eps;
        if d < dv {
            h[batch * h.stride(0) + head * h.stride(1) + d * h.stride(2)] =
                F::cast_from(num_part[x] / den);
        }
        if tile == 0 && x == 0 {
            m_out[batch * m_out.stride(0) + head * m_out.stride(1)] = S::cast_from(m_new);
        }
    }
}
