//! Batched products with a short inner dimension (one chunk: `K ≤ 128`) on tensor cores:
//! `out[z] = lhs[z] @ rhs[z]` for every leading index `z`, e.g. the forward's `K_wᵀ V`
//! (`[DQK, L] @ [L, DV]` per chunk) and `(D∘P) V` (`[2L, L] @ [L, DV]`).
//!
//! Why a kernel of our own: cubek's tilings run these at 1.0–1.6 TB/s of output on the H200
//! (`K_wᵀ V` at B8 NH8 S8192 DQK256 DV512: 2.2 ms for 2.1 GB written), since with one stage of
//! `K` a cube has nothing to overlap its loads with and few cubes fit on an SM. Here a cube is
//! small (four planes, ≤ 35 KiB of shared memory), so many are resident at once and their loads,
//! products and stores overlap each other.

use cubecl::prelude::*;

/// Rows and columns of the product block of one cube.
pub(crate) const BLOCK: usize = 64;
/// Planes (of 32 units) per cube: plane `p` owns rows `16p .. 16p + 16` of the block.
pub(crate) const PLANES: usize = 4;
/// Largest inner dimension the kernel takes (its operand tiles stay in shared memory whole).
/// (Up to 35 KiB: both tiles and the f32 block; 128 would pass CUDA's 48 KiB default.)
pub(crate) const MAX_DEPTH: usize = 64;
/// Padding of the shared-memory rows: fragment rows then fall in different banks, and every
/// fragment's start stays 32-byte aligned (`16 · (n + 8) · 2` and `16 · (64 + 4) · 4` bytes).
const HALF_PAD: usize = 8;
const F32_PAD: usize = 4;

/// One cube per (`64 × 64` block of the product, leading index `z = y + Y·z'`); `depth` is `K`
/// rounded up to 16 (the tiles are zero past `K`, past `M` and past `N`). `lhs_m_major`:
/// `lhs` is contiguous along `M` (e.g. a transposed `K_w`), else along `K`; `rhs_n_major`: `rhs`
/// is contiguous along `N`, else along `K`. The operand tiles are staged in shared memory in
/// their global order, so that both the loads and the staging stores are contiguous, and read
/// as fragments of the matching layout. Any strides; the leading dims are three.
#[cube(launch_unchecked)]
pub(crate) fn short_product_kernel<F: Float, O: Float>(
    lhs: &Tensor<F>,     // [Z1, Z2, Z3, M, K]
    rhs: &Tensor<F>,     // [Z1, Z2, Z3, K, N]
    out: &mut Tensor<O>, // [Z1, Z2, Z3, M, N]
    #[comptime] depth: usize,
    #[comptime] lhs_m_major: bool,
    #[comptime] rhs_n_major: bool,
    #[define(F, O)] _dtypes: [StorageType; 2],
) {
    let units = comptime!(32 * PLANES);
    let (m, k, n) = (lhs.shape(3), lhs.shape(4), rhs.shape(4));
    let (z2, z3) = (lhs.shape(1), lhs.shape(2));
    // Cubes past the last index (the grid's last `z'` row) redo the last product: the same
    // values written twice, no branch around the barriers.
    let z = CUBE_POS_Y as usize + CUBE_POS_Z as usize * CUBE_COUNT_Y as usize;
    let z = z.min(lhs.shape(0) * z2 * z3 - 1);
    let (i1, i2, i3) = (z / (z2 * z3), (z / z3) % z2, z % z3);
    let lhs0 = i1 * lhs.stride(0) + i2 * lhs.stride(1) + i3 * lhs.stride(2);
    let rhs0 = i1 * rhs.stride(0) + i2 * rhs.stride(1) + i3 * rhs.stride(2);
    let out0 = i1 * out.stride(0) + i2 * out.stride(1) + i3 * out.stride(2);
    let blocks_n = n.div_ceil(BLOCK);
    let m0 = (CUBE_POS_X as usize / blocks_n) * BLOCK;
    let n0 = (CUBE_POS_X as usize % blocks_n) * BLOCK;
    let tid = UNIT_POS as usize;
    let plane = tid / 32;

    // lhs block: [K][64] (m-major) or [64][K]; rhs block: [K][64] (n-major) or [64][K].
    let wide = comptime!(BLOCK + HALF_PAD);
    let deep = comptime!(depth + HALF_PAD);
    let a_stride = comptime!(if lhs_m_major { wide } else { deep });
    let b_stride = comptime!(if rhs_n_major { wide } else { deep });
    let a_len = comptime!(if lhs_m_major {
        depth * wide
    } else {
        BLOCK * deep
    });
    let b_len = comptime!(if rhs_n_major {
        depth * wide
    } else {
        BLOCK * deep
    });
    let mut a_s = SharedMemory::<F>::new(a_len);
    let mut b_s = SharedMemory::<F>::new(b_len);
    let zero = F::cast_from(0.0f32);
    let mut e = tid;
    while e < comptime!(BLOCK * depth) {
        // Entry e: the fast index is along the operand's contiguous dim.
        let (row, kk) = if comptime!(lhs_m_major) {
            (e % BLOCK, e / BLOCK)
        } else {
            (e / depth, e % depth)
        };
        let mut x = zero;
        if m0 + row < m && kk < k {
            x = lhs[lhs0 + (m0 + row) * lhs.stride(3) + kk * lhs.stride(4)];
        }
        if comptime!(lhs_m_major) {
            a_s[kk * a_stride + row] = x;
        } else {
            a_s[row * a_stride + kk] = x;
        }
        let (col, kk) = if comptime!(rhs_n_major) {
            (e % BLOCK, e / BLOCK)
        } else {
            (e / depth, e % depth)
        };
        let mut y = zero;
        if n0 + col < n && kk < k {
            y = rhs[rhs0 + kk * rhs.stride(3) + (n0 + col) * rhs.stride(4)];
        }
        if comptime!(rhs_n_major) {
            b_s[kk * b_stride + col] = y;
        } else {
            b_s[col * b_stride + kk] = y;
        }
        e += units;
    }
    // Protects: the staged blocks are complete before the planes read them.
    sync_cube();

    let a_layout = if comptime!(lhs_m_major) {
        cmma::MatrixLayout::ColMajor
    } else {
        cmma::MatrixLayout::RowMajor
    };
    let b_layout = if comptime!(rhs_n_major) {
        cmma::MatrixLayout::RowMajor
    } else {
        cmma::MatrixLayout::ColMajor
    };
    let a = unsafe {
        cmma::Matrix::<F>::uninitialized(cmma::MatrixIdent::A, 16usize, 16usize, 16usize, a_layout)
    };
    let b = unsafe {
        cmma::Matrix::<F>::uninitialized(cmma::MatrixIdent::B, 16usize, 16usize, 16usize, b_layout)
    };
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..BLOCK / 16 {
        let c = unsafe {
            cmma::Matrix::<f32>::uninitialized(
                cmma::MatrixIdent::Accumulator,
                16usize,
                16usize,
                16usize,
                cmma::MatrixLayout::Undefined,
            )
        };
        cmma::fill(&c, 0.0f32);
        acc.push(c);
    }
    let row = plane * 16;
    #[unroll]
    for step in 0..depth / 16 {
        let a_off = if comptime!(lhs_m_major) {
            16 * step * a_stride + row
        } else {
            row * a_stride + 16 * step
        };
        cmma::load(
            &a,
            &a_s.slice(a_off, a_off + 15 * a_stride + 16),
            a_stride as u32,
        );
        #[unroll]
        for j in 0..BLOCK / 16 {
            let b_off = if comptime!(rhs_n_major) {
                16 * step * b_stride + 16 * j
            } else {
                16 * j * b_stride + 16 * step
            };
            cmma::load(
                &b,
                &b_s.slice(b_off, b_off + 15 * b_stride + 16),
                b_stride as u32,
            );
            cmma::execute::<F, F, f32, f32>(&a, &b, acc.index(j), acc.index(j));
        }
    }

    // The block through shared memory (f32), then out in rows: contiguous stores.
    let c_stride = comptime!(BLOCK + F32_PAD);
    let mut c_s = SharedMemory::<f32>::new(comptime!(BLOCK * (BLOCK + F32_PAD)));
    #[unroll]
    for j in 0..BLOCK / 16 {
        let off = row * c_stride + 16 * j;
        cmma::store(
            &mut c_s.slice_mut(off, off + 15 * c_stride + 16),
            acc.index(j),
            c_stride as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
    // Protects: every plane's rows are in shared memory before any unit writes them out.
    sync_cube();
    let mut e = tid;
    while e < comptime!(BLOCK * BLOCK) {
        let (r, c) = (e / BLOCK, e % BLOCK);
        if m0 + r < m && n0 + c < n {
            out[out0 + (m0 + r) * out.stride(3) + (n0 + c) * out.stride(4)] =
                O::cast_from(c_s[r * c_stride + c]);
        }
        e += units;
    }
}
