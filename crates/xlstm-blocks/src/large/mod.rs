//! The xLSTM-7B architecture (official `xlstm/xlstm_large/model.py`, `xLSTMLarge`): mLSTM
//! blocks only, pre-RMSNorm residual blocks with a SwiGLU feed-forward, q/k at
//! `qk_dim_factor · E`, soft-capped gates and logits, no convolution.

mod config;
mod layer;
mod model;

pub use config::{WeightMode, XlstmLargeConfig};
pub use layer::LargeMlstmLayer;
pub use model::{LargeBlock, LargeBlockStack, LargeState, XlstmLarge};
