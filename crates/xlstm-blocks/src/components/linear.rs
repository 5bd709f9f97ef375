use super::init::param;
use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Tensor};

/// A dense layer with the weight stored as in PyTorch, `[out, in]` (`y = x Wᵀ + b`).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out, in]`.
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
            weight: param(init, [d_out, d_in], device),
            bias: bias.then(|| param(&Initializer::Zeros, [d_out], device)),
        }
    }

    /// `x [..., in]` → `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = x.matmul(self.weight.val().transpose().unsqueeze());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }

    /// `(in, out)`.
    pub fn dims(&self) -> (usize, usize) {
        let [o, i] = self.weight.dims();
        (i, o)
    }
}
