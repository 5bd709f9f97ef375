//! The headwise matmul on the CPU (`NdArray<f32>`): one strided GEMM per head on the operands
//! as they lie, so nothing is copied but the GEMM's own packing; at a few rows (generation)
//! a row-times-matrix loop that reads each weight once and packs nothing.
//!
//! Shapes: `x [.., NH·DIN]` is read as `[N, NH·DIN]` (its leading dims merged), head `h` of it is
//! the column block `h·DIN ..`; `w [NH, DIN, DOUT]`; output and `g` `[N, NH·DOUT]`.

use burn::backend::ndarray::{NdArrayTensor, SharedArray};
use burn::tensor::ops::FloatTensor;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayView3, ArrayViewMut2, CowArray, Ix2, Ix3, IxDyn};

use super::HeadwiseGrads;

type Cpu = burn::backend::NdArray<f32>;

/// Up to this many rows, the forward multiplies row by row instead of calling the GEMM (whose
/// packing copies the whole weight block, the dominant cost for a single token).
const ROW_LOOP_MAX_ROWS: usize = 4;

/// The f32 values of `t` with their strides, or `None` for another dtype.
fn f32_view(t: &FloatTensor<Cpu>) -> Option<ndarray::ArrayViewD<'_, f32>> {
    match t {
        NdArrayTensor::F32(storage) => Some(storage.view()),
        _ => None,
    }
}

/// `t [.., F]` as `[N, F]`: a view when its leading dims merge (any 2-D strides, or a
/// contiguous higher-rank tensor), else a standard-layout copy.
fn rows(t: ndarray::ArrayViewD<'_, f32>) -> CowArray<'_, f32, Ix2> {
    let features = *t.shape().last().expect("rank ≥ 1");
    let n = t.len() / features.max(1);
    if t.ndim() == 2 {
        return t.into_dimensionality::<Ix2>().expect("rank 2").into();
    }
    if t.is_standard_layout() {
        return t
            .into_shape_with_order((n, features))
            .expect("a standard-layout tensor merges its dims")
            .into();
    }
    let owned = t.as_standard_layout().into_owned();
    owned
        .into_shape_with_order((n, features))
        .expect("a standard-layout tensor merges its dims")
        .into()
}

/// `c = a · b` (`c` overwritten).
fn matmul_into(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, mut c: ArrayViewMut2<'_, f32>) {
    match (a.nrows() <= ROW_LOOP_MAX_ROWS, b.as_slice()) {
        (true, Some(b_rows)) => {
            let width = b.ncols();
            for (a_row, mut c_row) in a.rows().into_iter().zip(c.rows_mut()) {
                c_row.fill(0.0);
                let c_row = c_row.as_slice_mut().expect("output rows are contiguous");
                for (&a_i, b_row) in a_row.iter().zip(b_rows.chunks_exact(width)) {
                    for (c_j, &b_ij) in c_row.iter_mut().zip(b_row) {
                        *c_j += a_i * b_ij;
                    }
                }
            }
        }
        _ => general_mat_mul(1.0, &a, &b, 0.0, &mut c),
    }
}

/// A primitive from an owned `[N, F]` result reshaped to `shape`.
fn primitive(values: Array2<f32>, shape: Vec<usize>) -> FloatTensor<Cpu> {
    let array: SharedArray<f32> = values
        .into_shape_with_order(IxDyn(&shape))
        .expect("same number of elements")
        .into_shared();
    NdArrayTensor::from(array)
}

fn weights(w: &FloatTensor<Cpu>) -> Option<ArrayView3<'_, f32>> {
    f32_view(w)?.into_dimensionality::<Ix3>().ok()
}

/// `[.., NH·DIN]` → `[.., NH·DOUT]`; `None` for a dtype other than f32.
pub fn forward(x: &FloatTensor<Cpu>, w: &FloatTensor<Cpu>) -> Option<FloatTensor<Cpu>> {
    let (x, w) = (f32_view(x)?, weights(w)?);
    let (nh, din, dout) = w.dim();
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("rank ≥ 1") = nh * dout;
    let x = rows(x);
    let mut out = Array2::<f32>::zeros((x.nrows(), nh * dout));
    for h in 0..nh {
        matmul_into(
            x.slice(s![.., h * din..(h + 1) * din]),
            w.index_axis(ndarray::Axis(0), h),
            out.slice_mut(s![.., h * dout..(h + 1) * dout]),
        );
    }
    Some(primitive(out, shape))
}

/// Per head: `dx_h = g_h · w_hᵀ`, `dw_h = x_hᵀ · g_h`.
pub fn backward(
    x: &FloatTensor<Cpu>,
    w: &FloatTensor<Cpu>,
    g: &FloatTensor<Cpu>,
) -> HeadwiseGrads<Cpu> {
    let (x, w, g) = (
        f32_view(x).expect("the fused forward took f32"),
        weights(w).expect("the fused forward took f32 [NH, DIN, DOUT]"),
        f32_view(g).expect("gradients of an f32 output are f32"),
    );
    let (nh, din, dout) = w.dim();
    let x_shape = x.shape().to_vec();
    let (x, g) = (rows(x), rows(g));
    let mut dx = Array2::<f32>::zeros((x.nrows(), nh * din));
    let mut dw = ndarray::Array3::<f32>::zeros((nh, din, dout));
    for h in 0..nh {
        let w_h = w.index_axis(ndarray::Axis(0), h);
        let g_h = g.slice(s![.., h * dout..(h + 1) * dout]);
        let x_h = x.slice(s![.., h * din..(h + 1) * din]);
        general_mat_mul(
            1.0,
            &g_h,
            &w_h.t(),
            0.0,
            &mut dx.slice_mut(s![.., h * din..(h + 1) * din]),
        );
        general_mat_mul(
            1.0,
            &x_h.t(),
            &g_h,
            0.0,
            &mut dw.index_axis_mut(ndarray::Axis(0), h),
        );
    }
    HeadwiseGrads {
        x: primitive(dx, x_shape),
        w: NdArrayTensor::from(dw.into_dyn().into_shared()),
    }
}
