//! Inner products of chunk-boundary states, the backward's `⟨dC₁, C₀⟩` and `⟨dC₁, C₁⟩` of every
//! chunk (`backward.rs`): one pass over both `[NC, DQK·DV]` stacks, f32 sums, whatever their
//! float type.

use cubecl::prelude::*;

/// Units per cube; a power of two (the sums are halved in shared memory).
pub(crate) const DOT_UNITS: usize = 256;

/// One cube per `(chunk c, row g)`: `same[g, c] = Σ_e a[g,c,e] b[g,c,e]` and
/// `next[g, c] = Σ_e a[g,c,e] b[g,c+1,e]` (0 for the last chunk). `E` is a multiple of `W`;
/// both tensors contiguous.
#[cube(launch)]
pub(crate) fn chunk_dots_kernel<F: Float, W: Size>(
    a: &Tensor<Vector<F, W>>, // [G, NC, E]
    b: &Tensor<Vector<F, W>>, // [G, NC, E]
    same: &mut Tensor<f32>,   // [G, NC]
    next: &mut Tensor<f32>,   // [G, NC]
    #[define(F)] _dtype: StorageType,
) {
    let c = CUBE_POS_X as usize;
    let g = CUBE_POS_Y as usize;
    let unit = UNIT_POS as usize;
    let width = a.vector_size();
    let chunks = a.shape(1);
    let vectors = a.shape(2) / width;
    let a_base = (g * a.stride(0) + c * a.stride(1)) / width;
    let b_base = (g * b.stride(0) + c * b.stride(1)) / width;
    let b_next = b_base + b.stride(1) / width;
    let has_next = c + 1 < chunks;

    let mut with_same = Vector::<f32, W>::new(0.0);
    let mut with_next = Vector::<f32, W>::new(0.0);
    let mut e = unit;
    while e < vectors {
        let x = Vector::<f32, W>::cast_from(a[a_base + e]);
        with_same += x * Vector::cast_from(b[b_base + e]);
        if has_next {
            with_next += x * Vector::cast_from(b[b_next + e]);
        }
        e += DOT_UNITS;
    }

    let mut part_same = SharedMemory::<f32>::new(DOT_UNITS);
    let mut part_next = SharedMemory::<f32>::new(DOT_UNITS);
    part_same[unit] = f32::cast_from(with_same.vector_sum());
    part_next[unit] = f32::cast_from(with_next.vector_sum());
    // Protects: every partial sum is written before the halving reads it.
    sync_cube();
    let mut half = CUBE_DIM as usize / 2; // DOT_UNITS / 2, as a runtime value
    while half > 0 {
        if unit < half {
            part_same[unit] += part_same[unit + half];
            part_next[unit] += part_next[unit + half];
        }
        // Protects: this round's sums are written before the next round reads them.
        sync_cube();
        half /= 2;
    }
    if unit == 0 {
        same[g * same.stride(0) + c * same.stride(1)] = part_same[0];
        next[g * next.stride(0) + c * next.stride(1)] = part_next[0];
    }
}
