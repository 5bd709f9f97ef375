//! Gating math of xLSTM (Beck, Pöppel et al., 2024), shared by every cell, block and kernel.
//!
//! Equation numbers refer to the paper (arXiv:2405.04517 v2); `docs/equations.md` in the
//! workspace lists each equation and where the official code differs from the paper.
//!
//! Every function here is pure and generic over the tensor rank `D`, so the same code serves a
//! single step (`[B, NH]`) and a whole sequence (`[B, NH, S]`).

mod forget;
mod normalizer;
mod soft_cap;
mod stabilizer;

pub use forget::log_forget_gate;
pub use normalizer::normalizer;
pub use soft_cap::soft_cap;
pub use stabilizer::{stabilized_gates, stabilizer_update, StabilizedGates};

/// The value of the stabiliser state `m` that stands for "no state at all" (an empty memory):
/// `exp(M_EMPTY + x)` underflows to exactly zero in f32/f64 for every reachable `x`, and the
/// value stays finite so that no `inf - inf` can appear.
pub const M_EMPTY: f64 = -1.0e30;
