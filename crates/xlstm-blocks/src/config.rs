//! Configurations of the NeurIPS xLSTM LM (burn `Config`: builder, serde JSON, defaults of
//! the official `xlstm` package).

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::components::FeedForwardActivation;
use crate::ConfigError;

/// Official `UpProjConfigMixin`: `ceil(factor · dim / multiple) · multiple`.
pub fn round_up_dim(factor: f64, dim: usize, multiple: usize) -> usize {
    ((factor * dim as f64) / multiple as f64).ceil() as usize * multiple
}

/// Initial sLSTM gate biases (official `sLSTMCellConfig.bias_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlstmBiasInit {
    /// Forget bias per head `-(-5 + 12 · (u / (DH-1))^(0.3 + 1.3 · block/(blocks-1)))` for unit
    /// `u`, so deeper blocks remember longer; other gates zero. The official default.
    #[default]
    PowerlawBlockdependent,
    /// Forget bias `linspace(3, 6, DH)` per head, other gates zero.
    SmallInit,
    /// Every bias `U(±1/sqrt(H))`.
    Standard,
    /// All zero.
    Zeros,
}

/// Initial sLSTM recurrent weights (official `recurrent_weight_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RecurrentWeightInit {
    /// All zero (the official default).
    #[default]
    Zeros,
    /// `U(±1/sqrt(H))`.
    Standard,
}

/// The mLSTM layer of the NeurIPS model (official `mLSTMLayerConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct MlstmLayerConfig {
    /// Heads of the mLSTM cell; must divide the inner dimension.
    #[config(default = 4)]
    pub num_heads: usize,
    /// Causal convolution on the q/k path (at least 1).
    #[config(default = 4)]
    pub conv1d_kernel_size: usize,
    /// Block size of the head-wise q/k/v projections; must divide the inner dimension.
    #[config(default = 4)]
    pub qkv_proj_blocksize: usize,
    /// Up-projection factor: inner dim = `round_up_dim(proj_factor, E, 64)`.
    #[config(default = 2.0)]
    pub proj_factor: f64,
    /// Chunk size of the chunkwise form used by `forward` (results do not depend on it
    /// beyond float rounding).
    #[config(default = 64)]
    pub chunk_size: usize,
}

/// The sLSTM layer of the NeurIPS model (official `sLSTMLayerConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct SlstmLayerConfig {
    /// Heads; must divide the embedding dimension.
    #[config(default = 4)]
    pub num_heads: usize,
    /// Causal convolution on the i/f path; 0 = none.
    #[config(default = 4)]
    pub conv1d_kernel_size: usize,
    #[config(default = "SlstmBiasInit::PowerlawBlockdependent")]
    pub bias_init: SlstmBiasInit,
    #[config(default = "RecurrentWeightInit::Zeros")]
    pub recurrent_weight_init: RecurrentWeightInit,
}

/// The gated feed-forward of the sLSTM block (official `FeedForwardConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct FeedForwardConfig {
    /// Up dim = `round_up_dim(proj_factor, E, 64)`.
    #[config(default = 1.3)]
    pub proj_factor: f64,
    #[config(default = "FeedForwardActivation::Gelu")]
    pub act_fn: FeedForwardActivation,
}

/// The NeurIPS xLSTM language model (official `xLSTMLMModelConfig` + block configs).
#[derive(Config, Debug, PartialEq)]
pub struct XlstmLmConfig {
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub num_blocks: usize,
    /// Indices of the sLSTM blocks (the rest are mLSTM blocks): `xLSTM[7:1]` with 8 blocks is
    /// e.g. `[3]`.
    #[config(default = "Vec::new()")]
    pub slstm_at: Vec<usize>,
    /// Share the embedding matrix with the output head.
    #[config(default = false)]
    pub tie_weights: bool,
    /// LayerNorm after the last block.
    #[config(default = true)]
    pub add_post_blocks_norm: bool,
    /// Biases in the projections.
    #[config(default = false)]
    pub bias: bool,
    /// Up-projections are rounded up to a multiple of this.
    #[config(default = 64)]
    pub round_proj_up_to_multiple_of: usize,
    #[config(default = "MlstmLayerConfig::new()")]
    pub mlstm: MlstmLayerConfig,
    #[config(default = "SlstmLayerConfig::new()")]
    pub slstm: SlstmLayerConfig,
    #[config(default = "FeedForwardConfig::new()")]
    pub feedforward: FeedForwardConfig,
}

impl XlstmLmConfig {
    /// Inner dimension of the mLSTM layers.
    pub fn mlstm_inner_dim(&self) -> usize {
        round_up_dim(
            self.mlstm.proj_factor,
            self.embedding_dim,
            self.round_proj_up_to_multiple_of,
        )
    }

    /// Hidden dimension of the sLSTM blocks' feed-forward.
    pub fn ffn_up_dim(&self) -> usize {
        round_up_dim(
            self.feedforward.proj_factor,
            self.embedding_dim,
            self.round_proj_up_to_multiple_of,
        )
    }

    /// Whether block `i` is an sLSTM block.
    pub fn is_slstm(&self, i: usize) -> bool {
        self.slstm_at.contains(&i)
    }

    /// Checks every constraint; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = self.embedding_dim;
        ConfigError::ensure(self.vocab_size > 0, "vocab_size", "must be at least 1")?;
        ConfigError::ensure(e > 0, "embedding_dim", "must be at least 1")?;
        ConfigError::ensure(self.num_blocks > 0, "num_blocks", "must be at least 1")?;
        ConfigError::ensure(
            self.round_proj_up_to_multiple_of > 0,
            "round_proj_up_to_multiple_of",
            "must be at least 1",
        )?;
        for &i in &self.slstm_at {
            ConfigError::ensure(
                i < self.num_blocks,
                "slstm_at",
                format!(
                    "block index {i} is not below num_blocks = {}",
                    self.num_blocks
                ),
            )?;
        }
        if self.slstm_at.len() < self.num_blocks {
            let inner = self.mlstm_inner_dim();
            let m = &self.mlstm;
            ConfigError::ensure(m.num_heads > 0, "mlstm.num_heads", "must be at least 1")?;
            ConfigError::ensure(
                inner.is_multiple_of(m.num_heads),
                "mlstm.num_heads",
                format!("must divide the inner dimension {inner}"),
            )?;
            ConfigError::ensure(
                m.qkv_proj_blocksize > 0 && inner.is_multiple_of(m.qkv_proj_blocksize),
                "mlstm.qkv_proj_blocksize",
                format!("must divide the inner dimension {inner}"),
            )?;
            ConfigError::ensure(
                m.conv1d_kernel_size > 0,
                "mlstm.conv1d_kernel_size",
                "must be at least 1",
            )?;
            ConfigError::ensure(m.chunk_size > 0, "mlstm.chunk_size", "must be at least 1")?;
        }
        if !self.slstm_at.is_empty() {
            let s = &self.slstm;
            ConfigError::ensure(
                s.num_heads > 0 && e.is_multiple_of(s.num_heads),
                "slstm.num_heads",
                format!("must divide embedding_dim = {e}"),
            )?;
            ConfigError::ensure(
                self.feedforward.proj_factor > 0.0,
                "feedforward.proj_factor",
                "must be positive",
            )?;
        }
        Ok(())
    }
}
