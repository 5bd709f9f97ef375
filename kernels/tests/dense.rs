//! The fused CPU headwise matmul (`NdArray<f32>`, kernels/src/dense/cpu.rs) against the
//! tensor-op reference `xlstm_kernels::dense::reference`: output and both gradients (through
//! `Autodiff<NdArray<f32>>`), on awkward shapes — one head and many, a single row and a few
//! (the row loop) and many (the GEMM), ranks 2–4, and operands that arrive as strided views.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use xlstm_golden::rel_l2;
use xlstm_kernels::dense::reference;
use xlstm_kernels::DenseBackend;

mod common;
use common::Rng;

type Ad = Autodiff<NdArray<f32>>;

fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<Ad, D> {
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// How the operands reach the op.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Both contiguous.
    Contiguous,
    /// `x` built as `[.., F, rows]` and swapped (a strided view), `w` built as
    /// `[NH, DOUT, DIN]` and swapped (the tied LM head's `embeddingᵀ`).
    Transposed,
}

/// Output, `dx`, `dw` of `x [lead.., NH·DIN] · blockdiag(w)` with a random linear loss.
fn run<const D: usize>(
    seed: u64,
    lead: [usize; D],
    (nh, din, dout): (usize, usize, usize),
    layout: Layout,
    fused: bool,
) -> [Vec<f64>; 3] {
    let mut rng = Rng::new(seed);
    let rows: usize = lead[..D - 1].iter().product();
    let features = nh * din;
    let mut x_shape = lead;
    x_shape[D - 1] = features;
    let x_values = rng.uniform(rows * features, -1.0, 1.0);
    let w_values = rng.uniform(nh * din * dout, -0.5, 0.5);
    let (x, x_leaf, w, w_leaf) = match layout {
        Layout::Contiguous => {
            let x = tensor(x_values, x_shape).require_grad();
            let w = tensor(w_values, [nh, din, dout]).require_grad();
            (x.clone(), x, w.clone(), w)
        }
        Layout::Transposed => {
            let mut swapped = x_shape;
            swapped.swap(D - 2, D - 1);
            let x = tensor(x_values, swapped).require_grad();
            let w = tensor(w_values, [nh, dout, din]).require_grad();
            (
                x.clone().swap_dims(D - 2, D - 1),
                x,
                w.clone().swap_dims(1, 2),
                w,
            )
        }
    };
    let y = if fused {
        Ad::headwise_matmul(x, w)
    } else {
        reference(x, w)
    };
    let mut out_shape = lead;
    out_shape[D - 1] = nh * dout;
    let weight = tensor(rng.uniform(rows * nh * dout, -1.0, 1.0), out_shape);
    let grads = (y.clone() * weight).sum().backward();
    [
        values(y),
        values(x_leaf.grad(&grads).expect("dx")),
        values(w_leaf.grad(&grads).expect("dw")),
    ]
}

fn compare<const D: usize>(
    seed: u64,
    lead: [usize; D],
    dims: (usize, usize, usize),
    layout: Layout,
) {
    let fused = run(seed, lead, dims, layout, true);
    let want = run(seed, lead, dims, layout, false);
    for (name, (got, want)) in ["y", "dx", "dw"].iter().zip(fused.iter().zip(&want)) {
        let err = rel_l2(got, want);
        assert!(
            err <= 1e-6,
            "{name}: rel L2 {err:.2e} at lead {lead:?}, (NH, DIN, DOUT) {dims:?}, {layout:?}"
        );
    }
}

#[test]
fn dense_layers_match_the_reference() {
    for layout in [Layout::Contiguous, Layout::Transposed] {
        compare(1, [1, 7], (1, 7, 5), layout); // one row: the row loop
        compare(2, [3, 16], (1, 16, 33), layout); // three rows: the row loop
        compare(3, [37, 12], (1, 12, 9), layout); // the GEMM
        compare(4, [2, 5, 8], (1, 8, 13), layout); // rank 3
        compare(5, [2, 3, 4, 6], (1, 6, 3), layout); // rank 4
    }
}

#[test]
fn headwise_blocks_match_the_reference() {
    for layout in [Layout::Contiguous, Layout::Transposed] {
        compare(11, [1, 1, 256], (64, 4, 4), layout); // the mLSTM q/k/v blocks, one token
        compare(12, [3, 33, 24], (3, 8, 8), layout);
        compare(13, [2, 9, 10], (2, 5, 7), layout); // DIN ≠ DOUT
        compare(14, [4, 6], (6, 1, 2), layout); // DIN = 1
    }
}
