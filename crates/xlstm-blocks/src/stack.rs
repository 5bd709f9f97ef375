//! The residual block stack (official `xLSTMBlockStack`): blocks in order, post-blocks norm.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use xlstm_kernels::XlstmBackend;

use crate::block::{BlockState, XlstmBlock};
use crate::checkpoint::{
    join, load_module, CheckpointError, OfficialParams, ParamTensor, TensorMap,
};
use crate::components::{LayerNorm, NormWeight};
use crate::{ModelError, Padding, XlstmLmConfig};

/// The state of every block.
#[derive(Debug, Clone)]
pub struct StackState<B: Backend> {
    pub blocks: Vec<BlockState<B>>,
}

impl<B: Backend> StackState<B> {
    /// Detach from the autodiff graph (truncated BPTT).
    pub fn detach(self) -> Self {
        Self {
            blocks: self.blocks.into_iter().map(BlockState::detach).collect(),
        }
    }
}

#[derive(Module, Debug)]
pub struct XlstmBlockStack<B: Backend> {
    /// Official `blocks.{i}`.
    pub blocks: Vec<XlstmBlock<B>>,
    /// Official `post_blocks_norm`.
    pub post_blocks_norm: Option<LayerNorm<B>>,
}

impl<B: Backend> XlstmBlockStack<B> {
    pub fn new(config: &XlstmLmConfig, device: &B::Device) -> Self {
        Self {
            blocks: (0..config.num_blocks)
                .map(|i| XlstmBlock::new(config, i, device))
                .collect(),
            post_blocks_norm: config.add_post_blocks_norm.then(|| {
                LayerNorm::new(
                    config.embedding_dim,
                    NormWeight::Offset,
                    false,
                    1e-5,
                    device,
                )
            }),
        }
    }

    pub fn initial_state(&self, batch: usize) -> StackState<B> {
        StackState {
            blocks: self.blocks.iter().map(|b| b.initial_state(batch)).collect(),
        }
    }

    fn norm<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.post_blocks_norm {
            Some(n) => n.forward(x),
            None => x,
        }
    }

    fn split_state(
        &self,
        state: Option<StackState<B>>,
    ) -> Result<Vec<Option<BlockState<B>>>, ModelError> {
        match state {
            None => Ok(self.blocks.iter().map(|_| None).collect()),
            Some(s) if s.blocks.len() == self.blocks.len() => {
                Ok(s.blocks.into_iter().map(Some).collect())
            }
            Some(s) => Err(ModelError::input(
                "state",
                format!(
                    "{} block states for {} blocks",
                    s.blocks.len(),
                    self.blocks.len()
                ),
            )),
        }
    }
}

impl<B: XlstmBackend> XlstmBlockStack<B> {
    /// `x [B, S, E]` → `[B, S, E]` and the stack state.
    pub fn forward(
        &self,
        mut x: Tensor<B, 3>,
        state: Option<StackState<B>>,
        padding: Option<&Padding<B>>,
    ) -> Result<(Tensor<B, 3>, StackState<B>), ModelError> {
        let mut states = Vec::with_capacity(self.blocks.len());
        for (block, s) in self.blocks.iter().zip(self.split_state(state)?) {
            let (y, s) = block.forward(x, s, padding)?;
            x = y;
            states.push(s);
        }
        Ok((self.norm(x), StackState { blocks: states }))
    }

    /// One token `x [B, E]` → `[B, E]` and the stack state.
    pub fn step(
        &self,
        mut x: Tensor<B, 2>,
        state: Option<StackState<B>>,
    ) -> Result<(Tensor<B, 2>, StackState<B>), ModelError> {
        let mut states = Vec::with_capacity(self.blocks.len());
        for (block, s) in self.blocks.iter().zip(self.split_state(state)?) {
            let (y, s) = block.step(x, s)?;
            x = y;
            states.push(s);
        }
        Ok((self.norm(x), StackState { blocks: states }))
    }
}

impl<B: Backend> OfficialParams<B> for XlstmBlockStack<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        for (i, b) in self.blocks.iter().enumerate() {
            b.visit_official(&join(prefix, &format!("blocks.{i}")), out);
        }
        if let Some(n) = &self.post_blocks_norm {
            n.visit_official(&join(prefix, "post_blocks_norm"), out);
        }
    }

    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        self.blocks = self
            .blocks
            .into_iter()
            .enumerate()
            .map(|(i, b)| b.load_official(&join(prefix, &format!("blocks.{i}")), src))
            .collect::<Result<_, _>>()?;
        self.post_blocks_norm = load_module(
            self.post_blocks_norm,
            &join(prefix, "post_blocks_norm"),
            src,
        )?;
        Ok(self)
    }
}
