use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// How the projections of an xLSTM-7B block are stored (official `weight_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightMode {
    /// Separate `q`, `k`, `v`, `ogate_preact`, `igate_preact`, `fgate_preact`, and
    /// `proj_up_gate` / `proj_up` in the FFN (the released checkpoint).
    #[default]
    Single,
    /// `qkv_opreact` (q, k, v, o stacked), `ifgate_preact` (i, f stacked), `proj_up_gate_z`.
    Fused,
}

/// xLSTM-7B (official `xLSTMLargeConfig`; kernel choices are the backend's business here).
#[derive(Config, Debug, PartialEq)]
pub struct XlstmLargeConfig {
    pub embedding_dim: usize,
    /// Heads; must divide the q/k and v dimensions.
    pub num_heads: usize,
    pub num_blocks: usize,
    pub vocab_size: usize,
    /// Biases in the projections and norms (the gates always have a bias).
    #[config(default = false)]
    pub use_bias: bool,
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// RMSNorm after the last block.
    #[config(default = true)]
    pub add_out_norm: bool,
    /// q/k dim = `floor(qk_dim_factor · E)`.
    #[config(default = 0.5)]
    pub qk_dim_factor: f64,
    /// v dim = `floor(v_dim_factor · E)`.
    #[config(default = 1.0)]
    pub v_dim_factor: f64,
    /// Chunk size of the chunkwise form (results do not depend on it beyond rounding).
    #[config(default = 64)]
    pub chunk_size: usize,
    /// SwiGLU hidden dim = `ffn_proj_factor · E` rounded up to `ffn_round_up_to_multiple_of`.
    #[config(default = 2.6667)]
    pub ffn_proj_factor: f64,
    #[config(default = 64)]
    pub ffn_round_up_to_multiple_of: usize,
    /// `cap · tanh(x / cap)` on the i/f gate pre-activations (`None`: no cap).
    #[config(default = "Some(15.0)")]
    pub gate_soft_cap: Option<f64>,
    /// `cap · tanh(x / cap)` on the logits (`None`: no cap).
    #[config(default = "Some(30.0)")]
    pub output_logit_soft_cap: Option<f64>,
    #[config(default = "WeightMode::Single")]
    pub weight_mode: WeightMode,
}

impl XlstmLargeConfig {
    /// q/k dimension over all heads.
    pub fn qk_dim(&self) -> usize {
        (self.embedding_dim as f64 * self.qk_dim_factor) as usize
    }

    /// v dimension over all heads.
    pub fn v_dim(&self) -> usize {
        (self.embedding_dim as f64 * self.v_dim_factor) as usize
    }

    /// SwiGLU hidden dimension (official `round_up_to_next_multiple_of`).
    pub fn ffn_dim(&self) -> usize {
        let m = self.ffn_round_up_to_multiple_of as f64;
        (((self.embedding_dim as f64 * self.ffn_proj_factor + m - 1.0) / m).floor() * m) as usize
    }

    /// Checks every constraint; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::ensure(self.vocab_size > 0, "vocab_size", "must be at least 1")?;
        ConfigError::ensure(
            self.embedding_dim > 0,
            "embedding_dim",
            "must be at least 1",
        )?;
        ConfigError::ensure(self.num_blocks > 0, "num_blocks", "must be at least 1")?;
        ConfigError::ensure(self.chunk_size > 0, "chunk_size", "must be at least 1")?;
        ConfigError::ensure(
            self.ffn_round_up_to_multiple_of > 0,
            "ffn_round_up_to_multiple_of",
            "must be at least 1",
        )?;
        let nh = self.num_heads;
        ConfigError::ensure(nh > 0, "num_heads", "must be at least 1")?;
        ConfigError::ensure(
            self.qk_dim() > 0 && self.qk_dim().is_multiple_of(nh),
            "qk_dim_factor",
            format!(
                "q/k dim {} must be a positive multiple of num_heads = {nh}",
                self.qk_dim()
            ),
        )?;
        ConfigError::ensure(
            self.v_dim() > 0 && self.v_dim().is_multiple_of(nh),
            "v_dim_factor",
            format!(
                "v dim {} must be a positive multiple of num_heads = {nh}",
                self.v_dim()
            ),
        )?;
        for (field, cap) in [
            ("gate_soft_cap", self.gate_soft_cap),
            ("output_logit_soft_cap", self.output_logit_soft_cap),
        ] {
            ConfigError::ensure(cap.is_none_or(|c| c > 0.0), field, "must be positive")?;
        }
        Ok(())
    }
}
