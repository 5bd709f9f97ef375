//! The outputs of every chunk in one kernel on the tensor cores' `mma` (CUDA's `mma.sync`
//! m16n8k16, as `state_mma_kernel.rs`): TFLA's parallel kernel. One cube per (chunk, 64 columns
//! of `DV`) computes, for the chunk's `L ≤ 64` tokens (eq. 21 within a chunk, the math of
//! `gates.rs` and `chunk_matmul::chunk_outputs`):
//! - `S = Q Kᵀ`, `Q C₀` and `q_t·n₀` over `DQK` in slices staged in shared memory;
//! - the gate matrix in registers: `log D_ts = F_t - F_s + ĩ_s` (`s ≤ t`, `F` the chunk's
//!   cumulative `log f`), `stab_t = max(max_s log D_ts, m₀ + F_t)`, `P = S/sqrt(DQK) ∘
//!   e^{log D - stab}`, `g_t = e^{m₀+F_t-stab_t}`, `qn_t = Σ_s P_ts + g_t q_t·n₀`;
//! - `h_t = (P V + g_t q_t C₀)_t / (max(|qn_t|, e^{-stab_t}) + eps)`, with `P` as two half-type
//!   operands (its rounded value and the rest, as the split of `gates.rs`) straight from the
//!   registers that hold it (the accumulator layout of two `16 × 8` tiles is the `A` operand's
//!   of one `16 × 16`).
//!
//! Nothing of size `[L, L]` or `[L, DV]` reaches global memory but `h`; the batched-product form
//! writes `Q Kᵀ`, `P`, `P V` and `Q C₀` and reads them back. The plane of rows `16p..16p+16`
//! multiplies only the token columns `s ≤ 16p + 15` (causal).

use cubecl::cmma::MmaDefinition;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::mma_gate_matrix::{chunk_gate_sums, probabilities_in_place, row_maxima};
use super::mma_tiles::{
    commit_round, load_x4, mma_pair, register_fragment_sizes, stage, stage_async, store_x4,
    wait_round, write_plane_rows, FragA, FragB, FragC, MMA_K, MMA_M, MMA_N, PITCH, PLANE,
};

/// Columns of `DV` per cube.
pub(crate) const OUTPUT_TILE: usize = 64;
/// Planes per cube, each owning 16 rows (tokens) of the chunk.
pub(crate) const OUTPUT_PLANES: usize = 4;
/// Longest chunk of the kernel: 16 rows per plane.
pub(crate) const OUTPUT_MAX_LEN: usize = 16 * OUTPUT_PLANES;
/// `DQK` entries staged per round (two rounds in flight: one multiplied while the next loads).
const SLICE: usize = 32;
/// Row pitch of the staged `Q` and `K` slices in entries: 32 + 8 (80 bytes: the 16-byte rows
/// `ldmatrix` reads from 8 consecutive rows fall in distinct banks).
const SLICE_PITCH: usize = 40;
/// `8`-column accumulator tiles per plane: 64 token columns of `S`, 64 value columns of `h`.
const TILES_N: usize = 8;
/// Units per cube.
const UNITS: usize = PLANE * OUTPUT_PLANES;

/// Shared memory of one cube in bytes for operands of `elem_bytes`: two rounds of the staged
/// `Q`, `K` (64 rows of [`SLICE_PITCH`]) and `C₀` slices (32 rows of [`PITCH`]), `V` (64 rows),
/// the chunk's gates and two rounds of `n₀`'s slice, and the two barriers.
pub(crate) fn output_shared_bytes(elem_bytes: usize) -> usize {
    (2 * (2 * OUTPUT_MAX_LEN * SLICE_PITCH + SLICE * PITCH) + OUTPUT_MAX_LEN * PITCH) * elem_bytes
        + (3 * OUTPUT_MAX_LEN + 2 * SLICE) * 4
        + 2 * 8
}

/// `h [B, NH, NC, L, DV]` of every chunk from its inputs and start state. Grid: one axis of
/// `(B·NH·NC) × tiles of DV` cubes, the `DV` tiles of a chunk adjacent (they share `Q` and `K`
/// in the cache); cube `PLANE × OUTPUT_PLANES`. `W` divides `DQK`, `DV` and the row strides;
/// `q, k, v` have unit last stride; the gates, `c_start`, `n_start` and `h` are contiguous.
/// Launched unchecked: every global access is guarded here, shared-memory indices are in range
/// by construction.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_outputs_mma_kernel<F: Float, W: Size>(
    q: &Tensor<Vector<F, W>>,       // [B, NH, NC, L, DQK]
    k: &Tensor<Vector<F, W>>,       // [B, NH, NC, L, DQK]
    v: &Tensor<Vector<F, W>>,       // [B, NH, NC, L, DV]
    c_start: &Tensor<Vector<F, W>>, // [B, NH, NC, DQK, DV]
    n_start: &Tensor<f32>,          // [B·NH·NC, DQK]
    log_f: &Tensor<f32>,            // [B·NH·NC, L]
    log_i: &Tensor<f32>,            // [B·NH·NC, L]
    log_start: &Tensor<f32>,        // [B·NH·NC, L], m₀ + F_t
    h: &mut Tensor<Vector<F, W>>,   // [B, NH, NC, L, DV]
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

    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y as usize;
    let heads = q.shape(1);
    let chunks = q.shape(2);
    let dqk = q.shape(4);
    let dv = v.shape(4);
    let tiles_v = dv.div_ceil(OUTPUT_TILE);
    let chunk = CUBE_POS_X as usize / tiles_v; // over B·NH·NC
    let col0 = (CUBE_POS_X as usize % tiles_v) * OUTPUT_TILE;
    let batch = chunk / (heads * chunks);
    let head = (chunk / chunks) % heads;
    let c = chunk % chunks;
    let row0 = plane * MMA_M; // this plane's first token
    let active = row0 < len;

    // The chunk's gates: F_t and ĩ_s, zero past L.
    let mut f_cum = SharedMemory::<f32>::new(rows);
    let mut i_log = SharedMemory::<f32>::new(rows);
    let gate_base = chunk * len;
    chunk_gate_sums(log_f, log_i, gate_base, &mut f_cum, &mut i_log, len, rows);

    // Two rounds of the Q, K and C₀ slices and of n₀'s, stacked: round `b` at rows `b·rows`
    // (Q, K), `b·SLICE` (C₀, n₀).
    let mut q_tiles = SharedMemory::<Vector<F, W>>::new(comptime!(2 * rows * SLICE_PITCH / width)); // [t][a]
    let mut k_tiles = SharedMemory::<Vector<F, W>>::new(comptime!(2 * rows * SLICE_PITCH / width)); // [s][a]
    let mut c_tiles = SharedMemory::<Vector<F, W>>::new(comptime!(2 * SLICE * PITCH / width)); // [a][d]
    let mut v_tile = SharedMemory::<Vector<F, W>>::new(comptime!(rows * PITCH / width)); // [s][d]
    let mut n_tiles = SharedMemory::<f32>::new(comptime!(2 * SLICE)); // n₀'s entries

    // One barrier per round: the copies of a round are committed to it when issued, and every
    // unit arrives and waits on it before the round is multiplied.
    let barrier_0 = Barrier::shared(UNITS as u32, UNIT_POS == 0);
    let barrier_1 = Barrier::shared(UNITS as u32, UNIT_POS == 0);

    let q_base = batch * q.stride(0) + head * q.stride(1) + c * q.stride(2);
    let k_base = batch * k.stride(0) + head * k.stride(1) + c * k.stride(2);
    let v_base = batch * v.stride(0) + head * v.stride(1) + c * v.stride(2);
    let c_base = batch * c_start.stride(0) + head * c_start.stride(1) + c * c_start.stride(2);
    let n_base = chunk * n_start.stride(0);
    stage::<F, W>(
        v,
        v_base,
        v.stride(3),
        len,
        col0,
        dv,
        &mut v_tile,
        0,
        rows,
        OUTPUT_TILE,
        PITCH,
        UNITS,
    );
    // Protects: the barriers are initialised before any unit commits copies to them.
    sync_cube();
    issue_round::<F, W>(
        q,
        k,
        c_start,
        n_start,
        q_base,
        k_base,
        c_base,
        n_base,
        len,
        col0,
        0,
        0,
        &mut q_tiles,
        &mut k_tiles,
        &mut c_tiles,
        &mut n_tiles,
        rows,
    );
    barrier_0.commit_copy_async();

    // S = Q Kᵀ and Q C₀ as TILES_N accumulator tiles each (16 × 8), and q_t·n₀ for this lane's
    // two rows over a quarter of each slice.
    let mut scores = Array::<Vector<f32, FragC>>::new(comptime!(TILES_N * nc));
    let mut out = Array::<Vector<f32, FragC>>::new(comptime!(TILES_N * nc));
    #[unroll]
    for i in 0..comptime!(TILES_N * nc) {
        scores[i] = Vector::<f32, FragC>::new(0.0);
        out[i] = Vector::<f32, FragC>::new(0.0);
    }
    let mut b_frag = Array::<Vector<F, FragB>>::new(2usize);
    let mut c_frag = Array::<Vector<f32, FragC>>::new(nc);
    let group = (lane / 4) as usize; // this lane's rows: row0 + group and row0 + group + 8
    let in_group = (lane % 4) as usize;
    let mut qn0_top = 0.0f32;
    let mut qn0_bottom = 0.0f32;
    let rounds = dqk.div_ceil(SLICE);
    for round in 0..rounds {
        // Protects: every plane is done with the other round's tiles (the previous slice)
        // before the next slice's copies overwrite them, and this round's zero fills are seen.
        sync_cube();
        let this = round % 2;
        let next = 1 - this;
        if round + 1 < rounds {
            issue_round::<F, W>(
                q,
                k,
                c_start,
                n_start,
                q_base,
                k_base,
                c_base,
                n_base,
                len,
                col0,
                (round + 1) * SLICE,
                next,
                &mut q_tiles,
                &mut k_tiles,
                &mut c_tiles,
                &mut n_tiles,
                rows,
            );
            commit_round(&barrier_0, &barrier_1, next);
        }
        wait_round(&barrier_0, &barrier_1, this);
        if active {
            #[unroll]
            for ks in 0..comptime!(SLICE / MMA_K) {
                // A = Q[t, a] (m = token, k = key entry), row-major.
                let a_frag = load_x4::<F, W, FragA>(
                    def,
                    &q_tiles,
                    this * rows + row0,
                    ks * MMA_K,
                    true,
                    MatrixIdent::A,
                    false,
                    width,
                    SLICE_PITCH,
                );
                #[unroll]
                for np in 0..comptime!(TILES_N / 2) {
                    // B = Kᵀ[a, s] (k = key entry, n = token) from K's rows [s][a], no
                    // transpose: `k` runs along the tile's columns. Only the token columns
                    // s ≤ this plane's last.
                    if np <= plane {
                        let regs = load_x4::<F, W, FragB>(
                            def,
                            &k_tiles,
                            this * rows + 16usize * np,
                            ks * MMA_K,
                            false,
                            MatrixIdent::B,
                            false,
                            width,
                            SLICE_PITCH,
                        );
                        mma_pair(
                            def,
                            &a_frag,
                            &regs,
                            &mut scores,
                            &mut b_frag,
                            &mut c_frag,
                            np,
                        );
                    }
                    // B = C₀[a, d] (k = key entry, n = value entry), row-major, transposed by
                    // `ldmatrix`.
                    let regs = load_x4::<F, W, FragB>(
                        def,
                        &c_tiles,
                        this * SLICE + ks * MMA_K,
                        2usize * np * MMA_N,
                        true,
                        MatrixIdent::B,
                        true,
                        width,
                        PITCH,
                    );
                    mma_pair(def, &a_frag, &regs, &mut out, &mut b_frag, &mut c_frag, np);
                }
            }
            // q_t·n₀ over this lane's quarter of the slice, a vector of W entries at a time.
            let q_pitch = comptime!(SLICE_PITCH / width);
            #[unroll]
            for jv in 0..comptime!(SLICE / 4 / width) {
                let at = in_group * comptime!(SLICE / 4 / width) + jv; // vector of the row
                let top = q_tiles[(this * rows + row0 + group) * q_pitch + at];
                let bottom = q_tiles[(this * rows + row0 + group + 8) * q_pitch + at];
                #[unroll]
                for e in 0..width {
                    // Zero past DQK in both operands.
                    let n = n_tiles[this * SLICE + at * width + e];
                    qn0_top += f32::cast_from(top[e]) * n;
                    qn0_bottom += f32::cast_from(bottom[e]) * n;
                }
            }
        }
    }
    // Protects: every plane is done with the C₀ tiles before they take the rows of h.
    sync_cube();

    if active {
        qn0_top += plane_shuffle_xor(qn0_top, 1);
        qn0_top += plane_shuffle_xor(qn0_top, 2);
        qn0_bottom += plane_shuffle_xor(qn0_bottom, 1);
        qn0_bottom += plane_shuffle_xor(qn0_bottom, 2);

        // The gate matrix over this lane's entries of S: row maxima of log D over s ≤ t.
        let (max_top, _, max_bottom, _) = row_maxima(def, &f_cum, &i_log, row0, plane);
        let t_top = row0 + group;
        let t_bottom = t_top + 8;
        let mut start_top = 0.0f32;
        let mut start_bottom = 0.0f32;
        if t_top < len {
            start_top = log_start[gate_base + t_top];
        }
        if t_bottom < len {
            start_bottom = log_start[gate_base + t_bottom];
        }
        let stab_top = max_top.max(start_top);
        let stab_bottom = max_bottom.max(start_bottom);

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
        let gain_top = (start_top - stab_top).exp();
        let gain_bottom = (start_bottom - stab_bottom).exp();
        let qn_top = sum_top + gain_top * qn0_top;
        let qn_bottom = sum_bottom + gain_bottom * qn0_bottom;

        // g_t q_t C₀, then P V on top: P's accumulator tiles 2j and 2j+1 are the A operand of
        // the 16-token step j (rows g | g+8 × tokens 0-7 | 8-15 of the step), once rounded and
        // once the rest.
        #[unroll]
        for nt in 0..TILES_N {
            #[unroll]
            for i in 0..nc {
                let (r, _col) =
                    def.position_of_nth(lane, (i * sc) as u32, MatrixIdent::Accumulator);
                let mut gain = gain_top;
                if r >= 8 {
                    gain = gain_bottom;
                }
                out[nt * nc + i] = out[nt * nc + i] * Vector::<f32, FragC>::new(gain);
            }
        }
        let mut p_high = Array::<Vector<F, FragC>>::new(comptime!(2 * nc));
        let mut p_low = Array::<Vector<F, FragC>>::new(comptime!(2 * nc));
        #[unroll]
        for j in 0..comptime!(rows / MMA_K) {
            if j <= plane {
                #[unroll]
                for half in 0..2usize {
                    #[unroll]
                    for i in 0..nc {
                        let p = scores[(2usize * j + half) * nc + i];
                        let high = Vector::<F, FragC>::cast_from(p);
                        p_high[half * nc + i] = high;
                        p_low[half * nc + i] =
                            Vector::cast_from(p - Vector::<f32, FragC>::cast_from(high));
                    }
                }
                #[unroll]
                for np in 0..comptime!(TILES_N / 2) {
                    // B = V[s, d] (k = token, n = value entry), row-major, transposed by
                    // `ldmatrix`.
                    let regs = load_x4::<F, W, FragB>(
                        def,
                        &v_tile,
                        j * MMA_K,
                        2usize * np * MMA_N,
                        true,
                        MatrixIdent::B,
                        true,
                        width,
                        PITCH,
                    );
                    mma_pair(def, &p_high, &regs, &mut out, &mut b_frag, &mut c_frag, np);
                    mma_pair(def, &p_low, &regs, &mut out, &mut b_frag, &mut c_frag, np);
                }
            }
        }

        // h = (P V + g q C₀) / (max(|qn|, e^{-stab}) + eps), rounded, through this plane's rows
        // of the C₀ tiles (free since the last synchronisation; 2 · SLICE = 64 rows of PITCH)
        // with `stmatrix`, then out a row of W entries per access.
        let den_top = Vector::<f32, FragC>::new(qn_top.abs().max((-stab_top).exp()) + eps);
        let den_bottom = Vector::<f32, FragC>::new(qn_bottom.abs().max((-stab_bottom).exp()) + eps);
        let mut half_frags = Array::<Vector<F, FragC>>::new(comptime!(2 * nc));
        #[unroll]
        for np in 0..comptime!(TILES_N / 2) {
            #[unroll]
            for j in 0..2usize {
                #[unroll]
                for i in 0..nc {
                    let (r, _col) =
                        def.position_of_nth(lane, (i * sc) as u32, MatrixIdent::Accumulator);
                    let mut den = den_top;
                    if r >= 8 {
                        den = den_bottom;
                    }
                    half_frags[j * nc + i] =
                        Vector::cast_from(out[(2usize * np + j) * nc + i] / den);
                }
            }
            store_x4::<F, W>(
                def,
                &mut c_tiles,
                &half_frags,
                row0,
                2usize * np * MMA_N,
                width,
                PITCH,
            );
        }
    }
    // Protects: this plane's rows of h are in shared memory before its units write them out.
    sync_plane();
    if active {
        let h_base = batch * h.stride(0) + head * h.stride(1) + c * h.stride(2);
        write_plane_rows::<F, W>(&c_tiles, h, h_base, h.stride(3), row0, len, col0, dv, width);
    }
}

/// Issues the copies of one round: the slice of `DQK` entries `first..first + SLICE` of `Q` and
/// `K` (the chunk's rows) and of `C₀` (its rows; columns `col0..col0 + 64`) into round `slot`
/// of the tiles, through `cp.async`, and `n₀`'s slice by plain stores. The bases are the
/// chunk's offsets in `q, k, c_start, n_start`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn issue_round<F: Float, W: Size>(
    q: &Tensor<Vector<F, W>>,
    k: &Tensor<Vector<F, W>>,
    c_start: &Tensor<Vector<F, W>>,
    n_start: &Tensor<f32>,
    q_base: usize,
    k_base: usize,
    c_base: usize,
    n_base: usize,
    len: usize,
    col0: usize,
    first: usize,
    slot: usize,
    q_tiles: &mut SharedMemory<Vector<F, W>>,
    k_tiles: &mut SharedMemory<Vector<F, W>>,
    c_tiles: &mut SharedMemory<Vector<F, W>>,
    n_tiles: &mut SharedMemory<f32>,
    #[comptime] rows: usize,
) {
    let width = q.vector_size();
    let dqk = q.shape(4);
    let dv = c_start.shape(4);
    let slice_at = slot * comptime!(rows * SLICE_PITCH / width);
    stage_async::<F, W>(
        q,
        q_base,
        q.stride(3),
        len,
        first,
        dqk,
        q_tiles,
        slice_at,
        rows,
        SLICE,
        SLICE_PITCH,
        UNITS,
    );
    stage_async::<F, W>(
        k,
        k_base,
        k.stride(3),
        len,
        first,
        dqk,
        k_tiles,
        slice_at,
        rows,
        SLICE,
        SLICE_PITCH,
        UNITS,
    );
    stage_async::<F, W>(
        c_start,
        c_base + first * c_start.stride(3),
        c_start.stride(3),
        dqk - first,
        col0,
        dv,
        c_tiles,
        slot * comptime!(SLICE * PITCH / width),
        SLICE,
        OUTPUT_TILE,
        PITCH,
        UNITS,
    );
    let u = UNIT_POS as usize;
    if u < SLICE {
        let mut n = 0.0f32;
        if first + u < dqk {
            n = n_start[n_base + first + u];
        }
        n_tiles[slot * SLICE + u] = n;
    }
}
