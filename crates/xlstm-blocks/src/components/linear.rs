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
        self.add_bias(y)
    }

    /// The forward of the concatenation of `parts` along the last dim (`Σ in_j = in`), as one
    /// product per part with its row block of the weight: the concatenation is never built.
    pub fn forward_concat<const D: usize>(&self, parts: &[Tensor<B, D>]) -> Tensor<B, D> {
        let mut first = 0;
        let mut y: Option<Tensor<B, D>> = None;
        for part in parts {
            let width = part.dims()[D - 1];
            let block = self.weight.val().narrow(0, first, width).unsqueeze();
            let product = B::headwise_matmul(part.clone(), block);
            y = Some(match y {
                Some(y) => y + product,
                None => product,
            });
            first += width;
        }
        assert_eq!(
            first,
            self.dims().0,
            "forward_concat: the parts' widths must sum to `in`"
        );
        self.add_bias(y.expect("forward_concat: at least one part"))
    }

    fn add_bias<const D: usize>(&self, y: Tensor<B, D>) -> Tensor<B, D> {
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}
