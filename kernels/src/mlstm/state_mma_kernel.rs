//! The chunk-boundary states `C` in one kernel on the tensor cores' `mma` (CUDA's
//! `mma.sync` m16n8k16: half-type operands, f32 accumulators held in registers by the units):
//! TFLA's recurrent state kernel. One cube per (64 × 64 tile of `C`, head, batch entry) walks
//! the chunks: it writes the chunk-start tile, then applies the update (eq. 19 summed over the
//! chunk) `C ← a_c C + K_wᵀ V` with the chunk's weighted keys and values staged in shared
//! memory. The `K_wᵀ V` increments never leave the SM (the batched-product form writes them,
//! 4.2 GB at the first benchmark shape, and a scan reads them back), and the state stays f32
//! throughout; only the chunk-start states are rounded to the inputs' type, as TFLA keeps them.
//!
//! Fragments are per-lane registers (`MmaDefinition`), so the decay `a_c` scales them in place:
//! `cmma`'s opaque fragments could not (the session-6 kernel added each increment to a tile in
//! shared memory instead, and was slower than the products).

use cubecl::cmma::MmaDefinition;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::*;

use super::mma_tiles::{
    load_x4, register_fragment_sizes, store_x4, FragA, FragB, FragC, MMA_K, MMA_M, MMA_N, PITCH,
    PLANE,
};

/// Side of the square state tile of one cube (rows of `DQK`, columns of `DV`).
pub(crate) const STATE_TILE: usize = 64;
/// Planes per cube, 2 × 2, each owning a 32 × 32 quarter of the tile.
pub(crate) const STATE_PLANES: usize = 4;
/// Fragments per plane along `DQK` (16 rows each) and `DV` (8 columns each).
const TILES_M: usize = 2;
const TILES_N: usize = 4;

/// Shared memory of one cube in bytes for chunks of `len` tokens and operands of `elem_bytes`:
/// the keys and values of a chunk (rows padded to a multiple of 16 tokens) and the outgoing
/// chunk-start tile.
pub(crate) fn shared_bytes(len: usize, elem_bytes: usize) -> usize {
    (2 * len.next_multiple_of(MMA_K) + STATE_TILE) * PITCH * elem_bytes
}

/// One chunk's weighted keys (the tile's rows of `C`) and values (its columns) of this unit's
/// share, `W` entries per vector, zero past `DQK`, `DV` and the chunk's `len` tokens (rows up to
/// the next multiple of 16). The loads are unconditional (an entry out of range reads the
/// tensor's first vector and is replaced by zero), so that they are in flight together.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_chunk<F: Float, W: Size>(
    k_w: &Tensor<Vector<F, W>>,
    v: &Tensor<Vector<F, W>>,
    k_start: usize,
    v_start: usize,
    row0: usize,
    col0: usize,
    keys: &mut Array<Vector<F, W>>,
    values: &mut Array<Vector<F, W>>,
    #[comptime] len: usize,
) {
    let width = k_w.vector_size();
    let per_row = comptime!(STATE_TILE / width);
    let dqk = k_w.shape(4);
    let dv = v.shape(4);
    #[unroll]
    for i in 0..comptime!((len.next_multiple_of(MMA_K) * per_row).div_ceil(UNITS)) {
        let e = UNIT_POS as usize + i * UNITS;
        let s = e / per_row;
        let off = (e % per_row) * width;
        let zero = Vector::<F, W>::new(F::new(0.0));
        let key_inside = s < len && row0 + off < dqk;
        let at = select(
            key_inside,
            (k_start + s * k_w.stride(3) + row0 + off) / width,
            0,
        );
        keys[i] = select(key_inside, k_w[at], zero);
        let value_inside = s < len && col0 + off < dv;
        let at = select(
            value_inside,
            (v_start + s * v.stride(3) + col0 + off) / width,
            0,
        );
        values[i] = select(value_inside, v[at], zero);
    }
}

/// Units per cube.
const UNITS: usize = PLANE * STATE_PLANES;

/// `C` before every chunk and after the last: `c_start[b, h, c] = C` before chunk `c` (the
/// inputs' type), `c_end[b, h] = C` after the last (f32), from `C = c0[b, h]` and per chunk
/// `C ← decay[b, h, c] C + k_w[b, h, c]ᵀ v[b, h, c]`. Grid: (tiles of `C`, `B·NH`); cube
/// `PLANE × STATE_PLANES`. `W` (the vector width of the global accesses) divides `DQK`, `DV`
/// and the row strides; `k_w` and `v` have unit last stride, `c_start` is contiguous. Launched
/// unchecked: every global access is guarded here, shared-memory indices are in range by
/// construction.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_states_mma_kernel<F: Float, W: Size>(
    k_w: &Tensor<Vector<F, W>>,         // [B, NH, NC, L, DQK]
    v: &Tensor<Vector<F, W>>,           // [B, NH, NC, L, DV]
    decay: &Tensor<f32>,                // [B, NH, NC]
    c0: &Tensor<f32>,                   // [B, NH, DQK, DV]
    c_start: &mut Tensor<Vector<F, W>>, // [B, NH, NC, DQK, DV]
    c_end: &mut Tensor<f32>,            // [B, NH, DQK, DV]
    #[comptime] len: usize,
    #[define(F)] _dtype: StorageType,
) {
    let def = MmaDefinition::<F, F, f32>::new(MMA_M, MMA_N, MMA_K);
    register_fragment_sizes::<F>(def);
    let nc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let sc = def.vector_size(MatrixIdent::Accumulator);
    let width = k_w.vector_size();
    let rows = comptime!(len.next_multiple_of(MMA_K));
    let per_row = comptime!(STATE_TILE / width); // vectors per tile row
    let pitch = comptime!(PITCH / width); // vectors per shared-memory row
    let staged = comptime!((rows * per_row).div_ceil(UNITS)); // vectors per unit and operand

    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y as usize;
    let heads = k_w.shape(1);
    let batch = CUBE_POS_Y as usize / heads;
    let head = CUBE_POS_Y as usize % heads;
    let chunks = k_w.shape(2);
    let dqk = k_w.shape(4);
    let dv = v.shape(4);
    let tiles_v = dv.div_ceil(STATE_TILE);
    let row0 = (CUBE_POS_X as usize / tiles_v) * STATE_TILE; // first row of C (a key entry)
    let col0 = (CUBE_POS_X as usize % tiles_v) * STATE_TILE; // first column (a value entry)
    let plane_row = (plane / 2) * 32;
    let plane_col = (plane % 2) * 32;

    // The plane's 32 × 32 quarter as TILES_M × TILES_N accumulator fragments, from c0.
    let mut acc = Array::<Vector<f32, FragC>>::new(comptime!(TILES_M * TILES_N * nc));
    let c0_base = batch * c0.stride(0) + head * c0.stride(1);
    #[unroll]
    for mt in 0..TILES_M {
        #[unroll]
        for nt in 0..TILES_N {
            #[unroll]
            for i in 0..nc {
                let mut value = Vector::<f32, FragC>::empty();
                #[unroll]
                for e in 0..sc {
                    let (r, col) =
                        def.position_of_nth(lane, (i * sc + e) as u32, MatrixIdent::Accumulator);
                    let a = row0 + plane_row + mt * MMA_M + r as usize;
                    let d = col0 + plane_col + nt * MMA_N + col as usize;
                    let mut x = 0.0f32;
                    if a < dqk && d < dv {
                        x = c0[c0_base + a * c0.stride(2) + d * c0.stride(3)];
                    }
                    value[e] = x;
                }
                acc[(mt * TILES_N + nt) * nc + i] = value;
            }
        }
    }

    let mut keys = SharedMemory::<Vector<F, W>>::new(comptime!(rows * PITCH / width)); // [s][a]
    let mut values = SharedMemory::<Vector<F, W>>::new(comptime!(rows * PITCH / width)); // [s][d]
    let mut outgoing = SharedMemory::<Vector<F, W>>::new(comptime!(STATE_TILE * PITCH / width));
    let mut key_regs = Array::<Vector<F, W>>::new(staged);
    let mut value_regs = Array::<Vector<F, W>>::new(staged);
    let mut b_frags = Array::<Vector<F, FragB>>::new(comptime!(TILES_N * 2));
    let mut b_frag = Array::<Vector<F, FragB>>::new(2usize);
    let mut c_frag = Array::<Vector<f32, FragC>>::new(nc);
    let mut half_frags = Array::<Vector<F, FragC>>::new(4usize);

    let steps = k_w.shape(3).div_ceil(MMA_K);
    let k_base = batch * k_w.stride(0) + head * k_w.stride(1);
    let v_base = batch * v.stride(0) + head * v.stride(1);
    let cs_base = batch * c_start.stride(0) + head * c_start.stride(1);
    let d_base = batch * decay.stride(0) + head * decay.stride(1);
    for c in 0..chunks {
        // This chunk's operands into shared memory, through registers. (Loading the next
        // chunk's while this one is multiplied kept 32 more registers live: 176 per unit, two
        // cubes per SM, and 1.6x the time at the benchmark shapes.)
        load_chunk::<F, W>(
            k_w,
            v,
            k_base + c * k_w.stride(2),
            v_base + c * v.stride(2),
            row0,
            col0,
            &mut key_regs,
            &mut value_regs,
            len,
        );
        #[unroll]
        for i in 0..staged {
            let e = UNIT_POS as usize + i * UNITS;
            if e < rows * per_row {
                let at = (e / per_row) * pitch + e % per_row;
                keys[at] = key_regs[i];
                values[at] = value_regs[i];
            }
        }
        // The chunk-start tile, rounded to the inputs' type, into shared memory: per `stmatrix`
        // two fragments side by side (four 8 × 8 matrices).
        #[unroll]
        for mt in 0..TILES_M {
            #[unroll]
            for np in 0..comptime!(TILES_N / 2) {
                #[unroll]
                for j in 0..2usize {
                    #[unroll]
                    for i in 0..nc {
                        half_frags[j * nc + i] =
                            Vector::cast_from(acc[(mt * TILES_N + 2usize * np + j) * nc + i]);
                    }
                }
                store_x4::<F, W>(
                    def,
                    &mut outgoing,
                    &half_frags,
                    plane_row + mt * MMA_M,
                    plane_col + 2usize * np * MMA_N,
                    width,
                );
            }
        }
        // Protects: the chunk's operands and the outgoing tile are complete before any plane
        // reads them.
        sync_cube();

        // The chunk-start tile out, a row of W entries per access.
        #[unroll]
        for i in 0..comptime!((STATE_TILE * per_row).div_ceil(UNITS)) {
            let e = UNIT_POS as usize + i * UNITS;
            let row = e / per_row;
            let off = (e % per_row) * width;
            if e < STATE_TILE * per_row && row0 + row < dqk && col0 + off < dv {
                c_start[(cs_base
                    + c * c_start.stride(2)
                    + (row0 + row) * c_start.stride(3)
                    + col0
                    + off)
                    / width] = outgoing[row * pitch + off / width];
            }
        }

        // C ← a_c C + K_wᵀ V: the decay in place, then the increment accumulated on top.
        let a_c = Vector::<f32, FragC>::new(decay[d_base + c * decay.stride(2)]);
        #[unroll]
        for i in 0..comptime!(TILES_M * TILES_N * nc) {
            acc[i] = acc[i] * a_c;
        }
        // A runtime loop over the 16-token steps (not unrolled): unrolled, the compiler kept
        // every step's fragments live at once (178 registers per unit, two cubes per SM).
        for ks in 0..steps {
            // B = V[s, d] (k = token, n = value entry), row-major, transposed by `ldmatrix`:
            // two fragments per load.
            #[unroll]
            for np in 0..comptime!(TILES_N / 2) {
                let regs = load_x4::<F, W, FragB>(
                    def,
                    &values,
                    ks * MMA_K,
                    plane_col + 2usize * np * MMA_N,
                    true,
                    MatrixIdent::B,
                    true,
                    width,
                );
                #[unroll]
                for i in 0..4usize {
                    b_frags[np * 4usize + i] = regs[i];
                }
            }
            #[unroll]
            for mt in 0..TILES_M {
                // A = K_wᵀ[a, s] (m = key entry, k = token) from the keys' rows [s][a],
                // transposed by `ldmatrix`: `m` runs along the tile's columns.
                let a_frag = load_x4::<F, W, FragA>(
                    def,
                    &keys,
                    ks * MMA_K,
                    plane_row + mt * MMA_M,
                    false,
                    MatrixIdent::A,
                    true,
                    width,
                );
                #[unroll]
                for nt in 0..TILES_N {
                    #[unroll]
                    for i in 0..2usize {
                        b_frag[i] = b_frags[nt * 2usize + i];
                    }
                    #[unroll]
                    for i in 0..nc {
                        c_frag[i] = acc[(mt * TILES_N + nt) * nc + i];
                    }
                    let d_frag = def.execute(&a_frag, &b_frag, &c_frag);
                    #[unroll]
                    for i in 0..nc {
                        acc[(mt * TILES_N + nt) * nc + i] = d_frag[i];
                    }
                }
            }
        }
        // Protects: every plane is done with this chunk's tiles before the next overwrites them.
        sync_cube();
    }

    // The final state, f32.
    let end_base = batch * c_end.stride(0) + head * c_end.stride(1);
    #[unroll]
    for mt in 0..TILES_M {
        #[unroll]
        for nt in 0..TILES_N {
            #[unroll]
            for i in 0..nc {
                let value = acc[(mt * TILES_N + nt) * nc + i];
                #[unroll]
                for e in 0..sc {
                    let (r, col) =
                        def.position_of_nth(lane, (i * sc + e) as u32, MatrixIdent::Accumulator);
                    let a = row0 + plane_row + mt * MMA_M + r as usize;
                    let d = col0 + plane_col + nt * MMA_N + col as usize;
                    if a < dqk && d < dv {
                        c_end[end_base + a * c_end.stride(2) + d * c_end.stride(3)] = value[e];
                    }
                }
            }
        }
    }
}
