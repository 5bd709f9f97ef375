//! What the trainer needs from a model, and its implementation for the xLSTM LM.

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor};
use xlstm_blocks::lm::XlstmLm;
use xlstm_kernels::XlstmBackend;

/// A causal language model: token ids in, next-token logits out.
pub trait LanguageModel<B: Backend>: Module<B> {
    /// Logits `[B, S, V]` for token ids `[B, S]`; the error names the bad input.
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, String>;
}

impl<B: XlstmBackend> LanguageModel<B> for XlstmLm<B> {
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, String> {
        XlstmLm::logits(self, ids).map_err(|e| e.to_string())
    }
}
