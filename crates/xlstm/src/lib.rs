//! xLSTM in Rust: one crate that re-exports the workspace.
//!
//! - [`gating`]: stabilised exponential gating math (`xlstm-gating`);
//! - [`cells`]: the mLSTM and sLSTM cells (`xlstm-cells`);
//! - [`kernels`]: the backend-extension traits with fused kernels (`xlstm-kernels`);
//! - [`blocks`]: layers, blocks, the LM and its checkpoints (`xlstm-blocks`);
//! - [`train`]: data, optimiser, schedule, clipping, the loop, checkpoints (`xlstm-train`).
//!
//! The binary `xlstm` (this crate's `src/main.rs`) trains, evaluates, generates and
//! benchmarks; cargo features pick the backends it is built with (`ndarray` by default,
//! `wgpu`, `cuda`, `metal`).

pub use xlstm_blocks as blocks;
pub use xlstm_cells as cells;
pub use xlstm_gating as gating;
pub use xlstm_kernels as kernels;
pub use xlstm_train as train;

pub use xlstm_blocks::{lm::XlstmLm, XlstmLmConfig};
