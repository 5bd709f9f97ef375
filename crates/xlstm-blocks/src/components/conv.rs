use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

use super::init::{param, torch_default};
use crate::{ModelError, Padding};

/// Causal depthwise convolution over time (official `CausalConv1d`, `channel_mixing=False`):
/// `y_t[d] = b[d] + Σ_{j<K} w[d, j] · x_{t-K+1+j}[d]`, zeros before the first token.
///
/// The state is the last `K - 1` inputs `[B, K-1, D]`, so a sequence can be fed in pieces.
#[derive(Module, Debug)]
pub struct CausalConv1d<B: Backend> {
    /// `[D, 1, K]` (PyTorch `Conv1d` layout with `groups = D`).
    pub weight: Param<Tensor<B, 3>>,
    /// `[D]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> CausalConv1d<B> {
    /// PyTorch's default init: `U(±1/sqrt(K))` for weight and bias.
    pub fn new(features: usize, kernel_size: usize, bias: bool, device: &B::Device) -> Self {
        let init = torch_default(kernel_size);
        Self {
            weight: param(&init, [features, 1, kernel_size], device),
            bias: bias.then(|| param(&init, [features], device)),
        }
    }

    /// Kernel size `K`.
    pub fn kernel_size(&self) -> usize {
        self.weight.dims()[2]
    }

    /// A zero state `[B, K-1, D]` (the official start).
    pub fn zero_state(&self, batch: usize) -> Tensor<B, 3> {
        let [d, _, k] = self.weight.dims();
        Tensor::zeros([batch, k - 1, d], &self.weight.device())
    }

    /// Error unless `state` is `[batch, K-1, D]`.
    pub fn check_state(&self, state: &Tensor<B, 3>, batch: usize) -> Result<(), ModelError> {
        let [d, _, k] = self.weight.dims();
        if state.dims() != [batch, k - 1, d] {
            return Err(ModelError::input(
                "state.conv",
                format!(
                    "expected [B, K-1, D] = {:?}, found {:?}",
                    [batch, k - 1, d],
                    state.dims()
                ),
            ));
        }
        Ok(())
    }

    /// `x [B, S, D]`, `state [B, K-1, D]` (`None`: zeros) → `y [B, S, D]` and the state after
    /// the last real token (per [`Padding`] if given). One pass over the whole sequence: `K`
    /// shifted multiply-adds, no per-token loop.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        state: Option<Tensor<B, 3>>,
        padding: Option<&Padding<B>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [b, s, d] = x.dims();
        let k = self.kernel_size();
        let state = state.unwrap_or_else(|| self.zero_state(b));
        let x_pad = if k > 1 {
            Tensor::cat(vec![state, x], 1) // [B, K-1+S, D]
        } else {
            x
        };
        let w = self.weight.val().reshape([d, k]).transpose(); // [K, D]
        let mut y = x_pad.clone().narrow(1, 0, s) * w.clone().narrow(0, 0, 1).unsqueeze();
        for j in 1..k {
            y = y + x_pad.clone().narrow(1, j, s) * w.clone().narrow(0, j, 1).unsqueeze();
        }
        if let Some(bias) = &self.bias {
            y = y + bias.val().unsqueeze();
        }
        let next = if k == 1 {
            Tensor::zeros([b, 0, d], &y.device())
        } else {
            match padding {
                // The K-1 inputs before position lengths[b] of the padded input.
                Some(p) => x_pad.gather(1, p.time_index(0, k - 1, d)),
                None => x_pad.narrow(1, s, k - 1),
            }
        };
        (y, next)
    }
}
