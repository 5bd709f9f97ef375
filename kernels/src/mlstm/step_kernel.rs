//! The fused mLSTM recurrent step (generation): one launch reads the state once, writes the
//! new state once and produces `h`.
//!
//! The step is bound by memory bandwidth (the state is read and written once), so the kernel is
//! built for many wide loads in flight: one cube per `(column tile of DV, head, batch)`, a cube
//! is `TILE_V` vectors of `W` columns (`Vector<_, W>`, 16 bytes of f32 state) × `ROWS` rows of
//! units. Unit `(x, y)` owns the columns `W·x .. W·x + W` of its tile and the key rows
//! `y, y + ROWS, …`, which it walks `UNROLL` rows at a time: all `UNROLL` loads of `C` are
//! issued before the first is used. It updates `C[a, d]` (eq. 19) and sums `q[a] C'[a, d]`;
//! the partial sums over rows are reduced in shared memory. Every cube recomputes the scalar
//! gates and `q·n'` (`DQK` products, negligible next to its `DQK × W·TILE_V` state tile); the
//! cube of the first column tile writes `n'` and `m'`. When the caller owns the state
//! exclusively, `c_out` aliases `c` (the state is updated in place).
//!
//! - `m' = max(log σ(f̃) + m, ĩ)` (eq. 15), `f' = e^{log σ(f̃) + m - m'}`, `i' = e^{ĩ - m'}`
//! - `C' = f' C + i' k vᵀ`, `n' = f' n + i' k`, `k` scaled by `1/sqrt(DQK)` (eqs. 19, 20, 23)
//! - `h = qᵀ C' / (max(|q·n'|, e^{-m'}) + eps)` (eq. 21)
//!
//! Arithmetic is in f32 whatever the storage types (`F` for q, k, v, gates, h; `S` for the
//! state).

use cubecl::prelude::*;

/// Column vectors of `C` per cube (one per unit along x).
pub(crate) const TILE_V: u32 = 32;
/// Units along the key dimension per cube.
pub(crate) const ROWS: u32 = 16;
/// Rows of `C` a unit loads before it uses the first.
const UNROLL: usize = 4;

/// `log σ(x) = min(x, 0) - log(1 + e^{-|x|})`, finite for every finite `x`.
#[cube]
pub(crate) fn log_sigmoid(x: f32) -> f32 {
    x.min(0.0) - (-x.abs()).exp().log1p()
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlstm_step_kernel<F: Float, S: Float, W: Size>(
    q: &Tensor<F>,                    // [B, NH, DQK]
    k: &Tensor<F>,                    // [B, NH, DQK]
    v: &Tensor<Vector<F, W>>,         // [B, NH, DV]
    i_pre: &Tensor<F>,                // [B, NH]
    f_pre: &Tensor<F>,                // [B, NH]
    c: &Tensor<Vector<S, W>>,         // [B, NH, DQK, DV]
    n: &Tensor<S>,                    // [B, NH, DQK]
    m: &Tensor<S>,                    // [B, NH]
    h: &mut Tensor<Vector<F, W>>,     // [B, NH, DV]
    c_out: &mut Tensor<Vector<S, W>>, // [B, NH, DQK, DV], may alias `c`
    n_out: &mut Tensor<S>,            // [B, NH, DQK]
    m_out: &mut Tensor<S>,            // [B, NH]
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
    let width = c.vector_size();
    let dqk = q.shape(2);
    let dv = v.shape(2);
    // This unit's columns d .. d + width (all in or all out: width divides DV).
    let d = (tile * tile_v + x) * width;

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
    // Vector indices: every offset below is a multiple of `width` (contiguous rows of DV).
    let c_base = (batch * c.stride(0) + head * c.stride(1) + d) / width;
    let co_base = (batch * c_out.stride(0) + head * c_out.stride(1) + d) / width;
    let c_row = c.stride(2) / width;
    let co_row = c_out.stride(2) / width;

    // Numerator: this unit's rows of q ⊙ C'[:, d .. d + width].
    let mut num = Vector::<f32, W>::new(0.0);
    if d < dv {
        let v_d =
            Vector::<f32, W>::cast_from(v[(batch * v.stride(0) + head * v.stride(1) + d) / width]);
        let iv = v_d * Vector::new(input * key_scale);
        let fv = Vector::<f32, W>::new(forget);
        let mut loaded = Array::<Vector<S, W>>::new(UNROLL);
        let mut a = y;
        // Full groups of UNROLL rows: the loads first, then the updates.
        while a + (UNROLL - 1) * rows < dqk {
            #[unroll]
            for u in 0..UNROLL {
                loaded[u] = c[c_base + (a + u * rows) * c_row];
            }
            #[unroll]
            for u in 0..UNROLL {
                let r = a + u * rows;
                let k_a = f32::cast_from(k[k_base + r * k.stride(2)]);
                let q_a = f32::cast_from(q[q_base + r * q.stride(2)]);
                let c_new = fv * Vector::cast_from(loaded[u]) + iv * Vector::new(k_a);
                c_out[co_base + r * co_row] = Vector::cast_from(c_new);
                num += c_new * Vector::new(q_a);
            }
            a += UNROLL * rows;
        }
        // The remaining rows, one at a time.
        while a < dqk {
            let k_a = f32::cast_from(k[k_base + a * k.stride(2)]);
            let q_a = f32::cast_from(q[q_base + a * q.stride(2)]);
            let c_new = fv * Vector::cast_from(c[c_base + a * c_row]) + iv * Vector::new(k_a);
            c_out[co_base + a * co_row] = Vector::cast_from(c_new);
            num += c_new * Vector::new(q_a);
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

    let mut num_part = SharedMemory::<Vector<f32, W>>::new(TILE_V as usize * ROWS as usize);
    let mut qn_part = SharedMemory::<f32>::new(TILE_V as usize * ROWS as usize);
    num_part[flat] = num;
    qn_part[flat] = qn;
    // Protects: all partial sums are written before the column sums read them.
    sync_cube();

    if y == 0 {
        let mut col_num = Vector::<f32, W>::new(0.0);
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
            h[(batch * h.stride(0) + head * h.stride(1) + d) / width] =
                Vector::cast_from(num_part[x] / Vector::new(den));
        }
        if tile == 0 && x == 0 {
            m_out[batch * m_out.stride(0) + head * m_out.stride(1)] = S::cast_from(m_new);
        }
    }
}
