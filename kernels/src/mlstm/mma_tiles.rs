//! Warp-level `mma` (CUDA's `mma.sync` m16n8k16: half-type operands, f32 accumulators held by
//! the units as registers) over tiles staged in shared memory: the fragment sizes, the
//! `ldmatrix`/`stmatrix` addressing of four `8 × 8` matrices at once, and the product of one `A`
//! fragment with two `B` fragments. Shared by `state_mma_kernel.rs` and `output_mma_kernel.rs`.
//!
//! For `ldmatrix` x4 each lane gives the address of row `lane % 8` of matrix `lane / 8`. The
//! operands' register orders (PTX's fragment layouts) fix which four matrices those are:
//! - `A` (16 × 16, `m × k`): (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15);
//! - two `B` fragments (16 × 8 each, `k × n`): (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15),
//!   (k 8-15, n 8-15): the first fragment in registers 0-1, the second in 2-3;
//! - two accumulator tiles (`stmatrix`, 16 × 8 each, `m × n`): as `B` with `m` for `k`.
//!
//! In every case the matrix index's low bit steps the first coordinate by 8 and its high bit
//! the second, so one addressing rule serves all: [`matrices_x4`] in the tile's own row and
//! column order, with `first_along_rows` saying whether the first coordinate runs along the
//! tile's rows (row-major operands: `A` rows, `B` rows read transposed, accumulator rows) or
//! along its columns (operands stored the other way round).

use cubecl::cmma::MmaDefinition;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::barrier::{copy_async, Barrier};
use cubecl::prelude::*;

/// Units per plane (`mma.sync` is a warp-wide instruction).
pub(crate) const PLANE: usize = 32;
/// Row pitch of the shared-memory tiles in entries: 64 + 8 (144 bytes for 16-bit entries), so
/// that the 16-byte rows that `ldmatrix`/`stmatrix` and the staging move fall in distinct banks.
pub(crate) const PITCH: usize = 72;
/// The `mma` shape: `M × N × K`.
pub(crate) const MMA_M: usize = 16;
pub(crate) const MMA_N: usize = 8;
pub(crate) const MMA_K: usize = 16;

cubecl::define_size!(pub(crate) FragA);
cubecl::define_size!(pub(crate) FragB);
cubecl::define_size!(pub(crate) FragC);

/// Binds the per-lane vector sizes of the three fragment kinds to what the runtime's `mma`
/// uses (CUDA: two 16-bit entries per 32-bit register, two f32 accumulators).
#[cube]
#[allow(unused_variables)]
pub(crate) fn register_fragment_sizes<F: Float>(def: MmaDefinition<F, F, f32>) {
    let a = def.vector_size(MatrixIdent::A);
    let b = def.vector_size(MatrixIdent::B);
    let c = def.vector_size(MatrixIdent::Accumulator);
    intrinsic!(|scope| {
        scope.register_size::<FragA>(a);
        scope.register_size::<FragB>(b);
        scope.register_size::<FragC>(c);
    });
}

/// This lane's address (in vectors of `width` entries) for `ldmatrix`/`stmatrix` x4 on the
/// 16 × 16 block at (`row0`, `col0`) of a tile with rows of `pitch` entries: row `lane % 8` of
/// matrix `q = lane / 8`, whose first coordinate (stepped by `q`'s low bit) runs along the
/// tile's rows where `first_along_rows`, else along its columns.
#[cube]
pub(crate) fn matrices_x4(
    row0: usize,
    col0: usize,
    #[comptime] first_along_rows: bool,
    #[comptime] width: usize,
    #[comptime] pitch: usize,
) -> usize {
    // The lane bit (of `lane / 8`: 8, its high bit: 16) that steps each tile coordinate by 8.
    let row_bit = comptime!(if first_along_rows { 8usize } else { 16usize });
    let col_bit = comptime!(if first_along_rows { 16usize } else { 8usize });
    let lane = UNIT_POS_X as usize;
    let row = row0 + lane % 8 + 8 * ((lane / row_bit) % 2);
    let col = col0 + 8 * ((lane / col_bit) % 2);
    row * comptime!(pitch / width) + col / width
}

/// `ldmatrix` x4 of the 16 × 16 block at (`row0`, `col0`) of `tile` (rows of `pitch` entries,
/// [`matrices_x4`]), transposed where `transpose`: the registers of one `A` fragment or of two
/// `B` fragments.
#[cube]
pub(crate) fn load_x4<F: Float, W: Size, N: Size>(
    def: MmaDefinition<F, F, f32>,
    tile: &SharedMemory<Vector<F, W>>,
    row0: usize,
    col0: usize,
    #[comptime] first_along_rows: bool,
    #[comptime] ident: MatrixIdent,
    #[comptime] transpose: bool,
    #[comptime] width: usize,
    #[comptime] pitch: usize,
) -> Array<Vector<F, N>> {
    let at = matrices_x4(row0, col0, first_along_rows, width, pitch);
    def.load_matrix::<Vector<F, W>, N>(
        &tile.slice(at, at + comptime!(8 / width)),
        ident,
        4usize,
        transpose,
    )
}

/// `stmatrix` x4 of two accumulator tiles (`16 × 8` each, side by side, `regs` in the
/// accumulator's register order, rounded to `F`) into the 16 × 16 block at (`row0`, `col0`) of
/// `tile` (rows of `pitch` entries).
#[cube]
pub(crate) fn store_x4<F: Float, W: Size>(
    def: MmaDefinition<F, F, f32>,
    tile: &mut SharedMemory<Vector<F, W>>,
    regs: &Array<Vector<F, FragC>>,
    row0: usize,
    col0: usize,
    #[comptime] width: usize,
    #[comptime] pitch: usize,
) {
    let at = matrices_x4(row0, col0, true, width, pitch);
    let mut slot = tile.slice_mut(at, at + comptime!(8 / width));
    def.store_matrix(&mut slot, regs, MatrixIdent::Accumulator, 4usize, false);
}

/// `acc[2np], acc[2np + 1] += A · B` for the two `16 × 8` tiles whose `B` fragments one
/// `ldmatrix` x4 loaded into `regs` (tile `2np` from registers 0-1, `2np + 1` from 2-3).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mma_pair<F: Float, NA: Size>(
    def: MmaDefinition<F, F, f32>,
    a_frag: &Array<Vector<F, NA>>,
    regs: &Array<Vector<F, FragB>>,
    acc: &mut Array<Vector<f32, FragC>>,
    b_frag: &mut Array<Vector<F, FragB>>,
    c_frag: &mut Array<Vector<f32, FragC>>,
    np: usize,
) {
    let nc = def.vectors_per_lane(MatrixIdent::Accumulator);
    #[unroll]
    for half in 0..2usize {
        let nt = 2 * np + half;
        #[unroll]
        for i in 0..2usize {
            b_frag[i] = regs[half * 2usize + i];
        }
        #[unroll]
        for i in 0..nc {
            c_frag[i] = acc[nt * nc + i];
        }
        let d_frag = def.execute(a_frag, b_frag, c_frag);
        #[unroll]
        for i in 0..nc {
            acc[nt * nc + i] = d_frag[i];
        }
    }
}

/// Rows `0..rows` and entries `first..first + cols` of one `[rows, D]` operand (row `r` at
/// `base + r · row_stride`) into `tile` from vector `at0` (rows of `pitch` entries), zero past
/// `count` rows and `D` entries. Every one of the cube's `units` takes its share. Synchronous:
/// the loads pass through registers.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage<F: Float, W: Size>(
    src: &Tensor<Vector<F, W>>,
    base: usize,
    row_stride: usize,
    count: usize,
    first: usize,
    depth: usize,
    tile: &mut SharedMemory<Vector<F, W>>,
    at0: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] pitch: usize,
    #[comptime] units: usize,
) {
    let width = src.vector_size();
    let per_row = comptime!(cols / width);
    #[unroll]
    for i in 0..comptime!((rows * per_row).div_ceil(units)) {
        let e = UNIT_POS as usize + i * units;
        if e < rows * per_row {
            let r = e / per_row;
            let off = (e % per_row) * width;
            let mut x = Vector::<F, W>::new(F::new(0.0));
            if r < count && first + off < depth {
                x = src[(base + r * row_stride + first + off) / width];
            }
            tile[at0 + r * comptime!(pitch / width) + e % per_row] = x;
        }
    }
}

/// Rows `0..rows` and entries `first..first + cols` of one `[rows, D]` operand (row `r` at
/// `base + r · row_stride`) into `tile` from vector `at0` (rows of `pitch` entries), zero past
/// `count` rows and `D` entries, through `cp.async` (global to shared memory without
/// registers; vectors of 16 bytes: the H200 raised a misaligned address on 4-byte copies).
/// The copies are only issued here, every one of the cube's `units` taking its share; the
/// caller commits them to a barrier and waits on it before reading `tile`. Entries out of range
/// are zeroed by plain stores (visible after the cube's next synchronisation).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_async<F: Float, W: Size>(
    src: &Tensor<Vector<F, W>>,
    base: usize,
    row_stride: usize,
    count: usize,
    first: usize,
    depth: usize,
    tile: &mut SharedMemory<Vector<F, W>>,
    at0: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] pitch: usize,
    #[comptime] units: usize,
) {
    let width = src.vector_size();
    let per_row = comptime!(cols / width);
    #[unroll]
    for i in 0..comptime!((rows * per_row).div_ceil(units)) {
        let e = UNIT_POS as usize + i * units;
        if e < rows * per_row {
            let r = e / per_row;
            let off = (e % per_row) * width;
            let at = at0 + r * comptime!(pitch / width) + e % per_row;
            if r < count && first + off < depth {
                let from = (base + r * row_stride + first + off) / width;
                copy_async(
                    &src.slice(from, from + 1),
                    &mut tile.slice_mut(at, at + 1),
                    comptime!(width as u32),
                );
            } else {
                tile[at] = Vector::<F, W>::new(F::new(0.0));
            }
        }
    }
}

/// This plane's 16 rows `row0..row0 + 16` of `stage` (rows of [`PITCH`] entries, 64 columns)
/// out to `out`, row `t` at `base + t · row_stride + col0`, a vector of `W` entries per access:
/// the rows `t < len` and the columns `col0 + c < limit`. The plane's units only; the caller
/// synchronises the plane after writing its rows to `stage`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_plane_rows<F: Float, W: Size>(
    stage: &SharedMemory<Vector<F, W>>,
    out: &mut Tensor<Vector<F, W>>,
    base: usize,
    row_stride: usize,
    row0: usize,
    len: usize,
    col0: usize,
    limit: usize,
    #[comptime] width: usize,
) {
    let lane = UNIT_POS_X as usize;
    let per_row = comptime!(64 / width);
    #[unroll]
    for i in 0..comptime!((MMA_M * 64 / width).div_ceil(PLANE)) {
        let e = lane + i * PLANE;
        let r = e / per_row;
        let off = (e % per_row) * width;
        let t = row0 + r;
        if r < MMA_M && t < len && col0 + off < limit {
            out[(base + t * row_stride + col0 + off) / width] =
                stage[t * comptime!(PITCH / width) + off / width];
        }
    }
}

/// Commits the `cp.async` copies this unit issued since the last commit to the barrier of round
/// `slot` (0 or 1) of a double-buffered staging.
#[cube]
pub(crate) fn commit_round(barrier_0: &Barrier, barrier_1: &Barrier, slot: usize) {
    if slot == 0 {
        barrier_0.commit_copy_async();
    } else {
        barrier_1.commit_copy_async();
    }
}

/// Arrives at the barrier of round `slot` and waits until the round's copies have landed.
#[cube]
pub(crate) fn wait_round(barrier_0: &Barrier, barrier_1: &Barrier, slot: usize) {
    if slot == 0 {
        barrier_0.arrive_and_wait();
    } else {
        barrier_1.arrive_and_wait();
    }
}
