//! The backward's gradient rows of every chunk in one kernel on the tensor cores' `mma` (CUDA's
//! `mma.sync` m16n8k16, as `output_mma_kernel.rs`). For the chunk's `L ≤ 64` rows and 64 columns
//! of `D` per cube ([`MlstmBackend::mlstm_gradient_products`](super::MlstmBackend)):
//! - `out = scale (M X + α ∘ U)` with `U = Y Z + β zᵀ`,
//! - `dot_r = W_r · U_r` over the cube's columns (partial sums per column tile),
//!
//! `M` the chunk's `[L, L]` matrix (`dS` or `P`, or its transpose: rows `s` of `dSᵀ`, `Pᵀ`),
//! `X [L, D]`, `Y [L, E]`, `Z [E, D]` (or stored as `[D, E]`), `α, β` a number per row and `z`
//! one per column. The backward's three uses (`backward.rs`):
//! - `dq = (dS K + g/√DQK ∘ (dnum C₀ᵀ + dqn n₀ᵀ)) / √DQK·…` with `dot = q·(…)` for `dg`;
//! - `dk = (dSᵀ Q + w ∘ (V dC₁ᵀ + 1 dn₁ᵀ))·…` with `dot = k·(…)` for `d log w`;
//! - `dv = Pᵀ dnum + (w/√DQK) ∘ K dC₁`.
//!
//! The batched-product form writes both products in f32 and reads them back for the row pass.
//! The plane of rows `16p..16p+16` multiplies only the columns of `M` that are not zero by
//! causality: `j ≤ 16p + 15` for `M`, `j ≥ 16p` for `Mᵀ`.

use cubecl::cmma::MmaDefinition;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::mma_tiles::{
    commit_round, load_x4, mma_pair, register_fragment_sizes, stage, stage_async, store_x4,
    wait_round, write_plane_rows, FragA, FragB, FragC, MMA_K, MMA_M, MMA_N, PITCH, PLANE,
};

/// Columns of `D` per cube.
pub(crate) const GRADIENT_TILE: usize = 64;
/// Planes per cube, each owning 16 rows of the chunk.
pub(crate) const GRADIENT_PLANES: usize = 4;
/// Longest chunk of the kernel: 16 rows per plane.
pub(crate) const GRADIENT_MAX_LEN: usize = 16 * GRADIENT_PLANES;
/// `E` entries per round (two rounds in flight: one multiplied while the next loads).
const SLICE: usize = 32;
/// Row pitch of the staged `Y` slices (and of `Z`'s stored as `[D, E]`) in entries: 32 + 8.
const SLICE_PITCH: usize = 40;
/// `8`-column accumulator tiles per plane: the cube's 64 columns.
const TILES_N: usize = 8;
/// Units per cube.
const UNITS: usize = PLANE * GRADIENT_PLANES;

/// Entries of one round of the staged `Z` slice: `SLICE` rows of the 64 columns, or the 64
/// columns' rows of a `SLICE` of `E` where `Z` is stored as `[D, E]`.
const fn z_round(z_transposed: bool) -> usize {
    if z_transposed {
        GRADIENT_TILE * SLICE_PITCH
    } else {
        SLICE * PITCH
    }
}

/// Shared memory of one cube in bytes for operands of `elem_bytes`: `M` and the `X` tile (64
/// rows of [`PITCH`]), two rounds of the `Y` and `Z` slices, `z`'s columns and the barriers.
pub(crate) fn gradient_shared_bytes(elem_bytes: usize, z_transposed: bool) -> usize {
    (2 * GRADIENT_MAX_LEN * PITCH + 2 * GRADIENT_MAX_LEN * SLICE_PITCH + 2 * z_round(z_transposed))
        * elem_bytes
        + GRADIENT_TILE * 4
        + 2 * 8
}

/// `out [B, NH, NC, L, D]` and, where `dot`, `dots [tiles of D, B·NH·NC·L]`, as the module says.
/// Grid: one axis of `(B·NH·NC) × tiles of D` cubes; cube `PLANE × GRADIENT_PLANES`. `W` divides
/// `L`, `D`, `E` and the row strides; the operands have unit last stride; `alpha`, `beta`,
/// `z_row`, `out` and `dots` are contiguous. `beta` and `z_row` are read where `row_term`,
/// `dot_with` and `dots` where `dot`. Launched unchecked: every global access is guarded here,
/// shared-memory indices are in range by construction.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gradient_products_mma_kernel<F: Float, W: Size>(
    pairs: &Tensor<Vector<F, W>>,    // [B, NH, NC, L, L]
    x: &Tensor<Vector<F, W>>,        // [B, NH, NC, L, D]
    y: &Tensor<Vector<F, W>>,        // [B, NH, NC, L, E]
    z: &Tensor<Vector<F, W>>,        // [B, NH, NC, E, D], or [.., D, E] where z_transposed
    alpha: &Tensor<f32>,             // [B·NH·NC, L]
    beta: &Tensor<f32>,              // [B·NH·NC, L]
    z_row: &Tensor<f32>,             // [B·NH·NC, D]
    dot_with: &Tensor<Vector<F, W>>, // [B, NH, NC, L, D]
    out: &mut Tensor<Vector<F, W>>,  // [B, NH, NC, L, D]
    dots: &mut Tensor<f32>,          // [tiles of D, B·NH·NC·L]
    scale: f32,
    #[comptime] len: usize,
    #[comptime] pairs_transposed: bool,
    #[comptime] z_transposed: bool,
    #[comptime] row_term: bool,
    #[comptime] dot: bool,
    #[define(F)] _dtype: StorageType,
) {
    let def = MmaDefinition::<F, F, f32>::new(MMA_M, MMA_N, MMA_K);
    register_fragment_sizes::<F>(def);
    let nc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let sc = def.vector_size(MatrixIdent::Accumulator);
    let width = x.vector_size();
    let rows = comptime!(len.next_multiple_of(MMA_K));

    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y as usize;
    let heads = x.shape(1);
    let chunks = x.shape(2);
    let d = x.shape(4);
    let e_len = y.shape(4);
    let tiles = d.div_ceil(GRADIENT_TILE);
    let chunk = CUBE_POS_X as usize / tiles; // over B·NH·NC
    let tile = CUBE_POS_X as usize % tiles;
    let col0 = tile * GRADIENT_TILE;
    let batch = chunk / (heads * chunks);
    let head = (chunk / chunks) % heads;
    let c = chunk % chunks;
    let row0 = plane * MMA_M; // this plane's first row
    let active = row0 < len;

    let mut pair_tile = SharedMemory::<Vector<F, W>>::new(comptime!(rows * PITCH / width)); // M as stored
    let mut x_tile = SharedMemory::<Vector<F, W>>::new(comptime!(rows * PITCH / width)); // [j][col]
    let mut y_tiles = SharedMemory::<Vector<F, W>>::new(comptime!(2 * rows * SLICE_PITCH / width)); // [r][e]
    let mut z_tiles =
        SharedMemory::<Vector<F, W>>::new(comptime!(2 * z_round(z_transposed) / width));
    let mut z_cols = SharedMemory::<f32>::new(GRADIENT_TILE);

    let barrier_0 = Barrier::shared(UNITS as u32, UNIT_POS == 0);
    let barrier_1 = Barrier::shared(UNITS as u32, UNIT_POS == 0);

    let m_base = batch * pairs.stride(0) + head * pairs.stride(1) + c * pairs.stride(2);
    let x_base = batch * x.stride(0) + head * x.stride(1) + c * x.stride(2);
    let y_base = batch * y.stride(0) + head * y.stride(1) + c * y.stride(2);
    let z_base = batch * z.stride(0) + head * z.stride(1) + c * z.stride(2);
    let u = UNIT_POS as usize;
    if row_term && u < GRADIENT_TILE {
        let mut value = 0.0f32;
        if col0 + u < d {
            value = z_row[chunk * d + col0 + u];
        }
        z_cols[u] = value;
    }
    // Protects: the barriers are initialised before any unit commits copies to them.
    sync_cube();
    // Round 0 also brings M and the X tile.
    stage_async::<F, W>(
        pairs,
        m_base,
        pairs.stride(3),
        len,
        0,
        len,
        &mut pair_tile,
        0,
        rows,
        rows,
        PITCH,
        UNITS,
    );
    stage_async::<F, W>(
        x,
        x_base,
        x.stride(3),
        len,
        col0,
        d,
        &mut x_tile,
        0,
        rows,
        GRADIENT_TILE,
        PITCH,
        UNITS,
    );
    issue_round::<F, W>(
        y,
        z,
        y_base,
        z_base,
        len,
        col0,
        0,
        0,
        &mut y_tiles,
        &mut z_tiles,
        rows,
        z_transposed,
    );
    barrier_0.commit_copy_async();

    // M X and Y Z as TILES_N accumulator tiles each (16 × 8).
    let mut products = Array::<Vector<f32, FragC>>::new(comptime!(TILES_N * nc));
    let mut state = Array::<Vector<f32, FragC>>::new(comptime!(TILES_N * nc));
    #[unroll]
    for i in 0..comptime!(TILES_N * nc) {
        products[i] = Vector::<f32, FragC>::new(0.0);
        state[i] = Vector::<f32, FragC>::new(0.0);
    }
    let mut b_frag = Array::<Vector<F, FragB>>::new(2usize);
    let mut c_frag = Array::<Vector<f32, FragC>>::new(nc);
    let rounds = e_len.div_ceil(SLICE);
    for round in 0..rounds {
        // Protects: every plane is done with the other round's slices before the next slice's
        // copies overwrite them, and this round's zero fills are seen.
        sync_cube();
        let this = round % 2;
        let next = 1 - this;
        if round + 1 < rounds {
            issue_round::<F, W>(
                y,
                z,
                y_base,
                z_base,
                len,
                col0,
                (round + 1) * SLICE,
                next,
                &mut y_tiles,
                &mut z_tiles,
                rows,
                z_transposed,
            );
            commit_round(&barrier_0, &barrier_1, next);
        }
        wait_round(&barrier_0, &barrier_1, this);
        if active {
            if round == 0 {
                // M X over the chunk's rows j, 16 at a time.
                #[unroll]
                for j in 0..comptime!(rows / MMA_K) {
                    let mut needed = j <= plane;
                    if pairs_transposed {
                        needed = j >= plane;
                    }
                    if needed {
                        // A = M[r, j]: rows of the stored matrix, or (Mᵀ) its columns read
                        // transposed by `ldmatrix`.
                        let mut at_row = row0;
                        let mut at_col = row0;
                        if pairs_transposed {
                            at_row = j * MMA_K;
                        } else {
                            at_col = j * MMA_K;
                        }
                        let a_frag = load_x4::<F, W, FragA>(
                            def,
                            &pair_tile,
                            at_row,
                            at_col,
                            comptime!(!pairs_transposed),
                            MatrixIdent::A,
                            pairs_transposed,
                            width,
                            PITCH,
                        );
                        #[unroll]
                        for np in 0..comptime!(TILES_N / 2) {
                            // B = X[j, col] (k = row j, n = column), row-major, transposed by
                            // `ldmatrix`.
                            let regs = load_x4::<F, W, FragB>(
                                def,
                                &x_tile,
                                j * MMA_K,
                                2usize * np * MMA_N,
                                true,
                                MatrixIdent::B,
                                true,
                                width,
                                PITCH,
                            );
                            mma_pair(
                                def,
                                &a_frag,
                                &regs,
                                &mut products,
                                &mut b_frag,
                                &mut c_frag,
                                np,
                            );
                        }
                    }
                }
            }
            #[unroll]
            for ks in 0..comptime!(SLICE / MMA_K) {
                // A = Y[r, e], row-major.
                let a_frag = load_x4::<F, W, FragA>(
                    def,
                    &y_tiles,
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
                    if z_transposed {
                        // B = Z[e, col] from Z's rows [col][e]: `k` runs along the columns.
                        let regs = load_x4::<F, W, FragB>(
                            def,
                            &z_tiles,
                            this * GRADIENT_TILE + 16usize * np,
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
                            &mut state,
                            &mut b_frag,
                            &mut c_frag,
                            np,
                        );
                    } else {
                        // B = Z[e, col], row-major, transposed by `ldmatrix`.
                        let regs = load_x4::<F, W, FragB>(
                            def,
                            &z_tiles,
                            this * SLICE + ks * MMA_K,
                            2usize * np * MMA_N,
                            true,
                            MatrixIdent::B,
                            true,
                            width,
                            PITCH,
                        );
                        mma_pair(
                            def,
                            &a_frag,
                            &regs,
                            &mut state,
                            &mut b_frag,
                            &mut c_frag,
                            np,
                        );
                    }
                }
            }
        }
    }
    // Protects: every plane is done with M and the X tile before they take W's rows and the
    // rows of the result.
    sync_cube();
    if dot {
        stage::<F, W>(
            dot_with,
            batch * dot_with.stride(0) + head * dot_with.stride(1) + c * dot_with.stride(2),
            dot_with.stride(3),
            len,
            col0,
            d,
            &mut pair_tile,
            0,
            rows,
            GRADIENT_TILE,
            PITCH,
            UNITS,
        );
        // Protects: W's rows are in shared memory before the planes read them.
        sync_cube();
    }

    if active {
        let group = (lane / 4) as usize; // this lane's rows: row0 + group and row0 + group + 8
        let in_group = lane % 4;
        let t_top = row0 + group;
        let t_bottom = t_top + 8;
        let gate_base = chunk * len;
        let mut alpha_top = 0.0f32;
        let mut alpha_bottom = 0.0f32;
        let mut beta_top = 0.0f32;
        let mut beta_bottom = 0.0f32;
        if t_top < len {
            alpha_top = alpha[gate_base + t_top];
            if row_term {
                beta_top = beta[gate_base + t_top];
            }
        }
        if t_bottom < len {
            alpha_bottom = alpha[gate_base + t_bottom];
            if row_term {
                beta_bottom = beta[gate_base + t_bottom];
            }
        }
        // U = Y Z + β zᵀ, its dot with W's rows, then scale (M X + α U), rounded.
        let mut dot_top = 0.0f32;
        let mut dot_bottom = 0.0f32;
        let mut half_frags = Array::<Vector<F, FragC>>::new(comptime!(2 * nc));
        #[unroll]
        for np in 0..comptime!(TILES_N / 2) {
            // W's entries at this lane's positions of the two tiles: the `A` fragment of the
            // 16 × 16 block (as `output_mma_kernel.rs` forms P's), tile `j`'s rows in
            // registers `j·nc..` (read where not `dot` too, unused: the tile holds M then).
            let w_frag = load_x4::<F, W, FragA>(
                def,
                &pair_tile,
                row0,
                2usize * np * MMA_N,
                true,
                MatrixIdent::A,
                false,
                width,
                PITCH,
            );
            #[unroll]
            for j in 0..2usize {
                let nt = 2usize * np + j;
                #[unroll]
                for i in 0..nc {
                    let value = state[nt * nc + i];
                    let sum = products[nt * nc + i];
                    let mut result = Vector::<f32, FragC>::new(0.0);
                    #[unroll]
                    for e in 0..sc {
                        let (r, col) = def.position_of_nth(
                            lane,
                            (i * sc + e) as u32,
                            MatrixIdent::Accumulator,
                        );
                        let mut a = alpha_top;
                        let mut b = beta_top;
                        if r >= 8 {
                            a = alpha_bottom;
                            b = beta_bottom;
                        }
                        let mut x_u = value[e];
                        if row_term {
                            x_u += b * z_cols[nt * MMA_N + col as usize];
                        }
                        if dot {
                            let w = f32::cast_from(w_frag[j * nc + i][e]);
                            if r < 8 {
                                dot_top += w * x_u;
                            } else {
                                dot_bottom += w * x_u;
                            }
                        }
                        result[e] = scale * (sum[e] + a * x_u);
                    }
                    half_frags[j * nc + i] = Vector::cast_from(result);
                }
            }
            store_x4::<F, W>(
                def,
                &mut x_tile,
                &half_frags,
                row0,
                2usize * np * MMA_N,
                width,
                PITCH,
            );
        }
        if dot {
            dot_top += plane_shuffle_xor(dot_top, 1);
            dot_top += plane_shuffle_xor(dot_top, 2);
            dot_bottom += plane_shuffle_xor(dot_bottom, 1);
            dot_bottom += plane_shuffle_xor(dot_bottom, 2);
            if in_group == 0 {
                let rows_all = dots.shape(1);
                if t_top < len {
                    dots[tile * rows_all + gate_base + t_top] = dot_top;
                }
                if t_bottom < len {
                    dots[tile * rows_all + gate_base + t_bottom] = dot_bottom;
                }
            }
        }
    }
    // Protects: this plane's rows of the result are in shared memory before its units write
    // them out.
    sync_plane();
    if active {
        let out_base = batch * out.stride(0) + head * out.stride(1) + c * out.stride(2);
        write_plane_rows::<F, W>(
            &x_tile,
            out,
            out_base,
            out.stride(3),
            row0,
            len,
            col0,
            d,
            width,
        );
    }
}

/// Issues the copies of one round: the slice of `E` entries `first..first + SLICE` of `Y` (the
/// chunk's rows) and of `Z` (its rows, columns `col0..col0 + 64`; or, stored as `[D, E]`, the
/// rows `col0..col0 + 64` and the slice's columns) into round `slot` of the tiles, through
/// `cp.async`. The bases are the chunk's offsets in `y` and `z`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn issue_round<F: Float, W: Size>(
    y: &Tensor<Vector<F, W>>,
    z: &Tensor<Vector<F, W>>,
    y_base: usize,
    z_base: usize,
    len: usize,
    col0: usize,
    first: usize,
    slot: usize,
    y_tiles: &mut SharedMemory<Vector<F, W>>,
    z_tiles: &mut SharedMemory<Vector<F, W>>,
    #[comptime] rows: usize,
    #[comptime] z_transposed: bool,
) {
    let width = y.vector_size();
    let e_len = y.shape(4);
    stage_async::<F, W>(
        y,
        y_base,
        y.stride(3),
        len,
        first,
        e_len,
        y_tiles,
        slot * comptime!(rows * SLICE_PITCH / width),
        rows,
        SLICE,
        SLICE_PITCH,
        UNITS,
    );
    let z_at = slot * comptime!(z_round(z_transposed) / width);
    if z_transposed {
        let d = z.shape(3);
        stage_async::<F, W>(
            z,
            z_base + col0 * z.stride(3),
            z.stride(3),
            d - col0,
            first,
            e_len,
            z_tiles,
            z_at,
            GRADIENT_TILE,
            SLICE,
            SLICE_PITCH,
            UNITS,
        );
    } else {
        let d = z.shape(4);
        stage_async::<F, W>(
            z,
            z_base + first * z.stride(3),
            z.stride(3),
            e_len - first,
            col0,
            d,
            z_tiles,
            z_at,
            SLICE,
            GRADIENT_TILE,
            PITCH,
            UNITS,
        );
    }
}
