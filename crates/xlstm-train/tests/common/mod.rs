//! A tiny stand-in language model for the loop tests: per-position embedding, layer norm and
//! two linear layers (no recurrence: the tests exercise the loop, not the model).
#![allow(dead_code)]

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{backend::Backend, Int, Tensor};
use xlstm_train::LanguageModel;

pub type B = burn::backend::NdArray<f32>;
pub type AB = burn::backend::Autodiff<B>;

/// Token id that makes the stand-in model produce infinite activations at its position.
pub const POISON: i64 = 7;

#[derive(Module, Debug)]
pub struct Tiny<B: Backend> {
    pub token_embedding: Embedding<B>,
    pub norm: LayerNorm<B>,
    pub proj: Linear<B>,
    pub head: Linear<B>,
}

impl<B: Backend> Tiny<B> {
    pub fn new(vocab: usize, width: usize, device: &B::Device) -> Self {
        Self {
            token_embedding: EmbeddingConfig::new(vocab, width).init(device),
            norm: LayerNormConfig::new(width).init(device),
            proj: LinearConfig::new(width, width).init(device),
            head: LinearConfig::new(width, vocab).init(device),
        }
    }
}

impl<B: Backend> LanguageModel<B> for Tiny<B> {
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, String> {
        let poison = ids.clone().equal_elem(POISON).float().unsqueeze_dim::<3>(2); // [B, S, 1]
        let x = self.token_embedding.forward(ids); // [B, S, D]
        let x = x / (poison.neg() + 1.0); // inf at POISON
        let x = self.norm.forward(x);
        let x = burn::tensor::activation::gelu(self.proj.forward(x));
        Ok(self.head.forward(x)) // [B, S, V]
    }
}

/// A fresh stand-in model for `vocab` tokens, initialised from `seed`.
/// (burn's ndarray seed is process-global, parameters are initialised lazily on first use,
/// and tests run in parallel: seed and materialise under one lock so that equal seeds give
/// equal models.)
pub fn tiny(vocab: usize, seed: u64) -> Tiny<AB> {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <AB as burn::tensor::backend::Backend>::seed(&device, seed);
    let model = Tiny::new(vocab.max(POISON as usize + 1), 16, &device);
    flat_params(&model);
    model
}

/// All float parameters flattened, in visiting order.
pub fn flat_params<B: Backend, M: Module<B>>(m: &M) -> Vec<Vec<f32>> {
    struct V(Vec<Vec<f32>>);
    impl<B: Backend> burn::module::ModuleVisitor<B> for V {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            self.0
                .push(p.val().into_data().convert::<f32>().to_vec().unwrap());
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}
