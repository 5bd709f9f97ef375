//! The xLSTM primitives as a backend extension.
//!
//! [`SlstmBackend`], [`MlstmBackend`] and [`DenseBackend`] have one method per fused primitive; their default
//! methods are the tensor-op reference of `xlstm-cells`, so every burn backend works. Backends
//! with a kernel (burn's cube backends: CUDA, wgpu/Vulkan/Metal) override them. Models are
//! written against [`XlstmBackend`] and never name a kernel.

pub mod dense;
pub mod mlstm;
mod scalar;
pub mod slstm;

pub use dense::DenseBackend;
pub use mlstm::MlstmBackend;
pub use slstm::SlstmBackend;

/// A backend with every xLSTM primitive (implemented for all backends that have them all).
pub trait XlstmBackend: SlstmBackend + MlstmBackend + DenseBackend {}

impl<B: SlstmBackend + MlstmBackend + DenseBackend> XlstmBackend for B {}
