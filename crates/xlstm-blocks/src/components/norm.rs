use super::init::param;
use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Tensor};

/// How a norm's stored weight becomes its scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormWeight {
    /// Scale `1 + w`, `w` initialised to zero: the NeurIPS `xlstm` `LayerNorm` with
    /// `residual_weight=True` (its `weight_proxy`). Checkpoints store `w`.
    Offset,
    /// Scale `w`, initialised to one (xLSTM-7B norms).
    Direct,
}

fn init_weight<B: Backend>(
    dim: usize,
    mode: NormWeight,
    device: &B::Device,
) -> Param<Tensor<B, 1>> {
    match mode {
        NormWeight::Offset => param(&Initializer::Zeros, [dim], device),
        NormWeight::Direct => param(&Initializer::Ones, [dim], device),
    }
}

fn scale<B: Backend>(weight: &Param<Tensor<B, 1>>, offset: bool) -> Tensor<B, 1> {
    if offset {
        weight.val() + 1.0
    } else {
        weight.val()
    }
}

/// `(x - mean) / sqrt(var + eps)` over the last axis (biased variance, as `F.layer_norm`).
fn standardize<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let xc = x.clone() - x.mean_dim(D - 1);
    let var = (xc.clone() * xc.clone()).mean_dim(D - 1);
    xc / (var + eps).sqrt()
}

/// Layer norm over the last axis with an optional weight and bias (official `LayerNorm`).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `[D]`, see [`NormWeight`].
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// `[D]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance.
    pub eps: f64,
    /// True for [`NormWeight::Offset`].
    pub offset: bool,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(dim: usize, mode: NormWeight, bias: bool, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Some(init_weight(dim, mode, device)),
            bias: bias.then(|| param(&Initializer::Zeros, [dim], device)),
            eps,
            offset: mode == NormWeight::Offset,
        }
    }

    /// `x [..., D]` → `[..., D]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut y = standardize(x, self.eps);
        if let Some(w) = &self.weight {
            y = y * scale(w, self.offset).unsqueeze();
        }
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze();
        }
        y
    }
}

/// Layer norm per head (official `MultiHeadLayerNorm`, a group norm with one group per head):
/// each head's `DH` features are standardised separately, then scaled per feature.
#[derive(Module, Debug)]
pub struct MultiHeadLayerNorm<B: Backend> {
    /// `[NH·DH]`, see [`NormWeight`].
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// `[NH·DH]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub eps: f64,
    pub offset: bool,
}

impl<B: Backend> MultiHeadLayerNorm<B> {
    pub fn new(dim: usize, mode: NormWeight, bias: bool, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Some(init_weight(dim, mode, device)),
            bias: bias.then(|| param(&Initializer::Zeros, [dim], device)),
            eps,
            offset: mode == NormWeight::Offset,
        }
    }

    /// `x [B, S, NH, DH]` → `[B, S, NH·DH]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, s, nh, dh] = x.dims();
        let mut y = standardize(x, self.eps);
        if let Some(w) = &self.weight {
            y = y * scale(w, self.offset).reshape([1, 1, nh, dh]);
        }
        if let Some(bias) = &self.bias {
            y = y + bias.val().reshape([1, 1, nh, dh]);
        }
        y.reshape([b, s, nh * dh])
    }
}

/// Root-mean-square norm over the last axis (xLSTM-7B `RMSNorm`): `x / sqrt(mean(x²) + eps) · w`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[D]`, initialised to one.
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// `[D]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(dim: usize, bias: bool, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Some(param(&Initializer::Ones, [dim], device)),
            bias: bias.then(|| param(&Initializer::Zeros, [dim], device)),
            eps,
        }
    }

    /// `x [..., D]` → `[..., D]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let ms = (x.clone() * x.clone()).mean_dim(D - 1);
        let mut y = x / (ms + self.eps).sqrt();
        if let Some(w) = &self.weight {
            y = y * w.val().unsqueeze();
        }
        if let Some(b) = &self.bias {
            y = y + b.val().unsqueeze();
        }
        y
    }
}
