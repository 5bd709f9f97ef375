use burn::tensor::{
    activation::{sigmoid, tanh},
    backend::Backend,
    Tensor,
};
use xlstm_gating::{log_forget_gate, stabilized_gates, stabilizer_update};

use super::{SlstmState, SlstmWeights, GATES};
use crate::CellError;

/// The sLSTM over a sequence (official vanilla `slstm_forward` with the `slstm` pointwise
/// function).
///
/// `wx`: input pre-activations `W x_t` `[B, S, 4·H]` (gate, head, unit); `state`: `None` is
/// the official zero state. Returns `h [B, S, H]` and the state after the last token.
pub fn sequence<B: Backend>(
    wx: Tensor<B, 3>,
    weights: &SlstmWeights<B>,
    state: Option<SlstmState<B>>,
) -> Result<(Tensor<B, 3>, SlstmState<B>), CellError> {
    let (nh, dh) = weights.dims()?;
    let [batch, s, width] = wx.dims();
    CellError::check_shape(
        "wx",
        &[batch, s, width],
        &[batch, s, GATES * nh * dh],
        "B, S, 4·NH·DH",
    )?;
    if s == 0 {
        return Err(CellError::new(
            "wx",
            "the sequence length S must be at least 1",
        ));
    }
    let mut state = initial_state(state, batch, nh * dh, &wx.device())?;
    let mut outputs = Vec::with_capacity(s);
    for t in 0..s {
        let wx_t = wx.clone().narrow(1, t, 1).reshape([batch, width]);
        state = pointwise(wx_t, weights, state, nh, dh);
        outputs.push(state.h.clone());
    }
    Ok((Tensor::stack(outputs, 1), state))
}

/// One sLSTM step. `wx`: `[B, 4·H]`; returns `h [B, H]` and the new state.
pub fn step<B: Backend>(
    wx: Tensor<B, 2>,
    weights: &SlstmWeights<B>,
    state: Option<SlstmState<B>>,
) -> Result<(Tensor<B, 2>, SlstmState<B>), CellError> {
    let (nh, dh) = weights.dims()?;
    let [batch, width] = wx.dims();
    CellError::check_shape(
        "wx",
        &[batch, width],
        &[batch, GATES * nh * dh],
        "B, 4·NH·DH",
    )?;
    let state = initial_state(state, batch, nh * dh, &wx.device())?;
    let state = pointwise(wx, weights, state, nh, dh);
    Ok((state.h.clone(), state))
}

fn initial_state<B: Backend>(
    state: Option<SlstmState<B>>,
    batch: usize,
    hidden: usize,
    device: &B::Device,
) -> Result<SlstmState<B>, CellError> {
    match state {
        Some(state) => state.check(batch, hidden).map(|_| state),
        None => Ok(SlstmState::zeros(batch, hidden, device)),
    }
}

/// One step of the recurrence, `wx [B, 4·H]`:
/// - pre-activations `x̃_t = W x_t + R h_{t-1} + b` for x in (i, f, z, o) (eqs. 11–14),
///   `R` block-diagonal per head;
/// - `m_t = max(ĩ_t, log σ(f̃_t) + m_{t-1})` (eq. 15), except `m_t = ĩ_t` where `n_{t-1} = 0`
///   (the official first step; see docs/equations.md);
/// - `i' = min(exp(ĩ - m_t), 1)`, `f' = min(exp(log σ(f̃) + m_{t-1} - m_t), 1)` (eqs. 16, 17);
/// - `c_t = f' c_{t-1} + i' tanh(z̃_t)`, `n_t = f' n_{t-1} + i'`, `h_t = σ(õ_t) c_t / n_t`
///   (eqs. 8–10).
fn pointwise<B: Backend>(
    wx: Tensor<B, 2>,
    weights: &SlstmWeights<B>,
    state: SlstmState<B>,
    nh: usize,
    dh: usize,
) -> SlstmState<B> {
    let batch = wx.dims()[0];
    let hidden = nh * dh;
    let ry = state
        .h
        .reshape([batch, nh, 1, dh])
        .matmul(weights.r.clone().unsqueeze::<4>())
        .reshape([batch, nh, GATES, dh])
        .swap_dims(1, 2)
        .reshape([batch, GATES * hidden]);
    let raw = (wx + ry + weights.b.clone().unsqueeze::<2>()).reshape([batch, GATES, hidden]);
    let gate = |g: usize| raw.clone().narrow(1, g, 1).reshape([batch, hidden]);
    let (i_raw, f_raw, z_raw, o_raw) = (gate(0), gate(1), gate(2), gate(3));

    let log_f = log_forget_gate(f_raw);
    let first_step = state.n.clone().equal_elem(0.0);
    let m_new = stabilizer_update(log_f.clone(), state.m.clone(), i_raw.clone())
        .mask_where(first_step, i_raw.clone());
    let gates = stabilized_gates(i_raw, log_f, state.m, m_new.clone());
    let (i, f) = (gates.input.clamp_max(1.0), gates.forget.clamp_max(1.0));

    let c = f.clone() * state.c + i.clone() * tanh(z_raw);
    let n = f * state.n + i;
    let h = sigmoid(o_raw) * c.clone() / n.clone();
    SlstmState { h, c, n, m: m_new }
}
