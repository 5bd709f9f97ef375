//! Official names of the components' parameters.

use burn::nn::Embedding;
use burn::tensor::backend::Backend;

use super::{
    load_opt, load_param, load_swapped, visit_opt, visit_param, visit_swapped, CheckpointError,
    OfficialParams, ParamTensor, TensorMap,
};
use crate::components::{
    CausalConv1d, GatedFeedForward, LayerNorm, Linear, LinearHeadwise, MultiHeadLayerNorm, RmsNorm,
    SwiGlu,
};

/// `weight` (required, read and written by `$visit` / `$load`) and `bias` (optional).
macro_rules! weight_bias {
    ($ty:ident, $visit:ident, $load:ident) => {
        impl<B: Backend> OfficialParams<B> for $ty<B> {
            fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
                $visit(&self.weight, prefix, "weight", out);
                visit_opt(&self.bias, prefix, "bias", out);
            }
            fn load_official(
                mut self,
                prefix: &str,
                src: &mut TensorMap,
            ) -> Result<Self, CheckpointError> {
                self.weight = $load(self.weight, prefix, "weight", src)?;
                self.bias = load_opt(self.bias, prefix, "bias", src)?;
                Ok(self)
            }
        }
    };
}
weight_bias!(CausalConv1d, visit_param, load_param);
// Stored swapped (`[.., in, out]`), official `[.., out, in]` in checkpoints.
weight_bias!(Linear, visit_swapped, load_swapped);
weight_bias!(LinearHeadwise, visit_swapped, load_swapped);

/// Optional `weight` and `bias`.
macro_rules! norm {
    ($ty:ident) => {
        impl<B: Backend> OfficialParams<B> for $ty<B> {
            fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
                visit_opt(&self.weight, prefix, "weight", out);
                visit_opt(&self.bias, prefix, "bias", out);
            }
            fn load_official(
                mut self,
                prefix: &str,
                src: &mut TensorMap,
            ) -> Result<Self, CheckpointError> {
                self.weight = load_opt(self.weight, prefix, "weight", src)?;
                self.bias = load_opt(self.bias, prefix, "bias", src)?;
                Ok(self)
            }
        }
    };
}
norm!(LayerNorm);
norm!(MultiHeadLayerNorm);
norm!(RmsNorm);

impl<B: Backend> OfficialParams<B> for Embedding<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        visit_param(&self.weight, prefix, "weight", out);
    }
    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        self.weight = load_param(self.weight, prefix, "weight", src)?;
        Ok(self)
    }
}

impl<B: Backend> OfficialParams<B> for GatedFeedForward<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        self.proj_up
            .visit_official(&super::join(prefix, "proj_up"), out);
        self.proj_down
            .visit_official(&super::join(prefix, "proj_down"), out);
    }
    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        self.proj_up = self
            .proj_up
            .load_official(&super::join(prefix, "proj_up"), src)?;
        self.proj_down = self
            .proj_down
            .load_official(&super::join(prefix, "proj_down"), src)?;
        Ok(self)
    }
}

impl<B: Backend> OfficialParams<B> for SwiGlu<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        let j = |n| super::join(prefix, n);
        if let Some(m) = &self.proj_up_gate {
            m.visit_official(&j("proj_up_gate"), out);
        }
        if let Some(m) = &self.proj_up {
            m.visit_official(&j("proj_up"), out);
        }
        if let Some(m) = &self.proj_up_gate_z {
            m.visit_official(&j("proj_up_gate_z"), out);
        }
        self.proj_down.visit_official(&j("proj_down"), out);
    }
    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        let j = |n| super::join(prefix, n);
        self.proj_up_gate = super::load_module(self.proj_up_gate, &j("proj_up_gate"), src)?;
        self.proj_up = super::load_module(self.proj_up, &j("proj_up"), src)?;
        self.proj_up_gate_z = super::load_module(self.proj_up_gate_z, &j("proj_up_gate_z"), src)?;
        self.proj_down = self.proj_down.load_official(&j("proj_down"), src)?;
        Ok(self)
    }
}
