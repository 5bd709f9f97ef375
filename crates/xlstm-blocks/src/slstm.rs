//! The sLSTM layer of the NeurIPS xLSTM (official `xlstm/blocks/slstm/layer.py` + `cell.py`,
//! vanilla backend).

use burn::module::{Module, Param};
use burn::tensor::{activation::silu, backend::Backend, Distribution, Tensor, TensorData};
use xlstm_cells::slstm::{SlstmState, SlstmWeights};
use xlstm_kernels::XlstmBackend;

use crate::checkpoint::{
    join, load_param, load_swapped, visit_param, visit_swapped, CheckpointError, OfficialParams,
    ParamTensor, TensorMap,
};
use crate::components::init::{linspace, small_init, swap_last_two};
use crate::components::{CausalConv1d, LinearHeadwise, MultiHeadLayerNorm, NormWeight};
use crate::config::{RecurrentWeightInit, SlstmBiasInit};
use crate::mlstm::{KEEP_F_PREACT, KEEP_I_PREACT};
use crate::{ModelError, Padding, XlstmLmConfig};

/// The state of an sLSTM layer: the convolution's last inputs and the cell state.
#[derive(Debug, Clone)]
pub struct SlstmLayerState<B: Backend> {
    /// `[B, K-1, E]` (`None` without convolution).
    pub conv: Option<Tensor<B, 3>>,
    /// `h, c, n, m` each `[B, E]`.
    pub cell: SlstmState<B>,
}

impl<B: Backend> SlstmLayerState<B> {
    pub fn detach(self) -> Self {
        Self {
            conv: self.conv.map(|c| c.detach()),
            cell: self.cell.detach(),
        }
    }
}

/// sLSTM layer: optional causal conv + SiLU feeding the input and forget gates, head-wise
/// gate projections (z and o from the raw input), the sLSTM recurrence, per-head group norm.
///
/// Official quirk reproduced by the checkpoint names: the module the official code names
/// `fgate` computes the *input* gate pre-activation and `igate` the *forget* gate
/// (`i, f = self.fgate(x_conv), self.igate(x_conv)` in `sLSTMLayer.forward`).
#[derive(Module, Debug)]
pub struct SlstmLayer<B: Backend> {
    /// Official name `conv1d.conv`.
    pub conv1d: Option<CausalConv1d<B>>,
    /// Input-gate projection (official name `fgate`).
    pub input_gate: LinearHeadwise<B>,
    /// Forget-gate projection (official name `igate`).
    pub forget_gate: LinearHeadwise<B>,
    /// Official `zgate`.
    pub zgate: LinearHeadwise<B>,
    /// Official `ogate`.
    pub ogate: LinearHeadwise<B>,
    /// Official `slstm_cell._recurrent_kernel_` (`[NH, 4·DH, DH]`), stored swapped as the
    /// cells take it, `R [NH, DH, 4·DH]` (`SlstmWeights::r`); checkpoints see the official layout.
    pub recurrent_kernel: Param<Tensor<B, 3>>,
    /// Official `slstm_cell._bias_` `[4·NH·DH]` (gate, head, unit).
    pub bias: Param<Tensor<B, 1>>,
    /// Official `group_norm` (weight offset `1 + w`).
    pub group_norm: MultiHeadLayerNorm<B>,
    pub num_heads: usize,
}

impl<B: Backend> SlstmLayer<B> {
    /// The official initialisation for block `block_idx` of the stack.
    pub fn new(config: &XlstmLmConfig, block_idx: usize, device: &B::Device) -> Self {
        let e = config.embedding_dim;
        let s = &config.slstm;
        let nh = s.num_heads;
        let dh = e / nh;
        let proj = || LinearHeadwise::new(e, nh, false, &small_init(e), device);
        let recurrent_kernel = match s.recurrent_weight_init {
            RecurrentWeightInit::Zeros => Tensor::zeros([nh, dh, 4 * dh], device),
            RecurrentWeightInit::Standard => {
                let b = 1.0 / (e as f64).sqrt();
                let official =
                    Tensor::random([nh, 4 * dh, dh], Distribution::Uniform(-b, b), device);
                swap_last_two(official)
            }
        };
        Self {
            conv1d: (s.conv1d_kernel_size > 0)
                .then(|| CausalConv1d::new(e, s.conv1d_kernel_size, true, device)),
            input_gate: proj(),
            forget_gate: proj(),
            zgate: proj(),
            ogate: proj(),
            recurrent_kernel: Param::from_tensor(recurrent_kernel),
            bias: Param::from_tensor(initial_bias(
                s.bias_init,
                nh,
                dh,
                block_idx,
                config.num_blocks,
                device,
            )),
            group_norm: MultiHeadLayerNorm::new(e, NormWeight::Offset, false, 1e-5, device),
            num_heads: nh,
        }
    }

    fn hidden(&self) -> usize {
        self.bias.dims()[0] / 4
    }

    /// The official zero state.
    pub fn initial_state(&self, batch: usize) -> SlstmLayerState<B> {
        SlstmLayerState {
            conv: self.conv1d.as_ref().map(|c| c.zero_state(batch)),
            cell: SlstmState::zeros(batch, self.hidden(), &self.bias.device()),
        }
    }
}

/// The bias `[4·NH·DH]` (gate, head, unit) of [`SlstmBiasInit`].
fn initial_bias<B: Backend>(
    init: SlstmBiasInit,
    nh: usize,
    dh: usize,
    block_idx: usize,
    num_blocks: usize,
    device: &B::Device,
) -> Tensor<B, 1> {
    let h = nh * dh;
    let forget: Vec<f32> = match init {
        SlstmBiasInit::PowerlawBlockdependent => {
            let ratio = if num_blocks > 1 {
                block_idx as f64 / (num_blocks - 1) as f64
            } else {
                0.0
            };
            (0..dh)
                .map(|u| {
                    // torch: arange(DH) / (DH - 1), NaN-free only for DH > 1 (0/0 for DH = 1).
                    let x = if dh > 1 {
                        u as f64 / (dh - 1) as f64
                    } else {
                        0.0
                    };
                    (-(-5.0 + 12.0 * x.powf(0.3 + 1.3 * ratio))) as f32
                })
                .collect()
        }
        SlstmBiasInit::SmallInit => linspace(3.0, 6.0, dh),
        SlstmBiasInit::Zeros => vec![0.0; dh],
        SlstmBiasInit::Standard => {
            let b = 1.0 / (h as f64).sqrt();
            return Tensor::random([4 * h], Distribution::Uniform(-b, b), device);
        }
    };
    let mut values = vec![0.0f32; 4 * h];
    for head in 0..nh {
        values[h + head * dh..h + (head + 1) * dh].copy_from_slice(&forget);
    }
    Tensor::from_data(TensorData::new(values, [4 * h]), device)
}

impl<B: XlstmBackend> SlstmLayer<B> {
    /// `x [B, S, E]` → `y [B, S, E]` and the state after the last real token.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        state: Option<SlstmLayerState<B>>,
        padding: Option<&Padding<B>>,
    ) -> Result<(Tensor<B, 3>, SlstmLayerState<B>), ModelError> {
        let [b, s, e] = x.dims();
        let state = state.unwrap_or_else(|| self.initial_state(b));
        let (x_conv, conv) = match (&self.conv1d, state.conv) {
            (Some(c), conv_state) => {
                if let Some(cs) = &conv_state {
                    c.check_state(cs, b)?;
                }
                let (y, next) = c.forward(x.clone(), conv_state, padding);
                (silu(y), Some(next))
            }
            (None, _) => (x.clone(), None),
        };
        let mut i = self.input_gate.forward(x_conv.clone());
        let mut f = self.forget_gate.forward(x_conv);
        if let Some(p) = padding {
            let pad = p.valid().bool_not().unsqueeze_dim::<3>(2).expand([b, s, e]);
            i = i.mask_fill(pad.clone(), KEEP_I_PREACT);
            f = f.mask_fill(pad, KEEP_F_PREACT);
        }
        let wx = Tensor::cat(
            vec![i, f, self.zgate.forward(x.clone()), self.ogate.forward(x)],
            2,
        );
        let weights = SlstmWeights {
            r: self.recurrent_kernel.val(),
            b: self.bias.val(),
        };
        let initial = state.cell;
        let (h, mut cell) = B::slstm_sequence(wx, &weights, Some(initial.clone()))?;
        if let Some(p) = padding {
            // Forced gates keep c, n, m; h is the output at the last real token, and a
            // sequence with no real token keeps its whole state.
            cell.h = h.clone().gather(1, p.time_index(-1, 1, e)).reshape([b, e]);
            let empty = p.empty_rows().expand([b, e]);
            cell = SlstmState {
                h: cell.h.mask_where(empty.clone(), initial.h),
                c: cell.c.mask_where(empty.clone(), initial.c),
                n: cell.n.mask_where(empty.clone(), initial.n),
                m: cell.m.mask_where(empty, initial.m),
            };
        }
        let nh = self.num_heads;
        let y = self.group_norm.forward(h.reshape([b, s, nh, e / nh]));
        Ok((y, SlstmLayerState { conv, cell }))
    }

    /// One token: `x [B, E]` → `y [B, E]` and the new state.
    pub fn step(
        &self,
        x: Tensor<B, 2>,
        state: Option<SlstmLayerState<B>>,
    ) -> Result<(Tensor<B, 2>, SlstmLayerState<B>), ModelError> {
        let [b, e] = x.dims();
        let (y, state) = self.forward(x.reshape([b, 1, e]), state, None)?;
        Ok((y.reshape([b, e]), state))
    }
}

impl<B: Backend> OfficialParams<B> for SlstmLayer<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        let j = |n| join(prefix, n);
        if let Some(c) = &self.conv1d {
            c.visit_official(&j("conv1d.conv"), out);
        }
        self.input_gate.visit_official(&j("fgate"), out);
        self.forget_gate.visit_official(&j("igate"), out);
        self.zgate.visit_official(&j("zgate"), out);
        self.ogate.visit_official(&j("ogate"), out);
        visit_swapped(
            &self.recurrent_kernel,
            prefix,
            "slstm_cell._recurrent_kernel_",
            out,
        );
        visit_param(&self.bias, prefix, "slstm_cell._bias_", out);
        self.group_norm.visit_official(&j("group_norm"), out);
    }

    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        let j = |n| join(prefix, n);
        self.conv1d = crate::checkpoint::load_module(self.conv1d, &j("conv1d.conv"), src)?;
        self.input_gate = self.input_gate.load_official(&j("fgate"), src)?;
        self.forget_gate = self.forget_gate.load_official(&j("igate"), src)?;
        self.zgate = self.zgate.load_official(&j("zgate"), src)?;
        self.ogate = self.ogate.load_official(&j("ogate"), src)?;
        self.recurrent_kernel = load_swapped(
            self.recurrent_kernel,
            prefix,
            "slstm_cell._recurrent_kernel_",
            src,
        )?;
        self.bias = load_param(self.bias, prefix, "slstm_cell._bias_", src)?;
        self.group_norm = self.group_norm.load_official(&j("group_norm"), src)?;
        Ok(self)
    }
}
