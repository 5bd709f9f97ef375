//! The gate functions on one f32, for the CPU loops (`slstm/cpu.rs`, `mlstm/cpu.rs`); the same
//! formulas as the tensor-op reference of `xlstm-gating`.

/// `log σ(x)` without overflow: `min(x, 0) - ln(1 + e^{-|x|})`.
pub(crate) fn log_sigmoid(x: f32) -> f32 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// `σ(x)`.
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
