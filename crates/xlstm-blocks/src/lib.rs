//! xLSTM models on burn, generic over the backend, matching the official `xlstm` package
//! module by module and loading its checkpoints.
//!
//! - [`components`]: causal depthwise conv with state, head-wise linear, norms, FFNs.
//! - NeurIPS xLSTM: [`mlstm::MlstmLayer`], [`slstm::SlstmLayer`], [`block::XlstmBlock`],
//!   [`stack::XlstmBlockStack`], [`lm::XlstmLm`] built from [`XlstmLmConfig`].
//! - xLSTM-7B architecture: [`large::XlstmLarge`] from [`large::XlstmLargeConfig`].
//! - [`checkpoint`]: official `state_dict` names, safetensors (single or sharded).
//!
//! Every level has `forward(x, state, padding) -> (y, state)` over a sequence and
//! `step(x, state) -> (y, state)` for one token. `docs/architecture.md` shows the tree and
//! the shapes.

pub mod block;
pub mod checkpoint;
pub mod components;
pub mod config;
mod error;
pub mod large;
pub mod lm;
pub mod mlstm;
mod padding;
pub mod slstm;
pub mod stack;

pub use config::{FeedForwardConfig, MlstmLayerConfig, SlstmLayerConfig, XlstmLmConfig};
pub use error::{ConfigError, ModelError};
pub use padding::Padding;
