//! The chunk-boundary states `C` and `n` in one kernel on the tensor cores' `mma` (CUDA's
//! `mma.sync` m16n8k16: half-type operands, f32 accumulators held in registers by the units):
//! TFLA's recurrent state kernel. One cube per (64 × 64 tile of `C`, head, batch entry) walks
//! the chunks: it writes the chunk-start tile, then applies the update (eq. 19 summed over the
//! chunk) `C ← a_c C + (w_c∘K)ᵀ V`. The chunk's keys and values are staged in shared memory
//! through `cp.async`, two rounds in flight (the next chunk's copies land while this one is
//! multiplied, without registers); the weights `w_c,s` multiply the keys' `A` fragments in
//! registers, rounded to the inputs' type as the separate weighting pass rounded them. The cubes
//! of the first column tile also carry `n ← a_c n + Σ_s w_n,s k_s` (f32 sums over the staged
//! keys). The increments never leave the SM (the batched-product form writes them, 4.2 GB at the
//! first benchmark shape, and a scan reads them back), and the state stays f32 throughout; only
//! the chunk-start states of `C` are rounded to the inputs' type, as TFLA keeps them.
//! The backward runs the same kernel in reverse for the state gradients (TFLA's recurrent
//! backward kernel): `dC ← a_c dC + (g∘Q)ᵀ dnum` and `dn ← a_c dn + Σ_t g_t dqn_t q_t`, last
//! chunk first.
//!
//! Fragments are per-lane registers (`MmaDefinition`), so the decay `a_c` scales them in place:
//! `cmma`'s opaque fragments could not (the session-6 kernel added each increment to a tile in
//! shared memory instead, and was slower than the products).

use cubecl::cmma::MmaDefinition;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::mma_tiles::{
    commit_round, load_x4, register_fragment_sizes, stage_async, store_x4, wait_round, FragA,
    FragB, FragC, MMA_K, MMA_M, MMA_N, PITCH, PLANE,
};

/// Side of the square state tile of one cube (rows of `DQK`, columns of `DV`).
pub(crate) const STATE_TILE: usize = 64;
/// Planes per cube, 2 × 2, each owning a 32 × 32 quarter of the tile.
pub(crate) const STATE_PLANES: usize = 4;
/// Fragments per plane along `DQK` (16 rows each) and `DV` (8 columns each).
const TILES_M: usize = 2;
const TILES_N: usize = 4;

/// Shared memory of one cube in bytes for chunks of `len` tokens and operands of `elem_bytes`:
/// two rounds of the keys and values (rows padded to a multiple of 16 tokens) and of their
/// weights, the outgoing chunk-start tile, `n`'s partial sums per plane and the two barriers
/// (48,144 bytes for chunks of 64 tokens of a 16-bit type: under the 48 KiB of static shared
/// memory, which a `[group][row]` stack of partial sums, 3 KiB more, exceeded).
pub(crate) fn shared_bytes(len: usize, elem_bytes: usize) -> usize {
    let rows = len.next_multiple_of(MMA_K);
    (4 * rows + STATE_TILE) * PITCH * elem_bytes
        + (4 * rows + STATE_PLANES * STATE_TILE) * 4
        + 2 * 8
}

/// Issues the copies of chunk `c` into round `slot`: its keys (the tile's rows of `C`) and
/// values (its columns) through `cp.async` ([`stage_async`]), zero past `DQK`, `DV` and the
/// chunk's `len` tokens (rows up to the next multiple of 16), and its weights (in `C` and in
/// `n`) by plain stores (zero past `len`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn issue_chunk<F: Float, W: Size>(
    k: &Tensor<Vector<F, W>>,
    v: &Tensor<Vector<F, W>>,
    w_c: &Tensor<f32>,
    w_n: &Tensor<f32>,
    batch: usize,
    head: usize,
    c: usize,
    row0: usize,
    col0: usize,
    slot: usize,
    keys: &mut SharedMemory<Vector<F, W>>,
    values: &mut SharedMemory<Vector<F, W>>,
    wc_tiles: &mut SharedMemory<f32>,
    wn_tiles: &mut SharedMemory<f32>,
    #[comptime] len: usize,
) {
    let width = k.vector_size();
    let rows = comptime!(len.next_multiple_of(MMA_K));
    let at0 = slot * comptime!(rows * PITCH / width);
    let k_base = batch * k.stride(0) + head * k.stride(1) + c * k.stride(2);
    let v_base = batch * v.stride(0) + head * v.stride(1) + c * v.stride(2);
    stage_async::<F, W>(
        k,
        k_base,
        k.stride(3),
        len,
        row0,
        k.shape(4),
        keys,
        at0,
        rows,
        STATE_TILE,
        PITCH,
        UNITS,
    );
    stage_async::<F, W>(
        v,
        v_base,
        v.stride(3),
        len,
        col0,
        v.shape(4),
        values,
        at0,
        rows,
        STATE_TILE,
        PITCH,
        UNITS,
    );
    let c_base = batch * w_c.stride(0) + head * w_c.stride(1) + c * w_c.stride(2);
    let n_base = batch * w_n.stride(0) + head * w_n.stride(1) + c * w_n.stride(2);
    for t in range_stepped(UNIT_POS as usize, rows, UNITS) {
        let mut wc_t = 0.0f32;
        let mut wn_t = 0.0f32;
        if t < len {
            wc_t = w_c[c_base + t * w_c.stride(3)];
            wn_t = w_n[n_base + t * w_n.stride(3)];
        }
        wc_tiles[slot * rows + t] = wc_t;
        wn_tiles[slot * rows + t] = wn_t;
    }
}

/// Units per cube.
const UNITS: usize = PLANE * STATE_PLANES;

/// `C` and `n` before every chunk and after the last: `c_start[b, h, c] = C` before chunk `c`'s
/// update (the inputs' type), `c_end[b, h] = C` after the last (f32), likewise `n_start`,
/// `n_end` (f32), from `C = c0[b, h]`, `n = n0[b, h]` and per chunk
/// `C ← decay[b, h, c] C + (w_c∘k)[b, h, c]ᵀ v[b, h, c]`, `n ← decay[b, h, c] n + Σ_s w_n,s k_s`
/// (from `C = 0`, `n = 0` where `zero_start`, `c0` and `n0` then unread),
/// chunks in order or, where `reverse`, last first (the backward's `dC ← a_c dC + (g∘Q)ᵀ dnum`:
/// `k = Q`, `w_c = g`, `w_n = g∘dqn`, `v = dnum`). Grid: (tiles of `C`, `B·NH`); cube
/// `PLANE × STATE_PLANES`. `W` (the vector width of the global accesses) is 16 bytes and divides
/// `DQK`, `DV` and the row strides; `k` and `v` have unit last stride, `c_start` is contiguous.
/// Launched unchecked: every global access is guarded here, shared-memory indices are in range
/// by construction.
#[cube(launch_unchecked)]
// The comptime `zero_start` is tested in its own `if`, apart from the runtime bounds: a
// condition cubecl resolves while expanding (the form run on the H200).
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub(crate) fn chunk_states_mma_kernel<F: Float, W: Size>(
    k: &Tensor<Vector<F, W>>,           // [B, NH, NC, L, DQK]
    v: &Tensor<Vector<F, W>>,           // [B, NH, NC, L, DV]
    w_c: &Tensor<f32>,                  // [B, NH, NC, L], the keys' weights in C
    w_n: &Tensor<f32>,                  // [B, NH, NC, L], the keys' weights in n
    decay: &Tensor<f32>,                // [B, NH, NC]
    c0: &Tensor<f32>,                   // [B, NH, DQK, DV]
    n0: &Tensor<f32>,                   // [B, NH, DQK]
    c_start: &mut Tensor<Vector<F, W>>, // [B, NH, NC, DQK, DV]
    c_end: &mut Tensor<f32>,            // [B, NH, DQK, DV]
    n_start: &mut Tensor<f32>,          // [B, NH, NC, DQK]
    n_end: &mut Tensor<f32>,            // [B, NH, DQK]
    #[comptime] len: usize,
    #[comptime] reverse: bool,
    #[comptime] zero_start: bool,
    #[define(F)] _dtype: StorageType,
) {
    let def = MmaDefinition::<F, F, f32>::new(MMA_M, MMA_N, MMA_K);
    register_fragment_sizes::<F>(def);
    let nc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let sc = def.vector_size(MatrixIdent::Accumulator);
    let na = def.vectors_per_lane(MatrixIdent::A);
    let sa = def.vector_size(MatrixIdent::A);
    let width = k.vector_size();
    let rows = comptime!(len.next_multiple_of(MMA_K));
    let per_row = comptime!(STATE_TILE / width); // vectors per tile row
    let pitch = comptime!(PITCH / width); // vectors per shared-memory row
    let round = comptime!(rows * PITCH / width); // vectors of one round of one operand
    let groups = comptime!(UNITS / per_row); // token groups of n's partial sums
    let in_plane = comptime!(PLANE / per_row); // of them in one plane (W = 8: 4)

    let lane = UNIT_POS_X;
    let plane = UNIT_POS_Y as usize;
    let heads = k.shape(1);
    let batch = CUBE_POS_Y as usize / heads;
    let head = CUBE_POS_Y as usize % heads;
    let chunks = k.shape(2);
    let dqk = k.shape(4);
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
                    if comptime!(!zero_start) {
                        if a < dqk && d < dv {
                            x = c0[c0_base + a * c0.stride(2) + d * c0.stride(3)];
                        }
                    }
                    value[e] = x;
                }
                acc[(mt * TILES_N + nt) * nc + i] = value;
            }
        }
    }
    // n's entry `row0 + unit` in units 0..64 of the first column tile's cubes.
    let n_row = UNIT_POS as usize;
    let owns_n = col0 == 0 && n_row < STATE_TILE && row0 + n_row < dqk;
    let mut n_acc = 0.0f32;
    if comptime!(!zero_start) {
        if owns_n {
            n_acc = n0[batch * n0.stride(0) + head * n0.stride(1) + (row0 + n_row) * n0.stride(2)];
        }
    }

    let mut keys = SharedMemory::<Vector<F, W>>::new(comptime!(2 * round)); // [round][s][a]
    let mut values = SharedMemory::<Vector<F, W>>::new(comptime!(2 * round)); // [round][s][d]
    let mut wc_tiles = SharedMemory::<f32>::new(comptime!(2 * rows)); // [round][s]
    let mut wn_tiles = SharedMemory::<f32>::new(comptime!(2 * rows)); // [round][s]
    let mut n_part = SharedMemory::<f32>::new(comptime!(STATE_PLANES * STATE_TILE)); // [plane][a]
    let mut outgoing = SharedMemory::<Vector<F, W>>::new(comptime!(STATE_TILE * PITCH / width));
    let mut b_frags = Array::<Vector<F, FragB>>::new(comptime!(TILES_N * 2));
    let mut b_frag = Array::<Vector<F, FragB>>::new(2usize);
    let mut c_frag = Array::<Vector<f32, FragC>>::new(nc);
    let mut a_frag = Array::<Vector<F, FragA>>::new(na);
    let mut a_weights = Array::<f32>::new(comptime!(na * sa));
    let mut half_frags = Array::<Vector<F, FragC>>::new(4usize);

    // One barrier per round: its copies are committed to it when issued, and every unit
    // arrives and waits on it before the round is read.
    let barrier_0 = Barrier::shared(UNITS as u32, UNIT_POS == 0);
    let barrier_1 = Barrier::shared(UNITS as u32, UNIT_POS == 0);
    // Protects: the barriers are initialised before any unit commits copies to them.
    sync_cube();
    let mut first = 0usize;
    if reverse {
        first = chunks - 1;
    }
    issue_chunk::<F, W>(
        k,
        v,
        w_c,
        w_n,
        batch,
        head,
        first,
        row0,
        col0,
        0,
        &mut keys,
        &mut values,
        &mut wc_tiles,
        &mut wn_tiles,
        len,
    );
    barrier_0.commit_copy_async();

    let steps = comptime!(rows / MMA_K);
    let cs_base = batch * c_start.stride(0) + head * c_start.stride(1);
    let ns_base = batch * n_start.stride(0) + head * n_start.stride(1);
    let d_base = batch * decay.stride(0) + head * decay.stride(1);
    for step in 0..chunks {
        let mut c = step;
        if reverse {
            c = chunks - 1 - step;
        }
        let this = step % 2;
        if step + 1 < chunks {
            let mut c_next = step + 1;
            if reverse {
                c_next = chunks - 2 - step;
            }
            issue_chunk::<F, W>(
                k,
                v,
                w_c,
                w_n,
                batch,
                head,
                c_next,
                row0,
                col0,
                1 - this,
                &mut keys,
                &mut values,
                &mut wc_tiles,
                &mut wn_tiles,
                len,
            );
            commit_round(&barrier_0, &barrier_1, 1 - this);
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
                    PITCH,
                );
            }
        }
        if owns_n {
            n_start[ns_base + c * n_start.stride(2) + (row0 + n_row) * n_start.stride(3)] = n_acc;
        }
        // Protects: this round's copies have landed and its zero fills are seen, and the
        // outgoing tile is complete, before any unit reads them (every unit arrives).
        wait_round(&barrier_0, &barrier_1, this);
        let x_at = this * round;

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

        // n's increment Σ_s w_n,s k_s, f32: unit (group, vector) sums the tokens
        // group, group + groups, … of its vector of the tile's rows; the groups of a plane
        // (its lanes `vector + per_row · j`) are summed by shuffles, the planes' sums in n_part.
        if col0 == 0 {
            let vector = UNIT_POS as usize % per_row;
            let group = UNIT_POS as usize / per_row;
            let mut part = Vector::<f32, W>::new(0.0);
            for s in range_stepped(group, rows, groups) {
                let key = Vector::<f32, W>::cast_from(keys[x_at + s * pitch + vector]);
                // (`+=` on a vector: not relied on in `#[cube]` code here.)
                #[allow(clippy::assign_op_pattern)]
                {
                    part = part + key * Vector::<f32, W>::new(wn_tiles[this * rows + s]);
                }
            }
            #[unroll]
            for e in 0..width {
                let mut sum = part[e];
                #[unroll]
                for j in 0..comptime!(in_plane.trailing_zeros() as usize) {
                    sum += plane_shuffle_xor(sum, comptime!((per_row << j) as u32));
                }
                if (lane as usize) < per_row {
                    n_part[plane * STATE_TILE + vector * width + e] = sum;
                }
            }
        }

        // C ← a_c C + (w_c∘K)ᵀ V: the decay in place, then the increment accumulated on top.
        let a_c = decay[d_base + c * decay.stride(2)];
        let a_vec = Vector::<f32, FragC>::new(a_c);
        #[unroll]
        for i in 0..comptime!(TILES_M * TILES_N * nc) {
            acc[i] = acc[i] * a_vec;
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
                    this * rows + ks * MMA_K,
                    plane_col + 2usize * np * MMA_N,
                    true,
                    MatrixIdent::B,
                    true,
                    width,
                    PITCH,
                );
                #[unroll]
                for i in 0..4usize {
                    b_frags[np * 4usize + i] = regs[i];
                }
            }
            // The weights of this lane's `A` entries (their `k` coordinate is the token).
            #[unroll]
            for i in 0..na {
                #[unroll]
                for e in 0..sa {
                    let (_, token) = def.position_of_nth(lane, (i * sa + e) as u32, MatrixIdent::A);
                    a_weights[i * sa + e] = wc_tiles[this * rows + ks * MMA_K + token as usize];
                }
            }
            #[unroll]
            for mt in 0..TILES_M {
                // A = (w_c∘K)ᵀ[a, s] (m = key entry, k = token) from the keys' rows [s][a],
                // transposed by `ldmatrix`: `m` runs along the tile's columns; each entry
                // times its token's weight, rounded to F.
                let raw = load_x4::<F, W, FragA>(
                    def,
                    &keys,
                    this * rows + ks * MMA_K,
                    plane_row + mt * MMA_M,
                    false,
                    MatrixIdent::A,
                    true,
                    width,
                    PITCH,
                );
                #[unroll]
                for i in 0..na {
                    let mut value = raw[i];
                    #[unroll]
                    for e in 0..sa {
                        value[e] = F::cast_from(f32::cast_from(value[e]) * a_weights[i * sa + e]);
                    }
                    a_frag[i] = value;
                }
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
        // Protects: every plane is done with this round's tiles before the next round's copies
        // overwrite them, and n's partial sums are complete.
        sync_cube();
        if owns_n {
            let mut inc = 0.0f32;
            #[unroll]
            for p in 0..STATE_PLANES {
                inc += n_part[p * STATE_TILE + n_row];
            }
            n_acc = n_acc * a_c + inc;
        }
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
    if owns_n {
        n_end
            [batch * n_end.stride(0) + head * n_end.stride(1) + (row0 + n_row) * n_end.stride(2)] =
            n_acc;
    }
}
