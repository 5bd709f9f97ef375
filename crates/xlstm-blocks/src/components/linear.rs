use super::init::{param, param_swapped};
use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Tensor};
use xlstm_kernels::DenseBackend;

/// A dense layer `y = x Wᵀ + b` (PyTorch's `nn.Linear`, whose `W` is `[out, in]`), with the
/// weight stored transposed, `[in, out]`, so that the forward is `x · weight` on operands in
/// memory order. Checkpoints keep the official `[out, in]` (checkpoint/components.rs).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `Wᵀ`, `[in, out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// A new layer; the bias (if any) starts at zero.
    pub fn new(
        d_in: usize,
        d_out: usize,
        bias: bool,
        init: &Initializer,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: param_swapped(init, [d_out, d_in], device),
            bias: bias.then(|| param(&Initializer::Zeros, [d_out], device)),
        }
    }

    /// `(in, out)`.
    pub fn dims(&self) -> (usize, usize) {
        let [i, o] = self.weight.dims();
        (i, o)
    }
}

impl<B: DenseBackend> Linear<B> {
    /// `x [..., in]` → `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = B::headwise_matmul(x, self.weight.val().unsqueeze());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}
