//! The mLSTM cell: matrix memory `C`, normaliser `n`, stabiliser `m` (paper eqs. 19–27).
//!
//! Layout (as in the official `xlstm` code): queries and keys `[B, NH, S, DQK]`, values
//! `[B, NH, S, DV]`, gate pre-activations `[B, NH, S]`, outputs `[B, NH, S, DV]`.
//! Keys are scaled by `1/sqrt(DQK)` inside the cell, and the state stores the scaled keys.
//!
//! The three schedules compute the same function:
//! - [`parallel`]: one `[S, S]` gate matrix per head, memory O(S²);
//! - [`chunkwise`]: chunk-boundary states computed recurrently, the inside of every chunk in
//!   parallel, memory O(S · chunk);
//! - [`step`]: one token from the state.

mod chunk;
mod inputs;
mod schedules;
mod state;
mod step;

pub use chunk::segment_sums;
pub use inputs::MlstmInputs;
pub use schedules::{chunkwise, parallel};
pub use state::MlstmState;
pub use step::{check_step, step};

/// The official normaliser epsilon (`eps` in `xlstm.blocks.mlstm.backends`).
pub const EPS: f64 = 1e-6;
