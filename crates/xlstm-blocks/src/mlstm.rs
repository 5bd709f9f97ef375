//! The mLSTM layer of the NeurIPS xLSTM (official `xlstm/blocks/mlstm/layer.py` + `cell.py`).

use burn::module::{Initializer, Module, Param};
use burn::tensor::{activation::silu, backend::Backend, Tensor};
use xlstm_cells::mlstm::{MlstmInputs, MlstmState};
use xlstm_kernels::XlstmBackend;

use crate::checkpoint::{
    join, load_param, visit_param, CheckpointError, OfficialParams, ParamTensor, TensorMap,
};
use crate::components::init::{linspace, param, small_init, wang_init};
use crate::components::{CausalConv1d, Linear, LinearHeadwise, MultiHeadLayerNorm, NormWeight};
use crate::{ModelError, Padding, XlstmLmConfig};

/// Input-gate pre-activation that adds nothing to the memory (padding).
pub(crate) const KEEP_I_PREACT: f64 = xlstm_gating::M_EMPTY;
/// Forget-gate pre-activation with `log σ = 0` (padding keeps the memory as it is).
pub(crate) const KEEP_F_PREACT: f64 = 1.0e4;

/// The state of an mLSTM layer: the convolution's last inputs and the cell memory.
#[derive(Debug, Clone)]
pub struct MlstmLayerState<B: Backend> {
    /// `[B, K-1, I]`.
    pub conv: Tensor<B, 3>,
    /// `C [B, NH, DH, DH]`, `n [B, NH, DH]`, `m [B, NH]`.
    pub cell: MlstmState<B>,
}

impl<B: Backend> MlstmLayerState<B> {
    pub fn detach(self) -> Self {
        Self {
            conv: self.conv.detach(),
            cell: self.cell.detach(),
        }
    }
}

/// mLSTM layer: up-projection ×2 into an mLSTM branch and an output-gate branch `z`;
/// causal conv + SiLU on the q/k path; head-wise q/k/v; gates from `[q, k, v]`; the mLSTM
/// cell; per-head layer norm; learnable skip; SiLU output gate; down-projection.
#[derive(Module, Debug)]
pub struct MlstmLayer<B: Backend> {
    /// `[2·I, E]`: `x_mlstm` then `z`.
    pub proj_up: Linear<B>,
    /// Head-wise `[I/bs, bs, bs]`.
    pub q_proj: LinearHeadwise<B>,
    pub k_proj: LinearHeadwise<B>,
    pub v_proj: LinearHeadwise<B>,
    /// Official name `conv1d.conv`.
    pub conv1d: CausalConv1d<B>,
    /// Official `mlstm_cell.igate`: `[NH, 3·I]` + bias.
    pub igate: Linear<B>,
    /// Official `mlstm_cell.fgate`: `[NH, 3·I]` + bias.
    pub fgate: Linear<B>,
    /// Official `mlstm_cell.outnorm` (weight offset `1 + w`).
    pub outnorm: MultiHeadLayerNorm<B>,
    /// `[I]`.
    pub learnable_skip: Param<Tensor<B, 1>>,
    /// `[E, I]`.
    pub proj_down: Linear<B>,
    pub num_heads: usize,
    pub chunk_size: usize,
}

impl<B: Backend> MlstmLayer<B> {
    /// The official initialisation (`mLSTMLayer.reset_parameters`).
    pub fn new(config: &XlstmLmConfig, device: &B::Device) -> Self {
        let e = config.embedding_dim;
        let inner = config.mlstm_inner_dim();
        let m = &config.mlstm;
        let bias = config.bias;
        let heads = inner / m.qkv_proj_blocksize;
        let qkv = || LinearHeadwise::new(inner, heads, bias, &small_init(e), device);
        let gate = |b: Tensor<B, 1>| {
            let mut g = Linear::new(3 * inner, m.num_heads, true, &Initializer::Zeros, device);
            g.bias = Some(Param::from_tensor(b));
            g
        };
        let f_bias = Tensor::from_floats(linspace(3.0, 6.0, m.num_heads).as_slice(), device);
        let i_bias = Tensor::random(
            [m.num_heads],
            burn::tensor::Distribution::Normal(0.0, 0.1),
            device,
        );
        Self {
            proj_up: Linear::new(e, 2 * inner, bias, &small_init(e), device),
            q_proj: qkv(),
            k_proj: qkv(),
            v_proj: qkv(),
            conv1d: CausalConv1d::new(inner, m.conv1d_kernel_size, true, device),
            igate: gate(i_bias),
            fgate: gate(f_bias),
            outnorm: MultiHeadLayerNorm::new(inner, NormWeight::Offset, false, 1e-5, device),
            learnable_skip: param(&Initializer::Ones, [inner], device),
            proj_down: Linear::new(inner, e, bias, &wang_init(e, config.num_blocks), device),
            num_heads: m.num_heads,
            chunk_size: m.chunk_size,
        }
    }

    fn inner_dim(&self) -> usize {
        self.learnable_skip.dims()[0]
    }

    /// The state before any token: zero convolution inputs, an empty memory (what the
    /// official parallel form starts from).
    pub fn initial_state(&self, batch: usize) -> MlstmLayerState<B> {
        let dh = self.inner_dim() / self.num_heads;
        MlstmLayerState {
            conv: self.conv1d.zero_state(batch),
            cell: MlstmState::empty(batch, self.num_heads, dh, dh, &self.learnable_skip.device()),
        }
    }
}

impl<B: XlstmBackend> MlstmLayer<B> {
    /// Everything up to the cell: returns `(x_conv_act, z, q, k, v, i, f)` with the branch
    /// tensors `[B, S, I]` and gates `[B, S, NH]`, plus the new conv state.
    #[allow(clippy::type_complexity)]
    fn pre_cell(
        &self,
        x: Tensor<B, 3>,
        conv_state: Option<Tensor<B, 3>>,
        padding: Option<&Padding<B>>,
    ) -> ([Tensor<B, 3>; 7], Tensor<B, 3>) {
        let inner = self.inner_dim();
        let up = self.proj_up.forward(x); // [B, S, 2I]
        let x_mlstm = up.clone().narrow(2, 0, inner);
        let z = up.narrow(2, inner, inner);
        let (conv, conv_state) = self.conv1d.forward(x_mlstm.clone(), conv_state, padding);
        let conv_act = silu(conv);
        let q = self.q_proj.forward(conv_act.clone());
        let k = self.k_proj.forward(conv_act.clone());
        let v = self.v_proj.forward(x_mlstm);
        // The gates read `[q, k, v]` ([B, S, 3I], official `torch.cat`), taken part by part.
        let gate_in = [q.clone(), k.clone(), v.clone()];
        let i = self.igate.forward_concat(&gate_in);
        let f = self.fgate.forward_concat(&gate_in);
        ([conv_act, z, q, k, v, i, f], conv_state)
    }

    /// `h [B, S, NH, DH]` → output `[B, S, E]`.
    fn post_cell(&self, h: Tensor<B, 4>, conv_act: Tensor<B, 3>, z: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.outnorm.forward(h); // [B, S, I]
        let h = h + conv_act * self.learnable_skip.val().unsqueeze();
        self.proj_down.forward(h * silu(z))
    }

    /// `x [B, S, E]` → `y [B, S, E]` and the state after the last real token.
    /// `state = None` starts from [`Self::initial_state`]; chunkwise form over the sequence.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        state: Option<MlstmLayerState<B>>,
        padding: Option<&Padding<B>>,
    ) -> Result<(Tensor<B, 3>, MlstmLayerState<B>), ModelError> {
        let [b, s, _] = x.dims();
        let state = state.unwrap_or_else(|| self.initial_state(b));
        self.conv1d.check_state(&state.conv, b)?;
        let ([conv_act, z, q, k, v, i, f], conv) = self.pre_cell(x, Some(state.conv), padding);
        let nh = self.num_heads;
        let heads = |t: Tensor<B, 3>| {
            let d = t.dims()[2] / nh;
            t.reshape([b, s, nh, d]).swap_dims(1, 2) // [B, NH, S, DH]
        };
        let mut i_preact = i.swap_dims(1, 2); // [B, NH, S]
        let mut f_preact = f.swap_dims(1, 2);
        if let Some(p) = padding {
            let pad = p
                .valid()
                .bool_not()
                .unsqueeze_dim::<3>(1)
                .expand([b, nh, s]);
            i_preact = i_preact.mask_fill(pad.clone(), KEEP_I_PREACT);
            f_preact = f_preact.mask_fill(pad, KEEP_F_PREACT);
        }
        let inputs = MlstmInputs {
            q: heads(q),
            k: heads(k),
            v: heads(v),
            i_preact,
            f_preact,
        };
        let (h, cell) = B::mlstm_chunkwise(&inputs, Some(state.cell), self.chunk_size)?;
        let y = self.post_cell(h.swap_dims(1, 2), conv_act, z);
        Ok((y, MlstmLayerState { conv, cell }))
    }

    /// One token: `x [B, E]` → `y [B, E]` and the new state (recurrent form).
    pub fn step(
        &self,
        x: Tensor<B, 2>,
        state: Option<MlstmLayerState<B>>,
    ) -> Result<(Tensor<B, 2>, MlstmLayerState<B>), ModelError> {
        let [b, e] = x.dims();
        let state = state.unwrap_or_else(|| self.initial_state(b));
        self.conv1d.check_state(&state.conv, b)?;
        let ([conv_act, z, q, k, v, i, f], conv) =
            self.pre_cell(x.reshape([b, 1, e]), Some(state.conv), None);
        let nh = self.num_heads;
        let heads = |t: Tensor<B, 3>| {
            let d = t.dims()[2] / nh;
            t.reshape([b, nh, d])
        };
        let (h, cell) = B::mlstm_step(
            heads(q),
            heads(k),
            heads(v),
            i.reshape([b, nh]),
            f.reshape([b, nh]),
            Some(state.cell),
        )?;
        let dh = h.dims()[2];
        let y = self.post_cell(h.reshape([b, 1, nh, dh]), conv_act, z);
        let e = y.dims()[2];
        Ok((y.reshape([b, e]), MlstmLayerState { conv, cell }))
    }
}

impl<B: Backend> OfficialParams<B> for MlstmLayer<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        let j = |n| join(prefix, n);
        self.proj_up.visit_official(&j("proj_up"), out);
        self.q_proj.visit_official(&j("q_proj"), out);
        self.k_proj.visit_official(&j("k_proj"), out);
        self.v_proj.visit_official(&j("v_proj"), out);
        self.conv1d.visit_official(&j("conv1d.conv"), out);
        self.igate.visit_official(&j("mlstm_cell.igate"), out);
        self.fgate.visit_official(&j("mlstm_cell.fgate"), out);
        self.outnorm.visit_official(&j("mlstm_cell.outnorm"), out);
        visit_param(&self.learnable_skip, prefix, "learnable_skip", out);
        self.proj_down.visit_official(&j("proj_down"), out);
    }

    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        let j = |n| join(prefix, n);
        self.proj_up = self.proj_up.load_official(&j("proj_up"), src)?;
        self.q_proj = self.q_proj.load_official(&j("q_proj"), src)?;
        self.k_proj = self.k_proj.load_official(&j("k_proj"), src)?;
        self.v_proj = self.v_proj.load_official(&j("v_proj"), src)?;
        self.conv1d = self.conv1d.load_official(&j("conv1d.conv"), src)?;
        self.igate = self.igate.load_official(&j("mlstm_cell.igate"), src)?;
        self.fgate = self.fgate.load_official(&j("mlstm_cell.fgate"), src)?;
        self.outnorm = self.outnorm.load_official(&j("mlstm_cell.outnorm"), src)?;
        self.learnable_skip = load_param(self.learnable_skip, prefix, "learnable_skip", src)?;
        self.proj_down = self.proj_down.load_official(&j("proj_down"), src)?;
        Ok(self)
    }
}
