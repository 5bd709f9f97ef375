//! The NeurIPS xLSTM language model (official `xLSTMLMModel`): embedding, block stack, head.

use burn::module::Module;
use burn::nn::Embedding;
use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor};
use xlstm_kernels::XlstmBackend;

use crate::checkpoint::{join, CheckpointError, OfficialParams, ParamTensor, TensorMap};
use crate::components::init::{param, small_init};
use crate::components::Linear;
use crate::stack::{StackState, XlstmBlockStack};
use crate::{ConfigError, ModelError, Padding, XlstmLmConfig};

#[derive(Module, Debug)]
pub struct XlstmLm<B: Backend> {
    /// Official `token_embedding` `[V, E]`.
    pub token_embedding: Embedding<B>,
    /// Official `xlstm_block_stack`.
    pub xlstm_block_stack: XlstmBlockStack<B>,
    /// Official `lm_head` `[V, E]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear<B>>,
}

impl XlstmLmConfig {
    /// A model with the official initialisation (after `validate`).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<XlstmLm<B>, ConfigError> {
        self.validate()?;
        let e = self.embedding_dim;
        Ok(XlstmLm {
            token_embedding: Embedding {
                weight: param(&small_init(e), [self.vocab_size, e], device),
            },
            xlstm_block_stack: XlstmBlockStack::new(self, device),
            lm_head: (!self.tie_weights)
                .then(|| Linear::new(e, self.vocab_size, false, &small_init(e), device)),
        })
    }
}

impl<B: Backend> XlstmLm<B> {
    pub fn initial_state(&self, batch: usize) -> StackState<B> {
        self.xlstm_block_stack.initial_state(batch)
    }

    fn check_ids(&self, ids: &Tensor<B, 2, Int>) -> Result<(), ModelError> {
        let [b, s] = ids.dims();
        if b == 0 || s == 0 {
            return Err(ModelError::input(
                "ids",
                format!("empty batch {:?}", ids.dims()),
            ));
        }
        Ok(())
    }
}

impl<B: XlstmBackend> XlstmLm<B> {
    /// `x [.., E]` → logits `[.., V]`; tied: `x · embeddingᵀ`.
    fn head<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lm_head {
            Some(h) => h.forward(x),
            None => {
                B::headwise_matmul(x, self.token_embedding.weight.val().transpose().unsqueeze())
            }
        }
    }

    /// Logits `[B, S, V]` of `ids [B, S]` from the empty state.
    pub fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        Ok(self.forward(ids, None, None)?.0)
    }

    /// `ids [B, S]` → logits `[B, S, V]` and the state after the last real token. A state
    /// returned here continues exactly with [`Self::step`] or another `forward`.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        state: Option<StackState<B>>,
        padding: Option<&Padding<B>>,
    ) -> Result<(Tensor<B, 3>, StackState<B>), ModelError> {
        self.check_ids(&ids)?;
        if let Some(p) = padding {
            let [b, s] = ids.dims();
            p.check(b, s)?;
        }
        let x = self.token_embedding.forward(ids);
        let (x, state) = self.xlstm_block_stack.forward(x, state, padding)?;
        Ok((self.head(x), state))
    }

    /// One token per sequence: `ids [B]` → logits `[B, V]` and the new state.
    pub fn step(
        &self,
        ids: Tensor<B, 1, Int>,
        state: Option<StackState<B>>,
    ) -> Result<(Tensor<B, 2>, StackState<B>), ModelError> {
        let b = ids.dims()[0];
        let x = self.token_embedding.forward(ids.reshape([b, 1]));
        let e = x.dims()[2];
        let (x, state) = self.xlstm_block_stack.step(x.reshape([b, e]), state)?;
        Ok((self.head(x), state))
    }
}

/// Mean cross-entropy of `logits [B, S, V]` against `targets [B, S]`, over the real tokens
/// of `padding` (all tokens when `None`). Returns `[1]`.
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    padding: Option<&Padding<B>>,
) -> Tensor<B, 1> {
    let [b, s, _] = logits.dims();
    let logp = log_softmax(logits, 2)
        .gather(2, targets.unsqueeze_dim(2))
        .reshape([b, s]);
    match padding {
        None => -logp.mean(),
        Some(p) => {
            let count = p.lengths().iter().sum::<usize>().max(1) as f64;
            -(logp.mask_fill(p.valid().bool_not(), 0.0).sum() / count)
        }
    }
}

impl<B: Backend> OfficialParams<B> for XlstmLm<B> {
    /// `lm_head.weight` is listed only when untied (a parameter of its own); see `state_dict`.
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        self.token_embedding
            .visit_official(&join(prefix, "token_embedding"), out);
        self.xlstm_block_stack
            .visit_official(&join(prefix, "xlstm_block_stack"), out);
        if let Some(h) = &self.lm_head {
            h.visit_official(&join(prefix, "lm_head"), out);
        }
    }

    /// Adds `lm_head.weight` (the embedding) when tied, as the official `state_dict` does.
    fn state_dict(&self) -> TensorMap {
        let mut map = TensorMap::from_module(self);
        if self.lm_head.is_none() {
            map.insert(
                "lm_head.weight",
                self.token_embedding
                    .weight
                    .val()
                    .into_data()
                    .convert::<f32>(),
            );
        }
        map
    }

    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        self.token_embedding = self
            .token_embedding
            .load_official(&join(prefix, "token_embedding"), src)?;
        self.xlstm_block_stack = self
            .xlstm_block_stack
            .load_official(&join(prefix, "xlstm_block_stack"), src)?;
        match self.lm_head {
            Some(h) => self.lm_head = Some(h.load_official(&join(prefix, "lm_head"), src)?),
            // Tied: the official state_dict repeats the embedding as lm_head.weight.
            None => {
                src.remove(&join(prefix, "lm_head.weight"));
            }
        }
        Ok(self)
    }
}
