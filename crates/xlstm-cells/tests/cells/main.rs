//! The cell tests, in one binary (one link of the backend code instead of one per file).
//!
//! - `schedules`: the three mLSTM schedules agree, state carry-over, sLSTM sequence = steps;
//! - `edges`: extreme gates and 16k tokens against float64 scalar loops;
//! - `errors`: bad shapes are errors naming the argument.

mod common;
mod edges;
mod errors;
mod reference;
mod schedules;
