use burn::module::Initializer;
use burn::module::Module;
use burn::nn::Embedding;
use burn::tensor::{backend::Backend, Int, Tensor};
use xlstm_cells::mlstm::MlstmState;
use xlstm_gating::soft_cap;
use xlstm_kernels::XlstmBackend;

use super::{LargeMlstmLayer, XlstmLargeConfig};
use crate::checkpoint::{
    join, load_module, CheckpointError, OfficialParams, ParamTensor, TensorMap,
};
use crate::components::init::{param, torch_default};
use crate::components::{Linear, RmsNorm, SwiGlu};
use crate::{ConfigError, ModelError, Padding};

/// The state of every block: one mLSTM memory each.
#[derive(Debug, Clone)]
pub struct LargeState<B: Backend> {
    pub blocks: Vec<MlstmState<B>>,
}

impl<B: Backend> LargeState<B> {
    pub fn detach(self) -> Self {
        Self {
            blocks: self.blocks.into_iter().map(MlstmState::detach).collect(),
        }
    }
}

/// `x + mLSTM(RMSNorm(x))`, then `x + SwiGLU(RMSNorm(x))`.
#[derive(Module, Debug)]
pub struct LargeBlock<B: Backend> {
    pub norm_mlstm: RmsNorm<B>,
    pub mlstm_layer: LargeMlstmLayer<B>,
    pub norm_ffn: RmsNorm<B>,
    pub ffn: SwiGlu<B>,
}

/// Official `backbone`: the blocks and the output RMSNorm.
#[derive(Module, Debug)]
pub struct LargeBlockStack<B: Backend> {
    pub blocks: Vec<LargeBlock<B>>,
    pub out_norm: Option<RmsNorm<B>>,
}

/// xLSTM-7B: embedding, backbone, head, soft-capped logits.
#[derive(Module, Debug)]
pub struct XlstmLarge<B: Backend> {
    /// `[V, E]`.
    pub embedding: Embedding<B>,
    pub backbone: LargeBlockStack<B>,
    /// `[V, E]`.
    pub lm_head: Linear<B>,
    #[module(skip)]
    pub output_logit_soft_cap: Option<f64>,
}

impl XlstmLargeConfig {
    /// A model with PyTorch's default initialisation (after `validate`).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<XlstmLarge<B>, ConfigError> {
        self.validate()?;
        let e = self.embedding_dim;
        let norm = || RmsNorm::new(e, self.use_bias, self.norm_eps, device);
        let fused = self.weight_mode == super::WeightMode::Fused;
        Ok(XlstmLarge {
            embedding: Embedding {
                weight: param(
                    &Initializer::Normal {
                        mean: 0.0,
                        std: 1.0,
                    },
                    [self.vocab_size, e],
                    device,
                ),
            },
            backbone: LargeBlockStack {
                blocks: (0..self.num_blocks)
                    .map(|_| LargeBlock {
                        norm_mlstm: norm(),
                        mlstm_layer: LargeMlstmLayer::new(self, device),
                        norm_ffn: norm(),
                        ffn: SwiGlu::new(e, self.ffn_dim(), self.use_bias, fused, device),
                    })
                    .collect(),
                out_norm: self.add_out_norm.then(norm),
            },
            lm_head: Linear::new(e, self.vocab_size, false, &torch_default(e), device),
            output_logit_soft_cap: self.output_logit_soft_cap,
        })
    }
}

impl<B: XlstmBackend> LargeBlock<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        state: Option<MlstmState<B>>,
        padding: Option<&Padding<B>>,
    ) -> Result<(Tensor<B, 3>, MlstmState<B>), ModelError> {
        let (y, state) =
            self.mlstm_layer
                .forward(self.norm_mlstm.forward(x.clone()), state, padding)?;
        let x = x + y;
        let x = x.clone() + self.ffn.forward(self.norm_ffn.forward(x));
        Ok((x, state))
    }

    pub fn step(
        &self,
        x: Tensor<B, 2>,
        state: Option<MlstmState<B>>,
    ) -> Result<(Tensor<B, 2>, MlstmState<B>), ModelError> {
        let (y, state) = self
            .mlstm_layer
            .step(self.norm_mlstm.forward(x.clone()), state)?;
        let x = x + y;
        let [b, e] = x.dims();
        let f = self
            .ffn
            .forward(self.norm_ffn.forward(x.clone()).reshape([b, 1, e]));
        Ok((x + f.reshape([b, e]), state))
    }
}

impl<B: Backend> XlstmLarge<B> {
    /// The official initial state (zeros) of every block.
    pub fn initial_state(&self, batch: usize) -> LargeState<B> {
        LargeState {
            blocks: self
                .backbone
                .blocks
                .iter()
                .map(|b| b.mlstm_layer.initial_state(batch))
                .collect(),
        }
    }

    fn split_state(
        &self,
        state: Option<LargeState<B>>,
    ) -> Result<Vec<Option<MlstmState<B>>>, ModelError> {
        let n = self.backbone.blocks.len();
        match state {
            None => Ok((0..n).map(|_| None).collect()),
            Some(s) if s.blocks.len() == n => Ok(s.blocks.into_iter().map(Some).collect()),
            Some(s) => Err(ModelError::input(
                "state",
                format!("{} block states for {n} blocks", s.blocks.len()),
            )),
        }
    }
}

impl<B: XlstmBackend> XlstmLarge<B> {
    fn head<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = match &self.backbone.out_norm {
            Some(n) => n.forward(x),
            None => x,
        };
        let logits = self.lm_head.forward(x);
        match self.output_logit_soft_cap {
            Some(c) => soft_cap(logits, c),
            None => logits,
        }
    }

    /// Soft-capped logits `[B, S, V]` of `ids [B, S]` from the zero state.
    pub fn logits(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        Ok(self.forward(ids, None, None)?.0)
    }

    /// `ids [B, S]` → logits `[B, S, V]` and the state after the last real token.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        state: Option<LargeState<B>>,
        padding: Option<&Padding<B>>,
    ) -> Result<(Tensor<B, 3>, LargeState<B>), ModelError> {
        let [b, s] = ids.dims();
        if b == 0 || s == 0 {
            return Err(ModelError::input(
                "ids",
                format!("empty batch {:?}", ids.dims()),
            ));
        }
        if let Some(p) = padding {
            p.check(b, s)?;
        }
        let mut x = self.embedding.forward(ids);
        let mut states = vec![];
        for (block, st) in self.backbone.blocks.iter().zip(self.split_state(state)?) {
            let (y, st) = block.forward(x, st, padding)?;
            x = y;
            states.push(st);
        }
        Ok((self.head(x), LargeState { blocks: states }))
    }

    /// One token per sequence `ids [B]` → logits `[B, V]` and the new state.
    pub fn step(
        &self,
        ids: Tensor<B, 1, Int>,
        state: Option<LargeState<B>>,
    ) -> Result<(Tensor<B, 2>, LargeState<B>), ModelError> {
        let b = ids.dims()[0];
        let x = self.embedding.forward(ids.reshape([b, 1]));
        let e = x.dims()[2];
        let mut x = x.reshape([b, e]);
        let mut states = vec![];
        for (block, st) in self.backbone.blocks.iter().zip(self.split_state(state)?) {
            let (y, st) = block.step(x, st)?;
            x = y;
            states.push(st);
        }
        Ok((self.head(x), LargeState { blocks: states }))
    }
}

impl<B: Backend> OfficialParams<B> for XlstmLarge<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        self.embedding
            .visit_official(&join(prefix, "embedding"), out);
        for (i, b) in self.backbone.blocks.iter().enumerate() {
            let p = join(prefix, &format!("backbone.blocks.{i}"));
            b.norm_mlstm.visit_official(&join(&p, "norm_mlstm"), out);
            b.mlstm_layer.visit_official(&join(&p, "mlstm_layer"), out);
            b.norm_ffn.visit_official(&join(&p, "norm_ffn"), out);
            b.ffn.visit_official(&join(&p, "ffn"), out);
        }
        if let Some(n) = &self.backbone.out_norm {
            n.visit_official(&join(prefix, "backbone.out_norm"), out);
        }
        self.lm_head.visit_official(&join(prefix, "lm_head"), out);
    }

    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        self.embedding = self
            .embedding
            .load_official(&join(prefix, "embedding"), src)?;
        self.backbone.blocks = self
            .backbone
            .blocks
            .into_iter()
            .enumerate()
            .map(|(i, mut b)| {
                let p = join(prefix, &format!("backbone.blocks.{i}"));
                b.norm_mlstm = b.norm_mlstm.load_official(&join(&p, "norm_mlstm"), src)?;
                b.mlstm_layer = b.mlstm_layer.load_official(&join(&p, "mlstm_layer"), src)?;
                b.norm_ffn = b.norm_ffn.load_official(&join(&p, "norm_ffn"), src)?;
                b.ffn = b.ffn.load_official(&join(&p, "ffn"), src)?;
                Ok(b)
            })
            .collect::<Result<_, CheckpointError>>()?;
        self.backbone.out_norm = load_module(
            self.backbone.out_norm,
            &join(prefix, "backbone.out_norm"),
            src,
        )?;
        self.lm_head = self.lm_head.load_official(&join(prefix, "lm_head"), src)?;
        Ok(self)
    }
}
