use super::init::param;
use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Tensor};

/// Block-diagonal projection, one dense block per head (official `LinearHeadwiseExpand`).
///
/// The input `[..., NH·DIN]` is split into `NH` heads of `DIN` features; head `h` is mapped by
/// its own `[DOUT, DIN]` matrix; the outputs are concatenated to `[..., NH·DOUT]`.
#[derive(Module, Debug)]
pub struct LinearHeadwise<B: Backend> {
    /// `[NH, DOUT, DIN]`.
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
            weight: param(init, [heads, d, d], device),
            bias: bias.then(|| param(&Initializer::Zeros, [features], device)),
        }
    }

    /// `x [B, S, NH·DIN]` → `[B, S, NH·DOUT]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let [nh, dout, din] = self.weight.dims();
        let y = x
            .reshape([b * s, nh, din])
            .swap_dims(0, 1) // [NH, B·S, DIN]
            .matmul(self.weight.val().swap_dims(1, 2)) // [NH, B·S, DOUT]
            .swap_dims(0, 1)
            .reshape([b, s, nh * dout]);
        match &self.bias {
            Some(bias) => y + bias.val().unsqueeze(),
            None => y,
        }
    }
}
