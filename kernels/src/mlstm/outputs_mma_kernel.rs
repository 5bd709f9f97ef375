//! The outputs of the tensor-core forward in one kernel (TFLA's intra-chunk kernel): per chunk
//! and tile of `h` columns, `P = Q Kᵀ`, the stabilised gate matrix, `(D∘P) V`, `Q C₀` and the
//! normaliser (eq. 21 with the chunk's start state), the products on tensor cores (`cmma`,
//! 16×16×16 fragments, f32 accumulation), nothing between them in global memory. Measured on
//! the H200 (B8 NH8 S8192 DQK256 DV512 bf16): 8.7 ms under ncu, slower than the batched
//! products it would replace (≈ 4.5 ms with the tensor ops around them): 128 registers per
//! unit leave 2 cubes per SM for 32,768 cubes, each a chain of staged loads and syncs.
//! [`MlstmBackend::mlstm_chunk_outputs`](super::MlstmBackend::mlstm_chunk_outputs) is the
//! contract; its default is the tensor-op form.

use cubecl::prelude::*;

/// The chunk size the kernel is compiled for (four fragments of 16 tokens).
pub(crate) const MMA_CHUNK: usize = 64;
/// Planes (warps of 32 units) per cube.
pub(crate) const OUT_PLANES: usize = 8;

/// Columns of `Q`, `K` (rows of `C₀`) staged in shared memory per step over `DQK`.
const SLICE: usize = 64;
/// Row strides in shared memory, padded so that the fragments' rows fall in different banks
/// (unpadded, 78 % of the shared-memory wavefronts were bank conflicts): the `[64, 64]` tiles
/// of `F` and the f32 `[64, 64]` tile.
const QK_STRIDE: usize = SLICE + 8;
const P_STRIDE: usize = MMA_CHUNK + 4;

/// One cube per (chunk `c`, `TV` columns of `h`, row `g`), `L = 64`, 8 planes:
///
/// 1. the chunk's gates: `F_t` (given), `ĩ_s`, the row stabiliser
///    `stab_t = max(m₀ + F_t, max_{s≤t}(F_t - F_s + ĩ_s))` and `e^{m₀+F_t-stab_t}`;
/// 2. over `DQK` in slices of 64, staged in shared memory by all units at once (one memory
///    latency per slice; fragments loaded one after another from global memory took 10.4 ms
///    at the first benchmark shape): `P = Q Kᵀ` (16 fragments, two per plane), `Q C₀` (plane
///    `p`: rows `16 (p mod 4)`, a quarter or a half of the columns) and `q_t·n₀` in f32;
/// 3. `D∘P = P e^{F_t-F_s+ĩ_s-stab_t} / sqrt(DQK)` (`s ≤ t`, else 0) and its row sums in f32;
///    `D∘P` enters the next product as two operands of `F` (its rounded value and the rest:
///    one rounding to bf16 cost 4e-2 of relative error where a row's terms cancel);
/// 4. `(D∘P) V` with the chunk's values staged likewise;
/// 5. `h_t = ((D∘P) V + e^{m₀+F_t-stab_t} q_t C₀) / (max(|Σ_s (D∘P)_ts + e^{…} q_t·n₀|, e^{-stab_t}) + eps)`,
///    through a per-plane scratch in shared memory.
///
/// `DQK` and `DV` are multiples of 16, `TV` is 64 or 128; every tensor contiguous. Launched
/// unchecked: every access is in bounds by construction (stores guarded, staging loads
/// clamped).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_outputs_mma_kernel<F: Float>(
    q: &Tensor<F>,         // [G, NC, L, DQK]
    k: &Tensor<F>,         // [G, NC, L, DQK]
    v: &Tensor<F>,         // [G, NC, L, DV]
    f_cum: &Tensor<f32>,   // [G, NC, L], F_t
    log_i: &Tensor<f32>,   // [G, NC, L], ĩ_t
    c_start: &Tensor<F>,   // [G, NC, DQK, DV], C₀ of every chunk
    n_start: &Tensor<f32>, // [G, NC, DQK]
    m_start: &Tensor<f32>, // [G, NC]
    h: &mut Tensor<F>,     // [G, NC, L, DV]
    key_scale: f32,
    eps: f32,
    #[comptime] tv: usize,
    #[define(F)] _dtype: StorageType,
) {
    let l = MMA_CHUNK;
    let units = comptime!(32 * OUT_PLANES);
    let cols = comptime!(tv / 32); // fragment columns per plane
    let qk_per_unit = comptime!(MMA_CHUNK * SLICE / (32 * OUT_PLANES));
    let c_per_unit = comptime!(SLICE * tv / (32 * OUT_PLANES));
    let c_stride = comptime!(tv + 8);
    let tid = UNIT_POS as usize;
    let plane = tid / 32;
    let lane = tid % 32;
    let g = CUBE_POS_Y as usize;
    let chunks = q.shape(1);
    let dqk = q.shape(3);
    let dv = v.shape(3);
    let tiles_v = dv.div_ceil(tv);
    let c = CUBE_POS_X as usize / tiles_v;
    let d0 = (CUBE_POS_X as usize % tiles_v) * tv;
    let chunk = g * chunks + c;
    let qk_base = chunk * l * dqk; // the chunk's rows of q and k
    let v_base = chunk * l * dv;
    let c_base = chunk * dqk * dv;

    let mut fs = SharedMemory::<f32>::new(MMA_CHUNK);
    let mut is = SharedMemory::<f32>::new(MMA_CHUNK);
    let mut stab = SharedMemory::<f32>::new(MMA_CHUNK);
    let mut start_scale = SharedMemory::<f32>::new(MMA_CHUNK);
    let mut den = SharedMemory::<f32>::new(MMA_CHUNK);
    let mut parts = SharedMemory::<f32>::new(comptime!(4 * MMA_CHUNK));
    let mut ns = SharedMemory::<f32>::new(SLICE);
    // A slice of Q, then the rounded D∘P; a slice of K, then the rest of D∘P.
    let mut qs = SharedMemory::<F>::new(comptime!(MMA_CHUNK * QK_STRIDE));
    let mut ks = SharedMemory::<F>::new(comptime!(MMA_CHUNK * QK_STRIDE));
    // A slice of C₀ (`[SLICE, TV]`), then the chunk's values (`[L, TV]`).
    let mut cs = SharedMemory::<F>::new(comptime!(SLICE * (tv + 8)));
    // P, then D∘P in f32; at the end the planes' scratch (2 × 256 entries each).
    let mut ps = SharedMemory::<f32>::new(comptime!(MMA_CHUNK * P_STRIDE));

    // 1. Gates.
    if tid < l {
        fs[tid] = f_cum[chunk * l + tid];
        is[tid] = log_i[chunk * l + tid];
    }

    // 2. P = Q Kᵀ (plane p: rows 16 (p / 2), columns 32 (p mod 2) .. + 32), Q C₀ (plane p:
    //    rows 16 (p mod 4), `cols` fragment columns from 16 cols (p / 4)) and q_t·n₀ (four
    //    units per row, 16 columns of the slice each).
    let a = unsafe {
        cmma::Matrix::<F>::uninitialized(
            cmma::MatrixIdent::A,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::RowMajor,
        )
    };
    let a_lo = unsafe {
        cmma::Matrix::<F>::uninitialized(
            cmma::MatrixIdent::A,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::RowMajor,
        )
    };
    let b_col = unsafe {
        cmma::Matrix::<F>::uninitialized(
            cmma::MatrixIdent::B,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::ColMajor,
        )
    };
    let b_row = unsafe {
        cmma::Matrix::<F>::uninitialized(
            cmma::MatrixIdent::B,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::RowMajor,
        )
    };
    let mut scores = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..2usize {
        scores.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0,
        ));
    }
    let mut num = Sequence::<cmma::Matrix<f32>>::new();
    let mut qc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..cols {
        num.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0,
        ));
        qc.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0,
        ));
    }
    let p_row = (plane / 2) * 16;
    let p_col = (plane % 2) * 32;
    let o_row = (plane % 4) * 16;
    let o_col = (plane / 4) * 16 * cols;
    let t_part = tid / 4;
    let x_part = (tid % 4) * 16;
    let mut dot = 0.0f32;
    let mut x0 = 0usize;
    while x0 < dqk {
        // Stage Q, K ([L, SLICE]), C₀ ([SLICE, TV]) and n₀. The loads have no branches, so
        // that all of them are in flight at once (a branch per load serialised them: 35 ms);
        // entries past DQK or DV hold whatever lies there and feed only skipped fragments
        // (and q·n₀ against n₀ = 0).
        #[unroll]
        for i in 0..qk_per_unit {
            let e = tid + i * units;
            let at = (qk_base + (e / SLICE) * dqk + x0 + e % SLICE).min(q.len() - 1);
            qs[(e / SLICE) * QK_STRIDE + e % SLICE] = q[at];
            ks[(e / SLICE) * QK_STRIDE + e % SLICE] = k[at];
        }
        #[unroll]
        for i in 0..c_per_unit {
            let e = tid + i * units;
            let at = c_base + (x0 + e / tv) * dv + d0 + e % tv;
            cs[(e / tv) * c_stride + e % tv] = c_start[at.min(c_start.len() - 1)];
        }
        if tid < SLICE {
            let mut nx = 0.0f32;
            if x0 + tid < dqk {
                nx = n_start[chunk * dqk + x0 + tid];
            }
            ns[tid] = nx;
        }
        // Protects: the slices are complete before the products read them.
        sync_cube();
        for x in 0..16usize {
            dot += f32::cast_from(qs[t_part * QK_STRIDE + x_part + x]) * ns[x_part + x];
        }
        #[unroll]
        for step in 0..SLICE / 16 {
            if x0 + 16 * step < dqk {
                let q_off = p_row * QK_STRIDE + 16 * step;
                let q_end = q_off + 15 * QK_STRIDE + 16;
                cmma::load(&a, &qs.slice(q_off, q_end), QK_STRIDE as u32);
                #[unroll]
                for j in 0..2usize {
                    // B = Kᵀ: B[x, s] = ks[s, x], column-major.
                    let k_off = (p_col + 16 * j) * QK_STRIDE + 16 * step;
                    let k_end = k_off + 15 * QK_STRIDE + 16;
                    cmma::load(&b_col, &ks.slice(k_off, k_end), QK_STRIDE as u32);
                    cmma::execute::<F, F, f32, f32>(&a, &b_col, scores.index(j), scores.index(j));
                }
                let q_off = o_row * QK_STRIDE + 16 * step;
                let q_end = q_off + 15 * QK_STRIDE + 16;
                cmma::load(&a, &qs.slice(q_off, q_end), QK_STRIDE as u32);
                #[unroll]
                for j in 0..cols {
                    if d0 + o_col + 16 * j < dv {
                        let c_off = 16 * step * c_stride + o_col + 16 * j;
                        let c_end = c_off + 15 * c_stride + 16;
                        cmma::load(&b_row, &cs.slice(c_off, c_end), c_stride as u32);
                        cmma::execute::<F, F, f32, f32>(&a, &b_row, qc.index(j), qc.index(j));
                    }
                }
            }
        }
        // Protects: every unit is done with the slices before the next ones overwrite them.
        sync_cube();
        x0 += SLICE;
    }
    #[unroll]
    for j in 0..2usize {
        let off = p_row * P_STRIDE + p_col + 16 * j;
        cmma::store(
            &mut ps.slice_mut(off, off + 15 * P_STRIDE + 16),
            scores.index(j),
            P_STRIDE as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
    parts[tid] = dot;
    // Stage the chunk's values into cs ([L, TV]; columns past DV feed only skipped fragments).
    #[unroll]
    for i in 0..c_per_unit {
        let e = tid + i * units;
        cs[(e / tv) * c_stride + e % tv] =
            v[(v_base + (e / tv) * dv + d0 + e % tv).min(v.len() - 1)];
    }
    // Protects: P, the gates and the partial q·n₀ are complete before they are read.
    sync_cube();
    if tid < l {
        let m0 = m_start[chunk];
        let f_t = fs[tid];
        let mut mx = m0 + f_t;
        for s in 0..tid + 1 {
            mx = mx.max(f_t - fs[s] + is[s]);
        }
        stab[tid] = mx;
        start_scale[tid] = (m0 + f_t - mx).exp();
    }
    // Protects: the stabilisers are complete before the gate matrix uses them, and every
    // unit has read its partial q·n₀ before the row sums overwrite them.
    sync_cube();

    // 3. D∘P (into qs, rounded, and ks, the rest) and its row sums.
    let mut e = tid;
    while e < l * l {
        let t = e / l;
        let s = e % l;
        let mut val = 0.0f32;
        if s <= t {
            val = ps[t * P_STRIDE + s] * key_scale * (fs[t] - fs[s] + is[s] - stab[t]).exp();
        }
        let hi = F::cast_from(val);
        ps[t * P_STRIDE + s] = val;
        qs[t * QK_STRIDE + s] = hi;
        ks[t * QK_STRIDE + s] = F::cast_from(val - f32::cast_from(hi));
        e += units;
    }
    let qn_t = parts[4 * (tid % l)]
        + parts[4 * (tid % l) + 1]
        + parts[4 * (tid % l) + 2]
        + parts[4 * (tid % l) + 3];
    // Protects: D∘P is complete before its row sums and the products read it, and the
    // partial q·n₀ are read before the row sums overwrite them.
    sync_cube();
    let mut row = 0.0f32;
    for s in 0..16usize {
        row += ps[t_part * P_STRIDE + x_part + s];
    }
    parts[tid] = row;
    // Protects: the partial row sums are written before they are added.
    sync_cube();
    if tid < l {
        let total = parts[4 * tid] + parts[4 * tid + 1] + parts[4 * tid + 2] + parts[4 * tid + 3];
        den[tid] = (total + start_scale[tid] * qn_t)
            .abs()
            .max((-stab[tid]).exp())
            + eps;
    }

    // 4. (D∘P) V.
    #[unroll]
    for step in 0..MMA_CHUNK / 16 {
        let p_off = o_row * QK_STRIDE + 16 * step;
        let p_end = p_off + 15 * QK_STRIDE + 16;
        cmma::load(&a, &qs.slice(p_off, p_end), QK_STRIDE as u32);
        cmma::load(&a_lo, &ks.slice(p_off, p_end), QK_STRIDE as u32);
        #[unroll]
        for j in 0..cols {
            if d0 + o_col + 16 * j < dv {
                let v_off = 16 * step * c_stride + o_col + 16 * j;
                let v_end = v_off + 15 * c_stride + 16;
                cmma::load(&b_row, &cs.slice(v_off, v_end), c_stride as u32);
                cmma::execute::<F, F, f32, f32>(&a, &b_row, num.index(j), num.index(j));
                cmma::execute::<F, F, f32, f32>(&a_lo, &b_row, num.index(j), num.index(j));
            }
        }
    }
    // Protects: every plane is done with ps (the row sums) and den is complete before the
    // planes' scratch overwrites ps and the outputs read den.
    sync_cube();

    // 5. h through the plane's scratch: ps[512 p ..] holds one fragment of each product.
    let scratch = plane * 512;
    #[unroll]
    for j in 0..cols {
        let d = d0 + o_col + 16 * j;
        if d < dv {
            cmma::store(
                &mut ps.slice_mut(scratch, scratch + 256),
                num.index(j),
                16u32,
                cmma::MatrixLayout::RowMajor,
            );
            cmma::store(
                &mut ps.slice_mut(scratch + 256, scratch + 512),
                qc.index(j),
                16u32,
                cmma::MatrixLayout::RowMajor,
            );
            // Protects: the plane's fragments are in the scratch before its units read them.
            sync_plane();
            #[unroll]
            for x in 0..8usize {
                let e = lane + 32 * x;
                let t = o_row + e / 16;
                let val = (ps[scratch + e] + start_scale[t] * ps[scratch + 256 + e]) / den[t];
                h[v_base + t * dv + d + e % 16] = F::cast_from(val);
            }
            // Protects: the plane's units have read the scratch before the next store.
            sync_plane();
        }
    }
}
