use burn::module::{Initializer, Module};
use burn::tensor::{activation::silu, backend::Backend, Tensor};
use serde::{Deserialize, Serialize};
use xlstm_kernels::DenseBackend;

use super::Linear;

/// Exact GELU `x · (1 + erf(x/√2)) / 2` (PyTorch's default), built from differentiable ops so
/// that its gradient is exact too (burn 0.21's fused `gelu` backward uses the tanh
/// approximation).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5
}

/// The gate activation of [`GatedFeedForward`] (official `_act_fn_registry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FeedForwardActivation {
    /// Exact GELU (the official default).
    #[default]
    Gelu,
    /// SiLU / swish.
    Swish,
    Relu,
}

impl FeedForwardActivation {
    fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Gelu => gelu(x),
            Self::Swish => silu(x),
            Self::Relu => burn::tensor::activation::relu(x),
        }
    }
}

/// Gated feed-forward of the sLSTM block (official `GatedFeedForward`):
/// `[g, u] = proj_up(x)`, `y = proj_down(act(g) · u)`.
#[derive(Module, Debug)]
pub struct GatedFeedForward<B: Backend> {
    /// `[2·U, E]`: the gate half first, then the up half.
    pub proj_up: Linear<B>,
    /// `[E, U]`.
    pub proj_down: Linear<B>,
    #[module(skip)]
    pub activation: FeedForwardActivation,
}

impl<B: Backend> GatedFeedForward<B> {
    pub fn new(
        embedding_dim: usize,
        up_dim: usize,
        bias: bool,
        activation: FeedForwardActivation,
        init_up: &Initializer,
        init_down: &Initializer,
        device: &B::Device,
    ) -> Self {
        Self {
            proj_up: Linear::new(embedding_dim, 2 * up_dim, bias, init_up, device),
            proj_down: Linear::new(up_dim, embedding_dim, bias, init_down, device),
            activation,
        }
    }
}

impl<B: DenseBackend> GatedFeedForward<B> {
    /// `x [B, S, E]` → `[B, S, E]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let up = self.proj_up.forward(x);
        let u = up.dims()[2] / 2;
        let gate = up.clone().narrow(2, 0, u);
        let z = up.narrow(2, u, u);
        self.proj_down.forward(self.activation.apply(gate) * z)
    }
}

/// SwiGLU feed-forward of xLSTM-7B: `y = proj_down(silu(W_g x) · (W_u x))`, the two up
/// projections separate (`weight_mode = single`: `proj_up_gate`, `proj_up`) or fused into one
/// `[2·U, E]` matrix (`fused`: `proj_up_gate_z`, gate half first).
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    /// `single`: `[U, E]` gate projection.
    pub proj_up_gate: Option<Linear<B>>,
    /// `single`: `[U, E]` up projection.
    pub proj_up: Option<Linear<B>>,
    /// `fused`: `[2·U, E]`.
    pub proj_up_gate_z: Option<Linear<B>>,
    /// `[E, U]`.
    pub proj_down: Linear<B>,
}

impl<B: Backend> SwiGlu<B> {
    pub fn new(
        embedding_dim: usize,
        up_dim: usize,
        bias: bool,
        fused: bool,
        device: &B::Device,
    ) -> Self {
        let init = super::init::torch_default(embedding_dim);
        let lin = |o| Linear::new(embedding_dim, o, bias, &init, device);
        Self {
            proj_up_gate: (!fused).then(|| lin(up_dim)),
            proj_up: (!fused).then(|| lin(up_dim)),
            proj_up_gate_z: fused.then(|| lin(2 * up_dim)),
            proj_down: Linear::new(
                up_dim,
                embedding_dim,
                bias,
                &super::init::torch_default(up_dim),
                device,
            ),
        }
    }
}

impl<B: DenseBackend> SwiGlu<B> {
    /// `x [B, S, E]` → `[B, S, E]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = match (&self.proj_up_gate, &self.proj_up, &self.proj_up_gate_z) {
            (Some(g), Some(u), _) => silu(g.forward(x.clone())) * u.forward(x),
            (_, _, Some(gz)) => {
                let y = gz.forward(x);
                let u = y.dims()[2] / 2;
                silu(y.clone().narrow(2, 0, u)) * y.narrow(2, u, u)
            }
            _ => unreachable!("SwiGlu::new sets either the single or the fused weights"),
        };
        self.proj_down.forward(h)
    }
}
