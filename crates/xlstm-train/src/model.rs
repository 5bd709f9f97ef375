//! What the trainer needs from a model.

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor};

/// A causal language model: token ids in, next-token logits out.
pub trait LanguageModel<B: Backend>: Module<B> {
    /// Logits `[B, S, V]` for token ids `[B, S]`.
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;
}
