//! The backward's `[L, L]` step of every chunk in one kernel on the tensor cores' `mma` (CUDA's
//! `mma.sync` m16n8k16, as `output_mma_kernel.rs`): one cube of 4 planes per chunk, plane `p`
//! owning the rows (tokens) `16p..16p+16`. The math is `gates.rs`' and `backward.rs`':
//! 1. over `DQK` in slices: `S = Q Kᵀ` (causal) and `q_t·n₀`; then the gate matrix in registers
//!    as the forward's output kernel forms it: `log D_ts = F_t - F_s + ĩ_s`, the row maxima and
//!    their first column, `stab_t`, `P = S/√DQK ∘ e^{log D - stab}`, `g_t`, `qn_t`,
//!    `den_t = max(|qn_t|, e^{-stab_t}) + eps`; `P` goes out rounded (for `dv`);
//! 2. over `DV` in slices: `R = dh Vᵀ` (causal), `dot_t = dh_t·h_t`, and
//!    `dnum_t = dh_t / den_t` out rounded;
//! 3. `dqn_t = -sign(qn_t) dot_t / den_t` where `|qn_t| ≥ e^{-stab_t}` (else 0), the stabiliser's
//!    gradient `-dot_t eps / den_t` (to the row maximum's column, or to `m₀ + F_t` where that is
//!    the stabiliser), `dP = R / den + dqn 1ᵀ` (as `dnum Vᵀ + dqn 1ᵀ`), `dS = dP ∘ e^{log D -
//!    stab}` out rounded, and the row and column sums of `d log D = dP ∘ P` (+ the stabiliser's
//!    term).
//!
//! The batched form writes `Q Kᵀ` and `dnum Vᵀ` in f32 and reads them back in three passes
//! (the gate matrix, the rows through the outputs, the gate gradients); here nothing of size
//! `[L, L]` reaches global memory but `P` and `dS`, in the half type.

use cubecl::cmma::MmaDefinition;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::mma_gate_matrix::{chunk_gate_sums, log_gate, probabilities_in_place, row_maxima};
use super::mma_tiles::{
    commit_round, load_x4, mma_pair, register_fragment_sizes, stage_async, store_x4, wait_round,
    write_plane_rows, FragA, FragB, FragC, MMA_K, MMA_M, MMA_N, PITCH, PLANE,
};

/// Planes per cube, each owning 16 rows (tokens) of the chunk.
pub(crate) const SCORE_PLANES: usize = 4;
/// Longest chunk of the kernel: 16 rows per plane.
pub(crate) const SCORE_MAX_LEN: usize = 16 * SCORE_PLANES;
/// Entries of `DQK` or `DV` staged per round (two rounds in flight).
const SLICE: usize = 32;
/// Row pitch of the staged slices in entries: 32 + 8.
const SLICE_PITCH: usize = 40;
/// `8`-column accumulator tiles per plane: the chunk's 64 token columns.
const TILES_N: usize = 8;
/// Units per cube.
const UNITS: usize = PLANE * SCORE_PLANES;

/// Shared memory of one cube in bytes for operands of `elem_bytes`: three stacks of two rounds
/// of slices (`Q`, `K`, then `dh`, `V`, `h`), the gates, `n₀`'s slices, `1/den`, the columns'
/// partial sums and the barriers.
pub(crate) fn score_shared_bytes(elem_bytes: usize) -> usize {
    3 * 2 * SCORE_MAX_LEN * SLICE_PITCH * elem_bytes
        + (4 * SCORE_MAX_LEN + 2 * SLICE + SCORE_PLANES * SCORE_MAX_LEN) * 4
        + 2 * 8
}

/// Every output of the step, as the module says; `[G = B·NH·NC, L, L]` matrices, `[G, L]` rows.
/// Grid: one cube per chunk along x; cube `PLANE × SCORE_PLANES`. `W` divides `DQK`, `DV` and
/// the row strides; `q, k, v, h, dh` have unit last stride; the rest is contiguous. Launched
/// unchecked: every global access is guarded here, shared-memory indices are in range by
/// construction.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_grads_mma_kernel<F: Float, W: Size>(
    q: &Tensor<Vector<F, W>>,         // [B, NH, NC, L, DQK]
    k: &Tensor<Vector<F, W>>,         // [B, NH, NC, L, DQK]
    v: &Tensor<Vector<F, W>>,         // [B, NH, NC, L, DV]
    h: &Tensor<Vector<F, W>>,         // [B, NH, NC, L, DV]
    dh: &Tensor<Vector<F, W>>,        // [B, NH, NC, L, DV]
    n_start: &Tensor<f32>,            // [G, DQK]
    log_f: &Tensor<f32>,              // [G, L]
    log_i: &Tensor<f32>,              // [G, L]
    log_start: &Tensor<f32>,          // [G, L], m₀ + F_t
    p_out: &mut Tensor<Vector<F, W>>, // [G, L, L]
    ds: &mut Tensor<Vector<F, W>>,    // [G, L, L]
    dnum: &mut Tensor<Vector<F, W>>,  // [B, NH, NC, L, DV]
    rows_out: &mut Tensor<f32>,       // [G, L]
    cols_out: &mut Tensor<f32>,       // [G, L]
    gain_out: &mut Tensor<f32>,       // [G, L]
    dqn_out: &mut Tensor<f32>,        // [G, L]
    dstab_start: &mut Tensor<f32>,    // [G, L]
    scale: f32,
    eps: f32,
    #[comptime] len: usize,
    #[define(F)] _dtype: StorageType,
) {
    let def = MmaDefinition::<F, F, f32>::new(MMA_M, MMA_N, MMA_K);
    register_fragment_sizes::<F>(def);
    let nc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let sc = def.vector_size(MatrixIdent::Accumulator);
    let width = q.vector_size();
    let rows = comptime!(len.next_multiple_of(MMA_K));
    let slice_vectors = comptime!(SLICE_PITCH / width);

    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y as usize;
    let heads = q.shape(1);
    let chunks = q.shape(2);
    let dqk = q.shape(4);
    let dv = v.shape(4);
    let chunk = CUBE_POS_X as usize; // over B·NH·NC
    let batch = chunk / (heads * chunks);
    let head = (chunk / chunks) % heads;
    let c = chunk % chunks;
    let row0 = plane * MMA_M; // this plane's first token
    let active = row0 < len;
    let group = (lane / 4) as usize; // this lane's rows: row0 + group and row0 + group + 8
    let in_group = (lane % 4) as usize;
    let t_top = row0 + group;
    let t_bottom = t_top + 8;

    // The chunk's gates: F_t and ĩ_s, zero past L.
    let mut f_cum = SharedMemory::<f32>::new(rows);
    let mut i_log = SharedMemory::<f32>::new(rows);
    let gate_base = chunk * len;
    chunk_gate_sums(log_f, log_i, gate_base, &mut f_cum, &mut i_log, len, rows);
    let u = UNIT_POS as usize;

    // Three stacks of two rounds of slices: Q, K and (phase 2 only) h; phase 2 stages dh in
    // Q's and V in K's.
    let mut a_tiles = SharedMemory::<Vector<F, W>>::new(comptime!(2 * rows * SLICE_PITCH / width)); // [t][x]
    let mut b_tiles = SharedMemory::<Vector<F, W>>::new(comptime!(2 * rows * SLICE_PITCH / width)); // [s][x]
    let mut h_tiles = SharedMemory::<Vector<F, W>>::new(comptime!(2 * rows * SLICE_PITCH / width)); // [t][d]
    let mut n_tiles = SharedMemory::<f32>::new(comptime!(2 * SLICE));
    let mut inv_den = SharedMemory::<f32>::new(rows);
    let mut col_parts = SharedMemory::<f32>::new(comptime!(SCORE_PLANES * SCORE_MAX_LEN));

    let barrier_0 = Barrier::shared(UNITS as u32, UNIT_POS == 0);
    let barrier_1 = Barrier::shared(UNITS as u32, UNIT_POS == 0);

    let q_base = batch * q.stride(0) + head * q.stride(1) + c * q.stride(2);
    let k_base = batch * k.stride(0) + head * k.stride(1) + c * k.stride(2);
    let v_base = batch * v.stride(0) + head * v.stride(1) + c * v.stride(2);
    let h_base = batch * h.stride(0) + head * h.stride(1) + c * h.stride(2);
    let dh_base = batch * dh.stride(0) + head * dh.stride(1) + c * dh.stride(2);
    let n_base = chunk * n_start.stride(0);

    // Phase 1: S = Q Kᵀ and q_t·n₀.
    // Protects: the barriers are initialised before any unit commits copies to them.
    sync_cube();
    issue_pair::<F, W>(
        q,
        k,
        q_base,
        k_base,
        len,
        0,
        0,
        &mut a_tiles,
        &mut b_tiles,
        rows,
    );
    issue_n_slice(n_start, n_base, dqk, 0, 0, &mut n_tiles);
    barrier_0.commit_copy_async();

    let mut scores = Array::<Vector<f32, FragC>>::new(comptime!(TILES_N * nc));
    let mut grads = Array::<Vector<f32, FragC>>::new(comptime!(TILES_N * nc));
    #[unroll]
    for i in 0..comptime!(TILES_N * nc) {
        scores[i] = Vector::<f32, FragC>::new(0.0);
        grads[i] = Vector::<f32, FragC>::new(0.0);
    }
    let mut b_frag = Array::<Vector<F, FragB>>::new(2usize);
    let mut c_frag = Array::<Vector<f32, FragC>>::new(nc);
    let mut qn0_top = 0.0f32;
    let mut qn0_bottom = 0.0f32;
    let rounds = dqk.div_ceil(SLICE);
    for round in 0..rounds {
        // Protects: every plane is done with the other round's slices before the next slice's
        // copies overwrite them, and this round's zero fills are seen.
        sync_cube();
        let this = round % 2;
        let next = 1 - this;
        if round + 1 < rounds {
            issue_pair::<F, W>(
                q,
                k,
                q_base,
                k_base,
                len,
                (round + 1) * SLICE,
                next,
                &mut a_tiles,
                &mut b_tiles,
                rows,
            );
            issue_n_slice(
                n_start,
                n_base,
                dqk,
                (round + 1) * SLICE,
                next,
                &mut n_tiles,
            );
            commit_round(&barrier_0, &barrier_1, next);
        }
        wait_round(&barrier_0, &barrier_1, this);
        if active {
            causal_products::<F, W>(
                def,
                &a_tiles,
                &b_tiles,
                this * rows,
                plane,
                &mut scores,
                &mut b_frag,
                &mut c_frag,
                width,
            );
            // q_t·n₀ over this lane's quarter of the slice, a vector of W entries at a time.
            #[unroll]
            for jv in 0..comptime!(SLICE / 4 / width) {
                let at = in_group * comptime!(SLICE / 4 / width) + jv;
                let top = a_tiles[(this * rows + t_top) * slice_vectors + at];
                let bottom = a_tiles[(this * rows + t_bottom) * slice_vectors + at];
                #[unroll]
                for e in 0..width {
                    let n = n_tiles[this * SLICE + at * width + e];
                    qn0_top += f32::cast_from(top[e]) * n;
                    qn0_bottom += f32::cast_from(bottom[e]) * n;
                }
            }
        }
    }

    // The gate matrix over this lane's entries of S: the row maxima of log D over s ≤ t and
    // their first column.
    let mut max_top = 0.0f32;
    let mut max_bottom = 0.0f32;
    let mut arg_top = 0u32;
    let mut arg_bottom = 0u32;
    let mut stab_top = 0.0f32;
    let mut stab_bottom = 0.0f32;
    let mut start_top = 0.0f32;
    let mut start_bottom = 0.0f32;
    let mut qn_top = 0.0f32;
    let mut qn_bottom = 0.0f32;
    let mut den_top = 1.0f32;
    let mut den_bottom = 1.0f32;
    let mut gain_top = 0.0f32;
    let mut gain_bottom = 0.0f32;
    if active {
        qn0_top += plane_shuffle_xor(qn0_top, 1);
        qn0_top += plane_shuffle_xor(qn0_top, 2);
        qn0_bottom += plane_shuffle_xor(qn0_bottom, 1);
        qn0_bottom += plane_shuffle_xor(qn0_bottom, 2);
        let (found_top, found_arg_top, found_bottom, found_arg_bottom) =
            row_maxima(def, &f_cum, &i_log, row0, plane);
        max_top = found_top;
        arg_top = found_arg_top;
        max_bottom = found_bottom;
        arg_bottom = found_arg_bottom;
        if t_top < len {
            start_top = log_start[gate_base + t_top];
        }
        if t_bottom < len {
            start_bottom = log_start[gate_base + t_bottom];
        }
        stab_top = max_top.max(start_top);
        stab_bottom = max_bottom.max(start_bottom);

        // P = S/sqrt(DQK) ∘ e^{log D - stab} in place, and its row sums.
        let (sum_top, sum_bottom) = probabilities_in_place(
            def,
            &mut scores,
            &f_cum,
            &i_log,
            row0,
            plane,
            stab_top,
            stab_bottom,
            scale,
        );
        gain_top = (start_top - stab_top).exp();
        gain_bottom = (start_bottom - stab_bottom).exp();
        qn_top = sum_top + gain_top * qn0_top;
        qn_bottom = sum_bottom + gain_bottom * qn0_bottom;
        den_top = qn_top.abs().max((-stab_top).exp()) + eps;
        den_bottom = qn_bottom.abs().max((-stab_bottom).exp()) + eps;
        if in_group == 0 {
            inv_den[t_top] = 1.0f32 / den_top;
            inv_den[t_bottom] = 1.0f32 / den_bottom;
        }
    }
    // P's rows out through h's stack (unused in phase 1).
    if active {
        write_rows::<F, W>(
            def,
            &scores,
            &mut h_tiles,
            p_out,
            chunk * len * len,
            len,
            row0,
            len,
            width,
        );
    }
    // Protects: every plane is done with the Q and K slices and has P's rows out of h's stack
    // before phase 2's copies overwrite them, and 1/den of every row is in shared memory.
    sync_cube();

    // Phase 2: R = dh Vᵀ, dot_t = dh_t·h_t and dnum = dh / den.
    issue_pair::<F, W>(
        dh,
        v,
        dh_base,
        v_base,
        len,
        0,
        0,
        &mut a_tiles,
        &mut b_tiles,
        rows,
    );
    issue_slice::<F, W>(h, h_base, len, 0, 0, &mut h_tiles, rows);
    barrier_0.commit_copy_async();
    let mut dot_top = 0.0f32;
    let mut dot_bottom = 0.0f32;
    let dnum_base = batch * dnum.stride(0) + head * dnum.stride(1) + c * dnum.stride(2);
    let rounds = dv.div_ceil(SLICE);
    for round in 0..rounds {
        // Protects: as in phase 1.
        sync_cube();
        let this = round % 2;
        let next = 1 - this;
        if round + 1 < rounds {
            issue_pair::<F, W>(
                dh,
                v,
                dh_base,
                v_base,
                len,
                (round + 1) * SLICE,
                next,
                &mut a_tiles,
                &mut b_tiles,
                rows,
            );
            issue_slice::<F, W>(
                h,
                h_base,
                len,
                (round + 1) * SLICE,
                next,
                &mut h_tiles,
                rows,
            );
            commit_round(&barrier_0, &barrier_1, next);
        }
        wait_round(&barrier_0, &barrier_1, this);
        if active {
            causal_products::<F, W>(
                def,
                &a_tiles,
                &b_tiles,
                this * rows,
                plane,
                &mut grads,
                &mut b_frag,
                &mut c_frag,
                width,
            );
            #[unroll]
            for jv in 0..comptime!(SLICE / 4 / width) {
                let at = in_group * comptime!(SLICE / 4 / width) + jv;
                let dh_top = a_tiles[(this * rows + t_top) * slice_vectors + at];
                let dh_bottom = a_tiles[(this * rows + t_bottom) * slice_vectors + at];
                let h_top = h_tiles[(this * rows + t_top) * slice_vectors + at];
                let h_bottom = h_tiles[(this * rows + t_bottom) * slice_vectors + at];
                #[unroll]
                for e in 0..width {
                    dot_top += f32::cast_from(dh_top[e]) * f32::cast_from(h_top[e]);
                    dot_bottom += f32::cast_from(dh_bottom[e]) * f32::cast_from(h_bottom[e]);
                }
            }
            // dnum of this plane's 16 rows of the slice, a vector of W entries per access.
            let per_row = comptime!(SLICE / width);
            #[unroll]
            for i in 0..comptime!((MMA_M * SLICE / width).div_ceil(PLANE)) {
                let e = lane as usize + i * PLANE;
                let r = e / per_row;
                let off = (e % per_row) * width;
                let t = row0 + r;
                let d = round * SLICE + off;
                if r < MMA_M && t < len && d < dv {
                    let x = Vector::<f32, W>::cast_from(
                        a_tiles[(this * rows + t) * slice_vectors + off / width],
                    );
                    dnum[(dnum_base + t * dnum.stride(3) + d) / width] =
                        Vector::cast_from(x * Vector::<f32, W>::new(inv_den[t]));
                }
            }
        }
    }

    // Phase 3: dqn, the stabiliser's gradient, dS and the sums of d log D.
    let mut row_top = 0.0f32;
    let mut row_bottom = 0.0f32;
    if active {
        dot_top += plane_shuffle_xor(dot_top, 1);
        dot_top += plane_shuffle_xor(dot_top, 2);
        dot_bottom += plane_shuffle_xor(dot_bottom, 1);
        dot_bottom += plane_shuffle_xor(dot_bottom, 2);
        let dqn_top = qn_gradient(qn_top, stab_top, dot_top, den_top);
        let dqn_bottom = qn_gradient(qn_bottom, stab_bottom, dot_bottom, den_bottom);
        let dstab_top = -dot_top * eps / den_top;
        let dstab_bottom = -dot_bottom * eps / den_bottom;
        // Where m₀ + F_t exceeds the row maximum it is the stabiliser and takes the gradient;
        // else the row maximum's column does.
        let mut to_max_top = dstab_top;
        let mut to_start_top = 0.0f32;
        if stab_top > max_top {
            to_max_top = 0.0f32;
            to_start_top = dstab_top;
        }
        let mut to_max_bottom = dstab_bottom;
        let mut to_start_bottom = 0.0f32;
        if stab_bottom > max_bottom {
            to_max_bottom = 0.0f32;
            to_start_bottom = dstab_bottom;
        }
        let inv_top = 1.0f32 / den_top;
        let inv_bottom = 1.0f32 / den_bottom;
        #[unroll]
        for nt in 0..TILES_N {
            let mut col_sums = Vector::<f32, FragC>::new(0.0);
            if nt / 2 <= plane {
                #[unroll]
                for i in 0..nc {
                    let p = scores[nt * nc + i];
                    let mut g = grads[nt * nc + i];
                    #[unroll]
                    for e in 0..sc {
                        let (r, col) = def.position_of_nth(
                            lane,
                            (i * sc + e) as u32,
                            MatrixIdent::Accumulator,
                        );
                        let t = row0 + r as usize;
                        let s = nt * MMA_N + col as usize;
                        let mut grad = 0.0f32;
                        let mut dlog = 0.0f32;
                        if s <= t {
                            let mut stab = stab_top;
                            let mut inv = inv_top;
                            let mut dqn = dqn_top;
                            let mut arg = arg_top;
                            let mut to_max = to_max_top;
                            if r >= 8 {
                                stab = stab_bottom;
                                inv = inv_bottom;
                                dqn = dqn_bottom;
                                arg = arg_bottom;
                                to_max = to_max_bottom;
                            }
                            let a = (log_gate(&f_cum, &i_log, t, s) - stab).exp();
                            let dp = g[e] * inv + dqn;
                            grad = dp * a;
                            dlog = dp * p[e];
                            if s as u32 == arg {
                                dlog += to_max;
                            }
                        }
                        g[e] = grad;
                        if r < 8 {
                            row_top += dlog;
                        } else {
                            row_bottom += dlog;
                        }
                        col_sums[e] += dlog;
                    }
                    grads[nt * nc + i] = g;
                }
            }
            // The column sums of this tile over the plane's 16 rows: the 8 groups of lanes
            // that share columns, then lanes 0-3 keep them.
            #[unroll]
            for e in 0..sc {
                let mut x = col_sums[e];
                x += plane_shuffle_xor(x, 4);
                x += plane_shuffle_xor(x, 8);
                x += plane_shuffle_xor(x, 16);
                if group == 0 {
                    col_parts[plane * SCORE_MAX_LEN + nt * MMA_N + in_group * sc + e] = x;
                }
            }
        }
        row_top += plane_shuffle_xor(row_top, 1);
        row_top += plane_shuffle_xor(row_top, 2);
        row_bottom += plane_shuffle_xor(row_bottom, 1);
        row_bottom += plane_shuffle_xor(row_bottom, 2);
        if in_group == 0 {
            if t_top < len {
                let at = gate_base + t_top;
                rows_out[at] = row_top;
                gain_out[at] = gain_top;
                dqn_out[at] = dqn_top;
                dstab_start[at] = to_start_top;
            }
            if t_bottom < len {
                let at = gate_base + t_bottom;
                rows_out[at] = row_bottom;
                gain_out[at] = gain_bottom;
                dqn_out[at] = dqn_bottom;
                dstab_start[at] = to_start_bottom;
            }
        }
    }
    // Protects: every plane is done with the slices (h's stack takes dS's rows) and the
    // columns' partial sums are in shared memory.
    sync_cube();
    if active {
        write_rows::<F, W>(
            def,
            &grads,
            &mut h_tiles,
            ds,
            chunk * len * len,
            len,
            row0,
            len,
            width,
        );
    }
    // The column sums over the planes that hold rows at or below the column.
    if u < len {
        let mut sum = 0.0f32;
        for p in 0..SCORE_PLANES {
            if p * MMA_M < len {
                sum += col_parts[p * SCORE_MAX_LEN + u];
            }
        }
        cols_out[gate_base + u] = sum;
    }
}

/// `dqn = -sign(qn) dot / den` where `|qn| ≥ e^{-stab}` (the normaliser takes `|qn|`), else 0.
#[cube]
fn qn_gradient(qn: f32, stab: f32, dot: f32, den: f32) -> f32 {
    let mut grad = 0.0f32;
    if qn.abs() >= (-stab).exp() {
        if qn > 0.0 {
            grad = -dot / den;
        } else if qn < 0.0 {
            grad = dot / den;
        }
    }
    grad
}

/// `acc += A Bᵀ` over one round's 32-entry slices: `A` the chunk's rows `[t][x]` and `B` its
/// rows `[s][x]` (`Bᵀ` read without transpose: `k` runs along the rows), causal: only the
/// token columns `s ≤` this plane's last row.
#[cube]
#[allow(clippy::too_many_arguments)]
fn causal_products<F: Float, W: Size>(
    def: MmaDefinition<F, F, f32>,
    a_tiles: &SharedMemory<Vector<F, W>>,
    b_tiles: &SharedMemory<Vector<F, W>>,
    round_row: usize,
    plane: usize,
    acc: &mut Array<Vector<f32, FragC>>,
    b_frag: &mut Array<Vector<F, FragB>>,
    c_frag: &mut Array<Vector<f32, FragC>>,
    #[comptime] width: usize,
) {
    let row0 = plane * MMA_M;
    #[unroll]
    for ks in 0..comptime!(SLICE / MMA_K) {
        let a_frag = load_x4::<F, W, FragA>(
            def,
            a_tiles,
            round_row + row0,
            ks * MMA_K,
            true,
            MatrixIdent::A,
            false,
            width,
            SLICE_PITCH,
        );
        #[unroll]
        for np in 0..comptime!(TILES_N / 2) {
            if np <= plane {
                let regs = load_x4::<F, W, FragB>(
                    def,
                    b_tiles,
                    round_row + 16usize * np,
                    ks * MMA_K,
                    false,
                    MatrixIdent::B,
                    false,
                    width,
                    SLICE_PITCH,
                );
                mma_pair(def, &a_frag, &regs, acc, b_frag, c_frag, np);
            }
        }
    }
}

/// This plane's 16 rows of a `[L, L]` matrix held as `TILES_N` accumulator tiles, rounded, out
/// to `out` at `base` (rows of `len`) through `stage` (rows of [`PITCH`]: `stmatrix`, then a row
/// of `W` entries per access).
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_rows<F: Float, W: Size>(
    def: MmaDefinition<F, F, f32>,
    acc: &Array<Vector<f32, FragC>>,
    stage: &mut SharedMemory<Vector<F, W>>,
    out: &mut Tensor<Vector<F, W>>,
    base: usize,
    row_len: usize,
    row0: usize,
    #[comptime] len: usize,
    #[comptime] width: usize,
) {
    let nc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let mut half_frags = Array::<Vector<F, FragC>>::new(comptime!(2 * nc));
    #[unroll]
    for np in 0..comptime!(TILES_N / 2) {
        #[unroll]
        for j in 0..2usize {
            #[unroll]
            for i in 0..nc {
                half_frags[j * nc + i] = Vector::cast_from(acc[(2usize * np + j) * nc + i]);
            }
        }
        store_x4::<F, W>(
            def,
            stage,
            &half_frags,
            row0,
            2usize * np * MMA_N,
            width,
            PITCH,
        );
    }
    // Protects: this plane's rows are in shared memory before its units write them out.
    sync_plane();
    write_plane_rows::<F, W>(stage, out, base, row_len, row0, len, 0, len, width);
}

/// Issues the `cp.async` copies of one round: entries `first..first + SLICE` of the chunk's
/// rows of `a` and `b` into round `slot` of their stacks.
#[cube]
#[allow(clippy::too_many_arguments)]
fn issue_pair<F: Float, W: Size>(
    a: &Tensor<Vector<F, W>>,
    b: &Tensor<Vector<F, W>>,
    a_base: usize,
    b_base: usize,
    len: usize,
    first: usize,
    slot: usize,
    a_tiles: &mut SharedMemory<Vector<F, W>>,
    b_tiles: &mut SharedMemory<Vector<F, W>>,
    #[comptime] rows: usize,
) {
    issue_slice::<F, W>(a, a_base, len, first, slot, a_tiles, rows);
    issue_slice::<F, W>(b, b_base, len, first, slot, b_tiles, rows);
}

/// Issues the `cp.async` copies of entries `first..first + SLICE` of the chunk's rows of `x`
/// into round `slot` of `tiles`.
#[cube]
fn issue_slice<F: Float, W: Size>(
    x: &Tensor<Vector<F, W>>,
    base: usize,
    len: usize,
    first: usize,
    slot: usize,
    tiles: &mut SharedMemory<Vector<F, W>>,
    #[comptime] rows: usize,
) {
    let width = x.vector_size();
    stage_async::<F, W>(
        x,
        base,
        x.stride(3),
        len,
        first,
        x.shape(4),
        tiles,
        slot * comptime!(rows * SLICE_PITCH / width),
        rows,
        SLICE,
        SLICE_PITCH,
        UNITS,
    );
}

/// `n₀`'s entries `first..first + SLICE` (zero past `DQK`) into round `slot` of `tiles`, by
/// plain stores (seen after the cube's next synchronisation).
#[cube]
fn issue_n_slice(
    n_start: &Tensor<f32>,
    n_base: usize,
    dqk: usize,
    first: usize,
    slot: usize,
    tiles: &mut SharedMemory<f32>,
) {
    let u = UNIT_POS as usize;
    if u < SLICE {
        let mut n = 0.0f32;
        if first + u < dqk {
            n = n_start[n_base + first + u];
        }
        tiles[slot * SLICE + u] = n;
    }
}
