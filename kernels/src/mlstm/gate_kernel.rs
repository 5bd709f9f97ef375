//! The `[L, L]` gate matrix of a chunk in one kernel each way (the math and the tensor-op forms
//! are in `gates.rs`): one cube of `L × Y` units per chunk (`Y` groups of `L`, [`gate_groups`]).
//! The log gate matrix is built in shared memory column by column (unit `(s, y)` sums `log f`
//! down column `s`, in the order of `segment_sums`, and writes the rows `t ≡ y mod Y`), the row
//! maxima row by row, then unit `(s, y)` walks the rows `t ≡ y mod Y` of the `[L, L]` operands,
//! so that a warp reads and writes contiguous entries and `Y` rows are in flight at once.
//! - [`gate_matrix_kernel`]: `P = scores · A · scale` (rounded, and below it its rest where
//!   `split`), the row maxima of `log D`, the stabilisers `stab_t = max(row max, m₀ + F_t)`,
//!   the start state's factor `g_t = e^{m₀+F_t-stab_t}` and the normaliser's inner product
//!   `Σ_s P_ts + g_t q_t·n₀` (`Y` units per row read `q_t` as vectors, their partial sums
//!   added in shared memory);
//! - [`gate_grads_kernel`]: `dS = (dpv + dqn) ∘ A` and the row and column sums of
//!   `d log D = (dpv + dqn) ∘ P` plus the stabiliser's gradient at each row's maximum.
//!
//! (One unit per row and column, `Y = 1`, ran at a third of the memory bandwidth: each unit
//! walked 64 rows one load after another, and `q·n₀` as 2-byte loads.)

use cubecl::prelude::*;

/// Units per cube of the gate kernels.
pub(crate) const GATE_UNITS: usize = 256;

/// The groups `Y` of `L` units per cube for chunks of `len` tokens: `L · Y ≤ GATE_UNITS`.
pub(crate) fn gate_groups(len: usize) -> usize {
    (GATE_UNITS / len.next_power_of_two()).max(1)
}

/// The chunk of this cube (the grid may be two-dimensional: more chunks than one axis takes).
#[cube]
fn chunk_index() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// `log D` of chunk `g` into `tile` (`L` rows of `L + 1`: padded against bank conflicts), from
/// `log_f, log_i [G, L]`: `Σ_{s<u≤t} log f_u + ĩ_s` for `s ≤ t`, `-1e30` above the diagonal.
/// Every unit of the cube calls it (it synchronises the cube).
#[cube]
fn log_gate_matrix(
    log_f: &Tensor<f32>,
    log_i: &Tensor<f32>,
    g: usize,
    valid: bool,
    tile: &mut SharedMemory<f32>,
    #[comptime] l: usize,
    #[comptime] groups: usize,
) {
    let mut fs = SharedMemory::<f32>::new(l);
    let s = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    if valid && y == 0 {
        fs[s] = log_f[g * l + s];
    }
    // Protects: every log f is in shared memory before the columns sum them.
    sync_cube();
    if valid {
        let i_s = log_i[g * l + s];
        let mut acc = 0.0f32;
        for t in 0..l {
            let mut value = f32::new(-1.0e30); // M_EMPTY above the diagonal
            if t >= s {
                if t > s {
                    acc += fs[t];
                }
                value = acc + i_s;
            }
            if t % groups == y {
                tile[t * (l + 1) + s] = value;
            }
        }
    }
    // Protects: the matrix is complete before rows are read.
    sync_cube();
}

/// The first column of row `t` of `tile` where it takes its maximum over `s ≤ t`.
#[cube]
fn row_argmax(tile: &SharedMemory<f32>, t: usize, #[comptime] l: usize) -> usize {
    let row = t * (l + 1);
    let mut best = tile[row];
    let mut arg = 0usize;
    for s in 1..t + 1 {
        let x = tile[row + s];
        if x > best {
            best = x;
            arg = s;
        }
    }
    arg
}

/// The sum of row `t` of `tile` over its first `count` columns.
#[cube]
fn row_sum(tile: &SharedMemory<f32>, t: usize, count: usize, #[comptime] l: usize) -> f32 {
    let row = t * (l + 1);
    let mut sum = 0.0f32;
    for s in 0..count {
        sum += tile[row + s];
    }
    sum
}

/// One cube of `L × Y` units per chunk; every tensor contiguous but `q` (row-major, its rows
/// possibly padded; `DQK` and its row stride multiples of `V`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_matrix_kernel<W: Float, Q: Float, V: Size>(
    scores: &Tensor<f32>,             // [G, L, L], q_t·k_s
    log_f: &Tensor<f32>,              // [G, L]
    log_i: &Tensor<f32>,              // [G, L]
    log_start: &Tensor<f32>,          // [G, L], m₀ + F_t
    q: &Tensor<Vector<Q, V>>,         // [G, L, DQK], rows possibly padded
    n_start: &Tensor<Vector<f32, V>>, // [G, DQK]
    p: &mut Tensor<W>,                // [G, L, L], or [G, 2L, L] (P, then its rest) where `split`
    row_max: &mut Tensor<f32>,        // [G, L]
    stab: &mut Tensor<f32>,           // [G, L]
    gain: &mut Tensor<f32>,           // [G, L]
    qn: &mut Tensor<f32>,             // [G, L]
    scale: f32,
    #[comptime] l: usize,
    #[comptime] groups: usize,
    #[comptime] split: bool,
    #[define(W, Q)] _dtypes: [StorageType; 2],
) {
    let g = chunk_index();
    let valid = g < log_f.shape(0);
    let x = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let mut tile = SharedMemory::<f32>::new(comptime!(l * (l + 1)));
    let mut stab_s = SharedMemory::<f32>::new(l);
    let mut partial = SharedMemory::<f32>::new(comptime!(l * groups));
    log_gate_matrix(log_f, log_i, g, valid, &mut tile, l, groups);

    if valid && y == 0 {
        let t = x;
        let max = tile[t * (l + 1) + row_argmax(&tile, t, l)];
        row_max[g * l + t] = max;
        stab_s[t] = max.max(log_start[g * l + t]);
    }
    // Protects: every row's stabiliser is in shared memory before the columns use it.
    sync_cube();

    if valid {
        let s = x;
        let rows = comptime!(if split { 2 * l } else { l });
        #[unroll]
        for j in 0..comptime!(l.div_ceil(groups)) {
            let t = j * groups + y;
            if t < l {
                let at = (g * l + t) * l + s;
                let mut value = 0.0f32;
                if s <= t {
                    let a = (tile[t * (l + 1) + s] - stab_s[t]).exp();
                    value = scores[at] * (a * scale);
                }
                let high = W::cast_from(value);
                p[(g * rows + t) * l + s] = high;
                if comptime!(split) {
                    p[(g * rows + l + t) * l + s] = W::cast_from(value - f32::cast_from(high));
                }
                // Each entry is read and then overwritten by the same unit.
                tile[t * (l + 1) + s] = value;
            }
        }
    }

    // q_t·n₀: the `Y` units of row `t` take every `Y`-th vector of it.
    if valid {
        let unit = UNIT_POS as usize;
        let (t, part) = (unit / groups, unit % groups);
        let width = q.vector_size();
        let vectors = n_start.shape(1) / width;
        let q_base = (g * l + t) * (q.stride(1) / width);
        let n_base = g * (n_start.stride(0) / width);
        let mut sum = Vector::<f32, V>::new(0.0);
        let mut a = part;
        while a < vectors {
            sum += Vector::<f32, V>::cast_from(q[q_base + a]) * n_start[n_base + a];
            a += groups;
        }
        partial[unit] = f32::cast_from(sum.vector_sum());
    }
    // Protects: P and the partial sums of q·n₀ are complete before the rows add them.
    sync_cube();

    if valid && y == 0 {
        let t = x;
        let mut qn0 = 0.0f32;
        for part in 0..groups {
            qn0 += partial[t * groups + part];
        }
        let at = g * l + t;
        let stabiliser = stab_s[t];
        let factor = (log_start[at] - stabiliser).exp();
        stab[at] = stabiliser;
        gain[at] = factor;
        qn[at] = row_sum(&tile, t, t + 1, l) + factor * qn0;
    }
}

/// One cube of `L × Y` units per chunk; every tensor contiguous.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_grads_kernel<W: Float>(
    scores: &Tensor<f32>,   // [G, L, L], q_t·k_s
    dpv: &Tensor<f32>,      // [G, L, L], dnum_t·v_s
    log_f: &Tensor<f32>,    // [G, L]
    log_i: &Tensor<f32>,    // [G, L]
    stab: &Tensor<f32>,     // [G, L]
    dqn: &Tensor<f32>,      // [G, L]
    dstab: &Tensor<f32>,    // [G, L], to each row's maximum of log D
    ds: &mut Tensor<W>,     // [G, L, L]
    rows: &mut Tensor<f32>, // [G, L]
    cols: &mut Tensor<f32>, // [G, L]
    scale: f32,
    #[comptime] l: usize,
    #[comptime] groups: usize,
    #[define(W)] _dtype: StorageType,
) {
    let g = chunk_index();
    let valid = g < log_f.shape(0);
    let x = UNIT_POS_X as usize;
    let y = UNIT_POS_Y as usize;
    let mut tile = SharedMemory::<f32>::new(comptime!(l * (l + 1)));
    let mut arg = SharedMemory::<u32>::new(l);
    let mut stab_s = SharedMemory::<f32>::new(l);
    let mut dqn_s = SharedMemory::<f32>::new(l);
    let mut dstab_s = SharedMemory::<f32>::new(l);
    let mut col_parts = SharedMemory::<f32>::new(comptime!(l * groups));
    log_gate_matrix(log_f, log_i, g, valid, &mut tile, l, groups);

    if valid && y == 0 {
        let t = x;
        arg[t] = row_argmax(&tile, t, l) as u32;
        stab_s[t] = stab[g * l + t];
        dqn_s[t] = dqn[g * l + t];
        dstab_s[t] = dstab[g * l + t];
    }
    // Protects: the row quantities are in shared memory before the columns use them.
    sync_cube();

    if valid {
        let s = x;
        let mut col = 0.0f32;
        #[unroll]
        for j in 0..comptime!(l.div_ceil(groups)) {
            let t = j * groups + y;
            if t < l {
                let at = (g * l + t) * l + s;
                let mut grad = 0.0f32;
                let mut dlog = 0.0f32;
                if s <= t {
                    let a = (tile[t * (l + 1) + s] - stab_s[t]).exp();
                    let p = scores[at] * (a * scale);
                    let dp = dpv[at] + dqn_s[t];
                    grad = dp * a;
                    dlog = dp * p;
                    if s == arg[t] as usize {
                        dlog += dstab_s[t];
                    }
                }
                ds[at] = W::cast_from(grad);
                // Each entry is read and then overwritten by the same unit.
                tile[t * (l + 1) + s] = dlog;
                col += dlog;
            }
        }
        col_parts[y * l + s] = col;
    }
    // Protects: d log D and the columns' partial sums are complete before they are summed.
    sync_cube();

    if valid && y == 0 {
        let t = x;
        rows[g * l + t] = row_sum(&tile, t, t + 1, l);
        let s = x;
        let mut col = 0.0f32;
        for part in 0..groups {
            col += col_parts[part * l + s];
        }
        cols[g * l + s] = col;
    }
}
