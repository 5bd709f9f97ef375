//! The two xLSTM cells (Beck, Pöppel et al., 2024), generic over any burn backend.
//!
//! - [`mlstm`]: matrix memory with covariance update. One function in three schedules that
//!   agree: [`mlstm::parallel`] (quadratic, one stabilised gate matrix),
//!   [`mlstm::chunkwise`] (linear in the sequence length: chunk-boundary states computed
//!   recurrently, outputs inside each chunk in parallel) and [`mlstm::step`] (one token).
//! - [`slstm`]: scalar memory with per-head block-diagonal recurrent weights (memory mixing):
//!   [`slstm::sequence`] and [`slstm::step`].
//!
//! Every function takes an optional initial state and returns the final state, so a sequence
//! can be processed in pieces. Shapes are checked up front and reported as [`CellError`].
//! `docs/equations.md` lists the equations with the paper's numbering.

mod error;
pub mod mlstm;
pub mod slstm;

pub use error::CellError;
