//! Dense and block-diagonal (headwise) projections as a backend primitive.
//!
//! [`DenseBackend::headwise_matmul`] multiplies `x [.., NH·DIN]` by a block-diagonal matrix
//! given as its `NH` blocks `w [NH, DIN, DOUT]`; with `NH = 1` it is a dense layer `x · w`.
//! Every projection of the models goes through it (`Linear` is `NH = 1`).
//!
//! The default is the tensor-op reference (reshape, batched matmul). burn-ndarray's matmul
//! copies both operands and the result on every call (its reshapes always copy), and under
//! autodiff its backward copies transposed operands again; for the CPU models that was a third
//! of a training step and half of a generated token. `NdArray<f32>` overrides the two hooks
//! with strided GEMMs on the operands as they lie (`cpu.rs`), and `Autodiff<B>` registers the
//! hook backward as one node, so training on the CPU uses it without knowing.

mod autodiff;
mod cpu;

use burn::backend::NdArray;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};

/// Gradients of [`DenseBackend::headwise_fused_forward`].
#[derive(Debug)]
pub struct HeadwiseGrads<B: Backend> {
    /// `[.., NH·DIN]`, the shape of `x`.
    pub x: FloatTensor<B>,
    /// `[NH, DIN, DOUT]`.
    pub w: FloatTensor<B>,
}

/// Block-diagonal projections; see the module docs.
pub trait DenseBackend: Backend {
    /// `x [.., NH·DIN]` · blockdiag(`w [NH, DIN, DOUT]`) → `[.., NH·DOUT]`: head `h` of the
    /// output is `x[.., h·DIN .. (h+1)·DIN] · w[h]`.
    ///
    /// # Panics
    /// If the last dim of `x` is not `NH·DIN` (a model wiring error, like a matmul's).
    fn headwise_matmul<const D: usize>(x: Tensor<Self, D>, w: Tensor<Self, 3>) -> Tensor<Self, D> {
        check(&x, &w);
        let fused = Self::headwise_fused_forward(
            x.clone().into_primitive().tensor(),
            w.clone().into_primitive().tensor(),
        );
        match fused {
            Some(out) => Tensor::from_primitive(TensorPrimitive::Float(out)),
            None => reference(x, w),
        }
    }

    /// The fused forward on primitives (shapes already checked); `None` where this backend has
    /// none for these operands (the caller then runs the reference). The default has none.
    fn headwise_fused_forward(
        _x: FloatTensor<Self>,
        _w: FloatTensor<Self>,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// The backward of [`DenseBackend::headwise_fused_forward`] given the output gradient `g`
    /// (`[.., NH·DOUT]`). Called only after this backend's fused forward ran on `x` and `w`.
    fn headwise_fused_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> HeadwiseGrads<Self> {
        let _ = (x, w, g);
        unreachable!("headwise_fused_backward: this backend has no fused forward")
    }
}

/// `NdArray<f32>`: strided GEMMs on the operands as they lie (`cpu.rs`).
impl DenseBackend for NdArray<f32> {
    fn headwise_fused_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
    ) -> Option<FloatTensor<Self>> {
        cpu::forward(&x, &w)
    }

    fn headwise_fused_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> HeadwiseGrads<Self> {
        cpu::backward(&x, &w, &g)
    }
}
impl DenseBackend for NdArray<f64> {}

#[cfg(feature = "cube")]
impl<R, F, I, BT> DenseBackend for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
}

fn check<B: Backend, const D: usize>(x: &Tensor<B, D>, w: &Tensor<B, 3>) {
    let [nh, din, _] = w.dims();
    let width = x.dims()[D - 1];
    assert!(
        width == nh * din,
        "headwise_matmul: x has {width} features, the weights take NH·DIN = {nh}·{din}"
    );
}

/// The tensor-op reference: `[N, NH, DIN]` → `[NH, N, DIN]` · `w` → `[N, NH·DOUT]`.
pub fn reference<B: Backend, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 3>) -> Tensor<B, D> {
    let [nh, din, dout] = w.dims();
    let mut out_dims = x.dims();
    out_dims[D - 1] = nh * dout;
    let n = x.dims()[..D - 1].iter().product::<usize>();
    let y = if nh == 1 {
        x.reshape([n, din]).matmul(w.reshape([din, dout]))
    } else {
        x.reshape([n, nh, din])
            .swap_dims(0, 1) // [NH, N, DIN]
            .matmul(w) // [NH, N, DOUT]
            .swap_dims(0, 1)
            .reshape([n, nh * dout])
    };
    y.reshape(out_dims)
}
