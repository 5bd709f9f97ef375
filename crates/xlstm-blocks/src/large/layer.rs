use burn::module::Module;
use burn::tensor::{activation::sigmoid, backend::Backend, Tensor};
use xlstm_cells::mlstm::{MlstmInputs, MlstmState};
use xlstm_gating::soft_cap;
use xlstm_kernels::XlstmBackend;

use super::{WeightMode, XlstmLargeConfig};
use crate::checkpoint::{
    join, load_module, CheckpointError, OfficialParams, ParamTensor, TensorMap,
};
use crate::components::init::torch_default;
use crate::components::{Linear, MultiHeadLayerNorm, NormWeight};
use crate::mlstm::{KEEP_F_PREACT, KEEP_I_PREACT};
use crate::{ModelError, Padding};

/// The mLSTM layer of xLSTM-7B: projections straight from the input (no up-projection, no
/// conv), soft-capped gates, the mLSTM cell, per-head layer norm, sigmoid output gate,
/// output projection.
#[derive(Module, Debug)]
pub struct LargeMlstmLayer<B: Backend> {
    /// `single`: `[DQK·NH, E]` etc.
    pub q: Option<Linear<B>>,
    pub k: Option<Linear<B>>,
    pub v: Option<Linear<B>>,
    pub ogate_preact: Option<Linear<B>>,
    /// `single`: `[NH, E]` with bias.
    pub igate_preact: Option<Linear<B>>,
    pub fgate_preact: Option<Linear<B>>,
    /// `fused`: `[2·QK + 2·V, E]` (q, k, v, o).
    pub qkv_opreact: Option<Linear<B>>,
    /// `fused`: `[2·NH, E]` (i, f) with bias.
    pub ifgate_preact: Option<Linear<B>>,
    /// Official `multihead_norm` (weight used as is).
    pub multihead_norm: MultiHeadLayerNorm<B>,
    /// `[E, V]`.
    pub out_proj: Linear<B>,
    pub num_heads: usize,
    pub qk_dim: usize,
    pub v_dim: usize,
    pub chunk_size: usize,
    #[module(skip)]
    pub gate_soft_cap: Option<f64>,
}

impl<B: Backend> LargeMlstmLayer<B> {
    /// PyTorch's default initialisation (the official module defines no other).
    pub fn new(c: &XlstmLargeConfig, device: &B::Device) -> Self {
        let e = c.embedding_dim;
        let init = torch_default(e);
        let lin = |o, bias| Some(Linear::new(e, o, bias, &init, device));
        let (qk, v, nh) = (c.qk_dim(), c.v_dim(), c.num_heads);
        let single = c.weight_mode == WeightMode::Single;
        let pick = |on: bool, o, bias| if on { lin(o, bias) } else { None };
        Self {
            q: pick(single, qk, c.use_bias),
            k: pick(single, qk, c.use_bias),
            v: pick(single, v, c.use_bias),
            ogate_preact: pick(single, v, c.use_bias),
            igate_preact: pick(single, nh, true),
            fgate_preact: pick(single, nh, true),
            qkv_opreact: pick(!single, 2 * qk + 2 * v, c.use_bias),
            ifgate_preact: pick(!single, 2 * nh, true),
            multihead_norm: MultiHeadLayerNorm::new(
                v,
                NormWeight::Direct,
                c.use_bias,
                c.norm_eps,
                device,
            ),
            out_proj: Linear::new(v, e, c.use_bias, &torch_default(v), device),
            num_heads: nh,
            qk_dim: qk,
            v_dim: v,
            chunk_size: c.chunk_size,
            gate_soft_cap: c.gate_soft_cap,
        }
    }

    /// The official initial state: zeros.
    pub fn initial_state(&self, batch: usize) -> MlstmState<B> {
        let nh = self.num_heads;
        MlstmState::zeros(
            batch,
            nh,
            self.qk_dim / nh,
            self.v_dim / nh,
            &self.out_proj.weight.device(),
        )
    }

    fn cap<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.gate_soft_cap {
            Some(c) => soft_cap(x, c),
            None => x,
        }
    }
}

impl<B: XlstmBackend> LargeMlstmLayer<B> {
    /// `x [B, S, E]` → `q, k [B, S, QK]`, `v, o [B, S, V]`, `i, f [B, S, NH]` (capped).
    fn projections(&self, x: Tensor<B, 3>) -> [Tensor<B, 3>; 6] {
        let nh = self.num_heads;
        let p =
            |l: &Option<Linear<B>>, x: Tensor<B, 3>| l.as_ref().expect("weight mode").forward(x);
        if let Some(fused) = &self.qkv_opreact {
            let y = fused.forward(x.clone());
            let (qk, v) = (self.qk_dim, self.v_dim);
            let ifg = self.cap(p(&self.ifgate_preact, x));
            [
                y.clone().narrow(2, 0, qk),
                y.clone().narrow(2, qk, qk),
                y.clone().narrow(2, 2 * qk, v),
                y.narrow(2, 2 * qk + v, v),
                ifg.clone().narrow(2, 0, nh),
                ifg.narrow(2, nh, nh),
            ]
        } else {
            [
                p(&self.q, x.clone()),
                p(&self.k, x.clone()),
                p(&self.v, x.clone()),
                p(&self.ogate_preact, x.clone()),
                self.cap(p(&self.igate_preact, x.clone())),
                self.cap(p(&self.fgate_preact, x)),
            ]
        }
    }

    /// `h [B, S, NH, DV]`, `o [B, S, V]` → `[B, S, E]`.
    fn output(&self, h: Tensor<B, 4>, o: Tensor<B, 3>) -> Tensor<B, 3> {
        self.out_proj
            .forward(sigmoid(o) * self.multihead_norm.forward(h))
    }

    /// `x [B, S, E]` → `[B, S, E]` and the state after the last real token (chunkwise form).
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        state: Option<MlstmState<B>>,
        padding: Option<&Padding<B>>,
    ) -> Result<(Tensor<B, 3>, MlstmState<B>), ModelError> {
        let [b, s, _] = x.dims();
        let nh = self.num_heads;
        let [q, k, v, o, i, f] = self.projections(x);
        let heads = |t: Tensor<B, 3>| {
            let d = t.dims()[2] / nh;
            t.reshape([b, s, nh, d]).swap_dims(1, 2)
        };
        let mut i_preact = i.swap_dims(1, 2);
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
        let state = state.unwrap_or_else(|| self.initial_state(b));
        let (h, state) = B::mlstm_chunkwise(&inputs, Some(state), self.chunk_size)?;
        Ok((self.output(h.swap_dims(1, 2), o), state))
    }

    /// One token `x [B, E]` → `[B, E]` and the new state (recurrent form).
    pub fn step(
        &self,
        x: Tensor<B, 2>,
        state: Option<MlstmState<B>>,
    ) -> Result<(Tensor<B, 2>, MlstmState<B>), ModelError> {
        let [b, e] = x.dims();
        let nh = self.num_heads;
        let [q, k, v, o, i, f] = self.projections(x.reshape([b, 1, e]));
        let heads = |t: Tensor<B, 3>| {
            let d = t.dims()[2] / nh;
            t.reshape([b, nh, d])
        };
        let state = state.unwrap_or_else(|| self.initial_state(b));
        let (h, state) = B::mlstm_step(
            heads(q),
            heads(k),
            heads(v),
            i.reshape([b, nh]),
            f.reshape([b, nh]),
            Some(state),
        )?;
        let dv = h.dims()[2];
        let y = self.output(h.reshape([b, 1, nh, dv]), o);
        Ok((y.reshape([b, e]), state))
    }
}

impl<B: Backend> OfficialParams<B> for LargeMlstmLayer<B> {
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>) {
        for (name, l) in self.linears() {
            if let Some(l) = l {
                l.visit_official(&join(prefix, name), out);
            }
        }
        self.multihead_norm
            .visit_official(&join(prefix, "multihead_norm"), out);
        self.out_proj.visit_official(&join(prefix, "out_proj"), out);
    }

    fn load_official(mut self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
        let j = |n| join(prefix, n);
        self.q = load_module(self.q, &j("q"), src)?;
        self.k = load_module(self.k, &j("k"), src)?;
        self.v = load_module(self.v, &j("v"), src)?;
        self.ogate_preact = load_module(self.ogate_preact, &j("ogate_preact"), src)?;
        self.igate_preact = load_module(self.igate_preact, &j("igate_preact"), src)?;
        self.fgate_preact = load_module(self.fgate_preact, &j("fgate_preact"), src)?;
        self.qkv_opreact = load_module(self.qkv_opreact, &j("qkv_opreact"), src)?;
        self.ifgate_preact = load_module(self.ifgate_preact, &j("ifgate_preact"), src)?;
        self.multihead_norm = self
            .multihead_norm
            .load_official(&j("multihead_norm"), src)?;
        self.out_proj = self.out_proj.load_official(&j("out_proj"), src)?;
        Ok(self)
    }
}

impl<B: Backend> LargeMlstmLayer<B> {
    fn linears(&self) -> [(&'static str, &Option<Linear<B>>); 8] {
        [
            ("q", &self.q),
            ("k", &self.k),
            ("v", &self.v),
            ("ogate_preact", &self.ogate_preact),
            ("igate_preact", &self.igate_preact),
            ("fgate_preact", &self.fgate_preact),
            ("qkv_opreact", &self.qkv_opreact),
            ("ifgate_preact", &self.ifgate_preact),
        ]
    }
}
