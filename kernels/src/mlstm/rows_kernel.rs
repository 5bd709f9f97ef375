//! The chunkwise backward's first step through the outputs (`backward.rs`), fused: per row of
//! `h`, `dnum_t = dh_t / den_t` (in the backward's work type) and `dot_t = dh_t·h_t` (f32), one
//! read of `dh` and `h`.

use cubecl::prelude::*;

/// Units that share one row (a power of two; their partial sums are halved in shared memory).
pub(crate) const ROW_UNITS: usize = 32;
/// Rows per cube.
pub(crate) const ROWS_PER_CUBE: usize = 8;

/// `ROW_UNITS` units per row of `dh, h [R, DV]` (`DV` a multiple of `W`), `ROWS_PER_CUBE` rows
/// per cube; each unit strides over its row's vectors. Every tensor contiguous.
#[cube(launch)]
pub(crate) fn backward_rows_kernel<F: Float, O: Float, W: Size>(
    dh: &Tensor<Vector<F, W>>,       // [R, DV]
    h: &Tensor<Vector<F, W>>,        // [R, DV]
    den: &Tensor<f32>,               // [R]
    dnum: &mut Tensor<Vector<O, W>>, // [R, DV]
    dot: &mut Tensor<f32>,           // [R]
    #[define(F, O)] _dtypes: [StorageType; 2],
) {
    let width = dh.vector_size();
    let vectors = dh.shape(1) / width;
    let rows = dh.shape(0);
    let row = ABSOLUTE_POS / ROW_UNITS;
    let lane = UNIT_POS as usize % ROW_UNITS;

    let mut sum = Vector::<f32, W>::new(0.0);
    if row < rows {
        let scale = Vector::<f32, W>::new(1.0 / den[row]);
        let base = row * vectors;
        let mut e = lane;
        while e < vectors {
            let g = Vector::<f32, W>::cast_from(dh[base + e]);
            sum += g * Vector::cast_from(h[base + e]);
            dnum[base + e] = Vector::cast_from(g * scale);
            e += ROW_UNITS;
        }
    }

    let mut part = SharedMemory::<f32>::new(ROW_UNITS * ROWS_PER_CUBE);
    let unit = UNIT_POS as usize;
    part[unit] = f32::cast_from(sum.vector_sum());
    // Protects: every partial sum is written before the halving reads it.
    sync_cube();
    let mut half = CUBE_DIM as usize / ROWS_PER_CUBE / 2; // ROW_UNITS / 2, as a runtime value
    while half > 0 {
        if lane < half {
            part[unit] += part[unit + half];
        }
        // Protects: this round's sums are written before the next round reads them.
        sync_cube();
        half /= 2;
    }
    if lane == 0 && row < rows {
        dot[row] = part[unit];
    }
}
