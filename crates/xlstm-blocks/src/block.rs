//! The residual xLSTM block (official `xlstm/blocks/xlstm_block.py`):
//! `x + layer(LN(x))`, then for sLSTM blocks `x + FFN(LN(x))`.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use xlstm_kernels::XlstmBackend;

use crate::checkpoint::{
    join, load_module, CheckpointError, OfficialParams, ParamTensor, TensorMap,
};
use crate::components::init::{small_init, wang_init};
use crate::components::{GatedFeedForward, LayerNorm, NormWeight};
use crate::mlstm::{MlstmLayer, MlstmLayerState};
use crate::slstm::{SlstmLayer, SlstmLayerState};
use crate::{ModelError, Padding, XlstmLmConfig};

/// The sequence-mixing layer of a block (the size difference of the variants is a few
/// tensor handles, not worth a box).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum XlstmLayer<B: Backend> {
    Mlstm(MlstmLayer<B>),
    Slstm(SlstmLayer<B>),
}

/// The state of one block (the state of its layer).
#[derive(Debug, Clone)]
pub enum BlockState<B: Backend> {
    Mlstm(MlstmLayerState<B>),
    Slstm(SlstmLayerState<B>),
}

impl<B: Backend> BlockState<B> {
    pub fn detach(self) -> Self {
        match self {
            Self::Mlstm(s) => Self::Mlstm(s.detach()),
            Self::Slstm(s) => Self::Slstm(s.detach()),
        }
    }
}

/// An mLSTM block (pre-LN + mLSTM layer) or an sLSTM block (pre-LN + sLSTM layer, then
/// pre-LN + gated FFN).
#[derive(Module, Debug)]
pub struct XlstmBlock<B: Backend> {
    /// Official `xlstm_norm`.
    pub xlstm_norm: LayerNorm<B>,
    /// Official `xlstm`.
    pub xlstm: XlstmLayer<B>,
    /// Official `ffn_norm` (sLSTM blocks).
    pub ffn_norm: Option<LayerNorm<B>>,
    /// Official `ffn` (sLSTM blocks).
    pub ffn: Option<GatedFeedForward<B>>,
}

impl<B: Backend> XlstmBlock<B> {
    /// Block `block_idx` of the stack `config`, officially initialised.
    pub fn new(config: &XlstmLmConfig, block_idx: usize, device: &B::Device) -> Self {
        let e = config.embedding_dim;
        let norm = || LayerNorm::new(e, NormWeight::Offset, false, 1e-5, device);
        if config.is_slstm(block_idx) {
            Self {
                xlstm_norm: norm(),
                xlstm: XlstmLayer::Slstm(SlstmLayer::new(config, block_idx, device)),
                ffn_norm: Some(norm()),
                ffn: Some(GatedFeedForward::new(
                    e,
                    config.ffn_up_dim(),
                    config.bias,
                    config.feedforward.act_fn,
                    &small_init(e),
                    &wang_init(e, config.num_blocks),
                    device,
                )),
            }
        } else {
            Self {
                xlstm_norm: norm(),
                xlstm: XlstmLayer::Mlstm(MlstmLayer::new(config, device)),
                ffn_norm: None,
                ffn: None,
            }
        }
    }

    /// The state before any token.
    pub fn initial_state(&self, batch: usize) -> BlockState<B> {
        match &self.xlstm {
            XlstmLayer::Mlstm(l) => BlockState::Mlstm(l.initial_state(batch)),
            XlstmLayer::Slstm(l) => BlockState::Slstm(l.initial_state(batch)),
        }
    }
}

fn state_mismatch() -> ModelError {
    ModelError::input("state", "an mLSTM block got an sLSTM state or vice versa")
}

impl<B: XlstmBackend> XlstmBlock<B> {
    fn ffn<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match (&self.ffn_norm, &self.ffn) {
            (Some(norm), Some(ffn)) => {
                let dims = x.dims();
                let e = dims[D - 1];
                let n = x.shape().num_elements() / e;
                let y = ffn.forward(norm.forward(x.clone()).reshape([1, n, e]));
                x + y.reshape(dims)
            }
            _ => x,
        }
    }

    /// `x [B, S, E]` → `[B, S, E]` and the block state.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        state: Option<BlockState<B>>,
        padding: Option<&Padding<B>>,
    ) -> Result<(Tensor<B, 3>, BlockState<B>), ModelError> {
        let xn = self.xlstm_norm.forward(x.clone());
        let (y, state) = match (&self.xlstm, state) {
            (XlstmLayer::Mlstm(l), None) => {
                let (y, s) = l.forward(xn, None, padding)?;
                (y, BlockState::Mlstm(s))
            }
            (XlstmLayer::Mlstm(l), Some(BlockState::Mlstm(s))) => {
                let (y, s) = l.forward(xn, Some(s), padding)?;
                (y, BlockState::Mlstm(s))
            }
            (XlstmLayer::Slstm(l), None) => {
                let (y, s) = l.forward(xn, None, padding)?;
                (y, BlockState::Slstm(s))
            }
            (XlstmLayer::Slstm(l), Some(BlockState::Slstm(s))) => {
                let (y, s) = l.forward(xn, Some(s), padding)?;
                (y, BlockState::Slstm(s))
            }
            _ => return Err(state_mismatch()),
        };
        Ok((self.ffn(x + y), state))
    }

    /// One token: `x [B, E]` → `[B, E]` and the block state.
    pub fn step(
        &self,
        x: Tensor<B, 2>,
        state: Option<BlockState<B>>,
    ) -> Result<(Tensor<B, 2>, BlockState<B>), ModelError> {
        let xn = self.xlstm_norm.forward(x.clone());
        let (y, state) = match (&self.xlstm, state) {
            (XlstmLayer::Mlstm(l), None) => {
                let (y, s) = l.step(xn, None)?;
                (y, BlockState::Mlstm(s))
            }
            (XlstmLayer::Mlstm(l), Some(BlockState::Mlstm(s))) => {
                let (y, s) = l.step(xn, Some(s))?;
                (y, BlockState::Mlstm(s))
            }
            (XlstmLayer::Slstm(l), None) => {
                let (y, s) = l.step(xn, None)?;
                (y, BlockState::Slstm(s))
            }
            (XlstmLayer::Slstm(l), Some(BlockState::Slstm(s))) => {
                let (y, s) = l.step(xn, Some(s))?;
                (y, BlockState::Slstm(s))
            }
            _ => return Err(state_mismatch()),
        };
        Ok((self.ffn(x + y), state))
    }
}

impl<B: Backend> OfficialParams<B> for XlstmBlock<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        let j = |n| join(prefix, n);
        self.xlstm_norm.visit_official(&j("xlstm_norm"), out);
        match &self.xlstm {
            XlstmLayer::Mlstm(l) => l.visit_official(&j("xlstm"), out),
            XlstmLayer::Slstm(l) => l.visit_official(&j("xlstm"), out),
        }
        if let Some(n) = &self.ffn_norm {
            n.visit_official(&j("ffn_norm"), out);
        }
        if let Some(f) = &self.ffn {
            f.visit_official(&j("ffn"), out);
        }
    }

    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        let j = |n| join(prefix, n);
        self.xlstm_norm = self.xlstm_norm.load_official(&j("xlstm_norm"), src)?;
        self.xlstm = match self.xlstm {
            XlstmLayer::Mlstm(l) => XlstmLayer::Mlstm(l.load_official(&j("xlstm"), src)?),
            XlstmLayer::Slstm(l) => XlstmLayer::Slstm(l.load_official(&j("xlstm"), src)?),
        };
        self.ffn_norm = load_module(self.ffn_norm, &j("ffn_norm"), src)?;
        self.ffn = load_module(self.ffn, &j("ffn"), src)?;
        Ok(self)
    }
}
