//! Golden vectors computed by the official xLSTM implementation (see `tests/golden/README.md`).
//!
//! A case is `NAME.json` (with a `kind`) beside `NAME.safetensors` (tensors prefixed `input.`,
//! `param.`, `output.`, `grad.`). [`cases`] reads every case of a directory; the conformance
//! test (`cargo test golden`) dispatches on the kind. The directory is the project's copy,
//! `tests/golden/`, unless the environment variable `XLSTM_GOLDEN_DIR` names another.

mod array;
mod backend;
mod case;

pub use array::{rel_l2, Array};
pub use backend::{TestAutodiffBackend, TestBackend};
pub use case::{cases, golden_dir, Case};
