use burn::tensor::{backend::Backend, Tensor};
use xlstm_gating::{log_forget_gate, normalizer, stabilized_gates, stabilizer_update};

use super::{MlstmState, EPS};
use crate::CellError;

/// One recurrent step (official `recurrent_step_stabilized_simple`), for generation.
///
/// `q`, `k` `[B, NH, DQK]`, `v` `[B, NH, DV]`, `i_preact`, `f_preact` `[B, NH]`;
/// `state`: `None` is the official zero state. Returns `h [B, NH, DV]` and the new state.
///
/// - `m_t = max(log σ(f̃_t) + m_{t-1}, ĩ_t)` (eq. 15); `i'`, `f'` (eqs. 16, 17)
/// - `C_t = f' C_{t-1} + i' k_t v_tᵀ`, `n_t = f' n_{t-1} + i' k_t`, keys scaled by `1/sqrt(DQK)`
///   (eqs. 19, 20, 23)
/// - `h_t = q_tᵀ C_t / (max(|q_t·n_t|, exp(-m_t)) + eps)` (eq. 21)
pub fn step<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    i_preact: Tensor<B, 2>,
    f_preact: Tensor<B, 2>,
    state: Option<MlstmState<B>>,
) -> Result<(Tensor<B, 3>, MlstmState<B>), CellError> {
    let [b, nh, dqk] = q.dims();
    let dv = v.dims()[2];
    let state = check_step(&q, &k, &v, &i_preact, &f_preact, state)?;

    let log_f = log_forget_gate(f_preact);
    let m_new = stabilizer_update(log_f.clone(), state.m.clone(), i_preact.clone());
    let gates = stabilized_gates(i_preact, log_f, state.m, m_new.clone());
    let k = k / (dqk as f64).sqrt();

    let c = state.c * gates.forget.clone().reshape([b, nh, 1, 1])
        + k.clone()
            .unsqueeze_dim::<4>(3)
            .matmul(v.unsqueeze_dim::<4>(2))
            * gates.input.clone().reshape([b, nh, 1, 1]);
    let n = state.n * gates.forget.reshape([b, nh, 1]) + k * gates.input.reshape([b, nh, 1]);

    let numerator = q
        .clone()
        .unsqueeze_dim::<4>(2)
        .matmul(c.clone())
        .reshape([b, nh, dv]);
    let qn = (q * n.clone()).sum_dim(2); // [B, NH, 1]
    let h = numerator / normalizer(qn, m_new.clone().reshape([b, nh, 1]), EPS);
    Ok((h, MlstmState { c, n, m: m_new }))
}

/// Checks the operands of [`step`] (errors name the field) and returns the state to continue
/// from: `state`, or the official zero state for `None`.
pub fn check_step<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    i_preact: &Tensor<B, 2>,
    f_preact: &Tensor<B, 2>,
    state: Option<MlstmState<B>>,
) -> Result<MlstmState<B>, CellError> {
    let [b, nh, dqk] = q.dims();
    let dv = v.dims()[2];
    CellError::check_shape("k", &k.dims(), &[b, nh, dqk], "B, NH, DQK as q")?;
    CellError::check_shape("v", &v.dims(), &[b, nh, dv], "B, NH as q, DV")?;
    CellError::check_shape("i_preact", &i_preact.dims(), &[b, nh], "B, NH")?;
    CellError::check_shape("f_preact", &f_preact.dims(), &[b, nh], "B, NH")?;
    match state {
        Some(state) => {
            state.check(b, nh, dqk, dv)?;
            Ok(state)
        }
        None => Ok(MlstmState::zeros(b, nh, dqk, dv, &q.device())),
    }
}
