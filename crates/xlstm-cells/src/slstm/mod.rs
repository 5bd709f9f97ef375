//! The sLSTM cell: scalar memory with exponential gating and per-head block-diagonal
//! recurrent weights (memory mixing inside a head), paper eqs. 8–17.
//!
//! Layout: the input pre-activations `W x_t` arrive as `[B, S, 4·H]` with `H = NH·DH`,
//! ordered gate-major (i, f, z, o), then head, then unit, as in the official
//! `slstm_forward`; the bias has the same `[4·H]` layout; the recurrent weights are
//! `[NH, DH, 4·DH]` (`r[h, u, g·DH + j]` is the weight from unit `u` of `h_{t-1}` in head `h`
//! to gate `g`, unit `j` of the same head). Outputs are `[B, S, H]`.

mod state;
mod step;
mod weights;

pub use state::SlstmState;
pub use step::{sequence, step};
pub use weights::SlstmWeights;

/// The four gates, in the order of the pre-activation layout.
pub const GATES: usize = 4;
