//! The chunk-boundary states of the tensor-core forward in one kernel: per chunk `c`,
//! `C_{c+1} = a_c C_c + K_wᵀ V` (the chunk's `Kᵀ V` with its weighted keys, eq. 19 summed over
//! the chunk), the increment on tensor cores (`cmma`, 16×16×16 fragments, f32 accumulation)
//! and added to the state in place, so neither the increments nor a second pass over them
//! ever reach global memory (they were 2.1 GB written and read back at the first benchmark
//! shape). Measured on the H200 at that shape: 6.0 ms under ncu, slower than the batched
//! product and scan (≈ 3.2 ms): 168 registers per unit leave one cube per SM, so the 2,048
//! cubes run in 15.5 waves, each walking all 128 chunks in turn.
//! [`MlstmBackend::mlstm_chunk_states`](super::MlstmBackend::mlstm_chunk_states) is the
//! contract; its default is the tensor-op form.

use cubecl::prelude::*;

/// Rows and columns of the state tile of one cube.
pub(crate) const STATE_TILE: usize = 64;
/// Row strides of the tiles in shared memory: padded past 64 so that the fragments' rows fall
/// in different banks (unpadded, 75 % of the shared-memory wavefronts were bank conflicts).
const C_STRIDE: usize = STATE_TILE + 4; // f32
const KV_STRIDE: usize = STATE_TILE + 8; // F
/// Planes (warps of 32 units) per cube: plane `p` owns rows `16 (p mod 4)` and columns
/// `32 (p / 4) .. + 32` of the tile (two accumulator fragments). Eight planes rather than
/// four halve each unit's registers, so that more cubes are resident at once: a cube walks
/// every chunk in turn, so the time is the number of waves times the chunk count.
pub(crate) const STATE_PLANES: usize = 8;
/// Fragment columns per plane.
const PLANE_BLOCKS: usize = STATE_TILE / 16 / (STATE_PLANES / 4);

/// One cube per (`64 × 64` tile of `C`, row `g`) walks the chunks. The tile stays in shared
/// memory in f32; per chunk the cube writes it out as the chunk-start state (in `F`), scales
/// it by `a_c`, loads it into accumulator fragments, adds `K_wᵀ V` over the chunk's tokens in
/// steps of 16 and stores it back. The chunk's keys and values of the tile are staged in shared
/// memory by all units at once, and the next chunk's are loaded into registers while the
/// planes multiply (one memory latency per chunk, hidden behind the products; fragments loaded
/// one after another from global memory took 6.1 ms at the first benchmark shape).
/// `DQK` and `DV` are multiples of 16, `L` a multiple of 16; every tensor contiguous. Launched
/// unchecked: every access is in bounds by construction (stores guarded, staging loads
/// clamped).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_states_mma_kernel<F: Float>(
    k_w: &Tensor<F>,         // [G, NC, L, DQK], the weighted keys
    v: &Tensor<F>,           // [G, NC, L, DV]
    decay: &Tensor<f32>,     // [G, NC], a_c
    c0: &Tensor<f32>,        // [G, DQK, DV]
    c_start: &mut Tensor<F>, // [G, NC, DQK, DV], C before every chunk
    c_end: &mut Tensor<f32>, // [G, DQK, DV], C after the last
    #[comptime] len: usize,  // L
    #[define(F)] _dtype: StorageType,
) {
    let tile = STATE_TILE;
    let units = comptime!(32 * STATE_PLANES);
    let tile_per_unit = comptime!(STATE_TILE * STATE_TILE / (32 * STATE_PLANES));
    let per_unit = comptime!(len * STATE_TILE / (32 * STATE_PLANES)); // staged entries
    let g = CUBE_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let plane = tid / 32;
    let chunks = k_w.shape(1);
    let dqk = k_w.shape(3);
    let dv = v.shape(3);
    let tiles_v = dv.div_ceil(tile);
    let a0 = (CUBE_POS_X as usize / tiles_v) * tile;
    let d0 = (CUBE_POS_X as usize % tiles_v) * tile;
    let state_len = dqk * dv;

    let mut cs = SharedMemory::<f32>::new(comptime!(STATE_TILE * C_STRIDE));
    let mut ks = SharedMemory::<F>::new(comptime!(len * KV_STRIDE)); // [L, 64] of k_w
    let mut vs = SharedMemory::<F>::new(comptime!(len * KV_STRIDE)); // [L, 64] of v
    let mut e = tid;
    while e < tile * tile {
        let a = a0 + e / tile;
        let d = d0 + e % tile;
        let mut x = 0.0f32;
        if a < dqk && d < dv {
            x = c0[g * state_len + a * dv + d];
        }
        cs[(e / tile) * C_STRIDE + e % tile] = x;
        e += units;
    }

    // The next chunk's keys and values of this tile, in registers (entry tid + 256 i).
    let mut k_next = Array::<F>::new(per_unit);
    let mut v_next = Array::<F>::new(per_unit);
    load_chunk::<F>(
        k_w,
        v,
        &mut k_next,
        &mut v_next,
        g * chunks * len,
        a0,
        d0,
        per_unit,
    );

    // The plane's accumulators: columns col + 16j of its 16 rows.
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..PLANE_BLOCKS {
        acc.push(unsafe {
            cmma::Matrix::<f32>::uninitialized(
                cmma::MatrixIdent::Accumulator,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::Undefined,
            )
        });
    }
    let a = unsafe {
        cmma::Matrix::<F>::uninitialized(
            cmma::MatrixIdent::A,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::ColMajor,
        )
    };
    let b = unsafe {
        cmma::Matrix::<F>::uninitialized(
            cmma::MatrixIdent::B,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::RowMajor,
        )
    };
    let row = (plane % 4) * 16; // the plane's first row in the tile
    let col = (plane / 4) * 16 * PLANE_BLOCKS; // and its first column
    let plane_rows = a0 + row < dqk;
    // Protects: the initial tile is complete before the first chunk reads it.
    sync_cube();

    for c in 0..chunks {
        // The chunk-start state out, then the decay; the staged keys and values.
        let scale = decay[g * chunks + c];
        let start_base = (g * chunks + c) * state_len;
        #[unroll]
        for i in 0..tile_per_unit {
            let e = tid + i * units;
            let a_row = a0 + e / tile;
            let d = d0 + e % tile;
            let at = (e / tile) * C_STRIDE + e % tile;
            let x = cs[at];
            if a_row < dqk && d < dv {
                c_start[start_base + a_row * dv + d] = F::cast_from(x);
            }
            cs[at] = x * scale;
        }
        #[unroll]
        for i in 0..per_unit {
            let e = tid + i * units;
            let at = (e / tile) * KV_STRIDE + e % tile;
            ks[at] = k_next[i];
            vs[at] = v_next[i];
        }
        // Protects: the decayed tile and the staged chunk are complete before the planes read
        // them.
        sync_cube();
        if c + 1 < chunks {
            let next = (g * chunks + c + 1) * len;
            load_chunk::<F>(k_w, v, &mut k_next, &mut v_next, next, a0, d0, per_unit);
        }

        if plane_rows {
            #[unroll]
            for j in 0..PLANE_BLOCKS {
                let off = row * C_STRIDE + col + 16 * j;
                cmma::load_with_layout(
                    acc.index(j),
                    &cs.slice(off, off + 15 * C_STRIDE + 16),
                    C_STRIDE as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            }
            #[unroll]
            for step in 0..len / 16 {
                // A = K_wᵀ: A[a, s] = ks[s, a], column-major.
                let k_off = 16 * step * KV_STRIDE + row;
                cmma::load(
                    &a,
                    &ks.slice(k_off, k_off + 15 * KV_STRIDE + 16),
                    KV_STRIDE as u32,
                );
                #[unroll]
                for j in 0..PLANE_BLOCKS {
                    if d0 + col + 16 * j < dv {
                        let v_off = 16 * step * KV_STRIDE + col + 16 * j;
                        let v_end = v_off + 15 * KV_STRIDE + 16;
                        cmma::load(&b, &vs.slice(v_off, v_end), KV_STRIDE as u32);
                        cmma::execute::<F, F, f32, f32>(&a, &b, acc.index(j), acc.index(j));
                    }
                }
            }
            #[unroll]
            for j in 0..PLANE_BLOCKS {
                let off = row * C_STRIDE + col + 16 * j;
                cmma::store(
                    &mut cs.slice_mut(off, off + 15 * C_STRIDE + 16),
                    acc.index(j),
                    C_STRIDE as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            }
        }
        // Protects: the new tile is complete, and every plane is done with the staged chunk,
        // before the next chunk writes both.
        sync_cube();
    }

    let mut e = tid;
    while e < tile * tile {
        let a_row = a0 + e / tile;
        let d = d0 + e % tile;
        if a_row < dqk && d < dv {
            c_end[g * state_len + a_row * dv + d] = cs[(e / tile) * C_STRIDE + e % tile];
        }
        e += units;
    }
}

/// Loads the keys and values of one chunk (tokens from `token0`, rows `a0..a0+64` of `k_w`,
/// columns `d0..d0+64` of `v`) into the unit's registers: entry `tid + 256 i` of the `[L, 64]`
/// tiles. The loads have no branches, so that all of them are in flight at once (a branch per
/// load serialised them); entries past `DQK` or `DV` hold whatever lies there and feed only
/// fragments that the planes skip.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_chunk<F: Float>(
    k_w: &Tensor<F>,
    v: &Tensor<F>,
    k_next: &mut Array<F>,
    v_next: &mut Array<F>,
    token0: usize,
    a0: usize,
    d0: usize,
    #[comptime] per_unit: usize,
) {
    let units = comptime!(32 * STATE_PLANES);
    let tile = STATE_TILE;
    let tid = UNIT_POS as usize;
    let dqk = k_w.shape(3);
    let dv = v.shape(3);
    #[unroll]
    for i in 0..per_unit {
        let e = tid + i * units;
        let s = e / tile;
        // Clamped: the last tile's overhang would read past the end.
        k_next[i] = k_w[((token0 + s) * dqk + a0 + e % tile).min(k_w.len() - 1)];
        v_next[i] = v[((token0 + s) * dv + d0 + e % tile).min(v.len() - 1)];
    }
}
