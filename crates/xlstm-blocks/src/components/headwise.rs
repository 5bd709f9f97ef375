use super::init::{param, param_swapped};
use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Tensor};
use xlstm_kernels::DenseBackend;

/// Block-diagonal projection, one dense block per head (official `LinearHeadwiseExpand`).
///
/// The input `[..., NH·DIN]` is split into `NH` heads of `DIN` features; head `h` is mapped by
/// its own `[DOUT, DIN]` matrix; the outputs are concatenated to `[..., NH·DOUT]`. The weights
/// are stored transposed, `[NH, DIN, DOUT]` (official `[NH, DOUT, DIN]` in checkpoints), so
/// that the matmul reads them in memory order.
#[derive(Module, Debug)]
pub struct LinearHeadwise<B: Backend> {
    /// Per head `Wᵀ`, `[NH, DIN, DOUT]`.
    pub weight: Param<Tensor<B, 3>>,
    /// `[NH·DOUT]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> LinearHeadwise<B> {
    /// `features` split into `heads` blocks, same size out as in (the only factor the
    /// official models use).
    pub fn new(
        features: usize,
        heads: usize,
        bias: bool,
        init: &Initializer,
        device: &B::Device,
    ) -> Self {
        let d = features / heads;
        Self {
            weight: param_swapped(init, [heads, d, d], device),
            bias: bias.then(|| param(&Initializer::Zeros, [features], device)),
        }
    }
}

impl<B: DenseBackend> LinearHeadwise<B> {
    /// `x [B, S, NH·DIN]` → `[B, S, NH·DOUT]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let y = B::headwise_matmul(x, self.weight.val());
        match &self.bias {
            Some(bias) => y + bias.val().unsqueeze(),
            None => y,
        }
    }
}
