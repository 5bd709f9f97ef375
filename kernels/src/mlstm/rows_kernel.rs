//! Row-wise steps of the chunkwise backward (`backward.rs`), fused: each reads its rows once,
//! writes them once and sums one inner product per row.
//! - `backward_rows_kernel`, the first step through the outputs: `den_t` from `qn_t` and
//!   `stab_t`, `dnum_t = dh_t / den_t` (in the backward's work type), `dot_t = dh_t·h_t` and from
//!   it `dqn_t` and the stabiliser's gradient (f32);
//! - `gradient_rows_kernel`, the last step of `dq` and `dk` where the gradient products do not
//!   run as one kernel (`gradient_mma_kernel.rs`): the intra-chunk product plus the
//!   chunk-boundary state's term, scaled and cast, and the term's inner product with `q` or `k`
//!   (the gate gradients need it);
//! - `weighted_rows_kernel`, the rows of every chunk times a weight per row (`w_s k_s` for the
//!   chunk-boundary states, `g_t q_t`), with a weighted sum of the rows (`Σ_s w_s k_s` for `n`,
//!   `Σ_t g_t dqn_t q_t` for `dn₀`).

use cubecl::prelude::*;

/// Units that share one row (a power of two; their partial sums are halved in shared memory).
pub(crate) const ROW_UNITS: usize = 32;
/// Rows per cube.
pub(crate) const ROWS_PER_CUBE: usize = 8;

/// `ROW_UNITS` units per row of `dh, h [R, DV]` (`DV` a multiple of `W`), `ROWS_PER_CUBE` rows
/// per cube; each unit strides over its row's vectors. With `den = max(|qn|, e^{-stab}) + eps`
/// and `dot = dh·h`: `dnum = dh / den`, `dqn = -sign(qn) dot / den` where `|qn| ≥ e^{-stab}`
/// (else 0) and `-dot·eps/den` into `dstab_to_max` where `stab` is the row maximum of `log D`
/// (not above `row_max`), else into `dstab_to_start` (each 0 where the other takes it), in the
/// order of operations of the tensor-op form. `dh` and `h` are row-major with rows possibly
/// padded (their row strides multiples of `W`); the other tensors contiguous.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_rows_kernel<F: Float, O: Float, W: Size>(
    dh: &Tensor<Vector<F, W>>,        // [R, DV]
    h: &Tensor<Vector<F, W>>,         // [R, DV]
    qn: &Tensor<f32>,                 // [R]
    stab: &Tensor<f32>,               // [R]
    row_max: &Tensor<f32>,            // [R]
    dnum: &mut Tensor<Vector<O, W>>,  // [R, DV]
    dqn: &mut Tensor<f32>,            // [R]
    dstab_to_max: &mut Tensor<f32>,   // [R]
    dstab_to_start: &mut Tensor<f32>, // [R]
    eps: f32,
    #[define(F, O)] _dtypes: [StorageType; 2],
) {
    let width = dh.vector_size();
    let vectors = dh.shape(1) / width;
    let rows = dh.shape(0);
    let row = ABSOLUTE_POS / ROW_UNITS;
    let lane = UNIT_POS as usize % ROW_UNITS;

    let mut sum = Vector::<f32, W>::new(0.0);
    let mut den = 1.0f32;
    let mut floor = 0.0f32;
    let mut q_n = 0.0f32;
    if row < rows {
        q_n = qn[row];
        floor = (f32::new(0.0) - stab[row]).exp();
        den = q_n.abs().max(floor) + eps;
        let scale = Vector::<f32, W>::new(1.0 / den);
        let base = row * vectors;
        let dh_base = row * (dh.stride(0) / width);
        let h_base = row * (h.stride(0) / width);
        let mut e = lane;
        while e < vectors {
            let g = Vector::<f32, W>::cast_from(dh[dh_base + e]);
            sum += g * Vector::cast_from(h[h_base + e]);
            dnum[base + e] = Vector::cast_from(g * scale);
            e += ROW_UNITS;
        }
    }

    let dot = sum_over_row(f32::cast_from(sum.vector_sum()));
    if lane == 0 && row < rows {
        let mut sign = 0.0f32;
        if q_n > 0.0 {
            sign = 1.0;
        }
        if q_n < 0.0 {
            sign = -1.0;
        }
        let mut d_qn = 0.0f32;
        if q_n.abs() >= floor {
            d_qn = f32::new(0.0) - sign * dot / den;
        }
        dqn[row] = d_qn;
        let d_stab = (f32::new(0.0) - dot) * eps / den;
        let from_start = stab[row] > row_max[row];
        let mut to_max = d_stab;
        let mut to_start = 0.0f32;
        if from_start {
            to_max = 0.0;
            to_start = d_stab;
        }
        dstab_to_max[row] = to_max;
        dstab_to_start[row] = to_start;
    }
}

/// The backward's last step for `dq` and `dk`, per row `r` of `[R, D]` (`D` a multiple of `W`)
/// in chunk `r / len`: `u = b[r] + s[r] c[r / len]`, `out[r] = (a[r] + t[r] u) · scale` in
/// `out`'s float type and `dot[r] = x[r]·u` (f32). Same grid as [`backward_rows_kernel`]. `x` is
/// row-major with rows possibly padded (its row stride a multiple of `W`); the other tensors
/// contiguous.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gradient_rows_kernel<X: Float, O: Float, W: Size>(
    a: &Tensor<Vector<f32, W>>,     // [R, D]
    b: &Tensor<Vector<f32, W>>,     // [R, D]
    c: &Tensor<Vector<f32, W>>,     // [R / len, D]
    s: &Tensor<f32>,                // [R]
    t: &Tensor<f32>,                // [R]
    x: &Tensor<Vector<X, W>>,       // [R, D]
    out: &mut Tensor<Vector<O, W>>, // [R, D]
    dot: &mut Tensor<f32>,          // [R]
    scale: f32,
    len: usize,
    #[define(X, O)] _dtypes: [StorageType; 2],
) {
    let width = a.vector_size();
    let vectors = a.shape(1) / width;
    let rows = a.shape(0);
    let row = ABSOLUTE_POS / ROW_UNITS;
    let lane = UNIT_POS as usize % ROW_UNITS;

    let mut sum = Vector::<f32, W>::new(0.0);
    if row < rows {
        let s_r = Vector::<f32, W>::new(s[row]);
        let t_r = Vector::<f32, W>::new(t[row]);
        let factor = Vector::<f32, W>::new(scale);
        let base = row * vectors;
        let chunk_base = (row / len) * vectors;
        let x_base = row * (x.stride(0) / width);
        let mut e = lane;
        while e < vectors {
            let u = b[base + e] + s_r * c[chunk_base + e];
            sum += Vector::<f32, W>::cast_from(x[x_base + e]) * u;
            out[base + e] = Vector::cast_from((a[base + e] + t_r * u) * factor);
            e += ROW_UNITS;
        }
    }

    let total = sum_over_row(f32::cast_from(sum.vector_sum()));
    if lane == 0 && row < rows {
        dot[row] = total;
    }
}

/// Units per cube of `weighted_rows_kernel` (along the columns).
pub(crate) const COLUMN_UNITS: usize = 64;

/// One unit per chunk `g` and vector of `W` columns `d` (`D` a multiple of `W`): for every row
/// `s` of the chunk, `x_w[g, s, d] = x[g, s, d] · weight[g, s]` in `x`'s float type, and where
/// `with_sum`, `sum[g, d] = Σ_s sum_weight[g, s] · x[g, s, d]` (f32). Chunks along the grid's y
/// and z axes. `x` is row-major with rows possibly padded (its row stride a multiple of `W`); the
/// other tensors contiguous.
#[cube(launch)]
pub(crate) fn weighted_rows_kernel<X: Float, W: Size>(
    x: &Tensor<Vector<X, W>>,         // [G, L, D]
    weight: &Tensor<f32>,             // [G, L]
    sum_weight: &Tensor<f32>,         // [G, L], read where `with_sum`
    x_w: &mut Tensor<Vector<X, W>>,   // [G, L, D]
    sum: &mut Tensor<Vector<f32, W>>, // [G, D], written where `with_sum`
    #[comptime] with_sum: bool,
    #[define(X)] _dtype: StorageType,
) {
    let len = x.shape(1);
    let vectors = x.shape(2) / x.vector_size();
    let x_row = x.stride(1) / x.vector_size();
    let column = CUBE_POS_X as usize * COLUMN_UNITS + UNIT_POS_X as usize;
    let g = CUBE_POS_Z as usize * CUBE_COUNT_Y as usize + CUBE_POS_Y as usize;
    if column < vectors && g < x.shape(0) {
        let mut acc = Vector::<f32, W>::new(0.0);
        for s in 0..len {
            let at = (g * len + s) * vectors + column;
            let value = Vector::<f32, W>::cast_from(x[(g * len + s) * x_row + column]);
            x_w[at] = Vector::cast_from(value * Vector::new(weight[g * len + s]));
            if comptime!(with_sum) {
                acc += value * Vector::new(sum_weight[g * len + s]);
            }
        }
        if comptime!(with_sum) {
            sum[g * vectors + column] = acc;
        }
    }
}

/// The sum of `value` over the `ROW_UNITS` units of this unit's row, complete at the row's
/// first unit (`lane` 0). Every unit of the cube calls it (it synchronises the cube).
#[cube]
fn sum_over_row(value: f32) -> f32 {
    let mut part = SharedMemory::<f32>::new(ROW_UNITS * ROWS_PER_CUBE);
    let unit = UNIT_POS as usize;
    let lane = unit % ROW_UNITS;
    part[unit] = value;
    // Protects: every partial sum is written before the halving reads it.
    sync_cube();
    let mut half = CUBE_DIM as usize / ROWS_PER_CUBE / 2; // ROW_UNITS / 2, as a runtime value
    while half > 0 {
        if lane < half {
            part[unit] += part[unit + half];
        }
        // Protects: this round's sums are written before the next round reads them.
        sync_cube();
        half /= 2;
    }
    part[unit]
}
